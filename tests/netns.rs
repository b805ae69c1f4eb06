//! End-to-end tests of `cipgw run` in network namespaces: the real binary,
//! real AF_XDP sockets on veths, real TCP and UDP sockets at both ends.
//!
//! Each test builds its own lab (client, gateway, switch and Pods; see
//! `cipgw::lab`), starts echo servers on the Pods that answer with their Pod
//! name, writes a control file built from the lab's addresses, runs the
//! gateway on core 1 (the client is pinned to core 0) and talks to the VIPs
//! from the client. Tests run one at a time (`lab::serial`), skip with a
//! printed reason when not root (never when `CI=true`), and clean up through
//! RAII guards, also while a panic unwinds: the gateway process, echo
//! servers, namespaces and the control file's directory. Addresses come from
//! 198.18.0.0/15 only (README.md, "Testing").
//!
//! Cases:
//! - TCP spreads over three Pods, every connection sticks to one (two-arm);
//! - UDP request/response through a VIP, replies come from the VIP;
//! - one port on two VIPs reaches each VIP's own Pods;
//! - a headless Service gets nothing forwarded, its Pods stay reachable;
//! - a port the Service does not define is not forwarded;
//! - the gateway's own kernel stays reachable while cipgw runs;
//! - one-arm TCP and UDP;
//! - a restart after SIGKILL replaces the stale XDP program;
//! - a flood of new flows makes the worker bypass its flow cache, and
//!   replied flows are still served;
//! - `cipgw check` on good and bad control files (no root needed).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use cipgw::lab::{self, Topology};

use support::{free_hugepages, Lab, Port, ReservedHugePages, HTTP, TARGET_PORT};

#[path = "support/mod.rs"]
mod support;

/// `VIP:port` for the Service port `port`.
fn vip_port(vip: Ipv4Addr, port: &Port) -> SocketAddrV4 {
    SocketAddrV4::new(vip, port.port)
}

/// Asserts that every Pod in `pods` served between `min` and `max` percent
/// of `total`, and nobody else served any.
#[track_caller]
fn assert_share(served: &BTreeMap<String, usize>, pods: &[&str], total: usize, min: f64, max: f64) {
    let sum: usize = served.values().sum();
    assert_eq!(
        sum, total,
        "served counts {served:?} do not add up to {total}"
    );
    for pod in served.keys() {
        assert!(
            pods.contains(&pod.as_str()),
            "{pod} answered but is not a backend of this Service: {served:?}"
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

#[test]
fn tcp_spreads_over_three_pods_two_arm() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    const CONNECTIONS: usize = 300;
    const REQUESTS: usize = 3;
    let mut lab = Lab::build(Topology::two_arm("tcpspread").pods(3));
    lab.tcp_echo(TARGET_PORT);
    let vip = lab.info().vip(10);
    let docs = lab.selector_service("echo", vip, &[HTTP], &[0, 1, 2]);
    lab.control_file(&docs);
    lab.start_gateway();

    let served = lab.tcp_sessions(vip_port(vip, &HTTP), CONNECTIONS, REQUESTS);
    assert_share(&served, &["pod1", "pod2", "pod3"], CONNECTIONS, 20.0, 47.0);
    // Every session succeeded over a socket connected to the VIP, so every
    // segment the client accepted came from the VIP; the backends saw each
    // connection exactly once.
    assert_eq!(
        lab.accepted(TARGET_PORT),
        CONNECTIONS as u64,
        "the echo servers accepted a different number of connections than the client made"
    );
    lab.stop_gateway();
}

#[test]
fn udp_request_response_through_vip() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    const REQUESTS: usize = 60;
    let mut lab = Lab::build(Topology::two_arm("udp").pods(3));
    lab.udp_echo(support::UDP_TARGET_PORT);
    let vip = lab.info().vip(53);
    let docs = lab.selector_service("dns", vip, &[support::DNS], &[0, 1, 2]);
    lab.control_file(&docs);
    lab.start_gateway();

    let served = lab.udp_exchanges(vip_port(vip, &support::DNS), REQUESTS);
    assert_share(&served, &["pod1", "pod2", "pod3"], REQUESTS, 1.0, 100.0);
    lab.stop_gateway();
}

#[test]
fn same_port_on_two_vips_reaches_own_pods() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    const CONNECTIONS: usize = 40;
    let mut lab = Lab::build(Topology::two_arm("twovips").pods(3));
    lab.tcp_echo(TARGET_PORT);
    let (alpha, beta) = (lab.info().vip(10), lab.info().vip(11));
    // alpha selects pod1 and pod2 by label; beta has no selector and takes
    // pod3 from an EndpointSlice (pod3 is labelled `app: beta`, which no
    // selector matches).
    let mut docs = lab.selector_service("alpha", alpha, &[HTTP], &[0, 1]);
    docs.extend([
        support::service("beta", &beta.to_string(), None, &[HTTP]),
        support::endpoint_slice("beta", &[&lab.info().pods[2]], &HTTP),
    ]);
    docs.extend(lab.pods(&[2], "beta"));
    lab.control_file(&docs);
    lab.start_gateway();

    let served = lab.tcp_sessions(vip_port(alpha, &HTTP), CONNECTIONS, 2);
    assert_share(&served, &["pod1", "pod2"], CONNECTIONS, 1.0, 100.0);
    let served = lab.tcp_sessions(vip_port(beta, &HTTP), CONNECTIONS, 2);
    assert_share(&served, &["pod3"], CONNECTIONS, 100.0, 100.0);
    lab.stop_gateway();
}

