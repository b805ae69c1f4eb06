//! End-to-end tests of the admin endpoint and the CLI views of a running
//! `cipgw run` in network namespaces.
//!
//! The admin endpoint listens on its default address, 127.0.0.1:9477,
//! inside the gateway's namespace: scrapes run on a thread that joined
//! that namespace (`Netns::run`) and the CLI runs under
//! `ip netns exec` (`Netns::command`). Tests run one at a time
//! (`lab::serial`), skip with a printed reason when not root (never when
//! `CI=true`), and clean up through RAII guards, also while a panic
//! unwinds (the lab itself is `tests/support`'s). Addresses come from
//! 198.18.0.0/15 only.
//!
//! Cases:
//! - metrics during traffic: N UDP exchanges through a VIP move the RX
//!   and TX counters by exactly 2N, the per-direction flow counters by N
//!   each and new flows by N; malformed frames sent to the VIP with a raw
//!   AF_PACKET socket (truncated and malformed IPv4, truncated and
//!   malformed UDP, a fragment) move exactly their drop reasons; every
//!   scrape parses as Prometheus (OpenMetrics) text; readyz and healthz
//!   answer 200;
//! - `cipgw services`, `cipgw conntrack` and `cipgw status` (text and
//!   `--json`) against a gateway with TCP connections held open show the
//!   Services, their endpoints and the live flows; bad filters exit 64;
//!   a reloaded control file is counted as a sync and an invalid one as
//!   a failed sync with its error; nothing listening is a clear error;
//!   `--log-format json` logs JSON;
//! - `cipgw conntrack` shows each flow's expiry (24 h for an established
//!   connection held open) and, with `--conntrack-accounting`, its packets
//!   and bytes both ways (without it, none), and `--delete` removes one flow by its
//!   5-tuple, then every flow of a backend (an unselective `--delete`
//!   exits 64): the deleted connections' next segment is answered with a
//!   RST, the others go on, and the deletions are counted in
//!   `cipgw status` and `cipgw_conntrack_deleted_total`.
//!
//! - two workers (`--cores 0,1`) on gateway links of two queues each:
//!   every connection keeps its Pod, whichever worker its packets and
//!   their replies reach (the workers share one table), both workers
//!   take new flows, and their new-flow counts add up to the
//!   connections made and to the table's inserts;
//! - `cipgw services` and `/api/services` count packets, bytes and flows
//!   per endpoint (as `ipvsadm -L --stats` per real server): UDP
//!   exchanges through a VIP spread over two Pods show exactly two
//!   packets per exchange each Pod answered (and a flow per exchange,
//!   but for reused source ports), adding up to the port's counters.
//!
//! Both stop the gateway with SIGTERM at the end: it must exit 0 within
//! 5 s with its admin endpoint serving.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::process::Output;
use std::time::{Duration, Instant};

use cipgw::admin::{client, ConntrackView, ServicesView, StatusView};
use cipgw::lab::{self, Topology, TopologyInfo};
use cipgw::metrics::exposition::{self, Exposition};

#[path = "support/mod.rs"]
mod support;

use support::{exe, Lab, Port, DNS, EXCHANGE_TIMEOUT, HTTP, TARGET_PORT};

/// The admin endpoint's default address, inside the gateway namespace.
const ADMIN: &str = "127.0.0.1:9477";
/// How long counters may take to reach what was sent (workers count
/// after the ring kick; a reply can overtake its counter).
const SETTLE_WITHIN: Duration = Duration::from_secs(3);

fn admin_addr() -> SocketAddr {
    ADMIN.parse().expect("static address")
}

/// GET `path` from the admin endpoint, from inside the gateway namespace.
fn get(lab: &Lab, path: &str) -> client::Response {
    let owned = path.to_owned();
    lab.topology()
        .gateway()
        .run(move || client::get(admin_addr(), &owned, Duration::from_secs(5)))
        .unwrap_or_else(|e| lab.fail(format_args!("entering the gateway namespace: {e}")))
        .unwrap_or_else(|e| lab.fail(format_args!("GET {path}: {e}")))
}

/// Scrapes `/metrics` and parses it strictly.
fn scrape(lab: &Lab) -> Exposition {
    let reply = get(lab, "/metrics");
    if reply.status != 200 {
        lab.fail(format_args!(
            "/metrics answered {}: {}",
            reply.status, reply.body
        ));
    }
    exposition::parse(&reply.body)
        .unwrap_or_else(|e| lab.fail(format_args!("/metrics does not parse: {e}\n{}", reply.body)))
}

/// Runs `cipgw ARGS...` inside the gateway namespace.
fn cipgw(lab: &Lab, args: &[&str]) -> Output {
    lab.topology()
        .gateway()
        .command(exe())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("running cipgw {args:?}: {e}"))
}

