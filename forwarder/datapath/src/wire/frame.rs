//! A frame parsed once: its network header's family, addresses and place,
//! and its transport header's kind and ports, all validated in one pass,
//! so that every later step (the conntrack key, the NAT rewrite, an
//! answer, the next hop's addresses) works from what was found here
//! instead of validating the same bytes again. The frames a gateway
//! mostly carries (IPv4 without options, not fragmented; IPv6 with TCP or
//! UDP right after its fixed header) have their network header read at
//! fixed offsets; every other frame through the views.
//!
//! Invariant, set up by [`Frame::parse`] and kept because no field can be
//! changed from outside: the Ethernet header lies within the frame's
//! `len` bytes, the network header spans `l3_offset..l4_offset` and its
//! packet `l3_offset..l3_end` within them, and when [`L4`] names TCP, UDP
//! or ICMP that header was checked at `l4_offset..l3_end`. The views a
//! frame hands out are built over exactly those bytes without checking
//! them again. No setter of a view changes a length or version field of
//! its own header, and the transport views read nothing past their fixed
//! header, so no accessor of a view from a frame panics, whatever was
//! written through the others. Answers, which replace the headers
//! wholesale, take the frame by value ([`Frame::into_inner`]).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::ethernet::{self, ethertype, EthernetFrame};
use super::icmp::IcmpPacket;
use super::icmpv6::Icmpv6Error;
use super::ip_number;
use super::ipv4::Ipv4Packet;
use super::ipv6::Ipv6Packet;
use super::tcp::TcpSegment;
use super::udp::UdpDatagram;
use super::WireError;

/// The network layer of a frame: one variant per address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L3 {
    /// IPv4 (RFC 791); options, if any, are part of the header.
    Ipv4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ttl: u8,
    },
    /// IPv6 (RFC 8200); extension headers, if any, lie between the fixed
    /// header and the transport header.
    Ipv6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
    },
}

/// The transport layer of a frame, as far as cipgw reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp {
        src_port: u16,
        dst_port: u16,
        /// Control bits ([`super::tcp::flags`]).
        flags: u8,
    },
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    /// An ICMP message with its fixed header present (IPv4).
    Icmp {
        msg_type: u8,
        code: u8,
    },
    /// An ICMPv6 message with its fixed header present (IPv6).
    Icmpv6 {
        msg_type: u8,
        code: u8,
    },
    /// A fragment that carries no transport header cipgw reads: a later
    /// fragment (non-zero offset) of any protocol, or a first fragment of
    /// a protocol other than TCP and UDP. ([`Frame::fragment`] says which
    /// datagram it belongs to; a TCP or UDP first fragment is `Tcp` or
    /// `Udp`, with its fragment in [`Frame::fragment`] too.)
    Fragment {
        protocol: u8,
    },
    /// Any other protocol, or an ICMP message cut short.
    Other {
        protocol: u8,
    },
}

/// A fragment's place: which datagram it belongs to and where in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// The identification its datagram's fragments share (16 bits in
    /// IPv4, 32 in IPv6's Fragment header).
    pub ident: u32,
    /// Where its data lies in the datagram, in bytes; 0 for the first.
    pub offset: u16,
    /// More fragments follow (clear on the last).
    pub more: bool,
}

impl Fragment {
    /// Whether this is the fragment that carries the transport header.
    #[inline]
    pub fn is_first(&self) -> bool {
        self.offset == 0
    }
}

/// Why a frame could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than an Ethernet header.
    TruncatedEthernet,
    /// Carries an 802.1Q or 802.1ad tag.
    VlanTagged,
    /// An EtherType cipgw does not parse (ARP, ...).
    NotIp,
    /// The IPv4 header.
    Ipv4(WireError),
    /// The IPv6 header or its extension headers.
    Ipv6(WireError),
    /// The TCP or UDP header.
    L4(WireError),
    /// A UDP datagram over IPv6 without a checksum (zero): IPv6 makes the
    /// UDP checksum mandatory (RFC 8200 8.1), so it is discarded.
    UdpZeroChecksumV6,
}

/// Which header a frame's [`Transport`] describes: [`L4`]'s variants
/// without their fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum TransportKind {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    Fragment,
    Other,
}

