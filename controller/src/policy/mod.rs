//! Policy: pure functions of what users ask for, table-tested. What objects and plans are
//! and when they are valid ([`model`]), when a plan runs ([`schedule`]), what retention
//! keeps ([`retention`]). Nothing here reads a clock, a socket or the store.

pub mod model;
pub mod retention;
pub mod schedule;