#[test]
fn headless_service_is_not_forwarded() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    // Kernel forwarding on, so that the client can reach Pods directly
    // through the gateway's kernel, as a headless Service's clients do.
    let mut lab = Lab::build(
        Topology::two_arm("headless")
            .pods(3)
            .kernel_forwarding(true),
    );
    lab.tcp_echo(TARGET_PORT);
    let vip = lab.info().vip(10);
    let pod3 = lab.info().pods[2].iface.addr;
    let db_port = Port {
        name: "db",
        port: TARGET_PORT,
        ..HTTP
    };
    let mut docs = lab.selector_service("echo", vip, &[HTTP], &[0, 1]);
    let db = docs.len();
    docs.push(support::service("db", "None", Some("db"), &[db_port]));
    docs.extend(lab.pods(&[2], "db"));
    let control = lab.control_file(&docs);

    let listing = lab.check(&control);
    let db_line = listing
        .lines()
        .find(|l| l.contains("default/db"))
        .unwrap_or_else(|| panic!("cipgw check does not list default/db:\n{listing}"));
    assert!(
        db_line.starts_with("headless") && db_line.contains(&format!("{pod3}:{TARGET_PORT}")),
        "default/db should be listed as headless with endpoint {pod3}:{TARGET_PORT}: {db_line:?}"
    );
    // The address default/db would get if it asked for a ClusterIP: where a
    // headless Service leaking into the VIP table would most likely land.
    let mut with_vip = docs.clone();
    with_vip[db] = support::service("db", "", Some("db"), &[db_port]);
    let listing = lab.check(&lab.write_file("with-vip.yaml", &with_vip));
    let would_be: Ipv4Addr = listing
        .lines()
        .find(|l| l.contains("default/db"))
        .and_then(|l| l.split(':').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no allocated ClusterIP for default/db in:\n{listing}"));
    assert_ne!(would_be, vip);

    lab.start_gateway();
    for addr in [would_be, lab.info().vip(20)] {
        lab.assert_not_forwarded(SocketAddrV4::new(addr, TARGET_PORT));
    }
    // The headless Service's Pod is reached directly (through the
    // gateway's kernel): its replies are not taken for backend replies.
    let served = lab.tcp_sessions(SocketAddrV4::new(pod3, TARGET_PORT), 5, 2);
    assert_share(&served, &["pod3"], 5, 100.0, 100.0);
    assert!(lab.gateway_running(), "the gateway died");
    let served = lab.tcp_sessions(vip_port(vip, &HTTP), 20, 2);
    assert_share(&served, &["pod1", "pod2"], 20, 1.0, 100.0);
    lab.stop_gateway();
}

