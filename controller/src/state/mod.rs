//! The controller's state store: one interface, two implementations.
//!
//! * [`EtcdStore`]: etcd through `etcd-client`, for several controllers (the production,
//!   highly available choice).
//! * [`EmbeddedStore`]: a file-backed redb database, for one controller (the default on a
//!   single machine, dev mode and the demo).
//!
//! Both offer the same operations with the same meaning: get, put, delete, list by prefix, a
//! compare-and-swap transaction, and a prefix watch. Every write returns the store's new
//! revision; every key carries the revision of its last change (`mod_revision`), which is
//! what compare-and-swap compares. A watch delivers the changes after the revision it starts
//! at, in order; a watcher that falls behind is told so ([`StoreError::WatchLagged`]) and
//! must list again. One test suite (`tests/tests/state_store.rs`) runs against both.

mod embedded;
mod etcd;
pub mod migrate;
pub mod schema;

pub use embedded::EmbeddedStore;
pub use etcd::EtcdStore;

/// Longest key accepted.
pub const MAX_KEY: usize = 1024;
/// Largest value accepted (etcd's default request limit is 1.5 MiB).
pub const MAX_VALUE: usize = 1 << 20;
/// Most keys in one page of [`Store::list_page`].
pub const MAX_PAGE: usize = 1000;
/// Operations in one transaction, at most.
pub const MAX_TXN_OPS: usize = 64;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid key: {0}")]
    BadKey(String),
    #[error("value of {0} bytes exceeds the limit of {MAX_VALUE} bytes")]
    TooLarge(usize),
    #[error("transaction has {0} operations; at most {MAX_TXN_OPS} are allowed")]
    TooManyOps(usize),
    #[error("etcd: {0}")]
    Etcd(String),
    #[error("embedded store: {0}")]
    Embedded(String),
    #[error("the watch fell behind the store's changes; list again and watch from there")]
    WatchLagged,
    #[error("the store is closed")]
    Closed,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A key, its value and the revision of its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    pub mod_revision: i64,
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(KeyValue),
    Delete { key: String, mod_revision: i64 },
}

impl Event {
    pub fn key(&self) -> &str {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }
    pub fn revision(&self) -> i64 {
        match self {
            Event::Put(kv) => kv.mod_revision,
            Event::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// A condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists and was last changed at this revision.
    ModRevision(String, i64),
}

/// A write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put(String, Vec<u8>),
    Delete(String),
}

/// Compare-and-swap: if every condition holds, every write is applied, atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub when: Vec<Compare>,
    pub then: Vec<Op>,
}

/// What a transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnOutcome {
    /// Whether the conditions held (and the writes were applied).
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: i64,
}

/// A stream of changes under a prefix.
#[derive(Debug)]
pub struct Watch {
    rx: tokio::sync::mpsc::Receiver<Result<Event>>,
}

impl Watch {
    /// The next change; `None` when the store closed the watch.
    pub async fn next(&mut self) -> Option<Result<Event>> {
        self.rx.recv().await
    }
}

