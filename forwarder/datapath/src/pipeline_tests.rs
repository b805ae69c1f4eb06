//! Table-driven pipeline cases: input frame -> verdict and exact output
//! frame, on an in-memory setup (no AF_XDP). Frames are built with
//! etherparse, which computes every checksum from scratch, so a byte-exact
//! match also proves the incremental checksum updates.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use cipgw_config::{
    ClusterIp, Endpoint, EndpointState, Protocol, Service, ServiceKind, ServiceName, ServicePort,
    ServiceTable, TargetPort,
};
use etherparse::PacketBuilder;

use super::*;
use crate::reject::RefusalLimiter;
use crate::route::{Port, Route};

const CLIENT: [u8; 4] = [198, 18, 0, 2];
const VIP: [u8; 4] = [198, 18, 100, 10];
const UDP_VIP: [u8; 4] = [198, 18, 100, 20];
const EMPTY_VIP: [u8; 4] = [198, 18, 100, 30];
const POD1: [u8; 4] = [198, 18, 2, 11];
const GW_CLIENT_SIDE: [u8; 4] = [198, 18, 0, 1];

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const GW_CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const GW_POD_MAC: [u8; 6] = [2, 0, 0, 0, 2, 1];
const POD1_MAC: [u8; 6] = [2, 0, 0, 0, 2, 11];

const CLIENT_PORT: PortId = 0;
const POD_PORT: PortId = 1;

fn ep(ip: [u8; 4], port: u16) -> Endpoint {
    Endpoint {
        ip: ip.into(),
        port,
        state: EndpointState::READY,
        pod: None,
    }
}

fn port(port: u16, protocol: Protocol, target: u16, endpoints: Vec<Endpoint>) -> ServicePort {
    ServicePort {
        name: None,
        port,
        protocol,
        target_port: TargetPort::Number(target),
        endpoints,
    }
}

/// One backend per service so that the chosen backend is known.
fn table() -> CompiledTable {
    CompiledTable::compile(model_on(POD1), 1)
}

/// The services of [`table`], with `pod` as the echo and udp Services'
/// endpoint.
fn model_on(pod: [u8; 4]) -> Arc<ServiceTable> {
    let services = vec![
        Service {
            name: ServiceName::new("default", "echo"),
            kind: ServiceKind::ClusterIp,
            cluster_ip: ClusterIp::Vip(VIP.into()),
            session_affinity: None,
            ports: vec![port(8080, Protocol::Tcp, 5678, vec![ep(pod, 5678)])],
        },
        Service {
            name: ServiceName::new("default", "empty"),
            kind: ServiceKind::ClusterIp,
            cluster_ip: ClusterIp::Vip(EMPTY_VIP.into()),
            session_affinity: None,
            ports: vec![port(80, Protocol::Tcp, 80, vec![])],
        },
        Service {
            name: ServiceName::new("default", "headless"),
            kind: ServiceKind::ClusterIp,
            cluster_ip: ClusterIp::Headless,
            session_affinity: None,
            ports: vec![port(5432, Protocol::Tcp, 5432, vec![ep(POD1, 5432)])],
        },
        Service {
            name: ServiceName::new("default", "udp"),
            kind: ServiceKind::ClusterIp,
            cluster_ip: ClusterIp::Vip(UDP_VIP.into()),
            session_affinity: None,
            ports: vec![port(53, Protocol::Udp, 5353, vec![ep(pod, 5353)])],
        },
    ];
    Arc::new(ServiceTable { services })
}

/// Two-arm gateway: port 0 towards the client, port 1 towards the Pods;
/// the client's MAC is not resolved unless `client_resolved`.
fn net(client_resolved: bool) -> NetSnapshot {
    let ports = vec![
        Port {
            ifindex: 10,
            name: "gw-client".into(),
            mac: GW_CLIENT_MAC,
        },
        Port {
            ifindex: 11,
            name: "gw-pods".into(),
            mac: GW_POD_MAC,
        },
    ];
    let routes = vec![
        Route {
            dst: Ipv4Addr::new(198, 18, 0, 0),
            prefix_len: 24,
            ifindex: 10,
            gateway: None,
        },
        Route {
            dst: Ipv4Addr::new(198, 18, 2, 0),
            prefix_len: 24,
            ifindex: 11,
            gateway: None,
        },
    ];
    let mut neighbours = HashMap::new();
    neighbours.insert((11, POD1.into()), POD1_MAC);
    for last in [12, 13] {
        neighbours.insert((11, [198, 18, 2, last].into()), [2, 0, 0, 0, 2, last]);
    }
    if client_resolved {
        neighbours.insert((10, CLIENT.into()), CLIENT_MAC);
    }
    NetSnapshot::new(routes, neighbours, ports)
}

fn tcp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    ttl: u8,
    syn: bool,
) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.0, dst.0, ttl)
        .tcp(src.1, dst.1, 1000, 64240);
    let builder = if syn { builder.syn() } else { builder.ack(1) };
    let payload = b"GET / HTTP/1.0\r\n\r\n";
    let mut out = Vec::new();
    builder.write(&mut out, payload).expect("test frame builds");
    out
}

