//! The embedded store: one redb database file, for a single controller.
//!
//! Keys live in one table; each value is stored behind the 8-byte big-endian revision of its
//! last change. The store's revision is kept in a second table and moves by one per write
//! transaction, in the same redb transaction as the write, so a crash leaves both or
//! neither (redb commits are durable: fsynced, copy-on-write). Watches are served from the
//! changes of this process: a bounded history of recent events (so a watch may start at a
//! revision a little in the past) and a broadcast of new ones, both fed under one lock after
//! each commit, so events are delivered in revision order with none skipped.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::broadcast;

use super::{Compare, Event, KeyValue, Op, Result, StoreError, Txn, TxnOutcome, Watch};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
/// Recent events kept for watches that start in the past.
const HISTORY: usize = 4096;
/// Events a watcher may fall behind by before it is told to list again.
const WATCH_BUFFER: usize = 4096;

/// The embedded store; cheap to clone (shared).
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").finish_non_exhaustive()
    }
}

struct Inner {
    /// `None` while it is being reopened after an I/O error (a full disk, say): redb refuses
    /// every write after one until the database is closed and opened again.
    db: std::sync::RwLock<Option<Database>>,
    path: std::path::PathBuf,
    /// An I/O error happened: the next operation reopens the database first, and the
    /// store reports itself unhealthy until that succeeds.
    broken: std::sync::atomic::AtomicBool,
    /// Held across commit and publication, so events go out in revision order.
    publish: Mutex<Published>,
}

struct Published {
    history: VecDeque<Event>,
    tx: broadcast::Sender<Event>,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Embedded(e.to_string())
}

fn decode(key: &str, raw: &[u8]) -> Result<KeyValue> {
    let (rev, value) = raw
        .split_at_checked(8)
        .ok_or_else(|| err(format!("damaged entry for {key:?}")))?;
    let mut r = [0u8; 8];
    r.copy_from_slice(rev);
    Ok(KeyValue {
        key: key.to_string(),
        value: value.to_vec(),
        mod_revision: i64::from_be_bytes(r),
    })
}

fn encode(rev: i64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&rev.to_be_bytes());
    out.extend_from_slice(value);
    out
}

impl Inner {
    /// Closes the database and opens it again (after an I/O error redb refuses every write
    /// until then). Fails, leaving it broken, while the cause lasts.
    fn reopen(&self) -> Result<()> {
        let mut slot = self.db.write().map_err(|_| err("database lock poisoned"))?;
        *slot = None; // closed: its file lock released
        let db = Database::open(&self.path)
            .map_err(|e| err(format!("reopen {}: {e}", self.path.display())))?;
        // A write proves it: the cause (a full disk) may still be there.
        let w = db.begin_write().map_err(err)?;
        w.commit().map_err(err)?;
        *slot = Some(db);
        self.broken
            .store(false, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(path = %self.path.display(), "state store reopened");
        Ok(())
    }
}

/// Opens an existing store file and checks all of it: redb's checksums over every page,
/// then ferry's tables and their entries read through. redb may panic on a damaged file;
/// that is caught (quietly) and reported as damage.
fn open_existing(path: &Path) -> Result<Database> {
    let invalid = |why: String| {
        err(format!(
            "{} is not a valid ferry store ({why}); restore it from a backup, or move it away \
             to start with an empty store",
            path.display()
        ))
    };
    let check = || -> std::result::Result<Database, String> {
        let mut db = Database::open(path).map_err(|e| e.to_string())?;
        if !db.check_integrity().map_err(|e| e.to_string())? {
            return Err("redb found damage and repaired its allocation state".into());
        }
        {
            let r = db.begin_read().map_err(|e| e.to_string())?;
            let meta = r
                .open_table(META)
                .map_err(|e| format!("no ferry metadata: {e}"))?;
            if meta.get(REVISION).map_err(|e| e.to_string())?.is_none() {
                return Err("no store revision".into());
            }
            let kv = r
                .open_table(KV)
                .map_err(|e| format!("no ferry keys: {e}"))?;
            for item in kv.iter().map_err(|e| e.to_string())? {
                let (k, v) = item.map_err(|e| e.to_string())?;
                if v.value().len() < 8 {
                    return Err(format!("damaged entry for {:?}", k.value()));
                }
            }
        }
        Ok(db)
    };
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check));
    std::panic::set_hook(hook);
    match checked {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(why)) => Err(invalid(why)),
        Err(p) => {
            let why = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unreadable".into());
            Err(invalid(format!("damaged: {why}")))
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| err(format!("worker: {e}")))?
}

