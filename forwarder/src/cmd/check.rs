//! `cipgw check`: validate a control file and print the resolved table.

use std::path::PathBuf;

use cipgw_config::settings;
use ipnet::Ipv4Net;

use super::BadInput;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Control file of Kubernetes manifests to validate.
    #[arg(long, value_name = "FILE")]
    pub control_file: PathBuf,
    /// CIDR ClusterIPs are allocated from and must lie in.
    #[arg(long, value_name = "CIDR", default_value = settings::DEFAULT_SERVICE_CIDR)]
    pub service_cidr: Ipv4Net,
}

pub fn check(args: CheckArgs) -> anyhow::Result<()> {
    let table =
        cipgw_control::file_source::load_control_file(&args.control_file, args.service_cidr)
            .map_err(|e| BadInput(e.to_string()))?;
    print!("{}", table.render());
    Ok(())
}
