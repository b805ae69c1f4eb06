//! What the gateway measures, and its Prometheus exposition.
//!
//! Hot-path numbers are never shared between workers while they are
//! written: counters are per worker ([`WorkerCounters`], and
//! [`ServiceCounters`] per service port), latency and batch-size
//! histograms are recorded into a worker-local [`WorkerLatency`] and
//! published into a shared, locked copy at most every [`FLUSH_EVERY`]
//! (with `try_lock`: a worker never waits for a scrape). A scrape takes a
//! [`Snapshot`] of everything (sums the workers' counters, clones the
//! published histograms) and encodes it through a
//! `Registry::with_prefix("cipgw")` built for that scrape, so no metric
//! object lives on the packet path.
//!
//! The text is OpenMetrics 1.0 (what `prometheus-client` writes and
//! Prometheus asks for first); [`exposition::parse`] reads it back
//! strictly, for tests and tools that scrape a gateway.
//!
//! Latencies are exported as Prometheus histograms with fixed buckets;
//! quantiles (p50/p99/p99.9) of the same data are in `/api/status`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cipgw_config::{Protocol, ServiceName, ServiceTable};
use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, NoLabelSet,
};
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::conntrack::{Conntrack, EvictionClass, FlowState};
use crate::counters::{DropReason, ServiceCounters, SocketStat, WorkerCounters, MAX_SERVICE_SLOTS};
use crate::table::CompiledTable;

/// How often a worker publishes its local histograms, at most.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// One packet in this many has its pipeline time measured (two clock
/// reads; about 20 ns each with the vDSO).
pub const PACKET_SAMPLE_EVERY: u32 = 64;

/// Significant decimal digits the histograms keep: values are exact to
/// within 1%, and a histogram stays small (a few thousand counts) so
/// that publishing and scraping it is cheap.
const SIGFIG: u8 = 2;

/// Largest duration the histograms tell apart (longer ones saturate).
const MAX_NANOS: u64 = 60_000_000_000;
/// Largest batch size the batch-size histogram tells apart.
const MAX_BATCH: u64 = 65_536;

/// Bucket upper bounds of the per-packet and per-batch histograms, in
/// nanoseconds (exported in seconds).
const LATENCY_BUCKETS_NS: [u64; 15] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];
/// Bucket upper bounds of the batch-size histogram, in frames.
const BATCH_SIZE_BUCKETS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];
/// Bucket upper bounds of the control sync histogram, in nanoseconds.
const SYNC_BUCKETS_NS: [u64; 12] = [
    1_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// An hdrhistogram with the exact sum of what it recorded beside it
/// (Prometheus histograms carry `_sum`; hdrhistogram keeps counts only).
#[derive(Debug, Clone)]
pub struct Recorder {
    hist: Histogram<u64>,
    sum: u64,
}

impl Recorder {
    fn new(high: u64) -> Self {
        // Static bounds that hdrhistogram accepts (1 <= 2 * 1 <= high,
        // sigfig <= 5): this cannot fail.
        let hist = Histogram::new_with_bounds(1, high, SIGFIG)
            .unwrap_or_else(|e| unreachable!("static histogram bounds rejected: {e:?}"));
        Self { hist, sum: 0 }
    }

    /// A recorder of durations in nanoseconds.
    pub fn nanos() -> Self {
        Self::new(MAX_NANOS)
    }

    /// A recorder of batch sizes in frames.
    pub fn frames() -> Self {
        Self::new(MAX_BATCH)
    }

    /// Records one value; out-of-range values saturate. Never allocates.
    #[inline]
    pub fn record(&mut self, value: u64) {
        self.hist.saturating_record(value);
        self.sum = self.sum.wrapping_add(value);
    }

    /// Adds everything `other` recorded. Both have the same bounds, so
    /// this neither fails nor allocates.
    fn merge(&mut self, other: &Recorder) {
        if self.hist.add(&other.hist).is_err() {
            // Only possible with different bounds, which the
            // constructors rule out; the sample is lost, nothing else.
            debug_assert!(false, "merging histograms of different bounds");
        }
        self.sum = self.sum.wrapping_add(other.sum);
    }

    fn reset(&mut self) {
        self.hist.reset();
        self.sum = 0;
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// The value at quantile `q` (0..=1), 0 when nothing was recorded.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.hist.is_empty() {
            0
        } else {
            self.hist.value_at_quantile(q)
        }
    }

    /// Non-cumulative counts per bucket `(upper bound / unit, count)`,
    /// ending with the `+Inf` bucket, as `encode_histogram` wants them.
    fn buckets(&self, bounds: &[u64], unit: f64) -> Vec<(f64, u64)> {
        let mut out = Vec::with_capacity(bounds.len() + 1);
        let mut below = 0;
        for &bound in bounds {
            let upto = self.hist.count_between(0, bound).max(below);
            out.push((bound as f64 / unit, upto - below));
            below = upto;
        }
        out.push((f64::INFINITY, self.count().saturating_sub(below)));
        out
    }
}

/// One worker's batch and latency histograms.
#[derive(Debug, Clone)]
pub struct LatencyHistograms {
    /// Time to run one RX batch through the pipeline, nanoseconds.
    pub batch: Recorder,
    /// Pipeline time of one sampled packet, nanoseconds.
    pub packet: Recorder,
    /// Frames per RX batch.
    pub batch_size: Recorder,
}

impl Default for LatencyHistograms {
    fn default() -> Self {
        Self {
            batch: Recorder::nanos(),
            packet: Recorder::nanos(),
            batch_size: Recorder::frames(),
        }
    }
}

impl LatencyHistograms {
    fn merge(&mut self, other: &LatencyHistograms) {
        self.batch.merge(&other.batch);
        self.packet.merge(&other.packet);
        self.batch_size.merge(&other.batch_size);
    }

    fn reset(&mut self) {
        self.batch.reset();
        self.packet.reset();
        self.batch_size.reset();
    }
}

/// The histograms a worker has published: what scrapes read.
#[derive(Debug, Default)]
pub struct SharedLatency(Mutex<LatencyHistograms>);

