//! Answers the gateway gives in its own name, built in place in the frame
//! that asked for them: refusals (a TCP RST, or ICMP port unreachable for
//! UDP) for connections to a VIP that cannot be served, and ICMP echo
//! replies so that `ping <ClusterIP>` works. This is Kubernetes' reject
//! semantics (kube-proxy's nftables mode): a client learns at once that
//! nobody is there instead of timing out.
//!
//! Every builder takes the [`Frame`] the pipeline parsed (by value: the
//! answer replaces its headers), reads what it answers from the frame's
//! views, writes fresh headers through the views' emit side
//! ([`Ipv4Repr`], [`TcpRepr`], [`IcmpRepr`]: full checksums, the answer is
//! a new packet), and returns the new frame length, or `None` when no
//! answer may or can be given (a RST is never answered; the buffer is too
//! small), in which case the frame is left as it was. Refusals are
//! rate-limited per source ([`RefusalLimiter`]).
//!
//! Both families: an IPv6 question gets an IPv6 answer ([`Ipv6Repr`],
//! ICMPv6 per RFC 4443: port unreachable is type 1 code 4, echo reply
//! type 129, checksums over the IPv6 pseudo-header). Extension headers of
//! the question are not repeated in the answer.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::checksum::l4_checksum_v6;

use crate::wire::ethernet::MacAddr;
use crate::wire::frame::{Frame, L3, L4};
use crate::wire::icmp::{self, IcmpRepr};
use crate::wire::icmpv6;
use crate::wire::ip_number;
use crate::wire::ipv4::{self, Ipv4Repr};
use crate::wire::ipv6::{self, Ipv6Repr};
use crate::wire::tcp::{self, flags, TcpRepr};

/// TTL of packets the gateway originates (Linux's default).
const TTL: u8 = 64;

/// Sends the answer back to the sender, from the gateway's port.
pub(crate) fn answer_l2(frame: &mut Frame<&mut [u8]>, port_mac: MacAddr) {
    let mut eth = frame.ethernet_mut();
    let sender = eth.source();
    eth.set_destination(sender);
    eth.set_source(port_mac);
}

/// A TCP RST answering the segment in `frame` (RFC 9293, 3.10.7.1: the
/// reply to a segment for a connection that does not exist).
pub fn tcp_reset(mut frame: Frame<&mut [u8]>, port_mac: MacAddr) -> Option<usize> {
    let ip_header_len = match frame.l3() {
        L3::Ipv4 { .. } => ipv4::MIN_HEADER_LEN,
        L3::Ipv6 { .. } => ipv6::HEADER_LEN,
    };
    let L4::Tcp {
        src_port,
        dst_port,
        flags: in_flags,
    } = frame.l4()
    else {
        return None;
    };
    if in_flags & flags::RST != 0 {
        return None;
    }
    let l3 = frame.l3_offset();
    let out = l3 + ip_header_len + tcp::MIN_HEADER_LEN;
    if frame.capacity() < out {
        return None;
    }
    let seg = frame.tcp()?;
    let (seq, ack) = (seg.seq_number(), seg.ack_number());
    let data_len = (frame.l3_end() - frame.l4_offset()).checked_sub(seg.header_len())?;
    // SEG.LEN counts SYN and FIN as one octet each; a segment's length
    // comes from a 16-bit IPv4 total length or IPv6 payload length.
    let seg_len = data_len as u32
        + u32::from(in_flags & flags::SYN != 0)
        + u32::from(in_flags & flags::FIN != 0);
    let (seq_number, ack_number, out_flags) = if in_flags & flags::ACK != 0 {
        (ack, 0, flags::RST)
    } else {
        (0, seq.wrapping_add(seg_len), flags::RST | flags::ACK)
    };

    let l3_header = frame.l3();
    answer_l2(&mut frame, port_mac);
    let buf = frame.into_inner();
    let reset = TcpRepr {
        src_port: dst_port,
        dst_port: src_port,
        seq_number,
        ack_number,
        flags: out_flags,
    };
    match l3_header {
        L3::Ipv4 { src, dst, .. } => {
            let mut ip = Ipv4Repr {
                src: dst,
                dst: src,
                protocol: ip_number::TCP,
                payload_len: tcp::MIN_HEADER_LEN,
                ttl: TTL,
            }
            .emit(&mut buf[l3..out])
            .ok()?;
            reset.emit(ip.payload_mut(), dst, src).ok()?;
        }
        L3::Ipv6 { src, dst, .. } => {
            let mut ip = Ipv6Repr {
                src: dst,
                dst: src,
                next_header: ip_number::TCP,
                payload_len: tcp::MIN_HEADER_LEN,
                hop_limit: TTL,
            }
            .emit(&mut buf[l3..out])
            .ok()?;
            reset.emit_v6(ip.payload_mut(), dst, src).ok()?;
        }
    }
    Some(out)
}

