//! The receive journal: what an interrupted transfer into a mirror already wrote, so that a
//! retry resumes instead of starting over.
//!
//! ```text
//! "FERRYRJ1" | u32 LE len | header (codec, len bytes) | BLAKE3 of everything before
//! batch*:     u32 LE runs | runs × (u64 LE first block, u32 LE count) | BLAKE3 of the batch
//! ```
//! The header names the transfer (snapshot, base, root, geometry): a retry of anything else
//! starts over. A batch is appended only after the blocks it lists are durable in the working
//! copy, so every block a journal lists holds its new data. A torn last batch (a crash while
//! appending) fails its checksum and is dropped with everything after it.

use serde::{Deserialize, Serialize};

use crate::hash::BlockHash;
use crate::name::Name;

const MAGIC: &[u8; 8] = b"FERRYRJ1";
const SUM: usize = 32;
/// Largest header accepted.
const HEADER_LIMIT: usize = 4096;
/// Runs per batch at most (a batch is read whole).
pub const MAX_RUNS: usize = 1 << 16;

/// The transfer a journal belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalHeader {
    pub snapshot: Name,
    pub base: Option<Name>,
    pub root: BlockHash,
    pub size: u64,
    pub block_size: u32,
}

/// Why a journal could not be read at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JournalError {
    #[error("not a receive journal")]
    Magic,
    #[error("journal header is damaged")]
    Header,
}

/// A journal read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    pub header: JournalHeader,
    /// Runs of blocks `(first, count)` that hold their new data, in the order written.
    pub runs: Vec<(u64, u32)>,
    /// Bytes of the file that are valid; anything after is a torn append to cut off.
    pub valid_len: usize,
}

/// The journal's first bytes.
pub fn encode_header(h: &JournalHeader) -> Vec<u8> {
    // A header is a few names and numbers: far below the codec's limit.
    let body = crate::codec::encode(h).unwrap_or_default();
    let mut out = Vec::with_capacity(8 + 4 + body.len() + SUM);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    out
}

/// Runs of consecutive blocks in `blocks` (any order, duplicates allowed).
pub fn runs_of(blocks: &mut [u64]) -> Vec<(u64, u32)> {
    blocks.sort_unstable();
    let mut runs: Vec<(u64, u32)> = Vec::new();
    for &b in blocks.iter() {
        match runs.last_mut() {
            Some((first, n)) if *first + u64::from(*n) == b && *n < u32::MAX => *n += 1,
            Some((first, n)) if *first + u64::from(*n) > b => {} // a duplicate
            _ => runs.push((b, 1)),
        }
    }
    runs
}

