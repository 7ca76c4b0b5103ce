//! Block hashing.
//!
//! A volume is cut into fixed-size *blocks* (the dedup and transfer unit, a power of two from
//! 16 KiB to 16 MiB, 64 KiB by default) and each block into 16 KiB *leaves*. A block's hash is
//! the plain BLAKE3 hash of its bytes; internally BLAKE3 is a binary tree of 1 KiB chunks, so
//! the hash of a block can also be put together from the chaining values (CVs) of its leaves,
//! which are aligned complete subtrees. Keeping the leaf CVs of a snapshot lets the next snapshot
//! re-hash a block by reading only the leaves that changed. 16 KiB is 16 chunks, the width at
//! which BLAKE3's SIMD code runs at full speed, so computing leaf CVs costs about the same as
//! hashing whole blocks (4 KiB leaves would halve hashing throughput).
//!
//! The last block of a volume may be shorter than the block size; it has no leaves and is always
//! hashed whole.

use std::fmt;

use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode};
use serde::{Deserialize, Serialize};

/// Size of a leaf, the unit of partial re-hashing.
pub const LEAF_SIZE: usize = 16 * 1024;
/// Smallest block size accepted.
pub const MIN_BLOCK_SIZE: u32 = LEAF_SIZE as u32;
/// Largest block size accepted.
pub const MAX_BLOCK_SIZE: u32 = 16 << 20;
/// Default block size (chosen by `benches/`, see README).
pub const DEFAULT_BLOCK_SIZE: u32 = 64 << 10;

/// A leaf chaining value (or, for single-leaf blocks, the block hash itself).
pub type LeafCv = [u8; 32];

/// The BLAKE3 hash of one block.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlockHash(pub [u8; 32]);

impl BlockHash {
    /// Hashes `data` directly.
    pub fn of(data: &[u8]) -> Self {
        BlockHash(*blake3::hash(data).as_bytes())
    }

    /// Lower-case hex, as `b3sum` prints it.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        blake3::Hash::from_hex(s)
            .ok()
            .map(|h| BlockHash(*h.as_bytes()))
    }
}

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockHash({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Why a block size or geometry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    #[error(
        "block size {0} is not a power of two between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE} bytes"
    )]
    BadBlockSize(u64),
}

/// How a volume of a given size is cut into blocks and leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub block_size: u32,
    pub volume_size: u64,
}

impl Geometry {
    /// Checks the block size and builds the geometry.
    pub fn new(block_size: u64, volume_size: u64) -> Result<Self, GeometryError> {
        check_block_size(block_size)?;
        Ok(Geometry {
            block_size: block_size as u32,
            volume_size,
        })
    }
    /// Number of blocks, the last one possibly partial.
    pub fn block_count(&self) -> u64 {
        self.volume_size.div_ceil(self.block_size as u64)
    }
    /// Number of full-size blocks.
    pub fn full_blocks(&self) -> u64 {
        self.volume_size / self.block_size as u64
    }
    /// Leaves in one full block.
    pub fn leaves_per_block(&self) -> usize {
        self.block_size as usize / LEAF_SIZE
    }
    /// Number of leaves (full blocks only).
    pub fn leaf_count(&self) -> u64 {
        self.full_blocks() * self.leaves_per_block() as u64
    }
    /// Byte offset where the partial tail block starts (equals `volume_size` if there is none).
    pub fn tail_start(&self) -> u64 {
        self.full_blocks() * self.block_size as u64
    }
    /// Length of the partial tail block, 0 if none.
    pub fn tail_len(&self) -> u64 {
        self.volume_size - self.tail_start()
    }
    /// Byte offset and length of block `i`.
    pub fn block_range(&self, i: u64) -> (u64, u64) {
        let off = i * self.block_size as u64;
        (off, (self.volume_size - off).min(self.block_size as u64))
    }
}

/// Checks that `bs` is a power of two in the accepted range.
pub fn check_block_size(bs: u64) -> Result<(), GeometryError> {
    if bs.is_power_of_two() && bs >= MIN_BLOCK_SIZE as u64 && bs <= MAX_BLOCK_SIZE as u64 {
        Ok(())
    } else {
        Err(GeometryError::BadBlockSize(bs))
    }
}

/// The chaining value of the leaf at position `pos` (0-based) inside a block of
/// `leaves_per_block` leaves. For single-leaf blocks it is the block hash.
pub fn leaf_cv(data: &[u8], pos: usize, leaves_per_block: usize) -> LeafCv {
    debug_assert_eq!(data.len(), LEAF_SIZE);
    if leaves_per_block == 1 {
        return *blake3::hash(data).as_bytes();
    }
    let mut h = blake3::Hasher::new();
    h.set_input_offset((pos * LEAF_SIZE) as u64);
    h.update(data);
    h.finalize_non_root()
}

/// Puts a full block's hash together from its leaves' chaining values (a power of two of them).
pub fn block_hash_from_leaves(cvs: &[LeafCv]) -> BlockHash {
    debug_assert!(cvs.len().is_power_of_two());
    if cvs.len() == 1 {
        return BlockHash(cvs[0]);
    }
    let mut level: Vec<LeafCv> = cvs.to_vec();
    while level.len() > 2 {
        level = level
            .chunks_exact(2)
            .map(|p| merge_subtrees_non_root(&p[0], &p[1], Mode::Hash))
            .collect();
    }
    BlockHash(*merge_subtrees_root(&level[0], &level[1], Mode::Hash).as_bytes())
}

