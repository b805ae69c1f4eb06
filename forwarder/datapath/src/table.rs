//! The compiled service table the workers look new flows up in.
//!
//! The control thread compiles a [`CompiledTable`] from the service model
//! and publishes it through [`TableHandle`]; workers load the current one
//! once per batch and never see it change under them. Everything a worker
//! needs for a new flow is precomputed here: the hash map from
//! VIP:port/protocol to the endpoints that may take new connections.
//!
//! A table also says which flows it ends: the targets (VIP, port,
//! protocol, endpoint) the previous table had and it has not. A worker
//! checks every forward packet of a tracked flow against that set, so
//! from the moment a table is published no packet goes to an endpoint it
//! removed, whatever the timing of the control thread's retirement pass.
//! That pass runs once no worker uses an older table any more
//! ([`TableHandle::wait_for_readers`], a grace period as in RCU), and
//! removes what is left; the set is only needed until then, so each
//! table carries the difference to its predecessor alone.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ahash::RandomState;
use arc_swap::ArcSwap;
use cipgw_config::{Endpoint, LbAlgorithm, Protocol, ServiceTable};
use crossbeam::utils::CachePadded;

use crate::conntrack::FlowKey;
use crate::dns::DnsZone;
use crate::maglev::{MaglevTable, MaglevTables};

/// Where a flow goes as the table knows it: VIP, port, protocol,
/// endpoint address and endpoint port.
pub type FlowTarget = (Ipv4Addr, u16, Protocol, Ipv4Addr, u16);

/// VIP, service port and protocol: what a new connection is looked up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceKey {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

impl Hash for ServiceKey {
    // One word: the lookup is on the new-flow path.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(
            (u64::from(u32::from(self.vip)) << 24)
                | (u64::from(self.port) << 8)
                | u64::from(self.protocol.ip_number()),
        );
    }
}

/// A backend as the data plane writes it into packets. Ordered by
/// address, then port (how Maglev tables list them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// What new connections to one VIP:port/protocol may go to.
#[derive(Debug, Clone)]
pub struct PortEntry {
    /// Index of the Service in the model's `services`.
    pub service: usize,
    /// Endpoints new flows are spread over: the ready ones, or when none
    /// is ready the serving terminating ones (Kubernetes >= 1.28).
    pub backends: Box<[Backend]>,
    /// Session affinity timeout (seconds) for `sessionAffinity: ClientIP`.
    pub affinity: Option<u32>,
    /// Each backend's counter slot, in the order of `backends` (which
    /// it always has the length of): the slot names a (Service port,
    /// endpoint) pair, so a flow's packets count for both
    /// ([`crate::conntrack::NO_SLOT`] when not counted).
    pub slots: Box<[u32]>,
    /// The Maglev table new flows are picked from, when the Service's
    /// algorithm is Maglev (`backends` is then the table's sorted
    /// backends, which its entries index). `None`: random choice.
    pub maglev: Option<Arc<MaglevTable>>,
}

impl PortEntry {
    /// The counter slot of `backends[index]` ([`crate::conntrack::NO_SLOT`]
    /// when not counted).
    #[inline]
    pub fn slot_of(&self, index: usize) -> u32 {
        self.slots
            .get(index)
            .copied()
            .unwrap_or(crate::conntrack::NO_SLOT)
    }
}

/// Who a backend's packets are replies for: what a reply of a flow this
/// gateway has not seen is rewritten to (stateless replies, Maglev only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyOwner {
    /// Exactly one Service port has this endpoint.
    Unique(ServiceKey),
    /// Several do: a reply cannot be told which VIP to come from.
    Ambiguous,
}

/// How the table chooses backends: the default algorithm for Services
/// without the `cipgw.io/lb-algorithm` annotation, and the control
/// thread's store of Maglev tables (kept across compilations).
#[derive(Debug)]
pub struct LbPlan<'a> {
    pub default: LbAlgorithm,
    pub maglev: &'a mut MaglevTables,
}

/// Why a VIP packet found no backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// The address is no VIP.
    NotVip,
    /// The VIP's Service defines no such port/protocol.
    NoPort,
    /// The port has no usable endpoint.
    NoEndpoints,
}