/// A SYN (with 18 bytes of data) from the client's `port` to `vip:dport`.
fn client_syn(port: u16, vip: [u8; 4], dport: u16) -> Vec<u8> {
    tcp(
        CLIENT_MAC,
        GW_CLIENT_MAC,
        (CLIENT, port),
        (vip, dport),
        64,
        true,
    )
}

/// An ACK with data from the client's `port` to `vip:dport`.
fn client_ack(port: u16, vip: [u8; 4], dport: u16) -> Vec<u8> {
    tcp(
        CLIENT_MAC,
        GW_CLIENT_MAC,
        (CLIENT, port),
        (vip, dport),
        64,
        false,
    )
}

/// Pod 1's SYN-flagged answer to the client's `port` (etherparse's
/// builder has no SYN+ACK; the pipeline only needs the direction).
fn pod_synack(port: u16) -> Vec<u8> {
    tcp(POD1_MAC, GW_POD_MAC, (POD1, 5678), (CLIENT, port), 64, true)
}

/// An ACK with data from Pod 1 to the client's `port`.
fn pod_ack(port: u16) -> Vec<u8> {
    tcp(
        POD1_MAC,
        GW_POD_MAC,
        (POD1, 5678),
        (CLIENT, port),
        64,
        false,
    )
}

fn udp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    ttl: u8,
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src.0, dst.0, ttl)
        .udp(src.1, dst.1)
        .write(&mut out, b"ping")
        .expect("test frame builds");
    out
}

/// The RST the gateway answers with: from `from` to `to`, sequence `seq`,
/// and an ACK of `ack` when given (RFC 9293 3.10.7.1).
fn rst(from: ([u8; 4], u16), to: ([u8; 4], u16), seq: u32, ack: Option<u32>) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(GW_CLIENT_MAC, CLIENT_MAC)
        .ipv4(from.0, to.0, 64)
        .tcp(from.1, to.1, seq, 0)
        .rst();
    let b = match ack {
        Some(n) => b.ack(n),
        None => b,
    };
    let mut out = Vec::new();
    b.write(&mut out, &[]).expect("test frame builds");
    out
}

/// The ICMP port unreachable answering `frame` (an untagged IPv4 frame
/// without options), quoting its IP header and 8 payload bytes.
fn unreachable(frame: &[u8]) -> Vec<u8> {
    let ip = &frame[14..];
    let (src, dst) = (
        [ip[12], ip[13], ip[14], ip[15]],
        [ip[16], ip[17], ip[18], ip[19]],
    );
    let mut out = Vec::new();
    PacketBuilder::ethernet2(GW_CLIENT_MAC, CLIENT_MAC)
        .ipv4(dst, src, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut out, &ip[..28])
        .expect("test frame builds");
    out
}

fn ping(src: [u8; 4], dst: [u8; 4], src_mac: [u8; 6], reply: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let b = PacketBuilder::ethernet2(src_mac, GW_CLIENT_MAC).ipv4(src, dst, 64);
    let b = if reply {
        b.icmpv4_echo_reply(0x4242, 3)
    } else {
        b.icmpv4_echo_request(0x4242, 3)
    };
    b.write(&mut out, b"0123456789abcdef")
        .expect("test frame builds");
    out
}

/// A pipeline over `conntrack` with fresh counters and a fixed seed.
fn pipeline(conntrack: Arc<Conntrack>) -> Pipeline {
    Pipeline::new(conntrack, Arc::new(WorkerCounters::default()), Rng::new(1))
}

struct Harness {
    pipeline: Pipeline,
    table: CompiledTable,
    net: NetSnapshot,
    /// The synthetic clock, seconds.
    now: u32,
}

impl Harness {
    fn new() -> Self {
        Self {
            pipeline: pipeline(Arc::new(Conntrack::default())),
            table: table(),
            net: net(true),
            now: 100,
        }
    }

    /// A harness whose conntrack the test can also reach directly.
    fn sharing_conntrack() -> (Self, Arc<Conntrack>) {
        let ct = Arc::new(Conntrack::default());
        let h = Self {
            pipeline: pipeline(Arc::clone(&ct)),
            ..Self::new()
        };
        (h, ct)
    }

    /// Runs a frame that arrived on the port its source MAC says, with
    /// room to grow; leaves `frame` as the frame that would leave.
    fn run(&mut self, frame: &mut Vec<u8>) -> Verdict {
        let ctx = BatchContext {
            table: &self.table,
            net: &self.net,
            now: self.now,
        };
        let ingress = if frame.get(6..12) == Some(&POD1_MAC[..]) {
            POD_PORT
        } else {
            CLIENT_PORT
        };
        let len = frame.len();
        frame.resize(len + 256, 0xee);
        let verdict = self.pipeline.process(frame, len, ingress, &ctx);
        frame.truncate(match verdict {
            Verdict::Respond { len, .. } => len,
            _ => len,
        });
        verdict
    }

