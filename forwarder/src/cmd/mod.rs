//! Subcommands of the `cipgw` binary and what they share: the command line
//! (clap derive: the doc comments are the `--help` text), logging, and exit
//! codes (64 for bad input, as sysexits' EX_USAGE; 1 for everything else).

mod check;
mod conntrack;
mod demo;
mod dns_args;
mod run;
mod services;
mod status;
mod view;

use clap::{Parser, Subcommand};

/// cipgw: a Kubernetes ClusterIP data plane on AF_XDP.
#[derive(Debug, Parser)]
#[command(name = "cipgw", version)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// Log filter (tracing syntax, e.g. `info` or `cipgw=debug`); RUST_LOG
    /// is used when this is not given.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// Log line format: `text` for people, `json` (one object per line)
    /// for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway on the given interfaces until SIGINT/SIGTERM.
    // Boxed: the run flags dwarf every other command's.
    Run(Box<run::RunArgs>),
    /// Validate a control file and print the resolved service table.
    Check(check::CheckArgs),
    /// Build a namespace lab with three echo Pods behind one ClusterIP,
    /// run the gateway, send requests to the VIP and show who answered.
    Demo(demo::DemoArgs),
    /// Show a running gateway's state, counters and latencies (from its
    /// admin endpoint).
    Status(status::StatusArgs),
    /// List the Services a running gateway forwards, with their
    /// endpoints, states and counters (like `ipvsadm -Ln --stats`).
    Services(services::ServicesArgs),
    /// List the flows a running gateway tracks, filtered and paged.
    Conntrack(conntrack::ConntrackArgs),
}

impl Command {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Run(args) => run::run(*args),
            Command::Check(args) => check::check(args),
            Command::Demo(args) => demo::demo(args),
            Command::Status(args) => status::status(args),
            Command::Services(args) => services::services(args),
            Command::Conntrack(args) => conntrack::conntrack(args),
        }
    }
}

/// Exit status for bad input (sysexits' EX_USAGE).
pub const EX_USAGE: u8 = 64;

/// Marks an error as the user's input being at fault (exit status 64).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// The process exit status for an error.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    let bad_input = err.downcast_ref::<BadInput>().is_some()
        || err
            .downcast_ref::<cipgw_control::file_source::ControlError>()
            .is_some();
    if bad_input {
        EX_USAGE
    } else {
        1
    }
}

pub fn init_logging(args: &LogArgs) {
    use tracing_subscriber::EnvFilter;
    let filter = match &args.log_level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
    }
}
