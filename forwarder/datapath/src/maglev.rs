//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and
//! Reliable Software Network Load Balancer", NSDI 2016, section 3.4).
//!
//! Why: several gateways behind ECMP must send every packet of a
//! connection to the same Pod, whichever gateway the router hands it to.
//! With random choice each gateway decides alone; with Maglev every
//! gateway that has the same endpoints and the same hash seed builds the
//! same lookup table, and a flow's 5-tuple indexes it, so a gateway that
//! never saw a flow still picks its Pod. When an endpoint goes, only a
//! little more than its own share of the table moves (minimal
//! disruption), and the endpoints' shares differ by at most one entry.
//!
//! The algorithm is the paper's: each backend `i` has a preference list
//! `permutation[i][j] = (offset + j * skip) mod M` with
//! `offset = h1(backend) mod M` and `skip = h2(backend) mod (M - 1) + 1`;
//! M is prime, so every list is a permutation of `0..M`. Population
//! walks the backends round-robin, each taking its next preferred entry
//! that is still free, until all M entries are taken. The lists are
//! computed on the fly (`offset + j * skip`), not stored: a build needs
//! O(N) memory besides the table and O(M log M) steps.
//!
//! Invariants:
//! - Deterministic across gateways and object order: backends are sorted
//!   and deduplicated before population, and the hashes are this
//!   module's own fixed functions of the seed (not `ahash`, whose output
//!   depends on the CPU's AES support and the crate version, nor std's
//!   `DefaultHasher`, which is not promised stable across releases).
//! - Built on the control thread only ([`MaglevTables`], when a service
//!   table is compiled); a worker only indexes a finished table.
//! - Memory: an entry is a `u16` index into the table's sorted backends,
//!   so one table costs `2 * M` bytes (32 KiB at the default M = 16,381)
//!   plus its backends. Service ports with the same endpoint set share
//!   one table ([`MaglevTables`]), so N Maglev Service ports cost at most
//!   `distinct endpoint sets * 2 * M` bytes: 10,000 Services with 10,000
//!   different endpoint sets at M = 16,381 is 328 MB, at M = 1,021 (still
//!   100 entries per endpoint for 10 endpoints) 20 MB. Choose
//!   `--maglev-table-size` by that product; the paper asks M >> N (it
//!   uses M >= 100 N for its balance figures).
//! - A port with more than 65,535 endpoints cannot be indexed by `u16`:
//!   [`MaglevTable::build`] refuses it and the port keeps random choice.
//! - Both families: a table is of one family ([`MaglevFamily`]), as its
//!   Service port is. An IPv4 backend and flow hash as one and two words;
//!   an IPv6 one folds each address in as two words, so the IPv4 hashes
//!   (and so every IPv4 table and pick) are what they were before IPv6.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::conntrack::FlowKey;
use crate::family::IpFamily;
use crate::table::Backend;

/// The default lookup-table size: a prime near 16 Ki, 100 entries per
/// endpoint up to 163 endpoints.
pub const DEFAULT_TABLE_SIZE: u32 = cipgw_config::model::DEFAULT_MAGLEV_TABLE_SIZE;

pub use cipgw_config::model::is_prime;

/// The default hash seed. Gateways that share a seed agree on backends;
/// a secret seed keeps clients from aiming crafted 5-tuples at one Pod.
pub const DEFAULT_HASH_SEED: u64 = 0;

/// The most backends a table indexes (entries are `u16`).
pub const MAX_BACKENDS: usize = u16::MAX as usize;

/// The splitmix64 finalizer (Steele, Lea, Flood 2014): a bijection on
/// u64 with full avalanche. Fixed constants, so every gateway and every
/// build computes the same value.
#[inline]
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A seeded hash of a few words: each word is folded in through [`mix`].
#[inline]
fn hash_words(seed: u64, domain: u64, words: &[u64]) -> u64 {
    let mut h = mix(seed ^ domain);
    for &w in words {
        h = mix(h ^ w);
    }
    h
}

/// Domain separators: `h1`, `h2` and the flow hash are independent
/// functions of the same seed.
const OFFSET_DOMAIN: u64 = 0x6f66_6673_6574_0001;
const SKIP_DOMAIN: u64 = 0x736b_6970_0000_0002;
const FLOW_DOMAIN: u64 = 0x666c_6f77_0000_0003;
const FINGERPRINT_DOMAIN: u64 = 0x6670_7269_6e74_0004;

