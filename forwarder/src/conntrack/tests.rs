//! Conntrack semantics with a synthetic clock, and its concurrency.

use super::*;
use tcp_flags::{ACK, FIN, RST, SYN};

fn key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> FlowKey {
    FlowKey {
        src: src.into(),
        dst: dst.into(),
        src_port: sport,
        dst_port: dport,
        protocol: Protocol::Tcp,
    }
}

const BACKEND: ([u8; 4], u16) = ([198, 18, 2, 11], 5678);

fn forward(port: u16) -> FlowKey {
    key([198, 18, 0, 2], port, [198, 18, 100, 10], 8080)
}

fn reply(port: u16) -> FlowKey {
    key(BACKEND.0, BACKEND.1, [198, 18, 0, 2], port)
}

fn backend() -> (Ipv4Addr, u16) {
    (BACKEND.0.into(), BACKEND.1)
}

#[test]
fn insert_tracks_both_directions() {
    let ct = Conntrack::default();
    let hit = ct
        .insert(forward(40000), backend(), 1, FlowMeta::default())
        .expect("insert");
    assert_eq!((hit.nat_ip, hit.nat_port), backend());
    assert_eq!(ct.entries(), 2);
    let f = ct.lookup(&forward(40000), 2, SYN).expect("forward entry");
    assert_eq!(f.direction, Direction::Forward);
    let r = ct.lookup(&reply(40000), 2, SYN | ACK).expect("reply entry");
    assert_eq!(
        (r.direction, r.nat_ip, r.nat_port),
        (Direction::Reply, Ipv4Addr::new(198, 18, 100, 10), 8080)
    );
    assert_eq!(ct.lookup(&forward(40000).reversed(), 2, 0), None);
}

#[test]
fn first_backend_wins_a_race() {
    let ct = Conntrack::default();
    ct.insert(forward(40000), backend(), 1, FlowMeta::default())
        .expect("first insert");
    let again = ct
        .insert(
            forward(40000),
            (Ipv4Addr::new(198, 18, 2, 12), 5678),
            1,
            FlowMeta::default(),
        )
        .expect("second insert");
    assert_eq!(again.nat_ip, backend().0);
}

#[test]
fn a_finished_flow_makes_way_for_a_reused_port() {
    let ct = Conntrack::default();
    let via_a = forward(40000);
    ct.insert(via_a, backend(), 1, FlowMeta::default())
        .expect("first");
    ct.lookup(&reply(40000), 1, SYN | ACK);
    ct.lookup(&via_a, 2, ACK | FIN);
    ct.lookup(&reply(40000), 2, ACK | FIN);
    // The same client port to the same backend through another VIP.
    let via_b = key([198, 18, 0, 2], 40000, [198, 18, 100, 11], 8080);
    let hit = ct
        .insert(via_b, backend(), 3, FlowMeta::default())
        .expect("reused");
    assert_eq!(hit.nat_ip, backend().0);
    assert!(
        ct.lookup(&via_a, 3, ACK).is_none(),
        "the finished flow is gone"
    );
    assert_eq!(
        ct.lookup(&reply(40000), 3, SYN | ACK).map(|h| h.nat_ip),
        Some(Ipv4Addr::new(198, 18, 100, 11)),
        "replies now belong to the new flow"
    );
    assert_eq!(ct.stats().reused.load(STAT), 1);
    assert_eq!(ct.summary().flows, 1);
}

#[test]
fn reply_clash_is_reported() {
    let ct = Conntrack::default();
    ct.insert(forward(40000), backend(), 1, FlowMeta::default())
        .expect("first");
    let other_vip = key([198, 18, 0, 2], 40000, [198, 18, 100, 11], 80);
    assert_eq!(
        ct.insert(other_vip, backend(), 1, FlowMeta::default()),
        Err(InsertError::ReplyClash)
    );
}

