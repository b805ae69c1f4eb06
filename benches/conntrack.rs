//! Connection tracking at the scale: 1 M live flows, one or two
//! cores, no I/O.
//!
//! Cases (flows are TCP; "established" means the handshake completed, so
//! both directions are tracked, the flow is assured and no lookup
//! writes):
//! - `memory`: not timed by criterion; RSS (from /proc/self/statm) before
//!   building a default-sized table (max 1,048,576 flows) and after
//!   inserting 1 M flows (both directions), divided by the flows; printed
//!   raw and after `malloc_trim` returned freed memory to the kernel, for
//!   an IPv4 and an IPv6 table;
//! - `syn_flood/1M_flows/{guard,full}_2_threads`: the two flood cases
//!   below with both cores flooding at once (their own fresh flows, one
//!   table), the per-core figure of what a multi-queue gateway's workers
//!   share when new flows come on every queue;
//! - `lookup_established/1M_flows/1_thread`: lookup hits in a random order
//!   over both directions of 1 M flows, on core 0, batched as a worker
//!   does them for an RX batch of 32 (hash all, `prefetch_index` all,
//!   `prefetch_flow` all, then `lookup_candidate_into` each, from the
//!   record its `prefetch_flow` found);
//! - `lookup_established/1M_flows/1_thread_cached`: the same over 2,048
//!   of the keys only, whose buckets and records stay in the core's
//!   caches: the lookups' own cost, without memory's;
//! - `lookup_established/1M_flows/memory_floor`: what memory alone costs
//!   such a lookup, the batched lookups' baseline: per key one random
//!   line of an array the size of the table's index and then one random
//!   record of an array the size of its records, named by that line's
//!   content (as a bucket names its record), batched as the lookups (ask
//!   for every key's line, then read each and ask for its record, then
//!   read the records), with none of a lookup's own work;
//! - `lookup_established/1M_flows/1_thread_unbatched`: the same keys one
//!   `Conntrack::lookup` at a time, nothing prefetched;
//! - `lookup_established/1M_flows/1_thread_ipv6`: the same over an IPv6
//!   table (64-byte records, a line each, where IPv4's take half of one),
//!   the flows' addresses mapped into 2001:2::/64;
//! - `lookup_established/1M_flows/2_threads`: batched, on cores 0 and 1 at
//!   once, each with its own order; the figure is per core (each thread
//!   does the iterations; the time is the slower thread's);
//! - `insert/1M_flows`: `Conntrack::insert` of new flows (both directions,
//!   unreplied) into a table holding 1 M established flows, in chunks of
//!   64 Ki removed again outside the timing so the table stays at 1 M;
//! - `syn_flood/1M_flows/guard`: what a new-flow packet costs in conntrack
//!   (in batches of 32, as a worker's passes do them: the keys' buckets
//!   asked for; then, each bucket holding no signature of its key, the
//!   bucket its reply key goes in (`Conntrack::prefetch_reply`); then per
//!   packet a lookup miss and an insert) for a new 5-tuple every packet that
//!   never gets a reply, on core 0, with a table of 2 Mi flows where
//!   unreplied flows may hold 10 %: once the flood holds its share, every
//!   insert first evicts the oldest unreplied flow (the flood guard).
//!   Meanwhile core 1 does established lookups; its rate, and that none
//!   of them missed (established flows are never evicted), are printed;
//! - `syn_flood/1M_flows/full`: the same with the default table (max
//!   1,048,576 flows, 50 % unreplied) nearly full of the 1 M established
//!   flows: every insert evicts because the table is full.
//!
//! Every time is the measured thread's CPU time (see `CpuClock`), so
//! that other load on the shared machine preempting it does not count.
//!
//! Where the table lives: process memory by default; with
//! `CIPGW_BENCH_STATE_DIR=DIR`, a table file in DIR as `--state-dir`
//! makes it (a tmpfs: normal pages; a hugetlbfs mount with pages
//! reserved: huge pages).
//!
//! Run: `cargo bench -p cipgw-datapath --bench conntrack`.

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use cipgw_config::Protocol;
use cipgw_datapath::conntrack::persist::{self, TableFile};
use cipgw_datapath::conntrack::{
    self, Candidate, Conntrack, ConntrackConfig, FlowHit, FlowKey, FlowMeta,
};
use cipgw_datapath::family::IpFamily;
use cipgw_datapath::lb::Rng;
use cipgw_datapath::wire::tcp::flags::{ACK, SYN};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Live flows in every case.
const FLOWS: u32 = 1_000_000;
/// The coarse clock: constant, so lookups never write `last_seen`.
const NOW: u32 = 1_000;
/// Flood and insert keys are numbered from here up, apart from the live
/// flows' numbers.
const FRESH: u32 = 1 << 31;
/// Inserts timed between two untimed clean-ups.
const INSERT_CHUNK: u64 = 1 << 16;

