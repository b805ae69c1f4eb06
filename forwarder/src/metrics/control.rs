//! What the control thread reports about table syncs (counts, the sync
//! duration histogram, the last sync and the last error), written on the
//! control path only and copied for each scrape.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use super::nanos;
use super::Recorder;

/// The outcome of the control plane's last table sync.
#[derive(Debug, Clone)]
pub struct LastSync {
    pub at: SystemTime,
    pub duration: Duration,
    pub ok: bool,
}

/// The control plane's last error.
#[derive(Debug, Clone)]
pub struct LastError {
    pub at: SystemTime,
    pub message: String,
}

#[derive(Debug)]
struct ControlRecord {
    sync_duration: Recorder,
    /// From a change of the source (an EndpointSlice's trigger time, the
    /// control file's modification) to the table that holds it being live.
    programming_duration: Recorder,
    last_sync: Option<LastSync>,
    last_error: Option<LastError>,
}

/// What the control thread reports about table syncs. Written on the
/// control path only.
#[derive(Debug)]
pub struct ControlMetrics {
    syncs_ok: AtomicU64,
    syncs_failed: AtomicU64,
    /// Whether the source is reachable (the API server's watches run, or
    /// the control file reads).
    connected: AtomicBool,
    record: Mutex<ControlRecord>,
}

impl Default for ControlMetrics {
    fn default() -> Self {
        Self {
            syncs_ok: AtomicU64::new(0),
            syncs_failed: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            record: Mutex::new(ControlRecord {
                sync_duration: Recorder::nanos(),
                programming_duration: Recorder::nanos(),
                last_sync: None,
                last_error: None,
            }),
        }
    }
}

/// A copy of [`ControlMetrics`] for one scrape.
#[derive(Debug, Clone)]
pub struct ControlSnapshot {
    pub syncs_ok: u64,
    pub syncs_failed: u64,
    pub sync_duration: Recorder,
    pub programming_duration: Recorder,
    pub connected: bool,
    pub last_sync: Option<LastSync>,
    pub last_error: Option<LastError>,
}

impl ControlMetrics {
    /// Records one sync of the service table from its source (load,
    /// translate, compile, publish) and how it ended:
    /// `control.record_sync(started.elapsed(), &result)`.
    pub fn record_sync<T, E: fmt::Display>(&self, duration: Duration, result: &Result<T, E>) {
        let at = SystemTime::now();
        let mut record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        record.sync_duration.record(nanos(duration));
        record.last_sync = Some(LastSync {
            at,
            duration,
            ok: result.is_ok(),
        });
        match result {
            Ok(_) => {
                // Relaxed: a statistic; nothing else is published with it.
                self.syncs_ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // Relaxed: as above.
                self.syncs_failed.fetch_add(1, Ordering::Relaxed);
                record.last_error = Some(LastError {
                    at,
                    message: format!("{e:#}"),
                });
            }
        }
    }

    /// Records input the source could not turn into a table (an invalid
    /// control file, say): a failed sync with no duration to speak of.
    pub fn record_invalid(&self, error: &dyn fmt::Display) {
        // Relaxed: a statistic.
        self.syncs_failed.fetch_add(1, Ordering::Relaxed);
        self.record_error(error);
    }

    /// Records a control-plane error that is no failed sync (a watch
    /// that lost its API server): only the last error changes.
    pub fn record_error(&self, error: &dyn fmt::Display) {
        let mut record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        record.last_error = Some(LastError {
            at: SystemTime::now(),
            message: format!("{error:#}"),
        });
    }

    /// Records how long a change took from the source to the live table
    /// (kube-proxy's network_programming_duration).
    pub fn record_programming(&self, duration: Duration) {
        let mut record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        record.programming_duration.record(nanos(duration));
    }

    /// Records whether the source is reachable.
    pub fn set_connected(&self, connected: bool) {
        // Relaxed: a gauge, read on its own.
        self.connected.store(connected, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ControlSnapshot {
        let record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        // Relaxed loads: statistics, each read on its own.
        ControlSnapshot {
            syncs_ok: self.syncs_ok.load(Ordering::Relaxed),
            syncs_failed: self.syncs_failed.load(Ordering::Relaxed),
            sync_duration: record.sync_duration.clone(),
            programming_duration: record.programming_duration.clone(),
            // Relaxed: as in `set_connected`.
            connected: self.connected.load(Ordering::Relaxed),
            last_sync: record.last_sync.clone(),
            last_error: record.last_error.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_metrics_keep_the_last_error() {
        let c = ControlMetrics::default();
        c.record_sync::<(), &str>(Duration::from_millis(3), &Ok(()));
        c.record_sync::<(), &str>(Duration::from_millis(40), &Err("services.yaml: bad port"));
        c.record_invalid(&"services.yaml: line 3: bad indentation");
        c.record_error(&"API server unreachable");
        let s = c.snapshot();
        assert_eq!((s.syncs_ok, s.syncs_failed), (1, 2));
        assert_eq!(s.sync_duration.count(), 2);
        assert_eq!(
            s.last_error.map(|e| e.message),
            Some("API server unreachable".to_owned())
        );
        assert_eq!(s.last_sync.map(|l| l.ok), Some(false));
    }
}
