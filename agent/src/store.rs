//! The volume store: a node's volumes, their snapshots and manifests.
//!
//! ```text
//! DATA/
//!   agent.lock                      store lock: volume create/adopt/clone/delete, recovery
//!   journal/group-<snap>.json       intent of a multi-volume snapshot in progress
//!   volumes/<vol>/
//!     volume.json                   what the volume is (owned or adopted, block size, ...)
//!     data.img                      the image, for owned volumes
//!     lock                          volume lock: every change to the volume or its snapshots
//!     rollback.json                 intent of a rollback in progress
//!     snapshots/<snap>/             a committed snapshot: data.img, manifest, leaves, snapshot.json
//!     snapshots/.tmp-<snap>/        being built        (removed by recovery)
//!     snapshots/.del-<snap>/        being deleted      (removed by recovery)
//!   volumes/.tmp-<vol>-<nonce>/     volume being created (removed by recovery)
//!   volumes/.del-<vol>-<nonce>/     volume being deleted (removed by recovery)
//! ```
//! Names are validated (`ferry_wire::name`), so a name can never start with `.` and collide
//! with these entries, nor escape its directory.
//!
//! **Crash safety.** Every change is made invisible-first and committed by one rename of a
//! directory (then the parent directory is fsynced): a snapshot directory is built as
//! `.tmp-<snap>` and renamed into place only after its image, manifest and leaf index are
//! fsynced; deletion renames to `.del-*` first. Rollback overwrites the volume in place (keeping
//! its inode, so an iSCSI target or a VM holding it open sees the new data) under an intent
//! record that recovery replays. A multi-volume snapshot writes a journal first; if the process
//! dies before all members commit, recovery removes the members that did, so a group is all or
//! nothing. Recovery runs at the start of every operation, under the same locks.
//!
//! **Locks.** flock on `agent.lock` then on volume locks in name order, never the reverse, so
//! the CLI is safe to run while the agent daemon runs.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_wire::hash::{check_block_size, BlockHash, ZeroTable};
use ferry_wire::hashfile::{HashFile, Kind};
use ferry_wire::Name;
use serde::{Deserialize, Serialize};

use crate::config::{AgentConfig, BackendChoice, Cache};
use crate::diff;
use crate::error::{check_name, io_err, IoContext, Result, StoreError};
use crate::fsx::{self, FileLock};
use crate::hooks::{self, Hooks};
use crate::manifest::{self, Base, BuildReport, VerifyReport};

/// How a snapshot image was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// FICLONE: shares extents with the volume.
    Clone,
    /// Sparse copy.
    Copy,
}

/// A volume-store backend: how images are snapshotted, restored and compared.
pub trait Backend: Send + Sync {
    /// `reflink` or `copy`.
    fn name(&self) -> &'static str;
    /// Creates the new file `dst` holding what `src` holds now, fsynced.
    fn snapshot(&self, src: &Path, dst: &Path) -> Result<Method>;
    /// Makes the existing file `dst` equal to `src`, in place (same inode), fsynced.
    fn restore(&self, src: &Path, dst: &Path) -> Result<()>;
    /// Byte ranges where snapshot `new` may differ from snapshot `base`, or `None` when only
    /// hashing can tell.
    fn changed(&self, base: &SnapshotFiles, new: &SnapshotFiles)
        -> Result<Option<Vec<(u64, u64)>>>;
}

/// The files of one snapshot, as the backend sees them.
#[derive(Debug, Clone)]
pub struct SnapshotFiles {
    pub image: PathBuf,
    pub size: u64,
    pub method: Method,
}

/// FICLONE snapshots, FIEMAP diffs (XFS with reflink=1, btrfs).
#[derive(Debug)]
pub struct ReflinkBackend;
/// Sparse-copy snapshots, hash diffs (any filesystem).
#[derive(Debug)]
pub struct CopyBackend;

fn create_new(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .ctx("create", path)
}

fn copy_snapshot(src: &Path, dst: &Path) -> Result<Method> {
    let s = File::open(src).ctx("open", src)?;
    let d = create_new(dst)?;
    fsx::sparse_copy(&s, &d).ctx("copy to", dst)?;
    d.sync_all().ctx("fsync", dst)?;
    Ok(Method::Copy)
}

fn overwrite(src: &Path, dst: &Path) -> Result<()> {
    let s = File::open(src).ctx("open", src)?;
    let d = OpenOptions::new().write(true).open(dst).ctx("open", dst)?;
    fsx::overwrite_sparse(&s, &d).ctx("overwrite", dst)?;
    d.sync_all().ctx("fsync", dst)
}

impl Backend for ReflinkBackend {
    fn name(&self) -> &'static str {
        "reflink"
    }
    fn snapshot(&self, src: &Path, dst: &Path) -> Result<Method> {
        let s = File::open(src).ctx("open", src)?;
        let d = create_new(dst)?;
        match fsx::ficlone(&s, &d) {
            Ok(()) => {
                d.sync_all().ctx("fsync", dst)?;
                Ok(Method::Clone)
            }
            Err(e) if fsx::is_clone_unsupported(&e) => {
                // An adopted file on another filesystem: cannot share extents with the store.
                tracing::warn!(src = %src.display(), error = %e, "cannot clone; copying instead");
                drop(d);
                fs::remove_file(dst).ctx("remove", dst)?;
                copy_snapshot(src, dst)
            }
            Err(e) => Err(io_err(e, "clone to", dst.to_owned())),
        }
    }
    fn restore(&self, src: &Path, dst: &Path) -> Result<()> {
        let s = File::open(src).ctx("open", src)?;
        let d = OpenOptions::new().write(true).open(dst).ctx("open", dst)?;
        let size = s.metadata().ctx("stat", src)?.len();
        match fsx::ficlone(&s, &d) {
            Ok(()) => {
                d.set_len(size).ctx("resize", dst)?;
                d.sync_all().ctx("fsync", dst)
            }
            Err(e) if fsx::is_clone_unsupported(&e) => overwrite(src, dst),
            Err(e) => Err(io_err(e, "clone onto", dst.to_owned())),
        }
    }
    fn changed(
        &self,
        base: &SnapshotFiles,
        new: &SnapshotFiles,
    ) -> Result<Option<Vec<(u64, u64)>>> {
        if base.method != Method::Clone || new.method != Method::Clone {
            return Ok(None);
        }
        let a = File::open(&base.image).ctx("open", &base.image)?;
        let b = File::open(&new.image).ctx("open", &new.image)?;
        diff::fiemap_diff(&a, &b, base.size, new.size)
            .ctx("map extents of", &new.image)
            .map(Some)
    }
}

