//! Pipeline cases for ICMP errors about tracked flows and for fragments:
//! input frame -> verdict and exact output frame. Expected frames are
//! built with etherparse (every checksum from scratch), so a byte-exact
//! match proves the rewrites of the quoted datagram and of the outer
//! header, and the incremental checksum updates.

use std::sync::Arc;

use etherparse::icmpv4::{DestUnreachableHeader, RedirectCode, RedirectHeader, TimeExceededCode};
use etherparse::{Icmpv4Type, PacketBuilder};

use super::*;
use crate::checksum::checksum;
use crate::conntrack::snat::SnatConfig;
use crate::harness::addr::{CLIENT, POD1};
use crate::harness::mac::{
    CLIENT as CLIENT_MAC, GW_CLIENT_SIDE as GW_CLIENT_MAC, GW_POD_SIDE as GW_POD_MAC,
    POD1 as POD1_MAC,
};
use crate::harness::{
    service, service_port, Frame as Addressing, Harness, Net, Segment, CLIENT_IFINDEX, CLIENT_PORT,
    POD_IFINDEX, POD_PORT,
};
use cipgw_config::{ServiceName, ServiceTable};

const VIP: [u8; 4] = [198, 18, 100, 10];
const UDP_VIP: [u8; 4] = [198, 18, 100, 20];
/// A router between the gateway and the Pods (on the Pod arm).
const ROUTER: [u8; 4] = [198, 18, 2, 254];
const SNAT: [u8; 4] = [198, 18, 2, 1];
const SNAT_PORT: u16 = 61000;

fn harness(snat: bool) -> Harness {
    let services = vec![
        service(
            ServiceName::new("default", "echo"),
            Some(VIP),
            None,
            vec![service_port(8080, Protocol::Tcp, 5678, &[POD1])],
        ),
        service(
            ServiceName::new("default", "udp"),
            Some(UDP_VIP),
            None,
            vec![service_port(53, Protocol::Udp, 5353, &[POD1])],
        ),
    ];
    let table = Arc::new(CompiledTable::compile(
        Arc::new(ServiceTable { services }),
        1,
    ));
    let net = Net::two_arm()
        .resolved(POD_IFINDEX, [POD1])
        .resolved(CLIENT_IFINDEX, [CLIENT])
        .build();
    let conntrack = match snat {
        false => Conntrack::default(),
        true => Conntrack::default()
            .with_snat(&SnatConfig {
                addresses: vec![SNAT.into()],
                ports: SNAT_PORT..=SNAT_PORT,
            })
            .expect("valid SNAT config"),
    };
    Harness {
        pipeline: crate::harness::pipeline(Arc::new(conntrack), 1),
        table,
        net: Arc::new(net),
        now: 100,
    }
}

fn addressing(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
) -> Addressing {
    Addressing {
        src_mac,
        dst_mac,
        src,
        dst,
        ttl,
    }
}

/// A SYN with 18 bytes of data, as etherparse builds it.
fn syn(at: Addressing, sport: u16, dport: u16) -> Vec<u8> {
    let segment = Segment {
        flags: tcp_flags::SYN,
        payload: b"GET / HTTP/1.0\r\n\r\n",
        ..Segment::default()
    };
    at.tcp(sport, dport, segment)
}

/// An ICMP error of `kind` carried by `at`, quoting the first
/// `quote_len` bytes of the IPv4 packet in `quoted` (an Ethernet frame).
fn icmp_error(at: Addressing, kind: Icmpv4Type, quoted: &[u8], quote_len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(at.src_mac, at.dst_mac)
        .ipv4(at.src, at.dst, at.ttl)
        .icmpv4(kind)
        .write(&mut out, &quoted[14..14 + quote_len])
        .expect("ICMP error frame builds");
    out
}

fn frag_needed() -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
        next_hop_mtu: 1280,
    })
}

fn run(h: &mut Harness, input: &[u8], verdict: Verdict, output: Option<&[u8]>, name: &str) {
    let mut frame = input.to_vec();
    assert_eq!(h.run(&mut frame), verdict, "case {name:?}");
    assert_eq!(
        frame,
        output.unwrap_or(input),
        "case {name:?}: output frame"
    );
}

/// The client's SYN to the VIP, forwarded: the flow the errors are about.
fn open_tcp_flow(h: &mut Harness, port: u16) -> Vec<u8> {
    let mut frame = syn(
        addressing(CLIENT_MAC, GW_CLIENT_MAC, CLIENT, VIP, 64),
        port,
        8080,
    );
    assert_eq!(h.run(&mut frame), Verdict::Forward { port: POD_PORT });
    frame
}

