//! What the controller keeps in its state store, and where: every key prefix and key
//! function, the small records that index others, and the schema version with its
//! migrations. Nothing else builds a key.
//!
//! | key | record | written by | read by |
//! |---|---|---|---|
//! | `/ferry/schema` | schema version (decimal) | [`migrate`] | every controller at start |
//! | `/ferry/objects/<name>` | `model::Object` | API | API, scheduler |
//! | `/ferry/plans/<name>` | [`PlanRecord`] (with the plan's id) | API | API, scheduler, executor |
//! | `/ferry/runs/<plan-id>/<run>` | `scheduler::RunRecord` | scheduler, API (run now), executor | executor, API |
//! | `/ferry/fired/<plan-id>` | the last fired slot (RFC 3339) | scheduler | scheduler |
//! | `/ferry/active/<plan-id>` | [`Busy`]: the plan's one run, rollback or removal in progress | scheduler, API, executor | executor, API, scheduler (watch) |
//! | `/ferry/groups/<plan-id>/<group>` | [`GroupRecord`] | executor | API, executor (retention) |
//! | `/ferry/rollbacks/<plan-id>/<id>` | `group_job::GroupJob` (rollback) | API | executor, API |
//! | `/ferry/removals/<plan-id>/<id>` | `group_job::GroupJob` (deletion) | executor | executor, API |
//! | `/ferry/orphans/<plan-id>` | [`OrphanRecord`]: a deleted plan's leftovers | API | executor, API |
//! | `/ferry/agents/<node>` | `agents::AgentRecord` | agent endpoint | API, executor |
//! | `/ferry/leader...` | leader election (see `leader`) | `leader` | `leader`, API |
//!
//! **Plan ids.** Runs, groups, jobs and markers are keyed by the plan's id, not its name:
//! they belong to one plan's life. A plan deleted and created again under the same name
//! starts with no groups, and can never roll back to the old plan's. Plans stored before
//! ids existed have their name as their id, which is where their records already are.
//!
//! **One thing at a time per plan.** `/ferry/active/<plan-id>` exists while a run, a
//! rollback or a removal of the plan's groups is in progress, and everything that starts
//! one writes it in a compare-and-swap on its absence: two starts never both win.

use ferry_wire::Name;
use serde::{Deserialize, Serialize};

use crate::leader::Term;
use crate::store::{Compare, Op, Store, StoreError, Txn};

pub const SCHEMA: &str = "/ferry/schema";
pub const OBJECTS: &str = "/ferry/objects/";
pub const PLANS: &str = "/ferry/plans/";
pub const RUNS: &str = "/ferry/runs/";
pub const FIRED: &str = "/ferry/fired/";
pub const ACTIVE: &str = "/ferry/active/";
pub const GROUPS: &str = "/ferry/groups/";
pub const ROLLBACKS: &str = "/ferry/rollbacks/";
pub const REMOVALS: &str = "/ferry/removals/";
pub const ORPHANS: &str = "/ferry/orphans/";
pub const AGENTS: &str = "/ferry/agents/";

/// The schema this code reads and writes.
pub const VERSION: u32 = 1;

pub fn object_key(name: &Name) -> String {
    format!("{OBJECTS}{name}")
}
pub fn plan_key(name: &Name) -> String {
    format!("{PLANS}{name}")
}
pub fn runs_of(plan_id: &Name) -> String {
    format!("{RUNS}{plan_id}/")
}
pub fn run_key(plan_id: &Name, run: &Name) -> String {
    format!("{RUNS}{plan_id}/{run}")
}
pub fn fired_key(plan_id: &Name) -> String {
    format!("{FIRED}{plan_id}")
}
pub fn active_key(plan_id: &Name) -> String {
    format!("{ACTIVE}{plan_id}")
}
pub fn groups_of(plan_id: &Name) -> String {
    format!("{GROUPS}{plan_id}/")
}
pub fn group_key(plan_id: &Name, group: &Name) -> String {
    format!("{GROUPS}{plan_id}/{group}")
}
pub fn rollbacks_of(plan_id: &Name) -> String {
    format!("{ROLLBACKS}{plan_id}/")
}
pub fn rollback_key(plan_id: &Name, id: &Name) -> String {
    format!("{ROLLBACKS}{plan_id}/{id}")
}
pub fn removals_of(plan_id: &Name) -> String {
    format!("{REMOVALS}{plan_id}/")
}
pub fn removal_key(plan_id: &Name, id: &Name) -> String {
    format!("{REMOVALS}{plan_id}/{id}")
}
pub fn orphan_key(plan_id: &Name) -> String {
    format!("{ORPHANS}{plan_id}")
}
pub fn agent_key(node: &Name) -> String {
    format!("{AGENTS}{node}")
}

/// The last segment of a key under `prefix` (`<prefix><a>/<b>` -> `<b>`), if it is a name.
pub fn last_name(key: &str) -> Option<Name> {
    Name::new(key.rsplit('/').next()?).ok()
}

/// A plan as kept and returned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanRecord {
    /// The plan's id, unique to this plan's life: its runs, groups and jobs are kept under
    /// it. Absent in plans stored before ids existed: their id is their name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Name>,
    pub spec: crate::model::PlanSpec,
    pub paused: bool,
    /// The next scheduled run (RFC 3339), when not paused and not ended.
    #[serde(default, skip_deserializing)]
    pub next_run: Option<String>,
}

impl PlanRecord {
    /// The id its records are kept under.
    pub fn id(&self) -> &Name {
        self.id.as_ref().unwrap_or(&self.spec.name)
    }
}

