//! The sending end of replication: drives [`SenderCore`] over a QUIC session to a peer agent.
//!
//! Connections are kept per peer in [`Peers`] and shared: several transfers to one peer run as
//! sessions of one connection, each with its own control stream (at a higher priority than
//! data) and data streams, which QUIC serves round-robin, so they share the link fairly. All
//! transfers of the agent draw from one bandwidth [`Budget`]; a transfer may have a lower
//! limit of its own.
//!
//! The control stream carries the session's requests (see `ferry_wire::repl`); block data goes
//! over several unidirectional streams of the same connection, fed by one reader thread
//! through one bounded queue that every stream's writer takes from, so memory stays at a few
//! dozen blocks whatever the volume, and a stream held up (a lost packet waiting to be sent
//! again, its flow-control window full) never holds up the others.
//! The reader re-checks every block it reads against the local manifest: a snapshot damaged on
//! disk is never sent as good data.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_wire::hashfile::{HashFile, Kind};
use ferry_wire::repl::{
    block_header, page_delta, page_span, pages_worth_sending, span_payload, ErrorClass, Payload,
    ReceiverTimings, Request, Response, SenderCore, SenderStep, BLOCK_HEADER, MAX_BASE_CANDIDATES,
    PAGE_SIZE, REPL_CONTROL_LIMIT,
};
use ferry_wire::{BlockHash, Name};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::{AgentConfig, Cache, Compression};
use crate::daemon::server::load_tls;
use crate::engine::ReadJob;
use crate::error::{check_name, Result, StoreError};
use crate::net::{self, NetError};
use crate::pki::{Identity, Trust};
use crate::replication::paths;
use crate::replication::ratelimit::TokenBucket;
use crate::store::Store;
use ferry_wire::units::format_size;

/// Blocks queued per data stream.
const STREAM_QUEUE: usize = 8;

/// What a replication did.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicateReport {
    pub volume: Name,
    pub snapshot: Name,
    pub mirror: Name,
    pub peer: String,
    pub base: Option<Name>,
    pub root: String,
    pub blocks: u64,
    pub zero_blocks: u64,
    pub offered_blocks: u64,
    pub sent_blocks: u64,
    pub sent_bytes: u64,
    /// Blocks sent compressed, and the bytes their compression saved.
    pub compressed_blocks: u64,
    pub compression_saved_bytes: u64,
    /// Blocks the receiver already held from an interrupted transfer of this snapshot.
    pub resumed_blocks: u64,
    pub elapsed_ms: f64,
    pub already_there: bool,
    /// Where the time went, milliseconds.
    pub timings: Timings,
    /// The QUIC path to the peer after this transfer.
    pub path: PathReport,
}

/// The QUIC path to the peer after a transfer, as the connection measured it. The counts are
/// the peer's shared connection's since it opened (other transfers on it included).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PathReport {
    /// The congestion window the connection started with, bytes: `net.initial_window`, or
    /// what the last large transfer to this peer measured (`net.learned_window_max`).
    pub start_window: u64,
    /// Smoothed round-trip time, milliseconds.
    pub rtt_ms: f64,
    /// The congestion window, bytes: what may be in flight unacknowledged.
    pub cwnd: u64,
    /// The datagram size in use, bytes.
    pub mtu: u16,
    pub sent_packets: u64,
    pub lost_packets: u64,
    /// Losses the congestion controller reacted to.
    pub congestion_events: u64,
}

impl PathReport {
    fn of(conn: &quinn::Connection, start_window: u64) -> Self {
        let p = conn.stats().path;
        PathReport {
            start_window,
            rtt_ms: p.rtt.as_secs_f64() * 1e3,
            cwnd: p.cwnd,
            mtu: p.current_mtu,
            sent_packets: p.sent_packets,
            lost_packets: p.lost_packets,
            congestion_events: p.congestion_events,
        }
    }
}

/// Where a replication's time went, milliseconds: the sender's phases one after the other
/// (their sum is about `elapsed_ms`), and the receiver's account of its part.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Opening the snapshot and its manifest.
    pub open_ms: u64,
    /// The connection to the peer (made once per peer: 0 when it was up already).
    pub connect_ms: u64,
    /// Beginning the session, one round trip: the receiver picks the base among ours
    /// (seeding a new mirror), then resets its working copy.
    pub begin_ms: u64,
    /// The base's manifest and the changed ranges (the FIEMAP diff on reflink, or what the
    /// snapshot recorded of it).
    pub plan_ms: u64,
    /// Offering blocks and sending the needed ones, until the last was sent.
    pub transfer_ms: u64,
    /// From the commit request to its answer.
    pub commit_ms: u64,
    /// The sender's reads of blocks to send (with re-checking them against the manifest),
    /// summed over its reader thread.
    pub reads_ms: u64,
    pub receiver: Option<ReceiverTimings>,
}

fn net_err(e: NetError) -> StoreError {
    StoreError::Net {
        retryable: e.retryable(),
        message: e.to_string(),
    }
}

fn peer_err(class: ErrorClass, message: String) -> StoreError {
    StoreError::Peer { class, message }
}

async fn call(s: &mut (quinn::SendStream, quinn::RecvStream), req: &Request) -> Result<Response> {
    net::send_msg(&mut s.0, req).await.map_err(net_err)?;
    recv(s).await
}

async fn recv(s: &mut (quinn::SendStream, quinn::RecvStream)) -> Result<Response> {
    match net::recv_msg(&mut s.1, REPL_CONTROL_LIMIT)
        .await
        .map_err(net_err)?
    {
        Response::Error { class, message } => Err(peer_err(class, message)),
        r => Ok(r),
    }
}

fn unexpected(r: &Response) -> StoreError {
    StoreError::Net {
        retryable: false,
        message: format!("protocol error: unexpected {r:?}"),
    }
}

