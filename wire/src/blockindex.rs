//! The on-disk format of the receiver's dedup index: which mirror volume held a block with
//! a given hash, and where. A hash table of 4 KiB buckets, so that a lookup is one read of
//! one page and the index is opened in constant time, whatever its size; the agent keeps
//! it (`agent/src/store/dedup.rs`) and updates it at every mirror commit.
//!
//! ```text
//! header   4096 bytes: magic "FERRYIDX", version, block size, bucket count (a power of
//!          two), entries, a BLAKE3 checksum of the fields before it
//! buckets  bucket count × 4096 bytes; each: count (u16), overflow (u16: entries that
//!          belong here went on to the next bucket), 4 reserved bytes, then up to
//!          ENTRIES_PER_BUCKET entries of 32 bytes:
//!            key     the first 16 bytes of the block's BLAKE3
//!            volume  u32, an id of the agent's index (its volume table)
//!            block   u64, the block's index in that volume
//!            spare   u32
//! ```
//! A block's bucket is given by the first 8 bytes of its key (so doubling the table splits
//! each bucket in two: its entries stay or move up by the old count); a full bucket sends
//! new entries to the next (wrapping), marked by its overflow flag so lookups follow. The index is a
//! hint: every hit is checked against a manifest before it is used, so a stale entry (a
//! snapshot deleted since) or a damaged page costs a miss, never a wrong block.

use crate::hash::BlockHash;

/// Bytes of the header and of each bucket.
pub const PAGE: usize = 4096;
/// Bytes of an entry.
pub const ENTRY: usize = 32;
/// Bytes before a bucket's entries.
pub const BUCKET_HEAD: usize = 8;
/// Entries one bucket holds.
pub const ENTRIES_PER_BUCKET: usize = (PAGE - BUCKET_HEAD) / ENTRY;
/// The file's magic and format version.
pub const MAGIC: &[u8; 8] = b"FERRYIDX";
pub const VERSION: u16 = 1;
/// Entries per bucket, on average, past which the table grows (doubles): 70% full.
pub const GROW_AT: f64 = 0.7 * ENTRIES_PER_BUCKET as f64;

/// One entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub key: [u8; 16],
    pub volume: u32,
    pub block: u64,
}

impl Entry {
    /// The entry of `hash` at `volume`, `block`.
    pub fn new(hash: &BlockHash, volume: u32, block: u64) -> Entry {
        Entry {
            key: key(hash),
            volume,
            block,
        }
    }

    pub fn encode(&self) -> [u8; ENTRY] {
        let mut b = [0u8; ENTRY];
        b[..16].copy_from_slice(&self.key);
        b[16..20].copy_from_slice(&self.volume.to_le_bytes());
        b[20..28].copy_from_slice(&self.block.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Entry> {
        let b: &[u8; ENTRY] = b.get(..ENTRY)?.try_into().ok()?;
        let mut key = [0u8; 16];
        key.copy_from_slice(&b[..16]);
        Some(Entry {
            key,
            volume: u32::from_le_bytes(b[16..20].try_into().ok()?),
            block: u64::from_le_bytes(b[20..28].try_into().ok()?),
        })
    }
}

/// A hash's key in the index.
pub fn key(hash: &BlockHash) -> [u8; 16] {
    let mut k = [0u8; 16];
    k.copy_from_slice(&hash.0[..16]);
    k
}

/// The bucket of key `key` in a table of `buckets` (a power of two).
pub fn bucket_of(key: &[u8; 16], buckets: u64) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[..8]);
    u64::from_le_bytes(b) & (buckets - 1)
}

/// The header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub block_size: u32,
    pub buckets: u64,
    pub entries: u64,
}

/// Why an index file is not usable (it is then built again).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("not a ferry index (bad magic)")]
    Magic,
    #[error("index format version {0} is not this build's ({VERSION})")]
    Version(u16),
    #[error("damaged header (checksum)")]
    Checksum,
    #[error("bucket count {0} is not a power of two")]
    Buckets(u64),
}

