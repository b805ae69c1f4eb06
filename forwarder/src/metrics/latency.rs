//! Batch and per-packet latency, recorded on the packet path: each worker
//! records into its own histograms ([`WorkerLatency`], no lock, no
//! allocation) and publishes them at most every [`FLUSH_EVERY`] into a
//! shared copy ([`SharedLatency`]) with `try_lock`, so a worker never waits
//! for a scrape. [`Recorder`] is the histogram both sides hold.

use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::nanos;
use crate::counters::WorkerCounters;

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
    pub(super) fn buckets(&self, bounds: &[u64], unit: f64) -> Vec<(f64, u64)> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
