//! The control-file source on a real filesystem: every way a file gets
//! replaced takes effect within a second, a bad file changes nothing until
//! it is fixed, and a burst of writes costs a few tables, the last of
//! which is the final state.
//!
//! Each test works in its own temporary directory. Versions of the file
//! differ in the endpoints' port (`1000 + version`), so a table says which
//! version it came from.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cipgw_config::settings::ServiceCidrs;
use cipgw_config::{ServiceName, ServiceTable};
use cipgw_control::source::{channel, Receiver, SourceEvent, DEFAULT_MIN_SYNC_PERIOD};
use cipgw_control::{spawn_file_source, SourceHandle};

/// How fast a change must take effect.
const TAKES_EFFECT: Duration = Duration::from_secs(1);

fn cidr() -> ServiceCidrs {
    ServiceCidrs::v4_only("198.18.100.0/24".parse().expect("valid"))
}

/// A control file whose endpoints listen on `1000 + version`; the same
/// length for every version below 9000, so in-place edits overwrite it
/// exactly.
fn control_text(version: u16) -> String {
    let port = 1000 + version;
    format!(
        "\
apiVersion: v1
kind: Service
metadata: {{namespace: default, name: web}}
spec:
  clusterIP: 198.18.100.20
  ports: [{{name: http, port: 80, targetPort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  namespace: default
  name: web-1
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: {port}}}]
endpoints:
- addresses: [198.18.3.1]
- addresses: [198.18.3.2]
"
    )
}

/// The version a table was built from.
fn version(table: &ServiceTable) -> u16 {
    let web = table
        .get(&ServiceName::new("default", "web"))
        .expect("default/web is listed");
    web.ports[0].endpoints[0].port - 1000
}

/// A file source over a temporary directory.
struct Fixture {
    dir: tempfile::TempDir,
    path: PathBuf,
    rx: Receiver<SourceEvent>,
    source: Option<SourceHandle>,
}

impl Fixture {
    /// Writes version 0 and starts the source; checks the first events.
    fn start(period: Duration) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("services.yaml");
        std::fs::write(&path, control_text(0)).expect("write");
        let mut fixture = Self::start_at(dir, path, period);
        let table = fixture.table_within(TAKES_EFFECT);
        assert_eq!(version(&table), 0);
        assert_eq!(fixture.next_within(TAKES_EFFECT), Some(SourceEvent::Synced));
        fixture
    }

    fn start_at(dir: tempfile::TempDir, path: PathBuf, period: Duration) -> Self {
        let (tx, rx) = channel();
        let source = spawn_file_source(&path, cidr(), period, tx).expect("source starts");
        Self {
            dir,
            path,
            rx,
            source: Some(source),
        }
    }

    fn next_within(&mut self, timeout: Duration) -> Option<SourceEvent> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// The next event, which must be a table, within `timeout`.
    fn table_within(&mut self, timeout: Duration) -> Arc<ServiceTable> {
        match self.next_within(timeout) {
            Some(SourceEvent::Table(table, _)) => table,
            other => panic!("expected a table within {timeout:?}, got {other:?}"),
        }
    }

    /// Every event within `duration`.
    fn events_during(&mut self, duration: Duration) -> Vec<SourceEvent> {
        let end = Instant::now() + duration;
        let mut events = Vec::new();
        while let Ok(event) = self
            .rx
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            events.push(event);
        }
        events
    }

    /// Waits out the period since the last table, so that the next change
    /// is not held back by coalescing.
    fn quiet(&mut self, period: Duration) {
        let events = self.events_during(period + Duration::from_millis(100));
        assert!(events.is_empty(), "unexpected events: {events:?}");
    }
}

/// Overwrites the file's bytes without truncating or replacing it.
fn edit_in_place(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for writing");
    file.seek(SeekFrom::Start(0)).expect("seek");
    file.write_all(text.as_bytes()).expect("write");
    file.set_len(text.len() as u64).expect("set length");
}

/// Truncates the file, then writes it in two parts with a pause between,
/// as a slow writer does.
fn truncate_and_write(path: &Path, text: &str) {
    let mut file = std::fs::File::create(path).expect("create");
    file.flush().expect("flush");
    std::thread::sleep(Duration::from_millis(10));
    let (a, b) = text.split_at(text.len() / 2);
    file.write_all(a.as_bytes()).expect("write");
    std::thread::sleep(Duration::from_millis(10));
    file.write_all(b.as_bytes()).expect("write");
}

