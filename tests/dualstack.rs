//! End-to-end tests of dual-stack Services: the real `cipgw run` with real
//! AF_XDP sockets in dual-stack labs (`cipgw::lab` with `dual_stack(true)`:
//! every node has an address of each family, IPv6 from 2001:2::/48), a
//! Service with one ClusterIP per family (`ipFamilyPolicy:
//! RequireDualStack`, `clusterIPs`) and endpoints of both families from
//! EndpointSlices (`addressType: IPv4` and `IPv6`).
//!
//! Cases, in each family:
//! - two-arm: 300 TCP connections spread over three Pods (each 20-47 %),
//!   every connection stays on one Pod of its own family; UDP requests are
//!   answered from the VIP; the VIP answers ping (`ping -6` for IPv6); a
//!   port the Service does not define is refused at once (RST); a client
//!   address outside `--cluster-cidr` (IPv6) gets nothing; `cipgw
//!   services` shows each VIP's own flows on its row;
//! - one-arm (client and Pods on the gateway's one segment): TCP, UDP and
//!   ping in each family;
//! - the same with `--snat` in the cluster-shaped lab (`cipgw::lab::
//!   Cluster`), where every Pod sees the gateway's address of the family
//!   as its peer.
//!
//! Rules as in tests/netns.rs: one test at a time (`lab::serial`), root
//! (skip with a reason otherwise, never when CI=true), RAII cleanup also
//! on panic, test addresses from 198.18.0.0/15 and 2001:2::/48 only.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{Display, Write as _};
use std::io::ErrorKind;
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream, UdpSocket,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cipgw::admin::ServicesView;
use cipgw::lab::{
    self, Cluster, ClusterBuilder, EchoServer, GatewayProcess, Netns, NodeInfo, Topology,
};

#[path = "support/mod.rs"]
mod support;

use support::{exe, Lab, Port, TempDir, DNS, EXCHANGE_TIMEOUT, HTTP, TARGET_PORT};

/// The IPv6 service CIDR of the labs (`TopologyInfo::ipv6`).
const SERVICE_CIDR6: &str = "2001:2:0:100::/64";
/// Connections per family and the share each of three Pods must get.
const CONNECTIONS: usize = 300;
const MIN_SHARE: f64 = 20.0;
const MAX_SHARE: f64 = 47.0;
/// Requests per connection: all must reach the connection's Pod.
const REQUESTS: usize = 3;
const UDP_REQUESTS: usize = 30;
/// A refusal must arrive well before any retransmission timer (1 s).
const REFUSED_WITHIN: Duration = Duration::from_millis(500);
/// How long traffic that must get nothing is given.
const SILENT_FOR: Duration = Duration::from_secs(1);
/// Bound of one batch of exchanges (each is bounded too).
const BATCH_BUDGET: Duration = Duration::from_secs(120);
const READY_WITHIN: Duration = Duration::from_secs(20);
const STOP_WITHIN: Duration = Duration::from_secs(5);
const SETTLE_WITHIN: Duration = Duration::from_secs(15);
/// A port no Service defines (the Pods listen on it, too).
const UNDEFINED_PORT: u16 = 9999;

/// Whether `addr` is of the family `v6`.
fn family(v6: bool) -> &'static str {
    if v6 {
        "IPv6"
    } else {
        "IPv4"
    }
}

/// A `v1 Service` with a ClusterIP of each family, RequireDualStack, IPv4
/// first, without selector (its endpoints come from EndpointSlices).
fn dual_stack_service(name: &str, vip4: Ipv4Addr, vip6: Ipv6Addr, ports: &[Port]) -> String {
    let mut yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n\
         spec:\n  type: ClusterIP\n  ipFamilyPolicy: RequireDualStack\n  \
         ipFamilies: [IPv4, IPv6]\n  clusterIP: {vip4}\n  clusterIPs: [{vip4}, \"{vip6}\"]\n  \
         ports:\n"
    );
    for p in ports {
        let _ = write!(
            yaml,
            "  - name: {}\n    port: {}\n    targetPort: {}\n    protocol: {}\n",
            p.name, p.port, p.target, p.protocol
        );
    }
    yaml
}

