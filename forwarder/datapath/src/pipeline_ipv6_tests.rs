//! The IPv6 packet path: the same generic path as IPv4's over the IPv6
//! connection table, service table and routes. Frames are built with
//! etherparse, which computes every checksum from scratch, so a
//! byte-exact match also proves the incremental updates over the IPv6
//! pseudo-header.

use std::net::Ipv6Addr;
use std::sync::Arc;

use cipgw_config::{
    ClusterIp, IpFamily as Family, IpFamilyPolicy, Protocol, ServiceName, ServiceTable, Vips,
};
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

use super::*;
use crate::harness::mac::{
    CLIENT as CLIENT_MAC, GW_CLIENT_SIDE as GW_CLIENT_MAC, GW_POD_SIDE as GW_POD_MAC,
    POD1 as POD1_MAC,
};
use crate::harness::{
    service, service_port, Frame6, Harness, Net, Segment, CLIENT_IFINDEX, CLIENT_PORT, POD_IFINDEX,
    POD_PORT,
};
use crate::route::Route;

const CLIENT6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const POD6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0x11];
/// An IPv6 address on the Pod arm whose neighbour is not resolved.
const POD6_UNRESOLVED: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0x12];
const VIP6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x10];
const UDP_VIP6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x20];
const AWAY_VIP6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x30];
const VIP4: [u8; 4] = [198, 18, 100, 10];

fn v6(octets: [u8; 16]) -> Ipv6Addr {
    Ipv6Addr::from(octets)
}

/// A dual-stack "echo" (8080/tcp to 5678 on Pod 1 by IPv4 and IPv6), an
/// IPv6-only "dns" (53/udp to 5353), and an IPv6-only "away" whose Pod's
/// neighbour is not resolved.
fn table() -> Arc<CompiledTable> {
    let name = |name| ServiceName::new("default", name);
    let six = |vip: [u8; 16], port: cipgw_config::ServicePort| {
        let mut s = service(name("x"), None, None, vec![port]);
        s.cluster_ip = ClusterIp::single(v6(vip).into());
        s.ip_families = vec![Family::V6];
        s
    };
    let mut echo = service(
        name("echo"),
        Some(VIP4),
        None,
        vec![service_port(8080, Protocol::Tcp, 5678, &[[198, 18, 2, 11]])],
    );
    echo.cluster_ip = ClusterIp::Vips(
        Vips::dual(std::net::IpAddr::from(VIP4), v6(VIP6).into()).expect("one of each"),
    );
    echo.ip_family_policy = IpFamilyPolicy::RequireDualStack;
    echo.ip_families = vec![Family::V4, Family::V6];
    let mut pod6 = echo.ports[0].endpoints[0].clone();
    pod6.ip = v6(POD6).into();
    echo.ports[0].endpoints.push(pod6.clone());

    let mut dns_port = service_port(53, Protocol::Udp, 5353, &[]);
    dns_port.endpoints.push(cipgw_config::Endpoint {
        port: 5353,
        ..pod6.clone()
    });
    let mut dns = six(UDP_VIP6, dns_port);
    dns.name = name("dns");

    let mut away_port = service_port(80, Protocol::Tcp, 80, &[]);
    away_port.endpoints.push(cipgw_config::Endpoint {
        ip: v6(POD6_UNRESOLVED).into(),
        port: 80,
        ..pod6
    });
    let mut away = six(AWAY_VIP6, away_port);
    away.name = name("away");
    Arc::new(CompiledTable::compile(
        Arc::new(ServiceTable {
            services: vec![away, dns, echo],
        }),
        1,
    ))
}

