//! Connection tracking: which backend each connection was given, and how
//! long the gateway keeps remembering it.
//!
//! One table holds both directions of every flow, keyed by the 5-tuple
//! exactly as it appears on the wire:
//! - the forward key (client, VIP, client port, VIP port) finds the
//!   backend the flow was given (the destination to write);
//! - the reply key (backend, client, backend port, client port) finds the
//!   VIP and port (the source to write), so replies leave the gateway
//!   from the address the client connected to.
//!
//! With source NAT ([`Conntrack::with_snat`], [`snat`]) a new flow is also
//! given a gateway address and port as its source; its reply key is then
//! (backend, SNAT address, backend port, SNAT port), and a reply gets the
//! client back as its destination. The mapping lives in the same record
//! (a 7-bit address index and the port), so source NAT costs no memory
//! and a flow without it takes the same path as before.
//!
//! The table is sized once, from `max_flows`, and never grows (no pause,
//! no doubling of memory under load): a slab of 32-byte flow records
//! (`slab.rs`) and a hash index of 64-byte buckets holding both keys of
//! every flow (`index.rs`). A lookup is one bucket line and one record
//! line; workers read without any lock and without writing a shared line
//! (a record is a sequence lock), and write only when a flow's state or
//! last-seen second changes. [`Conntrack::prefetch_index`] and
//! [`Conntrack::prefetch_flow`] let a worker fetch those two lines for a
//! whole batch of packets before it looks any of them up. The hash is
//! aHash with per-process random keys, so clients cannot aim their flows
//! at one chain.
//!
//! Lifecycle. Each flow has a state driven by what both directions carry,
//! with its own idle timeout ([`Timeouts`]; defaults as kube-proxy
//! configures nf_conntrack, and Linux's for the rest). The states and how
//! packets move a flow between them are in `state.rs`:
//!
//! | state | entered on | default timeout |
//! |---|---|---|
//! | TCP SYN sent | first SYN from the client | 120 s |
//! | TCP established | any packet from the backend | 24 h |
//! | TCP FIN wait | a FIN one way | 120 s |
//! | TCP close wait | a FIN one way, then a packet the other way | 1 h |
//! | TCP time wait | FINs both ways | 120 s |
//! | TCP close | an RST either way | 10 s |
//! | UDP unreplied | first datagram | 30 s |
//! | UDP replied | first reply | 120 s |
//!
//! A flow is idle when no packet went either way. The sweeper
//! ([`Conntrack::sweep`]) walks the records without a lock and removes
//! expired flows one by one; a removal locks only the two index chains it
//! changes.
//!
//! Bounds. The table holds at most `max_flows` flows (a flow is both
//! directions). A new flow that would exceed it, or that would let
//! unreplied flows hold more than their share of the table (the flood
//! guard), first evicts the oldest unreplied flow; established flows are
//! never evicted for a new one. When nothing can be evicted the new flow is
//! refused and counted ([`InsertError::Full`]); the pipeline answers it
//! with a RST. Concurrent inserts may overshoot the limit by at most one
//! flow per worker. Far from both limits, each worker adds its inserts to
//! the table's counts, and takes never-used records, 32 at a time (fewer
//! with many workers), instead of one locked instruction each; near a
//! limit, one at a time, with every worker's held-back count read
//! (`PerWorker::unflushed`).
//!
//! Memory per flow, allocated once (and populated by a gateway at start,
//! [`Conntrack::populate`]):
//! [`ConntrackConfig::BYTES_PER_FLOW`] for IPv4 (a 32-byte record, two
//! index slots at half load, a 16-byte eviction-queue entry),
//! [`ConntrackConfig::BYTES_PER_FLOW_V6`] for IPv6 (the same with a
//! 64-byte record), with or without source NAT; the `conntrack` criterion
//! bench measures it.
//!
//! Families. A table serves one address family ([`crate::family`]):
//! `Conntrack<Ipv4Addr>` (the default) and `Conntrack<Ipv6Addr>` share all
//! of this code and differ only in their record layout and table file, so
//! IPv4 keeps two flows per cache line and a gateway serving both
//! families runs one table of each.

mod index;
pub mod persist;
mod queue;
mod slab;
pub mod snat;
mod state;

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicIsize, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use ahash::RandomState;
use cipgw_config::conntrack::DEFAULT_UNREPLIED_PERCENT;
use cipgw_config::Protocol;
use crossbeam::utils::CachePadded;

use self::index::{FlowIndex, Placed};
use self::persist::TableFile;
use self::persist::TableLayout;
use self::queue::{Closing, EvictionQueue, Queued, QUEUE_BYTES};
pub(crate) use self::slab::RecordLayout;
#[cfg(test)]
pub(crate) use self::slab::VIP_PREFIXES_MAX;
use self::slab::{FlowData, FreshRecords, Life, RecordId, Slab};
use self::snat::{SnatConfig, SnatError, SnatPool};
use self::state::{next_state, AFFINITY, ASSURED, REPLIED};
pub use self::state::{FlowState, Timeouts};
use crate::counters::Counter;
use crate::family::IpFamily;
use crate::wire::tcp::flags as tcp_flags;

/// A 5-tuple as seen on the wire, of one address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey<A = Ipv4Addr> {
    pub src: A,
    pub dst: A,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: Protocol,
}

impl<A: Copy> FlowKey<A> {
    /// The key of the other direction of the same flow, as seen on the
    /// wire before any rewrite (only meaningful without NAT).
    pub fn reversed(&self) -> FlowKey<A> {
        FlowKey {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            protocol: self.protocol,
        }
    }
}

impl<A: IpFamily> FlowKey<A> {
    /// A cheap, unkeyed mix of the key, not the table's (keyed) hash: a
    /// worker's flow cache picks a key's set from its high bits, and the
    /// table counts removals per part of it ([`Conntrack::removals`]).
    #[inline(always)]
    pub fn mix(&self) -> u32 {
        let a = self.src.fold() ^ self.dst.fold().rotate_left(16);
        let b = (u32::from(self.src_port) << 16) | u32::from(self.dst_port);
        (a ^ b.wrapping_mul(0x85eb_ca6b)).wrapping_mul(0x9e37_79b9)
    }
}

impl<A: IpFamily> Hash for FlowKey<A> {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        A::hash_key(self, state);
    }
}

/// Which way a packet travels relative to the connection's first packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to VIP: write the backend as destination.
    Forward,
    /// Backend to client: write the VIP as source.
    Reply,
}

/// How big the table may grow and how long flows live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConntrackConfig {
    /// Flows (both directions count as one) the table holds at most.
    pub max_flows: usize,
    /// Percentage of `max_flows` unreplied flows may hold (flood guard).
    pub unreplied_percent: u8,
    pub timeouts: Timeouts,
}

impl ConntrackConfig {
    /// Bytes of memory per IPv4 flow of `max_flows`: record, index slots
    /// and eviction-queue entry.
    pub const BYTES_PER_FLOW: u64 = Conntrack::<Ipv4Addr>::BYTES_PER_FLOW;
    /// The same for an IPv6 flow (a 64-byte record instead of 32).
    pub const BYTES_PER_FLOW_V6: u64 = Conntrack::<Ipv6Addr>::BYTES_PER_FLOW;

    /// The largest table: record ids and their direction bit share 32 bits.
    pub const MAX_FLOWS: usize = 1 << 30;

    /// The default maximum for a machine with `memory` bytes: 1/64 of
    /// it at [`Self::BYTES_PER_FLOW`], between 64 Ki and 4 Mi flows.
    pub fn max_for_memory(memory: u64) -> usize {
        let flows = memory / 64 / Self::BYTES_PER_FLOW;
        flows.clamp(1 << 16, 1 << 22) as usize
    }
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        Self {
            max_flows: 1 << 20,
            unreplied_percent: DEFAULT_UNREPLIED_PERCENT,
            timeouts: Timeouts::default(),
        }
    }
}

/// Why a flow was evicted for a new one, in the order a full table
/// looks for victims (Linux's early_drop, tcp_can_early_drop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EvictionClass {
    /// Idle past its state's timeout, found at the head of a queue
    /// before the sweeper got to it.
    Expired = 0,
    /// Not assured: a TCP handshake not completed, a UDP flow not yet a
    /// stream (also what the flood guard evicts).
    Unassured = 1,
    /// Assured but closing: FIN_WAIT, CLOSE_WAIT, TIME_WAIT, CLOSE.
    Closing = 2,
}

impl EvictionClass {
    pub const ALL: [EvictionClass; 3] = [
        EvictionClass::Expired,
        EvictionClass::Unassured,
        EvictionClass::Closing,
    ];

    /// The label used in metrics and listings.
    pub const fn name(self) -> &'static str {
        match self {
            EvictionClass::Expired => "expired",
            EvictionClass::Unassured => "unassured",
            EvictionClass::Closing => "closing",
        }
    }
}

/// A flow whose (Service port, endpoint) has no counter slot.
pub const NO_SLOT: u32 = u32::MAX;

/// What a new flow carries besides its addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowMeta {
    /// The Service has session affinity.
    pub affinity: bool,
    /// The counter slot of the flow's (Service port, endpoint), or [`NO_SLOT`].
    pub slot: u32,
    /// The inserting worker's index: the flow goes into its eviction
    /// queues ([`Conntrack::with_workers`]; 0 with one). One thread
    /// inserts with an index at a time (a worker's own): the counts of
    /// its part's inserts have that thread as their only writer, and two
    /// threads inserting with one index at once may lose counts (never
    /// flows).
    pub worker: usize,
}

impl Default for FlowMeta {
    fn default() -> Self {
        Self {
            affinity: false,
            slot: NO_SLOT,
            worker: 0,
        }
    }
}

/// The rewrite a tracked packet gets, and its flow's state after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowHit<A = Ipv4Addr> {
    pub direction: Direction,
    pub nat_ip: A,
    pub nat_port: u16,
    pub state: FlowState,
    /// The flow's Service has session affinity.
    pub affinity: bool,
    /// The counter slot of the flow's (Service port, endpoint), or [`NO_SLOT`].
    pub slot: u32,
    /// Source NAT's second rewrite, `None` without: a forward packet's
    /// new source (SNAT address and port), a reply's new destination
    /// (the client's address and port).
    pub snat: Option<(A, u16)>,
    /// The flow's record: where [`Conntrack::account`] counts it.
    pub record: u32,
}

impl<A: IpFamily> FlowHit<A> {
    /// A hit that names no flow: what a caller of
    /// [`Conntrack::lookup_into`] or [`Conntrack::insert_into`] starts
    /// from, before the table writes the hit it found or made.
    pub const UNSET: Self = FlowHit {
        direction: Direction::Forward,
        nat_ip: A::UNSPECIFIED,
        nat_port: 0,
        state: FlowState::UdpUnreplied,
        affinity: false,
        slot: NO_SLOT,
        snat: None,
        record: u32::MAX,
    };
}

/// Which flow a record holds, and in which state ([`Conntrack::stamp`]):
/// the record's sequence number and state bits. It changes when the flow
/// leaves the record (its claim makes the sequence odd, a reuse moves it
/// on) or changes state (a reply, a FIN, assurance), not when its
/// last-seen time moves; so a copy of a hit is good while
/// [`Conntrack::still_holds`] finds the same stamp in its record. Never
/// zero (a live record's sequence is not), so that a cache can keep it
/// beside a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowStamp(NonZeroU32);

impl FlowStamp {
    /// The stamp of a live record's life word.
    #[inline(always)]
    fn of(life: Life) -> Self {
        // A live record's sequence is even and not zero (`Life::is_live`),
        // and it fills the top 24 of the 32 bits taken here.
        Self(NonZeroU32::new((life.0 >> 32) as u32).unwrap_or(NonZeroU32::MIN))
    }

    /// The stamp as bits, for a cache that packs it.
    #[inline(always)]
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// A stamp from [`FlowStamp::get`]'s bits; `None` for zero.
    #[inline(always)]
    pub const fn from_bits(bits: u32) -> Option<Self> {
        match NonZeroU32::new(bits) {
            Some(bits) => Some(Self(bits)),
            None => None,
        }
    }
}

/// What a batch's second step ([`Conntrack::prefetch_flow`]) saw of a
/// key in its bucket: the record, and which of its keys, that the first
/// slot carrying the key's signature points to. The lookup that follows
/// ([`Conntrack::lookup_candidate_into`]) reads that record first and
/// searches the bucket again only when the record does not hold the key
/// (the slot changed since, or its signature was another key's): most
/// lookups skip their second scan of the bucket.
///
/// Only a hint: it is checked as any slot's reference is, by the
/// record's key, so a stale one costs a search, never a wrong flow.
/// The default is [`Candidate::NONE`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Candidate(u32);

