//! The packet-path fuzz harness: any byte string becomes a short session
//! of frames run through cipgw's whole
//! [`Pipeline`](cipgw_datapath::pipeline::Pipeline) (parse, classify,
//! conntrack lookup and insert, rewrite, refusals and echo replies, DNS
//! answers to queries for the DNS address) against a fixed service table
//! and its DNS zone, with invariants checked after every frame.
//!
//! It lives in a library (not only in the fuzz target) so that the seed
//! corpus can be generated and replayed by ordinary tests
//! (`tests/seeds.rs`) without libFuzzer. The gateway it runs is the data
//! path's in-memory one (`cipgw_datapath::harness`); what is the fuzzer's
//! own here is the input format, the Services and the invariants.
//!
//! Input format (all of it is valid; short inputs simply end early):
//!
//! ```text
//! byte 0          setup: bits 0-2  max_flows - 1 (a table of 1..=8 flows,
//!                                  so eviction and refusal paths run)
//!                        bits 3-4  unreplied share: 100, 50, 25 or 1 %
//!                        bit 5     --cluster-cidr 198.18.0.0/24 and
//!                                  2001:2::/64 (else all)
//!                        bits 6-7  backend-choice RNG seed
//! then records    ctl    bits 0-1  ingress port: 0 client side, 1 Pod
//!                                  side, 2 a port the snapshot lacks, 3 = 0
//!                        bit 2     fix up checksums first (IPv4 header and
//!                                  TCP/UDP/ICMP; IPv6 TCP/UDP/ICMPv6 but
//!                                  in fragments), so mutated frames stay
//!                                  well-formed enough to reach deep paths
//!                        bit 3     sweep conntrack after the frame
//!                        bits 4-6  clock step before the frame, seconds:
//!                                  0, 1, 2, 11, 31, 121, 3601, 86401
//!                        bit 7     endpoint churn before the frame: switch
//!                                  to the other table and retire flows
//!                                  whose backend left it
//!                 len    u16, little endian (cut to what is left)
//!                 frame  len bytes (at most 2048, one UMEM frame)
//! ```
//!
//! Invariants, for any input: nothing panics (overflow and debug
//! assertions are on in fuzz builds); a `Forward` (or `AwaitNeighbour`)
//! frame still parses as the IPv4 (IPv6) packet it was, with the same
//! framing, leaves through a port that exists, had its TTL (hop limit)
//! decremented, and goes to a backend of the table or comes from a VIP;
//! it belongs to a flow conntrack holds (not only a worker's cache of it)
//! and was rewritten to that flow's backend (or VIP, for a reply);
//! its IPv4 header checksum, and its TCP/UDP (ICMPv6) checksum, are valid
//! whenever they were valid on input; a forwarded ICMP(v6) error has a
//! valid checksum and quotes a datagram to a VIP or from a backend; a
//! later fragment no longer goes to a VIP; a `Respond` fits the buffer,
//! goes back out of the ingress port, and is a well-formed packet of the
//! request's family with correct checksums (an echo reply's ICMP checksum
//! when the request's was; a DNS answer's UDP checksum always, from port
//! 53, with QR set); each family's conntrack holds at most
//! `max_flows + 1` flows and exactly two entries per flow, and the IPv4
//! one no more unreplied flows than flows.
//!
//! The Services are IPv4 but for `solo6` (IPv6 only), so seeds reach the
//! IPv6 path too: flows, ICMPv6 errors, fragments.

use std::net::Ipv6Addr;
use std::sync::{Arc, OnceLock};

use cipgw_config::{EndpointState, Protocol, ServiceName, ServiceTable};
use cipgw_datapath::checksum::{checksum, l4_checksum, l4_checksum_v6};
use cipgw_datapath::conntrack::{Conntrack, ConntrackConfig, Direction, FlowKey, Timeouts};
use cipgw_datapath::dns::{DnsConfig, DnsCounters, DnsResponder, DnsZone};
use cipgw_datapath::harness::{
    endpoint, pipeline, service, service_port, Harness, Net, CLIENT_IFINDEX, POD_IFINDEX,
};
use cipgw_datapath::pipeline::{Pipeline, PipelineConfig, Verdict};
use cipgw_datapath::route::{NetSnapshot, PortId};
use cipgw_datapath::table::CompiledTable;

pub use cipgw_datapath::harness::{mac, CLIENT_PORT, POD_PORT};

/// Size of one UMEM frame: the frame plus the room an answer may use.
pub const BUF_LEN: usize = 2048;
/// Frames per input, so that one input cannot run for long.
pub const MAX_FRAMES: usize = 64;
/// The synthetic clock's start, seconds.
pub const START: u32 = 1000;
/// Clock steps selectable per frame (seconds): around every timeout.
pub const CLOCK_STEPS: [u32; 8] = [0, 1, 2, 11, 31, 121, 3601, 86401];
/// Unreplied shares selectable in the setup byte (percent).
pub const UNREPLIED_PERCENT: [u8; 4] = [100, 50, 25, 1];

/// Addresses of the fixed topology: the harness's lab (RFC 2544
/// benchmarking range only) and the fuzzer's Services in it.
pub mod addr {
    pub use cipgw_datapath::harness::addr::{CLIENT, POD1, POD2, POD3};

