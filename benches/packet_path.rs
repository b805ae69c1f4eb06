//! Per-packet cost of cipgw's pipeline on one core, no I/O.
//!
//! Cases:
//! - `established/1024_flows`: parse + conntrack hit + DNAT rewrite with
//!   incremental checksums + next-hop addressing, over 1,024 live, replied
//!   flows (served from the worker's flow cache after the first packet of
//!   each second), each frame written into its buffer 7 packets before it
//!   is processed, as a worker's frames are (`packets::WrittenAhead`);
//! - `reply/1024_flows`: the same for backend -> client packets;
//! - `established_cold_batch/1024_flows`: those established flows
//!   batched as a worker runs an RX batch of 64 (both prefetch passes
//!   and every frame timed), each batch after 4 MiB written (untimed),
//!   which evicts the core's L1 and L2 as a gateway core's kernel work
//!   between two batches may; `established_warm_batch/1024_flows` is
//!   the same with the caches left warm, its baseline;
//! - `established_unreplied_{cold,warm}_batch/1024_flows`: the same
//!   batches over 1,024 UDP flows that never had a reply (a one-way
//!   stream, as the veth benchmark's udp-est), which the flow cache
//!   serves by their record's stamp instead of a removal count;
//! - `new_flow_cold_batch/8192_flows`: new flows (a new 5-tuple every
//!   frame) into a table of 8,192 flows whose unreplied share (half, the
//!   default) is full, so that every insert evicts the oldest unreplied
//!   flow (the flood guard, as the veth benchmark's udp-new runs with
//!   `--conntrack-max 8192`), batched as a worker runs an RX
//!   batch of 64, each batch after 4 MiB written (as
//!   `established_cold_batch`); `new_flow_warm_batch/8192_flows` is the
//!   same with the caches left warm;
//! - `new_flow/{1,10000}_services`: parse + service lookup + random
//!   backend choice + conntrack insert (both directions) + rewrite, a new
//!   5-tuple every packet, with the measured Service among 1 or 10,000
//!   (each frame written 7 packets ahead, `packets::WrittenAhead`);
//! - `new_flow_maglev/{1,10000}_services`: the same with every Service
//!   under Maglev (`cipgw.io/lb-algorithm: maglev`, table size 16,381):
//!   the backend is the table's entry for the 5-tuple's seeded hash;
//! - `copy_only`: restoring the 64-byte input frame, the harness's own
//!   cost included in the cases above;
//! - `snat_new_flow/1_services`: `new_flow` with source NAT on (one SNAT
//!   address, ports 61000-65535): also a port probe and the second
//!   rewrite; a fresh table every 4,096 flows, so each backend's pool
//!   stays under a third full; `new_flow_chunked/1_services` is the same
//!   without source NAT, its A/B baseline;
//! - `new_flow_chunked/{1,10000}_services` and
//!   `new_flow_maglev_chunked/{1,10000}_services`: new flows into a table
//!   of 4,096 (fresh every 4,096 flows, not timed), random against
//!   Maglev: the unchunked cases run through a table sized to the whole
//!   run (hundreds of MB at millions of iterations), whose cache and TLB
//!   misses drown the choice between the two. Every new-flow table has
//!   its pages mapped before the clock starts (`Conntrack::populate`):
//!   without that the cases timed the kernel's first touch of each page,
//!   a share of a page fault per flow that grows with the record (3x for
//!   IPv6) and that a gateway pays only while its table first fills;
//! - `snat_reply/1024_flows`: `reply` of source-NATed flows (backend ->
//!   SNAT address and port, rewritten to VIP -> client);
//! - `established_ipv6/1024_flows`, `reply_ipv6/1024_flows`,
//!   `established_ipv6_{cold,warm}_batch/1024_flows`,
//!   `established_unreplied_ipv6_{cold,warm}_batch/1024_flows`,
//!   `new_flow_ipv6/{1,10000}_services` and `copy_only_ipv6`: the
//!   `established`, `reply`, batched, `new_flow` and `copy_only` cases over IPv6
//!   (IPv6 VIPs in 2001:2:0:100::/64, Pods and clients on the lab's IPv6
//!   arms, the IPv6 connection table `Pipeline::with_conntrack6` gives),
//!   built the same way; the frames carry the same 18-byte payload, so
//!   they are 80 bytes (an IPv6 header is 20 bytes longer than IPv4's).
//!   Compare each with its IPv4 case of the same run (issue 12: within
//!   15%); `new_flow_chunked_ipv6/{1,10000}_services` likewise against
//!   `new_flow_chunked`.
//!
//! - `established_1M/{ipv4,ipv6}` and `reply_1M/{ipv4,ipv6}`: issue 15's
//!   scale, one core and 1,048,576 live, replied flows (one Service; the
//!   clients 198.18.1.0-15 or 2001:2::100-10f, 65,536 ports each), their
//!   packets in an order that visits every flow once per 2^20 packets,
//!   spread over the whole table (flow `k * SPREAD mod 2^20` for packet
//!   `k`), so nearly every packet misses the worker's flow cache and the
//!   CPU's caches. Batched as a worker runs an RX batch of 64: each
//!   frame written into its buffer and prefetched (`Pipeline::prefetch`),
//!   `Pipeline::prefetch_flows`, then each frame processed.
//!   `frames_only_1M/{ipv4,ipv6}` is the harness's own share: the same
//!   frames written, nothing processed;
//! - `established_zipf_{0.6,1.0}_1M/{ipv4,ipv6}`: `established_1M` with
//!   the packets' flows drawn from a Zipf distribution over the million
//!   (exponent 0.6: the 8,192 busiest flows, as many as the worker's flow
//!   cache holds, carry about a seventh of the packets; 1.0: about two
//!   thirds), as a gateway's traffic is skewed;
//! - `new_flow_1M/{ipv4,ipv6}`: a new flow every packet into that table
//!   of 1 M live flows, batched the same way (the second pass picks each
//!   new flow's backend and asks for its reply bucket); once unreplied
//!   flows hold their share of the table (half), every insert first
//!   evicts the oldest of them (the flood guard), as under a SYN flood;
//!
//! Run: `cargo bench -p cipgw-datapath --bench packet_path`.