/// An immutable, compiled service table.
#[derive(Debug)]
pub struct CompiledTable {
    generation: u64,
    model: Arc<ServiceTable>,
    ports: HashMap<ServiceKey, PortEntry, RandomState>,
    vips: HashSet<Ipv4Addr, RandomState>,
    vips_with_endpoints: HashSet<Ipv4Addr, RandomState>,
    /// Every endpoint address/port/protocol of a forwarded Service: the
    /// sources whose packets are replies, with the Service port they
    /// belong to.
    backends: HashMap<(Ipv4Addr, u16, Protocol), ReplyOwner, RandomState>,
    /// Some port uses Maglev: only then are untracked replies rewritten
    /// (or dropped as ambiguous) rather than replies without a flow.
    uses_maglev: bool,
    /// Targets of the previous table that this one no longer has.
    retiring: HashSet<FlowTarget, RandomState>,
    /// The DNS zone compiled from the same model, when the gateway
    /// answers DNS: published with the table, so answers and forwarding
    /// change at the same moment.
    dns: Option<Arc<DnsZone>>,
}

/// The endpoints of a port that may take new connections.
fn usable(endpoints: &[Endpoint]) -> Box<[Backend]> {
    let pick = |want_ready: bool| {
        endpoints
            .iter()
            .filter(|e| {
                if want_ready {
                    e.state.ready
                } else {
                    e.state.serving && e.state.terminating
                }
            })
            // IPv6: only IPv4 endpoints are compiled until the table has an IPv6 side.
            .filter_map(|e| match e.ip {
                std::net::IpAddr::V4(ip) => Some(Backend { ip, port: e.port }),
                std::net::IpAddr::V6(_) => None,
            })
            .collect::<Box<[Backend]>>()
    };
    let ready = pick(true);
    if ready.is_empty() {
        pick(false)
    } else {
        ready
    }
}

impl CompiledTable {
    /// Compiles the model. Runs on the control thread, never a worker.
    pub fn compile(model: Arc<ServiceTable>, generation: u64) -> Self {
        Self::compile_with_slots(model, generation, |_, _| None)
    }

    /// Compiles the model with a counter slot for each Service port
    /// (`slot(service index, port index)`).
    pub fn compile_with_slots(
        model: Arc<ServiceTable>,
        generation: u64,
        slot: impl Fn(usize, usize) -> Option<u32>,
    ) -> Self {
        let mut maglev = MaglevTables::new(
            crate::maglev::DEFAULT_TABLE_SIZE,
            crate::maglev::DEFAULT_HASH_SEED,
        );
        Self::compile_with_lb(
            model,
            generation,
            slot,
            LbPlan {
                default: LbAlgorithm::Random,
                maglev: &mut maglev,
            },
        )
    }

    /// Compiles the model with counter slots and the backend choice of
    /// `lb`: a Maglev Service port gets its endpoint set's shared table
    /// from `lb.maglev` (built there if new; tables this compilation does
    /// not use are dropped from the store). Every endpoint of a port
    /// counts in the port's slot; [`Self::compile_with_endpoint_slots`]
    /// gives each its own.
    pub fn compile_with_lb(
        model: Arc<ServiceTable>,
        generation: u64,
        slot: impl Fn(usize, usize) -> Option<u32>,
        lb: LbPlan<'_>,
    ) -> Self {
        Self::compile_with_endpoint_slots_lb(model, generation, |s, p, _| slot(s, p), lb)
    }

    /// Compiles the model with a counter slot for each endpoint of each
    /// Service port (`slot(service index, port index, endpoint)`) and
    /// random choice.
    pub fn compile_with_endpoint_slots(
        model: Arc<ServiceTable>,
        generation: u64,
        slot: impl Fn(usize, usize, Backend) -> Option<u32>,
    ) -> Self {
        let mut maglev = MaglevTables::new(
            crate::maglev::DEFAULT_TABLE_SIZE,
            crate::maglev::DEFAULT_HASH_SEED,
        );
        Self::compile_with_endpoint_slots_lb(
            model,
            generation,
            slot,
            LbPlan {
                default: LbAlgorithm::Random,
                maglev: &mut maglev,
            },
        )
    }

