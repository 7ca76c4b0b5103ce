//! Recovery from kept groups: `/v1/plans/NAME/rebuilds` (new objects from a foreign plan's
//! mirror group here), `/v1/plans/NAME/drills` (a rebuild into scratch volumes, verified,
//! checked and deleted) and `/v1/plans/NAME/verifications` (a group re-read against its
//! manifests; `POST /v1/plans/NAME/groups/GROUP/verify` starts one).

use std::collections::BTreeMap;

use super::*;
use crate::daemon::recoveries::{self, Ask, StartError};
use crate::machines::recovery::{CheckSpec, Recovery, RecoveryKind};
use crate::policy::model::{check_drill_check, DEFAULT_CHECK_SECS};
use crate::policy::recovery::Naming;

/// What a rebuild request says.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RebuildRequest {
    /// The kept mirror group to rebuild from.
    group: Name,
    /// Only these of its objects (default: all).
    #[serde(default)]
    #[schema(max_items = 1024)]
    objects: Option<Vec<Name>>,
    /// Appended to every new object's and volume's name not in `names` (default none: the
    /// source's names).
    #[serde(default)]
    #[schema(max_length = 64, pattern = "^[A-Za-z0-9._-]*$", example = "-dr")]
    suffix: Option<String>,
    /// New names: an object's name, or a source volume's `NODE/VOLUME`, to the name it
    /// gets here (at most 4096).
    #[serde(default)]
    names: Option<BTreeMap<String, String>>,
}

/// What a drill request says (all optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DrillRequest {
    /// The group to drill (default: the newest).
    #[serde(default)]
    group: Option<Name>,
    /// A check to run per object instead of the plan's (this site's own, so it runs).
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 4096,
        example = "fsck -n \"$FERRY_VOLUME\""
    )]
    check: Option<String>,
    /// Seconds each check may run (default 600).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 21600)]
    timeout_secs: Option<u64>,
}

/// A recovery with, while it runs, the agents' progress.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct RecoveryDetail {
    #[serde(flatten)]
    recovery: Recovery,
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<Progress>,
}

fn refused(e: StartError) -> ApiError {
    match e {
        StartError::Invalid(f) => ApiError::bad(f.to_string()),
        StartError::Conflict(m) => ApiError::conflict(m),
        StartError::Store(e) => e.into(),
    }
}

/// Starts a recovery of plan `name` from group `group`.
async fn begin(
    s: &ApiState,
    name: &Name,
    group: Option<Name>,
    ask: impl FnOnce(Name) -> Ask,
) -> ApiResult<(StatusCode, Json<Recovery>)> {
    let term = s.leading()?;
    let (plan, _) = read_plan(&s.store, name).await?;
    let group = match group {
        Some(g) => record::<GroupRecord>(&s.store, &schema::group_key(plan.id(), &g))
            .await?
            .ok_or_else(|| {
                ApiError::bad(format!(
                    "group: plan {name} keeps no group named {g} (ferry plans groups {name} lists them)"
                ))
            })?,
        None => recoveries::newest_group(&s.store, plan.id())
            .await?
            .ok_or_else(|| ApiError::conflict(format!("plan {name} keeps no group yet")))?,
    };
    let ask = ask(group.group.clone());
    let cfg = s.recovery.clone();
    let r = recoveries::start(
        &s.store,
        &term,
        &cfg,
        &plan,
        &group,
        ask,
        Default::default(),
    )
    .await
    .map_err(refused)?;
    Ok((StatusCode::ACCEPTED, Json(r)))
}

