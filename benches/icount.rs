//! Instructions per packet of the IPv4 packet path, for A/B comparisons
//! that a loaded machine cannot spoil: `benches/icount.sh` runs this
//! binary under valgrind's cachegrind twice per case, with two packet
//! counts, and divides the difference of the instructions executed by the
//! difference of the packets, so the setup cancels out.
//!
//! Usage: `icount CASE PACKETS`, CASE one of `established`, `reply`,
//! `new_flow_1`, `new_flow_10000` (the criterion `packet_path` cases of
//! the same names, built the same way from `support/packets.rs`) and
//! `established_batched` (`established` in batches of 64 with the
//! worker's prefetch pass before each) and `established_spread` (as
//! `packet_path`'s `established_1M`, over 2^18 flows: batched, and
//! nearly every packet a miss of the worker's flow cache) and
//! `reply_spread` (the same flows' replies, as `packet_path`'s
//! `reply_1M`) and `established_churn` (`established_batched` while one other replied
//! flow leaves the table per batch, as connections end on a busy
//! gateway) and `new_flow_batched` (`new_flow_1` batched as a worker
//! runs it: the second pass picks each new flow's backend) and
//! `established_unreplied` (`established_batched` over 1,024 UDP flows
//! that never get a reply, as the veth benchmark's udp-est sends them to
//! a sink) and `ct_lookups` (the conntrack bench's batched lookups, its
//! `lookup_established/1M_flows/1_thread_cached`: the table alone, no
//! packet, over both directions of 1,024 established TCP flows) and
//! `ct_flood` (the conntrack bench's SYN flood alone, `syn_flood`'s
//! `new_flows`: fresh flows into a full table, each insert evicting the
//! oldest unreplied flow). Cases
//! and setup use only what older commits also have, so that the script
//! can build this file at a base revision for an A/B.

use std::hint::black_box;
use std::sync::Arc;

use cipgw_config::Protocol;
use cipgw_datapath::conntrack::{
    Candidate, Conntrack, ConntrackConfig, FlowHit, FlowKey, FlowMeta,
};
use cipgw_datapath::harness::{addr, pipeline, Net, CLIENT_IFINDEX, POD_IFINDEX};
use cipgw_datapath::pipeline::{BatchContext, Pipeline, Verdict};

#[path = "support/icount_cases.rs"]
mod icount_cases;
#[path = "support/packets.rs"]
// Shared with the criterion benches; this one uses part of it.
#[allow(dead_code)]
mod packets;

use packets::{
    client, frame, leaving_flows, net, new_flow_frame, table, tracked_flows, WrittenAhead,
};

/// The VIP of the measured Service (the last of `table(n)`'s).
const VIP: [u8; 4] = [198, 19, 255, 254];
/// Flows a new-flow table holds: more than any run's packets, the same
/// for every run, so that its setup cancels out.
const NEW_FLOW_TABLE: usize = 1 << 19;

fn main() {
    icount_cases::run(
        "icount",
        &[
            ("established", &|n| tracked(n, false)),
            ("reply", &|n| tracked(n, true)),
            ("established_batched", &|n| batched(n)),
            ("established_spread", &|n| spread(n, false)),
            ("reply_spread", &|n| spread(n, true)),
            ("established_churn", &|n| churn(n)),
            ("established_unreplied", &|n| unreplied(n)),
            ("new_flow_1", &|n| new_flows(n, 1)),
            ("new_flow_10000", &|n| new_flows(n, 10_000)),
            ("new_flow_batched", &|n| new_flows_batched(n)),
            ("ct_lookups", &|n| ct_lookups(n)),
            ("ct_flood", &|n| ct_flood(n)),
        ],
    );
}

/// What a case of [`with_tracked`] runs on.
struct Tracked<'a> {
    ctx: BatchContext<'a>,
    conntrack: Arc<Conntrack>,
    /// The flows' client-to-Pod frames, and their replies.
    forward: Vec<Vec<u8>>,
    back: Vec<Vec<u8>>,
}

