//! Backend choice for IPv6 Services: session affinity (`ClientIP`) and
//! Maglev (new flows from the table, mid-flow pickup, stateless replies,
//! two gateways agreeing), through the same generic path as IPv4's.
//! Frames are built with etherparse, which computes every checksum from
//! scratch, so a byte-exact match also proves the incremental updates.

use std::collections::HashSet;
use std::net::Ipv6Addr;
use std::sync::Arc;

use cipgw_config::{
    ClusterIp, Endpoint, EndpointState, IpFamily as Family, LbAlgorithm, Protocol, ServiceName,
    ServicePort, ServiceTable,
};
use etherparse::PacketBuilder;

use super::*;
use crate::harness::mac::GW_POD_SIDE as GW_POD_MAC;
use crate::harness::mac::{self, CLIENT as CLIENT_MAC, GW_CLIENT_SIDE as GW_CLIENT_MAC};
use crate::harness::{service, Harness, Net, CLIENT_IFINDEX, CLIENT_PORT, POD_IFINDEX, POD_PORT};
use crate::maglev::MaglevTables;
use crate::route::Route;
use crate::table::LbPlan;

/// 2001:2::`last` (the client arm, 2001:2::/64).
const fn client(last: u8) -> [u8; 16] {
    [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, last]
}

/// 2001:2:0:2::`last` (the Pod arm, 2001:2:0:2::/64).
const fn pod(last: u8) -> [u8; 16] {
    [0x20, 0x01, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, last]
}

/// 2001:2:0:ff::`last` (VIPs).
const fn vip(last: u8) -> [u8; 16] {
    [0x20, 0x01, 0, 2, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, last]
}

const CLIENT6: [u8; 16] = client(2);
const STICKY_VIP6: [u8; 16] = vip(0x40);
const MAGLEV_VIP6: [u8; 16] = vip(0x10);
const UDP_VIP6: [u8; 16] = vip(0x20);
const RANDOM_VIP6: [u8; 16] = vip(0x30);
const SHARED_A6: [u8; 16] = vip(0x50);
const SHARED_B6: [u8; 16] = vip(0x51);
const PODS: [u8; 3] = [0x11, 0x12, 0x13];
const SEED: u64 = 0x5eed_0fca_1100;
const PAYLOAD: &[u8] = b"GET / HTTP/1.0\r\n\r\n";

fn v6(octets: [u8; 16]) -> Ipv6Addr {
    Ipv6Addr::from(octets)
}

/// A Pod's MAC: one the harness sees as on the Pod arm.
fn pod_mac(last: u8) -> [u8; 6] {
    mac::of([198, 18, 2, last])
}

/// An IPv6-only Service at `vip` with one port `port` -> `target` of the
/// Pods `pods` (last octets), ClientIP affinity of `affinity` seconds
/// when given, under `algorithm`.
fn service6(
    name: &str,
    vip: [u8; 16],
    port: (u16, Protocol, u16),
    pods: &[u8],
    affinity: Option<u32>,
    algorithm: LbAlgorithm,
) -> cipgw_config::Service {
    let (port, protocol, target) = port;
    let endpoints = pods
        .iter()
        .map(|&last| Endpoint {
            ip: v6(pod(last)).into(),
            port: target,
            state: EndpointState::READY,
            pod: None,
            hostname: None,
        })
        .collect();
    let mut s = service(
        ServiceName::new("default", name),
        None,
        affinity,
        vec![ServicePort {
            name: None,
            port,
            protocol,
            target_port: cipgw_config::TargetPort::Number(target),
            endpoints,
        }],
    );
    s.cluster_ip = ClusterIp::single(v6(vip).into());
    s.ip_families = vec![Family::V6];
    s.lb_algorithm = Some(algorithm);
    s
}

fn compile(services: Vec<cipgw_config::Service>, seed: u64) -> Arc<CompiledTable> {
    let mut tables = MaglevTables::new(1021, seed);
    Arc::new(CompiledTable::compile_with_lb(
        Arc::new(ServiceTable { services }),
        1,
        |_, _| None,
        LbPlan {
            default: LbAlgorithm::Random,
            maglev: &mut tables,
        },
    ))
}

