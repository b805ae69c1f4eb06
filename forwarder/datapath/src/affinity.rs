//! Session affinity (`sessionAffinity: ClientIP`): new connections from a
//! client go to the endpoint its earlier connections to the same Service
//! port went to, while that endpoint still takes new connections and the
//! client has not been silent for longer than the timeout.
//!
//! The timeout counts from the client's last packet, not its last
//! connection (IPVS persistence semantics; kube-proxy's iptables `recent`
//! match counts connections only), so a client with a long-lived
//! connection keeps its endpoint. When the endpoint leaves the Service's
//! usable endpoints the client is rebalanced at its next connection, never
//! pinned to a dead Pod (kubernetes #71809).
//!
//! A client's packets reach the shared bindings through each worker's
//! [`Refreshes`], at most once a second per binding and worker: the
//! timeouts count whole seconds, so the repeats it skips would only have
//! written the second already written.
//!
//! Both families: an IPv6 client is bound to an IPv6 endpoint of the
//! Service's IPv6 port. Each family has its bindings and refresh slots of
//! its own ([`AffinityFamily`]), so an IPv4 key stays an IPv4 key (no
//! widening to `IpAddr` on the IPv4 path).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};

use ahash::RandomState;
use dashmap::DashMap;

use cipgw_config::Protocol;

use crate::family::IpFamily;
use crate::lb::Rng;
use crate::table::{Backend, CompiledTable, ServiceKey};

/// A family whose Services may have session affinity: where
/// [`Affinity`] and [`Refreshes`] keep its bindings and slots.
pub trait AffinityFamily: IpFamily {
    /// The family's bindings.
    fn bindings(affinity: &Affinity) -> &Bindings<Self>;

    /// The family's refresh slots.
    fn refreshed(refreshes: &mut Refreshes) -> &mut RefreshSlots<Self>;
}

impl AffinityFamily for Ipv4Addr {
    #[inline(always)]
    fn bindings(affinity: &Affinity) -> &Bindings<Self> {
        &affinity.v4
    }

    #[inline(always)]
    fn refreshed(refreshes: &mut Refreshes) -> &mut RefreshSlots<Self> {
        &mut refreshes.v4
    }
}

impl AffinityFamily for Ipv6Addr {
    #[inline(always)]
    fn bindings(affinity: &Affinity) -> &Bindings<Self> {
        &affinity.v6
    }

    #[inline(always)]
    fn refreshed(refreshes: &mut Refreshes) -> &mut RefreshSlots<Self> {
        &mut refreshes.v6
    }
}

/// The affinity of one client to one Service port.
#[derive(Debug)]
struct Sticky<A> {
    backend: Backend<A>,
    /// Coarse time of the client's last packet, seconds.
    last_seen: AtomicU32,
}

/// One family's client -> endpoint bindings in [`Affinity`].
#[derive(Debug)]
pub struct Bindings<A: IpFamily> {
    map: DashMap<(ServiceKey<A>, A), Sticky<A>, RandomState>,
}

impl<A: IpFamily> Bindings<A> {
    fn new() -> Self {
        Self {
            map: DashMap::with_hasher(RandomState::new()),
        }
    }

    /// Removes the bindings idle past their Service port's timeout, or of
    /// ports without affinity (`timeout_of` returns `None`).
    fn sweep(&self, now: u32, timeout_of: impl Fn(&ServiceKey<A>) -> Option<u32>) -> usize {
        let before = self.map.len();
        self.map
            .retain(|(service, _), sticky| match timeout_of(service) {
                // Relaxed: see `Affinity::pick`.
                Some(timeout) => {
                    now.saturating_sub(sticky.last_seen.load(Ordering::Relaxed)) <= timeout
                }
                None => false,
            });
        before - self.map.len()
    }
}

/// Client -> endpoint bindings of every affinity Service, both families,
/// shared by all workers.
#[derive(Debug)]
pub struct Affinity {
    v4: Bindings<Ipv4Addr>,
    v6: Bindings<Ipv6Addr>,
    /// Calls of [`Affinity::touch`], each a shard lock: what tests see of
    /// the packet path's cost here.
    #[cfg(test)]
    pub(crate) touches: std::sync::atomic::AtomicU64,
}

