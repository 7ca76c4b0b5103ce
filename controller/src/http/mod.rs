//! The HTTP API (`/v1`, JSON): the router and the state its handlers share here; one file per
//! resource (`objects`, `plans`, `runs`, `groups`, `rollbacks`, `orphans`, `agents` with
//! volumes, `sites` with the plans' targets, `status`); `auth` (bearer tokens with admin and read-only roles), `error` (the
//! one error shape and the input helpers), `forward` (a follower's requests to the leader),
//! `metrics`, `page` (every list's pages and the slots bounding concurrent lists), and
//! `openapi` (the document at `/v1/openapi.json`).
//!
//! Every bad request gets a 4xx with `{"error": {"code", "message"}}` saying what is wrong
//! (validation errors name the field); a store failure is a 503, never a panic. Bodies are
//! parsed by the handlers, not by an extractor, so malformed JSON gets the same error shape.

mod agents;
mod auth;
mod error;
mod forward;
mod groups;
mod metrics;
mod objects;
pub mod openapi;
mod orphans;
pub mod page;
mod plans;
mod read;
mod recoveries;
mod rollbacks;
mod runs;
pub mod server;
pub mod sites;
pub mod status;

use auth::auth;
pub use auth::{Role, TokenEntry};
pub use error::ApiError;
use error::*;
use page::{Page, PageQuery, Paged};
use read::*;
pub use runs::{ObjectReport, RunReport, VolumeRunReport};

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ferry_wire::Name;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::machines::group_job::GroupJob;
use crate::policy::model::{Object, PlanSpec};
use crate::state::schema::{
    self, Busy, GroupRecord, GroupsFate, OrphanRecord, PlanRecord, OBJECTS, PLANS, RUNS,
};
use crate::state::{Compare, Op, Store, StoreError, Txn};

/// Largest request body.
pub const MAX_BODY: usize = 1 << 20;

/// Shared state of the API handlers.
#[derive(Debug)]
pub struct ApiState {
    pub store: Store,
    pub tokens: Vec<TokenEntry>,
    /// Leader (with its term, stamped on the tasks of runs it starts and fencing its writes)
    /// or follower (forwarding requests to the leader).
    pub role: tokio::sync::watch::Receiver<crate::daemon::leader::Role>,
    /// The link to the leader, for a follower (several controllers on etcd).
    pub forwarder: Option<Arc<crate::daemon::forwarding::Forwarder>>,
    /// Request counters for `/metrics`: (route, status) -> (count, seconds).
    pub requests: std::sync::Mutex<std::collections::BTreeMap<(String, u16), (u64, f64)>>,
    /// Links to the connected agents (to create volumes on them).
    pub links: Arc<crate::daemon::agents::Links>,
    /// Slots of the requests that read many records (lists, status, metrics).
    pub lists: Arc<tokio::sync::Semaphore>,
    /// When this controller's certificate (of its agent endpoint) stops being valid (Unix
    /// seconds), for `/metrics`.
    pub certificate_expires: std::sync::OnceLock<i64>,
    /// The paired sites' links (set when the controller has an agent endpoint).
    pub sites: std::sync::OnceLock<Arc<crate::daemon::sites::Sites>>,
    /// What this site does about recovery (which sites' drill checks run, verification).
    pub recovery: crate::daemon::recoveries::RecoveryConfig,
}

impl ApiState {
    pub fn new(
        store: Store,
        tokens: Vec<TokenEntry>,
        role: tokio::sync::watch::Receiver<crate::daemon::leader::Role>,
        forwarder: Option<Arc<crate::daemon::forwarding::Forwarder>>,
        links: Arc<crate::daemon::agents::Links>,
    ) -> ApiState {
        ApiState {
            store,
            tokens,
            role,
            forwarder,
            requests: Default::default(),
            links,
            lists: Arc::new(tokio::sync::Semaphore::new(page::LIST_SLOTS)),
            certificate_expires: std::sync::OnceLock::new(),
            sites: std::sync::OnceLock::new(),
            recovery: Default::default(),
        }
    }

    /// This controller's term, if it leads.
    pub fn term(&self) -> Option<crate::daemon::leader::Term> {
        match &*self.role.borrow() {
            crate::daemon::leader::Role::Leader(t) => Some(t.clone()),
            crate::daemon::leader::Role::Follower => None,
        }
    }

