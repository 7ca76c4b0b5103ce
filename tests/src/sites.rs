//! Several sites on this machine, each a real controller (on the embedded store or a real
//! etcd) with real agents linked to it, for backup plans across sites. Agents trust no
//! other site by configuration: what they replicate with comes from pairing, through
//! their controller.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::controller::{free_udp_port, wait_for, Controller, ADMIN};
use crate::{bin, Pki, Served};

/// One site: its controller and agents.
pub struct Site {
    pub name: String,
    pub controller: Controller,
    /// The agents' nodes, configs and processes.
    pub nodes: Vec<(String, PathBuf, Served)>,
    pub port: u16,
    /// More controllers of the site (on etcd), by their agent endpoint's port.
    pub others: Vec<(u16, Option<Controller>)>,
}

/// A controller `ctl` of site `name` on `store`, its agent endpoint on UDP `port`.
pub fn site_controller(
    pki: &Pki,
    dir: &Path,
    name: &str,
    ctl: &str,
    store: &str,
    port: u16,
) -> Controller {
    pki.agent_config(name, ctl, &[], &dir.join("unused"));
    let sd = pki.dir.path().join(name);
    let cfg = format!(
        "{store}\n[agents]\nlisten = \"127.0.0.1:{port}\"\ncert = {:?}\nkey = {:?}\nca = {:?}",
        sd.join(format!("{ctl}.pem")).display().to_string(),
        sd.join(format!("{ctl}.key")).display().to_string(),
        pki.ca(name).display().to_string(),
    );
    Controller::start(&cfg)
}

impl Site {
    /// Site `name`: a controller on `store` (a `[store]` section; `DIR`: a temporary
    /// directory) with its agent endpoint on a free port, and an agent per `nodes`, data in
    /// `dir/<name>/<node>`.
    pub fn start(pki: &Pki, dir: &Path, name: &str, store: &str, nodes: &[&str]) -> Site {
        Site::start_on(pki, dir, name, store, nodes, free_udp_port())
    }

    /// [`Site::start`] with the agent endpoint on UDP `port` (to start a site again as it
    /// was: the same store, data and port).
    pub fn start_on(
        pki: &Pki,
        dir: &Path,
        name: &str,
        store: &str,
        nodes: &[&str],
        port: u16,
    ) -> Site {
        Site::start_with(pki, dir, name, store, nodes, port, |_| String::new())
    }

    /// [`Site::start_on`], each agent's `[net]` section given the lines `net(node)` too
    /// (a fixed `listen`, `advertise`, a bandwidth limit).
    pub fn start_with(
        pki: &Pki,
        dir: &Path,
        name: &str,
        store: &str,
        nodes: &[&str],
        port: u16,
        net: impl Fn(&str) -> String,
    ) -> Site {
        Site::start_full(pki, dir, name, store, nodes, &[port], net)
    }

