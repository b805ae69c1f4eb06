//! Control-plane cost of a table rebuild at 10,000 Services of 10
//! endpoints each, and of getting one changed object live.
//!
//! Cases:
//! - `rebuild/translate`: Kubernetes objects in memory (as the reflector
//!   stores hold them) to the model, through `kube_source::build_table`,
//!   the Kubernetes source's path (`translate_lenient` under it);
//! - `rebuild/compile`: `CompiledTable::compile` of that model;
//! - `rebuild/publish`: `TableHandle::publish` of a compiled table (the
//!   one it replaces is dropped there);
//! - `rebuild/full`: the three in a row, the figure the 50 ms target of
//!   issue 3 is for;
//! - `apply/one_service_changed`: what the daemon's control thread does
//!   with a new model (`Gateway::apply`): model comparison, counter-slot
//!   assignment, the real `daemon::plan::Plan` (flow targets to retire,
//!   map entries to add and remove), compile (with the slots and the
//!   retiring targets) and the real `daemon::apply::apply` (map writes,
//!   publish, retirement pass over an empty conntrack) on in-memory maps
//!   behind `XdpMaps`, alternating between two models that differ in one
//!   Service;
//! - `map_diff/plan`: `Plan::new` alone between those two models;
//! - `map_diff/one_service_changed`: `apply` of such a plan (computed
//!   beforehand) on the real BPF maps (root only); the number of map
//!   writes is printed and checked to be that Service's, not the table's;
//! - `end_to_end/file`: a 10,000-Service control file replaced (atomic
//!   rename) by one with one Service's endpoints changed -> `Table` event
//!   from `spawn_file_source` -> compile -> publish;
//! - `end_to_end/kube`: one EndpointSlice changed on the fake API server
//!   (tests/fake_apiserver) -> `Table` event from the Kubernetes source ->
//!   compile -> publish.
//!
//! Before the cases, one-shot breakdowns are printed (medians of a few
//! runs), to show where the time goes: the full rebuild in wall and
//! thread CPU time (the CPU figure does not grow when other processes
//! share the cores), and the daemon's apply step by step (with the time
//! until the new table is live: the in-memory maps note their last
//! addition, which `apply` makes just before it publishes).
//!
//! Addresses: VIPs from 198.19.0.0/16, Pods from 198.18.0.0/16 (RFC 2544).
//!
//! Run: `cargo bench -p cipgw --bench control` (root for the BPF map cases;
//! they are skipped with a message otherwise).

#[path = "../tests/fake_apiserver/mod.rs"]
mod fake_apiserver;

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cipgw::bpf::{BackendKey, BpfError, Steering, XdpMaps, XdpProgram};
use cipgw::daemon::apply::apply;
use cipgw::daemon::conntracks::Conntracks;
use cipgw::daemon::plan::Plan;
use cipgw::metrics::ServiceStats;
use cipgw::table::{CompiledTable, TableHandle};
use cipgw_config::settings::ServiceCidrs;
use cipgw_config::ServiceTable;
use cipgw_control::kube_source::{build_table, KubeSourceConfig};
use cipgw_control::source::{channel, Receiver, SourceEvent};
use cipgw_control::{spawn_file_source, spawn_kube_source};
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use fake_apiserver::FakeApiServer;
use k8s_openapi::api::core::v1::{ObjectReference, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

const SERVICES: usize = 10_000;
const ENDPOINTS: usize = 10;
/// The Service whose endpoints change in the one-change cases.
const CHANGED: usize = 4_321;
const NAMESPACE: &str = "bench";
const PROXY_NAME: &str = "cipgw";
/// `--min-sync-period` of the end-to-end cases; iterations are spaced by
/// more than this (outside the measurement), so it never delays one.
const SYNC_PERIOD: Duration = Duration::from_millis(100);
/// Bound of one end-to-end change (a hang fails the bench, it does not
/// stall it).
const CHANGE_WITHIN: Duration = Duration::from_secs(60);
/// The daemon's wait for workers to leave the old table (none here: it
/// returns at once).
const READERS_GRACE: Duration = Duration::from_secs(2);

fn service_cidr() -> ServiceCidrs {
    ServiceCidrs::v4_only("198.19.0.0/16".parse().expect("valid CIDR"))
}

fn name(s: usize) -> String {
    format!("svc-{s:05}")
}

fn vip(s: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 1)) + s as u32)
}

