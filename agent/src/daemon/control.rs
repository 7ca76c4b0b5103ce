//! The agent's link to its site controller: connect out (QUIC, mutual TLS with the site CA,
//! the ferry handshake), register the node's volumes and free space, heartbeat every
//! [`HEARTBEAT_SECS`], and run the tasks the controller sends through the at-most-once
//! [`Ledger`], reporting each one's state. A lost link is re-made with backoff (1 s to 30 s);
//! tasks already running finish and their reports go out on the next link.

use std::sync::Arc;
use std::time::Duration;

use ferry_wire::control::{
    AgentMsg, ControllerMsg, VolumeReport, CONTROL_LINK_LIMIT, HEARTBEAT_SECS, MAX_REPORTED_VOLUMES,
};
use ferry_wire::task::{Task, TaskKind, TaskResult, TaskState};
use tokio::sync::mpsc;

use crate::config::AgentConfig;
use crate::daemon::peers::PeerSites;
use crate::daemon::tasks::Ledger;
use crate::error::{Result, StoreError};
use crate::net::{self, NetError};
use crate::pki::{Identity, Trust};
use crate::replication::send::{Budget, Target};
use crate::store::Store;

fn net_err(e: NetError) -> StoreError {
    StoreError::Net {
        retryable: e.retryable(),
        message: e.to_string(),
    }
}

/// How a link ended.
enum LinkEnd {
    /// The controller is not the leader; it said where the leader is (if it knows).
    NotLeader(Option<String>),
    Failed(StoreError),
}

impl From<StoreError> for LinkEnd {
    fn from(e: StoreError) -> Self {
        LinkEnd::Failed(e)
    }
}

impl From<NetError> for LinkEnd {
    fn from(e: NetError) -> Self {
        match e.closed_by_peer() {
            Some((code, to)) if code == ferry_wire::msg::close::NOT_LEADER => {
                LinkEnd::NotLeader(Some(to).filter(|t| !t.is_empty()))
            }
            _ => LinkEnd::Failed(net_err(e)),
        }
    }
}

/// The node's volumes as the controller is told them: the first [`MAX_REPORTED_VOLUMES`]
/// by name, and how many more there are.
fn volumes(store: &Store) -> (Vec<VolumeReport>, u64) {
    let mut all: Vec<VolumeReport> = store
        .list_volumes()
        .unwrap_or_default()
        .into_iter()
        .map(|v| VolumeReport {
            name: v.name,
            size: v.size,
            snapshots: v.snapshots as u32,
            mirror: v.mirror.is_some(),
        })
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let omitted = all.len().saturating_sub(MAX_REPORTED_VOLUMES) as u64;
    all.truncate(MAX_REPORTED_VOLUMES);
    (all, omitted)
}

