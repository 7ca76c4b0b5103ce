//! Recovery from a kept group, as a sans-IO state machine like [`crate::machines::run::Run`]:
//! persisted by the executor before it acts, fed the agents' reports and the time. Three
//! kinds share it:
//!
//! * a **rebuild** (at a target, from a mirror group): **clone** every mirror snapshot into
//!   a new writable volume (which keeps the snapshot: see `TaskKind::Rebuild`), then
//!   **record** the new objects (the executor writes them, with each volume's lineage, in
//!   the transaction that ends the rebuild), **done**. If a clone or the record fails, every
//!   volume it made is deleted (**cleanup**) and the rebuild **failed**, naming why: it
//!   leaves nothing behind but what it could not delete, which it names.
//! * a **drill**: clone into scratch volumes, **verify** each against the manifest of the
//!   snapshot it came from (its root must be the source's), run the **check** per object,
//!   then always **cleanup** the scratch volumes; **done** (passed) or **failed**.
//! * a **verification** of a kept group: **verify** every snapshot against its manifest, at
//!   a bounded rate; **done** or **failed** (a mismatch, or a snapshot that cannot be read).
//!
//! Task ids are `<id>.<node>.<step><index>`: sending again after a restart is idempotent
//! through the agents' ledgers. Time is an input; every path is table-tested.

use std::collections::BTreeMap;

use ferry_wire::task::{Task, TaskKind, TaskResult, TaskState};
use ferry_wire::Name;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::policy::model::Object;

/// What a recovery does.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryKind {
    Rebuild,
    Drill,
    Verify,
}

/// Where a recovery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Clone,
    Verify,
    Check,
    /// Rebuilds: the new objects are being recorded.
    Record,
    /// Deleting the volumes it made (a drill's scratch, or a failed rebuild's).
    Cleanup,
    Done,
    Failed,
}

impl Phase {
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Done | Phase::Failed)
    }

    fn tag(self) -> &'static str {
        match self {
            Phase::Clone => "clone",
            Phase::Verify => "verify",
            Phase::Check => "check",
            Phase::Record => "record",
            Phase::Cleanup => "cleanup",
            Phase::Done | Phase::Failed => "end",
        }
    }
}

/// How one step of one volume or object went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pending,
    Done,
    Failed {
        message: String,
    },
    /// Not run (an earlier step failed, or the check is not allowed here).
    Skipped {
        why: String,
    },
}

impl Outcome {
    fn pending(&self) -> bool {
        *self == Outcome::Pending
    }
    fn failed(&self) -> bool {
        matches!(self, Outcome::Failed { .. })
    }
}

/// One snapshot of the group and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumePart {
    /// The snapshot's node and volume (a mirror, at a target), and its root: the source's.
    pub node: Name,
    pub volume: Name,
    pub root: String,
    /// The volume made from it (rebuilds and drills).
    pub new_volume: Option<Name>,
    pub clone: Outcome,
    pub verify: Outcome,
    /// Deleting the new volume again (drills always; a failed rebuild).
    pub delete: Outcome,
    /// Whether the agent said it made the new volume (only those are deleted: a clone
    /// refused because the name is taken must not delete the volume that has it), and
    /// whether it may have without saying so (its agent went down).
    #[serde(default)]
    pub made: bool,
    #[serde(default)]
    pub uncertain: bool,
    /// Milliseconds each step took on the agent (clone, verify), and bytes re-read.
    #[serde(default)]
    pub clone_ms: u64,
    #[serde(default)]
    pub verify_ms: u64,
    #[serde(default)]
    pub bytes_read: u64,
}

/// One object of the group and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ObjectPart {
    /// Its name in the group (the source's).
    pub name: Name,
    /// The object made (rebuilds: recorded; drills: its scratch form, never recorded).
    pub object: Object,
    /// The check (drills): where it runs, how it went, what it printed last.
    pub check: Outcome,
    pub check_node: Option<Name>,
    #[serde(default)]
    pub check_ms: u64,
    #[serde(default)]
    pub check_output: Option<String>,
    /// Rebuilds: the object is recorded at this site (written in batches; a failed rebuild
    /// deletes those it wrote).
    #[serde(default)]
    pub recorded: bool,
}

/// The command a drill runs per object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckSpec {
    pub command: String,
    pub timeout_secs: u64,
}

