//! An in-memory gateway to drive the packet path with, no AF_XDP: the
//! lab's addresses and MACs, its [`NetSnapshot`] ([`Net`]), service model
//! builders, a [`Harness`] that runs frames through a [`Pipeline`] against
//! a table, a net snapshot and a synthetic clock, and builders for the
//! Ethernet/IPv4 and Ethernet/IPv6 frames clients and Pods send
//! ([`Frame`], [`Frame6`]).
//!
//! Why it exists: the pipeline tests, the criterion benches
//! (`benches/packet_path.rs`) and the fuzzer (`forwarder/fuzz`) all run
//! the pipeline on such a setup, and share this one instead of keeping
//! copies that drift apart. This crate's tests build it; the benches and
//! the fuzzer enable the `harness` feature (which adds etherparse, for
//! building frames); the daemon never builds it.
//!
//! The lab (RFC 2544 benchmarking addresses only): port 0 ([`CLIENT_PORT`],
//! ifindex 10, `gw-client`) faces the clients on 198.18.0.0/24, where the
//! gateway is 198.18.0.1; port 1 ([`POD_PORT`], ifindex 11, `gw-pods`)
//! faces the Pods on 198.18.2.0/24. A host's MAC is 02:00:00:00 followed
//! by the last two octets of its address ([`mac::of`]).
//!
//! Its IPv6 arms (RFC 5180 benchmarking addresses only, added by
//! [`Net::ipv6_arms`]): 2001:2::/64 on port 0 (the gateway is 2001:2::1,
//! the client 2001:2::2, [`addr6`]) and 2001:2:0:2::/64 on port 1 (Pods
//! 2001:2:0:2::11 to ::13). An IPv6 host's MAC is 02:00:00:00, the arm's
//! byte (0 or 2) and the address's last byte ([`mac::of6`]).

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use cipgw_config::{
    ClusterIp, Endpoint, EndpointState, Protocol, Service, ServiceKind, ServiceName, ServicePort,
    TargetPort,
};
use etherparse::PacketBuilder;

use crate::conntrack::Conntrack;
use crate::counters::WorkerCounters;
use crate::lb::Rng;
use crate::pipeline::{BatchContext, Pipeline, Verdict};
use crate::route::{NetSnapshot, Port, PortId, Route};
use crate::table::CompiledTable;
use crate::wire::ethernet::MacAddr;
use crate::wire::tcp::flags::{ACK, FIN, PSH, RST, SYN};

/// Hosts of the lab.
pub mod addr {
    /// The gateway's own address on the client arm.
    pub const GW_CLIENT_SIDE: [u8; 4] = [198, 18, 0, 1];
    /// The client (others on the client arm are 198.18.0.2 and up too).
    pub const CLIENT: [u8; 4] = [198, 18, 0, 2];
    pub const POD1: [u8; 4] = [198, 18, 2, 11];
    pub const POD2: [u8; 4] = [198, 18, 2, 12];
    pub const POD3: [u8; 4] = [198, 18, 2, 13];
}

/// IPv6 hosts of the lab (2001:2::/48, RFC 5180).
pub mod addr6 {
    /// `2001:2:0:ARM::LAST`, an address of the lab's IPv6 arms.
    pub const fn lab(arm: u8, last: u8) -> [u8; 16] {
        [0x20, 0x01, 0, 2, 0, 0, 0, arm, 0, 0, 0, 0, 0, 0, 0, last]
    }

    /// The gateway's own address on the client arm.
    pub const GW_CLIENT_SIDE: [u8; 16] = lab(0, 1);
    /// The client (others on the client arm are 2001:2::3 and up too).
    pub const CLIENT: [u8; 16] = lab(0, 2);
    pub const POD1: [u8; 16] = lab(2, 0x11);
    pub const POD2: [u8; 16] = lab(2, 0x12);
    pub const POD3: [u8; 16] = lab(2, 0x13);
}

/// MAC addresses of the lab.
pub mod mac {
    use crate::wire::ethernet::MacAddr;

    /// A lab host's MAC: 02:00:00:00 and the last two octets of `ip`.
    pub const fn of(ip: [u8; 4]) -> MacAddr {
        [2, 0, 0, 0, ip[2], ip[3]]
    }

    /// An IPv6 lab host's MAC: 02:00:00:00, the arm's byte of `ip`
    /// (its eighth) and its last byte.
    pub const fn of6(ip: [u8; 16]) -> MacAddr {
        [2, 0, 0, 0, ip[7], ip[15]]
    }

