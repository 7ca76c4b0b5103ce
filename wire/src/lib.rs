//! `ferry-wire`: the vocabulary every ferry process shares.
//!
//! * [`name`]: validated identifiers for volumes, snapshots and nodes. A [`name::Name`] can never
//!   be a path: it has no `/`, never starts with `.`, and is at most 128 bytes.
//! * [`hash`]: block hashing. A block's hash is the plain BLAKE3 hash of its bytes, so any
//!   tool (`b3sum`) can check it. Blocks are hashed as a tree of 16 KiB *leaves*
//!   ([`hash::LEAF_SIZE`]); the leaves' chaining values are kept beside the manifest so that a
//!   block whose data changed only in part can be re-hashed by reading only the changed leaves.
//! * [`hashfile`]: the on-disk format of manifests (one hash per block plus a root over them) and
//!   of leaf indexes (one chaining value per leaf). A fixed 128-byte header (checked at compile
//!   time) with a magic, a version and a kind, then fixed-size entries. Read through `memmap2`,
//!   verified on open.
//! * [`codec`]: the one place that knows the serialisation (bincode 2.0.1); every decode is
//!   bounded by a size limit.
//! * [`frame`]: length-prefixed framing, sans-IO, refusing oversized frames before allocating.
//! * [`msg`]: protocol messages and the version handshake.
//! * [`repl`]: the replication protocol and its sans-IO sender and receiver cores.
//! * [`journal`]: the receive journal's format (what an interrupted transfer already wrote).
//! * [`blockindex`]: the receiver's on-disk dedup index (a hash table of 4 KiB buckets).
//! * [`site`]: the link between controllers of paired sites (backup plans).
//!
//! This crate knows nothing of sockets, async runtimes, or the agent's directory layout.

pub mod blockindex;
pub mod codec;
pub mod control;
pub mod frame;
pub mod hash;
pub mod hashfile;
pub mod journal;
pub mod msg;
pub mod name;
pub mod repl;
pub mod site;
pub mod task;
pub mod units;

pub use hash::{BlockHash, LEAF_SIZE};
pub use name::Name;
