//! `weir`: see and steer weir applications — consumer groups, committed offsets and lag,
//! offset resets (state-aware), local state, and the exactly-once verifier.
//!
//! Every verb prints a table by default and JSON with `--output json` (`verify`: `--format
//! json`, its `--output` being the output topic). See
//! docs/offset-management.md.

mod describe;
mod kafka;
mod plan;
mod reset;
mod state;
mod table;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "weir",
    version,
    about = "See and steer weir applications: groups, offsets, lag, resets, state, verification"
)]
struct Cli {
    /// Kafka brokers, host:port[,host:port...].
    #[arg(
        long,
        global = true,
        env = "WEIR_BOOTSTRAP_SERVERS",
        default_value = "localhost:9092"
    )]
    bootstrap_servers: String,
    /// How long to wait for the cluster, in seconds.
    #[arg(long, global = true, default_value_t = 10)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// `--output table|json` (on `verify`, whose `--output` is a topic: `--format`).
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct FormatArg {
    /// `table` for people, `json` for programs.
    #[arg(long = "output", value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Consumer groups.
    #[command(subcommand)]
    Groups(GroupsCommand),
    /// A group's committed offsets: describe, reset.
    #[command(subcommand)]
    Offsets(OffsetsCommand),
    /// Lag per partition of a group (`--watch` to follow it live).
    Lag(describe::LagArgs),
    /// A weir application's local state.
    #[command(subcommand)]
    State(StateCommand),
    /// Checks an output topic against its input, record by record (exactly once?).
    Verify(verify::VerifyArgs),
}

#[derive(Subcommand, Debug)]
enum GroupsCommand {
    /// Every consumer group: state, protocol, members.
    List {
        #[command(flatten)]
        output: FormatArg,
    },
}

#[derive(Subcommand, Debug)]
enum OffsetsCommand {
    /// Per partition: committed, log-start, log-end and last-stable offsets, lag, owner.
    Describe {
        /// The group (a weir application's `application.id`).
        #[arg(long)]
        group: String,
        #[command(flatten)]
        output: FormatArg,
    },
    /// Moves a group's committed offsets (dry run unless --execute).
    Reset(Box<reset::ResetArgs>),
}

#[derive(Subcommand, Debug)]
enum StateCommand {
    /// Per task: the offsets stored with the state, changelog offsets, any pending commit, and
    /// how they compare with the group's offsets in Kafka.
    Inspect {
        /// The application's `state.dir` (it holds `{application.id}/rocksdb`).
        #[arg(long)]
        state_dir: PathBuf,
        /// Which application under the state directory (default: the only one there).
        #[arg(long)]
        application_id: Option<String>,
        /// Do not ask Kafka (no comparison with the group's offsets).
        #[arg(long)]
        offline: bool,
        #[command(flatten)]
        output: FormatArg,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,rdkafka=off,librdkafka=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("weir: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let timeout = Duration::from_secs(cli.timeout);
    let connect = || kafka::Cluster::connect(&cli.bootstrap_servers, timeout);
    match &cli.command {
        Command::Groups(GroupsCommand::List { output }) => {
            describe::groups_list(&connect()?, output.format)
        }
        Command::Offsets(OffsetsCommand::Describe { group, output }) => {
            describe::offsets_describe(&connect()?, group, output.format)
        }
        Command::Offsets(OffsetsCommand::Reset(args)) => {
            reset::run(&connect()?, args, args.output.format)
        }
        Command::Lag(args) => describe::lag(&connect()?, args, args.output.format),
        Command::State(StateCommand::Inspect {
            state_dir,
            application_id,
            offline,
            output,
        }) => {
            let cluster = if *offline { None } else { Some(connect()?) };
            state::inspect(
                cluster.as_ref(),
                state_dir,
                application_id.as_deref(),
                output.format,
            )
        }
        Command::Verify(args) => verify::run(&connect()?, args, args.format),
    }
}
