//! A fake Kubernetes API server for the two resources cipgw watches, v1
//! Services and discovery.k8s.io/v1 EndpointSlices (all namespaces),
//! speaking the real wire protocol over plain HTTP/1.1 on 127.0.0.1 so
//! that the real kube client runs against it:
//!
//! - `GET /api/v1/services` and `GET /apis/discovery.k8s.io/v1/endpointslices`
//!   list: `{kind: ServiceList, metadata: {resourceVersion}, items}`, items
//!   without kind/apiVersion as the real server sends them, each with its
//!   own `metadata.resourceVersion`; `limit` and `continue` page a snapshot
//!   taken at the first page;
//! - `?watch=true&resourceVersion=N` streams newline-delimited JSON watch
//!   events (`ADDED`, `MODIFIED`, `DELETED`, and `BOOKMARK` every
//!   [`BOOKMARK_EVERY`] when `allowWatchBookmarks=true`) in a chunked
//!   response, from the history after N; `timeoutSeconds` ends the stream
//!   cleanly;
//! - a resourceVersion older than the last compaction is answered the way
//!   the real server does, with an `ERROR` event carrying a `Status` of
//!   code 410 (reason `Expired`), which forces the client to relist;
//! - `GET /version`.
//!
//! One resourceVersion counter spans both resources, as etcd's revision
//! does. An EndpointSlice applied without an
//! `endpoints.kubernetes.io/last-change-trigger-time` annotation gets one,
//! the time of the apply, as the EndpointSlice controller stamps the
//! slices it writes with the time of the change behind them. Test controls: [`FakeApiServer::apply`] and
//! [`FakeApiServer::delete`] mutate objects; [`FakeApiServer::compact`]
//! forgets history; [`FakeApiServer::expire_watches`] sends 410 on every
//! open watch; [`FakeApiServer::drop_watches`] cuts every open watch
//! without a proper end; [`FakeApiServer::stop`] and
//! [`FakeApiServer::restart`] take the server away and bring it back on
//! the same port, with its objects and history.
//!
//! Everything is std threads and blocking sockets, with every wait
//! bounded: a connection thread re-checks the server's state at least
//! every [`POLL`].

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How often open watches get a BOOKMARK (the real server: about once a
/// minute; often here, so that the client's bookmark path is exercised).
pub const BOOKMARK_EVERY: Duration = Duration::from_millis(500);

/// Longest time a connection thread waits before looking at the server's
/// state again.
const POLL: Duration = Duration::from_millis(50);

/// The EndpointSlice controller's stamp of the change behind a write.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The current time as RFC 3339 with nanoseconds, as the API server
/// writes times.
fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970");
    let seconds = i64::try_from(now.as_secs()).expect("seconds fit");
    let nanos = i32::try_from(now.subsec_nanos()).expect("nanoseconds fit");
    k8s_openapi::jiff::Timestamp::new(seconds, nanos)
        .expect("now is a valid timestamp")
        .to_string()
}

/// Page snapshots kept for `continue` tokens.
const MAX_SNAPSHOTS: usize = 64;

/// The resources served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resource {
    Services,
    EndpointSlices,
}

impl Resource {
    const ALL: [Resource; 2] = [Resource::Services, Resource::EndpointSlices];

