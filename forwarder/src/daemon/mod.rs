//! `cipgw run`: wires the parts of a running gateway together.
//!
//! `start::start` brings the parts up in the order the first
//! packet needs; the control loop then applies every new service table
//! the source reports as a [`plan::Plan`] (what changes, a pure function)
//! carried out by [`apply::apply`] (the order that keeps traffic flowing),
//! and does the housekeeping (expired flows, neighbours).
//!
//! On SIGINT/SIGTERM workers stop, the table is marked clean for the next
//! gateway, the program stays attached (dropping VIP traffic until the
//! next gateway takes over; a start-up that fails half-way detaches what
//! it attached, by `XdpProgram`'s Drop) and the process exits 0. A gateway
//! started beside a running one takes the data path over from it instead
//! of waiting for it to stop ([`handover`]).

pub mod apply;
pub mod changes;
pub mod conntracks;
mod dns;
mod dns_forward;
pub mod handover;
pub mod plan;
pub mod snat;
mod start;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cipgw_config::settings::{Settings, Source};
use cipgw_config::{LbAlgorithm, ServiceTable};
use cipgw_control::source::{self as control_source, Receiver, SourceEvent, SourceHandle};

use crate::admin::{AdminServer, AdminState};
use crate::affinity::Affinity;
use crate::bpf::{XdpMaps, XdpProgram};
use crate::conntrack::ConntrackConfig;
use crate::counters::WorkerCounters;
use crate::maglev::MaglevTables;
use crate::metrics::ServiceStats;
use crate::netlink::NetMonitor;
use crate::table::{CompiledTable, LbPlan, TableHandle};
use crate::xsk::NapiTuning;
use conntracks::Conntracks;
use plan::Plan;

/// How long a table change waits for every worker to move to the new
/// table before retiring flows (workers load it at every batch).
const READERS_GRACE: Duration = Duration::from_secs(2);
/// How often the control loop looks at the stop flag while no event
/// comes: workers stop at the signal itself, so until this process exits
/// (and the next gateway can start) VIP traffic is dropped; keep it short.
/// (A hand-over request wakes the loop at once.)
const STOP_CHECK_EVERY: Duration = Duration::from_millis(10);
/// How long a gateway handing over waits for its workers to leave their
/// loops (they do within a batch; this bounds a stuck one).
const WORKERS_LEAVE_WITHIN: Duration = Duration::from_secs(5);
/// How often expired flows are swept out of conntrack.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Busy polling: SO_BUSY_POLL on the sockets (µs). Workers never block in
/// a busy-polling call, so any non-zero value only switches it on.
const BUSY_POLL_USECS: u32 = 20;
/// Busy polling: NAPI polls that may end without unmasking the device
/// (napi_defer_hard_irqs) — the kernel's documented example value.
const BUSY_POLL_DEFER_HARD_IRQS: u32 = 2;
/// Busy polling: how long the kernel leaves the NAPI to the worker after
/// its last poll before taking receive back (gro_flush_timeout, ns): the
/// longest a packet can wait when the worker stops polling.
const BUSY_POLL_GRO_FLUSH_TIMEOUT_NS: u64 = 200_000;