#[test]
fn errors_about_a_tracked_flow_reach_the_client_as_the_vip_and_the_backend_as_the_client() {
    let mut h = harness(false);
    let forwarded = open_tcp_flow(&mut h, 40000);
    // What the client sent, as the gateway forwarded it but with the
    // VIP still the destination: what the client's kernel will match.
    let as_sent = syn(
        addressing(CLIENT_MAC, GW_CLIENT_MAC, CLIENT, VIP, 63),
        40000,
        8080,
    );
    let to_client = addressing(GW_CLIENT_MAC, CLIENT_MAC, VIP, CLIENT, 63);
    // IP header and 28 bytes of TCP: the quoted checksum is rewritten.
    for (name, from, kind, quote) in [
        ("the backend: fragmentation needed", POD1, frag_needed(), 48),
        ("a router: fragmentation needed", ROUTER, frag_needed(), 48),
        (
            "a router: time exceeded, 8 bytes of TCP quoted",
            ROUTER,
            Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit),
            28,
        ),
        (
            "the backend: port unreachable, the whole segment quoted",
            POD1,
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
            forwarded.len() - 14,
        ),
    ] {
        let input = icmp_error(
            Addressing::arriving(from, CLIENT),
            kind.clone(),
            &forwarded,
            quote,
        );
        let output = icmp_error(to_client, kind, &as_sent, quote);
        run(
            &mut h,
            &input,
            Verdict::Forward { port: CLIENT_PORT },
            Some(&output),
            name,
        );
    }

    // The other way: the client's error about a reply it received (from
    // the VIP) goes to the backend about what the backend sent.
    let reply = Addressing::arriving(POD1, CLIENT).tcp(5678, 40000, Segment::default());
    let mut seen = reply.clone();
    assert_eq!(h.run(&mut seen), Verdict::Forward { port: CLIENT_PORT });
    let as_sent_by_pod =
        addressing(POD1_MAC, GW_POD_MAC, POD1, CLIENT, 63).tcp(5678, 40000, Segment::default());
    let kind = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port);
    let input = icmp_error(
        addressing(CLIENT_MAC, GW_CLIENT_MAC, CLIENT, VIP, 64),
        kind.clone(),
        &seen,
        40,
    );
    let output = icmp_error(
        addressing(GW_POD_MAC, POD1_MAC, CLIENT, POD1, 63),
        kind,
        &as_sent_by_pod,
        40,
    );
    run(
        &mut h,
        &input,
        Verdict::Forward { port: POD_PORT },
        Some(&output),
        "the client: port unreachable about a reply",
    );
    assert_eq!(h.counters().icmp_errors.get(), 5);
}

#[test]
fn errors_about_a_udp_flow_rewrite_the_quoted_udp_checksum() {
    let mut h = harness(false);
    let query = addressing(CLIENT_MAC, GW_CLIENT_MAC, CLIENT, UDP_VIP, 64).udp(33000, 53, b"query");
    let mut forwarded = query.clone();
    assert_eq!(h.run(&mut forwarded), Verdict::Forward { port: POD_PORT });
    let as_sent =
        addressing(CLIENT_MAC, GW_CLIENT_MAC, CLIENT, UDP_VIP, 63).udp(33000, 53, b"query");
    let kind = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port);
    let input = icmp_error(
        Addressing::arriving(POD1, CLIENT),
        kind.clone(),
        &forwarded,
        28,
    );
    let output = icmp_error(
        addressing(GW_CLIENT_MAC, CLIENT_MAC, UDP_VIP, CLIENT, 63),
        kind,
        &as_sent,
        28,
    );
    run(
        &mut h,
        &input,
        Verdict::Forward { port: CLIENT_PORT },
        Some(&output),
        "port unreachable from the Pod about a UDP query",
    );
}