/// Drives one connection through its TCP states with a synthetic
/// clock, checking each state's timeout with the sweeper.
#[test]
fn tcp_state_machine_and_timeouts() {
    let t = Timeouts::default();
    let ct = Conntrack::default();
    let mut now = 1000;
    ct.insert(forward(1), backend(), now, FlowMeta::default())
        .expect("insert");
    let st = |ct: &Conntrack, k: &FlowKey, flags: u8, now: u32| {
        ct.lookup(k, now, flags).expect("tracked").state
    };
    assert_eq!(st(&ct, &forward(1), SYN, now), FlowState::TcpSynSent);
    assert_eq!(ct.summary().unreplied, 1);
    assert_eq!(
        st(&ct, &reply(1), SYN | ACK, now),
        FlowState::TcpEstablished
    );
    assert_eq!(ct.summary().unreplied, 0);
    assert_eq!(st(&ct, &forward(1), ACK, now), FlowState::TcpEstablished);

    // Established survives just under 24 h of silence, not just over.
    now += t.of(FlowState::TcpEstablished);
    assert_eq!(ct.sweep(now), 0);
    assert_eq!(st(&ct, &forward(1), ACK | FIN, now), FlowState::TcpFinWait);
    assert_eq!(st(&ct, &reply(1), ACK, now), FlowState::TcpCloseWait);
    now += t.of(FlowState::TcpCloseWait);
    assert_eq!(ct.sweep(now), 0, "close-wait lasts 1 h");
    assert_eq!(st(&ct, &reply(1), ACK | FIN, now), FlowState::TcpTimeWait);
    assert_eq!(st(&ct, &forward(1), ACK, now), FlowState::TcpTimeWait);
    assert_eq!(ct.sweep(now + t.of(FlowState::TcpTimeWait)), 0);
    assert_eq!(ct.sweep(now + t.of(FlowState::TcpTimeWait) + 1), 1);
    assert_eq!(ct.entries(), 0);
    assert_eq!(
        ct.stats().expired[FlowState::TcpTimeWait as usize].load(STAT),
        1
    );
}

#[test]
fn rst_closes_and_syn_reopens() {
    let ct = Conntrack::default();
    ct.insert(forward(2), backend(), 0, FlowMeta::default())
        .expect("insert");
    ct.lookup(&reply(2), 0, SYN | ACK);
    assert_eq!(
        ct.lookup(&reply(2), 1, RST).map(|h| h.state),
        Some(FlowState::TcpClose)
    );
    assert_eq!(ct.sweep(1 + 10), 0);
    // A new SYN on the same 5-tuple starts over (same backend).
    assert_eq!(
        ct.lookup(&forward(2), 5, SYN).map(|h| h.state),
        Some(FlowState::TcpSynSent)
    );
    assert_eq!(ct.sweep(5 + 120 + 1), 1, "SYN sent expires after 120 s");
}

#[test]
fn syn_sent_expires_after_120s() {
    let ct = Conntrack::default();
    ct.insert(forward(3), backend(), 0, FlowMeta::default())
        .expect("insert");
    assert_eq!(ct.sweep(120), 0);
    assert_eq!(ct.sweep(121), 1);
    assert_eq!(
        ct.summary(),
        ConntrackSummary {
            flows: 0,
            unreplied: 0,
            max_flows: 1 << 20
        }
    );
}

#[test]
fn udp_unreplied_then_replied() {
    let ct = Conntrack::default();
    let mut f = forward(4);
    f.protocol = Protocol::Udp;
    let mut r = reply(4);
    r.protocol = Protocol::Udp;
    ct.insert(f, backend(), 0, FlowMeta::default())
        .expect("insert");
    assert_eq!(
        ct.lookup(&f, 0, 0).map(|h| h.state),
        Some(FlowState::UdpUnreplied)
    );
    assert_eq!(ct.sweep(30), 0);
    assert_eq!(
        ct.lookup(&r, 30, 0).map(|h| h.state),
        Some(FlowState::UdpReplied)
    );
    assert_eq!(
        ct.lookup(&f, 30, 0).map(|h| h.state),
        Some(FlowState::UdpReplied)
    );
    assert_eq!(ct.sweep(30 + 120), 0);
    assert_eq!(ct.sweep(30 + 121), 1);
}

