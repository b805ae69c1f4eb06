//! What a new service table changes, worked out before anything is
//! touched: a pure function of the table before, the table after, the
//! targets carried over from earlier changes and what the XDP maps hold,
//! so that every case is a unit test. [`super::apply`] carries it out.
//!
//! A *target* is where flows go as a table knows it: VIP, port, protocol,
//! endpoint address and port ([`Target`], of either family: a VIP only
//! ever has endpoints of its own family). A change ends the flows to
//! every target it removes ([`Plan::retiring`]): the new table carries
//! that set, so workers end such flows at their next packet, and once no
//! worker uses an older table the daemon removes the rest from conntrack.
//! Targets to end come not only from the old table: the first table of a
//! gateway that adopted flows from its predecessor ends adopted flows to
//! targets it lacks, and every table ends the open TCP connections the
//! last retirement pass left to their next packet (*lingering*); both are
//! *carried* into the plan.
//!
//! The XDP maps change make-before-break around the publication of the
//! table: the entries the new table needs are added before it, the ones
//! nobody needs are removed after it. The backends of retiring targets
//! stay steered until the retirement pass, so that a reply racing the
//! change (a SYN-ACK) still reaches a worker instead of the kernel (which
//! would forward it un-NATed); after the pass only those of lingering
//! targets stay.
//!
//! Map changes are worked out against what the maps hold, not against the
//! old table: they can hold more (the previous gateway's entries until the
//! first sync, lingering targets' backends, what a failed apply left), and
//! a plan from the tables alone would leave that there for good.

use std::collections::HashSet;
use std::net::IpAddr;

use cipgw_config::ServiceTable;

use crate::bpf::{BackendKey, Steering};
use crate::family::IpFamily;
use crate::table::FlowTarget;

/// A target of either family.
pub type Target = FlowTarget<IpAddr>;

/// `target` as a target of family `A`, if it is one.
pub(crate) fn family_target<A: IpFamily>(
    &(vip, port, protocol, ip, target_port): &Target,
) -> Option<FlowTarget<A>> {
    Some((
        A::from_ip(vip)?,
        port,
        protocol,
        A::from_ip(ip)?,
        target_port,
    ))
}

/// The target of a family's flow.
pub(crate) fn target_of<A: Into<IpAddr>>(
    vip: A,
    port: u16,
    protocol: cipgw_config::Protocol,
    (ip, target_port): (A, u16),
) -> Target {
    (vip.into(), port, protocol, ip.into(), target_port)
}

/// Every target of a model, whatever the endpoint's state: flows to
/// anything in here may go on; flows to anything not in here lost their
/// endpoint or port. A VIP's targets are its family's endpoints.
pub(crate) fn flow_targets(model: &ServiceTable) -> HashSet<Target> {
    let mut targets = HashSet::new();
    for (service, vips) in model.forwarded() {
        for vip in vips.iter() {
            for port in &service.ports {
                for e in &port.endpoints {
                    if e.ip.is_ipv4() == vip.is_ipv4() {
                        targets.insert((vip, port.port, port.protocol, e.ip, e.port));
                    }
                }
            }
        }
    }
    targets
}

/// The backend whose replies flows to `target` come from.
fn backend_of(&(_, _, protocol, ip, port): &Target) -> BackendKey {
    (ip, port, protocol.ip_number())
}

/// What the XDP maps must hold for `model`, whose targets are
/// `targets`: every VIP (traffic to one is the gateway's, ports or not)
/// and every endpoint of a forwarded Service (its replies).
fn steering_with(model: &ServiceTable, targets: &HashSet<Target>) -> Steering {
    Steering {
        vips: model
            .forwarded()
            .flat_map(|(_, vips)| vips.iter())
            .collect(),
        backends: targets.iter().map(backend_of).collect(),
    }
}

/// What the XDP maps must hold for `model`.
pub(crate) fn steering_of(model: &ServiceTable) -> Steering {
    steering_with(model, &flow_targets(model))
}

/// One table change, worked out: see the module doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The new table's targets: flows to anything else end.
    targets: HashSet<Target>,
    /// Targets of the old table or carried in that the new one lacks.
    retiring: HashSet<Target>,
    /// Map entries to add before the new table is published.
    add: Steering,
    /// Map entries to remove once it is published.
    remove: Steering,
    /// Backends steered only for retiring targets: removed after the
    /// retirement pass, but for those lingering targets still need.
    retiring_backends: HashSet<BackendKey>,
}

