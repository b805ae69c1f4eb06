//! Maglev property tests: the paper's example, balance, minimal
//! disruption and determinism.

use std::net::Ipv4Addr;

use cipgw_config::Protocol;
use proptest::prelude::*;

use super::*;
use crate::lb::Rng;

/// The paper's Table 1: M = 7, B0 (offset 3, skip 4), B1 (offset 0,
/// skip 2), B2 (offset 3, skip 1); then B1 is removed.
#[test]
fn the_papers_table_1_before_and_after_b1_is_removed() {
    let b0 = Permutation { offset: 3, skip: 4 };
    let b1 = Permutation { offset: 0, skip: 2 };
    let b2 = Permutation { offset: 3, skip: 1 };
    let list = |p: Permutation| (0..7).map(|j| p.at(j, 7)).collect::<Vec<_>>();
    assert_eq!(list(b0), [3, 0, 4, 1, 5, 2, 6], "B0's permutation");
    assert_eq!(list(b1), [0, 2, 4, 6, 1, 3, 5], "B1's permutation");
    assert_eq!(list(b2), [3, 4, 5, 6, 0, 1, 2], "B2's permutation");

    let names = ["B0", "B1", "B2"];
    let before: Vec<&str> = populate(&[b0, b1, b2], 7)
        .iter()
        .map(|&i| names[usize::from(i)])
        .collect();
    assert_eq!(
        before,
        ["B1", "B0", "B1", "B0", "B2", "B2", "B0"],
        "Table 1, before"
    );

    let names = ["B0", "B2"];
    let after: Vec<&str> = populate(&[b0, b2], 7)
        .iter()
        .map(|&i| names[usize::from(i)])
        .collect();
    assert_eq!(
        after,
        ["B0", "B0", "B0", "B0", "B2", "B2", "B2"],
        "Table 1, after B1 is removed"
    );
}

fn backends(n: u32) -> Vec<Backend> {
    (0..n).map(|i| test_backend(i, 8080)).collect()
}

fn counts(table: &MaglevTable) -> Vec<usize> {
    let mut counts = vec![0usize; table.backends().len()];
    for &e in table.entries() {
        counts[usize::from(e)] += 1;
    }
    counts
}

/// N = 1,000 and M = 65,537: every backend's share lies within 1% of
/// the mean (population is round-robin, so shares differ by at most 1).
#[test]
fn a_thousand_backends_get_equal_shares_within_one_percent() {
    let table = MaglevTable::build(&backends(1000), 65_537, 7).expect("table builds");
    let mean = 65_537.0 / 1000.0;
    let counts = counts(&table);
    let (min, max) = (
        *counts.iter().min().expect("backends"),
        *counts.iter().max().expect("backends"),
    );
    assert!(
        min as f64 >= mean * 0.99 && max as f64 <= mean * 1.01,
        "shares {min}..{max}, mean {mean}"
    );
    assert!(max - min <= 1, "round-robin population: {min}..{max}");
}

/// Entries whose backend differs between two tables.
fn moved(before: &MaglevTable, after: &MaglevTable) -> usize {
    before
        .entries()
        .iter()
        .zip(after.entries())
        .filter(|(&a, &b)| before.backends()[usize::from(a)] != after.backends()[usize::from(b)])
        .count()
}

/// The measured disruption curve: removing k% of 1,000 backends at
/// random moves at most 2k% of the entries at M = 655,373 (the paper's
/// larger table in its Figure 12). At M = 65,537 (65 entries per
/// backend) the curve is measured and printed but bounded only below:
/// it moves 3.3% for k = 1 and 4.7% for k = 2, above 2k% (the paper's
/// figure shows the same: a smaller table is less resilient). Prints the
/// curves recorded in benches/RESULTS.md (`-- --nocapture`).
#[test]
fn removing_k_percent_of_backends_moves_at_most_2k_percent() {
    let all = backends(1000);
    for m in [65_537u32, 655_373] {
        let before = MaglevTable::build(&all, m, 7).expect("table builds");
        let mut rng = Rng::new(0x6d61_676c_6576);
        for k in 1..=10usize {
            let mut kept = all.clone();
            for _ in 0..k * 10 {
                let victim = rng.below(kept.len());
                kept.swap_remove(victim);
            }
            let after = MaglevTable::build(&kept, m, 7).expect("table builds");
            let moved = moved(&before, &after);
            let percent = 100.0 * moved as f64 / f64::from(m);
            println!("maglev disruption: removed {k}% of 1000 backends, M={m}: {moved} entries moved = {percent:.2}% (minimal {k}%)");
            assert!(
                percent >= k as f64 * 0.9,
                "the removed backends' own entries must move: {percent:.2}% for k={k}"
            );
            assert!(
                m != 655_373 || percent <= 2.0 * k as f64,
                "k={k}: {percent:.2}% moved, more than 2k%"
            );
        }
    }
}

