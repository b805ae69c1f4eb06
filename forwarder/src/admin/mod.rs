//! The admin endpoint: Prometheus metrics, health and readiness, and JSON
//! views of the service table, the connection table and the gateway.
//!
//! | path | answer |
//! |---|---|
//! | `/metrics` | OpenMetrics text ([`crate::metrics`]) |
//! | `/healthz` | 200 while every worker runs and the control loop turns (see [`AdminState::health`]), else 503 with the reason |
//! | `/readyz` | 200 once the first table is published and workers run, else 503 |
//! | `/api/status` | [`StatusView`] |
//! | `/api/services` | [`ServicesView`] |
//! | `/api/conntrack?vip=&client=&backend=&protocol=&snat_port=&limit=&offset=` | [`ConntrackView`] |
//! | `DELETE /api/conntrack?protocol=&client=&vip=` or `?backend=` | [`ConntrackDeleted`]: removes one flow (its whole 5-tuple) or every flow of a backend, as `conntrack -D` does |
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
//! The one request that changes anything, `DELETE /api/conntrack`, is
//! served on the admin address only (the metrics address answers 405):
//! guarded as the JSON views are, by where `--admin` listens (loopback
//! unless told otherwise). A browser page cannot send it either: a
//! cross-origin DELETE needs a CORS preflight, which is refused.
//!
//! Its parts: [`views`] (the JSON shapes, shared with the CLI), `build`
//! (computing them from [`AdminState`]), `query` (the `/api/conntrack`
//! parameters), `server` (requests and the HTTP thread) and [`client`].
//! The endpoint listens where `--admin` says, by default on
//! [`DEFAULT_ADMIN_ADDR`](cipgw_config::settings::DEFAULT_ADMIN_ADDR).
//! A second listener (`--metrics-address`, [`AdminServer::start_metrics`])
//! serves only `/metrics`, `/healthz` and `/readyz`, so that Prometheus
//! and probes can reach them on a wider address while the JSON views,
//! client addresses included, stay on the admin address.

mod build;
pub mod client;
mod query;
mod server;
#[cfg(test)]
mod tests;
pub mod views;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::{Instant, SystemTime};

use crate::conntrack::Conntrack;
use crate::metrics::{
    ConntrackNumbers, ControlMetrics, ServicePortSnapshot, ServiceStats, Snapshot, TableStats,
    WorkerSnapshot, WorkerTelemetry,
};
use crate::table::TableHandle;

pub use self::query::{AddrFilter, ConntrackQuery};
pub use self::server::{handle, handle_request, AdminError, AdminServer, Reply, Scope};
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
    /// The IPv6 connection table, once the daemon has one.
    conntrack6: OnceLock<Arc<Conntrack<std::net::Ipv6Addr>>>,
    ready: Arc<AtomicBool>,
    workers: RwLock<Vec<WorkerTelemetry>>,
    control: Arc<ControlMetrics>,
    services: OnceLock<Arc<ServiceStats>>,
    /// When the control loop last turned, in milliseconds since `started`.
    control_turned_ms: AtomicU64,
    /// A worker thread ended without being asked to.
    worker_died: AtomicBool,
    /// XDP and copy modes per interface, once attached.
    interface_modes: RwLock<Vec<InterfaceModeView>>,
    dns: OnceLock<Arc<crate::metrics::DnsStats>>,
    /// The clock conntrack's last-seen times count from (the daemon's
    /// epoch), for the expiry `/api/conntrack` shows.
    conntrack_epoch: OnceLock<Instant>,
}

/// How long the control loop may go without turning before `/healthz`
/// fails: it turns at least every 100 ms, and applying even a table of
/// tens of thousands of Services takes seconds, so a loop this late is
/// stuck, and the table it would install is stale.
pub const CONTROL_STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

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
            conntrack6: OnceLock::new(),
            ready,
            workers: RwLock::new(Vec::new()),
            control: Arc::new(ControlMetrics::default()),
            services: OnceLock::new(),
            control_turned_ms: AtomicU64::new(0),
            worker_died: AtomicBool::new(false),
            interface_modes: RwLock::new(Vec::new()),
            dns: OnceLock::new(),
            conntrack_epoch: OnceLock::new(),
        }
    }

    /// Adds the IPv6 connection table to what the views and metrics
    /// count. Only the first call has an effect.
    pub fn set_conntrack6(&self, conntrack: Arc<Conntrack<std::net::Ipv6Addr>>) {
        let _ = self.conntrack6.set(conntrack);
    }

    /// Sets the instant conntrack's clock counts seconds from (what the
    /// workers and the sweeper pass as `now`), so that `/api/conntrack`
    /// shows each flow's expiry. Only the first call has an effect.
    pub fn set_conntrack_epoch(&self, epoch: Instant) {
        let _ = self.conntrack_epoch.set(epoch);
    }

    /// Conntrack's clock now, once its epoch is known.
    pub(crate) fn conntrack_now(&self) -> Option<u32> {
        self.conntrack_epoch
            .get()
            .map(|epoch| u32::try_from(epoch.elapsed().as_secs()).unwrap_or(u32::MAX))
    }

    /// Records how the interfaces are served (`cipgw status`).
    pub fn set_interface_modes(&self, modes: Vec<InterfaceModeView>) {
        *self
            .interface_modes
            .write()
            .unwrap_or_else(PoisonError::into_inner) = modes;
    }

    pub(crate) fn interface_modes(&self) -> Vec<InterfaceModeView> {
        self.interface_modes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The control loop turned (it calls this every round).
    pub fn control_turned(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Relaxed: a timestamp read on its own.
        self.control_turned_ms.store(ms, Ordering::Relaxed);
    }

    /// A worker thread ended without a stop request.
    pub fn worker_died(&self) {
        // Relaxed: a flag read on its own.
        self.worker_died.store(true, Ordering::Relaxed);
    }

    /// What `/healthz` answers: healthy while every worker runs and the
    /// control loop turned within [`CONTROL_STALE_AFTER`] (it would not
    /// install new tables otherwise). An unreachable API server is no
    /// failure: restarting the gateway would not bring it back, and the
    /// last table keeps forwarding (`cipgw_control_connected` says so).
    pub fn health(&self) -> Result<(), String> {
        // Relaxed: as in `worker_died`.
        if self.worker_died.load(Ordering::Relaxed) {
            return Err("a worker thread ended".into());
        }
        // Relaxed: as in `control_turned`.
        let turned =
            std::time::Duration::from_millis(self.control_turned_ms.load(Ordering::Relaxed));
        let since = self.started.elapsed().saturating_sub(turned);
        if since > CONTROL_STALE_AFTER {
            return Err(format!(
                "the control loop has not turned for {}s: the service table is stale",
                since.as_secs()
            ));
        }
        Ok(())
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
            // One series per Service port, both families' traffic, labelled
            // with the primary VIP.
            for (service, vips) in table.model().forwarded() {
                let vip = vips.primary();
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
            conntrack: {
                let mut numbers = ConntrackNumbers::read(&*self.conntrack);
                if let Some(v6) = self.conntrack6.get() {
                    numbers.add(&ConntrackNumbers::read(&**v6));
                }
                numbers
            },
            control: self.control.snapshot(),
            services,
            process: crate::metrics::process::ProcessNumbers::read(),
            snat: {
                let mut snat = crate::metrics::SnatNumbers::read(&*self.conntrack);
                if let Some(v6) = self.conntrack6.get() {
                    snat.add(&crate::metrics::SnatNumbers::read(&**v6));
                }
                snat
            },
            dns: self.dns.get().map(|d| d.snapshot()),
        }
    }
}
