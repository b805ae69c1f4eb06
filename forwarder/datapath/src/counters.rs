//! Per-worker packet counters.
//!
//! Each worker owns one [`WorkerCounters`] and is its only writer, so an
//! increment is a relaxed load and store (no locked read-modify-write);
//! readers (the admin endpoint, tests) sum all workers' counters when they
//! scrape. Each worker's block is cache-line aligned so that two workers
//! never write the same line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Why a frame that reached a worker was not forwarded. Each reason
/// indexes a counter (like Cilium's `DROP_*` codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DropReason {
    /// Shorter than an Ethernet header.
    TruncatedEthernet,
    /// Carries an 802.1Q/802.1ad tag; cipgw forwards untagged frames only.
    VlanTagged,
    /// IPv4 header cut short by the end of the frame, or a total length
    /// beyond it.
    TruncatedIpv4,
    /// Not version 4, IHL below 5, or total length below the header.
    MalformedIpv4,
    /// IPv6 header, or an extension header, cut short by the end of the
    /// packet; or a payload length beyond the frame.
    TruncatedIpv6,
    /// Not version 6, more than 8 extension headers, or a Hop-by-Hop
    /// header that is not first.
    MalformedIpv6,
    /// A later fragment of a datagram whose first fragment this worker
    /// did not forward (lost, reordered behind it, refused, or gone from
    /// the small fragment table): it carries no ports to find a flow by,
    /// and cipgw does not reassemble.
    Fragment,
    /// TCP or UDP header cut short.
    TruncatedL4,
    /// TCP data offset below 5, or UDP length not matching the IP payload.
    MalformedL4,
    /// UDP over IPv6 with a zero checksum, which IPv6 forbids (RFC 8200
    /// 8.1).
    UdpZeroChecksumV6,
    /// A protocol other than TCP or UDP to a VIP.
    UnsupportedProtocol,
    /// The VIP exists but the Service defines no such port/protocol.
    NoServicePort,
    /// The Service port has no ready (or serving) endpoint.
    NoEndpoints,
    /// From a backend's address and port, but no tracked flow.
    ReplyWithoutFlow,
    /// The same client address/port reached the same backend through two
    /// VIPs at once; replies could not be told apart.
    ReplyClash,
    /// TTL would reach zero.
    TtlExceeded,
    /// The connection table is full of flows that may not be evicted.
    ConntrackFull,
    /// Source NAT had no free port towards the chosen backend on any
    /// address; refused like a full table.
    SnatPortsExhausted,
    /// A new IPv6 flow to a VIP whose high half is none of the (at most
    /// 249) the IPv6 connection table holds, when it has no room for
    /// another; refused like a full table (never, unless VIPs come from
    /// that many /64s).
    VipPrefixesFull,
    /// A TCP segment other than a SYN to a VIP with no tracked flow (its
    /// endpoint was removed, or the gateway restarted); answered with RST.
    TcpNoFlow,
    /// A source that cannot be a client: group MAC, multicast, broadcast,
    /// 0.0.0.0/8 or loopback address.
    BadSource,
    /// A VIP as source address (spoofed).
    VipAsSource,
    /// VIP traffic from outside `--cluster-cidr`.
    SourceNotInCluster,
    /// An echo request to a VIP beyond the per-source answer rate.
    RateLimited,
    /// An echo request to a VIP whose reply could not be built: a code
    /// other than 0 (RFC 792), or no room for the reply.
    EchoReplyFailed,
    /// No route to the destination.
    NoRoute,
    /// The route leaves through an interface cipgw is not attached to.
    RouteNotAttached,
    /// The next hop's MAC did not resolve in time.
    NeighbourTimeout,
    /// Too many frames already waiting for neighbour resolution.
    NeighbourQueueFull,
    /// An answer was due, but the frame came in on a port the network
    /// snapshot does not know, so it has no address to leave from.
    UnknownIngressPort,
    /// The egress port has no socket on this worker.
    NoTxQueue,
    /// The egress TX ring was full.
    TxRingFull,
    /// A reply from an endpoint of several Service ports, of a flow this
    /// gateway does not track: which VIP it should come from is unknown
    /// (stateless replies, Maglev).
    AmbiguousReply,
    /// An ICMP or ICMPv6 error (destination unreachable, packet too big,
    /// time exceeded, parameter problem) quoting a datagram of no tracked
    /// flow.
    IcmpErrorWithoutFlow,
    /// An ICMP or ICMPv6 error whose checksum does not verify or whose
    /// quoted datagram is cut short before its ports, not of the error's
    /// family, or a later fragment.
    IcmpErrorMalformed,
    /// An ICMP or ICMPv6 redirect to a VIP: never forwarded (a gateway's
    /// routes are its own).
    IcmpRedirect,
}

