//! What handlers read: the records they need from the store (every readable one under a
//! prefix, one plan by name, what a plan has in progress) and the agents' live progress.
//! Resource files use these and never each other.

use super::*;

pub(super) async fn load_agents(
    store: &Store,
) -> ApiResult<Vec<crate::state::schema::AgentRecord>> {
    let now = jiff::Timestamp::now();
    let out: Vec<crate::state::schema::AgentRecord> =
        crate::state::load(store, schema::AGENTS).await?;
    Ok(out.into_iter().map(|a| with_status(a, now)).collect())
}

/// `a` with its status (up, down) at `now`.
pub(super) fn with_status(
    mut a: crate::state::schema::AgentRecord,
    now: jiff::Timestamp,
) -> crate::state::schema::AgentRecord {
    a.status = a.status_at(now).to_string();
    a
}

/// The record at `key`, if there is a readable one.
pub(super) async fn record<T: serde::de::DeserializeOwned>(
    store: &Store,
    key: &str,
) -> ApiResult<Option<T>> {
    Ok(store
        .get(key)
        .await?
        .and_then(|kv| serde_json::from_slice(&kv.value).ok()))
}

pub(super) async fn load_groups(store: &Store, plan_id: &Name) -> ApiResult<Vec<GroupRecord>> {
    let mut out: Vec<GroupRecord> = crate::state::load(store, &schema::groups_of(plan_id)).await?;
    out.sort_by(|a, b| a.created.cmp(&b.created));
    Ok(out)
}

pub(super) async fn load_objects(store: &Store) -> ApiResult<Vec<Object>> {
    Ok(crate::state::load(store, OBJECTS).await?)
}

pub(super) async fn load_plans(store: &Store) -> ApiResult<Vec<PlanRecord>> {
    Ok(crate::state::load(store, PLANS).await?)
}

pub(super) fn with_next_run(mut p: PlanRecord) -> PlanRecord {
    p.next_run = None;
    if p.paused {
        return p;
    }
    // Saved plans were validated; a schedule that no longer parses (a time zone removed
    // from the database) simply has no next run to show.
    let sched = &p.spec.schedule;
    if let Ok(every) = sched.every.parse() {
        if let Ok(s) = crate::policy::schedule::Schedule::new(
            every,
            &sched.start,
            &sched.timezone,
            sched.end.as_deref(),
        ) {
            p.next_run = s.next_after(jiff::Timestamp::now()).map(|t| t.to_string());
        }
    }
    p
}

pub(super) async fn read_plan(store: &Store, name: &Name) -> ApiResult<(PlanRecord, i64)> {
    let kv = store
        .get(&schema::plan_key(name))
        .await?
        .ok_or_else(|| ApiError::not_found("plan", name.as_str()))?;
    let rec: PlanRecord = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::conflict(format!("plan {name} is unreadable: {e}")))?;
    Ok((rec, kv.mod_revision))
}

/// 409 for a foreign plan: it belongs to the paired site whose backup plan made it.
pub(super) fn refuse_foreign(plan: &PlanRecord, doing: &str) -> ApiResult<()> {
    match &plan.origin {
        None => Ok(()),
        Some(o) => Err(ApiError::conflict(format!(
            "plan {} is the mirror of plan {} of site {}: it changes only by replication from              there, so this site cannot {doing}; rebuild from its groups to get writable copies,              or release it (DELETE /v1/plans/{}?release=true) to let it go",
            plan.spec.name, o.plan, o.site, plan.spec.name
        ))),
    }
}

/// 400 unless every target of a plan is a paired site.
pub(super) async fn check_targets(store: &Store, spec: &PlanSpec) -> ApiResult<()> {
    for (i, t) in spec.targets.iter().enumerate() {
        if store.get(&schema::site_key(&t.site)).await?.is_none() {
            return Err(ApiError::bad(format!(
                "targets[{i}].site: site {} is not paired with this site; pair it first                  (ferry sites add {} --ca FILE --controllers HOST:PORT, on both sides)",
                t.site, t.site
            )));
        }
    }
    Ok(())
}

/// 409 when something of the plan is in progress.
pub(super) async fn refuse_busy(store: &Store, plan: &PlanRecord, doing: &str) -> ApiResult<()> {
    match schema::busy(store, plan.id()).await? {
        None => Ok(()),
        Some(b) => Err(ApiError::conflict(format!(
            "plan {}: {}; {doing} when it is over",
            plan.spec.name,
            b.describe()
        ))),
    }
}

pub(super) async fn load_runs(
    store: &Store,
    prefix: &str,
) -> ApiResult<Vec<crate::state::schema::RunRecord>> {
    let mut out: Vec<crate::state::schema::RunRecord> = crate::state::load(store, prefix).await?;
    out.sort_by(|a, b| a.created.cmp(&b.created));
    Ok(out)
}

/// Live progress of a run's or a job's tasks (agents report it about once a second).
#[derive(Debug, Clone, Copy, Default, Serialize, utoipa::ToSchema)]
pub(super) struct Progress {
    done_bytes: u64,
    total_bytes: u64,
}

/// The progress the agents reported for tasks whose ids start with `prefix` (`<run>.`).
pub(super) fn progress_of(links: &crate::daemon::agents::Links, prefix: &str) -> Option<Progress> {
    let p = links.progress.lock().ok()?;
    let mut out: Option<Progress> = None;
    for (id, (done, total)) in p.iter() {
        if id.starts_with(prefix) {
            let o = out.get_or_insert_with(Progress::default);
            o.done_bytes += done;
            o.total_bytes += total;
        }
    }
    out
}
