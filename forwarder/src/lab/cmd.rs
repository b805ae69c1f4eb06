//! Running external commands (`ip`, `ethtool`) with a time bound and an
//! error that names the command line and carries its stderr.

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::LabError;

/// How long one `ip` or `ethtool` invocation may take. They normally take a
/// few milliseconds; this only catches a wedged system.
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

/// The command line as a user would type it, for error messages.
pub(crate) fn command_line(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    line
}

/// Runs `cmd` to completion (stdin closed) and returns its stdout; a non-zero
/// exit, a failure to start or a run longer than [`COMMAND_TIMEOUT`] is an
/// error naming the command.
pub(crate) fn run(cmd: &mut Command) -> Result<String, LabError> {
    run_timeout(cmd, COMMAND_TIMEOUT)
}

/// [`run`] with an explicit time bound.
pub(crate) fn run_timeout(cmd: &mut Command, timeout: Duration) -> Result<String, LabError> {
    let line = command_line(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().map_err(|source| LabError::Spawn {
        cmd: line.clone(),
        source,
    })?;
    let pid = child.id();
    // wait_with_output drains both pipes while waiting, so a chatty command
    // cannot block on a full pipe; it runs on its own thread so that this
    // one can give up after `timeout`.
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name("lab-cmd".into())
        .spawn(move || {
            let _ = tx.send(child.wait_with_output());
        })
        .map_err(|source| LabError::io(format!("spawning a waiter for `{line}`"), source))?;
    let output = match rx.recv_timeout(timeout) {
        Ok(result) => {
            result.map_err(|source| LabError::io(format!("waiting for `{line}`"), source))?
        }
        Err(_) => {
            // The waiter has not reaped the child (it has not exited), so the
            // pid still names it.
            // SAFETY: kill(2) on our own unreaped child; no memory is involved.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            let _ = rx.recv_timeout(Duration::from_secs(5));
            return Err(LabError::Timeout {
                what: format!("`{line}`"),
                after: timeout,
            });
        }
    };
    if !output.status.success() {
        return Err(LabError::Command {
            cmd: line,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `ip ARGS...`.
pub(crate) fn ip(args: &[&str]) -> Result<String, LabError> {
    run(Command::new("ip").args(args))
}
