//! What the controller keeps in its state store, and where: every key prefix and key
//! function, and every record type stored (but the machines' own states, `Run` and
//! `GroupJob`, and the objects the users write, `Object`). Nothing else builds a key.
//! The schema version and its migrations are in `state::migrate`; a test checks that every
//! key a site writes matches a row of this table.
//!
//! | key | record | written by | read by |
//! |---|---|---|---|
//! | `/ferry/schema` | schema version (decimal) | `state::migrate` | every controller at start |
//! | `/ferry/objects/<name>` | `policy::model::Object` | API | API, scheduler |
//! | `/ferry/plans/<name>` | [`PlanRecord`] (with the plan's id) | API | API, scheduler, executor |
//! | `/ferry/runs/<plan-id>/<run>` | [`RunRecord`] | scheduler, API (run now), executor | executor, API |
//! | `/ferry/fired/<plan-id>` | the last fired slot (RFC 3339) | scheduler | scheduler |
//! | `/ferry/active/<plan-id>` | [`Busy`]: the plan's one run, rollback or removal in progress | scheduler, API, executor | executor, API, scheduler (watch) |
//! | `/ferry/groups/<plan-id>/<group>` | [`GroupRecord`] | executor | API, executor (retention) |
//! | `/ferry/rollbacks/<plan-id>/<id>` | `machines::group_job::GroupJob` (rollback) | API | executor, API |
//! | `/ferry/removals/<plan-id>/<id>` | `machines::group_job::GroupJob` (deletion) | executor | executor, API |
//! | `/ferry/orphans/<plan-id>` | [`OrphanRecord`]: a deleted plan's leftovers | API | executor, API |
//! | `/ferry/agents/<node>` | [`AgentRecord`] | agent endpoint | API, executor |
//! | `/ferry/sites/<site>` | [`SiteRecord`]: a paired site | API | API, site links, executor |
//! | `/ferry/mirrors/<plan-id>/<object>` | `policy::model::Object`: a foreign plan's mirror object (its volumes the mirrors here, its NICs on the mapped switches) | site links (prepare) | API |
//! | `/ferry/targets/<plan-id>/<site>` | [`TargetRecord`]: what a target holds of a backup plan | executor | API, executor (retention) |
//! | `/ferry/recoveries/<plan-id>/<id>` | `machines::recovery::Recovery`: a rebuild, drill or verification from one of the plan's groups | API, executor (scheduled drills and verifications) | executor, API |
//! | `/ferry/recovering/<plan-id>/<id>` | the key of a recovery in progress (the executor's index) | API, executor | executor |
//! | `/ferry/verified/<plan-id>/<group>` | [`VerifiedRecord`]: the group's last verification | executor | API, executor (what to verify next) |
//! | `/ferry/lineage/<node>/<volume>` | [`LineageRecord`]: the snapshot a rebuilt volume was made from | executor (rebuilds) | executor (a backup run's seeds), site links (placement) |
//! | `/ferry/alarms/<plan-id>/<site>` | [`AlarmRecord`]: a plan's RPO at a site, held or violated | executor | API, executor |
//! | `/ferry/outbox/<id>` | [`Event`]: a notification for the webhooks, until delivered | executor | notifier |
//! | `/ferry/drill-fired/<plan-id>` | the last fired drill slot (RFC 3339) | executor | executor |
//! | `/ferry/leader...` | leader election (see `daemon::leader`) | `daemon::leader` | `daemon::leader`, API |
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

use crate::machines::run::Run;
use crate::state::{Store, StoreError};
use ferry_wire::control::VolumeReport;
use jiff::Timestamp;

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
pub const SITES: &str = "/ferry/sites/";
pub const TARGETS: &str = "/ferry/targets/";
pub const MIRRORS: &str = "/ferry/mirrors/";
pub const RECOVERIES: &str = "/ferry/recoveries/";
pub const RECOVERING: &str = "/ferry/recovering/";
pub const VERIFIED: &str = "/ferry/verified/";
pub const LINEAGE: &str = "/ferry/lineage/";
pub const ALARMS: &str = "/ferry/alarms/";
pub const OUTBOX: &str = "/ferry/outbox/";
pub const DRILL_FIRED: &str = "/ferry/drill-fired/";

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

