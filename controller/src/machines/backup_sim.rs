//! A seeded simulation of backup runs: a plan with three targets run many times while
//! targets go unreachable, answers and task reports are lost, transfers are interrupted
//! (a link lost mid-transfer), agents go down and the controller loses its leadership at
//! random steps (the run is read back from its persisted JSON and driven on). After every
//! step it checks that each target's mirror groups are complete or absent, that local
//! retention never removed a base a target still needs, and that no volume is sent in full
//! twice to a target; once faults stop, every target converges on the newest group.
//! A failing seed is printed; `FERRY_TEST_SEED` replays it.

use std::collections::{BTreeMap, BTreeSet};

use ferry_wire::site::{Placement, SiteRequest, SiteResponse};
use ferry_wire::task::{SnapshotRecord, TaskKind, TaskResult, TaskState};
use ferry_wire::Name;
use jiff::Timestamp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::machines::run::{Action, Run, RunHooks, Step};
use crate::policy::retention::{prune, target_bases, GroupInfo};

fn n(s: &str) -> Name {
    Name::new(s).expect("name")
}

const VOLUMES: [(&str, &str); 3] = [("n1", "a"), ("n1", "b"), ("n2", "c")];

/// A target site as the simulation keeps it.
#[derive(Default)]
struct TargetSite {
    retention: usize,
    up: bool,
    /// Recorded mirror groups, oldest first.
    groups: Vec<String>,
    /// Committed mirror snapshots per volume (a transfer that ended before its group was
    /// recorded leaves one too).
    snapshots: BTreeMap<String, BTreeSet<String>>,
    /// Transfers half done (volume -> snapshot): a retry resumes them.
    partial: BTreeMap<String, String>,
    /// Full sends per volume.
    fulls: BTreeMap<String, u32>,
    /// What the source knows it holds (its `TargetRecord.last_group` and `bases`).
    last_group: Option<String>,
    bases: BTreeMap<String, String>,
}

struct World {
    rng: StdRng,
    faults: bool,
    /// Source groups kept, with their order.
    source: Vec<(String, i64)>,
    targets: BTreeMap<String, TargetSite>,
}

impl World {
    fn chance(&mut self, p: f64) -> bool {
        self.faults && self.rng.gen_bool(p)
    }

    /// The answer of target `site` to `req`, or `None` when it is lost (or never sent).
    fn ask(&mut self, site: &str, req: &SiteRequest) -> Option<Result<SiteResponse, String>> {
        if self.chance(0.2) {
            return None;
        }
        let up = self.targets[site].up;
        if !up {
            return Some(Err(format!("cannot reach site {site}")));
        }
        let resp = match req {
            SiteRequest::Prepare { volumes, .. } => SiteResponse::Prepared {
                foreign_plan: n("src.plan"),
                placements: volumes
                    .iter()
                    .map(|v| Placement {
                        node: v.node.clone(),
                        volume: v.volume.clone(),
                        mirror_node: n("m1"),
                        mirror: n(&format!("src.{}.{}", v.node, v.volume)),
                        address: "127.0.0.1:9".into(),
                    })
                    .collect(),
            },
            SiteRequest::Record {
                group, snapshots, ..
            } => {
                let t = self.targets.get_mut(site).expect("target");
                // A mirror group is recorded only with every mirror committed.
                assert_eq!(snapshots.len(), VOLUMES.len(), "a group of every volume");
                for s in snapshots {
                    let held = t
                        .snapshots
                        .get(s.volume.as_str())
                        .is_some_and(|x| x.contains(group.as_str()));
                    assert!(held, "{site}: group {group} recorded without {}", s.volume);
                }
                if !t.groups.contains(&group.to_string()) {
                    t.groups.push(group.to_string());
                }
                // The target's own retention (its executor's pass).
                while t.groups.len() > t.retention {
                    let old = t.groups.remove(0);
                    for s in t.snapshots.values_mut() {
                        s.remove(&old);
                    }
                }
                SiteResponse::Recorded {
                    groups: t.groups.len() as u32,
                }
            }
            SiteRequest::Ping { nonce } => SiteResponse::Pong { nonce: *nonce },
        };
        if self.chance(0.1) {
            return None; // done there, answer lost
        }
        Some(Ok(resp))
    }