    pub const CLIENT: MacAddr = of(super::addr::CLIENT);
    pub const POD1: MacAddr = of(super::addr::POD1);
    /// The gateway's port 0.
    pub const GW_CLIENT_SIDE: MacAddr = of(super::addr::GW_CLIENT_SIDE);
    /// The gateway's port 1.
    pub const GW_POD_SIDE: MacAddr = [2, 0, 0, 0, 2, 1];

    /// Whether `mac` is one the Pod arm's hosts send from (02:00:00:00:02:xx).
    pub fn on_pod_arm(mac: &[u8]) -> bool {
        mac.get(..5) == Some(&[2, 0, 0, 0, 2][..])
    }
}

/// The port facing the clients.
pub const CLIENT_PORT: PortId = 0;
/// The port facing the Pods.
pub const POD_PORT: PortId = 1;
/// The interface of [`CLIENT_PORT`].
pub const CLIENT_IFINDEX: u32 = 10;
/// The interface of [`POD_PORT`].
pub const POD_IFINDEX: u32 = 11;

/// Builds the lab's [`NetSnapshot`]: the two ports, their routes, and the
/// neighbours a test resolves.
#[derive(Debug, Clone)]
pub struct Net {
    routes: Vec<Route>,
    neighbours: HashMap<(u32, Ipv4Addr), MacAddr>,
    routes6: Vec<Route<Ipv6Addr>>,
    neighbours6: HashMap<(u32, Ipv6Addr), MacAddr>,
}

impl Net {
    /// Both arms with their connected routes (198.18.0.0/24 through port
    /// 0, 198.18.2.0/24 through port 1) and no neighbour resolved.
    pub fn two_arm() -> Self {
        Self {
            routes: Vec::new(),
            neighbours: HashMap::new(),
            routes6: Vec::new(),
            neighbours6: HashMap::new(),
        }
        .route([198, 18, 0, 0], 24, CLIENT_IFINDEX, None)
        .route([198, 18, 2, 0], 24, POD_IFINDEX, None)
    }

    /// Adds a route to `dst/prefix_len` through interface `ifindex`, via
    /// `gateway` when given (on-link otherwise).
    pub fn route(
        mut self,
        dst: [u8; 4],
        prefix_len: u8,
        ifindex: u32,
        gateway: Option<[u8; 4]>,
    ) -> Self {
        self.routes.push(Route {
            dst: dst.into(),
            prefix_len,
            ifindex,
            gateway: gateway.map(Ipv4Addr::from),
        });
        self
    }

    /// Resolves each of `hosts` on interface `ifindex` to its lab MAC
    /// ([`mac::of`]).
    pub fn resolved(mut self, ifindex: u32, hosts: impl IntoIterator<Item = [u8; 4]>) -> Self {
        for host in hosts {
            self.neighbours
                .insert((ifindex, host.into()), mac::of(host));
        }
        self
    }

    /// Adds the IPv6 arms' connected routes: 2001:2::/64 through port 0,
    /// 2001:2:0:2::/64 through port 1.
    pub fn ipv6_arms(self) -> Self {
        self.route6(addr6::lab(0, 0), 64, CLIENT_IFINDEX, None)
            .route6(addr6::lab(2, 0), 64, POD_IFINDEX, None)
    }

    /// Adds an IPv6 route to `dst/prefix_len` through interface
    /// `ifindex`, via `gateway` when given (on-link otherwise).
    pub fn route6(
        mut self,
        dst: [u8; 16],
        prefix_len: u8,
        ifindex: u32,
        gateway: Option<[u8; 16]>,
    ) -> Self {
        self.routes6.push(Route {
            dst: dst.into(),
            prefix_len,
            ifindex,
            gateway: gateway.map(Ipv6Addr::from),
        });
        self
    }

    /// Resolves each of the IPv6 `hosts` on interface `ifindex` to its lab
    /// MAC ([`mac::of6`]).
    pub fn resolved6(mut self, ifindex: u32, hosts: impl IntoIterator<Item = [u8; 16]>) -> Self {
        for host in hosts {
            self.neighbours6
                .insert((ifindex, host.into()), mac::of6(host));
        }
        self
    }

    pub fn build(self) -> NetSnapshot {
        let ports = vec![
            Port {
                ifindex: CLIENT_IFINDEX,
                name: "gw-client".into(),
                mac: mac::GW_CLIENT_SIDE,
            },
            Port {
                ifindex: POD_IFINDEX,
                name: "gw-pods".into(),
                mac: mac::GW_POD_SIDE,
            },
        ];
        NetSnapshot::new(self.routes, self.neighbours, ports)
            .with_ipv6(self.routes6, self.neighbours6)
    }
}

