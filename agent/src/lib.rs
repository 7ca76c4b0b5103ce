//! `ferry-agent`: the node agent's library.
//!
//! * [`store`]: volumes (owned images or adopted files), snapshots, group snapshots, rollback,
//!   clone, crash recovery; behind the [`store::Backend`] trait with the `reflink` and `copy`
//!   backends.
//! * [`manifest`]: full and incremental manifests, verification.
//! * [`engine`]: the io_uring / pread read pipeline feeding hashing threads.
//! * [`diff`]: changed ranges between snapshots from FIEMAP (pure comparison + windowed driver).
//! * [`fsx`]: the Linux file interfaces used (FICLONE, FIEMAP, SEEK_DATA, flock, fsync).
//! * [`replication`]: sending and receiving snapshots between agents of paired sites.
//! * [`daemon`]: `serve`: the QUIC endpoint, the controller link, the task ledger.
//! * [`hooks`], [`progress`]: freeze hooks around snapshots; a running task's progress.
//! * [`config`]: the agent's TOML configuration; [`net`], [`pki`]: `ferry-net` re-exported.
//!
//! The agent knows nothing of plans, schedules or sites: it does what it is told to volumes.

pub mod config;
pub mod daemon;
pub mod diff;
pub mod engine;
pub mod error;
pub mod fsx;
pub mod hooks;
pub mod manifest;
pub mod net;
pub mod pki;
pub mod progress;
pub mod replication;
pub mod store;
pub mod verify;

pub use config::AgentConfig;
pub use error::StoreError;
pub use store::Store;
