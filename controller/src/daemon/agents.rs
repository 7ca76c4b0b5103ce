//! The controller's side of the agent link: a QUIC endpoint that accepts the agents of this
//! site only (mutual TLS against the site CA, the ferry handshake), records each agent in the
//! state store (`/ferry/agents/<node>`: volumes, capacity, free space, status, last
//! heartbeat), keeps the link to send it tasks, and marks an agent down when its link closes
//! or its heartbeats stop for [`DOWN_AFTER_SECS`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_net::pki::{Identity, Trust, TrustCell};
use ferry_net::quic::{self as net, NetError};
use ferry_wire::control::{
    AgentMsg, ControllerMsg, ForwardRequest, CONTROL_LINK_LIMIT, DOWN_AFTER_SECS, FORWARD_LIMIT,
};
use ferry_wire::task::TaskState;
use ferry_wire::Name;
use jiff::Timestamp;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::state::schema::{AgentRecord, AGENTS};
use crate::state::{Store, StoreError};

/// Why the agent endpoint or one agent's link stopped.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Pki(#[from] ferry_net::pki::PkiError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("agent endpoint: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(String),
}

/// Where the agent endpoint listens and who it is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsConfig {
    /// UDP address agents connect to.
    pub listen: SocketAddr,
    /// This controller's certificate and key, issued by the site CA (`ferry-agent pki issue`).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The site CA's certificate: only agents it certified are accepted.
    pub ca: PathBuf,
    /// The address the site's agents and other controllers reach this endpoint at, when
    /// `listen` is not it (a wildcard address, NAT). Default: `listen`.
    #[serde(default)]
    pub advertise: Option<String>,
}

/// Live links, by node: where to send tasks, and the reports that come back.
#[derive(Default)]
pub struct Links {
    senders: Mutex<HashMap<Name, mpsc::Sender<ControllerMsg>>>,
    /// Latest report per task id.
    pub reports: Mutex<HashMap<String, TaskState>>,
    /// Latest progress per running task id: (bytes done, bytes expected).
    pub progress: Mutex<HashMap<String, (u64, u64)>>,
    /// The paired sites agents are told of (after registering, and on every change).
    peers: Mutex<Vec<ferry_wire::control::PeerSite>>,
    /// Told when a task ends or a paired site answers: the executor's next pass starts at
    /// once instead of at its next tick, so a run's steps follow each other without waiting.
    pub wake: tokio::sync::Notify,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links").finish_non_exhaustive()
    }
}

impl Links {
    /// Forgets the reports of tasks whose ids start with `prefix` (a finished run's or
    /// rollback's `<id>.`), so the map holds only work in progress.
    pub fn forget(&self, prefix: &str) {
        if let Ok(mut r) = self.reports.lock() {
            r.retain(|id, _| !id.starts_with(prefix));
        }
        if let Ok(mut p) = self.progress.lock() {
            p.retain(|id, _| !id.starts_with(prefix));
        }
    }

    /// The final report of task `id`, if it arrived; it is forgotten once taken.
    pub fn take_final(&self, id: &str) -> Option<TaskState> {
        let mut r = self.reports.lock().ok()?;
        if r.get(id).is_some_and(TaskState::is_final) {
            r.remove(id)
        } else {
            None
        }
    }

    /// Whether the agent said it received task `id` and has not reported its end yet.
    pub fn is_running(&self, id: &str) -> bool {
        self.reports
            .lock()
            .ok()
            .is_some_and(|r| matches!(r.get(id), Some(TaskState::Running)))
    }

    /// The paired sites changed: every connected agent is told.
    pub async fn set_peers(&self, sites: Vec<ferry_wire::control::PeerSite>) {
        if let Ok(mut p) = self.peers.lock() {
            *p = sites.clone();
        }
        let all: Vec<mpsc::Sender<ControllerMsg>> = self
            .senders
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        for tx in all {
            let _ = tx
                .send(ControllerMsg::Peers {
                    sites: sites.clone(),
                })
                .await;
        }
    }

