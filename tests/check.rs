//! `cipgw check` on control files that hold more than cipgw reads: the real
//! binary on the seed's manifests and on a `kubectl get
//! all,endpointslices -A -o yaml` dump. No namespaces, no root.
//!
//! Cases:
//! - the seed's Deployment + Service with its Pods: the Service resolves to
//!   the three Pods, the Deployment is listed as skipped, exit status 0;
//! - the `kubectl get all` List: every Service with its EndpointSlice
//!   endpoints, the Deployments, ReplicaSets, StatefulSet, DaemonSet and
//!   HorizontalPodAutoscaler listed as skipped in file order, exit status 0;
//! - a dual-stack file with `--service-cidr` of both families: a line per
//!   VIP of each family with that family's endpoints (IPv6 in brackets),
//!   the headless IPv6 Service's endpoints, the A/AAAA/ip6.arpa records;
//!   the same file on an IPv4-only gateway is an error naming the
//!   RequireDualStack Service, and two IPv4 service CIDRs are refused;
//! - a malformed Service among skipped kinds is still an error (exit
//!   status 64) naming the document, the object and the field;
//! - a bad flag exits 64 with clap's message on standard error, while
//!   `--help` and `--version` exit 0 and print to standard output.

use std::path::Path;

#[path = "support/mod.rs"]
mod support;

/// The service CIDR the testdata/ files are written for.
const TEST_SERVICE_CIDR: &str = "198.18.100.0/24";

/// Runs `cipgw check` on `file` and returns its standard output, failing
/// unless it exits 0 with nothing on standard error.
fn check_ok(file: &Path) -> String {
    let out = support::check(file, TEST_SERVICE_CIDR);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "cipgw check on {}: {out:?}",
        file.display()
    );
    out.stdout
}

#[test]
fn seed_manifests_resolve_and_list_the_deployment_as_skipped() {
    let stdout = check_ok(&support::testdata().join("seed-echo-server.yaml"));
    // No clusterIP in the seed's Service: the address is the one allocated
    // from its namespace/name, stable across runs.
    let expected = "\
198.18.100.91:8080/tcp  default/echo-server-clusterip (ClusterIP)  -> 198.18.2.21:5678, 198.18.2.22:5678, 198.18.2.23:5678

skipped 1 object of a kind cipgw does not read:
  Deployment default/echo-server (document 1)
";
    assert_eq!(stdout, expected);
}

#[test]
fn kubectl_get_all_resolves_and_lists_skipped_kinds() {
    let stdout = check_ok(&support::testdata().join("kubectl-get-all.yaml"));
    let expected = "\
198.18.100.1:443/tcp     default/kubernetes:https (ClusterIP)       -> 198.18.1.1:6443
198.18.100.10:53/tcp     kube-system/kube-dns:dns-tcp (ClusterIP)   -> 198.18.5.10:53, 198.18.5.11:53
198.18.100.10:53/udp     kube-system/kube-dns:dns (ClusterIP)       -> 198.18.5.10:53, 198.18.5.11:53
198.18.100.10:9153/tcp   kube-system/kube-dns:metrics (ClusterIP)   -> 198.18.5.10:9153, 198.18.5.11:9153
198.18.100.134:8080/tcp  testing/echo-server-clusterip (ClusterIP)  -> 198.18.2.31:5678, 198.18.2.32:5678, 198.18.2.33:5678
headless                 shop/db (ClusterIP, headless)              port 5432/tcp (pg) -> 198.18.4.1:5432

skipped 8 objects of kinds cipgw does not read:
  DaemonSet kube-system/node-agent (document 1, items[12])
  Deployment kube-system/coredns (document 1, items[13])
  Deployment testing/echo-server (document 1, items[14])
  ReplicaSet kube-system/coredns-5d78c9869d (document 1, items[15])
  ReplicaSet testing/echo-server-6d9f7b8c4d (document 1, items[16])
  ReplicaSet testing/echo-server-7b5d9c8f6 (document 1, items[17])
  StatefulSet shop/db (document 1, items[18])
  HorizontalPodAutoscaler testing/echo-server (document 1, items[19])
";
    assert_eq!(stdout, expected);
}

