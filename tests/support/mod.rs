//! Shared setup of the namespace end-to-end tests: per-test control
//! files, the gateway process with the standard arguments, and client-side
//! exchanges that report which Pod answered. Failures panic with the
//! gateway's recent log attached.

// Shared by several test targets, each of which uses a part of it.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{Display, Write as _};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use cipgw::lab::{
    self, EchoServer, GatewayProcess, NodeInfo, Topology, TopologyBuilder, TopologyInfo,
};

/// Where the echo servers listen for TCP (the Services' targetPort).
pub const TARGET_PORT: u16 = 5678;
/// Where the echo servers listen for UDP.
pub const UDP_TARGET_PORT: u16 = 5353;

/// The TCP Service port most tests use: 8080 -> 5678.
pub const HTTP: Port = Port {
    name: "http",
    port: 8080,
    target: TARGET_PORT,
    protocol: "TCP",
};
/// The UDP Service port: 53 -> 5353.
pub const DNS: Port = Port {
    name: "dns",
    port: 53,
    target: UDP_TARGET_PORT,
    protocol: "UDP",
};

/// Bound of one exchange that is expected to work.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long traffic that must not get through is given.
pub const NOT_FORWARDED_WITHIN: Duration = Duration::from_secs(1);
/// Bound of a whole batch of exchanges (each is bounded too).
const BATCH_BUDGET: Duration = Duration::from_secs(90);
const READY_WITHIN: Duration = Duration::from_secs(20);
/// The gateway must exit within this after SIGTERM.
const STOP_WITHIN: Duration = Duration::from_secs(5);
/// The gateway's worker core; the client runs on the other one.
const GATEWAY_CORE: &str = "1";
const CLIENT_CORE: usize = 0;
/// Lines of the gateway's log attached to a failure.
const LOG_TAIL: usize = 40;

/// The `cipgw` binary under test.
pub fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cipgw"))
}

/// The connection table a test gateway gets unless the test sizes one:
/// 65,536 flows per family, 5 MiB (IPv4) and 9 MiB (IPv6) taken at start.
/// The default is sized from the machine's memory (4 Mi flows, 372 MiB
/// for IPv4 here), and taking that at every start costs seconds on these
/// VMs, where a freshly touched huge page waits on the host; no test
/// needs more flows.
pub const TEST_CONNTRACK_MAX: &str = "65536";

/// `args` and `extra` for `cipgw run`, with `--conntrack-max`
/// [`TEST_CONNTRACK_MAX`] unless `extra` sizes the table itself.
pub fn gateway_args(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    if !extra.contains(&"--conntrack-max") {
        args.extend(["--conntrack-max".into(), TEST_CONNTRACK_MAX.into()]);
    }
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args
}

/// The repository's `testdata/` directory.
pub fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata")
}

/// One Service port as the control file spells it.
#[derive(Debug, Clone, Copy)]
pub struct Port {
    pub name: &'static str,
    pub port: u16,
    pub target: u16,
    pub protocol: &'static str,
}

/// A `v1 Service` in namespace `default`. `cluster_ip` is an address,
/// `None` (headless) or empty (allocated); without `selector` its
/// endpoints come from EndpointSlices.
pub fn service(name: &str, cluster_ip: &str, selector: Option<&str>, ports: &[Port]) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n\
         spec:\n  type: ClusterIP\n"
    );
    if !cluster_ip.is_empty() {
        let _ = writeln!(yaml, "  clusterIP: {cluster_ip}");
    }
    if let Some(app) = selector {
        let _ = write!(yaml, "  selector:\n    app: {app}\n");
    }
    yaml.push_str("  ports:\n");
    for p in ports {
        let _ = write!(
            yaml,
            "  - name: {}\n    port: {}\n    targetPort: {}\n    protocol: {}\n",
            p.name, p.port, p.target, p.protocol
        );
    }
    yaml
}

/// A ready `v1 Pod` labelled `app: <app>` at the lab node's address.
pub fn pod(node: &NodeInfo, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: default\n  \
         labels:\n    app: {app}\nstatus:\n  phase: Running\n  podIP: {}\n  \
         conditions:\n  - type: Ready\n    status: \"True\"\n",
        node.name, node.iface.addr
    )
}

