//! `ferry-controller serve`: the process. [`serve`] opens the store (refusing a newer
//! schema), binds the HTTP API and the agent endpoint, then runs them with the leadership
//! loop: campaign, and while leading migrate the store, schedule and execute; a lost lease
//! ends the process (a supervisor restarts it as a follower).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use ferry_controller::http::{self, ApiState};
use ferry_controller::state::{EmbeddedStore, EtcdStore, Store};

use crate::config::{tokens, Config, StoreConfig};

/// Where a started controller listens.
#[derive(Debug, Clone, Copy)]
pub struct Ready {
    pub api: SocketAddr,
    pub endpoint: Option<SocketAddr>,
}

async fn open_store(cfg: &StoreConfig) -> anyhow::Result<Store> {
    Ok(match cfg {
        StoreConfig::Embedded { path } => Store::Embedded(
            EmbeddedStore::open(path).with_context(|| format!("open {}", path.display()))?,
        ),
        StoreConfig::Etcd { endpoints, .. } => Store::Etcd(
            EtcdStore::connect(endpoints)
                .await
                .context("connect to etcd")?,
        ),
    })
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn terminated() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// A stop signal that many tasks wait on.
#[derive(Clone)]
struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    fn new() -> (tokio::sync::watch::Sender<bool>, Stop) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Stop(rx))
    }

    /// Resolves once the stop is given.
    fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }
}

/// The store, opened and checked: a newer schema than this code knows is refused.
async fn open_checked(cfg: &StoreConfig) -> anyhow::Result<Store> {
    let store = open_store(cfg).await?;
    let schema = ferry_controller::state::migrate::check(&store)
        .await
        .context("the state store")?;
    tracing::info!(
        schema,
        knows = ferry_controller::state::schema::VERSION,
        "state store opened"
    );
    Ok(store)
}

/// The agent endpoint bound (if configured), with where agents and other controllers are
/// told to reach it.
type Endpoint = (ferry_controller::daemon::agents::Bound, SocketAddr, String);

fn bind_endpoint(cfg: &Config, store: &Store) -> anyhow::Result<Option<Endpoint>> {
    let Some(a) = &cfg.agents else {
        return Ok(None);
    };
    let bound = ferry_controller::daemon::agents::bind(a).context("agent endpoint")?;
    let at = bound.local_addr()?;
    let advertised = match &a.advertise {
        Some(adv) => adv.clone(),
        None if at.ip().is_unspecified() && matches!(store, Store::Etcd(_)) => bail!(
            "agents.advertise: the endpoint listens on {at}; say where the site's agents and \
             other controllers reach it"
        ),
        None => at.to_string(),
    };
    Ok(Some((bound, at, advertised)))
}