/// The most of the packet an ICMPv6 error quotes: what keeps the error
/// within the minimum IPv6 MTU (RFC 4443 2.4 (c)).
const ICMPV6_QUOTE_MAX: usize = 1280 - ipv6::HEADER_LEN - icmp::HEADER_LEN;

/// An ICMP port unreachable answering the datagram in `frame` (RFC 792;
/// RFC 1812 4.3.2.3 for how much of it to quote: the IP header and the
/// first 8 bytes of its payload).
pub fn port_unreachable(mut frame: Frame<&mut [u8]>, port_mac: MacAddr) -> Option<usize> {
    let (src, dst) = match frame.l3() {
        L3::Ipv4 { src, dst, .. } => (src, dst),
        L3::Ipv6 { src, dst, .. } => return port_unreachable_v6(frame, port_mac, src, dst),
    };
    let l3 = frame.l3_offset();
    let quoted_len = (frame.l4_offset() + 8).min(frame.l3_end()) - l3;
    let icmp_start = l3 + ipv4::MIN_HEADER_LEN;
    let body = icmp_start + icmp::HEADER_LEN;
    let out = body + quoted_len;
    if frame.capacity() < out {
        return None;
    }

    answer_l2(&mut frame, port_mac);
    let buf = frame.into_inner();
    // The quote moves behind the new headers first (the regions overlap;
    // `copy_within` is a memmove).
    buf.copy_within(l3..l3 + quoted_len, body);
    let answer = IcmpRepr::DstUnreachable {
        code: icmp::unreachable::PORT,
    };
    emit_icmp_answer(&mut buf[l3..out], dst, src, answer)?;
    Some(out)
}

/// ICMPv6 port unreachable (RFC 4443 3.1): the packet quoted from its
/// IPv6 header on, as much as fits in the minimum MTU.
fn port_unreachable_v6(
    mut frame: Frame<&mut [u8]>,
    port_mac: MacAddr,
    src: Ipv6Addr,
    dst: Ipv6Addr,
) -> Option<usize> {
    let l3 = frame.l3_offset();
    let quoted_len = (frame.l3_end() - l3).min(ICMPV6_QUOTE_MAX);
    let body = l3 + ipv6::HEADER_LEN + icmp::HEADER_LEN;
    let out = body + quoted_len;
    if frame.capacity() < out {
        return None;
    }
    answer_l2(&mut frame, port_mac);
    let buf = frame.into_inner();
    buf.copy_within(l3..l3 + quoted_len, body);
    // The header's second word is unused in a destination unreachable.
    buf[body - 4..body].fill(0);
    emit_icmpv6_answer(
        &mut buf[l3..out],
        dst,
        src,
        icmpv6::kind::DESTINATION_UNREACHABLE,
        icmpv6::unreachable::PORT,
    )?;
    Some(out)
}

/// Turns the echo request in `frame` into its echo reply, sent from the
/// address that was pinged (RFC 792; RFC 4443 4.2 for ICMPv6), with its
/// identifier, sequence number and data as they came.
pub fn echo_reply(mut frame: Frame<&mut [u8]>, port_mac: MacAddr) -> Option<usize> {
    let (src, dst) = match frame.l3() {
        L3::Ipv4 { src, dst, .. } => (src, dst),
        L3::Ipv6 { src, dst, .. } => return echo_reply_v6(frame, port_mac, src, dst),
    };
    if frame.l4()
        != (L4::Icmp {
            msg_type: icmp::kind::ECHO_REQUEST,
            code: 0,
        })
    {
        return None;
    }
    let request = frame.icmp()?;
    let (ident, seq_no) = (request.echo_ident(), request.echo_seq_no());
    let (l3, l4, l3_end) = (frame.l3_offset(), frame.l4_offset(), frame.l3_end());
    let icmp_start = l3 + ipv4::MIN_HEADER_LEN;
    let out = icmp_start + (l3_end - l4);

    answer_l2(&mut frame, port_mac);
    let buf = frame.into_inner();
    // Options of the request are not echoed: the reply's header is fresh,
    // and the ICMP message moves up behind it.
    buf.copy_within(l4..l3_end, icmp_start);
    // A full checksum, not an incremental one: a message that sums to
    // zero must carry 0xffff, which the RFC 1624 update can turn into
    // 0x0000 (found by the fuzzer); a ping is no hot path.
    emit_icmp_answer(
        &mut buf[l3..out],
        dst,
        src,
        IcmpRepr::EchoReply { ident, seq_no },
    )?;
    Some(out)
}

