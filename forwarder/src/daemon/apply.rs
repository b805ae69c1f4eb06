//! Carrying out a [`Plan`]: the order of map writes, publication and
//! retirement that keeps every packet of a VIP that exists before and
//! after a change on a worker, and ends flows to removed targets without
//! losing the replies already on their way.
//!
//! 1. The map entries the plan adds (the new table's VIPs and backends,
//!    and the retiring targets' backends) are written, so no packet the
//!    new table expects is handed to the kernel by mistake.
//! 2. The table is published. Workers retire flows to removed targets at
//!    their next packet from now on.
//! 3. The map entries nobody needs any more are removed.
//! 4. If the table retires targets: once no worker uses an older table
//!    (which could still create flows to them; at most a grace period),
//!    the UDP flows and finished TCP flows to them go in one pass. An open
//!    TCP connection is left to its next packet from the client, which is
//!    reset (or, a retransmitted SYN, sent to a live endpoint): dropped
//!    here, the replies already on their way from the Pod would be lost
//!    and a client waiting for them would hang until its own timeout. Its
//!    target *lingers*: its backend stays steered and the next plan ends
//!    it again. The other retiring targets' backends are removed.
//!
//! The maps are behind [`XdpMaps`], so the order is tested here on a
//! recording map, without a kernel.

use std::collections::HashSet;
use std::time::Duration;

use crate::bpf::{BpfError, XdpMaps};
use crate::table::{CompiledTable, TableHandle};

use super::conntracks::Conntracks;
use super::plan::{Plan, Target};

/// What applying a plan did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Flows the retirement pass removed.
    pub retired: usize,
    /// Targets of open TCP connections the pass left to their next packet:
    /// the next plan must carry them.
    pub lingering: HashSet<Target>,
}

