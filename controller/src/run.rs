//! A plan's run as a sans-IO state machine: the controller's IO shell persists a [`Run`]
//! (JSON in the state store) before acting on anything it says, performs the actions it
//! asks for, and feeds back what the agents report. Nothing here touches a clock, a socket
//! or the store, so every path is table-tested.
//!
//! A run of a snapshot plan:
//! 1. **snapshot**: one snapshot-group task per node, covering all the plan's volumes on that
//!    node (the node's hooks run around it: one consistent step per node);
//! 2. when every node is done, **prune**: delete the groups beyond the retention count;
//! 3. **done**. If any node fails, the run **compensates**: the snapshots that other nodes did
//!    make are deleted, so a group exists on all nodes or on none, and the run fails.
//!
//! Task ids are derived from the run id, the node and the step (`<run>.<node>.snap`), so a
//! controller that restarts mid-run and dispatches again sends the same ids: each agent's
//! ledger runs a task id at most once and answers a repeat with its recorded outcome.
//! Nothing is executed twice.

use std::collections::BTreeMap;

use ferry_wire::task::{SnapshotRecord, Task, TaskKind, TaskResult, TaskState};
use ferry_wire::Name;
use serde::{Deserialize, Serialize};

/// Where a run is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Snapshot,
    /// Deleting the snapshots some nodes made, because another node failed.
    Compensate,
    Prune,
    Done,
    Failed,
}

/// One node's part in a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Pending,
    Done { snapshots: Vec<SnapshotRecord> },
    Failed { message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePart {
    pub volumes: Vec<Name>,
    pub state: NodeState,
    /// Deletions still to confirm on this node (compensation or pruning): task id -> (volume,
    /// snapshot).
    #[serde(default)]
    pub deleting: BTreeMap<String, (Name, Name)>,
}

/// The hooks a plan runs around each node's snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunHooks {
    pub pre: Option<String>,
    pub post: Option<String>,
    pub timeout_secs: Option<u64>,
}

