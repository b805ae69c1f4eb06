//! Source NAT steering: which addresses and ports are the gateway's SNAT
//! ports (`cipgw_snat`, `cipgw_snat6`), and whether source NAT is on
//! (`cipgw_snat_on`, for both families).
//! With it on, the program steers a backend's packet to the AF_XDP
//! sockets only when it is addressed to a SNAT address and port; the
//! node's own traffic on those addresses stays the kernel's.

use std::net::IpAddr;
use std::ops::RangeInclusive;

use super::ffi::map_update;
use super::{BpfError, XdpProgram, MAP_SNAT, MAP_SNAT6, MAP_SNAT_ON};

/// `cipgw_snat_on`'s bits: source NAT on for IPv4, for IPv6.
const SNAT_ON_IPV4: u32 = 1;
const SNAT_ON_IPV6: u32 = 2;

/// `struct snat_range` of the C program: host byte order.
#[repr(C)]
struct SnatRange {
    low: u16,
    high: u16,
}

impl XdpProgram {
    /// Steers backends' packets to `addresses` with a destination port in
    /// `ports` to the sockets, and no other backend packet of the
    /// addresses' families (a family without an address keeps steering
    /// its backends' replies as without source NAT). Set once, at start,
    /// before the program is attached.
    pub fn set_snat(
        &self,
        addresses: &[IpAddr],
        ports: RangeInclusive<u16>,
    ) -> Result<(), BpfError> {
        let range = SnatRange {
            low: *ports.start(),
            high: *ports.end(),
        };
        for address in addresses {
            let describe = || address.to_string();
            match address {
                IpAddr::V4(a) => map_update(self.snat_fd, MAP_SNAT, &a.octets(), &range, describe)?,
                IpAddr::V6(a) => {
                    map_update(self.snat6_fd, MAP_SNAT6, &a.octets(), &range, describe)?
                }
            }
        }
        // Source NAT is on for the families it has addresses of.
        let on = addresses.iter().fold(0u32, |on, a| {
            on | match a {
                IpAddr::V4(_) => SNAT_ON_IPV4,
                IpAddr::V6(_) => SNAT_ON_IPV6,
            }
        });
        map_update(self.snat_on_fd, MAP_SNAT_ON, &0u32, &on, || "0".into())
    }
}
