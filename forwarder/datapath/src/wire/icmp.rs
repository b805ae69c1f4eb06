//! ICMP messages (RFC 792): echo and destination unreachable.

use super::{read_u16, write_u16, WireError};
use crate::checksum::checksum;

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

/// An ICMP header the gateway originates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpRepr {
    /// The answer to an echo request, with the request's identifier and
    /// sequence number.
    EchoReply { ident: u16, seq_no: u16 },
    /// Destination unreachable with `code` ([`unreachable`]).
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
