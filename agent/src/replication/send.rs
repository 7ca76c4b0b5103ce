//! The sending end of replication: drives [`SenderCore`] over a QUIC session to a peer agent.
//!
//! Connections are kept per peer in [`Peers`] and shared: several transfers to one peer run as
//! sessions of one connection, each with its own control stream (at a higher priority than
//! data) and data streams, which QUIC serves round-robin, so they share the link fairly. All
//! transfers of the agent draw from one bandwidth [`Budget`]; a transfer may have a lower
//! limit of its own.
//!
//! The control stream carries the session's requests (see `ferry_wire::repl`); block data goes
//! over several unidirectional streams of the same connection, fed round-robin by one reader
//! thread through bounded channels, so memory stays at a few dozen blocks whatever the volume.
//! The reader re-checks every block it reads against the local manifest: a snapshot damaged on
//! disk is never sent as good data.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_wire::hashfile::{HashFile, Kind};
use ferry_wire::repl::{
    block_header, choose_base, page_delta, pages_payload, Payload, Request, Response, SenderCore,
    SenderStep, BLOCK_HEADER, PAGE_SIZE, REPL_CONTROL_LIMIT,
};
use ferry_wire::{BlockHash, Name};
use quinn::VarInt;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::{AgentConfig, Cache, Compression};
use crate::daemon::server::load_tls;
use crate::engine::ReadJob;
use crate::error::{check_name, Result, StoreError};
use crate::net::{self, NetError};
use crate::pki::{Identity, Trust};
use crate::replication::ratelimit::TokenBucket;
use crate::store::Store;
use ferry_wire::units::format_size;

/// Data streams per session.
pub const DATA_STREAMS: usize = 4;
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
}

fn net_err(e: NetError) -> StoreError {
    StoreError::Net {
        retryable: e.retryable(),
        message: e.to_string(),
    }
}