    fn path(self) -> &'static str {
        match self {
            Resource::Services => "/api/v1/services",
            Resource::EndpointSlices => "/apis/discovery.k8s.io/v1/endpointslices",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Resource::Services => "v1",
            Resource::EndpointSlices => "discovery.k8s.io/v1",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Resource::Services => "Service",
            Resource::EndpointSlices => "EndpointSlice",
        }
    }

    fn of_kind(kind: &str) -> Self {
        match kind {
            "Service" => Resource::Services,
            "EndpointSlice" => Resource::EndpointSlices,
            other => panic!("the fake API server has no kind {other:?}"),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One change, as a watch sends it.
#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    kind: &'static str,
    object: Value,
}

#[derive(Debug, Default)]
struct Store {
    objects: BTreeMap<(String, String), Value>,
    history: Vec<Change>,
    lists: usize,
    watches: usize,
}

#[derive(Debug)]
struct State {
    rv: u64,
    /// Watches from a resourceVersion below this get 410.
    compacted: u64,
    stores: [Store; 2],
    /// Bumped to cut every connection (drop_watches, stop).
    cut: u64,
    /// Bumped to send 410 on every open watch.
    expire: u64,
    open_watches: usize,
    connections: usize,
    /// Resources answered with 403 Forbidden, as without RBAC.
    forbidden: [bool; 2],
    /// Shared, so that serving a page does not copy the whole list.
    snapshots: HashMap<String, (u64, Arc<Vec<Value>>)>,
    next_snapshot: u64,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running (or stopped) fake API server.
#[derive(Debug)]
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    listening: Arc<AtomicBool>,
    listener: Mutex<Option<JoinHandle<()>>>,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl FakeApiServer {
    /// Starts on a free port of 127.0.0.1, with no objects.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local address");
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: http://{addr}
contexts:
- name: fake
  context: {{cluster: fake, user: fake, namespace: default}}
current-context: fake
users:
- name: fake
  user: {{token: fake-token}}
"
            ),
        )
        .expect("write kubeconfig");
        let server = Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    rv: 1,
                    compacted: 0,
                    stores: Default::default(),
                    cut: 0,
                    expire: 0,
                    open_watches: 0,
                    connections: 0,
                    forbidden: [false; 2],
                    snapshots: HashMap::new(),
                    next_snapshot: 0,
                }),
                changed: Condvar::new(),
            }),
            addr,
            listening: Arc::new(AtomicBool::new(false)),
            listener: Mutex::new(None),
            dir,
            kubeconfig,
        };
        server.listen(listener);
        server
    }

    /// A kubeconfig that points at this server.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn listen(&self, listener: TcpListener) {
        listener.set_nonblocking(true).expect("nonblocking");
        self.listening.store(true, Ordering::SeqCst);
        let listening = Arc::clone(&self.listening);
        let shared = Arc::clone(&self.shared);
        let thread = std::thread::Builder::new()
            .name("fake-apiserver".into())
            .spawn(move || {
                while listening.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let shared = Arc::clone(&shared);
                            let cut = {
                                let mut state = shared.lock();
                                state.connections += 1;
                                state.cut
                            };
                            std::thread::spawn(move || {
                                serve(&shared, stream, cut);
                                shared.lock().connections -= 1;
                                shared.changed.notify_all();
                            });
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(e) => panic!("accept: {e}"),
                    }
                }
            })
            .expect("spawn listener");
        *self.listener.lock().unwrap() = Some(thread);
    }

    /// Stops listening and closes every connection, as a crashed API
    /// server would; objects and history are kept.
    pub fn stop(&self) {
        self.listening.store(false, Ordering::SeqCst);
        if let Some(thread) = self.listener.lock().unwrap().take() {
            thread.join().expect("listener thread");
        }
        self.shared.lock().cut += 1;
        self.shared.changed.notify_all();
        self.wait_for(Duration::from_secs(5), |s| s.connections == 0)
            .expect("connections close");
    }

    /// Listens again on the same port.
    pub fn restart(&self) {
        assert!(!self.listening.load(Ordering::SeqCst), "already running");
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr) {
                Ok(listener) => break listener,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("rebinding {}: {e}; retrying", self.addr);
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("rebinding {}: {e}", self.addr),
            }
        };
        self.listen(listener);
    }

    /// Creates or replaces an object (a `Service` or `EndpointSlice`, by
    /// its `kind`); returns its new resourceVersion.
    pub fn apply(&self, mut object: Value) -> u64 {
        let resource = Resource::of_kind(object["kind"].as_str().expect("object has a kind"));
        let key = key_of(&object);
        let rv = {
            let mut state = self.shared.lock();
            state.rv += 1;
            let rv = state.rv;
            let store = &mut state.stores[resource.index()];
            let old = store.objects.get(&key);
            let meta = &mut object["metadata"];
            meta["resourceVersion"] = rv.to_string().into();
            meta["uid"] = match old {
                Some(old) => old["metadata"]["uid"].clone(),
                None => format!("uid-{}-{}-{rv}", key.0, key.1).into(),
            };
            meta["creationTimestamp"] = "2026-01-01T00:00:00Z".into();
            if resource == Resource::EndpointSlices
                && meta["annotations"][LAST_CHANGE_TRIGGER_TIME].is_null()
            {
                if meta["annotations"].is_null() {
                    meta["annotations"] = json!({});
                }
                meta["annotations"][LAST_CHANGE_TRIGGER_TIME] = rfc3339_now().into();
            }
            object["apiVersion"] = resource.api_version().into();
            let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
            store.history.push(Change {
                rv,
                kind,
                object: object.clone(),
            });
            store.objects.insert(key, object);
            rv
        };
        self.shared.changed.notify_all();
        rv
    }

    /// Deletes an object; returns the resourceVersion of the deletion.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> u64 {
        let resource = Resource::of_kind(kind);
        let rv = {
            let mut state = self.shared.lock();
            state.rv += 1;
            let rv = state.rv;
            let store = &mut state.stores[resource.index()];
            let mut object = store
                .objects
                .remove(&(namespace.to_owned(), name.to_owned()))
                .unwrap_or_else(|| panic!("no {kind} {namespace}/{name} to delete"));
            object["metadata"]["resourceVersion"] = rv.to_string().into();
            store.history.push(Change {
                rv,
                kind: "DELETED",
                object,
            });
            rv
        };
        self.shared.changed.notify_all();
        rv
    }

    /// Forgets the history so far: a watch resuming from an older
    /// resourceVersion gets 410 Gone and must relist.
    pub fn compact(&self) {
        let mut state = self.shared.lock();
        state.compacted = state.rv;
        for store in &mut state.stores {
            store.history.clear();
        }
    }

    /// Compacts and sends 410 Gone on every open watch, which then ends.
    pub fn expire_watches(&self) {
        self.compact();
        self.shared.lock().expire += 1;
        self.shared.changed.notify_all();
    }

    /// Cuts every open connection without ending its response properly.
    pub fn drop_watches(&self) {
        self.shared.lock().cut += 1;
        self.shared.changed.notify_all();
    }

    /// Answers lists and watches of `resource` with 403 Forbidden (or
    /// stops doing so), as the real server does without RBAC for them.
    pub fn forbid(&self, resource: Resource, forbidden: bool) {
        self.shared.lock().forbidden[resource.index()] = forbidden;
    }

    /// How many lists of `resource` were served (a relist adds one).
    pub fn lists(&self, resource: Resource) -> usize {
        self.shared.lock().stores[resource.index()].lists
    }

    /// How many watches of `resource` were started.
    pub fn watches(&self, resource: Resource) -> usize {
        self.shared.lock().stores[resource.index()].watches
    }

    /// Waits until `ready` holds for the state, or `timeout` passes.
    fn wait_for(&self, timeout: Duration, ready: impl Fn(&State) -> bool) -> Result<(), ()> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        while !ready(&state) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(());
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, left.min(POLL))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// Waits until `n` watches are open, both resources counted.
    pub fn wait_for_open_watches(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |s| s.open_watches >= n).is_ok()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if self.listening.load(Ordering::SeqCst) {
            self.stop();
        }
    }
}

