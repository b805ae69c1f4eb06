//! The IPv6 twin of `packets.rs` for the packet-path bench: a table of N
//! IPv6 Services of three endpoints (the measured one last, at
//! [2001:2:0:100::ffff:fffe]:8080; the others from 2001:2:0:100::1 up),
//! the lab's two arms with their IPv6 routes and neighbours, and UDP
//! frames with the IPv4 frames' 18-byte payload (80 bytes: an IPv6
//! header is 20 bytes longer). RFC 5180 benchmarking addresses only.

use std::net::Ipv6Addr;
use std::sync::Arc;

use cipgw_config::{Protocol, ServiceName, ServiceTable};
use cipgw_datapath::harness::addr6::{lab, POD1, POD2, POD3};
use cipgw_datapath::harness::{
    mac, service6, service_port6, Frame6, Net, CLIENT_IFINDEX, POD_IFINDEX,
};
use cipgw_datapath::pipeline::{BatchContext, Pipeline, Verdict};
use cipgw_datapath::route::NetSnapshot;
use cipgw_datapath::table::CompiledTable;

/// The measured Service's VIP.
pub const VIP6: [u8; 16] = [
    0x20, 0x01, 0, 2, 0, 0, 1, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xfe,
];

/// `services` IPv6 Services of 3 endpoints each; the measured one is the
/// last, at [`VIP6`]:8080.
pub fn table6(services: usize) -> CompiledTable {
    let first = u128::from(Ipv6Addr::new(0x2001, 2, 0, 0x100, 0, 0, 0, 1));
    let services = (0..services)
        .map(|i| {
            let vip = if i + 1 == services {
                VIP6
            } else {
                Ipv6Addr::from(first + i as u128).octets()
            };
            service6(
                ServiceName::new("bench", format!("svc-{i:05}")),
                vip,
                vec![service_port6(
                    8080,
                    Protocol::Udp,
                    5678,
                    &[POD1, POD2, POD3],
                )],
            )
        })
        .collect();
    CompiledTable::compile(Arc::new(ServiceTable { services }), 1)
}

/// The lab's two arms, IPv4 and IPv6 (a dual-stack gateway), with the
/// IPv6 Pods and every IPv6 client address [`client6`] gives resolved.
pub fn net6() -> NetSnapshot {
    Net::two_arm()
        .ipv6_arms()
        .resolved6(POD_IFINDEX, [POD1, POD2, POD3])
        .resolved6(CLIENT_IFINDEX, (2..255).map(|last| lab(0, last)))
        .build()
}

/// An 80-byte UDP frame with 18 payload bytes, between the client's and
/// the gateway's MACs whichever way it goes (as `packets::frame`).
pub fn frame6(src: ([u8; 16], u16), dst: ([u8; 16], u16)) -> Vec<u8> {
    Frame6 {
        src_mac: mac::CLIENT,
        dst_mac: mac::GW_CLIENT_SIDE,
        src: src.0,
        dst: dst.0,
        hop_limit: 64,
    }
    .udp(src.1, dst.1, &[0u8; 18])
}

/// The IPv6 client of flow `i`: 2001:2::2 to 2001:2::fb, as
/// `packets::client`.
pub fn client6(i: usize) -> [u8; 16] {
    lab(0, 2 + (i % 250) as u8)
}

/// Offsets in an Ethernet + IPv6 (no extension headers) + UDP frame.
pub const SRC: std::ops::Range<usize> = 22..38;
pub const DST: std::ops::Range<usize> = 38..54;
pub const SPORT: std::ops::Range<usize> = 54..56;

/// Frame `i` of an IPv6 new-flow run, as `packets::new_flow_frame`:
/// the client address's last two bytes and the source port distinct per
/// `i`.
#[inline(always)]
pub fn new_flow_frame6(f: &mut [u8], base: &[u8], i: usize) {
    f.copy_from_slice(base);
    f[SRC.end - 2..SRC.end].copy_from_slice(&(((i >> 16) as u16) | 0x100).to_be_bytes());
    f[SPORT].copy_from_slice(&(i as u16).to_be_bytes());
}

/// 1,024 live, replied flows from `client6(i)`:20000+i to [`VIP6`]:8080,
/// tracked by `p` (whose IPv6 table takes them): their client-to-Pod
/// frames and their Pod-to-client replies, as `packets::tracked_flows`.
pub fn tracked_flows6(p: &mut Pipeline, ctx: &BatchContext<'_>) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let forward: Vec<Vec<u8>> = (0..1024)
        .map(|i| frame6((client6(i), 20000 + i as u16), (VIP6, 8080)))
        .collect();
    let mut back = Vec::with_capacity(forward.len());
    for f in &forward {
        let mut copy = f.clone();
        let len = copy.len();
        let verdict = p.process(&mut copy, len, 0, ctx);
        assert!(
            matches!(verdict, Verdict::Forward { .. }),
            "a new IPv6 flow is forwarded, not {verdict:?}"
        );
        let backend: [u8; 16] = copy[DST].try_into().expect("16 bytes");
        let client: [u8; 16] = copy[SRC].try_into().expect("16 bytes");
        let cport = u16::from_be_bytes([copy[SPORT.start], copy[SPORT.start + 1]]);
        back.push(frame6((backend, 5678), (client, cport)));
    }
    for r in &back {
        let mut copy = r.clone();
        let len = copy.len();
        let verdict = p.process(&mut copy, len, 1, ctx);
        assert!(
            matches!(verdict, Verdict::Forward { .. }),
            "an IPv6 reply is forwarded, not {verdict:?}"
        );
    }
    (forward, back)
}
