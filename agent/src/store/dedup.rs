//! The receiver's dedup index (format: `ferry_wire::blockindex`): for every block a mirror
//! snapshot holds, which mirror volume holds it where. Kept on disk in `DATA/index/`
//! (`blocks-<block size>.idx`, the volume table `volumes.json`, a `lock`), opened in
//! constant time, looked up a page at a time, and updated at every mirror commit with the
//! blocks the new snapshot holds that the one before it did not; memory does not grow with
//! what the node holds. When it must grow it is built again from the manifests held, which
//! also drops the entries of deleted snapshots.
//!
//! The index is a hint. A hit is used only after the newest snapshot of that volume that
//! still holds the block at that place is found by its manifest (the whole hash compared):
//! a stale entry (the snapshot or the volume deleted since) or a damaged page is a miss. A
//! missing or unreadable index is built again from every mirror snapshot's manifest, in
//! passes over ranges of buckets so that memory stays bounded.
//!
//! Writers (commits) hold the index's lock; readers do not: a page read while it is written
//! may decode to garbage, which validation turns into a miss.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;

use ferry_wire::blockindex::{bucket_of, key, Bucket, Entry, Header, IndexError, GROW_AT, PAGE};

use super::*;

/// The smallest table: 64 buckets (256 KiB).
const MIN_BUCKETS: u64 = 64;
/// Entries one build pass holds in memory (32 bytes each: 128 MiB).
const BUILD_PASS: u64 = 4 << 20;
/// Snapshots of one volume tried when validating a hit (newest first).
const TRY_SNAPSHOTS: usize = 4;

/// A mirror volume's snapshots as validation reads them: (image, manifest), newest first.
type Held = Vec<(PathBuf, HashFile)>;

/// What a build reads its entries from: called once per pass with where to put each.
pub type EntrySource<'a> = dyn FnMut(&mut dyn FnMut(Entry)) + 'a;

/// The dedup index of one block size, open.
pub struct Dedup {
    dir: PathBuf,
    volumes_dir: PathBuf,
    block_size: u32,
    file: File,
    header: Header,
    /// Volume ids: the table's position is the id.
    volumes: Vec<Name>,
    /// What validation has read of each volume this session.
    held: HashMap<u32, Held>,
}

impl std::fmt::Debug for Dedup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dedup")
            .field("block_size", &self.block_size)
            .field("buckets", &self.header.buckets)
            .field("entries", &self.header.entries)
            .finish()
    }
}

fn index_path(dir: &Path, block_size: u32) -> PathBuf {
    dir.join(format!("blocks-{block_size}.idx"))
}

fn bad(path: &Path, e: IndexError) -> StoreError {
    StoreError::Corrupt {
        what: "dedup index",
        path: path.to_owned(),
        detail: e.to_string(),
    }
}

impl Store {
    fn index_dir(&self) -> PathBuf {
        self.root.join("index")
    }

    /// The dedup index for `block_size` blocks; built from every mirror snapshot held when
    /// there is none, or it cannot be read.
    pub fn dedup(&self, block_size: u32) -> Result<Dedup> {
        let dir = self.index_dir();
        fs::create_dir_all(&dir).ctx("create", &dir)?;
        match Dedup::open(&dir, &self.volumes_dir(), block_size) {
            Ok(d) => return Ok(d),
            Err(e) if is_not_found(&e) => {}
            Err(e) => tracing::warn!(error = %e, "dedup index unusable: building it again"),
        }
        let _lock = FileLock::exclusive(&dir.join("lock")).ctx("lock", &dir)?;
        // Built by someone else meanwhile?
        if let Ok(d) = Dedup::open(&dir, &self.volumes_dir(), block_size) {
            return Ok(d);
        }
        self.build_dedup(&dir, block_size)?;
        Dedup::open(&dir, &self.volumes_dir(), block_size)
    }