/// The gateway's state that outlives start-up.
struct Gateway {
    /// Where desired state comes from, and its events.
    source: SourceHandle,
    events: Receiver<SourceEvent>,
    /// Conntrack's clock starts here (workers share it).
    epoch: Instant,
    /// True once the first table is published and workers run.
    ready: Arc<AtomicBool>,
    table: TableHandle,
    program: XdpProgram,
    monitor: NetMonitor,
    /// Both families' connection tables (and their files with
    /// `--state-dir`: marked clean after a graceful stop).
    conntracks: Conntracks,
    /// Targets the next table must end if it lacks them, besides the
    /// current table's: at start, those of flows adopted from a previous
    /// gateway, until the first full table says which still exist; after
    /// a change, those of open TCP connections the retirement pass left
    /// to their next packet (see [`apply`]).
    carried: HashSet<plan::Target>,
    affinity: Arc<Affinity>,
    workers: Vec<(usize, JoinHandle<()>)>,
    /// Each worker sends once here when it has left its loop, before its
    /// sockets close.
    workers_left: Receiver<()>,
    counters: Vec<Arc<WorkerCounters>>,
    stop: Arc<AtomicBool>,
    admin: Arc<AdminState>,
    /// Closed when handing over, so the next gateway can bind the address.
    admin_server: Option<AdminServer>,
    /// `--metrics-address`: /metrics, /healthz and /readyz only; closed
    /// when handing over, as the admin endpoint.
    metrics_server: Option<AdminServer>,
    /// Where the next gateway asks this one to let go (with `--state-dir`).
    handover: Option<handover::Listener>,
    /// How the AF_XDP sockets were bound, for the next gateway.
    socket_mode: handover::SocketMode,
    /// The control file, whose modification time starts the clock of
    /// `cipgw_network_programming_duration_seconds` in file mode (the
    /// Kubernetes source sends its change times with each table).
    control_file: Option<std::path::PathBuf>,
    /// Per-endpoint counter slots of every Service port, reassigned with
    /// every table.
    service_stats: Arc<ServiceStats>,
    /// Busy polling's interface settings, put back when dropped.
    napi_tuning: Vec<NapiTuning>,
    /// The algorithm of Services without the annotation (`--lb`).
    lb: LbAlgorithm,
    /// Maglev tables by endpoint set, kept across compilations so that
    /// an unchanged set is not rebuilt.
    maglev: MaglevTables,
    /// The DNS answered from the table (`--dns-address`).
    dns: Option<dns::DnsService>,
}

/// Gives the calling (worker) thread its nice value; a failure (no
/// CAP_SYS_NICE) leaves it at its inherited one, with a warning.
fn set_worker_nice(core: usize, nice: i32) {
    // SAFETY: gettid has no preconditions; setpriority with PRIO_PROCESS
    // and a thread id changes only that thread's nice value.
    let ret = unsafe {
        let tid = libc::gettid() as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, nice)
    };
    if ret < 0 {
        tracing::warn!(
            core,
            nice,
            error = %std::io::Error::last_os_error(),
            "could not set the worker's nice value"
        );
    }
}

/// The table to start with: the control file's, checked before anything
/// is attached (a gateway started on a broken file exits with the error);
/// empty for the Kubernetes source, which is not ready until its first
/// full sync.
fn initial_table(settings: &Settings) -> anyhow::Result<ServiceTable> {
    match &settings.source {
        Source::ControlFile(path) => Ok(cipgw_control::file_source::load_control_file(
            path,
            &settings.service_cidrs,
        )?),
        Source::Kubernetes { .. } => Ok(ServiceTable::default()),
    }
}

/// Starts the configured source of desired state.
fn spawn_source(settings: &Settings) -> anyhow::Result<(SourceHandle, Receiver<SourceEvent>)> {
    let (tx, rx) = control_source::channel();
    let handle = match &settings.source {
        Source::ControlFile(path) => cipgw_control::file_watch::spawn_file_source(
            path.clone(),
            settings.service_cidrs,
            settings.min_sync_period,
            tx,
        )?,
        Source::Kubernetes { kubeconfig } => cipgw_control::kube_source::spawn_kube_source(
            cipgw_control::kube_source::KubeSourceConfig {
                kubeconfig: kubeconfig.clone(),
                proxy_name: settings.proxy_name.clone(),
                service_cidrs: settings.service_cidrs,
                min_sync_period: settings.min_sync_period,
            },
            tx,
        )?,
    };
    Ok((handle, rx))
}

