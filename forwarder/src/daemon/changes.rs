//! What a new service table changes, counted for the one log line each
//! applied table gets ("2 Services added, 5 endpoints removed, ..."): an
//! operator reading the log sees what a sync did without diffing tables.

use std::collections::BTreeMap;

use cipgw_config::{Endpoint, ServiceTable};

/// Services and endpoints added, removed and changed between two tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableChanges {
    pub services_added: usize,
    pub services_removed: usize,
    /// Services in both tables that differ in anything (ports, VIP,
    /// endpoints, affinity).
    pub services_changed: usize,
    pub endpoints_added: usize,
    pub endpoints_removed: usize,
    /// Endpoints in both tables whose conditions (ready, serving,
    /// terminating) or Pod changed.
    pub endpoints_changed: usize,
}

/// One endpoint of one service port: (Service, port, protocol, IP,
/// target port).
type EndpointKey = (String, u16, u8, std::net::IpAddr, u16);

fn endpoints(table: &ServiceTable) -> BTreeMap<EndpointKey, &Endpoint> {
    let mut all = BTreeMap::new();
    for service in &table.services {
        let name = service.name.to_string();
        for port in &service.ports {
            for e in &port.endpoints {
                let key = (name.clone(), port.port, port.protocol as u8, e.ip, e.port);
                all.insert(key, e);
            }
        }
    }
    all
}

impl TableChanges {
    pub fn between(old: &ServiceTable, new: &ServiceTable) -> Self {
        let mut changes = TableChanges::default();
        for service in &new.services {
            match old.get(&service.name) {
                None => changes.services_added += 1,
                Some(before) if before != service => changes.services_changed += 1,
                Some(_) => {}
            }
        }
        changes.services_removed = old
            .services
            .iter()
            .filter(|s| new.get(&s.name).is_none())
            .count();
        let (before, after) = (endpoints(old), endpoints(new));
        for (key, endpoint) in &after {
            match before.get(key) {
                None => changes.endpoints_added += 1,
                Some(was) if was != endpoint => changes.endpoints_changed += 1,
                Some(_) => {}
            }
        }
        changes.endpoints_removed = before.keys().filter(|k| !after.contains_key(*k)).count();
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cipgw_config::{
        ClusterIp, EndpointState, Protocol, Service, ServiceKind, ServiceName, ServicePort,
        TargetPort,
    };

    fn service(name: &str, endpoints: &[(u8, bool)]) -> Service {
        Service {
            name: ServiceName::new("default", name),
            kind: ServiceKind::ClusterIp,
            cluster_ip: ClusterIp::single(std::net::IpAddr::from([198, 18, 100, 1])),
            ip_family_policy: cipgw_config::IpFamilyPolicy::SingleStack,
            ip_families: vec![cipgw_config::IpFamily::V4],
            ports: vec![ServicePort {
                name: None,
                port: 80,
                protocol: Protocol::Tcp,
                target_port: TargetPort::Number(8080),
                endpoints: endpoints
                    .iter()
                    .map(|&(last, ready)| Endpoint {
                        ip: [198, 18, 2, last].into(),
                        port: 8080,
                        state: EndpointState {
                            ready,
                            serving: true,
                            terminating: !ready,
                        },
                        pod: None,
                        hostname: None,
                    })
                    .collect(),
            }],
            session_affinity: None,
            lb_algorithm: None,
            external_name: None,
            publish_not_ready_addresses: false,
        }
    }

    #[test]
    fn counts_services_and_endpoints_added_removed_changed() {
        let old = ServiceTable {
            services: vec![
                service("a", &[(1, true), (2, true)]),
                service("b", &[(3, true)]),
            ],
        };
        let new = ServiceTable {
            services: vec![service("a", &[(1, false), (4, true)]), service("c", &[])],
        };
        let c = TableChanges::between(&old, &new);
        assert_eq!(
            c,
            TableChanges {
                services_added: 1,
                services_removed: 1,
                services_changed: 1,
                endpoints_added: 1,
                endpoints_removed: 2,
                endpoints_changed: 1,
            }
        );
        assert_eq!(TableChanges::between(&new, &new), TableChanges::default());
    }
}