/// The ports and protocol of a flow, in one word.
#[inline]
fn ports_word<A>(key: &FlowKey<A>) -> u64 {
    (u64::from(key.src_port) << 24)
        | (u64::from(key.dst_port) << 8)
        | u64::from(key.protocol.ip_number())
}

/// An IPv6 address as two words, high half first.
#[inline]
fn halves(ip: Ipv6Addr) -> [u64; 2] {
    let bits = u128::from(ip);
    [(bits >> 64) as u64, bits as u64]
}

/// A family whose Service ports may use Maglev: how its backends and
/// flows are hashed, and where [`MaglevTables`] keeps its tables.
pub trait MaglevFamily: IpFamily {
    /// The seeded hash of a backend in `domain` (offset, skip).
    fn backend_hash(backend: &Backend<Self>, seed: u64, domain: u64) -> u64;

    /// Appends the words a table's fingerprint covers for `backend`.
    fn backend_words(backend: &Backend<Self>, words: &mut Vec<u64>);

    /// [`flow_hash`] from its seed's first round, `mix(seed ^
    /// FLOW_DOMAIN)`, which a table computes once: the same value, one
    /// round fewer per new flow.
    fn flow_hash_from(basis: u64, key: &FlowKey<Self>) -> u64;

    /// The family's tables in a store.
    fn store(tables: &mut MaglevTables) -> &mut MaglevStore<Self>;
}

impl MaglevFamily for Ipv4Addr {
    #[inline]
    fn backend_hash(backend: &Backend<Self>, seed: u64, domain: u64) -> u64 {
        hash_words(seed, domain, &[backend_word4(backend)])
    }

    fn backend_words(backend: &Backend<Self>, words: &mut Vec<u64>) {
        words.push(backend_word4(backend));
    }

    #[inline]
    fn flow_hash_from(basis: u64, key: &FlowKey<Self>) -> u64 {
        let addresses = (u64::from(u32::from(key.src)) << 32) | u64::from(u32::from(key.dst));
        mix(mix(basis ^ addresses) ^ ports_word(key))
    }

    fn store(tables: &mut MaglevTables) -> &mut MaglevStore<Self> {
        &mut tables.v4
    }
}

impl MaglevFamily for Ipv6Addr {
    #[inline]
    fn backend_hash(backend: &Backend<Self>, seed: u64, domain: u64) -> u64 {
        let [hi, lo] = halves(backend.ip);
        hash_words(seed, domain, &[hi, lo, u64::from(backend.port)])
    }

    fn backend_words(backend: &Backend<Self>, words: &mut Vec<u64>) {
        words.extend(halves(backend.ip));
        words.push(u64::from(backend.port));
    }

    #[inline]
    fn flow_hash_from(basis: u64, key: &FlowKey<Self>) -> u64 {
        let [src_hi, src_lo] = halves(key.src);
        let [dst_hi, dst_lo] = halves(key.dst);
        let mut h = basis;
        for word in [src_hi, src_lo, dst_hi, dst_lo, ports_word(key)] {
            h = mix(h ^ word);
        }
        h
    }

    fn store(tables: &mut MaglevTables) -> &mut MaglevStore<Self> {
        &mut tables.v6
    }
}

fn backend_word4(b: &Backend<Ipv4Addr>) -> u64 {
    (u64::from(u32::from(b.ip)) << 16) | u64::from(b.port)
}

/// The seeded hash of a flow's 5-tuple as the client sent it (client ->
/// VIP): what indexes a Maglev table. Every gateway with the same seed
/// computes the same value for the same packet.
#[inline]
pub fn flow_hash<A: MaglevFamily>(seed: u64, key: &FlowKey<A>) -> u64 {
    A::flow_hash_from(mix(seed ^ FLOW_DOMAIN), key)
}

/// One backend's preference list, `(offset + j * skip) mod M`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permutation {
    pub offset: u32,
    pub skip: u32,
}

impl Permutation {
    /// The paper's offset and skip of `backend` for a table of size `m`.
    pub fn of<A: MaglevFamily>(backend: &Backend<A>, seed: u64, m: u32) -> Self {
        let offset = A::backend_hash(backend, seed, OFFSET_DOMAIN) % u64::from(m);
        let skip = A::backend_hash(backend, seed, SKIP_DOMAIN) % u64::from(m - 1) + 1;
        Self {
            offset: offset as u32,
            skip: skip as u32,
        }
    }

    /// The `j`-th preferred entry (what [`populate`] walks
    /// incrementally).
    #[cfg(test)]
    fn at(self, j: u64, m: u32) -> usize {
        ((u64::from(self.offset) + j * u64::from(self.skip)) % u64::from(m)) as usize
    }
}