fn key_of(object: &Value) -> (String, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"].as_str().unwrap_or("default").to_owned(),
        meta["name"].as_str().expect("object has a name").to_owned(),
    )
}

/// Why a connection ended.
enum End {
    /// Keep reading requests.
    KeepAlive,
    /// Close the connection.
    Close,
}

/// Serves one connection: requests one after another (keep-alive) until
/// the client closes it or the server cuts it.
fn serve(shared: &Shared, mut stream: TcpStream, cut: u64) {
    stream.set_read_timeout(Some(POLL)).expect("read timeout");
    let _ = stream.set_nodelay(true);
    let mut buffer = Vec::new();
    while let Some(request) = read_request(shared, &mut stream, &mut buffer, cut) {
        if let End::Close = handle(shared, &mut stream, &request, cut) {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// A request line's path and query.
struct Request {
    method: String,
    path: String,
    query: HashMap<String, String>,
}

/// Reads one request head; `None` when the connection ends or is cut.
fn read_request(
    shared: &Shared,
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    cut: u64,
) -> Option<Request> {
    let started = Instant::now();
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            buffer.drain(..end + 4);
            let line = head.lines().next()?;
            let mut parts = line.split(' ');
            let method = parts.next()?.to_owned();
            let target = parts.next()?;
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let query = query
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (k.to_owned(), v.to_owned())
                })
                .collect();
            return Some(Request {
                method,
                path: path.to_owned(),
                query,
            });
        }
        if shared.lock().cut != cut || started.elapsed() > Duration::from_secs(600) {
            return None;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    }
}

