//! The HTTP API (`/v1`, JSON): inventory objects and protection plans, kept in the state
//! store; bearer tokens with admin and read-only roles; `/healthz`; the OpenAPI document at
//! `/v1/openapi.json`.
//!
//! Every bad request gets a 4xx with `{"error": {"code", "message"}}` saying what is wrong
//! (validation errors name the field); a store failure is a 503, never a panic. Bodies are
//! parsed here, not by an extractor, so malformed JSON gets the same error shape.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_wire::Name;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::group_job::GroupJob;
use crate::model::{Object, PlanSpec};
use crate::schema::{
    self, Busy, GroupRecord, GroupsFate, OrphanRecord, PlanRecord, OBJECTS, PLANS, RUNS,
};
use crate::store::{Compare, Op, Store, StoreError, Txn};

/// Largest request body.
pub const MAX_BODY: usize = 1 << 20;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    ReadOnly,
}

/// A configured token: its name (for logs; the token itself is never logged or stored) and
/// the BLAKE3 hash of its value.
#[derive(Debug, Clone)]
pub struct TokenEntry {
    pub name: String,
    pub role: Role,
    pub hash: [u8; 32],
}

/// Shared state of the API handlers.
#[derive(Debug)]
pub struct ApiState {
    pub store: Store,
    pub tokens: Vec<TokenEntry>,
    /// Leader (with its term, stamped on the tasks of runs it starts and fencing its writes)
    /// or follower (forwarding requests to the leader).
    pub role: tokio::sync::watch::Receiver<crate::leader::Role>,
    /// The link to the leader, for a follower (several controllers on etcd).
    pub forwarder: Option<Arc<crate::peer::Forwarder>>,
    /// Request counters for `/metrics`: (route, status) -> (count, seconds).
    pub requests: std::sync::Mutex<std::collections::BTreeMap<(String, u16), (u64, f64)>>,
    /// Links to the connected agents (to create volumes on them).
    pub links: Arc<crate::agents::Links>,
}

impl ApiState {
    pub fn new(
        store: Store,
        tokens: Vec<TokenEntry>,
        role: tokio::sync::watch::Receiver<crate::leader::Role>,
        forwarder: Option<Arc<crate::peer::Forwarder>>,
        links: Arc<crate::agents::Links>,
    ) -> ApiState {
        ApiState {
            store,
            tokens,
            role,
            forwarder,
            requests: Default::default(),
            links,
        }
    }

    /// This controller's term, if it leads.
    pub fn term(&self) -> Option<crate::leader::Term> {
        match &*self.role.borrow() {
            crate::leader::Role::Leader(t) => Some(t.clone()),
            crate::leader::Role::Follower => None,
        }
    }

    /// The term, for a handler that only a leader runs (followers forward them).
    fn leading(&self) -> ApiResult<crate::leader::Term> {
        self.term().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_leader",
                "this controller is not the leader (an election is under way); retry shortly",
            )
        })
    }
}

