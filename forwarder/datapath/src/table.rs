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
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ahash::RandomState;
use arc_swap::ArcSwap;
use cipgw_config::{Endpoint, LbAlgorithm, Protocol, Service, ServiceTable};
use crossbeam::utils::CachePadded;

use crate::conntrack::FlowKey;
use crate::dns::DnsZone;
use crate::family::IpFamily;
use crate::maglev::{MaglevFamily, MaglevTable, MaglevTables};

/// Where a flow goes as the table knows it: VIP, port, protocol,
/// endpoint address and endpoint port.
pub type FlowTarget<A = Ipv4Addr> = (A, u16, Protocol, A, u16);

/// VIP, service port and protocol: what a new connection is looked up by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceKey<A = Ipv4Addr> {
    pub vip: A,
    pub port: u16,
    pub protocol: Protocol,
}

impl<A: Copy> ServiceKey<A> {
    /// The Service port a flow is addressed to: its destination.
    #[inline]
    pub fn of_flow(key: &FlowKey<A>) -> Self {
        Self {
            vip: key.dst,
            port: key.dst_port,
            protocol: key.protocol,
        }
    }
}

impl<A: IpFamily> Hash for ServiceKey<A> {
    // One word for IPv4: the lookup is on the new-flow path.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.vip
            .hash_with_port(self.port, self.protocol.ip_number(), state);
    }
}

/// A backend as the data plane writes it into packets. Ordered by
/// address, then port (how Maglev tables list them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend<A = Ipv4Addr> {
    pub ip: A,
    pub port: u16,
}

/// What new connections to one VIP:port/protocol may go to.
#[derive(Debug, Clone)]
pub struct PortEntry<A = Ipv4Addr> {
    /// Index of the Service in the model's `services`.
    pub service: usize,
    /// Endpoints new flows are spread over: the ready ones, or when none
    /// is ready the serving terminating ones (Kubernetes >= 1.28).
    pub backends: Box<[Backend<A>]>,
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
    pub maglev: Option<Arc<MaglevTable<A>>>,
}

impl<A> PortEntry<A> {
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
pub enum ReplyOwner<A = Ipv4Addr> {
    /// Exactly one Service port has this endpoint.
    Unique(ServiceKey<A>),
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

/// The part of a compiled table for one address family: its VIPs, their
/// ports and endpoints, and the endpoint sources whose packets are
/// replies. A VIP of one family only ever has endpoints of that family.
#[derive(Debug)]
pub struct FamilyTable<A: IpFamily> {
    ports: HashMap<ServiceKey<A>, PortEntry<A>, RandomState>,
    vips: HashSet<A, RandomState>,
    /// The longest prefix every VIP shares (the Service CIDR, or
    /// narrower): an address outside it is no VIP, told without hashing
    /// it. A Pod's address, the source every new flow's is checked
    /// against `vips` with, is outside it in a cluster whose Pod and
    /// Service ranges do not overlap.
    vip_span: Span,
    vips_with_endpoints: HashSet<A, RandomState>,
    /// Every endpoint address/port/protocol of a forwarded Service: the
    /// sources whose packets are replies, with the Service port they
    /// belong to.
    backends: HashMap<(A, u16, Protocol), ReplyOwner<A>, RandomState>,
    /// Targets of the previous table that this one no longer has.
    retiring: HashSet<FlowTarget<A>, RandomState>,
}

/// The longest prefix a set of addresses of one family shares, as the
/// right-aligned bits of [`IpFamily::bits`]: `prefix` under `mask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    prefix: u128,
    mask: u128,
}

impl Span {
    /// The span of no address: covers none.
    const EMPTY: Self = Self { prefix: 1, mask: 0 };

    fn of<A: IpFamily>(addresses: impl Iterator<Item = A>) -> Self {
        let mut bits = addresses.map(A::bits);
        let Some(first) = bits.next() else {
            return Self::EMPTY;
        };
        // The bits where some address differs from the first, and every
        // bit below the highest of them.
        let differ = bits.fold(0, |differ, b| differ | (b ^ first));
        let below = match differ {
            0 => 0,
            d => u128::MAX >> d.leading_zeros(),
        };
        Self {
            prefix: first & !below,
            mask: !below,
        }
    }