/// A ready endpoint.
pub fn endpoint(ip: [u8; 4], port: u16) -> Endpoint {
    Endpoint {
        ip: ip.into(),
        port,
        state: EndpointState::READY,
        pod: None,
        hostname: None,
    }
}

/// Service port `port`/`protocol`, to port `target` of each of `pods`
/// (ready endpoints).
pub fn service_port(port: u16, protocol: Protocol, target: u16, pods: &[[u8; 4]]) -> ServicePort {
    ServicePort {
        name: None,
        port,
        protocol,
        target_port: TargetPort::Number(target),
        endpoints: pods.iter().map(|ip| endpoint(*ip, target)).collect(),
    }
}

/// A ClusterIP Service at `vip` (headless when `None`), with ClientIP
/// affinity of `affinity` seconds when given.
pub fn service(
    name: ServiceName,
    vip: Option<[u8; 4]>,
    affinity: Option<u32>,
    ports: Vec<ServicePort>,
) -> Service {
    Service {
        name,
        kind: ServiceKind::ClusterIp,
        cluster_ip: vip.map_or(ClusterIp::Headless, |ip| {
            ClusterIp::single(std::net::IpAddr::from(ip))
        }),
        ip_family_policy: cipgw_config::IpFamilyPolicy::SingleStack,
        ip_families: vec![cipgw_config::IpFamily::V4],
        session_affinity: affinity,
        lb_algorithm: None,
        external_name: None,
        publish_not_ready_addresses: false,
        ports,
    }
}

/// [`service_port`] to IPv6 `pods`.
pub fn service_port6(port: u16, protocol: Protocol, target: u16, pods: &[[u8; 16]]) -> ServicePort {
    ServicePort {
        endpoints: pods
            .iter()
            .map(|ip| Endpoint {
                ip: Ipv6Addr::from(*ip).into(),
                ..endpoint([0; 4], target)
            })
            .collect(),
        ..service_port(port, protocol, target, &[])
    }
}

/// A single-stack IPv6 ClusterIP Service at `vip`, without affinity.
pub fn service6(name: ServiceName, vip: [u8; 16], ports: Vec<ServicePort>) -> Service {
    Service {
        cluster_ip: ClusterIp::single(Ipv6Addr::from(vip).into()),
        ip_families: vec![cipgw_config::IpFamily::V6],
        ..service(name, None, None, ports)
    }
}

/// A pipeline over `conntrack`, with fresh counters and backend choices
/// seeded by `seed`.
pub fn pipeline(conntrack: Arc<Conntrack>, seed: u64) -> Pipeline {
    Pipeline::new(
        conntrack,
        Arc::new(WorkerCounters::default()),
        Rng::new(seed),
    )
}

/// A worker's pipeline with what it reads per batch: the published table,
/// the net snapshot and the clock (which only the test moves).
#[derive(Debug)]
pub struct Harness {
    pub pipeline: Pipeline,
    pub table: Arc<CompiledTable>,
    pub net: Arc<NetSnapshot>,
    /// The synthetic clock, seconds.
    pub now: u32,
}

impl Harness {
    /// The second prefetch pass over a batch ([`Pipeline::prefetch_flows`])
    /// in this harness's context.
    pub fn prefetch_flows(&mut self) {
        let ctx = BatchContext {
            table: &self.table,
            net: &self.net,
            now: self.now,
        };
        self.pipeline.prefetch_flows(&ctx);
    }

    /// Processes the frame `buf[..len]` that arrived on `ingress`, as a
    /// worker does; the rest of `buf` is room for an answer.
    pub fn process(&mut self, buf: &mut [u8], len: usize, ingress: PortId) -> Verdict {
        let ctx = BatchContext {
            table: &self.table,
            net: &self.net,
            now: self.now,
        };
        self.pipeline.process(buf, len, ingress, &ctx)
    }

    /// Runs a frame that arrived on the port its source MAC says (the Pod
    /// arm's on port 1, any other on port 0), with room to grow; leaves
    /// `frame` as the frame that would leave.
    pub fn run(&mut self, frame: &mut Vec<u8>) -> Verdict {
        let ingress = if frame.get(6..12).is_some_and(mac::on_pod_arm) {
            POD_PORT
        } else {
            CLIENT_PORT
        };
        let len = frame.len();
        frame.resize(len + 256, 0xee);
        let verdict = self.process(frame, len, ingress);
        frame.truncate(match verdict {
            Verdict::Respond { len, .. } => len,
            _ => len,
        });
        verdict
    }

    pub fn counters(&self) -> &WorkerCounters {
        self.pipeline.counters()
    }
}

/// The Ethernet and IPv4 addressing of a frame to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub ttl: u8,
}

