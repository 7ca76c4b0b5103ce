//! Changed ranges between two snapshots.
//!
//! On the reflink backend, a snapshot is a clone, so an unchanged range of two snapshots points
//! at the same physical blocks. Comparing the two files' FIEMAP extents therefore finds exactly
//! the ranges written in between (at filesystem-block granularity), without reading data.
//! [`changed_ranges`] is the pure comparison; [`fiemap_diff_windows`] feeds it the extents of
//! two files, one window at a time, so memory stays bounded for huge, fragmented files, and a
//! caller can start on the first windows' ranges while later ones are mapped. Ranges whose
//! extents are not plain (delayed allocation, inline, encoded, unknown) count as changed;
//! unwritten (preallocated) extents read as zeros and count as holes.

use std::fs::File;
use std::io;

use crate::fsx::{
    self, Extent, FIEMAP_EXTENT_DATA_INLINE, FIEMAP_EXTENT_DATA_TAIL, FIEMAP_EXTENT_DELALLOC,
    FIEMAP_EXTENT_ENCODED, FIEMAP_EXTENT_NOT_ALIGNED, FIEMAP_EXTENT_UNKNOWN,
    FIEMAP_EXTENT_UNWRITTEN,
};

/// What one logical byte maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Map {
    Hole,
    /// Physical address minus logical address: equal deltas at the same logical offset mean the
    /// same physical byte.
    Phys(i128),
    Opaque,
}

fn classify(e: &Extent) -> Map {
    const OPAQUE: u32 = FIEMAP_EXTENT_UNKNOWN
        | FIEMAP_EXTENT_DELALLOC
        | FIEMAP_EXTENT_ENCODED
        | FIEMAP_EXTENT_NOT_ALIGNED
        | FIEMAP_EXTENT_DATA_INLINE
        | FIEMAP_EXTENT_DATA_TAIL;
    if e.flags & FIEMAP_EXTENT_UNWRITTEN != 0 {
        Map::Hole
    } else if e.flags & OPAQUE != 0 {
        Map::Opaque
    } else {
        Map::Phys(e.physical as i128 - e.logical as i128)
    }
}

/// Splits `[start, end)` into pieces with their mapping, from sorted extents.
fn pieces(extents: &[Extent], start: u64, end: u64) -> Vec<(u64, u64, Map)> {
    let mut out = Vec::new();
    let mut pos = start;
    for e in extents {
        let (s, t) = (e.logical.max(start), (e.logical + e.length).min(end));
        if t <= s || t <= pos {
            continue;
        }
        let s = s.max(pos);
        if s > pos {
            out.push((pos, s, Map::Hole));
        }
        out.push((s, t, classify(e)));
        pos = t;
    }
    if pos < end {
        out.push((pos, end, Map::Hole));
    }
    out
}

/// The byte ranges of `[start, end)` where `new` may differ from `base`, merged and sorted.
pub fn changed_ranges(base: &[Extent], new: &[Extent], start: u64, end: u64) -> Vec<(u64, u64)> {
    let a = pieces(base, start, end);
    let b = pieces(new, start, end);
    let (mut i, mut j) = (0, 0);
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut pos = start;
    while pos < end && i < a.len() && j < b.len() {
        let next = a[i].1.min(b[j].1);
        let same = match (a[i].2, b[j].2) {
            (Map::Hole, Map::Hole) => true,
            (Map::Phys(x), Map::Phys(y)) => x == y,
            _ => false,
        };
        if !same {
            match out.last_mut() {
                Some(last) if last.1 == pos => last.1 = next,
                _ => out.push((pos, next)),
            }
        }
        pos = next;
        if a[i].1 == pos {
            i += 1;
        }
        if b[j].1 == pos {
            j += 1;
        }
    }
    out
}

/// The usual window of [`fiemap_diff_windows`]: the extents of one window of each file are
/// held at once.
pub const WINDOW: u64 = 4 << 30;

/// Changed ranges between two cloned snapshot files of sizes `base_size` and `new_size` (bytes
/// past the end of the base count as changed), one `window` of the files at a time: `emit`
/// gets each window's sorted ranges, in order (a range across a window's end comes in two
/// pieces), and returns false to stop there.
pub fn fiemap_diff_windows(
    base: &File,
    new: &File,
    (base_size, new_size): (u64, u64),
    window: u64,
    emit: &mut dyn FnMut(Vec<(u64, u64)>) -> bool,
) -> io::Result<()> {
    let common = base_size.min(new_size);
    let mut w = 0;
    while w < common {
        let end = w.saturating_add(window.max(1)).min(common);
        let ea = fsx::fiemap(base, w, end - w)?;
        let eb = fsx::fiemap(new, w, end - w)?;
        if !emit(changed_ranges(&ea, &eb, w, end)) {
            return Ok(());
        }
        w = end;
    }
    if new_size > common {
        emit(vec![(common, new_size)]);
    }
    Ok(())
}

