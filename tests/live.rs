//! End-to-end tests of a live control file under a running gateway, in
//! network namespaces with the real binary: the file is rewritten (in
//! place, truncate-and-write, atomic rename) while traffic flows.
//!
//! Cases:
//! - service B changes 200 times while TCP connections and UDP datagrams
//!   to service A run continuously: not one fails or goes unanswered;
//! - a Service scales from 3 Pods to 1 and back: new connections follow
//!   within 1 s, a UDP flow to a removed Pod recovers on its next
//!   datagram, a TCP connection to a removed Pod gets a RST;
//! - 50 rounds of 3 Pods -> 1 -> 3: in every round, the moment the new
//!   table is in force (a probe Service that only it has answers), the
//!   UDP flows that were on removed Pods answer from the remaining Pod
//!   and the TCP connections to removed Pods are reset, whatever the
//!   control thread's retirement pass is doing;
//! - an invalid file written over a good one changes nothing (traffic
//!   goes on, the error is logged with its document and field); a fixed
//!   file then takes effect.
//!
//! Rules as in tests/netns.rs: one test at a time, root (skip with a reason
//! otherwise, never when CI=true), RAII cleanup, 198.18.0.0/15 only.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cipgw::lab::{self, Topology, TopologyInfo};

#[path = "support/mod.rs"]
mod support;

use support::{
    connect_pod, connections_all_reach, connections_spread, endpoint_slice, open_flows, pod_name,
    request, service, udp_pod, vip_port, Flows, Lab, Port, DNS, HTTP, TABLE_APPLIED, TARGET_PORT,
    UDP_TARGET_PORT,
};

/// How a new version of the control file is put in place.
#[derive(Debug, Clone, Copy)]
enum Rewrite {
    /// Truncate and write the same file (what most editors' "save" does).
    Truncate,
    /// Write a temporary file and rename it over (what Kubernetes
    /// ConfigMap volumes and careful tools do).
    Rename,
}

fn write_version(path: &Path, text: &str, how: Rewrite) {
    match how {
        Rewrite::Truncate => std::fs::write(path, text),
        Rewrite::Rename => {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path))
        }
    }
    .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// One datagram on each UDP flow (named by the Pod it was on) and the
/// Pod that answers it now. The sockets keep the client's namespace.
fn next_answers(
    info: &TopologyInfo,
    udp: &BTreeMap<String, UdpSocket>,
) -> Result<BTreeMap<String, String>, String> {
    let mut answers = BTreeMap::new();
    for (was, u) in udp {
        let now = udp_pod(info, u).map_err(|e| format!("UDP flow of {was}: {e}"))?;
        answers.insert(was.clone(), now);
    }
    Ok(answers)
}

/// A lab with TCP and UDP echo servers on `pods` Pods.
fn lab(pods: usize) -> Lab {
    let mut lab = Lab::build(Topology::two_arm("live").pods(pods));
    lab.tcp_echo(TARGET_PORT);
    lab.udp_echo(UDP_TARGET_PORT);
    lab
}