    /// A client whose MAC is not resolved: replies to it wait.
    pub const CLIENT_UNRESOLVED: [u8; 4] = [198, 18, 0, 20];
    /// A client outside `--cluster-cidr` when the setup restricts it.
    pub const CLIENT_OUTSIDE: [u8; 4] = [198, 18, 1, 2];
    /// `web`: TCP 80 -> 8080 and UDP 53 -> 5353 on POD1..POD3.
    pub const WEB_VIP: [u8; 4] = [198, 19, 0, 10];
    /// `dns`: UDP 53 -> 5353 on POD1, POD2.
    pub const DNS_VIP: [u8; 4] = [198, 19, 0, 20];
    /// `empty`: TCP 80 and UDP 53 without endpoints.
    pub const EMPTY_VIP: [u8; 4] = [198, 19, 0, 30];
    /// `sticky`: ClientIP affinity (10 s), TCP 80 -> 8080 on POD1, POD2
    /// and POD_UNRESOLVED.
    pub const STICKY_VIP: [u8; 4] = [198, 19, 0, 40];
    /// `draining`: TCP 80 -> 8080 on a serving, terminating Pod only.
    pub const DRAINING_VIP: [u8; 4] = [198, 19, 0, 50];
    /// `solo`: TCP 80 -> 8080 and UDP 53 -> 5353 on POD1 only, so seeds
    /// know the backend a flow gets.
    pub const SOLO_VIP: [u8; 4] = [198, 19, 0, 60];
    /// `far`: TCP 80 -> 8080 on a Pod behind a router, one with no route,
    /// and one routed through an interface cipgw is not attached to.
    pub const FAR_VIP: [u8; 4] = [198, 19, 0, 70];
    /// Replaces POD3 in the churned table.
    pub const POD4: [u8; 4] = [198, 18, 2, 17];
    /// A Pod whose MAC is not resolved.
    pub const POD_UNRESOLVED: [u8; 4] = [198, 18, 2, 14];
    /// The headless Service's Pod (no VIP).
    pub const POD_HEADLESS: [u8; 4] = [198, 18, 2, 15];
    pub const POD_DRAINING: [u8; 4] = [198, 18, 2, 16];
    /// Behind the router 198.18.2.1.
    pub const POD_ROUTED: [u8; 4] = [198, 18, 9, 9];
    pub const POD_NO_ROUTE: [u8; 4] = [198, 19, 200, 1];
    pub const POD_DETACHED: [u8; 4] = [198, 19, 201, 1];
    pub const ROUTER: [u8; 4] = [198, 18, 2, 1];
    /// Where the gateway answers DNS (UDP port 53), for zone
    /// `cluster.local` of the fuzzer's Services (namespace `fuzz`).
    pub const DNS_ADDRESS: [u8; 4] = [198, 19, 0, 53];

    /// The IPv6 client (2001:2::2, on the client arm's 2001:2::/64).
    pub const CLIENT6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    /// The IPv6 Pod (2001:2:0:2::11, on the Pod arm's 2001:2:0:2::/64).
    pub const POD6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0x11];
    /// A router on the Pod arm (2001:2:0:2::fe).
    pub const ROUTER6: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0xfe];
    /// `solo6`, IPv6 only: TCP 80 -> 8080 and UDP 53 -> 5353 on POD6.
    pub const SOLO6_VIP: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x60];
}

/// A port id the snapshot does not have.
pub const UNKNOWN_PORT: PortId = 7;

/// The service model; `churned` is the same after endpoint changes: POD3
/// replaced by POD4 in `web`, POD2 gone from `sticky`, `dns` without
/// endpoints and `empty` with one.
pub fn model(churned: bool) -> ServiceTable {
    use addr::*;
    let name = |name| ServiceName::new("fuzz", name);
    let web_pods: &[[u8; 4]] = if churned {
        &[POD1, POD2, POD4]
    } else {
        &[POD1, POD2, POD3]
    };
    let sticky_pods: &[[u8; 4]] = if churned {
        &[POD1, POD_UNRESOLVED]
    } else {
        &[POD1, POD2, POD_UNRESOLVED]
    };
    let dns_pods: &[[u8; 4]] = if churned { &[] } else { &[POD1, POD2] };
    let empty_pods: &[[u8; 4]] = if churned { &[POD2] } else { &[] };
    let mut draining = service_port(80, Protocol::Tcp, 8080, &[]);
    draining.endpoints.push(cipgw_config::Endpoint {
        state: EndpointState {
            ready: false,
            serving: true,
            terminating: true,
        },
        ..endpoint(POD_DRAINING, 8080)
    });
    let mut services = vec![
        service(
            name("web"),
            Some(WEB_VIP),
            None,
            vec![
                service_port(80, Protocol::Tcp, 8080, web_pods),
                service_port(53, Protocol::Udp, 5353, web_pods),
            ],
        ),
        service(
            name("dns"),
            Some(DNS_VIP),
            None,
            vec![service_port(53, Protocol::Udp, 5353, dns_pods)],
        ),
        service(
            name("empty"),
            Some(EMPTY_VIP),
            None,
            vec![
                service_port(80, Protocol::Tcp, 8080, empty_pods),
                service_port(53, Protocol::Udp, 5353, empty_pods),
            ],
        ),
        service(
            name("sticky"),
            Some(STICKY_VIP),
            Some(10),
            vec![service_port(80, Protocol::Tcp, 8080, sticky_pods)],
        ),
        service(name("draining"), Some(DRAINING_VIP), None, vec![draining]),
        service(
            name("solo"),
            Some(SOLO_VIP),
            None,
            vec![
                service_port(80, Protocol::Tcp, 8080, &[POD1]),
                service_port(53, Protocol::Udp, 5353, &[POD1]),
            ],
        ),
        service(
            name("far"),
            Some(FAR_VIP),
            None,
            vec![service_port(
                80,
                Protocol::Tcp,
                8080,
                &[POD_ROUTED, POD_NO_ROUTE, POD_DETACHED],
            )],
        ),
        solo6(),
        service(
            name("headless"),
            None,
            None,
            vec![service_port(5432, Protocol::Tcp, 5432, &[POD_HEADLESS])],
        ),
    ];
    services.sort_by(|a, b| a.name.cmp(&b.name));
    ServiceTable { services }
}

