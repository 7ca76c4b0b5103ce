//! The schema version (`/ferry/schema`) and the migrations between versions. A controller
//! refuses a store written by a newer schema than it knows ([`check`], at start); the leader
//! brings an older one to [`VERSION`] ([`migrate`]) before it schedules anything. Every step
//! is idempotent, so a migration cut short is simply done again; each is fenced by the
//! leader's term.

use ferry_wire::Name;

use crate::state::schema::{active_key, Busy, ACTIVE, ROLLBACKS, SCHEMA, VERSION};
use crate::state::{Compare, Op, Store, StoreError, Txn};

/// Why a controller cannot use a store.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the state store holds schema version {found}, newer than this controller knows ({VERSION}): run a ferry-controller at least as new as the one that wrote it")]
    Newer { found: u32 },
    #[error("the state store's schema version is unreadable: {0:?}")]
    Unreadable(String),
    #[error("another controller changed the store while this one migrated it; start again")]
    Raced,
}

/// The store's schema version (0: written before versions existed).
pub async fn version(store: &Store) -> Result<u32, SchemaError> {
    match store.get(SCHEMA).await? {
        None => Ok(0),
        Some(kv) => {
            let text = String::from_utf8_lossy(&kv.value).into_owned();
            text.trim()
                .parse()
                .map_err(|_| SchemaError::Unreadable(text))
        }
    }
}

/// Refuses a store written by a newer controller.
pub async fn check(store: &Store) -> Result<u32, SchemaError> {
    let v = version(store).await?;
    if v > VERSION {
        return Err(SchemaError::Newer { found: v });
    }
    Ok(v)
}

/// Brings the store to [`VERSION`], as the leader whose term `fence` is (every write carries
/// it), before it schedules anything.
/// Each step is idempotent, so a migration cut short is simply done again.
pub async fn migrate(store: &Store, fence: &Compare) -> Result<(), SchemaError> {
    let from = check(store).await?;
    if from == VERSION {
        return Ok(());
    }
    if from < 1 {
        to_v1(store, fence).await?;
    }
    tracing::info!(from, to = VERSION, "state store schema migrated");
    Ok(())
}

/// Version 0 -> 1: the active index was one empty key per run (`/ferry/active/<plan>/<run>`)
/// and rollbacks had none; now it is one key per plan saying what is in progress. Plans
/// keep their names as ids, so their records stay where they are.
async fn to_v1(store: &Store, fence: &Compare) -> Result<(), SchemaError> {
    for kv in store.list(ACTIVE).await? {
        let rest = &kv.key[ACTIVE.len()..];
        let Some((plan, run)) = rest.split_once('/') else {
            continue; // already one per plan
        };
        let (Ok(plan), Ok(run)) = (Name::new(plan), Name::new(run)) else {
            store.delete(&kv.key).await?;
            continue;
        };
        let key = active_key(&plan);
        store
            .txn(Txn {
                when: vec![fence.clone()],
                then: vec![
                    Op::Delete(kv.key.clone()),
                    Op::Put(key, Busy::Run(run).encode()),
                ],
            })
            .await?;
    }
    for kv in store.list(ROLLBACKS).await? {
        let Ok(job) = serde_json::from_slice::<crate::machines::group_job::GroupJob>(&kv.value)
        else {
            continue;
        };
        if job.is_over() {
            continue;
        }
        let rest = &kv.key[ROLLBACKS.len()..];
        let Some(plan) = rest.split('/').next().and_then(|p| Name::new(p).ok()) else {
            continue;
        };
        store
            .txn(Txn {
                when: vec![Compare::Absent(active_key(&plan)), fence.clone()],
                then: vec![Op::Put(active_key(&plan), Busy::Rollback(job.id).encode())],
            })
            .await?;
    }
    let done = store
        .txn(Txn {
            when: vec![fence.clone()],
            then: vec![Op::Put(SCHEMA.into(), VERSION.to_string().into_bytes())],
        })
        .await?;
    if !done.succeeded {
        return Err(SchemaError::Raced);
    }
    Ok(())
}