/// Writes a temporary file beside it and renames it over the file.
fn atomic_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

#[test]
fn every_way_of_replacing_the_file_takes_effect_within_a_second() {
    let period = DEFAULT_MIN_SYNC_PERIOD;
    let mut f = Fixture::start(period);
    type Write = fn(&Path, &str);
    let cases: [(&str, Write); 3] = [
        ("in-place edit", edit_in_place),
        ("truncate and write", truncate_and_write),
        ("atomic rename", atomic_rename),
    ];
    for (i, (name, write)) in cases.into_iter().enumerate() {
        f.quiet(period);
        let wanted = i as u16 + 1;
        let started = Instant::now();
        write(&f.path, &control_text(wanted));
        let table = f.table_within(TAKES_EFFECT);
        let took = started.elapsed();
        assert_eq!(version(&table), wanted, "{name}: the table is the new file");
        assert!(took <= TAKES_EFFECT, "{name}: took {took:?}");
        eprintln!("{name}: took effect after {took:?}");
    }
    // Nothing but the tables: no half-written file was ever installed or
    // reported.
    f.quiet(period);
}

#[test]
fn invalid_file_changes_nothing_until_fixed() {
    let period = Duration::from_millis(200);
    let mut f = Fixture::start(period);
    f.quiet(period);

    // A field error: reported once, naming document, object and field.
    let bad = control_text(1).replace("port: 80,", "port: 70000,");
    atomic_rename(&f.path, &bad);
    let error = match f.next_within(TAKES_EFFECT) {
        Some(SourceEvent::Invalid { error }) => error,
        other => panic!("expected Invalid, got {other:?}"),
    };
    assert!(
        error.ends_with(
            "document 1 (Service default/web): spec.ports[0].port: 70000 is out of range 1-65535"
        ),
        "{error}"
    );
    assert!(error.starts_with(&f.path.display().to_string()), "{error}");
    // Rewritten with the same problem: not reported again, no table.
    edit_in_place(&f.path, &format!("# still bad\n{bad}"));
    let events = f.events_during(3 * period);
    assert!(events.is_empty(), "unexpected events: {events:?}");

    // Broken YAML: a new problem, reported.
    atomic_rename(&f.path, "apiVersion: v1\nkind: [Service\n");
    match f.next_within(TAKES_EFFECT) {
        Some(SourceEvent::Invalid { error }) => {
            assert!(error.contains("document 1, line "), "{error}")
        }
        other => panic!("expected Invalid, got {other:?}"),
    }

    // Fixed: the new table, then the all-clear.
    atomic_rename(&f.path, &control_text(2));
    assert_eq!(version(&f.table_within(TAKES_EFFECT)), 2);
    assert_eq!(f.next_within(TAKES_EFFECT), Some(SourceEvent::Valid));

    // Broken and then restored to the very table in force: no table (it
    // has not changed), but the all-clear.
    atomic_rename(&f.path, "kind: [\n");
    assert!(matches!(
        f.next_within(TAKES_EFFECT),
        Some(SourceEvent::Invalid { .. })
    ));
    atomic_rename(&f.path, &control_text(2));
    assert_eq!(f.next_within(TAKES_EFFECT), Some(SourceEvent::Valid));
    f.quiet(period);
}

#[test]
fn two_hundred_quick_changes_give_few_tables_ending_with_the_last() {
    let period = DEFAULT_MIN_SYNC_PERIOD;
    let mut f = Fixture::start(period);
    f.quiet(period);
    let started = Instant::now();
    for v in 1..=200 {
        // Alternate the ways of writing; all are seen.
        match v % 3 {
            0 => edit_in_place(&f.path, &control_text(v)),
            1 => atomic_rename(&f.path, &control_text(v)),
            _ => std::fs::write(&f.path, control_text(v)).expect("write"),
        }
        // About 1.5 periods in all, so that the period caps the wait.
        std::thread::sleep(Duration::from_millis(7));
    }
    let writing = started.elapsed();
    let events = f.events_during(2 * period + Duration::from_millis(500));
    let tables: Vec<u16> = events
        .iter()
        .map(|e| match e {
            SourceEvent::Table(table, _) => version(table),
            other => panic!("only tables expected, got {other:?}"),
        })
        .collect();
    eprintln!("200 writes in {writing:?} gave tables of versions {tables:?}");
    assert_eq!(
        tables.last(),
        Some(&200),
        "the last table is the final state"
    );
    let most = writing.as_millis() / period.as_millis() + 2;
    assert!(
        tables.len() as u128 <= most,
        "at most one table per period: {tables:?}"
    );
}

