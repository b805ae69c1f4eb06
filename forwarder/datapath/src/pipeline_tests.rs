//! Table-driven pipeline cases: input frame -> verdict and exact output
//! frame, on the in-memory gateway of [`crate::harness`] (no AF_XDP).
//! Frames are built with etherparse, which computes every checksum from
//! scratch, so a byte-exact match also proves the incremental checksum
//! updates.

use std::sync::Arc;

use cipgw_config::{Protocol, ServiceName, ServiceTable};
use etherparse::PacketBuilder;

use super::*;
use crate::harness::addr::{CLIENT, GW_CLIENT_SIDE, POD1};
use crate::harness::mac::{
    CLIENT as CLIENT_MAC, GW_CLIENT_SIDE as GW_CLIENT_MAC, GW_POD_SIDE as GW_POD_MAC,
    POD1 as POD1_MAC,
};
use crate::harness::{
    service, service_port, Frame, Harness, Net, Segment, CLIENT_IFINDEX, CLIENT_PORT, POD_IFINDEX,
    POD_PORT,
};
use crate::reject::RefusalLimiter;

const VIP: [u8; 4] = [198, 18, 100, 10];
const UDP_VIP: [u8; 4] = [198, 18, 100, 20];
const EMPTY_VIP: [u8; 4] = [198, 18, 100, 30];

/// One backend per service so that the chosen backend is known.
fn table() -> Arc<CompiledTable> {
    Arc::new(CompiledTable::compile(model_on(POD1), 1))
}

/// The services of [`table`], with `pod` as the echo and udp Services'
/// endpoint.
fn model_on(pod: [u8; 4]) -> Arc<ServiceTable> {
    let name = |name| ServiceName::new("default", name);
    let services = vec![
        service(
            name("echo"),
            Some(VIP),
            None,
            vec![service_port(8080, Protocol::Tcp, 5678, &[pod])],
        ),
        service(
            name("empty"),
            Some(EMPTY_VIP),
            None,
            vec![service_port(80, Protocol::Tcp, 80, &[])],
        ),
        service(
            name("headless"),
            None,
            None,
            vec![service_port(5432, Protocol::Tcp, 5432, &[POD1])],
        ),
        service(
            name("udp"),
            Some(UDP_VIP),
            None,
            vec![service_port(53, Protocol::Udp, 5353, &[pod])],
        ),
    ];
    Arc::new(ServiceTable { services })
}

/// The lab's two arms with Pods .11 to .13 resolved; the client's MAC is
/// not resolved unless `client_resolved`.
fn net(client_resolved: bool) -> Arc<NetSnapshot> {
    let net = Net::two_arm().resolved(POD_IFINDEX, (11..14).map(|last| [198, 18, 2, last]));
    let net = if client_resolved {
        net.resolved(CLIENT_IFINDEX, [CLIENT])
    } else {
        net
    };
    Arc::new(net.build())
}

fn tcp(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    ttl: u8,
    syn: bool,
) -> Vec<u8> {
    let segment = Segment {
        flags: if syn { tcp_flags::SYN } else { tcp_flags::ACK },
        ack: 1,
        payload: b"GET / HTTP/1.0\r\n\r\n",
        ..Segment::default()
    };
    Frame {
        src_mac,
        dst_mac,
        src: src.0,
        dst: dst.0,
        ttl,
    }
    .tcp(src.1, dst.1, segment)
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
    Frame {
        src_mac,
        dst_mac,
        src: src.0,
        dst: dst.0,
        ttl,
    }
    .udp(src.1, dst.1, b"ping")
}

/// The RST the gateway answers with: from `from` to `to`, sequence `seq`,
/// and an ACK of `ack` when given (RFC 9293 3.10.7.1).
fn rst(from: ([u8; 4], u16), to: ([u8; 4], u16), seq: u32, ack: Option<u32>) -> Vec<u8> {
    let segment = Segment {
        flags: tcp_flags::RST | ack.map_or(0, |_| tcp_flags::ACK),
        seq,
        ack: ack.unwrap_or(0),
        window: 0,
        payload: &[],
    };
    Frame {
        src_mac: GW_CLIENT_MAC,
        dst_mac: CLIENT_MAC,
        src: from.0,
        dst: to.0,
        ttl: 64,
    }
    .tcp(from.1, to.1, segment)
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
    Frame {
        src_mac,
        dst_mac: GW_CLIENT_MAC,
        src,
        dst,
        ttl: 64,
    }
    .echo(reply, 0x4242, 3, b"0123456789abcdef")
}

/// A pipeline over `conntrack` with fresh counters and a fixed seed.
fn pipeline(conntrack: Arc<Conntrack>) -> Pipeline {
    crate::harness::pipeline(conntrack, 1)
}

/// The pipeline tests' gateway: [`table`] on [`net`] with the client
/// resolved, at second 100.
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
/// frames give the same verdicts and bytes with and without that pass
/// (and pass zero before it), and the malformed ones are harmless to
/// them.
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
    // Empty and short frames too: pass zero asks only for what they hold.
    for frame in &inputs {
        Pipeline::prefetch_headers(frame);
    }
    for frame in &inputs {
        batched.pipeline.prefetch(frame);
    }
    batched.prefetch_flows();
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
    batched.prefetch_flows();
}

/// A gateway whose UDP Service at `UDP_VIP:53` spreads new flows at
/// random over Pods .11 to .13.
fn spread_harness() -> Harness {
    let model = Arc::new(ServiceTable {
        services: vec![service(
            ServiceName::new("default", "spread"),
            Some(UDP_VIP),
            None,
            vec![service_port(
                53,
                Protocol::Udp,
                5353,
                &[POD1, crate::harness::addr::POD2, crate::harness::addr::POD3],
            )],
        )],
    });
    Harness {
        table: Arc::new(CompiledTable::compile(model, 1)),
        ..Harness::new()
    }
}

/// A client datagram from `port` to the spread Service.
fn spread_udp(port: u16) -> Vec<u8> {
    udp(CLIENT_MAC, GW_CLIENT_MAC, (CLIENT, port), (UDP_VIP, 53), 64)
}

/// The second pass picks the backend of each new flow of a batch (to
/// fetch its reply bucket) and the flow's processing takes that pick:
/// the picks are drawn in the order the flows' frames come, so a
/// batch's new flows go where the same frames one at a time send them,
/// byte for byte, whatever else the batch holds (established flows,
/// frames that are not flows). (A new flow's second frame in the same
/// batch draws a pick of its own that nothing takes: see
/// `a_pick_made_ahead_goes_to_its_own_flow_only`.)
#[test]
fn backends_picked_ahead_are_the_ones_frames_one_at_a_time_get() {
    let mut plain = spread_harness();
    let mut batched = spread_harness();
    // Established beforehand, in both.
    for h in [&mut plain, &mut batched] {
        for port in 30000..30004 {
            assert!(matches!(
                h.run(&mut spread_udp(port)),
                Verdict::Forward { .. }
            ));
        }
    }
    let mut batch: Vec<Vec<u8>> = Vec::new();
    for port in 40000..40060 {
        batch.push(spread_udp(port));
        if port % 5 == 0 {
            batch.push(spread_udp(30000 + port % 4));
            batch.push(client_syn(port, VIP, 8080));
            batch.push(vec![0u8; 20]);
        }
    }
    for frame in &batch {
        batched.pipeline.prefetch(frame);
    }
    batched.prefetch_flows();
    let mut backends = std::collections::HashSet::new();
    for (i, input) in batch.iter().enumerate() {
        let (mut a, mut b) = (input.clone(), input.clone());
        let (va, vb) = (plain.run(&mut a), batched.run(&mut b));
        assert_eq!(va, vb, "frame {i}: verdict");
        assert_eq!(a, b, "frame {i}: output bytes");
        if matches!(vb, Verdict::Forward { .. }) && b.len() > 34 {
            backends.insert([b[30], b[31], b[32], b[33]]);
        }
    }
    assert_eq!(
        backends.len(),
        3,
        "60 flows reached every Pod: {backends:?}"
    );
}