    #[inline(always)]
    fn covers<A: IpFamily>(self, ip: A) -> bool {
        ip.bits() & self.mask == self.prefix
    }
}

/// An immutable, compiled service table: one [`FamilyTable`] per address
/// family, published together (one snapshot for both).
#[derive(Debug)]
pub struct CompiledTable {
    generation: u64,
    model: Arc<ServiceTable>,
    v4: FamilyTable<Ipv4Addr>,
    v6: FamilyTable<Ipv6Addr>,
    /// Some port uses Maglev: only then are untracked replies rewritten
    /// (or dropped as ambiguous) rather than replies without a flow.
    uses_maglev: bool,
    /// The DNS zone compiled from the same model, when the gateway
    /// answers DNS: published with the table, so answers and forwarding
    /// change at the same moment.
    dns: Option<Arc<DnsZone>>,
}

/// The shared Maglev table of a port's usable endpoints, from `store`;
/// reorders `usable` into the table's order, which its entries index.
fn maglev_table<A: MaglevFamily>(
    store: &mut MaglevTables,
    usable: &mut Box<[Backend<A>]>,
) -> Option<Arc<MaglevTable<A>>> {
    let table = store.get(usable).ok()?;
    // Endpoints usually come sorted already, and then nothing is copied.
    if table.backends() != &usable[..] {
        *usable = table.backends().into();
    }
    Some(table)
}

/// The VIP of family `A` of a Service, if it has one.
fn vip_of<A: IpFamily>(service: &Service) -> Option<A> {
    service.cluster_ip.vips().find_map(A::from_ip)
}

/// An endpoint's address, if it is of family `A`.
fn endpoint_ip<A: IpFamily>(endpoint: &Endpoint) -> Option<A> {
    A::from_ip(endpoint.ip)
}

/// The endpoints of family `A` of a port that may take new connections.
fn usable<A: IpFamily>(endpoints: &[Endpoint]) -> Box<[Backend<A>]> {
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
            .filter_map(|e| endpoint_ip(e).map(|ip| Backend { ip, port: e.port }))
            .collect::<Box<[Backend<A>]>>()
    };
    let ready = pick(true);
    if ready.is_empty() {
        pick(false)
    } else {
        ready
    }
}

impl<A: IpFamily> FamilyTable<A> {
    fn empty() -> Self {
        Self {
            ports: HashMap::with_hasher(RandomState::new()),
            vips: HashSet::with_hasher(RandomState::new()),
            vip_span: Span::EMPTY,
            vips_with_endpoints: HashSet::with_hasher(RandomState::new()),
            backends: HashMap::with_hasher(RandomState::new()),
            retiring: HashSet::with_hasher(RandomState::new()),
        }
    }

