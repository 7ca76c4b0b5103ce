//! `/v1/plans/NAME/run`, `/runs`, `/runs/ID`, `/v1/runs`: runs, their reports and progress.

use super::*;
use crate::machines::run::Step;
use crate::state::schema::RunRecord;
use jiff::Timestamp;

#[utoipa::path(get, path = "/v1/runs", params(PageQuery), responses((status = 200, description = "a page of every plan's runs, by plan id, then run id (cursors `PLAN-ID/RUN-ID`)", body = Vec<RunRecord>, headers(("x-next-after" = String, description = "the cursor of the next page, while more follow")))))]
pub(super) async fn all_runs(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    raw: RawQuery,
) -> ApiResult<Paged<crate::state::schema::RunRecord>> {
    auth(&s, &headers, false)?;
    let page = Page::new(&s, raw).await?;
    page::stored(&s.store, RUNS, page).await
}

#[utoipa::path(get, path = "/v1/plans/{name}/runs", params(("name" = Name, Path, description = "the plan's name"), PageQuery), responses((status = 200, description = "a page of the plan's runs, oldest first", body = Vec<RunRecord>, headers(("x-next-after" = String, description = "the cursor of the next page, while more follow")))))]
pub(super) async fn plan_runs(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    raw: RawQuery,
) -> ApiResult<Paged<crate::state::schema::RunRecord>> {
    auth(&s, &headers, false)?;
    let name = name_param("plan", &name)?;
    let page = Page::new(&s, raw).await?;
    let (plan, _) = read_plan(&s.store, &name).await?;
    let runs = load_runs(&s.store, &schema::runs_of(plan.id())).await?;
    page::history(runs, page, |r| page::history_key(&r.created, &r.run.id))
}

/// A run with its report per object and volume.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct RunDetail {
    #[serde(flatten)]
    record: crate::state::schema::RunRecord,
    report: RunReport,
    /// While it runs: bytes the agents' current tasks have done of what they expect.
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<Progress>,
}

#[utoipa::path(get, path = "/v1/plans/{name}/runs/{run}", params(("name" = Name, Path, description = "the plan's name"), ("run" = Name, Path, description = "the run's id")), responses((status = 200, description = "the run per object and volume, with its progress while it runs", body = RunDetail)))]
pub(super) async fn get_run(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((name, run)): Path<(String, String)>,
) -> ApiResult<Json<RunDetail>> {
    auth(&s, &headers, false)?;
    let name = name_param("plan", &name)?;
    let run = name_param("run", &run)?;
    let (plan, _) = read_plan(&s.store, &name).await?;
    let record: crate::state::schema::RunRecord =
        record(&s.store, &schema::run_key(plan.id(), &run))
            .await?
            .ok_or_else(|| ApiError::not_found(&format!("run of plan {name}"), run.as_str()))?;
    let report = record.report();
    let progress = if record.run.step.is_final() {
        None
    } else {
        progress_of(&s.links, &format!("{}.", record.run.id))
    };
    Ok(Json(RunDetail {
        record,
        report,
        progress,
    }))
}

#[utoipa::path(post, path = "/v1/plans/{name}/run", params(("name" = Name, Path, description = "the plan's name")), responses((status = 202, description = "the run, started (409 while a run, rollback or removal of the plan is in progress)", body = RunRecord)))]
/// Starts a run of the plan now (paused or not), outside its schedule. Refused (409) while
/// a run, a rollback or a removal of the plan is in progress.
pub(super) async fn run_now(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<crate::state::schema::RunRecord>)> {
    auth(&s, &headers, true)?;
    let name = name_param("plan", &name)?;
    let (plan, _) = read_plan(&s.store, &name).await?;
    refuse_foreign(&plan, "run it")?;
    refuse_busy(&s.store, &plan, "start another").await?;
    let term = s.leading()?;
    let objects = load_objects(&s.store).await?;
    let rec = crate::daemon::scheduler::new_run(
        &plan,
        &objects,
        None,
        term.generation,
        jiff::Timestamp::now(),
    );
    if !crate::daemon::scheduler::store_run(&s.store, &rec, &term).await? {
        // Lost a race with another start: say which.
        refuse_busy(&s.store, &plan, "start another").await?;
        return Err(ApiError::conflict(format!(
            "a run of plan {name} was started at the same moment; see ferry plans runs {name}"
        )));
    }
    tracing::info!(plan = %name, run = %rec.run.id, "run started by request");
    Ok((StatusCode::ACCEPTED, Json(rec)))
}

