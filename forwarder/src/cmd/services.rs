//! `cipgw services`: the Services a running gateway forwards, one block
//! per VIP:port/protocol with its endpoints indented, their state and
//! counters (flows, packets and bytes per port and per endpoint), like
//! `ipvsadm -Ln --stats`: ActiveConn are ESTABLISHED TCP
//! connections, InActConn every other tracked flow (handshakes, closing
//! TCP such as TIME_WAIT, UDP), as ipvsadm splits them. A dual-stack
//! Service has a block per VIP, each with that VIP's own flows and
//! counters and the endpoints of its family (`[2001:2::a]:80` for IPv6).
//! A port that uses Maglev shows `maglev:` and the first 8 hex digits of
//! its VIP's table's fingerprint in the LB column (`--json` has all 16).
//!
//! A gateway from before per-VIP figures sends only the port's sums over
//! all VIPs: a single VIP's row shows them; with several VIPs each row
//! shows its family's endpoints' figures summed (the port's would repeat
//! on every row), and only the IPv4 row a fingerprint (such gateways took
//! it from the IPv4 VIP).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use cipgw::admin::{PortView, ServicesView};

use super::view::{human, show, AdminArgs, Table};

#[derive(Debug, clap::Args)]
pub struct ServicesArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
}

fn count(n: Option<u64>) -> String {
    n.map_or_else(|| "-".to_owned(), human)
}

/// What one VIP's row of a port shows.
#[derive(Debug, PartialEq, Eq)]
struct VipFigures {
    maglev_fingerprint: Option<String>,
    active_flows: u64,
    inactive_flows: u64,
    flows: Option<u64>,
    packets: Option<u64>,
    bytes: Option<u64>,
}

/// `port`'s figures on `vip`, one of the Service's `vips` VIPs: the
/// gateway's per-VIP entry, or from an older gateway without one, the
/// port's sums (a single VIP) or `vip`'s family's endpoints' sums.
fn vip_figures(port: &PortView, vip: IpAddr, vips: usize) -> VipFigures {
    if let Some(v) = port.vips.iter().find(|v| v.vip == vip) {
        return VipFigures {
            maglev_fingerprint: v.maglev_fingerprint.clone(),
            active_flows: v.active_flows,
            inactive_flows: v.inactive_flows,
            flows: v.flows,
            packets: v.packets,
            bytes: v.bytes,
        };
    }
    // Such gateways took the fingerprint from the IPv4 VIP.
    let maglev_fingerprint = port.maglev_fingerprint.clone().filter(|_| vip.is_ipv4());
    if vips <= 1 {
        return VipFigures {
            maglev_fingerprint,
            active_flows: port.active_flows,
            inactive_flows: port.inactive_flows,
            flows: port.flows,
            packets: port.packets,
            bytes: port.bytes,
        };
    }
    let family: Vec<_> = port
        .endpoints
        .iter()
        .filter(|e| e.ip.is_ipv4() == vip.is_ipv4())
        .collect();
    // Counted when the port is; an endpoint without a slot adds nothing.
    let sum = |n: Option<u64>, of: fn(&cipgw::admin::EndpointView) -> Option<u64>| {
        n.map(|_| family.iter().filter_map(|e| of(e)).sum())
    };
    VipFigures {
        maglev_fingerprint,
        active_flows: family.iter().map(|e| e.active_flows).sum(),
        inactive_flows: family.iter().map(|e| e.inactive_flows).sum(),
        flows: sum(port.flows, |e| e.flows),
        packets: sum(port.packets, |e| e.packets),
        bytes: sum(port.bytes, |e| e.bytes),
    }
}

/// The LB column: `maglev:` and the first 8 hex digits of the table's
/// fingerprint when known, else the algorithm.
fn lb_cell(algorithm: &str, fingerprint: Option<&str>) -> String {
    match fingerprint {
        Some(f) => format!("maglev:{}", f.get(..8).unwrap_or(f)),
        None => algorithm.to_owned(),
    }
}

