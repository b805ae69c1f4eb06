//! The packet-path fuzzer's seed corpus: hand-made valid and near-valid
//! sessions, each with the verdicts it is meant to reach, so the corpus
//! keeps covering what it claims to as the pipeline changes.
//!
//! - `seeds_reach_their_verdicts`: every seed, run through the harness,
//!   gets the verdicts written next to it;
//! - `committed_corpus_is_current`: `corpus/packet_path/` holds exactly
//!   these seeds (regenerate with `cargo test --manifest-path
//!   forwarder/fuzz/Cargo.toml -- --ignored write_seed_corpus`);
//! - `corpus_replays`: every file in the corpus directory (seeds and any
//!   minimized crash added later) runs without breaking an invariant.

use std::path::PathBuf;

use cipgw_datapath::counters::DropReason;
use cipgw_datapath::harness::{Frame, Segment};
use cipgw_datapath::pipeline::Verdict;
use cipgw_datapath::route::PortId;
use cipgw_datapath::wire::tcp::flags::{ACK, FIN, PSH, RST, SYN};
use cipgw_fuzz::addr::*;
use cipgw_fuzz::{bits, encode, mac, outcomes, CLIENT_PORT, POD_PORT};
use domain::base::iana::{Class, Rtype};
use domain::base::{MessageBuilder, Name};
use etherparse::{PacketBuilder, VlanId};

/// What a frame of a seed should come to.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Forward(PortId),
    Await,
    Respond,
    Pass,
    Drop(DropReason),
    /// Depends on the random backend choice.
    Any,
}

impl Expect {
    fn matches(self, verdict: Verdict) -> bool {
        match (self, verdict) {
            (Expect::Forward(p), Verdict::Forward { port }) => p == port,
            (Expect::Await, Verdict::AwaitNeighbour { .. }) => true,
            (Expect::Respond, Verdict::Respond { .. }) => true,
            (Expect::Pass, Verdict::Pass) => true,
            (Expect::Drop(r), Verdict::Drop(d)) => r == d,
            (Expect::Any, _) => true,
            _ => false,
        }
    }
}

use Expect::*;

const TO_PODS: Expect = Forward(POD_PORT);
const TO_CLIENT: Expect = Forward(CLIENT_PORT);

/// Control bytes: a frame from the client side or the Pod side, with
/// checksums fixed up.
const C: u8 = bits::FIX_CHECKSUMS | bits::ingress(0);
const P: u8 = bits::FIX_CHECKSUMS | bits::ingress(1);
/// A table of 8 flows, no flood guard to speak of.
const SETUP: u8 = bits::max_flows(8);

struct Seed {
    name: String,
    input: Vec<u8>,
    expect: Vec<Expect>,
}

/// Builds seeds.
struct Seeds(Vec<Seed>);

impl Seeds {
    fn add(&mut self, name: impl Into<String>, setup: u8, frames: Vec<(u8, Vec<u8>, Expect)>) {
        let records: Vec<(u8, &[u8])> = frames.iter().map(|(c, f, _)| (*c, &f[..])).collect();
        self.0.push(Seed {
            name: name.into(),
            input: encode(setup, &records),
            expect: frames.iter().map(|(_, _, e)| *e).collect(),
        });
    }
}

/// A TCP segment from `src` to `dst` as it reaches the gateway (see
/// [`Frame::arriving`]), acknowledging 2000 when `flags` has ACK.
fn tcp_ttl(src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: u8, ttl: u8, data: &[u8]) -> Vec<u8> {
    let segment = Segment {
        flags,
        ack: 2000,
        payload: data,
        ..Segment::default()
    };
    Frame {
        ttl,
        ..Frame::arriving(src.0, dst.0)
    }
    .tcp(src.1, dst.1, segment)
}

fn tcp(src: ([u8; 4], u16), dst: ([u8; 4], u16), flags: u8) -> Vec<u8> {
    let data: &[u8] = if flags & PSH != 0 {
        b"GET / HTTP/1.1\r\n\r\n"
    } else {
        &[]
    };
    tcp_ttl(src, dst, flags, 64, data)
}

fn udp(src: ([u8; 4], u16), dst: ([u8; 4], u16)) -> Vec<u8> {
    Frame::arriving(src.0, dst.0).udp(src.1, dst.1, b"\x12\x34\x01\x00\x00\x01query")
}

fn ping(src: [u8; 4], dst: [u8; 4], reply: bool) -> Vec<u8> {
    Frame::arriving(src, dst).echo(reply, 0x4242, 1, b"0123456789abcdef")
}

/// Fragmentation needed (MTU 1280) from `src` to `dst`, quoting the IPv4
/// header and 20 bytes of the transport header of `quoted`.
fn icmp_error(src: [u8; 4], dst: [u8; 4], quoted: &[u8]) -> Vec<u8> {
    let at = Frame::arriving(src, dst);
    let kind = etherparse::Icmpv4Type::DestinationUnreachable(
        etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 },
    );
    let mut out = Vec::new();
    PacketBuilder::ethernet2(at.src_mac, at.dst_mac)
        .ipv4(src, dst, 64)
        .icmpv4(kind)
        .write(&mut out, &quoted[14..14 + 40])
        .expect("ICMP error frame builds");
    out
}