#[test]
fn undefined_port_is_not_forwarded() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut lab = Lab::build(Topology::two_arm("badport").pods(2));
    lab.tcp_echo(TARGET_PORT);
    lab.tcp_echo(9999);
    let vip = lab.info().vip(10);
    let docs = lab.selector_service("echo", vip, &[HTTP], &[0, 1]);
    lab.control_file(&docs);
    lab.start_gateway();

    // 40 connections: with 10, both going to one of two Pods at random
    // happened once in 256 runs (CI, session 10).
    let served = lab.tcp_sessions(vip_port(vip, &HTTP), 40, 2);
    assert_share(&served, &["pod1", "pod2"], 40, 1.0, 100.0);
    // The Pods do listen on 9999 (and on 5678), but the Service defines
    // neither as a port.
    for port in [9999, TARGET_PORT] {
        lab.assert_not_forwarded(SocketAddrV4::new(vip, port));
    }
    assert_eq!(
        lab.accepted(9999),
        0,
        "a connection to VIP:9999 reached a Pod"
    );
    // 40 connections: with 10, both going to one of two Pods at random
    // happened once in 256 runs (CI, session 10).
    let served = lab.tcp_sessions(vip_port(vip, &HTTP), 40, 2);
    assert_share(&served, &["pod1", "pod2"], 40, 1.0, 100.0);
    lab.stop_gateway();
}

#[test]
fn gateway_kernel_still_reachable() {
    use std::io::{BufRead, BufReader, ErrorKind, Write};
    use std::net::{TcpListener, TcpStream};

    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    const GATEWAY_PORT: u16 = 2222;
    let mut lab = Lab::build(Topology::two_arm("gwkernel").pods(2));
    lab.tcp_echo(TARGET_PORT);
    let vip = lab.info().vip(10);
    let docs = lab.selector_service("echo", vip, &[HTTP], &[0, 1]);
    lab.control_file(&docs);
    lab.start_gateway();

    // A listener of the gateway's own kernel on its client-side address;
    // it answers one line per connection.
    let gw_addr = SocketAddrV4::new(lab.info().gateway.client_side.addr, GATEWAY_PORT);
    let listener = lab
        .topology()
        .gateway()
        .run(move || TcpListener::bind(gw_addr))
        .unwrap_or_else(|e| panic!("entering the gateway namespace: {e}"))
        .unwrap_or_else(|e| panic!("binding {gw_addr} in the gateway namespace: {e}"));
    let server = std::thread::spawn(move || -> std::io::Result<String> {
        // Accepts without blocking until a deadline, so the thread ends
        // even when the client never connects.
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + 2 * support::EXCHANGE_TIMEOUT;
        let (mut stream, peer) = loop {
            match listener.accept() {
                Ok(accepted) => break accepted,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(support::EXCHANGE_TIMEOUT))?;
        let mut line = String::new();
        BufReader::new(stream.try_clone()?).read_line(&mut line)?;
        stream.write_all(format!("gateway kernel got {line}").as_bytes())?;
        Ok(peer.to_string())
    });
    let reply = lab.in_client(move || -> std::io::Result<String> {
        let mut stream = TcpStream::connect_timeout(&gw_addr.into(), support::EXCHANGE_TIMEOUT)?;
        stream.set_read_timeout(Some(support::EXCHANGE_TIMEOUT))?;
        stream.write_all(b"hello\n")?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        Ok(line)
    });
    let reply = reply.unwrap_or_else(|e| lab.fail(format_args!("TCP to {gw_addr}: {e}")));
    assert_eq!(reply, "gateway kernel got hello\n");
    let peer = server
        .join()
        .expect("listener thread panicked")
        .unwrap_or_else(|e| lab.fail(format_args!("the gateway listener: {e}")));
    assert!(
        peer.starts_with(&format!("{}:", lab.info().client.iface.addr)),
        "the gateway kernel saw the connection from {peer}, not from the client"
    );

    let gw_client_side = lab.info().gateway.client_side.addr;
    let rtt = lab
        .in_client(move || lab::ping(gw_client_side, support::EXCHANGE_TIMEOUT))
        .unwrap_or_else(|e| lab.fail(format_args!("ping {gw_client_side} from the client: {e}")));
    eprintln!("ping {gw_client_side} from the client: {rtt:?}");
    // A backend Pod pinging the gateway's Pod-side address: its source is
    // a backend address, but not a backend port, so the kernel answers.
    let gw_pod_side = lab.info().gateway.pod_side.addr;
    lab.topology().pods()[0]
        .try_run(move || lab::ping(gw_pod_side, support::EXCHANGE_TIMEOUT))
        .unwrap_or_else(|e| lab.fail(format_args!("ping {gw_pod_side} from pod1: {e}")));
    // And the Service still works, over both Pods: 40 connections, so
    // that a random choice leaves one Pod out once in 2^39 runs (with 10
    // it did once in 512, and a run saw it).
    const CONNECTIONS: usize = 40;
    let served = lab.tcp_sessions(vip_port(vip, &HTTP), CONNECTIONS, 2);
    assert_share(&served, &["pod1", "pod2"], CONNECTIONS, 1.0, 100.0);
    lab.stop_gateway();
}

#[test]
fn one_arm_tcp_and_udp() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    const CONNECTIONS: usize = 60;
    const REQUESTS: usize = 60;
    let mut lab = Lab::build(Topology::one_arm("onearm").pods(3));
    lab.tcp_echo(TARGET_PORT);
    lab.udp_echo(support::UDP_TARGET_PORT);
    let vip = lab.info().vip(10);
    let docs = lab.selector_service("echo", vip, &[HTTP, support::DNS], &[0, 1, 2]);
    lab.control_file(&docs);
    lab.start_gateway();

    let pods = ["pod1", "pod2", "pod3"];
    let served = lab.tcp_sessions(vip_port(vip, &HTTP), CONNECTIONS, 3);
    assert_share(&served, &pods, CONNECTIONS, 1.0, 100.0);
    assert_eq!(lab.accepted(TARGET_PORT), CONNECTIONS as u64);
    let served = lab.udp_exchanges(vip_port(vip, &support::DNS), REQUESTS);
    assert_share(&served, &pods, REQUESTS, 1.0, 100.0);
    lab.stop_gateway();
}

