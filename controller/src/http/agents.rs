//! `/v1/agents` and `/v1/volumes`: the site's agents and the volumes on them.

use super::*;
use crate::state::schema::AgentRecord;

#[utoipa::path(get, path = "/v1/agents", params(PageQuery), responses((status = 200, description = "a page of the site's agents, by node", body = Vec<AgentRecord>, headers(("x-next-after" = String, description = "the cursor of the next page, while more follow")))))]
pub(super) async fn list_agents(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    raw: RawQuery,
) -> ApiResult<Paged<crate::state::schema::AgentRecord>> {
    auth(&s, &headers, false)?;
    let page = Page::new(&s, raw).await?;
    let mut p = page::stored(&s.store, schema::AGENTS, page).await?;
    let now = jiff::Timestamp::now();
    let agents = p.take().into_iter().map(|a| with_status(a, now)).collect();
    Ok(p.with(agents))
}

/// A volume as the API lists it: where it is, what the agent says of it, and which objects
/// name it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct VolumeView {
    node: Name,
    #[serde(flatten)]
    volume: ferry_wire::control::VolumeReport,
    used_by: Vec<Name>,
}

/// A page of the volumes of every agent (or of `node`), by node then volume (cursors
/// `NODE/VOLUME`), each with the objects that name it. Agents and objects are read a store
/// page at a time, so memory follows the page, not the site.
pub(super) async fn volume_views(
    store: &Store,
    node: Option<&Name>,
    page: Page,
) -> ApiResult<Paged<VolumeView>> {
    let (after_node, after_volume) = match page.after.as_deref().map(|a| a.split_once('/')) {
        None => (None, None),
        Some(Some((n, v))) => (Some(name_param("node", n)?), Some(name_param("volume", v)?)),
        Some(None) => {
            return Err(ApiError::bad(
                "after: a cursor of the volume lists is NODE/VOLUME, as the previous page's \
                 x-next-after header names it",
            ))
        }
    };
    let mut views: Vec<VolumeView> = Vec::new();
    let take = |a: crate::state::schema::AgentRecord, views: &mut Vec<VolumeView>| {
        let mut vols = a.volumes;
        vols.sort_by(|x, y| x.name.cmp(&y.name));
        for v in vols {
            if after_node.as_ref() == Some(&a.node) && after_volume.as_ref() >= Some(&v.name) {
                continue;
            }
            views.push(VolumeView {
                node: a.node.clone(),
                volume: v,
                used_by: Vec::new(),
            });
        }
    };
    if let Some(n) = node {
        if after_node.as_ref().is_none_or(|a| a <= n) {
            if let Some(a) = record(store, &schema::agent_key(n)).await? {
                take(a, &mut views);
            }
        }
    } else {
        // The cursor's agent first (its volumes after the cursor's), then those after it.
        let mut after = after_node.as_ref().map(schema::agent_key);
        if let Some(k) = &after {
            if let Some(a) = record(store, k).await? {
                take(a, &mut views);
            }
        }
        while views.len() <= page.limit {
            let (kvs, more) = store
                .list_page(schema::AGENTS, after.as_deref(), 64)
                .await?;
            after = kvs.last().map(|kv| kv.key.clone());
            for kv in kvs {
                if let Ok(a) = serde_json::from_slice(&kv.value) {
                    take(a, &mut views);
                }
            }
            if !more {
                break;
            }
        }
    }
    let next = if views.len() > page.limit {
        views.truncate(page.limit);
        views
            .last()
            .map(|v| format!("{}/{}", v.node, v.volume.name))
    } else {
        None
    };
    name_users(store, &mut views).await?;
    Ok(Paged::of(views, next, page))
}

/// Fills in which objects name each of `views`, reading the objects a store page at a time.
async fn name_users(store: &Store, views: &mut [VolumeView]) -> ApiResult<()> {
    let at: std::collections::BTreeMap<(&Name, &Name), usize> = views
        .iter()
        .enumerate()
        .map(|(i, v)| ((&v.node, &v.volume.name), i))
        .collect();
    let mut users: Vec<Vec<Name>> = vec![Vec::new(); views.len()];
    let mut after: Option<String> = None;
    loop {
        let (kvs, more) = store.list_page(OBJECTS, after.as_deref(), 256).await?;
        after = kvs.last().map(|kv| kv.key.clone());
        for kv in kvs {
            let Ok(o) = serde_json::from_slice::<Object>(&kv.value) else {
                continue;
            };
            for (_, r) in o.volume_fields() {
                if let Some(&i) = at.get(&(&r.node, &r.volume)) {
                    if !users[i].contains(&o.name) {
                        users[i].push(o.name.clone());
                    }
                }
            }
        }
        if !more {
            break;
        }
    }
    for (v, u) in views.iter_mut().zip(users) {
        v.used_by = u;
    }
    Ok(())
}

