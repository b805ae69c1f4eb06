//! Daemon settings and their defaults.
//!
//! `cipgw run` fills a [`Settings`] from command-line flags layered over an
//! optional TOML file (`--config`); this module only defines the shape, the
//! defaults and the checks that need no system access.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;

use crate::conntrack::{Timeouts, DEFAULT_UNREPLIED_PERCENT};
use crate::model::{
    is_prime, IpFamily, LbAlgorithm, DEFAULT_MAGLEV_TABLE_SIZE, MAX_MAGLEV_TABLE_SIZE,
};

/// Default service CIDR, as kube-apiserver's `--service-cluster-ip-range`
/// defaults it.
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";

/// Default directory of the connection table's file (a tmpfs on most
/// systems: it survives a restart of the gateway, not of the machine).
pub const DEFAULT_STATE_DIR: &str = "/run/cipgw";

/// Default admin endpoint (loopback only).
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9477";

/// Default metrics endpoint (/metrics, /healthz, /readyz only): loopback,
/// as kube-proxy's `--metrics-bind-address`; `0.0.0.0:9478` lets
/// Prometheus on other nodes scrape it.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9478";

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode where the driver has it, else SKB mode.
    #[default]
    Auto,
    /// Driver mode only; fail if the driver lacks it.
    Native,
    /// Generic (SKB) mode: works everywhere, slower.
    Skb,
}

impl std::str::FromStr for XdpMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(XdpMode::Auto),
            "native" => Ok(XdpMode::Native),
            "skb" => Ok(XdpMode::Skb),
            other => Err(format!(
                "unknown XDP mode {other:?}: expected auto, native or skb"
            )),
        }
    }
}

/// Where the service table comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A control file of Kubernetes manifests.
    ControlFile(PathBuf),
    /// The Kubernetes API (in-cluster config, or the given kubeconfig).
    Kubernetes { kubeconfig: Option<PathBuf> },
}

/// Everything `cipgw run` needs to start. The command line (and its TOML
/// file) fill it; see `cipgw run --help` for each setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Interfaces to attach to (one-arm: one; two-arm: client side and Pod
    /// side).
    pub ifaces: Vec<String>,
    pub source: Source,
    /// Cores to run workers on, one worker per core.
    pub cores: Vec<usize>,
    pub xdp_mode: XdpMode,
    pub admin: SocketAddr,
    /// Where /metrics, /healthz and /readyz are served besides the admin
    /// endpoint.
    pub metrics: SocketAddr,
    /// ClusterIP ranges, at most one per family (`--service-cidr`).
    pub service_cidrs: ServiceCidrs,
    /// Source ranges VIP traffic (and DNS) is accepted from, either
    /// family; empty accepts all.
    pub cluster_cidrs: Vec<IpNet>,
    pub conntrack: ConntrackSettings,
    /// At most one table rebuild per period (kube-proxy's
    /// `--min-sync-period`).
    pub min_sync_period: Duration,
    /// The `service.kubernetes.io/service-proxy-name` this gateway serves
    /// besides unlabelled Services (Kubernetes source).
    pub proxy_name: String,
    /// Where the connection table's file lives, so a restarted gateway
    /// keeps its flows; `None` keeps the table in process memory.
    pub state_dir: Option<std::path::PathBuf>,
    /// How workers drive their AF_XDP sockets.
    pub io: IoSettings,
    /// How new connections choose their endpoint.
    pub lb: LbSettings,
    /// Source NAT of new connections (`--snat`); `None` keeps the
    /// client's address (a gateway that is the Pods' router).
    pub snat: Option<SnatSettings>,
    /// The DNS the gateway answers (none without `--dns-address`).
    pub dns: DnsSettings,
}

/// The cluster DNS the gateway answers from its table (`--dns-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Addresses the gateway answers DNS on, UDP and TCP port 53, either
    /// family; empty: no DNS at all.
    pub addresses: Vec<std::net::IpAddr>,
    /// The cluster domain, without a trailing dot.
    pub cluster_domain: String,
    /// TTL of every answer, seconds.
    pub ttl: u32,
    /// Answers per second one source gets from one worker; 0: no limit.
    pub rate_limit: u32,
    /// Resolvers that names outside the cluster domain are forwarded to;
    /// either family; empty: such names are refused.
    pub upstreams: Vec<std::net::SocketAddr>,
}

