//! The gateway's view of the kernel's routing and neighbour tables, as an
//! immutable snapshot the workers read without locks.
//!
//! The netlink monitor (the `cipgw` crate's `netlink` module) rebuilds a
//! [`NetSnapshot`] whenever the kernel reports a change and publishes it; workers load the
//! current one once per batch. Lookups here are pure and allocation-free.
//!
//! Each address family has its own routes and neighbours
//! ([`NetSnapshot::with_ipv6`]); [`NetSnapshot::next_hop_of`] and
//! [`NetSnapshot::neighbour_of`] look up either, the IPv4 names
//! ([`NetSnapshot::next_hop`], [`NetSnapshot::neighbour`]) stay for IPv4.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use std::net::{Ipv4Addr, Ipv6Addr};

use ahash::RandomState;

use crate::family::IpFamily;
use crate::wire::ethernet::MacAddr;

/// Index of an attached interface in the gateway's port list (0..ports).
pub type PortId = u8;

/// One route of the main table, of one family (IPv4 by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<A = Ipv4Addr> {
    pub dst: A,
    pub prefix_len: u8,
    pub ifindex: u32,
    /// The next hop; `None` for on-link (connected) routes.
    pub gateway: Option<A>,
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
pub struct NextHop<A = Ipv4Addr> {
    pub port: PortId,
    /// The address whose MAC the frame is sent to: the route's gateway, or
    /// the destination itself when on-link.
    pub ip: A,
}

/// The routes and neighbours of one family.
#[derive(Debug, Clone)]
pub struct FamilyRoutes<A> {
    /// Sorted by prefix length, longest first, so the first match wins.
    routes: Vec<Route<A>>,
    /// Resolved neighbours (states REACHABLE, STALE, DELAY, PROBE,
    /// PERMANENT, NOARP) by (ifindex, address).
    neighbours: HashMap<(u32, A), MacAddr, RandomState>,
}

impl<A> Default for FamilyRoutes<A> {
    fn default() -> Self {
        Self {
            routes: Vec::new(),
            neighbours: HashMap::default(),
        }
    }
}

impl<A: IpFamily> FamilyRoutes<A> {
    fn new(mut routes: Vec<Route<A>>, neighbours: HashMap<(u32, A), MacAddr>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix_len));
        Self {
            routes,
            neighbours: neighbours.into_iter().collect(),
        }
    }
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
    v4: FamilyRoutes<Ipv4Addr>,
    v6: FamilyRoutes<Ipv6Addr>,
    ports: Vec<Port>,
}

impl NetSnapshot {
    /// Builds a snapshot; `ports` order defines the [`PortId`]s.
    pub fn new(
        routes: Vec<Route>,
        neighbours: HashMap<(u32, Ipv4Addr), MacAddr>,
        ports: Vec<Port>,
    ) -> Self {
        assert!(ports.len() <= usize::from(PortId::MAX), "too many ports");
        /// Source of snapshot ids.
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Self {
            // Relaxed: only uniqueness matters, not ordering.
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            v4: FamilyRoutes::new(routes, neighbours),
            v6: FamilyRoutes::default(),
            ports,
        }
    }

    /// The same snapshot with IPv6 routes and neighbours.
    pub fn with_ipv6(
        mut self,
        routes: Vec<Route<Ipv6Addr>>,
        neighbours: HashMap<(u32, Ipv6Addr), MacAddr>,
    ) -> Self {
        self.v6 = FamilyRoutes::new(routes, neighbours);
        self
    }

    /// The routes and neighbours of family `A`.
    #[inline]
    pub fn family<A: IpFamily>(&self) -> &FamilyRoutes<A> {
        A::routes_part(self)
    }

    pub(crate) fn v4(&self) -> &FamilyRoutes<Ipv4Addr> {
        &self.v4
    }

    pub(crate) fn v6(&self) -> &FamilyRoutes<Ipv6Addr> {
        &self.v6
    }

