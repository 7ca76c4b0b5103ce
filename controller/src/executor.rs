//! The run executor: the IO shell around [`Run`]. Every few hundred milliseconds it takes the
//! unfinished runs from the store and, for each, sends the tasks the run asks for to the
//! agents' links, feeds back the reports that arrived, records the group when every node has
//! its snapshots, computes what retention prunes, and writes the run back (compare-and-swap
//! on the revision it read). A run is persisted before any action it leads to is taken.
//!
//! Sending is idempotent: task ids are derived from the run, and each agent's ledger runs an
//! id at most once and answers a repeat with its recorded state, so after a controller
//! restart everything unfinished is simply sent again. A task for an agent that is down fails
//! the node's part clearly (`agent_down`), which fails the run and undoes what other nodes
//! made.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_wire::control::ControllerMsg;
use ferry_wire::task::{SnapshotRecord, TaskState};
use ferry_wire::Name;
use serde::{Deserialize, Serialize};

use crate::agents::{AgentRecord, Links, AGENTS};
use crate::api::PlanRecord;
use crate::leader::Term;
use crate::retention::{prune, GroupInfo};
use crate::run::Action;
use crate::scheduler::{active_key, load, run_key, RunRecord, ACTIVE, PLANS, RUNS};
use crate::store::{Compare, Op, Store, StoreError, Txn};

pub const GROUPS: &str = "/ferry/groups/";
pub const ROLLBACKS: &str = "/ferry/rollbacks/";

/// A snapshot group as recorded: complete, on every node of its run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupRecord {
    pub plan: Name,
    pub group: Name,
    pub run: Name,
    /// RFC 3339.
    pub created: String,
    pub snapshots: Vec<(Name, SnapshotRecord)>,
    /// The plan's objects at the run, each with its volumes.
    #[serde(default)]
    pub objects: Vec<crate::scheduler::ObjectVolumes>,
}

/// Most groups one run prunes (each is a delete in the run's transaction), and most
/// snapshot deletions it takes on (each is an entry in the run's record); a retention cut
/// deeper than that is finished by the following runs.
const MAX_PRUNE_GROUPS: usize = 16;
const MAX_PRUNE_SNAPSHOTS: usize = 2048;

/// Finished runs kept per plan (older records are deleted when a run finishes; their
/// groups' records stay while retention keeps them).
pub const RUN_HISTORY: usize = 100;

fn group_key(plan: &Name, group: &Name) -> String {
    format!("{GROUPS}{plan}/{group}")
}

/// Replaces a record read as `kv` unless it changed since or `term` no longer leads, with
/// `more` writes in the same transaction; returns whether it was written.
async fn write_back(
    store: &Store,
    term: &Term,
    kv: &crate::store::KeyValue,
    value: Vec<u8>,
    more: Vec<Op>,
) -> Result<bool, StoreError> {
    let mut then = vec![Op::Put(kv.key.clone(), value)];
    then.extend(more);
    let done = store
        .txn(Txn {
            when: vec![
                Compare::ModRevision(kv.key.clone(), kv.mod_revision),
                term.fence(),
            ],
            then,
        })
        .await?;
    Ok(done.succeeded)
}

/// Deletes the oldest finished runs of `plan` beyond [`RUN_HISTORY`].
async fn trim_history(store: &Store, plan: &Name) -> Result<(), StoreError> {
    let mut runs: Vec<RunRecord> = load(store, &format!("{RUNS}{plan}/")).await?;
    runs.retain(|r| r.run.step.is_final());
    if runs.len() <= RUN_HISTORY {
        return Ok(());
    }
    runs.sort_by(|a, b| a.created.cmp(&b.created));
    for r in &runs[..runs.len() - RUN_HISTORY] {
        store.delete(&run_key(plan, &r.run.id)).await?;
    }
    Ok(())
}

/// What is known of a sent task: its final report, `agent_down` once its agent has been
/// silent past [`AGENT_DEADLINE_SECS`] (or never registered), or nothing yet.
fn outcome(
    links: &Links,
    agents: &[AgentRecord],
    now: jiff::Timestamp,
    node: &Name,
    task: &Name,
) -> Option<TaskState> {
    let report = links
        .reports
        .lock()
        .ok()
        .and_then(|r| r.get(task.as_str()).cloned())
        .filter(TaskState::is_final);
    let silent = agents
        .iter()
        .find(|a| &a.node == node)
        .is_none_or(|a| a.silent_for(now, AGENT_DEADLINE_SECS));
    match report {
        Some(s) => Some(s),
        None if silent => Some(TaskState::Failed {
            kind: "agent_down".into(),
            message: format!("agent {node} is down"),
        }),
        None => None,
    }
}