/// Kubernetes' default cluster domain (kubelet's `--cluster-domain`).
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// Default TTL of DNS answers: short, as CoreDNS's `ttl 5` default for the
/// kubernetes plugin, so a client's cache never holds a name long.
pub const DEFAULT_DNS_TTL: Duration = Duration::from_secs(5);
/// Default answers per second per source and worker (response rate
/// limiting).
pub const DEFAULT_DNS_RATE_LIMIT: u32 = 200;

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            addresses: Vec::new(),
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.to_owned(),
            ttl: DEFAULT_DNS_TTL.as_secs() as u32,
            rate_limit: DEFAULT_DNS_RATE_LIMIT,
            upstreams: Vec::new(),
        }
    }
}

/// Source NAT: the addresses and ports backends see new connections come
/// from. What is not given is found at start (it needs the system).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnatSettings {
    /// `--snat-address`, either family; empty: the primary addresses of
    /// the Pod-side interface (the last `--iface`).
    pub addresses: Vec<std::net::IpAddr>,
    /// `--snat-ports LOW-HIGH`; `None`: the ports above (or else below)
    /// the kernel's `ip_local_port_range`.
    pub ports: Option<(u16, u16)>,
}

/// SNAT addresses of one family a gateway tells apart.
pub const MAX_SNAT_ADDRESSES: usize = 127;

/// Parses `--snat-ports LOW-HIGH`.
pub fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let (low, high) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?}: expected LOW-HIGH, e.g. 61000-65535"))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|_| format!("{text:?}: {p:?} is not a port number"))
    };
    Ok((port(low)?, port(high)?))
}

/// Backend choice: the algorithm of Services without the
/// `cipgw.io/lb-algorithm` annotation, and Maglev's table size and seed.
/// Gateways behind one ECMP route must share all three (and so pick the
/// same endpoint for every flow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbSettings {
    pub algorithm: LbAlgorithm,
    /// Entries of each Maglev lookup table; prime.
    pub maglev_table_size: u32,
    /// Seeds the hashing of endpoints and of flows' 5-tuples.
    pub hash_seed: u64,
}

impl Default for LbSettings {
    fn default() -> Self {
        Self {
            algorithm: LbAlgorithm::Random,
            maglev_table_size: DEFAULT_MAGLEV_TABLE_SIZE,
            hash_seed: 0,
        }
    }
}

/// Parses a hash seed: decimal, or hexadecimal after `0x`.
pub fn parse_hash_seed(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => text.replace('_', "").parse(),
    };
    parsed.map_err(|_| format!("{text:?}: expected a number from 0 to 2^64-1, decimal or 0x-hex"))
}

/// How workers drive their AF_XDP sockets: batch and ring sizes, and
/// whether they busy-poll the interfaces' NAPI contexts themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoSettings {
    /// Preferred busy polling: the worker runs the receive NAPI of its
    /// queues from its own loop (SO_PREFER_BUSY_POLL) instead of waiting
    /// for the kernel's softirq or NAPI thread to fill its RX rings.
    pub busy_poll: bool,
    /// Frames taken from one RX ring per loop iteration.
    pub rx_batch: u32,
    /// Descriptors per RX, TX, fill and completion ring (a power of two).
    pub ring_size: u32,
    /// How long an idle worker keeps polling its rings (yielding the core
    /// between rounds) before it sleeps in poll(2); waking a sleeping
    /// worker costs a request its wake-up latency.
    pub idle_spin: Duration,
    /// Nice value of the worker threads (-20..=19). Above the kernel's
    /// receive threads on the same core (threaded NAPI, nice 0), a worker
    /// gets the share of the core it needs, and a receive path that
    /// outruns it drops at the device (before copying) instead of
    /// copying frames into a full RX ring.
    pub worker_nice: i32,
    /// Back each worker's UMEM with 2 MiB pages from the kernel's reserved
    /// pool (`vm.nr_hugepages`), where enough are free; else, with a
    /// warning, what backs it without the flag: transparent huge pages
    /// where the kernel gives them, else 4 KiB pages. Off by default: the
    /// pool is the operator's to size, and the connection table (on a
    /// hugetlbfs `--state-dir`) draws on it too, after the UMEMs.
    pub umem_huge_pages: bool,
}

/// Default worker nice value.
pub const DEFAULT_WORKER_NICE: i32 = -10;

