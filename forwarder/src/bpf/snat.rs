//! Source NAT steering: which addresses and ports are the gateway's SNAT
//! ports (`cipgw_snat`), and whether source NAT is on (`cipgw_snat_on`).
//! With it on, the program steers a backend's packet to the AF_XDP
//! sockets only when it is addressed to a SNAT address and port; the
//! node's own traffic on those addresses stays the kernel's.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use super::ffi::map_update;
use super::{BpfError, XdpProgram, MAP_SNAT, MAP_SNAT_ON};

/// `struct snat_range` of the C program: host byte order.
#[repr(C)]
struct SnatRange {
    low: u16,
    high: u16,
}

impl XdpProgram {
    /// Steers backends' packets to `addresses` with a destination port in
    /// `ports` to the sockets, and no other backend packet. Set once, at
    /// start, before the program is attached.
    pub fn set_snat(
        &self,
        addresses: &[Ipv4Addr],
        ports: RangeInclusive<u16>,
    ) -> Result<(), BpfError> {
        let snat_fd = self.snat_fd;
        let range = SnatRange {
            low: *ports.start(),
            high: *ports.end(),
        };
        for address in addresses {
            let key = u32::from_ne_bytes(address.octets());
            map_update(snat_fd, MAP_SNAT, &key, &range, || address.to_string())?;
        }
        let on_fd = self.snat_on_fd;
        map_update(on_fd, MAP_SNAT_ON, &0u32, &1u32, || "0".into())
    }
}
