//! Conntrack semantics with a synthetic clock, and its concurrency.

use super::snat::SnatConfig;
use super::*;
use std::net::Ipv6Addr;
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

/// A stamp names a flow in its record and its state: it holds while only
/// the flow's last-seen time moves, and no longer once the flow changed
/// state, left, or its record holds another flow; a hit that is not what
/// the record holds gets none.
#[test]
fn a_stamp_holds_while_the_record_holds_the_flow_as_it_was() {
    let ct = Conntrack::default();
    ct.insert(forward(1), backend(), 1, FlowMeta::default())
        .expect("insert");
    let hit = ct.lookup(&forward(1), 1, SYN).expect("tracked");
    let stamp = ct
        .stamp(&forward(1), &hit)
        .expect("the record holds the hit");
    assert!(ct.still_holds(hit.record, stamp));
    assert_eq!(ct.lookup(&forward(1), 9, SYN), Some(hit), "a later packet");
    assert!(
        ct.still_holds(hit.record, stamp),
        "only the last-seen time moved"
    );
    assert_eq!(
        ct.stamp(&forward(2), &hit),
        None,
        "another key in the hit's direction"
    );
    let other_backend = FlowHit {
        nat_port: BACKEND.1 + 1,
        ..hit
    };
    assert_eq!(ct.stamp(&forward(1), &other_backend), None, "another hit");

    ct.lookup(&reply(1), 9, SYN | ACK).expect("the reply");
    assert!(
        !ct.still_holds(hit.record, stamp),
        "the reply changed the flow's state"
    );
    let hit = ct.lookup(&forward(1), 9, 0).expect("tracked");
    let stamp = ct.stamp(&forward(1), &hit).expect("stamped again");
    assert!(ct.remove(&forward(1)));
    assert!(!ct.still_holds(hit.record, stamp), "the flow left");
    let next = ct
        .insert(forward(2), backend(), 9, FlowMeta::default())
        .expect("insert");
    assert_eq!(next.record, hit.record, "the record was reused");
    assert!(
        !ct.still_holds(hit.record, stamp),
        "the record holds another flow"
    );
}

/// The packet path's forms write every field of the hit they are given
/// (a worker's hit may hold another flow's, SNAT included), and leave
/// it alone on a miss or a refusal.
#[test]
fn lookup_into_and_insert_into_write_the_whole_hit() {
    let dirty = FlowHit {
        direction: Direction::Reply,
        nat_ip: Ipv4Addr::new(198, 18, 9, 9),
        nat_port: 9,
        state: FlowState::TcpClose,
        affinity: true,
        slot: 7,
        snat: Some((Ipv4Addr::new(198, 18, 9, 8), 8)),
        record: 12345,
    };
    let ct = Conntrack::new(ConntrackConfig {
        max_flows: 1,
        ..ConntrackConfig::default()
    });
    let mut hit = dirty;
    ct.insert_into(
        forward(40000),
        ct.hash(&forward(40000)),
        backend(),
        1,
        FlowMeta::default(),
        &mut hit,
    )
    .expect("insert_into");
    let inserted = ct.peek(&forward(40000)).expect("the inserted flow");
    assert_eq!(hit, inserted, "insert_into wrote what the table holds");
    assert_eq!(hit.snat, None, "a flow without SNAT clears the old hit's");

    let mut hit = dirty;
    let hash = ct.hash(&reply(40000));
    assert!(ct.lookup_into(&reply(40000), hash, 2, SYN | ACK, &mut hit));
    assert_eq!(
        Some(hit),
        ct.peek(&reply(40000)),
        "lookup_into wrote the reply's hit"
    );

    let mut hit = dirty;
    let hash = ct.hash(&forward(40001));
    assert!(!ct.lookup_into(&forward(40001), hash, 2, SYN, &mut hit));
    assert_eq!(hit, dirty, "a miss leaves the hit alone");
    // A SYN flow is unreplied: the full one-flow table evicts it for the
    // next, so refuse with an assured flow in it instead.
    assert!(ct.lookup(&forward(40000), 2, ACK).is_some());
    assert_eq!(
        ct.insert_into(
            forward(40001),
            hash,
            backend(),
            2,
            FlowMeta::default(),
            &mut hit
        ),
        Err(InsertError::Full),
        "a one-flow table with an assured flow"
    );
    assert_eq!(hit, dirty, "a refusal leaves the hit alone");
}

/// The batch's second step tells a key the table holds (a signature of
/// it in its bucket) from a new flow's, whose reply bucket the third
/// step may then ask for, with source NAT on or off.
#[test]
fn prefetch_flow_tells_held_keys_from_new_ones() {
    let snat = SnatConfig {
        addresses: vec![Ipv4Addr::new(198, 18, 2, 1), Ipv4Addr::new(198, 18, 2, 2)],
        ports: 61000..=61999,
    };
    for ct in [
        Conntrack::default(),
        Conntrack::default().with_snat(&snat).expect("SNAT"),
    ] {
        ct.insert(forward(40000), backend(), 1, FlowMeta::default())
            .expect("insert");
        let held = ct.hash(&forward(40000));
        assert!(ct.prefetch_flow(held).is_some(), "the inserted key");
        let new = ct.hash(&forward(40001));
        assert!(!ct.prefetch_flow(new).is_some(), "a key never inserted");
        ct.prefetch_reply(&forward(40001), new, backend());
        ct.insert(forward(40001), backend(), 1, FlowMeta::default())
            .expect("insert after its prefetches");
        assert!(ct.prefetch_flow(new).is_some(), "the key inserted since");
        assert_eq!(ct.entries(), 4);
    }
}

/// A lookup from the second step's candidate finds the key's flow in
/// either direction; a candidate that names another flow's record, or a
/// record freed or reused since, is only a hint: the lookup searches the
/// bucket and finds what the table holds for the key, or misses.
#[test]
fn a_candidate_is_only_a_hint() {
    let ct = Conntrack::default();
    let hit_of = |key: &FlowKey, candidate: Candidate| {
        let mut hit = FlowHit::UNSET;
        ct.lookup_candidate_into(key, ct.hash(key), candidate, 1, ACK, &mut hit)
            .then_some(hit)
    };
    let other = (Ipv4Addr::new(198, 18, 101, 7), 9090);
    ct.insert(forward(40000), backend(), 1, FlowMeta::default())
        .expect("insert a");
    ct.insert(forward(40001), other, 1, FlowMeta::default())
        .expect("insert b");
    let a = ct.prefetch_flow(ct.hash(&forward(40000)));
    let a_reply = ct.prefetch_flow(ct.hash(&reply(40000)));
    assert!(a.is_some() && a_reply.is_some() && a != a_reply);

    let hit = hit_of(&forward(40000), a).expect("a from its candidate");
    assert_eq!(
        (hit.direction, hit.nat_ip, hit.nat_port),
        (Direction::Forward, backend().0, backend().1)
    );
    let hit = hit_of(&reply(40000), a_reply).expect("a's reply from its candidate");
    assert_eq!(hit.direction, Direction::Reply);
    let hit = hit_of(&forward(40001), a).expect("b from a's candidate: searched");
    assert_eq!((hit.nat_ip, hit.nat_port), other, "b's own backend");
    let hit = hit_of(&forward(40001), Candidate::NONE).expect("b without a candidate");
    assert_eq!((hit.nat_ip, hit.nat_port), other);
    assert!(hit_of(&forward(40002), a).is_none(), "a key never inserted");

    assert!(ct.remove(&forward(40000)), "a removed");
    assert!(hit_of(&forward(40000), a).is_none(), "a's freed record");
    // The next insert takes the record a left (the free list is a stack).
    let c = forward(40003);
    ct.insert(c, backend(), 1, FlowMeta::default())
        .expect("insert c");
    assert_eq!(ct.prefetch_flow(ct.hash(&c)), a, "c took a's record");
    assert!(hit_of(&forward(40000), a).is_none(), "a's record now c's");
    assert!(hit_of(&reply(40000), a_reply).is_none(), "nor a's reply");
    let hit = hit_of(&c, a).expect("c from the candidate a left");
    assert_eq!((hit.nat_ip, hit.nat_port), backend());
}

