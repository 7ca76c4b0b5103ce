//! The etcd store: the same operations on an etcd cluster (`etcd-client`), for several
//! controllers sharing one state. Revisions are etcd's own; compare-and-swap is an etcd
//! transaction (`create_revision == 0` for "absent", `mod_revision == r` otherwise); a watch
//! is an etcd prefix watch from the given revision, and a watch whose start revision was
//! compacted away is reported as [`StoreError::WatchLagged`].

use std::time::Duration;

use etcd_client::{
    Client, Compare as ECompare, CompareOp, ConnectOptions, EventType, GetOptions, TxnOp,
    WatchOptions,
};

use super::{Compare, Event, KeyValue, Op, Result, StoreError, Txn, TxnOutcome, Watch};

/// The etcd store; cheap to clone (the client multiplexes one channel; boxed, since it is
/// large and the store is passed around by value).
#[derive(Clone)]
pub struct EtcdStore {
    client: Box<Client>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").finish_non_exhaustive()
    }
}

fn err(e: etcd_client::Error) -> StoreError {
    StoreError::Etcd(e.to_string())
}

fn kv(k: &etcd_client::KeyValue) -> Result<KeyValue> {
    Ok(KeyValue {
        key: k
            .key_str()
            .map_err(|_| StoreError::Etcd("a key is not UTF-8".into()))?
            .to_string(),
        value: k.value().to_vec(),
        mod_revision: k.mod_revision(),
    })
}

/// Keys read per response when listing a prefix (records are at most 1 MiB; most are a
/// few KiB, so a page stays far under the client's 4 MiB).
const LIST_PAGE: usize = 256;

/// The end of the range of keys starting with `prefix` (etcd's `range_end`).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn revision_of(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.map_or(0, |h| h.revision())
}