/// Whether every byte of `data` is zero (vectorises; no early exit inside 256-byte runs).
pub fn is_zero(data: &[u8]) -> bool {
    data.chunks(256)
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Precomputed hashes of all-zero leaves and blocks for one block size.
#[derive(Debug, Clone)]
pub struct ZeroTable {
    /// CV of an all-zero leaf at each position of a block.
    pub leaf_cvs: Vec<LeafCv>,
    /// Hash of an all-zero full block.
    pub block: BlockHash,
    block_size: u32,
}

impl ZeroTable {
    pub fn new(block_size: u32) -> Self {
        let lpb = block_size as usize / LEAF_SIZE;
        let zero = vec![0u8; LEAF_SIZE];
        let leaf_cvs = (0..lpb).map(|p| leaf_cv(&zero, p, lpb)).collect();
        ZeroTable {
            leaf_cvs,
            block: BlockHash::of(&vec![0u8; block_size as usize]),
            block_size,
        }
    }

    /// The hash of `len` zero bytes (the precomputed one for a full block).
    pub fn hash(&self, len: u64) -> BlockHash {
        if len == self.block_size as u64 {
            self.block
        } else {
            BlockHash::of(&vec![0u8; len as usize])
        }
    }
}

/// The root of a manifest: BLAKE3 in key-derivation mode over the block size, the volume size and
/// the concatenated block hashes. Two manifests have the same root exactly when they describe the
/// same bytes cut the same way.
pub fn manifest_root(block_size: u32, volume_size: u64, hashes: &[u8]) -> BlockHash {
    entries_root(MANIFEST_ROOT, block_size, volume_size, [hashes])
}

/// The root of a leaf index, computed like [`manifest_root`] under another context string.
pub fn leaves_root(block_size: u32, volume_size: u64, cvs: &[u8]) -> BlockHash {
    entries_root(LEAVES_ROOT, block_size, volume_size, [cvs])
}

/// The key-derivation contexts of [`manifest_root`] and [`leaves_root`].
pub(crate) const MANIFEST_ROOT: &str = "ferry 2026-11 manifest root v1";
pub(crate) const LEAVES_ROOT: &str = "ferry 2026-11 leaf index root v1";

/// A root under `context` of the concatenation of `parts`.
pub(crate) fn entries_root<'a>(
    context: &str,
    block_size: u32,
    volume_size: u64,
    parts: impl IntoIterator<Item = &'a [u8]>,
) -> BlockHash {
    let mut h = blake3::Hasher::new_derive_key(context);
    h.update(&block_size.to_le_bytes());
    h.update(&volume_size.to_le_bytes());
    for p in parts {
        h.update(p);
    }
    BlockHash(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn leaves_merge_to_plain_blake3() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for bs in [16u32 << 10, 32 << 10, 64 << 10, 256 << 10, 1 << 20] {
            let mut block = vec![0u8; bs as usize];
            rng.fill(&mut block[..]);
            let lpb = bs as usize / LEAF_SIZE;
            let cvs: Vec<LeafCv> = block
                .chunks(LEAF_SIZE)
                .enumerate()
                .map(|(i, l)| leaf_cv(l, i, lpb))
                .collect();
            assert_eq!(
                block_hash_from_leaves(&cvs),
                BlockHash::of(&block),
                "bs {bs}"
            );
        }
    }

    #[test]
    fn zero_table_matches() {
        for bs in [16u32 << 10, 64 << 10] {
            let z = ZeroTable::new(bs);
            let zeros = vec![0u8; bs as usize];
            assert_eq!(z.block, BlockHash::of(&zeros));
            assert_eq!(block_hash_from_leaves(&z.leaf_cvs), z.block);
            assert_eq!(z.hash(1000), BlockHash::of(&zeros[..1000]));
            assert_eq!(z.hash(bs as u64), z.block);
        }
    }

    #[test]
    fn geometry_table() {
        let g = Geometry::new(65536, 65536 * 3 + 100).expect("valid");
        assert_eq!(g.block_count(), 4);
        assert_eq!(g.full_blocks(), 3);
        assert_eq!(g.leaf_count(), 12);
        assert_eq!(g.tail_start(), 65536 * 3);
        assert_eq!(g.tail_len(), 100);
        assert_eq!(g.block_range(3), (65536 * 3, 100));
        let g0 = Geometry::new(65536, 0).expect("valid");
        assert_eq!(g0.block_count(), 0);
        for bad in [0u64, 4096, 65535, 3 << 20, 32 << 20] {
            assert!(Geometry::new(bad, 1).is_err(), "{bad}");
        }
    }

    #[test]
    fn is_zero_table() {
        let mut v = vec![0u8; 70000];
        assert!(is_zero(&v));
        v[69999] = 1;
        assert!(!is_zero(&v));
        v[69999] = 0;
        v[0] = 0x80;
        assert!(!is_zero(&v));
        assert!(is_zero(&[]));
    }

    #[test]
    fn roots_differ_by_geometry_and_kind() {
        let e = [1u8; 64];
        assert_ne!(manifest_root(65536, 1, &e), manifest_root(65536, 2, &e));
        assert_ne!(manifest_root(65536, 1, &e), manifest_root(131072, 1, &e));
        assert_ne!(manifest_root(65536, 1, &e), leaves_root(65536, 1, &e));
        let h = BlockHash::of(b"x");
        assert_eq!(BlockHash::from_hex(&h.to_hex()), Some(h));
    }
}
