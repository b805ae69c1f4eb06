//! The lab's own tests: both topologies build, reach what they should and
//! nothing else, and leave no namespace behind, also after a panic. They
//! need root (skipped with a reason otherwise, never under CI=true) and run
//! one at a time ([`serial`]).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

use super::*;

const TIMEOUT: Duration = Duration::from_secs(3);
/// For paths that must not work: long enough for a real path on this
/// machine, short enough to keep the suite quick.
const SHORT: Duration = Duration::from_millis(400);
const PORT: u16 = 8080;

fn netns_list() -> String {
    cmd::ip(&["netns", "list"]).expect("ip netns list")
}

fn assert_gone(names: &[String]) {
    let listing = netns_list();
    for name in names {
        assert!(
            !listing
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name.as_str())),
            "namespace {name} survived teardown:\n{listing}"
        );
    }
}

fn owned(names: Vec<&str>) -> Vec<String> {
    names.into_iter().map(str::to_owned).collect()
}

fn in_rfc2544(addr: Ipv4Addr) -> bool {
    "198.18.0.0/15"
        .parse::<ipnet::Ipv4Net>()
        .unwrap()
        .contains(&addr)
}

/// `ip -br link show dev DEV` in `ns`: (state, mac).
fn brief_link(ns: &Netns, dev: &str) -> (String, String) {
    let out = ns.ip(&["-br", "link", "show", "dev", dev]).unwrap();
    let fields: Vec<&str> = out.split_whitespace().collect();
    (fields[1].to_owned(), fields[2].to_owned())
}

#[test]
fn builder_rejects_bad_requests() {
    assert!(matches!(
        Topology::two_arm("test").pods(0).build(),
        Err(LabError::Invalid(_))
    ));
    assert!(matches!(
        Topology::one_arm("Bad-Name").build(),
        Err(LabError::Invalid(_))
    ));
    assert!(matches!(Netns::create("a/b"), Err(LabError::Invalid(_))));
}

#[test]
fn two_arm_without_kernel_forwarding_isolates_client_from_pods() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let topo = Topology::two_arm("test").pods(2).build().unwrap();
    let info = topo.info().clone();
    let names = owned(info.namespaces());

    // What the report promises matches what was built.
    assert_eq!(info.shape, Shape::TwoArm);
    assert_eq!(info.gateway.ifaces(), vec!["to-client", "to-pods"]);
    assert_eq!(info.client.iface.addr, Ipv4Addr::new(198, 18, 0, 2));
    assert_eq!(info.pods[1].iface.addr, Ipv4Addr::new(198, 18, 2, 12));
    assert_eq!(info.vip(10), Ipv4Addr::new(198, 18, 100, 10));
    let mut ifaces = vec![
        (topo.client(), &info.client.iface),
        (topo.gateway(), &info.gateway.client_side),
        (topo.gateway(), &info.gateway.pod_side),
    ];
    ifaces.extend(topo.pods().iter().zip(info.pods.iter().map(|p| &p.iface)));
    for (ns, iface) in ifaces {
        assert!(iface.name.len() <= 15, "{}", iface.name);
        assert!(in_rfc2544(iface.addr), "{}", iface.addr);
        let (state, mac) = brief_link(ns, &iface.name);
        assert_eq!(state, "UP", "{} in {}", iface.name, ns.name());
        assert_eq!(mac, iface.mac_string(), "{} in {}", iface.name, ns.name());
        let addrs = ns.ip(&["-br", "addr", "show", "dev", &iface.name]).unwrap();
        assert!(addrs.contains(&iface.cidr().to_string()), "{addrs}");
    }
    assert_eq!(topo.gateway().sysctl("net.ipv4.ip_forward").unwrap(), "0");
    // Not dual-stack: IPv6 stays off everywhere.
    assert_eq!(info.ipv6, None);
    assert_eq!(info.client.iface.addr6, None);
    if std::path::Path::new("/proc/sys/net/ipv6").exists() {
        for ns in [topo.client(), topo.gateway(), &topo.pods()[0]] {
            assert_eq!(ns.sysctl("net.ipv6.conf.all.disable_ipv6").unwrap(), "1");
        }
    }
    let offloads = topo.client().exec("ethtool", &["-k", "eth0"]).unwrap();
    assert!(offloads.contains("tx-checksumming: off"), "{offloads}");
    let offloads = topo.pods()[0].exec("ethtool", &["-k", "eth0"]).unwrap();
    assert!(offloads.contains("tx-checksumming: off"), "{offloads}");
    let offloads = topo.gateway().exec("ethtool", &["-k", "to-pods"]).unwrap();
    assert!(
        offloads.contains("generic-receive-offload: off"),
        "{offloads}"
    );

    // Each side reaches the gateway, Pods reach each other over the switch.
    let gw_c = info.gateway.client_side.addr;
    let gw_p = info.gateway.pod_side.addr;
    topo.in_client(|| ping(gw_c, TIMEOUT)).unwrap();
    topo.pods()[0].try_run(|| ping(gw_p, TIMEOUT)).unwrap();
    let pod2 = info.pods[1].iface.addr;
    topo.pods()[0].try_run(|| ping(pod2, TIMEOUT)).unwrap();

    // The gateway reaches the Pods' echo servers directly...
    let servers = topo.start_tcp_echo(PORT).unwrap();
    let pod1 = SocketAddrV4::new(info.pods[0].iface.addr, PORT);
    let reply = topo
        .gateway()
        .try_run(|| tcp_request(pod1, b"hi\n", TIMEOUT))
        .unwrap();
    assert_eq!(reply, "Hello from pod1 at 198.18.2.11\n");

    // ...but with ip_forward=0 nothing crosses it.
    let crossed = topo.in_client(|| tcp_request(pod1, b"hi\n", SHORT));
    assert!(
        crossed.is_err(),
        "client reached a Pod without forwarding: {crossed:?}"
    );
    assert!(topo.in_client(|| ping(pod2, SHORT)).is_err());
    assert_eq!(servers[0].connections(), 1);

    drop(servers);
    drop(topo);
    assert_gone(&names);
}