/// Client address and port of flow `n`: 198.18.0.0/16, every port.
fn client(n: u32) -> (Ipv4Addr, u16) {
    (Ipv4Addr::from(0xc612_0000 | (n >> 16)), n as u16)
}

/// One of 16 VIPs (198.19.255.1-16, port 80).
fn vip(n: u32) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 255, 1 + (n % 16) as u8)
}

/// One of 64 backends (198.19.0.1-64, port 8080), spread by a hash.
fn backend(n: u32) -> (Ipv4Addr, u16) {
    let h = n.wrapping_mul(0x9e37_79b9) >> 26;
    (Ipv4Addr::new(198, 19, 0, 1 + h as u8), 8080)
}

fn forward(n: u32) -> FlowKey {
    let (src, src_port) = client(n);
    FlowKey {
        src,
        dst: vip(n),
        src_port,
        dst_port: 80,
        protocol: Protocol::Tcp,
    }
}

fn reply(n: u32) -> FlowKey {
    let (dst, dst_port) = client(n);
    let (src, src_port) = backend(n);
    FlowKey {
        src,
        dst,
        src_port,
        dst_port,
        protocol: Protocol::Tcp,
    }
}

/// An IPv4 address of the bench mapped into 2001:2::/64 (its bits in the
/// low 32, a constant in between, so the hash sees full-width keys).
fn six(ip: Ipv4Addr) -> Ipv6Addr {
    Ipv6Addr::from(
        (0x2001_0002_0000_0000_u128 << 64) | (0xabcd_u128 << 40) | u128::from(u32::from(ip)),
    )
}

fn key6(key: FlowKey) -> FlowKey<Ipv6Addr> {
    FlowKey {
        src: six(key.src),
        dst: six(key.dst),
        src_port: key.src_port,
        dst_port: key.dst_port,
        protocol: key.protocol,
    }
}

/// [`established`] over IPv6.
fn established6(config: ConntrackConfig) -> Conntrack<Ipv6Addr> {
    let ct = Conntrack::<Ipv6Addr>::new(config);
    for n in 0..FLOWS {
        let (b, port) = backend(n);
        ct.insert(key6(forward(n)), (six(b), port), NOW, FlowMeta::default())
            .expect("room for the live flows");
        ct.lookup(&key6(reply(n)), NOW, SYN | ACK)
            .expect("reply entry tracked");
        ct.lookup(&key6(forward(n)), NOW, ACK)
            .expect("forward entry tracked");
    }
    ct
}

/// An empty table with `config`, where `CIPGW_BENCH_STATE_DIR` says (see
/// the module docs).
fn table(config: ConntrackConfig) -> Conntrack {
    let Some(dir) = std::env::var_os("CIPGW_BENCH_STATE_DIR") else {
        return Conntrack::new(config);
    };
    static TABLES: AtomicU32 = AtomicU32::new(0);
    // Relaxed: only hands out distinct numbers.
    let n = TABLES.fetch_add(1, Ordering::Relaxed);
    let dir = std::path::Path::new(&dir).join(format!("bench-{}-{n}", std::process::id()));
    let file = TableFile::open(
        &dir,
        Conntrack::<std::net::Ipv4Addr>::records_for(&config),
        Conntrack::<std::net::Ipv4Addr>::LAYOUT,
        persist::monotonic_ns(),
    )
    .unwrap_or_else(|e| panic!("table file in {}: {e}", dir.display()));
    // The mapping keeps the file's pages until the table is dropped.
    let _ = std::fs::remove_dir_all(&dir);
    Conntrack::in_file(config, Arc::new(file))
}

/// A table with `config`, holding flows `0..FLOWS`, each an established
/// connection: SYN, SYN-ACK, and the client's ACK that assures it (a flow
/// a full table never evicts).
fn established(config: ConntrackConfig) -> Conntrack {
    established_for(config, 1)
}

