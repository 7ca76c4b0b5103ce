//! Executing controller tasks at most once.
//!
//! The ledger is a directory, `tasks/` in the data directory: one JSON record per task id
//! (`<id>.json`, written by temp file, fsync and rename), plus `generation`, the newest
//! controller generation seen. Running a task, under the ledger's lock:
//! 1. a task id already recorded is not run again: its recorded state is the answer, and a
//!    record still saying `running` (the agent died during it) becomes `interrupted`. The
//!    generation does not matter here: a new leader resuming a run sends the same ids under
//!    its own, newer generation, and must get the same answer (the content must match);
//! 2. a task from an older generation than the newest seen is refused as `stale`;
//! 3. otherwise the record `running` is made durable first, then the task runs, then its
//!    outcome replaces the record.
//!
//! The lock is held while the task runs, so tasks of one agent run one at a time; the store's
//! own locks order them against CLI commands. A task interrupted by a crash left the store
//! consistent (every store operation recovers first), so `interrupted` means "did not
//! complete", and the controller decides whether to issue a new task.
//!
//! **Holds** (prepare / snapshot / release across nodes): a prepare runs the pre hook and
//! records `holds/<hold>.json` (the post hook, the volumes, when it ends); a snapshot under
//! the hold checks it is still held; a release runs the post hook and replaces the record
//! with `holds/<hold>.done` saying `released`. A hold past its end is ended by the agent
//! itself ([`Ledger::end_expired_holds`], run by the daemon every second and before every
//! task): post hook, then `done` saying `expired`. Holds are handled under the ledger's
//! lock, so a hold never ends in the middle of its snapshot, and a hold survives an agent
//! restart (the filesystem stays frozen across it; the record says how to thaw it). A
//! prepare whose hold is already `done` is refused: a release overtook it.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// A hold in force (see the module doc).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Hold {
    volumes: Vec<(String, PathBuf)>,
    post_hook: Option<String>,
    hook_timeout_secs: Option<u64>,
    /// Unix milliseconds.
    ends_ms: u64,
}

