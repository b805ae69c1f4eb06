//! The human-readable service table that `cipgw check` prints.
//!
//! One line per forwarded `VIP:port/protocol`, sorted by VIP (IPv4 before
//! IPv6) then port, listing the endpoints of the VIP's own family (a
//! dual-stack Service has lines for each of its VIPs; an IPv6 address is
//! written in brackets before a port: `[2001:2::a]:80/tcp`), followed by the services that are listed but never forwarded: headless
//! ones (one line per port, with the endpoints clients reach directly) and
//! ExternalName ones. Endpoints that the data plane would not pick for a
//! new connection are marked: `(not-ready)`, `(terminating)`, or
//! `(terminating,serving)`.
//!
//! ```text
//! 198.18.100.10:8080/tcp  default/echo-server (ClusterIP)  -> 198.18.2.11:5678, 198.18.2.12:5678
//! headless                default/db (ClusterIP, headless)  port 5432/tcp -> 198.18.3.1:5432
//! -                       default/ext (ExternalName)        not forwarded
//! ```
//!
//! The objects of a control file that cipgw skipped ([`render_skipped`])
//! follow as a section of their own, one line each, in file order:
//!
//! ```text
//! skipped 2 objects of kinds cipgw does not read:
//!   Deployment default/echo-server (document 1)
//!   ReplicaSet default/echo-server-7c9f8d6b5 (document 3, items[4])
//! ```

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::control_file::{Located, Skipped};
use crate::model::{ClusterIp, Endpoint, IpFamily, Service, ServicePort, ServiceTable};

/// Renders `table` as lines of text, each ending in a newline; an empty
/// table renders as `(no services)`.
pub fn render_table(table: &ServiceTable) -> String {
    let mut rows: Vec<Row> = Vec::new();

    let mut forwarded: Vec<(&Service, IpAddr)> = table
        .forwarded()
        .flat_map(|(service, vips)| vips.iter().map(move |vip| (service, vip)))
        .collect();
    forwarded.sort_by_key(|(service, vip)| (*vip, &service.name));
    let mut vip_rows = Vec::new();
    for (service, vip) in forwarded {
        let who = describe(service, "", "");
        if service.ports.is_empty() {
            vip_rows.push((vip, 0, 0, Row::new(vip.to_string(), who, "(no ports)")));
        }
        for port in &service.ports {
            vip_rows.push((
                vip,
                port.port,
                port.protocol.ip_number(),
                Row::new(
                    format!("{}/{}", SocketAddr::new(vip, port.port), port.protocol),
                    describe(service, &port_suffix(port), ""),
                    format!("-> {}", endpoints(port, Some(IpFamily::of(vip)))),
                ),
            ));
        }
    }
    // Sorted by VIP, then port, then protocol (TCP before UDP).
    vip_rows.sort_by_key(|(vip, port, protocol, _)| (*vip, *port, *protocol));
    rows.extend(vip_rows.into_iter().map(|(_, _, _, row)| row));

    // Services are sorted by name already; keep that order.
    for service in &table.services {
        match service.cluster_ip {
            ClusterIp::Vips(_) | ClusterIp::ExternalName => {}
            ClusterIp::Headless => {
                let who = describe(service, "", ", headless");
                if service.ports.is_empty() {
                    rows.push(Row::new("headless".into(), who.clone(), "no ports"));
                }
                let mut ports: Vec<&ServicePort> = service.ports.iter().collect();
                ports.sort_by_key(|p| (p.port, p.protocol));
                for port in ports {
                    rows.push(Row::new(
                        "headless".into(),
                        who.clone(),
                        format!(
                            "port {}/{}{} -> {}",
                            port.port,
                            port.protocol,
                            port.name
                                .as_deref()
                                .map(|n| format!(" ({n})"))
                                .unwrap_or_default(),
                            endpoints(port, None)
                        ),
                    ));
                }
            }
        }
    }
    for service in &table.services {
        if service.cluster_ip == ClusterIp::ExternalName {
            rows.push(Row::new(
                "-".into(),
                format!("{} ({})", service.name, service.kind.as_str()),
                "not forwarded",
            ));
        }
    }

    if rows.is_empty() {
        return "(no services)\n".to_owned();
    }
    let first = rows.iter().map(|r| r.vip.len()).max().unwrap_or(0);
    let second = rows.iter().map(|r| r.who.len()).max().unwrap_or(0);
    let mut out = String::new();
    for row in rows {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{:first$}  {:second$}  {}", row.vip, row.who, row.rest);
    }
    out
}