/// [`established`] for `workers` workers, each with eviction queues of
/// its own (`Conntrack::with_workers`).
fn established_for(config: ConntrackConfig, workers: usize) -> Conntrack {
    let ct = table(config).with_workers(workers);
    for n in 0..FLOWS {
        ct.insert(forward(n), backend(n), NOW, FlowMeta::default())
            .expect("room for the live flows");
        ct.lookup(&reply(n), NOW, SYN | ACK)
            .expect("reply entry tracked");
        ct.lookup(&forward(n), NOW, ACK)
            .expect("forward entry tracked");
    }
    assert_eq!(ct.summary().flows, FLOWS as usize);
    assert_eq!(ct.summary().unreplied, 0);
    ct
}

/// Both directions' keys of the live flows, in a random order.
fn shuffled_keys(seed: u64) -> Vec<FlowKey> {
    let mut keys: Vec<FlowKey> = (0..FLOWS).flat_map(|n| [forward(n), reply(n)]).collect();
    let mut rng = Rng::new(seed);
    for i in (1..keys.len()).rev() {
        keys.swap(i, rng.below(i + 1));
    }
    keys
}

fn pin(core: usize) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        eprintln!("conntrack bench: could not pin to core {core}; figures are not per core");
    }
}

/// The calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID). The machine
/// is shared and small: time a measured thread spends descheduled while
/// other work runs on its core is not conntrack's, so every case is timed
/// in thread CPU time rather than wall time.
#[derive(Clone, Copy)]
struct CpuClock(Duration);

impl CpuClock {
    fn now() -> CpuClock {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec for the call to fill in.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
        CpuClock(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }

    fn elapsed(self) -> Duration {
        CpuClock::now().0.saturating_sub(self.0)
    }
}

/// Keys a worker looks up together: an RX batch.
const BATCH: usize = 32;

/// `iters` established lookups from `keys[*cursor..]`, wrapping, the way
/// a worker does them for an RX batch: hash every key, fetch the index
/// buckets, then the records, then look each up. Returns the time taken
/// and the number of misses.
fn lookups<A: IpFamily>(
    ct: &Conntrack<A>,
    keys: &[FlowKey<A>],
    cursor: &mut usize,
    iters: u64,
) -> (Duration, u64) {
    let mut misses = 0;
    let mut i = *cursor;
    let mut left = iters;
    let mut batch = [FlowKey {
        src: A::UNSPECIFIED,
        dst: A::UNSPECIFIED,
        src_port: 0,
        dst_port: 0,
        protocol: Protocol::Tcp,
    }; BATCH];
    let mut hashes = [0u64; BATCH];
    let mut candidates = [Candidate::NONE; BATCH];
    let mut hit = FlowHit::UNSET;
    let start = CpuClock::now();
    while left > 0 {
        let n = (left as usize).min(BATCH);
        for slot in &mut batch[..n] {
            *slot = keys[i];
            i += 1;
            if i == keys.len() {
                i = 0;
            }
        }
        for (key, hash) in batch[..n].iter().zip(&mut hashes) {
            *hash = ct.hash(black_box(key));
            ct.prefetch_index(*hash);
        }
        for (hash, candidate) in hashes[..n].iter().zip(&mut candidates) {
            *candidate = ct.prefetch_flow(*hash);
        }
        // As a worker looks up: the record the bucket pointed to read
        // first, the hit written where the caller keeps it and read
        // field by field.
        for ((key, hash), candidate) in batch[..n].iter().zip(&hashes).zip(&candidates) {
            let found = ct.lookup_candidate_into(key, *hash, *candidate, NOW, ACK, &mut hit);
            misses += u64::from(!found);
            black_box(hit.nat_port);
        }
        left -= n as u64;
    }
    let elapsed = start.elapsed();
    *cursor = i;
    (elapsed, misses)
}

/// `len` words from `fill`, in memory advised to transparent huge pages
/// before its first write, as the table's own regions are (a `Vec` this
/// large is otherwise backed by small pages here).
fn huge_words(len: usize, fill: impl FnMut(usize) -> u64) -> Vec<u64> {
    let mut words = Vec::with_capacity(len);
    conntrack::advise_huge_pages(words.spare_capacity_mut());
    words.extend((0..len).map(fill));
    words
}

/// Asks for the cache line holding `word`.
#[inline(always)]
fn prefetch_word(word: &u64) {
    conntrack::prefetch_line(word as *const u64 as usize);
}

/// The memory of [`lookups`] without their work (the `memory_floor`
/// case): `buckets` the size of the index of a table of `max_flows`
/// (8 words a bucket, its first naming a record), `records` the size of
/// its records, and `keys` random buckets, one per lookup.
struct MemoryFloor {
    /// [`BUCKET_WORDS`] words a bucket.
    buckets: Vec<u64>,
    records: Vec<u64>,
    record_words: usize,
    keys: Vec<u32>,
}

/// Words of a 64-byte index bucket.
const BUCKET_WORDS: usize = 8;

impl MemoryFloor {
    fn new(max_flows: usize, record_bytes: usize, lookups: usize) -> MemoryFloor {
        let mut rng = Rng::new(7);
        // As the index: a bucket of 64 bytes for every 3.5 keys of a full
        // table (two keys per flow).
        let buckets = (4 * max_flows).div_ceil(7);
        let record_words = record_bytes / std::mem::size_of::<u64>();
        // Live records are the first `FLOWS` of the slab, as a table
        // filled once hands them out.
        let live = FLOWS as usize;
        let bucket_words = huge_words(buckets * BUCKET_WORDS, |i| {
            if i % BUCKET_WORDS == 0 {
                (rng.below(live) * record_words) as u64
            } else {
                0
            }
        });
        let records = huge_words(max_flows * record_words, |i| i as u64);
        let keys = (0..lookups).map(|_| rng.below(buckets) as u32).collect();
        MemoryFloor {
            buckets: bucket_words,
            records,
            record_words,
            keys,
        }
    }