/// Default frames per RX batch.
pub const DEFAULT_RX_BATCH: u32 = 64;
/// Default descriptors per AF_XDP ring.
pub const DEFAULT_RING_SIZE: u32 = 2048;
/// Largest RX batch (frames taken from one ring per iteration).
pub const MAX_RX_BATCH: u32 = 1024;
/// Default idle polling before a worker sleeps.
pub const DEFAULT_IDLE_SPIN: Duration = Duration::ZERO;
/// Longest idle polling a worker may be asked for.
pub const MAX_IDLE_SPIN: Duration = Duration::from_secs(1);

impl Default for IoSettings {
    fn default() -> Self {
        Self {
            busy_poll: false,
            rx_batch: DEFAULT_RX_BATCH,
            ring_size: DEFAULT_RING_SIZE,
            idle_spin: DEFAULT_IDLE_SPIN,
            worker_nice: DEFAULT_WORKER_NICE,
            umem_huge_pages: false,
        }
    }
}

/// kube-proxy's default `--min-sync-period`.
pub const DEFAULT_MIN_SYNC_PERIOD: Duration = Duration::from_secs(1);
/// The default `--proxy-name`.
pub const DEFAULT_PROXY_NAME: &str = "cipgw";

/// Connection-tracking limits and timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConntrackSettings {
    /// Flows tracked at most; `None` sizes it from the machine's memory.
    pub max_flows: Option<usize>,
    /// Share of the table (percent) flows without a reply may hold.
    pub unreplied_percent: u8,
    /// Idle timeouts per state: the conntrack takes them as they are.
    pub timeouts: Timeouts,
    /// Count packets and bytes per flow (`--conntrack-accounting`).
    pub accounting: bool,
}

impl Default for ConntrackSettings {
    fn default() -> Self {
        Self {
            max_flows: None,
            unreplied_percent: DEFAULT_UNREPLIED_PERCENT,
            timeouts: Timeouts::default(),
            accounting: false,
        }
    }
}

/// Parses a duration as kube-proxy's flags write them (Go's
/// `time.ParseDuration`): numbers with units, `ns`, `us` (or `µs`), `ms`,
/// `s`, `m`, `h`, and `d` for days, summed: `250ms`, `1.5s`, `1m30s`,
/// `24h0m0s`, `1d`; or `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("an empty duration: write e.g. 1s or 1m30s".into());
    }
    let mut rest = text;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| {
                format!("{text:?}: a duration needs a unit (ns, us, ms, s, m, h or d), e.g. 1s")
            })?;
        let (number, tail) = rest.split_at(number_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?}: {number:?} is not a number"))?;
        let seconds_per_unit = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            _ => {
                return Err(format!(
                    "{text:?}: unknown unit {unit:?}: expected ns, us, ms, s, m, h or d"
                ))
            }
        };
        total += Duration::try_from_secs_f64(value * seconds_per_unit)
            .map_err(|e| format!("{text:?}: {e}"))?;
        rest = tail;
    }
    Ok(total)
}

/// Core 0 alone: a gateway that works on any machine. Production
/// deployments list their dedicated cores.
pub fn default_cores() -> Vec<usize> {
    vec![0]
}

pub fn default_admin() -> SocketAddr {
    DEFAULT_ADMIN_ADDR
        .parse()
        .expect("default admin address is valid")
}

pub fn default_metrics() -> SocketAddr {
    DEFAULT_METRICS_ADDR
        .parse()
        .expect("default metrics address is valid")
}

pub fn default_service_cidr() -> Ipv4Net {
    DEFAULT_SERVICE_CIDR
        .parse()
        .expect("default service CIDR is valid")
}

/// The service CIDRs of a gateway (`--service-cidr`, repeatable): at most
/// one per family, as kube-apiserver's `--service-cluster-ip-range` takes
/// them. The first given is the primary: the family a Service gets when
/// it names none (SingleStack), and the first of a PreferDualStack
/// Service's two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCidrs {
    v4: Option<Ipv4Net>,
    v6: Option<Ipv6Net>,
    primary: IpFamily,
}

/// Why a list of service CIDRs cannot be the gateway's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceCidrsError {
    #[error("--service-cidr: at least one CIDR is required")]
    Empty,
    #[error(
        "--service-cidr: {second} is a second {family} CIDR after {first}; \
         give at most one per family"
    )]
    SameFamily {
        first: IpNet,
        second: IpNet,
        family: IpFamily,
    },
}

