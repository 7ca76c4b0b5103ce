//! Agents and their controller: a real `ferry-agent serve` connects to a real
//! `ferry-controller serve` (QUIC, mutual TLS with the site CA), registers its volumes and
//! heartbeats; killed with SIGKILL, it is reported down; a node of another site is refused.

use std::time::Duration;

use ferry_tests::controller::{self, free_udp_port, wait_for, Controller, READER};
use ferry_tests::{agent_json, agent_volume_path, bin, Etcd, Pki, Served};
use serde_json::Value;

fn agents(c: &Controller) -> Vec<Value> {
    c.agents()
}

/// The `[store]` section of an embedded store at `path`.
fn embedded(path: &std::path::Path) -> String {
    format!(
        "[store]\nkind = \"embedded\"\npath = {:?}",
        path.display().to_string()
    )
}

/// The `[store]` section of `etcd` (a short lease: a restarted controller waits for the
/// killed one's to expire).
fn on_etcd(etcd: &Etcd) -> String {
    format!(
        "[store]\nkind = \"etcd\"\nendpoints = [{:?}]\nlease_ttl_secs = 3",
        etcd.endpoint
    )
}

/// A controller of site-a on `store`, its agent endpoint on a free UDP port; returns it, its
/// configuration and the port.
fn site_controller(pki: &Pki, dir: &std::path::Path, store: &str) -> (Controller, String, u16) {
    let port = free_udp_port();
    let (c, cfg) = controller::site_controller(pki, dir, "controller1", store, port);
    (c, cfg, port)
}

fn linked_agent(
    pki: &Pki,
    dir: &std::path::Path,
    node: &str,
    port: u16,
    vols: &[&str],
) -> (Served, std::path::PathBuf) {
    controller::linked_agent(pki, dir, node, &[port], vols)
}

/// Tests `$name` as `$name::embedded_store` and `$name::etcd`: the body gets the `[store]`
/// section of a fresh embedded store (at a fixed path, so a restarted controller finds it)
/// or of a real etcd started for it.
macro_rules! on_both_stores {
    ($name:ident) => {
        mod $name {
            #[test]
            fn embedded_store() {
                let dir = tempfile::tempdir().expect("tempdir");
                super::$name(&super::embedded(&dir.path().join("state.redb")));
            }

            #[test]
            fn etcd() {
                let Some(etcd) = ferry_tests::Etcd::start() else {
                    return;
                };
                super::$name(&super::on_etcd(&etcd));
            }
        }
    };
}

on_both_stores!(agents_register_heartbeat_and_are_reported_down_when_killed);

fn agents_register_heartbeat_and_are_reported_down_when_killed(store: &str) {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, _, port) = site_controller(&pki, dir.path(), store);
    let (agent, _) = linked_agent(&pki, dir.path(), "n1", port, &["v1"]);
    wait_for("the agent registers", 15, || {
        agents(&c)
            .iter()
            .any(|a| a["node"] == "n1" && a["status"] == "up")
    });
    let a = agents(&c)
        .into_iter()
        .find(|a| a["node"] == "n1")
        .expect("n1");
    assert_eq!(a["site"], "site-a");
    assert_eq!(a["volumes"][0]["name"], "v1", "{a}");
    assert!(a["capacity_bytes"].as_u64().unwrap_or(0) > 0, "{a}");
    // Volumes are made on an agent through the API.
    let (code, v) = c.admin(
        "POST",
        "/v1/agents/n1/volumes",
        Some(serde_json::json!({"name": "v2", "size": "16M"})),
    );
    assert_eq!(
        (code, &v["size"]),
        (201, &serde_json::json!(16 << 20)),
        "{v}"
    );
    for (body, status, says) in [
        (
            serde_json::json!({"name": "v2", "size": "16M"}),
            409,
            "already exists",
        ),
        (serde_json::json!({"name": "v3", "size": 0}), 400, "size"),
        (
            serde_json::json!({"name": "v3", "size": "16383P"}),
            400,
            "exceeds the largest file size",
        ),
        (
            serde_json::json!({"name": "../x", "size": "1M"}),
            400,
            "request body",
        ),
        (
            serde_json::json!({"name": "v4", "size": "1M", "colour": 1}),
            400,
            "unknown field",
        ),
    ] {
        let (code, v) = c.admin("POST", "/v1/agents/n1/volumes", Some(body));
        assert_eq!(code, status, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(says),
            "{v}"
        );
    }
    let (code, v) = c.admin(
        "POST",
        "/v1/agents/ghost/volumes",
        Some(serde_json::json!({"name": "v9", "size": "1M"})),
    );
    assert_eq!(code, 409, "{v}");
    let first = a["last_heartbeat"].clone();
    wait_for("heartbeats arrive", 10, || {
        agents(&c)
            .iter()
            .any(|a| a["node"] == "n1" && a["last_heartbeat"] != first)
    });

    // A node of another site is refused by the controller's TLS: site-b's m1 trusts site-a
    // (so it would accept the controller) but the controller trusts only its own site's CA.
    let other = pki.agent_config("site-b", "m1", &["site-a"], &dir.path().join("m1"));
    let out = std::process::Command::new(bin("ferry-agent"))
        .arg("--config")
        .arg(&other)
        .args(["ping", &format!("127.0.0.1:{port}"), "--count", "1"])
        .output()
        .expect("ping");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(agents(&c).iter().all(|a| a["node"] != "m1"));

    // SIGKILL: no goodbye; the missing heartbeats mark it down.
    drop(agent);
    wait_for("the killed agent is reported down", 20, || {
        agents(&c)
            .iter()
            .any(|a| a["node"] == "n1" && a["status"] == "down")
    });
}

