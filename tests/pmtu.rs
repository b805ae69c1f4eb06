//! End-to-end tests of ICMP error translation and fragments through the
//! gateway, with real AF_XDP sockets, real TCP and UDP and a real router
//! (Linux's forwarding in a namespace) that sends "fragmentation needed".
//!
//! ```text
//! client ── gateway ── [switch] ── pod1
//!                          └─ router ──(MTU 1280 towards the Pod)── far
//! ```
//!
//! The far Pod's own link MTU is 1500, so it advertises an MSS of 1460
//! and does not know that the router's link to it takes only 1280 bytes
//! (a tunnel or a smaller-MTU segment in the pod network, as in real
//! clusters). The client's 1500-byte segments to the VIP meet the router,
//! which answers with ICMP fragmentation needed about the datagram as it
//! left the gateway (client or SNAT address -> far Pod). Only when the
//! gateway translates that error back to the client's view (client ->
//! VIP) does the client's kernel lower its path MTU for the VIP and the
//! upload complete; otherwise it stalls for ever.
//!
//! Cases, without and with `--snat`, in IPv4 and in IPv6:
//! - a 1 MB TCP upload to the far Pod through the VIP completes, and the
//!   gateway counted the errors it forwarded;
//! - a 4,000-byte UDP datagram to a VIP arrives whole at pod1 (the client
//!   fragments it, the gateway sends the later fragments after the first),
//!   and pod1's 4,000-byte answer arrives whole at the client.
//!
//! The IPv6 cases run in a dual-stack lab (`dual_stack(true)`) with the
//! same plan in 2001:2::/48 (far Pod 2001:2:0:9::9, router 2001:2:0:2::254
//! and 2001:2:0:9::254, VIPs 2001:2:0:100::/64): the router's link towards
//! the far Pod has IPv6's minimum MTU, 1280, and answers with ICMPv6
//! packet too big (routers never fragment IPv6); the client fragments the
//! big datagram with a fragment header.
//!
//! Rules as in tests/netns.rs: one test at a time (`lab::serial`), root
//! (skip with a reason otherwise, never when CI=true), RAII cleanup,
//! 198.18.0.0/15 and 2001:2::/48 only.

use std::io::{Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream,
    UdpSocket,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cipgw::lab::{self, Netns, Topology};

#[path = "support/mod.rs"]
mod support;

use support::{pod, service, Lab, Port};

/// The far Pod, behind the router.
const FAR: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 9);
const FAR_SUBNET: &str = "198.18.9.0/24";
const ROUTER_UP: &str = "198.18.2.254";
const ROUTER_DOWN: &str = "198.18.9.254";
/// The router's link towards the far Pod (also IPv6's minimum MTU).
const SMALL_MTU: &str = "1280";
/// The IPv6 plan's counterparts (2001:2:0:X::Y mirrors 198.18.X.Y).
const FAR6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 9, 0, 0, 0, 9);
const FAR_SUBNET6: &str = "2001:2:0:9::/64";
const ROUTER_UP6: &str = "2001:2:0:2::254";
const ROUTER_DOWN6: &str = "2001:2:0:9::254";
/// The IPv6 service CIDR of dual-stack labs.
const SERVICE_CIDR6: &str = "2001:2:0:100::/64";
const SINK_PORT: u16 = 9000;
const BIG_UDP_PORT: u16 = 5300;
const UPLOAD: usize = 1 << 20;
const DATAGRAM: usize = 4000;
/// Generous for a transfer that takes well under a second when path-MTU
/// discovery works, and stalls for ever when it does not.
const TRANSFER_WITHIN: Duration = Duration::from_secs(30);
const SETTLE_WITHIN: Duration = Duration::from_secs(15);

/// The router and the far Pod, added to a two-arm lab; their namespaces
/// go when this is dropped (after the lab's gateway, which the test
/// stops first).
struct FarSide {
    /// Whether the far side has IPv6 (and the sink listens on it).
    v6: bool,
    stop: Arc<AtomicBool>,
    servers: Vec<JoinHandle<()>>,
    // Dropped last: removes the namespaces (the router's is only held).
    far: Netns,
    _router: Netns,
}