/// How long an agent may be silent before the tasks it holds fail as `agent_down`. Longer
/// than a link's idle timeout plus a reconnect: an agent whose controller restarted comes
/// back and answers (its ledger knows what it ran), and only then is a task's outcome known.
/// Failing it sooner could leave a snapshot the run never records.
pub const AGENT_DEADLINE_SECS: u64 = 90;

/// A task not heard of this long after it was sent is sent again (the link may have dropped
/// it; the agent's ledger makes the repeat harmless).
const RESEND_AFTER: Duration = Duration::from_secs(5);

/// The executor's memory between passes: when it sent each task id in this process.
#[derive(Debug)]
pub struct Executor {
    term: Term,
    sent: HashMap<String, Instant>,
}

impl Executor {
    /// An executor for `term`: what it writes is fenced by it, and what it resumes from an
    /// earlier term is sent under its generation.
    pub fn new(term: Term) -> Executor {
        Executor {
            term,
            sent: HashMap::new(),
        }
    }

    /// One pass over the unfinished runs.
    pub async fn pass(&mut self, store: &Store, links: &Links) -> Result<(), StoreError> {
        let now = jiff::Timestamp::now();
        let agents: Vec<AgentRecord> = load(store, AGENTS).await?;
        let active = store.list(ACTIVE).await?;
        let keys: Vec<String> = active
            .iter()
            .map(|a| format!("{RUNS}{}", &a.key[ACTIVE.len()..]))
            .collect();
        let records = store.get_many(&keys).await?;
        for (active, record) in active.iter().zip(records) {
            let Some(kv) = record else {
                store.delete(&active.key).await?; // its run is gone
                continue;
            };
            let Ok(mut rec) = serde_json::from_slice::<RunRecord>(&kv.value) else {
                continue;
            };
            let before = serde_json::to_vec(&rec).unwrap_or_default();
            // A run of an earlier term goes on under this one (agents that have seen this
            // term refuse the older generation; the ids, and so the work, stay the same).
            rec.run.generation = rec.run.generation.max(self.term.generation);
            let more = rec.run.tick(now).unwrap_or_default();
            let mut ops = self.after(store, &mut rec, &more).await?;
            let mut actions = rec.run.actions().unwrap_or_default();
            // Feed back what arrived, and fail the parts of agents that are down.
            let mut guard = 0;
            while guard < 64 {
                guard += 1;
                let mut fed = false;
                for a in actions.clone() {
                    let Action::Dispatch { node, task } = a else {
                        continue;
                    };
                    let Some(state) = outcome(links, &agents, now, &node, &task.id) else {
                        continue;
                    };
                    let more = rec
                        .run
                        .on_report(&node, &task.id, &state, now)
                        .unwrap_or_default();
                    ops.extend(self.after(store, &mut rec, &more).await?);
                    fed = true;
                    actions = rec.run.actions().unwrap_or_default();
                    break;
                }
                if !fed {
                    break;
                }
            }
            let after = serde_json::to_vec(&rec).unwrap_or_default();
            if after != before {
                let over = rec.run.step.is_final();
                if over {
                    ops.push(Op::Delete(active_key(&rec.run.plan, &rec.run.id)));
                }
                if !write_back(store, &self.term, &kv, after, ops).await? {
                    continue; // changed meanwhile: the next pass reads it again
                }
                if over {
                    tracing::info!(run = %rec.run.id, plan = %rec.run.plan, step = ?rec.run.step, error = ?rec.run.error, "run finished");
                    self.forget(links, rec.run.id.as_str());
                    trim_history(store, &rec.run.plan).await?;
                    continue;
                }
            }
            // Persisted: now send what it asks for (again after a restart: idempotent).
            for a in rec.run.actions().unwrap_or_default() {
                if let Action::Dispatch { node, task } = a {
                    self.send(links, &node, task).await;
                }
            }
        }
        Ok(())
    }

    /// One pass over the running rollbacks: feed reports, persist, then send.
    pub async fn rollbacks(&mut self, store: &Store, links: &Links) -> Result<(), StoreError> {
        let now = jiff::Timestamp::now();
        let agents: Vec<AgentRecord> = load(store, AGENTS).await?;
        for kv in store.list(ROLLBACKS).await? {
            let Ok(mut rb) = serde_json::from_slice::<crate::rollback::Rollback>(&kv.value) else {
                continue;
            };
            if rb.step != crate::rollback::RollbackStep::Running {
                continue;
            }
            let before = rb.clone();
            rb.generation = rb.generation.max(self.term.generation);
            for (node, task) in rb.pending() {
                if let Some(state) = outcome(links, &agents, now, &node, &task.id) {
                    rb.on_report(&node, &task.id, &state);
                }
            }
            if rb != before {
                let v = serde_json::to_vec(&rb).map_err(|e| StoreError::Embedded(e.to_string()))?;
                if !write_back(store, &self.term, &kv, v, Vec::new()).await? {
                    continue;
                }
                if rb.step != crate::rollback::RollbackStep::Running {
                    tracing::info!(rollback = %rb.id, plan = %rb.plan, step = ?rb.step, "rollback finished");
                    self.forget(links, rb.id.as_str());
                }
            }
            for (node, task) in rb.pending() {
                self.send(links, &node, task).await;
            }
        }
        Ok(())
    }