#[test]
fn two_arm_with_kernel_forwarding_reaches_every_pod() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let topo = Topology::two_arm("test")
        .pods(3)
        .kernel_forwarding(true)
        .build()
        .unwrap();
    let info = topo.info().clone();
    let names = owned(info.namespaces());
    assert_eq!(topo.gateway().sysctl("net.ipv4.ip_forward").unwrap(), "1");
    let tcp = topo.start_tcp_echo(PORT).unwrap();
    let udp = topo.start_udp_echo(PORT).unwrap();

    for pod in &info.pods {
        let addr = SocketAddrV4::new(pod.iface.addr, PORT);
        let expected = format!("Hello from {} at {}\n", pod.name, pod.iface.addr);
        let reply = topo
            .in_client(|| tcp_request(addr, b"hello\n", TIMEOUT))
            .unwrap();
        assert_eq!(reply, expected);
        let reply = topo
            .in_client(|| udp_request(addr, b"hello", TIMEOUT))
            .unwrap();
        assert_eq!(reply, expected);
        let ip = pod.iface.addr;
        topo.in_client(|| ping(ip, TIMEOUT)).unwrap();
    }

    // Several requests over one connection: one reply each, same Pod.
    let pod3 = SocketAddrV4::new(info.pods[2].iface.addr, PORT);
    let replies = topo.in_client(|| tcp_session(pod3, 5, TIMEOUT)).unwrap();
    assert_eq!(replies.len(), 5);
    assert!(
        replies
            .iter()
            .all(|r| r == "Hello from pod3 at 198.18.2.13"),
        "{replies:?}"
    );

    // A last request without a newline is answered when the client closes;
    // HTTP gets an HTTP response.
    let reply = topo
        .in_client(|| tcp_request(pod3, b"a\nb", TIMEOUT))
        .unwrap();
    assert_eq!(reply, "Hello from pod3 at 198.18.2.13\n".repeat(2));
    let reply = topo
        .in_client(|| tcp_request(pod3, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", TIMEOUT))
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(
        reply.ends_with("\r\n\r\nHello from pod3 at 198.18.2.13\n"),
        "{reply}"
    );

    assert_eq!(tcp[2].connections(), 4);
    assert_eq!(tcp[2].replies(), 1 + 5 + 2 + 1);
    assert_eq!(udp[0].replies(), 1);

    drop((tcp, udp));
    drop(topo);
    assert_gone(&names);
}

#[test]
fn one_arm_replies_return_through_the_gateway() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let topo = Topology::one_arm("test")
        .pods(2)
        .kernel_forwarding(true)
        .build()
        .unwrap();
    let info = topo.info().clone();
    let names = owned(info.namespaces());
    assert_eq!(info.shape, Shape::OneArm);
    assert_eq!(info.gateway.ifaces(), vec!["lan0"]);
    assert_eq!(
        info.switch.ports,
        vec!["p-gw", "p-client", "p-pod1", "p-pod2"]
    );
    assert_eq!(info.client_subnet, info.pod_subnet);

    let client_ip = info.client.iface.addr.to_string();
    let route = topo.pods()[0].ip(&["route", "get", &client_ip]).unwrap();
    assert!(route.contains("via 198.18.2.1"), "{route}");
    let vip = info.vip(1).to_string();
    let route = topo.client().ip(&["route", "get", &vip]).unwrap();
    assert!(route.contains("via 198.18.2.1"), "{route}");

    let servers = topo.start_tcp_echo(PORT).unwrap();
    let pod2 = SocketAddrV4::new(info.pods[1].iface.addr, PORT);
    let reply = topo
        .in_client(|| tcp_request(pod2, b"x\n", TIMEOUT))
        .unwrap();
    assert_eq!(reply, "Hello from pod2 at 198.18.2.12\n");

    // The request goes straight over the switch, the reply via the gateway:
    // stop the gateway forwarding and the exchange fails.
    topo.gateway()
        .set_sysctl("net.ipv4.ip_forward", "0")
        .unwrap();
    let blocked = topo.in_client(|| tcp_request(pod2, b"x\n", SHORT));
    assert!(blocked.is_err(), "reply bypassed the gateway: {blocked:?}");

    drop(servers);
    drop(topo);
    assert_gone(&names);
}