impl Backend for CopyBackend {
    fn name(&self) -> &'static str {
        "copy"
    }
    fn snapshot(&self, src: &Path, dst: &Path) -> Result<Method> {
        copy_snapshot(src, dst)
    }
    fn restore(&self, src: &Path, dst: &Path) -> Result<()> {
        overwrite(src, dst)
    }
    fn changed(&self, _: &SnapshotFiles, _: &SnapshotFiles) -> Result<Option<Vec<(u64, u64)>>> {
        Ok(None)
    }
}

/// Owned (the store made the image) or adopted (an existing file, by path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    Owned,
    Adopted,
}

/// Where a cloned volume came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub volume: Name,
    pub snapshot: Name,
}

/// `volume.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeMeta {
    pub name: Name,
    pub kind: VolumeKind,
    /// The image path of an adopted volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    pub block_size: u32,
    pub created_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// Set on mirror volumes: where the replicated data comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorInfo>,
}

/// The source of a mirror volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorInfo {
    pub site: Name,
    pub node: Name,
}

fn refuse_mirror(meta: &VolumeMeta, op: &str) -> Result<()> {
    match &meta.mirror {
        Some(m) => Err(StoreError::Busy(format!(
            "volume {} is a mirror of {}@{}: mirrors change only by replication ({op} refused); clone a mirror snapshot to get a writable volume",
            meta.name, m.node, m.site
        ))),
        None => Ok(()),
    }
}

/// A volume as reported to users.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeInfo {
    pub name: Name,
    pub kind: VolumeKind,
    pub path: PathBuf,
    pub size: u64,
    pub block_size: u32,
    pub snapshots: usize,
    pub created_unix_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorInfo>,
}

/// Membership of a multi-volume snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupInfo {
    pub id: String,
    pub volumes: Vec<Name>,
}

/// How a snapshot's manifest was computed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestInfo {
    pub mode: manifest::BuildMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Name>,
    pub bytes_read: u64,
    pub elapsed_ms: f64,
    pub engine: crate::engine::EngineKind,
}

/// `snapshot.json`, and a snapshot as reported to users.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub name: Name,
    pub volume: Name,
    pub created_unix_ns: u64,
    pub size: u64,
    pub block_size: u32,
    /// Manifest root, hex.
    pub root: String,
    pub method: Method,
    pub manifest: ManifestInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupInfo>,
}

/// The journal record of a multi-volume snapshot in progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GroupJournal {
    snapshot: Name,
    group: GroupInfo,
}

/// The result of `diff`.
#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    pub volume: Name,
    pub base: Name,
    pub snapshot: Name,
    /// `fiemap` (exact changed extents) or `manifest` (changed blocks by hash).
    pub method: &'static str,
    /// Granularity of the ranges in bytes (filesystem block or manifest block).
    pub granularity: u64,
    pub changed_bytes: u64,
    pub ranges: Vec<(u64, u64)>,
}

/// What a rollback did.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub volume: Name,
    pub snapshot: Name,
    pub path: PathBuf,
    pub size: u64,
}

/// What deleting a volume did.
#[derive(Debug, Clone, Serialize)]
pub struct DeleteReport {
    pub volume: Name,
    pub kind: VolumeKind,
    pub snapshots_deleted: usize,
    /// Adopted images are never deleted, only forgotten.
    pub image_deleted: bool,
    pub path: PathBuf,
}

const VOLUME_META: &str = "volume.json";
const SNAPSHOT_META: &str = "snapshot.json";
const ROLLBACK_INTENT: &str = "rollback.json";
const IMAGE: &str = "data.img";
const MANIFEST: &str = "manifest";
const LEAVES: &str = "leaves";

/// An open volume store.
pub struct Store {
    root: PathBuf,
    cfg: AgentConfig,
    backend: Box<dyn Backend>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.root)
            .field("backend", &self.backend.name())
            .finish()
    }
}

/// A held volume lock with the volume's metadata.
struct VolumeGuard {
    _lock: FileLock,
    meta: VolumeMeta,
    dir: PathBuf,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn nonce() -> String {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        b = (now_ns() ^ ((std::process::id() as u64) << 32)).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, what: &'static str) -> Result<T> {
    let bytes = fs::read(path).ctx("read", path)?;
    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
        what,
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Invalid(e.to_string()))?;
    fsx::atomic_write(path, &bytes).ctx("write", path)
}

fn remove_tree(path: &Path) -> Result<()> {
    let res = match fs::symlink_metadata(path) {
        Ok(m) if !m.is_dir() => fs::remove_file(path),
        _ => fs::remove_dir_all(path),
    };
    match res {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(e, "remove", path.to_owned())),
    }
}

/// Makes a committed directory invisible with one rename, then removes it.
fn delete_dir(parent: &Path, name: &str) -> Result<()> {
    let from = parent.join(name);
    let to = parent.join(format!(".del-{name}-{}", nonce()));
    fsx::rename_durable(&from, &to).ctx("rename", &from)?;
    remove_tree(&to)
}

fn is_scratch(name: &str) -> bool {
    name.starts_with(".tmp-") || name.starts_with(".del-") || name.starts_with(".probe-")
}

impl Store {
    /// Opens (creating if needed) the store in `cfg.data_dir`, picks the backend, and recovers
    /// from any interrupted operation.
    pub fn open(cfg: AgentConfig) -> Result<Store> {
        cfg.validate()?;
        let root = cfg.data_dir.clone();
        for d in [root.clone(), root.join("volumes"), root.join("journal")] {
            fs::create_dir_all(&d).ctx("create directory", &d)?;
        }
        // Probe and recover under the store lock: no other process is probing or recovering.
        let lock_path = root.join("agent.lock");
        let lock = FileLock::exclusive(&lock_path).ctx("lock", &lock_path)?;
        let backend: Box<dyn Backend> = match cfg.backend {
            BackendChoice::Copy => Box::new(CopyBackend),
            choice => {
                let can = fsx::probe_reflink(&root).ctx("probe cloning in", &root)?;
                match (choice, can) {
                    (_, true) => Box::new(ReflinkBackend),
                    (BackendChoice::Reflink, false) => {
                        return Err(StoreError::ReflinkUnsupported {
                            path: root.clone(),
                            fs: fsx::fs_type(&root),
                        })
                    }
                    _ => Box::new(CopyBackend),
                }
            }
        };
        let store = Store { root, cfg, backend };
        store.recover(&lock)?;
        Ok(store)
    }