#[test]
fn dual_stack_services_list_every_cluster_ip_with_its_family() {
    let file = support::testdata().join("dual-stack.yaml");
    let out = check_with(&file, &["--service-cidr", "2001:2:0:ff::/112", "--dns"]);
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    // api has no address written: each family's is allocated from its
    // CIDR, stable across runs (the name's hash).
    let expected_table = "\
198.18.100.20:80/tcp         shop/web:http (ClusterIP)      -> 198.18.3.1:8080, 198.18.3.2:8080(not-ready)
198.18.100.31:443/tcp        shop/api (ClusterIP)           -> 198.18.4.1:8443
[2001:2:0:ff::20]:80/tcp     shop/web:http (ClusterIP)      -> [2001:2:0:3::1]:8080, [2001:2:0:3::2]:8080
[2001:2:0:ff::374e]:443/tcp  shop/api (ClusterIP)           -> [2001:2:0:4::1]:8443
headless                     shop/db (ClusterIP, headless)  port 5432/tcp (pg) -> [2001:2:0:4::1]:5432
";
    assert!(
        out.stdout.starts_with(expected_table),
        "unexpected listing:\n{}",
        out.stdout
    );
    for record in [
        "  web.shop.svc.cluster.local. A 198.18.100.20",
        "  web.shop.svc.cluster.local. AAAA 2001:2:0:ff::20",
        "  0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.f.f.0.0.0.0.0.0.2.0.0.0.1.0.0.2.ip6.arpa. \
         PTR web.shop.svc.cluster.local.",
        "  db.shop.svc.cluster.local. AAAA 2001:2:0:4::1",
    ] {
        assert!(
            out.stdout.lines().any(|l| l == record),
            "no {record:?} in:\n{}",
            out.stdout
        );
    }
    // An IPv4-only gateway cannot serve the RequireDualStack Service.
    let out = support::check(&file, TEST_SERVICE_CIDR);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        out.stderr.contains(
            "document 4 (Service shop/api): spec.ipFamilyPolicy: RequireDualStack, but the \
             gateway's service CIDRs (198.18.100.0/24) are of one family"
        ),
        "{out:?}"
    );
    // At most one service CIDR per family.
    let out = check_with(&file, &["--service-cidr", "198.19.0.0/16"]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        out.stderr
            .contains("--service-cidr: 198.19.0.0/16 is a second IPv4 CIDR after 198.18.100.0/24"),
        "{out:?}"
    );
}

#[test]
fn malformed_service_among_skipped_kinds_exits_64() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("control.yaml");
    let text = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo-server
spec:
  replicas: 3
---
apiVersion: v1
kind: Service
metadata:
  name: echo-server-clusterip
spec:
  ports:
  - protocol: TCP
    port: 8080
    targetPort: [5678]
";
    std::fs::write(&file, text).expect("writing the control file");
    let out = support::check(&file, TEST_SERVICE_CIDR);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let expected = "document 2 (Service default/echo-server-clusterip), line 16 column 17: \
                    spec.ports[0].targetPort: ";
    assert!(
        out.stderr.contains(expected),
        "the message does not name document, object and field: {:?}",
        out.stderr
    );
}

#[test]
fn bad_flags_exit_64_and_help_exits_0() {
    for args in [
        &["--no-such-flag"][..],
        &["check", "--no-such-flag"],
        &["no-such-command"],
        &["check"],
    ] {
        let out = support::run_cipgw(args);
        assert_eq!(out.status.code(), Some(64), "cipgw {args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "cipgw {args:?}: {out:?}");
        assert!(
            out.stderr.contains("error:") && out.stderr.contains("Usage:"),
            "cipgw {args:?} does not explain itself on standard error: {out:?}"
        );
    }
    for (args, expected) in [
        (&["--help"][..], "Usage:"),
        (&["check", "--help"], "--control-file"),
        (&["--version"], "cipgw "),
    ] {
        let out = support::run_cipgw(args);
        assert_eq!(out.status.code(), Some(0), "cipgw {args:?}: {out:?}");
        assert!(
            out.stdout.contains(expected) && out.stderr.is_empty(),
            "cipgw {args:?} prints {expected:?} to standard output only: {out:?}"
        );
    }
}

/// Runs `cipgw check` on `file` with extra flags.
fn check_with(file: &Path, extra: &[&str]) -> support::Output {
    let file = file.display().to_string();
    let mut args = vec![
        "check",
        "--control-file",
        &file,
        "--service-cidr",
        TEST_SERVICE_CIDR,
    ];
    args.extend_from_slice(extra);
    support::run_cipgw(&args)
}

/// The `maglev` lines of a `cipgw check` output.
fn maglev_lines(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .filter(|l| l.starts_with("maglev "))
        .collect()
}

/// A dual-stack Service port has a Maglev table per VIP, each listed.
#[test]
fn maglev_fingerprints_cover_both_families() {
    let file = support::testdata().join("dual-stack.yaml");
    let out = check_with(
        &file,
        &["--service-cidr", "2001:2:0:ff::/112", "--lb", "maglev"],
    );
    assert!(out.status.success(), "{out:?}");
    let lines = maglev_lines(&out.stdout);
    for port in [
        "shop/web 198.18.100.20:80/tcp table ",
        "shop/web [2001:2:0:ff::20]:80/tcp table ",
    ] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("maglev {port}"))),
            "no Maglev table for {port}: {lines:?}"
        );
    }
}

