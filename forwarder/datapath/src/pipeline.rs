//! The per-packet work: classify, track, rewrite, address, or answer.
//!
//! [`Pipeline::process`] takes one Ethernet frame in place and returns a
//! [`Verdict`]; it never allocates, never logs, takes no lock for a packet
//! of a known flow (conntrack reads are lock-free; a new flow briefly
//! locks two index buckets and its worker's own eviction queue), and
//! never panics
//! whatever the bytes are (every header goes through a checked view
//! first). The same code runs in the AF_XDP
//! workers and in the in-memory tests, benches and fuzzer, which is what
//! lets them stand for the real data path.
//!
//! A frame is parsed once ([`Frame::parse`]): the flow key, the rewrite,
//! an answer and the next hop's addresses all work from the offsets and
//! views that parse found, not from the bytes validated again. (The
//! batch's prefetch passes before it only read the flow key off the
//! common frames' bytes, [`Pipeline::prefetch`], and ask for the lines
//! the batch's lookups and inserts will read: its keys' buckets, then
//! the records they point to, which each frame's lookup then reads
//! first, or for a key no bucket holds, a new flow's, the backend it is
//! picked ahead and its reply key's bucket, [`Pipeline::prefetch_flows`].)
//!
//! Every frame gets one verdict and one count. Policy:
//! - a new connection to a VIP that cannot be served is refused, not
//!   blackholed (Kubernetes' reject semantics): TCP gets a RST, UDP an ICMP
//!   port unreachable, rate-limited per source ([`crate::reject`]). That
//!   covers a port the Service does not define, a Service without usable
//!   endpoints, a full connection table, and a TCP segment other than a
//!   SYN for a connection the gateway does not know (its endpoint was
//!   removed, or the gateway restarted): the client fails fast;
//! - `ping <ClusterIP>` is answered by the gateway when the Service has
//!   endpoints; other ICMP to a VIP is dropped and counted;
//! - VIP traffic from outside the cluster's source ranges is dropped
//!   silently (`source_not_in_cluster`): a ClusterIP is internal;
//! - sources that cannot be clients (group MAC, multicast, broadcast,
//!   0.0.0.0/8, loopback, a VIP itself) are dropped and counted;
//! - a datagram's first fragment is handled as any packet of its flow;
//!   its later fragments, which carry no ports, follow it with the same
//!   addresses ([`crate::fragments`]; IPv4's by their 16-bit
//!   identification, IPv6's by their Fragment header's 32-bit one, after
//!   any extension headers); one whose first fragment this worker did
//!   not forward is dropped and counted (`fragment`). Nothing is
//!   reassembled; IPv4 options and IPv6 extension headers are carried
//!   through unchanged;
//! - an ICMP or ICMPv6 error (destination unreachable, fragmentation
//!   needed or packet too big, time exceeded, parameter problem) about a
//!   tracked flow, from a backend, a client or a router between, is
//!   rewritten as Linux's NAT does (the quoted datagram to what its
//!   sender sent or saw, the outer addresses as the flow's packets in
//!   that direction get them, every checksum: ICMPv6's covers the IPv6
//!   pseudo-header, so the outer addresses too) and forwarded, so
//!   path-MTU discovery works through the gateway; a quote cut short
//!   inside its payload is fine, one cut before its ports is not. One
//!   about no tracked flow is dropped and counted, and so is a redirect
//!   to a VIP;
//! - 802.1Q-tagged frames are dropped and counted (`vlan_tagged`);
//! - a TTL that would reach zero is dropped and counted (`ttl_exceeded`):
//!   cipgw is a routing hop and decrements TTL like one.
//!
//! Both address families take one generic path (`track`, over
//! `PathFamily`): each has its own connection table, service table part
//! and routes, and a VIP of one family only ever goes to endpoints of
//! that family. IPv6 gets flows, rewrites (hop limit, checksums over the
//! IPv6 pseudo-header), refusals (TCP RST, ICMPv6 port unreachable),
//! echo replies for VIPs, the source checks, the same backend choice
//! (session affinity with bindings kept per family, Maglev with the
//! family's tables and flow hash, mid-flow pickup and stateless replies),
//! ICMPv6 error translation and fragment following; Neighbor Discovery,
//! ICMPv6 errors that name neither a VIP nor a backend, and other IPv6 not
//! addressed to a VIP are the kernel's. Source NAT works for both
//! families (each family's table has its own SNAT addresses); DNS is
//! answered over IPv4.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use cipgw_config::Protocol;
use ipnet::IpNet;

use crate::affinity::{Affinity, AffinityFamily, Refreshes};
use crate::checksum::{Delta, WireDelta};
use crate::conntrack::{
    self, Candidate, Conntrack, ConntrackConfig, Direction, FlowHit, FlowKey, FlowMeta, FlowStamp,
    FlowState, InsertError, NO_SLOT,
};
use crate::counters::{DropReason, ServiceCounters, WorkerCounters};
use crate::dns::DnsResponder;
use crate::family::IpFamily;
use crate::fragments::{DatagramId, FragmentRoute, FragmentTable};
use crate::huge_slice::HugePageSlice;
use crate::lb::Rng;
use crate::maglev::MaglevFamily;
use crate::reject::{self, RefusalLimiter};
use crate::route::{NetSnapshot, PortId, RouteError};
use crate::table::{Backend, CompiledTable, Miss, ReplyOwner, ServiceKey};
use crate::wire::ethernet::{self, ethertype, EthernetFrame, MacAddr};
use crate::wire::frame::{Frame, ParseError, L3, L4};
use crate::wire::icmp::Quoted;
use crate::wire::ipv4::{self, Ipv4Packet};
use crate::wire::ipv6::{self, Ipv6Packet};
use crate::wire::tcp::flags as tcp_flags;
use crate::wire::tcp::{self, TcpSegment};
use crate::wire::udp::{self, UdpDatagram};
use crate::wire::WireError;
use crate::wire::{icmp, icmpv6, ip_number};

/// What happens to a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Rewritten and addressed: send it out of `port`.
    Forward { port: PortId },
    /// The frame now holds the gateway's own answer (a refusal or an echo
    /// reply) of `len` bytes: send it out of `port`, back to the sender.
    Respond { port: PortId, len: usize },
    /// Not cipgw's: the kernel's business (what XDP_PASS does). Counted
    /// as passed, once; a worker, which cannot hand the frame back,
    /// frees it.
    Pass,
    /// Rewritten, but the next hop's MAC is not known yet: hold the frame
    /// and finish it with [`set_l2`] once the neighbour resolves.
    AwaitNeighbour { port: PortId, next_hop: IpAddr },
    /// Dropped, for the reason given.
    Drop(DropReason),
    /// Its content went elsewhere (a DNS query handed to the forwarding
    /// thread, which counts it): free the frame.
    HandedOff,
}

/// Everything a batch of packets is processed against, loaded once per
/// batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchContext<'a> {
    pub table: &'a CompiledTable,
    pub net: &'a NetSnapshot,
    /// Coarse clock, seconds.
    pub now: u32,
}

/// Policy settings of the packet path.
#[derive(Debug, Clone, Default)]
pub struct PipelineConfig {
    /// Source ranges VIP traffic is accepted from, either family (a
    /// client matches only ranges of its own); empty accepts all.
    pub cluster_cidrs: Vec<IpNet>,
}

/// What a worker keeps per address family: the family's connection
/// table (shared by all workers) and the worker's caches in front of it
/// and of the routes.
#[derive(Debug)]
struct FamilyPath<A: IpFamily> {
    conntrack: Arc<Conntrack<A>>,
    hops: NextHopCache<A>,
    flows: FlowCache<A>,
    /// Where the datagrams whose first fragment this worker forwarded
    /// went, for their later fragments.
    fragments: FragmentTable<A>,
}

impl<A: IpFamily> FamilyPath<A> {
    fn new(conntrack: Arc<Conntrack<A>>) -> Self {
        Self {
            conntrack,
            hops: NextHopCache::new(),
            flows: FlowCache::new(),
            fragments: FragmentTable::default(),
        }
    }

    /// For the first prefetch pass: asks for what the second will read
    /// for `key` (of mix `mix`). While the flow cache is in use, that is
    /// the key's cache set. While it is bypassed (a second whose traffic
    /// it did not hold: new flows, or more flows than it has room for),
    /// it is the key's conntrack bucket, a pass earlier than
    /// [`FamilyPath::peek_bucket`] would ask for it, and the key's hash
    /// goes into `hash`.
    #[inline(always)]
    fn peek_early(&self, key: &FlowKey<A>, mix: u32, hash: &mut u64) {
        if self.flows.bypassed() {
            self.ask_bucket(key, hash);
        } else {
            self.flows.prefetch(mix);
        }
    }

    /// For the prefetch passes: whether the flow cache holds `key` (of
    /// mix `mix`); when it does not (or the cache is bypassed), `key`'s
    /// conntrack hash into `hash` and its bucket asked for.
    #[inline(always)]
    fn peek_bucket(&self, key: &FlowKey<A>, mix: u32, hash: &mut u64) -> bool {
        if self.flows.find(key, mix).is_some() {
            return true;
        }
        self.ask_bucket(key, hash);
        false
    }

    /// `key`'s conntrack hash into `hash`, and its bucket asked for.
    #[inline(always)]
    fn ask_bucket(&self, key: &FlowKey<A>, hash: &mut u64) {
        *hash = self.conntrack.hash(key);
        self.conntrack.prefetch_index(*hash);
    }

    /// Caches a steady packet's hit from the table, if its flow may be
    /// served from the cache ([`FlowCache`]): a replied flow's, good while
    /// its part's removal count stays `removals` (read before the
    /// lookup); an unreplied UDP flow's, good while its record holds the
    /// stamp read now.
    #[inline(always)]
    fn cache(&mut self, key: FlowKey<A>, mix: u32, hit: &FlowHit<A>, now: u32, removals: u64)
    where
        A: PathFamily,
    {
        match hit.state {
            FlowState::TcpEstablished | FlowState::UdpReplied => {
                self.put(key, mix, hit, now, Freshness::removals(removals))
            }
            FlowState::UdpUnreplied => self.cache_unreplied(key, mix, hit, now),
            _ => {}
        }
    }

    /// Caches `key`'s hit with its rewrite, good as `freshness` says. Out
    /// of line: a flow is cached once a second, and the packet path
    /// inlines [`Rewrite::of`] once, where the packet is rewritten
    /// (benches/RESULTS.md, session 38).
    #[inline(never)]
    fn put(&mut self, key: FlowKey<A>, mix: u32, hit: &FlowHit<A>, now: u32, freshness: Freshness)
    where
        A: PathFamily,
    {
        let rewrite = Rewrite::of(&key, hit);
        self.flows.put(key, mix, *hit, rewrite, now, freshness);
    }

    /// [`FamilyPath::cache`] for an unreplied flow. Out of line: with its
    /// stamp's read inlined as well, the packet path's code grew by a
    /// tenth (1.4 KB of `Pipeline::process`).
    #[inline(never)]
    fn cache_unreplied(&mut self, key: FlowKey<A>, mix: u32, hit: &FlowHit<A>, now: u32)
    where
        A: PathFamily,
    {
        if let Some(stamp) = self.conntrack.stamp(&key, hit) {
            self.put(key, mix, hit, now, Freshness::stamp(stamp));
        }
    }
}

/// One worker's packet pipeline.
#[derive(Debug)]
pub struct Pipeline {
    v4: FamilyPath<Ipv4Addr>,
    v6: FamilyPath<Ipv6Addr>,
    affinity: Arc<Affinity>,
    counters: Arc<WorkerCounters>,
    config: PipelineConfig,
    rng: Rng,
    /// Affinity bindings this worker refreshed this second.
    refreshes: Refreshes,
    refusals: RefusalLimiter,
    /// This worker's per-endpoint counters of Service ports, when
    /// counting.
    services: Option<Arc<ServiceCounters>>,
    /// The frames of the RX batch the prefetch passes looked at, in
    /// order ([`Pipeline::prefetch`]).
    peeked: Box<[Peeked; PREFETCH_BATCH]>,
    /// How many of `peeked` are this batch's.
    peeked_len: usize,
    /// By a frame's place in the batch: what the second pass found for
    /// its flow (see [`Ahead`]).
    ahead: Box<[Ahead; PREFETCH_BATCH]>,
    /// The frames of this batch [`Pipeline::prefetch`] was called with:
    /// the next one's place.
    batch_seen: u32,
    /// The frames [`Pipeline::process`] was called with since the
    /// batch's second pass: the place of the one being processed,
    /// plus 1.
    batch_processed: u32,
    /// The batch's passes are done: the next [`Pipeline::prefetch`]
    /// starts another batch.
    passes_done: bool,
    /// This worker's index among the gateway's: its new flows go into its
    /// own eviction queues ([`Conntrack::with_workers`]).
    worker: usize,
    /// Answers DNS queries to the gateway's DNS addresses, when set.
    dns: Option<DnsResponder>,
}

