//! Connection tracking: which backend each connection was given, and how
//! long the gateway keeps remembering it.
//!
//! One concurrent map holds both directions of every flow, keyed by the
//! 5-tuple exactly as it appears on the wire:
//! - the forward key (client, VIP, client port, VIP port) maps to the
//!   backend the flow was given (the destination to write);
//! - the reply key (backend, client, backend port, client port) maps back
//!   to the VIP and port (the source to write), so replies leave the
//!   gateway from the address the client connected to.
//!
//! Workers read it under a shard read lock (dashmap) on every packet and
//! write it only for a new flow or a state change (SYN, FIN, RST, first
//! reply). The hash is aHash with per-process random keys, so clients
//! cannot aim their flows at one bucket.
//!
//! Lifecycle. Each flow has a state driven by what both directions carry,
//! with its own idle timeout (defaults as kube-proxy configures
//! nf_conntrack, and Linux's for the rest):
//!
//! | state | entered on | timeout |
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
//! The sweeper ([`Conntrack::sweep`]) walks the table one shard at a time
//! under that shard's read lock (workers keep reading meanwhile; only
//! inserts into that shard wait), then removes expired flows one by one.
//!
//! Bounds. The table holds at most `max_flows` flows (a flow is both
//! directions). A new flow that would exceed it, or that would let
//! unreplied flows hold more than their share of the table (the flood
//! guard), first evicts the oldest unreplied flow; established flows are
//! never evicted for a new one. When nothing can be evicted the new flow is
//! refused and counted ([`InsertError::Full`]); the pipeline answers it
//! with a RST. Concurrent inserts may overshoot the limit by at most one
//! flow per worker.
//!
//! Memory per flow: two map entries of 16-byte key + 16-byte value in
//! hashbrown tables (one control byte each, load factor up to 7/8), plus a
//! 16-byte slot in the eviction queue for unreplied flows: about 80 bytes
//! when the tables are full, ~140 right after a table doubled. The
//! `conntrack` criterion bench measures it.

use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use ahash::RandomState;
use cipgw_config::Protocol;
use crossbeam::queue::ArrayQueue;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use crate::wire::tcp::flags as tcp_flags;

/// A 5-tuple as seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: Protocol,
}

impl FlowKey {
    /// The key of the other direction of the same flow, as seen on the
    /// wire before any rewrite (only meaningful without NAT).
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            protocol: self.protocol,
        }
    }
}

impl Hash for FlowKey {
    // Two word-sized writes instead of five field writes: the hash is on
    // the per-packet path.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64((u64::from(u32::from(self.src)) << 32) | u64::from(u32::from(self.dst)));
        state.write_u64(
            (u64::from(self.src_port) << 24)
                | (u64::from(self.dst_port) << 8)
                | u64::from(self.protocol.ip_number()),
        );
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

/// Where a flow is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FlowState {
    TcpSynSent = 0,
    TcpEstablished = 1,
    TcpFinWait = 2,
    TcpCloseWait = 3,
    TcpTimeWait = 4,
    TcpClose = 5,
    UdpUnreplied = 6,
    UdpReplied = 7,
}

impl FlowState {
    pub const ALL: [FlowState; 8] = [
        FlowState::TcpSynSent,
        FlowState::TcpEstablished,
        FlowState::TcpFinWait,
        FlowState::TcpCloseWait,
        FlowState::TcpTimeWait,
        FlowState::TcpClose,
        FlowState::UdpUnreplied,
        FlowState::UdpReplied,
    ];

    /// The label used in metrics and listings.
    pub const fn name(self) -> &'static str {
        match self {
            FlowState::TcpSynSent => "tcp_syn_sent",
            FlowState::TcpEstablished => "tcp_established",
            FlowState::TcpFinWait => "tcp_fin_wait",
            FlowState::TcpCloseWait => "tcp_close_wait",
            FlowState::TcpTimeWait => "tcp_time_wait",
            FlowState::TcpClose => "tcp_close",
            FlowState::UdpUnreplied => "udp_unreplied",
            FlowState::UdpReplied => "udp_replied",
        }
    }

    /// The state a new flow starts in.
    pub const fn initial(protocol: Protocol) -> FlowState {
        match protocol {
            Protocol::Tcp => FlowState::TcpSynSent,
            Protocol::Udp => FlowState::UdpUnreplied,
        }
    }

    const fn from_bits(bits: u8) -> FlowState {
        match bits & STATE_MASK {
            0 => FlowState::TcpSynSent,
            1 => FlowState::TcpEstablished,
            2 => FlowState::TcpFinWait,
            3 => FlowState::TcpCloseWait,
            4 => FlowState::TcpTimeWait,
            5 => FlowState::TcpClose,
            6 => FlowState::UdpUnreplied,
            _ => FlowState::UdpReplied,
        }
    }
}

