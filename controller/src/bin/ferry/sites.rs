//! `ferry sites`: pairing with other sites (each side adds the other), and their links.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::{checked, read_json_file, Api};
use crate::output::{ago, confirm, emit, s, when, Table};
use ferry_controller::exit::Coded;

#[derive(Subcommand)]
pub enum Cmd {
    /// The paired sites: reachability, round-trip time, last contact.
    List,
    /// One paired site.
    Show {
        /// The site's name.
        name: String,
    },
    /// Pair with another site: its name, its CA certificate and its controllers (do the same
    /// there with this site's, or use export / import).
    #[command(
        after_help = "Example: ferry sites add site-b --ca site-b-ca.pem --controllers 10.0.2.10:7444,10.0.2.11:7444"
    )]
    Add {
        /// The other site's name (as its CA certificate says).
        name: String,
        /// The other site's CA certificate (PEM).
        #[arg(long)]
        ca: PathBuf,
        /// Its controllers' agent endpoints, HOST:PORT, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        controllers: Vec<String>,
    },
    /// Print this site's bundle (name, CA, controllers) for the other site to import.
    #[command(after_help = "Example: ferry sites export > site-a.json")]
    Export,
    /// Pair with the site whose bundle (ferry sites export there) is in FILE (- : stdin).
    #[command(after_help = "Example: ferry sites import site-b.json")]
    Import {
        /// The bundle: a JSON file, or - for standard input.
        file: PathBuf,
    },
    /// Unpair a site (refused while a plan targets it).
    Remove {
        /// The site's name.
        name: String,
        /// Do not ask for confirmation (asked on a terminal).
        #[arg(long)]
        yes: bool,
    },
}

fn link(v: &Value) -> String {
    let l = &v["link"];
    if l["reachable"] == true {
        format!("up, {:.1} ms", l["rtt_ms"].as_f64().unwrap_or(0.0))
    } else if l["error"].is_string() {
        format!("unreachable: {}", s(&l["error"]))
    } else {
        "not checked yet".into()
    }
}

fn print_list(v: &Value) {
    let mut t = Table::new(&["SITE", "CONTROLLERS", "LINK", "LAST CONTACT", "PAIRED"]);
    for x in v.as_array().into_iter().flatten() {
        let ctl: Vec<String> = x["controllers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        t.row(vec![
            s(&x["name"]),
            ctl.join(","),
            link(x),
            ago(&x["link"]["last_contact"]),
            when(&x["paired"]),
        ]);
    }
    if t.is_empty() {
        println!("no paired site: ferry sites add NAME --ca FILE --controllers HOST:PORT");
    } else {
        t.print();
    }
}

fn print_one(x: &Value) {
    println!("site {}", s(&x["name"]));
    println!("  controllers     {}", s(&x["controllers"]));
    println!("  link            {}", link(x));
    println!("  last contact    {}", when(&x["link"]["last_contact"]));
    println!("  paired          {}", when(&x["paired"]));
    println!("  CA fingerprint  {}", s(&x["ca_fingerprint"]));
}

pub async fn run(api: &Api, cmd: &Cmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        Cmd::List => emit(json, &api.list("/v1/sites").await?, print_list),
        Cmd::Show { name } => {
            let n = checked("site", name)?;
            emit(json, &api.get(&format!("/v1/sites/{n}")).await?, print_one)
        }
        Cmd::Add {
            name,
            ca,
            controllers,
        } => {
            let n = checked("site", name)?;
            let pem = std::fs::read_to_string(ca)
                .map_err(|e| Coded::new("invalid_file", format!("read {}: {e}", ca.display())))?;
            let body = json!({ "name": n, "ca_pem": pem, "controllers": controllers });
            let v = api.post("/v1/sites", &body).await?;
            emit(json, &v, |v| {
                println!(
                    "paired with site {}; pair this site there too (ferry sites export here, ferry sites import there)",
                    s(&v["name"]),
                )
            })
        }
        Cmd::Export => {
            let v = api.get("/v1/site").await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        Cmd::Import { file } => {
            let (bytes, _) = read_json_file(file)?;
            let body: Value = serde_json::from_slice(&bytes).context("site bundle")?;
            let v = api.post("/v1/sites", &body).await?;
            emit(json, &v, |v| println!("paired with site {}", s(&v["name"])))
        }
        Cmd::Remove { name, yes } => {
            let n = checked("site", name)?;
            confirm(&format!("Unpair site {n}?"), *yes)?;
            api.call("DELETE", &format!("/v1/sites/{n}"), None).await?;
            emit(json, &json!({ "unpaired": n }), |_| {
                println!("unpaired site {n}")
            })
        }
    }
}