/// A `discovery.k8s.io/v1 EndpointSlice` of Service `service` with one
/// ready endpoint per node, for `port`.
pub fn endpoint_slice(service: &str, nodes: &[&NodeInfo], port: &Port) -> String {
    let mut yaml = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  \
         name: {service}-1\n  namespace: default\n  labels:\n    \
         kubernetes.io/service-name: {service}\naddressType: IPv4\nports:\n\
         - name: {}\n  port: {}\n  protocol: {}\nendpoints:\n",
        port.name, port.target, port.protocol
    );
    for node in nodes {
        let _ = write!(
            yaml,
            "- addresses: [{}]\n  conditions:\n    ready: true\n  targetRef:\n    \
             kind: Pod\n    name: {}\n    namespace: default\n",
            node.iface.addr, node.name
        );
    }
    yaml
}

/// The Pod name in an echo reply `Hello from <pod> at <ip>`, checked
/// against the lab: the name must be a lab Pod and the address its own.
pub fn pod_name<'a>(info: &TopologyInfo, reply: &'a str) -> Result<&'a str, String> {
    let mut words = reply.trim_end().split(' ');
    let parsed = match (words.next(), words.next(), words.next(), words.next()) {
        (Some("Hello"), Some("from"), Some(name), Some("at")) => words.next().map(|ip| (name, ip)),
        _ => None,
    };
    let Some((name, ip)) = parsed else {
        return Err(format!("not an echo reply: {reply:?}"));
    };
    match info.pods.iter().find(|p| p.name == name) {
        Some(p) if p.iface.addr.to_string() == ip => Ok(name),
        Some(p) => Err(format!("{reply:?}: {name} is at {}", p.iface.addr)),
        None => Err(format!("{reply:?}: no Pod named {name} in the lab")),
    }
}

/// The socket address of a Service port on `vip`.
pub fn vip_port(vip: Ipv4Addr, port: &Port) -> SocketAddrV4 {
    SocketAddrV4::new(vip, port.port)
}