impl Candidate {
    /// No slot carried the key's signature: most likely a new flow's key
    /// (or no second step looked).
    pub const NONE: Candidate = Candidate(0);

    /// Whether a slot carried the key's signature: the key is most
    /// likely in the table.
    #[inline(always)]
    pub const fn is_some(self) -> bool {
        self.0 != 0
    }
}

/// A flow's packets and bytes (`--conntrack-accounting`), per direction:
/// index 0 client to backend, 1 backend to client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowCounts {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
}

/// One record's [`FlowCounts`], beside the slab (not in it: the record
/// keeps its size, and a table without accounting pays nothing).
#[derive(Debug, Default)]
#[repr(C, align(32))]
struct Account {
    packets: [AtomicU64; 2],
    bytes: [AtomicU64; 2],
}

/// Why a new flow could not be tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// Another flow already owns the reply key: the same client address
    /// and port reached the same backend through another VIP. Without
    /// source NAT the replies could not be told apart.
    ReplyClash,
    /// The table is full of flows that may not be evicted.
    Full,
    /// Source NAT found no free port towards the backend on any address.
    SnatExhausted,
    /// An IPv6 VIP whose high half the table does not hold, and the
    /// table holds as many as it can (see `slab.rs`, `VipPrefixTable`).
    VipPrefixesFull,
}

/// Why flows left the table. In a worker's part of the table (see
/// [`Conntrack::with_workers`]), `inserted`, `evicted`, `refused`,
/// `reused` and `snat_exhausted` are counted only by that worker's
/// inserts, so each has one writer ([`FlowMeta::worker`]) and is a
/// [`Counter`], added to without a locked instruction: a locked add
/// waits for every store before it to reach the cache, and a flood's
/// insert, which writes a record and four buckets, counted two (about
/// 10 ns of 215; benches/RESULTS.md, session 24). The rest are counted
/// by record or by whoever sweeps, with locked additions.
#[derive(Debug, Default)]
pub struct ConntrackStats {
    pub inserted: Counter,
    /// Flows evicted for a new one, per [`EvictionClass`].
    pub evicted: [Counter; EvictionClass::ALL.len()],
    /// New flows refused because nothing could be evicted.
    pub refused: Counter,
    /// Flows removed because their backend or Service went away.
    pub retired: AtomicU64,
    /// Flows an operator deleted (`cipgw conntrack --delete`).
    pub deleted: AtomicU64,
    /// Flows in TIME_WAIT or CLOSE replaced by a new SYN on the same
    /// 5-tuple (which then gets a fresh backend).
    pub replaced: AtomicU64,
    /// Finished flows (TIME_WAIT, closed) that made way for a new
    /// connection reusing their reply 5-tuple through another VIP.
    pub reused: Counter,
    /// Flows expired by the sweeper, per state.
    pub expired: [AtomicU64; FlowState::ALL.len()],
    /// New flows refused because source NAT had no port for them.
    pub snat_exhausted: Counter,
}

impl ConntrackStats {
    /// Adds `other`'s counts to these (every field: the pattern below
    /// does not compile when one is missing), for a sum that this
    /// caller alone writes.
    fn add(&self, other: &ConntrackStats) {
        let ConntrackStats {
            inserted,
            evicted,
            refused,
            retired,
            deleted,
            replaced,
            reused,
            expired,
            snat_exhausted,
        } = other;
        let add = |to: &AtomicU64, from: &AtomicU64| {
            to.fetch_add(from.load(STAT), STAT);
        };
        let add_own = |to: &Counter, from: &Counter| to.add(from.get());
        add_own(&self.inserted, inserted);
        for (to, from) in self.evicted.iter().zip(evicted) {
            add_own(to, from);
        }
        add_own(&self.refused, refused);
        add(&self.retired, retired);
        add(&self.deleted, deleted);
        add(&self.replaced, replaced);
        add_own(&self.reused, reused);
        for (to, from) in self.expired.iter().zip(expired) {
            add(to, from);
        }
        add_own(&self.snat_exhausted, snat_exhausted);
    }
}

/// A point-in-time summary for metrics and admin views.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConntrackSummary {
    pub flows: usize,
    pub unreplied: usize,
    pub max_flows: usize,
}

/// Records beyond `max_flows`: concurrent inserts may overshoot the limit
/// by one flow per worker, and workers hold never-used records taken
/// ahead (at most half of these, [`Conntrack::worker_batch_for`]).
const RECORD_SLACK: usize = 256;
/// Workers with eviction queues of their own, at most
/// ([`Conntrack::with_workers`]).
const MAX_WORKERS: usize = 1024;
/// Queue entries popped at most for one eviction: the queue also holds
/// entries of flows that got their reply or left, each popped once.
const EVICTION_SCAN: usize = 4096;
/// How far ahead of the eviction in progress the queue prefetches.
const EVICTION_LOOKAHEAD: usize = 8;
/// Attempts to remove a flow whose life word keeps changing under us.
const CLAIM_ATTEMPTS: usize = 8;
/// The key space is cut in 2^this parts whose removals are counted apart
/// ([`Conntrack::removals`]): a removal makes stale what workers cached
/// of the keys of at most two parts, one in 512 of the cache.
const REMOVAL_PART_BITS: u32 = 10;
const REMOVAL_PARTS: usize = 1 << REMOVAL_PART_BITS;

/// One worker's own part of the table: its eviction queues and its
/// counters. A worker queues the flows it inserts in its own queues, a
/// full table evicts from the inserting worker's queues first, and each
/// worker counts its inserts and evictions on its own line (summed on
/// read), so that workers taking new flows on different cores neither
/// wait for each other's lock nor pull each other's lines across: with
/// one queue and one set of counters for the whole table, two cores
/// flooding new flows inserted fewer in all than one alone
/// (benches/RESULTS.md, session 10). Closing flows are queued, and what
/// lookups, sweeps and removals count is counted, by record (`id %
/// workers`) or in the first worker's part: those know no worker.
#[derive(Debug)]
struct PerWorker {
    /// Flows as inserted (not assured), oldest first; entries of flows
    /// that were assured or left are skipped when popped.
    unassured: EvictionQueue<Queued>,
    /// Assured flows that began to close, oldest first; entries of flows
    /// that left are skipped when popped. Locked after `unassured` when
    /// both are held; no two workers' queues are ever held at once.
    closing: EvictionQueue<Closing>,
    stats: ConntrackStats,
    /// Inserts this part's queues took that are not yet in the table's
    /// `live` and `unreplied` (each such insert adds one flow to both):
    /// far from the table's limits, an insert adds to this count with a
    /// plain load and store instead of two locked adds on lines every
    /// worker writes, and every [`Conntrack::worker_batch`] of them are
    /// added to the table's counts at once (as Linux's `percpu_counter`
    /// batches). Written only under `unassured`'s lock; read without it
    /// by whoever needs whole counts ([`Conntrack::whole_counts`]).
    unflushed: AtomicUsize,
    /// Never-used records this part's inserts take before the free
    /// stack's ([`Slab::alloc_from`]), [`Conntrack::worker_batch`] at a
    /// time; handed out only under `unassured`'s lock.
    fresh: FreshRecords,
}

impl PerWorker {
    /// The parts of `workers` workers for a table of `records`, each
    /// with a share of the queues.
    fn for_workers(records: usize, workers: usize) -> Box<[CachePadded<PerWorker>]> {
        let share = records.div_ceil(workers);
        (0..workers)
            .map(|_| {
                CachePadded::new(PerWorker {
                    unassured: EvictionQueue::new(share),
                    closing: EvictionQueue::new(share),
                    stats: ConntrackStats::default(),
                    unflushed: AtomicUsize::new(0),
                    fresh: FreshRecords::default(),
                })
            })
            .collect()
    }
}

/// The connection-tracking table of one address family.
#[derive(Debug)]
pub struct Conntrack<A: IpFamily = Ipv4Addr> {
    index: FlowIndex,
    slab: Slab<A>,
    hasher: RandomState,
    config: ConntrackConfig,
    /// Unreplied flows the flood guard admits: `unreplied_percent` of
    /// `max_flows`, at least one.
    unreplied_cap: usize,
    /// Flows in the table, but for the workers' unflushed inserts
    /// ([`PerWorker::unflushed`]): signed, as a flow a worker has not
    /// yet added may already be removed. Its own line: inserts and
    /// removals write it, and nothing on the lookup path reads it.
    live: CachePadded<AtomicIsize>,
    /// Flows no reply has been seen for, likewise.
    unreplied: CachePadded<AtomicIsize>,
    /// Inserts a worker counts in its own part before adding them to
    /// `live` and `unreplied` ([`PerWorker::unflushed`]), and never-used
    /// records it takes at a time ([`PerWorker::fresh`]).
    worker_batch: usize,
    /// Counts removals of replied flows per part of the key space (of
    /// either key), so that per-worker caches of flows
    /// ([`crate::pipeline`]) know which of what they hold to forget:
    /// with one count for the table, every removal (thousands a second
    /// on a busy gateway, as connections end) emptied every worker's
    /// cache. Read on every steady packet, written once per removal;
    /// eight counts share a line (8 KiB in all): a removal costs the
    /// workers a fetch of that line, and stales only its own parts.
    removals: Box<[AtomicU64; REMOVAL_PARTS]>,
    /// Each inserting worker's queues and counters
    /// ([`Conntrack::with_workers`]), on lines of its own.
    workers: Box<[CachePadded<PerWorker>]>,
    /// Source NAT addresses and ports; off when it has no address.
    snat: SnatPool<A>,
    /// Per-flow packets and bytes, by record; `None` unless
    /// [`Conntrack::with_accounting`].
    accounts: Option<ZeroedSlice<Account>>,
}

impl<A: IpFamily> Default for Conntrack<A> {
    fn default() -> Self {
        Self::new(ConntrackConfig::default())
    }
}

/// Ordering for the table's counters: they are statistics and limits that
/// tolerate a momentarily stale value; no other memory is published
/// through them.
const STAT: Ordering = Ordering::Relaxed;

/// What [`Conntrack::room`] found: room far from the table's limits,
/// room near one, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Room {
    Far,
    Near,
    /// No room: the table is full (or else unreplied flows hold their
    /// share of it, the flood guard).
    None {
        full: bool,
    },
}

/// A live flow found behind an index slot.
#[derive(Debug, Clone, Copy)]
struct Found<A> {
    id: RecordId,
    direction: Direction,
    flow: FlowData<A>,
    life: Life,
}

impl<A: IpFamily> FlowData<A> {
    /// A new flow of `forward` to `backend`, counted at `slot`, without
    /// source NAT (yet).
    #[inline]
    fn new(forward: &FlowKey<A>, backend: (A, u16), slot: u32) -> Self {
        Self {
            client: forward.src,
            client_port: forward.src_port,
            vip: forward.dst,
            vip_port: forward.dst_port,
            backend: backend.0,
            backend_port: backend.1,
            protocol: forward.protocol,
            slot,
            snat_index: 0,
            snat_port: 0,
        }
    }

    #[inline]
    fn forward_key(&self) -> FlowKey<A> {
        FlowKey {
            src: self.client,
            dst: self.vip,
            src_port: self.client_port,
            dst_port: self.vip_port,
            protocol: self.protocol,
        }
    }

    /// The reply key: towards the client, or with source NAT towards
    /// the SNAT address and port (`snat` turns the record's index into
    /// the address).
    #[inline]
    fn reply_key(&self, snat: &SnatPool<A>) -> FlowKey<A> {
        let (dst, dst_port) = if self.snat_index == 0 {
            (self.client, self.client_port)
        } else {
            (snat.address(self.snat_index), self.snat_port)
        };
        FlowKey {
            src: self.backend,
            dst,
            src_port: self.backend_port,
            dst_port,
            protocol: self.protocol,
        }
    }

    #[inline]
    fn key(&self, direction: Direction, snat: &SnatPool<A>) -> FlowKey<A> {
        match direction {
            Direction::Forward => self.forward_key(),
            Direction::Reply => self.reply_key(snat),
        }
    }