    /// This snapshot's process-unique id.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn ports(&self) -> &[Port] {
        &self.ports
    }

    /// The IPv4 routes, longest prefix first.
    pub fn routes(&self) -> &[Route] {
        &self.v4.routes
    }

    /// The IPv6 routes, longest prefix first.
    pub fn routes6(&self) -> &[Route<Ipv6Addr>] {
        &self.v6.routes
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

    /// Longest-prefix match over the IPv4 main table.
    pub fn next_hop(&self, dst: Ipv4Addr) -> Result<NextHop, RouteError> {
        self.next_hop_of(dst)
    }

    /// Longest-prefix match over the main table of `dst`'s family.
    pub fn next_hop_of<A: IpFamily>(&self, dst: A) -> Result<NextHop<A>, RouteError> {
        let dst_bits = dst.bits();
        let route = self
            .family::<A>()
            .routes
            .iter()
            .find(|r| prefix_matches::<A>(r.dst.bits(), r.prefix_len, dst_bits))
            .ok_or(RouteError::NoRoute)?;
        let port = self
            .port_of_ifindex(route.ifindex)
            .ok_or(RouteError::NotAttached)?;
        Ok(NextHop {
            port,
            ip: route.gateway.unwrap_or(dst),
        })
    }

    /// The MAC of a resolved IPv4 neighbour on a port.
    pub fn neighbour(&self, port: PortId, ip: Ipv4Addr) -> Option<MacAddr> {
        self.neighbour_of(port, ip)
    }

    /// The MAC of a resolved neighbour on a port, by an address of
    /// either family.
    pub fn neighbour_ip(&self, port: PortId, ip: std::net::IpAddr) -> Option<MacAddr> {
        match ip {
            std::net::IpAddr::V4(v4) => self.neighbour_of(port, v4),
            std::net::IpAddr::V6(v6) => self.neighbour_of(port, v6),
        }
    }

    /// The MAC of a resolved neighbour of either family on a port.
    pub fn neighbour_of<A: IpFamily>(&self, port: PortId, ip: A) -> Option<MacAddr> {
        let ifindex = self.ports.get(usize::from(port))?.ifindex;
        self.family::<A>().neighbours.get(&(ifindex, ip)).copied()
    }
}

/// Whether the first `prefix_len` of `A`'s bits of `net` and `addr` (as
/// [`IpFamily::bits`], right-aligned) agree.
fn prefix_matches<A: IpFamily>(net: u128, prefix_len: u8, addr: u128) -> bool {
    let width = 8 * A::BYTES as u32;
    let len = u32::from(prefix_len).min(width);
    if len == 0 {
        return true;
    }
    let shift = width - len;
    (net >> shift) == (addr >> shift)
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

    #[test]
    fn ipv6_routes_are_looked_up_apart_from_ipv4() {
        let v6 = |s: &str| -> Ipv6Addr { s.parse().expect("test address") };
        let routes6 = vec![
            Route {
                dst: v6("2001:2::"),
                prefix_len: 64,
                ifindex: 7,
                gateway: None,
            },
            Route {
                dst: v6("2001:2:0:ff::"),
                prefix_len: 56,
                ifindex: 9,
                gateway: Some(v6("2001:2:0:1::fe")),
            },
            Route {
                dst: v6("::"),
                prefix_len: 0,
                ifindex: 3,
                gateway: Some(v6("fe80::1")),
            },
        ];
        let mut neigh6 = HashMap::new();
        neigh6.insert((9, v6("2001:2:0:1::fe")), [2, 0, 0, 0, 9, 9]);
        let s = snapshot().with_ipv6(routes6, neigh6);
        assert_eq!(
            s.next_hop_of(v6("2001:2::5")),
            Ok(NextHop {
                port: 0,
                ip: v6("2001:2::5")
            })
        );
        let hop = s.next_hop_of(v6("2001:2:0:ff::10")).expect("routed");
        assert_eq!(
            hop,
            NextHop {
                port: 1,
                ip: v6("2001:2:0:1::fe")
            }
        );
        assert_eq!(s.neighbour_of(hop.port, hop.ip), Some([2, 0, 0, 0, 9, 9]));
        assert_eq!(
            s.next_hop_of(v6("2001:db8::1")),
            Err(RouteError::NotAttached)
        );
        // The IPv4 side is untouched, and a family without routes has none.
        assert_eq!(s.next_hop(ip("198.18.1.10")).map(|h| h.port), Ok(1));
        assert_eq!(
            snapshot().next_hop_of(v6("2001:2::5")),
            Err(RouteError::NoRoute)
        );
    }

    #[test]
    fn prefixes_match_by_their_length_in_either_family() {
        assert!(prefix_matches::<Ipv4Addr>(0xc612_0000, 16, 0xc612_ffff));
        assert!(!prefix_matches::<Ipv4Addr>(0xc612_0000, 17, 0xc612_ffff));
        assert!(prefix_matches::<Ipv4Addr>(0, 0, u128::from(u32::MAX)));
        assert!(prefix_matches::<Ipv4Addr>(7, 32, 7));
        assert!(!prefix_matches::<Ipv4Addr>(7, 32, 6));
        let a = u128::from("2001:2::1".parse::<Ipv6Addr>().expect("literal"));
        let b = u128::from("2001:2::8000:0:0:1".parse::<Ipv6Addr>().expect("literal"));
        assert!(prefix_matches::<Ipv6Addr>(a, 64, b));
        assert!(!prefix_matches::<Ipv6Addr>(a, 65, b));
        assert!(prefix_matches::<Ipv6Addr>(a, 128, a));
        assert!(
            prefix_matches::<Ipv6Addr>(a, 200, a),
            "a length past the width is the width"
        );
    }
}
