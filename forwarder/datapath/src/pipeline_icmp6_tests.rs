//! Pipeline cases for ICMPv6 errors about tracked IPv6 flows and for
//! IPv6 fragments: input frame -> verdict and exact output frame.
//! Expected frames are built with etherparse, which computes every
//! checksum from scratch (ICMPv6's over the IPv6 pseudo-header, the
//! quoted TCP or UDP checksum over the quoted addresses), so a
//! byte-exact match proves the rewrites of the quoted packet and of the
//! outer header and the checksums, recomputed independently.

use std::net::Ipv6Addr;
use std::sync::Arc;

use cipgw_config::{ClusterIp, IpFamily as Family, ServiceName, ServiceTable};
use etherparse::icmpv6::{
    DestUnreachableCode, ParameterProblemCode, ParameterProblemHeader, TimeExceededCode,
};
use etherparse::{Icmpv6Type, PacketBuilder};

use super::*;
use crate::conntrack::snat::SnatConfig;
use crate::harness::mac::{
    CLIENT as CLIENT_MAC, GW_CLIENT_SIDE as GW_CLIENT_MAC, GW_POD_SIDE as GW_POD_MAC,
    POD1 as POD1_MAC,
};
use crate::harness::{
    endpoint, service, service_port, Harness, Net, CLIENT_IFINDEX, CLIENT_PORT, POD_IFINDEX,
    POD_PORT,
};
use crate::pipeline::ipv6_tests::{frame6, tcp6};
use crate::route::Route;
use crate::wire::ipv6::next_header;

const CLIENT6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const POD6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0x11];
/// A router between the gateway and the Pods (on the Pod arm).
const ROUTER6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0xfe];
const SNAT6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1];
const SNAT_PORT: u16 = 61000;
/// `echo`: 8080/tcp -> POD6:5678.
const VIP6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x10];
/// `dns`: 53/udp -> POD6:5353.
const UDP_VIP6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x20];
/// Neither a VIP nor a Pod: someone else's.
const ELSEWHERE6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 7];

const FROM_CLIENT: ([u8; 6], [u8; 6]) = (CLIENT_MAC, GW_CLIENT_MAC);
const TO_POD: ([u8; 6], [u8; 6]) = (GW_POD_MAC, POD1_MAC);
const FROM_POD: ([u8; 6], [u8; 6]) = (POD1_MAC, GW_POD_MAC);
const TO_CLIENT: ([u8; 6], [u8; 6]) = (GW_CLIENT_MAC, CLIENT_MAC);

fn v6(octets: [u8; 16]) -> Ipv6Addr {
    Ipv6Addr::from(octets)
}

/// Two IPv6-only Services: `echo` (8080/tcp) and `dns` (53/udp), both
/// on POD6.
fn table() -> Arc<CompiledTable> {
    let six = |name: &str, vip: [u8; 16], port: u16, protocol: Protocol, target: u16| {
        let mut service_port = service_port(port, protocol, target, &[]);
        service_port.endpoints.push(cipgw_config::Endpoint {
            ip: v6(POD6).into(),
            ..endpoint([198, 18, 2, 11], target)
        });
        let mut s = service(
            ServiceName::new("default", name),
            None,
            None,
            vec![service_port],
        );
        s.cluster_ip = ClusterIp::single(v6(vip).into());
        s.ip_families = vec![Family::V6];
        s
    };
    Arc::new(CompiledTable::compile(
        Arc::new(ServiceTable {
            services: vec![
                six("dns", UDP_VIP6, 53, Protocol::Udp, 5353),
                six("echo", VIP6, 8080, Protocol::Tcp, 5678),
            ],
        }),
        1,
    ))
}

