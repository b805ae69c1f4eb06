//! Two gateways behind ECMP routes on both sides (forwarder/src/lab/ecmp.rs):
//! with `--lb maglev` every connection survives a gateway leaving and
//! returning, and stays on its Pod; with `--lb random` the same shows what
//! breaks, which is why the mode exists.
//!
//! Cases:
//! - `maglev_gateways_carry_every_flow_through_a_failover`: 100
//!   long-lived TCP connections and 100 UDP flows (one socket each)
//!   through a VIP, spread by the client's layer-4 ECMP hash over both
//!   gateways, with replies spread by the Pods' own ECMP route (so many
//!   flows go out through one gateway and come back through the other:
//!   stateless replies from the first packet on). Gateway 1 is stopped and
//!   taken out of both routes, then started afresh (empty flow table) and
//!   put back; after each step every connection still answers, from the
//!   Pod it started on, and every UDP flow reaches its Pod. The gateways'
//!   /metrics show the flows they adopted and the replies they rewrote.
//! - `random_gateways_lose_flows_behind_ecmp`: the same with `--lb
//!   random` loses connections (asymmetric paths never establish, moved
//!   ones are reset) and moves UDP flows between Pods; the test asserts
//!   that something breaks and prints what.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use cipgw::admin::client;
use cipgw::lab::{self, EcmpTopology, GatewayProcess, Members};

use support::{TempDir, DNS, HTTP};

#[path = "support/mod.rs"]
mod support;

const CONNECTIONS: usize = 100;
const UDP_FLOWS: usize = 100;
const VIP_HOST: u8 = 10;
const READY_WITHIN: Duration = Duration::from_secs(20);
const STOP_WITHIN: Duration = Duration::from_secs(5);
/// How long one request may take; TCP retransmits within it.
const ANSWER_WITHIN: Duration = Duration::from_secs(3);
/// One UDP datagram's wait; each flow gets a few tries (UDP may lose a
/// datagram while a next hop resolves; a lost one is not a moved flow).
const UDP_WAIT: Duration = Duration::from_millis(700);
const UDP_TRIES: usize = 3;
const SEED: &str = "0x5eed0ecb";
/// The first round's request (connections that never opened fail then).
const FIRST_ROUND: &str = "one";

/// Two gateways, the echo Pods and the control file, cleaned up on drop
/// (gateways killed, namespaces removed), also when a test panics.
struct EcmpLab {
    gateways: [Option<GatewayProcess>; 2],
    _servers: Vec<lab::EchoServer>,
    control: std::path::PathBuf,
    _dir: TempDir,
    lb: &'static str,
    topology: EcmpTopology,
}

impl Drop for EcmpLab {
    fn drop(&mut self) {
        if thread::panicking() {
            for (i, gw) in self.gateways.iter().enumerate() {
                if let Some(gw) = gw {
                    let log = gw.log();
                    let tail = &log[log.len().saturating_sub(30)..];
                    eprintln!("--- gateway {} log tail ---\n{}", i + 1, tail.join("\n"));
                }
            }
        }
    }
}

impl EcmpLab {
    fn build(purpose: &str, lb: &'static str) -> EcmpLab {
        if let Ok(stale) = lab::remove_stale_namespaces() {
            if !stale.is_empty() {
                eprintln!("removed stale lab namespaces: {stale:?}");
            }
        }
        let topology =
            EcmpTopology::build(purpose, 3).unwrap_or_else(|e| panic!("building the lab: {e}"));
        let mut servers = topology
            .start_tcp_echo(HTTP.target)
            .unwrap_or_else(|e| panic!("TCP echo servers: {e}"));
        servers.extend(
            topology
                .start_udp_echo(DNS.target)
                .unwrap_or_else(|e| panic!("UDP echo servers: {e}")),
        );
        let vip = topology.vip(VIP_HOST).to_string();
        let mut docs = vec![support::service("echo", &vip, Some("echo"), &[HTTP, DNS])];
        docs.extend(topology.pods().iter().map(|p| support::pod(p, "echo")));
        let dir = TempDir::new();
        let control = dir.write("services.yaml", &docs.join("---\n"));
        let mut lab = EcmpLab {
            gateways: [None, None],
            _servers: servers,
            control,
            _dir: dir,
            lb,
            topology,
        };
        lab.start(0);
        lab.start(1);
        lab
    }