/// Renders the objects a control file's parse skipped as a heading line
/// and one indented line per object, each ending in a newline; nothing
/// when none was skipped.
pub fn render_skipped(skipped: &[Located<Skipped>]) -> String {
    let mut out = String::new();
    match skipped.len() {
        0 => return out,
        1 => out.push_str("skipped 1 object of a kind cipgw does not read:\n"),
        n => {
            let _ = writeln!(out, "skipped {n} objects of kinds cipgw does not read:");
        }
    }
    for Located { location, object } in skipped {
        let _ = writeln!(out, "  {object} ({location})");
    }
    out
}

impl ServiceTable {
    /// The table as `cipgw check` prints it; see [`render_table`].
    pub fn render(&self) -> String {
        render_table(self)
    }
}

struct Row {
    vip: String,
    who: String,
    rest: String,
}

impl Row {
    fn new(vip: String, who: String, rest: impl Into<String>) -> Self {
        Self {
            vip,
            who,
            rest: rest.into(),
        }
    }
}

/// `default/echo:http (ClusterIP, headless)`: the name (with the port name,
/// as kube-proxy names a service port) and the type.
fn describe(service: &Service, port: &str, extra: &str) -> String {
    let affinity = service
        .session_affinity
        .map(|t| format!(", affinity ClientIP {t}s"))
        .unwrap_or_default();
    format!(
        "{}{port} ({}{affinity}{extra})",
        service.name,
        service.kind.as_str()
    )
}

fn port_suffix(port: &ServicePort) -> String {
    port.name
        .as_deref()
        .map(|name| format!(":{name}"))
        .unwrap_or_default()
}

/// The endpoints of `family` (all with `None`), `ip:port` each
/// (`[ip]:port` for IPv6).
fn endpoints(port: &ServicePort, family: Option<IpFamily>) -> String {
    let mut out = String::new();
    let listed = port
        .endpoints
        .iter()
        .filter(|e| family.map_or(true, |f| IpFamily::of(e.ip) == f));
    for (i, endpoint) in listed.enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let address = SocketAddr::new(endpoint.ip, endpoint.port);
        let _ = write!(out, "{address}{}", mark(endpoint));
    }
    if out.is_empty() {
        return "(no endpoints)".to_owned();
    }
    out
}

