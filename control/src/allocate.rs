//! ClusterIP allocation for Services that name none (file mode).
//!
//! A Service written without `spec.clusterIP` still needs a VIP, and that
//! VIP must not move when the file is re-read or the gateway restarts, or
//! clients holding the old address break. There is no state to remember
//! earlier choices in, so the address is derived from the Service's name:
//!
//! - the usable range of a service CIDR is every address but the network
//!   address, the broadcast address and the first host address, which
//!   kube-apiserver reserves for `kubernetes.default`
//!   (`198.18.100.0/24` -> `198.18.100.2` ..= `198.18.100.254`);
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
use std::net::Ipv4Addr;

use cipgw_config::ServiceName;
use ipnet::Ipv4Net;

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

/// The addresses of `cidr` that allocation may hand out, as
/// `(first, count)`; `count` is 0 for a /31 or /32, which have none.
pub fn usable_range(cidr: Ipv4Net) -> (Ipv4Addr, u32) {
    let network = u32::from(cidr.network());
    let size = 1u64 << (32 - u32::from(cidr.prefix_len()));
    if size < 4 {
        return (cidr.network(), 0);
    }
    // Network, broadcast and the reserved first host address.
    let count = size - 3;
    // `count < 2^32` and `network + 2` stays inside the CIDR.
    (
        Ipv4Addr::from(network + 2),
        u32::try_from(count).expect("a CIDR holds at most 2^32 addresses"),
    )
}

/// No free address was left for a Service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no free address left for {service} in service CIDR {cidr} ({usable} usable addresses)")]
pub struct CidrFull {
    /// The first Service, in sorted order, that found the range full;
    /// every Service sorted after it got no address either.
    pub service: ServiceName,
    pub cidr: Ipv4Net,
    pub usable: u32,
    /// The addresses handed out before the range ran out.
    pub allocated: BTreeMap<ServiceName, Ipv4Addr>,
}

/// Allocates an address of `cidr` to each of `names`, avoiding `taken`
/// (the fixed ClusterIPs). Duplicate names get one address.
///
/// Returns the addresses by name, or the first Service (in sorted order)
/// that found the range full.
pub fn allocate<'a>(
    cidr: Ipv4Net,
    taken: &HashSet<Ipv4Addr>,
    names: impl IntoIterator<Item = &'a ServiceName>,
) -> Result<BTreeMap<ServiceName, Ipv4Addr>, CidrFull> {
    let (first, count) = usable_range(cidr);
    let first = u32::from(first);
    let sorted: std::collections::BTreeSet<&ServiceName> = names.into_iter().collect();
    let mut used: HashSet<u32> = taken
        .iter()
        .map(|ip| u32::from(*ip))
        .filter(|ip| ip.wrapping_sub(first) < count)
        .collect();
    let mut allocated = BTreeMap::new();
    for name in sorted {
        let home = match u64::from(count) {
            // Nothing free: skip the probe (it would visit every slot).
            _ if used.len() as u64 >= u64::from(count) => None,
            // The remainder is below `count`, so it fits in a u32.
            count => Some((name_hash(name) % count) as u32),
        };
        // Probes at most `count` slots: every free one is found.
        let slot = home.and_then(|home| {
            (0..count)
                .map(|step| first + ((u64::from(home) + u64::from(step)) % u64::from(count)) as u32)
                .find(|ip| !used.contains(ip))
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
        allocated.insert(name.clone(), Ipv4Addr::from(slot));
    }
    Ok(allocated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Net {
        s.parse().expect("valid CIDR")
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
        assert_eq!(
            usable_range(cidr("198.18.100.0/24")),
            (Ipv4Addr::new(198, 18, 100, 2), 253)
        );
        assert_eq!(
            usable_range(cidr("198.18.100.77/24")),
            (Ipv4Addr::new(198, 18, 100, 2), 253)
        );
        assert_eq!(
            usable_range(cidr("198.18.0.0/30")),
            (Ipv4Addr::new(198, 18, 0, 2), 1)
        );
        assert_eq!(usable_range(cidr("198.18.0.0/31")).1, 0);
        assert_eq!(usable_range(cidr("198.18.0.0/32")).1, 0);
        assert_eq!(usable_range(cidr("0.0.0.0/0")).1, u32::MAX - 2);
    }

    #[test]
    fn stable_across_calls_and_input_orders() {
        let net = cidr("198.18.100.0/24");
        let names = names(100);
        let taken = HashSet::from([Ipv4Addr::new(198, 18, 100, 10)]);
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
            u32::from(ip),
            u32::from(Ipv4Addr::new(198, 18, 100, 2)) + (hash % 253) as u32
        );
    }

    #[test]
    fn unique_and_in_range_avoiding_taken() {
        let net = cidr("198.18.100.0/24");
        let names = names(250);
        let taken: HashSet<Ipv4Addr> = [2, 3, 100].map(|l| Ipv4Addr::new(198, 18, 100, l)).into();
        let allocated = allocate(net, &taken, &names).expect("253 - 3 = 250 fit");
        let ips: HashSet<Ipv4Addr> = allocated.values().copied().collect();
        assert_eq!(ips.len(), 250);
        for ip in &ips {
            assert!(net.contains(ip));
            assert!(!taken.contains(ip));
            let last = ip.octets()[3];
            assert!((2..=254).contains(&last), "{ip} outside the usable range");
        }
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
