//! End-to-end tests of the gateway's answers and bounds, in network
//! namespaces with the real binary: Kubernetes' reject semantics (a
//! connection nobody can serve is refused at once, not left to time out),
//! `ping <ClusterIP>`, `--cluster-cidr`, a bounded connection table under a
//! burst, and ClientIP session affinity.
//!
//! Cases:
//! - no endpoints and undefined ports: TCP connect fails with ECONNREFUSED
//!   at once, UDP sees the ICMP port unreachable (ECONNREFUSED on a
//!   connected socket); ping to a VIP with endpoints answers, to one
//!   without does not;
//! - a client outside `--cluster-cidr` gets nothing, not even a refusal;
//! - with `--conntrack-max` small, a burst beyond it is refused with RST,
//!   every established connection keeps working, and after the burst the
//!   table drains so new connections succeed again;
//! - with `--conntrack-max 2048` and the default 120 s TIME_WAIT, 6,000
//!   short connections fill the table with finished flows; they make way
//!   (Linux's early drop), so held connections live on and new ones
//!   succeed right after the burst;
//! - affinity: 50 connections from one client land on one Pod; when that
//!   Pod is removed the client moves (and sticks to its new Pod); after
//!   the (short) timeout passes, clients are rebalanced.
//!
//! Rules as in tests/netns.rs: one test at a time, root (skip with a reason
//! otherwise, never when CI=true), RAII cleanup, 198.18.0.0/15 only.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use cipgw::lab::{self, Topology};

#[path = "support/mod.rs"]
mod support;

use support::{pod_name, service, Lab, Port, DNS, HTTP, TARGET_PORT, UDP_TARGET_PORT};

/// A refusal must arrive well before any retransmission timer (1 s).
const REFUSED_WITHIN: Duration = Duration::from_millis(500);

fn vip_port(vip: Ipv4Addr, port: &Port) -> SocketAddrV4 {
    SocketAddrV4::new(vip, port.port)
}

/// A lab with echo servers (TCP and UDP) on three Pods and a control file
/// of `documents` built by `docs` from the lab.
fn lab_with(docs: impl FnOnce(&Lab) -> Vec<String>) -> Lab {
    let mut lab = Lab::build(Topology::two_arm("reject").pods(3));
    lab.tcp_echo(TARGET_PORT);
    lab.udp_echo(UDP_TARGET_PORT);
    let documents = docs(&lab);
    lab.control_file(&documents);
    lab
}

/// TCP connect from the client: `Ok(elapsed)` when refused, else a
/// description of what happened instead.
fn expect_refused(lab: &Lab, target: SocketAddrV4) -> Duration {
    let outcome = lab.in_client(move || {
        let started = Instant::now();
        let r = TcpStream::connect_timeout(&SocketAddr::V4(target), Duration::from_secs(2));
        (r.map(|s| s.local_addr().ok()), started.elapsed())
    });
    match outcome {
        (Err(e), took) if e.kind() == ErrorKind::ConnectionRefused => {
            assert!(
                took < REFUSED_WITHIN,
                "refusal from {target} took {took:?}, not at once"
            );
            took
        }
        (other, took) => lab.fail(format_args!(
            "TCP to {target}: {other:?} after {took:?}; expected ECONNREFUSED at once"
        )),
    }
}

/// UDP request on a connected socket: the ICMP port unreachable shows up
/// as ECONNREFUSED on the receive.
fn expect_udp_refused(lab: &Lab, target: SocketAddrV4) {
    let outcome = lab.in_client(move || {
        let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
        socket.connect(target)?;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        let started = Instant::now();
        socket.send(b"anyone?\n")?;
        let mut buf = [0u8; 512];
        socket.recv(&mut buf).map(|n| (n, started.elapsed()))
    });
    match outcome {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        other => lab.fail(format_args!(
            "UDP to {target}: {other:?}; expected ICMP port unreachable (ECONNREFUSED)"
        )),
    }
}