#[test]
fn restart_after_crash_replaces_stale_program() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut lab = Lab::build(Topology::two_arm("restart").pods(2));
    lab.tcp_echo(TARGET_PORT);
    let vip = lab.info().vip(10);
    let docs = lab.selector_service("echo", vip, &[HTTP], &[0, 1]);
    lab.control_file(&docs);
    let target = vip_port(vip, &HTTP);
    let pods = ["pod1", "pod2"];

    lab.start_gateway();
    let served = lab.tcp_sessions(target, 10, 2);
    assert_share(&served, &pods, 10, 1.0, 100.0);
    lab.kill_gateway();
    // The crash left the program attached (it is attached over netlink,
    // not through a link the process owned).
    let stale = lab.xdp_ifaces();
    assert_eq!(
        stale.len(),
        lab.info().gateway.ifaces().len(),
        "after SIGKILL the XDP program should still be attached to every gateway interface, \
         found it on {stale:?}"
    );

    lab.start_gateway();
    let served = lab.tcp_sessions(target, 20, 2);
    assert_share(&served, &pods, 20, 1.0, 100.0);
    lab.stop_gateway();
}

/// The service CIDR the testdata/ files are written for.
const TEST_SERVICE_CIDR: &str = "198.18.100.0/24";

#[test]
fn check_command() {
    // No namespaces and no root: `cipgw check` only reads files.
    let demo = support::testdata().join("demo.yaml");
    let out = support::check(&demo, TEST_SERVICE_CIDR);
    assert!(out.status.success(), "cipgw check on demo.yaml: {out:?}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("198.18.100.10:8080/tcp"))
        .unwrap_or_else(|| panic!("no line for 198.18.100.10:8080/tcp in:\n{}", out.stdout));
    assert!(line.contains("default/echo-server"), "{line:?}");
    let endpoints = line
        .split_once("-> ")
        .map(|(_, rest)| rest.split(", ").collect::<Vec<_>>())
        .unwrap_or_default();
    assert_eq!(
        endpoints,
        ["198.18.2.11:5678", "198.18.2.12:5678", "198.18.2.13:5678"],
        "{line:?}"
    );

    let mut invalid: Vec<_> = std::fs::read_dir(support::testdata())
        .expect("reading testdata/")
        .map(|entry| entry.expect("reading testdata/").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("invalid-") && n.ends_with(".yaml"))
        })
        .collect();
    invalid.sort();
    assert!(!invalid.is_empty(), "no testdata/invalid-*.yaml files");
    for file in &invalid {
        let out = support::check(file, TEST_SERVICE_CIDR);
        assert_eq!(
            out.status.code(),
            Some(64),
            "cipgw check on {}: expected exit status 64: {out:?}",
            file.display()
        );
        // Each file's header says which document is at fault, e.g.
        // `# Expected: document 2 (EndpointSlice default/echo-abc12): ...`.
        let text = std::fs::read_to_string(file).expect("reading an invalid-*.yaml");
        let expected = text
            .lines()
            .find_map(|l| l.strip_prefix("# Expected: "))
            .unwrap_or_else(|| panic!("{} has no `# Expected:` line", file.display()));
        let head = expected.split(':').next().unwrap_or_default();
        let document: String = head
            .split([',', '('])
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        assert!(
            document.starts_with("document "),
            "{}: {expected:?}",
            file.display()
        );
        assert!(
            out.stderr.contains(&document),
            "cipgw check on {}: the message does not name {document:?}: {:?}",
            file.display(),
            out.stderr
        );
        if let Some((_, object)) = head.split_once('(') {
            let object = object.trim_end_matches(')');
            assert!(
                out.stderr.contains(object),
                "cipgw check on {}: the message does not name {object:?}: {:?}",
                file.display(),
                out.stderr
            );
        }
    }
}

