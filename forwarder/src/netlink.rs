//! The kernel's routes and neighbours of both families, and its links,
//! read over rtnetlink and kept current as a published [`NetSnapshot`].
//!
//! Workers never talk to the kernel: they load the current snapshot (an
//! `Arc` behind an [`ArcSwap`]) once per batch, and when a next hop has no
//! resolved neighbour they drop a request into a bounded channel
//! ([`Resolver::request_resolution`], never blocks, never allocates). The
//! monitor thread owns both netlink sockets: it listens to route,
//! neighbour and link events, coalesces them, re-dumps the tables and
//! publishes a new snapshot when its content changed (and re-dumps every
//! few seconds regardless, in case an event was lost); it also asks the
//! kernel to resolve requested neighbours, as "managed" entries
//! (NTF_EXT_MANAGED, Linux >= 5.16) that the kernel then keeps resolved by
//! itself.
//!
//! Everything here runs in the network namespace of the thread that calls
//! it (sockets are bound to a namespace when created); the monitor thread
//! inherits the namespace of the thread that spawns it.

use std::collections::{HashMap, HashSet};
use std::ffi::{c_char, CStr};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr as IpSocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::channel::{self, Receiver, Sender, TrySendError};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope, CacheInfo,
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourFlags, NeighbourMessage,
    NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

use crate::family::IpFamily;
use crate::route::{NetSnapshot, Port, Route};
use crate::wire::ethernet::MacAddr;

/// rtnetlink multicast groups (linux/rtnetlink.h).
const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_NEIGH: u32 = 3;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV6_ROUTE: u32 = 11;

/// linux/netlink.h message types.
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// Largest datagram the kernel sends us (dumps are capped at 32 KiB).
const RECV_BUF: usize = 64 * 1024;
/// How long one request (dump or change) may take in total.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Receive timeout per `recv` on the request socket.
const RECV_TIMEOUT: Duration = Duration::from_millis(500);
/// A dump the kernel marks interrupted (tables changed meanwhile) is
/// retried this often.
const DUMP_RETRIES: usize = 3;

/// How long the monitor sleeps waiting for events; bounds how late it
/// notices a resolution request or a stop.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Events arriving faster than this are folded into one re-dump.
const MIN_REBUILD_INTERVAL: Duration = Duration::from_millis(50);
/// Safety net: re-dump this often even without events.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// Resolution requests waiting for the monitor; more are dropped.
const REQUEST_QUEUE: usize = 1024;
/// The same neighbour is asked for at most this often.
const REQUEST_DEBOUNCE: Duration = Duration::from_secs(1);

/// Why talking to the kernel failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {what}: {source}")]
    Socket {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("netlink {what}: kernel says: {source}")]
    Kernel {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("netlink {what}: no complete answer within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("netlink {what}: dump interrupted {DUMP_RETRIES} times by concurrent changes")]
    Interrupted { what: String },
    #[error("interface {name:?} not found")]
    NoSuchInterface { name: String },
    #[error("too many ports: {0} (PortId is a u8)")]
    TooManyPorts(usize),
    #[error("spawning the netlink monitor thread: {0}")]
    Spawn(#[source] io::Error),
}

/// One neighbour table entry (ARP for IPv4, NDP for IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour<A = Ipv4Addr> {
    pub ifindex: u32,
    pub ip: A,
    pub mac: Option<MacAddr>,
    pub state: NeighbourState,
    /// Whether the kernel keeps it resolved by itself (NTF_EXT_MANAGED).
    pub managed: bool,
}

impl<A> Neighbour<A> {
    /// Whether the entry has a usable link-layer address: states
    /// REACHABLE, STALE, DELAY, PROBE, PERMANENT or NOARP (STALE and
    /// friends are still valid; the kernel re-confirms them).
    pub fn is_resolved(&self) -> bool {
        self.mac.is_some()
            && matches!(
                self.state,
                NeighbourState::Reachable
                    | NeighbourState::Stale
                    | NeighbourState::Delay
                    | NeighbourState::Probe
                    | NeighbourState::Permanent
                    | NeighbourState::Noarp
            )
    }
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// The link-layer address, if the interface has a 6-byte one.
    pub mac: Option<MacAddr>,
}

/// How a resolution request was passed to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveMethod {
    /// A managed neighbour entry (NTF_EXT_MANAGED): the kernel resolves it
    /// and keeps it fresh.
    Managed,
    /// NTF_USE: the kernel probes once, like a packet would.
    Use,
    /// A datagram to the discard port, bound to the device: the kernel
    /// ARPs to send it.
    Datagram,
}

// ---------------------------------------------------------------------
// One-shot queries.

/// The main table's IPv4 unicast routes, best (lowest metric) first among
/// equal prefixes.
pub fn dump_routes() -> Result<Vec<Route>, NetlinkError> {
    Rtnl::open(&[])?.routes()
}

/// The IPv4 neighbour table, every state.
pub fn dump_neighbours() -> Result<Vec<Neighbour>, NetlinkError> {
    Rtnl::open(&[])?.neighbours()
}

/// The main table's IPv6 unicast routes, best first among equal prefixes.
pub fn dump_routes6() -> Result<Vec<Route<Ipv6Addr>>, NetlinkError> {
    Rtnl::open(&[])?.routes()
}

/// The IPv6 neighbour table (NDP), every state.
pub fn dump_neighbours6() -> Result<Vec<Neighbour<Ipv6Addr>>, NetlinkError> {
    Rtnl::open(&[])?.neighbours()
}

