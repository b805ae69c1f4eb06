//! Pipeline cases of Maglev backend choice: new flows picked from the
//! table, mid-flow pickup of flows another gateway carried (adopted),
//! stateless replies, and two gateways agreeing on every flow. Exact
//! frames in and out, on the in-memory gateway of [`crate::harness`].

use std::net::Ipv4Addr;
use std::sync::Arc;

use cipgw_config::{LbAlgorithm, Protocol, ServiceName, ServiceTable};

use super::*;
use crate::harness::addr::{CLIENT, POD1, POD2, POD3};
use crate::harness::mac::{self, GW_CLIENT_SIDE as GW_CLIENT_MAC, GW_POD_SIDE as GW_POD_MAC};
use crate::harness::{
    pipeline, service, service_port, Frame, Harness, Net, Segment, CLIENT_IFINDEX, CLIENT_PORT,
    POD_IFINDEX, POD_PORT,
};
use crate::maglev::MaglevTables;
use crate::table::LbPlan;

const VIP: [u8; 4] = [198, 18, 100, 10];
const UDP_VIP: [u8; 4] = [198, 18, 100, 20];
const RANDOM_VIP: [u8; 4] = [198, 18, 100, 40];
const SHARED_A: [u8; 4] = [198, 18, 100, 50];
const SHARED_B: [u8; 4] = [198, 18, 100, 51];
const SEED: u64 = 0x5eed_0fca_1100;

/// echo (TCP 8080 -> 5678) and udp (53 -> 5353) under Maglev over Pods
/// 1-3, web (TCP 80) at random over the same Pods, and two Maglev
/// Services sharing Pod 1's port 9000 (its replies are ambiguous).
fn model(pods: &[[u8; 4]]) -> Arc<ServiceTable> {
    let name = |name| ServiceName::new("default", name);
    let maglev = |mut s: cipgw_config::Service| {
        s.lb_algorithm = Some(LbAlgorithm::Maglev);
        s
    };
    Arc::new(ServiceTable {
        services: vec![
            maglev(service(
                name("echo"),
                Some(VIP),
                None,
                vec![service_port(8080, Protocol::Tcp, 5678, pods)],
            )),
            maglev(service(
                name("shared-a"),
                Some(SHARED_A),
                None,
                vec![service_port(90, Protocol::Tcp, 9000, &[POD1])],
            )),
            maglev(service(
                name("shared-b"),
                Some(SHARED_B),
                None,
                vec![service_port(91, Protocol::Tcp, 9000, &[POD1])],
            )),
            maglev(service(
                name("udp"),
                Some(UDP_VIP),
                None,
                vec![service_port(53, Protocol::Udp, 5353, pods)],
            )),
            service(
                name("web"),
                Some(RANDOM_VIP),
                None,
                vec![service_port(80, Protocol::Tcp, 80, pods)],
            ),
        ],
    })
}

fn compile(model: Arc<ServiceTable>, seed: u64) -> Arc<CompiledTable> {
    let mut tables = MaglevTables::new(1021, seed);
    Arc::new(CompiledTable::compile_with_lb(
        model,
        1,
        |_, _| None,
        LbPlan {
            default: LbAlgorithm::Random,
            maglev: &mut tables,
        },
    ))
}

/// A gateway on the lab's two arms with `pods` and the client resolved;
/// its random choices are seeded by `rng_seed`.
fn gateway(table: Arc<CompiledTable>, pods: &[[u8; 4]], rng_seed: u64) -> Harness {
    let net = Net::two_arm()
        .resolved(POD_IFINDEX, pods.iter().copied())
        .resolved(CLIENT_IFINDEX, [CLIENT]);
    Harness {
        pipeline: pipeline(Arc::new(Conntrack::default()), rng_seed),
        table,
        net: Arc::new(net.build()),
        now: 100,
    }
}

const PODS: [[u8; 4]; 3] = [POD1, POD2, POD3];
const PAYLOAD: &[u8] = b"GET / HTTP/1.0\r\n\r\n";

fn segment(flags: u8) -> Segment<'static> {
    Segment {
        flags,
        ack: 1,
        payload: PAYLOAD,
        ..Segment::default()
    }
}

/// The Pod the table gives the client's `port` -> `vip:vport`.
fn maglev_pod(table: &CompiledTable, port: u16, vip: [u8; 4], vport: u16, p: Protocol) -> [u8; 4] {
    let key = FlowKey {
        src: CLIENT.into(),
        dst: vip.into(),
        src_port: port,
        dst_port: vport,
        protocol: p,
    };
    let entry = table
        .lookup(&ServiceKey {
            vip: key.dst,
            port: vport,
            protocol: p,
        })
        .expect("a Maglev Service port");
    let maglev = entry.maglev.as_ref().expect("the port uses Maglev");
    entry.backends[maglev.pick(&key)].ip.octets()
}