/// Frames processed in another order than the passes saw them (or
/// other frames) take no pick made for another flow: each new flow
/// still goes to one of its Service's Pods. A new flow's frames in one
/// batch all go where its first went (the second pass picked for each,
/// as neither was in the table yet; only the first frame's pick is
/// taken, and the second frame finds the flow).
#[test]
fn a_pick_made_ahead_goes_to_its_own_flow_only() {
    let pod_of = |frame: &[u8]| [frame[30], frame[31], frame[32], frame[33]];
    let mut h = spread_harness();
    let peeked: Vec<Vec<u8>> = (41000..41032).map(spread_udp).collect();
    for frame in &peeked {
        h.pipeline.prefetch(frame);
    }
    h.prefetch_flows();
    // Reversed, then others.
    let mut frames: Vec<Vec<u8>> = peeked.iter().rev().cloned().collect();
    frames.extend((42000..42008).map(spread_udp));
    for (i, mut frame) in frames.into_iter().enumerate() {
        let verdict = h.run(&mut frame);
        assert!(
            matches!(verdict, Verdict::Forward { .. }),
            "frame {i}: {verdict:?}"
        );
        let pod = pod_of(&frame);
        assert!(
            (11..14).contains(&pod[3]) && pod[..3] == [198, 18, 2],
            "frame {i} went to {pod:?}"
        );
    }
    // Each new flow twice in one batch.
    let batch: Vec<Vec<u8>> = (43000..43016)
        .flat_map(|port| [spread_udp(port), spread_udp(port)])
        .collect();
    for frame in &batch {
        h.pipeline.prefetch(frame);
    }
    h.prefetch_flows();
    for (i, pair) in batch.chunks(2).enumerate() {
        let (mut first, mut second) = (pair[0].clone(), pair[1].clone());
        assert!(matches!(h.run(&mut first), Verdict::Forward { .. }));
        assert!(matches!(h.run(&mut second), Verdict::Forward { .. }));
        assert_eq!(pod_of(&first), pod_of(&second), "flow {i}'s two frames");
    }
}

/// The second pass hands each frame whose flow the table holds the
/// record its bucket points to, and the frame's lookup reads that record
/// first. A record that changed between the pass and the frame (its flow
/// gone, the record another flow's, the key moved to another record) is
/// only a hint: each frame still goes where the table holds its flow
/// when the frame is processed.
#[test]
fn a_record_found_ahead_is_checked_by_the_lookup() {
    let pod2 = crate::harness::addr::POD2;
    let mut h = Harness::new();
    let ports = 40_000..40_016u16;
    // SYNs, then their retransmissions: these see the table every time
    // (the flow cache keeps only steady packets).
    for port in ports.clone() {
        let verdict = h.run(&mut client_syn(port, VIP, 8080));
        assert_eq!(
            verdict,
            Verdict::Forward { port: POD_PORT },
            "SYN from {port}"
        );
    }
    let batch: Vec<Vec<u8>> = ports
        .clone()
        .map(|port| client_syn(port, VIP, 8080))
        .collect();
    for frame in &batch {
        h.pipeline.prefetch(frame);
    }
    h.prefetch_flows();
    for (place, ahead) in h.pipeline.ahead[..batch.len()].iter().enumerate() {
        assert!(
            ahead.candidate.is_some(),
            "frame {place}: no record found ahead"
        );
    }
    // Between the pass and the frames: 40005's flow is removed, its
    // record taken by another flow, and 40005 tracked again towards POD2
    // in another record; 40009's flow is removed for good (first: the
    // free records are a stack).
    let key = |port: u16| FlowKey {
        src: CLIENT.into(),
        dst: VIP.into(),
        src_port: port,
        dst_port: 8080,
        protocol: Protocol::Tcp,
    };
    let conntrack = Arc::clone(&h.pipeline.v4.conntrack);
    assert!(conntrack.remove(&key(40_009)) && conntrack.remove(&key(40_005)));
    let elsewhere = (Ipv4Addr::from(pod2), 5678);
    conntrack
        .insert(key(50_000), (POD1.into(), 5678), h.now, FlowMeta::default())
        .expect("another flow in 40005's record");
    conntrack
        .insert(key(40_005), elsewhere, h.now, FlowMeta::default())
        .expect("40005 again, towards POD2");
    assert_eq!(
        conntrack.prefetch_flow(conntrack.hash(&key(50_000))),
        h.pipeline.ahead[5].candidate,
        "the record found ahead for 40005 now holds another flow"
    );
    for (port, mut frame) in ports.zip(batch) {
        let verdict = h.run(&mut frame);
        assert_eq!(
            verdict,
            Verdict::Forward { port: POD_PORT },
            "SYN from {port}"
        );
        let to = [frame[30], frame[31], frame[32], frame[33]];
        let want = if port == 40_005 { pod2 } else { POD1 };
        assert_eq!(to, want, "SYN from {port} went to {to:?}");
    }
    assert!(conntrack.peek(&key(40_009)).is_some(), "40009 tracked anew");
}

