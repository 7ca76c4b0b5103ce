//! `ferry-agent` command line: volume and snapshot operations on this node's store.
//! Every command takes `--json`; errors exit 1 (with `{"error": {"kind", "message"}}` on
//! stdout under `--json`), usage errors exit 2.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use ferry_agent::config::AgentConfig;
use ferry_agent::hooks::Hooks;
use ferry_agent::{Store, StoreError};
use ferry_wire::units::{format_size, parse_size};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "ferry-agent",
    version,
    about = "ferry node agent: volumes, snapshots and manifests"
)]
struct Cli {
    /// Data directory (overrides the config file's data_dir).
    #[arg(long, global = true, env = "FERRY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Configuration file (TOML; see ferry-agent.example.toml).
    #[arg(long, global = true, env = "FERRY_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Volumes: create, adopt, list, path, delete, rollback, clone.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Snapshots: create, group, list, diff, hashes, verify, delete.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Show the store's backend and read engine.
    Info,
    /// Site certificate authority and node certificates.
    #[command(subcommand)]
    Pki(PkiCmd),
    /// Run the agent daemon: the QUIC endpoint for paired sites.
    Serve {
        /// Listen address (overrides net.listen), e.g. 0.0.0.0:7443 or 127.0.0.1:0.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Send a snapshot to a mirror volume on a peer agent (changed blocks only).
    Replicate(ReplicateArgs),
    /// Controller tasks, run at most once per task id (the ledger is in the data dir).
    #[command(subcommand)]
    Task(TaskCmd),
    /// Connect to a peer agent, check mutual TLS and the handshake, measure round trips.
    Ping {
        /// The peer's address, HOST:PORT.
        peer: String,
        /// Round trips to measure.
        #[arg(long, default_value_t = 3)]
        count: usize,
    },
}

/// What `replicate` sends, where and how.
#[derive(Args)]
struct ReplicateArgs {
    /// VOLUME SNAPSHOT, or several such pairs: they run at once as sessions of one
    /// connection and share it fairly (JSON output: then an array, one entry per pair).
    #[arg(required = true, num_args = 2.., value_names = ["VOLUME", "SNAPSHOT"])]
    pairs: Vec<String>,
    /// The peer agent, HOST:PORT.
    #[arg(long)]
    to: String,
    /// Name of the mirror volume at the peer (default: the volume's name; one pair only).
    #[arg(long = "as")]
    mirror: Option<String>,
    /// Send relative to this snapshot, which the peer must hold with the same root
    /// (default: the newest snapshot both hold; one pair only).
    #[arg(long)]
    base: Option<String>,
    /// Per-block compression: off, zstd or zstd:LEVEL (default: net.compress).
    #[arg(long)]
    compress: Option<ferry_agent::config::Compression>,
    /// Retries of network failures (with backoff from 1 s to 30 s).
    #[arg(long, default_value_t = 5)]
    retries: u32,
    /// Bytes per second for each transfer, e.g. 50MiB, on top of net.bandwidth_limit
    /// (which all transfers of the agent share).
    #[arg(long, value_parser = size_arg)]
    bwlimit: Option<u64>,
    /// Print progress to stderr every second (default: when stderr is a terminal).
    #[arg(long)]
    progress: bool,
}

#[derive(Subcommand)]
enum TaskCmd {
    /// Run the task in FILE (JSON; - for stdin) unless its id already ran; print its state.
    Run {
        /// The task as JSON, e.g. {"id": "t1", "generation": 1, "kind": {"delete_snapshot":
        /// {"volume": "v", "snapshot": "s"}}}.
        file: PathBuf,
    },
    /// The recorded state of a task id.
    Show {
        /// The task's id.
        id: String,
    },
}

#[derive(Subcommand)]
enum PkiCmd {
    /// Create a site CA in DIR (ca.pem, and ca.key readable by root only).
    #[command(after_help = "Example: ferry-agent pki ca site-a --dir /etc/ferry/ca")]
    Ca {
        /// The site's name (in every certificate it issues).
        site: String,
        /// Where ca.pem and ca.key go.
        #[arg(long)]
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 7300)]
        days: u32,
    },
    /// Issue a node certificate (NODE.pem, NODE.key) from the CA in --ca-dir.
    #[command(
        after_help = "Example: ferry-agent pki issue node1 --ca-dir /etc/ferry/ca --out /etc/ferry/pki"
    )]
    Issue {
        /// The node's (or controller's) name.
        node: String,
        /// The site CA's directory (ferry-agent pki ca).
        #[arg(long)]
        ca_dir: PathBuf,
        /// Where NODE.pem and NODE.key go.
        #[arg(long)]
        out: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
}