/// `--umem-huge-pages on`: with enough huge pages free the worker's UMEM
/// takes them and forwards as before; without, it is not on reserved pages,
/// says why, and forwards the same.
#[test]
fn umem_on_huge_pages_carries_traffic_and_falls_back_without_them() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    // A two-arm worker's UMEM: 8,192 frames of 2 KiB (both ports' rings
    // full and as many again on their way out), in copy mode (veth) a
    // cache line more apart (xsk::COPY_MODE_FRAME_SPREAD): 16.5 MiB, 9
    // huge pages.
    const UMEM_PAGES: u64 = 9;
    const CONNECTIONS: usize = 60;
    let mut lab = Lab::build(Topology::two_arm("hugeumem").pods(3));
    lab.tcp_echo(TARGET_PORT);
    let vip = lab.info().vip(10);
    let docs = lab.selector_service("echo", vip, &[HTTP], &[0, 1, 2]);
    lab.control_file(&docs);

    let pool = ReservedHugePages::reserve(UMEM_PAGES);
    lab.start_gateway_with(&["--umem-huge-pages", "on"]);
    lab.assert_log_contains("the worker's UMEM is on huge pages");
    let served = lab.tcp_sessions(vip_port(vip, &HTTP), CONNECTIONS, 2);
    assert_eq!(
        served.values().sum::<usize>(),
        CONNECTIONS,
        "every connection through a UMEM on huge pages was served: {served:?}"
    );
    lab.stop_gateway();
    drop(pool);

    let free = free_hugepages();
    lab.start_gateway_with(&["--umem-huge-pages", "on"]);
    if free < UMEM_PAGES {
        lab.assert_log_contains("too few huge pages are free");
    } else {
        // Someone else on this machine keeps huge pages free.
        lab.assert_log_contains("the worker's UMEM is on huge pages");
    }
    let served = lab.tcp_sessions(vip_port(vip, &HTTP), CONNECTIONS, 2);
    assert_eq!(
        served.values().sum::<usize>(),
        CONNECTIONS,
        "every connection was served with {free} huge pages free: {served:?}"
    );
    lab.stop_gateway();
}

