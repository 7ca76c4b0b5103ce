//! Thin wrappers over the Linux file interfaces the store needs: FICLONE, FIEMAP,
//! SEEK_DATA/SEEK_HOLE, hole punching, copy_file_range, flock, and crash-safe replacement
//! (temporary name, fsync, rename, fsync of the directory).

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Clones all of `src` into `dst` (an existing, writable file) with FICLONE.
pub fn ficlone(src: &File, dst: &File) -> io::Result<()> {
    // SAFETY: plain ioctl on two open descriptors; no memory is passed.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether an error from FICLONE means "this filesystem or pair of files cannot share extents".
pub fn is_clone_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP)
            | Some(libc::ENOTTY)
            | Some(libc::EXDEV)
            | Some(libc::EINVAL)
            | Some(libc::ENOSYS)
    )
}

/// One extent as FIEMAP reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
    pub flags: u32,
}

pub const FIEMAP_EXTENT_LAST: u32 = 0x1;
pub const FIEMAP_EXTENT_UNKNOWN: u32 = 0x2;
pub const FIEMAP_EXTENT_DELALLOC: u32 = 0x4;
pub const FIEMAP_EXTENT_ENCODED: u32 = 0x8;
pub const FIEMAP_EXTENT_NOT_ALIGNED: u32 = 0x100;
pub const FIEMAP_EXTENT_DATA_INLINE: u32 = 0x200;
pub const FIEMAP_EXTENT_DATA_TAIL: u32 = 0x400;
pub const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
const FIEMAP_FLAG_SYNC: u32 = 0x1;
const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_HEADER: usize = 32;
const FIEMAP_EXTENT_SIZE: usize = 56;
const FIEMAP_BATCH: usize = 512;

/// The extents of `file` that intersect `[start, start + len)`, in logical order.
pub fn fiemap(file: &File, start: u64, len: u64) -> io::Result<Vec<Extent>> {
    let mut out = Vec::new();
    let end = start.saturating_add(len);
    let mut cur = start;
    // u64 storage keeps the buffer aligned for the kernel's u64 fields.
    let mut buf = vec![0u64; (FIEMAP_HEADER + FIEMAP_EXTENT_SIZE * FIEMAP_BATCH) / 8];
    while cur < end {
        buf.iter_mut().for_each(|w| *w = 0);
        buf[0] = cur; // fm_start
        buf[1] = end - cur; // fm_length
                            // fm_flags (u32) and fm_mapped_extents (u32) share word 2; fm_extent_count is word 3 low.
        buf[2] = FIEMAP_FLAG_SYNC as u64;
        buf[3] = FIEMAP_BATCH as u64;
        // SAFETY: buf is large enough for the header and FIEMAP_BATCH extents, and aligned.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, buf.as_mut_ptr()) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        let mapped = (buf[2] >> 32) as usize;
        if mapped == 0 {
            break;
        }
        let mut last = false;
        for i in 0..mapped.min(FIEMAP_BATCH) {
            let w = (FIEMAP_HEADER + i * FIEMAP_EXTENT_SIZE) / 8;
            let e = Extent {
                logical: buf[w],
                physical: buf[w + 1],
                length: buf[w + 2],
                flags: (buf[w + 5] & 0xffff_ffff) as u32,
            };
            last = e.flags & FIEMAP_EXTENT_LAST != 0;
            cur = e.logical + e.length;
            out.push(e);
        }
        if last {
            break;
        }
    }
    Ok(out)
}

/// The data (non-hole) ranges of `file` below `size`, as `(start, end)`, via SEEK_DATA/SEEK_HOLE.
/// Filesystems without hole support report one range covering everything.
pub fn data_ranges(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        // SAFETY: lseek on an open descriptor.
        let d = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if d < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENXIO) => break,
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => {
                    out.push((pos, size));
                    break;
                }
                _ => return Err(e),
            }
        }
        let d = d as u64;
        if d >= size {
            break;
        }
        // SAFETY: as above.
        let h = unsafe { libc::lseek(fd, d as libc::off_t, libc::SEEK_HOLE) };
        if h < 0 {
            return Err(io::Error::last_os_error());
        }
        let h = (h as u64).min(size);
        out.push((d, h));
        pos = h;
    }
    Ok(out)
}