    /// The backend in use.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn volumes_dir(&self) -> PathBuf {
        self.root.join("volumes")
    }
    fn journal_dir(&self) -> PathBuf {
        self.root.join("journal")
    }
    fn store_lock(&self) -> Result<FileLock> {
        let p = self.root.join("agent.lock");
        FileLock::exclusive(&p).ctx("lock", &p)
    }

    fn image_path(&self, dir: &Path, meta: &VolumeMeta) -> PathBuf {
        match (&meta.kind, &meta.path) {
            (VolumeKind::Adopted, Some(p)) => p.clone(),
            _ => dir.join(IMAGE),
        }
    }

    /// Removes leftovers of interrupted volume operations and rolls back interrupted groups.
    /// Runs with the store lock held (`_held`).
    fn recover(&self, _held: &FileLock) -> Result<()> {
        for entry in fs::read_dir(&self.root).ctx("list", &self.root)? {
            let entry = entry.ctx("list", &self.root)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_scratch(&name) {
                remove_tree(&entry.path())?;
            }
        }
        let vd = self.volumes_dir();
        for entry in fs::read_dir(&vd).ctx("list", &vd)? {
            let entry = entry.ctx("list", &vd)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_scratch(&name) {
                tracing::info!(entry = %name, "removing leftover of an interrupted operation");
                remove_tree(&entry.path())?;
            }
        }
        let jd = self.journal_dir();
        for entry in fs::read_dir(&jd).ctx("list", &jd)? {
            let path = entry.ctx("list", &jd)?.path();
            let fname = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if is_scratch(&fname) {
                let _ = fs::remove_file(&path);
                continue;
            }
            let j: GroupJournal = match read_json(&path, "group journal") {
                Ok(j) => j,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "removing unreadable group journal");
                    fs::remove_file(&path).ctx("remove", &path)?;
                    continue;
                }
            };
            self.recover_group(&path, &j)?;
        }
        // Finish interrupted work on every volume nobody is working on right now, so that any
        // command, a read included, sees a consistent store.
        for entry in fs::read_dir(&vd).ctx("list", &vd)? {
            let dir = entry.ctx("list", &vd)?.path();
            let meta_path = dir.join(VOLUME_META);
            if !meta_path.exists() {
                continue;
            }
            if let Some(lock) = FileLock::try_exclusive(&dir.join("lock")).ctx("lock", &dir)? {
                let meta: VolumeMeta = read_json(&meta_path, "volume metadata")?;
                self.recover_volume(&VolumeGuard {
                    _lock: lock,
                    meta,
                    dir,
                })?;
            }
        }
        Ok(())
    }

    /// Rolls back an interrupted multi-volume snapshot, unless its owner is still running.
    fn recover_group(&self, path: &Path, j: &GroupJournal) -> Result<()> {
        let mut locks = Vec::new();
        for v in &j.group.volumes {
            let dir = self.volumes_dir().join(v.as_str());
            if !dir.join(VOLUME_META).exists() {
                continue;
            }
            match FileLock::try_exclusive(&dir.join("lock")).ctx("lock", &dir)? {
                Some(l) => locks.push((l, dir)),
                None => return Ok(()), // in progress in another process
            }
        }
        tracing::warn!(snapshot = %j.snapshot, "rolling back an interrupted group snapshot");
        for (_, dir) in &locks {
            let sd = dir.join("snapshots");
            let meta_path = sd.join(j.snapshot.as_str()).join(SNAPSHOT_META);
            if let Ok(m) = read_json::<SnapshotMeta>(&meta_path, "snapshot metadata") {
                if m.group.as_ref().map(|g| &g.id) == Some(&j.group.id) {
                    delete_dir(&sd, j.snapshot.as_str())?;
                }
            }
        }
        fs::remove_file(path).ctx("remove", path)?;
        fsx::fsync_dir(&self.journal_dir()).ctx("fsync", self.journal_dir())
    }

    /// Takes a volume's lock, checks it exists, and finishes any interrupted operation on it.
    fn lock_volume(&self, name: &Name) -> Result<VolumeGuard> {
        let dir = self.volumes_dir().join(name.as_str());
        let not_found = || StoreError::NotFound {
            what: "volume",
            name: name.to_string(),
        };
        if !dir.join(VOLUME_META).exists() {
            return Err(not_found());
        }
        let lock = match FileLock::exclusive(&dir.join("lock")) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(io_err(e, "lock", dir)),
        };
        let meta_path = dir.join(VOLUME_META);
        if !meta_path.exists() {
            return Err(not_found()); // deleted while we waited
        }
        let meta: VolumeMeta = read_json(&meta_path, "volume metadata")?;
        let g = VolumeGuard {
            _lock: lock,
            meta,
            dir,
        };
        self.recover_volume(&g)?;
        Ok(g)
    }

    fn recover_volume(&self, g: &VolumeGuard) -> Result<()> {
        for d in [g.dir.clone(), g.dir.join("snapshots")] {
            if !d.exists() {
                continue;
            }
            for entry in fs::read_dir(&d).ctx("list", &d)? {
                let entry = entry.ctx("list", &d)?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if is_scratch(&name) {
                    tracing::info!(volume = %g.meta.name, entry = %name, "removing leftover of an interrupted operation");
                    remove_tree(&entry.path())?;
                }
            }
        }
        let intent = g.dir.join(ROLLBACK_INTENT);
        if intent.exists() {
            #[derive(Deserialize)]
            struct Intent {
                snapshot: Name,
            }
            let i: Intent = read_json(&intent, "rollback intent")?;
            tracing::warn!(volume = %g.meta.name, snapshot = %i.snapshot, "finishing an interrupted rollback");
            self.do_rollback(g, &i.snapshot)?;
        }
        Ok(())
    }

    fn info(&self, dir: &Path, meta: VolumeMeta) -> Result<VolumeInfo> {
        let path = self.image_path(dir, &meta);
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let snapshots = self.snapshot_names(dir)?.len();
        Ok(VolumeInfo {
            name: meta.name,
            kind: meta.kind,
            path,
            size,
            block_size: meta.block_size,
            snapshots,
            created_unix_ms: meta.created_unix_ms,
            origin: meta.origin,
            mirror: meta.mirror,
        })
    }

    fn snapshot_names(&self, dir: &Path) -> Result<Vec<String>> {
        let sd = dir.join("snapshots");
        let mut out = Vec::new();
        let rd = match fs::read_dir(&sd) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_err(e, "list", sd)),
        };
        for entry in rd {
            let entry = entry.ctx("list", &sd)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_scratch(&name) && entry.path().join(SNAPSHOT_META).exists() {
                out.push(name);
            }
        }
        Ok(out)
    }

    fn block_size(&self, requested: Option<u64>) -> Result<u32> {
        let bs = requested.unwrap_or(self.cfg.block_size);
        check_block_size(bs).map_err(|e| StoreError::Invalid(e.to_string()))?;
        Ok(bs as u32)
    }

    /// Commits a volume directory built in a temporary place.
    fn commit_volume(&self, name: &Name, meta: &VolumeMeta, tmp: &Path) -> Result<VolumeInfo> {
        write_json(&tmp.join(VOLUME_META), meta)?;
        fs::create_dir_all(tmp.join("snapshots")).ctx("create", tmp)?;
        fsx::fsync_dir(tmp).ctx("fsync", tmp)?;
        let dst = self.volumes_dir().join(name.as_str());
        fsx::rename_durable(tmp, &dst).ctx("rename", tmp)?;
        self.info(&dst, meta.clone())
    }

    fn check_new_volume(&self, name: &Name) -> Result<()> {
        if self.volumes_dir().join(name.as_str()).exists() {
            return Err(StoreError::AlreadyExists {
                what: "volume",
                name: name.to_string(),
            });
        }
        Ok(())
    }

    fn tmp_volume_dir(&self, name: &Name) -> Result<PathBuf> {
        let tmp = self.volumes_dir().join(format!(".tmp-{name}-{}", nonce()));
        fs::create_dir(&tmp).ctx("create", &tmp)?;
        Ok(tmp)
    }

    /// Builds an owned, sparse volume (optionally a mirror) and commits it; the caller holds
    /// the store lock and has checked the name is free.
    fn new_sparse_volume(
        &self,
        name: &Name,
        size: u64,
        block_size: u32,
        mirror: Option<MirrorInfo>,
    ) -> Result<VolumeInfo> {
        let tmp = self.tmp_volume_dir(name)?;
        let res = (|| {
            let img = tmp.join(IMAGE);
            let f = create_new(&img)?;
            f.set_len(size).ctx("size", &img)?;
            f.sync_all().ctx("fsync", &img)?;
            let meta = VolumeMeta {
                name: name.clone(),
                kind: VolumeKind::Owned,
                path: None,
                block_size,
                created_unix_ms: now_ns() / 1_000_000,
                origin: None,
                mirror,
            };
            self.commit_volume(name, &meta, &tmp)
        })();
        if res.is_err() {
            let _ = remove_tree(&tmp);
        }
        res
    }

    /// Creates an owned, sparse volume of `size` bytes.
    pub fn create_volume(
        &self,
        name: &str,
        size: u64,
        block_size: Option<u64>,
    ) -> Result<VolumeInfo> {
        let name = check_name("volume", name)?;
        if size == 0 {
            return Err(StoreError::Invalid(
                "volume size must be at least 1 byte".into(),
            ));
        }
        if size > i64::MAX as u64 {
            return Err(StoreError::Invalid(format!(
                "volume size {size} exceeds the largest file size ({})",
                ferry_wire::units::format_size(i64::MAX as u64)
            )));
        }
        let block_size = self.block_size(block_size)?;
        let _lock = self.store_lock()?;
        self.check_new_volume(&name)?;
        self.new_sparse_volume(&name, size, block_size, None)
            .map_err(|e| match e {
                StoreError::Io { source, path, .. }
                    if source.raw_os_error() == Some(libc::EFBIG) =>
                {
                    StoreError::Invalid(format!(
                        "volume size {} is larger than the filesystem of {} allows",
                        ferry_wire::units::format_size(size),
                        path.parent()
                            .and_then(Path::parent)
                            .unwrap_or(&path)
                            .display()
                    ))
                }
                other => other,
            })
    }

    /// Adopts an existing image file (a LUN's backing file, a file in an NFS export, a VM disk).
    /// The file stays where it is; deleting the volume later only forgets it.
    pub fn adopt_volume(
        &self,
        name: &str,
        path: &Path,
        block_size: Option<u64>,
    ) -> Result<VolumeInfo> {
        let name = check_name("volume", name)?;
        let block_size = self.block_size(block_size)?;
        if !path.is_absolute() {
            return Err(StoreError::Invalid(format!(
                "{} is not an absolute path",
                path.display()
            )));
        }
        let real = fs::canonicalize(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::NotFound {
                what: "file",
                name: path.display().to_string(),
            },
            _ => io_err(e, "resolve", path.to_owned()),
        })?;
        let md = fs::metadata(&real).ctx("stat", &real)?;
        if !md.is_file() {
            return Err(StoreError::Invalid(format!(
                "{} is not a regular file",
                real.display()
            )));
        }
        if md.len() == 0 {
            return Err(StoreError::Invalid(format!("{} is empty", real.display())));
        }
        let root = fs::canonicalize(&self.root).ctx("resolve", &self.root)?;
        if real.starts_with(&root) {
            return Err(StoreError::Invalid(format!(
                "{} is inside the agent's data directory",
                real.display()
            )));
        }
        let _lock = self.store_lock()?;
        self.check_new_volume(&name)?;
        for v in self.list_volumes_unlocked()? {
            if v.kind == VolumeKind::Adopted && v.path == real {
                return Err(StoreError::AlreadyExists {
                    what: "adopted file",
                    name: format!("{} (volume {})", real.display(), v.name),
                });
            }
        }
        let tmp = self.tmp_volume_dir(&name)?;
        let meta = VolumeMeta {
            name: name.clone(),
            kind: VolumeKind::Adopted,
            path: Some(real),
            block_size,
            created_unix_ms: now_ns() / 1_000_000,
            origin: None,
            mirror: None,
        };
        let res = self.commit_volume(&name, &meta, &tmp);
        if res.is_err() {
            let _ = remove_tree(&tmp);
        }
        res
    }

    fn list_volumes_unlocked(&self) -> Result<Vec<VolumeInfo>> {
        let vd = self.volumes_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&vd).ctx("list", &vd)? {
            let entry = entry.ctx("list", &vd)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_scratch(&name) {
                continue;
            }
            let meta_path = entry.path().join(VOLUME_META);
            match read_json::<VolumeMeta>(&meta_path, "volume metadata") {
                Ok(meta) => out.push(self.info(&entry.path(), meta)?),
                Err(StoreError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// All volumes, by name.
    pub fn list_volumes(&self) -> Result<Vec<VolumeInfo>> {
        self.list_volumes_unlocked()
    }

    /// A hook's timeout: `asked`, or the configured default when zero.
    pub fn hook_timeout(&self, asked: Duration) -> Duration {
        if asked.is_zero() {
            Duration::from_secs(self.cfg.hook_timeout_secs)
        } else {
            asked
        }
    }

    /// One volume.
    pub fn volume(&self, name: &str) -> Result<VolumeInfo> {
        let name = check_name("volume", name)?;
        let dir = self.volumes_dir().join(name.as_str());
        let meta: VolumeMeta = match read_json(&dir.join(VOLUME_META), "volume metadata") {
            Ok(m) => m,
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound {
                    what: "volume",
                    name: name.to_string(),
                })
            }
            Err(e) => return Err(e),
        };
        self.info(&dir, meta)
    }

    /// Deletes a volume. With snapshots it refuses unless `force`. An adopted image is kept.
    pub fn delete_volume(&self, name: &str, force: bool) -> Result<DeleteReport> {
        let name = check_name("volume", name)?;
        let _store = self.store_lock()?;
        let g = self.lock_volume(&name)?;
        let snaps = self.snapshot_names(&g.dir)?;
        if !snaps.is_empty() && !force {
            return Err(StoreError::Busy(format!(
                "volume {name:?} has {} snapshot(s); delete them first or pass --force",
                snaps.len()
            )));
        }
        let path = self.image_path(&g.dir, &g.meta);
        delete_dir(&self.volumes_dir(), name.as_str())?;
        Ok(DeleteReport {
            volume: name,
            kind: g.meta.kind,
            snapshots_deleted: snaps.len(),
            image_deleted: g.meta.kind == VolumeKind::Owned,
            path,
        })
    }

    fn snapshot_dir(dir: &Path, snap: &Name) -> PathBuf {
        dir.join("snapshots").join(snap.as_str())
    }

    fn read_snapshot(dir: &Path, volume: &Name, snap: &Name) -> Result<SnapshotMeta> {
        let p = Self::snapshot_dir(dir, snap).join(SNAPSHOT_META);
        match read_json(&p, "snapshot metadata") {
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Err(StoreError::NotFound {
                    what: "snapshot",
                    name: format!("{volume}@{snap}"),
                })
            }
            other => other,
        }
    }

    /// Takes a snapshot of one volume.
    pub fn create_snapshot(&self, volume: &str, snap: &str, hooks: &Hooks) -> Result<SnapshotMeta> {
        let mut v = self.create_group(snap, &[volume.to_owned()], hooks)?;
        v.pop()
            .ok_or_else(|| StoreError::Invalid("empty group".into()))
    }

    /// Takes a snapshot named `snap` of several volumes in one step: all volumes are locked,
    /// the pre hook runs, every image is snapshotted, the post hook runs, and only then are the
    /// manifests computed (so the hooks' freeze window covers only the snapshot step). All
    /// snapshots commit, or none.
    pub fn create_group(
        &self,
        snap: &str,
        volumes: &[String],
        hooks: &Hooks,
    ) -> Result<Vec<SnapshotMeta>> {
        self.create_group_with(snap, volumes, hooks, None)
    }

    /// [`Store::create_group`], for the replication receiver when `expect_root` is given: the
    /// snapshot commits only if its manifest root equals the sender's, and mirror volumes are
    /// accepted. Users go through `create_group`, which refuses mirrors (read-only).
    fn create_group_with(
        &self,
        snap: &str,
        volumes: &[String],
        hooks: &Hooks,
        expect_root: Option<BlockHash>,
    ) -> Result<Vec<SnapshotMeta>> {
        let snap = check_name("snapshot", snap)?;
        let mut names = volumes
            .iter()
            .map(|v| check_name("volume", v))
            .collect::<Result<Vec<_>>>()?;
        if names.is_empty() {
            return Err(StoreError::Invalid(
                "a snapshot needs at least one volume".into(),
            ));
        }
        names.sort();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(StoreError::Invalid(format!(
                "volume {} is named twice",
                w[0]
            )));
        }
        let guards = names
            .iter()
            .map(|n| self.lock_volume(n))
            .collect::<Result<Vec<_>>>()?;
        for g in &guards {
            if expect_root.is_none() {
                refuse_mirror(&g.meta, "snapshot")?;
            }
            if Self::snapshot_dir(&g.dir, &snap).exists() {
                return Err(StoreError::AlreadyExists {
                    what: "snapshot",
                    name: format!("{}@{snap}", g.meta.name),
                });
            }
        }
        let group = (names.len() > 1).then(|| GroupInfo {
            id: nonce(),
            volumes: names.clone(),
        });
        let journal = self.journal_dir().join(format!("group-{snap}.json"));
        if let Some(group) = &group {
            write_json(
                &journal,
                &GroupJournal {
                    snapshot: snap.clone(),
                    group: group.clone(),
                },
            )?;
        }
        let tmp_name = format!(".tmp-{snap}");
        let mut committed: Vec<PathBuf> = Vec::new();
        let res = self.group_steps(
            &snap,
            &guards,
            group.as_ref(),
            hooks,
            &tmp_name,
            &mut committed,
            expect_root,
        );
        if res.is_err() {
            for g in &guards {
                let _ = remove_tree(&g.dir.join("snapshots").join(&tmp_name));
            }
            for dir in &committed {
                if let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) {
                    let _ = delete_dir(parent, &name.to_string_lossy());
                }
            }
        }
        if group.is_some() {
            fs::remove_file(&journal).ctx("remove", &journal)?;
            fsx::fsync_dir(&self.journal_dir()).ctx("fsync", self.journal_dir())?;
        }
        res
    }

    #[allow(clippy::too_many_arguments)]
    fn group_steps(
        &self,
        snap: &Name,
        guards: &[VolumeGuard],
        group: Option<&GroupInfo>,
        hooks: &Hooks,
        tmp_name: &str,
        committed: &mut Vec<PathBuf>,
        expect_root: Option<BlockHash>,
    ) -> Result<Vec<SnapshotMeta>> {
        let vols: Vec<(String, PathBuf)> = guards
            .iter()
            .map(|g| (g.meta.name.to_string(), self.image_path(&g.dir, &g.meta)))
            .collect();
        let env = hooks::env(snap.as_str(), &vols);
        let timeout = self.hook_timeout(hooks.timeout);
        if let Some(pre) = &hooks.pre {
            if let Err(e) = hooks::run("pre", pre, &env, timeout) {
                // The pre hook may have frozen part of what it meant to: thaw regardless.
                if let Some(post) = &hooks.post {
                    let _ = hooks::run("post", post, &env, timeout);
                }
                return Err(e);
            }
        }
        let mut made = Vec::new();
        let snap_res: Result<()> = (|| {
            for g in guards {
                let tmp = g.dir.join("snapshots").join(tmp_name);
                fs::create_dir_all(&tmp).ctx("create", &tmp)?;
                let src = self.image_path(&g.dir, &g.meta);
                let size = fs::metadata(&src).ctx("stat", &src)?.len();
                let created = now_ns();
                let t0 = std::time::Instant::now();
                let method = self.backend.snapshot(&src, &tmp.join(IMAGE))?;
                tracing::debug!(volume = %g.meta.name, ms = t0.elapsed().as_secs_f64() * 1e3, "snapshot image taken");
                made.push((tmp, method, size, created));
            }
            Ok(())
        })();
        let post_res = match &hooks.post {
            Some(post) => hooks::run("post", post, &env, timeout),
            None => Ok(()),
        };
        snap_res?;
        post_res?;
        let mut out = Vec::new();
        for (g, (tmp, method, size, created)) in guards.iter().zip(made) {
            let meta =
                self.finish_snapshot(g, snap, &tmp, method, size, created, group, expect_root)?;
            let dst = Self::snapshot_dir(&g.dir, snap);
            fsx::rename_durable(&tmp, &dst).ctx("rename", &tmp)?;
            committed.push(dst);
            out.push(meta);
        }
        Ok(out)
    }

    /// Computes the manifest of a snapshot image in `tmp` and writes its metadata there.
    #[allow(clippy::too_many_arguments)]
    fn finish_snapshot(
        &self,
        g: &VolumeGuard,
        snap: &Name,
        tmp: &Path,
        method: Method,
        size: u64,
        created: u64,
        group: Option<&GroupInfo>,
        expect_root: Option<BlockHash>,
    ) -> Result<SnapshotMeta> {
        let new_files = SnapshotFiles {
            image: tmp.join(IMAGE),
            size,
            method,
        };
        let base = self.newest_snapshot(g)?;
        let changed = match &base {
            Some(b) => {
                let bdir = Self::snapshot_dir(&g.dir, &b.name);
                let bf = SnapshotFiles {
                    image: bdir.join(IMAGE),
                    size: b.size,
                    method: b.method,
                };
                let t0 = std::time::Instant::now();
                let c = self.backend.changed(&bf, &new_files)?;
                tracing::debug!(volume = %g.meta.name, ms = t0.elapsed().as_secs_f64() * 1e3, ranges = c.as_ref().map_or(0, Vec::len), "changed ranges found");
                c.map(|c| (bdir, c))
            }
            None => None,
        };
        let base_files = changed
            .as_ref()
            .map(|(bdir, c)| (bdir.join(MANIFEST), bdir.join(LEAVES), c));
        // A clone is a new inode with nothing in the page cache; a copy was just written.
        let cache = match method {
            Method::Clone => Cache::Cold,
            Method::Copy => Cache::Warm,
        };
        let src = manifest::Source {
            image: &new_files.image,
            cache,
            size,
            block_size: g.meta.block_size,
        };
        let report: BuildReport = manifest::build(
            src,
            base_files.as_ref().map(|(m, l, c)| Base {
                manifest: m,
                leaves: l,
                changed: c,
            }),
            &tmp.join(MANIFEST),
            &tmp.join(LEAVES),
            &self.cfg.io,
        )?;
        let meta = SnapshotMeta {
            name: snap.clone(),
            volume: g.meta.name.clone(),
            created_unix_ns: created,
            size,
            block_size: g.meta.block_size,
            root: report.root.to_hex(),
            method,
            manifest: ManifestInfo {
                mode: report.mode,
                base: (report.mode == manifest::BuildMode::Incremental)
                    .then(|| base.map(|b| b.name))
                    .flatten(),
                bytes_read: report.bytes_read,
                elapsed_ms: report.elapsed.as_secs_f64() * 1000.0,
                engine: report.engine,
            },
            group: group.cloned(),
        };
        if let Some(want) = expect_root {
            if report.root != want {
                return Err(StoreError::Corrupt {
                    what: "mirror snapshot",
                    path: tmp.to_owned(),
                    detail: format!(
                        "manifest root {} differs from the sender's {}; not committed",
                        report.root, want
                    ),
                });
            }
        }
        write_json(&tmp.join(SNAPSHOT_META), &meta)?;
        fsx::fsync_dir(tmp).ctx("fsync", tmp)?;
        Ok(meta)
    }

    fn newest_snapshot(&self, g: &VolumeGuard) -> Result<Option<SnapshotMeta>> {
        Ok(self.snapshots_of(g)?.into_iter().next_back())
    }

    fn snapshots_of(&self, g: &VolumeGuard) -> Result<Vec<SnapshotMeta>> {
        self.read_snapshots(&g.dir, &g.meta.name)
    }

    fn read_snapshots(&self, dir: &Path, volume: &Name) -> Result<Vec<SnapshotMeta>> {
        let mut out = Vec::new();
        for n in self.snapshot_names(dir)? {
            let name = check_name("snapshot", &n)?;
            match Self::read_snapshot(dir, volume, &name) {
                Ok(m) => out.push(m),
                Err(StoreError::NotFound { .. }) => {} // deleted meanwhile
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|m| (m.created_unix_ns, m.name.clone()));
        Ok(out)
    }

    /// A volume's snapshots, oldest first.
    pub fn list_snapshots(&self, volume: &str) -> Result<Vec<SnapshotMeta>> {
        let name = check_name("volume", volume)?;
        let info = self.volume(name.as_str())?;
        self.read_snapshots(&self.volumes_dir().join(info.name.as_str()), &info.name)
    }

    /// One snapshot's metadata.
    pub fn snapshot(&self, volume: &str, snap: &str) -> Result<SnapshotMeta> {
        let v = check_name("volume", volume)?;
        let s = check_name("snapshot", snap)?;
        self.volume(v.as_str())?;
        Self::read_snapshot(&self.volumes_dir().join(v.as_str()), &v, &s)
    }

    /// Paths of a snapshot's image, manifest and leaf index.
    pub fn snapshot_paths(&self, volume: &str, snap: &str) -> Result<(PathBuf, PathBuf, PathBuf)> {
        let m = self.snapshot(volume, snap)?;
        let d = Self::snapshot_dir(&self.volumes_dir().join(m.volume.as_str()), &m.name);
        Ok((d.join(IMAGE), d.join(MANIFEST), d.join(LEAVES)))
    }

    /// A snapshot's verified manifest.
    pub fn manifest(&self, volume: &str, snap: &str) -> Result<HashFile> {
        let (_, m, _) = self.snapshot_paths(volume, snap)?;
        HashFile::open(&m, Kind::Manifest).map_err(|e| StoreError::Corrupt {
            what: "manifest",
            path: m.clone(),
            detail: e.to_string(),
        })
    }

    /// The byte ranges where `snap` differs from `base` (two snapshots of one volume).
    pub fn diff(&self, volume: &str, base: &str, snap: &str) -> Result<DiffReport> {
        let a = self.snapshot(volume, base)?;
        let b = self.snapshot(volume, snap)?;
        let vdir = self.volumes_dir().join(a.volume.as_str());
        let files = |m: &SnapshotMeta| SnapshotFiles {
            image: Self::snapshot_dir(&vdir, &m.name).join(IMAGE),
            size: m.size,
            method: m.method,
        };
        if let Some(ranges) = self.backend.changed(&files(&a), &files(&b))? {
            let fs_block = fs_block_size(&vdir);
            return Ok(DiffReport {
                volume: a.volume,
                base: a.name,
                snapshot: b.name,
                method: "fiemap",
                granularity: fs_block,
                changed_bytes: ranges.iter().map(|(s, e)| e - s).sum(),
                ranges,
            });
        }
        let ma = self.manifest(volume, base)?;
        let mb = self.manifest(volume, snap)?;
        let g = mb.geometry();
        let mut ranges = Vec::new();
        let same_cut = ma.geometry().block_size == g.block_size;
        for i in 0..g.block_count() {
            let (off, len) = g.block_range(i);
            let differs = !same_cut
                || i >= ma.len()
                || ma.geometry().block_range(i).1 != len
                || ma.hash(i) != mb.hash(i);
            if differs {
                diff::push_merged(&mut ranges, (off, off + len));
            }
        }
        Ok(DiffReport {
            volume: a.volume,
            base: a.name,
            snapshot: b.name,
            method: "manifest",
            granularity: g.block_size as u64,
            changed_bytes: ranges.iter().map(|(s, e)| e - s).sum(),
            ranges,
        })
    }

    /// Re-reads a snapshot and checks it against its manifest.
    pub fn verify(&self, volume: &str, snap: &str) -> Result<VerifyReport> {
        let (img, m, l) = self.snapshot_paths(volume, snap)?;
        manifest::verify(&img, &m, &l, &self.cfg.io)
    }

    /// Deletes a snapshot.
    pub fn delete_snapshot(&self, volume: &str, snap: &str) -> Result<()> {
        let v = check_name("volume", volume)?;
        let s = check_name("snapshot", snap)?;
        let g = self.lock_volume(&v)?;
        Self::read_snapshot(&g.dir, &v, &s)?;
        delete_dir(&g.dir.join("snapshots"), s.as_str())
    }

    /// Rolls a volume back to a snapshot, in place.
    pub fn rollback(&self, volume: &str, snap: &str) -> Result<RollbackReport> {
        let v = check_name("volume", volume)?;
        let s = check_name("snapshot", snap)?;
        let g = self.lock_volume(&v)?;
        refuse_mirror(&g.meta, "rollback")?;
        let m = Self::read_snapshot(&g.dir, &v, &s)?;
        write_json(
            &g.dir.join(ROLLBACK_INTENT),
            &serde_json::json!({ "snapshot": s }),
        )?;
        self.do_rollback(&g, &s)?;
        Ok(RollbackReport {
            volume: v,
            snapshot: s,
            path: self.image_path(&g.dir, &g.meta),
            size: m.size,
        })
    }

    /// Performs (or replays) a rollback whose intent is recorded; removes the intent after.
    fn do_rollback(&self, g: &VolumeGuard, snap: &Name) -> Result<()> {
        let intent = g.dir.join(ROLLBACK_INTENT);
        let src = Self::snapshot_dir(&g.dir, snap).join(IMAGE);
        if !src.exists() {
            return Err(StoreError::Corrupt {
                what: "rollback intent",
                path: intent,
                detail: format!("snapshot {snap} is gone"),
            });
        }
        let dst = self.image_path(&g.dir, &g.meta);
        self.backend.restore(&src, &dst)?;
        fs::remove_file(&intent).ctx("remove", &intent)?;
        fsx::fsync_dir(&g.dir).ctx("fsync", &g.dir)
    }

    /// Creates a new owned volume `new` from a snapshot.
    pub fn clone_volume(&self, volume: &str, snap: &str, new: &str) -> Result<VolumeInfo> {
        let v = check_name("volume", volume)?;
        let s = check_name("snapshot", snap)?;
        let n = check_name("volume", new)?;
        let _store = self.store_lock()?;
        let g = self.lock_volume(&v)?;
        let m = Self::read_snapshot(&g.dir, &v, &s)?;
        self.check_new_volume(&n)?;
        let tmp = self.tmp_volume_dir(&n)?;
        let res = (|| {
            self.backend.snapshot(
                &Self::snapshot_dir(&g.dir, &s).join(IMAGE),
                &tmp.join(IMAGE),
            )?;
            let meta = VolumeMeta {
                name: n.clone(),
                kind: VolumeKind::Owned,
                path: None,
                block_size: m.block_size,
                created_unix_ms: now_ns() / 1_000_000,
                origin: Some(Origin {
                    volume: v.clone(),
                    snapshot: s.clone(),
                }),
                mirror: None,
            };
            self.commit_volume(&n, &meta, &tmp)
        })();
        if res.is_err() {
            let _ = remove_tree(&tmp);
        }
        res
    }
}