/// Both arms with IPv6 routes (2001:2::/64 to the client, 2001:2:0:2::/64
/// to the Pods) and the client and Pod 1 resolved.
fn net() -> Arc<NetSnapshot> {
    let routes6 = vec![
        Route {
            dst: v6([0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            prefix_len: 64,
            ifindex: CLIENT_IFINDEX,
            gateway: None,
        },
        Route {
            dst: v6([0x20, 0x01, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]),
            prefix_len: 64,
            ifindex: POD_IFINDEX,
            gateway: None,
        },
    ];
    let neighbours6 = [
        ((CLIENT_IFINDEX, v6(CLIENT6)), CLIENT_MAC),
        ((POD_IFINDEX, v6(POD6)), POD1_MAC),
    ]
    .into_iter()
    .collect();
    Arc::new(Net::two_arm().build().with_ipv6(routes6, neighbours6))
}

fn harness() -> Harness {
    Harness {
        pipeline: crate::harness::pipeline(Arc::new(Conntrack::default()), 1),
        table: table(),
        net: net(),
        now: 100,
    }
}

/// A TCP segment over IPv6 (SYN or ACK, 18 bytes of data); the ICMPv6
/// tests build theirs here too.
pub(super) fn tcp6(
    macs: ([u8; 6], [u8; 6]),
    src: ([u8; 16], u16),
    dst: ([u8; 16], u16),
    hop_limit: u8,
    syn: bool,
) -> Vec<u8> {
    let flags = if syn { tcp_flags::SYN } else { tcp_flags::ACK };
    frame6(macs, src.0, dst.0, hop_limit).tcp(
        src.1,
        dst.1,
        Segment {
            flags,
            ack: 1,
            payload: b"GET / HTTP/1.0\r\n\r\n",
            ..Segment::default()
        },
    )
}

/// The addressing of an IPv6 frame.
pub(super) fn frame6(
    macs: ([u8; 6], [u8; 6]),
    src: [u8; 16],
    dst: [u8; 16],
    hop_limit: u8,
) -> Frame6 {
    Frame6 {
        src_mac: macs.0,
        dst_mac: macs.1,
        src,
        dst,
        hop_limit,
    }
}

fn udp6(
    macs: ([u8; 6], [u8; 6]),
    src: ([u8; 16], u16),
    dst: ([u8; 16], u16),
    hop_limit: u8,
) -> Vec<u8> {
    frame6(macs, src.0, dst.0, hop_limit).udp(src.1, dst.1, b"query")
}

const FROM_CLIENT: ([u8; 6], [u8; 6]) = (CLIENT_MAC, GW_CLIENT_MAC);
const TO_POD: ([u8; 6], [u8; 6]) = (GW_POD_MAC, POD1_MAC);
const FROM_POD: ([u8; 6], [u8; 6]) = (POD1_MAC, GW_POD_MAC);
const TO_CLIENT: ([u8; 6], [u8; 6]) = (GW_CLIENT_MAC, CLIENT_MAC);

#[test]
fn a_tcp_connection_to_an_ipv6_vip_goes_to_its_ipv6_pod_and_back() {
    let mut h = harness();
    let mut syn = tcp6(FROM_CLIENT, (CLIENT6, 40000), (VIP6, 8080), 64, true);
    assert_eq!(h.run(&mut syn), Verdict::Forward { port: POD_PORT });
    assert_eq!(
        syn,
        tcp6(TO_POD, (CLIENT6, 40000), (POD6, 5678), 63, true),
        "DNAT to the IPv6 Pod, hop limit decremented, checksum updated"
    );
    let mut answer = tcp6(FROM_POD, (POD6, 5678), (CLIENT6, 40000), 64, false);
    assert_eq!(h.run(&mut answer), Verdict::Forward { port: CLIENT_PORT });
    assert_eq!(
        answer,
        tcp6(TO_CLIENT, (VIP6, 8080), (CLIENT6, 40000), 63, false),
        "the reply comes from the VIP"
    );
    // Established: through the flow cache, still exact.
    for _ in 0..2 {
        let mut ack = tcp6(FROM_CLIENT, (CLIENT6, 40000), (VIP6, 8080), 64, false);
        assert_eq!(h.run(&mut ack), Verdict::Forward { port: POD_PORT });
        assert_eq!(ack, tcp6(TO_POD, (CLIENT6, 40000), (POD6, 5678), 63, false));
    }
    let c = h.counters();
    assert_eq!(
        (c.new_flows.get(), c.forwarded.get(), c.replies.get()),
        (1, 3, 1)
    );
    // The IPv4 side of the same Service is untouched by any of it.
    assert_eq!(h.pipeline.v4.conntrack.summary().flows, 0);
    assert_eq!(h.pipeline.v6.conntrack.summary().flows, 1);
}

#[test]
fn udp_to_an_ipv6_vip_is_forwarded_with_its_checksum_kept_valid() {
    let mut h = harness();
    let mut query = udp6(FROM_CLIENT, (CLIENT6, 33000), (UDP_VIP6, 53), 64);
    assert_eq!(h.run(&mut query), Verdict::Forward { port: POD_PORT });
    assert_eq!(query, udp6(TO_POD, (CLIENT6, 33000), (POD6, 5353), 63));
    let mut answer = udp6(FROM_POD, (POD6, 5353), (CLIENT6, 33000), 64);
    assert_eq!(h.run(&mut answer), Verdict::Forward { port: CLIENT_PORT });
    assert_eq!(
        answer,
        udp6(TO_CLIENT, (UDP_VIP6, 53), (CLIENT6, 33000), 63)
    );
}

/// Parses an answer and checks it goes back to the client from `from`.
fn answer_from(frame: &[u8], from: [u8; 16]) -> TransportSlice<'_> {
    let p = SlicedPacket::from_ethernet(frame).expect("answer parses");
    let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else {
        panic!("an IPv6 answer: {p:?}")
    };
    assert_eq!(
        (ip.header().source(), ip.header().destination()),
        (from, CLIENT6)
    );
    p.transport.expect("a transport header")
}

#[test]
fn ipv6_refusals_are_a_rst_and_an_icmpv6_port_unreachable() {
    let mut h = harness();
    // A port the Service does not define.
    let mut udp = udp6(FROM_CLIENT, (CLIENT6, 33000), (UDP_VIP6, 54), 64);
    assert!(matches!(
        h.run(&mut udp),
        Verdict::Respond {
            port: CLIENT_PORT,
            ..
        }
    ));
    assert!(matches!(
        answer_from(&udp, UDP_VIP6),
        TransportSlice::Icmpv6(m) if matches!(
            m.icmp_type(),
            etherparse::Icmpv6Type::DestinationUnreachable(
                etherparse::icmpv6::DestUnreachableCode::Port
            )
        )
    ));
    // A segment of a connection the gateway does not know.
    let mut ack = tcp6(FROM_CLIENT, (CLIENT6, 40001), (VIP6, 8080), 64, false);
    assert!(matches!(h.run(&mut ack), Verdict::Respond { .. }));
    assert!(matches!(answer_from(&ack, VIP6), TransportSlice::Tcp(t) if t.rst()));
    assert_eq!(h.counters().drops_of(DropReason::NoServicePort), 1);
    assert_eq!(h.counters().drops_of(DropReason::TcpNoFlow), 1);
    assert_eq!(h.counters().refusals.get(), 2);
}

#[test]
fn ping_to_an_ipv6_vip_is_answered_and_neighbor_discovery_is_the_kernels() {
    let mut h = harness();
    let mut ping = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, GW_CLIENT_MAC)
        .ipv6(CLIENT6, VIP6, 64)
        .icmpv6_echo_request(7, 1)
        .write(&mut ping, b"abc")
        .expect("builds");
    assert!(matches!(h.run(&mut ping), Verdict::Respond { .. }));
    assert!(matches!(
        answer_from(&ping, VIP6),
        TransportSlice::Icmpv6(_)
    ));
    assert_eq!(h.counters().echo_replies.get(), 1);

    let mut solicit = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, GW_CLIENT_MAC)
        .ipv6(CLIENT6, VIP6, 255)
        .icmpv6(etherparse::Icmpv6Type::Unknown {
            type_u8: icmpv6::kind::NEIGHBOR_SOLICITATION,
            code_u8: 0,
            bytes5to8: [0; 4],
        })
        .write(&mut solicit, &VIP6)
        .expect("builds");
    assert_eq!(h.run(&mut solicit), Verdict::Pass);
    // Not a VIP: the kernel's, as before.
    let mut other = udp6(FROM_CLIENT, (CLIENT6, 33000), (POD6, 53), 64);
    assert_eq!(h.run(&mut other), Verdict::Pass);
}

