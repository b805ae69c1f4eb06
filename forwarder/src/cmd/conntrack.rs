//! `cipgw conntrack`: the flows a running gateway tracks, one line per
//! connection (its forward and reply entries merged) with its state and
//! expiry, filtered by VIP, client or backend and paged; `--delete`
//! removes one flow or every flow of a backend, as `conntrack -D` does.

use std::fmt::Write as _;

use cipgw::admin::{ConntrackDeleted, ConntrackView};

use super::view::{self, show, AdminArgs, Table};

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
    /// Delete the flows the filters select instead of listing them, as
    /// `conntrack -D` does: one flow (`--protocol`, `--client IP:PORT` and
    /// `--vip IP:PORT`) or every flow of a backend (`--backend
    /// IP[:PORT]`). A deleted flow's next packet is a new flow's first:
    /// a TCP segment other than a SYN is answered with a RST, a UDP
    /// datagram picks an endpoint again.
    #[arg(long, conflicts_with_all = ["snat_port", "limit", "offset"])]
    pub delete: bool,
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
    let mut path = if args.delete {
        "/api/conntrack?".to_owned()
    } else {
        format!("/api/conntrack?limit={}&offset={}", args.limit, args.offset)
    };
    for (name, value) in [
        ("vip", &args.vip),
        ("client", &args.client),
        ("backend", &args.backend),
        ("protocol", &args.protocol),
        ("snat_port", &args.snat_port.map(|p| p.to_string())),
    ] {
        if let Some(v) = value {
            if !path.ends_with('?') {
                path.push('&');
            }
            let _ = write!(path, "{name}={}", encode(v));
        }
    }
    path
}

/// `to backend/to client`, or `-` from a gateway that does not count
/// (without `--conntrack-accounting`).
fn both_ways(counts: Option<[u64; 2]>) -> String {
    counts.map_or_else(
        || "-".to_owned(),
        |[to_backend, to_client]| format!("{to_backend}/{to_client}"),
    )
}

/// The human-readable listing.
pub fn render(v: &ConntrackView) -> String {
    let mut table = Table::new(
        &[
            "Prot", "Client", "VIP", "SNAT", "Backend", "State", "Expires", "Packets", "Bytes",
            "Entries",
        ],
        &[
            false, false, false, false, false, false, true, true, true, false,
        ],
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
            f.expires_seconds
                .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            both_ways(f.packets),
            both_ways(f.bytes),
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
    if !args.delete {
        return show(&args.admin, &path(&args), render);
    }
    let (raw, done) = view::delete::<ConntrackDeleted>(&args.admin, &path(&args))?;
    if args.admin.json {
        print!("{raw}");
    } else {
        println!(
            "{} flow{} deleted",
            done.deleted,
            if done.deleted == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delete_sends_the_filters_without_paging() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ConntrackArgs,
        }
        let parse = |argv: &[&str]| Cli::try_parse_from(argv).map(|c| path(&c.args));
        assert_eq!(
            parse(&["x", "--delete", "--backend", "198.18.2.11:5678"]).expect("parses"),
            "/api/conntrack?backend=198.18.2.11:5678"
        );
        assert_eq!(
            parse(&["x", "--backend", "198.18.2.11"]).expect("parses"),
            "/api/conntrack?limit=100&offset=0&backend=198.18.2.11"
        );
        assert!(parse(&["x", "--delete", "--backend", "198.18.2.11", "--limit", "5"]).is_err());
    }

    #[test]
    fn filters_become_escaped_query_parameters() {
        assert_eq!(encode("198.18.0.2:40000"), "198.18.0.2:40000");
        assert_eq!(encode("a&b=c"), "a%26b%3Dc");
    }
}
