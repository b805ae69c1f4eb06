//! Source NAT: the gateway addresses and ports new flows are given as
//! their source, so that a backend answers the gateway and not the client
//! (a one-arm gateway in a cluster whose Pods reach clients directly).
//!
//! A port is in use exactly while a flow's reply key (backend, SNAT
//! address, backend port, SNAT port, protocol) is in the conntrack index:
//! there is no separate bitmap to keep in step, so a port returns to the
//! pool by whatever path its flow leaves the table (expiry, eviction,
//! retirement, TIME_WAIT replacement). Allocation is therefore per
//! (SNAT address, backend address, backend port, protocol), as in Linux's
//! nf_nat and Cilium: one backend can carry the whole range from every
//! SNAT address. A new flow probes ports from a random start (its keyed
//! forward hash) in rounds of at most 128, 64, 32 and 16 ports, each
//! round from a new start (nf_nat_l4proto_unique_tuple's bound), so an
//! allocation costs at most 240 index probes however full the range is;
//! a range no larger than the first round is searched whole. Within a
//! round the ports are a stride apart, the stride (coprime with the
//! range's size, so a round never meets a port twice) drawn by the hash
//! from 64 the pool computes at start, so that probing divides nothing: consecutive ports, as nf_nat probes them, would make every
//! flow that starts inside a run of taken ports walk the whole run, and
//! runs grow as the range fills (linear probing's primary clustering:
//! about 3.6 probes per allocation at 60% full against 2.5, 50 against 10
//! at 90%). Addresses are used in turn; a flow moves on to the next
//! address when its first one has no port.

use std::net::{IpAddr, Ipv4Addr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam::utils::CachePadded;

use super::slab::SNAT_ADDRESSES_MAX;
use crate::family::IpFamily;

/// Probe rounds: ports tried from each new random start.
const ROUNDS: [u32; 4] = [128, 64, 32, 16];

/// Strides a pool draws from, each coprime with the range's size:
/// computed once, so that a probe costs no division.
const STRIDES: usize = 64;

/// What source NAT a table applies to new flows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnatConfig<A = Ipv4Addr> {
    /// The gateway addresses backends see as the peer; at most 127.
    pub addresses: Vec<A>,
    /// The ports given out on each address.
    pub ports: RangeInclusive<u16>,
}

/// Why a [`SnatConfig`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnatError {
    #[error("source NAT needs at least one address")]
    NoAddress,
    #[error("{0} source NAT addresses given; a table tells at most 127 apart")]
    TooManyAddresses(usize),
    #[error("source NAT address {0} given twice")]
    DuplicateAddress(IpAddr),
    #[error("source NAT address {0} is not a unicast address")]
    BadAddress(IpAddr),
    #[error("source NAT port range {0}-{1} is empty or includes port 0")]
    BadRange(u16, u16),
}

/// The source NAT addresses and ports of a table, and the ports in use
/// per address.
#[derive(Debug)]
pub(super) struct SnatPool<A> {
    /// Empty when source NAT is off. A record's SNAT index is 1 + the
    /// position here.
    addresses: Box<[A]>,
    low: u16,
    size: u32,
    /// Strides coprime with `size`, spread over `1..size`.
    strides: [u32; STRIDES],
    /// Flows holding a port, per address.
    in_use: Box<[CachePadded<AtomicU64>]>,
    /// The address the next new flow tries first.
    turn: CachePadded<AtomicUsize>,
}

/// Ordering for the pool's counters: statistics and a rotation start,
/// publishing no other memory.
const STAT: Ordering = Ordering::Relaxed;

impl<A> Default for SnatPool<A> {
    fn default() -> Self {
        Self {
            addresses: Box::default(),
            low: 0,
            size: 0,
            strides: [1; STRIDES],
            in_use: Box::default(),
            turn: CachePadded::default(),
        }
    }
}

/// Whether `ip` may be a source NAT address: unicast, not loopback.
fn usable(ip: IpAddr) -> bool {
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    !(ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() || broadcast)
}