/// A UDP datagram over IPv6 from the client side, after the extension
/// headers `ext` (whose first next-header is `first`).
fn udp6(first: u8, ext: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(mac::CLIENT, mac::GW_CLIENT_SIDE)
        .ipv6(
            [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            [0x20, 0x01, 0, 2, 0, 0, 0, 0x64, 0, 0, 0, 0, 0, 0, 0, 0x10],
            64,
        )
        .udp(40000, 53)
        .write(&mut out, b"query")
        .expect("IPv6 frame builds");
    if !ext.is_empty() {
        out[20] = first;
        out.splice(54..54, ext.iter().copied());
        let payload = (out.len() - 54) as u16;
        out[18..20].copy_from_slice(&payload.to_be_bytes());
    }
    out
}

/// [`udp6`] without a UDP checksum, which IPv6 forbids.
fn udp6_unchecked() -> Vec<u8> {
    let mut out = udp6(17, &[]);
    out[60..62].fill(0);
    out
}

/// Macs of a frame from the client side and from the Pod side.
const CLIENT_SIDE: ([u8; 6], [u8; 6]) = (mac::CLIENT, mac::GW_CLIENT_SIDE);
const POD_SIDE: ([u8; 6], [u8; 6]) = (mac::POD1, mac::GW_POD_SIDE);

/// A TCP segment over IPv6 (no data), hop limit `hop_limit`.
fn tcp6(
    macs: ([u8; 6], [u8; 6]),
    src: ([u8; 16], u16),
    dst: ([u8; 16], u16),
    flags: u8,
    hop_limit: u8,
) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(src.0, dst.0, hop_limit)
        .tcp(src.1, dst.1, 1000, 64240);
    if flags & SYN != 0 {
        b = b.syn();
    }
    if flags & ACK != 0 {
        b = b.ack(2000);
    }
    let mut out = Vec::new();
    b.write(&mut out, &[]).expect("IPv6 TCP frame builds");
    out
}

/// A UDP datagram over IPv6 with `payload`.
fn udp6_to(
    macs: ([u8; 6], [u8; 6]),
    src: ([u8; 16], u16),
    dst: ([u8; 16], u16),
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(src.0, dst.0, 64)
        .udp(src.1, dst.1)
        .write(&mut out, payload)
        .expect("IPv6 UDP frame builds");
    out
}

/// An ICMPv6 message of `kind` from `src` to `dst` quoting the first
/// `quote_len` bytes of the IPv6 packet of `quoted`.
fn icmp6(
    macs: ([u8; 6], [u8; 6]),
    (src, dst): ([u8; 16], [u8; 16]),
    kind: etherparse::Icmpv6Type,
    quoted: &[u8],
    quote_len: usize,
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv6(src, dst, 64)
        .icmpv6(kind)
        .write(&mut out, &quoted[14..14 + quote_len])
        .expect("ICMPv6 frame builds");
    out
}

/// The IPv6 packet of `frame` (no extension headers) in fragments of
/// `chunk` payload bytes with identification `ident`, each with a
/// Hop-by-Hop header (PadN) before its Fragment header when `hop_by_hop`.
fn fragments6(frame: &[u8], chunk: usize, ident: u32, hop_by_hop: bool) -> Vec<Vec<u8>> {
    let (head, payload) = frame.split_at(14 + 40);
    let protocol = head[20];
    payload
        .chunks(chunk)
        .enumerate()
        .map(|(i, piece)| {
            let offset = i * chunk;
            let more = offset + piece.len() < payload.len();
            let mut out = head.to_vec();
            let mut ext = Vec::new();
            if hop_by_hop {
                out[20] = 0;
                ext.extend_from_slice(&[44, 0, 1, 4, 0, 0, 0, 0]);
            } else {
                out[20] = 44;
            }
            ext.extend_from_slice(&[protocol, 0]);
            ext.extend_from_slice(&(offset as u16 | u16::from(more)).to_be_bytes());
            ext.extend_from_slice(&ident.to_be_bytes());
            let len = (ext.len() + piece.len()) as u16;
            out[18..20].copy_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&ext);
            out.extend_from_slice(piece);
            out
        })
        .collect()
}

fn arp() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac::CLIENT);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac::CLIENT);
    f.extend_from_slice(&CLIENT);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&WEB_VIP);
    f.resize(60, 0);
    f
}

/// Inserts `words` 32-bit words of IPv4 options (NOPs, then an end of
/// list) after the fixed header, updating IHL and the total length.
fn with_options(mut f: Vec<u8>, words: usize) -> Vec<u8> {
    let mut options = vec![1u8; words * 4];
    if let Some(last) = options.last_mut() {
        *last = 0;
    }
    f.splice(34..34, options);
    f[14] = 0x40 | (5 + words as u8);
    let total = u16::from_be_bytes([f[16], f[17]]) + (words * 4) as u16;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f
}

