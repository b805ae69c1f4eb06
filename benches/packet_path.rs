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
//! - `copy_only`: restoring the 64-byte input frame, the harness's own
//!   cost included in the cases above.
//!
//! Run: `cargo bench -p cipgw --bench packet_path`.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cipgw::conntrack::{Conntrack, ConntrackConfig};
use cipgw::counters::WorkerCounters;
use cipgw::lb::Rng;
use cipgw::pipeline::{BatchContext, Pipeline, Verdict};
use cipgw::route::{NetSnapshot, Port, Route};
use cipgw::table::CompiledTable;
use cipgw_config::{
    ClusterIp, Endpoint, EndpointState, Protocol, Service, ServiceKind, ServiceName, ServicePort,
    ServiceTable, TargetPort,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use etherparse::PacketBuilder;

const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
const GW_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

/// `services` Services of 3 endpoints each; the measured one is the last,
/// at VIP 198.19.255.254:8080.
fn table(services: usize) -> CompiledTable {
    let mut list = Vec::with_capacity(services);
    for i in 0..services {
        let vip = if i + 1 == services {
            Ipv4Addr::new(198, 19, 255, 254)
        } else {
            Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 1)) + i as u32)
        };
        list.push(Service {
            name: ServiceName::new("bench", format!("svc-{i:05}")),
            kind: ServiceKind::ClusterIp,
            cluster_ip: ClusterIp::Vip(vip),
            session_affinity: None,
            ports: vec![ServicePort {
                name: None,
                port: 8080,
                protocol: Protocol::Udp,
                target_port: TargetPort::Number(5678),
                endpoints: (11..14)
                    .map(|last| Endpoint {
                        ip: Ipv4Addr::new(198, 18, 2, last),
                        port: 5678,
                        state: EndpointState::READY,
                        pod: None,
                    })
                    .collect(),
            }],
        });
    }
    CompiledTable::compile(Arc::new(ServiceTable { services: list }), 1)
}

fn net() -> NetSnapshot {
    let ports = vec![
        Port {
            ifindex: 10,
            name: "client".into(),
            mac: GW_MAC,
        },
        Port {
            ifindex: 11,
            name: "pods".into(),
            mac: GW_MAC,
        },
    ];
    let routes = vec![
        Route {
            dst: Ipv4Addr::new(198, 18, 0, 0),
            prefix_len: 24,
            ifindex: 10,
            gateway: None,
        },
        Route {
            dst: Ipv4Addr::new(198, 18, 2, 0),
            prefix_len: 24,
            ifindex: 11,
            gateway: None,
        },
    ];
    let mut neigh = HashMap::new();
    for last in 11..14 {
        neigh.insert((11, Ipv4Addr::new(198, 18, 2, last)), [2, 0, 0, 0, 2, last]);
    }
    for last in 2..255 {
        neigh.insert((10, Ipv4Addr::new(198, 18, 0, last)), [2, 0, 0, 0, 0, last]);
    }
    NetSnapshot::new(routes, neigh, ports)
}

/// A 64-byte frame (60 + FCS on the wire): UDP with 18 payload bytes.
fn frame(src: ([u8; 4], u16), dst: ([u8; 4], u16)) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    PacketBuilder::ethernet2(CLIENT_MAC, GW_MAC)
        .ipv4(src.0, dst.0, 64)
        .udp(src.1, dst.1)
        .write(&mut out, &[0u8; 18])
        .expect("bench frame builds");
    out
}

fn pipeline() -> Pipeline {
    Pipeline::new(
        Arc::new(Conntrack::default()),
        Arc::new(WorkerCounters::default()),
        Rng::new(7),
    )
}

fn client(i: usize) -> [u8; 4] {
    [198, 18, 0, 2 + (i % 250) as u8]
}

fn bench(c: &mut Criterion) {
    let net = net();
    let vip = [198, 19, 255, 254];
    let mut group = c.benchmark_group("packet_path");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));

    let one = table(1);
    let frames: Vec<Vec<u8>> = (0..1024)
        .map(|i| frame((client(i), 20000 + i as u16), (vip, 8080)))
        .collect();
    let mut p = pipeline();
    let ctx = BatchContext {
        table: &one,
        net: &net,
        now: 1,
    };
    let mut replies = Vec::new();
    for f in &frames {
        let mut copy = f.clone();
        let len = copy.len();
        assert!(matches!(
            p.process(&mut copy, len, 0, &ctx),
            Verdict::Forward { .. }
        ));
        // The reply of this flow: backend -> client.
        let ip = &copy[14..];
        let backend = [ip[16], ip[17], ip[18], ip[19]];
        let client_ip = [ip[12], ip[13], ip[14], ip[15]];
        let cport = u16::from_be_bytes([ip[20], ip[21]]);
        replies.push(frame((backend, 5678), (client_ip, cport)));
    }
    // One reply per flow: the flows are established (replied), as a
    // gateway's long-lived flows are.
    for r in &replies {
        let mut copy = r.clone();
        let len = copy.len();
        assert!(matches!(
            p.process(&mut copy, len, 1, &ctx),
            Verdict::Forward { .. }
        ));
    }

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
            let f = &frames[i & 1023];
            scratch[..f.len()].copy_from_slice(f);
            i += 1;
            black_box(p.process(&mut scratch, f.len(), 0, &ctx))
        })
    });
    group.bench_function("reply/1024_flows", |b| {
        let mut i = 0;
        b.iter(|| {
            let f = &replies[i & 1023];
            scratch[..f.len()].copy_from_slice(f);
            i += 1;
            black_box(p.process(&mut scratch, f.len(), 0, &ctx))
        })
    });

    for services in [1usize, 10_000] {
        let t = table(services);
        let ctx = BatchContext {
            table: &t,
            net: &net,
            now: 1,
        };
        let base = frame((client(0), 1), (vip, 8080));
        group.bench_function(format!("new_flow/{services}_services"), |b| {
            b.iter_custom(|iters| {
                // A fresh table per measurement, bounded above what it
                // takes, so every packet really is a new flow and nothing
                // is evicted.
                let mut p = Pipeline::new(
                    Arc::new(Conntrack::new(ConntrackConfig {
                        max_flows: iters as usize + 1,
                        unreplied_percent: 100,
                        ..ConntrackConfig::default()
                    })),
                    Arc::new(WorkerCounters::default()),
                    Rng::new(9),
                );
                let mut f = base.clone();
                let len = f.len();
                let start = Instant::now();
                for i in 0..iters {
                    f.copy_from_slice(&base);
                    // A distinct client address and port per packet; the
                    // UDP checksum is left stale, as the pipeline does not
                    // verify it.
                    f[28..30].copy_from_slice(&(((i >> 16) as u16) | 0x100).to_be_bytes());
                    f[34..36].copy_from_slice(&(i as u16).to_be_bytes());
                    black_box(p.process(&mut f, len, 0, &ctx));
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