    /// The term, for a handler that only a leader runs (followers forward them).
    fn leading(&self) -> ApiResult<crate::daemon::leader::Term> {
        self.term().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_leader",
                "this controller is not the leader (an election is under way); retry shortly",
            )
        })
    }
}

/// The API's routes over `state`.
pub fn router(state: Arc<ApiState>) -> Router {
    use axum::routing::delete;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/status", get(status::status))
        .route(
            "/v1/objects",
            get(objects::list_objects).post(objects::create_object),
        )
        .route(
            "/v1/objects/{name}",
            get(objects::get_object)
                .put(objects::put_object)
                .delete(objects::delete_object),
        )
        .route("/v1/plans", get(plans::list_plans).post(plans::create_plan))
        .route(
            "/v1/plans/{name}",
            get(plans::get_plan)
                .put(plans::put_plan)
                .delete(plans::delete_plan),
        )
        .route("/v1/plans/{name}/pause", post(plans::pause_plan))
        .route("/v1/plans/{name}/resume", post(plans::resume_plan))
        .route("/v1/plans/{name}/run", post(runs::run_now))
        .route("/v1/plans/{name}/runs", get(runs::plan_runs))
        .route("/v1/plans/{name}/runs/{run}", get(runs::get_run))
        .route("/v1/runs", get(runs::all_runs))
        .route("/v1/plans/{name}/groups", get(groups::plan_groups))
        .route("/v1/plans/{name}/groups/{group}", get(groups::get_group))
        .route(
            "/v1/plans/{name}/rollbacks",
            get(rollbacks::plan_rollbacks).post(rollbacks::start_rollback),
        )
        .route(
            "/v1/plans/{name}/rollbacks/{id}",
            get(rollbacks::get_rollback),
        )
        .route("/v1/orphans", get(orphans::list_orphans))
        .route("/v1/orphans/{plan_id}", delete(orphans::delete_orphans))
        .route("/v1/agents", get(agents::list_agents))
        .route(
            "/v1/agents/{node}/volumes",
            get(agents::node_volumes).post(agents::create_volume),
        )
        .route(
            "/v1/agents/{node}/volumes/{volume}",
            delete(agents::delete_volume),
        )
        .route("/v1/volumes", get(agents::list_volumes))
        .route("/v1/site", get(sites::this_site))
        .route("/v1/sites", get(sites::list_sites).post(sites::add_site))
        .route(
            "/v1/sites/{name}",
            get(sites::get_site).delete(sites::remove_site),
        )
        .route(
            "/v1/plans/{name}/rebuilds",
            get(recoveries::plan_rebuilds).post(recoveries::start_rebuild),
        )
        .route(
            "/v1/plans/{name}/rebuilds/{id}",
            get(recoveries::get_rebuild),
        )
        .route(
            "/v1/plans/{name}/drills",
            get(recoveries::plan_drills).post(recoveries::start_drill),
        )
        .route("/v1/plans/{name}/drills/{id}", get(recoveries::get_drill))
        .route(
            "/v1/plans/{name}/groups/{group}/verify",
            post(recoveries::start_verify),
        )
        .route(
            "/v1/plans/{name}/verifications",
            get(recoveries::plan_verifications),
        )
        .route(
            "/v1/plans/{name}/verifications/{id}",
            get(recoveries::get_verification),
        )
        .route("/v1/plans/{name}/targets", get(sites::plan_targets))
        .route("/v1/plans/{name}/mirrors", get(sites::plan_mirrors))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(server::body_deadline))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            forward::forward,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "healthy: the store, its revision, this controller's role and the leader", body = serde_json::Value)), security(()))]
async fn healthz(State(s): State<Arc<ApiState>>) -> ApiResult<Json<Value>> {
    s.store
        .health()
        .map_err(|why| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", why))?;
    let revision = s.store.revision().await?;
    let store = match s.store {
        Store::Etcd(_) => "etcd",
        Store::Embedded(_) => "embedded",
    };
    let leader = crate::daemon::leader::current(&s.store).await?;
    let (role, generation) = match s.term() {
        Some(t) => ("leader", Some(t.generation)),
        None => ("follower", None),
    };
    Ok(Json(
        json!({ "ok": true, "store": store, "revision": revision, "role": role,
        "generation": generation, "leader": leader }),
    ))
}

#[utoipa::path(get, path = "/v1/openapi.json", responses((status = 200, description = "this document", body = serde_json::Value)), security(()))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi::document())
}