/// Sets the IPv4 total length to the header plus `l4` bytes and cuts the
/// frame there: a complete IP packet whose L4 header is short.
fn short_l4(mut f: Vec<u8>, l4: usize) -> Vec<u8> {
    f.truncate(34 + l4);
    f[16..18].copy_from_slice(&((20 + l4) as u16).to_be_bytes());
    f
}

fn set(mut f: Vec<u8>, at: usize, bytes: &[u8]) -> Vec<u8> {
    f[at..at + bytes.len()].copy_from_slice(bytes);
    f
}

fn vlan(tags: usize, inner: &[u8]) -> Vec<u8> {
    let (smac, dmac) = (mac::CLIENT, mac::GW_CLIENT_SIDE);
    let b = PacketBuilder::ethernet2(smac, dmac);
    let id = |n| VlanId::try_new(n).expect("valid VLAN id");
    let mut out = Vec::new();
    let payload = &inner[34..];
    let (sport, dport) = (
        u16::from_be_bytes([payload[0], payload[1]]),
        u16::from_be_bytes([payload[2], payload[3]]),
    );
    let src = [inner[26], inner[27], inner[28], inner[29]];
    let dst = [inner[30], inner[31], inner[32], inner[33]];
    if tags == 1 {
        b.single_vlan(id(5))
            .ipv4(src, dst, 64)
            .tcp(sport, dport, 1000, 64240)
            .syn()
            .write(&mut out, &[])
    } else {
        b.double_vlan(id(5), id(6))
            .ipv4(src, dst, 64)
            .tcp(sport, dport, 1000, 64240)
            .syn()
            .write(&mut out, &[])
    }
    .expect("seed frame builds");
    out
}

fn client(last: u8, port: u16) -> ([u8; 4], u16) {
    ([198, 18, 0, last], port)
}

/// A DNS query for `name`/`qtype` from `src` to `dst`, with an OPT record
/// of payload size `edns` when given.
fn dns_query(
    src: ([u8; 4], u16),
    dst: ([u8; 4], u16),
    name: &str,
    qtype: Rtype,
    edns: Option<u16>,
) -> Vec<u8> {
    let mut b = MessageBuilder::new_vec();
    b.header_mut().set_id(0x1234);
    b.header_mut().set_rd(true);
    let mut q = b.question();
    let name: Name<Vec<u8>> = name.parse().expect("seed name");
    q.push((name, qtype, Class::IN)).expect("question fits");
    let mut add = q.additional();
    if let Some(size) = edns {
        add.opt(|opt| {
            opt.set_udp_payload_size(size);
            Ok(())
        })
        .expect("OPT fits");
    }
    Frame::arriving(src.0, dst.0).udp(src.1, dst.1, &add.finish())
}