    /// A transfer task's outcome, or `None` while it is still running or its report is lost.
    fn transfer(&mut self, kind: &TaskKind, root: &str) -> Option<TaskState> {
        let TaskKind::Replicate {
            volume,
            snapshot,
            site,
            ..
        } = kind
        else {
            panic!("not a transfer: {kind:?}");
        };
        if self.chance(0.15) {
            return None;
        }
        let (v, s) = (volume.to_string(), snapshot.to_string());
        let source: BTreeSet<String> = self.source.iter().map(|(g, _)| g.clone()).collect();
        let up = self.targets[site.as_str()].up;
        if !up {
            return Some(TaskState::Failed {
                kind: "network".into(),
                message: "unreachable".into(),
            });
        }
        let interrupted = self.chance(0.2);
        let agent_down = self.chance(0.05);
        let t = self.targets.get_mut(site.as_str()).expect("target");
        let mine = t.snapshots.entry(v.clone()).or_default();
        if mine.contains(&s) {
            return Some(done(root));
        }
        // The base: the newest snapshot both hold (names sort by time here).
        let base = mine.iter().rev().find(|g| source.contains(*g)).cloned();
        if interrupted {
            t.partial.insert(v.clone(), s.clone());
            return Some(TaskState::Interrupted);
        }
        if agent_down {
            t.partial.insert(v.clone(), s.clone());
            return Some(TaskState::Failed {
                kind: "agent_down".into(),
                message: "down".into(),
            });
        }
        let resumed = t.partial.remove(&v).is_some_and(|p| p == s);
        if base.is_none() && !resumed {
            *t.fulls.entry(v.clone()).or_default() += 1;
        }
        mine.insert(s);
        Some(done(root))
    }
}

fn done(root: &str) -> TaskState {
    TaskState::Done {
        result: TaskResult::Replicated {
            root: root.into(),
            base: None,
            sent_bytes: 1,
            blocks: 1,
            sent_blocks: 1,
            resumed_blocks: 0,
            elapsed_ms: 1,
            already_there: false,
        },
    }
}

fn root(v: &str, g: &str) -> String {
    format!("root-{v}-{g}")
}

/// One run `k` driven to its end (returns its final state).
fn one_run(w: &mut World, k: usize, now: &mut Timestamp) -> Run {
    let group = format!("g{k:04}");
    let mut vols: BTreeMap<Name, Vec<Name>> = BTreeMap::new();
    for (node, v) in VOLUMES {
        vols.entry(n(node)).or_default().push(n(v));
    }
    let targets: Vec<(Name, u32)> = w
        .targets
        .iter()
        .map(|(s, t)| (n(s), t.retention as u32))
        .collect();
    let mut run = Run::new(
        n(&format!("r{k:04}")),
        n("plan"),
        n(&group),
        1,
        RunHooks::default(),
        vols,
        *now,
    )
    .expect("run")
    .with_targets(n("plan.1"), &targets);
    for node in ["n1", "n2"] {
        let snapshots = VOLUMES
            .iter()
            .filter(|(nd, _)| *nd == node)
            .map(|(_, v)| SnapshotRecord {
                volume: n(v),
                snapshot: n(&group),
                size: 1,
                root: root(v, &group),
                bytes_read: 1,
                manifest_ms: 1,
            })
            .collect();
        let id = n(&format!("r{k:04}.{node}.snap"));
        let state = TaskState::Done {
            result: TaskResult::SnapshotGroup { snapshots },
        };
        run.on_report(&n(node), &id, &state, *now).expect("report");
    }
    assert_eq!(run.step, Step::Replicate, "{run:?}");
    w.source.push((group.clone(), k as i64));
    for step in 0..10_000 {
        assert!(step < 9_999, "run {k} does not end: {run:?}");
        *now = Timestamp::from_second(now.as_second() + w.rng.gen_range(1..8)).expect("time");
        if w.chance(0.05) {
            // Leadership lost: the next leader reads the run as it was persisted.
            let json = serde_json::to_vec(&run).expect("encode");
            run = serde_json::from_slice(&json).expect("decode");
        }
        let mut more = run.tick(*now).expect("tick");
        for a in run.actions().expect("actions") {
            match a {
                Action::Ask { site, id, request } => {
                    if let Some(reply) = w.ask(site.as_str(), &request) {
                        more.extend(run.on_site_reply(&site, &id, &reply, *now).expect("reply"));
                    }
                }
                Action::Dispatch { node, task } => {
                    let TaskKind::Replicate { volume, .. } = &task.kind else {
                        continue;
                    };
                    let r = root(volume.as_str(), &group);
                    if let Some(state) = w.transfer(&task.kind, &r) {
                        more.extend(
                            run.on_report(&node, &task.id, &state, *now)
                                .expect("report"),
                        );
                    }
                }
                _ => {}
            }
        }
        if more.contains(&Action::ComputePrune) {
            prune_source(w, &mut run, now);
        }
        if run.step.is_final() {
            return run;
        }
    }
    run
}