fn respond(stream: &mut TcpStream, status: &str, body: &Value) -> End {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    match stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
    {
        Ok(()) => End::KeepAlive,
        Err(_) => End::Close,
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn handle(shared: &Shared, stream: &mut TcpStream, request: &Request, cut: u64) -> End {
    if request.method != "GET" {
        return respond(
            stream,
            "405 Method Not Allowed",
            &status(405, "MethodNotAllowed", "the fake API server only reads"),
        );
    }
    if request.path == "/version" {
        return respond(
            stream,
            "200 OK",
            &json!({
                "major": "1", "minor": "34", "gitVersion": "v1.34.0-cipgw-fake",
                "gitCommit": "0000000", "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24",
                "compiler": "gc", "platform": "linux/amd64",
            }),
        );
    }
    let Some(resource) = Resource::ALL.into_iter().find(|r| r.path() == request.path) else {
        return respond(
            stream,
            "404 Not Found",
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        );
    };
    if shared.lock().forbidden[resource.index()] {
        let plural = request.path.rsplit('/').next().unwrap_or_default();
        let group = match resource {
            Resource::Services => "",
            Resource::EndpointSlices => "discovery.k8s.io",
        };
        let message = format!(
            "{plural} is forbidden: User \"system:serviceaccount:cipgw-system:cipgw\" \
             cannot list resource \"{plural}\" in API group \"{group}\" at the cluster scope"
        );
        return respond(stream, "403 Forbidden", &status(403, "Forbidden", &message));
    }
    let watch = matches!(
        request.query.get("watch").map(String::as_str),
        Some("true" | "1")
    );
    if watch {
        serve_watch(shared, stream, resource, &request.query, cut)
    } else {
        serve_list(shared, stream, resource, &request.query)
    }
}

/// Items as a list shows them: without kind and apiVersion.
fn list_item(object: &Value) -> Value {
    let mut item = object.clone();
    if let Some(map) = item.as_object_mut() {
        map.remove("kind");
        map.remove("apiVersion");
    }
    item
}

fn serve_list(
    shared: &Shared,
    stream: &mut TcpStream,
    resource: Resource,
    query: &HashMap<String, String>,
) -> End {
    let limit = query
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|&l| l > 0);
    let body = {
        let mut state = shared.lock();
        let (rv, items, offset) = match query.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => {
                let Some((rv, items)) = state.snapshots.get(token).cloned() else {
                    drop(state);
                    return respond(
                        stream,
                        "410 Gone",
                        &status(410, "Expired", "the provided continue parameter is too old"),
                    );
                };
                let offset = token
                    .rsplit('-')
                    .next()
                    .and_then(|o| o.parse().ok())
                    .unwrap_or(0);
                (rv, items, offset)
            }
            None => {
                state.stores[resource.index()].lists += 1;
                let items: Vec<Value> = state.stores[resource.index()]
                    .objects
                    .values()
                    .map(list_item)
                    .collect();
                (state.rv, Arc::new(items), 0)
            }
        };
        let end = limit.map_or(items.len(), |l| (offset + l).min(items.len()));
        let page: Vec<Value> = items[offset..end].to_vec();
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if end < items.len() {
            state.next_snapshot += 1;
            let token = format!("snap{}-{end}", state.next_snapshot);
            if state.snapshots.len() >= MAX_SNAPSHOTS {
                state.snapshots.clear();
            }
            metadata["continue"] = token.clone().into();
            metadata["remainingItemCount"] = (items.len() - end).into();
            state.snapshots.insert(token, (rv, items));
        }
        json!({
            "kind": format!("{}List", resource.kind()),
            "apiVersion": resource.api_version(),
            "metadata": metadata,
            "items": page,
        })
    };
    respond(stream, "200 OK", &body)
}

