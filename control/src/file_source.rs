//! The control-file source: a file of Kubernetes manifests, read, parsed
//! and translated into a service table.
//!
//! [`load_control_file`] is pure apart from reading the file, so `cipgw
//! check` and the gateway's (re)load path share it and give the same
//! answer for the same file.

// Errors here end a translation and are built once per bad object: their
// size costs nothing, and boxing their fields would only make matching
// clumsier.
#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};

use cipgw_config::control_file::{parse_control_file, ControlFileError, ControlObjects};
use cipgw_config::settings::ServiceCidrs;
use cipgw_config::ServiceTable;

use crate::translate::{translate, Objects, TranslateError};

/// Why a control file gave no service table. Each names the file; the
/// parse and translate errors name the document, object and field.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot read control file {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: {error}", path.display())]
    Parse {
        path: PathBuf,
        error: ControlFileError,
    },
    #[error("{}: {error}", path.display())]
    Translate {
        path: PathBuf,
        error: TranslateError,
    },
}

/// Reads the control file at `path` and translates it, allocating
/// ClusterIPs for Services without one from `service_cidrs`.
pub fn load_control_file(
    path: &Path,
    service_cidrs: &ServiceCidrs,
) -> Result<ServiceTable, ControlError> {
    let text = std::fs::read_to_string(path).map_err(|error| ControlError::Read {
        path: path.to_owned(),
        error,
    })?;
    load_control_text(&text, service_cidrs).map_err(|error| ControlError::from_text(path, error))
}

impl ControlError {
    /// The error of the control file at `path` whose text gave `error`.
    pub fn from_text(path: &Path, error: TextError) -> Self {
        match error {
            TextError::Parse(error) => ControlError::Parse {
                path: path.to_owned(),
                error,
            },
            TextError::Translate(error) => ControlError::Translate {
                path: path.to_owned(),
                error,
            },
        }
    }
}