/// The human-readable listing.
pub fn render(v: &ServicesView) -> String {
    let mut table = Table::new(
        &[
            "Prot",
            "VIP:Port",
            "Service",
            "TargetPort",
            "LB",
            "Affinity",
            "ActiveConn",
            "InActConn",
            "Flows",
            "Packets",
            "Bytes",
        ],
        &[
            false, false, false, false, false, false, true, true, true, true, true,
        ],
    );
    table.row(
        [
            "  ->",
            "Endpoint:Port",
            "Pod",
            "State",
            "",
            "",
            "ActiveConn",
            "InActConn",
            "Flows",
            "Packets",
            "Bytes",
        ]
        .map(str::to_owned)
        .to_vec(),
    );
    // VIP, then port, then protocol, as `cipgw check` lists them.
    // Every VIP of a Service (`cluster_ips`; a gateway from before
    // dual-stack sends only `vip`).
    let vips = |s: &cipgw::admin::ServiceView| -> Vec<IpAddr> {
        if s.cluster_ips.is_empty() {
            s.vip.into_iter().collect()
        } else {
            s.cluster_ips.clone()
        }
    };
    let mut ports: Vec<_> = v
        .services
        .iter()
        .flat_map(|s| vips(s).into_iter().map(move |vip| (s, vip)))
        .flat_map(|(s, vip)| s.ports.iter().map(move |p| (vip, s, p)))
        .collect();
    ports.sort_by(|a, b| (a.0, a.2.port, &a.2.protocol).cmp(&(b.0, b.2.port, &b.2.protocol)));
    for (vip, service, port) in ports {
        let figures = vip_figures(port, vip, vips(service).len());
        table.row(vec![
            port.protocol.clone(),
            SocketAddr::new(vip, port.port).to_string(),
            format!("{}/{}", service.namespace, service.name),
            port.target_port.clone(),
            lb_cell(&port.lb_algorithm, figures.maglev_fingerprint.as_deref()),
            service
                .affinity_seconds
                .map_or_else(|| "None".to_owned(), |t| format!("ClientIP/{t}s")),
            figures.active_flows.to_string(),
            figures.inactive_flows.to_string(),
            count(figures.flows),
            count(figures.packets),
            count(figures.bytes),
        ]);
        let endpoints: Vec<_> = port
            .endpoints
            .iter()
            .filter(|e| e.ip.is_ipv4() == vip.is_ipv4())
            .collect();
        if endpoints.is_empty() {
            table.row(vec!["  ->".into(), "(no endpoints)".into()]);
        }
        for e in endpoints {
            table.row(vec![
                "  ->".into(),
                SocketAddr::new(e.ip, e.port).to_string(),
                e.pod.clone().unwrap_or_else(|| "-".into()),
                e.state.clone(),
                String::new(),
                String::new(),
                e.active_flows.to_string(),
                e.inactive_flows.to_string(),
                count(e.flows),
                count(e.packets),
                count(e.bytes),
            ]);
        }
    }
    let mut out = table.render();
    let without_ports: Vec<_> = v
        .services
        .iter()
        .filter(|s| s.vip.is_some() && s.ports.is_empty())
        .collect();
    let not_forwarded: Vec<_> = v.services.iter().filter(|s| s.vip.is_none()).collect();
    if !without_ports.is_empty() || !not_forwarded.is_empty() {
        out.push_str("\nNot forwarded\n");
        for s in without_ports {
            let _ = writeln!(
                out,
                "  {}/{}  {} {}: no ports",
                s.namespace, s.name, s.kind, s.cluster_ip
            );
        }
        for s in not_forwarded {
            let why = if s.kind == "ExternalName" {
                "ExternalName".to_owned()
            } else {
                format!("{}, headless (clusterIP: None)", s.kind)
            };
            let _ = writeln!(out, "  {}/{}  {why}", s.namespace, s.name);
        }
    }
    if !v.counted {
        out.push_str("\n(Flows/Packets/Bytes are not counted per service by this gateway; ActiveConn and InActConn are from conntrack.)\n");
    }
    out
}

pub fn services(args: ServicesArgs) -> anyhow::Result<()> {
    show(&args.admin, "/api/services", render)
}