/// Deallocates `[off, off + len)` so it reads as zeros; writes zeros where punching is not
/// supported.
pub fn punch_hole(file: &File, off: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate on an open descriptor.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if !matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
    ) {
        return Err(e);
    }
    let zeros = vec![0u8; 1 << 20];
    let mut at = off;
    while at < off + len {
        let n = (off + len - at).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Copies `[off, off + len)` from `src` to the same offsets of `dst`, in the kernel where it can.
pub fn copy_range(src: &File, dst: &File, off: u64, len: u64) -> io::Result<()> {
    copy_between(src, off, dst, off, len)
}

/// Copies `len` bytes from `src` at `src_off` to `dst` at `dst_off` with copy_file_range, which
/// shares the extents instead of copying where the filesystem can (XFS, btrfs, aligned
/// ranges); falls back to reading and writing.
pub fn copy_between(
    src: &File,
    src_off: u64,
    dst: &File,
    dst_off: u64,
    len: u64,
) -> io::Result<()> {
    let mut done = 0u64;
    while done < len {
        let mut so = (src_off + done) as libc::loff_t;
        let mut dof = (dst_off + done) as libc::loff_t;
        let want = (len - done).min(1 << 30) as usize;
        // SAFETY: copy_file_range between two open descriptors with explicit offsets.
        let n = unsafe {
            libc::copy_file_range(src.as_raw_fd(), &mut so, dst.as_raw_fd(), &mut dof, want, 0)
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.raw_os_error(),
                Some(libc::EXDEV)
                    | Some(libc::EINVAL)
                    | Some(libc::ENOSYS)
                    | Some(libc::EOPNOTSUPP)
            ) {
                return copy_between_userspace(
                    src,
                    src_off + done,
                    dst,
                    dst_off + done,
                    len - done,
                );
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "source ended early",
            ));
        }
        done += n as u64;
    }
    Ok(())
}

fn copy_between_userspace(
    src: &File,
    src_off: u64,
    dst: &File,
    dst_off: u64,
    len: u64,
) -> io::Result<()> {
    let mut buf = vec![0u8; len.min(1 << 20) as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], src_off + done)?;
        dst.write_all_at(&buf[..n], dst_off + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Makes `dst` (a new file) a sparse copy of `src`: data ranges copied, holes left as holes.
pub fn sparse_copy(src: &File, dst: &File) -> io::Result<()> {
    let size = src.metadata()?.len();
    dst.set_len(0)?;
    dst.set_len(size)?;
    for (s, e) in data_ranges(src, size)? {
        copy_range(src, dst, s, e - s)?;
    }
    Ok(())
}

/// Overwrites `dst` in place so it equals `src` (same inode; holes punched where `src` has them).
pub fn overwrite_sparse(src: &File, dst: &File) -> io::Result<()> {
    let size = src.metadata()?.len();
    let ranges = data_ranges(src, size)?;
    let mut pos = 0u64;
    for &(s, e) in &ranges {
        if s > pos {
            punch_hole(dst, pos, s - pos)?;
        }
        copy_range(src, dst, s, e - s)?;
        pos = e;
    }
    if pos < size {
        punch_hole(dst, pos, size - pos)?;
    }
    dst.set_len(size)
}

/// Makes `dst` a copy of `src`: a clone where the filesystem can, else a byte copy; fsynced.
pub fn clone_or_copy(src: &Path, dst: &Path) -> io::Result<()> {
    let s = File::open(src)?;
    let d = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dst)?;
    match ficlone(&s, &d) {
        Ok(()) => {}
        Err(e) if is_clone_unsupported(&e) => sparse_copy(&s, &d)?,
        Err(e) => return Err(e),
    }
    d.sync_all()
}

/// Fsyncs a directory, making renames and creations inside it durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` crash-safely: temporary file beside it, fsync, rename, fsync dir.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fsync_dir(dir)
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Renames and makes the rename durable.
pub fn rename_durable(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    if let Some(d) = to.parent() {
        fsync_dir(d)?;
    }
    if let (Some(a), Some(b)) = (from.parent(), to.parent()) {
        if a != b {
            fsync_dir(a)?;
        }
    }
    Ok(())
}

/// An advisory lock (flock) held while the value lives.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
    pub path: PathBuf,
}

impl FileLock {
    /// Blocks until the exclusive lock on `path` (created if missing) is held.
    pub fn exclusive(path: &Path) -> io::Result<FileLock> {
        Self::take(path, libc::LOCK_EX).map(|l| l.expect("blocking flock returns a lock"))
    }

    /// Takes the exclusive lock if free; `None` if another process holds it.
    pub fn try_exclusive(path: &Path) -> io::Result<Option<FileLock>> {
        Self::take(path, libc::LOCK_EX | libc::LOCK_NB)
    }