/// The paper's population (Pseudocode 1): backends take turns, each
/// claiming its next preferred free entry, until all `m` are taken.
/// Returns, for each entry, the index of its backend in `permutations`.
/// `m` must be prime and greater than 1, every skip in `1..m`, and
/// `permutations` non-empty and at most [`MAX_BACKENDS`] long.
pub fn populate(permutations: &[Permutation], m: u32) -> Box<[u16]> {
    assert!(
        !permutations.is_empty() && permutations.len() <= MAX_BACKENDS,
        "populate needs 1..={MAX_BACKENDS} backends"
    );
    debug_assert!(permutations.iter().all(|p| (1..m).contains(&p.skip)));
    const FREE: u16 = u16::MAX;
    let mut entries = vec![FREE; m as usize].into_boxed_slice();
    // Each backend's next candidate, `permutation[i][next[i]]`, advanced
    // by adding `skip` modulo M (the same sequence as `Permutation::at`,
    // without a division per step).
    let mut candidate: Vec<u32> = permutations.iter().map(|p| p.offset % m).collect();
    let advance = |c: &mut u32, skip: u32| {
        // c < m and skip < m, so one subtraction brings it below m.
        let next = u64::from(*c) + u64::from(skip);
        *c = if next >= u64::from(m) {
            (next - u64::from(m)) as u32
        } else {
            next as u32
        };
    };
    let mut filled = 0u32;
    loop {
        for (i, p) in permutations.iter().enumerate() {
            let c = &mut candidate[i];
            // Terminates: the list is a permutation of 0..m (m prime)
            // and at least one entry is free while filled < m.
            while entries[*c as usize] != FREE {
                advance(c, p.skip);
            }
            entries[*c as usize] = i as u16;
            advance(c, p.skip);
            filled += 1;
            if filled == m {
                return entries;
            }
        }
    }
}

/// Why a table could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildError {
    /// No backend to fill the table with.
    NoBackends,
    /// More backends than a `u16` entry can name.
    TooManyBackends(usize),
}

/// A finished Maglev lookup table for one endpoint set of family `A`.
/// Immutable.
#[derive(Debug)]
pub struct MaglevTable<A = Ipv4Addr> {
    seed: u64,
    /// `mix(seed ^ FLOW_DOMAIN)`: [`flow_hash`]'s first round.
    flow_basis: u64,
    /// Sorted, without duplicates: entry values index this.
    backends: Box<[Backend<A>]>,
    entries: Box<[u16]>,
    fingerprint: u64,
}

impl<A: MaglevFamily> MaglevTable<A> {
    /// Builds the table of `backends` (any order, duplicates ignored) for
    /// size `m` (prime) and `seed`. Control thread only: at M = 65,537
    /// this takes about a millisecond (benches/RESULTS.md).
    pub fn build(backends: &[Backend<A>], m: u32, seed: u64) -> Result<Self, BuildError> {
        let mut sorted = backends.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.is_empty() {
            return Err(BuildError::NoBackends);
        }
        if sorted.len() > MAX_BACKENDS {
            return Err(BuildError::TooManyBackends(sorted.len()));
        }
        let permutations: Vec<Permutation> =
            sorted.iter().map(|b| Permutation::of(b, seed, m)).collect();
        let entries = populate(&permutations, m);
        let mut words: Vec<u64> = Vec::with_capacity(2 + sorted.len() + entries.len());
        words.push(u64::from(m));
        words.push(seed);
        for backend in &sorted {
            A::backend_words(backend, &mut words);
        }
        words.extend(entries.iter().map(|&e| u64::from(e)));
        let fingerprint = hash_words(0, FINGERPRINT_DOMAIN, &words);
        Ok(Self {
            seed,
            flow_basis: mix(seed ^ FLOW_DOMAIN),
            backends: sorted.into_boxed_slice(),
            entries,
            fingerprint,
        })
    }

