//! What one scrape reads: the workers' counters and published histograms,
//! the table's size, the connection table's numbers, the control
//! plane's record and the per-Service-port counters, copied at one moment
//! so that `/metrics` and the admin views are computed from plain values.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use cipgw_config::Protocol;

use super::{ControlSnapshot, LatencyHistograms, ServiceTotals, WorkerTelemetry};
use crate::conntrack::{Conntrack, EvictionClass, FlowState};
use crate::counters::{DropReason, SocketStat, WorkerCounters};
use crate::table::CompiledTable;

/// A copy of one worker's [`WorkerCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterValues {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub forwarded: u64,
    pub replies: u64,
    pub new_flows: u64,
    pub neighbour_resolved: u64,
    pub passed: u64,
    pub adopted_flows: u64,
    pub stateless_replies: u64,
    pub icmp_errors: u64,
    pub fragments: u64,
    pub flow_cache_bypasses: u64,
    pub drops: [u64; DropReason::COUNT],
    pub socket: [u64; SocketStat::COUNT],
}

// By hand: std's arrays are `Default` up to 32 elements only.
impl Default for CounterValues {
    fn default() -> Self {
        Self {
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 0,
            tx_bytes: 0,
            forwarded: 0,
            replies: 0,
            new_flows: 0,
            neighbour_resolved: 0,
            passed: 0,
            adopted_flows: 0,
            stateless_replies: 0,
            icmp_errors: 0,
            fragments: 0,
            flow_cache_bypasses: 0,
            drops: [0; DropReason::COUNT],
            socket: [0; SocketStat::COUNT],
        }
    }
}

impl CounterValues {
    pub fn read(c: &WorkerCounters) -> Self {
        Self {
            rx_packets: c.rx_packets.get(),
            rx_bytes: c.rx_bytes.get(),
            tx_packets: c.tx_packets.get(),
            tx_bytes: c.tx_bytes.get(),
            forwarded: c.forwarded.get(),
            replies: c.replies.get(),
            new_flows: c.new_flows.get(),
            neighbour_resolved: c.neighbour_resolved.get(),
            passed: c.passed.get(),
            adopted_flows: c.adopted_flows.get(),
            stateless_replies: c.stateless_replies.get(),
            icmp_errors: c.icmp_errors.get(),
            fragments: c.fragments.get(),
            flow_cache_bypasses: c.flow_cache_bypasses.get(),
            drops: std::array::from_fn(|i| c.drops[i].get()),
            socket: std::array::from_fn(|i| c.socket[i].get()),
        }
    }

    /// Adds `other` (wrapping, like the counters themselves).
    pub fn add(&mut self, other: &CounterValues) {
        self.rx_packets = self.rx_packets.wrapping_add(other.rx_packets);
        self.rx_bytes = self.rx_bytes.wrapping_add(other.rx_bytes);
        self.tx_packets = self.tx_packets.wrapping_add(other.tx_packets);
        self.tx_bytes = self.tx_bytes.wrapping_add(other.tx_bytes);
        self.forwarded = self.forwarded.wrapping_add(other.forwarded);
        self.replies = self.replies.wrapping_add(other.replies);
        self.new_flows = self.new_flows.wrapping_add(other.new_flows);
        self.neighbour_resolved = self
            .neighbour_resolved
            .wrapping_add(other.neighbour_resolved);
        self.passed = self.passed.wrapping_add(other.passed);
        self.adopted_flows = self.adopted_flows.wrapping_add(other.adopted_flows);
        self.stateless_replies = self.stateless_replies.wrapping_add(other.stateless_replies);
        self.icmp_errors = self.icmp_errors.wrapping_add(other.icmp_errors);
        self.fragments = self.fragments.wrapping_add(other.fragments);
        self.flow_cache_bypasses = self
            .flow_cache_bypasses
            .wrapping_add(other.flow_cache_bypasses);
        for (d, o) in self.socket.iter_mut().zip(other.socket) {
            *d = d.wrapping_add(o);
        }
        for (d, o) in self.drops.iter_mut().zip(other.drops) {
            *d = d.wrapping_add(o);
        }
    }

    pub fn drops_of(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    pub fn total_drops(&self) -> u64 {
        self.drops.iter().fold(0, |a, d| a.wrapping_add(*d))
    }
}

/// One worker at scrape time.
#[derive(Debug, Clone)]
pub struct WorkerSnapshot {
    pub core: usize,
    pub counters: CounterValues,
    pub latency: LatencyHistograms,
}

impl WorkerSnapshot {
    pub fn read(t: &WorkerTelemetry) -> Self {
        Self {
            core: t.core,
            counters: CounterValues::read(&t.counters),
            latency: t.latency.snapshot(),
        }
    }
}

/// Size of the published table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableStats {
    pub generation: u64,
    /// Services in the model (with a VIP or not).
    pub services: usize,
    /// Services with a VIP.
    pub forwarded_services: usize,
    /// VIP:port/protocol entries.
    pub vip_ports: usize,
    /// Endpoint address:port/protocol triples of forwarded Services.
    pub endpoints: usize,
}

