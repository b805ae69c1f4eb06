//! ICMPv6 (RFC 4443) messages: their types, and the packet an error
//! message quotes, which the gateway rewrites so that an error about a
//! NATed flow reaches the other end in terms it knows. The fixed header
//! has ICMP's layout (type, code, checksum, one word), so
//! [`super::icmp::IcmpPacket`] views it for reading and answering; what
//! differs is the numbering, that the quote is an IPv6 packet (extension
//! headers and all), and that the checksum covers the IPv6 pseudo-header
//! ([`crate::checksum::l4_checksum_v6`]), so it changes with the outer
//! addresses too.
//!
//! An error carries as much of the offending packet as fits in 1280
//! bytes (RFC 4443 2.4 (c)): the quote may end anywhere in the quoted
//! payload, past the transport header's first 8 bytes, which it must
//! hold to name a flow.

use std::net::Ipv6Addr;

use super::icmp::{self, Quoted, QUOTED_L4_MIN};
use super::ipv6::{self, HEADER_LEN as IPV6_HEADER_LEN};
use super::{ip_number, read_u16, write_u16, WireError};
use crate::checksum::{l4_checksum_v6, Delta};

/// ICMPv6's next-header number, as the IPv6 header carries it.
pub const PROTOCOL: u8 = ip_number::ICMPV6;

/// Where the checksum lies in the fixed header.
const CHECKSUM_AT: usize = 2;

/// Message types cipgw reads or writes (RFC 4443, RFC 4861).
pub mod kind {
    pub const DESTINATION_UNREACHABLE: u8 = 1;
    /// The second word is the next hop's MTU (RFC 8201).
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const PARAMETER_PROBLEM: u8 = 4;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
    pub const ROUTER_SOLICITATION: u8 = 133;
    pub const ROUTER_ADVERTISEMENT: u8 = 134;
    pub const NEIGHBOR_SOLICITATION: u8 = 135;
    pub const NEIGHBOR_ADVERTISEMENT: u8 = 136;
    pub const REDIRECT: u8 = 137;
}

/// Destination-unreachable codes (RFC 4443 3.1).
pub mod unreachable {
    pub const PORT: u8 = 4;
}

/// Whether a message of `msg_type` is an error that quotes the packet it
/// is about (RFC 4443 2.1: types 0 to 127).
pub const fn is_error(msg_type: u8) -> bool {
    msg_type < 128
}

/// Whether a message of `msg_type` is an error the gateway translates for
/// a flow it tracks (RFC 4443 3): destination unreachable, packet too
/// big, time exceeded, parameter problem. Other error types (private
/// experimentation, unassigned) are left to the kernel.
pub const fn is_translated_error(msg_type: u8) -> bool {
    matches!(
        msg_type,
        kind::DESTINATION_UNREACHABLE
            | kind::PACKET_TOO_BIG
            | kind::TIME_EXCEEDED
            | kind::PARAMETER_PROBLEM
    )
}

/// Whether a message of `msg_type` belongs to Neighbor Discovery (RFC
/// 4861): router and neighbor solicitations and advertisements, and
/// redirects, which always stay with the kernel.
pub const fn is_neighbor_discovery(msg_type: u8) -> bool {
    matches!(msg_type, kind::ROUTER_SOLICITATION..=kind::REDIRECT)
}