#[test]
fn teardown_survives_a_panic_and_kills_processes_inside() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let names = std::sync::Mutex::new(Vec::new());
    let child = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let topo = Topology::two_arm("test").pods(1).build().unwrap();
        *names.lock().unwrap() = owned(topo.info().namespaces());
        let sleeper = topo.pods()[0].command("sleep").arg("60").spawn().unwrap();
        *child.lock().unwrap() = Some(sleeper);
        let _echo = topo.start_udp_echo(PORT).unwrap();
        panic!("deliberate panic with a live topology");
    }));
    assert!(result.is_err());
    assert_gone(&names.lock().unwrap());
    let mut sleeper = child.lock().unwrap().take().unwrap();
    let status = sleeper.try_wait().unwrap();
    assert!(
        status.is_some_and(|s| !s.success()),
        "process inside the namespace survived: {status:?}"
    );
}

#[test]
fn ns_child_is_killed_on_drop_and_threads_see_the_namespace() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let prefix = unique_prefix("test").unwrap();
    let ns = Netns::create(format!("{prefix}-solo")).unwrap();
    // A thread inside sees only the namespace's loopback.
    let links = ns
        .spawn_thread("lab-probe", || {
            std::fs::read_to_string("/proc/thread-self/net/dev").unwrap()
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(
        links.lines().filter(|l| l.contains(':')).count(),
        1,
        "{links}"
    );

    let mut child = ns.spawn("sleep", &["60"]).unwrap();
    // `ip netns exec` joins the namespace after it starts: wait for that.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while ns.pids().unwrap().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(ns.pids().unwrap(), vec![child.id() as libc::pid_t]);
    assert_eq!(child.wait_timeout(Duration::from_millis(50)).unwrap(), None);
    let status = child.terminate(Duration::from_secs(2)).unwrap();
    assert!(!status.success());
    let child = ns.spawn("sleep", &["60"]).unwrap();
    drop(child);
    assert!(ns.pids().unwrap().is_empty());

    let name = ns.name().to_owned();
    ns.remove().unwrap();
    assert_gone(&[name]);
}

#[test]
fn stale_namespaces_of_dead_processes_are_removed() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    // 4999999 is above the kernel's largest pid, so it names a dead process;
    // our own pid keeps parallel runs apart.
    let stale = format!("{NS_PREFIX}-test-4999999-{}", std::process::id());
    cmd::ip(&["netns", "add", &stale]).unwrap();
    let live = Netns::create(format!("{}-live", unique_prefix("test").unwrap())).unwrap();
    let removed = remove_stale_namespaces().unwrap();
    assert!(removed.contains(&stale), "{removed:?}");
    assert!(!removed.iter().any(|n| n == live.name()));
    assert_gone(&[stale]);
    assert!(netns_list().contains(live.name()));
}

