//! Leadership among a site's controllers (the seed's "one leader, followers forward").
//!
//! On etcd every controller campaigns in the election [`ELECTION`] under a lease it keeps
//! alive (etcd's election API: the oldest campaigner whose key still exists leads). The
//! winner holds a [`Term`]:
//! - its **generation**, the store's revision when it was elected: higher than any earlier
//!   term's, stamped on every task it sends, so agents refuse a deposed leader's tasks;
//! - its **fence**, a compare on its leader key's revision, added to every write the
//!   scheduler, the executor and the API make for it: once the lease is gone (the leader
//!   was cut off or killed) none of its writes can land.
//!
//! Only the leader schedules, executes runs and links agents; the others serve the HTTP API
//! by forwarding it to the leader ([`crate::daemon::forwarding`]). A leader whose lease could not be
//! renewed in time has lost its term: the process exits, to be restarted as a follower.
//!
//! On the embedded store there is one controller (the database file is locked): it leads
//! at once, and its generation is the revision of the leader record it writes at start.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::state::{Compare, Store, StoreError};

/// The election's name (its keys are `<ELECTION>/<lease>` on etcd).
pub const ELECTION: &str = "/ferry/leader";
const EMBEDDED_KEY: &str = "/ferry/leader/embedded";

/// Who a controller is, as the leader's record tells the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    /// The controller's name (its certificate's node name).
    pub name: String,
    /// Its HTTP API address.
    pub api: String,
    /// Its agent endpoint (UDP `HOST:PORT`): agents and followers connect there.
    pub endpoint: Option<String>,
}

/// A term of leadership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    /// Higher than every earlier term's; stamped on tasks.
    pub generation: u64,
    key: String,
    revision: i64,
}

impl Term {
    /// The condition every write of this term carries: the leader key is still ours.
    pub fn fence(&self) -> Compare {
        Compare::ModRevision(self.key.clone(), self.revision)
    }

    /// A term for tests of the parts that take one.
    pub fn for_tests(generation: u64) -> Term {
        Term {
            generation,
            key: EMBEDDED_KEY.into(),
            revision: 0,
        }
    }
}

/// What this controller is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Campaigning: forwards requests to the leader, refuses agents.
    Follower,
    Leader(Term),
}

/// A held term and how it is kept.
#[derive(Debug)]
pub struct Leadership {
    pub term: Term,
    /// etcd: the lease and the task renewing it (which ends when the lease is lost).
    lease: Option<(i64, tokio::task::JoinHandle<StoreError>)>,
}

impl Leadership {
    /// Resolves when the term is lost, with why; never on the embedded store.
    pub async fn lost(&mut self) -> StoreError {
        match &mut self.lease {
            Some((_, keeper)) => keeper
                .await
                .unwrap_or_else(|e| StoreError::Etcd(format!("lease keeper: {e}"))),
            None => std::future::pending().await,
        }
    }

    /// Gives the term up at once (on etcd the lease is revoked, so a follower takes over
    /// without waiting for it to expire).
    pub async fn resign(self, store: &Store) {
        if let (Some((lease, keeper)), Store::Etcd(s)) = (self.lease, store) {
            keeper.abort();
            if let Err(e) = s.revoke(lease).await {
                tracing::warn!(error = %e, "could not revoke the leader lease; it expires by itself");
            }
        }
    }
}

/// Becomes the leader: at once on the embedded store; on etcd, after campaigning (under a
/// lease of `ttl`, renewed every third of it) until elected.
pub async fn elect(
    store: &Store,
    me: &LeaderInfo,
    ttl: Duration,
) -> Result<Leadership, StoreError> {
    let value = serde_json::to_vec(me).map_err(|e| StoreError::Embedded(e.to_string()))?;
    let s = match store {
        Store::Embedded(_) => {
            let revision = store.put(EMBEDDED_KEY, &value).await?;
            return Ok(Leadership {
                term: Term {
                    generation: revision as u64,
                    key: EMBEDDED_KEY.into(),
                    revision,
                },
                lease: None,
            });
        }
        Store::Etcd(s) => s,
    };
    let ttl_secs = ttl.as_secs().max(2) as i64;
    let renew = Duration::from_secs(ttl_secs as u64) / 3;
    let give_up = Duration::from_secs(ttl_secs as u64) - renew / 2;
    loop {
        let lease = s.grant(ttl_secs).await?;
        let k = s.clone();
        let keeper = tokio::spawn(async move { k.keep_alive(lease, renew, give_up).await });
        let key = loop {
            if keeper.is_finished() {
                break None; // the lease went while waiting: take a new one
            }
            match s.campaign(ELECTION, &value, lease).await {
                Ok(k) => break Some(k),
                Err(e) => {
                    // etcd-client's request timeout ends a long campaign: campaign again
                    // with the same lease, which keeps its place in line.
                    tracing::debug!(error = %e, "campaign interrupted; campaigning again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        let Some(key) = key else {
            tracing::warn!("leader lease lost while campaigning; starting over");
            continue;
        };
        // Elected: read what the fence compares. Should that fail, give the lease up, or
        // its key would stand in line before this controller's next campaign forever.
        let fence = async {
            let kv = store.get(&key).await?;
            let generation = store.revision().await? as u64;
            Ok::<_, StoreError>(kv.map(|kv| (kv.mod_revision, generation)))
        };
        let (revision, generation) = match fence.await {
            Ok(Some(f)) => f,
            Ok(None) => {
                keeper.abort();
                continue; // elected and gone at once: campaign again
            }
            Err(e) => {
                keeper.abort();
                let _ = s.revoke(lease).await;
                return Err(e);
            }
        };
        tracing::info!(generation, key, "elected leader");
        return Ok(Leadership {
            term: Term {
                generation,
                key,
                revision,
            },
            lease: Some((lease, keeper)),
        });
    }
}

/// The current leader, as its record says (`None` while there is none).
pub async fn current(store: &Store) -> Result<Option<LeaderInfo>, StoreError> {
    let raw = match store {
        Store::Etcd(s) => s.leader(ELECTION).await?,
        Store::Embedded(_) => store.get(EMBEDDED_KEY).await?.map(|kv| kv.value),
    };
    Ok(raw.and_then(|v| serde_json::from_slice(&v).ok()))
}