    fn counters(&self) -> &WorkerCounters {
        self.pipeline.counters()
    }
}

struct Case {
    name: &'static str,
    input: Vec<u8>,
    verdict: Verdict,
    /// The exact frame expected after processing, when forwarded.
    output: Option<Vec<u8>>,
}

fn forward_cases() -> Vec<Case> {
    vec![
        Case {
            name: "new TCP flow to VIP is DNATed to the backend",
            input: client_syn(40000, VIP, 8080),
            verdict: Verdict::Forward { port: POD_PORT },
            output: Some(tcp(
                GW_POD_MAC,
                POD1_MAC,
                (CLIENT, 40000),
                (POD1, 5678),
                63,
                true,
            )),
        },
        Case {
            name: "established TCP flow keeps its backend",
            input: client_ack(40000, VIP, 8080),
            verdict: Verdict::Forward { port: POD_PORT },
            output: Some(tcp(
                GW_POD_MAC,
                POD1_MAC,
                (CLIENT, 40000),
                (POD1, 5678),
                63,
                false,
            )),
        },
        Case {
            name: "reply leaves from the VIP and service port",
            input: pod_ack(40000),
            verdict: Verdict::Forward { port: CLIENT_PORT },
            output: Some(tcp(
                GW_CLIENT_MAC,
                CLIENT_MAC,
                (VIP, 8080),
                (CLIENT, 40000),
                63,
                false,
            )),
        },
        Case {
            name: "UDP to a VIP port maps to its targetPort",
            input: udp(
                CLIENT_MAC,
                GW_CLIENT_MAC,
                (CLIENT, 33000),
                (UDP_VIP, 53),
                64,
            ),
            verdict: Verdict::Forward { port: POD_PORT },
            output: Some(udp(GW_POD_MAC, POD1_MAC, (CLIENT, 33000), (POD1, 5353), 63)),
        },
        Case {
            name: "UDP reply",
            input: udp(POD1_MAC, GW_POD_MAC, (POD1, 5353), (CLIENT, 33000), 64),
            verdict: Verdict::Forward { port: CLIENT_PORT },
            output: Some(udp(
                GW_CLIENT_MAC,
                CLIENT_MAC,
                (UDP_VIP, 53),
                (CLIENT, 33000),
                63,
            )),
        },
        Case {
            name: "traffic to the gateway itself is the kernel's",
            input: client_syn(40001, GW_CLIENT_SIDE, 22),
            verdict: Verdict::Pass,
            output: None,
        },
        Case {
            name: "a headless Service's Pod is reached directly, not by cipgw",
            input: client_syn(40002, POD1, 5432),
            verdict: Verdict::Pass,
            output: None,
        },
        Case {
            name: "a port the Service does not define is refused with a RST",
            input: client_syn(40003, VIP, 9999),
            verdict: Verdict::Respond {
                port: CLIENT_PORT,
                len: 54,
            },
            output: Some(rst((VIP, 9999), (CLIENT, 40003), 0, Some(1000 + 18 + 1))),
        },
        Case {
            name: "the right port with the wrong protocol: ICMP port unreachable",
            input: udp(CLIENT_MAC, GW_CLIENT_MAC, (CLIENT, 40003), (VIP, 8080), 64),
            verdict: Verdict::Respond {
                port: CLIENT_PORT,
                len: 14 + 20 + 8 + 28,
            },
            output: Some(unreachable(&udp(
                CLIENT_MAC,
                GW_CLIENT_MAC,
                (CLIENT, 40003),
                (VIP, 8080),
                64,
            ))),
        },
        Case {
            name: "a Service without endpoints refuses with a RST",
            input: client_syn(40004, EMPTY_VIP, 80),
            verdict: Verdict::Respond {
                port: CLIENT_PORT,
                len: 54,
            },
            output: Some(rst(
                (EMPTY_VIP, 80),
                (CLIENT, 40004),
                0,
                Some(1000 + 18 + 1),
            )),
        },
        Case {
            name: "a backend packet without a flow",
            input: pod_ack(50000),
            verdict: Verdict::Drop(DropReason::ReplyWithoutFlow),
            output: None,
        },
        Case {
            name: "TTL 1 is not forwarded",
            input: tcp(
                CLIENT_MAC,
                GW_CLIENT_MAC,
                (CLIENT, 40005),
                (VIP, 8080),
                1,
                true,
            ),
            verdict: Verdict::Drop(DropReason::TtlExceeded),
            output: None,
        },
    ]
}