#[test]
fn ipv6_hop_limits_sources_and_unresolved_neighbours() {
    let mut h = harness();
    let mut last_hop = tcp6(FROM_CLIENT, (CLIENT6, 40002), (VIP6, 8080), 1, true);
    assert_eq!(h.run(&mut last_hop), Verdict::Drop(DropReason::TtlExceeded));
    let multicast = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let mut bad = tcp6(FROM_CLIENT, (multicast, 40003), (VIP6, 8080), 64, true);
    assert_eq!(h.run(&mut bad), Verdict::Drop(DropReason::BadSource));
    let mut from_vip = tcp6(FROM_CLIENT, (UDP_VIP6, 40004), (VIP6, 8080), 64, true);
    assert_eq!(h.run(&mut from_vip), Verdict::Drop(DropReason::VipAsSource));
    let mut away = tcp6(FROM_CLIENT, (CLIENT6, 40005), (AWAY_VIP6, 80), 64, true);
    assert_eq!(
        h.run(&mut away),
        Verdict::AwaitNeighbour {
            port: POD_PORT,
            next_hop: v6(POD6_UNRESOLVED).into(),
        }
    );
}

#[test]
fn cluster_cidrs_admit_ipv6_clients_by_their_own_family() {
    let mut h = harness();
    h.pipeline =
        crate::harness::pipeline(Arc::new(Conntrack::default()), 1).with_config(PipelineConfig {
            cluster_cidrs: vec![
                "198.18.0.0/24".parse().expect("literal"),
                "2001:2::/64".parse().expect("literal"),
            ],
        });
    let mut inside = tcp6(FROM_CLIENT, (CLIENT6, 40006), (VIP6, 8080), 64, true);
    assert_eq!(h.run(&mut inside), Verdict::Forward { port: POD_PORT });
    let outside = [0x20, 0x01, 0, 2, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let mut out = tcp6(FROM_CLIENT, (outside, 40007), (VIP6, 8080), 64, true);
    assert_eq!(
        h.run(&mut out),
        Verdict::Drop(DropReason::SourceNotInCluster)
    );
}

/// `frame` (Ethernet + IPv6, no extension headers) with a chain of
/// extension headers of `kinds` (each 8 octets: next header, length 0,
/// six octets of padding options) inserted before its upper layer. The
/// upper layer's checksum does not cover them, so it stays valid.
fn with_extensions(frame: &[u8], kinds: &[u8]) -> Vec<u8> {
    const IP: usize = 14;
    let upper = frame[IP + 6];
    let mut chain = Vec::with_capacity(8 * kinds.len());
    for (i, _) in kinds.iter().enumerate() {
        let next = kinds.get(i + 1).copied().unwrap_or(upper);
        // Next header, Hdr Ext Len 0, then a PadN option of 4 octets.
        chain.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    }
    let mut out = frame[..IP + 40].to_vec();
    out[IP + 6] = kinds[0];
    let payload = u16::from_be_bytes([out[IP + 4], out[IP + 5]]) + chain.len() as u16;
    out[IP + 4..IP + 6].copy_from_slice(&payload.to_be_bytes());
    out.extend_from_slice(&chain);
    out.extend_from_slice(&frame[IP + 40..]);
    out
}

const HOP_BY_HOP: u8 = 0;
const DESTINATION_OPTIONS: u8 = 60;

#[test]
fn extension_headers_are_walked_and_carried_through_unchanged() {
    let mut h = harness();
    let chain = [HOP_BY_HOP, DESTINATION_OPTIONS];
    let mut syn = with_extensions(
        &tcp6(FROM_CLIENT, (CLIENT6, 40010), (VIP6, 8080), 64, true),
        &chain,
    );
    assert_eq!(h.run(&mut syn), Verdict::Forward { port: POD_PORT });
    assert_eq!(
        syn,
        with_extensions(
            &tcp6(TO_POD, (CLIENT6, 40010), (POD6, 5678), 63, true),
            &chain
        ),
        "the flow is the TCP segment's behind the headers, which go along as they came"
    );
    let mut answer = with_extensions(
        &udp6(FROM_POD, (POD6, 5353), (CLIENT6, 33010), 64),
        &[DESTINATION_OPTIONS],
    );
    let mut query = udp6(FROM_CLIENT, (CLIENT6, 33010), (UDP_VIP6, 53), 64);
    assert_eq!(h.run(&mut query), Verdict::Forward { port: POD_PORT });
    assert_eq!(h.run(&mut answer), Verdict::Forward { port: CLIENT_PORT });
    assert_eq!(
        answer,
        with_extensions(
            &udp6(TO_CLIENT, (UDP_VIP6, 53), (CLIENT6, 33010), 63),
            &[DESTINATION_OPTIONS]
        ),
        "a reply behind a Destination Options header comes from the VIP"
    );
}

#[test]
fn too_many_or_truncated_extension_headers_are_dropped_and_counted() {
    let mut h = harness();
    let syn = tcp6(FROM_CLIENT, (CLIENT6, 40011), (VIP6, 8080), 64, true);
    // Eight are walked (as the XDP program walks them); a ninth is one
    // too many.
    let mut eight = with_extensions(&syn, &[DESTINATION_OPTIONS; 8]);
    assert_eq!(h.run(&mut eight), Verdict::Forward { port: POD_PORT });
    let mut nine = with_extensions(
        &tcp6(FROM_CLIENT, (CLIENT6, 40012), (VIP6, 8080), 64, true),
        &[DESTINATION_OPTIONS; 9],
    );
    assert_eq!(h.run(&mut nine), Verdict::Drop(DropReason::MalformedIpv6));
    // A Hop-by-Hop header anywhere but first is malformed (RFC 8200 4.1).
    let mut late = with_extensions(&syn, &[DESTINATION_OPTIONS, HOP_BY_HOP]);
    assert_eq!(h.run(&mut late), Verdict::Drop(DropReason::MalformedIpv6));
    // A header that runs past the packet: its length says 16 octets more
    // than the frame holds.
    let mut cut = with_extensions(&syn, &[DESTINATION_OPTIONS]);
    let total = cut.len();
    cut[14 + 40 + 1] = 200;
    cut.truncate(total);
    assert_eq!(h.run(&mut cut), Verdict::Drop(DropReason::TruncatedIpv6));
    let c = h.counters();
    assert_eq!(c.drops_of(DropReason::MalformedIpv6), 2);
    assert_eq!(c.drops_of(DropReason::TruncatedIpv6), 1);
}

/// The worker's prefetch pass covers IPv6 flows too (the IPv6 table's
/// buckets and records) and changes no verdict or byte, mixed with IPv4
/// frames and broken ones.
#[test]
fn prefetching_a_mixed_batch_changes_no_verdict_or_byte() {
    let mut plain = harness();
    let mut batched = harness();
    let syn6 = tcp6(FROM_CLIENT, (CLIENT6, 40020), (VIP6, 8080), 64, true);
    let inputs: Vec<Vec<u8>> = vec![
        syn6.clone(),
        tcp6(FROM_POD, (POD6, 5678), (CLIENT6, 40020), 64, false),
        tcp6(FROM_CLIENT, (CLIENT6, 40020), (VIP6, 8080), 64, false),
        udp6(FROM_CLIENT, (CLIENT6, 33020), (UDP_VIP6, 53), 64),
        syn6[..14 + 20].to_vec(),
        with_extensions(&syn6, &[DESTINATION_OPTIONS; 9]),
    ];
    // Twice: the second round finds the first round's flows.
    for _ in 0..2 {
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
    }
    assert_eq!(batched.pipeline.v6.conntrack.summary().flows, 2);
}

/// A one-way IPv6 UDP flow is served from the worker's cache from its
/// second packet on, as an IPv4 one is (see the IPv4 test of the same
/// name), and still forwarded byte for byte as the table would.
#[test]
fn an_unreplied_ipv6_udp_flow_is_cached_and_forwarded_the_same() {
    let mut h = harness();
    let key = FlowKey {
        src: Ipv6Addr::from(CLIENT6),
        dst: Ipv6Addr::from(UDP_VIP6),
        src_port: 33030,
        dst_port: 53,
        protocol: Protocol::Udp,
    };
    let cached = |h: &Harness| {
        let ct = &h.pipeline.v6.conntrack;
        h.pipeline
            .v6
            .flows
            .get(&key, key.mix(), h.now, ct.removals(key.mix()), ct)
            .is_some()
    };
    for packet in 0..3 {
        let mut query = udp6(FROM_CLIENT, (CLIENT6, 33030), (UDP_VIP6, 53), 64);
        assert_eq!(h.run(&mut query), Verdict::Forward { port: POD_PORT });
        assert_eq!(
            query,
            udp6(TO_POD, (CLIENT6, 33030), (POD6, 5353), 63),
            "packet {packet}"
        );
        assert_eq!(cached(&h), packet > 0, "cached after packet {packet}");
    }
}

/// IPv6 records hold a VIP's high half as an index into the connection
/// table's VIP prefixes (249 of them): Services whose VIPs come from 249
/// different /64s are all forwarded, and both ways rewritten to the
/// right VIP; a 250th /64's new connection is refused with a RST and
/// counted under its own reason, while the others carry on.
#[test]
fn vips_of_more_64s_than_the_table_holds_are_refused_and_counted() {
    let prefixes = crate::conntrack::VIP_PREFIXES_MAX;
    let vip = |n: usize| {
        let mut vip = VIP6;
        vip[6..8].copy_from_slice(&(0x100 + n as u16).to_be_bytes());
        vip
    };
    let services = (0..=prefixes)
        .map(|n| {
            let mut port = service_port(80, Protocol::Tcp, 5678, &[]);
            let mut pod = crate::harness::endpoint([0; 4], 5678);
            pod.ip = v6(POD6).into();
            port.endpoints.push(pod);
            let mut s = service(
                ServiceName::new("default", format!("s{n}")),
                None,
                None,
                vec![port],
            );
            s.cluster_ip = ClusterIp::single(v6(vip(n)).into());
            s.ip_families = vec![Family::V6];
            s
        })
        .collect();
    let mut h = harness();
    h.table = Arc::new(CompiledTable::compile(
        Arc::new(ServiceTable { services }),
        1,
    ));
    for n in 0..prefixes {
        let sport = 40000 + n as u16;
        let mut syn = tcp6(FROM_CLIENT, (CLIENT6, sport), (vip(n), 80), 64, true);
        assert_eq!(
            h.run(&mut syn),
            Verdict::Forward { port: POD_PORT },
            "VIP {n}"
        );
        let mut answer = tcp6(FROM_POD, (POD6, 5678), (CLIENT6, sport), 64, false);
        assert_eq!(h.run(&mut answer), Verdict::Forward { port: CLIENT_PORT });
        assert_eq!(
            answer,
            tcp6(TO_CLIENT, (vip(n), 80), (CLIENT6, sport), 63, false),
            "the reply comes from VIP {n}"
        );
    }
    let mut syn = tcp6(FROM_CLIENT, (CLIENT6, 39999), (vip(prefixes), 80), 64, true);
    assert!(
        matches!(
            h.run(&mut syn),
            Verdict::Respond {
                port: CLIENT_PORT,
                ..
            }
        ),
        "refused with a RST"
    );
    assert_eq!(h.counters().drops_of(DropReason::VipPrefixesFull), 1);
    let mut again = tcp6(FROM_CLIENT, (CLIENT6, 39998), (vip(7), 80), 64, true);
    assert_eq!(
        h.run(&mut again),
        Verdict::Forward { port: POD_PORT },
        "a VIP of a /64 the table holds"
    );
}
