//! Per-Service-port counters across table generations: which counter slot
//! each forwarded port has ([`ServiceStats`], assigned on the control
//! thread when a table is compiled) and what the workers counted there,
//! summed at scrape time ([`ServiceTotals`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use cipgw_config::{Protocol, ServiceName, ServiceTable};

use crate::counters::{ServiceCounters, MAX_SERVICE_SLOTS};

/// Summed counters of one service port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceTotals {
    pub packets: u64,
    pub bytes: u64,
    pub flows: u64,
}

impl ServiceTotals {
    /// What `counters` counted at `slot` (zero when it has no slot).
    fn of(counters: &ServiceCounters, slot: u32) -> Self {
        counters.get(slot).map_or_else(Self::default, |c| Self {
            packets: c.packets.get(),
            bytes: c.bytes.get(),
            flows: c.flows.get(),
        })
    }

    fn add(&mut self, other: ServiceTotals) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
        self.flows = self.flows.wrapping_add(other.flows);
    }

    fn since(self, base: ServiceTotals) -> ServiceTotals {
        ServiceTotals {
            packets: self.packets.wrapping_sub(base.packets),
            bytes: self.bytes.wrapping_sub(base.bytes),
            flows: self.flows.wrapping_sub(base.flows),
        }
    }
}

/// A service port as counters know it: Service, port and protocol.
type PortKey = (ServiceName, u16, Protocol);

/// Per-service-port counting across table generations.
///
/// Each forwarded service port gets a stable slot when a table that has
/// it is compiled ([`ServiceStats::assign`], control thread), keeps it for
/// as long as tables have it, and its slot is reused after it is gone.
/// A reused slot starts from zero: the sum it had is kept as its base.
/// Workers count into their own [`ServiceCounters`] at the slot the
/// compiled table (new flows) or the conntrack entry (established flows)
/// carries. Packets of a removed port's flows that are still tracked when
/// its slot is reused count for the new owner, so conntrack should drop a
/// removed port's flows when the table that removed it is published.
#[derive(Debug, Default)]
pub struct ServiceStats {
    state: Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    slots: HashMap<PortKey, u32>,
    free: Vec<u32>,
    /// Slots ever handed out: `0..next`.
    next: u32,
    /// Per slot: what it had counted when its current port got it.
    base: Vec<ServiceTotals>,
    workers: Vec<Arc<ServiceCounters>>,
}

impl SlotState {
    fn sum(&self, slot: u32) -> ServiceTotals {
        let mut total = ServiceTotals::default();
        for w in &self.workers {
            total.add(ServiceTotals::of(w, slot));
        }
        total
    }
}

/// The slot of every forwarded port of one table, by position in the
/// model: `get(service index, port index)`.
#[derive(Debug, Clone, Default)]
pub struct PortSlots {
    slots: Box<[Box<[Option<u32>]>]>,
}

impl PortSlots {
    pub fn get(&self, service: usize, port: usize) -> Option<u32> {
        *self.slots.get(service)?.get(port)?
    }
}

impl ServiceStats {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new worker's counters (give them to its pipeline).
    pub fn add_worker(&self) -> Arc<ServiceCounters> {
        let mut state = self.lock();
        let counters = Arc::new(ServiceCounters::new());
        counters.ensure(state.next as usize);
        state.workers.push(Arc::clone(&counters));
        counters
    }

    /// Gives every forwarded port of `model` a slot (keeping the slots of
    /// ports that had one), frees the slots of ports that are gone, and
    /// makes sure every worker has counters for all of them. Call on the
    /// control thread before publishing the table compiled from `model`.
    pub fn assign(&self, model: &ServiceTable) -> PortSlots {
        let mut state = self.lock();
        let wanted: HashSet<PortKey> = model
            .forwarded()
            .flat_map(|(s, _)| s.ports.iter().map(|p| (s.name.clone(), p.port, p.protocol)))
            .collect();
        // Ports that are gone give their slots back first, so that new
        // ports reuse them.
        let gone: Vec<PortKey> = state
            .slots
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(slot) = state.slots.remove(&key) {
                state.free.push(slot);
            }
        }
        let mut slots = Vec::with_capacity(model.services.len());
        for service in &model.services {
            let forwarded = service.cluster_ip.vip().is_some();
            let mut ports = Vec::with_capacity(service.ports.len());
            for port in &service.ports {
                let key = (service.name.clone(), port.port, port.protocol);
                let slot = match state.slots.get(&key) {
                    _ if !forwarded => None,
                    Some(&slot) => Some(slot),
                    None => {
                        let slot = take_slot(&mut state);
                        if let Some(slot) = slot {
                            state.slots.insert(key, slot);
                        }
                        slot
                    }
                };
                ports.push(slot);
            }
            slots.push(ports.into_boxed_slice());
        }
        let next = state.next as usize;
        for w in &state.workers {
            w.ensure(next);
        }
        PortSlots {
            slots: slots.into_boxed_slice(),
        }
    }

    /// The counters of a service port since it got its slot, summed over
    /// workers; `None` when the port has no slot.
    pub fn totals(
        &self,
        service: &ServiceName,
        port: u16,
        protocol: Protocol,
    ) -> Option<ServiceTotals> {
        let state = self.lock();
        let slot = *state.slots.get(&(service.clone(), port, protocol))?;
        let base = state.base.get(slot as usize).copied().unwrap_or_default();
        Some(state.sum(slot).since(base))
    }
}