    /// `iters` lookups' worth of memory from `keys[*cursor..]`, batched
    /// as [`lookups`] does; returns the time taken.
    fn run(&self, cursor: &mut usize, iters: u64) -> Duration {
        let (buckets, records) = (&self.buckets, &self.records);
        let mut at = [0usize; BATCH];
        let mut i = *cursor;
        let mut left = iters;
        let mut sum = 0u64;
        let start = CpuClock::now();
        while left > 0 {
            let n = (left as usize).min(BATCH);
            for slot in &mut at[..n] {
                *slot = self.keys[i] as usize * BUCKET_WORDS;
                i += 1;
                if i == self.keys.len() {
                    i = 0;
                }
                prefetch_word(&buckets[*slot]);
            }
            for slot in &mut at[..n] {
                *slot = (buckets[*slot] as usize).min(records.len() - self.record_words);
                prefetch_word(&records[*slot]);
            }
            for &record in &at[..n] {
                sum = sum.wrapping_add(records[record]);
            }
            left -= n as u64;
        }
        let elapsed = start.elapsed();
        black_box(sum);
        *cursor = i;
        elapsed
    }
}

/// The same lookups one at a time, with no prefetching: what a packet
/// costs when it cannot be batched.
fn lookups_one_by_one(
    ct: &Conntrack,
    keys: &[FlowKey],
    cursor: &mut usize,
    iters: u64,
) -> (Duration, u64) {
    let mut misses = 0;
    let mut i = *cursor;
    let start = CpuClock::now();
    for _ in 0..iters {
        let hit = ct.lookup(black_box(&keys[i]), NOW, ACK);
        misses += u64::from(black_box(hit).is_none());
        i += 1;
        if i == keys.len() {
            i = 0;
        }
    }
    let elapsed = start.elapsed();
    *cursor = i;
    (elapsed, misses)
}

/// Resident set size of this process, bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm has a resident field");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page as u64
}

/// Returns freed heap memory to the kernel, so RSS shows live memory.
fn trim() {
    // SAFETY: malloc_trim only walks glibc's own free lists.
    unsafe { libc::malloc_trim(0) };
}

/// Memory per flow, measured before any other case allocates (freed
/// tables would otherwise be reused and hide the growth).
fn memory_per_flow() {
    memory_of("ipv4", Conntrack::<Ipv4Addr>::BYTES_PER_FLOW, || {
        let ct = established(ConntrackConfig::default());
        (
            ct.entries(),
            ct.config().max_flows,
            Box::new(ct) as Box<dyn std::any::Any>,
        )
    });
    memory_of("ipv6", Conntrack::<Ipv6Addr>::BYTES_PER_FLOW, || {
        let ct = established6(ConntrackConfig::default());
        (
            ct.entries(),
            ct.config().max_flows,
            Box::new(ct) as Box<dyn std::any::Any>,
        )
    });
}