fn fs_block_size(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).map_or(4096, |m| m.blksize())
}

/// Local copies of blocks the receiver holds: hash to (image, byte offset).
pub type BlockIndex = std::collections::HashMap<BlockHash, (PathBuf, u64)>;

/// Replication support: mirror volumes on the receiving side.
impl Store {
    /// The mirror volume `name` for data from `from`, created (empty, sparse) if missing. An
    /// existing volume must be a mirror of the same site, with the same block size.
    pub fn ensure_mirror(
        &self,
        name: &Name,
        size: u64,
        block_size: u32,
        from: &MirrorInfo,
    ) -> Result<VolumeInfo> {
        check_block_size(block_size as u64).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let _lock = self.store_lock()?;
        let dir = self.volumes_dir().join(name.as_str());
        if dir.join(VOLUME_META).exists() {
            let meta: VolumeMeta = read_json(&dir.join(VOLUME_META), "volume metadata")?;
            match &meta.mirror {
                Some(m) if m.site == from.site => {}
                Some(m) => {
                    return Err(StoreError::Busy(format!(
                        "volume {name} mirrors site {}, not {}",
                        m.site, from.site
                    )))
                }
                None => {
                    return Err(StoreError::Busy(format!(
                        "volume {name} exists here and is not a mirror"
                    )))
                }
            }
            if meta.block_size != block_size {
                return Err(StoreError::Invalid(format!(
                    "mirror {name} has {}-byte blocks, the source {block_size}",
                    meta.block_size
                )));
            }
            return self.info(&dir, meta);
        }
        self.new_sparse_volume(name, size, block_size, Some(from.clone()))
    }