/// A free slot (a released one first, with its base reset to what it
/// has counted so far), or `None` when all are in use.
fn take_slot(state: &mut SlotState) -> Option<u32> {
    if let Some(slot) = state.free.pop() {
        let base = state.sum(slot);
        state.base[slot as usize] = base;
        return Some(slot);
    }
    if state.next as usize >= MAX_SERVICE_SLOTS {
        return None;
    }
    let slot = state.next;
    state.next += 1;
    state.base.push(ServiceTotals::default());
    Some(slot)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use cipgw_config::{
        ClusterIp, Endpoint, EndpointState, Service, ServiceKind, ServicePort, TargetPort,
    };

    use super::*;

    fn model(ports: &[(&str, u16)]) -> ServiceTable {
        let mut services: Vec<Service> = ports
            .iter()
            .map(|(name, port)| Service {
                name: ServiceName::new("default", *name),
                kind: ServiceKind::ClusterIp,
                cluster_ip: ClusterIp::Vip(Ipv4Addr::new(198, 18, 100, *port as u8)),
                session_affinity: None,
                lb_algorithm: None,
                external_name: None,
                publish_not_ready_addresses: false,
                ports: vec![ServicePort {
                    name: None,
                    port: *port,
                    protocol: Protocol::Tcp,
                    target_port: TargetPort::Number(5678),
                    endpoints: vec![Endpoint {
                        ip: Ipv4Addr::new(198, 18, 2, 11),
                        port: 5678,
                        state: EndpointState::READY,
                        pod: None,
                        hostname: None,
                    }],
                }],
            })
            .collect();
        services.push(Service {
            name: ServiceName::new("default", "zz-headless"),
            kind: ServiceKind::ClusterIp,
            cluster_ip: ClusterIp::Headless,
            session_affinity: None,
            lb_algorithm: None,
            external_name: None,
            publish_not_ready_addresses: false,
            ports: vec![ServicePort {
                name: None,
                port: 80,
                protocol: Protocol::Tcp,
                target_port: TargetPort::Number(80),
                endpoints: vec![],
            }],
        });
        ServiceTable { services }
    }

    #[test]
    fn service_slots_are_stable_and_reused_from_zero() {
        let stats = ServiceStats::new();
        let w0 = stats.add_worker();
        let slots = stats.assign(&model(&[("a", 10), ("b", 11)]));
        let (a, b) = (
            slots.get(0, 0).expect("a has a slot"),
            slots.get(1, 0).expect("b has a slot"),
        );
        assert_ne!(a, b);
        assert_eq!(slots.get(2, 0), None, "headless ports are not counted");
        // A worker added later gets counters for every slot in use.
        let w1 = stats.add_worker();
        for w in [&w0, &w1] {
            let c = w.get(b).expect("counters for b");
            c.packets.add(3);
            c.bytes.add(300);
            c.flows.inc();
        }
        let name_b = ServiceName::new("default", "b");
        assert_eq!(
            stats.totals(&name_b, 11, Protocol::Tcp),
            Some(ServiceTotals {
                packets: 6,
                bytes: 600,
                flows: 2
            })
        );
        // b keeps its slot when a is removed and c is added; c gets a's
        // old slot and starts from zero.
        w0.get(a).expect("a").packets.add(5);
        let slots = stats.assign(&model(&[("b", 11), ("c", 12)]));
        assert_eq!(slots.get(0, 0), Some(b));
        assert_eq!(slots.get(1, 0), Some(a));
        let name_c = ServiceName::new("default", "c");
        assert_eq!(
            stats.totals(&name_c, 12, Protocol::Tcp),
            Some(ServiceTotals::default())
        );
        w1.get(a).expect("c").packets.add(2);
        assert_eq!(
            stats.totals(&name_c, 12, Protocol::Tcp).map(|t| t.packets),
            Some(2)
        );
        assert_eq!(
            stats.totals(&ServiceName::new("default", "a"), 10, Protocol::Tcp),
            None
        );
        assert!(w0.get(u32::MAX).is_none());
    }
}