/// An API error: status, stable code, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }
    fn not_found(what: &str, name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} named {name}"),
        )
    }
    fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::BadKey(_) | StoreError::TooLarge(_) | StoreError::TooManyOps(_) => {
                ApiError::bad(e.to_string())
            }
            _ => {
                tracing::warn!(error = %e, "state store unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    format!("the state store is unavailable: {e}"),
                )
            }
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The API's routes over `state`.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/objects", get(list_objects).post(create_object))
        .route(
            "/v1/objects/{name}",
            get(get_object).put(put_object).delete(delete_object),
        )
        .route("/v1/plans", get(list_plans).post(create_plan))
        .route(
            "/v1/plans/{name}",
            get(get_plan).put(put_plan).delete(delete_plan),
        )
        .route("/v1/plans/{name}/pause", post(pause_plan))
        .route("/v1/plans/{name}/run", post(run_now))
        .route("/v1/plans/{name}/runs", get(plan_runs))
        .route("/v1/plans/{name}/runs/{run}", get(get_run))
        .route("/v1/runs", get(all_runs))
        .route("/v1/status", get(status))
        .route("/v1/agents", get(list_agents))
        .route(
            "/v1/agents/{node}/volumes",
            get(node_volumes).post(create_volume),
        )
        .route(
            "/v1/agents/{node}/volumes/{volume}",
            axum::routing::delete(delete_volume),
        )
        .route("/v1/volumes", get(list_volumes))
        .route("/v1/orphans", get(list_orphans))
        .route(
            "/v1/orphans/{plan_id}",
            axum::routing::delete(delete_orphans),
        )
        .route("/v1/plans/{name}/groups", get(plan_groups))
        .route("/v1/plans/{name}/groups/{group}", get(get_group))
        .route(
            "/v1/plans/{name}/rollbacks",
            get(plan_rollbacks).post(start_rollback),
        )
        .route("/v1/plans/{name}/rollbacks/{id}", get(get_rollback))
        .route("/v1/plans/{name}/resume", post(resume_plan))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(state.clone(), forward))
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// How long a request waits for an election under way.
const ELECTION_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// On a follower, every `/v1` request but the OpenAPI document goes to the leader (the
/// leader checks the token); `/healthz` and `/metrics` are answered here.
async fn forward(
    State(s): State<Arc<ApiState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path().to_string();
    let local = !path.starts_with("/v1/") || path == "/v1/openapi.json";
    if local {
        return next.run(req).await;
    }
    let unavailable =
        |m: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_leader", m).into_response();
    // While an election is under way (at start, after a leader died, or while this
    // controller's own election is being taken up) a request waits for its outcome rather
    // than failing at once.
    let t0 = std::time::Instant::now();
    let leader = loop {
        if s.term().is_some() {
            return next.run(req).await;
        }
        // Without a link to other controllers, only this one's own election can help.
        if let Some(f) = &s.forwarder {
            let found = crate::leader::current(&s.store).await.ok().flatten();
            if let Some(l) = found.filter(|l| !f.is_me(l)) {
                break l;
            }
        }
        if t0.elapsed() > ELECTION_WAIT {
            return unavailable(match s.forwarder {
                Some(_) => "no leader is elected right now; retry shortly".into(),
                None => "this controller is not the leader and cannot reach it".into(),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let Some(f) = s.forwarder.clone() else {
        return unavailable("this controller is not the leader and cannot reach it".into());
    };
    if req.headers().contains_key(crate::peer::FORWARDED) {
        return unavailable("this controller is no longer the leader; retry shortly".into());
    }
    let (authorization, content_type) = {
        let header = |h: axum::http::header::HeaderName| {
            req.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        (
            header(axum::http::header::AUTHORIZATION),
            header(axum::http::header::CONTENT_TYPE),
        )
    };
    let method = req.method().to_string();
    let target = req.uri().path_and_query().map_or(path, |p| p.to_string());
    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b.to_vec(),
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request body: larger than {MAX_BODY} bytes"),
            )
            .into_response()
        }
    };
    let fr = ferry_wire::control::ForwardRequest {
        method,
        path: target,
        authorization,
        content_type,
        body,
    };
    match f.forward(&leader, &fr).await {
        Ok(r) => crate::peer::response(r),
        Err(e) => {
            tracing::warn!(error = %e, "cannot forward a request to the leader");
            unavailable(format!("this controller is a follower: {e}"))
        }
    }
}

/// Checks the bearer token; a write needs the admin role.
fn auth(state: &ApiState, headers: &HeaderMap, write: bool) -> ApiResult<()> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing Authorization: Bearer <token>"))?
        .to_str()
        .map_err(|_| unauthorized("malformed Authorization header"))?;
    let token = value
        .strip_prefix("Bearer ")
        .ok_or_else(|| unauthorized("the Authorization header must be Bearer <token>"))?;
    let hash = blake3::hash(token.trim().as_bytes());
    // blake3::Hash compares in constant time.
    let entry = state
        .tokens
        .iter()
        .find(|t| blake3::Hash::from(t.hash) == hash)
        .ok_or_else(|| unauthorized("unknown token"))?;
    if write && entry.role != Role::Admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("token {} is read-only", entry.name),
        ));
    }
    Ok(())
}