impl Drop for FarSide {
    fn drop(&mut self) {
        // Relaxed: a flag polled by the server threads; nothing else is
        // published through it.
        self.stop.store(true, Ordering::Relaxed);
        for server in self.servers.drain(..) {
            let _ = server.join();
        }
    }
}

fn sh(ns: &Netns, args: &[&str]) {
    ns.ip(args)
        .unwrap_or_else(|e| panic!("ip {} in {}: {e}", args.join(" "), ns.name()));
}

fn ethtool_tx_off(ns: &Netns, dev: &str) {
    ns.exec("ethtool", &["-K", dev, "tx", "off"])
        .unwrap_or_else(|e| panic!("ethtool -K {dev} tx off in {}: {e}", ns.name()));
}

/// Builds the router (forwarding, 198.18.2.254 on the Pod switch and
/// 198.18.9.254 with MTU 1280 towards the far Pod) and the far Pod
/// (198.18.9.9, MTU 1500, default route via the router), and routes the
/// far subnet from the gateway via the router. With `v6` (a dual-stack
/// topology) the same in IPv6 as well, quiet as the lab's namespaces are
/// (no DAD, router advertisements or solicitations).
fn add_far_side(topology: &Topology, v6: bool) -> FarSide {
    let prefix = lab::unique_prefix("pmtu").expect("namespace prefix");
    let router = Netns::create(format!("{prefix}-router")).expect("router namespace");
    let far = Netns::create(format!("{prefix}-far")).expect("far namespace");
    for ns in [&router, &far] {
        if v6 {
            ns.set_sysctls(&[
                ("net.ipv6.conf.all.disable_ipv6", "0"),
                ("net.ipv6.conf.default.disable_ipv6", "0"),
                ("net.ipv6.conf.all.accept_ra", "0"),
                ("net.ipv6.conf.default.accept_ra", "0"),
                ("net.ipv6.conf.all.router_solicitations", "0"),
                ("net.ipv6.conf.default.router_solicitations", "0"),
                ("net.ipv6.conf.all.accept_dad", "0"),
                ("net.ipv6.conf.default.accept_dad", "0"),
            ])
            .expect("IPv6 sysctls");
        }
        ns.set_sysctls(&[
            ("net.ipv6.conf.all.disable_ipv6", if v6 { "0" } else { "1" }),
            (
                "net.ipv6.conf.default.disable_ipv6",
                if v6 { "0" } else { "1" },
            ),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ])
        .expect("sysctls");
    }
    router
        .set_sysctl("net.ipv4.ip_forward", "1")
        .expect("router forwards");
    if v6 {
        router
            .set_sysctls(&[
                ("net.ipv6.conf.all.forwarding", "1"),
                // Forwarding turns a host into a router: pin what that
                // changes back to quiet.
                ("net.ipv6.conf.all.accept_ra", "0"),
                ("net.ipv6.conf.default.accept_ra", "0"),
            ])
            .expect("router forwards IPv6");
    }
    let switch = topology.switch();
    sh(
        &router,
        &[
            "link",
            "add",
            "r-up",
            "type",
            "veth",
            "peer",
            "name",
            "p-router",
            "netns",
            switch.name(),
        ],
    );
    sh(
        &router,
        &[
            "link",
            "add",
            "r-down",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            far.name(),
        ],
    );
    sh(switch, &["link", "set", "p-router", "master", "br0"]);
    sh(switch, &["link", "set", "p-router", "up"]);
    sh(
        &router,
        &["addr", "add", &format!("{ROUTER_UP}/24"), "dev", "r-up"],
    );
    sh(
        &router,
        &["addr", "add", &format!("{ROUTER_DOWN}/24"), "dev", "r-down"],
    );
    sh(&router, &["link", "set", "r-down", "mtu", SMALL_MTU]);
    sh(&far, &["addr", "add", &format!("{FAR}/24"), "dev", "eth0"]);
    if v6 {
        for (ns, addr, dev) in [
            (&router, ROUTER_UP6, "r-up"),
            (&router, ROUTER_DOWN6, "r-down"),
            (&far, &FAR6.to_string(), "eth0"),
        ] {
            sh(
                ns,
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{addr}/64"),
                    "dev",
                    dev,
                    "nodad",
                ],
            );
        }
    }
    // Packets towards the gateway's AF_XDP sockets carry full checksums.
    ethtool_tx_off(&router, "r-up");
    ethtool_tx_off(&far, "eth0");
    for (ns, dev) in [(&router, "r-up"), (&router, "r-down"), (&far, "eth0")] {
        sh(ns, &["link", "set", dev, "up"]);
    }
    let gateway_pod_side = topology.info().gateway.pod_side.addr.to_string();
    sh(
        &router,
        &["route", "add", "default", "via", &gateway_pod_side],
    );
    sh(&far, &["route", "add", "default", "via", ROUTER_DOWN]);
    sh(
        topology.gateway(),
        &["route", "add", FAR_SUBNET, "via", ROUTER_UP],
    );
    if v6 {
        let gateway_pod_side = topology
            .info()
            .gateway
            .pod_side
            .addr6
            .expect("a dual-stack lab");
        sh(
            &router,
            &[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &gateway_pod_side.to_string(),
            ],
        );
        sh(
            &far,
            &["-6", "route", "add", "default", "via", ROUTER_DOWN6],
        );
        sh(
            topology.gateway(),
            &["-6", "route", "add", FAR_SUBNET6, "via", ROUTER_UP6],
        );
    }
    FarSide {
        v6,
        stop: Arc::new(AtomicBool::new(false)),
        servers: Vec::new(),
        far,
        _router: router,
    }
}