/// The file under `--state-dir` naming the XDP program this gateway left
/// attached, so that the next one knows it without opening it by id
/// (which takes CAP_SYS_ADMIN, which the DaemonSet does not grant).
const PROGRAM_FILE: &str = "xdp-program-id";

/// The id an earlier gateway recorded, if any.
fn recorded_program(dir: &std::path::Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join(PROGRAM_FILE))
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .into_iter()
        .collect()
}

/// Records the attached program's id for the next gateway; a failure only
/// costs that gateway the fallback, so it is logged, not fatal.
fn record_program(dir: &std::path::Path, id: u32) {
    let path = dir.join(PROGRAM_FILE);
    let tmp = dir.join(format!("{PROGRAM_FILE}.tmp"));
    let written = std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&tmp, format!("{id}\n")))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(error) = written {
        tracing::warn!(path = %path.display(), %error, "could not record the XDP program's id");
    }
}

/// The connection table's bounds and timeouts from the settings; the
/// default maximum is sized from the machine's memory.
fn conntrack_config(settings: &Settings) -> ConntrackConfig {
    let c = &settings.conntrack;
    ConntrackConfig {
        max_flows: c
            .max_flows
            .unwrap_or_else(|| ConntrackConfig::max_for_memory(memory_bytes())),
        unreplied_percent: c.unreplied_percent,
        timeouts: c.timeouts,
    }
}

/// Total memory from /proc/meminfo (4 GiB if it cannot be read).
fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(4 << 30)
}

/// What applying a table did.
#[derive(Debug, Clone, Copy)]
struct ApplySummary {
    generation: u64,
    entries: usize,
    /// Targets (VIP, port, protocol, endpoint) the table ended.
    retiring: usize,
    retired: usize,
    /// Services and endpoints the table added, removed and changed.
    changes: changes::TableChanges,
    /// The new model equals the one in force: nothing was installed.
    unchanged: bool,
}

/// Run-time options that are not part of the deployable settings.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Benchmark pass-through mode: L2 forwarding to this peer's MAC.
    pub pass_through: Option<Ipv4Addr>,
}

/// Runs the gateway until SIGINT or SIGTERM, or until the next gateway
/// takes over (then it idles until SIGINT or SIGTERM).
pub fn run(settings: Settings, options: Options) -> anyhow::Result<()> {
    tracing::info!(
        version = %crate::build_info::VERSION,
        git = %crate::build_info::GIT_HASH,
        "cipgw starting"
    );
    // `stop` ends the workers and the control loop (a signal or a
    // hand-over); `terminate` only a signal.
    let stop = Arc::new(AtomicBool::new(false));
    let terminate = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        for flag in [&stop, &terminate] {
            signal_hook::flag::register(signal, Arc::clone(flag))
                .context("installing signal handlers")?;
        }
    }
    let mut gateway = start::start(&settings, &options, Arc::clone(&stop))?;
    let request = gateway.serve(&settings).or_else(|| {
        gateway
            .handover
            .as_ref()
            .and_then(handover::Listener::request)
    });
    match request {
        Some(request) => gateway.hand_over(request, &terminate),
        None => gateway.shutdown(),
    }
}

impl Gateway {
    /// Asks the kernel to resolve the next hop of every backend now, so
    /// that the first packet of a connection finds its MAC.
    fn resolve_backends(&self) {
        let net = self.monitor.snapshot();
        let table = self.table.current();
        let mut asked = HashSet::new();
        for (ip, _, _) in table.backends() {
            if let Ok(nh) = net.next_hop(ip) {
                if net.neighbour(nh.port, nh.ip).is_none() && asked.insert((nh.port, nh.ip)) {
                    if let Some(port) = net.port(nh.port) {
                        self.monitor.request_resolution(port.ifindex, nh.ip);
                    }
                }
            }
        }
    }