/// Frames whose flows one [`Pipeline::prefetch`] round fetches at most.
pub const PREFETCH_BATCH: usize = 256;

/// A frame of the RX batch, as the prefetch passes saw it.
#[derive(Debug, Clone, Copy)]
struct Peeked {
    /// Its place in the batch: the frames before it.
    place: u32,
    key: PeekedKey,
    /// The key's [`FlowKey::mix`]: its set in the flow cache.
    mix: u32,
    /// The flow cache holds the key: its frame is left out of the
    /// conntrack prefetches.
    held: bool,
    /// The key's conntrack hash: from the first pass when its family's
    /// flow cache was bypassed, else once [`Pipeline::prefetch_flows`]
    /// has found the cache without the key.
    hash: u64,
}

impl Peeked {
    /// A frame's entry as the first pass makes it.
    #[inline(always)]
    fn new(place: u32, key: PeekedKey, mix: u32) -> Self {
        Peeked {
            place,
            key,
            mix,
            held: false,
            hash: 0,
        }
    }
}

/// What the second pass found for a frame's flow, under the flow key's
/// hash; the frame processed at that place takes it when its key has
/// that hash:
/// - for a flow the table most likely holds, the record its bucket
///   points to ([`Candidate`]), which the lookup reads before searching
///   the bucket again;
/// - for a flow the table did not hold, to a port of a Service that
///   picks its backends at random, the backend it picked (an index into
///   the port's backends), whose reply bucket it fetched: the new-flow
///   path takes this pick rather than drawing another.
#[derive(Debug, Clone, Copy)]
struct Ahead {
    hash: u64,
    backend: u32,
    candidate: Candidate,
}

/// No backend picked.
const NOT_PICKED: u32 = u32::MAX;

const NOTHING_AHEAD: Ahead = Ahead {
    hash: 0,
    backend: NOT_PICKED,
    candidate: Candidate::NONE,
};

/// A peeked frame's flow key, of either family.
#[derive(Debug, Clone, Copy)]
enum PeekedKey {
    V4(FlowKey<Ipv4Addr>),
    V6(FlowKey<Ipv6Addr>),
}

const NOT_PEEKED: Peeked = Peeked {
    place: u32::MAX,
    key: PeekedKey::V4(FlowKey {
        src: Ipv4Addr::UNSPECIFIED,
        dst: Ipv4Addr::UNSPECIFIED,
        src_port: 0,
        dst_port: 0,
        protocol: Protocol::Udp,
    }),
    mix: 0,
    held: false,
    hash: 0,
};

/// A resolved next hop for one destination: egress port and both MACs.
#[derive(Debug, Clone, Copy)]
struct CachedHop<A> {
    /// Destination address; the unspecified address marks an empty slot.
    dst: A,
    port: PortId,
    src_mac: MacAddr,
    dst_mac: MacAddr,
}

impl<A: IpFamily> CachedHop<A> {
    const EMPTY: Self = Self {
        dst: A::UNSPECIFIED,
        port: 0,
        src_mac: [0; 6],
        dst_mac: [0; 6],
    };
}

/// A small direct-mapped, per-worker cache of destination -> next hop, so
/// that an established flow's packet costs one conntrack lookup and not
/// also a route match and a neighbour lookup. Emptied whenever the network
/// snapshot changes; only resolved next hops are cached.
#[derive(Debug)]
struct NextHopCache<A> {
    snapshot: u64,
    slots: Box<[CachedHop<A>; NEXT_HOP_SLOTS]>,
}

/// Slots of a [`NextHopCache`]: 2,048 (40 KiB for IPv4, 64 KiB for IPv6
/// per worker). Replies go to as many destinations as there are clients;
/// with 256 slots, the 250 clients of the `reply` bench missed the cache
/// on about one packet in two (a route match and a neighbour lookup,
/// about 40 instructions, each time).
const NEXT_HOP_BITS: u32 = 11;
const NEXT_HOP_SLOTS: usize = 1 << NEXT_HOP_BITS;

impl<A: IpFamily> NextHopCache<A> {
    fn new() -> Self {
        Self {
            snapshot: 0,
            slots: Box::new([CachedHop::EMPTY; NEXT_HOP_SLOTS]),
        }
    }

    #[inline(always)]
    fn slot(dst: u32) -> usize {
        // Fibonacci hashing: the top bits of a multiplicative hash.
        (dst.wrapping_mul(0x9e37_79b9) >> (32 - NEXT_HOP_BITS)) as usize
    }

    /// The next hop towards `dst`, in its slot. Given by reference, not
    /// copied out: a copy went through the stack in one 16-byte store
    /// that the MACs' and port's loads then read back, and where the
    /// caller's frame put that store across two cache lines, those
    /// loads waited for it to reach the cache (a tenth of a cached
    /// packet's samples in one build; benches/RESULTS.md, session 39).
    #[inline(always)]
    fn lookup(&mut self, net: &NetSnapshot, dst: A) -> Result<&CachedHop<A>, Verdict> {
        let slot = Self::slot(dst.fold());
        let cached =
            self.snapshot == net.id() && self.slots[slot].dst == dst && !dst.is_unspecified_addr();
        if cached {
            return Ok(&self.slots[slot]);
        }
        self.resolve(net, dst)
    }

    /// A destination the cache does not hold (or a new snapshot, which
    /// empties it): resolved from the snapshot, and cached once its
    /// neighbour is known.
    #[cold]
    #[inline(never)]
    fn resolve(&mut self, net: &NetSnapshot, dst: A) -> Result<&CachedHop<A>, Verdict> {
        if self.snapshot != net.id() {
            self.slots.fill(CachedHop::EMPTY);
            self.snapshot = net.id();
        }
        let slot = Self::slot(dst.fold());
        let next_hop = net.next_hop_of(dst).map_err(|e| {
            Verdict::Drop(match e {
                RouteError::NoRoute => DropReason::NoRoute,
                RouteError::NotAttached => DropReason::RouteNotAttached,
            })
        })?;
        let port = net
            .port(next_hop.port)
            .ok_or(Verdict::Drop(DropReason::RouteNotAttached))?;
        let mac = net
            .neighbour_of(next_hop.port, next_hop.ip)
            .ok_or(Verdict::AwaitNeighbour {
                port: next_hop.port,
                next_hop: next_hop.ip.into(),
            })?;
        let hop = CachedHop {
            dst,
            port: next_hop.port,
            src_mac: port.mac,
            dst_mac: mac,
        };
        self.slots[slot] = hop;
        Ok(&self.slots[slot])
    }
}

/// A per-worker, direct-mapped cache of established flows in front of the
/// shared conntrack table (Katran keeps per-CPU LRU caches in front of its
/// global table for the same reason): a packet of an established flow
/// whose state cannot change (no SYN, FIN or RST) costs a compare instead
/// of a hash, a bucket probe and a record read, and is rewritten as the
/// entry says, made once ([`CachedFlow`]). The shared entry is still visited
/// once per second per flow and worker, which keeps its last-seen time
/// (and session affinity) fresh for the sweeper. A cached hit must never
/// outlive its flow (a retired or expired flow is never served from
/// here); each entry says what keeps it good ([`Freshness`]):
/// - a replied flow's, that no replied flow with a key in its key's part
///   of the key space has left the table since (conntrack counts removals
///   in 1,024 parts, by the key's [`FlowKey::mix`] as the cache picks
///   sets): no shared line is read, connections ending elsewhere leave
///   the rest of the cache alone, and a SYN flood's evictions of
///   unreplied flows stale nothing;
/// - an unreplied UDP flow's (a one-way stream: telemetry, logs, the
///   veth benchmark's udp-est), that its record still holds it in the
///   same state ([`Conntrack::still_holds`], one load of a line the
///   lookup read): evictions of unreplied flows come by the thousand in
///   a flood, so counting them would stale the replied flows' entries,
///   and a reply changes the state, so that the next forward packet goes
///   to the table and assures the flow, as Linux does.
///
/// A cache that does not hold nearly all the flows its packets belong
/// to costs more than it saves: each frame it does not hold pays for its
/// set's lines (fetched, read and written), and the cache's 448 KiB
/// crowd the table's busy lines out of the core's caches, so that the
/// table serves the busy flows nearly as fast. Each second, once the
/// prefetch passes have asked it about [`FlowCache::JUDGED_AFTER`]
/// frames, a cache that held fewer than [`FlowCache::KEPT_QUARTERS`]
/// quarters of them is left alone for the rest of the second
/// ([`CacheUse`]). Its entries do not outlive the second anyway
/// (`touched`). A pipeline run frame by frame, without the passes, is
/// never judged and always uses its cache. (Open vSwitch answers the
/// same cost in its exact-match cache by inserting with a probability,
/// `emc-insert-inv-prob`; here that kept no more busy flows:
/// benches/RESULTS.md, session 26.)
#[derive(Debug)]
struct FlowCache<A> {
    /// The entries; empty before the first is cached, and while the
    /// cache is bypassed, so that every use finds no set without a check
    /// of its own.
    slots: HugePageSlice<CachedFlow<A>>,
    /// The entries while the cache is bypassed.
    parked: HugePageSlice<CachedFlow<A>>,
    /// How the cache is used this second.
    usage: CacheUse,
    /// The second `usage` is about.
    second: u32,
    /// Frames the prefetch passes asked the cache about this second,
    /// and how many of their flows it held.
    asked: u32,
    held: u32,
}

/// How a worker uses its flow cache in a second ([`FlowCache::judge`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheUse {
    /// Used, and counted: the second's first frames.
    Judging,
    /// Used for the rest of the second: it holds enough of the flows.
    Kept,
    /// Left alone for the rest of the second: not asked for, read or
    /// written.
    Bypassed,
}

/// A flow's entry in a [`FlowCache`]: the rewrite the flow's hit gives
/// its packets, made once when it was cached (addresses, ports and
/// checksum deltas are the same for each packet), and the hit's fields
/// the packet path reads besides ([`CachedFlow::hit_into`]). The
/// rewrite holds the hit's addresses and ports, so the entry is no
/// larger than the hit alone was (56 bytes for IPv4, 104 for IPv6).
#[derive(Debug, Clone, Copy)]
struct CachedFlow<A> {
    key: FlowKey<A>,
    rewrite: Rewrite<A>,
    record: u32,
    slot: u32,
    direction: Direction,
    state: FlowState,
    affinity: bool,
    /// The second the shared entry was last visited.
    touched: u32,
    /// What keeps the entry good.
    freshness: Freshness,
}

/// What keeps a cached hit good, in one word: a part's removal count
/// ([`Conntrack::removals`]) that must not have moved, or, with
/// [`Freshness::STAMPED`] set, the [`FlowStamp`] its record must still
/// hold. A removal count never reaches 2^63.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Freshness(u64);

impl Freshness {
    const STAMPED: u64 = 1 << 63;

    /// Good while the part's removal count stays `removals`.
    #[inline(always)]
    fn removals(removals: u64) -> Self {
        Self(removals & !Self::STAMPED)
    }

    /// Good while the flow's record holds `stamp`.
    #[inline(always)]
    fn stamp(stamp: FlowStamp) -> Self {
        Self(Self::STAMPED | u64::from(stamp.get()))
    }

    /// Whether the entry of `record` is still good, with its part's
    /// removal count now `removals`. Inlined whole: with the stamp's
    /// check as a call, every cached packet's path took 15 instructions
    /// more (spills around it), stamped or not.
    #[inline(always)]
    fn holds<A: IpFamily>(self, removals: u64, record: u32, conntrack: &Conntrack<A>) -> bool {
        self.0 == removals
            || (self.0 & Self::STAMPED != 0
                && FlowStamp::from_bits(self.0 as u32)
                    .is_some_and(|stamp| conntrack.still_holds(record, stamp)))
    }
}

impl<A: IpFamily> CachedFlow<A> {
    /// The entry of `key`'s `hit`, whose packets get `rewrite`.
    #[inline(always)]
    fn new(
        key: FlowKey<A>,
        hit: &FlowHit<A>,
        rewrite: Rewrite<A>,
        touched: u32,
        freshness: Freshness,
    ) -> Self {
        Self {
            key,
            rewrite,
            record: hit.record,
            slot: hit.slot,
            direction: hit.direction,
            state: hit.state,
            affinity: hit.affinity,
            touched,
            freshness,
        }
    }

