//! Starting a gateway, step by step.
//!
//! Start-up order matters for the first packet:
//! 1. the service table is loaded and compiled (a bad control file stops
//!    start-up with the error);
//! 2. the netlink monitor publishes the first routes/neighbours snapshot;
//! 3. a gateway still running on the same `--state-dir` is asked for its
//!    XDP program ([`super::handover`]); the program is kept if it is
//!    this binary's, else loaded here; its VIP and backend maps are
//!    filled, the workers' UMEMs created, and the connection tables
//!    built with their index and queues in memory (the bulk of their
//!    memory, taken whole so that no worker waits for a page fault);
//! 4. the running gateway is asked to let go: everything before this
//!    point can fail while it still forwards; then the connection tables
//!    move into their files and adopt the flows there, their records are
//!    taken, a kept program's other maps set, and the AF_XDP sockets
//!    of every worker bound and registered in the XSKMAP (a kept
//!    program forwards to them from then on);
//! 5. only then is a program loaded here attached, so no VIP packet is
//!    redirected to a socket that is not there yet;
//! 6. workers start, pinned to their cores; the admin endpoint is bound
//!    and the source of services started; neighbours of all backends are
//!    resolved ahead of the first connection.
//!
//! A failure half-way detaches what was attached (`XdpProgram`'s Drop).

use std::collections::HashSet;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cipgw_config::settings::{Settings, Source};

use super::conntracks::Conntracks;
use super::handover;
use super::plan::{flow_targets, steering_of, Target};
use super::{
    conntrack_config, initial_table, record_program, recorded_program, set_worker_nice,
    spawn_source, Gateway, Options, BUSY_POLL_DEFER_HARD_IRQS, BUSY_POLL_GRO_FLUSH_TIMEOUT_NS,
    BUSY_POLL_USECS,
};
use crate::admin::{AdminServer, AdminState};
use crate::affinity::Affinity;
use crate::bpf::{self, XdpMaps, XdpProgram};
use crate::conntrack::ConntrackConfig;
use crate::counters::WorkerCounters;
use crate::lb::Rng;
use crate::maglev::MaglevTables;
use crate::metrics::{ServiceStats, WorkerTelemetry};
use crate::netlink::{self, NetMonitor};
use crate::pipeline::{Pipeline, PipelineConfig};
use crate::table::{CompiledTable, LbPlan, TableHandle};
use crate::worker::{Worker, WorkerShared};
use crate::xsk::{
    self, BusyPoll, NapiTuning, PreparedIo, QueueAssignment, WorkerIo, XskConfig, ZeroCopy,
};

