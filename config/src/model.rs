//! The service model: what a ClusterIP gateway forwards, independent of
//! where it came from (a control file or the Kubernetes API).
//!
//! Invariants the translation into this model guarantees and the data
//! plane relies on:
//! - every [`ServiceTable`] lists services sorted by [`ServiceName`];
//! - no two services share a VIP (an address of either family);
//! - a Service has at most one VIP per family ([`Vips`]);
//! - within a service, `(port, protocol)` pairs are unique;
//! - endpoints of a port are sorted and unique by `(ip, port)`; IPv4
//!   addresses sort before IPv6 ones, so each family is one run;
//! - every endpoint is of one of the Service's [`Service::ip_families`],
//!   and a Service with VIPs has a VIP of every such family: a VIP of one
//!   family is only ever paired with the endpoints of that family
//!   ([`ServicePort::endpoints_of`]), never translated across families.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

/// An IP family (`spec.ipFamilies` entries `IPv4`, `IPv6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    /// The family of `ip`.
    pub const fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// The other family.
    pub const fn other(self) -> Self {
        match self {
            IpFamily::V4 => IpFamily::V6,
            IpFamily::V6 => IpFamily::V4,
        }
    }

    /// As Kubernetes writes it (`IPv4`, `IPv6`).
    pub const fn as_str(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }
}