impl ServiceCidrs {
    /// The CIDRs of `list`, in the order given (host bits are cleared).
    pub fn new(list: &[IpNet]) -> Result<Self, ServiceCidrsError> {
        let first = list.first().ok_or(ServiceCidrsError::Empty)?;
        let mut cidrs = ServiceCidrs {
            v4: None,
            v6: None,
            primary: family_of(first),
        };
        for (i, cidr) in list.iter().enumerate() {
            let same = list[..i]
                .iter()
                .find(|earlier| family_of(earlier) == family_of(cidr));
            if let Some(earlier) = same {
                return Err(ServiceCidrsError::SameFamily {
                    first: *earlier,
                    second: *cidr,
                    family: family_of(cidr),
                });
            }
            match cidr.trunc() {
                IpNet::V4(net) => cidrs.v4 = Some(net),
                IpNet::V6(net) => cidrs.v6 = Some(net),
            }
        }
        Ok(cidrs)
    }

    /// One IPv4 CIDR.
    pub fn v4_only(cidr: Ipv4Net) -> Self {
        ServiceCidrs {
            v4: Some(cidr.trunc()),
            v6: None,
            primary: IpFamily::V4,
        }
    }

    /// The IPv4 CIDR, if any.
    pub const fn v4(&self) -> Option<Ipv4Net> {
        self.v4
    }

    /// The IPv6 CIDR, if any.
    pub const fn v6(&self) -> Option<Ipv6Net> {
        self.v6
    }

    /// The CIDR of `family`, if any.
    pub fn get(&self, family: IpFamily) -> Option<IpNet> {
        match family {
            IpFamily::V4 => self.v4.map(IpNet::V4),
            IpFamily::V6 => self.v6.map(IpNet::V6),
        }
    }

    /// The family of the first CIDR given.
    pub const fn primary(&self) -> IpFamily {
        self.primary
    }

    /// Whether there is one of each family.
    pub const fn is_dual(&self) -> bool {
        self.v4.is_some() && self.v6.is_some()
    }

    /// The families there are CIDRs of, the primary first.
    pub fn families(&self) -> impl Iterator<Item = IpFamily> + '_ {
        [self.primary, self.primary.other()]
            .into_iter()
            .filter(|f| self.get(*f).is_some())
    }

    /// Every CIDR, the primary first.
    pub fn iter(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.families().filter_map(|f| self.get(f))
    }
}

impl Default for ServiceCidrs {
    /// [`DEFAULT_SERVICE_CIDR`] alone.
    fn default() -> Self {
        ServiceCidrs::v4_only(default_service_cidr())
    }
}

impl std::fmt::Display for ServiceCidrs {
    /// Comma-separated, the primary first, as kube-apiserver takes them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, cidr) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{cidr}")?;
        }
        Ok(())
    }
}

fn family_of(net: &IpNet) -> IpFamily {
    match net {
        IpNet::V4(_) => IpFamily::V4,
        IpNet::V6(_) => IpFamily::V6,
    }
}

/// A setting that cannot work, named by its flag.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("--iface: at least one interface is required")]
    NoInterface,
    #[error("--iface {0}: listed twice")]
    DuplicateInterface(String),
    #[error("--cores: at least one core is required")]
    NoCores,
    #[error("--cores: core {0} listed twice")]
    DuplicateCore(usize),
    #[error("--conntrack-max: must be at least 1")]
    ZeroConntrackMax,
    #[error("--conntrack-unreplied-percent: {0} is not between 1 and 100")]
    UnrepliedPercent(u8),
    #[error("--rx-batch: {0} is not between 1 and {MAX_RX_BATCH}")]
    RxBatch(u32),
    #[error("--ring-size: {0} is not a power of two between 64 and 16384, at least --rx-batch")]
    RingSize(u32),
    #[error("--idle-spin: {0:?} is longer than {MAX_IDLE_SPIN:?}")]
    IdleSpin(Duration),
    #[error("--worker-nice: {0} is not between -20 and 19")]
    WorkerNice(i32),
    #[error("--dns-address {0} is given twice")]
    DuplicateDnsAddress(std::net::IpAddr),
    #[error("--cluster-domain {0:?} is not a DNS name (RFC 1123 labels separated by dots)")]
    ClusterDomain(String),
    #[error(
        "--cluster-cidr lists no {0} range, but the gateway has an {0} service CIDR: \
         every {0} client of its VIPs would be dropped; add the cluster's {0} ranges"
    )]
    ClusterCidrMissingFamily(&'static str),
    #[error(
        "--dns-address {0}: --cluster-cidr lists no range of its family, so every \
         client asking it would be dropped; add the cluster's ranges of that family"
    )]
    DnsCidrMissingFamily(std::net::IpAddr),
    #[error("--dns-upstream needs --dns-address: only the gateway's DNS forwards")]
    UpstreamWithoutDns,
    #[error(
        "--dns-upstream needs --cluster-cidr: without it the gateway would forward \
         queries from anyone (an open resolver)"
    )]
    UpstreamWithoutClusterCidr,
    #[error("--dns-upstream {0} is one of the gateway's --dns-address (a forwarding loop)")]
    UpstreamLoop(std::net::SocketAddr),
    #[error("--snat-ports: {0}-{1} is not a range of ports from 1 to 65535, low to high")]
    SnatPorts(u16, u16),
    #[error("--snat-address: {0} listed twice")]
    DuplicateSnatAddress(std::net::IpAddr),
    #[error("--snat-address: {0} is not a unicast address")]
    BadSnatAddress(std::net::IpAddr),
    #[error("--snat-address: {0} of one family given; at most {MAX_SNAT_ADDRESSES}")]
    TooManySnatAddresses(usize),
    #[error(
        "--maglev-table-size: {0} is not a prime between 7 and {MAX_MAGLEV_TABLE_SIZE} \
         (e.g. 1021, 16381, 65537)"
    )]
    MaglevTableSize(u32),
}

