//! The store lock and the volume locks (flock): the store lock before volume locks, volume
//! locks in name order.

use super::*;

/// A held volume lock with the volume's metadata.
pub(super) struct VolumeGuard {
    pub(super) _lock: FileLock,
    pub(super) meta: VolumeMeta,
    pub(super) dir: PathBuf,
}

impl Store {
    pub(super) fn store_lock(&self) -> Result<FileLock> {
        let p = self.root.join("agent.lock");
        FileLock::exclusive(&p).ctx("lock", &p)
    }

    /// Takes a volume's lock, checks it exists, and finishes any interrupted operation on it.
    pub(super) fn lock_volume(&self, name: &Name) -> Result<VolumeGuard> {
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
}
