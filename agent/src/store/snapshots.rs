//! Snapshots: single and grouped (with hooks), their manifests, diffs, verification and
//! deletion.

use super::*;

/// How much of two images the backend compares at a time while an incremental manifest is
/// built: the build starts reading once the first window is compared (on a 4 GiB image with
/// 20,000 extents, comparing all of it took 113 ms, as long as a quarter of the reads).
const COMPARE_WINDOW: u64 = 256 << 20;

/// Compared windows held ahead of the build.
const WINDOWS_AHEAD: usize = 16;

impl Store {
    pub(super) fn snapshot_dir(dir: &Path, snap: &Name) -> PathBuf {
        dir.join("snapshots").join(snap.as_str())
    }

    pub(super) fn read_snapshot(dir: &Path, volume: &Name, snap: &Name) -> Result<SnapshotMeta> {
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

    /// Copies committed snapshot `meta` (its directory `src`) into the volume directory
    /// being built at `vol_tmp` for volume `volume`, under the same name: the image cloned
    /// (or copied), the manifest and leaf index as they are, every file fsynced. The caller
    /// commits `vol_tmp`.
    pub(super) fn copy_snapshot(
        &self,
        src: &Path,
        meta: &SnapshotMeta,
        vol_tmp: &Path,
        volume: &Name,
    ) -> Result<SnapshotMeta> {
        let dst = Self::snapshot_dir(vol_tmp, &meta.name);
        fs::create_dir_all(&dst).ctx("create", &dst)?;
        let method = self.backend.snapshot(&src.join(IMAGE), &dst.join(IMAGE))?;
        for f in [MANIFEST, LEAVES] {
            fsx::clone_or_copy(&src.join(f), &dst.join(f)).ctx("copy", src.join(f))?;
        }
        let kept = SnapshotMeta {
            volume: volume.clone(),
            method,
            group: None,
            ..meta.clone()
        };
        write_json(&dst.join(SNAPSHOT_META), &kept)?;
        fsx::fsync_dir(&dst).ctx("fsync", &dst)?;
        fsx::fsync_dir(&vol_tmp.join("snapshots")).ctx("fsync", vol_tmp)?;
        Ok(kept)
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
    pub(super) fn create_group_with(
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
    pub(super) fn group_steps(
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
            Some(post) => hooks::run("post", post, &env, timeout).map(drop),
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
    pub(super) fn finish_snapshot(
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
        let (out_manifest, out_leaves) = (tmp.join(MANIFEST), tmp.join(LEAVES));
        let io = &self.cfg.io;
        let compared = base.as_ref().map(|b| {
            let bdir = Self::snapshot_dir(&g.dir, &b.name);
            let files = SnapshotFiles {
                image: bdir.join(IMAGE),
                size: b.size,
                method: b.method,
            };
            (b, bdir, files)
        });
        let report: BuildReport = match compared {
            Some((b, bdir, bf)) if self.backend.compares(&bf, &new_files) => {
                let (report, ranges) = self.build_on(
                    (&bf, &new_files),
                    src,
                    (&bdir.join(MANIFEST), &bdir.join(LEAVES)),
                    (&out_manifest, &out_leaves),
                )?;
                tracing::debug!(volume = %g.meta.name, ranges = ranges.len(), "changed ranges found");
                let record = Changes {
                    base: b.name.clone(),
                    base_created_unix_ns: b.created_unix_ns,
                    base_root: b.root.clone(),
                    size,
                    ranges,
                };
                // Too many ranges for one record: a replication from this base compares again.
                if let Some(bytes) = record.encode() {
                    let p = tmp.join(CHANGES);
                    fsx::atomic_write(&p, &bytes).ctx("write", &p)?;
                }
                report
            }
            _ => manifest::build(src, None, &out_manifest, &out_leaves, io)?,
        };
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
                engine: Some(report.engine),
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

    /// The incremental manifest of snapshot `files.1` on top of `files.0` (its manifest and
    /// leaf index `base`), written to `out`, with the ranges where the two differ. The
    /// backend compares the two images in windows on a thread of its own while the build
    /// reads the changed leaves of the windows already compared; a comparison that fails
    /// part way fails the build (which has then not seen every change).
    fn build_on(
        &self,
        files: (&SnapshotFiles, &SnapshotFiles),
        src: manifest::Source<'_>,
        base: (&Path, &Path),
        out: (&Path, &Path),
    ) -> Result<(BuildReport, Vec<(u64, u64)>)> {
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(u64, u64)>>(WINDOWS_AHEAD);
            let compare = s.spawn(move || {
                self.backend
                    .changed_in_windows(files.0, files.1, COMPARE_WINDOW, &mut |w| {
                        tx.send(w).is_ok()
                    })
            });
            let mut all = Vec::new();
            let mut windows = rx
                .iter()
                .inspect(|w| w.iter().for_each(|&r| diff::push_merged(&mut all, r)));
            let built = manifest::build(
                src,
                Some(Base {
                    manifest: base.0,
                    leaves: base.1,
                    changed: &mut windows,
                }),
                out.0,
                out.1,
                &self.cfg.io,
            );
            // The windows a full build (the base unusable) or a failed one did not take.
            windows.by_ref().for_each(drop);
            drop(windows);
            compare
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))?;
            Ok((built?, all))
        })
    }

    pub(super) fn newest_snapshot(&self, g: &VolumeGuard) -> Result<Option<SnapshotMeta>> {
        Ok(self.snapshots_of(g)?.into_iter().next_back())
    }

    pub(super) fn snapshots_of(&self, g: &VolumeGuard) -> Result<Vec<SnapshotMeta>> {
        self.read_snapshots(&g.dir, &g.meta.name)
    }

    pub(super) fn read_snapshots(&self, dir: &Path, volume: &Name) -> Result<Vec<SnapshotMeta>> {
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
        // What the snapshot recorded when it was taken, if it was taken on top of `base`.
        let recorded = Changes::read(&Self::snapshot_dir(&vdir, &b.name).join(CHANGES))
            .filter(|c| c.describes(&a, b.size))
            .map(|c| c.ranges);
        let found = match recorded {
            Some(r) => Some((r, true)),
            None => self
                .backend
                .changed(&files(&a), &files(&b))?
                .map(|r| (r, false)),
        };
        if let Some((ranges, recorded)) = found {
            let fs_block = fs_block_size(&vdir);
            return Ok(DiffReport {
                volume: a.volume,
                base: a.name,
                snapshot: b.name,
                method: "fiemap",
                granularity: fs_block,
                recorded,
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
            recorded: false,
            changed_bytes: ranges.iter().map(|(s, e)| e - s).sum(),
            ranges,
        })
    }

    /// Re-reads a snapshot and checks it against its manifest.
    pub fn verify(&self, volume: &str, snap: &str) -> Result<VerifyReport> {
        self.verify_paced(volume, snap, false, &mut |_| {})
    }

    /// [`Store::verify`] at the pace `pace` sets (see [`manifest::verify_paced`]); with
    /// `live`, the volume's current image is compared with the snapshot's manifest (a
    /// volume just rebuilt from that snapshot must equal it).
    pub fn verify_paced(
        &self,
        volume: &str,
        snap: &str,
        live: bool,
        pace: &mut dyn FnMut(u64),
    ) -> Result<VerifyReport> {
        let (img, m, l) = self.snapshot_paths(volume, snap)?;
        let img = if live { self.volume(volume)?.path } else { img };
        manifest::verify_paced(&img, &m, &l, &self.cfg.io, pace)
    }

    /// Deletes a snapshot.
    pub fn delete_snapshot(&self, volume: &str, snap: &str) -> Result<()> {
        let v = check_name("volume", volume)?;
        let s = check_name("snapshot", snap)?;
        let g = self.lock_volume(&v)?;
        Self::read_snapshot(&g.dir, &v, &s)?;
        delete_dir(&g.dir.join("snapshots"), s.as_str())
    }
}
