//! Tests of the translation from Kubernetes objects to the service model:
//! control-file YAML in, the resolved table or the exact error out. They
//! live beside `translate.rs` so that the translation reads on its own.

use std::net::{Ipv4Addr, Ipv6Addr};

use cipgw_config::control_file::parse_control_file;
use ipnet::Ipv4Net;

use super::*;

fn cidr() -> ServiceCidrs {
    ServiceCidrs::v4_only(cidr4())
}

fn cidr4() -> Ipv4Net {
    "198.18.100.0/24".parse().expect("valid")
}

/// A dual-stack gateway's service CIDRs, the first given first.
fn cidrs(list: &[&str]) -> ServiceCidrs {
    let list: Vec<IpNet> = list.iter().map(|c| c.parse().expect("valid")).collect();
    ServiceCidrs::new(&list).expect("one per family")
}

fn table(yaml: &str) -> ServiceTable {
    table_with(yaml, &cidr())
}

fn table_with(yaml: &str, cidrs: &ServiceCidrs) -> ServiceTable {
    let objects = parse_control_file(yaml).expect("parses");
    translate(&Objects::from_control_file(&objects), cidrs)
        .unwrap_or_else(|e| panic!("translates: {e}"))
}

fn error(yaml: &str) -> String {
    error_with(yaml, &cidr())
}

fn error_with(yaml: &str, cidrs: &ServiceCidrs) -> String {
    let objects = parse_control_file(yaml).expect("parses");
    translate(&Objects::from_control_file(&objects), cidrs)
        .expect_err("input is invalid")
        .to_string()
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn service<'t>(table: &'t ServiceTable, namespace: &str, name: &str) -> &'t Service {
    table
        .get(&ServiceName::new(namespace, name))
        .unwrap_or_else(|| panic!("{namespace}/{name} listed"))
}

/// `ip:port` of each endpoint, with the state of the not-ready ones.
fn eps(port: &ServicePort) -> Vec<String> {
    port.endpoints
        .iter()
        .map(|e| {
            let s = e.state;
            let flags = match (s.ready, s.serving, s.terminating) {
                (true, true, false) => String::new(),
                (r, sv, t) => format!(" r={r} s={sv} t={t}"),
            };
            format!("{}:{}{flags}", e.ip, e.port)
        })
        .collect()
}

fn pod(name: &str, namespace: &str, app: &str, ip: &str, ready: bool, extra: &str) -> String {
    let ready = if ready { "True" } else { "False" };
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  \
             labels:\n    app: {app}\n{extra}status:\n  phase: Running\n  podIP: {ip}\n  \
             conditions:\n  - type: Ready\n    status: \"{ready}\"\n"
    )
}

const ECHO: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: echo
spec:
  clusterIP: 198.18.100.10
  selector:
    app: echo
  ports:
  - port: 8080
    targetPort: 5678
";

#[test]
fn pods_give_endpoints_as_the_endpointslice_controller_would() {
    let yaml = [
        ECHO.to_owned(),
        pod("ready", "default", "echo", "198.18.2.11", true, ""),
        pod("unready", "default", "echo", "198.18.2.12", false, ""),
        pod("leaving", "default", "echo", "198.18.2.13", true, "").replace(
            "  labels:",
            "  deletionTimestamp: \"2025-01-10T10:00:00Z\"\n  labels:",
        ),
        pod("other-ns", "shop", "echo", "198.18.2.14", true, ""),
        pod("other-app", "default", "web", "198.18.2.15", true, ""),
        pod("done", "default", "echo", "198.18.2.16", true, "")
            .replace("phase: Running", "phase: Succeeded"),
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: pending\n  labels:\n    app: echo\n\
             status:\n  phase: Pending\n"
            .to_owned(),
    ]
    .concat();
    let plain = table(&yaml);
    let echo = service(&plain, "default", "echo");
    assert_eq!(
        eps(&echo.ports[0]),
        [
            "198.18.2.11:5678",
            "198.18.2.12:5678 r=false s=false t=false",
            "198.18.2.13:5678 r=false s=true t=true",
        ]
    );
    assert_eq!(echo.ports[0].endpoints[0].pod.as_deref(), Some("ready"));
    assert_eq!(echo.ports[0].target_port, TargetPort::Number(5678));

    let published = yaml.replace(
        "  selector:",
        "  publishNotReadyAddresses: true\n  selector:",
    );
    let published = table(&published);
    let all_ready = service(&published, "default", "echo").ports[0]
        .endpoints
        .iter()
        .all(|e| e.state.ready);
    assert!(
        all_ready,
        "publishNotReadyAddresses makes every endpoint ready"
    );
}

#[test]
fn service_without_selector_or_slices_has_no_endpoints() {
    let yaml = format!(
        "{}{}",
        ECHO.replace("  selector:\n    app: echo\n", ""),
        pod("p", "default", "echo", "198.18.2.11", true, "")
    );
    assert!(table(&yaml).services[0].ports[0].endpoints.is_empty());
}

const SLICE_HEAD: &str = "\
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-1
  labels:
    kubernetes.io/service-name: echo
addressType: IPv4
";