/// How long a hold's `done` marker is kept (it refuses a prepare that a release overtook).
const DONE_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
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

    fn save(&self, task: &Task, state: &TaskState) -> Result<()> {
        let rec = Record {
            task: task.clone(),
            state: state.clone(),
        };
        write_record(&self.record_path(task), &rec)
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
        read_record(&self.dir.join(format!("{id}.json")), "task record")
    }

    /// The hold `hold`, if it is in force.
    fn hold(&self, hold: &str) -> Result<Option<Hold>> {
        read_record(
            &self.holds_dir().join(format!("{hold}.json")),
            "hold record",
        )
    }

    fn lock(&self) -> Result<FileLock> {
        let lock_path = self.dir.join("lock");
        FileLock::exclusive(&lock_path).ctx("lock", &lock_path)
    }

    fn holds_dir(&self) -> PathBuf {
        self.dir.join("holds")
    }

    /// Ends every hold past its end (post hook, `done` saying `expired`) and forgets old
    /// `done` markers. The daemon calls it every second.
    pub fn end_expired_holds(&self, store: &Store) -> Result<()> {
        let _lock = self.lock()?;
        self.end_expired(store)
    }

    fn end_expired(&self, store: &Store) -> Result<()> {
        let dir = self.holds_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(crate::error::io_err(e, "list", dir)),
        };
        for entry in entries {
            let entry = entry.ctx("list", &dir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(hold) = name.strip_suffix(".json") {
                let Ok(Some(rec)) = self.hold(hold) else {
                    continue;
                };
                if rec.ends_ms <= now_ms() {
                    tracing::warn!(hold, "hold not released in time: ending it (post hook)");
                    if let Err(e) = self.end_hold(store, hold, &rec, "expired") {
                        tracing::warn!(hold, error = %e, "ending the hold failed");
                    }
                }
            } else if name.ends_with(".done") {
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > DONE_KEPT);
                if old {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }

    /// Runs a hold's post hook, then marks the hold done (`how`: released or expired),
    /// whatever the hook's outcome (which is returned). A crash between the two thaws twice
    /// at the next end, never not at all.
    fn end_hold(&self, store: &Store, hold: &str, rec: &Hold, how: &str) -> Result<()> {
        let thawed = match &rec.post_hook {
            Some(post) => {
                let env = crate::hooks::env(hold, &rec.volumes);
                let t = store.hook_timeout(Duration::from_secs(rec.hook_timeout_secs.unwrap_or(0)));
                crate::hooks::run("post", post, &env, t).map(drop)
            }
            None => Ok(()),
        };
        let dir = self.holds_dir();
        let done = dir.join(format!("{hold}.done"));
        fsx::atomic_write(&done, how.as_bytes()).ctx("write", &done)?;
        let path = dir.join(format!("{hold}.json"));
        fs::remove_file(&path).ctx("remove", &path)?;
        fsx::fsync_dir(&dir).ctx("fsync", &dir)?;
        thawed
    }

    fn prepare(&self, store: &Store, kind: &TaskKind) -> Result<TaskResult> {
        let TaskKind::Prepare {
            hold,
            volumes,
            pre_hook,
            post_hook,
            hook_timeout_secs,
            hold_secs,
        } = kind
        else {
            return Err(StoreError::Invalid("not a prepare".into()));
        };
        let dir = self.holds_dir();
        fs::create_dir_all(&dir).ctx("create", &dir)?;
        if dir.join(format!("{hold}.done")).exists() {
            return Err(StoreError::HoldEnded(format!(
                "hold {hold} was released before it was prepared"
            )));
        }
        let vols = store.volume_paths(volumes)?;
        let env = crate::hooks::env(hold.as_str(), &vols);
        let timeout = store.hook_timeout(Duration::from_secs(hook_timeout_secs.unwrap_or(0)));
        if let Err(e) = crate::hooks::run("pre", pre_hook, &env, timeout) {
            // The pre hook may have frozen part of what it meant to: thaw regardless.
            if let Some(post) = post_hook {
                let _ = crate::hooks::run("post", post, &env, timeout);
            }
            return Err(e);
        }
        let rec = Hold {
            volumes: vols,
            post_hook: post_hook.clone(),
            hook_timeout_secs: *hook_timeout_secs,
            ends_ms: now_ms() + hold_secs.saturating_mul(1000),
        };
        write_record(&dir.join(format!("{hold}.json")), &rec)?;
        Ok(TaskResult::Prepared)
    }

    /// Checks that `hold` is held now (the caller holds the ledger's lock).
    fn check_held(&self, hold: &ferry_wire::Name) -> Result<()> {
        match self.hold(hold.as_str()) {
            Ok(Some(rec)) if rec.ends_ms > now_ms() => Ok(()),
            Ok(Some(_)) => Err(StoreError::HoldEnded(format!(
                "hold {hold} ended before the snapshot"
            ))),
            _ => Err(StoreError::HoldEnded(format!(
                "hold {hold} is not held here (never prepared, released or ended)"
            ))),
        }
    }

    fn release(&self, store: &Store, hold: &ferry_wire::Name) -> Result<TaskResult> {
        let dir = self.holds_dir();
        fs::create_dir_all(&dir).ctx("create", &dir)?;
        if let Ok(Some(rec)) = self.hold(hold.as_str()) {
            self.end_hold(store, hold.as_str(), &rec, "released")?;
            return Ok(TaskResult::Released { expired: false });
        }
        let done = dir.join(format!("{hold}.done"));
        match fs::read_to_string(&done) {
            Ok(how) => Ok(TaskResult::Released {
                expired: how == "expired",
            }),
            Err(_) => {
                // Never prepared (yet): mark it, so a prepare that comes late is refused.
                fsx::atomic_write(&done, b"released").ctx("write", &done)?;
                Ok(TaskResult::Released { expired: false })
            }
        }
    }

    /// Runs `task` at most once (see the module doc); returns its final state. `received`
    /// is when it arrived: one that cannot start within its `start_within_secs` of that is
    /// refused, recorded so, and never runs.
    pub fn run(
        &self,
        store: &Store,
        task: &Task,
        received: std::time::Instant,
    ) -> Result<TaskState> {
        let _lock = self.lock()?;
        if let Some(answer) = self.admit(store, task, received)? {
            return Ok(answer);
        }
        let outcome = match &task.kind {
            TaskKind::Prepare { .. } => self.prepare(store, &task.kind),
            TaskKind::Release { hold } => self.release(store, hold),
            TaskKind::SnapshotGroup { hold: Some(h), .. } => {
                self.check_held(h).and_then(|()| execute(store, &task.kind))
            }
            _ => execute(store, &task.kind),
        };
        let state = match outcome {
            Ok(result) => TaskState::Done { result },
            Err(e) => TaskState::Failed {
                kind: e.kind().to_string(),
                message: e.to_string(),
            },
        };
        self.save(task, &state)?;
        Ok(state)
    }

    /// For a task that runs outside the ledger's lock, beside the others (a transfer): the
    /// first half of [`Ledger::run`]. `None`: it is recorded `running` and is the caller's
    /// to run, then [`Ledger::finish`]; otherwise the answer, without running it.
    pub fn begin(
        &self,
        store: &Store,
        task: &Task,
        received: std::time::Instant,
    ) -> Result<Option<TaskState>> {
        let _lock = self.lock()?;
        self.admit(store, task, received)
    }

    /// Records how a task started with [`Ledger::begin`] ended.
    pub fn finish(&self, task: &Task, state: &TaskState) -> Result<()> {
        let _lock = self.lock()?;
        self.save(task, state)
    }

    /// Under the lock: the recorded answer for a task seen before, a refusal (too late to
    /// start, or stale), or `None` once it is recorded `running` and may run.
    fn admit(
        &self,
        store: &Store,
        task: &Task,
        received: std::time::Instant,
    ) -> Result<Option<TaskState>> {
        if let Err(e) = self.end_expired(store) {
            tracing::warn!(error = %e, "ending expired holds failed");
        }
        if let Some(mut rec) = self.get(&task.id)? {
            if rec.task.kind != task.kind {
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
            return Ok(Some(rec.state));
        }
        if let Some(secs) = task.start_within_secs {
            if received.elapsed() > std::time::Duration::from_secs(secs) {
                let state = TaskState::Failed {
                    kind: "not_started".into(),
                    message: format!(
                        "not started: the agent was busy for over {secs} s; it will not run"
                    ),
                };
                self.save(task, &state)?;
                return Ok(Some(state));
            }
        }
        let newest = self.newest_generation()?;
        if task.generation < newest {
            let state = TaskState::Stale {
                generation: task.generation,
                newest,
            };
            self.save(task, &state)?;
            return Ok(Some(state));
        }
        if task.generation > newest {
            let p = self.dir.join("generation");
            fsx::atomic_write(&p, task.generation.to_string().as_bytes()).ctx("write", &p)?;
        }
        self.save(task, &TaskState::Running)?;
        Ok(None)
    }
}

/// A JSON record of the ledger, `None` when there is none.
fn read_record<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &'static str,
) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                what,
                path: path.to_owned(),
                detail: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(crate::error::io_err(e, "read", path.to_owned())),
    }
}