    /// Starts gateway `i` with an empty flow table (`--state-dir none`).
    fn start(&mut self, i: usize) {
        assert!(self.gateways[i].is_none(), "gateway {} runs", i + 1);
        let mut args: Vec<String> = Vec::new();
        for iface in self.topology.gateway_ifaces(i) {
            args.extend(["--iface".into(), iface.into()]);
        }
        args.extend(
            [
                "--control-file",
                &self.control.display().to_string(),
                "--service-cidr",
                &self.topology.vip_range().to_string(),
                "--cores",
                "1",
                "--state-dir",
                "none",
                "--lb",
                self.lb,
                "--hash-seed",
                SEED,
            ]
            .map(str::to_owned),
        );
        let args = support::gateway_args(args, &[]);
        let gw = GatewayProcess::start(
            support::exe(),
            self.topology.gateway(i),
            &args,
            false,
            READY_WITHIN,
        )
        .unwrap_or_else(|e| panic!("starting gateway {}: {e}", i + 1));
        self.gateways[i] = Some(gw);
    }

    fn stop(&mut self, i: usize) {
        let gw = self.gateways[i].take().expect("the gateway runs");
        let status = gw
            .stop(STOP_WITHIN)
            .unwrap_or_else(|e| panic!("stopping gateway {}: {e}", i + 1));
        assert!(status.success(), "gateway {} exited with {status}", i + 1);
    }

    fn members(&self, members: Members) {
        self.topology
            .set_members(members)
            .unwrap_or_else(|e| panic!("routing over {members:?}: {e}"));
    }

    /// The value of counter `name` on gateway `i`'s /metrics.
    fn counter(&self, i: usize, name: &str) -> u64 {
        let reply = self
            .topology
            .gateway(i)
            .run(|| {
                client::get(
                    SocketAddr::from(([127, 0, 0, 1], 9477)),
                    "/metrics",
                    Duration::from_secs(5),
                )
            })
            .unwrap_or_else(|e| panic!("entering gateway {}: {e}", i + 1))
            .unwrap_or_else(|e| panic!("GET /metrics of gateway {}: {e}", i + 1));
        reply
            .body
            .lines()
            .find_map(|l| {
                let (metric, value) = l.split_once(' ')?;
                (metric == name).then(|| value.trim().parse::<f64>().ok())?
            })
            .unwrap_or_else(|| panic!("{name} not on gateway {}'s /metrics", i + 1)) as u64
    }

    fn vip(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.topology.vip(VIP_HOST), port)
    }
}

/// `podN` from an echo answer `Hello from podN at IP`.
fn pod_of(answer: &str) -> Option<String> {
    answer
        .strip_prefix("Hello from ")?
        .split_whitespace()
        .next()
        .map(str::to_owned)
}

/// A long-lived connection and the Pod that answered it so far.
struct Connection {
    stream: Option<BufReader<TcpStream>>,
    pod: Option<String>,
}