/// Both arms with IPv6 routes (2001:2::/64 to the clients,
/// 2001:2:0:2::/64 to the Pods), the clients 2001:2::2..=2001:2::ff and
/// the Pods `pods` resolved.
fn net(pods: &[u8]) -> Arc<NetSnapshot> {
    let routes6 = vec![
        Route {
            dst: v6(client(0)),
            prefix_len: 64,
            ifindex: CLIENT_IFINDEX,
            gateway: None,
        },
        Route {
            dst: v6(pod(0)),
            prefix_len: 64,
            ifindex: POD_IFINDEX,
            gateway: None,
        },
    ];
    let clients = (2..=0xff).map(|last| ((CLIENT_IFINDEX, v6(client(last))), CLIENT_MAC));
    let pods = pods
        .iter()
        .map(|&last| ((POD_IFINDEX, v6(pod(last))), pod_mac(last)));
    let neighbours6 = clients.chain(pods).collect();
    Arc::new(Net::two_arm().build().with_ipv6(routes6, neighbours6))
}

fn gateway(table: Arc<CompiledTable>, pods: &[u8], rng_seed: u64) -> Harness {
    Harness {
        pipeline: crate::harness::pipeline(Arc::new(Conntrack::default()), rng_seed),
        table,
        net: net(pods),
        now: 100,
    }
}

/// TCP flags of a segment to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seg {
    Syn,
    Ack,
    FinAck,
}

/// A TCP segment over IPv6 with 18 bytes of data, from `src` to `dst`.
fn tcp6(
    macs: ([u8; 6], [u8; 6]),
    src: ([u8; 16], u16),
    dst: ([u8; 16], u16),
    hop_limit: u8,
    seg: Seg,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(src.0, dst.0, hop_limit)
        .tcp(src.1, dst.1, 1000, 64240);
    let b = match seg {
        Seg::Syn => b.syn(),
        Seg::Ack => b.ack(1),
        Seg::FinAck => b.fin().ack(1),
    };
    let mut out = Vec::new();
    b.write(&mut out, PAYLOAD).expect("TCP frame builds");
    out
}

fn udp6(macs: ([u8; 6], [u8; 6]), src: ([u8; 16], u16), dst: ([u8; 16], u16), hop: u8) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(src.0, dst.0, hop)
        .udp(src.1, dst.1)
        .write(&mut out, b"query")
        .expect("UDP frame builds");
    out
}

/// The client's segment to `vip:vport` as it arrives.
fn from_client(client: [u8; 16], port: u16, vip: [u8; 16], vport: u16, seg: Seg) -> Vec<u8> {
    tcp6(
        (CLIENT_MAC, GW_CLIENT_MAC),
        (client, port),
        (vip, vport),
        64,
        seg,
    )
}

/// The client's segment as the gateway forwards it to `pod:target`.
fn to_pod(client: [u8; 16], port: u16, pod_last: u8, target: u16, seg: Seg) -> Vec<u8> {
    tcp6(
        (GW_POD_MAC, pod_mac(pod_last)),
        (client, port),
        (pod(pod_last), target),
        63,
        seg,
    )
}

/// The Pod's segment to the client as it arrives.
fn from_pod(pod_last: u8, target: u16, client: [u8; 16], port: u16, seg: Seg) -> Vec<u8> {
    tcp6(
        (pod_mac(pod_last), GW_POD_MAC),
        (pod(pod_last), target),
        (client, port),
        64,
        seg,
    )
}

/// The Pod's segment as the gateway forwards it, from `vip:vport`.
fn to_client(vip: [u8; 16], vport: u16, client: [u8; 16], port: u16, seg: Seg) -> Vec<u8> {
    tcp6(
        (GW_CLIENT_MAC, CLIENT_MAC),
        (vip, vport),
        (client, port),
        63,
        seg,
    )
}

/// The last octet of the IPv6 destination of a forwarded frame.
fn dst_last(frame: &[u8]) -> u8 {
    frame[14 + 39]
}

// --- Session affinity ---------------------------------------------------

/// "sticky": 2001:2:0:ff::40 port 80/TCP -> 8080 on `pods`, ClientIP
/// affinity for 10 s, random choice otherwise.
fn sticky_table(pods: &[u8]) -> Arc<CompiledTable> {
    compile(
        vec![service6(
            "sticky",
            STICKY_VIP6,
            (80, Protocol::Tcp, 8080),
            pods,
            Some(10),
            LbAlgorithm::Random,
        )],
        SEED,
    )
}

