//! A backup run's part for one target site, as a sans-IO state machine (part of a
//! [`Run`](crate::machines::run::Run), persisted with it). Its steps:
//!
//! 1. **prepare**: ask the target's controller to ensure the foreign plan and a mirror for
//!    every protected volume; the answer says where each mirror lives;
//! 2. **send**: one `replicate` task per volume, to the agent holding the source snapshot,
//!    addressed to the mirror's agent. The agent picks the base (the newest snapshot both
//!    hold with the same root) and resumes an interrupted transfer from the receiver's
//!    journal; a transfer the agent could not finish (restarted, gone) is sent again as a
//!    new task, up to [`MAX_ATTEMPTS`];
//! 3. **record**: once every mirror holds the snapshot with the source's root, ask the
//!    target to record the mirror snapshot group (it prunes by its own retention);
//! 4. **done**, or **failed** with why. A target's failure is its own: the other targets go
//!    on, and the next run catches it up from the newest group it holds.
//!
//! A request the target does not answer is sent again (requests are idempotent); one not
//! answered within [`ASK_DEADLINE_SECS`] fails the part. Ids are derived from the run, the
//! site and the step, so a controller that restarts sends the same ones.

use ferry_wire::site::{MirrorSnapshot, MirrorVolume, Placement, SiteRequest, SiteResponse};
use ferry_wire::task::{Task, TaskKind, TaskResult, TaskState};
use ferry_wire::Name;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Seconds a target may leave a request unanswered before its part fails.
pub const ASK_DEADLINE_SECS: i64 = 60;
/// Tasks one volume's transfer may take (the agent retries network errors itself).
pub const MAX_ATTEMPTS: u32 = 3;
/// Network retries inside one transfer task (with backoff up to 30 s: several minutes).
pub const TRANSFER_RETRIES: u32 = 12;

/// Where a target's part is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetStep {
    Prepare,
    Send,
    Record,
    Done,
    Failed,
}

/// One volume's transfer to its mirror.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Transfer {
    /// The source node and volume, and the snapshot's root there.
    pub node: Name,
    pub volume: Name,
    pub size: u64,
    pub root: String,
    /// Its mirror, once the target said where.
    pub mirror_node: Option<Name>,
    pub mirror: Option<Name>,
    pub address: Option<String>,
    /// Tasks sent so far (the current one is the last).
    pub attempt: u32,
    pub done: bool,
    pub sent_bytes: u64,
    /// Blocks the mirror already had from an interrupted transfer of this snapshot.
    #[serde(default)]
    pub resumed_blocks: u64,
    pub base: Option<Name>,
    pub elapsed_ms: u64,
}

/// A target's part in a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TargetPart {
    pub retention: u32,
    pub step: TargetStep,
    pub transfers: Vec<Transfer>,
    /// The foreign plan's name at the target.
    pub foreign_plan: Option<Name>,
    /// When the current request was first made (Unix ms), and the last error it met.
    pub asked_ms: Option<i64>,
    pub last_error: Option<String>,
    pub error: Option<String>,
    /// When sending began and when the part ended (RFC 3339).
    pub started: Option<String>,
    pub finished: Option<String>,
    /// Mirror groups the target keeps after this run.
    pub groups: Option<u32>,
}

/// What the IO shell must do for a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetAction {
    /// Send this request to the site (again if it was sent before: it is idempotent).
    Ask { id: String, request: SiteRequest },
    /// Send this task to this source node.
    Dispatch { node: Name, task: Task },
}

/// What a part needs of its run to act.
#[derive(Debug, Clone, Copy)]
pub struct RunInfo<'a> {
    pub run: &'a Name,
    pub plan: &'a Name,
    pub plan_id: &'a Name,
    pub group: &'a Name,
    pub generation: u64,
    /// When the group was taken (RFC 3339).
    pub created: &'a str,
}

fn ask_id(run: &Name, site: &Name, what: &str) -> String {
    format!("{run}.{site}.{what}")
}

/// A transfer's task id: `<run>.<site>.v<index>.t<attempt>`.
pub fn transfer_id(run: &Name, site: &Name, index: usize, attempt: u32) -> Option<Name> {
    Name::new(&format!("{run}.{site}.v{index}.t{attempt}")).ok()
}

impl TargetPart {
    /// A part sending these snapshots (source node, volume, size, root).
    pub fn new(retention: u32, snapshots: Vec<(Name, Name, u64, String)>) -> TargetPart {
        TargetPart {
            retention,
            step: TargetStep::Prepare,
            transfers: snapshots
                .into_iter()
                .map(|(node, volume, size, root)| Transfer {
                    node,
                    volume,
                    size,
                    root,
                    mirror_node: None,
                    mirror: None,
                    address: None,
                    attempt: 0,
                    done: false,
                    sent_bytes: 0,
                    resumed_blocks: 0,
                    base: None,
                    elapsed_ms: 0,
                })
                .collect(),
            foreign_plan: None,
            asked_ms: None,
            last_error: None,
            error: None,
            started: None,
            finished: None,
            groups: None,
        }
    }