/// Endpoint `e` of Service `s`: 100,000 distinct Pod addresses do not
/// fit 198.18.0.0/16, so the slice's target port tells the wraps apart;
/// `version` 1 moves the Service's endpoints to another port (every
/// backend of that Service changes, nothing else does).
fn endpoint_ip(s: usize, e: usize) -> Ipv4Addr {
    let index = (s * ENDPOINTS + e) % 65_000;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 1)) + index as u32)
}

fn target_port(s: usize, version: usize) -> u16 {
    8000 + ((s * ENDPOINTS) / 65_000) as u16 + 10 * version as u16
}

/// Version of Service `s` in table `version`: only [`CHANGED`] differs.
fn version_of(s: usize, version: usize) -> usize {
    if s == CHANGED {
        version
    } else {
        0
    }
}

fn service(s: usize) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name(s)),
            namespace: Some(NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some(vip(s).to_string()),
            cluster_ips: Some(vec![vip(s).to_string()]),
            selector: Some(BTreeMap::from([("app".to_owned(), name(s))])),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::Int(8080)),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn slice(s: usize, version: usize) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(format!("{}-abcde", name(s))),
            namespace: Some(NAMESPACE.into()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/service-name".to_owned(),
                name(s),
            )])),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(i32::from(target_port(s, version))),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }]),
        endpoints: (0..ENDPOINTS)
            .map(|e| Endpoint {
                addresses: vec![endpoint_ip(s, e).to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                target_ref: Some(ObjectReference {
                    kind: Some("Pod".into()),
                    namespace: Some(NAMESPACE.into()),
                    name: Some(format!("{}-{e}", name(s))),
                    ..ObjectReference::default()
                }),
                ..Endpoint::default()
            })
            .collect(),
    }
}

/// The objects of table `version`.
fn objects(version: usize) -> (Vec<Service>, Vec<EndpointSlice>) {
    (
        (0..SERVICES).map(service).collect(),
        (0..SERVICES)
            .map(|s| slice(s, version_of(s, version)))
            .collect(),
    )
}

/// The Kubernetes source's translation of the objects.
fn translate(services: &[Service], slices: &[EndpointSlice]) -> ServiceTable {
    let (table, errors) = build_table(services, slices, PROXY_NAME, service_cidr());
    assert!(errors.is_empty(), "bench objects are valid: {errors:?}");
    table
}

/// The same objects as a control file (block-style YAML, as `kubectl`
/// writes it).
fn control_file(version: usize) -> String {
    let mut yaml = String::with_capacity(SERVICES * 1200);
    for s in 0..SERVICES {
        let n = name(s);
        let _ = write!(
            yaml,
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {n}\n  namespace: {NAMESPACE}\n\
             spec:\n  type: ClusterIP\n  clusterIP: {ip}\n  selector:\n    app: {n}\n  ports:\n\
             \x20 - name: http\n    port: 80\n    targetPort: 8080\n    protocol: TCP\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  \
             name: {n}-abcde\n  namespace: {NAMESPACE}\n  labels:\n    \
             kubernetes.io/service-name: {n}\naddressType: IPv4\nports:\n\
             - name: http\n  port: {port}\n  protocol: TCP\nendpoints:\n",
            ip = vip(s),
            port = target_port(s, version_of(s, version)),
        );
        for e in 0..ENDPOINTS {
            let _ = write!(
                yaml,
                "- addresses: [{}]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  \
                 targetRef: {{kind: Pod, namespace: {NAMESPACE}, name: {n}-{e}}}\n",
                endpoint_ip(s, e)
            );
        }
    }
    yaml
}

/// The XDP maps in memory: what `apply` writes, counted, with the time of
/// the last addition (`apply` publishes right after its additions).
#[derive(Debug, Default)]
struct MemoryMaps {
    steering: Steering,
    writes: usize,
    last_add: Option<Instant>,
}

impl XdpMaps for MemoryMaps {
    fn steering(&self) -> &Steering {
        &self.steering
    }

    fn add_vip(&mut self, vip: IpAddr) -> Result<(), BpfError> {
        self.steering.vips.insert(vip);
        self.writes += 1;
        self.last_add = Some(Instant::now());
        Ok(())
    }

