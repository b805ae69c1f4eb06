//! End-to-end tests of restarts, in network namespaces with the real
//! binary: the gateway keeps its connection table in a file under
//! `--state-dir` and leaves its XDP program attached (dropping VIP traffic
//! while no worker runs), so a restarted gateway adopts every flow.
//!
//! Cases, each with 50 long-lived TCP connections (a request every
//! 100 ms) and 20 UDP flows running through the restart:
//! - SIGTERM, then the same `cipgw run` again: every TCP connection lives
//!   on (no reset, every request answered, by its own Pod), every UDP flow
//!   stays on its Pod;
//! - the same after SIGKILL (a crash);
//! - a table file of another layout version (an upgrade that changed the
//!   record layout): it is set aside with a log line, a fresh table
//!   starts, and the old connections are reset at their next segment
//!   rather than left hanging.
//!
//! The longest stall the clients saw is printed: the restart's gap.
//!
//! Rules as in tests/netns.rs: one test at a time, root (skip with a reason
//! otherwise, never when CI=true), RAII cleanup, 198.18.0.0/15 only.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cipgw::lab::{self, Topology};

#[path = "support/mod.rs"]
mod support;

use support::{pod_name, request, vip_port, Lab, DNS, HTTP, TARGET_PORT, UDP_TARGET_PORT};

const TCP_CONNECTIONS: usize = 50;
const UDP_FLOWS: usize = 20;
/// Each connection and flow sends this often.
const EVERY: Duration = Duration::from_millis(100);
/// A request may wait this long across a restart (TCP retransmits).
const PATIENCE: Duration = Duration::from_secs(8);

/// A lab with TCP and UDP echo servers on three Pods behind one VIP.
fn lab() -> (Lab, Ipv4Addr) {
    let mut lab = Lab::build(Topology::two_arm("restart").pods(3));
    lab.tcp_echo(TARGET_PORT);
    lab.udp_echo(UDP_TARGET_PORT);
    let vip = lab.info().vip(10);
    let docs = lab.selector_service("echo", vip, &[HTTP, DNS], &[0, 1, 2]);
    lab.control_file(&docs);
    (lab, vip)
}

/// A TCP connection or UDP flow, and the Pod that answered it first.
struct Flow {
    pod: String,
    socket: Socket,
}

enum Socket {
    Tcp(TcpStream),
    Udp(UdpSocket),
}

/// Opens the connections and flows from the client namespace.
fn open(lab: &Lab, vip: Ipv4Addr) -> Vec<Flow> {
    let info = lab.info().clone();
    let flows = lab.in_client(move || {
        let mut flows = Vec::new();
        for _ in 0..TCP_CONNECTIONS {
            let mut s = TcpStream::connect_timeout(
                &SocketAddr::V4(vip_port(vip, &HTTP)),
                Duration::from_secs(2),
            )?;
            s.set_read_timeout(Some(PATIENCE))?;
            s.set_write_timeout(Some(PATIENCE))?;
            let reply = request(&mut s)?;
            let pod = pod_name(&info, &reply).map_err(std::io::Error::other)?;
            flows.push(Flow {
                pod: pod.to_owned(),
                socket: Socket::Tcp(s),
            });
        }
        for _ in 0..UDP_FLOWS {
            let u = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
            u.connect(vip_port(vip, &DNS))?;
            u.set_read_timeout(Some(Duration::from_millis(300)))?;
            let pod = udp_exchange(&info, &u)?;
            flows.push(Flow {
                pod,
                socket: Socket::Udp(u),
            });
        }
        Ok::<_, std::io::Error>(flows)
    });
    flows.unwrap_or_else(|e| lab.fail(format_args!("opening flows: {e}")))
}

/// One datagram and its answer's Pod; resent (a datagram lost while no
/// gateway runs is the application's to resend) until `PATIENCE` passes.
fn udp_exchange(info: &lab::TopologyInfo, u: &UdpSocket) -> std::io::Result<String> {
    let deadline = Instant::now() + PATIENCE;
    let mut buf = [0u8; 256];
    loop {
        u.send(b"which?\n")?;
        match u.recv(&mut buf) {
            Ok(n) => {
                return pod_name(info, &String::from_utf8_lossy(&buf[..n]))
                    .map(str::to_owned)
                    .map_err(std::io::Error::other)
            }
            Err(e)
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
                    && Instant::now() < deadline => {}
            Err(e) => return Err(e),
        }
    }
}

/// What the clients saw while they ran.
#[derive(Debug, Default)]
struct Seen {
    /// Rounds in which every flow was answered.
    rounds: usize,
    /// The longest round: a restart's gap shows here.
    longest: Duration,
    /// What went wrong, per flow.
    errors: BTreeMap<usize, String>,
}