/// A recovery, as persisted (`/ferry/recoveries/<plan-id>/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Recovery {
    pub id: Name,
    pub kind: RecoveryKind,
    pub plan: Name,
    pub plan_id: Name,
    /// The site the group came from (a foreign plan's source).
    #[serde(default)]
    pub source_site: Option<Name>,
    pub group: Name,
    pub generation: u64,
    pub phase: Phase,
    /// `manual` or `schedule`.
    pub trigger: String,
    pub volumes: Vec<VolumePart>,
    pub objects: Vec<ObjectPart>,
    /// Drills: the check, when there is one and it may run here.
    pub check: Option<CheckSpec>,
    /// Drills: why a check was asked for and not run.
    #[serde(default)]
    pub check_skipped: Option<String>,
    /// Verifications: the agents' read rate, bytes per second.
    #[serde(default)]
    pub bytes_per_sec: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
    /// RFC 3339.
    pub created: String,
    pub finished: Option<String>,
    /// Milliseconds spent in each phase (`clone`, `verify`, `check`, `record`, `cleanup`).
    #[serde(default)]
    pub timings: BTreeMap<String, u64>,
    /// When the current phase began (Unix ms).
    #[serde(default)]
    pub phase_since_ms: Option<i64>,
}

/// What the IO shell must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this task to this node (again after a restart: ids make it idempotent).
    Dispatch { node: Name, task: Task },
    /// Record these rebuilt objects (indices into `objects`, with their volumes' lineage),
    /// in the same transaction as the recovery's next state; then call
    /// [`Recovery::on_recorded`].
    Record { objects: Vec<usize> },
    /// Delete these recorded objects (and their volumes' lineage) again, with the next
    /// state; then call [`Recovery::on_unrecorded`].
    Unrecord { objects: Vec<usize> },
}

/// Objects recorded, or deleted again, in one transaction.
pub const RECORD_BATCH: usize = 16;

/// Who a recovery is for and what it does.
#[derive(Debug, Clone)]
pub struct RecoverySpec {
    pub id: Name,
    pub kind: RecoveryKind,
    pub plan: Name,
    pub plan_id: Name,
    pub group: Name,
    pub generation: u64,
    pub trigger: String,
}

impl Recovery {
    /// A new recovery of `volumes` (their new names, for rebuilds and drills) and `objects`,
    /// created at `now`.
    pub fn new(
        spec: RecoverySpec,
        volumes: Vec<(Name, Name, String, Option<Name>)>,
        objects: Vec<(Name, Object)>,
        now: Timestamp,
    ) -> Recovery {
        let first = match spec.kind {
            RecoveryKind::Verify => Phase::Verify,
            _ => Phase::Clone,
        };
        Recovery {
            id: spec.id,
            kind: spec.kind,
            plan: spec.plan,
            plan_id: spec.plan_id,
            source_site: None,
            group: spec.group,
            generation: spec.generation,
            phase: first,
            trigger: spec.trigger,
            volumes: volumes
                .into_iter()
                .map(|(node, volume, root, new_volume)| VolumePart {
                    node,
                    volume,
                    root,
                    new_volume,
                    clone: Outcome::Pending,
                    verify: Outcome::Pending,
                    delete: Outcome::Pending,
                    made: false,
                    uncertain: false,
                    clone_ms: 0,
                    verify_ms: 0,
                    bytes_read: 0,
                })
                .collect(),
            objects: objects
                .into_iter()
                .map(|(name, object)| ObjectPart {
                    name,
                    object,
                    check: Outcome::Pending,
                    check_node: None,
                    check_ms: 0,
                    check_output: None,
                    recorded: false,
                })
                .collect(),
            check: None,
            check_skipped: None,
            bytes_per_sec: None,
            error: None,
            created: now.to_string(),
            finished: None,
            timings: BTreeMap::new(),
            phase_since_ms: Some(now.as_millisecond()),
        }
    }

    pub fn is_over(&self) -> bool {
        self.phase.is_final()
    }

    /// A drill that passed, a rebuild that made its objects, a group that verified.
    pub fn succeeded(&self) -> bool {
        self.phase == Phase::Done
    }

    fn task_id(&self, node: &Name, step: Phase, index: usize) -> Option<Name> {
        Name::new(&format!("{}.{node}.{}{index}", self.id, step.tag())).ok()
    }