impl SharedLatency {
    /// A copy of everything published so far.
    pub fn snapshot(&self) -> LatencyHistograms {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A worker's own histograms: recorded without locks or allocation, and
/// published into its [`SharedLatency`] by [`WorkerLatency::flush_if_due`].
#[derive(Debug)]
pub struct WorkerLatency {
    local: LatencyHistograms,
    shared: Arc<SharedLatency>,
    next_flush: Instant,
    until_sample: u32,
    dirty: bool,
}

impl WorkerLatency {
    pub fn new(shared: Arc<SharedLatency>) -> Self {
        Self {
            local: LatencyHistograms::default(),
            shared,
            next_flush: Instant::now() + FLUSH_EVERY,
            until_sample: 1,
            dirty: false,
        }
    }

    /// Records one RX batch: its size and how long it took.
    #[inline]
    pub fn record_batch(&mut self, frames: usize, elapsed: Duration) {
        self.local.batch_size.record(frames as u64);
        self.local.batch.record(nanos(elapsed));
        self.dirty = true;
    }

    /// Runs `process` (one packet's work) and, for one packet in
    /// [`PACKET_SAMPLE_EVERY`], records how long it took.
    #[inline]
    pub fn time_packet<T>(&mut self, process: impl FnOnce() -> T) -> T {
        self.until_sample -= 1;
        if self.until_sample != 0 {
            return process();
        }
        self.until_sample = PACKET_SAMPLE_EVERY;
        let started = Instant::now();
        let out = process();
        self.record_packet(started.elapsed());
        out
    }

    /// Records one packet's latency measured by the caller.
    #[inline]
    pub fn record_packet(&mut self, elapsed: Duration) {
        self.local.packet.record(nanos(elapsed));
        self.dirty = true;
    }

    /// Publishes the local histograms when [`FLUSH_EVERY`] has passed
    /// since the last time. Call once per loop iteration with the time
    /// the loop already read.
    #[inline]
    pub fn flush_if_due(&mut self, now: Instant) {
        if now >= self.next_flush {
            self.next_flush = now + FLUSH_EVERY;
            self.flush();
        }
    }

    /// Publishes now unless a scrape holds the lock (then the samples
    /// stay local until the next flush). Returns whether it published.
    pub fn flush(&mut self) -> bool {
        if !self.dirty {
            return true;
        }
        let mut shared = match self.shared.0.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        shared.merge(&self.local);
        drop(shared);
        self.local.reset();
        self.dirty = false;
        true
    }
}

impl Drop for WorkerLatency {
    fn drop(&mut self) {
        if self.dirty {
            let mut shared = self.shared.0.lock().unwrap_or_else(PoisonError::into_inner);
            shared.merge(&self.local);
        }
    }
}

/// What one worker exposes to scrapes. The daemon creates one per
/// worker, hands `counters` to its pipeline and
/// [`WorkerTelemetry::latency_recorder`] to its loop, and registers the
/// telemetry with the admin endpoint.
#[derive(Debug, Clone)]
pub struct WorkerTelemetry {
    /// The core the worker is pinned to; its `worker` label.
    pub core: usize,
    pub counters: Arc<WorkerCounters>,
    pub latency: Arc<SharedLatency>,
}

impl WorkerTelemetry {
    pub fn new(core: usize) -> Self {
        Self {
            core,
            counters: Arc::new(WorkerCounters::default()),
            latency: Arc::new(SharedLatency::default()),
        }
    }

    /// The worker-local recorder publishing into this telemetry.
    pub fn latency_recorder(&self) -> WorkerLatency {
        WorkerLatency::new(Arc::clone(&self.latency))
    }
}

/// Summed counters of one service port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceTotals {
    pub packets: u64,
    pub bytes: u64,
    pub flows: u64,
}

impl ServiceTotals {
    /// What `counters` counted at `slot` (zero when it has no slot).
    fn of(counters: &ServiceCounters, slot: u32) -> Self {
        counters.get(slot).map_or_else(Self::default, |c| Self {
            packets: c.packets.get(),
            bytes: c.bytes.get(),
            flows: c.flows.get(),
        })
    }

    fn add(&mut self, other: ServiceTotals) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
        self.flows = self.flows.wrapping_add(other.flows);
    }

    fn since(self, base: ServiceTotals) -> ServiceTotals {
        ServiceTotals {
            packets: self.packets.wrapping_sub(base.packets),
            bytes: self.bytes.wrapping_sub(base.bytes),
            flows: self.flows.wrapping_sub(base.flows),
        }
    }
}

/// A service port as counters know it: Service, port and protocol.
type PortKey = (ServiceName, u16, Protocol);

/// Per-service-port counting across table generations.
///
/// Each forwarded service port gets a stable slot when a table that has
/// it is compiled ([`ServiceStats::assign`], control thread), keeps it for
/// as long as tables have it, and its slot is reused after it is gone.
/// A reused slot starts from zero: the sum it had is kept as its base.
/// Workers count into their own [`ServiceCounters`] at the slot the
/// compiled table (new flows) or the conntrack entry (established flows)
/// carries. Packets of a removed port's flows that are still tracked when
/// its slot is reused count for the new owner, so conntrack should drop a
/// removed port's flows when the table that removed it is published.
#[derive(Debug, Default)]
pub struct ServiceStats {
    state: Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    slots: HashMap<PortKey, u32>,
    free: Vec<u32>,
    /// Slots ever handed out: `0..next`.
    next: u32,
    /// Per slot: what it had counted when its current port got it.
    base: Vec<ServiceTotals>,
    workers: Vec<Arc<ServiceCounters>>,
}

impl SlotState {
    fn sum(&self, slot: u32) -> ServiceTotals {
        let mut total = ServiceTotals::default();
        for w in &self.workers {
            total.add(ServiceTotals::of(w, slot));
        }
        total
    }
}

/// The slot of every forwarded port of one table, by position in the
/// model: `get(service index, port index)`.
#[derive(Debug, Clone, Default)]
pub struct PortSlots {
    slots: Box<[Box<[Option<u32>]>]>,
}

impl PortSlots {
    pub fn get(&self, service: usize, port: usize) -> Option<u32> {
        *self.slots.get(service)?.get(port)?
    }
}

impl ServiceStats {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new worker's counters (give them to its pipeline).
    pub fn add_worker(&self) -> Arc<ServiceCounters> {
        let mut state = self.lock();
        let counters = Arc::new(ServiceCounters::new());
        counters.ensure(state.next as usize);
        state.workers.push(Arc::clone(&counters));
        counters
    }

