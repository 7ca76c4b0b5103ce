//! Building and verifying snapshot manifests.
//!
//! A snapshot gets two files (format in `ferry_wire::hashfile`): the **manifest**, one BLAKE3
//! hash per block and a root, the truth that replication and verification trust; and the
//! **leaf index**, one chaining value per 16 KiB leaf, an accelerator for the next snapshot.
//!
//! * **Full build**: reads the snapshot's data ranges (SEEK_DATA/SEEK_HOLE, widened to whole
//!   blocks), hashes each block's leaves on the hashing threads and merges them into the block
//!   hash there. Holes are never read: their entries are the precomputed zero hashes.
//! * **Incremental build**: given the base snapshot's verified files and the byte ranges that
//!   changed since it (FIEMAP on the reflink backend), clones the base files, re-reads only the
//!   changed *leaves*, and re-merges only the blocks that contain them. One percent of random
//!   4 KiB writes touches about 4% of leaves but 15% of 64 KiB blocks; reading leaves keeps the
//!   incremental cost near the size of the change.
//! * **Verify**: re-reads everything and compares with the manifest and the leaf index.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_wire::hash::{
    block_hash_from_leaves, is_zero, leaf_cv, BlockHash, Geometry, LeafCv, ZeroTable,
};
use ferry_wire::hashfile::{FormatError, HashFile, HashFileWriter, Kind};
use ferry_wire::LEAF_SIZE;
use serde::Serialize;

use crate::config::{Cache, IoConfig};
use crate::diff::align_ranges;
use crate::engine::{self, ReadJob, ReadStats};
use crate::error::{io_err, IoContext, Result, StoreError};
use crate::fsx;

const TAG_BLOCKS: u8 = 0;
const TAG_LEAVES: u8 = 1;
const TAG_TAIL: u8 = 2;

/// The base of an incremental build.
pub struct Base<'a> {
    pub manifest: &'a Path,
    pub leaves: &'a Path,
    /// Byte ranges of the new snapshot that may differ from the base, sorted, a window of the
    /// volume at a time as they are found: the build reads the first windows' leaves while
    /// later windows are still being compared. It must yield every window; a caller whose
    /// comparison failed part way discards the build.
    pub changed: &'a mut dyn Iterator<Item = Vec<(u64, u64)>>,
}

/// Full or incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BuildMode {
    Full,
    Incremental,
    /// Put together by the replication receiver from the blocks it checked as they arrived
    /// (and those it kept or copied), not read again.
    Received,
}

/// What a build did.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    #[serde(serialize_with = "ser_hex")]
    pub root: BlockHash,
    pub mode: BuildMode,
    pub blocks: u64,
    pub bytes_read: u64,
    pub engine: engine::EngineKind,
    pub direct: bool,
    #[serde(serialize_with = "ser_ms")]
    pub elapsed: Duration,
}

fn ser_hex<S: serde::Serializer>(h: &BlockHash, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&h.to_hex())
}
fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// What a hashing thread returns for one buffer.
enum Hashed {
    Blocks {
        leaves: Vec<LeafCv>,
        blocks: Vec<BlockHash>,
    },
    Leaves(Vec<LeafCv>),
    Tail(BlockHash),
}

struct Hasher {
    geometry: Geometry,
    zero: ZeroTable,
}

impl Hasher {
    fn new(geometry: Geometry) -> Self {
        Hasher {
            geometry,
            zero: ZeroTable::new(geometry.block_size),
        }
    }

    fn leaf(&self, data: &[u8], leaf_index: u64) -> LeafCv {
        let lpb = self.geometry.leaves_per_block();
        let pos = (leaf_index % lpb as u64) as usize;
        if is_zero(data) {
            self.zero.leaf_cvs[pos]
        } else {
            leaf_cv(data, pos, lpb)
        }
    }

    /// Reads `jobs` from `snap` and hashes them on the hashing threads; `sink` gets the
    /// results. The task's progress is told what will be read by the caller ([`planned`]), or
    /// as jobs come when they are not known in advance.
    fn read(
        &self,
        snap: &Path,
        io: &IoConfig,
        cache: Cache,
        jobs: impl IntoIterator<Item = ReadJob>,
        mut sink: impl FnMut(ReadJob, Hashed) -> Result<()>,
    ) -> Result<ReadStats> {
        let max_job = self.geometry.block_size as usize;
        engine::run(
            snap,
            io,
            cache,
            max_job,
            jobs,
            |job, data| self.hash(job, data),
            |job, hashed| {
                crate::progress::advance(job.len as u64);
                sink(job, hashed)
            },
        )
    }

