//! Instructions per packet of the IPv6 packet path: the IPv6 twins of
//! `icount.rs`'s cases, built as the criterion `packet_path` IPv6 cases
//! are (from `support/packets6.rs`), so that `benches/icount.sh` can
//! set IPv6 against IPv4 on a loaded machine. A separate binary, so that
//! `icount.rs` still builds at revisions from before IPv6.
//!
//! Usage: `icount6 CASE PACKETS`, CASE one of `established_ipv6`,
//! `reply_ipv6`, `new_flow_ipv6_1`, `new_flow_ipv6_10000`,
//! `established_unreplied_ipv6` (`established_ipv6` over UDP flows that
//! never had a reply, as the veth benchmark's udp-est).

use std::hint::black_box;
use std::net::Ipv6Addr;
use std::sync::Arc;

use cipgw_datapath::conntrack::{Conntrack, ConntrackConfig};
use cipgw_datapath::harness::pipeline;
use cipgw_datapath::pipeline::{BatchContext, Pipeline, Verdict};

#[path = "support/icount_cases.rs"]
mod icount_cases;
#[path = "support/packets.rs"]
// Shared with the criterion benches; this one uses part of it.
#[allow(dead_code)]
mod packets;
#[path = "support/packets6.rs"]
mod packets6;

use packets::WrittenAhead;
use packets6::{client6, frame6, net6, new_flow_frame6, table6, tracked_flows6, VIP6};

/// Flows a new-flow table holds, as in `icount.rs`.
const NEW_FLOW_TABLE: usize = 1 << 19;

fn main() {
    icount_cases::run(
        "icount6",
        &[
            ("established_ipv6", &|n| tracked(n, false)),
            ("reply_ipv6", &|n| tracked(n, true)),
            ("new_flow_ipv6_1", &|n| new_flows(n, 1)),
            ("new_flow_ipv6_10000", &|n| new_flows(n, 10_000)),
            ("established_unreplied_ipv6", &|n| unreplied(n)),
        ],
    );
}

/// A pipeline whose IPv6 table is `conntrack6` (the IPv4 one idle).
fn pipeline6(conntrack6: Conntrack<Ipv6Addr>, seed: u64) -> Pipeline {
    let idle = Conntrack::new(ConntrackConfig {
        max_flows: 1024,
        ..ConntrackConfig::default()
    });
    pipeline(Arc::new(idle), seed).with_conntrack6(Arc::new(conntrack6))
}

/// `packets` packets of 1,024 live, replied flows, client to Pod (or the
/// replies), as the criterion `established_ipv6` and `reply_ipv6`.
fn tracked(packets: usize, replies: bool) {
    let net = net6();
    let one = table6(1);
    let ctx = BatchContext {
        table: &one,
        net: &net,
        now: 1,
    };
    let mut p = pipeline6(Conntrack::default(), 7);
    let (forward, back) = tracked_flows6(&mut p, &ctx);
    let frames = if replies { &back } else { &forward };
    let mut ring = WrittenAhead::new(frames[0].len(), 0);
    for i in 0..packets {
        black_box(ring.process_tracked(&mut p, &ctx, frames, i));
    }
}

/// `packets` packets of 1,024 live IPv6 UDP flows that never had a
/// reply, client to Pod, one at a time as `established_ipv6`.
fn unreplied(packets: usize) {
    let net = net6();
    let one = table6(1);
    let ctx = BatchContext {
        table: &one,
        net: &net,
        now: 1,
    };
    let mut p = pipeline6(Conntrack::default(), 7);
    let frames: Vec<Vec<u8>> = (0..1024)
        .map(|i| frame6((client6(i), 20000 + i as u16), (VIP6, 8080)))
        .collect();
    for f in &frames {
        let mut copy = f.clone();
        let len = copy.len();
        assert!(
            matches!(p.process(&mut copy, len, 0, &ctx), Verdict::Forward { .. }),
            "a new IPv6 flow is forwarded"
        );
    }
    let mut ring = WrittenAhead::new(frames[0].len(), 0);
    for i in 0..packets {
        black_box(ring.process_tracked(&mut p, &ctx, &frames, i));
    }
}

/// `packets` new IPv6 flows to a Service among `services`.
fn new_flows(packets: usize, services: usize) {
    assert!(packets < NEW_FLOW_TABLE, "at most {NEW_FLOW_TABLE} packets");
    let net = net6();
    let t = table6(services);
    let ctx = BatchContext {
        table: &t,
        net: &net,
        now: 1,
    };
    let mut p = pipeline6(
        Conntrack::new(ConntrackConfig {
            max_flows: NEW_FLOW_TABLE,
            unreplied_percent: 100,
            ..ConntrackConfig::default()
        }),
        9,
    );
    let base = frame6((client6(0), 1), (VIP6, 8080));
    let mut f = base.clone();
    let len = f.len();
    for i in 0..packets {
        new_flow_frame6(&mut f, &base, i);
        black_box(p.process(&mut f, len, 0, &ctx));
    }
}