impl EmbeddedStore {
    /// Opens the database at `path`, or creates it where no file is. An existing file must
    /// be a whole, valid ferry store: an empty file, a damaged one (redb's checksums), or a
    /// redb database without ferry's tables is refused, never taken for a new, empty store.
    pub fn open(path: &Path) -> Result<EmbeddedStore> {
        let db = match std::fs::metadata(path) {
            Ok(m) if m.len() == 0 => {
                return Err(err(format!(
                    "{} is empty: not a valid ferry store (a new store is made only where no \
                     file is); restore it from a backup, or move it away to start empty",
                    path.display()
                )))
            }
            Ok(_) => open_existing(path)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let db =
                    Database::create(path).map_err(|e| err(format!("{}: {e}", path.display())))?;
                let w = db.begin_write().map_err(err)?;
                {
                    w.open_table(KV).map_err(err)?;
                    let mut meta = w.open_table(META).map_err(err)?;
                    meta.insert(REVISION, 1).map_err(err)?;
                }
                w.commit().map_err(err)?;
                db
            }
            Err(e) => return Err(err(format!("{}: {e}", path.display()))),
        };
        let (tx, _) = broadcast::channel(WATCH_BUFFER);
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db: std::sync::RwLock::new(Some(db)),
                path: path.to_path_buf(),
                broken: std::sync::atomic::AtomicBool::new(false),
                publish: Mutex::new(Published {
                    history: VecDeque::new(),
                    tx,
                }),
            }),
        })
    }

    /// Runs `f` on the database on a blocking thread: reopened first if an I/O error broke
    /// it, and marked broken if `f` meets one.
    async fn with_db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        blocking(move || {
            use std::sync::atomic::Ordering;
            if inner.broken.load(Ordering::Relaxed) {
                inner.reopen()?;
            }
            let db = inner.db.read().map_err(|_| err("database lock poisoned"))?;
            let db = db
                .as_ref()
                .ok_or_else(|| err("the database is being reopened after an I/O error"))?;
            let out = f(db);
            if let Err(StoreError::Embedded(m)) = &out {
                if m.contains("I/O error") && !inner.broken.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %m, "state store I/O error: reopening it before the next operation");
                }
            }
            out
        })
        .await
    }

    /// Whether the store can be used: not while an I/O error is unmended.
    pub fn health(&self) -> std::result::Result<(), String> {
        if self.inner.broken.load(std::sync::atomic::Ordering::Relaxed) {
            Err(format!(
                "{}: an I/O error (a full disk?) stopped writes; reopening at the next request",
                self.inner.path.display()
            ))
        } else {
            Ok(())
        }
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_string();
        self.with_db(move |db| {
            let r = db.begin_read().map_err(err)?;
            let t = r.open_table(KV).map_err(err)?;
            let v = t.get(key.as_str()).map_err(err)?;
            v.map(|v| decode(&key, v.value())).transpose()
        })
        .await
    }

    pub(super) async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>> {
        let keys = keys.to_vec();
        self.with_db(move |db| {
            let r = db.begin_read().map_err(err)?;
            let t = r.open_table(KV).map_err(err)?;
            keys.iter()
                .map(|key| {
                    let v = t.get(key.as_str()).map_err(err)?;
                    v.map(|v| decode(key, v.value())).transpose()
                })
                .collect()
        })
        .await
    }

    pub(super) async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        let prefix = prefix.to_string();
        self.with_db(move |db| {
            let r = db.begin_read().map_err(err)?;
            let t = r.open_table(KV).map_err(err)?;
            let mut out = Vec::new();
            for item in t.range(prefix.as_str()..).map_err(err)? {
                let (k, v) = item.map_err(err)?;
                if !k.value().starts_with(prefix.as_str()) {
                    break;
                }
                out.push(decode(k.value(), v.value())?);
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<KeyValue>, bool)> {
        let (prefix, after) = (prefix.to_string(), after.map(String::from));
        self.with_db(move |db| {
            let r = db.begin_read().map_err(err)?;
            let t = r.open_table(KV).map_err(err)?;
            let mut out = Vec::new();
            let start = after.clone().unwrap_or_else(|| prefix.clone());
            for item in t.range(start.as_str()..).map_err(err)? {
                let (k, v) = item.map_err(err)?;
                let key = k.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                if after.as_deref() == Some(key) {
                    continue;
                }
                if out.len() == limit {
                    return Ok((out, true));
                }
                out.push(decode(key, v.value())?);
            }
            Ok((out, false))
        })
        .await
    }

    pub(super) async fn revision(&self) -> Result<i64> {
        self.with_db(move |db| {
            let r = db.begin_read().map_err(err)?;
            let t = r.open_table(META).map_err(err)?;
            let rev = t.get(REVISION).map_err(err)?.map_or(1, |v| v.value());
            Ok(rev as i64)
        })
        .await
    }

    pub(super) async fn put(&self, key: &str, value: &[u8]) -> Result<i64> {
        let txn = Txn {
            when: vec![],
            then: vec![Op::Put(key.to_string(), value.to_vec())],
        };
        Ok(self.txn(txn).await?.revision)
    }

    pub(super) async fn delete(&self, key: &str) -> Result<bool> {
        let txn = Txn {
            when: vec![],
            then: vec![Op::Delete(key.to_string())],
        };
        Ok(self.apply(txn).await?.1 > 0)
    }

    pub(super) async fn txn(&self, txn: Txn) -> Result<TxnOutcome> {
        Ok(self.apply(txn).await?.0)
    }

    /// One write transaction: check the conditions, apply the writes with the next revision
    /// (the revision moves only if something changed, as in etcd), commit, then publish the
    /// events (under the publish lock, held throughout). Returns the outcome and the number
    /// of changes.
    async fn apply(&self, txn: Txn) -> Result<(TxnOutcome, usize)> {
        let inner = self.inner.clone();
        self.with_db(move |db| {
            let mut published = inner
                .publish
                .lock()
                .map_err(|_| err("publish lock poisoned"))?;
            let w = db.begin_write().map_err(err)?;
            let (outcome, events) = {
                let mut kv = w.open_table(KV).map_err(err)?;
                let mut meta = w.open_table(META).map_err(err)?;
                let current = meta.get(REVISION).map_err(err)?.map_or(1, |v| v.value()) as i64;
                let mut holds = true;
                for c in &txn.when {
                    let (key, want) = match c {
                        Compare::Absent(k) => (k, None),
                        Compare::ModRevision(k, r) => (k, Some(*r)),
                    };
                    let got = match kv.get(key.as_str()).map_err(err)? {
                        Some(v) => Some(decode(key, v.value())?.mod_revision),
                        None => None,
                    };
                    if got != want {
                        holds = false;
                        break;
                    }
                }
                let mut events = Vec::new();
                let rev = current + 1;
                if holds {
                    for op in &txn.then {
                        match op {
                            Op::Put(k, v) => {
                                kv.insert(k.as_str(), encode(rev, v).as_slice())
                                    .map_err(err)?;
                                events.push(Event::Put(KeyValue {
                                    key: k.clone(),
                                    value: v.clone(),
                                    mod_revision: rev,
                                }));
                            }
                            Op::Delete(k) => {
                                if kv.remove(k.as_str()).map_err(err)?.is_some() {
                                    events.push(Event::Delete {
                                        key: k.clone(),
                                        mod_revision: rev,
                                    });
                                }
                            }
                        }
                    }
                }
                if !events.is_empty() {
                    meta.insert(REVISION, rev as u64).map_err(err)?;
                }
                let revision = if events.is_empty() { current } else { rev };
                (
                    TxnOutcome {
                        succeeded: holds,
                        revision,
                    },
                    events,
                )
            };
            w.commit().map_err(err)?;
            let changes = events.len();
            for e in events {
                if published.history.len() == HISTORY {
                    published.history.pop_front();
                }
                published.history.push_back(e.clone());
                let _ = published.tx.send(e); // no watchers is fine
            }
            Ok((outcome, changes))
        })
        .await
    }

    pub(super) async fn watch(&self, prefix: &str, after: i64) -> Result<Watch> {
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        let prefix = prefix.to_string();
        let (backlog, mut live, start) = {
            let published = self
                .inner
                .publish
                .lock()
                .map_err(|_| err("publish lock poisoned"))?;
            let live = published.tx.subscribe();
            if after == 0 {
                (Vec::new(), live, i64::MAX)
            } else {
                // Events after `after` must all still be in the history.
                let oldest = published.history.front().map(Event::revision);
                let current = published.history.back().map(Event::revision);
                if oldest.is_some_and(|o| o > after + 1) && current.is_some_and(|c| c > after) {
                    return Err(StoreError::WatchLagged);
                }
                let backlog: Vec<Event> = published
                    .history
                    .iter()
                    .filter(|e| e.revision() > after)
                    .cloned()
                    .collect();
                (backlog, live, after)
            }
        };
        tokio::spawn(async move {
            let mut last = if start == i64::MAX { 0 } else { start };
            for e in backlog {
                last = e.revision().max(last);
                if e.key().starts_with(&prefix) && tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            loop {
                match live.recv().await {
                    Ok(e) => {
                        // Already delivered from the history.
                        if start != i64::MAX && e.revision() <= last {
                            continue;
                        }
                        if e.key().starts_with(&prefix) && tx.send(Ok(e)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(Err(StoreError::WatchLagged)).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Watch { rx })
    }
}
