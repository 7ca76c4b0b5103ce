//! `/v1/plans/NAME/groups`: a plan's kept snapshot groups.

use super::*;

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