/// The transport layer as a frame keeps it: [`L4`] flattened into plain
/// fields, each stored in the width it is read in.
///
/// Why not the enum itself: `L4`'s variants overlap in a union, and the
/// compiler moved it between `transport`, the frame and the pipeline as
/// a blob of bytes, reading with 16- and 24-bit loads what had been
/// written a byte and a word at a time. Such a load cannot be forwarded
/// from the stores still in flight and waits for them to retire: 20% of
/// the established packet path's samples sat behind two of them
/// (`benches/RESULTS.md`, session 17). Plain fields stay in registers or
/// are read back at the width they were written; [`Frame::l4`] builds the
/// enum, which a caller's `match` then folds away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Transport {
    kind: TransportKind,
    /// TCP's control bits, an ICMP or ICMPv6 type, or the protocol number
    /// of a fragment or of another protocol.
    byte: u8,
    /// An ICMP or ICMPv6 code (0 otherwise).
    code: u8,
    /// TCP's or UDP's ports (0 otherwise).
    src_port: u16,
    dst_port: u16,
}

impl Transport {
    #[inline(always)]
    fn new(kind: TransportKind, byte: u8, code: u8, src_port: u16, dst_port: u16) -> Self {
        Self {
            kind,
            byte,
            code,
            src_port,
            dst_port,
        }
    }

    #[inline(always)]
    fn l4(self) -> L4 {
        let Self {
            kind,
            byte,
            code,
            src_port,
            dst_port,
        } = self;
        match kind {
            TransportKind::Tcp => L4::Tcp {
                src_port,
                dst_port,
                flags: byte,
            },
            TransportKind::Udp => L4::Udp { src_port, dst_port },
            TransportKind::Icmp => L4::Icmp {
                msg_type: byte,
                code,
            },
            TransportKind::Icmpv6 => L4::Icmpv6 {
                msg_type: byte,
                code,
            },
            TransportKind::Fragment => L4::Fragment { protocol: byte },
            TransportKind::Other => L4::Other { protocol: byte },
        }
    }
}

/// The transport layer of a packet whose upper-layer `protocol` starts
/// `payload` (up to the packet's end).
#[inline]
fn transport(
    protocol: u8,
    payload: &[u8],
    fragment: Option<Fragment>,
    ipv6: bool,
) -> Result<Transport, ParseError> {
    use TransportKind as Kind;
    let tcp_or_udp = matches!(protocol, ip_number::TCP | ip_number::UDP);
    if fragment.is_some_and(|f| !f.is_first() || !tcp_or_udp) {
        return Ok(Transport::new(Kind::Fragment, protocol, 0, 0, 0));
    }
    Ok(match protocol {
        ip_number::TCP => {
            let tcp = TcpSegment::new_checked(payload).map_err(ParseError::L4)?;
            Transport::new(Kind::Tcp, tcp.flags(), 0, tcp.src_port(), tcp.dst_port())
        }
        ip_number::UDP => {
            let udp = match fragment {
                Some(_) => UdpDatagram::new_checked_first_fragment(payload),
                None => UdpDatagram::new_checked(payload),
            }
            .map_err(ParseError::L4)?;
            if ipv6 && udp.checksum() == 0 {
                return Err(ParseError::UdpZeroChecksumV6);
            }
            Transport::new(Kind::Udp, 0, 0, udp.src_port(), udp.dst_port())
        }
        ip_number::ICMP | ip_number::ICMPV6 => match IcmpPacket::new_checked(payload) {
            Ok(icmp) => {
                let kind = if protocol == ip_number::ICMP {
                    Kind::Icmp
                } else {
                    Kind::Icmpv6
                };
                Transport::new(kind, icmp.msg_type(), icmp.code(), 0, 0)
            }
            Err(_) => Transport::new(Kind::Other, protocol, 0, 0, 0),
        },
        _ => Transport::new(Kind::Other, protocol, 0, 0, 0),
    })
}

/// What [`Frame::parse`] finds of a frame's network layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Network {
    l3: L3,
    fragment: Option<Fragment>,
    /// The upper-layer protocol.
    protocol: u8,
    /// Where the upper layer starts in the packet.
    l4_start: usize,
    /// The packet's length (Ethernet padding excluded).
    l3_len: usize,
}