    fn hash(&self, job: &ReadJob, data: &[u8]) -> Hashed {
        match job.tag {
            TAG_TAIL => Hashed::Tail(BlockHash::of(data)),
            TAG_LEAVES => {
                let first = job.offset / LEAF_SIZE as u64;
                Hashed::Leaves(
                    data.chunks(LEAF_SIZE)
                        .enumerate()
                        .map(|(i, l)| self.leaf(l, first + i as u64))
                        .collect(),
                )
            }
            _ => {
                let bs = self.geometry.block_size as usize;
                let first_leaf = job.offset / LEAF_SIZE as u64;
                let leaves: Vec<LeafCv> = data
                    .chunks(LEAF_SIZE)
                    .enumerate()
                    .map(|(i, l)| self.leaf(l, first_leaf + i as u64))
                    .collect();
                let lpb = bs / LEAF_SIZE;
                let blocks = leaves
                    .chunks(lpb)
                    .map(|cvs| {
                        if cvs == &self.zero.leaf_cvs[..] {
                            self.zero.block
                        } else {
                            block_hash_from_leaves(cvs)
                        }
                    })
                    .collect();
                Hashed::Blocks { leaves, blocks }
            }
        }
    }
}

/// The read of the partial tail block, if there is one and `wanted`.
fn tail_job(g: &Geometry, wanted: bool) -> Option<ReadJob> {
    (wanted && g.tail_len() > 0).then(|| ReadJob {
        offset: g.tail_start(),
        len: g.tail_len() as usize,
        tag: TAG_TAIL,
    })
}

/// Reads known before the first starts: the task's progress is told their total.
fn planned(jobs: impl Iterator<Item = ReadJob>) -> Vec<ReadJob> {
    let jobs: Vec<ReadJob> = jobs.collect();
    crate::progress::expect(jobs.iter().map(|j| j.len as u64).sum());
    jobs
}

/// Cuts sorted, aligned ranges into reads of at most `chunk` bytes (a multiple of the alignment).
fn cut(
    ranges: impl IntoIterator<Item = (u64, u64)>,
    chunk: u64,
    tag: u8,
) -> impl Iterator<Item = ReadJob> {
    ranges.into_iter().flat_map(move |(s, e)| {
        (s..e).step_by(chunk as usize).map(move |o| ReadJob {
            offset: o,
            len: (e - o).min(chunk) as usize,
            tag,
        })
    })
}

/// Data ranges of the full-block area, widened to whole blocks, and whether the tail holds data.
fn full_plan(file: &File, path: &Path, g: &Geometry) -> Result<(Vec<(u64, u64)>, bool)> {
    let data = fsx::data_ranges(file, g.volume_size).ctx("find data ranges of", path)?;
    let tail_start = g.tail_start();
    let clipped: Vec<(u64, u64)> = data
        .iter()
        .filter(|r| r.0 < tail_start)
        .map(|&(s, e)| (s, e.min(tail_start)))
        .collect();
    let tail_has_data = g.tail_len() > 0 && data.iter().any(|&(_, e)| e > tail_start);
    Ok((
        align_ranges(&clipped, g.block_size as u64, tail_start),
        tail_has_data,
    ))
}

fn block_chunk(io: &IoConfig, g: &Geometry) -> u64 {
    let bs = g.block_size as u64;
    (io.read_size / bs).max(1) * bs
}

fn format_err(e: FormatError, what: &'static str, path: &Path) -> StoreError {
    match e {
        FormatError::Io(io) => io_err(io, "write", path.to_owned()),
        other => StoreError::Corrupt {
            what,
            path: path.to_owned(),
            detail: other.to_string(),
        },
    }
}

/// The snapshot image a manifest is built from.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub image: &'a Path,
    /// Whether its pages may be in the page cache (picks O_DIRECT under `direct = "auto"`).
    pub cache: Cache,
    pub size: u64,
    pub block_size: u32,
}

