//! `/v1/plans`: plans, their pause and resume, and their deletion.

use super::*;

/// Validates a plan against the current inventory.
pub(super) async fn checked_plan(
    store: &Store,
    raw: &Bytes,
) -> ApiResult<(PlanSpec, crate::policy::schedule::Schedule)> {
    let spec: PlanSpec = parse(raw)?;
    let objects = load_objects(store).await?;
    let schedule = spec
        .validate(|n| objects.iter().find(|o| &o.name == n))
        .map_err(|e| ApiError::bad(e.to_string()))?;
    check_targets(store, &spec).await?;
    Ok((spec, schedule))
}

#[utoipa::path(get, path = "/v1/plans", params(PageQuery), responses((status = 200, description = "a page of the plans, by name, with their next runs", body = Vec<PlanRecord>, headers(("x-next-after" = String, description = "the cursor of the next page, while more follow")))))]
pub(super) async fn list_plans(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    raw: RawQuery,
) -> ApiResult<Paged<PlanRecord>> {
    auth(&s, &headers, false)?;
    let page = Page::new(&s, raw).await?;
    let mut p = page::stored(&s.store, PLANS, page).await?;
    let plans = p.take().into_iter().map(with_next_run).collect();
    Ok(p.with(plans))
}

#[utoipa::path(get, path = "/v1/plans/{name}", params(("name" = Name, Path, description = "the plan's name")), responses((status = 200, description = "the plan, with its next run", body = PlanRecord)))]
pub(super) async fn get_plan(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<PlanRecord>> {
    auth(&s, &headers, false)?;
    let name = name_param("plan", &name)?;
    Ok(Json(with_next_run(read_plan(&s.store, &name).await?.0)))
}

#[utoipa::path(post, path = "/v1/plans", request_body = PlanSpec, responses((status = 201, description = "created", body = PlanRecord)))]
pub(super) async fn create_plan(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    raw: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<(StatusCode, Json<PlanRecord>)> {
    auth(&s, &headers, true)?;
    let (spec, _) = checked_plan(&s.store, &body(raw)?).await?;
    let key = schema::plan_key(&spec.name);
    let id = schema::new_plan_id(&spec.name);
    let rec = PlanRecord {
        id: Some(id.clone()),
        paused: !spec.enabled,
        spec,
        next_run: None,
        origin: None,
    };
    let done = s
        .store
        .txn(Txn {
            when: vec![
                Compare::Absent(key.clone()),
                Compare::Absent(schema::orphan_key(&id)),
            ],
            then: vec![Op::Put(key, encode(&rec)?)],
        })
        .await?;
    if !done.succeeded {
        return Err(ApiError::conflict(format!(
            "plan {} exists; change it with PUT /v1/plans/{} (ferry plans update FILE)",
            rec.spec.name, rec.spec.name
        )));
    }
    tracing::info!(plan = %rec.spec.name, %id, "plan created");
    Ok((StatusCode::CREATED, Json(with_next_run(rec))))
}

#[utoipa::path(put, path = "/v1/plans/{name}", params(("name" = Name, Path, description = "the plan's name")), request_body = PlanSpec, responses((status = 200, description = "replaced (paused or not as before)", body = PlanRecord)))]
pub(super) async fn put_plan(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    raw: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Json<PlanRecord>> {
    auth(&s, &headers, true)?;
    let name = name_param("plan", &name)?;
    let (spec, _) = checked_plan(&s.store, &body(raw)?).await?;
    if spec.name != name {
        return Err(ApiError::bad(format!(
            "name: the body names {}, the path {name}",
            spec.name
        )));
    }
    let (cur, rev) = read_plan(&s.store, &name).await?;
    refuse_foreign(&cur, "change it")?;
    let rec = PlanRecord {
        id: cur.id,
        paused: cur.paused,
        spec,
        next_run: None,
        origin: None,
    };
    update_plan(&s.store, &name, rev, &rec).await?;
    Ok(Json(with_next_run(rec)))
}

pub(super) async fn update_plan(
    store: &Store,
    name: &Name,
    rev: i64,
    rec: &PlanRecord,
) -> ApiResult<()> {
    let key = schema::plan_key(name);
    let done = store
        .txn(Txn {
            when: vec![Compare::ModRevision(key.clone(), rev)],
            then: vec![Op::Put(key, encode(rec)?)],
        })
        .await?;
    if !done.succeeded {
        return Err(ApiError::conflict(format!(
            "plan {name} changed meanwhile; read it again"
        )));
    }
    Ok(())
}

pub(super) async fn set_paused(
    s: &ApiState,
    headers: &HeaderMap,
    name: &str,
    paused: bool,
) -> ApiResult<Json<PlanRecord>> {
    auth(s, headers, true)?;
    let name = name_param("plan", name)?;
    let (mut rec, rev) = read_plan(&s.store, &name).await?;
    refuse_foreign(&rec, if paused { "pause it" } else { "resume it" })?;
    rec.paused = paused;
    update_plan(&s.store, &name, rev, &rec).await?;
    tracing::info!(plan = %name, paused, "plan paused or resumed");
    Ok(Json(with_next_run(rec)))
}

#[utoipa::path(post, path = "/v1/plans/{name}/pause", params(("name" = Name, Path, description = "the plan's name")), responses((status = 200, description = "paused", body = PlanRecord)))]
pub(super) async fn pause_plan(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<PlanRecord>> {
    set_paused(&s, &headers, &name, true).await
}

#[utoipa::path(post, path = "/v1/plans/{name}/resume", params(("name" = Name, Path, description = "the plan's name")), responses((status = 200, description = "resumed", body = PlanRecord)))]
pub(super) async fn resume_plan(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<PlanRecord>> {
    set_paused(&s, &headers, &name, false).await
}

/// `?groups=keep|delete`: what becomes of a deleted plan's groups.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct DeletePlanQuery {
    #[serde(default)]
    groups: Option<GroupsFate>,
    /// A foreign plan (a paired site's mirror here) is deleted only when released.
    #[serde(default)]
    release: bool,
}

#[utoipa::path(delete, path = "/v1/plans/{name}", params(("name" = Name, Path, description = "the plan's name"), DeletePlanQuery), responses((status = 204, description = "deleted; one that keeps groups needs groups=keep or groups=delete")))]
/// Deletes a plan. One that keeps snapshot groups is refused unless the request says what
/// becomes of them: `groups=keep` keeps them as orphaned groups (listed under
/// `/v1/orphans`, deleted there), `groups=delete` deletes them, snapshots included. Its
/// run history goes in either case.
pub(super) async fn delete_plan(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    q: axum::extract::RawQuery,
) -> ApiResult<StatusCode> {
    auth(&s, &headers, true)?;
    let name = name_param("plan", &name)?;
    let q: DeletePlanQuery = query(q)?;
    let (plan, rev) = read_plan(&s.store, &name).await?;
    if !q.release {
        refuse_foreign(&plan, "delete it")?;
    }
    refuse_busy(&s.store, &plan, "delete it").await?;
    let id = plan.id().clone();
    let groups = s.store.list(&schema::groups_of(&id)).await?.len();
    let fate = match (groups, q.groups) {
        (0, f) => f.unwrap_or(GroupsFate::Delete),
        (_, Some(f)) => f,
        (n, None) => {
            return Err(ApiError::conflict(format!(
                "plan {name} keeps {n} snapshot group{}; say what becomes of them: \
                 groups=keep keeps them as orphaned groups (listed by GET /v1/orphans, deleted \
                 there later), groups=delete deletes them and their snapshots now \
                 (ferry plans delete {name} --keep-groups | --delete-groups)",
                if n == 1 { "" } else { "s" }
            )))
        }
    };
    let marker = OrphanRecord {
        plan: name.clone(),
        plan_id: id.clone(),
        deleted: jiff::Timestamp::now().to_string(),
        fate,
    };
    let key = schema::plan_key(&name);
    let done = s
        .store
        .txn(Txn {
            when: vec![
                Compare::ModRevision(key.clone(), rev),
                Compare::Absent(schema::active_key(&id)),
            ],
            then: vec![
                Op::Delete(key),
                Op::Put(schema::orphan_key(&id), encode(&marker)?),
            ],
        })
        .await?;
    if !done.succeeded {
        return Err(ApiError::conflict(format!(
            "plan {name} changed or started something meanwhile; try again"
        )));
    }
    tracing::info!(plan = %name, plan_id = %id, groups, ?fate, "plan deleted");
    Ok(StatusCode::NO_CONTENT)
}