impl LbSettings {
    /// The Maglev table size must be a prime (the paper's permutations
    /// need it) in a sane range.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let m = self.maglev_table_size;
        if !(7..=MAX_MAGLEV_TABLE_SIZE).contains(&m) || !is_prime(u64::from(m)) {
            return Err(SettingsError::MaglevTableSize(m));
        }
        Ok(())
    }
}

impl Settings {
    /// Checks what can be checked without touching the system.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.ifaces.is_empty() {
            return Err(SettingsError::NoInterface);
        }
        for (i, iface) in self.ifaces.iter().enumerate() {
            if self.ifaces[..i].contains(iface) {
                return Err(SettingsError::DuplicateInterface(iface.clone()));
            }
        }
        if self.cores.is_empty() {
            return Err(SettingsError::NoCores);
        }
        for (i, core) in self.cores.iter().enumerate() {
            if self.cores[..i].contains(core) {
                return Err(SettingsError::DuplicateCore(*core));
            }
        }
        if self.conntrack.max_flows == Some(0) {
            return Err(SettingsError::ZeroConntrackMax);
        }
        if !(1..=100).contains(&self.conntrack.unreplied_percent) {
            return Err(SettingsError::UnrepliedPercent(
                self.conntrack.unreplied_percent,
            ));
        }
        if !(1..=MAX_RX_BATCH).contains(&self.io.rx_batch) {
            return Err(SettingsError::RxBatch(self.io.rx_batch));
        }
        let ring = self.io.ring_size;
        if !ring.is_power_of_two() || !(64..=16384).contains(&ring) || ring < self.io.rx_batch {
            return Err(SettingsError::RingSize(ring));
        }
        if self.io.idle_spin > MAX_IDLE_SPIN {
            return Err(SettingsError::IdleSpin(self.io.idle_spin));
        }
        if !(-20..=19).contains(&self.io.worker_nice) {
            return Err(SettingsError::WorkerNice(self.io.worker_nice));
        }
        // A client matches only ranges of its own family: a family with
        // VIPs but no range would have every client dropped.
        if !self.cluster_cidrs.is_empty() {
            let has = |v4: bool| self.cluster_cidrs.iter().any(|c| c.addr().is_ipv4() == v4);
            if self.service_cidrs.v4().is_some() && !has(true) {
                return Err(SettingsError::ClusterCidrMissingFamily("IPv4"));
            }
            if self.service_cidrs.v6().is_some() && !has(false) {
                return Err(SettingsError::ClusterCidrMissingFamily("IPv6"));
            }
            // The same for a DNS address of a family without a range.
            if let Some(a) = self.dns.addresses.iter().find(|a| !has(a.is_ipv4())) {
                return Err(SettingsError::DnsCidrMissingFamily(*a));
            }
        }
        let dns = &self.dns;
        for (i, a) in dns.addresses.iter().enumerate() {
            if dns.addresses[..i].contains(a) {
                return Err(SettingsError::DuplicateDnsAddress(*a));
            }
        }
        let domain = dns.cluster_domain.trim_end_matches('.');
        let label_ok = |l: &str| {
            (1..=63).contains(&l.len())
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if domain.is_empty() || domain.len() > 200 || !domain.split('.').all(label_ok) {
            return Err(SettingsError::ClusterDomain(dns.cluster_domain.clone()));
        }
        if !dns.upstreams.is_empty() {
            if dns.addresses.is_empty() {
                return Err(SettingsError::UpstreamWithoutDns);
            }
            if self.cluster_cidrs.is_empty() {
                return Err(SettingsError::UpstreamWithoutClusterCidr);
            }
            if let Some(u) = dns
                .upstreams
                .iter()
                .find(|u| dns.addresses.contains(&u.ip()))
            {
                return Err(SettingsError::UpstreamLoop(*u));
            }
        }
        self.lb.validate()?;
        if let Some(snat) = &self.snat {
            snat.validate()?;
        }
        Ok(())
    }
}