    fn remove_vip(&mut self, vip: IpAddr) -> Result<(), BpfError> {
        self.steering.vips.remove(&vip);
        self.writes += 1;
        Ok(())
    }

    fn add_backend(&mut self, backend: BackendKey) -> Result<(), BpfError> {
        self.steering.backends.insert(backend);
        self.writes += 1;
        self.last_add = Some(Instant::now());
        Ok(())
    }

    fn remove_backend(&mut self, backend: BackendKey) -> Result<(), BpfError> {
        self.steering.backends.remove(&backend);
        self.writes += 1;
        Ok(())
    }
}

/// What the maps must hold for `model`: the additions of a plan from
/// nothing.
fn steering_of(model: &ServiceTable) -> Steering {
    Plan::new(&ServiceTable::default(), model, [], &Steering::default())
        .add()
        .clone()
}

/// The daemon's control-thread state that `apply` touches.
struct ControlThread {
    table: TableHandle,
    maps: MemoryMaps,
    conntrack: Conntracks,
    service_stats: ServiceStats,
    /// Targets carried into the next plan (`Gateway::carried`).
    carried: HashSet<cipgw::daemon::plan::Target>,
}

/// Time of each step of one apply.
#[derive(Debug, Default, Clone, Copy)]
struct Steps {
    compare: Duration,
    slots: Duration,
    plan: Duration,
    compile: Duration,
    /// Map writes, publish, retirement pass.
    apply: Duration,
    /// From the start to the new table published.
    live: Duration,
    map_writes: usize,
}

impl ControlThread {
    fn new(model: Arc<ServiceTable>) -> Self {
        let service_stats = ServiceStats::new();
        let slots = service_stats.assign(&model);
        let maps = MemoryMaps {
            steering: steering_of(&model),
            ..MemoryMaps::default()
        };
        let table =
            CompiledTable::compile_with_endpoint_slots(model, 1, |s, p, b| slots.get(s, p, b));
        Self {
            table: TableHandle::new(table),
            maps,
            conntrack: Conntracks::in_memory(),
            service_stats,
            carried: HashSet::new(),
        }
    }

    /// `Gateway::apply` (daemon/mod.rs): its glue, step for step, around
    /// the real plan and apply; timed.
    fn apply(&mut self, model: Arc<ServiceTable>) -> Steps {
        let mut steps = Steps::default();
        let started = Instant::now();
        let mut clock = started;
        let mut lap = |slot: &mut Duration| {
            let now = Instant::now();
            *slot = now - clock;
            clock = now;
        };
        let old = self.table.current();
        let same = **old.model() == *model;
        lap(&mut steps.compare);
        assert!(!same, "apply is given a changed model");
        let slots = self.service_stats.assign(&model);
        lap(&mut steps.slots);
        let carried = std::mem::take(&mut self.carried);
        let plan = Plan::new(old.model(), &model, carried, self.maps.steering());
        lap(&mut steps.plan);
        let compiled =
            CompiledTable::compile_with_endpoint_slots(model, old.generation() + 1, |s, p, b| {
                slots.get(s, p, b)
            })
            .with_retiring_of(plan.retiring_of::<Ipv4Addr>());
        lap(&mut steps.compile);
        let writes = self.maps.writes;
        let apply_started = Instant::now();
        self.maps.last_add = None;
        let applied = apply(
            &plan,
            compiled,
            &self.table,
            &self.conntrack,
            &mut self.maps,
            READERS_GRACE,
        )
        .expect("in-memory maps do not fail");
        lap(&mut steps.apply);
        self.carried = applied.lingering;
        steps.live = self.maps.last_add.unwrap_or(apply_started) - started;
        steps.map_writes = self.maps.writes - writes;
        drop(old);
        steps
    }
}