use std::hint::black_box;
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cipgw_datapath::conntrack::snat::SnatConfig;
use cipgw_datapath::conntrack::{Conntrack, ConntrackConfig};
use cipgw_datapath::family::IpFamily;
use cipgw_datapath::harness::{addr, addr6, pipeline, Net, CLIENT_IFINDEX, POD_IFINDEX};
use cipgw_datapath::lb::Rng;
use cipgw_datapath::pipeline::{BatchContext, Pipeline, Verdict};
use cipgw_datapath::route::PortId;
use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};

#[path = "support/packets.rs"]
// Shared with the other packet-path benches; this one uses part of it.
#[allow(dead_code)]
mod packets;
#[path = "support/packets6.rs"]
mod packets6;

use packets::{
    client, frame, maglev_table, net, new_flow_frame, table, tracked_flows, WrittenAhead,
};
use packets6::{
    client6, frame6, net6, new_flow_frame6, table6, tracked_flows6, DST, SPORT, SRC, VIP6,
};

fn bench(c: &mut Criterion) {
    let net = net();
    let vip = [198, 19, 255, 254];
    let mut group = c.benchmark_group("packet_path");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));

    let one = table(1);
    let mut p = pipeline(Arc::new(Conntrack::default()), 7);
    let ctx = BatchContext {
        table: &one,
        net: &net,
        now: 1,
    };
    let (frames, replies) = tracked_flows(&mut p, &ctx, vip);

    let mut scratch = vec![0u8; 2048];
    group.bench_function("copy_only", |b| {
        let mut i = 0;
        b.iter(|| {
            let f = &frames[i & 1023];
            scratch[..f.len()].copy_from_slice(f);
            i += 1;
            black_box(&scratch);
        })
    });
    group.bench_function("established/1024_flows", |b| {
        let mut i = 0;
        let mut ring = WrittenAhead::new(frames[0].len(), 0);
        b.iter(|| {
            let verdict = ring.process_tracked(&mut p, &ctx, &frames, i);
            i += 1;
            black_box(verdict)
        })
    });
    group.bench_function("reply/1024_flows", |b| {
        let mut i = 0;
        let mut ring = WrittenAhead::new(replies[0].len(), 0);
        b.iter(|| {
            let verdict = ring.process_tracked(&mut p, &ctx, &replies, i);
            i += 1;
            black_box(verdict)
        })
    });
    // The same flows batched as a worker runs them, after the work a
    // gateway core does between two RX batches (the kernel's receive and
    // transmit paths): 4 MiB written, untimed, which evicts the core's
    // L1 and L2 (1 MiB each here) but not its share of the L3; and, as
    // the baseline, with the caches left warm.
    let mut batches = CachedBatches::new();
    batches.cases(&mut group, "established", &mut p, &ctx, &frames);
    // The veth benchmark's udp-est: the same 1,024 UDP flows, never
    // replied (a one-way stream), in a table of their own; the cache
    // serves them by their record's stamp, not a removal count.
    let unreplied = pipeline(Arc::new(Conntrack::default()), 11);
    batches.unreplied_cases(
        &mut group,
        "established_unreplied",
        unreplied,
        &ctx,
        &frames,
    );

    // New flows into a table of 8,192 whose unreplied half is full
    // (every insert evicts, as the veth benchmark's udp-new runs),
    // batched, after the kernel's work
    // between batches (4 MiB written) or with the caches warm.
    {
        let base = frame((client(0), 1), (vip, 8080));
        let len = base.len();
        let mut p = pipeline(
            Arc::new(new_flow_table_of(
                8192,
                ConntrackConfig::default().unreplied_percent,
            )),
            13,
        );
        let mut fresh = 0usize;
        for (case, cold) in [
            ("new_flow_cold_batch", true),
            ("new_flow_warm_batch", false),
        ] {
            group.bench_function(format!("{case}/8192_flows"), |b| {
                b.iter_custom(|iters| {
                    let evict = cold.then_some(&mut batches.evict[..]);
                    written_batches(&mut p, &ctx, len, &mut batches.bufs, evict, iters, |f| {
                        new_flow_frame(f, &base, fresh % (1 << 24));
                        fresh += 1;
                    })
                })
            });
        }
        // Every frame started a flow (once the unreplied half was full,
        // each by evicting one), none was refused.
        assert_eq!(
            p.counters().new_flows.get(),
            fresh as u64,
            "every frame of the new-flow batches started a flow"
        );
    }

    for (case, services) in [
        ("new_flow", 1usize),
        ("new_flow", 10_000),
        ("new_flow_maglev", 1),
        ("new_flow_maglev", 10_000),
    ] {
        let t = if case == "new_flow" {
            table(services)
        } else {
            maglev_table(services)
        };
        let ctx = BatchContext {
            table: &t,
            net: &net,
            now: 1,
        };
        let base = frame((client(0), 1), (vip, 8080));
        group.bench_function(format!("{case}/{services}_services"), |b| {
            b.iter_custom(|iters| {
                // A fresh table per measurement, bounded above what it
                // takes, so every packet really is a new flow and nothing
                // is evicted.
                let mut p = pipeline(Arc::new(new_flow_table(iters as usize + 1)), 9);
                let mut ring = WrittenAhead::new(base.len(), 0);
                let write = |f: &mut [u8], i: usize| new_flow_frame(f, &base, i);
                let start = Instant::now();
                for i in 0..iters as usize {
                    black_box(ring.process(&mut p, &ctx, i, write));
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

/// Runs the RX batch a worker holds in `bufs` (frames of `len` bytes,
/// written and their header lines asked for) as it runs one: each
/// frame's key peeked and its bucket asked for, the flows' records (and
/// new flows' reply buckets) asked for, then every frame processed, as
/// received on port `ingress`.
#[inline(always)]
fn run_batch(
    p: &mut Pipeline,
    ctx: &BatchContext<'_>,
    bufs: &mut [Vec<u8>],
    len: usize,
    ingress: PortId,
) {
    for buf in bufs.iter() {
        p.prefetch(&buf[..len]);
    }
    p.prefetch_flows(ctx);
    for buf in bufs.iter_mut() {
        black_box(p.process(buf, len, ingress, ctx));
    }
}

/// The time `iters` packets of the tracked `frames` (from `*next` on)
/// take batched as a worker runs an RX batch of [`RX_BATCH`] (see
/// [`written_batches`]).
fn tracked_batches(
    p: &mut Pipeline,
    ctx: &BatchContext<'_>,
    frames: &[Vec<u8>],
    next: &mut usize,
    bufs: &mut [Vec<u8>],
    evict: Option<&mut [u8]>,
    iters: u64,
) -> Duration {
    let len = frames[0].len();
    written_batches(p, ctx, len, bufs, evict, iters, |buf| {
        buf.copy_from_slice(&frames[*next & 1023]);
        *next += 1;
    })
}

/// Buffers for the batched cases: one RX batch's frames and the 4 MiB
/// written between two cold batches.
struct CachedBatches {
    bufs: Vec<Vec<u8>>,
    evict: Vec<u8>,
}

impl CachedBatches {
    fn new() -> Self {
        Self {
            bufs: vec![vec![0u8; 2048]; RX_BATCH],
            evict: vec![0u8; 4 << 20],
        }
    }

    /// The cases `{case}_cold_batch/1024_flows` and
    /// `{case}_warm_batch/1024_flows`: `frames`, of 1,024 flows `p`
    /// tracks, batched as a worker runs them ([`tracked_batches`]), each
    /// batch after 4 MiB written or with the caches left warm.
    fn cases(
        &mut self,
        group: &mut BenchmarkGroup<'_, WallTime>,
        case: &str,
        p: &mut Pipeline,
        ctx: &BatchContext<'_>,
        frames: &[Vec<u8>],
    ) {
        for (temperature, cold) in [("cold", true), ("warm", false)] {
            group.bench_function(format!("{case}_{temperature}_batch/1024_flows"), |b| {
                let mut next = 0usize;
                b.iter_custom(|iters| {
                    let evict = cold.then_some(&mut self.evict[..]);
                    let time =
                        tracked_batches(p, ctx, frames, &mut next, &mut self.bufs, evict, iters);
                    // Checked in the build that is timed: the passes count
                    // what the cache holds (a release build once lost that
                    // count; benches/RESULTS.md, session 26).
                    assert_eq!(
                        p.counters().flow_cache_bypasses.get(),
                        0,
                        "{case}: the flow cache holds the 1,024 flows and is kept"
                    );
                    time
                })
            });
        }
    }

    /// [`CachedBatches::cases`] over flows that never had a reply (the
    /// veth benchmark's udp-est): `frames` start their 1,024 flows in
    /// `p`, which has a table of its own, and the timed batches must
    /// start none, so that each case measures cached established packets
    /// (served by their record's stamp, not a removal count).
    fn unreplied_cases(
        &mut self,
        group: &mut BenchmarkGroup<'_, WallTime>,
        case: &str,
        mut p: Pipeline,
        ctx: &BatchContext<'_>,
        frames: &[Vec<u8>],
    ) {
        start_flows(&mut p, ctx, frames);
        self.cases(group, case, &mut p, ctx, frames);
        assert_eq!(
            p.counters().new_flows.get(),
            1024,
            "{case}: the batches' frames all belonged to the 1,024 flows"
        );
    }
}

/// Sends each of `frames` once through `p`: flows started, none replied.
fn start_flows(p: &mut Pipeline, ctx: &BatchContext<'_>, frames: &[Vec<u8>]) {
    for f in frames {
        let mut copy = f.clone();
        let len = copy.len();
        let verdict = p.process(&mut copy, len, 0, ctx);
        assert!(
            matches!(verdict, Verdict::Forward { .. }),
            "a new flow is forwarded, not {verdict:?}"
        );
    }
}

/// The time `iters` packets of `len` bytes take batched as a worker runs
/// an RX batch of [`RX_BATCH`]: each batch's frames written into `bufs`
/// by `write` (as the kernel writes them), then timed: both prefetch
/// passes and every frame. With `evict`, that buffer is written,
/// untimed, before each batch.
fn written_batches(
    p: &mut Pipeline,
    ctx: &BatchContext<'_>,
    len: usize,
    bufs: &mut [Vec<u8>],
    mut evict: Option<&mut [u8]>,
    iters: u64,
    mut write: impl FnMut(&mut [u8]),
) -> Duration {
    let mut elapsed = Duration::ZERO;
    let mut left = iters as usize;
    while left > 0 {
        let n = left.min(RX_BATCH);
        if let Some(evict) = evict.as_deref_mut() {
            for line in evict.chunks_mut(64) {
                line[0] = line[0].wrapping_add(1);
            }
            black_box(&evict);
        }
        for buf in &mut bufs[..n] {
            write(&mut buf[..len]);
        }
        let start = Instant::now();
        for buf in &bufs[..n] {
            Pipeline::prefetch_headers(&buf[..len]);
        }
        run_batch(p, ctx, &mut bufs[..n], len, 0);
        elapsed += start.elapsed();
        left -= n;
    }
    elapsed
}

/// A new-flow table of `max_flows` (every flow may stay unreplied), its
/// pages mapped before the clock starts: the cases time a gateway's
/// steady state, not the kernel's first touch of a fresh table (which
/// costs per flow in proportion to the record's size, so 3x as much for
/// IPv6, and which a gateway pays once).
fn new_flow_table<A: IpFamily>(max_flows: usize) -> Conntrack<A> {
    new_flow_table_of(max_flows, 100)
}

/// [`new_flow_table`] whose unreplied flows may hold `unreplied_percent`
/// of it (above, the flood guard evicts the oldest of them).
fn new_flow_table_of<A: IpFamily>(max_flows: usize, unreplied_percent: u8) -> Conntrack<A> {
    let ct = Conntrack::new(ConntrackConfig {
        max_flows,
        unreplied_percent,
        ..ConntrackConfig::default()
    });
    ct.populate().expect("MADV_POPULATE_WRITE (Linux 5.14)");
    ct
}

/// The gateway's SNAT address in the SNAT cases.
const SNAT: [u8; 4] = [198, 18, 2, 1];

fn snat_conntrack(max_flows: usize) -> Arc<Conntrack> {
    let ct = new_flow_table(max_flows)
        .with_snat(&SnatConfig {
            addresses: vec![SNAT.into()],
            ports: 61000..=65535,
        })
        .expect("valid SNAT config");
    Arc::new(ct)
}

fn bench_snat(c: &mut Criterion) {
    let net = net();
    let vip = [198, 19, 255, 254];
    let mut group = c.benchmark_group("packet_path");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    let one = table(1);
    let ctx = BatchContext {
        table: &one,
        net: &net,
        now: 1,
    };

    // Replies of 1,024 established SNAT flows.
    let mut p = pipeline(snat_conntrack(1 << 16), 7);
    let mut replies = Vec::new();
    for i in 0..1024 {
        let mut f = frame((client(i), 20000 + i as u16), (vip, 8080));
        let len = f.len();
        assert!(matches!(
            p.process(&mut f, len, 0, &ctx),
            Verdict::Forward { .. }
        ));
        // The Pod answers the SNAT address and port it saw.
        let ip = &f[14..];
        let snat = [ip[12], ip[13], ip[14], ip[15]];
        let backend = [ip[16], ip[17], ip[18], ip[19]];
        let sport = u16::from_be_bytes([ip[20], ip[21]]);
        assert_eq!(snat, SNAT);
        replies.push(frame((backend, 5678), (snat, sport)));
    }
    for r in &replies {
        let mut copy = r.clone();
        let len = copy.len();
        assert!(matches!(
            p.process(&mut copy, len, 1, &ctx),
            Verdict::Forward { .. }
        ));
    }
    let mut scratch = vec![0u8; 2048];
    group.bench_function("snat_reply/1024_flows", |b| {
        let mut i = 0;
        b.iter(|| {
            let f = &replies[i & 1023];
            scratch[..f.len()].copy_from_slice(f);
            i += 1;
            black_box(p.process(&mut scratch, f.len(), 1, &ctx))
        })
    });

    const CHUNK: u64 = 4096;
    let base = frame((client(0), 1), (vip, 8080));
    let many = table(10_000);
    let (maglev_one, maglev_many) = (maglev_table(1), maglev_table(10_000));
    for (name, table, snat) in [
        ("new_flow_chunked/1_services", &one, false),
        ("new_flow_chunked/10000_services", &many, false),
        ("new_flow_maglev_chunked/1_services", &maglev_one, false),
        (
            "new_flow_maglev_chunked/10000_services",
            &maglev_many,
            false,
        ),
        ("snat_new_flow/1_services", &one, true),
    ] {
        let ctx = BatchContext {
            table,
            net: &net,
            now: 1,
        };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    // A fresh table per chunk (not timed): every packet is a
                    // new flow and no backend's port pool fills up.
                    let ct = if snat {
                        snat_conntrack(CHUNK as usize + 1)
                    } else {
                        Arc::new(new_flow_table(CHUNK as usize + 1))
                    };
                    let mut p = pipeline(ct, 9);
                    let n = CHUNK.min(iters - done);
                    let mut ring = WrittenAhead::new(base.len(), done as usize);
                    let write = |f: &mut [u8], i: usize| new_flow_frame(f, &base, i);
                    let start = Instant::now();
                    for i in done as usize..(done + n) as usize {
                        black_box(ring.process(&mut p, &ctx, i, write));
                    }
                    elapsed += start.elapsed();
                    done += n;
                }
                elapsed
            })
        });
    }
    group.finish();
}

/// A pipeline whose IPv6 connection table is `conntrack6`; its IPv4 one
/// stays empty and small, as the IPv6 one `Pipeline::new` gives the IPv4
/// cases (1,024 flows), so neither family's cases map the other's
/// full-size table.
fn pipeline6(conntrack6: impl Into<Arc<Conntrack<Ipv6Addr>>>, seed: u64) -> Pipeline {
    let idle = Conntrack::new(ConntrackConfig {
        max_flows: 1024,
        ..ConntrackConfig::default()
    });
    pipeline(Arc::new(idle), seed).with_conntrack6(conntrack6.into())
}

/// The IPv6 cases, each built as its IPv4 case in [`bench`].
fn bench_ipv6(c: &mut Criterion) {
    let net = net6();
    let mut group = c.benchmark_group("packet_path");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));

    let one = table6(1);
    let mut p = pipeline6(Conntrack::default(), 7);
    let ctx = BatchContext {
        table: &one,
        net: &net,
        now: 1,
    };
    let (frames, replies) = tracked_flows6(&mut p, &ctx);

    let mut scratch = vec![0u8; 2048];
    group.bench_function("copy_only_ipv6", |b| {
        let mut i = 0;
        b.iter(|| {
            let f = &frames[i & 1023];
            scratch[..f.len()].copy_from_slice(f);
            i += 1;
            black_box(&scratch);
        })
    });
    group.bench_function("established_ipv6/1024_flows", |b| {
        let mut i = 0;
        let mut ring = WrittenAhead::new(frames[0].len(), 0);
        b.iter(|| {
            let verdict = ring.process_tracked(&mut p, &ctx, &frames, i);
            i += 1;
            black_box(verdict)
        })
    });
    group.bench_function("reply_ipv6/1024_flows", |b| {
        let mut i = 0;
        let mut ring = WrittenAhead::new(replies[0].len(), 0);
        b.iter(|| {
            let verdict = ring.process_tracked(&mut p, &ctx, &replies, i);
            i += 1;
            black_box(verdict)
        })
    });
    let mut batches = CachedBatches::new();
    batches.cases(&mut group, "established_ipv6", &mut p, &ctx, &frames);
    let unreplied = pipeline6(Conntrack::default(), 11);
    batches.unreplied_cases(
        &mut group,
        "established_unreplied_ipv6",
        unreplied,
        &ctx,
        &frames,
    );

    for services in [1usize, 10_000] {
        let t = table6(services);
        let ctx = BatchContext {
            table: &t,
            net: &net,
            now: 1,
        };
        let base = frame6((client6(0), 1), (VIP6, 8080));
        // What the loop below sends is forwarded, not dropped (a new flow
        // with a stale UDP checksum and a client of no route).
        let mut probe = base.clone();
        probe[SRC.end - 2..SRC.end].copy_from_slice(&0x1234u16.to_be_bytes());
        probe[SPORT].copy_from_slice(&4321u16.to_be_bytes());
        let len = probe.len();
        assert!(matches!(
            pipeline6(Conntrack::default(), 9).process(&mut probe, len, 0, &ctx),
            Verdict::Forward { .. }
        ));
        group.bench_function(format!("new_flow_ipv6/{services}_services"), |b| {
            b.iter_custom(|iters| {
                // As `new_flow`: a fresh table per measurement, bounded
                // above what it takes.
                let mut p = pipeline6(new_flow_table(iters as usize + 1), 9);
                let mut ring = WrittenAhead::new(base.len(), 0);
                let write = |f: &mut [u8], i: usize| new_flow_frame6(f, &base, i);
                let start = Instant::now();
                for i in 0..iters as usize {
                    black_box(ring.process(&mut p, &ctx, i, write));
                }
                start.elapsed()
            })
        });
        // As `new_flow_chunked`: a fresh table of 4,096 every 4,096 flows
        // (not timed), so the first touch of a run-sized table (three
        // times IPv4's bytes per flow) stays out of the figure.
        const CHUNK: u64 = 4096;
        group.bench_function(format!("new_flow_chunked_ipv6/{services}_services"), |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                let mut done = 0;
                while done < iters {
                    let mut p = pipeline6(new_flow_table(CHUNK as usize + 1), 9);
                    let n = CHUNK.min(iters - done);
                    let mut ring = WrittenAhead::new(base.len(), done as usize);
                    let write = |f: &mut [u8], i: usize| new_flow_frame6(f, &base, i);
                    let start = Instant::now();
                    for i in done as usize..(done + n) as usize {
                        black_box(ring.process(&mut p, &ctx, i, write));
                    }
                    elapsed += start.elapsed();
                    done += n;
                }
                elapsed
            })
        });
    }
    group.finish();
}