/// All links.
pub fn dump_links() -> Result<Vec<Link>, NetlinkError> {
    Rtnl::open(&[])?.links()
}

/// Every interface's primary IPv4 addresses, as (ifindex, address), in
/// the kernel's order (an interface's first one is its primary source).
pub fn dump_ipv4_addresses() -> Result<Vec<(u32, Ipv4Addr)>, NetlinkError> {
    Rtnl::open(&[])?.addresses()
}

/// Every interface's global IPv6 addresses (no link-local, tentative or
/// deprecated ones), as (ifindex, address), in the kernel's order.
pub fn dump_ipv6_addresses() -> Result<Vec<(u32, Ipv6Addr)>, NetlinkError> {
    Rtnl::open(&[])?.addresses6()
}

/// Adds `ip` (/32 or /128) to the loopback device, so that the kernel
/// accepts connections to it from any interface (what a local address
/// is) while never choosing it as a source. An IPv4 address gets scope
/// host. IPv6 has no scope host for a global address (the kernel derives
/// the scope from the address), so it is added with a preferred lifetime
/// of 0 instead (`ip -6 addr add ADDR/128 dev lo preferred_lft 0`):
/// deprecated, never chosen as a source (RFC 6724 rule 3), still a
/// destination and bindable; and without duplicate address detection (no
/// neighbours on lo). Returns false when it was there already (then it is
/// not the caller's to remove).
pub fn add_loopback_address(ip: IpAddr) -> Result<bool, NetlinkError> {
    match Rtnl::open(&[])?.change(
        &format!("adding {ip}/{} to lo", host_prefix(ip)),
        NLM_F_CREATE | netlink_packet_core::NLM_F_EXCL,
        RouteNetlinkMessage::NewAddress(loopback_address(ip)?),
    ) {
        Ok(()) => Ok(true),
        Err(NetlinkError::Kernel { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Removes what [`add_loopback_address`] added.
pub fn remove_loopback_address(ip: IpAddr) -> Result<(), NetlinkError> {
    Rtnl::open(&[])?.change(
        &format!("removing {ip}/{} from lo", host_prefix(ip)),
        0,
        RouteNetlinkMessage::DelAddress(loopback_address(ip)?),
    )
}

/// 32 or 128: one address's prefix length.
fn host_prefix(ip: IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn loopback_address(ip: IpAddr) -> Result<AddressMessage, NetlinkError> {
    // SAFETY: the argument is a NUL-terminated string literal.
    let index = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if index == 0 {
        return Err(NetlinkError::Kernel {
            what: "finding the loopback device".into(),
            source: io::Error::last_os_error(),
        });
    }
    let mut m = AddressMessage::default();
    m.header.prefix_len = host_prefix(ip);
    m.header.index = index;
    match ip {
        IpAddr::V4(_) => {
            m.header.family = AddressFamily::Inet;
            m.header.scope = AddressScope::Host;
            m.attributes.push(AddressAttribute::Local(ip));
            m.attributes.push(AddressAttribute::Address(ip));
        }
        IpAddr::V6(_) => {
            m.header.family = AddressFamily::Inet6;
            m.header.scope = AddressScope::Universe;
            m.attributes.push(AddressAttribute::Address(ip));
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
            let mut lifetimes = CacheInfo::default();
            lifetimes.ifa_preferred = 0;
            // INFINITY_LIFE_TIME: valid until removed.
            lifetimes.ifa_valid = u32::MAX;
            m.attributes.push(AddressAttribute::CacheInfo(lifetimes));
        }
    }
    Ok(m)
}

/// Routes, resolved neighbours and the named ports, as one snapshot.
/// `ports` order defines the `PortId`s.
pub fn dump_snapshot(ports: &[String]) -> Result<NetSnapshot, NetlinkError> {
    let mut rtnl = Rtnl::open(&[])?;
    let state = rtnl.collect(ports, &[])?;
    Ok(state.snapshot())
}

// ---------------------------------------------------------------------
// The monitor.

/// Handle for asking the monitor to resolve a neighbour; cheap to clone,
/// safe to use from worker threads.
#[derive(Debug, Clone)]
pub struct Resolver {
    tx: Sender<(u32, IpAddr)>,
}

impl Resolver {
    /// Queues a request to resolve `ip` on `ifindex`. Never blocks: when
    /// the queue is full (or the monitor has stopped) the request is
    /// dropped and `false` returned; the caller will ask again on a later
    /// packet.
    #[inline]
    pub fn request_resolution(&self, ifindex: u32, ip: impl Into<IpAddr>) -> bool {
        match self.tx.try_send((ifindex, ip.into())) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

/// The running monitor: the current snapshot and a way to request
/// resolutions. Stops its thread on drop.
#[derive(Debug)]
pub struct NetMonitor {
    current: Arc<ArcSwap<NetSnapshot>>,
    resolver: Resolver,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NetMonitor {
    /// The current snapshot (a cheap atomic load).
    #[inline]
    pub fn snapshot(&self) -> Arc<NetSnapshot> {
        self.current.load_full()
    }

    /// The publication point itself, for workers to hold.
    pub fn handle(&self) -> Arc<ArcSwap<NetSnapshot>> {
        Arc::clone(&self.current)
    }

    /// A resolution handle for worker threads.
    pub fn resolver(&self) -> Resolver {
        self.resolver.clone()
    }

    /// See [`Resolver::request_resolution`].
    #[inline]
    pub fn request_resolution(&self, ifindex: u32, ip: impl Into<IpAddr>) -> bool {
        self.resolver.request_resolution(ifindex, ip)
    }
}

impl Drop for NetMonitor {
    fn drop(&mut self) {
        // Relaxed: the flag carries no data; the join below is what
        // synchronises with the thread's end.
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("netlink monitor thread panicked");
            }
        }
    }
}

/// Dumps the tables once (failing if a port does not exist), publishes
/// that snapshot, and starts a thread keeping it current. `ports` are the
/// attached interfaces in `PortId` order.
pub fn spawn_monitor(ports: Vec<String>) -> Result<NetMonitor, NetlinkError> {
    if ports.len() > usize::from(u8::MAX) {
        return Err(NetlinkError::TooManyPorts(ports.len()));
    }
    let events = Rtnl::open(&[
        RTNLGRP_LINK,
        RTNLGRP_NEIGH,
        RTNLGRP_IPV4_ROUTE,
        RTNLGRP_IPV6_ROUTE,
    ])?;
    events.set_nonblocking()?;
    let mut requests = Rtnl::open(&[])?;
    // Subscribed before dumping: a change between the dump and the first
    // poll is seen as an event, not lost.
    let state = requests.collect(&ports, &[])?;
    let current = Arc::new(ArcSwap::from_pointee(state.snapshot()));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = channel::bounded(REQUEST_QUEUE);

    let mut monitor = Monitor {
        ports,
        events,
        requests,
        rx,
        current: Arc::clone(&current),
        stop: Arc::clone(&stop),
        state,
        recent: HashMap::new(),
    };
    let thread = std::thread::Builder::new()
        .name("cipgw-netlink".into())
        .spawn(move || monitor.run())
        .map_err(NetlinkError::Spawn)?;
    Ok(NetMonitor {
        current,
        resolver: Resolver { tx },
        stop,
        thread: Some(thread),
    })
}

/// What a snapshot is built from; compared to skip publishing unchanged
/// snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tables {
    routes: Vec<Route>,
    neighbours: HashMap<(u32, Ipv4Addr), MacAddr>,
    routes6: Vec<Route<Ipv6Addr>>,
    neighbours6: HashMap<(u32, Ipv6Addr), MacAddr>,
    ports: Vec<Port>,
}

impl Tables {
    fn snapshot(&self) -> NetSnapshot {
        NetSnapshot::new(
            self.routes.clone(),
            self.neighbours.clone(),
            self.ports.clone(),
        )
        .with_ipv6(self.routes6.clone(), self.neighbours6.clone())
    }

    fn has_ifindex(&self, ifindex: u32) -> bool {
        self.ports.iter().any(|p| p.ifindex == ifindex)
    }
}

struct Monitor {
    ports: Vec<String>,
    events: Rtnl,
    requests: Rtnl,
    rx: Receiver<(u32, IpAddr)>,
    current: Arc<ArcSwap<NetSnapshot>>,
    stop: Arc<AtomicBool>,
    state: Tables,
    /// When each neighbour was last asked for (debounce).
    recent: HashMap<(u32, IpAddr), Instant>,
}

impl Monitor {
    fn run(&mut self) {
        let mut dirty = false;
        let mut last_rebuild = Instant::now();
        // Relaxed: see NetMonitor::drop.
        while !self.stop.load(Ordering::Relaxed) {
            match self.events.wait_readable(POLL_INTERVAL) {
                Ok(true) => dirty |= self.drain_events(),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "netlink monitor poll");
                    std::thread::sleep(POLL_INTERVAL);
                }
            }
            self.serve_requests();
            let since = last_rebuild.elapsed();
            if (dirty && since >= MIN_REBUILD_INTERVAL) || since >= REFRESH_INTERVAL {
                // Whatever arrived while we waited is covered by the dump.
                dirty = false;
                last_rebuild = Instant::now();
                self.rebuild();
            }
        }
        tracing::debug!("netlink monitor stopped");
    }

    /// Reads every pending event; whether any concerns the snapshot.
    fn drain_events(&mut self) -> bool {
        let mut relevant = false;
        // Bounded: at most this many datagrams per wake-up, then re-dump.
        for _ in 0..256 {
            match self.events.recv(libc::MSG_DONTWAIT) {
                Ok(n) => {
                    let buf = &self.events.buf[..n];
                    for raw in split_messages(buf) {
                        relevant |= self.is_relevant(raw);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    // The kernel dropped events: only a re-dump is safe.
                    tracing::debug!("netlink event overrun, re-dumping");
                    relevant = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "netlink event socket");
                    return true;
                }
            }
        }
        relevant
    }

    fn is_relevant(&self, raw: &[u8]) -> bool {
        let msg = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw) {
            Ok(m) => m,
            // Cannot tell what it was: assume it matters.
            Err(_) => return true,
        };
        let NetlinkPayload::InnerMessage(msg) = msg.payload else {
            return false;
        };
        match msg {
            RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => {
                matches!(
                    r.header.address_family,
                    AddressFamily::Inet | AddressFamily::Inet6
                ) && route_table(&r) == u32::from(RouteHeader::RT_TABLE_MAIN)
            }
            RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
                matches!(n.header.family, AddressFamily::Inet | AddressFamily::Inet6)
                    && self.state.has_ifindex(n.header.ifindex)
            }
            RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l) => {
                self.state.has_ifindex(l.header.index)
                    || l.attributes.iter().any(|a| match a {
                        LinkAttribute::IfName(name) => self.ports.iter().any(|p| p == name),
                        _ => false,
                    })
            }
            _ => false,
        }
    }

    fn serve_requests(&mut self) {
        let now = Instant::now();
        // Bounded per wake-up so events and stops are not starved.
        for _ in 0..REQUEST_QUEUE {
            let Ok((ifindex, ip)) = self.rx.try_recv() else {
                break;
            };
            if let Some(&at) = self.recent.get(&(ifindex, ip)) {
                if now.duration_since(at) < REQUEST_DEBOUNCE {
                    continue;
                }
            }
            self.recent.insert((ifindex, ip), now);
            match self.requests.resolve(ifindex, ip) {
                Ok(method) => {
                    tracing::debug!(ifindex, %ip, ?method, "neighbour resolution requested")
                }
                Err(e) => {
                    tracing::warn!(ifindex, %ip, error = %e, "neighbour resolution request failed")
                }
            }
        }
        if self.recent.len() > 4 * REQUEST_QUEUE {
            self.recent
                .retain(|_, at| now.duration_since(*at) < REQUEST_DEBOUNCE);
        }
    }

    fn rebuild(&mut self) {
        match self.requests.collect(&self.ports, &self.state.ports) {
            Ok(tables) if tables == self.state => {}
            Ok(tables) => {
                self.current.store(Arc::new(tables.snapshot()));
                tracing::debug!(
                    routes = tables.routes.len(),
                    neighbours = tables.neighbours.len(),
                    ipv6_routes = tables.routes6.len(),
                    ipv6_neighbours = tables.neighbours6.len(),
                    "network snapshot published"
                );
                self.state = tables;
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-reading routes and neighbours failed; keeping the last snapshot")
            }
        }
    }
}