impl Default for Affinity {
    fn default() -> Self {
        Self {
            v4: Bindings::new(),
            v6: Bindings::new(),
            #[cfg(test)]
            touches: Default::default(),
        }
    }
}

impl Affinity {
    /// The endpoint for a new connection from `client` to `service`.
    pub fn pick<A: AffinityFamily>(
        &self,
        service: ServiceKey<A>,
        client: A,
        backends: &[Backend<A>],
        timeout: u32,
        now: u32,
        rng: &mut Rng,
    ) -> Backend<A> {
        let bindings = &A::bindings(self).map;
        if let Some(sticky) = bindings.get(&(service, client)) {
            // Relaxed: a timestamp compared against a timeout; nothing
            // else is published through it.
            let idle = now.saturating_sub(sticky.last_seen.load(Ordering::Relaxed));
            if idle <= timeout && backends.contains(&sticky.backend) {
                sticky.last_seen.store(now, Ordering::Relaxed);
                return sticky.backend;
            }
        }
        let backend = backends[rng.below(backends.len())];
        bindings.insert(
            (service, client),
            Sticky {
                backend,
                last_seen: AtomicU32::new(now),
            },
        );
        backend
    }

    /// Records a packet of an affinity flow from `client`. Takes a shard
    /// lock: the packet path comes through a worker's [`Refreshes`].
    #[inline]
    pub fn touch<A: AffinityFamily>(&self, service: ServiceKey<A>, client: A, now: u32) {
        // Relaxed: a test's tally, read after the packets it counts.
        #[cfg(test)]
        self.touches.fetch_add(1, Ordering::Relaxed);
        if let Some(sticky) = A::bindings(self).map.get(&(service, client)) {
            // Relaxed: see `pick`; written only on change.
            if sticky.last_seen.load(Ordering::Relaxed) != now {
                sticky.last_seen.store(now, Ordering::Relaxed);
            }
        }
    }

    /// Removes the bindings of both families idle past their Service
    /// port's timeout in `table`, or of ports `table` gives no affinity
    /// (or no longer has). Returns how many went.
    pub fn sweep(&self, now: u32, table: &CompiledTable) -> usize {
        self.sweep_with(
            now,
            |service| table.v4().port_entry(service).and_then(|e| e.affinity),
            |service| table.v6().port_entry(service).and_then(|e| e.affinity),
        )
    }

    /// [`Affinity::sweep`] with each family's timeouts given by a function
    /// (`None`: the port has no affinity).
    pub fn sweep_with(
        &self,
        now: u32,
        timeout4: impl Fn(&ServiceKey) -> Option<u32>,
        timeout6: impl Fn(&ServiceKey<Ipv6Addr>) -> Option<u32>,
    ) -> usize {
        self.v4.sweep(now, timeout4) + self.v6.sweep(now, timeout6)
    }

