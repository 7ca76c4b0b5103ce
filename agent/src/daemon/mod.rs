//! `ferry-agent serve`: the [`server`] (the QUIC endpoint for paired sites, whose sessions
//! are replication's), the [`control`] link to the site controller, and the at-most-once
//! task ledger ([`tasks`]) that runs what the controller sends, and the paired sites
//! ([`peers`]) from the configuration and the controller.

pub mod control;
pub mod peers;
pub mod server;
pub mod tasks;