fn name_param(what: &str, raw: &str) -> ApiResult<Name> {
    Name::new(raw).map_err(|e| ApiError::bad(format!("{what} name: {e}")))
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad(format!("request body: {e}")))
}

fn body(raw: Result<Bytes, axum::extract::rejection::BytesRejection>) -> ApiResult<Bytes> {
    raw.map_err(|e| {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "invalid"
        };
        ApiError::new(status, code, format!("request body: {}", e.body_text()))
    })
}

async fn healthz(State(s): State<Arc<ApiState>>) -> ApiResult<Json<Value>> {
    let revision = s.store.revision().await?;
    let store = match s.store {
        Store::Etcd(_) => "etcd",
        Store::Embedded(_) => "embedded",
    };
    let leader = crate::leader::current(&s.store).await?;
    let (role, generation) = match s.term() {
        Some(t) => ("leader", Some(t.generation)),
        None => ("follower", None),
    };
    Ok(Json(
        json!({ "ok": true, "store": store, "revision": revision, "role": role,
        "generation": generation, "leader": leader }),
    ))
}

/// Counts every request by route template (never the raw path: names stay out of labels)
/// and status, with the time it took.
async fn track(
    State(s): State<Arc<ApiState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let t0 = std::time::Instant::now();
    let resp = next.run(req).await;
    if let Ok(mut m) = s.requests.lock() {
        let e = m.entry((route, resp.status().as_u16())).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += t0.elapsed().as_secs_f64();
    }
    resp
}

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus metrics: requests, plans, objects, runs by plan and step, the last successful
/// run per plan, the store's revision.
async fn metrics(State(s): State<Arc<ApiState>>, headers: HeaderMap) -> ApiResult<Response> {
    use std::fmt::Write as _;
    auth(&s, &headers, false)?;
    let plans = load_plans(&s.store).await?;
    let objects = load_objects(&s.store).await?;
    let runs = load_runs(&s.store, RUNS).await?;
    let revision = s.store.revision().await?;
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# HELP ferry_http_requests_total HTTP API requests by route and status.\n# TYPE ferry_http_requests_total counter");
    let requests = s.requests.lock().map(|m| m.clone()).unwrap_or_default();
    for ((route, status), (n, _)) in &requests {
        let _ = writeln!(
            w,
            "ferry_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
            label(route)
        );
    }
    let _ = writeln!(w, "# HELP ferry_http_request_seconds_total Time spent serving requests.\n# TYPE ferry_http_request_seconds_total counter");
    for ((route, status), (_, secs)) in &requests {
        let _ = writeln!(
            w,
            "ferry_http_request_seconds_total{{route=\"{}\",status=\"{status}\"}} {secs}",
            label(route)
        );
    }
    let paused = plans.iter().filter(|p| p.paused).count();
    let _ = writeln!(
        w,
        "# HELP ferry_plans Protection plans.\n# TYPE ferry_plans gauge"
    );
    let _ = writeln!(
        w,
        "ferry_plans{{state=\"active\"}} {}\nferry_plans{{state=\"paused\"}} {paused}",
        plans.len() - paused
    );
    let _ = writeln!(w, "# HELP ferry_objects Protected objects in the inventory.\n# TYPE ferry_objects gauge\nferry_objects {}", objects.len());
    let mut by_step: std::collections::BTreeMap<(String, String), u64> = Default::default();
    let mut last_ok: std::collections::BTreeMap<String, i64> = Default::default();
    // plan -> its newest finished run
    let mut newest: std::collections::BTreeMap<String, &crate::scheduler::RunRecord> =
        Default::default();
    for r in &runs {
        if r.run.step.is_final() {
            let e = newest.entry(r.run.plan.to_string()).or_insert(r);
            if r.created > e.created {
                *e = r;
            }
        }
        let step = serde_json::to_value(&r.run.step)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        *by_step
            .entry((r.run.plan.to_string(), step.clone()))
            .or_default() += 1;
        if step == "done" {
            if let Ok(t) = r.created.parse::<jiff::Timestamp>() {
                let e = last_ok.entry(r.run.plan.to_string()).or_insert(0);
                *e = (*e).max(t.as_second());
            }
        }
    }
    let _ = writeln!(
        w,
        "# HELP ferry_runs Runs recorded, by plan and step.\n# TYPE ferry_runs gauge"
    );
    for ((plan, step), n) in &by_step {
        let _ = writeln!(
            w,
            "ferry_runs{{plan=\"{}\",step=\"{}\"}} {n}",
            label(plan),
            label(step)
        );
    }
    let _ = writeln!(w, "# HELP ferry_plan_last_success_timestamp_seconds When the plan's last successful run started.\n# TYPE ferry_plan_last_success_timestamp_seconds gauge");
    for (plan, t) in &last_ok {
        let _ = writeln!(
            w,
            "ferry_plan_last_success_timestamp_seconds{{plan=\"{}\"}} {t}",
            label(plan)
        );
    }
    // (seconds, bytes read) of each plan's newest finished run
    let last_run: std::collections::BTreeMap<&String, (f64, u64)> = newest
        .iter()
        .map(|(plan, r)| {
            let report = r.report();
            (
                plan,
                (report.duration_secs.unwrap_or(0.0), report.bytes_read),
            )
        })
        .collect();
    let _ = writeln!(w, "# HELP ferry_plan_last_run_duration_seconds The newest finished run's duration (record to end), by plan.\n# TYPE ferry_plan_last_run_duration_seconds gauge");
    for (plan, (secs, _)) in &last_run {
        let _ = writeln!(
            w,
            "ferry_plan_last_run_duration_seconds{{plan=\"{}\"}} {secs}",
            label(plan)
        );
    }
    let _ = writeln!(w, "# HELP ferry_plan_last_run_bytes_read Bytes the newest finished run's snapshots read (the changed data), by plan.\n# TYPE ferry_plan_last_run_bytes_read gauge");
    for (plan, (_, bytes)) in &last_run {
        let _ = writeln!(
            w,
            "ferry_plan_last_run_bytes_read{{plan=\"{}\"}} {bytes}",
            label(plan)
        );
    }
    let _ = writeln!(w, "# HELP ferry_store_revision The state store's revision.\n# TYPE ferry_store_revision gauge\nferry_store_revision {revision}");
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response())
}