/// Checks a key: non-empty, at most [`MAX_KEY`] bytes, no control characters.
pub fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(StoreError::BadKey(format!(
            "a key is 1 to {MAX_KEY} bytes, not {}",
            key.len()
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(StoreError::BadKey(format!(
            "{key:?} has control characters"
        )));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<()> {
    if value.len() > MAX_VALUE {
        return Err(StoreError::TooLarge(value.len()));
    }
    Ok(())
}

fn check_txn(txn: &Txn) -> Result<()> {
    let n = txn.when.len() + txn.then.len();
    if n > MAX_TXN_OPS {
        return Err(StoreError::TooManyOps(n));
    }
    for c in &txn.when {
        match c {
            Compare::Absent(k) | Compare::ModRevision(k, _) => check_key(k)?,
        }
    }
    for op in &txn.then {
        match op {
            Op::Put(k, v) => {
                check_key(k)?;
                check_value(v)?;
            }
            Op::Delete(k) => check_key(k)?,
        }
    }
    Ok(())
}

/// The controller's store: etcd or embedded.
#[derive(Debug, Clone)]
pub enum Store {
    Etcd(EtcdStore),
    Embedded(EmbeddedStore),
}

impl Store {
    /// The value of `key`, if any.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        check_key(key)?;
        match self {
            Store::Etcd(s) => s.get(key).await,
            Store::Embedded(s) => s.get(key).await,
        }
    }

    /// The values of `keys`, in order, read in as few round trips as the store allows (one
    /// per [`MAX_TXN_OPS`] keys on etcd).
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>> {
        for k in keys {
            check_key(k)?;
        }
        match self {
            Store::Etcd(s) => s.get_many(keys).await,
            Store::Embedded(s) => s.get_many(keys).await,
        }
    }

    /// Sets `key`; returns the new revision.
    pub async fn put(&self, key: &str, value: &[u8]) -> Result<i64> {
        check_key(key)?;
        check_value(value)?;
        match self {
            Store::Etcd(s) => s.put(key, value).await,
            Store::Embedded(s) => s.put(key, value).await,
        }
    }

    /// Removes `key`; returns whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        check_key(key)?;
        match self {
            Store::Etcd(s) => s.delete(key).await,
            Store::Embedded(s) => s.delete(key).await,
        }
    }

    /// Every key starting with `prefix`, in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        check_key(prefix)?;
        match self {
            Store::Etcd(s) => s.list(prefix).await,
            Store::Embedded(s) => s.list(prefix).await,
        }
    }

    /// At most `limit` (1 to [`MAX_PAGE`]) keys under `prefix` after the key `after`
    /// (exclusive), in key order, and whether more follow: how the API pages its lists.
    pub async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<KeyValue>, bool)> {
        check_key(prefix)?;
        if let Some(a) = after {
            check_key(a)?;
            if !a.starts_with(prefix) {
                return Err(StoreError::BadKey(format!("{a:?} is not under {prefix:?}")));
            }
        }
        let limit = limit.clamp(1, MAX_PAGE);
        match self {
            Store::Etcd(s) => s.list_page(prefix, after, limit).await,
            Store::Embedded(s) => s.list_page(prefix, after, limit).await,
        }
    }

    /// Applies `txn.then` if every condition of `txn.when` holds, atomically.
    pub async fn txn(&self, txn: Txn) -> Result<TxnOutcome> {
        check_txn(&txn)?;
        match self {
            Store::Etcd(s) => s.txn(txn).await,
            Store::Embedded(s) => s.txn(txn).await,
        }
    }

    /// Changes under `prefix` after revision `after` (0: from now on).
    pub async fn watch(&self, prefix: &str, after: i64) -> Result<Watch> {
        check_key(prefix)?;
        match self {
            Store::Etcd(s) => s.watch(prefix, after).await,
            Store::Embedded(s) => s.watch(prefix, after).await,
        }
    }

    /// Whether the store can be used now (the embedded one is not while an I/O error, a
    /// full disk say, is unmended); `/healthz` reports it.
    pub fn health(&self) -> std::result::Result<(), String> {
        match self {
            Store::Etcd(_) => Ok(()),
            Store::Embedded(s) => s.health(),
        }
    }

    /// The store's current revision.
    pub async fn revision(&self) -> Result<i64> {
        match self {
            Store::Etcd(s) => s.revision().await,
            Store::Embedded(s) => s.revision().await,
        }
    }
}

/// Every readable record under `prefix` (an unreadable one is logged and skipped).
pub async fn load<T: serde::de::DeserializeOwned>(store: &Store, prefix: &str) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for kv in store.list(prefix).await? {
        match serde_json::from_slice(&kv.value) {
            Ok(v) => out.push(v),
            Err(e) => tracing::warn!(key = %kv.key, error = %e, "skipping an unreadable record"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_values_and_transactions_are_checked() {
        let long = "k".repeat(MAX_KEY + 1);
        let cases: &[(&str, bool)] = &[
            ("plans/p1", true),
            ("", false),
            (&long, false),
            ("a\nb", false),
            ("a\u{0}b", false),
        ];
        for (k, ok) in cases {
            assert_eq!(check_key(k).is_ok(), *ok, "{k:?}");
        }
        assert!(check_value(&vec![0; MAX_VALUE]).is_ok());
        assert!(matches!(
            check_value(&vec![0; MAX_VALUE + 1]),
            Err(StoreError::TooLarge(_))
        ));
        let big = Txn {
            when: vec![],
            then: (0..=MAX_TXN_OPS)
                .map(|i| Op::Delete(format!("k{i}")))
                .collect(),
        };
        assert!(matches!(check_txn(&big), Err(StoreError::TooManyOps(_))));
        let bad = Txn {
            when: vec![Compare::Absent(String::new())],
            then: vec![],
        };
        assert!(matches!(check_txn(&bad), Err(StoreError::BadKey(_))));
    }
}