/// An EndpointSlice of Service `service` for one family, with a ready
/// endpoint per node (its address of the family) and every port in `ports`.
fn slice(service: &str, v6: bool, nodes: &[&NodeInfo], ports: &[Port]) -> String {
    let family = family(v6);
    let mut yaml = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  \
         name: {service}-{}\n  namespace: default\n  labels:\n    \
         kubernetes.io/service-name: {service}\naddressType: {family}\nports:\n",
        family.to_lowercase()
    );
    for p in ports {
        let _ = write!(
            yaml,
            "- name: {}\n  port: {}\n  protocol: {}\n",
            p.name, p.target, p.protocol
        );
    }
    yaml.push_str("endpoints:\n");
    for node in nodes {
        let addr = node
            .iface
            .addr_of(v6)
            .unwrap_or_else(|e| panic!("{}: {e}", node.name));
        let _ = write!(
            yaml,
            "- addresses: [\"{addr}\"]\n  conditions:\n    ready: true\n  targetRef:\n    \
             kind: Pod\n    name: {}\n    namespace: default\n",
            node.name
        );
    }
    yaml
}

/// The dual-stack Service `name` over `nodes` and its two slices.
fn dual_stack_docs(
    name: &str,
    vip4: Ipv4Addr,
    vip6: Ipv6Addr,
    ports: &[Port],
    nodes: &[&NodeInfo],
) -> Vec<String> {
    vec![
        dual_stack_service(name, vip4, vip6, ports),
        slice(name, false, nodes, ports),
        slice(name, true, nodes, ports),
    ]
}

/// The Pod named in an echo reply `Hello from <pod> at <ip>`, checked
/// against `pods`: a known Pod, answering from its own address of the
/// family `v6` (a VIP only ever goes to endpoints of its own family).
fn answered_by(pods: &[NodeInfo], v6: bool, reply: &str) -> Result<String, String> {
    let rest = reply
        .trim_end()
        .strip_prefix("Hello from ")
        .ok_or_else(|| format!("not an echo reply: {reply:?}"))?;
    let (name, ip) = rest
        .split_once(" at ")
        .ok_or_else(|| format!("not an echo reply: {reply:?}"))?;
    let pod = pods
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| format!("{reply:?}: no Pod named {name} in the lab"))?;
    let own = pod.iface.addr_of(v6).map_err(|e| e.to_string())?;
    if ip.parse::<IpAddr>() == Ok(own) {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "{reply:?}: {name}'s {} address is {own}",
            family(v6)
        ))
    }
}

/// `n` TCP connections to `target`, one after another, each with
/// [`REQUESTS`] request lines, run by `run` in the client's namespace;
/// checks that every reply of a connection names the same Pod of the
/// target's family and returns how many connections each Pod served.
fn tcp_spread(
    ns: &Netns,
    pods: &[NodeInfo],
    target: SocketAddr,
    n: usize,
) -> Result<BTreeMap<String, usize>, String> {
    let sessions = in_ns(ns, move || {
        let deadline = Instant::now() + BATCH_BUDGET;
        let mut sessions = Vec::with_capacity(n);
        for i in 0..n {
            if Instant::now() > deadline {
                return Err(format!("only {i} sessions within {BATCH_BUDGET:?}"));
            }
            let replies = lab::tcp_session(target, REQUESTS, EXCHANGE_TIMEOUT)
                .map_err(|e| format!("connection {} of {n}: {e}", i + 1))?;
            sessions.push(replies);
        }
        Ok(sessions)
    })
    .map_err(|e| format!("TCP sessions with {target}: {e}"))?;
    let mut served = BTreeMap::new();
    for (i, replies) in sessions.iter().enumerate() {
        let answered: BTreeSet<String> = replies
            .iter()
            .map(|r| answered_by(pods, target.is_ipv6(), r))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("connection {i} to {target}: {e}"))?;
        if (replies.len(), answered.len()) != (REQUESTS, 1) {
            return Err(format!(
                "connection {i} to {target}: every request must be answered by one Pod: {replies:?}"
            ));
        }
        for pod in answered {
            *served.entry(pod).or_default() += 1;
        }
    }
    eprintln!("{n} TCP connections to {target}: {served:?}");
    Ok(served)
}