impl Header {
    pub fn encode(&self) -> [u8; PAGE] {
        let mut b = [0u8; PAGE];
        b[..8].copy_from_slice(MAGIC);
        b[8..10].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.block_size.to_le_bytes());
        b[16..24].copy_from_slice(&self.buckets.to_le_bytes());
        b[24..32].copy_from_slice(&self.entries.to_le_bytes());
        let sum = blake3::hash(&b[..32]);
        b[32..64].copy_from_slice(sum.as_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Header, IndexError> {
        if b.len() < 64 || &b[..8] != MAGIC {
            return Err(IndexError::Magic);
        }
        let u = |r: std::ops::Range<usize>| {
            let mut x = [0u8; 8];
            x[..r.len()].copy_from_slice(&b[r]);
            u64::from_le_bytes(x)
        };
        let version = u(8..10) as u16;
        if version != VERSION {
            return Err(IndexError::Version(version));
        }
        if blake3::hash(&b[..32]).as_bytes() != &b[32..64] {
            return Err(IndexError::Checksum);
        }
        let buckets = u(16..24);
        if !buckets.is_power_of_two() {
            return Err(IndexError::Buckets(buckets));
        }
        Ok(Header {
            block_size: u(12..16) as u32,
            buckets,
            entries: u(24..32),
        })
    }

    /// The file's length.
    pub fn file_len(&self) -> u64 {
        PAGE as u64 * (1 + self.buckets)
    }

    /// Where bucket `i` starts in the file.
    pub fn bucket_at(i: u64) -> u64 {
        PAGE as u64 * (1 + i)
    }

    /// Whether the table should double before taking `more` entries.
    pub fn must_grow(&self, more: u64) -> bool {
        (self.entries + more) as f64 > GROW_AT * self.buckets as f64
    }
}

/// A bucket page, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bucket {
    pub entries: Vec<Entry>,
    /// Entries that belong here went on to the next bucket.
    pub overflow: bool,
}

impl Bucket {
    /// Decodes a page; a damaged count reads as a full, overflowing bucket of what decodes.
    pub fn decode(page: &[u8]) -> Bucket {
        let count = (u16::from_le_bytes([page[0], page[1]]) as usize).min(ENTRIES_PER_BUCKET);
        let overflow = page[2] != 0;
        let entries = (0..count)
            .filter_map(|k| Entry::decode(&page[BUCKET_HEAD + k * ENTRY..]))
            .collect();
        Bucket { entries, overflow }
    }

    pub fn encode(&self) -> [u8; PAGE] {
        let mut p = [0u8; PAGE];
        p[..2].copy_from_slice(&(self.entries.len() as u16).to_le_bytes());
        p[2] = u8::from(self.overflow);
        for (k, e) in self.entries.iter().enumerate() {
            p[BUCKET_HEAD + k * ENTRY..BUCKET_HEAD + (k + 1) * ENTRY].copy_from_slice(&e.encode());
        }
        p
    }

    pub fn is_full(&self) -> bool {
        self.entries.len() >= ENTRIES_PER_BUCKET
    }

    /// Adds `e` unless the bucket has it already; false when full (it goes on).
    pub fn add(&mut self, e: Entry) -> bool {
        if self.entries.contains(&e) {
            return true;
        }
        if self.is_full() {
            self.overflow = true;
            return false;
        }
        self.entries.push(e);
        true
    }

    /// The entries with `key`.
    pub fn find<'a>(&'a self, key: &'a [u8; 16]) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries.iter().filter(move |e| &e.key == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u64) -> BlockHash {
        BlockHash::of(&i.to_le_bytes())
    }

    #[test]
    fn pages_round_trip() {
        assert_eq!(ENTRIES_PER_BUCKET, 127);
        let hd = Header {
            block_size: 65536,
            buckets: 1 << 20,
            entries: 12345,
        };
        assert_eq!(Header::decode(&hd.encode()), Ok(hd));
        let mut bad = hd.encode();
        bad[20] ^= 1;
        assert_eq!(Header::decode(&bad), Err(IndexError::Checksum));
        bad[0] = b'X';
        assert_eq!(Header::decode(&bad), Err(IndexError::Magic));
        let mut b = Bucket::default();
        for i in 0..ENTRIES_PER_BUCKET as u64 {
            assert!(b.add(Entry::new(&h(i), 3, i)));
        }
        assert!(
            b.add(Entry::new(&h(0), 3, 0)),
            "a duplicate is there already"
        );
        assert!(!b.add(Entry::new(&h(999), 3, 999)), "full");
        assert!(b.overflow);
        let back = Bucket::decode(&b.encode());
        assert_eq!(back, b);
        assert_eq!(back.find(&key(&h(7))).next().map(|e| e.block), Some(7));
        assert_eq!(back.find(&key(&h(999))).count(), 0);
        // A damaged count never reads past the page.
        let mut p = b.encode();
        p[0] = 0xff;
        p[1] = 0xff;
        assert_eq!(Bucket::decode(&p).entries.len(), ENTRIES_PER_BUCKET);
        assert!(hd.must_grow((GROW_AT * (1u64 << 20) as f64) as u64));
        let k = key(&h(1));
        assert!(bucket_of(&k, 8) < 8);
        // Doubling splits a bucket in two.
        assert!([bucket_of(&k, 8), bucket_of(&k, 8) + 8].contains(&bucket_of(&k, 16)));
    }
}
