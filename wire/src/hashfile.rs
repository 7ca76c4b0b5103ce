//! On-disk format of manifests and leaf indexes.
//!
//! ```text
//! offset size  field
//!      0    8  magic  "FERRYHF\0"
//!      8    2  version (u16 LE), currently 1
//!     10    2  kind    (u16 LE): 1 = manifest (one BLAKE3 hash per block)
//!                                2 = leaf index (one chaining value per 16 KiB leaf of full blocks)
//!     12    4  block size (u32 LE)
//!     16    8  volume size in bytes (u64 LE)
//!     24    8  entry count (u64 LE), derived from the two sizes and checked
//!     32   32  root: `hash::manifest_root` / `hash::leaves_root` over the entries
//!     64   64  reserved, zero
//!    128  32n  entries
//! ```
//! The header size is checked at compile time. A file is verified when opened: magic, version,
//! kind, geometry, length and root; a torn or bit-flipped file is refused, never half-read.
//! Files are written under a temporary name and renamed into place by the agent, so a reader
//! never sees a partial file. A future version 2 would be read by converting in [`Header::decode`].

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

use memmap2::{Mmap, MmapMut};

use crate::hash::{
    check_block_size, entries_root, BlockHash, Geometry, LEAVES_ROOT, MANIFEST_ROOT,
};

/// File magic.
pub const MAGIC: [u8; 8] = *b"FERRYHF\0";
/// Current format version.
pub const VERSION: u16 = 1;
/// Header size in bytes.
pub const HEADER_SIZE: usize = 128;
/// Entry size in bytes.
pub const ENTRY_SIZE: usize = 32;

/// The header as laid out on disk; only byte arrays, so no padding.
#[repr(C)]
struct RawHeader {
    magic: [u8; 8],
    version: [u8; 2],
    kind: [u8; 2],
    block_size: [u8; 4],
    volume_size: [u8; 8],
    count: [u8; 8],
    root: [u8; 32],
    reserved: [u8; 64],
}
const _: () = assert!(std::mem::size_of::<RawHeader>() == HEADER_SIZE);

/// What a hash file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One BLAKE3 hash per block (the last block may be partial).
    Manifest,
    /// One chaining value per 16 KiB leaf of the full blocks.
    Leaves,
}

impl Kind {
    fn code(self) -> u16 {
        match self {
            Kind::Manifest => 1,
            Kind::Leaves => 2,
        }
    }
    fn from_code(c: u16) -> Option<Self> {
        match c {
            1 => Some(Kind::Manifest),
            2 => Some(Kind::Leaves),
            _ => None,
        }
    }
    /// Number of entries for a geometry.
    pub fn entry_count(self, g: &Geometry) -> u64 {
        match self {
            Kind::Manifest => g.block_count(),
            Kind::Leaves => g.leaf_count(),
        }
    }
    fn root(self, g: &Geometry, entries: &[u8]) -> BlockHash {
        self.root_of_parts(g, [entries])
    }
    fn root_of_parts<'a>(
        self,
        g: &Geometry,
        parts: impl IntoIterator<Item = &'a [u8]>,
    ) -> BlockHash {
        let context = match self {
            Kind::Manifest => MANIFEST_ROOT,
            Kind::Leaves => LEAVES_ROOT,
        };
        entries_root(context, g.block_size, g.volume_size, parts)
    }
}

/// Why a hash file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("file is {0} bytes, shorter than the {HEADER_SIZE}-byte header")]
    TooShort(u64),
    #[error("bad magic: not a ferry hash file")]
    BadMagic,
    #[error("format version {0} is not supported (this build reads version {VERSION})")]
    UnsupportedVersion(u16),
    #[error("unknown kind {0}")]
    UnknownKind(u16),
    #[error("expected a {want:?} file, found a {got:?} file")]
    WrongKind { want: Kind, got: Kind },
    #[error("bad block size {0}")]
    BadBlockSize(u32),
    #[error("entry count {got} does not match the geometry (expected {want})")]
    CountMismatch { want: u64, got: u64 },
    #[error("file length {got} does not match its header (expected {want})")]
    LengthMismatch { want: u64, got: u64 },
    #[error("root hash mismatch: the entries are corrupt")]
    RootMismatch,
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub geometry: Geometry,
    pub count: u64,
    pub root: BlockHash,
}

