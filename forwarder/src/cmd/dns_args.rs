//! The `--dns-*` flags of `cipgw run`, and their `[dns]` table in the
//! settings file.

use std::time::Duration;

use cipgw_config::settings::{
    parse_duration, DnsSettings, DEFAULT_CLUSTER_DOMAIN, DEFAULT_DNS_RATE_LIMIT, DEFAULT_DNS_TTL,
};
use serde::Deserialize;

/// The cluster's DNS, answered by the gateway from its own table
/// (Kubernetes DNS-Based Service Discovery, schema 1.1.0).
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DnsArgs {
    /// Address to answer DNS on, UDP and TCP port 53 (repeatable; IPv4):
    /// e.g. the cluster's kube-dns ClusterIP routed to the gateway. UDP
    /// is answered by the workers; for TCP the gateway adds the address
    /// to the loopback device while it runs (removed at exit) and listens
    /// there. Without any, the gateway answers no DNS.
    #[arg(long = "dns-address", value_name = "ADDR")]
    #[serde(default)]
    pub dns_address: Vec<std::net::Ipv4Addr>,
    /// The cluster domain the names live under [default: cluster.local].
    #[arg(long, value_name = "DOMAIN")]
    pub cluster_domain: Option<String>,
    /// TTL of every answer (whole seconds) [default: 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "super::run::duration_text")]
    pub dns_ttl: Option<Duration>,
    /// Answers per second a source gets from one worker (response rate
    /// limiting; beyond it queries are dropped and counted); 0 lifts the
    /// limit [default: 200].
    #[arg(long, value_name = "N")]
    pub dns_rate_limit: Option<u32>,
}

impl DnsArgs {
    /// Flags over the file's `[dns]` table over the defaults.
    pub fn resolve(self, file: DnsArgs) -> DnsSettings {
        DnsSettings {
            addresses: if self.dns_address.is_empty() {
                file.dns_address
            } else {
                self.dns_address
            },
            cluster_domain: self
                .cluster_domain
                .or(file.cluster_domain)
                .unwrap_or_else(|| DEFAULT_CLUSTER_DOMAIN.to_owned()),
            ttl: u32::try_from(
                self.dns_ttl
                    .or(file.dns_ttl)
                    .unwrap_or(DEFAULT_DNS_TTL)
                    .as_secs(),
            )
            .unwrap_or(u32::MAX),
            rate_limit: self
                .dns_rate_limit
                .or(file.dns_rate_limit)
                .unwrap_or(DEFAULT_DNS_RATE_LIMIT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_over_the_dns_table_over_defaults() {
        let file: DnsArgs = toml::from_str(
            "dns-address = [\"198.18.0.53\"]\ncluster-domain = \"corp.example\"\ndns-ttl = \"30s\"\n",
        )
        .expect("the [dns] table parses");
        let from_file = DnsArgs::default().resolve(file.clone());
        assert_eq!(
            from_file.addresses,
            vec![std::net::Ipv4Addr::new(198, 18, 0, 53)]
        );
        assert_eq!(
            (from_file.cluster_domain.as_str(), from_file.ttl),
            ("corp.example", 30)
        );
        let flags = DnsArgs {
            dns_ttl: Some(Duration::from_secs(2)),
            ..DnsArgs::default()
        };
        assert_eq!(flags.resolve(file).ttl, 2);
        let defaults = DnsArgs::default().resolve(DnsArgs::default());
        assert_eq!(defaults, DnsSettings::default());
        assert!(
            toml::from_str::<DnsArgs>("dns-adress = []").is_err(),
            "unknown keys"
        );
    }
}