#[test]
fn forwarding_cases() {
    let mut h = Harness::new();
    for case in forward_cases() {
        let mut frame = case.input.clone();
        let verdict = h.run(&mut frame);
        assert_eq!(verdict, case.verdict, "case {:?}", case.name);
        match case.output {
            Some(expected) => assert_eq!(frame, expected, "case {:?}: output frame", case.name),
            None => assert_eq!(
                frame, case.input,
                "case {:?}: frame must be untouched",
                case.name
            ),
        }
    }
    let c = h.counters();
    assert_eq!(
        c.new_flows.get(),
        2,
        "one TCP and one UDP flow; an expiring SYN creates none"
    );
    assert_eq!((c.forwarded.get(), c.replies.get()), (3, 2));
    assert_eq!(c.passed.get(), 2);
    assert_eq!(
        c.refusals.get(),
        3,
        "two RSTs and one ICMP port unreachable"
    );
    assert_eq!(c.drops_of(DropReason::NoServicePort), 2);
    assert_eq!(c.drops_of(DropReason::NoEndpoints), 1);
    assert_eq!(c.drops_of(DropReason::ReplyWithoutFlow), 1);
    assert_eq!(c.drops_of(DropReason::TtlExceeded), 1);
}

/// The worker prefetches a whole RX batch before processing it: the same
/// frames give the same verdicts and bytes with and without that pass,
/// and the malformed ones are harmless to it.
#[test]
fn prefetching_a_batch_changes_no_verdict_or_byte() {
    let mut plain = Harness::new();
    let mut batched = Harness::new();
    let mut inputs: Vec<Vec<u8>> = forward_cases().into_iter().map(|c| c.input).collect();
    let good = client_syn(40001, VIP, 8080);
    inputs.extend([
        vec![],
        good[..13].to_vec(),
        good[..20].to_vec(),
        good[..36].to_vec(),
    ]);
    for frame in &inputs {
        batched.pipeline.prefetch(frame);
    }
    batched.pipeline.prefetch_flows();
    for (i, input) in inputs.iter().enumerate() {
        let (mut a, mut b) = (input.clone(), input.clone());
        let (va, vb) = (plain.run(&mut a), batched.run(&mut b));
        assert_eq!(va, vb, "frame {i}: verdict");
        assert_eq!(a, b, "frame {i}: output bytes");
    }
    // More frames than one round holds are simply not prefetched.
    for _ in 0..PREFETCH_BATCH + 10 {
        batched.pipeline.prefetch(&good);
    }
    batched.pipeline.prefetch_flows();
}

#[test]
fn zero_udp_checksum_stays_zero() {
    let mut h = Harness::new();
    let mut frame = udp(
        CLIENT_MAC,
        GW_CLIENT_MAC,
        (CLIENT, 33001),
        (UDP_VIP, 53),
        64,
    );
    // UDP checksum at Ethernet 14 + IPv4 20 + 6.
    frame[40..42].copy_from_slice(&[0, 0]);
    assert_eq!(h.run(&mut frame), Verdict::Forward { port: POD_PORT });
    let mut expected = udp(GW_POD_MAC, POD1_MAC, (CLIENT, 33001), (POD1, 5353), 63);
    expected[40..42].copy_from_slice(&[0, 0]);
    assert_eq!(frame, expected);
}

#[test]
fn unresolved_neighbour_holds_the_frame() {
    let mut h = Harness::new();
    h.net = net(false);
    let mut syn = client_syn(40000, VIP, 8080);
    assert_eq!(h.run(&mut syn), Verdict::Forward { port: POD_PORT });
    let mut reply = pod_ack(40000);
    assert_eq!(
        h.run(&mut reply),
        Verdict::AwaitNeighbour {
            port: CLIENT_PORT,
            next_hop: CLIENT.into()
        }
    );
    // Completing L2 later yields exactly the forwarded frame.
    set_l2(&mut reply, GW_CLIENT_MAC, CLIENT_MAC);
    assert_eq!(
        reply,
        tcp(
            GW_CLIENT_MAC,
            CLIENT_MAC,
            (VIP, 8080),
            (CLIENT, 40000),
            63,
            false
        )
    );
}