    /// Drops what is kept about the tasks of a finished run or rollback `id`.
    fn forget(&mut self, links: &Links, id: &str) {
        let prefix = format!("{id}.");
        links.forget(&prefix);
        self.sent.retain(|t, _| !t.starts_with(&prefix));
    }

    /// Sends a task unless it was heard of or sent lately.
    async fn send(&mut self, links: &Links, node: &Name, task: ferry_wire::task::Task) {
        let heard = links
            .reports
            .lock()
            .ok()
            .is_some_and(|r| r.contains_key(task.id.as_str()));
        let recent = self
            .sent
            .get(task.id.as_str())
            .is_some_and(|t| t.elapsed() < RESEND_AFTER);
        if heard || recent {
            return;
        }
        let id = task.id.to_string();
        if links.send(node, ControllerMsg::Task(task)).await {
            self.sent.insert(id, Instant::now());
        }
    }

    /// Handles what a report led to: the group's record and, by retention, the groups to
    /// prune (their snapshots through the run, their records at once: a group being deleted
    /// is not offered for rollback). Returns the writes, which go into the same transaction
    /// as the run's next state.
    async fn after(
        &mut self,
        store: &Store,
        rec: &mut RunRecord,
        actions: &[Action],
    ) -> Result<Vec<Op>, StoreError> {
        let mut ops = Vec::new();
        for a in actions {
            let Action::RecordGroup { snapshots } = a else {
                continue;
            };
            let plan = rec.run.plan.clone();
            let now = jiff::Timestamp::now();
            let g = GroupRecord {
                plan: plan.clone(),
                group: rec.run.group.clone(),
                run: rec.run.id.clone(),
                created: now.to_string(),
                snapshots: snapshots.clone(),
                objects: rec.objects.clone(),
            };
            let v = serde_json::to_vec(&g).map_err(|e| StoreError::Embedded(e.to_string()))?;
            ops.push(Op::Put(group_key(&plan, &g.group), v));
            // Retention (read now, so a change applies at this prune).
            let keep = store
                .get(&format!("{PLANS}{plan}"))
                .await?
                .and_then(|kv| serde_json::from_slice::<PlanRecord>(&kv.value).ok())
                .map_or(usize::MAX, |p| p.spec.retention as usize);
            let mut groups: Vec<GroupRecord> = load(store, &format!("{GROUPS}{plan}/")).await?;
            groups.retain(|x| x.group != g.group);
            groups.push(g);
            let infos: Vec<GroupInfo<'_>> = groups
                .iter()
                .map(|g| GroupInfo {
                    name: g.group.as_str(),
                    taken: g
                        .created
                        .parse::<jiff::Timestamp>()
                        .map_or(0, |t| t.as_millisecond()),
                    complete: true,
                    pinned: false,
                })
                .collect();
            let victims = prune(&infos, keep);
            let mut by_node: BTreeMap<Name, Vec<(Name, Name)>> = BTreeMap::new();
            let (mut taken, mut deletions) = (0, 0);
            let oldest_first = victims
                .iter()
                .filter_map(|v| groups.iter().find(|g| g.group.as_str() == *v));
            for g in oldest_first {
                // Bounded per run (transaction size, record size); the rest go next time.
                if taken == MAX_PRUNE_GROUPS
                    || (taken > 0 && deletions + g.snapshots.len() > MAX_PRUNE_SNAPSHOTS)
                {
                    break;
                }
                taken += 1;
                deletions += g.snapshots.len();
                ops.push(Op::Delete(group_key(&plan, &g.group)));
                for (node, s) in &g.snapshots {
                    by_node
                        .entry(node.clone())
                        .or_default()
                        .push((s.volume.clone(), g.group.clone()));
                }
            }
            let _ = rec.run.prune(&by_node, now);
        }
        Ok(ops)
    }
}

/// Runs the executor until `shutdown`.
pub async fn run(
    store: Store,
    links: Arc<Links>,
    term: Term,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut ex = Executor::new(term);
    loop {
        if let Err(e) = ex.pass(&store, &links).await {
            tracing::warn!(error = %e, "executor pass failed; retrying");
        }
        if let Err(e) = ex.rollbacks(&store, &links).await {
            tracing::warn!(error = %e, "rollback pass failed; retrying");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = &mut shutdown => return,
        }
    }
}
