//! `/v1/orphans`: deleted plans' kept groups, and their removal.

use super::*;

/// A deleted plan's kept groups, as listed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Orphan {
    #[serde(flatten)]
    record: OrphanRecord,
    /// Its groups still kept, oldest first.
    groups: Vec<GroupRecord>,
    /// A removal of one of its groups in progress.
    #[serde(skip_serializing_if = "Option::is_none")]
    removing: Option<Name>,
}

#[utoipa::path(get, path = "/v1/orphans", params(PageQuery), responses((status = 200, description = "a page of the deleted plans whose groups are kept, by plan id, with those groups", body = Vec<Orphan>, headers(("x-next-after" = String, description = "the cursor of the next page, while more follow")))))]
pub(super) async fn list_orphans(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    raw: RawQuery,
) -> ApiResult<Paged<Orphan>> {
    auth(&s, &headers, false)?;
    let page = Page::new(&s, raw).await?;
    let mut p = page::stored::<OrphanRecord>(&s.store, schema::ORPHANS, page).await?;
    let markers = p.take();
    let mut out = Vec::new();
    for m in markers {
        let groups = load_groups(&s.store, &m.plan_id).await?;
        if groups.is_empty() {
            continue; // only its run history is left, being deleted
        }
        let removing = match schema::busy(&s.store, &m.plan_id).await? {
            Some(Busy::Removal(id)) => Some(id),
            _ => None,
        };
        out.push(Orphan {
            record: m,
            groups,
            removing,
        });
    }
    Ok(p.with(out))
}

#[utoipa::path(delete, path = "/v1/orphans/{plan_id}", params(("plan_id" = Name, Path, description = "the deleted plan's id")), responses((status = 202, description = "deleting its groups, snapshots included, group by group", body = OrphanRecord)))]
/// Deletes a deleted plan's kept groups, snapshots included (202: the executor deletes them
/// group by group; they leave `GET /v1/orphans` as they go).
pub(super) async fn delete_orphans(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(plan_id): Path<String>,
) -> ApiResult<(StatusCode, Json<OrphanRecord>)> {
    auth(&s, &headers, true)?;
    let plan_id = name_param("plan id", &plan_id)?;
    let key = schema::orphan_key(&plan_id);
    let kv = s.store.get(&key).await?.ok_or_else(|| {
        ApiError::not_found(
            "deleted plan with the id (ferry orphans list)",
            plan_id.as_str(),
        )
    })?;
    let mut m: OrphanRecord = parse(&Bytes::from(kv.value))?;
    m.fate = GroupsFate::Delete;
    let done = s
        .store
        .txn(Txn {
            when: vec![Compare::ModRevision(key.clone(), kv.mod_revision)],
            then: vec![Op::Put(key, encode(&m)?)],
        })
        .await?;
    if !done.succeeded {
        return Err(ApiError::conflict("changed meanwhile; try again"));
    }
    tracing::info!(plan = %m.plan, %plan_id, "deleting a deleted plan's groups");
    Ok((StatusCode::ACCEPTED, Json(m)))
}
