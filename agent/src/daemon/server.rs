//! `ferry-agent serve`: the agent's QUIC endpoint. Accepts connections from nodes of paired
//! sites (mutual TLS, see [`crate::net`]), runs the ferry handshake, then serves the control
//! stream. Replication sessions attach here (next issue). A misbehaving peer loses only its
//! own connection; the endpoint keeps serving.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use ferry_wire::msg::{close, Control, CONTROL_LIMIT};
use quinn::VarInt;
use tokio::sync::Semaphore;

use crate::config::AgentConfig;
use crate::daemon::peers::PeerSites;
use crate::error::{Result, StoreError};
use crate::net::{self, NetError, Session};
use crate::pki::{Identity, Trust};
use crate::replication::receive::{self, Receivers, Registry};
use crate::store::{MirrorInfo, Store};

/// The TLS identity of this node and the sites it trusts: those of the `[net]` config and
/// those its controller paired (kept in the data directory by the daemon).
pub fn load_tls(cfg: &AgentConfig) -> Result<(Identity, Trust)> {
    let id = load_identity(cfg)?;
    let trust = PeerSites::load(cfg, Arc::new(id.clone()))?.trust();
    if trust.is_empty() {
        return Err(StoreError::Invalid(
            "no paired site: net.peer_cas lists no CA certificate and no controller paired one"
                .into(),
        ));
    }
    Ok((id, trust.as_ref().clone()))
}

fn net_err(e: NetError) -> StoreError {
    StoreError::Net {
        retryable: e.retryable(),
        message: e.to_string(),
    }
}

/// This node's TLS identity, from the `[net]` config.
pub fn load_identity(cfg: &AgentConfig) -> Result<Identity> {
    let (Some(cert), Some(key)) = (&cfg.net.cert, &cfg.net.key) else {
        return Err(StoreError::Invalid(
            "no TLS identity: set net.cert and net.key (see `ferry-agent pki issue`)".into(),
        ));
    };
    Ok(Identity::load(cert, key)?)
}

/// A bound endpoint, ready to serve.
pub struct Server {
    endpoint: quinn::Endpoint,
    store: Arc<Store>,
    id: Arc<Identity>,
    peers: Arc<PeerSites>,
    limit: Arc<Semaphore>,
    receivers: Receivers,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("node", &self.id.node)
            .finish()
    }
}

impl Server {
    /// Binds the endpoint (call inside a tokio runtime).
    pub fn bind(cfg: &AgentConfig) -> Result<Server> {
        let id = Arc::new(load_identity(cfg)?);
        let store = Arc::new(Store::open(cfg.clone())?);
        let peers = Arc::new(PeerSites::load(cfg, id.clone())?);
        let sc = peers.server_config()?;
        let endpoint = net::endpoint(cfg.net.listen, Some(sc)).map_err(|e| StoreError::Io {
            op: "listen on".into(),
            path: Path::new(&cfg.net.listen.to_string()).to_owned(),
            source: e,
        })?;
        peers.attach(endpoint.clone());
        Ok(Server {
            endpoint,
            store,
            id,
            peers,
            limit: Arc::new(Semaphore::new(cfg.net.max_connections)),
            receivers: Receivers::default(),
        })
    }

    /// The bound address (the real port when the config said 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.endpoint.local_addr().map_err(|e| StoreError::Io {
            op: "query".into(),
            path: "endpoint".into(),
            source: e,
        })
    }

    pub fn identity(&self) -> &Identity {
        &self.id
    }

    /// The paired sites it accepts (and its sender reaches).
    pub fn peers(&self) -> Arc<PeerSites> {
        self.peers.clone()
    }

    /// The store this endpoint serves.
    pub fn store(&self) -> Arc<Store> {
        self.store.clone()
    }

    /// Serves until `shutdown` resolves, then closes every connection and waits for them.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let Ok(permit) = self.limit.clone().try_acquire_owned() else {
                        tracing::warn!(remote = %incoming.remote_address(), "connection limit reached; refusing");
                        incoming.refuse();
                        continue;
                    };
                    let (id, trust, store) = (self.id.clone(), self.peers.trust(), self.store.clone());
                    let receivers = self.receivers.clone();
                    tokio::spawn(async move {
                        let remote = incoming.remote_address();
                        match incoming.await {
                            Ok(conn) => serve_connection(conn, &id, &trust, store, receivers).await,
                            Err(e) => tracing::info!(%remote, error = %e, "connection failed during TLS"),
                        }
                        drop(permit);
                    });
                }
                _ = &mut shutdown => break,
            }
        }
        self.endpoint
            .close(VarInt::from_u32(close::SHUTDOWN), b"shutting down");
        self.endpoint.wait_idle().await;
    }
}

