//! `cipgw run`: wires the parts of a running gateway together.
//!
//! Start-up order matters for the first packet:
//! 1. the service table is loaded and compiled (a bad control file stops
//!    start-up with the error);
//! 2. the netlink monitor publishes the first routes/neighbours snapshot;
//! 3. the XDP program is loaded, its VIP and backend maps filled, and the
//!    AF_XDP sockets of every worker opened and registered in the XSKMAP;
//! 4. only then is the program attached, so no VIP packet is redirected
//!    to a socket that is not there yet;
//! 5. workers start, pinned to their cores; neighbours of all backends are
//!    resolved ahead of the first connection.
//!
//! On SIGINT/SIGTERM workers stop, the program is detached from every
//! interface (also when start-up fails half-way, by `XdpProgram`'s Drop)
//! and the process exits 0.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cipgw_config::settings::{Settings, Source};
use cipgw_config::ServiceTable;
use cipgw_control::source::{
    self as control_source, Receiver, RecvTimeoutError, SourceEvent, SourceHandle,
};

use crate::admin::{AdminServer, AdminState};
use crate::affinity::Affinity;
use crate::bpf::{self, BackendKey, XdpProgram};
use crate::conntrack::persist::{self, Previous, TableFile};
use crate::conntrack::{Conntrack, ConntrackConfig};
use crate::counters::WorkerCounters;
use crate::lb::Rng;
use crate::metrics::{ServiceStats, WorkerTelemetry};
use crate::netlink::{self, NetMonitor};
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::table::{flow_targets, CompiledTable, FlowTarget, TableHandle};
use crate::worker::{Worker, WorkerShared};
use crate::xsk::{self, BusyPoll, NapiTuning, QueueAssignment, WorkerIo, XskConfig};

/// How long a table change waits for every worker to move to the new
/// table before retiring flows (workers load it at every batch).
const READERS_GRACE: Duration = Duration::from_secs(2);
/// How often the control loop looks at the stop flag while no event
/// comes: workers stop at the signal itself, so until this process exits
/// (and the next gateway can start) VIP traffic is dropped; keep it short.
const STOP_CHECK_EVERY: Duration = Duration::from_millis(10);
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
    conntrack: Arc<Conntrack>,
    /// The connection table's file, when it has one (`--state-dir`):
    /// marked clean after a graceful stop.
    table_file: Option<Arc<TableFile>>,
    /// Targets of flows adopted from a previous gateway, until the first
    /// full table says which of them still exist.
    adopted_targets: Option<HashSet<FlowTarget>>,
    /// Targets of open TCP connections whose target left: the last
    /// retirement pass left them for their next packet (see `apply`), so
    /// the next table must still end them.
    lingering: HashSet<FlowTarget>,
    affinity: Arc<Affinity>,
    workers: Vec<(usize, JoinHandle<()>)>,
    counters: Vec<Arc<WorkerCounters>>,
    stop: Arc<AtomicBool>,
    admin: Arc<AdminState>,
    _admin_server: AdminServer,
    /// Per-Service-port counter slots, reassigned with every table.
    service_stats: Arc<ServiceStats>,
    /// Busy polling's interface settings, put back when dropped.
    _napi_tuning: Vec<NapiTuning>,
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
            settings.service_cidr,
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
            settings.service_cidr,
            settings.min_sync_period,
            tx,
        )?,
        Source::Kubernetes { kubeconfig } => cipgw_control::kube_source::spawn_kube_source(
            cipgw_control::kube_source::KubeSourceConfig {
                kubeconfig: kubeconfig.clone(),
                proxy_name: settings.proxy_name.clone(),
                service_cidr: settings.service_cidr,
                min_sync_period: settings.min_sync_period,
            },
            tx,
        )?,
    };
    Ok((handle, rx))
}