impl EtcdStore {
    /// Connects to `endpoints` (e.g. `http://127.0.0.1:2379`).
    pub async fn connect(endpoints: &[String]) -> Result<EtcdStore> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10));
        let client = Client::connect(endpoints, Some(opts)).await.map_err(err)?;
        Ok(EtcdStore {
            client: Box::new(client),
        })
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let r = (*self.client).clone().get(key, None).await.map_err(err)?;
        r.kvs().first().map(kv).transpose()
    }

    pub(super) async fn put(&self, key: &str, value: &[u8]) -> Result<i64> {
        let r = self
            .client
            .as_ref()
            .clone()
            .put(key, value, None)
            .await
            .map_err(err)?;
        Ok(revision_of(r.header()))
    }

    pub(super) async fn delete(&self, key: &str) -> Result<bool> {
        let r = (*self.client)
            .clone()
            .delete(key, None)
            .await
            .map_err(err)?;
        Ok(r.deleted() > 0)
    }

    /// Several gets, [`super::MAX_TXN_OPS`] to a transaction: one round trip each.
    pub(super) async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(super::MAX_TXN_OPS) {
            let ops: Vec<TxnOp> = chunk.iter().map(|k| TxnOp::get(k.as_str(), None)).collect();
            let r = (*self.client)
                .clone()
                .txn(etcd_client::Txn::new().and_then(ops))
                .await
                .map_err(err)?;
            let answers = r.op_responses();
            if answers.len() != chunk.len() {
                return Err(StoreError::Etcd(format!(
                    "{} gets answered {} times",
                    chunk.len(),
                    answers.len()
                )));
            }
            for a in answers {
                match a {
                    etcd_client::TxnOpResponse::Get(g) => {
                        out.push(g.kvs().first().map(kv).transpose()?)
                    }
                    _ => return Err(StoreError::Etcd("a get answered as something else".into())),
                }
            }
        }
        Ok(out)
    }

    /// Every key under `prefix`, read in pages of [`LIST_PAGE`] at one revision (one etcd
    /// response is bounded; a prefix of many records is not).
    pub(super) async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        let mut at = 0;
        loop {
            let (page, more, rev) = self.page(prefix, after.as_deref(), LIST_PAGE, at).await?;
            at = rev;
            after = page.last().map(|kv| kv.key.clone());
            out.extend(page);
            if !more {
                return Ok(out);
            }
        }
    }

    /// At most `limit` keys under `prefix` after `after` (exclusive), in key order, and
    /// whether more follow.
    pub(super) async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<KeyValue>, bool)> {
        let (page, more, _) = self.page(prefix, after, limit, 0).await?;
        Ok((page, more))
    }

    /// One page, read at revision `at` (0: the newest); returns the revision it was read at.
    async fn page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        at: i64,
    ) -> Result<(Vec<KeyValue>, bool, i64)> {
        let start = match after {
            Some(a) => format!("{a}\0"),
            None => prefix.to_string(),
        };
        let mut opts = GetOptions::new()
            .with_range(prefix_end(prefix))
            .with_limit(limit as i64 + 1)
            .with_sort(etcd_client::SortTarget::Key, etcd_client::SortOrder::Ascend);
        if at > 0 {
            opts = opts.with_revision(at);
        }
        let r = self
            .client
            .as_ref()
            .clone()
            .get(start, Some(opts))
            .await
            .map_err(err)?;
        let mut page: Vec<KeyValue> = r.kvs().iter().map(kv).collect::<Result<_>>()?;
        let more = page.len() > limit;
        page.truncate(limit);
        Ok((page, more, revision_of(r.header())))
    }

    pub(super) async fn revision(&self) -> Result<i64> {
        let r = self
            .client
            .as_ref()
            .clone()
            .get("\u{1}", Some(GetOptions::new().with_count_only()))
            .await
            .map_err(err)?;
        Ok(revision_of(r.header()))
    }

    pub(super) async fn txn(&self, txn: Txn) -> Result<TxnOutcome> {
        let when: Vec<ECompare> = txn
            .when
            .iter()
            .map(|c| match c {
                Compare::Absent(k) => ECompare::create_revision(k.as_str(), CompareOp::Equal, 0),
                Compare::ModRevision(k, r) => {
                    ECompare::mod_revision(k.as_str(), CompareOp::Equal, *r)
                }
            })
            .collect();
        let then: Vec<TxnOp> = txn
            .then
            .iter()
            .map(|op| match op {
                Op::Put(k, v) => TxnOp::put(k.as_str(), v.clone(), None),
                Op::Delete(k) => TxnOp::delete(k.as_str(), None),
            })
            .collect();
        let r = self
            .client
            .as_ref()
            .clone()
            .txn(etcd_client::Txn::new().when(when).and_then(then))
            .await
            .map_err(err)?;
        Ok(TxnOutcome {
            succeeded: r.succeeded(),
            revision: revision_of(r.header()),
        })
    }

    pub(super) async fn watch(&self, prefix: &str, after: i64) -> Result<Watch> {
        let mut opts = WatchOptions::new().with_prefix();
        if after > 0 {
            opts = opts.with_start_revision(after + 1);
        }
        let mut stream = self
            .client
            .as_ref()
            .clone()
            .watch(prefix, Some(opts))
            .await
            .map_err(err)?;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            // The stream owns the watch; dropping it (when the receiver goes) cancels it.
            loop {
                let msg = match stream.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(err(e))).await;
                        return;
                    }
                };
                if msg.canceled() {
                    let why = if msg.compact_revision() > 0 {
                        StoreError::WatchLagged
                    } else {
                        StoreError::Etcd(format!("watch canceled: {}", msg.cancel_reason()))
                    };
                    let _ = tx.send(Err(why)).await;
                    return;
                }
                // The first message only says the watch was created; it carries no events.
                for e in msg.events() {
                    let Some(k) = e.kv() else { continue };
                    let ev = match e.event_type() {
                        EventType::Put => kv(k).map(Event::Put),
                        EventType::Delete => kv(k).map(|k| Event::Delete {
                            key: k.key,
                            mod_revision: k.mod_revision,
                        }),
                    };
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Watch { rx })
    }

    /// A lease of `ttl_secs`; keys put under it go when it is not kept alive.
    pub async fn grant(&self, ttl_secs: i64) -> Result<i64> {
        let r = (*self.client)
            .clone()
            .lease_grant(ttl_secs, None)
            .await
            .map_err(err)?;
        Ok(r.id())
    }

    /// Ends a lease at once (its keys go).
    pub async fn revoke(&self, lease: i64) -> Result<()> {
        (*self.client)
            .clone()
            .lease_revoke(lease)
            .await
            .map_err(err)?;
        Ok(())
    }

    /// Keeps `lease` alive until it cannot: renews every `every`, and returns why once no
    /// renewal succeeded for `give_up` (the lease may be gone) or etcd says it expired.
    pub async fn keep_alive(&self, lease: i64, every: Duration, give_up: Duration) -> StoreError {
        let mut last_ok = tokio::time::Instant::now();
        let mut link = None;
        loop {
            if last_ok.elapsed() > give_up {
                return StoreError::Etcd(format!("no lease renewal for {} s", give_up.as_secs()));
            }
            if link.is_none() {
                match (*self.client).clone().lease_keep_alive(lease).await {
                    Ok(l) => link = Some(l),
                    Err(e) => {
                        tracing::warn!(error = %e, "lease keep-alive: cannot reach etcd; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            let Some((keeper, stream)) = link.as_mut() else {
                continue;
            };
            let renewed = async {
                keeper.keep_alive().await?;
                stream.message().await
            };
            match tokio::time::timeout(every, renewed).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {
                    last_ok = tokio::time::Instant::now();
                    tokio::time::sleep(every).await;
                }
                Ok(Ok(Some(_))) => return StoreError::Etcd("the lease expired".into()),
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                    tracing::warn!("lease keep-alive: no answer; reconnecting");
                    link = None;
                }
            }
        }
    }

    /// Campaigns in election `name` with `value` under `lease`; returns once elected, with
    /// the leader key. Retried calls with the same lease keep their place in line.
    pub async fn campaign(&self, name: &str, value: &[u8], lease: i64) -> Result<String> {
        let r = (*self.client)
            .clone()
            .election_client()
            .campaign(name, value.to_vec(), lease)
            .await
            .map_err(err)?;
        let key = r
            .leader()
            .ok_or_else(|| StoreError::Etcd("campaign answered without a leader key".into()))?;
        key.key_str()
            .map(String::from)
            .map_err(|_| StoreError::Etcd("the leader key is not UTF-8".into()))
    }

    /// The current leader's value in election `name`, if there is a leader.
    pub async fn leader(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match (*self.client).clone().election_client().leader(name).await {
            Ok(mut r) => Ok(r.take_kv().map(|kv| kv.value().to_vec())),
            // etcd answers "election: no leader" as an error.
            Err(e) if e.to_string().contains("no leader") => Ok(None),
            Err(e) => Err(err(e)),
        }
    }
}
