//! `ferry`: the command line of the controller's HTTP API (every command is one or a few
//! API calls), and `ferry demo` ([`demo`]), which runs two sites on this machine. One file per resource (`objects`, `plans`, `volumes` with
//! `agents`, `orphans`, `status`); `client` is the HTTP client, `output` the tables and
//! progress. The address and token come from `--addr`/`--token`, else `FERRY_ADDR`/
//! `FERRY_TOKEN`, else `~/.config/ferry/cli.toml`. `--json` prints the API's JSON as it is,
//! and errors as `{"error": {"code", "message"}}` with the API's codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod client;
mod demo;
mod objects;
mod orphans;
mod output;
mod plans;
mod recovery;
mod sites;
mod status;
mod volumes;

const EXAMPLES: &str = "\
First steps (a dev site: `ferry-controller dev` prints FERRY_TOKEN):
  export FERRY_TOKEN=...                     # the API is at http://127.0.0.1:7480 unless --addr
  ferry agents                               # the nodes, their volumes and free space
  ferry volumes create node1 web0 --size 1G
  ferry objects create web.json              # ferry objects create --help shows one per kind
  ferry plans create nightly.json            # ferry plans create --help shows one
  ferry plans run nightly --wait
  ferry status
Shell completion: ferry completion bash > /etc/bash_completion.d/ferry";

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "ferry: protect volumes, VMs, LUNs and NFS files with snapshot plans (the controller's HTTP API)",
    after_help = EXAMPLES
)]
struct Cli {
    /// The controller's API, e.g. http://127.0.0.1:7480 or https://ferry.example:443
    /// (or FERRY_ADDR; default http://127.0.0.1:7480).
    #[arg(long, global = true)]
    addr: Option<String>,
    /// API token (or FERRY_TOKEN).
    #[arg(long, global = true)]
    token: Option<String>,
    /// A CA certificate (PEM) to trust for an https:// address, besides the system's (or
    /// FERRY_CA).
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Print JSON: the API's answers as they are; errors as {"error": {"code", "message"}}.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The site on one screen: every plan's last run, last success, newest group's age,
    /// what runs now, failures, agents.
    Status(status::Args),
    /// Protected objects: virtual volumes, iSCSI LUNs, NFS files, VMs.
    #[command(subcommand)]
    Objects(objects::Cmd),
    /// Protection plans, their runs, snapshot groups and rollback.
    #[command(subcommand)]
    Plans(plans::Cmd),
    /// The site's agents (nodes): status, volumes, free space, last heartbeat.
    Agents,
    /// Volumes on the agents: list, create, delete.
    #[command(subcommand)]
    Volumes(volumes::Cmd),
    /// Snapshot groups of deleted plans, kept until deleted.
    #[command(subcommand)]
    Orphans(orphans::Cmd),
    /// Paired sites (backup plans replicate to them): add, list, remove, export, import.
    #[command(subcommand)]
    Sites(sites::Cmd),
    /// Run ferry's main job on this machine and check every step: two sites, a backup plan's
    /// full and incremental runs, site-a stopped, a rebuild at site-b verified byte for byte,
    /// a drill. Needs nothing but this build.
    #[command(
        after_help = "Examples:\n  cargo run --release --bin ferry -- demo\n  ferry demo --keep        # leave both sites running, with their addresses and tokens\n  ferry demo --size 1G     # bigger volumes"
    )]
    Demo(demo::Args),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  ferry completion bash > /etc/bash_completion.d/ferry\n  ferry completion zsh > \"${fpath[1]}/_ferry\"\n  ferry completion fish > ~/.config/fish/completions/ferry.fish"
    )]
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Cmd::Completion { shell } = &cli.cmd {
        clap_complete::generate(*shell, &mut Cli::command(), "ferry", &mut std::io::stdout());
        return Ok(());
    }
    if let Cmd::Demo(args) = &cli.cmd {
        return demo::main(args).await;
    }
    let api = client::Api::new(client::Given {
        addr: cli.addr.clone(),
        token: cli.token.clone(),
        ca: cli.ca.clone(),
    })?;
    let json = cli.json;
    match &cli.cmd {
        Cmd::Status(a) => status::run(&api, a, json).await,
        Cmd::Objects(c) => objects::run(&api, c, json).await,
        Cmd::Plans(c) => plans::run(&api, c, json).await,
        Cmd::Agents => output::emit(json, &api.list("/v1/agents").await?, volumes::print_agents),
        Cmd::Volumes(c) => volumes::run(&api, c, json).await,
        Cmd::Orphans(c) => orphans::run(&api, c, json).await,
        Cmd::Sites(c) => sites::run(&api, c, json).await,
        Cmd::Completion { .. } | Cmd::Demo(_) => Ok(()),
    }
}

fn main() -> ExitCode {
    ferry_controller::exit::quiet_on_closed_pipe();
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