/// A controller on `store` and two linked agents: n1 with volumes a and b, n2 with c, and
/// the objects oa, ob and oc over them.
struct TwoAgents {
    controller: Controller,
    configs: [std::path::PathBuf; 2],
    _agents: [Served; 2],
    _pki: Pki,
    dir: tempfile::TempDir,
}

impl TwoAgents {
    fn start(store: &str) -> TwoAgents {
        let pki = Pki::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, _, port) = site_controller(&pki, dir.path(), store);
        let (s1, n1) = linked_agent(&pki, dir.path(), "n1", port, &["a", "b"]);
        let (s2, n2) = linked_agent(&pki, dir.path(), "n2", port, &["c"]);
        wait_for("both agents up", 15, || {
            agents(&c).iter().filter(|a| a["status"] == "up").count() == 2
        });
        for (name, node, v) in [("oa", "n1", "a"), ("ob", "n1", "b"), ("oc", "n2", "c")] {
            let obj = serde_json::json!({"name": name, "kind": {"type": "virtual_volume",
                "volume": {"node": node, "volume": v}}});
            assert_eq!(c.admin("POST", "/v1/objects", Some(obj)).0, 201);
        }
        TwoAgents {
            controller: c,
            configs: [n1, n2],
            _agents: [s1, s2],
            _pki: pki,
            dir,
        }
    }
}

on_both_stores!(runs_take_groups_on_every_node_and_retention_prunes);