/// `cipgw ARGS...` must succeed; returns its stdout.
fn cipgw_ok(lab: &Lab, args: &[&str]) -> String {
    let out = cipgw(lab, args);
    if !out.status.success() {
        lab.fail(format_args!(
            "cipgw {args:?} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("$ cipgw {}\n{stdout}", args.join(" "));
    stdout
}

/// The core the gateway's only worker runs on: its `worker` label.
fn worker_label(lab: &Lab) -> String {
    let status: StatusView = serde_json::from_str(&get(lab, "/api/status").body)
        .unwrap_or_else(|e| lab.fail(format_args!("/api/status: {e}")));
    match status.workers.as_slice() {
        [w] => w.core.to_string(),
        other => lab.fail(format_args!("expected one worker, got {other:?}")),
    }
}

/// Polls `/api/status` until `done` holds (at most 10 s).
fn wait_for_status(lab: &Lab, done: impl Fn(&StatusView) -> bool) -> StatusView {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status: StatusView = serde_json::from_str(&get(lab, "/api/status").body)
            .unwrap_or_else(|e| lab.fail(format_args!("/api/status: {e}")));
        if done(&status) {
            return status;
        }
        if Instant::now() > deadline {
            lab.fail(format_args!("/api/status never got there: {status:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn counter(exp: &Exposition, name: &str, labels: &[(&str, &str)]) -> u64 {
    exp.get(name, labels)
        .unwrap_or_else(|| panic!("no single series {name}{labels:?} in the scrape")) as u64
}

/// The counters the first test follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Moves {
    rx: u64,
    tx: u64,
    forward: u64,
    reply: u64,
    new_flows: u64,
    passed: u64,
    dropped: u64,
}

impl Moves {
    fn read(exp: &Exposition) -> Moves {
        Moves {
            rx: counter(exp, "cipgw_rx_packets_total", &[]),
            tx: counter(exp, "cipgw_tx_packets_total", &[]),
            forward: counter(exp, "cipgw_flow_packets_total", &[("direction", "forward")]),
            reply: counter(exp, "cipgw_flow_packets_total", &[("direction", "reply")]),
            new_flows: counter(exp, "cipgw_new_flows_total", &[]),
            passed: counter(exp, "cipgw_passed_packets_total", &[]),
            dropped: exp.sum("cipgw_drops_total", &[]) as u64,
        }
    }

    fn since(self, base: Moves) -> Moves {
        Moves {
            rx: self.rx - base.rx,
            tx: self.tx - base.tx,
            forward: self.forward - base.forward,
            reply: self.reply - base.reply,
            new_flows: self.new_flows - base.new_flows,
            passed: self.passed - base.passed,
            dropped: self.dropped - base.dropped,
        }
    }
}

/// Scrapes until `done` holds for the counters' moves since `base` (or
/// the time runs out), waits a little longer for stragglers, and returns
/// the last scrape.
fn settle(lab: &Lab, base: Moves, done: impl Fn(&Moves) -> bool) -> Exposition {
    let deadline = Instant::now() + SETTLE_WITHIN;
    loop {
        let exp = scrape(lab);
        if done(&Moves::read(&exp).since(base)) || Instant::now() > deadline {
            // Anything counted late would show up now.
            std::thread::sleep(Duration::from_millis(300));
            return scrape(lab);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// RFC 1071 checksum of an IPv4 header.
fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame from the client to the gateway carrying an IPv4
/// header for `dst` (protocol UDP) with `total_len` and `flags_frag`
/// written as given, followed by `payload`.
fn frame(
    info: &TopologyInfo,
    dst: Ipv4Addr,
    total_len: u16,
    flags_frag: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 20 + payload.len());
    f.extend_from_slice(&info.gateway.client_side.mac);
    f.extend_from_slice(&info.client.iface.mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total_len.to_be_bytes());
    ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    ip[6..8].copy_from_slice(&flags_frag.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&info.client.iface.addr.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(payload);
    f
}

/// A UDP header from port 40000 to `dst_port` with `length` as given.
fn udp_header(dst_port: u16, length: u16) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[0..2].copy_from_slice(&40000u16.to_be_bytes());
    h[2..4].copy_from_slice(&dst_port.to_be_bytes());
    h[4..6].copy_from_slice(&length.to_be_bytes());
    h
}

/// Sends raw Ethernet frames out of `ifname` (AF_PACKET), from the
/// calling thread's namespace.
fn send_raw(ifname: &str, frames: &[Vec<u8>]) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let name = std::ffi::CString::new(ifname).map_err(std::io::Error::other)?;
    // SAFETY: `name` is a valid NUL-terminated string for the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: socket(2) with constant arguments; protocol 0 receives
    // nothing, so the socket only sends.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nobody
    // else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is a plain C struct for which all-zero bytes are
    // a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    for f in frames {
        addr.sll_addr[..6].copy_from_slice(&f[..6]);
        // SAFETY: the buffer and the address are valid for the lengths
        // given and outlive the call.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[test]
fn metrics_count_exactly_what_was_sent() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    const EXCHANGES: u64 = 40;
    const MALFORMED_EACH: u64 = 3;
    let mut lab = Lab::build(Topology::two_arm("admmetrics").pods(2));
    lab.udp_echo(DNS.target);
    let vip = lab.info().vip(53);
    let docs = lab.selector_service("dns", vip, &[DNS], &[0, 1]);
    lab.control_file(&docs);
    lab.start_gateway();

    assert_eq!(get(&lab, "/healthz").status, 200);
    let ready = get(&lab, "/readyz");
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));

    // N request/response exchanges, each from its own client port: a new
    // flow each, two frames through the workers each way.
    let worker = worker_label(&lab);
    let base = Moves::read(&scrape(&lab));
    let target = SocketAddrV4::new(vip, DNS.port);
    let answered = lab.in_client(move || {
        let mut answered = 0;
        for i in 0..EXCHANGES as u16 {
            let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 41000 + i))
                .map_err(|e| format!("bind: {e}"))?;
            socket
                .set_read_timeout(Some(EXCHANGE_TIMEOUT))
                .map_err(|e| e.to_string())?;
            socket
                .send_to(format!("request {i}\n").as_bytes(), target)
                .map_err(|e| format!("send: {e}"))?;
            let mut buf = [0u8; 512];
            let (_, from) = socket
                .recv_from(&mut buf)
                .map_err(|e| format!("request {i}: no reply: {e}"))?;
            if from != SocketAddr::V4(target) {
                return Err(format!("request {i}: reply from {from}, not the VIP"));
            }
            answered += 1;
        }
        Ok::<u64, String>(answered)
    });
    let answered = answered.unwrap_or_else(|e| lab.fail(format_args!("UDP exchanges: {e}")));
    assert_eq!(answered, EXCHANGES);
    let exp = settle(&lab, base, |m| {
        m.rx >= 2 * EXCHANGES && m.tx >= 2 * EXCHANGES
    });
    let moved = Moves::read(&exp).since(base);
    let want = Moves {
        rx: 2 * EXCHANGES,
        tx: 2 * EXCHANGES,
        forward: EXCHANGES,
        reply: EXCHANGES,
        new_flows: EXCHANGES,
        passed: 0,
        dropped: 0,
    };
    if moved != want {
        lab.fail(format_args!(
            "after {EXCHANGES} UDP exchanges the counters moved by {moved:?}, expected {want:?}"
        ));
    }
    // The per-worker counters add up to the totals.
    assert_eq!(
        counter(
            &exp,
            "cipgw_worker_rx_packets_total",
            &[("worker", worker.as_str())]
        ),
        counter(&exp, "cipgw_rx_packets_total", &[])
    );
    assert!(
        counter(
            &exp,
            "cipgw_batch_size_frames_count",
            &[("worker", worker.as_str())]
        ) > 0
    );
    assert!(counter(&exp, "cipgw_conntrack_flows", &[]) >= EXCHANGES);
    assert_eq!(counter(&exp, "cipgw_table_vip_ports", &[]), 1);
    assert_eq!(counter(&exp, "cipgw_ready", &[]), 1);

    // Malformed frames to the VIP: each kind must show up as its own drop
    // reason, and nothing else may move but RX.
    let info = lab.info().clone();
    let payload = udp_header(53, 8);
    let kinds: [(&str, Vec<u8>); 5] = [
        // The header promises 100 bytes; 28 arrive.
        ("truncated_ipv4", frame(&info, vip, 100, 0, &payload)),
        // Total length below the header's own 20 bytes.
        ("malformed_ipv4", frame(&info, vip, 10, 0, &payload)),
        // 4 bytes of UDP header.
        ("truncated_l4", frame(&info, vip, 24, 0, &payload[..4])),
        // UDP length 20 in a 12-byte datagram.
        (
            "malformed_l4",
            frame(
                &info,
                vip,
                32,
                0,
                &[&udp_header(53, 20)[..], b"abcd"].concat(),
            ),
        ),
        // A later fragment (offset 8) whose first fragment never came.
        ("fragment", frame(&info, vip, 28, 0x0001, &payload)),
    ];
    let exp = scrape(&lab);
    let base = Moves::read(&exp);
    let drops_before: Vec<u64> = kinds
        .iter()
        .map(|(reason, _)| counter(&exp, "cipgw_drops_total", &[("reason", reason)]))
        .collect();
    let frames: Vec<Vec<u8>> = kinds
        .iter()
        .flat_map(|(_, f)| std::iter::repeat(f.clone()).take(MALFORMED_EACH as usize))
        .collect();
    let ifname = info.client.iface.name.clone();
    lab.in_client(move || send_raw(&ifname, &frames))
        .unwrap_or_else(|e| lab.fail(format_args!("sending raw frames: {e}")));
    let sent = MALFORMED_EACH * kinds.len() as u64;
    let exp = settle(&lab, base, |m| m.dropped >= sent);
    let moved = Moves::read(&exp).since(base);
    let want = Moves {
        rx: sent,
        tx: 0,
        forward: 0,
        reply: 0,
        new_flows: 0,
        passed: 0,
        dropped: sent,
    };
    if moved != want {
        lab.fail(format_args!(
            "after {sent} malformed frames the counters moved by {moved:?}, expected {want:?}"
        ));
    }
    for ((reason, _), before) in kinds.iter().zip(drops_before) {
        let now = counter(&exp, "cipgw_drops_total", &[("reason", reason)]);
        assert_eq!(
            now - before,
            MALFORMED_EACH,
            "drops_total{{reason={reason:?}}} moved by {} for {MALFORMED_EACH} such frames",
            now - before
        );
    }
    eprintln!(
        "{sent} malformed frames counted by reason: {:?}",
        kinds.map(|(r, _)| r)
    );
    lab.stop_gateway();
}

/// Opens a TCP connection to `target`, exchanges one line, and returns
/// the stream (kept open) and the Pod that answered.
fn hold_connection(target: SocketAddrV4) -> Result<(TcpStream, String), String> {
    let mut stream = TcpStream::connect_timeout(&SocketAddr::V4(target), EXCHANGE_TIMEOUT)
        .map_err(|e| format!("connect to {target}: {e}"))?;
    stream
        .set_read_timeout(Some(EXCHANGE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"hello\n")
        .map_err(|e| format!("send: {e}"))?;
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .map_err(|e| format!("reply: {e}"))?;
    // "Hello from <pod> at <ip>"
    let pod = line
        .split_whitespace()
        .nth(2)
        .ok_or_else(|| format!("not an echo reply: {line:?}"))?
        .to_owned();
    Ok((stream, pod))
}

#[test]
fn cli_shows_services_and_live_flows() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    const HELD: usize = 6;
    let mut lab = Lab::build(Topology::two_arm("admcli").pods(3));
    lab.tcp_echo(TARGET_PORT);
    let vip = lab.info().vip(10);
    let dns_vip = lab.info().vip(53);
    // echo selects all three Pods; dns selects none; db is headless.
    let postgres = Port {
        name: "pg",
        port: 5432,
        target: 5432,
        protocol: "TCP",
    };
    let mut docs = lab.selector_service("echo", vip, &[HTTP], &[0, 1, 2]);
    docs.push(support::service(
        "dns",
        &dns_vip.to_string(),
        Some("dns"),
        &[DNS],
    ));
    docs.push(support::service("db", "None", Some("db"), &[postgres]));
    lab.control_file(&docs);
    lab.start_gateway_with(&["--log-format", "json"]);
    let worker = worker_label(&lab);

    let target = SocketAddrV4::new(vip, HTTP.port);
    let held = lab.in_client(move || {
        (0..HELD)
            .map(|_| hold_connection(target))
            .collect::<Result<Vec<_>, _>>()
    });
    let held = held.unwrap_or_else(|e| lab.fail(format_args!("holding TCP connections: {e}")));
    let client_ports: BTreeSet<u16> = held
        .iter()
        .map(|(s, _)| s.local_addr().map(|a| a.port()).unwrap_or(0))
        .collect();
    let client_ip = lab.info().client.iface.addr;

    // Services: the text listing, then the JSON.
    let text = cipgw_ok(&lab, &["services"]);
    assert!(
        text.contains(&format!("TCP   {vip}:8080")) || text.contains(&format!("TCP  {vip}:8080")),
        "{text}"
    );
    assert!(
        text.contains("default/echo") && text.contains("default/dns"),
        "{text}"
    );
    for p in &lab.info().pods {
        let endpoint = format!(" {}:{TARGET_PORT} ", p.iface.addr);
        let line = text
            .lines()
            .find(|l| l.starts_with("  ->") && l.contains(&endpoint))
            .unwrap_or_else(|| panic!("no endpoint line for {} in\n{text}", p.name));
        assert!(line.contains(&p.name) && line.contains("ready"), "{line}");
    }
    assert!(
        text.contains("default/db") && text.contains("headless"),
        "{text}"
    );
    let raw = cipgw_ok(&lab, &["services", "--json"]);
    let services: ServicesView =
        serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{e}: {raw}"));
    let echo = services
        .services
        .iter()
        .find(|s| s.name == "echo")
        .unwrap_or_else(|| panic!("no echo Service in {raw}"));
    assert_eq!(echo.vip, Some(vip.into()));
    assert_eq!(echo.cluster_ips, [std::net::IpAddr::from(vip)]);
    assert_eq!(echo.active_flows, HELD as u64, "{raw}");
    assert_eq!(echo.inactive_flows, 0, "established only: {raw}");
    assert_eq!(echo.affinity_seconds, None, "{raw}");
    let port = &echo.ports[0];
    assert_eq!(
        (port.protocol.as_str(), port.port, port.target_port.as_str()),
        ("TCP", 8080, "5678")
    );
    assert_eq!(port.endpoints.len(), 3);
    assert!(port.endpoints.iter().all(|e| e.state == "ready"), "{raw}");
    assert_eq!(
        port.endpoints.iter().map(|e| e.active_flows).sum::<u64>(),
        HELD as u64
    );
    for (_, pod) in &held {
        let e = port
            .endpoints
            .iter()
            .find(|e| e.pod.as_deref() == Some(pod.as_str()))
            .unwrap_or_else(|| panic!("{pod} answered but is no endpoint in {raw}"));
        assert!(e.active_flows > 0, "{pod} holds a connection: {raw}");
    }

    // Conntrack: every held connection is one flow, both directions.
    let text = cipgw_ok(&lab, &["conntrack", "--vip", &vip.to_string()]);
    for p in &client_ports {
        assert!(
            text.contains(&format!("{client_ip}:{p}")),
            "flow from port {p} missing:\n{text}"
        );
    }
    assert!(
        text.contains(&format!("flows 1-{HELD} of {HELD}")),
        "{text}"
    );
    let raw = cipgw_ok(&lab, &["conntrack", "--vip", &vip.to_string(), "--json"]);
    let flows: ConntrackView = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{e}: {raw}"));
    assert_eq!(flows.total, HELD);
    let seen: BTreeSet<u16> = flows.flows.iter().map(|f| f.client.port()).collect();
    assert_eq!(seen, client_ports);
    for f in &flows.flows {
        assert!(f.forward && f.reply, "{f:?}");
        assert_eq!(f.vip, std::net::SocketAddr::V4(target));
        assert_eq!(f.state, "tcp_established", "{f:?}");
        assert_eq!(f.backend.port(), TARGET_PORT);
        assert_eq!(
            (f.packets, f.bytes),
            (None, None),
            "no counts without --conntrack-accounting"
        );
    }
    // One client port: its flow and the Pod that answered it.
    let (stream, pod) = &held[0];
    let local = stream.local_addr().expect("local address").to_string();
    let raw = cipgw_ok(&lab, &["conntrack", "--client", &local, "--json"]);
    let one: ConntrackView = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{e}: {raw}"));
    assert_eq!(one.total, 1, "{raw}");
    let pod_ip = lab
        .info()
        .pods
        .iter()
        .find(|p| &p.name == pod)
        .map(|p| p.iface.addr);
    assert_eq!(
        Some(one.flows[0].backend.ip()),
        pod_ip.map(std::net::IpAddr::from),
        "{raw}"
    );
    // Paging.
    let text = cipgw_ok(&lab, &["conntrack", "--limit", "2", "--offset", "1"]);
    assert!(text.contains(&format!("flows 2-3 of {HELD}")), "{text}");
    // A bad filter is the user's fault: exit 64 with the reason.
    let out = cipgw(&lab, &["conntrack", "--vip", "not-an-ip"]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not-an-ip"),
        "{out:?}"
    );

    // Status.
    let text = cipgw_ok(&lab, &["status"]);
    assert!(
        text.contains("ready") && text.contains(&format!("core {worker}")),
        "{text}"
    );
    let raw = cipgw_ok(&lab, &["status", "--json"]);
    let status: StatusView = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{e}: {raw}"));
    assert!(status.ready);
    assert_eq!(status.table.forwarded_services, 2);
    assert_eq!(status.conntrack.flows, HELD);
    assert_eq!(status.workers.len(), 1);
    assert_eq!(status.interfaces, lab.info().gateway.ifaces());

    // The control loop's syncs: a changed file is applied and counted,
    // an invalid one is counted as failed and shows as the last error.
    let before = status.control.syncs_ok;
    let mut more = docs.clone();
    more.push(support::service(
        "extra",
        &lab.info().vip(20).to_string(),
        Some("echo"),
        &[HTTP],
    ));
    lab.control_file(&more);
    let applied = wait_for_status(&lab, |s| s.table.generation >= 2);
    assert!(applied.control.syncs_ok > before, "{applied:?}");
    assert_eq!(applied.table.forwarded_services, 3);
    lab.control_file(&["kind: Service\nmetadata: [not a map\n".to_owned()]);
    let failed = wait_for_status(&lab, |s| s.control.syncs_failed > 0);
    assert!(failed.control.last_error.is_some(), "{failed:?}");
    assert_eq!(failed.table.generation, applied.table.generation);
    let text = cipgw_ok(&lab, &["status"]);
    assert!(text.contains("last error"), "{text}");

    // Nothing listening: a clear error.
    let out = cipgw(&lab, &["services", "--admin", "127.0.0.1:1"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no cipgw admin endpoint at 127.0.0.1:1: connection refused"),
        "{stderr}"
    );

    // --log-format json: the gateway above reported ready through JSON
    // lines; one that fails to start logs what it did as JSON objects
    // before the error main prints.
    let control = lab.write_file("valid.yaml", &docs).display().to_string();
    let cidr = lab.info().vip_range.to_string();
    let out = cipgw(
        &lab,
        &[
            "--log-format",
            "json",
            "--log-level",
            "info",
            "run",
            "--iface",
            "cipgw-nosuch0",
            "--control-file",
            &control,
            "--service-cidr",
            &cidr,
        ],
    );
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logged: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("cipgw: "))
        .collect();
    assert!(!logged.is_empty(), "nothing logged: {stderr}");
    for line in logged {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }

    // Closed connections linger in conntrack (FIN_WAIT, TIME_WAIT): they
    // are inactive, as ipvsadm's InActConn, not active.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let raw = cipgw_ok(&lab, &["services", "--json"]);
        let services: ServicesView =
            serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{e}: {raw}"));
        let echo = services
            .services
            .iter()
            .find(|s| s.name == "echo")
            .expect("echo");
        if (echo.active_flows, echo.inactive_flows) == (0, HELD as u64) {
            let text = cipgw_ok(&lab, &["services"]);
            assert!(
                text.contains("InActConn") && text.contains("Affinity"),
                "{text}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "closed connections are not all inactive: {raw}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.stop_gateway();
}

/// The next read on `stream` after sending a line: a RST must end it
/// (ECONNRESET), not a reply or a timeout.
fn assert_reset(lab: &Lab, stream: &TcpStream, what: &str) {
    let mut stream = stream.try_clone().expect("clone the stream");
    let outcome = support::request(&mut stream);
    match outcome {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            eprintln!("{what}: reset, as expected");
        }
        other => lab.fail(format_args!(
            "{what}: the next segment must be answered with a RST, got {other:?}"
        )),
    }
}

#[test]
fn conntrack_shows_expiry_and_deletes_flows() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    const HELD: usize = 6;
    let mut lab = Lab::build(Topology::two_arm("admdel").pods(2));
    lab.tcp_echo(TARGET_PORT);
    let vip = lab.info().vip(10);
    let docs = lab.selector_service("echo", vip, &[HTTP], &[0, 1]);
    lab.control_file(&docs);
    lab.start_gateway_with(&["--conntrack-accounting"]);

    let target = SocketAddrV4::new(vip, HTTP.port);
    // Held until each Pod has two connections at least (bounded).
    let held = lab.in_client(move || {
        let mut held: Vec<(TcpStream, String)> = Vec::new();
        for _ in 0..40 {
            held.push(hold_connection(target)?);
            let mut per_pod = std::collections::BTreeMap::<&str, usize>::new();
            for (_, pod) in &held {
                *per_pod.entry(pod.as_str()).or_default() += 1;
            }
            if held.len() >= HELD && per_pod.len() == 2 && per_pod.values().all(|&n| n >= 2) {
                return Ok(held);
            }
        }
        Err(format!(
            "both Pods did not answer two of 40 connections: {held:?}"
        ))
    });
    let held = held.unwrap_or_else(|e| lab.fail(format_args!("holding TCP connections: {e}")));

    // Every flow shows its expiry: established, 24 h from its last packet.
    let raw = cipgw_ok(&lab, &["conntrack", "--vip", &vip.to_string(), "--json"]);
    let flows: ConntrackView = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{e}: {raw}"));
    assert_eq!(flows.total, held.len(), "{raw}");
    for f in &flows.flows {
        assert_eq!(f.state, "tcp_established", "{f:?}");
        let left = f
            .expires_seconds
            .unwrap_or_else(|| panic!("no expiry: {f:?}"));
        assert!(
            (86_390..=86_400).contains(&left),
            "24 h less a moment: {f:?}"
        );
        // --conntrack-accounting: SYN, ACK and the request went to the
        // Pod (and maybe an ACK more), SYN-ACK and the answer came back;
        // every frame at least an Ethernet, IP and TCP header.
        let packets = f
            .packets
            .unwrap_or_else(|| panic!("no packet counts: {f:?}"));
        let bytes = f.bytes.unwrap_or_else(|| panic!("no byte counts: {f:?}"));
        assert!(
            packets[0] >= 3 && packets[1] >= 2,
            "packets to the Pod and back: {f:?}"
        );
        for way in 0..2 {
            assert!(bytes[way] >= 54 * packets[way], "bytes {way}: {f:?}");
        }
    }
    let text = cipgw_ok(&lab, &["conntrack", "--vip", &vip.to_string()]);
    assert!(
        text.contains("Expires") && (text.contains(" 86400 ") || text.contains(" 8639")),
        "{text}"
    );
    let first = &flows.flows[0];
    let shown = format!(
        "{}/{}",
        first.packets.expect("counted")[0],
        first.packets.expect("counted")[1]
    );
    assert!(
        text.contains("Packets") && text.contains(&shown),
        "packets column: {text}"
    );

    // --delete needs one flow's 5-tuple or a backend.
    for unselective in [
        &["conntrack", "--delete"][..],
        &["conntrack", "--delete", "--protocol", "tcp"],
        &["conntrack", "--delete", "--vip", &vip.to_string()],
    ] {
        let out = cipgw(&lab, unselective);
        assert_eq!(out.status.code(), Some(64), "{unselective:?}: {out:?}");
    }

    // One flow by its 5-tuple: gone from the table, and its next segment
    // is answered with a RST; the other connections go on.
    let (first, first_pod) = &held[0];
    let local = first.local_addr().expect("local address");
    let out = cipgw_ok(
        &lab,
        &[
            "conntrack",
            "--delete",
            "--protocol",
            "tcp",
            "--client",
            &local.to_string(),
            "--vip",
            &target.to_string(),
        ],
    );
    assert_eq!(out.trim(), "1 flow deleted");
    let raw = cipgw_ok(
        &lab,
        &["conntrack", "--client", &local.to_string(), "--json"],
    );
    let gone: ConntrackView = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{e}: {raw}"));
    assert_eq!(gone.total, 0, "{raw}");
    assert_reset(&lab, first, &format!("the deleted flow from {local}"));
    for (stream, pod) in &held[1..] {
        let mut stream = stream.try_clone().expect("clone the stream");
        let reply = support::request(&mut stream)
            .unwrap_or_else(|e| lab.fail(format_args!("a connection to {pod} was cut: {e}")));
        assert!(reply.contains(pod.as_str()), "{reply}");
    }

    // Every flow of a backend: the other Pod's connections go on.
    let pod_of = |name: &str| {
        lab.info()
            .pods
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.iface.addr)
            .unwrap_or_else(|| panic!("no Pod {name}"))
    };
    let doomed_ip = pod_of(first_pod);
    let doomed: Vec<&(TcpStream, String)> =
        held[1..].iter().filter(|(_, p)| p == first_pod).collect();
    let backend = SocketAddrV4::new(doomed_ip, TARGET_PORT).to_string();
    assert!(!doomed.is_empty(), "{first_pod} holds two connections");
    let raw = cipgw_ok(
        &lab,
        &["conntrack", "--delete", "--backend", &backend, "--json"],
    );
    let deleted: cipgw::admin::ConntrackDeleted =
        serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{e}: {raw}"));
    assert_eq!(deleted.deleted, doomed.len(), "{raw}");
    for (stream, pod) in &held[1..] {
        if pod == first_pod {
            assert_reset(&lab, stream, &format!("a deleted flow to {pod}"));
        } else {
            let mut stream = stream.try_clone().expect("clone the stream");
            let reply = support::request(&mut stream)
                .unwrap_or_else(|e| lab.fail(format_args!("a connection to {pod} was cut: {e}")));
            assert!(reply.contains(pod.as_str()), "{reply}");
        }
    }
    let raw = cipgw_ok(&lab, &["conntrack", "--backend", &backend, "--json"]);
    let left: ConntrackView = serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{e}: {raw}"));
    assert_eq!(left.total, 0, "{raw}");
    let status = wait_for_status(&lab, |s| s.conntrack.deleted > 0);
    assert_eq!(status.conntrack.deleted, 1 + doomed.len() as u64);
    let exp = scrape(&lab);
    assert_eq!(
        counter(&exp, "cipgw_conntrack_deleted_total", &[]),
        1 + doomed.len() as u64
    );
    lab.assert_log_contains("deleted flows (DELETE /api/conntrack)");
    lab.stop_gateway();
}

#[test]
fn services_count_packets_per_endpoint() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    /// Exchanges per batch, and batches at most until both Pods answered.
    const BATCH: usize = 20;
    const BATCHES: usize = 10;
    let mut lab = Lab::build(Topology::two_arm("admendp").pods(2));
    lab.udp_echo(DNS.target);
    let vip = lab.info().vip(53);
    let docs = lab.selector_service("dns", vip, &[DNS], &[0, 1]);
    lab.control_file(&docs);
    lab.start_gateway();

    // Each exchange is a new flow with a random endpoint: send until
    // both Pods have answered.
    let target = SocketAddrV4::new(vip, DNS.port);
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..BATCHES {
        for (pod, n) in lab.udp_exchanges(target, BATCH) {
            *served.entry(pod).or_default() += n;
        }
        if served.len() == 2 {
            break;
        }
    }
    assert_eq!(served.len(), 2, "both Pods answered: {served:?}");
    let sent: usize = served.values().sum();

    // The port counts two packets (request and reply) per exchange.
    let deadline = Instant::now() + SETTLE_WITHIN;
    let (raw, port) = loop {
        let raw = cipgw_ok(&lab, &["services", "--json"]);
        let view: ServicesView =
            serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{e}: {raw}"));
        let port = view
            .services
            .iter()
            .find(|s| s.name == "dns")
            .and_then(|s| s.ports.first().cloned())
            .unwrap_or_else(|| panic!("no dns Service port in {raw}"));
        if port.packets == Some(2 * sent as u64) || Instant::now() > deadline {
            break (raw, port);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(port.packets, Some(2 * sent as u64), "{raw}");
    // One flow per exchange, unless the kernel gave a later socket the
    // same source port while the first flow was still tracked.
    let flows = port
        .flows
        .unwrap_or_else(|| panic!("port not counted: {raw}"));
    assert!(flows > 0 && flows <= sent as u64, "{sent} exchanges: {raw}");
    let sum = |f: fn(&cipgw::admin::EndpointView) -> Option<u64>| {
        port.endpoints
            .iter()
            .map(|e| f(e).unwrap_or_else(|| panic!("endpoint {e:?} not counted: {raw}")))
            .sum::<u64>()
    };
    assert_eq!(Some(sum(|e| e.packets)), port.packets, "{raw}");
    assert_eq!(Some(sum(|e| e.bytes)), port.bytes, "{raw}");
    assert_eq!(Some(sum(|e| e.flows)), port.flows, "{raw}");
    for (pod, &n) in &served {
        let e = port
            .endpoints
            .iter()
            .find(|e| e.pod.as_deref() == Some(pod.as_str()))
            .unwrap_or_else(|| panic!("{pod} answered but is no endpoint in {raw}"));
        assert_eq!(e.packets, Some(2 * n as u64), "{pod} answered {n}: {raw}");
        assert!(
            e.flows.is_some_and(|f| f > 0 && f <= n as u64),
            "{pod} answered {n}: {raw}"
        );
    }

    // The text listing: Flows and Packets on each endpoint's line.
    let text = cipgw_ok(&lab, &["services"]);
    for e in &port.endpoints {
        let endpoint = format!(" {}:{} ", e.ip, e.port);
        let line = text
            .lines()
            .find(|l| l.starts_with("  ->") && l.contains(&endpoint))
            .unwrap_or_else(|| panic!("no line for endpoint {endpoint} in\n{text}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        let want = [e.flows, e.packets].map(|n| n.expect("counted").to_string());
        assert_eq!(
            fields[fields.len() - 3..fields.len() - 1],
            want,
            "Flows and Packets of {endpoint}: {line}"
        );
    }
    lab.stop_gateway();
}

/// Two workers, each with a queue of both gateway links: the client's
/// and the Pods' kernels pick a queue per flow, so a connection's packets
/// reach one worker or the other, its replies maybe the other one.
#[test]
fn two_workers_on_two_queues_share_one_table() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    // Each connection takes a queue at random (the socket's hash): all
    // 40 on one queue is a chance of 2^-39.
    const CONNECTIONS: usize = 40;
    const REQUESTS: usize = 3;
    const EXCHANGES: usize = 20;
    let mut lab = Lab::build(Topology::two_arm("twoworkers").pods(3).queues(2));
    lab.tcp_echo(TARGET_PORT);
    lab.udp_echo(support::UDP_TARGET_PORT);
    let vip = lab.info().vip(10);
    let docs = lab.selector_service("echo", vip, &[HTTP, DNS], &[0, 1, 2]);
    lab.control_file(&docs);
    lab.use_cores("0,1");
    lab.start_gateway();

    // Every session's requests were answered by one Pod (tcp_sessions
    // checks it) over a socket connected to the VIP.
    let served = lab.tcp_sessions(SocketAddrV4::new(vip, HTTP.port), CONNECTIONS, REQUESTS);
    assert_eq!(
        served.values().sum::<usize>(),
        CONNECTIONS,
        "sessions by Pod: {served:?}"
    );
    assert_eq!(
        lab.accepted(TARGET_PORT),
        CONNECTIONS as u64,
        "the Pods accepted a different number of connections than the client made"
    );
    let status = wait_for_status(&lab, |s| s.totals.new_flows >= CONNECTIONS as u64);
    let cores: Vec<usize> = status.workers.iter().map(|w| w.core).collect();
    assert_eq!(cores, [0, 1], "one worker per core: {status:?}");
    for w in &status.workers {
        assert!(
            w.counters.new_flows > 0 && w.counters.forwarded > 0,
            "the worker on core {} took no connection: {:?}",
            w.core,
            w.counters
        );
    }
    let new_flows: Vec<u64> = status
        .workers
        .iter()
        .map(|w| w.counters.new_flows)
        .collect();
    eprintln!("new flows per worker (cores 0, 1): {new_flows:?}");
    assert_eq!(
        new_flows.iter().sum::<u64>(),
        CONNECTIONS as u64,
        "new flows per worker {new_flows:?}"
    );
    assert_eq!(
        status.conntrack.inserted, CONNECTIONS as u64,
        "the table's inserts, summed over its workers' parts"
    );

    // UDP: every datagram's answer comes from the VIP (udp_exchanges
    // checks it), whichever worker its request and its answer reached.
    let served = lab.udp_exchanges(SocketAddrV4::new(vip, DNS.port), EXCHANGES);
    assert_eq!(
        served.values().sum::<usize>(),
        EXCHANGES,
        "answers by Pod: {served:?}"
    );
    lab.stop_gateway();
}
