//! The receiving end of replication: drives [`ReceiverCore`] with a session's control stream
//! and the connection's data streams, writing into the mirror volume's working copy.
//!
//! A session: the sender asks which snapshots the mirror holds, begins (the working copy is
//! reset to the base snapshot, or to zeros for a full transfer, under the mirror's receive
//! lock), sends zero ranges and offers; the receiver copies what it already holds (any
//! committed snapshot of any volume, by hash) and asks for the rest; blocks arrive on data
//! streams and are written only after their BLAKE3 matches the offer. On commit every needed
//! block must have arrived; the working copy is fsynced and snapshotted, and the snapshot is
//! committed only if its manifest root equals the sender's. The previous mirror snapshots are
//! never touched. A block that fails its hash check fails the session and closes the
//! connection.
//!
//! Resuming: every couple of seconds the blocks written so far are made durable (fdatasync of
//! the working copy) and then appended to the mirror's receive journal. A new session for the
//! same snapshot, base and root keeps the working copy and answers journaled blocks as present,
//! so an interrupted transfer (either end killed, the network gone) continues where it was.
//! A new session from the same source node takes over a mirror whose old session is still
//! held open by a dead connection, instead of waiting for that connection to time out.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ferry_wire::hash::{Geometry, LeafCv, LEAF_SIZE};
use ferry_wire::hashfile::HashFile;
use ferry_wire::journal::{self, JournalHeader};
use ferry_wire::repl::{
    apply_pages, choose_base, delta_leaves, leaves_and_hash, parse_block, rehash_leaves,
    ErrorClass, OfferPlan, Payload, ReceiveError, ReceiverCore, ReceiverTimings, Request,
    Resolution, Response, BLOCK_HEADER, MAX_BASE_CANDIDATES, MAX_IN_TRANSIT, MAX_SEED_CANDIDATES,
    PAGE_SIZE, REPL_CONTROL_LIMIT,
};
use ferry_wire::Name;
use quinn::{RecvStream, SendStream};
use tokio::sync::Notify;

use crate::error::StoreError;
use crate::fsx::{self, FileLock};
use crate::net::{self, NetError};
use crate::store::dedup::Dedup;
use crate::store::{MirrorInfo, Store};

/// How long a commit waits for outstanding blocks without any arriving.
const COMMIT_IDLE: Duration = Duration::from_secs(60);
/// How often written blocks are made durable and journaled.
const JOURNAL_EVERY: Duration = Duration::from_secs(2);
/// How long a takeover waits for the old session to let go of the mirror.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

/// One receiving session, shared between its control stream and the data streams.
pub struct RecvSession {
    core: Mutex<ReceiverCore>,
    file: File,
    block_size: u64,
    /// Why the session failed, decided where it did.
    failed: Mutex<Option<(ErrorClass, String)>>,
    progress: Notify,
    /// The source node (a takeover must come from the same node).
    node: String,
    /// Open while the session may write; closed (under the write lock) when it is taken
    /// over or ends, so that no write of the old session lands after a new one started.
    gate: RwLock<bool>,
    /// Wakes the control loop of a session that was taken over.
    cancel: Notify,
    /// Blocks written since the last journal flush.
    written: Mutex<Vec<u64>>,
    journal: Mutex<File>,
    journal_path: PathBuf,
    ended: AtomicBool,
    /// Checked blocks on their way to the session's writer thread; `None` once it ends.
    writer: Mutex<Option<tokio::sync::mpsc::Sender<WriteJob>>>,
    /// Where its time goes, nanoseconds summed over threads (see `ReceiverTimings`).
    spent: Spent,
    /// The next mirror snapshot's manifest and leaf index, filled in as blocks are checked
    /// (none for a session resuming an interrupted transfer: its commit reads the image).
    working: Mutex<Option<crate::store::WorkingIndex>>,
}

/// Time a session spent, nanoseconds, by what it did.
#[derive(Default)]
struct Spent {
    copy: AtomicU64,
    base_reads: AtomicU64,
    verify: AtomicU64,
    write: AtomicU64,
}