// ---------------------------------------------------------------------
// The rtnetlink socket.

struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    fn open(groups: &[u32]) -> Result<Rtnl, NetlinkError> {
        let sock_err = |what| move |source| NetlinkError::Socket { what, source };
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(sock_err("socket(NETLINK_ROUTE)"))?;
        sock.bind(&SocketAddr::new(0, 0))
            .map_err(sock_err("bind"))?;
        for &g in groups {
            sock.add_membership(g)
                .map_err(sock_err("joining a multicast group"))?;
        }
        if !groups.is_empty() {
            // Room for bursts (a flapping link, a table reload): fewer
            // overruns, each of which costs a full re-dump.
            if let Err(e) = sock.set_rx_buf_sz(4 * 1024 * 1024) {
                tracing::debug!(error = %e, "netlink receive buffer");
            }
        }
        set_recv_timeout(sock.as_raw_fd(), RECV_TIMEOUT).map_err(sock_err("SO_RCVTIMEO"))?;
        Ok(Rtnl {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    fn set_nonblocking(&self) -> Result<(), NetlinkError> {
        self.sock
            .set_non_blocking(true)
            .map_err(|source| NetlinkError::Socket {
                what: "O_NONBLOCK",
                source,
            })
    }

    fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.sock.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd, for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        }
        Ok(n > 0)
    }

    /// One datagram into `self.buf`; its length.
    fn recv(&mut self, flags: libc::c_int) -> io::Result<usize> {
        self.buf.clear();
        let n = self.sock.recv(&mut self.buf, flags | libc::MSG_TRUNC)?;
        if n > self.buf.len() {
            return Err(io::Error::other(format!(
                "netlink datagram of {n} bytes truncated to {}",
                self.buf.len()
            )));
        }
        Ok(n)
    }

    fn send(&mut self, flags: u16, msg: RouteNetlinkMessage) -> Result<u32, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut nl = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        nl.finalize();
        let mut out = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut out);
        let kernel = SocketAddr::new(0, 0);
        self.sock
            .send_to(&out, &kernel, 0)
            .map_err(|source| NetlinkError::Socket {
                what: "send",
                source,
            })?;
        Ok(self.seq)
    }

    /// Sends a dump request and collects every answer, retrying when the
    /// kernel says the dump was interrupted by concurrent changes.
    fn dump(
        &mut self,
        what: &str,
        make: impl Fn() -> RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        for _ in 0..DUMP_RETRIES {
            match self.dump_once(what, make()) {
                Err(NetlinkError::Interrupted { .. }) => continue,
                other => return other,
            }
        }
        Err(NetlinkError::Interrupted {
            what: what.to_owned(),
        })
    }

    fn dump_once(
        &mut self,
        what: &str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let seq = self.send(NLM_F_REQUEST | NLM_F_DUMP, msg)?;
        let mut out = Vec::new();
        let mut interrupted = false;
        self.receive_answers(what, seq, |h, raw| {
            if h.flags & NLM_F_DUMP_INTR != 0 {
                interrupted = true;
            }
            match h.kind {
                NLMSG_DONE => return Ok(true),
                NLMSG_ERROR => {
                    let code = error_code(raw);
                    if code != 0 {
                        return Err(NetlinkError::Kernel {
                            what: what.to_owned(),
                            source: io::Error::from_raw_os_error(code),
                        });
                    }
                }
                _ => match NetlinkMessage::<RouteNetlinkMessage>::deserialize(raw) {
                    Ok(m) => {
                        if let NetlinkPayload::InnerMessage(m) = m.payload {
                            out.push(m);
                        }
                    }
                    // One entry we cannot decode must not hide the rest.
                    Err(e) => {
                        tracing::debug!(what, error = %e, "skipping undecodable netlink message")
                    }
                },
            }
            Ok(false)
        })?;
        if interrupted {
            return Err(NetlinkError::Interrupted {
                what: what.to_owned(),
            });
        }
        Ok(out)
    }

    /// Sends a change request and waits for its acknowledgement.
    fn change(
        &mut self,
        what: &str,
        flags: u16,
        msg: RouteNetlinkMessage,
    ) -> Result<(), NetlinkError> {
        let seq = self.send(NLM_F_REQUEST | NLM_F_ACK | flags, msg)?;
        self.receive_answers(what, seq, |h, raw| {
            if h.kind != NLMSG_ERROR {
                return Ok(false);
            }
            match error_code(raw) {
                0 => Ok(true),
                code => Err(NetlinkError::Kernel {
                    what: what.to_owned(),
                    source: io::Error::from_raw_os_error(code),
                }),
            }
        })
    }

    /// Receives the answers to request `seq` and hands each of its
    /// messages to `answer`, which says whether it completes the request
    /// (the rest of that datagram is still handed over) or fails it.
    /// Messages of other requests (late answers to earlier ones) are
    /// skipped; the request fails when it is not complete within
    /// [`REQUEST_TIMEOUT`].
    fn receive_answers(
        &mut self,
        what: &str,
        seq: u32,
        mut answer: impl FnMut(RawHeader, &[u8]) -> Result<bool, NetlinkError>,
    ) -> Result<(), NetlinkError> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        while Instant::now() < deadline {
            let n = match self.recv(0) {
                Ok(n) => n,
                // Nothing within RECV_TIMEOUT yet, or a signal: check the
                // deadline and wait again.
                Err(e) if is_retry(&e) => continue,
                Err(source) => {
                    return Err(NetlinkError::Socket {
                        what: "recv",
                        source,
                    })
                }
            };
            let mut complete = false;
            for raw in split_messages(&self.buf[..n]) {
                let h = RawHeader::parse(raw);
                if h.seq == seq {
                    complete |= answer(h, raw)?;
                }
            }
            if complete {
                return Ok(());
            }
        }
        Err(NetlinkError::Timeout {
            what: what.to_owned(),
            timeout: REQUEST_TIMEOUT,
        })
    }

    /// Dumps a table and keeps the entries `parse` takes.
    fn dump_parsed<T>(
        &mut self,
        what: &str,
        request: impl Fn() -> RouteNetlinkMessage,
        parse: impl Fn(&RouteNetlinkMessage) -> Option<T>,
    ) -> Result<Vec<T>, NetlinkError> {
        Ok(self.dump(what, request)?.iter().filter_map(parse).collect())
    }

    fn routes<A: RtFamily>(&mut self) -> Result<Vec<Route<A>>, NetlinkError> {
        let request = || {
            let mut m = RouteMessage::default();
            m.header.address_family = A::FAMILY;
            RouteNetlinkMessage::GetRoute(m)
        };
        let mut routes = self.dump_parsed("route dump", request, |m| match m {
            RouteNetlinkMessage::NewRoute(r) => parse_route(r),
            _ => None,
        })?;
        // Among equal prefixes the lowest metric wins: put it first
        // (NetSnapshot's sort by prefix length is stable).
        routes.sort_by_key(|&(r, metric)| (std::cmp::Reverse(r.prefix_len), metric));
        Ok(routes.into_iter().map(|(r, _)| r).collect())
    }

    fn neighbours<A: RtFamily>(&mut self) -> Result<Vec<Neighbour<A>>, NetlinkError> {
        let request = || {
            let mut m = NeighbourMessage::default();
            m.header.family = A::FAMILY;
            RouteNetlinkMessage::GetNeighbour(m)
        };
        self.dump_parsed("neighbour dump", request, |m| match m {
            RouteNetlinkMessage::NewNeighbour(n) => parse_neighbour(n),
            _ => None,
        })
    }

    fn addresses(&mut self) -> Result<Vec<(u32, Ipv4Addr)>, NetlinkError> {
        let request = || {
            let mut m = AddressMessage::default();
            m.header.family = AddressFamily::Inet;
            RouteNetlinkMessage::GetAddress(m)
        };
        self.dump_parsed("address dump", request, |m| match m {
            RouteNetlinkMessage::NewAddress(a) => parse_address(a),
            _ => None,
        })
    }

    fn addresses6(&mut self) -> Result<Vec<(u32, Ipv6Addr)>, NetlinkError> {
        let request = || {
            let mut m = AddressMessage::default();
            m.header.family = AddressFamily::Inet6;
            RouteNetlinkMessage::GetAddress(m)
        };
        self.dump_parsed("IPv6 address dump", request, |m| match m {
            RouteNetlinkMessage::NewAddress(a) => parse_address6(a),
            _ => None,
        })
    }

    fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let request = || RouteNetlinkMessage::GetLink(LinkMessage::default());
        self.dump_parsed("link dump", request, |m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(parse_link(l)),
            _ => None,
        })
    }

    /// Dumps everything a snapshot needs. A port missing from the link
    /// table keeps its `previous` entry (it may be coming back) or, with
    /// none, is an error.
    fn collect(&mut self, ports: &[String], previous: &[Port]) -> Result<Tables, NetlinkError> {
        let links = self.links()?;
        let mut resolved_ports = Vec::with_capacity(ports.len());
        for (i, name) in ports.iter().enumerate() {
            if let Some(l) = links.iter().find(|l| &l.name == name) {
                resolved_ports.push(Port {
                    ifindex: l.ifindex,
                    name: name.clone(),
                    mac: l.mac.unwrap_or_default(),
                });
            } else if let Some(p) = previous.get(i) {
                tracing::warn!(port = %name, "attached interface has disappeared");
                resolved_ports.push(p.clone());
            } else {
                return Err(NetlinkError::NoSuchInterface { name: name.clone() });
            }
        }
        let attached: HashSet<u32> = resolved_ports.iter().map(|p| p.ifindex).collect();
        let neighbours = self
            .neighbours::<Ipv4Addr>()?
            .into_iter()
            .filter(|n| attached.contains(&n.ifindex) && n.is_resolved())
            .filter_map(|n| Some(((n.ifindex, n.ip), n.mac?)))
            .collect();
        let neighbours6 = self
            .neighbours::<Ipv6Addr>()?
            .into_iter()
            .filter(|n| attached.contains(&n.ifindex) && n.is_resolved())
            .filter_map(|n| Some(((n.ifindex, n.ip), n.mac?)))
            .collect();
        Ok(Tables {
            routes: self.routes()?,
            neighbours,
            routes6: self.routes()?,
            neighbours6,
            ports: resolved_ports,
        })
    }

    /// Asks the kernel to resolve a neighbour, by the best means it takes.
    fn resolve(&mut self, ifindex: u32, ip: IpAddr) -> Result<ResolveMethod, NetlinkError> {
        let managed = self.change(
            "adding a managed neighbour",
            NLM_F_CREATE,
            neighbour_request(ifindex, ip, true),
        );
        let managed_err = match managed {
            Ok(()) => return Ok(ResolveMethod::Managed),
            Err(e) => e,
        };
        tracing::debug!(ifindex, %ip, error = %managed_err, "managed neighbour refused, trying NTF_USE");
        if self
            .change(
                "neighbour NTF_USE",
                NLM_F_CREATE,
                neighbour_request(ifindex, ip, false),
            )
            .is_ok()
        {
            return Ok(ResolveMethod::Use);
        }
        poke_with_datagram(ifindex, ip).map_err(|source| NetlinkError::Kernel {
            what: format!("resolving {ip} on ifindex {ifindex} (managed entry refused: {managed_err}; datagram)"),
            source,
        })?;
        Ok(ResolveMethod::Datagram)
    }
}