#[test]
fn unservable_connections_are_refused_and_vips_answer_ping() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut lab = lab_with(|lab| {
        let vip = lab.info().vip(10);
        let empty = lab.info().vip(30);
        let mut docs = lab.selector_service("echo", vip, &[HTTP, DNS], &[0, 1, 2]);
        // Selects nothing: a Service without endpoints.
        docs.push(service(
            "empty",
            &empty.to_string(),
            Some("nobody"),
            &[HTTP, DNS],
        ));
        docs
    });
    lab.start_gateway();
    let vip = lab.info().vip(10);
    let empty = lab.info().vip(30);

    let took = expect_refused(&lab, vip_port(empty, &HTTP));
    eprintln!("no endpoints: refused in {took:?}");
    let took = expect_refused(&lab, SocketAddrV4::new(vip, 9999));
    eprintln!("undefined port: refused in {took:?}");
    expect_udp_refused(&lab, vip_port(empty, &DNS));
    expect_udp_refused(&lab, SocketAddrV4::new(vip, 54));

    let rtt = lab
        .in_client(move || lab::ping(vip, Duration::from_secs(2)))
        .unwrap_or_else(|e| lab.fail(format_args!("ping {vip}: {e}")));
    eprintln!("ping {vip}: {rtt:?}");
    if let Ok(rtt) = lab.in_client(move || lab::ping(empty, Duration::from_millis(500))) {
        lab.fail(format_args!(
            "ping to {empty} (no endpoints) was answered in {rtt:?}"
        ));
    }
    // The Service with endpoints works all along.
    let served = lab.tcp_sessions(vip_port(vip, &HTTP), 10, 1);
    assert_eq!(served.values().sum::<usize>(), 10);
    lab.stop_gateway();
}

#[test]
fn clients_outside_the_cluster_cidr_get_nothing() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut lab =
        lab_with(|lab| lab.selector_service("echo", lab.info().vip(10), &[HTTP], &[0, 1, 2]));
    let vip = lab.info().vip(10);
    // Only the Pod subnet is "the cluster"; the client is outside it.
    let pods = lab.info().pod_subnet.to_string();
    lab.start_gateway_with(&["--cluster-cidr", &pods]);
    for target in [vip_port(vip, &HTTP), SocketAddrV4::new(vip, 9999)] {
        let outcome = lab.in_client(move || {
            let started = Instant::now();
            let r = TcpStream::connect_timeout(&SocketAddr::V4(target), Duration::from_secs(1));
            (r.map(|_| ()), started.elapsed())
        });
        match outcome {
            (Err(e), _) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {}
            other => lab.fail(format_args!(
                "TCP to {target} from outside the cluster: {other:?}; expected silence"
            )),
        }
    }
    if let Ok(rtt) = lab.in_client(move || lab::ping(vip, Duration::from_millis(500))) {
        lab.fail(format_args!(
            "ping from outside the cluster answered in {rtt:?}"
        ));
    }
    lab.stop_gateway();

    // The same client inside the cluster's ranges is served.
    let client = lab.info().client_subnet.to_string();
    lab.start_gateway_with(&["--cluster-cidr", &pods, "--cluster-cidr", &client]);
    let served = lab.tcp_sessions(vip_port(vip, &HTTP), 10, 1);
    assert_eq!(served.values().sum::<usize>(), 10);
    lab.stop_gateway();
}

/// A new connection to `target` and the reply to its first request.
fn connect_and_ask(target: SocketAddrV4) -> std::io::Result<(TcpStream, String)> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(target), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let reply = request(&mut s)?;
    Ok((s, reply))
}

/// One request line over an open connection; the Pod that answered.
fn request(stream: &mut TcpStream) -> std::io::Result<String> {
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

#[test]
fn a_burst_beyond_conntrack_max_is_refused_and_established_connections_live_on() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    const MAX: usize = 20;
    const HELD: usize = 15;
    const BURST: usize = 30;
    let mut lab =
        lab_with(|lab| lab.selector_service("echo", lab.info().vip(10), &[HTTP], &[0, 1, 2]));
    lab.start_gateway_with(&[
        "--conntrack-max",
        &MAX.to_string(),
        "--conntrack-tcp-timeout-time-wait",
        "2s",
        "--conntrack-tcp-timeout-fin-wait",
        "2s",
        "--conntrack-tcp-timeout-close",
        "2s",
    ]);
    let target = vip_port(lab.info().vip(10), &HTTP);
    let outcome = lab.in_client(move || {
        let connect = || connect_and_ask(target);
        let mut held = Vec::new();
        for i in 0..HELD {
            held.push(connect().map_err(|e| format!("held connection {i}: {e}"))?);
        }
        let (mut admitted, mut refused) = (Vec::new(), 0);
        for i in 0..BURST {
            match connect() {
                Ok(c) => admitted.push(c),
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => refused += 1,
                Err(e) => return Err(format!("burst connection {i}: {e}, not a refusal")),
            }
        }
        // Every connection that got in still works, on its own Pod.
        for (i, (stream, first)) in held.iter_mut().chain(admitted.iter_mut()).enumerate() {
            let again = request(stream).map_err(|e| format!("established connection {i}: {e}"))?;
            if again != *first {
                return Err(format!("connection {i} moved: {first:?} then {again:?}"));
            }
        }
        let burst_admitted = admitted.len();
        // The burst ends; its connections close and their flows drain.
        drop(admitted);
        std::thread::sleep(Duration::from_secs(4));
        let mut after = 0;
        for _ in 0..(MAX - HELD) {
            if connect().is_ok() {
                after += 1;
            }
        }
        for (i, (stream, _)) in held.iter_mut().enumerate() {
            request(stream).map_err(|e| format!("held connection {i} after the burst: {e}"))?;
        }
        Ok((burst_admitted, refused, after, held.len()))
    });
    let (admitted, refused, after, held) =
        outcome.unwrap_or_else(|e| lab.fail(format_args!("conntrack burst: {e}")));
    eprintln!(
        "burst of {BURST} over {held} held connections with max {MAX}: \
         {admitted} admitted, {refused} refused; {after} admitted after draining"
    );
    assert_eq!(admitted + refused, BURST);
    // One flow per worker may overshoot the limit.
    assert!(
        (MAX - HELD..=MAX - HELD + 1).contains(&admitted),
        "admitted {admitted} of the burst with {HELD} held and max {MAX}"
    );
    assert_eq!(
        after,
        MAX - HELD,
        "the table drained back to the live flows"
    );
    lab.stop_gateway();
}