#[test]
fn malformed_frames_are_counted_drops() {
    let good = client_syn(40000, VIP, 8080);
    let good_udp = udp(
        CLIENT_MAC,
        GW_CLIENT_MAC,
        (CLIENT, 33000),
        (UDP_VIP, 53),
        64,
    );
    let mutate = |base: &[u8], f: &dyn Fn(&mut Vec<u8>)| {
        let mut v = base.to_vec();
        f(&mut v);
        v
    };
    let cases: Vec<(&str, Vec<u8>, Verdict)> = vec![
        (
            "empty frame",
            vec![],
            Verdict::Drop(DropReason::TruncatedEthernet),
        ),
        (
            "13-byte frame",
            good[..13].to_vec(),
            Verdict::Drop(DropReason::TruncatedEthernet),
        ),
        (
            "ARP is the kernel's",
            mutate(&good, &|v| v[12..14].copy_from_slice(&[0x08, 0x06])),
            Verdict::Pass,
        ),
        (
            "VLAN tag",
            mutate(&good, &|v| v[12..14].copy_from_slice(&[0x81, 0x00])),
            Verdict::Drop(DropReason::VlanTagged),
        ),
        (
            "IPv4 header cut",
            good[..30].to_vec(),
            Verdict::Drop(DropReason::TruncatedIpv4),
        ),
        (
            "IHL 4",
            mutate(&good, &|v| v[14] = 0x44),
            Verdict::Drop(DropReason::MalformedIpv4),
        ),
        (
            "total length beyond frame",
            mutate(&good, &|v| v[17] = v[17].wrapping_add(40)),
            Verdict::Drop(DropReason::TruncatedIpv4),
        ),
        (
            "total length below header",
            mutate(&good, &|v| v[16..18].copy_from_slice(&[0, 10])),
            Verdict::Drop(DropReason::MalformedIpv4),
        ),
        (
            "first fragment",
            mutate(&good, &|v| v[20] |= 0x20),
            Verdict::Drop(DropReason::Fragment),
        ),
        (
            "later fragment",
            mutate(&good, &|v| v[21] = 8),
            Verdict::Drop(DropReason::Fragment),
        ),
        (
            "TCP header cut",
            mutate(&good, &|v| {
                v.truncate(14 + 20 + 10);
                v[16..18].copy_from_slice(&30u16.to_be_bytes());
            }),
            Verdict::Drop(DropReason::TruncatedL4),
        ),
        (
            "TCP data offset 4",
            mutate(&good, &|v| v[14 + 20 + 12] = 0x40),
            Verdict::Drop(DropReason::MalformedL4),
        ),
        (
            "TCP data offset past end",
            mutate(&good, &|v| v[14 + 20 + 12] = 0xf0),
            Verdict::Drop(DropReason::TruncatedL4),
        ),
        (
            "UDP length mismatch",
            mutate(&good_udp, &|v| v[14 + 20 + 5] = 9),
            Verdict::Drop(DropReason::MalformedL4),
        ),
        (
            "ICMP to a VIP",
            mutate(&good, &|v| v[23] = 1),
            Verdict::Drop(DropReason::UnsupportedProtocol),
        ),
        (
            "GRE elsewhere",
            mutate(&good, &|v| {
                v[23] = 47;
                v[30..34].copy_from_slice(&GW_CLIENT_SIDE);
            }),
            Verdict::Pass,
        ),
    ];
    let mut h = Harness::new();
    for (name, input, verdict) in cases {
        let mut frame = input.clone();
        assert_eq!(h.run(&mut frame), verdict, "case {name:?}");
        assert_eq!(
            frame, input,
            "case {name:?}: a dropped frame is not modified"
        );
    }
    assert_eq!(h.counters().new_flows.get(), 0);
}

#[test]
fn frames_with_padding_and_options_forward() {
    let mut h = Harness::new();
    // Ethernet padding after a short UDP datagram must not count as UDP
    // payload.
    let mut frame = udp(
        CLIENT_MAC,
        GW_CLIENT_MAC,
        (CLIENT, 33002),
        (UDP_VIP, 53),
        64,
    );
    frame.extend_from_slice(&[0; 10]);
    assert_eq!(h.run(&mut frame), Verdict::Forward { port: POD_PORT });
    let mut expected = udp(GW_POD_MAC, POD1_MAC, (CLIENT, 33002), (POD1, 5353), 63);
    expected.extend_from_slice(&[0; 10]);
    assert_eq!(frame, expected);
}

/// A Harness whose Service `default/sticky` (VIP .40:80/TCP -> three Pods
/// :8080) has ClientIP affinity with a 10 s timeout, or `backends` of them.
fn affinity_table(backends: &[u8]) -> CompiledTable {
    let services = vec![Service {
        name: ServiceName::new("default", "sticky"),
        kind: ServiceKind::ClusterIp,
        cluster_ip: ClusterIp::Vip(STICKY_VIP.into()),
        session_affinity: Some(10),
        ports: vec![port(
            80,
            Protocol::Tcp,
            8080,
            backends
                .iter()
                .map(|&last| ep([198, 18, 2, last], 8080))
                .collect(),
        )],
    }];
    CompiledTable::compile(Arc::new(ServiceTable { services }), 2)
}

const STICKY_VIP: [u8; 4] = [198, 18, 100, 40];

/// The Pod (last octet) a forwarded frame was sent to.
fn pod_of(frame: &[u8]) -> u8 {
    frame[14 + 19]
}