impl<A: IpFamily> SnatPool<A> {
    pub fn new(config: &SnatConfig<A>) -> Result<SnatPool<A>, SnatError> {
        let addresses = &config.addresses;
        if addresses.is_empty() {
            return Err(SnatError::NoAddress);
        }
        if addresses.len() > SNAT_ADDRESSES_MAX {
            return Err(SnatError::TooManyAddresses(addresses.len()));
        }
        for (i, a) in addresses.iter().enumerate() {
            if !usable((*a).into()) {
                return Err(SnatError::BadAddress((*a).into()));
            }
            if addresses[..i].contains(a) {
                return Err(SnatError::DuplicateAddress((*a).into()));
            }
        }
        let (low, high) = (*config.ports.start(), *config.ports.end());
        if low == 0 || low > high {
            return Err(SnatError::BadRange(low, high));
        }
        let size = u32::from(high - low) + 1;
        let strides = std::array::from_fn(|i| {
            coprime_stride(mix(i as u64, u64::MAX), u64::from(size)) as u32
        });
        Ok(SnatPool {
            addresses: addresses.clone().into_boxed_slice(),
            low,
            size,
            strides,
            in_use: addresses.iter().map(|_| Default::default()).collect(),
            turn: Default::default(),
        })
    }

    #[inline(always)]
    pub fn is_on(&self) -> bool {
        !self.addresses.is_empty()
    }

    pub fn addresses(&self) -> &[A] {
        &self.addresses
    }

    pub fn ports(&self) -> Option<RangeInclusive<u16>> {
        self.is_on()
            .then(|| self.low..=(u32::from(self.low) + self.size - 1) as u16)
    }

    /// The address a record's SNAT index (1-based) stands for; the
    /// unspecified address, which no packet carries, for an index the
    /// table does not have.
    #[inline]
    pub fn address(&self, index: u8) -> A {
        usize::from(index)
            .checked_sub(1)
            .and_then(|i| self.addresses.get(i))
            .copied()
            .unwrap_or(A::UNSPECIFIED)
    }

    /// Whether `index` names one of the table's addresses.
    pub fn knows(&self, index: u8) -> bool {
        index != 0 && usize::from(index) <= self.addresses.len()
    }

    /// The SNAT indexes (1-based) a new flow tries, first the one whose
    /// turn it is.
    pub fn indexes_in_turn(&self) -> impl Iterator<Item = u8> + '_ {
        let n = self.addresses.len();
        let first = if n > 1 {
            self.turn.fetch_add(1, STAT)
        } else {
            0
        };
        (0..n).map(move |i| ((first + i) % n) as u8 + 1)
    }

    /// The index [`SnatPool::indexes_in_turn`] would give first now,
    /// without taking the turn (a prefetch's guess); `None` when source
    /// NAT is off.
    #[inline]
    pub fn next_in_turn(&self) -> Option<u8> {
        let n = self.addresses.len();
        let first = if n > 1 { self.turn.load(STAT) } else { 0 };
        (n > 0).then(|| (first % n) as u8 + 1)
    }

    /// The ports a new flow with forward hash `hash` probes, in order
    /// (see the module docs).
    #[inline]
    pub fn probes(&self, hash: u64) -> Probes<'_, A> {
        let rounds = if self.size <= ROUNDS[0] {
            1
        } else {
            ROUNDS.len() as u8
        };
        let mut probes = Probes {
            pool: self,
            hash,
            round: 0,
            rounds,
            left: 0,
            at: 0,
            stride: 0,
        };
        probes.start_round();
        probes
    }

    /// A flow took a port on address `index` (1-based).
    #[inline]
    pub fn took(&self, index: u8) {
        if let Some(c) = usize::from(index)
            .checked_sub(1)
            .and_then(|i| self.in_use.get(i))
        {
            c.fetch_add(1, STAT);
        }
    }

    /// A flow holding a port on address `index` (1-based) left.
    #[inline]
    pub fn released(&self, index: u8) {
        if let Some(c) = usize::from(index)
            .checked_sub(1)
            .and_then(|i| self.in_use.get(i))
        {
            c.fetch_sub(1, STAT);
        }
    }

    /// Ports in use per address.
    pub fn in_use(&self) -> Vec<(A, u64)> {
        self.addresses
            .iter()
            .zip(self.in_use.iter())
            .map(|(a, c)| (*a, c.load(STAT)))
            .collect()
    }
}