/// Runs `case` on a pipeline tracking 1,024 live, replied flows
/// (`tracked_flows`).
fn with_tracked(case: impl FnOnce(&mut Pipeline, &Tracked<'_>)) {
    let net = net();
    let one = table(1);
    let ctx = BatchContext {
        table: &one,
        net: &net,
        now: 1,
    };
    let conntrack = Arc::new(Conntrack::default());
    let mut p = pipeline(Arc::clone(&conntrack), 7);
    let (forward, back) = tracked_flows(&mut p, &ctx, VIP);
    let tracked = Tracked {
        ctx,
        conntrack,
        forward,
        back,
    };
    case(&mut p, &tracked);
}

/// `packets` packets of 1,024 live, replied flows, client to Pod (or the
/// replies).
fn tracked(packets: usize, replies: bool) {
    with_tracked(|p, t| {
        let frames = if replies { &t.back } else { &t.forward };
        let mut ring = WrittenAhead::new(frames[0].len(), 0);
        for i in 0..packets {
            black_box(ring.process_tracked(p, &t.ctx, frames, i));
        }
    });
}

/// Runs `packets` frames of `len` bytes through `p` 64 at a time, as a
/// worker takes them from an RX ring: `write` puts packet `i`'s frame in
/// its buffer, each batch's prefetch passes (`Pipeline::prefetch_headers`,
/// `Pipeline::prefetch`, `Pipeline::prefetch_flows`) run first, then each
/// frame is processed.
fn in_batches(
    p: &mut Pipeline,
    ctx: &BatchContext<'_>,
    packets: usize,
    len: usize,
    write: impl FnMut(&mut [u8], usize),
) {
    in_batches_from(p, ctx, packets, len, 0, write);
}

/// [`in_batches`] for frames that arrive on port `ingress`.
fn in_batches_from(
    p: &mut Pipeline,
    ctx: &BatchContext<'_>,
    packets: usize,
    len: usize,
    ingress: u8,
    mut write: impl FnMut(&mut [u8], usize),
) {
    const BATCH: usize = 64;
    let mut scratch = vec![vec![0u8; 2048]; BATCH];
    let mut sent = 0;
    while sent < packets {
        let n = BATCH.min(packets - sent);
        for (k, buf) in scratch[..n].iter_mut().enumerate() {
            write(&mut buf[..len], sent + k);
            // The worker runs these as two passes over the batch; one loop
            // here executes the same instructions.
            Pipeline::prefetch_headers(&buf[..len]);
            p.prefetch(&buf[..len]);
        }
        p.prefetch_flows(ctx);
        for buf in &mut scratch[..n] {
            black_box(p.process(buf, len, ingress, ctx));
        }
        sent += n;
    }
}

/// `packets` packets of the `established` case, batched as a worker runs
/// them ([`in_batches`]).
fn batched(packets: usize) {
    with_tracked(|p, t| {
        let len = t.forward[0].len();
        in_batches(p, &t.ctx, packets, len, |buf, i| {
            buf.copy_from_slice(&t.forward[i & 1023])
        });
    });
}

/// `packets` packets of 1,024 live UDP flows that never had a reply (a
/// one-way stream, the veth benchmark's udp-est), client to Pod, batched
/// as a worker runs them ([`in_batches`]).
fn unreplied(packets: usize) {
    let net = net();
    let one = table(1);
    let ctx = BatchContext {
        table: &one,
        net: &net,
        now: 1,
    };
    let mut p = pipeline(Arc::new(Conntrack::default()), 7);
    let frames: Vec<Vec<u8>> = (0..1024)
        .map(|i| frame((client(i), 20000 + i as u16), (VIP, 8080)))
        .collect();
    for f in &frames {
        let mut copy = f.clone();
        let len = copy.len();
        assert!(
            matches!(p.process(&mut copy, len, 0, &ctx), Verdict::Forward { .. }),
            "a new flow is forwarded"
        );
    }
    let len = frames[0].len();
    in_batches(&mut p, &ctx, packets, len, |buf, i| {
        buf.copy_from_slice(&frames[i & 1023])
    });
}

/// Other flows `established_churn` has leave the table, one per batch:
/// room for every batch of the longest run, the same number for every
/// run, so that their setup cancels out.
const LEAVING: usize = 4096;

/// `packets` packets of the `established` case batched as a worker runs
/// them ([`in_batches`]), and before each batch one other replied flow
/// leaves the table (a connection that ended elsewhere, as the sweeper
/// removes them: at 10 M packets a second, 150,000 a second).
fn churn(packets: usize) {
    assert!(
        packets.div_ceil(64) <= LEAVING,
        "at most {LEAVING} batches of 64"
    );
    with_tracked(|p, t| {
        let ct = &t.conntrack;
        let leaving = leaving_flows(ct, VIP, LEAVING);
        let len = t.forward[0].len();
        in_batches(p, &t.ctx, packets, len, |buf, i| {
            if i % 64 == 0 {
                assert!(ct.remove(&leaving[i / 64]), "the leaving flow was there");
            }
            buf.copy_from_slice(&t.forward[i & 1023]);
        });
    });
}

/// Flows of `established_spread`.
const SPREAD_FLOWS: usize = 1 << 18;

/// `packets` packets over [`SPREAD_FLOWS`] live, replied, assured
/// flows, packet `k` of flow `k * 0x9e3779b9 mod 2^18` (as
/// `packet_path`'s `established_1M`; with `reply`, the flow's reply from
/// its Pod, as `reply_1M`), batched as a worker runs them
/// ([`in_batches`]).
fn spread(packets: usize, reply: bool) {
    let pods = [addr::POD1, addr::POD2, addr::POD3];
    let net = Net::two_arm()
        .route([198, 18, 1, 0], 24, CLIENT_IFINDEX, None)
        .resolved(POD_IFINDEX, pods)
        .resolved(CLIENT_IFINDEX, (0..4).map(|x| [198, 18, 1, x]))
        .build();
    let one = table(1);
    let ctx = BatchContext {
        table: &one,
        net: &net,
        now: 1,
    };
    let mut p = pipeline(
        Arc::new(Conntrack::new(ConntrackConfig {
            max_flows: 2 * SPREAD_FLOWS,
            ..ConntrackConfig::default()
        })),
        7,
    );
    let base = frame((client(0), 1), (VIP, 8080));
    let len = base.len();
    let mut f = base.clone();
    // Each flow's Pod, by its index in `pods`.
    let mut pod_of = Vec::with_capacity(SPREAD_FLOWS);
    for i in 0..SPREAD_FLOWS {
        new_flow_frame(&mut f, &base, i);
        p.process(&mut f, len, 0, &ctx);
        let pod = [f[30], f[31], f[32], f[33]];
        pod_of.push(
            pods.iter()
                .position(|&p| p == pod)
                .expect("one of the Pods") as u8,
        );
        let mut r = frame((pod, 5678), ([198, 18, 1, (i >> 16) as u8], i as u16));
        p.process(&mut r, len, 1, &ctx);
    }
    // A client's packet after the reply makes a UDP flow assured (a
    // record write). Sent here, before the counted packets, so that they
    // are steady ones, as `established_1M` times (its flows see dozens
    // of packets each): counted, each flow's first would be this write.
    for i in 0..SPREAD_FLOWS {
        new_flow_frame(&mut f, &base, i);
        p.process(&mut f, len, 0, &ctx);
    }
    if !reply {
        in_batches(&mut p, &ctx, packets, len, |buf, i| {
            let flow = i.wrapping_mul(0x9e37_79b9) & (SPREAD_FLOWS - 1);
            new_flow_frame(buf, &base, flow);
        });
        return;
    }
    // A Pod's reply with the flow's client address and port written in
    // (checksums left stale, as `new_flow_frame` leaves them).
    let replies = pods.map(|pod| frame((pod, 5678), ([198, 18, 1, 0], 0)));
    in_batches_from(&mut p, &ctx, packets, len, 1, |buf, i| {
        let flow = i.wrapping_mul(0x9e37_79b9) & (SPREAD_FLOWS - 1);
        buf.copy_from_slice(&replies[usize::from(pod_of[flow])]);
        buf[33] = (flow >> 16) as u8;
        buf[36..38].copy_from_slice(&(flow as u16).to_be_bytes());
    });
}

/// `packets` new flows to a Service among `services`.
fn new_flows(packets: usize, services: usize) {
    assert!(packets < NEW_FLOW_TABLE, "at most {NEW_FLOW_TABLE} packets");
    let net = net();
    let t = table(services);
    let ctx = BatchContext {
        table: &t,
        net: &net,
        now: 1,
    };
    let mut p = new_flow_pipeline();
    let base = frame((client(0), 1), (VIP, 8080));
    let mut f = base.clone();
    let len = f.len();
    for i in 0..packets {
        new_flow_frame(&mut f, &base, i);
        black_box(p.process(&mut f, len, 0, &ctx));
    }
}

/// `new_flow_1`'s packets batched as a worker runs them
/// ([`in_batches`]).
fn new_flows_batched(packets: usize) {
    assert!(packets < NEW_FLOW_TABLE, "at most {NEW_FLOW_TABLE} packets");
    let net = net();
    let t = table(1);
    let ctx = BatchContext {
        table: &t,
        net: &net,
        now: 1,
    };
    let mut p = new_flow_pipeline();
    let base = frame((client(0), 1), (VIP, 8080));
    in_batches(&mut p, &ctx, packets, base.len(), |buf, i| {
        new_flow_frame(buf, &base, i)
    });
}

/// The new-flow cases' pipeline: a table of [`NEW_FLOW_TABLE`] flows,
/// every one of which may stay unreplied.
fn new_flow_pipeline() -> Pipeline {
    pipeline(
        Arc::new(Conntrack::new(ConntrackConfig {
            max_flows: NEW_FLOW_TABLE,
            unreplied_percent: 100,
            ..ConntrackConfig::default()
        })),
        9,
    )
}

// The conntrack cases' second and third steps, as the worker takes
// them: `icount.sh` rewrites the three marked lines for a base whose
// second step returned whether the bucket held the key, and whose
// lookup searched the bucket again.
type Seen = Candidate; // icount.sh: base
#[inline(always)]
fn held(seen: Seen) -> bool {
    seen.is_some() // icount.sh: base
}
#[inline(always)]
fn second_step(ct: &Conntrack, hash: u64) -> Seen {
    ct.prefetch_flow(hash)
}
#[inline(always)]
fn third_step(
    ct: &Conntrack,
    key: &FlowKey,
    hash: u64,
    seen: Seen,
    now: u32,
    flags: u8,
    hit: &mut FlowHit,
) -> bool {
    ct.lookup_candidate_into(key, hash, seen, now, flags, hit) // icount.sh: base
}

/// `lookups` conntrack lookups as the conntrack bench's batched ones do
/// them (hash and ask for the bucket of 32 keys, then their records,
/// then look each up from its candidate), over both directions of 1,024
/// established TCP flows.
fn ct_lookups(lookups: usize) {
    const BATCH: usize = 32;
    const FLOWS: u32 = 1024;
    const NOW: u32 = 1;
    let ack = 0x10;
    let ct = Conntrack::default();
    let mut keys = Vec::new();
    for n in 0..FLOWS {
        let forward = FlowKey {
            src: std::net::Ipv4Addr::from(0xc612_0000 | n),
            dst: std::net::Ipv4Addr::new(198, 19, 255, 1 + (n % 16) as u8),
            src_port: 40_000 + n as u16,
            dst_port: 80,
            protocol: Protocol::Tcp,
        };
        let backend = (
            std::net::Ipv4Addr::new(198, 19, 0, 1 + (n % 64) as u8),
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
    let mut candidates = [Seen::default(); BATCH];
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
            *candidate = second_step(&ct, *hash);
        }
        for ((key, hash), candidate) in batch.iter().zip(&hashes).zip(&candidates) {
            let found = third_step(&ct, key, *hash, *candidate, NOW, ack, &mut hit);
            assert!(found, "a tracked flow");
            black_box(hit.nat_port);
        }
        done += n;
    }
}

/// `flows` fresh TCP flows into a table of 8,192 flows that 6,144
/// established ones hold, 32 at a time as the conntrack bench's SYN
/// flood (`new_flows`) does them: hash and ask for every key's bucket;
/// for each key its bucket does not hold, ask for its reply bucket; then
/// per key a lookup (a miss) and an insert. Once the flood fills the
/// table, every insert evicts the oldest unreplied flow.
fn ct_flood(flows: usize) {
    const BATCH: usize = 32;
    const NOW: u32 = 1;
    let (syn, ack) = (0x02, 0x10);
    let ct = Conntrack::new(ConntrackConfig {
        max_flows: 8192,
        ..ConntrackConfig::default()
    });
    let forward = |n: u32| FlowKey {
        src: std::net::Ipv4Addr::from(0xc612_0000 | (n >> 16)),
        dst: std::net::Ipv4Addr::new(198, 19, 255, 1 + (n % 16) as u8),
        src_port: n as u16,
        dst_port: 80,
        protocol: Protocol::Tcp,
    };
    let backend = |n: u32| {
        (
            std::net::Ipv4Addr::new(198, 19, 0, 1 + (n % 64) as u8),
            8080,
        )
    };
    for n in 0..6144 {
        let (key, to) = (forward(n), backend(n));
        let reply = FlowKey {
            src: to.0,
            dst: key.src,
            src_port: to.1,
            dst_port: key.src_port,
            protocol: Protocol::Tcp,
        };
        ct.insert(key, to, NOW, FlowMeta::default())
            .expect("room for the established flows");
        ct.lookup(&reply, NOW, syn | ack)
            .expect("the reply is tracked");
        ct.lookup(&key, NOW, ack).expect("the flow is tracked");
    }
    let mut hashes = [0u64; BATCH];
    let mut candidates = [Seen::default(); BATCH];
    let mut hit = FlowHit::UNSET;
    let mut done = 0;
    while done < flows {
        let n = BATCH.min(flows - done);
        let first = 1_000_000 + done as u32;
        for (i, hash) in hashes[..n].iter_mut().enumerate() {
            *hash = ct.hash(&forward(first + i as u32));
            ct.prefetch_index(*hash);
        }
        for (i, (hash, candidate)) in hashes[..n].iter().zip(&mut candidates).enumerate() {
            let m = first + i as u32;
            *candidate = second_step(&ct, *hash);
            if !held(*candidate) {
                ct.prefetch_reply(&forward(m), *hash, backend(m));
            }
        }
        for (i, (hash, candidate)) in hashes[..n].iter().zip(&candidates).enumerate() {
            let m = first + i as u32;
            let key = forward(m);
            if third_step(&ct, &key, *hash, *candidate, NOW, syn, &mut hit) {
                continue;
            }
            // The first inserts that evict are refused while the queue's
            // entries of the established flows are popped (as in the
            // bench); the same in every run, so they cancel out.
            let inserted =
                ct.insert_into(key, *hash, backend(m), NOW, FlowMeta::default(), &mut hit);
            black_box(inserted.is_ok());
        }
        done += n;
    }
}