    /// The lock held by the one replication session receiving into a mirror.
    pub fn receive_lock(&self, name: &Name) -> Result<FileLock> {
        let p = self.volumes_dir().join(name.as_str()).join("receive.lock");
        FileLock::try_exclusive(&p)
            .ctx("lock", &p)?
            .ok_or_else(|| StoreError::Busy(format!("mirror {name} is already receiving")))
    }

    /// Where a mirror's receive journal lives (see `ferry_wire::journal`).
    pub fn receive_journal_path(&self, name: &Name) -> PathBuf {
        self.volumes_dir()
            .join(name.as_str())
            .join("receive.journal")
    }

    /// A mirror's working copy, as it is (to resume an interrupted transfer into it).
    pub fn working_copy(&self, name: &Name) -> Result<PathBuf> {
        let g = self.lock_volume(name)?;
        Ok(self.image_path(&g.dir, &g.meta))
    }

    /// Makes a mirror's working copy equal to its snapshot `base`, or all zeros; `size` bytes.
    /// Returns the working copy's path.
    pub fn reset_working_copy(
        &self,
        name: &Name,
        base: Option<&Name>,
        size: u64,
    ) -> Result<PathBuf> {
        let g = self.lock_volume(name)?;
        let img = self.image_path(&g.dir, &g.meta);
        match base {
            Some(b) => {
                Self::read_snapshot(&g.dir, name, b)?;
                self.backend
                    .restore(&Self::snapshot_dir(&g.dir, b).join(IMAGE), &img)?;
            }
            None => {
                let f = OpenOptions::new()
                    .write(true)
                    .open(&img)
                    .ctx("open", &img)?;
                f.set_len(0).ctx("truncate", &img)?;
                f.sync_all().ctx("fsync", &img)?;
            }
        }
        let f = OpenOptions::new()
            .write(true)
            .open(&img)
            .ctx("open", &img)?;
        f.set_len(size).ctx("size", &img)?;
        f.sync_all().ctx("fsync", &img)?;
        Ok(img)
    }

