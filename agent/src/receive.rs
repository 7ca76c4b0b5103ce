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

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_wire::hash::Geometry;
use ferry_wire::hashfile::HashFile;
use ferry_wire::repl::{
    apply_pages, parse_block, OfferPlan, Payload, ReceiverCore, Request, Resolution, Response,
    BLOCK_HEADER, PAGE_SIZE, REPL_CONTROL_LIMIT,
};
use ferry_wire::Name;
use quinn::{RecvStream, SendStream};
use tokio::sync::Notify;

use crate::error::StoreError;
use crate::fsx::{self, FileLock};
use crate::net::{self, NetError};
use crate::store::{BlockIndex, MirrorInfo, Store};

/// How long a commit waits for outstanding blocks without any arriving.
const COMMIT_IDLE: Duration = Duration::from_secs(60);

/// One receiving session, shared between its control stream and the data streams.
pub struct RecvSession {
    core: Mutex<ReceiverCore>,
    file: File,
    block_size: u64,
    failed: Mutex<Option<String>>,
    progress: Notify,
}

/// Sessions of one connection, by the id of their control stream.
pub type Registry = Arc<Mutex<HashMap<u64, Arc<RecvSession>>>>;

fn store_err(e: StoreError) -> Response {
    let permanent = !matches!(e, StoreError::Io { .. } | StoreError::Busy(_));
    Response::Error {
        permanent,
        message: e.to_string(),
    }
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Where a block the receiver already holds can be copied from.
#[derive(Debug, Clone)]
enum Source {
    /// A committed snapshot image, at a byte offset.
    Snapshot(PathBuf, u64),
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
    index: BlockIndex,
    sources: HashMap<PathBuf, File>,
    /// Hashes asked for in this session (full blocks only), to the block that will hold them.
    requested: HashMap<ferry_wire::BlockHash, u64>,
    /// Copies that wait for requested blocks: (to, from).
    deferred: Vec<(u64, u64)>,
    _lock: FileLock,
}

/// Serves one session on a control stream until the sender finishes or fails it.
pub async fn serve_session(
    store: Arc<Store>,
    peer: MirrorInfo,
    registry: Registry,
    mut send: SendStream,
    mut recv: RecvStream,
) -> Result<(), NetError> {
    let id = u64::from(send.id());
    let mut begun: Option<Begun> = None;
    let result = async {
        while let Some(frame) = net::read_frame(&mut recv, REPL_CONTROL_LIMIT).await? {
            let req: Request = ferry_wire::codec::decode(&frame, REPL_CONTROL_LIMIT)?;
            let resp = match handle(&store, &peer, &registry, id, &mut begun, req).await {
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
    result
}

async fn handle(
    store: &Arc<Store>,
    peer: &MirrorInfo,
    registry: &Registry,
    id: u64,
    begun: &mut Option<Begun>,
    req: Request,
) -> Result<Option<Response>, Response> {
    let protocol = |m: &str| Response::Error {
        permanent: true,
        message: m.to_string(),
    };
    match req {
        Request::Snapshots { mirror } => {
            let list = blocking(|| match store.volume(mirror.as_str()) {
                Ok(_) => store.list_snapshots(mirror.as_str()),
                Err(StoreError::NotFound { .. }) => Ok(Vec::new()),
                Err(e) => Err(e),
            })
            .map_err(store_err)?;
            let snapshots = list
                .into_iter()
                .filter_map(|m| ferry_wire::BlockHash::from_hex(&m.root).map(|r| (m.name, r)))
                .collect();
            Ok(Some(Response::Snapshots { snapshots }))
        }
        Request::Begin {
            mirror,
            snapshot,
            size,
            block_size,
            root,
            base,
        } => {
            if begun.is_some() {
                return Err(protocol("session already begun"));
            }
            let geometry =
                Geometry::new(block_size as u64, size).map_err(|e| protocol(&e.to_string()))?;
            let b = blocking(|| -> Result<Begun, StoreError> {
                store.ensure_mirror(&mirror, size, block_size, peer)?;
                let lock = store.receive_lock(&mirror)?;
                if store.snapshot(mirror.as_str(), snapshot.as_str()).is_ok() {
                    return Err(StoreError::AlreadyExists {
                        what: "mirror snapshot",
                        name: format!("{mirror}@{snapshot}"),
                    });
                }
                let base_manifest = match &base {
                    Some(b) => Some(store.manifest(mirror.as_str(), b.as_str())?),
                    None => None,
                };
                let img = store.reset_working_copy(&mirror, base.as_ref(), size)?;
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&img)
                    .map_err(|e| crate::error::io_err(e, "open", img.clone()))?;
                let index = store.block_index(block_size)?;
                Ok(Begun {
                    id,
                    mirror: mirror.clone(),
                    snapshot: snapshot.clone(),
                    root,
                    geometry,
                    session: Arc::new(RecvSession {
                        core: Mutex::new(ReceiverCore::new(geometry)),
                        file,
                        block_size: block_size as u64,
                        failed: Mutex::new(None),
                        progress: Notify::new(),
                    }),
                    base: base_manifest,
                    index,
                    sources: HashMap::new(),
                    requested: HashMap::new(),
                    deferred: Vec::new(),
                    _lock: lock,
                })
            })
            .map_err(store_err)?;
            if let Ok(mut r) = registry.lock() {
                r.insert(b.id, b.session.clone());
            }
            tracing::info!(mirror = %b.mirror, snapshot = %b.snapshot, base = ?base, "receiving");
            *begun = Some(b);
            Ok(Some(Response::Begun))
        }
        Request::Zeros { ranges } => {
            let b = begun
                .as_mut()
                .ok_or_else(|| protocol("zeros before begin"))?;
            let count = b.geometry.block_count();
            blocking(|| {
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
                }
                Ok(None)
            })
        }
        Request::Offer { blocks } => {
            let b = begun
                .as_mut()
                .ok_or_else(|| protocol("offer before begin"))?;
            let plan: OfferPlan<Source> = {
                let mut core = b.session.core.lock().map_err(|_| protocol("poisoned"))?;
                let (base, index, requested, geometry) =
                    (&b.base, &b.index, &mut b.requested, b.geometry);
                core.on_offer(&blocks, |i, h| {
                    if base
                        .as_ref()
                        .is_some_and(|m| i < m.len() && m.hash(i) == *h)
                    {
                        Resolution::Present
                    } else if let Some(loc) = index.get(h) {
                        Resolution::Copy(Source::Snapshot(loc.0.clone(), loc.1))
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
            blocking(|| {
                for (i, from) in plan.copies {
                    let (src, off) = match from {
                        Source::Requested(j) => {
                            b.deferred.push((i, j));
                            continue;
                        }
                        Source::Snapshot(path, off) => match b.sources.contains_key(&path) {
                            true => (&b.sources[&path], off),
                            false => {
                                let f = File::open(&path).map_err(|e| {
                                    store_err(crate::error::io_err(e, "open", path.clone()))
                                })?;
                                (&*b.sources.entry(path).or_insert(f), off)
                            }
                        },
                    };
                    let (at, len) = b.geometry.block_range(i);
                    fsx::copy_between(src, off, &b.session.file, at, len).map_err(|e| {
                        store_err(crate::error::io_err(
                            e,
                            "copy block into",
                            PathBuf::from(b.mirror.as_str()),
                        ))
                    })?;
                }
                Ok(())
            })?;
            Ok(Some(Response::Need { blocks: plan.need }))
        }
        Request::Commit => {
            let b = begun
                .take()
                .ok_or_else(|| protocol("commit before begin"))?;
            loop {
                let notified = b.session.progress.notified();
                if let Some(f) = b.session.failed.lock().ok().and_then(|f| f.clone()) {
                    return Err(protocol(&f));
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
                        permanent: false,
                        message: format!("{pending} block(s) never arrived"),
                    });
                }
            }
            tracing::debug!(mirror = %b.mirror, deferred = b.deferred.len(), "all blocks received");
            let meta = blocking(|| {
                let bs = b.session.block_size;
                for &(to, from) in &b.deferred {
                    let f = &b.session.file;
                    fsx::copy_between(f, from * bs, f, to * bs, bs).map_err(|e| {
                        crate::error::io_err(e, "copy block in", PathBuf::from(b.mirror.as_str()))
                    })?;
                }
                b.session.file.sync_all().map_err(|e| {
                    crate::error::io_err(e, "fsync", PathBuf::from(b.mirror.as_str()))
                })?;
                store.commit_mirror_snapshot(&b.mirror, &b.snapshot, b.root)
            })
            .map_err(store_err)?;
            tracing::info!(mirror = %b.mirror, snapshot = %b.snapshot, root = %meta.root, "mirror snapshot committed");
            Ok(Some(Response::Committed { root: b.root }))
        }
    }
}

/// Reads one data stream: checks every block against its session's offer and writes it.
pub async fn serve_data(
    registry: Registry,
    mut recv: RecvStream,
    max_block: usize,
) -> Result<(), NetError> {
    while let Some(frame) = net::read_frame(&mut recv, BLOCK_HEADER + max_block).await? {
        let (sid, index, kind, payload) =
            parse_block(&frame).ok_or(NetError::Frame(ferry_wire::frame::FrameError::Empty))?;
        let session = registry
            .lock()
            .ok()
            .and_then(|r| r.get(&sid).cloned())
            .ok_or_else(|| NetError::Identity(format!("data for unknown session {sid}")))?;
        let at = index * session.block_size;
        // A page delta applies to the base block the working copy holds at `index`.
        let (block, pages) = match kind {
            Payload::Full => (std::borrow::Cow::Borrowed(payload), None),
            Payload::Pages => {
                let mut block = vec![0u8; session.block_size as usize];
                session
                    .file
                    .read_exact_at(&mut block, at)
                    .map_err(NetError::Io)?;
                match apply_pages(&mut block, payload) {
                    Some(changed) => (std::borrow::Cow::Owned(block), Some(changed)),
                    None => {
                        let why = format!("malformed page delta for block {index}");
                        fail(&session, why.clone());
                        return Err(NetError::Identity(why));
                    }
                }
            }
        };
        let checked = session.core.lock().map(|mut c| c.on_block(index, &block));
        match checked {
            Ok(Ok(_)) => {
                // Write only what changed, so a reflinked working copy keeps sharing the rest.
                // One block into the page cache takes microseconds: written in place, since
                // handing the worker off (block_in_place) per block cost more than the write
                // (context switches dominated the receiver's profile).
                let written = match &pages {
                    None => session.file.write_all_at(&block, at),
                    Some(changed) => changed.iter().try_for_each(|&p| {
                        let r = p * PAGE_SIZE..(p + 1) * PAGE_SIZE;
                        session
                            .file
                            .write_all_at(&block[r], at + (p * PAGE_SIZE) as u64)
                    }),
                };
                if let Err(e) = written {
                    fail(&session, format!("write block {index}: {e}"));
                    return Err(NetError::Io(e));
                }
                session.progress.notify_waiters();
            }
            Ok(Err(e)) => {
                fail(&session, e.to_string());
                return Err(NetError::Identity(format!("corrupt data from peer: {e}")));
            }
            Err(_) => return Err(NetError::Identity("session state poisoned".into())),
        }
    }
    Ok(())
}

fn fail(session: &RecvSession, why: String) {
    if let Ok(mut f) = session.failed.lock() {
        f.get_or_insert(why);
    }
    session.progress.notify_waiters();
}
