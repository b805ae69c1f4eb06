//! Hand-off of queries for names outside the cluster domain to the
//! gateway's DNS forwarding thread (`--dns-upstream`).
//!
//! Why a hand-off: a worker must never wait for an upstream. It writes
//! the query, prefixed by who asked and which DNS address was asked
//! ([`Handoff`]), as one datagram on a non-blocking Unix datagram socket
//! whose other end the forwarding thread reads: one `send` per forwarded
//! query, no allocation (the prefix goes in the frame's headroom, in front
//! of the query), and when the thread falls behind the socket is full and
//! the query is dropped and counted (`forward_queue_full`) rather than
//! queued without bound. The kernel bounds the queue by the receiver's
//! `net.unix.max_dgram_qlen` datagrams.
//!
//! The forwarding thread remaps the query's ID, remembers the client in a
//! bounded table of outstanding queries, sends it to an upstream, and
//! relays the upstream's answer from the DNS address the client asked
//! ([`ForwardCounters`] counts each step).

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};

use domain::base::Message;

/// Octets in front of the query in a hand-off datagram: the client's
/// address (4) and port (2), the DNS address it asked (4), and where the
/// query's question ends (2).
pub const HANDOFF_PREFIX: usize = 12;

/// A query as the forwarding thread receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handoff<'a> {
    pub client: SocketAddrV4,
    /// The `--dns-address` the query went to: the answer comes from it.
    pub server: Ipv4Addr,
    pub query: &'a [u8],
    /// The end of the query's sole question: `query[12..question_end]`
    /// is what the upstream's answer must echo.
    pub question_end: usize,
}

impl<'a> Handoff<'a> {
    /// Writes the prefix into `prefix` (the [`HANDOFF_PREFIX`] octets in
    /// front of the query).
    pub fn write_prefix(
        prefix: &mut [u8; HANDOFF_PREFIX],
        client: SocketAddrV4,
        server: Ipv4Addr,
        question_end: usize,
    ) {
        prefix[..4].copy_from_slice(&client.ip().octets());
        prefix[4..6].copy_from_slice(&client.port().to_be_bytes());
        prefix[6..10].copy_from_slice(&server.octets());
        let end = u16::try_from(question_end).unwrap_or(u16::MAX);
        prefix[10..].copy_from_slice(&end.to_be_bytes());
    }

    /// Reads a datagram a worker wrote; `None` when it is too short to
    /// hold a prefix and a DNS header, or its question does not end
    /// within the query.
    pub fn parse(datagram: &'a [u8]) -> Option<Self> {
        if datagram.len() < HANDOFF_PREFIX + 12 {
            return None;
        }
        let ip = |at: usize| {
            Ipv4Addr::new(
                datagram[at],
                datagram[at + 1],
                datagram[at + 2],
                datagram[at + 3],
            )
        };
        let query = &datagram[HANDOFF_PREFIX..];
        let question_end = usize::from(u16::from_be_bytes([datagram[10], datagram[11]]));
        if !(12..=query.len()).contains(&question_end) {
            return None;
        }
        Some(Self {
            client: SocketAddrV4::new(ip(0), u16::from_be_bytes([datagram[4], datagram[5]])),
            server: ip(6),
            query,
            question_end,
        })
    }
}

/// A worker's end of the hand-off socket.
#[derive(Debug)]
pub struct ForwardSender {
    socket: UnixDatagram,
}

impl ForwardSender {
    /// `socket` must be connected to the forwarding thread's end; it is
    /// made non-blocking here.
    pub fn new(socket: UnixDatagram) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        Ok(Self { socket })
    }

    /// Sends one hand-off datagram (prefix and query, contiguous); false
    /// when the thread's queue is full or gone.
    #[inline]
    pub fn send(&self, datagram: &[u8]) -> bool {
        matches!(self.socket.send(datagram), Ok(n) if n == datagram.len())
    }
}

/// What became of forwarded queries, counted by the forwarding thread
/// (UDP) and the TCP connections' threads: several writers, off the
/// packet path, so atomic additions.
#[derive(Debug, Default)]
pub struct ForwardCounters {
    outcomes: [AtomicU64; ForwardOutcome::ALL.len()],
    /// Queries waiting for an upstream's answer (UDP), as last counted.
    outstanding: AtomicU64,
}