/// A hand-over with `--umem-huge-pages on`: the new gateway maps its UMEM
/// while the old one still holds its own (make-before-break), so both
/// stay on reserved pages when the pool holds two UMEMs' worth (README).
/// The new gateway's report is of the UMEM its sockets are bound to.
#[test]
fn a_hand_over_keeps_the_umem_on_huge_pages_given_pages_for_both() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    // As above: a two-arm worker's copy-mode UMEM takes 9 huge pages.
    const UMEM_PAGES: u64 = 9;
    const CONNECTIONS: usize = 30;
    let mut lab = Lab::build(Topology::two_arm("hoverumem").pods(3));
    lab.tcp_echo(TARGET_PORT);
    let vip = lab.info().vip(10);
    let docs = lab.selector_service("echo", vip, &[HTTP], &[0, 1, 2]);
    lab.control_file(&docs);

    let pool = ReservedHugePages::reserve(2 * UMEM_PAGES);
    lab.start_gateway_with(&["--umem-huge-pages", "on"]);
    lab.assert_log_contains("the worker's UMEM is on huge pages");
    lab.replace_gateway();
    lab.assert_log_contains("the running gateway let go of the data path");
    lab.assert_log_contains("the worker's UMEM is on huge pages");
    let served = lab.tcp_sessions(vip_port(vip, &HTTP), CONNECTIONS, 2);
    assert_eq!(
        served.values().sum::<usize>(),
        CONNECTIONS,
        "every connection through the new gateway's UMEM was served: {served:?}"
    );
    lab.stop_gateway();
    drop(pool);
}

/// Without `--umem-huge-pages`, the worker's UMEM is private memory
/// advised for transparent huge pages before it is populated
/// (vendor/xsk-rs/CIPGW-PATCH.md). The gateway reads back from its smaps
/// what the kernel made of the advice and says so: on them, or eligible
/// but given none, or not allowed them where THP is off. It forwards the
/// same in every case.
#[test]
fn umem_is_advised_for_transparent_huge_pages_without_reserved_ones() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    const CONNECTIONS: usize = 60;
    let mut lab = Lab::build(Topology::two_arm("thpumem").pods(3));
    lab.tcp_echo(TARGET_PORT);
    let vip = lab.info().vip(10);
    let docs = lab.selector_service("echo", vip, &[HTTP], &[0, 1, 2]);
    lab.control_file(&docs);
    lab.start_gateway();

    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if thp.is_empty() || thp.contains("[never]") {
        lab.assert_log_contains("the kernel allows it no transparent huge pages");
    } else {
        let reports = lab.log_count("the worker's UMEM is");
        let on_them = lab.log_count("the worker's UMEM is on transparent huge pages");
        let given_none = lab.log_count("advised for transparent huge pages, but the kernel");
        assert!(
            reports >= 1 && on_them + given_none == reports,
            "with THP {:?} every worker's UMEM is eligible for transparent huge \
             pages, on them or not: {:?}",
            thp.trim(),
            lab.gateway_log()
        );
    }
    let served = lab.tcp_sessions(vip_port(vip, &HTTP), CONNECTIONS, 2);
    assert_eq!(
        served.values().sum::<usize>(),
        CONNECTIONS,
        "every connection through the advised UMEM was served: {served:?}"
    );
    lab.stop_gateway();
}

/// Page faults (minor and major) thread `name` of process `pid` has taken.
fn thread_faults(pid: u32, name: &str) -> u64 {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("listing the threads of {pid}: {e}"));
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat"))
            .unwrap_or_else(|e| panic!("reading {}: {e}", task.path().display()));
        // Fields after the parenthesised name: state is field 3, minflt
        // field 10, majflt field 12 (proc(5)).
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| -> u64 {
            fields
                .get(n - 3)
                .and_then(|f| f.parse().ok())
                .unwrap_or_else(|| panic!("field {n} of {stat:?}"))
        };
        return field(10) + field(12);
    }
    panic!("no thread {name:?} in process {pid}");
}

