//! `/v1/plans/NAME/groups`: a plan's kept snapshot groups.

use super::*;
use crate::state::schema::VerifiedRecord;

#[utoipa::path(get, path = "/v1/plans/{name}/groups", params(("name" = Name, Path, description = "the plan's name"), PageQuery), responses((status = 200, description = "a page of the plan's kept snapshot groups, oldest first", body = Vec<GroupRecord>, headers(("x-next-after" = String, description = "the cursor of the next page, while more follow")))))]
pub(super) async fn plan_groups(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    raw: RawQuery,
) -> ApiResult<Paged<GroupRecord>> {
    auth(&s, &headers, false)?;
    let name = name_param("plan", &name)?;
    let page = Page::new(&s, raw).await?;
    let (plan, _) = read_plan(&s.store, &name).await?;
    let mut groups = load_groups(&s.store, plan.id()).await?;
    with_verified(&s.store, plan.id(), &mut groups).await?;
    page::history(groups, page, |g| page::history_key(&g.created, &g.group))
}

/// Adds each group's last verification.
async fn with_verified(store: &Store, plan_id: &Name, groups: &mut [GroupRecord]) -> ApiResult<()> {
    for kv in store.list(&schema::verified_of(plan_id)).await? {
        let (Some(group), Ok(v)) = (
            schema::last_name(&kv.key),
            serde_json::from_slice::<VerifiedRecord>(&kv.value),
        ) else {
            continue;
        };
        if let Some(g) = groups.iter_mut().find(|g| g.group == group) {
            g.verified = Some(v);
        }
    }
    Ok(())
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
    let g: GroupRecord = record(&s.store, &schema::group_key(plan.id(), &group))
        .await?
        .ok_or_else(|| ApiError::not_found(&format!("group of plan {name}"), group.as_str()))?;
    let mut one = [g];
    with_verified(&s.store, plan.id(), &mut one).await?;
    let [g] = one;
    Ok(Json(g))
}
