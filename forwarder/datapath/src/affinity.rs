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

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use ahash::RandomState;
use dashmap::DashMap;

use crate::lb::Rng;
use crate::table::{Backend, ServiceKey};

/// The affinity of one client to one Service port.
#[derive(Debug)]
struct Sticky {
    backend: Backend,
    /// Coarse time of the client's last packet, seconds.
    last_seen: AtomicU32,
}

/// Client -> endpoint bindings of every affinity Service, shared by all
/// workers.
#[derive(Debug)]
pub struct Affinity {
    bindings: DashMap<(ServiceKey, Ipv4Addr), Sticky, RandomState>,
    /// Calls of [`Affinity::touch`], each a shard lock: what tests see of
    /// the packet path's cost here.
    #[cfg(test)]
    pub(crate) touches: std::sync::atomic::AtomicU64,
}

impl Default for Affinity {
    fn default() -> Self {
        Self {
            bindings: DashMap::with_hasher(RandomState::new()),
            #[cfg(test)]
            touches: Default::default(),
        }
    }
}

impl Affinity {
    /// The endpoint for a new connection from `client` to `service`.
    pub fn pick(
        &self,
        service: ServiceKey,
        client: Ipv4Addr,
        backends: &[Backend],
        timeout: u32,
        now: u32,
        rng: &mut Rng,
    ) -> Backend {
        if let Some(sticky) = self.bindings.get(&(service, client)) {
            // Relaxed: a timestamp compared against a timeout; nothing
            // else is published through it.
            let idle = now.saturating_sub(sticky.last_seen.load(Ordering::Relaxed));
            if idle <= timeout && backends.contains(&sticky.backend) {
                sticky.last_seen.store(now, Ordering::Relaxed);
                return sticky.backend;
            }
        }
        let backend = backends[rng.below(backends.len())];
        self.bindings.insert(
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
    pub fn touch(&self, service: ServiceKey, client: Ipv4Addr, now: u32) {
        // Relaxed: a test's tally, read after the packets it counts.
        #[cfg(test)]
        self.touches.fetch_add(1, Ordering::Relaxed);
        if let Some(sticky) = self.bindings.get(&(service, client)) {
            // Relaxed: see `pick`; written only on change.
            if sticky.last_seen.load(Ordering::Relaxed) != now {
                sticky.last_seen.store(now, Ordering::Relaxed);
            }
        }
    }

    /// Removes bindings idle past their Service's timeout, or of Services
    /// that no longer have affinity (`timeout_of` returns `None`).
    pub fn sweep(&self, now: u32, timeout_of: impl Fn(&ServiceKey) -> Option<u32>) -> usize {
        let before = self.bindings.len();
        self.bindings
            .retain(|(service, _), sticky| match timeout_of(service) {
                // Relaxed: see `pick`.
                Some(timeout) => {
                    now.saturating_sub(sticky.last_seen.load(Ordering::Relaxed)) <= timeout
                }
                None => false,
            });
        before - self.bindings.len()
    }

    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }
}

/// One worker's record of the bindings it refreshed, in front of the
/// shared map as the flow cache is in front of conntrack: a binding is
/// touched at most once a second from this worker, and every other packet
/// of an affinity flow costs a compare instead of a shard lock.
/// Direct-mapped; a collision only costs an extra touch, never a missed
/// one, since a slot remembers exactly whom it touched and when.
#[derive(Debug, Default)]
pub struct Refreshes {
    slots: Box<[Refreshed]>,
}

#[derive(Debug, Clone, Copy)]
struct Refreshed {
    service: ServiceKey,
    client: Ipv4Addr,
    /// The second of the last touch.
    second: u32,
}

impl Refreshes {
    const SLOTS: usize = 1024;

    #[inline(always)]
    fn slot(service: &ServiceKey, client: Ipv4Addr) -> usize {
        let a = u32::from(client) ^ u32::from(service.vip).rotate_left(16);
        let b = u32::from(service.port) | (u32::from(service.protocol.ip_number()) << 16);
        // The top 10 bits of a multiplicative hash: one of 1024 slots.
        ((a ^ b.wrapping_mul(0x85eb_ca6b)).wrapping_mul(0x9e37_79b9) >> 22) as usize
    }

    /// Records a packet of an affinity flow from `client` to `service`:
    /// touches the shared binding unless this worker already did in
    /// second `now`.
    #[inline]
    pub fn touch(&mut self, affinity: &Affinity, service: ServiceKey, client: Ipv4Addr, now: u32) {
        let slot = Self::slot(&service, client);
        if let Some(r) = self.slots.get(slot) {
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
        if self.slots.is_empty() {
            // Allocated at the first affinity packet, not per pipeline.
            self.slots = vec![
                Refreshed {
                    second: now.wrapping_add(1),
                    ..refreshed
                };
                Self::SLOTS
            ]
            .into_boxed_slice();
        }
        if let Some(r) = self.slots.get_mut(slot) {
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
        assert_eq!(a.sweep(200, |_| Some(10)), bound, "all idle past 10 s");
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
        assert_eq!(a.sweep(200, |_| Some(10)), 1);
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
        assert_eq!(a.sweep(29, |_| Some(10)), 0);
        assert_eq!(a.sweep(30, |_| Some(10)), 1);
        assert!(a.is_empty());
    }
}