impl DropReason {
    pub const ALL: [DropReason; 36] = [
        DropReason::TruncatedEthernet,
        DropReason::VlanTagged,
        DropReason::TruncatedIpv4,
        DropReason::MalformedIpv4,
        DropReason::TruncatedIpv6,
        DropReason::MalformedIpv6,
        DropReason::Fragment,
        DropReason::TruncatedL4,
        DropReason::MalformedL4,
        DropReason::UdpZeroChecksumV6,
        DropReason::UnsupportedProtocol,
        DropReason::NoServicePort,
        DropReason::NoEndpoints,
        DropReason::ReplyWithoutFlow,
        DropReason::ReplyClash,
        DropReason::TtlExceeded,
        DropReason::ConntrackFull,
        DropReason::SnatPortsExhausted,
        DropReason::VipPrefixesFull,
        DropReason::TcpNoFlow,
        DropReason::BadSource,
        DropReason::VipAsSource,
        DropReason::SourceNotInCluster,
        DropReason::RateLimited,
        DropReason::EchoReplyFailed,
        DropReason::NoRoute,
        DropReason::RouteNotAttached,
        DropReason::NeighbourTimeout,
        DropReason::NeighbourQueueFull,
        DropReason::UnknownIngressPort,
        DropReason::NoTxQueue,
        DropReason::TxRingFull,
        DropReason::AmbiguousReply,
        DropReason::IcmpErrorWithoutFlow,
        DropReason::IcmpErrorMalformed,
        DropReason::IcmpRedirect,
    ];
    pub const COUNT: usize = Self::ALL.len();

    /// The label used in metrics and listings.
    pub const fn name(self) -> &'static str {
        match self {
            DropReason::TruncatedEthernet => "truncated_ethernet",
            DropReason::VlanTagged => "vlan_tagged",
            DropReason::TruncatedIpv4 => "truncated_ipv4",
            DropReason::MalformedIpv4 => "malformed_ipv4",
            DropReason::TruncatedIpv6 => "truncated_ipv6",
            DropReason::MalformedIpv6 => "malformed_ipv6",
            DropReason::Fragment => "fragment",
            DropReason::TruncatedL4 => "truncated_l4",
            DropReason::MalformedL4 => "malformed_l4",
            DropReason::UdpZeroChecksumV6 => "udp_zero_checksum_ipv6",
            DropReason::UnsupportedProtocol => "unsupported_protocol",
            DropReason::NoServicePort => "no_service_port",
            DropReason::NoEndpoints => "no_endpoints",
            DropReason::ReplyWithoutFlow => "reply_without_flow",
            DropReason::ReplyClash => "reply_clash",
            DropReason::TtlExceeded => "ttl_exceeded",
            DropReason::ConntrackFull => "conntrack_full",
            DropReason::SnatPortsExhausted => "snat_ports_exhausted",
            DropReason::VipPrefixesFull => "vip_prefixes_full",
            DropReason::TcpNoFlow => "tcp_no_flow",
            DropReason::BadSource => "bad_source",
            DropReason::VipAsSource => "vip_as_source",
            DropReason::SourceNotInCluster => "source_not_in_cluster",
            DropReason::RateLimited => "rate_limited",
            DropReason::EchoReplyFailed => "echo_reply_failed",
            DropReason::NoRoute => "no_route",
            DropReason::RouteNotAttached => "route_not_attached",
            DropReason::NeighbourTimeout => "neighbour_timeout",
            DropReason::NeighbourQueueFull => "neighbour_queue_full",
            DropReason::UnknownIngressPort => "unknown_ingress_port",
            DropReason::NoTxQueue => "no_tx_queue",
            DropReason::TxRingFull => "tx_ring_full",
            DropReason::AmbiguousReply => "ambiguous_reply",
            DropReason::IcmpErrorWithoutFlow => "icmp_error_without_flow",
            DropReason::IcmpErrorMalformed => "icmp_error_malformed",
            DropReason::IcmpRedirect => "icmp_redirect",
        }
    }
}

