//! Work on every volume of one snapshot group, as a sans-IO state machine like
//! [`crate::machines::run::Run`]: one task per volume, task ids derived from the job's id, node and
//! volume so that sending again is harmless. Two kinds:
//! * a **rollback** of a plan's objects to a kept group (the agent rolls each volume back in
//!   place, crash-safely);
//! * a **removal** of a deleted plan's group (the agent deletes each volume's snapshot; one
//!   already gone counts as deleted).
//!
//! A job is one plan's one thing in progress (`schema::Busy`): no run starts during a
//! rollback, and no rollback during a run.

use std::collections::BTreeMap;

use ferry_wire::task::{Task, TaskKind, TaskState};
use ferry_wire::Name;
use serde::{Deserialize, Serialize};

/// What a job does to each volume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobAction {
    /// Roll the volume back to the group's snapshot.
    #[default]
    Rollback,
    /// Delete the volume's snapshot of the group.
    Delete,
}

/// Where a job is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStep {
    Running,
    Done,
    Failed,
}

/// One volume's part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VolumeState {
    Pending,
    Done,
    Failed { message: String },
}

/// A job, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GroupJob {
    pub id: Name,
    pub plan: Name,
    /// The plan's id (absent in rollbacks older than plan ids: the plan's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<Name>,
    pub group: Name,
    #[serde(default)]
    pub action: JobAction,
    pub generation: u64,
    pub step: JobStep,
    /// node -> volume -> state
    pub volumes: BTreeMap<Name, BTreeMap<Name, VolumeState>>,
    /// RFC 3339.
    pub created: String,
    /// When it ended (RFC 3339).
    #[serde(default)]
    pub finished: Option<String>,
}

/// Who a job is for and what it does.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub id: Name,
    pub plan: Name,
    pub plan_id: Name,
    pub group: Name,
    pub action: JobAction,
    pub generation: u64,
}

impl GroupJob {
    /// A job on `volumes` (node -> volumes), made at `created` (RFC 3339).
    pub fn new(spec: JobSpec, volumes: BTreeMap<Name, Vec<Name>>, created: String) -> GroupJob {
        let JobSpec {
            id,
            plan,
            plan_id,
            group,
            action,
            generation,
        } = spec;
        GroupJob {
            id,
            plan,
            plan_id: Some(plan_id),
            group,
            action,
            generation,
            step: JobStep::Running,
            volumes: volumes
                .into_iter()
                .map(|(n, vs)| {
                    (
                        n,
                        vs.into_iter().map(|v| (v, VolumeState::Pending)).collect(),
                    )
                })
                .collect(),
            created,
            finished: None,
        }
    }

    /// The id of the plan it is for.
    pub fn plan_id(&self) -> &Name {
        self.plan_id.as_ref().unwrap_or(&self.plan)
    }

    pub fn is_over(&self) -> bool {
        self.step != JobStep::Running
    }

