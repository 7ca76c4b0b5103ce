//! Volumes: create, adopt, list, delete, roll back in place, clone from a snapshot.

use super::*;

impl Store {
    pub(super) fn info(&self, dir: &Path, meta: VolumeMeta) -> Result<VolumeInfo> {
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

    pub(super) fn snapshot_names(&self, dir: &Path) -> Result<Vec<String>> {
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

    pub(super) fn block_size(&self, requested: Option<u64>) -> Result<u32> {
        let bs = requested.unwrap_or(self.cfg.block_size);
        check_block_size(bs).map_err(|e| StoreError::Invalid(e.to_string()))?;
        Ok(bs as u32)
    }

    /// Commits a volume directory built in a temporary place.
    pub(super) fn commit_volume(
        &self,
        name: &Name,
        meta: &VolumeMeta,
        tmp: &Path,
    ) -> Result<VolumeInfo> {
        write_json(&tmp.join(VOLUME_META), meta)?;
        fs::create_dir_all(tmp.join("snapshots")).ctx("create", tmp)?;
        fsx::fsync_dir(tmp).ctx("fsync", tmp)?;
        let dst = self.volumes_dir().join(name.as_str());
        fsx::rename_durable(tmp, &dst).ctx("rename", tmp)?;
        self.info(&dst, meta.clone())
    }

    pub(super) fn check_new_volume(&self, name: &Name) -> Result<()> {
        if self.volumes_dir().join(name.as_str()).exists() {
            return Err(StoreError::AlreadyExists {
                what: "volume",
                name: name.to_string(),
            });
        }
        Ok(())
    }

    pub(super) fn tmp_volume_dir(&self, name: &Name) -> Result<PathBuf> {
        let tmp = self.volumes_dir().join(format!(".tmp-{name}-{}", nonce()));
        fs::create_dir(&tmp).ctx("create", &tmp)?;
        Ok(tmp)
    }

    /// Builds an owned, sparse volume (optionally a mirror) and commits it; the caller holds
    /// the store lock and has checked the name is free.
    pub(super) fn new_sparse_volume(
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

    /// A file of the store (an adopted file, or any under the data directory) that is the
    /// file `(dev, ino)`.
    fn file_with_inode(&self, dev: u64, ino: u64) -> Result<Option<PathBuf>> {
        use std::os::unix::fs::MetadataExt;
        let same = |p: &Path| fs::metadata(p).is_ok_and(|m| m.dev() == dev && m.ino() == ino);
        for v in self.list_volumes_unlocked()? {
            if same(&v.path) {
                return Ok(Some(v.path));
            }
        }
        let mut dirs = vec![self.root.clone()];
        while let Some(d) = dirs.pop() {
            let Ok(entries) = fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                match e.file_type() {
                    Ok(t) if t.is_dir() => dirs.push(p),
                    Ok(t) if t.is_file() && same(&p) => return Ok(Some(p)),
                    _ => {}
                }
            }
        }
        Ok(None)
    }

    /// Adopts an existing image file (a LUN's backing file, a file in an NFS export, a VM disk).
    /// The file stays where it is; deleting the volume later only forgets it. It must be one
    /// file with one name, none of the store's: from then on ferry takes what is written
    /// through that name as the volume (snapshots copy or clone it, a rollback rewrites it in
    /// place), and nothing else may replace or truncate it.
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
        // The file, not its path: a second name for a snapshot's image (a hard link) or for
        // another adopted file would let writes through it change what ferry keeps.
        use std::os::unix::fs::MetadataExt;
        if md.nlink() > 1 {
            return Err(StoreError::Invalid(format!(
                "{} has {} hard links: an adopted file must have one name, since ferry \
                 snapshots and rolls back what is written through it; copy it (cp \
                 --reflink=auto) and adopt the copy",
                real.display(),
                md.nlink()
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
        if let Some(held) = self.file_with_inode(md.dev(), md.ino())? {
            return Err(StoreError::Invalid(format!(
                "{} is the same file as {} in the store",
                real.display(),
                held.display()
            )));
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

    pub(super) fn list_volumes_unlocked(&self) -> Result<Vec<VolumeInfo>> {
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
    pub(super) fn do_rollback(&self, g: &VolumeGuard, snap: &Name) -> Result<()> {
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
        self.clone_from(volume, snap, new, false).map(|(v, _)| v)
    }

    /// Creates a new owned volume `new` from snapshot `snap` of `volume` (a mirror, at a
    /// target: a rebuild) that also keeps the snapshot, under the same name and with the
    /// same manifest, as its own first snapshot. Cloned on reflink (O(1)), copied otherwise.
    /// Protecting `new` to a site that holds a snapshot with that root then starts from it.
    pub fn rebuild_volume(
        &self,
        volume: &str,
        snap: &str,
        new: &str,
    ) -> Result<(VolumeInfo, SnapshotMeta)> {
        let (v, kept) = self.clone_from(volume, snap, new, true)?;
        let kept = kept.ok_or_else(|| StoreError::Invalid("no snapshot kept".into()))?;
        Ok((v, kept))
    }

    /// [`Store::clone_volume`], keeping the snapshot too with `keep`.
    fn clone_from(
        &self,
        volume: &str,
        snap: &str,
        new: &str,
        keep: bool,
    ) -> Result<(VolumeInfo, Option<SnapshotMeta>)> {
        let v = check_name("volume", volume)?;
        let s = check_name("snapshot", snap)?;
        let n = check_name("volume", new)?;
        let _store = self.store_lock()?;
        let g = self.lock_volume(&v)?;
        let m = Self::read_snapshot(&g.dir, &v, &s)?;
        self.check_new_volume(&n)?;
        let src = Self::snapshot_dir(&g.dir, &s);
        self.volume_from_snapshot(&src, &m, &n, keep.then_some(&s), None)
    }

    /// Builds and commits volume `new` from snapshot `m` (its directory `src`): its image a
    /// clone (or copy) of the snapshot's; with `keep`, the snapshot too, under that name; a
    /// mirror of `mirror` when given. The caller holds the store lock, the snapshot's
    /// volume's lock, and has checked that `new` is free.
    pub(super) fn volume_from_snapshot(
        &self,
        src: &Path,
        m: &SnapshotMeta,
        new: &Name,
        keep: Option<&Name>,
        mirror: Option<MirrorInfo>,
    ) -> Result<(VolumeInfo, Option<SnapshotMeta>)> {
        let tmp = self.tmp_volume_dir(new)?;
        let res = (|| {
            self.backend.snapshot(&src.join(IMAGE), &tmp.join(IMAGE))?;
            let kept = match keep {
                Some(name) => {
                    let renamed = SnapshotMeta {
                        name: name.clone(),
                        ..m.clone()
                    };
                    Some(self.copy_snapshot(src, &renamed, &tmp, new)?)
                }
                None => None,
            };
            let meta = VolumeMeta {
                name: new.clone(),
                kind: VolumeKind::Owned,
                path: None,
                block_size: m.block_size,
                created_unix_ms: now_ns() / 1_000_000,
                origin: Some(Origin {
                    volume: m.volume.clone(),
                    snapshot: m.name.clone(),
                }),
                mirror,
            };
            Ok((self.commit_volume(new, &meta, &tmp)?, kept))
        })();
        if res.is_err() {
            let _ = remove_tree(&tmp);
        }
        res
    }

    /// The names and image paths of `volumes`.
    pub fn volume_paths(&self, volumes: &[Name]) -> Result<Vec<(String, PathBuf)>> {
        volumes
            .iter()
            .map(|v| {
                self.volume(v.as_str())
                    .map(|i| (i.name.to_string(), i.path))
            })
            .collect()
    }
}