/// Prints the RSS growth per flow of the table `build` fills with
/// [`FLOWS`] flows (returning its entries, its maximum and the table), beside
/// the bytes per flow its layout gives.
fn memory_of(
    family: &str,
    layout_bytes: u64,
    build: impl FnOnce() -> (usize, usize, Box<dyn std::any::Any>),
) {
    trim();
    let before = rss();
    let (entries, max_flows, ct) = build();
    let raw = rss();
    trim();
    let trimmed = rss();
    let per_flow = |after: u64| after.saturating_sub(before) as f64 / f64::from(FLOWS);
    println!(
        "conntrack/memory/{family}: {FLOWS} flows ({entries} entries) in a table of max \
         {max_flows} flows: RSS +{:.1} MiB = {:.1} bytes/flow ({:.1} bytes/flow after \
         malloc_trim; {layout_bytes} by layout per flow of the maximum)",
        (trimmed.saturating_sub(before)) as f64 / (1 << 20) as f64,
        per_flow(raw),
        per_flow(trimmed),
    );
    drop(ct);
    trim();
}

/// Established lookups on core 1 until `stop`; returns (lookups, misses,
/// time).
fn background_lookups(ct: &Conntrack, keys: &[FlowKey], stop: &AtomicBool) -> (u64, u64, Duration) {
    pin(1);
    let mut cursor = 0;
    let (mut done, mut misses) = (0, 0);
    let mut busy = Duration::ZERO;
    // Relaxed: a stop flag; no data is published through it.
    while !stop.load(Ordering::Relaxed) {
        let (t, m) = lookups(ct, keys, &mut cursor, 4096);
        busy += t;
        done += 4096;
        misses += m;
    }
    (done, misses, busy)
}

/// The conntrack work of a batch of new-flow packets for fresh flows
/// `first..first + n` (n <= BATCH), as a worker does it: hash and fetch
/// every key's bucket, then for each a lookup (a miss, from the second
/// step's candidate: none) and an insert by worker `worker` with the
/// lookup's hash. Returns how many were refused.
#[inline]
fn new_flows(ct: &Conntrack, first: u32, n: usize, worker: usize) -> u64 {
    let mut hashes = [0u64; BATCH];
    for (i, hash) in hashes[..n].iter_mut().enumerate() {
        *hash = ct.hash(&forward(first + i as u32));
        ct.prefetch_index(*hash);
    }
    // The worker's second pass: a key whose bucket holds no signature
    // of it gets its backend, and its reply bucket is asked for.
    let mut candidates = [Candidate::NONE; BATCH];
    for (i, (hash, candidate)) in hashes[..n].iter().zip(&mut candidates).enumerate() {
        let m = first + i as u32;
        *candidate = ct.prefetch_flow(*hash);
        if !candidate.is_some() {
            ct.prefetch_reply(&forward(m), *hash, backend(m));
        }
    }
    let mut refused = 0;
    // Looked up and inserted as a worker does (see `lookups`).
    let mut hit = FlowHit::UNSET;
    for (i, (hash, candidate)) in hashes[..n].iter().zip(&candidates).enumerate() {
        let m = first + i as u32;
        let key = forward(m);
        if ct.lookup_candidate_into(&key, *hash, *candidate, NOW, SYN, &mut hit) {
            continue;
        }
        refused += u64::from(
            ct.insert_into(
                key,
                *hash,
                backend(m),
                NOW,
                FlowMeta {
                    worker,
                    ..FlowMeta::default()
                },
                &mut hit,
            )
            .is_err(),
        );
    }
    refused
}