/// The connection table, in its file under `--state-dir` (adopting the
/// flows a previous gateway left there) or in process memory, and the
/// conntrack clock's zero that goes with it.
fn open_conntrack(
    settings: &Settings,
) -> anyhow::Result<(Arc<Conntrack>, Option<Arc<TableFile>>, Instant)> {
    let config = conntrack_config(settings);
    let Some(dir) = &settings.state_dir else {
        return Ok((Arc::new(Conntrack::new(config)), None, Instant::now()));
    };
    let file = match TableFile::open(
        dir,
        Conntrack::records_for(&config),
        Conntrack::RECORD_BYTES,
        persist::monotonic_ns(),
    ) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::OutOfMemory => {
            tracing::warn!(
                error = %e,
                "no huge pages for the connection table: it stays in process memory on \
                 normal pages, and a restart will reset connections"
            );
            return Ok((Arc::new(Conntrack::new(config)), None, Instant::now()));
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "--state-dir {}: opening the connection table",
                    dir.display()
                )
            })
        }
    };
    let file = Arc::new(file);
    match file.huge_page_size() {
        Some(page) => tracing::info!(huge_page_kib = page >> 10, "connection table on huge pages"),
        None => tracing::info!("connection table on normal pages"),
    }
    let epoch = persist::instant_of(file.epoch_ns());
    let conntrack = Arc::new(Conntrack::in_file(config, Arc::clone(&file)));
    let path = file.path().display().to_string();
    match file.previous() {
        Previous::Fresh => tracing::info!(%path, "new connection table"),
        Previous::SetAside { aside, reason } => tracing::warn!(
            %path,
            aside = %aside.as_ref().map_or("removed".into(), |a| a.display().to_string()),
            %reason,
            "the connection table left there cannot be used; it was set aside and a new one started \
             (connections through the previous gateway will be reset)"
        ),
        Previous::Compatible { clean } => {
            let now = epoch.elapsed().as_secs() as u32;
            let adoption = conntrack.adopt(now);
            tracing::info!(
                %path,
                clean_stop = clean,
                flows = adoption.flows,
                expired = adoption.expired,
                discarded = adoption.discarded,
                "connection table adopted from the previous gateway"
            );
        }
    }
    Ok((conntrack, Some(file), epoch))
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

/// Every target adopted flows go to.
fn adopted_targets(conntrack: &Conntrack) -> HashSet<FlowTarget> {
    let mut targets = HashSet::new();
    conntrack.for_each(|key, hit| {
        if hit.direction == crate::conntrack::Direction::Forward {
            targets.insert((
                key.dst,
                key.dst_port,
                key.protocol,
                hit.nat_ip,
                hit.nat_port,
            ));
        }
    });
    targets
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

/// The XDP map contents a table needs (public for the control bench).
pub fn map_sets(table: &CompiledTable) -> (HashSet<Ipv4Addr>, HashSet<BackendKey>) {
    let vips = table.vips().collect();
    let backends = table
        .backends()
        .map(|(ip, port, proto)| (ip, port, proto.ip_number()))
        .collect();
    (vips, backends)
}

/// What applying a table did.
#[derive(Debug, Clone, Copy)]
struct ApplySummary {
    generation: u64,
    entries: usize,
    /// Targets (VIP, port, protocol, endpoint) the table ended.
    retiring: usize,
    retired: usize,
}

/// Run-time options that are not part of the deployable settings.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Benchmark pass-through mode: L2 forwarding to this peer's MAC.
    pub pass_through: Option<Ipv4Addr>,
}

/// Runs the gateway until SIGINT or SIGTERM.
pub fn run(settings: Settings, options: Options) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    let mut gateway = start(&settings, &options, Arc::clone(&stop))?;
    gateway.serve(&settings);
    gateway.shutdown()
}

