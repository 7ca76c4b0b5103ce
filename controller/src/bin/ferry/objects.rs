//! `ferry objects`: the inventory of protected objects (virtual volumes, iSCSI LUNs, NFS
//! files, VMs).

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::Value;

use crate::client::{checked, read_json_file, Api};
use crate::output::{emit, s, Table};

const OBJECT_FILES: &str = "\
An object file is JSON, one per object kind:
  {\"name\": \"data\", \"kind\": {\"type\": \"virtual_volume\", \"volume\": {\"node\": \"node1\", \"volume\": \"data0\"}}}
  {\"name\": \"db\", \"kind\": {\"type\": \"iscsi_lun\", \"target_iqn\": \"iqn.2026-11.com.example:db\", \"lun\": 0,
     \"volume\": {\"node\": \"node1\", \"volume\": \"db0\"}}}
  {\"name\": \"share\", \"kind\": {\"type\": \"nfs_file\", \"export\": \"/exports/vms\", \"path\": \"images/a.raw\",
     \"volume\": {\"node\": \"node1\", \"volume\": \"a0\"}}}
  {\"name\": \"web\", \"kind\": {\"type\": \"vm\", \"vcpus\": 2, \"memory_mib\": 4096,
     \"disks\": [{\"volume\": {\"node\": \"node1\", \"volume\": \"web0\"}},
               {\"volume\": {\"node\": \"node1\", \"volume\": \"iso\"}, \"role\": \"cdrom\"}],
     \"nics\": [{\"switch\": \"lan\", \"mac\": \"52:54:00:12:34:56\"}]}}
A VM disk's role is disk (default, protected), cdrom or shared (not protected).";

#[derive(Subcommand)]
pub enum Cmd {
    /// List the objects.
    List,
    /// Show one object whole.
    #[command(after_help = "Example: ferry objects get web")]
    Get {
        /// The object's name.
        name: String,
    },
    /// Create an object from a JSON file (- reads standard input).
    #[command(after_help = OBJECT_FILES)]
    Create {
        /// The object's JSON file, e.g. web.json.
        file: PathBuf,
        /// Declare it before its agent or volumes exist (they are checked otherwise).
        #[arg(long)]
        allow_missing: bool,
    },
    /// Replace an object with a JSON file (the object named in the file).
    #[command(after_help = OBJECT_FILES)]
    Update {
        /// The object's JSON file, e.g. web.json.
        file: PathBuf,
        /// Allow volumes that no agent holds yet.
        #[arg(long)]
        allow_missing: bool,
    },
    /// Delete an object (refused while a plan protects it).
    #[command(after_help = "Example: ferry objects delete web")]
    Delete {
        /// The object's name.
        name: String,
    },
}

fn volume(v: &Value) -> String {
    format!("{}/{}", s(&v["node"]), s(&v["volume"]))
}

/// The volumes an object names, in words.
fn volumes(o: &Value) -> String {
    let k = &o["kind"];
    match k["type"].as_str() {
        Some("vm") => k["disks"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| match d["role"].as_str().unwrap_or("disk") {
                "disk" => volume(&d["volume"]),
                role => format!("{} ({role}, not protected)", volume(&d["volume"])),
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => volume(&k["volume"]),
    }
}

pub fn print_list(list: &Value) {
    let mut t = Table::new(&["NAME", "TYPE", "VOLUMES"]);
    for o in list.as_array().into_iter().flatten() {
        t.row(vec![s(&o["name"]), s(&o["kind"]["type"]), volumes(o)]);
    }
    if t.is_empty() {
        println!("no objects yet: ferry objects create FILE (ferry objects create --help shows one per kind)");
    } else {
        t.print();
    }
}

/// One object, every field.
fn print_one(o: &Value) {
    let k = &o["kind"];
    println!("name:        {}", s(&o["name"]));
    println!("type:        {}", s(&k["type"]));
    match k["type"].as_str() {
        Some("vm") => {
            println!("vcpus:       {}", s(&k["vcpus"]));
            println!("memory:      {} MiB", s(&k["memory_mib"]));
            for (i, d) in k["disks"].as_array().into_iter().flatten().enumerate() {
                let role = d["role"].as_str().unwrap_or("disk");
                let note = if role == "disk" {
                    ""
                } else {
                    ", not protected"
                };
                println!("disk {i}:      {} ({role}{note})", volume(&d["volume"]));
            }
            for (i, n) in k["nics"].as_array().into_iter().flatten().enumerate() {
                println!(
                    "nic {i}:       switch {}, mac {}",
                    s(&n["switch"]),
                    s(&n["mac"])
                );
            }
        }
        Some("iscsi_lun") => {
            println!("target IQN:  {}", s(&k["target_iqn"]));
            println!("LUN:         {}", s(&k["lun"]));
            println!("volume:      {}", volume(&k["volume"]));
        }
        Some("nfs_file") => {
            println!("export:      {}", s(&k["export"]));
            println!("path:        {}", s(&k["path"]));
            println!("volume:      {}", volume(&k["volume"]));
        }
        _ => println!("volume:      {}", volume(&k["volume"])),
    }
}

pub async fn run(api: &Api, cmd: &Cmd, json: bool) -> anyhow::Result<()> {
    let q = |allow: bool| if allow { "?allow_missing=true" } else { "" };
    match cmd {
        Cmd::List => emit(json, &api.list("/v1/objects").await?, print_list),
        Cmd::Get { name } => {
            let v = api
                .get(&format!("/v1/objects/{}", checked("object", name)?))
                .await?;
            emit(json, &v, print_one)
        }
        Cmd::Create {
            file,
            allow_missing,
        } => {
            let (body, _) = read_json_file(file)?;
            let path = format!("/v1/objects{}", q(*allow_missing));
            let v = api.call("POST", &path, Some(body)).await?;
            emit(json, &v, |v| {
                println!(
                    "created object {} ({}: {})",
                    s(&v["name"]),
                    s(&v["kind"]["type"]),
                    volumes(v)
                )
            })
        }
        Cmd::Update {
            file,
            allow_missing,
        } => {
            let (body, name) = read_json_file(file)?;
            let name = name.ok_or_else(|| {
                ferry_controller::exit::Coded::new(
                    "invalid_file",
                    format!("{}: the object has no \"name\"", file.display()),
                )
            })?;
            let path = format!(
                "/v1/objects/{}{}",
                checked("object", &name)?,
                q(*allow_missing)
            );
            let v = api.call("PUT", &path, Some(body)).await?;
            emit(json, &v, |v| {
                println!(
                    "updated object {name} ({}: {})",
                    s(&v["kind"]["type"]),
                    volumes(v)
                )
            })
        }
        Cmd::Delete { name } => {
            let name = checked("object", name)?;
            api.call("DELETE", &format!("/v1/objects/{name}"), None)
                .await?;
            emit(json, &serde_json::json!({ "deleted": name }), |_| {
                println!("deleted object {name}")
            })
        }
    }
}