impl Spent {
    fn add(counter: &AtomicU64, since: std::time::Instant) {
        counter.fetch_add(since.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    fn ms(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed) / 1_000_000
    }
}

/// A checked block for the writer: the whole block, or the block rebuilt from a page delta
/// with the pages that changed (only those are written).
struct WriteJob {
    index: u64,
    /// The block is `block[start..]` (a data frame's payload, or a rebuilt block).
    block: Vec<u8>,
    start: usize,
    pages: Option<Vec<usize>>,
}

/// Checked blocks queued per session before the data streams wait.
const WRITE_QUEUE: usize = 64;

/// The session's one writer: buffered writes into the working copy. One thread, so the
/// data streams never contend for the file's lock (XFS serialises buffered writes per inode;
/// four writers spent 5% of the receiver spinning on it), and a write throttled by the
/// kernel's dirty-page limits stalls only this thread, never the async workers that drive
/// QUIC. Buffered on purpose: O_DIRECT writes were measured one at a time (13 s for a
/// 2.8 GiB full transfer against 8) and through io_uring with 32 in flight (11.4 s against
/// 10.6 on a disk-like loop device, the writer busy 7.0 s against 0.5), and they leave the
/// next incremental's base reads cold. Starting writeback early (`sync_file_range` every
/// 8 MiB), so that the fsync at commit finds less to do, made both full and incremental
/// transfers slower (incremental 3.6-4.3 s against 3.0-3.4).
fn run_writer(session: Arc<RecvSession>, mut rx: tokio::sync::mpsc::Receiver<WriteJob>) {
    while let Some(job) = rx.blocking_recv() {
        let at = job.index * session.block_size;
        let gate = match session.gate.read() {
            Ok(g) => g,
            Err(_) => return,
        };
        if !*gate {
            return; // taken over or ended: nothing more is written
        }
        // Write only what changed, so a reflinked working copy keeps sharing the rest.
        let t0 = std::time::Instant::now();
        let block = &job.block[job.start..];
        let written = match &job.pages {
            None => session.file.write_all_at(block, at),
            Some(changed) => changed.iter().try_for_each(|&p| {
                let r = p * PAGE_SIZE..(p + 1) * PAGE_SIZE;
                session
                    .file
                    .write_all_at(&block[r], at + (p * PAGE_SIZE) as u64)
            }),
        };
        Spent::add(&session.spent.write, t0);
        if let Err(e) = written {
            drop(gate);
            let e = crate::error::io_err(
                e,
                &format!("write block {}", job.index),
                session
                    .journal_path
                    .parent()
                    .map(PathBuf::from)
                    .unwrap_or_default(),
            );
            fail(&session, e.class(), e.to_string());
            return;
        }
        let done = session.core.lock().map(|mut c| c.received(job.index));
        if !matches!(done, Ok(Ok(()))) {
            drop(gate);
            let why = format!("block {} arrived twice", job.index);
            fail(&session, ErrorClass::Protocol, why);
            return;
        }
        session.record(job.index);
        drop(gate);
        session.progress.notify_waiters();
    }
}

impl RecvSession {
    /// Makes the blocks written so far durable, then records them in the journal.
    fn flush_journal(&self) -> std::io::Result<()> {
        let mut jf = self
            .journal
            .lock()
            .map_err(|_| std::io::Error::other("journal lock poisoned"))?;
        let mut blocks = self
            .written
            .lock()
            .map(|mut w| std::mem::take(&mut *w))
            .unwrap_or_default();
        if blocks.is_empty() {
            return Ok(());
        }
        self.file.sync_data()?;
        jf.write_all(&journal::encode_batches(&mut blocks))?;
        jf.sync_data()
    }

    fn record(&self, block: u64) {
        if let Ok(mut w) = self.written.lock() {
            w.push(block);
        }
    }

    /// Tells the working index what block `i` is.
    fn index(&self, i: u64, hash: &ferry_wire::BlockHash, cvs: Option<&[LeafCv]>) {
        if let Ok(mut w) = self.working.lock() {
            if let Some(wi) = w.as_mut() {
                wi.record(i, hash, cvs);
            }
        }
    }

    /// The base block `i`'s leaf chaining values, when the working index has them.
    fn base_cvs(&self, i: u64) -> Option<Vec<LeafCv>> {
        self.working.lock().ok()?.as_ref()?.base_cvs(i)
    }
}

/// Sessions of one connection, by the id of their control stream.
pub type Registry = Arc<Mutex<HashMap<u64, Arc<RecvSession>>>>;

/// The sessions receiving into each mirror, across all connections of the endpoint.
pub type Receivers = Arc<Mutex<HashMap<Name, Arc<RecvSession>>>>;

fn store_err(e: StoreError) -> Response {
    Response::Error {
        class: e.class(),
        message: e.to_string(),
    }
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Where a block the receiver already holds can be copied from.
#[derive(Debug, Clone)]
enum Source {
    /// A committed snapshot image, at a byte offset, where the block hashed as offered.
    Snapshot(PathBuf, u64, ferry_wire::BlockHash),
    /// A block this session asked the sender for: copied at commit, once every requested
    /// block has arrived and been verified.
    Requested(u64),
}

/// State of a begun session on the control side.
struct Begun {
    id: u64,
    mirror: Name,
    snapshot: Name,
    root: ferry_wire::BlockHash,
    geometry: Geometry,
    session: Arc<RecvSession>,
    base: Option<HashFile>,
    base_name: Option<Name>,
    /// The node's dedup index: where blocks held here already are.
    index: Dedup,
    sources: HashMap<PathBuf, File>,
    /// Hashes asked for in this session (full blocks only), to the block that will hold them.
    requested: HashMap<ferry_wire::BlockHash, u64>,
    /// Copies that wait for requested blocks: (to, from).
    deferred: Vec<(u64, u64)>,
    /// Blocks already in place from an interrupted transfer of the same snapshot.
    done: Vec<u64>,
    /// Milliseconds opening the session took.
    open_ms: u64,
    _lock: FileLock,
    _moving: super::Moving,
}

fn bit(bits: &[u64], i: u64) -> bool {
    bits.get((i / 64) as usize)
        .is_some_and(|w| w & (1 << (i % 64)) != 0)
}

/// Opens the journal for this transfer: an existing journal of the same transfer is kept
/// (returns the blocks it lists as a bitmap), anything else is replaced by a fresh one.
fn open_journal(
    path: &Path,
    header: &JournalHeader,
    blocks: u64,
) -> Result<(File, Option<Vec<u64>>), StoreError> {
    let io = |e, op: &str| crate::error::io_err(e, op, path.to_owned());
    if let Ok(bytes) = std::fs::read(path) {
        match journal::decode(&bytes) {
            Ok(r) if r.header == *header => {
                let mut done = vec![0u64; blocks.div_ceil(64) as usize];
                for (first, n) in r.runs {
                    for i in first..(first + u64::from(n)).min(blocks) {
                        done[(i / 64) as usize] |= 1 << (i % 64);
                    }
                }
                let mut f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| io(e, "open"))?;
                f.set_len(r.valid_len as u64)
                    .map_err(|e| io(e, "truncate"))?;
                std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0))
                    .map_err(|e| io(e, "seek"))?;
                return Ok((f, Some(done)));
            }
            Ok(_) => {
                tracing::info!(path = %path.display(), "discarding the journal of another transfer")
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "discarding a damaged journal")
            }
        }
    }
    Ok((new_journal(path, header)?, None))
}