/// The network layer of the frames a gateway mostly carries, read at
/// fixed offsets: IPv4 with a 20-byte header, not a fragment, and IPv6
/// with TCP or UDP right after its fixed header. What [`network`] finds
/// in such a frame, for a fraction of its instructions (one length and
/// field check each, no view, no walk); `None` for any other frame,
/// which `network` then reads (`tests::the_common_shape_is_read_as_in_general`).
#[inline(always)]
fn common_network(frame: &[u8]) -> Option<Network> {
    const IP: usize = ethernet::HEADER_LEN;
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let packet = &frame[IP..];
    match ethertype {
        ethertype::IPV4 => {
            let header: &[u8; 20] = packet.get(..20)?.try_into().ok()?;
            let total_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
            // Version 4 and a 20-byte header; neither More Fragments nor
            // an offset; a length from the header's end to the frame's.
            let common = header[0] == 0x45
                && u16::from_be_bytes([header[6], header[7]]) & 0x3fff == 0
                && (20..=packet.len()).contains(&total_len);
            let address = |at: usize| {
                Ipv4Addr::new(header[at], header[at + 1], header[at + 2], header[at + 3])
            };
            common.then(|| Network {
                l3: L3::Ipv4 {
                    src: address(12),
                    dst: address(16),
                    ttl: header[8],
                },
                fragment: None,
                protocol: header[9],
                l4_start: 20,
                l3_len: total_len,
            })
        }
        ethertype::IPV6 => {
            let header: &[u8; 40] = packet.get(..40)?.try_into().ok()?;
            let total_len = 40 + usize::from(u16::from_be_bytes([header[4], header[5]]));
            let protocol = header[6];
            let common = header[0] >> 4 == 6
                && matches!(protocol, ip_number::TCP | ip_number::UDP)
                && total_len <= packet.len();
            let address = |at: usize| {
                let mut octets = [0; 16];
                octets.copy_from_slice(&header[at..at + 16]);
                Ipv6Addr::from(octets)
            };
            common.then(|| Network {
                l3: L3::Ipv6 {
                    src: address(8),
                    dst: address(24),
                    hop_limit: header[7],
                },
                fragment: None,
                protocol,
                l4_start: 40,
                l3_len: total_len,
            })
        }
        _ => None,
    }
}

/// The network layer of a frame's `packet` (after its Ethernet header,
/// which names `ethertype`), of any shape: every length and field
/// checked through the views, IPv6's extension headers walked.
///
/// Out of line, for the frames [`common_network`] does not take: inlined,
/// its result and the common path's met in stack slots that each path
/// filled in pieces (a byte, a word), and the common path's frames then
/// read them back 8 bytes at a time, loads the CPU could not take from
/// those stores (`benches/store_forwarding.py`; benches/RESULTS.md,
/// session 21).
#[cold]
#[inline(never)]
fn network(ethertype: u16, packet: &[u8]) -> Result<Network, ParseError> {
    match ethertype {
        ethertype::IPV4 => {
            let ip = Ipv4Packet::new_checked(packet).map_err(ParseError::Ipv4)?;
            let l3 = L3::Ipv4 {
                src: ip.source(),
                dst: ip.destination(),
                ttl: ip.ttl(),
            };
            let fragment = ip.is_fragment().then(|| Fragment {
                ident: u32::from(ip.ident()),
                offset: ip.fragment_offset(),
                more: ip.more_fragments(),
            });
            Ok(Network {
                l3,
                fragment,
                protocol: ip.protocol(),
                l4_start: ip.header_len(),
                l3_len: ip.total_len(),
            })
        }
        ethertype::IPV6 => {
            let ip = Ipv6Packet::new_checked(packet).map_err(ParseError::Ipv6)?;
            let upper = ip.upper_layer().map_err(ParseError::Ipv6)?;
            let l3 = L3::Ipv6 {
                src: ip.source(),
                dst: ip.destination(),
                hop_limit: ip.hop_limit(),
            };
            // An atomic fragment (offset 0, no more) is the whole
            // datagram (RFC 6946): no fragment to follow.
            let fragment = upper
                .fragment
                .filter(|f| f.offset != 0 || f.more)
                .map(|f| Fragment {
                    ident: f.ident,
                    offset: f.offset,
                    more: f.more,
                });
            Ok(Network {
                l3,
                fragment,
                protocol: upper.protocol,
                l4_start: upper.offset,
                l3_len: ip.total_len(),
            })
        }
        ethertype::VLAN | ethertype::QINQ => Err(ParseError::VlanTagged),
        _ => Err(ParseError::NotIp),
    }
}