#[test]
fn one_way_stream_from_backend_keeps_the_flow() {
    let ct = Conntrack::default();
    ct.insert(forward(5), backend(), 0, FlowMeta::default())
        .expect("insert");
    ct.lookup(&reply(5), 0, SYN | ACK);
    ct.lookup(&forward(5), 0, ACK);
    // Only the backend talks for two days.
    ct.lookup(&reply(5), 24 * 3600, ACK);
    ct.lookup(&reply(5), 47 * 3600, ACK);
    assert_eq!(ct.sweep(48 * 3600), 0);
    assert_eq!(ct.entries(), 2);
}

#[test]
fn full_table_evicts_unreplied_never_established() {
    let ct = Conntrack::new(ConntrackConfig {
        max_flows: 4,
        unreplied_percent: 100,
        timeouts: Timeouts::default(),
    });
    // Two established flows.
    for p in [10, 11] {
        ct.insert(forward(p), backend(), 0, FlowMeta::default())
            .expect("insert");
        ct.lookup(&reply(p), 0, SYN | ACK);
    }
    // Two unreplied ones fill the table.
    ct.insert(forward(20), backend(), 0, FlowMeta::default())
        .expect("insert");
    ct.insert(forward(21), backend(), 0, FlowMeta::default())
        .expect("insert");
    // A fifth evicts the oldest unreplied (20), then 21, then refuses.
    ct.insert(forward(22), backend(), 1, FlowMeta::default())
        .expect("evicts 20");
    assert!(ct.lookup(&forward(20), 1, 0).is_none());
    ct.insert(forward(23), backend(), 1, FlowMeta::default())
        .expect("evicts 21");
    ct.insert(forward(24), backend(), 1, FlowMeta::default())
        .expect("evicts 22");
    assert_eq!(ct.summary().flows, 4);
    for p in [10, 11] {
        assert_eq!(
            ct.lookup(&forward(p), 2, ACK).map(|h| h.state),
            Some(FlowState::TcpEstablished),
            "established flow {p} survives"
        );
    }
    // Reply to the unreplied ones: now nothing may be evicted.
    ct.lookup(&reply(24), 2, SYN | ACK);
    ct.lookup(&reply(23), 2, SYN | ACK);
    assert_eq!(
        ct.insert(forward(30), backend(), 3, FlowMeta::default()),
        Err(InsertError::Full)
    );
    assert_eq!(ct.stats().refused.load(STAT), 1);
    assert_eq!(ct.stats().evicted.load(STAT), 3);
}

#[test]
fn flood_guard_caps_unreplied_share() {
    let ct = Conntrack::new(ConntrackConfig {
        max_flows: 100,
        unreplied_percent: 10,
        timeouts: Timeouts::default(),
    });
    ct.insert(forward(1), backend(), 0, FlowMeta::default())
        .expect("insert");
    ct.lookup(&reply(1), 0, SYN | ACK);
    for p in 100..1100 {
        ct.insert(forward(p), backend(), 0, FlowMeta::default())
            .expect("flood flows evict each other");
    }
    let s = ct.summary();
    assert_eq!(s.unreplied, 10, "{s:?}");
    assert_eq!(s.flows, 11);
    assert!(ct.lookup(&forward(1), 1, ACK).is_some());
}

#[test]
fn retire_removes_both_directions() {
    let ct = Conntrack::default();
    ct.insert(forward(7), backend(), 0, FlowMeta::default())
        .expect("insert");
    ct.insert(
        forward(8),
        (Ipv4Addr::new(198, 18, 2, 12), 5678),
        0,
        FlowMeta::default(),
    )
    .expect("insert");
    let gone = ct.retire(|_, (ip, _)| ip == backend().0);
    assert_eq!(gone, 1);
    assert_eq!(ct.entries(), 2);
    assert!(ct.lookup(&reply(7), 0, 0).is_none());
    assert!(ct.remove(&forward(8)));
    assert_eq!(ct.entries(), 0);
    assert_eq!(ct.summary().flows, 0);
}

/// Client `n` of a key space where every flow's backend and VIP follow
/// from the client, so any hit can be checked against the key alone.
fn spaced_forward(n: u16) -> FlowKey {
    key(
        [198, 18, 1, (n % 7) as u8],
        1000 + n,
        [198, 19, 255, (n % 3) as u8 + 1],
        80,
    )
}