/// One request line over an open connection; the reply line.
pub fn request(stream: &mut TcpStream) -> std::io::Result<String> {
    stream.write_all(b"still there?\n")?;
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        reply.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// The Pod that answers a new TCP connection to `target`.
pub fn connect_pod(info: &TopologyInfo, target: SocketAddrV4) -> Result<String, String> {
    let reply = lab::tcp_request(target, b"who?\n", Duration::from_secs(2))
        .map_err(|e| format!("TCP to {target}: {e}"))?;
    pod_name(info, &reply).map(str::to_owned)
}

/// The Pod that answers one datagram to `target`, from a socket that
/// stays connected (one UDP flow).
pub fn udp_pod(info: &TopologyInfo, socket: &UdpSocket) -> std::io::Result<String> {
    let mut buf = [0u8; 256];
    // One question, one answer: an answer already waiting would be taken
    // for this question's (a datagram the gateway sent twice).
    socket.set_nonblocking(true)?;
    let waiting = socket.recv(&mut buf);
    socket.set_nonblocking(false)?;
    if let Ok(n) = waiting {
        return Err(std::io::Error::other(format!(
            "an answer was waiting before the question was sent (sent twice?): {:?}",
            String::from_utf8_lossy(&buf[..n])
        )));
    }
    socket.send(b"which?\n")?;
    let n = socket.recv(&mut buf)?;
    pod_name(info, &String::from_utf8_lossy(&buf[..n]))
        .map(str::to_owned)
        .map_err(std::io::Error::other)
}

/// Open flows, one TCP connection and one UDP flow per Pod, by the Pod
/// that answers them.
pub struct Flows {
    pub tcp: BTreeMap<String, TcpStream>,
    pub udp: BTreeMap<String, UdpSocket>,
}

/// Opens connections and UDP flows to `vip` until every one of the
/// `pods` Pods has one of each (bounded).
pub fn open_flows(lab: &Lab, vip: Ipv4Addr, pods: usize) -> Flows {
    let info = lab.info().clone();
    let flows = lab.in_client(move || {
        let mut tcp: BTreeMap<String, TcpStream> = BTreeMap::new();
        let mut udp: BTreeMap<String, UdpSocket> = BTreeMap::new();
        for _ in 0..60 {
            if tcp.len() == pods && udp.len() == pods {
                break;
            }
            let mut s = TcpStream::connect_timeout(
                &SocketAddr::V4(vip_port(vip, &HTTP)),
                Duration::from_secs(2),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let reply = request(&mut s)?;
            let pod = pod_name(&info, &reply).map_err(std::io::Error::other)?;
            tcp.entry(pod.to_owned()).or_insert(s);
            let u = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
            u.connect(vip_port(vip, &DNS))?;
            u.set_read_timeout(Some(Duration::from_secs(1)))?;
            let pod = udp_pod(&info, &u)?;
            udp.entry(pod).or_insert(u);
        }
        Ok::<_, std::io::Error>(Flows { tcp, udp })
    });
    let flows = flows.unwrap_or_else(|e| lab.fail(format_args!("opening flows: {e}")));
    assert_eq!(
        (flows.tcp.len(), flows.udp.len()),
        (pods, pods),
        "a TCP and a UDP flow per Pod"
    );
    flows
}

/// What the gateway logs once a new service table is in force (published,
/// and flows to what it removed retired).
pub const TABLE_APPLIED: &str = "service table applied";

/// Opens `count` connections to `target` one after another and checks
/// that `pod` answers every one: for after a table that left only `pod`
/// is in force (see [`Lab::wait_log`]), not to find out when it is (a
/// run of answers from one Pod out of three happens by chance).
pub fn connections_all_reach(
    info: &TopologyInfo,
    target: SocketAddrV4,
    pod: &str,
    count: usize,
) -> Result<(), String> {
    for i in 0..count {
        let answered = connect_pod(info, target)?;
        if answered != pod {
            return Err(format!(
                "connection {} of {count} reached {answered}, not {pod}",
                i + 1
            ));
        }
    }
    Ok(())
}

/// Opens connections to `target` until `pods` different Pods have
/// answered; at most `tries`. Returns how many it took.
pub fn connections_spread(
    info: &TopologyInfo,
    target: SocketAddrV4,
    pods: usize,
    tries: usize,
) -> Result<usize, String> {
    let mut seen = BTreeSet::new();
    for i in 0..tries {
        seen.insert(connect_pod(info, target)?);
        if seen.len() == pods {
            return Ok(i + 1);
        }
    }
    Err(format!("only {seen:?} answered {tries} connections"))
}

/// `pages` more 2 MiB pages in the kernel's huge page pool
/// (/proc/sys/vm/nr_hugepages), given back on drop. The pool is grown and
/// shrunk by `pages`, not set back to a value read before, so that another
/// user of huge pages on the machine keeps what it reserved.
pub struct ReservedHugePages {
    pages: u64,
}

const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";

/// The kernel's huge page pool: reserved pages.
pub fn nr_hugepages() -> u64 {
    std::fs::read_to_string(NR_HUGEPAGES)
        .expect("reading nr_hugepages")
        .trim()
        .parse()
        .expect("nr_hugepages is a number")
}

/// Free huge pages (HugePages_Free in /proc/meminfo).
pub fn free_hugepages() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .expect("reading /proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("HugePages_Free in /proc/meminfo")
}

impl ReservedHugePages {
    pub fn reserve(pages: u64) -> ReservedHugePages {
        std::fs::write(NR_HUGEPAGES, (nr_hugepages() + pages).to_string())
            .expect("reserving huge pages");
        ReservedHugePages { pages }
    }
}

impl Drop for ReservedHugePages {
    fn drop(&mut self) {
        let _ = std::fs::write(
            NR_HUGEPAGES,
            nr_hugepages().saturating_sub(self.pages).to_string(),
        );
    }
}

/// A directory `cipgw-test-<pid>-<n>` under the system temp dir, removed
/// on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        // Relaxed: the counter only hands out distinct values.
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("cipgw-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `text` to `name` in the directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let file = self.path.join(name);
        std::fs::write(&file, text).unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
        file
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `exe ARGS...` to completion within 20 s (SIGKILLed after that).
pub fn run_cipgw(args: &[&str]) -> Output {
    const WITHIN: Duration = Duration::from_secs(20);
    let line = format!("{} {}", exe().display(), args.join(" "));
    let mut child = Command::new(exe())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting `{line}`: {e}"));
    // Drain both pipes on their own threads so a chatty child cannot
    // block on a full pipe while this thread waits for it.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + WITHIN;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`{line}` did not finish within {WITHIN:?}");
            }
            Err(e) => panic!("waiting for `{line}`: {e}"),
        }
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// `cipgw check --control-file FILE --service-cidr CIDR`.
pub fn check(file: &Path, service_cidr: &str) -> Output {
    run_cipgw(&[
        "check",
        "--control-file",
        &file.display().to_string(),
        "--service-cidr",
        service_cidr,
    ])
}

/// Pins the calling thread to `core`, so the client does not compete
/// with the gateway's worker for its core (a failure only loses the
/// pinning).
fn pin_to(core: usize) {
    let _ = core_affinity::set_for_current(core_affinity::CoreId { id: core });
}

/// A built lab with its echo servers, control file and gateway. Fields
/// drop in order: the gateway first, then the echo servers, then the
/// namespaces, then the control file's directory.
#[derive(Debug)]
pub struct Lab {
    gateway: Option<GatewayProcess>,
    servers: Vec<EchoServer>,
    topology: Topology,
    dir: TempDir,
    control: Option<PathBuf>,
    /// `--state-dir` instead of the lab's own.
    state_dir: Option<PathBuf>,
    /// `--cores` instead of the one gateway core.
    cores: Option<String>,
    /// The gateway's log was printed with a failure already.
    log_printed: std::cell::Cell<bool>,
    /// The executable and arguments of the last gateway started, for
    /// [`Lab::replace_gateway`].
    launched: Option<(PathBuf, Vec<String>)>,
}

/// A test that panics without [`Lab::fail`] (a plain `assert!`) still
/// shows what the gateway logged.
impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.log_printed.get() {
            if let Some(gateway) = &self.gateway {
                eprintln!("{}", log_tail(gateway));
            }
        }
    }
}