/// A plan over volumes on two agents, run five times by request: every run takes a group on
/// both nodes and is recorded; retention 2 prunes the rest on the agents themselves; a
/// rollback waits for runs and restores every volume byte for byte.
fn runs_take_groups_on_every_node_and_retention_prunes(store: &str) {
    use serde_json::json;
    let site = TwoAgents::start(store);
    let (c, cfgs) = (&site.controller, site.configs.clone());
    let plan = json!({"name": "p", "objects": ["oa", "ob", "oc"], "retention": 2, "enabled": false,
        "schedule": {"every": "daily", "start": "2026-01-01T00:00"}});
    assert_eq!(c.admin("POST", "/v1/plans", Some(plan)).0, 201);
    for i in 0..5 {
        let (code, r) = c.admin("POST", "/v1/plans/p/run", None);
        assert_eq!(code, 202, "{r}");
        let id = r["run"]["id"].as_str().expect("id").to_string();
        wait_for(&format!("run {i} finishes"), 30, || {
            let (_, runs) = c.call("GET", "/v1/plans/p/runs", Some(READER), None);
            runs.as_array().into_iter().flatten().any(|x| {
                x["run"]["id"] == id.as_str()
                    && (x["run"]["step"] == "done" || x["run"]["step"] == "failed")
            })
        });
        let (_, runs) = c.call("GET", "/v1/plans/p/runs", Some(READER), None);
        let this = runs
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["run"]["id"] == id.as_str())
            .cloned()
            .expect("run");
        assert_eq!(this["run"]["step"], "done", "{this}");
        // Group names carry the second: keep runs apart.
        std::thread::sleep(Duration::from_millis(1100));
    }
    let (_, groups) = c.call("GET", "/v1/plans/p/groups", Some(READER), None);
    let groups = groups.as_array().cloned().unwrap_or_default();
    assert_eq!(groups.len(), 2, "retention 2: {groups:?}");
    let kept: Vec<String> = groups
        .iter()
        .map(|g| g["group"].as_str().expect("group").to_string())
        .collect();
    assert_eq!(groups[0]["snapshots"].as_array().map(Vec::len), Some(3));
    // On the agents: exactly the kept groups, on every volume.
    for (cfg, vols) in [(&cfgs[0], vec!["a", "b"]), (&cfgs[1], vec!["c"])] {
        for v in vols {
            let list = agent_json(cfg, &["snapshot", "list", v]);
            let mut names: Vec<String> = list
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| s["name"].as_str().expect("name").to_string())
                .collect();
            names.sort();
            let mut want = kept.clone();
            want.sort();
            assert_eq!(names, want, "volume {v}");
        }
    }

    // Rollback: refused while a run is in progress (a slow pre hook holds it), then every
    // volume back to the newest kept group, byte for byte.
    let vol_path = agent_volume_path;
    let target = kept.last().expect("kept").clone();
    let snap_hash = |cfg: &std::path::Path, v: &str| ferry_tests::file_hash(&vol_path(cfg, v));
    let before: Vec<String> = [(&cfgs[0], "a"), (&cfgs[0], "b"), (&cfgs[1], "c")]
        .iter()
        .map(|(c, v)| snap_hash(c, v))
        .collect();
    let mut r = ferry_tests::rng("rollback");
    for (cfg, v) in [(&cfgs[0], "a"), (&cfgs[1], "c")] {
        ferry_tests::write_random(&vol_path(cfg, v), 0, 1 << 20, &mut r);
    }
    assert_ne!(snap_hash(&cfgs[0], "a"), before[0]);
    let slow = json!({"name": "p", "objects": ["oa", "ob", "oc"], "retention": 2, "enabled": false,
        "schedule": {"every": "daily", "start": "2026-01-01T00:00"}, "hooks": {"pre": "sleep 3"}});
    assert_eq!(c.admin("PUT", "/v1/plans/p", Some(slow)).0, 200);
    let (code, run) = c.admin("POST", "/v1/plans/p/run", None);
    assert_eq!(code, 202);
    let (code, v) = c.admin(
        "POST",
        "/v1/plans/p/rollbacks",
        Some(json!({"group": target})),
    );
    assert_eq!(code, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("in progress"),
        "{v}"
    );
    // Metrics count the run in progress by its step (preparing: a hook across two nodes),
    // beside the five finished ones.
    let text = c.text("/metrics", READER);
    assert!(
        text.contains("ferry_runs{plan=\"p\",step=\"prepare\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("ferry_runs{plan=\"p\",step=\"done\"} 5"),
        "{text}"
    );
    let run_id = run["run"]["id"].as_str().expect("id").to_string();
    wait_for("the slow run finishes", 30, || {
        let (_, runs) = c.call("GET", "/v1/plans/p/runs", Some(READER), None);
        runs.as_array().into_iter().flatten().any(|x| {
            x["run"]["id"] == run_id.as_str()
                && (x["run"]["step"] == "done" || x["run"]["step"] == "failed")
        })
    });
    // That run's snapshots hold the written data; roll back to the group before it.
    let (code, v) = c.admin(
        "POST",
        "/v1/plans/p/rollbacks",
        Some(json!({"group": "nope"})),
    );
    assert_eq!(code, 400, "{v}");
    let (code, v) = c.admin(
        "POST",
        "/v1/plans/p/rollbacks",
        Some(json!({"group": target, "objects": ["zz"]})),
    );
    assert_eq!(code, 400, "{v}");
    let (code, rb) = c.admin(
        "POST",
        "/v1/plans/p/rollbacks",
        Some(json!({"group": target})),
    );
    assert_eq!(code, 202, "{rb}");
    wait_for("the rollback finishes", 30, || {
        let (_, list) = c.call("GET", "/v1/plans/p/rollbacks", Some(READER), None);
        list.as_array()
            .into_iter()
            .flatten()
            .any(|x| x["id"] == rb["id"] && x["step"] != "running")
    });
    let (_, list) = c.call("GET", "/v1/plans/p/rollbacks", Some(READER), None);
    let done = list
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["id"] == rb["id"])
        .cloned()
        .expect("rb");
    assert_eq!(done["step"], "done", "{done}");
    let after: Vec<String> = [(&cfgs[0], "a"), (&cfgs[0], "b"), (&cfgs[1], "c")]
        .iter()
        .map(|(c, v)| snap_hash(c, v))
        .collect();
    assert_eq!(after, before, "byte-identical to the group");
    drop(site);
}