#[test]
fn churn_on_service_b_never_disturbs_service_a() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    const CHANGES: usize = 200;
    let mut lab = lab(3);
    let vip_a = lab.info().vip(10);
    let vip_b = lab.info().vip(20);
    // Pods 1 and 2 belong to A; B's version `i` moves over ports and Pods.
    let version = |lab: &Lab, i: usize| -> Vec<String> {
        let mut docs = lab.selector_service("alpha", vip_a, &[HTTP, DNS], &[0, 1]);
        let b_port = Port {
            name: "web",
            port: 9000 + (i % 50) as u16,
            target: TARGET_PORT,
            protocol: "TCP",
        };
        let b_pods: &[usize] = if i % 2 == 0 { &[2] } else { &[1, 2] };
        docs.push(support::service(
            "beta",
            &vip_b.to_string(),
            Some("beta"),
            &[b_port],
        ));
        docs.extend(lab.pods(b_pods, "beta"));
        docs
    };
    let first = version(&lab, 0);
    let file = lab.control_file(&first);
    lab.start_gateway_with(&["--min-sync-period", "100ms"]);

    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop = Arc::clone(&stop);
        let info = lab.info().clone();
        lab.topology()
            .client()
            .spawn_thread("traffic-a", move || {
                let (mut tcp_ok, mut udp_ok) = (0usize, 0usize);
                let deadline = Instant::now() + Duration::from_secs(120);
                // Relaxed: a stop flag; nothing else is published through it.
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let pod = connect_pod(&info, vip_port(vip_a, &HTTP))?;
                    if pod != info.pods[0].name && pod != info.pods[1].name {
                        return Err(format!("A answered by {pod}, not one of its Pods"));
                    }
                    tcp_ok += 1;
                    let reply =
                        lab::udp_request(vip_port(vip_a, &DNS), b"query\n", Duration::from_secs(1))
                            .map_err(|e| format!("UDP to A after {udp_ok} answers: {e}"))?;
                    pod_name(&info, &reply)?;
                    udp_ok += 1;
                }
                Ok::<_, String>((tcp_ok, udp_ok))
            })
            .unwrap_or_else(|e| panic!("starting traffic to A: {e}"))
    };
    let started = Instant::now();
    for i in 1..=CHANGES {
        let how = if i % 2 == 0 {
            Rewrite::Truncate
        } else {
            Rewrite::Rename
        };
        write_version(&file, &version(&lab, i).join("---\n"), how);
        std::thread::sleep(Duration::from_millis(25));
    }
    // Let the last version land, with traffic still running.
    std::thread::sleep(Duration::from_millis(1500));
    // Relaxed: see the traffic thread.
    stop.store(true, Ordering::Relaxed);
    let (tcp_ok, udp_ok) = traffic
        .join()
        .unwrap_or_else(|_| lab.fail("traffic thread panicked"))
        .unwrap_or_else(|e| lab.fail(format_args!("traffic to A during churn on B: {e}")));
    eprintln!(
        "{CHANGES} changes of B in {:?}; A served {tcp_ok} TCP connections and {udp_ok} UDP \
         requests without a failure",
        started.elapsed()
    );
    assert!(
        tcp_ok >= 50 && udp_ok >= 50,
        "too little traffic to mean anything"
    );
    // B's final version is live: port 9000 + 200 % 50 on Pod 3.
    let last = vip_port(
        vip_b,
        &Port {
            name: "web",
            port: 9000,
            target: TARGET_PORT,
            protocol: "TCP",
        },
    );
    let info = lab.info().clone();
    let pod = lab
        .in_client(move || connect_pod(&info, last))
        .unwrap_or_else(|e| lab.fail(e));
    assert_eq!(pod, lab.info().pods[2].name);
    lab.stop_gateway();
}

#[test]
fn scaling_to_one_pod_and_back_moves_traffic_within_a_second() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut lab = lab(3);
    let vip = lab.info().vip(10);
    let three = lab.selector_service("echo", vip, &[HTTP, DNS], &[0, 1, 2]);
    let one = lab.selector_service("echo", vip, &[HTTP, DNS], &[0]);
    let file = lab.control_file(&three);
    lab.start_gateway();
    let info = lab.info().clone();
    let pod1 = info.pods[0].name.clone();

    // Open a TCP connection and a UDP flow to each Pod.
    let Flows { mut tcp, udp } = open_flows(&lab, vip, 3);

    // Scale to one Pod: the table is in force within a second, and from
    // then on every new connection goes to pod1.
    let applied = lab.log_count(TABLE_APPLIED);
    let written = Instant::now();
    write_version(&file, &one.join("---\n"), Rewrite::Rename);
    lab.wait_log(TABLE_APPLIED, applied, Duration::from_secs(5));
    let took = written.elapsed();
    eprintln!("scaled to one Pod: table in force within {took:?}");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    let followed = lab.in_client({
        let (info, pod1) = (info.clone(), pod1.clone());
        move || connections_all_reach(&info, vip_port(vip, &HTTP), &pod1, 10)
    });
    followed.unwrap_or_else(|e| lab.fail(e));

    // UDP flows to removed Pods recover on their next datagram.
    let udp_after = next_answers(&info, &udp).unwrap_or_else(|e| lab.fail(e));
    for (was, now) in &udp_after {
        assert_eq!(now, &pod1, "the UDP flow that was on {was} is now on {now}");
    }

    // TCP connections to removed Pods get a RST; the one to pod1 lives on.
    for (pod, stream) in &mut tcp {
        let outcome = request(stream);
        if *pod == pod1 {
            let reply =
                outcome.unwrap_or_else(|e| lab.fail(format_args!("{pod}'s connection: {e}")));
            assert_eq!(pod_name(&info, &reply).ok(), Some(pod1.as_str()));
        } else {
            match outcome {
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
                other => lab.fail(format_args!(
                    "connection to removed {pod}: {other:?}; expected a reset"
                )),
            }
        }
    }

    // Back to three: in force within a second, and new connections
    // spread again.
    let applied = lab.log_count(TABLE_APPLIED);
    let written = Instant::now();
    write_version(&file, &three.join("---\n"), Rewrite::Truncate);
    lab.wait_log(TABLE_APPLIED, applied, Duration::from_secs(5));
    let took = written.elapsed();
    eprintln!("scaled back to three Pods: table in force within {took:?}");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    let spread = lab.in_client({
        let info = info.clone();
        move || connections_spread(&info, vip_port(vip, &HTTP), 3, 100)
    });
    let tries = spread.unwrap_or_else(|e| lab.fail(e));
    eprintln!("all three Pods reached within {tries} connections");
    lab.stop_gateway();
}

