//! End-to-end tests of source NAT (`--snat`) in a cluster-shaped lab
//! (`cipgw::lab::Cluster`): client Pods on two nodes, backend Pods on two
//! other nodes, one routed pod network in which Pods reach each other
//! directly, and a one-arm gateway node to which the nodes route the
//! service CIDR. There, a Pod answers its peer directly, so a VIP
//! connection only works when the gateway source-NATs it.
//!
//! Cases:
//! - without `--snat` a VIP connection fails (the Pod's answer bypasses
//!   the gateway); with it, 300 TCP connections from two nodes spread over
//!   three Pods (each 20-47 %), every Pod sees only the gateway's address
//!   as peer, UDP requests are answered from the VIP, a Pod reaches itself
//!   through its own Service's VIP (hairpin), and two `--snat-address`es
//!   are both used;
//! - a pool of 64 ports towards one backend: 64 open connections work, the
//!   65th is refused with a RST at once, and once they closed and their
//!   flows left, new ones work again; SNAT ports overlapping the kernel's
//!   ip_local_port_range on the node's own address refuse to start;
//! - ClientIP affinity, the refusal of a Service without endpoints, and a
//!   scale-down that retires SNAT flows and frees their ports.
//!
//! Rules as in tests/netns.rs: one test at a time, root (skip with a
//! reason otherwise, never when CI=true), RAII cleanup, 198.18.0.0/15 only.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cipgw::lab::{self, Cluster, ClusterBuilder, EchoServer, GatewayProcess};

#[path = "support/mod.rs"]
mod support;

use support::{exe, pod, service, Port, TempDir, DNS, EXCHANGE_TIMEOUT, HTTP, TARGET_PORT};

const READY_WITHIN: Duration = Duration::from_secs(20);
const STOP_WITHIN: Duration = Duration::from_secs(5);
/// A refusal must arrive well before any retransmission timer (1 s).
const REFUSED_WITHIN: Duration = Duration::from_millis(500);
/// How long a state the gateway reaches by itself (flows expiring) may take.
const SETTLE_WITHIN: Duration = Duration::from_secs(15);
/// The backend Pods.
const BACKENDS: [&str; 3] = ["pod1", "pod2", "pod3"];

/// A cluster lab with its echo servers, control file and gateway; drops
/// the gateway first, then the servers, then the namespaces.
struct ClusterLab {
    gateway: Option<GatewayProcess>,
    servers: Vec<EchoServer>,
    cluster: Cluster,
    dir: TempDir,
    control: PathBuf,
}

impl Drop for ClusterLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(gateway) = &self.gateway {
                eprintln!("--- gateway log ---\n{}", gateway.log().join("\n"));
                // What the gateway counted, for a failure that does not
                // repeat: its drops by reason and its tables' counts,
                // those that are not zero.
                match support::gateway_metrics(self.cluster.gateway()) {
                    Ok(text) => eprintln!(
                        "--- gateway counters (drops, conntrack, snat; not zero) ---\n{}",
                        text.lines()
                            .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
                            .filter(|l| ["drop", "conntrack", "snat"].iter().any(|w| l.contains(w)))
                            .collect::<Vec<_>>()
                            .join("\n")
                    ),
                    Err(e) => eprintln!("--- gateway counters: not read: {e}"),
                }
            }
        }
    }
}

impl ClusterLab {
    /// Nodes: client1 | client2 | pod1, pod2 | pod3. Echo servers (TCP and
    /// UDP) on the backends.
    fn build(purpose: &str) -> ClusterLab {
        let _ = lab::remove_stale_namespaces();
        let cluster = ClusterBuilder::new(purpose)
            .node(&["client1"])
            .node(&["client2"])
            .node(&["pod1", "pod2"])
            .node(&["pod3"])
            .build()
            .unwrap_or_else(|e| panic!("building the cluster lab: {e}"));
        let dir = TempDir::new();
        let control = dir.path().join("services.yaml");
        let mut lab = ClusterLab {
            gateway: None,
            servers: Vec::new(),
            cluster,
            dir,
            control,
        };
        lab.restart_echo();
        lab
    }