    /// Writes the fields of the hit the entry was made from that the
    /// packet path reads besides the rewrite into `hit`: direction,
    /// state, affinity, counter slot and record. Its addresses and ports
    /// (`nat_ip`, `nat_port`, `snat`) are left as they were: a packet
    /// served from the cache takes them from the rewrite.
    #[inline(always)]
    fn hit_into(&self, hit: &mut FlowHit<A>) {
        hit.direction = self.direction;
        hit.state = self.state;
        hit.affinity = self.affinity;
        hit.slot = self.slot;
        hit.record = self.record;
    }
}

impl<A: IpFamily> FlowCache<A> {
    /// Entries per worker and family: 448 KiB for IPv4 (56 bytes each),
    /// 832 KiB for IPv6 (104), taken when the worker starts
    /// ([`Pipeline::take_memory`]; elsewhere at the family's first
    /// established flow), each on a 2 MiB huge page of its own where the
    /// kernel has transparent huge pages ([`HugePageSlice`]: on 4 KiB
    /// pages, the TLB misses of its random reads took 13-22% of the
    /// worker's own time per packet on veth, benches/RESULTS.md, session
    /// 34). With 4,096, a thousand busy flows already lost
    /// about one packet in twenty to sets of three or more keys.
    const SLOTS: usize = 8192;
    /// Frames a second's judgement waits for: twice the entries, so
    /// that a cache refilling after a bypassed second is judged on more
    /// than its refill.
    const JUDGED_AFTER: u32 = 2 * Self::SLOTS as u32;
    /// A cache holding fewer than this many quarters of the frames'
    /// flows is bypassed. Where it holds every flow (1,024 flows) the
    /// cache saves 9-20 ns a packet. Bypassing was faster wherever it
    /// held less: 0%, 33%, 53% and 60% of the frames' flows (uniform
    /// rates over a million, 24,576 and 12,288 flows, Zipf 1.0 over a
    /// million) by 8-15%; at 84% (Zipf 1.2) both were even, and at 98.5%
    /// (Zipf 1.5) the cache was faster by 15-25% (benches/RESULTS.md,
    /// session 26).
    const KEPT_QUARTERS: u64 = 3;

    fn new() -> Self {
        Self {
            slots: HugePageSlice::default(),
            parked: HugePageSlice::default(),
            usage: CacheUse::Judging,
            second: 0,
            asked: 0,
            held: 0,
        }
    }

    /// Takes the entries' memory now, if the cache has none yet (see
    /// [`Pipeline::take_memory`]): placeholders that no lookup serves,
    /// visited in no second a worker reaches.
    fn take_memory(&mut self) {
        if !self.slots.is_empty() || !self.parked.is_empty() {
            return;
        }
        let key = FlowKey {
            src: A::UNSPECIFIED,
            dst: A::UNSPECIFIED,
            src_port: 0,
            dst_port: 0,
            protocol: Protocol::Udp,
        };
        let unset = FlowHit::UNSET;
        let rewrite = Rewrite {
            src: A::UNSPECIFIED,
            dst: A::UNSPECIFIED,
            ports: [0; 4],
            header: WireDelta::default(),
            transport: WireDelta::default(),
        };
        let never = CachedFlow::new(key, &unset, rewrite, u32::MAX, Freshness::removals(0));
        self.slots = HugePageSlice::filled(never, Self::SLOTS);
    }

    /// Whether the cache is bypassed for the rest of the second: neither
    /// read nor written, so nothing need be asked for or kept for it.
    #[inline(always)]
    fn bypassed(&self) -> bool {
        self.usage == CacheUse::Bypassed
    }

    /// Judges the cache at the start of a batch's second pass, in second
    /// `now`: a new second uses it again and counts afresh; a judging
    /// second that has counted enough frames decides whether it is kept
    /// or bypassed for the rest of the second. Says whether it was just
    /// bypassed.
    #[inline]
    fn judge(&mut self, now: u32) -> bool {
        if now != self.second {
            self.second = now;
            if self.usage == CacheUse::Bypassed {
                self.slots = std::mem::take(&mut self.parked);
            }
            self.usage = CacheUse::Judging;
            self.asked = 0;
            self.held = 0;
            return false;
        }
        if self.usage != CacheUse::Judging || self.asked < Self::JUDGED_AFTER {
            return false;
        }
        let bypassed = u64::from(self.held) * 4 < u64::from(self.asked) * Self::KEPT_QUARTERS;
        if bypassed {
            self.usage = CacheUse::Bypassed;
            self.parked = std::mem::take(&mut self.slots);
        } else {
            self.usage = CacheUse::Kept;
        }
        bypassed
    }

    /// Counts a batch's frames the cache was asked about, and how many
    /// of their flows it held, for [`FlowCache::judge`].
    #[inline(always)]
    fn count(&mut self, asked: u32, held: u32) {
        self.asked = self.asked.wrapping_add(asked);
        self.held = self.held.wrapping_add(held);
    }

    /// The first of the two slots (ways) a key whose [`FlowKey::mix`] is
    /// `mix` may occupy.
    #[inline(always)]
    fn set(mix: u32) -> usize {
        ((mix >> 19) & !1) as usize
    }

    /// The cached entry of `key` (of mix `mix`), fresh or not.
    #[inline(always)]
    fn find(&self, key: &FlowKey<A>, mix: u32) -> Option<&CachedFlow<A>> {
        let set = Self::set(mix);
        match self.slots.get(set..set + 2)? {
            [first, _] if first.key == *key => Some(first),
            [_, second] if second.key == *key => Some(second),
            _ => None,
        }
    }

    /// Asks for the lines of the set of a key whose [`FlowKey::mix`] is
    /// `mix` (where each way's key starts), for [`FlowCache::find`].
    #[inline(always)]
    fn prefetch(&self, mix: u32) {
        let set = Self::set(mix);
        if let Some([first, second]) = self.slots.get(set..set + 2) {
            conntrack::prefetch_line(first as *const CachedFlow<A> as usize);
            conntrack::prefetch_line(second as *const CachedFlow<A> as usize);
        }
    }

    /// Whether the cache holds `key`, fresh or not: a flow the prefetch
    /// pass leaves alone, as its packet will most likely be served from
    /// here.
    #[cfg(test)]
    fn holds(&self, key: &FlowKey<A>) -> bool {
        self.find(key, key.mix()).is_some()
    }

    /// Writes the cached hit for `key` (of mix `mix`) into `hit` if it is
    /// fresh this second and still good ([`Freshness`]) with its part's
    /// removal count now `removals`, and gives its rewrite; `None` (and
    /// `hit` left alone) when not.
    #[inline]
    fn get_into(
        &self,
        key: &FlowKey<A>,
        mix: u32,
        now: u32,
        removals: u64,
        conntrack: &Conntrack<A>,
        hit: &mut FlowHit<A>,
    ) -> Option<Rewrite<A>> {
        let cached = self.find(key, mix)?;
        let good =
            cached.touched == now && cached.freshness.holds(removals, cached.record, conntrack);
        if !good {
            return None;
        }
        cached.hit_into(hit);
        Some(cached.rewrite)
    }

    /// What [`FlowCache::get_into`] would serve for `key`: the hit's
    /// fields it writes (over [`FlowHit::UNSET`]) and the rewrite.
    #[cfg(test)]
    fn get(
        &self,
        key: &FlowKey<A>,
        mix: u32,
        now: u32,
        removals: u64,
        conntrack: &Conntrack<A>,
    ) -> Option<(FlowHit<A>, Rewrite<A>)> {
        let mut hit = FlowHit::UNSET;
        let rewrite = self.get_into(key, mix, now, removals, conntrack, &mut hit)?;
        Some((hit, rewrite))
    }

    /// Caches `key`'s hit in the first way of its set; a fresh entry of
    /// another key there moves to the second way (two-way sets, so that
    /// two busy flows whose keys share a set do not evict each other on
    /// every packet; the older of two evicted for a third).
    #[inline]
    fn put(
        &mut self,
        key: FlowKey<A>,
        mix: u32,
        hit: FlowHit<A>,
        rewrite: Rewrite<A>,
        now: u32,
        freshness: Freshness,
    ) {
        let entry = CachedFlow::new(key, &hit, rewrite, now, freshness);
        if self.slots.is_empty() {
            if self.usage == CacheUse::Bypassed {
                return;
            }
            // Taken at the first established flow, unless the worker took
            // it at its start.
            self.take_memory();
        }
        let set = Self::set(mix);
        let Some([first, second]) = self.slots.get_mut(set..set + 2) else {
            return;
        };
        // The first way holds the set's newest entry: a new key pushes a
        // fresh first entry to the second way, over the older one there.
        // (A fresh-looking entry that is no longer good moves on: it is
        // never served, as `get_into` checks it.)
        if first.key != key && first.touched == now {
            *second = *first;
        }
        *first = entry;
    }
}

/// A frame as [`Pipeline::process`] holds it: parsed, over the worker's
/// buffer (frame and room for an answer).
type FrameMut<'a> = Frame<&'a mut [u8]>;

/// A TCP or UDP frame's flow: what conntrack is asked about.
#[derive(Debug, Clone, Copy)]
struct Flow<A = Ipv4Addr> {
    key: FlowKey<A>,
    ttl: u8,
    /// TCP control bits (0 for UDP).
    tcp_flags: u8,
}

/// What the headers say about an IPv4 frame.
enum Classified {
    /// TCP or UDP: track and forward.
    Flow(Flow),
    /// An echo request to a VIP.
    EchoToVip { src: Ipv4Addr, dst: Ipv4Addr },
    /// An ICMP error, which quotes the datagram it is about.
    IcmpError,
    /// A fragment after the first, of any protocol.
    LaterFragment { protocol: u8 },
}

/// Why a packet that no flow knows was not given one.
enum Denied {
    /// Its verdict, final.
    Verdict(Verdict),
    /// Refused for this reason: answered if the limits allow.
    Refuse(DropReason),
}

impl Pipeline {
    pub fn new(conntrack: Arc<Conntrack>, counters: Arc<WorkerCounters>, rng: Rng) -> Self {
        // A small IPv6 table of its own until `with_conntrack6` gives the
        // one the workers share.
        let conntrack6 = Arc::new(Conntrack::new(ConntrackConfig {
            max_flows: 1024,
            ..ConntrackConfig::default()
        }));
        Self {
            v4: FamilyPath::new(conntrack),
            v6: FamilyPath::new(conntrack6),
            affinity: Arc::new(Affinity::default()),
            counters,
            config: PipelineConfig::default(),
            rng,
            refreshes: Refreshes::default(),
            refusals: RefusalLimiter::default(),
            services: None,
            peeked: Box::new([NOT_PEEKED; PREFETCH_BATCH]),
            peeked_len: 0,
            ahead: Box::new([NOTHING_AHEAD; PREFETCH_BATCH]),
            batch_seen: 0,
            batch_processed: 0,
            passes_done: false,
            worker: 0,
            dns: None,
        }
    }

    /// Pass zero over an RX batch, before [`Pipeline::prefetch`] reads
    /// any frame: asks for the line of each frame's headers, as far as
    /// the prefetch pass reads them. The kernel has just copied the
    /// frames in; asked for together, their lines arrive together,
    /// instead of the prefetch pass waiting for them one frame after
    /// another.
    #[inline]
    pub fn prefetch_headers(frame: &[u8]) {
        // At most two lines: the first and the last byte's.
        let head = &frame[..frame.len().min(PEEKED_LEN)];
        if let (Some(first), Some(last)) = (head.first(), head.last()) {
            conntrack::prefetch_line(first as *const u8 as usize);
            conntrack::prefetch_line(last as *const u8 as usize);
        }
    }

