//! Address families: what the data path needs to know about IPv4 and
//! IPv6 to serve both with one code path.
//!
//! Why a trait and not `IpAddr` everywhere: the connection table's record
//! packs three IPv4 addresses into 32 bytes (two flows per cache line),
//! and widening every key and record to `IpAddr` would cost IPv4 that
//! line. Instead each family is its own type, here the address type
//! itself ([`Ipv4Addr`], [`Ipv6Addr`]), and the connection table, the
//! service table and the packet path are generic over it: IPv4 keeps its
//! 32-byte record, IPv6 gets a record of its own, and each family has a
//! table of its own (as Cilium keeps its v4 and v6 conntrack and service
//! maps apart). Nothing is looked up across families: a VIP of one family
//! only ever goes to endpoints of the same family.
//!
//! The trait is sealed: its record layout ([`crate::conntrack`]'s) is
//! private to this crate.

use std::fmt::{Debug, Display};
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::conntrack::{FlowKey, RecordLayout};
use crate::route::{FamilyRoutes, NetSnapshot};
use crate::table::{CompiledTable, FamilyTable};

/// An address family the data path serves: [`Ipv4Addr`] or [`Ipv6Addr`].
pub trait IpFamily:
    RecordLayout + Copy + Eq + Ord + Hash + Debug + Display + Send + Sync + Into<IpAddr> + 'static
{
    /// "IPv4" or "IPv6", for logs and listings.
    const NAME: &'static str;
    /// The unspecified address (0.0.0.0, ::).
    const UNSPECIFIED: Self;
    /// Bytes of an address on the wire.
    const BYTES: usize;
    /// The family's number in table files' headers (4 or 6).
    const TAG: u8;

    /// The address, if `ip` is of this family.
    fn from_ip(ip: IpAddr) -> Option<Self>;

    /// The address from its wire bytes (`bytes.len() >= BYTES`; the
    /// caller has checked).
    fn from_bytes(bytes: &[u8]) -> Self;

    /// Writes the address's wire bytes into `out[..BYTES]`.
    fn write_bytes(self, out: &mut [u8]);

    /// The address's bits, right-aligned (an IPv4 address in the low 32).
    fn bits(self) -> u128;

    /// The address folded into 32 bits (an IPv4 address is itself), for
    /// the workers' direct-mapped caches (the next hop's, the affinity
    /// refreshes') and [`FlowKey::mix`].
    ///
    /// [`FlowKey::mix`]: crate::conntrack::FlowKey::mix
    #[inline(always)]
    fn fold(self) -> u32 {
        fold_bits(self.bits())
    }

    /// Whether this is the unspecified address.
    fn is_unspecified_addr(self) -> bool {
        self == Self::UNSPECIFIED
    }

    /// Feeds a flow key into a hasher: a few word-sized writes instead of
    /// five field writes (the hash is on the per-packet path).
    fn hash_key<H: Hasher>(key: &FlowKey<Self>, state: &mut H);

    /// Feeds the address with a port and protocol number into a hasher
    /// (a Service key), in as few writes as the family allows.
    fn hash_with_port<H: Hasher>(self, port: u16, protocol: u8, state: &mut H);

    /// This family's part of a compiled service table.
    fn table_part(table: &CompiledTable) -> &FamilyTable<Self>;

    /// The same, while the table is being built.
    fn table_part_mut(table: &mut CompiledTable) -> &mut FamilyTable<Self>;

    /// This family's routes and neighbours in a network snapshot.
    fn routes_part(net: &NetSnapshot) -> &FamilyRoutes<Self>;
}

/// 128 bits folded into 32 by xor ([`IpFamily::fold`]): the halves
/// first, then the two words of that (the same value as xoring the four
/// words, in four instructions instead of seven).
#[inline(always)]
fn fold_bits(bits: u128) -> u32 {
    let half = (bits as u64) ^ ((bits >> 64) as u64);
    (half as u32) ^ ((half >> 32) as u32)
}

/// The ports and protocol of a key, in one word.
#[inline]
fn ports_word<A>(key: &FlowKey<A>) -> u64 {
    (u64::from(key.src_port) << 24)
        | (u64::from(key.dst_port) << 8)
        | u64::from(key.protocol.ip_number())
}

