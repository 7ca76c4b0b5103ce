//! Replication of snapshots between agents of paired sites: the two IO shells around the
//! sans-IO cores of `ferry_wire::repl`: [`send`] (the sending side: peers, sessions, the
//! reader pipeline) and [`receive`] (the receiving side: offers resolved against what the
//! node holds, blocks checked and written, the journal, the commit), with [`ratelimit`]'s
//! token bucket behind bandwidth limits.

pub mod ratelimit;
pub mod receive;
pub mod send;