/// `cipgw check --lb maglev` prints each Maglev table's fingerprint: the
/// same for the same endpoints and seed whatever their order in the
/// file, another for another seed; `--lb random` prints none; a size
/// that is not prime exits 64.
#[test]
fn check_prints_maglev_fingerprints_that_gateways_can_compare() {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = "\
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  clusterIP: 198.18.100.10
  ports: [{port: 8080, targetPort: 5678}]
---
";
    let slice = |ips: &[&str]| {
        let endpoints: Vec<String> = ips
            .iter()
            .map(|ip| format!("  - addresses: [\"{ip}\"]\n    conditions: {{ready: true}}\n"))
            .collect();
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata:\n  name: echo-1\n  namespace: default\n  \
             labels: {{kubernetes.io/service-name: echo}}\naddressType: IPv4\n\
             ports: [{{port: 5678}}]\nendpoints:\n{}",
            endpoints.concat()
        )
    };
    let forward = dir.path().join("forward.yaml");
    let backward = dir.path().join("backward.yaml");
    let ips = ["198.18.2.11", "198.18.2.12", "198.18.2.13"];
    std::fs::write(&forward, format!("{service}{}", slice(&ips))).expect("write");
    let mut reversed = ips;
    reversed.reverse();
    std::fs::write(&backward, format!("{service}{}", slice(&reversed))).expect("write");

    let lines = |file: &Path, extra: &[&str]| {
        let out = check_with(file, extra);
        assert!(out.status.success(), "cipgw check {extra:?}: {out:?}");
        maglev_lines(&out.stdout)
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
    };
    let a = lines(&forward, &["--lb", "maglev", "--hash-seed", "7"]);
    assert_eq!(a.len(), 1, "one Maglev port: {a:?}");
    assert!(
        a[0].starts_with("maglev default/echo 198.18.100.10:8080/tcp table ")
            && a[0].ends_with("(3 endpoints, size 16381, seed 0x7)"),
        "{a:?}"
    );
    assert_eq!(
        a,
        lines(&backward, &["--lb", "maglev", "--hash-seed", "7"]),
        "the order of endpoints does not change the table"
    );
    assert_ne!(
        a,
        lines(&forward, &["--lb", "maglev", "--hash-seed", "8"]),
        "another seed is another table"
    );
    assert!(lines(&forward, &["--lb", "random"]).is_empty());

    let out = check_with(
        &forward,
        &["--lb", "maglev", "--maglev-table-size", "16384"],
    );
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        out.stderr
            .contains("--maglev-table-size: 16384 is not a prime"),
        "{out:?}"
    );
}

/// The annotation `cipgw.io/lb-algorithm` chooses Maglev for one
/// Service under `--lb random`; a value other than random or maglev is
/// an error naming the Service and the annotation.
#[test]
fn the_lb_algorithm_annotation_is_per_service_and_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("control.yaml");
    let with = |value: &str| {
        format!(
            "\
apiVersion: v1
kind: Service
metadata:
  name: hashed
  namespace: default
  annotations: {{cipgw.io/lb-algorithm: {value}}}
spec:
  clusterIP: 198.18.100.10
  ports: [{{port: 80}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: hashed-1
  namespace: default
  labels: {{kubernetes.io/service-name: hashed}}
addressType: IPv4
ports: [{{port: 80}}]
endpoints: [{{addresses: [198.18.2.11], conditions: {{ready: true}}}}]
"
        )
    };
    std::fs::write(&file, with("maglev")).expect("write");
    let out = check_with(&file, &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        maglev_lines(&out.stdout).len(),
        1,
        "annotated Maglev under the default --lb random: {out:?}"
    );
    std::fs::write(&file, with("random")).expect("write");
    let out = check_with(&file, &["--lb", "maglev"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        maglev_lines(&out.stdout).is_empty(),
        "annotated random under --lb maglev: {out:?}"
    );
    std::fs::write(&file, with("round-robin")).expect("write");
    let out = check_with(&file, &[]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        out.stderr.contains("Service default/hashed")
            && out.stderr.contains("cipgw.io/lb-algorithm")
            && out.stderr.contains("\"round-robin\""),
        "the error names the Service and the annotation: {out:?}"
    );
}