    /// Writes the flow's hit into `out` field by field, where the caller
    /// keeps it: a hit returned by value from a function that is not
    /// inlined crosses the stack as narrow stores that the caller's copy
    /// then reads with wide loads, and every such load waits for the
    /// stores to retire (a store-forwarding stall; see RESULTS, session
    /// 17). The caller reads the fields it needs one by one.
    ///
    /// The flow is taken by value: by reference, a lookup's hit stored
    /// the flow's four ports to the stack, where nothing read them (8
    /// instructions a lookup). The NAT address is written in each arm
    /// of a `match`: chosen as a tuple, an IPv6 one was picked by a
    /// pointer to one of two stack copies, each stored as two 8-byte
    /// halves just before, and read back as 16 bytes, which waits for
    /// the stores (IPv6 lookups of cached flows 16.2 -> 14.7 ns;
    /// benches/RESULTS.md, session 45).
    #[inline]
    fn write_hit(
        self,
        id: RecordId,
        direction: Direction,
        bits: u8,
        snat: &SnatPool<A>,
        out: &mut FlowHit<A>,
    ) {
        out.direction = direction;
        match direction {
            Direction::Forward => {
                out.nat_ip = self.backend;
                out.nat_port = self.backend_port;
            }
            Direction::Reply => {
                out.nat_ip = self.vip;
                out.nat_port = self.vip_port;
            }
        }
        out.state = FlowState::from_bits(bits);
        out.affinity = bits & AFFINITY != 0;
        out.slot = self.slot;
        out.snat = (self.snat_index != 0).then(|| match direction {
            Direction::Forward => (snat.address(self.snat_index), self.snat_port),
            Direction::Reply => (self.client, self.client_port),
        });
        out.record = id;
    }

    #[inline]
    fn hit(&self, id: RecordId, direction: Direction, bits: u8, snat: &SnatPool<A>) -> FlowHit<A> {
        let mut hit = FlowHit::UNSET;
        self.write_hit(id, direction, bits, snat, &mut hit);
        hit
    }
}

#[inline]
fn direction_of(bit: u32) -> Direction {
    if bit == index::FORWARD {
        Direction::Forward
    } else {
        Direction::Reply
    }
}

/// `len` zeroed `T`s in memory of their own, mapped straight from the
/// kernel, which zero-fills pages as they are first touched or populated
/// ([`Conntrack::populate`]): building one costs no time however large it
/// is (the allocator would write every byte of a slice aligned beyond 16
/// bytes), and tests' many small tables take no memory they do not use.
pub(crate) struct ZeroedSlice<T> {
    ptr: std::ptr::NonNull<T>,
    len: usize,
}

impl<T> ZeroedSlice<T> {
    /// # Safety
    ///
    /// All-zero bytes must be a valid `T`, and `T`'s alignment at most a
    /// page's.
    unsafe fn new(len: usize) -> Self {
        let bytes = std::mem::size_of::<T>()
            .checked_mul(len)
            .expect("conntrack table size overflows");
        if bytes == 0 {
            return Self {
                ptr: std::ptr::NonNull::dangling(),
                len,
            };
        }
        // SAFETY: a fresh private anonymous mapping; the kernel picks the
        // (page-aligned) address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            std::alloc::handle_alloc_error(
                std::alloc::Layout::array::<T>(len).expect("checked above"),
            );
        }
        Self {
            ptr: std::ptr::NonNull::new(ptr.cast()).expect("mmap never returns null on success"),
            len,
        }
    }

    /// Has the kernel back every page now, contents unchanged
    /// (MADV_POPULATE_WRITE, Linux 5.14).
    fn populate(&self) -> std::io::Result<()> {
        let bytes = std::mem::size_of::<T>() * self.len;
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: exactly the mapping made in `new`, which self owns and
        // which stays mapped while self lives.
        unsafe { populate_pages(self.ptr.as_ptr().cast(), bytes) }
    }
}

/// Has the kernel back every page of `[start, start + bytes)` now and map
/// it writable (MADV_POPULATE_WRITE, Linux 5.14), as a first write would,
/// without writing a byte: fresh anonymous or file pages come zeroed, and
/// pages already there keep their contents.
///
/// # Safety
///
/// `start` must be page aligned and the range lie inside one private
/// anonymous or shared writable mapping that outlives the call.
pub(crate) unsafe fn populate_pages(start: *mut u8, bytes: usize) -> std::io::Result<()> {
    // SAFETY: the caller's mapping; populating changes no byte of it, so
    // readers and writers elsewhere (even on a live table) see no change.
    let rc = unsafe { libc::madvise(start.cast(), bytes, libc::MADV_POPULATE_WRITE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl<T> std::ops::Deref for ZeroedSlice<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        // SAFETY: `len` zero-filled, page-aligned Ts that the caller of
        // `new` promised are valid, mapped for as long as self lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> Drop for ZeroedSlice<T> {
    fn drop(&mut self) {
        let bytes = std::mem::size_of::<T>() * self.len;
        if bytes > 0 {
            // SAFETY: exactly the mapping made in `new`, no longer used.
            unsafe {
                libc::munmap(self.ptr.as_ptr().cast(), bytes);
            }
        }
    }
}

impl<T> std::fmt::Debug for ZeroedSlice<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ZeroedSlice({} x {} bytes)",
            self.len,
            std::mem::size_of::<T>()
        )
    }
}

// SAFETY: the slice owns its mapping; sharing it is sharing a `[T]`.
unsafe impl<T: Sync> Sync for ZeroedSlice<T> {}
// SAFETY: as above; moving it moves ownership of the mapping.
unsafe impl<T: Send> Send for ZeroedSlice<T> {}

/// `len` zeroed `T`s (see [`ZeroedSlice`]).
///
/// # Safety
///
/// All-zero bytes must be a valid `T`, and `T`'s alignment at most a
/// page's.
unsafe fn zeroed_slice<T>(len: usize) -> ZeroedSlice<T> {
    // SAFETY: passed on from the caller.
    unsafe { ZeroedSlice::new(len) }
}

/// Asks the kernel to back a large table with transparent huge pages:
/// lookups land at random over tens of megabytes, and with 4 KiB pages
/// nearly every one would also miss the TLB (a page walk, which a VM
/// nests). Only a hint: where THP is off, or the kernel has no huge page
/// at hand, the table works the same on small pages. Public for the
/// conntrack bench, whose memory baseline lies in memory advised alike.
pub fn advise_huge_pages<T>(table: &[T]) {
    // SAFETY: the range is `table`'s own memory, which the caller holds.
    unsafe {
        crate::huge_slice::advise_huge_pages(table.as_ptr() as usize, std::mem::size_of_val(table));
    }
}

/// Hints the CPU to fetch the cache lines holding `item`: one for a
/// bucket or a record (each aligned to its size, which is at most a
/// line); more for a `T` that spans lines.
#[inline(always)]
fn prefetch<T>(item: &T) {
    for_each_line::<T>(item as *const T as usize, prefetch_line);
}

/// Calls `line` with an address in each cache line a `T` at address
/// `start` spans, the first line's being `start`.
#[inline(always)]
fn for_each_line<T>(start: usize, mut line: impl FnMut(usize)) {
    const LINE: usize = 64;
    line(start);
    // Known at compile time: whether a T can reach into a second line.
    if std::mem::size_of::<T>() > std::mem::align_of::<T>().min(LINE) {
        let last = start + std::mem::size_of::<T>() - 1;
        let mut next = (start | (LINE - 1)) + 1;
        while next <= last {
            line(next);
            next += LINE;
        }
    }
}

/// Hints the CPU to fetch the cache line holding address `at`.
#[inline(always)]
pub fn prefetch_line(at: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults and changes no
    // memory, whatever the address (callers pass addresses inside a live
    // reference's object).
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// How this CPU asks for a line it is about to write: with `prefetchw`
/// where it has the instruction (CPUID 8000_0001h, ECX bit 8: PRFCHW,
/// "3dnowprefetch" in /proc/cpuinfo; every AMD64 CPU, and Intel's since
/// Broadwell), else as [`prefetch_line`] does. Asked of CPUID once per
/// index and slab ([`WritePrefetch::detect`]) and kept beside their
/// lines, so a prefetch tests a byte of the structure it already holds:
/// one compare with memory and a branch the CPU always predicts. (A
/// static byte, asked on first use, took a load of its address, a load,
/// two compares and two branches a prefetch, and kept a register for
/// the address: 22 instructions more a SYN flood's insert than this,
/// benches/RESULTS.md, session 43; a `LazyLock` took more still.)
///
/// A line asked for with `prefetcht0` and then locked or stored to may
/// still have to be asked for again, owned, when the write comes: in the
/// SYN flood (`benches/conntrack.rs`), whose every insert locks two
/// buckets and claims a victim's record and unlinks its two keys, the
/// inserts waited at those writes, and asking for the lines with
/// `prefetchw` took the flood from a median of 146.4 ns a new flow
/// (24 runs) to 125.4 (26 runs; in the sets where the old code ran in
/// its fast mode, the two were even: benches/RESULTS.md, session 31).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WritePrefetch {
    prefetchw: bool,
}

impl WritePrefetch {
    /// Asks CPUID whether the CPU has `prefetchw`.
    #[cold]
    pub fn detect() -> WritePrefetch {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::__cpuid;
            const EXTENDED: u32 = 0x8000_0000;
            const PRFCHW: u32 = 1 << 8;
            WritePrefetch {
                prefetchw: __cpuid(EXTENDED).eax > EXTENDED
                    && __cpuid(EXTENDED + 1).ecx & PRFCHW != 0,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        WritePrefetch { prefetchw: false }
    }

    /// Whether lines are asked for with `prefetchw`.
    #[cfg(test)]
    pub fn uses_prefetchw(self) -> bool {
        self.prefetchw
    }

    /// [`prefetch`] for an item about to be written: a bucket about to be
    /// locked, a victim's record about to be claimed and rewritten.
    #[inline(always)]
    pub fn item<T>(self, item: &T) {
        for_each_line::<T>(item as *const T as usize, |at| self.line(at));
    }

    /// Hints the CPU to fetch the cache line holding address `at` in
    /// order to write it.
    #[inline(always)]
    pub fn line(self, at: usize) {
        #[cfg(target_arch = "x86_64")]
        if self.prefetchw {
            // SAFETY: as in `prefetch_line`: a hint that never faults and
            // changes no memory; the CPU has the instruction (`detect`).
            unsafe {
                std::arch::asm!(
                    "prefetchw byte ptr [{at}]",
                    at = in(reg) at,
                    options(nostack, preserves_flags, readonly)
                );
            }
            return;
        }
        prefetch_line(at);
    }
}

/// What [`Conntrack::adopt`] found in a table file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Adoption {
    /// Live flows taken over.
    pub flows: usize,
    /// Records that held a flow past its timeout.
    pub expired: usize,
    /// Records that could not be believed (torn, scribbled, a key held
    /// twice), set free.
    pub discarded: usize,
}

impl<A: IpFamily> Conntrack<A> {
    pub fn new(config: ConntrackConfig) -> Self {
        let records = Self::records_for(&config);
        Self::with_index_for(config, records)
    }

    /// Records a table of `config` needs, id 0 included: what a table
    /// file is sized for ([`Conntrack::in_file`]).
    pub fn records_for(config: &ConntrackConfig) -> usize {
        config.max_flows.clamp(1, ConntrackConfig::MAX_FLOWS) + RECORD_SLACK + 1
    }

    /// Has the kernel back and map every page of the table now (records,
    /// in process memory or in the table file, index, accounts), contents
    /// unchanged, and every slot of the eviction queues written once. A
    /// table's pages are otherwise taken as flows first touch them, and a
    /// worker then stalls in a page fault: the index is touched at random,
    /// so nearly every early flow lands on a page of its own, and the
    /// first touch of a transparent huge page can take tens of
    /// milliseconds (up to 41 ms on these VMs, whose host backs fresh
    /// memory only when the guest first writes it). A gateway populates
    /// its tables before its workers start: no packet waits for a fault,
    /// and memory is taken at start-up, not under a flood. Safe on a live
    /// table; fails where the kernel lacks MADV_POPULATE_WRITE (EINVAL
    /// before Linux 5.14) or memory is short.
    pub fn populate(&self) -> std::io::Result<()> {
        self.populate_records()?;
        self.populate_all_but_records()
    }

    /// [`Conntrack::populate`] for the records alone, in process memory
    /// or in the table file.
    pub fn populate_records(&self) -> std::io::Result<()> {
        self.slab.populate()
    }

    /// [`Conntrack::populate`] for everything but the records: index,
    /// eviction queues and accounts, all in process memory, so a gateway
    /// can take them before the one it replaces lets go of the table file
    /// ([`Conntrack::into_file`]).
    pub fn populate_all_but_records(&self) -> std::io::Result<()> {
        self.index.populate()?;
        for worker in self.workers.iter() {
            worker.unassured.populate(Queued::default());
            worker.closing.populate(Closing::default());
        }
        if let Some(accounts) = &self.accounts {
            accounts.populate()?;
        }
        Ok(())
    }

    /// Bytes of one record in a table file.
    pub const RECORD_BYTES: usize = slab::record_bytes::<A>();

