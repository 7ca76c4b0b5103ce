//! Recoveries from kept groups (rebuilds, drills, verifications: [`Recovery`]) as the
//! controller starts them: by request through the API, or on schedule for the foreign plans
//! here (a drill when the source plan's schedule for this site says so, a verification of
//! the group verified longest ago when the configured interval has passed). A recovery is
//! stored with an entry in the executor's index (`/ferry/recovering/`) in one
//! transaction; the executor carries it out ([`crate::daemon::executor`]).

use std::collections::{BTreeMap, BTreeSet};

use ferry_wire::Name;
use jiff::Timestamp;
use serde::Deserialize;

use crate::daemon::leader::Term;
use crate::machines::recovery::{CheckSpec, Recovery, RecoveryKind, RecoverySpec};
use crate::policy::model::{FieldError, VolumeRef, DEFAULT_CHECK_SECS};
use crate::policy::recovery::{self, Naming, Refusal};
use crate::policy::schedule::{due, Every, Schedule};
use crate::state::schema::{self, AgentRecord, GroupRecord, PlanRecord, VerifiedRecord};
use crate::state::{load, Compare, Op, Store, StoreError, Txn};

/// What this site does about recovery (the controller's `[recovery]` configuration).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryConfig {
    /// Sites whose backup plans' drill checks this site runs. A check is a command run as
    /// root on this site's agents, so none is run unless its site is listed here; a drill
    /// without its check still rebuilds and verifies.
    #[serde(default)]
    pub drill_checks_from: Vec<Name>,
    /// Every kept mirror group here is re-read against its manifests this often (seconds;
    /// 0: never). Default a week.
    #[serde(default = "week")]
    pub verify_every_secs: u64,
    /// How fast a verification reads on each agent (bytes per second, or a size like
    /// `64MiB`); it also pauses while the agent moves a transfer. Default 64 MiB/s.
    #[serde(default = "verify_rate", deserialize_with = "size")]
    pub verify_bandwidth: u64,
}

fn week() -> u64 {
    7 * 86_400
}

fn verify_rate() -> u64 {
    64 << 20
}

fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(b) => Ok(b),
        Size::Text(t) => ferry_wire::units::parse_size(&t).map_err(serde::de::Error::custom),
    }
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            drill_checks_from: Vec::new(),
            verify_every_secs: week(),
            verify_bandwidth: verify_rate(),
        }
    }
}

/// Why a recovery was not started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Invalid(FieldError),
    /// A name the site has already, or one of the same kind in progress.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Refusal> for StartError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Invalid(e) => StartError::Invalid(e),
            Refusal::Taken(m) => StartError::Conflict(m),
        }
    }
}

/// What a recovery is asked to do.
#[derive(Debug, Clone)]
pub struct Ask {
    pub kind: RecoveryKind,
    pub group: Name,
    /// Rebuilds: only these objects (default all).
    pub objects: Option<Vec<Name>>,
    pub naming: Naming,
    /// Drills: the check; `from_site` whether it comes from the source site's plan (then
    /// run only if allowed) rather than this site's operator.
    pub check: Option<CheckSpec>,
    pub from_site: bool,
    pub trigger: &'static str,
}

/// A recovery's id: its kind, the instant and a hash of the plan id (distinct across plans).
pub fn recovery_id(kind: RecoveryKind, plan_id: &Name, now: Timestamp) -> Name {
    let tag = match kind {
        RecoveryKind::Rebuild => "rb",
        RecoveryKind::Drill => "dr",
        RecoveryKind::Verify => "vf",
    };
    crate::policy::model::plan_job_id(tag, plan_id, now.as_millisecond())
}

/// The recovery of `kind` of plan `plan_id` in progress, if any.
pub async fn in_progress(
    store: &Store,
    plan_id: &Name,
    kind: RecoveryKind,
) -> Result<Option<Recovery>, StoreError> {
    for kv in store.list(&schema::recovering_of(plan_id)).await? {
        let key = String::from_utf8_lossy(&kv.value).into_owned();
        if let Some(r) = store.get(&key).await? {
            if let Ok(r) = serde_json::from_slice::<Recovery>(&r.value) {
                if r.kind == kind {
                    return Ok(Some(r));
                }
            }
        }
    }
    Ok(None)
}

/// Conditions and writes for the transaction that stores a recovery (a scheduled drill's
/// fired marker, written on what it was).
#[derive(Debug, Default)]
pub struct Extra {
    pub when: Vec<Compare>,
    pub then: Vec<Op>,
}