fn in_rfc5180(addr: Ipv6Addr) -> bool {
    "2001:2::/48"
        .parse::<ipnet::Ipv6Net>()
        .unwrap()
        .contains(&addr)
}

#[test]
fn ipv6_plan_mirrors_the_ipv4_plan_inside_rfc5180() {
    let cases = [
        ([198, 18, 0, 2], "2001:2:0:0::2"),
        ([198, 18, 2, 11], "2001:2:0:2::11"),
        ([198, 18, 2, 210], "2001:2:0:2::210"),
        ([198, 18, 100, 10], "2001:2:0:100::10"),
        ([198, 18, 255, 255], "2001:2:0:255::255"),
    ];
    for (v4, v6) in cases {
        let mirrored = ipv6_of(Ipv4Addr::from(v4));
        assert_eq!(mirrored, v6.parse::<Ipv6Addr>().unwrap(), "{v4:?}");
        assert!(in_rfc5180(mirrored), "{mirrored}");
    }
    let vips: ipnet::Ipv4Net = "198.18.100.0/24".parse().unwrap();
    assert_eq!(net6_of(vips).to_string(), "2001:2:0:100::/64");
}

/// Addresses of `dev` in `ns` that are still tentative (DAD pending).
fn tentative(ns: &Netns, dev: &str) -> String {
    ns.ip(&["-6", "addr", "show", "dev", dev, "tentative"])
        .unwrap()
}