/// Writes the headers of a leaf index and a manifest and syncs both; returns the manifest root.
fn finish_files(
    leaves: HashFileWriter,
    manifest: HashFileWriter,
    leaves_path: &Path,
    manifest_path: &Path,
) -> Result<BlockHash> {
    leaves
        .finish()
        .map_err(|e| format_err(e, "leaf index", leaves_path))?;
    manifest
        .finish()
        .map_err(|e| format_err(e, "manifest", manifest_path))
}

/// Builds the manifest and leaf index of the snapshot image `src`, writing them to
/// `out_manifest` and `out_leaves` (temporary paths the caller renames into place).
pub fn build(
    src: Source<'_>,
    base: Option<Base<'_>>,
    out_manifest: &Path,
    out_leaves: &Path,
    io: &IoConfig,
) -> Result<BuildReport> {
    let started = Instant::now();
    let snap = src.image;
    let g = Geometry::new(src.block_size as u64, src.size)
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    if let Some(b) = base {
        match open_base(&b, &g) {
            Ok(()) => return build_incremental(snap, g, b, out_manifest, out_leaves, io, started),
            Err(why) => {
                tracing::info!(snapshot = %snap.display(), %why, "full manifest instead of incremental")
            }
        }
    }
    build_full(snap, src.cache, g, out_manifest, out_leaves, io, started)
}

/// Checks that the base files are intact and match the geometry.
fn open_base(b: &Base<'_>, g: &Geometry) -> std::result::Result<(), String> {
    let m =
        HashFile::open(b.manifest, Kind::Manifest).map_err(|e| format!("base manifest: {e}"))?;
    let l = HashFile::open(b.leaves, Kind::Leaves).map_err(|e| format!("base leaf index: {e}"))?;
    if m.geometry() != *g || l.geometry() != *g {
        return Err("the volume's size or block size changed since the base".into());
    }
    Ok(())
}

fn build_full(
    snap: &Path,
    cache: Cache,
    g: Geometry,
    out_manifest: &Path,
    out_leaves: &Path,
    io: &IoConfig,
    started: Instant,
) -> Result<BuildReport> {
    let file = File::open(snap).ctx("open", snap)?;
    let (ranges, tail_has_data) = full_plan(&file, snap, &g)?;
    drop(file);
    let hasher = Hasher::new(g);
    let mut leaves = HashFileWriter::create(out_leaves, Kind::Leaves, g)
        .map_err(|e| format_err(e, "leaf index", out_leaves))?;
    let mut manifest = HashFileWriter::create(out_manifest, Kind::Manifest, g)
        .map_err(|e| format_err(e, "manifest", out_manifest))?;
    // Everything starts as zeros; the reads below overwrite what holds data.
    for chunk in leaves.entries_mut().chunks_mut(32 * g.leaves_per_block()) {
        for (e, z) in chunk.chunks_mut(32).zip(&hasher.zero.leaf_cvs) {
            e.copy_from_slice(z);
        }
    }
    for i in 0..g.full_blocks() {
        manifest.set(i, &hasher.zero.block.0);
    }
    if g.tail_len() > 0 {
        manifest.set(g.full_blocks(), &hasher.zero.hash(g.tail_len()).0);
    }
    let lpb = g.leaves_per_block() as u64;
    let tail_job = tail_job(&g, tail_has_data);
    let jobs =
        planned(cut(ranges.iter().copied(), block_chunk(io, &g), TAG_BLOCKS).chain(tail_job));
    let stats = hasher.read(snap, io, cache, jobs, |job, hashed| {
        match hashed {
            Hashed::Blocks {
                leaves: cvs,
                blocks,
            } => {
                let first_block = job.offset / g.block_size as u64;
                for (i, cv) in cvs.iter().enumerate() {
                    leaves.set(first_block * lpb + i as u64, cv);
                }
                for (i, h) in blocks.iter().enumerate() {
                    manifest.set(first_block + i as u64, &h.0);
                }
            }
            Hashed::Tail(h) => manifest.set(g.full_blocks(), &h.0),
            Hashed::Leaves(_) => unreachable!("full builds read whole blocks"),
        }
        Ok(())
    })?;
    let root = finish_files(leaves, manifest, out_leaves, out_manifest)?;
    Ok(report(root, BuildMode::Full, &g, stats, started))
}

