//! `ferry-controller`: the site controller daemon (so far: the HTTP API over the state store).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use ferry_controller::api::{self, ApiState, Role, TokenEntry};
use ferry_controller::store::{EmbeddedStore, EtcdStore, Store};
use serde::Deserialize;

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
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Make a new API token: prints the token (give it to its user) and the BLAKE3 hash that
    /// goes into the configuration (the controller never stores the token itself).
    Token,
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
    Embedded { path: PathBuf },
    Etcd { endpoints: Vec<String> },
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
    let cfg: Config =
        toml::from_str(&text).with_context(|| format!("configuration {}", path.display()))?;
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

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let store = match &cfg.store {
        StoreConfig::Embedded { path } => Store::Embedded(
            EmbeddedStore::open(path).with_context(|| format!("open {}", path.display()))?,
        ),
        StoreConfig::Etcd { endpoints } => Store::Etcd(
            EtcdStore::connect(endpoints)
                .await
                .context("connect to etcd")?,
        ),
    };
    // One controller per store for now; leader election (etcd) will raise this per term.
    let generation = 1;
    let links = Arc::new(ferry_controller::agents::Links::default());
    let state = Arc::new(ApiState::new(
        store.clone(),
        tokens(&cfg)?,
        generation,
        links.clone(),
    ));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let scheduler = tokio::spawn(ferry_controller::scheduler::run(
        store.clone(),
        generation,
        stopped(stop_rx.clone()),
    ));
    let executor = tokio::spawn(ferry_controller::executor::run(
        store.clone(),
        links.clone(),
        stopped(stop_rx.clone()),
    ));
    let agents = match &cfg.agents {
        Some(a) => {
            let bound = ferry_controller::agents::bind(a).context("agent endpoint")?;
            tracing::info!(addr = %bound.local_addr()?, "agent endpoint up");
            Some(tokio::spawn(ferry_controller::agents::serve(
                bound,
                store,
                links,
                stopped(stop_rx),
            )))
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    println!("ferry-controller listening on {addr}");
    tracing::info!(%addr, "HTTP API up");
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await
        .context("serve")?;
    let _ = stop_tx.send(true);
    let _ = scheduler.await;
    let _ = executor.await;
    if let Some(a) = agents {
        let _ = a.await;
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Serve { config } => {
            let cfg = load(&config)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(cfg))
        }
        Cmd::Token => {
            let mut raw = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
            let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
            let hash = blake3::hash(token.as_bytes()).to_hex().to_string();
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
    tracing_subscriber::fmt()
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
