//! Replication of snapshots between agents of paired sites: the two IO shells around the
//! sans-IO cores of `ferry_wire::repl`: [`send`] (the sending side: peers, sessions, the
//! reader pipeline) and [`receive`] (the receiving side: offers resolved against what the
//! node holds, blocks checked and written, the journal, the commit), with [`ratelimit`]'s
//! token bucket behind bandwidth limits and [`paths`]' start windows learned per peer.

pub mod paths;
pub mod ratelimit;
pub mod receive;
pub mod send;

use std::sync::atomic::{AtomicUsize, Ordering};

/// Transfer sessions moving data through this process now, sending or receiving.
static MOVING: AtomicUsize = AtomicUsize::new(0);

/// A transfer session in progress, counted while it lives: background reads (the
/// verification of kept snapshots) wait while any is ([`moving`]), so they never compete
/// with transfers for the disk.
#[derive(Debug)]
pub struct Moving(());

impl Moving {
    pub fn start() -> Moving {
        MOVING.fetch_add(1, Ordering::Relaxed);
        Moving(())
    }
}

impl Drop for Moving {
    fn drop(&mut self) {
        MOVING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How many transfer sessions are moving data now.
pub fn moving() -> usize {
    MOVING.load(Ordering::Relaxed)
}