/// A frame whose headers [`Frame::parse`] checked, with where they are.
#[derive(Debug)]
pub struct Frame<T: AsRef<[u8]>> {
    /// The frame, followed by room an answer may grow into.
    buffer: T,
    /// Length of the frame in `buffer`.
    len: usize,
    l3: L3,
    l4: Transport,
    /// Set when the packet is a fragment.
    fragment: Option<Fragment>,
    l3_offset: usize,
    l4_offset: usize,
    /// End of the network packet (Ethernet padding excluded).
    l3_end: usize,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Parses the untagged Ethernet frame in `buffer[..len]` (`len` is cut
    /// to the buffer), down to the transport header of a TCP, UDP or ICMP
    /// packet that is not fragmented, or of the first fragment of a TCP or
    /// UDP datagram. TCP and UDP headers must be well formed (a first
    /// fragment's UDP length counts the whole datagram, so it may exceed
    /// the bytes present); an ICMP message too short for its header is
    /// [`L4::Other`].
    #[inline]
    pub fn parse(buffer: T, len: usize) -> Result<Self, ParseError> {
        let bytes = buffer.as_ref();
        let len = len.min(bytes.len());
        let frame = &bytes[..len];
        let eth = EthernetFrame::new_checked(frame).map_err(|_| ParseError::TruncatedEthernet)?;
        let l3_offset = ethernet::HEADER_LEN;
        let packet = &frame[l3_offset..];
        let Network {
            l3,
            fragment,
            protocol,
            l4_start,
            l3_len,
        } = match common_network(frame) {
            Some(network) => network,
            None => network(eth.ethertype(), packet)?,
        };
        let ipv6 = matches!(l3, L3::Ipv6 { .. });
        let l4 = transport(protocol, &packet[l4_start..l3_len], fragment, ipv6)?;
        let l4_offset = l3_offset + l4_start;
        let l3_end = l3_offset + l3_len;
        Ok(Self {
            buffer,
            len,
            l3,
            l4,
            fragment,
            l3_offset,
            l4_offset,
            l3_end,
        })
    }

    /// Length of the frame (answers may be longer: see
    /// [`Frame::capacity`]).
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the frame is empty; never true for a parsed frame.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Length of the whole buffer: the room an answer may use.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.buffer.as_ref().len()
    }

    #[inline]
    pub fn l3(&self) -> L3 {
        self.l3
    }

    #[inline]
    pub fn l4(&self) -> L4 {
        self.l4.l4()
    }

    /// The fragment this packet is, if it is one.
    #[inline]
    pub fn fragment(&self) -> Option<Fragment> {
        self.fragment
    }

    /// Where the network header starts.
    #[inline]
    pub fn l3_offset(&self) -> usize {
        self.l3_offset
    }

    /// Where the transport header starts (after any IP options).
    #[inline]
    pub fn l4_offset(&self) -> usize {
        self.l4_offset
    }

    /// Where the network packet ends (Ethernet padding excluded).
    #[inline]
    pub fn l3_end(&self) -> usize {
        self.l3_end
    }

    /// The Ethernet header.
    #[inline]
    pub fn ethernet(&self) -> EthernetFrame<&[u8]> {
        EthernetFrame::new_unchecked(&self.buffer.as_ref()[..self.len])
    }

    /// The IPv4 packet (padding excluded), if the frame is IPv4.
    #[inline]
    pub fn ipv4(&self) -> Option<Ipv4Packet<&[u8]>> {
        match self.l3 {
            L3::Ipv4 { .. } => self
                .buffer
                .as_ref()
                .get(self.l3_offset..self.l3_end)
                .map(Ipv4Packet::new_unchecked),
            L3::Ipv6 { .. } => None,
        }
    }

    /// The IPv6 packet (padding excluded), if the frame is IPv6.
    #[inline]
    pub fn ipv6(&self) -> Option<Ipv6Packet<&[u8]>> {
        match self.l3 {
            L3::Ipv6 { .. } => self
                .buffer
                .as_ref()
                .get(self.l3_offset..self.l3_end)
                .map(Ipv6Packet::new_unchecked),
            L3::Ipv4 { .. } => None,
        }
    }

    /// The TCP segment, if the frame carries one.
    #[inline]
    pub fn tcp(&self) -> Option<TcpSegment<&[u8]>> {
        match self.l4.kind {
            TransportKind::Tcp => self.l4_bytes().map(TcpSegment::new_unchecked),
            _ => None,
        }
    }

    /// The ICMP message, if the frame carries one.
    #[inline]
    pub fn icmp(&self) -> Option<IcmpPacket<&[u8]>> {
        match self.l4.kind {
            TransportKind::Icmp => self.l4_bytes().map(IcmpPacket::new_unchecked),
            _ => None,
        }
    }

