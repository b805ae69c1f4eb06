//! Subcommands of the `cipgw` binary and what they share: the command line
//! (clap derive: the doc comments are the `--help` text), logging, and exit
//! codes (64 for bad input, as sysexits' EX_USAGE; 1 for everything else).

mod check;
mod demo;
mod run;

use clap::{Parser, Subcommand};

/// cipgw: a Kubernetes ClusterIP data plane on AF_XDP.
#[derive(Debug, Parser)]
#[command(name = "cipgw", version, about)]
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
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway on the given interfaces until SIGINT/SIGTERM.
    Run(run::RunArgs),
    /// Validate a control file and print the resolved service table.
    Check(check::CheckArgs),
    /// Build a namespace lab with three echo Pods behind one ClusterIP,
    /// run the gateway, send requests to the VIP and show who answered.
    Demo(demo::DemoArgs),
}

impl Command {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Run(args) => run::run(args),
            Command::Check(args) => check::check(args),
            Command::Demo(args) => demo::demo(args),
        }
    }
}

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
        64
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
