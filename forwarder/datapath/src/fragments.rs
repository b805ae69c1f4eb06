//! Later fragments follow their first, without reassembly.
//!
//! Only a datagram's first fragment carries the TCP or UDP ports a flow is
//! found by; the later ones carry its addresses, protocol and
//! identification alone (16 bits in the IPv4 header, 32 in IPv6's
//! Fragment header). When a worker forwards a first fragment it
//! remembers, under the datagram's identity as it arrived (source,
//! destination, protocol, identification), the addresses it rewrote the
//! fragment to; a later fragment of the same datagram is given the same
//! addresses and goes the same way. (The ports and the transport checksum
//! live in the first fragment, and the checksum's incremental update there
//! covers the whole datagram, so later fragments need no other change.)
//!
//! The table is per worker: a NIC's RSS hashes every fragment of a
//! datagram by its addresses alone, so all of them reach one queue, and
//! the kernel's veth keeps one sender's packets on one queue. It is small,
//! direct-mapped and fixed in size (taken when the worker starts, or at
//! the first fragment, never grown): a datagram whose slot another one
//! took meanwhile, or whose first fragment came later than the rest or
//! too long ago ([`TIMEOUT_SECS`]), loses its later fragments, which the
//! pipeline counts as dropped (`fragment`), as the kernel's own
//! reassembly would time them out.
//! Each address family has a table of its own (an IPv6 slot is about
//! three times an IPv4 one).

use std::net::Ipv4Addr;

use crate::family::IpFamily;

/// How long, in seconds of the coarse clock, a first fragment's
/// addresses serve later fragments: a datagram's fragments leave their
/// sender back to back, so a few seconds cover any queueing.
pub const TIMEOUT_SECS: u32 = 5;

/// A datagram as its fragments arrive: what they all share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatagramId<A = Ipv4Addr> {
    pub src: A,
    pub dst: A,
    /// The upper-layer protocol (IPv6: the Fragment header's next
    /// header).
    pub protocol: u8,
    pub ident: u32,
}

/// Where a datagram's fragments go: the addresses its first fragment
/// was rewritten to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentRoute<A = Ipv4Addr> {
    pub src: A,
    pub dst: A,
}

#[derive(Debug, Clone, Copy)]
struct Slot<A> {
    id: DatagramId<A>,
    route: FragmentRoute<A>,
    /// The last second the route serves; 0 marks an empty slot.
    until: u32,
}

/// One worker's table of datagrams of one family whose first fragment it
/// forwarded.
#[derive(Debug)]
pub struct FragmentTable<A = Ipv4Addr> {
    slots: Box<[Slot<A>]>,
}

impl<A> Default for FragmentTable<A> {
    fn default() -> Self {
        Self {
            slots: Box::default(),
        }
    }
}

/// An address folded into 32 bits (an IPv4 address is itself).
#[inline(always)]
fn fold<A: IpFamily>(ip: A) -> u32 {
    let bits = ip.bits();
    (bits as u32) ^ ((bits >> 32) as u32) ^ ((bits >> 64) as u32) ^ ((bits >> 96) as u32)
}

impl<A: IpFamily> FragmentTable<A> {
    /// Datagrams remembered at once (about 24 KiB for IPv4, 80 KiB for
    /// IPv6).
    pub const SLOTS: usize = 1024;

    #[inline]
    fn slot(id: &DatagramId<A>) -> usize {
        let a = fold(id.src) ^ fold(id.dst).rotate_left(16);
        let b = id.ident.rotate_left(8) ^ u32::from(id.protocol);
        // Fibonacci hashing: the top 10 bits pick one of 1024 slots.
        ((a ^ b.wrapping_mul(0x85eb_ca6b)).wrapping_mul(0x9e37_79b9) >> 22) as usize
    }

    /// Takes the table's memory now, empty, if it has none yet (a worker
    /// does at its start, so that no fragment waits for it).
    pub fn take_memory(&mut self) {
        if !self.slots.is_empty() {
            return;
        }
        let empty = Slot {
            id: DatagramId {
                src: A::UNSPECIFIED,
                dst: A::UNSPECIFIED,
                protocol: 0,
                ident: 0,
            },
            route: FragmentRoute {
                src: A::UNSPECIFIED,
                dst: A::UNSPECIFIED,
            },
            until: 0,
        };
        self.slots = vec![empty; Self::SLOTS].into_boxed_slice();
    }