#[test]
fn two_arm_dual_stack_routes_ipv6_as_ipv4() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let topo = Topology::two_arm("test")
        .pods(2)
        .dual_stack(true)
        .build()
        .unwrap();
    let info = topo.info().clone();
    let names = owned(info.namespaces());
    let plan = *info.ipv6().unwrap();
    assert_eq!(plan.client_subnet.to_string(), "2001:2::/64");
    assert_eq!(plan.pod_subnet.to_string(), "2001:2:0:2::/64");
    assert_eq!(plan.vip_range.to_string(), "2001:2:0:100::/64");
    assert_eq!(
        info.vip6(10),
        "2001:2:0:100::10".parse::<Ipv6Addr>().unwrap()
    );
    assert_eq!(info.client.iface.addr6, Some("2001:2::2".parse().unwrap()));
    assert_eq!(
        info.pods[1].iface.addr6,
        Some("2001:2:0:2::12".parse().unwrap())
    );
    // MACs still come from the IPv4 address.
    assert_eq!(info.client.iface.mac_string(), "02:00:c6:12:00:02");
    let mut ifaces = vec![
        (topo.client(), &info.client.iface),
        (topo.gateway(), &info.gateway.client_side),
        (topo.gateway(), &info.gateway.pod_side),
    ];
    ifaces.extend(topo.pods().iter().zip(info.pods.iter().map(|p| &p.iface)));
    for (ns, iface) in ifaces {
        let addr6 = iface.ipv6().unwrap();
        assert!(in_rfc5180(addr6), "{addr6}");
        let addrs = ns.ip(&["-br", "addr", "show", "dev", &iface.name]).unwrap();
        assert!(addrs.contains(&iface.cidr().to_string()), "{addrs}");
        assert!(
            addrs.contains(&iface.cidr6().unwrap().to_string()),
            "{addrs}"
        );
        assert_eq!(
            tentative(ns, &iface.name),
            "",
            "{} in {}",
            iface.name,
            ns.name()
        );
        for key in [
            "accept_ra",
            "router_solicitations",
            "accept_dad",
            "disable_ipv6",
        ] {
            let key = format!("net.ipv6.conf.{}.{key}", iface.name);
            assert_eq!(ns.sysctl(&key).unwrap(), "0", "{key} in {}", ns.name());
        }
    }
    assert_eq!(
        topo.gateway()
            .sysctl("net.ipv6.conf.all.forwarding")
            .unwrap(),
        "0"
    );
    let gw_c6 = info.gateway.client_side.ipv6().unwrap();
    let gw_p6 = info.gateway.pod_side.ipv6().unwrap();
    for dest in [plan.vip_range.addr(), info.pods[0].iface.ipv6().unwrap()] {
        let route = topo
            .client()
            .ip(&["-6", "route", "get", &dest.to_string()])
            .unwrap();
        assert!(route.contains(&format!("via {gw_c6}")), "{route}");
    }
    let route = topo.pods()[0]
        .ip(&["-6", "route", "get", "2001:2:0:99::1"])
        .unwrap();
    assert!(route.contains(&format!("via {gw_p6}")), "{route}");

    // Each side reaches the gateway, Pods reach each other, over IPv6.
    topo.in_client(|| ping(gw_c6, TIMEOUT)).unwrap();
    topo.pods()[0].try_run(|| ping(gw_p6, TIMEOUT)).unwrap();
    let pod2 = info.pods[1].iface.ipv6().unwrap();
    topo.pods()[0].try_run(|| ping(pod2, TIMEOUT)).unwrap();

    // The gateway reaches the Pods' IPv6 echo servers directly...
    let tcp = topo.start_tcp_echo6(PORT).unwrap();
    let udp = topo.start_udp_echo6(PORT).unwrap();
    let pod1 = SocketAddrV6::new(info.pods[0].iface.ipv6().unwrap(), PORT, 0, 0);
    let reply = topo
        .gateway()
        .try_run(|| tcp_request(pod1, b"hi\n", TIMEOUT))
        .unwrap();
    assert_eq!(reply, "Hello from pod1 at 2001:2:0:2::11\n");
    // ...but with forwarding off nothing crosses it.
    let crossed = topo.in_client(|| tcp_request(pod1, b"hi\n", SHORT));
    assert!(
        crossed.is_err(),
        "client reached a Pod without forwarding: {crossed:?}"
    );
    assert!(topo.in_client(|| ping(pod2, SHORT)).is_err());

    // With the gateway's kernel forwarding IPv6, the client reaches every
    // Pod over IPv6 (TCP, UDP, ping), and IPv4 is unaffected.
    topo.gateway()
        .set_sysctl("net.ipv6.conf.all.forwarding", "1")
        .unwrap();
    for pod in &info.pods {
        let addr = SocketAddrV6::new(pod.iface.ipv6().unwrap(), PORT, 0, 0);
        let expected = format!("Hello from {} at {}\n", pod.name, addr.ip());
        let reply = topo
            .in_client(|| tcp_request(addr, b"hello\n", TIMEOUT))
            .unwrap();
        assert_eq!(reply, expected);
        let reply = topo
            .in_client(|| udp_request(addr, b"hello", TIMEOUT))
            .unwrap();
        assert_eq!(reply, expected);
        let ip = *addr.ip();
        topo.in_client(|| ping(ip, TIMEOUT)).unwrap();
    }
    let pod1_v4 = SocketAddrV4::new(info.pods[0].iface.addr, PORT);
    let v4_servers = topo.start_tcp_echo(PORT).unwrap();
    let reply = topo
        .gateway()
        .try_run(|| tcp_request(pod1_v4, b"hi\n", TIMEOUT))
        .unwrap();
    assert_eq!(reply, "Hello from pod1 at 198.18.2.11\n");
    assert_eq!(tcp[0].connections(), 2);
    assert_eq!(udp[1].replies(), 1);
    let client6 = info.client.iface.ipv6().unwrap();
    assert_eq!(
        tcp[0].peers(),
        vec![client6.into(), std::net::IpAddr::V6(gw_p6)]
    );

    drop((tcp, udp, v4_servers));
    drop(topo);
    assert_gone(&names);
}