fn start(settings: &Settings, options: &Options, stop: Arc<AtomicBool>) -> anyhow::Result<Gateway> {
    let load_started = Instant::now();
    let model = initial_table(settings)?;
    let load_time = load_started.elapsed();
    let from_file = matches!(settings.source, Source::ControlFile(_));
    // Per-Service-port counters: slots assigned before each compile, so
    // that the table carries them and counters exist before it is live.
    let service_stats = Arc::new(ServiceStats::new());
    let slots = service_stats.assign(&model);
    let compiled = CompiledTable::compile_with_slots(Arc::new(model), 1, |s, p| slots.get(s, p));
    tracing::info!(
        services = compiled.model().services.len(),
        entries = compiled.len(),
        "service table loaded"
    );

    // Interfaces, their queues, and the XSKMAP layout.
    let mut ifindexes = Vec::new();
    let mut queue_counts = Vec::new();
    for iface in &settings.ifaces {
        let ifindex = xsk::interface_index(iface)
            .with_context(|| format!("--iface {iface}: no such interface"))?;
        let queues = xsk::rx_queue_count(iface)
            .with_context(|| format!("--iface {iface}: reading its queue count"))?;
        ifindexes.push(ifindex);
        queue_counts.push(queues);
    }
    let base_slots = bpf::base_slots(&queue_counts)?;

    let monitor =
        netlink::spawn_monitor(settings.ifaces.clone()).context("starting the netlink monitor")?;

    let mut program = XdpProgram::load().context("loading the XDP program")?;
    if let Some(dir) = &settings.state_dir {
        program.recognise(recorded_program(dir));
    }
    let (vips, backends) = map_sets(&compiled);
    program.add_missing(&vips, &backends)?;
    if !from_file {
        // Until the first sync, steer what the gateway before us steered.
        let inherited = program.inherit_maps(&ifindexes)?;
        if inherited.vips_added + inherited.backends_added > 0 {
            tracing::info!(
                vips = inherited.vips_added,
                backends = inherited.backends_added,
                "kept the previous gateway's VIPs and backends until the first sync"
            );
        }
    }
    for (i, &ifindex) in ifindexes.iter().enumerate() {
        program.set_port(ifindex, base_slots[i])?;
    }

    // Queue q of every interface belongs to worker q mod workers, so a
    // flow received on queue q can leave on queue q of the other arm
    // from the same worker.
    let workers = settings.cores.len();
    let mut assignments: Vec<Vec<QueueAssignment>> = vec![Vec::new(); workers];
    for (port, iface) in settings.ifaces.iter().enumerate() {
        for queue in 0..queue_counts[port] {
            assignments[queue as usize % workers].push(QueueAssignment {
                port: u8::try_from(port).context("too many interfaces")?,
                ifname: iface.clone(),
                ifindex: ifindexes[port],
                queue,
            });
        }
    }

    let (conntrack, table_file, epoch) = open_conntrack(settings)?;
    let adopted = adopted_targets(&conntrack);
    if from_file && !adopted.is_empty() {
        // The control file is the whole desired state: flows to targets
        // it lacks go now, before any worker runs.
        let targets = flow_targets(compiled.model());
        let retired = conntrack.retire(|key, (ip, port)| {
            !targets.contains(&(key.dst, key.dst_port, key.protocol, ip, port))
        });
        if retired > 0 {
            tracing::info!(
                retired,
                "adopted flows whose endpoint or port is gone retired"
            );
        }
    }
    let table = TableHandle::new(compiled);
    let ready = Arc::new(AtomicBool::new(false));
    let admin = Arc::new(AdminState::new(
        settings.ifaces.clone(),
        table.clone(),
        Arc::clone(&conntrack),
        Arc::clone(&ready),
    ));
    if from_file {
        admin
            .control()
            .record_sync(load_time, &Ok::<(), std::convert::Infallible>(()));
    }
    let admin_server = AdminServer::start(settings.admin, Arc::clone(&admin))?;
    let summary = conntrack.summary();
    tracing::info!(
        conntrack_max = summary.max_flows,
        unreplied_percent = settings.conntrack.unreplied_percent,
        table_mib = (summary.max_flows as u64 * ConntrackConfig::BYTES_PER_FLOW) >> 20,
        "connection table bounded (memory is taken as flows arrive)"
    );
    if settings.cluster_cidrs.is_empty() {
        tracing::warn!(
            "no --cluster-cidr given: VIPs accept traffic from any source; \
             a ClusterIP is meant to be reachable from inside the cluster only"
        );
    }
    let affinity = Arc::new(Affinity::default());
    let pipeline_config = PipelineConfig {
        cluster_cidrs: settings.cluster_cidrs.clone(),
    };
    let resolver = monitor.resolver();
    let resolve: crate::worker::ResolveFn = Arc::new(move |ifindex, ip| {
        resolver.request_resolution(ifindex, ip);
    });
    let mut pending = Vec::new();
    for (w, queues) in assignments.into_iter().enumerate() {
        let core = settings.cores[w];
        if queues.is_empty() {
            tracing::warn!(
                core,
                "no interface queue left for this core's worker; it does not start"
            );
            continue;
        }
        for q in &queues {
            tracing::info!(core, iface = %q.ifname, queue = q.queue, "queue assigned");
        }
        let ports_on_worker: HashSet<_> = queues.iter().map(|q| q.port).collect();
        if ports_on_worker.len() < settings.ifaces.len() {
            tracing::warn!(
                core,
                "this worker has no queue on some interface and cannot transmit there; \
                 give every interface at least as many queues as workers"
            );
        }
        let ring = settings.io.ring_size;
        let config = XskConfig {
            // Room for every socket's fill and RX rings to be full at once
            // with as many frames again on their way out.
            frame_count: (4096u32).max(2 * ring * queues.len() as u32),
            rx_size: ring,
            tx_size: ring,
            fill_size: ring,
            comp_size: ring,
            rx_batch: settings.io.rx_batch,
            idle_spin: settings.io.idle_spin,
            tx_budget: ring,
            busy_poll: settings.io.busy_poll.then_some(BusyPoll {
                usecs: BUSY_POLL_USECS,
                budget: u16::try_from(settings.io.rx_batch).unwrap_or(u16::MAX),
            }),
            ..XskConfig::default()
        };
        let mut io = WorkerIo::open(&config, &queues)
            .with_context(|| format!("opening AF_XDP sockets for the worker on core {core}"))?;
        for (socket, q) in io.sockets.iter().zip(&queues) {
            program.register_socket(base_slots[usize::from(q.port)] + q.queue, socket.fd())?;
        }
        io.prefill(config.fill_size as usize);
        pending.push((core, io));
    }
    if pending.is_empty() {
        bail!("no worker has a queue to serve");
    }

    for (i, &ifindex) in ifindexes.iter().enumerate() {
        let mode = program
            .attach(ifindex, settings.xdp_mode)
            .with_context(|| format!("attaching XDP to {}", settings.ifaces[i]))?;
        tracing::info!(iface = %settings.ifaces[i], ?mode, "XDP program attached");
    }

    if let Some(dir) = &settings.state_dir {
        record_program(dir, program.program_id());
    }

    // Only where some socket can actually busy-poll: without a poller the
    // NAPI timer would only delay receive.
    let busy_polling = pending
        .iter()
        .any(|(_, io)| io.sockets.iter().any(|s| s.busy_poll));
    if settings.io.busy_poll && !busy_polling {
        tracing::warn!(
            "--busy-poll on: no socket can busy-poll (copy mode, e.g. veth); \
             the kernel's softirq or NAPI threads keep receiving"
        );
    }
    let mut napi_tuning = Vec::new();
    if busy_polling {
        for iface in &settings.ifaces {
            match NapiTuning::apply(
                iface,
                BUSY_POLL_DEFER_HARD_IRQS,
                BUSY_POLL_GRO_FLUSH_TIMEOUT_NS,
            ) {
                Ok(Some(t)) => napi_tuning.push(t),
                Ok(None) => tracing::warn!(
                    %iface,
                    "busy polling: this namespace's sysfs is not mounted here; \
                     napi_defer_hard_irqs and gro_flush_timeout left as they are"
                ),
                Err(e) => tracing::warn!(
                    %iface, error = %e,
                    "busy polling: could not set napi_defer_hard_irqs and gro_flush_timeout"
                ),
            }
        }
        tracing::info!(
            rx_batch = settings.io.rx_batch,
            "busy polling: workers run their queues' NAPI"
        );
    }

    admin.count_services(Arc::clone(&service_stats));
    let worker_nice = settings.io.worker_nice;
    let mut handles = Vec::new();
    let mut counters = Vec::new();
    for (core, io) in pending {
        let telemetry = WorkerTelemetry::new(core);
        admin.add_worker(telemetry.clone());
        let worker_counters = Arc::clone(&telemetry.counters);
        counters.push(Arc::clone(&worker_counters));
        let pipeline = Pipeline::new(Arc::clone(&conntrack), worker_counters, Rng::from_entropy())
            .with_affinity(Arc::clone(&affinity))
            .with_config(pipeline_config.clone())
            .with_service_counters(service_stats.add_worker());
        let shared = WorkerShared {
            table: table.reader(),
            net: monitor.handle(),
            stop: Arc::clone(&stop),
            resolve: Arc::clone(&resolve),
            epoch,
            pass_through: options.pass_through,
        };
        let worker = Worker::new(
            io,
            pipeline,
            shared,
            settings.ifaces.len(),
            telemetry.latency_recorder(),
        );
        let handle = std::thread::Builder::new()
            .name(format!("cipgw-worker-{core}"))
            .spawn(move || {
                if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                    tracing::warn!(core, "could not pin the worker to its core");
                }
                set_worker_nice(core, worker_nice);
                worker.run();
            })
            .context("spawning a worker thread")?;
        handles.push((core, handle));
    }

    let (source, events) = spawn_source(settings).context("starting the source of services")?;
    tracing::info!(source = source.name(), "watching for changes");
    let gateway = Gateway {
        source,
        events,
        epoch,
        ready,
        table,
        program,
        monitor,
        conntrack,
        lingering: HashSet::new(),
        table_file,
        adopted_targets: (!from_file && !adopted.is_empty()).then_some(adopted),
        affinity,
        workers: handles,
        counters,
        stop,
        admin,
        _admin_server: admin_server,
        service_stats: Arc::clone(&service_stats),
        _napi_tuning: napi_tuning,
    };
    gateway.resolve_backends();
    if let Some(peer) = options.pass_through {
        tracing::warn!(%peer, "pass-through mode: L2 forwarding only, no NAT (benchmarks)");
        gateway.resolve(peer);
    }
    if from_file {
        gateway.set_ready();
    } else {
        tracing::info!("waiting for the first full sync from the Kubernetes API");
    }
    tracing::info!(
        ifaces = ?settings.ifaces,
        workers = gateway.workers.len(),
        "cipgw ready"
    );
    Ok(gateway)
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
    /// housekeeping, until asked to stop.
    fn serve(&mut self, _settings: &Settings) {
        let mut last_sweep = Instant::now();
        // Acquire: pairs with the signal handler's store.
        while !self.stop.load(Ordering::Acquire) {
            match self.events.recv_timeout(STOP_CHECK_EVERY) {
                Ok(event) => self.on_event(event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    tracing::error!(
                        source = self.source.name(),
                        "the source stopped; shutting down"
                    );
                    // Release: workers see everything before the stop request.
                    self.stop.store(true, Ordering::Release);
                    break;
                }
            }
            if self.workers.iter().any(|(_, h)| h.is_finished()) {
                tracing::error!("a worker thread ended unexpectedly; shutting down");
                // Release: see above.
                self.stop.store(true, Ordering::Release);
                break;
            }
            if last_sweep.elapsed() >= SWEEP_EVERY {
                last_sweep = Instant::now();
                let now = self.epoch.elapsed().as_secs() as u32;
                let removed = self.conntrack.sweep(now);
                if removed > 0 {
                    tracing::debug!(removed, "expired idle flows");
                }
                let table = self.table.current();
                self.affinity.sweep(now, |service| {
                    table.port_entry(service).and_then(|e| e.affinity)
                });
                self.resolve_backends();
            }
        }
    }

    fn set_ready(&self) {
        // Release: readers of the flag (admin) see the published table.
        self.ready.store(true, Ordering::Release);
    }

    fn on_event(&mut self, event: SourceEvent) {
        match event {
            SourceEvent::Table(model) => {
                let started = Instant::now();
                let result = self.apply(model);
                self.admin.control().record_sync(started.elapsed(), &result);
                match result {
                    Ok(summary) => tracing::info!(
                        took = ?started.elapsed(),
                        generation = summary.generation,
                        entries = summary.entries,
                        retiring_targets = summary.retiring,
                        retired_flows = summary.retired,
                        "service table applied"
                    ),
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "applying the new service table failed; the previous one stays")
                    }
                }
            }
            SourceEvent::Synced => {
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
                tracing::warn!(%error, "Kubernetes API unreachable; forwarding with the last table")
            }
            SourceEvent::Reconnected => tracing::info!("Kubernetes API reachable again"),
        }
    }

    /// Installs a new desired state: XDP map entries for new VIPs and
    /// backends first, then the table, then the map entries nobody needs
    /// any more, so no packet for a VIP that exists before and after is
    /// ever handed to the kernel by mistake; then flows whose endpoint or
    /// Service port went away are retired (their next TCP segment is
    /// answered with a RST, their next UDP datagram picks a live endpoint).
    fn apply(&mut self, model: Arc<ServiceTable>) -> anyhow::Result<ApplySummary> {
        let old = self.table.current();
        if **old.model() == *model {
            return Ok(ApplySummary {
                generation: old.generation(),
                entries: old.len(),
                retiring: 0,
                retired: 0,
            });
        }
        let slots = self.service_stats.assign(&model);
        let mut before = flow_targets(old.model());
        // The first table of a gateway that adopted flows ends those whose
        // target it lacks, like any other change; so does every table for
        // handshakes the last pass left to their next packet.
        before.extend(self.adopted_targets.take().unwrap_or_default());
        before.extend(std::mem::take(&mut self.lingering));
        let after = flow_targets(&model);
        let retiring: Vec<FlowTarget> = before.difference(&after).copied().collect();
        let generation = old.generation() + 1;
        let compiled = CompiledTable::compile_with_slots(Arc::clone(&model), generation, |s, p| {
            slots.get(s, p)
        })
        .with_retiring(retiring.iter().copied());
        let (vips, backends) = map_sets(&compiled);
        // Replies of flows being retired keep reaching the workers until
        // the pass below, so a SYN-ACK racing the change is not handed to
        // the kernel (which would forward it un-NATed).
        let mut steered = backends.clone();
        steered.extend(retiring.iter().map(|t| (t.3, t.4, t.2.ip_number())));
        self.program.add_missing(&vips, &steered)?;
        let summary = ApplySummary {
            generation,
            entries: compiled.len(),
            retiring: retiring.len(),
            retired: 0,
        };
        self.table.publish(compiled);
        self.program.remove_stale(&vips, &steered)?;

        // Workers retire flows to removed targets at their next packet
        // from now on; once none uses an older table (which could still
        // create such flows), the UDP flows and finished TCP flows go in
        // one pass. An open TCP connection is left to its next packet from
        // the client, which is reset (or, a retransmitted SYN, sent to a
        // live endpoint): dropped here, the replies already on their way
        // from the Pod would be lost and a client waiting for them would
        // hang until its own timeout.
        let retired = if retiring.is_empty() {
            0
        } else {
            if !self.table.wait_for_readers(generation, READERS_GRACE) {
                tracing::warn!(
                    generation,
                    "a worker did not move to the new table within {READERS_GRACE:?}; retiring flows anyway"
                );
            }
            let mut lingering = HashSet::new();
            let retired = self.conntrack.retire_settled(
                |key, (ip, port)| !after.contains(&(key.dst, key.dst_port, key.protocol, ip, port)),
                |key, (ip, port)| {
                    lingering.insert((key.dst, key.dst_port, key.protocol, ip, port));
                },
            );
            let mut steered = backends;
            steered.extend(lingering.iter().map(|t| (t.3, t.4, t.2.ip_number())));
            self.program.remove_stale(&vips, &steered)?;
            self.lingering = lingering;
            retired
        };
        self.resolve_backends();
        Ok(ApplySummary { retired, ..summary })
    }

    fn shutdown(mut self) -> anyhow::Result<()> {
        tracing::info!("stopping");
        // Release: as in `set_ready`; /readyz answers 503 from now on.
        self.ready.store(false, Ordering::Release);
        // Release: see `serve`.
        self.stop.store(true, Ordering::Release);
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
        if let Some(file) = &self.table_file {
            // Every worker is gone: the records are at rest.
            file.mark_clean();
            tracing::info!(
                path = %file.path().display(),
                flows = self.conntrack.summary().flows,
                "connection table left for the next gateway"
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