/// The XDP program with its maps, when this process may load it.
fn load_program() -> Option<XdpProgram> {
    match XdpProgram::load() {
        Ok(program) => Some(program),
        Err(e) => {
            eprintln!("control bench: BPF map cases skipped: {e}");
            None
        }
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// CPU time of the calling thread: unlike wall time, not inflated when
/// other processes share the two cores.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `ts` is, and reads
    // nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Prints the full rebuild (translate, compile, publish) in wall and
/// thread CPU time, medians of `RUNS`.
fn rebuild_breakdown(objects: &[(Vec<Service>, Vec<EndpointSlice>); 2]) {
    const RUNS: usize = 15;
    let handle = TableHandle::new(CompiledTable::empty());
    let mut wall: [Vec<Duration>; 4] = Default::default();
    let mut cpu: [Vec<Duration>; 4] = Default::default();
    for run in 0..RUNS {
        let (services, slices) = &objects[run % 2];
        let (w0, c0) = (Instant::now(), thread_cpu());
        let model = translate(services, slices);
        let (w1, c1) = (Instant::now(), thread_cpu());
        let compiled = CompiledTable::compile(Arc::new(model), run as u64 + 1);
        let (w2, c2) = (Instant::now(), thread_cpu());
        handle.publish(compiled);
        let (w3, c3) = (Instant::now(), thread_cpu());
        for (i, (w, c)) in [
            (w1 - w0, c1 - c0),
            (w2 - w1, c2 - c1),
            (w3 - w2, c3 - c2),
            (w3 - w0, c3 - c0),
        ]
        .into_iter()
        .enumerate()
        {
            wall[i].push(w);
            cpu[i].push(c);
        }
    }
    eprintln!(
        "\ncontrol bench: full rebuild of {SERVICES} Services x {ENDPOINTS} endpoints, \
         medians of {RUNS} (wall / thread CPU):"
    );
    for (i, step) in ["translate", "compile", "publish", "total"]
        .into_iter()
        .enumerate()
    {
        eprintln!(
            "  {step:<28} {:>10} / {:>10}",
            ms(median(wall[i].clone())),
            ms(median(cpu[i].clone()))
        );
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// Prints where a rebuild's time goes: translate, then apply step by
/// step, medians of `RUNS` alternating changes.
fn breakdown(objects: &[(Vec<Service>, Vec<EndpointSlice>); 2], models: &[Arc<ServiceTable>; 2]) {
    const RUNS: usize = 9;
    let mut control = ControlThread::new(Arc::clone(&models[0]));
    let mut runs: Vec<(Duration, Steps)> = Vec::new();
    for i in 1..=RUNS {
        let (services, slices) = &objects[i % 2];
        let started = Instant::now();
        let model = Arc::new(translate(services, slices));
        let translated = started.elapsed();
        let steps = control.apply(model);
        runs.push((translated, steps));
    }
    let pick = |f: &dyn Fn(&(Duration, Steps)) -> Duration| median(runs.iter().map(f).collect());
    let rows: [(&str, Duration); 6] = [
        ("translate (source thread)", pick(&|r| r.0)),
        ("model comparison", pick(&|r| r.1.compare)),
        ("counter-slot assignment", pick(&|r| r.1.slots)),
        ("plan", pick(&|r| r.1.plan)),
        ("compile", pick(&|r| r.1.compile)),
        ("apply (in-memory maps)", pick(&|r| r.1.apply)),
    ];
    let total: Duration = runs
        .iter()
        .map(|(t, s)| *t + s.compare + s.slots + s.plan + s.compile + s.apply)
        .min()
        .unwrap_or_default();
    eprintln!(
        "\ncontrol bench: one Service changed among {SERVICES} x {ENDPOINTS} endpoints, \
         translate + daemon apply, medians of {RUNS}:"
    );
    for (step, took) in rows {
        eprintln!("  {step:<28} {:>10}", ms(took));
    }
    let live = pick(&|r| r.1.live);
    eprintln!(
        "  {:<28} {:>10} (fastest run)\n  {:<28} {:>10} (apply's steps up to publish)\n  \
         map writes per change: {}\n",
        "total",
        ms(total),
        "new table live after",
        ms(live),
        runs[0].1.map_writes
    );
    assert_eq!(
        runs[0].1.map_writes,
        2 * ENDPOINTS,
        "map writes must be the changed Service's endpoints, not the table's"
    );
}

/// Waits for the next `Table`, failing on `Invalid`.
fn next_table(rx: &Receiver<SourceEvent>, within: Duration) -> Arc<ServiceTable> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(SourceEvent::Table(table, _)) => return table,
            Ok(SourceEvent::Invalid { error }) => panic!("the source found an error: {error}"),
            Ok(_) => {}
            Err(e) => panic!("no table within {within:?}: {e}"),
        }
    }
}

/// Writes `text` beside `path`, to be renamed over it: the rename is the
/// change (atomic, as ConfigMap volumes and careful tools do it).
fn stage(path: &Path, text: &str) -> std::path::PathBuf {
    let staged = path.with_extension("next");
    std::fs::write(&staged, text).expect("write the next control file");
    staged
}

fn bench(c: &mut Criterion) {
    let objects = [objects(0), objects(1)];
    let models = [
        Arc::new(translate(&objects[0].0, &objects[0].1)),
        Arc::new(translate(&objects[1].0, &objects[1].1)),
    ];
    assert_eq!(models[0].services.len(), SERVICES);
    assert_ne!(models[0], models[1]);
    rebuild_breakdown(&objects);
    breakdown(&objects, &models);

    let mut group = c.benchmark_group("rebuild");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("translate", |b| {
        b.iter(|| translate(black_box(&objects[0].0), black_box(&objects[0].1)))
    });
    group.bench_function("compile", |b| {
        b.iter(|| CompiledTable::compile(Arc::clone(black_box(&models[0])), 2))
    });
    let handle = TableHandle::new(CompiledTable::compile(Arc::clone(&models[0]), 1));
    group.bench_function("publish", |b| {
        b.iter_batched(
            || CompiledTable::compile(Arc::clone(&models[1]), 2),
            |table| handle.publish(table),
            criterion::BatchSize::LargeInput,
        )
    });
    let mut generation = 1;
    group.bench_function("full", |b| {
        b.iter(|| {
            generation += 1;
            let model = translate(&objects[0].0, &objects[0].1);
            handle.publish(CompiledTable::compile(Arc::new(model), generation));
        })
    });
    group.finish();

    let mut group = c.benchmark_group("apply");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    let mut control = ControlThread::new(Arc::clone(&models[0]));
    let mut flip = 0;
    group.bench_function("one_service_changed", |b| {
        b.iter(|| {
            flip ^= 1;
            control.apply(Arc::clone(&models[flip]))
        })
    });
    group.finish();
    drop(control);

    let mut group = c.benchmark_group("map_diff");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    let held = steering_of(&models[0]);
    group.bench_function("plan", |b| {
        b.iter(|| Plan::new(black_box(&models[0]), black_box(&models[1]), [], &held))
    });
    if let Some(mut program) = load_program() {
        map_diff_on_bpf_maps(&mut group, &mut program, &models);
    }
    group.finish();

    let mut group = c.benchmark_group("end_to_end");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(20));
    end_to_end_file(&mut group, &models);
    end_to_end_kube(&mut group, &objects);
    group.finish();
}

