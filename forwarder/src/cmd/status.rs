//! `cipgw status`: what a running gateway is doing, from its admin
//! endpoint. Also home of what `status`, `services` and `conntrack` share:
//! the `--admin`/`--json` flags, fetching a JSON view, and number
//! formatting for aligned tables.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use cipgw::admin::client;
use cipgw::admin::{self as api, StatusView};
use serde::de::DeserializeOwned;

use super::BadInput;

/// How long a request to the admin endpoint may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where to find the gateway, and how to print.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// The gateway's admin endpoint (`cipgw run --admin`).
    #[arg(long, value_name = "ADDR", default_value = api::DEFAULT_ADDR)]
    pub admin: SocketAddr,
    /// Print the endpoint's JSON as it is, for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// GETs `path` and returns the raw JSON and its decoded view. A 400 (a
/// bad filter) is the user's input at fault.
pub fn fetch<T: DeserializeOwned>(args: &AdminArgs, path: &str) -> anyhow::Result<(String, T)> {
    let reply = client::get(args.admin, path, TIMEOUT)?;
    if reply.status != 200 {
        let message = serde_json::from_str::<serde_json::Value>(&reply.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| reply.body.trim().to_owned());
        if reply.status == 400 {
            return Err(BadInput(message).into());
        }
        anyhow::bail!("{} answered {}: {message}", args.admin, reply.status);
    }
    let view = serde_json::from_str(&reply.body)
        .with_context(|| format!("reading {path} from {}", args.admin))?;
    Ok((reply.body, view))
}

/// A text table whose columns are padded to their widest cell; columns
/// after the first are right-aligned when `right[i]` says so.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
    right: Vec<bool>,
}

impl Table {
    pub fn new(header: &[&str], right: &[bool]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| (*h).to_owned()).collect()],
            right: right.to_vec(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c > 0 {
                    line.push_str("  ");
                }
                let w = widths[c];
                if self.right.get(c).copied().unwrap_or(false) {
                    let _ = write!(line, "{cell:>w$}");
                } else {
                    let _ = write!(line, "{cell:<w$}");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `1234567` as `1.23M`, like `ipvsadm --stats` abbreviates (K, M, G, T).
pub fn human(n: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1_000_000_000_000, "T"),
        (1_000_000_000, "G"),
        (1_000_000, "M"),
        (1_000, "K"),
    ];
    for (scale, unit) in UNITS {
        if n >= scale * 10 {
            return format!("{}{unit}", n / scale);
        }
    }
    n.to_string()
}

/// Nanoseconds as `850ns`, `12.4us`, `3.1ms`.
pub fn duration_ns(ns: u64) -> String {
    match ns {
        0..=999 => format!("{ns}ns"),
        1_000..=999_999 => format!("{:.1}us", ns as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.1}ms", ns as f64 / 1e6),
        _ => format!("{:.2}s", ns as f64 / 1e9),
    }
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
    let t = &v.table;
    let _ = writeln!(
        out,
        "table       generation {}: {} services ({} with a VIP), {} VIP ports, {} endpoints",
        t.generation, t.services, t.forwarded_services, t.vip_ports, t.endpoints
    );
    let c = &v.conntrack;
    let _ = writeln!(
        out,
        "conntrack   {} flows of {} max ({} unreplied); {} tracked, {} expired, {} evicted, {} refused, {} retired",
        c.flows, c.max_flows, c.unreplied, c.inserted, c.expired, c.evicted, c.refused, c.retired
    );
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
    let (raw, view) = fetch::<StatusView>(&args.admin, "/api/status")?;
    if args.admin.json {
        print!("{raw}");
    } else {
        print!("{}", render(&view));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_abbreviated_like_ipvsadm() {
        assert_eq!(human(999), "999");
        assert_eq!(human(12_345), "12K");
        assert_eq!(human(9_999), "9999");
        assert_eq!(human(123_456_789), "123M");
        assert_eq!(duration_ns(850), "850ns");
        assert_eq!(duration_ns(12_400), "12.4us");
        assert_eq!(uptime(3725.0), "1h02m05s");
    }

    #[test]
    fn tables_align_columns() {
        let mut t = Table::new(&["A", "Count"], &[false, true]);
        t.row(vec!["long name".into(), "7".into()]);
        assert_eq!(t.render(), "A          Count\nlong name      7\n");
    }
}