/// Flows of the 1 M-flow cases: a power of two, so that [`SPREAD`]
/// permutes them.
const MILLION: usize = 1 << 20;
/// An odd multiplier (the golden ratio's, as Fibonacci hashing takes):
/// packet `k` belongs to flow `k * SPREAD mod 2^20`, so consecutive
/// packets land far apart in the table and every flow comes once per
/// 2^20 packets.
const SPREAD: usize = 0x9e37_79b9;
/// Frames per batch, as a worker's default `--rx-batch`.
const RX_BATCH: usize = 64;

/// How one family's 1 M-flow frames are written: flow `i`'s frame from
/// its client to the VIP, and its Pod's reply back.
struct MillionFrames {
    family: &'static str,
    /// A client's frame to the VIP.
    base: Vec<u8>,
    /// Each Pod's frame to a client (the client's last two address bytes
    /// and its port still to write).
    replies: Vec<Vec<u8>>,
    /// Writes flow `i`'s forward frame from `base` (`new_flow_frame` or
    /// `new_flow_frame6`).
    forward: fn(&mut [u8], &[u8], usize),
    /// Where a reply's destination address ends and its port begins.
    client_end: usize,
    client_port: usize,
    /// Where a rewritten forward frame's destination (its Pod) is.
    pod: std::ops::Range<usize>,
    /// The Pods' addresses, in the order of `replies`.
    pods: Vec<Vec<u8>>,
}