    fn task(&self, id: Name, kind: TaskKind) -> Task {
        Task {
            id,
            generation: self.generation,
            kind,
            start_within_secs: None,
        }
    }

    /// The volumes of object `o` that this recovery made, as (node, volume).
    fn object_volumes(o: &Object) -> Vec<(Name, Name)> {
        o.protected_volumes()
            .into_iter()
            .map(|v| (v.node.clone(), v.volume.clone()))
            .collect()
    }

    /// What to do now (the same again without new input).
    pub fn actions(&self) -> Vec<Action> {
        let mut out = Vec::new();
        for (i, v) in self.volumes.iter().enumerate() {
            let kind = match self.phase {
                Phase::Clone if v.clone.pending() => {
                    v.new_volume.clone().map(|n| TaskKind::Rebuild {
                        volume: v.volume.clone(),
                        snapshot: self.group.clone(),
                        new_volume: n,
                    })
                }
                Phase::Verify if v.verify.pending() => Some(TaskKind::Verify {
                    volume: v.new_volume.clone().unwrap_or_else(|| v.volume.clone()),
                    snapshot: self.group.clone(),
                    live: v.new_volume.is_some(),
                    bytes_per_sec: self.bytes_per_sec,
                }),
                Phase::Cleanup if v.delete.pending() => {
                    v.new_volume.clone().map(|n| TaskKind::DeleteVolume {
                        volume: n,
                        force: true,
                    })
                }
                _ => None,
            };
            let Some(kind) = kind else { continue };
            if let Some(id) = self.task_id(&v.node, self.phase, i) {
                out.push(Action::Dispatch {
                    node: v.node.clone(),
                    task: self.task(id, kind),
                });
            }
        }
        if self.phase == Phase::Check {
            if let Some(c) = &self.check {
                for (i, o) in self.objects.iter().enumerate() {
                    let (Outcome::Pending, Some(node)) = (&o.check, &o.check_node) else {
                        continue;
                    };
                    let volumes = Self::object_volumes(&o.object)
                        .into_iter()
                        .filter(|(n, _)| n == node)
                        .map(|(_, v)| v)
                        .collect();
                    let kind = TaskKind::Check {
                        object: o.name.clone(),
                        volumes,
                        command: c.command.clone(),
                        timeout_secs: c.timeout_secs,
                    };
                    if let Some(id) = self.task_id(node, Phase::Check, i) {
                        out.push(Action::Dispatch {
                            node: node.clone(),
                            task: self.task(id, kind),
                        });
                    }
                }
            }
        }
        let batch = |recorded: bool| -> Vec<usize> {
            (0..self.objects.len())
                .filter(|&i| self.objects[i].recorded == recorded)
                .take(RECORD_BATCH)
                .collect()
        };
        match self.phase {
            Phase::Record => out.push(Action::Record {
                objects: batch(false),
            }),
            Phase::Cleanup => {
                let objects = batch(true);
                if !objects.is_empty() {
                    out.push(Action::Unrecord { objects });
                }
            }
            _ => {}
        }
        out
    }