impl Plan {
    /// The change from `old` to `new`, ending also the flows to the
    /// `carried` targets `new` lacks, for maps that hold `held`.
    pub fn new(
        old: &ServiceTable,
        new: &ServiceTable,
        carried: impl IntoIterator<Item = Target>,
        held: &Steering,
    ) -> Plan {
        let targets = flow_targets(new);
        let wanted = steering_with(new, &targets);
        let mut retiring = flow_targets(old);
        retiring.extend(carried);
        retiring.retain(|t| !targets.contains(t));
        let retiring_backends: HashSet<BackendKey> = retiring
            .iter()
            .map(backend_of)
            .filter(|b| !wanted.backends.contains(b))
            .collect();
        let add = Steering {
            vips: wanted.vips.difference(&held.vips).copied().collect(),
            backends: wanted
                .backends
                .union(&retiring_backends)
                .filter(|b| !held.backends.contains(b))
                .copied()
                .collect(),
        };
        let remove = Steering {
            vips: held.vips.difference(&wanted.vips).copied().collect(),
            backends: held
                .backends
                .iter()
                .filter(|b| !wanted.backends.contains(b) && !retiring_backends.contains(b))
                .copied()
                .collect(),
        };
        Plan {
            targets,
            retiring,
            add,
            remove,
            retiring_backends,
        }
    }

    /// The targets whose flows the new table ends.
    pub fn retiring(&self) -> &HashSet<Target> {
        &self.retiring
    }

