//! `hoard admin`: operator commands over the admin HTTP API, typed by [`hoard_admin::api`]. Tables by
//! default, JSON with `--json`. One module per family of commands; [`render`] draws the tables.

mod cell;
mod compact;
mod jobs;
mod moves;
pub(crate) mod render;
mod workers;

use std::process::ExitCode;

use hoard_admin::AdminClient;
use serde::Serialize;

#[derive(clap::Args, Debug)]
pub struct AdminArgs {
    /// The admin HTTP address of the process running meta (`hoard dev --admin`, or meta's `[admin]`).
    #[arg(
        long,
        env = "HOARD_ADMIN",
        default_value = "http://127.0.0.1:7780",
        global = true
    )]
    pub admin: String,
    /// The admin token sent with every request (`hoard dev` writes one into DATA/hoard.env).
    #[arg(long, env = "HOARD_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub admin_token: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: AdminCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum AdminCmd {
    /// The cell at a glance: nodes, disks, volumes by state, repair.
    Status,
    /// Volume servers and their heartbeats.
    Nodes,
    /// Disks: fill, state, members.
    Disks,
    /// Volumes: state, members, live bytes.
    Volumes,
    /// The repair daemon's queue and knobs.
    Repair {
        #[command(subcommand)]
        cmd: RepairCmd,
    },
    /// Walk the block index: every block's volume has its members in service at the right generation.
    Verify {
        /// Also read a sample of blocks through the client endpoint and check their BLAKE3.
        #[arg(long)]
        deep: bool,
        /// Share of blocks read with --deep, in percent.
        #[arg(long, default_value_t = 100.0)]
        sample: f64,
        #[command(flatten)]
        ep: crate::cli::EndpointArg,
    },
    /// Take a consistent copy of the metadata tier into NAME, a new directory inside the backup
    /// directory meta's process is configured with (`[admin] backup_dir`).
    Backup { name: String },
    /// Rebuild the block index and the volume table from the disks, after the metadata tier was lost.
    RebuildIndex,
    /// Let a held disk (labelled for another cluster, or holding extents meta does not know) take
    /// new members. What it held is abandoned.
    DeclareEmpty { disk: String },
    /// Even out disk fill: plan, apply, status, pause, resume, cancel.
    Rebalance {
        #[command(subcommand)]
        cmd: RebalanceCmd,
    },
    /// Move every member off a disk or a node, then mark it drained (safe to pull).
    Drain {
        /// `disk` or `node`.
        #[arg(value_parser = ["disk", "node"])]
        what: String,
        id: String,
        /// Wait until drained, with progress.
        #[arg(long)]
        wait: bool,
    },
    /// Let a draining disk or node take members again.
    Undrain {
        #[arg(value_parser = ["disk", "node"])]
        what: String,
        id: String,
    },
    /// Disk scrubbing: every fragment read back and checked on a schedule.
    Scrub {
        #[command(subcommand)]
        cmd: ScrubCmd,
    },
    /// Compaction: sealed volumes of mostly deleted blocks emptied and retired.
    Compact {
        #[command(subcommand)]
        cmd: CompactCmd,
    },
    /// The volume servers' trash: what waits for meta's clearance, and the halt of unlinks.
    Trash {
        #[command(subcommand)]
        cmd: TrashCmd,
    },
    /// The background jobs of the process at --admin: state, progress, throttle; pause, resume,
    /// cancel, throttle.
    Workers {
        #[command(subcommand)]
        cmd: Option<WorkersCmd>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum WorkersCmd {
    /// Every worker with its state, progress and throttle (the default).
    List,
    /// Stop starting units of work (the running one finishes). NAME or every worker under NAME/.
    Pause {
        name: String,
    },
    Resume {
        name: String,
    },
    /// End the worker for good.
    Cancel {
        name: String,
    },
    /// Set a worker's bytes per second (0: unthrottled).
    Throttle {
        name: String,
        #[arg(long)]
        bytes_per_sec: u64,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum RebalanceCmd {
    /// Print the moves that bring every disk within the tolerance of the mean fill.
    Plan {
        /// Percentage points around the mean fill.
        #[arg(long, default_value_t = 10.0)]
        tolerance: f64,
    },
    /// Record the plan's moves and run them (throttled with repair's knobs).
    Apply {
        #[arg(long, default_value_t = 10.0)]
        tolerance: f64,
        /// Wait until every move is done, with progress.
        #[arg(long)]
        wait: bool,
    },
    /// Moves by state, bytes done and total.
    Status,
    Pause,
    Resume,
    /// Drop the moves not started yet.
    Cancel,
}

#[derive(clap::Subcommand, Debug)]
pub enum ScrubCmd {
    /// Per disk: state, progress, corrupt ranges found, age of the last full pass.
    Status,
    /// Start a pass on every disk now.
    Start,
    /// Pause scrubbing (passes resume from their checkpoints).
    Pause,
    /// Resume scrubbing.
    Resume,
    /// Change the pace and the schedule.
    Throttle {
        /// Bytes per second per disk (0: unthrottled).
        #[arg(long)]
        bytes_per_sec: Option<u64>,
        /// Time between full passes of a disk, e.g. 14d.
        #[arg(long, value_parser = humantime::parse_duration)]
        interval: Option<std::time::Duration>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum TrashCmd {
    /// Entries, cleared and waiting (with why), the counters and whether unlinks are halted.
    Status,
    /// Inspect the uncleared entries now (meta does it on its own every half minute).
    Inspect,
    /// Lift a halt of unlinks, once you know why an extent vanished or an inspection failed.
    Resume,
}

#[derive(clap::Subcommand, Debug)]
pub enum CompactCmd {
    /// Knobs, the volume being emptied with progress and ETA, candidates and counters.
    Status,
    /// Look for a volume to compact now (and resume).
    Start {
        /// Wait until no volume over the threshold is left, with progress.
        #[arg(long)]
        wait: bool,
    },
    Pause,
    Resume,
    /// Give up the volume being emptied (what moved stays moved) and pause.
    Cancel,
    /// Change the pace and the threshold.
    Throttle {
        /// Bytes per second of blocks moved (0: unthrottled).
        #[arg(long)]
        bytes_per_sec: Option<u64>,
        /// Blocks moved at once, 1 to 64.
        #[arg(long)]
        concurrency: Option<u32>,
        /// Share of a volume's bytes reclaimable before it is compacted, above 0 and at most 1.
        #[arg(long)]
        threshold: Option<f64>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum RepairCmd {
    /// Queue by priority, bytes done and total, rate, ETA.
    Status,
    /// Stop starting and stepping rebuilds (running steps finish).
    Pause,
    /// Resume rebuilding.
    Resume,
    /// Change the live throttle.
    Throttle {
        /// Rebuilt bytes per second across the cell (0: unthrottled).
        #[arg(long)]
        bytes_per_sec: Option<u64>,
        /// Volumes rebuilt at once.
        #[arg(long)]
        concurrency: Option<u32>,
    },
}

/// Prints `v` as JSON with `--json`, else runs `table`.
fn show<T: Serialize>(json: bool, v: &T, table: impl FnOnce(&T) -> String) -> anyhow::Result<()> {
    if json {
        outln!("{}", serde_json::to_string_pretty(v)?)?;
    } else {
        out!("{}", table(v))?;
    }
    Ok(())
}

pub async fn run(args: AdminArgs) -> anyhow::Result<ExitCode> {
    let api = AdminClient::new(&args.admin).with_token(args.admin_token.clone());
    let json = args.json;
    match &args.cmd {
        AdminCmd::Status | AdminCmd::Nodes | AdminCmd::Disks | AdminCmd::Volumes => {
            cell::run(&api, json, &args.cmd).await
        }
        AdminCmd::Repair { cmd } => cell::repair(&api, json, cmd).await,
        AdminCmd::Scrub { cmd } => cell::scrub(&api, json, cmd).await,
        AdminCmd::DeclareEmpty { disk } => cell::declare_empty(&api, json, disk).await,
        AdminCmd::Verify { deep, sample, ep } => jobs::verify(&api, json, *deep, *sample, ep).await,
        AdminCmd::RebuildIndex => jobs::rebuild_index(&api, json).await,
        AdminCmd::Backup { name } => jobs::backup(&api, json, name).await,
        AdminCmd::Rebalance { cmd } => moves::rebalance(&api, json, cmd).await,
        AdminCmd::Drain { what, id, wait } => moves::drain(&api, json, what, id, *wait).await,
        AdminCmd::Undrain { what, id } => moves::undrain(&api, json, what, id).await,
        AdminCmd::Compact { cmd } => compact::run(&api, json, cmd).await,
        AdminCmd::Trash { cmd } => compact::trash(&api, json, cmd).await,
        AdminCmd::Workers { cmd } => {
            workers::run(&api, json, cmd.as_ref().unwrap_or(&WorkersCmd::List)).await
        }
    }
}
