//! Request counting and `/metrics` (Prometheus text format).

use super::*;

/// Counts every request by route template (never the raw path: names stay out of labels)
/// and status, with the time it took.
pub(super) async fn track(
    State(s): State<Arc<ApiState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let t0 = std::time::Instant::now();
    let resp = next.run(req).await;
    if let Ok(mut m) = s.requests.lock() {
        let e = m.entry((route, resp.status().as_u16())).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += t0.elapsed().as_secs_f64();
    }
    resp
}

/// Escapes a Prometheus label value.
pub(super) fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format: requests, plans, objects, runs by plan and step, last success, the last run's duration and bytes per plan, store revision", body = String, content_type = "text/plain")))]
/// Prometheus metrics: requests, plans, objects, runs by plan and step, the last successful
/// run per plan, the store's revision.
pub(super) async fn metrics(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    use std::fmt::Write as _;
    auth(&s, &headers, false)?;
    let plans = load_plans(&s.store).await?;
    let objects = load_objects(&s.store).await?;
    let runs = load_runs(&s.store, RUNS).await?;
    let revision = s.store.revision().await?;
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# HELP ferry_http_requests_total HTTP API requests by route and status.\n# TYPE ferry_http_requests_total counter");
    let requests = s.requests.lock().map(|m| m.clone()).unwrap_or_default();
    for ((route, status), (n, _)) in &requests {
        let _ = writeln!(
            w,
            "ferry_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
            label(route)
        );
    }
    let _ = writeln!(w, "# HELP ferry_http_request_seconds_total Time spent serving requests.\n# TYPE ferry_http_request_seconds_total counter");
    for ((route, status), (_, secs)) in &requests {
        let _ = writeln!(
            w,
            "ferry_http_request_seconds_total{{route=\"{}\",status=\"{status}\"}} {secs}",
            label(route)
        );
    }
    let paused = plans.iter().filter(|p| p.paused).count();
    let _ = writeln!(
        w,
        "# HELP ferry_plans Protection plans.\n# TYPE ferry_plans gauge"
    );
    let _ = writeln!(
        w,
        "ferry_plans{{state=\"active\"}} {}\nferry_plans{{state=\"paused\"}} {paused}",
        plans.len() - paused
    );
    let _ = writeln!(w, "# HELP ferry_objects Protected objects in the inventory.\n# TYPE ferry_objects gauge\nferry_objects {}", objects.len());
    let mut by_step: std::collections::BTreeMap<(String, String), u64> = Default::default();
    let mut last_ok: std::collections::BTreeMap<String, i64> = Default::default();
    // plan -> its newest finished run
    let mut newest: std::collections::BTreeMap<String, &crate::state::schema::RunRecord> =
        Default::default();
    for r in &runs {
        if r.run.step.is_final() {
            let e = newest.entry(r.run.plan.to_string()).or_insert(r);
            if r.created > e.created {
                *e = r;
            }
        }
        let step = serde_json::to_value(&r.run.step)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default();
        *by_step
            .entry((r.run.plan.to_string(), step.clone()))
            .or_default() += 1;
        if step == "done" {
            if let Ok(t) = r.created.parse::<jiff::Timestamp>() {
                let e = last_ok.entry(r.run.plan.to_string()).or_insert(0);
                *e = (*e).max(t.as_second());
            }
        }
    }
    let _ = writeln!(
        w,
        "# HELP ferry_runs Runs recorded, by plan and step.\n# TYPE ferry_runs gauge"
    );
    for ((plan, step), n) in &by_step {
        let _ = writeln!(
            w,
            "ferry_runs{{plan=\"{}\",step=\"{}\"}} {n}",
            label(plan),
            label(step)
        );
    }
    let _ = writeln!(w, "# HELP ferry_plan_last_success_timestamp_seconds When the plan's last successful run started.\n# TYPE ferry_plan_last_success_timestamp_seconds gauge");
    for (plan, t) in &last_ok {
        let _ = writeln!(
            w,
            "ferry_plan_last_success_timestamp_seconds{{plan=\"{}\"}} {t}",
            label(plan)
        );
    }
    // (seconds, bytes read) of each plan's newest finished run
    let last_run: std::collections::BTreeMap<&String, (f64, u64)> = newest
        .iter()
        .map(|(plan, r)| {
            let report = r.report();
            (
                plan,
                (report.duration_secs.unwrap_or(0.0), report.bytes_read),
            )
        })
        .collect();
    let _ = writeln!(w, "# HELP ferry_plan_last_run_duration_seconds The newest finished run's duration (record to end), by plan.\n# TYPE ferry_plan_last_run_duration_seconds gauge");
    for (plan, (secs, _)) in &last_run {
        let _ = writeln!(
            w,
            "ferry_plan_last_run_duration_seconds{{plan=\"{}\"}} {secs}",
            label(plan)
        );
    }
    let _ = writeln!(w, "# HELP ferry_plan_last_run_bytes_read Bytes the newest finished run's snapshots read (the changed data), by plan.\n# TYPE ferry_plan_last_run_bytes_read gauge");
    for (plan, (_, bytes)) in &last_run {
        let _ = writeln!(
            w,
            "ferry_plan_last_run_bytes_read{{plan=\"{}\"}} {bytes}",
            label(plan)
        );
    }
    let _ = writeln!(w, "# HELP ferry_store_revision The state store's revision.\n# TYPE ferry_store_revision gauge\nferry_store_revision {revision}");
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response())
}
