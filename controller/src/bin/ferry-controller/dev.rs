//! `ferry-controller dev`: a whole site on one machine, as Vault, Consul and Nomad offer it.
//!
//! In the data directory: `pki/` (a site CA, `dev` unless `--site` names another,
//! certificates for `controller` and `node1`), `endpoint` (the agent endpoint's address,
//! the same at every start so paired sites keep reaching it), `controller.redb` (the
//! embedded store), `agent.toml` and `agent/` (the agent's volumes). The controller runs in this process; the agent is a real `ferry-agent serve`
//! child process (the controller never links the agent's code), linked to it over QUIC with
//! mutual TLS on loopback, and killed with this process (also when this one is killed: the
//! child asks the kernel for SIGKILL when its parent dies). The API listens on
//! 127.0.0.1:7480, the `ferry` CLI's default address, unless `--listen` says otherwise. A new
//! admin token is made at every start unless `--token` gives one; only its hash is kept, in
//! memory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context as _};
use serde_json::json;

use crate::config::{Config, StoreConfig, TokenConfig};
use crate::serve::{serve, Ready};

/// The dev site's node name.
const NODE: &str = "node1";

/// What `ferry-controller dev` is asked to run.
#[derive(Debug)]
pub struct Options {
    pub data_dir: Option<PathBuf>,
    pub listen: SocketAddr,
    pub agent_bin: Option<PathBuf>,
    pub token: Option<String>,
    pub site: ferry_wire::Name,
}

/// The site CA and the two certificates, made once per data directory.
fn pki(dir: &Path, site: &ferry_wire::Name) -> anyhow::Result<()> {
    let pki = dir.join("pki");
    if !pki.join("ca.pem").exists() {
        ferry_net::pki::create_ca(site.as_str(), &pki, 3650).context("make the dev site CA")?;
    }
    for name in ["controller", NODE] {
        if !pki.join(format!("{name}.pem")).exists() {
            ferry_net::pki::issue(&pki, name, &pki, 3650)
                .with_context(|| format!("issue the certificate of {name}"))?;
        }
    }
    Ok(())
}

fn agent_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let beside = std::env::current_exe()
        .ok()
        .map(|e| e.with_file_name("ferry-agent"))
        .filter(|p| p.exists());
    if let Some(p) = beside {
        return Ok(p);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("ferry-agent"))
            .find(|p| p.exists())
    });
    on_path.context("ferry-agent is neither beside ferry-controller nor on PATH (--agent-bin)")
}

/// The agent endpoint's address: the one this data directory used before (kept in
/// `endpoint`), so that a paired site still reaches the controller after a restart; at the
/// first start a free port on loopback.
fn endpoint(dir: &Path) -> anyhow::Result<SocketAddr> {
    let kept = dir.join("endpoint");
    if let Ok(text) = std::fs::read_to_string(&kept) {
        return text
            .trim()
            .parse()
            .with_context(|| format!("{} does not hold an address", kept.display()));
    }
    let free = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .context("find a free UDP port on loopback")?;
    std::fs::write(&kept, free.to_string()).with_context(|| format!("write {}", kept.display()))?;
    Ok(free)
}

/// The agent, killed when dropped.
struct AgentChild(Child);

impl Drop for AgentChild {
    fn drop(&mut self) {
        // SIGTERM first, so it ends its tasks' bookkeeping cleanly; SIGKILL if it lingers.
        let grace = std::time::Duration::from_secs(5);
        ferry_controller::process::stop(&mut self.0, libc::SIGTERM, grace);
    }
}

fn spawn_agent(bin: &Path, dir: &Path, controller: SocketAddr) -> anyhow::Result<AgentChild> {
    let pki = dir.join("pki");
    let q = |p: PathBuf| format!("{:?}", p.display().to_string());
    // One site alone: its agent's data endpoint trusts the site itself as its peer.
    let cfg = format!(
        "# written by ferry-controller dev\ndata_dir = {}\n[net]\nlisten = \"127.0.0.1:0\"\n\
         cert = {}\nkey = {}\npeer_cas = [{ca}]\n[controller]\naddress = \"{controller}\"\nca = {ca}\n",
        q(dir.join("agent")),
        q(pki.join(format!("{NODE}.pem"))),
        q(pki.join(format!("{NODE}.key"))),
        ca = q(pki.join("ca.pem")),
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, cfg).with_context(|| format!("write {}", path.display()))?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(&path)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: prctl in the forked child before exec, async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    Ok(AgentChild(child))
}