/// Runs `f` on a thread in `ns` pinned to core 0 (the gateway's worker
/// has core 1); its error, or the namespace's, as text.
fn in_ns<T: Send>(ns: &Netns, f: impl FnOnce() -> Result<T, String> + Send) -> Result<T, String> {
    ns.run(move || {
        // A failure only loses the pinning.
        let _ = core_affinity::set_for_current(core_affinity::CoreId { id: 0 });
        f()
    })
    .map_err(|e| format!("running in {}: {e}", ns.name()))?
}

/// `n` UDP requests to `target`, each from a fresh socket (a new flow);
/// every answer must come from `target` itself. How many each Pod answered.
fn udp_spread(
    ns: &Netns,
    pods: &[NodeInfo],
    target: SocketAddr,
    n: usize,
) -> Result<BTreeMap<String, usize>, String> {
    let replies: Vec<String> = in_ns(ns, move || {
        let local: SocketAddr = if target.is_ipv6() {
            SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0).into()
        } else {
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0).into()
        };
        (0..n)
            .map(|i| {
                let what = format!("UDP request {} of {n} to {target}", i + 1);
                let socket = UdpSocket::bind(local).map_err(|e| format!("{what}: bind: {e}"))?;
                socket
                    .set_read_timeout(Some(EXCHANGE_TIMEOUT))
                    .map_err(|e| format!("{what}: {e}"))?;
                socket
                    .send_to(format!("request {i}\n").as_bytes(), target)
                    .map_err(|e| format!("{what}: send: {e}"))?;
                let mut buf = [0u8; 2048];
                let (len, from) = socket
                    .recv_from(&mut buf)
                    .map_err(|e| format!("{what}: no answer within {EXCHANGE_TIMEOUT:?}: {e}"))?;
                // An unconnected socket takes datagrams from anyone: this
                // shows where the answer really came from.
                if from != target {
                    return Err(format!("{what}: the answer came from {from}, not the VIP"));
                }
                Ok(String::from_utf8_lossy(&buf[..len]).into_owned())
            })
            .collect()
    })?;
    let mut served = BTreeMap::new();
    for reply in &replies {
        let pod = answered_by(pods, target.is_ipv6(), reply)?;
        *served.entry(pod).or_default() += 1;
    }
    eprintln!("{n} UDP requests to {target}: {served:?}");
    Ok(served)
}

/// Every Pod in `pods` served between `min` and `max` percent of `total`,
/// nobody else any.
#[track_caller]
fn assert_share(served: &BTreeMap<String, usize>, pods: &[&str], total: usize, min: f64, max: f64) {
    assert_eq!(
        served.values().sum::<usize>(),
        total,
        "served counts {served:?} do not add up to {total}"
    );
    for pod in served.keys() {
        assert!(
            pods.contains(&pod.as_str()),
            "{pod} answered but is not a backend: {served:?}"
        );
    }
    for pod in pods {
        let n = served.get(*pod).copied().unwrap_or(0);
        let share = 100.0 * n as f64 / total as f64;
        assert!(
            (min..=max).contains(&share),
            "{pod} served {n} of {total} ({share:.1}%), expected {min}% to {max}%: {served:?}"
        );
    }
}

/// A TCP connect to `target` is refused (RST) at once: what a connection
/// to a port the Service does not define gets.
fn refused_at_once(target: SocketAddr) -> Result<Duration, String> {
    let started = Instant::now();
    match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
        Ok(s) => Err(format!(
            "a connection {:?} -> {target} was established; it must be refused",
            s.local_addr()
        )),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            let took = started.elapsed();
            if took < REFUSED_WITHIN {
                Ok(took)
            } else {
                Err(format!("{target} refused only after {took:?}"))
            }
        }
        Err(e) => Err(format!(
            "{target}: {e} after {:?}; expected a refusal (RST)",
            started.elapsed()
        )),
    }
}

/// A TCP connect from `source` to `target` gets nothing at all (no
/// answer, no refusal) for [`SILENT_FOR`]: what a client outside
/// `--cluster-cidr` gets.
fn silent_from(source: IpAddr, target: SocketAddr) -> Result<(), String> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(&SockAddr::from(SocketAddr::new(source, 0)))
        .map_err(|e| format!("binding {source}: {e}"))?;
    let started = Instant::now();
    match socket.connect_timeout(&SockAddr::from(target), SILENT_FOR) {
        Ok(()) => Err(format!(
            "a connection from {source} to {target} was established; it must get nothing"
        )),
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => Ok(()),
        Err(e) => Err(format!(
            "{source} -> {target}: {e} after {:?}; expected silence",
            started.elapsed()
        )),
    }
}