/// A counter with one writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning worker calls this.
    #[inline(always)]
    pub fn add(&self, n: u64) {
        // Relaxed: a statistic with a single writer; readers need no
        // ordering with other memory, only an untorn value.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    #[inline(always)]
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        // Relaxed: see `add`.
        self.0.load(Ordering::Relaxed)
    }

    /// Replaces the value with a total counted elsewhere (the kernel's
    /// socket statistics). Only the owning worker calls this.
    #[inline]
    pub fn set(&self, n: u64) {
        // Relaxed: see `add`.
        self.0.store(n, Ordering::Relaxed);
    }
}

/// What the kernel counts on a worker's AF_XDP sockets (XDP_STATISTICS),
/// summed over them: packets the XDP program redirected that never
/// reached the worker, and ring events. Each indexes a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SocketStat {
    /// Dropped: the RX ring was full (the worker fell behind).
    RxRingFull,
    /// Dropped for another reason: in copy mode, no free frame on the
    /// fill ring, or a packet larger than a frame.
    RxDropped,
    /// Times the kernel found the fill ring empty.
    FillRingEmpty,
    /// Invalid descriptors on the RX ring.
    RxInvalid,
    /// Invalid descriptors on the TX ring (frames not sent).
    TxInvalid,
    /// Times the kernel found the TX ring empty.
    TxRingEmpty,
}

impl SocketStat {
    pub const ALL: [SocketStat; 6] = [
        SocketStat::RxRingFull,
        SocketStat::RxDropped,
        SocketStat::FillRingEmpty,
        SocketStat::RxInvalid,
        SocketStat::TxInvalid,
        SocketStat::TxRingEmpty,
    ];
    pub const COUNT: usize = Self::ALL.len();

    /// The label used in metrics.
    pub const fn name(self) -> &'static str {
        match self {
            SocketStat::RxRingFull => "rx_ring_full",
            SocketStat::RxDropped => "rx_dropped",
            SocketStat::FillRingEmpty => "fill_ring_empty",
            SocketStat::RxInvalid => "rx_invalid_descs",
            SocketStat::TxInvalid => "tx_invalid_descs",
            SocketStat::TxRingEmpty => "tx_ring_empty",
        }
    }
}

/// A fixed array of counters, indexed like one: `Default` for any
/// length (std's arrays have it up to 32 only).
#[derive(Debug)]
pub struct CounterArray<const N: usize>([Counter; N]);

impl<const N: usize> Default for CounterArray<N> {
    fn default() -> Self {
        Self(std::array::from_fn(|_| Counter::default()))
    }
}

impl<const N: usize> std::ops::Deref for CounterArray<N> {
    type Target = [Counter; N];

    fn deref(&self) -> &[Counter; N] {
        &self.0
    }
}