/// Writes a JSON record of the ledger crash-safely (temp, fsync, rename).
fn write_record<T: Serialize>(path: &Path, rec: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(rec)
        .map_err(|e| StoreError::Invalid(format!("encode {}: {e}", path.display())))?;
    fsx::atomic_write(path, &bytes).ctx("write", path)
}

/// The tasks that need nothing of the ledger but its lock.
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
            hold: _,
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
                        bytes_read: m.manifest.bytes_read,
                        manifest_ms: m.manifest.elapsed_ms as u64,
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
        TaskKind::Replicate { .. } => Err(StoreError::Invalid(
            "a replicate task runs in the agent daemon, beside the ledger's other tasks".into(),
        )),
        TaskKind::Prepare { .. } | TaskKind::Release { .. } => Err(StoreError::Invalid(
            "holds are the ledger's to handle".into(),
        )),
        TaskKind::Clone {
            volume,
            snapshot,
            new_volume,
        } => {
            let v = store.clone_volume(volume.as_str(), snapshot.as_str(), new_volume.as_str())?;
            Ok(TaskResult::Cloned { volume: v.name })
        }
        TaskKind::Rebuild {
            volume,
            snapshot,
            new_volume,
        } => {
            let (v, kept) =
                store.rebuild_volume(volume.as_str(), snapshot.as_str(), new_volume.as_str())?;
            Ok(TaskResult::Rebuilt {
                volume: v.name,
                snapshot: kept.name,
                root: kept.root,
            })
        }
        TaskKind::Verify { .. } | TaskKind::Check { .. } => Err(StoreError::Invalid(
            "verifications and checks run in the agent daemon, beside the ledger's other tasks"
                .into(),
        )),
        TaskKind::DeleteVolume { volume, force } => {
            let r = store.delete_volume(volume.as_str(), *force)?;
            Ok(TaskResult::VolumeDeleted {
                volume: r.volume,
                snapshots: r.snapshots_deleted as u32,
            })
        }
    }
}