/// Adds `addr` to `ns`'s eth0 for a test that binds it, deprecated
/// (preferred lifetime 0) so the kernel never picks it as the source of
/// other connections.
fn add_outside_address(ns: &Netns, addr: Ipv6Addr) -> Result<(), lab::LabError> {
    let cidr = format!("{addr}/128");
    let args = [
        "-6",
        "addr",
        "add",
        &cidr,
        "dev",
        "eth0",
        "nodad",
        "preferred_lft",
        "0",
    ];
    ns.ip(&args).map(drop)
}

/// The gateway's `/metrics` (admin endpoint 127.0.0.1:9477 in its
/// namespace).
fn metrics(gateway_ns: &lab::Netns) -> String {
    support::gateway_metrics(gateway_ns).unwrap_or_else(|e| format!("(metrics unavailable: {e})"))
}

/// The sum of the metric lines of `name` whose labels contain `label`.
fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The non-zero drop and error counters, for failure messages.
fn counters_digest(text: &str) -> String {
    let mut out = String::from("\n--- gateway counters (non-zero drops, errors, packets) ---");
    for line in text.lines().filter(|l| {
        !l.starts_with('#')
            && (l.contains("drop") || l.contains("error") || l.contains("packets"))
            && !l.ends_with(" 0")
    }) {
        out.push('\n');
        out.push_str(line);
    }
    out
}