impl SnatSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        if let Some((low, high)) = self.ports {
            if low == 0 || low > high {
                return Err(SettingsError::SnatPorts(low, high));
            }
        }
        for v4 in [true, false] {
            let n = self.addresses.iter().filter(|a| a.is_ipv4() == v4).count();
            if n > MAX_SNAT_ADDRESSES {
                return Err(SettingsError::TooManySnatAddresses(n));
            }
        }
        for (i, a) in self.addresses.iter().enumerate() {
            let broadcast = matches!(a, std::net::IpAddr::V4(v4) if v4.is_broadcast());
            if a.is_unspecified() || a.is_multicast() || broadcast || a.is_loopback() {
                return Err(SettingsError::BadSnatAddress(*a));
            }
            if self.addresses[..i].contains(a) {
                return Err(SettingsError::DuplicateSnatAddress(*a));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        // Go's time.Duration.String(), as kube-proxy prints and takes them.
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("24h0m0s"), Ok(Duration::from_secs(86_400)));
        assert_eq!(
            parse_duration("1h0m0.5s"),
            Ok(Duration::from_millis(3_600_500))
        );
        assert_eq!(parse_duration("50us"), Ok(Duration::from_micros(50)));
        assert_eq!(parse_duration("50µs"), Ok(Duration::from_micros(50)));
        for bad in [
            "",
            "1",
            "s",
            "1x",
            "1..2s",
            "-1s",
            "5 parsecs",
            "1m30",
            "1s 2s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }

    fn settings() -> Settings {
        Settings {
            ifaces: vec!["eth0".into()],
            source: Source::ControlFile("services.yaml".into()),
            cores: default_cores(),
            xdp_mode: XdpMode::Auto,
            admin: default_admin(),
            metrics: default_metrics(),
            service_cidrs: ServiceCidrs::default(),
            cluster_cidrs: Vec::new(),
            conntrack: ConntrackSettings::default(),
            min_sync_period: DEFAULT_MIN_SYNC_PERIOD,
            proxy_name: DEFAULT_PROXY_NAME.into(),
            state_dir: Some(DEFAULT_STATE_DIR.into()),
            io: IoSettings::default(),
            lb: LbSettings::default(),
            snat: None,
            dns: DnsSettings::default(),
        }
    }

    #[test]
    fn the_maglev_table_size_must_be_prime() {
        let mut s = settings();
        for good in [7, 1021, 16_381, 65_537] {
            s.lb.maglev_table_size = good;
            assert_eq!(s.validate(), Ok(()), "{good} is prime");
        }
        for bad in [0, 1, 4, 16_384, 65_535, MAX_MAGLEV_TABLE_SIZE] {
            s.lb.maglev_table_size = bad;
            assert_eq!(
                s.validate(),
                Err(SettingsError::MaglevTableSize(bad)),
                "{bad} is refused"
            );
        }
        assert!(SettingsError::MaglevTableSize(16_384)
            .to_string()
            .starts_with("--maglev-table-size: 16384 is not a prime"));
    }

    #[test]
    fn hash_seeds_and_algorithms_parse() {
        assert_eq!(parse_hash_seed("42"), Ok(42));
        assert_eq!(parse_hash_seed("0xdead_beef"), Ok(0xdead_beef));
        assert_eq!(parse_hash_seed("18446744073709551615"), Ok(u64::MAX));
        for bad in ["", "-1", "0x", "seed", "18446744073709551616"] {
            assert!(parse_hash_seed(bad).is_err(), "{bad:?} should not parse");
        }
        assert_eq!("maglev".parse(), Ok(LbAlgorithm::Maglev));
        assert_eq!("random".parse(), Ok(LbAlgorithm::Random));
        assert!("Maglev".parse::<LbAlgorithm>().is_err());
    }

    #[test]
    fn snat_settings_are_checked() {
        assert_eq!(parse_port_range("61000-65535"), Ok((61000, 65535)));
        assert!(parse_port_range("61000").is_err());
        assert!(parse_port_range("1-70000").is_err());
        let mut s = settings();
        s.snat = Some(SnatSettings::default());
        s.validate().expect("plain --snat is valid");
        s.snat = Some(SnatSettings {
            ports: Some((2000, 1000)),
            ..Default::default()
        });
        assert_eq!(s.validate(), Err(SettingsError::SnatPorts(2000, 1000)));
        let a = std::net::IpAddr::from([198, 18, 0, 1]);
        s.snat = Some(SnatSettings {
            addresses: vec![a, a],
            ports: None,
        });
        assert_eq!(s.validate(), Err(SettingsError::DuplicateSnatAddress(a)));
        let a6: std::net::IpAddr = "2001:2::1".parse().expect("literal");
        s.snat = Some(SnatSettings {
            addresses: vec![a, a6],
            ports: None,
        });
        s.validate().expect("one address per family is valid");
        s.snat = Some(SnatSettings {
            addresses: vec!["ff02::1".parse().expect("literal")],
            ports: None,
        });
        assert!(matches!(
            s.validate(),
            Err(SettingsError::BadSnatAddress(_))
        ));
    }

    #[test]
    fn service_cidrs_one_per_family_primary_first() {
        let net = |s: &str| s.parse::<IpNet>().expect("static CIDR");
        let dual = ServiceCidrs::new(&[net("2001:2:0:ff::/112"), net("198.18.100.7/24")])
            .expect("one per family");
        assert_eq!(dual.primary(), IpFamily::V6);
        assert!(dual.is_dual());
        assert_eq!(dual.v4(), Some("198.18.100.0/24".parse().expect("static")));
        assert_eq!(
            dual.families().collect::<Vec<_>>(),
            [IpFamily::V6, IpFamily::V4]
        );
        assert_eq!(dual.to_string(), "2001:2:0:ff::/112,198.18.100.0/24");
        let single = ServiceCidrs::new(&[net("198.18.100.0/24")]).expect("one");
        assert_eq!(
            (single.primary(), single.v6(), single.is_dual()),
            (IpFamily::V4, None, false)
        );
        assert_eq!(ServiceCidrs::new(&[]), Err(ServiceCidrsError::Empty));
        let error = ServiceCidrs::new(&[
            net("198.18.100.0/24"),
            net("2001:2:0:ff::/112"),
            net("198.19.0.0/16"),
        ])
        .expect_err("two IPv4");
        assert_eq!(
            error.to_string(),
            "--service-cidr: 198.19.0.0/16 is a second IPv4 CIDR after 198.18.100.0/24; \
             give at most one per family"
        );
        assert_eq!(ServiceCidrs::default().to_string(), DEFAULT_SERVICE_CIDR);
    }

    #[test]
    fn cluster_cidrs_cover_every_family_the_gateway_has_vips_of() {
        let mut s = settings();
        s.cluster_cidrs = vec!["2001:2::/48".parse().expect("static CIDR")];
        assert_eq!(
            s.validate(),
            Err(SettingsError::ClusterCidrMissingFamily("IPv4"))
        );
        s.cluster_cidrs
            .push("198.18.0.0/16".parse().expect("static CIDR"));
        s.validate().expect("both families");
        s.cluster_cidrs.remove(1);
        s.service_cidrs =
            ServiceCidrs::new(&["2001:2:0:ff::/112".parse().expect("static")]).expect("one");
        s.validate()
            .expect("an IPv6-only gateway needs no IPv4 range");
        s.cluster_cidrs = vec!["198.18.0.0/16".parse().expect("static CIDR")];
        s.service_cidrs = ServiceCidrs::new(&[
            "198.18.100.0/24".parse().expect("static"),
            "2001:2:0:ff::/112".parse().expect("static"),
        ])
        .expect("dual");
        assert_eq!(
            s.validate(),
            Err(SettingsError::ClusterCidrMissingFamily("IPv6")),
            "a dual-stack gateway with IPv4 ranges alone would drop every IPv6 client"
        );
    }

    #[test]
    fn dns_settings_are_checked() {
        let mut s = settings();
        s.dns.addresses = vec![[198, 18, 0, 53].into(), [198, 18, 0, 53].into()];
        assert_eq!(
            s.validate(),
            Err(SettingsError::DuplicateDnsAddress([198, 18, 0, 53].into()))
        );
        s.dns.addresses.pop();
        for bad in ["", "cluster..local", "-x.local", "clus_ter.local"] {
            s.dns.cluster_domain = bad.into();
            assert!(s.validate().is_err(), "{bad:?} is no cluster domain");
        }
        s.dns.cluster_domain = "corp.example.".into();
        s.validate().expect("a trailing dot is fine");
    }

    #[test]
    fn forwarding_needs_a_dns_address_and_the_cluster_cidr() {
        let upstream = std::net::SocketAddr::new([198, 18, 3, 2].into(), 53);
        let mut s = settings();
        s.dns.upstreams = vec![upstream];
        assert_eq!(s.validate(), Err(SettingsError::UpstreamWithoutDns));
        s.dns.addresses = vec![[198, 18, 100, 53].into()];
        assert_eq!(s.validate(), Err(SettingsError::UpstreamWithoutClusterCidr));
        s.cluster_cidrs = vec!["198.18.0.0/24".parse().expect("static CIDR")];
        s.validate().expect("an upstream with both");
        let looped = std::net::SocketAddr::new([198, 18, 100, 53].into(), 53);
        s.dns.upstreams.push(looped);
        assert_eq!(s.validate(), Err(SettingsError::UpstreamLoop(looped)));
        // Either family, the loop as well.
        s.dns.upstreams.pop();
        let v6: std::net::IpAddr = "2001:2:0:ff::53".parse().expect("static address");
        s.dns.addresses.push(v6);
        s.dns
            .upstreams
            .push("[2001:2::1]:5353".parse().expect("static"));
        assert_eq!(
            s.validate(),
            Err(SettingsError::DnsCidrMissingFamily(v6)),
            "an IPv6 DNS address, IPv4 ranges alone: every client dropped"
        );
        s.cluster_cidrs
            .push("2001:2::/64".parse().expect("static CIDR"));
        s.validate().expect("an IPv6 DNS address and upstream");
        let looped6 = std::net::SocketAddr::new(v6, 53);
        s.dns.upstreams.push(looped6);
        assert_eq!(s.validate(), Err(SettingsError::UpstreamLoop(looped6)));
    }

    #[test]
    fn defaults_are_valid() {
        settings().validate().expect("defaults validate");
        assert_eq!(default_service_cidr().to_string(), "10.96.0.0/12");
    }

    #[test]
    fn rejects_duplicates_and_empties() {
        let mut s = settings();
        s.ifaces.push("eth0".into());
        assert_eq!(
            s.validate(),
            Err(SettingsError::DuplicateInterface("eth0".into()))
        );
        let mut s = settings();
        s.cores.clear();
        assert_eq!(s.validate(), Err(SettingsError::NoCores));
        assert_eq!("native".parse::<XdpMode>(), Ok(XdpMode::Native));
        let mut s = settings();
        s.conntrack.unreplied_percent = 0;
        assert_eq!(s.validate(), Err(SettingsError::UnrepliedPercent(0)));
        assert!("fast".parse::<XdpMode>().is_err());
    }

    #[test]
    fn io_sizes_are_checked() {
        let mut s = settings();
        s.io.rx_batch = 0;
        assert_eq!(s.validate(), Err(SettingsError::RxBatch(0)));
        let mut s = settings();
        s.io.ring_size = 3000;
        assert_eq!(s.validate(), Err(SettingsError::RingSize(3000)));
        let mut s = settings();
        s.io.rx_batch = 512;
        s.io.ring_size = 256;
        assert_eq!(s.validate(), Err(SettingsError::RingSize(256)));
        s.io.ring_size = 4096;
        s.validate().expect("512-frame batches on 4096-entry rings");
        s.io.idle_spin = Duration::from_secs(2);
        assert_eq!(
            s.validate(),
            Err(SettingsError::IdleSpin(Duration::from_secs(2)))
        );
        let mut s = settings();
        s.io.worker_nice = -21;
        assert_eq!(s.validate(), Err(SettingsError::WorkerNice(-21)));
    }
}
