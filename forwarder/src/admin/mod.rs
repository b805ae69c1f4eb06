//! The admin endpoint: Prometheus metrics, health and readiness, and JSON
//! views of the service table, the connection table and the gateway.
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` | OpenMetrics text ([`crate::metrics`]) |
//! | `/healthz` | 200 while the process runs |
//! | `/readyz` | 200 once the first table is published and workers run, else 503 |
//! | `/api/status` | [`StatusView`] |
//! | `/api/services` | [`ServicesView`] |
//! | `/api/conntrack?vip=&client=&backend=&protocol=&limit=&offset=` | [`ConntrackView`] |
//!
//! One thread answers requests one at a time (tiny_http; its own accept
//! thread and connection pool only read requests): nothing here touches
//! the packet path beyond reading counters, cloning published histograms
//! and walking conntrack's records (lock-free, as workers read them). Every view is
//! computed at request time from [`AdminState`], which the daemon fills
//! in as the gateway starts. The JSON view types derive `Deserialize`
//! too, so the CLI ([`client`]) reads what the server writes.
//!
//! Bad query parameters are answered with 400 and `{"error": "..."}`.
//!
//! Its parts: [`views`] (the JSON shapes, shared with the CLI), `build`
//! (computing them from [`AdminState`]), `query` (the `/api/conntrack`
//! parameters), `server` (requests and the HTTP thread) and [`client`].
//! The endpoint listens where `--admin` says, by default on
//! [`DEFAULT_ADMIN_ADDR`](cipgw_config::settings::DEFAULT_ADMIN_ADDR).

mod build;
pub mod client;
mod query;
mod server;
#[cfg(test)]
mod tests;
pub mod views;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::{Instant, SystemTime};

use crate::conntrack::Conntrack;
use crate::metrics::{
    ConntrackNumbers, ControlMetrics, ServicePortSnapshot, ServiceStats, Snapshot, TableStats,
    WorkerSnapshot, WorkerTelemetry,
};
use crate::table::TableHandle;

pub use self::query::{AddrFilter, ConntrackQuery};
pub use self::server::{handle, AdminError, AdminServer, Reply};
pub use self::views::*;

/// Rows `/api/conntrack` returns unless `limit=` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// Most rows one `/api/conntrack` request may ask for.
pub const MAX_LIMIT: usize = 10_000;

/// Everything the admin endpoint reads. The daemon creates it once the
/// table handle and conntrack exist, with the readiness flag it sets
/// (Release) once the first table is published and the workers run;
/// it registers each worker as it starts, and the control loop reports
/// syncs into [`AdminState::control`].
#[derive(Debug)]
pub struct AdminState {
    started: Instant,
    started_at: SystemTime,
    ifaces: Vec<String>,
    table: TableHandle,
    conntrack: Arc<Conntrack>,
    ready: Arc<AtomicBool>,
    workers: RwLock<Vec<WorkerTelemetry>>,
    control: Arc<ControlMetrics>,
    services: OnceLock<Arc<ServiceStats>>,
    dns: OnceLock<Arc<crate::metrics::DnsStats>>,
}

impl AdminState {
    pub fn new(
        ifaces: Vec<String>,
        table: TableHandle,
        conntrack: Arc<Conntrack>,
        ready: Arc<AtomicBool>,
    ) -> Self {
        Self {
            started: Instant::now(),
            started_at: SystemTime::now(),
            ifaces,
            table,
            conntrack,
            ready,
            workers: RwLock::new(Vec::new()),
            control: Arc::new(ControlMetrics::default()),
            services: OnceLock::new(),
            dns: OnceLock::new(),
        }
    }

    /// Adds a worker's telemetry to what is scraped.
    pub fn add_worker(&self, telemetry: WorkerTelemetry) {
        self.workers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(telemetry);
    }

    /// Sets what `/readyz` answers (the daemon may as well store into
    /// the flag it passed in).
    pub fn set_ready(&self, ready: bool) {
        // Release: pairs with `is_ready`, as the daemon's own store does.
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        // Acquire: pairs with the Release store that set the flag, so a
        // ready answer comes with the table that was published before.
        self.ready.load(Ordering::Acquire)
    }

    /// Where the control thread records syncs and errors.
    pub fn control(&self) -> &Arc<ControlMetrics> {
        &self.control
    }

    /// Reports per-service-port packets/bytes/flows from `stats` (once
    /// the pipeline counts them); until then the views report only the
    /// active flows conntrack holds. Only the first call has an effect.
    pub fn count_services(&self, stats: Arc<ServiceStats>) {
        let _ = self.services.set(stats);
    }

    /// Reports the DNS responders' counters. Only the first call has an
    /// effect.
    pub fn count_dns(&self, stats: Arc<crate::metrics::DnsStats>) {
        let _ = self.dns.set(stats);
    }

    fn workers(&self) -> Vec<WorkerTelemetry> {
        self.workers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Everything `/metrics` exports, read now.
    pub fn snapshot(&self) -> Snapshot {
        let table = self.table.current();
        let mut services = Vec::new();
        if let Some(stats) = self.services.get() {
            for (service, vip) in table.model().forwarded() {
                for port in &service.ports {
                    if let Some(totals) = stats.totals(&service.name, port.port, port.protocol) {
                        services.push(ServicePortSnapshot {
                            service: service.name.to_string(),
                            vip,
                            port: port.port,
                            protocol: port.protocol,
                            totals,
                        });
                    }
                }
            }
        }
        Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            started: self.started_at,
            ready: self.is_ready(),
            workers: self.workers().iter().map(WorkerSnapshot::read).collect(),
            table: TableStats::of(&table),
            conntrack: ConntrackNumbers::read(&self.conntrack),
            control: self.control.snapshot(),
            services,
            dns: self.dns.get().map(|d| d.snapshot()),
        }
    }
}