/// The leadership loop's task: campaign; once elected, migrate the store, then schedule and
/// execute until the lease is lost (an error: the process must restart as a follower) or
/// `stop` (resign, so a follower takes over at once).
#[allow(clippy::too_many_arguments)]
fn lead(
    store: Store,
    me: ferry_controller::daemon::leader::LeaderInfo,
    ttl: Duration,
    links: Arc<ferry_controller::daemon::agents::Links>,
    sites: Option<Arc<ferry_controller::daemon::sites::Sites>>,
    settings: ferry_controller::daemon::executor::Settings,
    webhooks: Vec<ferry_controller::daemon::notify::Webhook>,
    role: tokio::sync::watch::Sender<ferry_controller::daemon::leader::Role>,
    stop: Stop,
) -> tokio::task::JoinHandle<Result<(), String>> {
    use ferry_controller::daemon::leader::{self, Role};
    tokio::spawn(async move {
        let elect = async {
            loop {
                match leader::elect(&store, &me, ttl).await {
                    Ok(l) => break l,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot campaign for leadership; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        };
        let mut l = tokio::select! {
            l = elect => l,
            _ = stop.wait() => return Ok(()),
        };
        let term = l.term.clone();
        // The store is brought to this code's schema before anything is scheduled.
        if let Err(e) = ferry_controller::state::migrate::migrate(&store, &term.fence()).await {
            l.resign(&store).await;
            return Err(format!("cannot migrate the state store: {e}"));
        }
        tracing::info!(
            generation = term.generation,
            "leading: scheduling and running plans"
        );
        let _ = role.send(Role::Leader(term.clone()));
        let scheduler = tokio::spawn(ferry_controller::daemon::scheduler::run(
            store.clone(),
            term.clone(),
            stop.wait(),
        ));
        let executor = tokio::spawn(ferry_controller::daemon::executor::run(
            store.clone(),
            links,
            sites,
            term,
            settings,
            stop.wait(),
        ));
        let notifier = tokio::spawn(ferry_controller::daemon::notify::run(
            store.clone(),
            webhooks,
            stop.wait(),
        ));
        let outcome = tokio::select! {
            why = l.lost() => Err(why),
            _ = stop.wait() => Ok(()),
        };
        let _ = role.send(Role::Follower);
        scheduler.abort();
        executor.abort();
        notifier.abort();
        match outcome {
            Ok(()) => {
                l.resign(&store).await;
                Ok(())
            }
            Err(why) => Err(format!(
                "lost the leadership ({why}); exiting so that this controller restarts as a follower"
            )),
        }
    })
}

/// Runs the controller until `until` resolves (or its leadership is lost: an error).
/// `ready` is told where it listens once it does.
pub async fn serve(
    cfg: Config,
    ready: impl FnOnce(Ready),
    until: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use ferry_controller::daemon::leader::{LeaderInfo, Role};
    let store = open_checked(&cfg.store).await?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listen on {}", cfg.listen))?;
    let api_addr = listener.local_addr()?;
    let endpoint = bind_endpoint(&cfg, &store)?;

    // The API, shared by HTTP and the followers' forwarded requests. A follower forwards
    // to the leader as this controller (several controllers on etcd).
    let links = Arc::new(ferry_controller::daemon::agents::Links::default());
    let (role_tx, role_rx) = tokio::sync::watch::channel(Role::Follower);
    let forwarder = match (&store, &endpoint) {
        (Store::Etcd(_), Some((b, _, _))) => {
            let (id, trust) = b.credentials();
            Some(Arc::new(
                ferry_controller::daemon::forwarding::Forwarder::new(id, trust),
            ))
        }
        _ => None,
    };
    let name = match &endpoint {
        Some((b, _, _)) => b.credentials().0.node.to_string(),
        None => "controller".to_string(),
    };
    let settings = ferry_controller::daemon::executor::Settings {
        site: match &endpoint {
            Some((b, _, _)) => b.credentials().0.site.clone(),
            None => ferry_wire::Name::new("local").context("site name")?,
        },
        recovery: cfg.recovery.clone(),
    };
    let mut state = ApiState::new(
        store.clone(),
        tokens(&cfg)?,
        role_rx.clone(),
        forwarder,
        links.clone(),
    );
    state.recovery = cfg.recovery.clone();
    let sites = endpoint.as_ref().map(|(b, _, adv)| {
        Arc::new(ferry_controller::daemon::sites::Sites::new(
            store.clone(),
            links.clone(),
            role_rx.clone(),
            b.credentials().0,
            b.pairing(),
            adv.clone(),
        ))
    });
    if let Some((b, _, _)) = &endpoint {
        let _ = state.certificate_expires.set(b.credentials().0.not_after);
    }
    if let Some(x) = &sites {
        let _ = state.sites.set(x.clone());
    }
    let state = Arc::new(state);
    let router = http::router(state);

    // Serving: the agent endpoint and HTTP until the end; leadership until `until`.
    let (stop_tx, stop) = Stop::new();
    let endpoint_addr = endpoint.as_ref().map(|(_, at, _)| *at);
    let mut advertised = None;
    let agents = endpoint
        .zip(sites.clone())
        .map(|((bound, at, adv), sites)| {
            tracing::info!(addr = %at, "agent endpoint up");
            advertised = Some(adv);
            tokio::spawn(ferry_controller::daemon::agents::serve(
                bound,
                ferry_controller::daemon::agents::Context {
                    store: store.clone(),
                    links: links.clone(),
                    role: role_rx.clone(),
                    router: router.clone(),
                    sites,
                },
                stop.wait(),
            ))
        });
    let keeper = sites.clone().map(|x| tokio::spawn(x.keep(stop.wait())));
    tracing::info!(addr = %api_addr, "HTTP API up");
    let http = tokio::spawn(http::server::serve(listener, router, stop.wait()));
    ready(Ready {
        api: api_addr,
        endpoint: endpoint_addr,
    });
    let me = LeaderInfo {
        name,
        api: format!("http://{api_addr}"),
        endpoint: advertised,
    };
    let ttl = Duration::from_secs(cfg.store.lease_ttl_secs());
    let (lead_stop_tx, lead_stop) = Stop::new();
    let webhooks = cfg.webhooks.clone();
    let mut leading = lead(
        store, me, ttl, links, sites, settings, webhooks, role_tx, lead_stop,
    );
    let result = tokio::select! {
        _ = until => Ok(()),
        r = &mut leading => match r {
            Ok(Err(why)) => Err(anyhow::anyhow!(why)),
            Ok(Ok(())) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("leadership task: {e}")),
        },
    };

    // Shutting down: resign first (a follower takes over at once), then stop serving.
    let _ = lead_stop_tx.send(true);
    if !leading.is_finished() {
        let _ = leading.await;
    }
    let _ = stop_tx.send(true);
    let _ = http.await;
    if let Some(a) = agents {
        let _ = a.await;
    }
    if let Some(k) = keeper {
        let _ = k.await;
    }
    result
}

/// A new random API token and its BLAKE3 hash (hex).
pub fn new_token() -> (String, String) {
    let mut raw = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let hash = blake3::hash(token.as_bytes()).to_hex().to_string();
    (token, hash)
}