/// State byte layout: the state in the low bits, then flags.
const STATE_MASK: u8 = 0x0f;
/// A FIN was seen client -> backend.
const FIN_FORWARD: u8 = 0x10;
/// A FIN was seen backend -> client.
const FIN_REPLY: u8 = 0x20;
/// A packet was seen backend -> client.
const REPLIED: u8 = 0x40;
/// The flow's Service has session affinity.
const AFFINITY: u8 = 0x80;

/// Idle timeouts per state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_syn_sent: Duration,
    pub tcp_established: Duration,
    pub tcp_fin_wait: Duration,
    pub tcp_close_wait: Duration,
    pub tcp_time_wait: Duration,
    pub tcp_close: Duration,
    pub udp_unreplied: Duration,
    pub udp_replied: Duration,
}

impl Default for Timeouts {
    /// kube-proxy's nf_conntrack settings (established 24 h, close-wait
    /// 1 h) and Linux's defaults for the rest.
    fn default() -> Self {
        Self {
            tcp_syn_sent: Duration::from_secs(120),
            tcp_established: Duration::from_secs(24 * 3600),
            tcp_fin_wait: Duration::from_secs(120),
            tcp_close_wait: Duration::from_secs(3600),
            tcp_time_wait: Duration::from_secs(120),
            tcp_close: Duration::from_secs(10),
            udp_unreplied: Duration::from_secs(30),
            udp_replied: Duration::from_secs(120),
        }
    }
}

impl Timeouts {
    /// The timeout of a state, in whole seconds.
    pub fn of(&self, state: FlowState) -> u32 {
        let d = match state {
            FlowState::TcpSynSent => self.tcp_syn_sent,
            FlowState::TcpEstablished => self.tcp_established,
            FlowState::TcpFinWait => self.tcp_fin_wait,
            FlowState::TcpCloseWait => self.tcp_close_wait,
            FlowState::TcpTimeWait => self.tcp_time_wait,
            FlowState::TcpClose => self.tcp_close,
            FlowState::UdpUnreplied => self.udp_unreplied,
            FlowState::UdpReplied => self.udp_replied,
        };
        u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
    }
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
    /// Bytes of memory budgeted per flow when sizing from memory.
    pub const BYTES_PER_FLOW: u64 = 160;

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
            unreplied_percent: 50,
            timeouts: Timeouts::default(),
        }
    }
}

/// One direction of a tracked flow.
#[derive(Debug)]
struct FlowEntry {
    /// State and flag bits; kept equal in both directions' entries.
    state: AtomicU8,
    direction: Direction,
    /// Backend target port (forward) or service port (reply) to write.
    nat_port: u16,
    /// Backend (forward) or VIP (reply) address to write.
    nat_ip: Ipv4Addr,
    /// Coarse time of the last packet this way, in the caller's seconds.
    last_seen: AtomicU32,
    /// The Service port's counter slot ([`NO_SLOT`] when not counted).
    slot: u32,
}

/// A flow whose Service port has no counter slot.
pub const NO_SLOT: u32 = u32::MAX;

/// What a new flow carries besides its addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowMeta {
    /// The Service has session affinity.
    pub affinity: bool,
    /// The Service port's counter slot, or [`NO_SLOT`].
    pub slot: u32,
}

impl Default for FlowMeta {
    fn default() -> Self {
        Self {
            affinity: false,
            slot: NO_SLOT,
        }
    }
}

impl FlowEntry {
    /// The key of the other direction of this entry's flow.
    fn partner(&self, key: &FlowKey) -> FlowKey {
        match self.direction {
            // Forward (client, vip) -> reply (backend, client).
            Direction::Forward => FlowKey {
                src: self.nat_ip,
                dst: key.src,
                src_port: self.nat_port,
                dst_port: key.src_port,
                protocol: key.protocol,
            },
            // Reply (backend, client) -> forward (client, vip).
            Direction::Reply => FlowKey {
                src: key.dst,
                dst: self.nat_ip,
                src_port: key.dst_port,
                dst_port: self.nat_port,
                protocol: key.protocol,
            },
        }
    }

    fn hit(&self, bits: u8) -> FlowHit {
        FlowHit {
            direction: self.direction,
            nat_ip: self.nat_ip,
            nat_port: self.nat_port,
            state: FlowState::from_bits(bits),
            affinity: bits & AFFINITY != 0,
            slot: self.slot,
        }
    }
}

/// The rewrite a tracked packet gets, and its flow's state after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowHit {
    pub direction: Direction,
    pub nat_ip: Ipv4Addr,
    pub nat_port: u16,
    pub state: FlowState,
    /// The flow's Service has session affinity.
    pub affinity: bool,
    /// The Service port's counter slot, or [`NO_SLOT`].
    pub slot: u32,
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
}

