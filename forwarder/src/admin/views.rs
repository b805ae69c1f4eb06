//! The JSON views the admin endpoint answers with: `/api/status`,
//! `/api/services` and `/api/conntrack`. They derive `Deserialize` as
//! well as `Serialize`, so the CLI (`cipgw status`, `services`,
//! `conntrack`) reads exactly the types the server writes.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::counters::DropReason;
use crate::metrics::{CounterValues, Recorder};

/// `/api/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub version: String,
    pub uptime_seconds: f64,
    pub ready: bool,
    pub interfaces: Vec<String>,
    /// How each interface is served: XDP attach mode and AF_XDP copy mode.
    #[serde(default)]
    pub interface_modes: Vec<InterfaceModeView>,
    pub table: TableView,
    pub conntrack: ConntrackStatusView,
    /// All workers summed.
    pub totals: CountersView,
    pub workers: Vec<WorkerView>,
    pub control: ControlView,
    /// The DNS responders, when the gateway answers DNS.
    #[serde(default)]
    pub dns: Option<DnsStatusView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DnsStatusView {
    pub answers: u64,
    /// Since the previous status read (or since start).
    pub answers_per_second: f64,
    /// Table generation of the last answer from a zone.
    pub last_generation: u64,
    pub truncated: u64,
    pub dropped: u64,
    /// Queries for names outside the zone (`--dns-upstream`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded: Option<DnsForwardView>,
}

/// What became of forwarded queries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsForwardView {
    pub sent: u64,
    pub answered: u64,
    pub timed_out: u64,
    /// Dropped on the way (table full, send or relay failed, answers
    /// that matched no query).
    pub dropped: u64,
}

/// One interface's XDP attach mode and AF_XDP copy mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceModeView {
    pub name: String,
    /// `native` (driver) or `skb` (generic).
    pub xdp_mode: String,
    /// `zero-copy`, `copy`, or `mixed` when its queues differ.
    pub copy_mode: String,
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
    /// Flows deleted through `DELETE /api/conntrack`.
    #[serde(default)]
    pub deleted: u64,
    pub expired: u64,
    /// Source NAT: ports in use per address (empty without `--snat`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snat: Vec<SnatAddressView>,
    /// Source NAT's port range, `LOW-HIGH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snat_ports: Option<String>,
}

/// One source NAT address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnatAddressView {
    pub address: std::net::IpAddr,
    /// Flows holding one of its ports.
    pub ports_in_use: u64,
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
    /// The primary ClusterIP (`spec.clusterIP`); `None` for headless and
    /// ExternalName.
    pub vip: Option<IpAddr>,
    /// `spec.clusterIP` as Kubernetes shows it: the primary VIP, `None`
    /// for headless, empty for ExternalName.
    pub cluster_ip: String,
    /// Every ClusterIP, the primary first (`spec.clusterIPs`); empty for
    /// headless and ExternalName. The Service's and its ports' flows and
    /// counters sum every VIP's; each port's `vips` has them per VIP.
    #[serde(default)]
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.ipFamilies` as resolved (`IPv4`, `IPv6`), the primary first.
    #[serde(default)]
    pub ip_families: Vec<String>,
    /// `spec.ipFamilyPolicy` as resolved.
    #[serde(default)]
    pub ip_family_policy: String,
    /// Tracked TCP flows in ESTABLISHED to the Service's ports now
    /// (ipvsadm's ActiveConn).
    pub active_flows: u64,
    /// Every other tracked flow: handshakes, closing TCP (FIN_WAIT,
    /// CLOSE_WAIT, TIME_WAIT, CLOSE) and UDP (ipvsadm's InActConn).
    #[serde(default)]
    pub inactive_flows: u64,
    /// `sessionAffinity: ClientIP` timeout in seconds; `None` without
    /// affinity.
    #[serde(default)]
    pub affinity_seconds: Option<u32>,
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
    /// How new connections pick an endpoint: `random` or `maglev`.
    #[serde(default)]
    pub lb_algorithm: String,
    /// The Maglev lookup table's fingerprint (16 hex digits) of the
    /// primary VIP's port (the IPv4 VIP's if the Service has one, else
    /// the IPv6 VIP's) when the port uses Maglev: equal on two gateways
    /// exactly when they pick the same endpoint for every flow. Each
    /// VIP's is in `vips`.
    #[serde(default)]
    pub maglev_fingerprint: Option<String>,
    /// Summed over the Service's VIPs (both families).
    pub active_flows: u64,
    #[serde(default)]
    pub inactive_flows: u64,
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
    pub flows: Option<u64>,
    /// The port on each VIP of the Service, in `cluster_ips` order: its
    /// own flows, counters and Maglev table. Empty from a gateway that
    /// does not split them per VIP.
    #[serde(default)]
    pub vips: Vec<VipPortView>,
    pub endpoints: Vec<EndpointView>,
}

/// A Service port on one of its VIPs (one per family): what went
/// through that VIP, to its own family's endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VipPortView {
    pub vip: IpAddr,
    /// The fingerprint (16 hex digits) of this VIP's Maglev table when
    /// the port uses Maglev (each family has its own table).
    #[serde(default)]
    pub maglev_fingerprint: Option<String>,
    /// Tracked ESTABLISHED TCP flows to this VIP's port.
    pub active_flows: u64,
    /// Its other tracked flows (see [`ServiceView::inactive_flows`]).
    pub inactive_flows: u64,
    /// Packets, bytes and connections of this VIP's family's endpoints
    /// through the port, those since removed included; the VIPs' figures
    /// add up to the port's. `None` when the gateway does not count per
    /// service.
    pub packets: Option<u64>,
    pub bytes: Option<u64>,
    pub flows: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointView {
    pub ip: IpAddr,
    pub port: u16,
    pub pod: Option<String>,
    /// `ready`, `terminating` (still listed while its Pod shuts down;
    /// `serving` says whether it still takes connections), `serving` (not
    /// ready but serving), or `not-ready`.
    pub state: String,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Tracked ESTABLISHED TCP flows to this endpoint through this port.
    pub active_flows: u64,
    /// Its other tracked flows (see [`ServiceView::inactive_flows`]).
    #[serde(default)]
    pub inactive_flows: u64,
    /// Packets (both directions), bytes and connections through this
    /// port to this endpoint since it was listed under the port, as
    /// `ipvsadm -L --stats` shows per real server; they add up to the
    /// port's, less what endpoints since removed counted. `None` when the
    /// gateway does not count per service.
    #[serde(default)]
    pub packets: Option<u64>,
    #[serde(default)]
    pub bytes: Option<u64>,
    #[serde(default)]
    pub flows: Option<u64>,
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
    pub client: SocketAddr,
    pub vip: SocketAddr,
    pub backend: SocketAddr,
    /// The gateway address and port the backend sees (`--snat`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snat: Option<SocketAddr>,
    /// The flow's state (`tcp_established`, `udp_replied`, ...).
    pub state: String,
    /// Seconds until the flow expires unless another packet comes: its
    /// state's timeout after its last packet either way (`conntrack -L`'s
    /// third column). `None` from a gateway that does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_seconds: Option<u32>,
    /// Packets of the flow, client to backend and backend to client
    /// (`--conntrack-accounting`; `None` without).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets: Option<[u64; 2]>,
    /// Bytes of the flow's frames, the same two ways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<[u64; 2]>,
    /// The client-to-backend entry exists.
    pub forward: bool,
    /// The backend-to-client entry exists.
    pub reply: bool,
}

/// What `DELETE /api/conntrack` did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConntrackDeleted {
    /// Flows removed (both entries of each).
    pub deleted: usize,
}
