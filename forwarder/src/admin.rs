//! The admin endpoint: Prometheus metrics, health and readiness, and JSON
//! views of the service table, the connection table and the gateway.
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` | OpenMetrics text ([`crate::metrics`]) |
//! | `/healthz` | 200 while the process runs |
//! | `/readyz` | 200 once the first table is published and workers run, else 503 |
//! | `/api/status` | [`StatusView`] |
//! | `/api/services` | [`ServicesView`] |
//! | `/api/conntrack?vip=&client=&backend=&protocol=&limit=&offset=` | [`ConntrackView`] |
//!
//! One thread answers requests one at a time (tiny_http; its own accept
//! thread and connection pool only read requests): nothing here touches
//! the packet path beyond reading counters, cloning published histograms
//! and walking conntrack's records (lock-free, as workers read them). Every view is
//! computed at request time from [`AdminState`], which the daemon fills
//! in as the gateway starts. The JSON view types derive `Deserialize`
//! too, so the CLI ([`client`]) reads what the server writes.
//!
//! Bad query parameters are answered with 400 and `{"error": "..."}`.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use cipgw_config::{ClusterIp, EndpointState, Protocol};
use serde::{Deserialize, Serialize};

use crate::conntrack::{Conntrack, Direction};
use crate::counters::DropReason;
use crate::metrics::{
    self, ConntrackNumbers, ControlMetrics, CounterValues, Recorder, ServicePortSnapshot,
    ServiceStats, Snapshot, TableStats, WorkerSnapshot, WorkerTelemetry,
};
use crate::table::TableHandle;

/// Rows `/api/conntrack` returns unless `limit=` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// Most rows one `/api/conntrack` request may ask for.
pub const MAX_LIMIT: usize = 10_000;

/// Everything the admin endpoint reads. The daemon creates it once the
/// table handle and conntrack exist, with the readiness flag it sets
/// (Release) once the first table is published and the workers run;
/// it registers each worker as it starts, and the control loop reports
/// syncs into [`AdminState::control`].
#[derive(Debug)]
pub struct AdminState {
    started: Instant,
    started_at: SystemTime,
    ifaces: Vec<String>,
    table: TableHandle,
    conntrack: Arc<Conntrack>,
    ready: Arc<AtomicBool>,
    workers: RwLock<Vec<WorkerTelemetry>>,
    control: Arc<ControlMetrics>,
    services: OnceLock<Arc<ServiceStats>>,
}

impl AdminState {
    pub fn new(
        ifaces: Vec<String>,
        table: TableHandle,
        conntrack: Arc<Conntrack>,
        ready: Arc<AtomicBool>,
    ) -> Self {
        Self {
            started: Instant::now(),
            started_at: SystemTime::now(),
            ifaces,
            table,
            conntrack,
            ready,
            workers: RwLock::new(Vec::new()),
            control: Arc::new(ControlMetrics::default()),
            services: OnceLock::new(),
        }
    }

    /// Adds a worker's telemetry to what is scraped.
    pub fn add_worker(&self, telemetry: WorkerTelemetry) {
        self.workers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(telemetry);
    }

    /// Sets what `/readyz` answers (the daemon may as well store into
    /// the flag it passed in).
    pub fn set_ready(&self, ready: bool) {
        // Release: pairs with `is_ready`, as the daemon's own store does.
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        // Acquire: pairs with the Release store that set the flag, so a
        // ready answer comes with the table that was published before.
        self.ready.load(Ordering::Acquire)
    }

    /// Where the control thread records syncs and errors.
    pub fn control(&self) -> &Arc<ControlMetrics> {
        &self.control
    }

    /// Reports per-service-port packets/bytes/flows from `stats` (once
    /// the pipeline counts them); until then the views report only the
    /// active flows conntrack holds. Only the first call has an effect.
    pub fn count_services(&self, stats: Arc<ServiceStats>) {
        let _ = self.services.set(stats);
    }

    fn workers(&self) -> Vec<WorkerTelemetry> {
        self.workers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Everything `/metrics` exports, read now.
    pub fn snapshot(&self) -> Snapshot {
        let table = self.table.current();
        let mut services = Vec::new();
        if let Some(stats) = self.services.get() {
            for (service, vip) in table.model().forwarded() {
                for port in &service.ports {
                    if let Some(totals) = stats.totals(&service.name, port.port, port.protocol) {
                        services.push(ServicePortSnapshot {
                            service: service.name.to_string(),
                            vip,
                            port: port.port,
                            protocol: port.protocol,
                            totals,
                        });
                    }
                }
            }
        }
        Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            started: self.started_at,
            ready: self.is_ready(),
            workers: self.workers().iter().map(WorkerSnapshot::read).collect(),
            table: TableStats::of(&table),
            conntrack: ConntrackNumbers::read(&self.conntrack),
            control: self.control.snapshot(),
            services,
        }
    }
}

// ---------------------------------------------------------------------
// JSON views.

/// `/api/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    pub uptime_seconds: f64,
    pub ready: bool,
    pub interfaces: Vec<String>,
    pub table: TableView,
    pub conntrack: ConntrackStatusView,
    /// All workers summed.
    pub totals: CountersView,
    pub workers: Vec<WorkerView>,
    pub control: ControlView,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableView {
    pub generation: u64,
    pub services: usize,
    pub forwarded_services: usize,
    pub vip_ports: usize,
    pub endpoints: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConntrackStatusView {
    pub entries: usize,
    pub flows: usize,
    pub unreplied: usize,
    pub max_flows: usize,
    pub inserted: u64,
    pub evicted: u64,
    pub refused: u64,
    pub retired: u64,
    pub expired: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CountersView {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames a worker got that were not for cipgw.
    pub passed: u64,
    /// Packets of tracked flows, client to backend.
    pub forwarded: u64,
    /// Packets of tracked flows, backend to client.
    pub replies: u64,
    pub new_flows: u64,
    pub neighbour_resolved: u64,
    pub dropped: u64,
    /// Every drop reason, also those at zero.
    pub drops: BTreeMap<String, u64>,
}

impl From<&CounterValues> for CountersView {
    fn from(c: &CounterValues) -> Self {
        Self {
            rx_packets: c.rx_packets,
            rx_bytes: c.rx_bytes,
            tx_packets: c.tx_packets,
            tx_bytes: c.tx_bytes,
            passed: c.passed,
            forwarded: c.forwarded,
            replies: c.replies,
            new_flows: c.new_flows,
            neighbour_resolved: c.neighbour_resolved,
            dropped: c.total_drops(),
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.name().to_owned(), c.drops_of(*r)))
                .collect(),
        }
    }
}

