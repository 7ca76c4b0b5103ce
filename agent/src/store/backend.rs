//! The one trait with two implementations: `reflink` (XFS with reflink=1, btrfs: a snapshot
//! is a FICLONE; changed ranges come from comparing FIEMAP extents) and `copy` (any
//! filesystem: a sparse copy; changes found by hashing).

use super::*;

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
    /// How this backend's snapshots are made (a working copy renamed into a snapshot was made
    /// the same way: a clone of its base, or a copy).
    fn method(&self) -> Method;
    /// Creates the new file `dst` holding what `src` holds now, fsynced.
    fn snapshot(&self, src: &Path, dst: &Path) -> Result<Method>;
    /// Makes the existing file `dst` equal to `src`, in place (same inode), fsynced.
    fn restore(&self, src: &Path, dst: &Path) -> Result<()>;
    /// Whether [`Backend::changed_in_windows`] can compare these two snapshots (else only
    /// hashing can tell where they differ; by default it cannot).
    fn compares(&self, _base: &SnapshotFiles, _new: &SnapshotFiles) -> bool {
        false
    }
    /// The byte ranges where snapshot `new` may differ from snapshot `base`, handed to `emit`
    /// a window of the files at a time, in order; `emit` returns false to stop. Only where
    /// [`Backend::compares`] says so.
    fn changed_in_windows(
        &self,
        _base: &SnapshotFiles,
        _new: &SnapshotFiles,
        _window: u64,
        _emit: &mut dyn FnMut(Vec<(u64, u64)>) -> bool,
    ) -> Result<()> {
        Err(StoreError::Invalid(format!(
            "the {} backend compares snapshots by hashing them",
            self.name()
        )))
    }
    /// All of [`Backend::changed_in_windows`], merged; `None` when only hashing can tell.
    fn changed(
        &self,
        base: &SnapshotFiles,
        new: &SnapshotFiles,
    ) -> Result<Option<Vec<(u64, u64)>>> {
        if !self.compares(base, new) {
            return Ok(None);
        }
        let mut out = Vec::new();
        self.changed_in_windows(base, new, diff::WINDOW, &mut |w| {
            w.into_iter().for_each(|r| diff::push_merged(&mut out, r));
            true
        })?;
        Ok(Some(out))
    }
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

pub(super) fn create_new(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .ctx("create", path)
}

pub(super) fn copy_snapshot(src: &Path, dst: &Path) -> Result<Method> {
    let s = File::open(src).ctx("open", src)?;
    let d = create_new(dst)?;
    fsx::sparse_copy(&s, &d).ctx("copy to", dst)?;
    d.sync_all().ctx("fsync", dst)?;
    Ok(Method::Copy)
}

pub(super) fn overwrite(src: &Path, dst: &Path) -> Result<()> {
    let s = File::open(src).ctx("open", src)?;
    let d = OpenOptions::new().write(true).open(dst).ctx("open", dst)?;
    fsx::overwrite_sparse(&s, &d).ctx("overwrite", dst)?;
    d.sync_all().ctx("fsync", dst)
}

impl Backend for ReflinkBackend {
    fn name(&self) -> &'static str {
        "reflink"
    }
    fn method(&self) -> Method {
        Method::Clone
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
    fn compares(&self, base: &SnapshotFiles, new: &SnapshotFiles) -> bool {
        base.method == Method::Clone && new.method == Method::Clone
    }
    fn changed_in_windows(
        &self,
        base: &SnapshotFiles,
        new: &SnapshotFiles,
        window: u64,
        emit: &mut dyn FnMut(Vec<(u64, u64)>) -> bool,
    ) -> Result<()> {
        if !self.compares(base, new) {
            return Err(StoreError::Invalid(
                "copied snapshots are compared by hashing them".into(),
            ));
        }
        let a = File::open(&base.image).ctx("open", &base.image)?;
        let b = File::open(&new.image).ctx("open", &new.image)?;
        diff::fiemap_diff_windows(&a, &b, (base.size, new.size), window, emit)
            .ctx("map extents of", &new.image)
    }
}

impl Backend for CopyBackend {
    fn name(&self) -> &'static str {
        "copy"
    }
    fn method(&self) -> Method {
        Method::Copy
    }
    fn snapshot(&self, src: &Path, dst: &Path) -> Result<Method> {
        copy_snapshot(src, dst)
    }
    fn restore(&self, src: &Path, dst: &Path) -> Result<()> {
        overwrite(src, dst)
    }
}
