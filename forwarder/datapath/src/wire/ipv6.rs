//! IPv6 headers (RFC 8200): the fixed header the NAT rewrites through,
//! and the walk over extension headers to the upper-layer header, with a
//! bound on how many it follows.
//!
//! The walk knows the extension headers RFC 8200 section 4 and the IANA
//! registry define with the generic layout (next header, length in
//! 8-octet units after the first 8: Hop-by-Hop, Routing, Destination
//! Options, Mobility, HIP, Shim6), the Fragment header (fixed 8 bytes)
//! and AH (length in 4-octet units, RFC 4302). ESP hides what follows
//! and No Next Header ends the packet: both end the walk as an upper
//! layer cipgw does not serve. A packet whose chain is longer than
//! [`MAX_EXTENSION_HEADERS`], or runs past the payload, is malformed:
//! a data plane must not walk an attacker's chain for ever.

use std::net::Ipv6Addr;

use super::{read_u16, read_u32, write_u16, WireError};

mod field {
    use std::ops::Range;
    pub const VERSION: usize = 0;
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SOURCE: Range<usize> = 8..24;
    pub const DESTINATION: Range<usize> = 24..40;
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;

/// Extension headers the walk follows at most before it gives up.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// IANA next-header numbers of the extension headers (RFC 8200 4.1,
/// RFC 4302, RFC 6275, RFC 7401, RFC 5533) and of what ends a walk.
pub mod next_header {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const ESP: u8 = 50;
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const NO_NEXT_HEADER: u8 = 59;
    pub const DESTINATION_OPTIONS: u8 = 60;
    pub const MOBILITY: u8 = 135;
    pub const HIP: u8 = 139;
    pub const SHIM6: u8 = 140;
}

/// What a Fragment header says (RFC 8200 4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentHeader {
    /// The identification the datagram's fragments share.
    pub ident: u32,
    /// Where this fragment's data lies in the datagram, in bytes.
    pub offset: u16,
    /// More fragments follow.
    pub more: bool,
}

/// Where the extension headers of a packet end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpperLayer {
    /// The upper-layer protocol (TCP, UDP, ICMPv6, ...), or ESP / No Next
    /// Header where the walk stopped.
    pub protocol: u8,
    /// Where its header starts, from the start of the IPv6 header.
    pub offset: usize,
    /// The Fragment header, when the packet has one.
    pub fragment: Option<FragmentHeader>,
}

/// A view of an IPv6 packet.
#[derive(Debug)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Checks version 6, the fixed header within the buffer and a payload
    /// length within it (bytes after, such as Ethernet padding, are
    /// allowed). A jumbogram (payload length 0 and a Jumbo Payload
    /// option, RFC 2675), which no Ethernet frame carries, reads as an
    /// empty payload that its Hop-by-Hop header runs past: the walk
    /// ([`Ipv6Packet::upper_layer`]) finds it truncated.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let bytes = buffer.as_ref();
        if bytes.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if bytes[field::VERSION] >> 4 != 6 {
            return Err(WireError::Malformed);
        }
        let total = HEADER_LEN + usize::from(read_u16(bytes, field::PAYLOAD_LEN));
        if total > bytes.len() {
            return Err(WireError::Truncated);
        }
        Ok(Self { buffer })
    }

    /// A view over bytes a checked view already accepted.
    #[inline]
    pub(crate) fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    pub fn payload_len(&self) -> usize {
        usize::from(read_u16(self.buffer.as_ref(), field::PAYLOAD_LEN))
    }

    /// Header and payload, in bytes.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    pub fn source(&self) -> Ipv6Addr {
        self.addr_at(field::SOURCE.start)
    }

    pub fn destination(&self) -> Ipv6Addr {
        self.addr_at(field::DESTINATION.start)
    }

    /// Walks the extension headers to the upper layer. `Truncated` when
    /// a header runs past the payload, `Malformed` when the chain is
    /// longer than [`MAX_EXTENSION_HEADERS`] or a Hop-by-Hop header is
    /// not first (RFC 8200 4.3).
    #[inline]
    pub fn upper_layer(&self) -> Result<UpperLayer, WireError> {
        let first = self.next_header();
        // Most packets carry no extension header: their upper layer is
        // where the fixed header ends, without the walk.
        if !is_extension_header(first) {
            return Ok(UpperLayer {
                protocol: first,
                offset: HEADER_LEN,
                fragment: None,
            });
        }
        walk(
            &self.buffer.as_ref()[..self.total_len()],
            self.next_header(),
        )
    }

    fn addr_at(&self, at: usize) -> Ipv6Addr {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&self.buffer.as_ref()[at..at + 16]);
        Ipv6Addr::from(octets)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = hop_limit;
    }

    pub fn set_source(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&addr.octets());
    }

    pub fn set_destination(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&addr.octets());
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// The bytes after the fixed header, up to the payload length.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = HEADER_LEN + self.payload_len();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// Whether `protocol` names an extension header [`walk`] steps over.
#[inline(always)]
fn is_extension_header(protocol: u8) -> bool {
    matches!(
        protocol,
        next_header::HOP_BY_HOP
            | next_header::ROUTING
            | next_header::DESTINATION_OPTIONS
            | next_header::MOBILITY
            | next_header::HIP
            | next_header::SHIM6
            | next_header::AH
            | next_header::FRAGMENT
    )
}

