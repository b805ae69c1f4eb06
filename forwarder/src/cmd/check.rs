//! `cipgw check`: validate a control file and print the resolved table,
//! then the objects it skipped (kinds cipgw does not read, such as the
//! Deployments and ReplicaSets of `kubectl get all -o yaml`). Skipped
//! objects are not errors: the exit status stays 0.

use std::path::PathBuf;

use cipgw_config::{parse_control_file, render_skipped, settings};
use cipgw_control::file_source::{load_control_text, ControlError};
use ipnet::Ipv4Net;

use super::BadInput;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Control file of Kubernetes manifests to validate. Objects of kinds
    /// cipgw does not read (Deployment, ConfigMap, ...) are skipped and
    /// listed after the table.
    #[arg(long, value_name = "FILE")]
    pub control_file: PathBuf,
    /// CIDR ClusterIPs are allocated from and must lie in.
    #[arg(long, value_name = "CIDR", default_value = settings::DEFAULT_SERVICE_CIDR)]
    pub service_cidr: Ipv4Net,
    /// Also print the DNS records a gateway with `--dns-address` would
    /// answer from this table, one per line, zone-file style.
    #[arg(long)]
    pub dns: bool,
    /// The cluster domain of those records.
    #[arg(long, value_name = "DOMAIN", default_value = settings::DEFAULT_CLUSTER_DOMAIN)]
    pub cluster_domain: String,
}

pub fn check(args: CheckArgs) -> anyhow::Result<()> {
    let path = &args.control_file;
    let bad = |e: ControlError| BadInput(e.to_string());
    let text = std::fs::read_to_string(path).map_err(|error| {
        bad(ControlError::Read {
            path: path.clone(),
            error,
        })
    })?;
    // The table comes from the gateway's own load path, so that check
    // answers as a (re)load would. That path keeps no record of skipped
    // objects; parsing the text once more for them is cheap next to
    // translating it.
    let table = load_control_text(&text, args.service_cidr)
        .map_err(|e| bad(ControlError::from_text(path, e)))?;
    let objects =
        parse_control_file(&text).map_err(|e| bad(ControlError::from_text(path, e.into())))?;
    print!("{}", table.render());
    if args.dns {
        let config = cipgw::dns::DnsConfig {
            zone: args
                .cluster_domain
                .trim_end_matches('.')
                .to_ascii_lowercase(),
            ..cipgw::dns::DnsConfig::default()
        };
        println!();
        println!("DNS records ({}):", config.zone);
        for record in cipgw::dns::zone::records(&table, &config) {
            println!("  {record}");
        }
    }
    let skipped = render_skipped(&objects.skipped);
    if !skipped.is_empty() {
        println!();
        print!("{skipped}");
    }
    Ok(())
}
