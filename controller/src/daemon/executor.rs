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
use ferry_wire::task::TaskState;
use ferry_wire::Name;

use crate::daemon::agents::Links;
use crate::daemon::leader::Term;
use crate::daemon::recoveries::RecoveryConfig;
use crate::daemon::sites::Sites;
use crate::machines::backup::TargetStep;
use crate::machines::group_job::{GroupJob, JobAction, JobSpec};
use crate::machines::recovery::{Action as RecoveryAction, Recovery, RecoveryKind};
use crate::machines::run::Action;
use crate::policy::retention::{prune, target_bases, GroupInfo};
use crate::state::load;
use crate::state::schema::{
    self, AgentRecord, Busy, Event, GroupRecord, GroupsFate, OrphanRecord, PlanRecord, RunRecord,
    TargetRecord, VerifiedRecord, ACTIVE, AGENTS, ORPHANS,
};
use crate::state::{Compare, Op, Store, StoreError, Txn};

/// Most groups one run prunes (each is a delete in the run's transaction), and most
/// snapshot deletions it takes on (each is an entry in the run's record); a retention cut
/// deeper than that is finished by the following runs.
const MAX_PRUNE_GROUPS: usize = 16;
const MAX_PRUNE_SNAPSHOTS: usize = 2048;

/// Finished runs kept per plan, and finished rollbacks (older records are deleted when one
/// finishes; the groups' records stay while retention keeps them).
pub const RUN_HISTORY: usize = 100;

/// Most groups of a deleted plan one removal job deletes at a time, and most records of its
/// run history one pass deletes.
const ORPHAN_BATCH: usize = 64;

/// Seconds before a group whose removal failed is tried again.
const REMOVAL_RETRY_SECS: i64 = 60;

