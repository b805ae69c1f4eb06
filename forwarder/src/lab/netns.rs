//! Named network namespaces as RAII guards, and running code in them: a
//! closure on a fresh thread that has joined the namespace, or a child
//! process under `ip netns exec`.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::cmd::{self, command_line};
use super::LabError;

/// First component of every lab namespace name.
pub const NS_PREFIX: &str = "cipgw";

/// Where `ip netns add` bind-mounts named namespaces.
const NETNS_DIR: &str = "/var/run/netns";

/// How long teardown waits for processes in a namespace to die.
const KILL_WAIT: Duration = Duration::from_secs(3);

/// A fresh name stem `cipgw-<purpose>-<pid>-<n>`, unique within this process
/// (n counts up) and across processes (pid). Append `-<role>` per namespace.
/// `purpose` is 1 to 12 lowercase letters or digits, so the pid is always the
/// third `-`-separated field (see [`remove_stale_namespaces`]).
pub fn unique_prefix(purpose: &str) -> Result<String, LabError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let valid = (1..=12).contains(&purpose.len())
        && purpose
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !valid {
        return Err(LabError::Invalid(format!(
            "lab purpose {purpose:?} must be 1 to 12 lowercase letters or digits"
        )));
    }
    // Relaxed: the counter only has to hand out distinct values.
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(format!("{NS_PREFIX}-{purpose}-{}-{n}", std::process::id()))
}

/// A named network namespace (`ip netns add`), deleted on drop after killing
/// every process still inside it. Loopback is up from the start.
#[derive(Debug)]
pub struct Netns {
    name: String,
    removed: bool,
}

impl Netns {
    /// Creates namespace `name` and brings its loopback up. Fails if the name
    /// is taken.
    pub fn create(name: impl Into<String>) -> Result<Netns, LabError> {
        let name = name.into();
        if name.is_empty() || name.len() > 200 || name.contains('/') || name.starts_with('.') {
            return Err(LabError::Invalid(format!(
                "namespace name {name:?} must be 1 to 200 characters without '/' and not start with '.'"
            )));
        }
        cmd::ip(&["netns", "add", &name])?;
        // From here on the guard owns the namespace, so an error below
        // removes it again.
        let ns = Netns {
            name,
            removed: false,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind-mounted namespace file, for `setns`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Runs `ip -n NAME ARGS...` and returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String, LabError> {
        let mut command = Command::new("ip");
        command.arg("-n").arg(&self.name).args(args);
        cmd::run(&mut command)
    }

    /// A command that runs `program` inside the namespace
    /// (`ip netns exec NAME program`); add arguments, environment and stdio,
    /// then run it, or spawn it with [`NsChild::spawn`].
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .arg("netns")
            .arg("exec")
            .arg(&self.name)
            .arg(program);
        command
    }

    /// Runs `program ARGS...` inside the namespace to completion (bounded) and
    /// returns its stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, LabError> {
        cmd::run(self.command(program).args(args))
    }

    /// Starts `program ARGS...` inside the namespace; the process is killed
    /// when the returned guard drops.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Result<NsChild, LabError> {
        NsChild::spawn(self.command(program).args(args))
    }

    /// Runs `f` on a fresh thread that has joined this namespace, and returns
    /// its result. Sockets `f` creates belong to the namespace and keep
    /// working after they are moved out. A panic in `f` is resumed here.
    pub fn run<T, F>(&self, f: F) -> Result<T, LabError>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let file = self.open()?;
        thread::scope(|scope| {
            let worker = thread::Builder::new()
                .name(format!("netns:{}", self.name))
                .spawn_scoped(scope, move || {
                    enter(&file)?;
                    Ok(f())
                })
                .map_err(|e| LabError::io("spawning a namespace thread", e))?;
            match worker.join() {
                Ok(result) => {
                    result.map_err(|e| LabError::io(format!("entering {}", self.name), e))
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// [`Netns::run`] for closures that themselves return a lab result, such
    /// as the client helpers: `ns.try_run(|| tcp_request(...))`.
    pub fn try_run<T, F>(&self, f: F) -> Result<T, LabError>
    where
        F: FnOnce() -> Result<T, LabError> + Send,
        T: Send,
    {
        self.run(f)?
    }

    /// Starts a long-running thread inside this namespace. Returns once the
    /// thread has joined the namespace, so a failure to enter is reported
    /// here rather than inside the thread.
    pub fn spawn_thread<T, F>(&self, name: &str, f: F) -> Result<JoinHandle<T>, LabError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let file = self.open()?;
        let (entered_tx, entered_rx) = mpsc::channel();
        let handle = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let entered = enter(&file);
                drop(file);
                let ok = entered.is_ok();
                let _ = entered_tx.send(entered);
                if !ok {
                    // The caller reports the error; this thread has nothing
                    // to run and must not run `f` in the wrong namespace.
                    panic!("thread did not enter its network namespace");
                }
                f()
            })
            .map_err(|e| LabError::io("spawning a namespace thread", e))?;
        match entered_rx.recv() {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(e)) => {
                let _ = handle.join();
                Err(LabError::io(format!("entering {}", self.name), e))
            }
            Err(_) => Err(LabError::Invalid(format!(
                "thread for {} ended before entering it",
                self.name
            ))),
        }
    }

    /// Sets one sysctl (`net.ipv4.ip_forward`, ...) inside the namespace.
    /// `/proc/sys/net` resolves against the writing thread's namespace.
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<(), LabError> {
        self.set_sysctls(&[(key, value)])
    }

    /// Sets several sysctls inside the namespace from one thread. Keys under
    /// `net.ipv6` are skipped when the kernel has IPv6 disabled entirely.
    pub fn set_sysctls(&self, settings: &[(&str, &str)]) -> Result<(), LabError> {
        let ns = self.name.clone();
        self.try_run(move || {
            for (key, value) in settings {
                let path = Path::new("/proc/sys").join(key.replace('.', "/"));
                if key.starts_with("net.ipv6.") && !Path::new("/proc/sys/net/ipv6").exists() {
                    continue;
                }
                std::fs::write(&path, value).map_err(|e| {
                    LabError::io(format!("setting {key}={value} in namespace {ns}"), e)
                })?;
            }
            Ok(())
        })
    }

    /// Reads one sysctl inside the namespace (trimmed).
    pub fn sysctl(&self, key: &str) -> Result<String, LabError> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        let ns = self.name.clone();
        self.try_run(move || {
            std::fs::read_to_string(&path)
                .map(|s| s.trim().to_owned())
                .map_err(|e| LabError::io(format!("reading {key} in namespace {ns}"), e))
        })
    }

    /// Processes whose network namespace this is (`ip netns pids`), this
    /// process excluded.
    pub fn pids(&self) -> Result<Vec<libc::pid_t>, LabError> {
        pids_in(&self.name)
    }

    /// Removes the namespace now, reporting failures that drop can only log.
    pub fn remove(mut self) -> Result<(), LabError> {
        self.removed = true;
        remove_named(&self.name)
    }

    fn open(&self) -> Result<File, LabError> {
        let path = self.path();
        File::open(&path).map_err(|e| LabError::io(format!("opening {}", path.display()), e))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        self.removed = true;
        if let Err(error) = remove_named(&self.name) {
            tracing::warn!(ns = %self.name, %error, "lab namespace teardown failed");
            eprintln!(
                "cipgw lab: removing namespace {} failed: {error}",
                self.name
            );
        }
    }
}