#[test]
fn one_arm_dual_stack_ipv6_replies_return_through_the_gateway() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let topo = Topology::one_arm("test")
        .pods(2)
        .kernel_forwarding(true)
        .dual_stack(true)
        .build()
        .unwrap();
    let info = topo.info().clone();
    let names = owned(info.namespaces());
    let plan = *info.ipv6().unwrap();
    assert_eq!(plan.client_subnet, plan.pod_subnet);
    assert_eq!(
        topo.gateway()
            .sysctl("net.ipv6.conf.all.forwarding")
            .unwrap(),
        "1"
    );
    let gw6 = info.gateway.client_side.ipv6().unwrap();
    let client6 = info.client.iface.ipv6().unwrap().to_string();
    let route = topo.pods()[0]
        .ip(&["-6", "route", "get", &client6])
        .unwrap();
    assert!(route.contains(&format!("via {gw6}")), "{route}");
    let vip6 = info.vip6(1).to_string();
    let route = topo.client().ip(&["-6", "route", "get", &vip6]).unwrap();
    assert!(route.contains(&format!("via {gw6}")), "{route}");

    let servers = topo.start_tcp_echo6(PORT).unwrap();
    let pod2 = SocketAddrV6::new(info.pods[1].iface.ipv6().unwrap(), PORT, 0, 0);
    let reply = topo
        .in_client(|| tcp_request(pod2, b"x\n", TIMEOUT))
        .unwrap();
    assert_eq!(reply, "Hello from pod2 at 2001:2:0:2::12\n");
    // The request goes straight over the switch, the reply via the gateway.
    topo.gateway()
        .set_sysctl("net.ipv6.conf.all.forwarding", "0")
        .unwrap();
    let blocked = topo.in_client(|| tcp_request(pod2, b"x\n", SHORT));
    assert!(blocked.is_err(), "reply bypassed the gateway: {blocked:?}");

    drop(servers);
    drop(topo);
    assert_gone(&names);
}

#[test]
fn cluster_dual_stack_routes_pods_and_vips_in_ipv6() {
    if !require_root() {
        return;
    }
    let _serial = serial();
    let cluster = ClusterBuilder::new("test")
        .node(&["a"])
        .node(&["b", "c"])
        .dual_stack(true)
        .build()
        .unwrap();
    let info = cluster.info().clone();
    let v6 = *info.ipv6().unwrap();
    assert_eq!(v6.node_net.to_string(), "2001:2:0:1::/64");
    assert_eq!(v6.vip_range.to_string(), "2001:2:0:100::/64");
    assert_eq!(
        v6.gateway_spare,
        "2001:2:0:1::2".parse::<Ipv6Addr>().unwrap()
    );
    assert_eq!(info.gateway.addr6, Some("2001:2:0:1::1".parse().unwrap()));
    let c = info.pod("c").unwrap().iface.ipv6().unwrap();
    assert_eq!(c, "2001:2:0:12::12".parse::<Ipv6Addr>().unwrap());
    for pod in &info.pods {
        assert!(v6.cluster_cidr.contains(&pod.iface.ipv6().unwrap()));
    }
    assert!(!v6.cluster_cidr.contains(&info.vip6(10)));
    // Pods on different nodes reach each other over IPv6, and the gateway
    // (whose address the VIPs are routed to).
    cluster
        .pod_ns("a")
        .unwrap()
        .try_run(|| ping(c, TIMEOUT))
        .unwrap();
    let gw6 = info.gateway.ipv6().unwrap();
    let spare6 = v6.gateway_spare;
    cluster
        .pod_ns("c")
        .unwrap()
        .try_run(|| ping(gw6, TIMEOUT))
        .unwrap();
    cluster
        .pod_ns("a")
        .unwrap()
        .try_run(|| ping(spare6, TIMEOUT))
        .unwrap();
    let servers = cluster.start_tcp_echo6(&["b"], PORT).unwrap();
    let b = SocketAddrV6::new(info.pod("b").unwrap().iface.ipv6().unwrap(), PORT, 0, 0);
    let reply = cluster
        .pod_ns("a")
        .unwrap()
        .try_run(|| tcp_request(b, b"x\n", TIMEOUT))
        .unwrap();
    assert_eq!(reply, format!("Hello from b at {}\n", b.ip()));
    drop(servers);
}