#[utoipa::path(post, path = "/v1/plans/{name}/rebuilds", params(("name" = Name, Path, description = "a foreign plan's name (SITE.PLAN)")), request_body = RebuildRequest, responses((status = 202, description = "the rebuild, started: new writable objects from the mirror group, made with nothing from the source site; undone if a step fails", body = Recovery)))]
/// Rebuilds a foreign plan's objects here from one of its mirror groups: new writable
/// volumes cloned from the mirror snapshots, and the LUN, NFS file, volume and VM records
/// with this site's names (`suffix`, `names`). Needs nothing of the source site. A name
/// this site has already is a 409 before anything is made; a step that fails undoes what
/// the rebuild made.
pub(super) async fn start_rebuild(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    raw: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<(StatusCode, Json<Recovery>)> {
    auth(&s, &headers, true)?;
    let name = name_param("plan", &name)?;
    let req: RebuildRequest = parse(&body(raw)?)?;
    let suffix = req.suffix.unwrap_or_default();
    if suffix.len() > 64 {
        return Err(ApiError::bad("suffix: at most 64 bytes"));
    }
    let names = req.names.unwrap_or_default();
    if names.len() > 4096 {
        return Err(ApiError::bad("names: at most 4096 entries"));
    }
    if req.objects.as_ref().is_some_and(|o| o.len() > 1024) {
        return Err(ApiError::bad("objects: at most 1024"));
    }
    let objects = req.objects;
    begin(&s, &name, Some(req.group), |group| Ask {
        kind: RecoveryKind::Rebuild,
        group,
        objects,
        naming: Naming { suffix, names },
        check: None,
        from_site: false,
        trigger: "manual",
    })
    .await
}

#[utoipa::path(post, path = "/v1/plans/{name}/drills", params(("name" = Name, Path, description = "a foreign plan's name (SITE.PLAN)")), request_body = DrillRequest, responses((status = 202, description = "the drill, started", body = Recovery)))]
/// Runs a recovery drill now: the group (default the newest) rebuilt into scratch volumes,
/// each re-read against the manifest (its root must be the source's), a check per object
/// (this request's, else the plan's if this site runs that site's checks), the scratch
/// deleted. A failed drill is a failed run of the foreign plan in status and metrics.
pub(super) async fn start_drill(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    raw: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<(StatusCode, Json<Recovery>)> {
    auth(&s, &headers, true)?;
    let name = name_param("plan", &name)?;
    let raw = body(raw)?;
    let req: DrillRequest = if raw.is_empty() {
        DrillRequest::default()
    } else {
        parse(&raw)?
    };
    check_drill_check("drill", req.check.as_deref(), req.timeout_secs)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let (plan, _) = read_plan(&s.store, &name).await?;
    let planned = plan.origin.as_ref().and_then(|o| o.drill.clone());
    let timeout = req
        .timeout_secs
        .or(planned.as_ref().and_then(|d| d.timeout_secs))
        .unwrap_or(DEFAULT_CHECK_SECS);
    let (check, from_site) = match (req.check, planned.and_then(|d| d.check)) {
        (Some(c), _) => (Some(c), false),
        (None, Some(c)) => (Some(c), true),
        (None, None) => (None, false),
    };
    begin(&s, &name, req.group, |group| Ask {
        kind: RecoveryKind::Drill,
        group,
        objects: None,
        naming: Naming::default(),
        check: check.map(|command| CheckSpec {
            command,
            timeout_secs: timeout,
        }),
        from_site,
        trigger: "manual",
    })
    .await
}

#[utoipa::path(post, path = "/v1/plans/{name}/groups/{group}/verify", params(("name" = Name, Path, description = "the plan's name"), ("group" = Name, Path, description = "the group's name")), responses((status = 202, description = "the verification, started: every snapshot of the group re-read against its manifest", body = Recovery)))]
/// Verifies a kept group now: every snapshot re-read against its manifest on its agent, at
/// the configured rate, pausing while transfers run.
pub(super) async fn start_verify(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((name, group)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<Recovery>)> {
    auth(&s, &headers, true)?;
    let name = name_param("plan", &name)?;
    let group = name_param("group", &group)?;
    begin(&s, &name, Some(group), |group| Ask {
        kind: RecoveryKind::Verify,
        group,
        objects: None,
        naming: Naming::default(),
        check: None,
        from_site: false,
        trigger: "manual",
    })
    .await
}

/// A page of plan `name`'s recoveries of `kind`, oldest first.
async fn list(
    s: &ApiState,
    name: &str,
    raw: RawQuery,
    kind: RecoveryKind,
) -> ApiResult<Paged<Recovery>> {
    let name = name_param("plan", name)?;
    let page = Page::new(s, raw).await?;
    let (plan, _) = read_plan(&s.store, &name).await?;
    let mut all: Vec<Recovery> =
        crate::state::load(&s.store, &schema::recoveries_of(plan.id())).await?;
    all.retain(|r| r.kind == kind);
    page::history(all, page, |r| page::history_key(&r.created, &r.id))
}

/// One recovery of plan `name`, of `kind`, with its progress while it runs.
async fn one(
    s: &ApiState,
    name: &str,
    id: &str,
    kind: RecoveryKind,
) -> ApiResult<Json<RecoveryDetail>> {
    let name = name_param("plan", name)?;
    let id = name_param("recovery", id)?;
    let (plan, _) = read_plan(&s.store, &name).await?;
    let what = match kind {
        RecoveryKind::Rebuild => "rebuild",
        RecoveryKind::Drill => "drill",
        RecoveryKind::Verify => "verification",
    };
    let recovery: Recovery = record(&s.store, &schema::recovery_key(plan.id(), &id))
        .await?
        .filter(|r: &Recovery| r.kind == kind)
        .ok_or_else(|| ApiError::not_found(&format!("{what} of plan {name}"), id.as_str()))?;
    let progress = if recovery.is_over() {
        None
    } else {
        progress_of(&s.links, &format!("{}.", recovery.id))
    };
    Ok(Json(RecoveryDetail { recovery, progress }))
}

#[utoipa::path(get, path = "/v1/plans/{name}/rebuilds", params(("name" = Name, Path, description = "the plan's name"), PageQuery), responses((status = 200, description = "a page of the plan's rebuilds, oldest first", body = Vec<Recovery>, headers(("x-next-after" = String, description = "the cursor of the next page, while more follow")))))]
pub(super) async fn plan_rebuilds(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    raw: RawQuery,
) -> ApiResult<Paged<Recovery>> {
    auth(&s, &headers, false)?;
    list(&s, &name, raw, RecoveryKind::Rebuild).await
}

#[utoipa::path(get, path = "/v1/plans/{name}/drills", params(("name" = Name, Path, description = "the plan's name"), PageQuery), responses((status = 200, description = "a page of the plan's drills, oldest first", body = Vec<Recovery>, headers(("x-next-after" = String, description = "the cursor of the next page, while more follow")))))]
pub(super) async fn plan_drills(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    raw: RawQuery,
) -> ApiResult<Paged<Recovery>> {
    auth(&s, &headers, false)?;
    list(&s, &name, raw, RecoveryKind::Drill).await
}

#[utoipa::path(get, path = "/v1/plans/{name}/verifications", params(("name" = Name, Path, description = "the plan's name"), PageQuery), responses((status = 200, description = "a page of the plan's verifications, oldest first", body = Vec<Recovery>, headers(("x-next-after" = String, description = "the cursor of the next page, while more follow")))))]
pub(super) async fn plan_verifications(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    raw: RawQuery,
) -> ApiResult<Paged<Recovery>> {
    auth(&s, &headers, false)?;
    list(&s, &name, raw, RecoveryKind::Verify).await
}

#[utoipa::path(get, path = "/v1/plans/{name}/rebuilds/{id}", params(("name" = Name, Path, description = "the plan's name"), ("id" = Name, Path, description = "the rebuild's id")), responses((status = 200, description = "the rebuild: what it made (or undid), with its progress while it runs", body = RecoveryDetail)))]
pub(super) async fn get_rebuild(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<Json<RecoveryDetail>> {
    auth(&s, &headers, false)?;
    one(&s, &name, &id, RecoveryKind::Rebuild).await
}

#[utoipa::path(get, path = "/v1/plans/{name}/drills/{id}", params(("name" = Name, Path, description = "the plan's name"), ("id" = Name, Path, description = "the drill's id")), responses((status = 200, description = "the drill: each volume's verification and each object's check, with their timings", body = RecoveryDetail)))]
pub(super) async fn get_drill(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<Json<RecoveryDetail>> {
    auth(&s, &headers, false)?;
    one(&s, &name, &id, RecoveryKind::Drill).await
}

#[utoipa::path(get, path = "/v1/plans/{name}/verifications/{id}", params(("name" = Name, Path, description = "the plan's name"), ("id" = Name, Path, description = "the verification's id")), responses((status = 200, description = "the verification", body = RecoveryDetail)))]
pub(super) async fn get_verification(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((name, id)): Path<(String, String)>,
) -> ApiResult<Json<RecoveryDetail>> {
    auth(&s, &headers, false)?;
    one(&s, &name, &id, RecoveryKind::Verify).await
}
