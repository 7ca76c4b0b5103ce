//! The link between controllers of paired sites. The source site's leader connects to the
//! target site's controllers (QUIC, mutual TLS: each side trusts the other's site CA once
//! both have paired, the ferry handshake), is pointed at the target's leader by a follower
//! (`close::NOT_LEADER`), and then sends one [`SiteRequest`] per bidirectional stream,
//! answered by one [`SiteResponse`]. Every request is idempotent: the source repeats one it
//! did not hear answered, and the target's answer is the same.
//!
//! A backup run asks a target to **prepare** (ensure the foreign plan that owns the mirrors
//! there, and where each protected volume's mirror lives), has its agents send the
//! snapshots to those mirrors, then asks the target to **record** the mirror snapshot group.
//! The target keeps its own number of groups.

use serde::{Deserialize, Serialize};

use crate::name::Name;

/// Limit on one encoded request or response.
pub const SITE_LIMIT: usize = 4 << 20;
/// Most volumes one plan mirrors at a target.
pub const MAX_MIRROR_VOLUMES: usize = 4096;
/// Longest description of the source's objects ([`SiteRequest::Prepare::objects`]).
pub const MAX_OBJECTS_JSON: usize = 2 << 20;

/// Most roots a [`MirrorVolume`] offers as seeds.
pub const MAX_SEEDS: usize = 16;

/// A protected volume of the source, as the target places its mirror.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorVolume {
    /// The source node and volume.
    pub node: Name,
    pub volume: Name,
    pub size: u64,
    /// Manifest roots (hex) of snapshots the source volume holds that the target may hold
    /// too (a volume rebuilt from a mirror holds the mirror's snapshot), at most
    /// [`MAX_SEEDS`]: a new mirror is placed on a node holding one, so that its agent
    /// seeds the mirror from it and only what changed since travels.
    #[serde(default)]
    pub seeds: Vec<String>,
}

/// Where the target keeps the mirror of a source volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The source node and volume.
    pub node: Name,
    pub volume: Name,
    /// The target node and the mirror volume's name there.
    pub mirror_node: Name,
    pub mirror: Name,
    /// Where the source's agents reach the target node's replication endpoint.
    pub address: String,
}

/// One mirror snapshot of a recorded group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorSnapshot {
    pub mirror_node: Name,
    pub mirror: Name,
    /// The source volume it mirrors.
    pub node: Name,
    pub volume: Name,
    pub size: u64,
    /// The manifest root both sides hold, hex.
    pub root: String,
}

/// What a source controller asks a target controller. The source site is who the TLS
/// identity says, never a field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SiteRequest {
    /// Reachability and round-trip time; answered [`SiteResponse::Pong`].
    Ping { nonce: u64 },
    /// Ensure the foreign plan of source plan `plan_id` (named `plan` there) with this
    /// retention, and a mirror for each volume (stable across runs while its node lives).
    Prepare {
        plan: Name,
        plan_id: Name,
        retention: u32,
        volumes: Vec<MirrorVolume>,
        /// The source's objects of the plan and the virtual-switch map, as JSON in the
        /// controllers' own model (opaque to this crate), for the mirror objects.
        objects: Vec<u8>,
    },
    /// Record the mirror snapshot group `group` of the foreign plan of `plan_id` (every
    /// mirror committed with the source's root), then prune by the target's retention.
    Record {
        plan: Name,
        plan_id: Name,
        group: Name,
        /// When the source took it (RFC 3339).
        created: String,
        snapshots: Vec<MirrorSnapshot>,
    },
}

/// A target controller's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SiteResponse {
    Pong {
        nonce: u64,
    },
    Prepared {
        /// The foreign plan's name at the target.
        foreign_plan: Name,
        placements: Vec<Placement>,
    },
    Recorded {
        /// Mirror groups the foreign plan keeps now.
        groups: u32,
    },
    /// Refused: `code` as in the HTTP API's errors (`not_paired`, `no_space`, `invalid`,
    /// `conflict`, `unavailable`).
    Error {
        code: String,
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn site_messages_round_trip() {
        let n = |s: &str| Name::new(s).expect("name");
        let reqs = [
            SiteRequest::Ping { nonce: 7 },
            SiteRequest::Prepare {
                plan: n("web"),
                plan_id: n("web.0123456789ab"),
                retention: 3,
                volumes: vec![MirrorVolume {
                    node: n("n1"),
                    volume: n("v1"),
                    size: 1 << 30,
                    seeds: vec!["ab".repeat(32)],
                }],
                objects: b"{}".to_vec(),
            },
            SiteRequest::Record {
                plan: n("web"),
                plan_id: n("web.0123456789ab"),
                group: n("g1"),
                created: "2026-12-02T00:00:00Z".into(),
                snapshots: Vec::new(),
            },
        ];
        for r in reqs {
            let b = codec::encode(&r).expect("encode");
            assert_eq!(
                codec::decode::<SiteRequest>(&b, SITE_LIMIT).expect("decode"),
                r
            );
        }
        let resp = SiteResponse::Error {
            code: "not_paired".into(),
            message: "x".into(),
        };
        let b = codec::encode(&resp).expect("encode");
        assert_eq!(
            codec::decode::<SiteResponse>(&b, SITE_LIMIT).expect("decode"),
            resp
        );
        assert!(codec::decode::<SiteRequest>(&[200, 1, 2], SITE_LIMIT).is_err());
    }
}