impl ForwardCounters {
    pub fn count(&self, outcome: ForwardOutcome) {
        // Relaxed: a statistic; readers need an untorn value only.
        self.outcomes[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, outcome: ForwardOutcome) -> u64 {
        // Relaxed: see `count`.
        self.outcomes[outcome as usize].load(Ordering::Relaxed)
    }

    pub fn set_outstanding(&self, n: usize) {
        // Relaxed: see `count`.
        self.outstanding.store(n as u64, Ordering::Relaxed);
    }

    pub fn outstanding(&self) -> u64 {
        // Relaxed: see `count`.
        self.outstanding.load(Ordering::Relaxed)
    }
}

/// The steps and failures of a forwarded query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardOutcome {
    /// Sent to an upstream.
    Sent,
    /// The upstream's answer relayed to the client.
    Answered,
    /// The upstream's answer did not fit the client's UDP size: relayed
    /// as a header and question with TC set (the client retries over TCP).
    Truncated,
    /// No answer within the timeout (UDP), or the TCP exchange with the
    /// upstream failed (the client got SERVFAIL).
    TimedOut,
    /// The table of outstanding queries was full: dropped.
    TableFull,
    /// Sending to the upstream failed: dropped.
    SendFailed,
    /// A datagram on the upstream socket that answers no outstanding
    /// query (unknown ID, another source, another question): dropped.
    Unexpected,
    /// Relaying the answer to the client failed.
    RelayFailed,
}

impl ForwardOutcome {
    pub const ALL: [ForwardOutcome; 8] = [
        ForwardOutcome::Sent,
        ForwardOutcome::Answered,
        ForwardOutcome::Truncated,
        ForwardOutcome::TimedOut,
        ForwardOutcome::TableFull,
        ForwardOutcome::SendFailed,
        ForwardOutcome::Unexpected,
        ForwardOutcome::RelayFailed,
    ];

    /// The Prometheus label.
    pub const fn as_str(self) -> &'static str {
        match self {
            ForwardOutcome::Sent => "sent",
            ForwardOutcome::Answered => "answered",
            ForwardOutcome::Truncated => "truncated",
            ForwardOutcome::TimedOut => "timed_out",
            ForwardOutcome::TableFull => "table_full",
            ForwardOutcome::SendFailed => "send_failed",
            ForwardOutcome::Unexpected => "unexpected_answer",
            ForwardOutcome::RelayFailed => "relay_failed",
        }
    }
}

/// The most a UDP answer to `query` may carry: its EDNS size, at least
/// 512 and at most the gateway's own, as for the responder's answers.
pub fn udp_limit(query: &[u8]) -> usize {
    let edns = Message::from_octets(query)
        .ok()
        .and_then(|m| m.opt().map(|opt| opt.udp_payload_size()));
    match edns {
        Some(size) => {
            usize::from(size.min(super::DEFAULT_UDP_PAYLOAD)).max(super::CLASSIC_UDP_PAYLOAD)
        }
        None => super::CLASSIC_UDP_PAYLOAD,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_udp_limit_follows_the_query_edns_size_within_bounds() {
        use domain::base::iana::{Class, Rtype};
        use domain::base::{MessageBuilder, Name};
        let query = |edns: Option<u16>| {
            let mut b = MessageBuilder::new_vec().question();
            let name: Name<Vec<u8>> = "example.test".parse().expect("static name");
            b.push((name, Rtype::A, Class::IN)).expect("fits");
            let mut b = b.additional();
            if let Some(size) = edns {
                b.opt(|opt| {
                    opt.set_udp_payload_size(size);
                    Ok(())
                })
                .expect("fits");
            }
            b.finish()
        };
        assert_eq!(udp_limit(&query(None)), 512);
        assert_eq!(udp_limit(&query(Some(100))), 512);
        assert_eq!(udp_limit(&query(Some(1000))), 1000);
        assert_eq!(udp_limit(&query(Some(4096))), 1232);
    }

    #[test]
    fn a_handoff_reads_back_as_written() {
        let client = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40_000);
        let server = Ipv4Addr::new(198, 18, 100, 53);
        let mut datagram = [0u8; HANDOFF_PREFIX + 12];
        let (prefix, query) = datagram.split_at_mut(HANDOFF_PREFIX);
        Handoff::write_prefix(
            prefix.try_into().expect("prefix length"),
            client,
            server,
            12,
        );
        query[0] = 0x42;
        let read = Handoff::parse(&datagram).expect("long enough");
        assert_eq!((read.client, read.server), (client, server));
        assert_eq!((read.query.len(), read.question_end), (12, 12));
        assert_eq!(read.query[0], 0x42);
        assert_eq!(Handoff::parse(&datagram[..HANDOFF_PREFIX + 11]), None);
        datagram[11] = 13;
        assert_eq!(Handoff::parse(&datagram), None, "question beyond the query");
    }

    #[test]
    fn a_full_queue_refuses_instead_of_blocking() {
        let (worker, thread) = UnixDatagram::pair().expect("socket pair");
        let sender = ForwardSender::new(worker).expect("non-blocking");
        let datagram = [0u8; 64];
        let mut sent = 0;
        // The kernel bounds the queue (max_dgram_qlen, socket buffer).
        while sender.send(&datagram) {
            sent += 1;
            assert!(sent < 1_000_000, "the queue never filled");
        }
        assert!(sent > 0);
        drop(thread);
        assert!(!sender.send(&datagram), "the thread is gone");
    }
}
