//! Instructions per new flow with source NAT against without, in a
//! table held full as a gateway's is under a stream of new flows (every
//! new flow evicts the oldest unreplied one, and with SNAT frees its
//! port): the steady state of the veth benchmark's `udp-new` at
//! `--conntrack-max 8192`, where each backend's port pool is about 60%
//! in use. Counted by `benches/icount.sh` (cases named `*snat*`); a
//! binary of its own, so that `icount.rs` still builds at revisions from
//! before source NAT.
//!
//! Usage: `icount_snat CASE PACKETS`, CASE one of `new_flow_full_snat`
//! (with SNAT) and `new_flow_full_nosnat` (the same without); PACKETS
//! above 8,192, so that the table is full in both of the script's runs.

use std::hint::black_box;
use std::sync::Arc;

use cipgw_datapath::conntrack::snat::SnatConfig;
use cipgw_datapath::conntrack::{Conntrack, ConntrackConfig};
use cipgw_datapath::harness::pipeline;
use cipgw_datapath::pipeline::BatchContext;

#[path = "support/icount_cases.rs"]
mod icount_cases;
#[path = "support/packets.rs"]
// Shared with the criterion benches; this one uses part of it.
#[allow(dead_code)]
mod packets;

use packets::{client, frame, net, new_flow_frame, table};

/// The VIP of the measured Service (the last of `table(n)`'s).
const VIP: [u8; 4] = [198, 19, 255, 254];
/// The table's size, as the veth benchmark's `--conntrack-max 8192`.
const TABLE: usize = 8192;
/// The gateway's SNAT address.
const SNAT: [u8; 4] = [198, 18, 2, 1];

fn main() {
    icount_cases::run(
        "icount_snat",
        &[
            ("new_flow_full_snat", &|n| new_flows(n, true)),
            ("new_flow_full_nosnat", &|n| new_flows(n, false)),
        ],
    );
}

/// `packets` new flows to one Service of three endpoints through a table
/// of [`TABLE`] flows, with or without source NAT.
fn new_flows(packets: usize, snat: bool) {
    let net = net();
    let one = table(1);
    let ctx = BatchContext {
        table: &one,
        net: &net,
        now: 1,
    };
    let mut conntrack = Conntrack::new(ConntrackConfig {
        max_flows: TABLE,
        unreplied_percent: 100,
        ..ConntrackConfig::default()
    });
    if snat {
        conntrack = conntrack
            .with_snat(&SnatConfig {
                addresses: vec![SNAT.into()],
                ports: 61000..=65535,
            })
            .expect("a valid SNAT configuration");
    }
    let mut p = pipeline(Arc::new(conntrack), 9);
    let base = frame((client(0), 1), (VIP, 8080));
    let mut f = base.clone();
    let len = f.len();
    for i in 0..packets {
        new_flow_frame(&mut f, &base, i);
        black_box(p.process(&mut f, len, 0, &ctx));
    }
}