/// The ICMPv6 echo reply to the request in `frame`.
fn echo_reply_v6(
    mut frame: Frame<&mut [u8]>,
    port_mac: MacAddr,
    src: Ipv6Addr,
    dst: Ipv6Addr,
) -> Option<usize> {
    if frame.l4()
        != (L4::Icmpv6 {
            msg_type: icmpv6::kind::ECHO_REQUEST,
            code: 0,
        })
    {
        return None;
    }
    let (l3, l4, l3_end) = (frame.l3_offset(), frame.l4_offset(), frame.l3_end());
    let icmp_start = l3 + ipv6::HEADER_LEN;
    let out = icmp_start + (l3_end - l4);
    answer_l2(&mut frame, port_mac);
    let buf = frame.into_inner();
    // Extension headers of the request are not echoed: the message moves
    // up behind a fresh header (identifier, sequence number and data with
    // it).
    buf.copy_within(l4..l3_end, icmp_start);
    emit_icmpv6_answer(&mut buf[l3..out], dst, src, icmpv6::kind::ECHO_REPLY, 0)?;
    Some(out)
}

/// Writes a fresh IPv6 header from `from` to `to` at the start of
/// `packet` (the whole answer) and completes the ICMPv6 message behind it,
/// whose second word and body are already in place: type, code and a
/// full checksum over the pseudo-header.
fn emit_icmpv6_answer(
    packet: &mut [u8],
    from: Ipv6Addr,
    to: Ipv6Addr,
    msg_type: u8,
    code: u8,
) -> Option<()> {
    let mut ip = Ipv6Repr {
        src: from,
        dst: to,
        next_header: ip_number::ICMPV6,
        payload_len: packet.len().checked_sub(ipv6::HEADER_LEN)?,
        hop_limit: TTL,
    }
    .emit(packet)
    .ok()?;
    let message = ip.payload_mut();
    if message.len() < icmp::HEADER_LEN {
        return None;
    }
    message[0] = msg_type;
    message[1] = code;
    message[2..4].fill(0);
    let c = l4_checksum_v6(from.octets(), to.octets(), ip_number::ICMPV6, message);
    message[2..4].copy_from_slice(&c.to_be_bytes());
    Some(())
}

/// Writes a fresh IPv4 header from `from` to `to` at the start of
/// `packet` (the whole answer, header to end) and the ICMP header
/// `answer` behind it, whose body is already in place.
fn emit_icmp_answer(
    packet: &mut [u8],
    from: Ipv4Addr,
    to: Ipv4Addr,
    answer: IcmpRepr,
) -> Option<()> {
    let mut ip = Ipv4Repr {
        src: from,
        dst: to,
        protocol: ip_number::ICMP,
        payload_len: packet.len().checked_sub(ipv4::MIN_HEADER_LEN)?,
        ttl: TTL,
    }
    .emit(packet)
    .ok()?;
    answer.emit(ip.payload_mut()).ok()?;
    Some(())
}

/// Limits refusals per source address and in total, per worker, in
/// one-second windows: a scan of closed ports cannot turn the gateway into
/// a packet amplifier, and one noisy client cannot use up the budget of
/// the others (slots are direct-mapped; a colliding source takes over a
/// slot at its next window).
#[derive(Debug)]
pub struct RefusalLimiter {
    per_source: u32,
    total: u32,
    window: u32,
    sent_in_window: u32,
    slots: Box<[Slot]>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// The source's address (IPv4), or its 128 bits folded (IPv6: a
    /// colliding pair shares a budget, nothing worse).
    source: u32,
    window: u32,
    sent: u32,
}

impl RefusalLimiter {
    const SLOTS: usize = 1024;