impl FarSide {
    /// A TCP server on the far Pod that reads each connection to its end
    /// and answers with the number of bytes it read.
    fn start_sink(&mut self) {
        let stop = Arc::clone(&self.stop);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let addr: IpAddr = if self.v6 { FAR6.into() } else { FAR.into() };
        let server = self
            .far
            .spawn_thread("pmtu-sink", move || {
                let listener = TcpListener::bind((addr, SINK_PORT)).expect("sink binds");
                listener.set_nonblocking(true).expect("nonblocking");
                ready_tx.send(()).expect("test waits");
                // Relaxed: see `FarSide::drop`.
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            stream.set_nonblocking(false).expect("blocking");
                            stream
                                .set_read_timeout(Some(TRANSFER_WITHIN))
                                .expect("timeout");
                            let mut total = 0usize;
                            let mut chunk = [0u8; 65536];
                            while let Ok(n @ 1..) = stream.read(&mut chunk) {
                                total += n;
                            }
                            let _ = stream.write_all(format!("{total}\n").as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
            .expect("sink thread");
        ready_rx.recv().expect("sink listening");
        self.servers.push(server);
    }
}

/// A UDP server on `ns` at `addr` that sends every datagram back whole.
fn start_udp_mirror(ns: &Netns, addr: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = ns
        .spawn_thread("pmtu-mirror", move || {
            let socket = UdpSocket::bind(addr).expect("mirror binds");
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            ready_tx.send(()).expect("test waits");
            let mut buf = vec![0u8; 65536];
            // Relaxed: see `FarSide::drop`.
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], peer);
                }
            }
        })
        .expect("mirror thread");
    ready_rx.recv().expect("mirror listening");
    server
}

/// The gateway's non-zero ICMP, fragment, drop and packet counters, for
/// failure messages.
fn counters_digest(lab: &Lab) -> String {
    let mut out = String::from("\n--- gateway counters (non-zero) ---");
    for line in lab.metrics().lines().filter(|l| {
        !l.starts_with('#')
            && ["icmp", "fragment", "drop", "packets"]
                .iter()
                .any(|k| l.contains(k))
            && !l.ends_with(" 0")
    }) {
        out.push('\n');
        out.push_str(line);
    }
    // What reached the gateway's own kernel instead (passed packets).
    if let Ok(snmp6) = lab.topology().gateway().exec("cat", &["/proc/net/snmp6"]) {
        out.push_str("\n--- the gateway kernel's IPv6 counters (non-zero) ---");
        for line in snmp6.lines().filter(|l| {
            ["PktTooBig", "Reasm", "InAddrErrors", "InNoRoutes"]
                .iter()
                .any(|k| l.contains(k))
                && l.split_whitespace().last() != Some("0")
        }) {
            out.push('\n');
            out.push_str(line);
        }
    }
    out
}