/// One change applied to the real BPF maps, alternating between the two
/// models; the plans are computed beforehand, the tables in each
/// iteration's setup.
fn map_diff_on_bpf_maps(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    program: &mut XdpProgram,
    models: &[Arc<ServiceTable>; 2],
) {
    let table = TableHandle::new(CompiledTable::empty());
    let conntrack = Conntracks::in_memory();
    let empty = ServiceTable::default();
    let fill = Plan::new(&empty, &models[0], [], program.steering());
    let started = Instant::now();
    apply(
        &fill,
        CompiledTable::compile(Arc::clone(&models[0]), 1),
        &table,
        &conntrack,
        program,
        READERS_GRACE,
    )
    .expect("initial maps");
    eprintln!(
        "control bench: filling empty maps with {} VIPs and {} backends: {}",
        fill.add().vips.len(),
        fill.add().backends.len(),
        ms(started.elapsed())
    );
    let forth = Plan::new(&models[0], &models[1], [], program.steering());
    let applied = apply(
        &forth,
        CompiledTable::compile(Arc::clone(&models[1]), 2),
        &table,
        &conntrack,
        program,
        READERS_GRACE,
    )
    .expect("one change");
    let writes =
        forth.add().len() + forth.remove().len() + forth.released(&applied.lingering).len();
    eprintln!(
        "control bench: one Service changed among {SERVICES}: {writes} map writes \
         ({} added before publication, {} removed after, {} after the retirement pass)",
        forth.add().len(),
        forth.remove().len(),
        forth.released(&applied.lingering).len()
    );
    assert_eq!(
        writes,
        2 * ENDPOINTS,
        "map writes must be the changed Service's endpoints, not the table's"
    );
    let back = Plan::new(&models[1], &models[0], [], program.steering());
    // Plan `i` leads to model `i`; the maps hold model 1 now.
    let plans = [back, forth];
    let mut flip = 1;
    let mut generation = 2;
    group.bench_function("one_service_changed", |b| {
        b.iter_batched(
            || {
                flip ^= 1;
                generation += 1;
                let model = Arc::clone(&models[flip]);
                let compiled = CompiledTable::compile(model, generation)
                    .with_retiring_of(plans[flip].retiring_of::<Ipv4Addr>());
                (flip, compiled)
            },
            |(flip, compiled)| {
                apply(
                    &plans[flip],
                    compiled,
                    &table,
                    &conntrack,
                    program,
                    READERS_GRACE,
                )
                .expect("apply on the BPF maps")
            },
            criterion::BatchSize::LargeInput,
        )
    });
}

