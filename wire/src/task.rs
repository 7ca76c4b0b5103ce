//! Tasks: the data-layer work a controller gives an agent, and what the agent reports back.
//!
//! A task carries an id (unique, chosen by the controller) and the issuing controller's
//! generation. An agent executes each task id at most once: it records the task as started,
//! durably, before acting, so a task it finds started but not finished after a crash is
//! reported [`TaskState::Interrupted`], never run again. A task from a generation older than
//! the newest the agent has seen comes from a deposed controller and is refused.
//!
//! Enums are externally tagged (`{"snapshot_group": {...}}` in JSON): bincode, the wire
//! codec, cannot decode internally tagged ones.

use serde::{Deserialize, Serialize};

use crate::name::Name;

/// Limit on one encoded task or task report.
pub const TASK_LIMIT: usize = 256 << 10;

/// One unit of data-layer work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: Name,
    /// The issuing controller's generation (leadership term); higher wins.
    pub generation: u64,
    pub kind: TaskKind,
    /// If the agent cannot start it within this many seconds of receiving it (its other
    /// tasks run one at a time), it refuses it (`not_started`) and never runs it: a caller
    /// that stopped waiting knows it did not happen.
    #[serde(default)]
    pub start_within_secs: Option<u64>,
}

/// What a task does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Create an owned, sparse volume.
    CreateVolume {
        volume: Name,
        size: u64,
        block_size: Option<u64>,
    },
    /// One snapshot of several volumes under one name, all or nothing, with hooks around it.
    /// With `hold`, the snapshot is the middle step of a prepare / snapshot / release across
    /// nodes: it is taken only while that hold (see [`TaskKind::Prepare`]) is still held,
    /// and the hooks are the hold's, not run again.
    SnapshotGroup {
        snapshot: Name,
        volumes: Vec<Name>,
        pre_hook: Option<String>,
        post_hook: Option<String>,
        hook_timeout_secs: Option<u64>,
        #[serde(default)]
        hold: Option<Name>,
    },
    /// First step across nodes: run the pre hook (freeze) for these volumes and hold until
    /// [`TaskKind::Release`]. If no release comes within `hold_secs` of the pre hook's end,
    /// the agent runs the post hook by itself (a controller that died never leaves a node
    /// frozen) and a later snapshot under this hold fails.
    Prepare {
        hold: Name,
        volumes: Vec<Name>,
        pre_hook: String,
        post_hook: Option<String>,
        hook_timeout_secs: Option<u64>,
        hold_secs: u64,
    },
    /// Last step across nodes: run the hold's post hook (thaw) and drop it. Releasing a hold
    /// that is gone (released already, expired) does nothing; a prepare arriving after its
    /// release is refused.
    Release {
        hold: Name,
    },
    DeleteSnapshot {
        volume: Name,
        snapshot: Name,
    },
    /// Roll a volume back to a snapshot in place.
    Rollback {
        volume: Name,
        snapshot: Name,
    },
    /// A new, writable volume from a snapshot (a rebuild, at a target).
    Clone {
        volume: Name,
        snapshot: Name,
        new_volume: Name,
    },
    /// Delete a volume (an adopted one is forgotten, its file left where it is). One with
    /// snapshots is refused unless `force`, which deletes them too.
    DeleteVolume {
        volume: Name,
        force: bool,
    },
    /// A new, writable volume from a snapshot (at a target, from a mirror snapshot: a
    /// rebuild, or a drill's scratch copy) that also keeps the snapshot, under its name, as
    /// its own first snapshot: protecting the new volume to a site that holds that snapshot
    /// (the site it was mirrored from) then starts from it instead of a full copy.
    Rebuild {
        volume: Name,
        snapshot: Name,
        new_volume: Name,
    },
    /// Re-read snapshot `snapshot` of `volume` (with `live`, the volume's current image
    /// instead: a drill's freshly rebuilt volume) and compare every block with the
    /// snapshot's manifest, reading at most `bytes_per_sec` and pausing while the agent
    /// sends or receives a transfer. Runs beside the agent's other tasks.
    Verify {
        volume: Name,
        snapshot: Name,
        live: bool,
        bytes_per_sec: Option<u64>,
    },
    /// Run `command` (`/bin/sh -c`) for object `object` with its volumes here in the
    /// environment (`FERRY_OBJECT`, `FERRY_VOLUMES`, `FERRY_VOLUME_PATHS`, `FERRY_VOLUME`:
    /// the first path), killed with everything it started after `timeout_secs`: a drill's
    /// check (`fsck -n "$FERRY_VOLUME"`, a boot test). Runs beside the agent's other tasks.
    Check {
        object: Name,
        volumes: Vec<Name>,
        command: String,
        timeout_secs: u64,
    },
    /// Send snapshot `snapshot` of `volume` to the agent at `peer` (`HOST:PORT`), which must
    /// be a node of site `site`, into its mirror volume `mirror`, relative to the newest
    /// snapshot both hold with the same root. Retryable failures are retried up to
    /// `retries` times with backoff; an interrupted transfer resumes from the receiver's
    /// journal. Runs beside the agent's other tasks, through its one bandwidth budget.
    Replicate {
        volume: Name,
        snapshot: Name,
        site: Name,
        peer: String,
        mirror: Name,
        retries: u32,
    },
}

