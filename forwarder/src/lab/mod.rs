//! Network-namespace labs: the topologies `cipgw demo`, the end-to-end tests
//! and the benchmarks run the gateway in.
//!
//! A lab is a handful of network namespaces joined by veth pairs and a Linux
//! bridge ([`Topology`]), echo servers that answer with their Pod's name and
//! address ([`EchoServer`]), and client helpers that talk to them from inside
//! a namespace ([`tcp_request`], [`udp_request`], [`ping`]).
//!
//! Invariants every lab keeps (README.md, "Testing"):
//! - Nothing is ever added to the root namespace: namespaces are created with
//!   `ip netns add` and every veth is created inside a lab namespace with its
//!   peer placed directly in another one, so interface names never meet the
//!   root namespace and can be short, fixed and predictable.
//! - Addresses come only from 198.18.0.0/15 (RFC 2544) and, in dual-stack
//!   labs, 2001:2::/48 (RFC 5180); IPv6 is disabled in labs that are not
//!   dual-stack.
//! - Namespace names are `cipgw-<purpose>-<pid>-<n>-<role>`, so parallel runs
//!   never collide and [`remove_stale_namespaces`] can tell which ones a dead
//!   process left behind.
//! - Everything is removed on drop, also while a panic unwinds; a failed
//!   build removes what it had made. Every external command and every wait is
//!   bounded in time.
//!
//! The module uses iproute2 (`ip`) and `ethtool` through
//! [`std::process::Command`]; each failure reports the command line and its
//! stderr ([`LabError`]).

mod client;
mod cluster;
mod cmd;
mod echo;
mod ecmp;
mod gateway;
mod netns;
mod topology;

#[cfg(test)]
mod tests;

use std::io;
use std::process::ExitStatus;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

pub use client::{ping, tcp_request, tcp_session, udp_request};
pub use cluster::{Cluster, ClusterBuilder, ClusterInfo, ClusterIpv6};
pub use echo::EchoServer;
pub use ecmp::{EcmpTopology, Members};
pub use gateway::GatewayProcess;
pub use netns::{remove_stale_namespaces, unique_prefix, Netns, NsChild, NS_PREFIX};
pub use topology::{
    ipv6_of, net6_of, GatewayInfo, IfaceInfo, Ipv6Plan, NodeInfo, Shape, SwitchInfo, Topology,
    TopologyBuilder, TopologyInfo, IPV6_PREFIX_LEN, MAX_PODS,
};

/// Why a lab operation failed, with what a user needs to reproduce it.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// An external command ran and exited unsuccessfully.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        cmd: String,
        status: ExitStatus,
        stderr: String,
    },
    /// An external command could not be started (not installed?).
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: io::Error,
    },
    /// A system call or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// Something did not finish within its time bound.
    #[error("{what} did not finish within {after:?}")]
    Timeout { what: String, after: Duration },
    /// A caller asked for something the lab cannot build.
    #[error("invalid lab request: {0}")]
    Invalid(String),
}

impl LabError {
    fn io(what: impl Into<String>, source: io::Error) -> LabError {
        LabError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Serializes namespace tests within one process: hold the guard for the
/// whole test. These machines have 2 cores and the tests measure
/// reachability with timeouts, so running several topologies at once only
/// makes them flaky. A test that panicked while holding the lock does not
/// poison it for the others.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether namespace tests can run here. Returns `false` after printing why
/// when the process is not root; panics instead when `CI=true`, where these
/// tests must never be skipped.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return true;
    }
    let reason = format!(
        "network-namespace tests need root (effective uid is {euid}): they create namespaces, veths and bridges"
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{reason}; CI=true, so they must not be skipped");
    }
    eprintln!("skipping: {reason}");
    false
}