/// Why flows left the table.
#[derive(Debug, Default)]
pub struct ConntrackStats {
    pub inserted: AtomicU64,
    /// Unreplied flows evicted for a new one.
    pub evicted: AtomicU64,
    /// New flows refused because nothing could be evicted.
    pub refused: AtomicU64,
    /// Flows removed because their backend or Service went away.
    pub retired: AtomicU64,
    /// Finished flows (TIME_WAIT, closed) that made way for a new
    /// connection reusing their reply 5-tuple through another VIP.
    pub reused: AtomicU64,
    /// Flows expired by the sweeper, per state.
    pub expired: [AtomicU64; FlowState::ALL.len()],
}

/// A point-in-time summary for metrics and admin views.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConntrackSummary {
    pub flows: usize,
    pub unreplied: usize,
    pub max_flows: usize,
}

/// The connection-tracking table.
#[derive(Debug)]
pub struct Conntrack {
    flows: DashMap<FlowKey, FlowEntry, RandomState>,
    config: ConntrackConfig,
    /// Flows in the table (forward entries).
    live: AtomicUsize,
    /// Counts removals of replied flows, so that per-worker caches of
    /// flows ([`crate::pipeline`]) know when to forget what they hold.
    removals: AtomicU64,
    /// Flows no reply has been seen for.
    unreplied: AtomicUsize,
    /// Forward keys of flows inserted unreplied, oldest first; entries
    /// that got a reply or left are skipped when popped.
    unreplied_fifo: ArrayQueue<FlowKey>,
    stats: ConntrackStats,
}

impl Default for Conntrack {
    fn default() -> Self {
        Self::new(ConntrackConfig::default())
    }
}

/// Shards of the map: a power of two; more shards mean shorter lock holds
/// for the sweeper and fewer collisions between workers.
const SHARDS: usize = 256;

/// Ordering for the table's counters: they are statistics and limits that
/// tolerate a momentarily stale value; no other memory is published
/// through them.
const STAT: Ordering = Ordering::Relaxed;

impl Conntrack {
    /// Flows the table holds before it first grows. Small on purpose: a
    /// sparse table spreads a few live flows over many cache lines, which
    /// costs more per packet than the occasional growth of one shard.
    pub const INITIAL_FLOWS: usize = 4096;

    pub fn new(config: ConntrackConfig) -> Self {
        let max_flows = config.max_flows.max(1);
        Self {
            flows: DashMap::with_capacity_and_hasher_and_shard_amount(
                Self::INITIAL_FLOWS.min(max_flows) * 2,
                RandomState::new(),
                SHARDS,
            ),
            config: ConntrackConfig {
                max_flows,
                ..config
            },
            live: AtomicUsize::new(0),
            removals: AtomicU64::new(0),
            unreplied: AtomicUsize::new(0),
            unreplied_fifo: ArrayQueue::new(max_flows),
            stats: ConntrackStats::default(),
        }
    }

    pub fn config(&self) -> &ConntrackConfig {
        &self.config
    }

    pub fn stats(&self) -> &ConntrackStats {
        &self.stats
    }

    pub fn summary(&self) -> ConntrackSummary {
        ConntrackSummary {
            flows: self.live.load(STAT),
            unreplied: self.unreplied.load(STAT),
            max_flows: self.config.max_flows,
        }
    }

