//! The site at a glance (`GET /v1/status`, `ferry status`): every plan's last run, last
//! success, the age of its newest snapshot group (the recovery point actually held), what is
//! in progress and the latest failure; the agents up and down. A pure function of what the
//! store holds and the time, table-tested.

use std::collections::BTreeMap;

use ferry_wire::Name;
use jiff::Timestamp;
use serde::Serialize;

use super::*;
use crate::machines::recovery::{Recovery, RecoveryKind};
use crate::machines::run::Step;
use crate::state::schema::AgentRecord;
use crate::state::schema::RunRecord;
use crate::state::schema::{Busy, PlanRecord};

/// The whole site.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Status {
    /// RFC 3339: when this was computed.
    pub now: String,
    pub plans: Vec<PlanStatus>,
    pub agents: Vec<AgentStatus>,
    /// Deleted plans with groups or history left (`ferry orphans list`).
    pub deleted_plans_with_leftovers: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PlanStatus {
    pub name: Name,
    pub paused: bool,
    pub every: String,
    pub retention: u32,
    pub next_run: Option<String>,
    /// The newest run, whatever its state.
    pub last_run: Option<RunSummary>,
    /// When the newest successful run finished (RFC 3339).
    pub last_success: Option<String>,
    /// The newest group: the one a successful run recorded last.
    pub newest_group: Option<Name>,
    /// Seconds since the newest group was taken: the recovery point held now.
    pub newest_group_age_secs: Option<u64>,
    /// A run, rollback or removal in progress, in words.
    pub in_progress: Option<String>,
    /// The newest failed run, if none succeeded since.
    pub failure: Option<RunSummary>,
    /// A backup plan's target sites: the newest group each holds and its age.
    pub targets: Vec<TargetStatus>,
    /// A foreign plan's source site (the plan mirrors that site's plan here).
    pub origin: Option<Name>,
    /// The RPO in force, seconds, and (a foreign plan) whether its newest mirror group is
    /// older than that (see `policy::rpo`).
    pub rpo_secs: u64,
    pub rpo_violated: bool,
    /// The newest drill (foreign plans; also its `last_run`, and its `failure` when failed).
    pub last_drill: Option<RunSummary>,
    /// Groups whose last verification found them damaged or unreadable.
    pub verification_failures: Vec<Name>,
}

/// What a target site holds of a backup plan.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct TargetStatus {
    pub site: Name,
    pub last_group: Option<Name>,
    /// Seconds since that group was taken: the recovery point the site offers now.
    pub lag_secs: Option<u64>,
    pub last_bytes_sent: u64,
    pub last_transfer_ms: u64,
    pub failures: u64,
    pub last_error: Option<String>,
    /// The plan's RPO and whether that site's newest group is older (see `policy::rpo`).
    pub rpo_secs: u64,
    pub rpo_violated: bool,
}