/// A snapshot a task made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SnapshotRecord {
    pub volume: Name,
    pub snapshot: Name,
    pub size: u64,
    /// Manifest root, hex.
    pub root: String,
    /// Bytes the manifest read (everything on a first snapshot; the changed extents after).
    #[serde(default)]
    pub bytes_read: u64,
    /// Milliseconds the manifest took.
    #[serde(default)]
    pub manifest_ms: u64,
}

/// What a finished task produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskResult {
    VolumeCreated {
        volume: Name,
        size: u64,
    },
    SnapshotGroup {
        snapshots: Vec<SnapshotRecord>,
    },
    SnapshotDeleted,
    /// The pre hook ran; the hold lasts `hold_secs` unless released.
    Prepared,
    /// The post hook ran (`expired`: the hold had already ended by itself, its post hook run
    /// then; `false` with no hold: nothing to do).
    Released {
        expired: bool,
    },
    RolledBack,
    Cloned {
        volume: Name,
    },
    VolumeDeleted {
        volume: Name,
        /// Snapshots deleted with it (`force`).
        snapshots: u32,
    },
    /// The new volume, and the snapshot it keeps (its root, hex).
    Rebuilt {
        volume: Name,
        snapshot: Name,
        root: String,
    },
    /// What a re-read found: `ok` when every block matched the manifest, whose root (hex)
    /// is `root`; `bad_blocks` of `blocks` did not (the first of them in `first_bad`).
    Verified {
        ok: bool,
        root: String,
        blocks: u64,
        bad_blocks: u64,
        first_bad: Vec<u64>,
        bytes_read: u64,
        elapsed_ms: u64,
    },
    /// The check command exited 0; the end of what it printed.
    Checked {
        elapsed_ms: u64,
        output: String,
    },
    /// The mirror holds the snapshot with this root (hex).
    Replicated {
        root: String,
        /// The snapshot it was sent relative to.
        base: Option<Name>,
        sent_bytes: u64,
        /// Blocks of the volume, and those sent.
        blocks: u64,
        sent_blocks: u64,
        /// Blocks an interrupted transfer had already delivered.
        resumed_blocks: u64,
        elapsed_ms: u64,
        /// The mirror held it already (an earlier try committed it).
        already_there: bool,
    },
}

/// Where a task stands, as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Recorded as started; running now.
    Running,
    Done {
        result: TaskResult,
    },
    /// It ran and failed; `kind` is the agent's stable error kind.
    Failed {
        kind: String,
        message: String,
    },
    /// The agent stopped (crashed, was killed) while running it. It will not run again; the
    /// controller decides what to do (the store's own recovery has made the volumes
    /// consistent: an interrupted group snapshot is rolled back, a rollback completed).
    Interrupted,
    /// Refused without running: the controller that sent it has been superseded.
    Stale {
        generation: u64,
        newest: u64,
    },
}

impl TaskState {
    /// Why a final task did not succeed, in words for a run's or a rollback's record; `None`
    /// when it is done or still running.
    pub fn failure(&self) -> Option<String> {
        match self {
            TaskState::Done { .. } | TaskState::Running => None,
            TaskState::Failed { message, .. } => Some(message.clone()),
            TaskState::Interrupted => Some("the agent restarted while running it".into()),
            TaskState::Stale { .. } => Some("refused: this controller was superseded".into()),
        }
    }

    /// Whether the task is over (anything but `Running`).
    pub fn is_final(&self) -> bool {
        !matches!(self, TaskState::Running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_round_trip_through_the_codec() {
        let n = |s: &str| Name::new(s).expect("name");
        let t = Task {
            id: n("t-0001"),
            generation: 3,
            start_within_secs: None,
            kind: TaskKind::SnapshotGroup {
                snapshot: n("hourly-2026-11-24T10"),
                volumes: vec![n("v1"), n("v2")],
                pre_hook: Some("fsfreeze -f /mnt".into()),
                post_hook: None,
                hook_timeout_secs: Some(30),
                hold: None,
            },
        };
        let b = crate::codec::encode(&t).expect("encode");
        assert_eq!(
            crate::codec::decode::<Task>(&b, TASK_LIMIT).expect("decode"),
            t
        );
        let p = Task {
            id: n("t-0002"),
            generation: 3,
            start_within_secs: Some(20),
            kind: TaskKind::Prepare {
                hold: n("r1"),
                volumes: vec![n("v1")],
                pre_hook: "fsfreeze -f /mnt".into(),
                post_hook: Some("fsfreeze -u /mnt".into()),
                hook_timeout_secs: None,
                hold_secs: 60,
            },
        };
        let b = crate::codec::encode(&p).expect("encode");
        assert_eq!(
            crate::codec::decode::<Task>(&b, TASK_LIMIT).expect("decode"),
            p
        );
        let s = TaskState::Done {
            result: TaskResult::Cloned { volume: n("r") },
        };
        assert!(s.is_final() && !TaskState::Running.is_final());
    }
}
