//! Maglev against random choice, interleaved: the two A/Bs of Maglev's
//! performance targets, on a machine whose load moves by more than the
//! difference between two criterion runs.
//!
//! - New flows ("within 10% of random"): each round times 4,096 new
//!   flows under random choice and 4,096 under Maglev (the order
//!   alternates per round), each into a fresh connection table of 4,096
//!   (built before the clock starts), with the measured Service among 1
//!   or 10,000 (every one under the same algorithm).
//! - Table compilation ("rebuild at most twice random"): each round
//!   compiles the 10,000 Services of 10 endpoints of benches/maglev.rs
//!   once under random and once under Maglev with the store of tables
//!   kept (a change that built no new table), alternating.
//!
//! Time is the thread's CPU time (CLOCK_THREAD_CPUTIME_ID),
//! so time the thread spends preempted by other work does not count;
//! what load remains (caches shared with other processes) hits both
//! halves of a round alike, so the median of the per-round ratios is the
//! comparison; the medians of each side are printed for scale.
//!
//! Run: `cargo bench -p cipgw-datapath --bench maglev_ab [-- ROUNDS]`
//! (default 200 rounds of new flows, a tenth of that of compilations).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use cipgw_config::LbAlgorithm;
use cipgw_datapath::conntrack::{Conntrack, ConntrackConfig};
use cipgw_datapath::harness::pipeline;
use cipgw_datapath::maglev::MaglevTables;
use cipgw_datapath::pipeline::BatchContext;
use cipgw_datapath::route::NetSnapshot;
use cipgw_datapath::table::CompiledTable;

#[path = "support/packets.rs"]
// Shared with the other packet-path benches; this one uses part of it.
#[allow(dead_code)]
mod packets;

use packets::{client, frame, maglev_table, net, new_flow_frame, table};

#[path = "support/services.rs"]
mod services;

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
    let ctx = BatchContext { table, net, now: 1 };
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
        new_flow_frame(&mut f, &base, i);
        black_box(p.process(&mut f, len, 0, &ctx));
    }
    thread_cpu_time() - start
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Runs `rounds` rounds of `a` and `b` (alternating which goes first)
/// and prints the medians and the per-round ratio b/a.
fn ab(
    name: &str,
    unit: &str,
    rounds: usize,
    mut a: impl FnMut(usize) -> f64,
    mut b: impl FnMut(usize) -> f64,
) {
    let (mut xs, mut ys, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (x, y) = if round % 2 == 0 {
            let x = a(round);
            (x, b(round))
        } else {
            let y = b(round);
            (a(round), y)
        };
        xs.push(x);
        ys.push(y);
        ratio.push(y / x);
    }
    let (mx, my, mr) = (median(&mut xs), median(&mut ys), median(&mut ratio));
    println!(
        "{name}: random {mx:.0} {unit}, maglev {my:.0} {unit} (medians of {rounds} rounds); \
         maglev/random per round: median {mr:.3}, quartiles {:.3}-{:.3}",
        ratio[rounds / 4],
        ratio[rounds * 3 / 4],
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a number is the round count.
    let rounds = std::env::args()
        .skip(1)
        .find_map(|a| a.parse::<usize>().ok())
        .unwrap_or(200);
    let net = net();
    let per_flow = |t: Duration| t.as_nanos() as f64 / CHUNK as f64;
    for services in [1, 10_000] {
        let (random, maglev) = (table(services), maglev_table(services));
        ab(
            &format!("new_flow/{services}_services ({CHUNK} per round)"),
            "ns",
            rounds,
            |round| per_flow(chunk(&random, &net, round * CHUNK)),
            |round| per_flow(chunk(&maglev, &net, round * CHUNK)),
        );
    }

    let random = services::model(None, usize::MAX, 0);
    let maglev = services::model(Some(LbAlgorithm::Maglev), usize::MAX, 0);
    let mut random_tables = MaglevTables::new(16_381, 7);
    let mut maglev_tables = MaglevTables::new(16_381, 7);
    services::compile(&maglev, &mut maglev_tables);
    let timed = |f: &mut dyn FnMut()| {
        let start = thread_cpu_time();
        f();
        (thread_cpu_time() - start).as_secs_f64() * 1e3
    };
    ab(
        "compile/10000_services_10_endpoints (rebuild, tables kept)",
        "ms",
        (rounds / 10).max(5),
        |_| timed(&mut || drop(black_box(services::compile(&random, &mut random_tables)))),
        |_| timed(&mut || drop(black_box(services::compile(&maglev, &mut maglev_tables)))),
    );
}