    /// At most `per_source` refusals a second to one address and `total`
    /// a second in all.
    pub fn new(per_source: u32, total: u32) -> Self {
        Self {
            per_source,
            total,
            window: 0,
            sent_in_window: 0,
            slots: vec![Slot::default(); Self::SLOTS].into_boxed_slice(),
        }
    }

    /// Whether a refusal to `source` may be sent in second `now`.
    pub fn allow(&mut self, source: impl Into<IpAddr>, now: u32) -> bool {
        if self.window != now {
            self.window = now;
            self.sent_in_window = 0;
        }
        if self.sent_in_window >= self.total {
            return false;
        }
        let key = match source.into() {
            IpAddr::V4(v4) => u32::from(v4),
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                (bits as u32)
                    ^ ((bits >> 32) as u32)
                    ^ ((bits >> 64) as u32)
                    ^ ((bits >> 96) as u32)
            }
        };
        let slot = &mut self.slots[(key.wrapping_mul(0x9e37_79b9) >> 22) as usize];
        if slot.source != key || slot.window != now {
            *slot = Slot {
                source: key,
                window: now,
                sent: 0,
            };
        }
        if slot.sent >= self.per_source {
            return false;
        }
        slot.sent += 1;
        self.sent_in_window += 1;
        true
    }
}

impl Default for RefusalLimiter {
    /// 100 refusals a second per source, 10,000 in all per worker.
    fn default() -> Self {
        Self::new(100, 10_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::{checksum, l4_checksum};
    use etherparse::{Icmpv4Type, PacketBuilder, SlicedPacket, TransportSlice};

    const GW: MacAddr = [2, 0, 0, 0, 0, 1];
    const CLIENT: MacAddr = [2, 0, 0, 0, 0, 2];

    fn with_room(mut frame: Vec<u8>) -> (Vec<u8>, usize) {
        let len = frame.len();
        frame.resize(len + 128, 0xee);
        (frame, len)
    }

    /// The frame in `buf[..len]`, parsed as the pipeline parses it.
    fn parsed(buf: &mut [u8], len: usize) -> Frame<&mut [u8]> {
        Frame::parse(buf, len).expect("test frame parses")
    }

    fn tcp_frame(syn: bool, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(CLIENT, GW)
            .ipv4([198, 18, 0, 2], [198, 18, 100, 10], 64)
            .tcp(40000, 9999, 1000, 64240);
        let b = if syn { b.syn() } else { b.ack(777) };
        let mut out = Vec::new();
        b.write(&mut out, payload).expect("builds");
        out
    }

    /// Parses an answer with etherparse, which verifies nothing, and
    /// checks the checksums itself.
    fn check_answer(frame: &[u8]) -> SlicedPacket<'_> {
        let p = SlicedPacket::from_ethernet(frame).expect("answer parses");
        let eth = p.link.as_ref().expect("ethernet");
        let etherparse::LinkSlice::Ethernet2(eth) = eth else {
            panic!("ethernet II")
        };
        assert_eq!(eth.source(), GW);
        assert_eq!(eth.destination(), CLIENT);
        let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
            panic!("ipv4")
        };
        assert_eq!(checksum(ip.header().slice()), 0, "IP header checksum");
        assert_eq!(ip.header().source(), [198, 18, 100, 10]);
        assert_eq!(ip.header().destination(), [198, 18, 0, 2]);
        p
    }

    #[test]
    fn rst_answers_a_syn_with_ack_of_its_sequence() {
        let (mut buf, len) = with_room(tcp_frame(true, b""));
        let out = tcp_reset(parsed(&mut buf, len), GW).expect("answered");
        let p = check_answer(&buf[..out]);
        let Some(TransportSlice::Tcp(t)) = p.transport else {
            panic!("tcp")
        };
        assert!(t.rst() && t.ack() && !t.syn());
        assert_eq!((t.source_port(), t.destination_port()), (9999, 40000));
        assert_eq!((t.sequence_number(), t.acknowledgment_number()), (0, 1001));
        assert_eq!(
            l4_checksum([198, 18, 100, 10], [198, 18, 0, 2], 6, &buf[34..out]),
            0,
            "TCP checksum"
        );
    }

