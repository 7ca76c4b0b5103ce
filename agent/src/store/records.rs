//! What the store keeps on disk beside the images (`volume.json`, `snapshot.json`, the group
//! journal) and the reports its operations return.

use super::*;

/// Owned (the store made the image) or adopted (an existing file, by path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    Owned,
    Adopted,
}

/// Where a cloned volume came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub volume: Name,
    pub snapshot: Name,
}

/// `volume.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeMeta {
    pub name: Name,
    pub kind: VolumeKind,
    /// The image path of an adopted volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    pub block_size: u32,
    pub created_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// Set on mirror volumes: where the replicated data comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorInfo>,
}

/// The source of a mirror volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorInfo {
    pub site: Name,
    pub node: Name,
}

pub(super) fn refuse_mirror(meta: &VolumeMeta, op: &str) -> Result<()> {
    match &meta.mirror {
        Some(m) => Err(StoreError::Refused(format!(
            "volume {} is a mirror of {}@{}: mirrors change only by replication ({op} refused); clone a mirror snapshot to get a writable volume",
            meta.name, m.node, m.site
        ))),
        None => Ok(()),
    }
}

/// A volume as reported to users.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeInfo {
    pub name: Name,
    pub kind: VolumeKind,
    pub path: PathBuf,
    pub size: u64,
    pub block_size: u32,
    pub snapshots: usize,
    pub created_unix_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorInfo>,
}

/// Membership of a multi-volume snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupInfo {
    pub id: String,
    pub volumes: Vec<Name>,
}

/// How a snapshot's manifest was computed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestInfo {
    pub mode: manifest::BuildMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<Name>,
    pub bytes_read: u64,
    pub elapsed_ms: f64,
    /// What read the data (none when nothing was read: a received snapshot).
    #[serde(default)]
    pub engine: Option<crate::engine::EngineKind>,
}

/// `snapshot.json`, and a snapshot as reported to users.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub name: Name,
    pub volume: Name,
    pub created_unix_ns: u64,
    pub size: u64,
    pub block_size: u32,
    /// Manifest root, hex.
    pub root: String,
    pub method: Method,
    pub manifest: ManifestInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupInfo>,
}

/// The journal record of a multi-volume snapshot in progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct GroupJournal {
    pub(super) snapshot: Name,
    pub(super) group: GroupInfo,
}

/// The result of `diff`.
#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    pub volume: Name,
    pub base: Name,
    pub snapshot: Name,
    /// `fiemap` (exact changed extents) or `manifest` (changed blocks by hash).
    pub method: &'static str,
    /// Granularity of the ranges in bytes (filesystem block or manifest block).
    pub granularity: u64,
    /// Whether the ranges are the ones recorded when the snapshot was taken on top of `base`
    /// (its `changes`), rather than compared now.
    pub recorded: bool,
    pub changed_bytes: u64,
    pub ranges: Vec<(u64, u64)>,
}

/// What a rollback did.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub volume: Name,
    pub snapshot: Name,
    pub path: PathBuf,
    pub size: u64,
}

/// What deleting a volume did.
#[derive(Debug, Clone, Serialize)]
pub struct DeleteReport {
    pub volume: Name,
    pub kind: VolumeKind,
    pub snapshots_deleted: usize,
    /// Adopted images are never deleted, only forgotten.
    pub image_deleted: bool,
    pub path: PathBuf,
}

/// `changes` in a snapshot directory: the byte ranges where the snapshot may differ from
/// the snapshot that was the volume's newest when it was taken. The reflink backend finds
/// them by comparing the two images' extents (FIEMAP), once, for the snapshot's incremental
/// manifest; a replication from that same base reads them here instead of comparing again.
/// A hint: checksummed, written before the snapshot directory commits, and ignored (the
/// extents are compared again) when missing, damaged or about another base.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Changes {
    /// The base, identified by name, creation time and root (a name can be reused).
    pub base: Name,
    pub base_created_unix_ns: u64,
    pub base_root: String,
    /// The snapshot's size: no range ends beyond it.
    pub size: u64,
    /// Sorted, non-empty, non-overlapping `[start, end)` byte ranges.
    pub ranges: Vec<(u64, u64)>,
}

const CHANGES_MAGIC: &[u8; 8] = b"ferrychg";
/// Magic, then the BLAKE3 of the body, then the body (bincode).
const CHANGES_HEADER: usize = 8 + 32;

