//! Small helpers shared by the tools: CPU pinning, MAC and CIDR parsing.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use anyhow::{bail, Context};

/// Pins the calling thread to one core.
pub fn pin_to_cpu(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit inside `set` (cpu < CPU_SETSIZE is
    // checked below by the kernel's EINVAL at worst).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; 0 = this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context(format!("pinning to CPU {cpu}"));
    }
    Ok(())
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> anyhow::Result<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        bail!("MAC {s:?}: want six hex bytes separated by ':'");
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).with_context(|| format!("MAC {s:?}"))?;
    }
    Ok(mac)
}

/// A prefix of either family, e.g. `198.18.64.0/18` or
/// `2001:2:0:40::/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn is_ipv6(&self) -> bool {
        self.addr.is_ipv6()
    }

    /// Bits of the address family (32 or 128).
    fn bits(&self) -> u32 {
        if self.is_ipv6() {
            128
        } else {
            32
        }
    }

    /// Number of addresses in the prefix (all of them: the generator and
    /// the rule writer use network and broadcast addresses too), at most
    /// `u64::MAX` (an IPv6 /64 or shorter).
    pub fn hosts(&self) -> u64 {
        let host_bits = self.bits() - u32::from(self.len);
        if host_bits >= 64 {
            u64::MAX
        } else {
            1u64 << host_bits
        }
    }

    /// Address number `i` of the prefix.
    pub fn nth(&self, i: u64) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => Ipv4Addr::from(u32::from(a).wrapping_add(i as u32)).into(),
            IpAddr::V6(a) => Ipv6Addr::from(u128::from(a).wrapping_add(u128::from(i))).into(),
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (a, l) = s.split_once('/').ok_or(format!("{s:?}: want ADDR/LEN"))?;
        let addr: IpAddr = a.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let len: u8 = l.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let cidr = Cidr { addr, len };
        let bits = cidr.bits();
        if len == 0 || u32::from(len) > bits {
            return Err(format!("{s:?}: prefix length must be 1 to {bits}"));
        }
        let value = match addr {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        };
        let host_bits = bits - u32::from(len);
        if value & ((1u128 << host_bits) - 1) != 0 {
            return Err(format!("{s:?}: host bits set"));
        }
        Ok(cidr)
    }
}

/// `ip:port`, IPv6 addresses in brackets (`[2001:2::1]:80`), as Go's
/// `net.JoinHostPort` writes them (and iptables and nft read them).
pub fn host_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_macs_and_prefixes() {
        assert_eq!(
            parse_mac("02:00:c6:12:00:01").unwrap(),
            [2, 0, 0xc6, 0x12, 0, 1]
        );
        assert!(parse_mac("02:00").is_err());
        let c: Cidr = "198.18.64.0/18".parse().unwrap();
        assert_eq!(c.hosts(), 16384);
        assert_eq!(c.nth(300), IpAddr::from(Ipv4Addr::new(198, 18, 65, 44)));
        assert!("198.18.64.1/18".parse::<Cidr>().is_err());
        let c6: Cidr = "2001:2:0:100::/112".parse().unwrap();
        assert_eq!(c6.hosts(), 65536);
        assert_eq!(
            c6.nth(0x10a),
            "2001:2:0:100::10a".parse::<IpAddr>().unwrap()
        );
        assert_eq!("2001:2::/48".parse::<Cidr>().unwrap().hosts(), u64::MAX);
        assert!("2001:2::1/64".parse::<Cidr>().is_err());
        assert!("2001:2::/129".parse::<Cidr>().is_err());
        assert_eq!(
            host_port("2001:2::1".parse().unwrap(), 80),
            "[2001:2::1]:80"
        );
        assert_eq!(
            host_port(Ipv4Addr::new(198, 18, 0, 1).into(), 80),
            "198.18.0.1:80"
        );
    }
}