/// `solo6`: an IPv6-only Service, the same in both tables.
fn solo6() -> cipgw_config::Service {
    let six = |port, protocol, target| {
        let mut p = service_port(port, protocol, target, &[]);
        p.endpoints.push(cipgw_config::Endpoint {
            ip: std::net::Ipv6Addr::from(addr::POD6).into(),
            ..endpoint(addr::POD1, target)
        });
        p
    };
    let mut s = service(
        ServiceName::new("fuzz", "solo6"),
        None,
        None,
        vec![six(80, Protocol::Tcp, 8080), six(53, Protocol::Udp, 5353)],
    );
    s.cluster_ip = cipgw_config::ClusterIp::single(std::net::Ipv6Addr::from(addr::SOLO6_VIP).into());
    s.ip_families = vec![cipgw_config::IpFamily::V6];
    s
}

/// The harness's two arms, with the outside clients' subnet on port 0, a
/// router to more Pods and a route through an interface cipgw is not
/// attached to; clients .2 to .9, the outside client, the Pods (all but
/// POD_UNRESOLVED) and the router resolved; for IPv6, 2001:2::/64 on
/// port 0 and 2001:2:0:2::/64 on port 1, with CLIENT6, POD6 and ROUTER6
/// resolved.
pub fn net() -> NetSnapshot {
    use addr::*;
    use cipgw_datapath::route::Route;
    use std::net::Ipv6Addr;
    let route6 = |prefix: [u8; 16], ifindex| Route {
        dst: Ipv6Addr::from(prefix),
        prefix_len: 64,
        ifindex,
        gateway: None,
    };
    let routes6 = vec![
        route6([0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], CLIENT_IFINDEX),
        route6([0x20, 0x01, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0], POD_IFINDEX),
    ];
    let neighbours6 = [
        ((CLIENT_IFINDEX, Ipv6Addr::from(CLIENT6)), mac::CLIENT),
        ((POD_IFINDEX, Ipv6Addr::from(POD6)), mac::POD1),
        ((POD_IFINDEX, Ipv6Addr::from(ROUTER6)), mac::of(ROUTER)),
    ]
    .into_iter()
    .collect();
    Net::two_arm()
        .route([198, 18, 1, 0], 24, CLIENT_IFINDEX, None)
        .route([198, 18, 9, 0], 24, POD_IFINDEX, Some(ROUTER))
        .route([198, 19, 201, 0], 24, 99, None)
        .resolved(CLIENT_IFINDEX, (2..10).map(|last| [198, 18, 0, last]))
        .resolved(CLIENT_IFINDEX, [CLIENT_OUTSIDE])
        .resolved(
            POD_IFINDEX,
            [POD1, POD2, POD3, POD4, POD_HEADLESS, POD_DRAINING, ROUTER],
        )
        .build()
        .with_ipv6(routes6, neighbours6)
}

/// The immutable part of the setup, built once per process.
struct Fixed {
    tables: [Arc<CompiledTable>; 2],
    net: Arc<NetSnapshot>,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    let table = |churned: bool, generation: u64| {
        let model = model(churned);
        let zone = DnsZone::compile(&model, &DnsConfig::default(), generation);
        Arc::new(CompiledTable::compile(Arc::new(model), generation).with_dns(Arc::new(zone)))
    };
    FIXED.get_or_init(|| Fixed {
        tables: [table(false, 1), table(true, 2)],
        net: Arc::new(net()),
    })
}

/// Builds a fuzz input: the setup byte, then `(ctl, frame)` records.
pub fn encode(setup: u8, frames: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = vec![setup];
    for (ctl, frame) in frames {
        out.push(*ctl);
        let len = u16::try_from(frame.len()).expect("frame fits a u16 length");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(frame);
    }
    out
}

/// Named bits of the setup and control bytes, for building inputs.
pub mod bits {
    /// Setup: `max_flows` (1..=8).
    pub const fn max_flows(n: u8) -> u8 {
        (n - 1) & 0x07
    }
    /// Setup: index into `UNREPLIED_PERCENT`.
    pub const fn unreplied(index: u8) -> u8 {
        (index & 0x03) << 3
    }
    /// Setup: restrict VIP sources to 198.18.0.0/24.
    pub const CLUSTER_CIDR: u8 = 0x20;

    /// Control: ingress port 0..=2.
    pub const fn ingress(port: u8) -> u8 {
        port & 0x03
    }
    pub const FIX_CHECKSUMS: u8 = 0x04;
    pub const SWEEP: u8 = 0x08;
    /// Control: index into `CLOCK_STEPS`.
    pub const fn step(index: u8) -> u8 {
        (index & 0x07) << 4
    }
    pub const CHURN: u8 = 0x80;
}

/// What one frame came to, for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// The frame as it would leave (the answer, for `Respond`).
    pub frame: Vec<u8>,
}

/// Runs one input, checking every invariant; panics on a violation.
pub fn run(data: &[u8]) {
    run_session(data, |_| {});
}

/// Runs one input and returns each frame's outcome.
pub fn outcomes(data: &[u8]) -> Vec<Outcome> {
    let mut out = Vec::new();
    run_session(data, |o| out.push(o));
    out
}

/// Runs one input, handing each frame's outcome to `seen` as it happens
/// (so that what came before a broken invariant can be shown).
pub fn run_with(data: &[u8], seen: impl FnMut(Outcome)) {
    run_session(data, seen);
}