    /// Looks a packet's key up, marks the entry as seen at `now` and
    /// advances the flow's state by the packet's TCP flags (0 for UDP).
    #[inline]
    pub fn lookup(&self, key: &FlowKey, now: u32, flags: u8) -> Option<FlowHit> {
        let entry = self.flows.get(key)?;
        // Relaxed: last_seen is read only by the sweeper, which tolerates
        // a stale value; writing only on change keeps the line shared.
        if entry.last_seen.load(Ordering::Relaxed) != now {
            entry.last_seen.store(now, Ordering::Relaxed);
        }
        // Relaxed: the state byte orders nothing but itself; racing
        // transitions from two workers both move the flow forward.
        let bits = entry.state.load(Ordering::Relaxed);
        let next = next_state(bits, entry.direction, key.protocol, flags);
        if next == bits {
            return Some(entry.hit(bits));
        }
        let _ = entry
            .state
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
                Some(merge(
                    cur,
                    next_state(cur, entry.direction, key.protocol, flags),
                ))
            });
        let partner = entry.partner(key);
        let hit = entry.hit(next);
        drop(entry);
        // Keep the other direction's entry in the same state. REPLIED is
        // set on the forward entry exactly once (it is never cleared),
        // which is where unreplied flows are counted down.
        if let Some(other) = self.flows.get(&partner) {
            let prev = other
                .state
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |cur| {
                    Some(merge(cur, next))
                })
                .unwrap_or(next);
            if other.direction == Direction::Forward && prev & REPLIED == 0 && next & REPLIED != 0 {
                self.unreplied.fetch_sub(1, STAT);
            }
        }
        Some(hit)
    }

    /// Tracks a new flow from `forward` (client -> VIP) to `backend`.
    ///
    /// When the forward key is already tracked (another worker raced us),
    /// the existing backend wins and is returned, so both packets go to
    /// the same place. When the table is full, the oldest unreplied flow
    /// is evicted first; when none can be, the flow is refused.
    pub fn insert(
        &self,
        forward: FlowKey,
        backend: (Ipv4Addr, u16),
        now: u32,
        meta: FlowMeta,
    ) -> Result<FlowHit, InsertError> {
        let unreplied_cap = (self.config.max_flows * usize::from(self.config.unreplied_percent))
            .div_ceil(100)
            .max(1);
        let full = self.live.load(STAT) >= self.config.max_flows;
        let flooded = self.unreplied.load(STAT) >= unreplied_cap;
        if (full || flooded) && !self.evict_oldest_unreplied() {
            self.stats.refused.fetch_add(1, STAT);
            return Err(InsertError::Full);
        }

        let state =
            FlowState::initial(forward.protocol) as u8 | if meta.affinity { AFFINITY } else { 0 };
        let reply = FlowKey {
            src: backend.0,
            dst: forward.src,
            src_port: backend.1,
            dst_port: forward.src_port,
            protocol: forward.protocol,
        };
        // The reply key is taken when the client reuses a port with which
        // it reached the same backend through another VIP. If that older
        // connection is over (TIME_WAIT or closed), the client's new SYN
        // shows it is done with it: the old flow makes way. Otherwise the
        // replies could not be told apart and the new flow is refused.
        for _ in 0..2 {
            let finished = match self.flows.entry(reply) {
                Entry::Occupied(existing) => {
                    let e = existing.get();
                    if e.nat_ip == forward.dst && e.nat_port == forward.dst_port {
                        break;
                    }
                    // Relaxed: see `lookup`.
                    let old = FlowState::from_bits(e.state.load(Ordering::Relaxed));
                    if !matches!(old, FlowState::TcpTimeWait | FlowState::TcpClose) {
                        return Err(InsertError::ReplyClash);
                    }
                    true
                }
                Entry::Vacant(slot) => {
                    slot.insert(FlowEntry {
                        state: AtomicU8::new(state),
                        direction: Direction::Reply,
                        nat_ip: forward.dst,
                        nat_port: forward.dst_port,
                        last_seen: AtomicU32::new(now),
                        slot: meta.slot,
                    });
                    break;
                }
            };
            // The shard lock is released before the old flow is removed.
            if finished {
                self.remove(&reply);
                self.stats.reused.fetch_add(1, STAT);
            }
        }
        let (hit, inserted) = match self.flows.entry(forward) {
            Entry::Occupied(existing) => {
                let e = existing.get();
                // Relaxed: see `lookup`.
                (e.hit(e.state.load(Ordering::Relaxed)), false)
            }
            Entry::Vacant(slot) => {
                let e = slot.insert(FlowEntry {
                    state: AtomicU8::new(state),
                    direction: Direction::Forward,
                    nat_ip: backend.0,
                    nat_port: backend.1,
                    last_seen: AtomicU32::new(now),
                    slot: meta.slot,
                });
                (e.hit(state), true)
            }
        };
        if inserted {
            self.live.fetch_add(1, STAT);
            self.unreplied.fetch_add(1, STAT);
            self.stats.inserted.fetch_add(1, STAT);
            let mut key = forward;
            // A full queue holds mostly flows that got their reply long
            // ago: drop the oldest slot to make room.
            while let Err(back) = self.unreplied_fifo.push(key) {
                key = back;
                let _ = self.unreplied_fifo.pop();
            }
        }
        Ok(hit)
    }

    /// Evicts the oldest flow that has not been replied to. Queue slots of
    /// flows that have moved on (replied, or gone) are consumed on the way;
    /// each is consumed once, so the work is amortised over the inserts
    /// that queued them, and one call is bounded to keep a worker's pause
    /// short.
    fn evict_oldest_unreplied(&self) -> bool {
        for _ in 0..4096 {
            let Some(key) = self.unreplied_fifo.pop() else {
                return false;
            };
            // Relaxed: see `lookup`.
            let removed = self.flows.remove_if(&key, |_, e| {
                e.direction == Direction::Forward && e.state.load(Ordering::Relaxed) & REPLIED == 0
            });
            if let Some((key, entry)) = removed {
                self.forget(&key, &entry);
                self.stats.evicted.fetch_add(1, STAT);
                return true;
            }
        }
        false
    }

    /// Accounting and partner removal after a forward entry was removed.
    fn forget(&self, key: &FlowKey, forward: &FlowEntry) {
        self.flows.remove(&forward.partner(key));
        // Only flows that got a reply are ever cached by workers, so only
        // their removal needs to reach the caches (a SYN flood's evictions
        // do not). Release: a cache that sees the new count also sees the
        // entries gone from the map.
        // Relaxed (the state load): see `lookup`.
        if forward.state.load(Ordering::Relaxed) & REPLIED != 0 {
            self.removals.fetch_add(1, Ordering::Release);
        }
        self.live.fetch_sub(1, STAT);
        // Relaxed: see `lookup`.
        if forward.state.load(Ordering::Relaxed) & REPLIED == 0 {
            self.unreplied.fetch_sub(1, STAT);
        }
    }

    /// Removes a flow by either of its keys. Returns whether it existed.
    pub fn remove(&self, key: &FlowKey) -> bool {
        let Some((key, entry)) = self.flows.remove(key) else {
            return false;
        };
        match entry.direction {
            Direction::Forward => self.forget(&key, &entry),
            Direction::Reply => {
                let forward = entry.partner(&key);
                if let Some((fkey, fentry)) = self.flows.remove(&forward) {
                    self.forget(&fkey, &fentry);
                }
            }
        }
        true
    }

    /// How many replied flows were ever removed; changes whenever one is.
    #[inline]
    pub fn removals(&self) -> u64 {
        // Acquire: pairs with the Release in `forget`.
        self.removals.load(Ordering::Acquire)
    }

    /// Entries in the table (two per flow).
    pub fn entries(&self) -> usize {
        self.flows.len()
    }

    /// Removes every flow idle for longer than its state's timeout at
    /// `now`. Holds one shard's read lock at a time while it looks, then
    /// removes flows one by one. Returns the number of flows removed.
    pub fn sweep(&self, now: u32) -> usize {
        let timeouts = &self.config.timeouts;
        let mut expired = Vec::new();
        for item in self.flows.iter() {
            let e = item.value();
            if e.direction != Direction::Forward {
                continue;
            }
            // Relaxed: see `lookup`.
            let state = FlowState::from_bits(e.state.load(Ordering::Relaxed));
            let deadline = e
                .last_seen
                .load(Ordering::Relaxed)
                .saturating_add(timeouts.of(state));
            if deadline < now {
                expired.push((*item.key(), e.partner(item.key())));
            }
        }
        let mut removed = 0;
        for (forward, reply) in expired {
            // The reply direction may have been active all along (one-way
            // streams from the backend): the flow lives while either does.
            let reply_fresh = self.flows.get(&reply).is_some_and(|r| {
                let state = FlowState::from_bits(r.state.load(Ordering::Relaxed));
                r.last_seen
                    .load(Ordering::Relaxed)
                    .saturating_add(timeouts.of(state))
                    >= now
            });
            if reply_fresh {
                continue;
            }
            let gone = self.flows.remove_if(&forward, |_, e| {
                let state = FlowState::from_bits(e.state.load(Ordering::Relaxed));
                e.last_seen
                    .load(Ordering::Relaxed)
                    .saturating_add(timeouts.of(state))
                    < now
            });
            if let Some((key, entry)) = gone {
                let state = FlowState::from_bits(entry.state.load(Ordering::Relaxed));
                self.forget(&key, &entry);
                self.stats.expired[state as usize].fetch_add(1, STAT);
                removed += 1;
            }
        }
        removed
    }

    /// Removes every flow `retire` selects (given the forward key and the
    /// backend), e.g. because its backend or Service port went away.
    /// Returns the number of flows removed.
    pub fn retire(&self, retire: impl Fn(&FlowKey, (Ipv4Addr, u16)) -> bool) -> usize {
        let doomed: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|item| {
                let e = item.value();
                e.direction == Direction::Forward && retire(item.key(), (e.nat_ip, e.nat_port))
            })
            .map(|item| *item.key())
            .collect();
        let mut removed = 0;
        for key in doomed {
            if let Some((key, entry)) = self.flows.remove(&key) {
                self.forget(&key, &entry);
                removed += 1;
            }
        }
        self.stats.retired.fetch_add(removed as u64, STAT);
        removed
    }

    /// Visits every entry (for admin views and tests).
    pub fn for_each(&self, mut visit: impl FnMut(&FlowKey, FlowHit)) {
        for item in self.flows.iter() {
            let e = item.value();
            // Relaxed: see `lookup`.
            visit(item.key(), e.hit(e.state.load(Ordering::Relaxed)));
        }
    }
}