#[derive(Subcommand)]
enum VolumeCmd {
    /// Create a sparse raw image volume.
    #[command(after_help = "Example: ferry-agent volume create vm-disk0 --size 100G")]
    Create {
        /// The volume's name.
        name: String,
        /// Size, e.g. 10G, 512MiB.
        #[arg(long, value_parser = size_arg)]
        size: u64,
        /// Block size for manifests and dedup (default from config).
        #[arg(long, value_parser = size_arg)]
        block_size: Option<u64>,
    },
    /// Adopt an existing image file by absolute path (it stays where it is).
    #[command(after_help = "Example: ferry-agent volume adopt lun0 /srv/iscsi/lun0.img")]
    Adopt {
        /// The name it is known by.
        name: String,
        /// The image file's absolute path.
        path: PathBuf,
        /// Block size for manifests and dedup (default from config).
        #[arg(long, value_parser = size_arg)]
        block_size: Option<u64>,
    },
    /// List volumes.
    List,
    /// Print a volume's image path.
    Path {
        /// The volume's name.
        name: String,
    },
    /// Delete a volume (adopted files are only forgotten, never deleted).
    Delete {
        /// The volume's name.
        name: String,
        /// Also delete its snapshots.
        #[arg(long)]
        force: bool,
    },
    /// Roll a volume back to a snapshot, in place.
    Rollback {
        /// The volume.
        volume: String,
        /// The snapshot it goes back to.
        snapshot: String,
    },
    /// Create a new, writable volume from a snapshot (a rebuild, from a mirror too).
    #[command(
        after_help = "Example: ferry-agent volume clone vm-disk0 hourly-2026-11-24T09 vm-disk0-restored"
    )]
    Clone {
        /// The volume whose snapshot it is.
        volume: String,
        /// The snapshot.
        snapshot: String,
        /// The new volume's name.
        new: String,
    },
}

#[derive(Args, Clone)]
struct HookArgs {
    /// Command run before the snapshot (e.g. "fsfreeze -f /mnt"); failure aborts it.
    #[arg(long)]
    pre: Option<String>,
    /// Command run after the snapshot, also when it failed (e.g. "fsfreeze -u /mnt").
    #[arg(long)]
    post: Option<String>,
    /// Seconds a hook may run (default from config).
    #[arg(long)]
    hook_timeout: Option<u64>,
}

impl HookArgs {
    fn hooks(&self) -> Hooks {
        Hooks {
            pre: self.pre.clone(),
            post: self.post.clone(),
            timeout: Duration::from_secs(self.hook_timeout.unwrap_or(0)),
        }
    }
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Snapshot one volume.
    #[command(after_help = "Example: ferry-agent snapshot create vm-disk0 hourly-2026-11-24T10")]
    Create {
        /// The volume.
        volume: String,
        /// The snapshot's name.
        snapshot: String,
        #[command(flatten)]
        hooks: HookArgs,
    },
    /// Snapshot several volumes in one step under one name (all or nothing).
    #[command(
        after_help = "Example: ferry-agent snapshot group nightly vm-disk0 vm-disk1 --pre 'fsfreeze -f /mnt/db' --post 'fsfreeze -u /mnt/db'"
    )]
    Group {
        /// The snapshot's name, the same on every volume.
        snapshot: String,
        /// The volumes.
        #[arg(required = true)]
        volumes: Vec<String>,
        #[command(flatten)]
        hooks: HookArgs,
    },
    /// List a volume's snapshots, oldest first.
    List {
        /// The volume.
        volume: String,
    },
    /// Byte ranges changed between two snapshots.
    Diff {
        /// The volume.
        volume: String,
        /// The older snapshot.
        base: String,
        /// The newer snapshot.
        snapshot: String,
    },
    /// One hex BLAKE3 hash per block, in order.
    Hashes {
        /// The volume.
        volume: String,
        /// The snapshot.
        snapshot: String,
    },
    /// Print a snapshot's image path (read it, never write it).
    #[command(after_help = "Example: ferry-agent snapshot path vm-disk0 hourly-2026-11-24T10")]
    Path {
        /// The volume.
        volume: String,
        /// The snapshot.
        snapshot: String,
    },
    /// Re-read a snapshot and compare it with its manifest.
    Verify {
        /// The volume.
        volume: String,
        /// The snapshot.
        snapshot: String,
    },
    /// Delete a snapshot.
    Delete {
        /// The volume.
        volume: String,
        /// The snapshot.
        snapshot: String,
    },
}