/// Moves the calling thread into the namespace behind `file`.
fn enter(file: &File) -> std::io::Result<()> {
    // SAFETY: `file` is an open namespace file for the whole call; setns only
    // changes the calling thread's network namespace and touches no memory.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn pids_in(name: &str) -> Result<Vec<libc::pid_t>, LabError> {
    let own = std::process::id() as libc::pid_t;
    let out = cmd::ip(&["netns", "pids", name])?;
    Ok(out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|&p| p != own)
        .collect())
}

/// Kills what runs inside namespace `name` (bounded), then deletes it.
fn remove_named(name: &str) -> Result<(), LabError> {
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        let pids = pids_in(name)?;
        if pids.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout {
                what: format!("killing processes {pids:?} in namespace {name}"),
                after: KILL_WAIT,
            });
        }
        for pid in pids {
            // SAFETY: kill(2) touches no memory. The pid was just listed as
            // living in a namespace only this process creates and uses.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        thread::sleep(Duration::from_millis(20));
    }
    cmd::ip(&["netns", "del", name]).map(drop)
}

/// Deletes lab namespaces (`cipgw-<purpose>-<pid>-...`) whose creating
/// process no longer exists, e.g. after a test run was killed, and returns
/// their names. Namespaces of live processes are left alone.
pub fn remove_stale_namespaces() -> Result<Vec<String>, LabError> {
    let listing = cmd::ip(&["netns", "list"])?;
    let mut removed = Vec::new();
    for name in listing.lines().filter_map(|l| l.split_whitespace().next()) {
        let mut fields = name.split('-');
        if fields.next() != Some(NS_PREFIX) {
            continue;
        }
        let Some(pid) = fields.nth(1).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        remove_named(name)?;
        removed.push(name.to_owned());
    }
    Ok(removed)
}

/// A child process (usually under `ip netns exec`, which execs the program
/// itself, so the pid is the program's). Killed and reaped on drop.
#[derive(Debug)]
pub struct NsChild {
    child: Child,
    line: String,
}

impl NsChild {
    /// Spawns `cmd` as given (stdio as configured on it).
    pub fn spawn(cmd: &mut Command) -> Result<NsChild, LabError> {
        let line = command_line(cmd);
        let child = cmd.spawn().map_err(|source| LabError::Spawn {
            cmd: line.clone(),
            source,
        })?;
        Ok(NsChild { child, line })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The command line it was started with.
    pub fn command_line(&self) -> &str {
        &self.line
    }

    /// The underlying child, e.g. to take its stdout.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Its exit status if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, LabError> {
        self.child
            .try_wait()
            .map_err(|e| LabError::io(format!("waiting for `{}`", self.line), e))
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` unless it has already been reaped.
    pub fn signal(&mut self, signal: libc::c_int) -> Result<(), LabError> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        // SAFETY: kill(2) touches no memory; the child is not reaped yet, so
        // its pid cannot have been reused.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        if rc != 0 {
            return Err(LabError::io(
                format!("signalling `{}`", self.line),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it has not exited after `grace`; returns the
    /// exit status.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus, LabError> {
        self.signal(libc::SIGTERM)?;
        if let Some(status) = self.wait_timeout(grace)? {
            return Ok(status);
        }
        self.signal(libc::SIGKILL)?;
        self.wait_timeout(KILL_WAIT)?
            .ok_or_else(|| LabError::Timeout {
                what: format!("`{}` to exit after SIGKILL", self.line),
                after: KILL_WAIT,
            })
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.wait_timeout(KILL_WAIT);
        }
    }
}