/// A new plan id for a plan named `name`: its first 100 bytes and 12 random hex digits.
pub fn new_plan_id(name: &Name) -> Name {
    let mut raw = [0u8; 6];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let mut p: String = name.as_str().chars().take(100).collect();
    while p.ends_with(['.', '-', '_']) {
        p.pop();
    }
    // A name's prefix, a dot and hex digits: always a valid name.
    Name::new(&format!("{p}.{hex}")).unwrap_or_else(|_| name.clone())
}

/// A snapshot group as recorded: complete, on every node of its run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupRecord {
    pub plan: Name,
    /// The id of the plan whose run took it (absent in records older than plan ids: the
    /// plan's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<Name>,
    pub group: Name,
    pub run: Name,
    /// RFC 3339.
    pub created: String,
    pub snapshots: Vec<(Name, ferry_wire::task::SnapshotRecord)>,
    /// The plan's objects at the run, each with its volumes.
    #[serde(default)]
    pub objects: Vec<crate::scheduler::ObjectVolumes>,
}

/// What is in progress for a plan (the value of `/ferry/active/<plan-id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Busy {
    Run(Name),
    Rollback(Name),
    /// Deleting groups of a deleted plan.
    Removal(Name),
}

impl Busy {
    /// The key of the record in progress.
    pub fn record_key(&self, plan_id: &Name) -> String {
        match self {
            Busy::Run(id) => run_key(plan_id, id),
            Busy::Rollback(id) => rollback_key(plan_id, id),
            Busy::Removal(id) => removal_key(plan_id, id),
        }
    }

    /// In words, for a 409.
    pub fn describe(&self) -> String {
        match self {
            Busy::Run(id) => format!("run {id} is in progress"),
            Busy::Rollback(id) => format!("rollback {id} is in progress"),
            Busy::Removal(id) => format!("removal {id} of its groups is in progress"),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// What is in progress for plan id `plan_id`, if anything.
pub async fn busy(store: &Store, plan_id: &Name) -> Result<Option<Busy>, StoreError> {
    Ok(store
        .get(&active_key(plan_id))
        .await?
        .and_then(|kv| serde_json::from_slice(&kv.value).ok()))
}

/// What becomes of a deleted plan's groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupsFate {
    /// Kept, listed as orphaned, until deleted by request.
    Keep,
    /// Deleted (snapshots on the agents, then the records).
    Delete,
}

/// A deleted plan's leftovers (`/ferry/orphans/<plan-id>`): its groups, kept or being
/// deleted, and its run history, which the executor deletes. The marker goes when nothing
/// is left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrphanRecord {
    pub plan: Name,
    pub plan_id: Name,
    /// RFC 3339.
    pub deleted: String,
    /// What becomes of its groups.
    pub fate: GroupsFate,
}

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

/// Brings the store to [`VERSION`], as the leader of `term`, before it schedules anything.
/// Each step is idempotent, so a migration cut short is simply done again.
pub async fn migrate(store: &Store, term: &Term) -> Result<(), SchemaError> {
    let from = check(store).await?;
    if from == VERSION {
        return Ok(());
    }
    if from < 1 {
        to_v1(store, term).await?;
    }
    tracing::info!(from, to = VERSION, "state store schema migrated");
    Ok(())
}

/// Version 0 -> 1: the active index was one empty key per run (`/ferry/active/<plan>/<run>`)
/// and rollbacks had none; now it is one key per plan saying what is in progress. Plans
/// keep their names as ids, so their records stay where they are.
async fn to_v1(store: &Store, term: &Term) -> Result<(), SchemaError> {
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
                when: vec![term.fence()],
                then: vec![
                    Op::Delete(kv.key.clone()),
                    Op::Put(key, Busy::Run(run).encode()),
                ],
            })
            .await?;
    }
    for kv in store.list(ROLLBACKS).await? {
        let Ok(job) = serde_json::from_slice::<crate::group_job::GroupJob>(&kv.value) else {
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
                when: vec![Compare::Absent(active_key(&plan)), term.fence()],
                then: vec![Op::Put(active_key(&plan), Busy::Rollback(job.id).encode())],
            })
            .await?;
    }
    let done = store
        .txn(Txn {
            when: vec![term.fence()],
            then: vec![Op::Put(SCHEMA.into(), VERSION.to_string().into_bytes())],
        })
        .await?;
    if !done.succeeded {
        return Err(SchemaError::Raced);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_ids_are_names_and_differ() {
        let n = Name::new(&"p".repeat(128)).expect("name");
        let a = new_plan_id(&n);
        assert!(a.as_str().len() <= 128 && a.as_str().starts_with("ppp"));
        assert_ne!(a, new_plan_id(&n));
        let legacy: PlanRecord = serde_json::from_str(
            r#"{"spec":{"name":"web","objects":["a"],"retention":1,
            "schedule":{"every":"daily","start":"2026-01-01T00:00"}},"paused":false}"#,
        )
        .expect("decode");
        assert_eq!(
            legacy.id().as_str(),
            "web",
            "a legacy plan's id is its name"
        );
    }

    #[test]
    fn busy_round_trips() {
        let b = Busy::Removal(Name::new("rm1").expect("name"));
        assert_eq!(serde_json::from_slice::<Busy>(&b.encode()).ok(), Some(b));
        assert_eq!(
            last_name("/ferry/runs/p/r1").map(|n| n.to_string()),
            Some("r1".into())
        );
    }
}