/// Quantiles of one histogram: nanoseconds for latencies, frames for
/// batch sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantilesView {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl From<&Recorder> for QuantilesView {
    fn from(r: &Recorder) -> Self {
        Self {
            count: r.count(),
            p50: r.quantile(0.5),
            p99: r.quantile(0.99),
            p999: r.quantile(0.999),
            max: r.quantile(1.0),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerView {
    pub core: usize,
    pub counters: CountersView,
    /// Time per RX batch, ns.
    pub batch_ns: QuantilesView,
    /// Pipeline time per sampled packet, ns.
    pub packet_ns: QuantilesView,
    /// Frames per RX batch.
    pub batch_size: QuantilesView,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlView {
    pub syncs_ok: u64,
    pub syncs_failed: u64,
    pub last_sync: Option<LastSyncView>,
    pub last_error: Option<LastErrorView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastSyncView {
    pub seconds_ago: f64,
    pub duration_ms: f64,
    pub ok: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastErrorView {
    pub seconds_ago: f64,
    pub message: String,
}

/// `/api/services`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicesView {
    pub generation: u64,
    /// Whether `packets`/`bytes`/`flows` are counted (else they are null
    /// and only `active_flows`, from conntrack, is known).
    pub counted: bool,
    pub services: Vec<ServiceView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceView {
    pub namespace: String,
    pub name: String,
    /// `ClusterIP`, `NodePort`, `LoadBalancer` or `ExternalName`.
    pub kind: String,
    /// The forwarded ClusterIP; `None` for headless and ExternalName.
    pub vip: Option<Ipv4Addr>,
    /// `spec.clusterIP` as Kubernetes shows it: the VIP, `None` for
    /// headless, empty for ExternalName.
    pub cluster_ip: String,
    /// Tracked flows to the Service's ports now.
    pub active_flows: u64,
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
    /// Connections given a backend since the port got its counters.
    pub flows: Option<u64>,
    pub ports: Vec<PortView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortView {
    pub name: Option<String>,
    /// `TCP` or `UDP`.
    pub protocol: String,
    pub port: u16,
    /// As written: a number or a container port name.
    pub target_port: String,
    pub active_flows: u64,
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
    pub flows: Option<u64>,
    pub endpoints: Vec<EndpointView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointView {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub pod: Option<String>,
    /// `ready`, `serving` (not ready but serving, e.g. terminating),
    /// `terminating`, or `not-ready`.
    pub state: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Tracked flows to this endpoint through this port now.
    pub active_flows: u64,
}

/// `/api/conntrack`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConntrackView {
    /// Flows that match the filters (all pages).
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    pub flows: Vec<FlowView>,
}

/// One flow: its forward and reply entries merged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowView {
    /// `TCP` or `UDP`.
    pub protocol: String,
    pub client: SocketAddrV4,
    pub vip: SocketAddrV4,
    pub backend: SocketAddrV4,
    /// The flow's state (`tcp_established`, `udp_replied`, ...).
    pub state: String,
    /// The client-to-backend entry exists.
    pub forward: bool,
    /// The backend-to-client entry exists.
    pub reply: bool,
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

fn endpoint_state(s: EndpointState) -> &'static str {
    if s.ready {
        "ready"
    } else if s.serving {
        "serving"
    } else if s.terminating {
        "terminating"
    } else {
        "not-ready"
    }
}

// ---------------------------------------------------------------------
// Building the views.

fn status_view(state: &AdminState) -> StatusView {
    let snap = state.snapshot();
    let now = SystemTime::now();
    let ago = |t: SystemTime| now.duration_since(t).unwrap_or_default().as_secs_f64();
    let ct = snap.conntrack;
    StatusView {
        version: snap.version.to_owned(),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        ready: snap.ready,
        interfaces: state.ifaces.clone(),
        table: TableView {
            generation: snap.table.generation,
            services: snap.table.services,
            forwarded_services: snap.table.forwarded_services,
            vip_ports: snap.table.vip_ports,
            endpoints: snap.table.endpoints,
        },
        conntrack: ConntrackStatusView {
            entries: ct.entries,
            flows: ct.flows,
            unreplied: ct.unreplied,
            max_flows: ct.max_flows,
            inserted: ct.inserted,
            evicted: ct.total_evicted(),
            refused: ct.refused,
            retired: ct.retired,
            expired: ct.total_expired(),
        },
        totals: CountersView::from(&snap.totals()),
        workers: snap
            .workers
            .iter()
            .map(|w| WorkerView {
                core: w.core,
                counters: CountersView::from(&w.counters),
                batch_ns: QuantilesView::from(&w.latency.batch),
                packet_ns: QuantilesView::from(&w.latency.packet),
                batch_size: QuantilesView::from(&w.latency.batch_size),
            })
            .collect(),
        control: ControlView {
            syncs_ok: snap.control.syncs_ok,
            syncs_failed: snap.control.syncs_failed,
            last_sync: snap.control.last_sync.as_ref().map(|s| LastSyncView {
                seconds_ago: ago(s.at),
                duration_ms: s.duration.as_secs_f64() * 1e3,
                ok: s.ok,
            }),
            last_error: snap.control.last_error.as_ref().map(|e| LastErrorView {
                seconds_ago: ago(e.at),
                message: e.message.clone(),
            }),
        },
    }
}

/// A VIP:port/protocol, packed for map keys.
type PortKey = (Ipv4Addr, u16, Protocol);

fn services_view(state: &AdminState) -> ServicesView {
    let table = state.table.current();
    // Active flows per port and per (port, backend), from one walk over
    // the forward entries.
    let mut per_port: HashMap<PortKey, u64> = HashMap::new();
    let mut per_backend: HashMap<(PortKey, SocketAddrV4), u64> = HashMap::new();
    state.conntrack.for_each(|key, hit| {
        if hit.direction == Direction::Forward {
            let port = (key.dst, key.dst_port, key.protocol);
            *per_port.entry(port).or_default() += 1;
            *per_backend
                .entry((port, SocketAddrV4::new(hit.nat_ip, hit.nat_port)))
                .or_default() += 1;
        }
    });
    let stats = state.services.get();
    let services = table
        .model()
        .services
        .iter()
        .map(|service| {
            let vip = service.cluster_ip.vip();
            let mut view = ServiceView {
                namespace: service.name.namespace.clone(),
                name: service.name.name.clone(),
                kind: service.kind.as_str().to_owned(),
                vip,
                cluster_ip: match service.cluster_ip {
                    ClusterIp::Vip(ip) => ip.to_string(),
                    ClusterIp::Headless => "None".to_owned(),
                    ClusterIp::ExternalName => String::new(),
                },
                active_flows: 0,
                packets: None,
                bytes: None,
                flows: None,
                ports: Vec::with_capacity(service.ports.len()),
            };
            for port in &service.ports {
                let key = vip.map(|vip| (vip, port.port, port.protocol));
                let active = key.and_then(|k| per_port.get(&k).copied()).unwrap_or(0);
                let totals = match (stats, vip) {
                    (Some(s), Some(_)) => s.totals(&service.name, port.port, port.protocol),
                    _ => None,
                };
                view.active_flows += active;
                if let Some(t) = totals {
                    view.packets = Some(view.packets.unwrap_or(0) + t.packets);
                    view.bytes = Some(view.bytes.unwrap_or(0) + t.bytes);
                    view.flows = Some(view.flows.unwrap_or(0) + t.flows);
                }
                view.ports.push(PortView {
                    name: port.name.clone(),
                    protocol: protocol_name(port.protocol).to_owned(),
                    port: port.port,
                    target_port: port.target_port.to_string(),
                    active_flows: active,
                    packets: totals.map(|t| t.packets),
                    bytes: totals.map(|t| t.bytes),
                    flows: totals.map(|t| t.flows),
                    endpoints: port
                        .endpoints
                        .iter()
                        .map(|e| EndpointView {
                            ip: e.ip,
                            port: e.port,
                            pod: e.pod.clone(),
                            state: endpoint_state(e.state).to_owned(),
                            ready: e.state.ready,
                            serving: e.state.serving,
                            terminating: e.state.terminating,
                            active_flows: key
                                .and_then(|k| {
                                    per_backend
                                        .get(&(k, SocketAddrV4::new(e.ip, e.port)))
                                        .copied()
                                })
                                .unwrap_or(0),
                        })
                        .collect(),
                });
            }
            view
        })
        .collect();
    ServicesView {
        generation: table.generation(),
        counted: stats.is_some(),
        services,
    }
}

/// An address filter: `IP` or `IP:PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrFilter {
    pub ip: Ipv4Addr,
    pub port: Option<u16>,
}

impl AddrFilter {
    fn parse(param: &str, value: &str) -> Result<Self, String> {
        if let Ok(ip) = value.parse::<Ipv4Addr>() {
            return Ok(Self { ip, port: None });
        }
        match value.parse::<SocketAddrV4>() {
            Ok(sa) => Ok(Self {
                ip: *sa.ip(),
                port: Some(sa.port()),
            }),
            Err(_) => Err(format!(
                "{param}={value:?}: expected an IPv4 address or address:port"
            )),
        }
    }

    fn matches(&self, addr: SocketAddrV4) -> bool {
        *addr.ip() == self.ip && self.port.map_or(true, |p| p == addr.port())
    }
}

/// What `/api/conntrack` was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConntrackQuery {
    pub vip: Option<AddrFilter>,
    pub client: Option<AddrFilter>,
    pub backend: Option<AddrFilter>,
    pub protocol: Option<Protocol>,
    pub limit: usize,
    pub offset: usize,
}

impl Default for ConntrackQuery {
    fn default() -> Self {
        Self {
            vip: None,
            client: None,
            backend: None,
            protocol: None,
            limit: DEFAULT_LIMIT,
            offset: 0,
        }
    }
}

impl ConntrackQuery {
    /// Parses a query string (without the `?`).
    pub fn parse(query: &str) -> Result<Self, String> {
        let mut q = ConntrackQuery::default();
        for (name, value) in query_pairs(query)? {
            match name.as_str() {
                "vip" => q.vip = Some(AddrFilter::parse("vip", &value)?),
                "client" => q.client = Some(AddrFilter::parse("client", &value)?),
                "backend" => q.backend = Some(AddrFilter::parse("backend", &value)?),
                "protocol" => {
                    q.protocol = Some(match value.to_ascii_lowercase().as_str() {
                        "tcp" => Protocol::Tcp,
                        "udp" => Protocol::Udp,
                        _ => return Err(format!("protocol={value:?}: expected tcp or udp")),
                    })
                }
                "limit" => {
                    q.limit = value
                        .parse::<usize>()
                        .ok()
                        .filter(|l| *l <= MAX_LIMIT)
                        .ok_or_else(|| {
                            format!("limit={value:?}: expected a number from 0 to {MAX_LIMIT}")
                        })?
                }
                "offset" => {
                    q.offset = value
                        .parse::<usize>()
                        .map_err(|_| format!("offset={value:?}: expected a number"))?
                }
                _ => {
                    return Err(format!(
                        "unknown parameter {name:?} (known: vip, client, backend, protocol, limit, offset)"
                    ))
                }
            }
        }
        Ok(q)
    }
}

/// A flow as sorted and merged: VIP first, so one Service's flows are
/// listed together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct FlowTuple {
    vip: (Ipv4Addr, u16),
    protocol: u8,
    client: (Ipv4Addr, u16),
    backend: (Ipv4Addr, u16),
}

fn sockaddr((ip, port): (Ipv4Addr, u16)) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

fn conntrack_view(ct: &Conntrack, q: &ConntrackQuery) -> ConntrackView {
    // Both entries of a flow give the same tuple; collect them, sort, and
    // merge neighbours. Filters are applied while walking, so only
    // matching flows are held.
    let mut rows: Vec<(FlowTuple, bool, &'static str)> = Vec::new();
    ct.for_each(|key, hit| {
        let (tuple, forward) = match hit.direction {
            Direction::Forward => (
                FlowTuple {
                    vip: (key.dst, key.dst_port),
                    protocol: key.protocol.ip_number(),
                    client: (key.src, key.src_port),
                    backend: (hit.nat_ip, hit.nat_port),
                },
                true,
            ),
            Direction::Reply => (
                FlowTuple {
                    vip: (hit.nat_ip, hit.nat_port),
                    protocol: key.protocol.ip_number(),
                    client: (key.dst, key.dst_port),
                    backend: (key.src, key.src_port),
                },
                false,
            ),
        };
        let keep = q.vip.map_or(true, |f| f.matches(sockaddr(tuple.vip)))
            && q.client.map_or(true, |f| f.matches(sockaddr(tuple.client)))
            && q.backend
                .map_or(true, |f| f.matches(sockaddr(tuple.backend)))
            && q.protocol.map_or(true, |p| p == key.protocol);
        if keep {
            rows.push((tuple, forward, hit.state.name()));
        }
    });
    rows.sort_unstable_by_key(|(t, forward, _)| (*t, !*forward));
    let mut flows: Vec<(FlowTuple, bool, bool, &'static str)> = Vec::with_capacity(rows.len());
    for (tuple, forward, state) in rows {
        match flows.last_mut() {
            Some(last) if last.0 == tuple => {
                last.1 |= forward;
                last.2 |= !forward;
            }
            _ => flows.push((tuple, forward, !forward, state)),
        }
    }
    let total = flows.len();
    let page = flows
        .into_iter()
        .skip(q.offset)
        .take(q.limit)
        .map(|(t, forward, reply, state)| FlowView {
            protocol: Protocol::from_ip_number(t.protocol)
                .map_or("?", protocol_name)
                .to_owned(),
            client: sockaddr(t.client),
            vip: sockaddr(t.vip),
            backend: sockaddr(t.backend),
            state: state.to_owned(),
            forward,
            reply,
        })
        .collect();
    ConntrackView {
        total,
        offset: q.offset,
        limit: q.limit,
        flows: page,
    }
}

/// `a=1&b=x%3A2` as decoded pairs.
fn query_pairs(query: &str) -> Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(name)?, percent_decode(value)?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent-encoding in {s:?}"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8"))
}

// ---------------------------------------------------------------------
// Requests.

/// An answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

impl Reply {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: TEXT,
            body: body.into(),
        }
    }

    fn json<T: Serialize>(value: &T) -> Self {
        match serde_json::to_string_pretty(value) {
            Ok(mut body) => {
                body.push('\n');
                Self {
                    status: 200,
                    content_type: JSON,
                    body,
                }
            }
            Err(e) => Self::error(500, &format!("encoding the answer: {e}")),
        }
    }

    fn error(status: u16, message: &str) -> Self {
        let body = serde_json::json!({ "error": message }).to_string() + "\n";
        Self {
            status,
            content_type: JSON,
            body,
        }
    }
}