    /// Bytes of memory per flow of `max_flows`: record, index slots and
    /// eviction-queue entry.
    pub const BYTES_PER_FLOW: u64 =
        (Self::RECORD_BYTES + index::INDEX_BYTES_PER_FLOW + QUEUE_BYTES) as u64;

    /// This family's table file: its name under the state directory and
    /// its records ([`persist`]).
    pub const LAYOUT: TableLayout = TableLayout {
        file_name: if A::TAG == 6 {
            "conntrack6.table"
        } else {
            "conntrack.table"
        },
        family: A::TAG,
        record_bytes: Self::RECORD_BYTES,
    };

    /// A table whose records live in `file` (opened for
    /// [`Conntrack::records_for`] records); [`Conntrack::adopt`] then
    /// takes over the flows a previous gateway left there.
    pub fn in_file(config: ConntrackConfig, file: Arc<TableFile>) -> Self {
        let records = Self::records_for(&config);
        file.set_snat_addresses(&[]);
        let adopting = matches!(file.previous(), persist::Previous::Compatible { .. });
        let table = Self::build(config, records, Slab::in_file(file));
        if !adopting {
            table.index.advise_huge_pages();
        }
        table
    }

    /// Moves a table that has never held a flow into `file`'s records
    /// (opened for [`Conntrack::records_for`] records), keeping its index,
    /// eviction queues, accounts and source NAT: a gateway builds and
    /// populates those while the gateway before it still forwards, and
    /// takes the file only once that one has let go.
    /// [`Conntrack::adopt`] then takes over the flows left there. The
    /// records in process memory, never touched, are given back.
    ///
    /// # Panics
    ///
    /// If the table has held a flow, or the file holds another number of
    /// records than the table: a caller's bug, not an input's.
    pub fn into_file(mut self, file: Arc<TableFile>) -> Self {
        assert_eq!(
            self.slab.high_water(),
            1,
            "only a table that never held a flow moves into a file"
        );
        let slab = Slab::in_file(file);
        assert_eq!(
            slab.len(),
            self.slab.len(),
            "the table file holds the table's records"
        );
        self.slab = slab;
        self.write_snat_addresses();
        self
    }

    /// Writes the source NAT addresses into the table file, if the records
    /// are in one: the next gateway reads what the records' address
    /// indexes refer to there.
    fn write_snat_addresses(&self) {
        if let Some(file) = self.slab.file() {
            let addresses: Vec<IpAddr> = self.snat.addresses().iter().map(|&a| a.into()).collect();
            file.set_snat_addresses(&addresses);
        }
    }

    /// A table whose index is sized for `index_flows` flows (tests use a
    /// tiny one to make every chain overflow).
    fn with_index_for(config: ConntrackConfig, index_flows: usize) -> Self {
        let records = Self::records_for(&config) - 1;
        let table = Self::build(config, index_flows, Slab::new(records as u32));
        table.index.advise_huge_pages();
        table
    }

    fn build(config: ConntrackConfig, index_flows: usize, slab: Slab<A>) -> Self {
        let max_flows = config.max_flows.clamp(1, ConntrackConfig::MAX_FLOWS);
        let records = max_flows + RECORD_SLACK;
        Self {
            index: FlowIndex::new(index_flows),
            slab,
            hasher: RandomState::new(),
            config: ConntrackConfig {
                max_flows,
                ..config
            },
            unreplied_cap: (max_flows * usize::from(config.unreplied_percent))
                .div_ceil(100)
                .max(1),
            live: CachePadded::new(AtomicIsize::new(0)),
            unreplied: CachePadded::new(AtomicIsize::new(0)),
            worker_batch: Self::worker_batch_for(1),
            removals: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            workers: PerWorker::for_workers(records, 1),
            snat: SnatPool::default(),
            accounts: None,
        }
    }

    /// Gives every new flow a source address and port from `config`
    /// (see [`snat`]). Before the table is shared or adopts a file.
    pub fn with_snat(mut self, config: &SnatConfig<A>) -> Result<Self, SnatError> {
        self.snat = SnatPool::new(config)?;
        self.write_snat_addresses();
        Ok(self)
    }

    /// Gives each of `workers` workers its own eviction queues and
    /// counters (one worker by default), each with a share of the table's
    /// queues: pass the worker's index in [`FlowMeta::worker`] when
    /// inserting. Before the table is shared or adopts a file.
    pub fn with_workers(mut self, workers: usize) -> Self {
        let records = self.config.max_flows + RECORD_SLACK;
        let workers = workers.clamp(1, MAX_WORKERS);
        self.workers = PerWorker::for_workers(records, workers);
        self.worker_batch = Self::worker_batch_for(workers);
        self
    }

    /// The inserts each of `workers` workers counts before adding them to
    /// the table's counts, and the never-used records it takes at a
    /// time: 32, fewer when the workers are many, so that what they all
    /// hold back is at most half of [`RECORD_SLACK`] (one, adding every
    /// insert at once and taking one record at a time, from 128
    /// workers). Records held back beside a full table's flows and the
    /// inserts in flight fit in its slack: no insert is refused for a
    /// record another worker holds.
    fn worker_batch_for(workers: usize) -> usize {
        (RECORD_SLACK / 2 / workers).clamp(1, 32)
    }

    /// Worker `worker`'s part, or record `id`'s when it is the record
    /// that picks (see [`PerWorker`]).
    #[inline]
    fn worker(&self, worker: usize) -> &PerWorker {
        &self.workers[self.worker_index(worker)]
    }

    /// `worker` modulo the workers: a worker's own index is in range, so
    /// the insert path pays no division (tens of cycles).
    #[inline]
    fn worker_index(&self, worker: usize) -> usize {
        let workers = self.workers.len();
        if worker < workers {
            worker
        } else {
            worker % workers
        }
    }

    /// Counts a flow in TIME_WAIT or CLOSE that a new SYN replaced (in
    /// its record's worker's part: a lookup knows no worker). Rare: out
    /// of the lookup's way.
    #[cold]
    #[inline(never)]
    fn count_replaced(&self, id: RecordId) {
        self.worker(id as usize).stats.replaced.fetch_add(1, STAT);
    }

    /// Queues an assured flow that began to close in its record's
    /// worker's closing queue. Once per flow: out of the lookup's way.
    #[cold]
    #[inline(never)]
    fn queue_closing(&self, id: RecordId, seq: u32) {
        self.worker(id as usize)
            .closing
            .lock()
            .push(Closing { id, seq });
    }

    /// What no worker counts: sweeps, retirements, deletions.
    #[inline]
    fn shared_stats(&self) -> &ConntrackStats {
        &self.workers[0].stats
    }

    /// Counts every flow's packets and bytes per direction (as Linux's
    /// `nf_conntrack_acct`, and like it off by default: the counting is
    /// two atomic additions per packet on a line of the flow's own). The
    /// counts live in process memory beside the records, so flows adopted
    /// from a previous gateway's table start from zero. Before the table
    /// is shared.
    pub fn with_accounting(mut self) -> Self {
        // SAFETY: an Account is AtomicU64s only, for which all-zero bytes
        // are a valid value; its 32-byte alignment is below a page's.
        self.accounts = Some(unsafe { zeroed_slice::<Account>(self.slab.len()) });
        self
    }

    /// Whether flows' packets and bytes are counted.
    pub fn accounting(&self) -> bool {
        self.accounts.is_some()
    }

    /// Counts a packet of `bytes` on the flow `hit` came from, when
    /// accounting is on. Relaxed: statistics; a packet counted as its
    /// flow is removed and its record reused may land on the new flow.
    #[inline]
    pub fn account(&self, hit: &FlowHit<A>, bytes: usize) {
        if let Some(account) = self
            .accounts
            .as_ref()
            .and_then(|a| a.get(hit.record as usize))
        {
            let way = usize::from(hit.direction == Direction::Reply);
            account.packets[way].fetch_add(1, STAT);
            account.bytes[way].fetch_add(bytes as u64, STAT);
        }
    }

    /// The packets and bytes of the flow in `record` (from a hit or a
    /// listing), when accounting is on.
    pub fn counts(&self, record: u32) -> Option<FlowCounts> {
        let account = self.accounts.as_ref()?.get(record as usize)?;
        Some(FlowCounts {
            packets: [0, 1].map(|w| account.packets[w].load(STAT)),
            bytes: [0, 1].map(|w| account.bytes[w].load(STAT)),
        })
    }

    /// A new flow's counts start from zero.
    fn reset_account(&self, id: RecordId) {
        if let Some(account) = self.accounts.as_ref().and_then(|a| a.get(id as usize)) {
            for word in account.packets.iter().chain(&account.bytes) {
                word.store(0, STAT);
            }
        }
    }

    /// The source NAT addresses, empty when it is off.
    pub fn snat_addresses(&self) -> &[A] {
        self.snat.addresses()
    }

    /// The source NAT port range, when it is on.
    pub fn snat_ports(&self) -> Option<std::ops::RangeInclusive<u16>> {
        self.snat.ports()
    }

    /// Ports in use per source NAT address (flows holding one).
    pub fn snat_ports_in_use(&self) -> Vec<(A, u64)> {
        self.snat.in_use()
    }

    pub fn config(&self) -> &ConntrackConfig {
        &self.config
    }

    /// Takes over the flows a previous gateway left in this table's file:
    /// validates every record on its own (a live sequence, data exactly as
    /// written, a state of its protocol, a time not in the future, not
    /// expired at `now`), indexes and counts the good ones, queues the
    /// evictable ones oldest first, and frees the rest. Flows keep their
    /// backend, state and last-seen time; their per-Service counter slot
    /// (another process's) is cleared. Must run before the table is
    /// shared with any other thread.
    pub fn adopt(&self, now: u32) -> Adoption {
        let adoption = self.adopt_records(now);
        // Only now: see `FlowIndex::advise_huge_pages`.
        self.index.advise_huge_pages();
        adoption
    }

    fn adopt_records(&self, now: u32) -> Adoption {
        let mut adoption = Adoption::default();
        // Records past the file's count of records handed out were never
        // used; a count that is not believable (the record it points at
        // was used) costs a scan of the whole slab instead.
        let len = self.slab.len() as RecordId;
        let counted = self.slab.high_water();
        let high = if (1..=len).contains(&counted) && self.slab.raw_life(counted).0 == 0 {
            counted - 1
        } else {
            (1..len)
                .rev()
                .find(|&id| self.slab.raw_life(id).0 != 0)
                .unwrap_or(0)
        };
        if high == 0 {
            return adoption;
        }
        let timeouts = &self.config.timeouts;
        let mut unassured = Vec::new();
        let mut closing = Vec::new();
        // A record's SNAT index means an address of the list its gateway
        // wrote; flows of a list that changed since are not believed.
        let snat_same = self.slab.file().map_or(true, |f| {
            f.previous_snat_addresses().iter().copied().eq(self
                .snat
                .addresses()
                .iter()
                .map(|&a| -> IpAddr { a.into() }))
        });
        for id in 1..=high {
            let Some((flow, life)) = self.slab.read(id) else {
                // Free, never written, or torn mid-write by a crash.
                self.slab.release(id);
                continue;
            };
            let state = FlowState::from_bits(life.bits());
            let plausible = self.slab.is_canonical(id)
                && matches!(
                    (flow.protocol, state),
                    (
                        Protocol::Udp,
                        FlowState::UdpUnreplied | FlowState::UdpReplied
                    ) | (
                        Protocol::Tcp,
                        FlowState::TcpSynSent
                            | FlowState::TcpEstablished
                            | FlowState::TcpFinWait
                            | FlowState::TcpCloseWait
                            | FlowState::TcpTimeWait
                            | FlowState::TcpClose
                    )
                )
                && life.seen() <= now.saturating_add(1)
                && !flow.client.is_unspecified_addr()
                && !flow.vip.is_unspecified_addr()
                && !flow.backend.is_unspecified_addr()
                && flow.vip_port != 0
                && flow.backend_port != 0
                && (flow.snat_index == 0
                    || (snat_same && self.snat.knows(flow.snat_index) && flow.snat_port != 0));
            if !plausible {
                adoption.discarded += 1;
                self.slab.release(id);
                continue;
            }
            if life.seen().saturating_add(state.timeout(timeouts)) < now {
                adoption.expired += 1;
                self.slab.release(id);
                continue;
            }
            let forward_hash = self.hash(&flow.forward_key());
            let reply_hash = self.hash(&flow.reply_key(&self.snat));
            if !self.link_adopted(id, &flow, forward_hash, reply_hash) {
                adoption.discarded += 1;
                self.slab.release(id);
                continue;
            }
            self.slab.set_slot(id, NO_SLOT);
            self.snat.took(flow.snat_index);
            adoption.flows += 1;
            self.live.fetch_add(1, STAT);
            let bits = life.bits();
            if bits & REPLIED == 0 {
                self.unreplied.fetch_add(1, STAT);
            }
            if bits & ASSURED == 0 {
                unassured.push((
                    life.seen(),
                    Queued {
                        id,
                        seq: life.seq(),
                        forward_home: self.index.home(forward_hash) as u32,
                        reply_home: self.index.home(reply_hash) as u32,
                    },
                ));
            } else if state.is_closing() {
                closing.push((
                    life.seen(),
                    Closing {
                        id,
                        seq: life.seq(),
                    },
                ));
            }
        }
        self.slab.set_high_water(high);
        unassured.sort_by_key(|(seen, q)| (*seen, q.id));
        closing.sort_by_key(|(seen, c)| (*seen, c.id));
        // Oldest first into each worker's queues, by record: the next
        // gateway's workers take the flows in turn.
        for (_, q) in unassured {
            self.worker(q.id as usize).unassured.lock().push(q);
        }
        for (_, c) in closing {
            self.worker(c.id as usize).closing.lock().push(c);
        }
        adoption
    }

