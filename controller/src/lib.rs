//! `ferry-controller`: the control plane of one site (see `../shared/design/blueprint.md`,
//! "Control plane"). Built so far: the state store ([`store`]), one interface over etcd and
//! an embedded redb file, tested with one suite against both.

// The hand-written OpenAPI document is one large `json!` literal.
#![recursion_limit = "512"]

pub mod agents;
pub mod api;
pub mod executor;
pub mod exit;
pub mod group_job;
pub mod leader;
pub mod model;
pub mod openapi;
pub mod peer;
pub mod retention;
pub mod run;
pub mod schedule;
pub mod scheduler;
pub mod schema;
pub mod status;
pub mod store;