/// Why control-file text gave no service table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error(transparent)]
    Parse(#[from] ControlFileError),
    #[error(transparent)]
    Translate(#[from] TranslateError),
}

/// Parses and translates control-file text (what [`load_control_file`]
/// does after reading).
/// Fields the file has that cipgw does not know are logged as warnings,
/// each naming its object and field.
pub fn load_control_text(
    text: &str,
    service_cidrs: &ServiceCidrs,
) -> Result<ServiceTable, TextError> {
    let objects = parse_control_file(text)?;
    for warning in &objects.warnings {
        tracing::warn!("{warning}");
    }
    Ok(translate_control_objects(&objects, service_cidrs)?)
}

/// Translates parsed control-file objects (`cipgw check`, which parses
/// and reports itself).
pub fn translate_control_objects(
    objects: &ControlObjects,
    service_cidrs: &ServiceCidrs,
) -> Result<ServiceTable, TranslateError> {
    translate(&Objects::from_control_file(objects), service_cidrs)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use cipgw_config::{ClusterIp, EndpointState, Protocol, ServiceKind, ServiceName};

    use super::*;

    /// The service CIDR the fixtures are written for.
    fn cidr() -> ServiceCidrs {
        ServiceCidrs::v4_only("198.18.100.0/24".parse().expect("valid"))
    }

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../testdata")
            .join(name)
    }

    fn load(name: &str) -> ServiceTable {
        load_control_file(&fixture(name), &cidr())
            .unwrap_or_else(|e| panic!("{name} should load: {e}"))
    }

    fn load_error(name: &str) -> String {
        let error = load_control_file(&fixture(name), &cidr()).expect_err("fixture is invalid");
        let message = error.to_string();
        let prefix = format!("{}: ", fixture(name).display());
        message
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("message should start with the path: {message}"))
            .to_owned()
    }

    #[test]
    fn demo_fixture() {
        let table = load("demo.yaml");
        assert_eq!(table.services.len(), 1);
        let echo = table
            .get(&ServiceName::new("default", "echo-server"))
            .expect("listed");
        assert_eq!(
            echo.cluster_ip,
            ClusterIp::single(Ipv4Addr::new(198, 18, 100, 10).into())
        );
        let port = &echo.ports[0];
        assert_eq!((port.port, port.protocol), (8080, Protocol::Tcp));
        let endpoints: Vec<_> = port
            .endpoints
            .iter()
            .map(|e| (e.ip.to_string(), e.port, e.state, e.pod.clone()))
            .collect();
        assert_eq!(
            endpoints,
            (1..=3)
                .map(|i| (
                    format!("198.18.2.1{i}"),
                    5678,
                    EndpointState::READY,
                    Some(format!("echo-{i}"))
                ))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            table.render(),
            "198.18.100.10:8080/tcp  default/echo-server (ClusterIP)  \
             -> 198.18.2.11:5678, 198.18.2.12:5678, 198.18.2.13:5678\n"
        );
    }

    #[test]
    fn kubectl_list_fixture() {
        let table = load("kubectl-list.yaml");
        let expected = "\
198.18.100.1:443/tcp    default/kubernetes:https (ClusterIP)      -> 198.18.0.2:6443
198.18.100.20:80/tcp    shop/web:http (NodePort)                  -> 198.18.3.1:8080, 198.18.3.2:8080(terminating,serving), 198.18.3.3:8080(not-ready)
198.18.100.20:9090/tcp  shop/web:metrics (NodePort)               -> 198.18.3.1:9090, 198.18.3.2:9090(terminating,serving), 198.18.3.3:9090(not-ready)
198.18.100.30:80/tcp    shop/front (LoadBalancer)                 -> 198.18.3.1:8080
198.18.100.53:53/tcp    kube-system/kube-dns:dns-tcp (ClusterIP)  -> 198.18.5.10:53
198.18.100.53:53/udp    kube-system/kube-dns:dns (ClusterIP)      -> 198.18.5.10:53
headless                default/db (ClusterIP, headless)          port 5432/tcp (pg) -> 198.18.4.1:5432
-                       default/ext (ExternalName)                not forwarded
";
        assert_eq!(table.render(), expected);
        let dns = table
            .get(&ServiceName::new("kube-system", "kube-dns"))
            .expect("listed");
        assert_eq!(dns.ports.len(), 2);
        assert!(dns.ports.iter().all(|p| p.endpoints.len() == 1));
        let ext = table
            .get(&ServiceName::new("default", "ext"))
            .expect("listed");
        assert_eq!(
            (ext.kind, ext.cluster_ip),
            (ServiceKind::ExternalName, ClusterIp::ExternalName)
        );
        assert_eq!(table.forwarded().count(), 4);
    }

    #[test]
    fn invalid_fixtures_name_document_object_and_field() {
        let cases = [
            (
                "invalid-bad-ip.yaml",
                "document 2 (EndpointSlice default/echo-abc12): endpoints[1].addresses[0]: \
                 \"198.18.2.300\" is not an IP address",
            ),
            (
                "invalid-port-range.yaml",
                "document 3 (Service default/echo): spec.ports[0].port: \
                 70000 is out of range 1-65535",
            ),
            (
                "invalid-duplicate-clusterip.yaml",
                "document 2 (Service default/echo-b): spec.clusterIP: 198.18.100.10 \
                 is already the ClusterIP of document 1 (Service default/echo-a)",
            ),
            (
                "invalid-outside-cidr.yaml",
                "document 1 (Service shop/web): spec.clusterIP: 198.19.1.1 \
                 is outside the service CIDR 198.18.100.0/24",
            ),
            (
                "invalid-sctp.yaml",
                "document 1, items[1] (Service telco/sig): spec.ports[1].protocol: \
                 SCTP is not supported",
            ),
        ];
        for (name, expected) in cases {
            assert_eq!(load_error(name), expected, "{name}");
        }
        let version = load_error("invalid-unsupported-version.yaml");
        assert!(
            version.starts_with(
                "document 3 (EndpointSlice default/echo-abc12): apiVersion: \
                 \"discovery.k8s.io/v1beta1\" is not supported, expected \"discovery.k8s.io/v1\""
            ),
            "unexpected: {version}"
        );
        let yaml = load_error("invalid-bad-yaml.yaml");
        assert!(
            yaml.starts_with("document 2, line ") && yaml.contains("invalid YAML"),
            "unexpected: {yaml}"
        );
    }

    #[test]
    fn every_invalid_fixture_is_tested() {
        let dir = fixture("");
        let mut invalid: Vec<String> = std::fs::read_dir(&dir)
            .expect("testdata exists")
            .map(|e| {
                e.expect("readable")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|n| n.starts_with("invalid-"))
            .collect();
        invalid.sort();
        for name in &invalid {
            assert!(
                load_control_file(&dir.join(name), &cidr()).is_err(),
                "{name} should not load"
            );
        }
        assert_eq!(invalid.len(), 7, "new invalid fixtures need a case above");
    }

    #[test]
    fn read_error_names_the_path() {
        let path = Path::new("/nonexistent/cipgw-control.yaml");
        let error = load_control_file(path, &cidr()).expect_err("no such file");
        let message = error.to_string();
        assert!(
            message.starts_with("cannot read control file /nonexistent/cipgw-control.yaml: "),
            "unexpected: {message}"
        );
    }
}
