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
    let services = vec![
        Service {
            name: ServiceName::new("default", "echo"),
            kind: ServiceKind::ClusterIp,
            cluster_ip: ClusterIp::Vip(VIP.into()),
            session_affinity: None,
            ports: vec![port(8080, Protocol::Tcp, 5678, vec![ep(POD1, 5678)])],
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
            ports: vec![port(53, Protocol::Udp, 5353, vec![ep(POD1, 5353)])],
        },
    ];
    CompiledTable::compile(Arc::new(ServiceTable { services }), 1)
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

struct Harness {
    pipeline: Pipeline,
    table: CompiledTable,
    net: NetSnapshot,
}

impl Harness {
    fn new() -> Self {
        Self {
            pipeline: Pipeline::new(
                Arc::new(Conntrack::default()),
                Arc::new(WorkerCounters::default()),
                Rng::new(1),
            ),
            table: table(),
            net: net(true),
        }
    }

    fn run(&mut self, frame: &mut [u8]) -> Verdict {
        let ctx = BatchContext {
            table: &self.table,
            net: &self.net,
            now: 100,
        };
        self.pipeline.process(frame, &ctx)
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
            input: tcp(
                CLIENT_MAC,
                GW_CLIENT_MAC,
                (CLIENT, 40000),
                (VIP, 8080),
                64,
                true,
            ),
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
            input: tcp(
                CLIENT_MAC,
                GW_CLIENT_MAC,
                (CLIENT, 40000),
                (VIP, 8080),
                64,
                false,
            ),
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
            input: tcp(
                POD1_MAC,
                GW_POD_MAC,
                (POD1, 5678),
                (CLIENT, 40000),
                64,
                false,
            ),
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
            input: tcp(
                CLIENT_MAC,
                GW_CLIENT_MAC,
                (CLIENT, 40001),
                (GW_CLIENT_SIDE, 22),
                64,
                true,
            ),
            verdict: Verdict::Pass,
            output: None,
        },
        Case {
            name: "a headless Service's Pod is reached directly, not by cipgw",
            input: tcp(
                CLIENT_MAC,
                GW_CLIENT_MAC,
                (CLIENT, 40002),
                (POD1, 5432),
                64,
                true,
            ),
            verdict: Verdict::Pass,
            output: None,
        },
        Case {
            name: "a port the Service does not define",
            input: tcp(
                CLIENT_MAC,
                GW_CLIENT_MAC,
                (CLIENT, 40003),
                (VIP, 9999),
                64,
                true,
            ),
            verdict: Verdict::Drop(DropReason::NoServicePort),
            output: None,
        },
        Case {
            name: "the right port with the wrong protocol",
            input: udp(CLIENT_MAC, GW_CLIENT_MAC, (CLIENT, 40003), (VIP, 8080), 64),
            verdict: Verdict::Drop(DropReason::NoServicePort),
            output: None,
        },
        Case {
            name: "a Service without endpoints",
            input: tcp(
                CLIENT_MAC,
                GW_CLIENT_MAC,
                (CLIENT, 40004),
                (EMPTY_VIP, 80),
                64,
                true,
            ),
            verdict: Verdict::Drop(DropReason::NoEndpoints),
            output: None,
        },
        Case {
            name: "a backend packet without a flow",
            input: tcp(
                POD1_MAC,
                GW_POD_MAC,
                (POD1, 5678),
                (CLIENT, 50000),
                64,
                false,
            ),
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
    assert_eq!(c.drops_of(DropReason::NoServicePort), 2);
    assert_eq!(c.drops_of(DropReason::NoEndpoints), 1);
    assert_eq!(c.drops_of(DropReason::ReplyWithoutFlow), 1);
    assert_eq!(c.drops_of(DropReason::TtlExceeded), 1);
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
    let mut syn = tcp(
        CLIENT_MAC,
        GW_CLIENT_MAC,
        (CLIENT, 40000),
        (VIP, 8080),
        64,
        true,
    );
    assert_eq!(h.run(&mut syn), Verdict::Forward { port: POD_PORT });
    let mut reply = tcp(
        POD1_MAC,
        GW_POD_MAC,
        (POD1, 5678),
        (CLIENT, 40000),
        64,
        false,
    );
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
    let good = tcp(
        CLIENT_MAC,
        GW_CLIENT_MAC,
        (CLIENT, 40000),
        (VIP, 8080),
        64,
        true,
    );
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
