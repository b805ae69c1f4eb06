//! The interface between a running source of desired state and the daemon.
//!
//! A source (the control file, [`crate::file_watch`], or the Kubernetes
//! API, [`crate::kube_source`]) runs on a thread of its own and reports to
//! the daemon's control thread through a crossbeam channel of
//! [`SourceEvent`]s; the daemon is synchronous and waits on the channel with
//! `recv_timeout` between its housekeeping. Dropping the [`SourceHandle`]
//! stops the source and joins its thread (within about a second).
//!
//! What a consumer can rely on:
//! - every [`SourceEvent::Table`] is complete and valid, and differs from
//!   the table sent before it: installing it as a whole is always right;
//! - at most one `Table` per `min_sync_period`, and none later than one
//!   period after the change it reflects (see [`crate::coalesce`]);
//! - [`SourceEvent::Synced`] comes once, right after the first `Table`
//!   (a source that is not synced yet must not be reported ready);
//! - [`SourceEvent::Invalid`] comes once per distinct problem, and
//!   [`SourceEvent::Valid`] once when the input has no problem left;
//! - [`SourceEvent::Disconnected`] and [`SourceEvent::Reconnected`]
//!   (Kubernetes only) alternate, `Disconnected` first; while disconnected
//!   no `Table` comes and the last one stays in force.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::SystemTime;

use cipgw_config::ServiceTable;
pub use crossbeam::channel::{Receiver, RecvTimeoutError, Sender};

/// kube-proxy's default `--min-sync-period`: at most one table per second
/// (defined with the other daemon settings).
pub use cipgw_config::settings::DEFAULT_MIN_SYNC_PERIOD;

/// What a source tells the daemon.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceEvent {
    /// A complete, valid new desired state, different from the last one,
    /// with the times of the object changes it is the first to carry (the
    /// start of `cipgw_network_programming_duration_seconds`, one sample
    /// each, as kube-proxy's trigger times): from the Kubernetes API, the
    /// `endpoints.kubernetes.io/last-change-trigger-time` of every
    /// EndpointSlice written since the last table (see
    /// [`crate::kube_source`]). Empty when unknown: the control file
    /// source leaves it empty (the daemon reads the file's modification
    /// time).
    Table(Arc<ServiceTable>, Vec<SystemTime>),
    /// The source's latest input has a problem; the message names the
    /// file or object and the field. A control file with a problem changes
    /// nothing (the last good table stays); from the Kubernetes API the
    /// object at fault is left out of the tables while the rest are still
    /// sent. Sent once per distinct message.
    Invalid { error: String },
    /// Every problem reported by `Invalid` is gone.
    Valid,
    /// The first table has been sent: the first good load of the control
    /// file, or the first full list of both Services and EndpointSlices.
    Synced,
    /// The Kubernetes API cannot be reached (or refuses the watch); the
    /// source retries with backoff and sends no table meanwhile.
    Disconnected { error: String },
    /// The Kubernetes API answers again after `Disconnected`; the watches
    /// resume on their own backoff and send what changed meanwhile.
    Reconnected,
}

/// A channel for [`SourceEvent`]s. Unbounded: a source sends a handful of
/// events per `min_sync_period` at most, so it never needs to wait for the
/// daemon.
pub fn channel() -> (Sender<SourceEvent>, Receiver<SourceEvent>) {
    crossbeam::channel::unbounded()
}

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot watch directory {} of control file {}: {error}", dir.display(), path.display())]
    Watch {
        path: std::path::PathBuf,
        dir: std::path::PathBuf,
        error: notify::Error,
    },
    #[error("cannot read kubeconfig {}: {error}", path.display())]
    Kubeconfig {
        path: std::path::PathBuf,
        error: kube::config::KubeconfigError,
    },
    #[error("no Kubernetes configuration (neither in-cluster nor a kubeconfig): {0}")]
    InferConfig(#[from] kube::config::InferConfigError),
    #[error("cannot create the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("cannot start the {what}: {error}")]
    Thread {
        what: &'static str,
        error: std::io::Error,
    },
}

/// A running source. Dropping it (or [`SourceHandle::stop`]) stops the
/// source and waits for its thread; no event is sent after that.
#[must_use = "dropping the handle stops the source"]
pub struct SourceHandle {
    name: &'static str,
    stop: Option<Box<dyn FnOnce() + Send>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SourceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceHandle")
            .field("name", &self.name)
            .field("running", &!self.is_finished())
            .finish()
    }
}

impl SourceHandle {
    /// `stop` asks the thread to end; it must not block.
    pub(crate) fn new(
        name: &'static str,
        stop: Box<dyn FnOnce() + Send>,
        thread: JoinHandle<()>,
    ) -> Self {
        Self {
            name,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Which source this is (`control file` or `kubernetes`), for logs.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Whether the source's thread has ended (on its own only when the
    /// receiving end of its channel is gone).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().map_or(true, JoinHandle::is_finished)
    }

    /// Stops the source and waits for its thread.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for SourceHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(source = self.name, "source thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropping_the_handle_stops_and_joins() {
        let (stop_tx, stop_rx) = crossbeam::channel::bounded::<()>(1);
        let thread = std::thread::spawn(move || {
            let _ = stop_rx.recv();
        });
        let handle = SourceHandle::new(
            "test",
            Box::new(move || {
                let _ = stop_tx.send(());
            }),
            thread,
        );
        assert!(!handle.is_finished());
        handle.stop();
    }
}
