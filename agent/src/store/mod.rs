//! The volume store: a node's volumes, their snapshots and manifests.
//!
//! ```text
//! DATA/
//!   agent.lock                      store lock: volume create/adopt/clone/delete, recovery
//!   journal/group-<snap>.json       intent of a multi-volume snapshot in progress
//!   index/blocks-<bs>.idx           the receiver's dedup index of mirror blocks (a hint;
//!   index/volumes.json, index/lock    built again from the manifests when unusable)
//!   paths.json                      what the last large transfer to each peer measured of
//!                                   the path: the next connection's start window (a hint)
//!   volumes/<vol>/
//!     volume.json                   what the volume is (owned or adopted, block size, ...)
//!     data.img                      the image, for owned volumes (a mirror's working copy:
//!                                   missing between a commit and its clone, see recovery)
//!     lock                          volume lock: every change to the volume or its snapshots
//!     rollback.json                 intent of a rollback in progress
//!     receive.lock, receive.journal  a mirror's receiving session and its progress
//!     receive.manifest, receive.leaves  its working manifest and leaf index (the next
//!                                   mirror snapshot's, moved there at commit)
//!     receive.base                  the snapshot its image holds exactly since the last
//!                                   commit (gone once a session writes to it)
//!     snapshots/<snap>/             a committed snapshot: data.img, manifest, leaves, snapshot.json,
//!                                   and changes (where it differs from the snapshot before it,
//!                                   as the reflink backend found; a hint, see `Changes`)
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

use ferry_wire::hash::{check_block_size, BlockHash, Geometry, LeafCv, ZeroTable};
use ferry_wire::hashfile::{FormatError, HashFile, HashFileWriter, Kind};
use ferry_wire::Name;
use serde::{Deserialize, Serialize};

use crate::config::{AgentConfig, BackendChoice, Cache};
use crate::diff;
use crate::error::{check_name, io_err, IoContext, Result, StoreError};
use crate::fsx::{self, FileLock};
use crate::hooks::{self, Hooks};
use crate::manifest::{self, Base, BuildReport, VerifyReport};

mod backend;
pub mod dedup;
mod locks;
mod mirrors;
mod records;
mod recovery;
mod snapshots;
mod volumes;

pub use backend::*;
use locks::VolumeGuard;
pub use mirrors::WorkingIndex;
pub use records::*;

pub(super) const VOLUME_META: &str = "volume.json";

pub(super) const SNAPSHOT_META: &str = "snapshot.json";

pub(super) const ROLLBACK_INTENT: &str = "rollback.json";

pub(super) const IMAGE: &str = "data.img";

/// Where the sender keeps its path measurements (`replication::paths`) in data directory
/// `data_dir`.
pub fn paths_file(data_dir: &Path) -> PathBuf {
    data_dir.join("paths.json")
}

pub(super) const MANIFEST: &str = "manifest";

pub(super) const LEAVES: &str = "leaves";

pub(super) const CHANGES: &str = "changes";

/// A mirror's working manifest and leaf index while it receives (see `WorkingIndex`).
pub(super) const WORKING_MANIFEST: &str = "receive.manifest";
pub(super) const WORKING_LEAVES: &str = "receive.leaves";
/// Which snapshot a mirror's working copy holds exactly, if any (`<snapshot> <root>`).
pub(super) const WORKING_BASE: &str = "receive.base";

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

pub(super) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

pub(super) fn nonce() -> String {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        b = (now_ns() ^ ((std::process::id() as u64) << 32)).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(super) fn read_json<T: for<'de> Deserialize<'de>>(
    path: &Path,
    what: &'static str,
) -> Result<T> {
    let bytes = fs::read(path).ctx("read", path)?;
    serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
        what,
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

pub(super) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Invalid(e.to_string()))?;
    fsx::atomic_write(path, &bytes).ctx("write", path)
}

pub(super) fn remove_tree(path: &Path) -> Result<()> {
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
pub(super) fn delete_dir(parent: &Path, name: &str) -> Result<()> {
    let from = parent.join(name);
    let to = parent.join(format!(".del-{name}-{}", nonce()));
    fsx::rename_durable(&from, &to).ctx("rename", &from)?;
    remove_tree(&to)
}

pub(super) fn is_scratch(name: &str) -> bool {
    name.starts_with(".tmp-") || name.starts_with(".del-") || name.starts_with(".probe-")
}

pub(super) fn fs_block_size(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).map_or(4096, |m| m.blksize())
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

    pub(super) fn volumes_dir(&self) -> PathBuf {
        self.root.join("volumes")
    }

    pub(super) fn journal_dir(&self) -> PathBuf {
        self.root.join("journal")
    }

    pub(super) fn image_path(&self, dir: &Path, meta: &VolumeMeta) -> PathBuf {
        match (&meta.kind, &meta.path) {
            (VolumeKind::Adopted, Some(p)) => p.clone(),
            _ => dir.join(IMAGE),
        }
    }

    /// A hook's timeout: `asked`, or the configured default when zero.
    pub fn hook_timeout(&self, asked: Duration) -> Duration {
        if asked.is_zero() {
            Duration::from_secs(self.cfg.hook_timeout_secs)
        } else {
            asked
        }
    }
}