#[test]
fn errors_through_source_nat_reach_the_client_and_the_backend() {
    let mut h = harness(true);
    let forwarded = open_tcp_flow(&mut h, 40000);
    assert_eq!(
        &forwarded[26..30],
        &SNAT,
        "the SYN left from the SNAT address"
    );
    let as_sent = syn(
        addressing(CLIENT_MAC, GW_CLIENT_MAC, CLIENT, VIP, 63),
        40000,
        8080,
    );
    let input = icmp_error(
        Addressing::arriving(ROUTER, SNAT),
        frag_needed(),
        &forwarded,
        48,
    );
    let output = icmp_error(
        addressing(GW_CLIENT_MAC, CLIENT_MAC, VIP, CLIENT, 63),
        frag_needed(),
        &as_sent,
        48,
    );
    run(
        &mut h,
        &input,
        Verdict::Forward { port: CLIENT_PORT },
        Some(&output),
        "a router's fragmentation needed to the SNAT address",
    );

    let reply = Addressing::arriving(POD1, SNAT).tcp(5678, SNAT_PORT, Segment::default());
    let mut seen = reply.clone();
    assert_eq!(h.run(&mut seen), Verdict::Forward { port: CLIENT_PORT });
    let as_sent_by_pod =
        addressing(POD1_MAC, GW_POD_MAC, POD1, SNAT, 63).tcp(5678, SNAT_PORT, Segment::default());
    let input = icmp_error(
        addressing(CLIENT_MAC, GW_CLIENT_MAC, CLIENT, VIP, 64),
        frag_needed(),
        &seen,
        40,
    );
    let output = icmp_error(
        addressing(GW_POD_MAC, POD1_MAC, SNAT, POD1, 63),
        frag_needed(),
        &as_sent_by_pod,
        40,
    );
    run(
        &mut h,
        &input,
        Verdict::Forward { port: POD_PORT },
        Some(&output),
        "the client's error about a reply goes to the Pod from the SNAT address",
    );
}

#[test]
fn errors_without_a_flow_redirects_and_broken_errors_are_dropped() {
    let mut h = harness(false);
    let forwarded = open_tcp_flow(&mut h, 40000);
    let untracked = syn(
        addressing(GW_POD_MAC, POD1_MAC, CLIENT, POD1, 63),
        40999,
        5678,
    );
    let from_pod = Addressing::arriving(POD1, CLIENT);
    let good = icmp_error(from_pod, frag_needed(), &forwarded, 48);
    let mut bad_checksum = good.clone();
    bad_checksum[14 + 20 + 2] ^= 0x01;
    let not_ours = syn(
        addressing(CLIENT_MAC, GW_CLIENT_MAC, CLIENT, [198, 18, 7, 7], 63),
        40000,
        22,
    );
    let redirect = Icmpv4Type::Redirect(RedirectHeader {
        code: RedirectCode::RedirectForNetwork,
        gateway_internet_address: [198, 18, 0, 254],
    });
    let cases: [(&str, Vec<u8>, Verdict); 5] = [
        (
            "quoting a datagram of no flow, to a backend port",
            icmp_error(from_pod, frag_needed(), &untracked, 48),
            Verdict::Drop(DropReason::IcmpErrorWithoutFlow),
        ),
        (
            "a checksum that does not verify",
            bad_checksum,
            Verdict::Drop(DropReason::IcmpErrorMalformed),
        ),
        (
            "a quote cut before the ports",
            icmp_error(from_pod, frag_needed(), &forwarded, 22),
            Verdict::Drop(DropReason::IcmpErrorMalformed),
        ),
        (
            "a redirect to a VIP",
            icmp_error(
                addressing(CLIENT_MAC, GW_CLIENT_MAC, CLIENT, VIP, 64),
                redirect,
                &forwarded,
                28,
            ),
            Verdict::Drop(DropReason::IcmpRedirect),
        ),
        (
            "about neither a VIP nor a backend: the kernel's",
            icmp_error(from_pod, frag_needed(), &not_ours, 28),
            Verdict::Pass,
        ),
    ];
    for (name, input, verdict) in cases {
        run(&mut h, &input, verdict, None, name);
    }
    let c = h.counters();
    assert_eq!(c.drops_of(DropReason::IcmpErrorWithoutFlow), 1);
    assert_eq!(c.drops_of(DropReason::IcmpErrorMalformed), 2);
    assert_eq!(c.drops_of(DropReason::IcmpRedirect), 1);
    assert_eq!(c.icmp_errors.get(), 0);
}

#[test]
fn an_error_leaves_the_flow_state_alone() {
    let mut h = harness(false);
    let ct = Arc::clone(&h.pipeline.v4.conntrack);
    let forwarded = open_tcp_flow(&mut h, 40000);
    let states = || {
        let mut states = Vec::new();
        ct.for_each(|_, hit| states.push(hit.state));
        states
    };
    let before = states();
    h.now += 30;
    let mut error = icmp_error(
        Addressing::arriving(POD1, CLIENT),
        frag_needed(),
        &forwarded,
        48,
    );
    assert_eq!(h.run(&mut error), Verdict::Forward { port: CLIENT_PORT });
    assert_eq!(states(), before);
    // SYN_SENT's 120 s run from the SYN, not from the error.
    assert_eq!(
        ct.sweep(100 + 121),
        1,
        "the flow expired on the SYN's clock"
    );
}