impl MillionFrames {
    fn write_forward(&self, f: &mut [u8], i: usize) {
        (self.forward)(f, &self.base, i)
    }

    /// Flow `i`'s reply from Pod `pod`, to the client and port
    /// `write_forward` gave it.
    fn write_reply(&self, f: &mut [u8], pod: u8, i: usize) {
        f.copy_from_slice(&self.replies[usize::from(pod)]);
        f[self.client_end - 2..self.client_end]
            .copy_from_slice(&(((i >> 16) as u16) | 0x100).to_be_bytes());
        f[self.client_port..self.client_port + 2].copy_from_slice(&(i as u16).to_be_bytes());
    }

    /// Which Pod a rewritten forward frame goes to (its index in `pods`).
    fn pod_of(&self, f: &[u8]) -> u8 {
        let pod = &f[self.pod.clone()];
        self.pods
            .iter()
            .position(|p| p[..] == *pod)
            .expect("forwarded to one of the Pods") as u8
    }
}

/// Tracks [`MILLION`] flows in a pipeline `new_pipeline` gives (each
/// flow's forward frame and its Pod's reply), then benches the family's
/// 1 M-flow cases; each skewed case runs on a pipeline of its own over
/// the same table, so that its worker's flow cache is filled and judged
/// on its own traffic (the bench's clock never moves on).
fn million(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    frames: &MillionFrames,
    new_pipeline: &dyn Fn() -> Pipeline,
    ctx: &BatchContext<'_>,
) {
    let mut p = new_pipeline();
    let len = frames.base.len();
    let mut pods = vec![0u8; MILLION];
    let mut buf = frames.base.clone();
    for (i, pod) in pods.iter_mut().enumerate() {
        frames.write_forward(&mut buf, i);
        let verdict = p.process(&mut buf, len, 0, ctx);
        assert!(
            matches!(verdict, Verdict::Forward { .. }),
            "{} flow {i} forwarded, not {verdict:?}",
            frames.family
        );
        *pod = frames.pod_of(&buf);
        frames.write_reply(&mut buf, *pod, i);
        let verdict = p.process(&mut buf, len, 1, ctx);
        assert!(
            matches!(verdict, Verdict::Forward { .. }),
            "{} flow {i}'s reply forwarded, not {verdict:?}",
            frames.family
        );
    }

    let mut bufs = vec![vec![0u8; 2048]; RX_BATCH];
    let mut cursor = 0usize;
    group.bench_function(format!("frames_only_1M/{}", frames.family), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for_batches(iters, &mut cursor, |flows| {
                for (buf, &flow) in bufs.iter_mut().zip(flows) {
                    frames.write_forward(&mut buf[..len], flow);
                }
                black_box(&bufs);
            });
            start.elapsed()
        })
    });
    let forward = |f: &mut [u8], i: usize| frames.write_forward(f, i);
    let reply = |f: &mut [u8], i: usize| frames.write_reply(f, pods[i], i);
    // Packets of the two cases through `p`.
    let mut processed = 0u64;
    for (case, write, queue) in [
        ("established_1M", &forward as &dyn Fn(&mut [u8], usize), 0),
        ("reply_1M", &reply, 1),
    ] {
        group.bench_function(format!("{case}/{}", frames.family), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for_batches(iters, &mut cursor, |flows| {
                    for (buf, &flow) in bufs.iter_mut().zip(flows) {
                        write(&mut buf[..len], flow);
                        Pipeline::prefetch_headers(&buf[..len]);
                    }
                    run_batch(&mut p, ctx, &mut bufs[..flows.len()], len, queue);
                });
                let time = start.elapsed();
                processed += iters;
                // A million flows: the worker's cache holds next to none
                // of them and is bypassed once judged (after 16,384
                // frames, at the next batch).
                assert!(
                    processed <= 20_000 || p.counters().flow_cache_bypasses.get() > 0,
                    "{} flow cache bypassed at a million flows",
                    frames.family
                );
                time
            })
        });
    }

    // Skewed traffic over the same million flows: where the worker's
    // flow cache is worth its lines, and where its judgement bypasses it.
    for (name, exponent) in [("zipf_0.6", 0.6), ("zipf_1.0", 1.0)] {
        let order = zipf_order(exponent, 11);
        let mut p = new_pipeline();
        let mut next = 0usize;
        group.bench_function(format!("established_{name}_1M/{}", frames.family), |b| {
            b.iter_custom(|iters| {
                timed_batches(&mut p, ctx, &mut bufs, len, iters, |f| {
                    forward(f, order[next & (MILLION - 1)]);
                    next += 1;
                })
            })
        });
        if next > 0 {
            // Whether this traffic's worker kept its flow cache: the
            // figure above is one or the other.
            println!(
                "established_{name}_1M/{}: flow cache bypassed {} times over {next} packets",
                frames.family,
                p.counters().flow_cache_bypasses.get()
            );
        }
    }

    // New flows, numbered on from the live ones: unique 5-tuples for the
    // first 2^24 (the frame writers' range), and long evicted by then.
    let mut fresh = 0usize;
    group.bench_function(format!("new_flow_1M/{}", frames.family), |b| {
        b.iter_custom(|iters| {
            timed_batches(&mut p, ctx, &mut bufs, len, iters, |f| {
                frames.write_forward(f, MILLION + fresh % ((1 << 24) - MILLION));
                fresh += 1;
            })
        })
    });
}