    /// A report on one of its tasks, at `now`.
    pub fn on_report(&mut self, node: &Name, task: &Name, state: &TaskState, now: Timestamp) {
        if !state.is_final() || self.phase.is_final() {
            return;
        }
        let phase = self.phase;
        if phase == Phase::Check {
            let Some(i) = (0..self.objects.len()).find(|&i| {
                self.objects[i].check_node.as_ref() == Some(node)
                    && self.task_id(node, phase, i).as_ref() == Some(task)
            }) else {
                return;
            };
            let o = &mut self.objects[i];
            if o.check.pending() {
                match state {
                    TaskState::Done {
                        result: TaskResult::Checked { elapsed_ms, output },
                    } => {
                        o.check = Outcome::Done;
                        o.check_ms = *elapsed_ms;
                        o.check_output = Some(output.clone()).filter(|s| !s.is_empty());
                    }
                    other => {
                        o.check = Outcome::Failed {
                            message: other
                                .failure()
                                .unwrap_or_else(|| "unexpected result".into()),
                        };
                    }
                }
            }
        } else {
            let Some(i) = (0..self.volumes.len()).find(|&i| {
                self.volumes[i].node == *node && self.task_id(node, phase, i).as_ref() == Some(task)
            }) else {
                return;
            };
            let v = &mut self.volumes[i];
            match phase {
                Phase::Clone if v.clone.pending() => {
                    v.made = matches!(
                        state,
                        TaskState::Done {
                            result: TaskResult::Rebuilt { .. }
                        }
                    );
                    v.uncertain = matches!(state, TaskState::Interrupted)
                        || matches!(state, TaskState::Failed { kind, .. } if kind == "agent_down");
                    v.clone = match state {
                        TaskState::Done {
                            result: TaskResult::Rebuilt { root, .. },
                        } if *root == v.root => Outcome::Done,
                        TaskState::Done {
                            result: TaskResult::Rebuilt { root, .. },
                        } => Outcome::Failed {
                            message: format!(
                                "{}@{} has root {root}, the group's is {}",
                                v.volume, self.group, v.root
                            ),
                        },
                        other => Outcome::Failed {
                            message: other
                                .failure()
                                .unwrap_or_else(|| "unexpected result".into()),
                        },
                    };
                }
                Phase::Verify if v.verify.pending() => {
                    v.verify = match state {
                        TaskState::Done {
                            result:
                                TaskResult::Verified {
                                    ok,
                                    root,
                                    bad_blocks,
                                    first_bad,
                                    bytes_read,
                                    elapsed_ms,
                                    ..
                                },
                        } => {
                            v.verify_ms = *elapsed_ms;
                            v.bytes_read = *bytes_read;
                            let what = v.new_volume.as_ref().unwrap_or(&v.volume);
                            if *root != v.root {
                                Outcome::Failed {
                                    message: format!(
                                        "{node}/{what}: the manifest's root is {root}, the source's {}",
                                        v.root
                                    ),
                                }
                            } else if !ok {
                                Outcome::Failed {
                                    message: format!(
                                        "{node}/{what}: {bad_blocks} block(s) differ from the manifest (first: {first_bad:?})"
                                    ),
                                }
                            } else {
                                Outcome::Done
                            }
                        }
                        other => Outcome::Failed {
                            message: other
                                .failure()
                                .unwrap_or_else(|| "unexpected result".into()),
                        },
                    };
                }
                Phase::Cleanup if v.delete.pending() => {
                    let gone =
                        matches!(state, TaskState::Failed { kind, .. } if kind == "not_found");
                    v.delete = match state.failure() {
                        None => Outcome::Done,
                        Some(_) if gone => Outcome::Done,
                        Some(message) => Outcome::Failed { message },
                    };
                }
                _ => return,
            }
        }
        self.advance(now);
    }

    /// Objects `batch` were recorded (`Ok`, in the transaction that persists this), or
    /// could not be (a name taken meanwhile: what was recorded and made is undone).
    pub fn on_recorded(&mut self, batch: &[usize], result: Result<(), String>, now: Timestamp) {
        if self.phase != Phase::Record {
            return;
        }
        match result {
            Ok(()) => {
                for &i in batch {
                    if let Some(o) = self.objects.get_mut(i) {
                        o.recorded = true;
                    }
                }
                if self.objects.iter().all(|o| o.recorded) {
                    self.enter(Phase::Done, now);
                }
            }
            Err(why) => {
                self.error = Some(format!("recording the objects failed: {why}"));
                self.enter(Phase::Cleanup, now);
                self.advance(now);
            }
        }
    }

    /// Recorded objects `batch` were deleted again (in the transaction that persists this).
    pub fn on_unrecorded(&mut self, batch: &[usize], now: Timestamp) {
        if self.phase != Phase::Cleanup {
            return;
        }
        for &i in batch {
            if let Some(o) = self.objects.get_mut(i) {
                o.recorded = false;
            }
        }
        self.advance(now);
    }

    fn enter(&mut self, phase: Phase, now: Timestamp) {
        let ms = now.as_millisecond();
        if let Some(since) = self.phase_since_ms {
            let spent = (ms - since).max(0) as u64;
            *self.timings.entry(self.phase.tag().into()).or_default() += spent;
        }
        self.phase = phase;
        self.phase_since_ms = Some(ms);
        if phase.is_final() {
            self.finished = Some(now.to_string());
            self.phase_since_ms = None;
        }
    }

