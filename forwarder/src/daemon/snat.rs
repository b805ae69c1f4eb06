//! Source NAT at start: the addresses and ports `--snat` uses, found
//! where the flags leave them open, and the check that the gateway's
//! ports cannot collide with the node's own connections.
//!
//! The node's kernel opens connections from its own addresses (kubelet,
//! probes, the gateway's API watch) with source ports from
//! `net.ipv4.ip_local_port_range`. On such an address, SNAT ports inside
//! that range could meet a kernel connection to the same backend on the
//! same 4-tuple, so they are refused at start; an address given with
//! `--snat-address` is taken as dedicated to cipgw, which lifts the check
//! (Linux's range, though under `net.ipv4`, serves IPv6 sockets too).
//!
//! Each family's connection table gets the addresses of its family; a
//! family without one is forwarded without source NAT (with a warning).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;

use anyhow::{bail, Context};
use cipgw_config::settings::Settings;

use crate::conntrack::snat::SnatConfig;
use crate::family::IpFamily;
use crate::netlink;

/// Source NAT as resolved at start: addresses of either family, one
/// port range for all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snat {
    pub addresses: Vec<IpAddr>,
    pub ports: RangeInclusive<u16>,
}

impl Snat {
    /// What family `A`'s connection table uses: `None` when no address is
    /// of that family.
    pub fn config<A: IpFamily>(&self) -> Option<SnatConfig<A>> {
        let addresses: Vec<A> = self
            .addresses
            .iter()
            .filter_map(|&a| A::from_ip(a))
            .collect();
        (!addresses.is_empty()).then(|| SnatConfig {
            addresses,
            ports: self.ports.clone(),
        })
    }
}

/// Where Linux keeps the ephemeral port range.
const LOCAL_PORT_RANGE: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The SNAT configuration `settings` ask for, or `None` without `--snat`.
pub(super) fn resolve(settings: &Settings) -> anyhow::Result<Option<Snat>> {
    let Some(snat) = &settings.snat else {
        return Ok(None);
    };
    let kernel = kernel_port_range()?;
    let dedicated = !snat.addresses.is_empty();
    let addresses = if dedicated {
        snat.addresses.clone()
    } else {
        let iface = settings.ifaces.last().context("--snat needs an --iface")?;
        primary_addresses(iface)?
    };
    let (low, high) = match snat.ports {
        Some(ports) => ports,
        None => default_ports(kernel).with_context(|| {
            format!(
                "--snat: the kernel's ip_local_port_range {}-{} leaves no ports for source NAT; \
                 give --snat-ports and a dedicated --snat-address",
                kernel.0, kernel.1
            )
        })?,
    };
    if !dedicated {
        for &address in &addresses {
            check_outside_kernel_range((low, high), kernel, address)?;
        }
    }
    for (family, has) in [
        ("IPv4", addresses.iter().any(IpAddr::is_ipv4)),
        ("IPv6", addresses.iter().any(IpAddr::is_ipv6)),
    ] {
        if !has {
            tracing::warn!(
                "--snat: no {family} source NAT address; {family} Services are forwarded with                  the client's address (give an {family} --snat-address)"
            );
        }
    }
    tracing::info!(
        addresses = ?addresses,
        ports = %format!("{low}-{high}"),
        kernel_ports = %format!("{}-{}", kernel.0, kernel.1),
        "source NAT on: backends see new connections come from the gateway"
    );
    Ok(Some(Snat {
        addresses,
        ports: low..=high,
    }))
}

/// `ip_local_port_range`: the ports the kernel gives its own connections.
fn kernel_port_range() -> anyhow::Result<(u16, u16)> {
    let text = std::fs::read_to_string(LOCAL_PORT_RANGE)
        .with_context(|| format!("--snat: reading {LOCAL_PORT_RANGE}"))?;
    parse_port_range(&text).with_context(|| format!("--snat: {LOCAL_PORT_RANGE}: {text:?}"))
}

fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut fields = text.split_whitespace().map(str::parse::<u16>);
    let low = fields.next()?.ok()?;
    let high = fields.next()?.ok()?;
    (low <= high).then_some((low, high))
}

/// The ports above the kernel's range, or else those below it down to
/// 1024 (never the well-known ports); `None` when neither has any.
fn default_ports((low, high): (u16, u16)) -> Option<(u16, u16)> {
    if high < u16::MAX {
        Some((high + 1, u16::MAX))
    } else if low > 1024 {
        Some((1024, low - 1))
    } else {
        None
    }
}

fn check_outside_kernel_range(
    (low, high): (u16, u16),
    (kernel_low, kernel_high): (u16, u16),
    address: IpAddr,
) -> anyhow::Result<()> {
    if low <= kernel_high && kernel_low <= high {
        bail!(
            "--snat-ports {low}-{high} overlaps the kernel's ip_local_port_range \
             {kernel_low}-{kernel_high} on {address}, from which this node also opens its own \
             connections (a backend could see two connections on one address and port); \
             choose ports outside {kernel_low}-{kernel_high}, or give a dedicated --snat-address"
        );
    }
    Ok(())
}

/// The primary IPv4 address and the oldest usable global IPv6 address of
/// interface `iface`, those it has (at least one).
fn primary_addresses(iface: &str) -> anyhow::Result<Vec<IpAddr>> {
    let links = netlink::dump_links().context("--snat: listing interfaces")?;
    let ifindex = links
        .iter()
        .find(|l| l.name == iface)
        .map(|l| l.ifindex)
        .with_context(|| format!("--snat: no interface {iface}"))?;
    let v4: Option<Ipv4Addr> = netlink::dump_ipv4_addresses()
        .context("--snat: listing addresses")?
        .into_iter()
        .find(|(index, _)| *index == ifindex)
        .map(|(_, ip)| ip);
    // The kernel lists an interface's IPv6 addresses newest first: the
    // last is the one it has had longest, as IPv4's primary is the first
    // one added.
    let v6: Option<Ipv6Addr> = netlink::dump_ipv6_addresses()
        .context("--snat: listing IPv6 addresses")?
        .into_iter()
        .filter(|(index, _)| *index == ifindex)
        .map(|(_, ip)| ip)
        .next_back();
    let addresses: Vec<IpAddr> = v4
        .map(IpAddr::from)
        .into_iter()
        .chain(v6.map(IpAddr::from))
        .collect();
    if addresses.is_empty() {
        bail!("--snat: interface {iface} has no IPv4 or global IPv6 address; give --snat-address");
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_range_lies_outside_the_kernels() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("x"), None);
        assert_eq!(default_ports((32768, 60999)), Some((61000, 65535)));
        assert_eq!(default_ports((32768, 65535)), Some((1024, 32767)));
        assert_eq!(default_ports((1024, 65535)), None);
    }

    #[test]
    fn an_overlap_on_the_nodes_address_is_refused_with_the_reason() {
        let a = IpAddr::from([198, 18, 0, 1]);
        check_outside_kernel_range((61000, 65535), (32768, 60999), a).expect("outside");
        let e = check_outside_kernel_range((60000, 61000), (32768, 60999), a)
            .expect_err("overlaps")
            .to_string();
        assert!(
            e.contains("overlaps the kernel's ip_local_port_range 32768-60999 on 198.18.0.1"),
            "{e}"
        );
    }
}