    /// Every non-zero block of every committed snapshot with `block_size` blocks, by hash:
    /// the receiver copies these locally instead of asking for them.
    pub fn block_index(&self, block_size: u32) -> Result<BlockIndex> {
        let zero = ZeroTable::new(block_size);
        let mut index = BlockIndex::new();
        for v in self.list_volumes()? {
            let dir = self.volumes_dir().join(v.name.as_str());
            for m in self.read_snapshots(&dir, &v.name)? {
                if m.block_size != block_size {
                    continue;
                }
                let sdir = Self::snapshot_dir(&dir, &m.name);
                let Ok(hf) = HashFile::open(&sdir.join(MANIFEST), Kind::Manifest) else {
                    continue;
                };
                let img = sdir.join(IMAGE);
                for i in 0..hf.geometry().full_blocks() {
                    let h = hf.hash(i);
                    if h != zero.block {
                        index
                            .entry(h)
                            .or_insert_with(|| (img.clone(), i * block_size as u64));
                    }
                }
            }
        }
        Ok(index)
    }

    /// Commits the mirror snapshot `snap` of `name` if its manifest root is `root`.
    pub fn commit_mirror_snapshot(
        &self,
        name: &Name,
        snap: &Name,
        root: BlockHash,
    ) -> Result<SnapshotMeta> {
        let mut v = self.create_group_with(
            snap.as_str(),
            &[name.to_string()],
            &Hooks::default(),
            Some(root),
        )?;
        v.pop()
            .ok_or_else(|| StoreError::Invalid("empty group".into()))
    }
}