/// Answers one request. Pure apart from reading `state`, so it is what
/// the unit tests exercise.
pub fn handle(state: &AdminState, method: &str, url: &str) -> Reply {
    if method != "GET" && method != "HEAD" {
        return Reply::text(405, "only GET and HEAD\n");
    }
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let no_params = |view: fn(&AdminState) -> Reply| match query_pairs(query) {
        Ok(p) if p.is_empty() => view(state),
        Ok(p) => Reply::error(
            400,
            &format!("{path} takes no parameters, got {:?}", p[0].0),
        ),
        Err(e) => Reply::error(400, &e),
    };
    match path {
        "/metrics" => Reply {
            status: 200,
            content_type: metrics::CONTENT_TYPE,
            body: metrics::encode(state.snapshot()),
        },
        "/healthz" => Reply::text(200, "ok\n"),
        "/readyz" if state.is_ready() => Reply::text(200, "ready\n"),
        "/readyz" => Reply::text(503, "not ready\n"),
        "/api/status" => no_params(|s| Reply::json(&status_view(s))),
        "/api/services" => no_params(|s| Reply::json(&services_view(s))),
        "/api/conntrack" => match ConntrackQuery::parse(query) {
            Ok(q) => Reply::json(&conntrack_view(&state.conntrack, &q)),
            Err(e) => Reply::error(400, &e),
        },
        "/" => Reply::text(
            200,
            "cipgw admin: /metrics /healthz /readyz /api/status /api/services /api/conntrack\n",
        ),
        _ => Reply::text(404, format!("no such path: {path}\n")),
    }
}