    /// Bindings held, both families.
    pub fn len(&self) -> usize {
        self.v4.map.len() + self.v6.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One worker's record of the bindings it refreshed, in front of the
/// shared map as the flow cache is in front of conntrack: a binding is
/// touched at most once a second from this worker, and every other packet
/// of an affinity flow costs a compare instead of a shard lock.
/// Direct-mapped; a collision only costs an extra touch, never a missed
/// one, since a slot remembers exactly whom it touched and when. Each
/// family has slots of its own, taken when the worker starts
/// ([`Refreshes::take_memory`]) or at the family's first affinity packet.
#[derive(Debug, Default)]
pub struct Refreshes {
    v4: RefreshSlots<Ipv4Addr>,
    v6: RefreshSlots<Ipv6Addr>,
}

/// One family's slots in [`Refreshes`].
#[derive(Debug)]
pub struct RefreshSlots<A> {
    slots: Box<[Refreshed<A>]>,
}

impl<A> Default for RefreshSlots<A> {
    fn default() -> Self {
        Self {
            slots: Box::default(),
        }
    }
}

impl<A: AffinityFamily> RefreshSlots<A> {
    /// Takes the slots' memory now, if there is none yet: placeholders
    /// that record no touch, in a second no worker reaches.
    fn take_memory(&mut self) {
        if !self.slots.is_empty() {
            return;
        }
        let never = Refreshed {
            service: ServiceKey {
                vip: A::UNSPECIFIED,
                port: 0,
                protocol: Protocol::Udp,
            },
            client: A::UNSPECIFIED,
            second: u32::MAX,
        };
        self.slots = vec![never; Refreshes::SLOTS].into_boxed_slice();
    }
}

#[derive(Debug, Clone, Copy)]
struct Refreshed<A> {
    service: ServiceKey<A>,
    client: A,
    /// The second of the last touch.
    second: u32,
}

impl Refreshes {
    const SLOTS: usize = 1024;

    #[inline(always)]
    fn slot<A: AffinityFamily>(service: &ServiceKey<A>, client: A) -> usize {
        let a = client.fold() ^ service.vip.fold().rotate_left(16);
        let b = u32::from(service.port) | (u32::from(service.protocol.ip_number()) << 16);
        // The top 10 bits of a multiplicative hash: one of 1024 slots.
        ((a ^ b.wrapping_mul(0x85eb_ca6b)).wrapping_mul(0x9e37_79b9) >> 22) as usize
    }

    /// Takes both families' slots now, if they have none yet (a worker
    /// does at its start, so that no affinity packet waits for them).
    pub fn take_memory(&mut self) {
        self.v4.take_memory();
        self.v6.take_memory();
    }

    /// Records a packet of an affinity flow from `client` to `service`:
    /// touches the shared binding unless this worker already did in
    /// second `now`.
    #[inline]
    pub fn touch<A: AffinityFamily>(
        &mut self,
        affinity: &Affinity,
        service: ServiceKey<A>,
        client: A,
        now: u32,
    ) {
        let slot = Self::slot(&service, client);
        let family = A::refreshed(self);
        if let Some(r) = family.slots.get(slot) {
            if r.second == now && r.client == client && r.service == service {
                return;
            }
        }
        affinity.touch(service, client, now);
        let refreshed = Refreshed {
            service,
            client,
            second: now,
        };
        // At the first affinity packet, unless the worker took the
        // memory at its start.
        family.take_memory();
        if let Some(r) = family.slots.get_mut(slot) {
            *r = refreshed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cipgw_config::Protocol;

    fn svc() -> ServiceKey {
        ServiceKey {
            vip: Ipv4Addr::new(198, 18, 100, 10),
            port: 80,
            protocol: Protocol::Tcp,
        }
    }

    fn backends() -> Vec<Backend> {
        (11..14)
            .map(|i| Backend {
                ip: Ipv4Addr::new(198, 18, 2, i),
                port: 8080,
            })
            .collect()
    }

    #[test]
    fn a_client_sticks_until_timeout_or_endpoint_loss() {
        let a = Affinity::default();
        let mut rng = Rng::new(3);
        let client = Ipv4Addr::new(198, 18, 0, 2);
        let all = backends();
        let first = a.pick(svc(), client, &all, 10, 0, &mut rng);
        for t in 1..50 {
            assert_eq!(a.pick(svc(), client, &all, 10, t, &mut rng), first, "t={t}");
        }
        // Its endpoint goes away: rebalanced onto the others.
        let rest: Vec<Backend> = all.iter().copied().filter(|b| *b != first).collect();
        let second = a.pick(svc(), client, &rest, 10, 50, &mut rng);
        assert_ne!(second, first);
        // Silent past the timeout: a fresh random choice, which over many
        // clients spreads over all endpoints.
        let mut seen = std::collections::HashSet::new();
        for i in 0..200u32 {
            let c = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 1, 0)) + i);
            a.pick(svc(), c, &all, 10, 100, &mut rng);
            seen.insert(a.pick(svc(), c, &all, 10, 111, &mut rng));
        }
        assert_eq!(seen.len(), 3);
        let bound = a.len();
        assert_eq!(
            a.sweep_with(200, |_| Some(10), |_| Some(10)),
            bound,
            "all idle past 10 s"
        );
        assert!(a.is_empty());
    }

    #[test]
    fn touch_keeps_a_busy_client() {
        let a = Affinity::default();
        let mut rng = Rng::new(4);
        let client = Ipv4Addr::new(198, 18, 0, 2);
        let first = a.pick(svc(), client, &backends(), 10, 0, &mut rng);
        for t in (5..100).step_by(5) {
            a.touch(svc(), client, t);
        }
        assert_eq!(a.pick(svc(), client, &backends(), 10, 105, &mut rng), first);
        assert_eq!(a.sweep_with(200, |_| Some(10), |_| Some(10)), 1);
        assert!(a.is_empty());
    }

    #[test]
    fn refreshes_touch_once_a_second_and_keep_the_expiry() {
        let a = Affinity::default();
        let mut rng = Rng::new(5);
        let mut refreshes = Refreshes::default();
        let client = Ipv4Addr::new(198, 18, 0, 2);
        a.pick(svc(), client, &backends(), 10, 0, &mut rng);
        let touches = || a.touches.load(Ordering::Relaxed);
        for t in 0..20 {
            for _ in 0..50 {
                refreshes.touch(&a, svc(), client, t);
            }
            assert_eq!(touches(), u64::from(t) + 1, "one touch in second {t}");
        }
        // Another client, another Service port: each its own touch.
        refreshes.touch(&a, svc(), Ipv4Addr::new(198, 18, 0, 3), 19);
        let udp = ServiceKey {
            protocol: Protocol::Udp,
            ..svc()
        };
        refreshes.touch(&a, udp, client, 19);
        assert_eq!(touches(), 22);
        // The binding lasts from its last touched second, as if every
        // packet had touched it.
        assert_eq!(a.sweep_with(29, |_| Some(10), |_| Some(10)), 0);
        assert_eq!(a.sweep_with(30, |_| Some(10), |_| Some(10)), 1);
        assert!(a.is_empty());
    }

    /// Slots a worker took at its start record no touch: the first packet
    /// of every binding in every second touches it, the placeholders' own
    /// client and Service port too.
    #[test]
    fn refreshes_taken_at_start_touch_as_those_taken_at_first_use() {
        let a = Affinity::default();
        let mut refreshes = Refreshes::default();
        refreshes.take_memory();
        let touches = || a.touches.load(Ordering::Relaxed);
        let placeholder = ServiceKey {
            vip: Ipv4Addr::UNSPECIFIED,
            port: 0,
            protocol: Protocol::Udp,
        };
        let client = Ipv4Addr::new(198, 18, 0, 2);
        for t in [0, 1, 7] {
            refreshes.touch(&a, svc(), client, t);
            refreshes.touch(&a, svc(), client, t);
            refreshes.touch(&a, placeholder, Ipv4Addr::UNSPECIFIED, t);
        }
        assert_eq!(touches(), 6, "one touch per binding and second");
        let slots = refreshes.v4.slots.len();
        refreshes.take_memory();
        refreshes.touch(&a, svc(), client, 7);
        assert_eq!(
            (touches(), slots),
            (6, Refreshes::SLOTS),
            "taken again, the slots keep what they recorded"
        );
    }

    /// IPv6 clients are bound like IPv4 ones, in bindings of their own:
    /// each family's sweep goes by its own timeouts.
    #[test]
    fn ipv6_clients_stick_apart_from_ipv4_ones() {
        let a = Affinity::default();
        let mut rng = Rng::new(6);
        let mut refreshes = Refreshes::default();
        let svc6 = ServiceKey {
            vip: "2001:2:0:ff::10".parse::<Ipv6Addr>().expect("literal"),
            port: 80,
            protocol: Protocol::Tcp,
        };
        let all6: Vec<Backend<Ipv6Addr>> = (0x11..0x14)
            .map(|last| Backend {
                ip: Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, last),
                port: 8080,
            })
            .collect();
        let client6: Ipv6Addr = "2001:2::2".parse().expect("literal");
        let first = a.pick(svc6, client6, &all6, 10, 0, &mut rng);
        for t in 1..20 {
            assert_eq!(a.pick(svc6, client6, &all6, 10, t, &mut rng), first);
        }
        a.pick(
            svc(),
            Ipv4Addr::new(198, 18, 0, 2),
            &backends(),
            10,
            0,
            &mut rng,
        );
        assert_eq!(a.len(), 2);
        refreshes.touch(&a, svc6, client6, 25);
        assert_eq!(
            a.sweep_with(30, |_| Some(10), |_| Some(10)),
            1,
            "IPv4 idle 30 s"
        );
        assert_eq!(
            a.sweep_with(30, |_| Some(10), |_| None),
            1,
            "no IPv6 affinity"
        );
        assert!(a.is_empty());
    }
}
