//! ICMP messages (RFC 792): echo and destination unreachable.

use super::{read_u16, write_u16, WireError};

mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
}

/// The fixed part of every ICMP message.
pub const HEADER_LEN: usize = 8;

/// Message types cipgw reads or writes (RFC 792).
pub mod kind {
    pub const ECHO_REPLY: u8 = 0;
    pub const DESTINATION_UNREACHABLE: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
}

/// Destination-unreachable codes (RFC 792, RFC 1122 3.2.2.1).
pub mod unreachable {
    pub const PORT: u8 = 3;
}

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

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
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
}
