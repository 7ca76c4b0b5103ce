//! A plan's run as a sans-IO state machine: the controller's IO shell persists a [`Run`]
//! (JSON in the state store) before acting on anything it says, performs the actions it
//! asks for, and feeds back what the agents report and what time it is. Nothing here reads
//! a clock, a socket or the store, so every path is table-tested.
//!
//! A run of a snapshot plan:
//! 1. **snapshot**: one snapshot-group task per node, covering all the plan's volumes on that
//!    node (the node's hooks run around it: one consistent step per node);
//! 2. when every node is done, **prune**: delete the groups beyond the retention count;
//! 3. **done**. If any node fails, the run **compensates**: the snapshots that other nodes did
//!    make are deleted, so a group exists on all nodes or on none, and the run fails.
//!
//! When the plan has a pre hook and its volumes are on more than one node, one consistent
//! step per node is not enough: the run is **coordinated**. It starts with **prepare** (every
//! node runs its pre hook, e.g. a freeze, and holds), and only when every node holds does it
//! take the snapshots (each under its hold); each node is **released** (post hook, thaw) as
//! soon as its snapshot is taken, so no node stays frozen longer than it must. Every node
//! must be prepared within the deadline (`hooks.deadline_secs`, from the run's creation):
//! past it, or when a node fails to prepare, every node that was asked to prepare is
//! released and the run fails. Agents end a hold by themselves after the same time, so a
//! lost controller never leaves a node frozen; a snapshot under an ended hold fails.
//!
//! Task ids are derived from the run id, the node and the step (`<run>.<node>.snap`), so a
//! controller that restarts mid-run and dispatches again sends the same ids: each agent's
//! ledger runs a task id at most once and answers a repeat with its recorded outcome.
//! Nothing is executed twice.

use std::collections::BTreeMap;

use ferry_wire::task::{SnapshotRecord, Task, TaskKind, TaskResult, TaskState};

use crate::machines::backup::{RunInfo, TargetAction, TargetPart, TargetStep};
use ferry_wire::Name;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Where a run is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Coordinated runs: every node runs its pre hook and holds.
    Prepare,
    Snapshot,
    /// Deleting the snapshots some nodes made (and releasing holds), because a node failed.
    Compensate,
    /// Backup plans: the group is recorded here; each target site gets its copy.
    Replicate,
    Prune,
    Done,
    /// The group was taken and recorded here, but some target sites did not get it
    /// (`error` says which and why).
    PartiallyDone,
    Failed,
}

impl Step {
    /// Whether the run is over.
    pub fn is_final(&self) -> bool {
        matches!(self, Step::Done | Step::PartiallyDone | Step::Failed)
    }
}

/// One node's part in a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Pending,
    /// Coordinated runs: its pre hook ran and it holds until released.
    Prepared,
    Done {
        snapshots: Vec<SnapshotRecord>,
    },
    Failed {
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodePart {
    pub volumes: Vec<Name>,
    pub state: NodeState,
    /// Deletions still to confirm on this node (compensation or pruning): task id -> (volume,
    /// snapshot).
    #[serde(default)]
    pub deleting: BTreeMap<String, (Name, Name)>,
    /// Coordinated runs: the node was asked to prepare and its release is not confirmed yet.
    #[serde(default)]
    pub holding: bool,
    /// When its snapshot step ended (RFC 3339).
    #[serde(default)]
    pub finished: Option<String>,
}

/// The hooks a plan runs around each node's snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunHooks {
    pub pre: Option<String>,
    pub post: Option<String>,
    pub timeout_secs: Option<u64>,
    /// Coordinated runs: the prepare deadline and the agents' hold limit, seconds.
    #[serde(default)]
    pub deadline_secs: Option<u64>,
}

/// The prepare deadline when the plan sets none.
pub const DEFAULT_DEADLINE_SECS: u64 = 60;

/// A run, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Run {
    pub id: Name,
    pub plan: Name,
    /// The snapshot group's name (the snapshot name on every volume).
    pub group: Name,
    pub generation: u64,
    pub hooks: RunHooks,
    pub step: Step,
    pub nodes: BTreeMap<Name, NodePart>,
    pub error: Option<String>,
    /// Prepare / snapshot / release across nodes (see the module doc).
    #[serde(default)]
    pub coordinated: bool,
    /// Coordinated runs: every node must hold by then (Unix milliseconds).
    #[serde(default)]
    pub deadline_ms: Option<i64>,
    /// When the run ended (RFC 3339).
    #[serde(default)]
    pub finished: Option<String>,
    /// Backup plans: the plan's id (what targets know it by) and each target site's part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<Name>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub targets: BTreeMap<Name, TargetPart>,
    /// When the group was recorded (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_created: Option<String>,
}