#[utoipa::path(get, path = "/v1/volumes", params(PageQuery), responses((status = 200, description = "a page of every agent's volumes, by node then volume (cursors NODE/VOLUME), with the objects that name them", body = Vec<VolumeView>, headers(("x-next-after" = String, description = "the cursor of the next page, while more follow")))))]
pub(super) async fn list_volumes(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    raw: RawQuery,
) -> ApiResult<Paged<VolumeView>> {
    auth(&s, &headers, false)?;
    let page = Page::new(&s, raw).await?;
    volume_views(&s.store, None, page).await
}

#[utoipa::path(get, path = "/v1/agents/{node}/volumes", params(("node" = Name, Path, description = "the agent's node"), PageQuery), responses((status = 200, description = "a page of one agent's volumes, by name (cursors NODE/VOLUME)", body = Vec<VolumeView>, headers(("x-next-after" = String, description = "the cursor of the next page, while more follow")))))]
pub(super) async fn node_volumes(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(node): Path<String>,
    raw: RawQuery,
) -> ApiResult<Paged<VolumeView>> {
    auth(&s, &headers, false)?;
    let node = name_param("node", &node)?;
    let page = Page::new(&s, raw).await?;
    if s.store.get(&schema::agent_key(&node)).await?.is_some() {
        volume_views(&s.store, Some(&node), page).await
    } else {
        Err(ApiError::not_found("agent", node.as_str()))
    }
}

/// A volume to create on an agent.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct VolumeRequest {
    name: Name,
    /// Bytes, or a size such as "10G", "10GB" or "1.5TiB".
    size: Value,
    #[serde(default)]
    block_size: Option<u64>,
}

/// How long a volume task may wait on the agent to start (behind its other tasks): past it,
/// the agent refuses it.
pub(super) const VOLUME_TASK_START: std::time::Duration = std::time::Duration::from_secs(20);
/// How long the agent has to say it received a task (it does at once, over a live link).
const VOLUME_TASK_RECEIPT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a started volume task is waited for.
const VOLUME_TASK_RUN: std::time::Duration = std::time::Duration::from_secs(300);

/// The id of a volume task: its tag, the millisecond, a random nonce (two calls in the same
/// millisecond for one node must not share an id: the agent refuses a second task of that
/// id, and the callers would wait on each other's answer), and as much of the node's name as
/// fits in a name.
fn volume_task_id(
    tag: &str,
    ms: i64,
    nonce: u32,
    node: &Name,
) -> Result<Name, ferry_wire::name::NameError> {
    let head = format!("{tag}{ms}-{nonce:08x}-");
    let room = ferry_wire::name::MAX_NAME_LEN.saturating_sub(head.len());
    let node = &node.as_str()[..node.as_str().len().min(room)];
    Name::new(&format!("{head}{node}"))
}

