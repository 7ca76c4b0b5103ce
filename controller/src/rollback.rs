//! Rolling a plan's objects back to a kept snapshot group, as a sans-IO state machine like
//! [`crate::run::Run`]: one rollback task per volume (the agent rolls the volume back in
//! place, crash-safely), task ids derived from the rollback's id, node and volume so that
//! sending again is harmless. The API refuses a rollback while a run of the plan is in
//! progress, and a run while a rollback is.

use std::collections::BTreeMap;

use ferry_wire::task::{Task, TaskKind, TaskState};
use ferry_wire::Name;
use serde::{Deserialize, Serialize};

/// Where a rollback is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackStep {
    Running,
    Done,
    Failed,
}

/// One volume's part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeState {
    Pending,
    Done,
    Failed { message: String },
}

/// A rollback, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    pub id: Name,
    pub plan: Name,
    pub group: Name,
    pub generation: u64,
    pub step: RollbackStep,
    /// node -> volume -> state
    pub volumes: BTreeMap<Name, BTreeMap<Name, VolumeState>>,
    /// RFC 3339.
    pub created: String,
}

impl Rollback {
    pub fn new(
        id: Name,
        plan: Name,
        group: Name,
        generation: u64,
        volumes: BTreeMap<Name, Vec<Name>>,
        created: String,
    ) -> Rollback {
        Rollback {
            id,
            plan,
            group,
            generation,
            step: RollbackStep::Running,
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
        }
    }

    fn task_id(&self, node: &Name, volume: &Name) -> Option<Name> {
        Name::new(&format!("{}.{node}.rb.{volume}", self.id)).ok()
    }

    /// The tasks still to confirm.
    pub fn pending(&self) -> Vec<(Name, Task)> {
        let mut out = Vec::new();
        if self.step != RollbackStep::Running {
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
                            id,
                            generation: self.generation,
                            kind: TaskKind::Rollback {
                                volume: v.clone(),
                                snapshot: self.group.clone(),
                            },
                        },
                    ));
                }
            }
        }
        out
    }

    /// A report on one of its tasks.
    pub fn on_report(&mut self, node: &Name, task: &Name, state: &TaskState) {
        if !state.is_final() || self.step != RollbackStep::Running {
            return;
        }
        let id = self.id.clone();
        let Some(vols) = self.volumes.get_mut(node) else {
            return;
        };
        let Some((_, s)) = vols
            .iter_mut()
            .find(|(v, _)| format!("{id}.{node}.rb.{v}") == task.as_str())
        else {
            return;
        };
        if *s != VolumeState::Pending {
            return;
        }
        *s = match state.failure() {
            None => VolumeState::Done,
            Some(message) => VolumeState::Failed { message },
        };
        let all: Vec<&VolumeState> = self.volumes.values().flat_map(|m| m.values()).collect();
        if all.iter().all(|s| **s != VolumeState::Pending) {
            self.step = if all.iter().all(|s| **s == VolumeState::Done) {
                RollbackStep::Done
            } else {
                RollbackStep::Failed
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Name {
        Name::new(s).expect("name")
    }

    fn rb() -> Rollback {
        let mut v = BTreeMap::new();
        v.insert(n("n1"), vec![n("a"), n("b")]);
        v.insert(n("n2"), vec![n("c")]);
        Rollback::new(
            n("rb1"),
            n("p"),
            n("g1"),
            2,
            v,
            "2026-11-24T00:00:00Z".into(),
        )
    }

    fn ids(r: &Rollback) -> Vec<String> {
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
        r.on_report(&n("n1"), &n("rb1.n1.rb.a"), &ok);
        r.on_report(&n("n1"), &n("rb1.n1.rb.a"), &TaskState::Running);
        assert_eq!(ids(&r), ["n1:rb1.n1.rb.b", "n2:rb1.n2.rb.c"]);
        r.on_report(&n("n1"), &n("rb1.n1.rb.b"), &ok);
        r.on_report(&n("n9"), &n("x"), &ok); // stray: ignored
        r.on_report(&n("n2"), &n("rb1.n2.rb.c"), &ok);
        assert_eq!(r.step, RollbackStep::Done);
        assert!(r.pending().is_empty());

        let mut r = rb();
        r.on_report(&n("n1"), &n("rb1.n1.rb.a"), &ok);
        r.on_report(&n("n1"), &n("rb1.n1.rb.b"), &TaskState::Interrupted);
        assert_eq!(r.step, RollbackStep::Running, "n2 still pending");
        r.on_report(
            &n("n2"),
            &n("rb1.n2.rb.c"),
            &TaskState::Failed {
                kind: "not_found".into(),
                message: "no snapshot".into(),
            },
        );
        assert_eq!(r.step, RollbackStep::Failed);
        let back: Rollback =
            serde_json::from_str(&serde_json::to_string(&r).expect("save")).expect("load");
        assert_eq!(back, r);
    }
}