fn new_journal(path: &Path, header: &JournalHeader) -> Result<File, StoreError> {
    let io = |e, op: &str| crate::error::io_err(e, op, path.to_owned());
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| io(e, "create"))?;
    f.write_all(&journal::encode_header(header))
        .and_then(|()| f.sync_all())
        .map_err(|e| io(e, "write"))?;
    if let Some(dir) = path.parent() {
        fsx::fsync_dir(dir).map_err(|e| io(e, "fsync"))?;
    }
    Ok(f)
}

/// Takes the mirror's receive lock. If a session from the same source node holds it (a dead
/// sender whose connection has not timed out yet), that session is closed and the lock taken
/// over.
async fn take_receive_lock(
    store: &Arc<Store>,
    receivers: &Receivers,
    mirror: &Name,
    node: &str,
) -> Result<FileLock, StoreError> {
    let err = match blocking(|| store.receive_lock(mirror)) {
        Ok(l) => return Ok(l),
        Err(e @ StoreError::Busy(_)) => e,
        Err(e) => return Err(e),
    };
    let old = receivers.lock().ok().and_then(|r| r.get(mirror).cloned());
    let Some(old) = old.filter(|o| o.node == node) else {
        return Err(err);
    };
    tracing::warn!(%mirror, node, "a new session from the same node takes over the mirror");
    if let Ok(mut open) = old.gate.write() {
        *open = false;
    }
    fail(
        &old,
        ErrorClass::Busy,
        "taken over by a newer session from the same node".into(),
    );
    old.cancel.notify_one();
    let deadline = tokio::time::Instant::now() + TAKEOVER_WAIT;
    loop {
        match blocking(|| store.receive_lock(mirror)) {
            Err(StoreError::Busy(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => return other,
        }
    }
}

/// Serves one session on a control stream until the sender finishes or fails it.
pub async fn serve_session(
    store: Arc<Store>,
    peer: MirrorInfo,
    registry: Registry,
    receivers: Receivers,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), NetError> {
    let id = u64::from(send.id());
    let mut begun: Option<Begun> = None;
    let ctx = Ctx {
        store: &store,
        peer: &peer,
        registry: &registry,
        receivers: &receivers,
        id,
    };
    let result = async {
        loop {
            let session = begun.as_ref().map(|b| b.session.clone());
            let frame = match session {
                Some(s) => tokio::select! {
                    f = net::read_frame(&mut recv, REPL_CONTROL_LIMIT) => f?,
                    _ = s.cancel.notified() => {
                        let why = "taken over by a newer session from the same node";
                        let _ = net::send_msg(&mut send, &Response::Error { class: ErrorClass::Busy, message: why.into() }).await;
                        tracing::info!(session = id, why, "session ended");
                        break;
                    }
                },
                None => net::read_frame(&mut recv, REPL_CONTROL_LIMIT).await?,
            };
            let Some(frame) = frame else { break };
            let req: Request = ferry_wire::codec::decode(&frame, REPL_CONTROL_LIMIT)?;
            let resp = match handle(&ctx, &mut begun, req).await {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(r) => {
                    net::send_msg(&mut send, &r).await?;
                    break;
                }
            };
            let done = matches!(resp, Response::Committed { .. });
            net::send_msg(&mut send, &resp).await?;
            if done {
                break;
            }
        }
        let _ = send.finish();
        Ok(())
    }
    .await;
    registry.lock().map(|mut r| r.remove(&id)).ok();
    if let Some(b) = begun.take() {
        end(&receivers, &b);
    }
    result
}

/// What a session's requests are served with.
struct Ctx<'a> {
    store: &'a Arc<Store>,
    peer: &'a MirrorInfo,
    registry: &'a Registry,
    receivers: &'a Receivers,
    id: u64,
}

/// A session ends (committed, failed or cut off): journal what it wrote, so that a retry
/// resumes from there, and let go of the mirror.
fn end(receivers: &Receivers, b: &Begun) {
    // No block of this session is written after this (a write in progress finishes first);
    // the writer thread ends with its channel.
    if let Ok(mut open) = b.session.gate.write() {
        *open = false;
    }
    if let Ok(mut w) = b.session.writer.lock() {
        w.take();
    }
    b.session.ended.store(true, Ordering::Relaxed);
    if let Ok(mut r) = receivers.lock() {
        if r.get(&b.mirror).is_some_and(|s| Arc::ptr_eq(s, &b.session)) {
            r.remove(&b.mirror);
        }
    }
    if let Err(e) = blocking(|| b.session.flush_journal()) {
        tracing::warn!(mirror = %b.mirror, error = %e, "could not journal the last blocks");
    }
}

/// A protocol violation: the session ends, and the sender should not retry.
fn protocol(m: &str) -> Response {
    Response::Error {
        class: ErrorClass::Protocol,
        message: m.to_string(),
    }
}

/// One request of the session's control stream. The phases, each its own function: the
/// base ([`pick_base`], seeding a new mirror); [`begin`] (reset the working copy to the base or to
/// where an interrupted transfer stopped, and start the writer and the journal); [`zeros`];
/// [`offer`] (resolve each offered block: present, copied locally, or needed); [`commit`]
/// (wait for every needed block, then fsync, check the root and commit).
async fn handle(
    ctx: &Ctx<'_>,
    begun: &mut Option<Begun>,
    req: Request,
) -> Result<Option<Response>, Response> {
    match req {
        Request::Open {
            mirror,
            snapshot,
            size,
            block_size,
            root,
            candidates,
            base,
        } => {
            if begun.is_some() {
                return Err(protocol("session already begun"));
            }
            if candidates.len() > MAX_BASE_CANDIDATES {
                return Err(protocol("too many base candidates"));
            }
            let Some(base) = pick_base(
                ctx,
                &mirror,
                (size, block_size, root),
                &snapshot,
                &candidates,
                base,
            )
            .await?
            else {
                return Ok(Some(Response::Committed {
                    root,
                    timings: None,
                }));
            };
            let header = JournalHeader {
                snapshot,
                base: base.clone(),
                root,
                size,
                block_size,
            };
            let Some(b) = begin(ctx, &mirror, header).await? else {
                // Committed already, by an earlier session whose sender died before it
                // heard so: that is this transfer's success.
                return Ok(Some(Response::Committed {
                    root,
                    timings: None,
                }));
            };
            let resumed: u64 = b.done.iter().map(|w| u64::from(w.count_ones())).sum();
            *begun = Some(b);
            Ok(Some(Response::Opened { base, resumed }))
        }
        Request::Zeros { ranges } => {
            let b = begun
                .as_mut()
                .ok_or_else(|| protocol("zeros before begin"))?;
            failed(b)?;
            blocking(|| zeros(b, ranges)).map(|()| None)
        }
        Request::Offer { blocks } => {
            let b = begun
                .as_mut()
                .ok_or_else(|| protocol("offer before begin"))?;
            failed(b)?;
            offer(b, &blocks).map(|need| Some(Response::Need { blocks: need }))
        }
        Request::Commit => {
            let b = begun
                .as_mut()
                .ok_or_else(|| protocol("commit before begin"))?;
            let timings = commit(ctx.store, b).await?;
            Ok(Some(Response::Committed {
                root: b.root,
                timings: Some(timings),
            }))
        }
    }
}

/// The session's failure (a write out of space, a takeover), as its error response.
fn failed(b: &Begun) -> Result<(), Response> {
    match b.session.failed.lock().ok().and_then(|f| f.clone()) {
        Some((class, message)) => Err(Response::Error { class, message }),
        None => Ok(()),
    }
}

/// The mirror's committed snapshots and their roots (none when it does not exist yet).
fn held(store: &Store, mirror: &Name) -> Result<Vec<(Name, ferry_wire::BlockHash)>, StoreError> {
    let list = match store.volume(mirror.as_str()) {
        Ok(_) => store.list_snapshots(mirror.as_str())?,
        Err(StoreError::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok(list
        .into_iter()
        .filter_map(|m| ferry_wire::BlockHash::from_hex(&m.root).map(|r| (m.name, r)))
        .collect())
}

/// The base of a session that sends `snapshot` (`size`, `block_size`, `root`) into `mirror`:
/// `asked` (which the mirror must hold with the candidate's root), or the newest of the
/// sender's `candidates` the mirror holds with the same root, or none (in full). A mirror
/// that is new or empty is seeded first from a local snapshot with one of their roots.
/// `None` (the outer option): the mirror holds the snapshot already, with that root.
async fn pick_base(
    ctx: &Ctx<'_>,
    mirror: &Name,
    (size, block_size, root): (u64, u32, ferry_wire::BlockHash),
    snapshot: &Name,
    candidates: &[(Name, ferry_wire::BlockHash)],
    asked: Option<Name>,
) -> Result<Option<Option<Name>>, Response> {
    let (store, peer) = (ctx.store, ctx.peer);
    let this = (snapshot.clone(), root);
    blocking(|| {
        let mut theirs = held(store, mirror)?;
        if theirs.is_empty() && asked.is_none() {
            let seeds: Vec<_> = std::iter::once(this.clone())
                .chain(candidates.iter().take(MAX_SEED_CANDIDATES - 1).cloned())
                .collect();
            if store
                .seed_mirror(mirror, size, block_size, peer, &seeds)?
                .is_some()
            {
                theirs = held(store, mirror)?;
            }
        }
        if theirs.contains(&this) {
            return Ok(None);
        }
        let Some(b) = asked else {
            return Ok(Some(choose_base(candidates, &theirs)));
        };
        match candidates.iter().find(|(n, _)| *n == b) {
            Some(c) if theirs.contains(c) => Ok(Some(Some(b))),
            Some(_) => Err(StoreError::Invalid(format!(
                "the peer does not hold {mirror}@{b} with the same root; omit --base to use \
                 the newest snapshot both hold"
            ))),
            None => Err(StoreError::Invalid(format!(
                "base {b} is not one of the sender's older snapshots of {snapshot}"
            ))),
        }
    })
    .map_err(store_err)
}

/// Begins receiving `header`'s snapshot into `mirror`: takes its receive lock, opens the
/// session ([`open_session`]), then starts its writer thread and journal flusher. `None`:
/// the mirror holds that snapshot with that root already.
async fn begin(
    ctx: &Ctx<'_>,
    mirror: &Name,
    header: JournalHeader,
) -> Result<Option<Begun>, Response> {
    let (store, peer) = (ctx.store, ctx.peer);
    let geometry = Geometry::new(header.block_size as u64, header.size)
        .map_err(|e| protocol(&e.to_string()))?;
    blocking(|| store.ensure_mirror(mirror, header.size, header.block_size, peer))
        .map_err(store_err)?;
    let lock = take_receive_lock(store, ctx.receivers, mirror, peer.node.as_str())
        .await
        .map_err(store_err)?;
    let t0 = std::time::Instant::now();
    let Some(mut b) =
        blocking(|| open_session(ctx, mirror, &header, geometry, lock)).map_err(store_err)?
    else {
        return Ok(None);
    };
    b.open_ms = t0.elapsed().as_millis() as u64;
    let (wtx, wrx) = tokio::sync::mpsc::channel(WRITE_QUEUE);
    if let Ok(mut w) = b.session.writer.lock() {
        *w = Some(wtx);
    }
    let ws = b.session.clone();
    std::thread::Builder::new()
        .name("ferry-recv-write".into())
        .spawn(move || run_writer(ws, wrx))
        .map_err(|e| Response::Error {
            class: ErrorClass::Io,
            message: format!("cannot start the writer thread: {e}"),
        })?;
    if let Ok(mut r) = ctx.registry.lock() {
        r.insert(b.id, b.session.clone());
    }
    if let Ok(mut r) = ctx.receivers.lock() {
        r.insert(b.mirror.clone(), b.session.clone());
    }
    tracing::info!(mirror = %b.mirror, snapshot = %b.snapshot, base = ?header.base, "receiving");
    spawn_journal_flusher(b.session.clone());
    Ok(Some(b))
}

/// Resets the working copy (to the base, or to zeros) unless the journal says an earlier
/// session of this very transfer wrote some of it, which is then kept; opens the base
/// manifest and the node's dedup index. `None`: the snapshot is
/// committed already with the sender's root (by an earlier session, whose sender died
/// before it heard so: checked under the receive lock, after that session let go).
fn open_session(
    ctx: &Ctx<'_>,
    mirror: &Name,
    header: &JournalHeader,
    geometry: Geometry,
    lock: crate::fsx::FileLock,
) -> Result<Option<Begun>, StoreError> {
    let store = ctx.store;
    let (snapshot, base) = (&header.snapshot, &header.base);
    if let Ok(held) = store.snapshot(mirror.as_str(), snapshot.as_str()) {
        if ferry_wire::BlockHash::from_hex(&held.root) == Some(header.root) {
            return Ok(None);
        }
        return Err(StoreError::Conflict(format!(
            "mirror snapshot {mirror}@{snapshot} exists here with root {}, the sender's is {}",
            held.root, header.root
        )));
    }
    let base_manifest = match base {
        Some(b) => Some(store.manifest(mirror.as_str(), b.as_str())?),
        None => None,
    };
    let jpath = store.receive_journal_path(mirror);
    let (jfile, done) = open_journal(&jpath, header, geometry.block_count())?;
    let img = match &done {
        Some(_) => store.working_copy(mirror)?,
        None => store.reset_working_copy(mirror, base.as_ref(), header.size)?,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .map_err(|e| crate::error::io_err(e, "open", img.clone()))?;
    let index = store.dedup(header.block_size)?;
    // A fresh session builds the snapshot's manifest as it checks blocks; one resuming an
    // interrupted transfer does not know what the earlier one wrote, and reads it at commit.
    let working = match &done {
        Some(_) => None,
        None => match store.working_index(mirror, base.as_ref(), geometry) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(%mirror, error = %e, "no working index: the commit reads the snapshot");
                None
            }
        },
    };
    Ok(Some(Begun {
        id: ctx.id,
        mirror: mirror.clone(),
        snapshot: snapshot.clone(),
        root: header.root,
        geometry,
        session: Arc::new(RecvSession {
            core: Mutex::new(ReceiverCore::new(geometry)),
            file,
            block_size: header.block_size as u64,
            failed: Mutex::new(None),
            progress: Notify::new(),
            node: ctx.peer.node.to_string(),
            gate: RwLock::new(true),
            cancel: Notify::new(),
            written: Mutex::new(Vec::new()),
            journal: Mutex::new(jfile),
            journal_path: jpath,
            ended: AtomicBool::new(false),
            writer: Mutex::new(None),
            spent: Spent::default(),
            working: Mutex::new(working),
        }),
        base: base_manifest,
        base_name: base.clone(),
        index,
        sources: HashMap::new(),
        requested: HashMap::new(),
        deferred: Vec::new(),
        done: done.unwrap_or_default(),
        open_ms: 0,
        _lock: lock,
        _moving: super::Moving::start(),
    }))
}

/// Makes what the session wrote durable and journals it every [`JOURNAL_EVERY`] until the
/// session ends; a journal that cannot be written fails the session.
fn spawn_journal_flusher(session: Arc<RecvSession>) {
    tokio::spawn(async move {
        while !session.ended.load(Ordering::Relaxed) {
            tokio::time::sleep(JOURNAL_EVERY).await;
            let s = session.clone();
            match tokio::task::spawn_blocking(move || s.flush_journal()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let e = crate::error::io_err(e, "journal", session.journal_path.clone());
                    fail(&session, e.class(), e.to_string());
                    break;
                }
                Err(_) => break,
            }
        }
    });
}

/// Punches the ranges of zero blocks into the working copy.
fn zeros(b: &Begun, ranges: Vec<(u64, u64)>) -> Result<(), Response> {
    let count = b.geometry.block_count();
    for (s, e) in ranges {
        if s >= e || e > count {
            return Err(protocol(&format!("zero range {s}..{e} outside the volume")));
        }
        let start = s * b.session.block_size;
        let end = (e * b.session.block_size).min(b.geometry.volume_size);
        fsx::punch_hole(&b.session.file, start, end - start).map_err(|err| {
            store_err(crate::error::io_err(
                err,
                "zero",
                PathBuf::from(b.mirror.as_str()),
            ))
        })?;
        if let Ok(mut w) = b.session.working.lock() {
            if let Some(wi) = w.as_mut() {
                wi.zeros(s, e);
            }
        }
    }
    Ok(())
}

/// Resolves an offer: each block is present (journaled already, or equal to the base's),
/// copied from a snapshot held here or from a block requested earlier in this session, or
/// needed. Local copies are made at once (those from requested blocks at the commit);
/// returns the needed blocks.
fn offer(b: &mut Begun, blocks: &[(u64, ferry_wire::BlockHash)]) -> Result<Vec<u64>, Response> {
    let plan: OfferPlan<Source> = {
        let mut core = b.session.core.lock().map_err(|_| protocol("poisoned"))?;
        let (base, index, requested, geometry, done) =
            (&b.base, &mut b.index, &mut b.requested, b.geometry, &b.done);
        core.on_offer(blocks, |i, h| {
            if bit(done, i) {
                if i < geometry.full_blocks() {
                    requested.entry(*h).or_insert(i);
                }
                Resolution::Present
            } else if base
                .as_ref()
                .is_some_and(|m| i < m.len() && m.hash(i) == *h)
            {
                Resolution::Present
            } else if let Some((img, at)) = index.lookup(h) {
                Resolution::Copy(Source::Snapshot(img, at, *h))
            } else if let Some(&j) = requested.get(h) {
                Resolution::Copy(Source::Requested(j))
            } else {
                if i < geometry.full_blocks() {
                    requested.insert(*h, i);
                }
                Resolution::Need
            }
        })
        .map_err(|e| protocol(&e.to_string()))?
    };
    let mut need = plan.need;
    need.extend(blocking(|| copy_local(b, plan.copies))?);
    Ok(need)
}

/// Copies blocks held locally into the working copy (shared extents where the filesystem
/// can); copies from blocks this session requested wait for the commit, when they are here.
fn copy_local(b: &mut Begun, copies: Vec<(u64, Source)>) -> Result<Vec<u64>, Response> {
    let t0 = std::time::Instant::now();
    let copied = copy_each(b, copies);
    Spent::add(&b.session.spent.copy, t0);
    copied
}

/// Copies each block after checking the local data hashes as offered (a block that does
/// not is needed from the sender after all: returned); copies of blocks this session
/// requested wait for the commit.
fn copy_each(b: &mut Begun, copies: Vec<(u64, Source)>) -> Result<Vec<u64>, Response> {
    let mut needed = Vec::new();
    let mut data = Vec::new();
    for (i, from) in copies {
        let (src, off, want) = match from {
            Source::Requested(j) => {
                b.deferred.push((i, j));
                continue;
            }
            Source::Snapshot(path, off, want) => match b.sources.contains_key(&path) {
                true => (&b.sources[&path], off, want),
                false => {
                    let f = File::open(&path)
                        .map_err(|e| store_err(crate::error::io_err(e, "open", path.clone())))?;
                    (&*b.sources.entry(path).or_insert(f), off, want)
                }
            },
        };
        let (at, len) = b.geometry.block_range(i);
        data.resize(len as usize, 0);
        let read = src.read_exact_at(&mut data, off);
        let (cvs, got) = match (read, len == b.session.block_size) {
            (Ok(()), true) => {
                let (c, h) = leaves_and_hash(&data);
                (Some(c), h)
            }
            (Ok(()), false) => (None, ferry_wire::BlockHash::of(&data)),
            (Err(_), _) => (None, ferry_wire::BlockHash([0; 32])),
        };
        if got != want {
            // Not what the index said (the snapshot was deleted or its data went bad).
            tracing::warn!(mirror = %b.mirror, block = i, "a local copy does not hash as offered; asking the sender for it");
            let mut core = b.session.core.lock().map_err(|_| protocol("poisoned"))?;
            core.demand(i, want).map_err(|e| protocol(&e.to_string()))?;
            needed.push(i);
            continue;
        }
        fsx::copy_between(src, off, &b.session.file, at, len).map_err(|e| {
            store_err(crate::error::io_err(
                e,
                "copy block into",
                PathBuf::from(b.mirror.as_str()),
            ))
        })?;
        b.session.index(i, &got, cvs.as_deref());
        b.session.record(i);
    }
    Ok(needed)
}

/// Waits for every needed block ([`COMMIT_IDLE`] at most between two), makes the deferred
/// local copies, fsyncs, and commits the mirror snapshot if its root is the sender's;
/// returns where the session's time went.
async fn commit(store: &Arc<Store>, b: &mut Begun) -> Result<ReceiverTimings, Response> {
    let asked = std::time::Instant::now();
    loop {
        let notified = b.session.progress.notified();
        if let Some((class, message)) = b.session.failed.lock().ok().and_then(|f| f.clone()) {
            return Err(Response::Error { class, message });
        }
        let pending = b
            .session
            .core
            .lock()
            .map(|c| c.pending())
            .unwrap_or(usize::MAX);
        if pending == 0 {
            break;
        }
        if tokio::time::timeout(COMMIT_IDLE, notified).await.is_err() {
            return Err(Response::Error {
                class: ErrorClass::Network,
                message: format!("{pending} block(s) never arrived"),
            });
        }
    }
    tracing::debug!(mirror = %b.mirror, deferred = b.deferred.len(), "all blocks received");
    let meta = blocking(|| {
        // No block is written after this (a write in progress finishes first): the working
        // copy is about to become the snapshot's image.
        if let Ok(mut open) = b.session.gate.write() {
            *open = false;
        }
        let bs = b.session.block_size;
        for &(to, from) in &b.deferred {
            let f = &b.session.file;
            fsx::copy_between(f, from * bs, f, to * bs, bs).map_err(|e| {
                crate::error::io_err(e, "copy block in", PathBuf::from(b.mirror.as_str()))
            })?;
            if let Ok(mut w) = b.session.working.lock() {
                if let Some(wi) = w.as_mut() {
                    wi.same_as(to, from);
                }
            }
        }
        let t0 = std::time::Instant::now();
        b.session
            .file
            .sync_all()
            .map_err(|e| crate::error::io_err(e, "fsync", PathBuf::from(b.mirror.as_str())))?;
        tracing::debug!(mirror = %b.mirror, ms = t0.elapsed().as_secs_f64() * 1e3, "working copy synced");
        let synced = std::time::Instant::now();
        let working = b.session.working.lock().ok().and_then(|mut w| w.take());
        let committed = match working {
            Some(wi) => {
                store.commit_received(&b.mirror, &b.snapshot, b.root, b.base_name.as_ref(), wi)
            }
            None => store.commit_mirror_snapshot(&b.mirror, &b.snapshot, b.root),
        };
        let meta = committed
            .inspect_err(|e| {
                // A root that does not match: resuming would only repeat it.
                if matches!(e, StoreError::Corrupt { .. }) {
                    let _ = std::fs::remove_file(&b.session.journal_path);
                }
            })?;
        // Committed: the journal is of no use any more.
        b.session.ended.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_file(&b.session.journal_path);
        Ok((meta, synced))
    })
    .map_err(store_err)?;
    let (meta, synced) = meta;
    tracing::info!(mirror = %b.mirror, snapshot = %b.snapshot, root = %meta.root, "mirror snapshot committed");
    blocking(|| store.dedup_commit(&mut b.index, &b.mirror, &b.snapshot));
    // The commit moved the working copy into the snapshot: the next one is made now, while
    // the sender goes on (the next session waits for it under the volume lock).
    let (s, mirror) = (store.clone(), b.mirror.clone());
    tokio::task::spawn_blocking(move || {
        if let Err(e) = s.remake_working_copy(&mirror) {
            tracing::warn!(%mirror, error = %e, "could not make the working copy again; the next session will");
        }
    });
    let spent = &b.session.spent;
    Ok(ReceiverTimings {
        open_ms: b.open_ms,
        copy_ms: Spent::ms(&spent.copy),
        base_reads_ms: Spent::ms(&spent.base_reads),
        verify_ms: Spent::ms(&spent.verify),
        write_ms: Spent::ms(&spent.write),
        sync_ms: (synced - asked).as_millis() as u64,
        snapshot_ms: synced.elapsed().as_millis() as u64,
    })
}

/// Reads one data stream: checks every block against its session's offer and writes it.
/// Blocks of a session that failed or ended (still in flight when it did) are dropped: the
/// session's control stream says why it failed. Data that fails its check is the peer
/// breaking the protocol, and ends the connection.
pub async fn serve_data(
    registry: Registry,
    mut recv: RecvStream,
    max_block: usize,
) -> Result<(), NetError> {
    let mut stale = 0usize;
    let mut deltas = tokio::task::JoinSet::new();
    while let Some(frame) = net::read_frame(&mut recv, BLOCK_HEADER + max_block).await? {
        let (sid, index, kind, payload) =
            parse_block(&frame).ok_or(NetError::Frame(ferry_wire::frame::FrameError::Empty))?;
        let session = registry.lock().ok().and_then(|r| r.get(&sid).cloned());
        let live = session.filter(|s| s.failed.lock().is_ok_and(|f| f.is_none()));
        let Some(session) = live else {
            // No more than could have been in flight when the session ended.
            stale += 1;
            if stale > MAX_IN_TRANSIT {
                return Err(NetError::Protocol(format!(
                    "more than {MAX_IN_TRANSIT} blocks for sessions that are not open"
                )));
            }
            continue;
        };
        // A compressed payload is unpacked into a buffer no larger than its uncompressed
        // kind may be; anything bigger is refused by zstd itself.
        let (kind, unpacked) = match kind {
            Payload::ZstdFull | Payload::ZstdPages => {
                let (plain, cap) = match kind {
                    Payload::ZstdFull => (Payload::Full, session.block_size as usize),
                    _ => (
                        Payload::Pages,
                        session.block_size as usize
                            + (session.block_size as usize / PAGE_SIZE).div_ceil(8),
                    ),
                };
                match unzstd(payload, cap) {
                    Some(d) => (plain, Some(d)),
                    None => {
                        let why = format!("malformed compressed payload for block {index}");
                        fail(&session, ErrorClass::Corrupt, why.clone());
                        return Err(NetError::Protocol(why));
                    }
                }
            }
            k => (k, None),
        };
        let payload = unpacked.as_deref().unwrap_or(payload);
        // What the block must be: asked for, of this length, with this hash.
        let expected = session
            .core
            .lock()
            .map(|c| c.expected(index))
            .map_err(|_| NetError::Protocol("session state poisoned".into()))?;
        let (want, len) = match expected {
            Ok(x) => x,
            Err(e) => {
                fail(&session, ErrorClass::Corrupt, e.to_string());
                return Err(NetError::Protocol(format!("corrupt data from peer: {e}")));
            }
        };
        let malformed = |what: &str| {
            let why = format!("malformed {what} for block {index}");
            fail(&session, ErrorClass::Corrupt, why.clone());
            NetError::Protocol(why)
        };
        let full = len == session.block_size;
        let job = match kind {
            Payload::Full | Payload::ZstdFull => {
                if payload.len() as u64 != len {
                    let e = ReceiveError::BadLength {
                        index,
                        got: payload.len(),
                        want: len,
                    };
                    fail(&session, ErrorClass::Corrupt, e.to_string());
                    return Err(NetError::Protocol(format!("corrupt data from peer: {e}")));
                }
                // Checked here, unlocked: hashing is the expensive part, and the data
                // streams run in parallel.
                let t0 = std::time::Instant::now();
                let (cvs, got) = match full {
                    true => {
                        let (c, h) = leaves_and_hash(payload);
                        (Some(c), h)
                    }
                    false => (None, ferry_wire::BlockHash::of(payload)),
                };
                Spent::add(&session.spent.verify, t0);
                checked(&session, index, got, want, cvs.as_deref())?;
                let (block, start) = owned(frame, unpacked);
                WriteJob {
                    index,
                    block,
                    start,
                    pages: None,
                }
            }
            Payload::Pages | Payload::ZstdPages => {
                if !full {
                    return Err(malformed("page delta of a partial block"));
                }
                // Its base leaves are read from the working copy: random reads, cold on
                // a mirror that rested since the last transfer. On the blocking pool, so
                // a queue of them is in flight and the stream reads on meanwhile.
                let (s, (delta, start)) = (session.clone(), owned(frame, unpacked));
                deltas.spawn_blocking(move || apply_delta(&s, index, &delta[start..], want));
                while deltas.len() >= DELTAS_IN_FLIGHT {
                    if let Some(job) = deltas.join_next().await {
                        queue_write(joined(job)?).await;
                    }
                }
                continue;
            }
        };
        queue_write((session, job)).await;
    }
    while let Some(job) = deltas.join_next().await {
        queue_write(joined(job)?).await;
    }
    Ok(())
}

/// A data frame's payload, owned without a copy: the frame itself (the payload follows its
/// header) or the buffer it was unpacked into. Returns the buffer and where the payload starts.
fn owned(frame: Vec<u8>, unpacked: Option<Vec<u8>>) -> (Vec<u8>, usize) {
    match unpacked {
        Some(d) => (d, 0),
        None => (frame, BLOCK_HEADER),
    }
}

/// Page deltas a data stream has being applied and checked at once.
const DELTAS_IN_FLIGHT: usize = 16;

/// A checked block's hash against what the offer said it must be (a mismatch fails the
/// session and closes the stream as a protocol error); a match goes into the working index.
fn checked(
    session: &RecvSession,
    index: u64,
    got: ferry_wire::BlockHash,
    want: ferry_wire::BlockHash,
    cvs: Option<&[LeafCv]>,
) -> Result<(), NetError> {
    if got != want {
        let e = ReceiveError::HashMismatch { index };
        fail(session, ErrorClass::Corrupt, e.to_string());
        return Err(NetError::Protocol(format!("corrupt data from peer: {e}")));
    }
    session.index(index, &got, cvs);
    Ok(())
}

/// Block `index` rebuilt from a page delta on the base block the working copy holds, and
/// checked: when the base's leaf index says what the unchanged leaves are, only the changed
/// leaves are read and hashed; else the whole block. Blocking (reads the working copy).
fn apply_delta(
    session: &Arc<RecvSession>,
    index: u64,
    payload: &[u8],
    want: ferry_wire::BlockHash,
) -> Result<(Arc<RecvSession>, WriteJob), NetError> {
    let malformed = |what: &str| {
        let why = format!("malformed {what} for block {index}");
        fail(session, ErrorClass::Corrupt, why.clone());
        NetError::Protocol(why)
    };
    let bs = session.block_size as usize;
    let at = index * session.block_size;
    let mut block = vec![0u8; bs];
    let base_cvs = session.base_cvs(index);
    let leaves = match &base_cvs {
        Some(_) => delta_leaves(bs, payload).ok_or_else(|| malformed("page delta"))?,
        None => (0..bs / LEAF_SIZE).collect(),
    };
    let t0 = std::time::Instant::now();
    for &j in &leaves {
        let r = j * LEAF_SIZE..(j + 1) * LEAF_SIZE;
        session
            .file
            .read_exact_at(&mut block[r], at + (j * LEAF_SIZE) as u64)
            .map_err(NetError::Io)?;
    }
    Spent::add(&session.spent.base_reads, t0);
    let changed = apply_pages(&mut block, payload).ok_or_else(|| malformed("page delta"))?;
    let t0 = std::time::Instant::now();
    let (cvs, got) = match &base_cvs {
        Some(base) => rehash_leaves(&block, &leaves, base),
        None => leaves_and_hash(&block),
    };
    Spent::add(&session.spent.verify, t0);
    checked(session, index, got, want, Some(&cvs))?;
    Ok((
        session.clone(),
        WriteJob {
            index,
            block,
            start: 0,
            pages: Some(changed),
        },
    ))
}

/// A page delta's outcome from the blocking pool.
fn joined(
    r: Result<Result<(Arc<RecvSession>, WriteJob), NetError>, tokio::task::JoinError>,
) -> Result<(Arc<RecvSession>, WriteJob), NetError> {
    r.map_err(|e| NetError::Protocol(format!("page delta task failed: {e}")))?
}

/// A checked block to its session's writer; dropped when the session ended or failed
/// meanwhile (its writer is gone).
async fn queue_write((session, job): (Arc<RecvSession>, WriteJob)) {
    let writer = session.writer.lock().ok().and_then(|w| w.clone());
    if let Some(w) = writer {
        let _ = w.send(job).await;
    }
}

/// Decompresses one zstd frame into at most `cap` bytes (one context per thread); `None`
/// for anything that is not one frame of at most that size.
pub fn unzstd(data: &[u8], cap: usize) -> Option<Vec<u8>> {
    thread_local! {
        static CTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    CTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Decompressor::new().ok();
        }
        c.as_mut()?.decompress(data, cap).ok()
    })
}

fn fail(session: &RecvSession, class: ErrorClass, why: String) {
    if class != ErrorClass::Busy {
        tracing::warn!(node = %session.node, error = %why, kind = class.kind(), "receiving failed");
    }
    if let Ok(mut f) = session.failed.lock() {
        f.get_or_insert((class, why));
    }
    session.progress.notify_waiters();
}