/// Waits until the gateway's counter `name` reaches `want`.
fn wait_counter(lab: &Lab, name: &str, want: u64) -> u64 {
    let deadline = Instant::now() + SETTLE_WITHIN;
    loop {
        let value = lab.counter(name);
        if value >= want {
            return value;
        }
        if Instant::now() > deadline {
            lab.fail(format_args!(
                "{name} is {value}, not {want}, after {SETTLE_WITHIN:?}{}",
                counters_digest(lab)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn path_mtu_and_fragments(extra: &[&str]) {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut lab = Lab::build(Topology::two_arm("pmtu").pods(1));
    let mut far_side = add_far_side(lab.topology(), false);
    far_side.start_sink();
    let pod1 = lab.info().pods[0].clone();
    let mirror = start_udp_mirror(
        lab.topology().pods().first().expect("one Pod"),
        SocketAddrV4::new(pod1.iface.addr, BIG_UDP_PORT).into(),
        Arc::clone(&far_side.stop),
    );
    far_side.servers.push(mirror);

    let sink_vip = lab.info().vip(10);
    let udp_vip = lab.info().vip(20);
    let sink = Port {
        name: "sink",
        port: SINK_PORT,
        target: SINK_PORT,
        protocol: "TCP",
    };
    let big_udp = Port {
        name: "big",
        port: BIG_UDP_PORT,
        target: BIG_UDP_PORT,
        protocol: "UDP",
    };
    let mut far_pod = pod1.clone();
    far_pod.name = "far".into();
    far_pod.iface.addr = FAR;
    let documents = vec![
        service("sink", &sink_vip.to_string(), Some("sink"), &[sink]),
        pod(&far_pod, "sink"),
        service("big", &udp_vip.to_string(), Some("big"), &[big_udp]),
        pod(&pod1, "big"),
    ];
    lab.control_file(&documents);
    lab.start_gateway_with(extra);
    upload_and_big_datagram(
        &mut lab,
        far_side,
        SocketAddrV4::new(sink_vip, SINK_PORT).into(),
        SocketAddrV4::new(udp_vip, BIG_UDP_PORT).into(),
    );
}

/// The cases themselves, in the family of the targets: 1 MB up to the far
/// Pod through `sink`, a 4,000-byte datagram to pod1 through `big_udp` and
/// back; then the gateway stops.
fn upload_and_big_datagram(
    lab: &mut Lab,
    far_side: FarSide,
    sink: SocketAddr,
    big_udp: SocketAddr,
) {
    // 1 MB up to the far Pod, through the router's 1280-byte link.
    let target = sink;
    let started = Instant::now();
    let answer = lab.in_client(move || -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&target, TRANSFER_WITHIN)?;
        stream.set_write_timeout(Some(TRANSFER_WITHIN))?;
        stream.set_read_timeout(Some(TRANSFER_WITHIN))?;
        let data: Vec<u8> = (0..UPLOAD).map(|i| (i % 251) as u8).collect();
        stream.write_all(&data)?;
        stream.shutdown(Shutdown::Write)?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    });
    let upload = match answer {
        Ok(answer) if answer.trim() == UPLOAD.to_string() => Ok(started.elapsed()),
        Ok(answer) => Err(format!(
            "1 MB upload to {target}: the far Pod read {:?} bytes, not {UPLOAD}",
            answer.trim()
        )),
        Err(e) => Err(format!(
            "1 MB upload to {target} through a 1280-byte link: {e} after {:?}",
            started.elapsed()
        )),
    };
    let upload_counters = counters_digest(lab);

    // A 4,000-byte datagram each way, in fragments.
    let target = big_udp;
    let echoed = lab.in_client(move || -> std::io::Result<(Vec<u8>, Vec<u8>)> {
        let socket = UdpSocket::bind(if target.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        })?;
        socket.set_read_timeout(Some(Duration::from_secs(5)))?;
        let datagram: Vec<u8> = (0..DATAGRAM).map(|i| (i % 241) as u8).collect();
        socket.send_to(&datagram, target)?;
        let mut buf = vec![0u8; 65536];
        let (n, from) = socket.recv_from(&mut buf)?;
        if from != target {
            return Err(std::io::Error::other(format!("answer from {from}")));
        }
        Ok((datagram, buf[..n].to_vec()))
    });
    let datagram = match echoed {
        Ok((sent, received)) if received == sent => Ok(()),
        Ok((_, received)) => Err(format!(
            "4,000-byte datagram to {target}: the answer has {} bytes or other content",
            received.len()
        )),
        Err(e) => Err(format!("4,000-byte datagram to {target}: {e}")),
    };
    // Both cases ran whatever the first's outcome, so a failure tells all.
    match (upload, datagram) {
        (Ok(took), Ok(())) => eprintln!("1 MB through the 1280-byte link in {took:?}"),
        (upload, datagram) => lab.fail(format_args!(
            "{}\n{}\n(counters after the upload:){upload_counters}\n(now:){}",
            upload.err().unwrap_or_else(|| "the upload worked".into()),
            datagram
                .err()
                .unwrap_or_else(|| "the datagram and its answer arrived whole".into()),
            counters_digest(lab)
        )),
    }
    let errors = wait_counter(lab, "cipgw_icmp_errors_forwarded_total", 1);
    eprintln!("ICMP errors translated for the client: {errors}");
    // Three fragments each way: two later ones each way followed.
    wait_counter(lab, "cipgw_fragments_forwarded_total", 4);
    lab.stop_gateway();
    drop(far_side);
}

#[test]
fn path_mtu_discovery_and_fragments_work_through_the_gateway() {
    path_mtu_and_fragments(&[]);
}

#[test]
fn path_mtu_discovery_and_fragments_work_through_source_nat() {
    path_mtu_and_fragments(&["--snat"]);
}

/// An IPv6-only Service `name` at `vip` with one endpoint, `endpoint`,
/// from an `addressType: IPv6` EndpointSlice.
fn service6(name: &str, vip: Ipv6Addr, port: &Port, endpoint: Ipv6Addr) -> Vec<String> {
    vec![
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n\
             spec:\n  type: ClusterIP\n  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv6]\n  \
             clusterIP: \"{vip}\"\n  ports:\n  - name: {}\n    port: {}\n    targetPort: {}\n    \
             protocol: {}\n",
            port.name, port.port, port.target, port.protocol
        ),
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  \
             name: {name}-ipv6\n  namespace: default\n  labels:\n    \
             kubernetes.io/service-name: {name}\naddressType: IPv6\nports:\n\
             - name: {}\n  port: {}\n  protocol: {}\nendpoints:\n\
             - addresses: [\"{endpoint}\"]\n  conditions:\n    ready: true\n",
            port.name, port.target, port.protocol
        ),
    ]
}

