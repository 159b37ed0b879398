//! `hoard`: the one binary. Roles (`server`, `dev`) and client commands.

#[macro_use]
mod out;
mod admin_api;
mod admin_cli;
mod bench;
mod cli;
mod config;
mod delete_cli;
mod dev;
mod roles;
mod server;
mod telemetry;
mod tokens_cli;
mod views;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc keeps freed memory for reuse: fragment-sized buffers come back without fresh page faults,
/// which cost more than the copies themselves on virtual machines.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "hoard",
    version,
    about = "Hoard: a content-addressed, erasure-coded block store"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the roles a config file names (meta, frontend, volume).
    Server {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a whole cell in one process on loopback.
    Dev(dev::DevArgs),
    /// Store one block (at most 4 MiB) from FILE or stdin (-); prints its hash.
    Put {
        /// File to store, or - for stdin.
        file: String,
        /// Fail unless the bytes hash to this.
        #[arg(long)]
        expect: Option<String>,
        #[command(flatten)]
        ep: cli::EndpointArg,
    },
    /// Read a block to stdout or a file.
    Get {
        hash: String,
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// First byte of a range.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Bytes of a range (0: to the end).
        #[arg(long, default_value_t = 0)]
        length: u64,
        #[command(flatten)]
        ep: cli::EndpointArg,
    },
    /// Show where a block lives and how large it is.
    Stat {
        hash: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ep: cli::EndpointArg,
    },
    /// Print those of the given hashes that the cell does not hold.
    Missing {
        #[arg(required = true)]
        hashes: Vec<String>,
        #[command(flatten)]
        ep: cli::EndpointArg,
    },
    /// Print a delete token: take it before reading the references that decide what to delete.
    DeleteToken {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ep: cli::EndpointArg,
    },
    /// Delete blocks (by hash or a manifest); each is kept if a client was told it is present within
    /// the reference window before the token. Exit status 1 when any was not deleted.
    Delete(delete_cli::DeleteArgs),
    /// Bring deleted blocks back within the delete grace.
    Undelete(delete_cli::UndeleteArgs),
    /// Store a file of any size as 4 MiB blocks; prints the manifest (one hash per line, in order).
    Upload {
        file: PathBuf,
        /// Write the manifest here instead of stdout.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Blocks in flight at once.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        #[command(flatten)]
        ep: cli::EndpointArg,
    },
    /// Rebuild a file from a manifest written by `upload`.
    Download {
        manifest: PathBuf,
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Read fragments straight from the volume servers (they must be reachable from here), one
        /// network hop fewer; any block that cannot be read so comes through the frontend.
        #[arg(long)]
        direct: bool,
        #[command(flatten)]
        ep: cli::EndpointArg,
    },
    /// Operator commands: status, nodes, disks, volumes, repair.
    Admin(admin_cli::AdminArgs),
    /// Make an admin API token and add its (hashed) line to a token file; prints the token.
    AdminToken(tokens_cli::AdminTokenArgs),
    /// Load generator: put, get or mixed blocks against a cell and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Configuration files.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a config file; names every problem with its line.
    Check { file: PathBuf },
    /// Print a commented example config for a role.
    Example {
        #[arg(value_parser = ["meta", "volume", "frontend", "repair"])]
        role: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_role = matches!(cli.cmd, Cmd::Server { .. } | Cmd::Dev(_));
    telemetry::init_logs(&cli.log_format, if is_role { "info" } else { "warn" });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hoard: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(run(cli.cmd));
    // Blocking tasks (file writes) finish or are abandoned; nothing acknowledged depends on them.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    match res {
        Ok(code) => code,
        Err(e) if out::is_broken_pipe(&e) => out::die_of_sigpipe(),
        Err(e) => {
            eprintln!("hoard: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    let mut s = e.to_string();
    for c in e.chain().skip(1) {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
    }
    s.replace('\n', " ")
}

async fn run(cmd: Cmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Server { config } => server::run(&config).await,
        Cmd::Dev(args) => dev::run(args).await,
        Cmd::Put { file, expect, ep } => cli::put(&ep, &file, expect.as_deref()).await,
        Cmd::Get {
            hash,
            output,
            offset,
            length,
            ep,
        } => cli::get(&ep, &hash, output.as_deref(), offset, length).await,
        Cmd::Stat { hash, json, ep } => cli::stat(&ep, &hash, json).await,
        Cmd::Missing { hashes, ep } => cli::missing(&ep, &hashes).await,
        Cmd::DeleteToken { json, ep } => delete_cli::delete_token(&ep, json).await,
        Cmd::Delete(a) => delete_cli::delete(a).await,
        Cmd::Undelete(a) => delete_cli::undelete(a).await,
        Cmd::Upload {
            file,
            output,
            concurrency,
            ep,
        } => cli::upload(&ep, &file, output.as_deref(), concurrency).await,
        Cmd::Download {
            manifest,
            output,
            concurrency,
            direct,
            ep,
        } => cli::download(&ep, &manifest, output.as_deref(), concurrency, direct).await,
        Cmd::Bench(args) => bench::run(args).await,
        Cmd::Admin(args) => admin_cli::run(args).await,
        Cmd::AdminToken(args) => tokens_cli::run(&args),
        Cmd::Config {
            cmd: ConfigCmd::Check { file },
        } => {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| anyhow::anyhow!("config {}: cannot read: {e}", file.display()))?;
            let problems = config::Config::check(&text);
            if problems.is_empty() {
                outln!("{}: ok", file.display())?;
                return Ok(ExitCode::SUCCESS);
            }
            for p in &problems {
                eprintln!("hoard: config {}: {p}", file.display());
            }
            Ok(ExitCode::FAILURE)
        }
        Cmd::Config {
            cmd: ConfigCmd::Example { role },
        } => {
            out!(
                "{}",
                match role.as_str() {
                    "meta" => include_str!("../../../deploy/config/meta.toml"),
                    "volume" => include_str!("../../../deploy/config/volume.toml"),
                    "frontend" => include_str!("../../../deploy/config/frontend.toml"),
                    _ => include_str!("../../../deploy/config/repair.toml"),
                }
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