fn report(
    root: BlockHash,
    mode: BuildMode,
    g: &Geometry,
    stats: ReadStats,
    started: Instant,
) -> BuildReport {
    BuildReport {
        root,
        mode,
        blocks: g.block_count(),
        bytes_read: stats.bytes,
        engine: stats.engine,
        direct: stats.direct,
        elapsed: started.elapsed(),
    }
}

fn build_incremental(
    snap: &Path,
    g: Geometry,
    base: Base<'_>,
    out_manifest: &Path,
    out_leaves: &Path,
    io: &IoConfig,
    started: Instant,
) -> Result<BuildReport> {
    let t_start = Instant::now();
    fsx::clone_or_copy(base.manifest, out_manifest).ctx("copy base manifest to", out_manifest)?;
    fsx::clone_or_copy(base.leaves, out_leaves).ctx("copy base leaf index to", out_leaves)?;
    let mut leaves = HashFileWriter::patch_of(out_leaves, base.leaves, Kind::Leaves, g)
        .map_err(|e| format_err(e, "leaf index", out_leaves))?;
    let mut manifest = HashFileWriter::patch_of(out_manifest, base.manifest, Kind::Manifest, g)
        .map_err(|e| format_err(e, "manifest", out_manifest))?;
    let tail_start = g.tail_start();
    let chunk = (io.read_size / LEAF_SIZE as u64).max(1) * LEAF_SIZE as u64;
    // Each window's changed ranges become leaf reads as the window comes; the tail, whether
    // any range reached it, is read last.
    let tail_changed = std::cell::Cell::new(false);
    let leaf_ranges = std::cell::Cell::new(0usize);
    let windows = base.changed.flat_map(|w| {
        if w.last().is_some_and(|&(_, e)| e > tail_start) {
            tail_changed.set(true);
        }
        let in_blocks: Vec<(u64, u64)> = w
            .iter()
            .filter(|r| r.0 < tail_start)
            .map(|&(s, e)| (s, e.min(tail_start)))
            .collect();
        let ranges = align_ranges(&in_blocks, LEAF_SIZE as u64, tail_start);
        leaf_ranges.set(leaf_ranges.get() + ranges.len());
        cut(ranges, chunk, TAG_LEAVES)
    });
    let tail = std::iter::once_with(|| tail_job(&g, tail_changed.get())).flatten();
    let jobs = windows
        .chain(tail)
        .inspect(|j| crate::progress::expect(j.len as u64));
    let hasher = Hasher::new(g);
    let lpb = g.leaves_per_block() as u64;
    let mut touched: Vec<u64> = Vec::new();
    let stats = hasher.read(snap, io, Cache::Cold, jobs, |job, hashed| {
        match hashed {
            Hashed::Leaves(cvs) => {
                let first = job.offset / LEAF_SIZE as u64;
                for (i, cv) in cvs.iter().enumerate() {
                    let idx = first + i as u64;
                    leaves.set(idx, cv);
                    if touched.last() != Some(&(idx / lpb)) {
                        touched.push(idx / lpb);
                    }
                }
            }
            Hashed::Tail(h) => manifest.set(g.full_blocks(), &h.0),
            Hashed::Blocks { .. } => unreachable!("incremental builds read leaves"),
        }
        Ok(())
    })?;
    let t_read = Instant::now();
    touched.sort_unstable();
    touched.dedup();
    let mut cvs = vec![[0u8; 32]; lpb as usize];
    for b in touched {
        for (j, cv) in cvs.iter_mut().enumerate() {
            *cv = leaves.get(b * lpb + j as u64);
        }
        manifest.set(b, &block_hash_from_leaves(&cvs).0);
    }
    let t_merge = Instant::now();
    let root = finish_files(leaves, manifest, out_leaves, out_manifest)?;
    tracing::debug!(
        ranges = leaf_ranges.get(),
        reads = stats.reads,
        read_ms = (t_read - t_start).as_secs_f64() * 1e3,
        merge_ms = (t_merge - t_read).as_secs_f64() * 1e3,
        finish_ms = t_merge.elapsed().as_secs_f64() * 1e3,
        "incremental manifest"
    );
    Ok(report(root, BuildMode::Incremental, &g, stats, started))
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub blocks: u64,
    /// How many blocks no longer match the manifest.
    pub bad_count: u64,
    /// Some of them (at most 1000), sorted.
    pub bad_blocks: Vec<u64>,
    /// Whether the leaf index matches the data (it only speeds up later snapshots).
    pub leaf_index_ok: bool,
    pub bytes_read: u64,
    #[serde(serialize_with = "ser_hex")]
    pub root: BlockHash,
}