    /// Fresh echo servers on the backends (their peer lists start empty).
    fn restart_echo(&mut self) {
        self.servers.clear();
        let tcp = self
            .cluster
            .start_tcp_echo(&BACKENDS, TARGET_PORT)
            .unwrap_or_else(|e| panic!("TCP echo: {e}"));
        let udp = self
            .cluster
            .start_udp_echo(&BACKENDS, DNS.target)
            .unwrap_or_else(|e| panic!("UDP echo: {e}"));
        self.servers.extend(tcp);
        self.servers.extend(udp);
    }

    fn vip(&self, host: u8) -> Ipv4Addr {
        self.cluster.info().vip(host)
    }

    /// Service `name` at VIP `host` with `ports`, selecting the Pods
    /// `pods`; `extra` lines go into its spec.
    fn service(
        &self,
        name: &str,
        host: u8,
        ports: &[Port],
        pods: &[&str],
        extra: &str,
    ) -> Vec<String> {
        let mut svc = service(name, &self.vip(host).to_string(), Some(name), ports);
        svc.push_str(extra);
        let mut docs = vec![svc];
        for p in pods {
            let mut node = self.cluster.info().pod(p).expect("a lab Pod").clone();
            // One Pod object per Service: the name must be unique.
            node.name = format!("{p}-{name}");
            docs.push(pod(&node, name));
        }
        docs
    }

    /// Writes the control file atomically (the gateway watches it).
    fn write_control(&self, docs: &[Vec<String>]) {
        let text = docs.concat().join("---\n");
        let tmp = self.dir.write("services.yaml.new", &text);
        std::fs::rename(&tmp, &self.control)
            .unwrap_or_else(|e| panic!("replacing the control file: {e}"));
    }

