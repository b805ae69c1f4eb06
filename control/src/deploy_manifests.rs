//! Checks of the Kubernetes manifests in `deploy/`: each document parses
//! into its k8s-openapi type, and they keep the promises the deployment
//! makes (read-only RBAC on exactly Services and EndpointSlices, a
//! DaemonSet on gateway nodes with host networking and the five
//! capabilities AF_XDP needs, not privileged, a settings file that is
//! TOML and selects the Kubernetes source).

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every document of every manifest, by kind, as YAML values.
fn documents() -> BTreeMap<String, Vec<serde_yaml::Value>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .expect("deploy/ exists")
        .map(|e| e.expect("readable").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in deploy/");
    let mut by_kind: BTreeMap<String, Vec<serde_yaml::Value>> = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = serde_yaml::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            if value.is_null() {
                continue;
            }
            let kind = value["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: a document without kind", file.display()))
                .to_owned();
            by_kind.entry(kind).or_default().push(value);
        }
    }
    by_kind
}

/// The one document of `kind`, as its k8s-openapi type.
fn one<K: serde::de::DeserializeOwned>(
    documents: &BTreeMap<String, Vec<serde_yaml::Value>>,
    kind: &str,
) -> K {
    let list = documents
        .get(kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/"));
    assert_eq!(list.len(), 1, "one {kind}");
    serde_yaml::from_value(list[0].clone()).unwrap_or_else(|e| panic!("{kind}: {e}"))
}

#[test]
fn every_document_is_a_known_kind() {
    let documents = documents();
    let kinds: Vec<&str> = documents.keys().map(String::as_str).collect();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet",
            "Namespace",
            "ServiceAccount"
        ]
    );
}

#[test]
fn rbac_reads_services_and_endpointslices_only() {
    let documents = documents();
    let role: ClusterRole = one(&documents, "ClusterRole");
    let rules: Vec<(Vec<String>, Vec<String>, Vec<String>)> = role
        .rules
        .expect("rules")
        .into_iter()
        .map(|r| {
            (
                r.api_groups.unwrap_or_default(),
                r.resources.unwrap_or_default(),
                r.verbs,
            )
        })
        .collect();
    let read = || vec!["get".to_owned(), "list".to_owned(), "watch".to_owned()];
    assert_eq!(
        rules,
        [
            (vec![String::new()], vec!["services".to_owned()], read()),
            (
                vec!["discovery.k8s.io".to_owned()],
                vec!["endpointslices".to_owned()],
                read()
            ),
        ]
    );

    let account: ServiceAccount = one(&documents, "ServiceAccount");
    let namespace: Namespace = one(&documents, "Namespace");
    let binding: ClusterRoleBinding = one(&documents, "ClusterRoleBinding");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(Some(&binding.role_ref.name), role.metadata.name.as_ref());
    let subjects = binding.subjects.expect("subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), account.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, account.metadata.namespace);
    assert_eq!(account.metadata.namespace, namespace.metadata.name);
}

#[test]
fn daemonset_runs_on_gateway_nodes_with_only_the_capabilities_af_xdp_needs() {
    let documents = documents();
    let daemonset: DaemonSet = one(&documents, "DaemonSet");
    let account: ServiceAccount = one(&documents, "ServiceAccount");
    let config_map: ConfigMap = one(&documents, "ConfigMap");
    assert_eq!(daemonset.metadata.namespace, account.metadata.namespace);
    let pod = daemonset
        .spec
        .expect("spec")
        .template
        .spec
        .expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.service_account_name, account.metadata.name);
    let selector = pod.node_selector.expect("nodeSelector");
    assert_eq!(
        selector.get("node-role.kubernetes.io/cipgw-gateway"),
        Some(&String::new())
    );
    assert_eq!(pod.containers.len(), 1);
    let container = &pod.containers[0];
    let security = container
        .security_context
        .as_ref()
        .expect("securityContext");
    assert_eq!(security.privileged, Some(false));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let caps = security.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    let mut added = caps.add.clone().expect("added capabilities");
    added.sort();
    assert_eq!(
        added,
        [
            "BPF",
            "IPC_LOCK",
            "NET_ADMIN",
            "NET_RAW",
            "PERFMON",
            "SYS_RESOURCE"
        ]
    );

    // The settings file it reads is the ConfigMap's.
    let args = container.args.clone().expect("args");
    let config_path = args
        .iter()
        .skip_while(|a| *a != "--config")
        .nth(1)
        .expect("--config FILE");
    let mount = container
        .volume_mounts
        .as_ref()
        .expect("mounts")
        .iter()
        .find(|m| config_path.starts_with(&m.mount_path))
        .expect("the config file is mounted");
    let volume = pod
        .volumes
        .as_ref()
        .expect("volumes")
        .iter()
        .find(|v| v.name == mount.name)
        .expect("the mount's volume");
    let key = config_path
        .strip_prefix(&format!("{}/", mount.mount_path))
        .expect("a file in the mount");
    assert_eq!(
        volume.config_map.as_ref().map(|c| &c.name),
        config_map.metadata.name.as_ref()
    );
    assert!(
        config_map
            .data
            .as_ref()
            .is_some_and(|d| d.contains_key(key)),
        "the ConfigMap has {key}"
    );
    for probe in [&container.readiness_probe, &container.liveness_probe] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("HTTP probe");
        assert_eq!(get.host.as_deref(), Some("127.0.0.1"), "admin is loopback");
    }
}

#[test]
fn config_map_settings_are_toml_for_the_kubernetes_source() {
    let documents = documents();
    let config_map: ConfigMap = one(&documents, "ConfigMap");
    let text = &config_map.data.expect("data")["cipgw.toml"];
    let settings: toml::Table = toml::from_str(text).expect("valid TOML");
    // That every key is one `cipgw run --config` accepts, with a value
    // its flag takes, is checked by the binary's own reader (the flags'
    // definitions): `cargo test -p cipgw --bin cipgw deploy_config_map`.
    assert_eq!(settings["kubernetes"].as_bool(), Some(true));
    assert!(!settings.contains_key("control-file"));
    assert_eq!(settings["proxy-name"].as_str(), Some("cipgw"));
    let period = settings["min-sync-period"].as_str().expect("a duration");
    assert_eq!(
        cipgw_config::settings::parse_duration(period),
        Ok(std::time::Duration::from_secs(1))
    );
    let cidr = settings["service-cidr"].as_str().expect("a CIDR");
    cidr.parse::<ipnet::Ipv4Net>().expect("an IPv4 CIDR");
}
