//! The service model: what a ClusterIP gateway forwards, independent of
//! where it came from (a control file or the Kubernetes API).
//!
//! Invariants the translation into this model guarantees and the data
//! plane relies on:
//! - every [`ServiceTable`] lists services sorted by [`ServiceName`];
//! - no two services share a VIP;
//! - within a service, `(port, protocol)` pairs are unique;
//! - endpoints of a port are sorted and unique by `(ip, port)`.

use std::fmt;
use std::net::Ipv4Addr;

/// Layer-4 protocol of a service port. SCTP is rejected at translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// IANA protocol number as carried in the IPv4 header (RFC 790).
    pub const fn ip_number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    /// The protocol for an IPv4 protocol number, if cipgw forwards it.
    pub const fn from_ip_number(number: u8) -> Option<Self> {
        match number {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }

    /// Lower-case name as used in table listings (`tcp`, `udp`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `namespace/name` of a Kubernetes object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl ServiceName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `spec.type` of a Service. Every type but ExternalName has its
/// ClusterIP forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

impl ServiceKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            ServiceKind::ClusterIp => "ClusterIP",
            ServiceKind::NodePort => "NodePort",
            ServiceKind::LoadBalancer => "LoadBalancer",
            ServiceKind::ExternalName => "ExternalName",
        }
    }
}

/// The virtual IP of a Service, or why it has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterIp {
    /// Forwarded: connections to this address are load-balanced.
    Vip(Ipv4Addr),
    /// `clusterIP: None`: no VIP, never forwarded; clients reach Pods
    /// directly.
    Headless,
    /// `type: ExternalName`: a DNS alias, nothing for the data plane.
    ExternalName,
}

impl ClusterIp {
    /// The address to forward, if any.
    pub const fn vip(self) -> Option<Ipv4Addr> {
        match self {
            ClusterIp::Vip(ip) => Some(ip),
            ClusterIp::Headless | ClusterIp::ExternalName => None,
        }
    }
}

/// Conditions of an endpoint, as EndpointSlice `conditions` carry them
/// (Pods in file mode map Ready to `ready` and `serving`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointState {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl EndpointState {
    /// A ready, serving, not terminating endpoint.
    pub const READY: EndpointState = EndpointState {
        ready: true,
        serving: true,
        terminating: false,
    };
}

/// One backend of one service port: a Pod address and its target port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    /// The resolved targetPort on this endpoint.
    pub port: u16,
    pub state: EndpointState,
    /// Pod name (from `targetRef` or the Pod object), for listings.
    pub pod: Option<String>,
    /// The DNS label this endpoint is named by under its headless Service
    /// (`<hostname>.<svc>.<ns>.svc.<zone>`): the EndpointSlice endpoint's
    /// `hostname` (StatefulSet Pods), or in file mode the Pod's
    /// `spec.hostname` when its `spec.subdomain` is the Service's name, as
    /// the EndpointSlice controller sets it.
    pub hostname: Option<String>,
}

/// One `spec.ports[]` entry with its endpoints resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// `spec.ports[].name`; empty names are `None`.
    pub name: Option<String>,
    /// The port clients connect to on the VIP.
    pub port: u16,
    pub protocol: Protocol,
    /// The targetPort as written (number or container-port name), for
    /// listings; each endpoint carries the resolved number.
    pub target_port: TargetPort,
    pub endpoints: Vec<Endpoint>,
}

/// `spec.ports[].targetPort` as written in the Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPort::Number(n) => write!(f, "{n}"),
            TargetPort::Name(name) => f.write_str(name),
        }
    }
}

/// A Service as the data plane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: ServiceName,
    pub kind: ServiceKind,
    pub cluster_ip: ClusterIp,
    pub ports: Vec<ServicePort>,
    /// `sessionAffinity: ClientIP`: new connections from a client go to the
    /// endpoint its earlier ones went to, until this many seconds pass
    /// without a packet from it (`sessionAffinityConfig.clientIP.
    /// timeoutSeconds`, default 10800). `None` for `sessionAffinity: None`.
    pub session_affinity: Option<u32>,
    /// `spec.externalName` of an ExternalName Service: the target its DNS
    /// name is a CNAME for. `None` for every other kind.
    pub external_name: Option<String>,
    /// `spec.publishNotReadyAddresses`: DNS names every listed endpoint,
    /// ready or not. The data plane still picks by readiness (which the
    /// EndpointSlice controller already sets ready for such Services).
    pub publish_not_ready_addresses: bool,
    /// How new connections pick an endpoint, when the Service says so
    /// (annotation `cipgw.io/lb-algorithm`); `None` follows the gateway's
    /// `--lb`.
    pub lb_algorithm: Option<LbAlgorithm>,
}

/// The default Maglev lookup-table size (`--maglev-table-size`): a prime
/// near 16 Ki, 100 entries per endpoint up to 163 endpoints.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 16_381;

/// The largest Maglev table size accepted (2^24 entries, 32 MiB a table).
pub const MAX_MAGLEV_TABLE_SIZE: u32 = 1 << 24;

/// Whether `n` is prime (trial division: table sizes are checked once).
pub fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n % 2 == 0 {
        return n == 2;
    }
    let mut d = 3u64;
    while d.saturating_mul(d) <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

/// The annotation that chooses a Service's [`LbAlgorithm`].
pub const LB_ALGORITHM_ANNOTATION: &str = "cipgw.io/lb-algorithm";

/// How a new connection's endpoint is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LbAlgorithm {
    /// Uniformly at random (what kube-proxy does). A flow this gateway
    /// has not seen is refused (TCP RST) unless it is a new connection.
    #[default]
    Random,
    /// Maglev consistent hashing of the 5-tuple: every gateway with the
    /// same hash seed and endpoints picks the same endpoint, so a flow
    /// moved between gateways (ECMP) keeps its Pod.
    Maglev,
}

impl LbAlgorithm {
    /// The name used on the command line and in the annotation.
    pub const fn as_str(self) -> &'static str {
        match self {
            LbAlgorithm::Random => "random",
            LbAlgorithm::Maglev => "maglev",
        }
    }
}

impl fmt::Display for LbAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LbAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "random" => Ok(LbAlgorithm::Random),
            "maglev" => Ok(LbAlgorithm::Maglev),
            other => Err(format!(
                "unknown load-balancing algorithm {other:?}: expected random or maglev"
            )),
        }
    }
}

/// Kubernetes' default `sessionAffinityConfig.clientIP.timeoutSeconds`.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;
/// Kubernetes' upper bound for it (one day).
pub const MAX_AFFINITY_TIMEOUT: u32 = 86_400;

/// Every Service the gateway knows, sorted by name. Immutable once built;
/// a change builds a new table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceTable {
    pub services: Vec<Service>,
}

impl ServiceTable {
    /// Services that have a VIP to forward.
    pub fn forwarded(&self) -> impl Iterator<Item = (&Service, Ipv4Addr)> {
        self.services
            .iter()
            .filter_map(|s| s.cluster_ip.vip().map(|vip| (s, vip)))
    }

    /// Looks a service up by name.
    pub fn get(&self, name: &ServiceName) -> Option<&Service> {
        self.services
            .binary_search_by(|s| s.name.cmp(name))
            .ok()
            .map(|i| &self.services[i])
    }
}
