//! Executing controller tasks at most once.
//!
//! The ledger is a directory, `tasks/` in the data directory: one JSON record per task id
//! (`<id>.json`, written by temp file, fsync and rename), plus `generation`, the newest
//! controller generation seen. Running a task, under the ledger's lock:
//! 1. a task id already recorded is not run again: its recorded state is the answer, and a
//!    record still saying `running` (the agent died during it) becomes `interrupted`;
//! 2. a task from an older generation than the newest seen is refused as `stale`;
//! 3. otherwise the record `running` is made durable first, then the task runs, then its
//!    outcome replaces the record.
//!
//! The lock is held while the task runs, so tasks of one agent run one at a time; the store's
//! own locks order them against CLI commands. A task interrupted by a crash left the store
//! consistent (every store operation recovers first), so `interrupted` means "did not
//! complete", and the controller decides whether to issue a new task.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_wire::task::{SnapshotRecord, Task, TaskKind, TaskResult, TaskState};
use serde::{Deserialize, Serialize};

use crate::error::{IoContext, Result, StoreError};
use crate::fsx::{self, FileLock};
use crate::hooks::Hooks;
use crate::store::Store;

/// A task and where it stands, as kept in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub task: Task,
    pub state: TaskState,
}

/// The ledger of tasks this agent has run.
#[derive(Debug)]
pub struct Ledger {
    dir: PathBuf,
}

impl Ledger {
    /// The ledger in `store`'s data directory.
    pub fn open(store: &Store) -> Result<Ledger> {
        let dir = store.root().join("tasks");
        fs::create_dir_all(&dir).ctx("create", &dir)?;
        Ok(Ledger { dir })
    }

    fn record_path(&self, task: &Task) -> PathBuf {
        // A task id is a validated name: never a path.
        self.dir.join(format!("{}.json", task.id))
    }

    fn write(&self, path: &Path, rec: &Record) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(rec)
            .map_err(|e| StoreError::Invalid(format!("encode task record: {e}")))?;
        fsx::atomic_write(path, &bytes).ctx("write", path)
    }

    fn save(&self, task: &Task, state: &TaskState) -> Result<()> {
        let rec = Record {
            task: task.clone(),
            state: state.clone(),
        };
        self.write(&self.record_path(task), &rec)
    }

    fn newest_generation(&self) -> Result<u64> {
        let p = self.dir.join("generation");
        match fs::read_to_string(&p) {
            Ok(s) => s.trim().parse().map_err(|_| StoreError::Corrupt {
                what: "task ledger",
                path: p,
                detail: format!("generation {s:?} is not a number"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(crate::error::io_err(e, "read", p)),
        }
    }

    /// The recorded state of task `id`, if it was ever seen.
    pub fn get(&self, id: &ferry_wire::Name) -> Result<Option<Record>> {
        let p = self.dir.join(format!("{id}.json"));
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    what: "task record",
                    path: p,
                    detail: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(crate::error::io_err(e, "read", p)),
        }
    }

    /// Runs `task` at most once (see the module doc); returns its final state.
    pub fn run(&self, store: &Store, task: &Task) -> Result<TaskState> {
        let lock_path = self.dir.join("lock");
        let _lock = FileLock::exclusive(&lock_path).ctx("lock", &lock_path)?;
        if let Some(mut rec) = self.get(&task.id)? {
            if rec.task != *task {
                return Err(StoreError::Invalid(format!(
                    "task {} was already given with different content",
                    task.id
                )));
            }
            if rec.state == TaskState::Running {
                tracing::warn!(task = %task.id, "task was interrupted by a restart; not running it again");
                rec.state = TaskState::Interrupted;
                self.save(task, &rec.state)?;
            }
            return Ok(rec.state);
        }
        let newest = self.newest_generation()?;
        if task.generation < newest {
            let state = TaskState::Stale {
                generation: task.generation,
                newest,
            };
            self.save(task, &state)?;
            return Ok(state);
        }
        if task.generation > newest {
            let p = self.dir.join("generation");
            fsx::atomic_write(&p, task.generation.to_string().as_bytes()).ctx("write", &p)?;
        }
        self.save(task, &TaskState::Running)?;
        let state = match execute(store, &task.kind) {
            Ok(result) => TaskState::Done { result },
            Err(e) => TaskState::Failed {
                kind: e.kind().to_string(),
                message: e.to_string(),
            },
        };
        self.save(task, &state)?;
        Ok(state)
    }
}

fn execute(store: &Store, kind: &TaskKind) -> Result<TaskResult> {
    match kind {
        TaskKind::CreateVolume {
            volume,
            size,
            block_size,
        } => {
            let v = store.create_volume(volume.as_str(), *size, *block_size)?;
            Ok(TaskResult::VolumeCreated {
                volume: v.name,
                size: v.size,
            })
        }
        TaskKind::SnapshotGroup {
            snapshot,
            volumes,
            pre_hook,
            post_hook,
            hook_timeout_secs,
        } => {
            let hooks = Hooks {
                pre: pre_hook.clone(),
                post: post_hook.clone(),
                timeout: Duration::from_secs(hook_timeout_secs.unwrap_or(0)),
            };
            let names: Vec<String> = volumes.iter().map(|v| v.to_string()).collect();
            let metas = store.create_group(snapshot.as_str(), &names, &hooks)?;
            Ok(TaskResult::SnapshotGroup {
                snapshots: metas
                    .into_iter()
                    .map(|m| SnapshotRecord {
                        volume: m.volume,
                        snapshot: m.name,
                        size: m.size,
                        root: m.root,
                    })
                    .collect(),
            })
        }
        TaskKind::DeleteSnapshot { volume, snapshot } => {
            store.delete_snapshot(volume.as_str(), snapshot.as_str())?;
            Ok(TaskResult::SnapshotDeleted)
        }
        TaskKind::Rollback { volume, snapshot } => {
            store.rollback(volume.as_str(), snapshot.as_str())?;
            Ok(TaskResult::RolledBack)
        }
        TaskKind::Clone {
            volume,
            snapshot,
            new_volume,
        } => {
            let v = store.clone_volume(volume.as_str(), snapshot.as_str(), new_volume.as_str())?;
            Ok(TaskResult::Cloned { volume: v.name })
        }
    }
}