/// Splits the IPv4 packet of `frame` (no options) into fragments of
/// `chunk` payload bytes (a multiple of 8) with identification `ident`,
/// each with a valid header checksum.
fn fragments(frame: &[u8], chunk: usize, ident: u16) -> Vec<Vec<u8>> {
    let (eth, ip) = frame.split_at(14);
    let payload = &ip[20..];
    payload
        .chunks(chunk)
        .enumerate()
        .map(|(i, piece)| {
            let offset = i * chunk;
            let more = offset + piece.len() < payload.len();
            let mut header = ip[..20].to_vec();
            header[2..4].copy_from_slice(&((20 + piece.len()) as u16).to_be_bytes());
            header[4..6].copy_from_slice(&ident.to_be_bytes());
            let flags = if more { 0x2000 } else { 0 } | (offset / 8) as u16;
            header[6..8].copy_from_slice(&flags.to_be_bytes());
            header[10..12].fill(0);
            let c = checksum(&header);
            header[10..12].copy_from_slice(&c.to_be_bytes());
            [eth, &header, piece].concat()
        })
        .collect()
}

/// A 3,000-byte UDP datagram carried by `at`.
fn big_datagram(at: Addressing, sport: u16, dport: u16) -> Vec<u8> {
    let payload: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    at.udp(sport, dport, &payload)
}

#[test]
fn later_fragments_follow_their_first_both_ways() {
    for snat in [false, true] {
        let mut h = harness(snat);
        let source = if snat {
            (SNAT, SNAT_PORT)
        } else {
            (CLIENT, 33000)
        };
        let sent = big_datagram(
            addressing(CLIENT_MAC, GW_CLIENT_MAC, CLIENT, UDP_VIP, 64),
            33000,
            53,
        );
        let expected = big_datagram(
            addressing(GW_POD_MAC, POD1_MAC, source.0, POD1, 63),
            source.1,
            5353,
        );
        let (sent, expected) = (fragments(&sent, 1480, 7), fragments(&expected, 1480, 7));
        assert_eq!(sent.len(), 3);
        for (i, (input, output)) in sent.iter().zip(&expected).enumerate() {
            run(
                &mut h,
                input,
                Verdict::Forward { port: POD_PORT },
                Some(output),
                &format!("SNAT {snat}: forward fragment {i}"),
            );
        }

        // The answer, fragmented by the Pod, comes back from the VIP.
        let answer = big_datagram(Addressing::arriving(POD1, source.0), 5353, source.1);
        let expected = big_datagram(
            addressing(GW_CLIENT_MAC, CLIENT_MAC, UDP_VIP, CLIENT, 63),
            53,
            33000,
        );
        let (answer, expected) = (fragments(&answer, 1232, 9), fragments(&expected, 1232, 9));
        for (i, (input, output)) in answer.iter().zip(&expected).enumerate() {
            run(
                &mut h,
                input,
                Verdict::Forward { port: CLIENT_PORT },
                Some(output),
                &format!("SNAT {snat}: reply fragment {i}"),
            );
        }
        let c = h.counters();
        assert_eq!(
            c.fragments.get(),
            4,
            "SNAT {snat}: two later fragments each way"
        );
        assert_eq!((c.forwarded.get(), c.replies.get()), (1, 1));
    }
}

#[test]
fn later_fragments_without_their_first_are_dropped() {
    let mut h = harness(false);
    let sent = fragments(
        &big_datagram(
            addressing(CLIENT_MAC, GW_CLIENT_MAC, CLIENT, UDP_VIP, 64),
            33000,
            53,
        ),
        1480,
        11,
    );
    let name = "a later fragment before its first";
    run(
        &mut h,
        &sent[1],
        Verdict::Drop(DropReason::Fragment),
        None,
        name,
    );
    let mut first = sent[0].clone();
    assert_eq!(h.run(&mut first), Verdict::Forward { port: POD_PORT });
    let mut second = sent[1].clone();
    assert_eq!(h.run(&mut second), Verdict::Forward { port: POD_PORT });
    // Too long after the first: dropped.
    h.now += crate::fragments::TIMEOUT_SECS + 1;
    let name = "a later fragment after the timeout";
    run(
        &mut h,
        &sent[2],
        Verdict::Drop(DropReason::Fragment),
        None,
        name,
    );
    // A first fragment the gateway refuses leaves nothing for the rest.
    let refused = fragments(
        &big_datagram(
            addressing(CLIENT_MAC, GW_CLIENT_MAC, CLIENT, UDP_VIP, 64),
            33001,
            54,
        ),
        1480,
        12,
    );
    let mut first = refused[0].clone();
    assert!(matches!(h.run(&mut first), Verdict::Respond { .. }));
    run(
        &mut h,
        &refused[1],
        Verdict::Drop(DropReason::Fragment),
        None,
        "a later fragment of a refused datagram",
    );
    assert_eq!(h.counters().drops_of(DropReason::Fragment), 3);
}