fn size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    // Die quietly when the reader of our output goes away (`| head`), like other Unix tools.
    // SAFETY: setting a signal disposition before any thread starts.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let json = cli.json;
    match run(cli) {
        Ok(()) if PARTIAL_FAILURE.load(std::sync::atomic::Ordering::Relaxed) => ExitCode::FAILURE,
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let kind = e
                .downcast_ref::<StoreError>()
                .map_or("error", StoreError::kind);
            let message = format!("{e:#}");
            if json {
                println!(
                    "{}",
                    // `code` as in the controller's and the ferry CLI's errors; `kind` kept.
                    serde_json::json!({ "error": { "code": kind, "kind": kind, "message": message } })
                );
            } else {
                eprintln!("error: {message}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Set when a command printed its results but some of them are failures: exit non-zero.
static PARTIAL_FAILURE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn replicate_line(
    o: &mut dyn Write,
    r: &ferry_agent::replication::send::ReplicateReport,
) -> std::io::Result<()> {
    if r.already_there {
        return writeln!(
            o,
            "{}@{} is already at {} as {}",
            r.volume, r.snapshot, r.peer, r.mirror
        );
    }
    writeln!(
        o,
        "{}@{} -> {} as {}: {} ({} of {} blocks sent, {} zero, {} resumed, base {}) in {:.1} ms; root {}",
        r.volume, r.snapshot, r.peer, r.mirror,
        format_size(r.sent_bytes), r.sent_blocks, r.blocks, r.zero_blocks, r.resumed_blocks,
        r.base.as_ref().map_or("none".to_string(), |b| b.to_string()),
        r.elapsed_ms, r.root
    )
}

fn emit<T: Serialize>(
    json: bool,
    value: &T,
    human: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, value)?;
        writeln!(out)?;
    } else {
        human(&mut out)?;
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let mut cfg = match &cli.config {
        Some(p) => AgentConfig::load(p)?,
        None => AgentConfig::default(),
    };
    if let Some(d) = &cli.data_dir {
        cfg.data_dir = d.clone();
    }
    let json = cli.json;
    match cli.cmd {
        Cmd::Pki(c) => return pki(json, c),
        Cmd::Serve { listen } => {
            if let Some(l) = listen {
                cfg.net.listen = l;
            }
            return serve(&cfg, json);
        }
        Cmd::Ping { peer, count } => return ping(&cfg, json, &peer, count),
        _ => {}
    }
    let store = Store::open(cfg.clone()).map_err(anyhow::Error::new)?;
    match cli.cmd {
        Cmd::Pki(_) | Cmd::Serve { .. } | Cmd::Ping { .. } => unreachable!("handled above"),
        Cmd::Replicate(a) => replicate(&cfg, store, json, a),
        Cmd::Task(c) => task(&store, json, c),
        Cmd::Info => info(&cfg, &store, json),
        Cmd::Volume(c) => volume(&store, json, c),
        Cmd::Snapshot(c) => snapshot(&store, json, c),
    }
}

/// `ping`: the handshake with a peer agent, then round trips.
fn ping(cfg: &AgentConfig, json: bool, peer: &str, count: usize) -> anyhow::Result<()> {
    let addr = resolve(peer)?;
    let r = runtime()?.block_on(ferry_agent::daemon::server::ping(cfg, addr, count))?;
    emit(json, &r, |o| {
        writeln!(
            o,
            "{} is {}@{} (protocol {}), connected in {:.1} ms",
            r.peer, r.peer_node, r.peer_site, r.version, r.connect_ms
        )?;
        writeln!(
            o,
            "round trips (ms): {:?}",
            r.rtt_ms
                .iter()
                .map(|x| (x * 100.0).round() / 100.0)
                .collect::<Vec<_>>()
        )
    })
}

/// `replicate`: every VOLUME SNAPSHOT pair a session of one shared connection per peer;
/// one report, or one per pair (some may have failed) when there are several.
fn replicate(cfg: &AgentConfig, store: Store, json: bool, a: ReplicateArgs) -> anyhow::Result<()> {
    let ReplicateArgs {
        pairs,
        to,
        mirror,
        base,
        compress,
        retries,
        bwlimit,
        progress,
    } = a;
    if pairs.len() % 2 != 0 {
        anyhow::bail!(
            "replicate takes VOLUME SNAPSHOT pairs; {} is missing its snapshot",
            pairs[pairs.len() - 1]
        );
    }
    let many = pairs.len() > 2;
    if many && (mirror.is_some() || base.is_some()) {
        anyhow::bail!(
            "--as and --base name one volume's mirror and base: give one VOLUME SNAPSHOT pair"
        );
    }
    let target = ferry_agent::replication::send::Target {
        peer: resolve(&to)?,
        mirror,
        base,
        bandwidth_limit: bwlimit,
        compress: compress.unwrap_or(cfg.net.compress),
        progress: progress || std::io::IsTerminal::is_terminal(&std::io::stderr()),
        site: None,
        report_to: None,
    };
    let store = std::sync::Arc::new(store);
    let results = runtime()?.block_on(async {
        let peers = std::sync::Arc::new(ferry_agent::replication::send::Peers::new(cfg)?);
        let budget = ferry_agent::replication::send::Budget::new(cfg.net.bandwidth_limit);
        let mut set = tokio::task::JoinSet::new();
        for (k, pair) in pairs.chunks(2).enumerate() {
            let (cfg, store, peers, budget, target) = (
                cfg.clone(),
                store.clone(),
                peers.clone(),
                budget.clone(),
                target.clone(),
            );
            let (volume, snapshot) = (pair[0].clone(), pair[1].clone());
            set.spawn(async move {
                let r = ferry_agent::replication::send::replicate_with_retries(
                    &cfg,
                    store,
                    (&peers, &budget),
                    &volume,
                    &snapshot,
                    &target,
                    retries,
                )
                .await;
                (k, volume, snapshot, r)
            });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.push(r?);
        }
        peers.close().await;
        out.sort_by_key(|r| r.0);
        anyhow::Ok(out)
    })?;
    if !many {
        let r = results
            .into_iter()
            .next()
            .map(|r| r.3)
            .ok_or_else(|| anyhow::anyhow!("no transfer ran"))??;
        return emit(json, &r, |o| replicate_line(o, &r));
    }
    let failed = results.iter().filter(|r| r.3.is_err()).count();
    let rows: Vec<serde_json::Value> = results
        .iter()
        .map(|(_, volume, snapshot, r)| match r {
            Ok(rep) => serde_json::to_value(rep).unwrap_or_default(),
            Err(e) => serde_json::json!({
                "volume": volume, "snapshot": snapshot,
                "error": { "kind": e.kind(), "message": e.to_string() }
            }),
        })
        .collect();
    emit(json, &rows, |o| {
        for (_, volume, snapshot, r) in &results {
            match r {
                Ok(rep) => replicate_line(o, rep)?,
                Err(e) => writeln!(o, "{volume}@{snapshot}: error: {e}")?,
            }
        }
        Ok(())
    })?;
    if failed > 0 {
        PARTIAL_FAILURE.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(())
}

/// `task run` / `task show`: a controller task run by hand (at most once), or its record.
fn task(store: &Store, json: bool, c: TaskCmd) -> anyhow::Result<()> {
    match c {
        TaskCmd::Run { file } => {
            let text = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut s)
                    .context("read the task from stdin")?;
                s
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("read the task from {}", file.display()))?
            };
            if text.len() > ferry_wire::task::TASK_LIMIT {
                anyhow::bail!("a task is at most {} bytes", ferry_wire::task::TASK_LIMIT);
            }
            let task: ferry_wire::task::Task =
                serde_json::from_str(&text).context("not a valid task")?;
            let ledger = ferry_agent::daemon::tasks::Ledger::open(store)?;
            let state = ledger.run(store, &task, std::time::Instant::now())?;
            if !matches!(state, ferry_wire::task::TaskState::Done { .. }) {
                PARTIAL_FAILURE.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            emit(json, &state, |o| writeln!(o, "task {}: {state:?}", task.id))
        }
        TaskCmd::Show { id } => {
            let id = ferry_agent::error::check_name("task id", &id)?;
            let ledger = ferry_agent::daemon::tasks::Ledger::open(store)?;
            let rec = ledger
                .get(&id)?
                .ok_or_else(|| ferry_agent::error::StoreError::NotFound {
                    what: "task",
                    name: id.to_string(),
                })?;
            emit(json, &rec, |o| {
                writeln!(o, "task {}: {:?}", rec.task.id, rec.state)
            })
        }
    }
}

/// `info`: the store's backend, filesystem and read engine.
fn info(cfg: &AgentConfig, store: &Store, json: bool) -> anyhow::Result<()> {
    let v = serde_json::json!({
        "data_dir": store.root(),
        "backend": store.backend_name(),
        "filesystem": ferry_agent::fsx::fs_type(store.root()),
        "io_uring": ferry_agent::engine::io_uring_available(),
        "block_size": cfg.block_size,
    });
    emit(json, &v, |o| {
        writeln!(o, "data dir:   {}", store.root().display())?;
        writeln!(o, "backend:    {}", store.backend_name())?;
        writeln!(o, "filesystem: {}", ferry_agent::fsx::fs_type(store.root()))?;
        writeln!(
            o,
            "io_uring:   {}",
            ferry_agent::engine::io_uring_available()
        )
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")
}

fn resolve(peer: &str) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    peer.to_socket_addrs()
        .with_context(|| format!("resolve {peer:?} (expected HOST:PORT)"))?
        .next()
        .with_context(|| format!("{peer:?} resolves to no address"))
}

fn pki(json: bool, c: PkiCmd) -> anyhow::Result<()> {
    match c {
        PkiCmd::Ca { site, dir, days } => {
            let cert = ferry_agent::pki::create_ca(&site, &dir, days).map_err(StoreError::from)?;
            emit(
                json,
                &serde_json::json!({ "site": site, "cert": cert, "key": dir.join("ca.key") }),
                |o| {
                    writeln!(o, "created the CA of site {site}: {} (give this to paired sites); key {} (keep it safe)", cert.display(), dir.join("ca.key").display())
                },
            )
        }
        PkiCmd::Issue {
            node,
            ca_dir,
            out,
            days,
        } => {
            let (cert, key) =
                ferry_agent::pki::issue(&ca_dir, &node, &out, days).map_err(StoreError::from)?;
            emit(
                json,
                &serde_json::json!({ "node": node, "cert": cert, "key": key }),
                |o| writeln!(o, "issued {} and {}", cert.display(), key.display()),
            )
        }
    }
}

fn serve(cfg: &AgentConfig, json: bool) -> anyhow::Result<()> {
    if cfg.controller.all().is_empty() == cfg.controller.ca.is_some() {
        anyhow::bail!("controller.address (or addresses) and controller.ca go together (the controllers' addresses and this site's CA certificate)");
    }
    let rt = runtime()?;
    rt.block_on(async {
        let server = ferry_agent::daemon::server::Server::bind(cfg)?;
        let addr = server.local_addr()?;
        let id = server.identity();
        tokio::spawn(id.warn_of_expiry());
        // One line saying where we listen, for operators and for scripts that start us.
        emit(json, &serde_json::json!({ "listening": addr, "node": id.node, "site": id.site }), |o| {
            writeln!(o, "{}@{} listening on {addr}", id.node, id.site)
        })?;
        std::io::stdout().flush()?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        // The link to the site controller, when one is configured.
        // The controller tells paired sites where this node listens: the bound port.
        let mut linked = cfg.clone();
        linked.net.listen = addr;
        let control = tokio::spawn(ferry_agent::daemon::control::run(
            linked,
            server.store(),
            server.peers(),
            stopped(stop_rx.clone()),
        ));
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
            let _ = stop_tx.send(true);
        });
        server.run(stopped(stop_rx)).await;
        match control.await {
            Ok(Err(e)) => Err(e.into()),
            _ => Ok(()),
        }
    })
}