/// A TCP header and payload; [`Segment::default`] is sequence 1000,
/// window 64240, no flags and no data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment<'a> {
    /// Of FIN, SYN, RST, PSH and ACK (`wire::tcp::flags`); others are
    /// not set.
    pub flags: u8,
    pub seq: u32,
    /// The acknowledgment number, sent when `flags` has ACK.
    pub ack: u32,
    pub window: u16,
    pub payload: &'a [u8],
}

impl Default for Segment<'_> {
    fn default() -> Self {
        Self {
            flags: 0,
            seq: 1000,
            ack: 0,
            window: 64240,
            payload: &[],
        }
    }
}

impl Frame {
    /// A frame from `src` to `dst` with TTL 64 as it reaches the gateway:
    /// from the Pod arm (198.18.2.0/24, and 198.18.9.0/24 behind a router
    /// there) from 02:00:00:00:02 and `src`'s last octet to port 1;
    /// from anywhere else from the client's MAC to port 0.
    pub fn arriving(src: [u8; 4], dst: [u8; 4]) -> Self {
        let (src_mac, dst_mac) = if src[..3] == [198, 18, 2] || src[..3] == [198, 18, 9] {
            ([2, 0, 0, 0, 2, src[3]], mac::GW_POD_SIDE)
        } else {
            (mac::CLIENT, mac::GW_CLIENT_SIDE)
        };
        Self {
            src_mac,
            dst_mac,
            src,
            dst,
            ttl: 64,
        }
    }

    /// A TCP segment from port `sport` to `dport`, checksums computed.
    pub fn tcp(&self, sport: u16, dport: u16, segment: Segment<'_>) -> Vec<u8> {
        let ip =
            PacketBuilder::ethernet2(self.src_mac, self.dst_mac).ipv4(self.src, self.dst, self.ttl);
        tcp_frame(ip, sport, dport, segment)
    }

    /// A UDP datagram from port `sport` to `dport`, checksums computed.
    pub fn udp(&self, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(self.src_mac, self.dst_mac)
            .ipv4(self.src, self.dst, self.ttl)
            .udp(sport, dport)
            .write(&mut out, payload)
            .expect("UDP frame builds");
        out
    }

    /// An ICMP echo request (or reply, when `reply`) of identifier `id`
    /// and sequence number `seq`, checksums computed.
    pub fn echo(&self, reply: bool, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
        let b =
            PacketBuilder::ethernet2(self.src_mac, self.dst_mac).ipv4(self.src, self.dst, self.ttl);
        let b = if reply {
            b.icmpv4_echo_reply(id, seq)
        } else {
            b.icmpv4_echo_request(id, seq)
        };
        let mut out = Vec::new();
        b.write(&mut out, payload).expect("ICMP frame builds");
        out
    }
}

/// The Ethernet and IPv6 addressing of a frame to build (no extension
/// headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame6 {
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub hop_limit: u8,
}

/// A TCP segment after the IP header step `ip`, checksums computed.
fn tcp_frame(
    ip: etherparse::PacketBuilderStep<etherparse::IpHeaders>,
    sport: u16,
    dport: u16,
    segment: Segment<'_>,
) -> Vec<u8> {
    let mut b = ip.tcp(sport, dport, segment.seq, segment.window);
    if segment.flags & SYN != 0 {
        b = b.syn();
    }
    if segment.flags & ACK != 0 {
        b = b.ack(segment.ack);
    }
    if segment.flags & FIN != 0 {
        b = b.fin();
    }
    if segment.flags & RST != 0 {
        b = b.rst();
    }
    if segment.flags & PSH != 0 {
        b = b.psh();
    }
    let mut out = Vec::new();
    b.write(&mut out, segment.payload)
        .expect("TCP frame builds");
    out
}

impl Frame6 {
    /// A TCP segment from port `sport` to `dport`, checksums computed
    /// (over the IPv6 pseudo-header).
    pub fn tcp(&self, sport: u16, dport: u16, segment: Segment<'_>) -> Vec<u8> {
        let ip = PacketBuilder::ethernet2(self.src_mac, self.dst_mac).ipv6(
            self.src,
            self.dst,
            self.hop_limit,
        );
        tcp_frame(ip, sport, dport, segment)
    }

    /// A UDP datagram from port `sport` to `dport`, checksums computed
    /// (over the IPv6 pseudo-header).
    pub fn udp(&self, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(self.src_mac, self.dst_mac)
            .ipv6(self.src, self.dst, self.hop_limit)
            .udp(sport, dport)
            .write(&mut out, payload)
            .expect("UDP frame builds");
        out
    }
}