async fn volumes_now(store: &Arc<Store>) -> (Vec<VolumeReport>, u64) {
    let st = store.clone();
    tokio::task::spawn_blocking(move || volumes(&st))
        .await
        .unwrap_or_default()
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the link's tasks share: the store and ledger, the paired sites, and for transfers
/// the one bandwidth budget and the bound on transfers at once.
struct Daemon {
    cfg: AgentConfig,
    store: Arc<Store>,
    ledger: Arc<Ledger>,
    peers: Arc<PeerSites>,
    budget: Budget,
    transfers: tokio::sync::Semaphore,
    /// Verifications run one at a time (they read whole snapshots); checks a few at once.
    verifications: tokio::sync::Semaphore,
    checks: tokio::sync::Semaphore,
    /// Task ids running beside the ledger in this process, each with the link to tell when it ends:
    /// a repeat (the controller restarted, or another one leads now) is answered `running`
    /// and its link is the one told, with progress, from then on.
    running: std::sync::Mutex<std::collections::HashMap<String, mpsc::Sender<AgentMsg>>>,
}

/// Keeps the link to the controller up until `shutdown`; returns at once if none is
/// configured.
pub async fn run(
    cfg: AgentConfig,
    store: Arc<Store>,
    peers: Arc<PeerSites>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let addresses = cfg.controller.all();
    let (false, Some(ca)) = (addresses.is_empty(), cfg.controller.ca.clone()) else {
        return Ok(());
    };
    let (Some(cert), Some(key)) = (&cfg.net.cert, &cfg.net.key) else {
        return Err(StoreError::Invalid(
            "controller.address needs net.cert and net.key (this node's identity)".into(),
        ));
    };
    let id = Identity::load(cert, key)?;
    let mut trust = Trust::default();
    trust.add_file(&ca, Some(&id.site))?;
    let ledger = Arc::new(Ledger::open(&store)?);
    let daemon = Arc::new(Daemon {
        cfg: cfg.clone(),
        store: store.clone(),
        ledger: ledger.clone(),
        peers,
        budget: Budget::new(cfg.net.bandwidth_limit),
        transfers: tokio::sync::Semaphore::new(cfg.net.max_transfers),
        verifications: tokio::sync::Semaphore::new(1),
        checks: tokio::sync::Semaphore::new(MAX_CHECKS),
        running: Default::default(),
    });
    // Holds (prepare / release across nodes) end by themselves when not released in time,
    // controller link or not.
    let (l, st) = (ledger.clone(), store.clone());
    let expiry = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let (l, st) = (l.clone(), st.clone());
            match tokio::task::spawn_blocking(move || l.end_expired_holds(&st)).await {
                Ok(Err(e)) => tracing::warn!(error = %e, "ending expired holds failed"),
                Err(e) => tracing::warn!(error = %e, "hold expiry thread failed"),
                Ok(Ok(())) => {}
            }
        }
    });
    let _expiry = AbortOnDrop(expiry);
    tokio::pin!(shutdown);
    let mut delay = Duration::from_secs(1);
    // Where a follower said the leader is: tried next, before the configured list.
    let mut pointed: Option<String> = None;
    let mut turn = 0;
    loop {
        let address = pointed.take().unwrap_or_else(|| {
            turn += 1;
            addresses[(turn - 1) % addresses.len()].clone()
        });
        let attempt = link(&address, &id, &trust, daemon.clone());
        let mut wait = delay;
        tokio::select! {
            r = attempt => {
                match r {
                    Ok(()) => delay = Duration::from_secs(1),
                    Err(LinkEnd::NotLeader(to)) => {
                        tracing::info!(controller = %address, leader = ?to, "not the leader; trying where it points");
                        pointed = to;
                        wait = Duration::from_millis(200);
                    }
                    Err(LinkEnd::Failed(e)) => tracing::warn!(controller = %address, error = %e, retry_s = delay.as_secs(), "controller link down"),
                }
            }
            _ = &mut shutdown => return Ok(()),
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut shutdown => return Ok(()),
        }
        // Back off only once every configured controller was tried.
        if wait == delay && turn % addresses.len() == 0 {
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }
}

/// One link: connect, register, then heartbeats and tasks until the link fails.
async fn link(
    address: &str,
    id: &Identity,
    trust: &Trust,
    daemon: Arc<Daemon>,
) -> std::result::Result<(), LinkEnd> {
    let store = daemon.store.clone();
    let (mut s, vols) = connect_and_register(address, id, trust, &daemon.cfg, &store).await?;
    let (tx, rx) = mpsc::channel::<AgentMsg>(64);
    let writer = spawn_writer(s.send, rx, store.clone(), vols);
    let result: std::result::Result<(), LinkEnd> = async {
        loop {
            let msg: ControllerMsg = net::recv_msg(&mut s.recv, CONTROL_LINK_LIMIT).await?;
            match msg {
                ControllerMsg::Task(task) => {
                    let _ = tx
                        .send(AgentMsg::TaskReport {
                            id: task.id.clone(),
                            state: TaskState::Running,
                        })
                        .await;
                    if runs_beside(&task.kind) {
                        tokio::spawn(run_beside(task, daemon.clone(), tx.clone()));
                    } else {
                        tokio::spawn(run_task(
                            task,
                            store.clone(),
                            daemon.ledger.clone(),
                            tx.clone(),
                        ));
                    }
                }
                ControllerMsg::Peers { sites } => {
                    let p = daemon.peers.clone();
                    match tokio::task::spawn_blocking(move || p.apply(sites)).await {
                        Ok(Err(e)) => tracing::warn!(error = %e, "cannot take the paired sites"),
                        Err(e) => tracing::warn!(error = %e, "paired sites thread failed"),
                        Ok(Ok(())) => {}
                    }
                }
            }
        }
    }
    .await;
    writer.abort();
    s.conn.close(
        quinn::VarInt::from_u32(ferry_wire::msg::close::DONE),
        b"bye",
    );
    result
}

