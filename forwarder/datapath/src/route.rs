//! The gateway's view of the kernel's routing and neighbour tables, as an
//! immutable snapshot the workers read without locks.
//!
//! The netlink monitor (the `cipgw` crate's `netlink` module) rebuilds a
//! [`NetSnapshot`] whenever the kernel reports a change and publishes it; workers load the
//! current one once per batch. Lookups here are pure and allocation-free.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use std::net::Ipv4Addr;

use ahash::RandomState;

use crate::wire::ethernet::MacAddr;

/// Index of an attached interface in the gateway's port list (0..ports).
pub type PortId = u8;

/// One IPv4 route of the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Addr,
    pub prefix_len: u8,
    pub ifindex: u32,
    /// The next hop; `None` for on-link (connected) routes.
    pub gateway: Option<Ipv4Addr>,
}

/// An attached interface the gateway transmits on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub ifindex: u32,
    pub name: String,
    pub mac: MacAddr,
}

/// Where a packet for some destination leaves the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    pub port: PortId,
    /// The address whose MAC the frame is sent to: the route's gateway, or
    /// the destination itself when on-link.
    pub ip: Ipv4Addr,
}

/// Why a destination cannot be reached through an attached port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteError {
    /// No route matches the destination.
    NoRoute,
    /// The best route leaves through an interface cipgw is not attached to.
    NotAttached,
}

/// Routes, neighbours and attached ports at one moment.
#[derive(Debug, Clone, Default)]
pub struct NetSnapshot {
    /// Unique per snapshot built in this process (0 only for `Default`),
    /// so per-worker caches can tell snapshots apart without holding them.
    id: u64,
    /// Sorted by prefix length, longest first, so the first match wins.
    routes: Vec<Route>,
    /// Resolved neighbours (states REACHABLE, STALE, DELAY, PROBE,
    /// PERMANENT, NOARP) by (ifindex, address).
    neighbours: HashMap<(u32, Ipv4Addr), MacAddr, RandomState>,
    ports: Vec<Port>,
}

impl NetSnapshot {
    /// Builds a snapshot; `ports` order defines the [`PortId`]s.
    pub fn new(
        mut routes: Vec<Route>,
        neighbours: HashMap<(u32, Ipv4Addr), MacAddr>,
        ports: Vec<Port>,
    ) -> Self {
        assert!(ports.len() <= usize::from(PortId::MAX), "too many ports");
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix_len));
        /// Source of snapshot ids.
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self {
            // Relaxed: only uniqueness matters, not ordering.
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            routes,
            neighbours: neighbours.into_iter().collect(),
            ports,
        }
    }

    /// This snapshot's process-unique id.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn ports(&self) -> &[Port] {
        &self.ports
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn port(&self, port: PortId) -> Option<&Port> {
        self.ports.get(usize::from(port))
    }

    /// The port of an attached interface.
    pub fn port_of_ifindex(&self, ifindex: u32) -> Option<PortId> {
        self.ports
            .iter()
            .position(|p| p.ifindex == ifindex)
            .and_then(|i| PortId::try_from(i).ok())
    }

    /// Longest-prefix match over the main table.
    pub fn next_hop(&self, dst: Ipv4Addr) -> Result<NextHop, RouteError> {
        let dst_bits = u32::from(dst);
        let route = self
            .routes
            .iter()
            .find(|r| prefix_matches(r.dst, r.prefix_len, dst_bits))
            .ok_or(RouteError::NoRoute)?;
        let port = self
            .port_of_ifindex(route.ifindex)
            .ok_or(RouteError::NotAttached)?;
        Ok(NextHop {
            port,
            ip: route.gateway.unwrap_or(dst),
        })
    }

    /// The MAC of a resolved neighbour on a port.
    pub fn neighbour(&self, port: PortId, ip: Ipv4Addr) -> Option<MacAddr> {
        let ifindex = self.ports.get(usize::from(port))?.ifindex;
        self.neighbours.get(&(ifindex, ip)).copied()
    }
}

fn prefix_matches(net: Ipv4Addr, prefix_len: u8, addr: u32) -> bool {
    let mask = match prefix_len {
        0 => 0,
        n if n >= 32 => u32::MAX,
        n => u32::MAX << (32 - n),
    };
    (u32::from(net) & mask) == (addr & mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("test address")
    }

    fn snapshot() -> NetSnapshot {
        let ports = vec![
            Port {
                ifindex: 7,
                name: "client0".into(),
                mac: [2, 0, 0, 0, 0, 7],
            },
            Port {
                ifindex: 9,
                name: "pods0".into(),
                mac: [2, 0, 0, 0, 0, 9],
            },
        ];
        let routes = vec![
            Route {
                dst: ip("0.0.0.0"),
                prefix_len: 0,
                ifindex: 3,
                gateway: Some(ip("198.18.255.1")),
            },
            Route {
                dst: ip("198.18.0.0"),
                prefix_len: 24,
                ifindex: 7,
                gateway: None,
            },
            Route {
                dst: ip("198.18.1.0"),
                prefix_len: 24,
                ifindex: 9,
                gateway: None,
            },
            Route {
                dst: ip("198.19.0.0"),
                prefix_len: 16,
                ifindex: 9,
                gateway: Some(ip("198.18.1.254")),
            },
        ];
        let mut neigh = HashMap::new();
        neigh.insert((9, ip("198.18.1.10")), [2, 0, 0, 0, 1, 10]);
        NetSnapshot::new(routes, neigh, ports)
    }

    #[test]
    fn longest_prefix_wins_and_gateways_are_next_hops() {
        let s = snapshot();
        assert_eq!(
            s.next_hop(ip("198.18.1.10")),
            Ok(NextHop {
                port: 1,
                ip: ip("198.18.1.10")
            })
        );
        assert_eq!(
            s.next_hop(ip("198.19.3.4")),
            Ok(NextHop {
                port: 1,
                ip: ip("198.18.1.254")
            })
        );
        assert_eq!(s.next_hop(ip("203.0.113.1")), Err(RouteError::NotAttached));
        assert_eq!(s.neighbour(1, ip("198.18.1.10")), Some([2, 0, 0, 0, 1, 10]));
        assert_eq!(s.neighbour(0, ip("198.18.1.10")), None);
    }

    #[test]
    fn no_default_route_means_no_route() {
        let s = NetSnapshot::new(Vec::new(), HashMap::new(), Vec::new());
        assert_eq!(s.next_hop(ip("198.18.0.1")), Err(RouteError::NoRoute));
    }
}
