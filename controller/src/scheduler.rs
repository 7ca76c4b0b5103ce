//! The scheduler: turns due schedule slots into run records in the state store.
//!
//! For each plan not paused, the slot due now ([`crate::schedule::due`]: the latest slot at or
//! before now that is later than the plan's last fired slot) becomes a run. The run record
//! and the plan's "last fired slot" marker are written in one compare-and-swap transaction on
//! the run's key being absent, and the run's key is derived from the plan and the slot: a
//! slot fires at most once, whether the controller restarts or two controllers race. After
//! downtime only the latest missed slot runs. The scheduler then sleeps until the earliest
//! next slot of any plan, or until a plan changes (a watch on the plans), whichever is first.
//!
//! The run records are what the run executor (next) drives through [`crate::run::Run`]; the
//! API lists them.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_wire::Name;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::api::PlanRecord;
use crate::model::Object;
use crate::run::{Run, RunHooks, Step};
use crate::schedule::{due, Schedule};
use crate::store::{Compare, Op, Store, StoreError, Txn};

pub const PLANS: &str = "/ferry/plans/";
pub const OBJECTS: &str = "/ferry/objects/";
pub const RUNS: &str = "/ferry/runs/";
pub const FIRED: &str = "/ferry/fired/";

/// A run as stored and listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub run: Run,
    /// `schedule` or `manual`.
    pub trigger: String,
    /// The schedule slot it runs for (RFC 3339), for scheduled runs.
    pub slot: Option<String>,
    /// When the record was made (RFC 3339).
    pub created: String,
}

/// The key of a run.
pub fn run_key(plan: &Name, run: &Name) -> String {
    format!("{RUNS}{plan}/{run}")
}

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
    let group = group_name(name, slot.unwrap_or(at));
    let mut volumes: BTreeMap<Name, Vec<Name>> = BTreeMap::new();
    let mut missing = Vec::new();
    for o in &plan.spec.objects {
        match objects.iter().find(|x| &x.name == o) {
            Some(obj) => {
                for v in obj.protected_volumes() {
                    volumes
                        .entry(v.node.clone())
                        .or_default()
                        .push(v.volume.clone());
                }
            }
            None => missing.push(o.to_string()),
        }
    }
    let hooks = RunHooks {
        pre: plan.spec.hooks.pre.clone(),
        post: plan.spec.hooks.post.clone(),
        timeout_secs: plan.spec.hooks.timeout_secs,
    };
    let run = match Run::new(
        id.clone(),
        name.clone(),
        group.clone(),
        generation,
        hooks.clone(),
        volumes,
    ) {
        Ok(r) if missing.is_empty() => r,
        _ => Run {
            id,
            plan: name.clone(),
            group,
            generation,
            hooks,
            step: Step::Failed,
            nodes: BTreeMap::new(),
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
        run,
        trigger: if slot.is_some() { "schedule" } else { "manual" }.into(),
        slot: slot.map(|s| s.to_string()),
        created: now.to_string(),
    }
}

/// Stores a run (and, for a scheduled one, the plan's fired-slot marker) if its key is new.
/// Returns whether this call created it.
pub async fn store_run(store: &Store, rec: &RunRecord) -> Result<bool, StoreError> {
    let key = run_key(&rec.run.plan, &rec.run.id);
    let value = serde_json::to_vec(rec).map_err(|e| StoreError::Embedded(e.to_string()))?;
    let mut then = vec![Op::Put(key.clone(), value)];
    if let Some(slot) = &rec.slot {
        then.push(Op::Put(
            format!("{FIRED}{}", rec.run.plan),
            slot.clone().into_bytes(),
        ));
    }
    let done = store
        .txn(Txn {
            when: vec![Compare::Absent(key)],
            then,
        })
        .await?;
    Ok(done.succeeded)
}

/// Every readable record under `prefix` (an unreadable one is logged and skipped).
pub async fn load<T: serde::de::DeserializeOwned>(
    store: &Store,
    prefix: &str,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for kv in store.list(prefix).await? {
        match serde_json::from_slice(&kv.value) {
            Ok(v) => out.push(v),
            Err(e) => tracing::warn!(key = %kv.key, error = %e, "skipping an unreadable record"),
        }
    }
    Ok(out)
}

/// One pass: fire every due slot; returns the earliest next slot of any active plan.
pub async fn tick(
    store: &Store,
    generation: u64,
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
    let mut objects: Option<Vec<Object>> = None;
    let mut next: Option<Timestamp> = None;
    for p in plans.iter().filter(|p| !p.paused) {
        let Some(s) = schedule_of(p) else { continue };
        let due_slot = due(&s, fired.get(p.spec.name.as_str()).copied(), now);
        // Never snapshot volumes half rolled back: the slot fires after the rollback.
        let rolling_back = match due_slot {
            Some(_) => load::<crate::rollback::Rollback>(
                store,
                &format!("{}{}/", crate::executor::ROLLBACKS, p.spec.name),
            )
            .await?
            .iter()
            .any(|r| r.step == crate::rollback::RollbackStep::Running),
            None => false,
        };
        if let Some(slot) = due_slot.filter(|_| !rolling_back) {
            if objects.is_none() {
                objects = Some(load(store, OBJECTS).await?);
            }
            let objects = objects.as_deref().unwrap_or_default();
            let rec = new_run(p, objects, Some(slot), generation, Timestamp::now());
            if store_run(store, &rec).await? {
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
pub async fn run(store: Store, generation: u64, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let mut watch = match store.watch(PLANS, 0).await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch plans; polling");
                None
            }
        };
        let wait = match tick(&store, generation, Timestamp::now()).await {
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
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = changed => {}
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
        let long = group_name(&b, t);
        assert!(long.as_str().len() <= 128 && long.as_str().ends_with("-20261124T023000Z"));
        // A task id built from a run id stays a valid name.
        let node = Name::new(&"n".repeat(64)).expect("name");
        assert!(Name::new(&format!("{}.{node}.snap", run_id(&b, t, true))).is_ok());
    }
}
