//! The `--dns-*` flags of `cipgw run` (settable in the settings file like
//! every flag: `dns-address = [...]`, or `address` in a `[dns]` table).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use cipgw_config::settings::{
    parse_duration, DnsSettings, DEFAULT_CLUSTER_DOMAIN, DEFAULT_DNS_RATE_LIMIT, DEFAULT_DNS_TTL,
};

/// The cluster's DNS, answered by the gateway from its own table
/// (Kubernetes DNS-Based Service Discovery, schema 1.1.0).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct DnsArgs {
    /// Address to answer DNS on, UDP and TCP port 53 (repeatable; either
    /// family): e.g. the cluster's kube-dns ClusterIP routed to the
    /// gateway. UDP is answered by the workers; for TCP the gateway adds
    /// the address to the loopback device while it runs (removed at
    /// exit) and listens there. Without any, the gateway answers no DNS
    /// [default: none].
    #[arg(long = "dns-address", value_name = "ADDR")]
    pub dns_address: Vec<IpAddr>,
    /// The cluster domain the names live under [default: cluster.local].
    #[arg(long, value_name = "DOMAIN")]
    pub cluster_domain: Option<String>,
    /// TTL of every answer (whole seconds) [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub dns_ttl: Option<Duration>,
    /// Answers per second a source gets from one worker (response rate
    /// limiting; beyond it queries are dropped and counted); 0 lifts the
    /// limit [default: 200].
    #[arg(long, value_name = "N")]
    pub dns_rate_limit: Option<u32>,
    /// Resolver that names outside the cluster domain are forwarded to
    /// (repeatable, taken in turn; either family: ADDR, ADDR:PORT,
    /// [IPv6]:PORT or a bare IPv6 address; port 53 unless given), so a
    /// Pod's resolv.conf can name the gateway alone: over UDP with the
    /// query ID remapped, over TCP on a connection per query. Needs
    /// --cluster-cidr (only the cluster's clients are forwarded for).
    /// Without any, such names are REFUSED [default: none].
    #[arg(long = "dns-upstream", value_name = "ADDR[:PORT]", value_parser = parse_upstream)]
    pub dns_upstream: Vec<SocketAddr>,
}

/// `ADDR`, `ADDR:PORT`, `[IPv6]:PORT` or `[IPv6]`; port 53 when not
/// given.
fn parse_upstream(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| {
            format!(
                "{text:?} is not an address with an optional port \
                 (ADDR, ADDR:PORT, [IPv6]:PORT)"
            )
        })
}

impl DnsArgs {
    /// Flags (from the command line or the settings file) over defaults.
    pub fn resolve(self) -> DnsSettings {
        DnsSettings {
            addresses: self.dns_address,
            cluster_domain: self
                .cluster_domain
                .unwrap_or_else(|| DEFAULT_CLUSTER_DOMAIN.to_owned()),
            ttl: u32::try_from(self.dns_ttl.unwrap_or(DEFAULT_DNS_TTL).as_secs())
                .unwrap_or(u32::MAX),
            rate_limit: self.dns_rate_limit.unwrap_or(DEFAULT_DNS_RATE_LIMIT),
            upstreams: self.dns_upstream,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_over_defaults() {
        assert_eq!(DnsArgs::default().resolve(), DnsSettings::default());
        let flags = DnsArgs {
            dns_address: vec![
                [198, 18, 0, 53].into(),
                "2001:2:0:ff::53".parse().expect("static"),
            ],
            cluster_domain: Some("corp.example".into()),
            dns_ttl: Some(Duration::from_secs(30)),
            dns_rate_limit: Some(0),
            dns_upstream: vec!["198.18.3.2:5353".parse().expect("static address")],
        };
        let dns = flags.resolve();
        assert_eq!(
            dns.addresses,
            [
                IpAddr::from([198, 18, 0, 53]),
                "2001:2:0:ff::53".parse::<IpAddr>().expect("static")
            ]
        );
        assert_eq!(
            (dns.cluster_domain.as_str(), dns.ttl, dns.rate_limit),
            ("corp.example", 30, 0)
        );
        assert_eq!(dns.upstreams, ["198.18.3.2:5353".parse().expect("static")]);
    }

    #[test]
    fn an_upstream_port_defaults_to_53() {
        assert_eq!(
            parse_upstream("198.18.3.2"),
            Ok("198.18.3.2:53".parse().expect("static"))
        );
        assert_eq!(
            parse_upstream("198.18.3.2:5353"),
            Ok("198.18.3.2:5353".parse().expect("static"))
        );
        assert!(parse_upstream("resolver.example").is_err());
        assert_eq!(
            parse_upstream("2001:2::1"),
            Ok("[2001:2::1]:53".parse().expect("static"))
        );
        assert_eq!(
            parse_upstream("[2001:2::1]"),
            Ok("[2001:2::1]:53".parse().expect("static"))
        );
        assert_eq!(
            parse_upstream("[2001:2::1]:5353"),
            Ok("[2001:2::1]:5353".parse().expect("static"))
        );
        assert!(parse_upstream("2001:2::1:5353:x").is_err());
    }
}
