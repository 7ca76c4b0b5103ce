//! Paired sites, as the controller deals with them: who this site trusts besides itself,
//! what its agents are told, the links to the paired sites' controllers, and the answers
//! to their requests.
//!
//! - **Trust.** Every controller (leader or not) reads `/ferry/sites/` every
//!   [`REFRESH`]: the agent endpoint accepts this site's CA and the paired sites' CAs, the
//!   new TLS settings apply to new connections, and the leader tells its agents
//!   (`ControllerMsg::Peers`). Unpairing takes effect the same way.
//! - **Asking** ([`Sites::ask`]): one QUIC connection per paired site, to its controllers
//!   in turn, following a follower's `NOT_LEADER` pointer; one request per stream
//!   ([`ferry_wire::site`]), with a timeout. The executor asks without waiting
//!   ([`Sites::spawn_ask`]) and reads the answer on a later pass ([`Sites::reply`]).
//!   The leader pings every paired site every [`PING_EVERY`]: reachability, round-trip
//!   time and last contact for `GET /v1/sites`.
//! - **Answering** ([`Sites::serve_peer`]): the leader answers a paired site's requests:
//!   prepare (the foreign plan and where each mirror lives) and record (a mirror group).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_net::pki::{Identity, Trust, TrustCell};
use ferry_net::quic::{self as net, NetError};
use ferry_wire::control::PeerSite;
use ferry_wire::site::{
    MirrorSnapshot, MirrorVolume, Placement, SiteRequest, SiteResponse, MAX_MIRROR_VOLUMES,
    MAX_OBJECTS_JSON, SITE_LIMIT,
};
use ferry_wire::task::SnapshotRecord;
use ferry_wire::Name;
use serde::{Deserialize, Serialize};

use crate::daemon::agents::{LinkError, Links};
use crate::daemon::leader::Role;
use crate::policy::model::{PlanSpec, ScheduleSpec};
use crate::state::schema::{
    self, AgentRecord, GroupRecord, MirrorPlace, Origin, PlanRecord, SiteRecord, AGENTS, SITES,
};
use crate::state::{load, Compare, Op, Store, Txn};

/// How often the paired sites are read again.
pub const REFRESH: Duration = Duration::from_secs(2);
/// How often the leader pings each paired site.
pub const PING_EVERY: Duration = Duration::from_secs(10);
/// How long one request to a paired site may take.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(20);
/// Most sites one site pairs with.
pub const MAX_SITES: usize = ferry_wire::control::MAX_PEER_SITES;

/// What a backup run tells a target besides the volumes (the `objects` of
/// [`SiteRequest::Prepare`]): the plan's schedule, shown on the foreign plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForeignSpec {
    pub schedule: ScheduleSpec,
    /// The plan's objects, and this target's virtual-switch map, for the mirror objects.
    #[serde(default)]
    pub objects: Vec<crate::policy::model::Object>,
    #[serde(default)]
    pub switches: BTreeMap<Name, Name>,
    /// The plan's RPO, which the target checks its newest mirror group against.
    #[serde(default)]
    pub rpo_secs: Option<u64>,
    /// The drills this target runs.
    #[serde(default)]
    pub drill: Option<crate::policy::model::DrillSpec>,
}

/// How a paired site's link stands, as `GET /v1/sites` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LinkStatus {
    /// Whether the last ping was answered.
    pub reachable: bool,
    /// Its round-trip time, milliseconds.
    pub rtt_ms: Option<f64>,
    /// When it last answered (RFC 3339).
    pub last_contact: Option<String>,
    /// Why the last attempt failed.
    pub error: Option<String>,
}

/// A link to one paired site's leader.
struct SiteConn {
    _ep: quinn::Endpoint,
    session: net::Session,
}