/// Why the data plane would not pick this endpoint for a new connection
/// (or, for a ready terminating one, that it is on its way out).
fn mark(endpoint: &Endpoint) -> &'static str {
    let state = endpoint.state;
    match (state.ready, state.serving, state.terminating) {
        (true, _, false) => "",
        (false, _, false) => "(not-ready)",
        (_, true, true) => "(terminating,serving)",
        (_, false, true) => "(terminating)",
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::model::{
        EndpointState, IpFamilyPolicy, Protocol, ServiceKind, ServiceName, TargetPort, Vips,
    };

    fn endpoint(last: u8, port: u16, state: EndpointState) -> Endpoint {
        Endpoint {
            ip: Ipv4Addr::new(198, 18, 2, last).into(),
            port,
            state,
            pod: None,
            hostname: None,
        }
    }

    fn port(
        name: Option<&str>,
        port: u16,
        protocol: Protocol,
        endpoints: Vec<Endpoint>,
    ) -> ServicePort {
        ServicePort {
            name: name.map(str::to_owned),
            port,
            protocol,
            target_port: TargetPort::Number(port),
            endpoints,
        }
    }

    fn service(name: &str, kind: ServiceKind, ip: ClusterIp, ports: Vec<ServicePort>) -> Service {
        Service {
            name: ServiceName::new("default", name),
            kind,
            cluster_ip: ip,
            ip_family_policy: IpFamilyPolicy::SingleStack,
            ip_families: ip.vips().map(IpFamily::of).collect(),
            session_affinity: None,
            lb_algorithm: None,
            external_name: None,
            publish_not_ready_addresses: false,
            ports,
        }
    }

    #[test]
    fn renders_sorted_lines_with_marks() {
        let vip = |last| ClusterIp::single(Ipv4Addr::new(198, 18, 100, last).into());
        let terminating = EndpointState {
            ready: false,
            serving: false,
            terminating: true,
        };
        let not_ready = EndpointState {
            ready: false,
            serving: false,
            terminating: false,
        };
        let table = ServiceTable {
            services: vec![
                service(
                    "db",
                    ServiceKind::ClusterIp,
                    ClusterIp::Headless,
                    vec![port(
                        None,
                        5432,
                        Protocol::Tcp,
                        vec![endpoint(21, 5432, EndpointState::READY)],
                    )],
                ),
                service(
                    "echo-server",
                    ServiceKind::ClusterIp,
                    vip(10),
                    vec![port(
                        None,
                        8080,
                        Protocol::Tcp,
                        vec![
                            endpoint(11, 5678, EndpointState::READY),
                            endpoint(14, 5678, terminating),
                            endpoint(15, 5678, not_ready),
                        ],
                    )],
                ),
                service(
                    "ext",
                    ServiceKind::ExternalName,
                    ClusterIp::ExternalName,
                    vec![],
                ),
                service(
                    "web",
                    ServiceKind::NodePort,
                    vip(5),
                    vec![
                        port(Some("https"), 443, Protocol::Tcp, vec![]),
                        port(
                            Some("dns"),
                            53,
                            Protocol::Udp,
                            vec![endpoint(30, 53, EndpointState::READY)],
                        ),
                    ],
                ),
            ],
        };
        let expected = "\
198.18.100.5:53/udp     default/web:dns (NodePort)        -> 198.18.2.30:53
198.18.100.5:443/tcp    default/web:https (NodePort)      -> (no endpoints)
198.18.100.10:8080/tcp  default/echo-server (ClusterIP)   -> 198.18.2.11:5678, 198.18.2.14:5678(terminating), 198.18.2.15:5678(not-ready)
headless                default/db (ClusterIP, headless)  port 5432/tcp -> 198.18.2.21:5432
-                       default/ext (ExternalName)        not forwarded
";
        assert_eq!(table.render(), expected);
    }

    #[test]
    fn renders_each_vip_of_a_dual_stack_service_with_its_family() {
        let v6 = |last: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0xff, 0, 0, 0, last));
        let endpoint6 = |last: u16, state| Endpoint {
            ip: IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, last)),
            port: 8080,
            state,
            pod: None,
            hostname: None,
        };
        let vips =
            Vips::dual(v6(10), Ipv4Addr::new(198, 18, 100, 10).into()).expect("two families");
        let mut web = service(
            "web",
            ServiceKind::ClusterIp,
            ClusterIp::Vips(vips),
            vec![port(
                None,
                80,
                Protocol::Tcp,
                vec![
                    endpoint(11, 8080, EndpointState::READY),
                    endpoint6(11, EndpointState::READY),
                    endpoint6(
                        12,
                        EndpointState {
                            ready: false,
                            serving: false,
                            terminating: false,
                        },
                    ),
                ],
            )],
        );
        web.ip_family_policy = IpFamilyPolicy::RequireDualStack;
        let mut db = service(
            "db",
            ServiceKind::ClusterIp,
            ClusterIp::Headless,
            vec![port(
                None,
                5432,
                Protocol::Tcp,
                vec![
                    endpoint(21, 5432, EndpointState::READY),
                    Endpoint {
                        port: 5432,
                        ..endpoint6(21, EndpointState::READY)
                    },
                ],
            )],
        );
        db.ip_families = vec![IpFamily::V4, IpFamily::V6];
        let table = ServiceTable {
            services: vec![db, web],
        };
        let expected = "\
198.18.100.10:80/tcp     default/web (ClusterIP)           -> 198.18.2.11:8080
[2001:2:0:ff::a]:80/tcp  default/web (ClusterIP)           -> [2001:2:0:2::b]:8080, [2001:2:0:2::c]:8080(not-ready)
headless                 default/db (ClusterIP, headless)  port 5432/tcp -> 198.18.2.21:5432, [2001:2:0:2::15]:5432
";
        assert_eq!(table.render(), expected);
    }

    #[test]
    fn renders_skipped_objects_in_order() {
        let skipped = |document, item, kind: &str, namespace: Option<&str>, name: &str| Located {
            location: crate::control_file::Location { document, item },
            object: Skipped {
                api_version: "apps/v1".to_owned(),
                kind: kind.to_owned(),
                namespace: namespace.map(str::to_owned),
                name: Some(name.to_owned()),
            },
        };
        let objects = [
            skipped(1, None, "Deployment", Some("default"), "echo-server"),
            skipped(3, Some(4), "Namespace", None, "shop"),
        ];
        assert_eq!(
            render_skipped(&objects),
            "\
skipped 2 objects of kinds cipgw does not read:
  Deployment default/echo-server (document 1)
  Namespace shop (document 3, items[4])
"
        );
        assert_eq!(
            render_skipped(&objects[..1]),
            "skipped 1 object of a kind cipgw does not read:\n  \
             Deployment default/echo-server (document 1)\n"
        );
        assert_eq!(render_skipped(&[]), "");
    }

    #[test]
    fn empty_table() {
        assert_eq!(render_table(&ServiceTable::default()), "(no services)\n");
    }
}