    /// First pass over an RX batch, before any of its frames is
    /// processed: asks for the worker's flow-cache set of each frame's
    /// flow (or, while the family's cache is bypassed, hashes the flow's
    /// key and asks for its conntrack bucket at once: 8-14% off a packet
    /// at a million flows, benches/RESULTS.md, session 30). Then
    /// [`Pipeline::prefetch_flows`] asks for the conntrack buckets of
    /// the other flows the cache does not hold, and for the flow
    /// records those buckets point to, so that the lookups of the batch
    /// find their lines in cache instead of waiting for memory one packet
    /// after another. (The cache's set was read here once: a demand
    /// load, and for a new flow a miss per frame, one after another,
    /// once the cache was in use: benches/RESULTS.md, session 20.)
    ///
    /// The flow's key is read straight off the frame's bytes
    /// (`peek_key4`, `peek_key6`) for the frames a gateway mostly
    /// carries (TCP or UDP over IPv4 without options or IPv6 without
    /// extension headers, not fragments); anything else is not
    /// prefetched, and [`Pipeline::process`] parses every frame in full
    /// anyway. Nothing is counted. Frames beyond [`PREFETCH_BATCH`] in one
    /// round are not prefetched, nor flows the worker's flow cache holds
    /// (their packets are served from it, without the table).
    ///
    /// Every frame of the batch is passed, in the order
    /// [`Pipeline::process`] is then called with them.
    #[inline]
    pub fn prefetch(&mut self, frame: &[u8]) {
        if self.passes_done {
            self.peeked_len = 0;
            self.batch_seen = 0;
            self.passes_done = false;
        }
        let place = self.batch_seen;
        self.batch_seen = place.wrapping_add(1);
        if let Some(ahead) = self.ahead.get_mut(place as usize) {
            *ahead = NOTHING_AHEAD;
        }
        let Some(slot) = self.peeked.get_mut(self.peeked_len) else {
            return;
        };
        // Each family writes its entry in its own branch: with one write
        // after both, the compiler moved an IPv4 key into the IPv6 key's
        // registers first, piece by piece, and spilled its protocol: 16
        // instructions more per frame (benches/RESULTS.md, session 29).
        if let Some(key) = peek_key4(frame) {
            let mix = key.mix();
            *slot = Peeked::new(place, PeekedKey::V4(key), mix);
            self.v4.peek_early(&key, mix, &mut slot.hash);
        } else if let Some(key) = peek_key6(frame) {
            let mix = key.mix();
            *slot = Peeked::new(place, PeekedKey::V6(key), mix);
            self.v6.peek_early(&key, mix, &mut slot.hash);
        } else {
            return;
        }
        self.peeked_len += 1;
    }

    /// The start of [`Pipeline::prefetch_flows`]: marks the frames whose
    /// flows the worker's cache holds (their cache sets, asked for in
    /// [`Pipeline::prefetch`], have had that pass to arrive) to be left
    /// out, and hashes the others and asks for their conntrack buckets.
    /// `early` says, for IPv4 and IPv6, whether the family's cache was
    /// bypassed in the first pass: its frames were hashed there.
    #[inline]
    fn prefetch_buckets(&mut self, early: (bool, bool)) {
        // One loop per case, so that the common one (both caches in use)
        // tests nothing more per frame (a test per frame cost a batched
        // packet 6 instructions).
        match early {
            (false, false) => self.peek_buckets::<false, false>(),
            (true, false) => self.peek_buckets::<true, false>(),
            (false, true) => self.peek_buckets::<false, true>(),
            (true, true) => {}
        }
    }

    /// [`Pipeline::prefetch_buckets`]' loop; a family whose `EARLY_*` is
    /// set was hashed in the first pass and is left alone.
    #[inline(always)]
    fn peek_buckets<const EARLY_V4: bool, const EARLY_V6: bool>(&mut self) {
        let (v4, v6) = (&self.v4, &self.v6);
        // What each family's cache held, for `FlowCache::judge`: counted
        // here, added once per batch.
        let (mut held4, mut asked6, mut held6, mut hashed) = (0u32, 0u32, 0u32, 0u32);
        for peeked in &mut self.peeked[..self.peeked_len] {
            peeked.held = match &peeked.key {
                PeekedKey::V4(key) if !EARLY_V4 => {
                    let held = v4.peek_bucket(key, peeked.mix, &mut peeked.hash);
                    held4 += u32::from(held);
                    held
                }
                PeekedKey::V6(key) if !EARLY_V6 => {
                    let held = v6.peek_bucket(key, peeked.mix, &mut peeked.hash);
                    asked6 += 1;
                    held6 += u32::from(held);
                    held
                }
                // Hashed, and its bucket asked for, by the first pass.
                _ => {
                    hashed += 1;
                    false
                }
            };
        }
        self.v4
            .flows
            .count(self.peeked_len as u32 - asked6 - hashed, held4);
        self.v6.flows.count(asked6, held6);
    }

    /// Second pass (see [`Pipeline::prefetch`]), with the context the
    /// batch will be processed in: asks for the records of the flows
    /// whose buckets hold their keys' signatures. A key whose bucket
    /// holds none is a new flow's: if it is addressed to a Service port
    /// that picks backends at random, its backend is picked now and the
    /// bucket its reply key goes in is asked for
    /// ([`Conntrack::prefetch_reply`]), so that its insert does not wait
    /// for a line it could not ask for before (the reply key depends on
    /// the backend). Maglev's pick depends on the key alone: it is not
    /// kept but made again, the same, when the flow is processed.
    #[inline]
    pub fn prefetch_flows(&mut self, ctx: &BatchContext<'_>) {
        // Read before the judgement, which may end a bypass.
        let early = (self.v4.flows.bypassed(), self.v6.flows.bypassed());
        let bypassed =
            u64::from(self.v4.flows.judge(ctx.now)) + u64::from(self.v6.flows.judge(ctx.now));
        if bypassed != 0 {
            self.counters.flow_cache_bypasses.add(bypassed);
        }
        self.prefetch_buckets(early);
        for i in 0..self.peeked_len {
            // Checked before the entry is copied out: most are held on a
            // gateway of established flows.
            if self.peeked[i].held {
                continue;
            }
            let peeked = self.peeked[i];
            let found = match peeked.key {
                PeekedKey::V4(key) => self.prefetch_flow(&key, peeked.hash, ctx),
                PeekedKey::V6(key) => self.prefetch_flow(&key, peeked.hash, ctx),
            };
            if let Some(ahead) = self.ahead.get_mut(peeked.place as usize) {
                *ahead = found;
            }
        }
        self.passes_done = true;
        // The batch's frames come next, the first of them first.
        self.batch_processed = 0;
    }

    /// One peeked frame's second pass: asks for the record its bucket
    /// points to and returns it as the lookup's candidate; for a key the
    /// bucket does not hold, picks its backend (a Service port's without
    /// session affinity) and asks for its reply bucket, and returns the
    /// pick when the port's choice is random (see
    /// [`Pipeline::prefetch_flows`]).
    #[inline]
    fn prefetch_flow<A: PathFamily>(
        &mut self,
        key: &FlowKey<A>,
        hash: u64,
        ctx: &BatchContext<'_>,
    ) -> Ahead {
        let candidate = A::path(self).conntrack.prefetch_flow(hash);
        let found = Ahead {
            hash,
            backend: NOT_PICKED,
            candidate,
        };
        if candidate.is_some() {
            return found;
        }
        let service = ServiceKey::of_flow(key);
        let Ok(entry) = ctx.table.family::<A>().lookup(&service) else {
            return found;
        };
        if entry.affinity.is_some() {
            return found;
        }
        let (index, kept) = match &entry.maglev {
            Some(maglev) => (maglev.pick(key), false),
            None => (self.rng.below(entry.backends.len()), true),
        };
        let Some(backend) = entry.backends.get(index) else {
            return found;
        };
        A::path(self)
            .conntrack
            .prefetch_reply(key, hash, (backend.ip, backend.port));
        Ahead {
            backend: if kept { index as u32 } else { NOT_PICKED },
            ..found
        }
    }

    /// The backend [`Pipeline::prefetch_flow`] picked for the frame being
    /// processed (frames are processed in the order they were peeked),
    /// if it did and that frame's key hashed to `hash`, the key's being
    /// processed. (A frame processed out of that order takes no pick of
    /// another flow's, short of a 64-bit hash collision; a stale pick
    /// is still an index of the port's backends, checked by the caller:
    /// a random pick either way.)
    #[inline]
    fn picked_ahead(&self, hash: u64) -> Option<usize> {
        let ahead = self.found_ahead(hash)?;
        (ahead.backend != NOT_PICKED).then_some(ahead.backend as usize)
    }

    /// The record the second pass found in the bucket of the frame being
    /// processed, under the same conditions as [`Pipeline::picked_ahead`]
    /// (a stale one is checked by the lookup, as any candidate is).
    #[inline]
    fn candidate_ahead(&self, hash: u64) -> Candidate {
        self.found_ahead(hash)
            .map_or(Candidate::NONE, |ahead| ahead.candidate)
    }

    /// What the second pass found for the frame being processed, if its
    /// key hashed to `hash`.
    #[inline(always)]
    fn found_ahead(&self, hash: u64) -> Option<&Ahead> {
        let place = self.batch_processed.wrapping_sub(1) as usize;
        self.ahead.get(place).filter(|ahead| ahead.hash == hash)
    }

    /// Counts packets, bytes and flows into `counters`, at the slot the
    /// table gives each (Service port, endpoint).
    pub fn with_service_counters(mut self, counters: Arc<ServiceCounters>) -> Self {
        self.services = Some(counters);
        self
    }

    /// Tracks IPv6 flows in `conntrack`, the IPv6 table all workers share.
    pub fn with_conntrack6(mut self, conntrack: Arc<Conntrack<Ipv6Addr>>) -> Self {
        self.v6 = FamilyPath::new(conntrack);
        self
    }

    /// Makes this the pipeline of worker `index` (0 by default): its new
    /// flows go into that worker's eviction queues of the shared tables
    /// ([`Conntrack::with_workers`]).
    pub fn with_worker(mut self, index: usize) -> Self {
        self.worker = index;
        self
    }

    /// Shares session-affinity bindings with the other workers.
    pub fn with_affinity(mut self, affinity: Arc<Affinity>) -> Self {
        self.affinity = affinity;
        self
    }

    pub fn with_config(mut self, config: PipelineConfig) -> Self {
        self.config = config;
        self
    }

    /// Answers UDP DNS queries to the responder's addresses in place
    /// (before conntrack: a query is no flow).
    pub fn with_dns(mut self, dns: DnsResponder) -> Self {
        self.dns = Some(dns);
        self
    }

    /// Replaces the refusal rate limits.
    pub fn with_refusal_limits(mut self, limiter: RefusalLimiter) -> Self {
        self.refusals = limiter;
        self
    }

    pub fn counters(&self) -> &Arc<WorkerCounters> {
        &self.counters
    }

    /// Takes the memory of the worker's own tables now, instead of at
    /// the first packet each serves, which would wait for it: the flow
    /// caches (one per family, a 2 MiB huge page each where the kernel
    /// has transparent huge pages, cleared or even compacted for on
    /// first touch), the fragment routes and the affinity refreshes. A
    /// worker calls this on its own thread, pinned, before its first
    /// batch; pipelines that never call it (tests, benches) take each
    /// table at its first use.
    pub fn take_memory(&mut self) {
        self.v4.flows.take_memory();
        self.v6.flows.take_memory();
        self.v4.fragments.take_memory();
        self.v6.fragments.take_memory();
        self.refreshes.take_memory();
    }

    /// Processes one frame in place and counts the outcome.
    ///
    /// `buf[..len]` is the frame; the rest of `buf` is room an answer may
    /// grow into ([`Verdict::Respond`] gives its length). `ingress` is the
    /// port the frame arrived on.
    ///
    /// Never inlined: the worker calls it once a frame, and when the
    /// compiler inlined it into the worker's per-frame closure (after
    /// changes elsewhere in the crate shrank it), the worker's loop took
    /// 20 ns a frame longer on the veth benchmark's udp-new
    /// (benches/RESULTS.md, session 42).
    #[inline(never)]
    pub fn process(
        &mut self,
        buf: &mut [u8],
        len: usize,
        ingress: PortId,
        ctx: &BatchContext<'_>,
    ) -> Verdict {
        let len = len.min(buf.len());
        self.batch_processed = self.batch_processed.wrapping_add(1);
        let verdict = self.classify_and_rewrite(buf, len, ingress, ctx);
        match verdict {
            Verdict::Drop(reason) => self.counters.count_drop(reason),
            Verdict::Pass => self.counters.passed.inc(),
            Verdict::Forward { .. }
            | Verdict::AwaitNeighbour { .. }
            | Verdict::Respond { .. }
            | Verdict::HandedOff => {}
        }
        verdict
    }

    /// [`Pipeline::process`]'s body, apart from the counting: inlined
    /// into its one caller (left to itself, the compiler inlines it in
    /// some builds and not others, and a call's spills cost the
    /// established path about 7 instructions).
    #[inline(always)]
    fn classify_and_rewrite(
        &mut self,
        buf: &mut [u8],
        len: usize,
        ingress: PortId,
        ctx: &BatchContext<'_>,
    ) -> Verdict {
        // Calls that are not inlined are given `frame.reborrow()` (or
        // what they read), never `frame` or `&frame`: one such call given
        // the frame itself made every packet store all of its fields to
        // the stack, 22 instructions (benches/RESULTS.md, session 30).
        let mut frame = match Frame::parse(buf, len) {
            Ok(frame) => frame,
            Err(e) => return parse_verdict(e),
        };
        if let Some(dns) = self.dns.as_mut() {
            if dns.is_query(&frame) {
                return dns.answer_frame(frame.reborrow(), ingress, ctx);
            }
        }
        match frame.l3() {
            L3::Ipv4 { .. } => self.ipv4(frame, ingress, ctx),
            L3::Ipv6 { .. } => self.ipv6(frame, ingress, ctx),
        }
    }

