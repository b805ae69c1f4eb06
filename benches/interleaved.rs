//! Same-run ratios on a noisy host: two packet-path cases timed in
//! alternating rounds in one process (A, B, A, B, ...), so that whatever
//! else the host runs slows both alike, and the ratio is the median of
//! the rounds' B/A. Criterion times one case after another, minutes
//! apart: on these VMs two runs of one case differ by 15%, more than the
//! differences issue 12 (IPv6 within 15% of IPv4) and issue 11 (source
//! NAT) ask about.
//!
//! Usage: `cargo bench -p cipgw-datapath --bench interleaved [-- PAIR...]`,
//! PAIR one of `established` (IPv6 against IPv4, 1,024 replied flows),
//! `reply` (likewise, their replies), `new_flow` (IPv6 against IPv4, a
//! new flow per packet through a fresh 4,096-flow table per round, as
//! `new_flow_chunked`), `new_flow_snat` (SNAT against none, IPv4, the
//! same), `new_flow_full_snat` (SNAT against none through a full
//! 8,192-flow table, as the veth benchmark's udp-new) and `churn`
//! (`established`'s IPv4 side against the same while one other replied
//! flow leaves the table every 64 packets); default all.
//! Each prints the median ns per packet of A and B over the rounds and
//! the median, lowest and highest round ratio. The harness's frame copy
//! is in both sides of every pair.

use std::hint::black_box;
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Instant;

use cipgw_datapath::conntrack::snat::SnatConfig;
use cipgw_datapath::conntrack::{Conntrack, ConntrackConfig};
use cipgw_datapath::family::IpFamily;
use cipgw_datapath::harness::pipeline;
use cipgw_datapath::pipeline::{BatchContext, Pipeline};

#[path = "support/packets.rs"]
// Shared with the criterion benches; this one uses part of it.
#[allow(dead_code)]
mod packets;
#[path = "support/packets6.rs"]
mod packets6;

use packets::{
    client, frame, leaving_flows, net, new_flow_frame, table, tracked_flows, WrittenAhead,
};
use packets6::{client6, frame6, net6, new_flow_frame6, table6, tracked_flows6, VIP6};

/// The IPv4 VIP of the measured Service (the last of `table(n)`'s).
const VIP: [u8; 4] = [198, 19, 255, 254];
/// The SNAT address of the SNAT cases.
const SNAT: [u8; 4] = [198, 18, 2, 1];
/// Rounds per pair, and packets per round.
const ROUNDS: usize = 41;
const PACKETS: usize = 50_000;

fn main() {
    let pairs: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let all = [
        "established",
        "reply",
        "new_flow",
        "new_flow_snat",
        "new_flow_full_snat",
        "churn",
    ];
    for name in all {
        if pairs.is_empty() || pairs.iter().any(|p| p == name) {
            pair(name);
        }
    }
    for p in &pairs {
        if !all.contains(&p.as_str()) {
            eprintln!("interleaved: no pair {p:?} (pairs: {})", all.join(", "));
            std::process::exit(64);
        }
    }
}

/// One side of a pair: runs `PACKETS` packets and returns the time.
type Side = Box<dyn FnMut() -> std::time::Duration>;