async fn serve_connection(
    conn: quinn::Connection,
    id: &Identity,
    trust: &Trust,
    store: Arc<Store>,
    receivers: Receivers,
) {
    let remote = conn.remote_address();
    let mut s = match net::accept_session(conn, id, trust).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%remote, error = %e, "handshake refused");
            return;
        }
    };
    tracing::info!(%remote, peer = %format!("{}@{}", s.peer_node, s.peer_site), version = s.version, "peer connected");
    let peer = MirrorInfo {
        site: s.peer_site.clone(),
        node: s.peer_node.clone(),
    };
    let registry = Registry::default();
    let sessions = tokio::spawn(accept_sessions(
        s.conn.clone(),
        store,
        peer,
        registry.clone(),
        receivers,
    ));
    let data = tokio::spawn(accept_data(s.conn.clone(), registry));
    match control_loop(&mut s).await {
        Ok(()) => {}
        Err(e) if e.is_clean_close() => {}
        Err(e) => {
            tracing::warn!(%remote, error = %e, "closing connection");
            net::close_for(&s.conn, &e);
        }
    }
    s.conn.closed().await;
    sessions.abort();
    data.abort();
    tracing::info!(%remote, "peer disconnected");
}

/// Each bidirectional stream after the first is one replication session.
async fn accept_sessions(
    conn: quinn::Connection,
    store: Arc<Store>,
    peer: MirrorInfo,
    registry: Registry,
    receivers: Receivers,
) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let (store, peer, registry, conn) =
            (store.clone(), peer.clone(), registry.clone(), conn.clone());
        let receivers = receivers.clone();
        tokio::spawn(async move {
            if let Err(e) =
                receive::serve_session(store, peer, registry, receivers, send, recv).await
            {
                if !e.is_clean_close() {
                    tracing::warn!(error = %e, "replication session failed");
                    net::close_for(&conn, &e);
                }
            }
        });
    }
}

/// Unidirectional streams carry block data for the connection's sessions.
async fn accept_data(conn: quinn::Connection, registry: Registry) {
    while let Ok(recv) = conn.accept_uni().await {
        let (registry, conn) = (registry.clone(), conn.clone());
        tokio::spawn(async move {
            if let Err(e) =
                receive::serve_data(registry, recv, ferry_wire::hash::MAX_BLOCK_SIZE as usize).await
            {
                if !e.is_clean_close() {
                    tracing::warn!(error = %e, "closing connection: bad data stream");
                    net::close_for(&conn, &e);
                }
            }
        });
    }
}

async fn control_loop(s: &mut Session) -> std::result::Result<(), NetError> {
    while let Some(frame) = net::read_frame(&mut s.recv, CONTROL_LIMIT).await? {
        match ferry_wire::codec::decode::<Control>(&frame, CONTROL_LIMIT)? {
            Control::Ping { nonce } => net::send_msg(&mut s.send, &Control::Pong { nonce }).await?,
            other => {
                let message = format!("unexpected {other:?} on the control stream");
                net::send_msg(
                    &mut s.send,
                    &Control::Error {
                        code: close::PROTOCOL,
                        message: message.clone(),
                    },
                )
                .await?;
                return Err(NetError::Protocol(message));
            }
        }
    }
    Ok(())
}

/// What `ferry-agent ping` reports.
#[derive(Debug, serde::Serialize)]
pub struct PingReport {
    pub peer: SocketAddr,
    pub peer_node: String,
    pub peer_site: String,
    pub version: u32,
    pub connect_ms: f64,
    pub rtt_ms: Vec<f64>,
}

/// Connects to a peer agent, completes the handshake and measures `count` round trips.
pub async fn ping(cfg: &AgentConfig, peer: SocketAddr, count: usize) -> Result<PingReport> {
    let (id, trust) = load_tls(cfg)?;
    let cc = net::client_config(&id, &trust).map_err(net_err)?;
    let ep = net::client_endpoint(peer, cc).map_err(net_err)?;
    let t0 = std::time::Instant::now();
    let mut s = net::connect(&ep, peer, &id, &trust)
        .await
        .map_err(net_err)?;
    let connect_ms = t0.elapsed().as_secs_f64() * 1e3;
    let mut rtt_ms = Vec::new();
    for nonce in 0..count as u64 {
        let t = std::time::Instant::now();
        net::send_msg(&mut s.send, &Control::Ping { nonce })
            .await
            .map_err(net_err)?;
        match net::recv_msg::<Control>(&mut s.recv, CONTROL_LIMIT)
            .await
            .map_err(net_err)?
        {
            Control::Pong { nonce: n } if n == nonce => {
                rtt_ms.push(t.elapsed().as_secs_f64() * 1e3)
            }
            other => {
                return Err(StoreError::Invalid(format!(
                    "peer answered {other:?} to a ping"
                )))
            }
        }
    }
    let _ = s.send.finish();
    net::close_done(&s.conn, close::DONE, "done").await;
    Ok(PingReport {
        peer,
        peer_node: s.peer_node.to_string(),
        peer_site: s.peer_site.to_string(),
        version: s.version,
        connect_ms,
        rtt_ms,
    })
}
