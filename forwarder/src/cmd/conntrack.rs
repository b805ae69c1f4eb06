//! `cipgw conntrack`: the flows a running gateway tracks, one line per
//! connection (its forward and reply entries merged), filtered by VIP,
//! client or backend and paged.

use std::fmt::Write as _;

use cipgw::admin::ConntrackView;

use super::view::{show, AdminArgs, Table};

#[derive(Debug, clap::Args)]
pub struct ConntrackArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Only flows to this VIP (`IP` or `IP:PORT`).
    #[arg(long, value_name = "IP")]
    pub vip: Option<String>,
    /// Only flows from this client (`IP` or `IP:PORT`).
    #[arg(long, value_name = "IP")]
    pub client: Option<String>,
    /// Only flows to this backend (`IP` or `IP:PORT`).
    #[arg(long, value_name = "IP")]
    pub backend: Option<String>,
    /// Only `tcp` or `udp` flows.
    #[arg(long, value_name = "PROTO")]
    pub protocol: Option<String>,
    /// Only flows given this source NAT port (`--snat`): maps what a
    /// backend sees back to the client.
    #[arg(long, value_name = "PORT")]
    pub snat_port: Option<u16>,
    /// Flows to show at most (the endpoint allows up to 10000).
    #[arg(long, value_name = "N", default_value_t = cipgw::admin::DEFAULT_LIMIT)]
    pub limit: usize,
    /// Matching flows to skip first (paging).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub offset: usize,
}

/// Escapes what would end a query value.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn path(args: &ConntrackArgs) -> String {
    let mut path = format!("/api/conntrack?limit={}&offset={}", args.limit, args.offset);
    for (name, value) in [
        ("vip", &args.vip),
        ("client", &args.client),
        ("backend", &args.backend),
        ("protocol", &args.protocol),
        ("snat_port", &args.snat_port.map(|p| p.to_string())),
    ] {
        if let Some(v) = value {
            let _ = write!(path, "&{name}={}", encode(v));
        }
    }
    path
}

/// The human-readable listing.
pub fn render(v: &ConntrackView) -> String {
    let mut table = Table::new(
        &[
            "Prot", "Client", "VIP", "SNAT", "Backend", "State", "Entries",
        ],
        &[false; 7],
    );
    for f in &v.flows {
        let entries = match (f.forward, f.reply) {
            (true, true) => "both",
            (true, false) => "forward",
            (false, true) => "reply",
            (false, false) => "-",
        };
        table.row(vec![
            f.protocol.clone(),
            f.client.to_string(),
            f.vip.to_string(),
            f.snat.map_or_else(|| "-".to_owned(), |s| s.to_string()),
            f.backend.to_string(),
            f.state.clone(),
            entries.to_owned(),
        ]);
    }
    let mut out = table.render();
    let shown = v.flows.len();
    if shown == 0 {
        let _ = writeln!(out, "no flows shown ({} match)", v.total);
    } else {
        let _ = writeln!(
            out,
            "flows {}-{} of {}",
            v.offset + 1,
            v.offset + shown,
            v.total
        );
    }
    out
}

pub fn conntrack(args: ConntrackArgs) -> anyhow::Result<()> {
    show(&args.admin, &path(&args), render)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_escaped_query_parameters() {
        assert_eq!(encode("198.18.0.2:40000"), "198.18.0.2:40000");
        assert_eq!(encode("a&b=c"), "a%26b%3Dc");
    }
}