/// Waits until a UDP echo answers at `target` (a Service only the newest
/// table has): from then on that table is in force. Bounded.
fn wait_until_answered(lab: &Lab, target: SocketAddrV4, round: usize) {
    let answered = lab.in_client(move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
            socket.connect(target).ok()?;
            socket
                .set_read_timeout(Some(Duration::from_millis(50)))
                .ok()?;
            let mut buf = [0u8; 256];
            if socket.send(b"probe\n").is_ok() && socket.recv(&mut buf).is_ok() {
                return Some(());
            }
        }
        None
    });
    if answered.is_none() {
        lab.fail(format_args!(
            "round {round}: probe {target} never answered: the new table did not take effect"
        ));
    }
}

#[test]
fn every_scale_down_ends_flows_to_removed_pods_the_moment_it_is_published() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    const ROUNDS: usize = 50;
    let mut lab = lab(3);
    let vip = lab.info().vip(10);
    // Each version carries its own probe Service, so a test can see which
    // table is in force without waiting for the retirement pass.
    let probe_one = lab.info().vip(11);
    let probe_three = lab.info().vip(12);
    let version = |pods: &[usize], probe: Ipv4Addr| {
        let mut docs = lab.selector_service("echo", vip, &[HTTP, DNS], pods);
        docs.push(service("probe", &probe.to_string(), None, &[DNS]));
        docs.push(endpoint_slice("probe", &[&lab.info().pods[0]], &DNS));
        docs.join("---\n")
    };
    let three = version(&[0, 1, 2], probe_three);
    let one = version(&[0], probe_one);
    let file = lab.control_file(std::slice::from_ref(&three));
    lab.start_gateway_with(&["--min-sync-period", "50ms"]);
    let info = lab.info().clone();
    let pod1 = info.pods[0].name.clone();

    for round in 0..ROUNDS {
        wait_until_answered(&lab, vip_port(probe_three, &DNS), round);
        let Flows { mut tcp, udp } = open_flows(&lab, vip, 3);

        write_version(&file, &one, Rewrite::Rename);
        wait_until_answered(&lab, vip_port(probe_one, &DNS), round);

        // At once: no waiting for the retirement pass.
        let udp_after = next_answers(&info, &udp)
            .unwrap_or_else(|e| lab.fail(format_args!("round {round}: {e}")));
        for (was, now) in &udp_after {
            assert_eq!(
                now, &pod1,
                "round {round}: the UDP flow that was on {was} is now on {now}"
            );
        }
        for (pod, stream) in &mut tcp {
            let outcome = request(stream);
            if *pod == pod1 {
                let reply = outcome.unwrap_or_else(|e| {
                    lab.fail(format_args!("round {round}: {pod}'s connection: {e}"))
                });
                assert_eq!(pod_name(&info, &reply).ok(), Some(pod1.as_str()));
            } else {
                match outcome {
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
                    other => lab.fail(format_args!(
                        "round {round}: connection to removed {pod}: {other:?}; expected a reset"
                    )),
                }
            }
        }
        write_version(&file, &three, Rewrite::Rename);
    }
    lab.stop_gateway();
}

#[test]
fn an_invalid_file_changes_nothing_until_it_is_fixed() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut lab = lab(3);
    let vip = lab.info().vip(10);
    let vip_c = lab.info().vip(30);
    let good = lab.selector_service("echo", vip, &[HTTP], &[0, 1, 2]);
    let file = lab.control_file(&good);
    lab.start_gateway();

    let mut broken = good.clone();
    broken[0] = broken[0].replace("port: 8080", "port: 80800");
    write_version(&file, &broken.join("---\n"), Rewrite::Truncate);
    std::thread::sleep(Duration::from_millis(1500));
    let served = lab.tcp_sessions(vip_port(vip, &HTTP), 20, 1);
    assert_eq!(
        served.values().sum::<usize>(),
        20,
        "the last good table serves on"
    );
    lab.assert_log_contains("spec.ports[0].port");
    lab.assert_log_contains("80800");

    // Fixed, with one more Service: it takes effect.
    let mut fixed = good.clone();
    fixed.extend(lab.selector_service("charlie", vip_c, &[HTTP], &[2]));
    write_version(&file, &fixed.join("---\n"), Rewrite::Rename);
    let info = lab.info().clone();
    let took = lab
        .in_client(move || {
            let written = Instant::now();
            while written.elapsed() < Duration::from_secs(3) {
                if let Ok(pod) = connect_pod(&info, vip_port(vip_c, &HTTP)) {
                    return Ok((written.elapsed(), pod));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err("the fixed file's new Service never answered".to_owned())
        })
        .unwrap_or_else(|e| lab.fail(e));
    eprintln!("fixed file took effect within {:?}", took.0);
    assert_eq!(took.1, lab.info().pods[2].name);
    lab.stop_gateway();
}