    /// A site with a controller per port of `ports` (several on etcd: the first is
    /// [`Site::controller`], the others [`Site::others`]); its agents know them all.
    pub fn start_full(
        pki: &Pki,
        dir: &Path,
        name: &str,
        store: &str,
        nodes: &[&str],
        ports: &[u16],
        net: impl Fn(&str) -> String,
    ) -> Site {
        let port = ports[0];
        let controller =
            site_controller(pki, dir, name, &format!("{name}-controller"), store, port);
        let others: Vec<(u16, Option<Controller>)> = ports[1..]
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let ctl = format!("{name}-controller{}", i + 2);
                (*p, Some(site_controller(pki, dir, name, &ctl, store, *p)))
            })
            .collect();
        let addresses: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
        let mut out = Vec::new();
        for node in nodes {
            let data = dir.join(name).join(node);
            let cfg = pki.agent_config(name, node, &[], &data);
            let mut text = std::fs::read_to_string(&cfg).expect("config");
            let extra = net(node);
            if extra.contains("listen") {
                text = text.replace("listen = \"127.0.0.1:0\"\n", "");
            }
            text = text.replace("[net]\n", &format!("[net]\n{extra}\n"));
            text.push_str(&format!(
                "[controller]\naddresses = [{}]\nca = {:?}\n",
                addresses.join(", "),
                pki.ca(name).display().to_string()
            ));
            std::fs::write(&cfg, text).expect("config");
            let log = dir.join(format!("{name}-{node}.log"));
            let served = Served::start_logged(&cfg, &log);
            out.push((node.to_string(), cfg, served));
        }
        let site = Site {
            name: name.to_string(),
            controller,
            nodes: out,
            port,
            others,
        };
        wait_for(&format!("the agents of {name} are up"), 20, || {
            site.controller
                .agents()
                .iter()
                .filter(|a| a["status"] == "up")
                .count()
                == nodes.len()
        });
        site
    }

    /// The embedded store of site `name` under `dir`, kept across restarts.
    pub fn embedded(dir: &Path, name: &str) -> String {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).expect("dir");
        crate::controller::embedded_at(&d.join("state.redb"))
    }

    /// The agent config of `node`.
    pub fn config(&self, node: &str) -> &Path {
        &self
            .nodes
            .iter()
            .find(|(n, _, _)| n == node)
            .unwrap_or_else(|| panic!("no node {node}"))
            .1
    }

    /// `ferry-agent --config <node's> ARGS --json`.
    pub fn agent(&self, node: &str, args: &[&str]) -> Value {
        crate::agent_json(self.config(node), args)
    }

    /// `ferry ARGS` against this site's controller with the admin token: (status, stdout,
    /// stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(bin("ferry"))
            .env("FERRY_ADDR", format!("http://{}", self.controller.addr))
            .env("FERRY_TOKEN", ADMIN)
            .env("HOME", std::env::temp_dir())
            .args(args)
            .output()
            .expect("run ferry");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Run `id` of plan `plan` once it is over (two minutes at most).
    pub fn finished(&self, plan: &str, id: &str) -> Value {
        let t0 = std::time::Instant::now();
        loop {
            let runs = self
                .controller
                .list(&format!("/v1/plans/{plan}/runs"))
                .unwrap_or_default();
            let r = runs.into_iter().find(|r| r["run"]["id"] == id);
            if let Some(r) = &r {
                let step = r["run"]["step"].as_str().unwrap_or("");
                if ["done", "partially_done", "failed"].contains(&step) {
                    return r.clone();
                }
            }
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(120),
                "run {id} did not finish: {}",
                serde_json::to_string_pretty(&r).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Starts a run of `plan`; returns its id.
    pub fn start_run(&self, plan: &str) -> String {
        let (code, r) = self
            .controller
            .admin("POST", &format!("/v1/plans/{plan}/run"), None);
        assert_eq!(code, 202, "{r}");
        r["run"]["id"].as_str().expect("id").to_string()
    }

    /// A run of `plan`, started now and waited for.
    pub fn run_now(&self, plan: &str) -> Value {
        let id = self.start_run(plan);
        self.finished(plan, &id)
    }

    /// Bytes a run sent to `site`.
    pub fn sent(run: &Value, site: &str) -> u64 {
        run["run"]["targets"][site]["transfers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| t["sent_bytes"].as_u64().unwrap_or(0))
            .sum()
    }

    /// Creates object `obj` once the controller knows its volumes (a new volume is listed
    /// with its agent's next report).
    pub fn add_object(&self, obj: Value) {
        wait_for("the object's volumes are listed", 20, || {
            self.controller
                .admin("POST", "/v1/objects", Some(obj.clone()))
                .0
                == 201
        });
    }

    /// The kept groups of `plan`, oldest first.
    pub fn groups(&self, plan: &str) -> Vec<Value> {
        self.controller
            .list(&format!("/v1/plans/{plan}/groups"))
            .expect("groups")
    }

    /// The image of snapshot `snap` of volume `vol` on `node`.
    pub fn snapshot_image(&self, node: &str, vol: &str, snap: &str) -> PathBuf {
        let text = std::fs::read_to_string(self.config(node)).expect("config");
        let data = text
            .lines()
            .find_map(|l| l.strip_prefix("data_dir = "))
            .map(|d| d.trim_matches('"').to_string())
            .expect("data_dir");
        Path::new(&data)
            .join("volumes")
            .join(vol)
            .join("snapshots")
            .join(snap)
            .join("data.img")
    }
}

/// Pairs two sites through the CLI, as operators do: each exports its bundle and imports
/// the other's.
pub fn pair(a: &Site, b: &Site, dir: &Path) {
    for (from, to) in [(a, b), (b, a)] {
        let (ok, bundle, err) = from.cli(&["sites", "export"]);
        assert!(ok, "export: {err}");
        let f = dir.join(format!("{}.json", from.name));
        std::fs::write(&f, bundle).expect("bundle");
        let (ok, out, err) = to.cli(&["sites", "import", f.to_str().expect("utf8")]);
        assert!(ok, "import: {out}{err}");
    }
}