/// A run, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// A new run taking group `group` of `volumes` (node -> volumes).
    pub fn new(
        id: Name,
        plan: Name,
        group: Name,
        generation: u64,
        hooks: RunHooks,
        volumes: BTreeMap<Name, Vec<Name>>,
    ) -> Result<Run, RunError> {
        if volumes.values().all(Vec::is_empty) {
            return Err(RunError::Empty);
        }
        Ok(Run {
            id,
            plan,
            group,
            generation,
            hooks,
            step: Step::Snapshot,
            nodes: volumes
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(n, volumes)| {
                    (
                        n,
                        NodePart {
                            volumes,
                            state: NodeState::Pending,
                            deleting: BTreeMap::new(),
                        },
                    )
                })
                .collect(),
            error: None,
        })
    }

    fn snapshot_task(&self, node: &Name, part: &NodePart) -> Result<Task, RunError> {
        Ok(Task {
            id: task_id(&self.id, node, "snap")?,
            generation: self.generation,
            kind: TaskKind::SnapshotGroup {
                snapshot: self.group.clone(),
                volumes: part.volumes.clone(),
                pre_hook: self.hooks.pre.clone(),
                post_hook: self.hooks.post.clone(),
                hook_timeout_secs: self.hooks.timeout_secs,
            },
        })
    }

    fn delete_task(&self, id: &str, volume: &Name, snapshot: &Name) -> Result<Task, RunError> {
        Ok(Task {
            id: Name::new(id).map_err(|_| RunError::BadId(id.to_string()))?,
            generation: self.generation,
            kind: TaskKind::DeleteSnapshot {
                volume: volume.clone(),
                snapshot: snapshot.clone(),
            },
        })
    }

    /// What to do now. Calling it again without new input gives the same actions (the
    /// shell may resend them after a restart).
    pub fn actions(&self) -> Result<Vec<Action>, RunError> {
        let mut out = Vec::new();
        match self.step {
            Step::Snapshot => {
                for (node, part) in &self.nodes {
                    if part.state == NodeState::Pending {
                        out.push(Action::Dispatch {
                            node: node.clone(),
                            task: self.snapshot_task(node, part)?,
                        });
                    }
                }
            }
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
            Step::Failed => out.push(Action::Finished { ok: false }),
        }
        Ok(out)
    }

    /// A node reported on a task of this run. Returns the actions that follow.
    pub fn on_report(
        &mut self,
        node: &Name,
        task: &Name,
        state: &TaskState,
    ) -> Result<Vec<Action>, RunError> {
        if !self.nodes.contains_key(node) {
            return Err(RunError::UnknownNode(node.clone()));
        }
        if !state.is_final() {
            return Ok(Vec::new());
        }
        let mut extra = Vec::new();
        let part = self
            .nodes
            .get_mut(node)
            .ok_or(RunError::UnknownNode(node.clone()))?;
        let deletion = part.deleting.remove(task.as_str()).is_some();
        if deletion {
            // A deletion is confirmed whatever its outcome: a snapshot already gone is gone.
            if let TaskState::Failed { kind, message } = state {
                if kind != "not_found" {
                    self.error
                        .get_or_insert(format!("deleting on {node}: {message}"));
                }
            }
        } else if self.step == Step::Snapshot && part.state == NodeState::Pending {
            part.state = match state {
                TaskState::Done {
                    result: TaskResult::SnapshotGroup { snapshots },
                } => NodeState::Done {
                    snapshots: snapshots.clone(),
                },
                TaskState::Done { result } => NodeState::Failed {
                    message: format!("unexpected result {result:?}"),
                },
                TaskState::Running => NodeState::Pending,
                other => NodeState::Failed {
                    message: other.failure().unwrap_or_default(),
                },
            };
            if self.nodes.values().all(|p| p.state != NodeState::Pending) {
                extra = self.after_snapshot()?;
            }
        }
        if deletion
            && matches!(self.step, Step::Compensate | Step::Prune)
            && self.nodes.values().all(|p| p.deleting.is_empty())
        {
            self.step = if self.step == Step::Prune {
                Step::Done
            } else {
                Step::Failed
            };
        }
        let mut out = extra;
        out.extend(self.actions()?);
        Ok(out)
    }

    /// Every node answered the snapshot step.
    fn after_snapshot(&mut self) -> Result<Vec<Action>, RunError> {
        let failed: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|(n, p)| match &p.state {
                NodeState::Failed { message } => Some(format!("{n}: {message}")),
                _ => None,
            })
            .collect();
        if failed.is_empty() {
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
            self.step = Step::Prune;
            return Ok(vec![Action::RecordGroup { snapshots }]);
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
        }
        Ok(Vec::new())
    }

    /// After the group is recorded: delete these older groups (from the retention policy)
    /// on the nodes that hold them (node -> [(volume, group)]).
    pub fn prune(
        &mut self,
        victims: &BTreeMap<Name, Vec<(Name, Name)>>,
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
            });
            for (v, g) in list {
                part.deleting
                    .insert(format!("{id}.{node}.prune.{v}.{g}"), (v.clone(), g.clone()));
            }
        }
        if self.nodes.values().all(|p| p.deleting.is_empty()) {
            self.step = Step::Done;
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

    fn run() -> Run {
        let mut vols = BTreeMap::new();
        vols.insert(n("node1"), vec![n("a"), n("b")]);
        vols.insert(n("node2"), vec![n("c")]);
        Run::new(n("r7"), n("p"), n("g7"), 3, RunHooks::default(), vols).expect("run")
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
            )
            .expect("report");
        assert_eq!(
            dispatched(&a),
            ["node2:r7.node2.snap"],
            "node2 still pending"
        );
        let a = r
            .on_report(&n("node2"), &n("r7.node2.snap"), &done("node2", &["c"]))
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
        let a = r.prune(&victims).expect("prune");
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
            r.on_report(&n("node1"), &n("r7.node1.snap"), &bad)
                .expect("report");
            r.on_report(&n("node2"), &n("r7.node2.snap"), &done("node2", &["c"]))
                .expect("report");
            assert_eq!(r.step, Step::Compensate, "{bad:?}");
        }
        // Every node failed: nothing to undo, the run fails at once.
        let mut r = run();
        let fail = TaskState::Failed {
            kind: "io".into(),
            message: "disk".into(),
        };
        r.on_report(&n("node1"), &n("r7.node1.snap"), &fail)
            .expect("report");
        let a = r
            .on_report(&n("node2"), &n("r7.node2.snap"), &fail)
            .expect("report");
        assert_eq!(
            (r.step.clone(), a),
            (Step::Failed, vec![Action::Finished { ok: false }])
        );
        let mut r = run();
        assert_eq!(
            r.on_report(&n("node9"), &n("x"), &TaskState::Running),
            Err(RunError::UnknownNode(n("node9")))
        );
        // A repeated report changes nothing; a running report neither.
        r.on_report(&n("node1"), &n("r7.node1.snap"), &TaskState::Running)
            .expect("report");
        r.on_report(
            &n("node1"),
            &n("r7.node1.snap"),
            &done("node1", &["a", "b"]),
        )
        .expect("report");
        let before = r.clone();
        r.on_report(
            &n("node1"),
            &n("r7.node1.snap"),
            &done("node1", &["a", "b"]),
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
            BTreeMap::new()
        )
        .is_err());
    }
}