/// A run seen per object and volume, for the API and the CLI.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RunReport {
    pub objects: Vec<ObjectReport>,
    /// Bytes the snapshots' manifests read, all volumes together.
    pub bytes_read: u64,
    /// Seconds from the run's record to its end (so far, if it is not over: `None`).
    pub duration_secs: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ObjectReport {
    pub name: Name,
    /// `pending`, `done`, `failed` or `undone` (taken, then deleted because the run failed).
    pub status: &'static str,
    pub volumes: Vec<VolumeRunReport>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct VolumeRunReport {
    pub node: Name,
    pub volume: Name,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<ferry_wire::task::SnapshotRecord>,
    /// When its node's part of the snapshot step ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RunRecord {
    /// The run per object and volume (pure: from the record alone).
    pub fn report(&self) -> RunReport {
        use crate::machines::run::NodeState;
        let failed_run = self.run.step == Step::Failed || self.run.step == Step::Compensate;
        let mut bytes_read = 0;
        let objects = self
            .objects
            .iter()
            .map(|o| {
                let volumes: Vec<VolumeRunReport> = o
                    .volumes
                    .iter()
                    .map(|v| {
                        let part = self.run.nodes.get(&v.node);
                        let (status, snapshot, error) = match part.map(|p| &p.state) {
                            None => ("failed", None, self.run.error.clone()),
                            Some(NodeState::Pending | NodeState::Prepared)
                                if self.run.step.is_final() =>
                            {
                                ("failed", None, self.run.error.clone())
                            }
                            Some(NodeState::Pending | NodeState::Prepared) => {
                                ("pending", None, None)
                            }
                            Some(NodeState::Failed { message }) => {
                                ("failed", None, Some(message.clone()))
                            }
                            Some(NodeState::Done { snapshots }) => {
                                let s = snapshots.iter().find(|s| s.volume == v.volume).cloned();
                                bytes_read += s.as_ref().map_or(0, |s| s.bytes_read);
                                (if failed_run { "undone" } else { "done" }, s, None)
                            }
                        };
                        VolumeRunReport {
                            node: v.node.clone(),
                            volume: v.volume.clone(),
                            status,
                            snapshot,
                            finished: part.and_then(|p| p.finished.clone()),
                            error,
                        }
                    })
                    .collect();
                let any = |s: &str| volumes.iter().any(|v| v.status == s);
                let status = if any("failed") {
                    "failed"
                } else if any("pending") {
                    "pending"
                } else if any("undone") {
                    "undone"
                } else {
                    "done"
                };
                ObjectReport {
                    name: o.name.clone(),
                    status,
                    volumes,
                }
            })
            .collect();
        let secs = |t: &str| t.parse::<Timestamp>().ok().map(|t| t.as_millisecond());
        let duration_secs = match (
            secs(&self.created),
            self.run.finished.as_deref().and_then(secs),
        ) {
            (Some(a), Some(b)) => Some((b - a).max(0) as f64 / 1000.0),
            _ => None,
        };
        RunReport {
            objects,
            bytes_read,
            duration_secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machines::run::{Run, RunHooks, Step};
    use crate::state::schema::ObjectVolumes;
    use std::collections::BTreeMap;

    #[test]
    fn a_run_is_reported_per_object_and_volume() {
        use crate::policy::model::VolumeRef;
        use ferry_wire::task::{SnapshotRecord, TaskResult, TaskState};
        let n = |s: &str| Name::new(s).expect("name");
        let t0: Timestamp = "2026-11-24T02:30:00Z".parse().expect("ts");
        let mut vols = BTreeMap::new();
        vols.insert(n("n1"), vec![n("a"), n("b")]);
        vols.insert(n("n2"), vec![n("c")]);
        let run = Run::new(n("r1"), n("p"), n("g"), 1, RunHooks::default(), vols, t0).expect("run");
        let vr = |node: &str, v: &str| VolumeRef {
            node: n(node),
            volume: n(v),
        };
        let mut rec = RunRecord {
            plan_id: None,
            run,
            trigger: "manual".into(),
            slot: None,
            created: t0.to_string(),
            objects: vec![
                ObjectVolumes {
                    name: n("vm"),
                    volumes: vec![vr("n1", "a"), vr("n1", "b")],
                },
                ObjectVolumes {
                    name: n("lun"),
                    volumes: vec![vr("n2", "c")],
                },
            ],
        };
        let r = rec.report();
        assert_eq!(
            r.objects.iter().map(|o| o.status).collect::<Vec<_>>(),
            ["pending", "pending"]
        );
        assert_eq!(r.duration_secs, None);
        let snap = |v: &str, read: u64| SnapshotRecord {
            volume: n(v),
            snapshot: n("g"),
            size: 4096,
            root: "00".into(),
            bytes_read: read,
            manifest_ms: 3,
        };
        let t1 = t0 + jiff::SignedDuration::from_secs(2);
        rec.run
            .on_report(
                &n("n1"),
                &n("r1.n1.snap"),
                &TaskState::Done {
                    result: TaskResult::SnapshotGroup {
                        snapshots: vec![snap("a", 100), snap("b", 20)],
                    },
                },
                t1,
            )
            .expect("report");
        let r = rec.report();
        assert_eq!(r.objects[0].status, "done");
        assert_eq!(
            r.objects[0].volumes[1]
                .snapshot
                .as_ref()
                .map(|s| s.bytes_read),
            Some(20)
        );
        assert_eq!(r.objects[0].volumes[0].finished, Some(t1.to_string()));
        assert_eq!((r.objects[1].status, r.bytes_read), ("pending", 120));
        // n2 fails: its object failed, n1's snapshots are undone.
        rec.run
            .on_report(
                &n("n2"),
                &n("r1.n2.snap"),
                &TaskState::Failed {
                    kind: "no_space".into(),
                    message: "disk full".into(),
                },
                t1,
            )
            .expect("report");
        let r = rec.report();
        assert_eq!(
            r.objects.iter().map(|o| o.status).collect::<Vec<_>>(),
            ["undone", "failed"]
        );
        assert_eq!(r.objects[1].volumes[0].error.as_deref(), Some("disk full"));
        for v in ["a", "b"] {
            rec.run
                .on_report(
                    &n("n1"),
                    &n(&format!("r1.n1.undo.{v}")),
                    &TaskState::Done {
                        result: TaskResult::SnapshotDeleted,
                    },
                    t1 + jiff::SignedDuration::from_secs(1),
                )
                .expect("report");
        }
        assert_eq!(rec.run.step, Step::Failed);
        assert_eq!(rec.report().duration_secs, Some(3.0));
    }
}
