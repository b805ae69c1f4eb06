//! The `--dns-*` flags of `cipgw run` (settable in the settings file like
//! every flag: `dns-address = [...]`, or `address` in a `[dns]` table).

use std::time::Duration;

use cipgw_config::settings::{
    parse_duration, DnsSettings, DEFAULT_CLUSTER_DOMAIN, DEFAULT_DNS_RATE_LIMIT, DEFAULT_DNS_TTL,
};

/// The cluster's DNS, answered by the gateway from its own table
/// (Kubernetes DNS-Based Service Discovery, schema 1.1.0).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct DnsArgs {
    /// Address to answer DNS on, UDP and TCP port 53 (repeatable; IPv4):
    /// e.g. the cluster's kube-dns ClusterIP routed to the gateway. UDP
    /// is answered by the workers; for TCP the gateway adds the address
    /// to the loopback device while it runs (removed at exit) and listens
    /// there. Without any, the gateway answers no DNS [default: none].
    #[arg(long = "dns-address", value_name = "ADDR")]
    pub dns_address: Vec<std::net::Ipv4Addr>,
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
            dns_address: vec![std::net::Ipv4Addr::new(198, 18, 0, 53)],
            cluster_domain: Some("corp.example".into()),
            dns_ttl: Some(Duration::from_secs(30)),
            dns_rate_limit: Some(0),
        };
        let dns = flags.resolve();
        assert_eq!(dns.addresses, [std::net::Ipv4Addr::new(198, 18, 0, 53)]);
        assert_eq!(
            (dns.cluster_domain.as_str(), dns.ttl, dns.rate_limit),
            ("corp.example", 30, 0)
        );
    }
}
