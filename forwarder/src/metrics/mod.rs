//! What the gateway measures, and its Prometheus exposition.
//!
//! Hot-path numbers are never shared between workers while they are
//! written: counters are per worker
//! ([`WorkerCounters`](crate::counters::WorkerCounters), and
//! [`ServiceCounters`](crate::counters::ServiceCounters) per service
//! port), latency and batch-size histograms are recorded into a
//! worker-local [`WorkerLatency`] and published into a shared, locked copy
//! at most every [`FLUSH_EVERY`] (with `try_lock`: a worker never waits
//! for a scrape). A scrape takes a [`Snapshot`] of everything (sums the
//! workers' counters, clones the published histograms) and encodes it
//! through a `Registry::with_prefix("cipgw")` built for that scrape, so no
//! metric object lives on the packet path.
//!
//! The text is OpenMetrics 1.0 (what `prometheus-client` writes and
//! Prometheus asks for first), or Prometheus text 0.0.4 for a scraper
//! whose `Accept` header prefers it; [`exposition::parse`] reads the
//! OpenMetrics text back strictly, for tests and tools that scrape a
//! gateway. Beside the `cipgw_*` metrics are client_golang's `process_*`
//! ones ([`process`]).
//!
//! Latencies are exported as Prometheus histograms with fixed buckets;
//! quantiles (p50/p99/p99.9) of the same data are in `/api/status`.
//!
//! One file per concern: `latency` (recording and publishing histograms),
//! `services` (per-endpoint counter slots of Service ports), `control` (the control
//! plane's syncs and errors), `snapshot` (what one scrape reads), `encode`
//! (the exposition) and [`exposition`] (the reader).

mod control;
mod dns;
mod encode;
pub mod exposition;
mod latency;
pub mod process;
mod services;
mod snapshot;

use std::time::Duration;

pub use self::control::{ControlMetrics, ControlSnapshot, LastError, LastSync};
pub use self::dns::{DnsSnapshot, DnsStats};
pub use self::encode::{
    encode, encode_as, to_text_004, Format, CONTENT_TYPE, CONTENT_TYPE_TEXT_004,
};
pub use self::latency::{
    LatencyHistograms, Recorder, SharedLatency, WorkerLatency, WorkerTelemetry, FLUSH_EVERY,
    PACKET_SAMPLE_EVERY,
};
pub use self::services::{PortSlots, ServiceStats, ServiceTotals};
pub use self::snapshot::{
    ConntrackNumbers, CounterValues, ServicePortSnapshot, Snapshot, SnatNumbers, TableStats,
    WorkerSnapshot,
};

/// A duration in nanoseconds, saturating (what the histograms record).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