impl TargetStatus {
    /// The status of target record `t` at `now`.
    pub fn of(t: &crate::state::schema::TargetRecord, now: Timestamp) -> TargetStatus {
        TargetStatus {
            rpo_secs: 0,
            rpo_violated: false,
            site: t.site.clone(),
            last_group: t.last_group.clone(),
            lag_secs: t
                .last_group_created
                .as_deref()
                .and_then(ts)
                .map(|c| (now.as_second() - c.as_second()).max(0) as u64),
            last_bytes_sent: t.last_bytes_sent,
            last_transfer_ms: t.last_transfer_ms,
            failures: t.failures,
            last_error: t.last_error.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RunSummary {
    pub id: Name,
    pub trigger: String,
    pub step: Step,
    pub started: String,
    pub finished: Option<String>,
    pub duration_secs: Option<f64>,
    pub bytes_read: u64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AgentStatus {
    pub node: Name,
    pub status: String,
    pub volumes: usize,
    pub free_bytes: u64,
    pub last_heartbeat: String,
}

fn summary(r: &RunRecord) -> RunSummary {
    let report = r.report();
    RunSummary {
        id: r.run.id.clone(),
        trigger: r.trigger.clone(),
        step: r.run.step.clone(),
        started: r.created.clone(),
        finished: r.run.finished.clone(),
        duration_secs: report.duration_secs,
        bytes_read: report.bytes_read,
        error: r.run.error.clone(),
    }
}

fn ts(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

/// What a plan holds beyond its runs, by plan id: its newest group (a foreign plan's mirror
/// groups have no run here), its finished drills, the groups that failed verification.
#[derive(Debug, Clone, Default)]
pub struct Held {
    pub newest_group: Option<(Name, String)>,
    pub drills: Vec<Recovery>,
    pub verification_failures: Vec<Name>,
}

/// A drill as a run of its foreign plan.
fn drill_summary(r: &Recovery) -> RunSummary {
    let ms = |t: &str| t.parse::<Timestamp>().ok().map(|t| t.as_millisecond());
    let duration = match (ms(&r.created), r.finished.as_deref().and_then(ms)) {
        (Some(a), Some(b)) => Some((b - a).max(0) as f64 / 1e3),
        _ => None,
    };
    RunSummary {
        id: r.id.clone(),
        trigger: format!("drill ({})", r.trigger),
        step: if r.succeeded() {
            Step::Done
        } else {
            Step::Failed
        },
        started: r.created.clone(),
        finished: r.finished.clone(),
        duration_secs: duration,
        bytes_read: r.volumes.iter().map(|v| v.bytes_read).sum(),
        error: r.error.clone(),
    }
}

/// The status of `plans` from their `runs` (any order), what they hold (`held`, by plan
/// id), what is in progress (`busy`, by plan id), the `agents` (status already computed
/// for now) and the number of deleted plans with leftovers, at `now`.
pub fn summarize(
    plans: &[PlanRecord],
    runs: &[RunRecord],
    held: &BTreeMap<Name, Held>,
    busy: &BTreeMap<Name, Busy>,
    agents: &[AgentRecord],
    deleted_plans_with_leftovers: usize,
    now: Timestamp,
) -> Status {
    let mut by_plan: BTreeMap<&Name, Vec<&RunRecord>> = BTreeMap::new();
    for r in runs {
        by_plan.entry(r.plan_id()).or_default().push(r);
    }
    let plans = plans
        .iter()
        .map(|p| {
            let mut mine = by_plan.remove(p.id()).unwrap_or_default();
            mine.sort_by(|a, b| a.created.cmp(&b.created));
            let last = mine.last().copied();
            let ok = mine
                .iter()
                .rev()
                // A partly done run took and recorded its group here all the same.
                .find(|r| matches!(r.run.step, Step::Done | Step::PartiallyDone))
                .copied();
            let failed = mine
                .iter()
                .rev()
                .find(|r| r.run.step == Step::Failed)
                .copied()
                .filter(|f| ok.is_none_or(|o| f.created > o.created));
            let finished = ok.and_then(|o| o.run.finished.clone());
            let age = finished
                .as_deref()
                .and_then(ts)
                .map(|t| (now.as_second() - t.as_second()).max(0) as u64);
            let h = held.get(p.id()).cloned().unwrap_or_default();
            let rpo = crate::policy::rpo::rpo_secs(p.spec.rpo_secs, &p.spec.schedule.every);
            let mut st = PlanStatus {
                name: p.spec.name.clone(),
                paused: p.paused,
                every: p.spec.schedule.every.clone(),
                retention: p.spec.retention,
                next_run: p.next_run.clone(),
                last_run: last.map(summary),
                last_success: finished,
                newest_group: ok.map(|o| o.run.group.clone()),
                newest_group_age_secs: age,
                in_progress: busy.get(p.id()).map(Busy::describe),
                failure: failed.map(summary),
                targets: Vec::new(),
                origin: p.origin.as_ref().map(|o| o.site.clone()),
                rpo_secs: rpo,
                rpo_violated: false,
                last_drill: None,
                verification_failures: h.verification_failures.clone(),
            };
            if let Some(o) = &p.origin {
                // A foreign plan: its recovery point is its newest mirror group; its runs
                // are its drills.
                let newest = h.newest_group.as_ref();
                let taken = newest.and_then(|(_, c)| ts(c)).map(|t| t.as_second());
                let created = ts(&o.created).map(|t| t.as_second());
                st.newest_group = newest.map(|(g, _)| g.clone());
                st.newest_group_age_secs = taken.map(|t| (now.as_second() - t).max(0) as u64);
                st.rpo_violated =
                    crate::policy::rpo::standing(taken, created, rpo, now.as_second()).violated;
                let mut drills = h.drills.clone();
                drills.sort_by(|a, b| a.created.cmp(&b.created));
                st.last_drill = drills.last().map(drill_summary);
                st.last_run = st.last_drill.clone();
                st.last_success = drills
                    .iter()
                    .rev()
                    .find(|d| d.succeeded())
                    .and_then(|d| d.finished.clone());
                st.failure = st.last_drill.clone().filter(|d| d.step == Step::Failed);
            }
            st
        })
        .collect();
    let agents = agents
        .iter()
        .map(|a| AgentStatus {
            node: a.node.clone(),
            status: a.status.clone(),
            volumes: a.volumes.len() + a.volumes_omitted as usize,
            free_bytes: a.free_bytes,
            last_heartbeat: a.last_heartbeat.clone(),
        })
        .collect();
    Status {
        now: now.to_string(),
        plans,
        agents,
        deleted_plans_with_leftovers,
    }
}

#[utoipa::path(get, path = "/v1/status", responses((status = 200, description = "the site at a glance", body = Status)))]
/// `GET /v1/status`.
pub(super) async fn status(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> ApiResult<Json<crate::http::status::Status>> {
    auth(&s, &headers, false)?;
    let _slot = page::slot(&s).await?;
    let plans = load_plans(&s.store).await?;
    let runs = load_runs(&s.store, RUNS).await?;
    let agents = load_agents(&s.store).await?;
    let orphans = s.store.list(schema::ORPHANS).await?.len();
    let mut busy = std::collections::BTreeMap::new();
    for kv in s.store.list(schema::ACTIVE).await? {
        if let (Some(id), Ok(b)) = (
            schema::last_name(&kv.key),
            serde_json::from_slice::<Busy>(&kv.value),
        ) {
            busy.insert(id, b);
        }
    }
    let plans: Vec<PlanRecord> = plans.into_iter().map(with_next_run).collect();
    let now = jiff::Timestamp::now();
    let mut held = BTreeMap::new();
    for p in plans.iter().filter(|p| p.origin.is_some()) {
        held.insert(p.id().clone(), held_by(&s.store, p.id()).await?);
    }
    let mut st = crate::http::status::summarize(&plans, &runs, &held, &busy, &agents, orphans, now);
    let checks = crate::daemon::alarms::checks(&s.store, &plans, now).await?;
    for (p, ps) in plans.iter().zip(st.plans.iter_mut()) {
        if p.spec.targets.is_empty() {
            continue;
        }
        let held: Vec<crate::state::schema::TargetRecord> =
            crate::state::load(&s.store, &schema::targets_of(p.id())).await?;
        ps.targets = p
            .spec
            .targets
            .iter()
            .map(|t| {
                let mut ts = match held.iter().find(|h| h.site == t.site) {
                    Some(h) => TargetStatus::of(h, now),
                    None => TargetStatus::of(
                        &crate::state::schema::TargetRecord::new(t.site.clone()),
                        now,
                    ),
                };
                ts.rpo_secs = ps.rpo_secs;
                ts.rpo_violated = checks
                    .iter()
                    .any(|c| c.plan_id == *p.id() && c.site == t.site && c.standing.violated);
                ts
            })
            .collect();
    }
    Ok(Json(st))
}

/// What foreign plan `plan_id` holds: its newest mirror group, its drills, the groups that
/// failed verification.
pub(super) async fn held_by(store: &Store, plan_id: &Name) -> ApiResult<Held> {
    let groups = load_groups(store, plan_id).await?;
    let newest_group = groups.last().map(|g| (g.group.clone(), g.created.clone()));
    let mut drills: Vec<Recovery> =
        crate::state::load(store, &schema::recoveries_of(plan_id)).await?;
    drills.retain(|r| r.kind == RecoveryKind::Drill && r.is_over());
    let mut verification_failures = Vec::new();
    for kv in store.list(&schema::verified_of(plan_id)).await? {
        let v = serde_json::from_slice::<crate::state::schema::VerifiedRecord>(&kv.value);
        if let (Some(g), Ok(v)) = (schema::last_name(&kv.key), v) {
            if !v.ok {
                verification_failures.push(g);
            }
        }
    }
    Ok(Held {
        newest_group,
        drills,
        verification_failures,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machines::run::{Run, RunHooks};
    use crate::policy::model::{HookSpec, PlanSpec, ScheduleSpec};

    fn n(s: &str) -> Name {
        Name::new(s).expect("name")
    }

    fn plan(name: &str) -> PlanRecord {
        PlanRecord {
            id: Some(n(&format!("{name}.01"))),
            spec: PlanSpec {
                name: n(name),
                objects: vec![n("o")],
                schedule: ScheduleSpec {
                    every: "hourly".into(),
                    start: "2026-01-01T00:00".into(),
                    timezone: "UTC".into(),
                    end: None,
                },
                retention: 3,
                enabled: true,
                hooks: HookSpec::default(),
                targets: Vec::new(),
                rpo_secs: None,
            },
            paused: false,
            next_run: None,
            origin: None,
        }
    }

    /// A run of `plan` started at minute `at` and ended in `step` a minute later.
    fn run(plan: &str, id: &str, at: i64, step: Step) -> RunRecord {
        let t0 = Timestamp::from_second(1_800_000_000 + at * 60).expect("ts");
        let mut vols = BTreeMap::new();
        vols.insert(n("node1"), vec![n("v")]);
        let mut r = Run::new(
            n(id),
            n(plan),
            n(&format!("g-{id}")),
            1,
            RunHooks::default(),
            vols,
            t0,
        )
        .expect("run");
        if step.is_final() {
            r.finished = Some((t0 + jiff::SignedDuration::from_secs(60)).to_string());
        }
        if step == Step::Failed {
            r.error = Some("agent node1 is down".into());
        }
        r.step = step;
        RunRecord {
            plan_id: Some(n(&format!("{plan}.01"))),
            run: r,
            trigger: "schedule".into(),
            slot: None,
            created: t0.to_string(),
            objects: Vec::new(),
        }
    }

    #[test]
    fn plans_at_a_glance() {
        let now = Timestamp::from_second(1_800_000_000 + 100 * 60).expect("ts");
        let plans = [plan("ok"), plan("broken"), plan("recovered"), plan("new")];
        let runs = [
            run("ok", "r1", 10, Step::Done),
            run("ok", "r2", 40, Step::Done),
            run("ok", "r3", 99, Step::Snapshot),
            run("broken", "r4", 10, Step::Done),
            run("broken", "r5", 50, Step::Failed),
            run("recovered", "r6", 10, Step::Failed),
            run("recovered", "r7", 20, Step::Done),
            // A run of a deleted plan's life under the same name is not this plan's.
            RunRecord {
                plan_id: Some(n("new.99")),
                ..run("new", "r8", 30, Step::Done)
            },
        ];
        let mut busy = BTreeMap::new();
        busy.insert(n("ok.01"), Busy::Run(n("r3")));
        let s = summarize(&plans, &runs, &BTreeMap::new(), &busy, &[], 1, now);
        let ok = &s.plans[0];
        assert_eq!(ok.last_run.as_ref().map(|r| r.id.as_str()), Some("r3"));
        assert_eq!(ok.newest_group.as_ref().map(|g| g.as_str()), Some("g-r2"));
        assert_eq!(
            ok.newest_group_age_secs,
            Some(59 * 60),
            "finished at minute 41"
        );
        assert_eq!(ok.in_progress.as_deref(), Some("run r3 is in progress"));
        assert!(ok.failure.is_none());
        let broken = &s.plans[1];
        assert_eq!(broken.failure.as_ref().map(|r| r.id.as_str()), Some("r5"));
        assert_eq!(
            broken.failure.as_ref().and_then(|r| r.error.as_deref()),
            Some("agent node1 is down")
        );
        assert_eq!(
            broken.newest_group.as_ref().map(|g| g.as_str()),
            Some("g-r4")
        );
        assert!(s.plans[2].failure.is_none(), "a success since the failure");
        let new = &s.plans[3];
        assert!(new.last_run.is_none() && new.newest_group_age_secs.is_none());
        assert_eq!(s.deleted_plans_with_leftovers, 1);
    }

    /// A foreign plan's recovery point is its newest mirror group, checked against the
    /// plan's RPO; its drills are its runs, a failed one its failure.
    #[test]
    fn foreign_plans_at_a_glance() {
        use crate::machines::recovery::{Phase, RecoverySpec};
        let now = Timestamp::from_second(1_800_000_000 + 100 * 60).expect("ts");
        let foreign = |name: &str| PlanRecord {
            origin: Some(crate::state::schema::Origin {
                site: n("site-a"),
                plan: n("web"),
                plan_id: n("web.01"),
                mirrors: Vec::new(),
                drill: None,
                created: Timestamp::from_second(1_800_000_000)
                    .expect("ts")
                    .to_string(),
            }),
            paused: true,
            ..plan(name)
        };
        let drill = |id: &str, at: i64, ok: bool| {
            let t0 = Timestamp::from_second(1_800_000_000 + at * 60).expect("ts");
            let spec = RecoverySpec {
                id: n(id),
                kind: RecoveryKind::Drill,
                plan: n("site-a.web"),
                plan_id: n("site-a.web.01"),
                group: n("g"),
                generation: 1,
                trigger: "schedule".into(),
            };
            let mut r = Recovery::new(spec, Vec::new(), Vec::new(), t0);
            r.phase = if ok { Phase::Done } else { Phase::Failed };
            r.error = (!ok).then(|| "check failed: web: exit 1".to_string());
            r.finished = Some((t0 + jiff::SignedDuration::from_secs(30)).to_string());
            r
        };
        let taken = |min: i64| Timestamp::from_second(1_800_000_000 + min * 60).expect("ts");
        let mut held = BTreeMap::new();
        // Hourly, RPO an hour plus a quarter: 50 minutes old holds, 80 does not.
        held.insert(
            n("site-a.web.01"),
            Held {
                newest_group: Some((n("g-new"), taken(50).to_string())),
                drills: vec![drill("dr2", 60, false), drill("dr1", 30, true)],
                verification_failures: vec![n("g-old")],
            },
        );
        held.insert(
            n("site-a.late.01"),
            Held {
                newest_group: Some((n("g"), taken(20).to_string())),
                ..Held::default()
            },
        );
        let plans = [foreign("site-a.web"), foreign("site-a.late")];
        let s = summarize(&plans, &[], &held, &BTreeMap::new(), &[], 0, now);
        let web = &s.plans[0];
        assert_eq!(web.origin.as_ref().map(|o| o.as_str()), Some("site-a"));
        assert_eq!(web.newest_group.as_ref().map(|g| g.as_str()), Some("g-new"));
        assert_eq!(web.newest_group_age_secs, Some(50 * 60));
        assert!(!web.rpo_violated);
        assert_eq!(web.last_run.as_ref().map(|r| r.id.as_str()), Some("dr2"));
        let f = web
            .failure
            .as_ref()
            .expect("the failed drill is the failure");
        assert_eq!(f.step, Step::Failed);
        assert!(f.error.as_deref().unwrap_or("").contains("check failed"));
        assert_eq!(web.verification_failures, [n("g-old")]);
        let late = &s.plans[1];
        assert!(late.rpo_violated, "80 minutes old against an hour's RPO");
        assert!(late.last_drill.is_none() && late.failure.is_none());
    }
}