async fn openapi() -> Json<Value> {
    Json(crate::openapi::document())
}

// ---- objects ----

async fn load_objects(store: &Store) -> ApiResult<Vec<Object>> {
    Ok(crate::scheduler::load(store, OBJECTS).await?)
}

/// Parses a request's query string into `T` (unknown parameters are refused).
fn query<T: serde::de::DeserializeOwned + Default>(raw: axum::extract::RawQuery) -> ApiResult<T> {
    match raw.0 {
        None => Ok(T::default()),
        Some(q) => serde_urlencoded::from_str(&q).map_err(|e| ApiError::bad(format!("query: {e}"))),
    }
}

/// `?allow_missing=true`: declare an object before its agent or volumes exist.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectQuery {
    #[serde(default)]
    allow_missing: bool,
}

async fn list_objects(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<Object>>> {
    auth(&s, &headers, false)?;
    Ok(Json(load_objects(&s.store).await?))
}

async fn get_object(
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
async fn known_volumes(
    store: &Store,
) -> ApiResult<std::collections::BTreeMap<Name, crate::model::NodeVolumes>> {
    let agents: Vec<crate::agents::AgentRecord> =
        crate::scheduler::load(store, schema::AGENTS).await?;
    Ok(agents
        .into_iter()
        .map(|a| {
            let known = crate::model::NodeVolumes {
                volumes: a.volumes.iter().map(|v| v.name.clone()).collect(),
                complete: a.volumes_omitted == 0,
            };
            (a.node, known)
        })
        .collect())
}

/// An object from a request body: valid, and (unless `allow_missing`) naming only volumes
/// that registered agents hold.
async fn checked_object(store: &Store, o: Object, q: &ObjectQuery) -> ApiResult<Object> {
    o.validate().map_err(|e| ApiError::bad(e.to_string()))?;
    if !q.allow_missing {
        let known = known_volumes(store).await?;
        o.check_volumes_exist(|n| known.get(n).cloned())
            .map_err(|e| ApiError::bad(e.to_string()))?;
    }
    Ok(o)
}

fn encode<T: Serialize>(v: &T) -> ApiResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| ApiError::bad(format!("cannot encode: {e}")))
}