/// The client's TCP segment to `vip:vport` as the gateway forwards it to
/// `pod:target`.
fn to_pod(port: u16, pod: [u8; 4], target: u16, flags: u8) -> Vec<u8> {
    Frame {
        src_mac: GW_POD_MAC,
        dst_mac: mac::of(pod),
        src: CLIENT,
        dst: pod,
        ttl: 63,
    }
    .tcp(port, target, segment(flags))
}

/// `pod:target`'s TCP segment to the client as the gateway forwards it,
/// from `vip:vport`.
fn to_client(port: u16, vip: [u8; 4], vport: u16, flags: u8) -> Vec<u8> {
    Frame {
        src_mac: GW_CLIENT_MAC,
        dst_mac: mac::CLIENT,
        src: vip,
        dst: CLIENT,
        ttl: 63,
    }
    .tcp(vport, port, segment(flags))
}

#[test]
fn new_flows_go_to_the_tables_backend() {
    let table = compile(model(&PODS), SEED);
    let mut h = gateway(Arc::clone(&table), &PODS, 1);
    let mut seen = std::collections::HashSet::new();
    for port in 40_000..40_030u16 {
        let pod = maglev_pod(&table, port, VIP, 8080, Protocol::Tcp);
        seen.insert(pod);
        let mut frame = Frame::arriving(CLIENT, VIP).tcp(port, 8080, segment(tcp_flags::SYN));
        let verdict = h.run(&mut frame);
        assert_eq!(
            verdict,
            Verdict::Forward { port: POD_PORT },
            "SYN from {port}"
        );
        assert_eq!(
            frame,
            to_pod(port, pod, 5678, tcp_flags::SYN),
            "SYN from {port}"
        );
    }
    assert_eq!(seen.len(), 3, "30 flows reach every Pod");
    assert_eq!(h.counters().new_flows.get(), 30);
    assert_eq!(h.counters().adopted_flows.get(), 0);
}

/// A flow another gateway carried until now: under Maglev its next
/// segment (not a SYN) gets the table's backend and is tracked, and the
/// reply goes back from the VIP; under random choice it gets a RST.
#[test]
fn mid_flow_segments_are_adopted_under_maglev_and_reset_under_random() {
    let table = compile(model(&PODS), SEED);
    let mut h = gateway(Arc::clone(&table), &PODS, 1);
    let port = 41_000;
    let pod = maglev_pod(&table, port, VIP, 8080, Protocol::Tcp);
    let udp_pod = maglev_pod(&table, port, UDP_VIP, 53, Protocol::Udp);

    struct Case {
        name: &'static str,
        input: Vec<u8>,
        verdict: Verdict,
        output: Vec<u8>,
    }
    let cases = [
        Case {
            name: "an ACK with data of an unknown flow goes to the table's Pod",
            input: Frame::arriving(CLIENT, VIP).tcp(port, 8080, segment(tcp_flags::ACK)),
            verdict: Verdict::Forward { port: POD_PORT },
            output: to_pod(port, pod, 5678, tcp_flags::ACK),
        },
        Case {
            name: "the Pod's answer is now tracked and comes from the VIP",
            input: Frame::arriving(pod, CLIENT).tcp(5678, port, segment(tcp_flags::ACK)),
            verdict: Verdict::Forward { port: CLIENT_PORT },
            output: to_client(port, VIP, 8080, tcp_flags::ACK),
        },
        Case {
            name: "a FIN of another unknown flow is adopted too",
            input: Frame::arriving(CLIENT, VIP).tcp(
                port + 1,
                8080,
                segment(tcp_flags::FIN | tcp_flags::ACK),
            ),
            verdict: Verdict::Forward { port: POD_PORT },
            output: to_pod(
                port + 1,
                maglev_pod(&table, port + 1, VIP, 8080, Protocol::Tcp),
                5678,
                tcp_flags::FIN | tcp_flags::ACK,
            ),
        },
        Case {
            name: "a UDP datagram of an unknown flow goes to the table's Pod",
            input: Frame::arriving(CLIENT, UDP_VIP).udp(port, 53, b"query"),
            verdict: Verdict::Forward { port: POD_PORT },
            output: Frame {
                src_mac: GW_POD_MAC,
                dst_mac: mac::of(udp_pod),
                src: CLIENT,
                dst: udp_pod,
                ttl: 63,
            }
            .udp(port, 5353, b"query"),
        },
        Case {
            name: "under random choice an unknown flow's ACK gets a RST",
            input: Frame::arriving(CLIENT, RANDOM_VIP).tcp(port, 80, segment(tcp_flags::ACK)),
            verdict: Verdict::Respond {
                port: CLIENT_PORT,
                len: 54,
            },
            output: Frame {
                src_mac: GW_CLIENT_MAC,
                dst_mac: mac::CLIENT,
                src: RANDOM_VIP,
                dst: CLIENT,
                ttl: 64,
            }
            .tcp(
                80,
                port,
                Segment {
                    flags: tcp_flags::RST,
                    seq: 1,
                    ack: 0,
                    window: 0,
                    payload: &[],
                },
            ),
        },
    ];
    for case in cases {
        let mut frame = case.input.clone();
        assert_eq!(h.run(&mut frame), case.verdict, "case {:?}", case.name);
        assert_eq!(frame, case.output, "case {:?}: output frame", case.name);
    }
    let c = h.counters();
    assert_eq!(c.adopted_flows.get(), 2, "two TCP flows met mid-connection");
    assert_eq!(c.new_flows.get(), 1, "a first UDP datagram is a new flow");
    assert_eq!(c.drops_of(DropReason::TcpNoFlow), 1, "the random Service's");
    assert_eq!(c.refusals.get(), 1);
}