/// A lookup without a candidate, or with a stale one, finds a key
/// wherever its chain holds it: in its home bucket (a signature there)
/// or past it (the home bucket overflows); a key never inserted misses.
#[test]
fn a_lookup_without_a_candidate_finds_keys_past_their_home_bucket() {
    let config = ConntrackConfig {
        max_flows: 40,
        unreplied_percent: 100,
        timeouts: Timeouts::default(),
    };
    // One home bucket for every key: all but its first seven keys sit
    // further along the chain.
    let ct = Conntrack::with_index_for(config, 1);
    let hit_of = |key: &FlowKey, candidate: Candidate| {
        let mut hit = FlowHit::UNSET;
        ct.lookup_candidate_into(key, ct.hash(key), candidate, 1, ACK, &mut hit)
            .then_some(hit)
    };
    for n in 0..30 {
        ct.insert(spaced_forward(n), spaced_backend(n), 1, FlowMeta::default())
            .unwrap_or_else(|e| panic!("insert {n}: {e:?}"));
    }
    let homed_in_bucket_0 = (0..30)
        .filter(|&n| ct.index.home(ct.hash(&spaced_forward(n))) == 0)
        .count();
    assert_eq!(homed_in_bucket_0, 30, "one home bucket for all");
    for n in 0..30 {
        let forward = hit_of(&spaced_forward(n), Candidate::NONE)
            .unwrap_or_else(|| panic!("flow {n} without a candidate"));
        assert_eq!(
            (forward.direction, forward.nat_ip, forward.nat_port),
            (Direction::Forward, spaced_backend(n).0, spaced_backend(n).1),
            "flow {n}'s forward key"
        );
        let reply = hit_of(&spaced_reply(n), Candidate::NONE)
            .unwrap_or_else(|| panic!("flow {n}'s reply without a candidate"));
        assert_eq!(reply.direction, Direction::Reply, "flow {n}'s reply key");
        // A stale candidate (another flow's record) searches the chain too.
        let other = ct.prefetch_flow(ct.hash(&spaced_forward((n + 1) % 30)));
        let searched = hit_of(&spaced_forward(n), other)
            .unwrap_or_else(|| panic!("flow {n} from another flow's candidate"));
        assert_eq!((searched.nat_ip, searched.nat_port), spaced_backend(n));
    }
    assert!(
        hit_of(&spaced_forward(31), Candidate::NONE).is_none(),
        "never inserted"
    );
}

#[test]
fn populating_a_live_table_keeps_its_flows() {
    let ct = Conntrack::new(ConntrackConfig {
        max_flows: 4096,
        ..ConntrackConfig::default()
    })
    .with_accounting();
    ct.insert(forward(40000), backend(), 1, FlowMeta::default())
        .expect("insert before populating");
    ct.populate()
        .expect("MADV_POPULATE_WRITE on the table's memory");
    let hit = ct
        .lookup(&forward(40000), 2, ACK)
        .expect("the flow is still there");
    assert_eq!((hit.nat_ip, hit.nat_port), backend());
    ct.insert(forward(40001), backend(), 2, FlowMeta::default())
        .expect("insert after populating");
    assert_eq!(ct.entries(), 4, "two flows, two keys each");
}

