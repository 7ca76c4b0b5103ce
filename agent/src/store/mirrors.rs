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
        Self::working_is(&dir, &snap, &src.root)?;
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
    /// Returns the working copy's path. A working copy that still holds exactly what the
    /// last commit made it (`receive.base` names that snapshot and its root) is kept as it
    /// is: on reflink, cloning a fragmented image costs time in proportion to its extents.
    pub fn reset_working_copy(
        &self,
        name: &Name,
        base: Option<&Name>,
        size: u64,
    ) -> Result<PathBuf> {
        let g = self.lock_volume(name)?;
        let img = self.image_path(&g.dir, &g.meta);
        let marker = g.dir.join(WORKING_BASE);
        let held = Self::working_holds(&g.dir);
        // From here the working copy changes: until the next commit it is no snapshot.
        match fs::remove_file(&marker) {
            Ok(()) => fsx::fsync_dir(&g.dir).ctx("fsync", &g.dir)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e, "remove", marker)),
        }
        match base {
            Some(b) => {
                let m = Self::read_snapshot(&g.dir, name, b)?;
                let same = held.as_ref() == Some(&(b.clone(), m.root))
                    && fs::metadata(&img).is_ok_and(|md| md.len() == size);
                if same {
                    return Ok(img);
                }
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

    /// A receiving session's working index for mirror `name`: the base snapshot's manifest
    /// and leaf index cloned (entries the session then patches as it checks blocks), or,
    /// without a base, every block zero until told otherwise; with the base's leaf index to
    /// check page deltas by their changed leaves only.
    pub fn working_index(
        &self,
        name: &Name,
        base: Option<&Name>,
        geometry: Geometry,
    ) -> Result<WorkingIndex> {
        let g = self.lock_volume(name)?;
        let manifest_path = g.dir.join(WORKING_MANIFEST);
        let leaves_path = g.dir.join(WORKING_LEAVES);
        let bad = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |e: FormatError| StoreError::Corrupt {
                what,
                path: path.clone(),
                detail: e.to_string(),
            }
        };
        let (manifest, leaves, base_leaves) = match base {
            Some(b) => {
                let sdir = Self::snapshot_dir(&g.dir, b);
                let (bm, bl) = (sdir.join(MANIFEST), sdir.join(LEAVES));
                let base_leaves =
                    HashFile::open(&bl, Kind::Leaves).map_err(bad("leaf index", &bl))?;
                fsx::clone_or_copy(&bm, &manifest_path).ctx("copy", &bm)?;
                fsx::clone_or_copy(&bl, &leaves_path).ctx("copy", &bl)?;
                let m = HashFileWriter::patch_of(&manifest_path, &bm, Kind::Manifest, geometry)
                    .map_err(bad("manifest", &manifest_path))?;
                let l = HashFileWriter::patch_of(&leaves_path, &bl, Kind::Leaves, geometry)
                    .map_err(bad("leaf index", &leaves_path))?;
                (m, l, Some(base_leaves))
            }
            None => {
                let zero = ZeroTable::new(geometry.block_size);
                let mut m = HashFileWriter::create(&manifest_path, Kind::Manifest, geometry)
                    .map_err(bad("manifest", &manifest_path))?;
                let mut l = HashFileWriter::create(&leaves_path, Kind::Leaves, geometry)
                    .map_err(bad("leaf index", &leaves_path))?;
                for i in 0..geometry.full_blocks() {
                    m.set(i, &zero.block.0);
                }
                if geometry.tail_len() > 0 {
                    m.set(geometry.full_blocks(), &zero.hash(geometry.tail_len()).0);
                }
                let lpb = geometry.leaves_per_block();
                for (k, e) in l.entries_mut().chunks_mut(32).enumerate() {
                    e.copy_from_slice(&zero.leaf_cvs[k % lpb]);
                }
                (m, l, None)
            }
        };
        Ok(WorkingIndex {
            manifest,
            leaves,
            base_leaves,
            manifest_path,
            leaves_path,
            zero: ZeroTable::new(geometry.block_size),
            geometry,
        })
    }

    /// Commits mirror snapshot `snap` of `name` from its working copy and the session's
    /// working index, if the index's manifest root is the sender's `root`: the image is
    /// cloned (copied) into the snapshot, the manifest and leaf index moved there, nothing
    /// read again. Every entry came from a block checked on arrival, a local copy checked
    /// before it was made, the base, or a zero range.
    pub fn commit_received(
        &self,
        name: &Name,
        snap: &Name,
        root: BlockHash,
        base: Option<&Name>,
        wi: WorkingIndex,
    ) -> Result<SnapshotMeta> {
        let t0 = std::time::Instant::now();
        let WorkingIndex {
            manifest,
            leaves,
            manifest_path,
            leaves_path,
            ..
        } = wi;
        let corrupt = |path: &Path, detail: String| StoreError::Corrupt {
            what: "mirror snapshot",
            path: path.to_path_buf(),
            detail,
        };
        let got = manifest
            .finish()
            .map_err(|e| corrupt(&manifest_path, e.to_string()))?;
        if got != root {
            return Err(corrupt(
                &manifest_path,
                format!("manifest root {got} differs from the sender's {root}; not committed"),
            ));
        }
        leaves
            .finish()
            .map_err(|e| corrupt(&leaves_path, e.to_string()))?;
        let g = self.lock_volume(name)?;
        let dst = Self::snapshot_dir(&g.dir, snap);
        if dst.exists() {
            return Err(StoreError::AlreadyExists {
                what: "snapshot",
                name: format!("{name}@{snap}"),
            });
        }
        let tmp = g.dir.join("snapshots").join(format!(".tmp-{snap}"));
        remove_tree(&tmp)?;
        fs::create_dir_all(&tmp).ctx("create", &tmp)?;
        // A mirror is an owned volume: its working copy is the image in its directory.
        let img = g.dir.join(IMAGE);
        let res = (|| {
            let size = fs::metadata(&img).ctx("stat", &img)?.len();
            // The working copy, fsynced by the session, becomes the snapshot's image by a
            // rename; the next working copy is cloned from it afterwards, off the session's
            // path (`remake_working_copy`), since cloning costs time in proportion to the
            // image's extents.
            fs::rename(&img, tmp.join(IMAGE)).ctx("rename", &img)?;
            let method = self.backend.method();
            fs::rename(&manifest_path, tmp.join(MANIFEST)).ctx("rename", &manifest_path)?;
            fs::rename(&leaves_path, tmp.join(LEAVES)).ctx("rename", &leaves_path)?;
            let meta = SnapshotMeta {
                name: snap.clone(),
                volume: name.clone(),
                created_unix_ns: now_ns(),
                size,
                block_size: g.meta.block_size,
                root: root.to_hex(),
                method,
                manifest: ManifestInfo {
                    mode: manifest::BuildMode::Received,
                    base: base.cloned(),
                    bytes_read: 0,
                    elapsed_ms: t0.elapsed().as_secs_f64() * 1e3,
                    engine: None,
                },
                group: None,
            };
            write_json(&tmp.join(SNAPSHOT_META), &meta)?;
            fsx::fsync_dir(&tmp).ctx("fsync", &tmp)?;
            fsx::rename_durable(&tmp, &dst).ctx("rename", &tmp)?;
            fsx::fsync_dir(&g.dir).ctx("fsync", &g.dir)?;
            Self::working_is(&g.dir, snap, &meta.root)?;
            Ok(meta)
        })();
        if res.is_err() {
            // The image may have moved into `tmp` already: it goes back before `tmp` goes.
            if !img.exists() && tmp.join(IMAGE).exists() {
                let _ = fs::rename(tmp.join(IMAGE), &img);
            }
            let _ = remove_tree(&tmp);
        }
        res
    }

    /// Makes mirror `name`'s working copy again after a commit moved it into its snapshot
    /// (a clone of that snapshot). Any operation on the volume does the same first, under
    /// the volume lock (see `recover_volume`); this only does it early, off the session's
    /// path, so that the next session finds it made.
    pub fn remake_working_copy(&self, name: &Name) -> Result<()> {
        match self.lock_volume(name) {
            // Deleted meanwhile: nothing to make.
            Err(StoreError::NotFound { .. }) => Ok(()),
            other => other.map(drop),
        }
    }

    /// A mirror whose image is missing: its last commit moved the working copy into the
    /// snapshot its `receive.base` names, or a crash came between. The working copy is
    /// cloned from that snapshot, or, with no such snapshot, made empty (the next session
    /// resets it to its base anyway).
    pub(super) fn recover_working_copy(&self, g: &VolumeGuard) -> Result<()> {
        let img = g.dir.join(IMAGE);
        if g.meta.mirror.is_none() || g.meta.kind != VolumeKind::Owned || img.exists() {
            return Ok(());
        }
        let marker = g.dir.join(WORKING_BASE);
        let from = Self::working_holds(&g.dir).and_then(|(snap, root)| {
            let m = Self::read_snapshot(&g.dir, &g.meta.name, &snap).ok()?;
            (m.root == root).then_some(snap)
        });
        let tmp = g.dir.join(".tmp-working.img");
        let _ = fs::remove_file(&tmp);
        match &from {
            Some(snap) => {
                let src = Self::snapshot_dir(&g.dir, snap).join(IMAGE);
                self.backend.snapshot(&src, &tmp)?;
            }
            None => {
                let _ = fs::remove_file(&marker);
                let f = create_new(&tmp)?;
                f.sync_all().ctx("fsync", &tmp)?;
            }
        }
        fsx::rename_durable(&tmp, &img).ctx("rename", &tmp)?;
        tracing::debug!(volume = %g.meta.name, from = ?from, "mirror working copy made again");
        Ok(())
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
        let meta = v
            .pop()
            .ok_or_else(|| StoreError::Invalid("empty group".into()))?;
        Self::working_is(&self.volumes_dir().join(name.as_str()), snap, &meta.root)?;
        Ok(meta)
    }

    /// Records that mirror directory `dir`'s working copy is snapshot `snap` (root `root`):
    /// the next session based on it need not reset it.
    fn working_is(dir: &Path, snap: &Name, root: &str) -> Result<()> {
        let marker = dir.join(WORKING_BASE);
        fsx::atomic_write(&marker, format!("{snap} {root}").as_bytes()).ctx("write", marker)
    }

    /// The snapshot and root mirror directory `dir`'s working copy holds exactly, as
    /// `working_is` recorded them; `None` when it holds no snapshot (or the record is bad).
    fn working_holds(dir: &Path) -> Option<(Name, String)> {
        let held = fs::read_to_string(dir.join(WORKING_BASE)).ok()?;
        let (snap, root) = held.split_once(' ')?;
        Some((Name::new(snap).ok()?, root.to_string()))
    }
}