/// Both arms with IPv6 routes (2001:2::/64 to the clients,
/// 2001:2:0:2::/64 to the Pods), the client, the Pod and the router
/// resolved.
fn net() -> Arc<NetSnapshot> {
    let route = |prefix: [u8; 16], ifindex| Route {
        dst: v6(prefix),
        prefix_len: 64,
        ifindex,
        gateway: None,
    };
    let routes6 = vec![
        route(
            [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            CLIENT_IFINDEX,
        ),
        route(
            [0x20, 0x01, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0],
            POD_IFINDEX,
        ),
    ];
    let neighbours6 = [
        ((CLIENT_IFINDEX, v6(CLIENT6)), CLIENT_MAC),
        ((POD_IFINDEX, v6(POD6)), POD1_MAC),
        ((POD_IFINDEX, v6(ROUTER6)), [2, 0, 0, 0, 2, 0xfe]),
    ]
    .into_iter()
    .collect();
    Arc::new(Net::two_arm().build().with_ipv6(routes6, neighbours6))
}

fn harness(snat: bool) -> Harness {
    let conntrack6 = match snat {
        false => Conntrack::default(),
        true => Conntrack::default()
            .with_snat(&SnatConfig {
                addresses: vec![v6(SNAT6)],
                ports: SNAT_PORT..=SNAT_PORT,
            })
            .expect("valid SNAT config"),
    };
    Harness {
        pipeline: crate::harness::pipeline(Arc::new(Conntrack::default()), 1)
            .with_conntrack6(Arc::new(conntrack6)),
        table: table(),
        net: net(),
        now: 100,
    }
}

/// A UDP datagram over IPv6 with `payload`.
fn udp6(
    macs: ([u8; 6], [u8; 6]),
    src: ([u8; 16], u16),
    dst: ([u8; 16], u16),
    hop_limit: u8,
    payload: &[u8],
) -> Vec<u8> {
    frame6(macs, src.0, dst.0, hop_limit).udp(src.1, dst.1, payload)
}

/// An ICMPv6 message of `kind` from `src` to `dst`, quoting the first
/// `quote_len` bytes of the IPv6 packet in `quoted` (an Ethernet frame).
fn icmp6(
    macs: ([u8; 6], [u8; 6]),
    (src, dst): ([u8; 16], [u8; 16]),
    hop_limit: u8,
    kind: Icmpv6Type,
    quoted: &[u8],
    quote_len: usize,
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(src, dst, hop_limit)
        .icmpv6(kind)
        .write(&mut out, &quoted[14..14 + quote_len])
        .expect("ICMPv6 frame builds");
    out
}

/// The four error types the gateway translates, each with a name.
fn error_kinds() -> [(&'static str, Icmpv6Type); 4] {
    [
        (
            "destination unreachable (port)",
            Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port),
        ),
        ("packet too big", Icmpv6Type::PacketTooBig { mtu: 1280 }),
        (
            "time exceeded",
            Icmpv6Type::TimeExceeded(TimeExceededCode::HopLimitExceeded),
        ),
        (
            "parameter problem",
            Icmpv6Type::ParameterProblem(ParameterProblemHeader {
                code: ParameterProblemCode::ErroneousHeaderField,
                pointer: 7,
            }),
        ),
    ]
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

/// Where the client's packets leave from, and as what: the client's own
/// address and port, or the SNAT address and port.
fn source(snat: bool, port: u16) -> ([u8; 16], u16) {
    match snat {
        false => (CLIENT6, port),
        true => (SNAT6, SNAT_PORT),
    }
}

#[test]
fn every_error_type_about_a_tcp_flow_is_translated_both_ways() {
    for snat in [false, true] {
        let mut h = harness(snat);
        let from = source(snat, 40000);
        let mut forwarded = tcp6(FROM_CLIENT, (CLIENT6, 40000), (VIP6, 8080), 64, true);
        assert_eq!(h.run(&mut forwarded), Verdict::Forward { port: POD_PORT });
        assert_eq!(
            forwarded,
            tcp6(TO_POD, from, (POD6, 5678), 63, true),
            "SNAT {snat}: the SYN as the Pod gets it"
        );
        // What the client sent, as the gateway forwarded it but still to
        // the VIP: what the client's kernel matches the error against.
        let as_sent = tcp6(FROM_CLIENT, (CLIENT6, 40000), (VIP6, 8080), 63, true);
        let whole = forwarded.len() - 14;
        for (i, (kind_name, kind)) in error_kinds().into_iter().enumerate() {
            // From the Pod or from a router before it, the whole segment
            // or its headers and part of its data.
            let (sender, quote) = match i % 2 {
                0 => (POD6, whole),
                _ => (ROUTER6, 40 + 20 + 4),
            };
            let input = icmp6(FROM_POD, (sender, from.0), 64, kind, &forwarded, quote);
            let output = icmp6(TO_CLIENT, (VIP6, CLIENT6), 63, kind, &as_sent, quote);
            run(
                &mut h,
                &input,
                Verdict::Forward { port: CLIENT_PORT },
                Some(&output),
                &format!("SNAT {snat}: {kind_name} for the client"),
            );
        }

        // The other way: the client's error about a reply it got (from
        // the VIP) reaches the Pod about what the Pod sent.
        let mut seen = tcp6(FROM_POD, (POD6, 5678), from, 64, false);
        assert_eq!(h.run(&mut seen), Verdict::Forward { port: CLIENT_PORT });
        assert_eq!(
            seen,
            tcp6(TO_CLIENT, (VIP6, 8080), (CLIENT6, 40000), 63, false)
        );
        let as_sent_by_pod = tcp6(FROM_POD, (POD6, 5678), from, 63, false);
        for (kind_name, kind) in error_kinds() {
            let input = icmp6(FROM_CLIENT, (CLIENT6, VIP6), 64, kind, &seen, 58);
            let output = icmp6(TO_POD, (from.0, POD6), 63, kind, &as_sent_by_pod, 58);
            run(
                &mut h,
                &input,
                Verdict::Forward { port: POD_PORT },
                Some(&output),
                &format!("SNAT {snat}: {kind_name} for the Pod"),
            );
        }
        let c = h.counters();
        assert_eq!(c.icmp_errors.get(), 8, "SNAT {snat}");
        assert_eq!(c.passed.get(), 0, "SNAT {snat}");
    }
}

#[test]
fn errors_about_a_udp_flow_rewrite_the_quoted_udp_checksum() {
    for snat in [false, true] {
        let mut h = harness(snat);
        let from = source(snat, 33000);
        let query = udp6(FROM_CLIENT, (CLIENT6, 33000), (UDP_VIP6, 53), 64, b"query");
        let mut forwarded = query.clone();
        assert_eq!(h.run(&mut forwarded), Verdict::Forward { port: POD_PORT });
        let as_sent = udp6(FROM_CLIENT, (CLIENT6, 33000), (UDP_VIP6, 53), 63, b"query");
        let kind = Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port);
        let input = icmp6(FROM_POD, (POD6, from.0), 64, kind, &forwarded, 48);
        let output = icmp6(TO_CLIENT, (UDP_VIP6, CLIENT6), 63, kind, &as_sent, 48);
        run(
            &mut h,
            &input,
            Verdict::Forward { port: CLIENT_PORT },
            Some(&output),
            &format!("SNAT {snat}: port unreachable from the Pod about a UDP query"),
        );
    }
}

#[test]
fn a_packet_too_big_quoting_as_much_as_fits_in_1280_bytes_is_translated() {
    for snat in [false, true] {
        let mut h = harness(snat);
        let from = source(snat, 33001);
        let payload: Vec<u8> = (0..1400u32).map(|i| (i % 251) as u8).collect();
        let mut forwarded = udp6(FROM_CLIENT, (CLIENT6, 33001), (UDP_VIP6, 53), 64, &payload);
        assert_eq!(h.run(&mut forwarded), Verdict::Forward { port: POD_PORT });
        let as_sent = udp6(FROM_CLIENT, (CLIENT6, 33001), (UDP_VIP6, 53), 63, &payload);
        // RFC 4443 2.4 (c): the error is at most 1280 bytes, so the
        // quote ends inside the datagram's payload.
        let quote = 1280 - 40 - 8;
        let kind = Icmpv6Type::PacketTooBig { mtu: 1280 };
        let input = icmp6(FROM_POD, (ROUTER6, from.0), 64, kind, &forwarded, quote);
        assert_eq!(input.len() - 14, 1280, "a minimum-MTU error");
        let output = icmp6(TO_CLIENT, (UDP_VIP6, CLIENT6), 63, kind, &as_sent, quote);
        run(
            &mut h,
            &input,
            Verdict::Forward { port: CLIENT_PORT },
            Some(&output),
            &format!("SNAT {snat}: a truncated quote"),
        );
    }
}

/// `frame` (an IPv6 TCP or UDP frame without extension headers) with
/// the 8-byte extension headers `ext` (Hop-by-Hop, Destination Options:
/// PadN only) inserted before its transport header.
fn with_extension_headers(frame: &[u8], ext: &[u8]) -> Vec<u8> {
    let (head, rest) = frame.split_at(14 + 40);
    let mut out = head.to_vec();
    let mut next = out[14 + 6];
    let mut headers = Vec::new();
    for &kind in ext.iter().rev() {
        headers.splice(0..0, [next, 0, 1, 4, 0, 0, 0, 0]);
        next = kind;
    }
    out[14 + 6] = next;
    let payload_len = u16::from_be_bytes([out[18], out[19]]) + headers.len() as u16;
    out[18..20].copy_from_slice(&payload_len.to_be_bytes());
    out.extend_from_slice(&headers);
    out.extend_from_slice(rest);
    out
}

#[test]
fn a_quote_through_extension_headers_is_translated() {
    let mut h = harness(false);
    let mut forwarded = with_extension_headers(
        &tcp6(FROM_CLIENT, (CLIENT6, 40000), (VIP6, 8080), 64, true),
        &[next_header::DESTINATION_OPTIONS],
    );
    assert_eq!(h.run(&mut forwarded), Verdict::Forward { port: POD_PORT });
    let as_sent = with_extension_headers(
        &tcp6(FROM_CLIENT, (CLIENT6, 40000), (VIP6, 8080), 63, true),
        &[next_header::DESTINATION_OPTIONS],
    );
    let kind = Icmpv6Type::TimeExceeded(TimeExceededCode::HopLimitExceeded);
    let quote = forwarded.len() - 14;
    let input = icmp6(FROM_POD, (ROUTER6, CLIENT6), 64, kind, &forwarded, quote);
    let output = icmp6(TO_CLIENT, (VIP6, CLIENT6), 63, kind, &as_sent, quote);
    run(
        &mut h,
        &input,
        Verdict::Forward { port: CLIENT_PORT },
        Some(&output),
        "a quote with a Destination Options header",
    );
    // The error itself behind a Hop-by-Hop header: its checksum's
    // pseudo-header counts the message alone.
    let hop_by_hop = [next_header::HOP_BY_HOP];
    run(
        &mut h,
        &with_extension_headers(&input, &hop_by_hop),
        Verdict::Forward { port: CLIENT_PORT },
        Some(&with_extension_headers(&output, &hop_by_hop)),
        "an error with a Hop-by-Hop header",
    );
    assert_eq!(h.counters().icmp_errors.get(), 2);
}

#[test]
fn errors_without_a_flow_redirects_and_broken_errors_are_dropped() {
    let mut h = harness(false);
    let mut forwarded = tcp6(FROM_CLIENT, (CLIENT6, 40000), (VIP6, 8080), 64, true);
    assert_eq!(h.run(&mut forwarded), Verdict::Forward { port: POD_PORT });
    let too_big = Icmpv6Type::PacketTooBig { mtu: 1280 };
    let from_pod =
        |quoted: &[u8], quote: usize| icmp6(FROM_POD, (POD6, CLIENT6), 64, too_big, quoted, quote);
    let untracked = tcp6(TO_POD, (CLIENT6, 40999), (POD6, 5678), 63, true);
    let good = from_pod(&forwarded, 58);
    let mut bad_checksum = good.clone();
    bad_checksum[14 + 40 + 2] ^= 0x01;
    // Valid for the addresses it carries, but one of them was changed
    // after: ICMPv6's checksum covers the pseudo-header.
    let mut moved = good.clone();
    moved[14 + 8 + 15] ^= 0x40;
    let not_ours = tcp6(FROM_CLIENT, (CLIENT6, 40000), (ELSEWHERE6, 22), 63, true);
    let mut later_fragment_quoted = forwarded.clone();
    // A Fragment header (offset 8) before the quoted TCP header.
    later_fragment_quoted[14 + 6] = next_header::FRAGMENT;
    later_fragment_quoted.splice(14 + 40..14 + 40, [6, 0, 0, 8, 0, 0, 0, 1]);
    let redirect = |dst| {
        icmp6(
            FROM_CLIENT,
            (CLIENT6, dst),
            255,
            Icmpv6Type::Redirect,
            &forwarded,
            40,
        )
    };
    let hop_limit_1 = icmp6(FROM_POD, (POD6, CLIENT6), 1, too_big, &forwarded, 58);
    let experimental = icmp6(
        FROM_POD,
        (POD6, CLIENT6),
        64,
        Icmpv6Type::Unknown {
            type_u8: 100,
            code_u8: 0,
            bytes5to8: [0; 4],
        },
        &forwarded,
        58,
    );
    let solicitation = icmp6(
        FROM_CLIENT,
        (CLIENT6, VIP6),
        255,
        Icmpv6Type::NeighborSolicitation,
        &forwarded,
        40,
    );
    let cases: [(&str, Vec<u8>, Verdict); 11] = [
        (
            "quoting a datagram of no flow, to a backend port",
            from_pod(&untracked, 58),
            Verdict::Drop(DropReason::IcmpErrorWithoutFlow),
        ),
        (
            "a checksum that does not verify",
            bad_checksum,
            Verdict::Drop(DropReason::IcmpErrorMalformed),
        ),
        (
            "a checksum that verifies only without the pseudo-header change",
            moved,
            Verdict::Drop(DropReason::IcmpErrorMalformed),
        ),
        (
            "a quote cut before the ports",
            from_pod(&forwarded, 42),
            Verdict::Drop(DropReason::IcmpErrorMalformed),
        ),
        (
            "a quote cut inside the IPv6 header",
            from_pod(&forwarded, 30),
            Verdict::Drop(DropReason::IcmpErrorMalformed),
        ),
        (
            "a quoted later fragment",
            from_pod(&later_fragment_quoted, 56),
            Verdict::Drop(DropReason::IcmpErrorMalformed),
        ),
        (
            "a redirect to a VIP",
            redirect(VIP6),
            Verdict::Drop(DropReason::IcmpRedirect),
        ),
        (
            "hop limit 1",
            hop_limit_1,
            Verdict::Drop(DropReason::TtlExceeded),
        ),
        (
            "about neither a VIP nor a backend: the kernel's",
            from_pod(&not_ours, 58),
            Verdict::Pass,
        ),
        (
            "a redirect elsewhere: the kernel's",
            redirect(ELSEWHERE6),
            Verdict::Pass,
        ),
        (
            "an error type not translated: the kernel's",
            experimental,
            Verdict::Pass,
        ),
    ];
    for (name, input, verdict) in cases {
        run(&mut h, &input, verdict, None, name);
    }
    run(
        &mut h,
        &solicitation,
        Verdict::Pass,
        None,
        "Neighbor Discovery to a VIP: the kernel's",
    );
    let c = h.counters();
    assert_eq!(c.drops_of(DropReason::IcmpErrorWithoutFlow), 1);
    assert_eq!(c.drops_of(DropReason::IcmpErrorMalformed), 5);
    assert_eq!(c.drops_of(DropReason::IcmpRedirect), 1);
    assert_eq!(c.drops_of(DropReason::TtlExceeded), 1);
    assert_eq!(c.passed.get(), 4);
    assert_eq!(c.icmp_errors.get(), 0);
}

/// Splits the IPv6 packet of `frame` (an Ethernet frame without
/// extension headers) into fragments of `chunk` bytes of its payload (a
/// multiple of 8) with identification `ident`; the 8-byte extension
/// headers `ext` (PadN only) go before the Fragment header of each, as
/// its unfragmentable part (RFC 8200 4.5).
fn fragments6(frame: &[u8], chunk: usize, ident: u32, ext: &[u8]) -> Vec<Vec<u8>> {
    let (head, payload) = frame.split_at(14 + 40);
    let protocol = head[14 + 6];
    payload
        .chunks(chunk)
        .enumerate()
        .map(|(i, piece)| {
            let offset = i * chunk;
            let more = offset + piece.len() < payload.len();
            let mut out = head.to_vec();
            let mut first = next_header::FRAGMENT;
            let mut unfragmentable = Vec::new();
            for &kind in ext.iter().rev() {
                unfragmentable.splice(0..0, [first, 0, 1, 4, 0, 0, 0, 0]);
                first = kind;
            }
            out[14 + 6] = first;
            let len = (unfragmentable.len() + 8 + piece.len()) as u16;
            out[18..20].copy_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&unfragmentable);
            let word = offset as u16 | u16::from(more);
            out.extend_from_slice(&[protocol, 0]);
            out.extend_from_slice(&word.to_be_bytes());
            out.extend_from_slice(&ident.to_be_bytes());
            out.extend_from_slice(piece);
            out
        })
        .collect()
}