/// Starts a recovery of `plan` (a foreign plan here) from its group `group`, as `ask`
/// says, with `more` in the same transaction.
pub async fn start(
    store: &Store,
    term: &Term,
    cfg: &RecoveryConfig,
    plan: &PlanRecord,
    group: &GroupRecord,
    ask: Ask,
    more: Extra,
) -> Result<Recovery, StartError> {
    let plan_id = plan.id().clone();
    if let Some(r) = in_progress(store, &plan_id, ask.kind).await? {
        return Err(StartError::Conflict(format!(
            "{} {} of plan {} is in progress (group {}); wait for it to end",
            kind_word(ask.kind),
            r.id,
            plan.spec.name,
            r.group
        )));
    }
    let now = Timestamp::now();
    let id = recovery_id(ask.kind, &plan_id, now);
    let origin = plan.origin.as_ref();
    let origin_of = |v: &VolumeRef| {
        origin?
            .mirrors
            .iter()
            .find(|p| p.mirror_node == v.node && p.mirror == v.volume)
            .map(|p| VolumeRef {
                node: p.node.clone(),
                volume: p.volume.clone(),
            })
    };
    let what = match ask.kind {
        // Every snapshot of the group, of any plan.
        RecoveryKind::Verify => recovery::Recoverable {
            objects: Vec::new(),
            volumes: group
                .snapshots
                .iter()
                .map(|(node, s)| {
                    let at = VolumeRef {
                        node: node.clone(),
                        volume: s.volume.clone(),
                    };
                    recovery::SourceVolume {
                        origin: origin_of(&at).unwrap_or_else(|| at.clone()),
                        at,
                        root: s.root.clone(),
                    }
                })
                .collect(),
        },
        _ => {
            if origin.is_none() {
                return Err(StartError::Invalid(FieldError {
                    field: "plan".into(),
                    problem: format!(
                        "{} is not a foreign plan: rebuilds and drills are made at a target site \
                         from its mirror groups (ferry plans list there shows SITE.PLAN); here, \
                         roll back instead",
                        plan.spec.name
                    ),
                }));
            }
            // The objects as recorded with the group; a group recorded before that falls
            // back to the foreign plan's mirror objects now.
            let objects = if group.mirror_objects.is_empty() {
                load(store, &schema::mirrors_of(&plan_id)).await?
            } else {
                group.mirror_objects.clone()
            };
            let select = match ask.kind {
                RecoveryKind::Rebuild => ask.objects.as_deref(),
                _ => None,
            };
            recovery::recoverable(&group.snapshots, &objects, origin_of, select)?
        }
    };
    let (new_volumes, new_objects) = match ask.kind {
        RecoveryKind::Rebuild => {
            let agents: Vec<AgentRecord> = load(store, schema::AGENTS).await?;
            let mut taken_objects = BTreeSet::new();
            for o in &what.objects {
                for name in [o.name.clone()]
                    .into_iter()
                    .chain(
                        ask.naming
                            .names
                            .get(o.name.as_str())
                            .and_then(|n| Name::new(n).ok()),
                    )
                    .chain(Name::new(&format!("{}{}", o.name, ask.naming.suffix)).ok())
                {
                    if store.get(&schema::object_key(&name)).await?.is_some() {
                        taken_objects.insert(name);
                    }
                }
            }
            let volume_taken = |v: &VolumeRef| {
                agents
                    .iter()
                    .any(|a| a.node == v.node && a.volumes.iter().any(|x| x.name == v.volume))
            };
            let (v, o) = recovery::name_rebuild(
                &what,
                &ask.naming,
                |n| taken_objects.contains(n),
                volume_taken,
            )?;
            (v.into_iter().map(Some).collect::<Vec<_>>(), o)
        }
        RecoveryKind::Drill => {
            let (v, o) = recovery::name_scratch(&what, &id);
            (v.into_iter().map(Some).collect(), o)
        }
        RecoveryKind::Verify => (vec![None; what.volumes.len()], Vec::new()),
    };
    let volumes = what
        .volumes
        .iter()
        .zip(new_volumes)
        .map(|(v, new)| (v.at.node.clone(), v.at.volume.clone(), v.root.clone(), new))
        .collect();
    let spec = RecoverySpec {
        id: id.clone(),
        kind: ask.kind,
        plan: plan.spec.name.clone(),
        plan_id: plan_id.clone(),
        group: group.group.clone(),
        generation: term.generation,
        trigger: ask.trigger.into(),
    };
    let mut r = Recovery::new(spec, volumes, new_objects, now);
    r.source_site = origin.map(|o| o.site.clone());
    if ask.kind == RecoveryKind::Verify {
        r.bytes_per_sec = Some(cfg.verify_bandwidth).filter(|b| *b > 0);
    }
    if let Some(c) = ask.check {
        let source = origin.map(|o| o.site.clone());
        let allowed = !ask.from_site
            || source
                .as_ref()
                .is_some_and(|s| cfg.drill_checks_from.contains(s));
        if allowed {
            r.check = Some(c);
        } else {
            r.check_skipped = Some(format!(
                "the check comes from site {} and this site runs only those of [recovery] drill_checks_from",
                source.map_or_else(|| "?".into(), |s| s.to_string())
            ));
        }
    }
    let key = schema::recovery_key(&plan_id, &id);
    let value = serde_json::to_vec(&r).map_err(|e| StoreError::Embedded(e.to_string()))?;
    let mut then = vec![
        Op::Put(key.clone(), value),
        Op::Put(
            schema::recovering_key(&plan_id, &id),
            key.clone().into_bytes(),
        ),
    ];
    then.extend(more.then);
    let mut when = vec![Compare::Absent(key), term.fence()];
    when.extend(more.when);
    let done = store.txn(Txn { when, then }).await?;
    if !done.succeeded {
        return Err(StartError::Conflict(
            "another recovery was started at the same moment; try again".into(),
        ));
    }
    tracing::info!(plan = %plan.spec.name, group = %group.group, recovery = %id, kind = ?ask.kind, trigger = ask.trigger, "recovery started");
    Ok(r)
}