/// The controller's paired sites (see the module doc).
pub struct Sites {
    store: Store,
    links: Arc<Links>,
    role: tokio::sync::watch::Receiver<Role>,
    id: Arc<Identity>,
    /// The site CA's certificate (PEM) and the trust it alone gives.
    ca_pem: String,
    own: Trust,
    cell: TrustCell,
    endpoint: quinn::Endpoint,
    /// This site's controllers' endpoints, as a bundle for pairing names them.
    pub advertised: String,
    /// The sites in force: (name, CA PEM), sorted.
    known: Mutex<Vec<PeerSite>>,
    conns: tokio::sync::Mutex<HashMap<Name, SiteConn>>,
    status: Mutex<HashMap<Name, LinkStatus>>,
    /// Answers to requests made with [`Sites::spawn_ask`], by request id, and when each
    /// was last sent.
    replies: Mutex<HashMap<String, Result<SiteResponse, String>>>,
    asked: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for Sites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sites")
            .field("site", &self.id.site)
            .finish()
    }
}

fn err(code: &str, message: impl Into<String>) -> SiteResponse {
    SiteResponse::Error {
        code: code.into(),
        message: message.into(),
    }
}

/// The foreign plan's id at a target, from the source site and plan id: stable, a name.
pub fn foreign_id(site: &Name, plan_id: &Name) -> Name {
    let h = blake3::hash(format!("{site}/{plan_id}").as_bytes()).to_hex();
    Name::new(&format!("f-{}", &h[..24])).unwrap_or_else(|_| plan_id.clone())
}

/// The foreign plan's name at a target: `<site>.<plan>`, cut to fit a name.
pub fn foreign_name(site: &Name, plan: &Name) -> Name {
    let mut s = format!("{site}.{plan}");
    s.truncate(128);
    while s.ends_with(['.', '-', '_']) {
        s.pop();
    }
    Name::new(&s).unwrap_or_else(|_| plan.clone())
}

/// The mirror volume's name for a source volume: `<site>.<node>.<volume>`, or a hash of it
/// when that is too long for a name.
pub fn mirror_name(site: &Name, node: &Name, volume: &Name) -> Name {
    let s = format!("{site}.{node}.{volume}");
    Name::new(&s).unwrap_or_else(|_| {
        let h = blake3::hash(s.as_bytes()).to_hex();
        Name::new(&format!("m-{}", &h[..32])).unwrap_or_else(|_| volume.clone())
    })
}

impl crate::daemon::agents::PeerSites for Sites {
    fn serve_peer(
        &self,
        s: net::Session,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), LinkError>> + Send + '_>>
    {
        Box::pin(self.serve(s))
    }
}

