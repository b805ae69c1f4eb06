//! A `cipgw run` process inside a lab's gateway namespace, as the demo,
//! the end-to-end tests and the benchmarks start it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::{LabError, Netns, NsChild};

/// The line `cipgw run` logs once it forwards.
const READY_MARK: &str = "cipgw ready";

/// A running gateway; SIGKILLed on drop if not stopped.
#[derive(Debug)]
pub struct GatewayProcess {
    child: NsChild,
    log: Arc<Mutex<Vec<String>>>,
}

impl GatewayProcess {
    /// Starts `exe run ARGS...` in `ns` and waits until it reports ready.
    /// With `echo_log`, its log lines are copied to this process's stderr
    /// (prefixed `[cipgw]`) as they come.
    pub fn start(
        exe: &Path,
        ns: &Netns,
        args: &[String],
        echo_log: bool,
        ready_within: Duration,
    ) -> Result<GatewayProcess, LabError> {
        Self::start_with(ns.command(exe), args, echo_log, ready_within)
    }

    /// [`GatewayProcess::start`] in a process group of its own, so that a
    /// terminal's Ctrl-C (SIGINT to the foreground group) reaches only the
    /// caller, which then stops the gateway in its own time (the demo).
    pub fn start_own_group(
        exe: &Path,
        ns: &Netns,
        args: &[String],
        echo_log: bool,
        ready_within: Duration,
    ) -> Result<GatewayProcess, LabError> {
        use std::os::unix::process::CommandExt;
        let mut cmd = ns.command(exe);
        cmd.process_group(0);
        Self::start_with(cmd, args, echo_log, ready_within)
    }

    fn start_with(
        mut cmd: std::process::Command,
        args: &[String],
        echo_log: bool,
        ready_within: Duration,
    ) -> Result<GatewayProcess, LabError> {
        cmd.arg("run")
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = NsChild::spawn(&mut cmd)?;
        let stderr = child
            .child_mut()
            .stderr
            .take()
            .ok_or_else(|| LabError::Invalid("gateway stderr was not piped".into()))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        thread::Builder::new()
            .name("cipgw-log".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if echo_log {
                        eprintln!("[cipgw] {line}");
                    }
                    sink.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(line);
                }
            })
            .map_err(|e| LabError::io("spawning the gateway log reader", e))?;

        let mut gw = GatewayProcess { child, log };
        let deadline = Instant::now() + ready_within;
        loop {
            if gw.log().iter().any(|l| l.contains(READY_MARK)) {
                return Ok(gw);
            }
            if let Some(status) = gw.child.try_wait()? {
                // Give the reader a moment to collect the last lines.
                thread::sleep(Duration::from_millis(100));
                return Err(LabError::Invalid(format!(
                    "`{}` exited with {status} before it was ready:\n{}",
                    gw.child.command_line(),
                    gw.log().join("\n")
                )));
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!("`{}` to report ready", gw.child.command_line()),
                    after: ready_within,
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every log line so far.
    pub fn log(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, and the exit status (SIGKILL after `grace`).
    pub fn stop(mut self, grace: Duration) -> Result<ExitStatus, LabError> {
        self.child.terminate(grace)
    }

    /// Sends a signal (e.g. SIGKILL, to simulate a crash).
    pub fn signal(&mut self, signal: libc::c_int) -> Result<(), LabError> {
        self.child.signal(signal)
    }

    /// Waits for the process to exit on its own.
    pub fn wait(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, LabError> {
        self.child.wait_timeout(timeout)
    }
}