    /// An IPv4 frame: a flow, or ICMP, or a later fragment.
    #[inline]
    fn ipv4(
        &mut self,
        mut frame: FrameMut<'_>,
        ingress: PortId,
        ctx: &BatchContext<'_>,
    ) -> Verdict {
        let flow = match classify(&frame, ctx.table) {
            Ok(Classified::Flow(flow)) => flow,
            Ok(Classified::EchoToVip { src, dst }) => {
                return self.echo_to_vip(frame.reborrow(), ingress, src, dst, ctx)
            }
            Ok(Classified::IcmpError) => return self.icmp_error::<Ipv4Addr>(frame.reborrow(), ctx),
            Ok(Classified::LaterFragment { protocol }) => {
                return self.later_fragment::<Ipv4Addr>(frame.reborrow(), protocol, ctx)
            }
            Err(v) => return v,
        };
        self.track(frame, flow, ingress, ctx)
    }

    /// An IPv6 frame: a flow, an ICMPv6 error, a later fragment, or an
    /// echo request to a VIP. Neighbor Discovery, ICMPv6 errors the
    /// gateway does not translate and whatever is not addressed to a VIP
    /// are the kernel's.
    #[inline]
    fn ipv6(
        &mut self,
        mut frame: FrameMut<'_>,
        ingress: PortId,
        ctx: &BatchContext<'_>,
    ) -> Verdict {
        if let Some(flow) = Ipv6Addr::flow_of(&frame) {
            return self.track(frame, flow, ingress, ctx);
        }
        let L3::Ipv6 { src, dst, .. } = frame.l3() else {
            return Verdict::Pass;
        };
        let table = ctx.table.v6();
        match frame.l4() {
            L4::Fragment { protocol } => match frame.fragment() {
                Some(f) if !f.is_first() => {
                    self.later_fragment::<Ipv6Addr>(frame.reborrow(), protocol, ctx)
                }
                // The first fragment of a protocol without ports.
                _ if table.is_vip(dst) => Verdict::Drop(DropReason::Fragment),
                _ => Verdict::Pass,
            },
            L4::Icmpv6 { msg_type, .. } if icmpv6::is_translated_error(msg_type) => {
                self.icmp_error::<Ipv6Addr>(frame.reborrow(), ctx)
            }
            L4::Icmpv6 {
                msg_type: icmpv6::kind::REDIRECT,
                ..
            } if table.is_vip(dst) => Verdict::Drop(DropReason::IcmpRedirect),
            L4::Icmpv6 { msg_type, .. }
                if icmpv6::is_error(msg_type) || icmpv6::is_neighbor_discovery(msg_type) =>
            {
                Verdict::Pass
            }
            _ if !table.is_vip(dst) => Verdict::Pass,
            L4::Icmpv6 {
                msg_type: icmpv6::kind::ECHO_REQUEST,
                ..
            } => self.echo_to_vip(frame.reborrow(), ingress, src, dst, ctx),
            _ => Verdict::Drop(DropReason::UnsupportedProtocol),
        }
    }

    /// A TCP or UDP packet of either family: found in (or added to) the
    /// family's connection table, rewritten, and addressed.
    #[inline]
    fn track<A: PathFamily>(
        &mut self,
        mut frame: FrameMut<'_>,
        flow: Flow<A>,
        ingress: PortId,
        ctx: &BatchContext<'_>,
    ) -> Verdict {
        // Borrowed, not copied: a copy right after the key's fields were
        // stored read them back in wider loads, which the CPU cannot
        // take from the narrower stores, and waited for them
        // (benches/RESULTS.md, session 21).
        let key = &flow.key;

        // Packets that may change a flow's state always see the table, as
        // all do while the flow cache is bypassed.
        let steady = flow.tcp_flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) == 0;
        let cacheable = steady && !A::path(self).flows.bypassed();
        // The key's mix picks its cache set and its part of the key
        // space's removal count, read before the table lookup, so a flow
        // cached below carries a count no newer than what the lookup saw.
        let mix = key.mix();
        let removals = cacheable.then(|| A::path(self).conntrack.removals(mix));
        // The cache and the table write their hit into this one, and it
        // is read field by field (see `Conntrack::lookup_into`): copied
        // as a whole from the cache through temporaries, a hit went
        // through the stack in overlapping 16-byte halves that the next
        // copy's loads could not take from the stores (benches/RESULTS.md,
        // session 20). On a line of its own ([`HitSlot`]).
        let mut slot = HitSlot(FlowHit::UNSET);
        let hit = &mut slot.0;
        // A hit from the cache comes as its rewrite, with the hit's other
        // fields written ([`CachedFlow::hit_into`]).
        let cached = removals.and_then(|r| {
            let path = A::path(self);
            path.flows
                .get_into(key, mix, ctx.now, r, &path.conntrack, hit)
        });
        if cached.is_none() {
            // Hashed once for the lookup and, on a miss, the insert.
            let hash = A::path(self).conntrack.hash(key);
            let candidate = self.candidate_ahead(hash);
            let path = A::path(self);
            if path.conntrack.lookup_candidate_into(
                key,
                hash,
                candidate,
                ctx.now,
                flow.tcp_flags,
                hit,
            ) {
                if let Some(removals) = removals {
                    path.cache(*key, mix, hit, ctx.now, removals);
                }
            } else if let Err(denied) =
                self.new_flow(frame.ethernet().source(), &flow, hash, ctx, hit)
            {
                return self.deny(frame.reborrow(), ingress, key, denied, ctx);
            }
        }
        // From here on the flow's addresses and ports are read from its
        // rewrite: a hit the cache served has none written.
        let mut leaving = cached.unwrap_or_else(|| Rewrite::of(key, hit));
        if hit.direction == Direction::Forward
            && ctx.table.family::<A>().retires(key, leaving.backend())
        {
            let (source, backend) = (frame.ethernet().source(), leaving.backend());
            if let Err(denied) = self.retired_flow(source, &flow, backend, hit, ctx) {
                return self.deny(frame.reborrow(), ingress, key, denied, ctx);
            }
            // A new flow, to another backend.
            leaving = Rewrite::of_out_of_line(key, hit);
        }
        if flow.ttl <= 1 {
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        match hit.direction {
            Direction::Forward => self.counters.forwarded.inc(),
            Direction::Reply => self.counters.replies.inc(),
        }
        let len = frame.len();
        A::path(self).conntrack.account(hit, len);
        if hit.slot != NO_SLOT {
            if let Some(c) = self.services.as_ref().and_then(|s| s.get(hit.slot)) {
                c.packets.inc();
                c.bytes.add(len as u64);
            }
        }
        if hit.affinity && hit.direction == Direction::Forward {
            self.refresh_affinity(key, ctx.now);
        }
        let headers = Headers {
            l3: frame.l3_offset(),
            l4: frame.l4_offset(),
        };
        leaving.apply(frame.bytes_mut(), headers, flow.ttl, key.protocol);
        if frame.fragment().is_some() {
            self.remember_first_fragment(&frame.reborrow(), key, ctx.now);
        }
        self.address(frame.bytes_mut(), leaving.dst, ctx.net)
    }

    /// Affinity lasts from the client's last packet; refreshed at most
    /// once a second per binding from this worker.
    #[inline]
    fn refresh_affinity<A: PathFamily>(&mut self, key: &FlowKey<A>, now: u32) {
        let service = ServiceKey::of_flow(key);
        self.refreshes.touch(&self.affinity, service, key.src, now);
    }

    /// A datagram's first fragment went out rewritten: its later
    /// fragments will follow it ([`crate::fragments`]), under the
    /// datagram's identity as it arrived, to the addresses it left with.
    #[cold]
    fn remember_first_fragment<A: PathFamily>(
        &mut self,
        frame: &FrameMut<'_>,
        key: &FlowKey<A>,
        now: u32,
    ) {
        let (Some(fragment), Some((src, dst))) = (frame.fragment(), header_addresses(frame)) else {
            return;
        };
        let id = DatagramId {
            src: key.src,
            dst: key.dst,
            protocol: key.protocol.ip_number(),
            ident: fragment.ident,
        };
        let route = FragmentRoute { src, dst };
        A::path(self).fragments.remember(id, route, now);
    }