    fn gateway_args(&self, extra: &[&str]) -> Vec<String> {
        let args: Vec<String> = [
            "--iface",
            "lan0",
            "--control-file",
            &self.control.display().to_string(),
            "--service-cidr",
            &self.cluster.info().vip_range.to_string(),
            "--cluster-cidr",
            &self.cluster.info().cluster_cidr.to_string(),
            "--cores",
            "1",
            "--state-dir",
            &self.dir.path().join("state").display().to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        support::gateway_args(args, extra)
    }

    fn start(&mut self, extra: &[&str]) {
        assert!(self.gateway.is_none(), "the gateway already runs");
        let args = self.gateway_args(extra);
        let gateway =
            GatewayProcess::start(exe(), self.cluster.gateway(), &args, false, READY_WITHIN)
                .unwrap_or_else(|e| panic!("starting the gateway: {e}"));
        self.gateway = Some(gateway);
    }

    /// Starts a gateway that must refuse to start; returns its log.
    fn start_refused(&self, extra: &[&str]) -> String {
        let args = self.gateway_args(extra);
        match GatewayProcess::start(exe(), self.cluster.gateway(), &args, false, READY_WITHIN) {
            Ok(mut gateway) => {
                let _ = gateway.signal(libc::SIGKILL);
                panic!("the gateway started with {extra:?}; it must refuse to")
            }
            Err(e) => e.to_string(),
        }
    }

    fn stop(&mut self) {
        let gateway = self.gateway.take().expect("the gateway runs");
        let status = gateway
            .stop(STOP_WITHIN)
            .unwrap_or_else(|e| panic!("stopping the gateway: {e}"));
        assert!(status.success(), "the gateway exited with {status}");
    }

    #[track_caller]
    fn fail(&self, what: impl Display) -> ! {
        panic!("{what}")
    }

    /// Runs `f` on a thread in Pod `name`'s namespace.
    fn in_pod<T: Send>(&self, name: &str, f: impl FnOnce() -> T + Send) -> T {
        self.cluster
            .pod_ns(name)
            .unwrap_or_else(|| panic!("no Pod {name}"))
            .run(f)
            .unwrap_or_else(|e| panic!("running in {name}: {e}"))
    }

    /// `n` TCP connections from Pod `client` to `target`, one after the
    /// other, one request each; how many each Pod answered.
    fn connections(&self, client: &str, target: SocketAddrV4, n: usize) -> BTreeMap<String, usize> {
        let replies = self.in_pod(client, move || {
            (0..n)
                .map(|i| {
                    lab::tcp_session(target, 1, EXCHANGE_TIMEOUT)
                        .map(|r| r.concat())
                        .map_err(|e| format!("connection {} of {n}: {e}", i + 1))
                })
                .collect::<Result<Vec<_>, _>>()
        });
        let replies =
            replies.unwrap_or_else(|e| self.fail(format_args!("{client} -> {target}: {e}")));
        let mut served = BTreeMap::new();
        for reply in replies {
            *served.entry(pod_of(&reply)).or_insert(0) += 1;
        }
        eprintln!("{n} connections {client} -> {target}: {served:?}");
        served
    }

    /// The peers the backends' echo servers on `port` saw.
    fn peers(&self, port: u16) -> BTreeSet<IpAddr> {
        self.servers
            .iter()
            .filter(|s| s.addr().port() == port)
            .flat_map(EchoServer::peers)
            .collect()
    }

    /// `cipgw ARGS` in the gateway's namespace (the admin commands).
    fn cipgw(&self, args: &[&str]) -> String {
        let out = self
            .cluster
            .gateway()
            .command(exe())
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cipgw {args:?}: {e}"));
        assert!(
            out.status.success(),
            "cipgw {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The gateway's /metrics.
    fn metrics(&self) -> String {
        support::gateway_metrics(self.cluster.gateway()).unwrap_or_else(|e| panic!("metrics: {e}"))
    }

    /// The value of the metric line starting with `series`.
    fn metric(&self, series: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// How many times the gateway logged `needle`.
    fn log_count(&self, needle: &str) -> usize {
        self.gateway
            .as_ref()
            .map_or(0, |g| g.log().iter().filter(|l| l.contains(needle)).count())
    }

    /// Waits until the gateway logged `needle` more than `before` times.
    #[track_caller]
    fn wait_log(&self, needle: &str, before: usize) {
        let deadline = Instant::now() + SETTLE_WITHIN;
        while self.log_count(needle) <= before {
            if Instant::now() > deadline {
                self.fail(format_args!("no new {needle:?} within {SETTLE_WITHIN:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The sum of the metric lines starting with `prefix` whose labels
    /// contain `label`.
    fn metric_sum(&self, prefix: &str, label: &str) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| l.starts_with(prefix) && l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until `series` reads `want`.
    #[track_caller]
    fn wait_metric(&self, series: &str, want: f64) {
        let deadline = Instant::now() + SETTLE_WITHIN;
        loop {
            let now = self.metric(series);
            if now == Some(want) {
                return;
            }
            if Instant::now() > deadline {
                self.fail(format_args!(
                    "{series} is {now:?}, not {want}, after {SETTLE_WITHIN:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The Pod name in an echo reply `Hello from <pod> at <ip>`.
fn pod_of(reply: &str) -> String {
    reply
        .strip_prefix("Hello from ")
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("not an echo reply: {reply:?}"))
        .to_owned()
}

fn target(vip: Ipv4Addr, port: &Port) -> SocketAddrV4 {
    SocketAddrV4::new(vip, port.port)
}

/// Each backend served between 20 and 47 % of `total`.
#[track_caller]
fn assert_spread(served: &BTreeMap<String, usize>, total: usize) {
    assert_eq!(served.values().sum::<usize>(), total, "{served:?}");
    for pod in BACKENDS {
        let n = served.get(pod).copied().unwrap_or(0);
        assert!(
            (total * 20 / 100..=total * 47 / 100).contains(&n),
            "{pod} served {n} of {total}: {served:?}"
        );
    }
}

#[test]
fn snat_makes_a_one_arm_gateway_work_in_a_routed_cluster() {
    if !lab::require_root() {
        return;
    }
    let _serial = lab::serial();
    let mut lab = ClusterLab::build("snat");
    let info = lab.cluster.info().clone();
    let gw = IpAddr::V4(info.gateway.addr);
    let web = lab.vip(10);
    let own = lab.vip(11);
    lab.write_control(&[
        lab.service("web", 10, &[HTTP, DNS], &BACKENDS, ""),
        lab.service("own", 11, &[HTTP], &["pod1"], ""),
    ]);

    // Without source NAT the Pod answers the client directly, which never
    // called it: no connection.
    lab.start(&[]);
    let outcome = lab.in_pod("client1", move || {
        TcpStream::connect_timeout(&SocketAddr::V4(target(web, &HTTP)), Duration::from_secs(1))
            .map(|s| s.peer_addr().ok())
    });
    assert!(
        outcome.is_err(),
        "without --snat the connection must fail, got {outcome:?}"
    );
    lab.stop();

    lab.start(&["--snat"]);
    let mut served = lab.connections("client1", target(web, &HTTP), 150);
    for (pod, n) in lab.connections("client2", target(web, &HTTP), 150) {
        *served.entry(pod).or_insert(0) += n;
    }
    assert_spread(&served, 300);
    assert_eq!(
        lab.peers(TARGET_PORT),
        BTreeSet::from([gw]),
        "every Pod sees the gateway as its peer"
    );

    // UDP: the answer comes back from the VIP.
    let udp = target(web, &DNS);
    let froms = lab.in_pod("client2", move || {
        (0..30)
            .map(|i| {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
                s.send_to(format!("request {i}\n").as_bytes(), udp)?;
                let mut buf = [0u8; 512];
                let (n, from) = s.recv_from(&mut buf)?;
                Ok((from, pod_of(&String::from_utf8_lossy(&buf[..n]))))
            })
            .collect::<std::io::Result<Vec<_>>>()
    });
    let froms = froms.unwrap_or_else(|e| panic!("UDP through the VIP: {e}"));
    assert!(
        froms.iter().all(|(from, _)| *from == SocketAddr::V4(udp)),
        "every UDP answer comes from the VIP: {froms:?}"
    );
    assert_eq!(lab.peers(DNS.target), BTreeSet::from([gw]));

    // Hairpin: pod1 reaches itself through its own Service.
    let served = lab.connections("pod1", target(own, &HTTP), 5);
    assert_eq!(served, BTreeMap::from([("pod1".to_owned(), 5)]));

    // Two SNAT addresses, used in turn.
    lab.stop();
    lab.restart_echo();
    let (a, b) = (
        info.gateway.addr.to_string(),
        info.gateway_spare.to_string(),
    );
    lab.start(&["--snat-address", &a, "--snat-address", &b]);
    lab.connections("client1", target(web, &HTTP), 20);
    assert_eq!(
        lab.peers(TARGET_PORT),
        BTreeSet::from([gw, IpAddr::V4(info.gateway_spare)]),
        "both SNAT addresses are used"
    );
    lab.stop();
}

/// Connects to `target`, sends a line and waits for the answer; returns
/// the open connection and the Pod that answered.
fn hold(target: SocketAddrV4) -> std::io::Result<(TcpStream, String)> {
    let mut stream = TcpStream::connect_timeout(&SocketAddr::V4(target), EXCHANGE_TIMEOUT)?;
    stream.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
    let pod = exchange(&mut stream)?;
    Ok((stream, pod))
}

/// One request line and its answer on an open connection.
fn exchange(stream: &mut TcpStream) -> std::io::Result<String> {
    stream.write_all(b"request\n")?;
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\n") {
        if stream.read(&mut byte)? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        reply.push(byte[0]);
    }
    Ok(pod_of(&String::from_utf8_lossy(&reply)))
}

/// A TCP connect from `client` to `target` must be refused at once.
#[track_caller]
fn assert_refused_at_once(lab: &ClusterLab, client: &str, target: SocketAddrV4) {
    let (outcome, took) = lab.in_pod(client, move || {
        let started = Instant::now();
        let r = TcpStream::connect_timeout(&SocketAddr::V4(target), Duration::from_secs(2));
        (r.map(drop).map_err(|e| e.kind()), started.elapsed())
    });
    assert_eq!(
        outcome,
        Err(ErrorKind::ConnectionRefused),
        "{client} -> {target} must be refused (after {took:?})"
    );
    assert!(took < REFUSED_WITHIN, "refused only after {took:?}");
}

/// Short TCP closing timeouts, so closed connections' flows (and their
/// ports) leave within seconds.
const SHORT_CLOSING: [&str; 6] = [
    "--conntrack-tcp-timeout-time-wait",
    "1s",
    "--conntrack-tcp-timeout-close",
    "1s",
    "--conntrack-tcp-timeout-fin-wait",
    "1s",
];

#[test]
fn snat_port_pool_exhaustion_is_refused_at_once_and_recovers() {
    if !lab::require_root() {
        return;
    }
    let _serial = lab::serial();
    let mut lab = ClusterLab::build("snatpool");
    let gw = lab.cluster.info().gateway.addr;
    let one = target(lab.vip(10), &HTTP);
    lab.write_control(&[lab.service("one", 10, &[HTTP], &["pod3"], "")]);

    // On the node's own address, ports inside ip_local_port_range are
    // refused at start, with the reason.
    let why = lab.start_refused(&["--snat", "--snat-ports", "40000-40063"]);
    assert!(
        why.contains("overlaps the kernel's ip_local_port_range"),
        "the refusal says why: {why}"
    );

    let mut args = vec!["--snat", "--snat-ports", "62000-62063"];
    args.extend(SHORT_CLOSING);
    lab.start(&args);
    let in_use = format!("cipgw_snat_ports_in_use{{address=\"{gw}\"}}");
    let held = lab.in_pod("client1", move || {
        (0..64)
            .map(|_| hold(one).map(|(s, _)| s))
            .collect::<std::io::Result<Vec<_>>>()
    });
    let held = held.unwrap_or_else(|e| panic!("64 connections through a pool of 64: {e}"));
    assert_eq!(lab.metric(&in_use), Some(64.0));
    assert_refused_at_once(&lab, "client2", one);
    assert!(
        lab.metric_sum("cipgw_drops_total", "reason=\"snat_ports_exhausted\"") >= 1.0,
        "the refusal is counted as snat_ports_exhausted"
    );
    let status = lab.cipgw(&["status"]);
    assert!(
        status.contains(&format!(
            "snat        ports 62000-62063: {gw} 64 ports in use"
        )),
        "cipgw status shows the ports in use:\n{status}"
    );

    // Closed, their flows leave, and their ports come back.
    drop(held);
    lab.wait_metric(&in_use, 0.0);
    let served = lab.connections("client2", one, 64);
    assert_eq!(served, BTreeMap::from([("pod3".to_owned(), 64)]));
    lab.stop();
}

#[test]
fn snat_keeps_affinity_refusals_and_retires_flows_of_removed_pods() {
    if !lab::require_root() {
        return;
    }
    let _serial = lab::serial();
    let mut lab = ClusterLab::build("snatmix");
    let info = lab.cluster.info().clone();
    let gw = info.gateway.addr;
    let pod2 = info.pod("pod2").expect("pod2").iface.addr;
    let (web, sticky, empty) = (
        target(lab.vip(10), &HTTP),
        target(lab.vip(20), &HTTP),
        target(lab.vip(21), &HTTP),
    );
    let affinity = "  sessionAffinity: ClientIP\n";
    let docs = |lab: &ClusterLab, web_pods: &[&str]| {
        vec![
            lab.service("web", 10, &[HTTP], web_pods, ""),
            lab.service("sticky", 20, &[HTTP], &BACKENDS, affinity),
            lab.service("empty", 21, &[HTTP], &[], ""),
        ]
    };
    lab.write_control(&docs(&lab, &["pod1", "pod2"]));
    let mut args = vec!["--snat"];
    args.extend(SHORT_CLOSING);
    lab.start(&args);

    // ClientIP affinity holds for the client behind the SNAT.
    let served = lab.connections("client1", sticky, 20);
    assert_eq!(served.len(), 1, "one Pod for one client: {served:?}");
    // A Service without endpoints refuses at once.
    assert_refused_at_once(&lab, "client2", empty);

    // Ten open connections to web; the sticky ones' flows leave.
    let held = lab.in_pod("client2", move || {
        (0..10)
            .map(|_| hold(web))
            .collect::<std::io::Result<Vec<_>>>()
    });
    let mut held = held.unwrap_or_else(|e| panic!("connections to web: {e}"));
    let in_use = format!("cipgw_snat_ports_in_use{{address=\"{gw}\"}}");
    lab.wait_metric(&in_use, 10.0);
    let on_pod2 = held.iter().filter(|(_, pod)| pod == "pod2").count();
    assert!(on_pod2 > 0, "some connections went to pod2");

    // `cipgw conntrack` maps what a backend sees back to the client.
    let listing = lab.cipgw(&["conntrack", "--backend", &format!("{pod2}:{TARGET_PORT}")]);
    assert_eq!(
        listing.matches(&format!(" {gw}:")).count(),
        on_pod2,
        "one line per flow to pod2 with its SNAT address:\n{listing}"
    );
    let port: u16 = listing
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{gw}:")))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a SNAT port in:\n{listing}"));
    let one = lab.cipgw(&["conntrack", "--snat-port", &port.to_string()]);
    assert!(
        one.contains(&format!("{gw}:{port}")) && one.contains(&format!("{pod2}:{TARGET_PORT}")),
        "--snat-port finds the flow:\n{one}"
    );

    // Scale-down: pod2 leaves web. Its connections end at their next
    // segment (RST), their flows are retired and their ports freed.
    let applied = lab.log_count("service table applied");
    lab.write_control(&docs(&lab, &["pod1"]));
    lab.wait_log("service table applied", applied);
    let (held, outcomes) = lab.in_pod("client2", move || {
        let outcomes = held
            .iter_mut()
            .map(|(stream, pod)| (pod.clone(), exchange(stream).map_err(|e| e.kind())))
            .collect::<Vec<_>>();
        // Kept open: their flows (and ports) stay.
        (held, outcomes)
    });
    for (pod, outcome) in &outcomes {
        match pod.as_str() {
            "pod2" => assert!(outcome.is_err(), "pod2's connection must end: {outcome:?}"),
            _ => assert_eq!(outcome.as_deref(), Ok("pod1"), "pod1's connection lives on"),
        }
    }
    lab.wait_metric(&in_use, (10 - on_pod2) as f64);
    let listing = lab.cipgw(&["conntrack", "--backend", &pod2.to_string()]);
    assert!(listing.contains("no flows shown (0 match)"), "{listing}");
    drop(held);
    lab.stop();
}

#[test]
fn demo_snat_serves_the_clusterip_and_shows_the_gateway_as_peer() {
    if !lab::require_root() {
        return;
    }
    let _serial = lab::serial();
    let out = std::process::Command::new(exe())
        .args(["demo", "--snat", "--requests", "9"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("cipgw demo --snat: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cipgw demo --snat: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let peers: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("who the Pods saw"))
        .skip(1)
        .take(3)
        .collect();
    assert!(
        peers.iter().any(|l| l.ends_with(" 198.18.1.1"))
            && peers
                .iter()
                .all(|l| l.trim_end().ends_with("198.18.1.1") || l.split_whitespace().count() == 1),
        "the Pods saw only the gateway:\n{stdout}"
    );
}