/// A prefetch asks for every line of what it fetches: a record's or a
/// bucket's one.
#[test]
fn prefetches_cover_every_line_of_a_record() {
    let lines = |start: usize, record: fn(usize, &mut Vec<usize>)| {
        let mut lines = Vec::new();
        record(start, &mut lines);
        lines.iter().map(|at| at / 64).collect::<Vec<_>>()
    };
    let v6: fn(usize, &mut Vec<usize>) =
        |start, out| for_each_line::<slab::Record<Ipv6Addr>>(start, |at| out.push(at));
    let v4: fn(usize, &mut Vec<usize>) =
        |start, out| for_each_line::<slab::Record<Ipv4Addr>>(start, |at| out.push(at));
    assert_eq!(std::mem::size_of::<slab::Record<Ipv6Addr>>(), 64);
    // IPv6 records start at a line, IPv4 ones at 0 or 32 within one.
    assert_eq!(lines(64 * 10, v6), [10]);
    assert_eq!(lines(64 * 10 + 32, v4), [10]);
    let mut buckets = Vec::new();
    for_each_line::<[u64; 8]>(64 * 3, |at| buckets.push(at));
    assert_eq!(buckets, [64 * 3], "a bucket is one line");
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
    assert_eq!(ct.stats().reused.get(), 1);
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
    now += FlowState::TcpEstablished.timeout(&t);
    assert_eq!(ct.sweep(now), 0);
    assert_eq!(st(&ct, &forward(1), ACK | FIN, now), FlowState::TcpFinWait);
    assert_eq!(st(&ct, &reply(1), ACK, now), FlowState::TcpCloseWait);
    now += FlowState::TcpCloseWait.timeout(&t);
    assert_eq!(ct.sweep(now), 0, "close-wait lasts 1 h");
    assert_eq!(st(&ct, &reply(1), ACK | FIN, now), FlowState::TcpTimeWait);
    assert_eq!(st(&ct, &forward(1), ACK, now), FlowState::TcpTimeWait);
    assert_eq!(ct.sweep(now + FlowState::TcpTimeWait.timeout(&t)), 0);
    assert_eq!(ct.sweep(now + FlowState::TcpTimeWait.timeout(&t) + 1), 1);
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
    // A new SYN on the same 5-tuple replaces the closed flow: the lookup
    // misses, so the SYN starts a new flow with a fresh backend choice.
    assert_eq!(ct.lookup(&forward(2), 5, SYN), None);
    assert_eq!(ct.stats().replaced.load(STAT), 1);
    assert_eq!(ct.summary().flows, 0);
    let other = (Ipv4Addr::new(198, 18, 2, 12), 5678);
    let hit = ct
        .insert(forward(2), other, 5, FlowMeta::default())
        .expect("a new flow");
    assert_eq!((hit.nat_ip, hit.nat_port), other);
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
    // Two established (assured) flows.
    for p in [10, 11] {
        handshake(&ct, p, 0);
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
    // Complete the others' handshakes: now nothing may be evicted.
    for p in [23, 24] {
        ct.lookup(&reply(p), 2, SYN | ACK);
        ct.lookup(&forward(p), 2, ACK);
    }
    assert_eq!(
        ct.insert(forward(30), backend(), 3, FlowMeta::default()),
        Err(InsertError::Full)
    );
    assert_eq!(ct.stats().refused.get(), 1);
    assert_eq!(evicted(&ct), [0, 3, 0]);
}

/// With a worker's own eviction queues, a full table makes room from the
/// inserting worker's oldest flows first, and from the other workers'
/// when its own hold nothing that may go; closing flows, queued by
/// record, go the same way (the Linux order: expired, unassured,
/// closing).
#[test]
fn each_worker_evicts_its_own_oldest_flows_first() {
    let ct = Conntrack::new(ConntrackConfig {
        max_flows: 4,
        unreplied_percent: 100,
        timeouts: Timeouts::default(),
    })
    .with_workers(2);
    let on = |worker| FlowMeta {
        worker,
        ..FlowMeta::default()
    };
    // Worker 0's flows are the older ones.
    for p in [10, 11] {
        ct.insert(forward(p), backend(), 0, on(0)).expect("insert");
    }
    for p in [20, 21] {
        ct.insert(forward(p), backend(), 0, on(1)).expect("insert");
    }
    // Worker 1 evicts its own oldest (20), not the table's (10).
    ct.insert(forward(22), backend(), 1, on(1))
        .expect("evicts 20");
    assert!(ct.lookup(&forward(20), 1, 0).is_none(), "20 made way");
    assert!(ct.lookup(&forward(10), 1, 0).is_some(), "10 stays");
    // Worker 1's flows complete their handshakes: nothing of its own may
    // go, so it evicts worker 0's oldest.
    for p in [21, 22] {
        ct.lookup(&reply(p), 1, SYN | ACK);
        ct.lookup(&forward(p), 1, ACK);
    }
    ct.insert(forward(23), backend(), 2, on(1))
        .expect("evicts 10, from worker 0's queue");
    assert!(ct.lookup(&forward(10), 2, 0).is_none(), "10 made way");
    assert_eq!(ct.summary().flows, 4);
    assert_eq!(evicted(&ct), [0, 2, 0]);
    // With every flow assured and open, nothing may go, whichever worker
    // asks.
    for p in [11, 23] {
        ct.lookup(&reply(p), 2, SYN | ACK);
        ct.lookup(&forward(p), 2, ACK);
    }
    for worker in [0, 1, 7] {
        assert_eq!(
            ct.insert(forward(30), backend(), 3, on(worker)),
            Err(InsertError::Full),
            "worker {worker}"
        );
    }
    // An assured flow that begins to close may make way, for either
    // worker, from whichever queue its record went to.
    ct.lookup(&forward(21), 3, FIN | ACK);
    ct.insert(forward(31), backend(), 4, on(0))
        .expect("evicts the closing 21");
    assert!(ct.lookup(&forward(21), 4, 0).is_none(), "21 made way");
    assert_eq!(evicted(&ct), [0, 2, 1]);
}

/// Two workers inserting at once into a table with their own queues,
/// every insert evicting: no flow is lost or counted twice.
#[test]
fn two_workers_flooding_keep_the_counts() {
    workers_filling_a_table_keep_the_counts(2, 512, 5000);
}

/// Far from the table's limits a worker adds its inserts to the table's
/// counts a batch at a time, yet every count read is whole: a flow not
/// yet added is counted, and one removed before it was added is counted
/// gone.
#[test]
fn counts_are_whole_while_a_worker_holds_its_inserts_back() {
    let ct = Conntrack::new(ConntrackConfig {
        max_flows: 100_000,
        unreplied_percent: 50,
        timeouts: Timeouts::default(),
    });
    let batch = ct.worker_batch;
    assert_eq!(batch, 32, "one worker counts 32 inserts before adding them");
    for p in 0..5 {
        ct.insert(forward(p), backend(), 1, FlowMeta::default())
            .expect("insert");
    }
    assert_eq!(ct.live.load(STAT), 0, "five inserts held back");
    let summary = ct.summary();
    assert_eq!((summary.flows, summary.unreplied), (5, 5), "{summary:?}");
    assert_eq!(ct.entries(), 10);

    assert!(ct.remove(&forward(0)), "a held-back flow removed");
    assert_eq!(ct.live.load(STAT), -1, "removed before it was added");
    let summary = ct.summary();
    assert_eq!((summary.flows, summary.unreplied), (4, 4), "{summary:?}");

    for p in 5..batch as u16 {
        ct.insert(forward(p), backend(), 1, FlowMeta::default())
            .expect("insert");
    }
    assert_eq!(
        (
            ct.live.load(STAT),
            ct.workers[0].unflushed.load(Ordering::Relaxed)
        ),
        (batch as isize - 1, 0),
        "the batch's last insert added all {batch} at once"
    );
    let summary = ct.summary();
    assert_eq!(summary.flows, batch - 1, "{summary:?}");
    assert_eq!(
        ct.slab.high_water(),
        batch as u32 + 1,
        "records taken {batch} at a time: one block and the freed record"
    );
}

/// Near a limit every insert is added at once, so a small table holds
/// exactly its limit; and what all workers hold back stays within the
/// table's spare records, however many workers there are.
#[test]
fn inserts_are_held_back_only_far_from_the_limits() {
    let ct = Conntrack::new(ConntrackConfig {
        max_flows: 40,
        unreplied_percent: 100,
        timeouts: Timeouts::default(),
    });
    for p in 0..40 {
        ct.insert(forward(p), backend(), 1, FlowMeta::default())
            .expect("insert");
        assert_eq!(ct.summary().flows, usize::from(p) + 1);
    }
    assert_eq!(ct.live.load(STAT), 40, "near the limit, nothing held back");
    ct.insert(forward(40), backend(), 1, FlowMeta::default())
        .expect("an unreplied flow makes way");
    assert_eq!(ct.summary().flows, 40, "full: the insert evicted");
    assert_eq!(evicted(&ct).iter().sum::<u64>(), 1);

    for workers in [1, 2, 4, 8, 16, 64, 127, 128, 1024] {
        let batch = Conntrack::<Ipv4Addr>::worker_batch_for(workers);
        assert!(
            (1..=32).contains(&batch) && workers * (batch - 1) <= RECORD_SLACK / 2,
            "{workers} workers hold back {batch} inserts each"
        );
    }
}

/// Four workers filling a table at once, far from its limit and then
/// near it (where each adds its inserts at once), then flooding it.
#[test]
fn four_workers_filling_a_table_keep_the_counts() {
    workers_filling_a_table_keep_the_counts(4, 2000, 1000);
}

/// `workers` workers inserting `per_worker` flows each at once, with
/// their own queues, into a table of `max_flows` that they fill and
/// then flood: it ends full, over by at most the other workers' inserts
/// in flight (the limit's overshoot: all may find the table one short of
/// full at once and insert without evicting), and every flow is counted
/// once.
fn workers_filling_a_table_keep_the_counts(workers: u8, max_flows: usize, per_worker: u16) {
    let ct = Conntrack::new(ConntrackConfig {
        max_flows,
        unreplied_percent: 100,
        timeouts: Timeouts::default(),
    })
    .with_workers(usize::from(workers));
    std::thread::scope(|s| {
        for worker in 0..workers {
            let ct = &ct;
            s.spawn(move || {
                for i in 0..per_worker {
                    let key = key([198, 18, worker, 2], i, [198, 19, 0, 1], 80);
                    let meta = FlowMeta {
                        worker: usize::from(worker),
                        ..FlowMeta::default()
                    };
                    ct.insert(key, backend(), 0, meta)
                        .expect("an unreplied flow always makes way");
                }
            });
        }
    });
    let summary = ct.summary();
    let overshoot = usize::from(workers) - 1;
    assert!(
        (max_flows..=max_flows + overshoot).contains(&summary.flows),
        "full, over by at most {overshoot}: {summary:?}"
    );
    assert_eq!(summary.unreplied, summary.flows);
    assert_eq!(
        ct.entries(),
        2 * summary.flows,
        "both keys of every flow, nothing else"
    );
    let inserts = u64::from(workers) * u64::from(per_worker);
    assert_eq!(
        ct.stats().inserted.get(),
        inserts,
        "every insert counted once"
    );
    assert_eq!(
        evicted(&ct).iter().sum::<u64>(),
        inserts - summary.flows as u64,
        "every insert but the flows in the table evicted one"
    );
}

/// Inserts the flow of client port `p` and completes its handshake.
fn handshake(ct: &Conntrack, p: u16, now: u32) {
    ct.insert(forward(p), backend(), now, FlowMeta::default())
        .expect("insert");
    ct.lookup(&forward(p), now, SYN);
    ct.lookup(&reply(p), now, SYN | ACK);
    ct.lookup(&forward(p), now, ACK);
}

/// Evictions per class, as [`EvictionClass::ALL`].
fn evicted(ct: &Conntrack) -> [u64; 3] {
    std::array::from_fn(|i| ct.stats().evicted[i].get())
}

/// Whether the flow holding `key` is assured.
fn assured(ct: &Conntrack, key: &FlowKey) -> bool {
    let found = ct.find(key, ct.hash(key)).expect("tracked");
    found.life.bits() & ASSURED != 0
}

#[test]
fn tcp_is_assured_by_the_ack_after_the_syn_ack() {
    let ct = Conntrack::default();
    ct.insert(forward(1), backend(), 0, FlowMeta::default())
        .expect("insert");
    ct.lookup(&forward(1), 0, SYN);
    assert!(!assured(&ct, &forward(1)));
    ct.lookup(&reply(1), 0, SYN | ACK);
    assert!(
        !assured(&ct, &forward(1)),
        "the SYN-ACK alone does not assure"
    );
    ct.lookup(&forward(1), 0, SYN);
    assert!(!assured(&ct, &forward(1)), "a retransmitted SYN does not");
    ct.lookup(&forward(1), 0, ACK);
    assert!(assured(&ct, &forward(1)), "the client's ACK does");
    ct.lookup(&forward(1), 1, ACK | FIN);
    assert!(assured(&ct, &forward(1)), "assured for good");
}

#[test]
fn udp_is_assured_once_a_stream() {
    let ct = Conntrack::default();
    let mut fwd = forward(1);
    fwd.protocol = Protocol::Udp;
    let mut rep = reply(1);
    rep.protocol = Protocol::Udp;
    ct.insert(fwd, backend(), 0, FlowMeta::default())
        .expect("insert");
    ct.lookup(&fwd, 0, 0);
    assert!(!assured(&ct, &fwd));
    ct.lookup(&rep, 0, 0);
    assert!(!assured(&ct, &fwd), "one reply is not a stream");
    ct.lookup(&fwd, 0, 0);
    assert!(assured(&ct, &fwd), "a packet after the reply makes it one");
}

/// Linux's order under a full table: expired, unassured (oldest first),
/// closing (oldest first); assured open flows never.
#[test]
fn a_full_table_evicts_unassured_then_closing_never_assured_open() {
    let ct = Conntrack::new(ConntrackConfig {
        max_flows: 6,
        unreplied_percent: 100,
        timeouts: Timeouts::default(),
    });
    // Two assured open flows, two assured closing ones (TIME_WAIT, then
    // FIN_WAIT), a replied-but-unassured one and an unreplied one.
    handshake(&ct, 10, 0);
    handshake(&ct, 11, 0);
    handshake(&ct, 20, 0);
    ct.lookup(&forward(20), 1, ACK | FIN);
    ct.lookup(&reply(20), 1, ACK | FIN);
    handshake(&ct, 21, 0);
    ct.lookup(&forward(21), 2, ACK | FIN);
    ct.insert(forward(30), backend(), 3, FlowMeta::default())
        .expect("insert");
    ct.lookup(&reply(30), 3, SYN | ACK);
    ct.insert(forward(31), backend(), 3, FlowMeta::default())
        .expect("insert");
    assert_eq!(ct.summary().flows, 6);

    let now = 4;
    let gone = |p: u16| ct.find(&forward(p), ct.hash(&forward(p))).is_none();
    let insert = |p: u16| {
        ct.insert(forward(p), backend(), now, FlowMeta::default())
            .map(|_| ())
    };
    // Unassured first, oldest first: 30 (replied, no ACK yet), 31, then
    // the new flows themselves, which are unassured too.
    insert(40).expect("evicts 30");
    assert!(gone(30) && !gone(31));
    insert(41).expect("evicts 31");
    assert!(gone(31));
    insert(42).expect("evicts 40");
    assert!(gone(40));
    assert_eq!(evicted(&ct), [0, 3, 0]);
    // Assure the two newest: only closing flows are left to evict,
    // oldest first: 20 (TIME_WAIT), then 21 (FIN_WAIT).
    for p in [41, 42] {
        ct.lookup(&reply(p), now, SYN | ACK);
        ct.lookup(&forward(p), now, ACK);
    }
    insert(43).expect("evicts 20");
    assert!(gone(20) && !gone(21));
    assert!(assured(&ct, &forward(21)));
    ct.lookup(&reply(43), now, SYN | ACK);
    ct.lookup(&forward(43), now, ACK);
    insert(44).expect("evicts 21");
    assert!(gone(21));
    ct.lookup(&reply(44), now, SYN | ACK);
    ct.lookup(&forward(44), now, ACK);
    assert_eq!(evicted(&ct), [0, 3, 2]);
    // Only assured open flows now: refused, and every one survives.
    assert_eq!(insert(45), Err(InsertError::Full));
    for p in [10, 11, 41, 42, 43, 44] {
        assert!(!gone(p), "assured open flow {p} survives");
    }
}

#[test]
fn an_expired_closing_flow_goes_before_an_unassured_one() {
    let t = Timeouts::default();
    let ct = Conntrack::new(ConntrackConfig {
        max_flows: 2,
        unreplied_percent: 100,
        timeouts: t,
    });
    handshake(&ct, 10, 0);
    ct.lookup(&forward(10), 0, ACK | FIN);
    ct.lookup(&reply(10), 0, ACK | FIN);
    let now = FlowState::TcpTimeWait.timeout(&t) + 1;
    ct.insert(forward(11), backend(), now, FlowMeta::default())
        .expect("insert");
    // Full: the TIME_WAIT flow has expired (the sweeper has not run).
    ct.insert(forward(12), backend(), now, FlowMeta::default())
        .expect("evicts the expired flow");
    assert!(ct.lookup(&forward(10), now, ACK).is_none());
    assert!(ct.lookup(&forward(11), now, SYN).is_some());
    assert_eq!(evicted(&ct), [1, 0, 0]);
}

#[test]
fn a_syn_replaces_a_flow_in_time_wait_with_a_fresh_backend() {
    let ct = Conntrack::default();
    handshake(&ct, 10, 0);
    ct.lookup(&forward(10), 1, ACK | FIN);
    ct.lookup(&reply(10), 1, ACK | FIN);
    assert_eq!(
        ct.lookup(&forward(10), 1, ACK).map(|h| h.state),
        Some(FlowState::TcpTimeWait)
    );
    // Neither a SYN-ACK nor the backend's SYN replaces it.
    assert!(ct.lookup(&forward(10), 2, SYN | ACK).is_some());
    assert!(ct.lookup(&reply(10), 2, SYN).is_some());
    assert_eq!(ct.lookup(&forward(10), 3, SYN), None, "replaced");
    assert_eq!(ct.stats().replaced.load(STAT), 1);
    assert!(
        ct.lookup(&reply(10), 3, ACK).is_none(),
        "both keys are gone"
    );
    let other = (Ipv4Addr::new(198, 18, 2, 12), 5678);
    let hit = ct
        .insert(forward(10), other, 3, FlowMeta::default())
        .expect("the new connection");
    assert_eq!((hit.nat_ip, hit.nat_port), other);
    assert_eq!(ct.summary().flows, 1);
}

#[test]
fn the_flood_guard_spares_a_handshake_in_progress() {
    let ct = Conntrack::new(ConntrackConfig {
        max_flows: 100,
        unreplied_percent: 2,
        timeouts: Timeouts::default(),
    });
    // Mid-handshake: replied, not assured yet, and oldest in the queue.
    ct.insert(forward(1), backend(), 0, FlowMeta::default())
        .expect("insert");
    ct.lookup(&reply(1), 0, SYN | ACK);
    for p in 100..200 {
        ct.insert(forward(p), backend(), 0, FlowMeta::default())
            .expect("flood flows evict each other");
    }
    assert!(ct.lookup(&forward(1), 0, ACK).is_some(), "spared");
    assert!(assured(&ct, &forward(1)));
    assert_eq!(ct.summary().unreplied, 2);
}

#[test]
fn retire_flow_removes_only_a_flow_still_on_that_backend() {
    let ct = Conntrack::default();
    handshake(&ct, 10, 0);
    let other = (Ipv4Addr::new(198, 18, 2, 12), 5678);
    assert!(!ct.retire_flow(&forward(10), other), "another backend's");
    assert!(ct.lookup(&forward(10), 1, ACK).is_some());
    assert!(ct.retire_flow(&forward(10), backend()));
    assert!(ct.lookup(&forward(10), 1, ACK).is_none());
    assert!(ct.lookup(&reply(10), 1, ACK).is_none());
    assert!(!ct.retire_flow(&forward(10), backend()), "already gone");
    assert_eq!(ct.stats().retired.load(STAT), 1);
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

/// `cipgw conntrack --delete`: one flow by its forward key, or every
/// flow of a backend; both keys leave, the SNAT port comes back, and it
/// is counted as deleted, not retired.
#[test]
fn delete_removes_selected_flows_and_releases_their_snat_ports() {
    let ct = snat_table(64, 61000..=61001);
    let other = (Ipv4Addr::new(198, 18, 2, 12), 5678);
    let hit = ct
        .insert(forward(1), backend(), 0, FlowMeta::default())
        .expect("insert");
    ct.insert(forward(2), other, 0, FlowMeta::default())
        .expect("insert");
    assert_eq!(in_use(&ct), [2]);
    assert_eq!(ct.delete(|k, _| *k == forward(1)), 1, "one flow by its key");
    assert!(ct.lookup(&forward(1), 0, ACK).is_none(), "forward key gone");
    assert!(
        ct.lookup(&snat_reply(&hit), 0, ACK).is_none(),
        "reply key gone"
    );
    assert_eq!(in_use(&ct), [1], "its SNAT port was released");
    assert_eq!(ct.delete(|_, b| b == backend()), 0, "nothing left there");
    assert_eq!(ct.delete(|_, b| b == other), 1, "all flows of a backend");
    assert_eq!((ct.entries(), in_use(&ct)), (0, vec![0]));
    assert_eq!(ct.stats().deleted.load(STAT), 2);
    assert_eq!(ct.stats().retired.load(STAT), 0);
    check_invariants(&ct, 0);
}

/// The expiry a view shows is the state's timeout after the last packet,
/// and the sweeper removes the flow once it has run out.
#[test]
fn expiry_counts_down_from_the_last_packet_by_state() {
    let t = Timeouts::default();
    let ct = Conntrack::default();
    ct.insert(forward(1), backend(), 100, FlowMeta::default())
        .expect("insert");
    let left = |now: u32| {
        let mut seen = Vec::new();
        ct.for_each_expiring(now, |_, hit, left| seen.push((hit.state, left)));
        assert_eq!(seen.len(), 2, "both keys of the one flow");
        assert_eq!(seen[0], seen[1], "both keys expire together");
        seen[0]
    };
    let syn_sent = FlowState::TcpSynSent.timeout(&t);
    assert_eq!(left(110), (FlowState::TcpSynSent, syn_sent - 10));
    ct.lookup(&reply(1), 200, SYN | ACK).expect("reply");
    let established = FlowState::TcpEstablished.timeout(&t);
    assert_eq!(left(200), (FlowState::TcpEstablished, established));
    assert_eq!(left(200 + established + 5), (FlowState::TcpEstablished, 0));
    assert_eq!(ct.sweep(200 + established), 0, "not yet: 0 s left");
    assert_eq!(ct.sweep(200 + established + 1), 1);
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
    reply_of(spaced_forward(n), spaced_backend(n))
}

/// The reply key (no NAT) of the flow `forward` given `backend`.
fn reply_of<A>(forward: FlowKey<A>, (backend, backend_port): (A, u16)) -> FlowKey<A> {
    FlowKey {
        src: backend,
        dst: forward.src,
        src_port: backend_port,
        dst_port: forward.src_port,
        protocol: forward.protocol,
    }
}

/// What must hold between any two operations: every flow listed is found
/// by both of its keys with the right rewrite, the counts agree with the
/// listing, and no key is listed twice.
fn check_invariants<A: IpFamily>(ct: &Conntrack<A>, now: u32) {
    let mut forward_keys = std::collections::HashSet::new();
    let mut flows = 0;
    let mut unreplied = 0;
    ct.for_each(|k, hit| {
        if hit.direction == Direction::Forward {
            flows += 1;
            assert!(forward_keys.insert(*k), "forward key {k:?} listed twice");
        }
        let found = ct.find(k, ct.hash(k)).expect("a listed key is found");
        let again = found
            .flow
            .hit(found.id, found.direction, found.life.bits(), &ct.snat);
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
        let key = flow.key(direction_of(bit), &ct.snat);
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
    concurrent_run_in(max_flows, index_flows, 2000, spaced_forward, spaced_backend);
}

/// The same with eight keys, both families: the threads insert, remove
/// and sweep the same few flows again and again, so a removed flow's
/// record is often taken (last freed, first reused) for the same key by
/// another thread while the removed flow's inserter is still linking it.
/// A slot word names a record, not a flow, so a slot the removed flow
/// left behind would be the later flow's too. When inserts placed slots
/// without checking their flow was still live, and cleaned up after,
/// that clean-up took the later flow's slot: the flow stayed live but
/// unindexed, and the next insert of its key made a second one (10
/// rounds of this pair in 40 failed).
#[test]
fn concurrent_inserts_of_the_same_keys_leave_each_key_one_indexed_flow() {
    for _ in 0..6 {
        concurrent_run_in(64, 64, 8, spaced_forward, spaced_backend);
        concurrent_run_in(64, 64, 8, spaced_forward6, spaced_backend6);
    }
}

/// Four threads, each its own worker, inserting, looking up (both ways),
/// removing and sweeping flows of a key space of `keys` keys where
/// `forward(n)`'s backend is `backend(n)`: every hit must be the flow's
/// own rewrite.
fn concurrent_run_in<A: IpFamily>(
    max_flows: usize,
    index_flows: usize,
    keys: u16,
    spaced_forward: fn(u16) -> FlowKey<A>,
    spaced_backend: fn(u16) -> (A, u16),
) {
    let spaced_reply = |n: u16| reply_of(spaced_forward(n), spaced_backend(n));
    let ct = Conntrack::<A>::with_index_for(
        ConntrackConfig {
            max_flows,
            unreplied_percent: 60,
            timeouts: Timeouts::default(),
        },
        index_flows,
    )
    .with_workers(4);
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let ct = &ct;
            scope.spawn(move || {
                let mut rng = crate::lb::Rng::new(0x5eed + t);
                for i in 0..60_000u32 {
                    let n = rng.below(usize::from(keys)) as u16;
                    let now = i / 1000;
                    match rng.below(10) {
                        0..=2 => {
                            if let Ok(hit) = ct.insert(
                                spaced_forward(n),
                                spaced_backend(n),
                                now,
                                FlowMeta {
                                    worker: t as usize,
                                    ..FlowMeta::default()
                                },
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
    assert!(stats.inserted.get() > 1000, "{stats:?}");
    if usize::from(keys) > max_flows {
        assert!(
            stats.evicted.iter().map(|e| e.get()).sum::<u64>() > 0,
            "the table filled up: {stats:?}"
        );
    }
    assert!(
        ct.summary().flows <= max_flows + 4,
        "at most one overshoot per thread"
    );
}

/// The table's memory per flow, from its layout (the `conntrack` bench
/// measures the same in RSS).
const _: () = assert!(ConntrackConfig::BYTES_PER_FLOW <= 100);
/// An IPv6 flow costs its wider record and nothing else.
const _: () = assert!(ConntrackConfig::BYTES_PER_FLOW_V6 == ConntrackConfig::BYTES_PER_FLOW + 32);

/// A table file in a fresh temporary directory, removed on drop.
struct StateDir(std::path::PathBuf);

impl StateDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("cipgw-ct-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }

    fn open(&self, config: &ConntrackConfig) -> Conntrack {
        Conntrack::in_file(*config, self.file(config))
    }

    /// The IPv4 table file for `config`, opened.
    fn file(&self, config: &ConntrackConfig) -> Arc<persist::TableFile> {
        self.family_file::<Ipv4Addr>(config)
    }

    /// The IPv6 table for `config`, in its own file beside the IPv4 one.
    fn open6(&self, config: &ConntrackConfig) -> Conntrack<Ipv6Addr> {
        let file = self.family_file::<Ipv6Addr>(config);
        assert_eq!(
            file.path().file_name().and_then(|n| n.to_str()),
            Some("conntrack6.table")
        );
        Conntrack::<Ipv6Addr>::in_file(*config, file)
    }

    /// Family `A`'s table file for `config`, opened.
    fn family_file<A: IpFamily>(&self, config: &ConntrackConfig) -> Arc<persist::TableFile> {
        let file = persist::TableFile::open(
            &self.0,
            Conntrack::<A>::records_for(config),
            Conntrack::<A>::LAYOUT,
            persist::monotonic_ns(),
        )
        .expect("table file opens");
        Arc::new(file)
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_new_table_adopts_the_flows_of_the_one_before() {
    let dir = StateDir::new("adopt");
    let config = ConntrackConfig {
        max_flows: 64,
        unreplied_percent: 50,
        timeouts: Timeouts::default(),
    };
    let other = (Ipv4Addr::new(198, 18, 2, 12), 5678);
    {
        let ct = dir.open(&config);
        assert_eq!(ct.adopt(10), Adoption::default(), "a fresh file");
        handshake(&ct, 10, 10);
        ct.insert(forward(11), other, 10, FlowMeta::default())
            .expect("insert");
        handshake(&ct, 12, 10);
        ct.lookup(&forward(12), 10, ACK | FIN);
        // Removed flows leave free records behind.
        handshake(&ct, 13, 10);
        assert!(ct.remove(&forward(13)));
        // A flow whose SYN is long unanswered by the time of adoption.
        ct.insert(forward(14), backend(), 0, FlowMeta::default())
            .expect("insert");
        // The process dies here: no clean stop.
    }
    let ct = dir.open(&config);
    let t = Timeouts::default();
    let now = FlowState::TcpSynSent.timeout(&t) + 1;
    let adoption = ct.adopt(now);
    assert_eq!(
        adoption,
        Adoption {
            flows: 3,
            expired: 1,
            discarded: 0
        }
    );
    assert_eq!(ct.summary().flows, 3);
    assert_eq!(ct.summary().unreplied, 1);
    let hit = ct.lookup(&forward(10), now, ACK).expect("adopted");
    assert_eq!(
        (hit.nat_ip, hit.nat_port, hit.state),
        (backend().0, backend().1, FlowState::TcpEstablished)
    );
    assert_eq!(hit.slot, NO_SLOT, "another process's slots mean nothing");
    assert!(assured(&ct, &forward(10)));
    let hit = ct.lookup(&forward(11), now, SYN).expect("adopted");
    assert_eq!((hit.nat_ip, hit.nat_port), other, "the same backend");
    assert_eq!(
        ct.lookup(&reply(12), now, ACK).map(|h| h.state),
        Some(FlowState::TcpCloseWait)
    );
    assert!(ct.lookup(&forward(13), now, SYN).is_none());
    assert!(ct.lookup(&forward(14), now, SYN).is_none(), "expired");
    check_invariants(&ct, now);
    // The adopted table works on: inserts reuse the freed records, and a
    // full table evicts the adopted unassured flow first.
    for p in 100..161 {
        ct.insert(forward(p), backend(), now, FlowMeta::default())
            .expect("room");
        ct.lookup(&reply(p), now, SYN | ACK);
        ct.lookup(&forward(p), now, ACK);
    }
    assert_eq!(ct.summary().flows, 64);
    ct.insert(forward(200), backend(), now, FlowMeta::default())
        .expect("evicts the adopted unassured flow 11");
    assert!(ct.lookup(&forward(11), now, SYN).is_none());
    check_invariants(&ct, now);
}

#[test]
fn adoption_discards_records_it_cannot_believe() {
    let dir = StateDir::new("torn");
    let config = ConntrackConfig {
        max_flows: 16,
        unreplied_percent: 50,
        timeouts: Timeouts::default(),
    };
    let records;
    {
        let ct = dir.open(&config);
        for p in 1..=4 {
            handshake(&ct, p, 5);
        }
        records = ct.slab.high_water();
    }
    // Scribble over the file: a stray bit in one record's SNAT address
    // index (this table has no source NAT), an odd (mid-write) sequence
    // in another.
    let path = dir.0.join(Conntrack::<Ipv4Addr>::LAYOUT.file_name);
    let mut bytes = std::fs::read(&path).expect("read");
    let record = |id: usize| persist::HEADER_BYTES + id * Conntrack::<Ipv4Addr>::RECORD_BYTES;
    bytes[record(1) + 16 + 3] |= 0x10;
    bytes[record(2) + 24 + 5] |= 0x01;
    std::fs::write(&path, &bytes).expect("write");
    let ct = dir.open(&config);
    let adoption = ct.adopt(6);
    assert_eq!(records, 5, "four records used");
    assert_eq!((adoption.flows, adoption.discarded), (2, 1), "{adoption:?}");
    assert_eq!(ct.summary().flows, 2);
    check_invariants(&ct, 6);
}

#[test]
fn a_settling_retirement_leaves_open_connections_to_their_next_packet() {
    let ct = Conntrack::default();
    // Open: established, SYN sent, closing one way.
    handshake(&ct, 10, 0);
    ct.insert(forward(11), backend(), 0, FlowMeta::default())
        .expect("insert");
    ct.lookup(&forward(11), 0, SYN);
    handshake(&ct, 12, 0);
    ct.lookup(&forward(12), 0, ACK | FIN);
    // Finished: TIME_WAIT.
    handshake(&ct, 13, 0);
    ct.lookup(&forward(13), 0, ACK | FIN);
    ct.lookup(&reply(13), 0, ACK | FIN);
    // UDP.
    let mut udp = forward(14);
    udp.protocol = Protocol::Udp;
    ct.insert(udp, backend(), 0, FlowMeta::default())
        .expect("insert");
    let mut lingering = Vec::new();
    let removed = ct.retire_settled(|_, b| b == backend(), |k, _| lingering.push(k.src_port));
    lingering.sort_unstable();
    assert_eq!(lingering, vec![10, 11, 12]);
    assert_eq!(removed, 2, "the finished TCP flow and the UDP flow");
    for p in [10, 11, 12] {
        assert!(ct.lookup(&forward(p), 0, 0).is_some(), "{p} left in place");
    }
    assert!(ct.lookup(&forward(13), 0, ACK).is_none());
    assert!(ct.lookup(&udp, 0, 0).is_none());
    assert_eq!(ct.stats().retired.load(STAT), 2);
}

const SNAT_A: [u8; 4] = [198, 18, 3, 1];
const SNAT_B: [u8; 4] = [198, 18, 3, 2];

fn snat_config(addresses: &[[u8; 4]], ports: std::ops::RangeInclusive<u16>) -> SnatConfig {
    SnatConfig {
        addresses: addresses.iter().map(|&a| a.into()).collect(),
        ports,
    }
}

fn snat_table(max_flows: usize, ports: std::ops::RangeInclusive<u16>) -> Conntrack {
    Conntrack::new(ConntrackConfig {
        max_flows,
        unreplied_percent: 100,
        timeouts: Timeouts::default(),
    })
    .with_snat(&snat_config(&[SNAT_A], ports))
    .expect("valid SNAT config")
}

/// The reply key of client port `p`'s SNAT flow, by its hit.
fn snat_reply(hit: &FlowHit) -> FlowKey {
    let (ip, port) = hit.snat.expect("a SNAT flow");
    FlowKey {
        src: hit.nat_ip,
        dst: ip,
        src_port: hit.nat_port,
        dst_port: port,
        protocol: Protocol::Tcp,
    }
}

fn in_use(ct: &Conntrack) -> Vec<u64> {
    ct.snat_ports_in_use().iter().map(|(_, n)| *n).collect()
}

#[test]
fn snat_flows_are_found_by_both_keys_and_hold_distinct_ports() {
    let ct = snat_table(64, 61000..=61003);
    let mut ports = Vec::new();
    for p in 1..=4 {
        let hit = ct
            .insert(forward(p), backend(), 1, FlowMeta::default())
            .expect("a port is free");
        let (ip, port) = hit.snat.expect("source NAT on");
        assert_eq!(ip, Ipv4Addr::from(SNAT_A));
        ports.push(port);
        let reply = ct
            .lookup(&snat_reply(&hit), 1, SYN | ACK)
            .expect("reply key");
        assert_eq!(reply.direction, Direction::Reply);
        assert_eq!(
            (reply.nat_ip, reply.nat_port, reply.snat),
            (
                Ipv4Addr::new(198, 18, 100, 10),
                8080,
                Some((Ipv4Addr::new(198, 18, 0, 2), p))
            ),
            "the reply goes back from the VIP to the client"
        );
    }
    ports.sort_unstable();
    assert_eq!(ports, [61000, 61001, 61002, 61003], "every port once");
    assert_eq!(
        ct.insert(forward(5), backend(), 1, FlowMeta::default()),
        Err(InsertError::SnatExhausted)
    );
    assert_eq!(ct.stats().snat_exhausted.get(), 1);
    assert_eq!(
        ct.insert(
            forward(5),
            (Ipv4Addr::new(198, 18, 2, 12), 5678),
            1,
            FlowMeta::default()
        )
        .map(|h| h.snat.is_some()),
        Ok(true),
        "ports are per backend: another backend has all of them"
    );
    assert_eq!(in_use(&ct), [5]);
    check_invariants(&ct, 1);
}

#[test]
fn snat_ports_come_back_by_every_path_a_flow_leaves() {
    // Expiry.
    let ct = snat_table(64, 61000..=61000);
    ct.insert(forward(1), backend(), 0, FlowMeta::default())
        .expect("insert");
    assert_eq!(in_use(&ct), [1]);
    assert_eq!(ct.sweep(1000), 1);
    assert_eq!(in_use(&ct), [0], "expired");
    // Retirement.
    ct.insert(forward(2), backend(), 1000, FlowMeta::default())
        .expect("the expired flow's port is free");
    assert_eq!(ct.retire(|_, b| b == backend()), 1);
    assert_eq!(in_use(&ct), [0], "retired");
    // TIME_WAIT replacement by a new SYN on the same 5-tuple.
    handshake(&ct, 3, 1000);
    ct.lookup(&forward(3), 1000, ACK | FIN);
    let hit = ct.lookup(&forward(3), 1000, ACK).expect("tracked");
    ct.lookup(&snat_reply(&hit), 1000, ACK | FIN);
    assert!(ct.lookup(&forward(3), 1000, SYN).is_none(), "replaced");
    assert_eq!(in_use(&ct), [0], "replaced");
    // A finished flow's port is reused by a new client when none is free.
    handshake(&ct, 4, 1000);
    ct.lookup(&forward(4), 1000, ACK | FIN);
    let hit = ct.lookup(&forward(4), 1000, ACK).expect("tracked");
    ct.lookup(&snat_reply(&hit), 1000, ACK | FIN);
    ct.insert(forward(5), backend(), 1000, FlowMeta::default())
        .expect("the TIME_WAIT flow's port is taken over");
    assert_eq!(ct.stats().reused.get(), 1);
    assert_eq!(in_use(&ct), [1]);
    check_invariants(&ct, 1000);

    // Eviction: a full table evicts the unassured flow for a new one on
    // another backend, and its port is free again.
    let ct = snat_table(1, 61000..=61000);
    ct.insert(forward(1), backend(), 0, FlowMeta::default())
        .expect("insert");
    ct.insert(
        forward(2),
        (Ipv4Addr::new(198, 18, 2, 12), 5678),
        0,
        FlowMeta::default(),
    )
    .expect("evicts the first flow");
    assert_eq!(evicted(&ct), [0, 1, 0]);
    assert_eq!(in_use(&ct), [1], "the evicted flow's port was released");
    check_invariants(&ct, 0);
}

#[test]
fn snat_addresses_are_used_in_turn_and_overflow_to_the_next() {
    let ct = Conntrack::default()
        .with_snat(&snat_config(&[SNAT_A, SNAT_B], 61000..=61001))
        .expect("valid");
    let addrs: Vec<Ipv4Addr> = (1..=4)
        .map(|p| {
            ct.insert(forward(p), backend(), 0, FlowMeta::default())
                .expect("insert")
                .snat
                .expect("SNAT")
                .0
        })
        .collect();
    let (a, b) = (Ipv4Addr::from(SNAT_A), Ipv4Addr::from(SNAT_B));
    assert_eq!(addrs, [a, b, a, b]);
    assert_eq!(in_use(&ct), [2, 2]);
    assert_eq!(
        ct.insert(forward(5), backend(), 0, FlowMeta::default()),
        Err(InsertError::SnatExhausted),
        "both addresses' ports towards the backend are held"
    );
    assert!(ct.remove(&forward(2)), "frees a port on B");
    let hit = ct
        .insert(forward(6), backend(), 0, FlowMeta::default())
        .expect("A is full, so B");
    assert_eq!(hit.snat.map(|s| s.0), Some(b));
}

/// A gateway builds its table in process memory and takes the index's
/// memory before it may open the table file; moved into the file, the
/// table keeps its source NAT, writes into the file, and the next one
/// adopts what it wrote.
#[test]
fn a_table_built_in_memory_moves_into_its_file_and_is_adopted() {
    let dir = StateDir::new("into-file");
    let config = ConntrackConfig {
        max_flows: 16,
        unreplied_percent: 50,
        timeouts: Timeouts::default(),
    };
    let built = || {
        let ct = Conntrack::new(config)
            .with_workers(2)
            .with_accounting()
            .with_snat(&snat_config(&[SNAT_A], 61000..=61099))
            .expect("valid");
        ct.populate_all_but_records()
            .expect("index, queues, accounts");
        ct
    };
    let hit;
    {
        let ct = built().into_file(dir.file(&config));
        ct.populate_records().expect("the file's records");
        assert_eq!(ct.adopt(5), Adoption::default(), "a fresh file");
        hit = ct
            .insert(forward(1), backend(), 5, FlowMeta::default())
            .expect("insert");
        assert!(hit.snat.is_some(), "source NAT kept through the move");
    }
    let ct = built().into_file(dir.file(&config));
    let adoption = ct.adopt(6);
    assert_eq!((adoption.flows, adoption.discarded), (1, 0), "{adoption:?}");
    let reply = ct
        .lookup(&snat_reply(&hit), 6, SYN | ACK)
        .expect("the reply key, under the same SNAT address");
    assert_eq!(
        reply.snat,
        Some((forward(1).src, forward(1).src_port)),
        "the reply is turned back to the client"
    );
    check_invariants(&ct, 6);
}

#[test]
#[should_panic(expected = "only a table that never held a flow moves into a file")]
fn a_table_that_held_a_flow_does_not_move_into_a_file() {
    let dir = StateDir::new("into-file-used");
    let config = ConntrackConfig {
        max_flows: 16,
        unreplied_percent: 50,
        timeouts: Timeouts::default(),
    };
    let ct = Conntrack::new(config);
    ct.insert(forward(1), backend(), 0, FlowMeta::default())
        .expect("insert");
    let _ = ct.into_file(dir.file(&config));
}

#[test]
fn adoption_keeps_snat_flows_only_under_the_same_addresses() {
    let dir = StateDir::new("snat");
    let config = ConntrackConfig {
        max_flows: 16,
        unreplied_percent: 50,
        timeouts: Timeouts::default(),
    };
    let with = |addresses: &[[u8; 4]]| {
        dir.open(&config)
            .with_snat(&snat_config(addresses, 61000..=61099))
            .expect("valid")
    };
    let hit;
    {
        let ct = with(&[SNAT_A, SNAT_B]);
        hit = ct
            .insert(forward(1), backend(), 5, FlowMeta::default())
            .expect("insert");
        ct.insert(forward(2), backend(), 5, FlowMeta::default())
            .expect("insert");
    }
    {
        let ct = with(&[SNAT_A, SNAT_B]);
        let adoption = ct.adopt(6);
        assert_eq!((adoption.flows, adoption.discarded), (2, 0), "{adoption:?}");
        assert_eq!(in_use(&ct), [1, 1]);
        let reply = ct
            .lookup(&snat_reply(&hit), 6, SYN | ACK)
            .expect("reply key");
        assert_eq!(reply.snat, Some((Ipv4Addr::new(198, 18, 0, 2), 1)));
        check_invariants(&ct, 6);
    }
    let ct = with(&[SNAT_B]);
    let adoption = ct.adopt(7);
    assert_eq!(
        (adoption.flows, adoption.discarded),
        (0, 2),
        "indexes of another address list mean nothing: {adoption:?}"
    );
}

// IPv6: the same table over 64-byte records (see slab.rs). The semantics
// are the family-independent code above; these check what the layout
// changes: keys and rewrites of both directions, source NAT, adoption
// from the IPv6 table file, and the sequence lock under concurrency.

fn v6(last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, last)
}

fn key6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> FlowKey<Ipv6Addr> {
    FlowKey {
        src,
        dst,
        src_port: sport,
        dst_port: dport,
        protocol: Protocol::Tcp,
    }
}

fn forward6(port: u16) -> FlowKey<Ipv6Addr> {
    key6(
        v6(2),
        port,
        Ipv6Addr::new(0x2001, 2, 0, 0xff, 0, 0, 0, 10),
        8080,
    )
}

fn backend6() -> (Ipv6Addr, u16) {
    (Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 11), 5678)
}

fn reply6(port: u16) -> FlowKey<Ipv6Addr> {
    key6(backend6().0, backend6().1, v6(2), port)
}

fn handshake6(ct: &Conntrack<Ipv6Addr>, p: u16, now: u32) {
    ct.insert(forward6(p), backend6(), now, FlowMeta::default())
        .expect("insert");
    ct.lookup(&reply6(p), now, SYN | ACK).expect("syn-ack");
    ct.lookup(&forward6(p), now, ACK).expect("ack");
}

#[test]
fn ipv6_flows_are_tracked_both_ways() {
    let ct = Conntrack::<Ipv6Addr>::default();
    let hit = ct
        .insert(
            forward6(40000),
            backend6(),
            1,
            FlowMeta {
                slot: 7,
                ..FlowMeta::default()
            },
        )
        .expect("insert");
    assert_eq!(
        (hit.nat_ip, hit.nat_port, hit.slot),
        (backend6().0, backend6().1, 7)
    );
    let r = ct
        .lookup(&reply6(40000), 2, SYN | ACK)
        .expect("reply entry");
    assert_eq!(
        (r.direction, r.nat_ip, r.nat_port),
        (Direction::Reply, forward6(40000).dst, 8080)
    );
    let f = ct.lookup(&forward6(40000), 2, ACK).expect("forward entry");
    assert_eq!(f.state, FlowState::TcpEstablished);
    // Addresses that differ only in their high half are other flows.
    let mut other = forward6(40000);
    other.src = Ipv6Addr::new(0x2001, 3, 0, 0, 0, 0, 0, 2);
    assert_eq!(ct.lookup(&other, 2, SYN), None);
    check_invariants(&ct, 2);
    assert!(ct.remove(&reply6(40000)));
    assert_eq!(ct.lookup(&forward6(40000), 3, ACK), None);
    check_invariants(&ct, 3);
}

#[test]
fn a_full_ipv6_table_evicts_unassured_before_assured() {
    let ct = Conntrack::<Ipv6Addr>::new(ConntrackConfig {
        max_flows: 4,
        unreplied_percent: 100,
        timeouts: Timeouts::default(),
    });
    handshake6(&ct, 1, 1);
    handshake6(&ct, 2, 1);
    handshake6(&ct, 3, 1);
    ct.insert(forward6(4), backend6(), 1, FlowMeta::default())
        .expect("the fourth flow, unassured");
    ct.insert(forward6(5), backend6(), 2, FlowMeta::default())
        .expect("evicts the unassured flow");
    assert_eq!(ct.lookup(&forward6(4), 2, ACK), None, "evicted");
    for p in 1..=3 {
        assert!(
            ct.lookup(&forward6(p), 2, ACK).is_some(),
            "assured flow {p} stays"
        );
    }
    assert_eq!(
        ct.stats().evicted[EvictionClass::Unassured as usize].get(),
        1
    );
    check_invariants(&ct, 2);
}

#[test]
fn ipv6_snat_flows_hold_distinct_ports_and_are_found_by_both_keys() {
    let snat = Ipv6Addr::new(0x2001, 2, 0, 3, 0, 0, 0, 1);
    let ct = Conntrack::<Ipv6Addr>::new(ConntrackConfig {
        max_flows: 16,
        unreplied_percent: 100,
        timeouts: Timeouts::default(),
    })
    .with_snat(&SnatConfig {
        addresses: vec![snat],
        ports: 61000..=61001,
    })
    .expect("valid SNAT config");
    let mut ports = Vec::new();
    for p in 1..=2 {
        let hit = ct
            .insert(forward6(p), backend6(), 1, FlowMeta::default())
            .expect("a port");
        let (ip, port) = hit.snat.expect("SNAT");
        assert_eq!(ip, snat);
        ports.push(port);
        let reply = key6(backend6().0, backend6().1, snat, port);
        let back = ct.lookup(&reply, 1, SYN | ACK).expect("the reply key");
        assert_eq!(back.snat, Some((v6(2), p)), "the client comes back");
        assert_eq!((back.nat_ip, back.nat_port), (forward6(p).dst, 8080));
    }
    ports.sort_unstable();
    assert_eq!(ports, [61000, 61001]);
    assert_eq!(
        ct.insert(forward6(3), backend6(), 1, FlowMeta::default()),
        Err(InsertError::SnatExhausted)
    );
    assert_eq!(ct.snat_ports_in_use(), vec![(snat, 2)]);
    check_invariants(&ct, 1);
}

#[test]
fn an_ipv6_table_file_is_adopted_by_the_next_gateway() {
    let dir = StateDir::new("adopt6");
    let config = ConntrackConfig {
        max_flows: 64,
        unreplied_percent: 50,
        timeouts: Timeouts::default(),
    };
    let open = || dir.open6(&config);
    {
        let ct = open();
        assert_eq!(ct.adopt(10), Adoption::default(), "a fresh file");
        handshake6(&ct, 10, 10);
        handshake6(&ct, 11, 10);
        assert!(ct.remove(&forward6(11)));
        handshake6(&ct, 12, 10);
    }
    let ct = open();
    let adoption = ct.adopt(11);
    assert_eq!((adoption.flows, adoption.discarded), (2, 0), "{adoption:?}");
    let hit = ct.lookup(&forward6(12), 11, ACK).expect("adopted");
    assert_eq!((hit.nat_ip, hit.nat_port), backend6());
    assert!(
        ct.lookup(&reply6(10), 11, ACK).is_some(),
        "the reply key too"
    );
    assert_eq!(ct.lookup(&forward6(11), 11, ACK), None);
    check_invariants(&ct, 11);
}

/// VIPs of another /64 take the next entry of the table's VIP prefixes;
/// the table file keeps those prefixes, so the next gateway's lookups
/// rewrite replies back to the right VIP of each.
#[test]
fn ipv6_vips_of_several_prefixes_survive_adoption() {
    let dir = StateDir::new("vips6");
    let config = ConntrackConfig {
        max_flows: 64,
        unreplied_percent: 50,
        timeouts: Timeouts::default(),
    };
    let open = || dir.open6(&config);
    // Three Service CIDRs' VIPs, the first twice.
    let vips = [
        Ipv6Addr::new(0x2001, 2, 0, 0xff, 0, 0, 0, 10),
        Ipv6Addr::new(0x2001, 2, 0, 0xfe, 0, 0, 0, 10),
        Ipv6Addr::new(0x2001, 2, 0, 0xff, 0, 0, 0, 11),
        Ipv6Addr::new(0x2001, 2, 1, 0, 0xffff, 0xffff, 0xffff, 0xffff),
    ];
    let forward = |n: usize| key6(v6(2), 40000 + n as u16, vips[n], 8080);
    let reply = |n: usize| key6(backend6().0, backend6().1, v6(2), 40000 + n as u16);
    {
        let ct = open();
        assert_eq!(ct.adopt(10), Adoption::default(), "a fresh file");
        for n in 0..vips.len() {
            ct.insert(forward(n), backend6(), 10, FlowMeta::default())
                .expect("insert");
        }
        assert_eq!(ct.slab.vips_in_use(), 3, "three /64s");
    }
    let ct = open();
    let adoption = ct.adopt(11);
    assert_eq!((adoption.flows, adoption.discarded), (4, 0), "{adoption:?}");
    assert_eq!(ct.slab.vips_in_use(), 3, "the file kept the prefixes");
    for (n, vip) in vips.iter().enumerate() {
        let hit = ct.lookup(&reply(n), 11, SYN | ACK).expect("adopted reply");
        assert_eq!((hit.nat_ip, hit.nat_port), (*vip, 8080), "flow {n}");
        assert!(ct.lookup(&forward(n), 11, ACK).is_some(), "flow {n}");
    }
    // A fourth prefix after adoption takes the next index.
    let fifth = key6(v6(2), 41000, Ipv6Addr::new(0x2001, 2, 2, 0, 0, 0, 0, 1), 80);
    ct.insert(fifth, backend6(), 11, FlowMeta::default())
        .expect("insert");
    assert_eq!(ct.slab.vips_in_use(), 4);
    check_invariants(&ct, 11);
}

/// Once the table holds as many VIP prefixes as it can, a new flow to a
/// VIP of another prefix is refused (and takes no record), while VIPs of
/// the prefixes it holds are tracked as before.
#[test]
fn a_full_table_of_vip_prefixes_refuses_only_new_prefixes() {
    let ct = Conntrack::<Ipv6Addr>::new(ConntrackConfig {
        max_flows: 1024,
        unreplied_percent: 100,
        timeouts: Timeouts::default(),
    });
    let vip = |n: u16| Ipv6Addr::new(0x2001, 2, 0x100, n, 0, 0, 0, 1);
    let prefixes = VIP_PREFIXES_MAX as u16;
    for n in 0..prefixes {
        ct.insert(
            key6(v6(2), 1000 + n, vip(n), 80),
            backend6(),
            1,
            FlowMeta::default(),
        )
        .expect("room for this prefix");
    }
    let flows = ct.summary().flows;
    assert_eq!(
        ct.insert(
            key6(v6(2), 3000, vip(prefixes), 80),
            backend6(),
            1,
            FlowMeta::default()
        ),
        Err(InsertError::VipPrefixesFull)
    );
    assert_eq!(
        ct.summary().flows,
        flows,
        "the refused flow takes no record"
    );
    let again = key6(
        v6(3),
        3000,
        Ipv6Addr::new(0x2001, 2, 0x100, 7, 0, 0, 0, 2),
        80,
    );
    ct.insert(again, backend6(), 1, FlowMeta::default())
        .expect("a VIP of a held prefix");
    assert!(ct.lookup(&again, 1, ACK).is_some());
    check_invariants(&ct, 1);
}

fn spaced_forward6(n: u16) -> FlowKey<Ipv6Addr> {
    key6(
        Ipv6Addr::new(0x2001, 2, 0, 1, 0xabcd, 0, 0, n % 7),
        1000 + n,
        Ipv6Addr::new(0x2001, 2, 0, 0xff, 0, 0, 0, n % 3 + 1),
        80,
    )
}

fn spaced_backend6(n: u16) -> (Ipv6Addr, u16) {
    (
        Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0xffff, n % 5 + 1),
        8080,
    )
}

#[test]
fn concurrent_ipv6_writers_and_readers_never_see_a_wrong_flow() {
    for (max_flows, index_flows) in [(128, 64), (512, 100_000)] {
        concurrent_run_in(
            max_flows,
            index_flows,
            2000,
            spaced_forward6,
            spaced_backend6,
        );
    }
}

/// A replied flow's removal changes the removal counts of its two keys'
/// parts and of no other part, so workers' caches keep the flows of the
/// other parts; an unreplied flow's removal changes none (workers never
/// cache one).
#[test]
fn removals_are_counted_in_the_parts_of_both_keys() {
    let ct = Conntrack::default();
    let part = |key: &FlowKey| Conntrack::<Ipv4Addr>::removal_part(key.mix());
    let others: Vec<FlowKey> = (1..=512).map(|p| forward(50000 + p)).collect();
    let parts: std::collections::BTreeSet<usize> = others.iter().map(part).collect();
    assert!(
        parts.len() > others.len() / 2,
        "one client's connections to one port spread over the parts: {} parts",
        parts.len()
    );
    let counts = |keys: &[FlowKey]| {
        keys.iter()
            .map(|k| ct.removals(k.mix()))
            .collect::<Vec<_>>()
    };

    ct.insert(forward(40000), backend(), 1, FlowMeta::default())
        .expect("insert");
    let before = counts(&others);
    assert!(ct.remove(&forward(40000)));
    assert_eq!(counts(&others), before, "an unreplied flow stales nothing");

    for port in [40001, 40002, 40003] {
        ct.insert(forward(port), backend(), 1, FlowMeta::default())
            .expect("insert");
        ct.lookup(&reply(port), 2, SYN | ACK).expect("the reply");
        let (own, before) = (
            [forward(port), reply(port)],
            (counts(&[forward(port), reply(port)]), counts(&others)),
        );
        assert!(ct.remove(&forward(port)));
        let after = counts(&own);
        assert!(
            after[0] != before.0[0] && after[1] != before.0[1],
            "both keys' counts move: {before:?} -> {after:?}"
        );
        let own_parts = [part(&own[0]), part(&own[1])];
        for ((key, was), now) in others.iter().zip(&before.1).zip(counts(&others)) {
            assert_eq!(
                now != *was,
                own_parts.contains(&part(key)),
                "{key:?} (part {}) after removing the flow of parts {own_parts:?}",
                part(key)
            );
        }
    }
}

/// The write prefetch's CPU check agrees with the kernel's reading of
/// the same CPUID bit ("3dnowprefetch" in /proc/cpuinfo), so the
/// instruction is used exactly where the CPU has it.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[test]
fn the_write_prefetch_is_used_where_the_cpu_has_it() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").expect("/proc/cpuinfo is readable");
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .expect("/proc/cpuinfo lists the CPU's flags");
    let listed = flags.split_whitespace().any(|f| f == "3dnowprefetch");
    let write_prefetch = super::WritePrefetch::detect();
    assert_eq!(
        write_prefetch.uses_prefetchw(),
        listed,
        "CPUID's PRFCHW bit and the kernel's 3dnowprefetch flag disagree"
    );
    // Asking for a line, owned, changes nothing in it.
    let bucket = [7u64; 8];
    write_prefetch.item(&bucket);
    assert_eq!(bucket, [7; 8], "a prefetch is only a hint");
}