    fn peers(&self) -> Vec<ferry_wire::control::PeerSite> {
        self.peers.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Sends a message to a connected agent; false when it is not connected.
    pub async fn send(&self, node: &Name, msg: ControllerMsg) -> bool {
        let tx = self.senders.lock().ok().and_then(|m| m.get(node).cloned());
        match tx {
            Some(tx) => tx.send(msg).await.is_ok(),
            None => false,
        }
    }
}

async fn put(store: &Store, rec: &AgentRecord) -> Result<(), StoreError> {
    let v = serde_json::to_vec(rec).map_err(|e| StoreError::Embedded(e.to_string()))?;
    store
        .put(&format!("{AGENTS}{}", rec.node), &v)
        .await
        .map(|_| ())
}

/// A bound agent endpoint: identity, trust and socket checked before anything serves.
pub struct Bound {
    ep: quinn::Endpoint,
    id: Arc<Identity>,
    /// The site CA alone (this site's agents and controllers).
    trust: Arc<Trust>,
    /// The site CA and the paired sites' (see `daemon::sites`).
    peers: TrustCell,
    ca_pem: String,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("node", &self.id.node)
            .finish()
    }
}

impl Bound {
    pub fn local_addr(&self) -> Result<SocketAddr, LinkError> {
        Ok(self.ep.local_addr()?)
    }

    /// This controller's identity and the site's trust, for its links to other controllers.
    pub fn credentials(&self) -> (Arc<Identity>, Arc<Trust>) {
        (self.id.clone(), self.trust.clone())
    }

    /// What pairing needs: the endpoint (its TLS settings follow the paired sites), the
    /// trust of this site and its paired sites, and the site CA's PEM.
    pub fn pairing(&self) -> (quinn::Endpoint, TrustCell, String) {
        (self.ep.clone(), self.peers.clone(), self.ca_pem.clone())
    }
}

/// Loads the controller's identity and the site CA and binds the endpoint (call inside a
/// tokio runtime).
pub fn bind(cfg: &AgentsConfig) -> Result<Bound, LinkError> {
    let id = Identity::load(&cfg.cert, &cfg.key)?;
    tokio::spawn(id.warn_of_expiry());
    let ca_pem = std::fs::read_to_string(&cfg.ca)?;
    let mut trust = Trust::default();
    trust.add_pem(&ca_pem, Some(&id.site))?;
    let ep = net::endpoint(cfg.listen, Some(net::server_config(&id, &trust)?))?;
    Ok(Bound {
        ep,
        id: Arc::new(id),
        peers: TrustCell::new(trust.clone()),
        trust: Arc::new(trust),
        ca_pem,
    })
}

/// What the endpoint needs besides its socket: the store, the agents' links, this
/// controller's role, and the API router that forwarded requests go through.
#[derive(Clone)]
pub struct Context {
    pub store: Store,
    pub links: Arc<Links>,
    pub role: tokio::sync::watch::Receiver<crate::daemon::leader::Role>,
    pub router: axum::Router,
    /// Who serves the connections of paired sites' controllers (`daemon::sites`).
    pub sites: Arc<dyn PeerSites>,
}