/// Applies a new state to an entry's bits: REPLIED, once set, stays.
#[inline]
fn merge(current: u8, next: u8) -> u8 {
    next | (current & REPLIED)
}

/// The state bits after a packet with `flags` travelling `direction`.
#[inline]
fn next_state(bits: u8, direction: Direction, protocol: Protocol, flags: u8) -> u8 {
    let state = FlowState::from_bits(bits);
    let mut flag_bits = bits & !STATE_MASK;
    if direction == Direction::Reply {
        flag_bits |= REPLIED;
    }
    let next = match protocol {
        Protocol::Udp => {
            if flag_bits & REPLIED != 0 {
                FlowState::UdpReplied
            } else {
                FlowState::UdpUnreplied
            }
        }
        Protocol::Tcp => {
            if flags & tcp_flags::RST != 0 {
                FlowState::TcpClose
            } else if direction == Direction::Forward
                && flags & tcp_flags::SYN != 0
                && flags & tcp_flags::ACK == 0
                && matches!(state, FlowState::TcpTimeWait | FlowState::TcpClose)
            {
                // The client reuses the port for a new connection.
                return (bits & (REPLIED | AFFINITY)) | FlowState::TcpSynSent as u8;
            } else {
                if flags & tcp_flags::FIN != 0 {
                    flag_bits |= match direction {
                        Direction::Forward => FIN_FORWARD,
                        Direction::Reply => FIN_REPLY,
                    };
                }
                let fins = flag_bits & (FIN_FORWARD | FIN_REPLY);
                if state == FlowState::TcpClose {
                    FlowState::TcpClose
                } else if fins == FIN_FORWARD | FIN_REPLY {
                    FlowState::TcpTimeWait
                } else if fins != 0 {
                    // One side closed; a packet from the other side that
                    // is not its own FIN means it stays open.
                    let other_side_spoke = match direction {
                        Direction::Forward => fins == FIN_REPLY,
                        Direction::Reply => fins == FIN_FORWARD,
                    };
                    if other_side_spoke || state == FlowState::TcpCloseWait {
                        FlowState::TcpCloseWait
                    } else {
                        FlowState::TcpFinWait
                    }
                } else if flag_bits & REPLIED != 0 {
                    FlowState::TcpEstablished
                } else {
                    FlowState::TcpSynSent
                }
            }
        }
    };
    flag_bits | next as u8
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcp_flags::{ACK, FIN, RST, SYN};

    fn key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> FlowKey {
        FlowKey {
            src: src.into(),
            dst: dst.into(),
            src_port: sport,
            dst_port: dport,
            protocol: Protocol::Tcp,
        }
    }

    const BACKEND: ([u8; 4], u16) = ([198, 18, 2, 11], 5678);

    fn forward(port: u16) -> FlowKey {
        key([198, 18, 0, 2], port, [198, 18, 100, 10], 8080)
    }

    fn reply(port: u16) -> FlowKey {
        key(BACKEND.0, BACKEND.1, [198, 18, 0, 2], port)
    }

    fn backend() -> (Ipv4Addr, u16) {
        (BACKEND.0.into(), BACKEND.1)
    }

    #[test]
    fn insert_tracks_both_directions() {
        let ct = Conntrack::default();
        let hit = ct
            .insert(forward(40000), backend(), 1, FlowMeta::default())
            .expect("insert");
        assert_eq!((hit.nat_ip, hit.nat_port), backend());
        assert_eq!(ct.entries(), 2);
        let f = ct.lookup(&forward(40000), 2, SYN).expect("forward entry");
        assert_eq!(f.direction, Direction::Forward);
        let r = ct.lookup(&reply(40000), 2, SYN | ACK).expect("reply entry");
        assert_eq!(
            (r.direction, r.nat_ip, r.nat_port),
            (Direction::Reply, Ipv4Addr::new(198, 18, 100, 10), 8080)
        );
        assert_eq!(ct.lookup(&forward(40000).reversed(), 2, 0), None);
    }

    #[test]
    fn first_backend_wins_a_race() {
        let ct = Conntrack::default();
        ct.insert(forward(40000), backend(), 1, FlowMeta::default())
            .expect("first insert");
        let again = ct
            .insert(
                forward(40000),
                (Ipv4Addr::new(198, 18, 2, 12), 5678),
                1,
                FlowMeta::default(),
            )
            .expect("second insert");
        assert_eq!(again.nat_ip, backend().0);
    }

    #[test]
    fn a_finished_flow_makes_way_for_a_reused_port() {
        let ct = Conntrack::default();
        let via_a = forward(40000);
        ct.insert(via_a, backend(), 1, FlowMeta::default())
            .expect("first");
        ct.lookup(&reply(40000), 1, SYN | ACK);
        ct.lookup(&via_a, 2, ACK | FIN);
        ct.lookup(&reply(40000), 2, ACK | FIN);
        // The same client port to the same backend through another VIP.
        let via_b = key([198, 18, 0, 2], 40000, [198, 18, 100, 11], 8080);
        let hit = ct
            .insert(via_b, backend(), 3, FlowMeta::default())
            .expect("reused");
        assert_eq!(hit.nat_ip, backend().0);
        assert!(
            ct.lookup(&via_a, 3, ACK).is_none(),
            "the finished flow is gone"
        );
        assert_eq!(
            ct.lookup(&reply(40000), 3, SYN | ACK).map(|h| h.nat_ip),
            Some(Ipv4Addr::new(198, 18, 100, 11)),
            "replies now belong to the new flow"
        );
        assert_eq!(ct.stats().reused.load(STAT), 1);
        assert_eq!(ct.summary().flows, 1);
    }

    #[test]
    fn reply_clash_is_reported() {
        let ct = Conntrack::default();
        ct.insert(forward(40000), backend(), 1, FlowMeta::default())
            .expect("first");
        let other_vip = key([198, 18, 0, 2], 40000, [198, 18, 100, 11], 80);
        assert_eq!(
            ct.insert(other_vip, backend(), 1, FlowMeta::default()),
            Err(InsertError::ReplyClash)
        );
    }

    /// Drives one connection through its TCP states with a synthetic
    /// clock, checking each state's timeout with the sweeper.
    #[test]
    fn tcp_state_machine_and_timeouts() {
        let t = Timeouts::default();
        let ct = Conntrack::default();
        let mut now = 1000;
        ct.insert(forward(1), backend(), now, FlowMeta::default())
            .expect("insert");
        let st = |ct: &Conntrack, k: &FlowKey, flags: u8, now: u32| {
            ct.lookup(k, now, flags).expect("tracked").state
        };
        assert_eq!(st(&ct, &forward(1), SYN, now), FlowState::TcpSynSent);
        assert_eq!(ct.summary().unreplied, 1);
        assert_eq!(
            st(&ct, &reply(1), SYN | ACK, now),
            FlowState::TcpEstablished
        );
        assert_eq!(ct.summary().unreplied, 0);
        assert_eq!(st(&ct, &forward(1), ACK, now), FlowState::TcpEstablished);

        // Established survives just under 24 h of silence, not just over.
        now += t.of(FlowState::TcpEstablished);
        assert_eq!(ct.sweep(now), 0);
        assert_eq!(st(&ct, &forward(1), ACK | FIN, now), FlowState::TcpFinWait);
        assert_eq!(st(&ct, &reply(1), ACK, now), FlowState::TcpCloseWait);
        now += t.of(FlowState::TcpCloseWait);
        assert_eq!(ct.sweep(now), 0, "close-wait lasts 1 h");
        assert_eq!(st(&ct, &reply(1), ACK | FIN, now), FlowState::TcpTimeWait);
        assert_eq!(st(&ct, &forward(1), ACK, now), FlowState::TcpTimeWait);
        assert_eq!(ct.sweep(now + t.of(FlowState::TcpTimeWait)), 0);
        assert_eq!(ct.sweep(now + t.of(FlowState::TcpTimeWait) + 1), 1);
        assert_eq!(ct.entries(), 0);
        assert_eq!(
            ct.stats().expired[FlowState::TcpTimeWait as usize].load(STAT),
            1
        );
    }

    #[test]
    fn rst_closes_and_syn_reopens() {
        let ct = Conntrack::default();
        ct.insert(forward(2), backend(), 0, FlowMeta::default())
            .expect("insert");
        ct.lookup(&reply(2), 0, SYN | ACK);
        assert_eq!(
            ct.lookup(&reply(2), 1, RST).map(|h| h.state),
            Some(FlowState::TcpClose)
        );
        assert_eq!(ct.sweep(1 + 10), 0);
        // A new SYN on the same 5-tuple starts over (same backend).
        assert_eq!(
            ct.lookup(&forward(2), 5, SYN).map(|h| h.state),
            Some(FlowState::TcpSynSent)
        );
        assert_eq!(ct.sweep(5 + 120 + 1), 1, "SYN sent expires after 120 s");
    }

    #[test]
    fn syn_sent_expires_after_120s() {
        let ct = Conntrack::default();
        ct.insert(forward(3), backend(), 0, FlowMeta::default())
            .expect("insert");
        assert_eq!(ct.sweep(120), 0);
        assert_eq!(ct.sweep(121), 1);
        assert_eq!(
            ct.summary(),
            ConntrackSummary {
                flows: 0,
                unreplied: 0,
                max_flows: 1 << 20
            }
        );
    }

    #[test]
    fn udp_unreplied_then_replied() {
        let ct = Conntrack::default();
        let mut f = forward(4);
        f.protocol = Protocol::Udp;
        let mut r = reply(4);
        r.protocol = Protocol::Udp;
        ct.insert(f, backend(), 0, FlowMeta::default())
            .expect("insert");
        assert_eq!(
            ct.lookup(&f, 0, 0).map(|h| h.state),
            Some(FlowState::UdpUnreplied)
        );
        assert_eq!(ct.sweep(30), 0);
        assert_eq!(
            ct.lookup(&r, 30, 0).map(|h| h.state),
            Some(FlowState::UdpReplied)
        );
        assert_eq!(
            ct.lookup(&f, 30, 0).map(|h| h.state),
            Some(FlowState::UdpReplied)
        );
        assert_eq!(ct.sweep(30 + 120), 0);
        assert_eq!(ct.sweep(30 + 121), 1);
    }

    #[test]
    fn one_way_stream_from_backend_keeps_the_flow() {
        let ct = Conntrack::default();
        ct.insert(forward(5), backend(), 0, FlowMeta::default())
            .expect("insert");
        ct.lookup(&reply(5), 0, SYN | ACK);
        ct.lookup(&forward(5), 0, ACK);
        // Only the backend talks for two days.
        ct.lookup(&reply(5), 24 * 3600, ACK);
        ct.lookup(&reply(5), 47 * 3600, ACK);
        assert_eq!(ct.sweep(48 * 3600), 0);
        assert_eq!(ct.entries(), 2);
    }

    #[test]
    fn full_table_evicts_unreplied_never_established() {
        let ct = Conntrack::new(ConntrackConfig {
            max_flows: 4,
            unreplied_percent: 100,
            timeouts: Timeouts::default(),
        });
        // Two established flows.
        for p in [10, 11] {
            ct.insert(forward(p), backend(), 0, FlowMeta::default())
                .expect("insert");
            ct.lookup(&reply(p), 0, SYN | ACK);
        }
        // Two unreplied ones fill the table.
        ct.insert(forward(20), backend(), 0, FlowMeta::default())
            .expect("insert");
        ct.insert(forward(21), backend(), 0, FlowMeta::default())
            .expect("insert");
        // A fifth evicts the oldest unreplied (20), then 21, then refuses.
        ct.insert(forward(22), backend(), 1, FlowMeta::default())
            .expect("evicts 20");
        assert!(ct.lookup(&forward(20), 1, 0).is_none());
        ct.insert(forward(23), backend(), 1, FlowMeta::default())
            .expect("evicts 21");
        ct.insert(forward(24), backend(), 1, FlowMeta::default())
            .expect("evicts 22");
        assert_eq!(ct.summary().flows, 4);
        for p in [10, 11] {
            assert_eq!(
                ct.lookup(&forward(p), 2, ACK).map(|h| h.state),
                Some(FlowState::TcpEstablished),
                "established flow {p} survives"
            );
        }
        // Reply to the unreplied ones: now nothing may be evicted.
        ct.lookup(&reply(24), 2, SYN | ACK);
        ct.lookup(&reply(23), 2, SYN | ACK);
        assert_eq!(
            ct.insert(forward(30), backend(), 3, FlowMeta::default()),
            Err(InsertError::Full)
        );
        assert_eq!(ct.stats().refused.load(STAT), 1);
        assert_eq!(ct.stats().evicted.load(STAT), 3);
    }

    #[test]
    fn flood_guard_caps_unreplied_share() {
        let ct = Conntrack::new(ConntrackConfig {
            max_flows: 100,
            unreplied_percent: 10,
            timeouts: Timeouts::default(),
        });
        ct.insert(forward(1), backend(), 0, FlowMeta::default())
            .expect("insert");
        ct.lookup(&reply(1), 0, SYN | ACK);
        for p in 100..1100 {
            ct.insert(forward(p), backend(), 0, FlowMeta::default())
                .expect("flood flows evict each other");
        }
        let s = ct.summary();
        assert_eq!(s.unreplied, 10, "{s:?}");
        assert_eq!(s.flows, 11);
        assert!(ct.lookup(&forward(1), 1, ACK).is_some());
    }

    #[test]
    fn retire_removes_both_directions() {
        let ct = Conntrack::default();
        ct.insert(forward(7), backend(), 0, FlowMeta::default())
            .expect("insert");
        ct.insert(
            forward(8),
            (Ipv4Addr::new(198, 18, 2, 12), 5678),
            0,
            FlowMeta::default(),
        )
        .expect("insert");
        let gone = ct.retire(|_, (ip, _)| ip == backend().0);
        assert_eq!(gone, 1);
        assert_eq!(ct.entries(), 2);
        assert!(ct.lookup(&reply(7), 0, 0).is_none());
        assert!(ct.remove(&forward(8)));
        assert_eq!(ct.entries(), 0);
        assert_eq!(ct.summary().flows, 0);
    }
}