    /// Indexes both keys of an adopted flow; false (and nothing linked)
    /// when either key is already held.
    fn link_adopted(
        &self,
        id: RecordId,
        flow: &FlowData<A>,
        forward_hash: u64,
        reply_hash: u64,
    ) -> bool {
        let (forward, reply) = (flow.forward_key(), flow.reply_key(&self.snat));
        let forward_word = index::slot_word(forward_hash, id, index::FORWARD);
        // Adoption runs before the table is shared: no one removes flows.
        let linked = self.index.link(
            forward_hash,
            forward_word,
            |other, bit| self.live_match(other, direction_of(bit), &forward),
            || true,
        );
        if !matches!(linked, Placed::Linked) {
            return false;
        }
        let reply_word = index::slot_word(reply_hash, id, index::REPLY);
        let linked = self.index.link(
            reply_hash,
            reply_word,
            |other, bit| self.live_match(other, direction_of(bit), &reply),
            || true,
        );
        if !matches!(linked, Placed::Linked) {
            self.index.unlink(forward_hash, forward_word);
            return false;
        }
        true
    }

    /// The table's counters: every worker's summed.
    pub fn stats(&self) -> ConntrackStats {
        let total = ConntrackStats::default();
        for worker in self.workers.iter() {
            total.add(&worker.stats);
        }
        total
    }

    pub fn summary(&self) -> ConntrackSummary {
        let (flows, unreplied) = self.whole_counts();
        ConntrackSummary {
            flows,
            unreplied,
            max_flows: self.config.max_flows,
        }
    }

    /// The key's hash, for [`Conntrack::prefetch_index`],
    /// [`Conntrack::prefetch_flow`] and [`Conntrack::lookup_hashed`].
    #[inline]
    pub fn hash(&self, key: &FlowKey<A>) -> u64 {
        self.hasher.hash_one(key)
    }

    /// First step of a batched lookup: fetch the key's index bucket.
    #[inline]
    pub fn prefetch_index(&self, hash: u64) {
        self.index.prefetch(hash);
    }

    /// Second step, once the bucket has arrived: fetch the record of the
    /// first slot whose signature matches the key's, and say which it is
    /// (for [`Conntrack::lookup_candidate_into`]). When no slot matched
    /// ([`Candidate::NONE`]), the key is not in the table (a new flow's),
    /// and [`Conntrack::prefetch_reply`] may fetch what its insert needs.
    ///
    /// The first match only: a signature is 31 bits of the hash, so a
    /// second slot of the same chain matching it is a one-in-a-billion
    /// accident, not worth scanning the rest of the bucket for (the scan
    /// to its end was a fifth of a cached lookup's instructions). The
    /// slot's reference comes back as a [`Candidate`] for the lookup.
    #[inline]
    pub fn prefetch_flow(&self, hash: u64) -> Candidate {
        self.index
            .find(hash, |id, direction| {
                self.slab.prefetch(id);
                Some(Candidate(index::slot_reference(id, direction)))
            })
            .unwrap_or(Candidate::NONE)
    }

    /// Third step, for a key [`Conntrack::prefetch_flow`] did not find
    /// once its backend is chosen: fetches the bucket its insert will
    /// link the reply key in (with source NAT, the bucket of the first
    /// port it will probe), which the insert would otherwise wait for
    /// (a miss of its own: it depends on the backend, so the batch's
    /// first pass cannot ask for it), for the write (the insert locks
    /// it). Only a hint: nothing is kept.
    #[inline]
    pub fn prefetch_reply(&self, forward: &FlowKey<A>, forward_hash: u64, backend: (A, u16)) {
        let mut flow = FlowData::new(forward, backend, NO_SLOT);
        if self.snat.is_on() {
            let (Some(index), Some(port)) = (
                self.snat.next_in_turn(),
                self.snat.probes(forward_hash).next(),
            ) else {
                return;
            };
            (flow.snat_index, flow.snat_port) = (index, port);
        }
        self.index
            .prefetch_for_write(self.hash(&flow.reply_key(&self.snat)));
    }

    /// Looks a packet's key up, marks the flow as seen at `now` and
    /// advances its state by the packet's TCP flags (0 for UDP).
    #[inline]
    pub fn lookup(&self, key: &FlowKey<A>, now: u32, flags: u8) -> Option<FlowHit<A>> {
        self.lookup_hashed(key, self.hash(key), now, flags)
    }

    /// [`Conntrack::lookup`] with the key's hash already computed.
    #[inline]
    pub fn lookup_hashed(
        &self,
        key: &FlowKey<A>,
        hash: u64,
        now: u32,
        flags: u8,
    ) -> Option<FlowHit<A>> {
        let mut hit = FlowHit::UNSET;
        self.lookup_into(key, hash, now, flags, &mut hit)
            .then_some(hit)
    }

    /// [`Conntrack::lookup_hashed`] for the packet path: writes the hit
    /// into `hit` (left as it was on a miss) and says whether there was
    /// one. Read the hit's fields one by one, not as a whole: returned by
    /// value from a call that is not inlined, a hit crossed the stack as
    /// narrow stores that a whole copy read with wide loads, which wait
    /// for the stores to retire (benches/RESULTS.md, session 18).
    #[inline]
    pub fn lookup_into(
        &self,
        key: &FlowKey<A>,
        hash: u64,
        now: u32,
        flags: u8,
        hit: &mut FlowHit<A>,
    ) -> bool {
        self.lookup_candidate_into(key, hash, Candidate::NONE, now, flags, hit)
    }

    /// [`Conntrack::lookup_into`] that reads the record `candidate` names
    /// first (see [`Candidate`]): where it holds `key`, the bucket is not
    /// searched again.
    ///
    /// With [`Candidate::NONE`] (as [`Conntrack::lookup_into`] calls it),
    /// or one that no longer holds the key, the lookup goes on out of
    /// line ([`Conntrack::lookup_absent`]): a batch's new flows take that
    /// way, and most miss there at one look at their home bucket.
    ///
    /// A candidate that holds the key is touched on the spot, not passed
    /// on to one `touch` with the search's result. Merged into one, the
    /// two ways wrote the found flow to one place on the stack in pieces,
    /// and the IPv6 one was then read back whole and waited for the
    /// stores: at a million flows, IPv6 packets took 8% longer
    /// (benches/RESULTS.md, session 27).
    #[inline]
    pub fn lookup_candidate_into(
        &self,
        key: &FlowKey<A>,
        hash: u64,
        candidate: Candidate,
        now: u32,
        flags: u8,
        hit: &mut FlowHit<A>,
    ) -> bool {
        if candidate.is_some() {
            let (id, direction) = index::reference(u64::from(candidate.0));
            if let Some(found) = self.lookup_match(id, direction_of(direction), key) {
                return self.touch(&found, key.protocol, now, flags, hit);
            }
        }
        self.lookup_absent(key, hash, now, flags, hit)
    }

    /// [`Conntrack::lookup_candidate_into`] for a key no candidate found:
    /// most likely a new flow's, whose home bucket carries no signature of
    /// it and does not overflow ([`FlowIndex::may_hold`]). That miss
    /// takes a handful of registers and a tail call's worth of code; the
    /// search, which needs the key and a record's decoded flow in
    /// registers, is a call further ([`Conntrack::lookup_searched`]).
    /// Inline, the search's register saves and the key's copy to the
    /// stack came with every miss: 74 instructions a new flow's lookup
    /// took against 33 (benches/RESULTS.md, session 43).
    #[inline(never)]
    fn lookup_absent(
        &self,
        key: &FlowKey<A>,
        hash: u64,
        now: u32,
        flags: u8,
        hit: &mut FlowHit<A>,
    ) -> bool {
        self.index.may_hold(hash) && self.lookup_searched(key, hash, now, flags, hit)
    }

    /// The chain search of [`Conntrack::lookup_absent`], for a key its
    /// home bucket may hold: the bucket's seven signatures compared at
    /// once, as an insert searches it (`FlowIndex::find_likely_absent`;
    /// searched slot by slot, new flows' lookups took 21 instructions
    /// more, benches/RESULTS.md, session 27), and the flow found touched.
    #[inline(never)]
    fn lookup_searched(
        &self,
        key: &FlowKey<A>,
        hash: u64,
        now: u32,
        flags: u8,
        hit: &mut FlowHit<A>,
    ) -> bool {
        let found = self.index.find_likely_absent(hash, |id, bit| {
            self.lookup_match(id, direction_of(bit), key)
        });
        match found {
            Some(found) => self.touch(&found, key.protocol, now, flags, hit),
            None => false,
        }
    }

    /// The stamp of the flow `hit` names (in its record), if that record
    /// still holds it as the hit has it: `key` in the hit's direction,
    /// the same backend, source NAT, slot and state. For a cache of hits
    /// that must not outlive their flow: it keeps the stamp beside the
    /// hit it took from [`Conntrack::lookup_into`], and serves the hit
    /// while [`Conntrack::still_holds`] says so. Read once per cached
    /// hit (not on the packet path's every packet).
    #[inline(never)]
    pub fn stamp(&self, key: &FlowKey<A>, hit: &FlowHit<A>) -> Option<FlowStamp> {
        let found = self.live_match(hit.record, hit.direction, key)?;
        let now = found
            .flow
            .hit(hit.record, hit.direction, found.life.bits(), &self.snat);
        (now == *hit).then(|| FlowStamp::of(found.life))
    }

    /// Whether `record` still holds the flow, in the state, of `stamp`
    /// (see [`Conntrack::stamp`]): one load of the record's life word.
    #[inline]
    pub fn still_holds(&self, record: u32, stamp: FlowStamp) -> bool {
        self.slab
            .life(record)
            .is_some_and(|life| FlowStamp::of(life) == stamp)
    }

    /// The rewrite a packet of `key` would get, without recording
    /// anything (last seen and state stay as they are): for an ICMP error
    /// about the flow, which says nothing of its liveness (Linux's
    /// conntrack does not refresh a flow for one either).
    pub fn peek(&self, key: &FlowKey<A>) -> Option<FlowHit<A>> {
        let found = self.find(key, self.hash(key))?;
        Some(
            found
                .flow
                .hit(found.id, found.direction, found.life.bits(), &self.snat),
        )
    }

    /// The live flow holding `key`, if any.
    #[inline]
    fn find(&self, key: &FlowKey<A>, hash: u64) -> Option<Found<A>> {
        self.index
            .find(hash, |id, bit| self.live_match(id, direction_of(bit), key))
    }

    /// The flow in record `id`, if it is live and its `direction` key is
    /// `key`: for the checks of an insert (a key already linked), an
    /// adoption, a stamp and [`Conntrack::find`] (a removal, an ICMP
    /// error's peek, source NAT's last resort), which are off the packet
    /// path or rarely find one. Left to the compiler: made a call, the
    /// IPv4 SYN flood ran 4 instructions fewer per new flow and took 3%
    /// longer (benches/RESULTS.md, session 27). Lookups inline
    /// [`Conntrack::lookup_match`] instead.
    ///
    /// Compares the decoded flow's key, where a lookup compares the
    /// record's words ([`Slab::read_holding`]): an insert's checks
    /// rarely find a record to compare, and the words' compare had the
    /// key's encoding hoisted out of their loops onto every insert (a
    /// new flow with source NAT through a full table 1,902 -> 1,920
    /// instructions, against 1,903 this way; benches/RESULTS.md,
    /// session 45).
    #[inline]
    fn live_match(&self, id: RecordId, direction: Direction, key: &FlowKey<A>) -> Option<Found<A>> {
        let (flow, life) = self.slab.read(id)?;
        (flow.key(direction, &self.snat) == *key).then_some(Found {
            id,
            direction,
            flow,
            life,
        })
    }

