//! `ferry plans`: protection plans, their runs, their snapshot groups, rollback, and
//! recovery at a target (rebuild, drills, verification: [`crate::recovery`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use ferry_controller::exit::Coded;
use serde_json::{json, Value};

use crate::client::{checked, read_json_file, Api};
use crate::output::{confirm, duration, emit, s, size, when, Follow, Seen, Table};

const PLAN_FILE: &str = "\
A plan file is JSON:
  {\"name\": \"nightly\", \"objects\": [\"web\", \"db\"], \"retention\": 7,
   \"schedule\": {\"every\": \"daily\", \"start\": \"2026-11-24T02:30\", \"timezone\": \"Europe/Berlin\"},
   \"hooks\": {\"pre\": \"fsfreeze -f /mnt/db\", \"post\": \"fsfreeze -u /mnt/db\", \"timeout_secs\": 30}}
every: hourly, daily, weekly or monthly; start: wall-clock time in the time zone (UTC if
none); retention: snapshot groups kept; \"enabled\": false creates it paused; hooks are optional.";

#[derive(Subcommand)]
pub enum Cmd {
    /// List the plans with their schedule and next run.
    List,
    /// Show one plan whole.
    #[command(after_help = "Example: ferry plans get nightly")]
    Get {
        /// The plan's name.
        name: String,
    },
    /// Create a plan from a JSON file (- reads standard input).
    #[command(after_help = PLAN_FILE)]
    Create {
        /// The plan's JSON file, e.g. nightly.json.
        file: PathBuf,
    },
    /// Replace a plan with a JSON file (the plan named in the file); it stays paused or not.
    #[command(after_help = PLAN_FILE)]
    Update {
        /// The plan's JSON file, e.g. nightly.json.
        file: PathBuf,
    },
    /// Delete a plan. One that keeps snapshot groups needs to be told what becomes of them.
    #[command(
        after_help = "Examples:\n  ferry plans delete nightly --keep-groups     # kept as orphaned groups: ferry orphans list\n  ferry plans delete nightly --delete-groups   # its snapshots are deleted too"
    )]
    Delete {
        /// The plan's name.
        name: String,
        /// Keep its groups (and their snapshots) as orphaned groups, listed and deleted with
        /// `ferry orphans`.
        #[arg(long, conflicts_with = "delete_groups")]
        keep_groups: bool,
        /// Delete its groups and their snapshots on the agents.
        #[arg(long)]
        delete_groups: bool,
        /// Do not ask (deleting groups asks on a terminal).
        #[arg(long)]
        yes: bool,
        /// Let go of a foreign plan (a paired site's mirror here): the site stops owning it.
        #[arg(long)]
        release: bool,
    },
    /// A backup plan's target sites: the newest group each holds, its age, bytes sent.
    #[command(after_help = "Example: ferry plans targets nightly")]
    Targets {
        /// The plan's name.
        name: String,
    },
    /// Stop running the plan on its schedule (runs by hand still work).
    Pause {
        /// The plan's name.
        name: String,
    },
    /// Run the plan on its schedule again.
    Resume {
        /// The plan's name.
        name: String,
    },
    /// Start a run now (refused while one is in progress); --wait follows it to its end.
    #[command(after_help = "Example: ferry plans run nightly --wait")]
    Run {
        /// The plan's name.
        name: String,
        /// Show its progress until it is over, then the run per object and volume.
        #[arg(long)]
        wait: bool,
    },
    /// The plan's runs: when, why, how long, how much was read, how they ended.
    Runs {
        /// The plan's name.
        name: String,
    },
    /// One run per object and volume: status, snapshot, bytes read, when, errors.
    #[command(
        after_help = "Example: ferry plans run-show nightly m1796157342598-4f7b711b7aee7a60\n(ferry plans runs nightly lists the run ids)"
    )]
    RunShow {
        /// The plan's name.
        name: String,
        /// The run's id.
        run: String,
    },
    /// The plan's kept snapshot groups, oldest first.
    Groups {
        /// The plan's name.
        name: String,
    },
    /// Roll the plan's objects (or some) back to a kept group, in place. Their current data
    /// is replaced; only volumes the plan protects now are touched.
    #[command(
        after_help = "Examples:\n  ferry plans rollback nightly nightly-20261124T013000Z --wait\n  ferry plans rollback nightly nightly-20261124T013000Z --object db --yes\n(ferry plans groups nightly lists the groups)"
    )]
    Rollback {
        /// The plan's name.
        name: String,
        /// The group to roll back to.
        group: String,
        /// Only this object (again for more).
        #[arg(long = "object")]
        objects: Vec<String>,
        /// Follow it to its end.
        #[arg(long)]
        wait: bool,
        /// Do not ask for confirmation (asked on a terminal).
        #[arg(long)]
        yes: bool,
    },
    /// Rebuild a foreign plan's objects here from one of its mirror groups (at a target site,
    /// also with the source site gone): new writable volumes and objects with this site's
    /// names. A step that fails undoes what the rebuild made.
    #[command(after_help = "Examples:
  ferry plans rebuild site-a.nightly nightly-20261124T013000Z --wait
  ferry plans rebuild site-a.nightly nightly-20261124T013000Z --object web --suffix -dr
  ferry plans rebuild site-a.nightly GROUP --names names.json