impl Lab {
    /// Builds the topology (after removing namespaces a killed earlier
    /// run left behind).
    pub fn build(builder: TopologyBuilder) -> Lab {
        if let Ok(stale) = lab::remove_stale_namespaces() {
            if !stale.is_empty() {
                eprintln!("removed stale lab namespaces: {stale:?}");
            }
        }
        let topology = builder
            .build()
            .unwrap_or_else(|e| panic!("building the lab: {e}"));
        Lab {
            gateway: None,
            servers: Vec::new(),
            topology,
            dir: TempDir::new(),
            control: None,
            state_dir: None,
            cores: None,
            launched: None,
            log_printed: std::cell::Cell::new(false),
        }
    }

    pub fn info(&self) -> &TopologyInfo {
        self.topology.info()
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Starts a TCP echo server on every Pod at `<pod ip>:port`.
    pub fn tcp_echo(&mut self, port: u16) {
        let servers = self
            .topology
            .start_tcp_echo(port)
            .unwrap_or_else(|e| panic!("starting TCP echo servers on port {port}: {e}"));
        self.servers.extend(servers);
    }

    /// Starts a UDP echo server on every Pod at `<pod ip>:port`.
    pub fn udp_echo(&mut self, port: u16) {
        let servers = self
            .topology
            .start_udp_echo(port)
            .unwrap_or_else(|e| panic!("starting UDP echo servers on port {port}: {e}"));
        self.servers.extend(servers);
    }

    /// TCP connections the echo servers on `port` accepted so far.
    pub fn accepted(&self, port: u16) -> u64 {
        self.servers
            .iter()
            .filter(|s| s.addr().port() == port)
            .map(EchoServer::connections)
            .sum()
    }

    /// Writes the control file the gateway will use: the documents
    /// joined as multi-document YAML.
    pub fn control_file(&mut self, documents: &[String]) -> PathBuf {
        let file = self.write_file("services.yaml", documents);
        self.control = Some(file.clone());
        file
    }

    /// Writes `documents` as multi-document YAML to `name` in the test's
    /// temporary directory.
    pub fn write_file(&self, name: &str, documents: &[String]) -> PathBuf {
        self.dir.write(name, &documents.join("---\n"))
    }

    /// `cipgw check` on `file` with the lab's VIP range; must succeed.
    /// Returns the listing.
    pub fn check(&self, file: &Path) -> String {
        let out = check(file, &self.info().vip_range.to_string());
        assert!(
            out.status.success(),
            "cipgw check on {}: {out:?}",
            file.display()
        );
        out.stdout
    }

    /// Ready Pods `pods` (indices into the lab's Pods) labelled `app`.
    pub fn pods(&self, pods: &[usize], app: &str) -> Vec<String> {
        pods.iter()
            .map(|&i| pod(&self.info().pods[i], app))
            .collect()
    }

    /// Service `name` at `vip` with `ports`, selecting `app: <name>`,
    /// and the Pods `pods` (indices) carrying that label.
    pub fn selector_service(
        &self,
        name: &str,
        vip: Ipv4Addr,
        ports: &[Port],
        pods: &[usize],
    ) -> Vec<String> {
        let mut docs = vec![service(name, &vip.to_string(), Some(name), ports)];
        docs.extend(self.pods(pods, name));
        docs
    }

    /// `cipgw run` on every gateway interface with the control file,
    /// the lab's VIP range and one worker on core 1; waits for ready.
    pub fn start_gateway(&mut self) {
        self.start_gateway_with(&[]);
    }

    /// [`Lab::start_gateway`] with more `cipgw run` arguments.
    pub fn start_gateway_with(&mut self, extra: &[&str]) {
        let control = self
            .control
            .clone()
            .expect("write the control file before starting the gateway");
        let source = ["--control-file".to_owned(), control.display().to_string()];
        self.launch(&source, extra);
    }

    /// `cipgw run --kubernetes --kubeconfig FILE` on every gateway
    /// interface, with the lab's VIP range, one worker on core 1 and
    /// `extra` arguments. Returns once the process runs; its first sync
    /// with the API server comes later (the log says "first full sync
    /// done"). The API server must be reachable from the gateway's
    /// namespace.
    pub fn start_gateway_kubernetes(&mut self, kubeconfig: &Path, extra: &[&str]) {
        let source = [
            "--kubernetes".to_owned(),
            "--kubeconfig".to_owned(),
            kubeconfig.display().to_string(),
        ];
        self.launch(&source, extra);
    }

    /// `cipgw run` on every gateway interface with `source` (where the
    /// services come from), the lab's VIP range, one worker on core 1 and
    /// `extra`; waits until the process reports ready.
    fn launch(&mut self, source: &[String], extra: &[&str]) {
        self.launch_exe(exe(), source, extra);
    }

    /// [`Lab::start_gateway_with`], running `wrapper` (an executable that
    /// execs `cipgw` with the arguments it is given) in its place.
    pub fn start_gateway_through(&mut self, wrapper: &Path, extra: &[&str]) {
        let control = self
            .control
            .clone()
            .expect("write the control file before starting the gateway");
        let source = ["--control-file".to_owned(), control.display().to_string()];
        self.launch_exe(wrapper, &source, extra);
    }

    /// Writes an executable script `name` in the lab's directory whose
    /// body is `script`; `$CIPGW` in it is the gateway binary.
    pub fn script(&self, name: &str, script: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let body = format!("#!/bin/sh\nCIPGW='{}'\n{script}\n", exe().display());
        let path = self.dir.write(name, &body);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("making {} executable: {e}", path.display()));
        path
    }