    /// A fragment after the first, of either family: sent where its first
    /// fragment went, with the same addresses, or dropped when this
    /// worker did not forward that one (recently). Only the IP header
    /// changes (the transport checksum, in the first fragment, covers
    /// the whole datagram).
    #[cold]
    fn later_fragment<A: PathFamily>(
        &mut self,
        mut frame: FrameMut<'_>,
        protocol: u8,
        ctx: &BatchContext<'_>,
    ) -> Verdict {
        let (Some((src, dst, ttl)), Some(fragment)) = (l3_of::<A, _>(&frame), frame.fragment())
        else {
            return Verdict::Drop(DropReason::Fragment);
        };
        let id = DatagramId {
            src,
            dst,
            protocol,
            ident: fragment.ident,
        };
        let Some(route) = A::path(self).fragments.route(&id, ctx.now) else {
            return Verdict::Drop(DropReason::Fragment);
        };
        if ttl <= 1 {
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        readdress(&mut frame, (src, dst), (route.src, route.dst), ttl);
        self.counters.fragments.inc();
        self.address(frame.bytes_mut(), route.dst, ctx.net)
    }

    /// An ICMP or ICMPv6 error about a tracked flow, rewritten for the
    /// other end, as Linux's NAT rewrites one
    /// (nf_nat_icmp_reply_translation). The error travels against the
    /// datagram it quotes, so its flow key is the quoted one reversed,
    /// and it is rewritten as that flow's packets in its direction are:
    /// the quoted datagram back to what its sender sent (towards a
    /// backend) or saw (towards the client), the outer addresses as a
    /// packet of the flow going this way gets them (the VIP as the source
    /// of an error for the client, whoever sent it; the backend as the
    /// destination of one for the backend). The flow's state and
    /// last-seen time are left alone.
    #[cold]
    fn icmp_error<A: IcmpFamily>(
        &mut self,
        mut frame: FrameMut<'_>,
        ctx: &BatchContext<'_>,
    ) -> Verdict {
        let Some((src, dst, ttl)) = l3_of::<A, _>(&frame) else {
            return Verdict::Pass;
        };
        let quoted = match A::quoted(&frame, src, dst) {
            Ok(quoted) => quoted,
            Err(reason) => return Verdict::Drop(reason),
        };
        let Some(protocol) = Protocol::from_ip_number(quoted.protocol) else {
            return Verdict::Drop(DropReason::IcmpErrorMalformed);
        };
        let key = FlowKey {
            src: quoted.dst,
            dst: quoted.src,
            src_port: quoted.dst_port,
            dst_port: quoted.src_port,
            protocol,
        };
        let Some(hit) = A::path(self).conntrack.peek(&key) else {
            // Not about a flow of ours: the kernel's, unless it names a
            // VIP or a backend port (then the XDP program sent it here).
            let table = ctx.table.family::<A>();
            let ours = table.is_vip(dst)
                || table.is_vip(quoted.src)
                || table
                    .reply_owner(quoted.dst, quoted.dst_port, protocol)
                    .is_some();
            return match ours {
                true => Verdict::Drop(DropReason::IcmpErrorWithoutFlow),
                false => Verdict::Pass,
            };
        };
        if ttl <= 1 {
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        let nat = (hit.nat_ip, hit.nat_port);
        let (quoted_src, quoted_dst, outer_src, outer_dst) = match hit.direction {
            // For the client: the quoted datagram was a forward packet
            // as it left the gateway (client or SNAT -> backend).
            Direction::Reply => {
                let client = hit.snat.unwrap_or((quoted.src, quoted.src_port));
                (client, nat, hit.nat_ip, client.0)
            }
            // For the backend: the quoted datagram was a reply as the
            // client saw it (VIP -> client).
            Direction::Forward => {
                let source = hit.snat.unwrap_or((quoted.dst, quoted.dst_port));
                let outer_src = hit.snat.map_or(src, |s| s.0);
                (nat, source, outer_src, hit.nat_ip)
            }
        };
        // The outer header first: ICMPv6's checksum, computed last,
        // covers its addresses.
        readdress(&mut frame, (src, dst), (outer_src, outer_dst), ttl);
        A::rewrite_quoted(
            &mut frame,
            &quoted,
            (quoted_src, quoted_dst),
            (outer_src, outer_dst),
        );
        self.counters.icmp_errors.inc();
        self.address(frame.bytes_mut(), outer_dst, ctx.net)
    }

    /// The next-hop step: addresses `frame` to the next hop towards `dst`
    /// and names the port it leaves from.
    #[inline]
    fn address<A: PathFamily>(&mut self, frame: &mut [u8], dst: A, net: &NetSnapshot) -> Verdict {
        match A::path(self).hops.lookup(net, dst) {
            Ok(hop) => {
                if let Some(header) = frame.get_mut(..ethernet::HEADER_LEN) {
                    let mut eth = EthernetFrame::new_unchecked(header);
                    eth.set_source(hop.src_mac);
                    eth.set_destination(hop.dst_mac);
                }
                Verdict::Forward { port: hop.port }
            }
            Err(verdict) => verdict,
        }
    }

    /// The verdict for a packet that was not given a flow.
    #[cold]
    fn deny<A: PathFamily>(
        &mut self,
        frame: FrameMut<'_>,
        ingress: PortId,
        key: &FlowKey<A>,
        denied: Denied,
        ctx: &BatchContext<'_>,
    ) -> Verdict {
        match denied {
            Denied::Verdict(v) => v,
            Denied::Refuse(reason) => self.refuse(frame, ingress, key, reason, ctx),
        }
    }

    /// A packet of a flow whose endpoint (or Service port) the current
    /// table removed: the flow ends here, and the packet is treated as
    /// the first of a new one (a UDP datagram picks a live endpoint, a TCP
    /// segment other than a SYN is answered with a RST). `backend` is
    /// where the flow went; the new flow's hit replaces the retired
    /// one's in `hit`.
    #[cold]
    fn retired_flow<A: PathFamily>(
        &mut self,
        source_mac: MacAddr,
        flow: &Flow<A>,
        backend: (A, u16),
        hit: &mut FlowHit<A>,
        ctx: &BatchContext<'_>,
    ) -> Result<(), Denied> {
        let conntrack = &A::path(self).conntrack;
        conntrack.retire_flow(&flow.key, backend);
        let hash = conntrack.hash(&flow.key);
        self.new_flow(source_mac, flow, hash, ctx, hit)
    }

    /// A packet no flow knows: a new connection to a VIP, or not ours.
    /// Its flow's hit goes into `hit`, as [`Conntrack::insert_into`]
    /// writes it.
    #[cold]
    fn new_flow<A: PathFamily>(
        &mut self,
        source_mac: MacAddr,
        flow: &Flow<A>,
        hash: u64,
        ctx: &BatchContext<'_>,
        hit: &mut FlowHit<A>,
    ) -> Result<(), Denied> {
        let key = &flow.key;
        let table = ctx.table.family::<A>();
        let service = ServiceKey::of_flow(key);
        // One lookup tells a VIP's port from any other destination (every
        // port the table holds is a VIP's); what it found for a VIP is
        // answered only after the source and the segment pass.
        let looked_up = table.lookup(&service);
        if let Err(Miss::NotVip) = looked_up {
            return self.not_to_a_vip(flow, ctx).map(|found| *hit = found);
        }
        self.check_source(source_mac, key.src, ctx)
            .map_err(Denied::Verdict)?;
        if flow.ttl <= 1 {
            return Err(Denied::Verdict(Verdict::Drop(DropReason::TtlExceeded)));
        }
        if key.protocol == Protocol::Tcp {
            let f = flow.tcp_flags;
            if f & tcp_flags::RST != 0 {
                // Never answer a RST; nothing to reset.
                return Err(Denied::Verdict(Verdict::Drop(DropReason::TcpNoFlow)));
            }
            if f & tcp_flags::SYN == 0 {
                return self.adopt(flow, hash, ctx).map(|adopted| *hit = adopted);
            }
            if f & tcp_flags::ACK != 0 {
                return Err(Denied::Refuse(DropReason::TcpNoFlow));
            }
        }
        let entry = match looked_up {
            Ok(entry) => entry,
            Err(Miss::NoPort) => return Err(Denied::Refuse(DropReason::NoServicePort)),
            Err(Miss::NoEndpoints) => return Err(Denied::Refuse(DropReason::NoEndpoints)),
            // Answered above.
            Err(Miss::NotVip) => return self.not_to_a_vip(flow, ctx).map(|found| *hit = found),
        };
        let backends = &entry.backends;
        let affine = entry
            .affinity
            .map(|timeout| self.pick_affine(service, key.src, backends, timeout, ctx));
        let first = match (affine, &entry.maglev) {
            (Some(index), _) => index,
            (None, Some(maglev)) => maglev.pick(key),
            (None, None) => match self.picked_ahead(hash) {
                Some(index) if index < backends.len() => index,
                _ => self.rng.below(backends.len()),
            },
        };
        // A reply-key clash is retried on another backend a few times
        // before the connection is given up. The next backend is the
        // index plus one, wrapped by a compare: a division (`%`) here
        // took its latency on every new flow. (Every pick above is an
        // index of `backends`; the first is wrapped all the same.)
        let len = backends.len();
        let mut index = if first < len { first } else { first % len };
        for _ in 0..len.min(4) {
            let backend = backends[index];
            let slot = entry.slot_of(index);
            let meta = FlowMeta {
                affinity: entry.affinity.is_some(),
                slot,
                worker: self.worker,
            };
            match A::path(self).conntrack.insert_into(
                *key,
                hash,
                (backend.ip, backend.port),
                ctx.now,
                meta,
                hit,
            ) {
                Ok(()) => {
                    self.counters.new_flows.inc();
                    if let Some(c) = self.services.as_ref().and_then(|s| s.get(slot)) {
                        c.flows.inc();
                    }
                    return Ok(());
                }
                Err(InsertError::ReplyClash) => {
                    index = if index + 1 < len { index + 1 } else { 0 };
                    continue;
                }
                Err(other) => return Err(Denied::Refuse(refusal_reason(other))),
            }
        }
        // Every usable endpoint already carries a live flow from this
        // client port through another VIP: refuse at once rather than let
        // the client retry the same port into the same clash.
        Err(Denied::Refuse(DropReason::ReplyClash))
    }

    /// A TCP segment other than a SYN of a flow this gateway does not
    /// track: another gateway carried it until now (ECMP moved it), or
    /// this one restarted. Under Maglev every gateway picks the same
    /// backend for it, so it is given that backend and tracked (counted
    /// as adopted); under random choice it is refused with a RST, as the
    /// kernel and kube-proxy do.
    #[cold]
    fn adopt<A: PathFamily>(
        &mut self,
        flow: &Flow<A>,
        hash: u64,
        ctx: &BatchContext<'_>,
    ) -> Result<FlowHit<A>, Denied> {
        let key = &flow.key;
        let service = ServiceKey::of_flow(key);
        let Ok(entry) = ctx.table.family::<A>().lookup(&service) else {
            return Err(Denied::Refuse(DropReason::TcpNoFlow));
        };
        let Some(maglev) = &entry.maglev else {
            return Err(Denied::Refuse(DropReason::TcpNoFlow));
        };
        let index = maglev.pick(key);
        let backend = entry.backends[index];
        let meta = FlowMeta {
            affinity: entry.affinity.is_some(),
            slot: entry.slot_of(index),
            worker: self.worker,
        };
        match A::path(self).conntrack.insert_hashed(
            *key,
            hash,
            (backend.ip, backend.port),
            ctx.now,
            meta,
        ) {
            Ok(hit) => {
                self.counters.adopted_flows.inc();
                Ok(hit)
            }
            Err(e) => Err(Denied::Refuse(refusal_reason(e))),
        }
    }

    /// The backend session affinity binds the client to, as an index into
    /// `backends` (which is not empty).
    fn pick_affine<A: PathFamily>(
        &mut self,
        service: ServiceKey<A>,
        client: A,
        backends: &[Backend<A>],
        timeout: u32,
        ctx: &BatchContext<'_>,
    ) -> usize {
        let chosen = self
            .affinity
            .pick(service, client, backends, timeout, ctx.now, &mut self.rng);
        backends.iter().position(|b| *b == chosen).unwrap_or(0)
    }

    /// A packet with no flow to an address that is no VIP: a reply of a
    /// flow another gateway carried (under Maglev), or the kernel's.
    #[cold]
    fn not_to_a_vip<A: PathFamily>(
        &mut self,
        flow: &Flow<A>,
        ctx: &BatchContext<'_>,
    ) -> Result<FlowHit<A>, Denied> {
        let key = &flow.key;
        match ctx
            .table
            .family::<A>()
            .reply_owner(key.src, key.src_port, key.protocol)
        {
            Some(owner) => self.stateless_reply(flow, owner, ctx),
            None => Err(Denied::Verdict(Verdict::Pass)),
        }
    }

    /// A packet from an endpoint that no tracked flow knows: a reply of a
    /// flow another gateway carried until now. When the endpoint belongs
    /// to exactly one Service port and that port uses Maglev, the flow is
    /// tracked (client -> VIP:port -> this endpoint) and the reply is
    /// rewritten to come from the VIP:port; an endpoint of several ports
    /// is dropped (which VIP?), and so is one to a client outside
    /// `--cluster-cidr`. Only without source NAT (with it, the packet's
    /// destination is the gateway, not the client: dropped as
    /// `reply_without_flow`).
    #[cold]
    fn stateless_reply<A: PathFamily>(
        &mut self,
        flow: &Flow<A>,
        owner: ReplyOwner<A>,
        ctx: &BatchContext<'_>,
    ) -> Result<FlowHit<A>, Denied> {
        // With source NAT a backend answers the gateway's address, not
        // the client's: an untracked reply says nothing of its client.
        if A::path(self).conntrack.snat_ports().is_some() {
            return Err(Denied::Verdict(Verdict::Drop(DropReason::ReplyWithoutFlow)));
        }
        let service = match owner {
            ReplyOwner::Unique(service) => service,
            // Without Maglev anywhere, an untracked reply is just that.
            ReplyOwner::Ambiguous if !ctx.table.uses_maglev() => {
                return Err(Denied::Verdict(Verdict::Drop(DropReason::ReplyWithoutFlow)))
            }
            ReplyOwner::Ambiguous => {
                return Err(Denied::Verdict(Verdict::Drop(DropReason::AmbiguousReply)))
            }
        };
        let maglev_port = ctx
            .table
            .family::<A>()
            .port_entry(&service)
            .filter(|entry| entry.maglev.is_some());
        let reply = &flow.key;
        // The client must be one that may open connections to VIPs.
        let client_allowed = self.in_cluster(reply.dst);
        let (Some(entry), true) = (maglev_port, client_allowed) else {
            return Err(Denied::Verdict(Verdict::Drop(DropReason::ReplyWithoutFlow)));
        };
        let forward = FlowKey {
            src: reply.dst,
            dst: service.vip,
            src_port: reply.dst_port,
            dst_port: service.port,
            protocol: service.protocol,
        };
        let endpoint = entry
            .backends
            .iter()
            .position(|b| (b.ip, b.port) == (reply.src, reply.src_port));
        let meta = FlowMeta {
            affinity: entry.affinity.is_some(),
            slot: endpoint.map_or(NO_SLOT, |index| entry.slot_of(index)),
            worker: self.worker,
        };
        match A::path(self)
            .conntrack
            .insert(forward, (reply.src, reply.src_port), ctx.now, meta)
        {
            Ok(_) => {}
            Err(e) => return Err(Denied::Verdict(Verdict::Drop(refusal_reason(e)))),
        }
        // The reply direction of the flow just tracked (or of the one a
        // racing worker tracked first), with this packet's flags applied.
        match A::path(self)
            .conntrack
            .lookup(reply, ctx.now, flow.tcp_flags)
            .filter(|hit| hit.direction == Direction::Reply)
        {
            Some(hit) => {
                self.counters.stateless_replies.inc();
                Ok(hit)
            }
            None => Err(Denied::Verdict(Verdict::Drop(DropReason::ReplyWithoutFlow))),
        }
    }

    /// Whether a source may open connections to VIPs. Always inlined,
    /// as the insert is: a new flow's every call counts (see
    /// [`Conntrack::insert_into`]).
    #[inline(always)]
    fn check_source<A: PathFamily>(
        &self,
        source_mac: MacAddr,
        src: A,
        ctx: &BatchContext<'_>,
    ) -> Result<(), Verdict> {
        if ethernet::is_multicast(source_mac) || !A::may_be_client(src) {
            return Err(Verdict::Drop(DropReason::BadSource));
        }
        if ctx.table.family::<A>().is_vip(src) {
            return Err(Verdict::Drop(DropReason::VipAsSource));
        }
        if !self.in_cluster(src) {
            return Err(Verdict::Drop(DropReason::SourceNotInCluster));
        }
        Ok(())
    }

    /// Whether `ip` lies in `--cluster-cidr` (every address does when
    /// none is given); an address matches only ranges of its family.
    /// Inlined, so that without ranges the address is not even made an
    /// `IpAddr` (a call and the conversion cost a new flow 29
    /// instructions).
    #[inline(always)]
    fn in_cluster(&self, ip: impl Into<IpAddr>) -> bool {
        let cidrs = &self.config.cluster_cidrs;
        cidrs.is_empty() || {
            let ip = ip.into();
            cidrs.iter().any(|c| c.contains(&ip))
        }
    }

    /// Refuses a connection: counts `reason`, and answers with a RST (TCP)
    /// or ICMP port unreachable (UDP) when the rate limit allows.
    #[cold]
    fn refuse<A: PathFamily>(
        &mut self,
        frame: FrameMut<'_>,
        ingress: PortId,
        key: &FlowKey<A>,
        reason: DropReason,
        ctx: &BatchContext<'_>,
    ) -> Verdict {
        let Some(port) = ctx.net.port(ingress) else {
            return Verdict::Drop(reason);
        };
        if !self.refusals.allow(key.src, ctx.now) {
            self.counters.refusals_rate_limited.inc();
            return Verdict::Drop(reason);
        }
        let answer = match key.protocol {
            Protocol::Tcp => reject::tcp_reset(frame, port.mac),
            Protocol::Udp => reject::port_unreachable(frame, port.mac),
        };
        match answer {
            Some(len) => {
                // The frame is not forwarded: counted under its reason, and
                // as a refusal sent.
                self.counters.count_drop(reason);
                self.counters.refusals.inc();
                Verdict::Respond { port: ingress, len }
            }
            None => Verdict::Drop(reason),
        }
    }

    /// An echo request to a VIP: answered when the Service has endpoints.
    #[cold]
    fn echo_to_vip<A: PathFamily>(
        &mut self,
        frame: FrameMut<'_>,
        ingress: PortId,
        src: A,
        dst: A,
        ctx: &BatchContext<'_>,
    ) -> Verdict {
        if let Err(v) = self.check_source(frame.ethernet().source(), src, ctx) {
            return v;
        }
        if !ctx.table.family::<A>().vip_has_endpoints(dst) {
            return Verdict::Drop(DropReason::NoEndpoints);
        }
        let Some(port) = ctx.net.port(ingress) else {
            return Verdict::Drop(DropReason::UnknownIngressPort);
        };
        if !self.refusals.allow(src, ctx.now) {
            return Verdict::Drop(DropReason::RateLimited);
        }
        match reject::echo_reply(frame, port.mac) {
            Some(len) => {
                self.counters.echo_replies.inc();
                Verdict::Respond { port: ingress, len }
            }
            None => Verdict::Drop(DropReason::EchoReplyFailed),
        }
    }
}

/// The verdict for a frame [`Frame::parse`] could not parse.
#[cold]
fn parse_verdict(e: ParseError) -> Verdict {
    let wire = |e, truncated, malformed| match e {
        WireError::Truncated => truncated,
        WireError::Malformed => malformed,
    };
    match e {
        ParseError::NotIp => Verdict::Pass,
        ParseError::TruncatedEthernet => Verdict::Drop(DropReason::TruncatedEthernet),
        ParseError::VlanTagged => Verdict::Drop(DropReason::VlanTagged),
        ParseError::Ipv4(e) => Verdict::Drop(wire(
            e,
            DropReason::TruncatedIpv4,
            DropReason::MalformedIpv4,
        )),
        ParseError::Ipv6(e) => Verdict::Drop(wire(
            e,
            DropReason::TruncatedIpv6,
            DropReason::MalformedIpv6,
        )),
        ParseError::L4(e) => {
            Verdict::Drop(wire(e, DropReason::TruncatedL4, DropReason::MalformedL4))
        }
        ParseError::UdpZeroChecksumV6 => Verdict::Drop(DropReason::UdpZeroChecksumV6),
    }
}

/// The flow of an IPv4 TCP or UDP frame that is not a later fragment.
#[inline]
fn flow_of<T: AsRef<[u8]>>(frame: &Frame<T>) -> Option<Flow> {
    Ipv4Addr::flow_of(frame)
}

/// The protocol of a TCP or UDP packet's IP protocol number.
#[inline(always)]
fn tcp_or_udp(protocol: u8) -> Option<Protocol> {
    match protocol {
        ip_number::TCP => Some(Protocol::Tcp),
        ip_number::UDP => Some(Protocol::Udp),
        _ => None,
    }
}

/// A big-endian u16 at `at` of `bytes`, which the caller checked holds
/// it.
#[inline(always)]
fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// How far into a frame [`peek_key4`] and [`peek_key6`] read: to the
/// end of the ports after an IPv6 header (`peek_key6`'s `L4 + 4`).
const PEEKED_LEN: usize = ethernet::HEADER_LEN + 40 + 4;
// `Pipeline::prefetch_headers` asks for two lines at most.
const _: () = assert!(PEEKED_LEN <= 64);

/// The flow key of an untagged Ethernet frame carrying TCP or UDP over
/// IPv4 without options, not a fragment, read straight off its bytes for
/// the prefetch pass: what [`Frame::parse`] and [`flow_of`] give such a
/// frame, at a fraction of the instructions (they check every length and
/// field; this only stays in bounds). `None` for any other frame,
/// including ones the full parse would refuse or read otherwise.
#[inline(always)]
fn peek_key4(frame: &[u8]) -> Option<FlowKey<Ipv4Addr>> {
    const IP: usize = ethernet::HEADER_LEN;
    const L4: usize = IP + 20;
    let bytes: &[u8; L4 + 4] = frame.get(..L4 + 4)?.try_into().ok()?;
    // Version 4 with a 20-byte header; neither More Fragments nor an
    // offset.
    if be16(bytes, 12) != ethertype::IPV4 || bytes[IP] != 0x45 || be16(bytes, IP + 6) & 0x3fff != 0
    {
        return None;
    }
    let addr = |at: usize| Ipv4Addr::new(bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]);
    Some(FlowKey {
        src: addr(IP + 12),
        dst: addr(IP + 16),
        src_port: be16(bytes, L4),
        dst_port: be16(bytes, L4 + 2),
        protocol: tcp_or_udp(bytes[IP + 9])?,
    })
}

/// [`peek_key4`] for IPv6: TCP or UDP as the fixed header's next header
/// (no extension header, so no fragment).
#[inline(always)]
fn peek_key6(frame: &[u8]) -> Option<FlowKey<Ipv6Addr>> {
    const IP: usize = ethernet::HEADER_LEN;
    const L4: usize = IP + 40;
    let bytes: &[u8; PEEKED_LEN] = frame.get(..PEEKED_LEN)?.try_into().ok()?;
    if be16(bytes, 12) != ethertype::IPV6 || bytes[IP] >> 4 != 6 {
        return None;
    }
    let addr = |at: usize| {
        <[u8; 16]>::try_from(&bytes[at..at + 16])
            .ok()
            .map(Ipv6Addr::from)
    };
    Some(FlowKey {
        src: addr(IP + 8)?,
        dst: addr(IP + 24)?,
        src_port: be16(bytes, L4),
        dst_port: be16(bytes, L4 + 2),
        protocol: tcp_or_udp(bytes[IP + 6])?,
    })
}

/// The flow of a TCP or UDP frame (not a later fragment) from `src` to
/// `dst`, its IP header's addresses, with its TTL or hop limit.
#[inline]
fn flow_between<T: AsRef<[u8]>, A>(frame: &Frame<T>, src: A, dst: A, ttl: u8) -> Option<Flow<A>> {
    let (protocol, src_port, dst_port, tcp_flags) = match frame.l4() {
        L4::Tcp {
            src_port,
            dst_port,
            flags,
        } => (Protocol::Tcp, src_port, dst_port, flags),
        L4::Udp { src_port, dst_port } => (Protocol::Udp, src_port, dst_port, 0),
        L4::Icmp { .. } | L4::Icmpv6 { .. } | L4::Fragment { .. } | L4::Other { .. } => {
            return None
        }
    };
    Some(Flow {
        key: FlowKey {
            src,
            dst,
            src_port,
            dst_port,
            protocol,
        },
        ttl,
        tcp_flags,
    })
}

/// The addresses and TTL (hop limit) of a frame of family `A`, as it
/// arrived.
#[inline]
fn l3_of<A: IpFamily, T: AsRef<[u8]>>(frame: &Frame<T>) -> Option<(A, A, u8)> {
    let (src, dst, ttl): (IpAddr, IpAddr, u8) = match frame.l3() {
        L3::Ipv4 { src, dst, ttl } => (src.into(), dst.into(), ttl),
        L3::Ipv6 {
            src,
            dst,
            hop_limit,
        } => (src.into(), dst.into(), hop_limit),
    };
    Some((A::from_ip(src)?, A::from_ip(dst)?, ttl))
}

/// The addresses in a frame's IP header now (after a rewrite), if it is
/// of family `A`.
#[inline]
fn header_addresses<A: IpFamily>(frame: &FrameMut<'_>) -> Option<(A, A)> {
    let (src, dst): (IpAddr, IpAddr) = match (frame.ipv4(), frame.ipv6()) {
        (Some(ip), _) => (ip.source().into(), ip.destination().into()),
        (None, Some(ip)) => (ip.source().into(), ip.destination().into()),
        (None, None) => return None,
    };
    Some((A::from_ip(src)?, A::from_ip(dst)?))
}

/// What ICMP error translation does differently per family: which
/// message carries the error, how its quote is read and checked, and
/// what its checksum covers (ICMPv6's the IPv6 pseudo-header, so the
/// outer addresses too; ICMP's the message alone).
trait IcmpFamily: PathFamily {
    /// The datagram the error message of a frame from `src` to `dst`
    /// quotes, once its checksum verified; otherwise the drop reason.
    fn quoted(frame: &FrameMut<'_>, src: Self, dst: Self) -> Result<Quoted<Self>, DropReason>;

    /// Rewrites the quoted datagram to `quoted_src -> quoted_dst` and
    /// recomputes the message's checksum, for an outer header from
    /// `outer.0` to `outer.1` (already written).
    fn rewrite_quoted(
        frame: &mut FrameMut<'_>,
        quoted: &Quoted<Self>,
        addresses: ((Self, u16), (Self, u16)),
        outer: (Self, Self),
    );
}

impl IcmpFamily for Ipv4Addr {
    fn quoted(frame: &FrameMut<'_>, _src: Self, _dst: Self) -> Result<Quoted, DropReason> {
        let message = frame
            .icmp()
            .filter(|m| m.verify_checksum())
            .ok_or(DropReason::IcmpErrorMalformed)?;
        message.quoted().map_err(|_| DropReason::IcmpErrorMalformed)
    }