    /// Gives every forwarded port of `model` a slot (keeping the slots of
    /// ports that had one), frees the slots of ports that are gone, and
    /// makes sure every worker has counters for all of them. Call on the
    /// control thread before publishing the table compiled from `model`.
    pub fn assign(&self, model: &ServiceTable) -> PortSlots {
        let mut state = self.lock();
        let wanted: HashSet<PortKey> = model
            .forwarded()
            .flat_map(|(s, _)| s.ports.iter().map(|p| (s.name.clone(), p.port, p.protocol)))
            .collect();
        // Ports that are gone give their slots back first, so that new
        // ports reuse them.
        let gone: Vec<PortKey> = state
            .slots
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(slot) = state.slots.remove(&key) {
                state.free.push(slot);
            }
        }
        let mut slots = Vec::with_capacity(model.services.len());
        for service in &model.services {
            let forwarded = service.cluster_ip.vip().is_some();
            let mut ports = Vec::with_capacity(service.ports.len());
            for port in &service.ports {
                let key = (service.name.clone(), port.port, port.protocol);
                let slot = match state.slots.get(&key) {
                    _ if !forwarded => None,
                    Some(&slot) => Some(slot),
                    None => {
                        let slot = take_slot(&mut state);
                        if let Some(slot) = slot {
                            state.slots.insert(key, slot);
                        }
                        slot
                    }
                };
                ports.push(slot);
            }
            slots.push(ports.into_boxed_slice());
        }
        let next = state.next as usize;
        for w in &state.workers {
            w.ensure(next);
        }
        PortSlots {
            slots: slots.into_boxed_slice(),
        }
    }

    /// The counters of a service port since it got its slot, summed over
    /// workers; `None` when the port has no slot.
    pub fn totals(
        &self,
        service: &ServiceName,
        port: u16,
        protocol: Protocol,
    ) -> Option<ServiceTotals> {
        let state = self.lock();
        let slot = *state.slots.get(&(service.clone(), port, protocol))?;
        let base = state.base.get(slot as usize).copied().unwrap_or_default();
        Some(state.sum(slot).since(base))
    }
}

/// A free slot (a released one first, with its base reset to what it
/// has counted so far), or `None` when all are in use.
fn take_slot(state: &mut SlotState) -> Option<u32> {
    if let Some(slot) = state.free.pop() {
        let base = state.sum(slot);
        state.base[slot as usize] = base;
        return Some(slot);
    }
    if state.next as usize >= MAX_SERVICE_SLOTS {
        return None;
    }
    let slot = state.next;
    state.next += 1;
    state.base.push(ServiceTotals::default());
    Some(slot)
}

/// The outcome of the control plane's last table sync.
#[derive(Debug, Clone)]
pub struct LastSync {
    pub at: SystemTime,
    pub duration: Duration,
    pub ok: bool,
}

/// The control plane's last error.
#[derive(Debug, Clone)]
pub struct LastError {
    pub at: SystemTime,
    pub message: String,
}

#[derive(Debug)]
struct ControlRecord {
    sync_duration: Recorder,
    last_sync: Option<LastSync>,
    last_error: Option<LastError>,
}

/// What the control thread reports about table syncs. Written on the
/// control path only.
#[derive(Debug)]
pub struct ControlMetrics {
    syncs_ok: AtomicU64,
    syncs_failed: AtomicU64,
    record: Mutex<ControlRecord>,
}

impl Default for ControlMetrics {
    fn default() -> Self {
        Self {
            syncs_ok: AtomicU64::new(0),
            syncs_failed: AtomicU64::new(0),
            record: Mutex::new(ControlRecord {
                sync_duration: Recorder::nanos(),
                last_sync: None,
                last_error: None,
            }),
        }
    }
}

/// A copy of [`ControlMetrics`] for one scrape.
#[derive(Debug, Clone)]
pub struct ControlSnapshot {
    pub syncs_ok: u64,
    pub syncs_failed: u64,
    pub sync_duration: Recorder,
    pub last_sync: Option<LastSync>,
    pub last_error: Option<LastError>,
}

impl ControlMetrics {
    /// Records one sync of the service table from its source (load,
    /// translate, compile, publish) and how it ended:
    /// `control.record_sync(started.elapsed(), &result)`.
    pub fn record_sync<T, E: fmt::Display>(&self, duration: Duration, result: &Result<T, E>) {
        let at = SystemTime::now();
        let mut record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        record.sync_duration.record(nanos(duration));
        record.last_sync = Some(LastSync {
            at,
            duration,
            ok: result.is_ok(),
        });
        match result {
            Ok(_) => {
                // Relaxed: a statistic; nothing else is published with it.
                self.syncs_ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // Relaxed: as above.
                self.syncs_failed.fetch_add(1, Ordering::Relaxed);
                record.last_error = Some(LastError {
                    at,
                    message: format!("{e:#}"),
                });
            }
        }
    }

    /// Records input the source could not turn into a table (an invalid
    /// control file, say): a failed sync with no duration to speak of.
    pub fn record_invalid(&self, error: &dyn fmt::Display) {
        // Relaxed: a statistic.
        self.syncs_failed.fetch_add(1, Ordering::Relaxed);
        self.record_error(error);
    }

    /// Records a control-plane error that is no failed sync (a watch
    /// that lost its API server): only the last error changes.
    pub fn record_error(&self, error: &dyn fmt::Display) {
        let mut record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        record.last_error = Some(LastError {
            at: SystemTime::now(),
            message: format!("{error:#}"),
        });
    }

    pub fn snapshot(&self) -> ControlSnapshot {
        let record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        // Relaxed loads: statistics, each read on its own.
        ControlSnapshot {
            syncs_ok: self.syncs_ok.load(Ordering::Relaxed),
            syncs_failed: self.syncs_failed.load(Ordering::Relaxed),
            sync_duration: record.sync_duration.clone(),
            last_sync: record.last_sync.clone(),
            last_error: record.last_error.clone(),
        }
    }
}