    fn launch_exe(&mut self, exe: &Path, source: &[String], extra: &[&str]) {
        assert!(self.gateway.is_none(), "the gateway is already running");
        let info = self.info();
        let mut args: Vec<String> = Vec::new();
        for iface in info.gateway.ifaces() {
            args.extend(["--iface".into(), iface.to_owned()]);
        }
        args.extend_from_slice(source);
        args.extend([
            "--service-cidr".into(),
            info.vip_range.to_string(),
            "--cores".into(),
            self.cores.clone().unwrap_or_else(|| GATEWAY_CORE.into()),
            "--state-dir".into(),
            self.state_dir().display().to_string(),
        ]);
        let args = gateway_args(args, extra);
        let gateway =
            GatewayProcess::start(exe, self.topology.gateway(), &args, false, READY_WITHIN)
                .unwrap_or_else(|e| panic!("starting the gateway: {e}"));
        self.gateway = Some(gateway);
        self.launched = Some((exe.to_owned(), args));
    }

    /// A make-before-break restart: starts the last `cipgw run` again
    /// beside the running gateway, which hands the data path over to it
    /// (see forwarder/src/daemon/handover.rs) and idles; then SIGTERMs
    /// the old one, which must exit 0 within 5 s.
    #[track_caller]
    pub fn replace_gateway(&mut self) {
        self.replace_gateway_with(&[]);
    }

    /// [`Lab::replace_gateway`], the new gateway with `extra` arguments
    /// after the last ones.
    #[track_caller]
    pub fn replace_gateway_with(&mut self, extra: &[&str]) {
        let mut old = self.gateway.take().expect("the gateway is not running");
        let (exe, mut args) = self.launched.clone().expect("a gateway was started");
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let new = GatewayProcess::start(&exe, self.topology.gateway(), &args, false, READY_WITHIN)
            .unwrap_or_else(|e| {
                panic!(
                    "starting a gateway beside the running one: {e}{}",
                    log_tail(&old)
                )
            });
        self.gateway = Some(new);
        if !old
            .log()
            .iter()
            .any(|l| l.contains("handed the data path over to the next gateway"))
        {
            self.fail(format_args!(
                "the new gateway is ready but the old one did not log its hand-over{}",
                log_tail(&old)
            ));
        }
        // Where the old gateway's part of the gap went.
        for line in old.log().iter().filter(|l| {
            l.contains("asks to take over") || l.contains("workers stopped") || l.contains("handed")
        }) {
            eprintln!("  old gateway: {line}");
        }
        if let Err(e) = old.signal(libc::SIGTERM) {
            panic!("SIGTERM to the old gateway: {e}{}", log_tail(&old));
        }
        match old.wait(STOP_WITHIN) {
            Ok(Some(status)) if status.success() => {}
            other => panic!(
                "the old gateway did not exit 0 within {STOP_WITHIN:?} of SIGTERM: {other:?}{}",
                log_tail(&old)
            ),
        }
        if let Some(line) = old.log().iter().find(|l| l.contains("ERROR")) {
            panic!("the old gateway logged an error: {line}{}", log_tail(&old));
        }
    }