/// A receiving session's manifest and leaf index, patched as blocks are checked (see
/// [`Store::working_index`]); the mirror snapshot's own once committed.
pub struct WorkingIndex {
    pub manifest: HashFileWriter,
    pub leaves: HashFileWriter,
    /// The base snapshot's leaf index: a page delta's unchanged leaves.
    pub base_leaves: Option<HashFile>,
    manifest_path: PathBuf,
    leaves_path: PathBuf,
    zero: ZeroTable,
    geometry: Geometry,
}

impl std::fmt::Debug for WorkingIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkingIndex")
            .field("manifest", &self.manifest_path)
            .finish()
    }
}

impl WorkingIndex {
    /// Block `i` is `hash`, with leaf chaining values `cvs` (a full block).
    pub fn record(&mut self, i: u64, hash: &BlockHash, cvs: Option<&[LeafCv]>) {
        self.manifest.set(i, &hash.0);
        if let Some(cvs) = cvs.filter(|_| i < self.geometry.full_blocks()) {
            let lpb = cvs.len() as u64;
            for (j, cv) in cvs.iter().enumerate() {
                self.leaves.set(i * lpb + j as u64, cv);
            }
        }
    }

    /// Blocks `start..end` are zeros.
    pub fn zeros(&mut self, start: u64, end: u64) {
        let lpb = self.geometry.leaves_per_block() as u64;
        for i in start..end.min(self.geometry.block_count()) {
            if i < self.geometry.full_blocks() {
                self.manifest.set(i, &self.zero.block.0);
                for j in 0..lpb {
                    self.leaves
                        .set(i * lpb + j, &self.zero.leaf_cvs[j as usize]);
                }
            } else {
                let h = self.zero.hash(self.geometry.tail_len());
                self.manifest.set(i, &h.0);
            }
        }
    }

    /// Block `to` is what block `from` is.
    pub fn same_as(&mut self, to: u64, from: u64) {
        let h = self.manifest.get(from);
        self.manifest.set(to, &h);
        if to < self.geometry.full_blocks() && from < self.geometry.full_blocks() {
            let lpb = self.geometry.leaves_per_block() as u64;
            for j in 0..lpb {
                let cv = self.leaves.get(from * lpb + j);
                self.leaves.set(to * lpb + j, &cv);
            }
        }
    }

    /// The base block `i`'s leaf chaining values, if the base's leaf index has them.
    pub fn base_cvs(&self, i: u64) -> Option<Vec<LeafCv>> {
        let bl = self.base_leaves.as_ref()?;
        let lpb = self.geometry.leaves_per_block() as u64;
        if i >= self.geometry.full_blocks() || (i + 1) * lpb > bl.len() {
            return None;
        }
        Some((0..lpb).map(|j| bl.entry(i * lpb + j)).collect())
    }
}