/// The time `iters` client frames take through `p` in RX batches: each
/// batch's frames written by `write` (one call per frame, in order) and
/// their header lines asked for, then run as a worker runs them.
fn timed_batches(
    p: &mut Pipeline,
    ctx: &BatchContext<'_>,
    bufs: &mut [Vec<u8>],
    len: usize,
    iters: u64,
    mut write: impl FnMut(&mut [u8]),
) -> Duration {
    let start = Instant::now();
    let mut left = iters as usize;
    while left > 0 {
        let n = left.min(RX_BATCH);
        for buf in &mut bufs[..n] {
            write(&mut buf[..len]);
            Pipeline::prefetch_headers(&buf[..len]);
        }
        run_batch(p, ctx, &mut bufs[..n], len, 0);
        left -= n;
    }
    start.elapsed()
}

/// [`MILLION`] packets' flows drawn from a Zipf distribution of the
/// given exponent over the million flows (rank r's share proportional
/// to 1 / r^exponent), the ranks scattered over the table by [`SPREAD`]:
/// at 0.6 the 8,192 busiest flows carry about a seventh of the packets, at
/// 1.0 about two thirds.
fn zipf_order(exponent: f64, seed: u64) -> Vec<usize> {
    let mut cdf = Vec::with_capacity(MILLION);
    let mut total = 0.0;
    for rank in 1..=MILLION {
        total += (rank as f64).powf(-exponent);
        cdf.push(total);
    }
    let mut rng = Rng::new(seed);
    (0..MILLION)
        .map(|_| {
            let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
            let rank = cdf.partition_point(|&c| c < u).min(MILLION - 1);
            rank.wrapping_mul(SPREAD) & (MILLION - 1)
        })
        .collect()
}