/// A copy of one worker's [`WorkerCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
    pub drops: [u64; DropReason::COUNT],
    pub socket: [u64; SocketStat::COUNT],
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
    /// Finished flows replaced by a new SYN on the same 5-tuple.
    pub replaced: u64,
    /// Flows expired by the sweeper, per state (as [`FlowState::ALL`]).
    pub expired: [u64; FlowState::ALL.len()],
}

impl ConntrackNumbers {
    pub fn read(ct: &Conntrack) -> Self {
        let summary = ct.summary();
        let stats = ct.stats();
        // Relaxed loads: statistics, each read on its own.
        Self {
            entries: ct.entries(),
            flows: summary.flows,
            unreplied: summary.unreplied,
            max_flows: summary.max_flows,
            inserted: stats.inserted.load(Ordering::Relaxed),
            evicted: std::array::from_fn(|i| stats.evicted[i].load(Ordering::Relaxed)),
            refused: stats.refused.load(Ordering::Relaxed),
            retired: stats.retired.load(Ordering::Relaxed),
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
    pub vip: Ipv4Addr,
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

/// The Prometheus (OpenMetrics) content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The exposition of one scrape.
pub fn encode(snapshot: Snapshot) -> String {
    let mut registry = Registry::with_prefix("cipgw");
    registry.register(
        "build",
        "The cipgw version running",
        Info::new(vec![("version", snapshot.version)]),
    );
    registry.register_collector(Box::new(snapshot));
    let mut text = String::new();
    // Writing into a String cannot fail, and the collector's encoders
    // only fail when the writer does.
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        text.clear();
        text.push_str("# EOF\n");
    }
    text
}

fn seconds_since_epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Label set `worker="<core>"`.
fn worker_label(w: &WorkerSnapshot) -> [(&'static str, String); 1] {
    [("worker", w.core.to_string())]
}

fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    enc.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}

fn gauge(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: impl EncodeGaugeValue,
) -> fmt::Result {
    enc.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

fn counter_family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        metric
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    Ok(())
}

fn histogram_family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, Recorder)>,
    bounds: &[u64],
    unit: f64,
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, rec) in series {
        let buckets = rec.buckets(bounds, unit);
        metric
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(rec.sum() as f64 / unit, rec.count(), &buckets, None)?;
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let enc = &mut enc;
        let total = self.totals();
        // Nanoseconds per exported second (divided, not multiplied by
        // 1e-9, so that bounds print as 2.5e-7 and not 2.5000000000000006e-7).
        let ns_per_s = 1e9;

        gauge(
            enc,
            "ready",
            "1 once the first table is published and the workers run",
            u64::from(self.ready),
        )?;
        gauge(
            enc,
            "start_time_seconds",
            "Start time of the process, seconds since the Unix epoch",
            seconds_since_epoch(self.started),
        )?;
        gauge(enc, "workers", "Worker threads", self.workers.len())?;

        // Summed over workers.
        counter(
            enc,
            "rx_packets",
            "Frames received on the AF_XDP sockets",
            total.rx_packets,
        )?;
        counter(
            enc,
            "rx_bytes",
            "Bytes of frames received on the AF_XDP sockets",
            total.rx_bytes,
        )?;
        counter(
            enc,
            "tx_packets",
            "Frames transmitted on the AF_XDP sockets",
            total.tx_packets,
        )?;
        counter(
            enc,
            "tx_bytes",
            "Bytes of frames transmitted on the AF_XDP sockets",
            total.tx_bytes,
        )?;
        counter(
            enc,
            "passed_packets",
            "Frames a worker received that were not for cipgw (the kernel's; AF_XDP cannot return them)",
            total.passed,
        )?;
        counter_family(
            enc,
            "flow_packets",
            "Packets of tracked flows by direction (forward: client to backend, reply: backend to client)",
            [
                ([("direction", "forward")], total.forwarded),
                ([("direction", "reply")], total.replies),
            ],
        )?;
        counter(
            enc,
            "new_flows",
            "Connections given a backend",
            total.new_flows,
        )?;
        counter(
            enc,
            "neighbour_resolved",
            "Frames that waited for a next hop's MAC and then went out",
            total.neighbour_resolved,
        )?;
        counter_family(
            enc,
            "drops",
            "Frames dropped by a worker, by reason",
            DropReason::ALL
                .iter()
                .map(|r| ([("reason", r.name())], total.drops_of(*r))),
        )?;

        counter_family(
            enc,
            "xsk_socket_stats",
            "The kernel's counters of the AF_XDP sockets (XDP_STATISTICS), summed over \
             workers: rx_ring_full and rx_dropped are packets that never reached a worker",
            SocketStat::ALL
                .iter()
                .map(|s| ([("stat", s.name())], total.socket[*s as usize])),
        )?;

        // Per worker.
        type PerWorker = fn(&CounterValues) -> u64;
        let per_worker: [(&str, &str, PerWorker); 7] = [
            ("worker_rx_packets", "Frames received, per worker", |c| {
                c.rx_packets
            }),
            ("worker_rx_bytes", "Bytes received, per worker", |c| {
                c.rx_bytes
            }),
            ("worker_tx_packets", "Frames transmitted, per worker", |c| {
                c.tx_packets
            }),
            ("worker_tx_bytes", "Bytes transmitted, per worker", |c| {
                c.tx_bytes
            }),
            (
                "worker_passed_packets",
                "Frames not for cipgw, per worker",
                |c| c.passed,
            ),
            ("worker_drops", "Frames dropped, per worker", |c| {
                c.total_drops()
            }),
            (
                "worker_new_flows",
                "Connections given a backend, per worker",
                |c| c.new_flows,
            ),
        ];
        for (name, help, value) in per_worker {
            counter_family(
                enc,
                name,
                help,
                self.workers
                    .iter()
                    .map(|w| (worker_label(w), value(&w.counters))),
            )?;
        }
        histogram_family(
            enc,
            "batch_duration_seconds",
            "Time to run one RX batch through the pipeline, per worker",
            self.workers
                .iter()
                .map(|w| (worker_label(w), w.latency.batch.clone())),
            &LATENCY_BUCKETS_NS,
            ns_per_s,
        )?;
        histogram_family(
            enc,
            "packet_latency_seconds",
            "Pipeline time of one packet (sampled), per worker",
            self.workers
                .iter()
                .map(|w| (worker_label(w), w.latency.packet.clone())),
            &LATENCY_BUCKETS_NS,
            ns_per_s,
        )?;
        histogram_family(
            enc,
            "batch_size_frames",
            "Frames per RX batch, per worker",
            self.workers
                .iter()
                .map(|w| (worker_label(w), w.latency.batch_size.clone())),
            &BATCH_SIZE_BUCKETS,
            1.0,
        )?;

        // Connection tracking.
        let ct = &self.conntrack;
        gauge(
            enc,
            "conntrack_entries",
            "Conntrack entries (two per flow: forward and reply)",
            ct.entries,
        )?;
        gauge(enc, "conntrack_flows", "Tracked flows", ct.flows)?;
        gauge(
            enc,
            "conntrack_unreplied_flows",
            "Tracked flows no reply has been seen for",
            ct.unreplied,
        )?;
        gauge(
            enc,
            "conntrack_max_flows",
            "Flows the table holds at most",
            ct.max_flows,
        )?;
        counter(enc, "conntrack_inserted", "Flows tracked", ct.inserted)?;
        counter_family(
            enc,
            "conntrack_evicted",
            "Flows evicted to make room for new ones, by class (expired, unassured, closing)",
            EvictionClass::ALL
                .iter()
                .zip(ct.evicted)
                .map(|(c, n)| ([("class", c.name())], n)),
        )?;
        counter(
            enc,
            "conntrack_replaced",
            "Flows in TIME_WAIT or CLOSE replaced by a new SYN on the same 5-tuple",
            ct.replaced,
        )?;
        counter(
            enc,
            "conntrack_refused",
            "New flows refused because nothing could be evicted",
            ct.refused,
        )?;
        counter(
            enc,
            "conntrack_retired",
            "Flows removed because their backend or Service went away",
            ct.retired,
        )?;
        counter_family(
            enc,
            "conntrack_expired",
            "Flows removed for being idle, by the state they were in",
            FlowState::ALL
                .iter()
                .zip(ct.expired)
                .map(|(s, n)| ([("state", s.name())], n)),
        )?;

        // Service table.
        gauge(
            enc,
            "table_generation",
            "Generation of the published service table",
            self.table.generation,
        )?;
        gauge(
            enc,
            "table_services",
            "Services in the table",
            self.table.services,
        )?;
        gauge(
            enc,
            "table_forwarded_services",
            "Services with a VIP",
            self.table.forwarded_services,
        )?;
        gauge(
            enc,
            "table_vip_ports",
            "VIP:port/protocol entries",
            self.table.vip_ports,
        )?;
        gauge(
            enc,
            "table_endpoints",
            "Endpoint address:port/protocol of forwarded Services",
            self.table.endpoints,
        )?;

        // Control plane.
        counter_family(
            enc,
            "control_syncs",
            "Service table syncs from the control source, by result",
            [
                ([("result", "ok")], self.control.syncs_ok),
                ([("result", "error")], self.control.syncs_failed),
            ],
        )?;
        let sync = &self.control.sync_duration;
        enc.encode_descriptor(
            "control_sync_duration_seconds",
            "Time to load, translate, compile and publish the service table",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(
            sync.sum() as f64 / ns_per_s,
            sync.count(),
            &sync.buckets(&SYNC_BUCKETS_NS, ns_per_s),
            None,
        )?;
        if let Some(last) = &self.control.last_sync {
            gauge(
                enc,
                "control_last_sync_timestamp_seconds",
                "When the last sync ended, seconds since the Unix epoch",
                seconds_since_epoch(last.at),
            )?;
        }
        if let Some(last) = &self.control.last_error {
            gauge(
                enc,
                "control_last_error_timestamp_seconds",
                "When the control plane last failed, seconds since the Unix epoch",
                seconds_since_epoch(last.at),
            )?;
        }

        // Per service port, once the pipeline counts them.
        if !self.services.is_empty() {
            let labels = |s: &ServicePortSnapshot| {
                [
                    ("service", s.service.clone()),
                    ("vip", s.vip.to_string()),
                    ("port", s.port.to_string()),
                    ("protocol", s.protocol.as_str().to_owned()),
                ]
            };
            counter_family(
                enc,
                "service_packets",
                "Packets of a service port's flows, both directions",
                self.services.iter().map(|s| (labels(s), s.totals.packets)),
            )?;
            counter_family(
                enc,
                "service_bytes",
                "Bytes of a service port's flows, both directions",
                self.services.iter().map(|s| (labels(s), s.totals.bytes)),
            )?;
            counter_family(
                enc,
                "service_flows",
                "Connections a service port gave a backend",
                self.services.iter().map(|s| (labels(s), s.totals.flows)),
            )?;
        }
        Ok(())
    }
}

