//! The `cipgw` command: parses the command line and hands over to the
//! subcommand. Everything else lives in the library and the `cmd` modules.

mod cmd;

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match cmd::parse(std::env::args_os().collect()) {
        Ok(cli) => cli,
        // `--help` and `--version` come back as errors too: clap prints
        // them to standard output, and they are a success. Everything
        // else is a bad command line (64), explained on standard error.
        Err(cmd::ParseError::Clap(err)) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(cmd::EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
        Err(cmd::ParseError::SettingsFile(message)) => {
            eprintln!("cipgw: {message}");
            return ExitCode::from(cmd::EX_USAGE);
        }
    };
    let json = cli.log.log_format == cmd::LogFormat::Json;
    cmd::init_logging(&cli.log);
    match cli.command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Under `--log-format json` the last word is a log line like
            // every other, so that collectors parse it.
            if json {
                tracing::error!(error = %format!("{err:#}"), "cipgw stopped");
            } else {
                eprintln!("cipgw: {err:#}");
            }
            ExitCode::from(cmd::exit_code(&err))
        }
    }
}