/// Starts the gateway: see the module doc for the order.
pub(super) fn start(
    settings: &Settings,
    options: &Options,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Gateway> {
    let from_file = matches!(settings.source, Source::ControlFile(_));
    let mut dns = super::dns::DnsService::new(settings)?;
    let mut first = load_table(settings)?;
    // A control file is a full sync: its zone is answered at once. From
    // Kubernetes, answers are SERVFAIL until the first full sync.
    if let (Some(dns), true) = (&dns, from_file) {
        first.table = dns.attach_zone(first.table);
    }
    let ports = Ports::open(settings)?;
    let monitor =
        netlink::spawn_monitor(settings.ifaces.clone()).context("starting the netlink monitor")?;
    let snat = super::snat::resolve(settings)?;
    // A gateway still running on this state directory shares its program
    // and says how its sockets are bound; it goes on forwarding.
    let mut running = match &settings.state_dir {
        Some(dir) => handover::ask(dir).with_context(|| {
            format!(
                "--state-dir {}: asking the gateway running there for its XDP program",
                dir.display()
            )
        })?,
        None => handover::Running::None,
    };
    let mut program = load_program(settings, &first.table, &ports, from_file, &mut running)?;
    if !program.is_adopted() {
        if let Some(snat) = &snat {
            program.set_snat(&snat.addresses, snat.ports.clone())?;
        }
        if let Some(dns) = &dns {
            for &address in dns.addresses() {
                program
                    .steer_dns(address, crate::dns::PORT)
                    .with_context(|| {
                        format!("--dns-address {address}: steering its UDP port 53")
                    })?;
            }
        }
    }
    let assignments = assign_queues(settings, &ports)?;
    let hint = match &running {
        handover::Running::Offer(offer) => zero_copy_for(offer.mode.as_ref(), settings),
        _ => ZeroCopy::Auto,
    };
    let prepared = prepare_sockets(settings, assignments, hint)?;
    let config = conntrack_config(settings);
    tracing::info!(
        conntrack_max = config.max_flows,
        unreplied_percent = settings.conntrack.unreplied_percent,
        table_mib = (config.max_flows as u64 * ConntrackConfig::BYTES_PER_FLOW) >> 20,
        table6_mib = (config.max_flows as u64 * ConntrackConfig::BYTES_PER_FLOW_V6) >> 20,
        "connection tables bounded, per family; taking the memory of those the service CIDRs need"
    );
    let reserved = Conntracks::reserve(settings, config, snat.as_ref())?;
    // Everything above is ready; what follows needs what a gateway still
    // running on this state directory holds.
    let (prepared, took_over) = match &settings.state_dir {
        Some(dir) => take_over(dir, settings, running, prepared)?,
        None => (prepared, false),
    };

    let (conntracks, epoch) = reserved.open(settings)?;
    let carried = adopt_flows(&conntracks, &first.table, from_file);
    let table = TableHandle::new(first.table);
    let ready = Arc::new(AtomicBool::new(false));
    let admin = Arc::new(AdminState::new(
        settings.ifaces.clone(),
        table.clone(),
        Arc::clone(&conntracks.v4),
        Arc::clone(&ready),
    ));
    admin.set_conntrack6(Arc::clone(&conntracks.v6));
    admin.set_conntrack_epoch(epoch);
    if from_file {
        admin
            .control()
            .record_sync(first.load_time, &Ok::<(), std::convert::Infallible>(()));
    }
    admin.control_turned();
    // A control file is there to read (a missing one fails the start);
    // the Kubernetes API counts as reached once the first sync is done.
    admin.control().set_connected(from_file);
    if let Some(dns) = &dns {
        admin.count_dns(Arc::clone(&dns.stats));
    }
    if settings.cluster_cidrs.is_empty() {
        tracing::warn!(
            "no --cluster-cidr given: VIPs accept traffic from any source; \
             a ClusterIP is meant to be reachable from inside the cluster only"
        );
    }

    if program.is_adopted() {
        // The running gateway has let go: the maps a start fills as a
        // whole now say what this gateway's settings say.
        let port_slots: Vec<(u32, u32)> = ports
            .ifindexes
            .iter()
            .copied()
            .zip(ports.base_slots.iter().copied())
            .collect();
        let dns_steered: Vec<_> = dns
            .as_ref()
            .map(|d| {
                d.addresses()
                    .iter()
                    .map(|&a| (a, crate::dns::PORT))
                    .collect()
            })
            .unwrap_or_default();
        program
            .take_over_maps(
                &port_slots,
                snat.as_ref()
                    .map(|s| (s.addresses.as_slice(), s.ports.clone())),
                &dns_steered,
            )
            .context("writing the kept XDP program's maps")?;
    }
    let pending = bind_sockets(prepared, &program, &ports.base_slots)?;
    let socket_mode = handover::SocketMode {
        copy_mode: pending
            .iter()
            .all(|(_, io)| io.sockets.iter().all(|s| !s.zero_copy)),
        ifaces: settings.ifaces.clone(),
    };
    let xdp_modes = attach(settings, &mut program, &ports.ifindexes)?;
    if program.is_adopted() && from_file {
        // What the running gateway steered that this table does not.
        drop_unwanted_steering(&mut program, &table.current())?;
    }
    admin.set_interface_modes(interface_modes(settings, &xdp_modes, &pending));
    let napi_tuning = tune_busy_polling(settings, &pending);

    let affinity = Arc::new(Affinity::default());
    admin.count_services(Arc::clone(&first.service_stats));
    let Workers {
        handles,
        counters,
        left: workers_left,
    } = spawn_workers(
        settings,
        options,
        pending,
        &WorkerParts {
            conntracks: &conntracks,
            affinity: &affinity,
            service_stats: &first.service_stats,
            table: &table,
            monitor: &monitor,
            stop: &stop,
            admin: &admin,
            epoch,
            dns: dns.as_ref(),
        },
    )?;
    if let Some(dns) = dns.as_mut() {
        dns.start_tcp(&table, took_over)?;
    }

    // After the workers: forwarding does not wait for the admin address,
    // which a gateway that has just handed over may still hold.
    let admin_server = bind_retrying(|| AdminServer::start(settings.admin, Arc::clone(&admin)))?;
    let metrics_server =
        bind_retrying(|| AdminServer::start_metrics(settings.metrics, Arc::clone(&admin)))?;
    let (source, events) = spawn_source(settings).context("starting the source of services")?;
    tracing::info!(source = source.name(), "watching for changes");
    let handover = match &settings.state_dir {
        Some(dir) => {
            let sharing = handover::Sharing {
                digest: bpf::object_digest(),
                program: program
                    .share()
                    .context("copying the XDP program's fds for the next gateway")?,
                mode: socket_mode.clone(),
            };
            Some(
                handover::Listener::start(dir, Arc::clone(&stop), sharing).with_context(|| {
                    format!(
                        "--state-dir {}: listening for the next gateway's hand-over",
                        dir.display()
                    )
                })?,
            )
        }
        None => None,
    };
    let gateway = Gateway {
        source,
        events,
        epoch,
        ready,
        table,
        program,
        monitor,
        conntracks,
        carried,
        affinity,
        workers: handles,
        workers_left,
        counters,
        stop,
        admin,
        admin_server: Some(admin_server),
        metrics_server: Some(metrics_server),
        handover,
        socket_mode,
        control_file: match &settings.source {
            Source::ControlFile(path) => Some(path.clone()),
            Source::Kubernetes { .. } => None,
        },
        service_stats: first.service_stats,
        napi_tuning,
        lb: settings.lb.algorithm,
        maglev: first.maglev,
        dns,
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

/// The first table, compiled, with the per-endpoint counters it uses.
struct FirstTable {
    table: CompiledTable,
    service_stats: Arc<ServiceStats>,
    /// How long loading the model took (the control file's first sync).
    load_time: Duration,
    /// The Maglev tables it uses, kept for the next compilations.
    maglev: MaglevTables,
}

fn load_table(settings: &Settings) -> anyhow::Result<FirstTable> {
    let load_started = Instant::now();
    let model = initial_table(settings)?;
    let load_time = load_started.elapsed();
    // Per-endpoint counters of every Service port: slots assigned before
    // each compile, so that the table carries them and counters exist
    // before it is live.
    let service_stats = Arc::new(ServiceStats::new());
    let slots = service_stats.assign(&model);
    let mut maglev = MaglevTables::new(settings.lb.maglev_table_size, settings.lb.hash_seed);
    let table = CompiledTable::compile_with_family_slots_lb(
        Arc::new(model),
        1,
        |s, p, b| slots.get(s, p, b),
        |s, p, b| slots.get(s, p, b),
        LbPlan {
            default: settings.lb.algorithm,
            maglev: &mut maglev,
        },
    );
    tracing::info!(
        services = table.model().services.len(),
        entries = table.len(),
        "service table loaded"
    );
    tracing::info!(
        lb = %settings.lb.algorithm,
        maglev_tables = maglev.len(),
        maglev_table_size = settings.lb.maglev_table_size,
        maglev_kib = maglev.memory() >> 10,
        "backend choice"
    );
    Ok(FirstTable {
        table,
        maglev,
        service_stats,
        load_time,
    })
}

/// The interfaces, their RX queues and their slots in the XSKMAP.
struct Ports {
    ifindexes: Vec<u32>,
    queue_counts: Vec<u32>,
    /// Port `i`'s sockets are at `base_slots[i] + queue`.
    base_slots: Vec<u32>,
}

impl Ports {
    fn open(settings: &Settings) -> anyhow::Result<Ports> {
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
        Ok(Ports {
            ifindexes,
            queue_counts,
            base_slots,
        })
    }
}

/// The XDP program with the maps the first table needs: the running
/// gateway's, kept attached, when it is the same object on the same
/// interfaces; else one loaded here (not attached yet) with, for the
/// Kubernetes source, what the gateway before us steered until the first
/// sync.
fn load_program(
    settings: &Settings,
    first: &CompiledTable,
    ports: &Ports,
    from_file: bool,
    running: &mut handover::Running,
) -> anyhow::Result<XdpProgram> {
    let offered = match keep_program(settings, ports, running) {
        Ok(mut program) => {
            // What it steered stays steered (as inherited below) until
            // the first full table says otherwise.
            program.add_missing(&steering_of(first.model()))?;
            return Ok(program);
        }
        Err(offered) => offered,
    };
    let mut program = XdpProgram::load().context("loading the XDP program")?;
    if let Some(dir) = &settings.state_dir {
        program.recognise(recorded_program(dir));
    }
    program.add_missing(&steering_of(first.model()))?;
    if !from_file {
        // Until the first sync, steer what the gateway before us steered.
        let inherited = match &offered {
            Some(shared) => program.inherit_shared(shared)?,
            None => program.inherit_maps(&ports.ifindexes)?,
        };
        if inherited.vips + inherited.backends > 0 {
            tracing::info!(
                vips = inherited.vips,
                backends = inherited.backends,
                "kept the previous gateway's VIPs and backends until the first sync"
            );
        }
    }
    for (&ifindex, &base) in ports.ifindexes.iter().zip(&ports.base_slots) {
        program.set_port(ifindex, base)?;
    }
    Ok(program)
}

/// The running gateway's program, if it offered it and it is the one
/// this binary would load, attached to the same interfaces; else what it
/// offered, if anything, for its maps to be inherited from.
fn keep_program(
    settings: &Settings,
    ports: &Ports,
    running: &mut handover::Running,
) -> Result<XdpProgram, Option<bpf::SharedProgram>> {
    let handover::Running::Offer(offer) = running else {
        return Err(None);
    };
    let shared = offer.program.take().ok_or(None)?;
    if offer.digest != bpf::object_digest() {
        tracing::info!(
            "the running gateway's XDP program is not this binary's (an upgrade): \
             loading an XDP program of our own, to replace it"
        );
        return Err(Some(shared));
    }
    if offer.mode.as_ref().map(|m| &m.ifaces) != Some(&settings.ifaces) {
        tracing::info!(
            "the running gateway serves other interfaces: loading an XDP program of our own"
        );
        return Err(Some(shared));
    }
    // For the maps to be inherited from, should it not be kept.
    let spare = shared.try_clone().ok();
    match XdpProgram::adopt(shared, &ports.ifindexes, settings.xdp_mode) {
        Ok(program) => {
            tracing::info!(
                id = program.program_id(),
                vips = program.steering().vips.len(),
                backends = program.steering().backends.len(),
                "keeping the running gateway's XDP program (the same object) and its maps"
            );
            Ok(program)
        }
        Err(e) => {
            tracing::info!(error = %e, "loading an XDP program of our own, to replace it");
            Err(spare)
        }
    }
}

/// Removes from the maps of a kept program what the running gateway
/// steered and `table` (a control file's, the whole desired state) does
/// not.
fn drop_unwanted_steering(program: &mut XdpProgram, table: &CompiledTable) -> anyhow::Result<()> {
    let wanted = steering_of(table.model());
    let held = program.steering().clone();
    for &vip in held.vips.difference(&wanted.vips) {
        program.remove_vip(vip)?;
    }
    for &backend in held.backends.difference(&wanted.backends) {
        program.remove_backend(backend)?;
    }
    Ok(())
}

/// Queue q of every interface belongs to worker q mod workers, so a flow
/// received on queue q can leave on queue q of the other arm from the
/// same worker.
fn assign_queues(settings: &Settings, ports: &Ports) -> anyhow::Result<Vec<Vec<QueueAssignment>>> {
    let workers = settings.cores.len();
    let mut assignments: Vec<Vec<QueueAssignment>> = vec![Vec::new(); workers];
    for (port, iface) in settings.ifaces.iter().enumerate() {
        for queue in 0..ports.queue_counts[port] {
            assignments[queue as usize % workers].push(QueueAssignment {
                port: u8::try_from(port).context("too many interfaces")?,
                ifname: iface.clone(),
                ifindex: ports.ifindexes[port],
                queue,
            });
        }
    }
    Ok(assignments)
}

/// What to do with flows adopted from a previous gateway: the control
/// file is the whole desired state, so flows to targets it lacks go now,
/// before any worker runs; the Kubernetes source's first full table ends
/// them later, so their targets are carried into its plan.
fn adopt_flows(conntracks: &Conntracks, first: &CompiledTable, from_file: bool) -> HashSet<Target> {
    let adopted = conntracks.targets();
    if !from_file {
        return adopted;
    }
    if !adopted.is_empty() {
        let targets = flow_targets(first.model());
        let retired = conntracks.retire(|target| !targets.contains(target));
        if retired > 0 {
            tracing::info!(
                retired,
                "adopted flows whose endpoint or port is gone retired"
            );
        }
    }
    HashSet::new()
}

/// Creates the UMEM of every worker that has queues, in zero-copy mode
/// unless `zero_copy` says copy mode: (core, its prepared sockets).
/// Binding comes later ([`bind_sockets`]), once the queues are free.
fn prepare_sockets(
    settings: &Settings,
    assignments: Vec<Vec<QueueAssignment>>,
    zero_copy: ZeroCopy,
) -> anyhow::Result<Vec<(usize, PreparedIo)>> {
    let mut prepared = Vec::new();
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
            zero_copy,
            huge_pages: settings.io.umem_huge_pages,
            ..XskConfig::default()
        };
        let io = WorkerIo::prepare(&config, &queues, zero_copy != ZeroCopy::Off)
            .with_context(|| format!("creating the UMEM of the worker on core {core}"))?;
        prepared.push((core, io));
    }
    if prepared.is_empty() {
        bail!("no worker has a queue to serve");
    }
    Ok(prepared)
}

/// Says what backs a worker's UMEM, once its sockets are bound (copy
/// mode may have made it again): on 4 KiB pages each received frame's
/// header prefetch waits on a page walk (benches/RESULTS.md, session
/// 35).
fn report_umem_pages(core: usize, io: &WorkerIo) {
    let config = &io.config;
    let umem_mib = io.umem_bytes().div_ceil(1 << 20);
    if config.huge_pages && !io.huge_pages() {
        tracing::warn!(
            core,
            umem_mib,
            "--umem-huge-pages on, but too few huge pages are free: the worker's \
             UMEM is not on reserved huge pages (it needs {} free 2 MiB pages; see \
             /proc/sys/vm/nr_hugepages)",
            io.umem_bytes().div_ceil(2 << 20)
        );
    }
    if io.huge_pages() {
        tracing::info!(core, umem_mib, "the worker's UMEM is on huge pages");
        return;
    }
    match io.page_backing() {
        Some(backing) if backing.transparent_huge_kib > 0 => tracing::info!(
            core,
            umem_mib,
            transparent_huge_mib = backing.transparent_huge_kib >> 10,
            "the worker's UMEM is on transparent huge pages"
        ),
        Some(backing) if backing.thp_eligible => tracing::warn!(
            core,
            umem_mib,
            "the worker's UMEM is advised for transparent huge pages, but the \
             kernel gave it none (too little unfragmented free memory?): it is on \
             4 KiB pages"
        ),
        Some(_) => tracing::info!(
            core,
            umem_mib,
            "the worker's UMEM is on 4 KiB pages: the kernel allows it no transparent \
             huge pages (see /sys/kernel/mm/transparent_hugepage/enabled)"
        ),
        None => {}
    }
}

/// Binds the prepared sockets of every worker and registers them in the
/// XSKMAP: (core, its sockets). A queue the gateway that has just let go
/// still holds is tried again for a moment.
fn bind_sockets(
    prepared: Vec<(usize, PreparedIo)>,
    program: &XdpProgram,
    base_slots: &[u32],
) -> anyhow::Result<Vec<(usize, WorkerIo)>> {
    let started = Instant::now();
    let busy_until = started + RELEASE_GRACE;
    let mut pending = Vec::new();
    for (core, prepared) in prepared {
        let mut io = prepared
            .bind_or_copy(busy_until)
            .with_context(|| format!("opening AF_XDP sockets for the worker on core {core}"))?;
        for socket in &io.sockets {
            program.register_socket(
                base_slots[usize::from(socket.port)] + socket.queue,
                socket.fd(),
            )?;
        }
        report_umem_pages(core, &io);
        io.prefill(io.config.fill_size as usize);
        pending.push((core, io));
    }
    tracing::info!(took = ?started.elapsed(), "AF_XDP sockets bound");
    Ok(pending)
}

/// How long a queue, or the admin address, may stay taken by a gateway
/// that has just handed over (the kernel frees an AF_XDP socket's queue a
/// moment after its close).
const RELEASE_GRACE: Duration = Duration::from_secs(2);

/// Asks a gateway running on the same state directory to let go of the
/// data path (see [`handover`]); the prepared sockets, made again in
/// copy mode if a gateway of an earlier version only now says its
/// sockets were, and whether a gateway let go.
fn take_over(
    dir: &std::path::Path,
    settings: &Settings,
    running: handover::Running,
    prepared: Vec<(usize, PreparedIo)>,
) -> anyhow::Result<(Vec<(usize, PreparedIo)>, bool)> {
    let asked = Instant::now();
    let context = || {
        format!(
            "--state-dir {}: taking over from the gateway running there",
            dir.display()
        )
    };
    let mode = match running {
        handover::Running::None => return Ok((prepared, false)),
        handover::Running::Offer(offer) => offer.release().with_context(context)?,
        handover::Running::WithoutOffer => match handover::take_over(dir).with_context(context)? {
            handover::TakeOver::NoneRunning => return Ok((prepared, false)),
            handover::TakeOver::Released(mode) => mode,
        },
    };
    tracing::info!(
        took = ?asked.elapsed(),
        "the running gateway let go of the data path; taking over"
    );
    if zero_copy_for(mode.as_ref(), settings) == ZeroCopy::Off
        && prepared.iter().any(|(_, p)| p.zero_copy())
    {
        let again = prepared
            .into_iter()
            .map(|(core, p)| p.prepare_again(false).map(|p| (core, p)))
            .collect::<Result<Vec<_>, _>>()
            .context("creating the UMEMs again in copy mode")?;
        return Ok((again, true));
    }
    Ok((prepared, true))
}

/// Copy mode at once when the running gateway's sockets on the same
/// interfaces were in copy mode, else zero-copy where the driver takes
/// it (tried first anyway, and a failure then still falls back rather
/// than stopping the gateway).
fn zero_copy_for(mode: Option<&handover::SocketMode>, settings: &Settings) -> ZeroCopy {
    match mode {
        Some(mode) if mode.ifaces == settings.ifaces && mode.copy_mode => ZeroCopy::Off,
        _ => ZeroCopy::Auto,
    }
}

/// Starts the admin or metrics endpoint, retried for a moment while a
/// gateway that has just handed over still holds the address.
fn bind_retrying(
    mut start: impl FnMut() -> Result<AdminServer, crate::admin::AdminError>,
) -> anyhow::Result<AdminServer> {
    let deadline = Instant::now() + RELEASE_GRACE;
    loop {
        match start() {
            Err(e) if e.is_address_in_use() && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return Ok(other?),
        }
    }
}

/// Attaches the program to every interface (a kept one is taken as
/// attached where it is), and records its id for the next gateway.
fn attach(
    settings: &Settings,
    program: &mut XdpProgram,
    ifindexes: &[u32],
) -> anyhow::Result<Vec<crate::bpf::AttachMode>> {
    let mut modes = Vec::new();
    for (i, &ifindex) in ifindexes.iter().enumerate() {
        // `attach` and `keep_attached` log the interface and the mode.
        let mode = if program.is_adopted() {
            program.keep_attached(ifindex)
        } else {
            program.attach(ifindex, settings.xdp_mode)
        };
        modes.push(mode.with_context(|| format!("attaching XDP to {}", settings.ifaces[i]))?);
    }
    if let Some(dir) = &settings.state_dir {
        record_program(dir, program.program_id());
    }
    Ok(modes)
}

/// Each interface's XDP mode and its sockets' copy mode, for `cipgw status`.
fn interface_modes(
    settings: &Settings,
    xdp_modes: &[crate::bpf::AttachMode],
    pending: &[(usize, WorkerIo)],
) -> Vec<crate::admin::InterfaceModeView> {
    settings
        .ifaces
        .iter()
        .zip(xdp_modes)
        .map(|(iface, mode)| {
            let sockets: Vec<bool> = pending
                .iter()
                .flat_map(|(_, io)| io.sockets.iter())
                .filter(|s| &s.ifname == iface)
                .map(|s| s.zero_copy)
                .collect();
            let copy_mode = if !sockets.is_empty() && sockets.iter().all(|z| *z) {
                "zero-copy"
            } else if sockets.iter().any(|z| *z) {
                "mixed"
            } else {
                "copy"
            };
            crate::admin::InterfaceModeView {
                name: iface.clone(),
                xdp_mode: mode.to_string(),
                copy_mode: copy_mode.to_owned(),
            }
        })
        .collect()
}

/// Busy polling's interface settings, where some socket can actually
/// busy-poll: without a poller the NAPI timer would only delay receive.
fn tune_busy_polling(settings: &Settings, pending: &[(usize, WorkerIo)]) -> Vec<NapiTuning> {
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
    napi_tuning
}

/// What every worker shares.
struct WorkerParts<'a> {
    conntracks: &'a Conntracks,
    affinity: &'a Arc<Affinity>,
    service_stats: &'a ServiceStats,
    table: &'a TableHandle,
    monitor: &'a NetMonitor,
    stop: &'a Arc<AtomicBool>,
    admin: &'a AdminState,
    epoch: Instant,
    /// Gives each worker a DNS responder, when the gateway answers DNS.
    dns: Option<&'a super::dns::DnsService>,
}