/// Opens a connection from `client`'s `port` to the sticky VIP and checks
/// the SYN leaves byte-exact for the Pod it went to; returns that Pod.
fn connect(h: &mut Harness, client: [u8; 16], port: u16) -> u8 {
    let mut syn = from_client(client, port, STICKY_VIP6, 80, Seg::Syn);
    assert_eq!(
        h.run(&mut syn),
        Verdict::Forward { port: POD_PORT },
        "SYN from {port}"
    );
    let to = dst_last(&syn);
    assert_eq!(
        syn,
        to_pod(client, port, to, 8080, Seg::Syn),
        "SYN from {port}"
    );
    to
}

#[test]
fn ipv6_session_affinity_sticks_moves_and_expires() {
    let affinity = Arc::new(Affinity::default());
    let mut h = gateway(sticky_table(&PODS), &PODS, 3);
    h.pipeline = crate::harness::pipeline(Arc::new(Conntrack::default()), 3)
        .with_affinity(Arc::clone(&affinity));
    let first = connect(&mut h, CLIENT6, 30000);
    for p in 1..50 {
        assert_eq!(connect(&mut h, CLIENT6, 30000 + p), first, "connection {p}");
    }
    assert_eq!(affinity.len(), 1, "one IPv6 binding");
    // Other clients spread over the endpoints (each sticking to its own).
    let mut spread = HashSet::new();
    for c in 0..40u8 {
        let other = client(0x40 + c);
        let to = connect(&mut h, other, 30100);
        assert_eq!(connect(&mut h, other, 30101), to, "client {c} sticks");
        spread.insert(to);
    }
    assert_eq!(spread.len(), 3, "40 clients reach every Pod");
    // The daemon's sweep keeps bindings within their timeout.
    assert_eq!(affinity.sweep(h.now, &h.table), 0);
    assert_eq!(affinity.len(), 41);

    // The endpoint goes away: the client moves, and sticks to the new one.
    let rest: Vec<u8> = PODS.into_iter().filter(|&p| p != first).collect();
    h.table = sticky_table(&rest);
    h.net = net(&PODS);
    let moved = connect(&mut h, CLIENT6, 31000);
    assert_ne!(moved, first);
    for p in 1..10 {
        assert_eq!(connect(&mut h, CLIENT6, 31000 + p), moved);
    }
    // Packets of a live connection keep the binding past the timeout.
    for _ in 0..3 {
        h.now += 6;
        let mut data = from_client(CLIENT6, 31001, STICKY_VIP6, 80, Seg::Ack);
        assert_eq!(h.run(&mut data), Verdict::Forward { port: POD_PORT });
        assert_eq!(data, to_pod(CLIENT6, 31001, moved, 8080, Seg::Ack));
    }
    assert_eq!(connect(&mut h, CLIENT6, 32000), moved);
    // Silent for longer than 10 s: rebalanced. Over many clients, both
    // remaining endpoints get some.
    h.now += 11;
    let mut seen = HashSet::new();
    for c in 0..40u8 {
        seen.insert(connect(&mut h, client(0x80 + c), 33000));
    }
    assert_eq!(seen.len(), 2, "rebalanced over {rest:?}");
    // Swept: the 41 bindings silent past 10 s go, the 40 new ones stay.
    assert_eq!(affinity.sweep(h.now, &h.table), 41);
    assert_eq!(affinity.len(), 40);
    // A table without the Service ends every binding.
    assert_eq!(affinity.sweep(h.now, &CompiledTable::empty()), 40);
    assert!(affinity.is_empty());
}

/// Packets of an IPv6 affinity flow refresh the binding at most once a
/// second from a worker, and the binding lasts from the last packet.
#[test]
fn ipv6_affinity_bindings_are_refreshed_once_a_second() {
    let affinity = Arc::new(Affinity::default());
    let mut h = gateway(sticky_table(&PODS), &PODS, 4);
    h.pipeline = crate::harness::pipeline(Arc::new(Conntrack::default()), 4)
        .with_affinity(Arc::clone(&affinity));
    let touches = || affinity.touches.load(std::sync::atomic::Ordering::Relaxed);
    let to = connect(&mut h, CLIENT6, 30000);
    for second in 0..3 {
        for _ in 0..20 {
            let mut data = from_client(CLIENT6, 30000, STICKY_VIP6, 80, Seg::Ack);
            assert_eq!(h.run(&mut data), Verdict::Forward { port: POD_PORT });
            assert_eq!(data, to_pod(CLIENT6, 30000, to, 8080, Seg::Ack));
        }
        assert_eq!(touches(), second + 1, "one refresh in second {second}");
        h.now += 1;
    }
    // The last refresh was in second now - 1; the timeout is 10 s.
    h.now += 9;
    assert_eq!(
        connect(&mut h, CLIENT6, 30001),
        to,
        "the binding lasts from the last packet"
    );
}