/// What the IO shell must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this task to this node (again, if it was sent before: ids make it idempotent).
    Dispatch { node: Name, task: Task },
    /// Persist the run and record the group (complete, with these snapshots).
    RecordGroup {
        snapshots: Vec<(Name, SnapshotRecord)>,
    },
    /// Ask a target site (again, if it was asked before: requests are idempotent).
    Ask {
        site: Name,
        id: String,
        request: ferry_wire::site::SiteRequest,
    },
    /// Compute what retention prunes and call [`Run::prune`].
    ComputePrune,
    /// The run is over.
    Finished { ok: bool },
}

/// Why the core refused an input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("node {0} has no part in this run")]
    UnknownNode(Name),
    #[error("a run needs at least one volume")]
    Empty,
    #[error("task id {0} is not a valid name")]
    BadId(String),
}

fn task_id(run: &Name, node: &Name, what: &str) -> Result<Name, RunError> {
    let s = format!("{run}.{node}.{what}");
    Name::new(&s).map_err(|_| RunError::BadId(s))
}

impl Run {
    /// A new run taking group `group` of `volumes` (node -> volumes), created at `now`.
    pub fn new(
        id: Name,
        plan: Name,
        group: Name,
        generation: u64,
        hooks: RunHooks,
        volumes: BTreeMap<Name, Vec<Name>>,
        now: Timestamp,
    ) -> Result<Run, RunError> {
        if volumes.values().all(Vec::is_empty) {
            return Err(RunError::Empty);
        }
        let nodes: BTreeMap<Name, NodePart> = volumes
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, volumes)| {
                (
                    n,
                    NodePart {
                        volumes,
                        state: NodeState::Pending,
                        deleting: BTreeMap::new(),
                        holding: false,
                        finished: None,
                    },
                )
            })
            .collect();
        let coordinated = hooks.pre.is_some() && nodes.len() > 1;
        let mut run = Run {
            id,
            plan,
            group,
            generation,
            step: if coordinated {
                Step::Prepare
            } else {
                Step::Snapshot
            },
            nodes,
            error: None,
            coordinated,
            deadline_ms: None,
            finished: None,
            hooks,
            plan_id: None,
            targets: BTreeMap::new(),
            group_created: None,
        };
        if coordinated {
            run.deadline_ms = Some(now.as_millisecond() + 1000 * run.deadline_secs() as i64);
            for p in run.nodes.values_mut() {
                p.holding = true;
            }
        }
        Ok(run)
    }

    /// Makes it a backup run of plan `plan_id` to these sites (site -> retention there).
    pub fn with_targets(mut self, plan_id: Name, targets: &[(Name, u32)]) -> Run {
        if !targets.is_empty() {
            self.plan_id = Some(plan_id);
        }
        for (site, keep) in targets {
            self.targets
                .insert(site.clone(), TargetPart::new(*keep, Vec::new()));
        }
        self
    }

    fn info(&self) -> RunInfo<'_> {
        RunInfo {
            run: &self.id,
            plan: &self.plan,
            plan_id: self.plan_id.as_ref().unwrap_or(&self.plan),
            group: &self.group,
            generation: self.generation,
            created: self.group_created.as_deref().unwrap_or_default(),
        }
    }

    /// Every target's actions, as the run's.
    fn target_actions(&self) -> Vec<Action> {
        let mut out = Vec::new();
        for (site, part) in &self.targets {
            for a in part.actions(site, self.info()) {
                out.push(match a {
                    TargetAction::Ask { id, request } => Action::Ask {
                        site: site.clone(),
                        id,
                        request,
                    },
                    TargetAction::Dispatch { node, task } => Action::Dispatch { node, task },
                });
            }
        }
        out
    }

    /// Once every target's part is over: on to pruning.
    fn after_targets(&mut self) -> Vec<Action> {
        if self.step == Step::Replicate && self.targets.values().all(TargetPart::is_final) {
            self.step = Step::Prune;
            return vec![Action::ComputePrune];
        }
        Vec::new()
    }

    /// The answer (or a failed attempt) to request `id` of target `site`.
    pub fn on_site_reply(
        &mut self,
        site: &Name,
        id: &str,
        reply: &Result<ferry_wire::site::SiteResponse, String>,
        now: Timestamp,
    ) -> Result<Vec<Action>, RunError> {
        if self.step != Step::Replicate {
            return Ok(Vec::new());
        }
        let run = self.id.clone();
        let Some(part) = self.targets.get_mut(site) else {
            return Ok(Vec::new());
        };
        if !part.on_reply(site, &run, id, reply, now) {
            return Ok(Vec::new());
        }
        let mut out = self.after_targets();
        out.extend(self.actions()?);
        Ok(out)
    }

    /// The end of a run whose group was taken: done, or partially done when a target
    /// did not get it.
    fn end_taken(&mut self, now: Timestamp) {
        let failed: Vec<String> = self
            .targets
            .iter()
            .filter(|(_, p)| p.step == TargetStep::Failed)
            .map(|(s, p)| format!("target {s}: {}", p.error.clone().unwrap_or_default()))
            .collect();
        if failed.is_empty() {
            self.step = Step::Done;
        } else {
            self.step = Step::PartiallyDone;
            let mut all = failed;
            if let Some(e) = self.error.take() {
                all.push(e);
            }
            self.error = Some(all.join("; "));
        }
        self.finished = Some(now.to_string());
    }

    fn deadline_secs(&self) -> u64 {
        self.hooks.deadline_secs.unwrap_or(DEFAULT_DEADLINE_SECS)
    }

    fn task(&self, id: Name, kind: TaskKind) -> Task {
        Task {
            start_within_secs: None,
            id,
            generation: self.generation,
            kind,
        }
    }

    fn snapshot_task(&self, node: &Name, part: &NodePart) -> Result<Task, RunError> {
        let kind = if self.coordinated {
            TaskKind::SnapshotGroup {
                snapshot: self.group.clone(),
                volumes: part.volumes.clone(),
                pre_hook: None,
                post_hook: None,
                hook_timeout_secs: None,
                hold: Some(self.id.clone()),
            }
        } else {
            TaskKind::SnapshotGroup {
                snapshot: self.group.clone(),
                volumes: part.volumes.clone(),
                pre_hook: self.hooks.pre.clone(),
                post_hook: self.hooks.post.clone(),
                hook_timeout_secs: self.hooks.timeout_secs,
                hold: None,
            }
        };
        Ok(self.task(task_id(&self.id, node, "snap")?, kind))
    }

    fn prepare_task(&self, node: &Name, part: &NodePart) -> Result<Task, RunError> {
        let kind = TaskKind::Prepare {
            hold: self.id.clone(),
            volumes: part.volumes.clone(),
            pre_hook: self.hooks.pre.clone().unwrap_or_default(),
            post_hook: self.hooks.post.clone(),
            hook_timeout_secs: self.hooks.timeout_secs,
            hold_secs: self.deadline_secs(),
        };
        Ok(self.task(task_id(&self.id, node, "prep")?, kind))
    }

    fn release_task(&self, node: &Name) -> Result<Task, RunError> {
        let kind = TaskKind::Release {
            hold: self.id.clone(),
        };
        Ok(self.task(task_id(&self.id, node, "rel")?, kind))
    }

    fn delete_task(&self, id: &str, volume: &Name, snapshot: &Name) -> Result<Task, RunError> {
        let id = Name::new(id).map_err(|_| RunError::BadId(id.to_string()))?;
        let kind = TaskKind::DeleteSnapshot {
            volume: volume.clone(),
            snapshot: snapshot.clone(),
        };
        Ok(self.task(id, kind))
    }

    /// Whether a node's hold is to be released now: after its snapshot step, or once the
    /// run is undoing.
    fn releasable(&self, part: &NodePart) -> bool {
        part.holding
            && match self.step {
                Step::Snapshot => matches!(
                    part.state,
                    NodeState::Done { .. } | NodeState::Failed { .. }
                ),
                Step::Compensate => true,
                _ => false,
            }
    }

    /// What to do now. Calling it again without new input gives the same actions (the
    /// shell may resend them after a restart).
    pub fn actions(&self) -> Result<Vec<Action>, RunError> {
        let mut out = Vec::new();
        for (node, part) in &self.nodes {
            if self.releasable(part) {
                out.push(Action::Dispatch {
                    node: node.clone(),
                    task: self.release_task(node)?,
                });
            }
        }
        match self.step {
            Step::Prepare => {
                for (node, part) in &self.nodes {
                    if part.state == NodeState::Pending {
                        out.push(Action::Dispatch {
                            node: node.clone(),
                            task: self.prepare_task(node, part)?,
                        });
                    }
                }
            }
            Step::Snapshot => {
                let waiting = if self.coordinated {
                    NodeState::Prepared
                } else {
                    NodeState::Pending
                };
                for (node, part) in &self.nodes {
                    if part.state == waiting {
                        out.push(Action::Dispatch {
                            node: node.clone(),
                            task: self.snapshot_task(node, part)?,
                        });
                    }
                }
            }
            Step::Replicate => out.extend(self.target_actions()),
            Step::Compensate | Step::Prune => {
                for (node, part) in &self.nodes {
                    for (id, (v, s)) in &part.deleting {
                        out.push(Action::Dispatch {
                            node: node.clone(),
                            task: self.delete_task(id, v, s)?,
                        });
                    }
                }
                if out.is_empty() {
                    out.push(Action::Finished {
                        ok: self.step == Step::Prune,
                    });
                }
            }
            Step::Done => out.push(Action::Finished { ok: true }),
            Step::PartiallyDone | Step::Failed => out.push(Action::Finished { ok: false }),
        }
        Ok(out)
    }

    /// Time passed: past the prepare deadline, the nodes not yet holding fail, which
    /// releases every node and fails the run. Returns the actions that follow.
    pub fn tick(&mut self, now: Timestamp) -> Result<Vec<Action>, RunError> {
        if self.step == Step::Replicate {
            for (site, part) in self.targets.iter_mut() {
                part.tick(site, now);
            }
            let mut out = self.after_targets();
            if !out.is_empty() {
                out.extend(self.actions()?);
            }
            return Ok(out);
        }
        let late = self.step == Step::Prepare
            && self.deadline_ms.is_some_and(|d| now.as_millisecond() > d);
        if !late {
            return Ok(Vec::new());
        }
        let secs = self.deadline_secs();
        for part in self.nodes.values_mut() {
            if part.state == NodeState::Pending {
                part.state = NodeState::Failed {
                    message: format!("not prepared within the {secs} s deadline"),
                };
                part.finished = Some(now.to_string());
            }
        }
        self.after_prepare(now);
        self.actions()
    }

    /// A node reported on a task of this run at `now`. Returns the actions that follow.
    pub fn on_report(
        &mut self,
        node: &Name,
        task: &Name,
        state: &TaskState,
        now: Timestamp,
    ) -> Result<Vec<Action>, RunError> {
        if !self.nodes.contains_key(node) {
            return Err(RunError::UnknownNode(node.clone()));
        }
        if !state.is_final() {
            return Ok(Vec::new());
        }
        if self.step == Step::Replicate {
            let run = self.id.clone();
            let mine = self
                .targets
                .iter_mut()
                .any(|(site, part)| part.on_report(site, &run, task, state, now));
            if !mine {
                return self.actions();
            }
            let mut out = self.after_targets();
            out.extend(self.actions()?);
            return Ok(out);
        }
        let id = self.id.clone();
        let step = self.step.clone();
        let part = self
            .nodes
            .get_mut(node)
            .ok_or(RunError::UnknownNode(node.clone()))?;
        let failure = |prefix: &str| match state {
            TaskState::Done { result } => format!("{prefix}: unexpected result {result:?}"),
            other => format!("{prefix}{}", other.failure().unwrap_or_default()),
        };
        let mut extra = Vec::new();
        // Whether this report confirmed a deletion or a release (what the undoing and
        // pruning steps wait for).
        let mut cleanup = true;
        if part.deleting.remove(task.as_str()).is_some() {
            // A deletion is confirmed whatever its outcome: a snapshot already gone is gone.
            if let TaskState::Failed { kind, message } = state {
                if kind != "not_found" {
                    self.error
                        .get_or_insert(format!("deleting on {node}: {message}"));
                }
            }
        } else if task.as_str() == format!("{id}.{node}.rel") {
            if !part.holding {
                return self.actions();
            }
            part.holding = false;
            match state {
                TaskState::Done {
                    result: TaskResult::Released { .. },
                } => {}
                _ => {
                    let why = failure("releasing (post hook): ");
                    self.error.get_or_insert(format!("{node}: {why}"));
                }
            }
        } else if step == Step::Prepare
            && part.state == NodeState::Pending
            && task.as_str() == format!("{id}.{node}.prep")
        {
            part.state = match state {
                TaskState::Done {
                    result: TaskResult::Prepared,
                } => NodeState::Prepared,
                _ => {
                    part.finished = Some(now.to_string());
                    NodeState::Failed {
                        message: failure("preparing (pre hook): "),
                    }
                }
            };
            if self.nodes.values().all(|p| p.state != NodeState::Pending) {
                self.after_prepare(now);
            }
            cleanup = false;
        } else if step == Step::Snapshot
            && matches!(part.state, NodeState::Pending | NodeState::Prepared)
            && task.as_str() == format!("{id}.{node}.snap")
        {
            part.state = match state {
                TaskState::Done {
                    result: TaskResult::SnapshotGroup { snapshots },
                } => NodeState::Done {
                    snapshots: snapshots.clone(),
                },
                _ => NodeState::Failed {
                    message: failure(""),
                },
            };
            part.finished = Some(now.to_string());
            cleanup = false;
        } else {
            return self.actions(); // stray or repeated: nothing changes
        }
        if self.step == Step::Snapshot
            && self.nodes.values().all(|p| {
                !p.holding && matches!(p.state, NodeState::Done { .. } | NodeState::Failed { .. })
            })
        {
            extra = self.after_snapshot(now);
        }
        if cleanup
            && matches!(step, Step::Compensate | Step::Prune)
            && self.step == step
            && self
                .nodes
                .values()
                .all(|p| p.deleting.is_empty() && !p.holding)
        {
            // A failed prune deletion is noted in `error`; the group was taken all the same.
            if self.step == Step::Prune {
                self.end_taken(now);
            } else {
                self.step = Step::Failed;
                self.finished = Some(now.to_string());
            }
        }
        let mut out = extra;
        out.extend(self.actions()?);
        Ok(out)
    }

    /// `node: why` for every node whose part failed.
    fn failed_nodes(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter_map(|(n, p)| match &p.state {
                NodeState::Failed { message } => Some(format!("{n}: {message}")),
                _ => None,
            })
            .collect()
    }

    /// Every node answered the prepare step (or the deadline passed).
    fn after_prepare(&mut self, now: Timestamp) {
        let failed = self.failed_nodes();
        if failed.is_empty() {
            self.step = Step::Snapshot;
            return;
        }
        self.error = Some(failed.join("; "));
        // Release every node asked to prepare, the late ones included (their pre hook may
        // still finish; the agent refuses a prepare that comes after its release).
        self.step = Step::Compensate;
        if self.nodes.values().all(|p| !p.holding) {
            self.step = Step::Failed;
            self.finished = Some(now.to_string());
        }
    }

    /// Every node answered the snapshot step and no node holds.
    fn after_snapshot(&mut self, now: Timestamp) -> Vec<Action> {
        let mut failed = self.failed_nodes();
        if failed.is_empty() && self.error.is_none() {
            let snapshots = self
                .nodes
                .iter()
                .flat_map(|(n, p)| match &p.state {
                    NodeState::Done { snapshots } => snapshots
                        .iter()
                        .map(|s| (n.clone(), s.clone()))
                        .collect::<Vec<_>>(),
                    _ => Vec::new(),
                })
                .collect();
            self.group_created = Some(now.to_string());
            if self.targets.is_empty() {
                self.step = Step::Prune;
                return vec![Action::RecordGroup { snapshots }, Action::ComputePrune];
            }
            let list: Vec<(Name, Name, u64, String)> = snapshots
                .iter()
                .map(|(n, s)| (n.clone(), s.volume.clone(), s.size, s.root.clone()))
                .collect();
            for part in self.targets.values_mut() {
                *part = TargetPart::new(part.retention, list.clone());
            }
            self.step = Step::Replicate;
            return vec![Action::RecordGroup { snapshots }];
        }
        if let Some(e) = self.error.take() {
            failed.push(e);
        }
        self.error = Some(failed.join("; "));
        self.step = Step::Compensate;
        let (id, group) = (self.id.clone(), self.group.clone());
        for (node, part) in self.nodes.iter_mut() {
            if let NodeState::Done { snapshots } = &part.state {
                for s in snapshots {
                    let tid = format!("{id}.{node}.undo.{}", s.volume);
                    part.deleting.insert(tid, (s.volume.clone(), group.clone()));
                }
            }
        }
        if self.nodes.values().all(|p| p.deleting.is_empty()) {
            self.step = Step::Failed; // nothing was made anywhere: nothing to undo
            self.finished = Some(now.to_string());
        }
        Vec::new()
    }

    /// After the group is recorded: delete these older groups (from the retention policy)
    /// on the nodes that hold them (node -> [(volume, group)]), at `now`.
    pub fn prune(
        &mut self,
        victims: &BTreeMap<Name, Vec<(Name, Name)>>,
        now: Timestamp,
    ) -> Result<Vec<Action>, RunError> {
        if self.step != Step::Prune {
            return Ok(Vec::new());
        }
        let id = self.id.clone();
        for (node, list) in victims {
            let part = self.nodes.entry(node.clone()).or_insert_with(|| NodePart {
                volumes: Vec::new(),
                state: NodeState::Done {
                    snapshots: Vec::new(),
                },
                deleting: BTreeMap::new(),
                holding: false,
                finished: None,
            });
            for (v, g) in list {
                part.deleting
                    .insert(format!("{id}.{node}.prune.{v}.{g}"), (v.clone(), g.clone()));
            }
        }
        if self.nodes.values().all(|p| p.deleting.is_empty()) {
            self.end_taken(now);
        }
        self.actions()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).expect("name")
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("ts")
    }

    fn vols() -> BTreeMap<Name, Vec<Name>> {
        let mut vols = BTreeMap::new();
        vols.insert(n("node1"), vec![n("a"), n("b")]);
        vols.insert(n("node2"), vec![n("c")]);
        vols
    }

    fn run() -> Run {
        Run::new(
            n("r7"),
            n("p"),
            n("g7"),
            3,
            RunHooks::default(),
            vols(),
            t(0),
        )
        .expect("run")
    }

    /// A run with a freeze hook across two nodes: coordinated.
    fn frozen() -> Run {
        let hooks = RunHooks {
            pre: Some("fsfreeze -f /mnt".into()),
            post: Some("fsfreeze -u /mnt".into()),
            timeout_secs: None,
            deadline_secs: Some(30),
        };
        Run::new(n("r7"), n("p"), n("g7"), 3, hooks, vols(), t(0)).expect("run")
    }

    fn ok(result: TaskResult) -> TaskState {
        TaskState::Done { result }
    }

    /// `node`'s report on its task `what` of run r7, `secs` into the test.
    fn report(r: &mut Run, node: &str, what: &str, state: &TaskState, secs: i64) -> Vec<Action> {
        r.on_report(&n(node), &n(&format!("r7.{node}.{what}")), state, t(secs))
            .expect("report")
    }

    fn done(node: &str, vols: &[&str]) -> TaskState {
        TaskState::Done {
            result: TaskResult::SnapshotGroup {
                snapshots: vols
                    .iter()
                    .map(|v| SnapshotRecord {
                        volume: n(v),
                        snapshot: n("g7"),
                        size: 1,
                        root: format!("root-{node}-{v}"),
                        bytes_read: 1,
                        manifest_ms: 1,
                    })
                    .collect(),
            },
        }
    }

    /// A run whose first node has taken its snapshots.
    fn node1_done() -> Run {
        let mut r = run();
        r.on_report(
            &n("node1"),
            &n("r7.node1.snap"),
            &done("node1", &["a", "b"]),
            t(1),
        )
        .expect("report");
        r
    }

    fn dispatched(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Dispatch { node, task } => Some(format!("{node}:{}", task.id)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_run_snapshots_every_node_records_prunes_and_finishes() {
        let mut r = run();
        let a = r.actions().expect("actions");
        assert_eq!(
            dispatched(&a),
            ["node1:r7.node1.snap", "node2:r7.node2.snap"]
        );
        // Asking again (a restarted controller) gives the same tasks: same ids.
        assert_eq!(r.actions().expect("again"), a);
        let a = r
            .on_report(
                &n("node1"),
                &n("r7.node1.snap"),
                &done("node1", &["a", "b"]),
                t(1),
            )
            .expect("report");
        assert_eq!(
            dispatched(&a),
            ["node2:r7.node2.snap"],
            "node2 still pending"
        );
        let a = r
            .on_report(
                &n("node2"),
                &n("r7.node2.snap"),
                &done("node2", &["c"]),
                t(1),
            )
            .expect("report");
        match &a[0] {
            Action::RecordGroup { snapshots } => assert_eq!(snapshots.len(), 3),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(r.step, Step::Prune);
        // Retention says: delete g5 on both nodes.
        let mut victims = BTreeMap::new();
        victims.insert(n("node1"), vec![(n("a"), n("g5")), (n("b"), n("g5"))]);
        victims.insert(n("node2"), vec![(n("c"), n("g5"))]);
        let a = r.prune(&victims, t(2)).expect("prune");
        assert_eq!(
            dispatched(&a),
            [
                "node1:r7.node1.prune.a.g5",
                "node1:r7.node1.prune.b.g5",
                "node2:r7.node2.prune.c.g5"
            ]
        );
        for (node, id) in [
            ("node1", "r7.node1.prune.a.g5"),
            ("node1", "r7.node1.prune.b.g5"),
        ] {
            r.on_report(
                &n(node),
                &n(id),
                &TaskState::Done {
                    result: TaskResult::SnapshotDeleted,
                },
                t(1),
            )
            .expect("report");
        }
        // Already gone counts as deleted.
        let a = r
            .on_report(
                &n("node2"),
                &n("r7.node2.prune.c.g5"),
                &TaskState::Failed {
                    kind: "not_found".into(),
                    message: "gone".into(),
                },
                t(1),
            )
            .expect("report");
        assert_eq!(a, [Action::Finished { ok: true }]);
        assert_eq!((r.step.clone(), r.error.clone()), (Step::Done, None));
    }

    #[test]
    fn a_failed_node_undoes_the_others_and_fails_the_run() {
        let mut r = node1_done();
        let a = r
            .on_report(
                &n("node2"),
                &n("r7.node2.snap"),
                &TaskState::Failed {
                    kind: "hook_failed".into(),
                    message: "pre hook exited 1".into(),
                },
                t(1),
            )
            .expect("report");
        assert_eq!(r.step, Step::Compensate);
        assert_eq!(
            dispatched(&a),
            ["node1:r7.node1.undo.a", "node1:r7.node1.undo.b"]
        );
        assert!(r
            .error
            .as_deref()
            .is_some_and(|e| e.contains("pre hook exited 1")));
        for id in ["r7.node1.undo.a", "r7.node1.undo.b"] {
            r.on_report(
                &n("node1"),
                &n(id),
                &TaskState::Done {
                    result: TaskResult::SnapshotDeleted,
                },
                t(1),
            )
            .expect("report");
        }
        assert_eq!(r.step, Step::Failed);
        assert_eq!(
            r.actions().expect("actions"),
            [Action::Finished { ok: false }]
        );
    }

    #[test]
    fn interrupted_stale_and_stray_reports() {
        for bad in [
            TaskState::Interrupted,
            TaskState::Stale {
                generation: 3,
                newest: 4,
            },
        ] {
            let mut r = run();
            r.on_report(&n("node1"), &n("r7.node1.snap"), &bad, t(1))
                .expect("report");
            r.on_report(
                &n("node2"),
                &n("r7.node2.snap"),
                &done("node2", &["c"]),
                t(1),
            )
            .expect("report");
            assert_eq!(r.step, Step::Compensate, "{bad:?}");
        }
        // Every node failed: nothing to undo, the run fails at once.
        let mut r = run();
        let fail = TaskState::Failed {
            kind: "io".into(),
            message: "disk".into(),
        };
        r.on_report(&n("node1"), &n("r7.node1.snap"), &fail, t(1))
            .expect("report");
        let a = r
            .on_report(&n("node2"), &n("r7.node2.snap"), &fail, t(1))
            .expect("report");
        assert_eq!(
            (r.step.clone(), a),
            (Step::Failed, vec![Action::Finished { ok: false }])
        );
        let mut r = run();
        assert_eq!(
            r.on_report(&n("node9"), &n("x"), &TaskState::Running, t(1)),
            Err(RunError::UnknownNode(n("node9")))
        );
        // A repeated report changes nothing; a running report neither.
        r.on_report(&n("node1"), &n("r7.node1.snap"), &TaskState::Running, t(1))
            .expect("report");
        r.on_report(
            &n("node1"),
            &n("r7.node1.snap"),
            &done("node1", &["a", "b"]),
            t(1),
        )
        .expect("report");
        let before = r.clone();
        r.on_report(
            &n("node1"),
            &n("r7.node1.snap"),
            &done("node1", &["a", "b"]),
            t(1),
        )
        .expect("report");
        assert_eq!(r, before);
    }

    #[test]
    fn a_run_survives_a_restart_through_its_json() {
        let r = node1_done();
        let saved = serde_json::to_string(&r).expect("save");
        let back: Run = serde_json::from_str(&saved).expect("load");
        assert_eq!(back, r);
        assert_eq!(
            dispatched(&back.actions().expect("actions")),
            ["node2:r7.node2.snap"]
        );
        assert!(Run::new(
            n("r"),
            n("p"),
            n("g"),
            1,
            RunHooks::default(),
            BTreeMap::new(),
            t(0)
        )
        .is_err());
    }

    #[test]
    fn one_node_with_hooks_is_one_step_and_times_are_kept() {
        let mut one = BTreeMap::new();
        one.insert(n("node1"), vec![n("a"), n("b")]);
        let hooks = RunHooks {
            pre: Some("freeze".into()),
            ..RunHooks::default()
        };
        let mut r = Run::new(n("r7"), n("p"), n("g7"), 3, hooks, one, t(0)).expect("run");
        assert!(!r.coordinated && r.step == Step::Snapshot);
        let a = r.actions().expect("actions");
        match &a[..] {
            [Action::Dispatch { task, .. }] => match &task.kind {
                TaskKind::SnapshotGroup { pre_hook, hold, .. } => {
                    assert_eq!((pre_hook.as_deref(), hold), (Some("freeze"), &None))
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        r.on_report(
            &n("node1"),
            &n("r7.node1.snap"),
            &done("node1", &["a", "b"]),
            t(4),
        )
        .expect("report");
        assert_eq!(r.nodes[&n("node1")].finished, Some(t(4).to_string()));
        r.prune(&BTreeMap::new(), t(5)).expect("prune");
        assert_eq!(
            (r.step.clone(), r.finished.clone()),
            (Step::Done, Some(t(5).to_string()))
        );
    }

    #[test]
    fn across_nodes_prepare_snapshot_under_the_hold_and_release_each_node() {
        let mut r = frozen();
        assert!(r.coordinated && r.step == Step::Prepare);
        assert_eq!(r.deadline_ms, Some(t(30).as_millisecond()));
        let a = r.actions().expect("actions");
        assert_eq!(
            dispatched(&a),
            ["node1:r7.node1.prep", "node2:r7.node2.prep"]
        );
        match &a[0] {
            Action::Dispatch { task, .. } => assert_eq!(
                task.kind,
                TaskKind::Prepare {
                    hold: n("r7"),
                    volumes: vec![n("a"), n("b")],
                    pre_hook: "fsfreeze -f /mnt".into(),
                    post_hook: Some("fsfreeze -u /mnt".into()),
                    hook_timeout_secs: None,
                    hold_secs: 30,
                }
            ),
            other => panic!("{other:?}"),
        }
        // node1 holds; nothing is snapshotted before node2 holds too.
        let a = report(&mut r, "node1", "prep", &ok(TaskResult::Prepared), 1);
        assert_eq!(dispatched(&a), ["node2:r7.node2.prep"]);
        let a = report(&mut r, "node2", "prep", &ok(TaskResult::Prepared), 2);
        assert_eq!(r.step, Step::Snapshot);
        assert_eq!(
            dispatched(&a),
            ["node1:r7.node1.snap", "node2:r7.node2.snap"]
        );
        match &a[0] {
            Action::Dispatch { task, .. } => match &task.kind {
                TaskKind::SnapshotGroup { pre_hook, hold, .. } => {
                    assert_eq!((pre_hook, hold), (&None, &Some(n("r7"))))
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        // The deadline concerns preparing only.
        assert!(r.tick(t(100)).expect("tick").is_empty());
        // node1's snapshot is taken: it is released at once, node2 still holds.
        let a = report(&mut r, "node1", "snap", &done("node1", &["a", "b"]), 3);
        assert_eq!(
            dispatched(&a),
            ["node1:r7.node1.rel", "node2:r7.node2.snap"]
        );
        report(
            &mut r,
            "node1",
            "rel",
            &ok(TaskResult::Released { expired: false }),
            3,
        );
        let a = report(&mut r, "node2", "snap", &done("node2", &["c"]), 4);
        assert_eq!(dispatched(&a), ["node2:r7.node2.rel"]);
        assert_eq!(
            r.step,
            Step::Snapshot,
            "the group waits for the last release"
        );
        let a = report(
            &mut r,
            "node2",
            "rel",
            &ok(TaskResult::Released { expired: false }),
            4,
        );
        assert!(matches!(&a[0], Action::RecordGroup { snapshots } if snapshots.len() == 3));
        assert_eq!((r.step.clone(), r.error.clone()), (Step::Prune, None));
    }

    #[test]
    fn across_nodes_a_failed_or_late_prepare_releases_everyone() {
        // node2's pre hook fails: node1, holding, is released; nothing was snapshotted.
        let mut r = frozen();
        report(&mut r, "node1", "prep", &ok(TaskResult::Prepared), 1);
        let fail = TaskState::Failed {
            kind: "hook_failed".into(),
            message: "pre hook exited 1".into(),
        };
        let a = report(&mut r, "node2", "prep", &fail, 2);
        assert_eq!(r.step, Step::Compensate);
        // Both were asked to prepare: both are released (node2's hook may have frozen part).
        assert_eq!(dispatched(&a), ["node1:r7.node1.rel", "node2:r7.node2.rel"]);
        for node in ["node1", "node2"] {
            report(
                &mut r,
                node,
                "rel",
                &ok(TaskResult::Released { expired: false }),
                3,
            );
        }
        assert_eq!(r.step, Step::Failed);
        assert!(
            r.error
                .as_deref()
                .is_some_and(|e| e.contains("pre hook exited 1")),
            "{r:?}"
        );
        assert_eq!(r.finished, Some(t(3).to_string()));

        // node2 never answers: at the deadline everyone is released and the run fails.
        let mut r = frozen();
        report(&mut r, "node1", "prep", &ok(TaskResult::Prepared), 1);
        assert!(r.tick(t(30)).expect("tick").is_empty(), "not yet past it");
        let a = r.tick(t(31)).expect("tick");
        assert_eq!(dispatched(&a), ["node1:r7.node1.rel", "node2:r7.node2.rel"]);
        assert!(r
            .error
            .as_deref()
            .is_some_and(|e| e.contains("node2: not prepared within the 30 s deadline")));
        // A late prepare report changes nothing now.
        let before = r.clone();
        report(&mut r, "node2", "prep", &ok(TaskResult::Prepared), 32);
        assert_eq!(r, before);
    }

    #[test]
    fn across_nodes_a_failed_release_or_expired_hold_fails_and_undoes_the_group() {
        let mut r = frozen();
        for node in ["node1", "node2"] {
            report(&mut r, node, "prep", &ok(TaskResult::Prepared), 1);
        }
        report(&mut r, "node1", "snap", &done("node1", &["a", "b"]), 2);
        // node2's hold ended by itself before its snapshot: the snapshot fails.
        let expired = TaskState::Failed {
            kind: "hold_expired".into(),
            message: "hold r7 ended before the snapshot".into(),
        };
        report(&mut r, "node2", "snap", &expired, 3);
        report(
            &mut r,
            "node2",
            "rel",
            &ok(TaskResult::Released { expired: true }),
            3,
        );
        // node1's thaw failed.
        let a = report(
            &mut r,
            "node1",
            "rel",
            &TaskState::Failed {
                kind: "hook_failed".into(),
                message: "post hook exited 2".into(),
            },
            4,
        );
        assert_eq!(r.step, Step::Compensate);
        assert_eq!(
            dispatched(&a),
            ["node1:r7.node1.undo.a", "node1:r7.node1.undo.b"]
        );
        let e = r.error.clone().unwrap_or_default();
        assert!(
            e.contains("ended before the snapshot") && e.contains("post hook exited 2"),
            "{e}"
        );
    }
}