fn volume(store: &Store, json: bool, c: VolumeCmd) -> anyhow::Result<()> {
    match c {
        VolumeCmd::Create {
            name,
            size,
            block_size,
        } => {
            let v = store.create_volume(&name, size, block_size)?;
            emit(json, &v, |o| {
                writeln!(
                    o,
                    "created volume {} ({}) at {}",
                    v.name,
                    format_size(v.size),
                    v.path.display()
                )
            })
        }
        VolumeCmd::Adopt {
            name,
            path,
            block_size,
        } => {
            let v = store.adopt_volume(&name, &path, block_size)?;
            emit(json, &v, |o| {
                writeln!(
                    o,
                    "adopted {} as volume {} ({})",
                    v.path.display(),
                    v.name,
                    format_size(v.size)
                )
            })
        }
        VolumeCmd::List => {
            let vs = store.list_volumes()?;
            emit(json, &vs, |o| {
                writeln!(
                    o,
                    "{:<24} {:<8} {:>12} {:>6}  PATH",
                    "NAME", "KIND", "SIZE", "SNAPS"
                )?;
                for v in &vs {
                    let kind = serde_json::to_value(v.kind)
                        .ok()
                        .and_then(|k| k.as_str().map(String::from))
                        .unwrap_or_default();
                    writeln!(
                        o,
                        "{:<24} {:<8} {:>12} {:>6}  {}",
                        v.name,
                        kind,
                        format_size(v.size),
                        v.snapshots,
                        v.path.display()
                    )?;
                }
                Ok(())
            })
        }
        VolumeCmd::Path { name } => {
            let v = store.volume(&name)?;
            emit(
                json,
                &serde_json::json!({ "name": v.name, "path": v.path }),
                |o| writeln!(o, "{}", v.path.display()),
            )
        }
        VolumeCmd::Delete { name, force } => {
            let r = store.delete_volume(&name, force)?;
            emit(json, &r, |o| {
                if r.image_deleted {
                    writeln!(
                        o,
                        "deleted volume {} and {} snapshot(s)",
                        r.volume, r.snapshots_deleted
                    )
                } else {
                    writeln!(
                        o,
                        "forgot adopted volume {} ({} kept) and deleted {} snapshot(s)",
                        r.volume,
                        r.path.display(),
                        r.snapshots_deleted
                    )
                }
            })
        }
        VolumeCmd::Rollback { volume, snapshot } => {
            let r = store.rollback(&volume, &snapshot)?;
            emit(json, &r, |o| {
                writeln!(o, "rolled {} back to {}", r.volume, r.snapshot)
            })
        }
        VolumeCmd::Clone {
            volume,
            snapshot,
            new,
        } => {
            let v = store.clone_volume(&volume, &snapshot, &new)?;
            emit(json, &v, |o| {
                writeln!(
                    o,
                    "created volume {} from {volume}@{snapshot} at {}",
                    v.name,
                    v.path.display()
                )
            })
        }
    }
}