pub fn site_key(site: &Name) -> String {
    format!("{SITES}{site}")
}
pub fn mirrors_of(plan_id: &Name) -> String {
    format!("{MIRRORS}{plan_id}/")
}
pub fn mirror_key(plan_id: &Name, object: &Name) -> String {
    format!("{MIRRORS}{plan_id}/{object}")
}
pub fn targets_of(plan_id: &Name) -> String {
    format!("{TARGETS}{plan_id}/")
}
pub fn target_key(plan_id: &Name, site: &Name) -> String {
    format!("{TARGETS}{plan_id}/{site}")
}

pub fn recoveries_of(plan_id: &Name) -> String {
    format!("{RECOVERIES}{plan_id}/")
}
pub fn recovery_key(plan_id: &Name, id: &Name) -> String {
    format!("{RECOVERIES}{plan_id}/{id}")
}
pub fn recovering_of(plan_id: &Name) -> String {
    format!("{RECOVERING}{plan_id}/")
}
pub fn recovering_key(plan_id: &Name, id: &Name) -> String {
    format!("{RECOVERING}{plan_id}/{id}")
}
pub fn verified_of(plan_id: &Name) -> String {
    format!("{VERIFIED}{plan_id}/")
}
pub fn verified_key(plan_id: &Name, group: &Name) -> String {
    format!("{VERIFIED}{plan_id}/{group}")
}
pub fn lineage_key(node: &Name, volume: &Name) -> String {
    format!("{LINEAGE}{node}/{volume}")
}
pub fn alarms_of(plan_id: &Name) -> String {
    format!("{ALARMS}{plan_id}/")
}
pub fn alarm_key(plan_id: &Name, site: &Name) -> String {
    format!("{ALARMS}{plan_id}/{site}")
}
pub fn outbox_key(id: &Name) -> String {
    format!("{OUTBOX}{id}")
}
pub fn drill_fired_key(plan_id: &Name) -> String {
    format!("{DRILL_FIRED}{plan_id}")
}

/// A group's last verification: every snapshot re-read against its manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VerifiedRecord {
    /// When it ended (RFC 3339).
    pub at: String,
    pub ok: bool,
    /// What did not match, or why it could not be read.
    pub detail: Option<String>,
    /// The verification (a recovery of the plan).
    pub recovery: Name,
}

/// What a volume made by a rebuild was made from: protecting it to a site that holds that
/// snapshot (its root) seeds the mirror there from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LineageRecord {
    /// The snapshot the volume keeps, and its manifest root (hex).
    pub snapshot: Name,
    pub root: String,
    /// The site, plan and group it was rebuilt from.
    pub site: Name,
    pub plan: Name,
    /// RFC 3339.
    pub created: String,
}

/// Where a plan's RPO stands at a site (`role`: `source` for a target of this site's plan,
/// `target` for a foreign plan here).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlarmRecord {
    pub plan: Name,
    pub site: Name,
    pub role: String,
    pub violated: bool,
    /// Since when it is in this state (RFC 3339).
    pub since: String,
    pub rpo_secs: u64,
    /// The age of the newest group when it changed, seconds.
    pub age_secs: Option<u64>,
}

/// A notification for the webhooks (`/ferry/outbox/<id>` until every webhook took it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub id: Name,
    /// `run_failed`, `run_partially_done`, `drill_failed`, `verify_failed`,
    /// `rpo_violated`, `rpo_restored`.
    pub event: String,
    /// This site.
    pub site: Name,
    pub plan: Name,
    /// The other site it concerns (a target, or a foreign plan's source), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Name>,
    /// The run, drill or verification it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Name>,
    pub message: String,
    /// RFC 3339.
    pub time: String,
}