    /// Compiles the family's part of `model`: `slot` gives each endpoint
    /// its counter slot, `maglev` a Maglev table for a port that uses one
    /// (it may reorder the backends into the table's order), `default`
    /// the algorithm of Services without their own.
    fn compile(
        model: &ServiceTable,
        default: LbAlgorithm,
        slot: impl Fn(usize, usize, Backend<A>) -> Option<u32>,
        mut maglev: impl FnMut(&mut Box<[Backend<A>]>) -> Option<Arc<MaglevTable<A>>>,
    ) -> Self {
        let mut table = Self::empty();
        for (index, service) in model.services.iter().enumerate() {
            let Some(vip) = vip_of::<A>(service) else {
                continue;
            };
            table.vips.insert(vip);
            let algorithm = service.lb_algorithm.unwrap_or(default);
            for (port_index, port) in service.ports.iter().enumerate() {
                let key = ServiceKey {
                    vip,
                    port: port.port,
                    protocol: port.protocol,
                };
                for (ip, e) in port
                    .endpoints
                    .iter()
                    .filter_map(|e| endpoint_ip::<A>(e).map(|ip| (ip, e)))
                {
                    table
                        .backends
                        .entry((ip, e.port, port.protocol))
                        .and_modify(|owner| {
                            if *owner != ReplyOwner::Unique(key) {
                                *owner = ReplyOwner::Ambiguous;
                            }
                        })
                        .or_insert(ReplyOwner::Unique(key));
                }
                let mut usable = usable::<A>(&port.endpoints);
                if !usable.is_empty() {
                    table.vips_with_endpoints.insert(vip);
                }
                // A set Maglev cannot index (over 65,535 endpoints) keeps
                // random choice (see crate::maglev).
                let maglev = (algorithm == LbAlgorithm::Maglev && !usable.is_empty())
                    .then(|| maglev(&mut usable))
                    .flatten();
                let slots = usable
                    .iter()
                    .map(|&b| slot(index, port_index, b).unwrap_or(crate::conntrack::NO_SLOT))
                    .collect();
                table.ports.insert(
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
        table.vip_span = Span::of(table.vips.iter().copied());
        table
    }

    /// What a new connection to `key` may go to.
    #[inline(always)]
    pub fn lookup(&self, key: &ServiceKey<A>) -> Result<&PortEntry<A>, Miss> {
        match self.ports.get(key) {
            Some(entry) if entry.backends.is_empty() => Err(Miss::NoEndpoints),
            Some(entry) => Ok(entry),
            None if self.vips.contains(&key.vip) => Err(Miss::NoPort),
            None => Err(Miss::NotVip),
        }
    }

    /// The entry of a VIP port, usable endpoints or not.
    #[inline]
    pub fn port_entry(&self, key: &ServiceKey<A>) -> Option<&PortEntry<A>> {
        self.ports.get(key)
    }

    /// True when some port of the Service behind `vip` has a usable
    /// endpoint (what `ping <ClusterIP>` is answered for).
    pub fn vip_has_endpoints(&self, vip: A) -> bool {
        self.vips_with_endpoints.contains(&vip)
    }

    #[inline]
    pub fn is_vip(&self, ip: A) -> bool {
        self.vip_span.covers(ip) && self.vips.contains(&ip)
    }

    /// True when packets from this address/port/protocol are replies.
    #[inline]
    pub fn is_backend(&self, ip: A, port: u16, protocol: Protocol) -> bool {
        self.backends.contains_key(&(ip, port, protocol))
    }

    /// The Service port a backend's packets are replies for, if it is one.
    #[inline]
    pub fn reply_owner(&self, ip: A, port: u16, protocol: Protocol) -> Option<ReplyOwner<A>> {
        self.backends.get(&(ip, port, protocol)).copied()
    }

    /// Every VIP port's entry (views, `cipgw check`).
    pub fn port_entries(&self) -> impl Iterator<Item = (&ServiceKey<A>, &PortEntry<A>)> + '_ {
        self.ports.iter()
    }

    /// VIPs the XDP program must redirect.
    pub fn vips(&self) -> impl Iterator<Item = A> + '_ {
        self.vips.iter().copied()
    }

    /// Endpoint sources the XDP program must redirect (replies).
    pub fn backends(&self) -> impl Iterator<Item = (A, u16, Protocol)> + '_ {
        self.backends.keys().copied()
    }

    /// Whether the flow of `key` (client -> VIP) going to `backend` lost
    /// its endpoint or Service port in this table. One length check for
    /// the tables of a steady cluster, whose sets are empty.
    #[inline]
    pub fn retires(&self, key: &FlowKey<A>, backend: (A, u16)) -> bool {
        !self.retiring.is_empty()
            && self
                .retiring
                .contains(&(key.dst, key.dst_port, key.protocol, backend.0, backend.1))
    }

    /// How many targets this table ends.
    pub fn retiring_len(&self) -> usize {
        self.retiring.len()
    }

    /// Number of VIP:port/protocol entries.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
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

    /// [`Self::compile_with_lb`] with a counter slot for each IPv4
    /// endpoint of each Service port (`slot(service index, port index,
    /// endpoint)`); IPv6 endpoints are not counted
    /// ([`Self::compile_with_family_slots_lb`] counts both).
    pub fn compile_with_endpoint_slots_lb(
        model: Arc<ServiceTable>,
        generation: u64,
        slot: impl Fn(usize, usize, Backend) -> Option<u32>,
        lb: LbPlan<'_>,
    ) -> Self {
        Self::compile_with_family_slots_lb(model, generation, slot, |_, _, _| None, lb)
    }