fn pair(name: &str) {
    let (label_a, label_b, mut a, mut b): (&str, &str, Side, Side) = match name {
        "established" => ("IPv4", "IPv6", tracked4(false), tracked6(false)),
        "reply" => ("IPv4", "IPv6", tracked4(true), tracked6(true)),
        "new_flow" => ("IPv4", "IPv6", new_flows4(4096, false), new_flows6()),
        "new_flow_snat" => (
            "no SNAT",
            "SNAT",
            new_flows4(4096, false),
            new_flows4(4096, true),
        ),
        "new_flow_full_snat" => (
            "no SNAT",
            "SNAT",
            new_flows4(8192, false),
            new_flows4(8192, true),
        ),
        "churn" => ("steady", "churn", tracked4(false), churning4()),
        _ => unreachable!("pairs are checked by main"),
    };
    // Warm up both sides once.
    a();
    b();
    let mut times_a = Vec::with_capacity(ROUNDS);
    let mut times_b = Vec::with_capacity(ROUNDS);
    let mut ratios = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        // Alternate which side goes first, so neither always follows the
        // other's cache footprint.
        let (ta, tb) = if round % 2 == 0 {
            let ta = a();
            (ta, b())
        } else {
            let tb = b();
            (a(), tb)
        };
        let per = |t: std::time::Duration| t.as_secs_f64() * 1e9 / PACKETS as f64;
        times_a.push(per(ta));
        times_b.push(per(tb));
        ratios.push(per(tb) / per(ta));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (ma, mb, mr) = (
        median(&mut times_a),
        median(&mut times_b),
        median(&mut ratios),
    );
    println!(
        "{name:<20} {label_a} {ma:7.1} ns  {label_b} {mb:7.1} ns  {label_b}/{label_a} median {mr:.3} (rounds {:.3}-{:.3}, {ROUNDS} rounds of {PACKETS} packets)",
        ratios[0],
        ratios[ROUNDS - 1],
    );
}

/// A pipeline whose IPv6 table is `conntrack6` (the IPv4 one small).
fn pipeline6(conntrack6: Conntrack<Ipv6Addr>, seed: u64) -> Pipeline {
    let idle = Conntrack::new(ConntrackConfig {
        max_flows: 1024,
        ..ConntrackConfig::default()
    });
    pipeline(Arc::new(idle), seed).with_conntrack6(Arc::new(conntrack6))
}

/// A new-flow table of `max_flows`, its pages mapped before timing (as
/// `packet_path`'s: the steady state, not the table's first fill).
fn new_flow_table<A: IpFamily>(max_flows: usize) -> Conntrack<A> {
    let ct = Conntrack::new(ConntrackConfig {
        max_flows,
        unreplied_percent: 100,
        ..ConntrackConfig::default()
    });
    ct.populate().expect("MADV_POPULATE_WRITE (Linux 5.14)");
    ct
}

/// What a side keeps alive: the table and routes its contexts borrow.
fn leak<T>(value: T) -> &'static T {
    Box::leak(Box::new(value))
}

/// Packets of 1,024 replied IPv4 flows (or their replies).
fn tracked4(replies: bool) -> Side {
    let ctx = BatchContext {
        table: leak(table(1)),
        net: leak(net()),
        now: 1,
    };
    let mut p = pipeline(Arc::new(Conntrack::default()), 7);
    let (forward, back) = tracked_flows(&mut p, &ctx, VIP);
    let frames = if replies { back } else { forward };
    timed_frames(p, ctx, frames)
}

/// [`tracked4`]'s client-to-Pod packets while, every 64 packets, one
/// other replied flow leaves the table (a connection that ended
/// elsewhere; its removal is timed too).
fn churning4() -> Side {
    let ctx = BatchContext {
        table: leak(table(1)),
        net: leak(net()),
        now: 1,
    };
    let ct = Arc::new(Conntrack::default());
    let mut p = pipeline(Arc::clone(&ct), 7);
    let (forward, _) = tracked_flows(&mut p, &ctx, VIP);
    // One flow per 64 packets of every round and of the warm-up.
    let flows = (ROUNDS + 1) * PACKETS.div_ceil(64);
    let leaving = leaving_flows(&ct, VIP, flows);
    let mut leaving = leaving.into_iter();
    // Frames numbered on across rounds: the ring writes each once.
    let mut ring = WrittenAhead::new(forward[0].len(), 0);
    let mut packet = 0;
    Box::new(move || {
        let start = Instant::now();
        for i in 0..PACKETS {
            if i % 64 == 0 {
                let key = leaving.next().expect("a leaving flow per 64 packets");
                assert!(ct.remove(&key), "the leaving flow was there");
            }
            black_box(ring.process_tracked(&mut p, &ctx, &forward, packet));
            packet += 1;
        }
        start.elapsed()
    })
}

