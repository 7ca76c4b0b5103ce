//! The sites this agent replicates with: those in its own configuration (`net.peer_cas`)
//! and those its controller pairs the site with, pushed over the control link
//! ([`ControllerMsg::Peers`](ferry_wire::control::ControllerMsg::Peers)). Pushed sites are
//! kept in `peers.json` in the data directory, so an agent restarted while its controller
//! is away still serves and reaches them. A change replaces the endpoint's TLS settings for
//! new connections and the connections used for sending; connections already up stay.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ferry_wire::control::{PeerSite, MAX_CA_PEM, MAX_PEER_SITES};

use crate::config::AgentConfig;
use crate::error::{IoContext, Result, StoreError};
use crate::net::{self, NetError};
use crate::pki::{Identity, Trust, TrustCell};
use crate::replication::send::Peers;

const FILE: &str = "peers.json";

fn net_err(e: NetError) -> StoreError {
    StoreError::Net {
        retryable: e.retryable(),
        message: e.to_string(),
    }
}

/// The configured CAs plus the pushed sites (a site configured by hand wins; this node's own
/// site is never a peer).
fn build(cfg: &AgentConfig, own: &ferry_wire::Name, pushed: &[PeerSite]) -> Result<Trust> {
    let mut trust = Trust::default();
    for ca in &cfg.net.peer_cas {
        trust.add_file(ca, None)?;
    }
    for p in pushed.iter().take(MAX_PEER_SITES) {
        if p.site == *own || trust.has(&p.site) || p.ca_pem.len() > MAX_CA_PEM {
            continue;
        }
        if let Err(e) = trust.add_pem(&p.ca_pem, Some(&p.site)) {
            tracing::warn!(site = %p.site, error = %e, "ignoring a paired site's CA");
        }
    }
    Ok(trust)
}

/// The TLS roots the endpoint needs to exist at all: the peers, or (none paired yet) this
/// site's own CA, whose nodes the handshake then refuses as not paired.
fn tls_roots(cfg: &AgentConfig, trust: &Trust) -> Result<Trust> {
    if !trust.is_empty() {
        return Ok(trust.clone());
    }
    let Some(own) = &cfg.controller.ca else {
        return Err(StoreError::Invalid(
            "no paired site: net.peer_cas lists no CA certificate, and no controller is configured to pair sites".into(),
        ));
    };
    let mut t = Trust::default();
    t.add_file(own, None)?;
    Ok(t)
}

/// The agent's paired sites, shared by its endpoint, its sender and its controller link.
pub struct PeerSites {
    cfg: AgentConfig,
    id: Arc<Identity>,
    cell: TrustCell,
    path: PathBuf,
    endpoint: Mutex<Option<quinn::Endpoint>>,
    generation: AtomicU64,
    senders: tokio::sync::Mutex<Option<(u64, Arc<Peers>)>>,
    pushed: Mutex<Vec<PeerSite>>,
}

impl std::fmt::Debug for PeerSites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSites")
            .field("sites", &self.cell.get().sites().collect::<Vec<_>>())
            .finish()
    }
}

impl PeerSites {
    /// The configured sites and those kept from the controller's last push.
    pub fn load(cfg: &AgentConfig, id: Arc<Identity>) -> Result<PeerSites> {
        let path = cfg.data_dir.join(FILE);
        let pushed: Vec<PeerSite> = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable list of paired sites");
                Vec::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(crate::error::io_err(e, "read", path)),
        };
        let trust = build(cfg, &id.site, &pushed)?;
        Ok(PeerSites {
            cfg: cfg.clone(),
            id,
            cell: TrustCell::new(trust),
            path,
            endpoint: Mutex::new(None),
            generation: AtomicU64::new(0),
            senders: tokio::sync::Mutex::new(None),
            pushed: Mutex::new(pushed),
        })
    }

    /// The trust now (who may connect, whom to connect to).
    pub fn trust(&self) -> Arc<Trust> {
        self.cell.get()
    }

    /// The endpoint's TLS settings for the trust now.
    pub fn server_config(&self) -> Result<quinn::ServerConfig> {
        let roots = tls_roots(&self.cfg, &self.cell.get())?;
        let mut sc = net::server_config(&self.id, &roots).map_err(net_err)?;
        sc.transport_config(net::transport_with(self.cfg.net.windows()));
        Ok(sc)
    }

    /// The endpoint whose TLS settings follow changes.
    pub fn attach(&self, ep: quinn::Endpoint) {
        if let Ok(mut e) = self.endpoint.lock() {
            *e = Some(ep);
        }
    }

    /// The controller's list of paired sites: kept, and in force for new connections.
    pub fn apply(&self, sites: Vec<PeerSite>) -> Result<()> {
        let same = self.pushed.lock().is_ok_and(|p| *p == sites);
        if same {
            return Ok(());
        }
        let trust = build(&self.cfg, &self.id.site, &sites)?;
        let bytes = serde_json::to_vec_pretty(&sites)
            .map_err(|e| StoreError::Invalid(format!("paired sites: {e}")))?;
        crate::fsx::atomic_write(&self.path, &bytes).ctx("write", &self.path)?;
        let names: Vec<String> = trust.sites().map(|s| s.to_string()).collect();
        self.cell.set(trust);
        if let Ok(mut p) = self.pushed.lock() {
            *p = sites;
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
        let sc = self.server_config()?;
        if let Some(ep) = self.endpoint.lock().ok().and_then(|e| e.clone()) {
            ep.set_server_config(Some(sc));
        }
        tracing::info!(sites = ?names, "paired sites changed");
        Ok(())
    }

    /// The connections for sending under the trust now (made again after a change).
    pub async fn senders(&self) -> Result<Arc<Peers>> {
        let g = self.generation.load(Ordering::SeqCst);
        let mut s = self.senders.lock().await;
        if let Some((at, p)) = s.as_ref() {
            if *at == g {
                return Ok(p.clone());
            }
        }
        let trust = self.cell.get();
        if trust.is_empty() {
            return Err(StoreError::Refused(
                "no paired site: this node knows no site to send to".into(),
            ));
        }
        let p = Arc::new(
            Peers::with(
                self.id.as_ref().clone(),
                trust.as_ref().clone(),
                self.cfg.net.windows(),
            )?
            .learning(&self.cfg),
        );
        *s = Some((g, p.clone()));
        Ok(p)
    }

    /// Where the list is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
