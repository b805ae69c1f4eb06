//! ClusterIP allocation for Services that name none (file mode).
//!
//! A Service written without `spec.clusterIP` still needs a VIP, and that
//! VIP must not move when the file is re-read or the gateway restarts, or
//! clients holding the old address break. There is no state to remember
//! earlier choices in, so the address is derived from the Service's name:
//!
//! - each family is allocated on its own, from the gateway's service CIDR
//!   of that family (a dual-stack Service gets one address from each);
//! - the usable range of an IPv4 service CIDR is every address but the
//!   network address, the broadcast address and the first host address,
//!   which kube-apiserver reserves for `kubernetes.default`
//!   (`198.18.100.0/24` -> `198.18.100.2` ..= `198.18.100.254`); of an
//!   IPv6 one, every address but the network (Subnet-Router anycast, RFC
//!   4291 2.6.1) and the first host address, at most 2^32 - 2 of them
//!   (`2001:2:0:ff::/112` -> `2001:2:0:ff::2` ..= `2001:2:0:ff::ffff`);
//! - a Service's home slot is the 64-bit FNV-1a hash of
//!   `namespace/name` (UTF-8 bytes), modulo the size of the range;
//! - on collision with a fixed ClusterIP or an earlier allocation, the next
//!   address is tried, wrapping around (linear probing);
//! - Services are allocated in sorted `namespace/name` order, so the
//!   outcome depends only on the set of Services, not on document order.
//!
//! A Service keeps its address as long as no Service sorted before it
//! comes to occupy its slot; in a large CIDR that is rare, and any Service
//! that must never move can pin its address with `spec.clusterIP`.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use cipgw_config::ServiceName;
use ipnet::{IpNet, Ipv4Net};

/// FNV-1a 64-bit offset basis (draft-eastlake-fnv, section 2).
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime (draft-eastlake-fnv, section 2).
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The 64-bit FNV-1a hash of `namespace/name`.
pub fn name_hash(name: &ServiceName) -> u64 {
    fnv1a(
        name.namespace
            .bytes()
            .chain(std::iter::once(b'/'))
            .chain(name.name.bytes()),
    )
}

fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(FNV_OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

/// The addresses of an IPv4 `cidr` that allocation may hand out, as
/// `(first, count)`; `count` is 0 for a /31 or /32, which have none.
pub fn usable_range(cidr: Ipv4Net) -> (Ipv4Addr, u32) {
    let (first, count) = usable(IpNet::V4(cidr));
    (Ipv4Addr::from(first as u32), count)
}

/// The usable addresses of `cidr` as `(first, count)`, the first as a
/// number (an IPv4 address in the low 32 bits).
fn usable(cidr: IpNet) -> (u128, u32) {
    match cidr.trunc() {
        IpNet::V4(cidr) => {
            let network = u32::from(cidr.network());
            let size = 1u64 << (32 - u32::from(cidr.prefix_len()));
            if size < 4 {
                return (u128::from(network), 0);
            }
            // Network, broadcast and the reserved first host address;
            // `count < 2^32` and `network + 2` stays inside the CIDR.
            let count = u32::try_from(size - 3).unwrap_or(u32::MAX);
            (u128::from(network) + 2, count)
        }
        IpNet::V6(cidr) => {
            let network = u128::from(cidr.network());
            let host_bits = 128 - u32::from(cidr.prefix_len());
            // At most 2^32 addresses are considered (a /96 or larger
            // holds more than any cluster allocates).
            let size = if host_bits >= 32 {
                1u64 << 32
            } else {
                1u64 << host_bits
            };
            if size < 3 {
                return (network, 0);
            }
            // The network address and the reserved first host address.
            let count = u32::try_from(size - 2).unwrap_or(u32::MAX);
            (network + 2, count)
        }
    }
}

fn address(cidr: IpNet, n: u128) -> IpAddr {
    match cidr {
        // `n` came from an IPv4 CIDR: it fits in 32 bits.
        IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
        IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

fn number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(ip) => u128::from(u32::from(ip)),
        IpAddr::V6(ip) => u128::from(ip),
    }
}

/// No free address was left for a Service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no free address left for {service} in service CIDR {cidr} ({usable} usable addresses)")]
pub struct CidrFull {
    /// The first Service, in sorted order, that found the range full;
    /// every Service sorted after it got no address either.
    pub service: ServiceName,
    pub cidr: IpNet,
    pub usable: u32,
    /// The addresses handed out before the range ran out.
    pub allocated: BTreeMap<ServiceName, IpAddr>,
}

/// Allocates an address of `cidr` (either family) to each of `names`,
/// avoiding `taken` (the fixed ClusterIPs; those of the other family are
/// ignored). Duplicate names get one address.
///
/// Returns the addresses by name, or the first Service (in sorted order)
/// that found the range full.
pub fn allocate<'a>(
    cidr: IpNet,
    taken: &HashSet<IpAddr>,
    names: impl IntoIterator<Item = &'a ServiceName>,
) -> Result<BTreeMap<ServiceName, IpAddr>, CidrFull> {
    let cidr = cidr.trunc();
    let (first, count) = usable(cidr);
    let sorted: std::collections::BTreeSet<&ServiceName> = names.into_iter().collect();
    let mut used: HashSet<u128> = taken
        .iter()
        .filter(|ip| cidr.contains(*ip))
        .map(|ip| number(*ip))
        .filter(|n| n.wrapping_sub(first) < u128::from(count))
        .collect();
    let mut allocated = BTreeMap::new();
    for name in sorted {
        let home = match u64::from(count) {
            // Nothing free: skip the probe (it would visit every slot).
            _ if used.len() as u64 >= u64::from(count) => None,
            // The remainder is below `count`, so it fits in a u32.
            count => Some(name_hash(name) % count),
        };
        // Probes at most `count` slots: every free one is found.
        let slot = home.and_then(|home| {
            (0..u64::from(count))
                .map(|step| first + u128::from((home + step) % u64::from(count)))
                .find(|n| !used.contains(n))
        });
        let Some(slot) = slot else {
            return Err(CidrFull {
                service: name.clone(),
                cidr,
                usable: count,
                allocated,
            });
        };
        used.insert(slot);
        allocated.insert(name.clone(), address(cidr, slot));
    }
    Ok(allocated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> IpNet {
        s.parse().expect("valid CIDR")
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn names(n: usize) -> Vec<ServiceName> {
        (0..n)
            .map(|i| ServiceName::new(format!("ns{}", i % 3), format!("svc-{i}")))
            .collect()
    }

    #[test]
    fn fnv1a_matches_reference_vectors() {
        // FNV-1a 64 test vectors (draft-eastlake-fnv, appendix C).
        assert_eq!(fnv1a(*b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(*b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(*b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(
            name_hash(&ServiceName::new("default", "echo")),
            fnv1a(*b"default/echo")
        );
    }

    #[test]
    fn range_skips_network_broadcast_and_first_host() {
        let v4net = |s: &str| s.parse::<Ipv4Net>().expect("valid CIDR");
        assert_eq!(
            usable_range(v4net("198.18.100.0/24")),
            (Ipv4Addr::new(198, 18, 100, 2), 253)
        );
        assert_eq!(
            usable_range(v4net("198.18.100.77/24")),
            (Ipv4Addr::new(198, 18, 100, 2), 253)
        );
        assert_eq!(
            usable_range(v4net("198.18.0.0/30")),
            (Ipv4Addr::new(198, 18, 0, 2), 1)
        );
        assert_eq!(usable_range(v4net("198.18.0.0/31")).1, 0);
        assert_eq!(usable_range(v4net("198.18.0.0/32")).1, 0);
        assert_eq!(usable_range(v4net("0.0.0.0/0")).1, u32::MAX - 2);
    }

    #[test]
    fn ipv6_range_skips_network_and_first_host() {
        let first = |n: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0xff, 0, 0, 0, n));
        let (start, count) = usable(cidr("2001:2:0:ff::/112"));
        assert_eq!(
            (address(cidr("2001:2::/48"), start), count),
            (first(2), 65534)
        );
        assert_eq!(usable(cidr("2001:2::/64")).1, u32::MAX - 1);
        assert_eq!(usable(cidr("2001:2::/127")).1, 0);
        assert_eq!(usable(cidr("2001:2::/126")).1, 2);
    }

    #[test]
    fn each_family_is_stable_on_its_own() {
        let net4 = cidr("198.18.100.0/24");
        let net6 = cidr("2001:2:0:ff::/112");
        let names = names(50);
        let v4 = allocate(net4, &HashSet::new(), &names).expect("fits");
        let v6 = allocate(net6, &HashSet::new(), &names).expect("fits");
        // The other family's addresses neither block nor move anything.
        let taken4: HashSet<IpAddr> = v4.values().copied().collect();
        assert_eq!(allocate(net6, &taken4, &names).expect("fits"), v6);
        let hash = name_hash(&names[0]);
        assert_eq!(
            v6[&names[0]],
            IpAddr::V6(Ipv6Addr::from(
                u128::from(Ipv6Addr::new(0x2001, 2, 0, 0xff, 0, 0, 0, 2))
                    + u128::from(hash % 65534)
            ))
        );
        assert_eq!(
            v4[&names[0]],
            v4_from(u32::from(Ipv4Addr::new(198, 18, 100, 2)) + (hash % 253) as u32)
        );
        assert!(v6.values().all(|ip| net6.contains(ip)));
    }

    #[test]
    fn stable_across_calls_and_input_orders() {
        let net = cidr("198.18.100.0/24");
        let names = names(100);
        let taken = HashSet::from([v4(198, 18, 100, 10)]);
        let forward = allocate(net, &taken, &names).expect("fits");
        let backward = allocate(net, &taken, names.iter().rev()).expect("fits");
        assert_eq!(forward, backward);
        assert_eq!(forward, allocate(net, &taken, &names).expect("fits"));
        // A pinned value: changing the hash or the range moves every
        // allocated VIP in every deployment, so it must be deliberate.
        let alone =
            allocate(net, &HashSet::new(), [&ServiceName::new("default", "echo")]).expect("fits");
        let ip = alone[&ServiceName::new("default", "echo")];
        let hash = name_hash(&ServiceName::new("default", "echo"));
        assert_eq!(
            ip,
            v4_from(u32::from(Ipv4Addr::new(198, 18, 100, 2)) + (hash % 253) as u32)
        );
    }

    #[test]
    fn unique_and_in_range_avoiding_taken() {
        let net = cidr("198.18.100.0/24");
        let names = names(250);
        let taken: HashSet<IpAddr> = [2, 3, 100].map(|l| v4(198, 18, 100, l)).into();
        let allocated = allocate(net, &taken, &names).expect("253 - 3 = 250 fit");
        let ips: HashSet<IpAddr> = allocated.values().copied().collect();
        assert_eq!(ips.len(), 250);
        for ip in &ips {
            assert!(net.contains(ip));
            assert!(!taken.contains(ip));
            let IpAddr::V4(ip) = ip else {
                panic!("{ip} is not IPv4")
            };
            let last = ip.octets()[3];
            assert!((2..=254).contains(&last), "{ip} outside the usable range");
        }
    }

    fn v4_from(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    #[test]
    fn full_cidr_is_an_error() {
        let net = cidr("198.18.100.0/29"); // 8 addresses, 5 usable
        let names = names(6);
        let error = allocate(net, &HashSet::new(), &names).expect_err("6 > 5");
        assert_eq!(error.usable, 5);
        assert_eq!(
            error.to_string(),
            format!(
                "no free address left for {} in service CIDR 198.18.100.0/29 (5 usable addresses)",
                error.service
            )
        );
        assert!(allocate(cidr("198.18.100.0/31"), &HashSet::new(), &names[..1]).is_err());
    }

    #[test]
    fn duplicate_names_share_one_address() {
        let net = cidr("198.19.0.0/16");
        let name = ServiceName::new("default", "echo");
        let allocated = allocate(net, &HashSet::new(), [&name, &name]).expect("fits");
        assert_eq!(allocated.len(), 1);
    }
}
