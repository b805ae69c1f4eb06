//! Instructions per packet of the IPv6 packet path: the IPv6 twins of
//! `icount.rs`'s cases, built as the criterion `packet_path` IPv6 cases
//! are (from `support/packets6.rs`), so that `benches/icount.sh` can
//! set IPv6 against IPv4 on a loaded machine. A separate binary, so that
//! `icount.rs` still builds at revisions from before IPv6.
//!
//! Usage: `icount6 CASE PACKETS`, CASE one of `established_ipv6`,
//! `reply_ipv6`, `new_flow_ipv6_1`, `new_flow_ipv6_10000`,
//! `established_unreplied_ipv6` (`established_ipv6` over UDP flows that
//! never had a reply, as the veth benchmark's udp-est), `ct_lookups_ipv6`
//! (`icount.rs`'s `ct_lookups` over IPv6: the conntrack bench's batched
//! lookups alone), `new_flow_ipv6_snat_1` and `new_flow_ipv6_snat_10000`
//! (new flows with source NAT through a full table of 8,192 flows, each
//! insert evicting, as the veth benchmark's udp-new runs with SNAT, to
//! a Service among 1 or 10,000).

use std::hint::black_box;
use std::net::Ipv6Addr;
use std::sync::Arc;

use cipgw_config::Protocol;
use cipgw_datapath::conntrack::snat::SnatConfig;
use cipgw_datapath::conntrack::{
    Candidate, Conntrack, ConntrackConfig, FlowHit, FlowKey, FlowMeta,
};
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

/// Flows the SNAT cases' table holds: full after the first 8,192, so
/// that every insert evicts and each backend's SNAT ports are reused
/// (as `icount_snat.rs`'s `TABLE`, and the veth benchmark's
/// `--conntrack-max`).
const SNAT_TABLE: usize = 8192;

/// The gateway's IPv6 SNAT address in the SNAT cases (the lab's
/// Pod-side prefix).
const SNAT6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 0xfe);

fn main() {
    icount_cases::run(
        "icount6",
        &[
            ("established_ipv6", &|n| tracked(n, false)),
            ("reply_ipv6", &|n| tracked(n, true)),
            ("new_flow_ipv6_1", &|n| new_flows(n, 1)),
            ("new_flow_ipv6_10000", &|n| new_flows(n, 10_000)),
            ("established_unreplied_ipv6", &|n| unreplied(n)),
            ("ct_lookups_ipv6", &|n| ct_lookups(n)),
            ("new_flow_ipv6_snat_1", &|n| new_flows_snat(n, 1)),
            ("new_flow_ipv6_snat_10000", &|n| new_flows_snat(n, 10_000)),
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
    let conntrack = Conntrack::new(ConntrackConfig {
        max_flows: NEW_FLOW_TABLE,
        unreplied_percent: 100,
        ..ConntrackConfig::default()
    });
    run_new_flows(packets, services, conntrack);
}

/// `packets` new flows with source NAT to a Service among `services`,
/// through a full table of [`SNAT_TABLE`] flows.
fn new_flows_snat(packets: usize, services: usize) {
    let conntrack = Conntrack::new(ConntrackConfig {
        max_flows: SNAT_TABLE,
        unreplied_percent: 100,
        ..ConntrackConfig::default()
    })
    .with_snat(&SnatConfig {
        addresses: vec![SNAT6],
        ports: 61000..=65535,
    })
    .expect("a valid SNAT configuration");
    let p = run_new_flows(packets, services, conntrack);
    // Checked once, after the loop (which is `icount_snat.rs`'s, so that
    // the two count the same work): every new flow was forwarded, none
    // refused for want of ports.
    assert_eq!(
        p.counters().forwarded.get(),
        packets as u64,
        "every new flow with SNAT forwarded"
    );
}

/// Runs `packets` new IPv6 flows, one at a time, to a Service among
/// `services` through a pipeline whose IPv6 table is `conntrack6`;
/// returns the pipeline.
fn run_new_flows(packets: usize, services: usize, conntrack6: Conntrack<Ipv6Addr>) -> Pipeline {
    let net = net6();
    let t = table6(services);
    let ctx = BatchContext {
        table: &t,
        net: &net,
        now: 1,
    };
    let mut p = pipeline6(conntrack6, 9);
    let base = frame6((client6(0), 1), (VIP6, 8080));
    let mut f = base.clone();
    let len = f.len();
    for i in 0..packets {
        new_flow_frame6(&mut f, &base, i);
        black_box(p.process(&mut f, len, 0, &ctx));
    }
    p
}

/// `lookups` established lookups of 1,024 IPv6 TCP flows (both
/// directions), 32 at a time as `icount.rs`'s `ct_lookups` does them
/// (hash and ask for every bucket, then every record, then look each
/// up): the conntrack bench's `1_thread_ipv6` lookups with their lines
/// in cache.
fn ct_lookups(lookups: usize) {
    const BATCH: usize = 32;
    const FLOWS: u16 = 1024;
    const NOW: u32 = 1;
    let ack = 0x10;
    let address = |n: u16| Ipv6Addr::new(0x2001, 2, 0, 0xabcd, 0, 0, 0xc612, n);
    let ct = Conntrack::<Ipv6Addr>::default();
    let mut keys = Vec::new();
    for n in 0..FLOWS {
        let forward = FlowKey {
            src: address(n),
            dst: Ipv6Addr::new(0x2001, 2, 0, 0xabcd, 0, 0, 0xc613, 0xff01 + n % 16),
            src_port: 40_000 + n,
            dst_port: 80,
            protocol: Protocol::Tcp,
        };
        let backend = (
            Ipv6Addr::new(0x2001, 2, 0, 0xabcd, 0, 0, 0xc613, 1 + n % 64),
            8080,
        );
        let reply = FlowKey {
            src: backend.0,
            dst: forward.src,
            src_port: backend.1,
            dst_port: forward.src_port,
            protocol: Protocol::Tcp,
        };
        ct.insert(forward, backend, NOW, FlowMeta::default())
            .expect("room for the flows");
        ct.lookup(&reply, NOW, 0x12).expect("the reply is tracked");
        ct.lookup(&forward, NOW, ack).expect("the flow is tracked");
        keys.extend([forward, reply]);
    }
    let mut hashes = [0u64; BATCH];
    let mut candidates = [Candidate::NONE; BATCH];
    let mut hit = FlowHit::UNSET;
    let mut done = 0;
    while done < lookups {
        let n = BATCH.min(lookups - done);
        let batch = &keys[done % keys.len()..][..n];
        for (key, hash) in batch.iter().zip(&mut hashes) {
            *hash = ct.hash(black_box(key));
            ct.prefetch_index(*hash);
        }
        for (hash, candidate) in hashes[..n].iter().zip(&mut candidates) {
            *candidate = ct.prefetch_flow(*hash);
        }
        for ((key, hash), candidate) in batch.iter().zip(&hashes).zip(&candidates) {
            let found = ct.lookup_candidate_into(key, *hash, *candidate, NOW, ack, &mut hit);
            assert!(found, "a tracked flow");
            black_box(hit.nat_port);
        }
        done += n;
    }
}
