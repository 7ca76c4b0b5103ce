//! `ferry-controller`: the site controller (`serve`), a whole site for trying ferry (`dev`),
//! and API tokens (`token`). `config` is the configuration, `serve` the process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod config;
mod dev;
mod serve;

use serve::{new_token, serve, terminated};

#[derive(Parser)]
#[command(name = "ferry-controller", version, about = "ferry's site controller")]
struct Cli {
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the HTTP API (configuration: see controller/ferry-controller.example.toml).
    #[command(after_help = "Example: ferry-controller serve --config /etc/ferry/controller.toml")]
    Serve {
        /// The configuration (TOML; controller/ferry-controller.example.toml documents it).
        #[arg(long)]
        config: PathBuf,
    },
    /// Make a new API token: prints the token (give it to its user) and the BLAKE3 hash that
    /// goes into the configuration (the controller never stores the token itself).
    Token,
    /// A whole site on this machine for trying ferry out: a controller on the embedded store
    /// and one agent (`ferry-agent serve`, a child process) on the data directory, both on
    /// loopback, with their own site CA. Prints the API address and an admin token (one JSON
    /// object with --json) and runs until stopped (Ctrl-C, SIGTERM).
    Dev {
        /// Where the state, certificates and the agent's volumes live, kept across runs
        /// (default: a new temporary directory, removed at the end).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The HTTP API's address (the `ferry` CLI's default; 127.0.0.1:0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:7480")]
        listen: SocketAddr,
        /// The admin token to accept (default: a new one at every start, printed). Giving
        /// one keeps it across restarts; at least 16 characters.
        #[arg(long, env = "FERRY_DEV_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// The agent binary (default: `ferry-agent` beside this program, else on PATH).
        #[arg(long)]
        agent_bin: Option<PathBuf>,
        /// The site's name (its CA is made for it at the first start).
        #[arg(long, default_value = "dev")]
        site: String,
    },
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Serve { config } => {
            let cfg = config::load(&config)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(
                    cfg,
                    |r| {
                        println!("ferry-controller listening on {}", r.api);
                        tracing::info!(api = %r.api, agents = ?r.endpoint, "ready");
                    },
                    terminated(),
                ))
        }
        Cmd::Dev {
            data_dir,
            listen,
            agent_bin,
            token,
            site,
        } => {
            let site = ferry_wire::Name::new(&site)
                .map_err(|e| anyhow::anyhow!("--site {site:?}: {e}"))?;
            let opts = dev::Options {
                data_dir,
                listen,
                agent_bin,
                token,
                site,
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(dev::run(opts, cli.json))
        }
        Cmd::Token => {
            ferry_controller::exit::quiet_on_closed_pipe();
            let (token, hash) = new_token();
            if cli.json {
                println!("{}", serde_json::json!({ "token": token, "blake3": hash }));
            } else {
                println!("token:  {token}\nblake3: {hash}");
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    use std::io::IsTerminal as _;
    // Colours only for a person: logs to a file or a journal stay plain.
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let json = cli.json;
    ferry_controller::exit::finish(json, run(cli))
}