/// Sends a volume task to a connected agent and waits for its outcome: the result, or the
/// error the agent's failure maps to.
pub(super) async fn volume_task(
    s: &ApiState,
    node: &Name,
    tag: &str,
    kind: ferry_wire::task::TaskKind,
) -> ApiResult<ferry_wire::task::TaskResult> {
    use ferry_wire::task::TaskState;
    let now = jiff::Timestamp::now();
    let id = volume_task_id(tag, now.as_millisecond(), rand::random(), node)
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let task = ferry_wire::task::Task {
        id: id.clone(),
        start_within_secs: Some(VOLUME_TASK_START.as_secs()),
        generation: s.leading()?.generation,
        kind,
    };
    if !s
        .links
        .send(node, ferry_wire::control::ControllerMsg::Task(task))
        .await
    {
        return Err(ApiError::conflict(format!(
            "agent {node} is not connected (ferry agents shows which are up)"
        )));
    }
    // The agent says it received the task at once; it starts it within VOLUME_TASK_START
    // of that or refuses it. So a task not received in time never runs, and one neither
    // refused nor finished past that deadline has started: then it is waited for.
    let sent = std::time::Instant::now();
    let mut received: Option<std::time::Instant> = None;
    let timeout = |m: String| ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", m);
    let state = loop {
        if let Some(st) = s.links.take_final(id.as_str()) {
            break st;
        }
        if received.is_none() && s.links.is_running(id.as_str()) {
            received = Some(std::time::Instant::now());
        }
        match received {
            None if sent.elapsed() > VOLUME_TASK_RECEIPT => {
                return Err(timeout(format!(
                    "agent {node} did not receive the task within {} s (its link is down or \
                     stalled); nothing was done",
                    VOLUME_TASK_RECEIPT.as_secs()
                )))
            }
            Some(r) if r.elapsed() > VOLUME_TASK_START + VOLUME_TASK_RUN => {
                return Err(timeout(format!(
                    "agent {node} is still running the task after {} s; look again with GET \
                     /v1/agents/{node}/volumes",
                    (VOLUME_TASK_START + VOLUME_TASK_RUN).as_secs()
                )))
            }
            _ => {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    match state {
        TaskState::Done { result } => Ok(result),
        TaskState::Failed { kind, message } => {
            let (status, code) = match kind.as_str() {
                "already_exists" => (StatusCode::CONFLICT, "conflict"),
                "busy" => (StatusCode::CONFLICT, "conflict"),
                "not_found" => (StatusCode::NOT_FOUND, "not_found"),
                "invalid_argument" | "invalid_name" => (StatusCode::BAD_REQUEST, "invalid"),
                "no_space" => (StatusCode::INSUFFICIENT_STORAGE, "no_space"),
                // Busy past its start deadline (a long hook): refused, never run.
                "not_started" => (StatusCode::SERVICE_UNAVAILABLE, "agent_busy"),
                _ => (StatusCode::BAD_GATEWAY, "agent_failed"),
            };
            Err(ApiError::new(
                status,
                code,
                format!("agent {node}: {message}"),
            ))
        }
        other => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "agent_failed",
            format!(
                "agent {node}: {}",
                other.failure().unwrap_or_else(|| format!("{other:?}"))
            ),
        )),
    }
}

#[utoipa::path(post, path = "/v1/agents/{node}/volumes", params(("node" = Name, Path, description = "the agent's node")), request_body = VolumeRequest, responses((status = 201, description = "created (answered when the agent reports)", body = VolumeCreated), (status = 502, description = "the agent failed", body = ErrorBody), (status = 504, description = "the agent did not answer in time", body = ErrorBody), (status = 507, description = "no space on the agent", body = ErrorBody)))]
/// Creates a volume on a connected agent (a task, answered when the agent reports).
pub(super) async fn create_volume(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(node): Path<String>,
    raw: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<(StatusCode, Json<VolumeCreated>)> {
    auth(&s, &headers, true)?;
    let node = name_param("node", &node)?;
    let req: VolumeRequest = parse(&body(raw)?)?;
    let size = match &req.size {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| "a whole number of bytes".to_string()),
        Value::String(t) => ferry_wire::units::parse_size(t).map_err(|e| e.to_string()),
        _ => Err("a number of bytes, or a size such as \"10G\" or \"10GB\"".to_string()),
    }
    .and_then(|n| {
        if n > 0 {
            Ok(n)
        } else {
            Err("a volume needs a size above 0".into())
        }
    })
    .map_err(|e| ApiError::bad(format!("size: {e}")))?;
    let kind = ferry_wire::task::TaskKind::CreateVolume {
        volume: req.name.clone(),
        size,
        block_size: req.block_size,
    };
    match volume_task(&s, &node, "cv", kind).await? {
        ferry_wire::task::TaskResult::VolumeCreated { volume, size } => Ok((
            StatusCode::CREATED,
            Json(VolumeCreated { node, volume, size }),
        )),
        other => Err(unexpected(&node, &other)),
    }
}

pub(super) fn unexpected(node: &Name, r: &ferry_wire::task::TaskResult) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "agent_failed",
        format!("agent {node} answered {r:?}"),
    )
}

/// `?force=true`: delete a volume's snapshots with it.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct DeleteVolumeQuery {
    #[serde(default)]
    force: bool,
}