fn run_session(data: &[u8], mut seen: impl FnMut(Outcome)) {
    let Some((&setup, mut rest)) = data.split_first() else {
        return;
    };
    let fixed = fixed();
    let max_flows = usize::from(setup & 0x07) + 1;
    let config = ConntrackConfig {
        max_flows,
        unreplied_percent: UNREPLIED_PERCENT[usize::from((setup >> 3) & 0x03)],
        timeouts: Timeouts::default(),
    };
    let conntrack = Arc::new(Conntrack::new(config));
    let conntrack6 = Arc::new(Conntrack::<Ipv6Addr>::new(config));
    let cluster_cidrs = if setup & bits::CLUSTER_CIDR != 0 {
        vec![
            "198.18.0.0/24".parse().expect("valid CIDR"),
            "2001:2::/64".parse().expect("valid CIDR"),
        ]
    } else {
        Vec::new()
    };
    let mut gateway = Harness {
        pipeline: pipeline(Arc::clone(&conntrack), u64::from(setup >> 6) + 1)
            .with_conntrack6(Arc::clone(&conntrack6))
            .with_config(PipelineConfig {
                cluster_cidrs: cluster_cidrs.clone(),
            })
            .with_dns(DnsResponder::new(
                vec![addr::DNS_ADDRESS.into()],
                cluster_cidrs.clone(),
                Arc::new(DnsCounters::default()),
            )),
        table: Arc::clone(&fixed.tables[0]),
        net: Arc::clone(&fixed.net),
        now: START,
    };
    let mut current = 0;
    let mut buf = [0u8; BUF_LEN];
    for _ in 0..MAX_FRAMES {
        let Some((&ctl, tail)) = rest.split_first() else {
            break;
        };
        let (len, tail) = match tail {
            [lo, hi, tail @ ..] => (usize::from(u16::from_le_bytes([*lo, *hi])), tail),
            _ => (tail.len(), &[][..]),
        };
        let len = len.min(tail.len()).min(BUF_LEN);
        let (frame, tail) = tail.split_at(len);
        rest = tail;

        gateway.now += CLOCK_STEPS[usize::from((ctl >> 4) & 0x07)];
        if ctl & bits::CHURN != 0 {
            current ^= 1;
            gateway.table = Arc::clone(&fixed.tables[current]);
            let table = &gateway.table;
            // What the control thread does when endpoints go away.
            conntrack.retire(|key, (ip, port)| !table.is_backend(ip, port, key.protocol));
            conntrack6.retire(|key, (ip, port)| !table.v6().is_backend(ip, port, key.protocol));
        }
        let ingress = match ctl & 0x03 {
            1 => POD_PORT,
            2 => UNKNOWN_PORT,
            _ => CLIENT_PORT,
        };
        // Stale bytes behind the frame, as in a reused UMEM frame.
        buf.fill(0xee);
        buf[..len].copy_from_slice(frame);
        if ctl & bits::FIX_CHECKSUMS != 0 {
            fix_checksums(&mut buf[..len]);
        }
        let before = Checked::of(&buf[..len]);
        let before6 = Checked6::of(&buf[..len]);

        // As the worker does for each RX batch (here a batch of one).
        Pipeline::prefetch_headers(&buf[..len]);
        gateway.pipeline.prefetch(&buf[..len]);
        gateway.prefetch_flows();
        let verdict = gateway.process(&mut buf, len, ingress);
        if let Some(input) = &before6.ip {
            check_verdict6(verdict, input, &before6, &buf, len, ingress, &fixed.tables);
            if let Verdict::Forward { .. } | Verdict::AwaitNeighbour { .. } = verdict {
                if input.has_ports() {
                    check_tracked6(verdict, &before6, &buf[..len], &conntrack6);
                }
            }
        } else {
            check_verdict(verdict, &before, &buf, len, ingress, &fixed.tables);
        }
        // ICMP errors and later fragments carry no ports of their own.
        let has_ports = before
            .ip
            .is_some_and(|ip| ip.protocol != ICMP && !ip.later_fragment);
        if let Verdict::Forward { .. } | Verdict::AwaitNeighbour { .. } = verdict {
            if has_ports {
                check_tracked(verdict, &before, &buf[..len], &conntrack);
            }
        }

        if ctl & bits::SWEEP != 0 {
            conntrack.sweep(gateway.now);
        }
        let summary = conntrack.summary();
        assert!(
            summary.flows <= max_flows + 1,
            "conntrack holds {} flows, max {max_flows}",
            summary.flows
        );
        assert_eq!(
            conntrack.entries(),
            2 * summary.flows,
            "every flow has exactly its two entries"
        );
        assert!(summary.unreplied <= summary.flows, "{summary:?}");
        if ctl & bits::SWEEP != 0 {
            conntrack6.sweep(gateway.now);
        }
        let summary6 = conntrack6.summary();
        assert!(
            summary6.flows <= max_flows + 1,
            "the IPv6 conntrack holds {} flows, max {max_flows}",
            summary6.flows
        );
        assert_eq!(
            conntrack6.entries(),
            2 * summary6.flows,
            "every IPv6 flow has exactly its two entries"
        );

        let out_len = match verdict {
            Verdict::Respond { len, .. } => len,
            _ => len,
        };
        seen(Outcome {
            verdict,
            frame: buf[..out_len].to_vec(),
        });
    }
}

/// IANA protocol numbers (RFC 790).
const ICMP: u8 = 1;
const TCP: u8 = 6;
const UDP: u8 = 17;
const L3: usize = 14;

/// A well-formed-enough untagged IPv4 frame's header fields, for checks.
#[derive(Debug, Clone, Copy)]
struct Ip {
    header_len: usize,
    total_len: usize,
    protocol: u8,
    ttl: u8,
    src: [u8; 4],
    dst: [u8; 4],
    /// A fragment after the first (non-zero offset): no transport header.
    later_fragment: bool,
}

