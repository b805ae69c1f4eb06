//! `cipgw services`: the Services a running gateway forwards, one block
//! per VIP:port/protocol with its endpoints indented, their state and
//! counters (flows, packets and bytes per port and per endpoint), like
//! `ipvsadm -Ln --stats`: ActiveConn are ESTABLISHED TCP
//! connections, InActConn every other tracked flow (handshakes, closing
//! TCP such as TIME_WAIT, UDP), as ipvsadm splits them.

use std::fmt::Write as _;

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
    let mut ports: Vec<_> = v
        .services
        .iter()
        .filter_map(|s| s.vip.map(|vip| (s, vip)))
        .flat_map(|(s, vip)| s.ports.iter().map(move |p| (vip, s, p)))
        .collect();
    ports.sort_by(|a, b| (a.0, a.2.port, &a.2.protocol).cmp(&(b.0, b.2.port, &b.2.protocol)));
    for (vip, service, port) in ports {
        table.row(vec![
            port.protocol.clone(),
            format!("{vip}:{}", port.port),
            format!("{}/{}", service.namespace, service.name),
            port.target_port.clone(),
            port.lb_algorithm.clone(),
            service
                .affinity_seconds
                .map_or_else(|| "None".to_owned(), |t| format!("ClientIP/{t}s")),
            port.active_flows.to_string(),
            port.inactive_flows.to_string(),
            count(port.flows),
            count(port.packets),
            count(port.bytes),
        ]);
        if port.endpoints.is_empty() {
            table.row(vec!["  ->".into(), "(no endpoints)".into()]);
        }
        for e in &port.endpoints {
            table.row(vec![
                "  ->".into(),
                format!("{}:{}", e.ip, e.port),
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
