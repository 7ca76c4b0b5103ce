//! `ferry-controller`: the control plane of one site. The folders are its layers, each
//! using only those before it:
//!
//! * [`policy`]: objects and plans with their validation, schedules, retention (pure);
//! * [`machines`]: runs and group jobs as sans-IO state machines;
//! * [`state`]: the state store (etcd or embedded redb), what is stored where
//!   ([`state::schema`]), and its migrations;
//! * [`daemon`]: the IO shells (scheduler, executor, agent links, leadership, forwarding)
//!   and the process that runs them;
//! * [`http`]: the HTTP API, one file per resource, and its OpenAPI document;
//! * `bin/ferry/`: the `ferry` CLI, a client of the HTTP API only.

pub mod daemon;
pub mod exit;
pub mod http;
pub mod machines;
pub mod policy;
pub mod process;
pub mod state;
