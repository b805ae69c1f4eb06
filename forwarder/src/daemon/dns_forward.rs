//! Forwarding of names outside the cluster domain (`--dns-upstream`), so
//! that a Pod's resolv.conf can name the gateway alone.
//!
//! The workers never wait for an upstream: they hand such a query to this
//! thread ([`crate::dns::forward`]) and go on. The thread, as dnsmasq and
//! CoreDNS's forward plugin do it:
//! - gives the query a fresh random ID (an ID a client chose is no
//!   secret, and two clients may choose the same one), unpredictable
//!   from the outside (SipHash under a per-process random key), not in
//!   use by another outstanding query;
//! - remembers the client, its ID, the DNS address it asked, the
//!   upstream, the question and the client's UDP size in a bounded table
//!   ([`MAX_OUTSTANDING`], like dnsmasq's `dns-forward-max`; full: the
//!   query is dropped and counted, the client retries);
//! - sends it to the next upstream in turn;
//! - accepts an answer only from that upstream, with that ID and that
//!   question (others are dropped and counted, as spoofing attempts or
//!   late duplicates), restores the client's ID and relays it from the
//!   DNS address the client asked, never larger than the client's UDP
//!   size allows (else header and question with TC: the client retries
//!   over TCP);
//! - forgets a query after [`UPSTREAM_TIMEOUT`] without an answer
//!   (counted; the client's resolver retries on its own timer).
//!
//! Only clients inside `--cluster-cidr` get here (the workers check
//! before they hand over; settings refuse `--dns-upstream` without it),
//! and the per-source answer rate limit applies to forwarded queries as
//! to any: the gateway is no open resolver and no amplifier.
//!
//! Either family: a client, its DNS address and an upstream may each be
//! IPv4 or IPv6 (the client and the address it asked are of one family;
//! the upstreams are asked through a socket of theirs).
//!
//! The answers leave through a kernel UDP socket bound to the DNS address
//! port 53 (the address is on lo for TCP already, see [`super::dns`]).
//! Queries to that address arrive at the workers (XDP steers them), so
//! the socket only sends; what reaches it from the gateway host itself is
//! not read and overflows its buffer.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::dns::forward::{udp_limit, ForwardCounters, ForwardOutcome, ForwardSender, Handoff};

/// Queries waiting for an upstream at once (dnsmasq's `dns-forward-max`
/// is 150 by default; a gateway serves a cluster).
pub const MAX_OUTSTANDING: usize = 4096;
/// How long an upstream has to answer. A resolver's own timeout is 5 s
/// by default (resolv.conf `timeout:`); by then it has asked again, with
/// a new ID.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a TCP exchange with an upstream may take, each step.
const TCP_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the thread looks at its stop flag when nothing arrives.
const STOP_POLL: Duration = Duration::from_millis(100);
const HEADER_LEN: usize = 12;

