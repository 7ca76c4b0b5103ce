//! `ferry status`: the site on one screen, refreshed with --watch.

use std::io::IsTerminal as _;
use std::time::Duration;

use serde_json::Value;

use crate::client::Api;
use crate::output::{ago, duration, emit, red, s, size, when, Table};

#[derive(clap::Args)]
pub struct Args {
    /// Refresh every N seconds (default 2) until interrupted.
    #[arg(long, num_args = 0..=1, default_missing_value = "2", value_name = "SECS")]
    pub watch: Option<u64>,
}

fn print(v: &Value) {
    let mut t = Table::new(&[
        "PLAN",
        "EVERY",
        "LAST RUN",
        "RESULT",
        "LAST SUCCESS",
        "NEWEST GROUP",
        "NOW",
    ]);
    let mut failures = Vec::new();
    let mut late = Vec::new();
    let mut damaged = Vec::new();
    let plans = v["plans"].as_array().cloned().unwrap_or_default();
    for p in &plans {
        let last = &p["last_run"];
        let result = match last["step"].as_str() {
            None => "never run".to_string(),
            Some("done") => format!(
                "done in {}, {} read",
                last["duration_secs"].as_f64().map_or("-".into(), duration),
                size(last["bytes_read"].as_u64().unwrap_or(0))
            ),
            Some("failed") => "FAILED".into(),
            Some("partially_done") => "PARTLY DONE: a target failed".into(),
            Some(step) => format!("{step}..."),
        };
        let newest = match p["newest_group_age_secs"].as_f64() {
            Some(a) => format!("{} ago", duration(a)),
            None => "none".into(),
        };
        let state = if let Some(site) = p["origin"].as_str() {
            format!("mirror of site {site}")
        } else if p["paused"] == true {
            "paused".to_string()
        } else {
            format!("next {}", when(&p["next_run"]))
        };
        if p["rpo_violated"] == true {
            late.push(format!(
                "  {}: the newest mirror group here is {} old, past the RPO of {}",
                s(&p["name"]),
                p["newest_group_age_secs"]
                    .as_f64()
                    .map_or("-".into(), duration),
                p["rpo_secs"].as_f64().map_or("-".into(), duration)
            ));
        }
        for g in p["verification_failures"].as_array().into_iter().flatten() {
            damaged.push(format!(
                "  {}: group {} failed its verification (ferry plans verifications {})",
                s(&p["name"]),
                s(g),
                s(&p["name"])
            ));
        }
        t.row(vec![
            s(&p["name"]),
            s(&p["every"]),
            ago(&last["started"]),
            result,
            ago(&p["last_success"]),
            newest,
            p["in_progress"].as_str().map_or(state, String::from),
        ]);
        if let Some(f) = p["failure"].as_object() {
            let what = if p["origin"].is_string() {
                "drill"
            } else {
                "run"
            };
            failures.push(format!(
                "  {}: {what} {} failed {}: {}",
                s(&p["name"]),
                s(&f["id"]),
                ago(&f["finished"]),
                s(&f["error"])
            ));
        }
    }
    if plans.is_empty() {
        println!("no plans yet: ferry plans create FILE");
    } else {
        t.print();
    }
    let mut tt = Table::new(&[
        "PLAN",
        "TARGET",
        "LAST GROUP THERE",
        "ITS AGE",
        "LAST SENT",
        "FAILURES",
        "LAST ERROR",
    ])
    .right(&[4, 5]);
    for p in &plans {
        for x in p["targets"].as_array().into_iter().flatten() {
            let age = x["lag_secs"].as_f64().map_or("never".into(), duration);
            let rpo = x["rpo_secs"].as_f64().map_or("-".into(), duration);
            let age = if x["rpo_violated"] == true {
                late.push(format!(
                    "  {} at {}: the newest group there is {age} old, past the RPO of {rpo}",
                    s(&p["name"]),
                    s(&x["site"])
                ));
                format!("{age} > {rpo} LATE")
            } else {
                format!("{age} (RPO {rpo})")
            };
            tt.row(vec![
                s(&p["name"]),
                s(&x["site"]),
                s(&x["last_group"]),
                age,
                size(x["last_bytes_sent"].as_u64().unwrap_or(0)),
                s(&x["failures"]),
                s(&x["last_error"]),
            ]);
        }
    }
    if !tt.is_empty() {
        println!();
        tt.print();
    }
    if !late.is_empty() {
        println!("\n{}", red("RPO violated:"));
        for l in late {
            println!("{}", red(&l));
        }
    }
    if !failures.is_empty() {
        println!("\nfailing (no success since):");
        for f in failures {
            println!("{f}");
        }
    }
    if !damaged.is_empty() {
        println!("\n{}", red("damaged groups:"));
        for d in damaged {
            println!("{}", red(&d));
        }
    }
    let agents = v["agents"].as_array().cloned().unwrap_or_default();
    let down: Vec<String> = agents
        .iter()
        .filter(|a| a["status"] != "up")
        .map(|a| s(&a["node"]))
        .collect();
    println!(
        "\nagents: {} up, {} down{}",
        agents.len() - down.len(),
        down.len(),
        if down.is_empty() {
            String::new()
        } else {
            format!(" ({})", down.join(", "))
        }
    );
    let left = v["deleted_plans_with_leftovers"].as_u64().unwrap_or(0);
    if left > 0 {
        println!("deleted plans with kept groups or history: {left} (ferry orphans list)");
    }
}

pub async fn run(api: &Api, args: &Args, json: bool) -> anyhow::Result<()> {
    loop {
        let v = api.get("/v1/status").await?;
        match args.watch {
            None => return emit(json, &v, print),
            Some(secs) => {
                if json {
                    println!("{v}");
                } else {
                    if std::io::stdout().is_terminal() {
                        print!("\x1b[2J\x1b[H"); // clear the screen, home the cursor
                    }
                    println!(
                        "ferry status at {} (every {secs} s; Ctrl-C ends)\n",
                        when(&v["now"])
                    );
                    print(&v);
                }
                tokio::time::sleep(Duration::from_secs(secs.max(1))).await;
            }
        }
    }
}
