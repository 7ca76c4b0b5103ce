//! The scheduler: turns due schedule slots into run records in the state store.
//!
//! For each plan not paused, the slot due now ([`crate::policy::schedule::due`]: the latest slot at or
//! before now that is later than the plan's last fired slot) becomes a run. The run record
//! and the plan's "last fired slot" marker are written in one compare-and-swap transaction on
//! the run's key being absent, and the run's key is derived from the plan and the slot: a
//! slot fires at most once, whether the controller restarts or two controllers race. After
//! downtime only the latest missed slot runs. The scheduler then sleeps until the earliest
//! next slot of any plan, or until a plan changes (a watch on the plans), whichever is first.
//!
//! The run records are what the run executor (next) drives through [`crate::machines::run::Run`]; the
//! API lists them.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_wire::Name;
use jiff::Timestamp;

use crate::daemon::leader::Term;
use crate::machines::run::{Run, RunHooks, Step};
use crate::policy::model::Object;
use crate::policy::schedule::{due, Schedule};
use crate::state::load;
use crate::state::schema::{
    self, Busy, ObjectVolumes, PlanRecord, RunRecord, ACTIVE, FIRED, OBJECTS, PLANS,
};
use crate::state::{Compare, Op, Store, StoreError, Txn};

/// A run id unique per plan and instant: the instant, then 16 hex digits of the plan name's
/// hash (so task ids `<run>.<node>.<step>` stay short and distinct across plans).
pub fn run_id(plan: &Name, at: Timestamp, manual: bool) -> Name {
    let h = blake3::hash(plan.as_str().as_bytes()).to_hex();
    let s = format!(
        "{}{}-{}",
        if manual { "m" } else { "s" },
        at.as_millisecond(),
        &h.as_str()[..16]
    );
    // Digits, a letter and hex: always a valid name.
    Name::new(&s).unwrap_or_else(|_| plan.clone())
}

/// The snapshot group's name: the plan's name (its first 80 bytes) and the UTC instant.
pub fn group_name(plan: &Name, at: Timestamp) -> Name {
    let mut p: String = plan.as_str().chars().take(80).collect();
    while p.ends_with(['.', '-', '_']) {
        p.pop();
    }
    let stamp = at.strftime("%Y%m%dT%H%M%SZ").to_string();
    Name::new(&format!("{p}-{stamp}")).unwrap_or_else(|_| plan.clone())
}

/// The group of a run started by hand at `at`: to the millisecond, so that two runs asked
/// for within one second (the second starts as soon as the first is over) never share a
/// snapshot name.
pub fn manual_group_name(plan: &Name, at: Timestamp) -> Name {
    let mut p: String = plan.as_str().chars().take(80).collect();
    while p.ends_with(['.', '-', '_']) {
        p.pop();
    }
    let stamp = format!(
        "{}.{:03}Z",
        at.strftime("%Y%m%dT%H%M%S"),
        at.subsec_millisecond()
    );
    Name::new(&format!("{p}-{stamp}")).unwrap_or_else(|_| plan.clone())
}

fn schedule_of(p: &PlanRecord) -> Option<Schedule> {
    let s = &p.spec.schedule;
    Schedule::new(
        s.every.parse().ok()?,
        &s.start,
        &s.timezone,
        s.end.as_deref(),
    )
    .ok()
}

/// A new run of `plan` (node -> volumes from its objects), not yet stored: for schedule
/// `slot`, or (`None`) started by hand at `now`.
pub fn new_run(
    plan: &PlanRecord,
    objects: &[Object],
    slot: Option<Timestamp>,
    generation: u64,
    now: Timestamp,
) -> RunRecord {
    let at = slot.unwrap_or(now);
    let name = &plan.spec.name;
    let id = run_id(name, at, slot.is_none());
    let group = match slot {
        Some(s) => group_name(name, s),
        None => manual_group_name(name, at),
    };
    let mut volumes: BTreeMap<Name, Vec<Name>> = BTreeMap::new();
    let mut missing = Vec::new();
    let mut covered = Vec::new();
    for o in &plan.spec.objects {
        match objects.iter().find(|x| &x.name == o) {
            Some(obj) => {
                for v in obj.protected_volumes() {
                    volumes
                        .entry(v.node.clone())
                        .or_default()
                        .push(v.volume.clone());
                }
                covered.push(ObjectVolumes {
                    name: o.clone(),
                    volumes: obj.protected_volumes().into_iter().cloned().collect(),
                });
            }
            None => missing.push(o.to_string()),
        }
    }
    let hooks = RunHooks {
        pre: plan.spec.hooks.pre.clone(),
        post: plan.spec.hooks.post.clone(),
        timeout_secs: plan.spec.hooks.timeout_secs,
        deadline_secs: plan.spec.hooks.deadline_secs,
    };
    let run = match Run::new(
        id.clone(),
        name.clone(),
        group.clone(),
        generation,
        hooks.clone(),
        volumes,
        now,
    ) {
        Ok(r) if missing.is_empty() => {
            let targets: Vec<(Name, u32)> = plan
                .spec
                .targets
                .iter()
                .map(|t| (t.site.clone(), t.retention))
                .collect();
            r.with_targets(plan.id().clone(), &targets)
        }
        _ => Run {
            id,
            plan: name.clone(),
            group,
            generation,
            hooks,
            step: Step::Failed,
            nodes: BTreeMap::new(),
            coordinated: false,
            deadline_ms: None,
            finished: Some(now.to_string()),
            plan_id: None,
            targets: BTreeMap::new(),
            group_created: None,
            error: Some(format!(
                "the plan's objects have no volumes to protect (missing: {})",
                if missing.is_empty() {
                    "none".into()
                } else {
                    missing.join(", ")
                }
            )),
        },
    };
    RunRecord {
        plan_id: Some(plan.id().clone()),
        run,
        trigger: if slot.is_some() { "schedule" } else { "manual" }.into(),
        slot: slot.map(|s| s.to_string()),
        created: now.to_string(),
        objects: covered,
    }
}

