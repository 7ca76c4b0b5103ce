//! RPO alarms: every few seconds the leader checks each plan's recovery point at each site
//! against the plan's RPO ([`crate::policy::rpo`]): for a backup plan here, the newest group
//! each target holds (`source` role); for a foreign plan here, the newest mirror group
//! (`target` role: a source site that fell silent is noticed where the copies are). A
//! change of state is written to `/ferry/alarms/<plan-id>/<site>` with its notification
//! in one transaction, and logged once.

use std::collections::BTreeMap;

use ferry_wire::Name;
use jiff::Timestamp;

use crate::daemon::leader::Term;
use crate::policy::rpo;
use crate::state::schema::{self, AlarmRecord, Event, GroupRecord, PlanRecord, TargetRecord};
use crate::state::{load, Compare, KeyValue, Op, Store, StoreError, Txn};

fn secs(t: Option<&str>) -> Option<i64> {
    t?.parse::<Timestamp>().ok().map(|t| t.as_second())
}

/// A plan's recovery point at one site, checked against its RPO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpoCheck {
    pub plan: Name,
    pub plan_id: Name,
    /// The other site: a target (`source` role) or the foreign plan's source (`target`).
    pub site: Name,
    pub role: &'static str,
    pub rpo_secs: u64,
    pub standing: rpo::Standing,
}

/// Every plan's recovery points at `now`: each target of a backup plan not paused, and each
/// foreign plan here.
pub async fn checks(
    store: &Store,
    plans: &[PlanRecord],
    now: Timestamp,
) -> Result<Vec<RpoCheck>, StoreError> {
    let mut out = Vec::new();
    for p in plans {
        let id = p.id();
        let rpo = rpo::rpo_secs(p.spec.rpo_secs, &p.spec.schedule.every);
        let mut check = |site: Name, role, newest, first| {
            out.push(RpoCheck {
                plan: p.spec.name.clone(),
                plan_id: id.clone(),
                site,
                role,
                rpo_secs: rpo,
                standing: rpo::standing(newest, first, rpo, now.as_second()),
            })
        };
        if let Some(o) = &p.origin {
            let groups: Vec<GroupRecord> = load(store, &schema::groups_of(id)).await?;
            let newest = groups.iter().filter_map(|g| secs(Some(&g.created))).max();
            check(o.site.clone(), "target", newest, secs(Some(&o.created)));
        } else if !p.paused {
            let held: Vec<TargetRecord> = load(store, &schema::targets_of(id)).await?;
            for t in &p.spec.targets {
                let rec = held.iter().find(|h| h.site == t.site);
                let newest = rec.and_then(|r| secs(r.last_group_created.as_deref()));
                let first = rec.and_then(|r| secs(r.first_attempt.as_deref()));
                check(t.site.clone(), "source", newest, first);
            }
        }
    }
    Ok(out)
}

/// One pass over every plan; `site` is this site's name (in notifications).
pub async fn pass(
    store: &Store,
    term: &Term,
    site: &Name,
    now: Timestamp,
) -> Result<(), StoreError> {
    let plans: Vec<PlanRecord> = load(store, schema::PLANS).await?;
    let mut stored: BTreeMap<String, KeyValue> = store
        .list(schema::ALARMS)
        .await?
        .into_iter()
        .map(|kv| (kv.key.clone(), kv))
        .collect();
    for c in checks(store, &plans, now).await? {
        let (peer, role, st, rpo) = (c.site, c.role, c.standing, c.rpo_secs);
        let (p, id) = (&c.plan, &c.plan_id);
        let key = schema::alarm_key(id, &peer);
        let old = stored.remove(&key);
        let was: Option<AlarmRecord> = old
            .as_ref()
            .and_then(|kv| serde_json::from_slice(&kv.value).ok());
        let Some(violated) = rpo::change(was.as_ref().map(|a| a.violated), st.violated) else {
            continue;
        };
        let rec = AlarmRecord {
            plan: p.clone(),
            site: peer.clone(),
            role: role.into(),
            violated,
            since: now.to_string(),
            rpo_secs: rpo,
            age_secs: st.age_secs,
        };
        let age = st.age_secs.map_or_else(
            || "no group yet".to_string(),
            |a| format!("the newest group is {a} s old"),
        );
        let (event, message) = if violated {
            (
                "rpo_violated",
                format!("plan {p} at site {peer}: {age}, past its RPO of {rpo} s"),
            )
        } else {
            (
                "rpo_restored",
                format!("plan {p} at site {peer}: {age}, within its RPO of {rpo} s again"),
            )
        };
        let mut e = Event::new(event, site, p, message, now);
        e.peer = Some(peer.clone());
        let when = match &old {
            Some(kv) => Compare::ModRevision(kv.key.clone(), kv.mod_revision),
            None => Compare::Absent(key.clone()),
        };
        let then = vec![
            Op::Put(key, serde_json::to_vec(&rec).unwrap_or_default()),
            e.put(),
        ];
        let done = store
            .txn(Txn {
                when: vec![when, term.fence()],
                then,
            })
            .await?;
        if done.succeeded {
            if violated {
                tracing::warn!(plan = %p, site = %peer, role, rpo_s = rpo, age_s = ?st.age_secs, "RPO violated");
            } else {
                tracing::info!(plan = %p, site = %peer, role, rpo_s = rpo, age_s = ?st.age_secs, "RPO restored");
            }
        }
    }
    // Alarms of plans or targets that are gone.
    for (key, kv) in stored {
        let plan_gone = !plans
            .iter()
            .any(|p| key.starts_with(&schema::alarms_of(p.id())));
        let target_gone = plans.iter().any(|p| {
            key.starts_with(&schema::alarms_of(p.id()))
                && p.origin.is_none()
                && (p.paused
                    || !p
                        .spec
                        .targets
                        .iter()
                        .any(|t| key == schema::alarm_key(p.id(), &t.site)))
        });
        if plan_gone || target_gone {
            store
                .txn(Txn {
                    when: vec![
                        Compare::ModRevision(key.clone(), kv.mod_revision),
                        term.fence(),
                    ],
                    then: vec![Op::Delete(key)],
                })
                .await?;
        }
    }
    Ok(())
}