/// A view of an ICMPv6 error message (its fixed header within), for the
/// translation of what it quotes.
#[derive(Debug)]
pub struct Icmpv6Error<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv6Error<T> {
    /// Checks the fixed header is present. No accessor panics after.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < icmp::HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Self { buffer })
    }

    /// A view over bytes a checked view (or [`super::frame::Frame::parse`])
    /// already accepted; accessors may panic on anything else.
    #[inline]
    pub(crate) fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), CHECKSUM_AT)
    }

    /// Whether the checksum over the pseudo-header of an IPv6 packet from
    /// `src` to `dst` and the whole message verifies.
    pub fn verify_checksum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        l4_checksum_v6(src.octets(), dst.octets(), PROTOCOL, self.buffer.as_ref()) == 0
    }

    /// The TCP or UDP datagram the error quotes, found through the quoted
    /// packet's extension headers. `Truncated` when the quote ends before
    /// its IPv6 header, an extension header, or 8 bytes of transport
    /// header; `Malformed` when the quote is not IPv6, its extension
    /// headers are (too many, misplaced), it is of another protocol, or a
    /// later fragment (no ports).
    pub fn quoted(&self) -> Result<Quoted<Ipv6Addr>, WireError> {
        let quote = &self.buffer.as_ref()[icmp::HEADER_LEN..];
        if quote.len() < IPV6_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if quote[0] >> 4 != 6 {
            return Err(WireError::Malformed);
        }
        // The walk stops at the end of the quote, not at the quoted
        // payload length: the quote may be cut short of it.
        let upper = ipv6::walk(quote, quote[6])?;
        let later_fragment = upper.fragment.is_some_and(|f| f.offset != 0);
        if later_fragment || !matches!(upper.protocol, ip_number::TCP | ip_number::UDP) {
            return Err(WireError::Malformed);
        }
        if quote.len() < upper.offset + QUOTED_L4_MIN {
            return Err(WireError::Truncated);
        }
        let addr = |at: usize| {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&quote[at..at + 16]);
            Ipv6Addr::from(octets)
        };
        Ok(Quoted {
            src: addr(8),
            dst: addr(24),
            protocol: upper.protocol,
            src_port: read_u16(quote, upper.offset),
            dst_port: read_u16(quote, upper.offset + 2),
            l4_offset: icmp::HEADER_LEN + upper.offset,
        })
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv6Error<T> {
    /// Rewrites the datagram the error quotes ([`Icmpv6Error::quoted`]
    /// found it) to come from `src` and go to `dst` (address and port),
    /// updating its transport checksum, when quoted, for the change (RFC
    /// 1624; the quoted IPv6 header has no checksum of its own), then
    /// computes the message's checksum over the result and the
    /// pseudo-header of the packet that carries it, from `outer.0` to
    /// `outer.1`.
    pub fn rewrite_quoted(
        &mut self,
        quoted: &Quoted<Ipv6Addr>,
        src: (Ipv6Addr, u16),
        dst: (Ipv6Addr, u16),
        outer: (Ipv6Addr, Ipv6Addr),
    ) {
        let bytes = self.buffer.as_mut();
        let ip = icmp::HEADER_LEN;
        let addr_delta = Delta::default()
            .addr6(quoted.src.octets(), src.0.octets())
            .addr6(quoted.dst.octets(), dst.0.octets());
        bytes[ip + 8..ip + 24].copy_from_slice(&src.0.octets());
        bytes[ip + 24..ip + 40].copy_from_slice(&dst.0.octets());
        icmp::rewrite_quoted_transport(bytes, quoted, addr_delta, src.1, dst.1);
        write_u16(bytes, CHECKSUM_AT, 0);
        let c = l4_checksum_v6(outer.0.octets(), outer.1.octets(), PROTOCOL, bytes);
        write_u16(bytes, CHECKSUM_AT, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv6::next_header;
    use proptest::prelude::*;

    const CLIENT: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const VIP: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x10];
    const POD: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0x11];

    /// A UDP datagram from `src` to `dst` over IPv6, as etherparse
    /// builds it (checksum from scratch).
    fn udp(src: ([u8; 16], u16), dst: ([u8; 16], u16), payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ipv6(src.0, dst.0, 64)
            .udp(src.1, dst.1)
            .write(&mut out, payload)
            .expect("builds");
        out
    }

    /// A packet too big from `outer.0` to `outer.1` quoting `quote`.
    fn too_big(outer: ([u8; 16], [u8; 16]), quote: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        etherparse::PacketBuilder::ipv6(outer.0, outer.1, 64)
            .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 })
            .write(&mut out, quote)
            .expect("builds");
        out.split_off(40)
    }

    #[test]
    fn reads_the_quoted_datagram_through_extension_headers() {
        let mut quote = udp((POD, 5353), (CLIENT, 33000), b"answer");
        // A Destination Options header (8 bytes) before the UDP header.
        quote[6] = next_header::DESTINATION_OPTIONS;
        quote.splice(40..40, [17, 0, 1, 4, 0, 0, 0, 0]);
        let message = too_big((POD, CLIENT), &quote);
        let error = Icmpv6Error::new_checked(&message[..]).expect("header present");
        assert_eq!(error.msg_type(), kind::PACKET_TOO_BIG);
        assert!(error.verify_checksum(POD.into(), CLIENT.into()));
        assert!(
            !error.verify_checksum(VIP.into(), CLIENT.into()),
            "pseudo-header"
        );
        assert_eq!(
            error.quoted(),
            Ok(Quoted {
                src: POD.into(),
                dst: CLIENT.into(),
                protocol: ip_number::UDP,
                src_port: 5353,
                dst_port: 33000,
                l4_offset: 8 + 48,
            })
        );
        // Cut inside the extension header, inside the UDP header, and
        // just after it (enough).
        let quoted = |len: usize| {
            let message = too_big((POD, CLIENT), &quote[..len]);
            Icmpv6Error::new_checked(message).expect("header").quoted()
        };
        assert_eq!(quoted(39).err(), Some(WireError::Truncated));
        assert_eq!(quoted(44).err(), Some(WireError::Truncated));
        assert_eq!(quoted(55).err(), Some(WireError::Truncated));
        assert!(quoted(56).is_ok());
    }

    #[test]
    fn refuses_quotes_that_name_no_flow() {
        let quote = udp((CLIENT, 33000), (VIP, 53), b"query");
        let quoted = |quote: &[u8]| {
            Icmpv6Error::new_checked(too_big((POD, CLIENT), quote))
                .expect("header")
                .quoted()
        };
        let mut v4 = quote.clone();
        v4[0] = 0x45;
        assert_eq!(quoted(&v4).err(), Some(WireError::Malformed));
        let mut esp = quote.clone();
        esp[6] = next_header::ESP;
        assert_eq!(quoted(&esp).err(), Some(WireError::Malformed));
        // A later fragment (offset 8) carries no ports; a first one does.
        let fragment = |word: [u8; 2]| {
            let mut f = quote.clone();
            f[6] = next_header::FRAGMENT;
            f.splice(40..40, [17, 0, word[0], word[1], 0, 0, 0, 1]);
            f
        };
        assert_eq!(quoted(&fragment([0, 8])).err(), Some(WireError::Malformed));
        assert!(quoted(&fragment([0, 1])).is_ok());
        assert_eq!(
            Icmpv6Error::new_checked(&[1u8, 4, 0, 0, 0, 0, 0][..]).err(),
            Some(WireError::Truncated)
        );
    }

    proptest! {
        /// Rewriting a quoted UDP datagram and the outer addresses gives
        /// the message etherparse builds from scratch for the result:
        /// the quoted checksum updated over the quoted pseudo-header,
        /// the message's computed over the new outer one; whether the
        /// quote is whole or cut inside the payload.
        #[test]
        fn rewrite_matches_building_from_scratch(
            payload in proptest::collection::vec(any::<u8>(), 0..600),
            cut in any::<prop::sample::Index>(),
            from in any::<[u8; 16]>(), to in any::<[u8; 16]>(),
            new_from in any::<([u8; 16], u16)>(), new_to in any::<([u8; 16], u16)>(),
            outer in any::<([u8; 16], [u8; 16])>(), new_outer in any::<([u8; 16], [u8; 16])>(),
        ) {
            let quote = udp((from, 40000), (to, 53), &payload);
            let len = 48 + cut.index(quote.len() - 47);
            let mut message = too_big(outer, &quote[..len]);
            let mut error = Icmpv6Error::new_checked(&mut message[..]).expect("header");
            let quoted = error.quoted().expect("a UDP quote");
            error.rewrite_quoted(
                &quoted,
                (new_from.0.into(), new_from.1),
                (new_to.0.into(), new_to.1),
                (new_outer.0.into(), new_outer.1.into()),
            );
            let expected_quote = udp(new_from, new_to, &payload);
            let expected = too_big(new_outer, &expected_quote[..len]);
            // A computed UDP checksum of zero is sent as all ones (RFC
            // 768), which the incremental update also yields.
            prop_assert_eq!(message, expected);
        }
    }

    #[test]
    fn errors_and_neighbor_discovery_are_told_apart() {
        for t in [kind::DESTINATION_UNREACHABLE, kind::PACKET_TOO_BIG, 3, 4] {
            assert!(is_error(t) && !is_neighbor_discovery(t), "type {t}");
        }
        for t in [kind::ECHO_REQUEST, kind::ECHO_REPLY] {
            assert!(!is_error(t) && !is_neighbor_discovery(t), "type {t}");
        }
        for t in 133..=137 {
            assert!(is_neighbor_discovery(t) && !is_error(t), "type {t}");
        }
    }
}
