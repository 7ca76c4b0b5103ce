//! `ferry`: the command line of the controller's HTTP API (nothing else: every command is one
//! or a few API calls). The address and token come from `--addr`/`--token`, else
//! `FERRY_ADDR`/`FERRY_TOKEN`, else `~/.config/ferry/cli.toml` (`addr = "..."`,
//! `token = "..."`). `--json` prints the API's JSON as it is.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "ferry: protection plans, objects, runs"
)]
struct Cli {
    /// The controller's API, e.g. http://127.0.0.1:7480 (or FERRY_ADDR).
    #[arg(long, global = true)]
    addr: Option<String>,
    /// API token (or FERRY_TOKEN).
    #[arg(long, global = true)]
    token: Option<String>,
    /// Print the API's JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Protected objects: virtual volumes, iSCSI LUNs, NFS files, VMs.
    #[command(subcommand)]
    Objects(Crud),
    /// Protection plans.
    #[command(subcommand)]
    Plans(PlanCmd),
}

#[derive(Subcommand)]
enum Crud {
    List,
    Get {
        name: String,
    },
    /// Create from a JSON file (- for stdin).
    Create {
        file: PathBuf,
    },
    /// Replace from a JSON file (- for stdin).
    Update {
        name: String,
        file: PathBuf,
    },
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
enum PlanCmd {
    #[command(flatten)]
    Crud(Crud),
    /// Stop running the plan on its schedule.
    Pause { name: String },
    /// Run the plan on its schedule again.
    Resume { name: String },
    /// Start a run now; with --wait, show its progress until it is over.
    Run {
        name: String,
        #[arg(long)]
        wait: bool,
    },
    /// The plan's runs.
    Runs { name: String },
    /// One run per object and volume: status, snapshot, bytes read, when, errors.
    RunShow { name: String, run: String },
    /// The plan's kept snapshot groups.
    Groups { name: String },
    /// Roll the plan's objects (or --object ones) back to a kept group.
    Rollback {
        name: String,
        group: String,
        #[arg(long = "object")]
        objects: Vec<String>,
        #[arg(long)]
        wait: bool,
    },
}

/// Polls `path` (a list) for the entry with `id` until `over` says so, printing each change
/// of what `show` makes of it; returns the last entry.
async fn follow(
    api: &Api,
    path: &str,
    id: &str,
    key: fn(&Value) -> &Value,
    over: fn(&Value) -> bool,
    show: fn(&Value) -> String,
    json: bool,
) -> anyhow::Result<Value> {
    let t0 = std::time::Instant::now();
    let mut last = String::new();
    loop {
        let list = api.call("GET", path, None).await?;
        let entry = list
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| key(e) == id)
            .cloned()
            .context("it is no longer listed")?;
        let line = show(&entry);
        if !json && line != last {
            eprintln!("[{:>5.1} s] {line}", t0.elapsed().as_secs_f64());
            last = line;
        }
        if over(&entry) {
            return Ok(entry);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn run_progress(r: &Value) -> String {
    let nodes = r["run"]["nodes"].as_object().cloned().unwrap_or_default();
    let done = nodes
        .values()
        .filter(|n| n["state"].get("done").is_some())
        .count();
    let step = r["run"]["step"].as_str().unwrap_or("?");
    let mut line = if step == "prepare" {
        let held = nodes.values().filter(|n| n["state"] == "prepared").count();
        format!(
            "run {}: prepare ({held}/{} nodes holding)",
            r["run"]["id"].as_str().unwrap_or("?"),
            nodes.len()
        )
    } else {
        format!(
            "run {}: {step} ({done}/{} nodes snapshotted)",
            r["run"]["id"].as_str().unwrap_or("?"),
            nodes.len()
        )
    };
    if let Some(e) = r["run"]["error"].as_str() {
        line.push_str(&format!(": {e}"));
    }
    line
}

/// A run's detail: a summary line, then one row per object and volume.
fn print_run_detail(d: &Value) {
    let rep = &d["report"];
    let took = rep["duration_secs"]
        .as_f64()
        .map_or(String::new(), |s| format!(" in {s:.1} s"));
    println!(
        "{}{took}, {} read",
        run_progress(d),
        ferry_wire::units::format_size(rep["bytes_read"].as_u64().unwrap_or(0))
    );
    println!(
        "{:<24} {:<8} {:<32} {:>10}  SNAPSHOT / ERROR",
        "OBJECT", "STATUS", "NODE/VOLUME", "READ"
    );
    for o in rep["objects"].as_array().into_iter().flatten() {
        for v in o["volumes"].as_array().into_iter().flatten() {
            let what = v["error"]
                .as_str()
                .map(String::from)
                .or_else(|| v["snapshot"]["snapshot"].as_str().map(String::from))
                .unwrap_or_default();
            println!(
                "{:<24} {:<8} {:<32} {:>10}  {what}",
                o["name"].as_str().unwrap_or("?"),
                v["status"].as_str().unwrap_or("?"),
                format!(
                    "{}/{}",
                    v["node"].as_str().unwrap_or("?"),
                    v["volume"].as_str().unwrap_or("?")
                ),
                v["snapshot"]["bytes_read"]
                    .as_u64()
                    .map_or("-".to_string(), ferry_wire::units::format_size),
            );
        }
    }
}

fn rollback_progress(r: &Value) -> String {
    let vols: Vec<&Value> = r["volumes"]
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .flat_map(|v| v.as_object().into_iter().flat_map(|m| m.values()))
        .collect();
    let done = vols.iter().filter(|v| **v == "done").count();
    format!(
        "rollback {} to {}: {} ({done}/{} volumes)",
        r["id"].as_str().unwrap_or("?"),
        r["group"].as_str().unwrap_or("?"),
        r["step"].as_str().unwrap_or("?"),
        vols.len()
    )
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    addr: Option<String>,
    token: Option<String>,
}

fn settings(cli: &Cli) -> anyhow::Result<(String, String)> {
    let file: FileConfig = match std::env::var_os("HOME") {
        Some(h) => {
            let p = PathBuf::from(h).join(".config/ferry/cli.toml");
            match std::fs::read_to_string(&p) {
                Ok(t) => toml::from_str(&t).with_context(|| format!("{}", p.display()))?,
                Err(_) => FileConfig::default(),
            }
        }
        None => FileConfig::default(),
    };
    let addr = cli
        .addr
        .clone()
        .or_else(|| std::env::var("FERRY_ADDR").ok())
        .or(file.addr)
        .unwrap_or_else(|| "http://127.0.0.1:7480".into());
    let token = cli
        .token
        .clone()
        .or_else(|| std::env::var("FERRY_TOKEN").ok())
        .or(file.token)
        .context(
            "no API token: give --token, set FERRY_TOKEN, or put token in ~/.config/ferry/cli.toml",
        )?;
    if !addr.starts_with("http://") {
        bail!("--addr must be an http:// URL, not {addr:?}");
    }
    Ok((addr.trim_end_matches('/').to_string(), token))
}

struct Api {
    addr: String,
    token: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Api {
    /// One call; a non-2xx answer becomes the API's error message.
    async fn call(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> anyhow::Result<Value> {
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.addr))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .context("build the request")?;
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .with_context(|| format!("{} did not answer within 30 s", self.addr))?
            .with_context(|| format!("cannot reach the controller at {}", self.addr))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .context("read the answer")?
            .to_bytes();
        let v: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .context("the controller answered something that is not JSON")?
        };
        if !status.is_success() {
            let msg = v["error"]["message"].as_str().unwrap_or("no message");
            bail!("{} ({})", msg, status.as_u16());
        }
        Ok(v)
    }
}

fn read_file(p: &PathBuf) -> anyhow::Result<Vec<u8>> {
    let bytes = if p.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut b).context("read stdin")?;
        b
    } else {
        std::fs::read(p).with_context(|| format!("read {}", p.display()))?
    };
    serde_json::from_slice::<Value>(&bytes)
        .with_context(|| format!("{} is not JSON", p.display()))?;
    Ok(bytes)
}

