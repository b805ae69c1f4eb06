//! Per-endpoint counters of every Service port across table generations:
//! which counter slot each endpoint of a forwarded port has
//! ([`ServiceStats`], assigned on the control thread when a table is
//! compiled) and what the workers counted there, summed at read time per
//! endpoint and per port ([`ServiceTotals`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use cipgw_config::{Protocol, ServiceName, ServiceTable};

use crate::counters::{ServiceCounters, MAX_SERVICE_SLOTS};
use crate::family::IpFamily;
use crate::table::Backend;

/// An endpoint as counters know it, either family: address and port.
type Endpoint = (IpAddr, u16);

/// `backend` as counters know it.
fn endpoint_of<A: IpFamily>(backend: Backend<A>) -> Endpoint {
    (backend.ip.into(), backend.port)
}

/// Summed counters of one service port, or of one of its endpoints.
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

/// Per-endpoint counting across table generations.
///
/// Each endpoint of a forwarded service port gets a stable slot when a
/// table that has it is compiled ([`ServiceStats::assign`], control
/// thread) and keeps it for as long as tables list it under that port
/// (ready or not: a terminating endpoint's flows still count); a slot
/// given back is reused, starting from zero (the sum it had is kept as
/// its base). Workers count a flow's packets, bytes and its start into
/// their own [`ServiceCounters`] at the slot the compiled table gave its
/// backend (new flows) or the conntrack entry carries (established
/// flows): one slot per packet, as when slots named ports. A port's
/// totals are summed over its endpoints when read, plus what endpoints
/// that left it had counted, so they never go back. Packets of a removed
/// endpoint's flows still tracked after its slot is given back are not
/// counted for the port, or count for the slot's next owner; conntrack
/// retires such flows when the table that removed the endpoint is
/// published.
#[derive(Debug, Default)]
pub struct ServiceStats {
    state: Mutex<SlotState>,
}

/// The counting of one service port.
#[derive(Debug, Default)]
struct PortCounting {
    /// Each endpoint's slot.
    endpoints: BTreeMap<Endpoint, u32>,
    /// What endpoints no longer listed had counted for this port: those
    /// of IPv4 (`[0]`) and of IPv6 (`[1]`), so that each VIP's share
    /// never goes back either.
    departed: [ServiceTotals; 2],
}

/// The index of `endpoint`'s family in [`PortCounting::departed`].
fn family_index(endpoint: Endpoint) -> usize {
    usize::from(endpoint.0.is_ipv6())
}

#[derive(Debug, Default)]
struct SlotState {
    ports: HashMap<PortKey, PortCounting>,
    /// Slots given back, oldest first: reused last, so that late packets
    /// of a departed endpoint's flows rarely count for a new one.
    free: VecDeque<u32>,
    /// Slots ever handed out: `0..next`.
    next: u32,
    /// Per slot: what it had counted when its current endpoint got it.
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

    /// What `slot` counted since its endpoint got it.
    fn counted(&self, slot: u32) -> ServiceTotals {
        let base = self.base.get(slot as usize).copied().unwrap_or_default();
        self.sum(slot).since(base)
    }
}

/// One port's endpoints and their slots, sorted by endpoint.
type EndpointSlots = Box<[(Endpoint, u32)]>;

/// The slot of every endpoint of every forwarded port of one table, by
/// position in the model: `get(service index, port index, endpoint)`.
#[derive(Debug, Clone, Default)]
pub struct PortSlots {
    /// Per Service, per port.
    slots: Box<[Box<[EndpointSlots]>]>,
}