impl Changes {
    /// Whether this record describes a snapshot of `size` bytes relative to `base`.
    pub fn describes(&self, base: &SnapshotMeta, size: u64) -> bool {
        self.base == base.name
            && self.base_created_unix_ns == base.created_unix_ns
            && self.base_root == base.root
            && self.size == size
    }

    /// The ranges are sorted, disjoint, non-empty and within the snapshot.
    fn well_formed(&self) -> bool {
        let mut end = 0;
        self.ranges.iter().all(|&(s, e)| {
            let ok = s >= end && e > s && e <= self.size;
            end = e;
            ok
        })
    }

    /// The file's bytes; `None` when the ranges are too many for one record (the extents
    /// are then compared again when needed).
    pub fn encode(&self) -> Option<Vec<u8>> {
        let body = ferry_wire::codec::encode(self).ok()?;
        let mut out = Vec::with_capacity(CHANGES_HEADER + body.len());
        out.extend_from_slice(CHANGES_MAGIC);
        out.extend_from_slice(blake3::hash(&body).as_bytes());
        out.extend_from_slice(&body);
        Some(out)
    }

    /// The record in `bytes`, if it is whole and well formed.
    pub fn decode(bytes: &[u8]) -> Option<Changes> {
        let (head, body) = bytes.split_at_checked(CHANGES_HEADER)?;
        if &head[..8] != CHANGES_MAGIC || head[8..] != *blake3::hash(body).as_bytes() {
            return None;
        }
        let c: Changes =
            ferry_wire::codec::decode(body, ferry_wire::codec::MAX_MESSAGE_SIZE).ok()?;
        c.well_formed().then_some(c)
    }

    /// Reads the record at `path`: `None` when there is none, or (with a warning) when it
    /// cannot be used.
    pub fn read(path: &Path) -> Option<Changes> {
        use std::io::Read;
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read recorded changes; comparing extents instead");
                return None;
            }
        };
        let mut bytes = Vec::new();
        let limit = (CHANGES_HEADER + ferry_wire::codec::MAX_MESSAGE_SIZE) as u64;
        let read = f.take(limit + 1).read_to_end(&mut bytes);
        let c = read.ok().and_then(|_| Changes::decode(&bytes));
        if c.is_none() {
            tracing::warn!(path = %path.display(), "recorded changes are damaged; comparing extents instead");
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changes(ranges: &[(u64, u64)]) -> Changes {
        Changes {
            base: Name::new("base").expect("name"),
            base_created_unix_ns: 7,
            base_root: "ab".repeat(32),
            size: 1 << 20,
            ranges: ranges.to_vec(),
        }
    }

    #[test]
    fn a_record_reads_back_only_when_whole_and_well_formed() {
        type Case<'a> = (&'a str, &'a [(u64, u64)], bool);
        let cases: &[Case] = &[
            ("none", &[], true),
            ("one", &[(0, 4096)], true),
            ("adjacent", &[(0, 4096), (4096, 8192)], true),
            ("up to the end", &[(8192, 1 << 20)], true),
            ("unsorted", &[(8192, 12288), (0, 4096)], false),
            ("overlapping", &[(0, 8192), (4096, 12288)], false),
            ("empty range", &[(4096, 4096)], false),
            ("beyond the snapshot", &[(0, (1 << 20) + 1)], false),
        ];
        for &(what, ranges, ok) in cases {
            let c = changes(ranges);
            let bytes = c.encode().expect("encodes");
            assert_eq!(Changes::decode(&bytes), ok.then(|| c.clone()), "{what}");
        }
        let bytes = changes(&[(0, 4096), (65536, 69632)])
            .encode()
            .expect("encodes");
        for i in [0, 9, CHANGES_HEADER, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert_eq!(Changes::decode(&bad), None, "byte {i} changed");
        }
        for n in [0, 8, CHANGES_HEADER, bytes.len() - 1] {
            assert_eq!(Changes::decode(&bytes[..n]), None, "cut to {n} bytes");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Changes::decode(&longer), None, "a trailing byte");
    }

    #[test]
    fn too_many_ranges_for_one_record_are_not_recorded() {
        let many: Vec<(u64, u64)> = (0..2_000_000u64).map(|i| (2 * i, 2 * i + 1)).collect();
        let c = Changes {
            size: u64::MAX,
            ..changes(&many)
        };
        assert_eq!(c.encode(), None);
    }
}