/// Installs `table` (compiled from the plan's new model, retiring the
/// plan's targets) in the order of the module doc, waiting at most
/// `grace` for workers to leave the old table. A failed map write stops
/// there: before publication the old table stays in force.
pub fn apply(
    plan: &Plan,
    table: CompiledTable,
    handle: &TableHandle,
    conntracks: &Conntracks,
    maps: &mut impl XdpMaps,
    grace: Duration,
) -> Result<Applied, BpfError> {
    let generation = table.generation();
    for &vip in &plan.add().vips {
        maps.add_vip(vip)?;
    }
    for &backend in &plan.add().backends {
        maps.add_backend(backend)?;
    }
    handle.publish(table);
    for &vip in &plan.remove().vips {
        maps.remove_vip(vip)?;
    }
    for &backend in &plan.remove().backends {
        maps.remove_backend(backend)?;
    }
    if plan.retiring().is_empty() {
        return Ok(Applied::default());
    }

    if !handle.wait_for_readers(generation, grace) {
        tracing::warn!(
            generation,
            "a worker did not move to the new table within {grace:?}; retiring flows anyway"
        );
    }
    let mut lingering = HashSet::new();
    let retired = conntracks.retire_settled(
        |target| !plan.keeps(target),
        |target| {
            lingering.insert(target);
        },
    );
    for backend in plan.released(&lingering) {
        maps.remove_backend(backend)?;
    }
    Ok(Applied { retired, lingering })
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    use cipgw_config::{
        ClusterIp, Endpoint, EndpointState, Protocol, Service, ServiceKind, ServiceName,
        ServicePort, ServiceTable, TargetPort,
    };

    use super::*;
    use crate::bpf::{BackendKey, Steering};
    use crate::conntrack::{Conntrack, FlowKey, FlowMeta};
    use crate::daemon::plan::steering_of;

    const VIP_A: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
    const VIP_B: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
    const POD1: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
    const POD2: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
    const POD3: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 3);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const GRACE: Duration = Duration::from_millis(50);

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Write {
        AddVip(IpAddr),
        RemoveVip(IpAddr),
        AddBackend(BackendKey),
        RemoveBackend(BackendKey),
    }

    /// When a write happened: the generation published then and the
    /// flows conntrack held.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Seen {
        write: Write,
        generation: u64,
        flows: usize,
    }

    /// In-memory maps that record every write with what was live then.
    struct Recorder {
        steering: Steering,
        table: TableHandle,
        conntrack: Arc<Conntrack>,
        writes: Vec<Seen>,
        /// The write that fails, if any.
        fail: Option<Write>,
    }

    impl Recorder {
        fn new(held: Steering, table: &TableHandle, conntrack: &Arc<Conntrack>) -> Recorder {
            Recorder {
                steering: held,
                table: table.clone(),
                conntrack: Arc::clone(conntrack),
                writes: Vec::new(),
                fail: None,
            }
        }

        fn record(&mut self, write: Write) -> Result<(), BpfError> {
            if self.fail == Some(write) {
                return Err(BpfError::Map {
                    map: "test",
                    op: "update",
                    key: format!("{write:?}"),
                    source: std::io::Error::from_raw_os_error(libc::ENOSPC),
                });
            }
            self.writes.push(Seen {
                write,
                generation: self.table.current().generation(),
                flows: self.conntrack.summary().flows,
            });
            Ok(())
        }

        fn seen(&self, write: Write) -> Seen {
            *self
                .writes
                .iter()
                .find(|s| s.write == write)
                .unwrap_or_else(|| panic!("{write:?} not written: {:?}", self.writes))
        }
    }

    impl XdpMaps for Recorder {
        fn steering(&self) -> &Steering {
            &self.steering
        }

        fn add_vip(&mut self, vip: IpAddr) -> Result<(), BpfError> {
            self.record(Write::AddVip(vip))?;
            self.steering.vips.insert(vip);
            Ok(())
        }

        fn remove_vip(&mut self, vip: IpAddr) -> Result<(), BpfError> {
            self.record(Write::RemoveVip(vip))?;
            self.steering.vips.remove(&vip);
            Ok(())
        }

        fn add_backend(&mut self, backend: BackendKey) -> Result<(), BpfError> {
            self.record(Write::AddBackend(backend))?;
            self.steering.backends.insert(backend);
            Ok(())
        }

        fn remove_backend(&mut self, backend: BackendKey) -> Result<(), BpfError> {
            self.record(Write::RemoveBackend(backend))?;
            self.steering.backends.remove(&backend);
            Ok(())
        }
    }

    fn service(
        name: &str,
        vip: Ipv4Addr,
        port: u16,
        protocol: Protocol,
        pods: &[Ipv4Addr],
    ) -> Service {
        Service {
            name: ServiceName::new("default", name),
            kind: ServiceKind::ClusterIp,
            cluster_ip: ClusterIp::single(std::net::IpAddr::from(vip)),
            ip_family_policy: cipgw_config::IpFamilyPolicy::SingleStack,
            ip_families: vec![cipgw_config::IpFamily::V4],
            session_affinity: None,
            lb_algorithm: None,
            external_name: None,
            publish_not_ready_addresses: false,
            ports: vec![ServicePort {
                name: None,
                port,
                protocol,
                target_port: TargetPort::Number(port),
                endpoints: pods
                    .iter()
                    .map(|&ip| Endpoint {
                        ip: ip.into(),
                        port,
                        state: EndpointState::READY,
                        pod: None,
                        hostname: None,
                    })
                    .collect(),
            }],
        }
    }

    /// A flow from the client to `vip:port` on `pod`, tracked: a TCP one
    /// is open (SYN sent), a UDP one settled.
    fn track(
        ct: &Conntrack,
        src_port: u16,
        vip: Ipv4Addr,
        port: u16,
        protocol: Protocol,
        pod: Ipv4Addr,
    ) {
        let key = FlowKey {
            src: CLIENT,
            dst: vip,
            src_port,
            dst_port: port,
            protocol,
        };
        ct.insert(key, (pod, port), 0, FlowMeta::default())
            .expect("conntrack has room");
    }

    /// The gateway's state before a change: `old` published as generation
    /// 1, maps holding what it needs.
    struct Before {
        old: Arc<ServiceTable>,
        table: TableHandle,
        conntracks: Conntracks,
    }

    impl Before {
        fn new(old: ServiceTable) -> Before {
            let old = Arc::new(old);
            Before {
                table: TableHandle::new(CompiledTable::compile(Arc::clone(&old), 1)),
                old,
                conntracks: Conntracks::in_memory(),
            }
        }

        fn maps(&self) -> Recorder {
            Recorder::new(steering_of(&self.old), &self.table, &self.conntracks.v4)
        }

        /// Plans and applies `new` as generation 2.
        fn apply(
            &self,
            new: ServiceTable,
            maps: &mut Recorder,
        ) -> (Plan, Result<Applied, BpfError>) {
            let plan = Plan::new(&self.old, &new, [], maps.steering());
            let compiled = CompiledTable::compile(Arc::new(new), 2)
                .with_retiring_of(plan.retiring_of::<Ipv4Addr>());
            let applied = apply(&plan, compiled, &self.table, &self.conntracks, maps, GRACE);
            (plan, applied)
        }
    }

    /// A: TCP 80 on POD1 and POD2; B: UDP 53 on POD3.
    fn old() -> ServiceTable {
        ServiceTable {
            services: vec![
                service("a", VIP_A, 80, Protocol::Tcp, &[POD1, POD2]),
                service("b", VIP_B, 53, Protocol::Udp, &[POD3]),
            ],
        }
    }

    #[test]
    fn maps_change_make_before_break_and_retired_backends_go_after_the_pass() {
        const VIP_C: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 3);
        const POD4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 4);
        let before = Before::new(old());
        // An open TCP connection to POD2 and a UDP flow to POD3, both
        // losing their targets; a TCP connection to POD1, which stays.
        track(&before.conntracks.v4, 40000, VIP_A, 80, Protocol::Tcp, POD2);
        track(&before.conntracks.v4, 40001, VIP_B, 53, Protocol::Udp, POD3);
        track(&before.conntracks.v4, 40002, VIP_A, 80, Protocol::Tcp, POD1);
        let mut maps = before.maps();
        // A loses POD2 and gains POD4; B goes; C comes.
        let new = ServiceTable {
            services: vec![
                service("a", VIP_A, 80, Protocol::Tcp, &[POD1, POD4]),
                service("c", VIP_C, 80, Protocol::Tcp, &[POD1]),
            ],
        };
        let (plan, applied) = before.apply(new.clone(), &mut maps);
        let applied = applied.expect("in-memory maps do not fail");

        for add in [
            Write::AddVip(VIP_C.into()),
            Write::AddBackend((POD4.into(), 80, 6)),
        ] {
            assert_eq!(maps.seen(add).generation, 1, "{add:?} before publication");
        }
        assert_eq!(
            maps.seen(Write::RemoveVip(VIP_B.into())).generation,
            2,
            "a VIP nobody needs goes after publication"
        );
        let udp_backend = Write::RemoveBackend((POD3.into(), 53, 17));
        assert_eq!(
            maps.seen(udp_backend),
            Seen {
                write: udp_backend,
                generation: 2,
                flows: 2
            },
            "a retiring target's backend goes after the pass removed its flow"
        );
        assert!(
            !maps
                .writes
                .iter()
                .any(|s| s.write == Write::RemoveBackend((POD2.into(), 80, 6))),
            "the open connection's backend stays steered: {:?}",
            maps.writes
        );
        let last_add = maps
            .writes
            .iter()
            .rposition(|s| matches!(s.write, Write::AddVip(_) | Write::AddBackend(_)));
        let first_remove = maps
            .writes
            .iter()
            .position(|s| matches!(s.write, Write::RemoveVip(_) | Write::RemoveBackend(_)));
        assert!(last_add < first_remove, "{:?}", maps.writes);
        assert_eq!(maps.writes.last().map(|s| s.write), Some(udp_backend));

        assert_eq!(applied.retired, 1, "the UDP flow");
        assert_eq!(
            applied.lingering,
            [(VIP_A.into(), 80, Protocol::Tcp, POD2.into(), 80)]
                .into_iter()
                .collect(),
        );
        assert_eq!(before.conntracks.v4.summary().flows, 2);
        let mut settled = steering_of(&new);
        settled.backends.insert((POD2.into(), 80, 6));
        assert_eq!(maps.steering, settled);
        assert_eq!(before.table.current().generation(), 2);
        assert_eq!(plan.retiring().len(), 2);
    }

    #[test]
    fn without_retiring_targets_there_is_no_retirement_pass() {
        let before = Before::new(old());
        track(&before.conntracks.v4, 40001, VIP_B, 53, Protocol::Udp, POD3);
        let mut maps = before.maps();
        let mut new = old();
        new.services[0].ports[0].endpoints.push(Endpoint {
            ip: POD3.into(),
            port: 80,
            state: EndpointState::READY,
            pod: None,
            hostname: None,
        });
        let (plan, applied) = before.apply(new, &mut maps);
        let applied = applied.expect("applied");
        assert!(plan.retiring().is_empty());
        assert_eq!(applied.retired, 0);
        assert!(applied.lingering.is_empty());
        assert_eq!(
            maps.writes,
            vec![Seen {
                write: Write::AddBackend((POD3.into(), 80, 6)),
                generation: 1,
                flows: 1
            }]
        );
    }

    #[test]
    fn a_failed_add_leaves_the_old_table_in_force() {
        let before = Before::new(old());
        let mut maps = before.maps();
        maps.fail = Some(Write::AddVip(Ipv4Addr::new(198, 19, 0, 3).into()));
        let mut new = old();
        new.services.push(service(
            "c",
            Ipv4Addr::new(198, 19, 0, 3),
            80,
            Protocol::Tcp,
            &[POD1],
        ));
        let (_, applied) = before.apply(new, &mut maps);
        assert!(matches!(applied, Err(BpfError::Map { .. })), "{applied:?}");
        assert_eq!(before.table.current().generation(), 1);
    }
}