    fn rewrite_quoted(
        frame: &mut FrameMut<'_>,
        quoted: &Quoted,
        (src, dst): ((Self, u16), (Self, u16)),
        _outer: (Self, Self),
    ) {
        if let Some(mut message) = frame.icmp_mut() {
            message.rewrite_quoted(quoted, src, dst);
        }
    }
}

impl IcmpFamily for Ipv6Addr {
    fn quoted(frame: &FrameMut<'_>, src: Self, dst: Self) -> Result<Quoted<Self>, DropReason> {
        let message = frame
            .icmpv6_error()
            .filter(|m| m.verify_checksum(src, dst))
            .ok_or(DropReason::IcmpErrorMalformed)?;
        message.quoted().map_err(|_| DropReason::IcmpErrorMalformed)
    }

    fn rewrite_quoted(
        frame: &mut FrameMut<'_>,
        quoted: &Quoted<Self>,
        (src, dst): ((Self, u16), (Self, u16)),
        outer: (Self, Self),
    ) {
        if let Some(mut message) = frame.icmpv6_error_mut() {
            message.rewrite_quoted(quoted, src, dst, outer);
        }
    }
}

/// What a frame the XDP program redirected is, by its headers and the
/// table.
#[inline]
fn classify(frame: &FrameMut<'_>, table: &CompiledTable) -> Result<Classified, Verdict> {
    if let Some(flow) = flow_of(frame) {
        return Ok(Classified::Flow(flow));
    }
    let L3::Ipv4 { src, dst, .. } = frame.l3() else {
        return Err(Verdict::Pass);
    };
    match frame.l4() {
        L4::Fragment { protocol } => match frame.fragment() {
            Some(f) if !f.is_first() => Ok(Classified::LaterFragment { protocol }),
            // The first fragment of a protocol without ports.
            _ if table.is_vip(dst) => Err(Verdict::Drop(DropReason::Fragment)),
            _ => Err(Verdict::Pass),
        },
        L4::Icmp { msg_type, .. } if icmp::is_error(msg_type) => Ok(Classified::IcmpError),
        _ if !table.is_vip(dst) => Err(Verdict::Pass),
        L4::Icmp {
            msg_type: icmp::kind::REDIRECT,
            ..
        } => Err(Verdict::Drop(DropReason::IcmpRedirect)),
        L4::Icmp {
            msg_type: icmp::kind::ECHO_REQUEST,
            ..
        } => Ok(Classified::EchoToVip { src, dst }),
        _ => Err(Verdict::Drop(DropReason::UnsupportedProtocol)),
    }
}

/// Where a TCP or UDP packet's headers start in its frame.
#[derive(Debug, Clone, Copy)]
struct Headers {
    /// The IP header.
    l3: usize,
    /// The TCP or UDP header.
    l4: usize,
}

/// A packet's [`FlowHit`] on the worker's stack, aligned to a cache line.
/// The table and the flow cache write a hit's fields into it, and the
/// packet path then reads them one by one. Where the slot fell across
/// two lines (it depends on the frame's offset and the stack's
/// alignment, so on unrelated code), a store could split (the cache
/// then copied a whole hit in two overlapping 16-byte stores), and a
/// store that splits two lines cannot hand its bytes to a later load:
/// every cached packet waited for it to reach the cache
/// (the veth udp-est's batch time per frame went from 65-96 ns to
/// 93-152 ns with a build whose frame moved the slot; benches/RESULTS.md,
/// session 28).
#[repr(align(64))]
struct HitSlot<A: IpFamily>(FlowHit<A>);

/// The drop reason a new flow the table would not take is counted under.
fn refusal_reason(error: InsertError) -> DropReason {
    match error {
        InsertError::ReplyClash => DropReason::ReplyClash,
        InsertError::Full => DropReason::ConntrackFull,
        InsertError::SnatExhausted => DropReason::SnatPortsExhausted,
        InsertError::VipPrefixesFull => DropReason::VipPrefixesFull,
    }
}

/// What a tracked flow's packet leaves with: the addresses and ports of
/// its 5-tuple after destination NAT (and source NAT, when the flow has
/// it), both ends written whichever changed, and what the change does to
/// the checksums (RFC 1624). One rewrite for either direction, with or
/// without source NAT: made from the flow's hit ([`Rewrite::of`]), then
/// written over the packet ([`Rewrite::apply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rewrite<A> {
    src: A,
    dst: A,
    /// Source and destination ports, big-endian as the transport
    /// header holds them.
    ports: [u8; 4],
    /// The IPv4 header checksum's change: the addresses' and the TTL's
    /// decrement (the same for every packet that may be forwarded).
    header: WireDelta,
    /// The transport checksum's change: the addresses' (through the
    /// pseudo-header) and the ports'.
    transport: WireDelta,
}

impl<A: PathFamily> Rewrite<A> {
    /// The rewrite of `key`'s packets for `hit`: to the backend (forward),
    /// from the SNAT address when there is one; from the VIP (reply), to
    /// the client behind the SNAT address.
    #[inline(always)]
    fn of(key: &FlowKey<A>, hit: &FlowHit<A>) -> Self {
        let nat = (hit.nat_ip, hit.nat_port);
        let ((src, src_port), (dst, dst_port)) = match hit.direction {
            Direction::Forward => (hit.snat.unwrap_or((key.src, key.src_port)), nat),
            Direction::Reply => (nat, hit.snat.unwrap_or((key.dst, key.dst_port))),
        };
        // An address or port that stays adds a zero (0xffff) to a
        // delta, which changes no checksum.
        let addresses = A::address_delta(
            A::address_delta(Delta::default(), key.src, src),
            key.dst,
            dst,
        );
        let transport = addresses
            .word(key.src_port, src_port)
            .word(key.dst_port, dst_port);
        let [s0, s1] = src_port.to_be_bytes();
        let [d0, d1] = dst_port.to_be_bytes();
        Self {
            src,
            dst,
            ports: [s0, s1, d0, d1],
            header: A::header_delta(addresses),
            transport: transport.on_wire(),
        }
    }