async fn create_object(
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

async fn put_object(
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

async fn delete_object(
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

// ---- plans ----

async fn load_plans(store: &Store) -> ApiResult<Vec<PlanRecord>> {
    Ok(crate::scheduler::load(store, PLANS).await?)
}

/// Validates a plan against the current inventory.
async fn checked_plan(
    store: &Store,
    raw: &Bytes,
) -> ApiResult<(PlanSpec, crate::schedule::Schedule)> {
    let spec: PlanSpec = parse(raw)?;
    let objects = load_objects(store).await?;
    let schedule = spec
        .validate(|n| objects.iter().find(|o| &o.name == n))
        .map_err(|e| ApiError::bad(e.to_string()))?;
    Ok((spec, schedule))
}

fn with_next_run(mut p: PlanRecord) -> PlanRecord {
    p.next_run = None;
    if p.paused {
        return p;
    }
    // Saved plans were validated; a schedule that no longer parses (a time zone removed
    // from the database) simply has no next run to show.
    let sched = &p.spec.schedule;
    if let Ok(every) = sched.every.parse() {
        if let Ok(s) = crate::schedule::Schedule::new(
            every,
            &sched.start,
            &sched.timezone,
            sched.end.as_deref(),
        ) {
            p.next_run = s.next_after(jiff::Timestamp::now()).map(|t| t.to_string());
        }
    }
    p
}

async fn list_plans(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<PlanRecord>>> {
    auth(&s, &headers, false)?;
    Ok(Json(
        load_plans(&s.store)
            .await?
            .into_iter()
            .map(with_next_run)
            .collect(),
    ))
}

async fn read_plan(store: &Store, name: &Name) -> ApiResult<(PlanRecord, i64)> {
    let kv = store
        .get(&schema::plan_key(name))
        .await?
        .ok_or_else(|| ApiError::not_found("plan", name.as_str()))?;
    let rec: PlanRecord = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::conflict(format!("plan {name} is unreadable: {e}")))?;
    Ok((rec, kv.mod_revision))
}

async fn get_plan(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<PlanRecord>> {
    auth(&s, &headers, false)?;
    let name = name_param("plan", &name)?;
    Ok(Json(with_next_run(read_plan(&s.store, &name).await?.0)))
}

async fn create_plan(
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

async fn put_plan(
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
    let rec = PlanRecord {
        id: cur.id,
        paused: cur.paused,
        spec,
        next_run: None,
    };
    update_plan(&s.store, &name, rev, &rec).await?;
    Ok(Json(with_next_run(rec)))
}

async fn update_plan(store: &Store, name: &Name, rev: i64, rec: &PlanRecord) -> ApiResult<()> {
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

async fn set_paused(
    s: &ApiState,
    headers: &HeaderMap,
    name: &str,
    paused: bool,
) -> ApiResult<Json<PlanRecord>> {
    auth(s, headers, true)?;
    let name = name_param("plan", name)?;
    let (mut rec, rev) = read_plan(&s.store, &name).await?;
    rec.paused = paused;
    update_plan(&s.store, &name, rev, &rec).await?;
    tracing::info!(plan = %name, paused, "plan paused or resumed");
    Ok(Json(with_next_run(rec)))
}

async fn pause_plan(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<PlanRecord>> {
    set_paused(&s, &headers, &name, true).await
}

async fn resume_plan(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<PlanRecord>> {
    set_paused(&s, &headers, &name, false).await
}

/// `?groups=keep|delete`: what becomes of a deleted plan's groups.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeletePlanQuery {
    #[serde(default)]
    groups: Option<GroupsFate>,
}

/// 409 when something of the plan is in progress.
async fn refuse_busy(store: &Store, plan: &PlanRecord, doing: &str) -> ApiResult<()> {
    match schema::busy(store, plan.id()).await? {
        None => Ok(()),
        Some(b) => Err(ApiError::conflict(format!(
            "plan {}: {}; {doing} when it is over",
            plan.spec.name,
            b.describe()
        ))),
    }
}

/// Deletes a plan. One that keeps snapshot groups is refused unless the request says what
/// becomes of them: `groups=keep` keeps them as orphaned groups (listed under
/// `/v1/orphans`, deleted there), `groups=delete` deletes them, snapshots included. Its
/// run history goes in either case.
async fn delete_plan(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    q: axum::extract::RawQuery,
) -> ApiResult<StatusCode> {
    auth(&s, &headers, true)?;
    let name = name_param("plan", &name)?;
    let q: DeletePlanQuery = query(q)?;
    let (plan, rev) = read_plan(&s.store, &name).await?;
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

/// The record at `key`, if there is a readable one.
async fn record<T: serde::de::DeserializeOwned>(store: &Store, key: &str) -> ApiResult<Option<T>> {
    Ok(store
        .get(key)
        .await?
        .and_then(|kv| serde_json::from_slice(&kv.value).ok()))
}

// ---- runs ----

async fn load_runs(store: &Store, prefix: &str) -> ApiResult<Vec<crate::scheduler::RunRecord>> {
    let mut out: Vec<crate::scheduler::RunRecord> = crate::scheduler::load(store, prefix).await?;
    out.sort_by(|a, b| a.created.cmp(&b.created));
    Ok(out)
}

async fn all_runs(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<crate::scheduler::RunRecord>>> {
    auth(&s, &headers, false)?;
    Ok(Json(load_runs(&s.store, RUNS).await?))
}

async fn plan_runs(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<crate::scheduler::RunRecord>>> {
    auth(&s, &headers, false)?;
    let name = name_param("plan", &name)?;
    let (plan, _) = read_plan(&s.store, &name).await?;
    Ok(Json(
        load_runs(&s.store, &schema::runs_of(plan.id())).await?,
    ))
}

/// A run with its report per object and volume.
#[derive(Debug, Serialize)]
struct RunDetail {
    #[serde(flatten)]
    record: crate::scheduler::RunRecord,
    report: crate::scheduler::RunReport,
    /// While it runs: bytes the agents' current tasks have done of what they expect.
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<Progress>,
}

/// Live progress of a run's or a job's tasks (agents report it about once a second).
#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Progress {
    done_bytes: u64,
    total_bytes: u64,
}

/// The progress the agents reported for tasks whose ids start with `prefix` (`<run>.`).
fn progress_of(links: &crate::agents::Links, prefix: &str) -> Option<Progress> {
    let p = links.progress.lock().ok()?;
    let mut out: Option<Progress> = None;
    for (id, (done, total)) in p.iter() {
        if id.starts_with(prefix) {
            let o = out.get_or_insert_with(Progress::default);
            o.done_bytes += done;
            o.total_bytes += total;
        }
    }
    out
}

async fn get_run(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((name, run)): Path<(String, String)>,
) -> ApiResult<Json<RunDetail>> {
    auth(&s, &headers, false)?;
    let name = name_param("plan", &name)?;
    let run = name_param("run", &run)?;
    let (plan, _) = read_plan(&s.store, &name).await?;
    let record: crate::scheduler::RunRecord = record(&s.store, &schema::run_key(plan.id(), &run))
        .await?
        .ok_or_else(|| ApiError::not_found(&format!("run of plan {name}"), run.as_str()))?;
    let report = record.report();
    let progress = if record.run.step.is_final() {
        None
    } else {
        progress_of(&s.links, &format!("{}.", record.run.id))
    };
    Ok(Json(RunDetail {
        record,
        report,
        progress,
    }))
}

/// Starts a run of the plan now (paused or not), outside its schedule. Refused (409) while
/// a run, a rollback or a removal of the plan is in progress.
async fn run_now(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<crate::scheduler::RunRecord>)> {
    auth(&s, &headers, true)?;
    let name = name_param("plan", &name)?;
    let (plan, _) = read_plan(&s.store, &name).await?;
    refuse_busy(&s.store, &plan, "start another").await?;
    let term = s.leading()?;
    let objects = load_objects(&s.store).await?;
    let rec = crate::scheduler::new_run(
        &plan,
        &objects,
        None,
        term.generation,
        jiff::Timestamp::now(),
    );
    if !crate::scheduler::store_run(&s.store, &rec, &term).await? {
        // Lost a race with another start: say which.
        refuse_busy(&s.store, &plan, "start another").await?;
        return Err(ApiError::conflict(format!(
            "a run of plan {name} was started at the same moment; see ferry plans runs {name}"
        )));
    }
    tracing::info!(plan = %name, run = %rec.run.id, "run started by request");
    Ok((StatusCode::ACCEPTED, Json(rec)))
}

// ---- groups ----

async fn plan_groups(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<GroupRecord>>> {
    auth(&s, &headers, false)?;
    let name = name_param("plan", &name)?;
    let (plan, _) = read_plan(&s.store, &name).await?;
    Ok(Json(load_groups(&s.store, plan.id()).await?))
}

async fn load_groups(store: &Store, plan_id: &Name) -> ApiResult<Vec<GroupRecord>> {
    let mut out: Vec<GroupRecord> =
        crate::scheduler::load(store, &schema::groups_of(plan_id)).await?;
    out.sort_by(|a, b| a.created.cmp(&b.created));
    Ok(out)
}

async fn get_group(
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

// ---- rollback ----

/// What a rollback request says.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    /// The kept group to roll back to.
    group: Name,
    /// Only these objects of the plan (default: all).
    #[serde(default)]
    objects: Option<Vec<Name>>,
}

async fn plan_rollbacks(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<GroupJob>>> {
    auth(&s, &headers, false)?;
    let name = name_param("plan", &name)?;
    let (plan, _) = read_plan(&s.store, &name).await?;
    let mut out: Vec<GroupJob> =
        crate::scheduler::load(&s.store, &schema::rollbacks_of(plan.id())).await?;
    out.sort_by(|a, b| a.created.cmp(&b.created));
    Ok(Json(out))
}

/// A rollback with, while it runs, the agents' progress.
#[derive(Debug, Serialize)]
struct JobDetail {
    #[serde(flatten)]
    job: GroupJob,
    #[serde(skip_serializing_if = "Option::is_none")]
    progress: Option<Progress>,
}

async fn get_rollback(
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

/// Rolls the plan's objects (or some) back to one of its kept groups. Only volumes the plan
/// protects now are touched, whatever else the group holds. Refused while a run, a rollback
/// or a removal of the plan is in progress.
async fn start_rollback(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    raw: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<(StatusCode, Json<GroupJob>)> {
    auth(&s, &headers, true)?;
    let name = name_param("plan", &name)?;
    let req: RollbackRequest = parse(&body(raw)?)?;
    let (plan, _) = read_plan(&s.store, &name).await?;
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
    let protected: std::collections::BTreeSet<crate::model::VolumeRef> = names
        .iter()
        .filter_map(|n| objects.iter().find(|o| &o.name == n))
        .flat_map(|o| o.protected_volumes().into_iter().cloned())
        .collect();
    let mut volumes: std::collections::BTreeMap<Name, Vec<Name>> = Default::default();
    for (node, snap) in &group.snapshots {
        let v = crate::model::VolumeRef {
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
    let spec = crate::group_job::JobSpec {
        id: id.clone(),
        plan: name.clone(),
        plan_id: plan_id.clone(),
        group: req.group.clone(),
        action: crate::group_job::JobAction::Rollback,
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

// ---- orphans: deleted plans' groups ----

/// A deleted plan's kept groups, as listed.
#[derive(Debug, Serialize)]
struct Orphan {
    #[serde(flatten)]
    record: OrphanRecord,
    /// Its groups still kept, oldest first.
    groups: Vec<GroupRecord>,
    /// A removal of one of its groups in progress.
    #[serde(skip_serializing_if = "Option::is_none")]
    removing: Option<Name>,
}

async fn list_orphans(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<Orphan>>> {
    auth(&s, &headers, false)?;
    let markers: Vec<OrphanRecord> = crate::scheduler::load(&s.store, schema::ORPHANS).await?;
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
    Ok(Json(out))
}

/// Deletes a deleted plan's kept groups, snapshots included (202: the executor deletes them
/// group by group; they leave `GET /v1/orphans` as they go).
async fn delete_orphans(
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

// ---- agents and volumes ----

async fn load_agents(store: &Store) -> ApiResult<Vec<crate::agents::AgentRecord>> {
    let now = jiff::Timestamp::now();
    let mut out: Vec<crate::agents::AgentRecord> =
        crate::scheduler::load(store, schema::AGENTS).await?;
    for a in &mut out {
        a.status = a.status_at(now).to_string();
    }
    Ok(out)
}

async fn list_agents(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<crate::agents::AgentRecord>>> {
    auth(&s, &headers, false)?;
    Ok(Json(load_agents(&s.store).await?))
}

/// A volume as the API lists it: where it is, what the agent says of it, and which objects
/// name it.
#[derive(Debug, Serialize)]
struct VolumeView {
    node: Name,
    #[serde(flatten)]
    volume: ferry_wire::control::VolumeReport,
    used_by: Vec<Name>,
}

async fn volume_views(store: &Store, node: Option<&Name>) -> ApiResult<Vec<VolumeView>> {
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

async fn list_volumes(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> ApiResult<Json<Vec<VolumeView>>> {
    auth(&s, &headers, false)?;
    Ok(Json(volume_views(&s.store, None).await?))
}

async fn node_volumes(
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
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VolumeRequest {
    name: Name,
    /// Bytes, or a size such as "10G", "10GB" or "1.5TiB".
    size: Value,
    #[serde(default)]
    block_size: Option<u64>,
}

/// How long a volume task may take on the agent.
const VOLUME_TASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Sends a volume task to a connected agent and waits for its outcome: the result, or the
/// error the agent's failure maps to.
async fn volume_task(
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
    let t0 = std::time::Instant::now();
    let state = loop {
        if let Some(st) = s.links.take_final(id.as_str()) {
            break st;
        }
        if t0.elapsed() > VOLUME_TASK_TIMEOUT {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!(
                    "agent {node} did not answer within {} s; it may still do it: look again \
                     with GET /v1/agents/{node}/volumes",
                    VOLUME_TASK_TIMEOUT.as_secs()
                ),
            ));
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

/// Creates a volume on a connected agent (a task, answered when the agent reports).
async fn create_volume(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(node): Path<String>,
    raw: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
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
            Json(json!({ "node": node, "volume": volume, "size": size })),
        )),
        other => Err(unexpected(&node, &other)),
    }
}

fn unexpected(node: &Name, r: &ferry_wire::task::TaskResult) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "agent_failed",
        format!("agent {node} answered {r:?}"),
    )
}

/// `?force=true`: delete a volume's snapshots with it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteVolumeQuery {
    #[serde(default)]
    force: bool,
}

/// Deletes a volume on a connected agent. Refused while an object names it; one with
/// snapshots needs `force=true`, which deletes them (groups that hold them can no longer
/// roll that volume back).
async fn delete_volume(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((node, volume)): Path<(String, String)>,
    q: axum::extract::RawQuery,
) -> ApiResult<Json<Value>> {
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
        ferry_wire::task::TaskResult::VolumeDeleted { volume, snapshots } => Ok(Json(
            json!({ "node": node, "volume": volume, "snapshots_deleted": snapshots }),
        )),
        other => Err(unexpected(&node, &other)),
    }
}

// ---- status ----

async fn status(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> ApiResult<Json<crate::status::Status>> {
    auth(&s, &headers, false)?;
    let plans = load_plans(&s.store).await?;
    let runs = load_runs(&s.store, RUNS).await?;
    let agents = load_agents(&s.store).await?;
    let orphans = s.store.list(schema::ORPHANS).await?.len();
    let mut busy = std::collections::BTreeMap::new();
    for kv in s.store.list(schema::ACTIVE).await? {
        if let (Some(id), Ok(b)) = (
            schema::last_name(&kv.key),
            serde_json::from_slice::<Busy>(&kv.value),
        ) {
            busy.insert(id, b);
        }
    }
    let plans: Vec<PlanRecord> = plans.into_iter().map(with_next_run).collect();
    Ok(Json(crate::status::summarize(
        &plans,
        &runs,
        &busy,
        &agents,
        orphans,
        jiff::Timestamp::now(),
    )))
}