    /// [`Self::compile_with_lb`] with a counter slot for each endpoint of
    /// each Service port, `slot4` for IPv4 endpoints and `slot6` for IPv6
    /// ones (`(service index, port index, endpoint)`). Maglev ports of
    /// either family take their tables from `lb.maglev`.
    pub fn compile_with_family_slots_lb(
        model: Arc<ServiceTable>,
        generation: u64,
        slot4: impl Fn(usize, usize, Backend) -> Option<u32>,
        slot6: impl Fn(usize, usize, Backend<Ipv6Addr>) -> Option<u32>,
        lb: LbPlan<'_>,
    ) -> Self {
        lb.maglev.begin_round();
        let store = lb.maglev;
        let v4 = FamilyTable::<Ipv4Addr>::compile(&model, lb.default, slot4, |usable| {
            maglev_table(store, usable)
        });
        let v6 = FamilyTable::<Ipv6Addr>::compile(&model, lb.default, slot6, |usable| {
            maglev_table(store, usable)
        });
        store.finish_round();
        let uses_maglev = v4.ports.values().any(|p| p.maglev.is_some())
            || v6.ports.values().any(|p| p.maglev.is_some());
        Self {
            generation,
            model,
            v4,
            v6,
            uses_maglev,
            dns: None,
        }
    }

    /// The part of the table for family `A`.
    #[inline]
    pub fn family<A: IpFamily>(&self) -> &FamilyTable<A> {
        A::table_part(self)
    }

    /// The IPv4 part.
    #[inline]
    pub fn v4(&self) -> &FamilyTable<Ipv4Addr> {
        &self.v4
    }

    /// The IPv6 part.
    #[inline]
    pub fn v6(&self) -> &FamilyTable<Ipv6Addr> {
        &self.v6
    }

    pub(crate) fn v4_mut(&mut self) -> &mut FamilyTable<Ipv4Addr> {
        &mut self.v4
    }

    pub(crate) fn v6_mut(&mut self) -> &mut FamilyTable<Ipv6Addr> {
        &mut self.v6
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

    /// Marks the (IPv4) targets whose flows this table ends: flows to
    /// them are retired at their next forward packet
    /// ([`CompiledTable::retires`]).
    pub fn with_retiring(self, retiring: impl IntoIterator<Item = FlowTarget>) -> Self {
        self.with_retiring_of(retiring)
    }

    /// [`CompiledTable::with_retiring`] for targets of family `A`.
    pub fn with_retiring_of<A: IpFamily>(
        mut self,
        retiring: impl IntoIterator<Item = FlowTarget<A>>,
    ) -> Self {
        A::table_part_mut(&mut self).retiring.extend(retiring);
        self
    }

    /// Whether the IPv4 flow of `key` (client -> VIP) going to `backend`
    /// lost its endpoint or Service port in this table
    /// ([`FamilyTable::retires`]).
    #[inline]
    pub fn retires(&self, key: &FlowKey, backend: (Ipv4Addr, u16)) -> bool {
        self.v4.retires(key, backend)
    }

    /// How many targets this table ends, both families.
    pub fn retiring_len(&self) -> usize {
        self.v4.retiring_len() + self.v6.retiring_len()
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

    /// What a new connection to the IPv4 `key` may go to.
    #[inline]
    pub fn lookup(&self, key: &ServiceKey) -> Result<&PortEntry, Miss> {
        self.v4.lookup(key)
    }

    /// The entry of an IPv4 VIP port, usable endpoints or not.
    #[inline]
    pub fn port_entry(&self, key: &ServiceKey) -> Option<&PortEntry> {
        self.v4.port_entry(key)
    }

    /// True when some port of the Service behind the IPv4 `vip` has a
    /// usable endpoint.
    pub fn vip_has_endpoints(&self, vip: Ipv4Addr) -> bool {
        self.v4.vip_has_endpoints(vip)
    }

    #[inline]
    pub fn is_vip(&self, ip: Ipv4Addr) -> bool {
        self.v4.is_vip(ip)
    }

    /// True when packets from this IPv4 address/port/protocol are replies.
    #[inline]
    pub fn is_backend(&self, ip: Ipv4Addr, port: u16, protocol: Protocol) -> bool {
        self.v4.is_backend(ip, port, protocol)
    }

    /// Whether some port uses Maglev (see [`ReplyOwner`]).
    #[inline]
    pub fn uses_maglev(&self) -> bool {
        self.uses_maglev
    }

    /// The Service port an IPv4 backend's packets are replies for.
    #[inline]
    pub fn reply_owner(&self, ip: Ipv4Addr, port: u16, protocol: Protocol) -> Option<ReplyOwner> {
        self.v4.reply_owner(ip, port, protocol)
    }

    /// Every IPv4 VIP port's entry (views, `cipgw check`).
    pub fn port_entries(&self) -> impl Iterator<Item = (&ServiceKey, &PortEntry)> + '_ {
        self.v4.port_entries()
    }

    /// IPv4 VIPs the XDP program must redirect.
    pub fn vips(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.v4.vips()
    }

    /// IPv4 endpoint sources the XDP program must redirect (replies).
    pub fn backends(&self) -> impl Iterator<Item = (Ipv4Addr, u16, Protocol)> + '_ {
        self.v4.backends()
    }

