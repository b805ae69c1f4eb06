//! ICMP messages (RFC 792): echo, destination unreachable, and the
//! datagram an error message quotes, which the gateway rewrites so that
//! an error about a NATed flow reaches the other end in terms it knows.

use std::net::Ipv4Addr;

use super::ipv4::MIN_HEADER_LEN as IPV4_MIN_HEADER_LEN;
use super::{ip_number, read_u16, write_u16, WireError};
use crate::checksum::{checksum, Delta};

mod field {
    use std::ops::Range;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    /// The second word: identifier and sequence number of an echo,
    /// unused (zero) in a destination unreachable.
    pub const REST_OF_HEADER: Range<usize> = 4..8;
    pub const ECHO_IDENT: usize = 4;
    pub const ECHO_SEQ_NO: usize = 6;
}

/// ICMP's IANA protocol number, as the IPv4 header carries it.
pub const PROTOCOL: u8 = ip_number::ICMP;

/// The fixed part of every ICMP message.
pub const HEADER_LEN: usize = 8;

/// Message types cipgw reads or writes (RFC 792).
pub mod kind {
    pub const ECHO_REPLY: u8 = 0;
    pub const DESTINATION_UNREACHABLE: u8 = 3;
    pub const REDIRECT: u8 = 5;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAMETER_PROBLEM: u8 = 12;
}

/// Destination-unreachable codes (RFC 792, RFC 1122 3.2.2.1).
pub mod unreachable {
    pub const PORT: u8 = 3;
    /// Fragmentation needed and DF set: the second word's low half is
    /// the next hop's MTU (RFC 1191).
    pub const FRAGMENTATION_NEEDED: u8 = 4;
}

/// Whether a message of `msg_type` is an error that quotes the datagram
/// it is about (RFC 1122 3.2.2): the ones a NAT must translate.
pub const fn is_error(msg_type: u8) -> bool {
    matches!(
        msg_type,
        kind::DESTINATION_UNREACHABLE | kind::TIME_EXCEEDED | kind::PARAMETER_PROBLEM
    )
}

/// The TCP or UDP datagram an ICMP (or ICMPv6) error quotes: the start
/// of a packet the error's sender received, whose addresses and ports
/// name a flow. Offsets are within the ICMP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quoted<A = Ipv4Addr> {
    pub src: A,
    pub dst: A,
    /// [`ip_number::TCP`] or [`ip_number::UDP`].
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    /// Where the quoted transport header starts.
    pub(super) l4_offset: usize,
}

/// Bytes of the quoted transport header an error must carry (RFC 792):
/// the ports, and for UDP its checksum.
pub(super) const QUOTED_L4_MIN: usize = 8;
/// Where TCP's checksum lies in its header.
const TCP_CHECKSUM_AT: usize = 16;
/// Where UDP's checksum lies in its header.
const UDP_CHECKSUM_AT: usize = 6;