/// Sends one line and reads one answer.
fn exchange(stream: &mut BufReader<TcpStream>, round: &str) -> Result<String, String> {
    stream
        .get_mut()
        .write_all(format!("{round}\n").as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut line = String::new();
    match stream.read_line(&mut line) {
        Ok(0) => Err("closed by the peer".into()),
        Ok(_) => pod_of(&line).ok_or_else(|| format!("unexpected answer {line:?}")),
        Err(e) => Err(format!("receive: {e}")),
    }
}

/// Opens the connections in the client's namespace, all at once.
fn connect_all(lab: &EcmpLab) -> Vec<Connection> {
    let target = lab.vip(HTTP.port);
    lab.topology
        .client()
        .run(move || {
            // Threads spawned here share this thread's network namespace.
            thread::scope(|scope| {
                let handles: Vec<_> = (0..CONNECTIONS)
                    .map(|_| {
                        scope.spawn(move || {
                            let stream =
                                TcpStream::connect_timeout(&target.into(), ANSWER_WITHIN).ok()?;
                            stream.set_read_timeout(Some(ANSWER_WITHIN)).ok()?;
                            Some(BufReader::new(stream))
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| Connection {
                        stream: h.join().expect("connect thread"),
                        pod: None,
                    })
                    .collect()
            })
        })
        .unwrap_or_else(|e| panic!("entering the client namespace: {e}"))
}

/// One request on every open connection, in parallel. Returns how many
/// connections failed this round (never connected, closed, reset, timed
/// out, or answered by another Pod than before); a failed connection is
/// closed and not counted again.
fn tcp_round(connections: &mut [Connection], round: &str) -> (usize, Vec<String>) {
    let results: Vec<Option<Result<String, String>>> = thread::scope(|scope| {
        let handles: Vec<_> = connections
            .iter_mut()
            .map(|c| {
                scope.spawn(move || match c.stream.as_mut() {
                    Some(stream) => Some(exchange(stream, round)),
                    None if c.pod.is_none() && round == FIRST_ROUND => {
                        Some(Err("never connected".into()))
                    }
                    None => None,
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("request thread"))
            .collect()
    });
    let mut failures = Vec::new();
    for (i, (c, result)) in connections.iter_mut().zip(results).enumerate() {
        let problem = match (result, &c.pod) {
            (None, _) => None,
            (Some(Ok(pod)), Some(before)) if &pod != before => {
                Some(format!("connection {i}: answered by {pod}, was {before}"))
            }
            (Some(Ok(pod)), _) => {
                c.pod = Some(pod);
                None
            }
            (Some(Err(e)), _) => Some(format!("connection {i}: {e}")),
        };
        if let Some(problem) = problem {
            c.stream = None;
            failures.push(problem);
        }
    }
    (failures.len(), failures)
}

/// A UDP flow: one socket (one source port) and the Pod it reached.
struct UdpFlow {
    socket: UdpSocket,
    pod: Option<String>,
}

fn udp_flows(lab: &EcmpLab) -> Vec<UdpFlow> {
    let target = lab.vip(DNS.port);
    lab.topology
        .client()
        .run(move || {
            (0..UDP_FLOWS)
                .map(|i| {
                    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
                        .unwrap_or_else(|e| panic!("UDP socket {i}: {e}"));
                    socket
                        .connect(target)
                        .unwrap_or_else(|e| panic!("UDP connect {i}: {e}"));
                    socket
                        .set_read_timeout(Some(UDP_WAIT))
                        .unwrap_or_else(|e| panic!("UDP timeout {i}: {e}"));
                    UdpFlow { socket, pod: None }
                })
                .collect()
        })
        .unwrap_or_else(|e| panic!("entering the client namespace: {e}"))
}

/// One datagram exchange on every flow, in parallel (a few tries each).
/// Returns the flows that got no answer or another Pod than before.
fn udp_round(flows: &mut [UdpFlow], round: &str) -> (usize, Vec<String>) {
    let answers: Vec<Option<String>> = thread::scope(|scope| {
        let handles: Vec<_> = flows
            .iter()
            .map(|f| {
                scope.spawn(move || {
                    let mut buf = [0u8; 512];
                    for _ in 0..UDP_TRIES {
                        f.socket.send(round.as_bytes()).ok()?;
                        if let Ok(n) = f.socket.recv(&mut buf) {
                            return pod_of(&String::from_utf8_lossy(&buf[..n]));
                        }
                    }
                    None
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("UDP thread"))
            .collect()
    });
    let mut failures = Vec::new();
    for (i, (f, answer)) in flows.iter_mut().zip(answers).enumerate() {
        match (answer, &f.pod) {
            (None, _) => failures.push(format!("UDP flow {i}: no answer")),
            (Some(pod), Some(before)) if &pod != before => {
                failures.push(format!("UDP flow {i}: reached {pod}, was {before}"))
            }
            (Some(pod), _) => f.pod = Some(pod),
        }
    }
    (failures.len(), failures)
}

/// How many flows each Pod holds.
fn spread<'a>(pods: impl Iterator<Item = &'a Option<String>>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for pod in pods.flatten() {
        *out.entry(pod.clone()).or_default() += 1;
    }
    out
}

/// What a run of the scenario saw.
#[derive(Debug, Default)]
struct Outcome {
    /// Per step: TCP failures, UDP failures, and the first few messages.
    steps: Vec<(&'static str, usize, usize, Vec<String>)>,
}

impl Outcome {
    fn record(&mut self, step: &'static str, tcp: (usize, Vec<String>), udp: (usize, Vec<String>)) {
        let mut messages = tcp.1;
        messages.extend(udp.1);
        messages.truncate(6);
        eprintln!(
            "{step}: {} TCP connections and {} UDP flows failed {messages:?}",
            tcp.0, udp.0
        );
        self.steps.push((step, tcp.0, udp.0, messages));
    }

    fn failures(&self) -> usize {
        self.steps.iter().map(|s| s.1 + s.2).sum()
    }
}

/// Opens the flows through both gateways, takes gateway 1 out (stopped,
/// routes over gateway 2 only), brings it back (started afresh, routes
/// over both), exchanging on every flow after each step.
fn failover(lab: &mut EcmpLab) -> (Outcome, Vec<Connection>, Vec<UdpFlow>) {
    let mut outcome = Outcome::default();
    let mut connections = connect_all(lab);
    let mut flows = udp_flows(lab);
    outcome.record(
        "through both gateways",
        tcp_round(&mut connections, FIRST_ROUND),
        udp_round(&mut flows, FIRST_ROUND),
    );
    eprintln!(
        "spread: TCP {:?}, UDP {:?}",
        spread(connections.iter().map(|c| &c.pod)),
        spread(flows.iter().map(|f| &f.pod))
    );

    lab.stop(0);
    lab.members(Members::Only(1));
    outcome.record(
        "gateway 1 stopped and out of both routes",
        tcp_round(&mut connections, "two"),
        udp_round(&mut flows, "two"),
    );

    lab.start(0);
    lab.members(Members::Both);
    outcome.record(
        "gateway 1 restarted (empty flow table) and back in both routes",
        tcp_round(&mut connections, "three"),
        udp_round(&mut flows, "three"),
    );
    (outcome, connections, flows)
}

#[test]
fn maglev_gateways_carry_every_flow_through_a_failover() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let started = Instant::now();
    let mut lab = EcmpLab::build("ecmpmaglev", "maglev");
    let (outcome, connections, flows) = failover(&mut lab);
    assert_eq!(
        outcome.failures(),
        0,
        "under Maglev no flow breaks or moves: {:?}",
        outcome.steps
    );
    let tcp = spread(connections.iter().map(|c| &c.pod));
    let udp = spread(flows.iter().map(|f| &f.pod));
    assert_eq!(tcp.len(), 3, "connections reach every Pod: {tcp:?}");
    assert_eq!(udp.len(), 3, "UDP flows reach every Pod: {udp:?}");

    // Gateway 2 took over gateway 1's connections mid-flow when it left;
    // gateway 1, fresh, took some back when it returned; replies that
    // came back through the other gateway than their requests were
    // rewritten without state.
    let adopted = [
        lab.counter(0, "cipgw_adopted_flows_total"),
        lab.counter(1, "cipgw_adopted_flows_total"),
    ];
    let stateless = [
        lab.counter(0, "cipgw_stateless_replies_total"),
        lab.counter(1, "cipgw_stateless_replies_total"),
    ];
    eprintln!("adopted flows {adopted:?}, stateless replies {stateless:?}");
    assert!(adopted[1] > 0, "gateway 2 adopted gateway 1's connections");
    assert!(
        adopted[0] > 0,
        "the restarted gateway 1 adopted connections"
    );
    assert!(
        stateless[0] + stateless[1] > 0,
        "asymmetric paths needed stateless replies"
    );
    eprintln!("ECMP Maglev scenario took {:?}", started.elapsed());
}

#[test]
fn random_gateways_lose_flows_behind_ecmp() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let started = Instant::now();
    let mut lab = EcmpLab::build("ecmprandom", "random");
    let (outcome, _, _) = failover(&mut lab);
    // Under random choice each gateway decides alone: a connection whose
    // replies come back through the other gateway never establishes
    // (that gateway drops replies of flows it does not know), one moved
    // to the other gateway is reset, and a UDP flow moved there may land
    // on another Pod. That is what --lb maglev is for.
    assert!(
        outcome.failures() > 0,
        "random choice behind ECMP was expected to lose flows: {:?}",
        outcome.steps
    );
    eprintln!("ECMP random scenario took {:?}", started.elapsed());
}