/// Everything one worker counts.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct WorkerCounters {
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
    /// Packets of tracked flows, client to backend.
    pub forwarded: Counter,
    /// Packets of tracked flows, backend to client.
    pub replies: Counter,
    /// Connections given a backend.
    pub new_flows: Counter,
    /// Frames that waited for a neighbour and then went out.
    pub neighbour_resolved: Counter,
    /// Frames that were not ours (would have been XDP_PASS): no VIP, no
    /// backend. They reach a worker only when the table changed after the
    /// XDP program redirected them; AF_XDP cannot hand a frame back to the
    /// kernel, so they are dropped, counted here and under no drop reason.
    pub passed: Counter,
    /// Refusals sent (TCP RST, ICMP port unreachable).
    pub refusals: Counter,
    /// Refusals not sent because of the per-source rate limit (the frames
    /// are counted as drops under their reason).
    pub refusals_rate_limited: Counter,
    /// Echo replies sent for pings to VIPs.
    pub echo_replies: Counter,
    /// Flows this gateway had not seen, met mid-connection (a TCP
    /// segment other than a SYN) and given their backend from the Maglev
    /// table instead of a RST.
    pub adopted_flows: Counter,
    /// Replies of flows this gateway had not seen, rewritten to the one
    /// VIP:port their endpoint belongs to and tracked (Maglev).
    pub stateless_replies: Counter,
    /// ICMP and ICMPv6 errors about a tracked flow, rewritten to what the
    /// other end sent or saw and forwarded to it.
    pub icmp_errors: Counter,
    /// Later fragments sent after their datagram's first fragment.
    pub fragments: Counter,
    /// Seconds in which the worker's flow cache of a family held too few
    /// of its packets' flows to pay for itself and was bypassed for the
    /// rest of the second (many flows, or a flood of new ones).
    pub flow_cache_bypasses: Counter,
    pub drops: CounterArray<{ DropReason::COUNT }>,
    /// The kernel's statistics of the worker's sockets, copied in by the
    /// worker four times a second.
    pub socket: [Counter; SocketStat::COUNT],
}

impl WorkerCounters {
    #[inline(always)]
    pub fn count_drop(&self, reason: DropReason) {
        self.drops[reason as usize].inc();
    }

    pub fn drops_of(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].get()
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().map(Counter::get).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_index_their_own_counter() {
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{reason:?} out of order in ALL");
        }
        let c = WorkerCounters::default();
        c.count_drop(DropReason::NoEndpoints);
        c.count_drop(DropReason::NoEndpoints);
        assert_eq!(c.drops_of(DropReason::NoEndpoints), 2);
        assert_eq!(c.total_drops(), 2);
        assert_eq!(std::mem::align_of::<WorkerCounters>(), 64);
    }
}

/// The counters of one endpoint of one service port (VIP:port/protocol)
/// on one worker; the worker is the only writer.
#[derive(Debug, Default)]
pub struct ServiceCounter {
    /// Packets of the port's flows, both directions.
    pub packets: Counter,
    /// Their bytes (Ethernet frames as received).
    pub bytes: Counter,
    /// Connections given a backend.
    pub flows: Counter,
}

/// Slots per chunk of [`ServiceCounters`].
const SLOT_CHUNK: usize = 1024;
/// Chunks per worker: at most `SLOT_CHUNK * SLOT_CHUNKS` endpoints of
/// service ports are counted; those beyond get no slot and are not
/// counted.
const SLOT_CHUNKS: usize = 1024;
/// Most (service port, endpoint) pairs that can have counters at once.
pub const MAX_SERVICE_SLOTS: usize = SLOT_CHUNK * SLOT_CHUNKS;

/// One worker's per-endpoint counters of service ports, indexed by the
/// (port, endpoint) pair's stable slot (the `cipgw` crate's
/// `metrics::ServiceStats` assigns slots; a port's totals are its
/// endpoints' sums). Chunks of slots are allocated by the
/// control thread before a table that uses them is published, so the
/// worker never allocates and a slot's address never changes.
#[derive(Debug)]
pub struct ServiceCounters {
    chunks: Box<[OnceLock<Box<[ServiceCounter]>>]>,
}

impl Default for ServiceCounters {
    fn default() -> Self {
        Self::new()
    }
}

impl ServiceCounters {
    pub fn new() -> Self {
        Self {
            chunks: (0..SLOT_CHUNKS).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Allocates the chunks that slots `0..slots` fall in.
    pub fn ensure(&self, slots: usize) {
        for chunk in self.chunks.iter().take(slots.div_ceil(SLOT_CHUNK)) {
            chunk.get_or_init(|| (0..SLOT_CHUNK).map(|_| ServiceCounter::default()).collect());
        }
    }

    /// The counters of `slot`, if it has any. One atomic (acquire) load
    /// of the chunk pointer; on the packet path.
    #[inline]
    pub fn get(&self, slot: u32) -> Option<&ServiceCounter> {
        let slot = slot as usize;
        self.chunks
            .get(slot / SLOT_CHUNK)?
            .get()?
            .get(slot % SLOT_CHUNK)
    }
}