    /// Number of VIP:port/protocol entries, both families.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
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

    /// The VIP span is the longest prefix the VIPs share: none for no
    /// VIP, the address itself for one.
    #[test]
    fn the_vip_span_is_the_vips_longest_common_prefix() {
        let v4 = |s: &str| s.parse::<Ipv4Addr>().expect("literal");
        let v6 = |s: &str| s.parse::<Ipv6Addr>().expect("literal");
        let none = Span::of(std::iter::empty::<Ipv4Addr>());
        assert!(!none.covers(Ipv4Addr::UNSPECIFIED) && !none.covers(v4("198.18.0.1")));
        let one = Span::of([v4("198.19.0.10")].into_iter());
        assert!(one.covers(v4("198.19.0.10")), "one VIP: itself");
        assert!(!one.covers(v4("198.19.0.11")) && !one.covers(v4("198.19.0.26")));
        // 198.19.0.10 and 198.19.3.1 first differ in the third octet's
        // second-lowest bit: 198.19.0.0/22.
        let two = Span::of([v4("198.19.0.10"), v4("198.19.3.1")].into_iter());
        assert!(two.covers(v4("198.19.0.0")) && two.covers(v4("198.19.3.255")));
        assert!(!two.covers(v4("198.19.4.0")) && !two.covers(v4("198.18.0.10")));
        let six = Span::of([v6("2001:2:0:ff::10"), v6("2001:2:0:ff::1:0")].into_iter());
        assert!(six.covers(v6("2001:2:0:ff::")) && six.covers(v6("2001:2:0:ff::1:ffff")));
        assert!(!six.covers(v6("2001:2:0:ff::2:0")) && !six.covers(v6("2001:2:0:2::11")));
        // The upper 96 bits of an IPv4 span hold nothing to cover.
        let wide = Span::of([v4("0.0.0.0"), v4("255.255.255.255")].into_iter());
        assert!(wide.covers(v4("198.18.0.1")), "every IPv4 address");
    }