/// The admin HTTP server: one thread answering requests until dropped.
pub struct AdminServer {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    addr: SocketAddr,
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Why the admin endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin endpoint: cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("admin endpoint on {addr}: {message}")]
    Start { addr: SocketAddr, message: String },
}

impl AdminServer {
    /// Listens on `addr` (port 0 picks a free one) and answers requests
    /// from `state` on a thread of its own.
    pub fn start(addr: SocketAddr, state: Arc<AdminState>) -> Result<AdminServer, AdminError> {
        let listener =
            TcpListener::bind(addr).map_err(|source| AdminError::Bind { addr, source })?;
        let bound = listener
            .local_addr()
            .map_err(|source| AdminError::Bind { addr, source })?;
        let server =
            tiny_http::Server::from_listener(listener, None).map_err(|e| AdminError::Start {
                addr,
                message: e.to_string(),
            })?;
        let server = Arc::new(server);
        let serving = Arc::clone(&server);
        let thread = std::thread::Builder::new()
            .name("cipgw-admin".into())
            .spawn(move || serve(&serving, &state))
            .map_err(|e| AdminError::Start {
                addr,
                message: format!("spawning its thread: {e}"),
            })?;
        tracing::info!(addr = %bound, "admin endpoint listening");
        Ok(AdminServer {
            server,
            thread: Some(thread),
            addr: bound,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        // Ends `incoming_requests` after the requests already queued.
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(server: &tiny_http::Server, state: &AdminState) {
    for request in server.incoming_requests() {
        let reply = handle(state, request.method().as_str(), request.url());
        tracing::trace!(url = request.url(), status = reply.status, "admin request");
        let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], reply.content_type)
            .unwrap_or_else(|()| unreachable!("static header is valid"));
        let response = tiny_http::Response::from_string(reply.body)
            .with_status_code(reply.status)
            .with_header(header);
        if let Err(e) = request.respond(response) {
            tracing::debug!(error = %e, "admin client went away");
        }
    }
}

pub mod client {
    //! A minimal HTTP/1.0 GET over `std::net::TcpStream`, for the CLI and
    //! tests: the admin endpoint is local, small and answers with a
    //! `Content-Length` (HTTP/1.0 gets no chunked encoding).

    use std::io::{self, Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::{Duration, Instant};

    /// Most bytes an answer may have.
    const MAX_ANSWER: u64 = 256 << 20;

    /// A status and a body.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Response {
        pub status: u16,
        pub content_type: Option<String>,
        pub body: String,
    }

    #[derive(Debug, thiserror::Error)]
    pub enum ClientError {
        #[error("no cipgw admin endpoint at {addr}: connection refused")]
        Refused { addr: SocketAddr },
        #[error("cipgw admin endpoint at {addr} did not answer within {timeout:?}")]
        Timeout { addr: SocketAddr, timeout: Duration },
        #[error("cipgw admin endpoint at {addr}: {what}: {source}")]
        Io {
            addr: SocketAddr,
            what: &'static str,
            #[source]
            source: io::Error,
        },
        #[error("cipgw admin endpoint at {addr}: malformed answer: {what}")]
        Malformed { addr: SocketAddr, what: String },
    }

    /// `GET path` (with its query) from `addr`, all of it within
    /// `timeout`.
    pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<Response, ClientError> {
        let deadline = Instant::now() + timeout;
        let io_err = |what: &'static str| {
            move |source: io::Error| match source.kind() {
                io::ErrorKind::ConnectionRefused => ClientError::Refused { addr },
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
                    ClientError::Timeout { addr, timeout }
                }
                _ => ClientError::Io { addr, what, source },
            }
        };
        let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(io_err("connect"))?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(io_err("set a timeout"))?;
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        )
        .map_err(io_err("send"))?;
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::Timeout { addr, timeout });
            }
            stream
                .set_read_timeout(Some(left))
                .map_err(io_err("set a timeout"))?;
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    raw.extend_from_slice(&buf[..n]);
                    if raw.len() as u64 > MAX_ANSWER {
                        return Err(ClientError::Malformed {
                            addr,
                            what: format!("longer than {MAX_ANSWER} bytes"),
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("receive")(e)),
            }
        }
        parse(addr, &raw)
    }

    fn parse(addr: SocketAddr, raw: &[u8]) -> Result<Response, ClientError> {
        let bad = |what: &str| ClientError::Malformed {
            addr,
            what: what.to_owned(),
        };
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| bad("no end of headers"))?;
        let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("headers not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status = status_line
            .strip_prefix("HTTP/1.")
            .and_then(|s| s.get(2..5))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| bad(&format!("status line {status_line:?}")))?;
        let mut content_type = None;
        let mut length = None;
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-type") {
                    content_type = Some(value.to_owned());
                } else if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse::<usize>().ok();
                }
            }
        }
        let mut body = &raw[split + 4..];
        if let Some(len) = length {
            if body.len() < len {
                return Err(bad("answer shorter than its Content-Length"));
            }
            body = &body[..len];
        }
        let body = String::from_utf8(body.to_vec()).map_err(|_| bad("body not UTF-8"))?;
        Ok(Response {
            status,
            content_type,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::FlowKey;
    use crate::metrics::exposition;
    use crate::table::CompiledTable;
    use cipgw_config::{
        Endpoint, Service, ServiceKind, ServiceName, ServicePort, ServiceTable, TargetPort,
    };
    use std::time::Duration;

    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 10);
    const DNS_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 53);

    fn endpoint(last: u8, port: u16, state: EndpointState) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::new(198, 18, 2, last),
            port,
            state,
            pod: Some(format!("pod{}", last - 10)),
        }
    }

    fn model() -> ServiceTable {
        let terminating = EndpointState {
            ready: false,
            serving: true,
            terminating: true,
        };
        ServiceTable {
            services: vec![
                Service {
                    name: ServiceName::new("default", "dns"),
                    kind: ServiceKind::ClusterIp,
                    cluster_ip: ClusterIp::Vip(DNS_VIP),
                    session_affinity: None,
                    ports: vec![ServicePort {
                        name: Some("dns".into()),
                        port: 53,
                        protocol: Protocol::Udp,
                        target_port: TargetPort::Number(5353),
                        endpoints: vec![endpoint(11, 5353, EndpointState::READY)],
                    }],
                },
                Service {
                    name: ServiceName::new("default", "echo"),
                    kind: ServiceKind::ClusterIp,
                    cluster_ip: ClusterIp::Vip(VIP),
                    session_affinity: None,
                    ports: vec![ServicePort {
                        name: Some("http".into()),
                        port: 8080,
                        protocol: Protocol::Tcp,
                        target_port: TargetPort::Name("http".into()),
                        endpoints: vec![
                            endpoint(11, 5678, EndpointState::READY),
                            endpoint(12, 5678, terminating),
                        ],
                    }],
                },
                Service {
                    name: ServiceName::new("default", "headless"),
                    kind: ServiceKind::ClusterIp,
                    cluster_ip: ClusterIp::Headless,
                    session_affinity: None,
                    ports: vec![],
                },
            ],
        }
    }

    /// A state with the model above and `flows` TCP flows from
    /// 198.18.0.2:40000+i to the echo VIP, alternating between the two
    /// endpoints.
    fn state(flows: u16) -> AdminState {
        let table = TableHandle::new(CompiledTable::compile(Arc::new(model()), 7));
        let ct = Arc::new(Conntrack::default());
        for i in 0..flows {
            let key = FlowKey {
                src: Ipv4Addr::new(198, 18, 0, 2),
                dst: VIP,
                src_port: 40000 + i,
                dst_port: 8080,
                protocol: Protocol::Tcp,
            };
            let backend = (Ipv4Addr::new(198, 18, 2, 11 + (i % 2) as u8), 5678);
            ct.insert(key, backend, 1, Default::default())
                .expect("insert");
        }
        AdminState::new(
            vec!["to-client".into(), "to-pods".into()],
            table,
            ct,
            Arc::new(AtomicBool::new(false)),
        )
    }

    fn get(state: &AdminState, url: &str) -> Reply {
        handle(state, "GET", url)
    }

    fn json<T: for<'de> Deserialize<'de>>(reply: Reply) -> T {
        assert_eq!(reply.status, 200, "{}", reply.body);
        serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.body))
    }

    #[test]
    fn readyz_flips_with_the_flag() {
        let s = state(0);
        assert_eq!(get(&s, "/readyz").status, 503);
        assert_eq!(get(&s, "/healthz").status, 200);
        s.set_ready(true);
        assert_eq!(get(&s, "/readyz").status, 200);
        s.set_ready(false);
        assert_eq!(get(&s, "/readyz").status, 503);
        assert_eq!(get(&s, "/nope").status, 404);
        assert_eq!(handle(&s, "POST", "/metrics").status, 405);
    }

    #[test]
    fn metrics_sum_workers_and_parse() {
        let s = state(3);
        for core in [0, 1] {
            let t = WorkerTelemetry::new(core);
            t.counters.rx_packets.add(100 + core as u64);
            t.counters.tx_packets.add(90);
            t.counters.count_drop(DropReason::MalformedIpv4);
            s.add_worker(t);
        }
        s.control()
            .record_sync::<(), &str>(Duration::from_millis(2), &Ok(()));
        let reply = get(&s, "/metrics");
        assert_eq!(reply.status, 200);
        assert!(reply
            .content_type
            .starts_with("application/openmetrics-text"));
        let exp = exposition::parse(&reply.body).unwrap_or_else(|e| panic!("{e}\n{}", reply.body));
        assert_eq!(exp.get("cipgw_rx_packets_total", &[]), Some(201.0));
        assert_eq!(exp.get("cipgw_tx_packets_total", &[]), Some(180.0));
        assert_eq!(
            exp.get("cipgw_worker_rx_packets_total", &[("worker", "1")]),
            Some(101.0)
        );
        assert_eq!(
            exp.get("cipgw_drops_total", &[("reason", "malformed_ipv4")]),
            Some(2.0)
        );
        assert_eq!(exp.get("cipgw_conntrack_flows", &[]), Some(3.0));
        assert_eq!(exp.get("cipgw_conntrack_entries", &[]), Some(6.0));
        assert_eq!(exp.get("cipgw_table_generation", &[]), Some(7.0));
        assert_eq!(exp.get("cipgw_table_vip_ports", &[]), Some(2.0));
        assert_eq!(exp.get("cipgw_ready", &[]), Some(0.0));
        assert_eq!(
            exp.get("cipgw_control_syncs_total", &[("result", "ok")]),
            Some(1.0)
        );
    }

    #[test]
    fn status_reports_workers_table_and_control() {
        let s = state(2);
        let t = WorkerTelemetry::new(1);
        t.counters.rx_packets.add(5);
        let mut rec = t.latency_recorder();
        rec.record_batch(5, Duration::from_micros(2));
        rec.flush();
        s.add_worker(t);
        s.control().record_sync::<(), String>(
            Duration::from_millis(9),
            &Err("control file: Service default/x: bad port".into()),
        );
        let v: StatusView = json(get(&s, "/api/status"));
        assert_eq!(v.interfaces, vec!["to-client", "to-pods"]);
        assert_eq!(v.table.generation, 7);
        assert_eq!(v.table.services, 3);
        assert_eq!(v.table.forwarded_services, 2);
        assert_eq!(v.conntrack.flows, 2);
        assert_eq!(v.totals.rx_packets, 5);
        assert_eq!(v.workers.len(), 1);
        assert_eq!(v.workers[0].core, 1);
        assert_eq!(v.workers[0].batch_size.p50, 5);
        assert_eq!(v.totals.drops.len(), DropReason::COUNT);
        assert_eq!(
            v.control.last_error.map(|e| e.message).as_deref(),
            Some("control file: Service default/x: bad port")
        );
        assert_eq!(get(&s, "/api/status?x=1").status, 400);
    }

    #[test]
    fn services_show_endpoints_states_and_active_flows() {
        let s = state(5);
        let v: ServicesView = json(get(&s, "/api/services"));
        assert!(!v.counted);
        assert_eq!(v.generation, 7);
        let names: Vec<&str> = v.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["dns", "echo", "headless"]);
        let echo = &v.services[1];
        assert_eq!(echo.vip, Some(VIP));
        assert_eq!(echo.active_flows, 5);
        assert_eq!(echo.packets, None);
        let port = &echo.ports[0];
        assert_eq!((port.protocol.as_str(), port.port), ("TCP", 8080));
        assert_eq!(port.target_port, "http");
        let states: Vec<(&str, &str, u64)> = port
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.pod.as_deref().unwrap_or(""),
                    e.state.as_str(),
                    e.active_flows,
                )
            })
            .collect();
        assert_eq!(states, [("pod1", "ready", 3), ("pod2", "serving", 2)]);
        let headless = &v.services[2];
        assert_eq!((headless.vip, headless.cluster_ip.as_str()), (None, "None"));
        assert_eq!(v.services[0].active_flows, 0);
    }

    #[test]
    fn services_report_counters_once_counted() {
        let s = state(0);
        let stats = Arc::new(ServiceStats::new());
        let w = stats.add_worker();
        let slots = stats.assign(s.table.current().model());
        let echo = slots.get(1, 0).expect("echo:8080 has a slot");
        let c = w.get(echo).expect("counters");
        c.packets.add(10);
        c.bytes.add(1000);
        c.flows.add(2);
        s.count_services(stats);
        let v: ServicesView = json(get(&s, "/api/services"));
        assert!(v.counted);
        assert_eq!(
            (
                v.services[1].packets,
                v.services[1].bytes,
                v.services[1].flows
            ),
            (Some(10), Some(1000), Some(2))
        );
        assert_eq!(v.services[0].packets, Some(0));
        assert_eq!(v.services[2].packets, None, "headless: nothing counted");
        let exp = exposition::parse(&get(&s, "/metrics").body).expect("parses");
        assert_eq!(
            exp.get(
                "cipgw_service_packets_total",
                &[("service", "default/echo"), ("port", "8080")]
            ),
            Some(10.0)
        );
    }

    #[test]
    fn conntrack_merges_directions_filters_and_pages() {
        let s = state(25);
        let all: ConntrackView = json(get(&s, "/api/conntrack"));
        assert_eq!(all.total, 25);
        assert_eq!(all.flows.len(), 25);
        assert!(all.flows.iter().all(|f| f.forward && f.reply));
        assert!(all
            .flows
            .iter()
            .all(|f| f.vip == SocketAddrV4::new(VIP, 8080)));
        assert_eq!(all.flows[0].state, "tcp_syn_sent");
        // Sorted by client port within the VIP.
        let ports: Vec<u16> = all.flows.iter().map(|f| f.client.port()).collect();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        assert_eq!(ports, sorted);

        let page: ConntrackView = json(get(&s, "/api/conntrack?limit=10&offset=20"));
        assert_eq!((page.total, page.flows.len(), page.offset), (25, 5, 20));
        assert_eq!(page.flows[0], all.flows[20]);

        let pod1: ConntrackView = json(get(&s, "/api/conntrack?backend=198.18.2.11"));
        assert_eq!(pod1.total, 13);
        assert!(pod1
            .flows
            .iter()
            .all(|f| f.backend.ip() == &Ipv4Addr::new(198, 18, 2, 11)));
        let one: ConntrackView = json(get(&s, "/api/conntrack?client=198.18.0.2%3A40003"));
        assert_eq!(one.total, 1);
        assert_eq!(one.flows[0].client.port(), 40003);
        let none: ConntrackView = json(get(&s, "/api/conntrack?vip=198.18.100.53"));
        assert_eq!(none.total, 0);
        let udp: ConntrackView = json(get(&s, "/api/conntrack?protocol=udp"));
        assert_eq!(udp.total, 0);
        let vip_port: ConntrackView =
            json(get(&s, "/api/conntrack?vip=198.18.100.10:8080&limit=0"));
        assert_eq!((vip_port.total, vip_port.flows.len()), (25, 0));
    }

    #[test]
    fn bad_conntrack_parameters_are_400() {
        let s = state(1);
        for bad in [
            "vip=nope",
            "client=198.18.0.2:99999",
            "backend=",
            "limit=10001",
            "limit=-1",
            "offset=x",
            "protocol=sctp",
            "color=red",
            "vip=%zz",
        ] {
            let r = get(&s, &format!("/api/conntrack?{bad}"));
            assert_eq!(r.status, 400, "{bad}: {}", r.body);
            let v: serde_json::Value = serde_json::from_str(&r.body).expect("json error");
            assert!(v["error"].is_string(), "{bad}: {}", r.body);
        }
        assert_eq!(get(&s, "/api/conntrack?limit=10000").status, 200);
    }

    #[test]
    fn server_answers_over_http_and_stops() {
        let s = Arc::new(state(2));
        s.set_ready(true);
        let server = AdminServer::start("127.0.0.1:0".parse().expect("addr"), Arc::clone(&s))
            .expect("start");
        let addr = server.local_addr();
        let timeout = Duration::from_secs(5);
        let r = client::get(addr, "/readyz", timeout).expect("readyz");
        assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
        let r = client::get(addr, "/api/conntrack?limit=1", timeout).expect("conntrack");
        assert_eq!(r.content_type.as_deref(), Some(JSON));
        let v: ConntrackView = serde_json::from_str(&r.body).expect("json");
        assert_eq!((v.total, v.flows.len()), (2, 1));
        let r = client::get(addr, "/api/conntrack?limit=x", timeout).expect("400");
        assert_eq!(r.status, 400);
        let r = client::get(addr, "/metrics", timeout).expect("metrics");
        exposition::parse(&r.body).expect("metrics parse");
        drop(server);
        // tiny_http's accept thread closes the listener a moment after the
        // server is dropped; until then a connection may be reset.
        let deadline = std::time::Instant::now() + timeout;
        let refused = loop {
            match client::get(addr, "/healthz", timeout) {
                Err(e @ client::ClientError::Refused { .. }) => break e,
                other if std::time::Instant::now() > deadline => {
                    panic!("expected a refusal after the server stopped, got {other:?}")
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        assert_eq!(
            refused.to_string(),
            format!("no cipgw admin endpoint at {addr}: connection refused")
        );
    }

    #[test]
    fn binding_a_taken_address_fails_with_the_address() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = AdminServer::start(addr, Arc::new(state(0))).expect_err("taken");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
