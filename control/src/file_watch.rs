//! The control file as a live source: watched, re-read and translated on
//! every change, reported as [`SourceEvent`]s.
//!
//! Change detection has two layers, because neither alone sees everything:
//! - inotify (the `notify` crate) on the file's *directory*, so that an
//!   in-place edit, a truncate-and-write, an atomic rename over the file
//!   and a Kubernetes ConfigMap volume update (a `..data` symlink swapped
//!   by rename) are all seen, even though the last two replace the inode
//!   a watch on the file itself would follow;
//! - a poll of the file's identity (device, inode, size, mtime, ctime)
//!   every [`POLL_EVERY`], for setups where inotify misses events
//!   (overlay and network filesystems, queue overflow).
//!
//! Either only marks the file as changed; the [`Coalescer`] decides when
//! to read it: after [`SETTLE`] without further events (a writer's
//! truncate and its writes arrive as separate events), and at most once
//! per `min_sync_period`. The text read is compared with the last one
//! acted on, so a spurious event costs a read, not a translation.
//!
//! A file that does not parse or validate changes nothing: the last good
//! table stays, and the problem is reported once (`Invalid`, naming the
//! document, object and field). An empty file is treated as a write in
//! progress for [`EMPTY_GRACE`] and then reported, never installed: a file
//! with no Services but a comment is the way to remove them all.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cipgw_config::settings::ServiceCidrs;
use cipgw_config::ServiceTable;
use crossbeam::channel::{Receiver, Sender};
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};

use crate::coalesce::Coalescer;
use crate::file_source::{load_control_text, ControlError};
use crate::source::{SourceError, SourceEvent, SourceHandle};

/// How often the file's identity is polled, as a safety net for inotify.
pub const POLL_EVERY: Duration = Duration::from_secs(1);

/// Quiet time after a change before the file is read.
pub const SETTLE: Duration = Duration::from_millis(50);

/// How long an empty file is taken for a write in progress.
pub const EMPTY_GRACE: Duration = Duration::from_secs(1);

/// The name a Kubernetes ConfigMap volume swaps on every update.
const CONFIGMAP_DATA_LINK: &str = "..data";

/// Starts watching the control file at `path`: it is read at once, then
/// on every change. The first event is `Table` (followed by `Synced`) or
/// `Invalid` (a missing or bad file is reported, not fatal: the source
/// keeps watching). Fails only when the file's directory cannot be
/// watched.
pub fn spawn_file_source(
    path: impl Into<PathBuf>,
    service_cidrs: ServiceCidrs,
    min_sync_period: Duration,
    tx: Sender<SourceEvent>,
) -> Result<SourceHandle, SourceError> {
    spawn(path.into(), service_cidrs, min_sync_period, tx, true)
}

