//! Connection tracking: which backend each connection was given.
//!
//! One concurrent map holds both directions of every flow, keyed by the
//! 5-tuple exactly as it appears on the wire:
//! - the forward key (client, VIP, client port, VIP port) maps to the
//!   backend the flow was given (the destination to write);
//! - the reply key (backend, client, backend port, client port) maps back
//!   to the VIP and port (the source to write), so replies leave the
//!   gateway from the address the client connected to.
//!
//! Workers read it under a shard read lock (dashmap) on every packet and
//! write it only for a new flow. The hash is aHash with per-process random
//! keys, so clients cannot aim their flows at one bucket.

use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use ahash::RandomState;
use cipgw_config::Protocol;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

/// A 5-tuple as seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: Protocol,
}

impl FlowKey {
    /// The key of the other direction of the same flow.
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
            protocol: self.protocol,
        }
    }
}

impl Hash for FlowKey {
    // Two word-sized writes instead of five field writes: the hash is on
    // the per-packet path.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64((u64::from(u32::from(self.src)) << 32) | u64::from(u32::from(self.dst)));
        state.write_u64(
            (u64::from(self.src_port) << 24)
                | (u64::from(self.dst_port) << 8)
                | u64::from(self.protocol.ip_number()),
        );
    }
}

/// Which way a packet travels relative to the connection's first packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to VIP: write the backend as destination.
    Forward,
    /// Backend to client: write the VIP as source.
    Reply,
}

/// One direction of a tracked flow.
#[derive(Debug)]
pub struct FlowEntry {
    direction: Direction,
    /// Backend (forward) or VIP (reply) address to write.
    nat_ip: Ipv4Addr,
    /// Backend target port (forward) or service port (reply) to write.
    nat_port: u16,
    /// Coarse time of the last packet, in the caller's seconds.
    last_seen: AtomicU32,
}

/// The rewrite a tracked packet gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowHit {
    pub direction: Direction,
    pub nat_ip: Ipv4Addr,
    pub nat_port: u16,
}

/// Why a new flow could not be tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// Another flow already owns the reply key: the same client address
    /// and port reached the same backend through another VIP. Without
    /// source NAT the replies could not be told apart.
    ReplyClash,
}

/// The connection-tracking table.
#[derive(Debug)]
pub struct Conntrack {
    flows: DashMap<FlowKey, FlowEntry, RandomState>,
}

impl Default for Conntrack {
    fn default() -> Self {
        Self::with_capacity(Self::INITIAL_FLOWS)
    }
}

impl Conntrack {
    /// Flows the table holds before it first grows. Small on purpose: a
    /// sparse table spreads a few live flows over many cache lines, which
    /// costs more per packet than the occasional growth of one shard.
    pub const INITIAL_FLOWS: usize = 4096;

    /// A table with room for `flows` connections (both directions)
    /// before it grows.
    pub fn with_capacity(flows: usize) -> Self {
        Self {
            flows: DashMap::with_capacity_and_hasher(flows.saturating_mul(2), RandomState::new()),
        }
    }

    /// Looks a packet's key up and marks the entry as seen at `now`.
    #[inline]
    pub fn lookup(&self, key: &FlowKey, now: u32) -> Option<FlowHit> {
        let entry = self.flows.get(key)?;
        // Relaxed: last_seen is a statistic for expiry; no other memory is
        // published through it. Writing only on change keeps the cache
        // line shared between cores for established flows.
        if entry.last_seen.load(Ordering::Relaxed) != now {
            entry.last_seen.store(now, Ordering::Relaxed);
        }
        Some(FlowHit {
            direction: entry.direction,
            nat_ip: entry.nat_ip,
            nat_port: entry.nat_port,
        })
    }

    /// Tracks a new flow from `forward` (client -> VIP) to `backend`.
    ///
    /// When the forward key is already tracked (another worker raced us,
    /// or the packet was retried), the existing backend wins and is
    /// returned, so both packets go to the same place.
    pub fn insert(
        &self,
        forward: FlowKey,
        backend: (Ipv4Addr, u16),
        now: u32,
    ) -> Result<FlowHit, InsertError> {
        let reply = FlowKey {
            src: backend.0,
            dst: forward.src,
            src_port: backend.1,
            dst_port: forward.src_port,
            protocol: forward.protocol,
        };
        match self.flows.entry(reply) {
            Entry::Occupied(existing) => {
                let e = existing.get();
                if e.nat_ip != forward.dst || e.nat_port != forward.dst_port {
                    return Err(InsertError::ReplyClash);
                }
            }
            Entry::Vacant(slot) => {
                slot.insert(FlowEntry {
                    direction: Direction::Reply,
                    nat_ip: forward.dst,
                    nat_port: forward.dst_port,
                    last_seen: AtomicU32::new(now),
                });
            }
        }
        let entry = self.flows.entry(forward).or_insert(FlowEntry {
            direction: Direction::Forward,
            nat_ip: backend.0,
            nat_port: backend.1,
            last_seen: AtomicU32::new(now),
        });
        Ok(FlowHit {
            direction: Direction::Forward,
            nat_ip: entry.nat_ip,
            nat_port: entry.nat_port,
        })
    }