A names file maps an object's name, or a source volume's NODE/VOLUME, to its new name:
  {\"web\": \"web-restored\", \"node1/web0\": \"web0-restored\"}
(ferry plans groups site-a.nightly lists the groups)")]
    Rebuild {
        /// The foreign plan's name (SITE.PLAN).
        name: String,
        /// The mirror group to rebuild from.
        group: String,
        /// Only this object (again for more, or a comma-separated list).
        #[arg(long = "object", visible_alias = "objects", value_delimiter = ',')]
        objects: Vec<String>,
        /// Appended to every new name not in --names, e.g. -dr.
        #[arg(long, conflicts_with = "names")]
        suffix: Option<String>,
        /// A JSON file of new names (- reads standard input).
        #[arg(long)]
        names: Option<PathBuf>,
        /// Follow it to its end, then show what it made.
        #[arg(long)]
        wait: bool,
    },
    /// The plan's rebuilds.
    Rebuilds {
        /// The plan's name.
        name: String,
    },
    /// Run a recovery drill now at this (target) site: the group rebuilt into scratch
    /// volumes, re-read against the source's manifests, checked, deleted.
    #[command(after_help = "Examples:
  ferry plans drill site-a.nightly --wait
  ferry plans drill site-a.nightly --check 'fsck -n \"$FERRY_VOLUME\"' --timeout 300 --wait")]
    Drill {
        /// The foreign plan's name (SITE.PLAN).
        name: String,
        /// The group to drill (default: the newest).
        #[arg(long)]
        group: Option<String>,
        /// A check run per object on the node of its first volume (FERRY_VOLUME,
        /// FERRY_VOLUME_PATHS, FERRY_OBJECT in its environment); default: the plan's.
        #[arg(long)]
        check: Option<String>,
        /// Seconds each check may run (default 600).
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
        /// Follow it to its end, then show each volume's and object's outcome.
        #[arg(long)]
        wait: bool,
    },
    /// The plan's drills: when, which group, how long, passed or why not.
    Drills {
        /// The plan's name.
        name: String,
    },
    /// Re-read a kept group against its manifests now (verifications also run on their own
    /// at a target, see [recovery] in the controller's configuration).
    #[command(
        after_help = "Example: ferry plans verify site-a.nightly nightly-20261124T013000Z --wait"
    )]
    Verify {
        /// The plan's name.
        name: String,
        /// The group to verify.
        group: String,
        /// Follow it to its end.
        #[arg(long)]
        wait: bool,
    },
    /// The plan's verifications.
    Verifications {
        /// The plan's name.
        name: String,
    },
}

