//! Daemon settings and their defaults.
//!
//! `cipgw run` fills a [`Settings`] from command-line flags layered over an
//! optional TOML file (`--config`); this module only defines the shape, the
//! defaults and the checks that need no system access.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::Deserialize;

/// Default service CIDR, as kube-apiserver's `--service-cluster-ip-range`
/// defaults it.
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/12";

/// Default admin endpoint (loopback only).
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9477";

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode where the driver has it, else SKB mode.
    #[default]
    Auto,
    /// Driver mode only; fail if the driver lacks it.
    Native,
    /// Generic (SKB) mode: works everywhere, slower.
    Skb,
}

impl std::str::FromStr for XdpMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(XdpMode::Auto),
            "native" => Ok(XdpMode::Native),
            "skb" => Ok(XdpMode::Skb),
            other => Err(format!(
                "unknown XDP mode {other:?}: expected auto, native or skb"
            )),
        }
    }
}

/// Where the service table comes from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// A control file of Kubernetes manifests.
    ControlFile(PathBuf),
    /// The Kubernetes API (in-cluster config, or the given kubeconfig).
    Kubernetes { kubeconfig: Option<PathBuf> },
}

/// Everything `cipgw run` needs to start.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Interfaces to attach to (one-arm: one; two-arm: client side and Pod
    /// side).
    pub ifaces: Vec<String>,
    pub source: Source,
    /// Cores to run workers on, one worker per core.
    #[serde(default = "default_cores")]
    pub cores: Vec<usize>,
    #[serde(default)]
    pub xdp_mode: XdpMode,
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    #[serde(default = "default_service_cidr")]
    pub service_cidr: Ipv4Net,
}

/// Core 0 alone: a gateway that works on any machine. Production
/// deployments list their dedicated cores.
pub fn default_cores() -> Vec<usize> {
    vec![0]
}

pub fn default_admin() -> SocketAddr {
    DEFAULT_ADMIN_ADDR
        .parse()
        .expect("default admin address is valid")
}

pub fn default_service_cidr() -> Ipv4Net {
    DEFAULT_SERVICE_CIDR
        .parse()
        .expect("default service CIDR is valid")
}

/// A setting that cannot work, named by its flag.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("--iface: at least one interface is required")]
    NoInterface,
    #[error("--iface {0}: listed twice")]
    DuplicateInterface(String),
    #[error("--cores: at least one core is required")]
    NoCores,
    #[error("--cores: core {0} listed twice")]
    DuplicateCore(usize),
}

impl Settings {
    /// Checks what can be checked without touching the system.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.ifaces.is_empty() {
            return Err(SettingsError::NoInterface);
        }
        for (i, iface) in self.ifaces.iter().enumerate() {
            if self.ifaces[..i].contains(iface) {
                return Err(SettingsError::DuplicateInterface(iface.clone()));
            }
        }
        if self.cores.is_empty() {
            return Err(SettingsError::NoCores);
        }
        for (i, core) in self.cores.iter().enumerate() {
            if self.cores[..i].contains(core) {
                return Err(SettingsError::DuplicateCore(*core));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            ifaces: vec!["eth0".into()],
            source: Source::ControlFile("services.yaml".into()),
            cores: default_cores(),
            xdp_mode: XdpMode::Auto,
            admin: default_admin(),
            service_cidr: default_service_cidr(),
        }
    }

    #[test]
    fn defaults_are_valid() {
        settings().validate().expect("defaults validate");
        assert_eq!(default_service_cidr().to_string(), "10.96.0.0/12");
    }

    #[test]
    fn rejects_duplicates_and_empties() {
        let mut s = settings();
        s.ifaces.push("eth0".into());
        assert_eq!(
            s.validate(),
            Err(SettingsError::DuplicateInterface("eth0".into()))
        );
        let mut s = settings();
        s.cores.clear();
        assert_eq!(s.validate(), Err(SettingsError::NoCores));
        assert_eq!("native".parse::<XdpMode>(), Ok(XdpMode::Native));
        assert!("fast".parse::<XdpMode>().is_err());
    }
}
