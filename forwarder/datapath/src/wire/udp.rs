//! UDP headers (RFC 768).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{ip_number, read_bytes, read_u16, write_bytes, write_u16, WireError};
use crate::checksum::{l4_checksum, l4_checksum_v6};

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

pub const HEADER_LEN: usize = 8;

/// A view of a UDP datagram.
#[derive(Debug)]
pub struct UdpDatagram<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpDatagram<T> {
    /// Checks the header and that the length field covers the header and
    /// equals the bytes given (the IP payload). No accessor panics after.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let bytes = buffer.as_ref();
        if bytes.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let length = usize::from(read_u16(bytes, field::LENGTH));
        if length < HEADER_LEN || length != bytes.len() {
            return Err(WireError::Malformed);
        }
        Ok(Self { buffer })
    }

    /// The header of a datagram's first fragment: the length field counts
    /// the whole datagram, which only the fragments together carry, so it
    /// must cover the header but may exceed the bytes present.
    pub fn new_checked_first_fragment(buffer: T) -> Result<Self, WireError> {
        let bytes = buffer.as_ref();
        if bytes.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        if usize::from(read_u16(bytes, field::LENGTH)) < HEADER_LEN {
            return Err(WireError::Malformed);
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

    pub fn length(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// The checksum; zero means the sender computed none (RFC 768).
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The checksum field's bytes, as they lie (for a
    /// [`crate::checksum::WireDelta`]).
    pub fn checksum_bytes(&self) -> [u8; 2] {
        read_bytes(self.buffer.as_ref(), field::CHECKSUM)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpDatagram<T> {
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

/// The header of a datagram the gateway originates (a DNS answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRepr {
    pub src_port: u16,
    pub dst_port: u16,
}

impl UdpRepr {
    /// Writes the header at the start of `buffer`, which holds the whole
    /// datagram (its payload already in place behind the header), with
    /// the length and a full checksum over the pseudo-header from `src`
    /// to `dst` (RFC 768: a computed zero is sent as 0xffff).
    /// `Truncated` when `buffer` cannot hold a header, `Malformed` when
    /// it exceeds a 16-bit length; nothing is written then.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        buffer: T,
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) -> Result<UdpDatagram<T>, WireError> {
        self.emit_summed(buffer, |bytes| {
            l4_checksum(src.octets(), dst.octets(), ip_number::UDP, bytes)
        })
    }

    /// As [`UdpRepr::emit`], over the IPv6 pseudo-header (RFC 8200 8.1:
    /// the checksum is mandatory, a computed zero is sent as 0xffff).
    pub fn emit_v6<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        buffer: T,
        src: Ipv6Addr,
        dst: Ipv6Addr,
    ) -> Result<UdpDatagram<T>, WireError> {
        self.emit_summed(buffer, |bytes| {
            l4_checksum_v6(src.octets(), dst.octets(), ip_number::UDP, bytes)
        })
    }

    /// Writes the header with a zero checksum, then the one `checksum`
    /// computes over the datagram (its family's pseudo-header), a
    /// computed zero as 0xffff.
    fn emit_summed<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        mut buffer: T,
        checksum: impl FnOnce(&[u8]) -> u16,
    ) -> Result<UdpDatagram<T>, WireError> {
        let bytes = buffer.as_mut();
        if bytes.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let length = u16::try_from(bytes.len()).map_err(|_| WireError::Malformed)?;
        write_u16(bytes, field::SRC_PORT, self.src_port);
        write_u16(bytes, field::DST_PORT, self.dst_port);
        write_u16(bytes, field::LENGTH, length);
        write_u16(bytes, field::CHECKSUM, 0);
        let c = match checksum(bytes) {
            0 => 0xffff,
            c => c,
        };
        write_u16(bytes, field::CHECKSUM, c);
        Ok(UdpDatagram { buffer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static DATAGRAM: [u8; 12] = [
        0x30, 0x39, 0x1f, 0x90, 0x00, 0x0c, 0x12, 0x34, b'p', b'i', b'n', b'g',
    ];

    #[test]
    fn reads_fields() {
        let d = UdpDatagram::new_checked(&DATAGRAM[..]).expect("valid datagram");
        assert_eq!((d.src_port(), d.dst_port()), (12345, 8080));
        assert_eq!(d.length(), 12);
        assert_eq!(d.checksum(), 0x1234);
    }

    #[test]
    fn emit_writes_length_and_a_checksum_that_verifies() {
        let (src, dst) = (Ipv4Addr::new(198, 18, 0, 53), Ipv4Addr::new(198, 18, 0, 2));
        let mut datagram = [0u8; 12];
        datagram[8..].copy_from_slice(b"pong");
        UdpRepr {
            src_port: 53,
            dst_port: 40000,
        }
        .emit(&mut datagram[..], src, dst)
        .expect("room for the header");
        let d = UdpDatagram::new_checked(&datagram[..]).expect("valid datagram");
        assert_eq!((d.src_port(), d.dst_port(), d.length()), (53, 40000, 12));
        assert_eq!(
            l4_checksum(src.octets(), dst.octets(), ip_number::UDP, &datagram),
            0,
            "checksum verifies"
        );
    }

    #[test]
    fn emit_v6_checksums_over_the_ipv6_pseudo_header_and_never_sends_zero() {
        let src: Ipv6Addr = "2001:2:0:ff::53".parse().expect("static");
        let dst: Ipv6Addr = "2001:2::2".parse().expect("static");
        let repr = UdpRepr {
            src_port: 53,
            dst_port: 40000,
        };
        let mut datagram = [0u8; 10];
        repr.emit_v6(&mut datagram[..], src, dst)
            .expect("room for the header");
        let d = UdpDatagram::new_checked(&datagram[..]).expect("valid datagram");
        assert_eq!((d.src_port(), d.dst_port(), d.length()), (53, 40000, 10));
        let first = d.checksum();
        assert_eq!(
            l4_checksum_v6(src.octets(), dst.octets(), ip_number::UDP, &datagram),
            0,
            "checksum verifies"
        );
        // A payload word equal to the checksum of a zero one makes the
        // sum all ones: the computed checksum is 0, sent as 0xffff.
        datagram[8..].copy_from_slice(&first.to_be_bytes());
        repr.emit_v6(&mut datagram[..], src, dst).expect("room");
        assert_eq!(&datagram[6..8], &[0xff, 0xff]);
        assert_eq!(
            l4_checksum_v6(src.octets(), dst.octets(), ip_number::UDP, &datagram),
            0,
            "0xffff verifies as zero does"
        );
        assert_eq!(
            repr.emit_v6(&mut [0u8; 7][..], src, dst).err(),
            Some(WireError::Truncated)
        );
    }

    #[test]
    fn rejects_length_mismatch() {
        assert_eq!(
            UdpDatagram::new_checked(&DATAGRAM[..7]).err(),
            Some(WireError::Truncated)
        );
        assert_eq!(
            UdpDatagram::new_checked(&DATAGRAM[..11]).err(),
            Some(WireError::Malformed)
        );
        let mut short = DATAGRAM;
        short[5] = 7;
        assert_eq!(
            UdpDatagram::new_checked(&short[..]).err(),
            Some(WireError::Malformed)
        );
    }
}