#[test]
fn a_table_full_of_finished_connections_still_admits_new_ones() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    const MAX: usize = 2048;
    const HELD: usize = 20;
    const BURST: usize = 6_000;
    const AFTER: usize = 20;
    let mut lab =
        lab_with(|lab| lab.selector_service("echo", lab.info().vip(10), &[HTTP], &[0, 1, 2]));
    lab.start_gateway_with(&["--conntrack-max", &MAX.to_string()]);
    let target = vip_port(lab.info().vip(10), &HTTP);
    let outcome = lab.in_client(move || {
        let connect = || connect_and_ask(target);
        let mut held = Vec::new();
        for i in 0..HELD {
            held.push(connect().map_err(|e| format!("held connection {i}: {e}"))?);
        }
        // Open, ask, close: each leaves a flow in TIME_WAIT for 120 s.
        let started = Instant::now();
        let mut failed = 0;
        for _ in 0..BURST {
            if lab::tcp_request(target, b"hi\n", Duration::from_secs(2)).is_err() {
                failed += 1;
            }
        }
        let burst_took = started.elapsed();
        let mut after = 0;
        for _ in 0..AFTER {
            if connect().is_ok() {
                after += 1;
            }
        }
        for (i, (stream, first)) in held.iter_mut().enumerate() {
            let again =
                request(stream).map_err(|e| format!("held connection {i} after the burst: {e}"))?;
            if again != *first {
                return Err(format!(
                    "held connection {i} moved: {first:?} then {again:?}"
                ));
            }
        }
        Ok((failed, burst_took, after))
    });
    let (failed, took, after) =
        outcome.unwrap_or_else(|e| lab.fail(format_args!("TIME_WAIT burst: {e}")));
    eprintln!(
        "{BURST} short connections in {took:?} ({failed} failed) over {HELD} held with max {MAX}; \
         {after} of {AFTER} new connections succeeded after"
    );
    assert!(
        after >= AFTER - 1,
        "only {after} of {AFTER} new connections succeeded after the burst"
    );
    lab.stop_gateway();
}