/// One appendable batch per [`MAX_RUNS`] runs of `blocks`.
pub fn encode_batches(blocks: &mut [u64]) -> Vec<u8> {
    let runs = runs_of(blocks);
    let mut out = Vec::new();
    for chunk in runs.chunks(MAX_RUNS) {
        let start = out.len();
        out.extend_from_slice(&(chunk.len() as u32).to_le_bytes());
        for &(first, n) in chunk {
            out.extend_from_slice(&first.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
        let sum = blake3::hash(&out[start..]);
        out.extend_from_slice(sum.as_bytes());
    }
    out
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, rest) = b.split_at_checked(n)?;
    *b = rest;
    Some(head)
}

fn u32_at(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// Reads a journal. A damaged header is an error (the journal is useless); a damaged batch
/// ends the replay there.
pub fn decode(bytes: &[u8]) -> Result<Replay, JournalError> {
    let mut rest = bytes;
    if take(&mut rest, 8) != Some(MAGIC.as_slice()) {
        return Err(JournalError::Magic);
    }
    let len = take(&mut rest, 4).map(u32_at).ok_or(JournalError::Header)? as usize;
    if len > HEADER_LIMIT {
        return Err(JournalError::Header);
    }
    let body = take(&mut rest, len).ok_or(JournalError::Header)?;
    let sum = take(&mut rest, SUM).ok_or(JournalError::Header)?;
    if blake3::hash(&bytes[..12 + len]).as_bytes() != sum {
        return Err(JournalError::Header);
    }
    let header: JournalHeader =
        crate::codec::decode(body, HEADER_LIMIT).map_err(|_| JournalError::Header)?;
    let mut runs = Vec::new();
    let mut valid_len = bytes.len() - rest.len();
    loop {
        let mut b = rest;
        let Some(n) = take(&mut b, 4).map(u32_at) else {
            break;
        };
        let n = n as usize;
        if n == 0 || n > MAX_RUNS {
            break;
        }
        let Some(entries) = take(&mut b, n * 12) else {
            break;
        };
        let Some(sum) = take(&mut b, SUM) else {
            break;
        };
        if blake3::hash(&rest[..4 + n * 12]).as_bytes() != sum {
            break;
        }
        for e in entries.chunks_exact(12) {
            let mut first = [0u8; 8];
            first.copy_from_slice(&e[..8]);
            runs.push((u64::from_le_bytes(first), u32_at(&e[8..])));
        }
        valid_len += 4 + n * 12 + SUM;
        rest = b;
    }
    Ok(Replay {
        header,
        runs,
        valid_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> JournalHeader {
        JournalHeader {
            snapshot: Name::new("s2").expect("name"),
            base: Some(Name::new("s1").expect("name")),
            root: BlockHash::of(b"root"),
            size: 1 << 30,
            block_size: 65536,
        }
    }

    #[test]
    fn runs_coalesce_sorted_blocks() {
        type Case<'a> = (&'a [u64], &'a [(u64, u32)]);
        let cases: &[Case] = &[
            (&[], &[]),
            (&[5], &[(5, 1)]),
            (&[3, 1, 2, 7, 8, 10], &[(1, 3), (7, 2), (10, 1)]),
            (&[4, 4, 5, 4], &[(4, 2)]),
        ];
        for (blocks, want) in cases {
            assert_eq!(runs_of(&mut blocks.to_vec()), *want, "{blocks:?}");
        }
    }

    #[test]
    fn round_trip_and_torn_tail() {
        let mut file = encode_header(&header());
        let head_len = file.len();
        file.extend(encode_batches(&mut [1, 2, 3, 9]));
        let one = file.len();
        file.extend(encode_batches(&mut [20, 21]));
        let r = decode(&file).expect("decode");
        assert_eq!(r.header, header());
        assert_eq!(r.runs, vec![(1, 3), (9, 1), (20, 2)]);
        assert_eq!(r.valid_len, file.len());
        // Every cut inside the second batch keeps exactly the first.
        for cut in one..file.len() {
            let r = decode(&file[..cut]).expect("decode");
            assert_eq!(r.runs, vec![(1, 3), (9, 1)], "cut at {cut}");
            assert_eq!(r.valid_len, one);
        }
        // A flipped bit in a batch ends the replay before it.
        let mut bad = file.clone();
        bad[one + 6] ^= 1;
        assert_eq!(decode(&bad).expect("decode").runs, vec![(1, 3), (9, 1)]);
        // A damaged header, or no journal at all, is refused.
        let mut bad = file.clone();
        bad[14] ^= 1;
        assert_eq!(decode(&bad), Err(JournalError::Header));
        assert_eq!(decode(&file[..head_len - 1]), Err(JournalError::Header));
        assert_eq!(decode(b"garbage!"), Err(JournalError::Magic));
        assert_eq!(decode(&[]), Err(JournalError::Magic));
    }

    #[test]
    fn many_runs_split_into_batches() {
        let mut blocks: Vec<u64> = (0..(MAX_RUNS as u64 + 10)).map(|i| i * 2).collect();
        let mut file = encode_header(&header());
        file.extend(encode_batches(&mut blocks));
        let r = decode(&file).expect("decode");
        assert_eq!(r.runs.len(), MAX_RUNS + 10);
        assert_eq!(r.valid_len, file.len());
    }
}
