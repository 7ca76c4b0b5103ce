//! Protocol messages shared by ferry processes, and the version handshake.
//!
//! Every connection starts with each side sending a [`Hello`]; both then use the highest
//! version in the overlap of their ranges ([`negotiate`]), or close the connection with the
//! reason. Later protocol messages (replication, tasks) are added here as plain serde types.

use serde::{Deserialize, Serialize};

use crate::name::Name;

/// Newest protocol version this build speaks. 6: a session opens in one round trip
/// (`repl::Request::Open`: the receiver seeds a new mirror and picks the base among the
/// sender's candidates, where the sender asked what the mirror held, then to seed it, then
/// to begin); 5: a sender asks the receiver to seed a new
/// mirror from a local snapshot with the same root (then `repl::Request::Seed`), a target places
/// mirrors where such snapshots are (`site::MirrorVolume::seeds`), and agents run rebuild,
/// verify and check tasks; 4: agents say where paired sites reach them,
/// controllers push paired sites and replicate tasks, and controllers of paired sites talk
/// ([`crate::site`]); 3: a replication error carries its class, and
/// a `Begin` of a snapshot the mirror has committed with the same root is answered
/// `Committed`; 2: resumable sessions (`Begun { resumed }`) and zstd block payloads; 1 was
/// never released.
pub const PROTOCOL_VERSION: u32 = 6;
/// Oldest protocol version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u32 = 6;
/// Limit on an encoded [`Hello`].
pub const HELLO_LIMIT: usize = 4096;

/// First message on every connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub min_version: u32,
    pub max_version: u32,
    /// The sender's node name.
    pub node: Name,
    /// The sender's site name.
    pub site: Name,
}

impl Hello {
    pub fn new(node: Name, site: Name) -> Self {
        Hello {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            node,
            site,
        }
    }
}

/// Limit on one encoded [`Control`] message.
pub const CONTROL_LIMIT: usize = 64 << 10;

/// Messages on a connection's control stream after the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// Liveness and round-trip check; answered with [`Control::Pong`].
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
    /// The sender refuses the request and says why.
    Error {
        code: u32,
        message: String,
    },
}

/// Application error codes carried when a connection is closed.
pub mod close {
    /// Normal end of a session.
    pub const DONE: u32 = 0;
    /// The peer broke the protocol (bad frame, bad message, out of order).
    pub const PROTOCOL: u32 = 1;
    /// The peer's identity is not acceptable.
    pub const IDENTITY: u32 = 2;
    /// No common protocol version.
    pub const VERSION: u32 = 3;
    /// The process is shutting down.
    pub const SHUTDOWN: u32 = 4;
    /// This controller is not the site's leader; the reason carries the leader's agent
    /// endpoint (`HOST:PORT`) when it is known.
    pub const NOT_LEADER: u32 = 5;
}

/// No common protocol version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no common protocol version: we speak {our_min}..={our_max}, the peer {their_min}..={their_max}")]
pub struct VersionError {
    pub our_min: u32,
    pub our_max: u32,
    pub their_min: u32,
    pub their_max: u32,
}

/// The version both sides use: the highest one both speak.
pub fn negotiate(ours: &Hello, theirs: &Hello) -> Result<u32, VersionError> {
    let lo = ours.min_version.max(theirs.min_version);
    let hi = ours.max_version.min(theirs.max_version);
    if lo <= hi && theirs.min_version <= theirs.max_version {
        Ok(hi)
    } else {
        Err(VersionError {
            our_min: ours.min_version,
            our_max: ours.max_version,
            their_min: theirs.min_version,
            their_max: theirs.max_version,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    fn hello(min: u32, max: u32) -> Hello {
        Hello {
            min_version: min,
            max_version: max,
            node: Name::new("n").expect("name"),
            site: Name::new("s").expect("name"),
        }
    }

    #[test]
    fn control_round_trip() {
        for m in [
            Control::Ping { nonce: 7 },
            Control::Pong { nonce: u64::MAX },
            Control::Error {
                code: 2,
                message: "no".into(),
            },
        ] {
            let b = codec::encode(&m).expect("encode");
            assert_eq!(
                codec::decode::<Control>(&b, CONTROL_LIMIT).expect("decode"),
                m
            );
        }
        assert!(codec::decode::<Control>(&[9, 9, 9], CONTROL_LIMIT).is_err());
    }

    #[test]
    fn negotiate_table() {
        let cases = [
            ((1, 1), (1, 1), Some(1)),
            ((1, 3), (2, 5), Some(3)),
            ((2, 5), (1, 3), Some(3)),
            ((1, 1), (2, 2), None),
            ((3, 4), (1, 2), None),
            ((1, 3), (3, 1), None),
        ];
        for (a, b, want) in cases {
            let got = negotiate(&hello(a.0, a.1), &hello(b.0, b.1)).ok();
            assert_eq!(got, want, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn hello_codec_validates_names() {
        let h = hello(1, 1);
        let b = codec::encode(&h).expect("encode");
        assert_eq!(codec::decode::<Hello>(&b, HELLO_LIMIT).expect("decode"), h);
        // Same bytes with the node name replaced by "../x" must be refused.
        #[derive(Serialize)]
        struct RawHello<'a> {
            min_version: u32,
            max_version: u32,
            node: &'a str,
            site: &'a str,
        }
        let raw = RawHello {
            min_version: 1,
            max_version: 1,
            node: "../x",
            site: "s",
        };
        let b = codec::encode(&raw).expect("encode");
        assert!(codec::decode::<Hello>(&b, HELLO_LIMIT).is_err());
    }
}
