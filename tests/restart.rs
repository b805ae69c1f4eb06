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
//! - a new gateway started beside the running one, which hands the data
//!   path over to it and idles until SIGTERM (make-before-break, what a
//!   DaemonSet update with maxSurge does): the same, and the XDP program
//!   on the interfaces is the same one (kept, not replaced); one the new
//!   gateway cannot keep is replaced;
//! - the same between gateways of two workers (`--cores 0,1`) on links
//!   of two queues;
//! - the same after SIGKILL (a crash);
//! - the same with the table on huge pages (`--state-dir` on a hugetlbfs
//!   mount with pages reserved); with none free, the gateway says so and
//!   keeps the table in process memory;
//! - a table file of another layout version (an upgrade that changed the
//!   record layout): it is set aside with a log line, a fresh table
//!   starts, and the old connections are reset at their next segment
//!   rather than left hanging.
//!
//! The restart's gap is printed: the longest time a UDP flow that sends
//! every millisecond went without an answer.
//!
//! Rules as in tests/netns.rs: one test at a time, root (skip with a reason
//! otherwise, never when CI=true), RAII cleanup, 198.18.0.0/15 only.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cipgw::lab::{self, Topology, TopologyBuilder};

#[path = "support/mod.rs"]
mod support;

use support::{
    pod_name, request, vip_port, Lab, ReservedHugePages, DNS, HTTP, TARGET_PORT, UDP_TARGET_PORT,
};

const TCP_CONNECTIONS: usize = 50;
const UDP_FLOWS: usize = 20;
/// Each connection and flow sends this often.
const EVERY: Duration = Duration::from_millis(100);
/// A request may wait this long across a restart (TCP retransmits).
const PATIENCE: Duration = Duration::from_secs(8);

/// A lab with TCP and UDP echo servers on three Pods behind one VIP.
fn lab() -> (Lab, Ipv4Addr) {
    lab_of(Topology::two_arm("restart").pods(3))
}