impl TableStats {
    pub fn of(table: &CompiledTable) -> Self {
        Self {
            generation: table.generation(),
            services: table.model().services.len(),
            forwarded_services: table.model().forwarded().count(),
            vip_ports: table.len(),
            endpoints: table.backends().count(),
        }
    }
}

/// The connection table's size and what left it, at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConntrackNumbers {
    /// Map entries: two per flow (forward and reply).
    pub entries: usize,
    pub flows: usize,
    pub unreplied: usize,
    pub max_flows: usize,
    pub inserted: u64,
    /// Flows evicted for new ones, per class (as [`EvictionClass::ALL`]).
    pub evicted: [u64; EvictionClass::ALL.len()],
    pub refused: u64,
    pub retired: u64,
    /// Flows an operator deleted (`cipgw conntrack --delete`).
    pub deleted: u64,
    /// Finished flows replaced by a new SYN on the same 5-tuple.
    pub replaced: u64,
    /// Flows expired by the sweeper, per state (as [`FlowState::ALL`]).
    pub expired: [u64; FlowState::ALL.len()],
}

impl ConntrackNumbers {
    /// Adds another table's numbers (the other family's): the gateway's
    /// totals, and its capacity, over both.
    pub fn add(&mut self, other: &Self) {
        self.entries += other.entries;
        self.flows += other.flows;
        self.unreplied += other.unreplied;
        self.max_flows += other.max_flows;
        self.inserted += other.inserted;
        for (a, b) in self.evicted.iter_mut().zip(other.evicted) {
            *a += b;
        }
        self.refused += other.refused;
        self.retired += other.retired;
        self.deleted += other.deleted;
        self.replaced += other.replaced;
        for (a, b) in self.expired.iter_mut().zip(other.expired) {
            *a += b;
        }
    }

    pub fn read<A: crate::family::IpFamily>(ct: &Conntrack<A>) -> Self {
        let summary = ct.summary();
        let stats = ct.stats();
        // Relaxed loads: statistics, each read on its own.
        Self {
            entries: ct.entries(),
            flows: summary.flows,
            unreplied: summary.unreplied,
            max_flows: summary.max_flows,
            inserted: stats.inserted.get(),
            evicted: std::array::from_fn(|i| stats.evicted[i].get()),
            refused: stats.refused.get(),
            retired: stats.retired.load(Ordering::Relaxed),
            deleted: stats.deleted.load(Ordering::Relaxed),
            replaced: stats.replaced.load(Ordering::Relaxed),
            expired: std::array::from_fn(|i| stats.expired[i].load(Ordering::Relaxed)),
        }
    }

    pub fn total_expired(&self) -> u64 {
        self.expired.iter().sum()
    }

    pub fn total_evicted(&self) -> u64 {
        self.evicted.iter().sum()
    }
}

/// Counters of one service port, for the exposition.
#[derive(Debug, Clone)]
pub struct ServicePortSnapshot {
    pub service: String,
    /// The Service's primary VIP.
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub totals: ServiceTotals,
}

/// Everything one scrape exports.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub version: &'static str,
    pub started: SystemTime,
    pub ready: bool,
    pub workers: Vec<WorkerSnapshot>,
    pub table: TableStats,
    pub conntrack: ConntrackNumbers,
    pub control: ControlSnapshot,
    /// Per service port; empty while the pipeline does not count them.
    pub services: Vec<ServicePortSnapshot>,
    /// The process's CPU, memory and descriptors (`None` without /proc).
    pub process: Option<super::process::ProcessNumbers>,
    /// Source NAT's ports in use, per address; empty without `--snat`.
    pub snat: SnatNumbers,
    /// The DNS responders', when the gateway answers DNS.
    pub dns: Option<super::DnsSnapshot>,
}

/// Source NAT at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnatNumbers {
    /// The port range, when source NAT is on.
    pub ports: Option<std::ops::RangeInclusive<u16>>,
    /// Flows holding a port, per SNAT address.
    pub in_use: Vec<(IpAddr, u64)>,
}

impl SnatNumbers {
    pub fn read<A: crate::family::IpFamily>(ct: &Conntrack<A>) -> Self {
        Self {
            ports: ct.snat_ports(),
            in_use: ct
                .snat_ports_in_use()
                .into_iter()
                .map(|(a, n)| (a.into(), n))
                .collect(),
        }
    }

    /// Adds the other family's addresses.
    pub fn add(&mut self, other: &Self) {
        self.ports = self.ports.clone().or_else(|| other.ports.clone());
        self.in_use.extend_from_slice(&other.in_use);
    }
}

impl Snapshot {
    /// All workers' counters summed.
    pub fn totals(&self) -> CounterValues {
        let mut total = CounterValues::default();
        for w in &self.workers {
            total.add(&w.counters);
        }
        total
    }
}
