//! The gateway's DNS service (`--dns-address`): the zone compiled with
//! every table, a responder per worker, the XDP steering of UDP port 53,
//! and the TCP listener.
//!
//! UDP queries are answered by the workers in place (see
//! [`crate::dns`]). TCP (RFC 7766: what a client retries with after a
//! truncated answer) goes through the kernel: for the kernel to accept
//! connections to a DNS address, the address must be local, so the
//! gateway adds each one to the loopback device, unless it is there
//! already, and removes what it added when it stops: an IPv4 address
//! scope host (never a source address; the kernel answers ARP for it on
//! the gateway's interfaces as for any local address), an IPv6 one
//! deprecated (never a source address either, see
//! [`crate::netlink::add_loopback_address`]; the kernel answers
//! neighbour solicitations only for addresses of the interface asked, so
//! clients reach it, as a ClusterIP, through a route to the gateway).
//! Binding a non-local address (`IPV6_FREEBIND`) would not do: the
//! kernel delivers locally only what is addressed to a local address. A listener thread per address
//! answers each connection's queries from the table published at that
//! moment, the same snapshot the workers answer from.
//!
//! With `--dns-upstream`, names outside the cluster domain are forwarded
//! ([`super::dns_forward`]): the workers hand UDP queries to the
//! forwarding thread, TCP connections ask an upstream over TCP themselves
//! (SERVFAIL when it fails).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use cipgw_config::settings::Settings;
use cipgw_config::ServiceTable;
use ipnet::IpNet;

use super::dns_forward::{Forwarder, TcpForward};
use crate::dns::{self, DnsConfig, DnsResponder, DnsZone, Response};
use crate::metrics::DnsStats;
use crate::reject::RefusalLimiter;
use crate::table::{CompiledTable, TableHandle};

/// Connections served at once, all addresses together; more wait in the
/// kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// A connection idle this long is closed (RFC 7766 6.2.3 suggests
/// seconds).
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);

/// The DNS side of a running gateway.
#[derive(Debug)]
pub(super) struct DnsService {
    config: DnsConfig,
    /// Either family.
    addresses: Vec<IpAddr>,
    cluster_cidrs: Vec<IpNet>,
    /// Answers per second per source and worker; 0: none.
    rate_limit: u32,
    pub(super) stats: Arc<DnsStats>,
    /// Loopback addresses this gateway added (removed on drop).
    added: Vec<IpAddr>,
    stop: Arc<AtomicBool>,
    listeners: Vec<JoinHandle<()>>,
    /// Forwarding of names outside the zone (`--dns-upstream`).
    forwarder: Option<Forwarder>,
}

impl DnsService {
    /// `None` without `--dns-address`: then nothing changes.
    pub(super) fn new(settings: &Settings) -> anyhow::Result<Option<Self>> {
        let dns = &settings.dns;
        if dns.addresses.is_empty() {
            return Ok(None);
        }
        let forwarder = match dns.upstreams.as_slice() {
            [] => None,
            upstreams => Some(Forwarder::new(upstreams)?),
        };
        let stats = Arc::new(DnsStats::default());
        if let Some(forwarder) = &forwarder {
            stats.count_forwarding(Arc::clone(&forwarder.counters));
        }
        Ok(Some(Self {
            config: DnsConfig {
                zone: dns
                    .cluster_domain
                    .trim_end_matches('.')
                    .to_ascii_lowercase(),
                ttl: dns.ttl,
            },
            addresses: dns.addresses.clone(),
            cluster_cidrs: settings.cluster_cidrs.clone(),
            rate_limit: dns.rate_limit,
            stats,
            added: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            listeners: Vec::new(),
            forwarder,
        }))
    }

    pub(super) fn addresses(&self) -> &[IpAddr] {
        &self.addresses
    }

    /// `table` with the zone of its model attached.
    pub(super) fn attach_zone(&self, table: CompiledTable) -> CompiledTable {
        let zone = self.zone(table.model(), table.generation());
        table.with_dns(Arc::new(zone))
    }

    fn zone(&self, model: &ServiceTable, generation: u64) -> DnsZone {
        let zone = DnsZone::compile(model, &self.config, generation);
        for skipped in zone.skipped() {
            tracing::warn!(record = %skipped.record, reason = %skipped.reason, "DNS record left out");
        }
        zone
    }

    /// A worker's responder, counting into its own counters.
    pub(super) fn responder(&self) -> anyhow::Result<DnsResponder> {
        let responder = DnsResponder::new(
            self.addresses.clone(),
            self.cluster_cidrs.clone(),
            self.stats.add(),
        );
        let responder = match self.rate_limit {
            0 => responder.with_limits(RefusalLimiter::new(u32::MAX, u32::MAX)),
            n => responder.with_limits(RefusalLimiter::new(n, dns::DEFAULT_ANSWERS_TOTAL)),
        };
        Ok(match &self.forwarder {
            Some(forwarder) => responder.with_forwarding(forwarder.sender()?),
            None => responder,
        })
    }