fn print_plans(v: &Value) {
    println!(
        "{:<24} {:<8} {:<7} {:>9}  NEXT RUN",
        "NAME", "EVERY", "STATE", "RETENTION"
    );
    for p in v.as_array().into_iter().flatten() {
        println!(
            "{:<24} {:<8} {:<7} {:>9}  {}",
            p["spec"]["name"].as_str().unwrap_or("?"),
            p["spec"]["schedule"]["every"].as_str().unwrap_or("?"),
            if p["paused"] == true {
                "paused"
            } else {
                "active"
            },
            p["spec"]["retention"],
            p["next_run"].as_str().unwrap_or("-"),
        );
    }
}

fn print_objects(v: &Value) {
    println!("{:<24} {:<15} VOLUMES", "NAME", "TYPE");
    for o in v.as_array().into_iter().flatten() {
        let k = &o["kind"];
        let vol = |v: &Value| {
            format!(
                "{}/{}",
                v["node"].as_str().unwrap_or("?"),
                v["volume"].as_str().unwrap_or("?")
            )
        };
        let volumes = match k["type"].as_str() {
            Some("vm") => k["disks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| {
                    let role = d["role"].as_str().unwrap_or("disk");
                    if role == "disk" {
                        vol(&d["volume"])
                    } else {
                        format!("{} ({role}, not protected)", vol(&d["volume"]))
                    }
                })
                .collect::<Vec<_>>()
                .join(", "),
            _ => vol(&k["volume"]),
        };
        println!(
            "{:<24} {:<15} {volumes}",
            o["name"].as_str().unwrap_or("?"),
            k["type"].as_str().unwrap_or("?")
        );
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let (addr, token) = settings(&cli)?;
    let api = Api {
        addr,
        token,
        client: Client::builder(TokioExecutor::new()).build_http(),
    };
    let (out, kind) = match &cli.cmd {
        Cmd::Objects(c) => (crud(&api, "objects", c).await?, "objects"),
        Cmd::Plans(PlanCmd::Crud(c)) => (crud(&api, "plans", c).await?, "plans"),
        Cmd::Plans(PlanCmd::Pause { name }) => (
            api.call("POST", &format!("/v1/plans/{}/pause", checked(name)?), None)
                .await?,
            "plan",
        ),
        Cmd::Plans(PlanCmd::Run { name, wait }) => {
            let name = checked(name)?;
            let r = api
                .call("POST", &format!("/v1/plans/{name}/run"), None)
                .await?;
            if !*wait {
                (r, "raw")
            } else {
                let id = r["run"]["id"].as_str().unwrap_or_default().to_string();
                let end = follow(
                    &api,
                    &format!("/v1/plans/{name}/runs"),
                    &id,
                    |e| &e["run"]["id"],
                    |e| e["run"]["step"] == "done" || e["run"]["step"] == "failed",
                    run_progress,
                    cli.json,
                )
                .await?;
                let detail = api
                    .call("GET", &format!("/v1/plans/{name}/runs/{id}"), None)
                    .await?;
                if end["run"]["step"] != "done" {
                    if cli.json {
                        println!("{}", serde_json::to_string_pretty(&detail)?);
                    } else {
                        print_run_detail(&detail);
                    }
                    bail!("{}", run_progress(&end));
                }
                (detail, "run")
            }
        }
        Cmd::Plans(PlanCmd::Runs { name }) => (
            api.call("GET", &format!("/v1/plans/{}/runs", checked(name)?), None)
                .await?,
            "raw",
        ),
        Cmd::Plans(PlanCmd::RunShow { name, run }) => (
            api.call(
                "GET",
                &format!("/v1/plans/{}/runs/{}", checked(name)?, checked(run)?),
                None,
            )
            .await?,
            "run",
        ),
        Cmd::Plans(PlanCmd::Groups { name }) => (
            api.call("GET", &format!("/v1/plans/{}/groups", checked(name)?), None)
                .await?,
            "raw",
        ),
        Cmd::Plans(PlanCmd::Rollback {
            name,
            group,
            objects,
            wait,
        }) => {
            let name = checked(name)?;
            let mut body = serde_json::json!({ "group": group });
            if !objects.is_empty() {
                body["objects"] = serde_json::json!(objects);
            }
            let r = api
                .call(
                    "POST",
                    &format!("/v1/plans/{name}/rollbacks"),
                    Some(serde_json::to_vec(&body)?),
                )
                .await?;
            if !*wait {
                (r, "raw")
            } else {
                let id = r["id"].as_str().unwrap_or_default().to_string();
                let end = follow(
                    &api,
                    &format!("/v1/plans/{name}/rollbacks"),
                    &id,
                    |e| &e["id"],
                    |e| e["step"] != "running",
                    rollback_progress,
                    cli.json,
                )
                .await?;
                if end["step"] != "done" {
                    bail!("{}", rollback_progress(&end));
                }
                (end, "raw")
            }
        }
        Cmd::Plans(PlanCmd::Resume { name }) => (
            api.call(
                "POST",
                &format!("/v1/plans/{}/resume", checked(name)?),
                None,
            )
            .await?,
            "plan",
        ),
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    match (&out, kind) {
        (Value::Null, _) => println!("done"),
        (v, "run") => print_run_detail(v),
        (Value::Array(a), "raw") => {
            for e in a {
                println!(
                    "{}",
                    if e.get("run").is_some() {
                        run_progress(e)
                    } else {
                        e.to_string()
                    }
                );
            }
        }
        (v, "raw") if v.get("run").is_some() => println!("{}", run_progress(v)),
        (v, "raw") if v.get("volumes").is_some() && v.get("group").is_some() => {
            println!("{}", rollback_progress(v))
        }
        (v, "raw") => println!("{v}"),
        (Value::Array(_), "plans") => print_plans(&out),
        (Value::Array(_), _) => print_objects(&out),
        (v, "plans" | "plan") if v.get("spec").is_some() => {
            print_plans(&Value::Array(vec![v.clone()]))
        }
        (v, _) => print_objects(&Value::Array(vec![v.clone()])),
    }
    Ok(())
}

/// A name from the command line, checked before it goes into a URL.
fn checked(name: &str) -> anyhow::Result<&str> {
    ferry_wire::Name::new(name).with_context(|| format!("{name:?} is not a valid name"))?;
    Ok(name)
}

async fn crud(api: &Api, what: &str, c: &Crud) -> anyhow::Result<Value> {
    let c = match c {
        Crud::Get { name } | Crud::Update { name, .. } | Crud::Delete { name } => {
            checked(name)?;
            c
        }
        _ => c,
    };
    match c {
        Crud::List => api.call("GET", &format!("/v1/{what}"), None).await,
        Crud::Get { name } => api.call("GET", &format!("/v1/{what}/{name}"), None).await,
        Crud::Create { file } => {
            api.call("POST", &format!("/v1/{what}"), Some(read_file(file)?))
                .await
        }
        Crud::Update { name, file } => {
            api.call("PUT", &format!("/v1/{what}/{name}"), Some(read_file(file)?))
                .await
        }
        Crud::Delete { name } => {
            api.call("DELETE", &format!("/v1/{what}/{name}"), None)
                .await
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    ferry_controller::exit::finish(json, rt.block_on(run(cli)))
}
