//! Small helpers shared by the tools: CPU pinning, MAC and CIDR parsing.

use std::io;
use std::net::Ipv4Addr;
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

/// An IPv4 prefix, e.g. `198.18.64.0/18`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Cidr {
    /// Number of addresses in the prefix (all of them: the generator and
    /// the rule writer use network and broadcast addresses too).
    pub fn hosts(&self) -> u32 {
        1u32.checked_shl(32 - u32::from(self.len))
            .unwrap_or(u32::MAX)
    }

    /// Address number `i` of the prefix.
    pub fn nth(&self, i: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + i)
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
        let addr: Ipv4Addr = a.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let len: u8 = l.parse().map_err(|e| format!("{s:?}: {e}"))?;
        if !(1..=32).contains(&len) {
            return Err(format!("{s:?}: prefix length must be 1 to 32"));
        }
        let mask = u32::MAX << (32 - u32::from(len));
        if u32::from(addr) & !mask != 0 {
            return Err(format!("{s:?}: host bits set"));
        }
        Ok(Cidr { addr, len })
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
        assert_eq!(c.nth(300), Ipv4Addr::new(198, 18, 65, 44));
        assert!("198.18.64.1/18".parse::<Cidr>().is_err());
    }
}