    /// Builds the index of `block_size` from the manifests of every mirror snapshot held,
    /// with room for as many entries again; the caller holds the index's lock. An entry is
    /// made where a block differs from the volume's snapshot before (the rest are the same
    /// entries), so the table holds what is distinct, not what is repeated across snapshots.
    fn build_dedup(&self, dir: &Path, block_size: u32) -> Result<u64> {
        let t0 = std::time::Instant::now();
        let mut volumes = Vec::new();
        let mut held: Vec<(u32, Vec<HashFile>)> = Vec::new();
        for v in self.list_volumes_unlocked()? {
            if v.mirror.is_none() {
                continue;
            }
            let vdir = self.volumes_dir().join(v.name.as_str());
            let manifests: Vec<HashFile> = self
                .read_snapshots(&vdir, &v.name)?
                .iter()
                .filter(|m| m.block_size == block_size)
                .filter_map(|m| {
                    let p = Self::snapshot_dir(&vdir, &m.name).join(MANIFEST);
                    HashFile::open(&p, Kind::Manifest).ok()
                })
                .collect();
            if !manifests.is_empty() {
                held.push((volume_id(&mut volumes, &v.name), manifests));
            }
        }
        write_volumes(dir, &volumes)?;
        let zero = ZeroTable::new(block_size).block;
        let mut each = |sink: &mut dyn FnMut(Entry)| {
            for (id, manifests) in &held {
                let mut before: Option<&HashFile> = None;
                for m in manifests {
                    for i in 0..m.len() {
                        let h = m.hash(i);
                        let same = before.is_some_and(|b| i < b.len() && b.hash(i) == h);
                        if h != zero && !same {
                            sink(Entry::new(&h, *id, i));
                        }
                    }
                    before = Some(m);
                }
            }
        };
        let mut total = 0u64;
        each(&mut |_| total += 1);
        let path = index_path(dir, block_size);
        let n = build(&path, block_size, buckets_for(total * 2), total, &mut each)
            .ctx("build", &path)?;
        tracing::info!(
            block_size,
            entries = n,
            volumes = held.len(),
            ms = t0.elapsed().as_millis() as u64,
            "dedup index built"
        );
        Ok(n)
    }

    /// Records in `d` the blocks mirror snapshot `volume@snap` holds that its snapshot
    /// before does not (what a commit brought); when the table is too full for them, it is
    /// built again from the manifests held instead (which drops what deleted snapshots
    /// left behind). An index that cannot be updated is removed, to be built again by the
    /// next session: it must never miss what it was told.
    pub fn dedup_commit(&self, d: &mut Dedup, volume: &Name, snap: &Name) {
        if let Err(e) = self.try_dedup_commit(d, volume, snap) {
            let path = index_path(&self.index_dir(), d.block_size);
            tracing::warn!(%volume, error = %e, "dedup index not updated: removed, to be built again");
            let _ = fs::remove_file(&path);
        }
    }

    fn try_dedup_commit(&self, d: &mut Dedup, volume: &Name, snap: &Name) -> Result<()> {
        let vdir = self.volumes_dir().join(volume.as_str());
        let snaps = self.read_snapshots(&vdir, volume)?;
        let Some(at) = snaps.iter().position(|m| &m.name == snap) else {
            return Ok(());
        };
        let manifest = |m: &SnapshotMeta| self.manifest(volume.as_str(), m.name.as_str());
        let now = manifest(&snaps[at])?;
        let before = match at {
            0 => None,
            _ => manifest(&snaps[at - 1]).ok(),
        };
        let zero = ZeroTable::new(d.block_size).block;
        let blocks: Vec<(u64, BlockHash)> = (0..now.len())
            .map(|i| (i, now.hash(i)))
            .filter(|(i, h)| {
                *h != zero
                    && !before
                        .as_ref()
                        .is_some_and(|b| *i < b.len() && b.hash(*i) == *h)
            })
            .collect();
        let dir = self.index_dir();
        let _lock = FileLock::exclusive(&dir.join("lock")).ctx("lock", &dir)?;
        // Another writer may have added to it or built it again: work on the file as it is.
        let mut fresh = Dedup::open(&dir, &self.volumes_dir(), d.block_size)?;
        if fresh.header.must_grow(blocks.len() as u64) {
            self.build_dedup(&dir, d.block_size)?;
            fresh = Dedup::open(&dir, &self.volumes_dir(), d.block_size)?;
        } else {
            fresh.insert(volume, &blocks)?;
        }
        *d = fresh;
        Ok(())
    }
}