fn snapshot(store: &Store, json: bool, c: SnapshotCmd) -> anyhow::Result<()> {
    match c {
        SnapshotCmd::Create {
            volume,
            snapshot,
            hooks,
        } => {
            let m = store.create_snapshot(&volume, &snapshot, &hooks.hooks())?;
            emit(json, &m, |o| {
                writeln!(
                    o,
                    "snapshot {}@{} root {} ({} manifest, read {} in {:.1} ms)",
                    m.volume,
                    m.name,
                    m.root,
                    if m.manifest.base.is_some() {
                        "incremental"
                    } else {
                        "full"
                    },
                    format_size(m.manifest.bytes_read),
                    m.manifest.elapsed_ms
                )
            })
        }
        SnapshotCmd::Group {
            snapshot,
            volumes,
            hooks,
        } => {
            let ms = store.create_group(&snapshot, &volumes, &hooks.hooks())?;
            emit(json, &ms, |o| {
                for m in &ms {
                    writeln!(o, "snapshot {}@{} root {}", m.volume, m.name, m.root)?;
                }
                Ok(())
            })
        }
        SnapshotCmd::List { volume } => {
            let ms = store.list_snapshots(&volume)?;
            emit(json, &ms, |o| {
                writeln!(
                    o,
                    "{:<28} {:>12} {:<6} {:<12} ROOT",
                    "NAME", "SIZE", "METHOD", "MANIFEST"
                )?;
                for m in &ms {
                    let method = serde_json::to_value(m.method)
                        .ok()
                        .and_then(|k| k.as_str().map(String::from))
                        .unwrap_or_default();
                    let mode = if m.manifest.base.is_some() {
                        "incremental"
                    } else {
                        "full"
                    };
                    writeln!(
                        o,
                        "{:<28} {:>12} {:<6} {:<12} {}",
                        m.name,
                        format_size(m.size),
                        method,
                        mode,
                        m.root
                    )?;
                }
                Ok(())
            })
        }
        SnapshotCmd::Diff {
            volume,
            base,
            snapshot,
        } => {
            let d = store.diff(&volume, &base, &snapshot)?;
            emit(json, &d, |o| {
                for (s, e) in &d.ranges {
                    writeln!(o, "{s}\t{e}")?;
                }
                writeln!(
                    o,
                    "# {} changed in {} range(s) ({})",
                    format_size(d.changed_bytes),
                    d.ranges.len(),
                    d.method
                )
            })
        }
        SnapshotCmd::Hashes { volume, snapshot } => {
            let m = store.manifest(&volume, &snapshot)?;
            let mut out = std::io::stdout().lock();
            if json {
                // Streamed: a manifest can hold hundreds of millions of hashes.
                let head = serde_json::json!({
                    "volume": volume, "snapshot": snapshot,
                    "block_size": m.geometry().block_size, "size": m.geometry().volume_size,
                    "root": m.root().to_hex(),
                })
                .to_string();
                write!(out, "{},\"hashes\":[", head.trim_end_matches('}'))?;
                for i in 0..m.len() {
                    let sep = if i == 0 { "" } else { "," };
                    write!(out, "{sep}\"{}\"", m.hash(i))?;
                }
                writeln!(out, "]}}")?;
            } else {
                for i in 0..m.len() {
                    writeln!(out, "{}", m.hash(i))?;
                }
            }
            Ok(())
        }
        SnapshotCmd::Path { volume, snapshot } => {
            let (image, _, _) = store.snapshot_paths(&volume, &snapshot)?;
            emit(
                json,
                &serde_json::json!({ "volume": volume, "snapshot": snapshot, "path": image }),
                |o| writeln!(o, "{}", image.display()),
            )
        }
        SnapshotCmd::Verify { volume, snapshot } => {
            let r = store.verify(&volume, &snapshot)?;
            emit(json, &r, |o| {
                if r.ok {
                    writeln!(
                        o,
                        "ok: {} blocks match the manifest (root {})",
                        r.blocks, r.root
                    )?;
                } else {
                    writeln!(
                        o,
                        "MISMATCH: {} block(s) differ from the manifest: {:?}",
                        r.bad_count, r.bad_blocks
                    )?;
                }
                if !r.leaf_index_ok {
                    writeln!(o, "warning: the leaf index does not match; the next snapshot will hash in full")?;
                }
                Ok(())
            })?;
            if r.ok {
                Ok(())
            } else {
                Err(StoreError::Corrupt {
                    what: "snapshot",
                    path: store.snapshot_paths(&volume, &snapshot)?.0,
                    detail: format!("{} block(s) do not match the manifest", r.bad_count),
                })
                .context("verify")
            }
        }
        SnapshotCmd::Delete { volume, snapshot } => {
            store.delete_snapshot(&volume, &snapshot)?;
            emit(
                json,
                &serde_json::json!({ "deleted": format!("{volume}@{snapshot}") }),
                |o| writeln!(o, "deleted {volume}@{snapshot}"),
            )
        }
    }
}