#[test]
fn slices_take_precedence_and_carry_conditions() {
    let yaml = format!(
        "{ECHO}{}{SLICE_HEAD}endpoints:
- addresses: [198.18.3.1]
- addresses: [198.18.3.2]
  conditions: {{ready: false}}
- addresses: [198.18.3.3]
  conditions: {{ready: false, serving: true, terminating: true}}
  targetRef: {{kind: Pod, name: echo-c}}
- addresses: [198.18.3.4]
  conditions: {{ready: false}}
- addresses: [198.18.3.5, 198.18.3.50]
  targetRef: {{kind: Node, name: node-1}}
{}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-v6
  labels:
    kubernetes.io/service-name: echo
addressType: IPv6
endpoints:
- addresses: [\"2001:2:0:3::1\"]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: echo-fqdn
  labels:
    kubernetes.io/service-name: echo
addressType: FQDN
endpoints:
- addresses: [echo.example.net]
",
        pod("p", "default", "echo", "198.18.2.11", true, ""),
        // A second slice repeats 198.18.3.4, ready this time: the
        // most ready copy is kept.
        SLICE_HEAD.replace("echo-1\n", "echo-2\n") + "endpoints:\n- addresses: [198.18.3.4]\n",
    );
    let table = table(&yaml);
    let port = &service(&table, "default", "echo").ports[0];
    assert_eq!(
        eps(port),
        [
            "198.18.3.1:5678",
            "198.18.3.2:5678 r=false s=false t=false",
            "198.18.3.3:5678 r=false s=true t=true",
            "198.18.3.4:5678",
            "198.18.3.5:5678",
        ]
    );
    assert_eq!(port.endpoints[2].pod.as_deref(), Some("echo-c"));
    assert_eq!(
        port.endpoints[4].pod, None,
        "targetRef of kind Node names no Pod"
    );
}

#[test]
fn non_ipv4_slices_still_replace_pods() {
    let yaml = format!(
        "{ECHO}{}{}endpoints:\n- addresses: [\"2001:2:0:3::1\"]\n",
        pod("p", "default", "echo", "198.18.2.11", true, ""),
        SLICE_HEAD.replace("IPv4", "IPv6"),
    );
    assert!(table(&yaml).services[0].ports[0].endpoints.is_empty());
}

#[test]
fn named_target_port_resolves_through_slices() {
    let yaml = format!(
        "\
apiVersion: v1
kind: Service
metadata:
  name: echo
spec:
  clusterIP: 198.18.100.10
  ports:
  - name: http
    port: 80
    targetPort: web
  - name: admin
    port: 9000
    targetPort: 9001
  - name: raw
    port: 7000
    targetPort: 7001
{SLICE_HEAD}ports:
- name: http
  port: 8080
- name: admin
  port: 9999
endpoints:
- addresses: [198.18.3.1]
{}ports: []
endpoints:
- addresses: [198.18.3.2]
",
        SLICE_HEAD.replace("echo-1\n", "echo-2\n"),
    );
    let table = table(&yaml);
    let echo = service(&table, "default", "echo");
    let by_name = |name: &str| {
        echo.ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .map(eps)
            .expect("port listed")
    };
    // Named: only the slice that names the port resolves it.
    assert_eq!(by_name("http"), ["198.18.3.1:8080"]);
    assert_eq!(echo.ports[0].target_port, TargetPort::Name("web".into()));
    // Numeric: the slice's number wins; a slice without ports falls
    // back to targetPort.
    assert_eq!(by_name("admin"), ["198.18.3.1:9999", "198.18.3.2:9001"]);
    // A slice listing other ports only leaves the endpoint out.
    assert_eq!(by_name("raw"), ["198.18.3.2:7001"]);
}

#[test]
fn named_target_port_resolves_through_pods() {
    let ports = |list: &str| format!("spec:\n  containers:\n  - name: c\n    ports:\n{list}");
    let yaml = [
            ECHO.replace("targetPort: 5678", "targetPort: http"),
            pod(
                "tcp",
                "default",
                "echo",
                "198.18.2.11",
                true,
                &ports("    - {name: metrics, containerPort: 9090}\n    - {name: http, containerPort: 8081}\n"),
            ),
            pod(
                "udp-only",
                "default",
                "echo",
                "198.18.2.12",
                true,
                &ports("    - {name: http, containerPort: 8082, protocol: UDP}\n"),
            ),
            pod(
                "sidecar",
                "default",
                "echo",
                "198.18.2.13",
                true,
                "spec:\n  containers:\n  - name: main\n  initContainers:\n  - name: proxy\n    \
                 restartPolicy: Always\n    ports:\n    - {name: http, containerPort: 8083}\n",
            ),
            pod("no-ports", "default", "echo", "198.18.2.14", true, ""),
        ]
        .concat();
    let table = table(&yaml);
    assert_eq!(
        eps(&table.services[0].ports[0]),
        ["198.18.2.11:8081", "198.18.2.13:8083"]
    );
}

#[test]
fn several_ports_and_one_port_on_several_vips() {
    let yaml = "\
apiVersion: v1
kind: Service
metadata: {name: b}
spec:
  clusterIP: 198.18.100.12
  ports:
  - {name: http, port: 80}
  - {name: dns, port: 53, protocol: UDP}
  - {name: dns-tcp, port: 53, protocol: TCP}
---
apiVersion: v1
kind: Service
metadata: {name: a}
spec:
  clusterIP: 198.18.100.11
  ports:
  - {port: 80, name: ''}
";
    let table = table(yaml);
    let names: Vec<String> = table.services.iter().map(|s| s.name.to_string()).collect();
    assert_eq!(names, ["default/a", "default/b"], "sorted by name");
    let a = service(&table, "default", "a");
    assert_eq!(a.ports[0].name, None, "empty name is no name");
    let b = service(&table, "default", "b");
    let ports: Vec<(u16, Protocol)> = b.ports.iter().map(|p| (p.port, p.protocol)).collect();
    assert_eq!(
        ports,
        [
            (80, Protocol::Tcp),
            (53, Protocol::Udp),
            (53, Protocol::Tcp)
        ]
    );
    let vips: Vec<(String, Ipv4Addr)> = table
        .forwarded_v4()
        .map(|(s, vip)| (s.name.name.clone(), vip))
        .collect();
    assert_eq!(
        vips,
        [
            ("a".into(), Ipv4Addr::new(198, 18, 100, 11)),
            ("b".into(), Ipv4Addr::new(198, 18, 100, 12))
        ]
    );
}

#[test]
fn headless_external_name_node_port_and_load_balancer() {
    let yaml = format!(
        "\
apiVersion: v1
kind: Service
metadata: {{name: db}}
spec:
  clusterIP: None
  selector: {{app: db}}
  ports: [{{port: 5432}}]
---
apiVersion: v1
kind: Service
metadata: {{name: db2}}
spec:
  clusterIPs: [None]
---
apiVersion: v1
kind: Service
metadata: {{name: ext}}
spec:
  type: ExternalName
  externalName: db.example.net
  ports: [{{port: 5432}}]
---
apiVersion: v1
kind: Service
metadata: {{name: np}}
spec:
  type: NodePort
  clusterIP: 198.18.100.21
  ports: [{{port: 80, nodePort: 30080}}]
---
apiVersion: v1
kind: Service
metadata: {{name: lb}}
spec:
  type: LoadBalancer
  clusterIP: 198.18.100.22
  ports: [{{port: 80}}]
{}",
        pod("db-0", "default", "db", "198.18.4.1", true, "")
    );
    let table = table(&yaml);
    let db = service(&table, "default", "db");
    assert_eq!(db.cluster_ip, ClusterIp::Headless);
    assert_eq!(eps(&db.ports[0]), ["198.18.4.1:5432"]);
    assert_eq!(
        service(&table, "default", "db2").cluster_ip,
        ClusterIp::Headless
    );
    let ext = service(&table, "default", "ext");
    assert_eq!(
        (ext.kind, ext.cluster_ip),
        (ServiceKind::ExternalName, ClusterIp::ExternalName)
    );
    let np = service(&table, "default", "np");
    assert_eq!(
        (np.kind, np.cluster_ip),
        (
            ServiceKind::NodePort,
            ClusterIp::single(v4(198, 18, 100, 21))
        )
    );
    let lb = service(&table, "default", "lb");
    assert_eq!(lb.kind, ServiceKind::LoadBalancer);
    assert_eq!(table.forwarded().count(), 2);
}

#[test]
fn allocated_cluster_ips_are_stable_and_avoid_fixed_ones() {
    let doc = |name: &str, ip: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n\
                 spec:\n  {ip}ports: [{{port: 80}}]\n"
        )
    };
    let docs = [
        doc("a", ""),
        doc("b", ""),
        doc("c", "clusterIPs: [198.18.100.77]\n  "),
        doc("d", "clusterIP: \"\"\n  "),
    ];
    let forward = table(&docs.concat());
    let backward = table(&docs.iter().rev().cloned().collect::<String>());
    assert_eq!(forward, backward, "document order does not matter");
    let vip = |name: &str| {
        service(&forward, "default", name)
            .cluster_ip
            .vip4()
            .expect("forwarded")
    };
    assert_eq!(vip("c"), Ipv4Addr::new(198, 18, 100, 77));
    let ips: HashSet<Ipv4Addr> = ["a", "b", "c", "d"].map(vip).into();
    assert_eq!(ips.len(), 4, "unique");
    for ip in ips {
        assert!(cidr4().contains(&ip) && ip.octets()[3] >= 2 && ip.octets()[3] <= 254);
    }
    // The same name gets the same address whatever else is there.
    let alone = table(&doc("a", ""));
    assert_eq!(
        alone.services[0].cluster_ip.vip4(),
        Some(vip("a")),
        "no collision here, so the address is a's home slot"
    );
}