impl Header {
    /// Encodes the header into its 128 bytes.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let raw = RawHeader {
            magic: MAGIC,
            version: VERSION.to_le_bytes(),
            kind: self.kind.code().to_le_bytes(),
            block_size: self.geometry.block_size.to_le_bytes(),
            volume_size: self.geometry.volume_size.to_le_bytes(),
            count: self.count.to_le_bytes(),
            root: self.root.0,
            reserved: [0; 64],
        };
        let mut out = [0u8; HEADER_SIZE];
        let mut at = 0;
        for part in [
            &raw.magic[..],
            &raw.version,
            &raw.kind,
            &raw.block_size,
            &raw.volume_size,
            &raw.count,
            &raw.root,
            &raw.reserved,
        ] {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        out
    }

    /// Decodes and checks a header (not the entries).
    pub fn decode(b: &[u8]) -> Result<Self, FormatError> {
        if b.len() < HEADER_SIZE {
            return Err(FormatError::TooShort(b.len() as u64));
        }
        let arr = |r: std::ops::Range<usize>| &b[r];
        if arr(0..8) != MAGIC {
            return Err(FormatError::BadMagic);
        }
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(x)
        };
        let version = u16_at(8);
        if version != VERSION {
            return Err(FormatError::UnsupportedVersion(version));
        }
        let kind_code = u16_at(10);
        let kind = Kind::from_code(kind_code).ok_or(FormatError::UnknownKind(kind_code))?;
        let block_size = u32_at(12);
        check_block_size(block_size as u64).map_err(|_| FormatError::BadBlockSize(block_size))?;
        let geometry = Geometry {
            block_size,
            volume_size: u64_at(16),
        };
        let count = u64_at(24);
        let want = kind.entry_count(&geometry);
        if count != want {
            return Err(FormatError::CountMismatch { want, got: count });
        }
        let mut root = [0u8; 32];
        root.copy_from_slice(&b[32..64]);
        Ok(Header {
            kind,
            geometry,
            count,
            root: BlockHash(root),
        })
    }

    fn file_len(&self) -> u64 {
        HEADER_SIZE as u64 + self.count * ENTRY_SIZE as u64
    }
}

/// A verified, memory-mapped hash file, read-only.
pub struct HashFile {
    map: Mmap,
    header: Header,
}

impl std::fmt::Debug for HashFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashFile")
            .field("header", &self.header)
            .finish()
    }
}

impl HashFile {
    /// Opens, maps and verifies a hash file of the expected kind.
    pub fn open(path: &Path, want: Kind) -> Result<Self, FormatError> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        if len < HEADER_SIZE as u64 {
            return Err(FormatError::TooShort(len));
        }
        // SAFETY: hash files are written once under a temporary name and renamed into place;
        // nothing writes to a committed file, so the mapping does not change under us.
        let map = unsafe { Mmap::map(&file)? };
        let header = Header::decode(&map)?;
        if header.kind != want {
            return Err(FormatError::WrongKind {
                want,
                got: header.kind,
            });
        }
        if header.file_len() != len {
            return Err(FormatError::LengthMismatch {
                want: header.file_len(),
                got: len,
            });
        }
        let hf = HashFile { map, header };
        if header.kind.root(&header.geometry, hf.entries()) != header.root {
            return Err(FormatError::RootMismatch);
        }
        Ok(hf)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }
    pub fn geometry(&self) -> Geometry {
        self.header.geometry
    }
    pub fn root(&self) -> BlockHash {
        self.header.root
    }
    pub fn len(&self) -> u64 {
        self.header.count
    }
    pub fn is_empty(&self) -> bool {
        self.header.count == 0
    }
    /// All entries, concatenated.
    pub fn entries(&self) -> &[u8] {
        &self.map[HEADER_SIZE..]
    }
    /// Entry `i`.
    pub fn entry(&self, i: u64) -> [u8; 32] {
        let at = HEADER_SIZE + i as usize * ENTRY_SIZE;
        let mut e = [0u8; 32];
        e.copy_from_slice(&self.map[at..at + ENTRY_SIZE]);
        e
    }
    /// Entry `i` as a block hash.
    pub fn hash(&self, i: u64) -> BlockHash {
        BlockHash(self.entry(i))
    }
}