/// The worker takes no page fault for new flows: the gateway took its
/// connection table's memory at start. A table of a million flows (a
/// 48 MiB index, hit at random) would otherwise take a fault for nearly
/// every early flow, each up to tens of milliseconds on a huge page. Nor
/// for the first packets its flow cache serves (the caches, one per
/// family on a 2 MiB huge page each, are taken and written when the
/// worker starts, before its first packet).
#[test]
fn new_flows_take_no_page_fault_on_the_worker() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    const WARM_UP: usize = 20;
    const FLOWS: usize = 300;
    let mut lab = Lab::build(Topology::two_arm("nofault").pods(3));
    lab.udp_echo(support::UDP_TARGET_PORT);
    let vip = lab.info().vip(53);
    let docs = lab.selector_service("dns", vip, &[support::DNS], &[0, 1, 2]);
    lab.control_file(&docs);
    lab.start_gateway_with(&["--conntrack-max", "1048576"]);
    lab.assert_log_contains("connection tables' index and eviction queues taken");
    lab.assert_log_contains("connection tables' records taken");
    let target = vip_port(vip, &support::DNS);
    // The first flows resolve the Pods' neighbours and warm the worker's
    // stack and rings.
    lab.udp_exchanges(target, WARM_UP);
    let worker = "cipgw-worker-1";
    let before = thread_faults(lab.gateway_pid(), worker);
    let served = lab.udp_exchanges(target, FLOWS);
    // Then the first packets the worker's flow cache serves: datagrams
    // of one replied flow (the cache takes the flow at its second).
    let info = lab.info().clone();
    let steady = lab.in_client(move || {
        let socket = std::net::UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
        socket.connect(target)?;
        socket.set_read_timeout(Some(support::EXCHANGE_TIMEOUT))?;
        (0..4)
            .map(|_| support::udp_pod(&info, &socket))
            .collect::<std::io::Result<Vec<String>>>()
    });
    let faults = thread_faults(lab.gateway_pid(), worker) - before;
    assert_eq!(served.values().sum::<usize>(), FLOWS, "{served:?}");
    let steady = steady.unwrap_or_else(|e| panic!("one UDP flow, four datagrams: {e}"));
    assert!(
        steady.iter().all(|pod| *pod == steady[0]),
        "one flow, one Pod: {steady:?}"
    );
    assert_eq!(
        faults, 0,
        "the worker took {faults} page faults over {FLOWS} new flows and a cached one"
    );
    lab.stop_gateway();
}

/// The counter of seconds a worker's flow cache was bypassed.
const BYPASSES: &str = "cipgw_flow_cache_bypasses_total";

/// A flood of new UDP flows (each datagram from a port of its own), whose
/// packets the worker's flow cache never holds, makes the worker bypass
/// the cache for the rest of the second once it has counted enough of
/// them; flows before and after it are served as before. Ordinary
/// traffic does not.
#[test]
fn a_flood_of_new_flows_bypasses_the_flow_cache() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut lab = Lab::build(Topology::two_arm("bypass").pods(3));
    lab.udp_echo(support::UDP_TARGET_PORT);
    let vip = lab.info().vip(53);
    let docs = lab.selector_service("dns", vip, &[support::DNS], &[0, 1, 2]);
    lab.control_file(&docs);
    lab.start_gateway();
    let target = vip_port(vip, &support::DNS);
    let served = lab.udp_exchanges(target, 20);
    assert_eq!(served.values().sum::<usize>(), 20, "{served:?}");
    assert_eq!(lab.counter(BYPASSES), 0, "20 exchanges bypass nothing");

    // Rounds of 20,000 new flows (more than a worker counts before it
    // judges its cache), until a second held enough of them.
    const FLOOD_PORTS: std::ops::Range<u16> = 30000..50000;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rounds = 0;
    while lab.counter(BYPASSES) == 0 {
        if Instant::now() > deadline {
            lab.fail(format_args!(
                "{BYPASSES} still 0 after {rounds} rounds of {} new flows",
                FLOOD_PORTS.len()
            ));
        }
        let sent = lab.in_client(move || {
            FLOOD_PORTS
                .filter(|&port| {
                    // A port some socket holds is left out.
                    std::net::UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
                        .and_then(|socket| socket.send_to(b"flood", target))
                        .is_ok()
                })
                .count()
        });
        assert!(
            sent > FLOOD_PORTS.len() * 9 / 10,
            "round {rounds}: {sent} of {} datagrams sent",
            FLOOD_PORTS.len()
        );
        rounds += 1;
    }
    // The flood's last datagrams, their replies and the client's
    // port-unreachable errors may still fill the worker's RX rings; a
    // request sent into full rings would be dropped (1 run in 8 before
    // this wait), which is overload, not what this test is about.
    lab.wait_until_drained();
    let served = lab.udp_exchanges(target, 20);
    assert_eq!(
        served.values().sum::<usize>(),
        20,
        "flows after the flood are served: {served:?}"
    );
    lab.stop_gateway();
}