impl Event {
    /// A new event at `now`, its id unique to it.
    pub fn new(event: &str, site: &Name, plan: &Name, message: String, now: Timestamp) -> Event {
        let mut raw = [0u8; 4];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut raw);
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let id =
            Name::new(&format!("e{}-{hex}", now.as_millisecond())).unwrap_or_else(|_| plan.clone());
        Event {
            id,
            event: event.into(),
            site: site.clone(),
            plan: plan.clone(),
            peer: None,
            subject: None,
            message,
            time: now.to_string(),
        }
    }

    /// Its write into the outbox.
    pub fn put(&self) -> crate::state::Op {
        crate::state::Op::Put(
            outbox_key(&self.id),
            serde_json::to_vec(self).unwrap_or_default(),
        )
    }
}

/// The last segment of a key under `prefix` (`<prefix><a>/<b>` -> `<b>`), if it is a name.
pub fn last_name(key: &str) -> Option<Name> {
    Name::new(key.rsplit('/').next()?).ok()
}

/// A plan as kept and returned.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlanRecord {
    /// The plan's id, unique to this plan's life: its runs, groups and jobs are kept under
    /// it. Absent in plans stored before ids existed: their id is their name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Name>,
    pub spec: crate::policy::model::PlanSpec,
    pub paused: bool,
    /// The next scheduled run (RFC 3339), when not paused and not ended.
    #[serde(default, skip_deserializing)]
    pub next_run: Option<String>,
    /// A foreign plan: made at this site by a paired site's backup plan, owning the mirrors
    /// here. Read-only through the API; never scheduled here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
}

/// Where a foreign plan comes from, and where its mirrors are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Origin {
    pub site: Name,
    /// The source plan's name and id there.
    pub plan: Name,
    pub plan_id: Name,
    /// Each source volume's mirror here (stable across runs while its node lives).
    pub mirrors: Vec<MirrorPlace>,
    /// The drills the source plan asks of this site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<crate::policy::model::DrillSpec>,
    /// RFC 3339.
    pub created: String,
}

/// The mirror of a source volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MirrorPlace {
    /// The source node and volume.
    pub node: Name,
    pub volume: Name,
    /// Here: the node and the mirror volume.
    pub mirror_node: Name,
    pub mirror: Name,
    pub size: u64,
}

/// A paired site (`/ferry/sites/<site>`): pairing is mutual, each side adds the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SiteRecord {
    pub name: Name,
    /// Its CA certificate, PEM.
    pub ca_pem: String,
    /// Its controllers' agent endpoints (`HOST:PORT`, UDP), tried in turn.
    pub controllers: Vec<String>,
    /// RFC 3339.
    pub paired: String,
}

impl TargetRecord {
    /// A target that has been sent nothing yet.
    pub fn new(site: Name) -> TargetRecord {
        TargetRecord {
            site,
            last_group: None,
            bases: Default::default(),
            last_group_created: None,
            last_replicated: None,
            bytes_sent: 0,
            last_bytes_sent: 0,
            last_transfer_ms: 0,
            failures: 0,
            last_error: None,
            foreign_plan: None,
            first_attempt: None,
        }
    }
}