/// A 3,000-byte UDP payload.
fn big_payload() -> Vec<u8> {
    (0..3000u32).map(|i| (i % 251) as u8).collect()
}

#[test]
fn later_ipv6_fragments_follow_their_first_both_ways() {
    let no_ext: &[u8] = &[];
    let ext: &[u8] = &[next_header::HOP_BY_HOP, next_header::DESTINATION_OPTIONS];
    for (snat, ext) in [(false, no_ext), (true, no_ext), (false, ext), (true, ext)] {
        let name = format!("SNAT {snat}, {} headers before", ext.len());
        let mut h = harness(snat);
        let from = source(snat, 33000);
        let payload = big_payload();
        let sent = udp6(FROM_CLIENT, (CLIENT6, 33000), (UDP_VIP6, 53), 64, &payload);
        let expected = udp6(TO_POD, from, (POD6, 5353), 63, &payload);
        // Identifications above 16 bits: IPv6's are 32.
        let ident = 0x8000_0007;
        let (sent, expected) = (
            fragments6(&sent, 1232, ident, ext),
            fragments6(&expected, 1232, ident, ext),
        );
        assert_eq!(sent.len(), 3);
        for (i, (input, output)) in sent.iter().zip(&expected).enumerate() {
            run(
                &mut h,
                input,
                Verdict::Forward { port: POD_PORT },
                Some(output),
                &format!("{name}: forward fragment {i}"),
            );
        }

        // The answer, fragmented by the Pod, comes back from the VIP.
        let answer = udp6(FROM_POD, (POD6, 5353), from, 64, &payload);
        let expected = udp6(TO_CLIENT, (UDP_VIP6, 53), (CLIENT6, 33000), 63, &payload);
        let (answer, expected) = (
            fragments6(&answer, 1448, 9, ext),
            fragments6(&expected, 1448, 9, ext),
        );
        for (i, (input, output)) in answer.iter().zip(&expected).enumerate() {
            run(
                &mut h,
                input,
                Verdict::Forward { port: CLIENT_PORT },
                Some(output),
                &format!("{name}: reply fragment {i}"),
            );
        }
        let c = h.counters();
        assert_eq!(c.fragments.get(), 4, "{name}: two later fragments each way");
        assert_eq!((c.forwarded.get(), c.replies.get()), (1, 1), "{name}");
    }
}