/// A reply of a flow whose forward half another gateway carried: from an
/// endpoint of exactly one Maglev Service port it is rewritten to come
/// from that VIP:port and tracked (the client's next segment finds the
/// flow); from an endpoint of two ports it is dropped.
#[test]
fn stateless_replies_are_rewritten_when_their_service_port_is_unique() {
    let table = compile(model(&PODS), SEED);
    let mut h = gateway(Arc::clone(&table), &PODS, 1);
    let port = 42_000;

    let mut reply = Frame::arriving(POD2, CLIENT).tcp(5678, port, segment(tcp_flags::ACK));
    assert_eq!(h.run(&mut reply), Verdict::Forward { port: CLIENT_PORT });
    assert_eq!(reply, to_client(port, VIP, 8080, tcp_flags::ACK));
    assert_eq!(h.counters().stateless_replies.get(), 1);

    // The flow is tracked to the endpoint that answered, whatever the
    // table would pick for it.
    let mut next = Frame::arriving(CLIENT, VIP).tcp(port, 8080, segment(tcp_flags::ACK));
    assert_eq!(h.run(&mut next), Verdict::Forward { port: POD_PORT });
    assert_eq!(next, to_pod(port, POD2, 5678, tcp_flags::ACK));
    assert_eq!(h.counters().adopted_flows.get(), 0, "a tracked flow");

    let mut ambiguous = Frame::arriving(POD1, CLIENT).tcp(9000, port, segment(tcp_flags::ACK));
    let input = ambiguous.clone();
    assert_eq!(
        h.run(&mut ambiguous),
        Verdict::Drop(DropReason::AmbiguousReply)
    );
    assert_eq!(ambiguous, input, "a dropped frame is untouched");

    let mut random = Frame::arriving(POD1, CLIENT).tcp(80, port, segment(tcp_flags::ACK));
    assert_eq!(
        h.run(&mut random),
        Verdict::Drop(DropReason::ReplyWithoutFlow),
        "a random Service's endpoint keeps today's drop"
    );
    let c = h.counters();
    assert_eq!(c.stateless_replies.get(), 1);
    assert_eq!(c.drops_of(DropReason::AmbiguousReply), 1);
    assert_eq!(c.drops_of(DropReason::ReplyWithoutFlow), 1);

    // A client outside --cluster-cidr could not have opened the flow.
    let mut h = gateway(table, &PODS, 1);
    h.pipeline = pipeline(Arc::new(Conntrack::default()), 1).with_config(PipelineConfig {
        cluster_cidrs: vec!["198.18.50.0/24".parse().expect("CIDR")],
    });
    let mut outsider = Frame::arriving(POD2, CLIENT).tcp(5678, port, segment(tcp_flags::ACK));
    assert_eq!(
        h.run(&mut outsider),
        Verdict::Drop(DropReason::ReplyWithoutFlow)
    );
    assert_eq!(h.counters().stateless_replies.get(), 0);
}