/// Frames of every shape the prefetch pass meets, for
/// `peeked_keys_are_the_parsed_ones`: TCP and UDP over both families
/// (which it must read), and what it must leave to the full parse.
fn peek_cases() -> Vec<Vec<u8>> {
    let v4 = Frame {
        src_mac: CLIENT_MAC,
        dst_mac: GW_CLIENT_MAC,
        src: CLIENT,
        dst: VIP,
        ttl: 64,
    };
    let v6 = crate::harness::Frame6 {
        src_mac: CLIENT_MAC,
        dst_mac: GW_CLIENT_MAC,
        src: crate::harness::addr6::lab(0, 2),
        dst: crate::harness::addr6::lab(100, 10),
        hop_limit: 64,
    };
    let mut fragment = v4.udp(40000, 8080, &[7; 40]);
    fragment[14 + 6] = 0x20; // More Fragments
    let mut options = v4.tcp(40000, 8080, Segment::default());
    options[14] = 0x46; // a 24-byte header: the ports are not at 34
    let mut vlan = v4.udp(40000, 8080, &[1; 8]);
    vlan[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
    vec![
        v4.tcp(40000, 8080, Segment::default()),
        v4.udp(40001, 53, &[1; 18]),
        v6.tcp(40002, 8080, Segment::default()),
        v6.udp(40003, 8080, &[1; 18]),
        fragment,
        options,
        vlan,
        client_syn(40004, VIP, 8080)[..30].to_vec(),
    ]
}

/// The prefetch pass reads the flow key straight off a frame's bytes;
/// whatever it reads of a frame that the full parse takes as a TCP or UDP
/// flow is that flow's key, however the frame's bytes are changed, and
/// it reads the common frames (TCP and UDP, no options, not fragments).
#[test]
fn peeked_keys_are_the_parsed_ones() {
    use proptest::prelude::*;
    let cases = peek_cases();
    for (i, frame) in cases[..4].iter().enumerate() {
        assert!(
            peek_key4(frame).is_some() || peek_key6(frame).is_some(),
            "common frame {i} is read"
        );
    }
    for (i, frame) in cases[4..].iter().enumerate() {
        assert!(
            peek_key4(frame).is_none() && peek_key6(frame).is_none(),
            "frame {} is left to the full parse",
            i + 4
        );
    }
    let agree = |frame: &[u8]| {
        let parsed = crate::wire::frame::Frame::parse(frame, frame.len()).ok();
        let flow4 = parsed.as_ref().and_then(flow_of).map(|f| f.key);
        let flow6 = parsed
            .as_ref()
            .and_then(<Ipv6Addr as PathFamily>::flow_of)
            .map(|f| f.key);
        if let (Some(peeked), Some(parsed)) = (peek_key4(frame), parsed.as_ref()) {
            prop_assert_eq!(Some(peeked), flow4, "IPv4 {:?}", parsed.l4());
        }
        if let (Some(peeked), Some(parsed)) = (peek_key6(frame), parsed.as_ref()) {
            prop_assert_eq!(Some(peeked), flow6, "IPv6 {:?}", parsed.l4());
        }
        Ok(())
    };
    proptest!(ProptestConfig::with_cases(2000), |(
        case in 0..cases.len(),
        changes in proptest::collection::vec((0usize..80, any::<u8>()), 0..4),
        cut in proptest::option::of(1usize..8),
    )| {
        let mut frame = cases[case].clone();
        for (at, byte) in changes {
            if let Some(b) = frame.get_mut(at) {
                *b = byte;
            }
        }
        frame.truncate(frame.len().saturating_sub(cut.unwrap_or(0)));
        agree(&frame)?;
    });
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
            "a later fragment whose first this worker never saw",
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

/// IPv6 is not served yet: whatever reaches a worker is the kernel's
/// (the XDP program steers no IPv6), and malformed IPv6 is counted.
#[test]
fn ipv6_is_the_kernels_and_malformed_ipv6_is_counted() {
    let mut h = Harness::new();
    let mut udp6 = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, GW_CLIENT_MAC)
        .ipv6(
            [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            [0x20, 0x01, 0, 2, 0, 0, 0, 0x64, 0, 0, 0, 0, 0, 0, 0, 0x10],
            64,
        )
        .udp(40000, 53)
        .write(&mut udp6, b"query")
        .expect("IPv6 frame builds");
    let mut frame = udp6.clone();
    assert_eq!(h.run(&mut frame), Verdict::Pass);
    let mut bad = udp6.clone();
    bad[14] = 0x50;
    assert_eq!(h.run(&mut bad), Verdict::Drop(DropReason::MalformedIpv6));
    let mut cut = udp6[..40].to_vec();
    assert_eq!(h.run(&mut cut), Verdict::Drop(DropReason::TruncatedIpv6));
    // UDP over IPv6 must carry a checksum (RFC 8200 8.1).
    let mut unchecked = udp6.clone();
    unchecked[14 + 40 + 6..14 + 40 + 8].fill(0);
    assert_eq!(
        h.run(&mut unchecked),
        Verdict::Drop(DropReason::UdpZeroChecksumV6)
    );
    assert_eq!(h.counters().drops_of(DropReason::UdpZeroChecksumV6), 1);
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
fn affinity_table(backends: &[u8]) -> Arc<CompiledTable> {
    let pods: Vec<[u8; 4]> = backends.iter().map(|&last| [198, 18, 2, last]).collect();
    let services = vec![service(
        ServiceName::new("default", "sticky"),
        Some(STICKY_VIP),
        Some(10),
        vec![service_port(80, Protocol::Tcp, 8080, &pods)],
    )];
    Arc::new(CompiledTable::compile(
        Arc::new(ServiceTable { services }),
        2,
    ))
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
    h.table = Arc::new(CompiledTable::compile(model_on(POD2), 2).with_retiring([
        (VIP.into(), 8080, Protocol::Tcp, POD1.into(), 5678),
        (UDP_VIP.into(), 53, Protocol::Udp, POD1.into(), 5353),
    ]));

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

/// Runs `frame` in through `ingress` with `room` bytes to grow into;
/// leaves `frame` as the frame that would leave.
fn run_from(h: &mut Harness, frame: &mut Vec<u8>, ingress: PortId, room: usize) -> Verdict {
    let ctx = BatchContext {
        table: &h.table,
        net: &h.net,
        now: h.now,
    };
    let len = frame.len();
    frame.resize(len + room, 0xee);
    let verdict = h.pipeline.process(frame, len, ingress, &ctx);
    frame.truncate(match verdict {
        Verdict::Respond { len, .. } => len,
        _ => len,
    });
    verdict
}

/// A frame that is not cipgw's gets one verdict and one count: `passed`,
/// and no drop reason beside it (AF_XDP cannot hand the frame back to the
/// kernel, but that is what `passed` counts).
#[test]
fn a_frame_that_is_not_ours_is_counted_once() {
    let mut h = Harness::new();
    let mut arp = client_syn(40000, VIP, 8080);
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    for mut frame in [
        client_syn(40001, GW_CLIENT_SIDE, 22),
        client_syn(40002, POD1, 5432),
        arp,
    ] {
        assert_eq!(h.run(&mut frame), Verdict::Pass);
    }
    let c = h.counters();
    assert_eq!((c.passed.get(), c.total_drops()), (3, 0));
    assert!(
        DropReason::ALL.iter().all(|r| r.name() != "not_ours"),
        "a passed frame has no drop reason to be counted under a second time"
    );
}

/// A ping that came in through a port the snapshot does not know, and one
/// whose reply cannot be built, are dropped under reasons of their own.
#[test]
fn unknown_ingress_ports_and_unanswerable_pings_have_their_own_reasons() {
    const UNKNOWN_PORT: PortId = 7;
    let mut h = Harness::new();
    let input = ping(CLIENT, VIP, CLIENT_MAC, false);
    let mut frame = input.clone();
    assert_eq!(
        run_from(&mut h, &mut frame, UNKNOWN_PORT, 256),
        Verdict::Drop(DropReason::UnknownIngressPort)
    );
    assert_eq!(frame, input, "untouched");
    // An echo request's code is 0 (RFC 792); this one cannot be answered.
    let mut input = ping(CLIENT, VIP, CLIENT_MAC, false);
    input[14 + 20 + 1] = 1;
    let mut frame = input.clone();
    assert_eq!(
        h.run(&mut frame),
        Verdict::Drop(DropReason::EchoReplyFailed)
    );
    assert_eq!(frame, input, "untouched");
    let c = h.counters();
    assert_eq!(c.drops_of(DropReason::UnknownIngressPort), 1);
    assert_eq!(c.drops_of(DropReason::EchoReplyFailed), 1);
    assert_eq!(c.drops_of(DropReason::NoTxQueue), 0);
    assert_eq!(c.drops_of(DropReason::UnsupportedProtocol), 0);
    assert_eq!(c.echo_replies.get(), 0);
}

/// Packets of an affinity flow refresh the client's binding at most once a
/// second from a worker (the shared map is locked for each refresh), and
/// the binding still lasts from the client's last packet.
#[test]
fn affinity_bindings_are_refreshed_once_a_second() {
    let mut h = Harness::new();
    let affinity = Arc::new(Affinity::default());
    h.pipeline = pipeline(Arc::new(Conntrack::default())).with_affinity(Arc::clone(&affinity));
    h.table = affinity_table(&[11, 12, 13]);
    let touches = || affinity.touches.load(std::sync::atomic::Ordering::Relaxed);
    let mut syn = tcp(
        CLIENT_MAC,
        GW_CLIENT_MAC,
        (CLIENT, 30000),
        (STICKY_VIP, 80),
        64,
        true,
    );
    assert_eq!(h.run(&mut syn), Verdict::Forward { port: POD_PORT });
    let pod = pod_of(&syn);
    for second in 0..3 {
        for _ in 0..20 {
            let mut data = client_ack(30000, STICKY_VIP, 80);
            assert_eq!(h.run(&mut data), Verdict::Forward { port: POD_PORT });
        }
        assert_eq!(touches(), second + 1, "one refresh in second {second}");
        h.now += 1;
    }
    // The last refresh was in second now - 1; the timeout is 10 s.
    h.now += 9;
    let mut syn = tcp(
        CLIENT_MAC,
        GW_CLIENT_MAC,
        (CLIENT, 30001),
        (STICKY_VIP, 80),
        64,
        true,
    );
    assert_eq!(h.run(&mut syn), Verdict::Forward { port: POD_PORT });
    assert_eq!(pod_of(&syn), pod, "the binding lasts from the last packet");
}

/// `frame` with 4 bytes of IPv4 options (four NOPs) inserted after its
/// 20-byte header, lengths and header checksum fixed up (the TCP/UDP/ICMP
/// checksums do not cover IP options).
fn with_ip_options(frame: &[u8]) -> Vec<u8> {
    let mut out = frame[..34].to_vec();
    out.extend_from_slice(&[1, 1, 1, 1]);
    out.extend_from_slice(&frame[34..]);
    out[14] = 0x46;
    let total = u16::from_be_bytes([out[16], out[17]]) + 4;
    out[16..18].copy_from_slice(&total.to_be_bytes());
    out[24..26].copy_from_slice(&[0, 0]);
    let c = crate::checksum::checksum(&out[14..38]);
    out[24..26].copy_from_slice(&c.to_be_bytes());
    out
}

/// Answers are built from the parsed frame's offsets, so a question with
/// IPv4 options gets the same answer as one without (a fresh header with
/// none), and port unreachable quotes the header with its options.
#[test]
fn answers_to_packets_with_ip_options() {
    let mut h = Harness::new();
    let mut syn = with_ip_options(&client_syn(40003, VIP, 9999));
    assert_eq!(
        h.run(&mut syn),
        Verdict::Respond {
            port: CLIENT_PORT,
            len: 54
        }
    );
    assert_eq!(
        syn,
        rst((VIP, 9999), (CLIENT, 40003), 0, Some(1000 + 18 + 1))
    );

    let mut ping_in = with_ip_options(&ping(CLIENT, VIP, CLIENT_MAC, false));
    let mut reply = Vec::new();
    PacketBuilder::ethernet2(GW_CLIENT_MAC, CLIENT_MAC)
        .ipv4(VIP, CLIENT, 64)
        .icmpv4_echo_reply(0x4242, 3)
        .write(&mut reply, b"0123456789abcdef")
        .expect("test frame builds");
    assert!(matches!(h.run(&mut ping_in), Verdict::Respond { .. }));
    assert_eq!(ping_in, reply);

    let question = with_ip_options(&udp(
        CLIENT_MAC,
        GW_CLIENT_MAC,
        (CLIENT, 40004),
        (VIP, 8080),
        64,
    ));
    let mut frame = question.clone();
    assert!(matches!(h.run(&mut frame), Verdict::Respond { .. }));
    let mut expected = Vec::new();
    PacketBuilder::ethernet2(GW_CLIENT_MAC, CLIENT_MAC)
        .ipv4(VIP, CLIENT, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        ))
        .write(&mut expected, &question[14..14 + 24 + 8])
        .expect("test frame builds");
    assert_eq!(frame, expected, "quotes the 24-byte header and 8 bytes");
}

/// An answer that does not fit the buffer is not sent, and the frame is
/// left as it came; the refusal is still counted under its reason.
#[test]
fn an_answer_without_room_leaves_the_frame_alone() {
    let mut h = Harness::new();
    // Port unreachable quoting 28 bytes needs 70; the datagram is 46.
    let input = udp(CLIENT_MAC, GW_CLIENT_MAC, (CLIENT, 40005), (VIP, 8080), 64);
    let mut frame = input.clone();
    assert_eq!(
        run_from(&mut h, &mut frame, CLIENT_PORT, 0),
        Verdict::Drop(DropReason::NoServicePort)
    );
    assert_eq!(frame, input);
    // A RST (54 bytes) fits into the SYN's own 72.
    let mut syn = client_syn(40006, VIP, 9999);
    assert!(matches!(
        run_from(&mut h, &mut syn, CLIENT_PORT, 0),
        Verdict::Respond { len: 54, .. }
    ));
    let c = h.counters();
    assert_eq!(c.drops_of(DropReason::NoServicePort), 2);
    assert_eq!(c.refusals.get(), 1);
}

/// The gateway's source NAT address in the SNAT cases: its own address on
/// the Pod arm.
const SNAT: [u8; 4] = [198, 18, 2, 1];
/// The only SNAT port of the cases, so the port a flow gets is known.
const SNAT_PORT: u16 = 61000;

/// [`Harness::new`] with source NAT on [`SNAT`], ports `ports`.
fn snat_harness(ports: std::ops::RangeInclusive<u16>) -> (Harness, Arc<Conntrack>) {
    let ct = Conntrack::default()
        .with_snat(&crate::conntrack::snat::SnatConfig {
            addresses: vec![SNAT.into()],
            ports,
        })
        .expect("valid SNAT config");
    let ct = Arc::new(ct);
    let h = Harness {
        pipeline: pipeline(Arc::clone(&ct)),
        ..Harness::new()
    };
    (h, ct)
}

fn snat_cases() -> Vec<Case> {
    vec![
        Case {
            name: "SNAT forward: a new flow leaves from the SNAT address and port",
            input: client_syn(40000, VIP, 8080),
            verdict: Verdict::Forward { port: POD_PORT },
            output: Some(tcp(
                GW_POD_MAC,
                POD1_MAC,
                (SNAT, SNAT_PORT),
                (POD1, 5678),
                63,
                true,
            )),
        },
        Case {
            name: "SNAT reply: the backend's answer to the SNAT port goes back from the VIP to the client",
            input: tcp(POD1_MAC, GW_POD_MAC, (POD1, 5678), (SNAT, SNAT_PORT), 64, false),
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
            name: "SNAT established: later packets keep address, port and backend",
            input: client_ack(40000, VIP, 8080),
            verdict: Verdict::Forward { port: POD_PORT },
            output: Some(tcp(
                GW_POD_MAC,
                POD1_MAC,
                (SNAT, SNAT_PORT),
                (POD1, 5678),
                63,
                false,
            )),
        },
        Case {
            name: "SNAT exhaustion: no port left towards the backend is refused with a RST",
            input: client_syn(40001, VIP, 8080),
            verdict: Verdict::Respond {
                port: CLIENT_PORT,
                len: 54,
            },
            output: Some(rst((VIP, 8080), (CLIENT, 40001), 0, Some(1000 + 18 + 1))),
        },
        Case {
            name: "SNAT UDP: ports are per protocol, the datagram gets the same port",
            input: udp(
                CLIENT_MAC,
                GW_CLIENT_MAC,
                (CLIENT, 33000),
                (UDP_VIP, 53),
                64,
            ),
            verdict: Verdict::Forward { port: POD_PORT },
            output: Some(udp(
                GW_POD_MAC,
                POD1_MAC,
                (SNAT, SNAT_PORT),
                (POD1, 5353),
                63,
            )),
        },
        Case {
            name: "SNAT UDP reply",
            input: udp(POD1_MAC, GW_POD_MAC, (POD1, 5353), (SNAT, SNAT_PORT), 64),
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
            name: "SNAT UDP exhaustion: ICMP port unreachable",
            input: udp(
                CLIENT_MAC,
                GW_CLIENT_MAC,
                (CLIENT, 33001),
                (UDP_VIP, 53),
                64,
            ),
            verdict: Verdict::Respond {
                port: CLIENT_PORT,
                len: 14 + 20 + 8 + 28,
            },
            output: Some(unreachable(&udp(
                CLIENT_MAC,
                GW_CLIENT_MAC,
                (CLIENT, 33001),
                (UDP_VIP, 53),
                64,
            ))),
        },
        Case {
            name: "SNAT: a backend packet to a SNAT port no flow holds",
            input: tcp(POD1_MAC, GW_POD_MAC, (POD1, 5678), (SNAT, 61001), 64, false),
            verdict: Verdict::Drop(DropReason::ReplyWithoutFlow),
            output: None,
        },
    ]
}

fn run_cases(h: &mut Harness, cases: Vec<Case>) {
    for case in cases {
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
}

#[test]
fn snat_forward_reply_and_exhaustion_cases() {
    let (mut h, ct) = snat_harness(SNAT_PORT..=SNAT_PORT);
    run_cases(&mut h, snat_cases());
    let c = h.counters();
    assert_eq!(c.new_flows.get(), 2, "one TCP and one UDP flow");
    assert_eq!(c.drops_of(DropReason::SnatPortsExhausted), 2);
    assert_eq!(c.refusals.get(), 2, "a RST and an ICMP port unreachable");
    assert_eq!(ct.stats().snat_exhausted.get(), 2);
    assert_eq!(
        ct.snat_ports_in_use(),
        vec![(Ipv4Addr::from(SNAT), 2)],
        "one TCP and one UDP port held"
    );
    let mut listed = Vec::new();
    ct.for_each(|key, hit| listed.push((key.dst, hit.snat)));
    assert!(
        listed.contains(&(Ipv4Addr::from(SNAT), Some((CLIENT.into(), 40000)))),
        "the reply key holds the SNAT address and leads back to the client: {listed:?}"
    );
}

/// Packets of a flow with source NAT that the worker's flow cache
/// serves (after the first of each direction) leave rewritten byte for
/// byte as the table's first ones did: the cached rewrite, with its
/// checksum deltas made once, both ways.
#[test]
fn snat_flows_served_from_the_flow_cache_are_rewritten_as_by_the_table() {
    let (mut h, ct) = snat_harness(SNAT_PORT..=SNAT_PORT);
    let query = || {
        udp(
            CLIENT_MAC,
            GW_CLIENT_MAC,
            (CLIENT, 33000),
            (UDP_VIP, 53),
            64,
        )
    };
    let answer = || udp(POD1_MAC, GW_POD_MAC, (POD1, 5353), (SNAT, SNAT_PORT), 64);
    let keys = [
        FlowKey {
            src: Ipv4Addr::from(CLIENT),
            dst: Ipv4Addr::from(UDP_VIP),
            src_port: 33000,
            dst_port: 53,
            protocol: Protocol::Udp,
        },
        FlowKey {
            src: Ipv4Addr::from(POD1),
            dst: Ipv4Addr::from(SNAT),
            src_port: 5353,
            dst_port: SNAT_PORT,
            protocol: Protocol::Udp,
        },
    ];
    let cached = |h: &Harness, key: &FlowKey| {
        h.pipeline
            .v4
            .flows
            .get(key, key.mix(), h.now, ct.removals(key.mix()), &ct)
            .is_some()
    };
    for round in 0..4 {
        let mut forward = query();
        assert_eq!(h.run(&mut forward), Verdict::Forward { port: POD_PORT });
        assert_eq!(
            forward,
            udp(GW_POD_MAC, POD1_MAC, (SNAT, SNAT_PORT), (POD1, 5353), 63),
            "round {round}: the query"
        );
        let mut reply = answer();
        assert_eq!(h.run(&mut reply), Verdict::Forward { port: CLIENT_PORT });
        assert_eq!(
            reply,
            udp(
                GW_CLIENT_MAC,
                CLIENT_MAC,
                (UDP_VIP, 53),
                (CLIENT, 33000),
                63
            ),
            "round {round}: the answer"
        );
        // The first answer and the second query are the table's (the
        // flow is replied from then on): the cache serves the rest.
        if round > 0 {
            for key in &keys {
                assert!(cached(&h, key), "round {round}: {key:?} cached");
            }
        }
    }
    assert_eq!(h.counters().new_flows.get(), 1);
}

/// A flow-cache entry holds its rewrite in the room the hit took: 56
/// bytes for IPv4 and 104 for IPv6, as `CachedFlow` and
/// `FlowCache::SLOTS` say (448 KiB and 832 KiB a cache).
#[test]
fn flow_cache_entries_are_as_large_as_documented() {
    assert_eq!(std::mem::size_of::<CachedFlow<Ipv4Addr>>(), 56);
    assert_eq!(std::mem::size_of::<CachedFlow<Ipv6Addr>>(), 104);
}

/// A flow-cache entry serves what the table's hit it was made from
/// gives a packet: the hit's direction, state, affinity, counter slot and
/// record, and its rewrite, whose destination is a forward packet's
/// backend; both ways, with and without source NAT, in both families.
#[test]
fn a_flow_cache_entry_serves_what_its_hit_gives() {
    fn gives_back<A: PathFamily>(key: FlowKey<A>, nat: (A, u16), snat: (A, u16)) {
        for direction in [Direction::Forward, Direction::Reply] {
            for snat in [None, Some(snat)] {
                let hit = FlowHit {
                    direction,
                    nat_ip: nat.0,
                    nat_port: nat.1,
                    state: FlowState::UdpReplied,
                    affinity: true,
                    slot: 7,
                    snat,
                    record: 42,
                };
                let rewrite = Rewrite::of(&key, &hit);
                let entry = CachedFlow::new(key, &hit, rewrite, 1, Freshness::removals(0));
                let mut served = FlowHit::UNSET;
                entry.hit_into(&mut served);
                let case = format!("{direction:?}, source NAT {snat:?}");
                assert_eq!(
                    (served.direction, served.state, served.affinity),
                    (hit.direction, hit.state, hit.affinity),
                    "{case}"
                );
                assert_eq!(
                    (served.slot, served.record),
                    (hit.slot, hit.record),
                    "{case}"
                );
                assert_eq!(entry.rewrite, rewrite, "{case}");
                if direction == Direction::Forward {
                    assert_eq!(rewrite.backend(), nat, "{case}");
                }
            }
        }
    }
    gives_back(
        forward_key(40000),
        (Ipv4Addr::from(POD1), 5678),
        (Ipv4Addr::from(SNAT), SNAT_PORT),
    );
    let v6 = |last: u8| {
        let mut a = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        a[15] = last;
        Ipv6Addr::from(a)
    };
    gives_back(
        FlowKey {
            src: v6(1),
            dst: v6(2),
            src_port: 40000,
            dst_port: 443,
            protocol: Protocol::Tcp,
        },
        (v6(3), 8443),
        (v6(4), 61000),
    );
}

#[test]
fn snat_ports_return_when_flows_leave_and_new_flows_get_them() {
    let (mut h, ct) = snat_harness(SNAT_PORT..=SNAT_PORT);
    let mut syn = client_syn(40000, VIP, 8080);
    assert_eq!(h.run(&mut syn), Verdict::Forward { port: POD_PORT });
    let mut refused = client_syn(40001, VIP, 8080);
    assert!(matches!(h.run(&mut refused), Verdict::Respond { .. }));
    assert!(ct.remove(&forward_key(40000)), "the first flow leaves");
    assert_eq!(ct.snat_ports_in_use(), vec![(Ipv4Addr::from(SNAT), 0)]);
    let mut again = client_syn(40001, VIP, 8080);
    assert_eq!(h.run(&mut again), Verdict::Forward { port: POD_PORT });
    assert_eq!(
        again,
        tcp(
            GW_POD_MAC,
            POD1_MAC,
            (SNAT, SNAT_PORT),
            (POD1, 5678),
            63,
            true
        ),
        "the freed port is given again"
    );
}

#[test]
fn snat_hairpin_a_pod_reaches_itself_through_its_vip() {
    let (mut h, _) = snat_harness(SNAT_PORT..=SNAT_PORT);
    let mut syn = tcp(POD1_MAC, GW_POD_MAC, (POD1, 45000), (VIP, 8080), 64, true);
    assert_eq!(h.run(&mut syn), Verdict::Forward { port: POD_PORT });
    assert_eq!(
        syn,
        tcp(
            GW_POD_MAC,
            POD1_MAC,
            (SNAT, SNAT_PORT),
            (POD1, 5678),
            63,
            true
        ),
        "the Pod sees the gateway, not itself, as peer"
    );
    let mut answer = tcp(
        POD1_MAC,
        GW_POD_MAC,
        (POD1, 5678),
        (SNAT, SNAT_PORT),
        64,
        true,
    );
    assert_eq!(h.run(&mut answer), Verdict::Forward { port: POD_PORT });
    assert_eq!(
        answer,
        tcp(GW_POD_MAC, POD1_MAC, (VIP, 8080), (POD1, 45000), 63, true),
        "and its answer comes back to it from the VIP"
    );
}

#[test]
fn snat_keeps_cluster_cidr_echo_and_retirement() {
    let (h, ct) = snat_harness(61000..=61063);
    let mut h = Harness {
        pipeline: h.pipeline.with_config(PipelineConfig {
            cluster_cidrs: vec!["198.18.2.0/24".parse().expect("cidr")],
        }),
        ..h
    };
    let mut outside = client_syn(40000, VIP, 8080);
    assert_eq!(
        h.run(&mut outside),
        Verdict::Drop(DropReason::SourceNotInCluster)
    );
    let mut echo = ping(CLIENT, VIP, CLIENT_MAC, false);
    assert_eq!(
        h.run(&mut echo),
        Verdict::Drop(DropReason::SourceNotInCluster)
    );
    let mut inside = tcp(POD1_MAC, GW_POD_MAC, (POD1, 45000), (VIP, 8080), 64, true);
    assert_eq!(h.run(&mut inside), Verdict::Forward { port: POD_PORT });
    assert_eq!(ct.snat_ports_in_use(), vec![(Ipv4Addr::from(SNAT), 1)]);
    // The endpoint moves to Pod 2: the flow is retired at its next
    // packet, its port freed, and the new SYN gets Pod 2.
    h.table = Arc::new(
        CompiledTable::compile(model_on([198, 18, 2, 12]), 2).with_retiring([(
            VIP.into(),
            8080,
            Protocol::Tcp,
            POD1.into(),
            5678,
        )]),
    );
    let mut again = tcp(POD1_MAC, GW_POD_MAC, (POD1, 45000), (VIP, 8080), 64, true);
    assert_eq!(h.run(&mut again), Verdict::Forward { port: POD_PORT });
    assert_eq!(
        &again[30..34],
        &[198, 18, 2, 12],
        "the new flow goes to Pod 2"
    );
    assert_eq!(&again[26..30], &SNAT, "from the SNAT address");
    assert_eq!(ct.stats().retired.load(STAT_ORDER), 1);
    assert_eq!(
        ct.snat_ports_in_use(),
        vec![(Ipv4Addr::from(SNAT), 1)],
        "the retired flow's port came back; the new flow holds one"
    );
}

const STAT_ORDER: std::sync::atomic::Ordering = std::sync::atomic::Ordering::Relaxed;

fn forward_key(port: u16) -> FlowKey {
    FlowKey {
        src: CLIENT.into(),
        dst: VIP.into(),
        src_port: port,
        dst_port: 8080,
        protocol: Protocol::Tcp,
    }
}

/// The forward key of the client's UDP flow from `port` to `UDP_VIP:53`.
fn udp_vip_key(port: u16) -> FlowKey {
    FlowKey {
        src: CLIENT.into(),
        dst: UDP_VIP.into(),
        src_port: port,
        dst_port: 53,
        protocol: Protocol::Udp,
    }
}

/// Each flow's packets, bytes and start count at its endpoint's slot
/// (a table compiled with one slot per Service port and endpoint): the
/// slots of one port add up to what the port forwarded.
#[test]
fn packets_count_at_their_endpoints_slot() {
    const FLOWS: u16 = 60;
    let pods: Vec<[u8; 4]> = (11..14).map(|last| [198, 18, 2, last]).collect();
    let services = vec![service(
        ServiceName::new("default", "udp"),
        Some(UDP_VIP),
        None,
        vec![service_port(53, Protocol::Udp, 5353, &pods)],
    )];
    // Slot = the endpoint's last octet.
    let table = CompiledTable::compile_with_endpoint_slots(
        Arc::new(ServiceTable { services }),
        1,
        |_, _, backend| Some(u32::from(backend.ip.octets()[3])),
    );
    let counters = Arc::new(crate::counters::ServiceCounters::new());
    counters.ensure(16);
    let mut h = Harness {
        pipeline: pipeline(Arc::new(Conntrack::default()))
            .with_service_counters(Arc::clone(&counters)),
        table: Arc::new(table),
        net: net(true),
        now: 100,
    };
    let mut sent = [0u64; 3];
    let mut bytes = [0u64; 3];
    for port in 0..FLOWS {
        // Two packets per flow: its first (a backend is chosen) and an
        // established one.
        for _ in 0..2 {
            let mut frame = udp(
                CLIENT_MAC,
                GW_CLIENT_MAC,
                (CLIENT, 42000 + port),
                (UDP_VIP, 53),
                64,
            );
            let len = frame.len() as u64;
            let verdict = h.run(&mut frame);
            assert!(matches!(verdict, Verdict::Forward { .. }), "{verdict:?}");
            let pod = usize::from(pod_of(&frame) - 11);
            sent[pod] += 1;
            bytes[pod] += len;
        }
    }
    for (pod, (&packets, &bytes)) in sent.iter().zip(&bytes).enumerate() {
        let slot = counters.get(11 + pod as u32).expect("slot");
        assert_eq!(
            (slot.packets.get(), slot.bytes.get(), slot.flows.get()),
            (packets, bytes, packets / 2),
            "endpoint .{}",
            11 + pod
        );
        assert!(packets > 0, "every endpoint took flows: {sent:?}");
    }
    assert_eq!(sent.iter().sum::<u64>(), 2 * u64::from(FLOWS));
}

/// `--conntrack-accounting`: every packet of a flow counts on it, per
/// direction, whether the flow was found in the table or in the worker's
/// flow cache; without it nothing is counted.
#[test]
fn flows_count_their_packets_and_bytes_per_direction() {
    let ct = Arc::new(Conntrack::default().with_accounting());
    let mut h = Harness {
        pipeline: pipeline(Arc::clone(&ct)),
        ..Harness::new()
    };
    let ask = || {
        udp(
            CLIENT_MAC,
            GW_CLIENT_MAC,
            (CLIENT, 33100),
            (UDP_VIP, 53),
            64,
        )
    };
    let answer = || udp(POD1_MAC, GW_POD_MAC, (POD1, 5353), (CLIENT, 33100), 64);
    let (ask_len, answer_len) = (ask().len() as u64, answer().len() as u64);
    // Three questions and two answers: after the first answer the flow
    // is replied and its packets come from the flow cache.
    for frame in [ask(), answer(), ask(), answer(), ask()] {
        let mut frame = frame;
        let verdict = h.run(&mut frame);
        assert!(matches!(verdict, Verdict::Forward { .. }), "{verdict:?}");
    }
    let key = udp_vip_key(33100);
    let hit = ct.peek(&key).expect("the flow is tracked");
    assert_eq!(
        ct.counts(hit.record),
        Some(crate::conntrack::FlowCounts {
            packets: [3, 2],
            bytes: [3 * ask_len, 2 * answer_len],
        })
    );
    // A new flow in the same record starts from zero.
    assert!(ct.remove(&key));
    let mut frame = ask();
    h.run(&mut frame);
    let hit = ct.peek(&key).expect("tracked again");
    assert_eq!(
        ct.counts(hit.record).map(|c| c.packets),
        Some([1, 0]),
        "a fresh count"
    );

    let plain = Arc::new(Conntrack::default());
    let mut h = Harness {
        pipeline: pipeline(Arc::clone(&plain)),
        ..Harness::new()
    };
    let mut frame = ask();
    h.run(&mut frame);
    let hit = plain.peek(&key).expect("tracked");
    assert!(!plain.accounting());
    assert_eq!(plain.counts(hit.record), None, "off by default");
}

/// A one-way UDP flow (no reply yet: telemetry, logs, the veth
/// benchmark's udp-est) is served from the worker's cache from its second
/// packet on, while its record holds it as it was cached: its removal is
/// never served from the cache, not even once its record holds another
/// flow; a reply (a change of state) sends its next packet to the table,
/// which assures the flow, as Linux does.
#[test]
fn an_unreplied_udp_flow_is_cached_while_its_record_holds_it() {
    let ct = Arc::new(Conntrack::new(crate::conntrack::ConntrackConfig {
        max_flows: 2,
        unreplied_percent: 100,
        timeouts: Default::default(),
    }));
    let mut h = Harness {
        pipeline: pipeline(Arc::clone(&ct)),
        ..Harness::new()
    };
    let key = udp_vip_key;
    let send = |h: &mut Harness, port: u16| {
        let mut ask = udp(CLIENT_MAC, GW_CLIENT_MAC, (CLIENT, port), (UDP_VIP, 53), 64);
        assert_eq!(
            h.run(&mut ask),
            Verdict::Forward { port: POD_PORT },
            "client port {port}'s packet"
        );
    };
    let cached = |h: &Harness, port: u16| {
        let k = key(port);
        h.pipeline
            .v4
            .flows
            .get(&k, k.mix(), h.now, ct.removals(k.mix()), &ct)
            .is_some()
    };
    const WATCHED: u16 = 33200;
    const OTHER: u16 = 33201;

    send(&mut h, WATCHED);
    assert!(!cached(&h, WATCHED), "a new flow's packet is not cached");
    send(&mut h, WATCHED);
    assert!(cached(&h, WATCHED), "its next packet was, unreplied");

    let record = ct.peek(&key(WATCHED)).expect("tracked").record;
    assert!(ct.remove(&key(WATCHED)));
    send(&mut h, OTHER);
    assert_eq!(
        ct.peek(&key(OTHER)).expect("tracked").record,
        record,
        "another flow took the removed one's record"
    );
    assert!(!cached(&h, WATCHED), "a removed flow is not served");
    send(&mut h, WATCHED);
    send(&mut h, WATCHED);
    assert!(cached(&h, WATCHED), "tracked anew, and cached");

    let mut answer = udp(POD1_MAC, GW_POD_MAC, (POD1, 5353), (CLIENT, WATCHED), 64);
    assert_eq!(h.run(&mut answer), Verdict::Forward { port: CLIENT_PORT });
    assert!(!cached(&h, WATCHED), "the reply changed the flow's state");
    send(&mut h, WATCHED);
    assert!(cached(&h, WATCHED), "cached again, replied");
    // That packet went to the table, which assured the flow: new flows
    // in the full two-flow table evict the other one and each other,
    // never it.
    for port in 33300..33310 {
        send(&mut h, port);
    }
    assert!(
        ct.peek(&key(WATCHED)).is_some(),
        "the assured flow stayed through the new flows"
    );
}

/// Two flows whose keys share a flow-cache set both stay cached (a
/// direct-mapped cache would evict one on every packet of the other); a
/// third evicts the one cached longest ago; a stale way is reused first.
#[test]
fn flow_cache_sets_hold_two_flows() {
    let key = forward_key;
    let hit = |port: u16| FlowHit {
        direction: Direction::Forward,
        nat_ip: Ipv4Addr::from(POD1),
        nat_port: port,
        state: FlowState::TcpEstablished,
        affinity: false,
        slot: NO_SLOT,
        snat: None,
        record: 1,
    };
    let set = FlowCache::<Ipv4Addr>::set(key(1).mix());
    let same_set: Vec<u16> = (2..u16::MAX)
        .filter(|&p| FlowCache::<Ipv4Addr>::set(key(p).mix()) == set)
        .take(2)
        .collect();
    let (a, b, c) = (1, same_set[0], same_set[1]);
    let mut cache = FlowCache::<Ipv4Addr>::new();
    // Entries good while no removal is counted (none is here).
    let (ct, fresh) = (Conntrack::default(), Freshness::removals(0));
    // The NAT port the cache serves for client port `p` at `now`.
    let port_of = |cache: &FlowCache<Ipv4Addr>, p: u16, now: u32| {
        cache
            .get(&key(p), key(p).mix(), now, 0, &ct)
            .map(|(_, rewrite)| rewrite.backend().1)
    };
    // Caches client port `p`'s flow at `now`.
    let put = |cache: &mut FlowCache<Ipv4Addr>, p: u16, now: u32| {
        let rewrite = Rewrite::of(&key(p), &hit(p));
        cache.put(key(p), key(p).mix(), hit(p), rewrite, now, fresh);
    };
    put(&mut cache, a, 7);
    put(&mut cache, b, 7);
    assert_eq!(port_of(&cache, a, 7), Some(a), "first flow cached");
    assert_eq!(port_of(&cache, b, 7), Some(b), "second flow cached");
    put(&mut cache, c, 7);
    assert_eq!(port_of(&cache, c, 7), Some(c), "third flow cached");
    assert_eq!(port_of(&cache, b, 7), Some(b), "the newer of the two stays");
    assert!(
        cache.get(&key(a), key(a).mix(), 7, 0, &ct).is_none(),
        "the older of the two made way"
    );
    // A second later every entry is stale: a new flow takes the first way
    // without pushing a stale one on.
    put(&mut cache, a, 8);
    assert_eq!(port_of(&cache, a, 8), Some(a));
    assert!(
        cache.get(&key(c), key(c).mix(), 8, 0, &ct).is_none(),
        "stale entries are not served"
    );
    assert!(
        cache.holds(&key(a)) && cache.holds(&key(b)),
        "holds sees both ways"
    );
}

/// A cache whose memory a worker took at its start holds every entry,
/// serves none of the placeholders (not even for the placeholder's own
/// key, in any second), and then caches and serves as one taken at its
/// first flow; taking it again keeps what it holds.
#[test]
fn a_flow_cache_taken_at_start_serves_only_what_was_cached() {
    let key = forward_key;
    let hit = FlowHit {
        direction: Direction::Forward,
        nat_ip: Ipv4Addr::from(POD1),
        nat_port: 8080,
        state: FlowState::TcpEstablished,
        affinity: false,
        slot: NO_SLOT,
        snat: None,
        record: 1,
    };
    let (ct, fresh) = (Conntrack::default(), Freshness::removals(0));
    let mut cache = FlowCache::<Ipv4Addr>::new();
    cache.take_memory();
    assert_eq!(
        cache.slots.len(),
        FlowCache::<Ipv4Addr>::SLOTS,
        "every entry taken"
    );
    let placeholder = FlowKey {
        src: Ipv4Addr::UNSPECIFIED,
        dst: Ipv4Addr::UNSPECIFIED,
        src_port: 0,
        dst_port: 0,
        protocol: Protocol::Udp,
    };
    for now in [0, 1, 7, u32::MAX - 1] {
        assert!(
            cache
                .get(&placeholder, placeholder.mix(), now, 0, &ct)
                .is_none()
                && cache.get(&key(1), key(1).mix(), now, 0, &ct).is_none(),
            "a placeholder is never served (second {now})"
        );
    }
    cache.put(
        key(1),
        key(1).mix(),
        hit,
        Rewrite::of(&key(1), &hit),
        7,
        fresh,
    );
    // The record and the backend the cache serves.
    let served = |cache: &FlowCache<Ipv4Addr>| {
        cache
            .get(&key(1), key(1).mix(), 7, 0, &ct)
            .map(|(hit, rewrite)| (hit.record, rewrite.backend()))
    };
    let hit_served = Some((hit.record, (hit.nat_ip, hit.nat_port)));
    assert_eq!(served(&cache), hit_served);
    cache.take_memory();
    assert_eq!(
        served(&cache),
        hit_served,
        "taking the memory again keeps the entries"
    );
}

/// A connection ending elsewhere in the table leaves what the worker
/// cached of other parts of the key space cached; one ending in a cached
/// flow's part stales it (it is looked up again and cached anew), and
/// the cached flow's own removal is never served from the cache.
#[test]
fn a_removal_stales_only_the_cached_flows_of_its_parts() {
    let (mut h, ct) = Harness::sharing_conntrack();
    let key = forward_key;
    let reply = |port: u16| FlowKey {
        src: Ipv4Addr::from(POD1),
        dst: Ipv4Addr::from(CLIENT),
        src_port: 5678,
        dst_port: port,
        protocol: Protocol::Tcp,
    };
    let parts =
        |port: u16| [key(port), reply(port)].map(|k| Conntrack::<Ipv4Addr>::removal_part(k.mix()));
    let open = |h: &mut Harness, port: u16| {
        for mut frame in [client_syn(port, VIP, 8080), pod_synack(port)] {
            assert!(matches!(h.run(&mut frame), Verdict::Forward { .. }));
        }
        let mut data = client_ack(port, VIP, 8080);
        assert_eq!(h.run(&mut data), Verdict::Forward { port: POD_PORT });
    };
    let cached = |h: &mut Harness, port: u16| {
        let k = key(port);
        let removals = ct.removals(k.mix());
        h.pipeline
            .v4
            .flows
            .get(&k, k.mix(), h.now, removals, &ct)
            .is_some()
    };
    const WATCHED: u16 = 44100;
    open(&mut h, WATCHED);
    assert!(
        cached(&mut h, WATCHED),
        "an established flow's data is cached"
    );

    let elsewhere = (WATCHED + 1..)
        .find(|&p| parts(p).iter().all(|x| !parts(WATCHED).contains(x)))
        .expect("a connection in other parts");
    open(&mut h, elsewhere);
    assert!(ct.remove(&key(elsewhere)));
    assert!(
        cached(&mut h, WATCHED),
        "a connection ending in other parts leaves it cached"
    );

    let alongside = (WATCHED + 1..)
        .find(|&p| p != elsewhere && parts(p)[0] == parts(WATCHED)[0])
        .expect("a connection in the watched flow's part");
    open(&mut h, alongside);
    assert!(ct.remove(&key(alongside)));
    assert!(
        !cached(&mut h, WATCHED),
        "a connection ending in its part stales it"
    );
    let mut data = client_ack(WATCHED, VIP, 8080);
    assert_eq!(h.run(&mut data), Verdict::Forward { port: POD_PORT });
    assert!(cached(&mut h, WATCHED), "looked up again, and cached anew");

    assert!(ct.remove(&key(WATCHED)));
    assert!(!cached(&mut h, WATCHED), "its own removal stales it");
    let mut data = client_ack(WATCHED, VIP, 8080);
    assert!(
        matches!(h.run(&mut data), Verdict::Respond { .. }),
        "a removed flow's next segment is reset, not forwarded from the cache"
    );
}

/// A client port that reaches a Pod through one VIP cannot reach the
/// same Pod port through another (the replies could not be told apart):
/// a new flow whose pick clashes so goes to the port's next backend,
/// wrapping from the last to the first, and is refused when every
/// backend clashes.
#[test]
fn a_reply_clash_moves_a_new_flow_to_the_next_backend() {
    use crate::harness::addr::POD2;
    const VIP_A: [u8; 4] = [198, 18, 100, 61];
    const VIP_B: [u8; 4] = [198, 18, 100, 62];
    let harness = |b_pods: &[[u8; 4]]| {
        let name = |name| ServiceName::new("default", name);
        let model = Arc::new(ServiceTable {
            services: vec![
                service(
                    name("a"),
                    Some(VIP_A),
                    None,
                    vec![service_port(53, Protocol::Udp, 5353, &[POD1])],
                ),
                service(
                    name("b"),
                    Some(VIP_B),
                    None,
                    vec![service_port(53, Protocol::Udp, 5353, b_pods)],
                ),
            ],
        });
        Harness {
            table: Arc::new(CompiledTable::compile(model, 1)),
            ..Harness::new()
        }
    };
    let to =
        |vip: [u8; 4], port: u16| udp(CLIENT_MAC, GW_CLIENT_MAC, (CLIENT, port), (vip, 53), 64);
    let pod_of = |frame: &[u8]| -> [u8; 4] { frame[30..34].try_into().expect("IPv4") };
    // Pod 1 first and last: a pick of Pod 1 moves on to Pod 2, after it
    // or wrapped around to it.
    for b_pods in [[POD1, POD2], [POD2, POD1]] {
        let mut h = harness(&b_pods);
        for port in 40_000..40_040 {
            let mut first = to(VIP_A, port);
            assert!(matches!(h.run(&mut first), Verdict::Forward { .. }));
            assert_eq!(pod_of(&first), POD1, "{b_pods:?}: port {port} through A");
            let mut second = to(VIP_B, port);
            assert!(
                matches!(h.run(&mut second), Verdict::Forward { .. }),
                "{b_pods:?}: port {port} through B"
            );
            assert_eq!(pod_of(&second), POD2, "{b_pods:?}: port {port} through B");
        }
        assert_eq!(h.counters().new_flows.get(), 80, "{b_pods:?}");
    }
    // Pod 1 alone behind B: nothing to move to.
    let mut h = harness(&[POD1]);
    let mut first = to(VIP_A, 40_000);
    assert!(matches!(h.run(&mut first), Verdict::Forward { .. }));
    let mut second = to(VIP_B, 40_000);
    let verdict = h.run(&mut second);
    assert!(
        !matches!(verdict, Verdict::Forward { .. }),
        "refused: {verdict:?}"
    );
    assert_eq!(h.counters().drops_of(DropReason::ReplyClash), 1);
}

/// Runs `frames` through `h` as a worker runs an RX batch: both prefetch
/// passes, then each frame; every frame must be forwarded.
fn forward_batch(h: &mut Harness, frames: &mut [Vec<u8>]) {
    for frame in frames.iter() {
        Pipeline::prefetch_headers(frame);
        h.pipeline.prefetch(frame);
    }
    h.prefetch_flows();
    for (i, frame) in frames.iter_mut().enumerate() {
        let verdict = h.run(frame);
        assert!(
            matches!(verdict, Verdict::Forward { .. }),
            "frame {i} of the batch: {verdict:?}"
        );
    }
}

/// Batches of 64 frames until the flow cache has been asked about enough
/// of them to be judged, the frames written by `frame(k)` for the k-th.
fn batches_until_judged(h: &mut Harness, mut frame: impl FnMut(usize) -> Vec<u8>) {
    let batches = FlowCache::<Ipv4Addr>::JUDGED_AFTER as usize / 64;
    for b in 0..batches {
        let mut batch: Vec<Vec<u8>> = (b * 64..(b + 1) * 64).map(&mut frame).collect();
        forward_batch(h, &mut batch);
    }
}

/// The Pod address a forwarded `spread_udp` frame was sent to.
fn spread_pod(frame: &[u8]) -> [u8; 4] {
    [frame[30], frame[31], frame[32], frame[33]]
}

/// Eight `spread_udp` flows (client ports 30000-30007), established and
/// replied: each port with the Pod its flow went to.
fn replied_spread_flows(h: &mut Harness) -> Vec<(u16, [u8; 4])> {
    (30000..30008)
        .map(|port| {
            let mut frame = spread_udp(port);
            assert!(matches!(h.run(&mut frame), Verdict::Forward { .. }));
            let pod = spread_pod(&frame);
            let mut reply = udp(POD1_MAC, GW_POD_MAC, (pod, 5353), (CLIENT, port), 64);
            assert!(matches!(h.run(&mut reply), Verdict::Forward { .. }));
            (port, pod)
        })
        .collect()
}

/// A worker's flow cache that holds few of its packets' flows (here a
/// flood of new ones, which the cache never holds) is bypassed once it
/// has been asked about enough frames, for the rest of the second:
/// counted, not read or written, while established flows still go to
/// their Pods from the table. The next second uses it again.
#[test]
fn a_flow_cache_holding_few_flows_is_bypassed_for_the_rest_of_the_second() {
    let mut h = spread_harness();
    let steady = replied_spread_flows(&mut h);
    assert_eq!(h.pipeline.v4.flows.usage, CacheUse::Judging);

    batches_until_judged(&mut h, |k| spread_udp(40000 + k as u16));
    // The judgement comes with the next batch's second pass.
    let mut batch: Vec<Vec<u8>> = steady.iter().map(|&(port, _)| spread_udp(port)).collect();
    forward_batch(&mut h, &mut batch);
    assert_eq!(h.pipeline.v4.flows.usage, CacheUse::Bypassed);
    assert_eq!(h.pipeline.counters().flow_cache_bypasses.get(), 1);
    for (frame, &(port, pod)) in batch.iter().zip(&steady) {
        assert_eq!(
            spread_pod(frame),
            pod,
            "flow {port} kept its Pod from the table"
        );
    }
    // Bypassed: the frames' flows are neither found nor cached.
    let (port, _) = steady[0];
    forward_batch(&mut h, &mut [spread_udp(port), spread_udp(port)]);
    assert!(
        h.pipeline.v4.flows.slots.is_empty()
            && h.pipeline.v4.flows.parked.len() == FlowCache::<Ipv4Addr>::SLOTS,
        "the entries are set aside, not freed"
    );
    assert!(
        !h.pipeline.v4.flows.holds(&udp_vip_key(port)),
        "nothing is cached"
    );

    // The next second, the cache is used (and judged) again.
    h.now += 1;
    forward_batch(&mut h, &mut [spread_udp(port), spread_udp(port)]);
    assert_eq!(h.pipeline.v4.flows.usage, CacheUse::Judging);
    assert!(
        h.pipeline.v4.flows.holds(&udp_vip_key(port)),
        "cached again"
    );
    assert_eq!(h.pipeline.counters().flow_cache_bypasses.get(), 1);
}

/// While a family's flow cache is bypassed, the first pass hashes each
/// frame's key and asks for its conntrack bucket itself; the second pass
/// then leaves the cache alone and finds each flow's record from that
/// hash, and the flows still go to their Pods.
#[test]
fn a_bypassed_flow_cache_has_the_first_pass_hash_the_keys() {
    let mut h = spread_harness();
    let steady = replied_spread_flows(&mut h);
    batches_until_judged(&mut h, |k| spread_udp(40000 + k as u16));
    forward_batch(&mut h, &mut [spread_udp(40000)]);
    assert_eq!(h.pipeline.v4.flows.usage, CacheUse::Bypassed);

    let mut batch: Vec<Vec<u8>> = steady.iter().map(|&(port, _)| spread_udp(port)).collect();
    for frame in &batch {
        h.pipeline.prefetch(frame);
    }
    for (peeked, &(port, _)) in h.pipeline.peeked.iter().zip(&steady) {
        assert_eq!(
            peeked.hash,
            h.pipeline.v4.conntrack.hash(&udp_vip_key(port)),
            "flow {port} hashed by the first pass"
        );
    }
    h.prefetch_flows();
    for (i, &(port, _)) in steady.iter().enumerate() {
        assert!(!h.pipeline.peeked[i].held, "flow {port}: cache not asked");
        assert!(
            h.pipeline.ahead[i].candidate.is_some(),
            "flow {port}: its record found from the first pass's hash"
        );
    }
    for (frame, &(port, pod)) in batch.iter_mut().zip(&steady) {
        assert!(
            matches!(h.run(frame), Verdict::Forward { .. }),
            "flow {port}"
        );
        assert_eq!(spread_pod(frame), pod, "flow {port} kept its Pod");
    }
}

/// A flow cache that holds its packets' flows (a few busy connections)
/// is kept when judged, and stays in use for the rest of the second.
#[test]
fn a_flow_cache_holding_its_flows_is_kept() {
    let mut h = spread_harness();
    let mut steady: Vec<Vec<u8>> = (30000..30032).map(spread_udp).collect();
    forward_batch(&mut h, &mut steady);
    batches_until_judged(&mut h, |k| spread_udp(30000 + (k % 32) as u16));
    forward_batch(&mut h, &mut [spread_udp(30000)]);
    assert_eq!(h.pipeline.v4.flows.usage, CacheUse::Kept);
    assert_eq!(h.pipeline.counters().flow_cache_bypasses.get(), 0);
    // Kept for the rest of the second, whatever its frames: a flood of
    // new flows does not bypass it before the next second's judgement.
    batches_until_judged(&mut h, |k| spread_udp(40000 + k as u16));
    forward_batch(&mut h, &mut [spread_udp(30000)]);
    assert_eq!(h.pipeline.v4.flows.usage, CacheUse::Kept);
    assert_eq!(h.pipeline.counters().flow_cache_bypasses.get(), 0);
}

/// The judgement's boundary: a cache that held three in four of the
/// frames it was asked about is kept, one fewer is bypassed; nothing is
/// judged before [`FlowCache::JUDGED_AFTER`] frames, and a new second
/// judges afresh.
#[test]
fn a_flow_cache_is_kept_from_three_quarters_held() {
    let asked = FlowCache::<Ipv4Addr>::JUDGED_AFTER;
    let judged = |held: u32| {
        let mut cache = FlowCache::<Ipv4Addr>::new();
        assert!(!cache.judge(7), "a new second starts judging");
        cache.count(asked, held);
        let bypassed = cache.judge(7);
        assert_eq!(bypassed, cache.usage == CacheUse::Bypassed);
        cache
    };
    assert_eq!(judged(asked / 4 * 3).usage, CacheUse::Kept);
    let mut cache = judged(asked / 4 * 3 - 1);
    assert_eq!(cache.usage, CacheUse::Bypassed);
    assert!(!cache.judge(7), "judged once a second");
    assert!(!cache.judge(8));
    assert_eq!(
        cache.usage,
        CacheUse::Judging,
        "the next second judges afresh"
    );

    let mut cache = FlowCache::<Ipv4Addr>::new();
    cache.judge(7);
    cache.count(asked - 1, 0);
    assert!(!cache.judge(7));
    assert_eq!(cache.usage, CacheUse::Judging, "too few frames to judge");
}
