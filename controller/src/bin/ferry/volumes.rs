//! `ferry agents` and `ferry volumes`: the site's nodes and the volumes on them.

use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::{checked, Api};
use crate::output::{ago, confirm, emit, s, size, Table};

pub fn print_agents(v: &Value) {
    let mut t = Table::new(&[
        "NODE",
        "STATUS",
        "VOLUMES",
        "FREE",
        "CAPACITY",
        "LAST HEARTBEAT",
        "ADDRESS",
    ])
    .right(&[2, 3, 4]);
    for a in v.as_array().into_iter().flatten() {
        let n = a["volumes"].as_array().map_or(0, Vec::len) as u64
            + a["volumes_omitted"].as_u64().unwrap_or(0);
        t.row(vec![
            s(&a["node"]),
            s(&a["status"]),
            n.to_string(),
            size(a["free_bytes"].as_u64().unwrap_or(0)),
            size(a["capacity_bytes"].as_u64().unwrap_or(0)),
            ago(&a["last_heartbeat"]),
            s(&a["address"]),
        ]);
    }
    if t.is_empty() {
        println!("no agent has registered yet: start ferry-agent serve with a [controller] section on each node");
    } else {
        t.print();
    }
}

#[derive(Subcommand)]
pub enum Cmd {
    /// List the volumes of every agent (or of one).
    List {
        /// Only this node's.
        #[arg(long)]
        node: Option<String>,
    },
    /// Create a sparse volume on a node.
    #[command(
        after_help = "Examples:\n  ferry volumes create node1 web0 --size 20GiB\n  ferry volumes create node1 db0 --size 100GB   # GB = 10^9 bytes, GiB = 2^30; 1.5T works too"
    )]
    Create {
        /// The node (ferry agents lists them).
        node: String,
        /// The volume's name.
        name: String,
        /// Its size: bytes, or 10G (binary), 10GiB, 10GB (decimal), 1.5T.
        #[arg(long)]
        size: String,
        /// Its block size in bytes (default: the agent's, 64 KiB).
        #[arg(long)]
        block_size: Option<u64>,
    },
    /// Delete a volume (refused while an object names it).
    #[command(after_help = "Example: ferry volumes delete node1 scratch0 --force")]
    Delete {
        /// The node.
        node: String,
        /// The volume's name.
        name: String,
        /// Delete its snapshots with it (groups holding them can no longer restore it).
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation (asked on a terminal).
        #[arg(long)]
        yes: bool,
    },
}

fn print_volumes(v: &Value) {
    let mut t =
        Table::new(&["NODE", "VOLUME", "SIZE", "SNAPSHOTS", "KIND", "USED BY"]).right(&[2, 3]);
    for x in v.as_array().into_iter().flatten() {
        let used: Vec<String> = x["used_by"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        t.row(vec![
            s(&x["node"]),
            s(&x["name"]),
            size(x["size"].as_u64().unwrap_or(0)),
            s(&x["snapshots"]),
            if x["mirror"] == true {
                "mirror"
            } else {
                "volume"
            }
            .into(),
            if used.is_empty() {
                "-".into()
            } else {
                used.join(", ")
            },
        ]);
    }
    if t.is_empty() {
        println!("no volumes: ferry volumes create NODE NAME --size SIZE");
    } else {
        t.print();
    }
}

pub async fn run(api: &Api, cmd: &Cmd, json: bool) -> anyhow::Result<()> {
    match cmd {
        Cmd::List { node } => {
            let path = match node {
                Some(n) => format!("/v1/agents/{}/volumes", checked("node", n)?),
                None => "/v1/volumes".into(),
            };
            emit(json, &api.list(&path).await?, print_volumes)
        }
        Cmd::Create {
            node,
            name,
            size: sz,
            block_size,
        } => {
            let node = checked("node", node)?;
            let mut body = json!({ "name": checked("volume", name)?, "size": sz });
            if let Some(b) = block_size {
                body["block_size"] = json!(b);
            }
            let v = api
                .post(&format!("/v1/agents/{node}/volumes"), &body)
                .await?;
            emit(json, &v, |v| {
                println!(
                    "created volume {node}/{} of {}",
                    s(&v["volume"]),
                    size(v["size"].as_u64().unwrap_or(0))
                )
            })
        }
        Cmd::Delete {
            node,
            name,
            force,
            yes,
        } => {
            let node = checked("node", node)?;
            let name = checked("volume", name)?;
            let also = if *force { " and all its snapshots" } else { "" };
            confirm(&format!("Delete volume {node}/{name}{also}?"), *yes)?;
            let q = if *force { "?force=true" } else { "" };
            let path = format!("/v1/agents/{node}/volumes/{name}{q}");
            let v = api.call("DELETE", &path, None).await?;
            emit(json, &v, |v| {
                let n = v["snapshots_deleted"].as_u64().unwrap_or(0);
                println!("deleted volume {node}/{name} ({n} snapshots with it)")
            })
        }
    }
}
