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

#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format: requests, plans, objects, runs by plan and step, last success, the last run's duration and bytes per plan, per backup target its last group, lag, bytes and failures, paired sites' reachability, store revision", body = String, content_type = "text/plain")))]
/// Prometheus metrics: requests, plans, objects, runs by plan and step, the last successful
/// run per plan, the newest finished run's duration and bytes, the store's revision.
pub(super) async fn metrics(
    State(s): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    auth(&s, &headers, false)?;
    let _slot = super::page::slot(&s).await?;
    let plans = load_plans(&s.store).await?;
    let objects = load_objects(&s.store).await?;
    let runs = load_runs(&s.store, RUNS).await?;
    let revision = s.store.revision().await?;
    let requests = s.requests.lock().map(|m| m.clone()).unwrap_or_default();
    let mut out = Exposition::default();
    let by_request = |f: fn(&(u64, f64)) -> String| {
        requests
            .iter()
            .map(|((route, status), v)| {
                (
                    vec![("route", route.clone()), ("status", status.to_string())],
                    f(v),
                )
            })
            .collect::<Vec<_>>()
    };
    out.family(
        "ferry_http_requests_total",
        "counter",
        "HTTP API requests by route and status.",
        by_request(|v| v.0.to_string()),
    );
    out.family(
        "ferry_http_request_seconds_total",
        "counter",
        "Time spent serving requests.",
        by_request(|v| v.1.to_string()),
    );
    let paused = plans.iter().filter(|p| p.paused).count();
    out.family(
        "ferry_plans",
        "gauge",
        "Protection plans.",
        vec![
            (
                vec![("state", "active".into())],
                (plans.len() - paused).to_string(),
            ),
            (vec![("state", "paused".into())], paused.to_string()),
        ],
    );
    out.family(
        "ferry_objects",
        "gauge",
        "Protected objects in the inventory.",
        vec![(vec![], objects.len().to_string())],
    );
    // A foreign plan's drills are its runs.
    let mut helds = Vec::new();
    for p in plans.iter().filter(|p| p.origin.is_some()) {
        helds.push((p, super::status::held_by(&s.store, p.id()).await?));
    }
    let mut f = RunFigures::of(&runs);
    for (p, h) in &helds {
        for d in &h.drills {
            let step = if d.succeeded() { "done" } else { "failed" };
            *f.by_step
                .entry((p.spec.name.to_string(), step.to_string()))
                .or_default() += 1;
        }
    }
    let per_plan = |m: &std::collections::BTreeMap<String, String>| {
        m.iter()
            .map(|(plan, v)| (vec![("plan", plan.clone())], v.clone()))
            .collect::<Vec<_>>()
    };
    out.family(
        "ferry_runs",
        "gauge",
        "Runs recorded, by plan and step (a foreign plan's runs are its drills).",
        f.by_step
            .iter()
            .map(|((plan, step), n)| {
                (
                    vec![("plan", plan.clone()), ("step", step.clone())],
                    n.to_string(),
                )
            })
            .collect(),
    );
    out.family(
        "ferry_plan_last_success_timestamp_seconds",
        "gauge",
        "When the plan's last successful run started.",
        per_plan(&f.last_success),
    );
    out.family(
        "ferry_plan_last_run_duration_seconds",
        "gauge",
        "The newest finished run's duration (record to end), by plan.",
        per_plan(&f.last_duration),
    );
    out.family(
        "ferry_plan_last_run_bytes_read",
        "gauge",
        "Bytes the newest finished run's snapshots read (the changed data), by plan.",
        per_plan(&f.last_bytes),
    );
    // Backup plans, per plan and target; paired sites' links.
    let now = jiff::Timestamp::now();
    let mut t_last = Vec::new();
    let mut t_lag = Vec::new();
    let mut t_bytes = Vec::new();
    let mut t_fail = Vec::new();
    for kv in s.store.list(schema::TARGETS).await? {
        let Ok(t) = serde_json::from_slice::<schema::TargetRecord>(&kv.value) else {
            continue;
        };
        let mut parts = kv.key.rsplit('/');
        let (_, id) = (parts.next(), parts.next().unwrap_or_default());
        let Some(plan) = plans.iter().find(|p| p.id().as_str() == id) else {
            continue;
        };
        let labels = vec![
            ("plan", plan.spec.name.to_string()),
            ("site", t.site.to_string()),
        ];
        let created = t
            .last_group_created
            .as_deref()
            .and_then(|c| c.parse::<jiff::Timestamp>().ok());
        if let Some(c) = created {
            t_last.push((labels.clone(), c.as_second().to_string()));
            t_lag.push((
                labels.clone(),
                (now.as_second() - c.as_second()).to_string(),
            ));
        }
        t_bytes.push((labels.clone(), t.bytes_sent.to_string()));
        t_fail.push((labels, t.failures.to_string()));
    }
    out.family(
        "ferry_target_last_group_timestamp_seconds",
        "gauge",
        "When the newest group a target site holds was taken here, by plan and site.",
        t_last,
    );
    out.family(
        "ferry_target_lag_seconds",
        "gauge",
        "Age of the newest group a target site holds (the recovery point it offers), by plan and site.",
        t_lag,
    );
    out.family(
        "ferry_target_bytes_sent_total",
        "counter",
        "Bytes sent to a target site for a plan.",
        t_bytes,
    );
    out.family(
        "ferry_target_failures_total",
        "counter",
        "Runs whose part for a target site failed, by plan and site.",
        t_fail,
    );
    // RPOs, at both ends of every backup plan.
    let checks = crate::daemon::alarms::checks(&s.store, &plans, now).await?;
    let rpo_labels = |c: &crate::daemon::alarms::RpoCheck| {
        vec![
            ("plan", c.plan.to_string()),
            ("site", c.site.to_string()),
            ("role", c.role.to_string()),
        ]
    };
    out.family(
        "ferry_rpo_seconds",
        "gauge",
        "A plan's recovery point objective at a site (role source: a target of this site's plan; target: a foreign plan here).",
        checks
            .iter()
            .map(|c| (rpo_labels(c), c.rpo_secs.to_string()))
            .collect(),
    );
    out.family(
        "ferry_rpo_violated",
        "gauge",
        "1 when the newest group a site holds of a plan is older than the RPO (plus the grace for the transfer under way), else 0.",
        checks
            .iter()
            .map(|c| (rpo_labels(c), u8::from(c.standing.violated).to_string()))
            .collect(),
    );
    out.family(
        "ferry_recovery_point_age_seconds",
        "gauge",
        "Age of the newest group a site holds of a plan.",
        checks
            .iter()
            .filter_map(|c| Some((rpo_labels(c), c.standing.age_secs?.to_string())))
            .collect(),
    );
    // Drills and verifications of the foreign plans here.
    let mut drills = Vec::new();
    let mut drill_last = Vec::new();
    let mut drill_when = Vec::new();
    let mut drill_secs = Vec::new();
    let mut verified = Vec::new();
    for (p, h) in &helds {
        let name = p.spec.name.to_string();
        let (passed, failed) = h.drills.iter().fold((0, 0), |(ok, bad), d| {
            if d.succeeded() {
                (ok + 1, bad)
            } else {
                (ok, bad + 1)
            }
        });
        for (result, n) in [("passed", passed), ("failed", failed)] {
            drills.push((
                vec![("plan", name.clone()), ("result", result.to_string())],
                n.to_string(),
            ));
        }
        if let Some(d) = h.drills.iter().max_by(|a, b| a.created.cmp(&b.created)) {
            let l = vec![("plan", name.clone())];
            drill_last.push((l.clone(), u8::from(d.succeeded()).to_string()));
            let at = |t: &str| t.parse::<jiff::Timestamp>().ok();
            if let Some(end) = d.finished.as_deref().and_then(at) {
                drill_when.push((l.clone(), end.as_second().to_string()));
                if let Some(start) = at(&d.created) {
                    let secs = (end.as_millisecond() - start.as_millisecond()) as f64 / 1e3;
                    drill_secs.push((l, secs.to_string()));
                }
            }
        }
        verified.push((
            vec![("plan", name)],
            h.verification_failures.len().to_string(),
        ));
    }
    out.family(
        "ferry_drills",
        "gauge",
        "Drills recorded (the last 100) of a foreign plan here, by result.",
        drills,
    );
    out.family(
        "ferry_drill_last_passed",
        "gauge",
        "1 when a foreign plan's newest drill passed, 0 when it failed.",
        drill_last,
    );
    out.family(
        "ferry_drill_last_timestamp_seconds",
        "gauge",
        "When a foreign plan's newest drill ended.",
        drill_when,
    );
    out.family(
        "ferry_drill_last_duration_seconds",
        "gauge",
        "How long a foreign plan's newest drill took (rebuild, verify, check, cleanup).",
        drill_secs,
    );
    out.family(
        "ferry_groups_failing_verification",
        "gauge",
        "Kept groups of a foreign plan here whose last verification found them damaged or unreadable.",
        verified,
    );
    out.family(
        "ferry_notifications_waiting",
        "gauge",
        "Notifications not yet taken by every webhook.",
        vec![(
            vec![],
            s.store.list(schema::OUTBOX).await?.len().to_string(),
        )],
    );
    if let Some(sites) = s.sites.get() {
        let mut up = Vec::new();
        let mut rtt = Vec::new();
        for r in crate::state::load::<schema::SiteRecord>(&s.store, schema::SITES).await? {
            let st = sites.status(&r.name);
            let l = vec![("site", r.name.to_string())];
            up.push((l.clone(), u8::from(st.reachable).to_string()));
            if let Some(ms) = st.rtt_ms {
                rtt.push((l, (ms / 1e3).to_string()));
            }
        }
        out.family(
            "ferry_site_reachable",
            "gauge",
            "Whether a paired site answered its last ping (1) or not (0).",
            up,
        );
        out.family(
            "ferry_site_rtt_seconds",
            "gauge",
            "Round-trip time of the last ping to a paired site.",
            rtt,
        );
    }
    let mut expiry: Vec<_> = s
        .certificate_expires
        .get()
        .map(|t| (vec![("holder", "controller".to_string())], t.to_string()))
        .into_iter()
        .collect();
    for a in load_agents(&s.store).await? {
        let t = a
            .certificate_expires
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok());
        if let Some(t) = t {
            expiry.push((
                vec![("holder", format!("agent/{}", a.node))],
                t.as_second().to_string(),
            ));
        }
    }
    out.family(
        "ferry_certificate_expiry_timestamp_seconds",
        "gauge",
        "When the certificates in use stop being valid: this controller's, and each agent's as it registered (alert well ahead: `pki issue` a new one and restart).",
        expiry,
    );
    out.family(
        "ferry_store_revision",
        "gauge",
        "The state store's revision.",
        vec![(vec![], revision.to_string())],
    );
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out.0,
    )
        .into_response())
}