on_both_stores!(a_controller_killed_mid_run_resumes_and_runs_nothing_twice);

/// SIGKILL of the controller in the middle of a run: a new controller on the same store
/// resumes the run from its persisted step and nothing is executed twice (the snapshot's
/// pre hook, which counts its runs, ran once).
fn a_controller_killed_mid_run_resumes_and_runs_nothing_twice(store: &str) {
    use serde_json::json;
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, ctl_cfg, port) = site_controller(&pki, dir.path(), store);
    let (_agent, _) = linked_agent(&pki, dir.path(), "n1", port, &["v"]);
    wait_for("the agent is up", 15, || {
        agents(&c).iter().any(|a| a["status"] == "up")
    });
    let counter = dir.path().join("hook-runs");
    let obj = json!({"name": "o", "kind": {"type": "virtual_volume", "volume": {"node": "n1", "volume": "v"}}});
    assert_eq!(c.admin("POST", "/v1/objects", Some(obj)).0, 201);
    let plan = json!({"name": "p", "objects": ["o"], "retention": 3, "enabled": false,
        "schedule": {"every": "daily", "start": "2026-01-01T00:00"},
        "hooks": {"pre": format!("echo run >> {} && sleep 3", counter.display())}});
    assert_eq!(c.admin("POST", "/v1/plans", Some(plan)).0, 201);
    let (code, run) = c.admin("POST", "/v1/plans/p/run", None);
    assert_eq!(code, 202);
    let id = run["run"]["id"].as_str().expect("id").to_string();
    wait_for("the hook starts", 15, || counter.exists());
    drop(c); // SIGKILL, mid-run
    let c = Controller::start(&ctl_cfg);
    wait_for("the run completes under the new controller", 90, || {
        let (_, runs) = c.call("GET", "/v1/plans/p/runs", Some(READER), None);
        runs.as_array()
            .into_iter()
            .flatten()
            .any(|x| x["run"]["id"] == id.as_str() && x["run"]["step"] == "done")
    });
    let runs = std::fs::read_to_string(&counter).expect("counter");
    assert_eq!(runs.lines().count(), 1, "the snapshot task ran twice");
    let (_, groups) = c.call("GET", "/v1/plans/p/groups", Some(READER), None);
    assert_eq!(groups.as_array().map(Vec::len), Some(1), "{groups}");
}

/// Waits for run `id` of plan `p` to end; returns its detail (record and report).
fn finished_run(c: &Controller, p: &str, id: &str, secs: u64) -> Value {
    let path = format!("/v1/plans/{p}/runs/{id}");
    wait_for(&format!("run {id} ends"), secs, || {
        let (_, r) = c.call("GET", &path, Some(READER), None);
        r["run"]["step"] == "done" || r["run"]["step"] == "failed"
    });
    c.call("GET", &path, Some(READER), None).1
}

