//! `/v1/agents` and `/v1/volumes`: the site's agents and the volumes on them.

use super::*;
use crate::state::schema::AgentRecord;

#[utoipa::path(get, path = "/v1/agents", responses((status = 200, description = "the site's agents", body = Vec<AgentRecord>)))]
pub(super) async fn list_agents(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<crate::state::schema::AgentRecord>>> {
    auth(&s, &headers, false)?;
    Ok(Json(load_agents(&s.store).await?))
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

pub(super) async fn volume_views(store: &Store, node: Option<&Name>) -> ApiResult<Vec<VolumeView>> {
    let objects = load_objects(store).await?;
    let mut out = Vec::new();
    for a in load_agents(store).await? {
        if node.is_some_and(|n| n != &a.node) {
            continue;
        }
        for v in a.volumes {
            let used_by = objects
                .iter()
                .filter(|o| {
                    o.volume_fields()
                        .iter()
                        .any(|(_, r)| r.node == a.node && r.volume == v.name)
                })
                .map(|o| o.name.clone())
                .collect();
            out.push(VolumeView {
                node: a.node.clone(),
                volume: v,
                used_by,
            });
        }
    }
    Ok(out)
}

#[utoipa::path(get, path = "/v1/volumes", responses((status = 200, description = "every agent's volumes, with the objects that name them", body = Vec<VolumeView>)))]
pub(super) async fn list_volumes(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<VolumeView>>> {
    auth(&s, &headers, false)?;
    Ok(Json(volume_views(&s.store, None).await?))
}

#[utoipa::path(get, path = "/v1/agents/{node}/volumes", params(("node" = Name, Path, description = "the agent's node")), responses((status = 200, description = "one agent's volumes", body = Vec<VolumeView>)))]
pub(super) async fn node_volumes(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(node): Path<String>,
) -> ApiResult<Json<Vec<VolumeView>>> {
    auth(&s, &headers, false)?;
    let node = name_param("node", &node)?;
    if !load_agents(&s.store).await?.iter().any(|a| a.node == node) {
        return Err(ApiError::not_found("agent", node.as_str()));
    }
    Ok(Json(volume_views(&s.store, Some(&node)).await?))
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
    let id = Name::new(&format!("{tag}{}-{node}", now.as_millisecond()))
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
