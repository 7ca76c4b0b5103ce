//! Mirror volumes on the receiving side of replication: made on first use, written only
//! through a working copy, committed only with the sender's root.

use super::*;

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
                    return Err(StoreError::Refused(format!(
                        "volume {name} mirrors site {}, not {}",
                        m.site, from.site
                    )))
                }
                None => {
                    return Err(StoreError::Refused(format!(
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

    /// Makes mirror `name` (for data from `from`, `size` bytes in `block_size` blocks) from a
    /// local snapshot of any volume whose root is one of `candidates` (newest first), kept
    /// under the candidate's name, with the working copy a clone of it. Only a mirror that
    /// does not exist yet, or exists with no snapshot, no transfer journaled and none
    /// receiving, is seeded. Returns the snapshot it was seeded from (`volume`, `snapshot`).
    pub fn seed_mirror(
        &self,
        name: &Name,
        size: u64,
        block_size: u32,
        from: &MirrorInfo,
        candidates: &[(Name, BlockHash)],
    ) -> Result<Option<(Name, Name)>> {
        check_block_size(block_size as u64).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let _lock = self.store_lock()?;
        let dir = self.volumes_dir().join(name.as_str());
        let exists = dir.join(VOLUME_META).exists();
        if exists {
            let meta: VolumeMeta = read_json(&dir.join(VOLUME_META), "volume metadata")?;
            let empty = meta.mirror.as_ref().is_some_and(|m| m.site == from.site)
                && self.snapshot_names(&dir)?.is_empty()
                && !self.receive_journal_path(name).exists();
            if !empty {
                return Ok(None);
            }
        }
        // The newest candidate some local snapshot holds (mirrors included).
        let mut found: Option<(usize, SnapshotMeta, PathBuf)> = None;
        for v in self.list_volumes_unlocked()? {
            let vdir = self.volumes_dir().join(v.name.as_str());
            for m in self.read_snapshots(&vdir, &v.name)? {
                if m.size != size || m.block_size != block_size {
                    continue;
                }
                let Some(rank) = candidates
                    .iter()
                    .position(|(_, r)| BlockHash::from_hex(&m.root) == Some(*r))
                else {
                    continue;
                };
                if found.as_ref().is_none_or(|(best, _, _)| rank < *best) {
                    found = Some((rank, m, vdir.clone()));
                }
            }
        }
        let Some((rank, src, vdir)) = found else {
            return Ok(None);
        };
        if exists {
            // Empty, and no session can hold it: we hold the store lock it takes first.
            let Some(_receiving) =
                FileLock::try_exclusive(&dir.join("receive.lock")).ctx("lock", &dir)?
            else {
                return Ok(None);
            };
            delete_dir(&self.volumes_dir(), name.as_str())?;
        }
        let snap = candidates[rank].0.clone();
        // The snapshot stays while it is cloned (store lock, then the volume's).
        let _held = self.lock_volume(&src.volume)?;
        let src_dir = Self::snapshot_dir(&vdir, &src.name);
        self.volume_from_snapshot(&src_dir, &src, name, Some(&snap), Some(from.clone()))?;
        tracing::info!(mirror = %name, from = %format!("{}@{}", src.volume, src.name), as_ = %snap, "mirror seeded from a local snapshot with the same root");
        Ok(Some((src.volume, src.name)))
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