/// Serves a connection of a paired site's controller, after the handshake.
pub trait PeerSites: Send + Sync {
    fn serve_peer(
        &self,
        s: net::Session,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), LinkError>> + Send + '_>>;
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

/// Serves agents and follower controllers until `shutdown`.
pub async fn serve(bound: Bound, cx: Context, shutdown: impl std::future::Future<Output = ()>) {
    let Bound { ep, id, peers, .. } = bound;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            inc = ep.accept() => {
                let Some(inc) = inc else { break };
                let (id, trust, cx) = (id.clone(), peers.get(), cx.clone());
                tokio::spawn(async move {
                    let remote = inc.remote_address();
                    match inc.await {
                        Ok(conn) => {
                            if let Err(e) = connection(conn, &id, &trust, cx).await {
                                tracing::info!(%remote, error = %e, "link closed");
                            }
                        }
                        Err(e) => tracing::info!(%remote, error = %e, "connection failed during TLS"),
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    ep.close(
        quinn::VarInt::from_u32(ferry_wire::msg::close::SHUTDOWN),
        b"shutting down",
    );
}

/// One connection of this site: refused with `NOT_LEADER` (and where the leader is) unless
/// this controller leads; then an agent's link (it registers on the first stream) or a
/// follower's forwarded requests (it opens more streams).
async fn connection(
    conn: quinn::Connection,
    id: &Identity,
    trust: &Trust,
    cx: Context,
) -> Result<(), LinkError> {
    let mut s = net::accept_session(conn, id, trust).await?;
    if !matches!(*cx.role.borrow(), crate::daemon::leader::Role::Leader(_)) {
        let leader = crate::daemon::leader::current(&cx.store)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.endpoint)
            .unwrap_or_default();
        tracing::info!(peer = %s.peer_node, %leader, "not the leader: pointing the peer at the leader");
        net::close_with(&s.conn, ferry_wire::msg::close::NOT_LEADER, &leader);
        return Ok(());
    }
    if s.peer_site != id.site {
        // A paired site's controller (the handshake checked its CA): its requests.
        return cx.sites.serve_peer(s).await;
    }
    // An agent registers on the first stream; a follower leaves it silent (or finishes it)
    // and opens a stream per forwarded request.
    let closing = |conn: &quinn::Connection, e: NetError| {
        net::close_for(conn, &e);
        LinkError::from(e)
    };
    let first = tokio::select! {
        frame = net::read_frame(&mut s.recv, CONTROL_LINK_LIMIT) => match frame {
            Ok(Some(bytes)) => match ferry_wire::codec::decode::<AgentMsg>(&bytes, CONTROL_LINK_LIMIT) {
                Ok(m) => Ok(m),
                Err(e) => return Err(closing(&s.conn, e.into())),
            },
            Ok(None) => match s.conn.accept_bi().await {
                Ok(stream) => Err(stream),
                Err(e) => return Err(NetError::from(e).into()),
            },
            Err(e) => return Err(closing(&s.conn, e)),
        },
        stream = s.conn.accept_bi() => Err(stream.map_err(NetError::from)?),
    };
    match first {
        Ok(register) => {
            let conn = s.conn.clone();
            let r = agent_link(s, register, cx.store, cx.links).await;
            if let Err(e) = &r {
                // A broken protocol, a silent agent: say why as the link goes.
                net::close_with(&conn, ferry_wire::msg::close::PROTOCOL, &e.to_string());
            }
            r
        }
        Err(stream) => forwarded(s.conn.clone(), stream, cx.router).await,
    }
}

/// The next request stream another controller opens on `conn`; `None` once it closed the
/// connection cleanly.
pub async fn next_stream(
    conn: &quinn::Connection,
) -> Result<Option<(quinn::SendStream, quinn::RecvStream)>, LinkError> {
    match conn.accept_bi().await {
        Ok(s) => Ok(Some(s)),
        Err(e) => {
            let e = NetError::from(e);
            if e.is_clean_close() {
                Ok(None)
            } else {
                Err(e.into())
            }
        }
    }
}

/// Serves a follower's forwarded requests, one per stream, until it closes.
async fn forwarded(
    conn: quinn::Connection,
    first: (quinn::SendStream, quinn::RecvStream),
    router: axum::Router,
) -> Result<(), LinkError> {
    let mut next = Some(first);
    loop {
        let (mut send, mut recv) = match next.take() {
            Some(s) => s,
            None => match next_stream(&conn).await? {
                Some(s) => s,
                None => return Ok(()),
            },
        };
        let router = router.clone();
        let c = conn.clone();
        tokio::spawn(async move {
            let req: ForwardRequest = match net::recv_msg(&mut recv, FORWARD_LIMIT).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::info!(error = %e, "bad forwarded request: closing the link");
                    net::close_for(&c, &e);
                    return;
                }
            };
            let resp = crate::daemon::forwarding::answer(router, req).await;
            if net::send_msg(&mut send, &resp).await.is_ok() {
                let _ = send.finish();
            }
        });
    }
}

async fn agent_link(
    mut s: net::Session,
    first: AgentMsg,
    store: Store,
    links: Arc<Links>,
) -> Result<(), LinkError> {
    let remote = s.conn.remote_address();
    let AgentMsg::Register {
        volumes,
        capacity_bytes,
        free_bytes,
        certificate_expires,
        advertise,
        listen_port,
    } = first
    else {
        return Err(LinkError::Protocol(
            "the first message must be Register".into(),
        ));
    };
    let now = Timestamp::now().to_string();
    let mut rec = AgentRecord {
        node: s.peer_node.clone(),
        site: s.peer_site.clone(),
        address: remote.to_string(),
        status: "up".into(),
        volumes,
        volumes_omitted: 0,
        capacity_bytes,
        free_bytes,
        connected: now.clone(),
        last_heartbeat: now,
        certificate_expires: Timestamp::from_second(certificate_expires)
            .ok()
            .map(|t| t.to_string()),
        replication_address: Some(
            advertise
                .filter(|a| a.len() <= 255)
                .unwrap_or_else(|| SocketAddr::new(remote.ip(), listen_port).to_string()),
        ),
    };
    put(&store, &rec).await?;
    tracing::info!(node = %rec.node, %remote, volumes = rec.volumes.len(), "agent registered");
    let (tx, mut rx) = mpsc::channel::<ControllerMsg>(64);
    let _ = tx
        .send(ControllerMsg::Peers {
            sites: links.peers(),
        })
        .await;
    if let Ok(mut m) = links.senders.lock() {
        m.insert(rec.node.clone(), tx.clone());
    }
    let mut send = s.send;
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            net::send_msg(&mut send, &m).await?;
        }
        Ok::<(), NetError>(())
    });
    let timeout = Duration::from_secs(DOWN_AFTER_SECS);
    let result: Result<(), LinkError> = async {
        loop {
            let msg: AgentMsg =
                tokio::time::timeout(timeout, net::recv_msg(&mut s.recv, CONTROL_LINK_LIMIT))
                    .await
                    .map_err(|_| {
                        LinkError::Protocol(format!("no heartbeat for {DOWN_AFTER_SECS} s"))
                    })??;
            match msg {
                AgentMsg::Heartbeat { free_bytes, .. } => {
                    rec.free_bytes = free_bytes;
                    rec.last_heartbeat = Timestamp::now().to_string();
                    put(&store, &rec).await?;
                }
                AgentMsg::TaskReport { id, state } => {
                    tracing::info!(node = %rec.node, task = %id, ?state, "task report");
                    if state.is_final() {
                        if let Ok(mut p) = links.progress.lock() {
                            p.remove(id.as_str());
                        }
                    }
                    let fin = state.is_final();
                    if let Ok(mut r) = links.reports.lock() {
                        r.insert(id.to_string(), state);
                    }
                    if fin {
                        links.wake.notify_one();
                    }
                }
                AgentMsg::Volumes {
                    volumes,
                    omitted,
                    free_bytes,
                } => {
                    rec.volumes = volumes;
                    rec.volumes_omitted = omitted;
                    rec.free_bytes = free_bytes;
                    put(&store, &rec).await?;
                }
                AgentMsg::TaskProgress {
                    id,
                    done_bytes,
                    total_bytes,
                } => {
                    if let Ok(mut p) = links.progress.lock() {
                        p.insert(id.to_string(), (done_bytes, total_bytes));
                    }
                }
                AgentMsg::Register { .. } => {
                    return Err(LinkError::Protocol("registered twice".into()))
                }
            }
        }
    }
    .await;
    writer.abort();
    if let Ok(mut m) = links.senders.lock() {
        // Only this link's entry: the agent may have connected again meanwhile.
        if m.get(&rec.node).is_some_and(|t| t.same_channel(&tx)) {
            m.remove(&rec.node);
        } else {
            return result; // a newer link has it: not down
        }
    }
    rec.status = "down".into();
    if let Err(e) = put(&store, &rec).await {
        tracing::warn!(node = %rec.node, error = %e, "cannot record the agent down");
    }
    tracing::warn!(node = %rec.node, "agent down");
    result
}