fn is_not_found(e: &StoreError) -> bool {
    matches!(e, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

fn read_volumes(dir: &Path) -> Result<Vec<Name>> {
    let p = dir.join("volumes.json");
    match fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt {
            what: "dedup index volume table",
            path: p,
            detail: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(e, "read", p)),
    }
}

fn write_volumes(dir: &Path, volumes: &[Name]) -> Result<()> {
    write_json(&dir.join("volumes.json"), &volumes)
}

/// The id of `name` in the volume table, added if new.
fn volume_id(volumes: &mut Vec<Name>, name: &Name) -> u32 {
    match volumes.iter().position(|v| v == name) {
        Some(i) => i as u32,
        None => {
            volumes.push(name.clone());
            (volumes.len() - 1) as u32
        }
    }
}

/// The bucket count of a table for `total` entries.
pub fn buckets_for(total: u64) -> u64 {
    let mut buckets = MIN_BUCKETS;
    while (total as f64) > GROW_AT * buckets as f64 {
        buckets *= 2;
    }
    buckets
}

/// Writes a new index of `buckets` buckets with what `source` yields (about `total`
/// entries); returns the entries written. `source` is called once per pass: each pass
/// keeps the entries of one range of buckets, sorted, and writes those pages in order, so
/// memory holds at most one pass. Replaces `path` when done.
pub fn build(
    path: &Path,
    block_size: u32,
    buckets: u64,
    total: u64,
    source: &mut EntrySource<'_>,
) -> std::io::Result<u64> {
    let tmp = path.with_extension("idx.tmp");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    let mut header = Header {
        block_size,
        buckets,
        entries: 0,
    };
    file.set_len(header.file_len())?;
    let passes = total.div_ceil(BUILD_PASS).max(1);
    let per_pass = buckets.div_ceil(passes);
    let mut spill: Vec<Entry> = Vec::new();
    for p in 0..passes {
        let (lo, hi) = (p * per_pass, ((p + 1) * per_pass).min(buckets));
        let mut mine: Vec<(u64, Entry)> = std::mem::take(&mut spill)
            .into_iter()
            .map(|e| (bucket_of(&e.key, buckets), e))
            .collect();
        source(&mut |e: Entry| {
            let b = bucket_of(&e.key, buckets);
            if (lo..hi).contains(&b) {
                mine.push((b, e));
            }
        });
        mine.sort_unstable_by_key(|(b, e)| (*b, e.key));
        mine.dedup_by(|a, b| a.1 == b.1);
        // Lay out the pages of lo..hi; what overflows the range's last bucket goes on to
        // the next pass (the last pass's overflow wraps to bucket 0, rewritten after).
        let mut page = Bucket::default();
        let mut at = lo;
        let mut k = 0;
        while at < hi {
            while k < mine.len() && mine[k].0 <= at {
                if !page.add(mine[k].1) {
                    break;
                }
                header.entries += 1;
                k += 1;
            }
            if k < mine.len() && mine[k].0 <= at {
                page.overflow = true;
            }
            file.write_all_at(&page.encode(), Header::bucket_at(at))?;
            page = Bucket::default();
            at += 1;
        }
        spill.extend(mine.into_iter().skip(k).map(|(_, e)| e));
    }
    // What overflowed the table's last bucket wraps around.
    insert_pages(&file, &mut header, spill.into_iter())?;
    file.write_all_at(&header.encode(), 0)?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    if let Some(d) = path.parent() {
        fsx::fsync_dir(d)?;
    }
    Ok(header.entries)
}

/// Adds `entries` to the table in `file` (read-modify-write of the buckets they touch, in
/// order; a full bucket passes entries to the next); counts them into `header`.
fn insert_pages(
    file: &File,
    header: &mut Header,
    entries: impl Iterator<Item = Entry>,
) -> std::io::Result<()> {
    let mut by: Vec<(u64, Entry)> = entries
        .map(|e| (bucket_of(&e.key, header.buckets), e))
        .collect();
    by.sort_unstable_by_key(|(b, e)| (*b, e.key));
    by.dedup_by(|a, b| a.1 == b.1);
    let mut page = [0u8; PAGE];
    let mut k = 0;
    let mut carry: Vec<Entry> = Vec::new();
    let mut at = by.first().map_or(0, |(b, _)| *b);
    let mut steps = 0u64;
    while (k < by.len() || !carry.is_empty()) && steps <= header.buckets {
        file.read_exact_at(&mut page, Header::bucket_at(at))?;
        let mut b = Bucket::decode(&page);
        let before = b.entries.len();
        let mut here: Vec<Entry> = std::mem::take(&mut carry);
        while k < by.len() && by[k].0 == at {
            here.push(by[k].1);
            k += 1;
        }
        for e in here {
            if !b.add(e) {
                carry.push(e);
            }
        }
        header.entries += (b.entries.len() - before) as u64;
        file.write_all_at(&b.encode(), Header::bucket_at(at))?;
        at = if carry.is_empty() {
            by.get(k).map_or(at, |(nb, _)| *nb)
        } else {
            (at + 1) % header.buckets
        };
        steps += 1;
    }
    Ok(())
}

impl Dedup {
    /// Opens the index of `block_size` in `dir` (not found: `NotFound`).
    fn open(dir: &Path, volumes_dir: &Path, block_size: u32) -> Result<Dedup> {
        let path = index_path(dir, block_size);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .ctx("open", &path)?;
        let mut head = [0u8; PAGE];
        file.read_exact_at(&mut head, 0).ctx("read", &path)?;
        let header = Header::decode(&head).map_err(|e| bad(&path, e))?;
        let len = file.metadata().ctx("stat", &path)?.len();
        if header.block_size != block_size || len != header.file_len() {
            return Err(StoreError::Corrupt {
                what: "dedup index",
                path,
                detail: format!(
                    "{len} bytes for {} buckets of {} blocks",
                    header.buckets, header.block_size
                ),
            });
        }
        Ok(Dedup {
            dir: dir.to_owned(),
            volumes_dir: volumes_dir.to_owned(),
            block_size,
            file,
            header,
            volumes: read_volumes(dir)?,
            held: HashMap::new(),
        })
    }

    /// How many entries it holds, in how many buckets.
    pub fn size(&self) -> (u64, u64) {
        (self.header.entries, self.header.buckets)
    }

    /// Where a block with `hash` is held now: the image of the newest snapshot of a volume
    /// the index names that holds it at that place, and its byte offset; checked against
    /// that snapshot's manifest.
    pub fn lookup(&mut self, hash: &BlockHash) -> Option<(PathBuf, u64)> {
        let found = probe(&self.file, &self.header, &key(hash)).ok()?;
        found.iter().find_map(|e| self.check(e, hash))
    }

    /// A hit checked: a snapshot of volume `e.volume` whose manifest has `hash` at
    /// `e.block`.
    fn check(&mut self, e: &Entry, hash: &BlockHash) -> Option<(PathBuf, u64)> {
        let name = self.volumes.get(e.volume as usize)?.clone();
        let held = match self.held.entry(e.volume) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(snapshots_of(&self.volumes_dir, &name, self.block_size))
            }
        };
        held.iter()
            .find(|(_, m)| e.block < m.len() && m.hash(e.block) == *hash)
            .map(|(img, _)| (img.clone(), e.block * self.block_size as u64))
    }

    /// Adds what mirror volume `volume` holds at `blocks` (index, hash); the caller holds
    /// the lock and has made sure the table has room. Synced before it returns.
    fn insert(&mut self, volume: &Name, blocks: &[(u64, BlockHash)]) -> Result<()> {
        let id = match self.volumes.iter().position(|v| v == volume) {
            Some(i) => i as u32,
            None => {
                let id = volume_id(&mut self.volumes, volume);
                write_volumes(&self.dir, &self.volumes)?;
                id
            }
        };
        let path = index_path(&self.dir, self.block_size);
        let entries = blocks.iter().map(|(i, h)| Entry::new(h, id, *i));
        insert_pages(&self.file, &mut self.header, entries).ctx("write", &path)?;
        self.file
            .write_all_at(&self.header.encode(), 0)
            .ctx("write", &path)?;
        self.file.sync_data().ctx("fsync", &path)
    }
}