impl Sites {
    /// `endpoint` and `cell` from the agent endpoint (`Bound::pairing`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        links: Arc<Links>,
        role: tokio::sync::watch::Receiver<Role>,
        id: Arc<Identity>,
        (endpoint, cell, ca_pem): (quinn::Endpoint, TrustCell, String),
        advertised: String,
    ) -> Sites {
        let own = cell.get().as_ref().clone();
        Sites {
            store,
            links,
            role,
            id,
            ca_pem,
            own,
            cell,
            endpoint,
            advertised,
            known: Mutex::new(Vec::new()),
            conns: tokio::sync::Mutex::new(HashMap::new()),
            status: Mutex::new(HashMap::new()),
            replies: Mutex::new(HashMap::new()),
            asked: Mutex::new(HashMap::new()),
        }
    }

    /// This site's name.
    pub fn site(&self) -> &Name {
        &self.id.site
    }

    /// This site's CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// How the link to `site` stands.
    pub fn status(&self, site: &Name) -> LinkStatus {
        self.status
            .lock()
            .ok()
            .and_then(|s| s.get(site).cloned())
            .unwrap_or_default()
    }

    fn leading(&self) -> Option<crate::daemon::leader::Term> {
        match &*self.role.borrow() {
            Role::Leader(t) => Some(t.clone()),
            Role::Follower => None,
        }
    }

    /// Reads the paired sites and puts them in force if they changed.
    pub async fn refresh(&self) -> Result<(), crate::state::StoreError> {
        let mut sites: Vec<SiteRecord> = load(&self.store, SITES).await?;
        sites.sort_by(|a, b| a.name.cmp(&b.name));
        sites.truncate(MAX_SITES);
        let peers: Vec<PeerSite> = sites
            .iter()
            .map(|s| PeerSite {
                site: s.name.clone(),
                ca_pem: s.ca_pem.clone(),
            })
            .collect();
        let same = self.known.lock().is_ok_and(|k| *k == peers);
        if same {
            return Ok(());
        }
        let mut trust = self.own.clone();
        for p in &peers {
            if let Err(e) = trust.add_pem(&p.ca_pem, Some(&p.site)) {
                tracing::warn!(site = %p.site, error = %e, "a paired site's CA is not usable");
            }
        }
        match net::server_config(&self.id, &trust) {
            Ok(sc) => self.endpoint.set_server_config(Some(sc)),
            Err(e) => tracing::warn!(error = %e, "cannot apply the paired sites"),
        }
        self.cell.set(trust);
        // Links to sites no longer paired (or whose CA changed) are made again, or not.
        self.conns.lock().await.clear();
        tracing::info!(sites = ?peers.iter().map(|p| p.site.as_str()).collect::<Vec<_>>(), "paired sites in force");
        if let Ok(mut k) = self.known.lock() {
            *k = peers.clone();
        }
        self.links.set_peers(peers).await;
        Ok(())
    }

    /// Keeps the paired sites in force and, while leading, pings them; until `shutdown`.
    pub async fn keep(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut last_ping: Option<Instant> = None;
        loop {
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "cannot read the paired sites");
            }
            if self.leading().is_some() && last_ping.is_none_or(|t| t.elapsed() >= PING_EVERY) {
                last_ping = Some(Instant::now());
                let me = self.clone();
                tokio::spawn(async move { me.ping_all().await });
            }
            tokio::select! {
                _ = tokio::time::sleep(REFRESH) => {}
                _ = &mut shutdown => return,
            }
        }
    }

    async fn ping_all(&self) {
        let sites: Vec<SiteRecord> = load(&self.store, SITES).await.unwrap_or_default();
        for s in sites {
            let started = Instant::now();
            let nonce = rand::random::<u64>();
            let r = self.ask(&s, &SiteRequest::Ping { nonce }).await;
            let mut st = self.status(&s.name);
            match r {
                Ok(SiteResponse::Pong { nonce: n }) if n == nonce => {
                    st.reachable = true;
                    st.rtt_ms = Some(started.elapsed().as_secs_f64() * 1e3);
                    st.last_contact = Some(jiff::Timestamp::now().to_string());
                    st.error = None;
                }
                Ok(other) => {
                    st.reachable = false;
                    st.error = Some(format!("unexpected answer {other:?}"));
                }
                Err(e) => {
                    st.reachable = false;
                    st.error = Some(e);
                }
            }
            if let Ok(mut m) = self.status.lock() {
                m.insert(s.name.clone(), st);
            }
        }
    }

    /// A connection to `site`'s leader: its controllers in turn, then where a follower
    /// points.
    async fn connect(&self, site: &SiteRecord) -> Result<quinn::Connection, String> {
        let mut conns = self.conns.lock().await;
        if let Some(c) = conns.get(&site.name) {
            if c.session.conn.close_reason().is_none() {
                return Ok(c.session.conn.clone());
            }
        }
        conns.remove(&site.name);
        let trust = self.cell.get();
        let cc = net::client_config(&self.id, &trust).map_err(|e| e.to_string())?;
        let mut tried: Vec<String> = Vec::new();
        let mut queue: Vec<String> = site.controllers.iter().rev().cloned().collect();
        let mut last = format!("site {} lists no controller", site.name);
        while let Some(a) = queue.pop() {
            if tried.contains(&a) || tried.len() >= 8 {
                continue;
            }
            tried.push(a.clone());
            let Some(addr) = tokio::net::lookup_host(a.as_str())
                .await
                .ok()
                .and_then(|mut x| x.next())
            else {
                last = format!("{a} does not resolve");
                continue;
            };
            let ep = match net::client_endpoint(addr, cc.clone()) {
                Ok(ep) => ep,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let s = match net::connect(&ep, addr, &self.id, &trust).await {
                Ok(s) => s,
                Err(e) => {
                    last = format!("{a}: {e}");
                    continue;
                }
            };
            if s.peer_site != site.name {
                last = format!("{a} is of site {}, not {}", s.peer_site, site.name);
                continue;
            }
            // A follower closes at once, pointing at the leader.
            let closed = tokio::time::timeout(Duration::from_millis(300), s.conn.closed()).await;
            if let Ok(reason) = closed {
                match NetError::from(reason).closed_by_peer() {
                    Some((code, to)) if code == ferry_wire::msg::close::NOT_LEADER => {
                        last = format!("{a} is not the leader");
                        if !to.is_empty() {
                            queue.push(to);
                        }
                    }
                    _ => last = format!("{a} closed the link"),
                }
                continue;
            }
            let conn = s.conn.clone();
            conns.insert(
                site.name.clone(),
                SiteConn {
                    _ep: ep,
                    session: s,
                },
            );
            tracing::info!(site = %site.name, controller = %addr, "linked to a paired site");
            return Ok(conn);
        }
        Err(format!("cannot reach site {}: {last}", site.name))
    }

    /// Sends one request to `site` and waits for its answer.
    pub async fn ask(&self, site: &SiteRecord, req: &SiteRequest) -> Result<SiteResponse, String> {
        let conn = self.connect(site).await?;
        let exchange = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(NetError::from)?;
            net::send_msg(&mut send, req).await?;
            let _ = send.finish();
            net::recv_msg::<SiteResponse>(&mut recv, SITE_LIMIT).await
        };
        match tokio::time::timeout(ASK_TIMEOUT, exchange).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.conns.lock().await.remove(&site.name);
                Err(format!("site {}: {e}", site.name))
            }
            Err(_) => {
                self.conns.lock().await.remove(&site.name);
                Err(format!(
                    "site {} did not answer within {} s",
                    site.name,
                    ASK_TIMEOUT.as_secs()
                ))
            }
        }
    }

    /// Asks `site` in the background under request id `id`, unless that request is on its
    /// way or was sent less than `again` ago; the answer is kept for [`Sites::reply`].
    pub fn spawn_ask(self: &Arc<Self>, site: Name, id: String, req: SiteRequest, again: Duration) {
        let answered = self
            .replies
            .lock()
            .is_ok_and(|r| matches!(r.get(&id), Some(Ok(_))));
        let recent = self
            .asked
            .lock()
            .is_ok_and(|a| a.get(&id).is_some_and(|t| t.elapsed() < again));
        if answered || recent {
            return;
        }
        if let Ok(mut a) = self.asked.lock() {
            a.insert(id.clone(), Instant::now());
        }
        let me = self.clone();
        tokio::spawn(async move {
            let rec = match me.store.get(&schema::site_key(&site)).await {
                Ok(Some(kv)) => serde_json::from_slice::<SiteRecord>(&kv.value).ok(),
                _ => None,
            };
            let r = match rec {
                Some(rec) => me.ask(&rec, &req).await,
                None => Err(format!("site {site} is not paired")),
            };
            if let Err(e) = &r {
                tracing::info!(%site, request = %id, error = %e, "request to a paired site failed");
            }
            if let Ok(mut m) = me.replies.lock() {
                m.insert(id, r);
            }
            me.links.wake.notify_one();
            if let Ok(mut a) = me.asked.lock() {
                // Entries of requests long over go (a run's are also forgotten at its end).
                a.retain(|_, t| t.elapsed() < Duration::from_secs(3600));
            }
        });
    }

    /// The answer to request `id`, if one came (an error: the last attempt failed).
    pub fn reply(&self, id: &str) -> Option<Result<SiteResponse, String>> {
        self.replies.lock().ok()?.get(id).cloned()
    }

    /// Forgets the answers to requests whose ids start with `prefix` (a finished run's).
    pub fn forget(&self, prefix: &str) {
        if let Ok(mut r) = self.replies.lock() {
            r.retain(|id, _| !id.starts_with(prefix));
        }
        if let Ok(mut a) = self.asked.lock() {
            a.retain(|id, _| !id.starts_with(prefix));
        }
    }

    /// Serves a paired site's controller: one request per stream until it closes. A peer
    /// sending garbage is disconnected.
    async fn serve(&self, s: net::Session) -> Result<(), LinkError> {
        let peer = s.peer_site.clone();
        tracing::info!(site = %peer, controller = %s.peer_node, "paired site linked");
        loop {
            let Some((mut send, mut recv)) = crate::daemon::agents::next_stream(&s.conn).await?
            else {
                return Ok(());
            };
            let req: SiteRequest = match net::recv_msg(&mut recv, SITE_LIMIT).await {
                Ok(r) => r,
                Err(e) => {
                    net::close_for(&s.conn, &e);
                    return Err(e.into());
                }
            };
            let resp = self.answer(&peer, req).await;
            if net::send_msg(&mut send, &resp).await.is_ok() {
                let _ = send.finish();
            }
        }
    }

    /// The answer to one request of paired site `peer`.
    pub async fn answer(&self, peer: &Name, req: SiteRequest) -> SiteResponse {
        let paired = self
            .known
            .lock()
            .is_ok_and(|k| k.iter().any(|p| p.site == *peer));
        if !paired {
            return err(
                "not_paired",
                format!("site {peer} is not paired with site {}", self.id.site),
            );
        }
        let Some(term) = self.leading() else {
            return err("unavailable", "this controller is not the leader");
        };
        let r = match req {
            SiteRequest::Ping { nonce } => return SiteResponse::Pong { nonce },
            SiteRequest::Prepare {
                plan,
                plan_id,
                retention,
                volumes,
                objects,
            } => {
                self.prepare(&term, peer, &plan, &plan_id, retention, volumes, &objects)
                    .await
            }
            SiteRequest::Record {
                plan,
                plan_id,
                group,
                created,
                snapshots,
            } => {
                self.record(&term, peer, &plan, &plan_id, &group, &created, snapshots)
                    .await
            }
        };
        r.unwrap_or_else(|(code, message)| err(&code, message))
    }

    /// Ensures the foreign plan of `peer`'s plan and a mirror for each volume.
    #[allow(clippy::too_many_arguments)]
    async fn prepare(
        &self,
        term: &crate::daemon::leader::Term,
        peer: &Name,
        plan: &Name,
        plan_id: &Name,
        retention: u32,
        volumes: Vec<MirrorVolume>,
        objects: &[u8],
    ) -> Result<SiteResponse, (String, String)> {
        let store_err = |e: crate::state::StoreError| ("unavailable".to_string(), e.to_string());
        if volumes.len() > MAX_MIRROR_VOLUMES || objects.len() > MAX_OBJECTS_JSON {
            return Err(("invalid".into(), "too many volumes or objects".into()));
        }
        if !(1..=crate::policy::model::MAX_RETENTION).contains(&retention) {
            return Err((
                "invalid".into(),
                format!("retention {retention} is out of range"),
            ));
        }
        let spec: ForeignSpec = serde_json::from_slice(objects)
            .map_err(|e| ("invalid".to_string(), format!("plan description: {e}")))?;
        let name = foreign_name(peer, plan);
        let id = foreign_id(peer, plan_id);
        let key = schema::plan_key(&name);
        let existing = self.store.get(&key).await.map_err(store_err)?;
        let old: Option<PlanRecord> = match &existing {
            Some(kv) => {
                let p: PlanRecord = serde_json::from_slice(&kv.value)
                    .map_err(|e| ("conflict".to_string(), format!("plan {name}: {e}")))?;
                match &p.origin {
                    Some(o) if o.site == *peer && o.plan_id == *plan_id => Some(p),
                    _ => {
                        return Err((
                            "conflict".into(),
                            format!("site {} has a plan named {name} of its own", self.id.site),
                        ))
                    }
                }
            }
            None => None,
        };
        let agents: Vec<AgentRecord> = load(&self.store, AGENTS).await.map_err(store_err)?;
        let now = jiff::Timestamp::now();
        let up: Vec<&AgentRecord> = agents
            .iter()
            .filter(|a| a.status_at(now) == "up" && a.replication_address.is_some())
            .collect();
        let old_places: Vec<MirrorPlace> = old
            .as_ref()
            .and_then(|p| p.origin.as_ref())
            .map(|o| o.mirrors.clone())
            .unwrap_or_default();
        // Where this site holds snapshots a new mirror may be seeded from (read only when
        // a volume with seeds has no mirror yet).
        let new_with_seeds = volumes.iter().any(|v| {
            !v.seeds.is_empty()
                && !old_places
                    .iter()
                    .any(|p| p.node == v.node && p.volume == v.volume)
        });
        let seeded = if new_with_seeds {
            self.roots_held().await.map_err(store_err)?
        } else {
            BTreeMap::new()
        };
        // Room promised on each node by this placement.
        let mut promised: BTreeMap<Name, u64> = BTreeMap::new();
        let mut places = Vec::new();
        for v in &volumes {
            if v.seeds.len() > ferry_wire::site::MAX_SEEDS {
                return Err(("invalid".into(), "too many seeds".into()));
            }
            let kept = old_places.iter().find(|p| {
                p.node == v.node
                    && p.volume == v.volume
                    && agents.iter().any(|a| a.node == p.mirror_node)
            });
            let place = match kept {
                Some(p) => MirrorPlace {
                    size: v.size,
                    ..p.clone()
                },
                None => {
                    // A node holding a snapshot with one of the seeds' roots first (its agent
                    // makes the mirror from it: a clone on reflink, and only what changed
                    // since travels), then the one with the most room.
                    let holds_seed = |node: &Name| {
                        v.seeds
                            .iter()
                            .any(|r| seeded.get(r).is_some_and(|nodes| nodes.contains(node)))
                    };
                    let best = up
                        .iter()
                        .map(|a| {
                            let taken = promised.get(&a.node).copied().unwrap_or(0);
                            (a.free_bytes.saturating_sub(taken), *a)
                        })
                        .filter(|(room, _)| *room >= v.size)
                        .max_by(|x, y| {
                            holds_seed(&x.1.node)
                                .cmp(&holds_seed(&y.1.node))
                                .then(x.0.cmp(&y.0))
                                .then(y.1.node.cmp(&x.1.node))
                        });
                    let Some((_, a)) = best else {
                        return Err((
                            "no_space".into(),
                            format!(
                                "no agent of site {} that is up has room for a {}-byte mirror of {}/{}",
                                self.id.site, v.size, v.node, v.volume
                            ),
                        ));
                    };
                    MirrorPlace {
                        node: v.node.clone(),
                        volume: v.volume.clone(),
                        mirror_node: a.node.clone(),
                        mirror: mirror_name(peer, &v.node, &v.volume),
                        size: v.size,
                    }
                }
            };
            *promised.entry(place.mirror_node.clone()).or_default() += v.size;
            places.push(place);
        }
        let mut placements = Vec::new();
        for p in &places {
            let Some(address) = agents
                .iter()
                .find(|a| a.node == p.mirror_node)
                .and_then(|a| a.replication_address.clone())
            else {
                return Err((
                    "unavailable".into(),
                    format!("agent {} has not said where it listens", p.mirror_node),
                ));
            };
            placements.push(Placement {
                node: p.node.clone(),
                volume: p.volume.clone(),
                mirror_node: p.mirror_node.clone(),
                mirror: p.mirror.clone(),
                address,
            });
        }
        let origin = Origin {
            site: peer.clone(),
            plan: plan.clone(),
            plan_id: plan_id.clone(),
            mirrors: places,
            drill: spec.drill.clone(),
            created: old
                .as_ref()
                .and_then(|p| p.origin.as_ref())
                .map_or(now.to_string(), |o| o.created.clone()),
        };
        // The mirror objects: each protected volume its mirror here, switches mapped.
        let mut mirror_objects = Vec::new();
        for o in &spec.objects {
            let m = o
                .mirrored(
                    o.name.clone(),
                    |v| {
                        origin
                            .mirrors
                            .iter()
                            .find(|p| p.node == v.node && p.volume == v.volume)
                            .map(|p| crate::policy::model::VolumeRef {
                                node: p.mirror_node.clone(),
                                volume: p.mirror.clone(),
                            })
                    },
                    &spec.switches,
                )
                .map_err(|e| ("invalid".to_string(), format!("object {}: {e}", o.name)))?;
            mirror_objects.push(m);
        }
        let rec = PlanRecord {
            id: Some(id.clone()),
            spec: PlanSpec {
                name: name.clone(),
                objects: Vec::new(),
                schedule: spec.schedule,
                retention,
                enabled: true,
                hooks: Default::default(),
                targets: Vec::new(),
                rpo_secs: spec.rpo_secs,
            },
            paused: true,
            next_run: None,
            origin: Some(origin),
        };
        let mut changed = old.as_ref().is_none_or(|o| {
            o.origin != rec.origin
                || o.spec.retention != retention
                || o.spec.schedule != rec.spec.schedule
        });
        let stored: Vec<crate::policy::model::Object> = load(&self.store, &schema::mirrors_of(&id))
            .await
            .map_err(store_err)?;
        let mut sorted = mirror_objects.clone();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        changed |= stored != sorted;
        if changed {
            let v = serde_json::to_vec(&rec).map_err(|e| ("invalid".to_string(), e.to_string()))?;
            let when = match &existing {
                Some(kv) => Compare::ModRevision(key.clone(), kv.mod_revision),
                None => Compare::Absent(key.clone()),
            };
            let then = vec![Op::Put(key, v)];
            let done = self
                .store
                .txn(Txn {
                    when: vec![when, term.fence()],
                    then,
                })
                .await
                .map_err(store_err)?;
            if !done.succeeded {
                return Err(("unavailable".into(), "changed meanwhile; ask again".into()));
            }
            // The mirror objects, in bounded transactions after the plan (a prepare is
            // asked again until it is answered, so a partial write is completed).
            let mut ops = Vec::new();
            for o in &stored {
                if !sorted.iter().any(|x| x.name == o.name) {
                    ops.push(Op::Delete(schema::mirror_key(&id, &o.name)));
                }
            }
            for o in &sorted {
                let v =
                    serde_json::to_vec(o).map_err(|e| ("invalid".to_string(), e.to_string()))?;
                ops.push(Op::Put(schema::mirror_key(&id, &o.name), v));
            }
            while !ops.is_empty() {
                let rest = ops.split_off(ops.len().min(64));
                self.store
                    .txn(Txn {
                        when: vec![term.fence()],
                        then: std::mem::replace(&mut ops, rest),
                    })
                    .await
                    .map_err(store_err)?;
            }
            tracing::info!(plan = %name, site = %peer, objects = sorted.len(), "foreign plan prepared");
        }
        Ok(SiteResponse::Prepared {
            foreign_plan: name,
            placements,
        })
    }

    /// Every manifest root this site's groups (of all plans) and rebuilt volumes hold, with
    /// the nodes holding it.
    async fn roots_held(
        &self,
    ) -> Result<BTreeMap<String, std::collections::BTreeSet<Name>>, crate::state::StoreError> {
        let mut out: BTreeMap<String, std::collections::BTreeSet<Name>> = BTreeMap::new();
        for p in load::<PlanRecord>(&self.store, schema::PLANS).await? {
            for g in load::<GroupRecord>(&self.store, &schema::groups_of(p.id())).await? {
                for (node, s) in g.snapshots {
                    out.entry(s.root).or_default().insert(node);
                }
            }
        }
        for kv in self.store.list(schema::LINEAGE).await? {
            let node = kv.key[schema::LINEAGE.len()..]
                .split('/')
                .next()
                .and_then(|n| Name::new(n).ok());
            if let (Some(node), Ok(l)) = (
                node,
                serde_json::from_slice::<schema::LineageRecord>(&kv.value),
            ) {
                out.entry(l.root).or_default().insert(node);
            }
        }
        Ok(out)
    }

    /// Records a mirror group of `peer`'s plan (idempotent).
    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        term: &crate::daemon::leader::Term,
        peer: &Name,
        plan: &Name,
        plan_id: &Name,
        group: &Name,
        created: &str,
        snapshots: Vec<MirrorSnapshot>,
    ) -> Result<SiteResponse, (String, String)> {
        let store_err = |e: crate::state::StoreError| ("unavailable".to_string(), e.to_string());
        let name = foreign_name(peer, plan);
        let Some(kv) = self
            .store
            .get(&schema::plan_key(&name))
            .await
            .map_err(store_err)?
        else {
            return Err((
                "not_found".into(),
                format!("no foreign plan {name}: prepare first"),
            ));
        };
        let p: PlanRecord = serde_json::from_slice(&kv.value)
            .map_err(|e| ("conflict".to_string(), e.to_string()))?;
        let Some(origin) = p
            .origin
            .as_ref()
            .filter(|o| o.site == *peer && o.plan_id == *plan_id)
        else {
            return Err((
                "conflict".into(),
                format!("plan {name} is not this plan's mirror"),
            ));
        };
        if snapshots.len() != origin.mirrors.len() {
            return Err((
                "invalid".into(),
                format!(
                    "a group of {} mirrors {} volumes, not {}",
                    name,
                    origin.mirrors.len(),
                    snapshots.len()
                ),
            ));
        }
        for s in &snapshots {
            let placed = origin.mirrors.iter().any(|m| {
                m.node == s.node
                    && m.volume == s.volume
                    && m.mirror == s.mirror
                    && m.mirror_node == s.mirror_node
            });
            if !placed {
                return Err((
                    "invalid".into(),
                    format!(
                        "{}/{} is not a mirror of plan {name}",
                        s.mirror_node, s.mirror
                    ),
                ));
            }
        }
        let id = p.id().clone();
        // The objects as they are now (the prepare of this run wrote them), kept with the
        // group: a rebuild from it makes them as they were.
        let mut mirror_objects: Vec<crate::policy::model::Object> =
            load(&self.store, &schema::mirrors_of(&id))
                .await
                .map_err(store_err)?;
        mirror_objects.sort_by(|a, b| a.name.cmp(&b.name));
        let g = GroupRecord {
            plan: name.clone(),
            plan_id: Some(id.clone()),
            group: group.clone(),
            run: group.clone(),
            created: created
                .parse::<jiff::Timestamp>()
                .map_or_else(|_| jiff::Timestamp::now().to_string(), |t| t.to_string()),
            snapshots: snapshots
                .iter()
                .map(|s| {
                    (
                        s.mirror_node.clone(),
                        SnapshotRecord {
                            volume: s.mirror.clone(),
                            snapshot: group.clone(),
                            size: s.size,
                            root: s.root.clone(),
                            bytes_read: 0,
                            manifest_ms: 0,
                        },
                    )
                })
                .collect(),
            objects: Vec::new(),
            mirror_objects,
            verified: None,
        };
        let v = serde_json::to_vec(&g).map_err(|e| ("invalid".to_string(), e.to_string()))?;
        let done = self
            .store
            .txn(Txn {
                when: vec![
                    Compare::ModRevision(kv.key.clone(), kv.mod_revision),
                    term.fence(),
                ],
                then: vec![Op::Put(schema::group_key(&id, group), v)],
            })
            .await
            .map_err(store_err)?;
        if !done.succeeded {
            return Err(("unavailable".into(), "changed meanwhile; ask again".into()));
        }
        let groups = self
            .store
            .list(&schema::groups_of(&id))
            .await
            .map_err(store_err)?
            .len() as u32;
        tracing::info!(plan = %name, %group, site = %peer, groups, "mirror group recorded");
        Ok(SiteResponse::Recorded { groups })
    }
}