    /// [`Self::compile_with_lb`] with a counter slot for each endpoint of
    /// each Service port (`slot(service index, port index, endpoint)`).
    pub fn compile_with_endpoint_slots_lb(
        model: Arc<ServiceTable>,
        generation: u64,
        slot: impl Fn(usize, usize, Backend) -> Option<u32>,
        lb: LbPlan<'_>,
    ) -> Self {
        lb.maglev.begin_round();
        let mut ports = HashMap::with_hasher(RandomState::new());
        let mut vips = HashSet::with_hasher(RandomState::new());
        let mut backends = HashMap::with_hasher(RandomState::new());
        let mut vips_with_endpoints = HashSet::with_hasher(RandomState::new());
        for (index, service) in model.services.iter().enumerate() {
            // IPv6: only the IPv4 VIP is compiled until the table has an IPv6 side.
            let Some(vip) = service.cluster_ip.vip4() else {
                continue;
            };
            vips.insert(vip);
            let algorithm = service.lb_algorithm.unwrap_or(lb.default);
            for (port_index, port) in service.ports.iter().enumerate() {
                let key = ServiceKey {
                    vip,
                    port: port.port,
                    protocol: port.protocol,
                };
                // IPv6: only IPv4 endpoints are compiled (those of the IPv4 VIP).
                for (ip, e) in port.endpoints.iter().filter_map(|e| match e.ip {
                    std::net::IpAddr::V4(ip) => Some((ip, e)),
                    std::net::IpAddr::V6(_) => None,
                }) {
                    backends
                        .entry((ip, e.port, port.protocol))
                        .and_modify(|owner| {
                            if *owner != ReplyOwner::Unique(key) {
                                *owner = ReplyOwner::Ambiguous;
                            }
                        })
                        .or_insert(ReplyOwner::Unique(key));
                }
                let mut usable = usable(&port.endpoints);
                if !usable.is_empty() {
                    vips_with_endpoints.insert(vip);
                }
                // A set Maglev cannot index (over 65,535 endpoints) keeps
                // random choice (see crate::maglev).
                let maglev = (algorithm == LbAlgorithm::Maglev && !usable.is_empty())
                    .then(|| lb.maglev.get(&usable).ok())
                    .flatten();
                // Entries index the table's sorted backends; endpoints
                // usually come sorted already, and then nothing is copied.
                if let Some(table) = maglev.as_ref().filter(|t| t.backends() != &usable[..]) {
                    usable = table.backends().into();
                }
                let slots = usable
                    .iter()
                    .map(|&b| slot(index, port_index, b).unwrap_or(crate::conntrack::NO_SLOT))
                    .collect();
                ports.insert(
                    key,
                    PortEntry {
                        service: index,
                        backends: usable,
                        affinity: service.session_affinity,
                        slots,
                        maglev,
                    },
                );
            }
        }
        lb.maglev.finish_round();
        let uses_maglev = ports.values().any(|p| p.maglev.is_some());
        Self {
            generation,
            model,
            ports,
            vips,
            vips_with_endpoints,
            backends,
            uses_maglev,
            retiring: HashSet::with_hasher(RandomState::new()),
            dns: None,
        }
    }

    /// Attaches the DNS zone compiled from this table's model.
    pub fn with_dns(mut self, zone: Arc<DnsZone>) -> Self {
        self.dns = Some(zone);
        self
    }

    /// The DNS zone of this table; `None` before the first full sync or
    /// when the gateway answers no DNS.
    #[inline]
    pub fn dns(&self) -> Option<&DnsZone> {
        self.dns.as_deref()
    }

    /// Marks the targets whose flows this table ends: flows to them are
    /// retired at their next forward packet ([`CompiledTable::retires`]).
    pub fn with_retiring(mut self, retiring: impl IntoIterator<Item = FlowTarget>) -> Self {
        self.retiring.extend(retiring);
        self
    }

    /// Whether the flow of `key` (client -> VIP) going to `backend` lost
    /// its endpoint or Service port in this table. One length check for
    /// the tables of a steady cluster, whose sets are empty.
    #[inline]
    pub fn retires(&self, key: &FlowKey, backend: (Ipv4Addr, u16)) -> bool {
        !self.retiring.is_empty()
            && self
                .retiring
                .contains(&(key.dst, key.dst_port, key.protocol, backend.0, backend.1))
    }

    /// How many targets this table ends.
    pub fn retiring_len(&self) -> usize {
        self.retiring.len()
    }