/// The same set in any order, with duplicates, gives the same table.
#[test]
fn a_store_shares_one_table_per_endpoint_set() {
    let mut store = MaglevTables::new(1021, 3);
    store.begin_round();
    let mut set = backends(10);
    let a = store.get(&set).expect("builds");
    set.reverse();
    set.push(set[0]);
    let b = store.get(&set).expect("builds");
    assert!(Arc::ptr_eq(&a, &b), "one table for one set");
    let c = store.get(&backends(9)).expect("builds");
    assert!(!Arc::ptr_eq(&a, &c));
    assert_eq!(store.len(), 2);
    store.finish_round();
    store.begin_round();
    let d = store.get(&backends(10)).expect("builds");
    assert!(Arc::ptr_eq(&a, &d), "kept from the previous round");
    store.finish_round();
    assert_eq!(
        store.len(),
        1,
        "the 9-backend table was not used this round"
    );
    assert_eq!(
        store.memory(),
        1021 * 2 + 10 * std::mem::size_of::<Backend>()
    );
    assert_eq!(
        store.get::<Ipv4Addr>(&[]).err(),
        Some(BuildError::NoBackends)
    );
}

#[test]
fn seeds_and_sizes_change_the_table() {
    let set = backends(10);
    let a = MaglevTable::build(&set, 1021, 1).expect("builds");
    let b = MaglevTable::build(&set, 1021, 2).expect("builds");
    let c = MaglevTable::build(&set, 1031, 1).expect("builds");
    assert_ne!(a.entries(), b.entries());
    assert_ne!(a.fingerprint(), b.fingerprint());
    assert_ne!(a.fingerprint(), c.fingerprint());
}

/// The hashes are this module's own: a gateway built from another
/// release must build the same table. This pins one table's
/// fingerprint; changing the hashing is a compatibility break for mixed
/// fleets and must change this value on purpose.
#[test]
fn the_fingerprint_is_stable_across_builds() {
    let table = MaglevTable::build(&backends(3), 7, 0).expect("builds");
    assert_eq!(
        format!("{:016x}", table.fingerprint()),
        PINNED_FINGERPRINT,
        "entries {:?}",
        table.entries()
    );
}

const PINNED_FINGERPRINT: &str = "922d557e95ea29ab";

#[test]
fn primes() {
    let primes: Vec<u64> = (0..30).filter(|&n| is_prime(n)).collect();
    assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
    assert!(is_prime(16_381) && is_prime(65_537) && is_prime(1_021));
    assert!(!is_prime(16_383) && !is_prime(65_535));
}

#[test]
fn flows_spread_over_every_backend() {
    let table = MaglevTable::build(&backends(10), 16_381, 0).expect("builds");
    let mut seen = [0usize; 10];
    for port in 0..10_000u16 {
        let key = FlowKey {
            src: Ipv4Addr::new(198, 18, 0, 2),
            dst: Ipv4Addr::new(198, 18, 100, 10),
            src_port: 20_000 + port,
            dst_port: 80,
            protocol: Protocol::Tcp,
        };
        seen[table.pick(&key)] += 1;
    }
    assert!(
        seen.iter().all(|&n| (800..1200).contains(&n)),
        "10,000 flows over 10 backends: {seen:?}"
    );
}

proptest! {
    /// Any order of the endpoint list, with or without duplicates,
    /// builds the identical table.
    #[test]
    fn determinism_under_any_order(
        n in 1u32..40,
        seed in any::<u64>(),
        shuffle in any::<u64>(),
        duplicate in any::<bool>(),
    ) {
        let set = backends(n);
        let mut shuffled = set.clone();
        let mut rng = Rng::new(shuffle);
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, rng.below(i + 1));
        }
        if duplicate {
            shuffled.push(set[0]);
        }
        let a = MaglevTable::build(&set, 251, seed).expect("builds");
        let b = MaglevTable::build(&shuffled, 251, seed).expect("builds");
        prop_assert_eq!(a.entries(), b.entries());
        prop_assert_eq!(a.backends(), b.backends());
        prop_assert_eq!(a.fingerprint(), b.fingerprint());
    }
}

/// The flow hash every gateway computes: the seeded hash of the two
/// 5-tuple words, whichever way it is computed, and pinned for a fixed
/// input so that a change of it (which would make gateways of two
/// versions disagree during a rollout) shows here first.
#[test]
fn the_flow_hash_is_stable() {
    let key = FlowKey {
        src: Ipv4Addr::new(198, 18, 0, 2),
        dst: Ipv4Addr::new(198, 18, 100, 10),
        src_port: 40000,
        dst_port: 8080,
        protocol: Protocol::Tcp,
    };
    let words = [
        (u64::from(u32::from(key.src)) << 32) | u64::from(u32::from(key.dst)),
        (40000u64 << 24) | (8080 << 8) | 6,
    ];
    for seed in [0, 7, u64::MAX] {
        assert_eq!(
            flow_hash(seed, &key),
            hash_words(seed, FLOW_DOMAIN, &words),
            "seed {seed}"
        );
    }
    let pinned = flow_hash(0, &key);
    const PINNED_FLOW_HASH: u64 = 0xb472_4e2d_7641_1655;
    assert_eq!(pinned, PINNED_FLOW_HASH, "flow hash changed: {pinned:#x}");
}

