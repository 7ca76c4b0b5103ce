//! `/v1/objects`: the inventory.

use super::*;

/// `Object` as utoipa must be told it (the bare name means a free-form object there).
type InventoryObject = Object;

/// `?allow_missing=true`: declare an object before its agent or volumes exist.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct ObjectQuery {
    #[serde(default)]
    allow_missing: bool,
}

#[utoipa::path(get, path = "/v1/objects", params(PageQuery), responses((status = 200, description = "a page of the objects, by name", body = Vec<InventoryObject>, headers(("x-next-after" = String, description = "the cursor of the next page, while more follow")))))]
pub(super) async fn list_objects(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    raw: RawQuery,
) -> ApiResult<Paged<Object>> {
    auth(&s, &headers, false)?;
    let page = Page::new(&s, raw).await?;
    page::stored(&s.store, OBJECTS, page).await
}

#[utoipa::path(get, path = "/v1/objects/{name}", params(("name" = Name, Path, description = "the object's name")), responses((status = 200, description = "the object", body = InventoryObject)))]
pub(super) async fn get_object(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Object>> {
    auth(&s, &headers, false)?;
    let name = name_param("object", &name)?;
    let kv = s
        .store
        .get(&schema::object_key(&name))
        .await?
        .ok_or_else(|| ApiError::not_found("object", name.as_str()))?;
    Ok(Json(parse(&Bytes::from(kv.value))?))
}

/// What the registered agents say they hold: node -> its volumes.
pub(super) async fn known_volumes(
    store: &Store,
) -> ApiResult<std::collections::BTreeMap<Name, crate::policy::model::NodeVolumes>> {
    let agents: Vec<crate::state::schema::AgentRecord> =
        crate::state::load(store, schema::AGENTS).await?;
    Ok(agents
        .into_iter()
        .map(|a| {
            let known = crate::policy::model::NodeVolumes {
                volumes: a.volumes.iter().map(|v| v.name.clone()).collect(),
                complete: a.volumes_omitted == 0,
            };
            (a.node, known)
        })
        .collect())
}

/// An object from a request body: valid, and (unless `allow_missing`) naming only volumes
/// that registered agents hold.
pub(super) async fn checked_object(store: &Store, o: Object, q: &ObjectQuery) -> ApiResult<Object> {
    o.validate().map_err(|e| ApiError::bad(e.to_string()))?;
    if !q.allow_missing {
        let known = known_volumes(store).await?;
        o.check_volumes_exist(|n| known.get(n).cloned())
            .map_err(|e| ApiError::bad(e.to_string()))?;
    }
    Ok(o)
}

#[utoipa::path(post, path = "/v1/objects", params(ObjectQuery), request_body = InventoryObject, responses((status = 201, description = "created; every volume it names is on a registered agent unless allow_missing", body = InventoryObject)))]
pub(super) async fn create_object(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    q: axum::extract::RawQuery,
    raw: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<(StatusCode, Json<Object>)> {
    auth(&s, &headers, true)?;
    let q: ObjectQuery = query(q)?;
    let o = checked_object(&s.store, parse(&body(raw)?)?, &q).await?;
    let key = schema::object_key(&o.name);
    let done = s
        .store
        .txn(Txn {
            when: vec![Compare::Absent(key.clone())],
            then: vec![Op::Put(key, encode(&o)?)],
        })
        .await?;
    if !done.succeeded {
        return Err(ApiError::conflict(format!(
            "object {} exists; change it with PUT /v1/objects/{} (ferry objects update FILE)",
            o.name, o.name
        )));
    }
    tracing::info!(object = %o.name, "object created");
    Ok((StatusCode::CREATED, Json(o)))
}

#[utoipa::path(put, path = "/v1/objects/{name}", params(("name" = Name, Path, description = "the object's name"), ObjectQuery), request_body = InventoryObject, responses((status = 200, description = "replaced", body = InventoryObject)))]
pub(super) async fn put_object(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    q: axum::extract::RawQuery,
    raw: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<Json<Object>> {
    auth(&s, &headers, true)?;
    let name = name_param("object", &name)?;
    let q: ObjectQuery = query(q)?;
    let o: Object = parse(&body(raw)?)?;
    if o.name != name {
        return Err(ApiError::bad(format!(
            "name: the body names {}, the path {name}",
            o.name
        )));
    }
    let o = checked_object(&s.store, o, &q).await?;
    let key = schema::object_key(&name);
    let cur = s
        .store
        .get(&key)
        .await?
        .ok_or_else(|| ApiError::not_found("object", name.as_str()))?;
    let done = s
        .store
        .txn(Txn {
            when: vec![Compare::ModRevision(key.clone(), cur.mod_revision)],
            then: vec![Op::Put(key, encode(&o)?)],
        })
        .await?;
    if !done.succeeded {
        return Err(ApiError::conflict(format!(
            "object {name} changed meanwhile; read it again"
        )));
    }
    Ok(Json(o))
}

#[utoipa::path(delete, path = "/v1/objects/{name}", params(("name" = Name, Path, description = "the object's name")), responses((status = 204, description = "deleted (refused while a plan protects it)")))]
pub(super) async fn delete_object(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    auth(&s, &headers, true)?;
    let name = name_param("object", &name)?;
    for p in load_plans(&s.store).await? {
        if p.spec.objects.contains(&name) {
            return Err(ApiError::conflict(format!(
                "object {name} is protected by plan {}; remove it from the plan first",
                p.spec.name
            )));
        }
    }
    if !s.store.delete(&schema::object_key(&name)).await? {
        return Err(ApiError::not_found("object", name.as_str()));
    }
    Ok(StatusCode::NO_CONTENT)
}