fn spaced_backend(n: u16) -> (Ipv4Addr, u16) {
    (Ipv4Addr::new(198, 19, 0, (n % 5) as u8 + 1), 8080)
}

fn spaced_reply(n: u16) -> FlowKey {
    let f = spaced_forward(n);
    let (b, bp) = spaced_backend(n);
    FlowKey {
        src: b,
        dst: f.src,
        src_port: bp,
        dst_port: f.src_port,
        protocol: f.protocol,
    }
}

/// What must hold between any two operations: every flow listed is found
/// by both of its keys with the right rewrite, the counts agree with the
/// listing, and no key is listed twice.
fn check_invariants(ct: &Conntrack, now: u32) {
    let mut forward_keys = std::collections::HashSet::new();
    let mut flows = 0;
    let mut unreplied = 0;
    ct.for_each(|k, hit| {
        if hit.direction == Direction::Forward {
            flows += 1;
            assert!(forward_keys.insert(*k), "forward key {k:?} listed twice");
        }
        let found = ct.find(k, ct.hash(k)).expect("a listed key is found");
        let again = found.flow.hit(found.direction, found.life.bits());
        assert_eq!(again, hit, "lookup of {k:?} agrees with the listing");
        if hit.direction == Direction::Forward && found.life.bits() & REPLIED == 0 {
            unreplied += 1;
        }
    });
    let s = ct.summary();
    assert_eq!(s.flows, flows, "live count at {now}");
    // Every slot belongs to a live flow (none left pointing at a freed
    // record), and the chains' overflow counts are exact. A slot's home
    // comes from the hash of the key its record holds.
    let (used, consistent) = ct.index.audit(|word| {
        let (id, bit) = index::reference(word);
        let (flow, _) = ct.slab.read(id).expect("a slot points at a live record");
        let key = flow.key(direction_of(bit));
        ct.index.home(ct.hash(&key))
    });
    assert_eq!(used, 2 * flows, "index slots at {now}");
    assert!(consistent, "overflow counts at {now}");
    assert_eq!(s.unreplied, unreplied, "unreplied count at {now}");
    assert!(s.flows <= s.max_flows, "{s:?}");
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u16),
    Reply(u16),
    Forward(u16, u8),
    Remove(u16),
    Tick(u8),
    Retire(u8),
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (0u16..300).prop_map(Op::Insert),
        2 => (0u16..300).prop_map(Op::Reply),
        2 => (0u16..300, prop_oneof![Just(ACK), Just(FIN | ACK), Just(RST), Just(SYN)])
            .prop_map(|(n, f)| Op::Forward(n, f)),
        1 => (0u16..300).prop_map(Op::Remove),
        1 => (0u8..200).prop_map(Op::Tick),
        1 => (0u8..5).prop_map(Op::Retire),
    ]
}

proptest::proptest! {
    /// A small table (chains overflow, evictions happen) driven by random
    /// inserts, replies, FINs/RSTs, removals, retirements and clock ticks
    /// keeps its invariants, and every hit carries the rewrite its key
    /// was given.
    #[test]
    fn random_operations_keep_the_table_consistent(
        ops in proptest::collection::vec(op(), 1..400),
        tiny_index in proptest::bool::ANY,
    ) {
        let config = ConntrackConfig {
            max_flows: 40,
            unreplied_percent: 50,
            timeouts: Timeouts::default(),
        };
        // A one-bucket index: every key beyond the first seven overflows.
        let ct = if tiny_index { Conntrack::with_index_for(config, 1) } else { Conntrack::new(config) };
        let mut now = 0u32;
        for op in ops {
            match op {
                Op::Insert(n) => {
                    if let Ok(hit) = ct.insert(spaced_forward(n), spaced_backend(n), now, FlowMeta::default()) {
                        assert_eq!((hit.nat_ip, hit.nat_port), spaced_backend(n));
                    }
                }
                Op::Reply(n) => {
                    if let Some(hit) = ct.lookup(&spaced_reply(n), now, SYN | ACK) {
                        let f = spaced_forward(n);
                        assert_eq!((hit.direction, hit.nat_ip, hit.nat_port), (Direction::Reply, f.dst, f.dst_port));
                    }
                }
                Op::Forward(n, flags) => {
                    if let Some(hit) = ct.lookup(&spaced_forward(n), now, flags) {
                        assert_eq!((hit.direction, hit.nat_ip, hit.nat_port), (Direction::Forward, spaced_backend(n).0, spaced_backend(n).1));
                    }
                }
                Op::Remove(n) => {
                    let existed = ct.find(&spaced_forward(n), ct.hash(&spaced_forward(n))).is_some();
                    assert_eq!(ct.remove(&spaced_forward(n)), existed);
                }
                Op::Tick(dt) => {
                    now += u32::from(dt);
                    ct.sweep(now);
                }
                Op::Retire(b) => {
                    ct.retire(|_, (ip, _)| ip.octets()[3] == b + 1);
                }
            }
            check_invariants(&ct, now);
        }
    }
}