    /// Makes the addresses local and starts a TCP listener on each. A
    /// gateway that took over from another (`took_over`) owns the
    /// addresses that one left on lo for it (see [`Self::hand_over`]), and
    /// removes them at its exit.
    pub(super) fn start_tcp(&mut self, table: &TableHandle, took_over: bool) -> anyhow::Result<()> {
        let active = Arc::new(AtomicUsize::new(0));
        for &address in &self.addresses {
            let added = crate::netlink::add_loopback_address(address)
                .with_context(|| format!("--dns-address {address}: making it local for TCP"))?;
            if added || took_over {
                self.added.push(address);
            }
            let listener = TcpListener::bind(SocketAddr::new(address, dns::PORT))
                .with_context(|| format!("--dns-address {address}: listening on TCP port 53"))?;
            listener.set_nonblocking(true)?;
            let tcp = TcpDns {
                table: table.clone(),
                cluster_cidrs: self.cluster_cidrs.clone(),
                counters: self.stats.add(),
                active: Arc::clone(&active),
                stop: Arc::clone(&self.stop),
                forward: self.forwarder.as_ref().map(Forwarder::tcp),
            };
            let handle = std::thread::Builder::new()
                .name(format!("cipgw-dns-{address}"))
                .spawn(move || tcp.serve(&listener))
                .context("spawning the DNS TCP listener")?;
            self.listeners.push(handle);
        }
        if let Some(forwarder) = &mut self.forwarder {
            forwarder.start(&self.addresses)?;
        }
        tracing::info!(
            addresses = ?self.addresses,
            zone = %self.config.zone,
            ttl = self.config.ttl,
            "answering DNS: UDP in the workers, TCP on the loopback-local addresses"
        );
        Ok(())
    }
}

impl DnsService {
    /// Before the next gateway takes over: stops the TCP listeners (so it
    /// can bind the addresses) and leaves the addresses on lo, for it to
    /// own from now on.
    pub(super) fn hand_over(&mut self) {
        self.stop_listeners();
        self.added.clear();
    }

    fn stop_listeners(&mut self) {
        // Relaxed: the listeners poll it; nothing else is published
        // through it.
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.listeners.drain(..) {
            let _ = handle.join();
        }
        if let Some(forwarder) = &mut self.forwarder {
            forwarder.stop();
        }
    }
}

impl Drop for DnsService {
    fn drop(&mut self) {
        self.stop_listeners();
        for address in self.added.drain(..) {
            let removed = crate::netlink::remove_loopback_address(address);
            if let Err(e) = removed {
                tracing::warn!(%address, error = %e, "could not remove the DNS address from lo");
            }
        }
    }
}

/// One address's TCP listener.
struct TcpDns {
    table: TableHandle,
    cluster_cidrs: Vec<IpNet>,
    counters: Arc<dns::DnsCounters>,
    active: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    /// Names outside the zone go to an upstream over TCP.
    forward: Option<TcpForward>,
}

impl TcpDns {
    fn serve(self, listener: &TcpListener) {
        let shared = Arc::new(self);
        // Relaxed: see `DnsService::drop`.
        while !shared.stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, peer)) => {
                    let client = peer.ip();
                    if !shared.cluster_cidrs.is_empty()
                        && !shared.cluster_cidrs.iter().any(|c| c.contains(&client))
                    {
                        shared.counters.count_drop(dns::DnsDrop::NotInCluster);
                        continue;
                    }
                    // Relaxed: a bound on threads, ordering nothing else.
                    if shared.active.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
                        shared.active.fetch_sub(1, Ordering::Relaxed);
                        shared.counters.count_drop(dns::DnsDrop::RateLimited);
                        continue;
                    }
                    let conn = Arc::clone(&shared);
                    let spawned = std::thread::Builder::new()
                        .name("cipgw-dns-tcp".into())
                        .spawn(move || {
                            if let Err(e) = conn.connection(stream) {
                                tracing::debug!(error = %e, "DNS TCP connection ended");
                            }
                            conn.active.fetch_sub(1, Ordering::Relaxed);
                        });
                    if spawned.is_err() {
                        shared.active.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "DNS TCP accept failed");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Answers length-prefixed queries (RFC 1035 4.2.2) until the client
    /// closes, stays idle, or sends what cannot be answered.
    fn connection(&self, mut stream: TcpStream) -> io::Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
        stream.set_write_timeout(Some(IDLE_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let mut buf = vec![0u8; usize::from(u16::MAX)];
        let mut upstream_answer = match self.forward {
            Some(_) => vec![0u8; usize::from(u16::MAX)],
            None => Vec::new(),
        };
        loop {
            let mut len = [0u8; 2];
            match stream.read_exact(&mut len) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            let len = usize::from(u16::from_be_bytes(len));
            stream.read_exact(&mut buf[..len])?;
            let table = self.table.current();
            let response = dns::respond_or_forward(
                table.dns(),
                &mut buf,
                len,
                None,
                &self.counters,
                self.forward.is_some(),
            );
            let answer = match (response, &self.forward) {
                (Ok(Response::Answered(answered)), _) => &buf[..answered.len],
                (Ok(Response::Forward { question_end }), Some(forward)) => {
                    match forward.exchange(&buf[..len], &mut upstream_answer) {
                        Ok(n) => &upstream_answer[..n],
                        Err(e) => {
                            tracing::debug!(error = %e, "DNS over TCP: no answer upstream");
                            let failed = dns::servfail(&mut buf, question_end, &self.counters);
                            &buf[..failed.len]
                        }
                    }
                }
                (Ok(Response::Forward { .. }), None) | (Err(_), _) => {
                    let _ = stream.shutdown(Shutdown::Both);
                    return Ok(());
                }
            };
            let prefix = u16::try_from(answer.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes();
            stream.write_all(&prefix)?;
            stream.write_all(answer)?;
        }
    }
}