fn kind_word(k: RecoveryKind) -> &'static str {
    match k {
        RecoveryKind::Rebuild => "rebuild",
        RecoveryKind::Drill => "drill",
        RecoveryKind::Verify => "verification",
    }
}

/// The newest group of plan id `plan_id`, if it keeps any.
pub async fn newest_group(
    store: &Store,
    plan_id: &Name,
) -> Result<Option<GroupRecord>, StoreError> {
    let mut groups: Vec<GroupRecord> = load(store, &schema::groups_of(plan_id)).await?;
    groups.sort_by(|a, b| a.created.cmp(&b.created));
    Ok(groups.pop())
}

/// The groups of plan id `plan_id` a recovery in progress reads (kept from pruning).
pub async fn groups_in_use(store: &Store, plan_id: &Name) -> Result<BTreeSet<Name>, StoreError> {
    let mut out = BTreeSet::new();
    for kv in store.list(&schema::recovering_of(plan_id)).await? {
        let key = String::from_utf8_lossy(&kv.value).into_owned();
        if let Some(r) = store.get(&key).await? {
            if let Ok(r) = serde_json::from_slice::<Recovery>(&r.value) {
                out.insert(r.group);
            }
        }
    }
    Ok(out)
}

/// Starts what is due for the foreign plans here: a drill whose slot came, and a
/// verification of the group verified longest ago once that is older than
/// `verify_every_secs` (one of each per plan at a time).
pub async fn schedule(
    store: &Store,
    term: &Term,
    cfg: &RecoveryConfig,
    now: Timestamp,
) -> Result<(), StoreError> {
    for p in load::<PlanRecord>(store, schema::PLANS).await? {
        let Some(origin) = &p.origin else { continue };
        let id = p.id().clone();
        if let Some(d) = &origin.drill {
            let sched = d.schedule.every.parse::<Every>().ok().and_then(|every| {
                Schedule::new(
                    every,
                    &d.schedule.start,
                    &d.schedule.timezone,
                    d.schedule.end.as_deref(),
                )
                .ok()
            });
            let key = schema::drill_fired_key(&id);
            let fired_kv = store.get(&key).await?;
            let fired = fired_kv
                .as_ref()
                .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok());
            let slot = sched.and_then(|s| due(&s, fired, now));
            // A slot fires once there is a group and no drill of the plan runs; until then
            // it stays due (like a run's slot while its plan is busy).
            if let Some(slot) = slot {
                let busy = in_progress(store, &id, RecoveryKind::Drill)
                    .await?
                    .is_some();
                if let (Some(g), false) = (newest_group(store, &id).await?, busy) {
                    let marker = Op::Put(key.clone(), slot.to_string().into_bytes());
                    let fence = match &fired_kv {
                        Some(kv) => Compare::ModRevision(key.clone(), kv.mod_revision),
                        None => Compare::Absent(key.clone()),
                    };
                    let ask = Ask {
                        kind: RecoveryKind::Drill,
                        group: g.group.clone(),
                        objects: None,
                        naming: Naming::default(),
                        check: d.check.clone().map(|command| CheckSpec {
                            command,
                            timeout_secs: d.timeout_secs.unwrap_or(DEFAULT_CHECK_SECS),
                        }),
                        from_site: true,
                        trigger: "schedule",
                    };
                    let more = Extra {
                        when: vec![fence.clone()],
                        then: vec![marker.clone()],
                    };
                    match start(store, term, cfg, &p, &g, ask, more).await {
                        Ok(_) | Err(StartError::Conflict(_)) => {}
                        Err(StartError::Store(e)) => return Err(e),
                        Err(e) => {
                            // This slot cannot drill (a group it cannot rebuild): the next
                            // one tries again.
                            tracing::warn!(plan = %p.spec.name, %slot, error = %e, "cannot start the scheduled drill");
                            let txn = Txn {
                                when: vec![fence, term.fence()],
                                then: vec![marker],
                            };
                            store.txn(txn).await?;
                        }
                    }
                }
            }
        }
        if cfg.verify_every_secs > 0 {
            verify_next(store, term, cfg, &p, now).await?;
        }
    }
    Ok(())
}