/// Where and how a snapshot is sent.
#[derive(Debug, Clone)]
pub struct Target {
    /// The peer agent.
    pub peer: SocketAddr,
    /// Name of the mirror volume there (default: the volume's own name).
    pub mirror: Option<String>,
    /// Send relative to this snapshot, which the peer must hold with the same root (default:
    /// the newest snapshot both hold).
    pub base: Option<String>,
    /// Bytes per second for this transfer, on top of the agent's [`Budget`].
    pub bandwidth_limit: Option<u64>,
    /// Per-block compression.
    pub compress: Compression,
    /// Print progress (bytes, rate, ETA) to stderr every second.
    pub progress: bool,
    /// The site the peer must be a node of (the controller says which; by hand, any
    /// paired site).
    pub site: Option<Name>,
    /// Where to count how far it is (the daemon tells its controller): bytes of the volume
    /// scanned and settled, of its size.
    pub report_to: Option<Arc<crate::progress::Progress>>,
}

/// The bandwidth all outgoing transfers of an agent share (`net.bandwidth_limit`).
#[derive(Debug, Clone, Default)]
pub struct Budget(Option<Arc<Mutex<TokenBucket>>>);

impl Budget {
    /// `bytes_per_sec` of 0 means unlimited.
    pub fn new(bytes_per_sec: u64) -> Budget {
        Budget(
            (bytes_per_sec > 0)
                .then(|| Arc::new(Mutex::new(TokenBucket::new(bytes_per_sec, Instant::now())))),
        )
    }

    /// Takes `n` bytes; returns how long to wait before sending them.
    fn take(&self, n: u64) -> Duration {
        self.0
            .as_ref()
            .and_then(|b| b.lock().ok().map(|mut b| b.take(n, Instant::now())))
            .unwrap_or(Duration::ZERO)
    }
}

/// One connection to a peer agent, after mutual TLS, with our Hello sent (the peer's is
/// checked when it comes: `net::connect_early`).
struct Link {
    /// The connection's own endpoint (one per peer), kept as long as it.
    _ep: quinn::Endpoint,
    conn: quinn::Connection,
    label: String,
    site: Name,
    /// The connection's first stream (the handshake's), kept open for the connection's
    /// life, and the check of the peer's Hello, which holds its receiving half.
    _control: (
        quinn::SendStream,
        tokio::task::JoinHandle<std::result::Result<quinn::RecvStream, NetError>>,
    ),
    /// The round trip measured by the TLS handshake, before any transfer loaded the path.
    rtt: Duration,
    /// The congestion window the connection started with.
    start_window: u64,
}

/// Connections to peer agents, one per address, shared by every transfer to that peer.
pub struct Peers {
    id: Identity,
    trust: Trust,
    cc: quinn::ClientConfig,
    windows: net::Windows,
    /// Where path measurements are kept and the cap on learned start windows
    /// ([`paths`]); `None`: connections start with `windows.initial`.
    learning: Option<(std::path::PathBuf, u64)>,
    /// Held while the measurements file is read, changed and written back.
    memory: Arc<std::sync::Mutex<()>>,
    links: tokio::sync::Mutex<HashMap<SocketAddr, Link>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers")
            .field("node", &self.id.node)
            .finish()
    }
}

impl Peers {
    /// The node's TLS identity and trust from the `[net]` config, learning start windows in
    /// its data directory.
    pub fn new(cfg: &AgentConfig) -> Result<Peers> {
        let (id, trust) = load_tls(cfg)?;
        Ok(Peers::with(id, trust, cfg.net.windows())?.learning(cfg))
    }

    /// Starts connections with the window the last large transfer to the peer measured, kept
    /// in `cfg`'s data directory, up to `net.learned_window_max` ([`paths`]).
    pub fn learning(mut self, cfg: &AgentConfig) -> Peers {
        // Validated to be 0 or at most the connection window.
        let cap = cfg.net.learned_window_max;
        self.learning =
            (cap > self.windows.initial).then(|| (crate::store::paths_file(&cfg.data_dir), cap));
        self
    }