#[test]
fn client_ip_affinity_sticks_then_rebalances_after_its_timeout() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    const CLIENTS: u8 = 12;
    let sticky = |lab: &Lab, pods: &[usize]| {
        let mut docs = lab.selector_service("sticky", lab.info().vip(40), &[HTTP], pods);
        docs[0] = docs[0].replace(
            "spec:\n",
            "spec:\n  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      \
             timeoutSeconds: 2\n",
        );
        docs
    };
    let mut lab = lab_with(|lab| sticky(lab, &[0, 1, 2]));
    // More client addresses, so that rebalancing shows across clients.
    let client = lab.info().client.clone();
    for i in 0..CLIENTS {
        let addr = format!("198.18.0.{}/24", 100 + i);
        lab.topology()
            .client()
            .ip(&["addr", "add", &addr, "dev", &client.iface.name])
            .unwrap_or_else(|e| panic!("adding {addr}: {e}"));
    }
    lab.start_gateway_with(&["--min-sync-period", "100ms"]);
    let target = vip_port(lab.info().vip(40), &HTTP);
    let info = lab.info().clone();

    // `n` connections from each client address; the Pods that answered.
    let round = |lab: &Lab, n: usize| -> Vec<Vec<String>> {
        let replies = lab.in_client(move || {
            let mut all = Vec::new();
            for c in 0..CLIENTS {
                let source = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100 + c), 0);
                let mut replies = Vec::new();
                for _ in 0..n {
                    let socket =
                        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                    socket.bind(&source.into())?;
                    socket
                        .connect_timeout(&SocketAddr::V4(target).into(), Duration::from_secs(2))?;
                    let mut stream: TcpStream = socket.into();
                    stream.set_read_timeout(Some(Duration::from_secs(3)))?;
                    replies.push(request(&mut stream)?);
                }
                all.push(replies);
            }
            Ok::<_, std::io::Error>(all)
        });
        let replies = replies.unwrap_or_else(|e| lab.fail(format_args!("affinity round: {e}")));
        replies
            .iter()
            .map(|rs| {
                rs.iter()
                    .map(|r| {
                        pod_name(&info, r)
                            .unwrap_or_else(|e| lab.fail(e))
                            .to_owned()
                    })
                    .collect()
            })
            .collect()
    };

    let first = round(&lab, 50usize.div_ceil(usize::from(CLIENTS)).max(5));
    for (c, pods) in first.iter().enumerate() {
        assert!(
            pods.iter().all(|p| *p == pods[0]),
            "client {c}: connections spread over {pods:?} despite ClientIP affinity"
        );
    }
    // 50 connections from a single client, all on one Pod.
    let single = lab.in_client(move || {
        (0..50)
            .map(|_| lab::tcp_request(target, b"who?\n", Duration::from_secs(3)))
            .collect::<Result<Vec<_>, _>>()
    });
    let single = single.unwrap_or_else(|e| lab.fail(format_args!("50 connections: {e}")));
    let pods: std::collections::BTreeSet<&str> = single
        .iter()
        .map(|r| pod_name(&info, r).unwrap_or_else(|e| lab.fail(e)))
        .collect();
    assert_eq!(pods.len(), 1, "50 connections from one client: {pods:?}");
    let pinned = pods
        .into_iter()
        .next()
        .map(str::to_owned)
        .unwrap_or_default();

    // Its Pod goes away (well within the timeout): the client moves to
    // another Pod at once and sticks to that one (kubernetes #71809).
    let gone = info
        .pods
        .iter()
        .position(|p| p.name == pinned)
        .unwrap_or_else(|| lab.fail(format_args!("{pinned} is no lab Pod")));
    let rest: Vec<usize> = (0..3).filter(|&i| i != gone).collect();
    let file = lab.control_file(&sticky(&lab, &rest));
    eprintln!("removed {pinned} from the Service in {}", file.display());
    std::thread::sleep(Duration::from_millis(400));
    let after = lab.in_client(move || {
        (0..20)
            .map(|_| lab::tcp_request(target, b"who?\n", Duration::from_secs(3)))
            .collect::<Result<Vec<_>, _>>()
    });
    let after = after.unwrap_or_else(|e| lab.fail(format_args!("after the removal: {e}")));
    let moved_to: std::collections::BTreeSet<&str> = after
        .iter()
        .map(|r| pod_name(&info, r).unwrap_or_else(|e| lab.fail(e)))
        .collect();
    assert_eq!(moved_to.len(), 1, "after {pinned} left: {moved_to:?}");
    assert!(
        !moved_to.contains(pinned.as_str()),
        "still pinned to the removed {pinned}"
    );
    // All three Pods again, for the timeout check below (the other
    // clients' bindings date from the first round).
    lab.control_file(&sticky(&lab, &[0, 1, 2]));
    std::thread::sleep(Duration::from_millis(400));

    // Silent past the 2 s timeout: every client picks afresh. With 12
    // clients and 3 Pods, the chance that none moves is (1/3)^12.
    std::thread::sleep(Duration::from_secs(4));
    let second = round(&lab, 3);
    let moved = first
        .iter()
        .zip(&second)
        .filter(|(a, b)| a[0] != b[0])
        .count();
    eprintln!("after the affinity timeout, {moved} of {CLIENTS} clients moved");
    assert!(moved > 0, "no client was rebalanced after the timeout");
    for (c, pods) in second.iter().enumerate() {
        assert!(
            pods.iter().all(|p| *p == pods[0]),
            "client {c} again: {pods:?}"
        );
    }
    lab.stop_gateway();
}