fn seeds() -> Vec<Seed> {
    let c = client(2, 40000);
    let solo = (SOLO_VIP, 80);
    let web = (WEB_VIP, 80);
    let pod1 = (POD1, 8080);
    let step = bits::step;
    let mut s = Seeds(Vec::new());

    // A whole TCP connection, then silence past TIME_WAIT and a sweep.
    s.add(
        "tcp_handshake_data_close",
        SETUP,
        vec![
            (C, tcp(c, solo, SYN), TO_PODS),
            (P, tcp(pod1, c, SYN | ACK), TO_CLIENT),
            (C | step(1), tcp(c, solo, ACK), TO_PODS),
            (C, tcp(c, solo, ACK | PSH), TO_PODS),
            (P, tcp(pod1, c, ACK | PSH), TO_CLIENT),
            (C | step(2), tcp(c, solo, FIN | ACK), TO_PODS),
            (P, tcp(pod1, c, ACK), TO_CLIENT),
            (P, tcp(pod1, c, FIN | ACK), TO_CLIENT),
            (C, tcp(c, solo, ACK), TO_PODS),
            (C | step(5) | bits::SWEEP, arp(), Pass),
            (C, tcp(c, solo, ACK), Respond),
        ],
    );
    s.add(
        "tcp_syn_to_vip",
        SETUP,
        vec![(C, tcp(c, web, SYN), TO_PODS)],
    );
    s.add(
        "tcp_rst_from_backend",
        SETUP,
        vec![
            (C, tcp(c, solo, SYN), TO_PODS),
            (P, tcp(pod1, c, RST | ACK), TO_CLIENT),
            (C | step(3) | bits::SWEEP, arp(), Pass),
            (C, tcp(c, solo, SYN), TO_PODS),
        ],
    );
    s.add(
        "tcp_rst_from_client",
        SETUP,
        vec![
            (C, tcp(c, solo, SYN), TO_PODS),
            (P, tcp(pod1, c, SYN | ACK), TO_CLIENT),
            (C, tcp(c, solo, RST), TO_PODS),
            (C, tcp(c, solo, SYN), TO_PODS),
        ],
    );
    s.add(
        "tcp_ack_without_flow",
        SETUP,
        vec![(C, tcp(c, web, ACK | PSH), Respond)],
    );
    s.add(
        "tcp_fin_without_flow",
        SETUP,
        vec![(C, tcp(c, web, FIN | ACK), Respond)],
    );
    s.add(
        "tcp_rst_without_flow",
        SETUP,
        vec![(C, tcp(c, web, RST), Drop(DropReason::TcpNoFlow))],
    );
    s.add(
        "tcp_syn_no_endpoints",
        SETUP,
        vec![(C, tcp(c, (EMPTY_VIP, 80), SYN), Respond)],
    );
    s.add(
        "tcp_syn_undefined_port",
        SETUP,
        vec![(C, tcp(c, (WEB_VIP, 81), SYN), Respond)],
    );
    s.add(
        "tcp_syn_unknown_ingress",
        SETUP,
        vec![(
            bits::FIX_CHECKSUMS | bits::ingress(2),
            tcp(c, (EMPTY_VIP, 80), SYN),
            Drop(DropReason::NoEndpoints),
        )],
    );
    s.add(
        "tcp_syn_draining",
        SETUP,
        vec![(C, tcp(c, (DRAINING_VIP, 80), SYN), TO_PODS)],
    );
    s.add(
        "tcp_syn_far_backends",
        SETUP,
        (0..6)
            .map(|i| (C, tcp(client(2, 41000 + i), (FAR_VIP, 80), SYN), Any))
            .collect(),
    );
    s.add(
        "udp_request_reply",
        SETUP,
        vec![
            (C, udp(client(2, 33000), (SOLO_VIP, 53)), TO_PODS),
            (P, udp((POD1, 5353), client(2, 33000)), TO_CLIENT),
            (C | step(4), udp(client(2, 33000), (SOLO_VIP, 53)), TO_PODS),
            (C | step(6) | bits::SWEEP, arp(), Pass),
        ],
    );
    s.add(
        "udp_no_endpoints",
        SETUP,
        vec![(C, udp(c, (EMPTY_VIP, 53)), Respond)],
    );
    s.add(
        "udp_undefined_port",
        SETUP,
        vec![(C, udp(c, (DNS_VIP, 54)), Respond)],
    );
    s.add(
        "udp_endpoints_churn",
        SETUP,
        vec![
            (C, udp(client(3, 33001), (DNS_VIP, 53)), TO_PODS),
            (
                C | bits::CHURN,
                udp(client(3, 33002), (DNS_VIP, 53)),
                Respond,
            ),
            (C, udp(client(3, 33003), (EMPTY_VIP, 53)), TO_PODS),
            (
                C | bits::CHURN,
                udp(client(3, 33004), (DNS_VIP, 53)),
                TO_PODS,
            ),
        ],
    );
    s.add(
        "udp_reply_without_flow",
        SETUP,
        vec![(
            P,
            udp((POD1, 5353), client(2, 33000)),
            Drop(DropReason::ReplyWithoutFlow),
        )],
    );
    s.add(
        "icmp_echo_to_vip",
        SETUP,
        vec![
            (C, ping(CLIENT, WEB_VIP, false), Respond),
            (
                C,
                ping(CLIENT, EMPTY_VIP, false),
                Drop(DropReason::NoEndpoints),
            ),
            (
                C,
                ping(CLIENT, WEB_VIP, true),
                Drop(DropReason::UnsupportedProtocol),
            ),
            (C, ping(CLIENT, POD1, false), Pass),
        ],
    );
    // Fragmentation needed from the Pod about the client's SYN, as the
    // gateway forwarded it: back to the client, about the VIP.
    let forwarded_syn = tcp_ttl(c, pod1, SYN, 63, &[]);
    s.add(
        "icmp_error_about_a_flow",
        SETUP,
        vec![
            (C, tcp(c, solo, SYN), TO_PODS),
            (P, icmp_error(POD1, c.0, &forwarded_syn), TO_CLIENT),
            (
                P,
                icmp_error(POD1, c.0, &tcp_ttl(client(2, 40999), pod1, SYN, 63, &[])),
                Drop(DropReason::IcmpErrorWithoutFlow),
            ),
        ],
    );
    // IPv6 is the kernel's for now; its headers are still checked.
    let options = |next: u8| [next, 0, 1, 4, 0, 0, 0, 0];
    let chain: Vec<u8> = (0..9)
        .flat_map(|i| options(if i == 8 { 17 } else { 60 }))
        .collect();
    s.add(
        "ipv6_passes_and_bad_headers_drop",
        SETUP,
        vec![
            (C, udp6(17, &[]), Pass),
            (C, udp6(60, &options(17)), Pass),
            (C, udp6(44, &[17, 0, 0, 1, 0, 0, 0, 9]), Pass),
            (C, udp6(60, &chain), Drop(DropReason::MalformedIpv6)),
            (
                C,
                udp6(17, &[])[..50].to_vec(),
                Drop(DropReason::TruncatedIpv6),
            ),
            (C, udp6_unchecked(), Drop(DropReason::UdpZeroChecksumV6)),
        ],
    );
    ipv6_seeds(&mut s);
    s.add(
        "icmp_echo_with_options",
        SETUP,
        vec![(C, with_options(ping(CLIENT, WEB_VIP, false), 3), Respond)],
    );
    let syn = tcp(c, solo, SYN);
    s.add(
        "vlan_single_tag",
        SETUP,
        vec![(C, vlan(1, &syn), Drop(DropReason::VlanTagged))],
    );
    s.add(
        "vlan_double_tag",
        SETUP,
        vec![(C, vlan(2, &syn), Drop(DropReason::VlanTagged))],
    );
    s.add(
        "fragment_first_then_later",
        SETUP,
        vec![
            (C, set(syn.clone(), 20, &[0x20, 0]), TO_PODS),
            (C, set(syn.clone(), 20, &[0x00, 0x10]), TO_PODS),
        ],
    );
    s.add(
        "fragment_later",
        SETUP,
        vec![(
            C,
            set(syn.clone(), 20, &[0x00, 0x10]),
            Drop(DropReason::Fragment),
        )],
    );
    s.add(
        "ipv4_options_both_ways",
        SETUP,
        vec![
            (C, with_options(tcp(c, solo, SYN), 1), TO_PODS),
            (P, with_options(tcp(pod1, c, SYN | ACK), 10), TO_CLIENT),
            (C, with_options(tcp(c, solo, ACK | PSH), 2), TO_PODS),
        ],
    );
    s.add(
        "ttl_expiring",
        SETUP,
        vec![
            (
                C,
                tcp_ttl(c, solo, SYN, 1, &[]),
                Drop(DropReason::TtlExceeded),
            ),
            (
                C,
                tcp_ttl(c, solo, SYN, 0, &[]),
                Drop(DropReason::TtlExceeded),
            ),
            (C, tcp_ttl(c, solo, SYN, 2, &[]), TO_PODS),
            (
                P,
                tcp_ttl(pod1, c, SYN | ACK, 1, &[]),
                Drop(DropReason::TtlExceeded),
            ),
        ],
    );
    // Cut at and around every header boundary (the IPv4 total length
    // still claims the whole packet).
    let data_syn = tcp_ttl(c, solo, SYN, 64, b"early data");
    for cut in [0, 1, 13, 14, 15, 33, 34, 35, 53, 54, 63] {
        let expect = match cut {
            0..=13 => Drop(DropReason::TruncatedEthernet),
            _ => Drop(DropReason::TruncatedIpv4),
        };
        s.add(
            format!("truncated_tcp_at_{cut}"),
            SETUP,
            vec![(C, data_syn[..cut].to_vec(), expect)],
        );
    }
    let datagram = udp(c, (SOLO_VIP, 53));
    for cut in [41, 42, 49] {
        s.add(
            format!("truncated_udp_at_{cut}"),
            SETUP,
            vec![(C, datagram[..cut].to_vec(), Drop(DropReason::TruncatedIpv4))],
        );
    }
    // Complete IP packets with short L4 headers.
    for l4 in [0, 8, 19] {
        s.add(
            format!("short_tcp_header_{l4}"),
            SETUP,
            vec![(C, short_l4(syn.clone(), l4), Drop(DropReason::TruncatedL4))],
        );
    }
    s.add(
        "short_udp_header_7",
        SETUP,
        vec![(
            C,
            short_l4(datagram.clone(), 7),
            Drop(DropReason::TruncatedL4),
        )],
    );
    s.add(
        "ipv4_ihl_4",
        SETUP,
        vec![(
            C,
            set(syn.clone(), 14, &[0x44]),
            Drop(DropReason::MalformedIpv4),
        )],
    );
    s.add(
        "ipv4_version_6",
        SETUP,
        vec![(
            C,
            set(syn.clone(), 14, &[0x65]),
            Drop(DropReason::MalformedIpv4),
        )],
    );
    s.add(
        "ipv4_total_len_below_header",
        SETUP,
        vec![(
            C,
            set(syn.clone(), 16, &[0, 19]),
            Drop(DropReason::MalformedIpv4),
        )],
    );
    s.add(
        "ipv4_total_len_beyond_frame",
        SETUP,
        vec![(
            C,
            set(syn.clone(), 16, &[0x05, 0xdc]),
            Drop(DropReason::TruncatedIpv4),
        )],
    );
    s.add(
        "tcp_data_offset_4",
        SETUP,
        vec![(
            C,
            set(syn.clone(), 46, &[0x40]),
            Drop(DropReason::MalformedL4),
        )],
    );
    s.add(
        "tcp_data_offset_past_end",
        SETUP,
        vec![(
            C,
            set(syn.clone(), 46, &[0xf0]),
            Drop(DropReason::TruncatedL4),
        )],
    );
    s.add(
        "udp_length_mismatch",
        SETUP,
        vec![
            (
                C,
                set(datagram.clone(), 38, &[0, 9]),
                Drop(DropReason::MalformedL4),
            ),
            (
                C,
                set(datagram.clone(), 38, &[0, 200]),
                Drop(DropReason::MalformedL4),
            ),
        ],
    );
    let mut padded = tcp(c, solo, SYN);
    padded.resize(60, 0);
    s.add(
        "ethernet_padding",
        SETUP,
        vec![(C, padded, TO_PODS), (C, tcp(c, solo, ACK), TO_PODS)],
    );
    s.add(
        "bad_sources",
        SETUP,
        vec![
            (
                C,
                tcp(([255, 255, 255, 255], 1), web, SYN),
                Drop(DropReason::BadSource),
            ),
            (
                C,
                tcp(([224, 0, 0, 1], 1), web, SYN),
                Drop(DropReason::BadSource),
            ),
            (
                C,
                tcp(([0, 0, 0, 5], 1), web, SYN),
                Drop(DropReason::BadSource),
            ),
            (
                C,
                tcp(([127, 0, 0, 1], 1), web, SYN),
                Drop(DropReason::BadSource),
            ),
            (
                C,
                set(tcp(c, web, SYN), 6, &[0x03]),
                Drop(DropReason::BadSource),
            ),
            (
                C,
                tcp((DNS_VIP, 1), web, SYN),
                Drop(DropReason::VipAsSource),
            ),
        ],
    );
    s.add(
        "cluster_cidr",
        SETUP | bits::CLUSTER_CIDR,
        vec![
            (
                C,
                tcp((CLIENT_OUTSIDE, 40000), solo, SYN),
                Drop(DropReason::SourceNotInCluster),
            ),
            (
                C,
                ping(CLIENT_OUTSIDE, WEB_VIP, false),
                Drop(DropReason::SourceNotInCluster),
            ),
            (C, tcp(c, solo, SYN), TO_PODS),
        ],
    );
    // Two established flows and a SYN flood in a 4-flow table whose
    // unreplied share is 50 %: the flood evicts itself, then a table full
    // of established flows refuses, and a day later drains. Established
    // means the handshake completed (the client's ACK): a full table
    // evicts a flow that only saw its SYN-ACK.
    let mut flood = Vec::new();
    for port in [50000, 50001] {
        flood.push((C, tcp(client(4, port), solo, SYN), TO_PODS));
        flood.push((P, tcp(pod1, client(4, port), SYN | ACK), TO_CLIENT));
        flood.push((C, tcp(client(4, port), solo, ACK), TO_PODS));
    }
    for port in 60000..60006 {
        flood.push((C, tcp(client(5, port), solo, SYN), TO_PODS));
    }
    flood.push((C, tcp(client(5, 60000), solo, ACK), Respond));
    for port in [60004, 60005] {
        flood.push((P, tcp(pod1, client(5, port), SYN | ACK), TO_CLIENT));
        flood.push((C, tcp(client(5, port), solo, ACK), TO_PODS));
    }
    flood.push((C, tcp(client(5, 60010), solo, SYN), Respond));
    flood.push((C, tcp(client(4, 50000), solo, ACK), TO_PODS));
    flood.push((C | step(7) | bits::SWEEP, arp(), Pass));
    flood.push((C, tcp(client(5, 60011), solo, SYN), TO_PODS));
    s.add(
        "syn_flood_small_table",
        bits::max_flows(4) | bits::unreplied(1),
        flood,
    );
    s.add(
        "session_affinity",
        SETUP,
        vec![
            (C, tcp(client(6, 42000), (STICKY_VIP, 80), SYN), Any),
            (C, tcp(client(6, 42001), (STICKY_VIP, 80), SYN), Any),
            (
                C | step(1),
                tcp(client(6, 42002), (STICKY_VIP, 80), SYN),
                Any,
            ),
            (
                C | step(3),
                tcp(client(6, 42003), (STICKY_VIP, 80), SYN),
                Any,
            ),
            (
                C | bits::CHURN,
                tcp(client(6, 42004), (STICKY_VIP, 80), SYN),
                Any,
            ),
            (C, tcp(client(6, 42000), (STICKY_VIP, 80), ACK), Any),
        ],
    );
    s.add(
        "headless_is_not_ours",
        SETUP,
        vec![
            (C, tcp(c, (POD_HEADLESS, 5432), SYN), Pass),
            (P, tcp((POD_HEADLESS, 5432), c, SYN | ACK), Pass),
        ],
    );
    // An IPv4 packet under IPv6's EtherType: not version 6.
    let mut ipv6 = tcp(c, solo, SYN);
    ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
    let mut gre = tcp(c, solo, SYN);
    gre[23] = 47;
    s.add(
        "not_ours",
        SETUP,
        vec![
            (C, arp(), Pass),
            (C, ipv6, Drop(DropReason::MalformedIpv6)),
            (C, tcp(c, (POD1, 8080), SYN), Pass),
            (C, gre, Drop(DropReason::UnsupportedProtocol)),
        ],
    );
    s.add(
        "unresolved_neighbours",
        SETUP,
        vec![
            (C, tcp((CLIENT_UNRESOLVED, 40000), solo, SYN), TO_PODS),
            (P, tcp(pod1, (CLIENT_UNRESOLVED, 40000), SYN | ACK), Await),
        ],
    );
    s.add(
        "reply_clash_across_vips",
        SETUP,
        vec![
            (C, tcp(client(7, 43000), solo, SYN), TO_PODS),
            (C, tcp(client(7, 43000), web, SYN), Any),
            (C, tcp(client(7, 43000), (STICKY_VIP, 80), SYN), Any),
        ],
    );
    let mut churn: Vec<(u8, Vec<u8>, Expect)> = (0..6)
        .map(|i| (C, tcp(client(8, 44000 + i), web, SYN), TO_PODS))
        .collect();
    churn.push((C | bits::CHURN, arp(), Pass));
    churn.extend((0..6).map(|i| (C, tcp(client(8, 44000 + i), web, ACK), Any)));
    s.add("endpoint_churn_retires_flows", SETUP, churn);

    // DNS: answers from the zone, negative answers, malformed queries and
    // outsiders.
    let dns = (DNS_ADDRESS, 53);
    let ask = |name: &str, qtype, edns| dns_query(c, dns, name, qtype, edns);
    s.add(
        "dns_queries",
        SETUP,
        vec![
            (
                C,
                ask("web.fuzz.svc.cluster.local", Rtype::A, None),
                Respond,
            ),
            (
                C,
                ask("WEB.fuzz.svc.Cluster.Local", Rtype::SRV, Some(1232)),
                Respond,
            ),
            (
                C,
                ask("10.0.19.198.in-addr.arpa", Rtype::PTR, None),
                Respond,
            ),
            (
                C,
                ask("headless.fuzz.svc.cluster.local", Rtype::A, Some(4096)),
                Respond,
            ),
            (
                C,
                ask("nothing.fuzz.svc.cluster.local", Rtype::AAAA, None),
                Respond,
            ),
            (
                C,
                ask("dns-version.cluster.local", Rtype::TXT, None),
                Respond,
            ),
            (C, ask("example.com", Rtype::A, None), Respond),
            (
                C,
                Frame::arriving(c.0, DNS_ADDRESS).udp(c.1, 53, b"\x12\x34"),
                Drop(DropReason::MalformedL4),
            ),
            (
                C,
                Frame::arriving(c.0, DNS_ADDRESS).udp(
                    c.1,
                    53,
                    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01",
                ),
                Respond,
            ),
        ],
    );
    s.add(
        "dns_from_outside_the_cluster",
        SETUP | bits::CLUSTER_CIDR,
        vec![
            (
                C,
                dns_query(
                    (CLIENT_OUTSIDE, 40000),
                    dns,
                    "web.fuzz.svc.cluster.local",
                    Rtype::A,
                    None,
                ),
                Drop(DropReason::SourceNotInCluster),
            ),
            (
                C,
                ask("web.fuzz.svc.cluster.local", Rtype::A, None),
                Respond,
            ),
        ],
    );
    s.0
}