/// Most mismatching blocks listed in a report.
const MAX_LISTED: usize = 1000;

/// Re-reads the snapshot image and compares it with its manifest and leaf index.
pub fn verify(
    snap: &Path,
    manifest_path: &Path,
    leaves_path: &Path,
    io: &IoConfig,
) -> Result<VerifyReport> {
    verify_paced(snap, manifest_path, leaves_path, io, &mut |_| {})
}

/// [`verify`], telling `pace` the bytes of every read as it is hashed: `pace` may sleep to
/// hold a rate, or while something more urgent runs (reads wait for it).
pub fn verify_paced(
    snap: &Path,
    manifest_path: &Path,
    leaves_path: &Path,
    io: &IoConfig,
    pace: &mut dyn FnMut(u64),
) -> Result<VerifyReport> {
    let manifest = HashFile::open(manifest_path, Kind::Manifest)
        .map_err(|e| format_err(e, "manifest", manifest_path))?;
    let g = manifest.geometry();
    let size = std::fs::metadata(snap).ctx("stat", snap)?.len();
    if size != g.volume_size {
        return Err(StoreError::Corrupt {
            what: "snapshot image",
            path: snap.to_owned(),
            detail: format!(
                "image is {size} bytes, the manifest describes {}",
                g.volume_size
            ),
        });
    }
    let leaf_file = HashFile::open(leaves_path, Kind::Leaves)
        .ok()
        .filter(|l| l.geometry() == g);
    let mut leaf_index_ok = leaf_file.is_some();
    let file = File::open(snap).ctx("open", snap)?;
    let (ranges, tail_has_data) = full_plan(&file, snap, &g)?;
    drop(file);
    let hasher = Hasher::new(g);
    let lpb = g.leaves_per_block() as u64;
    // Mismatches: a count, and a bounded sample of block numbers.
    let mut bad = (0u64, Vec::new());
    let check = |block: u64, h: &BlockHash, bad: &mut (u64, Vec<u64>)| {
        if manifest.hash(block) != *h {
            bad.0 += 1;
            if bad.1.len() < MAX_LISTED {
                bad.1.push(block);
            }
        }
    };
    // Blocks in holes must be zero in the manifest and the leaf index.
    let mut pos = 0u64;
    let bs = g.block_size as u64;
    for &(s, e) in ranges
        .iter()
        .chain(std::iter::once(&(g.tail_start(), g.tail_start())))
    {
        for b in pos / bs..s / bs {
            check(b, &hasher.zero.block, &mut bad);
            if let Some(l) = &leaf_file {
                for j in 0..lpb {
                    leaf_index_ok &= l.entry(b * lpb + j) == hasher.zero.leaf_cvs[j as usize];
                }
            }
        }
        pos = e;
    }
    if g.tail_len() > 0 && !tail_has_data {
        check(g.full_blocks(), &hasher.zero.hash(g.tail_len()), &mut bad);
    }
    let tail_job = tail_job(&g, tail_has_data);
    let jobs =
        planned(cut(ranges.iter().copied(), block_chunk(io, &g), TAG_BLOCKS).chain(tail_job));
    let stats = hasher.read(snap, io, Cache::Cold, jobs, |job, hashed| {
        pace(job.len as u64);
        match hashed {
            Hashed::Blocks { leaves, blocks } => {
                let first = job.offset / bs;
                for (i, h) in blocks.iter().enumerate() {
                    check(first + i as u64, h, &mut bad);
                }
                if let Some(l) = &leaf_file {
                    for (i, cv) in leaves.iter().enumerate() {
                        leaf_index_ok &= l.entry(first * lpb + i as u64) == *cv;
                    }
                }
            }
            Hashed::Tail(h) => check(g.full_blocks(), &h, &mut bad),
            Hashed::Leaves(_) => unreachable!("verify reads whole blocks"),
        }
        Ok(())
    })?;
    let (bad_count, mut bad_blocks) = bad;
    bad_blocks.sort_unstable();
    Ok(VerifyReport {
        ok: bad_count == 0,
        blocks: g.block_count(),
        bad_count,
        bad_blocks,
        leaf_index_ok,
        bytes_read: stats.bytes,
        root: manifest.root(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task's progress counts what the manifest reads: known before the first read, done
    /// when the last block is hashed; holes are neither expected nor read.
    #[test]
    fn a_manifest_build_reports_its_progress() {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = dir.path().join("img");
        let f = std::fs::File::create(&img).expect("create");
        f.set_len(8 << 20).expect("size");
        std::os::unix::fs::FileExt::write_all_at(&f, &vec![7u8; 3 << 20], 1 << 20).expect("data");
        drop(f);
        let src = Source {
            image: &img,
            cache: Cache::Warm,
            size: 8 << 20,
            block_size: 64 << 10,
        };
        let p = std::sync::Arc::new(crate::progress::Progress::default());
        let report = crate::progress::track(&p, || {
            build(
                src,
                None,
                &dir.path().join("m"),
                &dir.path().join("l"),
                &IoConfig::default(),
            )
        })
        .expect("build");
        let (done, total) = p.get();
        assert_eq!(done, report.bytes_read);
        assert_eq!(total, report.bytes_read);
        assert!(
            (3 << 20..8 << 20).contains(&done),
            "read {done} of 8 MiB with 3 MiB of data"
        );
    }

    /// An incremental build takes the changed ranges a window at a time as the comparison
    /// finds them: however they are cut (a range split across windows, empty windows, the
    /// tail's change in the last), its manifest is the full build's.
    #[test]
    fn an_incremental_build_takes_its_changes_in_windows() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let size = (4 << 20) + 5000; // a partial last block
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let f = std::fs::File::create(&a).expect("create");
        f.set_len(size).expect("size");
        f.write_all_at(&vec![3u8; 2 << 20], 1 << 20).expect("data");
        drop(f);
        std::fs::copy(&a, &b).expect("copy");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&b)
            .expect("open");
        let changed = [
            (0, 4096),
            (1_200_000, 1_300_000),
            (3 << 20, (3 << 20) + 8192),
        ];
        for &(s, e) in &changed {
            f.write_all_at(&vec![9u8; (e - s) as usize], s)
                .expect("write");
        }
        f.write_all_at(b"tail", size - 10).expect("tail");
        drop(f);
        let changed = [&changed[..], &[(size - 4096, size)]].concat();
        let src = |image| Source {
            image,
            cache: Cache::Warm,
            size,
            block_size: 64 << 10,
        };
        let io = IoConfig::default();
        let out = |n: &str| dir.path().join(n);
        build(src(&a), None, &out("am"), &out("al"), &io).expect("base");
        let full = build(src(&b), None, &out("bm"), &out("bl"), &io).expect("full");
        let (s1, e1) = changed[1];
        let cuts: Vec<Vec<Vec<(u64, u64)>>> = vec![
            vec![changed.clone()],
            vec![
                vec![changed[0], (s1, 1_250_000)],
                vec![(1_250_000, e1)],
                vec![],
                changed[2..].to_vec(),
            ],
            vec![vec![], changed[..3].to_vec(), vec![], vec![changed[3]]],
        ];
        for (n, windows) in cuts.into_iter().enumerate() {
            let mut windows = windows.into_iter();
            let base = Base {
                manifest: &out("am"),
                leaves: &out("al"),
                changed: &mut windows,
            };
            let p = std::sync::Arc::new(crate::progress::Progress::default());
            let (m, l) = (out(&format!("m{n}")), out(&format!("l{n}")));
            let inc = crate::progress::track(&p, || build(src(&b), Some(base), &m, &l, &io))
                .expect("incremental");
            assert_eq!(inc.mode, BuildMode::Incremental, "cut {n}");
            assert_eq!(inc.root, full.root, "cut {n}");
            let (done, total) = p.get();
            assert_eq!((done, total), (inc.bytes_read, inc.bytes_read), "cut {n}");
        }
    }
}