/// The ports one new flow probes (see [`SnatPool::probes`]): each
/// round from a start and with a stride drawn from the flow's hash, a
/// port a step, with no division on the way.
#[derive(Debug)]
pub(super) struct Probes<'a, A> {
    pool: &'a SnatPool<A>,
    hash: u64,
    round: u8,
    rounds: u8,
    /// Ports left in this round.
    left: u32,
    /// The next port's offset in the range.
    at: u32,
    stride: u32,
}

impl<A> Probes<'_, A> {
    /// Draws the round's start (the high half of the mix, scaled to the
    /// range by a multiply: Lemire's reduction) and stride (one of the
    /// pool's, by the low bits).
    #[inline]
    fn start_round(&mut self) {
        let size = self.pool.size;
        let Some(&len) = ROUNDS.get(usize::from(self.round)) else {
            self.left = 0;
            return;
        };
        let m = mix(self.hash, u64::from(self.round));
        self.at = (((m >> 32) * u64::from(size)) >> 32) as u32;
        self.stride = self.pool.strides[(m as usize) % STRIDES];
        self.left = len.min(size);
    }
}

impl<A> Iterator for Probes<'_, A> {
    type Item = u16;

    #[inline]
    fn next(&mut self) -> Option<u16> {
        while self.left == 0 {
            self.round += 1;
            if self.round >= self.rounds {
                return None;
            }
            self.start_round();
        }
        let port = self.pool.low + self.at as u16;
        self.left -= 1;
        // `at` and `stride` are below `size`: one subtraction wraps.
        self.at += self.stride;
        if self.at >= self.pool.size {
            self.at -= self.pool.size;
        }
        Some(port)
    }
}