    /// Every line the gateway has logged so far (none before it starts).
    pub fn gateway_log(&self) -> Vec<String> {
        self.gateway
            .as_ref()
            .map(GatewayProcess::log)
            .unwrap_or_default()
    }

    /// The running gateway's process id.
    pub fn gateway_pid(&self) -> u32 {
        self.gateway
            .as_ref()
            .map(GatewayProcess::id)
            .expect("the gateway is not running")
    }

    /// The gateway's /metrics text, from its admin address.
    pub fn metrics(&self) -> String {
        gateway_metrics(self.topology.gateway())
            .unwrap_or_else(|e| self.fail(format_args!("GET /metrics: {e}")))
    }

    /// The gateway's counter `name` (a sum over its label sets).
    pub fn counter(&self, name: &str) -> u64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Waits until the gateway has taken in every frame sent to it: its
    /// received-frame count (`cipgw_rx_packets_total`) the same in two
    /// reads 200 ms apart, within 20 s. After a burst (a flood's
    /// datagrams, their replies, the client's port-unreachable errors)
    /// the worker's RX rings may still be full, and a frame sent then is
    /// dropped there (`rx_ring_full`), as on any gateway under overload:
    /// a test of what follows the burst waits for this first.
    pub fn wait_until_drained(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = self.counter("cipgw_rx_packets_total");
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = self.counter("cipgw_rx_packets_total");
            if now == last {
                return;
            }
            if Instant::now() > deadline {
                self.fail(format_args!(
                    "the gateway still receiving after 20 s ({last} then {now} frames)"
                ));
            }
            last = now;
        }
    }

    /// The gateway's `--state-dir`: one per lab, so a restarted gateway
    /// adopts its own flows and no other test's.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| self.dir.path().join("state"))
    }

    /// Gateways started from now on use `dir` as `--state-dir`.
    pub fn use_state_dir(&mut self, dir: &Path) {
        self.state_dir = Some(dir.to_owned());
    }

    /// Gateways started from now on run a worker on each core of `cores`
    /// (`--cores`), not one on the gateway core.
    pub fn use_cores(&mut self, cores: &str) {
        self.cores = Some(cores.to_owned());
    }

    /// SIGTERM; the gateway must exit with status 0 within 5 s and leave
    /// its XDP program attached on every interface, for the next gateway
    /// (VIP traffic is dropped meanwhile, not passed to the kernel).
    /// Returns every line it logged.
    #[track_caller]
    pub fn stop_gateway(&mut self) -> Vec<String> {
        let mut gateway = self.gateway.take().expect("the gateway is not running");
        let started = Instant::now();
        if let Err(e) = gateway.signal(libc::SIGTERM) {
            panic!("SIGTERM to the gateway: {e}{}", log_tail(&gateway));
        }
        let status = match gateway.wait(STOP_WITHIN) {
            Ok(Some(status)) => status,
            Ok(None) => panic!(
                "the gateway did not exit within {STOP_WITHIN:?} of SIGTERM{}",
                log_tail(&gateway)
            ),
            Err(e) => panic!("waiting for the gateway: {e}{}", log_tail(&gateway)),
        };
        assert!(
            status.success(),
            "the gateway exited with {status} after SIGTERM{}",
            log_tail(&gateway)
        );
        eprintln!(
            "gateway exited ({status}) {:?} after SIGTERM",
            started.elapsed()
        );
        let left = self.xdp_ifaces();
        assert_eq!(
            left.len(),
            self.info().gateway.ifaces().len(),
            "the XDP program stays on every gateway interface after a stop, found it on {left:?}{}",
            log_tail(&gateway)
        );
        // The log is read on a thread: its last line may come after the exit.
        let deadline = Instant::now() + STOP_WITHIN;
        while !gateway.log().last().is_some_and(|l| l.contains("bye")) && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        gateway.log()
    }

    /// SIGKILL (a crash); waits until it is gone.
    #[track_caller]
    pub fn kill_gateway(&mut self) {
        let mut gateway = self.gateway.take().expect("the gateway is not running");
        gateway
            .signal(libc::SIGKILL)
            .unwrap_or_else(|e| panic!("SIGKILL to the gateway: {e}"));
        match gateway.wait(STOP_WITHIN) {
            Ok(Some(_)) => {}
            other => panic!("the gateway did not die of SIGKILL: {other:?}"),
        }
    }

    /// Whether the gateway process is still alive.
    pub fn gateway_running(&mut self) -> bool {
        self.gateway
            .as_mut()
            .is_some_and(GatewayProcess::is_running)
    }

    /// Gateway interfaces that have an XDP program attached
    /// (`ip link show` mentions `xdp`).
    pub fn xdp_ifaces(&self) -> Vec<String> {
        self.info()
            .gateway
            .ifaces()
            .into_iter()
            .filter(|iface| {
                let shown = self
                    .topology
                    .gateway()
                    .ip(&["link", "show", iface])
                    .unwrap_or_else(|e| panic!("ip link show {iface}: {e}"));
                shown.contains("xdp")
            })
            .map(str::to_owned)
            .collect()
    }

    /// The id of the XDP program on each gateway interface (0 for none),
    /// as `ip -j link show` gives it.
    pub fn xdp_prog_ids(&self) -> Vec<(String, u64)> {
        self.info()
            .gateway
            .ifaces()
            .into_iter()
            .map(|iface| {
                let shown = self
                    .topology
                    .gateway()
                    .ip(&["-j", "link", "show", iface])
                    .unwrap_or_else(|e| panic!("ip -j link show {iface}: {e}"));
                let json: serde_json::Value = serde_json::from_str(&shown)
                    .unwrap_or_else(|e| panic!("ip -j link show {iface}: {e}: {shown}"));
                let id = json[0]["xdp"]["prog"]["id"].as_u64().unwrap_or(0);
                (iface.to_owned(), id)
            })
            .collect()
    }

    /// The gateway's log must have a line containing `needle`.
    #[track_caller]
    pub fn assert_log_contains(&self, needle: &str) {
        let found = self
            .gateway
            .as_ref()
            .is_some_and(|g| g.log().iter().any(|line| line.contains(needle)));
        if !found {
            self.fail(format_args!(
                "the gateway's log does not mention {needle:?}"
            ));
        }
    }

    /// How many of the gateway's log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.gateway_log()
            .iter()
            .filter(|line| line.contains(needle))
            .count()
    }

    /// Waits until more than `before` log lines contain `needle` (e.g.
    /// [`TABLE_APPLIED`]: a table is in force); how long that took.
    #[track_caller]
    pub fn wait_log(&self, needle: &str, before: usize, within: Duration) -> Duration {
        let started = Instant::now();
        while self.log_count(needle) <= before {
            if started.elapsed() > within {
                self.fail(format_args!(
                    "the gateway did not log {needle:?} within {within:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        started.elapsed()
    }

    /// Panics with `what` and the gateway's recent log.
    #[track_caller]
    pub fn fail(&self, what: impl Display) -> ! {
        let log = self.gateway.as_ref().map(log_tail).unwrap_or_default();
        self.log_printed.set(true);
        panic!("{what}{log}")
    }

    /// Runs `f` on a thread in the client namespace pinned to core 0.
    pub fn in_client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.topology
            .client()
            .run(move || {
                pin_to(CLIENT_CORE);
                f()
            })
            .unwrap_or_else(|e| self.fail(format_args!("running in the client: {e}")))
    }

    /// `connections` TCP connections from the client to `target`, one
    /// after another, each with `requests` request lines; checks that
    /// every reply of a connection names the same Pod and returns how
    /// many connections each Pod served.
    pub fn tcp_sessions(
        &self,
        target: SocketAddrV4,
        connections: usize,
        requests: usize,
    ) -> BTreeMap<String, usize> {
        let sessions = self.in_client(move || {
            let deadline = Instant::now() + BATCH_BUDGET;
            let mut sessions = Vec::with_capacity(connections);
            for i in 0..connections {
                if Instant::now() > deadline {
                    return Err(format!("only {i} sessions within {BATCH_BUDGET:?}"));
                }
                let replies = lab::tcp_session(target, requests, EXCHANGE_TIMEOUT)
                    .map_err(|e| format!("connection {} of {connections}: {e}", i + 1))?;
                sessions.push(replies);
            }
            Ok(sessions)
        });
        let sessions =
            sessions.unwrap_or_else(|e| self.fail(format_args!("TCP sessions with {target}: {e}")));
        let mut served = BTreeMap::new();
        for (i, replies) in sessions.iter().enumerate() {
            if replies.len() != requests {
                self.fail(format_args!(
                    "connection {i} to {target}: {} replies to {requests} requests",
                    replies.len()
                ));
            }
            let pods: BTreeSet<&str> = replies
                .iter()
                .map(|r| pod_name(self.info(), r).unwrap_or_else(|e| self.fail(e)))
                .collect();
            if pods.len() != 1 {
                self.fail(format_args!(
                    "connection {i} to {target} was answered by several Pods: {replies:?}"
                ));
            }
            for pod in pods {
                *served.entry(pod.to_owned()).or_default() += 1;
            }
        }
        eprintln!("{connections} TCP connections to {target}: {served:?}");
        served
    }

    /// `n` UDP requests to `target`, each from a fresh socket (a new
    /// flow); checks that every reply comes from `target` itself and
    /// returns how many requests each Pod answered.
    pub fn udp_exchanges(&self, target: SocketAddrV4, n: usize) -> BTreeMap<String, usize> {
        let replies = self.in_client(move || {
            let deadline = Instant::now() + BATCH_BUDGET;
            let mut replies = Vec::with_capacity(n);
            for i in 0..n {
                if Instant::now() > deadline {
                    return Err(format!("only {i} exchanges within {BATCH_BUDGET:?}"));
                }
                let what = format!("UDP request {} of {n} to {target}", i + 1);
                let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
                    .map_err(|e| format!("{what}: bind: {e}"))?;
                socket
                    .set_read_timeout(Some(EXCHANGE_TIMEOUT))
                    .map_err(|e| format!("{what}: {e}"))?;
                socket
                    .send_to(format!("request {i}\n").as_bytes(), target)
                    .map_err(|e| format!("{what}: send: {e}"))?;
                let mut buf = [0u8; 2048];
                let (len, from) = socket
                    .recv_from(&mut buf)
                    .map_err(|e| format!("{what}: no reply within {EXCHANGE_TIMEOUT:?}: {e}"))?;
                // An unconnected socket takes datagrams from anyone, so
                // this shows where the reply really came from.
                if from != SocketAddr::V4(target) {
                    return Err(format!("{what}: the reply came from {from}, not the VIP"));
                }
                replies.push(String::from_utf8_lossy(&buf[..len]).into_owned());
            }
            Ok(replies)
        });
        let replies = replies.unwrap_or_else(|e| self.fail(format_args!("UDP exchanges: {e}")));
        let mut served = BTreeMap::new();
        for reply in &replies {
            let pod = pod_name(self.info(), reply).unwrap_or_else(|e| self.fail(e));
            *served.entry(pod.to_owned()).or_default() += 1;
        }
        eprintln!("{n} UDP requests to {target}: {served:?}");
        served
    }

    /// A TCP connection from the client to `target` must not be
    /// established within 1 s (a timeout, a refusal or an unreachable
    /// error are all fine).
    #[track_caller]
    pub fn assert_not_forwarded(&self, target: SocketAddrV4) {
        let started = Instant::now();
        let outcome = self.in_client(move || {
            TcpStream::connect_timeout(&SocketAddr::V4(target), NOT_FORWARDED_WITHIN).and_then(
                |mut stream| {
                    let local = stream.local_addr()?;
                    // Show what answered, if anything does.
                    let _ = stream.set_read_timeout(Some(NOT_FORWARDED_WITHIN));
                    let _ = stream.write_all(b"request\n");
                    let mut buf = [0u8; 256];
                    let n = stream.read(&mut buf).unwrap_or(0);
                    Ok((local, String::from_utf8_lossy(&buf[..n]).into_owned()))
                },
            )
        });
        match outcome {
            Ok((local, reply)) => self.fail(format_args!(
                "a TCP connection {local} -> {target} was established (reply {reply:?}); \
                 it must not be forwarded"
            )),
            Err(e) => eprintln!(
                "{target} not forwarded, as expected: {e} after {:?}",
                started.elapsed()
            ),
        }
    }
}

/// The last lines of the gateway's log, for failure messages.
fn log_tail(gateway: &GatewayProcess) -> String {
    let log = gateway.log();
    let skip = log.len().saturating_sub(LOG_TAIL);
    let mut text = format!("\n--- gateway log (last {} lines) ---", log.len() - skip);
    for line in &log[skip..] {
        text.push('\n');
        text.push_str(line);
    }
    text
}

/// The /metrics text of the gateway in `gateway_ns` (its admin endpoint,
/// 127.0.0.1:9477), or why it could not be read.
pub fn gateway_metrics(gateway_ns: &cipgw::lab::Netns) -> Result<String, String> {
    gateway_ns
        .run(|| -> std::io::Result<String> {
            let mut s = TcpStream::connect("127.0.0.1:9477")?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        })
        .map_err(|e| format!("entering the gateway: {e}"))?
        .map_err(|e| e.to_string())
}