/// Reads the header of an index file.
pub fn read_header(file: &File) -> std::io::Result<Header> {
    let mut head = [0u8; PAGE];
    file.read_exact_at(&mut head, 0)?;
    Header::decode(&head).map_err(std::io::Error::other)
}

/// The entries of `key` in the table of `file`: its bucket, and the next ones while they
/// say entries overflowed. Usually one page read.
pub fn probe(file: &File, header: &Header, key: &[u8; 16]) -> std::io::Result<Vec<Entry>> {
    let mut at = bucket_of(key, header.buckets);
    let mut page = [0u8; PAGE];
    let mut out = Vec::new();
    for _ in 0..header.buckets {
        file.read_exact_at(&mut page, Header::bucket_at(at))?;
        let b = Bucket::decode(&page);
        out.extend(b.find(key).copied());
        if !b.overflow {
            break;
        }
        at = (at + 1) % header.buckets;
    }
    Ok(out)
}

/// Volume `name`'s snapshots (of `block_size` blocks) as validation reads them, newest
/// first, at most [`TRY_SNAPSHOTS`].
fn snapshots_of(volumes_dir: &Path, name: &Name, block_size: u32) -> Held {
    let vdir = volumes_dir.join(name.as_str());
    let Ok(rd) = fs::read_dir(vdir.join("snapshots")) else {
        return Vec::new();
    };
    let mut snaps: Vec<(u64, PathBuf)> = rd
        .flatten()
        .filter(|e| !is_scratch(&e.file_name().to_string_lossy()))
        .filter_map(|e| {
            let meta: SnapshotMeta = read_json(&e.path().join(SNAPSHOT_META), "snapshot").ok()?;
            (meta.block_size == block_size).then(|| (meta.created_unix_ns, e.path()))
        })
        .collect();
    snaps.sort_by_key(|s| std::cmp::Reverse(s.0));
    snaps
        .into_iter()
        .take(TRY_SNAPSHOTS)
        .filter_map(|(_, d)| {
            Some((
                d.join(IMAGE),
                HashFile::open(&d.join(MANIFEST), Kind::Manifest).ok()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u64) -> BlockHash {
        BlockHash::of(&i.to_le_bytes())
    }

    /// A build and then inserts (growing the table) keep every entry findable by its key;
    /// what a lookup then does is up to the manifests (tested with the store).
    #[test]
    fn built_and_grown_tables_find_every_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("blocks-65536.idx");
        let n = build(&path, 65536, buckets_for(5000), 5000, &mut |sink| {
            for i in 0..5000 {
                sink(Entry::new(&h(i), 1, i));
            }
        })
        .expect("build");
        assert_eq!(n, 5000);
        let file = File::open(&path).expect("open");
        let hd = read_header(&file).expect("header");
        assert_eq!(hd.entries, 5000);
        let find = |file: &File, hd: &Header, i: u64| {
            let found = probe(file, hd, &key(&h(i))).expect("probe");
            found.first().map(|e| e.block)
        };
        for i in (0..5000).step_by(37) {
            assert_eq!(find(&file, &hd, i), Some(i));
        }
        assert_eq!(find(&file, &hd, 99_999), None);
        // Inserting far beyond what it was sized for: entries spill, then the table grows.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open");
        let mut hd2 = hd;
        insert_pages(
            &file,
            &mut hd2,
            (5000..6000).map(|i| Entry::new(&h(i), 2, i)),
        )
        .expect("insert");
        assert_eq!(hd2.entries, 6000);
        for i in (0..6000).step_by(11) {
            assert_eq!(find(&file, &hd2, i), Some(i), "{i}");
        }
    }
}