/// RTM_NEWNEIGH asking for resolution: a managed entry, or NTF_USE.
fn neighbour_request(ifindex: u32, ip: IpAddr, managed: bool) -> RouteNetlinkMessage {
    let mut m = NeighbourMessage::default();
    let (family, address) = match ip {
        IpAddr::V4(v4) => (AddressFamily::Inet, NeighbourAddress::Inet(v4)),
        IpAddr::V6(v6) => (AddressFamily::Inet6, NeighbourAddress::Inet6(v6)),
    };
    m.header.family = family;
    m.header.ifindex = ifindex;
    // The state is ignored for managed/NTF_USE updates (the kernel keeps
    // the entry's own); it must not be PERMANENT for a managed one.
    m.header.state = NeighbourState::None;
    m.attributes.push(NeighbourAttribute::Destination(address));
    if managed {
        m.attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
    } else {
        m.header.flags = NeighbourFlags::Use;
    }
    RouteNetlinkMessage::NewNeighbour(m)
}

/// Makes the kernel ARP (or solicit, for IPv6) for `ip` on `ifindex` by
/// sending it an empty datagram on the discard port (RFC 863), bound to
/// the device.
fn poke_with_datagram(ifindex: u32, ip: IpAddr) -> io::Result<()> {
    let mut name = [0 as c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has IF_NAMESIZE bytes, as if_indextoname requires.
    if unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) }.is_null() {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { CStr::from_ptr(name.as_ptr()) };
    let sock = match ip {
        IpAddr::V4(_) => UdpSocket::bind("0.0.0.0:0")?,
        IpAddr::V6(_) => UdpSocket::bind("[::]:0")?,
    };
    bind_to_device(sock.as_raw_fd(), name)?;
    sock.connect(IpSocketAddr::new(ip, 9))?;
    sock.set_nonblocking(true)?;
    match sock.send(&[]) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

fn bind_to_device(fd: RawFd, name: &CStr) -> io::Result<()> {
    let bytes = name.to_bytes_with_nul();
    // SAFETY: SO_BINDTODEVICE reads `bytes.len()` bytes of a NUL-terminated
    // interface name that outlives the call.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            bytes.as_ptr().cast(),
            bytes.len() as libc::socklen_t,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_recv_timeout(fd: RawFd, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: SO_RCVTIMEO reads a `timeval` that outlives the call.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ---------------------------------------------------------------------
// Decoding.

/// The fixed netlink header fields (host byte order), read without
/// decoding the payload.
struct RawHeader {
    kind: u16,
    flags: u16,
    seq: u32,
}

impl RawHeader {
    /// `raw` comes from `split_messages`, so it holds at least 16 bytes.
    fn parse(raw: &[u8]) -> RawHeader {
        RawHeader {
            kind: u16::from_ne_bytes([raw[4], raw[5]]),
            flags: u16::from_ne_bytes([raw[6], raw[7]]),
            seq: u32::from_ne_bytes([raw[8], raw[9], raw[10], raw[11]]),
        }
    }
}

/// Splits a datagram into its netlink messages (each at least a header
/// long, 4-byte aligned as NLMSG_ALIGN says). Stops at the first malformed
/// length.
fn split_messages(mut buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if buf.len() < 16 {
            return None;
        }
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < 16 || len > buf.len() {
            return None;
        }
        let (msg, rest) = buf.split_at(len);
        let aligned = (len + 3) & !3;
        buf = rest.get(aligned - len..).unwrap_or(&[]);
        Some(msg)
    })
}

/// A receive that got nothing yet (its timeout passed) or was cut short
/// by a signal.
fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// The errno of an NLMSG_ERROR message (0 for an acknowledgement).
fn error_code(raw: &[u8]) -> i32 {
    match raw.get(16..20) {
        Some(b) => i32::from_ne_bytes([b[0], b[1], b[2], b[3]]).saturating_abs(),
        None => libc::EPROTO,
    }
}

fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

/// The address family rtnetlink messages of `Self` carry: how routes and
/// neighbours of either family are asked for and read.
trait RtFamily: IpFamily {
    const FAMILY: AddressFamily;
    fn route_address(a: &RouteAddress) -> Option<Self>;
    fn neighbour_address(a: &NeighbourAddress) -> Option<Self>;
}

impl RtFamily for Ipv4Addr {
    const FAMILY: AddressFamily = AddressFamily::Inet;

    fn route_address(a: &RouteAddress) -> Option<Self> {
        match a {
            RouteAddress::Inet(ip) => Some(*ip),
            _ => None,
        }
    }

    fn neighbour_address(a: &NeighbourAddress) -> Option<Self> {
        match a {
            NeighbourAddress::Inet(ip) => Some(*ip),
            _ => None,
        }
    }
}

impl RtFamily for Ipv6Addr {
    const FAMILY: AddressFamily = AddressFamily::Inet6;

    fn route_address(a: &RouteAddress) -> Option<Self> {
        match a {
            RouteAddress::Inet6(ip) => Some(*ip),
            _ => None,
        }
    }

    fn neighbour_address(a: &NeighbourAddress) -> Option<Self> {
        match a {
            NeighbourAddress::Inet6(ip) => Some(*ip),
            _ => None,
        }
    }
}

/// A main-table unicast route of family `A` with an output interface,
/// and its metric. Multipath routes use their first next hop.
fn parse_route<A: RtFamily>(r: &RouteMessage) -> Option<(Route<A>, u32)> {
    if r.header.address_family != A::FAMILY
        || r.header.kind != RouteType::Unicast
        || route_table(r) != u32::from(RouteHeader::RT_TABLE_MAIN)
    {
        return None;
    }
    let mut dst = A::UNSPECIFIED;
    let mut oif = None;
    let mut gateway = None;
    let mut metric = 0;
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(ip) => dst = A::route_address(ip)?,
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Gateway(g) => gateway = A::route_address(g),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::MultiPath(hops) if oif.is_none() => {
                if let Some(hop) = hops.first() {
                    oif = Some(hop.interface_index);
                    gateway = hop.attributes.iter().find_map(|a| match a {
                        RouteAttribute::Gateway(g) => A::route_address(g),
                        _ => None,
                    });
                }
            }
            _ => {}
        }
    }
    Some((
        Route {
            dst,
            prefix_len: r.header.destination_prefix_length.min((8 * A::BYTES) as u8),
            ifindex: oif?,
            gateway,
        },
        metric,
    ))
}