/// Waits until the drops counted as `reason` exceed `before`.
fn wait_drops(gateway_ns: &lab::Netns, reason: &str, before: f64) -> Result<f64, String> {
    let label = format!("reason=\"{reason}\"");
    let deadline = Instant::now() + SETTLE_WITHIN;
    loop {
        let text = metrics(gateway_ns);
        let now = metric_sum(&text, "cipgw_drops_total", &label);
        if now > before {
            return Ok(now);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "drops {label} stayed at {now} (not above {before}) for {SETTLE_WITHIN:?}{}",
                counters_digest(&text)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A client address outside the two-arm lab's IPv6 `--cluster-cidr`
/// (2001:2::/112) but on the client's own subnet (2001:2::/64).
const OUTSIDE6: &str = "2001:2::1:2";

#[test]
fn dual_stack_service_two_arm() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut lab = Lab::build(Topology::two_arm("dualstack").pods(3).dual_stack(true));
    let info = lab.info().clone();
    // IPv4 echo servers are the lab's; IPv6 ones are held here (dropped
    // before the lab, also on panic).
    lab.tcp_echo(TARGET_PORT);
    lab.udp_echo(DNS.target);
    lab.tcp_echo(UNDEFINED_PORT);
    let mut servers6: Vec<EchoServer> = Vec::new();
    for started in [
        lab.topology().start_tcp_echo6(TARGET_PORT),
        lab.topology().start_udp_echo6(DNS.target),
        lab.topology().start_tcp_echo6(UNDEFINED_PORT),
    ] {
        servers6.extend(started.unwrap_or_else(|e| panic!("IPv6 echo servers: {e}")));
    }
    let (vip4, vip6) = (info.vip(10), info.vip6(10));
    let pods: Vec<&NodeInfo> = info.pods.iter().collect();
    lab.control_file(&dual_stack_docs("echo", vip4, vip6, &[HTTP, DNS], &pods));
    // The client's own subnets are the cluster; OUTSIDE6 is not.
    lab.start_gateway_with(&[
        "--service-cidr",
        SERVICE_CIDR6,
        "--cluster-cidr",
        &info.client_subnet.to_string(),
        "--cluster-cidr",
        "2001:2::/112",
    ]);
    let gateway_ns = lab.topology().gateway();
    let client = lab.topology().client();
    let fail = |what: &dyn Display| -> ! {
        lab.fail(format_args!(
            "{what}{}",
            counters_digest(&metrics(gateway_ns))
        ))
    };

    let names = ["pod1", "pod2", "pod3"];
    for vip in [IpAddr::V4(vip4), IpAddr::V6(vip6)] {
        let v6 = vip.is_ipv6();
        let target = SocketAddr::new(vip, HTTP.port);
        let served =
            tcp_spread(client, &info.pods, target, CONNECTIONS).unwrap_or_else(|e| fail(&e));
        assert_share(&served, &names, CONNECTIONS, MIN_SHARE, MAX_SHARE);
        let udp = SocketAddr::new(vip, DNS.port);
        let served = udp_spread(client, &info.pods, udp, UDP_REQUESTS).unwrap_or_else(|e| fail(&e));
        assert_share(&served, &names, UDP_REQUESTS, 1.0, 100.0);
        let rtt = lab
            .in_client(move || lab::ping(vip, EXCHANGE_TIMEOUT))
            .unwrap_or_else(|e| fail(&format_args!("ping {vip} (the {} VIP): {e}", family(v6))));
        eprintln!("ping {vip}: {rtt:?}");
        let undefined = SocketAddr::new(vip, UNDEFINED_PORT);
        let took = lab
            .in_client(move || refused_at_once(undefined))
            .unwrap_or_else(|e| fail(&e));
        eprintln!("{undefined} refused in {took:?}");
    }
    let accepted6: u64 = servers6
        .iter()
        .filter(|s| s.addr().port() == TARGET_PORT)
        .map(EchoServer::connections)
        .sum();
    assert_eq!(
        accepted6, CONNECTIONS as u64,
        "IPv6 connections the Pods accepted"
    );
    assert_eq!(
        lab.accepted(TARGET_PORT),
        CONNECTIONS as u64,
        "IPv4 connections the Pods accepted"
    );
    assert_eq!(
        lab.accepted(UNDEFINED_PORT),
        0,
        "a connection to VIP:{UNDEFINED_PORT} reached a Pod"
    );
    let reached: u64 = servers6
        .iter()
        .filter(|s| s.addr().port() == UNDEFINED_PORT)
        .map(EchoServer::connections)
        .sum();
    assert_eq!(
        reached, 0,
        "a connection to [VIP6]:{UNDEFINED_PORT} reached a Pod"
    );

    // A client address outside --cluster-cidr gets nothing, and the
    // gateway counts it.
    let outside: Ipv6Addr = OUTSIDE6.parse().expect("an IPv6 address");
    add_outside_address(lab.topology().client(), outside).unwrap_or_else(|e| fail(&e));
    let before = metric_sum(
        &metrics(gateway_ns),
        "cipgw_drops_total",
        "reason=\"source_not_in_cluster\"",
    );
    let target = SocketAddr::new(vip6.into(), HTTP.port);
    lab.in_client(move || silent_from(outside.into(), target))
        .unwrap_or_else(|e| fail(&e));
    wait_drops(gateway_ns, "source_not_in_cluster", before).unwrap_or_else(|e| fail(&e));
    // The client's own address is still served.
    let served = tcp_spread(client, &info.pods, target, 10).unwrap_or_else(|e| fail(&e));
    assert_share(&served, &names, 10, 0.0, 100.0);

    // `cipgw services`: each VIP's row shows that VIP's own flows, the
    // IPv6 one included (not the port's sums over both VIPs).
    let raw = cipgw_services(gateway_ns, &["--json"]).unwrap_or_else(|e| fail(&e));
    let view: ServicesView =
        serde_json::from_str(&raw).unwrap_or_else(|e| fail(&format_args!("{e}: {raw}")));
    let port = view
        .services
        .iter()
        .find(|s| s.name == "echo")
        .and_then(|s| s.ports.iter().find(|p| p.port == HTTP.port))
        .unwrap_or_else(|| fail(&format_args!("no echo:{} in {raw}", HTTP.port)));
    let flows_of = |vip: IpAddr| -> u64 {
        port.vips
            .iter()
            .find(|v| v.vip == vip)
            .and_then(|v| v.flows)
            .unwrap_or_else(|| fail(&format_args!("no counted entry for {vip} in {raw}")))
    };
    let (flows4, flows6) = (flows_of(vip4.into()), flows_of(vip6.into()));
    // One flow per connection, unless a client port was reused while
    // its earlier flow was still tracked.
    if !(1..=CONNECTIONS as u64).contains(&flows4)
        || !(1..=CONNECTIONS as u64 + 10).contains(&flows6)
        || port.flows != Some(flows4 + flows6)
    {
        fail(&format_args!(
            "per-VIP flows {flows4} (IPv4, {CONNECTIONS} connections) and {flows6} \
             (IPv6, {} connections) do not add up to the port's {:?}: {raw}",
            CONNECTIONS + 10,
            port.flows
        ));
    }
    let text = cipgw_services(gateway_ns, &[]).unwrap_or_else(|e| fail(&e));
    for (vip, flows) in [(IpAddr::V4(vip4), flows4), (IpAddr::V6(vip6), flows6)] {
        let first = SocketAddr::new(vip, HTTP.port).to_string();
        let row: Vec<&str> = text
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|r| r.get(1) == Some(&first.as_str()))
            .unwrap_or_else(|| fail(&format_args!("no row for {first} in\n{text}")));
        // Prot VIP:Port Service TargetPort LB Affinity ActiveConn
        // InActConn Flows ...: Flows is the 9th word.
        if row.get(8) != Some(&flows.to_string().as_str()) {
            fail(&format_args!(
                "the {first} row does not show its {flows} flows:\n{text}"
            ));
        }
    }

    drop(servers6);
    lab.stop_gateway();
}

/// `cipgw services ARGS...` against the gateway's admin endpoint (its
/// default address, in the gateway's namespace): its stdout.
fn cipgw_services(gateway_ns: &Netns, args: &[&str]) -> Result<String, String> {
    let out = gateway_ns
        .command(exe())
        .arg("services")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .map_err(|e| format!("running cipgw services {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cipgw services {args:?} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("$ cipgw services {}\n{stdout}", args.join(" "));
    Ok(stdout)
}

#[test]
fn dual_stack_service_one_arm() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    const ONE_ARM_CONNECTIONS: usize = 60;
    let mut lab = Lab::build(Topology::one_arm("dualonearm").pods(3).dual_stack(true));
    let info = lab.info().clone();
    lab.tcp_echo(TARGET_PORT);
    lab.udp_echo(DNS.target);
    let mut servers6: Vec<EchoServer> = Vec::new();
    for started in [
        lab.topology().start_tcp_echo6(TARGET_PORT),
        lab.topology().start_udp_echo6(DNS.target),
    ] {
        servers6.extend(started.unwrap_or_else(|e| panic!("IPv6 echo servers: {e}")));
    }
    let (vip4, vip6) = (info.vip(10), info.vip6(10));
    let pods: Vec<&NodeInfo> = info.pods.iter().collect();
    lab.control_file(&dual_stack_docs("echo", vip4, vip6, &[HTTP, DNS], &pods));
    lab.start_gateway_with(&[
        "--service-cidr",
        SERVICE_CIDR6,
        "--cluster-cidr",
        &info.client_subnet.to_string(),
        "--cluster-cidr",
        "2001:2::/48",
    ]);
    let gateway_ns = lab.topology().gateway();
    let client = lab.topology().client();
    let fail = |what: &dyn Display| -> ! {
        lab.fail(format_args!(
            "{what}{}",
            counters_digest(&metrics(gateway_ns))
        ))
    };
    // Client and Pods share a segment: the Pods' replies return through
    // the gateway only because they route the client's /32 and /128 so.
    let names = ["pod1", "pod2", "pod3"];
    for vip in [IpAddr::V4(vip4), IpAddr::V6(vip6)] {
        let target = SocketAddr::new(vip, HTTP.port);
        let served = tcp_spread(client, &info.pods, target, ONE_ARM_CONNECTIONS)
            .unwrap_or_else(|e| fail(&e));
        assert_share(&served, &names, ONE_ARM_CONNECTIONS, 1.0, 100.0);
        let udp = SocketAddr::new(vip, DNS.port);
        let served = udp_spread(client, &info.pods, udp, UDP_REQUESTS).unwrap_or_else(|e| fail(&e));
        assert_share(&served, &names, UDP_REQUESTS, 1.0, 100.0);
        lab.in_client(move || lab::ping(vip, EXCHANGE_TIMEOUT))
            .unwrap_or_else(|e| fail(&format_args!("ping {vip}: {e}")));
    }
    drop(servers6);
    lab.stop_gateway();
}

/// The backend Pods of the cluster lab.
const BACKENDS: [&str; 3] = ["pod1", "pod2", "pod3"];
/// A source outside the cluster lab's IPv6 `--cluster-cidr` (2001:2::/56).
const OUTSIDE_CLUSTER6: &str = "2001:2:0:200::2";

/// A dual-stack cluster lab with echo servers of both families on the
/// backends and a gateway; drops the gateway first, then the servers,
/// then the namespaces, then the control file.
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
                let log = gateway.log();
                let skip = log.len().saturating_sub(60);
                eprintln!(
                    "--- gateway log (last lines) ---\n{}",
                    log[skip..].join("\n")
                );
            }
        }
    }
}