    /// `is_vip`'s span filter never hides a VIP: over Services spread
    /// across ranges of both families, it answers as the VIP set does
    /// for every VIP, its neighbours and addresses far from any.
    #[test]
    fn is_vip_answers_as_the_vip_set_does() {
        let base = model(vec![endpoint(11, EndpointState::READY)]);
        let echo = base.services[0].clone();
        let v4s: Vec<Ipv4Addr> = [
            [198, 18, 100, 10],
            [198, 18, 101, 7],
            [198, 19, 255, 254],
            [198, 19, 0, 0],
        ]
        .map(Ipv4Addr::from)
        .to_vec();
        let v6s: Vec<Ipv6Addr> = ["2001:2:0:ff::10", "2001:2:0:fe::1", "2001:2:1::"]
            .map(|s| s.parse().expect("literal"))
            .to_vec();
        let services = v4s
            .iter()
            .map(|&ip| std::net::IpAddr::from(ip))
            .chain(v6s.iter().map(|&ip| ip.into()))
            .enumerate()
            .map(|(i, vip)| Service {
                name: ServiceName::new("default", format!("s{i}")),
                cluster_ip: ClusterIp::single(vip),
                ..echo.clone()
            })
            .collect();
        let table = CompiledTable::compile(Arc::new(ServiceTable { services }), 1);
        let near4 = |ip: Ipv4Addr| {
            let b = u32::from(ip);
            [
                b.wrapping_sub(1),
                b,
                b.wrapping_add(1),
                b ^ 0x100,
                b ^ 0x1_0000,
            ]
            .map(Ipv4Addr::from)
        };
        let probes4 = v4s
            .iter()
            .flat_map(|&ip| near4(ip))
            .chain([[198, 18, 0, 1], [10, 0, 0, 1], [0, 0, 0, 0], [255; 4]].map(Ipv4Addr::from));
        for ip in probes4 {
            assert_eq!(table.v4().is_vip(ip), v4s.contains(&ip), "{ip}");
        }
        let near6 = |ip: Ipv6Addr| {
            let b = u128::from(ip);
            [
                b.wrapping_sub(1),
                b,
                b.wrapping_add(1),
                b ^ (1 << 64),
                b ^ (1 << 100),
            ]
            .map(Ipv6Addr::from)
        };
        let probes6 = v6s.iter().flat_map(|&ip| near6(ip)).chain([
            Ipv6Addr::UNSPECIFIED,
            "2001:2:0:2::11".parse().expect("literal"),
        ]);
        for ip in probes6 {
            assert_eq!(table.v6().is_vip(ip), v6s.contains(&ip), "{ip}");
        }
    }

    /// A dual-stack Service: each family's VIP goes to that family's
    /// endpoints only, in that family's part of the table.
    #[test]
    fn a_dual_stack_service_is_compiled_into_both_families() {
        let vip4 = Ipv4Addr::new(198, 18, 100, 10);
        let vip6: Ipv6Addr = "2001:2:0:ff::10".parse().expect("literal");
        let pod6: Ipv6Addr = "2001:2:0:2::11".parse().expect("literal");
        let mut endpoints = vec![endpoint(11, EndpointState::READY)];
        endpoints.push(Endpoint {
            ip: pod6.into(),
            ..endpoint(11, EndpointState::READY)
        });
        let mut model = (*model(endpoints)).clone();
        let echo = &mut model.services[0];
        echo.cluster_ip = ClusterIp::Vips(
            cipgw_config::Vips::dual(vip4.into(), vip6.into()).expect("one of each family"),
        );
        echo.ip_family_policy = cipgw_config::IpFamilyPolicy::RequireDualStack;
        echo.ip_families = vec![cipgw_config::IpFamily::V4, cipgw_config::IpFamily::V6];
        let t = CompiledTable::compile(Arc::new(model), 1);
        let v4 = t.lookup(&key(8080)).expect("the IPv4 VIP");
        assert_eq!(
            &v4.backends[..],
            &[Backend {
                ip: Ipv4Addr::new(198, 18, 2, 11),
                port: 5678
            }]
        );
        let v6 = t
            .family::<Ipv6Addr>()
            .lookup(&ServiceKey {
                vip: vip6,
                port: 8080,
                protocol: Protocol::Tcp,
            })
            .expect("the IPv6 VIP");
        assert_eq!(
            &v6.backends[..],
            &[Backend {
                ip: pod6,
                port: 5678
            }]
        );
        assert!(t.v6().is_vip(vip6) && !t.v6().is_vip("2001:2::1".parse().expect("literal")));
        assert!(t.v6().is_backend(pod6, 5678, Protocol::Tcp));
        assert!(t.v6().vip_has_endpoints(vip6));
        assert!(!t.is_vip(Ipv4Addr::new(198, 18, 100, 11)));
        assert_eq!(t.len(), 2, "one port entry per family");
        assert_eq!(
            t.v6().port_entries().next().map(|(_, e)| e.slot_of(0)),
            Some(crate::conntrack::NO_SLOT)
        );
    }