#[test]
fn empty_file_is_never_installed() {
    let period = Duration::from_millis(200);
    let mut f = Fixture::start(period);
    f.quiet(period);
    // Truncated and left empty: a write in progress at first, then a
    // problem; never an empty table.
    std::fs::File::create(&f.path).expect("truncate");
    match f.next_within(Duration::from_secs(3)) {
        Some(SourceEvent::Invalid { error }) => assert!(error.contains("empty"), "{error}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    // A file with only a comment is a table without Services.
    std::fs::write(&f.path, "# nothing served\n").expect("write");
    let table = f.table_within(TAKES_EFFECT);
    assert!(table.services.is_empty());
    assert_eq!(f.next_within(TAKES_EFFECT), Some(SourceEvent::Valid));
}

#[test]
fn deleted_file_is_reported_and_a_new_one_is_picked_up() {
    let period = Duration::from_millis(200);
    let mut f = Fixture::start(period);
    f.quiet(period);
    std::fs::remove_file(&f.path).expect("remove");
    match f.next_within(TAKES_EFFECT) {
        Some(SourceEvent::Invalid { error }) => {
            assert!(error.starts_with("cannot read control file"), "{error}")
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    std::fs::write(&f.path, control_text(3)).expect("write");
    assert_eq!(version(&f.table_within(TAKES_EFFECT)), 3);
    assert_eq!(f.next_within(TAKES_EFFECT), Some(SourceEvent::Valid));
}

/// A ConfigMap volume: the file is a symlink through `..data`, and an
/// update swaps `..data` by rename; the file's own name sees no event.
#[test]
fn configmap_volume_update_is_seen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_owned();
    let publish = |version: u16, name: &str| {
        let data = root.join(name);
        std::fs::create_dir(&data).expect("mkdir");
        std::fs::write(data.join("services.yaml"), control_text(version)).expect("write");
        std::os::unix::fs::symlink(name, root.join("..data_tmp")).expect("symlink");
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).expect("swap");
    };
    publish(0, "..2026_01_01_00_00_00.1");
    std::os::unix::fs::symlink("..data/services.yaml", root.join("services.yaml"))
        .expect("symlink");
    let path = root.join("services.yaml");
    let period = Duration::from_millis(200);
    let mut f = Fixture::start_at(dir, path, period);
    assert_eq!(version(&f.table_within(TAKES_EFFECT)), 0);
    assert_eq!(f.next_within(TAKES_EFFECT), Some(SourceEvent::Synced));
    f.quiet(period);
    let started = Instant::now();
    publish(4, "..2026_01_01_00_00_01.2");
    assert_eq!(version(&f.table_within(TAKES_EFFECT)), 4);
    assert!(started.elapsed() <= TAKES_EFFECT);
    assert!(f.dir.path().exists());
}

#[test]
fn first_event_of_a_bad_file_is_invalid_and_a_missing_directory_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("services.yaml");
    std::fs::write(&path, "kind: [\n").expect("write");
    let mut f = Fixture::start_at(dir, path, DEFAULT_MIN_SYNC_PERIOD);
    assert!(matches!(
        f.next_within(TAKES_EFFECT),
        Some(SourceEvent::Invalid { .. })
    ));

    let (tx, _rx) = channel();
    let error = spawn_file_source(
        "/nonexistent-cipgw-dir/services.yaml",
        cidr(),
        DEFAULT_MIN_SYNC_PERIOD,
        tx,
    )
    .expect_err("no directory to watch");
    assert!(
        error
            .to_string()
            .starts_with("cannot watch directory /nonexistent-cipgw-dir"),
        "{error}"
    );
}

#[test]
fn dropping_the_handle_stops_the_source_promptly() {
    let mut f = Fixture::start(DEFAULT_MIN_SYNC_PERIOD);
    let source = f.source.take().expect("running");
    assert!(!source.is_finished());
    let started = Instant::now();
    drop(source);
    assert!(started.elapsed() < Duration::from_secs(1));
    // The source's end of the channel is gone with it.
    assert!(matches!(
        f.rx.recv_timeout(Duration::from_millis(100)),
        Err(cipgw_control::source::RecvTimeoutError::Disconnected)
    ));
}