/// [`lab`] of another topology.
fn lab_of(topology: TopologyBuilder) -> (Lab, Ipv4Addr) {
    let mut lab = Lab::build(topology);
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

/// Sends a datagram on `u` every millisecond until `stop`; returns the
/// longest time without an answer (the restart's gap, at 1 ms
/// resolution).
fn probe_gap(u: UdpSocket, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Duration> {
    std::thread::spawn(move || {
        u.set_read_timeout(Some(Duration::from_millis(1)))
            .expect("timeout");
        let mut last = Instant::now();
        let mut longest = Duration::ZERO;
        let mut buf = [0u8; 256];
        // Relaxed: see `drive`.
        while !stop.load(Ordering::Relaxed) {
            let _ = u.send(b"gap?\n");
            let deadline = Instant::now() + Duration::from_millis(1);
            while Instant::now() < deadline {
                if u.recv(&mut buf).is_ok() {
                    let now = Instant::now();
                    longest = longest.max(now - last);
                    last = now;
                }
            }
        }
        longest
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
    let (lab, vip) = lab();
    survives_in(lab, vip, &[], restart, what);
}

/// [`survives`] in a lab of the caller's, first started with `extra`
/// arguments.
fn survives_in(
    mut lab: Lab,
    vip: Ipv4Addr,
    extra: &[&str],
    restart: impl FnOnce(&mut Lab),
    what: &str,
) {
    lab.start_gateway_with(extra);
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
    let probe = lab.in_client(move || {
        let u = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
        u.connect(vip_port(vip, &DNS))?;
        Ok::<_, std::io::Error>(u)
    });
    let probe = probe.unwrap_or_else(|e| lab.fail(format_args!("probe socket: {e}")));
    let prober = probe_gap(probe, Arc::clone(&stop));
    wait_rounds(&lab, &seen, 3, "before the restart");
    let before = seen.lock().expect("not poisoned").longest;

    let restarted = Instant::now();
    restart(&mut lab);
    let took = restarted.elapsed();
    wait_rounds(&lab, &seen, 5, "after the restart");
    // Relaxed: see `drive`.
    stop.store(true, Ordering::Relaxed);
    driver.join().expect("the client driver did not panic");
    let gap = prober.join().expect("the prober did not panic");
    let seen = seen.lock().expect("not poisoned");
    eprintln!(
        "{what}: restarted in {took:?}; {TCP_CONNECTIONS} TCP connections and {UDP_FLOWS} UDP \
         flows lived on; gap {gap:?} (longest without an answer, 1 ms probe); longest client \
         round {:?} (before the restart: {before:?})",
        seen.longest
    );
    // Where the restart's time went: the new gateway's start, step by step.
    for line in lab
        .gateway_log()
        .iter()
        .take_while(|l| !l.contains("cipgw ready"))
    {
        eprintln!("  {line}");
    }
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
fn connections_survive_a_hand_over_to_a_gateway_started_beside_the_running_one() {
    survives(
        |lab| {
            let before = lab.xdp_prog_ids();
            lab.replace_gateway();
            // The same binary: its XDP program and maps are kept, not
            // replaced.
            let after = lab.xdp_prog_ids();
            if after != before || before.iter().any(|(_, id)| *id == 0) {
                lab.fail(format_args!(
                    "the XDP program was not kept across the hand-over: {before:?} before, \
                     {after:?} after"
                ));
            }
            lab.assert_log_contains("keeping the running gateway's XDP program");
            // The bulk of the new table's memory was taken while the old
            // gateway still forwarded; only the records, in the file the
            // old one filled, were taken after it let go.
            let log = lab.gateway_log();
            let at = |what: &str| log.iter().position(|l| l.contains(what));
            let (index, let_go, records) = (
                at("connection tables' index and eviction queues taken"),
                at("the running gateway let go"),
                at("connection tables' records taken"),
            );
            if !(index.is_some() && index < let_go && let_go < records) {
                lab.fail(format_args!(
                    "the table's memory was not taken in order (index, let go, records): \
                     lines {index:?}, {let_go:?}, {records:?}"
                ));
            }
            // The old gateway said its sockets were in copy mode (veth):
            // the new one did not try zero-copy first.
            if let Some(line) = lab
                .gateway_log()
                .iter()
                .find(|l| l.contains("zero-copy unavailable"))
            {
                lab.fail(format_args!(
                    "the new gateway tried zero-copy after the hand-over: {line}"
                ));
            }
        },
        "hand-over (make-before-break)",
    );
}

/// The hand-over between gateways of two workers, each worker on a queue
/// of both links: every adopted flow goes on whichever of the new
/// gateway's workers its packets reach.
#[test]
fn connections_survive_a_hand_over_between_gateways_of_two_workers() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let (mut lab, vip) = lab_of(Topology::two_arm("restart2w").pods(3).queues(2));
    lab.use_cores("0,1");
    survives_in(
        lab,
        vip,
        &[],
        |lab| lab.replace_gateway(),
        "hand-over, two workers",
    );
}

/// A program the new gateway cannot keep (here: it asks for another XDP
/// mode; an upgrade's differing object takes the same path) is replaced,
/// and forwarding goes on.
#[test]
fn a_hand_over_replaces_a_program_it_cannot_keep() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let (mut lab, vip) = lab();
    // On veth `auto` attaches in native mode.
    lab.start_gateway();
    let before = lab.xdp_prog_ids();
    lab.replace_gateway_with(&["--xdp-mode", "skb"]);
    let after = lab.xdp_prog_ids();
    if before
        .iter()
        .zip(&after)
        .any(|(b, a)| b.1 == a.1 || a.1 == 0)
    {
        lab.fail(format_args!(
            "the XDP program was not replaced: {before:?} before, {after:?} after"
        ));
    }
    lab.assert_log_contains("loading an XDP program of our own");
    let served = lab.tcp_sessions(vip_port(vip, &HTTP), 10, 2);
    assert_eq!(served.values().sum::<usize>(), 10);
    lab.stop_gateway();
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

/// A hugetlbfs mount with `pages` more huge pages reserved; both undone
/// on drop (after the lab, which is declared later).
struct HugePages {
    mount: std::path::PathBuf,
    _pool: ReservedHugePages,
}

impl HugePages {
    fn mount(name: &str, pages: u64) -> HugePages {
        let pool = ReservedHugePages::reserve(pages);
        let mount = std::env::temp_dir().join(format!("cipgw-huge-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&mount).expect("creating the mount point");
        let guard = HugePages { mount, _pool: pool };
        let target = std::ffi::CString::new(guard.mount.as_os_str().as_encoded_bytes())
            .expect("no NUL in the path");
        // SAFETY: NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                c"none".as_ptr(),
                target.as_ptr(),
                c"hugetlbfs".as_ptr(),
                0,
                c"pagesize=2M".as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mounting hugetlbfs: {}",
            std::io::Error::last_os_error()
        );
        guard
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        if let Ok(target) = std::ffi::CString::new(self.mount.as_os_str().as_encoded_bytes()) {
            // SAFETY: a NUL-terminated path that outlives the call.
            unsafe {
                libc::umount2(target.as_ptr(), libc::MNT_DETACH);
            }
        }
        let _ = std::fs::remove_dir(&self.mount);
    }
}

#[test]
fn connections_survive_a_restart_with_the_table_on_huge_pages() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    // --conntrack-max 16384: a table of about half a MiB, one 2 MiB page.
    let huge = HugePages::mount("restart", 4);
    let (mut lab, vip) = lab();
    lab.use_state_dir(&huge.mount);
    let small = ["--conntrack-max", "16384"];
    survives_in(
        lab,
        vip,
        &small,
        |lab| {
            lab.assert_log_contains("connection table on huge pages");
            lab.stop_gateway();
            lab.start_gateway_with(&small);
        },
        "SIGTERM restart on huge pages",
    );
}

#[test]
fn without_free_huge_pages_the_table_stays_in_process_memory() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let huge = HugePages::mount("none-free", 0);
    let free: u64 = std::fs::read_to_string("/proc/meminfo")
        .expect("meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if free > 0 {
        // Someone reserved huge pages on this machine: the fallback cannot
        // be forced without taking them away.
        eprintln!("skipping: {free} huge pages are free on this machine");
        return;
    }
    let (mut lab, vip) = lab();
    lab.use_state_dir(&huge.mount);
    lab.start_gateway_with(&["--conntrack-max", "16384"]);
    lab.assert_log_contains("no huge pages for the connection table");
    let served = lab.tcp_sessions(vip_port(vip, &HTTP), 10, 2);
    assert_eq!(served.values().sum::<usize>(), 10);
    lab.stop_gateway();
}

/// As deployed (deploy/30-daemonset.yaml), the gateway has no
/// CAP_SYS_ADMIN, without which the kernel opens no attached program by
/// id: the earlier gateway's program is known by the id it recorded.
#[test]
fn connections_survive_a_restart_without_cap_sys_admin() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let (lab, vip) = lab();
    let wrapper = lab.script(
        "cipgw-no-sys-admin",
        r#"exec setpriv --bounding-set -sys_admin --inh-caps -sys_admin "$CIPGW" "$@""#,
    );
    survives_in(
        lab,
        vip,
        &[],
        move |lab| {
            lab.stop_gateway();
            lab.start_gateway_through(&wrapper, &[]);
        },
        "SIGTERM restart without CAP_SYS_ADMIN",
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