fn state(p: &Value) -> &'static str {
    if p["paused"] == true {
        "paused"
    } else {
        "active"
    }
}

fn print_list(v: &Value) {
    let mut t =
        Table::new(&["NAME", "EVERY", "STATE", "RETENTION", "OBJECTS", "NEXT RUN"]).right(&[3]);
    for p in v.as_array().into_iter().flatten() {
        let spec = &p["spec"];
        t.row(vec![
            s(&spec["name"]),
            s(&spec["schedule"]["every"]),
            state(p).into(),
            s(&spec["retention"]),
            spec["objects"]
                .as_array()
                .map(|o| o.iter().map(s).collect::<Vec<_>>().join(", "))
                .unwrap_or_default(),
            when(&p["next_run"]),
        ]);
    }
    if t.is_empty() {
        println!("no plans yet: ferry plans create FILE (ferry plans create --help shows one)");
    } else {
        t.print();
    }
}

fn print_one(p: &Value) {
    let spec = &p["spec"];
    let sch = &spec["schedule"];
    println!("name:       {}", s(&spec["name"]));
    println!("id:         {}", s(&p["id"]));
    println!("state:      {}", state(p));
    println!(
        "schedule:   {} from {} ({}){}",
        s(&sch["every"]),
        s(&sch["start"]),
        s(&sch["timezone"]),
        sch["end"]
            .as_str()
            .map(|e| format!(" until {e}"))
            .unwrap_or_default()
    );
    println!("next run:   {}", when(&p["next_run"]));
    println!("retention:  {} groups", s(&spec["retention"]));
    let objects: Vec<String> = spec["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .map(s)
        .collect();
    println!("objects:    {}", objects.join(", "));
    if let Some(o) = p["origin"].as_object() {
        println!(
            "mirror of:  plan {} of site {} (read-only here; {} mirrors)",
            s(&o["plan"]),
            s(&o["site"]),
            o["mirrors"].as_array().map_or(0, Vec::len)
        );
        if let Some(d) = o.get("drill").and_then(Value::as_object) {
            let sch = &d["schedule"];
            println!(
                "drills:     {} from {} ({}){}",
                s(&sch["every"]),
                s(&sch["start"]),
                s(&sch["timezone"]),
                d["check"]
                    .as_str()
                    .map(|c| format!(", check {c:?}"))
                    .unwrap_or_default()
            );
        }
    }
    if let Some(r) = spec["rpo_secs"].as_f64() {
        println!("rpo:        {}", duration(r));
    }
    if p["targets_status"].is_array() {
        println!("targets:");
        print_targets(&p["targets_status"]);
    }
    let h = &spec["hooks"];
    if h["pre"].is_string() || h["post"].is_string() {
        println!("pre hook:   {}", s(&h["pre"]));
        println!("post hook:  {}", s(&h["post"]));
        if let Some(t) = h["timeout_secs"].as_u64() {
            println!("hook limit: {t} s");
        }
    }
}

fn print_targets(v: &Value) {
    let mut t = Table::new(&[
        "SITE",
        "KEEPS",
        "LAST GROUP",
        "AGE (RPO)",
        "LAST SENT",
        "RATE",
        "TOTAL SENT",
        "FAILURES",
        "LAST ERROR",
    ])
    .right(&[1, 4, 5, 6, 7]);
    for x in v.as_array().into_iter().flatten() {
        let sent = x["last_bytes_sent"].as_u64().unwrap_or(0);
        let ms = x["last_transfer_ms"].as_u64().unwrap_or(0);
        let rate = (sent * 1000)
            .checked_div(ms)
            .map_or("-".into(), |r| format!("{}/s", size(r)));
        t.row(vec![
            s(&x["site"]),
            s(&x["retention"]),
            s(&x["last_group"]),
            x["lag_secs"].as_f64().map_or("never".into(), duration),
            size(sent),
            rate,
            size(x["bytes_sent"].as_u64().unwrap_or(0)),
            s(&x["failures"]),
            s(&x["last_error"]),
        ]);
    }
    if t.is_empty() {
        println!("  no target sites: a snapshot plan");
    } else {
        t.print();
    }
}

/// A run's state in one line.
fn run_line(r: &Value) -> String {
    let run = &r["run"];
    let nodes = run["nodes"].as_object().cloned().unwrap_or_default();
    let done = nodes
        .values()
        .filter(|n| n["state"].get("done").is_some())
        .count();
    let step = run["step"].as_str().unwrap_or("?");
    let what = match step {
        "prepare" => {
            let held = nodes.values().filter(|n| n["state"] == "prepared").count();
            format!("preparing: {held}/{} nodes frozen and holding", nodes.len())
        }
        "snapshot" => format!("snapshot: {done}/{} nodes done", nodes.len()),
        "compensate" => "a node failed: deleting what the others took".into(),
        "prune" => "group recorded; deleting groups past retention".into(),
        "done" => format!("done: group {}", s(&run["group"])),
        "failed" => "failed".into(),
        other => other.into(),
    };
    let mut line = format!("run {}: {what}", s(&run["id"]));
    if let Some(e) = run["error"].as_str() {
        line.push_str(&format!(": {e}"));
    }
    line
}

/// A run's detail: a summary line, then one row per object and volume.
fn print_run_detail(d: &Value) {
    let rep = &d["report"];
    let took = rep["duration_secs"]
        .as_f64()
        .map_or(String::new(), |t| format!(" in {}", duration(t)));
    println!(
        "{}{took}, {} read",
        run_line(d),
        size(rep["bytes_read"].as_u64().unwrap_or(0))
    );
    let mut t = Table::new(&[
        "OBJECT",
        "STATUS",
        "NODE/VOLUME",
        "READ",
        "SNAPSHOT / ERROR",
    ])
    .right(&[3]);
    for o in rep["objects"].as_array().into_iter().flatten() {
        for v in o["volumes"].as_array().into_iter().flatten() {
            let what = v["error"]
                .as_str()
                .or_else(|| v["snapshot"]["snapshot"].as_str())
                .unwrap_or("")
                .to_string();
            t.row(vec![
                s(&o["name"]),
                s(&v["status"]),
                format!("{}/{}", s(&v["node"]), s(&v["volume"])),
                v["snapshot"]["bytes_read"]
                    .as_u64()
                    .map_or("-".into(), size),
                what,
            ]);
        }
    }
    t.print();
}

fn print_runs(v: &Value) {
    let mut t =
        Table::new(&["RUN", "TRIGGER", "STARTED", "DURATION", "READ", "RESULT"]).right(&[3, 4]);
    for r in v.as_array().into_iter().flatten() {
        let rep = ferry_report(r);
        let step = r["run"]["step"].as_str().unwrap_or("?");
        let result = match (step, r["run"]["error"].as_str()) {
            ("done", _) => format!("done: group {}", s(&r["run"]["group"])),
            (_, Some(e)) => format!("{step}: {e}"),
            (other, None) => format!("{other} (in progress)"),
        };
        t.row(vec![
            s(&r["run"]["id"]),
            s(&r["trigger"]),
            when(&r["created"]),
            rep.0.map_or("-".into(), duration),
            size(rep.1),
            result,
        ]);
    }
    if t.is_empty() {
        println!("no runs yet");
    } else {
        t.print();
    }
}

/// (duration, bytes read) of a run record, as its report computes them.
fn ferry_report(r: &Value) -> (Option<f64>, u64) {
    let start = r["created"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let end = r["run"]["finished"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let secs = match (start, end) {
        (Some(a), Some(b)) => {
            Some((b.as_millisecond() - a.as_millisecond()).max(0) as f64 / 1000.0)
        }
        _ => None,
    };
    let bytes = r["run"]["nodes"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .flat_map(|n| {
            n["state"]["done"]["snapshots"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|s| s["bytes_read"].as_u64())
        .sum();
    (secs, bytes)
}

fn print_groups(v: &Value) {
    let mut t = Table::new(&["GROUP", "TAKEN", "SNAPSHOTS", "VOLUMES"]).right(&[2]);
    for g in v.as_array().into_iter().flatten() {
        let snaps = g["snapshots"].as_array().cloned().unwrap_or_default();
        let vols: Vec<String> = snaps
            .iter()
            .map(|pair| format!("{}/{}", s(&pair[0]), s(&pair[1]["volume"])))
            .collect();
        t.row(vec![
            s(&g["group"]),
            when(&g["created"]),
            snaps.len().to_string(),
            vols.join(", "),
        ]);
    }
    if t.is_empty() {
        println!("no groups kept (a run takes one: ferry plans run NAME --wait)");
    } else {
        t.print();
    }
}

/// A rollback's state in one line.
pub fn job_line(r: &Value) -> String {
    let vols: Vec<&Value> = r["volumes"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .flat_map(|v| v.as_object().into_iter().flat_map(|m| m.values()))
        .collect();
    let done = vols.iter().filter(|v| **v == "done").count();
    let failed: Vec<String> = vols
        .iter()
        .filter_map(|v| v["failed"]["message"].as_str().map(String::from))
        .collect();
    let what = if r["action"] == "delete" {
        "removal"
    } else {
        "rollback"
    };
    let mut line = format!(
        "{what} {} to group {}: {} ({done}/{} volumes done)",
        s(&r["id"]),
        s(&r["group"]),
        s(&r["step"]),
        vols.len()
    );
    if !failed.is_empty() {
        line.push_str(&format!(": {}", failed.join("; ")));
    }
    line
}

/// What a run's detail shows while it is followed.
fn run_seen(d: &Value) -> Seen {
    let step = d["run"]["step"].as_str().unwrap_or("");
    let over = step == "done" || step == "failed";
    let read = d["report"]["bytes_read"].as_u64().unwrap_or(0);
    let (done, total) = match d["progress"].as_object() {
        Some(p) => (
            read + p["done_bytes"].as_u64().unwrap_or(0),
            Some(read + p["total_bytes"].as_u64().unwrap_or(0)),
        ),
        None => (read, over.then_some(read)),
    };
    Seen {
        line: run_line(d),
        done_bytes: done,
        total_bytes: total,
        over,
    }
}

/// What a rollback shows while it is followed.
fn rollback_seen(r: &Value) -> Seen {
    let (done, total) = match r["progress"].as_object() {
        Some(p) => (
            p["done_bytes"].as_u64().unwrap_or(0),
            p["total_bytes"].as_u64(),
        ),
        None => (0, None),
    };
    Seen {
        line: job_line(r),
        done_bytes: done,
        total_bytes: total,
        over: r["step"] != "running",
    }
}

/// Follows what `path` shows until it is over; returns its last state.
pub(crate) async fn follow(
    api: &Api,
    path: &str,
    seen: fn(&Value) -> Seen,
    json: bool,
) -> anyhow::Result<Value> {
    let mut f = Follow::new(json);
    loop {
        let v = api.get(path).await?;
        let now = seen(&v);
        f.show(&now);
        if now.over {
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub async fn run(api: &Api, cmd: &Cmd, json: bool) -> anyhow::Result<()> {
    let get =
        |path: String, human: fn(&Value)| async move { emit(json, &api.get(&path).await?, human) };
    let list =
        |path: String, human: fn(&Value)| async move { emit(json, &api.list(&path).await?, human) };
    match cmd {
        Cmd::List => list("/v1/plans".into(), print_list).await,
        Cmd::Get { name } => {
            let n = checked("plan", name)?;
            let mut p = api.get(&format!("/v1/plans/{n}")).await?;
            if p["spec"]["targets"]
                .as_array()
                .is_some_and(|t| !t.is_empty())
            {
                p["targets_status"] = api.get(&format!("/v1/plans/{n}/targets")).await?;
            }
            emit(json, &p, print_one)
        }
        Cmd::Create { file } => create(api, file, json).await,
        Cmd::Update { file } => update(api, file, json).await,
        Cmd::Delete {
            name,
            keep_groups,
            delete_groups,
            yes,
            release,
        } => {
            delete(
                api,
                name,
                (*keep_groups, *delete_groups, *release),
                *yes,
                json,
            )
            .await
        }
        Cmd::Targets { name } => {
            let n = checked("plan", name)?;
            emit(
                json,
                &api.get(&format!("/v1/plans/{n}/targets")).await?,
                print_targets,
            )
        }
        Cmd::Pause { name } => pause(api, name, "pause", json).await,
        Cmd::Resume { name } => pause(api, name, "resume", json).await,
        Cmd::Run { name, wait } => run_now(api, name, *wait, json).await,
        Cmd::Runs { name } => {
            list(
                format!("/v1/plans/{}/runs", checked("plan", name)?),
                print_runs,
            )
            .await
        }
        Cmd::RunShow { name, run } => {
            let path = format!(
                "/v1/plans/{}/runs/{}",
                checked("plan", name)?,
                checked("run", run)?
            );
            get(path, print_run_detail).await
        }
        Cmd::Groups { name } => {
            list(
                format!("/v1/plans/{}/groups", checked("plan", name)?),
                print_groups,
            )
            .await
        }
        Cmd::Rollback {
            name,
            group,
            objects,
            wait,
            yes,
        } => rollback(api, name, group, objects, (*wait, *yes), json).await,
        Cmd::Rebuild {
            name,
            group,
            objects,
            suffix,
            names,
            wait,
        } => {
            let naming = (suffix.as_deref(), names.as_deref());
            crate::recovery::rebuild(api, name, group, objects, naming, *wait, json).await
        }
        Cmd::Drill {
            name,
            group,
            check,
            timeout,
            wait,
        } => {
            let check = (check.as_deref(), *timeout);
            crate::recovery::drill(api, name, group.as_deref(), check, *wait, json).await
        }
        Cmd::Verify { name, group, wait } => {
            crate::recovery::verify(api, name, group, *wait, json).await
        }
        Cmd::Rebuilds { name } | Cmd::Drills { name } | Cmd::Verifications { name } => {
            let what = match cmd {
                Cmd::Rebuilds { .. } => "rebuilds",
                Cmd::Drills { .. } => "drills",
                _ => "verifications",
            };
            let path = format!("/v1/plans/{}/{what}", checked("plan", name)?);
            list(path, crate::recovery::print_list).await
        }
    }
}

async fn create(api: &Api, file: &Path, json: bool) -> anyhow::Result<()> {
    let (body, _) = read_json_file(file)?;
    let v = api.call("POST", "/v1/plans", Some(body)).await?;
    emit(json, &v, |v| {
        println!(
            "created plan {} ({}; next run {})",
            s(&v["spec"]["name"]),
            state(v),
            when(&v["next_run"])
        )
    })
}

async fn update(api: &Api, file: &Path, json: bool) -> anyhow::Result<()> {
    let (body, name) = read_json_file(file)?;
    let name = name.ok_or_else(|| {
        Coded::new(
            "invalid_file",
            format!("{}: the plan has no \"name\"", file.display()),
        )
    })?;
    let path = format!("/v1/plans/{}", checked("plan", &name)?);
    let v = api.call("PUT", &path, Some(body)).await?;
    emit(json, &v, |v| {
        println!(
            "updated plan {name} ({}; next run {})",
            state(v),
            when(&v["next_run"])
        )
    })
}

/// Deletes a plan; `(keep, delete)` say what becomes of its groups (deleting them asks).
async fn delete(
    api: &Api,
    name: &str,
    (keep, delete, release): (bool, bool, bool),
    yes: bool,
    json: bool,
) -> anyhow::Result<()> {
    let name = checked("plan", name)?;
    let (q, fate) = if keep {
        ("?groups=keep", "; its groups are kept (ferry orphans list)")
    } else if delete {
        confirm(
            &format!("Delete plan {name} and every snapshot of its groups?"),
            yes,
        )?;
        ("?groups=delete", "; its groups are being deleted")
    } else {
        ("", "")
    };
    let q = match (release, q.is_empty()) {
        (false, _) => q.to_string(),
        (true, true) => "?release=true".to_string(),
        (true, false) => format!("{q}&release=true"),
    };
    api.call("DELETE", &format!("/v1/plans/{name}{q}"), None)
        .await?;
    emit(json, &json!({ "deleted": name }), |_| {
        println!("deleted plan {name}{fate}")
    })
}

/// `verb`: pause or resume.
async fn pause(api: &Api, name: &str, verb: &str, json: bool) -> anyhow::Result<()> {
    let path = format!("/v1/plans/{}/{verb}", checked("plan", name)?);
    let v = api.call("POST", &path, None).await?;
    emit(json, &v, |v| {
        println!(
            "plan {name} is {} (next run {})",
            state(v),
            when(&v["next_run"])
        )
    })
}

/// Starts a run; with `wait`, follows it and shows it per object and volume.
async fn run_now(api: &Api, name: &str, wait: bool, json: bool) -> anyhow::Result<()> {
    let name = checked("plan", name)?;
    let r = api
        .call("POST", &format!("/v1/plans/{name}/run"), None)
        .await?;
    let id = s(&r["run"]["id"]);
    if !wait {
        return emit(json, &r, |_| {
            println!(
                "started run {id} of plan {name} (ferry plans run-show {name} {id} follows it)"
            )
        });
    }
    let detail = follow(api, &format!("/v1/plans/{name}/runs/{id}"), run_seen, json).await?;
    if detail["run"]["step"] == "done" {
        return emit(json, &detail, print_run_detail);
    }
    failed(json, detail, "run_failed", run_line, print_run_detail)
}

/// Rolls back to `group` after confirming (`yes` skips); with `wait`, follows it.
async fn rollback(
    api: &Api,
    name: &str,
    group: &str,
    objects: &[String],
    (wait, yes): (bool, bool),
    json: bool,
) -> anyhow::Result<()> {
    let name = checked("plan", name)?;
    let group = checked("group", group)?;
    let which = if objects.is_empty() {
        "all its objects".to_string()
    } else {
        objects.join(", ")
    };
    confirm(
        &format!(
            "Roll plan {name}'s {which} back to group {group}? What they hold now is replaced."
        ),
        yes,
    )?;
    let mut body = json!({ "group": group });
    if !objects.is_empty() {
        body["objects"] = json!(objects);
    }
    let r = api
        .post(&format!("/v1/plans/{name}/rollbacks"), &body)
        .await?;
    let id = s(&r["id"]);
    if !wait {
        return emit(json, &r, |r| println!("started {}", job_line(r)));
    }
    let path = format!("/v1/plans/{name}/rollbacks/{id}");
    let end = follow(api, &path, rollback_seen, json).await?;
    if end["step"] == "done" {
        return emit(json, &end, |e| println!("{}", job_line(e)));
    }
    failed(json, end, "rollback_failed", job_line, |e| {
        println!("{}", job_line(e))
    })
}

/// A followed run or rollback that failed: shown as usual, then an error with `code`. Under
/// `--json` one object: `v` with the error in it, as `error`.
pub(crate) fn failed(
    json: bool,
    mut v: Value,
    code: &str,
    line: fn(&Value) -> String,
    human: impl FnOnce(&Value),
) -> anyhow::Result<()> {
    let mut e = Coded::new(code, line(&v));
    if json {
        v["error"] = json!({ "code": code, "message": e.message });
        e.printed = true;
    }
    emit(json, &v, human)?;
    bail!(e)
}
