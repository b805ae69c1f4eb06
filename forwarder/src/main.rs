//! The `cipgw` command: parses the command line and hands over to the
//! subcommand. Everything else lives in the library and the `cmd` modules.

mod cmd;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match cmd::Cli::try_parse() {
        Ok(cli) => cli,
        // `--help` and `--version` come back as errors too: clap prints
        // them to standard output, and they are a success. Everything
        // else is a bad command line (64), explained on standard error.
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(cmd::EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    cmd::init_logging(&cli.log);
    match cli.command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cipgw: {err:#}");
            ExitCode::from(cmd::exit_code(&err))
        }
    }
}