/// Runs the dev site until Ctrl-C or SIGTERM.
pub async fn run(opts: Options, json: bool) -> anyhow::Result<()> {
    let Options {
        data_dir,
        listen,
        agent_bin,
        token,
        site,
    } = opts;
    let (dir, _temp) = match data_dir {
        Some(d) => {
            std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
            (d, None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("ferry-dev-")
                .tempdir()
                .context("make a temporary data directory")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let dir = dir
        .canonicalize()
        .with_context(|| format!("resolve {}", dir.display()))?;
    if !listen.ip().is_loopback() {
        bail!("--listen {listen}: dev mode serves loopback only (its token is printed)");
    }
    let agent_bin = agent_binary(agent_bin)?;
    pki(&dir, &site)?;
    let held = ferry_net::pki::Identity::load(
        &dir.join("pki").join("controller.pem"),
        &dir.join("pki").join("controller.key"),
    )
    .context("read the dev site's certificate")?;
    if held.site != site {
        bail!(
            "--site {site}: {} holds site {}; give --site {} or another --data-dir",
            dir.display(),
            held.site,
            held.site
        );
    }
    let chosen = token.is_some();
    let (token, hash) = match token {
        Some(t) if t.trim().len() < 16 || t.trim() != t => {
            bail!("--token: at least 16 characters, without spaces around it")
        }
        Some(t) => {
            let hash = blake3::hash(t.as_bytes()).to_hex().to_string();
            (t, hash)
        }
        None => crate::serve::new_token(),
    };
    let pki = dir.join("pki");
    let cfg = Config {
        listen,
        store: StoreConfig::Embedded {
            path: dir.join("controller.redb"),
        },
        tokens: vec![TokenConfig {
            name: "dev".into(),
            role: ferry_controller::http::Role::Admin,
            blake3: hash,
        }],
        agents: Some(ferry_controller::daemon::agents::AgentsConfig {
            listen: endpoint(&dir)?,
            cert: pki.join("controller.pem"),
            key: pki.join("controller.key"),
            ca: pki.join("ca.pem"),
            advertise: None,
        }),
        recovery: Default::default(),
        webhooks: Vec::new(),
    };
    let temporary = _temp.is_some();
    let announce = |r: &Ready, a: &AgentChild| {
        let api = format!("http://{}", r.api);
        let agent_dir = dir.join("agent");
        if json {
            println!(
                "{}",
                json!({ "api": api, "token": token, "site": site, "data_dir": dir,
                        "persistent": !temporary,
                        "agent": { "node": NODE, "pid": a.0.id(), "data_dir": agent_dir,
                                   "config": dir.join("agent.toml") } })
            );
            return;
        }
        println!("ferry dev site {site}: a controller and agent {NODE} on this machine");
        println!("  API          {api}");
        let fresh = if chosen {
            ""
        } else {
            " (new at every start; --token keeps one)"
        };
        println!("  admin token  {token}{fresh}");
        println!("  agent data   {}", agent_dir.display());
        let note = if temporary {
            " (removed at exit; --data-dir keeps it)"
        } else {
            ""
        };
        println!("  state        {}{note}", dir.display());
        println!("\n  export FERRY_ADDR={api} FERRY_TOKEN={token}");
        println!("  ferry agents");
        println!("  ferry volumes create {NODE} vol1 --size 1G");
        println!("  ferry status");
    };
    // The agent must run for the site to be of use: stop at once if it cannot start.
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<()>();
    let mut agent: Option<anyhow::Result<AgentChild>> = None;
    let result = serve(
        cfg,
        |r| {
            let spawned = r
                .endpoint
                .context("the agent endpoint did not start")
                .and_then(|e| spawn_agent(&agent_bin, &dir, e));
            match &spawned {
                Ok(a) => announce(&r, a),
                Err(_) => {
                    let _ = failed_tx.send(());
                }
            }
            agent = Some(spawned);
        },
        async {
            tokio::select! {
                _ = crate::serve::terminated() => {}
                Ok(()) = failed_rx => {}
            }
        },
    )
    .await;
    match agent {
        Some(Err(e)) => Err(e),
        _ => result,
    }
}