impl PortSlots {
    pub fn get<A: IpFamily>(
        &self,
        service: usize,
        port: usize,
        endpoint: Backend<A>,
    ) -> Option<u32> {
        let endpoint = endpoint_of(endpoint);
        let endpoints = self.slots.get(service)?.get(port)?;
        let at = endpoints
            .binary_search_by_key(&endpoint, |&(e, _)| e)
            .ok()?;
        Some(endpoints[at].1)
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

    /// Gives every endpoint of every forwarded port of `model` a slot
    /// (keeping the slots of endpoints that had one), frees the slots of
    /// endpoints and ports that are gone, and makes sure every worker has
    /// counters for all of them. Call on the control thread before
    /// publishing the table compiled from `model`.
    pub fn assign(&self, model: &ServiceTable) -> PortSlots {
        let mut state = self.lock();
        let mut wanted: HashMap<PortKey, HashSet<Endpoint>> = HashMap::new();
        for (service, vips) in model.forwarded() {
            for port in &service.ports {
                wanted
                    .entry((service.name.clone(), port.port, port.protocol))
                    .or_default()
                    .extend(forwarded_endpoints(vips, port));
            }
        }
        // Endpoints and ports that are gone give their slots back first,
        // so that new ones reuse them; a port that stays keeps what its
        // departed endpoints counted.
        let state = &mut *state;
        let mut gone_ports = Vec::new();
        let mut gone_endpoints = Vec::new();
        for (key, counting) in &state.ports {
            match wanted.get(key) {
                None => gone_ports.push(key.clone()),
                Some(endpoints) => gone_endpoints.extend(
                    counting
                        .endpoints
                        .iter()
                        .filter(|(e, _)| !endpoints.contains(e))
                        .map(|(e, &slot)| (key.clone(), *e, slot)),
                ),
            }
        }
        for key in gone_ports {
            if let Some(counting) = state.ports.remove(&key) {
                state.free.extend(counting.endpoints.into_values());
            }
        }
        for (key, endpoint, slot) in gone_endpoints {
            let counted = state.counted(slot);
            if let Some(counting) = state.ports.get_mut(&key) {
                counting.endpoints.remove(&endpoint);
                counting.departed[family_index(endpoint)].add(counted);
            }
            state.free.push_back(slot);
        }
        let mut slots = Vec::with_capacity(model.services.len());
        for service in &model.services {
            let vips = service.cluster_ip.vips_of();
            let mut ports = Vec::with_capacity(service.ports.len());
            for port in &service.ports {
                let key = (service.name.clone(), port.port, port.protocol);
                let mut endpoints: Vec<(Endpoint, u32)> = Vec::new();
                if let Some(vips) = vips {
                    for endpoint in forwarded_endpoints(vips, port) {
                        let known = state
                            .ports
                            .get(&key)
                            .and_then(|c| c.endpoints.get(&endpoint).copied());
                        let slot = match known {
                            Some(slot) => Some(slot),
                            None => {
                                let slot = take_slot(state);
                                if let Some(slot) = slot {
                                    state
                                        .ports
                                        .entry(key.clone())
                                        .or_default()
                                        .endpoints
                                        .insert(endpoint, slot);
                                }
                                slot
                            }
                        };
                        if let Some(slot) = slot {
                            endpoints.push((endpoint, slot));
                        }
                    }
                    // A port without endpoints is still counted (zero).
                    state.ports.entry(key).or_default();
                }
                endpoints.sort_unstable();
                endpoints.dedup_by_key(|(e, _)| *e);
                ports.push(endpoints.into_boxed_slice());
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

    /// The counters of a service port since it appeared, summed over its
    /// endpoints (those gone included) and workers; `None` when the port
    /// is not counted.
    pub fn totals(
        &self,
        service: &ServiceName,
        port: u16,
        protocol: Protocol,
    ) -> Option<ServiceTotals> {
        let state = self.lock();
        let counting = state.ports.get(&(service.clone(), port, protocol))?;
        let mut total = counting.departed[0];
        total.add(counting.departed[1]);
        for &slot in counting.endpoints.values() {
            total.add(state.counted(slot));
        }
        Some(total)
    }

    /// [`ServiceStats::totals`] of the endpoints of one family (IPv6 when
    /// `ipv6`): what went through the port on the Service's VIP of that
    /// family. The two families' add up to the port's.
    pub fn family_totals(
        &self,
        service: &ServiceName,
        port: u16,
        protocol: Protocol,
        ipv6: bool,
    ) -> Option<ServiceTotals> {
        let state = self.lock();
        let counting = state.ports.get(&(service.clone(), port, protocol))?;
        let mut total = counting.departed[usize::from(ipv6)];
        for (&endpoint, &slot) in &counting.endpoints {
            if endpoint.0.is_ipv6() == ipv6 {
                total.add(state.counted(slot));
            }
        }
        Some(total)
    }

    /// The counters of each endpoint of a service port since it got its
    /// slot, summed over workers (what `ipvsadm -L --stats` shows per
    /// real server); empty when the port is not counted.
    pub fn endpoint_totals(
        &self,
        service: &ServiceName,
        port: u16,
        protocol: Protocol,
    ) -> BTreeMap<Endpoint, ServiceTotals> {
        let state = self.lock();
        let Some(counting) = state.ports.get(&(service.clone(), port, protocol)) else {
            return BTreeMap::new();
        };
        counting
            .endpoints
            .iter()
            .map(|(&e, &slot)| (e, state.counted(slot)))
            .collect()
    }
}

/// A free slot (a released one first, with its base reset to what it
/// has counted so far), or `None` when all are in use.
fn take_slot(state: &mut SlotState) -> Option<u32> {
    if let Some(slot) = state.free.pop_front() {
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

/// The endpoints of `port` the data plane forwards to (and counts): those
/// of a family the Service has a VIP of.
fn forwarded_endpoints(
    vips: cipgw_config::Vips,
    port: &cipgw_config::ServicePort,
) -> impl Iterator<Item = Endpoint> + '_ {
    port.endpoints
        .iter()
        .filter(move |e| vips.iter().any(|v| v.is_ipv4() == e.ip.is_ipv4()))
        .map(|e| (e.ip, e.port))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use cipgw_config::{
        ClusterIp, Endpoint, EndpointState, Service, ServiceKind, ServicePort, TargetPort,
    };

    use super::*;

    /// Services named by `name`, one TCP port each, with endpoints
    /// 198.18.2.`e`:5678; and a headless Service last.
    fn model(ports: &[(&str, u16, &[u8])]) -> ServiceTable {
        let mut services: Vec<Service> = ports
            .iter()
            .map(|(name, port, endpoints)| Service {
                name: ServiceName::new("default", *name),
                kind: ServiceKind::ClusterIp,
                cluster_ip: ClusterIp::single(std::net::IpAddr::from(Ipv4Addr::new(
                    198,
                    18,
                    100,
                    *port as u8,
                ))),
                ip_family_policy: cipgw_config::IpFamilyPolicy::SingleStack,
                ip_families: vec![cipgw_config::IpFamily::V4],
                session_affinity: None,
                lb_algorithm: None,
                external_name: None,
                publish_not_ready_addresses: false,
                ports: vec![ServicePort {
                    name: None,
                    port: *port,
                    protocol: Protocol::Tcp,
                    target_port: TargetPort::Number(5678),
                    endpoints: endpoints
                        .iter()
                        .map(|e| Endpoint {
                            ip: Ipv4Addr::new(198, 18, 2, *e).into(),
                            port: 5678,
                            state: EndpointState::READY,
                            pod: None,
                            hostname: None,
                        })
                        .collect(),
                }],
            })
            .collect();
        services.push(Service {
            name: ServiceName::new("default", "zz-headless"),
            kind: ServiceKind::ClusterIp,
            cluster_ip: ClusterIp::Headless,
            ip_family_policy: cipgw_config::IpFamilyPolicy::SingleStack,
            ip_families: vec![cipgw_config::IpFamily::V4],
            session_affinity: None,
            lb_algorithm: None,
            external_name: None,
            publish_not_ready_addresses: false,
            ports: vec![ServicePort {
                name: None,
                port: 80,
                protocol: Protocol::Tcp,
                target_port: TargetPort::Number(80),
                endpoints: vec![Endpoint {
                    ip: Ipv4Addr::new(198, 18, 2, 99).into(),
                    port: 80,
                    state: EndpointState::READY,
                    pod: None,
                    hostname: None,
                }],
            }],
        });
        ServiceTable { services }
    }

    fn pod(e: u8) -> Backend {
        Backend {
            ip: Ipv4Addr::new(198, 18, 2, e),
            port: 5678,
        }
    }

    fn count(w: &ServiceCounters, slot: u32, packets: u64) {
        let c = w.get(slot).expect("counters for the slot");
        c.packets.add(packets);
        c.bytes.add(100 * packets);
        c.flows.inc();
    }

    fn packets(stats: &ServiceStats, name: &str, port: u16) -> Option<u64> {
        stats
            .totals(&ServiceName::new("default", name), port, Protocol::Tcp)
            .map(|t| t.packets)
    }

    #[test]
    fn a_dual_stack_port_counts_the_endpoints_of_both_families() {
        use std::net::Ipv6Addr;
        let mut m = model(&[("a", 10, &[11])]);
        let vip6: IpAddr = "2001:2:0:ff::a".parse().expect("literal");
        let pod6: Ipv6Addr = "2001:2:0:2::11".parse().expect("literal");
        let a = &mut m.services[0];
        a.cluster_ip = ClusterIp::Vips(
            cipgw_config::Vips::dual(a.cluster_ip.primary().expect("a VIP"), vip6)
                .expect("two families"),
        );
        a.ports[0].endpoints.push(Endpoint {
            ip: pod6.into(),
            port: 5678,
            state: EndpointState::READY,
            pod: None,
            hostname: None,
        });
        let stats = ServiceStats::new();
        let w = stats.add_worker();
        let slots = stats.assign(&m);
        let v4 = slots.get(0, 0, pod(11)).expect("the IPv4 endpoint's slot");
        let v6 = slots
            .get(
                0,
                0,
                Backend {
                    ip: pod6,
                    port: 5678,
                },
            )
            .expect("the IPv6 endpoint's slot");
        assert_ne!(v4, v6);
        count(&w, v4, 1);
        count(&w, v6, 10);
        assert_eq!(packets(&stats, "a", 10), Some(11), "both families' packets");
        let name = ServiceName::new("default", "a");
        let per_endpoint = stats.endpoint_totals(&name, 10, Protocol::Tcp);
        assert_eq!(per_endpoint[&(pod6.into(), 5678)].packets, 10);
        let family = |stats: &ServiceStats, ipv6| {
            stats
                .family_totals(&name, 10, Protocol::Tcp, ipv6)
                .map(|t| t.packets)
        };
        assert_eq!(
            (family(&stats, false), family(&stats, true)),
            (Some(1), Some(10))
        );
        // The IPv6 endpoint leaves: its family keeps what it counted.
        m.services[0].ports[0].endpoints.pop();
        stats.assign(&m);
        count(&w, v4, 2);
        assert_eq!(
            (family(&stats, false), family(&stats, true)),
            (Some(3), Some(10))
        );
        assert_eq!(packets(&stats, "a", 10), Some(13));
    }

    #[test]
    fn endpoint_slots_are_stable_and_reused_from_zero() {
        let stats = ServiceStats::new();
        let w0 = stats.add_worker();
        let slots = stats.assign(&model(&[("a", 10, &[11]), ("b", 11, &[12])]));
        let (a, b) = (
            slots.get(0, 0, pod(11)).expect("a's endpoint has a slot"),
            slots.get(1, 0, pod(12)).expect("b's endpoint has a slot"),
        );
        assert_ne!(a, b);
        assert_eq!(slots.get(0, 0, pod(12)), None, "not an endpoint of a");
        assert_eq!(
            slots.get(2, 0, pod(99)),
            None,
            "headless ports are not counted"
        );
        // A worker added later gets counters for every slot in use.
        let w1 = stats.add_worker();
        for w in [&w0, &w1] {
            count(w, b, 3);
        }
        assert_eq!(
            stats.totals(&ServiceName::new("default", "b"), 11, Protocol::Tcp),
            Some(ServiceTotals {
                packets: 6,
                bytes: 600,
                flows: 2
            })
        );
        // b keeps its slot when a is removed and c is added; c's endpoint
        // gets a's old slot and starts from zero.
        count(&w0, a, 5);
        let slots = stats.assign(&model(&[("b", 11, &[12]), ("c", 12, &[11])]));
        assert_eq!(slots.get(0, 0, pod(12)), Some(b));
        assert_eq!(slots.get(1, 0, pod(11)), Some(a));
        assert_eq!(packets(&stats, "c", 12), Some(0));
        count(&w1, a, 2);
        assert_eq!(packets(&stats, "c", 12), Some(2));
        assert_eq!(packets(&stats, "a", 10), None);
        assert!(w0.get(u32::MAX).is_none());
    }

    /// A port's totals are its endpoints' sums, and keep what departed
    /// endpoints counted: they never go back.
    #[test]
    fn port_totals_sum_endpoints_and_keep_departed_ones() {
        let stats = ServiceStats::new();
        let w = stats.add_worker();
        let slots = stats.assign(&model(&[("a", 10, &[11, 12, 13])]));
        let slot = |e| slots.get(0, 0, pod(e)).expect("slot");
        count(&w, slot(11), 1);
        count(&w, slot(12), 10);
        count(&w, slot(13), 100);
        let name = ServiceName::new("default", "a");
        let per_endpoint = |stats: &ServiceStats| -> Vec<(u8, u64)> {
            stats
                .endpoint_totals(&name, 10, Protocol::Tcp)
                .iter()
                .map(|((ip, _), t)| match ip {
                    IpAddr::V4(ip) => (ip.octets()[3], t.packets),
                    IpAddr::V6(ip) => (ip.octets()[15], t.packets),
                })
                .collect()
        };
        assert_eq!(per_endpoint(&stats), [(11, 1), (12, 10), (13, 100)]);
        assert_eq!(packets(&stats, "a", 10), Some(111));
        // 12 leaves and 14 comes: 11 and 13 keep their slots, 14 starts
        // from zero, and the port keeps what 12 counted.
        let (kept11, kept13) = (slot(11), slot(13));
        let slots = stats.assign(&model(&[("a", 10, &[11, 13, 14])]));
        assert_eq!(slots.get(0, 0, pod(11)), Some(kept11));
        assert_eq!(slots.get(0, 0, pod(13)), Some(kept13));
        assert_eq!(per_endpoint(&stats), [(11, 1), (13, 100), (14, 0)]);
        assert_eq!(packets(&stats, "a", 10), Some(111), "12's packets stay");
        count(&w, slots.get(0, 0, pod(14)).expect("slot"), 1000);
        assert_eq!(packets(&stats, "a", 10), Some(1111));
        assert_eq!(
            stats
                .totals(&name, 10, Protocol::Tcp)
                .map(|t| (t.bytes, t.flows)),
            Some((111_100, 4))
        );
        // Every endpoint gone: the port is still counted, from its past.
        stats.assign(&model(&[("a", 10, &[])]));
        assert!(per_endpoint(&stats).is_empty());
        assert_eq!(packets(&stats, "a", 10), Some(1111));
    }
}