    /// The ICMPv6 message, if the frame carries one, as an error.
    #[inline]
    pub fn icmpv6_error(&self) -> Option<Icmpv6Error<&[u8]>> {
        match self.l4.kind {
            TransportKind::Icmpv6 => self.l4_bytes().map(Icmpv6Error::new_unchecked),
            _ => None,
        }
    }

    /// The buffer, for an answer to be written into: the offsets of the
    /// frame no longer describe it once it is written.
    #[inline]
    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline]
    fn l4_bytes(&self) -> Option<&[u8]> {
        self.buffer.as_ref().get(self.l4_offset..self.l3_end)
    }
}

impl Frame<&mut [u8]> {
    /// This parsed frame again, borrowing the same bytes: a new value,
    /// for handing to a call that is not inlined. Given the frame itself
    /// (by reference or by move), such a call keeps the whole frame in
    /// memory on every path, and the packet path stores it there after
    /// each parse; given a copy made where it is called, the frame's
    /// fields stay in registers on the paths that make no such call.
    #[inline(always)]
    pub fn reborrow(&mut self) -> Frame<&mut [u8]> {
        Frame {
            buffer: &mut *self.buffer,
            len: self.len,
            l3: self.l3,
            l4: self.l4,
            fragment: self.fragment,
            l3_offset: self.l3_offset,
            l4_offset: self.l4_offset,
            l3_end: self.l3_end,
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Frame<T> {
    /// The frame's bytes, writable, for writes at the offsets parse
    /// found (the views below check their own bounds; these are the
    /// writer's to check).
    #[inline]
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[..self.len]
    }

    /// The Ethernet header, writable.
    #[inline]
    pub fn ethernet_mut(&mut self) -> EthernetFrame<&mut [u8]> {
        EthernetFrame::new_unchecked(&mut self.buffer.as_mut()[..self.len])
    }

    /// The IPv4 packet, writable, if the frame is IPv4.
    #[inline]
    pub fn ipv4_mut(&mut self) -> Option<Ipv4Packet<&mut [u8]>> {
        match self.l3 {
            L3::Ipv4 { .. } => self
                .buffer
                .as_mut()
                .get_mut(self.l3_offset..self.l3_end)
                .map(Ipv4Packet::new_unchecked),
            L3::Ipv6 { .. } => None,
        }
    }

    /// The IPv6 packet, writable, if the frame is IPv6.
    #[inline]
    pub fn ipv6_mut(&mut self) -> Option<Ipv6Packet<&mut [u8]>> {
        match self.l3 {
            L3::Ipv6 { .. } => self
                .buffer
                .as_mut()
                .get_mut(self.l3_offset..self.l3_end)
                .map(Ipv6Packet::new_unchecked),
            L3::Ipv4 { .. } => None,
        }
    }

    /// The TCP segment, writable, if the frame carries one.
    #[inline]
    pub fn tcp_mut(&mut self) -> Option<TcpSegment<&mut [u8]>> {
        match self.l4.kind {
            TransportKind::Tcp => self.l4_bytes_mut().map(TcpSegment::new_unchecked),
            _ => None,
        }
    }

    /// The UDP datagram, writable, if the frame carries one.
    #[inline]
    pub fn udp_mut(&mut self) -> Option<UdpDatagram<&mut [u8]>> {
        match self.l4.kind {
            TransportKind::Udp => self.l4_bytes_mut().map(UdpDatagram::new_unchecked),
            _ => None,
        }
    }

    /// The ICMP message, writable, if the frame carries one.
    #[inline]
    pub fn icmp_mut(&mut self) -> Option<IcmpPacket<&mut [u8]>> {
        match self.l4.kind {
            TransportKind::Icmp => self.l4_bytes_mut().map(IcmpPacket::new_unchecked),
            _ => None,
        }
    }

    /// The ICMPv6 message, writable, if the frame carries one, as an
    /// error.
    #[inline]
    pub fn icmpv6_error_mut(&mut self) -> Option<Icmpv6Error<&mut [u8]>> {
        match self.l4.kind {
            TransportKind::Icmpv6 => self.l4_bytes_mut().map(Icmpv6Error::new_unchecked),
            _ => None,
        }
    }

    #[inline]
    fn l4_bytes_mut(&mut self) -> Option<&mut [u8]> {
        self.buffer.as_mut().get_mut(self.l4_offset..self.l3_end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 198.18.0.2:12345 -> 198.18.100.10:8080, UDP "ping", TTL 64, then
    /// two bytes of Ethernet padding.
    static UDP_FRAME: [u8; 14 + 32 + 2] = [
        0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00, // Ethernet
        0x45, 0x00, 0x00, 0x20, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 198, 18, 0, 2, 198,
        18, 100, 10, // IPv4
        0x30, 0x39, 0x1f, 0x90, 0x00, 0x0c, 0x00, 0x00, b'p', b'i', b'n', b'g', // UDP
        0, 0, // padding
    ];

    fn with(f: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
        let mut v = UDP_FRAME.to_vec();
        f(&mut v);
        v
    }

    #[test]
    fn parses_addresses_ports_and_offsets() {
        let frame = Frame::parse(&UDP_FRAME[..], UDP_FRAME.len()).expect("valid frame");
        assert_eq!(
            frame.l3(),
            L3::Ipv4 {
                src: Ipv4Addr::new(198, 18, 0, 2),
                dst: Ipv4Addr::new(198, 18, 100, 10),
                ttl: 64,
            }
        );
        assert_eq!(
            frame.l4(),
            L4::Udp {
                src_port: 12345,
                dst_port: 8080
            }
        );
        assert_eq!(
            (frame.l3_offset(), frame.l4_offset(), frame.l3_end()),
            (14, 34, 46)
        );
        assert_eq!((frame.len(), frame.capacity()), (48, 48));
        assert_eq!(frame.ethernet().source(), [2, 0, 0, 0, 0, 2]);
        assert_eq!(frame.ipv4().map(|ip| ip.total_len()), Some(32));
        assert!(frame.tcp().is_none() && frame.icmp().is_none());
    }

    #[test]
    fn a_short_len_leaves_the_rest_as_room() {
        let mut buf = [0u8; 128];
        buf[..UDP_FRAME.len()].copy_from_slice(&UDP_FRAME);
        let frame = Frame::parse(&mut buf[..], UDP_FRAME.len()).expect("valid frame");
        assert_eq!((frame.len(), frame.capacity()), (48, 128));
        // A len beyond the buffer is cut to it.
        let frame = Frame::parse(&UDP_FRAME[..], 4096).expect("valid frame");
        assert_eq!(frame.len(), 48);
    }

    #[test]
    fn tcp_icmp_fragments_and_others() {
        // TCP with one 4-byte option (MSS), SYN, seq 1.
        let tcp = with(|v| {
            v.truncate(34);
            v[23] = ip_number::TCP;
            v[16..18].copy_from_slice(&44u16.to_be_bytes());
            v.extend_from_slice(&[
                0x9c, 0x40, 0x1f, 0x90, 0, 0, 0, 1, 0, 0, 0, 0, 0x60, 0x02, 0xfa, 0xf0, 0, 0, 0, 0,
                0x02, 0x04, 0x05, 0xb4,
            ]);
        });
        let frame = Frame::parse(&tcp[..], tcp.len()).expect("valid frame");
        assert_eq!(
            frame.l4(),
            L4::Tcp {
                src_port: 40000,
                dst_port: 8080,
                flags: super::super::tcp::flags::SYN
            }
        );
        assert_eq!(frame.tcp().map(|t| t.header_len()), Some(24));

        let icmp = with(|v| {
            v[23] = ip_number::ICMP;
            v[34] = 8;
        });
        let frame = Frame::parse(&icmp[..], icmp.len()).expect("valid frame");
        assert_eq!(
            frame.l4(),
            L4::Icmp {
                msg_type: 8,
                code: 0x39
            }
        );
        assert!(frame.icmp().is_some());

        // ICMP shorter than its header is not an error, only not ICMP.
        let short_icmp = with(|v| {
            v.truncate(14 + 20 + 4);
            v[17] = 24;
            v[23] = ip_number::ICMP;
        });
        let frame = Frame::parse(&short_icmp[..], short_icmp.len()).expect("valid frame");
        assert_eq!(frame.l4(), L4::Other { protocol: 1 });
        assert!(frame.icmp().is_none());

        // A later fragment's transport header is not read, even if broken.
        let fragment = with(|v| {
            v[21] = 8;
            v[14 + 20 + 5] = 99;
        });
        let frame = Frame::parse(&fragment[..], fragment.len()).expect("valid frame");
        assert_eq!(frame.l4(), L4::Fragment { protocol: 17 });

        let gre = with(|v| v[23] = 47);
        let frame = Frame::parse(&gre[..], gre.len()).expect("valid frame");
        assert_eq!(frame.l4(), L4::Other { protocol: 47 });
    }

    #[test]
    fn errors_name_the_layer() {
        let cases: [(&str, Vec<u8>, ParseError); 6] = [
            (
                "13 bytes",
                UDP_FRAME[..13].to_vec(),
                ParseError::TruncatedEthernet,
            ),
            ("VLAN", with(|v| v[12] = 0x81), ParseError::VlanTagged),
            ("ARP", with(|v| v[13] = 0x06), ParseError::NotIp),
            (
                "IPv4 cut",
                UDP_FRAME[..30].to_vec(),
                ParseError::Ipv4(WireError::Truncated),
            ),
            (
                "IHL 4",
                with(|v| v[14] = 0x44),
                ParseError::Ipv4(WireError::Malformed),
            ),
            (
                "UDP length",
                with(|v| v[14 + 20 + 5] = 9),
                ParseError::L4(WireError::Malformed),
            ),
        ];
        for (name, bytes, err) in cases {
            assert_eq!(
                Frame::parse(&bytes[..], bytes.len()).err(),
                Some(err),
                "case {name}"
            );
        }
    }

    /// 2001:2::2 -> 2001:2:0:64::10, UDP 40000 -> 53 "ping", after the
    /// extension headers `ext` (whose first next-header is `first`).
    fn ipv6_frame(first: u8, ext: &[u8]) -> Vec<u8> {
        let mut f = UDP_FRAME[..14].to_vec();
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        let payload_len = (ext.len() + 12) as u16;
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&payload_len.to_be_bytes());
        f.extend_from_slice(&[first, 64]);
        f.extend_from_slice(&[0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        f.extend_from_slice(&[0x20, 0x01, 0, 2, 0, 0, 0, 0x64, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        f.extend_from_slice(ext);
        // The checksum is not verified here; a zero one would be refused.
        f.extend_from_slice(&[0x9c, 0x40, 0, 53, 0, 12, 0x12, 0x34, b'p', b'i', b'n', b'g']);
        f
    }

    #[test]
    fn udp_over_ipv6_without_a_checksum_is_refused() {
        let mut f = ipv6_frame(ip_number::UDP, &[]);
        let checksum = f.len() - 6;
        f[checksum..checksum + 2].fill(0);
        assert_eq!(
            Frame::parse(&f[..], f.len()).err(),
            Some(ParseError::UdpZeroChecksumV6)
        );
        // Over IPv4 a zero checksum means none was computed: allowed.
        let v4 = with(|v| v[14 + 20 + 6..14 + 20 + 8].fill(0));
        assert!(Frame::parse(&v4[..], v4.len()).is_ok());
    }

    #[test]
    fn parses_ipv6_through_extension_headers() {
        let plain = ipv6_frame(ip_number::UDP, &[]);
        let frame = Frame::parse(&plain[..], plain.len()).expect("valid IPv6 frame");
        assert_eq!(
            frame.l3(),
            L3::Ipv6 {
                src: "2001:2::2".parse().expect("address"),
                dst: "2001:2:0:64::10".parse().expect("address"),
                hop_limit: 64,
            }
        );
        assert_eq!(
            frame.l4(),
            L4::Udp {
                src_port: 40000,
                dst_port: 53
            }
        );
        assert_eq!(
            (frame.l4_offset(), frame.l3_end(), frame.fragment()),
            (54, 66, None)
        );
        assert!(frame.ipv4().is_none());
        assert_eq!(frame.ipv6().map(|ip| ip.total_len()), Some(52));

        // Destination options (8 bytes) before UDP.
        let with_options = ipv6_frame(60, &[ip_number::UDP, 0, 1, 4, 0, 0, 0, 0]);
        let frame = Frame::parse(&with_options[..], with_options.len()).expect("valid");
        assert_eq!(frame.l4_offset(), 62);
        assert!(matches!(frame.l4(), L4::Udp { dst_port: 53, .. }));

        // A first fragment (more set) and a later one (offset 8).
        let first = ipv6_frame(44, &[ip_number::UDP, 0, 0, 1, 0, 0, 0, 7]);
        let frame = Frame::parse(&first[..], first.len()).expect("valid");
        assert_eq!(
            frame.fragment(),
            Some(Fragment {
                ident: 7,
                offset: 0,
                more: true
            })
        );
        assert!(matches!(frame.l4(), L4::Udp { .. }));
        let later = ipv6_frame(44, &[ip_number::UDP, 0, 0, 8, 0, 0, 0, 7]);
        let frame = Frame::parse(&later[..], later.len()).expect("valid");
        assert_eq!(frame.l4(), L4::Fragment { protocol: 17 });
        // An atomic fragment is the whole datagram.
        let atomic = ipv6_frame(44, &[ip_number::UDP, 0, 0, 0, 0, 0, 0, 7]);
        let frame = Frame::parse(&atomic[..], atomic.len()).expect("valid");
        assert_eq!(frame.fragment(), None);

        // ICMPv6: an echo request in place of the UDP header.
        let mut echo = ipv6_frame(ip_number::ICMPV6, &[]);
        echo[54] = 128;
        let frame = Frame::parse(&echo[..], echo.len()).expect("valid");
        assert_eq!(
            frame.l4(),
            L4::Icmpv6 {
                msg_type: 128,
                code: 0x40
            }
        );

        // Errors name IPv6.
        let mut bad_version = plain.clone();
        bad_version[14] = 0x40;
        assert_eq!(
            Frame::parse(&bad_version[..], bad_version.len()).err(),
            Some(ParseError::Ipv6(WireError::Malformed))
        );
        let ext_past_end = ipv6_frame(60, &[ip_number::UDP, 9, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            Frame::parse(&ext_past_end[..], ext_past_end.len()).err(),
            Some(ParseError::Ipv6(WireError::Truncated))
        );
        assert_eq!(
            Frame::parse(&plain[..50], 50).err(),
            Some(ParseError::Ipv6(WireError::Truncated))
        );
    }

    #[test]
    fn views_write_in_place() {
        let mut bytes = UDP_FRAME;
        let mut frame = Frame::parse(&mut bytes[..], UDP_FRAME.len()).expect("valid frame");
        frame.ethernet_mut().set_destination([0xaa; 6]);
        if let Some(mut ip) = frame.ipv4_mut() {
            ip.set_ttl(63);
        }
        if let Some(mut udp) = frame.udp_mut() {
            udp.set_dst_port(5353);
        }
        assert!(frame.tcp_mut().is_none());
        assert_eq!(&bytes[..6], &[0xaa; 6]);
        assert_eq!(bytes[22], 63);
        assert_eq!(&bytes[36..38], &5353u16.to_be_bytes());
    }

    /// The fixed-offset read of the common frames ([`common_network`])
    /// finds what the general read ([`network`]) finds in every frame it
    /// reads, however the bytes are changed, cut short or padded; and it
    /// reads the common frames themselves.
    #[test]
    fn the_common_shape_is_read_as_in_general() {
        use proptest::prelude::*;
        let mut tcp4 = UDP_FRAME.to_vec();
        tcp4[14 + 9] = ip_number::TCP;
        let cases = [
            UDP_FRAME.to_vec(),
            tcp4,
            ipv6_frame(ip_number::UDP, &[]),
            ipv6_frame(ip_number::TCP, &[]),
        ];
        for (i, case) in cases.iter().enumerate() {
            assert!(common_network(case).is_some(), "common frame {i} is read");
        }
        let mut options = UDP_FRAME.to_vec();
        options[14] = 0x46;
        let mut fragment = UDP_FRAME.to_vec();
        fragment[14 + 6] = 0x20;
        let hop_by_hop = ipv6_frame(0, &[ip_number::UDP, 0, 1, 4, 0, 0, 0, 0]);
        for (i, other) in [options, fragment, hop_by_hop].iter().enumerate() {
            assert!(
                common_network(other).is_none(),
                "frame {i} is left to the general read"
            );
        }
        proptest!(ProptestConfig::with_cases(4000), |(
            case in 0..cases.len(),
            changes in proptest::collection::vec((0usize..80, any::<u8>()), 0..4),
            cut in 0usize..30,
            padding in proptest::collection::vec(any::<u8>(), 0..4),
        )| {
            let mut frame = cases[case].clone();
            for (at, byte) in changes {
                if let Some(b) = frame.get_mut(at) {
                    *b = byte;
                }
            }
            frame.truncate(frame.len().saturating_sub(cut));
            frame.extend(padding);
            if let Some(common) = common_network(&frame) {
                let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
                prop_assert_eq!(Ok(common), network(ethertype, &frame[14..]), "{:02x?}", frame);
            }
        });
    }
}