/// IPv6 to the IPv6-only `solo6`: a connection, ICMPv6 errors about it
/// both ways (and ones that name no flow, a truncated quote, a redirect),
/// fragmented datagrams both ways.
fn ipv6_seeds(s: &mut Seeds) {
    use etherparse::icmpv6::TimeExceededCode;
    use etherparse::Icmpv6Type;
    let c = (CLIENT6, 40000);
    let vip = (SOLO6_VIP, 80);
    let pod = (POD6, 8080);
    let too_big = Icmpv6Type::PacketTooBig { mtu: 1280 };
    // The SYN as the Pod gets it, and a reply as the client gets it.
    let syn_at_pod = tcp6(POD_SIDE, c, pod, SYN, 63);
    let reply_at_client = tcp6(CLIENT_SIDE, vip, c, SYN | ACK, 63);
    s.add(
        "ipv6_tcp_handshake",
        SETUP,
        vec![
            (C, tcp6(CLIENT_SIDE, c, vip, SYN, 64), TO_PODS),
            (P, tcp6(POD_SIDE, pod, c, SYN | ACK, 64), TO_CLIENT),
            (C, tcp6(CLIENT_SIDE, c, vip, ACK, 64), TO_PODS),
        ],
    );
    s.add(
        "icmpv6_errors_about_a_flow",
        SETUP,
        vec![
            (C, tcp6(CLIENT_SIDE, c, vip, SYN, 64), TO_PODS),
            (
                P,
                icmp6(POD_SIDE, (POD6, CLIENT6), too_big, &syn_at_pod, 60),
                TO_CLIENT,
            ),
            (
                P,
                icmp6(
                    POD_SIDE,
                    (ROUTER6, CLIENT6),
                    Icmpv6Type::TimeExceeded(TimeExceededCode::HopLimitExceeded),
                    &syn_at_pod,
                    48,
                ),
                TO_CLIENT,
            ),
            (P, tcp6(POD_SIDE, pod, c, SYN | ACK, 64), TO_CLIENT),
            (
                C,
                icmp6(
                    CLIENT_SIDE,
                    (CLIENT6, SOLO6_VIP),
                    Icmpv6Type::DestinationUnreachable(
                        etherparse::icmpv6::DestUnreachableCode::Port,
                    ),
                    &reply_at_client,
                    60,
                ),
                TO_PODS,
            ),
            (
                P,
                icmp6(
                    POD_SIDE,
                    (POD6, CLIENT6),
                    too_big,
                    &tcp6(POD_SIDE, (CLIENT6, 40999), pod, SYN, 63),
                    60,
                ),
                Drop(DropReason::IcmpErrorWithoutFlow),
            ),
            (
                P,
                icmp6(POD_SIDE, (POD6, CLIENT6), too_big, &syn_at_pod, 42),
                Drop(DropReason::IcmpErrorMalformed),
            ),
            (
                C,
                icmp6(
                    CLIENT_SIDE,
                    (CLIENT6, SOLO6_VIP),
                    Icmpv6Type::Redirect,
                    &syn_at_pod,
                    40,
                ),
                Drop(DropReason::IcmpRedirect),
            ),
        ],
    );
    let payload: Vec<u8> = (0..1400u32).map(|i| (i % 251) as u8).collect();
    let dns = (SOLO6_VIP, 53);
    let at_pod = udp6_to(POD_SIDE, (CLIENT6, 33000), (POD6, 5353), &payload);
    s.add(
        "icmpv6_packet_too_big_truncated_quote",
        SETUP,
        vec![
            (
                C,
                udp6_to(CLIENT_SIDE, (CLIENT6, 33000), dns, &payload),
                TO_PODS,
            ),
            (
                P,
                icmp6(POD_SIDE, (ROUTER6, CLIENT6), too_big, &at_pod, 1232),
                TO_CLIENT,
            ),
        ],
    );
    // Small fragments, so a whole session stays within the fuzzer's
    // 4 KiB inputs.
    let big: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let query = udp6_to(CLIENT_SIDE, (CLIENT6, 33001), dns, &big);
    let answer = udp6_to(POD_SIDE, (POD6, 5353), (CLIENT6, 33001), &big);
    for hop_by_hop in [false, true] {
        let mut frames: Vec<(u8, Vec<u8>, Expect)> = fragments6(&query, 400, 0x8000_0001, hop_by_hop)
            .into_iter()
            .map(|f| (C, f, TO_PODS))
            .collect();
        frames.extend(
            fragments6(&answer, 504, 7, hop_by_hop)
                .into_iter()
                .map(|f| (P, f, TO_CLIENT)),
        );
        let name = match hop_by_hop {
            false => "ipv6_fragments_both_ways",
            true => "ipv6_fragments_after_hop_by_hop",
        };
        s.add(name, SETUP, frames);
    }
    s.add(
        "ipv6_fragment_later",
        SETUP,
        vec![(
            C,
            fragments6(&query, 400, 9, false).swap_remove(1),
            Drop(DropReason::Fragment),
        )],
    );
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus/packet_path")
}