#[test]
fn refusals_pings_and_segments_without_a_flow() {
    let mut h = Harness::new();
    let mut rst_in = client_ack(41000, VIP, 8080);
    rst_in[14 + 20 + 13] = tcp_flags::RST;
    let echo_reply_out = {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(GW_CLIENT_MAC, CLIENT_MAC)
            .ipv4(VIP, CLIENT, 64)
            .icmpv4_echo_reply(0x4242, 3)
            .write(&mut out, b"0123456789abcdef")
            .expect("test frame builds");
        out
    };
    let cases: Vec<Case> = vec![
        Case {
            name: "an ACK for a connection the gateway does not know gets a RST",
            input: client_ack(41001, VIP, 8080),
            verdict: Verdict::Respond {
                port: CLIENT_PORT,
                len: 54,
            },
            output: Some(rst((VIP, 8080), (CLIENT, 41001), 1, None)),
        },
        Case {
            name: "a RST without a flow is never answered",
            input: rst_in,
            verdict: Verdict::Drop(DropReason::TcpNoFlow),
            output: None,
        },
        Case {
            name: "ping to a VIP with endpoints is answered",
            input: ping(CLIENT, VIP, CLIENT_MAC, false),
            verdict: Verdict::Respond {
                port: CLIENT_PORT,
                len: echo_reply_out.len(),
            },
            output: Some(echo_reply_out),
        },
        Case {
            name: "ping to a VIP without endpoints is not",
            input: ping(CLIENT, EMPTY_VIP, CLIENT_MAC, false),
            verdict: Verdict::Drop(DropReason::NoEndpoints),
            output: None,
        },
        Case {
            name: "other ICMP to a VIP is dropped",
            input: ping(CLIENT, VIP, CLIENT_MAC, true),
            verdict: Verdict::Drop(DropReason::UnsupportedProtocol),
            output: None,
        },
        Case {
            name: "ping to anything else is the kernel's",
            input: ping(CLIENT, GW_CLIENT_SIDE, CLIENT_MAC, false),
            verdict: Verdict::Pass,
            output: None,
        },
    ];
    for case in cases {
        let mut frame = case.input.clone();
        assert_eq!(h.run(&mut frame), case.verdict, "case {:?}", case.name);
        let expected = case.output.unwrap_or(case.input);
        assert_eq!(frame, expected, "case {:?}: output frame", case.name);
    }
    let c = h.counters();
    assert_eq!((c.refusals.get(), c.echo_replies.get()), (1, 1));
    assert_eq!(c.drops_of(DropReason::TcpNoFlow), 2);
    assert_eq!(c.new_flows.get(), 0);
}

#[test]
fn sources_that_cannot_be_clients_are_dropped() {
    let mut h = Harness::new();
    let syn_from =
        |mac: [u8; 6], src: [u8; 4]| tcp(mac, GW_CLIENT_MAC, (src, 40000), (VIP, 8080), 64, true);
    let cases = [
        (
            "multicast source",
            syn_from(CLIENT_MAC, [224, 0, 0, 1]),
            DropReason::BadSource,
        ),
        (
            "broadcast source",
            syn_from(CLIENT_MAC, [255, 255, 255, 255]),
            DropReason::BadSource,
        ),
        (
            "this-network source",
            syn_from(CLIENT_MAC, [0, 0, 0, 0]),
            DropReason::BadSource,
        ),
        (
            "loopback source",
            syn_from(CLIENT_MAC, [127, 0, 0, 1]),
            DropReason::BadSource,
        ),
        (
            "group MAC source",
            syn_from([1, 0, 0x5e, 0, 0, 1], CLIENT),
            DropReason::BadSource,
        ),
        (
            "a VIP as source",
            syn_from(CLIENT_MAC, UDP_VIP),
            DropReason::VipAsSource,
        ),
    ];
    for (name, input, reason) in cases {
        let mut frame = input.clone();
        assert_eq!(h.run(&mut frame), Verdict::Drop(reason), "case {name:?}");
        assert_eq!(frame, input, "case {name:?}: untouched");
    }
    assert_eq!(h.counters().new_flows.get(), 0);
}

#[test]
fn cluster_cidr_admits_only_cluster_sources() {
    let mut h = Harness::new();
    h.pipeline = pipeline(Arc::new(Conntrack::default())).with_config(PipelineConfig {
        cluster_cidrs: vec!["198.18.0.0/24".parse().expect("cidr")],
    });
    let mut inside = client_syn(40000, VIP, 8080);
    assert_eq!(h.run(&mut inside), Verdict::Forward { port: POD_PORT });
    // Outside gets nothing at all, not even a refusal for a closed port.
    for dport in [8080, 9999] {
        let input = tcp(
            CLIENT_MAC,
            GW_CLIENT_MAC,
            ([198, 19, 5, 5], 40000),
            (VIP, dport),
            64,
            true,
        );
        let mut frame = input.clone();
        assert_eq!(
            h.run(&mut frame),
            Verdict::Drop(DropReason::SourceNotInCluster)
        );
        assert_eq!(frame, input);
    }
    let mut outside_ping = ping([198, 19, 5, 5], VIP, CLIENT_MAC, false);
    assert_eq!(
        h.run(&mut outside_ping),
        Verdict::Drop(DropReason::SourceNotInCluster)
    );
    assert_eq!(h.counters().refusals.get(), 0);
}

/// A SYN carrying 4 bytes of IPv4 options (four NOPs), as etherparse
/// builds it (checksums computed from scratch).
fn syn_with_options(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    ttl: u8,
) -> Vec<u8> {
    let mut ip = etherparse::Ipv4Header::new(0, ttl, etherparse::IpNumber::TCP, src.0, dst.0)
        .expect("header");
    ip.options = [1u8, 1, 1, 1][..].try_into().expect("options");
    let mut out = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .tcp(src.1, dst.1, 1000, 64240)
        .syn()
        .write(&mut out, b"")
        .expect("test frame builds");
    out
}