pub mod exposition {
    //! A strict reader of the OpenMetrics / Prometheus text exposition,
    //! for tests and tools that scrape a gateway. It rejects what
    //! Prometheus would reject (bad names, labels, values, samples
    //! outside their family, duplicate series, inconsistent histograms)
    //! rather than skipping it.

    use std::collections::{HashMap, HashSet};

    /// A `# TYPE` declaration.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Family {
        pub name: String,
        pub kind: String,
        pub help: Option<String>,
    }

    /// One sample line.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Sample {
        pub name: String,
        pub labels: Vec<(String, String)>,
        pub value: f64,
    }

    impl Sample {
        pub fn label(&self, name: &str) -> Option<&str> {
            self.labels
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }

        fn matches(&self, name: &str, labels: &[(&str, &str)]) -> bool {
            self.name == name && labels.iter().all(|&(k, v)| self.label(k) == Some(v))
        }
    }

    /// A parsed exposition.
    #[derive(Debug, Clone, Default)]
    pub struct Exposition {
        pub families: Vec<Family>,
        pub samples: Vec<Sample>,
    }

    impl Exposition {
        /// The value of the one series named `name` whose labels include
        /// `labels`; `None` when there is none or more than one.
        pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
            let mut found = self.samples.iter().filter(|s| s.matches(name, labels));
            let first = found.next()?;
            match found.next() {
                Some(_) => None,
                None => Some(first.value),
            }
        }

        /// The sum over every series named `name` whose labels include
        /// `labels` (0 when there is none).
        pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
            self.samples
                .iter()
                .filter(|s| s.matches(name, labels))
                .map(|s| s.value)
                .sum()
        }

        pub fn family(&self, name: &str) -> Option<&Family> {
            self.families.iter().find(|f| f.name == name)
        }
    }

    fn is_name(s: &str) -> bool {
        let mut chars = s.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    fn is_label_name(s: &str) -> bool {
        is_name(s) && !s.contains(':')
    }

    fn parse_value(s: &str) -> Result<f64, String> {
        match s {
            "+Inf" | "Inf" => Ok(f64::INFINITY),
            "-Inf" => Ok(f64::NEG_INFINITY),
            "NaN" => Ok(f64::NAN),
            _ => s.parse::<f64>().map_err(|_| format!("bad value {s:?}")),
        }
    }

    /// Parses `{a="x",b="y"}` at the start of `s`; returns the labels and
    /// the rest of the line.
    /// Label names and values in the order written.
    type Labels = Vec<(String, String)>;

    fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
        let mut labels = Vec::new();
        let mut rest = &s[1..];
        loop {
            if let Some(r) = rest.strip_prefix('}') {
                return Ok((labels, r));
            }
            let eq = rest.find('=').ok_or("label without '='")?;
            let name = &rest[..eq];
            if !is_label_name(name) {
                return Err(format!("bad label name {name:?}"));
            }
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("label value not quoted")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape in label value: {other:?}")),
                    },
                    Some((_, '\n')) | None => return Err("unterminated label value".into()),
                    Some((_, c)) => value.push(c),
                }
            };
            if labels.iter().any(|(n, _)| n == name) {
                return Err(format!("label {name:?} given twice"));
            }
            labels.push((name.to_owned(), value));
            rest = &rest[end + 1..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.starts_with('}') {
                return Err("labels not separated by ','".into());
            }
        }
    }

    /// The suffixes a sample of a family of `kind` may carry.
    fn suffixes(kind: &str) -> &'static [&'static str] {
        match kind {
            "counter" => &["_total", "_created"],
            "histogram" | "gaugehistogram" => {
                &["_bucket", "_sum", "_count", "_created", "_gcount", "_gsum"]
            }
            "summary" => &["", "_sum", "_count", "_created"],
            "info" => &["_info"],
            _ => &[""],
        }
    }

    /// Parses and checks an exposition.
    pub fn parse(text: &str) -> Result<Exposition, String> {
        let mut out = Exposition::default();
        let mut current: Option<usize> = None;
        let mut declared = HashSet::new();
        let mut series = HashSet::new();
        let mut eof = false;
        for (n, line) in text.lines().enumerate() {
            let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
            if eof {
                return Err(at("text after # EOF".into()));
            }
            if line == "# EOF" {
                eof = true;
                continue;
            }
            if let Some(meta) = line.strip_prefix("# ") {
                let mut parts = meta.splitn(3, ' ');
                let (keyword, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let rest = parts.next().unwrap_or("");
                if !is_name(name) {
                    return Err(at(format!("bad metric name {name:?}")));
                }
                match keyword {
                    "TYPE" => {
                        const KINDS: [&str; 8] = [
                            "counter",
                            "gauge",
                            "histogram",
                            "gaugehistogram",
                            "summary",
                            "info",
                            "stateset",
                            "unknown",
                        ];
                        if !KINDS.contains(&rest) {
                            return Err(at(format!("unknown type {rest:?}")));
                        }
                        if !declared.insert(name.to_owned()) {
                            return Err(at(format!("family {name} declared twice")));
                        }
                        let help = match out.families.last() {
                            Some(f) if f.name == name && f.kind.is_empty() => {
                                out.families.pop().and_then(|f| f.help)
                            }
                            _ => None,
                        };
                        out.families.push(Family {
                            name: name.to_owned(),
                            kind: rest.to_owned(),
                            help,
                        });
                        current = Some(out.families.len() - 1);
                    }
                    "HELP" => {
                        // HELP comes before TYPE in what prometheus-client
                        // writes; hold it until the TYPE line.
                        out.families.push(Family {
                            name: name.to_owned(),
                            kind: String::new(),
                            help: Some(rest.to_owned()),
                        });
                        current = None;
                    }
                    "UNIT" => {
                        if current.map(|i| out.families[i].name.as_str()) != Some(name) {
                            return Err(at("UNIT for a family that is not the current one".into()));
                        }
                    }
                    _ => return Err(at(format!("unknown metadata {keyword:?}"))),
                }
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                return Err(at("unexpected comment or empty line".into()));
            }
            let name_end = line
                .find(['{', ' '])
                .ok_or_else(|| at("sample without value".into()))?;
            let name = &line[..name_end];
            if !is_name(name) {
                return Err(at(format!("bad metric name {name:?}")));
            }
            let (labels, rest) = if line[name_end..].starts_with('{') {
                parse_labels(&line[name_end..]).map_err(at)?
            } else {
                (Vec::new(), &line[name_end..])
            };
            let mut fields = rest
                .strip_prefix(' ')
                .ok_or_else(|| at("no space before the value".into()))?
                .split(' ');
            let value = parse_value(fields.next().unwrap_or("")).map_err(at)?;
            if let Some(ts) = fields.next() {
                parse_value(ts).map_err(|e| at(format!("timestamp: {e}")))?;
            }
            if fields.next().is_some() {
                return Err(at("trailing fields".into()));
            }
            let family = current
                .map(|i| &out.families[i])
                .ok_or_else(|| at("sample outside a declared family".into()))?;
            let suffix = name
                .strip_prefix(family.name.as_str())
                .ok_or_else(|| at(format!("sample not of family {}", family.name)))?;
            if !suffixes(&family.kind).contains(&suffix) {
                return Err(at(format!(
                    "suffix {suffix:?} not allowed for a {} family",
                    family.kind
                )));
            }
            if family.kind == "counter" && suffix == "_total" && (value < 0.0 || value.is_nan()) {
                return Err(at("negative counter".into()));
            }
            let mut key: Vec<_> = labels.clone();
            key.sort();
            if !series.insert((name.to_owned(), key)) {
                return Err(at("duplicate series".into()));
            }
            out.samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        if !eof {
            return Err("no # EOF at the end".into());
        }
        if let Some(f) = out.families.iter().find(|f| f.kind.is_empty()) {
            return Err(format!("HELP for {} without TYPE", f.name));
        }
        check_histograms(&out)?;
        Ok(out)
    }

    /// Buckets cumulative, ending in `+Inf` equal to `_count`.
    fn check_histograms(exp: &Exposition) -> Result<(), String> {
        type Series = Vec<(String, String)>;
        for family in exp.families.iter().filter(|f| f.kind == "histogram") {
            let bucket = format!("{}_bucket", family.name);
            let count = format!("{}_count", family.name);
            let mut buckets: HashMap<Series, Vec<(f64, f64)>> = HashMap::new();
            for s in exp.samples.iter().filter(|s| s.name == bucket) {
                let le = s
                    .label("le")
                    .ok_or_else(|| format!("{bucket} without le"))
                    .and_then(parse_value)?;
                let mut rest: Series = s
                    .labels
                    .iter()
                    .filter(|(k, _)| k != "le")
                    .cloned()
                    .collect();
                rest.sort();
                buckets.entry(rest).or_default().push((le, s.value));
            }
            for s in exp.samples.iter().filter(|s| s.name == count) {
                let mut key = s.labels.clone();
                key.sort();
                let list = buckets
                    .get(&key)
                    .ok_or_else(|| format!("{count} {key:?} without buckets"))?;
                let mut last = (f64::NEG_INFINITY, 0.0);
                for &(le, v) in list {
                    if le <= last.0 || v < last.1 {
                        return Err(format!("{bucket} {key:?}: buckets not cumulative"));
                    }
                    last = (le, v);
                }
                if last.0 != f64::INFINITY || last.1 != s.value {
                    return Err(format!(
                        "{bucket} {key:?}: +Inf bucket does not equal {count}"
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cipgw_config::{
        ClusterIp, Endpoint, EndpointState, Service, ServiceKind, ServicePort, TargetPort,
    };

    fn snapshot(workers: Vec<WorkerSnapshot>) -> Snapshot {
        Snapshot {
            version: "test",
            started: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            ready: true,
            workers,
            table: TableStats::default(),
            conntrack: ConntrackNumbers {
                entries: 4,
                flows: 2,
                ..ConntrackNumbers::default()
            },
            control: ControlMetrics::default().snapshot(),
            services: Vec::new(),
        }
    }

    #[test]
    fn exposition_parses_and_sums_workers() {
        let a = WorkerTelemetry::new(0);
        let b = WorkerTelemetry::new(1);
        a.counters.rx_packets.add(10);
        a.counters.rx_bytes.add(640);
        b.counters.rx_packets.add(5);
        b.counters.tx_packets.add(7);
        a.counters.count_drop(DropReason::TruncatedIpv4);
        b.counters.count_drop(DropReason::TruncatedIpv4);
        b.counters.count_drop(DropReason::MalformedL4);
        a.counters.socket[SocketStat::RxRingFull as usize].set(4);
        b.counters.socket[SocketStat::RxRingFull as usize].set(2);
        let mut rec = a.latency_recorder();
        rec.record_batch(32, Duration::from_micros(3));
        rec.record_packet(Duration::from_nanos(120));
        assert!(rec.flush());

        let snap = snapshot(vec![WorkerSnapshot::read(&a), WorkerSnapshot::read(&b)]);
        let text = encode(snap);
        let exp = exposition::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(exp.get("cipgw_rx_packets_total", &[]), Some(15.0));
        assert_eq!(exp.get("cipgw_rx_bytes_total", &[]), Some(640.0));
        assert_eq!(exp.get("cipgw_tx_packets_total", &[]), Some(7.0));
        assert_eq!(
            exp.get("cipgw_worker_rx_packets_total", &[("worker", "1")]),
            Some(5.0)
        );
        assert_eq!(
            exp.get("cipgw_drops_total", &[("reason", "truncated_ipv4")]),
            Some(2.0)
        );
        assert_eq!(
            exp.get("cipgw_drops_total", &[("reason", "malformed_l4")]),
            Some(1.0)
        );
        assert_eq!(exp.sum("cipgw_drops_total", &[]), 3.0);
        assert_eq!(
            exp.get(
                "cipgw_xsk_socket_stats_total",
                &[("stat", SocketStat::RxRingFull.name())]
            ),
            Some(6.0)
        );
        assert_eq!(
            exp.get("cipgw_batch_size_frames_count", &[("worker", "0")]),
            Some(1.0)
        );
        assert_eq!(
            exp.get(
                "cipgw_batch_size_frames_bucket",
                &[("worker", "0"), ("le", "16.0")]
            ),
            Some(0.0)
        );
        assert_eq!(
            exp.get(
                "cipgw_batch_size_frames_bucket",
                &[("worker", "0"), ("le", "32.0")]
            ),
            Some(1.0)
        );
        assert_eq!(
            exp.get("cipgw_packet_latency_seconds_count", &[("worker", "0")]),
            Some(1.0)
        );
        assert_eq!(exp.get("cipgw_conntrack_entries", &[]), Some(4.0));
        assert_eq!(exp.get("cipgw_ready", &[]), Some(1.0));
        assert_eq!(
            exp.get("cipgw_build_info", &[("version", "test")]),
            Some(1.0)
        );
        assert_eq!(
            exp.family("cipgw_drops").map(|f| f.kind.as_str()),
            Some("counter")
        );
    }

    #[test]
    fn latency_is_published_only_when_flushed() {
        let t = WorkerTelemetry::new(3);
        let mut rec = t.latency_recorder();
        for _ in 0..PACKET_SAMPLE_EVERY * 4 {
            rec.time_packet(|| ());
        }
        rec.record_batch(64, Duration::from_micros(10));
        assert_eq!(
            t.latency.snapshot().packet.count(),
            0,
            "nothing published yet"
        );
        let start = Instant::now();
        rec.flush_if_due(start);
        rec.flush_if_due(start + FLUSH_EVERY);
        let shared = t.latency.snapshot();
        assert_eq!(
            shared.packet.count(),
            4,
            "one packet in {PACKET_SAMPLE_EVERY}"
        );
        assert_eq!(shared.batch_size.quantile(0.5), 64);
        assert_eq!(shared.batch.sum(), 10_000);
        // A scrape holding the lock makes the worker keep its samples.
        let guard = t.latency.0.lock().expect("lock");
        rec.record_batch(1, Duration::from_micros(1));
        assert!(!rec.flush());
        drop(guard);
        assert!(rec.flush());
        assert_eq!(t.latency.snapshot().batch.count(), 2);
        // Dropping the recorder publishes what is left.
        rec.record_batch(1, Duration::from_micros(1));
        drop(rec);
        assert_eq!(t.latency.snapshot().batch.count(), 3);
    }

    #[test]
    fn buckets_are_cumulative_counts_of_values_below_their_bound() {
        let mut r = Recorder::nanos();
        for v in [100, 300, 300, 2_000, 20_000_000] {
            r.record(v);
        }
        let b = r.buckets(&[250, 500, 1_000, 10_000], 1.0);
        let counts: Vec<u64> = b.iter().map(|(_, c)| *c).collect();
        assert_eq!(counts, vec![1, 2, 0, 1, 1]);
        assert_eq!(b.last().map(|(le, _)| *le), Some(f64::INFINITY));
        assert_eq!(r.sum(), 20_002_700);
    }

    fn model(ports: &[(&str, u16)]) -> ServiceTable {
        let mut services: Vec<Service> = ports
            .iter()
            .map(|(name, port)| Service {
                name: ServiceName::new("default", *name),
                kind: ServiceKind::ClusterIp,
                cluster_ip: ClusterIp::Vip(Ipv4Addr::new(198, 18, 100, *port as u8)),
                session_affinity: None,
                ports: vec![ServicePort {
                    name: None,
                    port: *port,
                    protocol: Protocol::Tcp,
                    target_port: TargetPort::Number(5678),
                    endpoints: vec![Endpoint {
                        ip: Ipv4Addr::new(198, 18, 2, 11),
                        port: 5678,
                        state: EndpointState::READY,
                        pod: None,
                    }],
                }],
            })
            .collect();
        services.push(Service {
            name: ServiceName::new("default", "zz-headless"),
            kind: ServiceKind::ClusterIp,
            cluster_ip: ClusterIp::Headless,
            session_affinity: None,
            ports: vec![ServicePort {
                name: None,
                port: 80,
                protocol: Protocol::Tcp,
                target_port: TargetPort::Number(80),
                endpoints: vec![],
            }],
        });
        ServiceTable { services }
    }

    #[test]
    fn service_slots_are_stable_and_reused_from_zero() {
        let stats = ServiceStats::new();
        let w0 = stats.add_worker();
        let slots = stats.assign(&model(&[("a", 10), ("b", 11)]));
        let (a, b) = (
            slots.get(0, 0).expect("a has a slot"),
            slots.get(1, 0).expect("b has a slot"),
        );
        assert_ne!(a, b);
        assert_eq!(slots.get(2, 0), None, "headless ports are not counted");
        // A worker added later gets counters for every slot in use.
        let w1 = stats.add_worker();
        for w in [&w0, &w1] {
            let c = w.get(b).expect("counters for b");
            c.packets.add(3);
            c.bytes.add(300);
            c.flows.inc();
        }
        let name_b = ServiceName::new("default", "b");
        assert_eq!(
            stats.totals(&name_b, 11, Protocol::Tcp),
            Some(ServiceTotals {
                packets: 6,
                bytes: 600,
                flows: 2
            })
        );
        // b keeps its slot when a is removed and c is added; c gets a's
        // old slot and starts from zero.
        w0.get(a).expect("a").packets.add(5);
        let slots = stats.assign(&model(&[("b", 11), ("c", 12)]));
        assert_eq!(slots.get(0, 0), Some(b));
        assert_eq!(slots.get(1, 0), Some(a));
        let name_c = ServiceName::new("default", "c");
        assert_eq!(
            stats.totals(&name_c, 12, Protocol::Tcp),
            Some(ServiceTotals::default())
        );
        w1.get(a).expect("c").packets.add(2);
        assert_eq!(
            stats.totals(&name_c, 12, Protocol::Tcp).map(|t| t.packets),
            Some(2)
        );
        assert_eq!(
            stats.totals(&ServiceName::new("default", "a"), 10, Protocol::Tcp),
            None
        );
        assert!(w0.get(u32::MAX).is_none());
    }

    #[test]
    fn control_metrics_keep_the_last_error() {
        let c = ControlMetrics::default();
        c.record_sync::<(), &str>(Duration::from_millis(3), &Ok(()));
        c.record_sync::<(), &str>(Duration::from_millis(40), &Err("services.yaml: bad port"));
        c.record_invalid(&"services.yaml: line 3: bad indentation");
        c.record_error(&"API server unreachable");
        let s = c.snapshot();
        assert_eq!((s.syncs_ok, s.syncs_failed), (1, 2));
        assert_eq!(s.sync_duration.count(), 2);
        assert_eq!(
            s.last_error.map(|e| e.message),
            Some("API server unreachable".to_owned())
        );
        assert_eq!(s.last_sync.map(|l| l.ok), Some(false));
        let mut snap = snapshot(vec![]);
        snap.control = c.snapshot();
        let exp = exposition::parse(&encode(snap)).expect("parses");
        assert_eq!(
            exp.get("cipgw_control_syncs_total", &[("result", "error")]),
            Some(2.0)
        );
        assert_eq!(
            exp.get("cipgw_control_sync_duration_seconds_count", &[]),
            Some(2.0)
        );
    }

    #[test]
    fn the_reader_rejects_what_prometheus_would() {
        let ok = "# HELP x things\n# TYPE x counter\nx_total{a=\"1\"} 2\n# EOF\n";
        assert!(exposition::parse(ok).is_ok());
        for bad in [
            "# TYPE x counter\nx_total 1\n",                        // no EOF
            "# TYPE x counter\nx 1\n# EOF\n",                        // counter without _total
            "# TYPE x counter\nx_total{a=1} 1\n# EOF\n",             // unquoted label
            "# TYPE x counter\nx_total 1\nx_total 2\n# EOF\n",       // duplicate series
            "# TYPE x gauge\nx abc\n# EOF\n",                        // bad value
            "y 1\n# EOF\n",                                          // no family
            "# TYPE x gauge\nx 1\n# EOF\nx 2\n",                     // after EOF
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 0\n# EOF\n",
        ] {
            assert!(exposition::parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