/// The worker threads, by core, and their counters.
struct Workers {
    handles: Vec<(usize, JoinHandle<()>)>,
    counters: Vec<Arc<WorkerCounters>>,
    /// Each worker sends once here when it has left its loop.
    left: crossbeam::channel::Receiver<()>,
}

/// Starts one worker thread per core that has sockets, pinned to it.
fn spawn_workers(
    settings: &Settings,
    options: &Options,
    pending: Vec<(usize, WorkerIo)>,
    parts: &WorkerParts<'_>,
) -> anyhow::Result<Workers> {
    // Ranges of both families: a client matches those of its own
    // (Settings::validate makes sure IPv4 has one when IPv6 ranges are
    // given with an IPv4 service CIDR, or every IPv4 client would be out).
    let pipeline_config = PipelineConfig {
        cluster_cidrs: settings.cluster_cidrs.clone(),
    };
    let resolver = parts.monitor.resolver();
    let resolve: crate::worker::ResolveFn = Arc::new(move |ifindex, ip| {
        resolver.request_resolution(ifindex, ip);
    });
    let worker_nice = settings.io.worker_nice;
    let (left_tx, left) = crossbeam::channel::unbounded();
    let mut handles = Vec::new();
    let mut counters = Vec::new();
    for (worker, (core, io)) in pending.into_iter().enumerate() {
        let telemetry = WorkerTelemetry::new(core);
        parts.admin.add_worker(telemetry.clone());
        let worker_counters = Arc::clone(&telemetry.counters);
        counters.push(Arc::clone(&worker_counters));
        let pipeline = Pipeline::new(
            Arc::clone(&parts.conntracks.v4),
            worker_counters,
            Rng::from_entropy(),
        )
        .with_conntrack6(Arc::clone(&parts.conntracks.v6))
        .with_worker(worker)
        .with_affinity(Arc::clone(parts.affinity))
        .with_config(pipeline_config.clone())
        .with_service_counters(parts.service_stats.add_worker());
        let pipeline = match parts.dns {
            Some(dns) => pipeline.with_dns(dns.responder()?),
            None => pipeline,
        };
        let shared = WorkerShared {
            table: parts.table.reader(),
            net: parts.monitor.handle(),
            stop: Arc::clone(parts.stop),
            resolve: Arc::clone(&resolve),
            epoch: parts.epoch,
            pass_through: options.pass_through,
            left: left_tx.clone(),
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
    Ok(Workers {
        handles,
        counters,
        left,
    })
}
