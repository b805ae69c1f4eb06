//! What the packet-path benches share: a table of N Services of three
//! endpoints (the measured one last, at 198.19.255.254:8080), under random
//! choice or Maglev, the lab's two-arm net, and 64-byte UDP frames.

use std::net::Ipv4Addr;
use std::sync::Arc;

use cipgw_config::{LbAlgorithm, Protocol, ServiceName, ServiceTable};
use cipgw_datapath::conntrack::{Conntrack, FlowKey, FlowMeta};
use cipgw_datapath::harness::addr::{POD1, POD2, POD3};
use cipgw_datapath::harness::{
    mac, service, service_port, Frame, Net, CLIENT_IFINDEX, POD_IFINDEX,
};
use cipgw_datapath::maglev::MaglevTables;
use cipgw_datapath::pipeline::{BatchContext, Pipeline, Verdict};
use cipgw_datapath::route::NetSnapshot;
use cipgw_datapath::table::{CompiledTable, LbPlan};

/// `services` Services of 3 endpoints each; the measured one is the last,
/// at VIP 198.19.255.254:8080.
pub fn table(services: usize) -> CompiledTable {
    CompiledTable::compile(Arc::new(model(services, None)), 1)
}

/// [`table`] with every Service under Maglev.
pub fn maglev_table(services: usize) -> CompiledTable {
    let mut tables = MaglevTables::new(cipgw_datapath::maglev::DEFAULT_TABLE_SIZE, 7);
    CompiledTable::compile_with_lb(
        Arc::new(model(services, Some(LbAlgorithm::Maglev))),
        1,
        |_, _| None,
        LbPlan {
            default: LbAlgorithm::Random,
            maglev: &mut tables,
        },
    )
}

pub fn model(services: usize, lb_algorithm: Option<LbAlgorithm>) -> ServiceTable {
    let services = (0..services)
        .map(|i| {
            let vip = if i + 1 == services {
                Ipv4Addr::new(198, 19, 255, 254)
            } else {
                Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 1)) + i as u32)
            };
            let mut s = service(
                ServiceName::new("bench", format!("svc-{i:05}")),
                Some(vip.octets()),
                None,
                vec![service_port(8080, Protocol::Udp, 5678, &[POD1, POD2, POD3])],
            );
            s.lb_algorithm = lb_algorithm;
            s
        })
        .collect();
    ServiceTable { services }
}

/// The lab's two arms with the Pods and every client address resolved.
pub fn net() -> NetSnapshot {
    Net::two_arm()
        .resolved(POD_IFINDEX, [POD1, POD2, POD3])
        .resolved(CLIENT_IFINDEX, (2..255).map(|last| [198, 18, 0, last]))
        .build()
}

/// A 64-byte frame (60 + FCS on the wire): UDP with 18 payload bytes,
/// between the client's and the gateway's MACs whichever way it goes.
pub fn frame(src: ([u8; 4], u16), dst: ([u8; 4], u16)) -> Vec<u8> {
    Frame {
        src_mac: mac::CLIENT,
        dst_mac: mac::GW_CLIENT_SIDE,
        src: src.0,
        dst: dst.0,
        ttl: 64,
    }
    .udp(src.1, dst.1, &[0u8; 18])
}

/// Frame `i` of a new-flow run: `base` (a client's frame to the VIP)
/// with the client address's last two bytes and the source port made
/// distinct per `i` (the UDP checksum left stale: the pipeline does not
/// verify it), written over `f`.
#[inline(always)]
pub fn new_flow_frame(f: &mut [u8], base: &[u8], i: usize) {
    f.copy_from_slice(base);
    f[28..30].copy_from_slice(&(((i >> 16) as u16) | 0x100).to_be_bytes());
    f[34..36].copy_from_slice(&(i as u16).to_be_bytes());
}

/// How many frames ahead of the one processed [`WrittenAhead`] writes:
/// the worker's buffers it cycles through, less one.
const WRITTEN_AHEAD: usize = 7;
/// The room each of those buffers gives the frame and an answer.
const BUFFER_LEN: usize = 256;

