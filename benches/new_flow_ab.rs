//! New flows under Maglev against random choice, interleaved: the A/B
//! the "within 10% of random" target asks for, on a machine
//! whose load moves by more than that between two criterion runs.
//!
//! Each round times 4,096 new flows under random choice, then 4,096
//! under Maglev (the order alternates per round), each into a fresh
//! connection table of 4,096 (built before the clock starts), with the
//! measured Service among 1 or 10,000 (every one under the same
//! algorithm). Time is the thread's CPU time (CLOCK_THREAD_CPUTIME_ID),
//! so time the thread spends preempted by other work does not count;
//! what load remains (caches shared with other processes) hits both
//! halves of a round alike, so the median of the per-round ratios is the
//! comparison; the medians of each side are printed for scale.
//!
//! Run: `cargo bench -p cipgw-datapath --bench new_flow_ab [-- ROUNDS]`
//! (default 200 rounds).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use cipgw_datapath::conntrack::{Conntrack, ConntrackConfig};
use cipgw_datapath::harness::pipeline;
use cipgw_datapath::pipeline::BatchContext;
use cipgw_datapath::route::NetSnapshot;
use cipgw_datapath::table::CompiledTable;

#[path = "support/packets.rs"]
mod packets;

use packets::{client, frame, maglev_table, net, table};

const CHUNK: usize = 4096;

/// This thread's CPU time so far.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to write; the clock
    // id is a constant every Linux has.
    let ret = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(ret, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Time of `CHUNK` new flows against `table`, starting at flow `first`.
fn chunk(table: &CompiledTable, net: &NetSnapshot, first: usize) -> Duration {
    let ctx = BatchContext {
        table,
        net,
        now: 1,
    };
    let conntrack = Arc::new(Conntrack::new(ConntrackConfig {
        max_flows: CHUNK + 1,
        unreplied_percent: 100,
        ..ConntrackConfig::default()
    }));
    let mut p = pipeline(conntrack, 9);
    let base = frame((client(0), 1), ([198, 19, 255, 254], 8080));
    let mut f = base.clone();
    let len = f.len();
    let start = thread_cpu_time();
    for i in first..first + CHUNK {
        f.copy_from_slice(&base);
        f[28..30].copy_from_slice(&(((i >> 16) as u16) | 0x100).to_be_bytes());
        f[34..36].copy_from_slice(&(i as u16).to_be_bytes());
        black_box(p.process(&mut f, len, 0, &ctx));
    }
    thread_cpu_time() - start
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; a number is the round count.
    let rounds = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(200);
    let net = net();
    for services in [1, 10_000] {
        let (random, maglev) = (table(services), maglev_table(services));
        let (mut a, mut b, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let first = round * CHUNK;
            let (ta, tb) = if round % 2 == 0 {
                let ta = chunk(&random, &net, first);
                (ta, chunk(&maglev, &net, first))
            } else {
                let tb = chunk(&maglev, &net, first);
                (chunk(&random, &net, first), tb)
            };
            let per_flow = |t: Duration| t.as_nanos() as f64 / CHUNK as f64;
            a.push(per_flow(ta));
            b.push(per_flow(tb));
            ratio.push(per_flow(tb) / per_flow(ta));
        }
        println!(
            "new_flow/{services}_services: random {:.0} ns, maglev {:.0} ns (medians of {rounds} \
             rounds of {CHUNK}); maglev/random per round: median {:.3}, quartiles {:.3}-{:.3}",
            median(&mut a),
            median(&mut b),
            median(&mut ratio),
            ratio[rounds / 4],
            ratio[rounds * 3 / 4],
        );
    }
}