#[test]
fn later_ipv6_fragments_without_their_first_are_dropped() {
    let mut h = harness(false);
    let datagram = |port: u16, dport: u16| {
        udp6(
            FROM_CLIENT,
            (CLIENT6, port),
            (UDP_VIP6, dport),
            64,
            &big_payload(),
        )
    };
    let sent = fragments6(&datagram(33000, 53), 1232, 11, &[]);
    run(
        &mut h,
        &sent[1],
        Verdict::Drop(DropReason::Fragment),
        None,
        "a later fragment before its first",
    );
    let mut first = sent[0].clone();
    assert_eq!(h.run(&mut first), Verdict::Forward { port: POD_PORT });
    // Same addresses and protocol, another identification.
    let other = fragments6(&datagram(33000, 53), 1232, 12, &[]);
    run(
        &mut h,
        &other[1],
        Verdict::Drop(DropReason::Fragment),
        None,
        "a later fragment of another datagram",
    );
    let mut last_hop = sent[1].clone();
    last_hop[14 + 7] = 1;
    run(
        &mut h,
        &last_hop,
        Verdict::Drop(DropReason::TtlExceeded),
        None,
        "a later fragment at hop limit 1",
    );
    let mut second = sent[1].clone();
    assert_eq!(h.run(&mut second), Verdict::Forward { port: POD_PORT });
    // Too long after the first: dropped.
    h.now += crate::fragments::TIMEOUT_SECS + 1;
    run(
        &mut h,
        &sent[2],
        Verdict::Drop(DropReason::Fragment),
        None,
        "a later fragment after the timeout",
    );
    // A first fragment the gateway refuses leaves nothing for the rest.
    let refused = fragments6(&datagram(33001, 54), 1232, 13, &[]);
    let mut first = refused[0].clone();
    assert!(matches!(h.run(&mut first), Verdict::Respond { .. }));
    run(
        &mut h,
        &refused[1],
        Verdict::Drop(DropReason::Fragment),
        None,
        "a later fragment of a refused datagram",
    );
    assert_eq!(h.counters().drops_of(DropReason::Fragment), 4);
    assert_eq!(h.counters().fragments.get(), 1);
}
