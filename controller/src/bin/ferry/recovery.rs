//! `ferry plans rebuild|drill|verify` and their lists: recovery from kept groups at a target
//! site (rebuilds and drills of a foreign plan's mirror groups) and verification of any
//! plan's groups.

use std::path::Path;

use serde_json::{json, Value};

use crate::client::{checked, read_json_file, Api};
use crate::output::{duration, emit, s, size, when, Seen, Table};
use crate::plans::{failed, follow};

/// An outcome (`"done"`, `{"failed": {"message"}}`, `{"skipped": {"why"}}`) in a word or
/// two.
fn outcome(v: &Value) -> String {
    if let Some(w) = v.as_str() {
        return w.to_string();
    }
    if let Some(m) = v["failed"]["message"].as_str() {
        return format!("FAILED: {m}");
    }
    if let Some(w) = v["skipped"]["why"].as_str() {
        return format!("skipped ({w})");
    }
    "?".into()
}

fn kind_word(r: &Value) -> &'static str {
    match r["kind"].as_str() {
        Some("rebuild") => "rebuild",
        Some("drill") => "drill",
        _ => "verification",
    }
}

/// A recovery in one line.
pub fn line(r: &Value) -> String {
    let vols = r["volumes"].as_array().cloned().unwrap_or_default();
    let phase = r["phase"].as_str().unwrap_or("?");
    let what = match phase {
        "done" if r["kind"] == "drill" => "passed".to_string(),
        "done" if r["kind"] == "verify" => "every block matches".to_string(),
        "done" => {
            let objects = r["objects"].as_array().map_or(0, Vec::len);
            format!("done: {objects} objects, {} volumes made", vols.len())
        }
        "failed" => "FAILED".to_string(),
        "clone" => {
            let n = vols.iter().filter(|v| v["clone"] != "pending").count();
            format!("cloning {n}/{} volumes", vols.len())
        }
        "verify" => {
            let n = vols.iter().filter(|v| v["verify"] != "pending").count();
            format!("verifying {n}/{} volumes", vols.len())
        }
        "check" => "running the checks".to_string(),
        "record" => "recording the objects".to_string(),
        "cleanup" => "deleting the volumes it made".to_string(),
        other => other.to_string(),
    };
    let mut out = format!(
        "{} {} of group {}: {what}",
        kind_word(r),
        s(&r["id"]),
        s(&r["group"])
    );
    if let Some(e) = r["error"].as_str() {
        out.push_str(&format!(": {e}"));
    }
    out
}

/// A recovery whole: its line, its timings, each volume and each object.
pub fn print_detail(r: &Value) {
    println!("{}", line(r));
    if let Some(t) = r["timings"].as_object().filter(|t| !t.is_empty()) {
        let parts: Vec<String> = ["clone", "verify", "check", "record", "cleanup"]
            .iter()
            .filter_map(|k| {
                let ms = t.get(*k)?.as_f64()?;
                Some(format!("{k} {}", duration(ms / 1e3)))
            })
            .collect();
        println!("took: {}", parts.join(", "));
    }
    if let Some(w) = r["check_skipped"].as_str() {
        println!("check not run: {w}");
    }
    let mut t = Table::new(&["NODE", "FROM", "MADE", "CLONE", "VERIFY", "READ"]).right(&[5]);
    for v in r["volumes"].as_array().into_iter().flatten() {
        t.row(vec![
            s(&v["node"]),
            format!("{}@{}", s(&v["volume"]), s(&r["group"])),
            s(&v["new_volume"]),
            if v["new_volume"].is_null() {
                "-".into()
            } else {
                outcome(&v["clone"])
            },
            outcome(&v["verify"]),
            v["bytes_read"]
                .as_u64()
                .filter(|b| *b > 0)
                .map_or("-".into(), size),
        ]);
    }
    println!();
    t.print();
    let mut o = Table::new(&["OBJECT", "MADE AS", "CHECK", "ON", "OUTPUT"]);
    for x in r["objects"].as_array().into_iter().flatten() {
        let made = if r["kind"] == "drill" {
            "scratch".to_string()
        } else {
            s(&x["object"]["name"])
        };
        let out = x["check_output"]
            .as_str()
            .map(|t| t.lines().last().unwrap_or("").to_string())
            .unwrap_or_default();
        o.row(vec![
            s(&x["name"]),
            made,
            outcome(&x["check"]),
            s(&x["check_node"]),
            out,
        ]);
    }
    if !o.is_empty() {
        println!();
        o.print();
    }
}

