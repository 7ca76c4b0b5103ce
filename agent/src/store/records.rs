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
