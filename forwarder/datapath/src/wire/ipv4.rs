//! IPv4 headers (RFC 791): the view the NAT rewrites through, and the
//! header the gateway writes for its own answers ([`Ipv4Repr`]).

use std::net::Ipv4Addr;

use super::{read_bytes, read_u16, write_bytes, write_u16, WireError};
use crate::checksum::checksum;

mod field {
    use std::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const TOTAL_LEN: Range<usize> = 2..4;
    pub const IDENT: Range<usize> = 4..6;
    pub const FLAGS_FRAG: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SOURCE: Range<usize> = 12..16;
    pub const DESTINATION: Range<usize> = 16..20;
}

/// Length of a header without options (IHL 5).
pub const MIN_HEADER_LEN: usize = 20;

/// "Don't fragment" flag (RFC 791, section 3.1).
const FLAG_DONT_FRAGMENT: u16 = 0x4000;
/// "More fragments" flag (RFC 791, section 3.1).
const FLAG_MORE_FRAGMENTS: u16 = 0x2000;
const FRAGMENT_OFFSET_MASK: u16 = 0x1fff;

/// A view of an IPv4 packet.
#[derive(Debug)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Checks version 4, IHL >= 5, the header within the buffer, and a
    /// total length covering the header and within the buffer (bytes
    /// after the total length, such as Ethernet padding, are allowed).
    /// No accessor panics after this.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let bytes = buffer.as_ref();
        if bytes.len() < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let version = bytes[field::VER_IHL] >> 4;
        let header_len = usize::from(bytes[field::VER_IHL] & 0x0f) * 4;
        let total_len = usize::from(read_u16(bytes, field::TOTAL_LEN.start));
        if version != 4 || header_len < MIN_HEADER_LEN || total_len < header_len {
            return Err(WireError::Malformed);
        }
        if header_len > bytes.len() || total_len > bytes.len() {
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

    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    pub fn total_len(&self) -> usize {
        usize::from(read_u16(self.buffer.as_ref(), field::TOTAL_LEN.start))
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// The header checksum field's bytes, as they lie (for a
    /// [`crate::checksum::WireDelta`]).
    pub fn checksum_bytes(&self) -> [u8; 2] {
        read_bytes(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    pub fn source(&self) -> Ipv4Addr {
        self.addr_at(field::SOURCE.start)
    }

    pub fn destination(&self) -> Ipv4Addr {
        self.addr_at(field::DESTINATION.start)
    }

    /// True for any fragment: the first (more-fragments set) or a later
    /// one (non-zero offset).
    pub fn is_fragment(&self) -> bool {
        let flags = read_u16(self.buffer.as_ref(), field::FLAGS_FRAG.start);
        flags & (FLAG_MORE_FRAGMENTS | FRAGMENT_OFFSET_MASK) != 0
    }

    /// The identification field: which datagram a fragment belongs to.
    pub fn ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENT.start)
    }

    /// The fragment offset, in bytes (a multiple of 8).
    pub fn fragment_offset(&self) -> u16 {
        (read_u16(self.buffer.as_ref(), field::FLAGS_FRAG.start) & FRAGMENT_OFFSET_MASK) << 3
    }

    /// Whether more fragments follow this one.
    pub fn more_fragments(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLAGS_FRAG.start) & FLAG_MORE_FRAGMENTS != 0
    }

    /// The header bytes (options included).
    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }

    /// The payload up to the total length (padding excluded).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..self.total_len()]
    }

    fn addr_at(&self, at: usize) -> Ipv4Addr {
        let b = self.buffer.as_ref();
        Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM.start, checksum);
    }

    pub fn set_checksum_bytes(&mut self, checksum: [u8; 2]) {
        write_bytes(self.buffer.as_mut(), field::CHECKSUM.start, checksum);
    }

    pub fn set_source(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&addr.octets());
    }

    pub fn set_destination(&mut self, addr: Ipv4Addr) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&addr.octets());
    }

    /// The payload up to the total length, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = (self.header_len(), self.total_len());
        &mut self.buffer.as_mut()[start..end]
    }
}

/// An IPv4 header the gateway originates: no options, not fragmented
/// (don't-fragment set), identification 0, DSCP/ECN 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// IANA protocol number of the payload ([`super::ip_number`]).
    pub protocol: u8,
    /// Length of the payload that follows the header.
    pub payload_len: usize,
    pub ttl: u8,
}

impl Ipv4Repr {
    /// Length of the packet: header and payload.
    pub const fn total_len(&self) -> usize {
        MIN_HEADER_LEN + self.payload_len
    }