fn syn_flood(c: &mut Criterion, name: &str, config: ConntrackConfig, keys: &[FlowKey]) {
    let ct = established(config);
    let mut next = FRESH;
    let (mut refused, mut flooded) = (0u64, 0u64);
    let (mut bg_done, mut bg_misses, mut bg_time) = (0u64, 0u64, Duration::ZERO);
    let mut group = c.benchmark_group("syn_flood");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.warm_up_time(Duration::from_secs(2));
    group.bench_function(format!("1M_flows/{name}"), |b| {
        b.iter_custom(|iters| {
            let stop = AtomicBool::new(false);
            let barrier = Barrier::new(2);
            thread::scope(|s| {
                let bg = s.spawn(|| {
                    barrier.wait();
                    background_lookups(&ct, keys, &stop)
                });
                barrier.wait();
                let start = CpuClock::now();
                let mut left = iters;
                while left > 0 {
                    let n = (left as usize).min(BATCH);
                    refused += new_flows(&ct, next, n, 0);
                    next = next.checked_add(n as u32).expect("fresh flow numbers left");
                    left -= n as u64;
                }
                let elapsed = start.elapsed();
                // Relaxed: see `background_lookups`.
                stop.store(true, Ordering::Relaxed);
                let (done, misses, time) = bg.join().expect("lookup thread");
                bg_done += done;
                bg_misses += misses;
                bg_time += time;
                flooded += iters;
                elapsed
            })
        })
    });
    group.finish();
    if flooded == 0 {
        // Filtered out.
        return;
    }
    let s = ct.summary();
    let stats = ct.stats();
    println!(
        "syn_flood/1M_flows/{name}: {flooded} new flows, {refused} refused, {} evicted; \
         table now {} flows ({} unreplied, max {}); core 1 meanwhile: {:.2} M established \
         lookups/s, {bg_misses} misses",
        stats.evicted.iter().map(|e| e.get()).sum::<u64>(),
        s.flows,
        s.unreplied,
        s.max_flows,
        bg_done as f64 / bg_time.as_secs_f64().max(1e-9) / 1e6,
    );
    assert_eq!(bg_misses, 0, "an established flow was evicted");
}

/// Two flooding threads at once, on cores 0 and 1, each inserting its
/// own fresh flows as `new_flows` does, into one table holding the 1 M
/// established flows: what new flows cost per core when two workers of
/// a multi-queue NIC take them together: each thread is a worker with
/// eviction queues of its own (`Conntrack::with_workers`), and they share
/// the table's counters and free records. The figure is per core:
/// each thread does the iterations; the time is the slower thread's.
fn syn_flood_2_threads(c: &mut Criterion, name: &str, config: ConntrackConfig) {
    let ct = established_for(config, 2);
    // Each thread's fresh flow numbers: the second from the middle of the
    // range above FRESH.
    let mut next = [FRESH, FRESH + (1 << 30)];
    let mut refused = 0u64;
    let mut group = c.benchmark_group("syn_flood");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.warm_up_time(Duration::from_secs(2));
    group.bench_function(format!("1M_flows/{name}_2_threads"), |b| {
        b.iter_custom(|iters| {
            let barrier = Barrier::new(2);
            let flood = |core: usize, next: &mut u32| {
                pin(core);
                barrier.wait();
                let start = CpuClock::now();
                let (mut left, mut refused) = (iters, 0);
                while left > 0 {
                    let n = (left as usize).min(BATCH);
                    refused += new_flows(&ct, *next, n, core);
                    *next = next.checked_add(n as u32).expect("fresh flow numbers left");
                    left -= n as u64;
                }
                (start.elapsed(), refused)
            };
            let [next0, next1] = &mut next;
            let (mine, theirs) = thread::scope(|s| {
                let other = s.spawn(|| flood(1, next1));
                let mine = flood(0, next0);
                (mine, other.join().expect("flood thread"))
            });
            pin(0);
            refused += mine.1 + theirs.1;
            mine.0.max(theirs.0)
        })
    });
    group.finish();
    let s = ct.summary();
    println!(
        "syn_flood/1M_flows/{name}_2_threads: {refused} refused; table now {} flows ({} unreplied, max {})",
        s.flows, s.unreplied, s.max_flows,
    );
}