/// A worker's RX buffers as the cases fill them: frame `i` is processed
/// from one of 8 buffers 7 packets after it was written, as the kernel
/// or a NIC writes a worker's frames well before the worker reads them.
/// A frame read right after it is copied is read while the copy's
/// stores are still in flight, and a load that spans two of them waits
/// for both to retire (10% of `established/1024_flows`'s samples when
/// the case processed the frame it had just copied). One per case: it
/// counts the frames written.
pub struct WrittenAhead {
    bufs: Vec<Vec<u8>>,
    /// The frames' length (all of a case's frames have one).
    len: usize,
    /// The next frame to write.
    next: usize,
}

impl WrittenAhead {
    /// Buffers for frames of `len` bytes (and room for an answer); the
    /// first frame processed is `first`.
    pub fn new(len: usize, first: usize) -> Self {
        Self {
            bufs: vec![vec![0; BUFFER_LEN.max(len)]; WRITTEN_AHEAD + 1],
            len,
            next: first,
        }
    }

    /// Writes frames up to `i + 7` (`write` puts frame `k` in the
    /// buffer it is given) and runs frame `i` through `p`.
    #[inline(always)]
    pub fn process(
        &mut self,
        p: &mut Pipeline,
        ctx: &BatchContext<'_>,
        i: usize,
        write: impl Fn(&mut [u8], usize),
    ) -> Verdict {
        const SLOTS: usize = WRITTEN_AHEAD + 1;
        while self.next <= i + WRITTEN_AHEAD {
            write(&mut self.bufs[self.next % SLOTS][..self.len], self.next);
            self.next += 1;
        }
        p.process(&mut self.bufs[i % SLOTS], self.len, 0, ctx)
    }

    /// Packet `i` of a tracked case: frame `i` of `frames` (1,024 of
    /// them, taken in turn, all of this ring's length).
    #[inline(always)]
    pub fn process_tracked(
        &mut self,
        p: &mut Pipeline,
        ctx: &BatchContext<'_>,
        frames: &[Vec<u8>],
        i: usize,
    ) -> Verdict {
        self.process(p, ctx, i, |f, k| f.copy_from_slice(&frames[k & 1023]))
    }
}

pub fn client(i: usize) -> [u8; 4] {
    [198, 18, 0, 2 + (i % 250) as u8]
}

/// 1,024 live, replied flows from `client(i)`:20000+i to `vip`:8080,
/// tracked by `p`: their client-to-Pod frames and their Pod-to-client
/// replies, as they arrive at the gateway (the `established` and `reply`
/// cases' packets).
pub fn tracked_flows(
    p: &mut Pipeline,
    ctx: &BatchContext<'_>,
    vip: [u8; 4],
) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let frames: Vec<Vec<u8>> = (0..1024)
        .map(|i| frame((client(i), 20000 + i as u16), (vip, 8080)))
        .collect();
    let mut replies = Vec::with_capacity(frames.len());
    for f in &frames {
        let mut copy = f.clone();
        let len = copy.len();
        assert!(matches!(
            p.process(&mut copy, len, 0, ctx),
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
            p.process(&mut copy, len, 1, ctx),
            Verdict::Forward { .. }
        ));
    }
    (frames, replies)
}

/// `n` replied UDP flows from 198.18.0.250 to `vip`:53, answered by POD1,
/// put straight into `ct`, for the churn cases to remove one by one (a
/// connection that ended elsewhere): their forward keys.
pub fn leaving_flows(ct: &Conntrack, vip: [u8; 4], n: usize) -> Vec<FlowKey> {
    let pod = (POD1.into(), 5353);
    let leaving: Vec<FlowKey> = (0..n)
        .map(|i| FlowKey {
            src: [198, 18, 0, 250].into(),
            dst: vip.into(),
            src_port: u16::try_from(10_000 + i).expect("fewer leaving flows than ports"),
            dst_port: 53,
            protocol: Protocol::Udp,
        })
        .collect();
    for key in &leaving {
        ct.insert(*key, pod, 1, FlowMeta::default())
            .expect("room for the leaving flows");
        let reply = FlowKey {
            src: pod.0,
            dst: key.src,
            src_port: pod.1,
            dst_port: key.src_port,
            protocol: Protocol::Udp,
        };
        ct.lookup(&reply, 1, 0).expect("the leaving flow's reply");
    }
    leaving
}