#[test]
fn ipv4_options_are_carried_through() {
    let mut h = Harness::new();
    let mut frame = syn_with_options(CLIENT_MAC, GW_CLIENT_MAC, (CLIENT, 40100), (VIP, 8080), 64);
    assert_eq!(frame[14], 0x46, "IHL 6");
    assert_eq!(h.run(&mut frame), Verdict::Forward { port: POD_PORT });
    assert_eq!(
        frame,
        syn_with_options(GW_POD_MAC, POD1_MAC, (CLIENT, 40100), (POD1, 5678), 63)
    );
}

#[test]
fn a_full_table_refuses_new_connections_and_keeps_established_ones() {
    let mut h = Harness::new();
    h.pipeline = pipeline(Arc::new(Conntrack::new(
        crate::conntrack::ConntrackConfig {
            max_flows: 2,
            unreplied_percent: 100,
            timeouts: Default::default(),
        },
    )));
    for p in [50000, 50001] {
        let mut syn = client_syn(p, VIP, 8080);
        assert_eq!(h.run(&mut syn), Verdict::Forward { port: POD_PORT });
        let mut synack = pod_synack(p);
        assert_eq!(h.run(&mut synack), Verdict::Forward { port: CLIENT_PORT });
        // The client's ACK completes the handshake: assured flows are
        // never evicted.
        let mut ack = client_ack(p, VIP, 8080);
        assert_eq!(h.run(&mut ack), Verdict::Forward { port: POD_PORT });
    }
    let mut third = client_syn(50002, VIP, 8080);
    assert_eq!(
        h.run(&mut third),
        Verdict::Respond {
            port: CLIENT_PORT,
            len: 54
        }
    );
    assert_eq!(
        third,
        rst((VIP, 8080), (CLIENT, 50002), 0, Some(1000 + 18 + 1))
    );
    assert_eq!(h.counters().drops_of(DropReason::ConntrackFull), 1);
    for p in [50000, 50001] {
        let mut data = client_ack(p, VIP, 8080);
        assert_eq!(
            h.run(&mut data),
            Verdict::Forward { port: POD_PORT },
            "flow {p} lives on"
        );
    }
}

#[test]
fn refusals_are_rate_limited_per_source() {
    let mut h = Harness::new();
    h.pipeline =
        pipeline(Arc::new(Conntrack::default())).with_refusal_limits(RefusalLimiter::new(3, 100));
    let mut answered = 0;
    for p in 0..5u16 {
        let mut syn = tcp(
            CLIENT_MAC,
            GW_CLIENT_MAC,
            (CLIENT, 42000 + p),
            (VIP, 9999),
            64,
            true,
        );
        match h.run(&mut syn) {
            Verdict::Respond { .. } => answered += 1,
            v => assert_eq!(v, Verdict::Drop(DropReason::NoServicePort)),
        }
    }
    assert_eq!(answered, 3);
    let c = h.counters();
    assert_eq!((c.refusals.get(), c.refusals_rate_limited.get()), (3, 2));
    assert_eq!(
        c.drops_of(DropReason::NoServicePort),
        5,
        "every frame counted once"
    );
    // The next second brings a new budget.
    h.now += 1;
    let mut syn = client_syn(42010, VIP, 9999);
    assert!(matches!(h.run(&mut syn), Verdict::Respond { .. }));
}

#[test]
fn session_affinity_sticks_moves_and_expires() {
    let mut h = Harness::new();
    h.table = affinity_table(&[11, 12, 13]);
    let connect = |h: &mut Harness, client: [u8; 4], port: u16| {
        let mut syn = tcp(
            CLIENT_MAC,
            GW_CLIENT_MAC,
            (client, port),
            (STICKY_VIP, 80),
            64,
            true,
        );
        assert_eq!(h.run(&mut syn), Verdict::Forward { port: POD_PORT });
        pod_of(&syn)
    };
    let first = connect(&mut h, CLIENT, 30000);
    for p in 1..50 {
        assert_eq!(connect(&mut h, CLIENT, 30000 + p), first, "connection {p}");
    }
    // The endpoint goes away: the client moves, and sticks to the new one.
    let rest: Vec<u8> = [11, 12, 13].into_iter().filter(|&p| p != first).collect();
    h.table = affinity_table(&rest);
    let moved = connect(&mut h, CLIENT, 31000);
    assert_ne!(moved, first);
    for p in 1..10 {
        assert_eq!(connect(&mut h, CLIENT, 31000 + p), moved);
    }
    // Packets of a live connection keep the binding alive past the timeout.
    for _ in 0..3 {
        h.now += 6;
        let mut data = client_ack(31001, STICKY_VIP, 80);
        assert_eq!(h.run(&mut data), Verdict::Forward { port: POD_PORT });
    }
    assert_eq!(connect(&mut h, CLIENT, 32000), moved);
    // Silent for longer than 10 s: clients are rebalanced. Over many
    // clients, both remaining endpoints get some.
    h.now += 11;
    let mut seen = std::collections::HashSet::new();
    for c in 0..40u8 {
        seen.insert(connect(&mut h, [198, 18, 0, 100 + c], 33000));
    }
    assert_eq!(seen.len(), 2, "rebalanced over {rest:?}");
}