/// The IPv6 counterpart of [`path_mtu_and_fragments`]: the same far side
/// in IPv6 (its link at 1280, IPv6's minimum MTU), IPv6 VIPs.
fn path_mtu_and_fragments6(extra: &[&str]) {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut lab = Lab::build(Topology::two_arm("pmtu6").pods(1).dual_stack(true));
    let mut far_side = add_far_side(lab.topology(), true);
    far_side.start_sink();
    let pod1 = lab.info().pods[0].clone();
    let pod1_v6 = pod1.iface.addr6.expect("a dual-stack lab");
    let mirror = start_udp_mirror(
        lab.topology().pods().first().expect("one Pod"),
        SocketAddr::new(pod1_v6.into(), BIG_UDP_PORT),
        Arc::clone(&far_side.stop),
    );
    far_side.servers.push(mirror);

    let sink_vip = lab.info().vip6(10);
    let udp_vip = lab.info().vip6(20);
    let sink = Port {
        name: "sink",
        port: SINK_PORT,
        target: SINK_PORT,
        protocol: "TCP",
    };
    let big_udp = Port {
        name: "big",
        port: BIG_UDP_PORT,
        target: BIG_UDP_PORT,
        protocol: "UDP",
    };
    let mut documents = service6("sink", sink_vip, &sink, FAR6);
    documents.extend(service6("big", udp_vip, &big_udp, pod1_v6));
    lab.control_file(&documents);
    let mut args = vec!["--service-cidr", SERVICE_CIDR6];
    args.extend(extra);
    lab.start_gateway_with(&args);
    upload_and_big_datagram(
        &mut lab,
        far_side,
        SocketAddr::new(sink_vip.into(), SINK_PORT),
        SocketAddr::new(udp_vip.into(), BIG_UDP_PORT),
    );
}