    fn tag(&self) -> &'static str {
        match self.action {
            JobAction::Rollback => "rb",
            JobAction::Delete => "del",
        }
    }

    fn task_id(&self, node: &Name, volume: &Name) -> Option<Name> {
        Name::new(&format!("{}.{node}.{}.{volume}", self.id, self.tag())).ok()
    }

    /// The tasks still to confirm.
    pub fn pending(&self) -> Vec<(Name, Task)> {
        let mut out = Vec::new();
        if self.step != JobStep::Running {
            return out;
        }
        for (node, vols) in &self.volumes {
            for (v, s) in vols {
                if *s != VolumeState::Pending {
                    continue;
                }
                if let Some(id) = self.task_id(node, v) {
                    out.push((
                        node.clone(),
                        Task {
                            start_within_secs: None,
                            id,
                            generation: self.generation,
                            kind: match self.action {
                                JobAction::Rollback => TaskKind::Rollback {
                                    volume: v.clone(),
                                    snapshot: self.group.clone(),
                                },
                                JobAction::Delete => TaskKind::DeleteSnapshot {
                                    volume: v.clone(),
                                    snapshot: self.group.clone(),
                                },
                            },
                        },
                    ));
                }
            }
        }
        out
    }

    /// A report on one of its tasks, at `now` (RFC 3339).
    pub fn on_report(&mut self, node: &Name, task: &Name, state: &TaskState, now: &str) {
        if !state.is_final() || self.step != JobStep::Running {
            return;
        }
        let Some(volume) = self
            .volumes
            .get(node)
            .and_then(|vols| {
                vols.keys()
                    .find(|v| self.task_id(node, v).is_some_and(|id| &id == task))
            })
            .cloned()
        else {
            return;
        };
        let gone = self.action == JobAction::Delete
            && matches!(state, TaskState::Failed { kind, .. } if kind == "not_found");
        let Some(s) = self.volumes.get_mut(node).and_then(|v| v.get_mut(&volume)) else {
            return;
        };
        if *s != VolumeState::Pending {
            return;
        }
        *s = match state.failure() {
            None => VolumeState::Done,
            Some(_) if gone => VolumeState::Done, // deleted already
            Some(message) => VolumeState::Failed { message },
        };
        let all: Vec<&VolumeState> = self.volumes.values().flat_map(|m| m.values()).collect();
        if all.iter().all(|s| **s != VolumeState::Pending) {
            self.step = if all.iter().all(|s| **s == VolumeState::Done) {
                JobStep::Done
            } else {
                JobStep::Failed
            };
            self.finished = Some(now.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).expect("name")
    }

    const NOW: &str = "2026-11-24T00:00:05Z";

    fn job(id: &str, action: JobAction) -> GroupJob {
        let mut v = BTreeMap::new();
        v.insert(n("n1"), vec![n("a"), n("b")]);
        v.insert(n("n2"), vec![n("c")]);
        let spec = JobSpec {
            id: n(id),
            plan: n("p"),
            plan_id: n("p.0a"),
            group: n("g1"),
            action,
            generation: 2,
        };
        GroupJob::new(spec, v, "2026-11-24T00:00:00Z".into())
    }

    fn rb() -> GroupJob {
        job("rb1", JobAction::Rollback)
    }

    fn ids(r: &GroupJob) -> Vec<String> {
        r.pending()
            .iter()
            .map(|(n, t)| format!("{n}:{}", t.id))
            .collect()
    }

    #[test]
    fn every_volume_rolls_back_or_the_rollback_fails() {
        let mut r = rb();
        assert_eq!(
            ids(&r),
            ["n1:rb1.n1.rb.a", "n1:rb1.n1.rb.b", "n2:rb1.n2.rb.c"]
        );
        let ok = TaskState::Done {
            result: ferry_wire::task::TaskResult::RolledBack,
        };
        r.on_report(&n("n1"), &n("rb1.n1.rb.a"), &ok, NOW);
        r.on_report(&n("n1"), &n("rb1.n1.rb.a"), &TaskState::Running, NOW);
        assert_eq!(ids(&r), ["n1:rb1.n1.rb.b", "n2:rb1.n2.rb.c"]);
        r.on_report(&n("n1"), &n("rb1.n1.rb.b"), &ok, NOW);
        r.on_report(&n("n9"), &n("x"), &ok, NOW); // stray: ignored
        r.on_report(&n("n2"), &n("rb1.n2.rb.c"), &ok, NOW);
        assert_eq!(r.step, JobStep::Done);
        assert!(r.pending().is_empty());

        let mut r = rb();
        r.on_report(&n("n1"), &n("rb1.n1.rb.a"), &ok, NOW);
        r.on_report(&n("n1"), &n("rb1.n1.rb.b"), &TaskState::Interrupted, NOW);
        assert_eq!(r.step, JobStep::Running, "n2 still pending");
        r.on_report(
            &n("n2"),
            &n("rb1.n2.rb.c"),
            &TaskState::Failed {
                kind: "not_found".into(),
                message: "no snapshot".into(),
            },
            NOW,
        );
        assert_eq!(r.step, JobStep::Failed);
        assert_eq!(r.finished.as_deref(), Some(NOW));
        let back: GroupJob =
            serde_json::from_str(&serde_json::to_string(&r).expect("save")).expect("load");
        assert_eq!(back, r);
    }

    #[test]
    fn a_removal_deletes_every_snapshot_and_takes_gone_ones_as_deleted() {
        let mut r = job("rm1", JobAction::Delete);
        let tasks = r.pending();
        assert_eq!(tasks.len(), 3);
        assert!(
            matches!(&tasks[0].1.kind, TaskKind::DeleteSnapshot { volume, snapshot }
            if volume.as_str() == "a" && snapshot.as_str() == "g1")
        );
        assert_eq!(tasks[0].1.id.as_str(), "rm1.n1.del.a");
        let ok = TaskState::Done {
            result: ferry_wire::task::TaskResult::SnapshotDeleted,
        };
        let gone = TaskState::Failed {
            kind: "not_found".into(),
            message: "no snapshot a@g1".into(),
        };
        r.on_report(&n("n1"), &n("rm1.n1.del.a"), &ok, NOW);
        r.on_report(&n("n1"), &n("rm1.n1.del.b"), &gone, NOW);
        r.on_report(&n("n2"), &n("rm1.n2.del.c"), &ok, NOW);
        assert_eq!(r.step, JobStep::Done);
        // A rollback of a missing snapshot is a failure, not done.
        let mut r = rb();
        for (node, v) in [("n1", "a"), ("n1", "b"), ("n2", "c")] {
            r.on_report(&n(node), &n(&format!("rb1.{node}.rb.{v}")), &gone, NOW);
        }
        assert_eq!(r.step, JobStep::Failed);
    }
}