// --- Maglev -------------------------------------------------------------

/// "echo" (8080/TCP -> 5678) and "udp" (53/UDP -> 5353) under Maglev
/// over `pods`, "web" (80/TCP) at random over them, and two Maglev
/// Services sharing Pod 0x11's port 9000 (its replies are ambiguous).
fn maglev_services(pods: &[u8]) -> Vec<cipgw_config::Service> {
    use LbAlgorithm::{Maglev, Random};
    vec![
        service6(
            "echo",
            MAGLEV_VIP6,
            (8080, Protocol::Tcp, 5678),
            pods,
            None,
            Maglev,
        ),
        service6(
            "udp",
            UDP_VIP6,
            (53, Protocol::Udp, 5353),
            pods,
            None,
            Maglev,
        ),
        service6(
            "web",
            RANDOM_VIP6,
            (80, Protocol::Tcp, 80),
            pods,
            None,
            Random,
        ),
        service6(
            "shared-a",
            SHARED_A6,
            (90, Protocol::Tcp, 9000),
            &[0x11],
            None,
            Maglev,
        ),
        service6(
            "shared-b",
            SHARED_B6,
            (91, Protocol::Tcp, 9000),
            &[0x11],
            None,
            Maglev,
        ),
    ]
}

/// The Pod (last octet) the table gives `client`'s `port` -> `vip:vport`.
fn maglev_pod(
    table: &CompiledTable,
    client: [u8; 16],
    port: u16,
    vip: [u8; 16],
    vport: u16,
    protocol: Protocol,
) -> u8 {
    let key = FlowKey {
        src: v6(client),
        dst: v6(vip),
        src_port: port,
        dst_port: vport,
        protocol,
    };
    let entry = table
        .v6()
        .lookup(&ServiceKey {
            vip: key.dst,
            port: vport,
            protocol,
        })
        .expect("a Maglev Service port");
    let maglev = entry.maglev.as_ref().expect("the port uses Maglev");
    entry.backends[maglev.pick(&key)].ip.octets()[15]
}

#[test]
fn new_ipv6_flows_go_to_the_maglev_tables_backend() {
    let table = compile(maglev_services(&PODS), SEED);
    assert!(table.uses_maglev(), "IPv6 Maglev ports count");
    let mut h = gateway(Arc::clone(&table), &PODS, 1);
    let mut seen = HashSet::new();
    for port in 40_000..40_030u16 {
        let to = maglev_pod(&table, CLIENT6, port, MAGLEV_VIP6, 8080, Protocol::Tcp);
        seen.insert(to);
        let mut syn = from_client(CLIENT6, port, MAGLEV_VIP6, 8080, Seg::Syn);
        assert_eq!(
            h.run(&mut syn),
            Verdict::Forward { port: POD_PORT },
            "SYN from {port}"
        );
        assert_eq!(
            syn,
            to_pod(CLIENT6, port, to, 5678, Seg::Syn),
            "SYN from {port}"
        );
    }
    assert_eq!(seen.len(), 3, "30 flows reach every Pod");
    assert_eq!(h.counters().new_flows.get(), 30);
    assert_eq!(h.counters().adopted_flows.get(), 0);
}

