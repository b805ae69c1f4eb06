//! TCP headers (RFC 9293): the fields a NAT rewrites and conntrack reads,
//! and the RSTs the gateway answers with ([`TcpRepr`]).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{
    ip_number, read_bytes, read_u16, read_u32, write_bytes, write_u16, write_u32, WireError,
};
use crate::checksum::{l4_checksum, l4_checksum_v6};

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ_NUMBER: usize = 4;
    pub const ACK_NUMBER: usize = 8;
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: usize = 14;
    pub const CHECKSUM: usize = 16;
    pub const URGENT: usize = 18;
}

/// Length of a header without options (data offset 5).
pub const MIN_HEADER_LEN: usize = 20;

/// Control bits (RFC 9293, section 3.1).
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// A view of a TCP segment.
#[derive(Debug)]
pub struct TcpSegment<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpSegment<T> {
    /// Checks the fixed header, a data offset >= 5 and the header with
    /// its options within the buffer. No accessor panics after this.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let bytes = buffer.as_ref();
        if bytes.len() < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let header_len = usize::from(bytes[field::DATA_OFFSET] >> 4) * 4;
        if header_len < MIN_HEADER_LEN {
            return Err(WireError::Malformed);
        }
        if header_len > bytes.len() {
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

    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    pub fn seq_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQ_NUMBER)
    }

    pub fn ack_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ACK_NUMBER)
    }

    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The checksum field's bytes, as they lie (for a
    /// [`crate::checksum::WireDelta`]).
    pub fn checksum_bytes(&self) -> [u8; 2] {
        read_bytes(self.buffer.as_ref(), field::CHECKSUM)
    }

    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpSegment<T> {
    pub fn set_src_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, port);
    }

    pub fn set_dst_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, port);
    }

    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, checksum);
    }

    /// Writes source and destination ports, big-endian as the header
    /// holds them.
    pub fn set_ports_bytes(&mut self, ports: [u8; 4]) {
        write_bytes(self.buffer.as_mut(), field::SRC_PORT, ports);
    }

    pub fn set_checksum_bytes(&mut self, checksum: [u8; 2]) {
        write_bytes(self.buffer.as_mut(), field::CHECKSUM, checksum);
    }
}

/// A TCP header the gateway originates: no options, no data, window 0
/// (what a RST carries, RFC 9293 3.10.7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRepr {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq_number: u32,
    pub ack_number: u32,
    pub flags: u8,
}

impl TcpRepr {
    /// Writes the header at the start of `buffer`, which must be exactly
    /// the segment, and its checksum over the IPv4 pseudo-header of `src`
    /// and `dst` and all of `buffer`; returns a view of the segment.
    /// `Truncated`, with nothing written, when `buffer` is shorter than
    /// the header.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        buffer: T,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) -> Result<TcpSegment<T>, WireError> {
        self.emit_with(buffer, |bytes| {
            l4_checksum(src.octets(), dst.octets(), ip_number::TCP, bytes)
        })
    }

    /// [`TcpRepr::emit`] with the checksum over the IPv6 pseudo-header.
    pub fn emit_v6<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        buffer: T,
        src: Ipv6Addr,
        dst: Ipv6Addr,
    ) -> Result<TcpSegment<T>, WireError> {
        self.emit_with(buffer, |bytes| {
            l4_checksum_v6(src.octets(), dst.octets(), ip_number::TCP, bytes)
        })
    }

    fn emit_with<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        mut buffer: T,
        checksum: impl Fn(&[u8]) -> u16,
    ) -> Result<TcpSegment<T>, WireError> {
        let bytes = buffer.as_mut();
        if bytes.len() < MIN_HEADER_LEN {
            return Err(WireError::Truncated);
        }
        write_u16(bytes, field::SRC_PORT, self.src_port);
        write_u16(bytes, field::DST_PORT, self.dst_port);
        write_u32(bytes, field::SEQ_NUMBER, self.seq_number);
        write_u32(bytes, field::ACK_NUMBER, self.ack_number);
        // Data offset 5 (no options), reserved bits clear.
        bytes[field::DATA_OFFSET] = ((MIN_HEADER_LEN / 4) as u8) << 4;
        bytes[field::FLAGS] = self.flags;
        write_u16(bytes, field::WINDOW, 0);
        write_u16(bytes, field::CHECKSUM, 0);
        write_u16(bytes, field::URGENT, 0);
        let c = checksum(bytes);
        write_u16(bytes, field::CHECKSUM, c);
        Ok(TcpSegment { buffer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A SYN from port 40000 to 8080 with one 4-byte option (MSS 1460).
    static SYN: [u8; 24] = [
        0x9c, 0x40, 0x1f, 0x90, 0, 0, 0, 1, 0, 0, 0, 0, 0x60, 0x02, 0xfa, 0xf0, 0xab, 0xcd, 0, 0,
        0x02, 0x04, 0x05, 0xb4,
    ];

    #[test]
    fn reads_fields() {
        let s = TcpSegment::new_checked(&SYN[..]).expect("valid segment");
        assert_eq!(s.src_port(), 40000);
        assert_eq!(s.dst_port(), 8080);
        assert_eq!(s.flags(), flags::SYN);
        assert_eq!(s.checksum(), 0xabcd);
        assert_eq!(s.header_len(), 24);
        assert_eq!((s.seq_number(), s.ack_number()), (1, 0));
    }

    #[test]
    fn rejects_bad_offsets() {
        assert_eq!(
            TcpSegment::new_checked(&SYN[..19]).err(),
            Some(WireError::Truncated)
        );
        let mut small = SYN;
        small[12] = 0x40;
        assert_eq!(
            TcpSegment::new_checked(&small[..]).err(),
            Some(WireError::Malformed)
        );
        let mut past_end = SYN;
        past_end[12] = 0x70;
        assert_eq!(
            TcpSegment::new_checked(&past_end[..]).err(),
            Some(WireError::Truncated)
        );
    }

    #[test]
    fn writes_ports() {
        let mut bytes = SYN;
        let mut s = TcpSegment::new_checked(&mut bytes[..]).expect("valid segment");
        s.set_dst_port(5678);
        s.set_src_port(1);
        s.set_checksum(0x1234);
        assert_eq!(
            (s.src_port(), s.dst_port(), s.checksum()),
            (1, 5678, 0x1234)
        );
    }

    #[test]
    fn emits_a_header_with_its_checksum() {
        let (src, dst) = (
            Ipv4Addr::new(198, 18, 100, 10),
            Ipv4Addr::new(198, 18, 0, 2),
        );
        let repr = TcpRepr {
            src_port: 8080,
            dst_port: 40000,
            seq_number: 0,
            ack_number: 1019,
            flags: flags::RST | flags::ACK,
        };
        let mut bytes = [0xee; 20];
        let s = repr.emit(&mut bytes[..], src, dst).expect("room");
        assert_eq!((s.src_port(), s.dst_port()), (8080, 40000));
        assert_eq!((s.seq_number(), s.ack_number()), (0, 1019));
        assert_eq!((s.flags(), s.header_len()), (flags::RST | flags::ACK, 20));
        assert_eq!(&bytes[14..16], &[0, 0], "window");
        assert_eq!(&bytes[18..20], &[0, 0], "urgent pointer");
        assert_eq!(
            l4_checksum(src.octets(), dst.octets(), 6, &bytes),
            0,
            "checksum verifies"
        );
        let mut short = [0xee; 19];
        assert_eq!(
            repr.emit(&mut short[..], src, dst).err(),
            Some(WireError::Truncated)
        );
        assert_eq!(short, [0xee; 19], "nothing written");
    }
}