    /// Remembers where datagram `id`'s first fragment went at `now`,
    /// replacing whatever held its slot.
    pub fn remember(&mut self, id: DatagramId<A>, route: FragmentRoute<A>, now: u32) {
        if self.slots.is_empty() {
            // At the first fragment, unless the worker took the memory
            // at its start (`FragmentTable::take_memory`).
            self.take_memory();
        }
        self.slots[Self::slot(&id)] = Slot {
            id,
            route,
            // At least 1: 0 marks an empty slot.
            until: now.saturating_add(TIMEOUT_SECS).max(1),
        };
    }

    /// Where a later fragment of datagram `id` goes, if its first
    /// fragment went out within [`TIMEOUT_SECS`] before `now`.
    pub fn route(&self, id: &DatagramId<A>, now: u32) -> Option<FragmentRoute<A>> {
        let slot = self.slots.get(Self::slot(id))?;
        (slot.until != 0 && now <= slot.until && slot.id == *id).then_some(slot.route)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ident: u32) -> DatagramId {
        DatagramId {
            src: Ipv4Addr::new(198, 18, 0, 2),
            dst: Ipv4Addr::new(198, 18, 100, 10),
            protocol: 17,
            ident,
        }
    }

    const ROUTE: FragmentRoute = FragmentRoute {
        src: Ipv4Addr::new(198, 18, 0, 2),
        dst: Ipv4Addr::new(198, 18, 2, 11),
    };

    #[test]
    fn a_remembered_datagram_is_found_until_its_timeout() {
        let mut table = FragmentTable::default();
        assert_eq!(table.route(&id(7), 100), None, "empty table");
        table.remember(id(7), ROUTE, 100);
        assert_eq!(table.route(&id(7), 100), Some(ROUTE));
        assert_eq!(table.route(&id(7), 100 + TIMEOUT_SECS), Some(ROUTE));
        assert_eq!(table.route(&id(7), 101 + TIMEOUT_SECS), None, "expired");
        assert_eq!(table.route(&id(8), 100), None, "another datagram");
        let other_protocol = DatagramId {
            protocol: 6,
            ..id(7)
        };
        assert_eq!(table.route(&other_protocol, 100), None);
    }

    /// A table a worker took at its start routes nothing it was not told,
    /// not even the placeholders' own datagram, until it remembers one.
    #[test]
    fn a_table_taken_at_start_routes_only_what_it_remembered() {
        let mut table = FragmentTable::default();
        table.take_memory();
        let placeholder = DatagramId {
            src: Ipv4Addr::UNSPECIFIED,
            dst: Ipv4Addr::UNSPECIFIED,
            protocol: 0,
            ident: 0,
        };
        assert_eq!(table.route(&placeholder, 0), None);
        assert_eq!(table.route(&id(7), 0), None);
        table.remember(id(7), ROUTE, 0);
        table.take_memory();
        assert_eq!(table.route(&id(7), 0), Some(ROUTE), "taken again, kept");
    }

    #[test]
    fn a_datagram_in_the_same_slot_replaces_the_older_one() {
        let mut table = FragmentTable::default();
        table.remember(id(0), ROUTE, 1);
        let clash = (1..=u32::from(u16::MAX))
            .find(|&i| FragmentTable::slot(&id(i)) == FragmentTable::slot(&id(0)))
            .expect("1024 slots: some identification shares slot 0's");
        table.remember(id(clash), ROUTE, 1);
        assert_eq!(table.route(&id(0), 1), None);
        assert_eq!(table.route(&id(clash), 1), Some(ROUTE));
    }

    #[test]
    fn a_first_fragment_at_second_zero_is_remembered() {
        let mut table = FragmentTable::default();
        table.remember(id(1), ROUTE, 0);
        assert_eq!(table.route(&id(1), 0), Some(ROUTE));
    }

    #[test]
    fn ipv6_datagrams_are_told_apart_by_every_field() {
        let a: std::net::Ipv6Addr = "2001:2::2".parse().expect("literal");
        let b: std::net::Ipv6Addr = "2001:2:0:ff::10".parse().expect("literal");
        let id = DatagramId {
            src: a,
            dst: b,
            protocol: 17,
            ident: 0x8000_0001,
        };
        let route = FragmentRoute {
            src: a,
            dst: "2001:2:0:2::11".parse().expect("literal"),
        };
        let mut table = FragmentTable::default();
        table.remember(id, route, 7);
        assert_eq!(table.route(&id, 7), Some(route));
        for other in [
            DatagramId { ident: 1, ..id },
            DatagramId {
                src: "2001:3::2".parse().expect("literal"),
                ..id
            },
            DatagramId { dst: a, ..id },
            DatagramId { protocol: 6, ..id },
        ] {
            assert_eq!(table.route(&other, 7), None, "{other:?}");
        }
    }
}