fn parse_ip(frame: &[u8]) -> Option<Ip> {
    if frame.len() < L3 + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[L3..];
    let header_len = usize::from(ip[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip[0] >> 4 != 4 || header_len < 20 || total_len < header_len || total_len > ip.len() {
        return None;
    }
    Some(Ip {
        header_len,
        total_len,
        protocol: ip[9],
        ttl: ip[8],
        src: [ip[12], ip[13], ip[14], ip[15]],
        dst: [ip[16], ip[17], ip[18], ip[19]],
        later_fragment: u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0,
    })
}

/// Where an L4 protocol keeps its checksum, and the minimum header.
fn l4_checksum_at(protocol: u8) -> Option<usize> {
    match protocol {
        TCP => Some(16),
        UDP => Some(6),
        ICMP => Some(2),
        _ => None,
    }
}

/// Whether the IPv4 header checksum verifies.
fn ip_header_ok(frame: &[u8], ip: &Ip) -> bool {
    checksum(&frame[L3..L3 + ip.header_len]) == 0
}

/// Whether the TCP/UDP (pseudo-header) or ICMP checksum verifies over the
/// IP payload; `None` when there is none to verify (a UDP checksum of 0,
/// a payload too short to hold the field, another protocol).
fn l4_ok(frame: &[u8], ip: &Ip) -> Option<bool> {
    let payload = &frame[L3 + ip.header_len..L3 + ip.total_len];
    let at = l4_checksum_at(ip.protocol)?;
    if payload.len() < at + 2 {
        return None;
    }
    Some(match ip.protocol {
        ICMP => checksum(payload) == 0,
        UDP if payload[6..8] == [0, 0] => return None,
        _ => l4_checksum(ip.src, ip.dst, ip.protocol, payload) == 0,
    })
}

/// Recomputes the IPv4 header checksum and the TCP/UDP/ICMP checksum of
/// an untagged IPv4 frame, or the TCP/UDP/ICMPv6 checksum of an IPv6
/// frame that is not a fragment, as far as its lengths allow.
pub fn fix_checksums(frame: &mut [u8]) {
    if frame.len() < L3 + 20 || frame[12..14] != [0x08, 0x00] {
        fix_checksums6(frame);
        return;
    }
    let header_len = usize::from(frame[L3] & 0x0f) * 4;
    if header_len < 20 || L3 + header_len > frame.len() {
        return;
    }
    frame[L3 + 10..L3 + 12].fill(0);
    let c = checksum(&frame[L3..L3 + header_len]);
    frame[L3 + 10..L3 + 12].copy_from_slice(&c.to_be_bytes());
    let Some(ip) = parse_ip(frame) else {
        return;
    };
    let Some(at) = l4_checksum_at(ip.protocol) else {
        return;
    };
    let payload = &mut frame[L3 + ip.header_len..L3 + ip.total_len];
    if payload.len() < at + 2 {
        return;
    }
    payload[at..at + 2].fill(0);
    let c = match ip.protocol {
        ICMP => checksum(payload),
        UDP => match l4_checksum(ip.src, ip.dst, UDP, payload) {
            // RFC 768: a computed zero is sent as all ones.
            0 => 0xffff,
            c => c,
        },
        _ => l4_checksum(ip.src, ip.dst, ip.protocol, payload),
    };
    payload[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// The first two 16-bit words of the IP payload: the ports of TCP/UDP.
fn ports(frame: &[u8], ip: &Ip) -> Option<(u16, u16)> {
    match frame[L3 + ip.header_len..L3 + ip.total_len] {
        [s0, s1, d0, d1, ..] => Some((u16::from_be_bytes([s0, s1]), u16::from_be_bytes([d0, d1]))),
        _ => None,
    }
}

/// What the input frame looked like, for checks of the output.
struct Checked {
    ip: Option<Ip>,
    ip_ok: bool,
    l4_ok: Option<bool>,
    /// Source and destination port, when the payload holds them.
    ports: Option<(u16, u16)>,
}

impl Checked {
    fn of(frame: &[u8]) -> Self {
        let ip = parse_ip(frame);
        Self {
            ip,
            ip_ok: ip.is_some_and(|ip| ip_header_ok(frame, &ip)),
            l4_ok: ip.and_then(|ip| l4_ok(frame, &ip)),
            ports: ip.and_then(|ip| ports(frame, &ip)),
        }
    }
}

/// A forwarded frame belongs to a flow conntrack holds (whatever cache
/// the pipeline keeps in front of it), and was rewritten as that flow says.
fn check_tracked(verdict: Verdict, before: &Checked, frame: &[u8], conntrack: &Conntrack) {
    let (Some(input), Some((src_port, dst_port))) = (before.ip, before.ports) else {
        panic!("{verdict:?} for a frame without ports");
    };
    let protocol = if input.protocol == TCP {
        Protocol::Tcp
    } else {
        Protocol::Udp
    };
    let key = FlowKey {
        src: input.src.into(),
        dst: input.dst.into(),
        src_port,
        dst_port,
        protocol,
    };
    let mut tracked = None;
    conntrack.for_each(|k, hit| {
        if *k == key {
            tracked = Some(hit);
        }
    });
    let hit =
        tracked.unwrap_or_else(|| panic!("{verdict:?} for {key:?}, which conntrack does not hold"));
    let ip = parse_ip(frame).expect("checked by check_verdict");
    let (sport, dport) = ports(frame, &ip).expect("checked by check_verdict");
    let expected = match hit.direction {
        Direction::Forward => (input.src, src_port, hit.nat_ip.octets(), hit.nat_port),
        Direction::Reply => (hit.nat_ip.octets(), hit.nat_port, input.dst, dst_port),
    };
    assert_eq!(
        (ip.src, sport, ip.dst, dport),
        expected,
        "{verdict:?}: rewrite disagrees with conntrack's {hit:?}"
    );
}

/// A forwarded ICMP message is an error with a valid checksum whose
/// quoted datagram is what a client sent to a VIP or a backend sent.
fn check_icmp_error(verdict: Verdict, frame: &[u8], ip: &Ip, tables: &[Arc<CompiledTable>; 2]) {
    let icmp = &frame[L3 + ip.header_len..L3 + ip.total_len];
    assert!(
        matches!(icmp.first(), Some(3 | 11 | 12)),
        "{verdict:?}: forwarded ICMP that is not an error: {icmp:?}"
    );
    assert_eq!(checksum(icmp), 0, "{verdict:?}: ICMP checksum");
    let quote = &icmp[8..];
    let quoted_len = usize::from(quote[0] & 0x0f) * 4;
    let at = |i: usize| [quote[i], quote[i + 1], quote[i + 2], quote[i + 3]];
    let (src, dst) = (at(12), at(16));
    let sport = u16::from_be_bytes([quote[quoted_len], quote[quoted_len + 1]]);
    let protocol = match quote[9] {
        TCP => Protocol::Tcp,
        _ => Protocol::Udp,
    };
    assert!(
        tables
            .iter()
            .any(|t| t.is_vip(dst.into()) || t.is_backend(src.into(), sport, protocol)),
        "{verdict:?}: the quoted datagram {src:?}:{sport} -> {dst:?} is neither to a VIP nor from a backend"
    );
}

fn check_verdict(
    verdict: Verdict,
    before: &Checked,
    buf: &[u8],
    len: usize,
    ingress: PortId,
    tables: &[Arc<CompiledTable>; 2],
) {
    match verdict {
        Verdict::Forward { port } | Verdict::AwaitNeighbour { port, .. } => {
            assert!(
                fixed().net.port(port).is_some(),
                "{verdict:?}: no such port"
            );
            let frame = &buf[..len];
            let input = before
                .ip
                .unwrap_or_else(|| panic!("{verdict:?} for a frame that is not IPv4"));
            let ip = parse_ip(frame)
                .unwrap_or_else(|| panic!("{verdict:?}: the output no longer parses as IPv4"));
            assert_eq!(
                (ip.header_len, ip.total_len, ip.protocol),
                (input.header_len, input.total_len, input.protocol),
                "{verdict:?}: the rewrite changed the IPv4 framing"
            );
            assert_eq!(
                Some(ip.ttl),
                input.ttl.checked_sub(1),
                "{verdict:?}: TTL not decremented"
            );
            if before.ip_ok {
                assert!(
                    ip_header_ok(frame, &ip),
                    "{verdict:?}: IPv4 header checksum broken by the rewrite"
                );
            }
            if ip.later_fragment {
                assert!(
                    !tables.iter().any(|t| t.is_vip(ip.dst.into())),
                    "{verdict:?}: a later fragment left addressed to a VIP"
                );
                return;
            }
            if before.l4_ok == Some(true) {
                assert_eq!(
                    l4_ok(frame, &ip),
                    Some(true),
                    "{verdict:?}: L4 checksum broken by the rewrite"
                );
            }
            if ip.protocol == ICMP {
                check_icmp_error(verdict, frame, &ip, tables);
                return;
            }
            let protocol = match ip.protocol {
                TCP => Protocol::Tcp,
                UDP => Protocol::Udp,
                other => panic!("{verdict:?}: forwarded protocol {other}"),
            };
            let l4 = &frame[L3 + ip.header_len..L3 + ip.total_len];
            let [s0, s1, d0, d1, ..] = *l4 else {
                panic!("{verdict:?}: forwarded without ports");
            };
            let (sport, dport) = (u16::from_be_bytes([s0, s1]), u16::from_be_bytes([d0, d1]));
            let to_backend = tables
                .iter()
                .any(|t| t.is_backend(ip.dst.into(), dport, protocol));
            let from_vip = tables.iter().any(|t| t.is_vip(ip.src.into()));
            assert!(
                to_backend || from_vip,
                "{verdict:?}: {:?}:{sport} -> {:?}:{dport} is neither to a backend nor from a VIP",
                ip.src,
                ip.dst
            );
        }
        Verdict::Respond { port, len: out } => {
            assert_eq!(port, ingress, "answers go back where the frame came from");
            assert!(
                out <= buf.len(),
                "answer of {out} bytes overruns the buffer"
            );
            let frame = &buf[..out];
            let input = before
                .ip
                .unwrap_or_else(|| panic!("{verdict:?} to a frame that is not IPv4"));
            let ip = parse_ip(frame)
                .unwrap_or_else(|| panic!("{verdict:?}: the answer does not parse as IPv4"));
            assert_eq!(
                L3 + ip.total_len,
                out,
                "{verdict:?}: answer length disagrees with its IPv4 total length"
            );
            assert!(ip_header_ok(frame, &ip), "{verdict:?}: bad IPv4 checksum");
            assert_eq!(
                (ip.src, ip.dst),
                (input.dst, input.src),
                "{verdict:?}: answer not from the VIP to the sender"
            );
            let l4 = l4_ok(frame, &ip);
            match (ip.protocol, frame.get(L3 + ip.header_len)) {
                // An echo reply keeps the request's checksum correctness.
                (ICMP, Some(0)) => {
                    if before.l4_ok == Some(true) {
                        assert_eq!(l4, Some(true), "{verdict:?}: echo reply checksum");
                    }
                }
                (ICMP, Some(3)) | (TCP, _) => {
                    assert_eq!(l4, Some(true), "{verdict:?}: refusal checksum")
                }
                (UDP, _) => {
                    assert_eq!(l4, Some(true), "{verdict:?}: DNS answer checksum");
                    let udp = &frame[L3 + ip.header_len..];
                    assert_eq!(&udp[..2], &[0, 53], "{verdict:?}: not from port 53");
                    assert!(
                        udp.len() >= 8 + 12 && udp[8 + 2] & 0x80 != 0,
                        "{verdict:?}: not a DNS response (QR)"
                    );
                }
                (protocol, kind) => {
                    panic!("{verdict:?}: unexpected answer, protocol {protocol} type {kind:?}")
                }
            }
        }
        Verdict::Pass | Verdict::Drop(_) | Verdict::HandedOff => {}
    }
}

/// ICMPv6's next-header number (RFC 4443).
const ICMPV6: u8 = 58;

/// A well-formed-enough untagged IPv6 frame's header fields, for checks:
/// the datapath's own walk over its extension headers finds the upper
/// layer.
#[derive(Debug, Clone, Copy)]
struct Ip6 {
    /// Fixed header and payload.
    total_len: usize,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
    /// The upper-layer protocol.
    protocol: u8,
    /// Where its header starts, from the IPv6 header.
    l4: usize,
    /// A Fragment header's offset, when there is one (not atomic).
    fragment: Option<u16>,
}

impl Ip6 {
    /// Whether the transport header (and so the ports) is here: TCP or
    /// UDP, not a later fragment.
    fn has_ports(&self) -> bool {
        matches!(self.protocol, TCP | UDP) && self.fragment.is_none_or(|offset| offset == 0)
    }
}

fn parse_ip6(frame: &[u8]) -> Option<Ip6> {
    use cipgw_datapath::wire::ipv6::Ipv6Packet;
    if frame.len() < L3 + 40 || frame[12..14] != [0x86, 0xdd] {
        return None;
    }
    let ip = Ipv6Packet::new_checked(&frame[L3..]).ok()?;
    let upper = ip.upper_layer().ok()?;
    Some(Ip6 {
        total_len: ip.total_len(),
        hop_limit: ip.hop_limit(),
        src: ip.source().octets(),
        dst: ip.destination().octets(),
        protocol: upper.protocol,
        l4: upper.offset,
        fragment: upper
            .fragment
            .filter(|f| f.offset != 0 || f.more)
            .map(|f| f.offset),
    })
}

/// Whether the TCP/UDP/ICMPv6 checksum verifies over the IPv6
/// pseudo-header and the upper-layer bytes; `None` when it cannot be
/// checked here (a fragment: a first fragment's covers the whole
/// datagram), the field is missing, or another protocol.
fn l4_ok6(frame: &[u8], ip: &Ip6) -> Option<bool> {
    if ip.fragment.is_some() {
        return None;
    }
    let payload = frame.get(L3 + ip.l4..L3 + ip.total_len)?;
    let at = match ip.protocol {
        ICMPV6 => 2,
        other => l4_checksum_at(other)?,
    };
    if payload.len() < at + 2 || ip.protocol == UDP && payload[6..8] == [0, 0] {
        return None;
    }
    Some(l4_checksum_v6(ip.src, ip.dst, ip.protocol, payload) == 0)
}

/// Recomputes the TCP/UDP/ICMPv6 checksum of an untagged IPv6 frame that
/// is not a fragment, as far as its lengths allow.
fn fix_checksums6(frame: &mut [u8]) {
    let Some(ip) = parse_ip6(frame) else {
        return;
    };
    if ip.fragment.is_some() {
        return;
    }
    let at = match ip.protocol {
        ICMPV6 => 2,
        TCP | UDP => l4_checksum_at(ip.protocol).unwrap_or(16),
        _ => return,
    };
    let payload = &mut frame[L3 + ip.l4..L3 + ip.total_len];
    // A UDP checksum of zero (none, which IPv6 forbids) stays zero, so
    // that inputs keep reaching that refusal.
    if payload.len() < at + 2 || ip.protocol == UDP && payload[at..at + 2] == [0, 0] {
        return;
    }
    payload[at..at + 2].fill(0);
    let c = match l4_checksum_v6(ip.src, ip.dst, ip.protocol, payload) {
        // RFC 768 (and RFC 8200 8.1): a computed zero is sent as all ones.
        0 if ip.protocol == UDP => 0xffff,
        c => c,
    };
    payload[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// What an IPv6 input frame looked like, for checks of the output.
struct Checked6 {
    ip: Option<Ip6>,
    l4_ok: Option<bool>,
    /// Source and destination port, when the frame has them.
    ports: Option<(u16, u16)>,
}

impl Checked6 {
    fn of(frame: &[u8]) -> Self {
        let ip = parse_ip6(frame);
        Self {
            ip,
            l4_ok: ip.and_then(|ip| l4_ok6(frame, &ip)),
            ports: ip
                .filter(Ip6::has_ports)
                .and_then(|ip| ports6(frame, &ip)),
        }
    }
}

/// The ports at the start of the upper layer.
fn ports6(frame: &[u8], ip: &Ip6) -> Option<(u16, u16)> {
    match frame.get(L3 + ip.l4..L3 + ip.total_len)? {
        [s0, s1, d0, d1, ..] => Some((
            u16::from_be_bytes([*s0, *s1]),
            u16::from_be_bytes([*d0, *d1]),
        )),
        _ => None,
    }
}

/// The IPv6 checks of [`check_verdict`]: a forwarded frame is still the
/// same IPv6 packet (framing and extension headers), its hop limit
/// decremented, its checksum valid whenever it was, to a backend or
/// from a VIP (a later fragment: no longer to a VIP; an ICMPv6 error:
/// one of the translated types, quoting what a client sent to a VIP or
/// a backend sent); an answer goes back from the address the frame was
/// sent to, with a valid checksum.
fn check_verdict6(
    verdict: Verdict,
    input: &Ip6,
    before: &Checked6,
    buf: &[u8],
    len: usize,
    ingress: PortId,
    tables: &[Arc<CompiledTable>; 2],
) {
    use cipgw_datapath::wire::icmpv6::Icmpv6Error;
    let v6 = |a: [u8; 16]| Ipv6Addr::from(a);
    match verdict {
        Verdict::Forward { port } | Verdict::AwaitNeighbour { port, .. } => {
            assert!(
                fixed().net.port(port).is_some(),
                "{verdict:?}: no such port"
            );
            let frame = &buf[..len];
            let ip = parse_ip6(frame)
                .unwrap_or_else(|| panic!("{verdict:?}: the output no longer parses as IPv6"));
            assert_eq!(
                (ip.total_len, ip.protocol, ip.l4, ip.fragment),
                (input.total_len, input.protocol, input.l4, input.fragment),
                "{verdict:?}: the rewrite changed the IPv6 framing"
            );
            assert_eq!(
                Some(ip.hop_limit),
                input.hop_limit.checked_sub(1),
                "{verdict:?}: hop limit not decremented"
            );
            if ip.fragment.is_some_and(|offset| offset != 0) {
                assert!(
                    !tables.iter().any(|t| t.v6().is_vip(v6(ip.dst))),
                    "{verdict:?}: a later fragment left addressed to a VIP"
                );
                return;
            }
            if before.l4_ok == Some(true) {
                assert_eq!(
                    l4_ok6(frame, &ip),
                    Some(true),
                    "{verdict:?}: L4 checksum broken by the rewrite"
                );
            }
            if ip.protocol == ICMPV6 {
                let message = &frame[L3 + ip.l4..L3 + ip.total_len];
                assert!(
                    matches!(message.first(), Some(1..=4)),
                    "{verdict:?}: forwarded ICMPv6 that is not a translated error: {message:?}"
                );
                assert_eq!(
                    l4_ok6(frame, &ip),
                    Some(true),
                    "{verdict:?}: ICMPv6 checksum"
                );
                let quoted = Icmpv6Error::new_checked(message)
                    .and_then(|m| m.quoted())
                    .unwrap_or_else(|e| panic!("{verdict:?}: the quote no longer parses: {e:?}"));
                let protocol = match quoted.protocol {
                    TCP => Protocol::Tcp,
                    _ => Protocol::Udp,
                };
                assert!(
                    tables.iter().any(|t| t.v6().is_vip(quoted.dst)
                        || t.v6().is_backend(quoted.src, quoted.src_port, protocol)),
                    "{verdict:?}: the quoted datagram {quoted:?} is neither to a VIP nor from a backend"
                );
                return;
            }
            let protocol = match ip.protocol {
                TCP => Protocol::Tcp,
                UDP => Protocol::Udp,
                other => panic!("{verdict:?}: forwarded protocol {other}"),
            };
            let (sport, dport) = ports6(frame, &ip)
                .unwrap_or_else(|| panic!("{verdict:?}: forwarded without ports"));
            let to_backend = tables
                .iter()
                .any(|t| t.v6().is_backend(v6(ip.dst), dport, protocol));
            let from_vip = tables.iter().any(|t| t.v6().is_vip(v6(ip.src)));
            assert!(
                to_backend || from_vip,
                "{verdict:?}: [{}]:{sport} -> [{}]:{dport} is neither to a backend nor from a VIP",
                v6(ip.src),
                v6(ip.dst)
            );
        }
        Verdict::Respond { port, len: out } => {
            assert_eq!(port, ingress, "answers go back where the frame came from");
            assert!(
                out <= buf.len(),
                "answer of {out} bytes overruns the buffer"
            );
            let frame = &buf[..out];
            let ip = parse_ip6(frame)
                .unwrap_or_else(|| panic!("{verdict:?}: the answer does not parse as IPv6"));
            assert_eq!(
                L3 + ip.total_len,
                out,
                "{verdict:?}: answer length disagrees with its IPv6 payload length"
            );
            assert_eq!(
                (ip.src, ip.dst),
                (input.dst, input.src),
                "{verdict:?}: answer not from the VIP to the sender"
            );
            let l4 = l4_ok6(frame, &ip);
            match (ip.protocol, frame.get(L3 + ip.l4)) {
                // An echo reply keeps the request's checksum correctness.
                (ICMPV6, Some(129)) => {
                    if before.l4_ok == Some(true) {
                        assert_eq!(l4, Some(true), "{verdict:?}: echo reply checksum");
                    }
                }
                (ICMPV6, Some(1)) | (TCP, _) => {
                    assert_eq!(l4, Some(true), "{verdict:?}: refusal checksum")
                }
                (protocol, kind) => {
                    panic!("{verdict:?}: unexpected answer, protocol {protocol} type {kind:?}")
                }
            }
        }
        Verdict::Pass | Verdict::Drop(_) | Verdict::HandedOff => {}
    }
}

/// [`check_tracked`] for IPv6: a forwarded frame with ports belongs to a
/// flow the IPv6 table holds and was rewritten as it says.
fn check_tracked6(verdict: Verdict, before: &Checked6, frame: &[u8], conntrack: &Conntrack<Ipv6Addr>) {
    let (Some(input), Some((src_port, dst_port))) = (before.ip, before.ports) else {
        panic!("{verdict:?} for a frame without ports");
    };
    let protocol = if input.protocol == TCP {
        Protocol::Tcp
    } else {
        Protocol::Udp
    };
    let key = FlowKey {
        src: Ipv6Addr::from(input.src),
        dst: Ipv6Addr::from(input.dst),
        src_port,
        dst_port,
        protocol,
    };
    let mut tracked = None;
    conntrack.for_each(|k, hit| {
        if *k == key {
            tracked = Some(hit);
        }
    });
    let hit =
        tracked.unwrap_or_else(|| panic!("{verdict:?} for {key:?}, which conntrack does not hold"));
    let ip = parse_ip6(frame).expect("checked by check_verdict6");
    let (sport, dport) = ports6(frame, &ip).expect("checked by check_verdict6");
    let expected = match hit.direction {
        Direction::Forward => (input.src, src_port, hit.nat_ip.octets(), hit.nat_port),
        Direction::Reply => (hit.nat_ip.octets(), hit.nat_port, input.dst, dst_port),
    };
    assert_eq!(
        (ip.src, sport, ip.dst, dport),
        expected,
        "{verdict:?}: rewrite disagrees with conntrack's {hit:?}"
    );
}
