//! `cipgw services`: the Services a running gateway forwards, one block
//! per VIP:port/protocol with its endpoints indented, their state and
//! counters (flows, packets and bytes per port and per endpoint), like
//! `ipvsadm -Ln --stats`: ActiveConn are ESTABLISHED TCP
//! connections, InActConn every other tracked flow (handshakes, closing
//! TCP such as TIME_WAIT, UDP), as ipvsadm splits them. A dual-stack
//! Service has a block per VIP, each with the endpoints of its family
//! (`[2001:2::a]:80` for IPv6); IPv6 VIPs are listed, not yet forwarded,
//! so their counters show `-`.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use cipgw::admin::ServicesView;

use super::view::{human, show, AdminArgs, Table};

#[derive(Debug, clap::Args)]
pub struct ServicesArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
}

fn count(n: Option<u64>) -> String {
    n.map_or_else(|| "-".to_owned(), human)
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
    let mut ipv6_listed = false;
    for (vip, service, port) in ports {
        // IPv6: not forwarded yet, so nothing is tracked or counted.
        let forwarded = vip.is_ipv4();
        ipv6_listed |= !forwarded;
        let flows = |n: u64| if forwarded { n.to_string() } else { "-".into() };
        let counted = |n: Option<u64>| if forwarded { count(n) } else { "-".into() };
        table.row(vec![
            port.protocol.clone(),
            SocketAddr::new(vip, port.port).to_string(),
            format!("{}/{}", service.namespace, service.name),
            port.target_port.clone(),
            port.lb_algorithm.clone(),
            service
                .affinity_seconds
                .map_or_else(|| "None".to_owned(), |t| format!("ClientIP/{t}s")),
            flows(port.active_flows),
            flows(port.inactive_flows),
            counted(port.flows),
            counted(port.packets),
            counted(port.bytes),
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
                flows(e.active_flows),
                flows(e.inactive_flows),
                counted(e.flows),
                counted(e.packets),
                counted(e.bytes),
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
    if ipv6_listed {
        out.push_str("\n(IPv6 VIPs are listed and answered in DNS, not yet forwarded.)\n");
    }
    if !v.counted {
        out.push_str("\n(Flows/Packets/Bytes are not counted per service by this gateway; ActiveConn and InActConn are from conntrack.)\n");
    }
    out
}

pub fn services(args: ServicesArgs) -> anyhow::Result<()> {
    show(&args.admin, "/api/services", render)
}