/// The text exposition format being written.
#[derive(Default)]
struct Exposition(String);

impl Exposition {
    /// One metric family: its help and type lines, then a sample per (labels, value).
    fn family(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: Vec<(Vec<(&str, String)>, String)>,
    ) {
        use std::fmt::Write as _;
        let w = &mut self.0;
        let _ = writeln!(w, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
                .collect();
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", labels.join(","))
            };
            let _ = writeln!(w, "{name}{labels} {value}");
        }
    }
}

/// What the runs say per plan: runs by step, when the last successful one started, and the
/// newest finished one's duration and bytes read.
struct RunFigures {
    by_step: std::collections::BTreeMap<(String, String), u64>,
    last_success: std::collections::BTreeMap<String, String>,
    last_duration: std::collections::BTreeMap<String, String>,
    last_bytes: std::collections::BTreeMap<String, String>,
}

impl RunFigures {
    fn of(runs: &[crate::state::schema::RunRecord]) -> RunFigures {
        let mut by_step = std::collections::BTreeMap::new();
        let mut last_ok: std::collections::BTreeMap<String, i64> = Default::default();
        let mut newest: std::collections::BTreeMap<String, &crate::state::schema::RunRecord> =
            Default::default();
        for r in runs {
            let plan = r.run.plan.to_string();
            if r.run.step.is_final() {
                let e = newest.entry(plan.clone()).or_insert(r);
                if r.created > e.created {
                    *e = r;
                }
            }
            let step = serde_json::to_value(&r.run.step)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            *by_step.entry((plan.clone(), step.clone())).or_default() += 1;
            if step == "done" {
                if let Ok(t) = r.created.parse::<jiff::Timestamp>() {
                    let e = last_ok.entry(plan).or_insert(0);
                    *e = (*e).max(t.as_second());
                }
            }
        }
        let (mut last_duration, mut last_bytes) = (Default::default(), Default::default());
        let (d, b): (
            &mut std::collections::BTreeMap<_, _>,
            &mut std::collections::BTreeMap<_, _>,
        ) = (&mut last_duration, &mut last_bytes);
        for (plan, r) in newest {
            let report = r.report();
            d.insert(
                plan.clone(),
                report.duration_secs.unwrap_or(0.0).to_string(),
            );
            b.insert(plan, report.bytes_read.to_string());
        }
        RunFigures {
            by_step,
            last_success: last_ok
                .into_iter()
                .map(|(p, t)| (p, t.to_string()))
                .collect(),
            last_duration,
            last_bytes,
        }
    }
}
