//! Ethernet II frames (IEEE 802.3), with room for one 802.1Q tag.

/// An Ethernet (MAC) address.
pub type MacAddr = [u8; 6];

use super::{read_u16, WireError};

mod field {
    use std::ops::Range;
    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
}

/// Length of an untagged Ethernet header.
pub const HEADER_LEN: usize = 14;

/// EtherType values cipgw looks at (IEEE registry).
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    pub const IPV6: u16 = 0x86dd;
    pub const VLAN: u16 = 0x8100;
    pub const QINQ: u16 = 0x88a8;
}

/// A read/write view of an Ethernet frame.
#[derive(Debug)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Checks that the fixed header is present. No accessor panics after.
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

    pub fn destination(&self) -> MacAddr {
        let mut mac = [0; 6];
        mac.copy_from_slice(&self.buffer.as_ref()[field::DESTINATION]);
        mac
    }

    pub fn source(&self) -> MacAddr {
        let mut mac = [0; 6];
        mac.copy_from_slice(&self.buffer.as_ref()[field::SOURCE]);
        mac
    }

    pub fn ethertype(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ETHERTYPE.start)
    }

    /// The bytes after the Ethernet header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_destination(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&mac);
    }

    pub fn set_source(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&mac);
    }
}

/// True for group (multicast and broadcast) addresses: the I/G bit.
pub const fn is_multicast(mac: MacAddr) -> bool {
    mac[0] & 1 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    static FRAME: [u8; 16] = [
        0x02, 0, 0, 0, 0, 0x01, // destination
        0x02, 0, 0, 0, 0, 0x02, // source
        0x08, 0x00, // IPv4
        0x45, 0x00,
    ];

    #[test]
    fn reads_fields() {
        let frame = EthernetFrame::new_checked(&FRAME[..]).expect("valid frame");
        assert_eq!(frame.destination(), [2, 0, 0, 0, 0, 1]);
        assert_eq!(frame.source(), [2, 0, 0, 0, 0, 2]);
        assert_eq!(frame.ethertype(), ethertype::IPV4);
        assert_eq!(frame.payload(), &[0x45, 0x00]);
    }

    #[test]
    fn rejects_truncated_and_writes_addresses() {
        assert_eq!(
            EthernetFrame::new_checked(&FRAME[..13]).err(),
            Some(WireError::Truncated)
        );
        let mut bytes = FRAME;
        let mut frame = EthernetFrame::new_checked(&mut bytes[..]).expect("valid frame");
        frame.set_destination([0xaa; 6]);
        frame.set_source([0xbb; 6]);
        assert_eq!(
            &bytes[..12],
            &[0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb]
        );
        assert!(is_multicast([0xff; 6]));
        assert!(!is_multicast([0x02, 0, 0, 0, 0, 1]));
    }
}