/// Writes a hash file in place through a writable mapping. The caller chooses the (temporary)
/// path, fills the entries, then calls [`HashFileWriter::finish`], which computes the root,
/// writes the header and syncs the file.
pub struct HashFileWriter {
    file: File,
    map: MmapMut,
    kind: Kind,
    geometry: Geometry,
    /// For a patch of a clone: the file it was cloned from, and which [`PATCH_PAGE`]s of
    /// this one have been written since. Untouched entries are read from the base, whose
    /// pages are in the page cache, rather than from the clone, whose pages are not (a
    /// clone shares the base's blocks on disk, not its cached pages): the root of a 32 GiB
    /// volume's 64 MiB leaf index otherwise reads the whole clone back from disk.
    base: Option<(Mmap, Vec<u64>)>,
}

/// Bytes of the file per bit of a patch's written-pages map.
const PATCH_PAGE: usize = 4096;
// Entries start after the header and never cross a page: an entry is in one page.
const _: () = assert!(HEADER_SIZE % ENTRY_SIZE == 0 && PATCH_PAGE % ENTRY_SIZE == 0);

impl HashFileWriter {
    /// Creates (or truncates) `path` sized for `geometry`; entries start zeroed.
    pub fn create(path: &Path, kind: Kind, geometry: Geometry) -> Result<Self, FormatError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        let count = kind.entry_count(&geometry);
        file.set_len(HEADER_SIZE as u64 + count * ENTRY_SIZE as u64)?;
        Self::map(file, kind, geometry)
    }

    /// Opens an existing file (typically a clone of the base snapshot's file) to patch its
    /// entries. Its header must describe the same kind and geometry; its root is not trusted
    /// and is recomputed by `finish`.
    pub fn patch(path: &Path, kind: Kind, geometry: Geometry) -> Result<Self, FormatError> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let mut head = [0u8; HEADER_SIZE];
        use std::os::unix::fs::FileExt;
        file.read_exact_at(&mut head, 0)?;
        let h = Header::decode(&head)?;
        if h.kind != kind {
            return Err(FormatError::WrongKind {
                want: kind,
                got: h.kind,
            });
        }
        if h.geometry != geometry || file.metadata()?.len() != h.file_len() {
            return Err(FormatError::LengthMismatch {
                want: HEADER_SIZE as u64 + kind.entry_count(&geometry) * ENTRY_SIZE as u64,
                got: file.metadata()?.len(),
            });
        }
        Self::map(file, kind, geometry)
    }

    /// [`HashFileWriter::patch`] of `path`, a clone (or copy) of `base` made by the caller:
    /// entries not set since are read from `base`, which must be the committed file the clone
    /// was made from (same header) and must not change while the writer lives.
    pub fn patch_of(
        path: &Path,
        base: &Path,
        kind: Kind,
        geometry: Geometry,
    ) -> Result<Self, FormatError> {
        let mut w = Self::patch(path, kind, geometry)?;
        let file = File::open(base)?;
        // SAFETY: committed hash files are never written again (see `HashFile::open`).
        let map = unsafe { Mmap::map(&file)? };
        if map.len() != w.map.len() || map[..HEADER_SIZE] != w.map[..HEADER_SIZE] {
            return Err(FormatError::LengthMismatch {
                want: w.map.len() as u64,
                got: map.len() as u64,
            });
        }
        let pages = w.map.len().div_ceil(PATCH_PAGE);
        w.base = Some((map, vec![0; pages.div_ceil(64)]));
        Ok(w)
    }

    fn map(file: File, kind: Kind, geometry: Geometry) -> Result<Self, FormatError> {
        // SAFETY: the file is private to this writer until it is renamed into place.
        let map = unsafe { MmapMut::map_mut(&file)? };
        Ok(HashFileWriter {
            file,
            map,
            kind,
            geometry,
            base: None,
        })
    }

    /// All entries, writable (a patch stops reading from its base).
    pub fn entries_mut(&mut self) -> &mut [u8] {
        self.base = None;
        &mut self.map[HEADER_SIZE..]
    }
    /// Sets entry `i`.
    pub fn set(&mut self, i: u64, e: &[u8; 32]) {
        let at = HEADER_SIZE + i as usize * ENTRY_SIZE;
        self.map[at..at + ENTRY_SIZE].copy_from_slice(e);
        if let Some((_, written)) = &mut self.base {
            let p = at / PATCH_PAGE;
            written[p / 64] |= 1 << (p % 64);
        }
    }
    /// Entry `i`.
    pub fn get(&self, i: u64) -> [u8; 32] {
        let at = HEADER_SIZE + i as usize * ENTRY_SIZE;
        let mut e = [0u8; 32];
        e.copy_from_slice(&self.source(at)[at..at + ENTRY_SIZE]);
        e
    }

    /// Where the bytes of the page holding offset `at` are current: this file's map, or the
    /// base's when the page has not been written since the clone.
    fn source(&self, at: usize) -> &[u8] {
        match &self.base {
            Some((base, written)) => {
                let p = at / PATCH_PAGE;
                match written[p / 64] & (1 << (p % 64)) {
                    0 => base,
                    _ => &self.map,
                }
            }
            None => &self.map,
        }
    }

    /// The entries as runs of pages of one source each, in order.
    fn entry_parts(&self) -> Vec<&[u8]> {
        let len = self.map.len();
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut start = HEADER_SIZE;
        while start < len {
            let src = self.source(start);
            let mut end = (start / PATCH_PAGE + 1) * PATCH_PAGE;
            while end < len && std::ptr::eq(self.source(end), src) {
                end += PATCH_PAGE;
            }
            let end = end.min(len);
            parts.push(&src[start..end]);
            start = end;
        }
        parts
    }

    /// Computes the root, writes the header, flushes and fsyncs. Returns the root.
    pub fn finish(mut self) -> Result<BlockHash, FormatError> {
        let root = self.kind.root_of_parts(&self.geometry, self.entry_parts());
        let header = Header {
            kind: self.kind,
            geometry: self.geometry,
            count: self.kind.entry_count(&self.geometry),
            root,
        };
        self.map[..HEADER_SIZE].copy_from_slice(&header.encode());
        self.map.flush()?;
        self.file.sync_all()?;
        Ok(root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, kind: Kind, g: Geometry) -> std::path::PathBuf {
        let p = dir.join(name);
        let mut w = HashFileWriter::create(&p, kind, g).expect("create");
        for i in 0..kind.entry_count(&g) {
            w.set(i, BlockHash::of(&i.to_le_bytes()).as_ref_bytes());
        }
        w.finish().expect("finish");
        p
    }

    trait Bytes {
        fn as_ref_bytes(&self) -> &[u8; 32];
    }
    impl Bytes for BlockHash {
        fn as_ref_bytes(&self) -> &[u8; 32] {
            &self.0
        }
    }

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = Geometry::new(65536, 65536 * 10 + 7).expect("geometry");
        let p = write(dir.path(), "m", Kind::Manifest, g);
        let hf = HashFile::open(&p, Kind::Manifest).expect("open");
        assert_eq!(hf.len(), 11);
        assert_eq!(hf.hash(3), BlockHash::of(&3u64.to_le_bytes()));
        assert_eq!(
            hf.root(),
            crate::hash::manifest_root(65536, 65536 * 10 + 7, hf.entries())
        );
        assert!(matches!(
            HashFile::open(&p, Kind::Leaves),
            Err(FormatError::WrongKind { .. })
        ));

        // Bit flip in an entry.
        let mut bytes = std::fs::read(&p).expect("read");
        bytes[HEADER_SIZE + 40] ^= 1;
        std::fs::write(&p, &bytes).expect("write");
        assert!(matches!(
            HashFile::open(&p, Kind::Manifest),
            Err(FormatError::RootMismatch)
        ));

        // Truncation.
        bytes[HEADER_SIZE + 40] ^= 1;
        std::fs::write(&p, &bytes[..bytes.len() - 1]).expect("write");
        assert!(matches!(
            HashFile::open(&p, Kind::Manifest),
            Err(FormatError::LengthMismatch { .. })
        ));
        std::fs::write(&p, &bytes[..100]).expect("write");
        assert!(matches!(
            HashFile::open(&p, Kind::Manifest),
            Err(FormatError::TooShort(100))
        ));

        // Header fields.
        let mut bad = bytes.clone();
        bad[0] = b'X';
        std::fs::write(&p, &bad).expect("write");
        assert!(matches!(
            HashFile::open(&p, Kind::Manifest),
            Err(FormatError::BadMagic)
        ));
        let mut bad = bytes.clone();
        bad[8] = 9;
        std::fs::write(&p, &bad).expect("write");
        assert!(matches!(
            HashFile::open(&p, Kind::Manifest),
            Err(FormatError::UnsupportedVersion(9))
        ));
        let mut bad = bytes.clone();
        bad[24] ^= 1;
        std::fs::write(&p, &bad).expect("write");
        assert!(matches!(
            HashFile::open(&p, Kind::Manifest),
            Err(FormatError::CountMismatch { .. })
        ));
        let mut bad = bytes.clone();
        bad[12..16].copy_from_slice(&1000u32.to_le_bytes());
        std::fs::write(&p, &bad).expect("write");
        assert!(matches!(
            HashFile::open(&p, Kind::Manifest),
            Err(FormatError::BadBlockSize(1000))
        ));
    }

    #[test]
    fn patch_recomputes_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = Geometry::new(65536, 65536 * 4).expect("geometry");
        let p = write(dir.path(), "l", Kind::Leaves, g);
        let before = HashFile::open(&p, Kind::Leaves).expect("open").root();
        let mut w = HashFileWriter::patch(&p, Kind::Leaves, g).expect("patch");
        w.set(5, &[9u8; 32]);
        let after = w.finish().expect("finish");
        assert_ne!(before, after);
        let hf = HashFile::open(&p, Kind::Leaves).expect("open");
        assert_eq!(hf.entry(5), [9u8; 32]);
        assert_eq!(hf.root(), after);
        let other = Geometry::new(65536, 65536 * 5).expect("geometry");
        assert!(HashFileWriter::patch(&p, Kind::Leaves, other).is_err());
        // An empty file (zero blocks) is valid.
        let e = write(
            dir.path(),
            "e",
            Kind::Manifest,
            Geometry::new(65536, 0).expect("g"),
        );
        assert!(HashFile::open(&e, Kind::Manifest).expect("open").is_empty());
        let mut f = File::create(dir.path().join("junk")).expect("create");
        f.write_all(&[0u8; 300]).expect("write");
        assert!(HashFile::open(&dir.path().join("junk"), Kind::Manifest).is_err());
    }

    /// A patch of a clone reads the entries it did not set from the base, and its root and
    /// entries are exactly those of the patched file read whole: entries in the header's
    /// page, across a page boundary, the last one, none at all.
    #[test]
    fn a_patch_of_a_clone_reads_untouched_entries_from_the_base() {
        let dir = tempfile::tempdir().expect("tempdir");
        // 1,000 leaves: 32,128 bytes, eight 4 KiB pages, the last one partial.
        let g = Geometry::new(65536, 65536 * 250).expect("geometry");
        let base = write(dir.path(), "base", Kind::Leaves, g);
        let n = Kind::Leaves.entry_count(&g);
        let at_boundary = (PATCH_PAGE - HEADER_SIZE) as u64 / 32; // first entry of page 1
        let cases: [&[u64]; 5] = [
            &[],
            &[0, 1],
            &[at_boundary - 1, at_boundary],
            &[n - 1],
            &[3, 200, 517, at_boundary * 3, n - 2],
        ];
        for (k, set) in cases.iter().enumerate() {
            let clone = dir.path().join(format!("clone-{k}"));
            std::fs::copy(&base, &clone).expect("copy");
            let mut w = HashFileWriter::patch_of(&clone, &base, Kind::Leaves, g).expect("patch_of");
            for &i in *set {
                w.set(i, &[i as u8 ^ 0x5a; 32]);
            }
            for i in 0..n {
                let want = match set.contains(&i) {
                    true => [i as u8 ^ 0x5a; 32],
                    false => *BlockHash::of(&i.to_le_bytes()).as_ref_bytes(),
                };
                assert_eq!(w.get(i), want, "case {k}, entry {i}");
            }
            let root = w.finish().expect("finish");
            let hf = HashFile::open(&clone, Kind::Leaves).expect("open whole");
            assert_eq!(hf.root(), root, "case {k}");
            for &i in *set {
                assert_eq!(hf.entry(i), [i as u8 ^ 0x5a; 32]);
            }
        }
        // A base that is not what the clone was made from is refused.
        let other = write(
            dir.path(),
            "other",
            Kind::Leaves,
            Geometry::new(65536, 65536 * 7).expect("geometry"),
        );
        let clone = dir.path().join("clone-x");
        std::fs::copy(&base, &clone).expect("copy");
        assert!(HashFileWriter::patch_of(&clone, &other, Kind::Leaves, g).is_err());
    }
}