fn peer_err(permanent: bool, message: String) -> StoreError {
    StoreError::Net {
        retryable: !permanent,
        message: format!("the receiver refused: {message}"),
    }
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
        Response::Error { permanent, message } => Err(peer_err(permanent, message)),
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

/// One connection to a peer agent, after mutual TLS and the ferry handshake.
struct Link {
    ep: quinn::Endpoint,
    conn: quinn::Connection,
    label: String,
    /// The connection's first stream (pings); kept open for the connection's life.
    _control: (quinn::SendStream, quinn::RecvStream),
}

/// Connections to peer agents, one per address, shared by every transfer to that peer.
pub struct Peers {
    id: Identity,
    trust: Trust,
    cc: quinn::ClientConfig,
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
    /// The node's TLS identity and trust from the `[net]` config.
    pub fn new(cfg: &AgentConfig) -> Result<Peers> {
        let (id, trust) = load_tls(cfg)?;
        let cc = net::client_config(&id, &trust).map_err(net_err)?;
        Ok(Peers {
            id,
            trust,
            cc,
            links: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// A live connection to `peer` and the peer's name, connecting if there is none.
    pub async fn connection(&self, peer: SocketAddr) -> Result<(quinn::Connection, String)> {
        let mut links = self.links.lock().await;
        if let Some(l) = links.get(&peer) {
            if l.conn.close_reason().is_none() {
                return Ok((l.conn.clone(), l.label.clone()));
            }
            links.remove(&peer);
        }
        let ep = net::client_endpoint(peer, self.cc.clone()).map_err(net_err)?;
        let s = net::connect(&ep, peer, &self.id, &self.trust)
            .await
            .map_err(net_err)?;
        let label = format!("{}@{} ({peer})", s.peer_node, s.peer_site);
        tracing::info!(peer = %label, "connected to peer");
        let out = (s.conn.clone(), label.clone());
        links.insert(
            peer,
            Link {
                ep,
                conn: s.conn,
                label,
                _control: (s.send, s.recv),
            },
        );
        Ok(out)
    }

    /// Closes every connection and waits until the peers have been told.
    pub async fn close(&self) {
        let links: Vec<Link> = self.links.lock().await.drain().map(|(_, l)| l).collect();
        for l in links {
            l.conn
                .close(VarInt::from_u32(ferry_wire::msg::close::DONE), b"done");
            l.ep.wait_idle().await;
        }
    }
}

/// [`replicate`], retrying errors that can pass (the network, a busy receiver) up to
/// `retries` times with exponential backoff (1 s doubling, at most 30 s). Permanent errors
/// (refused identity, corrupt data, no space) are returned at once.
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
            Err(StoreError::Net {
                retryable: true,
                message,
            }) if attempt < retries => {
                attempt += 1;
                tracing::warn!(attempt, retries, error = %message, delay_s = delay.as_secs(), "replication failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(30));
            }
            other => return other,
        }
    }
}

/// Sends snapshot `snap` of `volume` to the agent at `target.peer`, into its mirror volume,
/// over the peer's shared connection, within the agent's bandwidth budget.
pub async fn replicate(
    cfg: &AgentConfig,
    store: Arc<Store>,
    (peers, budget): (&Peers, &Budget),
    volume: &str,
    snap: &str,
    target: &Target,
) -> Result<ReplicateReport> {
    let started = Instant::now();
    let peer = target.peer;
    let meta = store.snapshot(volume, snap)?;
    let mirror = check_name("mirror volume", target.mirror.as_deref().unwrap_or(volume))?;
    let want_base = match &target.base {
        Some(b) => Some(check_name("base snapshot", b)?),
        None => None,
    };
    let root = BlockHash::from_hex(&meta.root)
        .ok_or_else(|| StoreError::Invalid("bad root in snapshot metadata".into()))?;
    let ours: Vec<(Name, BlockHash)> = store
        .list_snapshots(volume)?
        .into_iter()
        .filter(|m| {
            m.created_unix_ns < meta.created_unix_ns
                && m.block_size == meta.block_size
                && m.size == meta.size
        })
        .filter_map(|m| BlockHash::from_hex(&m.root).map(|r| (m.name, r)))
        .collect();
    let (image, manifest_path, _) = store.snapshot_paths(volume, snap)?;
    let new = store.manifest(volume, snap)?;

    let (conn, peer_label) = peers.connection(peer).await?;
    let mut ctl = conn.open_bi().await.map_err(|e| net_err(e.into()))?;
    // Offers and needs go ahead of block data on the shared connection.
    let _ = ctl.0.set_priority(1);
    let sid = u64::from(ctl.0.id());

    let mut report = ReplicateReport {
        volume: meta.volume.clone(),
        snapshot: meta.name.clone(),
        mirror: mirror.clone(),
        peer: peer_label,
        base: None,
        root: meta.root.clone(),
        blocks: new.len(),
        zero_blocks: 0,
        offered_blocks: 0,
        sent_blocks: 0,
        sent_bytes: 0,
        compressed_blocks: 0,
        compression_saved_bytes: 0,
        resumed_blocks: 0,
        elapsed_ms: 0.0,
        already_there: false,
    };
    let theirs = match call(
        &mut ctl,
        &Request::Snapshots {
            mirror: mirror.clone(),
        },
    )
    .await?
    {
        Response::Snapshots { snapshots } => snapshots,
        r => return Err(unexpected(&r)),
    };
    if let Some((_, r)) = theirs.iter().find(|(n, _)| *n == meta.name) {
        if *r != root {
            return Err(StoreError::Corrupt {
                what: "mirror snapshot",
                path: mirror.as_str().into(),
                detail: format!("the peer holds {mirror}@{snap} with root {r}, ours is {root}"),
            });
        }
        report.already_there = true;
        let _ = ctl.0.finish();
        report.elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
        return Ok(report);
    }
    let base = match want_base {
        None => choose_base(&ours, &theirs),
        Some(b) => {
            let Some((_, r)) = ours.iter().find(|(n, _)| *n == b) else {
                return Err(StoreError::Invalid(format!(
                    "base {volume}@{b} is not an older snapshot of the same size and block size as {snap}"
                )));
            };
            if !theirs.iter().any(|(n, tr)| *n == b && tr == r) {
                return Err(StoreError::Invalid(format!(
                    "the peer does not hold {mirror}@{b} with the same root; \
                     omit --base to use the newest snapshot both hold"
                )));
            }
            Some(b)
        }
    };
    let base_manifest = match &base {
        Some(b) => Some(store.manifest(volume, b.as_str())?),
        None => None,
    };
    // The changed 4 KiB pages of each block, when the backend's diff is exact (reflink):
    // page deltas then need no read of the base. Otherwise the base image is read to find them.
    let (page_masks, base_image) = match &base {
        Some(b) => {
            let d = store.diff(volume, b.as_str(), snap)?;
            if d.method == "fiemap" {
                (Some(page_masks(&d.ranges, meta.block_size as u64)), None)
            } else {
                (None, Some(store.snapshot_paths(volume, b.as_str())?.0))
            }
        }
        None => (None, None),
    };
    report.base = base.clone();
    match call(
        &mut ctl,
        &Request::Begin {
            mirror: mirror.clone(),
            snapshot: meta.name.clone(),
            size: meta.size,
            block_size: meta.block_size,
            root,
            base,
        },
    )
    .await?
    {
        Response::Begun { resumed } => report.resumed_blocks = resumed,
        r => return Err(unexpected(&r)),
    }

    // Data path: a reader thread feeding DATA_STREAMS stream writers; it counts what it sent
    // so the control path can keep the number of needed-but-unsent blocks bounded.
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let total_sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let progress = Arc::new(tokio::sync::Notify::new());
    let (reader_sent, reader_progress) = (sent.clone(), progress.clone());
    let (need_tx, mut need_rx) = mpsc::channel::<Vec<u64>>(8);
    let mut stream_txs = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..DATA_STREAMS {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(STREAM_QUEUE);
        let mut s = conn.open_uni().await.map_err(|e| net_err(e.into()))?;
        stream_txs.push(tx);
        writers.push(tokio::spawn(async move {
            while let Some(frame) = rx.recv().await {
                net::write_framed(&mut s, frame).await?;
            }
            let _ = s.finish();
            Ok::<_, NetError>(())
        }));
    }
    let bs = meta.block_size as u64;
    let size = meta.size;
    let io = cfg.io.clone();
    let sent_bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader_bytes = sent_bytes.clone();
    let mut bucket = target
        .bandwidth_limit
        .map(|l| TokenBucket::new(l, Instant::now()));
    let budget = budget.clone();
    let compress = target.compress;
    let mut compressed = (0u64, 0u64);
    let reader = tokio::task::spawn_blocking(move || -> Result<(u64, (u64, u64))> {
        // Wake the control loop when the reader stops, whatever the reason.
        struct WakeOnExit(Arc<tokio::sync::Notify>);
        impl Drop for WakeOnExit {
            fn drop(&mut self) {
                self.0.notify_one();
            }
        }
        let _wake = WakeOnExit(reader_progress.clone());
        let manifest =
            HashFile::open(&manifest_path, Kind::Manifest).map_err(|e| StoreError::Corrupt {
                what: "manifest",
                path: manifest_path.clone(),
                detail: e.to_string(),
            })?;
        // With a base, the receiver's working copy holds the base block of every block it
        // asks for: send only the pages that differ when that is clearly smaller.
        let base_file = match &base_image {
            Some(p) => Some(
                std::fs::File::open(p).map_err(|e| crate::error::io_err(e, "open", p.clone()))?,
            ),
            None => None,
        };
        let (mut blocks, mut next) = (0u64, 0usize);
        let per_read = (io.read_size / bs).max(1);
        while let Some(need) = need_rx.blocking_recv() {
            // Runs of consecutive needed blocks, read through io_uring (O_DIRECT: a fresh
            // clone has nothing in the page cache) in pieces of up to `read_size`, hashed and
            // framed on the hashing threads. Each batch is read to its end before the next is
            // taken, so the reader never waits for needs with reads in flight.
            let mut jobs = Vec::new();
            let mut k = 0;
            while k < need.len() {
                let start = need[k];
                let mut n = 1u64;
                while k + (n as usize) < need.len()
                    && need[k + n as usize] == start + n
                    && n < per_read
                {
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
            let frame_blocks = |job: &ReadJob, data: &[u8]| -> std::io::Result<Vec<Framed>> {
                let mut out = Vec::new();
                let mut base_block = Vec::new();
                for (j, chunk) in data.chunks(bs as usize).enumerate() {
                    let i = job.offset / bs + j as u64;
                    let hash = BlockHash::of(chunk);
                    let mut frame = Vec::new();
                    // With a base, the receiver's working copy holds the base block of every
                    // block it asks for: send only the pages that differ when that is clearly
                    // smaller.
                    let full = chunk.len() as u64 == bs;
                    let delta = match (&page_masks, &base_file) {
                        (Some(masks), _) if full => {
                            masks.get(&i).and_then(|m| pages_payload(chunk, m))
                        }
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
                    let packed = match compress {
                        Compression::Zstd(level) => zstd_smaller(payload, level),
                        Compression::Off => None,
                    };
                    let saved = packed.as_ref().map_or(0, |p| payload.len() - p.len()) as u64;
                    let (kind, payload) = match (&packed, kind) {
                        (Some(p), Payload::Pages) => (Payload::ZstdPages, p.as_slice()),
                        (Some(p), _) => (Payload::ZstdFull, p.as_slice()),
                        (None, k) => (k, payload),
                    };
                    frame.reserve_exact(net::FRAME_PREFIX + BLOCK_HEADER + payload.len());
                    frame.extend_from_slice(&[0; net::FRAME_PREFIX]);
                    frame.extend_from_slice(&block_header(sid, i, kind));
                    frame.extend_from_slice(payload);
                    out.push((i, hash, frame, saved));
                }
                Ok(out)
            };
            crate::engine::run(
                &image,
                &io,
                Cache::Cold,
                (per_read * bs) as usize,
                jobs,
                frame_blocks,
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
                        let payload = (frame.len() - net::FRAME_PREFIX - BLOCK_HEADER) as u64;
                        blocks += 1;
                        if saved > 0 {
                            compressed.0 += 1;
                            compressed.1 += saved;
                        }
                        let n = frame.len() as u64;
                        let wait = bucket
                            .as_mut()
                            .map_or(Duration::ZERO, |b| b.take(n, Instant::now()))
                            .max(budget.take(n));
                        if !wait.is_zero() {
                            std::thread::sleep(wait);
                        }
                        reader_bytes.fetch_add(payload, std::sync::atomic::Ordering::Relaxed);
                        if stream_txs[next % DATA_STREAMS]
                            .blocking_send(frame)
                            .is_err()
                        {
                            return Err(StoreError::Net {
                                retryable: true,
                                message: "data stream closed".into(),
                            });
                        }
                        next += 1;
                        reader_sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        reader_progress.notify_one();
                    }
                    Ok(())
                },
            )?;
        }
        Ok((blocks, compressed))
    });
    // Responses are read by their own task, so the control loop can wait for either a
    // response or send progress without cancelling a half-read frame.
    let (resp_tx, mut resp_rx) = mpsc::channel::<Result<Response>>(8);
    let mut ctl_recv = ctl.1;
    let responses = tokio::spawn(async move {
        loop {
            let r = match net::recv_msg(&mut ctl_recv, REPL_CONTROL_LIMIT).await {
                Ok(Response::Error { permanent, message }) => Err(peer_err(permanent, message)),
                Ok(r) => Ok(r),
                Err(e) => Err(net_err(e)),
            };
            let stop = r.is_err();
            if resp_tx.send(r).await.is_err() || stop {
                break;
            }
        }
    });
    let mut ctl_send = ctl.0;
    let closed = || StoreError::Net {
        retryable: true,
        message: "control stream closed".into(),
    };

    // Control path: offers and needs, driven by the sans-IO core.
    let new_fn = |i: u64| new.hash(i);
    let base_fn = |i: u64| {
        base_manifest
            .as_ref()
            .map_or(BlockHash([0; 32]), |m| m.hash(i))
    };
    let base_dyn: &(dyn Fn(u64) -> BlockHash + Sync) = &base_fn;
    let mut core = SenderCore::new(
        new.geometry(),
        &new_fn,
        base_manifest.as_ref().map(|_| base_dyn),
    );
    // Progress: scanned blocks (control loop), needed blocks, bytes sent (reader).
    let scanned = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let needed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let ticker = target.progress.then(|| {
        let (scanned, needed, sent_bytes, sent_blocks) = (
            scanned.clone(),
            needed.clone(),
            sent_bytes.clone(),
            total_sent.clone(),
        );
        let total = new.len().max(1);
        tokio::spawn(async move {
            let t0 = Instant::now();
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let ld =
                    |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
                let (sc, nd, sb, sk) =
                    (ld(&scanned), ld(&needed), ld(&sent_bytes), ld(&sent_blocks));
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
    });
    let control: Result<()> = async {
        loop {
            let n = sent.swap(0, std::sync::atomic::Ordering::Relaxed);
            core.on_sent(n);
            total_sent.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            scanned.store(core.position(), std::sync::atomic::Ordering::Relaxed);
            match core.poll() {
                SenderStep::Zeros(ranges) => {
                    report.zero_blocks += ranges.iter().map(|(a, b)| b - a).sum::<u64>();
                    net::send_msg(&mut ctl_send, &Request::Zeros { ranges })
                        .await
                        .map_err(net_err)?;
                }
                SenderStep::Offer(blocks) => {
                    report.offered_blocks += blocks.len() as u64;
                    net::send_msg(&mut ctl_send, &Request::Offer { blocks })
                        .await
                        .map_err(net_err)?;
                }
                SenderStep::Wait if core.awaiting_need() => {
                    tokio::select! {
                        r = resp_rx.recv() => match r.ok_or_else(closed)?? {
                            Response::Need { blocks } => {
                                core.on_need(blocks.len());
                                needed.fetch_add(blocks.len() as u64, std::sync::atomic::Ordering::Relaxed);
                                if !blocks.is_empty() && need_tx.send(blocks).await.is_err() {
                                    return Ok(()); // the reader failed; its error is reported below
                                }
                            }
                            r => return Err(unexpected(&r)),
                        },
                        _ = progress.notified() => {}
                    }
                }
                SenderStep::Wait if reader.is_finished() => return Ok(()), // reported below
                SenderStep::Wait => progress.notified().await,
                SenderStep::Done => return Ok(()),
            }
        }
    }
    .await;
    drop(need_tx);
    if let Some(t) = ticker {
        t.abort();
    }
    let read = reader
        .await
        .map_err(|e| StoreError::Invalid(format!("reader thread: {e}")))?;
    for w in writers {
        w.await
            .map_err(|e| StoreError::Invalid(format!("stream writer: {e}")))?
            .map_err(net_err)?;
    }
    control?;
    let (blocks, (packed, saved)) = read?;
    report.sent_blocks = blocks;
    // Counted once, by the reader, as each frame goes out (progress reads it too).
    report.sent_bytes = sent_bytes.load(std::sync::atomic::Ordering::Relaxed);
    report.compressed_blocks = packed;
    report.compression_saved_bytes = saved;
    net::send_msg(&mut ctl_send, &Request::Commit)
        .await
        .map_err(net_err)?;
    match resp_rx.recv().await.ok_or_else(closed)?? {
        Response::Committed { root: r } if r == root => {}
        r => return Err(unexpected(&r)),
    }
    let _ = ctl_send.finish();
    responses.abort();
    let stats = conn.stats();
    tracing::debug!(
        mtu = stats.path.current_mtu,
        rtt_us = stats.path.rtt.as_micros() as u64,
        lost = stats.path.lost_packets,
        sent_packets = stats.path.sent_packets,
        cwnd = stats.path.cwnd,
        "transfer path"
    );
    report.elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
    Ok(report)
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