/// A 64-bit mix of the (keyed, so unpredictable) flow hash and a round
/// number: each round starts somewhere unrelated to the last.
#[inline]
fn mix(hash: u64, round: u64) -> u64 {
    // splitmix64's finaliser.
    let mut z = hash.wrapping_add(round.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A stride from `seed` in `1..size` (1 for a range of one or two ports)
/// that shares no factor with `size`, so that `size` steps of it visit
/// every port once.
fn coprime_stride(seed: u64, size: u64) -> u64 {
    if size <= 2 {
        return 1;
    }
    let mut stride = 1 + seed % (size - 1);
    while gcd(stride, size) != 1 {
        // 1 is coprime with everything: this ends within size steps.
        stride = if stride + 1 >= size { 1 } else { stride + 1 };
    }
    stride
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(ports: RangeInclusive<u16>) -> SnatPool<Ipv4Addr> {
        SnatPool::new(&SnatConfig {
            addresses: vec![Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2)],
            ports,
        })
        .expect("valid pool")
    }

    #[test]
    fn a_small_range_is_probed_whole_once() {
        let p = pool(1000..=1063);
        let mut probed: Vec<u16> = p.probes(12345).collect();
        assert_eq!(probed.len(), 64);
        probed.sort_unstable();
        assert_eq!(probed, (1000..=1063).collect::<Vec<_>>());
    }

    #[test]
    fn every_range_size_is_probed_whole_by_a_small_round_and_without_repeats_by_a_large_one() {
        for size in [1u16, 2, 3, 4, 6, 9, 60, 64, 100, 127, 128, 129, 4535, 4536] {
            let p = pool(1000..=1000 + size - 1);
            for hash in [0u64, 1, 7, 99, 12345, u64::MAX] {
                let probed: Vec<u16> = p.probes(hash).collect();
                assert!(probed.iter().all(|&q| (1000..1000 + size).contains(&q)));
                // Each round visits distinct ports.
                let mut at = 0;
                let rounds: &[u32] = if u32::from(size) <= ROUNDS[0] {
                    &[ROUNDS[0]]
                } else {
                    &ROUNDS
                };
                for &len in rounds {
                    let n = len.min(u32::from(size)) as usize;
                    let mut round = probed[at..at + n].to_vec();
                    round.sort_unstable();
                    round.dedup();
                    assert_eq!(
                        round.len(),
                        n,
                        "size {size}, hash {hash}: a round repeats a port"
                    );
                    at += n;
                }
                assert_eq!(at, probed.len());
            }
        }
    }

    #[test]
    fn probes_of_a_large_range_are_not_consecutive() {
        let p = pool(61000..=65535);
        let steps: Vec<i32> = p
            .probes(4242)
            .take(5)
            .collect::<Vec<_>>()
            .windows(2)
            .map(|w| i32::from(w[1]) - i32::from(w[0]))
            .collect();
        assert!(
            steps.iter().any(|&d| d != 1),
            "a stride, not the next port every time: {steps:?}"
        );
    }

    #[test]
    fn a_large_range_is_probed_in_bounded_rounds_inside_it() {
        let p = pool(61000..=65535);
        let probed: Vec<u16> = p.probes(99).collect();
        assert_eq!(probed.len(), 128 + 64 + 32 + 16);
        assert!(probed.iter().all(|p| (61000..=65535).contains(p)));
        assert_ne!(
            p.probes(99).next(),
            p.probes(100).next(),
            "different flows start at different ports"
        );
    }

    /// Each new flow tries every address once, from the one whose turn
    /// it is, wrapping past the last; a pool of one address always
    /// starts from it.
    #[test]
    fn each_flow_tries_every_address_from_its_turn() {
        let with = |n: u8| {
            SnatPool::new(&SnatConfig {
                addresses: (1..=n).map(|i| Ipv4Addr::new(198, 18, 0, i)).collect(),
                ports: 61000..=61063,
            })
            .expect("valid pool")
        };
        let three = with(3);
        let orders: Vec<Vec<u8>> = (0..4).map(|_| three.indexes_in_turn().collect()).collect();
        assert_eq!(
            orders,
            [vec![1, 2, 3], vec![2, 3, 1], vec![3, 1, 2], vec![1, 2, 3]]
        );
        let one = with(1);
        for _ in 0..3 {
            assert_eq!(one.next_in_turn(), Some(1));
            assert_eq!(one.indexes_in_turn().collect::<Vec<_>>(), [1]);
        }
    }

    #[test]
    fn addresses_take_turns_and_bad_configs_are_refused() {
        let p = pool(1..=2);
        // A prefetch's guess names the next first without taking the turn.
        let firsts: Vec<(u8, u8, u8)> = (0..4)
            .map(|_| {
                let guess = p.next_in_turn().unwrap();
                (
                    guess,
                    p.next_in_turn().unwrap(),
                    p.indexes_in_turn().next().unwrap(),
                )
            })
            .collect();
        assert_eq!(firsts, [(1, 1, 1), (2, 2, 2), (1, 1, 1), (2, 2, 2)]);
        assert_eq!(SnatPool::<Ipv4Addr>::default().next_in_turn(), None);
        assert_eq!(p.address(2), Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(p.address(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(p.address(3), Ipv4Addr::UNSPECIFIED);
        let bad =
            |addresses: Vec<Ipv4Addr>, ports| SnatPool::new(&SnatConfig { addresses, ports }).err();
        let a = Ipv4Addr::new(198, 18, 0, 1);
        assert_eq!(bad(vec![], 1..=2), Some(SnatError::NoAddress));
        assert_eq!(
            bad(vec![a, a], 1..=2),
            Some(SnatError::DuplicateAddress(a.into()))
        );
        assert_eq!(bad(vec![a], 0..=2), Some(SnatError::BadRange(0, 2)));
        assert_eq!(
            bad(vec![Ipv4Addr::UNSPECIFIED], 1..=2),
            Some(SnatError::BadAddress(Ipv4Addr::UNSPECIFIED.into()))
        );
    }
}