    /// [`Conntrack::live_match`] for a lookup, always inlined. Left to the
    /// compiler, the IPv6 one was a call, and its flow (about 80 bytes)
    /// came back through memory: stored in pieces, loaded whole, and the
    /// lookup waited for the stores (a store-forwarding stall: batched
    /// IPv6 lookups of cached flows took 40 ns instead of 30,
    /// benches/RESULTS.md, session 27).
    ///
    /// The key is compared against the record's words as stored, and
    /// only a match decoded ([`Slab::read_holding`]): decoded first, the
    /// whole flow was worked out (and partly spilled) before the compare,
    /// and batched lookups ran 246 instructions against 231
    /// (benches/RESULTS.md, session 45).
    #[inline(always)]
    fn lookup_match(
        &self,
        id: RecordId,
        direction: Direction,
        key: &FlowKey<A>,
    ) -> Option<Found<A>> {
        let (flow, life) = self
            .slab
            .read_holding(id, direction, key, |i| self.snat.address(i))?;
        Some(Found {
            id,
            direction,
            flow,
            life,
        })
    }

    /// Records a packet on a found flow: last seen, state. A new SYN on a
    /// flow in TIME_WAIT or CLOSE ends it instead (as Linux does): the
    /// lookup misses and the SYN starts a new flow with a fresh backend.
    ///
    /// Most packets change nothing: a flow in a state it stays in
    /// ([`state::keeps_state`]), already seen this second. Those are
    /// answered here, inlined into the lookup; the rest go to
    /// [`Conntrack::touch_changing`], out of line.
    #[inline(always)]
    fn touch(
        &self,
        found: &Found<A>,
        protocol: Protocol,
        now: u32,
        flags: u8,
        hit: &mut FlowHit<A>,
    ) -> bool {
        let bits = found.life.bits();
        if found.life.seen() >= now && state::keeps_state(bits, found.direction, protocol, flags) {
            found
                .flow
                .write_hit(found.id, found.direction, bits, &self.snat, hit);
            return true;
        }
        self.touch_changing(
            found.id,
            found.direction,
            found.life,
            protocol,
            now,
            flags,
            hit,
        )
    }

