//! Steering of DNS queries: `cipgw_dns` and `cipgw_dns6` hold the
//! (address, port 53, UDP) destinations the program redirects to the
//! workers, which answer them in place. TCP to the same address is left
//! to the kernel (the daemon's TCP listener).

use std::net::{IpAddr, Ipv4Addr};

use super::ffi::map_update;
use super::maps::{backend6_key, backend_key};
use super::{BpfError, XdpProgram};

/// The maps' names (the program's interface).
pub const MAP_DNS: &str = "cipgw_dns";
pub const MAP_DNS6: &str = "cipgw_dns6";

/// IANA protocol number of UDP.
const UDP: u8 = 17;

/// The 8-byte key of `cipgw_dns`, laid out as the C `struct
/// backend_key`: address and port in network order, protocol, zero pad.
pub(super) fn dns_key(addr: Ipv4Addr, port: u16) -> [u8; 8] {
    backend_key(addr, port, UDP)
}

impl XdpProgram {
    /// Redirects UDP datagrams to `addr` port `port` to the workers.
    pub fn steer_dns(&self, addr: IpAddr, port: u16) -> Result<(), BpfError> {
        let describe = || format!("{addr}:{port}/udp");
        match addr {
            IpAddr::V4(a) => map_update(self.dns_fd, MAP_DNS, &dns_key(a, port), &1u8, describe),
            IpAddr::V6(a) => map_update(
                self.dns6_fd,
                MAP_DNS6,
                &backend6_key(a, port, UDP),
                &1u8,
                describe,
            ),
        }
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