/// The executor's prune: the targets that got this run's group hold it now; the others'
/// bases stay.
fn prune_source(w: &mut World, run: &mut Run, now: &mut Timestamp) {
    for (site, part) in &run.targets {
        let t = w.targets.get_mut(site.as_str()).expect("t");
        if part.step == crate::machines::backup::TargetStep::Done {
            t.last_group = Some(run.group.to_string());
        }
        for x in part.transfers.iter().filter(|x| x.done) {
            t.bases.insert(x.volume.to_string(), run.group.to_string());
        }
    }
    let held: Vec<(String, Vec<String>)> = w
        .targets
        .iter()
        .map(|(s, t)| {
            let mut g: Vec<String> = t.bases.values().cloned().collect();
            g.extend(t.last_group.clone());
            (s.clone(), g)
        })
        .collect();
    let held_refs: Vec<(&str, Vec<&str>)> = held
        .iter()
        .map(|(s, g)| (s.as_str(), g.iter().map(String::as_str).collect()))
        .collect();
    let bases = target_bases(&held_refs, |_| false, run.group.as_str());
    let infos: Vec<GroupInfo<'_>> = w
        .source
        .iter()
        .map(|(g, t)| GroupInfo {
            name: g,
            taken: *t,
            complete: true,
            pinned: bases.contains(&g.as_str()),
        })
        .collect();
    let victims: Vec<String> = prune(&infos, 2).into_iter().map(String::from).collect();
    w.source.retain(|(g, _)| !victims.contains(g));
    // The snapshots' deletions on the agents are the run's own, tested in run.rs.
    run.prune(&BTreeMap::new(), *now).expect("prune");
}

fn simulate(seed: u64) {
    let mut w = World {
        rng: StdRng::seed_from_u64(seed),
        faults: true,
        source: Vec::new(),
        targets: BTreeMap::new(),
    };
    for (s, keep) in [("b", 3), ("c", 1), ("d", 2)] {
        w.targets.insert(
            s.into(),
            TargetSite {
                retention: keep,
                up: true,
                ..Default::default()
            },
        );
    }
    let mut now = Timestamp::from_second(1_800_000_000).expect("ts");
    let runs = 40;
    for k in 0..runs {
        w.faults = k < runs - 4;
        for t in w.targets.values_mut() {
            t.up = true;
        }
        if w.faults {
            let sites: Vec<String> = w.targets.keys().cloned().collect();
            for s in sites {
                if w.rng.gen_bool(0.25) {
                    w.targets.get_mut(&s).expect("t").up = false;
                }
            }
        }
        let run = one_run(&mut w, k, &mut now);
        // Every base a target still needs is still here.
        for (s, t) in &w.targets {
            if let Some(g) = &t.last_group {
                assert!(
                    w.source.iter().any(|(x, _)| x == g),
                    "seed {seed} run {k}: the base {g} of target {s} was pruned"
                );
            }
            for (v, fulls) in &t.fulls {
                assert!(
                    *fulls <= 1,
                    "seed {seed}: {v} sent in full {fulls} times to {s}"
                );
            }
        }
        assert!(
            matches!(run.step, Step::Done | Step::PartiallyDone),
            "seed {seed} run {k}: {:?} {:?}",
            run.step,
            run.error
        );
    }
    // Faults stopped: every target converged on the newest group.
    let newest = format!("g{:04}", runs - 1);
    for (s, t) in &w.targets {
        assert_eq!(
            t.last_group.as_deref(),
            Some(newest.as_str()),
            "seed {seed}: {s}"
        );
        assert_eq!(t.groups.last(), Some(&newest), "seed {seed}: {s}");
        assert!(
            t.groups.len() <= t.retention,
            "seed {seed}: {s} keeps {:?}",
            t.groups
        );
    }
}

#[test]
fn backup_runs_survive_faults_and_converge() {
    let seeds: Vec<u64> = match std::env::var("FERRY_TEST_SEED") {
        Ok(s) => vec![s.parse().expect("FERRY_TEST_SEED is a number")],
        Err(_) => {
            let base: u64 = rand::random();
            (0..64).map(|i| base.wrapping_add(i)).collect()
        }
    };
    for seed in seeds {
        eprintln!("simulating FERRY_TEST_SEED={seed}");
        simulate(seed);
    }
}