/// Connects to the controller at `address` (of this node's site only) and registers: the
/// volumes (and, past the bound, how many more), capacity and free space. Returns the
/// session and the volumes it was told.
async fn connect_and_register(
    address: &str,
    id: &Identity,
    trust: &Trust,
    cfg: &AgentConfig,
    store: &Arc<Store>,
) -> std::result::Result<(net::Session, Vec<VolumeReport>), LinkEnd> {
    let addr = tokio::net::lookup_host(address)
        .await
        .map_err(|e| StoreError::Invalid(format!("controller address {address}: {e}")))?
        .next()
        .ok_or_else(|| {
            StoreError::Invalid(format!("controller address {address} resolves to nothing"))
        })?;
    let mut cc = net::client_config(id, trust)?;
    cc.transport_config(net::control_transport());
    let ep = net::client_endpoint(addr, cc)?;
    let mut s = net::connect(&ep, addr, id, trust).await?;
    if s.peer_site != id.site {
        return Err(LinkEnd::Failed(StoreError::Invalid(format!(
            "{address} is of site {}, not this node's site {}",
            s.peer_site, id.site
        ))));
    }
    tracing::info!(controller = %address, peer = %s.peer_node, "connected to the controller");
    let (free, total) = crate::fsx::space(store.root());
    let (vols, omitted) = volumes_now(store).await;
    net::send_msg(
        &mut s.send,
        &AgentMsg::Register {
            volumes: vols.clone(),
            capacity_bytes: total,
            free_bytes: free,
            certificate_expires: id.not_after,
            advertise: cfg.net.advertise.clone(),
            listen_port: cfg.net.listen.port(),
        },
    )
    .await?;
    if omitted > 0 {
        let m = AgentMsg::Volumes {
            volumes: vols.clone(),
            omitted,
            free_bytes: free,
        };
        net::send_msg(&mut s.send, &m).await?;
    }
    Ok((s, vols))
}

/// The one writer of the link's stream: what task threads send, a heartbeat every
/// [`HEARTBEAT_SECS`], and the volume list whenever it changed. A task sends the list before
/// its own report (so the controller knows a volume the moment it hears the task made it);
/// every heartbeat looks again (volumes are also made and deleted on the node itself).
fn spawn_writer(
    mut send: quinn::SendStream,
    mut rx: mpsc::Receiver<AgentMsg>,
    store: Arc<Store>,
    mut vols: Vec<VolumeReport>,
) -> tokio::task::JoinHandle<std::result::Result<(), NetError>> {
    tokio::spawn(async move {
        let root = store.root().to_path_buf();
        let mut tick = tokio::time::interval(Duration::from_secs(HEARTBEAT_SECS));
        let mut seq = 0;
        loop {
            let msg = tokio::select! {
                m = rx.recv() => match m { Some(m) => m, None => return Ok(()) },
                _ = tick.tick() => {
                    seq += 1;
                    net::send_msg(&mut send, &AgentMsg::Heartbeat { seq, running: 0, free_bytes: crate::fsx::space(&root).0 }).await?;
                    let (volumes, omitted) = volumes_now(&store).await;
                    AgentMsg::Volumes { volumes, omitted, free_bytes: crate::fsx::space(&root).0 }
                }
            };
            if let AgentMsg::Volumes { volumes, .. } = &msg {
                if *volumes == vols {
                    continue;
                }
                vols = volumes.clone();
            }
            net::send_msg(&mut send, &msg).await?;
        }
    })
}

/// Runs one task through the ledger on a blocking thread, telling its progress about once
/// a second while it runs, then the volumes and its final state.
async fn run_task(
    task: ferry_wire::task::Task,
    store: Arc<Store>,
    ledger: Arc<Ledger>,
    tx: mpsc::Sender<AgentMsg>,
) {
    let id = task.id.clone();
    let st = store.clone();
    let received = std::time::Instant::now();
    let progress = Arc::new(crate::progress::Progress::default());
    let p = progress.clone();
    let work = tokio::task::spawn_blocking(move || {
        crate::progress::track(&p, || ledger.run(&st, &task, received))
    });
    let outcome = telling_progress(&id, &progress, work, || tx.clone()).await;
    let state = outcome
        .map_err(|e| StoreError::Invalid(format!("task thread: {e}")))
        .and_then(|r| r)
        .unwrap_or_else(|e| TaskState::Failed {
            kind: e.kind().to_string(),
            message: e.to_string(),
        });
    let (volumes, omitted) = volumes_now(&store).await;
    let free_bytes = crate::fsx::space(store.root()).0;
    let _ = tx
        .send(AgentMsg::Volumes {
            volumes,
            omitted,
            free_bytes,
        })
        .await;
    let _ = tx.send(AgentMsg::TaskReport { id, state }).await;
}

