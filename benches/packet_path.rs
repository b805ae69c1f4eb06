//! Per-packet cost of cipgw's pipeline on one core, no I/O.
//!
//! Cases:
//! - `established/1024_flows`: parse + conntrack hit + DNAT rewrite with
//!   incremental checksums + next-hop addressing, over 1,024 live, replied
//!   flows (served from the worker's flow cache after the first packet of
//!   each second);
//! - `reply/1024_flows`: the same for backend -> client packets;
//! - `new_flow/{1,10000}_services`: parse + service lookup + random
//!   backend choice + conntrack insert (both directions) + rewrite, a new
//!   5-tuple every packet, with the measured Service among 1 or 10,000;
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
//!   `new_flow_ipv6/{1,10000}_services` and `copy_only_ipv6`: the
//!   `established`, `reply`, `new_flow` and `copy_only` cases over IPv6
//!   (IPv6 VIPs in 2001:2:0:100::/64, Pods and clients on the lab's IPv6
//!   arms, the IPv6 connection table `Pipeline::with_conntrack6` gives),
//!   built the same way; the frames carry the same 18-byte payload, so
//!   they are 80 bytes (an IPv6 header is 20 bytes longer than IPv4's).
//!   Compare each with its IPv4 case of the same run (issue 12: within
//!   15%); `new_flow_chunked_ipv6/{1,10000}_services` likewise against
//!   `new_flow_chunked`.
//!
//! Run: `cargo bench -p cipgw-datapath --bench packet_path`.

use std::hint::black_box;
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cipgw_datapath::conntrack::snat::SnatConfig;
use cipgw_datapath::conntrack::{Conntrack, ConntrackConfig};
use cipgw_datapath::family::IpFamily;
use cipgw_datapath::harness::pipeline;
use cipgw_datapath::pipeline::{BatchContext, Pipeline, Verdict};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

#[path = "support/packets.rs"]
mod packets;
#[path = "support/packets6.rs"]
mod packets6;

use packets::{
    client, frame, maglev_table, net, new_flow_frame, process_copy, table, tracked_flows,
};
use packets6::{client6, frame6, net6, new_flow_frame6, table6, tracked_flows6, SPORT, SRC, VIP6};

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
        b.iter(|| {
            let verdict = process_copy(&mut p, &ctx, &frames, i, &mut scratch);
            i += 1;
            black_box(verdict)
        })
    });
    group.bench_function("reply/1024_flows", |b| {
        let mut i = 0;
        b.iter(|| {
            let verdict = process_copy(&mut p, &ctx, &replies, i, &mut scratch);
            i += 1;
            black_box(verdict)
        })
    });

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
                let mut f = base.clone();
                let len = f.len();
                let start = Instant::now();
                for i in 0..iters {
                    new_flow_frame(&mut f, &base, i as usize);
                    black_box(p.process(&mut f, len, 0, &ctx));
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

/// A new-flow table of `max_flows` (every flow may stay unreplied), its
/// pages mapped before the clock starts: the cases time a gateway's
/// steady state, not the kernel's first touch of a fresh table (which
/// costs per flow in proportion to the record's size, so 3x as much for
/// IPv6, and which a gateway pays once).
fn new_flow_table<A: IpFamily>(max_flows: usize) -> Conntrack<A> {
    let ct = Conntrack::new(ConntrackConfig {
        max_flows,
        unreplied_percent: 100,
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
                    let mut f = base.clone();
                    let len = f.len();
                    let start = Instant::now();
                    for i in done..done + n {
                        new_flow_frame(&mut f, &base, i as usize);
                        black_box(p.process(&mut f, len, 0, &ctx));
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
fn pipeline6(conntrack6: Conntrack<Ipv6Addr>, seed: u64) -> Pipeline {
    let idle = Conntrack::new(ConntrackConfig {
        max_flows: 1024,
        ..ConntrackConfig::default()
    });
    pipeline(Arc::new(idle), seed).with_conntrack6(Arc::new(conntrack6))
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
        b.iter(|| {
            let verdict = process_copy(&mut p, &ctx, &frames, i, &mut scratch);
            i += 1;
            black_box(verdict)
        })
    });
    group.bench_function("reply_ipv6/1024_flows", |b| {
        let mut i = 0;
        b.iter(|| {
            let verdict = process_copy(&mut p, &ctx, &replies, i, &mut scratch);
            i += 1;
            black_box(verdict)
        })
    });

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
                let mut f = base.clone();
                let len = f.len();
                let start = Instant::now();
                for i in 0..iters {
                    new_flow_frame6(&mut f, &base, i as usize);
                    black_box(p.process(&mut f, len, 0, &ctx));
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
                    let mut f = base.clone();
                    let len = f.len();
                    let start = Instant::now();
                    for i in done..done + n {
                        new_flow_frame6(&mut f, &base, i as usize);
                        black_box(p.process(&mut f, len, 0, &ctx));
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

criterion_group!(benches, bench, bench_ipv6, bench_snat);
criterion_main!(benches);