fn bench(c: &mut Criterion) {
    pin(0);
    memory_per_flow();

    let keys0 = shuffled_keys(1);
    let keys1 = shuffled_keys(2);
    // Room for the live flows and the inserts: 2 Mi flows.
    let roomy = ConntrackConfig {
        max_flows: 1 << 21,
        ..ConntrackConfig::default()
    };
    let ct = established(roomy);

    let mut group = c.benchmark_group("lookup_established");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.warm_up_time(Duration::from_secs(2));
    let mut cursor0 = 0;
    group.bench_function("1M_flows/1_thread", |b| {
        b.iter_custom(|iters| {
            let (t, misses) = lookups(&ct, &keys0, &mut cursor0, iters);
            assert_eq!(misses, 0);
            t
        })
    });
    // 2,048 of the keys only: their buckets and records (about 256 KiB)
    // stay in the core's caches, so this is what the lookups cost
    // without waiting on memory.
    let mut cursor_cached = 0;
    group.bench_function("1M_flows/1_thread_cached", |b| {
        b.iter_custom(|iters| {
            let (t, misses) = lookups(&ct, &keys0[..2048], &mut cursor_cached, iters);
            assert_eq!(misses, 0);
            t
        })
    });
    {
        let floor = MemoryFloor::new(
            roomy.max_flows,
            Conntrack::<Ipv4Addr>::RECORD_BYTES,
            1 << 21,
        );
        let mut cursor = 0;
        group.bench_function("1M_flows/memory_floor", |b| {
            b.iter_custom(|iters| floor.run(&mut cursor, iters))
        });
    }
    group.bench_function("1M_flows/1_thread_unbatched", |b| {
        b.iter_custom(|iters| {
            let (t, misses) = lookups_one_by_one(&ct, &keys0, &mut cursor0, iters);
            assert_eq!(misses, 0);
            t
        })
    });
    {
        let ct6 = established6(roomy);
        let keys6: Vec<FlowKey<Ipv6Addr>> = keys0.iter().map(|&k| key6(k)).collect();
        let mut cursor6 = 0;
        group.bench_function("1M_flows/1_thread_ipv6", |b| {
            b.iter_custom(|iters| {
                let (t, misses) = lookups(&ct6, &keys6, &mut cursor6, iters);
                assert_eq!(misses, 0);
                t
            })
        });
        // As `1_thread_cached`: 2,048 of the keys, their lines in cache.
        let mut cursor6_cached = 0;
        group.bench_function("1M_flows/1_thread_ipv6_cached", |b| {
            b.iter_custom(|iters| {
                let (t, misses) = lookups(&ct6, &keys6[..2048], &mut cursor6_cached, iters);
                assert_eq!(misses, 0);
                t
            })
        });
    }
    let mut cursor1 = 0;
    group.bench_function("1M_flows/2_threads", |b| {
        b.iter_custom(|iters| {
            let barrier = Barrier::new(2);
            thread::scope(|s| {
                let other = s.spawn(|| {
                    pin(1);
                    barrier.wait();
                    lookups(&ct, &keys1, &mut cursor1, iters)
                });
                barrier.wait();
                let (mine, m0) = lookups(&ct, &keys0, &mut cursor0, iters);
                let (theirs, m1) = other.join().expect("lookup thread");
                assert_eq!(m0 + m1, 0);
                mine.max(theirs)
            })
        })
    });
    group.finish();

    let mut group = c.benchmark_group("insert");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.warm_up_time(Duration::from_secs(2));
    let mut next = FRESH;
    group.bench_function("1M_flows", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let chunk = left.min(INSERT_CHUNK) as u32;
                let first = next;
                next = next.checked_add(chunk).expect("fresh flow numbers left");
                let start = CpuClock::now();
                let mut failed = 0u32;
                for n in first..first + chunk {
                    failed += u32::from(
                        ct.insert(forward(n), backend(n), NOW, FlowMeta::default())
                            .is_err(),
                    );
                }
                total += start.elapsed();
                assert_eq!(failed, 0, "inserts refused");
                for n in first..first + chunk {
                    ct.remove(&forward(n));
                }
                left -= u64::from(chunk);
            }
            total
        })
    });
    group.finish();
    assert_eq!(ct.summary().flows, FLOWS as usize);
    drop(ct);

    syn_flood(
        c,
        "guard",
        ConntrackConfig {
            max_flows: 1 << 21,
            unreplied_percent: 10,
            ..ConntrackConfig::default()
        },
        &keys1,
    );
    syn_flood(c, "full", ConntrackConfig::default(), &keys1);
    syn_flood_2_threads(
        c,
        "guard",
        ConntrackConfig {
            max_flows: 1 << 21,
            unreplied_percent: 10,
            ..ConntrackConfig::default()
        },
    );
    syn_flood_2_threads(c, "full", ConntrackConfig::default());
}

criterion_group!(benches, bench);
criterion_main!(benches);