    /// Moves on once the current phase has nothing pending.
    fn advance(&mut self, now: Timestamp) {
        loop {
            let before = self.phase;
            match self.phase {
                Phase::Clone => {
                    if self.volumes.iter().any(|v| v.clone.pending()) {
                        return;
                    }
                    let failed: Vec<String> = self
                        .volumes
                        .iter()
                        .filter_map(|v| match &v.clone {
                            Outcome::Failed { message } => {
                                Some(format!("{}/{}: {message}", v.node, v.volume))
                            }
                            _ => None,
                        })
                        .collect();
                    if !failed.is_empty() {
                        self.error = Some(format!("rebuilding failed: {}", failed.join("; ")));
                        self.skip_rest("an earlier step failed");
                        self.enter(Phase::Cleanup, now);
                    } else if self.kind == RecoveryKind::Rebuild {
                        self.enter(Phase::Record, now);
                    } else {
                        self.enter(Phase::Verify, now);
                    }
                }
                Phase::Verify => {
                    if self.volumes.iter().any(|v| v.verify.pending()) {
                        return;
                    }
                    let bad: Vec<String> = self
                        .volumes
                        .iter()
                        .filter_map(|v| match &v.verify {
                            Outcome::Failed { message } => Some(message.clone()),
                            _ => None,
                        })
                        .collect();
                    if !bad.is_empty() {
                        self.error = Some(format!("verification failed: {}", bad.join("; ")));
                    }
                    match self.kind {
                        RecoveryKind::Verify => {
                            let end = if bad.is_empty() {
                                Phase::Done
                            } else {
                                Phase::Failed
                            };
                            self.enter(end, now);
                        }
                        _ if !bad.is_empty() => {
                            self.skip_rest("the verification failed");
                            self.enter(Phase::Cleanup, now);
                        }
                        _ => {
                            self.place_checks();
                            self.enter(Phase::Check, now);
                        }
                    }
                }
                Phase::Check => {
                    if self.objects.iter().any(|o| o.check.pending()) {
                        return;
                    }
                    let bad: Vec<String> = self
                        .objects
                        .iter()
                        .filter_map(|o| match &o.check {
                            Outcome::Failed { message } => Some(format!("{}: {message}", o.name)),
                            _ => None,
                        })
                        .collect();
                    if !bad.is_empty() {
                        self.error = Some(format!("check failed: {}", bad.join("; ")));
                    }
                    self.enter(Phase::Cleanup, now);
                }
                Phase::Cleanup => {
                    for v in &mut self.volumes {
                        // Nothing was made here: nothing to delete.
                        if v.delete.pending() && !v.made {
                            v.delete = Outcome::Skipped {
                                why: "no volume was made".into(),
                            };
                        }
                    }
                    if self.volumes.iter().any(|v| v.delete.pending())
                        || self.objects.iter().any(|o| o.recorded)
                    {
                        return;
                    }
                    let left: Vec<String> = self
                        .volumes
                        .iter()
                        .filter(|v| v.delete.failed())
                        .filter_map(|v| v.new_volume.as_ref().map(|n| format!("{}/{n}", v.node)))
                        .collect();
                    let unsure: Vec<String> = self
                        .volumes
                        .iter()
                        .filter(|v| v.uncertain)
                        .filter_map(|v| v.new_volume.as_ref().map(|n| format!("{}/{n}", v.node)))
                        .collect();
                    if !unsure.is_empty() {
                        let note = format!(
                            "the agents of {} went down during the clone: if those volumes exist, delete them by hand",
                            unsure.join(", ")
                        );
                        self.error = Some(match self.error.take() {
                            Some(e) => format!("{e}; {note}"),
                            None => note,
                        });
                    }
                    if !left.is_empty() {
                        let note = format!(
                            "could not delete {} (delete by hand: ferry volumes delete NODE VOLUME --force)",
                            left.join(", ")
                        );
                        self.error = Some(match self.error.take() {
                            Some(e) => format!("{e}; {note}"),
                            None => note,
                        });
                    }
                    let end = if self.error.is_none() {
                        Phase::Done
                    } else {
                        Phase::Failed
                    };
                    self.enter(end, now);
                }
                Phase::Record | Phase::Done | Phase::Failed => return,
            }
            if self.phase == before {
                return;
            }
        }
    }