/// Two gateways that compiled the same IPv6 Services (endpoints listed in
/// different orders) with the same seed, and whose random generators
/// differ, send each of 2,000 new flows to the same Pod through their
/// real pipelines; a third with another seed does not agree on all.
#[test]
fn two_gateways_with_the_same_seed_agree_on_ipv6_flows() {
    let pods: Vec<u8> = (0x11..0x1b).collect();
    let mut reversed = pods.clone();
    reversed.reverse();
    let mut a = gateway(compile(maglev_services(&pods), SEED), &pods, 1);
    let mut b = gateway(compile(maglev_services(&reversed), SEED), &pods, 2);
    let mut c = gateway(compile(maglev_services(&pods), SEED + 1), &pods, 1);
    let pod_of = |h: &mut Harness, frame: &[u8]| {
        let mut frame = frame.to_vec();
        assert_eq!(h.run(&mut frame), Verdict::Forward { port: POD_PORT });
        dst_last(&frame)
    };
    let mut disagree_with_other_seed = 0;
    for i in 0..2_000u32 {
        let from = client(2 + (i % 200) as u8);
        let port = 20_000 + (i / 200) as u16 * 7;
        let syn = from_client(from, port, MAGLEV_VIP6, 8080, Seg::Syn);
        let (pa, pb, pc) = (
            pod_of(&mut a, &syn),
            pod_of(&mut b, &syn),
            pod_of(&mut c, &syn),
        );
        assert_eq!(pa, pb, "flow {from:?}:{port} differs between the gateways");
        disagree_with_other_seed += usize::from(pa != pc);
    }
    assert_eq!(a.counters().new_flows.get(), 2_000);
    assert!(
        disagree_with_other_seed > 1_000,
        "another seed is another table: {disagree_with_other_seed} of 2,000 differ"
    );
}

/// An IPv6 flow another gateway carried until now: under Maglev its next
/// segment (not a SYN) gets the table's backend and is tracked, and the
/// reply goes back from the VIP; under random choice it gets a RST.
#[test]
fn mid_flow_ipv6_segments_are_adopted_under_maglev_and_reset_under_random() {
    let table = compile(maglev_services(&PODS), SEED);
    let mut h = gateway(Arc::clone(&table), &PODS, 1);
    let port = 41_000;
    let to = maglev_pod(&table, CLIENT6, port, MAGLEV_VIP6, 8080, Protocol::Tcp);
    let fin_to = maglev_pod(&table, CLIENT6, port + 1, MAGLEV_VIP6, 8080, Protocol::Tcp);
    let udp_to = maglev_pod(&table, CLIENT6, port, UDP_VIP6, 53, Protocol::Udp);

    struct Case {
        name: &'static str,
        input: Vec<u8>,
        verdict: Verdict,
        output: Vec<u8>,
    }
    let cases = [
        Case {
            name: "an ACK with data of an unknown flow goes to the table's Pod",
            input: from_client(CLIENT6, port, MAGLEV_VIP6, 8080, Seg::Ack),
            verdict: Verdict::Forward { port: POD_PORT },
            output: to_pod(CLIENT6, port, to, 5678, Seg::Ack),
        },
        Case {
            name: "the Pod's answer is now tracked and comes from the VIP",
            input: from_pod(to, 5678, CLIENT6, port, Seg::Ack),
            verdict: Verdict::Forward { port: CLIENT_PORT },
            output: to_client(MAGLEV_VIP6, 8080, CLIENT6, port, Seg::Ack),
        },
        Case {
            name: "a FIN of another unknown flow is adopted too",
            input: from_client(CLIENT6, port + 1, MAGLEV_VIP6, 8080, Seg::FinAck),
            verdict: Verdict::Forward { port: POD_PORT },
            output: to_pod(CLIENT6, port + 1, fin_to, 5678, Seg::FinAck),
        },
        Case {
            name: "a UDP datagram of an unknown flow goes to the table's Pod",
            input: udp6(
                (CLIENT_MAC, GW_CLIENT_MAC),
                (CLIENT6, port),
                (UDP_VIP6, 53),
                64,
            ),
            verdict: Verdict::Forward { port: POD_PORT },
            output: udp6(
                (GW_POD_MAC, pod_mac(udp_to)),
                (CLIENT6, port),
                (pod(udp_to), 5353),
                63,
            ),
        },
    ];
    for case in cases {
        let mut frame = case.input.clone();
        assert_eq!(h.run(&mut frame), case.verdict, "case {:?}", case.name);
        assert_eq!(frame, case.output, "case {:?}: output frame", case.name);
    }
    // Under random choice an unknown flow's ACK gets a RST from the VIP.
    let mut ack = from_client(CLIENT6, port, RANDOM_VIP6, 80, Seg::Ack);
    assert!(matches!(
        h.run(&mut ack),
        Verdict::Respond {
            port: CLIENT_PORT,
            ..
        }
    ));
    let rst = etherparse::SlicedPacket::from_ethernet(&ack).expect("the RST parses");
    let Some(etherparse::NetSlice::Ipv6(ip)) = &rst.net else {
        panic!("an IPv6 answer: {rst:?}")
    };
    assert_eq!(
        (ip.header().source(), ip.header().destination()),
        (RANDOM_VIP6, CLIENT6)
    );
    assert!(matches!(rst.transport, Some(etherparse::TransportSlice::Tcp(t)) if t.rst()));
    let c = h.counters();
    assert_eq!(c.adopted_flows.get(), 2, "two TCP flows met mid-connection");
    assert_eq!(c.new_flows.get(), 1, "a first UDP datagram is a new flow");
    assert_eq!(c.drops_of(DropReason::TcpNoFlow), 1, "the random Service's");
    assert_eq!(c.refusals.get(), 1);
    assert_eq!(h.pipeline.v6.conntrack.summary().flows, 3);
    assert_eq!(h.pipeline.v4.conntrack.summary().flows, 0);
}

