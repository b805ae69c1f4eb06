//! Steering of DNS queries: `cipgw_dns` holds the (address, port 53,
//! UDP) destinations the program redirects to the workers, which answer
//! them in place. TCP to the same address is left to the kernel (the
//! daemon's TCP listener).

use std::net::Ipv4Addr;

use super::ffi::map_update;
use super::{BpfError, XdpProgram};

/// The map's name (the program's interface).
pub const MAP_DNS: &str = "cipgw_dns";

/// IANA protocol number of UDP.
const UDP: u8 = 17;

/// The 8-byte key, laid out as the C `struct backend_key`: address and
/// port in network order, protocol, zero pad.
pub(super) fn dns_key(addr: Ipv4Addr, port: u16) -> [u8; 8] {
    let a = addr.octets();
    let p = port.to_be_bytes();
    [a[0], a[1], a[2], a[3], p[0], p[1], UDP, 0]
}

impl XdpProgram {
    /// Redirects UDP datagrams to `addr` port `port` to the workers.
    pub fn steer_dns(&self, addr: Ipv4Addr, port: u16) -> Result<(), BpfError> {
        map_update(self.dns_fd, MAP_DNS, &dns_key(addr, port), &1u8, || {
            format!("{addr}:{port}/udp")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_matches_the_c_layout() {
        assert_eq!(
            dns_key(Ipv4Addr::new(198, 18, 0, 53), 53),
            [198, 18, 0, 53, 0, 53, 17, 0]
        );
    }
}