/// Awaits `work`, telling the link `to()` gives where task `id` is (`progress`) about once
/// a second while it changes.
async fn telling_progress<T>(
    id: &ferry_wire::Name,
    progress: &crate::progress::Progress,
    work: impl std::future::Future<Output = T>,
    to: impl Fn() -> mpsc::Sender<AgentMsg>,
) -> T {
    tokio::pin!(work);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut told = (0, 0);
    loop {
        tokio::select! {
            r = &mut work => return r,
            _ = tick.tick() => {
                let (done_bytes, total_bytes) = progress.get();
                if (done_bytes, total_bytes) != told && total_bytes > 0 {
                    told = (done_bytes, total_bytes);
                    let m = AgentMsg::TaskProgress { id: id.clone(), done_bytes, total_bytes };
                    let _ = to().send(m).await;
                }
            }
        }
    }
}

/// Checks of drills run at once on one node at most.
const MAX_CHECKS: usize = 4;

/// Whether a task runs beside the ledger's one-at-a-time tasks: transfers, and the long
/// reads and checks of verifications and drills, which must not hold up a run's snapshot.
fn runs_beside(kind: &TaskKind) -> bool {
    matches!(
        kind,
        TaskKind::Replicate { .. } | TaskKind::Verify { .. } | TaskKind::Check { .. }
    )
}

/// Runs a task beside the others (see [`runs_beside`]): recorded in the ledger (at most
/// once), within its kind's bound on how many run at a time, telling its progress to the
/// latest link that asked for it; then the volumes and the final state.
async fn run_beside(task: Task, d: Arc<Daemon>, tx: mpsc::Sender<AgentMsg>) {
    let id = task.id.clone();
    let fresh = d.running.lock().is_ok_and(|mut r| {
        let fresh = !r.contains_key(id.as_str());
        r.insert(id.to_string(), tx.clone());
        fresh
    });
    if !fresh {
        return; // running here already: its report goes to this link when it ends
    }
    // The link to tell now (the latest that asked).
    let told_to = |d: &Daemon| {
        d.running
            .lock()
            .ok()
            .and_then(|r| r.get(id.as_str()).cloned())
            .unwrap_or_else(|| tx.clone())
    };
    let progress = Arc::new(crate::progress::Progress::default());
    let work = beside(&task, &d, progress.clone());
    let outcome = telling_progress(&id, &progress, work, || told_to(&d)).await;
    let (admitted, outcome) = match outcome {
        Ok((admitted, state)) => (admitted, state),
        Err(e) => (
            true,
            TaskState::Failed {
                kind: e.kind().to_string(),
                message: e.to_string(),
            },
        ),
    };
    if admitted {
        if let Err(e) = d.ledger.finish(&task, &outcome) {
            tracing::warn!(task = %id, error = %e, "cannot record the task's end");
        }
    }
    let to = d
        .running
        .lock()
        .ok()
        .and_then(|mut r| r.remove(id.as_str()))
        .unwrap_or(tx);
    if !matches!(task.kind, TaskKind::Replicate { .. }) {
        let (volumes, omitted) = volumes_now(&d.store).await;
        let free_bytes = crate::fsx::space(d.store.root()).0;
        let m = AgentMsg::Volumes {
            volumes,
            omitted,
            free_bytes,
        };
        let _ = to.send(m).await;
    }
    let _ = to.send(AgentMsg::TaskReport { id, state: outcome }).await;
}