/// A reply of an IPv6 flow whose forward half another gateway carried:
/// from an endpoint of exactly one Maglev Service port it is rewritten to
/// come from that VIP:port and tracked (the client's next segment finds
/// the flow); from an endpoint of two ports, or of a random Service, or
/// to a client outside `--cluster-cidr`, it is dropped.
#[test]
fn ipv6_stateless_replies_are_rewritten_when_their_service_port_is_unique() {
    let table = compile(maglev_services(&PODS), SEED);
    let mut h = gateway(Arc::clone(&table), &PODS, 1);
    let port = 42_000;

    let mut reply = from_pod(0x12, 5678, CLIENT6, port, Seg::Ack);
    assert_eq!(h.run(&mut reply), Verdict::Forward { port: CLIENT_PORT });
    assert_eq!(reply, to_client(MAGLEV_VIP6, 8080, CLIENT6, port, Seg::Ack));
    assert_eq!(h.counters().stateless_replies.get(), 1);

    // The flow is tracked to the endpoint that answered, whatever the
    // table would pick for it.
    let mut next = from_client(CLIENT6, port, MAGLEV_VIP6, 8080, Seg::Ack);
    assert_eq!(h.run(&mut next), Verdict::Forward { port: POD_PORT });
    assert_eq!(next, to_pod(CLIENT6, port, 0x12, 5678, Seg::Ack));
    assert_eq!(h.counters().adopted_flows.get(), 0, "a tracked flow");

    let mut ambiguous = from_pod(0x11, 9000, CLIENT6, port, Seg::Ack);
    let input = ambiguous.clone();
    assert_eq!(
        h.run(&mut ambiguous),
        Verdict::Drop(DropReason::AmbiguousReply)
    );
    assert_eq!(ambiguous, input, "a dropped frame is untouched");

    let mut random = from_pod(0x11, 80, CLIENT6, port, Seg::Ack);
    assert_eq!(
        h.run(&mut random),
        Verdict::Drop(DropReason::ReplyWithoutFlow),
        "a random Service's endpoint keeps the drop"
    );
    let c = h.counters();
    assert_eq!(c.stateless_replies.get(), 1);
    assert_eq!(c.drops_of(DropReason::AmbiguousReply), 1);
    assert_eq!(c.drops_of(DropReason::ReplyWithoutFlow), 1);

    // A client outside --cluster-cidr could not have opened the flow.
    let mut h = gateway(table, &PODS, 1);
    h.pipeline =
        crate::harness::pipeline(Arc::new(Conntrack::default()), 1).with_config(PipelineConfig {
            cluster_cidrs: vec!["2001:2:0:50::/64".parse().expect("CIDR")],
        });
    let mut outsider = from_pod(0x12, 5678, CLIENT6, port, Seg::Ack);
    assert_eq!(
        h.run(&mut outsider),
        Verdict::Drop(DropReason::ReplyWithoutFlow)
    );
    assert_eq!(h.counters().stateless_replies.get(), 0);
}

/// Without Maglev anywhere, an untracked IPv6 reply is just that: not
/// rewritten, whatever its endpoint.
#[test]
fn untracked_ipv6_replies_without_maglev_are_dropped() {
    let table = sticky_table(&PODS);
    assert!(!table.uses_maglev());
    let mut h = gateway(table, &PODS, 1);
    let mut reply = from_pod(0x11, 8080, CLIENT6, 43_000, Seg::Ack);
    assert_eq!(
        h.run(&mut reply),
        Verdict::Drop(DropReason::ReplyWithoutFlow)
    );
    assert_eq!(h.counters().stateless_replies.get(), 0);
}