    /// Marks every step not yet run as skipped.
    fn skip_rest(&mut self, why: &str) {
        for v in &mut self.volumes {
            if v.verify.pending() {
                v.verify = Outcome::Skipped { why: why.into() };
            }
        }
        for o in &mut self.objects {
            if o.check.pending() {
                o.check = Outcome::Skipped { why: why.into() };
            }
        }
    }

    /// Each object's check runs on the node of its first volume; without a check (or one
    /// not allowed), every check is skipped.
    fn place_checks(&mut self) {
        let why = self
            .check_skipped
            .clone()
            .unwrap_or_else(|| "no check configured".into());
        let has_check = self.check.is_some();
        for o in &mut self.objects {
            if !o.check.pending() {
                continue;
            }
            let first = Self::object_volumes(&o.object).into_iter().next();
            match (has_check, first) {
                (true, Some((node, _))) => o.check_node = Some(node),
                (true, None) => {
                    o.check = Outcome::Skipped {
                        why: "it has no volume".into(),
                    }
                }
                (false, _) => o.check = Outcome::Skipped { why: why.clone() },
            }
        }
    }

    /// The volumes it made that stand now (a rebuild's result), as (node, new volume, the
    /// snapshot kept, its root).
    pub fn made(&self) -> Vec<(Name, Name, String)> {
        self.volumes
            .iter()
            .filter(|v| v.made && v.delete.pending())
            .filter_map(|v| Some((v.node.clone(), v.new_volume.clone()?, v.root.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{ObjectKind, VolumeRef};

    fn n(s: &str) -> Name {
        Name::new(s).expect("name")
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("ts")
    }

    fn vv(name: &str, node: &str, vol: &str) -> (Name, Object) {
        (
            n(name),
            Object {
                name: n(name),
                kind: ObjectKind::VirtualVolume {
                    volume: VolumeRef {
                        node: n(node),
                        volume: n(vol),
                    },
                },
            },
        )
    }

    fn recovery(kind: RecoveryKind) -> Recovery {
        let spec = RecoverySpec {
            id: n("rc1"),
            kind,
            plan: n("site-a.web"),
            plan_id: n("f-1"),
            group: n("g1"),
            generation: 3,
            trigger: "manual".into(),
        };
        let new = |v: &str| (kind != RecoveryKind::Verify).then(|| n(v));
        Recovery::new(
            spec,
            vec![
                (n("b1"), n("m-a"), "aa".into(), new("a")),
                (n("b2"), n("m-b"), "bb".into(), new("b")),
            ],
            vec![vv("oa", "b1", "a"), vv("ob", "b2", "b")],
            at(0),
        )
    }

    fn ids(r: &Recovery) -> Vec<String> {
        r.actions()
            .iter()
            .map(|a| match a {
                Action::Dispatch { node, task } => format!("{node}:{}", task.id),
                Action::Record { objects } => format!("record {objects:?}"),
                Action::Unrecord { objects } => format!("unrecord {objects:?}"),
            })
            .collect()
    }

    fn rebuilt(root: &str) -> TaskState {
        TaskState::Done {
            result: TaskResult::Rebuilt {
                volume: n("x"),
                snapshot: n("g1"),
                root: root.into(),
            },
        }
    }

    fn verified(ok: bool, root: &str) -> TaskState {
        TaskState::Done {
            result: TaskResult::Verified {
                ok,
                root: root.into(),
                blocks: 16,
                bad_blocks: u64::from(!ok),
                first_bad: if ok { vec![] } else { vec![7] },
                bytes_read: 1 << 20,
                elapsed_ms: 12,
            },
        }
    }

    fn failed(kind: &str) -> TaskState {
        TaskState::Failed {
            kind: kind.into(),
            message: format!("{kind} here"),
        }
    }

    fn deleted() -> TaskState {
        TaskState::Done {
            result: TaskResult::VolumeDeleted {
                volume: n("x"),
                snapshots: 1,
            },
        }
    }

    #[test]
    fn a_rebuild_clones_every_volume_then_records_its_objects() {
        let mut r = recovery(RecoveryKind::Rebuild);
        assert_eq!(ids(&r), ["b1:rc1.b1.clone0", "b2:rc1.b2.clone1"]);
        r.on_report(&n("b1"), &n("rc1.b1.clone0"), &rebuilt("aa"), at(1));
        r.on_report(&n("b2"), &n("rc1.b2.clone1"), &TaskState::Running, at(1));
        assert_eq!(r.phase, Phase::Clone);
        r.on_report(&n("b9"), &n("rc1.b2.clone1"), &rebuilt("bb"), at(2)); // wrong node
        assert_eq!(ids(&r), ["b2:rc1.b2.clone1"]);
        r.on_report(&n("b2"), &n("rc1.b2.clone1"), &rebuilt("bb"), at(2));
        assert_eq!(r.phase, Phase::Record);
        assert_eq!(ids(&r), ["record [0, 1]"]);
        assert_eq!(r.made().len(), 2);
        r.on_recorded(&[0], Ok(()), at(3));
        assert_eq!(ids(&r), ["record [1]"]);
        r.on_recorded(&[1], Ok(()), at(3));
        assert!(r.succeeded() && r.is_over());
        assert_eq!(r.timings.get("clone"), Some(&2000));
        assert_eq!(r.timings.get("record"), Some(&1000));
        let back: Recovery =
            serde_json::from_str(&serde_json::to_string(&r).expect("save")).expect("load");
        assert_eq!(back, r);
    }

    #[test]
    fn a_failed_rebuild_deletes_what_it_made() {
        // One clone fails: the other's volume is deleted, nothing is recorded.
        let mut r = recovery(RecoveryKind::Rebuild);
        r.on_report(&n("b1"), &n("rc1.b1.clone0"), &rebuilt("aa"), at(1));
        r.on_report(
            &n("b2"),
            &n("rc1.b2.clone1"),
            &failed("already_exists"),
            at(1),
        );
        assert_eq!(r.phase, Phase::Cleanup);
        assert_eq!(ids(&r), ["b1:rc1.b1.cleanup0"], "only what was made");
        r.on_report(&n("b1"), &n("rc1.b1.cleanup0"), &deleted(), at(2));
        assert_eq!(r.phase, Phase::Failed);
        let e = r.error.clone().unwrap_or_default();
        assert!(e.contains("b2/m-b") && e.contains("already_exists"), "{e}");
        assert!(r.made().is_empty());

        // A clone with another root than the group's is a failure too.
        let mut r = recovery(RecoveryKind::Rebuild);
        r.on_report(&n("b1"), &n("rc1.b1.clone0"), &rebuilt("zz"), at(1));
        r.on_report(&n("b2"), &n("rc1.b2.clone1"), &rebuilt("bb"), at(1));
        assert_eq!(r.phase, Phase::Cleanup);
        assert_eq!(ids(&r), ["b1:rc1.b1.cleanup0", "b2:rc1.b2.cleanup1"]);

        // Recording fails (a name taken meanwhile): everything recorded and made is deleted;
        // one deletion that fails is named.
        let mut r = recovery(RecoveryKind::Rebuild);
        r.on_report(&n("b1"), &n("rc1.b1.clone0"), &rebuilt("aa"), at(1));
        r.on_report(&n("b2"), &n("rc1.b2.clone1"), &rebuilt("bb"), at(1));
        r.on_recorded(&[0], Ok(()), at(2));
        r.on_recorded(&[1], Err("object ob exists".into()), at(2));
        assert_eq!(
            ids(&r),
            ["b1:rc1.b1.cleanup0", "b2:rc1.b2.cleanup1", "unrecord [0]"]
        );
        r.on_unrecorded(&[0], at(2));
        assert_eq!(ids(&r).len(), 2);
        r.on_report(&n("b1"), &n("rc1.b1.cleanup0"), &deleted(), at(3));
        r.on_report(
            &n("b2"),
            &n("rc1.b2.cleanup1"),
            &failed("agent_down"),
            at(3),
        );
        assert_eq!(r.phase, Phase::Failed);
        let e = r.error.clone().unwrap_or_default();
        assert!(
            e.contains("object ob exists") && e.contains("could not delete b2/b"),
            "{e}"
        );
    }

    #[test]
    fn a_drill_verifies_checks_and_always_cleans_up() {
        let run = |check: Option<&str>, verify_ok: bool, check_ok: bool| {
            let mut r = recovery(RecoveryKind::Drill);
            r.check = check.map(|c| CheckSpec {
                command: c.into(),
                timeout_secs: 60,
            });
            r.on_report(&n("b1"), &n("rc1.b1.clone0"), &rebuilt("aa"), at(1));
            r.on_report(&n("b2"), &n("rc1.b2.clone1"), &rebuilt("bb"), at(1));
            assert_eq!(r.phase, Phase::Verify);
            let tasks = r.actions();
            assert!(tasks
                .iter()
                .all(|a| matches!(a, Action::Dispatch { task, .. }
                if matches!(&task.kind, TaskKind::Verify { live: true, .. }))));
            r.on_report(&n("b1"), &n("rc1.b1.verify0"), &verified(true, "aa"), at(2));
            r.on_report(
                &n("b2"),
                &n("rc1.b2.verify1"),
                &verified(verify_ok, "bb"),
                at(2),
            );
            if r.phase == Phase::Check {
                assert_eq!(ids(&r), ["b1:rc1.b1.check0", "b2:rc1.b2.check1"]);
                let out = |ok: bool| match ok {
                    true => TaskState::Done {
                        result: TaskResult::Checked {
                            elapsed_ms: 40,
                            output: "clean".into(),
                        },
                    },
                    false => failed("hook_failed"),
                };
                r.on_report(&n("b1"), &n("rc1.b1.check0"), &out(true), at(3));
                r.on_report(&n("b2"), &n("rc1.b2.check1"), &out(check_ok), at(3));
            }
            assert_eq!(r.phase, Phase::Cleanup, "{r:?}");
            assert_eq!(ids(&r), ["b1:rc1.b1.cleanup0", "b2:rc1.b2.cleanup1"]);
            r.on_report(&n("b1"), &n("rc1.b1.cleanup0"), &deleted(), at(4));
            r.on_report(&n("b2"), &n("rc1.b2.cleanup1"), &failed("not_found"), at(4));
            assert!(r.is_over());
            r
        };
        let ok = run(Some("fsck -n \"$FERRY_VOLUME\""), true, true);
        assert!(ok.succeeded(), "{:?}", ok.error);
        assert_eq!(ok.objects[0].check_output.as_deref(), Some("clean"));
        for phase in ["clone", "verify", "check", "cleanup"] {
            assert_eq!(ok.timings.get(phase), Some(&1000), "{phase}");
        }
        let no_check = run(None, true, true);
        assert!(no_check.succeeded());
        assert!(matches!(no_check.objects[0].check, Outcome::Skipped { .. }));
        let bad_check = run(Some("false"), true, false);
        assert!(!bad_check.succeeded());
        assert!(bad_check.error.clone().unwrap_or_default().contains("ob"));
        let bad_data = run(Some("true"), false, true);
        assert!(!bad_data.succeeded());
        assert!(bad_data
            .error
            .clone()
            .unwrap_or_default()
            .contains("1 block(s) differ"));
        assert!(matches!(bad_data.objects[0].check, Outcome::Skipped { .. }));
    }

    #[test]
    fn a_verification_reads_every_snapshot_in_place() {
        let mut r = recovery(RecoveryKind::Verify);
        r.bytes_per_sec = Some(1 << 20);
        let tasks = r.actions();
        assert_eq!(tasks.len(), 2);
        assert!(matches!(&tasks[0], Action::Dispatch { task, .. }
            if matches!(&task.kind, TaskKind::Verify { volume, live: false, bytes_per_sec: Some(_), .. }
                if volume.as_str() == "m-a")));
        r.on_report(&n("b1"), &n("rc1.b1.verify0"), &verified(true, "aa"), at(5));
        r.on_report(
            &n("b2"),
            &n("rc1.b2.verify1"),
            &verified(true, "other"),
            at(5),
        );
        assert_eq!(r.phase, Phase::Failed);
        assert!(r
            .error
            .clone()
            .unwrap_or_default()
            .contains("root is other"));
        let mut r = recovery(RecoveryKind::Verify);
        r.on_report(&n("b1"), &n("rc1.b1.verify0"), &verified(true, "aa"), at(5));
        r.on_report(&n("b2"), &n("rc1.b2.verify1"), &verified(true, "bb"), at(5));
        assert!(r.succeeded());
        assert!(r.actions().is_empty());
    }
}