#[utoipa::path(delete, path = "/v1/agents/{node}/volumes/{volume}", params(("node" = Name, Path, description = "the agent's node"), ("volume" = Name, Path, description = "the volume's name"), DeleteVolumeQuery), responses((status = 200, description = "deleted (refused while an object names it)", body = VolumeDeleted), (status = 502, description = "the agent failed", body = ErrorBody), (status = 504, description = "the agent did not answer in time", body = ErrorBody)))]
/// Deletes a volume on a connected agent. Refused while an object names it; one with
/// snapshots needs `force=true`, which deletes them (groups that hold them can no longer
/// roll that volume back).
pub(super) async fn delete_volume(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((node, volume)): Path<(String, String)>,
    q: axum::extract::RawQuery,
) -> ApiResult<Json<VolumeDeleted>> {
    auth(&s, &headers, true)?;
    let node = name_param("node", &node)?;
    let volume = name_param("volume", &volume)?;
    let q: DeleteVolumeQuery = query(q)?;
    // A mirror belongs to the foreign plan that placed it: read-only here.
    for p in load_plans(&s.store).await? {
        let Some(o) = &p.origin else { continue };
        if o.mirrors
            .iter()
            .any(|m| m.mirror_node == node && m.mirror == volume)
        {
            return Err(ApiError::conflict(format!(
                "volume {node}/{volume} is a mirror of plan {} of site {} (foreign plan {} here):                  it changes only by replication; release the foreign plan first                  (ferry plans delete {} --release)",
                o.plan, o.site, p.spec.name, p.spec.name
            )));
        }
    }
    for o in load_objects(&s.store).await? {
        if o.volume_fields()
            .iter()
            .any(|(_, r)| r.node == node && r.volume == volume)
        {
            return Err(ApiError::conflict(format!(
                "volume {node}/{volume} is used by object {}; change or delete the object first",
                o.name
            )));
        }
    }
    let kind = ferry_wire::task::TaskKind::DeleteVolume {
        volume: volume.clone(),
        force: q.force,
    };
    let r = volume_task(&s, &node, "dv", kind).await.map_err(|e| {
        if e.status == StatusCode::CONFLICT && e.message.contains("snapshot") {
            ApiError::conflict(format!(
                "{}; force=true deletes them with it (ferry volumes delete {node} {volume} --force)",
                e.message.trim_end_matches("; delete them first or pass --force")
            ))
        } else {
            e
        }
    })?;
    match r {
        ferry_wire::task::TaskResult::VolumeDeleted { volume, snapshots } => {
            // A rebuilt volume's lineage goes with it.
            s.store.delete(&schema::lineage_key(&node, &volume)).await?;
            Ok(Json(VolumeDeleted {
                node,
                volume,
                snapshots_deleted: snapshots,
            }))
        }
        other => Err(unexpected(&node, &other)),
    }
}

/// A volume a node made.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct VolumeCreated {
    node: Name,
    volume: Name,
    size: u64,
}

/// A volume a node deleted.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct VolumeDeleted {
    node: Name,
    volume: Name,
    /// Snapshots deleted with it (`force=true`).
    snapshots_deleted: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_task_ids_differ_by_nonce_and_fit_in_a_name() {
        let long: Name = "n"
            .repeat(ferry_wire::name::MAX_NAME_LEN)
            .parse()
            .expect("name");
        let short: Name = "node1".parse().expect("name");
        // (tag, ms, nonce, node, id)
        let table = [
            (
                "cv",
                1_796_274_773_556,
                0,
                &short,
                "cv1796274773556-00000000-node1",
            ),
            (
                "cv",
                1_796_274_773_556,
                0xdead_beef,
                &short,
                "cv1796274773556-deadbeef-node1",
            ),
            (
                "dv",
                1_796_274_773_556,
                1,
                &short,
                "dv1796274773556-00000001-node1",
            ),
        ];
        for (tag, ms, nonce, node, want) in table {
            assert_eq!(
                volume_task_id(tag, ms, nonce, node).expect("id").as_str(),
                want
            );
        }
        let a = volume_task_id("cv", 1, 1, &short).expect("id");
        let b = volume_task_id("cv", 1, 2, &short).expect("id");
        assert_ne!(a, b, "same millisecond and node, another call");
        let l = volume_task_id("cv", 1_796_274_773_556, 7, &long).expect("id");
        assert_eq!(l.as_str().len(), ferry_wire::name::MAX_NAME_LEN);
        assert!(l.as_str().starts_with("cv1796274773556-00000007-nnn"));
    }
}
