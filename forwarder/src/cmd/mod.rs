//! Subcommands of the `cipgw` binary and what they share: the command line
//! (clap derive: the doc comments are the `--help` text), logging, and exit
//! codes (64 for bad input, as sysexits' EX_USAGE; 1 for everything else).

mod check;
mod conntrack;
mod demo;
mod demo_snat;
mod dns_args;
mod generate;
mod lb;
mod run;
mod services;
mod settings_file;
mod status;
mod view;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// cipgw: a Kubernetes ClusterIP data plane on AF_XDP.
#[derive(Debug, Parser)]
#[command(name = "cipgw", version = cipgw::build_info::VERSION_LINE)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// Log filter (tracing syntax, e.g. `info` or `cipgw=debug`); RUST_LOG
    /// is used when this is not given [default: info].
    #[arg(long, global = true, value_name = "FILTER")]
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
    /// List the flows a running gateway tracks with their state and
    /// expiry, filtered and paged; or delete some (`--delete`).
    Conntrack(conntrack::ConntrackArgs),
    /// Print shell completions for `cipgw` (e.g. `cipgw completions bash >
    /// /etc/bash_completion.d/cipgw`).
    Completions(generate::CompletionsArgs),
    /// Print the man page, in roff (`cipgw man > cipgw.1; man ./cipgw.1`).
    Man(generate::ManArgs),
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
            Command::Completions(args) => generate::completions(args),
            Command::Man(args) => generate::man(args),
        }
    }
}

/// The `--help` section of a flag, by its name: gateway, control,
/// conntrack, I/O tuning, admin, logging. A flag no rule names is a
/// gateway flag, so a new flag needs no entry here to be listed.
fn help_heading(long: &str) -> &'static str {
    const CONTROL: &[&str] = &[
        "config",
        "control-file",
        "kubernetes",
        "kubeconfig",
        "proxy-name",
        "min-sync-period",
    ];
    const IO: &[&str] = &[
        "cores",
        "xdp-mode",
        "busy-poll",
        "rx-batch",
        "ring-size",
        "idle-spin",
        "worker-nice",
        "pass-through",
        "pass-through-peer",
    ];
    if CONTROL.contains(&long) {
        "Control"
    } else if long.starts_with("conntrack-") || long == "state-dir" {
        "Conntrack"
    } else if IO.contains(&long) {
        "I/O tuning"
    } else if long == "admin" || long.starts_with("metrics-") {
        "Admin"
    } else if long.starts_with("log-") {
        "Logging"
    } else {
        "Gateway"
    }
}

/// The command line's definition: the derived one with every flag of
/// `run` and the global ones under their `--help` section.
pub fn command() -> clap::Command {
    fn group(cmd: clap::Command) -> clap::Command {
        let ids: Vec<(clap::Id, &'static str)> = cmd
            .get_arguments()
            .filter_map(|a| Some((a.get_id().clone(), help_heading(a.get_long()?))))
            .collect();
        ids.into_iter().fold(cmd, |cmd, (id, heading)| {
            cmd.mut_arg(id, |a| a.help_heading(heading))
        })
    }
    let cli = group(Cli::command());
    cli.mut_subcommand("run", group)
}

/// Why the command line could not be parsed.
#[derive(Debug)]
pub enum ParseError {
    /// clap's own report (also `--help` and `--version`).
    Clap(clap::Error),
    /// The settings file of `run --config` is unreadable or names an
    /// unknown key.
    SettingsFile(String),
}

/// Parses the command line; for `run --config FILE`, with the file's
/// settings under the flags given (see [`settings_file`]).
pub fn parse(argv: Vec<OsString>) -> Result<Cli, ParseError> {
    let cli = command();
    let matches = cli
        .clone()
        .try_get_matches_from(&argv)
        .map_err(ParseError::Clap)?;
    let config = match matches.subcommand() {
        Some(("run", run)) => run
            .get_one::<PathBuf>("config")
            .map(|path| (path.clone(), run.clone())),
        _ => None,
    };
    let matches = match config {
        None => matches,
        Some((path, given)) => {
            let extra =
                settings_file::file_args(&cli, &path, &given).map_err(ParseError::SettingsFile)?;
            let mut argv = argv;
            argv.extend(extra);
            cli.try_get_matches_from(&argv).map_err(|e| {
                ParseError::SettingsFile(format!(
                    "settings file {}: {}",
                    path.display(),
                    e.render()
                ))
            })?
        }
    };
    Cli::from_arg_matches(&matches).map_err(ParseError::Clap)
}

/// Exit status for bad input (sysexits' EX_USAGE).
pub const EX_USAGE: u8 = 64;

/// Marks an error as the user's input being at fault (exit status 64).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

/// Exit status after SIGINT, as a shell reports a job Ctrl-C ended
/// (128 + SIGINT).
pub const EX_INTERRUPTED: u8 = 130;

/// Marks a command that stopped early because it was interrupted.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

/// The process exit status for an error.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.downcast_ref::<Interrupted>().is_some() {
        return EX_INTERRUPTED;
    }
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

#[cfg(test)]
mod tests;