/// A view of an ICMP message.
#[derive(Debug)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    /// Checks the fixed header is present. No accessor panics after.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < HEADER_LEN {
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
        self.buffer.as_ref()[field::TYPE]
    }

    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The identifier of an echo request or reply.
    pub fn echo_ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_IDENT)
    }

    /// The sequence number of an echo request or reply.
    pub fn echo_seq_no(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_SEQ_NO)
    }

    /// Whether the checksum over the whole message verifies.
    pub fn verify_checksum(&self) -> bool {
        checksum(self.buffer.as_ref()) == 0
    }

    /// The TCP or UDP datagram an error message quotes. `Truncated` when
    /// the quote ends before its IPv4 header and 8 bytes of transport
    /// header; `Malformed` when the quote is not IPv4 with IHL >= 5, or
    /// is of another protocol, or a later fragment (no ports).
    pub fn quoted(&self) -> Result<Quoted, WireError> {
        let quote = &self.buffer.as_ref()[HEADER_LEN..];
        if quote.len() < IPV4_MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let header_len = usize::from(quote[0] & 0x0f) * 4;
        if quote[0] >> 4 != 4 || header_len < IPV4_MIN_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        let protocol = quote[9];
        let later_fragment = read_u16(quote, 6) & 0x1fff != 0;
        if later_fragment || !matches!(protocol, ip_number::TCP | ip_number::UDP) {
            return Err(WireError::Malformed);
        }
        if quote.len() < header_len + QUOTED_L4_MIN {
            return Err(WireError::Truncated);
        }
        let addr =
            |at: usize| Ipv4Addr::new(quote[at], quote[at + 1], quote[at + 2], quote[at + 3]);
        Ok(Quoted {
            src: addr(12),
            dst: addr(16),
            protocol,
            src_port: read_u16(quote, header_len),
            dst_port: read_u16(quote, header_len + 2),
            l4_offset: HEADER_LEN + header_len,
        })
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    pub fn set_msg_type(&mut self, value: u8) {
        self.buffer.as_mut()[field::TYPE] = value;
    }

    pub fn set_code(&mut self, value: u8) {
        self.buffer.as_mut()[field::CODE] = value;
    }

    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// Rewrites the datagram an error quotes ([`IcmpPacket::quoted`]
    /// found it) to come from `src` and go to `dst` (address and port):
    /// its header checksum and, when quoted, its transport checksum are
    /// updated for the change (RFC 1624), then the message's own checksum
    /// is computed over the result.
    pub fn rewrite_quoted(&mut self, quoted: &Quoted, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) {
        let bytes = self.buffer.as_mut();
        let ip = HEADER_LEN;
        let addr_delta = Delta::default()
            .addr(quoted.src.octets(), src.0.octets())
            .addr(quoted.dst.octets(), dst.0.octets());
        bytes[ip + 12..ip + 16].copy_from_slice(&src.0.octets());
        bytes[ip + 16..ip + 20].copy_from_slice(&dst.0.octets());
        let ip_checksum = read_u16(bytes, ip + 10);
        write_u16(bytes, ip + 10, addr_delta.apply(ip_checksum));
        rewrite_quoted_transport(bytes, quoted, addr_delta, src.1, dst.1);
        write_u16(bytes, field::CHECKSUM, 0);
        let c = checksum(bytes);
        write_u16(bytes, field::CHECKSUM, c);
    }
}

/// Writes the ports of the transport header an error quotes (at
/// `quoted`'s offset in `bytes`, the ICMP or ICMPv6 message) and, when
/// the quote holds it, updates its checksum for `addr_delta` (the change
/// of its pseudo-header's addresses) and the ports' change (RFC 1624).
pub(super) fn rewrite_quoted_transport<A>(
    bytes: &mut [u8],
    quoted: &Quoted<A>,
    addr_delta: Delta,
    src_port: u16,
    dst_port: u16,
) {
    let l4 = quoted.l4_offset;
    write_u16(bytes, l4, src_port);
    write_u16(bytes, l4 + 2, dst_port);
    // The transport checksum covers the addresses (pseudo-header) and
    // the ports; an error quotes TCP's only when it quotes 18 bytes.
    let l4_delta = addr_delta
        .word(quoted.src_port, src_port)
        .word(quoted.dst_port, dst_port);
    let at = match quoted.protocol {
        ip_number::UDP => l4 + UDP_CHECKSUM_AT,
        _ => l4 + TCP_CHECKSUM_AT,
    };
    if at + 2 <= bytes.len() {
        let old = read_u16(bytes, at);
        let new = match quoted.protocol {
            ip_number::UDP => l4_delta.apply_udp(old),
            _ => l4_delta.apply(old),
        };
        write_u16(bytes, at, new);
    }
}