/// Walks the extension headers of the IPv6 packet in `bytes` (fixed
/// header first; the packet, or as much of it as is at hand, as an ICMPv6
/// error quotes it) whose fixed header names `first`, as
/// [`Ipv6Packet::upper_layer`] describes; a header that runs past
/// `bytes` is `Truncated`.
pub(crate) fn walk(bytes: &[u8], first: u8) -> Result<UpperLayer, WireError> {
    let mut protocol = first;
    let mut offset = HEADER_LEN;
    let mut fragment = None;
    for walked in 0..=MAX_EXTENSION_HEADERS {
        let len = match protocol {
            next_header::HOP_BY_HOP if walked > 0 => return Err(WireError::Malformed),
            next_header::HOP_BY_HOP
            | next_header::ROUTING
            | next_header::DESTINATION_OPTIONS
            | next_header::MOBILITY
            | next_header::HIP
            | next_header::SHIM6 => {
                let ext_len = *bytes.get(offset + 1).ok_or(WireError::Truncated)?;
                8 + usize::from(ext_len) * 8
            }
            next_header::AH => {
                let ext_len = *bytes.get(offset + 1).ok_or(WireError::Truncated)?;
                (usize::from(ext_len) + 2) * 4
            }
            next_header::FRAGMENT => {
                let header = bytes.get(offset..offset + 8).ok_or(WireError::Truncated)?;
                let word = read_u16(header, 2);
                fragment = Some(FragmentHeader {
                    ident: read_u32(header, 4),
                    offset: word & 0xfff8,
                    more: word & 1 != 0,
                });
                8
            }
            _ => {
                return Ok(UpperLayer {
                    protocol,
                    offset,
                    fragment,
                })
            }
        };
        if offset + len > bytes.len() {
            return Err(WireError::Truncated);
        }
        protocol = bytes[offset];
        offset += len;
    }
    Err(WireError::Malformed)
}

/// An IPv6 header the gateway originates: no extension headers, traffic
/// class and flow label 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Repr {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// The payload's protocol ([`next_header`], [`super::ip_number`]).
    pub next_header: u8,
    /// Length of the payload that follows the header.
    pub payload_len: usize,
    pub hop_limit: u8,
}