/// IPv6 backends 2001:2:0:2::`i`, port `port`.
fn backends6(n: u16, port: u16) -> Vec<Backend<std::net::Ipv6Addr>> {
    (0..n)
        .map(|i| Backend {
            ip: std::net::Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 0x100 + i),
            port,
        })
        .collect()
}

/// An IPv6 table is the paper's too: balanced, the same for any order,
/// spread over every backend by the flow hash, kept apart from the IPv4
/// tables in a store, and with a flow hash of the whole addresses.
#[test]
fn ipv6_tables_balance_share_and_spread() {
    let set = backends6(100, 8080);
    let table = MaglevTable::build(&set, 16_381, 7).expect("builds");
    let mut counts = vec![0usize; 100];
    for &e in table.entries() {
        counts[usize::from(e)] += 1;
    }
    let (min, max) = (
        *counts.iter().min().expect("backends"),
        *counts.iter().max().expect("backends"),
    );
    assert!(max - min <= 1, "round-robin population: {min}..{max}");
    let mut reversed = set.clone();
    reversed.reverse();
    reversed.push(set[3]);
    let again = MaglevTable::build(&reversed, 16_381, 7).expect("builds");
    assert_eq!(table.entries(), again.entries());
    assert_eq!(table.fingerprint(), again.fingerprint());
    assert_ne!(
        table.fingerprint(),
        MaglevTable::build(&set, 16_381, 8)
            .expect("builds")
            .fingerprint()
    );

    let small = MaglevTable::build(&backends6(10, 8080), 16_381, 0).expect("builds");
    let mut seen = [0usize; 10];
    let vip = std::net::Ipv6Addr::new(0x2001, 2, 0, 0xff, 0, 0, 0, 0x10);
    for port in 0..10_000u16 {
        let key = FlowKey {
            src: std::net::Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2),
            dst: vip,
            src_port: 20_000 + port,
            dst_port: 80,
            protocol: Protocol::Tcp,
        };
        seen[small.pick(&key)] += 1;
    }
    assert!(
        seen.iter().all(|&n| (800..1200).contains(&n)),
        "10,000 flows over 10 backends: {seen:?}"
    );
    // Clients differing only in the high half of their address hash
    // apart: the whole address is hashed, not a fold of it.
    let key = |hi: u16| FlowKey {
        src: std::net::Ipv6Addr::new(0x2001, 2, 0, hi, 0, 0, 0, 2),
        dst: vip,
        src_port: 40_000,
        dst_port: 80,
        protocol: Protocol::Tcp,
    };
    assert_ne!(flow_hash(0, &key(1)), flow_hash(0, &key(2)));

    let mut store = MaglevTables::new(1021, 3);
    store.begin_round();
    let v6 = store.get(&backends6(10, 8080)).expect("builds");
    let v6_again = store.get(&backends6(10, 8080)).expect("builds");
    assert!(Arc::ptr_eq(&v6, &v6_again), "one table for one set");
    store.get(&backends(10)).expect("builds");
    assert_eq!(store.len(), 2, "one table per family");
    assert_eq!(
        store.memory(),
        2 * 1021 * 2
            + 10 * std::mem::size_of::<Backend>()
            + 10 * std::mem::size_of::<Backend<std::net::Ipv6Addr>>()
    );
    store.finish_round();
    store.begin_round();
    store.get(&backends(10)).expect("builds");
    store.finish_round();
    assert_eq!(store.len(), 1, "the IPv6 table was not used this round");
}

/// The IPv6 table and flow hash are pinned like the IPv4 ones: a change
/// would make gateways of two versions disagree on IPv6 flows.
#[test]
fn the_ipv6_fingerprint_and_flow_hash_are_stable() {
    let table = MaglevTable::build(&backends6(3, 8080), 7, 0).expect("builds");
    let key = FlowKey {
        src: std::net::Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2),
        dst: std::net::Ipv6Addr::new(0x2001, 2, 0, 0xff, 0, 0, 0, 0x10),
        src_port: 40000,
        dst_port: 8080,
        protocol: Protocol::Tcp,
    };
    assert_eq!(
        (
            format!("{:016x}", table.fingerprint()),
            format!("{:016x}", flow_hash(0, &key))
        ),
        (
            PINNED_FINGERPRINT6.to_string(),
            PINNED_FLOW_HASH6.to_string()
        ),
        "entries {:?}",
        table.entries()
    );
    // The seeded hash of five words: each address as two, then the
    // ports and protocol as for IPv4.
    let (src, dst) = (u128::from(key.src), u128::from(key.dst));
    let words = [
        (src >> 64) as u64,
        src as u64,
        (dst >> 64) as u64,
        dst as u64,
        (40000u64 << 24) | (8080 << 8) | 6,
    ];
    for seed in [0, 7, u64::MAX] {
        assert_eq!(
            flow_hash(seed, &key),
            hash_words(seed, FLOW_DOMAIN, &words),
            "seed {seed}"
        );
    }
}

const PINNED_FINGERPRINT6: &str = "382dc68f9b1f0499";
const PINNED_FLOW_HASH6: &str = "bda246385b617afd";