#[test]
fn a_closed_flow_expires_and_its_stragglers_are_reset() {
    let (mut h, ct) = Harness::sharing_conntrack();
    let mut syn = client_syn(43000, VIP, 8080);
    assert_eq!(h.run(&mut syn), Verdict::Forward { port: POD_PORT });
    let mut rst_back = pod_ack(43000);
    rst_back[14 + 20 + 13] = tcp_flags::RST;
    // Recompute nothing: the pipeline's incremental update keeps the
    // (now wrong) checksum wrong in the same way; only the state matters.
    assert_eq!(h.run(&mut rst_back), Verdict::Forward { port: CLIENT_PORT });
    assert_eq!(ct.sweep(h.now + 10), 0, "close lasts 10 s");
    assert_eq!(ct.sweep(h.now + 11), 1);
    h.now += 11;
    let mut straggler = client_ack(43000, VIP, 8080);
    assert!(matches!(h.run(&mut straggler), Verdict::Respond { .. }));
}

#[test]
fn the_flow_cache_never_serves_a_retired_flow() {
    let (mut h, ct) = Harness::sharing_conntrack();
    let mut syn = client_syn(44000, VIP, 8080);
    assert_eq!(h.run(&mut syn), Verdict::Forward { port: POD_PORT });
    let mut synack = pod_synack(44000);
    assert_eq!(h.run(&mut synack), Verdict::Forward { port: CLIENT_PORT });
    // Established: these are served from the worker's cache after the
    // first, within the same second.
    for _ in 0..5 {
        let mut data = client_ack(44000, VIP, 8080);
        assert_eq!(h.run(&mut data), Verdict::Forward { port: POD_PORT });
        assert_eq!(
            data,
            tcp(
                GW_POD_MAC,
                POD1_MAC,
                (CLIENT, 44000),
                (POD1, 5678),
                63,
                false
            )
        );
    }
    assert_eq!(ct.retire(|_, _| true), 1);
    let mut data = client_ack(44000, VIP, 8080);
    assert!(
        matches!(h.run(&mut data), Verdict::Respond { .. }),
        "a retired flow's next segment is reset, not forwarded from a cache"
    );
}

/// The client's datagram of the UDP flow in
/// [`a_published_table_ends_flows_to_endpoints_it_removed`].
fn client_query() -> Vec<u8> {
    udp(
        CLIENT_MAC,
        GW_CLIENT_MAC,
        (CLIENT, 45001),
        (UDP_VIP, 53),
        64,
    )
}

/// A table that removes a flow's endpoint is obeyed from the flow's next
/// packet on, before (and without) any retirement pass over conntrack,
/// also for a flow the worker's cache holds.
#[test]
fn a_published_table_ends_flows_to_endpoints_it_removed() {
    const POD2: [u8; 4] = [198, 18, 2, 12];
    let (mut h, ct) = Harness::sharing_conntrack();
    let mut syn = client_syn(45000, VIP, 8080);
    assert_eq!(h.run(&mut syn), Verdict::Forward { port: POD_PORT });
    let mut synack = pod_synack(45000);
    assert_eq!(h.run(&mut synack), Verdict::Forward { port: CLIENT_PORT });
    for _ in 0..3 {
        let mut data = client_ack(45000, VIP, 8080);
        assert_eq!(h.run(&mut data), Verdict::Forward { port: POD_PORT });
    }
    let mut query = client_query();
    assert_eq!(h.run(&mut query), Verdict::Forward { port: POD_PORT });
    assert_eq!(pod_of(&query), 11);
    assert_eq!(ct.summary().flows, 2);

    // POD1 leaves, POD2 arrives: the table ends POD1's targets.
    h.table = CompiledTable::compile(model_on(POD2), 2).with_retiring([
        (VIP.into(), 8080, Protocol::Tcp, POD1.into(), 5678),
        (UDP_VIP.into(), 53, Protocol::Udp, POD1.into(), 5353),
    ]);

    let mut query = client_query();
    assert_eq!(h.run(&mut query), Verdict::Forward { port: POD_PORT });
    assert_eq!(
        pod_of(&query),
        12,
        "the UDP flow moved at its next datagram"
    );
    let mut data = client_ack(45000, VIP, 8080);
    assert!(
        matches!(h.run(&mut data), Verdict::Respond { .. }),
        "the TCP flow's next segment is reset, not forwarded to the removed Pod"
    );
    assert_eq!(
        ct.stats()
            .retired
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    // The UDP flow now lives on POD2 and stays there.
    let mut query = client_query();
    assert_eq!(h.run(&mut query), Verdict::Forward { port: POD_PORT });
    assert_eq!(pod_of(&query), 12);
    assert_eq!(ct.summary().flows, 1);
}