/// Replaces a record read as `kv` unless it changed since or `term` no longer leads, with
/// `more` writes in the same transaction; returns whether it was written.
async fn write_back(
    store: &Store,
    term: &Term,
    kv: &crate::state::KeyValue,
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

/// Whether the removal of group `g` failed less than [`REMOVAL_RETRY_SECS`] before `now`
/// (it is tried again after that).
fn failed_lately(jobs: &[GroupJob], g: &GroupRecord, now: jiff::Timestamp) -> bool {
    jobs.iter().any(|j| {
        j.group == g.group
            && j.step == crate::machines::group_job::JobStep::Failed
            && j.finished
                .as_deref()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .is_some_and(|t| now.as_second() - t.as_second() < REMOVAL_RETRY_SECS)
    })
}

/// Deletes the oldest finished runs of plan `plan_id` beyond [`RUN_HISTORY`].
async fn trim_runs(store: &Store, plan_id: &Name) -> Result<(), StoreError> {
    let mut runs: Vec<RunRecord> = load(store, &schema::runs_of(plan_id)).await?;
    runs.retain(|r| r.run.step.is_final());
    if runs.len() <= RUN_HISTORY {
        return Ok(());
    }
    runs.sort_by(|a, b| a.created.cmp(&b.created));
    for r in &runs[..runs.len() - RUN_HISTORY] {
        store.delete(&r.key()).await?;
    }
    Ok(())
}

/// The lineage writes of a rebuilt object's volumes: recorded (`put`) or deleted again.
fn lineage_ops(
    r: &Recovery,
    o: &crate::policy::model::Object,
    now: jiff::Timestamp,
    put: bool,
) -> Vec<Op> {
    let mut ops = Vec::new();
    for v in o.protected_volumes() {
        let key = schema::lineage_key(&v.node, &v.volume);
        if !put {
            ops.push(Op::Delete(key));
            continue;
        }
        let Some(part) = r
            .volumes
            .iter()
            .find(|p| p.node == v.node && p.new_volume.as_ref() == Some(&v.volume))
        else {
            continue;
        };
        let l = schema::LineageRecord {
            snapshot: r.group.clone(),
            root: part.root.clone(),
            site: r.source_site.clone().unwrap_or_else(|| r.plan.clone()),
            plan: r.plan.clone(),
            created: now.to_string(),
        };
        ops.push(Op::Put(key, serde_json::to_vec(&l).unwrap_or_default()));
    }
    ops
}

/// Deletes the oldest finished recoveries of plan `plan_id` beyond [`RUN_HISTORY`] of
/// each kind.
async fn trim_recoveries(store: &Store, plan_id: &Name) -> Result<(), StoreError> {
    let mut all: Vec<Recovery> = load(store, &schema::recoveries_of(plan_id)).await?;
    all.retain(Recovery::is_over);
    all.sort_by(|a, b| b.created.cmp(&a.created));
    let mut seen: BTreeMap<RecoveryKind, usize> = BTreeMap::new();
    for r in all {
        let n = seen.entry(r.kind).or_default();
        *n += 1;
        if *n > RUN_HISTORY {
            store.delete(&schema::recovery_key(plan_id, &r.id)).await?;
        }
    }
    Ok(())
}

/// Deletes the oldest finished jobs under `prefix` beyond [`RUN_HISTORY`].
async fn trim_jobs(store: &Store, prefix: &str) -> Result<(), StoreError> {
    let mut jobs: Vec<GroupJob> = load(store, prefix).await?;
    jobs.retain(GroupJob::is_over);
    if jobs.len() <= RUN_HISTORY {
        return Ok(());
    }
    jobs.sort_by(|a, b| a.created.cmp(&b.created));
    for j in &jobs[..jobs.len() - RUN_HISTORY] {
        store.delete(&format!("{prefix}{}", j.id)).await?;
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
    /// The links to paired sites (absent without an agent endpoint: no backup plans).
    sites: Option<Arc<Sites>>,
    settings: Settings,
}

/// What the executor is told of its site.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This site's name (in notifications).
    pub site: Name,
    pub recovery: RecoveryConfig,
}

impl Executor {
    /// An executor for `term`: what it writes is fenced by it, and what it resumes from an
    /// earlier term is sent under its generation.
    pub fn new(term: Term, sites: Option<Arc<Sites>>, settings: Settings) -> Executor {
        Executor {
            term,
            sent: HashMap::new(),
            sites,
            settings,
        }
    }

    /// This site's name, for notifications.
    fn site(&self) -> &Name {
        &self.settings.site
    }

    /// One pass over the recoveries in progress (`/ferry/recovering/`): feed the reports,
    /// record a rebuild's objects (a batch a pass), persist, then send what each asks for.
    pub async fn recoveries(
        &mut self,
        store: &Store,
        links: &Links,
        agents: &[AgentRecord],
        now: jiff::Timestamp,
    ) -> Result<(), StoreError> {
        for entry in store.list(schema::RECOVERING).await? {
            let key = String::from_utf8_lossy(&entry.value).into_owned();
            let Some(kv) = store.get(&key).await? else {
                let gone = Compare::ModRevision(entry.key.clone(), entry.mod_revision);
                let then = vec![Op::Delete(entry.key.clone())];
                store
                    .txn(Txn {
                        when: vec![gone],
                        then,
                    })
                    .await?;
                continue;
            };
            let Ok(mut r) = serde_json::from_slice::<Recovery>(&kv.value) else {
                tracing::warn!(key = %key, "dropping an unreadable recovery from the index");
                store.delete(&entry.key).await?;
                continue;
            };
            let read = r.clone();
            r.generation = r.generation.max(self.term.generation);
            // Feed what arrived; a step that ends may start the next, whose tasks may have
            // been answered already (after a restart), so feed again, boundedly.
            for _ in 0..8 {
                let before = r.clone();
                for a in r.actions() {
                    if let RecoveryAction::Dispatch { node, task } = a {
                        if let Some(state) = outcome(links, agents, now, &node, &task.id) {
                            r.on_report(&node, &task.id, &state, now);
                        }
                    }
                }
                if r == before {
                    break;
                }
            }
            let mut more = Vec::new();
            let mut absent = Vec::new();
            let mut batch = None;
            for a in r.actions() {
                match a {
                    RecoveryAction::Record { objects } => {
                        for &i in &objects {
                            let o = &r.objects[i].object;
                            let k = schema::object_key(&o.name);
                            absent.push(Compare::Absent(k.clone()));
                            more.push(Op::Put(k, serde_json::to_vec(o).unwrap_or_default()));
                            more.extend(lineage_ops(&r, o, now, true));
                        }
                        r.on_recorded(&objects, Ok(()), now);
                        batch = Some(objects);
                    }
                    RecoveryAction::Unrecord { objects } => {
                        for &i in &objects {
                            let o = &r.objects[i].object;
                            more.push(Op::Delete(schema::object_key(&o.name)));
                            more.extend(lineage_ops(&r, o, now, false));
                        }
                        r.on_unrecorded(&objects, now);
                    }
                    RecoveryAction::Dispatch { .. } => {}
                }
            }
            if r != read {
                if r.is_over() {
                    more.extend(self.recovery_ended(&r, &entry.key, now));
                }
                let value =
                    serde_json::to_vec(&r).map_err(|e| StoreError::Embedded(e.to_string()))?;
                let mut when = vec![
                    Compare::ModRevision(kv.key.clone(), kv.mod_revision),
                    self.term.fence(),
                ];
                when.extend(absent);
                let mut then = vec![Op::Put(kv.key.clone(), value)];
                then.extend(more);
                if !store.txn(Txn { when, then }).await?.succeeded {
                    // A name recorded meanwhile fails the rebuild (and undoes it); anything
                    // else changed is read again next pass.
                    if let Some(objects) = batch {
                        let mut taken = Vec::new();
                        for &i in &objects {
                            let name = &read.objects[i].object.name;
                            if store.get(&schema::object_key(name)).await?.is_some() {
                                taken.push(name.to_string());
                            }
                        }
                        if !taken.is_empty() {
                            let mut r = read.clone();
                            r.generation = r.generation.max(self.term.generation);
                            let why = format!(
                                "objects named {} were made here meanwhile",
                                taken.join(", ")
                            );
                            r.on_recorded(&objects, Err(why), now);
                            let v = serde_json::to_vec(&r)
                                .map_err(|e| StoreError::Embedded(e.to_string()))?;
                            write_back(store, &self.term, &kv, v, Vec::new()).await?;
                        }
                    }
                    continue;
                }
                if r.is_over() {
                    tracing::info!(recovery = %r.id, plan = %r.plan, kind = ?r.kind, phase = ?r.phase, error = ?r.error, "recovery finished");
                    self.forget(links, r.id.as_str());
                    trim_recoveries(store, &r.plan_id).await?;
                    continue;
                }
            }
            for a in r.actions() {
                if let RecoveryAction::Dispatch { node, task } = a {
                    self.send(links, &node, task).await;
                }
            }
        }
        Ok(())
    }

    /// The writes that go with a recovery's end: its index entry goes; a verification
    /// records what it found on the group; a failure is notified.
    fn recovery_ended(&self, r: &Recovery, index_key: &str, now: jiff::Timestamp) -> Vec<Op> {
        let mut ops = vec![Op::Delete(index_key.to_string())];
        if r.kind == RecoveryKind::Verify {
            let v = VerifiedRecord {
                at: now.to_string(),
                ok: r.succeeded(),
                detail: r.error.clone(),
                recovery: r.id.clone(),
            };
            ops.push(Op::Put(
                schema::verified_key(&r.plan_id, &r.group),
                serde_json::to_vec(&v).unwrap_or_default(),
            ));
        }
        if !r.succeeded() {
            let (event, what) = match r.kind {
                RecoveryKind::Rebuild => ("rebuild_failed", "rebuild"),
                RecoveryKind::Drill => ("drill_failed", "drill"),
                RecoveryKind::Verify => ("verify_failed", "verification"),
            };
            let mut e = Event::new(
                event,
                self.site(),
                &r.plan,
                format!(
                    "{what} {} of group {} failed: {}",
                    r.id,
                    r.group,
                    r.error.as_deref().unwrap_or("unknown")
                ),
                now,
            );
            e.peer = r.source_site.clone();
            e.subject = Some(r.id.clone());
            ops.push(e.put());
        }
        ops
    }

    /// One pass over what is in progress: runs, rollbacks and removals (the active index),
    /// then deleted plans' leftovers.
    pub async fn pass(&mut self, store: &Store, links: &Links) -> Result<(), StoreError> {
        let now = jiff::Timestamp::now();
        let agents: Vec<AgentRecord> = load(store, AGENTS).await?;
        let mut work: Vec<(crate::state::KeyValue, Name, Busy)> = Vec::new();
        for kv in store.list(ACTIVE).await? {
            let plan_id = schema::last_name(&kv.key);
            match (plan_id, serde_json::from_slice::<Busy>(&kv.value)) {
                (Some(p), Ok(b)) => work.push((kv, p, b)),
                _ => {
                    tracing::warn!(key = %kv.key, "dropping an unreadable active-index entry");
                    store.delete(&kv.key).await?;
                }
            }
        }
        let keys: Vec<String> = work.iter().map(|(_, p, b)| b.record_key(p)).collect();
        let records = store.get_many(&keys).await?;
        for ((active, plan_id, busy), record) in work.iter().zip(records) {
            let Some(kv) = record else {
                // Its record is gone: nothing is in progress.
                store
                    .txn(Txn {
                        when: vec![Compare::ModRevision(
                            active.key.clone(),
                            active.mod_revision,
                        )],
                        then: vec![Op::Delete(active.key.clone())],
                    })
                    .await?;
                continue;
            };
            if !matches!(busy, Busy::Run(_)) {
                self.job(store, links, &agents, now, plan_id, busy, &kv)
                    .await?;
                continue;
            }
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
                    let more = match a {
                        Action::Dispatch { node, task } => {
                            let Some(state) = outcome(links, &agents, now, &node, &task.id) else {
                                continue;
                            };
                            rec.run
                                .on_report(&node, &task.id, &state, now)
                                .unwrap_or_default()
                        }
                        Action::Ask { site, id, .. } => {
                            let Some(reply) = self.sites.as_ref().and_then(|s| s.reply(&id)) else {
                                continue;
                            };
                            let before = rec.run.targets.get(&site).cloned();
                            let more = rec
                                .run
                                .on_site_reply(&site, &id, &reply, now)
                                .unwrap_or_default();
                            if rec.run.targets.get(&site) == before.as_ref() {
                                continue; // nothing new (the same failed attempt)
                            }
                            if reply.is_err() {
                                // Asked again once the shell sends the actions.
                                if let Some(s) = &self.sites {
                                    s.forget(&id);
                                }
                            }
                            more
                        }
                        _ => continue,
                    };
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
                ops.extend(self.target_records(store, &before, &rec, now).await?);
                let over = rec.run.step.is_final();
                if over {
                    ops.push(Op::Delete(schema::active_key(plan_id)));
                    let event = match rec.run.step {
                        crate::machines::run::Step::Failed => Some("run_failed"),
                        crate::machines::run::Step::PartiallyDone => Some("run_partially_done"),
                        _ => None,
                    };
                    if let Some(event) = event {
                        let why = rec.run.error.as_deref().unwrap_or("unknown");
                        let msg = format!("run {} of plan {}: {why}", rec.run.id, rec.run.plan);
                        let mut e = Event::new(event, self.site(), &rec.run.plan, msg, now);
                        e.subject = Some(rec.run.id.clone());
                        ops.push(e.put());
                    }
                }
                if !write_back(store, &self.term, &kv, after, ops).await? {
                    continue; // changed meanwhile: the next pass reads it again
                }
                if over {
                    tracing::info!(run = %rec.run.id, plan = %rec.run.plan, step = ?rec.run.step, error = ?rec.run.error, "run finished");
                    self.forget(links, rec.run.id.as_str());
                    trim_runs(store, plan_id).await?;
                    continue;
                }
            }
            // Persisted: now send what it asks for (again after a restart: idempotent).
            for a in rec.run.actions().unwrap_or_default() {
                match a {
                    Action::Dispatch { node, task } => self.send(links, &node, task).await,
                    Action::Ask { site, id, request } => {
                        self.ask(store, &rec, site, id, request).await?;
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// One step of a rollback or removal in progress (`kv`, its record): feed the reports,
    /// persist, then send. A removal that ends deletes the records of what it deleted, in
    /// the same transaction.
    #[allow(clippy::too_many_arguments)]
    async fn job(
        &mut self,
        store: &Store,
        links: &Links,
        agents: &[AgentRecord],
        now: jiff::Timestamp,
        plan_id: &Name,
        busy: &Busy,
        kv: &crate::state::KeyValue,
    ) -> Result<(), StoreError> {
        let Ok(mut job) = serde_json::from_slice::<GroupJob>(&kv.value) else {
            return Ok(());
        };
        let before = job.clone();
        job.generation = job.generation.max(self.term.generation);
        for (node, task) in job.pending() {
            if let Some(state) = outcome(links, agents, now, &node, &task.id) {
                job.on_report(&node, &task.id, &state, &now.to_string());
            }
        }
        if job != before || job.is_over() {
            let mut more = Vec::new();
            if job.is_over() {
                more.push(Op::Delete(schema::active_key(plan_id)));
                if job.action == JobAction::Delete
                    && job.step == crate::machines::group_job::JobStep::Done
                {
                    more.push(Op::Delete(schema::group_key(plan_id, &job.group)));
                    more.push(Op::Delete(schema::verified_key(plan_id, &job.group)));
                }
            }
            let v = serde_json::to_vec(&job).map_err(|e| StoreError::Embedded(e.to_string()))?;
            if !write_back(store, &self.term, kv, v, more).await? {
                return Ok(());
            }
            if job.is_over() {
                tracing::info!(job = %job.id, plan = %job.plan, action = ?job.action, step = ?job.step, "group job finished");
                self.forget(links, job.id.as_str());
                let prefix = match busy {
                    Busy::Removal(_) => schema::removals_of(plan_id),
                    _ => schema::rollbacks_of(plan_id),
                };
                trim_jobs(store, &prefix).await?;
                return Ok(());
            }
        }
        for (node, task) in job.pending() {
            self.send(links, &node, task).await;
        }
        Ok(())
    }

    /// One pass over deleted plans' leftovers: their run history is deleted; groups to
    /// delete get a removal job, one group at a time (a group whose removal failed is tried
    /// again a minute later); the marker goes when nothing is left.
    pub async fn orphans(&mut self, store: &Store) -> Result<(), StoreError> {
        for kv in store.list(ORPHANS).await? {
            let Ok(o) = serde_json::from_slice::<OrphanRecord>(&kv.value) else {
                continue;
            };
            let id = &o.plan_id;
            let runs = store.list(&schema::runs_of(id)).await?;
            for r in runs.iter().take(ORPHAN_BATCH) {
                store.delete(&r.key).await?;
            }
            store.delete(&schema::fired_key(id)).await?;
            store.delete(&schema::drill_fired_key(id)).await?;
            let recovering = !store.list(&schema::recovering_of(id)).await?.is_empty();
            if recovering || schema::busy(store, id).await?.is_some() {
                continue; // the executor's pass drives it
            }
            let groups: Vec<GroupRecord> = load(store, &schema::groups_of(id)).await?;
            if groups.is_empty() && runs.len() <= ORPHAN_BATCH {
                // Nothing left: the history of its jobs goes with the marker.
                for prefix in [
                    schema::rollbacks_of(id),
                    schema::removals_of(id),
                    schema::targets_of(id),
                    schema::mirrors_of(id),
                    schema::recoveries_of(id),
                    schema::verified_of(id),
                    schema::alarms_of(id),
                ] {
                    for j in store.list(&prefix).await? {
                        store.delete(&j.key).await?;
                    }
                }
                store
                    .txn(Txn {
                        when: vec![Compare::ModRevision(kv.key.clone(), kv.mod_revision)],
                        then: vec![Op::Delete(kv.key.clone())],
                    })
                    .await?;
                tracing::info!(plan = %o.plan, plan_id = %id, "a deleted plan's leftovers are gone");
                continue;
            }
            if o.fate != GroupsFate::Delete {
                continue;
            }
            let now = jiff::Timestamp::now();
            let jobs: Vec<GroupJob> = load(store, &schema::removals_of(id)).await?;
            let failed_lately = |g: &GroupRecord| failed_lately(&jobs, g, now);
            let Some(g) = groups
                .iter()
                .filter(|g| !failed_lately(g))
                .min_by(|a, b| a.created.cmp(&b.created))
            else {
                continue;
            };
            if let Some(job) = self.start_removal(store, &o.plan, id, g, now).await? {
                tracing::info!(plan = %o.plan, group = %g.group, %job, "deleting a deleted plan's group");
            }
        }
        Ok(())
    }

    /// Starts a removal job of group `g` of plan `plan` (id `id`) unless something of the
    /// plan is in progress; returns its id.
    async fn start_removal(
        &self,
        store: &Store,
        plan: &Name,
        id: &Name,
        g: &GroupRecord,
        now: jiff::Timestamp,
    ) -> Result<Option<Name>, StoreError> {
        let job_id = crate::policy::model::plan_job_id("rm", id, now.as_millisecond());
        let mut volumes: BTreeMap<Name, Vec<Name>> = BTreeMap::new();
        for (node, snap) in &g.snapshots {
            volumes
                .entry(node.clone())
                .or_default()
                .push(snap.volume.clone());
        }
        let spec = JobSpec {
            id: job_id.clone(),
            plan: plan.clone(),
            plan_id: id.clone(),
            group: g.group.clone(),
            action: JobAction::Delete,
            generation: self.term.generation,
        };
        let job = GroupJob::new(spec, volumes, now.to_string());
        let v = serde_json::to_vec(&job).map_err(|e| StoreError::Embedded(e.to_string()))?;
        let active = schema::active_key(id);
        let done = store
            .txn(Txn {
                when: vec![Compare::Absent(active.clone()), self.term.fence()],
                then: vec![
                    Op::Put(schema::removal_key(id, &job_id), v),
                    Op::Put(active, Busy::Removal(job_id.clone()).encode()),
                ],
            })
            .await?;
        Ok(done.succeeded.then_some(job_id))
    }

    /// Foreign plans (paired sites' mirrors here) keep their own number of groups: beyond
    /// it, the oldest group is removed, one removal at a time (the newest is always kept:
    /// it is the base of the next transfer).
    pub async fn foreign(&mut self, store: &Store) -> Result<(), StoreError> {
        for kv in store.list(schema::PLANS).await? {
            let Ok(p) = serde_json::from_slice::<PlanRecord>(&kv.value) else {
                continue;
            };
            if p.origin.is_none() {
                continue;
            }
            let id = p.id().clone();
            if schema::busy(store, &id).await?.is_some() {
                continue;
            }
            let mut groups: Vec<GroupRecord> = load(store, &schema::groups_of(&id)).await?;
            let keep = (p.spec.retention as usize).max(1);
            if groups.len() <= keep {
                continue;
            }
            groups.sort_by(|a, b| a.created.cmp(&b.created));
            let now = jiff::Timestamp::now();
            let jobs: Vec<GroupJob> = load(store, &schema::removals_of(&id)).await?;
            let failed_lately = |g: &GroupRecord| failed_lately(&jobs, g, now);
            // A group a rebuild, drill or verification reads stays until it is over.
            let in_use = crate::daemon::recoveries::groups_in_use(store, &id).await?;
            let excess = groups.len() - keep;
            let Some(g) = groups[..excess]
                .iter()
                .find(|g| !failed_lately(g) && !in_use.contains(&g.group))
            else {
                continue;
            };
            if let Some(job) = self.start_removal(store, &p.spec.name, &id, g, now).await? {
                tracing::info!(plan = %p.spec.name, group = %g.group, %job, "pruning a mirror group by the foreign plan's retention");
            }
        }
        Ok(())
    }

    /// Drops what is kept about the tasks of a finished run or rollback `id`.
    fn forget(&mut self, links: &Links, id: &str) {
        let prefix = format!("{id}.");
        links.forget(&prefix);
        if let Some(s) = &self.sites {
            s.forget(&prefix);
        }
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
        let mut recorded: Option<GroupRecord> = None;
        for a in actions {
            let plan = rec.run.plan.clone();
            let plan_id = rec.plan_id().clone();
            let now = jiff::Timestamp::now();
            if let Action::RecordGroup { snapshots } = a {
                let g = GroupRecord {
                    plan: plan.clone(),
                    plan_id: Some(plan_id.clone()),
                    group: rec.run.group.clone(),
                    run: rec.run.id.clone(),
                    created: rec
                        .run
                        .group_created
                        .clone()
                        .unwrap_or_else(|| now.to_string()),
                    snapshots: snapshots.clone(),
                    objects: rec.objects.clone(),
                    mirror_objects: Vec::new(),
                    verified: None,
                };
                let v = serde_json::to_vec(&g).map_err(|e| StoreError::Embedded(e.to_string()))?;
                ops.push(Op::Put(schema::group_key(&plan_id, &g.group), v));
                recorded = Some(g);
                continue;
            }
            if !matches!(a, Action::ComputePrune) {
                continue;
            }
            // Retention (read now, so a change applies at this prune). A plan deleted
            // meanwhile, or one of a new life under the same name, prunes nothing.
            let keep = store
                .get(&schema::plan_key(&plan))
                .await?
                .and_then(|kv| serde_json::from_slice::<PlanRecord>(&kv.value).ok())
                .filter(|p| p.id() == &plan_id)
                .map_or(usize::MAX, |p| p.spec.retention as usize);
            let mut groups: Vec<GroupRecord> = load(store, &schema::groups_of(&plan_id)).await?;
            if let Some(g) = recorded.take() {
                groups.retain(|x| x.group != g.group);
                groups.push(g);
            }
            // The newest group each target holds is the base of its next transfer: never
            // pruned here, whatever the local count (this run's outcome included).
            let held: Vec<TargetRecord> = load(store, &schema::targets_of(&plan_id)).await?;
            let held_refs: Vec<(&str, Vec<&str>)> = held
                .iter()
                .map(|t| {
                    let mut g: Vec<&str> = t.bases.values().map(Name::as_str).collect();
                    g.extend(t.last_group.as_ref().map(Name::as_str));
                    (t.site.as_str(), g)
                })
                .collect();
            let bases = target_bases(
                &held_refs,
                |site| {
                    rec.run
                        .targets
                        .iter()
                        .any(|(s, p)| s.as_str() == site && p.step == TargetStep::Done)
                },
                rec.run.group.as_str(),
            );
            let infos: Vec<GroupInfo<'_>> = groups
                .iter()
                .map(|g| GroupInfo {
                    name: g.group.as_str(),
                    taken: g
                        .created
                        .parse::<jiff::Timestamp>()
                        .map_or(0, |t| t.as_millisecond()),
                    complete: true,
                    pinned: bases.contains(&g.group.as_str()),
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
                ops.push(Op::Delete(schema::group_key(&plan_id, &g.group)));
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

    /// What the targets whose part ended with this write now hold (their records, written
    /// in the same transaction as the run).
    async fn target_records(
        &self,
        store: &Store,
        before: &[u8],
        rec: &RunRecord,
        now: jiff::Timestamp,
    ) -> Result<Vec<Op>, StoreError> {
        let old: Option<RunRecord> = serde_json::from_slice(before).ok();
        let mut ops = Vec::new();
        for (site, part) in &rec.run.targets {
            let was_final = old
                .as_ref()
                .and_then(|o| o.run.targets.get(site))
                .is_some_and(|p| p.is_final());
            if !part.is_final() || was_final {
                continue;
            }
            let key = schema::target_key(rec.plan_id(), site);
            let mut t = store
                .get(&key)
                .await?
                .and_then(|kv| serde_json::from_slice::<TargetRecord>(&kv.value).ok())
                .unwrap_or_else(|| TargetRecord::new(site.clone()));
            t.bytes_sent += part.sent_bytes();
            if t.first_attempt.is_none() {
                t.first_attempt = Some(rec.created.clone());
            }
            for x in part.transfers.iter().filter(|x| x.done) {
                t.bases
                    .insert(format!("{}/{}", x.node, x.volume), rec.run.group.clone());
            }
            // Volumes no longer in the plan have no base to keep.
            t.bases.retain(|k, _| {
                part.transfers
                    .iter()
                    .any(|x| format!("{}/{}", x.node, x.volume) == *k)
            });
            if part.foreign_plan.is_some() {
                t.foreign_plan = part.foreign_plan.clone();
            }
            if part.step == TargetStep::Done {
                t.last_group = Some(rec.run.group.clone());
                t.last_group_created = rec.run.group_created.clone();
                t.last_replicated = Some(now.to_string());
                t.last_bytes_sent = part.sent_bytes();
                let ms = |x: &Option<String>| {
                    x.as_deref()
                        .and_then(|v| v.parse::<jiff::Timestamp>().ok())
                        .map(|v| v.as_millisecond())
                };
                t.last_transfer_ms = match (ms(&part.started), ms(&part.finished)) {
                    (Some(a), Some(b)) => (b - a).max(0) as u64,
                    _ => 0,
                };
                t.last_error = None;
            } else {
                t.failures += 1;
                t.last_error = part.error.clone();
            }
            let v = serde_json::to_vec(&t).map_err(|e| StoreError::Embedded(e.to_string()))?;
            ops.push(Op::Put(key, v));
        }
        Ok(ops)
    }

    /// Asks a target site for a run (in the background; the answer is read by a later
    /// pass). A prepare carries the plan's schedule, shown on the foreign plan.
    async fn ask(
        &self,
        store: &Store,
        rec: &RunRecord,
        site: Name,
        id: String,
        mut request: ferry_wire::site::SiteRequest,
    ) -> Result<(), StoreError> {
        let Some(sites) = &self.sites else {
            return Ok(());
        };
        if let ferry_wire::site::SiteRequest::Prepare {
            objects, volumes, ..
        } = &mut request
        {
            // What a rebuild here made a volume from: the target may hold that snapshot
            // (the volume came from there), and then seeds the mirror from it.
            for v in volumes.iter_mut() {
                if let Some(kv) = store.get(&schema::lineage_key(&v.node, &v.volume)).await? {
                    if let Ok(l) = serde_json::from_slice::<schema::LineageRecord>(&kv.value) {
                        v.seeds = vec![l.root];
                    }
                }
            }
            let plan = store
                .get(&schema::plan_key(&rec.run.plan))
                .await?
                .and_then(|kv| serde_json::from_slice::<PlanRecord>(&kv.value).ok());
            let Some(plan) = plan else {
                return Ok(());
            };
            let mut protected = Vec::new();
            for o in &rec.objects {
                if let Some(kv) = store.get(&schema::object_key(&o.name)).await? {
                    if let Ok(obj) = serde_json::from_slice(&kv.value) {
                        protected.push(obj);
                    }
                }
            }
            let target = plan.spec.targets.iter().find(|t| t.site == site);
            let spec = crate::daemon::sites::ForeignSpec {
                schedule: plan.spec.schedule.clone(),
                objects: protected,
                switches: target.map(|t| t.switches.clone()).unwrap_or_default(),
                rpo_secs: plan.spec.rpo_secs,
                drill: target.and_then(|t| t.drill.clone()),
            };
            *objects = serde_json::to_vec(&spec).unwrap_or_default();
        }
        sites.spawn_ask(site, id, request, RESEND_AFTER);
        Ok(())
    }
}

/// Runs the executor until `shutdown`: a pass every 200 ms, or at once when a task ends or
/// a paired site answers.
pub async fn run(
    store: Store,
    links: Arc<Links>,
    sites: Option<Arc<Sites>>,
    term: Term,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut ex = Executor::new(term.clone(), sites, settings);
    let mut passes: u64 = 0;
    loop {
        passes += 1;
        if let Err(e) = ex.pass(&store, &links).await {
            tracing::warn!(error = %e, "executor pass failed; retrying");
        }
        let now = jiff::Timestamp::now();
        match load::<AgentRecord>(&store, AGENTS).await {
            Ok(agents) => {
                if let Err(e) = ex.recoveries(&store, &links, &agents, now).await {
                    tracing::warn!(error = %e, "recoveries' pass failed; retrying");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the agents; retrying"),
        }
        if let Err(e) = ex.orphans(&store).await {
            tracing::warn!(error = %e, "deleted plans' pass failed; retrying");
        }
        // Mirror retention, scheduled drills and verifications are not urgent: about
        // every 5 s.
        if passes % 25 == 1 {
            if let Err(e) = ex.foreign(&store).await {
                tracing::warn!(error = %e, "foreign plans' pass failed; retrying");
            }
            let cfg = &ex.settings.recovery;
            if let Err(e) = crate::daemon::recoveries::schedule(&store, &term, cfg, now).await {
                tracing::warn!(error = %e, "scheduling drills and verifications failed; retrying");
            }
            let site = &ex.settings.site;
            if let Err(e) = crate::daemon::alarms::pass(&store, &term, site, now).await {
                tracing::warn!(error = %e, "checking the RPOs failed; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = links.wake.notified() => {}
            _ = &mut shutdown => return,
        }
    }
}