    fn take(path: &Path, op: libc::c_int) -> io::Result<Option<FileLock>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        loop {
            // SAFETY: flock on an open descriptor.
            let r = unsafe { libc::flock(file.as_raw_fd(), op) };
            if r == 0 {
                return Ok(Some(FileLock {
                    _file: file,
                    path: path.to_owned(),
                }));
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => return Ok(None),
                _ => return Err(e),
            }
        }
    }
}

/// The filesystem type holding `path`, by name where known.
pub fn fs_type(path: &Path) -> String {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return "unknown".into();
    };
    // SAFETY: statfs fills a zeroed struct for a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "unknown".into();
    }
    match st.f_type as i64 {
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0xEF53 => "ext4".into(),
        0x0102_1994 => "tmpfs".into(),
        0x794C_7630 => "overlayfs".into(),
        0x6969 => "nfs".into(),
        0x2FC1_2FC1 => "zfs".into(),
        0xF2F5_2010 => "f2fs".into(),
        other => format!("filesystem 0x{other:x}"),
    }
}

/// Whether files in `dir` can be cloned with FICLONE (tries it on two scratch files of one
/// block). On a full filesystem it tries two empty files instead, which need no data blocks
/// (filesystems refuse FICLONE before they look at the length), so that a full disk can
/// still be inspected and freed.
pub fn probe_reflink(dir: &Path) -> io::Result<bool> {
    match probe_with(dir, 4096) {
        Err(e) if is_no_space(&e) => probe_with(dir, 0),
        other => other,
    }
}

fn probe_with(dir: &Path, len: usize) -> io::Result<bool> {
    let a = dir.join(format!(".probe-{}-a", std::process::id()));
    let b = dir.join(format!(".probe-{}-b", std::process::id()));
    let res = (|| {
        let mut fa = File::create(&a)?;
        fa.write_all(&vec![0x5a; len])?;
        fa.sync_all()?;
        let fa = File::open(&a)?;
        let fb = File::create(&b)?;
        match ficlone(&fa, &fb) {
            Ok(()) => Ok(true),
            Err(e) if is_clone_unsupported(&e) => Ok(false),
            Err(e) => Err(e),
        }
    })();
    let _ = fs::remove_file(&a);
    let _ = fs::remove_file(&b);
    res
}

/// Free and total bytes of the filesystem holding `dir`.
pub fn space(dir: &std::path::Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return (0, 0);
    };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a zeroed out-parameter of the right type.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return (0, 0);
    }
    let f = st.f_frsize as u64;
    (st.f_bavail as u64 * f, st.f_blocks as u64 * f)
}

/// Whether `e` says the filesystem (or the quota) is full.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Opens `path` for reading with O_DIRECT if `want_direct` and the filesystem allows it.
/// Returns the file and whether O_DIRECT is in effect.
pub fn open_for_read(path: &Path, want_direct: bool) -> io::Result<(File, bool)> {
    if want_direct {
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
        {
            Ok(f) => return Ok((f, true)),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((File::open(path)?, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_ranges_and_sparse_copy() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("f");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .expect("open");
        f.set_len(10 << 20).expect("len");
        f.write_all_at(&[1u8; 8192], 1 << 20).expect("write");
        f.write_all_at(&[2u8; 4096], 5 << 20).expect("write");
        let r = data_ranges(&f, 10 << 20).expect("ranges");
        let covered: u64 = r.iter().map(|(s, e)| e - s).sum();
        assert!((12288..(10 << 20)).contains(&covered), "{r:?}");
        let q = dir.path().join("g");
        let g = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&q)
            .expect("open");
        sparse_copy(&f, &g).expect("copy");
        assert_eq!(fs::read(&p).expect("read"), fs::read(&q).expect("read"));
        // Overwrite in place back to a different content.
        g.write_all_at(&[9u8; 100], 3 << 20).expect("write");
        overwrite_sparse(&f, &g).expect("overwrite");
        assert_eq!(fs::read(&p).expect("read"), fs::read(&q).expect("read"));
    }

    #[test]
    fn atomic_write_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x.json");
        atomic_write(&p, b"one").expect("write");
        atomic_write(&p, b"two").expect("write");
        assert_eq!(fs::read(&p).expect("read"), b"two");
        assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 1);
    }

    #[test]
    fn locks_exclude() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("lock");
        let a = FileLock::exclusive(&p).expect("lock");
        assert!(FileLock::try_exclusive(&p).expect("try").is_none());
        drop(a);
        assert!(FileLock::try_exclusive(&p).expect("try").is_some());
    }
}