    /// [`Conntrack::touch`] for a packet that may change its flow's state
    /// or last-seen time: the flow in record `id`, found with `seen`.
    ///
    /// Given the record, not the found flow: passed by reference, the
    /// found flow had to be in memory, and the lookup stored it to the
    /// stack field by field on every hit, the common ones too (about 20
    /// instructions a lookup at a million flows). This rare path reads the
    /// record again instead; a record that no longer holds the flow found
    /// (another sequence, or being removed) is a miss, as a failed swap
    /// below is.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn touch_changing(
        &self,
        id: RecordId,
        direction: Direction,
        seen: Life,
        protocol: Protocol,
        now: u32,
        flags: u8,
        hit: &mut FlowHit<A>,
    ) -> bool {
        let Some((flow, mut life)) = self.slab.read(id) else {
            return false;
        };
        if life.seq() != seen.seq() {
            return false;
        }
        let found = Found {
            id,
            direction,
            flow,
            life,
        };
        loop {
            let bits = life.bits();
            if protocol == Protocol::Tcp
                && found.direction == Direction::Forward
                && flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST) == tcp_flags::SYN
                && FlowState::from_bits(bits).is_finished()
            {
                let seq = life.seq();
                let finished = |l: Life| FlowState::from_bits(l.bits()).is_finished();
                if self
                    .remove_flow(found.id, |_, l| l.seq() == seq && finished(l))
                    .is_some()
                {
                    self.count_replaced(found.id);
                }
                return false;
            }
            let next = next_state(bits, found.direction, protocol, flags);
            let updated = life.with(next, now.max(life.seen()));
            // Unchanged (the common case within a second): no write, so
            // the record's line stays shared between cores.
            if updated == life {
                found
                    .flow
                    .write_hit(found.id, found.direction, next, &self.snat, hit);
                return true;
            }
            match self.slab.update(found.id, life, updated) {
                Ok(()) => {
                    // REPLIED is set exactly once per flow (never
                    // cleared), by the one swap that wins here.
                    if bits & REPLIED == 0 && next & REPLIED != 0 {
                        self.unreplied.fetch_sub(1, STAT);
                    }
                    // An assured flow enters a closing state once (the
                    // swap that wins): from now on it may make way.
                    if next & ASSURED != 0
                        && FlowState::from_bits(next).is_closing()
                        && !FlowState::from_bits(bits).is_closing()
                    {
                        self.queue_closing(found.id, life.seq());
                    }
                    found
                        .flow
                        .write_hit(found.id, found.direction, next, &self.snat, hit);
                    return true;
                }
                // Removed meanwhile: a miss.
                Err(now_life) if now_life.seq() != life.seq() => return false,
                Err(now_life) => life = now_life,
            }
        }
    }

    /// Tracks a new flow from `forward` (client -> VIP) to `backend`.
    ///
    /// When the forward key is already tracked (another worker raced us),
    /// the existing backend wins and is returned, so both packets go to
    /// the same place. When the table is full, or unreplied flows hold
    /// their whole share of it, the oldest unreplied flow is evicted
    /// first; when none can be, the flow is refused.
    pub fn insert(
        &self,
        forward: FlowKey<A>,
        backend: (A, u16),
        now: u32,
        meta: FlowMeta,
    ) -> Result<FlowHit<A>, InsertError> {
        self.insert_hashed(forward, self.hash(&forward), backend, now, meta)
    }

    /// [`Conntrack::insert`] with the forward key's hash already computed
    /// (by the lookup that missed).
    ///
    /// With source NAT on, the flow is also given a source port (see
    /// [`snat`]); when no address has one free towards the backend it is
    /// refused ([`InsertError::SnatExhausted`]).
    pub fn insert_hashed(
        &self,
        forward: FlowKey<A>,
        forward_hash: u64,
        backend: (A, u16),
        now: u32,
        meta: FlowMeta,
    ) -> Result<FlowHit<A>, InsertError> {
        let mut hit = FlowHit::UNSET;
        self.insert_into(forward, forward_hash, backend, now, meta, &mut hit)
            .map(|()| hit)
    }

    /// [`Conntrack::insert_hashed`] for the packet path: writes the hit
    /// into `hit` (left as it was on an error), as
    /// [`Conntrack::lookup_into`] does. Always inlined: as a call of its
    /// own, its frame and argument copies cost the new-flow path 20-24
    /// instructions (benches/RESULTS.md, session 22).
    #[inline(always)]
    pub fn insert_into(
        &self,
        forward: FlowKey<A>,
        forward_hash: u64,
        backend: (A, u16),
        now: u32,
        meta: FlowMeta,
        hit: &mut FlowHit<A>,
    ) -> Result<(), InsertError> {
        let flow = FlowData::new(&forward, backend, meta.slot);
        if self.snat.is_on() {
            return self.insert_snat(forward, forward_hash, flow, now, meta, hit);
        }
        self.insert_flow(forward, forward_hash, None, flow, now, meta, hit)
    }

    /// Inserts a flow with a source NAT port: probes for a port whose
    /// reply key no flow holds (or only a finished TCP flow, which then
    /// makes way as in [`Conntrack::insert_flow`]), and inserts with it.
    /// Another worker may take the same port between probe and link
    /// (the link then reports a clash): the probe is repeated.
    fn insert_snat(
        &self,
        forward: FlowKey<A>,
        forward_hash: u64,
        flow: FlowData<A>,
        now: u32,
        meta: FlowMeta,
        hit: &mut FlowHit<A>,
    ) -> Result<(), InsertError> {
        for _ in 0..CLAIM_ATTEMPTS {
            let Some((snat_index, snat_port, reply_hash)) =
                self.free_snat_port(&flow, forward_hash)
            else {
                self.worker(meta.worker).stats.snat_exhausted.inc();
                return Err(InsertError::SnatExhausted);
            };
            let flow = FlowData {
                snat_index,
                snat_port,
                ..flow
            };
            match self.insert_flow(
                forward,
                forward_hash,
                Some(reply_hash),
                flow,
                now,
                meta,
                hit,
            ) {
                Err(InsertError::ReplyClash) => continue,
                other => return other,
            }
        }
        Err(InsertError::ReplyClash)
    }

    /// A source NAT address (index) and port for `flow` whose reply key
    /// is free, or held by a finished TCP flow when no port is free, with
    /// the reply key's hash.
    ///
    /// A first pass reads only the index: a port whose reply key's
    /// signature is in no slot of its chain is free, and one whose
    /// signature is there is passed over as in use without reading the
    /// record (a signature another key shares, one chance in 2^31 per
    /// slot, costs a free port, not a wrong one). Only when the probes of
    /// an address find no free port does a second pass read the holders,
    /// for a finished TCP flow's port.
    fn free_snat_port(&self, flow: &FlowData<A>, forward_hash: u64) -> Option<(u8, u16, u64)> {
        let reply = |index: u8, port: u16| FlowKey {
            src: flow.backend,
            dst: self.snat.address(index),
            src_port: flow.backend_port,
            dst_port: port,
            protocol: flow.protocol,
        };
        for index in self.snat.indexes_in_turn() {
            for port in self.snat.probes(forward_hash) {
                let hash = self.hash(&reply(index, port));
                if self
                    .index
                    .find_likely_absent(hash, |_, _| Some(()))
                    .is_none()
                {
                    return Some((index, port, hash));
                }
            }
            let mut finished = None;
            for port in self.snat.probes(forward_hash) {
                let key = reply(index, port);
                let hash = self.hash(&key);
                match self.find(&key, hash) {
                    None => return Some((index, port, hash)),
                    Some(holder)
                        if finished.is_none()
                            && FlowState::from_bits(holder.life.bits()).is_finished() =>
                    {
                        finished = Some((index, port, hash));
                    }
                    Some(_) => {}
                }
            }
            if finished.is_some() {
                return finished;
            }
        }
        None
    }

    /// Inserts `flow`, whose forward key is `forward` (see
    /// [`Conntrack::insert`]); `reply_hash` is its reply key's hash when
    /// the caller has it.
    #[allow(clippy::too_many_arguments)]
    fn insert_flow(
        &self,
        forward: FlowKey<A>,
        forward_hash: u64,
        reply_hash: Option<u64>,
        flow: FlowData<A>,
        now: u32,
        meta: FlowMeta,
        hit: &mut FlowHit<A>,
    ) -> Result<(), InsertError> {
        let stats = &self.worker(meta.worker).stats;
        // An IPv4 reply key is hashed from a key of its own, before
        // `reply` is built: the links below take `reply` by reference, so
        // it is stored to the stack field by field, and its hash read the
        // two addresses back as one 8-byte load that no single store could
        // forward (11-14% of this function's samples on the gateway's
        // core; benches/RESULTS.md, session 44). Hashing a copy of `reply`
        // reads the stack again. An IPv6 key's 16-byte halves are read as
        // stored, and a second key would cost it 7 instructions.
        let reply_hash = match reply_hash {
            None if A::BYTES == 4 => Some(self.hash(&flow.reply_key(&self.snat))),
            given => given,
        };
        let reply = flow.reply_key(&self.snat);
        let reply_hash = reply_hash.unwrap_or_else(|| self.hash(&reply));
        // The reply bucket is a miss of its own; let it arrive while the
        // record is written and room is made.
        self.index.prefetch_for_write(reply_hash);
        let Some(vip_index) = self.slab.vip_index(&flow) else {
            return Err(InsertError::VipPrefixesFull);
        };

        // Counted, queued and given a record (an evicted flow's, in a
        // flood) before the record is published: from then on a sweep
        // may find it, and whoever removes a flow counts it out.
        let Some(id) = self.admit(
            self.index.home(forward_hash) as u32,
            self.index.home(reply_hash) as u32,
            now,
            meta.worker,
        ) else {
            stats.refused.inc();
            return Err(InsertError::Full);
        };
        let bits =
            FlowState::initial(forward.protocol) as u8 | if meta.affinity { AFFINITY } else { 0 };
        self.reset_account(id);
        let life = self.slab.publish(id, &flow, vip_index, bits, now);
        // Counted with the record: whoever removes the flow releases it.
        self.snat.took(flow.snat_index);

        // A sweep, eviction or removal may end the flow before it is
        // linked (it is published first, so that a concurrent insert of
        // the same key finds it). Each link then places nothing; the
        // remover counted the flow out and unlinks what was placed before.
        let still_ours = || {
            self.slab
                .life(id)
                .is_some_and(|now| now.seq() == life.seq())
        };
        let forward_word = index::slot_word(forward_hash, id, index::FORWARD);
        match self.index.link(
            forward_hash,
            forward_word,
            |other, bit| self.live_match(other, direction_of(bit), &forward),
            still_ours,
        ) {
            Placed::Linked => {}
            Placed::Gone => {
                stats.inserted.inc();
                flow.write_hit(id, Direction::Forward, bits, &self.snat, hit);
                return Ok(());
            }
            Placed::Exists(existing) => {
                self.discard(id, life);
                existing.flow.write_hit(
                    existing.id,
                    existing.direction,
                    existing.life.bits(),
                    &self.snat,
                    hit,
                );
                return Ok(());
            }
            Placed::ChainFull => {
                self.discard(id, life);
                stats.refused.inc();
                return Err(InsertError::Full);
            }
        }

        // The reply key is taken when the client reuses a port with which
        // it reached the same backend through another VIP. If that older
        // connection is over (TIME_WAIT or closed), the client's new SYN
        // shows it is done with it: the old flow makes way. Otherwise the
        // replies could not be told apart and the new flow is refused.
        let reply_word = index::slot_word(reply_hash, id, index::REPLY);
        for _ in 0..CLAIM_ATTEMPTS {
            match self.index.link(
                reply_hash,
                reply_word,
                |other, bit| self.live_match(other, direction_of(bit), &reply),
                still_ours,
            ) {
                Placed::Linked | Placed::Gone => {
                    stats.inserted.inc();
                    flow.write_hit(id, Direction::Forward, bits, &self.snat, hit);
                    return Ok(());
                }
                Placed::Exists(old) => {
                    let finished = |l: Life| FlowState::from_bits(l.bits()).is_finished();
                    if !finished(old.life) {
                        self.discard(id, life);
                        return Err(InsertError::ReplyClash);
                    }
                    if self
                        .remove_flow(old.id, |_, l| l.seq() == old.life.seq() && finished(l))
                        .is_some()
                    {
                        stats.reused.inc();
                    }
                }
                Placed::ChainFull => {
                    self.discard(id, life);
                    stats.refused.inc();
                    return Err(InsertError::Full);
                }
            }
        }
        self.discard(id, life);
        Err(InsertError::ReplyClash)
    }

    /// Takes back a flow `insert` counted and queued but could not link.
    /// If someone else removed it first, they counted it out and unlinked
    /// whatever of it was placed (see [`FlowIndex::link`]).
    fn discard(&self, id: RecordId, life: Life) {
        self.remove_flow(id, |_, l| l.seq() == life.seq());
    }

    /// Whether an insert into the queues of a part with `unflushed`
    /// inserts of its own not yet counted ([`PerWorker::unflushed`]) may
    /// take a new record. Far from both limits (further than what every
    /// worker may hold back), the table's counts and the part's own
    /// decide; near one, every part's unflushed inserts are added, so a
    /// table fills to its limit as exactly as with no batching (each
    /// worker may overshoot it by the insert in flight).
    #[inline(always)]
    fn room(&self, unflushed: usize) -> Room {
        let held_back = (self.workers.len() * self.worker_batch) as isize;
        let (max_flows, cap) = (self.config.max_flows as isize, self.unreplied_cap as isize);
        // The table's counts with the part's own: never above the whole
        // counts (no part holds back fewer than none), at most
        // `held_back` below them.
        let own = unflushed as isize;
        let live = self.live.load(STAT) + own;
        let unreplied = self.unreplied.load(STAT) + own;
        let far = |count: isize, limit: isize| count + held_back < limit;
        if far(live, max_flows) && far(unreplied, cap) {
            return Room::Far;
        }
        // A limit these counts reach is reached: a flood's every insert
        // knows it without reading every part.
        if live >= max_flows {
            return Room::None { full: true };
        }
        if unreplied >= cap && far(live, max_flows) {
            return Room::None { full: false };
        }
        let (live, unreplied) = self.whole_counts();
        let full = live >= self.config.max_flows;
        if full || unreplied >= self.unreplied_cap {
            Room::None { full }
        } else {
            Room::Near
        }
    }

    /// The table's flows and unreplied flows, the workers' unflushed
    /// inserts ([`PerWorker::unflushed`]) included.
    fn whole_counts(&self) -> (usize, usize) {
        let unflushed: isize = self
            .workers
            .iter()
            // Acquire: pairs with the Release stores in `admit_with`, so
            // inserts a part no longer holds are in the table's counts
            // read after it.
            .map(|w| w.unflushed.load(Ordering::Acquire) as isize)
            .sum();
        let count = |c: &AtomicIsize| (c.load(STAT) + unflushed).max(0) as usize;
        (count(&self.live), count(&self.unreplied))
    }

    /// Makes room for a new flow, counts it in and queues it; returns the
    /// record it gets, or `None` when room was needed and nothing could
    /// be evicted.
    ///
    /// Room is needed when the table is full or unreplied flows hold
    /// their share of it (the flood guard). The flow is queued, and room
    /// made, in the queues of `worker` (the inserting worker: see
    /// [`PerWorker`]); when those hold nothing that may go, in the
    /// other workers' in turn. A full table evicts, in this
    /// order (Linux's early_drop): the oldest closing flow if it has
    /// expired, the oldest flow not yet assured (counted as expired when
    /// it has), then the oldest assured flow that is closing; an assured
    /// open flow never. The flood guard evicts only the oldest unreplied
    /// flow. Expired flows elsewhere in the queues are the sweeper's.
    ///
    /// The new flow takes over the victim's record and its place in the
    /// counts, so a flood's insert costs no allocation. Queue slots of
    /// flows that have moved on (assured, or gone) are consumed on the
    /// way; each is consumed once, so the work is amortised over the
    /// inserts that queued them, and one call is bounded to keep a
    /// worker's pause short. The queue prefetches the records and buckets
    /// of the flows a few evictions ahead, so a flood's evictions do not
    /// wait on memory.
    fn admit(
        &self,
        forward_home: u32,
        reply_home: u32,
        now: u32,
        worker: usize,
    ) -> Option<RecordId> {
        let w = self.worker_index(worker);
        let own = &self.workers[w];
        // The worker's own queues, then the others' in turn.
        self.admit_with(own, &own.stats, forward_home, reply_home, now)
            .or_else(|| self.admit_elsewhere(w, forward_home, reply_home, now))
    }

    /// [`Conntrack::admit`] with the other workers' queues, in turn after
    /// worker `w`'s, when its own hold nothing that may go. Out of line:
    /// rare, and tried in one loop with the worker's own queues, inlined,
    /// it made the insert spill registers (12 instructions more per IPv4
    /// new flow, 32 per IPv6 one; benches/RESULTS.md, session 24).
    #[cold]
    #[inline(never)]
    fn admit_elsewhere(
        &self,
        w: usize,
        forward_home: u32,
        reply_home: u32,
        now: u32,
    ) -> Option<RecordId> {
        let workers = self.workers.len();
        let stats = &self.workers[w].stats;
        (1..workers).find_map(|k| {
            let other = &self.workers[(w + k) % workers];
            self.admit_with(other, stats, forward_home, reply_home, now)
        })
    }

    /// [`Conntrack::admit`] with one worker's queues; evictions are
    /// counted in `stats`, the inserting worker's.
    fn admit_with(
        &self,
        queues: &PerWorker,
        stats: &ConntrackStats,
        forward_home: u32,
        reply_home: u32,
        now: u32,
    ) -> Option<RecordId> {
        let mut queue = queues.unassured.lock();
        // Relaxed: written only under the lock this thread holds.
        let unflushed = queues.unflushed.load(Ordering::Relaxed);
        let room = self.room(unflushed);
        let queued = |id| Queued {
            id,
            seq: self.slab.pending_seq(id),
            forward_home,
            reply_home,
        };
        let full = match room {
            Room::Far | Room::Near => {
                // Near a limit, one record at a time (a small table's
                // file holds no records taken ahead) and every insert
                // counted at once.
                let batch = if room == Room::Far {
                    self.worker_batch
                } else {
                    1
                };
                let id = self.slab.alloc_from(&queues.fresh, batch as u32)?;
                queue.push(queued(id));
                if unflushed + 1 < batch {
                    // Release: as below (a plain store on x86).
                    queues.unflushed.store(unflushed + 1, Ordering::Release);
                } else {
                    // Added before the part's count is cleared: a reader
                    // in between counts these flows twice, never none.
                    let flows = (unflushed + 1) as isize;
                    self.live.fetch_add(flows, STAT);
                    self.unreplied.fetch_add(flows, STAT);
                    // Release: a reader whose Acquire load sees this
                    // count (or a later one) sees the adds above.
                    queues.unflushed.store(0, Ordering::Release);
                }
                return Some(id);
            }
            Room::None { full } => full,
        };
        let timeouts = &self.config.timeouts;
        let expired = |l: Life| {
            l.seen()
                .saturating_add(FlowState::from_bits(l.bits()).timeout(timeouts))
                < now
        };
        let closing_flow =
            |l: Life| l.bits() & ASSURED != 0 && FlowState::from_bits(l.bits()).is_closing();
        // Locked only when it holds a flow: the lock is a locked
        // instruction, which a full table's every insert paid though
        // assured flows seldom close as fast as new ones come.
        let mut closing = (full && !queues.closing.looks_empty()).then(|| queues.closing.lock());

        // 1. The oldest closing flow, if it has expired.
        if let Some(closing) = closing.as_mut() {
            for _ in 0..EVICTION_SCAN {
                let Some(&head) = closing.front() else { break };
                let claimed = self.claim_flow(head.id, |_, l| {
                    l.seq() == head.seq && closing_flow(l) && expired(l)
                });
                if let Some((flow, life)) = claimed {
                    closing.pop_front();
                    queue.push(queued(head.id));
                    drop(queue);
                    let homes = self.homes(&flow);
                    return Some(self.take_over(
                        head.id,
                        life,
                        homes,
                        EvictionClass::Expired,
                        stats,
                    ));
                }
                match self.slab.life(head.id) {
                    // Still closing, just not expired: it stays first.
                    Some(l) if l.seq() == head.seq && closing_flow(l) => break,
                    _ => {
                        closing.pop_front();
                    }
                }
            }
        }

        // 2. The oldest flow not yet assured (under the flood guard
        // alone: not yet replied).
        let unassured = |l: Life| {
            if full {
                l.bits() & ASSURED == 0
            } else {
                l.bits() & REPLIED == 0
            }
        };
        let mut kept = 0;
        for _ in 0..EVICTION_SCAN {
            let Some(victim) = queue.pop_front() else {
                break;
            };
            if let Some(ahead) = queue.get(EVICTION_LOOKAHEAD) {
                self.slab.prefetch_for_write(ahead.id);
                self.index
                    .prefetch_home_for_write(ahead.forward_home as usize);
                self.index
                    .prefetch_home_for_write(ahead.reply_home as usize);
            }
            let claimed = self.claim_life(victim.id, |l| l.seq() == victim.seq && unassured(l));
            if let Some(life) = claimed {
                queue.push(queued(victim.id));
                drop(queue);
                let class = if expired(life) {
                    EvictionClass::Expired
                } else {
                    EvictionClass::Unassured
                };
                let homes = [victim.forward_home, victim.reply_home];
                return Some(self.take_over(victim.id, life, homes, class, stats));
            }
            // Replied but not assured yet (mid-handshake) is spared by the
            // flood guard, but stays queued for a full table.
            let spared = self
                .slab
                .life(victim.id)
                .is_some_and(|l| l.seq() == victim.seq && l.bits() & ASSURED == 0);
            if spared && kept < queue.capacity() {
                queue.push(victim);
                kept += 1;
            }
        }

        // 3. The oldest assured flow that is closing (looked at under
        // the lock even when it looked empty in step 1: a flow may have
        // begun to close since, and the new flow is refused otherwise).
        if !full {
            return None;
        }
        let mut closing = closing.unwrap_or_else(|| queues.closing.lock());
        for _ in 0..EVICTION_SCAN {
            let victim = closing.pop_front()?;
            let claimed =
                self.claim_flow(victim.id, |_, l| l.seq() == victim.seq && closing_flow(l));
            if let Some((flow, life)) = claimed {
                queue.push(queued(victim.id));
                drop(queue);
                drop(closing);
                let homes = self.homes(&flow);
                return Some(self.take_over(victim.id, life, homes, EvictionClass::Closing, stats));
            }
        }
        None
    }

    /// Gives the record of a claimed victim (its `life` when claimed) to
    /// the new flow that `admit` already queued in it: unlinks the victim
    /// from the chains of its `homes` (before the record is reused, so no
    /// slot of it can be mistaken for the new flow's) and moves the
    /// counts. The new flow is unreplied and takes the victim's place in
    /// the live count.
    ///
    /// The victim's flow is read from the claimed record as far as needed
    /// ([`Slab::claimed_snat_index`]; the whole of it only for a victim
    /// that had a reply): a flood's eviction decoded it whole and stored
    /// it to the stack, for one field (benches/RESULTS.md, session 42).
    fn take_over(
        &self,
        id: RecordId,
        life: Life,
        homes: [u32; 2],
        class: EvictionClass,
        stats: &ConntrackStats,
    ) -> RecordId {
        // The homes come from the victim's queue entry: wrong ones would
        // leave its slots behind, taken later for the record's next flow.
        debug_assert_eq!(
            Some(homes),
            self.slab.claimed(id).map(|victim| self.homes(&victim)),
            "record {id}'s queued homes"
        );
        self.unlink(id, homes);
        self.snat.released(self.slab.claimed_snat_index(id));
        stats.evicted[class as usize].inc();
        if life.bits() & REPLIED != 0 {
            self.replied_victim_gone(id);
        }
        id
    }

    /// [`Conntrack::take_over`]'s count for a claimed victim in record
    /// `id` that had a reply. Out of line: a flood's victims never had
    /// one.
    #[cold]
    #[inline(never)]
    fn replied_victim_gone(&self, id: RecordId) {
        self.unreplied.fetch_add(1, STAT);
        // A replied flow may sit in a worker's flow cache by its part's
        // count (an unreplied one by its stamp, see `FlowStamp`).
        if let Some(victim) = self.slab.claimed(id) {
            self.count_removal(&self.keys(&victim));
        }
    }

    /// Claims the flow in record `id` if `doomed` says so of its current
    /// state (see [`Slab::claim`]). Re-reads when a packet changed the
    /// flow between the check and the claim, so a flow is only removed
    /// for what it is at the moment it goes.
    fn claim_flow(
        &self,
        id: RecordId,
        doomed: impl Fn(&FlowData<A>, Life) -> bool,
    ) -> Option<(FlowData<A>, Life)> {
        for _ in 0..CLAIM_ATTEMPTS {
            let (flow, life) = self.slab.read(id)?;
            if !doomed(&flow, life) {
                return None;
            }
            if self.slab.claim(id, life) {
                return Some((flow, life));
            }
        }
        None
    }

    /// [`Conntrack::claim_flow`] for a victim chosen by its life word
    /// alone: its flow is not read (see [`Conntrack::take_over`]).
    fn claim_life(&self, id: RecordId, doomed: impl Fn(Life) -> bool) -> Option<Life> {
        for _ in 0..CLAIM_ATTEMPTS {
            let life = self.slab.life(id)?;
            if !doomed(life) {
                return None;
            }
            if self.slab.claim(id, life) {
                return Some(life);
            }
        }
        None
    }

    /// A flow's keys: forward, reply.
    fn keys(&self, flow: &FlowData<A>) -> [FlowKey<A>; 2] {
        [flow.forward_key(), flow.reply_key(&self.snat)]
    }

    /// The home buckets of a flow's keys (forward, reply), as its
    /// eviction-queue entry keeps them.
    fn homes(&self, flow: &FlowData<A>) -> [u32; 2] {
        self.keys(flow)
            .map(|key| self.index.home(self.hash(&key)) as u32)
    }

    /// Takes claimed record `id`'s keys out of the index, from the
    /// chains of their `homes` (see [`FlowIndex::unlink_reference`]).
    fn unlink(&self, id: RecordId, [forward, reply]: [u32; 2]) {
        self.index
            .unlink_reference(forward as usize, id, index::FORWARD);
        self.index
            .unlink_reference(reply as usize, id, index::REPLY);
    }

    /// Removes the flow in record `id` if `doomed` says so (see
    /// [`Conntrack::claim_flow`]) and counts it out; returns what it was.
    fn remove_flow(
        &self,
        id: RecordId,
        doomed: impl Fn(&FlowData<A>, Life) -> bool,
    ) -> Option<(FlowData<A>, Life)> {
        let (flow, life) = self.claim_flow(id, doomed)?;
        self.unlink(id, self.homes(&flow));
        self.slab.free(id);
        self.snat.released(flow.snat_index);
        self.live.fetch_sub(1, STAT);
        if life.bits() & REPLIED == 0 {
            self.unreplied.fetch_sub(1, STAT);
        } else {
            // Workers cache unreplied flows by their stamp (which this
            // removal changes), replied ones by these counts: only a
            // replied flow's removal needs to reach the counts (a SYN
            // flood's evictions do not).
            self.count_removal(&self.keys(&flow));
        }
        Some((flow, life))
    }

    /// Counts a claimed and unlinked flow's removal in the parts of both
    /// its keys (a worker caches a flow under the key its packet had).
    fn count_removal(&self, keys: &[FlowKey<A>; 2]) {
        for key in keys {
            // Release: a cache that sees the new count also sees the
            // flow gone from the index (its claim came before).
            self.removals[Self::removal_part(key.mix())].fetch_add(1, Ordering::Release);
        }
    }

    /// The part of the key space of keys of mix `mix`: its high bits
    /// (the low bits of a product see only the low bits of its factors).
    #[inline(always)]
    pub(crate) fn removal_part(mix: u32) -> usize {
        (mix >> (u32::BITS - REMOVAL_PART_BITS)) as usize
    }

    /// Removes a flow by either of its keys. Returns whether it existed.
    pub fn remove(&self, key: &FlowKey<A>) -> bool {
        let Some(found) = self.find(key, self.hash(key)) else {
            return false;
        };
        self.remove_flow(found.id, |_, l| l.seq() == found.life.seq())
            .is_some()
    }

    /// Retires the flow whose forward key is `key` if it still goes to
    /// `backend`: a worker found it headed for an endpoint the current
    /// table no longer has (see [`crate::table::CompiledTable::retires`]).
    /// Counted as retired. Returns whether it was removed.
    pub fn retire_flow(&self, key: &FlowKey<A>, backend: (A, u16)) -> bool {
        let Some(found) = self.find(key, self.hash(key)) else {
            return false;
        };
        let removed = self
            .remove_flow(found.id, |f, l| {
                l.seq() == found.life.seq() && (f.backend, f.backend_port) == backend
            })
            .is_some();
        if removed {
            self.shared_stats().retired.fetch_add(1, STAT);
        }
        removed
    }

    /// How many replied flows with a key in the part of the key space of
    /// keys whose [`FlowKey::mix`] is `mix` were ever removed: changes
    /// whenever the flow of such a key is (and when one of the other
    /// flows of its part is). Read before a lookup, a cached lookup's
    /// result is good while this stays the same.
    #[inline]
    pub fn removals(&self, mix: u32) -> u64 {
        // Acquire: pairs with the Release in `count_removal`.
        self.removals[Self::removal_part(mix)].load(Ordering::Acquire)
    }

    /// Entries in the table (two keys per flow).
    pub fn entries(&self) -> usize {
        2 * self.whole_counts().0
    }

    /// Live flows, by record (a snapshot per record).
    fn flows(&self) -> impl Iterator<Item = (RecordId, FlowData<A>, Life)> + '_ {
        (1..self.slab.high_water())
            .filter_map(|id| self.slab.read(id).map(|(flow, life)| (id, flow, life)))
    }

    /// Removes every flow idle for longer than its state's timeout at
    /// `now` (idle: no packet either way). Walks the records without any
    /// lock; each removal locks only the two index chains it changes, so
    /// workers never wait on the sweep. Returns the number of flows
    /// removed.
    pub fn sweep(&self, now: u32) -> usize {
        let timeouts = &self.config.timeouts;
        let expired = |l: Life| {
            let state = FlowState::from_bits(l.bits());
            l.seen().saturating_add(state.timeout(timeouts)) < now
        };
        let mut removed = 0;
        for (id, _, life) in self.flows() {
            if !expired(life) {
                continue;
            }
            if let Some((_, gone)) = self.remove_flow(id, |_, l| expired(l)) {
                let state = FlowState::from_bits(gone.bits());
                self.shared_stats().expired[state as usize].fetch_add(1, STAT);
                removed += 1;
            }
        }
        removed
    }

    /// Removes every flow `retire` selects (given the forward key and the
    /// backend), e.g. because its backend or Service port went away.
    /// Returns the number of flows removed.
    pub fn retire(&self, retire: impl Fn(&FlowKey<A>, (A, u16)) -> bool) -> usize {
        let removed = self.remove_selected(retire);
        self.shared_stats().retired.fetch_add(removed as u64, STAT);
        removed
    }

    /// Removes every flow `delete` selects (given the forward key and the
    /// backend), as `conntrack -D` does: `cipgw conntrack --delete`. The
    /// removal is [`Conntrack::retire`]'s (and eviction's and expiry's):
    /// both keys leave the index, the SNAT port is released and workers'
    /// flow caches forget the flow, so the flow's next packet is a new
    /// flow's first (a TCP segment other than a SYN is answered with a
    /// RST, unless Maglev picks the flow up again). Counted as deleted.
    /// Returns the number of flows removed.
    pub fn delete(&self, delete: impl Fn(&FlowKey<A>, (A, u16)) -> bool) -> usize {
        let removed = self.remove_selected(delete);
        self.shared_stats().deleted.fetch_add(removed as u64, STAT);
        removed
    }

    /// What [`Conntrack::retire`] and [`Conntrack::delete`] share: a
    /// lock-free walk of the records, each selected flow removed as
    /// eviction removes one. Counts nothing itself.
    fn remove_selected(&self, select: impl Fn(&FlowKey<A>, (A, u16)) -> bool) -> usize {
        let doomed = |f: &FlowData<A>| select(&f.forward_key(), (f.backend, f.backend_port));
        let mut removed = 0;
        for (id, flow, _) in self.flows() {
            if doomed(&flow) && self.remove_flow(id, |f, _| doomed(f)).is_some() {
                removed += 1;
            }
        }
        removed
    }

    /// [`Conntrack::retire`], except for TCP connections still open (any
    /// state but TIME_WAIT and CLOSE): those are left in place, for the
    /// caller to end at their next packet from the client, and passed to
    /// `lingering`. Returns the number of flows removed.
    pub fn retire_settled(
        &self,
        retire: impl Fn(&FlowKey<A>, (A, u16)) -> bool,
        mut lingering: impl FnMut(&FlowKey<A>, (A, u16)),
    ) -> usize {
        let opening = |l: Life| {
            let state = FlowState::from_bits(l.bits());
            state.initial_of_protocol() == FlowState::TcpSynSent && !state.is_finished()
        };
        let doomed = |f: &FlowData<A>, l: Life| {
            !opening(l) && retire(&f.forward_key(), (f.backend, f.backend_port))
        };
        let mut removed = 0;
        for (id, flow, life) in self.flows() {
            let backend = (flow.backend, flow.backend_port);
            if opening(life) && retire(&flow.forward_key(), backend) {
                lingering(&flow.forward_key(), backend);
            } else if doomed(&flow, life) && self.remove_flow(id, doomed).is_some() {
                removed += 1;
            }
        }
        self.shared_stats().retired.fetch_add(removed as u64, STAT);
        removed
    }

    /// Visits both keys of every flow (for admin views and tests).
    pub fn for_each(&self, mut visit: impl FnMut(&FlowKey<A>, FlowHit<A>)) {
        self.for_each_expiring(0, |key, hit, _| visit(key, hit));
    }

    /// [`Conntrack::for_each`], with the seconds each flow has left at
    /// `now` (the clock of [`Conntrack::sweep`]) before the sweeper may
    /// remove it: its state's timeout after it was last seen, 0 when that
    /// has passed. Read from the record as it is: nothing on the packet
    /// path keeps it (`cipgw conntrack`'s expiry, as `conntrack -L` shows
    /// it).
    pub fn for_each_expiring(&self, now: u32, mut visit: impl FnMut(&FlowKey<A>, FlowHit<A>, u32)) {
        let timeouts = &self.config.timeouts;
        for (id, flow, life) in self.flows() {
            let timeout = FlowState::from_bits(life.bits()).timeout(timeouts);
            let left = life.seen().saturating_add(timeout).saturating_sub(now);
            for direction in [Direction::Forward, Direction::Reply] {
                visit(
                    &flow.key(direction, &self.snat),
                    flow.hit(id, direction, life.bits(), &self.snat),
                    left,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