    pub fn is_final(&self) -> bool {
        matches!(self.step, TargetStep::Done | TargetStep::Failed)
    }

    /// Bytes its transfers sent.
    pub fn sent_bytes(&self) -> u64 {
        self.transfers.iter().map(|t| t.sent_bytes).sum()
    }

    fn fail(&mut self, why: String, now: Timestamp) {
        self.step = TargetStep::Failed;
        self.error = Some(why);
        self.finished = Some(now.to_string());
        self.asked_ms = None;
    }

    /// What to do now (the same again without new input).
    pub fn actions(&self, site: &Name, r: RunInfo<'_>) -> Vec<TargetAction> {
        match self.step {
            TargetStep::Prepare => vec![TargetAction::Ask {
                id: ask_id(r.run, site, "prepare"),
                request: SiteRequest::Prepare {
                    plan: r.plan.clone(),
                    plan_id: r.plan_id.clone(),
                    retention: self.retention,
                    volumes: self
                        .transfers
                        .iter()
                        .map(|t| MirrorVolume {
                            node: t.node.clone(),
                            volume: t.volume.clone(),
                            size: t.size,
                            // Filled in by the shell (what the site knows of each volume).
                            seeds: Vec::new(),
                        })
                        .collect(),
                    // Filled in by the shell (the plan's schedule).
                    objects: Vec::new(),
                },
            }],
            TargetStep::Send => self
                .transfers
                .iter()
                .enumerate()
                .filter(|(_, t)| !t.done)
                .filter_map(|(i, t)| {
                    let id = transfer_id(r.run, site, i, t.attempt)?;
                    Some(TargetAction::Dispatch {
                        node: t.node.clone(),
                        task: Task {
                            id,
                            generation: r.generation,
                            start_within_secs: None,
                            kind: TaskKind::Replicate {
                                volume: t.volume.clone(),
                                snapshot: r.group.clone(),
                                site: site.clone(),
                                peer: t.address.clone()?,
                                mirror: t.mirror.clone()?,
                                retries: TRANSFER_RETRIES,
                            },
                        },
                    })
                })
                .collect(),
            TargetStep::Record => vec![TargetAction::Ask {
                id: ask_id(r.run, site, "record"),
                request: SiteRequest::Record {
                    plan: r.plan.clone(),
                    plan_id: r.plan_id.clone(),
                    group: r.group.clone(),
                    created: r.created.to_string(),
                    snapshots: self
                        .transfers
                        .iter()
                        .filter_map(|t| {
                            Some(MirrorSnapshot {
                                mirror_node: t.mirror_node.clone()?,
                                mirror: t.mirror.clone()?,
                                node: t.node.clone(),
                                volume: t.volume.clone(),
                                size: t.size,
                                root: t.root.clone(),
                            })
                        })
                        .collect(),
                },
            }],
            TargetStep::Done | TargetStep::Failed => Vec::new(),
        }
    }

    /// Time passed: a request unanswered past the deadline fails the part.
    pub fn tick(&mut self, site: &Name, now: Timestamp) {
        if !matches!(self.step, TargetStep::Prepare | TargetStep::Record) {
            return;
        }
        let asked = *self.asked_ms.get_or_insert(now.as_millisecond());
        if now.as_millisecond() - asked > ASK_DEADLINE_SECS * 1000 {
            let why = self
                .last_error
                .clone()
                .unwrap_or_else(|| "no answer".into());
            self.fail(
                format!("site {site} did not answer within {ASK_DEADLINE_SECS} s: {why}"),
                now,
            );
        }
    }

    /// The answer to request `id` (an error: the attempt failed; it will be made again).
    pub fn on_reply(
        &mut self,
        site: &Name,
        run: &Name,
        id: &str,
        reply: &Result<SiteResponse, String>,
        now: Timestamp,
    ) -> bool {
        let expected = match self.step {
            TargetStep::Prepare => ask_id(run, site, "prepare"),
            TargetStep::Record => ask_id(run, site, "record"),
            _ => return false,
        };
        if id != expected {
            return false;
        }
        let resp = match reply {
            Err(e) => {
                let changed = self.last_error.as_deref() != Some(e);
                self.last_error = Some(e.clone());
                return changed;
            }
            Ok(r) => r,
        };
        match (self.step.clone(), resp) {
            (_, SiteResponse::Error { code, message }) => {
                self.fail(format!("site {site} refused ({code}): {message}"), now);
            }
            (
                TargetStep::Prepare,
                SiteResponse::Prepared {
                    foreign_plan,
                    placements,
                },
            ) => match self.place(placements) {
                Ok(()) => {
                    self.foreign_plan = Some(foreign_plan.clone());
                    self.step = TargetStep::Send;
                    self.asked_ms = None;
                    self.last_error = None;
                    self.started = Some(now.to_string());
                }
                Err(why) => self.fail(format!("site {site}: {why}"), now),
            },
            (TargetStep::Record, SiteResponse::Recorded { groups }) => {
                self.groups = Some(*groups);
                self.step = TargetStep::Done;
                self.asked_ms = None;
                self.finished = Some(now.to_string());
            }
            (_, other) => self.fail(format!("site {site}: unexpected answer {other:?}"), now),
        }
        true
    }