/// Admits a task through the ledger, then runs it within its kind's bound. Returns whether
/// it was admitted (and so is the caller's to record as ended) and its state.
async fn beside(
    task: &Task,
    d: &Arc<Daemon>,
    progress: Arc<crate::progress::Progress>,
) -> Result<(bool, TaskState)> {
    let (l, st, t) = (d.ledger.clone(), d.store.clone(), task.clone());
    let received = std::time::Instant::now();
    let admitted = tokio::task::spawn_blocking(move || l.begin(&st, &t, received))
        .await
        .map_err(|e| StoreError::Invalid(format!("task thread: {e}")))??;
    if let Some(answer) = admitted {
        return Ok((false, answer));
    }
    let bound = match task.kind {
        TaskKind::Replicate { .. } => &d.transfers,
        TaskKind::Verify { .. } => &d.verifications,
        _ => &d.checks,
    };
    let _permit = bound
        .acquire()
        .await
        .map_err(|_| StoreError::Invalid("shutting down".into()))?;
    let result = match &task.kind {
        TaskKind::Replicate { .. } => transfer(task, d, progress).await,
        kind => {
            let (st, kind) = (d.store.clone(), kind.clone());
            tokio::task::spawn_blocking(move || {
                crate::progress::track(&progress, || background(&st, &kind))
            })
            .await
            .map_err(|e| StoreError::Invalid(format!("task thread: {e}")))?
        }
    };
    let state = result.map_or_else(
        |e| TaskState::Failed {
            kind: e.kind().to_string(),
            message: e.to_string(),
        },
        |result| TaskState::Done { result },
    );
    Ok((true, state))
}

/// A verification or a check, on a blocking thread.
fn background(store: &Store, kind: &TaskKind) -> Result<TaskResult> {
    let started = std::time::Instant::now();
    match kind {
        TaskKind::Verify {
            volume,
            snapshot,
            live,
            bytes_per_sec,
        } => {
            let r = crate::verify::paced(
                store,
                volume.as_str(),
                snapshot.as_str(),
                *live,
                *bytes_per_sec,
            )?;
            Ok(TaskResult::Verified {
                ok: r.ok,
                root: r.root.to_hex(),
                blocks: r.blocks,
                bad_blocks: r.bad_count,
                first_bad: r.bad_blocks.into_iter().take(16).collect(),
                bytes_read: r.bytes_read,
                elapsed_ms: started.elapsed().as_millis() as u64,
            })
        }
        TaskKind::Check {
            object,
            volumes,
            command,
            timeout_secs,
        } => {
            let vols = store.volume_paths(volumes)?;
            let mut env: Vec<(&str, String)> = crate::hooks::env(object.as_str(), &vols).into();
            env.retain(|(k, _)| *k != "FERRY_SNAPSHOT");
            env.push(("FERRY_OBJECT", object.to_string()));
            let first = vols.first().map(|(_, p)| p.display().to_string());
            env.push(("FERRY_VOLUME", first.unwrap_or_default()));
            let timeout = Duration::from_secs((*timeout_secs).clamp(1, MAX_CHECK_SECS));
            let output = crate::hooks::run("check", command, &env, timeout)?;
            Ok(TaskResult::Checked {
                elapsed_ms: started.elapsed().as_millis() as u64,
                output,
            })
        }
        _ => Err(StoreError::Invalid("not a background task".into())),
    }
}

/// Longest a drill's check may run.
pub const MAX_CHECK_SECS: u64 = 6 * 3600;

async fn transfer(
    task: &Task,
    d: &Arc<Daemon>,
    progress: Arc<crate::progress::Progress>,
) -> Result<TaskResult> {
    let TaskKind::Replicate {
        volume,
        snapshot,
        site,
        peer,
        mirror,
        retries,
    } = &task.kind
    else {
        return Err(StoreError::Invalid("not a transfer".into()));
    };
    let addr = tokio::net::lookup_host(peer.as_str())
        .await
        .map_err(|e| StoreError::Invalid(format!("peer address {peer}: {e}")))?
        .next()
        .ok_or_else(|| StoreError::Invalid(format!("peer address {peer} resolves to nothing")))?;
    let peers = d.peers.senders().await?;
    let target = Target {
        peer: addr,
        mirror: Some(mirror.to_string()),
        base: None,
        bandwidth_limit: None,
        compress: d.cfg.net.compress,
        progress: false,
        site: Some(site.clone()),
        report_to: Some(progress),
    };
    let r = crate::replication::send::replicate_with_retries(
        &d.cfg,
        d.store.clone(),
        (&peers, &d.budget),
        volume.as_str(),
        snapshot.as_str(),
        &target,
        *retries,
    )
    .await?;
    Ok(TaskResult::Replicated {
        root: r.root,
        base: r.base,
        sent_bytes: r.sent_bytes,
        blocks: r.blocks,
        sent_blocks: r.sent_blocks,
        resumed_blocks: r.resumed_blocks,
        elapsed_ms: r.elapsed_ms as u64,
        already_there: r.already_there,
    })
}