    /// An empty table (nothing forwarded).
    pub fn empty() -> Self {
        Self::compile(Arc::new(ServiceTable::default()), 0)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn model(&self) -> &Arc<ServiceTable> {
        &self.model
    }

    /// What a new connection to `key` may go to.
    #[inline]
    pub fn lookup(&self, key: &ServiceKey) -> Result<&PortEntry, Miss> {
        match self.ports.get(key) {
            Some(entry) if entry.backends.is_empty() => Err(Miss::NoEndpoints),
            Some(entry) => Ok(entry),
            None if self.vips.contains(&key.vip) => Err(Miss::NoPort),
            None => Err(Miss::NotVip),
        }
    }

    /// The entry of a VIP port, usable endpoints or not.
    #[inline]
    pub fn port_entry(&self, key: &ServiceKey) -> Option<&PortEntry> {
        self.ports.get(key)
    }

    /// True when some port of the Service behind `vip` has a usable
    /// endpoint (what `ping <ClusterIP>` is answered for).
    pub fn vip_has_endpoints(&self, vip: Ipv4Addr) -> bool {
        self.vips_with_endpoints.contains(&vip)
    }

    #[inline]
    pub fn is_vip(&self, ip: Ipv4Addr) -> bool {
        self.vips.contains(&ip)
    }

    /// True when packets from this address/port/protocol are replies.
    #[inline]
    pub fn is_backend(&self, ip: Ipv4Addr, port: u16, protocol: Protocol) -> bool {
        self.backends.contains_key(&(ip, port, protocol))
    }

    /// Whether some port uses Maglev (see [`ReplyOwner`]).
    #[inline]
    pub fn uses_maglev(&self) -> bool {
        self.uses_maglev
    }

    /// The Service port a backend's packets are replies for, if it is one.
    #[inline]
    pub fn reply_owner(&self, ip: Ipv4Addr, port: u16, protocol: Protocol) -> Option<ReplyOwner> {
        self.backends.get(&(ip, port, protocol)).copied()
    }

    /// Every VIP port's entry (views, `cipgw check`).
    pub fn port_entries(&self) -> impl Iterator<Item = (&ServiceKey, &PortEntry)> + '_ {
        self.ports.iter()
    }

    /// VIPs the XDP program must redirect.
    pub fn vips(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.vips.iter().copied()
    }

    /// Endpoint sources the XDP program must redirect (replies).
    pub fn backends(&self) -> impl Iterator<Item = (Ipv4Addr, u16, Protocol)> + '_ {
        self.backends.keys().copied()
    }

    /// Number of VIP:port/protocol entries.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }
}

/// Where the current table is published. Cloning shares the same slot.
#[derive(Debug, Clone)]
pub struct TableHandle {
    current: Arc<ArcSwap<CompiledTable>>,
    /// What each worker's [`TableReader`] reports; registration is on the
    /// control path only.
    readers: Arc<Mutex<Vec<Arc<CachePadded<AtomicU64>>>>>,
}

/// A reader's mark while it sleeps: it uses no table, and loads the
/// newest when it wakes.
const READER_IDLE: u64 = u64::MAX;
/// A reader's mark between waking and loading a table: it may be about
/// to use any table.
const READER_WAKING: u64 = 0;

impl TableHandle {
    pub fn new(table: CompiledTable) -> Self {
        Self {
            current: Arc::new(ArcSwap::from_pointee(table)),
            readers: Arc::default(),
        }
    }