    /// The retiring targets of family `A`.
    pub fn retiring_of<A: IpFamily>(&self) -> impl Iterator<Item = FlowTarget<A>> + '_ {
        self.retiring.iter().filter_map(family_target)
    }

    /// Whether flows to `target` go on under the new table.
    pub fn keeps(&self, target: &Target) -> bool {
        self.targets.contains(target)
    }

    /// The map entries to add before the new table is published: its VIPs
    /// and backends, and the retiring targets' backends, that the maps
    /// lack.
    pub fn add(&self) -> &Steering {
        &self.add
    }

    /// The map entries to remove once the new table is published: what
    /// the maps hold that neither it nor a retiring target needs.
    pub fn remove(&self) -> &Steering {
        &self.remove
    }

    /// The backends to stop steering after the retirement pass, which
    /// left the `lingering` targets to their next packet: those steered
    /// only for retiring targets, but for the lingering ones'.
    pub fn released(&self, lingering: &HashSet<Target>) -> HashSet<BackendKey> {
        let still_needed: HashSet<BackendKey> = lingering.iter().map(backend_of).collect();
        self.retiring_backends
            .difference(&still_needed)
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use cipgw_config::{
        ClusterIp, Endpoint, EndpointState, Protocol, Service, ServiceKind, ServiceName,
        ServicePort, TargetPort,
    };

    use super::*;

    const VIP_A: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 19, 0, 1));
    const VIP_B: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 19, 0, 2));
    const POD1: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1));
    const POD2: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2));
    const POD3: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 3));

    /// A port: (port, protocol, target port, endpoint addresses).
    type Port = (u16, Protocol, u16, &'static [IpAddr]);

    fn service(name: &str, vip: IpAddr, ports: &[Port]) -> Service {
        Service {
            name: ServiceName::new("default", name),
            kind: ServiceKind::ClusterIp,
            cluster_ip: ClusterIp::single(vip),
            ip_family_policy: cipgw_config::IpFamilyPolicy::SingleStack,
            ip_families: vec![cipgw_config::IpFamily::V4],
            session_affinity: None,
            lb_algorithm: None,
            external_name: None,
            publish_not_ready_addresses: false,
            ports: ports
                .iter()
                .map(|&(port, protocol, target, pods)| ServicePort {
                    name: None,
                    port,
                    protocol,
                    target_port: TargetPort::Number(target),
                    endpoints: pods
                        .iter()
                        .map(|&ip| Endpoint {
                            ip,
                            port: target,
                            state: EndpointState::READY,
                            pod: None,
                            hostname: None,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    fn table(services: Vec<Service>) -> ServiceTable {
        ServiceTable { services }
    }

    /// Service `a` (TCP 80 -> 8080 on POD1 and POD2, UDP 53 -> 5353 on
    /// POD1) and service `b` (TCP 443 -> 8443 on POD3).
    fn base() -> ServiceTable {
        table(vec![
            service(
                "a",
                VIP_A,
                &[
                    (80, Protocol::Tcp, 8080, &[POD1, POD2]),
                    (53, Protocol::Udp, 5353, &[POD1]),
                ],
            ),
            service("b", VIP_B, &[(443, Protocol::Tcp, 8443, &[POD3])]),
        ])
    }

    fn set<T: std::hash::Hash + Eq + Copy>(items: &[T]) -> HashSet<T> {
        items.iter().copied().collect()
    }

    /// The plan from `old` to `new` for maps that hold what `old` needs.
    fn plan(old: &ServiceTable, new: &ServiceTable, carried: &[Target]) -> Plan {
        Plan::new(old, new, carried.iter().copied(), &steering_of(old))
    }

    /// What the maps hold after `plan` is applied up to the retirement
    /// pass (which left `lingering`), and after it.
    fn maps_after(held: &Steering, plan: &Plan, lingering: &[Target]) -> (Steering, Steering) {
        let mut maps = held.clone();
        maps.vips.extend(&plan.add().vips);
        maps.backends.extend(&plan.add().backends);
        maps.vips.retain(|v| !plan.remove().vips.contains(v));
        maps.backends
            .retain(|b| !plan.remove().backends.contains(b));
        let published = maps.clone();
        if !plan.retiring().is_empty() {
            let released = plan.released(&set(lingering));
            maps.backends.retain(|b| !released.contains(b));
        }
        (published, maps)
    }

    /// A dual-stack Service is steered by both VIPs, each with its own
    /// family's endpoints, and compiled so on both sides.
    #[test]
    fn a_dual_stack_service_is_forwarded_by_both_families() {
        use std::net::Ipv6Addr;
        let mut a = service("a", VIP_A, &[(80, Protocol::Tcp, 8080, &[POD1])]);
        let vip6 = Ipv6Addr::new(0x2001, 2, 0, 0xff, 0, 0, 0, 1);
        let pod6 = Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 1);
        a.cluster_ip =
            ClusterIp::Vips(cipgw_config::Vips::dual(vip6.into(), VIP_A).expect("two families"));
        a.ip_families = vec![cipgw_config::IpFamily::V6, cipgw_config::IpFamily::V4];
        let v6_endpoint = Endpoint {
            ip: pod6.into(),
            ..a.ports[0].endpoints[0].clone()
        };
        a.ports[0].endpoints.push(v6_endpoint);
        let model = table(vec![a]);
        let steering = steering_of(&model);
        assert_eq!(steering.vips, HashSet::from([VIP_A, vip6.into()]));
        let tcp = Protocol::Tcp.ip_number();
        assert_eq!(
            steering.backends,
            HashSet::from([(POD1, 8080, tcp), (pod6.into(), 8080, tcp)])
        );
        assert_eq!(
            flow_targets(&model),
            HashSet::from([
                (VIP_A, 80, Protocol::Tcp, POD1, 8080),
                (vip6.into(), 80, Protocol::Tcp, pod6.into(), 8080),
            ]),
            "a VIP's targets are its own family's endpoints"
        );
        let compiled = crate::table::CompiledTable::compile(std::sync::Arc::new(model), 1);
        let entry = compiled
            .v6()
            .port_entry(&crate::table::ServiceKey {
                vip: vip6,
                port: 80,
                protocol: Protocol::Tcp,
            })
            .expect("the IPv6 VIP's port");
        assert_eq!(entry.backends.len(), 1, "the IPv6 endpoint only");
        assert_eq!(entry.backends[0].ip, pod6);
    }

    #[test]
    fn nothing_changed_changes_nothing() {
        let p = plan(&base(), &base(), &[]);
        assert!(p.retiring().is_empty());
        assert!(p.add().is_empty(), "{:?}", p.add());
        assert!(p.remove().is_empty(), "{:?}", p.remove());
        assert!(p.released(&HashSet::new()).is_empty());
        assert!(p.keeps(&(VIP_A, 80, Protocol::Tcp, POD2, 8080)));
    }

    #[test]
    fn a_removed_endpoint_retires_its_targets_and_stays_steered_until_the_pass() {
        let new = table(vec![
            service(
                "a",
                VIP_A,
                &[
                    (80, Protocol::Tcp, 8080, &[POD1]),
                    (53, Protocol::Udp, 5353, &[POD1]),
                ],
            ),
            service("b", VIP_B, &[(443, Protocol::Tcp, 8443, &[POD3])]),
        ]);
        let p = plan(&base(), &new, &[]);
        let gone = (VIP_A, 80, Protocol::Tcp, POD2, 8080);
        assert_eq!(p.retiring(), &set(&[gone]));
        assert!(!p.keeps(&gone));
        assert!(p.add().is_empty(), "{:?}", p.add());
        assert!(
            p.remove().is_empty(),
            "POD2's backend stays steered until the retirement pass: {:?}",
            p.remove()
        );
        assert_eq!(p.released(&HashSet::new()), set(&[(POD2, 8080, 6)]));
        assert!(
            p.released(&set(&[gone])).is_empty(),
            "a lingering connection keeps its backend steered"
        );
        let (published, settled) = maps_after(&steering_of(&base()), &p, &[]);
        assert_eq!(published, steering_of(&base()));
        assert_eq!(settled, steering_of(&new));
    }

    #[test]
    fn a_removed_port_retires_its_targets_but_not_a_backend_another_port_uses() {
        // The UDP port goes; POD1 still serves TCP 8080, not UDP 5353.
        let new = table(vec![
            service("a", VIP_A, &[(80, Protocol::Tcp, 8080, &[POD1, POD2])]),
            service("b", VIP_B, &[(443, Protocol::Tcp, 8443, &[POD3])]),
        ]);
        let p = plan(&base(), &new, &[]);
        assert_eq!(
            p.retiring(),
            &set(&[(VIP_A, 53, Protocol::Udp, POD1, 5353)])
        );
        assert!(p.remove().is_empty(), "{:?}", p.remove());
        assert_eq!(p.released(&HashSet::new()), set(&[(POD1, 5353, 17)]));
        let (_, settled) = maps_after(&steering_of(&base()), &p, &[]);
        assert_eq!(settled, steering_of(&new));
        assert!(settled.backends.contains(&(POD1, 8080, 6)));
    }

    #[test]
    fn a_removed_service_loses_its_vip_at_publication_and_its_backends_after_the_pass() {
        let new = table(vec![service(
            "a",
            VIP_A,
            &[
                (80, Protocol::Tcp, 8080, &[POD1, POD2]),
                (53, Protocol::Udp, 5353, &[POD1]),
            ],
        )]);
        let p = plan(&base(), &new, &[]);
        let gone = (VIP_B, 443, Protocol::Tcp, POD3, 8443);
        assert_eq!(p.retiring(), &set(&[gone]));
        assert_eq!(p.remove().vips, set(&[VIP_B]));
        assert!(p.remove().backends.is_empty());
        assert_eq!(p.released(&HashSet::new()), set(&[(POD3, 8443, 6)]));
        let (_, settled) = maps_after(&steering_of(&base()), &p, &[gone]);
        assert!(
            settled.backends.contains(&(POD3, 8443, 6)),
            "an open connection to the removed Service keeps its replies steered"
        );
    }

    #[test]
    fn a_new_service_and_endpoint_are_steered_before_publication() {
        const VIP_C: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 19, 0, 3));
        const POD4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 1, 4));
        let mut new = base();
        new.services
            .push(service("c", VIP_C, &[(80, Protocol::Tcp, 80, &[POD4])]));
        let p = plan(&base(), &new, &[]);
        assert!(p.retiring().is_empty());
        assert_eq!(p.add().vips, set(&[VIP_C]));
        assert_eq!(p.add().backends, set(&[(POD4, 80, 6)]));
        assert!(p.remove().is_empty());
    }

    #[test]
    fn adopted_targets_the_first_table_lacks_are_retired() {
        // The gateway before us had a flow to POD3 behind VIP_A: the
        // first table ends it as if its own old table had had it.
        let adopted = [
            (VIP_A, 80, Protocol::Tcp, POD3, 8080),
            (VIP_A, 80, Protocol::Tcp, POD1, 8080),
        ];
        let empty = ServiceTable::default();
        // Until the first sync the maps hold what the gateway before us
        // steered (inherited), here including POD3's backend.
        let mut held = Steering::default();
        held.vips.insert(VIP_A);
        held.backends.insert((POD3, 8080, 6));
        let p = Plan::new(&empty, &base(), adopted, &held);
        assert_eq!(
            p.retiring(),
            &set(&[(VIP_A, 80, Protocol::Tcp, POD3, 8080)]),
            "the adopted target the table still has goes on"
        );
        assert!(!p.add().backends.contains(&(POD3, 8080, 6)), "already held");
        assert!(p.remove().is_empty(), "{:?}", p.remove());
        assert_eq!(p.released(&HashSet::new()), set(&[(POD3, 8080, 6)]));
        let (_, settled) = maps_after(&held, &p, &[]);
        assert_eq!(settled, steering_of(&base()));
    }

    #[test]
    fn what_the_maps_hold_beyond_both_tables_is_removed_at_publication() {
        // The previous gateway's VIP and backend, inherited at start-up.
        let mut held = steering_of(&base());
        held.vips.insert(Ipv4Addr::new(198, 19, 9, 9).into());
        held.backends
            .insert((Ipv4Addr::new(198, 18, 9, 9).into(), 80, 6));
        let p = Plan::new(&base(), &base(), [], &held);
        assert!(p.add().is_empty());
        assert_eq!(
            p.remove().vips,
            set(&[IpAddr::from(Ipv4Addr::new(198, 19, 9, 9))])
        );
        assert_eq!(
            p.remove().backends,
            set(&[(IpAddr::from(Ipv4Addr::new(198, 18, 9, 9)), 80, 6)])
        );
    }

    #[test]
    fn lingering_targets_are_retired_again_by_the_next_table() {
        // POD2 left the TCP port; a connection to it was still open at
        // the retirement pass, so its backend stayed steered.
        let mut without_pod2 = base();
        without_pod2.services[0].ports[0].endpoints.remove(1);
        let lingering = (VIP_A, 80, Protocol::Tcp, POD2, 8080);
        let first = plan(&base(), &without_pod2, &[]);
        let (_, held) = maps_after(&steering_of(&base()), &first, &[lingering]);
        assert!(held.backends.contains(&(POD2, 8080, 6)));

        // The next change (b loses POD3) ends it again, and its backend
        // goes once the pass finds it settled.
        let mut next = without_pod2.clone();
        next.services[1].ports[0].endpoints.clear();
        let p = Plan::new(&without_pod2, &next, [lingering], &held);
        assert_eq!(
            p.retiring(),
            &set(&[lingering, (VIP_B, 443, Protocol::Tcp, POD3, 8443)])
        );
        assert!(p.add().is_empty(), "{:?}", p.add());
        assert!(p.remove().is_empty(), "{:?}", p.remove());
        assert_eq!(
            p.released(&HashSet::new()),
            set(&[(POD2, 8080, 6), (POD3, 8443, 6)])
        );
        let (_, settled) = maps_after(&held, &p, &[]);
        assert_eq!(settled, steering_of(&next));
    }

    #[test]
    fn a_target_that_disappears_and_reappears_is_kept() {
        let mut without_pod2 = base();
        without_pod2.services[0].ports[0].endpoints.remove(1);
        let target = (VIP_A, 80, Protocol::Tcp, POD2, 8080);
        let gone = plan(&base(), &without_pod2, &[]);
        assert_eq!(gone.retiring(), &set(&[target]));
        // An open connection to it lingers; then POD2 is back.
        let (_, held) = maps_after(&steering_of(&base()), &gone, &[target]);
        let back = Plan::new(&without_pod2, &base(), [target], &held);
        assert!(back.retiring().is_empty(), "{:?}", back.retiring());
        assert!(back.keeps(&target));
        assert!(back.add().is_empty(), "still steered: {:?}", back.add());
        assert!(back.remove().is_empty(), "{:?}", back.remove());
        assert!(back.released(&HashSet::new()).is_empty());

        // Without a lingering connection its backend went, and comes back
        // before publication.
        let (_, held) = maps_after(&steering_of(&base()), &gone, &[]);
        let back = Plan::new(&without_pod2, &base(), [], &held);
        assert!(back.retiring().is_empty());
        assert_eq!(back.add().backends, set(&[(POD2, 8080, 6)]));
    }

    #[test]
    fn headless_and_external_services_are_never_steered() {
        let mut model = base();
        model.services.push(Service {
            cluster_ip: ClusterIp::Headless,
            ip_family_policy: cipgw_config::IpFamilyPolicy::SingleStack,
            ip_families: vec![cipgw_config::IpFamily::V4],
            ..service(
                "h",
                Ipv4Addr::UNSPECIFIED.into(),
                &[(5432, Protocol::Tcp, 5432, &[POD3])],
            )
        });
        let steering = steering_of(&model);
        assert_eq!(steering, steering_of(&base()));
        assert_eq!(flow_targets(&model), flow_targets(&base()));
    }
}