/// The forwarding side of the gateway's DNS: the workers' hand-off
/// socket, the thread, and the upstreams TCP connections use.
#[derive(Debug)]
pub(super) struct Forwarder {
    upstreams: Arc<[SocketAddr]>,
    /// The workers' end, cloned for each worker.
    workers_end: UnixDatagram,
    /// The thread's end, until the thread takes it.
    thread_end: Option<UnixDatagram>,
    pub(super) counters: Arc<ForwardCounters>,
    /// The next upstream a TCP query goes to.
    next_tcp: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    pub(super) fn new(upstreams: &[SocketAddr]) -> anyhow::Result<Self> {
        let (workers_end, thread_end) =
            UnixDatagram::pair().context("creating the DNS forwarding socket pair")?;
        Ok(Self {
            upstreams: upstreams.into(),
            workers_end,
            thread_end: Some(thread_end),
            counters: Arc::new(ForwardCounters::default()),
            next_tcp: Arc::new(AtomicUsize::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        })
    }

    /// A worker's end of the hand-off socket.
    pub(super) fn sender(&self) -> anyhow::Result<ForwardSender> {
        let socket = self
            .workers_end
            .try_clone()
            .context("cloning the DNS forwarding socket for a worker")?;
        ForwardSender::new(socket).context("making the DNS forwarding socket non-blocking")
    }

    /// What a TCP connection needs to forward.
    pub(super) fn tcp(&self) -> TcpForward {
        TcpForward {
            upstreams: Arc::clone(&self.upstreams),
            next: Arc::clone(&self.next_tcp),
            counters: Arc::clone(&self.counters),
        }
    }

    /// Binds the relay sockets on the DNS addresses (which must be local
    /// by now) and starts the thread.
    pub(super) fn start(&mut self, addresses: &[IpAddr]) -> anyhow::Result<()> {
        let Some(queries) = self.thread_end.take() else {
            return Ok(());
        };
        queries.set_nonblocking(true)?;
        let mut relays = Vec::with_capacity(addresses.len());
        for &address in addresses {
            let socket =
                UdpSocket::bind(SocketAddr::new(address, crate::dns::PORT)).with_context(|| {
                    format!("--dns-address {address}: binding UDP port 53 to relay answers")
                })?;
            socket.set_nonblocking(true)?;
            relays.push((address, socket));
        }
        let upstream = UpstreamSockets::bind(&self.upstreams)?;
        let mut thread = ForwardThread {
            queries,
            upstream,
            relays,
            upstreams: Arc::clone(&self.upstreams),
            next: 0,
            pending: HashMap::with_capacity(MAX_OUTSTANDING),
            expiry: VecDeque::with_capacity(MAX_OUTSTANDING),
            ids: RandomState::new(),
            sequence: 0,
            counters: Arc::clone(&self.counters),
            stop: Arc::clone(&self.stop),
        };
        let handle = std::thread::Builder::new()
            .name("cipgw-dns-fwd".into())
            .spawn(move || thread.run())
            .context("spawning the DNS forwarding thread")?;
        self.thread = Some(handle);
        tracing::info!(upstreams = ?self.upstreams, "forwarding names outside the cluster domain");
        Ok(())
    }

    /// Stops the thread (its sockets close with it).
    pub(super) fn stop(&mut self) {
        // Relaxed: the thread polls it; nothing else is published
        // through it.
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.thread.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The sockets the upstreams are asked through: one per family that has
/// an upstream, bound to an ephemeral port of the unspecified address.
struct UpstreamSockets {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
}

impl UpstreamSockets {
    fn bind(upstreams: &[SocketAddr]) -> anyhow::Result<Self> {
        let bind = |family: &str, address: IpAddr| -> anyhow::Result<Option<UdpSocket>> {
            if !upstreams.iter().any(|u| u.is_ipv4() == address.is_ipv4()) {
                return Ok(None);
            }
            let socket = UdpSocket::bind(SocketAddr::new(address, 0)).with_context(|| {
                format!("binding the socket towards the {family} DNS upstreams")
            })?;
            socket.set_nonblocking(true)?;
            Ok(Some(socket))
        };
        Ok(Self {
            v4: bind("IPv4", Ipv4Addr::UNSPECIFIED.into())?,
            v6: bind("IPv6", Ipv6Addr::UNSPECIFIED.into())?,
        })
    }

    /// The socket towards `upstream`.
    fn towards(&self, upstream: SocketAddr) -> Option<&UdpSocket> {
        match upstream {
            SocketAddr::V4(_) => self.v4.as_ref(),
            SocketAddr::V6(_) => self.v6.as_ref(),
        }
    }

    /// A datagram from the IPv4 (`v4`) or the IPv6 socket, if one is
    /// waiting.
    fn recv_from(&self, v4: bool, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
        let socket = if v4 { &self.v4 } else { &self.v6 };
        socket.as_ref()?.recv_from(buf).ok()
    }

    fn iter(&self) -> impl Iterator<Item = &UdpSocket> {
        self.v4.iter().chain(self.v6.iter())
    }
}

/// A query waiting for its upstream.
struct Pending {
    client: SocketAddr,
    client_id: u16,
    /// The DNS address the client asked (of the client's family): the
    /// answer comes from it.
    server: IpAddr,
    upstream: SocketAddr,
    /// The query's question section, which the answer must echo.
    question: Box<[u8]>,
    /// The most a UDP answer may carry for this client.
    udp_limit: usize,
    /// Tells this entry from a later one under the same ID.
    sequence: u64,
}

struct ForwardThread {
    queries: UnixDatagram,
    upstream: UpstreamSockets,
    relays: Vec<(IpAddr, UdpSocket)>,
    upstreams: Arc<[SocketAddr]>,
    next: usize,
    /// Outstanding queries by the ID the upstream sees.
    pending: HashMap<u16, Pending>,
    /// (deadline, ID, sequence) in the order sent; one timeout for all,
    /// so also in deadline order.
    expiry: VecDeque<(Instant, u16, u64)>,
    /// Keyed at random when the thread starts: IDs nobody outside can
    /// predict.
    ids: RandomState,
    sequence: u64,
    counters: Arc<ForwardCounters>,
    stop: Arc<AtomicBool>,
}

impl ForwardThread {
    fn run(&mut self) {
        let mut buf = vec![0u8; usize::from(u16::MAX)];
        // Relaxed: see `Forwarder::stop`.
        while !self.stop.load(Ordering::Relaxed) {
            let wait = self
                .expiry
                .front()
                .map_or(STOP_POLL, |(deadline, _, _)| {
                    deadline.saturating_duration_since(Instant::now())
                })
                .min(STOP_POLL);
            let mut sockets: [&dyn AsRawFd; 3] = [&self.queries; 3];
            let mut n = 1;
            for socket in self.upstream.iter() {
                sockets[n] = socket;
                n += 1;
            }
            if let Err(e) = wait_readable(&sockets[..n], wait) {
                tracing::warn!(error = %e, "DNS forwarding: poll failed");
                std::thread::sleep(STOP_POLL);
            }
            // Bounded rounds, so neither side starves the other.
            for _ in 0..256 {
                match self.queries.recv(&mut buf) {
                    Ok(n) => self.forward(&mut buf[..n]),
                    Err(_) => break,
                }
            }
            for v4 in [true, false] {
                for _ in 0..256 {
                    match self.upstream.recv_from(v4, &mut buf) {
                        Some((n, from)) => self.relay(&mut buf[..n], from),
                        None => break,
                    }
                }
            }
            self.expire(Instant::now());
            self.counters.set_outstanding(self.pending.len());
        }
    }

    /// Sends a worker's hand-off to an upstream under a fresh ID.
    fn forward(&mut self, datagram: &mut [u8]) {
        let Some(handoff) = Handoff::parse(datagram) else {
            return;
        };
        if self.pending.len() >= MAX_OUTSTANDING {
            self.counters.count(ForwardOutcome::TableFull);
            return;
        }
        let Some(id) = self.fresh_id() else {
            self.counters.count(ForwardOutcome::TableFull);
            return;
        };
        let (client, server, question_end) = (handoff.client, handoff.server, handoff.question_end);
        let udp_limit = udp_limit(handoff.query);
        let query = &mut datagram[crate::dns::forward::HANDOFF_PREFIX..];
        let client_id = u16::from_be_bytes([query[0], query[1]]);
        query[..2].copy_from_slice(&id.to_be_bytes());
        let upstream = self.upstreams[self.next % self.upstreams.len()];
        self.next = self.next.wrapping_add(1);
        let sent = self
            .upstream
            .towards(upstream)
            .is_some_and(|socket| socket.send_to(query, upstream).is_ok());
        if !sent {
            self.counters.count(ForwardOutcome::SendFailed);
            return;
        }
        self.sequence += 1;
        self.pending.insert(
            id,
            Pending {
                client,
                client_id,
                server,
                upstream,
                question: query[HEADER_LEN..question_end].into(),
                udp_limit,
                sequence: self.sequence,
            },
        );
        self.expiry
            .push_back((Instant::now() + UPSTREAM_TIMEOUT, id, self.sequence));
        self.counters.count(ForwardOutcome::Sent);
    }

    /// An ID no outstanding query uses, drawn at random.
    fn fresh_id(&mut self) -> Option<u16> {
        for _ in 0..16 {
            self.sequence += 1;
            let id = self.ids.hash_one(self.sequence) as u16;
            if !self.pending.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }

    /// Relays an upstream's answer to the client it is for.
    fn relay(&mut self, answer: &mut [u8], from: SocketAddr) {
        if answer.len() < HEADER_LEN {
            self.counters.count(ForwardOutcome::Unexpected);
            return;
        }
        let id = u16::from_be_bytes([answer[0], answer[1]]);
        let Entry::Occupied(entry) = self.pending.entry(id) else {
            self.counters.count(ForwardOutcome::Unexpected);
            return;
        };
        let p = entry.get();
        let question_end = HEADER_LEN + p.question.len();
        let is_response = answer[2] & 0x80 != 0;
        let one_question = answer[4..6] == [0, 1];
        let same_question = answer
            .get(HEADER_LEN..question_end)
            .is_some_and(|q| q.eq_ignore_ascii_case(&p.question));
        // By address and port: a received IPv6 source carries no flow
        // label or scope the configured upstream would.
        let from_upstream = from.ip() == p.upstream.ip() && from.port() == p.upstream.port();
        if !from_upstream || !is_response || !one_question || !same_question {
            // Not the answer: the query stays outstanding.
            self.counters.count(ForwardOutcome::Unexpected);
            return;
        }
        let p = entry.remove();
        answer[..2].copy_from_slice(&p.client_id.to_be_bytes());
        let len = if answer.len() > p.udp_limit {
            // Header and question only, TC set, no records (RFC 2181,
            // 9): never more than the client's UDP size.
            answer[2] |= 0x02;
            answer[6..12].fill(0);
            self.counters.count(ForwardOutcome::Truncated);
            question_end
        } else {
            answer.len()
        };
        let relayed = self
            .relays
            .iter()
            .find(|(address, _)| *address == p.server)
            .is_some_and(|(_, socket)| socket.send_to(&answer[..len], p.client).is_ok());
        self.counters.count(if relayed {
            ForwardOutcome::Answered
        } else {
            ForwardOutcome::RelayFailed
        });
    }

    /// Forgets the queries whose time is up.
    fn expire(&mut self, now: Instant) {
        while let Some(&(deadline, id, sequence)) = self.expiry.front() {
            if deadline > now {
                break;
            }
            self.expiry.pop_front();
            if let Entry::Occupied(entry) = self.pending.entry(id) {
                if entry.get().sequence == sequence {
                    entry.remove();
                    self.counters.count(ForwardOutcome::TimedOut);
                }
            }
        }
    }
}

/// Waits until one of `sockets` has something to read, or `timeout`.
fn wait_readable(sockets: &[&dyn AsRawFd], timeout: Duration) -> io::Result<()> {
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fds` is a valid, exclusively borrowed array of
    // `fds.len()` pollfd structures for the duration of the call, and the
    // descriptors stay open (their owners outlive it).
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

/// Forwarding over TCP, for a connection's thread: one connection to the
/// upstream per query (no ID to remap: the connection is this query's
/// alone).
#[derive(Debug, Clone)]
pub(super) struct TcpForward {
    upstreams: Arc<[SocketAddr]>,
    next: Arc<AtomicUsize>,
    counters: Arc<ForwardCounters>,
}

impl TcpForward {
    /// The upstream's answer to `query`, into `answer`; its length.
    /// Errors (connection, timeout, an answer with another ID) are
    /// counted as timed out; the caller answers SERVFAIL.
    pub(super) fn exchange(&self, query: &[u8], answer: &mut [u8]) -> io::Result<usize> {
        // Relaxed: a turn counter, ordering nothing else.
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let upstream = self.upstreams[turn % self.upstreams.len()];
        self.counters.count(ForwardOutcome::Sent);
        let result = exchange_tcp(upstream, query, answer);
        self.counters.count(match result {
            Ok(_) => ForwardOutcome::Answered,
            Err(_) => ForwardOutcome::TimedOut,
        });
        result
    }
}

fn exchange_tcp(upstream: SocketAddr, query: &[u8], answer: &mut [u8]) -> io::Result<usize> {
    let mut stream = TcpStream::connect_timeout(&upstream, TCP_TIMEOUT)?;
    stream.set_read_timeout(Some(TCP_TIMEOUT))?;
    stream.set_write_timeout(Some(TCP_TIMEOUT))?;
    stream.set_nodelay(true)?;
    let len = u16::try_from(query.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query too long"))?;
    let mut message = Vec::with_capacity(2 + query.len());
    message.extend_from_slice(&len.to_be_bytes());
    message.extend_from_slice(query);
    stream.write_all(&message)?;
    let mut prefix = [0u8; 2];
    stream.read_exact(&mut prefix)?;
    let n = usize::from(u16::from_be_bytes(prefix));
    let Some(into) = answer.get_mut(..n) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "answer too long",
        ));
    };
    stream.read_exact(into)?;
    if n < HEADER_LEN || into[..2] != query[..2] {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not the answer to the query",
        ));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::forward::HANDOFF_PREFIX;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const LOCAL6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

    fn bind_on(ip: IpAddr) -> UdpSocket {
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("loopback socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        socket
    }

    fn bind() -> UdpSocket {
        bind_on(LOCAL)
    }

    fn addr(socket: &UdpSocket) -> SocketAddr {
        socket.local_addr().expect("bound")
    }

    /// A thread that relays from loopback sockets (standing in for an
    /// IPv4 and an IPv6 DNS address) to `upstream`.
    fn thread(upstream: SocketAddr) -> ForwardThread {
        let (_, queries) = UnixDatagram::pair().expect("socket pair");
        let towards = bind_on(match upstream {
            SocketAddr::V4(_) => LOCAL,
            SocketAddr::V6(_) => LOCAL6,
        });
        ForwardThread {
            queries,
            upstream: if upstream.is_ipv4() {
                UpstreamSockets {
                    v4: Some(towards),
                    v6: None,
                }
            } else {
                UpstreamSockets {
                    v4: None,
                    v6: Some(towards),
                }
            },
            relays: vec![(LOCAL, bind()), (LOCAL6, bind_on(LOCAL6))],
            upstreams: Arc::from([upstream]),
            next: 0,
            pending: HashMap::new(),
            expiry: VecDeque::new(),
            ids: RandomState::new(),
            sequence: 0,
            counters: Arc::new(ForwardCounters::default()),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A hand-off of a query (ID 0x4242, `www.example.test` A) from
    /// `client`, to the loopback address of its family: 12 + 18 + 4
    /// octets, the question ending at 34.
    fn handoff(client: SocketAddr) -> Vec<u8> {
        let mut query = vec![0x42, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["www", "example", "test"] {
            query.push(label.len() as u8);
            query.extend_from_slice(label.as_bytes());
        }
        query.extend_from_slice(&[0, 0, 1, 0, 1]);
        let mut datagram = vec![0u8; HANDOFF_PREFIX];
        let server = if client.is_ipv4() { LOCAL } else { LOCAL6 };
        assert!(Handoff::write_prefix(
            (&mut datagram[..]).try_into().expect("prefix"),
            client,
            server,
            query.len(),
        ));
        datagram.extend_from_slice(&query);
        datagram
    }

    /// The upstream's answer to `query`: QR set, `extra` octets of
    /// (pretend) records behind the question.
    fn answer_to(query: &[u8], extra: usize) -> Vec<u8> {
        let mut answer = query.to_vec();
        answer[2] |= 0x80;
        answer[7] = 1;
        answer.resize(query.len() + extra, 0xab);
        answer
    }

    /// The thread receives one datagram on its upstream socket and
    /// relays it.
    fn relay_one(t: &mut ForwardThread) {
        let socket = t
            .upstream
            .iter()
            .next()
            .expect("a socket towards upstreams");
        socket
            .set_nonblocking(false)
            .expect("blocking for the test");
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut buf = vec![0u8; 65_535];
        let (n, from) = socket.recv_from(&mut buf).expect("an answer");
        t.relay(&mut buf[..n], from);
    }

    #[test]
    fn an_answer_goes_back_with_the_client_id_and_only_from_its_upstream() {
        let upstream = bind();
        let client = bind();
        let mut t = thread(addr(&upstream));
        t.forward(&mut handoff(addr(&client)));
        assert_eq!(t.counters.get(ForwardOutcome::Sent), 1);
        let mut buf = [0u8; 1500];
        let (n, gateway) = upstream.recv_from(&mut buf).expect("the query upstream");
        let sent = buf[..n].to_vec();
        assert_eq!(&sent[2..], &handoff(addr(&client))[HANDOFF_PREFIX + 2..]);
        let remapped = u16::from_be_bytes([sent[0], sent[1]]);
        assert!(t.pending.contains_key(&remapped));

        // The right ID from another source: not the answer.
        let spoofer = bind();
        spoofer
            .send_to(&answer_to(&sent, 16), gateway)
            .expect("spoof");
        relay_one(&mut t);
        assert_eq!(t.counters.get(ForwardOutcome::Unexpected), 1);
        assert_eq!(t.pending.len(), 1, "still waiting for the real one");

        // Another question under the right ID: not the answer either.
        let mut other = answer_to(&sent, 16);
        other[13] = b'x';
        upstream.send_to(&other, gateway).expect("send");
        relay_one(&mut t);
        assert_eq!(t.counters.get(ForwardOutcome::Unexpected), 2);

        let answer = answer_to(&sent, 16);
        upstream.send_to(&answer, gateway).expect("send");
        relay_one(&mut t);
        assert_eq!(t.counters.get(ForwardOutcome::Answered), 1);
        let n = client.recv(&mut buf).expect("relayed to the client");
        assert_eq!(&buf[..2], &[0x42, 0x42], "the client's own ID");
        assert_eq!(&buf[2..n], &answer[2..]);
        assert!(t.pending.is_empty());
    }

    #[test]
    fn a_large_answer_is_cut_to_the_question_with_tc() {
        let upstream = bind();
        let client = bind();
        let mut t = thread(addr(&upstream));
        t.forward(&mut handoff(addr(&client)));
        let mut buf = [0u8; 2000];
        let (n, gateway) = upstream.recv_from(&mut buf).expect("the query upstream");
        // No EDNS in the query: 512 octets at most.
        upstream
            .send_to(&answer_to(&buf[..n], 600), gateway)
            .expect("send");
        relay_one(&mut t);
        let n = client.recv(&mut buf).expect("relayed");
        assert_eq!(n, 34, "header and question only");
        assert_ne!(buf[2] & 0x02, 0, "TC set");
        assert_eq!(&buf[6..12], &[0; 6], "no records counted");
        assert_eq!(t.counters.get(ForwardOutcome::Truncated), 1);
    }

    #[test]
    fn unanswered_queries_expire_and_the_table_is_bounded() {
        let upstream = bind();
        let client = addr(&bind());
        let mut t = thread(addr(&upstream));
        t.forward(&mut handoff(client));
        t.expire(Instant::now());
        assert_eq!(t.pending.len(), 1, "not yet");
        t.expire(Instant::now() + UPSTREAM_TIMEOUT);
        assert!(t.pending.is_empty());
        assert_eq!(t.counters.get(ForwardOutcome::TimedOut), 1);

        for id in 0..MAX_OUTSTANDING as u16 {
            t.pending.insert(
                id,
                Pending {
                    client,
                    client_id: id,
                    server: LOCAL,
                    upstream: addr(&upstream),
                    question: Box::new([]),
                    udp_limit: 512,
                    sequence: 0,
                },
            );
        }
        t.forward(&mut handoff(client));
        assert_eq!(t.counters.get(ForwardOutcome::TableFull), 1);
        assert_eq!(t.counters.get(ForwardOutcome::Sent), 1, "only the first");
    }

    #[test]
    fn an_ipv6_client_is_answered_from_its_ipv6_dns_address_through_either_upstream() {
        for upstream_on in [LOCAL6, LOCAL] {
            let upstream = bind_on(upstream_on);
            let client = bind_on(LOCAL6);
            let mut t = thread(addr(&upstream));
            t.forward(&mut handoff(addr(&client)));
            assert_eq!(t.counters.get(ForwardOutcome::Sent), 1, "via {upstream_on}");
            let mut buf = [0u8; 1500];
            let (n, gateway) = upstream.recv_from(&mut buf).expect("the query upstream");
            assert_eq!(
                gateway.is_ipv4(),
                upstream_on.is_ipv4(),
                "the upstream's family"
            );
            let answer = answer_to(&buf[..n], 16);
            upstream.send_to(&answer, gateway).expect("send");
            relay_one(&mut t);
            assert_eq!(t.counters.get(ForwardOutcome::Answered), 1);
            let (n, from) = client.recv_from(&mut buf).expect("relayed to the client");
            let relay = t.relays[1].1.local_addr().expect("bound");
            assert_eq!(from, relay, "from the IPv6 DNS address's socket");
            assert_eq!(&buf[..2], &[0x42, 0x42], "the client's own ID");
            assert_eq!(&buf[2..n], &answer[2..]);
        }
    }
}