#[test]
fn path_mtu_discovery_and_fragments_work_through_the_gateway_ipv6() {
    path_mtu_and_fragments6(&[]);
}

#[test]
fn path_mtu_discovery_and_fragments_work_through_source_nat_ipv6() {
    path_mtu_and_fragments6(&["--snat"]);
}

/// The IPv6 lab itself, without cipgw: with the gateway's kernel
/// forwarding, the same upload straight to the far Pod and the same big
/// datagram straight to pod1 work (the kernel relays the router's packet
/// too big), so a failure of the tests above is the gateway's.
#[test]
fn ipv6_far_side_works_through_kernel_forwarding() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let lab = Lab::build(
        Topology::two_arm("pmtu6k")
            .pods(1)
            .dual_stack(true)
            .kernel_forwarding(true),
    );
    let mut far_side = add_far_side(lab.topology(), true);
    far_side.start_sink();
    let pod1_v6 = lab.info().pods[0].iface.addr6.expect("a dual-stack lab");
    let pod1_udp = SocketAddr::new(pod1_v6.into(), BIG_UDP_PORT);
    let mirror = start_udp_mirror(
        lab.topology().pods().first().expect("one Pod"),
        pod1_udp,
        Arc::clone(&far_side.stop),
    );
    far_side.servers.push(mirror);
    // The client routes only the VIPs and the Pod subnet via the gateway.
    let via = lab
        .info()
        .gateway
        .client_side
        .addr6
        .expect("a dual-stack lab");
    sh(
        lab.topology().client(),
        &["-6", "route", "add", FAR_SUBNET6, "via", &via.to_string()],
    );
    let sink = SocketAddr::new(FAR6.into(), SINK_PORT);
    let answer = lab.in_client(move || -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&sink, TRANSFER_WITHIN)?;
        stream.set_write_timeout(Some(TRANSFER_WITHIN))?;
        stream.set_read_timeout(Some(TRANSFER_WITHIN))?;
        stream.write_all(&vec![7u8; UPLOAD])?;
        stream.shutdown(Shutdown::Write)?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    });
    let answer = answer.unwrap_or_else(|e| panic!("1 MB straight to {sink}: {e}"));
    assert_eq!(answer.trim(), UPLOAD.to_string());
    // The router's packet too big reached the client, which lowered its
    // path MTU to the far Pod.
    let route = lab
        .topology()
        .client()
        .ip(&["-6", "route", "get", &FAR6.to_string()])
        .unwrap_or_else(|e| panic!("ip -6 route get {FAR6}: {e}"));
    assert!(
        route.contains(&format!("mtu {SMALL_MTU}")),
        "no path MTU of {SMALL_MTU} towards {FAR6}: {route}"
    );
    let echoed = lab.in_client(move || -> std::io::Result<usize> {
        let socket = UdpSocket::bind("[::]:0")?;
        socket.set_read_timeout(Some(Duration::from_secs(5)))?;
        socket.send_to(&[9u8; DATAGRAM], pod1_udp)?;
        let mut buf = vec![0u8; 65536];
        Ok(socket.recv_from(&mut buf)?.0)
    });
    assert_eq!(
        echoed.unwrap_or_else(|e| panic!("4,000 bytes straight to {pod1_udp}: {e}")),
        DATAGRAM
    );
    drop(far_side);
}