impl fmt::Display for IpFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `spec.ipFamilyPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IpFamilyPolicy {
    /// One family (the first of `spec.ipFamilies`).
    #[default]
    SingleStack,
    /// Both families when the cluster (here: the gateway's service CIDRs)
    /// has both, else one.
    PreferDualStack,
    /// Both families, or the Service is refused.
    RequireDualStack,
}

impl IpFamilyPolicy {
    /// As Kubernetes writes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            IpFamilyPolicy::SingleStack => "SingleStack",
            IpFamilyPolicy::PreferDualStack => "PreferDualStack",
            IpFamilyPolicy::RequireDualStack => "RequireDualStack",
        }
    }
}

impl fmt::Display for IpFamilyPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The virtual IPs of a Service: one or two, at most one per family, the
/// primary (`spec.clusterIP`, the family of `spec.ipFamilies[0]`) first.
/// Built only through [`Vips::single`] and [`Vips::dual`], which keep
/// those rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Vips {
    primary: IpAddr,
    /// Of the other family than `primary`.
    secondary: Option<IpAddr>,
}

impl Vips {
    /// A single-stack Service's VIP.
    pub const fn single(ip: IpAddr) -> Self {
        Vips {
            primary: ip,
            secondary: None,
        }
    }

    /// A dual-stack Service's VIPs, `primary` first; `None` when both are
    /// of one family.
    pub const fn dual(primary: IpAddr, secondary: IpAddr) -> Option<Self> {
        match (primary, secondary) {
            (IpAddr::V4(_), IpAddr::V6(_)) | (IpAddr::V6(_), IpAddr::V4(_)) => Some(Vips {
                primary,
                secondary: Some(secondary),
            }),
            _ => None,
        }
    }

    /// The IPv4 VIP, if any.
    pub const fn v4(self) -> Option<Ipv4Addr> {
        match (self.primary, self.secondary) {
            (IpAddr::V4(ip), _) | (_, Some(IpAddr::V4(ip))) => Some(ip),
            _ => None,
        }
    }

    /// The IPv6 VIP, if any.
    pub const fn v6(self) -> Option<Ipv6Addr> {
        match (self.primary, self.secondary) {
            (IpAddr::V6(ip), _) | (_, Some(IpAddr::V6(ip))) => Some(ip),
            _ => None,
        }
    }

    /// The VIP of `family`, if any.
    pub fn get(self, family: IpFamily) -> Option<IpAddr> {
        match family {
            IpFamily::V4 => self.v4().map(IpAddr::V4),
            IpFamily::V6 => self.v6().map(IpAddr::V6),
        }
    }

    /// The primary VIP (`spec.clusterIP`).
    pub const fn primary(self) -> IpAddr {
        self.primary
    }

    /// The primary family (`spec.ipFamilies[0]`).
    pub const fn primary_family(self) -> IpFamily {
        IpFamily::of(self.primary)
    }

    /// The second VIP of a dual-stack Service.
    pub const fn secondary(self) -> Option<IpAddr> {
        self.secondary
    }

    /// Whether it has both families.
    pub const fn is_dual(self) -> bool {
        self.secondary.is_some()
    }

    /// Every VIP, the primary first (`spec.clusterIPs` order).
    pub fn iter(self) -> impl Iterator<Item = IpAddr> {
        std::iter::once(self.primary).chain(self.secondary)
    }

    /// The families it has, the primary first.
    pub fn families(self) -> impl Iterator<Item = IpFamily> {
        self.iter().map(IpFamily::of)
    }

    /// Whether `ip` is one of them.
    pub fn contains(self, ip: IpAddr) -> bool {
        self.primary == ip || self.secondary == Some(ip)
    }
}

/// The virtual IPs of a Service, or why it has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterIp {
    /// Forwarded: connections to these addresses are load-balanced, each
    /// over the endpoints of its own family.
    Vips(Vips),
    /// `clusterIP: None`: no VIP, never forwarded; clients reach Pods
    /// directly.
    Headless,
    /// `type: ExternalName`: a DNS alias, nothing for the data plane.
    ExternalName,
}

impl ClusterIp {
    /// A single-stack Service's VIP.
    pub const fn single(ip: IpAddr) -> Self {
        ClusterIp::Vips(Vips::single(ip))
    }

    /// The VIPs, if any.
    pub const fn vips_of(self) -> Option<Vips> {
        match self {
            ClusterIp::Vips(vips) => Some(vips),
            ClusterIp::Headless | ClusterIp::ExternalName => None,
        }
    }

    /// The IPv4 VIP to forward, if any.
    pub const fn vip4(self) -> Option<Ipv4Addr> {
        match self {
            ClusterIp::Vips(vips) => vips.v4(),
            ClusterIp::Headless | ClusterIp::ExternalName => None,
        }
    }

    /// The IPv6 VIP to forward, if any.
    pub const fn vip6(self) -> Option<Ipv6Addr> {
        match self {
            ClusterIp::Vips(vips) => vips.v6(),
            ClusterIp::Headless | ClusterIp::ExternalName => None,
        }
    }

    /// Every VIP, the primary first; none for headless and ExternalName.
    pub fn vips(self) -> impl Iterator<Item = IpAddr> {
        self.vips_of().into_iter().flat_map(Vips::iter)
    }

    /// The primary VIP (`spec.clusterIP`), if any.
    pub fn primary(self) -> Option<IpAddr> {
        self.vips_of().map(Vips::primary)
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
    /// Of one of the Service's families (see the module's invariants).
    pub ip: IpAddr,
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

impl ServicePort {
    /// The endpoints of `family`: those a VIP of that family forwards to.
    pub fn endpoints_of(&self, family: IpFamily) -> impl Iterator<Item = &Endpoint> {
        self.endpoints
            .iter()
            .filter(move |e| IpFamily::of(e.ip) == family)
    }
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
    /// `spec.ipFamilyPolicy` as resolved (Kubernetes' defaults applied).
    pub ip_family_policy: IpFamilyPolicy,
    /// `spec.ipFamilies` as resolved: one or two, the primary first; the
    /// families of the VIPs exactly, for a Service with VIPs. Endpoints of
    /// other families are left out at translation.
    pub ip_families: Vec<IpFamily>,
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
    /// Services that have VIPs to forward, with them.
    pub fn forwarded(&self) -> impl Iterator<Item = (&Service, Vips)> {
        self.services
            .iter()
            .filter_map(|s| s.cluster_ip.vips_of().map(|vips| (s, vips)))
    }

    /// Services with an IPv4 VIP, with it (what the IPv4 data plane
    /// compiles).
    pub fn forwarded_v4(&self) -> impl Iterator<Item = (&Service, Ipv4Addr)> {
        self.services
            .iter()
            .filter_map(|s| s.cluster_ip.vip4().map(|vip| (s, vip)))
    }

    /// Looks a service up by name.
    pub fn get(&self, name: &ServiceName) -> Option<&Service> {
        self.services
            .binary_search_by(|s| s.name.cmp(name))
            .ok()
            .map(|i| &self.services[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 100, 10));
    const V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0xff, 0, 0, 0, 0x10));

    #[test]
    fn vips_hold_one_address_per_family_primary_first() {
        let dual = Vips::dual(V6, V4).expect("two families");
        assert_eq!(dual.primary(), V6);
        assert_eq!(dual.primary_family(), IpFamily::V6);
        assert_eq!(dual.secondary(), Some(V4));
        assert_eq!(dual.iter().collect::<Vec<_>>(), [V6, V4]);
        assert_eq!(
            dual.families().collect::<Vec<_>>(),
            [IpFamily::V6, IpFamily::V4]
        );
        assert_eq!(dual.v4(), Some(Ipv4Addr::new(198, 18, 100, 10)));
        assert_eq!(dual.get(IpFamily::V6), Some(V6));
        assert!(dual.is_dual() && dual.contains(V4) && dual.contains(V6));
        assert_eq!(Vips::dual(V4, V4), None, "one per family");
        let single = Vips::single(V4);
        assert_eq!((single.v4().is_some(), single.v6()), (true, None));
        assert_eq!(single.iter().collect::<Vec<_>>(), [V4]);

        let ip = ClusterIp::Vips(dual);
        assert_eq!(ip.vip4(), dual.v4());
        assert_eq!(ip.vip6(), dual.v6());
        assert_eq!(ip.primary(), Some(V6));
        assert_eq!(ip.vips().collect::<Vec<_>>(), [V6, V4]);
        assert_eq!(ClusterIp::Headless.vips().count(), 0);
        assert_eq!(ClusterIp::ExternalName.vip4(), None);
    }

    #[test]
    fn endpoints_of_a_family() {
        let endpoint = |ip: IpAddr| Endpoint {
            ip,
            port: 80,
            state: EndpointState::READY,
            pod: None,
            hostname: None,
        };
        let port = ServicePort {
            name: None,
            port: 80,
            protocol: Protocol::Tcp,
            target_port: TargetPort::Number(80),
            endpoints: vec![endpoint(V4), endpoint(V6)],
        };
        let of = |family| port.endpoints_of(family).map(|e| e.ip).collect::<Vec<_>>();
        assert_eq!(of(IpFamily::V4), [V4]);
        assert_eq!(of(IpFamily::V6), [V6]);
        assert!(V4 < V6, "IPv4 endpoints sort first");
    }
}