/// Stores a run (and, for a scheduled one, the plan's fired-slot marker; for one not over,
/// the plan's active key) if its key is new, nothing else of the plan is in progress, and
/// `term` still leads. Returns whether this call created it.
pub async fn store_run(store: &Store, rec: &RunRecord, term: &Term) -> Result<bool, StoreError> {
    let key = rec.key();
    let plan_id = rec.plan_id();
    let value = serde_json::to_vec(rec).map_err(|e| StoreError::Embedded(e.to_string()))?;
    let mut when = vec![Compare::Absent(key.clone()), term.fence()];
    let mut then = vec![Op::Put(key, value)];
    if !rec.run.step.is_final() {
        let active = schema::active_key(plan_id);
        when.push(Compare::Absent(active.clone()));
        then.push(Op::Put(active, Busy::Run(rec.run.id.clone()).encode()));
    }
    if let Some(slot) = &rec.slot {
        then.push(Op::Put(
            schema::fired_key(plan_id),
            slot.clone().into_bytes(),
        ));
    }
    let done = store.txn(Txn { when, then }).await?;
    Ok(done.succeeded)
}

/// One pass: fire every due slot; returns the earliest next slot of any active plan.
pub async fn tick(
    store: &Store,
    term: &Term,
    now: Timestamp,
) -> Result<Option<Timestamp>, StoreError> {
    let plans: Vec<PlanRecord> = load(store, PLANS).await?;
    let fired: BTreeMap<String, Timestamp> = store
        .list(FIRED)
        .await?
        .into_iter()
        .filter_map(|kv| {
            let t = std::str::from_utf8(&kv.value).ok()?.parse().ok()?;
            Some((kv.key[FIRED.len()..].to_string(), t))
        })
        .collect();
    let busy: std::collections::BTreeSet<String> = store
        .list(ACTIVE)
        .await?
        .into_iter()
        .map(|kv| kv.key[ACTIVE.len()..].to_string())
        .collect();
    let mut objects: Option<Vec<Object>> = None;
    let mut next: Option<Timestamp> = None;
    for p in plans.iter().filter(|p| !p.paused) {
        let Some(s) = schedule_of(p) else { continue };
        let due_slot = due(&s, fired.get(p.id().as_str()).copied(), now);
        // One thing at a time per plan: a slot that comes due during a run, a rollback or a
        // removal fires when it is over (the active index's watch wakes the scheduler).
        let free = !busy.contains(p.id().as_str());
        if let Some(slot) = due_slot.filter(|_| free) {
            if objects.is_none() {
                objects = Some(load(store, OBJECTS).await?);
            }
            let objects = objects.as_deref().unwrap_or_default();
            let rec = new_run(p, objects, Some(slot), term.generation, Timestamp::now());
            if store_run(store, &rec, term).await? {
                tracing::info!(plan = %p.spec.name, run = %rec.run.id, %slot, "scheduled run");
            }
        }
        if let Some(n) = s.next_after(now) {
            next = Some(next.map_or(n, |m: Timestamp| m.min(n)));
        }
    }
    Ok(next)
}

/// Runs the scheduler until `shutdown` resolves. Store errors are logged and retried.
pub async fn run(store: Store, term: Term, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        // Woken when a plan changes, or when a plan's run or rollback ends.
        let mut watch = match store.watch(PLANS, 0).await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch plans; polling");
                None
            }
        };
        let mut idle = match store.watch(ACTIVE, 0).await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the active index; polling");
                None
            }
        };
        let wait = match tick(&store, &term, Timestamp::now()).await {
            Ok(Some(n)) => {
                let ms = n.as_millisecond() - Timestamp::now().as_millisecond();
                Duration::from_millis(ms.clamp(0, 60_000) as u64)
            }
            Ok(None) => Duration::from_secs(60),
            Err(e) => {
                tracing::warn!(error = %e, "scheduler pass failed; retrying");
                Duration::from_secs(1)
            }
        };
        let changed = async {
            match watch.as_mut() {
                Some(w) => {
                    let _ = w.next().await;
                }
                None => std::future::pending().await,
            }
        };
        let ended = async {
            match idle.as_mut() {
                Some(w) => {
                    let _ = w.next().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = changed => {}
            _ = ended => {}
            _ = &mut shutdown => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_group_names_are_valid_and_distinct() {
        let t: Timestamp = "2026-11-24T02:30:00Z".parse().expect("ts");
        let a = Name::new("nightly").expect("name");
        let b = Name::new(&"x".repeat(128)).expect("name");
        assert_ne!(run_id(&a, t, false), run_id(&b, t, false));
        assert_ne!(run_id(&a, t, false), run_id(&a, t, true));
        assert_eq!(group_name(&a, t).as_str(), "nightly-20261124T023000Z");
        let ms = Timestamp::from_millisecond(t.as_millisecond() + 7).expect("ms");
        assert_eq!(
            manual_group_name(&a, ms).as_str(),
            "nightly-20261124T023000.007Z"
        );
        let long = group_name(&b, t);
        assert!(long.as_str().len() <= 128 && long.as_str().ends_with("-20261124T023000Z"));
        // A task id built from a run id stays a valid name.
        let node = Name::new(&"n".repeat(64)).expect("name");
        assert!(Name::new(&format!("{}.{node}.snap", run_id(&b, t, true))).is_ok());
    }
}
