//! `ferry-bench longlink`: a full replication through the test harness's UDP relay
//! (`ferry_tests::LossyRelay`, the stand-in for netem this kernel lacks), at 0 and 100 ms
//! round trip, without loss and at 5% loss each way, against the same transfer straight over
//! loopback. Every case starts from an empty receiver (a fresh pair of agents), so nothing is
//! found locally; the windows are the agents' defaults unless `--windows` says otherwise.
//! The "known peer" cases first send another image of the same size through the same relay,
//! untimed, as last night's transfer to that peer: the timed connection then starts at the
//! window that transfer measured (`net.learned_window_max`).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use ferry_tests::LossyRelay;
use ferry_wire::units::format_size;
use serde::Serialize;

use crate::median;
use crate::replication::{settle, stage, timed, Agents, Caches};

#[derive(Debug, Clone, Serialize)]
struct Case {
    name: String,
    rtt_ms: u64,
    loss: f64,
    runs: usize,
    wall_s: f64,
    wall_min_s: f64,
    wall_max_s: f64,
    sent_bytes: u64,
    /// The congestion window the timed connection started with (median), bytes.
    start_window: u64,
    /// Medians of the phases of `replicate --json`, seconds.
    parts: std::collections::BTreeMap<String, f64>,
}

/// `windows`: `[net]` lines for both agents (e.g. stream_window = "16MiB"), or empty.
pub fn run(dir: &Path, out: &Path, size: u64, runs: usize, seed: u64, windows: &str) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let work = dir.join("bench-longlink");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let image = work.join("image");
    std::fs::File::create(&image)?.set_len(size)?;
    crate::generate(&image, size, seed, 4096)?;
    // Last night's transfer of the known-peer cases: other data, so none of it is found.
    let earlier = work.join("earlier");
    std::fs::File::create(&earlier)?.set_len(size)?;
    crate::generate(&earlier, size, seed ^ 0x5eed, 4096)?;
    // (name, relay (round trip ms, loss), known peer)
    type Setup = (&'static str, Option<(u64, f64)>, bool);
    let cases: [Setup; 7] = [
        ("loopback", None, false),
        ("relay, 0 ms", Some((0, 0.0)), false),
        ("relay, 100 ms RTT", Some((100, 0.0)), false),
        ("relay, 100 ms RTT, known peer", Some((100, 0.0)), true),
        ("relay, 100 ms RTT, 5% loss", Some((100, 0.05)), false),
        (
            "relay, 100 ms RTT, 5% loss, known peer",
            Some((100, 0.05)),
            true,
        ),
        ("relay, 0 ms, 5% loss", Some((0, 0.05)), false),
    ];
    type Run = (f64, u64, u64, std::collections::BTreeMap<String, f64>);
    let mut walls: Vec<Vec<Run>> = vec![Vec::new(); cases.len()];
    for run in 0..runs {
        for (k, (name, relay, known)) in cases.iter().enumerate() {
            let d = work.join(format!("case-{k}"));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d)?;
            let ag = Agents::start(&d, windows)?;
            // Volume `name` at the sender holding `image`, and its snapshot s1.
            let snapshot_of = |name: &str, image: &Path| -> Result<()> {
                ag.json(
                    false,
                    &["volume", "create", name, "--size", &size.to_string()],
                )?;
                let vol = ag.json(false, &["volume", "path", name])?["path"]
                    .as_str()
                    .map(std::path::PathBuf::from)
                    .unwrap_or_default();
                stage(image, &vol)?;
                ag.json(false, &["snapshot", "create", name, "s1"])?;
                Ok(())
            };
            snapshot_of("v", &image)?;
            let relayed = relay.map(|(rtt, loss)| {
                LossyRelay::start(
                    ag.addr.parse().expect("agent address"),
                    loss,
                    Duration::from_millis(rtt / 2),
                    seed + run as u64,
                )
            });
            let to = relayed
                .as_ref()
                .map_or(ag.addr.clone(), |r| r.addr.to_string());
            if *known {
                snapshot_of("earlier", &earlier)?;
                ag.json(false, &["replicate", "earlier", "s1", "--to", &to])?;
            }
            settle(Caches::Warm)?;
            let (wall, _, out) = timed(&mut ag.cmd(
                false,
                &["replicate", "v", "s1", "--to", &to, "--retries", "0"],
            )?)?;
            let r: serde_json::Value = serde_json::from_str(&out)?;
            let sent = r["sent_bytes"].as_u64().unwrap_or(0);
            let parts = crate::replication::timings(&r);
            let path = &r["path"];
            let start = path["start_window"].as_u64().unwrap_or(0);
            eprintln!(
                "run {}: {name}: {wall:.2} s ({}; started at {}, lost {} of {} datagrams, {} congestion events; at the end rtt {} ms, window {})",
                run + 1,
                format_size(sent),
                format_size(start),
                path["lost_packets"],
                path["sent_packets"],
                path["congestion_events"],
                path["rtt_ms"].as_f64().map_or("?".into(), |r| format!("{r:.1}")),
                format_size(path["cwnd"].as_u64().unwrap_or(0)),
            );
            walls[k].push((wall, sent, start, parts));
            drop(relayed);
            drop(ag);
            std::fs::remove_dir_all(&d)?;
        }
    }
    let rows: Vec<Case> = cases
        .iter()
        .zip(walls)
        .map(|((name, relay, _), v)| {
            let w: Vec<f64> = v.iter().map(|x| x.0).collect();
            Case {
                name: name.to_string(),
                rtt_ms: relay.map_or(0, |r| r.0),
                loss: relay.map_or(0.0, |r| r.1),
                runs: v.len(),
                wall_s: median(w.clone()),
                wall_min_s: w.iter().copied().fold(f64::INFINITY, f64::min),
                wall_max_s: w.iter().copied().fold(0.0, f64::max),
                sent_bytes: median(v.iter().map(|x| x.1 as f64).collect()) as u64,
                start_window: median(v.iter().map(|x| x.2 as f64).collect()) as u64,
                parts: v[0]
                    .3
                    .keys()
                    .map(|k| {
                        let m = median(v.iter().filter_map(|x| x.3.get(k).copied()).collect());
                        (k.clone(), m)
                    })
                    .collect(),
            }
        })
        .collect();
    let _ = std::fs::remove_dir_all(&work);
    let md = report(size, runs, windows, &rows)?;
    std::fs::write(out.join("report.md"), &md)?;
    let json =
        serde_json::json!({ "image_size": size, "runs": runs, "windows": windows, "cases": rows });
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&json)?)?;
    print!("{md}");
    Ok(())
}