fn write_chunk(stream: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    stream.write_all(format!("{:x}\r\n", data.len()).as_bytes())?;
    stream.write_all(data)?;
    stream.write_all(b"\r\n")
}

fn write_event(stream: &mut TcpStream, kind: &str, object: &Value) -> std::io::Result<()> {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    write_chunk(stream, line.as_bytes())
}

/// Counts an open watch while it lives.
struct OpenWatch<'a>(&'a Shared);

impl Drop for OpenWatch<'_> {
    fn drop(&mut self) {
        self.0.lock().open_watches -= 1;
        self.0.changed.notify_all();
    }
}

fn serve_watch(
    shared: &Shared,
    stream: &mut TcpStream,
    resource: Resource,
    query: &HashMap<String, String>,
    cut: u64,
) -> End {
    let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|t| t.parse().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let from = query
        .get("resourceVersion")
        .and_then(|rv| rv.parse::<u64>().ok())
        .unwrap_or(0);
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
    if stream.write_all(head.as_bytes()).is_err() {
        return End::Close;
    }
    let (expire, mut sent, initial) = {
        let mut state = shared.lock();
        state.stores[resource.index()].watches += 1;
        state.open_watches += 1;
        let initial: Vec<Value> = if from == 0 {
            // "Any": the current state as ADDED events, then changes.
            state.stores[resource.index()]
                .objects
                .values()
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let sent = if from == 0 { state.rv } else { from };
        (state.expire, sent, initial)
    };
    shared.changed.notify_all();
    let _open = OpenWatch(shared);
    for object in &initial {
        if write_event(stream, "ADDED", object).is_err() {
            return End::Close;
        }
    }
    let started = Instant::now();
    let mut last_bookmark = Instant::now();
    loop {
        let (events, gone, bookmark_rv) = {
            let state = shared.lock();
            if state.cut != cut {
                // Cut: no terminating chunk, the client sees a broken body.
                return End::Close;
            }
            let gone = state.expire != expire || sent < state.compacted;
            let events: Vec<Change> = state.stores[resource.index()]
                .history
                .iter()
                .filter(|c| c.rv > sent)
                .cloned()
                .collect();
            (events, gone.then_some(state.compacted), state.rv)
        };
        if let Some(compacted) = gone {
            let message = format!("too old resource version: {sent} ({compacted})");
            let ended = write_event(stream, "ERROR", &status(410, "Expired", &message))
                .and_then(|()| stream.write_all(b"0\r\n\r\n"));
            return if ended.is_ok() {
                End::KeepAlive
            } else {
                End::Close
            };
        }
        for change in events {
            let mut object = change.object.clone();
            object["kind"] = resource.kind().into();
            if write_event(stream, change.kind, &object).is_err() {
                return End::Close;
            }
            sent = change.rv;
        }
        if bookmarks && last_bookmark.elapsed() >= BOOKMARK_EVERY {
            last_bookmark = Instant::now();
            let object = json!({
                "kind": resource.kind(),
                "apiVersion": resource.api_version(),
                "metadata": {"resourceVersion": bookmark_rv.to_string()},
            });
            if write_event(stream, "BOOKMARK", &object).is_err() {
                return End::Close;
            }
            sent = sent.max(bookmark_rv);
        }
        if started.elapsed() >= timeout {
            return match stream.write_all(b"0\r\n\r\n") {
                Ok(()) => End::KeepAlive,
                Err(_) => End::Close,
            };
        }
        let state = shared.lock();
        let _ = shared
            .changed
            .wait_timeout(state, POLL)
            .unwrap_or_else(|e| e.into_inner());
    }
}