    /// Writes the header, with its checksum, at the start of `buffer` and
    /// returns a checked view of the packet, whose payload (bytes
    /// `MIN_HEADER_LEN..total_len` of `buffer`, left as they were) is
    /// where the transport header goes. `Truncated` when `buffer` is
    /// shorter than the packet, `Malformed` when the packet would exceed
    /// a 16-bit total length; nothing is written then.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        mut buffer: T,
    ) -> Result<Ipv4Packet<T>, WireError> {
        let total_len = u16::try_from(self.total_len()).map_err(|_| WireError::Malformed)?;
        let bytes = buffer.as_mut();
        if bytes.len() < self.total_len() {
            return Err(WireError::Truncated);
        }
        let h = &mut bytes[..MIN_HEADER_LEN];
        h[field::VER_IHL] = 0x40 | (MIN_HEADER_LEN / 4) as u8;
        h[field::DSCP_ECN] = 0;
        write_u16(h, field::TOTAL_LEN.start, total_len);
        write_u16(h, field::IDENT.start, 0);
        write_u16(h, field::FLAGS_FRAG.start, FLAG_DONT_FRAGMENT);
        h[field::TTL] = self.ttl;
        h[field::PROTOCOL] = self.protocol;
        write_u16(h, field::CHECKSUM.start, 0);
        h[field::SOURCE].copy_from_slice(&self.src.octets());
        h[field::DESTINATION].copy_from_slice(&self.dst.octets());
        let c = checksum(h);
        write_u16(h, field::CHECKSUM.start, c);
        Ok(Ipv4Packet { buffer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 198.18.0.2 -> 198.18.100.10, UDP, TTL 64, total length 28, valid
    // header checksum.
    static PACKET: [u8; 28] = [
        0x45, 0x00, 0x00, 0x1c, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 198, 18, 0, 2, 198,
        18, 100, 10, // header
        0x30, 0x39, 0x1f, 0x90, 0x00, 0x08, 0x00, 0x00, // UDP
    ];

    #[test]
    fn reads_fields() {
        let p = Ipv4Packet::new_checked(&PACKET[..]).expect("valid packet");
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 28);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), 17);
        assert_eq!(p.source(), Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(p.destination(), Ipv4Addr::new(198, 18, 100, 10));
        assert!(!p.is_fragment());
        assert_eq!(p.payload().len(), 8);
    }

    #[test]
    fn rejects_bad_lengths_and_versions() {
        assert_eq!(
            Ipv4Packet::new_checked(&PACKET[..19]).err(),
            Some(WireError::Truncated)
        );
        let mut short_ihl = PACKET;
        short_ihl[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&short_ihl[..]).err(),
            Some(WireError::Malformed)
        );
        let mut v6 = PACKET;
        v6[0] = 0x65;
        assert_eq!(
            Ipv4Packet::new_checked(&v6[..]).err(),
            Some(WireError::Malformed)
        );
        let mut long = PACKET;
        long[3] = 29;
        assert_eq!(
            Ipv4Packet::new_checked(&long[..]).err(),
            Some(WireError::Truncated)
        );
        let mut below_header = PACKET;
        below_header[3] = 19;
        assert_eq!(
            Ipv4Packet::new_checked(&below_header[..]).err(),
            Some(WireError::Malformed)
        );
        let mut options_past_end = PACKET;
        options_past_end[0] = 0x4f; // 60-byte header in a 28-byte packet
        options_past_end[3] = 60;
        assert!(Ipv4Packet::new_checked(&options_past_end[..]).is_err());
    }

    #[test]
    fn fragments_are_recognised() {
        let mut first = PACKET;
        first[6] = 0x20; // MF
        assert!(Ipv4Packet::new_checked(&first[..])
            .expect("valid")
            .is_fragment());
        let mut later = PACKET;
        later[7] = 0x10; // offset 16
        assert!(Ipv4Packet::new_checked(&later[..])
            .expect("valid")
            .is_fragment());
        let first = Ipv4Packet::new_checked(&first[..]).expect("valid");
        assert_eq!(
            (
                first.ident(),
                first.fragment_offset(),
                first.more_fragments()
            ),
            (0x1234, 0, true)
        );
        let later = Ipv4Packet::new_checked(&later[..]).expect("valid");
        assert_eq!(
            (later.fragment_offset(), later.more_fragments()),
            (128, false)
        );
    }

    #[test]
    fn writes_fields() {
        let mut bytes = PACKET;
        let mut p = Ipv4Packet::new_checked(&mut bytes[..]).expect("valid packet");
        p.set_destination(Ipv4Addr::new(198, 18, 2, 11));
        p.set_ttl(63);
        p.set_checksum(0xbeef);
        assert_eq!(p.destination(), Ipv4Addr::new(198, 18, 2, 11));
        assert_eq!(p.ttl(), 63);
        assert_eq!(p.checksum(), 0xbeef);
    }

    #[test]
    fn emits_a_header_and_leaves_the_payload() {
        let repr = Ipv4Repr {
            src: Ipv4Addr::new(198, 18, 0, 2),
            dst: Ipv4Addr::new(198, 18, 100, 10),
            protocol: 17,
            payload_len: 8,
            ttl: 64,
        };
        let mut bytes = [0xee; 32];
        let p = repr.emit(&mut bytes[..]).expect("room");
        assert_eq!((p.header_len(), p.total_len()), (20, 28));
        assert_eq!((p.source(), p.destination()), (repr.src, repr.dst));
        assert_eq!((p.ttl(), p.protocol()), (64, 17));
        assert!(!p.is_fragment());
        assert_eq!(p.payload(), &[0xee; 8]);
        assert_eq!(checksum(&bytes[..20]), 0, "checksum verifies");
        assert_eq!(
            &bytes[..12],
            &[0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, bytes[10], bytes[11]]
        );
        assert!(Ipv4Packet::new_checked(&bytes[..28]).is_ok());

        let mut short = [0xee; 27];
        assert_eq!(repr.emit(&mut short[..]).err(), Some(WireError::Truncated));
        assert_eq!(short, [0xee; 27], "nothing written");
        let huge = Ipv4Repr {
            payload_len: 65_516,
            ..repr
        };
        assert_eq!(
            huge.emit(&mut [0u8; 20][..]).err(),
            Some(WireError::Malformed)
        );
    }
}