    /// The table's size M.
    pub fn size(&self) -> usize {
        self.entries.len()
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The backends, sorted: what entry values index.
    pub fn backends(&self) -> &[Backend<A>] {
        &self.backends
    }

    /// Entry values (backend indices), for tests and views.
    pub fn entries(&self) -> &[u16] {
        &self.entries
    }

    /// A hash of the size, seed, backends and every entry: two gateways
    /// with the same fingerprint pick the same backend for every flow.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Index into [`MaglevTable::backends`] of the backend for `key`
    /// (client -> VIP). Allocation-free; one hash and one load.
    #[inline]
    pub fn pick(&self, key: &FlowKey<A>) -> usize {
        let h = A::flow_hash_from(self.flow_basis, key);
        // Multiply-shift maps the 64-bit hash onto 0..M (Lemire).
        let slot = ((u128::from(h) * self.entries.len() as u128) >> 64) as usize;
        usize::from(self.entries[slot])
    }

    /// Approximate memory held, in bytes.
    pub fn memory(&self) -> usize {
        self.entries.len() * 2 + self.backends.len() * std::mem::size_of::<Backend<A>>()
    }
}

/// The control thread's store of Maglev tables: one per distinct
/// endpoint set, shared by every Service port with that set, and kept
/// from one table compilation to the next so that an unchanged set is
/// not rebuilt. Every table of a store has the same size and seed; each
/// family's tables are kept apart ([`MaglevStore`]).
#[derive(Debug)]
pub struct MaglevTables {
    size: u32,
    seed: u64,
    v4: MaglevStore<Ipv4Addr>,
    v6: MaglevStore<Ipv6Addr>,
    /// Compilation round: tables not used in the latest round are dropped
    /// by [`MaglevTables::finish_round`].
    round: u64,
}

/// A shared table and the compilation round that last used it.
type Used<A> = (Arc<MaglevTable<A>>, u64);

/// One family's tables in [`MaglevTables`], by endpoint set.
#[derive(Debug)]
pub struct MaglevStore<A> {
    /// ahash: a lookup per Maglev Service port on every compilation
    /// (10,000 per change at 10,000 Services) wants a fast hasher; its
    /// output never leaves the process, unlike the flow hash's.
    tables: HashMap<Box<[Backend<A>]>, Used<A>, ahash::RandomState>,
    scratch: Vec<Backend<A>>,
}

impl<A: MaglevFamily> MaglevStore<A> {
    fn new() -> Self {
        Self {
            tables: HashMap::default(),
            scratch: Vec::new(),
        }
    }

    fn finish_round(&mut self, round: u64) {
        self.tables.retain(|_, (_, used)| *used == round);
    }

    fn memory(&self) -> usize {
        self.tables.values().map(|(t, _)| t.memory()).sum()
    }
}

impl MaglevTables {
    /// A store for tables of size `size` (must be prime) and `seed`.
    pub fn new(size: u32, seed: u64) -> Self {
        debug_assert!(is_prime(u64::from(size)), "maglev table size must be prime");
        Self {
            size,
            seed,
            v4: MaglevStore::new(),
            v6: MaglevStore::new(),
            round: 0,
        }
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Starts a compilation round (see [`MaglevTables::finish_round`]).
    pub fn begin_round(&mut self) {
        self.round += 1;
    }

    /// The shared table of this endpoint set (any order, one family),
    /// built if new.
    pub fn get<A: MaglevFamily>(
        &mut self,
        backends: &[Backend<A>],
    ) -> Result<Arc<MaglevTable<A>>, BuildError> {
        let (size, seed, round) = (self.size, self.seed, self.round);
        let store = A::store(self);
        store.scratch.clear();
        store.scratch.extend_from_slice(backends);
        store.scratch.sort_unstable();
        store.scratch.dedup();
        if let Some((table, used)) = store.tables.get_mut(store.scratch.as_slice()) {
            *used = round;
            return Ok(Arc::clone(table));
        }
        let table = Arc::new(MaglevTable::build(&store.scratch, size, seed)?);
        store.tables.insert(
            store.scratch.clone().into_boxed_slice(),
            (Arc::clone(&table), round),
        );
        Ok(table)
    }

    /// Drops the tables the current round did not use (a published table
    /// still holds its own `Arc`s).
    pub fn finish_round(&mut self) {
        self.v4.finish_round(self.round);
        self.v6.finish_round(self.round);
    }

    /// Distinct tables held, both families.
    pub fn len(&self) -> usize {
        self.v4.tables.len() + self.v6.tables.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the tables.
    pub fn memory(&self) -> usize {
        self.v4.memory() + self.v6.memory()
    }
}

/// A backend for tests and benches: 198.18.x.y, port `port`.
#[cfg(any(test, feature = "harness"))]
pub fn test_backend(i: u32, port: u16) -> Backend {
    Backend {
        ip: std::net::Ipv4Addr::from(0xc612_0000 + 0x1_0000 + i),
        port,
    }
}

#[cfg(test)]
#[path = "maglev_tests.rs"]
mod tests;
