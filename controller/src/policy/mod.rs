//! Policy: pure functions of what users ask for, table-tested. What objects and plans are
//! and when they are valid ([`model`]), when a plan runs ([`schedule`]), what retention
//! keeps ([`retention`]), what a recovery from a group makes and how it names it
//! ([`recovery`]), when a recovery point is too old ([`rpo`]). Nothing here reads a clock, a socket or the store.

pub mod model;
pub mod recovery;
pub mod retention;
pub mod rpo;
pub mod schedule;