impl ClusterLab {
    /// Nodes: client1 | client2 | pod1, pod2 | pod3.
    fn build(purpose: &str) -> ClusterLab {
        let _ = lab::remove_stale_namespaces();
        let cluster = ClusterBuilder::new(purpose)
            .node(&["client1"])
            .node(&["client2"])
            .node(&["pod1", "pod2"])
            .node(&["pod3"])
            .dual_stack(true)
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
        for started in [
            lab.cluster.start_tcp_echo(&BACKENDS, TARGET_PORT),
            lab.cluster.start_udp_echo(&BACKENDS, DNS.target),
            lab.cluster.start_tcp_echo6(&BACKENDS, TARGET_PORT),
            lab.cluster.start_udp_echo6(&BACKENDS, DNS.target),
            lab.cluster.start_tcp_echo6(&BACKENDS, UNDEFINED_PORT),
        ] {
            let servers = started.unwrap_or_else(|e| panic!("echo servers: {e}"));
            lab.servers.extend(servers);
        }
        lab
    }

    fn start(&mut self, extra: &[&str]) {
        let info = self.cluster.info();
        let v6 = info.ipv6().unwrap_or_else(|e| panic!("{e}"));
        let args: Vec<String> = [
            "--iface",
            "lan0",
            "--control-file",
            &self.control.display().to_string(),
            "--service-cidr",
            &info.vip_range.to_string(),
            "--service-cidr",
            &v6.vip_range.to_string(),
            "--cluster-cidr",
            &info.cluster_cidr.to_string(),
            "--cluster-cidr",
            &v6.cluster_cidr.to_string(),
            "--cores",
            "1",
            "--state-dir",
            &self.dir.path().join("state").display().to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let args = support::gateway_args(args, extra);
        let gateway =
            GatewayProcess::start(exe(), self.cluster.gateway(), &args, false, READY_WITHIN)
                .unwrap_or_else(|e| panic!("starting the gateway: {e}"));
        self.gateway = Some(gateway);
    }

    fn stop(&mut self) {
        let gateway = self.gateway.take().expect("the gateway runs");
        let status = gateway
            .stop(STOP_WITHIN)
            .unwrap_or_else(|e| panic!("stopping the gateway: {e}"));
        assert!(status.success(), "the gateway exited with {status}");
    }

    /// Panics with `what` and the gateway's counters (its log follows
    /// from `Drop`).
    #[track_caller]
    fn fail(&self, what: impl Display) -> ! {
        panic!(
            "{what}{}",
            counters_digest(&metrics(self.cluster.gateway()))
        )
    }

    /// Pod `name`'s namespace.
    fn pod_ns(&self, name: &str) -> &Netns {
        self.cluster
            .pod_ns(name)
            .unwrap_or_else(|| panic!("no Pod {name}"))
    }

    /// Runs `f` on a thread in Pod `name`'s namespace.
    fn in_pod<T: Send>(&self, name: &str, f: impl FnOnce() -> T + Send) -> T {
        self.cluster
            .pod_ns(name)
            .unwrap_or_else(|| panic!("no Pod {name}"))
            .run(f)
            .unwrap_or_else(|e| panic!("running in {name}: {e}"))
    }

    /// The peers the backends' echo servers on `port` of the family `v6`
    /// saw.
    fn peers(&self, port: u16, v6: bool) -> BTreeSet<IpAddr> {
        self.servers
            .iter()
            .filter(|s| s.addr().port() == port && s.addr().is_ipv6() == v6)
            .flat_map(EchoServer::peers)
            .collect()
    }

    /// TCP connections the backends of the family `v6` accepted on `port`.
    fn accepted(&self, port: u16, v6: bool) -> u64 {
        self.servers
            .iter()
            .filter(|s| s.addr().port() == port && s.addr().is_ipv6() == v6)
            .map(EchoServer::connections)
            .sum()
    }
}

#[test]
fn dual_stack_service_through_source_nat() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut lab = ClusterLab::build("dualsnat");
    let info = lab.cluster.info().clone();
    let (vip4, vip6) = (info.vip(10), info.vip6(10));
    let backends: Vec<&NodeInfo> = BACKENDS
        .iter()
        .map(|p| info.pod(p).expect("a backend Pod"))
        .collect();
    let docs = dual_stack_docs("web", vip4, vip6, &[HTTP, DNS], &backends);
    std::fs::write(&lab.control, docs.join("---\n"))
        .unwrap_or_else(|e| panic!("writing the control file: {e}"));
    lab.start(&["--snat"]);
    let gw4 = IpAddr::V4(info.gateway.addr);
    let gw6 = IpAddr::V6(info.gateway.ipv6().unwrap_or_else(|e| panic!("{e}")));