/// Two gateways that compiled the same Services (their endpoints listed
/// in different orders) with the same seed, and whose random generators
/// differ, send each of 10,000 new flows to the same Pod through their
/// real pipelines. A third with another seed does not agree on all.
#[test]
fn two_gateways_with_the_same_seed_agree_on_10000_flows() {
    let pods: Vec<[u8; 4]> = (11..21).map(|last| [198, 18, 2, last]).collect();
    let mut reversed = pods.clone();
    reversed.reverse();
    let mut a = gateway(compile(model(&pods), SEED), &pods, 1);
    let mut b = gateway(compile(model(&reversed), SEED), &pods, 2);
    let mut c = gateway(compile(model(&pods), SEED + 1), &pods, 1);
    let pod_of = |h: &mut Harness, frame: &[u8]| {
        let mut frame = frame.to_vec();
        assert_eq!(h.run(&mut frame), Verdict::Forward { port: POD_PORT });
        Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33])
    };
    let mut disagree_with_other_seed = 0;
    for i in 0..10_000u32 {
        let client = [198, 18, 0, 2 + (i % 200) as u8];
        let port = 20_000 + (i / 200) as u16 * 7;
        let syn = Frame {
            src_mac: mac::CLIENT,
            dst_mac: GW_CLIENT_MAC,
            src: client,
            dst: VIP,
            ttl: 64,
        }
        .tcp(port, 8080, segment(tcp_flags::SYN));
        let (pa, pb, pc) = (
            pod_of(&mut a, &syn),
            pod_of(&mut b, &syn),
            pod_of(&mut c, &syn),
        );
        assert_eq!(
            pa, pb,
            "flow {client:?}:{port} differs between the gateways"
        );
        disagree_with_other_seed += usize::from(pa != pc);
    }
    assert_eq!(a.counters().new_flows.get(), 10_000);
    assert!(
        disagree_with_other_seed > 5_000,
        "another seed is another table: {disagree_with_other_seed} of 10,000 differ"
    );
}

/// A batch's new flows, opened after the second pass picked their
/// backends and fetched their reply buckets (Maglev's and random
/// choice's alike): each flow's SYN-ACK from its Pod finds the flow and
/// leaves from the VIP. Also when the table changed between the pass
/// and the frames, so that the pass's picks are not the inserts'
/// backends.
#[test]
fn replies_find_the_flows_a_batch_opened() {
    for changed in [false, true] {
        let table = compile(model(&PODS), SEED);
        let mut h = gateway(Arc::clone(&table), &PODS, 7);
        let target = |port: u16| match port % 2 {
            0 => (VIP, 8080, 5678),
            _ => (RANDOM_VIP, 80, 80),
        };
        let ports = 40_000..40_040u16;
        let syns: Vec<Vec<u8>> = ports
            .clone()
            .map(|port| {
                let (vip, vport, _) = target(port);
                Frame::arriving(CLIENT, vip).tcp(port, vport, segment(tcp_flags::SYN))
            })
            .collect();
        for syn in &syns {
            h.pipeline.prefetch(syn);
        }
        h.prefetch_flows();
        if changed {
            // Other backends at the same places: the random port's in
            // reverse, Maglev's from a table of another seed.
            h.table = compile(model(&[POD3, POD2, POD1]), SEED ^ 1);
        }
        // The batch's frames in the order the passes saw them, then the
        // Pods' answers.
        let mut pods = Vec::new();
        for (port, mut syn) in ports.clone().zip(syns) {
            let verdict = h.run(&mut syn);
            assert_eq!(
                verdict,
                Verdict::Forward { port: POD_PORT },
                "changed {changed}: SYN from {port}"
            );
            let pod: [u8; 4] = syn[30..34].try_into().expect("an IPv4 frame");
            pods.push(pod);
        }
        for (port, pod) in ports.clone().zip(pods) {
            let (vip, vport, target) = target(port);
            let mut syn_ack = Frame::arriving(pod, CLIENT).tcp(
                target,
                port,
                segment(tcp_flags::SYN | tcp_flags::ACK),
            );
            assert_eq!(
                h.run(&mut syn_ack),
                Verdict::Forward { port: CLIENT_PORT },
                "changed {changed}: the SYN-ACK to {port} from {pod:?}"
            );
            assert_eq!(
                syn_ack,
                to_client(port, vip, vport, tcp_flags::SYN | tcp_flags::ACK),
                "changed {changed}: the SYN-ACK to {port} from {pod:?}"
            );
        }
        assert_eq!(h.counters().new_flows.get(), 40, "changed {changed}");
    }
}