fn report(size: u64, runs: usize, windows: &str, rows: &[Case]) -> Result<String> {
    use std::fmt::Write as _;
    let mut md = String::new();
    writeln!(md, "# ferry long-link benchmark\n")?;
    writeln!(
        md,
        "Full replication of a {} VM-like image into an empty receiver, {runs} runs, medians (spread). The relay delays each datagram by half the round trip each way and drops the loss share each way; it runs on this machine too (one thread, moving datagrams in GRO/GSO batches as QUIC does). Windows: {}.\n",
        format_size(size),
        if windows.is_empty() {
            let w = ferry_agent::net::Windows::default();
            format!(
                "the defaults ({} MiB per stream, {} MiB per connection, up to {} streams)",
                w.stream >> 20,
                w.connection >> 20,
                ferry_agent::net::MAX_DATA_STREAMS
            )
        } else {
            windows.to_string()
        }
    )?;
    writeln!(
        md,
        "| case | wall s | spread | MB/s | sent | start window |\n|---|---:|---|---:|---:|---:|"
    )?;
    for r in rows {
        writeln!(
            md,
            "| {} | {:.2} | {:.2}-{:.2} | {:.0} | {} | {} |",
            r.name,
            r.wall_s,
            r.wall_min_s,
            r.wall_max_s,
            r.sent_bytes as f64 / r.wall_s.max(1e-9) / 1e6,
            format_size(r.sent_bytes),
            format_size(r.start_window)
        )?;
    }
    let speed = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .map(|r| r.sent_bytes as f64 / r.wall_s.max(1e-9))
    };
    if let (Some(lo), Some(relay0)) = (speed("loopback"), speed("relay, 0 ms")) {
        writeln!(md)?;
        for (case, goal) in [
            ("relay, 100 ms RTT", " (goal >= 0.7x)"),
            ("relay, 100 ms RTT, known peer", " (goal >= 0.7x)"),
            ("relay, 100 ms RTT, 5% loss", ""),
            ("relay, 100 ms RTT, 5% loss, known peer", ""),
        ] {
            if let Some(s) = speed(case) {
                writeln!(
                    md,
                    "- {} / loopback: **{:.2}x**{goal}; / the relay at 0 ms (the relay's own ceiling here): **{:.2}x**",
                    case.trim_start_matches("relay, "),
                    s / lo,
                    s / relay0
                )?;
            }
        }
    }
    // Where the time goes: the phases that wait on round trips, and the data.
    let phases = [
        ("connect", "replicate.connect"),
        ("begin", "replicate.begin"),
        ("offers and data", "replicate.transfer"),
        ("commit", "replicate.commit"),
    ];
    writeln!(md, "\n| case | {} |", phases.map(|p| p.0).join(" | "))?;
    writeln!(md, "|---|{}", "---:|".repeat(phases.len()))?;
    for r in rows {
        let cells: Vec<String> = phases
            .iter()
            .map(|(_, k)| r.parts.get(*k).map_or("-".into(), |s| format!("{s:.2}")))
            .collect();
        writeln!(md, "| {} | {} |", r.name, cells.join(" | "))?;
    }
    Ok(md)
}