fn parse_neighbour<A: RtFamily>(n: &NeighbourMessage) -> Option<Neighbour<A>> {
    if n.header.family != A::FAMILY {
        return None;
    }
    let mut ip = None;
    let mut mac = None;
    let mut managed = false;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(addr) => ip = A::neighbour_address(addr),
            NeighbourAttribute::LinkLayerAddress(ll) => {
                mac = <MacAddr>::try_from(ll.as_slice()).ok()
            }
            NeighbourAttribute::ExtFlags(f) => managed = f.contains(NeighbourExtFlags::Managed),
            _ => {}
        }
    }
    Some(Neighbour {
        ifindex: n.header.ifindex,
        ip: ip?,
        mac,
        state: n.header.state,
        managed,
    })
}

/// A primary IPv4 address: its interface and the address itself (the
/// local one, which on a point-to-point link differs from the peer's).
fn parse_address(a: &AddressMessage) -> Option<(u32, Ipv4Addr)> {
    if a.header.family != AddressFamily::Inet
        || a.header.flags.contains(AddressHeaderFlags::Secondary)
    {
        return None;
    }
    let v4 = |attr: &AddressAttribute, local: bool| match (attr, local) {
        (AddressAttribute::Local(std::net::IpAddr::V4(ip)), true)
        | (AddressAttribute::Address(std::net::IpAddr::V4(ip)), false) => Some(*ip),
        _ => None,
    };
    let ip = a
        .attributes
        .iter()
        .find_map(|attr| v4(attr, true))
        .or_else(|| a.attributes.iter().find_map(|attr| v4(attr, false)))?;
    Some((a.header.index, ip))
}