/// A plan with a freeze hook over volumes on two agents runs prepare / snapshot / release:
/// both nodes run their pre hook before either takes its snapshot, and each runs its post
/// hook after its own snapshot. When a node does not prepare within the deadline, every
/// node is released and the run fails with nothing left behind.
#[test]
fn across_nodes_runs_prepare_snapshot_and_release_within_a_deadline() {
    use serde_json::json;
    let tmp = tempfile::tempdir().expect("tempdir");
    let site = TwoAgents::start(&embedded(&tmp.path().join("state.redb")));
    let (c, [n1, n2]) = (&site.controller, site.configs.clone());
    let dir = &site.dir;
    let log = dir.path().join("hooks.log");
    // Each hook logs what it is, its node's volumes and the time in ns; on n2 (volume c) the
    // pre hook takes $SLOW seconds, read from a file the test writes.
    let slow = dir.path().join("slow");
    std::fs::write(&slow, "0").expect("slow");
    let hook = |what: &str| {
        format!(
            "{} echo {what} $FERRY_VOLUMES $(date +%s%N) >> {}",
            if what == "pre" {
                format!(
                    "[ \"$FERRY_VOLUMES\" = c ] && sleep $(cat {});",
                    slow.display()
                )
            } else {
                String::new()
            },
            log.display()
        )
    };
    let plan = json!({"name": "p", "objects": ["oa", "ob", "oc"], "retention": 3, "enabled": false,
        "schedule": {"every": "daily", "start": "2026-01-01T00:00"},
        "hooks": {"pre": hook("pre"), "post": hook("post"), "deadline_secs": 3}});
    assert_eq!(c.admin("POST", "/v1/plans", Some(plan)).0, 201);
    let (code, r) = c.admin("POST", "/v1/plans/p/run", None);
    assert_eq!(code, 202, "{r}");
    assert_eq!(
        (&r["run"]["coordinated"], &r["run"]["step"]),
        (&json!(true), &json!("prepare"))
    );
    let id = r["run"]["id"].as_str().expect("id").to_string();
    let d = finished_run(c, "p", &id, 30);
    assert_eq!(d["run"]["step"], "done", "{d}");
    // Hook order from the log, snapshot times from the agents.
    let entries: Vec<(String, String, u128)> = std::fs::read_to_string(&log)
        .expect("log")
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let t = f.last().and_then(|t| t.parse().ok()).expect("time");
            (f[0].to_string(), f[1..f.len() - 1].join(" "), t)
        })
        .collect();
    let at = |what: &str, vols: &str| {
        entries
            .iter()
            .find(|e| e.0 == what && e.1 == vols)
            .map(|e| e.2)
            .unwrap_or_else(|| panic!("no {what} hook for {vols}: {entries:?}"))
    };
    let created = |cfg: &std::path::Path, v: &str| -> u128 {
        let list = agent_json(cfg, &["snapshot", "list", v]);
        list[0]["created_unix_ns"].as_u64().expect("created") as u128
    };
    let last_pre = at("pre", "a b").max(at("pre", "c"));
    for (cfg, v, vols) in [(&n1, "a", "a b"), (&n1, "b", "a b"), (&n2, "c", "c")] {
        let t = created(cfg, v);
        assert!(
            t > last_pre,
            "{v} was snapshotted before every node was frozen"
        );
        assert!(
            at("post", vols) > t,
            "{v}'s node thawed before its snapshot"
        );
    }
    assert_eq!(entries.len(), 4, "each hook once: {entries:?}");
    // The report: every object done, with its snapshot and when its node finished.
    let objects = d["report"]["objects"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(objects.len(), 3, "{d}");
    for o in &objects {
        assert_eq!(o["status"], "done", "{o}");
        let v = &o["volumes"][0];
        assert_eq!(v["snapshot"]["snapshot"], d["run"]["group"], "{v}");
        assert!(v["finished"].is_string(), "{v}");
    }
    assert!(
        d["report"]["duration_secs"]
            .as_f64()
            .is_some_and(|s| s > 0.0),
        "{d}"
    );
    assert!(d["report"]["bytes_read"].as_u64().is_some(), "{d}");

    // n2's pre hook now takes 6 s, past the 3 s deadline: both are released, the run fails,
    // and no snapshot of it is left anywhere.
    std::fs::write(&slow, "6").expect("slow");
    std::fs::remove_file(&log).expect("rm log");
    std::thread::sleep(Duration::from_millis(1100)); // a new group name
    let (_, r) = c.admin("POST", "/v1/plans/p/run", None);
    let id = r["run"]["id"].as_str().expect("id").to_string();
    let d = finished_run(c, "p", &id, 30);
    assert_eq!(d["run"]["step"], "failed", "{d}");
    assert!(
        d["run"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("n2: not prepared within the 3 s deadline"),
        "{d}"
    );
    let statuses: Vec<&str> = d["report"]["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| o["status"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(statuses, ["failed", "failed", "failed"], "{d}");
    // n2 finishes its slow pre hook, then its release (queued behind it) thaws it.
    wait_for("n2 is thawed after its late freeze", 20, || {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        log.contains("post a b") && log.contains("pre c") && log.contains("post c")
    });
    for (cfg, v) in [(&n1, "a"), (&n1, "b"), (&n2, "c")] {
        let list = agent_json(cfg, &["snapshot", "list", v]);
        assert_eq!(
            list.as_array().map(Vec::len),
            Some(1),
            "{v}: only the first group: {list}"
        );
    }
    // Metrics carry the last run's duration and bytes.
    let text = c.text("/metrics", READER);
    assert!(
        text.contains("ferry_plan_last_run_duration_seconds{plan=\"p\"}"),
        "{text}"
    );
    assert!(
        text.contains("ferry_plan_last_run_bytes_read{plan=\"p\"}"),
        "{text}"
    );
}

/// Peers of the site that misbehave on the controller's endpoint are disconnected with a
/// reason, and the controller keeps serving; a forwarded request is held to the same tokens
/// as any other (a site certificate is no way around them).
#[test]
fn misbehaving_peers_of_the_controller_are_disconnected() {
    use ferry_agent::net;
    use ferry_wire::control::{ForwardRequest, ForwardResponse, FORWARD_LIMIT};
    use ferry_wire::msg::close;
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (c, _, port) = site_controller(&pki, dir.path(), &embedded(&dir.path().join("s.redb")));
    let (_agent, _) = linked_agent(&pki, dir.path(), "n1", port, &["v"]);
    wait_for("the agent is up", 15, || {
        agents(&c).iter().any(|a| a["status"] == "up")
    });
    // A node of site-a that trusts site-a (the controller's CA).
    let cfg = pki.agent_config("site-a", "x9", &["site-a"], &dir.path().join("x9"));
    let cfg = ferry_agent::config::AgentConfig::load(&cfg).expect("config");
    let (id, trust) = ferry_agent::daemon::server::load_tls(&cfg).expect("tls");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let ep = net::client_endpoint(addr, net::client_config(&id, &trust).expect("cc"))
            .expect("endpoint");
        let closed = |conn: quinn::Connection| async move {
            match tokio::time::timeout(Duration::from_secs(15), conn.closed()).await {
                Ok(quinn::ConnectionError::ApplicationClosed(c)) => (
                    u64::from(c.error_code) as u32,
                    String::from_utf8_lossy(&c.reason).into_owned(),
                ),
                other => panic!("unexpected end: {other:?}"),
            }
        };
        // 1. Garbage instead of Register.
        let mut s = net::connect(&ep, addr, &id, &trust).await.expect("connect");
        net::write_frame(&mut s.send, &[0xff; 64])
            .await
            .expect("write");
        let (code, reason) = closed(s.conn.clone()).await;
        assert_eq!(code, close::PROTOCOL, "{reason}");
        assert!(reason.contains("malformed"), "{reason}");
        // 2. A forwarded request of garbage on a new stream.
        let s = net::connect(&ep, addr, &id, &trust).await.expect("connect");
        let (mut send, _recv) = s.conn.open_bi().await.expect("stream");
        net::write_frame(&mut send, &[0x07; 32])
            .await
            .expect("write");
        let (code, _) = closed(s.conn.clone()).await;
        assert_eq!(code, close::PROTOCOL);
        // 3. A well-formed forwarded request with no token is refused as any request is;
        //    with the read-only token a write is forbidden.
        let s = net::connect(&ep, addr, &id, &trust).await.expect("connect");
        for (auth, status) in [(None, 401), (Some(format!("Bearer {READER}")), 403)] {
            let (mut send, mut recv) = s.conn.open_bi().await.expect("stream");
            let req = ForwardRequest {
                method: "POST".into(),
                path: "/v1/plans/p/run".into(),
                authorization: auth,
                content_type: None,
                body: Vec::new(),
            };
            net::send_msg(&mut send, &req).await.expect("send");
            let resp: ForwardResponse = net::recv_msg(&mut recv, FORWARD_LIMIT)
                .await
                .expect("answer");
            assert_eq!(
                resp.status,
                status,
                "{}",
                String::from_utf8_lossy(&resp.body)
            );
        }
    });
    // Through all of it the controller served its agent and its API.
    assert!(agents(&c)
        .iter()
        .any(|a| a["node"] == "n1" && a["status"] == "up"));
}
