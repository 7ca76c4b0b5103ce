//! `ferry-controller`: the site controller daemon (so far: the HTTP API over the state store).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use ferry_controller::api::{self, ApiState, Role, TokenEntry};
use ferry_controller::store::{EmbeddedStore, EtcdStore, Store};
use serde::Deserialize;

mod dev;

#[derive(Parser)]
#[command(name = "ferry-controller", version, about = "ferry's site controller")]
struct Cli {
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the HTTP API (configuration: see controller/ferry-controller.example.toml).
    #[command(after_help = "Example: ferry-controller serve --config /etc/ferry/controller.toml")]
    Serve {
        /// The configuration (TOML; controller/ferry-controller.example.toml documents it).
        #[arg(long)]
        config: PathBuf,
    },
    /// Make a new API token: prints the token (give it to its user) and the BLAKE3 hash that
    /// goes into the configuration (the controller never stores the token itself).
    Token,
    /// A whole site on this machine for trying ferry out: a controller on the embedded store
    /// and one agent (`ferry-agent serve`, a child process) on the data directory, both on
    /// loopback, with their own site CA. Prints the API address and an admin token (one JSON
    /// object with --json) and runs until stopped (Ctrl-C, SIGTERM).
    Dev {
        /// Where the state, certificates and the agent's volumes live, kept across runs
        /// (default: a new temporary directory, removed at the end).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The HTTP API's address (the `ferry` CLI's default; 127.0.0.1:0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:7480")]
        listen: SocketAddr,
        /// The admin token to accept (default: a new one at every start, printed). Giving
        /// one keeps it across restarts; at least 16 characters.
        #[arg(long, env = "FERRY_DEV_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The agent binary (default: `ferry-agent` beside this program, else on PATH).
        #[arg(long)]
        agent_bin: Option<PathBuf>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// HTTP API address.
    listen: SocketAddr,
    store: StoreConfig,
    #[serde(default)]
    tokens: Vec<TokenConfig>,
    /// The endpoint this site's agents connect to (absent: no agents).
    #[serde(default)]
    agents: Option<ferry_controller::agents::AgentsConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
enum StoreConfig {
    Embedded {
        path: PathBuf,
    },
    Etcd {
        endpoints: Vec<String>,
        /// Seconds a leader's lease lives without renewal: how long a dead leader holds
        /// the site before a follower takes over (default 5).
        #[serde(default)]
        lease_ttl_secs: Option<u64>,
    },
}

impl StoreConfig {
    fn lease_ttl_secs(&self) -> u64 {
        match self {
            StoreConfig::Etcd {
                lease_ttl_secs: Some(t),
                ..
            } => *t,
            _ => 5,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenConfig {
    name: String,
    role: Role,
    /// BLAKE3 of the token, 64 hex digits (`ferry-controller token` makes both).
    blake3: String,
}

fn load(path: &PathBuf) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read the configuration {}", path.display()))?;
    parse(&text, path)
}

fn parse(text: &str, path: &std::path::Path) -> anyhow::Result<Config> {
    let cfg: Config =
        toml::from_str(text).with_context(|| format!("configuration {}", path.display()))?;
    if let StoreConfig::Etcd {
        lease_ttl_secs: Some(t),
        ..
    } = &cfg.store
    {
        if !(2..=120).contains(t) {
            bail!(
                "configuration {}: store.lease_ttl_secs must be 2 to 120, not {t}",
                path.display()
            );
        }
    }
    if cfg.tokens.is_empty() {
        bail!(
            "configuration {}: no [[tokens]]: nobody could use the API",
            path.display()
        );
    }
    Ok(cfg)
}

fn tokens(cfg: &Config) -> anyhow::Result<Vec<TokenEntry>> {
    cfg.tokens
        .iter()
        .map(|t| {
            let h = blake3::Hash::from_hex(&t.blake3)
                .map_err(|_| anyhow::anyhow!("tokens.{}: blake3 must be 64 hex digits", t.name))?;
            Ok(TokenEntry {
                name: t.name.clone(),
                role: t.role,
                hash: *h.as_bytes(),
            })
        })
        .collect()
}

/// Where a started controller listens.
#[derive(Debug, Clone, Copy)]
struct Ready {
    api: SocketAddr,
    endpoint: Option<SocketAddr>,
}

async fn open_store(cfg: &StoreConfig) -> anyhow::Result<Store> {
    Ok(match cfg {
        StoreConfig::Embedded { path } => Store::Embedded(
            EmbeddedStore::open(path).with_context(|| format!("open {}", path.display()))?,
        ),
        StoreConfig::Etcd { endpoints, .. } => Store::Etcd(
            EtcdStore::connect(endpoints)
                .await
                .context("connect to etcd")?,
        ),
    })
}

/// Resolves on SIGTERM or Ctrl-C.
async fn terminated() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Runs the controller until `until` resolves (or its leadership is lost: an error).
/// `ready` is told where it listens once it does.
async fn serve(
    cfg: Config,
    ready: impl FnOnce(Ready),
    until: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use ferry_controller::leader::{self, LeaderInfo, Role};
    let store = open_store(&cfg.store).await?;
    let schema = ferry_controller::schema::check(&store)
        .await
        .context("the state store")?;
    tracing::info!(
        schema,
        knows = ferry_controller::schema::VERSION,
        "state store opened"
    );
    let links = Arc::new(ferry_controller::agents::Links::default());
    let (role_tx, role_rx) = tokio::sync::watch::channel(Role::Follower);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listen on {}", cfg.listen))?;
    let api_addr = listener.local_addr()?;
    let bound = match &cfg.agents {
        Some(a) => Some(ferry_controller::agents::bind(a).context("agent endpoint")?),
        None => None,
    };
    let endpoint_addr = bound.as_ref().map(|b| b.local_addr()).transpose()?;
    let advertised = match (&cfg.agents, endpoint_addr) {
        (Some(a), Some(bound_at)) => Some(match &a.advertise {
            Some(adv) => adv.clone(),
            None if bound_at.ip().is_unspecified() && matches!(store, Store::Etcd(_)) => bail!(
                "agents.advertise: the endpoint listens on {bound_at}; say where the site's \
                 agents and other controllers reach it"
            ),
            None => bound_at.to_string(),
        }),
        _ => None,
    };
    // A follower forwards the API to the leader, as this controller (several on etcd).
    let forwarder = match (&store, &bound) {
        (Store::Etcd(_), Some(b)) => {
            let (id, trust) = b.credentials();
            Some(Arc::new(ferry_controller::peer::Forwarder::new(id, trust)))
        }
        _ => None,
    };
    let name = match &bound {
        Some(b) => b.credentials().0.node.to_string(),
        None => "controller".to_string(),
    };
    let state = Arc::new(ApiState::new(
        store.clone(),
        tokens(&cfg)?,
        role_rx.clone(),
        forwarder,
        links.clone(),
    ));
    let router = api::router(state);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let agents = bound.map(|bound| {
        if let Some(a) = endpoint_addr {
            tracing::info!(addr = %a, "agent endpoint up");
        }
        tokio::spawn(ferry_controller::agents::serve(
            bound,
            ferry_controller::agents::Context {
                store: store.clone(),
                links: links.clone(),
                role: role_rx.clone(),
                router: router.clone(),
            },
            stopped(stop_rx.clone()),
        ))
    });
    tracing::info!(addr = %api_addr, "HTTP API up");
    let http = tokio::spawn({
        let serving =
            axum::serve(listener, router).with_graceful_shutdown(stopped(stop_rx.clone()));
        async move { serving.await }
    });
    ready(Ready {
        api: api_addr,
        endpoint: endpoint_addr,
    });
    let me = LeaderInfo {
        name,
        api: format!("http://{api_addr}"),
        endpoint: advertised,
    };
    let ttl = Duration::from_secs(cfg.store.lease_ttl_secs());
    let (lead_stop_tx, lead_stop_rx) = tokio::sync::watch::channel(false);
    let st = store.clone();
    let mut leading = tokio::spawn(async move {
        let elect = async {
            loop {
                match leader::elect(&st, &me, ttl).await {
                    Ok(l) => break l,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot campaign for leadership; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        };
        let mut l = tokio::select! {
            l = elect => l,
            _ = stopped(lead_stop_rx.clone()) => return Ok(()),
        };
        let term = l.term.clone();
        // The store is brought to this code's schema before anything is scheduled.
        if let Err(e) = ferry_controller::schema::migrate(&st, &term).await {
            l.resign(&st).await;
            return Err(format!("cannot migrate the state store: {e}"));
        }
        tracing::info!(
            generation = term.generation,
            "leading: scheduling and running plans"
        );
        let _ = role_tx.send(Role::Leader(term.clone()));
        let scheduler = tokio::spawn(ferry_controller::scheduler::run(
            st.clone(),
            term.clone(),
            stopped(lead_stop_rx.clone()),
        ));
        let executor = tokio::spawn(ferry_controller::executor::run(
            st.clone(),
            links,
            term,
            stopped(lead_stop_rx.clone()),
        ));
        let outcome = tokio::select! {
            why = l.lost() => Err(why),
            _ = stopped(lead_stop_rx.clone()) => Ok(()),
        };
        let _ = role_tx.send(Role::Follower);
        scheduler.abort();
        executor.abort();
        match outcome {
            Ok(()) => {
                l.resign(&st).await;
                Ok(())
            }
            Err(why) => Err(format!(
                "lost the leadership ({why}); exiting so that this controller restarts as a follower"
            )),
        }
    });
    let result = tokio::select! {
        _ = until => Ok(()),
        r = &mut leading => match r {
            Ok(Err(why)) => Err(anyhow::anyhow!(why)),
            Ok(Ok(())) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("leadership task: {e}")),
        },
    };
    let _ = lead_stop_tx.send(true);
    if !leading.is_finished() {
        let _ = leading.await;
    }
    let _ = stop_tx.send(true);
    let _ = http.await;
    if let Some(a) = agents {
        let _ = a.await;
    }
    result
}

/// A new random API token and its BLAKE3 hash (hex).
fn new_token() -> (String, String) {
    let mut raw = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let hash = blake3::hash(token.as_bytes()).to_hex().to_string();
    (token, hash)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Serve { config } => {
            let cfg = load(&config)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(
                    cfg,
                    |r| {
                        println!("ferry-controller listening on {}", r.api);
                        tracing::info!(api = %r.api, agents = ?r.endpoint, "ready");
                    },
                    terminated(),
                ))
        }
        Cmd::Dev {
            data_dir,
            listen,
            agent_bin,
            token,
        } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(dev::run(data_dir, listen, agent_bin, token, cli.json)),
        Cmd::Token => {
            ferry_controller::exit::quiet_on_closed_pipe();
            let (token, hash) = new_token();
            if cli.json {
                println!("{}", serde_json::json!({ "token": token, "blake3": hash }));
            } else {
                println!("token:  {token}\nblake3: {hash}");
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    use std::io::IsTerminal as _;
    // Colours only for a person: logs to a file or a journal stay plain.
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let json = cli.json;
    ferry_controller::exit::finish(json, run(cli))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_parses_and_bad_ones_are_refused() {
        let example = include_str!("../ferry-controller.example.toml");
        let p = std::path::Path::new("example.toml");
        let cfg = parse(example, p).expect("the example parses");
        assert_eq!(cfg.tokens.len(), 2);
        assert!(cfg.agents.is_some_and(|a| a.advertise.is_some()));
        let etcd = example.replace(
            "kind = \"embedded\"\npath = \"/var/lib/ferry/controller.redb\"",
            "kind = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nlease_ttl_secs = 9",
        );
        let cfg = parse(&etcd, p).expect("etcd parses");
        assert_eq!(cfg.store.lease_ttl_secs(), 9);
        for (bad, says) in [
            (
                etcd.replace("lease_ttl_secs = 9", "lease_ttl_secs = 1"),
                "lease_ttl_secs",
            ),
            (
                example.replace("listen = \"127.0.0.1:7480\"", "listen = \"x\""),
                "listen",
            ),
            (
                example.replace("[agents]", "[agents]\ncolour = 1"),
                "colour",
            ),
            (
                example.replace("role = \"admin\"", "role = \"root\""),
                "root",
            ),
        ] {
            let e = format!("{:#}", parse(&bad, p).expect_err("refused"));
            assert!(e.contains(says), "{says}: {e}");
        }
    }
}
