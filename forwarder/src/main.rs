//! The `cipgw` command: parses the command line and hands over to the
//! subcommand. Everything else lives in the library and the `cmd` modules.

mod cmd;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cmd::Cli::parse();
    cmd::init_logging(&cli.log);
    match cli.command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cipgw: {err:#}");
            ExitCode::from(cmd::exit_code(&err))
        }
    }
}