    /// An IPv6 Maglev port gets a table of its endpoint set like an IPv4
    /// one (its backends in the table's order, one table per set shared
    /// by ports, kept in the store with the IPv4 ones), and IPv6
    /// endpoints get counter slots when the caller gives them.
    #[test]
    fn ipv6_maglev_ports_get_tables_and_slots() {
        let vip6: Ipv6Addr = "2001:2:0:ff::10".parse().expect("literal");
        let other6: Ipv6Addr = "2001:2:0:ff::11".parse().expect("literal");
        let pod6 = |last: u16| Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, last);
        let six = |vip: Ipv6Addr, pods: &[u16]| {
            let endpoints = pods
                .iter()
                .map(|&last| Endpoint {
                    ip: pod6(last).into(),
                    ..endpoint(11, EndpointState::READY)
                })
                .collect();
            let mut service = model(endpoints).services[0].clone();
            service.cluster_ip = ClusterIp::single(vip.into());
            service.ip_families = vec![cipgw_config::IpFamily::V6];
            service.lb_algorithm = Some(LbAlgorithm::Maglev);
            service
        };
        let mut v4 = model(vec![endpoint(11, EndpointState::READY)]).services[0].clone();
        v4.lb_algorithm = Some(LbAlgorithm::Maglev);
        let services = vec![
            six(vip6, &[0x13, 0x11, 0x12]),
            six(other6, &[0x12, 0x11, 0x13]),
            v4,
        ];
        let mut store = MaglevTables::new(1021, 9);
        let t = CompiledTable::compile_with_family_slots_lb(
            Arc::new(ServiceTable { services }),
            1,
            |_, _, _| None,
            |service, _, b| Some(service as u32 * 100 + u32::from(b.ip.segments()[7])),
            LbPlan {
                default: LbAlgorithm::Random,
                maglev: &mut store,
            },
        );
        let key6 = |vip| ServiceKey {
            vip,
            port: 8080,
            protocol: Protocol::Tcp,
        };
        let entry = t.v6().lookup(&key6(vip6)).expect("the IPv6 VIP");
        let maglev = entry.maglev.as_ref().expect("the port uses Maglev");
        let sorted: Vec<Backend<Ipv6Addr>> = [0x11, 0x12, 0x13]
            .map(|last| Backend {
                ip: pod6(last),
                port: 5678,
            })
            .to_vec();
        assert_eq!(&entry.backends[..], &sorted[..], "the table's order");
        assert_eq!(maglev.backends(), &sorted[..]);
        assert_eq!(
            (0..3).map(|i| entry.slot_of(i)).collect::<Vec<_>>(),
            [0x11, 0x12, 0x13],
            "each IPv6 endpoint its own slot, in the backends' order"
        );
        let other = t.v6().lookup(&key6(other6)).expect("the other VIP");
        assert!(Arc::ptr_eq(
            maglev,
            other.maglev.as_ref().expect("Maglev too")
        ));
        assert!(t.lookup(&key(8080)).expect("IPv4").maglev.is_some());
        assert_eq!(store.len(), 2, "one IPv6 set, one IPv4 set");
        assert!(t.uses_maglev());

        // Compiled without IPv6 slots (the older entry point): uncounted.
        let services = vec![six(vip6, &[0x11])];
        let t = CompiledTable::compile_with_endpoint_slots_lb(
            Arc::new(ServiceTable { services }),
            2,
            |_, _, _| Some(1),
            LbPlan {
                default: LbAlgorithm::Random,
                maglev: &mut store,
            },
        );
        let entry = t.v6().lookup(&key6(vip6)).expect("the IPv6 VIP");
        assert_eq!(entry.slot_of(0), crate::conntrack::NO_SLOT);
        assert!(t.uses_maglev(), "an IPv6-only Maglev table");
        assert_eq!(store.len(), 1, "the unused sets were dropped");
    }
}