/// The gateway of the dual-stack tests: IPv4 first, as most clusters.
const DUAL: [&str; 2] = ["198.18.100.0/24", "2001:2:0:ff::/112"];

fn v6(last: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0xff, 0, 0, 0, last))
}

fn web(spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n{spec}  \
         selector: {{app: web}}\n  ports: [{{port: 80, targetPort: 8080}}]\n"
    )
}

/// A Pod with both families (`status.podIPs`, the IPv4 one first).
fn dual_pod(name: &str, v4: &str, v6: &str, ready: bool) -> String {
    pod(name, "default", "web", v4, ready, "").replace(
        "  conditions:",
        &format!("  podIPs:\n  - ip: {v4}\n  - ip: \"{v6}\"\n  conditions:"),
    )
}

#[test]
fn dual_stack_service_has_a_vip_and_endpoints_per_family() {
    let yaml = format!(
        "{}{}{}",
        web(
            "  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv6, IPv4]\n  \
             clusterIP: 2001:2:0:ff::10\n  clusterIPs: [2001:2:0:ff::10, 198.18.100.40]\n"
        ),
        dual_pod("web-1", "198.18.2.11", "2001:2:0:2::11", true),
        dual_pod("web-2", "198.18.2.12", "2001:2:0:2::12", false),
    );
    let dual = table_with(&yaml, &cidrs(&DUAL));
    let web = service(&dual, "default", "web");
    let vips = web.cluster_ip.vips_of().expect("forwarded");
    assert_eq!(vips.primary(), v6(0x10), "spec.clusterIP is the primary");
    assert_eq!(vips.v4(), Some(Ipv4Addr::new(198, 18, 100, 40)));
    assert_eq!(
        web.cluster_ip.vips().collect::<Vec<_>>(),
        [v6(0x10), v4(198, 18, 100, 40)]
    );
    assert_eq!(web.ip_family_policy, IpFamilyPolicy::RequireDualStack);
    assert_eq!(web.ip_families, [IpFamily::V6, IpFamily::V4]);
    let port = &web.ports[0];
    assert_eq!(
        eps(port),
        [
            "198.18.2.11:8080",
            "198.18.2.12:8080 r=false s=false t=false",
            "2001:2:0:2::11:8080",
            "2001:2:0:2::12:8080 r=false s=false t=false",
        ],
        "both of each Pod's addresses, IPv4 first"
    );
    let of = |family| {
        port.endpoints_of(family)
            .map(|e| e.ip.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(of(IpFamily::V6), ["2001:2:0:2::11", "2001:2:0:2::12"]);
    assert_eq!(of(IpFamily::V4), ["198.18.2.11", "198.18.2.12"]);
    assert_eq!(
        dual.render(),
        "198.18.100.40:80/tcp      default/web (ClusterIP)  -> 198.18.2.11:8080, 198.18.2.12:8080(not-ready)\n\
         [2001:2:0:ff::10]:80/tcp  default/web (ClusterIP)  -> [2001:2:0:2::11]:8080, [2001:2:0:2::12]:8080(not-ready)\n"
    );
}

#[test]
fn families_default_as_kube_apiserver_defaults_them() {
    let pods = dual_pod("web-1", "198.18.2.11", "2001:2:0:2::11", true);
    let families = |spec: &str, gateway: &[&str]| {
        let got = table_with(&format!("{}{pods}", web(spec)), &cidrs(gateway));
        let web = service(&got, "default", "web").clone();
        let eps: Vec<String> = web.ports[0]
            .endpoints
            .iter()
            .map(|e| e.ip.to_string())
            .collect();
        (web.ip_family_policy, web.ip_families, eps)
    };
    use IpFamily::{V4, V6};
    use IpFamilyPolicy::{PreferDualStack, RequireDualStack, SingleStack};
    // No policy: SingleStack on the first service CIDR's family, and only
    // the endpoints of that family.
    assert_eq!(
        families("", &DUAL),
        (SingleStack, vec![V4], vec!["198.18.2.11".into()])
    );
    assert_eq!(
        families("", &["2001:2:0:ff::/112", "198.18.100.0/24"]),
        (SingleStack, vec![V6], vec!["2001:2:0:2::11".into()])
    );
    // PreferDualStack gets both where both CIDRs are, one elsewhere.
    let both = vec!["198.18.2.11".into(), "2001:2:0:2::11".into()];
    assert_eq!(
        families("  ipFamilyPolicy: PreferDualStack\n", &DUAL),
        (PreferDualStack, vec![V4, V6], both.clone())
    );
    assert_eq!(
        families("  ipFamilyPolicy: PreferDualStack\n", &["198.18.100.0/24"]),
        (PreferDualStack, vec![V4], vec!["198.18.2.11".into()])
    );
    // An IPv6 primary from ipFamilies, the other family added.
    assert_eq!(
        families(
            "  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv6]\n",
            &DUAL
        ),
        (RequireDualStack, vec![V6, V4], both)
    );
    // The family of a fixed clusterIP.
    assert_eq!(
        families("  clusterIP: 2001:2:0:ff::20\n", &DUAL),
        (SingleStack, vec![V6], vec!["2001:2:0:2::11".into()])
    );
    // A PreferDualStack Service from a dual-stack cluster on an IPv4-only
    // gateway keeps its IPv4 address.
    let prefer = table(&web(
        "  ipFamilyPolicy: PreferDualStack\n  ipFamilies: [IPv4, IPv6]\n  \
         clusterIPs: [198.18.100.40, \"2001:2:0:ff::10\"]\n",
    ));
    assert_eq!(
        prefer.services[0].cluster_ip,
        ClusterIp::single(v4(198, 18, 100, 40))
    );
    assert_eq!(prefer.services[0].ip_families, [V4]);
}

#[test]
fn headless_services_take_families_too() {
    let yaml = format!(
        "{}{}",
        web("  clusterIP: None\n  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv6]\n"),
        dual_pod("web-1", "198.18.2.11", "2001:2:0:2::11", true),
    );
    let headless = table_with(&yaml, &cidrs(&DUAL));
    let web = service(&headless, "default", "web");
    assert_eq!(web.cluster_ip, ClusterIp::Headless);
    assert_eq!(eps(&web.ports[0]), ["2001:2:0:2::11:8080"]);
    // Without selector on a dual-stack gateway: RequireDualStack, both.
    let selectorless = table_with(
        "apiVersion: v1\nkind: Service\nmetadata: {name: ext}\nspec:\n  clusterIP: None\n",
        &cidrs(&DUAL),
    );
    assert_eq!(
        (
            selectorless.services[0].ip_family_policy,
            selectorless.services[0].ip_families.clone()
        ),
        (
            IpFamilyPolicy::RequireDualStack,
            vec![IpFamily::V4, IpFamily::V6]
        )
    );
    // ... and SingleStack on a gateway of one family.
    let single =
        table("apiVersion: v1\nkind: Service\nmetadata: {name: ext}\nspec:\n  clusterIP: None\n");
    assert_eq!(
        single.services[0].ip_family_policy,
        IpFamilyPolicy::SingleStack
    );
}

#[test]
fn ipv6_slices_give_ipv6_endpoints_and_fqdn_slices_nothing() {
    let yaml = format!(
        "{}{}endpoints:\n- addresses: [198.18.3.1]\n{}",
        web("  ipFamilyPolicy: PreferDualStack\n"),
        SLICE_HEAD
            .replace("name: echo-1", "name: web-4")
            .replace("service-name: echo", "service-name: web"),
        "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-6
  labels:
    kubernetes.io/service-name: web
addressType: IPv6
endpoints:
- addresses: [\"2001:2:0:3::2\"]
  conditions: {ready: false}
- addresses: [\"2001:2:0:3::1\"]
  hostname: web-0
  targetRef: {kind: Pod, name: web-0}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-fqdn
  labels:
    kubernetes.io/service-name: web
addressType: FQDN
endpoints:
- addresses: [web.example.net]
",
    );
    let dual = table_with(&yaml, &cidrs(&DUAL));
    let port = &service(&dual, "default", "web").ports[0];
    assert_eq!(
        eps(port),
        [
            "198.18.3.1:8080",
            "2001:2:0:3::1:8080",
            "2001:2:0:3::2:8080 r=false s=false t=false",
        ]
    );
    assert_eq!(port.endpoints[1].pod.as_deref(), Some("web-0"));
    assert_eq!(port.endpoints[1].hostname.as_deref(), Some("web-0"));
    // A single-stack IPv4 Service leaves the IPv6 slice's endpoints out:
    // its VIP never goes to another family.
    let single = table_with(
        &yaml.replace("  ipFamilyPolicy: PreferDualStack\n", ""),
        &cidrs(&DUAL),
    );
    assert_eq!(eps(&single.services[0].ports[0]), ["198.18.3.1:8080"]);
    // An IPv4 address in an IPv6 slice is an error naming it.
    let wrong = yaml.replace("[\"2001:2:0:3::2\"]", "[198.18.3.2]");
    assert_eq!(
        error_with(&wrong, &cidrs(&DUAL)),
        "document 3 (EndpointSlice default/web-6): endpoints[0].addresses[0]: \
         198.18.3.2 is an IPv4 address in an IPv6 EndpointSlice"
    );
}

#[test]
fn dual_stack_errors_name_the_service_and_field() {
    let cases: [(&str, &[&str], &str); 12] = [
        (
            "  ipFamilyPolicy: RequireDualStack\n",
            &["198.18.100.0/24"],
            "spec.ipFamilyPolicy: RequireDualStack, but the gateway's service CIDRs \
             (198.18.100.0/24) are of one family; give --service-cidr once per family",
        ),
        (
            "  clusterIPs: [198.18.100.5, 198.18.100.6]\n  ipFamilyPolicy: PreferDualStack\n",
            &DUAL,
            "spec.clusterIPs[1]: 198.18.100.6 is an IPv4 address, as is spec.clusterIPs[0]; \
             a Service has one address per family",
        ),
        (
            "  clusterIP: 198.18.100.5\n  clusterIPs: [198.18.100.5, \"2001:2:0:ff::5\"]\n",
            &DUAL,
            "spec.clusterIPs[1]: a second family needs spec.ipFamilyPolicy PreferDualStack \
             or RequireDualStack (it is SingleStack)",
        ),
        (
            "  clusterIPs: [198.18.100.5]\n  ipFamilies: [IPv6]\n",
            &DUAL,
            "spec.clusterIPs[0]: 198.18.100.5 is an IPv4 address, but spec.ipFamilies[0] is IPv6",
        ),
        (
            "  ipFamilyPolicy: PreferDualStack\n  ipFamilies: [IPv4, IPv6]\n  \
             clusterIPs: [198.18.100.5, 198.18.100.6]\n",
            &DUAL,
            "spec.clusterIPs[1]: 198.18.100.6 is an IPv4 address, as is spec.clusterIPs[0]; \
             a Service has one address per family",
        ),
        (
            "  ipFamilyPolicy: PreferDualStack\n  ipFamilies: [IPv6, IPv4]\n  \
             clusterIPs: [\"2001:2:0:ff::5\", 198.18.100.6, 198.18.100.7]\n",
            &DUAL,
            "spec.clusterIPs[2]: at most two entries, one per family",
        ),
        (
            "  ipFamilies: [IPv4, IPv4]\n",
            &DUAL,
            "spec.ipFamilies[1]: IPv4 is listed twice; a Service has at most one entry per family",
        ),
        (
            "  ipFamilies: [IPv5]\n",
            &DUAL,
            "spec.ipFamilies[0]: unknown IP family \"IPv5\": expected IPv4 or IPv6",
        ),
        (
            "  ipFamilyPolicy: DualStack\n",
            &DUAL,
            "spec.ipFamilyPolicy: unknown IP family policy \"DualStack\": expected \
             SingleStack, PreferDualStack or RequireDualStack",
        ),
        (
            "  clusterIP: 2001:2:0:ff::5\n",
            &["198.18.100.0/24"],
            "spec.clusterIP: 2001:2:0:ff::5 is an IPv6 address, and the gateway has no IPv6 \
             service CIDR (--service-cidr 198.18.100.0/24)",
        ),
        (
            "  ipFamilies: [IPv6]\n",
            &["198.18.100.0/24"],
            "spec.ipFamilies[0]: IPv6 is asked for, and the gateway has no IPv6 service CIDR \
             (--service-cidr 198.18.100.0/24)",
        ),
        (
            "  clusterIP: 2001:2:0:fe::5\n",
            &DUAL,
            "spec.clusterIP: 2001:2:0:fe::5 is outside the service CIDR 2001:2:0:ff::/112",
        ),
    ];
    for (spec, gateway, expected) in cases {
        assert_eq!(
            error_with(&web(spec), &cidrs(gateway)),
            format!("document 1 (Service default/web): {expected}"),
            "for spec {spec:?}"
        );
    }
    let headless = error_with(&web("  clusterIPs: [None, 198.18.100.5]\n"), &cidrs(&DUAL));
    assert!(
        headless.ends_with("spec.clusterIPs[1]: \"None\" (headless) must be the only entry"),
        "{headless}"
    );
}

#[test]
fn allocation_is_stable_per_family() {
    let doc = |name: &str, spec: &str| {
        format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n\
             spec:\n{spec}  ports: [{{port: 80}}]\n"
        )
    };
    let prefer = "  ipFamilyPolicy: PreferDualStack\n";
    let docs = [
        doc("a", prefer),
        doc("b", ""),
        doc(
            "c",
            "  ipFamilyPolicy: PreferDualStack\n  clusterIPs: [198.18.100.77]\n",
        ),
        doc("d", "  ipFamilies: [IPv6]\n"),
    ];
    let dual = table_with(&docs.concat(), &cidrs(&DUAL));
    let backward = table_with(
        &docs.iter().rev().cloned().collect::<String>(),
        &cidrs(&DUAL),
    );
    assert_eq!(dual, backward, "document order does not matter");
    let vips = |t: &ServiceTable, name: &str| {
        service(t, "default", name)
            .cluster_ip
            .vips_of()
            .expect("forwarded")
    };
    // Each family's address is the one that family alone would give:
    // the IPv4 one as on an IPv4-only gateway, the IPv6 one as on an
    // IPv6-only one.
    let v4_only = table(
        &docs
            .concat()
            .replace(prefer, "")
            .replace("  ipFamilies: [IPv6]\n", ""),
    );
    let v6_only = table_with(
        &docs
            .concat()
            .replace(prefer, "")
            .replace("  clusterIPs: [198.18.100.77]\n", ""),
        &cidrs(&["2001:2:0:ff::/112"]),
    );
    for name in ["a", "c"] {
        let got = vips(&dual, name);
        assert!(
            got.is_dual() && got.primary_family() == IpFamily::V4,
            "{name}: {got:?}"
        );
        assert_eq!(got.v4(), vips(&v4_only, name).v4(), "{name}");
        if name == "a" {
            assert_eq!(got.v6(), vips(&v6_only, name).v6(), "{name}");
        }
    }
    assert_eq!(vips(&dual, "c").v4(), Some(Ipv4Addr::new(198, 18, 100, 77)));
    assert_eq!(vips(&dual, "b").v6(), None, "SingleStack: one family");
    let d = vips(&dual, "d");
    assert_eq!((d.v4(), d.v6()), (None, vips(&v6_only, "d").v6()));
    let all: HashSet<IpAddr> = ["a", "b", "c", "d"]
        .iter()
        .flat_map(|n| vips(&dual, n).iter())
        .collect();
    assert_eq!(all.len(), 6, "unique");
    let net6: IpNet = "2001:2:0:ff::/112".parse().expect("valid");
    assert!(all
        .iter()
        .all(|ip| matches!(ip, IpAddr::V4(_)) || net6.contains(ip)));
}

#[test]
fn duplicate_ipv6_cluster_ip_names_both() {
    let yaml = format!(
        "{}---\n{}",
        web("  clusterIP: 2001:2:0:ff::5\n"),
        web("  clusterIP: 2001:2:0:ff::5\n").replace("name: web", "name: web2"),
    );
    assert_eq!(
        error_with(&yaml, &cidrs(&DUAL)),
        "document 2 (Service default/web2): spec.clusterIP: 2001:2:0:ff::5 is already \
         the ClusterIP of document 1 (Service default/web)"
    );
}

fn service_doc(spec: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: echo\nspec:\n{spec}")
}

#[test]
fn field_errors_name_document_object_and_field() {
    let cases = [
        (
            "  clusterIP: 2001:2:0:ff::10\n  ports: [{port: 80}]\n",
            "spec.clusterIP: 2001:2:0:ff::10 is an IPv6 address, and the gateway has no IPv6 \
             service CIDR (--service-cidr 198.18.100.0/24)",
        ),
        (
            "  clusterIP: 198.18.100.300\n",
            "spec.clusterIP: \"198.18.100.300\" is not an IP address",
        ),
        (
            "  clusterIP: 198.18.100.0\n",
            "spec.clusterIP: 198.18.100.0 is the network or broadcast address of the \
                 service CIDR 198.18.100.0/24",
        ),
        (
            "  clusterIP: 198.18.100.5\n  clusterIPs: [198.18.100.6]\n",
            "spec.clusterIPs[0]: \"198.18.100.6\" differs from spec.clusterIP \
                 \"198.18.100.5\"; they must be equal",
        ),
        (
            "  type: Gateway\n",
            "spec.type: unknown service type \"Gateway\": expected ClusterIP, NodePort, \
                 LoadBalancer or ExternalName",
        ),
        (
            "  ports: [{port: 0}]\n",
            "spec.ports[0].port: 0 is out of range 1-65535",
        ),
        (
            "  ports: [{port: 80, targetPort: 65536}]\n",
            "spec.ports[0].targetPort: 65536 is out of range 1-65535",
        ),
        (
            "  ports: [{port: 80, targetPort: \"8080\"}]\n",
            "spec.ports[0].targetPort: \"8080\" is a number in quotes: write it without \
                 quotes, or name a container port",
        ),
        (
            "  ports: [{port: 80, targetPort: Web_Port}]\n",
            "spec.ports[0].targetPort: \"Web_Port\" is not a port name (at most 15 \
                 lowercase letters, digits and '-', with at least one letter)",
        ),
        (
            "  ports: [{port: 80, protocol: SCTP}]\n",
            "spec.ports[0].protocol: SCTP is not supported",
        ),
        (
            "  ports: [{port: 80, protocol: tcp}]\n",
            "spec.ports[0].protocol: unknown protocol \"tcp\": expected TCP or UDP",
        ),
        (
            "  ports: [{name: a, port: 80}, {name: b, port: 80}]\n",
            "spec.ports[1]: port 80/tcp is already listed at spec.ports[0]",
        ),
        (
            "  ports: [{name: a, port: 80}, {name: a, port: 81}]\n",
            "spec.ports[1].name: \"a\" is already the name of spec.ports[0]",
        ),
        (
            "  ports: [{name: a, port: 80}, {port: 81}]\n",
            "spec.ports[1].name: required when a Service has more than one port",
        ),
    ];
    for (spec, expected) in cases {
        assert_eq!(
            error(&service_doc(spec)),
            format!("document 1 (Service default/echo): {expected}"),
            "for spec {spec:?}"
        );
    }
}

#[test]
fn bad_addresses_in_pods_and_slices() {
    let bad_pod = format!(
        "{ECHO}{}",
        pod("p", "default", "echo", "198.18.2.x", true, "")
    );
    assert_eq!(
        error(&bad_pod),
        "document 2 (Pod default/p): status.podIP: \"198.18.2.x\" is not an IP address"
    );
    // An IPv6-only Pod is no error; an IPv4 Service just has no
    // endpoint of its family there.
    let v6_pod = format!(
        "{ECHO}{}",
        pod("p", "default", "echo", "\"2001:2:0:2::2\"", true, "")
    );
    assert!(table(&v6_pod).services[0].ports[0].endpoints.is_empty());
    let v6_in_v4 = format!(
        "{ECHO}{SLICE_HEAD}endpoints:\n- addresses: [198.18.3.1]\n- addresses: [\"2001:2:0:3::3\"]\n"
    );
    assert_eq!(
        error(&v6_in_v4),
        "document 2 (EndpointSlice default/echo-1): endpoints[1].addresses[0]: \
             2001:2:0:3::3 is an IPv6 address in an IPv4 EndpointSlice"
    );
    let no_address = format!("{ECHO}{SLICE_HEAD}endpoints:\n- addresses: []\n");
    assert_eq!(
        error(&no_address),
        "document 2 (EndpointSlice default/echo-1): endpoints[0].addresses: \
             no address: an endpoint needs at least one"
    );
    let slice_port = format!("{ECHO}{SLICE_HEAD}ports: [{{port: 0}}]\nendpoints: []\n");
    assert_eq!(
        error(&slice_port),
        "document 2 (EndpointSlice default/echo-1): ports[0].port: 0 is out of range 1-65535"
    );
    let container_port = format!(
        "{ECHO}{}",
        pod(
            "p",
            "default",
            "echo",
            "198.18.2.11",
            true,
            "spec:\n  containers:\n  - name: c\n    ports: [{containerPort: 70000}]\n"
        )
    );
    assert_eq!(
        error(&container_port),
        "document 2 (Pod default/p): spec.containers[0].ports[0].containerPort: \
             70000 is out of range 1-65535"
    );
}

#[test]
fn duplicates_name_both_objects() {
    let twice = format!(
        "{ECHO}---\n{}",
        ECHO.replace("198.18.100.10", "198.18.100.11")
    );
    assert_eq!(
        error(&twice),
        "document 2 (Service default/echo): defined twice, first at document 1 \
             (Service default/echo)"
    );
    let same_ip = format!("{}---\n{ECHO}", ECHO.replace("name: echo", "name: zeta"));
    assert_eq!(
        error(&same_ip),
        "document 2 (Service default/echo): spec.clusterIP: 198.18.100.10 is already \
             the ClusterIP of document 1 (Service default/zeta)"
    );
}

#[test]
fn full_cidr_is_an_error_naming_the_service() {
    let yaml: String = (0..4)
        .map(|i| format!("---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\n"))
        .collect();
    let objects = parse_control_file(&yaml).expect("parses");
    let small = cidrs(&["198.18.100.0/29"]); // 5 usable
    assert!(translate(&Objects::from_control_file(&objects), &small).is_ok());
    let tiny = cidrs(&["198.18.100.0/30"]); // 1 usable
    let error = translate(&Objects::from_control_file(&objects), &tiny)
        .expect_err("4 > 1")
        .to_string();
    assert!(
        error.starts_with("document ")
            && error.contains(
                "spec.clusterIP: no free address left in service CIDR \
                                   198.18.100.0/30 (1 usable addresses)"
            ),
        "unexpected: {error}"
    );
}

#[test]
fn first_error_in_file_order_and_lenient_keeps_the_rest() {
    let yaml = format!(
        "{}---\n{}---\n{ECHO}",
        service_doc("  ports: [{port: 80, protocol: SCTP}]\n").replace("name: echo", "name: z"),
        service_doc("  ports: [{port: 0}]\n").replace("name: echo", "name: a"),
    );
    let objects = parse_control_file(&yaml).expect("parses");
    let objects = Objects::from_control_file(&objects);
    assert!(error(&yaml).starts_with("document 1 (Service default/z)"));
    let (table, errors) = translate_lenient(&objects, &cidr());
    assert_eq!(errors.len(), 2);
    let names: Vec<String> = table.services.iter().map(|s| s.name.to_string()).collect();
    assert_eq!(names, ["default/echo"]);
}

#[test]
fn api_objects_are_named_without_a_document() {
    let objects = parse_control_file(&service_doc("  ports: [{port: 70000}]\n")).expect("parses");
    let services: Vec<core::Service> = objects.services.into_iter().map(|s| s.object).collect();
    let error = translate(&Objects::from_api(&services, [], []), &cidr())
        .expect_err("invalid")
        .to_string();
    assert_eq!(
        error,
        "Service default/echo: spec.ports[0].port: 70000 is out of range 1-65535"
    );
}

#[test]
fn session_affinity_client_ip_and_its_timeout() {
    let none = table(&service_doc("  ports: [{port: 80}]\n"));
    assert_eq!(service(&none, "default", "echo").session_affinity, None);
    let default = table(&service_doc(
        "  sessionAffinity: ClientIP\n  ports: [{port: 80}]\n",
    ));
    assert_eq!(
        service(&default, "default", "echo").session_affinity,
        Some(10_800)
    );
    let short = table(&service_doc(
        "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      \
             timeoutSeconds: 5\n  ports: [{port: 80}]\n",
    ));
    assert_eq!(service(&short, "default", "echo").session_affinity, Some(5));
    assert_eq!(
        error(&service_doc(
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      \
                 timeoutSeconds: 86401\n  ports: [{port: 80}]\n",
        )),
        "document 1 (Service default/echo): spec.sessionAffinityConfig.clientIP.timeoutSeconds: \
             86401 is out of range 1-86400 seconds"
    );
    assert_eq!(
        error(&service_doc(
            "  sessionAffinity: Cookie\n  ports: [{port: 80}]\n"
        )),
        "document 1 (Service default/echo): spec.sessionAffinity: unknown session affinity \
             \"Cookie\": expected None or ClientIP"
    );
}

/// What DNS needs beyond forwarding: hostnames of headless endpoints
/// from slices and from Pods' hostname/subdomain, the ExternalName
/// target, and publishNotReadyAddresses.
#[test]
fn dns_names_come_from_slices_pods_and_the_service() {
    let yaml = format!(
        "\
apiVersion: v1
kind: Service
metadata: {{name: db}}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector: {{app: db}}
  ports: [{{name: pg, port: 5432}}]
{}{}---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  clusterIP: None
  ports: [{{name: http, port: 80}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
- addresses: [198.18.5.1]
  hostname: web-0
- addresses: [198.18.5.2]
---
apiVersion: v1
kind: Service
metadata: {{name: ext}}
spec:
  type: ExternalName
  externalName: db.example.net.
",
        pod(
            "db-0",
            "default",
            "db",
            "198.18.4.1",
            false,
            "spec:\n  hostname: db-0\n  subdomain: db\n  containers: []\n"
        ),
        pod(
            "db-x",
            "default",
            "db",
            "198.18.4.2",
            true,
            "spec:\n  hostname: db-x\n  subdomain: other\n  containers: []\n"
        ),
    );
    let table = table(&yaml);
    let db = service(&table, "default", "db");
    assert!(db.publish_not_ready_addresses);
    let hostnames: Vec<_> = db.ports[0]
        .endpoints
        .iter()
        .map(|e| (e.ip.to_string(), e.hostname.clone()))
        .collect();
    assert_eq!(
        hostnames,
        [
            ("198.18.4.1".to_owned(), Some("db-0".to_owned())),
            ("198.18.4.2".to_owned(), None),
        ],
        "a Pod's hostname names it only under the Service its subdomain names"
    );
    let web = service(&table, "default", "web");
    assert!(!web.publish_not_ready_addresses);
    assert_eq!(web.ports[0].endpoints[0].hostname.as_deref(), Some("web-0"));
    assert_eq!(web.ports[0].endpoints[1].hostname, None);
    let ext = service(&table, "default", "ext");
    assert_eq!(ext.external_name.as_deref(), Some("db.example.net"));
    assert_eq!(web.external_name, None);
}

#[test]
fn external_name_must_be_a_dns_name() {
    for (spec, shown) in [
        ("  type: ExternalName\n", "\"\""),
        (
            "  type: ExternalName\n  externalName: Db.Example.net\n",
            "\"Db.Example.net\"",
        ),
        (
            "  type: ExternalName\n  externalName: db..example\n",
            "\"db..example\"",
        ),
    ] {
        assert_eq!(
            error(&service_doc(spec)),
            format!(
                "document 1 (Service default/echo): spec.externalName: {shown} is not a DNS \
                 name (lower-case RFC 1123 labels); type ExternalName needs one"
            ),
            "for spec {spec:?}"
        );
    }
}