    /// Entries in the table (two per flow).
    pub fn entries(&self) -> usize {
        self.flows.len()
    }

    /// Removes both directions of every flow idle since before
    /// `idle_before` (caller's seconds) that `expired` selects by protocol.
    /// Returns the number of entries removed.
    pub fn expire(&self, idle_before: impl Fn(Protocol) -> u32) -> usize {
        let before = self.flows.len();
        // Relaxed: see `lookup`.
        self.flows.retain(|key, entry| {
            entry.last_seen.load(Ordering::Relaxed) >= idle_before(key.protocol)
        });
        before - self.flows.len()
    }

    /// Visits every entry (for admin views and tests).
    pub fn for_each(&self, mut visit: impl FnMut(&FlowKey, FlowHit)) {
        for item in self.flows.iter() {
            let e = item.value();
            visit(
                item.key(),
                FlowHit {
                    direction: e.direction,
                    nat_ip: e.nat_ip,
                    nat_port: e.nat_port,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> FlowKey {
        FlowKey {
            src: src.into(),
            dst: dst.into(),
            src_port: sport,
            dst_port: dport,
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn insert_tracks_both_directions() {
        let ct = Conntrack::default();
        let forward = key([198, 18, 0, 2], 40000, [198, 18, 100, 10], 8080);
        let backend = (Ipv4Addr::new(198, 18, 2, 11), 5678);
        let hit = ct.insert(forward, backend, 1).expect("insert");
        assert_eq!(hit.nat_ip, backend.0);
        assert_eq!(ct.entries(), 2);

        assert_eq!(
            ct.lookup(&forward, 2),
            Some(FlowHit {
                direction: Direction::Forward,
                nat_ip: backend.0,
                nat_port: 5678
            })
        );
        let reply = key([198, 18, 2, 11], 5678, [198, 18, 0, 2], 40000);
        assert_eq!(
            ct.lookup(&reply, 2),
            Some(FlowHit {
                direction: Direction::Reply,
                nat_ip: Ipv4Addr::new(198, 18, 100, 10),
                nat_port: 8080
            })
        );
        assert_eq!(ct.lookup(&forward.reversed(), 2), None);
    }

    #[test]
    fn first_backend_wins_a_race() {
        let ct = Conntrack::default();
        let forward = key([198, 18, 0, 2], 40000, [198, 18, 100, 10], 8080);
        ct.insert(forward, (Ipv4Addr::new(198, 18, 2, 11), 5678), 1)
            .expect("first insert");
        // A second insert for the same forward key to another backend
        // returns the first; its reply entry is left for expiry.
        let again = ct
            .insert(forward, (Ipv4Addr::new(198, 18, 2, 12), 5678), 1)
            .expect("second insert");
        assert_eq!(again.nat_ip, Ipv4Addr::new(198, 18, 2, 11));
    }

    #[test]
    fn reply_clash_is_reported() {
        let ct = Conntrack::default();
        let backend = (Ipv4Addr::new(198, 18, 2, 11), 5678);
        ct.insert(
            key([198, 18, 0, 2], 40000, [198, 18, 100, 10], 80),
            backend,
            1,
        )
        .expect("first");
        assert_eq!(
            ct.insert(
                key([198, 18, 0, 2], 40000, [198, 18, 100, 11], 80),
                backend,
                1
            ),
            Err(InsertError::ReplyClash)
        );
    }

    #[test]
    fn expiry_removes_idle_entries() {
        let ct = Conntrack::default();
        let a = key([198, 18, 0, 2], 1, [198, 18, 100, 10], 80);
        let b = key([198, 18, 0, 2], 2, [198, 18, 100, 10], 80);
        ct.insert(a, (Ipv4Addr::new(198, 18, 2, 11), 80), 10)
            .expect("a");
        ct.insert(b, (Ipv4Addr::new(198, 18, 2, 11), 80), 10)
            .expect("b");
        ct.lookup(&a, 50);
        // Only a's forward entry was refreshed; the rest are idle.
        assert_eq!(ct.expire(|_| 40), 3);
        assert!(ct.lookup(&a, 51).is_some());
    }
}
