//! The controller under load: many plans with mixed schedules whose first slots all fall in
//! one window, on the embedded store and on a real etcd. Measures scheduler drift (how long
//! after its slot each run record is made) and API latency (a GET of a random plan at a fixed
//! request rate, timed from when each request was due, so a stall counts in full) while the
//! runs fire. Writes `report.md` and `report.json`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use ferry_tests::controller::{Controller, READER};
use ferry_tests::Etcd;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;

#[derive(Debug, Serialize)]
struct StoreRow {
    store: &'static str,
    plans: usize,
    runs_fired: usize,
    drift_p50_ms: f64,
    drift_p99_ms: f64,
    drift_max_ms: f64,
    api_rate_per_s: u32,
    api_requests: usize,
    api_errors: usize,
    api_p50_ms: f64,
    api_p99_ms: f64,
    api_max_ms: f64,
    create_plans_s: f64,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn one_store(name: &'static str, store_cfg: &str, plans: usize, rate: u32) -> Result<StoreRow> {
    let c = Controller::start(store_cfg);
    let obj = json!({"name": "vol", "kind": {"type": "virtual_volume",
        "volume": {"node": "n1", "volume": "v"}}});
    if c.admin("POST", "/v1/objects?allow_missing=true", Some(obj))
        .0
        != 201
    {
        bail!("cannot create the object");
    }
    // First slots spread over a 30 s window starting 20 s after the plans are made (their
    // creation takes a few seconds); every kind of schedule, in several zones.
    let kinds = ["hourly", "daily", "weekly", "monthly"];
    let zones = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"];
    let t_create = Instant::now();
    let base = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(20);
    let window_ms = 30_000i64;
    for i in 0..plans {
        let first = base + jiff::SignedDuration::from_millis(window_ms * i as i64 / plans as i64);
        let tz = zones[i % zones.len()];
        let tzz = jiff::tz::TimeZone::get(tz)?;
        let start = first
            .to_zoned(tzz)
            .datetime()
            .strftime("%Y-%m-%dT%H:%M:%S.%f")
            .to_string();
        let plan = json!({"name": format!("plan-{i:05}"), "objects": ["vol"], "retention": 7,
            "schedule": {"every": kinds[i % kinds.len()], "start": start, "timezone": tz}});
        let (code, v) = c.admin("POST", "/v1/plans", Some(plan));
        if code != 201 {
            bail!("plan {i}: {code} {v}");
        }
    }
    let create_plans_s = t_create.elapsed().as_secs_f64();
    let until = base + jiff::SignedDuration::from_millis(window_ms + 5000);
    if jiff::Timestamp::now() >= base {
        eprintln!("warning: creating the plans took {create_plans_s:.1} s, past the first slots");
    }
    // Fixed-rate GETs until the window is over.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let t0 = Instant::now();
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut k = 0u32;
    while jiff::Timestamp::now() < until {
        let due = t0 + interval * k;
        k += 1;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let i = rng.gen_range(0..plans);
        let (code, _) = c.call("GET", &format!("/v1/plans/plan-{i:05}"), Some(READER), None);
        lat.push(due.elapsed().as_secs_f64() * 1e3);
        if code != 200 {
            errors += 1;
        }
    }
    let runs = match c.list("/v1/runs?limit=1000") {
        Ok(r) => r,
        Err((code, v)) => bail!("list runs: {code} {v}"),
    };
    let mut drift: Vec<f64> = runs
        .iter()
        .filter(|r| r["trigger"] == "schedule")
        .filter_map(|r| {
            let slot: jiff::Timestamp = r["slot"].as_str()?.parse().ok()?;
            let made: jiff::Timestamp = r["created"].as_str()?.parse().ok()?;
            Some((made.as_millisecond() - slot.as_millisecond()) as f64)
        })
        .collect();
    drift.sort_by(f64::total_cmp);
    lat.sort_by(f64::total_cmp);
    let row = StoreRow {
        store: name,
        plans,
        runs_fired: drift.len(),
        drift_p50_ms: pct(&drift, 0.5),
        drift_p99_ms: pct(&drift, 0.99),
        drift_max_ms: drift.last().copied().unwrap_or(f64::NAN),
        api_rate_per_s: rate,
        api_requests: lat.len(),
        api_errors: errors,
        api_p50_ms: pct(&lat, 0.5),
        api_p99_ms: pct(&lat, 0.99),
        api_max_ms: lat.last().copied().unwrap_or(f64::NAN),
        create_plans_s,
    };
    eprintln!("{row:?}");
    Ok(row)
}

/// Runs the load on both stores and writes the report.
pub fn run(out: &Path, plans: usize, rate: u32) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let dir = tempfile::tempdir()?;
    let mut rows = Vec::new();
    let embedded = format!(
        "[store]\nkind = \"embedded\"\npath = \"{}\"",
        dir.path().join("state.redb").display()
    );
    rows.push(one_store("embedded", &embedded, plans, rate)?);
    let etcd = Etcd::start().context("etcd (Debian package etcd-server) is needed")?;
    let etcd_cfg = format!(
        "[store]\nkind = \"etcd\"\nendpoints = [\"{}\"]",
        etcd.endpoint
    );
    rows.push(one_store("etcd", &etcd_cfg, plans, rate)?);
    use std::fmt::Write as _;
    let mut md = String::new();
    writeln!(md, "# ferry controller load\n")?;
    writeln!(md, "{plans} plans (hourly, daily, weekly, monthly; four time zones) whose first slots fall within 30 s; while they fire, GET /v1/plans/NAME at {rate} requests/s, latency timed from when each request was due. One controller on this machine; etcd 3.4 on a tmpfs data dir.\n")?;
    writeln!(md, "| store | runs fired | drift p50 ms | drift p99 ms | drift max ms | API p50 ms | API p99 ms | API max ms | errors | plans created in s |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for r in &rows {
        writeln!(
            md,
            "| {} | {}/{} | {:.1} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {} | {:.1} |",
            r.store,
            r.runs_fired,
            r.plans,
            r.drift_p50_ms,
            r.drift_p99_ms,
            r.drift_max_ms,
            r.api_p50_ms,
            r.api_p99_ms,
            r.api_max_ms,
            r.api_errors,
            r.create_plans_s
        )?;
    }
    std::fs::write(out.join("report.md"), &md)?;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_vec_pretty(&json!({ "rows": rows }))?,
    )?;
    print!("{md}");
    Ok(())
}