/// Drives every flow once per `EVERY` on its own thread (sockets keep
/// their namespace) until `stop`; checks each answer's Pod.
fn drive(
    info: lab::TopologyInfo,
    flows: Vec<Flow>,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) -> std::thread::JoinHandle<Vec<Flow>> {
    std::thread::spawn(move || {
        let mut flows = flows;
        // Relaxed: a flag polled between rounds, ordering nothing else.
        while !stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let mut failed = false;
            for (i, flow) in flows.iter_mut().enumerate() {
                let answer = match &mut flow.socket {
                    Socket::Tcp(s) => request(s).and_then(|reply| {
                        pod_name(&info, &reply)
                            .map(str::to_owned)
                            .map_err(std::io::Error::other)
                    }),
                    Socket::Udp(u) => udp_exchange(&info, u),
                };
                let error = match answer {
                    Ok(pod) if pod == flow.pod => continue,
                    Ok(pod) => format!("answered by {pod}, not {}", flow.pod),
                    Err(e) => format!("{:?}: {e}", e.kind()),
                };
                failed = true;
                let mut seen = seen.lock().expect("not poisoned");
                seen.errors.entry(i).or_insert(error);
            }
            let took = started.elapsed();
            let mut seen = seen.lock().expect("not poisoned");
            seen.longest = seen.longest.max(took);
            if !failed {
                seen.rounds += 1;
            }
            drop(seen);
            std::thread::sleep(EVERY.saturating_sub(took));
        }
        flows
    })
}

/// Waits until the clients completed `rounds` more full rounds.
fn wait_rounds(lab: &Lab, seen: &Mutex<Seen>, rounds: usize, what: &str) {
    let start = seen.lock().expect("not poisoned").rounds;
    let deadline = Instant::now() + PATIENCE * 3;
    loop {
        let s = seen.lock().expect("not poisoned");
        if !s.errors.is_empty() {
            lab.fail(format_args!("{what}: flows failed: {:?}", s.errors));
        }
        if s.rounds >= start + rounds {
            return;
        }
        drop(s);
        if Instant::now() > deadline {
            lab.fail(format_args!("{what}: the clients made no progress"));
        }
        std::thread::sleep(EVERY);
    }
}

/// Runs the flows through one restart done by `restart`; every flow must
/// live on, on its own Pod.
fn survives(restart: impl FnOnce(&mut Lab), what: &str) {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let (mut lab, vip) = lab();
    lab.start_gateway();
    let flows = open(&lab, vip);
    let pods: std::collections::BTreeSet<&str> = flows.iter().map(|f| f.pod.as_str()).collect();
    assert!(pods.len() > 1, "flows spread over the Pods: {pods:?}");
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let driver = drive(
        lab.info().clone(),
        flows,
        Arc::clone(&stop),
        Arc::clone(&seen),
    );
    wait_rounds(&lab, &seen, 3, "before the restart");
    let before = seen.lock().expect("not poisoned").longest;

    let restarted = Instant::now();
    restart(&mut lab);
    let took = restarted.elapsed();
    wait_rounds(&lab, &seen, 5, "after the restart");
    // Relaxed: see `drive`.
    stop.store(true, Ordering::Relaxed);
    driver.join().expect("the client driver did not panic");
    let seen = seen.lock().expect("not poisoned");
    eprintln!(
        "{what}: restarted in {took:?}; {TCP_CONNECTIONS} TCP connections and {UDP_FLOWS} UDP \
         flows lived on; longest round {:?} (before the restart: {before:?})",
        seen.longest
    );
    assert!(seen.errors.is_empty(), "{what}: {:?}", seen.errors);
    lab.assert_log_contains("connection table adopted from the previous gateway");
    lab.stop_gateway();
}

#[test]
fn connections_survive_a_graceful_restart() {
    survives(
        |lab| {
            lab.stop_gateway();
            lab.start_gateway();
        },
        "SIGTERM restart",
    );
}

#[test]
fn connections_survive_a_crash_and_restart() {
    survives(
        |lab| {
            lab.kill_gateway();
            lab.start_gateway();
        },
        "SIGKILL restart",
    );
}

#[test]
fn a_table_of_another_layout_is_set_aside_and_old_connections_are_reset() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let (mut lab, vip) = lab();
    lab.start_gateway();
    let flows = open(&lab, vip);
    lab.stop_gateway();
    // What a binary with another record layout would have left.
    let file = lab.state_dir().join("conntrack.table");
    let mut bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("reading {file:?}: {e}"));
    bytes[8..12].copy_from_slice(&999u32.to_le_bytes());
    std::fs::write(&file, &bytes).unwrap_or_else(|e| panic!("writing {file:?}: {e}"));
    lab.start_gateway();
    lab.assert_log_contains("set aside");
    lab.assert_log_contains("layout version 999");

    // Every old TCP connection is reset at its next segment, at once.
    for (i, flow) in flows.into_iter().enumerate() {
        let Socket::Tcp(mut stream) = flow.socket else {
            continue;
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let started = Instant::now();
        match request(&mut stream) {
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => lab.fail(format_args!(
                "old connection {i} after a fresh table: {other:?} after {:?}; expected a reset",
                started.elapsed()
            )),
        }
    }
    // New connections work.
    let served = lab.tcp_sessions(vip_port(vip, &HTTP), 10, 2);
    assert_eq!(served.values().sum::<usize>(), 10);
    lab.stop_gateway();
}
