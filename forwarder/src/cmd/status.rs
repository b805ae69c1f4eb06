//! `cipgw status`: what a running gateway is doing, from its admin
//! endpoint.

use std::fmt::Write as _;

use cipgw::admin::{self as api, StatusView};

use super::view::{duration_ns, human, show, AdminArgs, Table};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
}

fn uptime(seconds: f64) -> String {
    let s = seconds as u64;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d{h:02}h{m:02}m")
    } else if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else {
        format!("{m}m{s:02}s")
    }
}

/// The human-readable status.
pub fn render(v: &StatusView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cipgw {}  up {}  {}",
        v.version,
        uptime(v.uptime_seconds),
        if v.ready { "ready" } else { "NOT READY" }
    );
    let _ = writeln!(out, "interfaces  {}", v.interfaces.join(", "));
    for m in &v.interface_modes {
        let _ = writeln!(
            out,
            "  {}  XDP {}, AF_XDP {}",
            m.name, m.xdp_mode, m.copy_mode
        );
    }
    let t = &v.table;
    let _ = writeln!(
        out,
        "table       generation {}: {} services ({} with a VIP), {} VIP ports, {} endpoints",
        t.generation, t.services, t.forwarded_services, t.vip_ports, t.endpoints
    );
    let c = &v.conntrack;
    let _ = writeln!(
        out,
        "conntrack   {} flows of {} max ({} unreplied); {} tracked, {} expired, {} evicted, {} refused, {} retired, {} deleted",
        c.flows, c.max_flows, c.unreplied, c.inserted, c.expired, c.evicted, c.refused, c.retired,
        c.deleted
    );
    if let Some(ports) = &c.snat_ports {
        let addresses: Vec<String> = c
            .snat
            .iter()
            .map(|a| format!("{} {} ports in use", a.address, a.ports_in_use))
            .collect();
        let _ = writeln!(out, "snat        ports {ports}: {}", addresses.join(", "));
    }
    let ctl = &v.control;
    let mut control = format!("{} syncs, {} failed", ctl.syncs_ok, ctl.syncs_failed);
    if let Some(s) = &ctl.last_sync {
        let _ = write!(
            control,
            "; last {} {:.1} ms, {:.0}s ago",
            if s.ok { "ok" } else { "FAILED" },
            s.duration_ms,
            s.seconds_ago
        );
    }
    let _ = writeln!(out, "control     {control}");
    if let Some(e) = &ctl.last_error {
        let _ = writeln!(out, "last error  {:.0}s ago: {}", e.seconds_ago, e.message);
    }
    if let Some(d) = &v.dns {
        let _ = writeln!(
            out,
            "dns         {} answers ({:.1}/s), last from generation {}; {} truncated, {} dropped",
            d.answers, d.answers_per_second, d.last_generation, d.truncated, d.dropped
        );
        if let Some(f) = &d.forwarded {
            let _ = writeln!(
                out,
                "dns upstream {} forwarded, {} answered, {} timed out, {} dropped",
                f.sent, f.answered, f.timed_out, f.dropped
            );
        }
    }
    out.push('\n');

    let mut workers = Table::new(
        &[
            "Worker",
            "RxPkts",
            "RxBytes",
            "TxPkts",
            "TxBytes",
            "Passed",
            "Drops",
            "NewFlows",
            "Batch p50",
            "p99",
            "Pkt p50",
            "p99",
            "p99.9",
        ],
        &[
            false, true, true, true, true, true, true, true, true, true, true, true, true,
        ],
    );
    let mut add = |name: String, c: &api::CountersView, w: Option<&api::WorkerView>| {
        let mut row = vec![
            name,
            human(c.rx_packets),
            human(c.rx_bytes),
            human(c.tx_packets),
            human(c.tx_bytes),
            human(c.passed),
            human(c.dropped),
            human(c.new_flows),
        ];
        if let Some(w) = w {
            row.extend([
                duration_ns(w.batch_ns.p50),
                duration_ns(w.batch_ns.p99),
                duration_ns(w.packet_ns.p50),
                duration_ns(w.packet_ns.p99),
                duration_ns(w.packet_ns.p999),
            ]);
        }
        workers.row(row);
    };
    for w in &v.workers {
        add(format!("core {}", w.core), &w.counters, Some(w));
    }
    if v.workers.len() > 1 {
        add("total".into(), &v.totals, None);
    }
    out.push_str(&workers.render());

    let drops: Vec<(&String, &u64)> = v.totals.drops.iter().filter(|(_, n)| **n > 0).collect();
    if !drops.is_empty() {
        out.push_str("\nDrops by reason\n");
        let mut table = Table::new(&["  Reason", "Packets"], &[false, true]);
        for (reason, n) in drops {
            table.row(vec![format!("  {reason}"), n.to_string()]);
        }
        out.push_str(&table.render());
    }
    out
}

pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    show(&args.admin, "/api/status", render)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_is_days_hours_minutes_seconds() {
        assert_eq!(uptime(3725.0), "1h02m05s");
    }
}
