//! `cipgw check`: validate a control file and print the resolved table,
//! then the objects it skipped (kinds cipgw does not read, such as the
//! Deployments and ReplicaSets of `kubectl get all -o yaml`). Skipped
//! objects are not errors: the exit status stays 0.
//!
//! Every problem is reported, not only the first: each bad document on
//! standard error, then the exit status 64. Warnings (fields cipgw does
//! not know, as kubectl's strict validation names them; named
//! targetPorts that no endpoint resolves) go to standard error too and
//! leave the status 0.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use cipgw::family::IpFamily;
use cipgw::maglev::{MaglevFamily, MaglevTables};
use cipgw::table::{CompiledTable, LbPlan, ServiceKey};
use cipgw_config::settings::LbSettings;

use cipgw_config::settings::ServiceCidrs;
use cipgw_config::{parse_control_file_reporting, render_skipped, settings, ServiceTable};
use cipgw_control::file_source::{translate_control_objects, ControlError, TextError};
use ipnet::IpNet;

use super::lb::LbArgs;
use super::BadInput;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Control file of Kubernetes manifests to validate. Objects of kinds
    /// cipgw does not read (Deployment, ConfigMap, ...) are skipped and
    /// listed after the table.
    #[arg(long, value_name = "FILE")]
    pub control_file: PathBuf,
    /// CIDR ClusterIPs are allocated from and must lie in, as for `cipgw
    /// run`: at most one per family (repeat, or a comma list, for a
    /// dual-stack gateway; the first is the primary family).
    #[arg(
        long = "service-cidr",
        value_name = "CIDR",
        value_delimiter = ',',
        default_value = settings::DEFAULT_SERVICE_CIDR
    )]
    pub service_cidrs: Vec<IpNet>,
    /// Backend choice as `cipgw run` would make it: every Service port
    /// that uses Maglev (by --lb maglev or its annotation) gets a line
    /// with its lookup table's fingerprint, to compare gateways.
    #[command(flatten)]
    pub lb: LbArgs,
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
    // The same parser and translation as the gateway's (re)load, going
    // on past the first bad document.
    let (objects, errors) = parse_control_file_reporting(&text);
    for warning in &objects.warnings {
        eprintln!("warning: {}: {warning}", path.display());
    }
    if let Some((last, rest)) = errors.split_last() {
        for error in rest {
            eprintln!("error: {}: {error}", path.display());
        }
        let last = bad(ControlError::from_text(
            path,
            TextError::Parse(last.clone()),
        ));
        return Err(if rest.is_empty() {
            last.into()
        } else {
            BadInput(format!("{last} ({} errors in all)", errors.len())).into()
        });
    }
    let cidrs = ServiceCidrs::new(&args.service_cidrs).map_err(|e| BadInput(e.to_string()))?;
    let table = translate_control_objects(&objects, &cidrs)
        .map_err(|e| bad(ControlError::from_text(path, TextError::Translate(e))))?;
    for warning in unresolved_named_ports(&table) {
        eprintln!("warning: {}: {warning}", path.display());
    }
    print!("{}", table.render());
    let lb = args.lb.resolve()?;
    print!("{}", maglev_fingerprints(table.clone(), lb));
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

/// One line per Service port that uses Maglev: its lookup table's
/// fingerprint (a hash of size, seed, endpoints and every entry), equal
/// on two gateways exactly when they pick the same endpoint for every
/// flow to that port.
fn maglev_fingerprints(model: ServiceTable, lb: LbSettings) -> String {
    let mut tables = MaglevTables::new(lb.maglev_table_size, lb.hash_seed);
    let compiled = CompiledTable::compile_with_lb(
        Arc::new(model),
        1,
        |_, _| None,
        LbPlan {
            default: lb.algorithm,
            maglev: &mut tables,
        },
    );
    let mut out = String::new();
    for (service, vips) in compiled.model().forwarded() {
        for vip in vips.iter() {
            for port in &service.ports {
                let maglev = match vip {
                    IpAddr::V4(vip) => fingerprint_line(&compiled, vip, port),
                    IpAddr::V6(vip) => fingerprint_line(&compiled, vip, port),
                };
                let Some(table) = maglev else {
                    continue;
                };
                let _ = writeln!(
                    out,
                    "maglev {} {}/{} {table}",
                    service.name,
                    std::net::SocketAddr::new(vip, port.port),
                    port.protocol,
                );
            }
        }
    }
    out
}

/// "table FINGERPRINT (N endpoints, size M, seed S)" of the Maglev table of
/// `vip`'s `port`, if it has one.
fn fingerprint_line<A: IpFamily + MaglevFamily>(
    compiled: &CompiledTable,
    vip: A,
    port: &cipgw_config::ServicePort,
) -> Option<String> {
    let key = ServiceKey {
        vip,
        port: port.port,
        protocol: port.protocol,
    };
    let maglev = compiled
        .family::<A>()
        .port_entry(&key)
        .and_then(|e| e.maglev.as_ref())?;
    Some(format!(
        "table {:016x} ({} endpoints, size {}, seed {:#x})",
        maglev.fingerprint(),
        maglev.backends().len(),
        maglev.size(),
        maglev.seed(),
    ))
}

/// Service ports whose named targetPort no endpoint resolves: they have
/// Pods or slices, but none defines a port of that name, so they forward
/// nowhere (Kubernetes itself says nothing about it).
fn unresolved_named_ports(table: &ServiceTable) -> Vec<String> {
    use cipgw_config::model::TargetPort;
    let mut warnings = Vec::new();
    for service in &table.services {
        for port in &service.ports {
            if let TargetPort::Name(name) = &port.target_port {
                if port.endpoints.is_empty() {
                    warnings.push(format!(
                        "Service {} port {}/{}: no endpoint resolves the named targetPort \
                         {name:?} (no Pod or EndpointSlice port has that name): the port \
                         has no endpoints",
                        service.name,
                        port.port,
                        port.protocol.as_str(),
                    ));
                }
            }
        }
    }
    warnings
}