    fn place(&mut self, placements: &[Placement]) -> Result<(), String> {
        for t in &mut self.transfers {
            let Some(p) = placements
                .iter()
                .find(|p| p.node == t.node && p.volume == t.volume)
            else {
                return Err(format!("no mirror for {}/{}", t.node, t.volume));
            };
            t.mirror_node = Some(p.mirror_node.clone());
            t.mirror = Some(p.mirror.clone());
            t.address = Some(p.address.clone());
        }
        Ok(())
    }

    /// A source node reported on task `task`; true when it was one of this part's.
    pub fn on_report(
        &mut self,
        site: &Name,
        run: &Name,
        task: &Name,
        state: &TaskState,
        now: Timestamp,
    ) -> bool {
        if self.step != TargetStep::Send || !state.is_final() {
            return false;
        }
        let Some(i) = self.transfers.iter().enumerate().find_map(|(i, t)| {
            (!t.done && transfer_id(run, site, i, t.attempt).as_ref() == Some(task)).then_some(i)
        }) else {
            return false;
        };
        let t = &mut self.transfers[i];
        match state {
            TaskState::Done {
                result:
                    TaskResult::Replicated {
                        root,
                        base,
                        sent_bytes,
                        elapsed_ms,
                        resumed_blocks,
                        ..
                    },
            } if *root == t.root => {
                t.done = true;
                t.sent_bytes = *sent_bytes;
                t.resumed_blocks = *resumed_blocks;
                t.base = base.clone();
                t.elapsed_ms = *elapsed_ms;
            }
            TaskState::Done { result } => {
                let why = format!("{}/{}: unexpected result {result:?}", t.node, t.volume);
                self.fail(why, now);
                return true;
            }
            // Not finished through no fault of the data: a new task resumes it.
            TaskState::Interrupted | TaskState::Stale { .. } if t.attempt + 1 < MAX_ATTEMPTS => {
                t.attempt += 1;
            }
            TaskState::Failed { kind, .. }
                if (kind == "agent_down" || kind == "network" || kind == "busy")
                    && t.attempt + 1 < MAX_ATTEMPTS =>
            {
                t.attempt += 1;
            }
            other => {
                let why = format!(
                    "sending {}/{}: {}",
                    t.node,
                    t.volume,
                    other.failure().unwrap_or_default()
                );
                self.fail(why, now);
                return true;
            }
        }
        if self.transfers.iter().all(|t| t.done) {
            self.step = TargetStep::Record;
            self.asked_ms = Some(now.as_millisecond());
        }
        true
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

    fn info<'a>(names: &'a [Name; 4]) -> RunInfo<'a> {
        RunInfo {
            run: &names[0],
            plan: &names[1],
            plan_id: &names[2],
            group: &names[3],
            generation: 2,
            created: "2027-01-01T00:00:00Z",
        }
    }

    fn part() -> TargetPart {
        TargetPart::new(
            3,
            vec![
                (n("n1"), n("a"), 100, "ra".into()),
                (n("n2"), n("b"), 200, "rb".into()),
            ],
        )
    }

    fn prepared() -> Result<SiteResponse, String> {
        Ok(SiteResponse::Prepared {
            foreign_plan: n("src.web"),
            placements: ["a", "b"]
                .iter()
                .zip(["n1", "n2"])
                .map(|(v, node)| Placement {
                    node: n(node),
                    volume: n(v),
                    mirror_node: n("m1"),
                    mirror: n(&format!("src.{node}.{v}")),
                    address: "127.0.0.1:9".into(),
                })
                .collect(),
        })
    }

    fn sent(root: &str) -> TaskState {
        TaskState::Done {
            result: TaskResult::Replicated {
                root: root.into(),
                base: None,
                sent_bytes: 10,
                blocks: 1,
                sent_blocks: 1,
                resumed_blocks: 0,
                elapsed_ms: 1,
                already_there: false,
            },
        }
    }

    #[test]
    fn a_target_prepares_sends_records_and_is_done() {
        let names = [n("r1"), n("web"), n("web.1"), n("g1")];
        let (site, r) = (n("b"), info(&names));
        let mut p = part();
        let a = p.actions(&site, r);
        assert!(matches!(&a[..], [TargetAction::Ask { id, .. }] if id == "r1.b.prepare"));
        // A transport error is remembered; the request is made again.
        assert!(p.on_reply(&site, &names[0], "r1.b.prepare", &Err("down".into()), t(1)));
        assert_eq!(p.step, TargetStep::Prepare);
        assert!(p.on_reply(&site, &names[0], "r1.b.prepare", &prepared(), t(2)));
        assert_eq!(p.step, TargetStep::Send);
        let tasks: Vec<String> = p
            .actions(&site, r)
            .iter()
            .filter_map(|a| match a {
                TargetAction::Dispatch { node, task } => Some(format!("{node}:{}", task.id)),
                _ => None,
            })
            .collect();
        assert_eq!(tasks, ["n1:r1.b.v0.t0", "n2:r1.b.v1.t0"]);
        assert!(p.on_report(&site, &names[0], &n("r1.b.v0.t0"), &sent("ra"), t(3)));
        // The agent restarted during the second: sent again as a new task.
        assert!(p.on_report(
            &site,
            &names[0],
            &n("r1.b.v1.t0"),
            &TaskState::Interrupted,
            t(4)
        ));
        assert_eq!(p.transfers[1].attempt, 1);
        assert!(
            !p.on_report(&site, &names[0], &n("r1.b.v1.t0"), &sent("rb"), t(4)),
            "stale id"
        );
        assert!(p.on_report(&site, &names[0], &n("r1.b.v1.t1"), &sent("rb"), t(5)));
        assert_eq!(p.step, TargetStep::Record);
        let a = p.actions(&site, r);
        let [TargetAction::Ask {
            request: SiteRequest::Record { snapshots, .. },
            ..
        }] = &a[..]
        else {
            panic!("{a:?}");
        };
        assert_eq!(snapshots.len(), 2);
        assert_eq!(snapshots[1].mirror.as_str(), "src.n2.b");
        assert!(p.on_reply(
            &site,
            &names[0],
            "r1.b.record",
            &Ok(SiteResponse::Recorded { groups: 1 }),
            t(6)
        ));
        assert_eq!(p.step, TargetStep::Done);
        assert_eq!(p.sent_bytes(), 20);
        assert!(p.actions(&site, r).is_empty());
    }

    #[test]
    fn failures_of_a_target_are_its_own_and_say_why() {
        let names = [n("r1"), n("web"), n("web.1"), n("g1")];
        let site = n("b");
        // Unanswered past the deadline.
        let mut p = part();
        p.tick(&site, t(0));
        p.on_reply(
            &site,
            &names[0],
            "r1.b.prepare",
            &Err("cannot reach site b".into()),
            t(5),
        );
        p.tick(&site, t(ASK_DEADLINE_SECS - 1));
        assert_eq!(p.step, TargetStep::Prepare);
        p.tick(&site, t(ASK_DEADLINE_SECS + 1));
        assert_eq!(p.step, TargetStep::Failed);
        assert!(
            p.error
                .as_deref()
                .is_some_and(|e| e.contains("cannot reach")),
            "{:?}",
            p.error
        );
        // Refused.
        let mut p = part();
        let no = Ok(SiteResponse::Error {
            code: "no_space".into(),
            message: "full".into(),
        });
        p.on_reply(&site, &names[0], "r1.b.prepare", &no, t(1));
        assert!(p.error.as_deref().is_some_and(|e| e.contains("no_space")));
        // A root that differs, and a permanent transfer error.
        let mut p = part();
        p.on_reply(&site, &names[0], "r1.b.prepare", &prepared(), t(1));
        p.on_report(&site, &names[0], &n("r1.b.v0.t0"), &sent("other"), t(2));
        assert_eq!(p.step, TargetStep::Failed);
        let mut p = part();
        p.on_reply(&site, &names[0], "r1.b.prepare", &prepared(), t(1));
        let refused = TaskState::Failed {
            kind: "refused".into(),
            message: "peer refused".into(),
        };
        p.on_report(&site, &names[0], &n("r1.b.v1.t0"), &refused, t(2));
        assert_eq!(p.step, TargetStep::Failed);
        // Interrupted too often.
        let mut p = part();
        p.on_reply(&site, &names[0], "r1.b.prepare", &prepared(), t(1));
        for k in 0..MAX_ATTEMPTS {
            let id = n(&format!("r1.b.v0.t{k}"));
            p.on_report(&site, &names[0], &id, &TaskState::Interrupted, t(2));
        }
        assert_eq!(p.step, TargetStep::Failed);
    }
}