/// Appends `r` to sorted ranges, merging with the last one when they touch.
pub fn push_merged(out: &mut Vec<(u64, u64)>, r: (u64, u64)) {
    match out.last_mut() {
        Some(last) if last.1 >= r.0 => last.1 = last.1.max(r.1),
        _ => out.push(r),
    }
}

/// Widens sorted ranges to multiples of `unit` and merges the ones that then touch.
pub fn align_ranges(ranges: &[(u64, u64)], unit: u64, limit: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(s, e) in ranges {
        let s = s / unit * unit;
        let e = e.div_ceil(unit).saturating_mul(unit).min(limit);
        if e > s {
            push_merged(&mut out, (s, e));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(logical: u64, physical: u64, length: u64) -> Extent {
        Extent {
            logical,
            physical,
            length,
            flags: 0,
        }
    }

    #[test]
    fn table() {
        let k = 4096;
        let base = vec![ext(0, 1000 * k, 100 * k)];
        struct Case {
            name: &'static str,
            new: Vec<Extent>,
            want: Vec<(u64, u64)>,
        }
        let cases = vec![
            Case {
                name: "identical clone",
                new: vec![ext(0, 1000 * k, 100 * k)],
                want: vec![],
            },
            Case {
                name: "one block rewritten",
                new: vec![
                    ext(0, 1000 * k, 10 * k),
                    ext(10 * k, 5000 * k, k),
                    ext(11 * k, 1011 * k, 89 * k),
                ],
                want: vec![(10 * k, 11 * k)],
            },
            Case {
                name: "two adjacent rewritten blocks merge",
                new: vec![
                    ext(0, 1000 * k, 10 * k),
                    ext(10 * k, 5000 * k, k),
                    ext(11 * k, 7000 * k, k),
                    ext(12 * k, 1012 * k, 88 * k),
                ],
                want: vec![(10 * k, 12 * k)],
            },
            Case {
                name: "extent split but same physical blocks",
                new: vec![ext(0, 1000 * k, 50 * k), ext(50 * k, 1050 * k, 50 * k)],
                want: vec![],
            },
            Case {
                name: "hole punched",
                new: vec![ext(0, 1000 * k, 20 * k), ext(30 * k, 1030 * k, 70 * k)],
                want: vec![(20 * k, 30 * k)],
            },
            Case {
                name: "moved (defragmented) counts as changed",
                new: vec![ext(0, 9000 * k, 100 * k)],
                want: vec![(0, 100 * k)],
            },
        ];
        for c in cases {
            assert_eq!(
                changed_ranges(&base, &c.new, 0, 100 * k),
                c.want,
                "{}",
                c.name
            );
        }
        // Data written into a hole of the base; unwritten extents equal holes; delalloc opaque.
        let sparse = vec![ext(0, 1000 * k, 10 * k)];
        let filled = vec![ext(0, 1000 * k, 10 * k), ext(40 * k, 3000 * k, 2 * k)];
        assert_eq!(
            changed_ranges(&sparse, &filled, 0, 100 * k),
            vec![(40 * k, 42 * k)]
        );
        let mut unwritten = ext(50 * k, 4000 * k, 10 * k);
        unwritten.flags = FIEMAP_EXTENT_UNWRITTEN;
        let with_unwritten = vec![ext(0, 1000 * k, 10 * k), unwritten];
        assert_eq!(changed_ranges(&sparse, &with_unwritten, 0, 100 * k), vec![]);
        let mut delalloc = ext(0, 0, 10 * k);
        delalloc.flags = FIEMAP_EXTENT_DELALLOC;
        assert_eq!(
            changed_ranges(&sparse, &[delalloc], 0, 100 * k),
            vec![(0, 10 * k)]
        );
        // Windows clip.
        assert_eq!(
            changed_ranges(&base, &[ext(0, 9000 * k, 100 * k)], 20 * k, 30 * k),
            vec![(20 * k, 30 * k)]
        );
    }

    #[test]
    fn align_table() {
        let r = align_ranges(
            &[(5, 10), (4096, 4097), (16384 * 3 - 1, 16384 * 3)],
            16384,
            1 << 20,
        );
        assert_eq!(r, vec![(0, 16384), (32768, 49152)]);
        let r = align_ranges(&[(5, 100)], 16384, 50);
        assert_eq!(r, vec![(0, 50)]);
    }
}
