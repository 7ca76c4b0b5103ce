//! `ferry orphans`: groups of deleted plans, kept until deleted by request.

use clap::Subcommand;
use serde_json::Value;

use crate::client::{checked, Api};
use crate::output::{confirm, emit, s, when, Table};

#[derive(Subcommand)]
pub enum Cmd {
    /// The deleted plans whose groups are kept, with their groups.
    List,
    /// Delete a deleted plan's kept groups and their snapshots on the agents.
    #[command(
        after_help = "Example: ferry orphans delete nightly.3f9a2c1b04de (ferry orphans list shows the ids)"
    )]
    Delete {
        /// The deleted plan's id.
        plan_id: String,
        /// Do not ask for confirmation (asked on a terminal).
        #[arg(long)]
        yes: bool,
    },
}

fn print_list(v: &Value) {
    let mut t = Table::new(&[
        "DELETED PLAN",
        "PLAN ID",
        "DELETED",
        "GROUPS",
        "OLDEST",
        "NEWEST",
        "STATE",
    ])
    .right(&[3]);
    for o in v.as_array().into_iter().flatten() {
        let groups = o["groups"].as_array().cloned().unwrap_or_default();
        let state = if o["fate"] == "delete" {
            "deleting"
        } else {
            "kept"
        };
        t.row(vec![
            s(&o["plan"]),
            s(&o["plan_id"]),
            when(&o["deleted"]),
            groups.len().to_string(),
            groups.first().map_or("-".into(), |g| s(&g["group"])),
            groups.last().map_or("-".into(), |g| s(&g["group"])),
            state.into(),
        ]);
    }
    if t.is_empty() {
        println!("no deleted plan keeps groups");
    } else {
        t.print();
    }
}

pub async fn run(api: &Api, cmd: &Cmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        Cmd::List => emit(json, &api.list("/v1/orphans").await?, print_list),
        Cmd::Delete { plan_id, yes } => {
            let id = checked("plan id", plan_id)?;
            confirm(
                &format!("Delete every kept group of deleted plan {id}, snapshots included?"),
                *yes,
            )?;
            let v = api
                .call("DELETE", &format!("/v1/orphans/{id}"), None)
                .await?;
            emit(json, &v, |v| {
                println!(
                    "deleting the groups of deleted plan {} ({id}); ferry orphans list shows what is left",
                    s(&v["plan"])
                )
            })
        }
    }
}
