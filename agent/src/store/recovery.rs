//! Recovery, at the start of every operation under the same locks: leftovers of
//! interrupted work removed, interrupted rollbacks replayed, interrupted group snapshots
//! undone (all or nothing).

use super::*;

impl Store {
    /// Removes leftovers of interrupted volume operations and rolls back interrupted groups.
    /// Runs with the store lock held (`_held`).
    pub(super) fn recover(&self, _held: &FileLock) -> Result<()> {
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
    pub(super) fn recover_group(&self, path: &Path, j: &GroupJournal) -> Result<()> {
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

    pub(super) fn recover_volume(&self, g: &VolumeGuard) -> Result<()> {
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
        self.recover_working_copy(g)
    }
}
