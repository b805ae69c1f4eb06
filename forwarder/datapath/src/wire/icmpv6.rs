//! ICMPv6 (RFC 4443) message types. The fixed header has ICMP's layout
//! (type, code, checksum, one word), so [`super::icmp::IcmpPacket`] views
//! it; what differs is the numbering and that the checksum covers the
//! IPv6 pseudo-header ([`crate::checksum::l4_checksum_v6`]).

/// Message types cipgw reads or writes (RFC 4443, RFC 4861).
pub mod kind {
    pub const DESTINATION_UNREACHABLE: u8 = 1;
    /// The second word is the next hop's MTU (RFC 8201).
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const PARAMETER_PROBLEM: u8 = 4;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
    pub const ROUTER_SOLICITATION: u8 = 133;
    pub const ROUTER_ADVERTISEMENT: u8 = 134;
    pub const NEIGHBOR_SOLICITATION: u8 = 135;
    pub const NEIGHBOR_ADVERTISEMENT: u8 = 136;
    pub const REDIRECT: u8 = 137;
}

/// Destination-unreachable codes (RFC 4443 3.1).
pub mod unreachable {
    pub const PORT: u8 = 4;
}

/// Whether a message of `msg_type` is an error that quotes the packet it
/// is about (RFC 4443 2.1: types 0 to 127).
pub const fn is_error(msg_type: u8) -> bool {
    msg_type < 128
}

/// Whether a message of `msg_type` belongs to Neighbor Discovery (RFC
/// 4861): router and neighbor solicitations and advertisements, and
/// redirects, which always stay with the kernel.
pub const fn is_neighbor_discovery(msg_type: u8) -> bool {
    matches!(msg_type, kind::ROUTER_SOLICITATION..=kind::REDIRECT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_neighbor_discovery_are_told_apart() {
        for t in [kind::DESTINATION_UNREACHABLE, kind::PACKET_TOO_BIG, 3, 4] {
            assert!(is_error(t) && !is_neighbor_discovery(t), "type {t}");
        }
        for t in [kind::ECHO_REQUEST, kind::ECHO_REPLY] {
            assert!(!is_error(t) && !is_neighbor_discovery(t), "type {t}");
        }
        for t in 133..=137 {
            assert!(is_neighbor_discovery(t) && !is_error(t), "type {t}");
        }
    }
}