/// Starts the verification of foreign plan `p`'s group verified longest ago (never first),
/// if that was more than the interval ago and none runs.
async fn verify_next(
    store: &Store,
    term: &Term,
    cfg: &RecoveryConfig,
    p: &PlanRecord,
    now: Timestamp,
) -> Result<(), StoreError> {
    let id = p.id();
    if in_progress(store, id, RecoveryKind::Verify)
        .await?
        .is_some()
    {
        return Ok(());
    }
    let groups: Vec<GroupRecord> = load(store, &schema::groups_of(id)).await?;
    let verified: BTreeMap<String, i64> = store
        .list(&schema::verified_of(id))
        .await?
        .into_iter()
        .filter_map(|kv| {
            let v: VerifiedRecord = serde_json::from_slice(&kv.value).ok()?;
            let at = v.at.parse::<Timestamp>().ok()?;
            Some((schema::last_name(&kv.key)?.to_string(), at.as_second()))
        })
        .collect();
    // A group is due once the interval has passed since its verification, or since it was
    // recorded here (a fresh group was checked block by block as it arrived).
    let due_at = |g: &GroupRecord| {
        verified
            .get(g.group.as_str())
            .copied()
            .unwrap_or_else(|| g.created.parse::<Timestamp>().map_or(0, |t| t.as_second()))
    };
    let next = groups
        .iter()
        .filter(|g| now.as_second() - due_at(g) >= cfg.verify_every_secs as i64)
        .min_by_key(|g| due_at(g));
    let Some(g) = next else { return Ok(()) };
    let ask = Ask {
        kind: RecoveryKind::Verify,
        group: g.group.clone(),
        objects: None,
        naming: Naming::default(),
        check: None,
        from_site: false,
        trigger: "schedule",
    };
    match start(store, term, cfg, p, g, ask, Extra::default()).await {
        Ok(_) => Ok(()),
        Err(StartError::Store(e)) => Err(e),
        Err(e) => {
            tracing::warn!(plan = %p.spec.name, group = %g.group, error = %e, "cannot verify the group");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_ids_are_names_and_differ_by_plan() {
        let now = Timestamp::from_second(1_800_000_000).expect("ts");
        let a = recovery_id(RecoveryKind::Drill, &Name::new("p.1").expect("n"), now);
        let b = recovery_id(RecoveryKind::Drill, &Name::new("p.2").expect("n"), now);
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("dr1800000000000-"));
        // A scratch volume and a task id built from it stay names.
        let node = Name::new(&"n".repeat(64)).expect("name");
        assert!(Name::new(&format!("{a}-4095")).is_ok());
        assert!(Name::new(&format!("{a}.{node}.cleanup4095")).is_ok());
    }

    #[test]
    fn the_configuration_reads_sizes_and_defaults() {
        let c: RecoveryConfig = toml::from_str("verify_bandwidth = \"16MiB\"").expect("parse");
        assert_eq!(c.verify_bandwidth, 16 << 20);
        assert_eq!(c.verify_every_secs, 604_800);
        let c: RecoveryConfig = toml::from_str("verify_bandwidth = 1000").expect("parse");
        assert_eq!(c.verify_bandwidth, 1000);
        assert!(toml::from_str::<RecoveryConfig>("colour = 1").is_err());
    }
}