    /// Asks the kernel to resolve the next hop towards `ip`.
    fn resolve(&self, ip: Ipv4Addr) {
        let net = self.monitor.snapshot();
        if let Ok(nh) = net.next_hop(ip) {
            if let Some(port) = net.port(nh.port) {
                self.monitor.request_resolution(port.ifindex, nh.ip);
            }
        }
    }

    /// The control loop: applies what the source reports, and does the
    /// housekeeping, until asked to stop; returns the next gateway's
    /// request to let go, if that is what stopped it (it wakes the loop
    /// at once: every millisecond until the answer is a millisecond
    /// without forwarding).
    fn serve(&mut self, _settings: &Settings) -> Option<handover::Request> {
        let mut last_sweep = Instant::now();
        let events = self.events.clone();
        let requests = match &self.handover {
            Some(listener) => listener.requests().clone(),
            None => crossbeam::channel::never(),
        };
        // Acquire: pairs with the signal handler's store.
        while !self.stop.load(Ordering::Acquire) {
            self.admin.control_turned();
            crossbeam::channel::select! {
                recv(events) -> event => match event {
                    Ok(event) => self.on_event(event),
                    Err(_) => {
                        tracing::error!(
                            source = self.source.name(),
                            "the source stopped; shutting down"
                        );
                        // Release: workers see everything before the stop request.
                        self.stop.store(true, Ordering::Release);
                        break;
                    }
                },
                recv(requests) -> request => {
                    if let Ok(request) = request {
                        return Some(request);
                    }
                },
                default(STOP_CHECK_EVERY) => {}
            }
            // Workers end by themselves on the stop signal too; only an end
            // without it is unexpected. Looked at after the workers, so that
            // a worker that ended on the signal is never taken for a crash.
            let ended = self.workers.iter().any(|(_, h)| h.is_finished());
            // Acquire: pairs with the signal handler's store.
            if ended && !self.stop.load(Ordering::Acquire) {
                self.admin.worker_died();
                tracing::error!("a worker thread ended unexpectedly; shutting down");
                // Release: see above.
                self.stop.store(true, Ordering::Release);
                break;
            }
            if last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = Instant::now();
                let now = self.epoch.elapsed().as_secs() as u32;
                let removed = self.conntracks.sweep(now);
                if removed > 0 {
                    tracing::debug!(removed, "expired idle flows");
                }
                self.affinity.sweep(now, &self.table.current());
                self.resolve_backends();
            }
        }
        None
    }

    /// Records how long the changes behind the table just applied took
    /// to go live (`cipgw_network_programming_duration_seconds`): from
    /// each trigger time the source sent (Kubernetes: the EndpointSlices'
    /// last-change-trigger-time), or else from the control file's
    /// modification.
    fn record_programming(&self, triggers: &[std::time::SystemTime]) {
        let now = std::time::SystemTime::now();
        let file_modified = || {
            let path = self.control_file.as_ref()?;
            std::fs::metadata(path).and_then(|m| m.modified()).ok()
        };
        let starts: Vec<std::time::SystemTime> = if triggers.is_empty() {
            file_modified().into_iter().collect()
        } else {
            triggers.to_vec()
        };
        for start in starts {
            // A start in the future (clock skew between the API server's
            // controller and this node) is no sample.
            if let Ok(took) = now.duration_since(start) {
                self.admin.control().record_programming(took);
            }
        }
    }

    fn set_ready(&self) {
        // Release: readers of the flag (admin) see the published table.
        self.ready.store(true, Ordering::Release);
    }

    fn on_event(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::Table(model, triggers) => {
                let started = Instant::now();
                let result = self.apply(model);
                self.admin.control().record_sync(started.elapsed(), &result);
                if matches!(&result, Ok(summary) if !summary.unchanged) {
                    self.record_programming(&triggers);
                }
                match result {
                    // The source's first table, the same as the one loaded
                    // at start (a control file read twice): nothing happened.
                    Ok(summary) if summary.generation == 1 && summary.unchanged => {
                        tracing::debug!("the source's first table is the one loaded at start")
                    }
                    Ok(summary) => {
                        let c = summary.changes;
                        tracing::info!(
                            took = ?started.elapsed(),
                            generation = summary.generation,
                            entries = summary.entries,
                            services_added = c.services_added,
                            services_removed = c.services_removed,
                            services_changed = c.services_changed,
                            endpoints_added = c.endpoints_added,
                            endpoints_removed = c.endpoints_removed,
                            endpoints_changed = c.endpoints_changed,
                            retiring_targets = summary.retiring,
                            retired_flows = summary.retired,
                            "service table applied"
                        )
                    }
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "applying the new service table failed; the previous one stays")
                    }
                }
            }
            SourceEvent::Synced => {
                self.admin.control().set_connected(true);
                tracing::info!(source = self.source.name(), "first full sync done");
                self.set_ready();
            }
            SourceEvent::Invalid { error } => {
                self.admin.control().record_invalid(&error);
                tracing::error!(source = self.source.name(), %error, "invalid input; the last good table stays in force");
            }
            SourceEvent::Valid => tracing::info!(source = self.source.name(), "input valid again"),
            SourceEvent::Disconnected { error } => {
                self.admin.control().record_error(&error);
                self.admin.control().set_connected(false);
                tracing::warn!(%error, "Kubernetes API unreachable; forwarding with the last table")
            }
            SourceEvent::Reconnected => {
                self.admin.control().set_connected(true);
                tracing::info!("Kubernetes API reachable again")
            }
        }
    }

    /// Installs a new desired state: plans the change from the current
    /// table (ending also the carried targets), compiles the new table
    /// with the targets it retires, and applies the plan (see [`apply`]
    /// for the order). The open TCP connections the retirement pass left
    /// are carried into the next change.
    fn apply(&mut self, model: Arc<ServiceTable>) -> anyhow::Result<ApplySummary> {
        let old = self.table.current();
        // The first full sync brings the first zone, even when the
        // model is the (empty) one the gateway started with.
        let zone_due = self.dns.is_some() && old.dns().is_none();
        if **old.model() == *model && !zone_due {
            return Ok(ApplySummary {
                generation: old.generation(),
                entries: old.len(),
                retiring: 0,
                retired: 0,
                changes: changes::TableChanges::default(),
                unchanged: true,
            });
        }
        let changes = changes::TableChanges::between(old.model(), &model);
        let slots = self.service_stats.assign(&model);
        let carried = std::mem::take(&mut self.carried);
        let plan = Plan::new(old.model(), &model, carried, self.program.steering());
        let generation = old.generation() + 1;
        let lb = LbPlan {
            default: self.lb,
            maglev: &mut self.maglev,
        };
        let compiled = CompiledTable::compile_with_family_slots_lb(
            model,
            generation,
            |s, p, b| slots.get(s, p, b),
            |s, p, b| slots.get(s, p, b),
            lb,
        )
        .with_retiring_of(plan.retiring_of::<Ipv4Addr>())
        .with_retiring_of(plan.retiring_of::<std::net::Ipv6Addr>());
        let compiled = match &self.dns {
            Some(dns) => dns.attach_zone(compiled),
            None => compiled,
        };
        let entries = compiled.len();
        let applied = apply::apply(
            &plan,
            compiled,
            &self.table,
            &self.conntracks,
            &mut self.program,
            READERS_GRACE,
        )?;
        self.carried = applied.lingering;
        self.resolve_backends();
        Ok(ApplySummary {
            generation,
            entries,
            retiring: plan.retiring().len(),
            retired: applied.retired,
            changes,
            unchanged: false,
        })
    }

    /// Lets the next gateway take the data path over: stops the workers
    /// (closing the AF_XDP sockets), hands the table over, closes the
    /// admin endpoint and puts busy-polling settings back, answers the
    /// request, then waits for SIGTERM or SIGINT without touching the XDP
    /// program (which the next gateway keeps, or replaces).
    fn hand_over(
        mut self,
        request: handover::Request,
        terminate: &AtomicBool,
    ) -> anyhow::Result<()> {
        tracing::info!("the next gateway asks to take over; stopping workers");
        // The table is at rest once every worker has left its loop; their
        // sockets go on closing while the next gateway adopts it.
        if !self.workers_leave() {
            bail!(
                "a worker did not stop within {WORKERS_LEAVE_WITHIN:?}: the connection table \
                 is not handed over"
            );
        }
        self.conntracks.hand_over()?;
        self.napi_tuning.clear();
        if let Some(dns) = &mut self.dns {
            dns.hand_over();
        }
        self.program.leave_attached();
        request
            .released(&self.socket_mode)
            .context("telling the next gateway that it may take over")?;
        let panicked = self.stop_workers();
        // The next gateway binds these addresses last, after its workers.
        self.admin_server = None;
        self.metrics_server = None;
        tracing::info!(
            flows = self.conntracks.flows(),
            "handed the data path over to the next gateway; idle until SIGTERM"
        );
        // Acquire: pairs with the signal handler's store.
        while !terminate.load(Ordering::Acquire) {
            std::thread::sleep(STOP_CHECK_EVERY);
        }
        tracing::info!("bye");
        if panicked {
            bail!("a worker panicked");
        }
        Ok(())
    }

    /// Stops the workers and waits until each has left its loop (or
    /// ended): they touch no table or flow after, though their sockets may
    /// still be closing. False if one had not within
    /// `WORKERS_LEAVE_WITHIN`.
    fn workers_leave(&mut self) -> bool {
        // Release: as in `set_ready`; /readyz answers 503 from now on.
        self.ready.store(false, Ordering::Release);
        // Release: see `serve`.
        self.stop.store(true, Ordering::Release);
        let deadline = Instant::now() + WORKERS_LEAVE_WITHIN;
        let mut left = 0;
        while left < self.workers.len() {
            match self.workers_left.recv_timeout(Duration::from_millis(1)) {
                Ok(()) => left += 1,
                // A worker that panicked ends without a word.
                Err(_) if self.workers.iter().all(|(_, h)| h.is_finished()) => return true,
                Err(_) if Instant::now() >= deadline => return false,
                Err(_) => {}
            }
        }
        true
    }

    /// Stops the workers and waits for them to end; true if one had
    /// panicked.
    fn stop_workers(&mut self) -> bool {
        // Joined below in any case.
        let _ = self.workers_leave();
        let mut panicked = false;
        for (core, handle) in self.workers.drain(..) {
            if handle.join().is_err() {
                tracing::error!(core, "worker panicked");
                panicked = true;
            }
        }
        let totals = self.counters.iter().fold((0, 0, 0), |acc, c| {
            (
                acc.0 + c.rx_packets.get(),
                acc.1 + c.tx_packets.get(),
                acc.2 + c.total_drops(),
            )
        });
        tracing::info!(
            rx = totals.0,
            tx = totals.1,
            dropped = totals.2,
            "workers stopped"
        );
        panicked
    }

    fn shutdown(mut self) -> anyhow::Result<()> {
        tracing::info!("stopping");
        let panicked = self.stop_workers();
        if !self.conntracks.files().is_empty() {
            // Every worker is gone: the records are at rest.
            self.conntracks.mark_clean();
            tracing::info!(
                flows = self.conntracks.flows(),
                "connection tables left for the next gateway"
            );
        }
        // Traffic for VIPs is dropped, not handed to the kernel (which
        // would reset it), until the next gateway takes over.
        self.program.leave_attached();
        tracing::info!(
            "XDP program left attached: VIP traffic is dropped, not passed to the kernel, \
             until the next gateway takes over; bye"
        );
        if panicked {
            bail!("a worker panicked");
        }
        Ok(())
    }
}
