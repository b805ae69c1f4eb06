//! TCP headers (RFC 9293): the fields a NAT rewrites and conntrack reads.

use super::{read_u16, write_u16, WireError};

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const CHECKSUM: usize = 16;
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

    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
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
}