/// [`spawn_file_source`], with inotify or (for tests of the poll) without.
fn spawn(
    path: PathBuf,
    service_cidrs: ServiceCidrs,
    min_sync_period: Duration,
    tx: Sender<SourceEvent>,
    inotify: bool,
) -> Result<SourceHandle, SourceError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let watch_error = |error| SourceError::Watch {
        path: path.clone(),
        dir: dir.clone(),
        error,
    };
    let name = path
        .file_name()
        .ok_or_else(|| {
            watch_error(notify::Error::generic(
                "the path does not name a file in a directory",
            ))
        })?
        .to_owned();

    let (fs_tx, fs_rx) = crossbeam::channel::unbounded();
    let watcher = if inotify {
        let fs_tx = fs_tx.clone();
        let mut watcher = notify::recommended_watcher(move |event| {
            // The receiver is gone only when the source has stopped.
            let _ = fs_tx.send(event);
        })
        .map_err(watch_error)?;
        // Watch before the first read, so that no change between the two
        // is missed.
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(watch_error)?;
        Some(watcher)
    } else {
        None
    };

    let (stop_tx, stop_rx) = crossbeam::channel::bounded::<()>(0);
    let source = FileSource {
        path,
        name,
        service_cidrs,
        tx,
        coalescer: Coalescer::new(min_sync_period, SETTLE),
        fingerprint: None,
        last_text: None,
        empty_since: None,
        recheck_at: None,
        table: None,
        error: None,
        synced: false,
    };
    let thread = std::thread::Builder::new()
        .name("cipgw-file-src".into())
        .spawn(move || {
            // Dropped with the thread: inotify stops with the source.
            let _watcher = watcher;
            // Keeps the channel open when there is no watcher.
            let _fs_tx = fs_tx;
            source.run(&fs_rx, &stop_rx);
        })
        .map_err(|error| SourceError::Thread {
            what: "control-file source",
            error,
        })?;
    Ok(SourceHandle::new(
        "control file",
        // Disconnecting the stop channel wakes the thread.
        Box::new(move || drop(stop_tx)),
        thread,
    ))
}

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Fingerprint {
    /// Of the file `path` leads to (following symlinks); `None` when there
    /// is none.
    fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// The source's state, owned by its thread.
struct FileSource {
    path: PathBuf,
    /// The file's name within its directory, to pick its events.
    name: OsString,
    service_cidrs: ServiceCidrs,
    tx: Sender<SourceEvent>,
    coalescer: Coalescer,
    /// Of the file as last read.
    fingerprint: Option<Fingerprint>,
    /// The text last acted on (`None` after a read error).
    last_text: Option<String>,
    /// Since when the file has been read empty, and when to look again.
    empty_since: Option<Instant>,
    recheck_at: Option<Instant>,
    /// The last table sent.
    table: Option<Arc<ServiceTable>>,
    /// The problem last reported, until the file is good again.
    error: Option<String>,
    synced: bool,
}

type FsEvent = notify::Result<notify::Event>;

impl FileSource {
    fn run(mut self, fs_rx: &Receiver<FsEvent>, stop_rx: &Receiver<()>) {
        if !self.reload(Instant::now()) {
            return;
        }
        let mut next_poll = Instant::now() + POLL_EVERY;
        loop {
            let wake = [self.coalescer.deadline(), self.recheck_at]
                .into_iter()
                .flatten()
                .fold(next_poll, Instant::min);
            let timeout = wake.saturating_duration_since(Instant::now());
            crossbeam::channel::select! {
                recv(stop_rx) -> _ => return,
                recv(fs_rx) -> event => match event {
                    Ok(Ok(event)) => {
                        if self.concerns_file(&event) {
                            self.coalescer.changed(Instant::now());
                        }
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(path = %self.path.display(), %error,
                            "control-file watch error; polling still sees changes");
                        self.coalescer.changed(Instant::now());
                    }
                    // The watcher lives as long as this thread.
                    Err(_) => return,
                },
                default(timeout) => {}
            }
            let now = Instant::now();
            if now >= next_poll {
                next_poll = now + POLL_EVERY;
                if Fingerprint::of(&self.path) != self.fingerprint {
                    self.coalescer.changed(now);
                }
            }
            if self.recheck_at.is_some_and(|at| now >= at) {
                self.recheck_at = None;
                self.coalescer.changed(now);
            }
            if self.coalescer.take_due(now) && !self.reload(now) {
                return;
            }
        }
    }

    /// Whether a directory event may have changed the file.
    fn concerns_file(&self, event: &notify::Event) -> bool {
        if event.need_rescan() || event.paths.is_empty() {
            return true;
        }
        // Opening and reading (our own reads included) change nothing;
        // closing after a write ends one.
        if matches!(event.kind, EventKind::Access(kind)
            if kind != AccessKind::Close(AccessMode::Write))
        {
            return false;
        }
        event.paths.iter().any(|p| {
            p.file_name()
                .is_some_and(|n| n == self.name || n == CONFIGMAP_DATA_LINK)
        })
    }

    /// Reads the file and acts on it. False when the daemon is gone.
    fn reload(&mut self, now: Instant) -> bool {
        // Taken before the read: a change during the read shows up as a
        // different fingerprint at the next poll.
        self.fingerprint = Fingerprint::of(&self.path);
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) => {
                self.last_text = None;
                let error = ControlError::Read {
                    path: self.path.clone(),
                    error,
                };
                return self.invalid(error.to_string());
            }
        };
        if self.last_text.as_deref() == Some(text.as_str()) {
            return true;
        }
        if text.is_empty() {
            let since = *self.empty_since.get_or_insert(now);
            if now < since + EMPTY_GRACE {
                self.recheck_at = Some(since + EMPTY_GRACE);
                return true;
            }
            self.last_text = Some(text);
            return self.invalid(format!(
                "{}: the file is empty; the last good table stays \
                 (a file with only a comment removes every Service)",
                self.path.display()
            ));
        }
        self.empty_since = None;
        self.recheck_at = None;
        let started = Instant::now();
        let result = load_control_text(&text, &self.service_cidrs);
        self.last_text = Some(text);
        match result {
            Ok(table) => {
                tracing::debug!(
                    path = %self.path.display(),
                    services = table.services.len(),
                    took_ms = started.elapsed().as_secs_f64() * 1e3,
                    "control file translated"
                );
                self.good(table)
            }
            Err(error) => self.invalid(ControlError::from_text(&self.path, error).to_string()),
        }
    }

    fn good(&mut self, table: ServiceTable) -> bool {
        if self.table.as_deref() != Some(&table) {
            // The first read is the file as the daemon loaded it at start:
            // not a change worth a line of its own.
            if self.table.is_some() {
                tracing::info!(
                    path = %self.path.display(),
                    services = table.services.len(),
                    "control file changed; new table"
                );
            }
            let table = Arc::new(table);
            self.table = Some(Arc::clone(&table));
            if !self.send(SourceEvent::Table(table, Vec::new())) {
                return false;
            }
        }
        if self.error.take().is_some() {
            tracing::info!(path = %self.path.display(), "control file is valid again");
            if !self.send(SourceEvent::Valid) {
                return false;
            }
        }
        if !self.synced {
            self.synced = true;
            return self.send(SourceEvent::Synced);
        }
        true
    }

    fn invalid(&mut self, error: String) -> bool {
        if self.error.as_ref() == Some(&error) {
            return true;
        }
        // The daemon logs the event, with the source's name: one line.
        tracing::debug!(%error, "control file rejected; the last good table stays");
        self.error = Some(error.clone());
        self.send(SourceEvent::Invalid { error })
    }

    fn send(&self, event: SourceEvent) -> bool {
        self.tx.send(event).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With no inotify events at all, the poll alone picks changes up
    /// within about [`POLL_EVERY`].
    #[test]
    fn poll_alone_sees_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("services.yaml");
        let text = |ip: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{namespace: default, name: web}}\n\
                 spec: {{clusterIP: {ip}, ports: [{{port: 80}}]}}\n"
            )
        };
        std::fs::write(&path, text("198.18.100.1")).expect("write");
        let (tx, rx) = crate::source::channel();
        let cidr = ServiceCidrs::v4_only("198.18.100.0/24".parse().expect("valid"));
        let _source =
            spawn(path.clone(), cidr, Duration::from_millis(100), tx, false).expect("starts");
        let vip = |event| match event {
            Ok(SourceEvent::Table(table, _)) => table.services[0].cluster_ip.vip4(),
            other => panic!("expected a table, got {other:?}"),
        };
        assert_eq!(
            vip(rx.recv_timeout(Duration::from_secs(1))),
            Some("198.18.100.1".parse().expect("valid"))
        );
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(1)),
            Ok(SourceEvent::Synced)
        );
        let started = Instant::now();
        std::fs::write(&path, text("198.18.100.2")).expect("write");
        assert_eq!(
            vip(rx.recv_timeout(POLL_EVERY * 2)),
            Some("198.18.100.2".parse().expect("valid"))
        );
        assert!(started.elapsed() <= POLL_EVERY + Duration::from_millis(500));
    }
}