/// What a target site holds of a backup plan, as the source knows it
/// (`/ferry/targets/<plan-id>/<site>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TargetRecord {
    pub site: Name,
    /// The newest group the target holds complete: the base of the next transfer, which
    /// local retention never prunes.
    pub last_group: Option<Name>,
    /// The newest snapshot each source volume's mirror holds there (`node/volume` ->
    /// group), also after a run that reached the target only in part: the bases local
    /// retention keeps.
    #[serde(default)]
    pub bases: std::collections::BTreeMap<String, Name>,
    /// When that group was taken here (RFC 3339) and when it was recorded there.
    pub last_group_created: Option<String>,
    pub last_replicated: Option<String>,
    /// Bytes sent to the target in all, and by the last run that reached it.
    pub bytes_sent: u64,
    pub last_bytes_sent: u64,
    /// Milliseconds the last run's transfers to it took (from the first send to the record).
    pub last_transfer_ms: u64,
    /// Runs whose part for this target failed, in all, and the last failure.
    pub failures: u64,
    pub last_error: Option<String>,
    /// The foreign plan's name there.
    pub foreign_plan: Option<Name>,
    /// When a run first tried to reach it (RFC 3339): a target that never got a group is
    /// late against the RPO from then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_attempt: Option<String>,
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
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
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
    pub objects: Vec<ObjectVolumes>,
    /// A mirror group's objects as they were when it was recorded (their volumes the
    /// mirrors here): what a rebuild from it makes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirror_objects: Vec<crate::policy::model::Object>,
    /// Its last verification (never stored here: the API adds it from
    /// `/ferry/verified/<plan-id>/<group>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<VerifiedRecord>,
}

/// A run as stored and listed.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RunRecord {
    /// The id of the plan it runs (absent in runs older than plan ids: the plan's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<Name>,
    pub run: Run,
    /// `schedule` or `manual`.
    pub trigger: String,
    /// The schedule slot it runs for (RFC 3339), for scheduled runs.
    pub slot: Option<String>,
    /// When the record was made (RFC 3339).
    pub created: String,
    /// The plan's objects when the run was made, each with the volumes it covers.
    #[serde(default)]
    pub objects: Vec<ObjectVolumes>,
}

/// An object of a run and its protected volumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ObjectVolumes {
    pub name: Name,
    pub volumes: Vec<crate::policy::model::VolumeRef>,
}

impl RunRecord {
    /// The id of the plan it runs.
    pub fn plan_id(&self) -> &Name {
        self.plan_id.as_ref().unwrap_or(&self.run.plan)
    }

    /// Its key in the store.
    pub fn key(&self) -> String {
        run_key(self.plan_id(), &self.run.id)
    }
}

/// An agent as recorded.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentRecord {
    pub node: Name,
    pub site: Name,
    pub address: String,
    /// `up` or `down`.
    pub status: String,
    pub volumes: Vec<VolumeReport>,
    /// Volumes the agent has beyond those listed (it lists at most
    /// `ferry_wire::control::MAX_REPORTED_VOLUMES`).
    #[serde(default)]
    pub volumes_omitted: u64,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    /// RFC 3339.
    pub connected: String,
    pub last_heartbeat: String,
    /// When the agent's certificate stops being valid (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_expires: Option<String>,
    /// Where paired sites' agents reach its replication endpoint (`HOST:PORT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_address: Option<String>,
}

impl AgentRecord {
    /// `down` when recorded so, or when its last heartbeat is older than
    /// [`ferry_wire::control::DOWN_AFTER_SECS`] (also after this controller restarted).
    /// Whether the agent has been silent for more than `secs` (or never registered).
    pub fn silent_for(&self, now: Timestamp, secs: u64) -> bool {
        self.last_heartbeat
            .parse::<Timestamp>()
            .map_or(true, |t| now.as_second() - t.as_second() > secs as i64)
    }

    pub fn status_at(&self, now: Timestamp) -> &'static str {
        let stale = self.last_heartbeat.parse::<Timestamp>().map_or(true, |t| {
            now.as_second() - t.as_second() > ferry_wire::control::DOWN_AFTER_SECS as i64
        });
        if self.status == "up" && !stale {
            "up"
        } else {
            "down"
        }
    }
}

/// What is in progress for a plan (the value of `/ferry/active/<plan-id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrphanRecord {
    pub plan: Name,
    pub plan_id: Name,
    /// RFC 3339.
    pub deleted: String,
    /// What becomes of its groups.
    pub fate: GroupsFate,
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