/// Recoveries, a line each.
pub fn print_list(v: &Value) {
    let mut t = Table::new(&["ID", "TRIGGER", "GROUP", "STARTED", "TOOK", "RESULT"]);
    for r in v.as_array().into_iter().flatten() {
        let took = match (
            r["created"]
                .as_str()
                .and_then(|x| x.parse::<jiff::Timestamp>().ok()),
            r["finished"]
                .as_str()
                .and_then(|x| x.parse::<jiff::Timestamp>().ok()),
        ) {
            (Some(a), Some(b)) => duration((b.as_millisecond() - a.as_millisecond()) as f64 / 1e3),
            _ => "-".into(),
        };
        let result = match (r["phase"].as_str(), r["error"].as_str()) {
            (Some("done"), _) => "passed".to_string(),
            (Some("failed"), Some(e)) => format!("FAILED: {e}"),
            (Some(p), _) => format!("{p}..."),
            _ => "?".into(),
        };
        t.row(vec![
            s(&r["id"]),
            s(&r["trigger"]),
            s(&r["group"]),
            when(&r["created"]),
            took,
            result,
        ]);
    }
    if t.is_empty() {
        println!("none yet");
    } else {
        t.print();
    }
}

/// What a recovery shows while it is followed.
fn seen(r: &Value) -> Seen {
    let (done, total) = match r["progress"].as_object() {
        Some(p) => (
            p["done_bytes"].as_u64().unwrap_or(0),
            p["total_bytes"].as_u64(),
        ),
        None => (0, None),
    };
    let phase = r["phase"].as_str().unwrap_or("");
    Seen {
        line: line(r),
        done_bytes: done,
        total_bytes: total,
        over: phase == "done" || phase == "failed",
    }
}

/// Starts a recovery at `path` with `body`; with `wait`, follows it to its end.
async fn start(
    api: &Api,
    plan: &str,
    path: &str,
    body: &Value,
    wait: bool,
    json: bool,
) -> anyhow::Result<()> {
    let r = api.post(path, body).await?;
    let what = kind_word(&r);
    let id = s(&r["id"]);
    let list = format!("/v1/plans/{plan}/{what}s/{id}");
    if !wait {
        return emit(json, &r, |r| {
            println!("started {} (ferry plans {what}s {plan} lists it)", line(r))
        });
    }
    let end = follow(api, &list, seen, json).await?;
    if end["phase"] == "done" {
        return emit(json, &end, print_detail);
    }
    failed(json, end, &format!("{what}_failed"), line, print_detail)
}

/// `ferry plans rebuild`.
pub async fn rebuild(
    api: &Api,
    name: &str,
    group: &str,
    objects: &[String],
    (suffix, names): (Option<&str>, Option<&Path>),
    wait: bool,
    json: bool,
) -> anyhow::Result<()> {
    let name = checked("plan", name)?;
    let mut body = json!({ "group": checked("group", group)? });
    if !objects.is_empty() {
        body["objects"] = json!(objects);
    }
    if let Some(x) = suffix {
        body["suffix"] = json!(x);
    }
    if let Some(f) = names {
        let (raw, _) = read_json_file(f)?;
        body["names"] = serde_json::from_slice(&raw)?;
    }
    let path = format!("/v1/plans/{name}/rebuilds");
    start(api, &name, &path, &body, wait, json).await
}

/// `ferry plans drill`.
pub async fn drill(
    api: &Api,
    name: &str,
    group: Option<&str>,
    (check, timeout): (Option<&str>, Option<u64>),
    wait: bool,
    json: bool,
) -> anyhow::Result<()> {
    let name = checked("plan", name)?;
    let mut body = json!({});
    if let Some(g) = group {
        body["group"] = json!(checked("group", g)?);
    }
    if let Some(c) = check {
        body["check"] = json!(c);
    }
    if let Some(t) = timeout {
        body["timeout_secs"] = json!(t);
    }
    let path = format!("/v1/plans/{name}/drills");
    start(api, &name, &path, &body, wait, json).await
}

/// `ferry plans verify`.
pub async fn verify(
    api: &Api,
    name: &str,
    group: &str,
    wait: bool,
    json: bool,
) -> anyhow::Result<()> {
    let name = checked("plan", name)?;
    let group = checked("group", group)?;
    let path = format!("/v1/plans/{name}/groups/{group}/verify");
    start(api, &name, &path, &json!({}), wait, json).await
}
