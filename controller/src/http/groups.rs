//! `/v1/plans/NAME/groups`: a plan's kept snapshot groups.

use super::*;

#[utoipa::path(get, path = "/v1/plans/{name}/groups", params(("name" = Name, Path, description = "the plan's name")), responses((status = 200, description = "the plan's kept snapshot groups, oldest first", body = Vec<GroupRecord>)))]
pub(super) async fn plan_groups(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<GroupRecord>>> {
    auth(&s, &headers, false)?;
    let name = name_param("plan", &name)?;
    let (plan, _) = read_plan(&s.store, &name).await?;
    Ok(Json(load_groups(&s.store, plan.id()).await?))
}

#[utoipa::path(get, path = "/v1/plans/{name}/groups/{group}", params(("name" = Name, Path, description = "the plan's name"), ("group" = Name, Path, description = "the group's name")), responses((status = 200, description = "one kept group", body = GroupRecord)))]
pub(super) async fn get_group(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((name, group)): Path<(String, String)>,
) -> ApiResult<Json<GroupRecord>> {
    auth(&s, &headers, false)?;
    let name = name_param("plan", &name)?;
    let group = name_param("group", &group)?;
    let (plan, _) = read_plan(&s.store, &name).await?;
    record(&s.store, &schema::group_key(plan.id(), &group))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(&format!("group of plan {name}"), group.as_str()))
}
