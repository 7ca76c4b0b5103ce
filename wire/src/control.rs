//! The agent-controller link: an agent connects out to its site's controller (QUIC, mutual
//! TLS with the site CA, the [`crate::msg::Hello`] handshake), opens one bidirectional stream
//! and sends [`AgentMsg::Register`], then heartbeats; the controller sends tasks on the same
//! stream and the agent reports on them. Every message is one bounded frame. A controller
//! that is not the site's leader closes the link with [`crate::msg::close::NOT_LEADER`].
//!
//! The same endpoint serves the site's other controllers: a follower forwards the HTTP
//! requests it receives to the leader, each as a [`ForwardRequest`] on a new bidirectional
//! stream of its connection (after the handshake, sending nothing on the first stream),
//! answered by one [`ForwardResponse`].

use serde::{Deserialize, Serialize};

use crate::name::Name;
use crate::task::{Task, TaskState};

/// Limit on one encoded message of the link.
pub const CONTROL_LINK_LIMIT: usize = 1 << 20;
/// Seconds between heartbeats.
pub const HEARTBEAT_SECS: u64 = 2;
/// Seconds without a heartbeat after which the controller marks an agent down.
pub const DOWN_AFTER_SECS: u64 = 10;

/// Most volumes an agent lists in one [`AgentMsg::Register`] or [`AgentMsg::Volumes`]
/// (about 160 bytes each: the list stays well under [`CONTROL_LINK_LIMIT`]); a node with
/// more lists the first ones by name and says how many it left out.
pub const MAX_REPORTED_VOLUMES: usize = 4096;

/// One volume as an agent reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VolumeReport {
    pub name: Name,
    pub size: u64,
    pub snapshots: u32,
    /// A mirror of another site's volume (read-only here).
    pub mirror: bool,
}

/// What an agent tells its controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentMsg {
    /// First message: what this node holds and how much room it has.
    Register {
        volumes: Vec<VolumeReport>,
        capacity_bytes: u64,
        free_bytes: u64,
        /// When the agent's certificate stops being valid (Unix seconds).
        certificate_expires: i64,
        /// Where paired sites' agents reach this node's replication endpoint: its
        /// `net.advertise`, or `None` for the address the link comes from with
        /// `listen_port`.
        advertise: Option<String>,
        listen_port: u16,
    },
    /// Sent every [`HEARTBEAT_SECS`].
    Heartbeat {
        seq: u64,
        /// Tasks running now.
        running: u32,
        free_bytes: u64,
    },
    /// Where a task stands (sent when it starts and when it ends, and again on request).
    TaskReport { id: Name, state: TaskState },
    /// The node's volumes changed (created, deleted, snapshotted, here or through the
    /// controller): the whole list again, at most [`MAX_REPORTED_VOLUMES`], with how many
    /// were left out.
    Volumes {
        volumes: Vec<VolumeReport>,
        omitted: u64,
        free_bytes: u64,
    },
    /// How far a running task is: bytes done of the bytes it expects to read or write (sent
    /// about once a second while it runs; `total_bytes` may grow as it learns more).
    TaskProgress {
        id: Name,
        done_bytes: u64,
        total_bytes: u64,
    },
}

/// Most paired sites a controller tells its agents of.
pub const MAX_PEER_SITES: usize = 64;
/// Longest CA certificate (PEM) of a paired site.
pub const MAX_CA_PEM: usize = 8 << 10;

/// A paired site as agents need it: its name and the CA that certifies its nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSite {
    pub site: Name,
    /// The site CA's certificate, PEM.
    pub ca_pem: String,
}

/// What a controller tells an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerMsg {
    /// Run this task (at most once per id; a repeat gets the recorded state back).
    Task(Task),
    /// The sites paired with this one (at most [`MAX_PEER_SITES`]), sent after registering
    /// and whenever pairing changes: the agent accepts replication from their nodes, and
    /// sends to them, besides the sites in its own configuration.
    Peers { sites: Vec<PeerSite> },
}

/// Limit on one encoded forwarded request or response.
pub const FORWARD_LIMIT: usize = crate::codec::MAX_MESSAGE_SIZE;

/// An HTTP request a follower controller passes to the leader. `authorization` is the
/// caller's bearer token, which the leader checks: never logged (`Debug` hides it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardRequest {
    pub method: String,
    /// Path and query, e.g. `/v1/plans?x=1`.
    pub path: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl std::fmt::Debug for ForwardRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<hidden>"),
            )
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// The leader's answer to a [`ForwardRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn link_messages_round_trip() {
        let n = |s: &str| Name::new(s).expect("name");
        let msgs = [
            AgentMsg::Register {
                volumes: vec![VolumeReport {
                    name: n("v1"),
                    size: 1 << 30,
                    snapshots: 3,
                    mirror: false,
                }],
                capacity_bytes: 1 << 40,
                free_bytes: 1 << 39,
                certificate_expires: 1_800_000_000,
                advertise: None,
                listen_port: 7443,
            },
            AgentMsg::Heartbeat {
                seq: 9,
                running: 1,
                free_bytes: 5,
            },
            AgentMsg::TaskReport {
                id: n("t-1"),
                state: TaskState::Interrupted,
            },
            AgentMsg::Volumes {
                volumes: Vec::new(),
                omitted: 3,
                free_bytes: 7,
            },
            AgentMsg::TaskProgress {
                id: n("t-2"),
                done_bytes: 5,
                total_bytes: 9,
            },
        ];
        for m in msgs {
            let b = codec::encode(&m).expect("encode");
            assert_eq!(
                codec::decode::<AgentMsg>(&b, CONTROL_LINK_LIMIT).expect("decode"),
                m
            );
        }
        assert!(codec::decode::<ControllerMsg>(&[9, 9, 9], CONTROL_LINK_LIMIT).is_err());
        let f = ForwardRequest {
            method: "POST".into(),
            path: "/v1/plans".into(),
            authorization: Some("Bearer secret-token".into()),
            content_type: Some("application/json".into()),
            body: b"{}".to_vec(),
        };
        let b = codec::encode(&f).expect("encode");
        assert_eq!(
            codec::decode::<ForwardRequest>(&b, FORWARD_LIMIT).expect("decode"),
            f
        );
        assert!(
            !format!("{f:?}").contains("secret"),
            "the token must not be printable"
        );
    }
}