    for (vip, gw) in [(IpAddr::V4(vip4), gw4), (IpAddr::V6(vip6), gw6)] {
        let v6 = vip.is_ipv6();
        let target = SocketAddr::new(vip, HTTP.port);
        // Half the connections from each client node.
        let mut served = BTreeMap::new();
        for client in ["client1", "client2"] {
            let from = tcp_spread(lab.pod_ns(client), &info.pods, target, CONNECTIONS / 2)
                .unwrap_or_else(|e| lab.fail(format_args!("from {client}: {e}")));
            for (pod, n) in from {
                *served.entry(pod).or_insert(0) += n;
            }
        }
        assert_share(&served, &BACKENDS, CONNECTIONS, MIN_SHARE, MAX_SHARE);
        assert_eq!(lab.accepted(TARGET_PORT, v6), CONNECTIONS as u64);
        let peers = lab.peers(TARGET_PORT, v6);
        if peers != BTreeSet::from([gw]) {
            lab.fail(format_args!(
                "every Pod must see only the gateway's {} address {gw} as its TCP peer, saw {peers:?}",
                family(v6)
            ));
        }
        let udp = SocketAddr::new(vip, DNS.port);
        let served = udp_spread(lab.pod_ns("client2"), &info.pods, udp, UDP_REQUESTS)
            .unwrap_or_else(|e| lab.fail(e));
        assert_share(&served, &BACKENDS, UDP_REQUESTS, 1.0, 100.0);
        let peers = lab.peers(DNS.target, v6);
        if peers != BTreeSet::from([gw]) {
            lab.fail(format_args!(
                "every Pod must see only {gw} as its UDP peer, saw {peers:?}"
            ));
        }
        let rtt = lab
            .in_pod("client1", move || lab::ping(vip, EXCHANGE_TIMEOUT))
            .unwrap_or_else(|e| lab.fail(format_args!("ping {vip} from client1: {e}")));
        eprintln!("ping {vip}: {rtt:?}");
    }

