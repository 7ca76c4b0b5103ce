//! `/v1/plans/NAME/rollbacks`: rolling a plan's objects back to a kept group.

use super::*;

/// What a rollback request says.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RollbackRequest {
    /// The kept group to roll back to.
    group: Name,
    /// Only these objects of the plan (default: all).
    #[serde(default)]
    objects: Option<Vec<Name>>,
}

#[utoipa::path(get, path = "/v1/plans/{name}/rollbacks", params(("name" = Name, Path, description = "the plan's name"), PageQuery), responses((status = 200, description = "a page of the plan's rollbacks, oldest first", body = Vec<GroupJob>, headers(("x-next-after" = String, description = "the cursor of the next page, while more follow")))))]
pub(super) async fn plan_rollbacks(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    raw: RawQuery,
) -> ApiResult<Paged<GroupJob>> {
    auth(&s, &headers, false)?;
    let name = name_param("plan", &name)?;
    let page = Page::new(&s, raw).await?;
    let (plan, _) = read_plan(&s.store, &name).await?;
    let jobs: Vec<GroupJob> =
        crate::state::load(&s.store, &schema::rollbacks_of(plan.id())).await?;
    page::history(jobs, page, |j| page::history_key(&j.created, &j.id))
}

/// A rollback with, while it runs, the agents' progress.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct JobDetail {
    #[serde(flatten)]
    job: GroupJob,
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<Progress>,
}

#[utoipa::path(get, path = "/v1/plans/{name}/rollbacks/{id}", params(("name" = Name, Path, description = "the plan's name"), ("id" = Name, Path, description = "the rollback's id")), responses((status = 200, description = "the rollback, with its progress while it runs", body = JobDetail)))]
pub(super) async fn get_rollback(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<Json<JobDetail>> {
    auth(&s, &headers, false)?;
    let name = name_param("plan", &name)?;
    let id = name_param("rollback", &id)?;
    let (plan, _) = read_plan(&s.store, &name).await?;
    let job: GroupJob = record(&s.store, &schema::rollback_key(plan.id(), &id))
        .await?
        .ok_or_else(|| ApiError::not_found(&format!("rollback of plan {name}"), id.as_str()))?;
    let progress = if job.is_over() {
        None
    } else {
        progress_of(&s.links, &format!("{}.", job.id))
    };
    Ok(Json(JobDetail { job, progress }))
}

#[utoipa::path(post, path = "/v1/plans/{name}/rollbacks", params(("name" = Name, Path, description = "the plan's name")), request_body = RollbackRequest, responses((status = 202, description = "the rollback, started; only volumes the plan protects now are touched", body = GroupJob)))]
/// Rolls the plan's objects (or some) back to one of its kept groups. Only volumes the plan
/// protects now are touched, whatever else the group holds. Refused while a run, a rollback
/// or a removal of the plan is in progress.
pub(super) async fn start_rollback(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    raw: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<(StatusCode, Json<GroupJob>)> {
    auth(&s, &headers, true)?;
    let name = name_param("plan", &name)?;
    let req: RollbackRequest = parse(&body(raw)?)?;
    let (plan, _) = read_plan(&s.store, &name).await?;
    refuse_foreign(&plan, "roll it back")?;
    refuse_busy(&s.store, &plan, "roll back").await?;
    let plan_id = plan.id().clone();
    let group: GroupRecord = record(&s.store, &schema::group_key(&plan_id, &req.group))
        .await?
        .ok_or_else(|| {
            ApiError::bad(format!(
                "group: plan {name} keeps no group named {} (ferry plans groups {name} lists them)",
                req.group
            ))
        })?;
    // The volumes the plan protects now, of the named objects or of all.
    let objects = load_objects(&s.store).await?;
    let names: Vec<Name> = match &req.objects {
        None => plan.spec.objects.clone(),
        Some(names) => {
            for (i, o) in names.iter().enumerate() {
                if !plan.spec.objects.contains(o) {
                    return Err(ApiError::bad(format!(
                        "objects[{i}]: {o} is not protected by plan {name}"
                    )));
                }
            }
            names.clone()
        }
    };
    let protected: std::collections::BTreeSet<crate::policy::model::VolumeRef> = names
        .iter()
        .filter_map(|n| objects.iter().find(|o| &o.name == n))
        .flat_map(|o| o.protected_volumes().into_iter().cloned())
        .collect();
    let mut volumes: std::collections::BTreeMap<Name, Vec<Name>> = Default::default();
    for (node, snap) in &group.snapshots {
        let v = crate::policy::model::VolumeRef {
            node: node.clone(),
            volume: snap.volume.clone(),
        };
        if protected.contains(&v) {
            volumes
                .entry(node.clone())
                .or_default()
                .push(snap.volume.clone());
        }
    }
    if volumes.is_empty() {
        return Err(ApiError::bad(format!(
            "group {}: none of its snapshots is of a volume plan {name} protects now",
            req.group
        )));
    }
    let now = jiff::Timestamp::now();
    let term = s.leading()?;
    let id = Name::new(&format!("rb{}", now.as_millisecond()))
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let spec = crate::machines::group_job::JobSpec {
        id: id.clone(),
        plan: name.clone(),
        plan_id: plan_id.clone(),
        group: req.group.clone(),
        action: crate::machines::group_job::JobAction::Rollback,
        generation: term.generation,
    };
    let rb = GroupJob::new(spec, volumes, now.to_string());
    let key = schema::rollback_key(&plan_id, &id);
    let active = schema::active_key(&plan_id);
    let done = s
        .store
        .txn(Txn {
            when: vec![
                Compare::Absent(key.clone()),
                Compare::Absent(active.clone()),
                term.fence(),
            ],
            then: vec![
                Op::Put(key, encode(&rb)?),
                Op::Put(active, Busy::Rollback(id.clone()).encode()),
            ],
        })
        .await?;
    if !done.succeeded {
        refuse_busy(&s.store, &plan, "roll back").await?;
        return Err(ApiError::conflict(
            "a rollback was started at the same moment; try again",
        ));
    }
    tracing::info!(plan = %name, group = %req.group, rollback = %id, "rollback started");
    Ok((StatusCode::ACCEPTED, Json(rb)))
}