/// An ICMP header the gateway originates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpRepr {
    /// The answer to an echo request, with the request's identifier and
    /// sequence number.
    EchoReply { ident: u16, seq_no: u16 },
    /// Destination unreachable with `code` ([`unreachable`](mod@unreachable)).
    DstUnreachable { code: u8 },
}

impl IcmpRepr {
    /// Writes the 8-byte header at the start of `buffer`, which must be
    /// exactly the message, and the checksum over all of it: the body (the
    /// echoed data, the quoted datagram) is whatever `buffer` already
    /// holds after the header, so an answer is emitted in place. Returns a
    /// view of the message; `Truncated`, with nothing written, when
    /// `buffer` is shorter than the header.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        mut buffer: T,
    ) -> Result<IcmpPacket<T>, WireError> {
        let bytes = buffer.as_mut();
        if bytes.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        match *self {
            IcmpRepr::EchoReply { ident, seq_no } => {
                bytes[field::TYPE] = kind::ECHO_REPLY;
                bytes[field::CODE] = 0;
                write_u16(bytes, field::ECHO_IDENT, ident);
                write_u16(bytes, field::ECHO_SEQ_NO, seq_no);
            }
            IcmpRepr::DstUnreachable { code } => {
                bytes[field::TYPE] = kind::DESTINATION_UNREACHABLE;
                bytes[field::CODE] = code;
                bytes[field::REST_OF_HEADER].fill(0);
            }
        }
        write_u16(bytes, field::CHECKSUM, 0);
        let c = checksum(bytes);
        write_u16(bytes, field::CHECKSUM, c);
        Ok(IcmpPacket { buffer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Echo request, id 0x1234, seq 1, payload "hi".
    static ECHO: [u8; 10] = [8, 0, 0x7d, 0x61, 0x12, 0x34, 0x00, 0x01, b'h', b'i'];

    #[test]
    fn reads_and_writes_fields() {
        let p = IcmpPacket::new_checked(&ECHO[..]).expect("valid");
        assert_eq!((p.msg_type(), p.code(), p.checksum()), (8, 0, 0x7d61));
        assert_eq!((p.echo_ident(), p.echo_seq_no()), (0x1234, 1));
        assert_eq!(
            crate::checksum::checksum(&ECHO),
            0,
            "static checksum is valid"
        );
        let mut bytes = ECHO;
        let mut p = IcmpPacket::new_checked(&mut bytes[..]).expect("valid");
        p.set_msg_type(kind::ECHO_REPLY);
        p.set_code(0);
        p.set_checksum(1);
        assert_eq!(&bytes[..4], &[0, 0, 0, 1]);
        assert_eq!(
            IcmpPacket::new_checked(&ECHO[..7]).err(),
            Some(WireError::Truncated)
        );
    }

    #[test]
    fn emits_headers_over_the_body_in_place() {
        let mut bytes = ECHO;
        let reply = IcmpRepr::EchoReply {
            ident: 0x1234,
            seq_no: 1,
        }
        .emit(&mut bytes[..])
        .expect("room");
        assert_eq!((reply.msg_type(), reply.code()), (kind::ECHO_REPLY, 0));
        assert_eq!(&bytes[8..], b"hi", "the body stays");
        assert_eq!(crate::checksum::checksum(&bytes), 0, "checksum verifies");

        let mut bytes = [0xee; 12];
        IcmpRepr::DstUnreachable {
            code: unreachable::PORT,
        }
        .emit(&mut bytes[..])
        .expect("room");
        assert_eq!(&bytes[..2], &[3, 3]);
        assert_eq!(&bytes[4..8], &[0; 4], "unused word is zero");
        assert_eq!(crate::checksum::checksum(&bytes), 0, "checksum verifies");

        let mut short = [0xee; 7];
        assert_eq!(
            IcmpRepr::DstUnreachable { code: 3 }
                .emit(&mut short[..])
                .err(),
            Some(WireError::Truncated)
        );
        assert_eq!(short, [0xee; 7], "nothing written");
    }
}