impl IpFamily for Ipv4Addr {
    const NAME: &'static str = "IPv4";
    const UNSPECIFIED: Self = Ipv4Addr::UNSPECIFIED;
    const BYTES: usize = 4;
    const TAG: u8 = 4;

    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        }
    }

    fn from_bytes(bytes: &[u8]) -> Self {
        Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])
    }

    fn write_bytes(self, out: &mut [u8]) {
        out[..4].copy_from_slice(&self.octets());
    }

    #[inline]
    fn hash_key<H: Hasher>(key: &FlowKey<Self>, state: &mut H) {
        state.write_u64((u64::from(u32::from(key.src)) << 32) | u64::from(u32::from(key.dst)));
        state.write_u64(ports_word(key));
    }

    #[inline]
    fn hash_with_port<H: Hasher>(self, port: u16, protocol: u8, state: &mut H) {
        state.write_u64(
            (u64::from(u32::from(self)) << 24) | (u64::from(port) << 8) | u64::from(protocol),
        );
    }

    fn table_part(table: &CompiledTable) -> &FamilyTable<Self> {
        table.v4()
    }

    fn table_part_mut(table: &mut CompiledTable) -> &mut FamilyTable<Self> {
        table.v4_mut()
    }

    fn routes_part(net: &NetSnapshot) -> &FamilyRoutes<Self> {
        net.v4()
    }

    #[inline]
    fn bits(self) -> u128 {
        u128::from(u32::from(self))
    }
}

/// An IPv6 address's 16 bytes as one integer in the machine's byte
/// order: as good an input to a hash or a fold as its value
/// ([`IpFamily::bits`]), without the two byte swaps a value costs (a
/// new IPv6 flow hashes and folds its addresses several times). Never
/// compared with a value, nor kept: the table's hash is seeded per
/// process, and the folds feed caches a worker rebuilds.
#[inline(always)]
fn in_memory_order(addr: Ipv6Addr) -> u128 {
    u128::from_ne_bytes(addr.octets())
}

impl IpFamily for Ipv6Addr {
    const NAME: &'static str = "IPv6";
    const UNSPECIFIED: Self = Ipv6Addr::UNSPECIFIED;
    const BYTES: usize = 16;
    const TAG: u8 = 6;

    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(v6) => Some(v6),
            IpAddr::V4(_) => None,
        }
    }

    fn from_bytes(bytes: &[u8]) -> Self {
        let mut octets = [0u8; 16];
        octets.copy_from_slice(&bytes[..16]);
        Ipv6Addr::from(octets)
    }

    fn write_bytes(self, out: &mut [u8]) {
        out[..16].copy_from_slice(&self.octets());
    }

    #[inline]
    fn hash_key<H: Hasher>(key: &FlowKey<Self>, state: &mut H) {
        state.write_u128(in_memory_order(key.src));
        state.write_u128(in_memory_order(key.dst));
        state.write_u64(ports_word(key));
    }

    #[inline]
    fn hash_with_port<H: Hasher>(self, port: u16, protocol: u8, state: &mut H) {
        state.write_u128(in_memory_order(self));
        state.write_u32((u32::from(port) << 8) | u32::from(protocol));
    }

    /// As the trait's, over the bytes in memory order: the fold only has
    /// to spread the address's bits, not to read its value.
    #[inline(always)]
    fn fold(self) -> u32 {
        fold_bits(in_memory_order(self))
    }

    fn table_part(table: &CompiledTable) -> &FamilyTable<Self> {
        table.v6()
    }

    fn table_part_mut(table: &mut CompiledTable) -> &mut FamilyTable<Self> {
        table.v6_mut()
    }

    fn routes_part(net: &NetSnapshot) -> &FamilyRoutes<Self> {
        net.v6()
    }

    #[inline]
    fn bits(self) -> u128 {
        u128::from(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fold is the xor of the address's four 32-bit words.
    #[test]
    fn an_address_folds_to_the_xor_of_its_words() {
        for bits in [
            0u128,
            u128::MAX,
            0x2001_0002_0000_00ff_0000_0000_0000_0010,
            1 << 127,
            0xdead_beef,
        ] {
            let words = (bits as u32)
                ^ ((bits >> 32) as u32)
                ^ ((bits >> 64) as u32)
                ^ ((bits >> 96) as u32);
            assert_eq!(fold_bits(bits), words, "{bits:#x}");
        }
    }

    #[test]
    fn addresses_round_trip_through_their_bytes() {
        let v4 = Ipv4Addr::new(198, 18, 0, 7);
        let mut buf = [0u8; 16];
        v4.write_bytes(&mut buf);
        assert_eq!(Ipv4Addr::from_bytes(&buf), v4);
        let v6: Ipv6Addr = "2001:2::7".parse().expect("literal");
        v6.write_bytes(&mut buf);
        assert_eq!(Ipv6Addr::from_bytes(&buf), v6);
        assert_eq!(Ipv4Addr::from_ip(v6.into()), None);
        assert_eq!(Ipv6Addr::from_ip(v6.into()), Some(v6));
        assert!(Ipv6Addr::UNSPECIFIED.is_unspecified_addr());
    }
}