    #[test]
    fn rst_answers_an_ack_from_its_ack_number_and_never_a_rst() {
        let (mut buf, len) = with_room(tcp_frame(false, b"data"));
        let out = tcp_reset(parsed(&mut buf, len), GW).expect("answered");
        let p = check_answer(&buf[..out]);
        let Some(TransportSlice::Tcp(t)) = p.transport else {
            panic!("tcp")
        };
        assert!(t.rst() && !t.ack());
        assert_eq!(t.sequence_number(), 777);

        let mut rst = tcp_frame(false, b"");
        rst[14 + 20 + 13] |= flags::RST;
        let (mut buf, len) = with_room(rst);
        assert_eq!(tcp_reset(parsed(&mut buf, len), GW), None);
    }

    #[test]
    fn port_unreachable_quotes_header_and_8_bytes() {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(CLIENT, GW)
            .ipv4([198, 18, 0, 2], [198, 18, 100, 10], 64)
            .udp(33000, 53)
            .write(&mut frame, b"question")
            .expect("builds");
        let original_ip = frame[14..14 + 28].to_vec();
        let (mut buf, len) = with_room(frame);
        let out = port_unreachable(parsed(&mut buf, len), GW).expect("answered");
        assert_eq!(out, 14 + 20 + 8 + 28);
        let p = check_answer(&buf[..out]);
        let Some(TransportSlice::Icmpv4(m)) = p.transport else {
            panic!("icmp")
        };
        assert!(matches!(
            m.icmp_type(),
            Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port)
        ));
        assert_eq!(checksum(&buf[34..out]), 0, "ICMP checksum");
        assert_eq!(&buf[42..out], &original_ip[..]);
    }

    #[test]
    fn echo_reply_swaps_and_keeps_the_payload() {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(CLIENT, GW)
            .ipv4([198, 18, 0, 2], [198, 18, 100, 10], 64)
            .icmpv4_echo_request(0x1234, 7)
            .write(&mut frame, b"abcdefgh")
            .expect("builds");
        let (mut buf, len) = with_room(frame);
        let out = echo_reply(parsed(&mut buf, len), GW).expect("answered");
        assert_eq!(out, len);
        let p = check_answer(&buf[..out]);
        let Some(TransportSlice::Icmpv4(m)) = p.transport else {
            panic!("icmp")
        };
        assert!(matches!(m.icmp_type(), Icmpv4Type::EchoReply(h) if h.id == 0x1234 && h.seq == 7));
        assert_eq!(m.payload(), b"abcdefgh");
        assert_eq!(checksum(&buf[34..out]), 0, "ICMP checksum");
    }

    #[test]
    fn echo_reply_of_an_all_zero_message_has_a_valid_checksum() {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(CLIENT, GW)
            .ipv4([198, 18, 0, 2], [198, 18, 100, 10], 64)
            .icmpv4_echo_request(0, 0)
            .write(&mut frame, &[])
            .expect("builds");
        let (mut buf, len) = with_room(frame);
        let out = echo_reply(parsed(&mut buf, len), GW).expect("answered");
        assert_eq!(&buf[34..36], &[0, 0], "echo reply, code 0");
        assert_eq!(
            &buf[36..38],
            &[0xff, 0xff],
            "all-zero message checksums to 0xffff"
        );
        assert_eq!(checksum(&buf[34..out]), 0);
    }

    #[test]
    fn limiter_caps_per_source_and_total() {
        let mut l = RefusalLimiter::new(2, 3);
        let a = Ipv4Addr::new(198, 18, 0, 2);
        let b = Ipv4Addr::new(198, 18, 0, 3);
        assert!(l.allow(a, 1) && l.allow(a, 1));
        assert!(!l.allow(a, 1), "per-source cap");
        assert!(l.allow(b, 1));
        assert!(!l.allow(Ipv4Addr::new(198, 18, 0, 4), 1), "total cap");
        assert!(l.allow(a, 2), "a new second");
    }

    // IPv6: the same answers over RFC 4443 and the IPv6 pseudo-header.

    const CLIENT6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const VIP6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x10];

    /// Checks an IPv6 answer's link and network headers; returns it parsed.
    fn check_answer_v6(frame: &[u8]) -> SlicedPacket<'_> {
        let p = SlicedPacket::from_ethernet(frame).expect("answer parses");
        let Some(etherparse::LinkSlice::Ethernet2(eth)) = &p.link else {
            panic!("ethernet II")
        };
        assert_eq!((eth.source(), eth.destination()), (GW, CLIENT));
        let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else {
            panic!("ipv6")
        };
        assert_eq!(ip.header().source(), VIP6, "from the VIP");
        assert_eq!(ip.header().destination(), CLIENT6);
        assert_eq!(ip.header().hop_limit(), TTL);
        assert_eq!(
            usize::from(ip.header().payload_length()),
            frame.len() - 14 - 40,
            "payload length"
        );
        p
    }

    #[test]
    fn ipv6_rst_answers_a_syn_with_a_valid_checksum() {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(CLIENT, GW)
            .ipv6(CLIENT6, VIP6, 64)
            .tcp(40000, 9999, 1000, 64240)
            .syn()
            .write(&mut frame, b"")
            .expect("builds");
        let (mut buf, len) = with_room(frame);
        let out = tcp_reset(parsed(&mut buf, len), GW).expect("answered");
        assert_eq!(out, 14 + 40 + 20);
        let p = check_answer_v6(&buf[..out]);
        let Some(TransportSlice::Tcp(t)) = p.transport else {
            panic!("tcp")
        };
        assert!(t.rst() && t.ack() && !t.syn());
        assert_eq!((t.source_port(), t.destination_port()), (9999, 40000));
        assert_eq!(t.acknowledgment_number(), 1001);
        assert_eq!(
            l4_checksum_v6(VIP6, CLIENT6, 6, &buf[54..out]),
            0,
            "TCP checksum"
        );
    }

    #[test]
    fn ipv6_port_unreachable_quotes_the_datagram_within_the_minimum_mtu() {
        for payload_len in [8usize, 1400] {
            let payload = vec![0x5a; payload_len];
            let mut frame = Vec::new();
            PacketBuilder::ethernet2(CLIENT, GW)
                .ipv6(CLIENT6, VIP6, 64)
                .udp(33000, 53)
                .write(&mut frame, &payload)
                .expect("builds");
            let original = frame[14..].to_vec();
            let (mut buf, len) = with_room(frame);
            let out = port_unreachable(parsed(&mut buf, len), GW).expect("answered");
            let quoted = original.len().min(1280 - 48);
            assert_eq!(out, 14 + 48 + quoted, "payload {payload_len}");
            assert!(out - 14 <= 1280, "within the minimum MTU");
            let p = check_answer_v6(&buf[..out]);
            let Some(TransportSlice::Icmpv6(m)) = p.transport else {
                panic!("icmpv6")
            };
            assert!(matches!(
                m.icmp_type(),
                etherparse::Icmpv6Type::DestinationUnreachable(
                    etherparse::icmpv6::DestUnreachableCode::Port
                )
            ));
            assert_eq!(&buf[58..62], &[0; 4], "unused word");
            assert_eq!(
                l4_checksum_v6(VIP6, CLIENT6, 58, &buf[54..out]),
                0,
                "checksum"
            );
            assert_eq!(&buf[62..out], &original[..quoted], "the quote");
        }
    }

    #[test]
    fn ipv6_echo_reply_keeps_identifier_sequence_and_data() {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(CLIENT, GW)
            .ipv6(CLIENT6, VIP6, 64)
            .icmpv6_echo_request(0x1234, 7)
            .write(&mut frame, b"abcdefgh")
            .expect("builds");
        let (mut buf, len) = with_room(frame);
        let out = echo_reply(parsed(&mut buf, len), GW).expect("answered");
        assert_eq!(out, len);
        let p = check_answer_v6(&buf[..out]);
        let Some(TransportSlice::Icmpv6(m)) = p.transport else {
            panic!("icmpv6")
        };
        assert!(
            matches!(m.icmp_type(), etherparse::Icmpv6Type::EchoReply(h) if h.id == 0x1234 && h.seq == 7)
        );
        assert_eq!(m.payload(), b"abcdefgh");
        assert_eq!(
            l4_checksum_v6(VIP6, CLIENT6, 58, &buf[54..out]),
            0,
            "checksum"
        );
    }

    #[test]
    fn the_limiter_counts_ipv6_sources_apart() {
        let mut limiter = RefusalLimiter::new(1, 10);
        let a: Ipv6Addr = "2001:2::1".parse().expect("literal");
        let b: Ipv6Addr = "2001:2::2".parse().expect("literal");
        assert!(limiter.allow(a, 1));
        assert!(!limiter.allow(a, 1), "one a second to a");
        assert!(limiter.allow(b, 1), "b has its own budget");
        assert!(limiter.allow(a, 2), "a new second");
    }
}