/// Four threads insert, look up, reply to, remove and sweep overlapping
/// flows of a table small enough to evict, with an index small enough
/// that chains overflow and writers meet on the same bucket locks. No hit
/// may ever carry another flow's rewrite, and at the end the counts agree
/// with what the table holds.
#[test]
fn concurrent_writers_and_readers_never_see_a_wrong_flow() {
    for (max_flows, index_flows) in [(128, 64), (512, 100_000)] {
        concurrent_run(max_flows, index_flows);
    }
}

fn concurrent_run(max_flows: usize, index_flows: usize) {
    let ct = Conntrack::with_index_for(
        ConntrackConfig {
            max_flows,
            unreplied_percent: 60,
            timeouts: Timeouts::default(),
        },
        index_flows,
    );
    const KEYS: u16 = 2000;
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let ct = &ct;
            scope.spawn(move || {
                let mut rng = crate::lb::Rng::new(0x5eed + t);
                for i in 0..60_000u32 {
                    let n = rng.below(usize::from(KEYS)) as u16;
                    let now = i / 1000;
                    match rng.below(10) {
                        0..=2 => {
                            if let Ok(hit) = ct.insert(
                                spaced_forward(n),
                                spaced_backend(n),
                                now,
                                FlowMeta::default(),
                            ) {
                                assert_eq!(
                                    (hit.nat_ip, hit.nat_port),
                                    spaced_backend(n),
                                    "insert {n}"
                                );
                            }
                        }
                        3..=4 => {
                            if let Some(hit) = ct.lookup(&spaced_reply(n), now, SYN | ACK) {
                                let f = spaced_forward(n);
                                assert_eq!(
                                    (hit.nat_ip, hit.nat_port),
                                    (f.dst, f.dst_port),
                                    "reply {n}"
                                );
                            }
                        }
                        5..=7 => {
                            if let Some(hit) = ct.lookup(&spaced_forward(n), now, ACK) {
                                assert_eq!(
                                    (hit.nat_ip, hit.nat_port),
                                    spaced_backend(n),
                                    "forward {n}"
                                );
                            }
                        }
                        8 => {
                            ct.remove(&spaced_forward(n));
                        }
                        _ => {
                            if t == 0 && i % 512 == 0 {
                                ct.sweep(now.saturating_sub(1) + 200);
                            } else if let Some(hit) = ct.lookup(&spaced_forward(n), now, FIN | ACK)
                            {
                                assert_eq!(
                                    (hit.nat_ip, hit.nat_port),
                                    spaced_backend(n),
                                    "fin {n}"
                                );
                            }
                        }
                    }
                }
            });
        }
    });
    check_invariants(&ct, 0);
    let stats = ct.stats();
    assert!(stats.inserted.load(STAT) > 1000, "{stats:?}");
    assert!(
        stats.evicted.load(STAT) > 0,
        "the table filled up: {stats:?}"
    );
    assert!(
        ct.summary().flows <= max_flows + 4,
        "at most one overshoot per thread"
    );
}

/// The table's memory per flow, from its layout (the `conntrack` bench
/// measures the same in RSS).
const _: () = assert!(ConntrackConfig::BYTES_PER_FLOW <= 100);