    /// Connections made as `id`, to nodes of the sites `trust` knows, with flow-control
    /// windows `windows`.
    pub fn with(id: Identity, trust: Trust, windows: net::Windows) -> Result<Peers> {
        let mut cc = net::client_config(&id, &trust).map_err(net_err)?;
        cc.transport_config(net::transport_with(windows));
        Ok(Peers {
            id,
            trust,
            cc,
            windows,
            learning: None,
            memory: Arc::default(),
            links: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The client configuration for a new connection to `peer`: the configured one, or with
    /// the start window its last large transfer measured.
    fn client_config(&self, peer: SocketAddr) -> (quinn::ClientConfig, u64) {
        let Some((file, cap)) = &self.learning else {
            return (self.cc.clone(), self.windows.initial);
        };
        // Saves replace the file whole (a rename): a read needs no lock.
        let memory = paths::load(file);
        let known = memory.get(&peer.to_string());
        let w = paths::start_window(known, paths::now(), self.windows.initial, *cap);
        let Some(m) = known.filter(|_| w != self.windows.initial) else {
            return (self.cc.clone(), self.windows.initial);
        };
        tracing::info!(
            %peer,
            window = %format_size(w),
            rate = %format!("{}/s", format_size(m.rate)),
            rtt_ms = m.rtt_us as f64 / 1e3,
            "starting at the window the last transfer to this peer measured"
        );
        let mut cc = self.cc.clone();
        cc.transport_config(net::transport_with(net::Windows {
            initial: w,
            ..self.windows
        }));
        (cc, w)
    }

    /// Remembers what a transfer to `peer` measured: `moved` bytes sent by the connection in
    /// `took` ([`paths::learn`]; a small transfer teaches nothing).
    pub async fn learn(&self, peer: SocketAddr, moved: u64, took: Duration) {
        let Some((file, _)) = &self.learning else {
            return;
        };
        let Some(rtt) = self.links.lock().await.get(&peer).map(|l| l.rtt) else {
            return;
        };
        let Some(m) = paths::learn(moved, took, rtt, paths::now()) else {
            return;
        };
        let (file, memory) = (file.clone(), self.memory.clone());
        let saved = tokio::task::spawn_blocking(move || {
            let _held = memory.lock();
            let mut known = paths::load(&file);
            paths::remember(&mut known, &peer.to_string(), m);
            paths::save(&file, &known)
        })
        .await;
        match saved {
            Ok(Ok(())) => tracing::debug!(%peer, rate = m.rate, rtt_us = m.rtt_us, "path measured"),
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "could not keep the path's measurement")
            }
            Err(e) => tracing::warn!(%peer, error = %e, "could not keep the path's measurement"),
        }
    }

    /// A live connection to `peer`, the peer's name and its site, connecting if there is
    /// none.
    pub async fn connection(&self, peer: SocketAddr) -> Result<(quinn::Connection, String, Name)> {
        let mut links = self.links.lock().await;
        if let Some(l) = links.get(&peer) {
            if l.conn.close_reason().is_none() {
                return Ok((l.conn.clone(), l.label.clone(), l.site.clone()));
            }
            links.remove(&peer);
        }
        let (cc, start_window) = self.client_config(peer);
        let ep = net::client_endpoint(peer, cc).map_err(net_err)?;
        // The first request goes out with our Hello, not a round trip after it.
        let s = net::connect_early(&ep, peer, &self.id, &self.trust)
            .await
            .map_err(net_err)?;
        let label = format!("{}@{} ({peer})", s.peer_node, s.peer_site);
        tracing::info!(peer = %label, "connected to peer");
        let rtt = s.conn.rtt();
        let out = (s.conn.clone(), label.clone(), s.peer_site.clone());
        links.insert(
            peer,
            Link {
                _ep: ep,
                conn: s.conn,
                label,
                site: s.peer_site,
                _control: (s.send, s.hello),
                rtt,
                start_window,
            },
        );
        Ok(out)
    }

    /// The congestion window the connection to `peer` started with.
    async fn start_window(&self, peer: SocketAddr) -> u64 {
        self.links
            .lock()
            .await
            .get(&peer)
            .map_or(self.windows.initial, |l| l.start_window)
    }

    /// Closes every connection, waiting only until each close has left (`net::close_done`).
    pub async fn close(&self) {
        let links: Vec<Link> = self.links.lock().await.drain().map(|(_, l)| l).collect();
        for l in links {
            net::close_done(&l.conn, ferry_wire::msg::close::DONE, "done").await;
        }
    }
}

/// [`replicate`], retrying errors that can pass (the network, a busy receiver) up to
/// `retries` times with exponential backoff (1 s doubling, at most 30 s). Permanent errors
/// (refused identity or policy, a conflicting snapshot, corrupt data, no space) are
/// returned at once.
pub async fn replicate_with_retries(
    cfg: &AgentConfig,
    store: Arc<Store>,
    link: (&Peers, &Budget),
    volume: &str,
    snap: &str,
    target: &Target,
    retries: u32,
) -> Result<ReplicateReport> {
    let mut delay = std::time::Duration::from_secs(1);
    let mut attempt = 0;
    loop {
        match replicate(cfg, store.clone(), link, volume, snap, target).await {
            Err(e) if e.retryable() && attempt < retries => {
                attempt += 1;
                tracing::warn!(attempt, retries, error = %e, kind = e.kind(), delay_s = delay.as_secs(), "replication failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(30));
            }
            other => return other,
        }
    }
}

/// Sends snapshot `snap` of `volume` to the agent at `target.peer`, into its mirror volume,
/// over the peer's shared connection, within the agent's bandwidth budget. The phases, each
/// a function of its own: what to send ([`Source::open`]); connect and open the session's
/// control stream; open the session in one round trip (the receiver picks the base among
/// our candidates, `Source::candidates`); where changed pages come from
/// ([`Delta::plan`]); then, at once, the data pipeline
/// ([`Pipeline::start`]: a reader thread feeding the data streams) and the offers
/// ([`offer`]: the sans-IO core's steps on the control stream); last the commit.
pub async fn replicate(
    cfg: &AgentConfig,
    store: Arc<Store>,
    (peers, budget): (&Peers, &Budget),
    volume: &str,
    snap: &str,
    target: &Target,
) -> Result<ReplicateReport> {
    let started = Instant::now();
    let _moving = super::Moving::start();
    let mut t = Timings::default();
    let mut lap = Instant::now();
    let mut mark = |field: &mut u64| {
        *field = lap.elapsed().as_millis() as u64;
        lap = Instant::now();
    };
    let src = Source::open(&store, volume, snap, target)?;
    mark(&mut t.open_ms);
    let (conn, peer_label, peer_site) = peers.connection(target.peer).await?;
    mark(&mut t.connect_ms);
    if let Some(want) = &target.site {
        if *want != peer_site {
            return Err(StoreError::Refused(format!(
                "{peer_label} is a node of site {peer_site}, not of {want}"
            )));
        }
    }
    let mut ctl = conn.open_bi().await.map_err(|e| net_err(e.into()))?;
    // Offers and needs go ahead of block data on the shared connection.
    let _ = ctl.0.set_priority(1);
    let sid = u64::from(ctl.0.id());
    let mut report = src.report(peer_label);
    let asked = asked_base(&src, target)?;
    let open = Request::Open {
        mirror: src.mirror.clone(),
        snapshot: src.meta.name.clone(),
        size: src.meta.size,
        block_size: src.meta.block_size,
        root: src.root,
        candidates: src.candidates.clone(),
        base: asked.clone(),
    };
    let base = match call(&mut ctl, &open).await? {
        Response::Opened { base, resumed } => {
            report.resumed_blocks = resumed;
            base
        }
        // It holds it already: seeded from a snapshot of ours, or committed by an earlier
        // try whose sender died before it heard so.
        Response::Committed { root, .. } if root == src.root => {
            report.already_there = true;
            let _ = ctl.0.finish();
            report.elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
            return Ok(report);
        }
        r => return Err(unexpected(&r)),
    };
    check_chosen(&src.candidates, base.as_ref(), asked.as_ref())?;
    mark(&mut t.begin_ms);
    let delta = Delta::plan(&store, &src, base.as_ref())?;
    report.base = base.clone();
    mark(&mut t.plan_ms);
    let streams = cfg.net.windows().data_streams(delta.bytes);
    // What the connection sends during the data phase, for the next connection's start.
    let (sent0, data_started) = (conn.stats().udp_tx.bytes, Instant::now());
    let pipeline = Pipeline::start(
        &conn,
        cfg,
        &src,
        (delta.pages, streams),
        target,
        budget,
        sid,
    )
    .await?;
    let (mut ctl_send, mut responses) = Responses::spawn(ctl);
    let offered = offer(
        &mut ctl_send,
        &mut responses,
        &src,
        delta.base_manifest.as_ref(),
        &pipeline,
        (target.progress, target.report_to.clone()),
        &mut report,
    )
    .await;
    let sent = pipeline.finish(offered).await?;
    report.sent_blocks = sent.blocks;
    // Counted once, by the reader, as each frame goes out (progress reads it too).
    report.sent_bytes = sent.bytes;
    report.compressed_blocks = sent.compressed_blocks;
    report.compression_saved_bytes = sent.compression_saved;
    t.reads_ms = sent.reads_ms;
    mark(&mut t.transfer_ms);
    t.receiver = commit(&mut ctl_send, &mut responses, src.root).await?;
    mark(&mut t.commit_ms);
    // The rate the data was delivered at: until the peer acknowledged every data stream
    // (the receiver's fsync at commit is not the link's), else until the commit's answer.
    let delivered = sent.counters.all_acked().unwrap_or_else(Instant::now);
    let moved = conn.stats().udp_tx.bytes.saturating_sub(sent0);
    peers
        .learn(
            target.peer,
            moved,
            delivered.saturating_duration_since(data_started),
        )
        .await;
    report.timings = t;
    report.path = PathReport::of(&conn, peers.start_window(target.peer).await);
    tracing::debug!(path = ?report.path, "transfer path");
    report.elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    Ok(report)
}

/// The snapshot to send, with what choosing a base needs.
struct Source {
    volume: String,
    meta: crate::store::SnapshotMeta,
    mirror: Name,
    root: BlockHash,
    /// Our older snapshots of the same size and block size, with their roots, newest
    /// first, as many as a request may name: the bases the receiver may pick.
    candidates: Vec<(Name, BlockHash)>,
    image: std::path::PathBuf,
    manifest_path: std::path::PathBuf,
    manifest: HashFile,
}

impl Source {
    fn open(store: &Store, volume: &str, snap: &str, target: &Target) -> Result<Source> {
        let meta = store.snapshot(volume, snap)?;
        let mirror = check_name("mirror volume", target.mirror.as_deref().unwrap_or(volume))?;
        let root = BlockHash::from_hex(&meta.root)
            .ok_or_else(|| StoreError::Invalid("bad root in snapshot metadata".into()))?;
        let candidates: Vec<(Name, BlockHash)> = store
            .list_snapshots(volume)?
            .into_iter()
            .rev()
            .filter(|m| {
                m.created_unix_ns < meta.created_unix_ns
                    && m.block_size == meta.block_size
                    && m.size == meta.size
            })
            .filter_map(|m| BlockHash::from_hex(&m.root).map(|r| (m.name, r)))
            .take(MAX_BASE_CANDIDATES)
            .collect();
        let (image, manifest_path, _) = store.snapshot_paths(volume, snap)?;
        let manifest = store.manifest(volume, snap)?;
        Ok(Source {
            volume: volume.to_string(),
            meta,
            mirror,
            root,
            candidates,
            image,
            manifest_path,
            manifest,
        })
    }

    /// The report before anything is sent.
    fn report(&self, peer: String) -> ReplicateReport {
        ReplicateReport {
            volume: self.meta.volume.clone(),
            snapshot: self.meta.name.clone(),
            mirror: self.mirror.clone(),
            peer,
            base: None,
            root: self.meta.root.clone(),
            blocks: self.manifest.len(),
            zero_blocks: 0,
            offered_blocks: 0,
            sent_blocks: 0,
            sent_bytes: 0,
            compressed_blocks: 0,
            compression_saved_bytes: 0,
            resumed_blocks: 0,
            elapsed_ms: 0.0,
            already_there: false,
            timings: Timings::default(),
            path: PathReport::default(),
        }
    }
}

/// The receiver's choice of base is one of the `candidates` we offered (and the one asked
/// for, if any).
fn check_chosen(
    candidates: &[(Name, BlockHash)],
    chosen: Option<&Name>,
    asked: Option<&Name>,
) -> Result<()> {
    let offered = chosen.is_none_or(|b| candidates.iter().any(|(n, _)| n == b));
    if offered && (asked.is_none() || chosen == asked) {
        return Ok(());
    }
    Err(StoreError::Net {
        retryable: false,
        message: format!("protocol error: the receiver chose base {chosen:?}, not offered"),
    })
}

/// The base asked for (`--base`), if any: one of our older snapshots of the same size and
/// block size, among the candidates the request names.
fn asked_base(src: &Source, target: &Target) -> Result<Option<Name>> {
    let Some(b) = &target.base else {
        return Ok(None);
    };
    let b = check_name("base snapshot", b)?;
    if !src.candidates.iter().any(|(n, _)| *n == b) {
        return Err(StoreError::Invalid(format!(
            "base {}@{b} is not an older snapshot of the same size and block size as {}",
            src.volume, src.meta.name
        )));
    }
    Ok(Some(b))
}

/// Where a changed block's changed pages come from.
#[derive(Default)]
struct PageSource {
    /// The changed 4 KiB pages of each block, when the backend's diff is exact (reflink):
    /// page deltas then need no read of the base.
    masks: Option<HashMap<u64, Vec<u8>>>,
    /// Otherwise the base image, read to find them.
    base_image: Option<std::path::PathBuf>,
}

/// What a transfer relative to a base knows of it.
struct Delta {
    base_manifest: Option<HashFile>,
    pages: PageSource,
    /// About how much the session sends at most: the changed bytes, or the volume's size.
    bytes: u64,
}

impl Delta {
    fn plan(store: &Store, src: &Source, base: Option<&Name>) -> Result<Delta> {
        let Some(b) = base else {
            return Ok(Delta {
                base_manifest: None,
                pages: PageSource::default(),
                bytes: src.meta.size,
            });
        };
        let (volume, snap) = (src.volume.as_str(), src.meta.name.as_str());
        let base_manifest = Some(store.manifest(volume, b.as_str())?);
        let d = store.diff(volume, b.as_str(), snap)?;
        let pages = if d.method == "fiemap" {
            PageSource {
                masks: Some(page_masks(&d.ranges, src.meta.block_size as u64)),
                base_image: None,
            }
        } else {
            PageSource {
                masks: None,
                base_image: Some(store.snapshot_paths(volume, b.as_str())?.0),
            }
        };
        Ok(Delta {
            base_manifest,
            pages,
            bytes: d.changed_bytes,
        })
    }
}

/// What the reader has sent, shared with the control path (which keeps the number of
/// needed-but-unsent blocks bounded) and the progress line.
#[derive(Default)]
struct Counters {
    /// Blocks sent since the control path last looked.
    unseen: std::sync::atomic::AtomicU64,
    blocks: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
    /// Told whenever a block went out, and when the reader stops.
    moved: tokio::sync::Notify,
    /// The session's data streams.
    streams: usize,
    /// Data streams the peer has acknowledged whole, and when the last of them was.
    acked: Mutex<(usize, Option<Instant>)>,
}

impl Counters {
    /// When the peer had acknowledged every data stream; `None` if it has not yet.
    fn all_acked(&self) -> Option<Instant> {
        self.acked
            .lock()
            .ok()
            .and_then(|a| (a.0 == self.streams).then_some(a.1).flatten())
    }
}

fn load(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(std::sync::atomic::Ordering::Relaxed)
}

/// What the data path sent, all told.
struct Sent {
    blocks: u64,
    bytes: u64,
    compressed_blocks: u64,
    compression_saved: u64,
    reads_ms: u64,
    /// When the peer acknowledged the data streams ([`Counters::all_acked`]).
    counters: Arc<Counters>,
}

/// What the reader thread did: blocks sent, (blocks compressed, bytes saved), and the
/// milliseconds it spent reading, hashing and framing (not waiting for the network).
type ReadOutcome = (u64, (u64, u64), u64);

/// The data path: a reader thread that reads, checks, frames and paces the needed blocks,
/// feeding its stream writers (as many as [`net::Windows::data_streams`] says) through one
/// queue: the next frame goes to whichever stream is ready for it.
struct Pipeline {
    needs: mpsc::Sender<Vec<u64>>,
    reader: tokio::task::JoinHandle<Result<ReadOutcome>>,
    /// Each stream writer's outcome, told once its stream is finished (it then waits in the
    /// background for the peer's acknowledgement of the stream's data).
    writers: Vec<tokio::sync::oneshot::Receiver<std::result::Result<(), NetError>>>,
    counters: Arc<Counters>,
}

impl Pipeline {
    async fn start(
        conn: &quinn::Connection,
        cfg: &AgentConfig,
        src: &Source,
        (pages, n): (PageSource, usize),
        target: &Target,
        budget: &Budget,
        sid: u64,
    ) -> Result<Pipeline> {
        let mut writers = Vec::new();
        let counters = Arc::new(Counters {
            streams: n,
            ..Counters::default()
        });
        let (frames, queue) = mpsc::channel::<Vec<u8>>(STREAM_QUEUE * n.max(1));
        let queue = Arc::new(tokio::sync::Mutex::new(queue));
        for _ in 0..n {
            let mut s = conn.open_uni().await.map_err(|e| net_err(e.into()))?;
            let (done, outcome) = tokio::sync::oneshot::channel();
            writers.push(outcome);
            let (counters, queue) = (counters.clone(), queue.clone());
            tokio::spawn(async move {
                let mut written = Ok(());
                // A writer takes the next frame only once its stream took the last one: a
                // stream waiting for flow control or a retransmission takes nothing.
                while let Some(frame) = {
                    let mut q = queue.lock().await;
                    q.recv().await
                } {
                    if let Err(e) = net::write_framed(&mut s, frame).await {
                        written = Err(e);
                        break;
                    }
                }
                let ok = written.is_ok();
                let _ = s.finish();
                let _ = done.send(written);
                // The delivered rate's end, for the next connection's start window.
                if ok && matches!(s.stopped().await, Ok(None)) {
                    if let Ok(mut a) = counters.acked.lock() {
                        a.0 += 1;
                        a.1 = a.1.max(Some(Instant::now()));
                    }
                }
            });
        }
        let (needs, needs_rx) = mpsc::channel::<Vec<u64>>(8);
        let reader = Reader {
            image: src.image.clone(),
            manifest_path: src.manifest_path.clone(),
            framing: Framing {
                bs: src.meta.block_size as u64,
                sid,
                compress: target.compress,
                pages,
            },
            size: src.meta.size,
            io: cfg.io.clone(),
            bucket: target
                .bandwidth_limit
                .map(|l| TokenBucket::new(l, Instant::now())),
            budget: budget.clone(),
            frames,
            needs: needs_rx,
            counters: counters.clone(),
        };
        Ok(Pipeline {
            needs,
            reader: tokio::task::spawn_blocking(move || reader.run()),
            writers,
            counters,
        })
    }

    /// Ends the data path after the offers ended with `offered`; the first error of the
    /// writers, the offers and the reader, in that order, wins.
    async fn finish(self, offered: Result<()>) -> Result<Sent> {
        drop(self.needs);
        let read = self
            .reader
            .await
            .map_err(|e| StoreError::Invalid(format!("reader thread: {e}")))?;
        for w in self.writers {
            w.await
                .map_err(|e| StoreError::Invalid(format!("stream writer: {e}")))?
                .map_err(net_err)?;
        }
        offered?;
        let (blocks, (compressed_blocks, compression_saved), reads_ms) = read?;
        Ok(Sent {
            blocks,
            bytes: load(&self.counters.bytes),
            compressed_blocks,
            compression_saved,
            reads_ms,
            counters: self.counters,
        })
    }
}

/// How a block becomes a data frame.
struct Framing {
    bs: u64,
    sid: u64,
    compress: Compression,
    pages: PageSource,
}

impl Framing {
    /// The changed-page mask of block `i` when it goes as its pages read alone: a full
    /// block the filesystem's diff says changed in few enough pages.
    fn paged(&self, i: u64, size: u64) -> Option<&[u8]> {
        let masks = self.pages.masks.as_ref()?;
        let mask = masks.get(&i)?;
        let full = (i + 1) * self.bs <= size;
        let pages = mask.iter().map(|b| b.count_ones() as usize).sum();
        (full && pages > 0 && pages_worth_sending(self.bs as usize, pages))
            .then_some(mask.as_slice())
    }

    /// The data frame of block `i` with `payload` of `kind` (compressed when that saves
    /// enough), and the bytes compression saved.
    fn frame(&self, i: u64, kind: Payload, payload: &[u8]) -> (Vec<u8>, u64) {
        let packed = match self.compress {
            Compression::Zstd(level) => zstd_smaller(payload, level),
            Compression::Off => None,
        };
        let saved = packed.as_ref().map_or(0, |p| payload.len() - p.len()) as u64;
        let (kind, payload) = match (&packed, kind) {
            (Some(p), Payload::Pages) => (Payload::ZstdPages, p.as_slice()),
            (Some(p), _) => (Payload::ZstdFull, p.as_slice()),
            (None, k) => (k, payload),
        };
        let mut frame = Vec::with_capacity(net::FRAME_PREFIX + BLOCK_HEADER + payload.len());
        frame.extend_from_slice(&[0; net::FRAME_PREFIX]);
        frame.extend_from_slice(&block_header(self.sid, i, kind));
        frame.extend_from_slice(payload);
        (frame, saved)
    }

    /// The frames of the blocks of `data`, read at `job`: each block whole or as its changed
    /// pages (when that is clearly smaller: the receiver's working copy holds the base block
    /// of every block it asks for), compressed when that saves enough.
    fn frames(
        &self,
        job: &ReadJob,
        data: &[u8],
        base_file: Option<&std::fs::File>,
    ) -> std::io::Result<Vec<Framed>> {
        let bs = self.bs;
        let mut out = Vec::new();
        let mut base_block = Vec::new();
        for (j, chunk) in data.chunks(bs as usize).enumerate() {
            let i = job.offset / bs + j as u64;
            let hash = BlockHash::of(chunk);
            let full = chunk.len() as u64 == bs;
            // With the filesystem's masks, a block worth sending as pages went as its pages
            // read alone (`paged`); one read whole goes whole.
            let delta = match (&self.pages.masks, base_file) {
                (None, Some(bf)) if full => {
                    base_block.resize(bs as usize, 0);
                    bf.read_exact_at(&mut base_block, i * bs)?;
                    page_delta(&base_block, chunk)
                }
                _ => None,
            };
            let (kind, payload) = match &delta {
                Some(d) => (Payload::Pages, d.as_slice()),
                None => (Payload::Full, chunk),
            };
            let (frame, saved) = self.frame(i, kind, payload);
            out.push((i, hash, frame, saved));
        }
        Ok(out)
    }
}

/// The reader thread's inputs.
struct Reader {
    image: std::path::PathBuf,
    manifest_path: std::path::PathBuf,
    framing: Framing,
    size: u64,
    io: crate::config::IoConfig,
    bucket: Option<TokenBucket>,
    budget: Budget,
    frames: mpsc::Sender<Vec<u8>>,
    needs: mpsc::Receiver<Vec<u64>>,
    counters: Arc<Counters>,
}

/// The reads of the blocks in `need` (sorted): runs of consecutive blocks, at most
/// `per_read` blocks each.
fn read_jobs(need: &[u64], bs: u64, size: u64, per_read: u64) -> Vec<ReadJob> {
    let mut jobs = Vec::new();
    let mut k = 0;
    while k < need.len() {
        let start = need[k];
        let mut n = 1u64;
        while k + (n as usize) < need.len() && need[k + n as usize] == start + n && n < per_read {
            n += 1;
        }
        let at = start * bs;
        jobs.push(ReadJob {
            offset: at,
            len: (n * bs).min(size - at) as usize,
            tag: 0,
        });
        k += n as usize;
    }
    jobs
}

/// Where the reader's frames go: paced, counted, into the data streams' queue.
struct Out {
    frames: mpsc::Sender<Vec<u8>>,
    bucket: Option<TokenBucket>,
    budget: Budget,
    counters: Arc<Counters>,
    blocks: u64,
    compressed: (u64, u64),
    /// Time spent waiting for the network (pacing, full stream queues).
    waited: Duration,
}

impl Out {
    /// Sends one frame (`saved`: bytes its compression saved).
    fn send(&mut self, frame: Vec<u8>, saved: u64) -> Result<()> {
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        let payload = (frame.len() - net::FRAME_PREFIX - BLOCK_HEADER) as u64;
        self.blocks += 1;
        if saved > 0 {
            self.compressed.0 += 1;
            self.compressed.1 += saved;
        }
        let n = frame.len() as u64;
        let paced = Instant::now();
        let wait = self
            .bucket
            .as_mut()
            .map_or(Duration::ZERO, |b| b.take(n, Instant::now()))
            .max(self.budget.take(n));
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        self.counters.bytes.fetch_add(payload, relaxed);
        let sent = self.frames.blocking_send(frame);
        self.waited += paced.elapsed();
        if sent.is_err() {
            return Err(StoreError::Net {
                retryable: true,
                message: "data stream closed".into(),
            });
        }
        self.counters.unseen.fetch_add(1, relaxed);
        self.counters.moved.notify_one();
        Ok(())
    }
}

impl Reader {
    /// Reads every batch of needed blocks to its end before taking the next, so it never
    /// waits for needs with reads in flight. Everything is read through the io_uring
    /// engine (O_DIRECT: a fresh clone has nothing in the page cache). A block whose
    /// changed pages the filesystem's diff names is sent as those pages, read alone (one
    /// read from its first to its last changed page; the receiver checks the whole
    /// block's hash against the offer before writing it); every other block is read
    /// whole, hashed and framed on the hashing threads, checked against the manifest,
    /// then sent.
    fn run(self) -> Result<ReadOutcome> {
        let Reader {
            image,
            manifest_path,
            framing,
            size,
            io,
            bucket,
            budget,
            frames,
            mut needs,
            counters,
        } = self;
        // Wake the control loop when the reader stops, whatever the reason.
        struct WakeOnExit(Arc<Counters>);
        impl Drop for WakeOnExit {
            fn drop(&mut self) {
                self.0.moved.notify_one();
            }
        }
        let _wake = WakeOnExit(counters.clone());
        let manifest =
            HashFile::open(&manifest_path, Kind::Manifest).map_err(|e| StoreError::Corrupt {
                what: "manifest",
                path: manifest_path.clone(),
                detail: e.to_string(),
            })?;
        let base_file = match &framing.pages.base_image {
            Some(p) => Some(
                std::fs::File::open(p).map_err(|e| crate::error::io_err(e, "open", p.clone()))?,
            ),
            None => None,
        };
        let bs = framing.bs;
        let per_read = (io.read_size / bs).max(1);
        let mut out = Out {
            frames,
            bucket,
            budget,
            counters,
            blocks: 0,
            compressed: (0, 0),
            waited: Duration::ZERO,
        };
        let mut busy = Duration::ZERO;
        while let Some(need) = needs.blocking_recv() {
            let t0 = Instant::now();
            // A block the diff says changed in few pages goes as those pages, in one read
            // from its first to its last changed page; the rest are read whole.
            let mut whole = Vec::new();
            let mut spans = Vec::new();
            for &i in &need {
                match framing.paged(i, size).and_then(page_span) {
                    Some((first, last)) => spans.push(ReadJob {
                        offset: i * bs + (first * PAGE_SIZE) as u64,
                        len: (last + 1 - first) * PAGE_SIZE,
                        tag: 0,
                    }),
                    None => whole.push(i),
                }
            }
            // Through the engine: on a cold snapshot these are random reads, and the engine
            // keeps a queue of them in flight.
            crate::engine::run(
                &image,
                &io,
                Cache::Cold,
                bs as usize,
                spans,
                |job, data| {
                    let i = job.offset / bs;
                    let first = (job.offset % bs) as usize / PAGE_SIZE;
                    let payload = framing
                        .paged(i, size)
                        .and_then(|mask| span_payload(mask, first, data))
                        .ok_or_else(|| {
                            StoreError::Invalid(format!("block {i}: its pages are not in its read"))
                        })?;
                    Ok(framing.frame(i, Payload::Pages, &payload))
                },
                |_, framed: Result<(Vec<u8>, u64)>| {
                    let (frame, saved) = framed?;
                    out.send(frame, saved)
                },
            )?;
            crate::engine::run(
                &image,
                &io,
                Cache::Cold,
                (per_read * bs) as usize,
                read_jobs(&whole, bs, size, per_read),
                |job, data| framing.frames(job, data, base_file.as_ref()),
                |_, framed| {
                    for (i, hash, frame, saved) in framed
                        .map_err(|e| crate::error::io_err(e, "read base of", image.clone()))?
                    {
                        if hash != manifest.hash(i) {
                            return Err(StoreError::Corrupt {
                                what: "snapshot image",
                                path: image.clone(),
                                detail: format!(
                                    "block {i} does not match the manifest; not sending it"
                                ),
                            });
                        }
                        out.send(frame, saved)?;
                    }
                    Ok(())
                },
            )?;
            busy += t0.elapsed();
        }
        let reads_ms = busy.saturating_sub(out.waited).as_millis() as u64;
        Ok((out.blocks, out.compressed, reads_ms))
    }
}

/// The control stream's responses, read by their own task, so the offers can wait for a
/// response or for send progress without cancelling a half-read frame.
struct Responses {
    rx: mpsc::Receiver<Result<Response>>,
    task: tokio::task::JoinHandle<()>,
}

impl Responses {
    fn spawn(ctl: (quinn::SendStream, quinn::RecvStream)) -> (quinn::SendStream, Responses) {
        let (tx, rx) = mpsc::channel::<Result<Response>>(8);
        let (send, mut recv) = ctl;
        let task = tokio::spawn(async move {
            loop {
                let r = match net::recv_msg(&mut recv, REPL_CONTROL_LIMIT).await {
                    Ok(Response::Error { class, message }) => Err(peer_err(class, message)),
                    Ok(r) => Ok(r),
                    Err(e) => Err(net_err(e)),
                };
                let stop = r.is_err();
                if tx.send(r).await.is_err() || stop {
                    break;
                }
            }
        });
        (send, Responses { rx, task })
    }

    async fn next(&mut self) -> Result<Response> {
        self.rx.recv().await.ok_or_else(|| StoreError::Net {
            retryable: true,
            message: "control stream closed".into(),
        })?
    }
}

impl Drop for Responses {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The offers: the sans-IO core's zero ranges and offers sent, the receiver's needs handed
/// to the reader, never more needed-but-unsent blocks than the core allows. With `progress`,
/// a line on stderr every second.
async fn offer(
    ctl: &mut quinn::SendStream,
    responses: &mut Responses,
    src: &Source,
    base: Option<&HashFile>,
    pipeline: &Pipeline,
    (progress, report_to): (bool, Option<Arc<crate::progress::Progress>>),
    report: &mut ReplicateReport,
) -> Result<()> {
    let new = &src.manifest;
    let new_fn = |i: u64| new.hash(i);
    let base_fn = |i: u64| base.map_or(BlockHash([0; 32]), |m| m.hash(i));
    let base_dyn: &(dyn Fn(u64) -> BlockHash + Sync) = &base_fn;
    let mut core = SenderCore::new(new.geometry(), &new_fn, base.map(|_| base_dyn));
    let scanned = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let needed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ticker = progress.then(|| {
        progress_line(
            scanned.clone(),
            needed.clone(),
            pipeline.counters.clone(),
            new.len(),
        )
    });
    let counting = report_to.map(|p| {
        let (scanned, needed, counters) =
            (scanned.clone(), needed.clone(), pipeline.counters.clone());
        let (blocks, size) = (new.len().max(1), src.meta.size);
        tokio::spawn(async move {
            loop {
                let (sc, nd, sk) = (load(&scanned), load(&needed), load(&counters.blocks));
                // Scanned, and of what was needed, sent: the fraction settled.
                let settled = (sc as f64 / blocks as f64)
                    * if nd > 0 {
                        (sk as f64 / nd as f64).min(1.0)
                    } else {
                        1.0
                    };
                p.set((settled * size as f64) as u64, size);
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        })
    });
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    let c = &pipeline.counters;
    let result = async {
        loop {
            let n = c.unseen.swap(0, relaxed);
            core.on_sent(n);
            c.blocks.fetch_add(n, relaxed);
            scanned.store(core.position(), relaxed);
            match core.poll() {
                SenderStep::Zeros(ranges) => {
                    report.zero_blocks += ranges.iter().map(|(a, b)| b - a).sum::<u64>();
                    net::send_msg(ctl, &Request::Zeros { ranges })
                        .await
                        .map_err(net_err)?;
                }
                SenderStep::Offer(blocks) => {
                    report.offered_blocks += blocks.len() as u64;
                    net::send_msg(ctl, &Request::Offer { blocks })
                        .await
                        .map_err(net_err)?;
                }
                SenderStep::Wait if core.awaiting_need() => {
                    tokio::select! {
                        r = responses.next() => match r? {
                            Response::Need { blocks } => {
                                core.on_need(blocks.len());
                                needed.fetch_add(blocks.len() as u64, relaxed);
                                if !blocks.is_empty() && pipeline.needs.send(blocks).await.is_err() {
                                    return Ok(()); // the reader failed; its error is reported by finish
                                }
                            }
                            r => return Err(unexpected(&r)),
                        },
                        _ = c.moved.notified() => {}
                    }
                }
                SenderStep::Wait if pipeline.reader.is_finished() => return Ok(()),
                SenderStep::Wait => c.moved.notified().await,
                SenderStep::Done => return Ok(()),
            }
        }
    }
    .await;
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(t) = counting {
        t.abort();
    }
    result
}

/// Prints scanned, sent, rate and ETA every second until aborted.
fn progress_line(
    scanned: Arc<std::sync::atomic::AtomicU64>,
    needed: Arc<std::sync::atomic::AtomicU64>,
    counters: Arc<Counters>,
    total: u64,
) -> tokio::task::JoinHandle<()> {
    let total = total.max(1);
    tokio::spawn(async move {
        let t0 = Instant::now();
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let (sc, nd, sb, sk) = (
                load(&scanned),
                load(&needed),
                load(&counters.bytes),
                load(&counters.blocks),
            );
            let done =
                (sc as f64 / total as f64) * if nd > 0 { sk as f64 / nd as f64 } else { 1.0 };
            let secs = t0.elapsed().as_secs_f64();
            let eta = if done > 0.0 {
                secs * (1.0 - done) / done
            } else {
                f64::NAN
            };
            eprintln!(
                "progress: {:.0}% scanned, {} sent ({}/s), ETA {:.0} s",
                100.0 * sc as f64 / total as f64,
                format_size(sb),
                format_size((sb as f64 / secs) as u64),
                eta
            );
        }
    })
}

/// Asks the receiver to commit and checks it committed the sender's root.
async fn commit(
    ctl: &mut quinn::SendStream,
    responses: &mut Responses,
    root: BlockHash,
) -> Result<Option<ReceiverTimings>> {
    net::send_msg(ctl, &Request::Commit)
        .await
        .map_err(net_err)?;
    let timings = match responses.next().await? {
        Response::Committed { root: r, timings } if r == root => timings,
        r => return Err(unexpected(&r)),
    };
    let _ = ctl.finish();
    Ok(timings)
}

/// A block ready to send: index, hash, data frame, bytes compression saved.
type Framed = (u64, BlockHash, Vec<u8>, u64);

/// `data` compressed with zstd at `level`, if that saves at least an eighth of it. One
/// compression context per thread (making one per block would cost more than compressing).
fn zstd_smaller(data: &[u8], level: i32) -> Option<Vec<u8>> {
    thread_local! {
        static CTX: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    CTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().is_none_or(|(l, _)| *l != level) {
            *c = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, z) = c.as_mut()?;
        let out = z.compress(data).ok()?;
        (out.len() <= data.len() - data.len() / 8).then_some(out)
    })
}

/// Bitmaps of changed 4 KiB pages per block (the page-delta payload's bitmap layout), from
/// sorted changed byte ranges.
fn page_masks(ranges: &[(u64, u64)], bs: u64) -> std::collections::HashMap<u64, Vec<u8>> {
    let page = PAGE_SIZE as u64;
    let pages = (bs / page) as usize;
    let mut masks = std::collections::HashMap::new();
    for &(start, end) in ranges {
        for p in start / page..end.div_ceil(page) {
            let (block, idx) = (p * page / bs, ((p * page % bs) / page) as usize);
            masks
                .entry(block)
                .or_insert_with(|| vec![0u8; pages.div_ceil(8)])[idx / 8] |= 1 << (idx % 8);
        }
    }
    masks
}