/// A global, usable IPv6 address of an address dump.
fn parse_address6(a: &AddressMessage) -> Option<(u32, Ipv6Addr)> {
    let unusable = AddressHeaderFlags::Tentative
        | AddressHeaderFlags::Deprecated
        | AddressHeaderFlags::Dadfailed;
    if a.header.family != AddressFamily::Inet6
        || a.header.scope != AddressScope::Universe
        || a.header.flags.intersects(unusable)
    {
        return None;
    }
    a.attributes.iter().find_map(|attr| match attr {
        AddressAttribute::Address(std::net::IpAddr::V6(ip)) => Some((a.header.index, *ip)),
        _ => None,
    })
}

fn parse_link(l: &LinkMessage) -> Link {
    let mut name = String::new();
    let mut mac = None;
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => name.clone_from(n),
            LinkAttribute::Address(a) => mac = <MacAddr>::try_from(a.as_slice()).ok(),
            _ => {}
        }
    }
    Link {
        ifindex: l.header.index,
        name,
        mac,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_messages_walks_aligned_messages() {
        let mut buf = Vec::new();
        // 17-byte message (padded to 20), then a 16-byte one.
        buf.extend_from_slice(&17u32.to_ne_bytes());
        buf.extend_from_slice(&[0; 13]);
        buf.extend_from_slice(&[0; 3]);
        buf.extend_from_slice(&16u32.to_ne_bytes());
        buf.extend_from_slice(&3u16.to_ne_bytes());
        buf.extend_from_slice(&[0; 10]);
        let msgs: Vec<&[u8]> = split_messages(&buf).collect();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].len(), 17);
        assert_eq!(RawHeader::parse(msgs[1]).kind, NLMSG_DONE);
        // A length beyond the buffer ends the walk.
        let bad = 64u32.to_ne_bytes().repeat(4);
        assert_eq!(split_messages(&bad).count(), 0);
    }

    #[test]
    fn resolved_states() {
        let mut n = Neighbour {
            ifindex: 1,
            ip: Ipv4Addr::new(198, 18, 0, 1),
            mac: Some([2, 0, 0, 0, 0, 1]),
            state: NeighbourState::Stale,
            managed: false,
        };
        assert!(n.is_resolved());
        n.state = NeighbourState::Incomplete;
        assert!(!n.is_resolved());
        n.state = NeighbourState::Reachable;
        n.mac = None;
        assert!(!n.is_resolved());
    }

    #[test]
    fn route_parsing_takes_main_table_unicast_only() {
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        r.header.kind = RouteType::Unicast;
        r.header.table = RouteHeader::RT_TABLE_MAIN;
        r.header.destination_prefix_length = 24;
        r.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(
                Ipv4Addr::new(198, 18, 1, 0),
            )));
        r.attributes.push(RouteAttribute::Oif(7));
        r.attributes.push(RouteAttribute::Priority(100));
        let (route, metric) = parse_route(&r).expect("unicast main route");
        assert_eq!(
            route,
            Route {
                dst: Ipv4Addr::new(198, 18, 1, 0),
                prefix_len: 24,
                ifindex: 7,
                gateway: None
            }
        );
        assert_eq!(metric, 100);
        r.header.table = 255; // local
        assert!(parse_route::<Ipv4Addr>(&r).is_none());
        r.header.table = RouteHeader::RT_TABLE_MAIN;
        r.header.kind = RouteType::Local;
        assert!(parse_route::<Ipv4Addr>(&r).is_none());
    }

    #[test]
    fn ipv6_routes_and_neighbours_parse_as_their_family_only() {
        let v6 = |s: &str| -> Ipv6Addr { s.parse().expect("literal") };
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet6;
        r.header.kind = RouteType::Unicast;
        r.header.table = RouteHeader::RT_TABLE_MAIN;
        r.header.destination_prefix_length = 64;
        r.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet6(v6(
                "2001:2:0:ff::",
            ))));
        r.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet6(v6("fe80::1"))));
        r.attributes.push(RouteAttribute::Oif(9));
        let (route, _) = parse_route::<Ipv6Addr>(&r).expect("unicast main route");
        assert_eq!(
            route,
            Route {
                dst: v6("2001:2:0:ff::"),
                prefix_len: 64,
                ifindex: 9,
                gateway: Some(v6("fe80::1")),
            }
        );
        assert!(parse_route::<Ipv4Addr>(&r).is_none(), "not an IPv4 route");
        // The default route has no destination attribute: ::/0.
        r.attributes.remove(0);
        r.header.destination_prefix_length = 0;
        let (default, _) = parse_route::<Ipv6Addr>(&r).expect("default route");
        assert_eq!(
            (default.dst, default.prefix_len),
            (Ipv6Addr::UNSPECIFIED, 0)
        );

        let mut n = NeighbourMessage::default();
        n.header.family = AddressFamily::Inet6;
        n.header.ifindex = 9;
        n.header.state = NeighbourState::Reachable;
        n.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet6(
                v6("2001:2::2"),
            )));
        n.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 2]));
        let neighbour = parse_neighbour::<Ipv6Addr>(&n).expect("an NDP entry");
        assert_eq!(
            (neighbour.ip, neighbour.mac),
            (v6("2001:2::2"), Some([2, 0, 0, 0, 0, 2]))
        );
        assert!(neighbour.is_resolved());
        assert!(
            parse_neighbour::<Ipv4Addr>(&n).is_none(),
            "not an ARP entry"
        );
    }

    #[test]
    fn dumps_work_in_this_namespace() {
        // Reading is unprivileged; loopback always exists.
        let links = dump_links().expect("link dump");
        assert!(links.iter().any(|l| l.name == "lo" && l.ifindex == 1));
        dump_routes().expect("route dump");
        dump_neighbours().expect("neighbour dump");
        dump_routes6().expect("IPv6 route dump");
        dump_neighbours6().expect("IPv6 neighbour dump");
        let s = dump_snapshot(&["lo".to_owned()]).expect("snapshot");
        assert_eq!(s.ports()[0].ifindex, 1);
        assert!(matches!(
            dump_snapshot(&["no-such-if0".to_owned()]),
            Err(NetlinkError::NoSuchInterface { .. })
        ));
    }
}