    /// A worker's view of the table: loads it once per batch and reports
    /// which generation it uses, so [`TableHandle::wait_for_readers`] can
    /// tell when an old table is out of use.
    pub fn reader(&self) -> TableReader {
        let mark = Arc::new(CachePadded::new(AtomicU64::new(READER_IDLE)));
        self.readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::clone(&mark));
        TableReader {
            cache: self.cache(),
            mark,
            reported: READER_IDLE,
        }
    }

    /// Waits until every reader is asleep or uses `generation` or newer:
    /// from then on no worker can act on an older table (a grace period).
    /// Returns false when `timeout` passed first (a worker stuck in one
    /// batch that long is a bug to log, not to wait for for ever).
    pub fn wait_for_readers(&self, generation: u64, timeout: Duration) -> bool {
        // SeqCst fence: orders the caller's publish before the marks read
        // below; pairs with the fence in `TableReader::load` (a reader
        // that we see asleep loads the table after its WAKING mark, so it
        // sees what we published; one we see WAKING or older is waited
        // for).
        fence(Ordering::SeqCst);
        let readers = self
            .readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let deadline = Instant::now() + timeout;
        loop {
            let done = readers.iter().all(|mark| {
                // SeqCst: see the fence above.
                let seen = mark.load(Ordering::SeqCst);
                seen == READER_IDLE || (seen != READER_WAKING && seen >= generation)
            });
            if done {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Replaces the table; workers see it from their next batch on.
    pub fn publish(&self, table: CompiledTable) {
        self.current.store(Arc::new(table));
    }

    /// The current table (an `Arc` clone; for the control thread and
    /// admin views).
    pub fn current(&self) -> Arc<CompiledTable> {
        self.current.load_full()
    }

    /// A per-worker cache that reloads only when a new table was
    /// published: one atomic load per batch in the common case.
    pub fn cache(&self) -> arc_swap::Cache<Arc<ArcSwap<CompiledTable>>, Arc<CompiledTable>> {
        arc_swap::Cache::new(Arc::clone(&self.current))
    }
}

/// One worker's access to the published table (see
/// [`TableHandle::reader`]). Owned by one thread.
#[derive(Debug)]
pub struct TableReader {
    cache: arc_swap::Cache<Arc<ArcSwap<CompiledTable>>, Arc<CompiledTable>>,
    mark: Arc<CachePadded<AtomicU64>>,
    /// The mark last stored, so that a steady worker stores nothing.
    reported: u64,
}

impl TableReader {
    /// The current table, for one batch; reports its generation. One
    /// atomic load per batch when nothing changed.
    #[inline]
    pub fn load(&mut self) -> &Arc<CompiledTable> {
        if self.reported == READER_IDLE {
            // SeqCst store and fence: the WAKING mark is visible before
            // the table load below (see `TableHandle::wait_for_readers`).
            self.mark.store(READER_WAKING, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            self.reported = READER_WAKING;
        }
        let generation = self.cache.load().generation();
        if generation != self.reported {
            // SeqCst: read by `wait_for_readers`; a new generation at most
            // once per published table.
            self.mark.store(generation, Ordering::SeqCst);
            self.reported = generation;
        }
        self.cache.load()
    }

    /// The worker is about to sleep (or stop) and uses no table until its
    /// next [`TableReader::load`].
    pub fn idle(&mut self) {
        // SeqCst: see `wait_for_readers`.
        self.mark.store(READER_IDLE, Ordering::SeqCst);
        self.reported = READER_IDLE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cipgw_config::{
        ClusterIp, EndpointState, Service, ServiceKind, ServiceName, ServicePort, TargetPort,
    };

    fn endpoint(last: u8, state: EndpointState) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::new(198, 18, 2, last).into(),
            port: 5678,
            state,
            pod: None,
            hostname: None,
        }
    }

    fn model(endpoints: Vec<Endpoint>) -> Arc<ServiceTable> {
        Arc::new(ServiceTable {
            services: vec![
                Service {
                    name: ServiceName::new("default", "echo"),
                    kind: ServiceKind::ClusterIp,
                    cluster_ip: ClusterIp::single(std::net::IpAddr::from(Ipv4Addr::new(
                        198, 18, 100, 10,
                    ))),
                    ip_family_policy: cipgw_config::IpFamilyPolicy::SingleStack,
                    ip_families: vec![cipgw_config::IpFamily::V4],
                    session_affinity: None,
                    lb_algorithm: None,
                    external_name: None,
                    publish_not_ready_addresses: false,
                    ports: vec![ServicePort {
                        name: None,
                        port: 8080,
                        protocol: Protocol::Tcp,
                        target_port: TargetPort::Number(5678),
                        endpoints,
                    }],
                },
                Service {
                    name: ServiceName::new("default", "headless"),
                    kind: ServiceKind::ClusterIp,
                    cluster_ip: ClusterIp::Headless,
                    ip_family_policy: cipgw_config::IpFamilyPolicy::SingleStack,
                    ip_families: vec![cipgw_config::IpFamily::V4],
                    session_affinity: None,
                    lb_algorithm: None,
                    external_name: None,
                    publish_not_ready_addresses: false,
                    ports: vec![],
                },
            ],
        })
    }

    fn key(port: u16) -> ServiceKey {
        ServiceKey {
            vip: Ipv4Addr::new(198, 18, 100, 10),
            port,
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn ready_endpoints_take_new_flows() {
        let terminating = EndpointState {
            ready: false,
            serving: true,
            terminating: true,
        };
        let t = CompiledTable::compile(
            model(vec![
                endpoint(11, EndpointState::READY),
                endpoint(12, terminating),
            ]),
            1,
        );
        assert_eq!(
            t.lookup(&key(8080)).map(|e| &e.backends[..]),
            Ok(&[Backend {
                ip: Ipv4Addr::new(198, 18, 2, 11),
                port: 5678
            }][..])
        );
        assert_eq!(t.lookup(&key(8081)).err(), Some(Miss::NoPort));
        assert!(t.is_backend(Ipv4Addr::new(198, 18, 2, 12), 5678, Protocol::Tcp));
        assert!(!t.is_backend(Ipv4Addr::new(198, 18, 2, 12), 5678, Protocol::Udp));
        assert_eq!(t.vips().count(), 1, "headless services get no VIP");
    }

    #[test]
    fn serving_terminating_endpoints_are_the_fallback() {
        let terminating = EndpointState {
            ready: false,
            serving: true,
            terminating: true,
        };
        let gone = EndpointState {
            ready: false,
            serving: false,
            terminating: true,
        };
        let t = CompiledTable::compile(
            model(vec![endpoint(12, terminating), endpoint(13, gone)]),
            1,
        );
        assert_eq!(t.lookup(&key(8080)).map(|e| e.backends.len()), Ok(1));
        let t = CompiledTable::compile(model(vec![endpoint(13, gone)]), 1);
        assert_eq!(t.lookup(&key(8080)).err(), Some(Miss::NoEndpoints));
    }

    #[test]
    fn publication_reaches_cached_readers() {
        let handle = TableHandle::new(CompiledTable::empty());
        let mut cache = handle.cache();
        assert_eq!(cache.load().generation(), 0);
        handle.publish(CompiledTable::compile(model(vec![]), 7));
        assert_eq!(cache.load().generation(), 7);
    }

    #[test]
    fn the_grace_period_waits_for_readers_of_older_tables_only() {
        let handle = TableHandle::new(CompiledTable::compile(model(vec![]), 1));
        let mut busy = handle.reader();
        let mut asleep = handle.reader();
        assert_eq!(busy.load().generation(), 1);
        assert_eq!(asleep.load().generation(), 1);
        asleep.idle();
        handle.publish(CompiledTable::compile(model(vec![]), 2));
        let short = Duration::from_millis(20);
        assert!(
            !handle.wait_for_readers(2, short),
            "a reader still in a batch of table 1"
        );
        assert_eq!(busy.load().generation(), 2);
        assert!(
            handle.wait_for_readers(2, short),
            "the busy reader moved on; the sleeping one will load table 2"
        );
        assert_eq!(asleep.load().generation(), 2);
        busy.idle();
        asleep.idle();
        assert!(handle.wait_for_readers(2, short));
    }

    #[test]
    fn a_table_retires_only_the_targets_it_was_given() {
        let gone = endpoint(12, EndpointState::READY);
        let kept = endpoint(13, EndpointState::READY);
        let t = CompiledTable::compile(model(vec![kept]), 2).with_retiring([(
            Ipv4Addr::new(198, 18, 100, 10),
            8080,
            Protocol::Tcp,
            Ipv4Addr::new(198, 18, 2, 12),
            gone.port,
        )]);
        assert_eq!(t.retiring_len(), 1);
        let flow = FlowKey {
            src: Ipv4Addr::new(198, 18, 0, 2),
            dst: Ipv4Addr::new(198, 18, 100, 10),
            src_port: 40000,
            dst_port: 8080,
            protocol: Protocol::Tcp,
        };
        assert!(t.retires(&flow, (Ipv4Addr::new(198, 18, 2, 12), 5678)));
        assert!(!t.retires(&flow, (Ipv4Addr::new(198, 18, 2, 13), 5678)));
        let other_port = FlowKey {
            dst_port: 8081,
            ..flow
        };
        assert!(!t.retires(&other_port, (Ipv4Addr::new(198, 18, 2, 12), 5678)));
    }
}