#[test]
fn seeds_reach_their_verdicts() {
    for seed in seeds() {
        let got = outcomes(&seed.input);
        assert_eq!(got.len(), seed.expect.len(), "{}: frames run", seed.name);
        for (i, (o, e)) in got.iter().zip(&seed.expect).enumerate() {
            assert!(
                e.matches(o.verdict),
                "{} frame {i}: expected {e:?}, got {:?}",
                seed.name,
                o.verdict
            );
        }
    }
}

#[test]
fn committed_corpus_is_current() {
    for seed in seeds() {
        let path = corpus_dir().join(&seed.name);
        let committed = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; regenerate the corpus", path.display()));
        assert!(
            committed == seed.input,
            "{} differs from its seed; regenerate the corpus",
            path.display()
        );
    }
}

#[test]
fn corpus_replays() {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("corpus directory")
        .map(|e| e.expect("corpus entry").path())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "empty corpus");
    let failed: Vec<String> = paths
        .iter()
        .filter(|path| {
            let data = std::fs::read(path).expect("corpus file");
            std::panic::catch_unwind(|| cipgw_fuzz::run(&data)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "inputs breaking an invariant: {failed:#?}"
    );
}

/// Writes the seeds into `corpus/packet_path/`.
#[test]
#[ignore = "writes the committed corpus"]
fn write_seed_corpus() {
    let dir = corpus_dir();
    std::fs::create_dir_all(&dir).expect("corpus directory");
    for seed in seeds() {
        std::fs::write(dir.join(&seed.name), &seed.input).expect("write seed");
    }
}