/// Runs `batch` over `iters` packets' flows, [`RX_BATCH`] at a time,
/// from packet `*cursor` on.
#[inline(always)]
fn for_batches(iters: u64, cursor: &mut usize, mut batch: impl FnMut(&[usize])) {
    let mut flows = [0usize; RX_BATCH];
    let mut left = iters as usize;
    while left > 0 {
        let n = left.min(RX_BATCH);
        for (k, flow) in flows[..n].iter_mut().enumerate() {
            *flow = (*cursor + k).wrapping_mul(SPREAD) & (MILLION - 1);
        }
        batch(&flows[..n]);
        *cursor += n;
        left -= n;
    }
}

/// A table for the 1 M-flow cases: room for all of them.
fn million_table<A: IpFamily>() -> Conntrack<A> {
    Conntrack::new(ConntrackConfig {
        max_flows: 2 * MILLION,
        ..ConntrackConfig::default()
    })
}

/// Issue 15's scale: 1 M live flows on one core, IPv4 and IPv6.
fn bench_million(c: &mut Criterion) {
    let mut group = c.benchmark_group("packet_path");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));

    // IPv4: `new_flow_frame` gives flow i the client 198.18.1.(i >> 16).
    let pods4 = [addr::POD1, addr::POD2, addr::POD3];
    let net = Net::two_arm()
        .route([198, 18, 1, 0], 24, CLIENT_IFINDEX, None)
        .resolved(POD_IFINDEX, pods4)
        .resolved(CLIENT_IFINDEX, (0..16).map(|x| [198, 18, 1, x]))
        .build();
    let one = table(1);
    let frames = MillionFrames {
        family: "ipv4",
        base: frame((client(0), 1), ([198, 19, 255, 254], 8080)),
        replies: pods4
            .iter()
            .map(|&pod| frame((pod, 5678), ([198, 18, 1, 0], 1)))
            .collect(),
        forward: new_flow_frame,
        client_end: 34,
        client_port: 36,
        pod: 30..34,
        pods: pods4.iter().map(|p| p.to_vec()).collect(),
    };
    let ctx = BatchContext {
        table: &one,
        net: &net,
        now: 1,
    };
    let table4 = Arc::new(million_table());
    million(
        &mut group,
        &frames,
        &|| pipeline(Arc::clone(&table4), 7),
        &ctx,
    );

    // IPv6: `new_flow_frame6` gives flow i the client 2001:2::1xx.
    let pods6 = [addr6::POD1, addr6::POD2, addr6::POD3];
    let client6_of = |x: u8| {
        let mut a = addr6::lab(0, 0);
        a[14] = 1;
        a[15] = x;
        a
    };
    let net = Net::two_arm()
        .ipv6_arms()
        .resolved6(POD_IFINDEX, pods6)
        .resolved6(CLIENT_IFINDEX, (0..16).map(client6_of))
        .build();
    let one = table6(1);
    let frames = MillionFrames {
        family: "ipv6",
        base: frame6((client6(0), 1), (VIP6, 8080)),
        replies: pods6
            .iter()
            .map(|&pod| frame6((pod, 5678), (client6_of(0), 1)))
            .collect(),
        forward: new_flow_frame6,
        client_end: DST.end,
        client_port: SPORT.end,
        pod: DST,
        pods: pods6.iter().map(|p| p.to_vec()).collect(),
    };
    let ctx = BatchContext {
        table: &one,
        net: &net,
        now: 1,
    };
    let table6: Arc<Conntrack<Ipv6Addr>> = Arc::new(million_table());
    million(
        &mut group,
        &frames,
        &|| pipeline6(Arc::clone(&table6), 7),
        &ctx,
    );
    group.finish();
}

criterion_group!(benches, bench, bench_ipv6, bench_snat, bench_million);
criterion_main!(benches);
