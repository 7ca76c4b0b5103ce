//! The sans-IO state machines the daemon drives: a plan's [`run`] (with a [`backup`] part
//! per target site), the per-volume work on one group ([`group_job`]: rollback, removal),
//! and [`recovery`] from a kept group (rebuild, drill, verification). Fed reports and the time, asked what to
//! do next; persisted as they are by the daemon before it acts on what they say.

pub mod backup;
#[cfg(test)]
mod backup_sim;
pub mod group_job;
pub mod recovery;
pub mod run;