/// Packets of 1,024 replied IPv6 flows (or their replies).
fn tracked6(replies: bool) -> Side {
    let ctx = BatchContext {
        table: leak(table6(1)),
        net: leak(net6()),
        now: 1,
    };
    let mut p = pipeline6(Conntrack::default(), 7);
    let (forward, back) = tracked_flows6(&mut p, &ctx);
    let frames = if replies { back } else { forward };
    timed_frames(p, ctx, frames)
}

fn timed_frames(mut p: Pipeline, ctx: BatchContext<'static>, frames: Vec<Vec<u8>>) -> Side {
    // Frames numbered on across rounds: the ring writes each once.
    let mut ring = WrittenAhead::new(frames[0].len(), 0);
    let mut packet = 0;
    Box::new(move || {
        let start = Instant::now();
        for _ in 0..PACKETS {
            black_box(ring.process_tracked(&mut p, &ctx, &frames, packet));
            packet += 1;
        }
        start.elapsed()
    })
}

/// New IPv4 flows through a table of `max_flows`, with or without SNAT:
/// a fresh table per round when it holds a round's flows (4,096 flows per
/// table, as `new_flow_chunked`, the table filled anew for every 4,096
/// packets), else one table held full across rounds.
fn new_flows4(max_flows: usize, snat: bool) -> Side {
    let ctx = BatchContext {
        table: leak(table(1)),
        net: leak(net()),
        now: 1,
    };
    let fresh = move || {
        let ct = new_flow_table(max_flows + 1);
        let ct = if snat {
            ct.with_snat(&SnatConfig {
                addresses: vec![SNAT.into()],
                ports: 61000..=65535,
            })
            .expect("a valid SNAT configuration")
        } else {
            ct
        };
        pipeline(Arc::new(ct), 9)
    };
    let chunked = max_flows == 4096;
    let mut p = fresh();
    let base = frame((client(0), 1), (VIP, 8080));
    let mut f = base.clone();
    let mut next = 0usize;
    Box::new(move || {
        let mut elapsed = std::time::Duration::ZERO;
        let mut done = 0;
        while done < PACKETS {
            if chunked {
                // Not timed: a fresh table for the next chunk.
                p = fresh();
            }
            let n = if chunked {
                4096.min(PACKETS - done)
            } else {
                PACKETS
            };
            let len = f.len();
            let start = Instant::now();
            for _ in 0..n {
                new_flow_frame(&mut f, &base, next);
                black_box(p.process(&mut f, len, 0, &ctx));
                next += 1;
            }
            elapsed += start.elapsed();
            done += n;
        }
        elapsed
    })
}

/// New IPv6 flows, a fresh 4,096-flow table every 4,096 (as
/// `new_flow_chunked_ipv6`).
fn new_flows6() -> Side {
    let ctx = BatchContext {
        table: leak(table6(1)),
        net: leak(net6()),
        now: 1,
    };
    let fresh = || pipeline6(new_flow_table(4097), 9);
    let base = frame6((client6(0), 1), (VIP6, 8080));
    let mut f = base.clone();
    let mut next = 0usize;
    Box::new(move || {
        let mut elapsed = std::time::Duration::ZERO;
        let mut done = 0;
        while done < PACKETS {
            let mut p = fresh();
            let n = 4096.min(PACKETS - done);
            let len = f.len();
            let start = Instant::now();
            for _ in 0..n {
                new_flow_frame6(&mut f, &base, next);
                black_box(p.process(&mut f, len, 0, &ctx));
                next += 1;
            }
            elapsed += start.elapsed();
            done += n;
        }
        elapsed
    })
}