/// A changed control file to a live table, through the real file source.
fn end_to_end_file(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    models: &[Arc<ServiceTable>; 2],
) {
    let texts = [control_file(0), control_file(1)];
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("services.yaml");
    std::fs::write(&path, &texts[0]).expect("write the control file");
    let (tx, rx) = channel();
    let started = Instant::now();
    let source = spawn_file_source(&path, service_cidr(), SYNC_PERIOD, tx).expect("file source");
    let first = next_table(&rx, CHANGE_WITHIN);
    eprintln!(
        "control bench: first load of a {:.1} MB control file: {}",
        texts[0].len() as f64 / 1e6,
        ms(started.elapsed())
    );
    assert_eq!(
        first.services, models[0].services,
        "the file and the objects translate alike"
    );
    let handle = TableHandle::new(CompiledTable::compile(first, 1));
    let mut version = 0;
    let mut generation = 1;
    group.bench_function("file", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                version ^= 1;
                generation += 1;
                let staged = stage(&path, &texts[version]);
                std::thread::sleep(SYNC_PERIOD + Duration::from_millis(10));
                let changed = Instant::now();
                std::fs::rename(&staged, &path).expect("rename over the control file");
                let model = next_table(&rx, CHANGE_WITHIN);
                handle.publish(CompiledTable::compile(model, generation));
                total += changed.elapsed();
            }
            total
        })
    });
    drop(source);
}

/// A changed EndpointSlice to a live table, through the real Kubernetes
/// source against the fake API server.
fn end_to_end_kube(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    objects: &[(Vec<Service>, Vec<EndpointSlice>); 2],
) {
    let api = FakeApiServer::start();
    for service in &objects[0].0 {
        api.apply(serde_json::to_value(service).expect("Service to JSON"));
    }
    for slice in &objects[0].1 {
        api.apply(serde_json::to_value(slice).expect("EndpointSlice to JSON"));
    }
    let changed = [
        serde_json::to_value(&objects[0].1[CHANGED]).expect("to JSON"),
        serde_json::to_value(&objects[1].1[CHANGED]).expect("to JSON"),
    ];
    let mut config = KubeSourceConfig::new(service_cidr());
    config.kubeconfig = Some(api.kubeconfig().to_owned());
    config.min_sync_period = SYNC_PERIOD;
    let (tx, rx) = channel();
    let started = Instant::now();
    let source = spawn_kube_source(config, tx).expect("Kubernetes source");
    let first = next_table(&rx, CHANGE_WITHIN);
    eprintln!(
        "control bench: first full sync of {} Services and {} EndpointSlices: {}",
        SERVICES,
        SERVICES,
        ms(started.elapsed())
    );
    assert_eq!(first.services.len(), SERVICES);
    let handle = TableHandle::new(CompiledTable::compile(first, 1));
    let mut version = 0;
    let mut generation = 1;
    group.bench_function("kube", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                version ^= 1;
                generation += 1;
                let object = changed[version].clone();
                std::thread::sleep(SYNC_PERIOD + Duration::from_millis(10));
                let changed = Instant::now();
                api.apply(object);
                let model = next_table(&rx, CHANGE_WITHIN);
                handle.publish(CompiledTable::compile(model, generation));
                total += changed.elapsed();
            }
            total
        })
    });
    drop(source);
}

criterion_group!(benches, bench);
criterion_main!(benches);