    /// [`Rewrite::of`] out of line, for the rare paths.
    #[inline(never)]
    fn of_out_of_line(key: &FlowKey<A>, hit: &FlowHit<A>) -> Self {
        Self::of(key, hit)
    }

    /// Where the packets go, address and port: a forward packet's
    /// backend.
    #[inline(always)]
    fn backend(&self) -> (A, u16) {
        let [_, _, d0, d1] = self.ports;
        (self.dst, u16::from_be_bytes([d0, d1]))
    }

    /// Writes the rewrite over a packet of the flow, in place in `frame`
    /// whose headers are where `headers` say, with its TTL (hop limit,
    /// `ttl`, at least 2: a packet at 1 or 0 is dropped before)
    /// decremented, and every checksum. A header the frame does not hold
    /// whole is left alone: never out of bounds.
    #[inline(always)]
    fn apply(&self, frame: &mut [u8], headers: Headers, ttl: u8, protocol: Protocol) {
        A::rewrite_header(frame, headers.l3, (self.src, self.dst), ttl, self.header);
        let l4 = headers.l4;
        match protocol {
            Protocol::Tcp => {
                if let Some(header) = frame.get_mut(l4..l4 + tcp::MIN_HEADER_LEN) {
                    let mut tcp = TcpSegment::new_unchecked(header);
                    tcp.set_ports_bytes(self.ports);
                    tcp.set_checksum_bytes(self.transport.apply(tcp.checksum_bytes()));
                }
            }
            Protocol::Udp => {
                if let Some(header) = frame.get_mut(l4..l4 + udp::HEADER_LEN) {
                    let mut udp = UdpDatagram::new_unchecked(header);
                    udp.set_ports_bytes(self.ports);
                    // Zero, "no checksum", stays so.
                    udp.set_checksum_bytes(self.transport.apply_udp(udp.checksum_bytes()));
                }
            }
        }
    }
}

/// Writes new source and destination addresses (`new`, over `old`) into
/// the IP header of a packet that has no flow's [`Rewrite`] (a later
/// fragment, an ICMP error's outer header), decrements its TTL or hop
/// limit (`ttl`, at least 2) and updates the IPv4 header checksum.
fn readdress<A: PathFamily>(frame: &mut FrameMut<'_>, old: (A, A), new: (A, A), ttl: u8) {
    let delta = A::address_delta(
        A::address_delta(Delta::default(), old.0, new.0),
        old.1,
        new.1,
    );
    let l3 = frame.l3_offset();
    A::rewrite_header(frame.bytes_mut(), l3, new, ttl, A::header_delta(delta));
}

/// What the packet path does differently per address family: reading a
/// frame's flow, rewriting the IP header, and which sources may be clients
/// ([`IcmpFamily`] adds what ICMP error
/// translation does per family). Everything else in the pipeline, session
/// affinity and Maglev included, is one generic path over this.
trait PathFamily: IpFamily + AffinityFamily + MaglevFamily {
    /// This family's state in the pipeline.
    fn path(p: &mut Pipeline) -> &mut FamilyPath<Self>;

    /// The flow of a TCP or UDP frame of this family that is not a later
    /// fragment.
    fn flow_of<T: AsRef<[u8]>>(frame: &Frame<T>) -> Option<Flow<Self>>;

    /// `delta` with an address's change from `old` to `new` added.
    fn address_delta(delta: Delta, old: Self, new: Self) -> Delta;

    /// The IP header checksum's change for `addresses`, the addresses'
    /// change, with the TTL's decrement: IPv4's; IPv6's header has no
    /// checksum.
    fn header_delta(addresses: Delta) -> WireDelta;

    /// Writes `addresses` (source, destination) over the IP header at
    /// `l3` of `frame` and decrements its TTL or hop limit, `ttl` (at
    /// least 1); updates the IPv4 header checksum by `delta`, the
    /// addresses' change and the TTL's decrement
    /// ([`Delta::ttl_decrement`]). A header the frame does not hold whole
    /// is left alone.
    fn rewrite_header(
        frame: &mut [u8],
        l3: usize,
        addresses: (Self, Self),
        ttl: u8,
        delta: WireDelta,
    );

    /// Whether a packet from `src` may open a connection: not multicast,
    /// loopback, unspecified (or IPv4 broadcast and 0.0.0.0/8).
    fn may_be_client(src: Self) -> bool;
}

impl PathFamily for Ipv4Addr {
    #[inline(always)]
    fn path(p: &mut Pipeline) -> &mut FamilyPath<Self> {
        &mut p.v4
    }

    #[inline]
    fn flow_of<T: AsRef<[u8]>>(frame: &Frame<T>) -> Option<Flow<Self>> {
        let L3::Ipv4 { src, dst, ttl } = frame.l3() else {
            return None;
        };
        flow_between(frame, src, dst, ttl)
    }

    #[inline(always)]
    fn address_delta(delta: Delta, old: Self, new: Self) -> Delta {
        delta.addr(old.octets(), new.octets())
    }

    #[inline(always)]
    fn header_delta(addresses: Delta) -> WireDelta {
        addresses.ttl_decrement().on_wire()
    }

    #[inline(always)]
    fn rewrite_header(
        frame: &mut [u8],
        l3: usize,
        (src, dst): (Self, Self),
        ttl: u8,
        delta: WireDelta,
    ) {
        debug_assert!(ttl >= 1, "a TTL of 0 is not decremented");
        if let Some(bytes) = frame.get_mut(l3..l3 + ipv4::MIN_HEADER_LEN) {
            let mut ip = Ipv4Packet::new_unchecked(bytes);
            ip.set_source(src);
            ip.set_destination(dst);
            ip.set_ttl(ttl.wrapping_sub(1));
            ip.set_checksum_bytes(delta.apply(ip.checksum_bytes()));
        }
    }

    fn may_be_client(src: Self) -> bool {
        !(src.is_multicast() || src.is_broadcast() || src.is_loopback() || src.octets()[0] == 0)
    }
}

impl PathFamily for Ipv6Addr {
    #[inline(always)]
    fn path(p: &mut Pipeline) -> &mut FamilyPath<Self> {
        &mut p.v6
    }

    /// The addresses are read from the packet, not from the parsed
    /// frame's [`L3`]: `Frame::parse` stored each as two 8-byte words,
    /// and the key's 16-byte loads of them waited for those stores to
    /// retire (10% of `established_ipv6/1024_flows`'s samples). The
    /// packet's bytes were written long before.
    #[inline]
    fn flow_of<T: AsRef<[u8]>>(frame: &Frame<T>) -> Option<Flow<Self>> {
        let ip = frame.ipv6()?;
        flow_between(frame, ip.source(), ip.destination(), ip.hop_limit())
    }

    #[inline(always)]
    fn address_delta(delta: Delta, old: Self, new: Self) -> Delta {
        delta.addr6(old.octets(), new.octets())
    }

    #[inline(always)]
    fn header_delta(_addresses: Delta) -> WireDelta {
        WireDelta::default()
    }

    #[inline(always)]
    fn rewrite_header(
        frame: &mut [u8],
        l3: usize,
        (src, dst): (Self, Self),
        hop_limit: u8,
        _delta: WireDelta,
    ) {
        if let Some(bytes) = frame.get_mut(l3..l3 + ipv6::HEADER_LEN) {
            let mut ip = Ipv6Packet::new_unchecked(bytes);
            ip.set_source(src);
            ip.set_destination(dst);
            // No header checksum in IPv6; the hop limit is covered by none.
            ip.set_hop_limit(hop_limit.wrapping_sub(1));
        }
    }

    fn may_be_client(src: Self) -> bool {
        !(src.is_multicast() || src.is_loopback() || src.is_unspecified())
    }
}

/// Writes the Ethernet addresses for the next hop into a raw frame: one a
/// worker held for its neighbour, or passes through unparsed.
#[inline]
pub fn set_l2(frame: &mut [u8], src: MacAddr, dst: MacAddr) {
    if let Ok(mut eth) = EthernetFrame::new_checked(frame) {
        eth.set_source(src);
        eth.set_destination(dst);
    }
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "pipeline_maglev_tests.rs"]
mod maglev_tests;

#[cfg(test)]
#[path = "pipeline_icmp_tests.rs"]
mod icmp_tests;

#[cfg(test)]
#[path = "pipeline_ipv6_tests.rs"]
mod ipv6_tests;

#[cfg(test)]
#[path = "pipeline_icmp6_tests.rs"]
mod icmp6_tests;

#[cfg(test)]
#[path = "pipeline_ipv6_lb_tests.rs"]
mod ipv6_lb_tests;