impl Ipv6Repr {
    /// Length of the packet: header and payload.
    pub const fn total_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes the header at the start of `buffer` and returns a checked
    /// view of the packet, whose payload (left as it was) is where the
    /// upper-layer header goes. `Truncated` when `buffer` is shorter than
    /// the packet, `Malformed` when the payload exceeds 16 bits; nothing
    /// is written then.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        mut buffer: T,
    ) -> Result<Ipv6Packet<T>, WireError> {
        let payload_len = u16::try_from(self.payload_len).map_err(|_| WireError::Malformed)?;
        let bytes = buffer.as_mut();
        if bytes.len() < self.total_len() {
            return Err(WireError::Truncated);
        }
        let h = &mut bytes[..HEADER_LEN];
        h[..4].copy_from_slice(&[0x60, 0, 0, 0]);
        write_u16(h, field::PAYLOAD_LEN, payload_len);
        h[field::NEXT_HEADER] = self.next_header;
        h[field::HOP_LIMIT] = self.hop_limit;
        h[field::SOURCE].copy_from_slice(&self.src.octets());
        h[field::DESTINATION].copy_from_slice(&self.dst.octets());
        Ok(Ipv6Packet { buffer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ip_number;

    const SRC: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    const DST: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0x64, 0, 0, 0, 0, 0, 0, 0, 0x10];

    /// An IPv6 packet from `SRC` to `DST` whose payload is `extensions`
    /// followed by an 8-byte UDP header; `first` is the fixed header's
    /// next header.
    fn packet(first: u8, extensions: &[u8]) -> Vec<u8> {
        let payload_len = (extensions.len() + 8) as u16;
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&payload_len.to_be_bytes());
        p.extend_from_slice(&[first, 64]);
        p.extend_from_slice(&SRC);
        p.extend_from_slice(&DST);
        p.extend_from_slice(extensions);
        p.extend_from_slice(&[0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
        p
    }

    #[test]
    fn reads_the_fixed_header() {
        let bytes = packet(ip_number::UDP, &[]);
        let p = Ipv6Packet::new_checked(&bytes[..]).expect("valid");
        assert_eq!((p.payload_len(), p.total_len()), (8, 48));
        assert_eq!((p.next_header(), p.hop_limit()), (17, 64));
        assert_eq!(p.source(), Ipv6Addr::from(SRC));
        assert_eq!(p.destination(), Ipv6Addr::from(DST));
        assert_eq!(
            p.upper_layer(),
            Ok(UpperLayer {
                protocol: 17,
                offset: 40,
                fragment: None
            })
        );
    }

    /// `upper_layer`'s shortcut and the walk agree on every next header:
    /// the shortcut takes exactly the protocols the walk would stop at
    /// without stepping.
    #[test]
    fn the_shortcut_and_the_walk_agree_on_every_next_header() {
        for first in 0..=u8::MAX {
            // Room for any one extension header, all zeros.
            let bytes = packet(first, &[0; 16]);
            let ip = Ipv6Packet::new_checked(&bytes[..]).expect("a valid fixed header");
            assert_eq!(
                ip.upper_layer(),
                walk(&bytes[..ip.total_len()], first),
                "next header {first}"
            );
        }
    }

    #[test]
    fn rejects_bad_versions_and_lengths() {
        let bytes = packet(ip_number::UDP, &[]);
        assert_eq!(
            Ipv6Packet::new_checked(&bytes[..39]).err(),
            Some(WireError::Truncated)
        );
        let mut v4 = bytes.clone();
        v4[0] = 0x45;
        assert_eq!(
            Ipv6Packet::new_checked(&v4[..]).err(),
            Some(WireError::Malformed)
        );
        let mut long = bytes.clone();
        long[5] = 9;
        assert_eq!(
            Ipv6Packet::new_checked(&long[..]).err(),
            Some(WireError::Truncated)
        );
        // Padding after the payload is allowed.
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(
            Ipv6Packet::new_checked(&padded[..]).map(|p| p.total_len()),
            Ok(48)
        );
    }

    #[test]
    fn walks_extension_headers_to_the_upper_layer() {
        // Hop-by-Hop (8 bytes), Destination Options (16 bytes), Routing
        // (8), AH (12: length 1 in 4-octet units), then UDP.
        let mut ext = vec![next_header::DESTINATION_OPTIONS, 0, 1, 4, 0, 0, 0, 0];
        ext.extend_from_slice(&[next_header::ROUTING, 1]);
        ext.extend_from_slice(&[1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        ext.extend_from_slice(&[next_header::AH, 0, 0, 0, 0, 0, 0, 0]);
        ext.extend_from_slice(&[ip_number::UDP, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1]);
        let bytes = packet(next_header::HOP_BY_HOP, &ext);
        let p = Ipv6Packet::new_checked(&bytes[..]).expect("valid");
        assert_eq!(
            p.upper_layer(),
            Ok(UpperLayer {
                protocol: ip_number::UDP,
                offset: 40 + 8 + 16 + 8 + 12,
                fragment: None
            })
        );
    }

    #[test]
    fn reads_the_fragment_header() {
        // Offset 1480 bytes (185 units), more fragments, ident 0xdeadbeef.
        let word = (185u16 << 3) | 1;
        let mut ext = vec![ip_number::UDP, 0];
        ext.extend_from_slice(&word.to_be_bytes());
        ext.extend_from_slice(&0xdead_beef_u32.to_be_bytes());
        let bytes = packet(next_header::FRAGMENT, &ext);
        let p = Ipv6Packet::new_checked(&bytes[..]).expect("valid");
        assert_eq!(
            p.upper_layer(),
            Ok(UpperLayer {
                protocol: ip_number::UDP,
                offset: 48,
                fragment: Some(FragmentHeader {
                    ident: 0xdead_beef,
                    offset: 1480,
                    more: true
                })
            })
        );
    }

    #[test]
    fn too_many_misplaced_or_truncated_extension_headers_are_refused() {
        let options = |next: u8| [next, 0, 1, 4, 0, 0, 0, 0];
        let chain = |n: usize| -> Vec<u8> {
            let mut ext = Vec::new();
            for i in 0..n {
                let next = if i + 1 == n {
                    ip_number::UDP
                } else {
                    next_header::DESTINATION_OPTIONS
                };
                ext.extend_from_slice(&options(next));
            }
            ext
        };
        let at_bound = packet(
            next_header::DESTINATION_OPTIONS,
            &chain(MAX_EXTENSION_HEADERS),
        );
        assert!(Ipv6Packet::new_checked(&at_bound[..])
            .expect("valid")
            .upper_layer()
            .is_ok());
        let beyond = packet(
            next_header::DESTINATION_OPTIONS,
            &chain(MAX_EXTENSION_HEADERS + 1),
        );
        assert_eq!(
            Ipv6Packet::new_checked(&beyond[..])
                .expect("valid")
                .upper_layer(),
            Err(WireError::Malformed)
        );
        // A Hop-by-Hop header after another one.
        let late_hop = packet(next_header::DESTINATION_OPTIONS, &options(0));
        assert_eq!(
            Ipv6Packet::new_checked(&late_hop[..])
                .expect("valid")
                .upper_layer(),
            Err(WireError::Malformed)
        );
        // An extension header whose length runs past the payload.
        let cut = packet(next_header::DESTINATION_OPTIONS, &[17, 9, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            Ipv6Packet::new_checked(&cut[..])
                .expect("valid")
                .upper_layer(),
            Err(WireError::Truncated)
        );
        // ESP and No Next Header end the walk.
        let esp = packet(next_header::ESP, &[]);
        assert_eq!(
            Ipv6Packet::new_checked(&esp[..])
                .expect("valid")
                .upper_layer()
                .map(|u| u.protocol),
            Ok(next_header::ESP)
        );
    }

    #[test]
    fn emits_a_fixed_header_that_reads_back() {
        let repr = Ipv6Repr {
            src: Ipv6Addr::from(SRC),
            dst: Ipv6Addr::from(DST),
            next_header: ip_number::TCP,
            payload_len: 20,
            hop_limit: 64,
        };
        let mut bytes = [0xee; 60];
        let mut p = repr.emit(&mut bytes[..]).expect("room");
        assert_eq!(p.payload_mut().len(), 20);
        let p = Ipv6Packet::new_checked(&bytes[..]).expect("valid");
        assert_eq!((p.source(), p.destination()), (repr.src, repr.dst));
        assert_eq!(
            (p.next_header(), p.hop_limit(), p.payload_len()),
            (6, 64, 20)
        );
        assert_eq!(&bytes[..4], &[0x60, 0, 0, 0], "class and flow label 0");
        let mut short = [0xee; 59];
        assert_eq!(repr.emit(&mut short[..]).err(), Some(WireError::Truncated));
        assert_eq!(short, [0xee; 59], "nothing written");
    }
}