    // IPv6: an undefined port is refused at once, a source outside
    // --cluster-cidr gets nothing.
    let undefined = SocketAddr::new(vip6.into(), UNDEFINED_PORT);
    let took = lab
        .in_pod("client2", move || refused_at_once(undefined))
        .unwrap_or_else(|e| lab.fail(e));
    eprintln!("{undefined} refused in {took:?}");
    assert_eq!(
        lab.accepted(UNDEFINED_PORT, true),
        0,
        "[VIP6]:{UNDEFINED_PORT} reached a Pod"
    );
    let outside: Ipv6Addr = OUTSIDE_CLUSTER6.parse().expect("an IPv6 address");
    add_outside_address(lab.pod_ns("client1"), outside).unwrap_or_else(|e| lab.fail(e));
    let gateway_ns = lab.cluster.gateway();
    let before = metric_sum(
        &metrics(gateway_ns),
        "cipgw_drops_total",
        "reason=\"source_not_in_cluster\"",
    );
    let target = SocketAddr::new(vip6.into(), HTTP.port);
    lab.in_pod("client1", move || silent_from(outside.into(), target))
        .unwrap_or_else(|e| lab.fail(e));
    wait_drops(gateway_ns, "source_not_in_cluster", before).unwrap_or_else(|e| lab.fail(e));
    lab.stop();
}
