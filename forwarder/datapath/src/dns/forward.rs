//! Hand-off of queries for names outside the cluster domain to the
//! gateway's DNS forwarding thread (`--dns-upstream`).
//!
//! Why a hand-off: a worker must never wait for an upstream. It writes
//! the query, prefixed by who asked and which DNS address was asked
//! ([`Handoff`]: a versioned prefix of fixed size, room for either
//! family), as one datagram on a non-blocking Unix datagram socket
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
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};

use domain::base::Message;

/// Octets in front of the query in a hand-off datagram, sized for IPv6:
/// the prefix's version (1) and family (1: 4 or 6), where the query's
/// question ends (2), the client's port (2), two zero octets, the
/// client's address (16) and the DNS address it asked (16; an IPv4
/// address in the first 4 octets of each, the rest zero).
pub const HANDOFF_PREFIX: usize = 40;

/// The layout [`HANDOFF_PREFIX`] describes; a datagram of another
/// version is not read.
pub const HANDOFF_VERSION: u8 = 1;

mod field {
    use std::ops::Range;
    pub const VERSION: usize = 0;
    pub const FAMILY: usize = 1;
    pub const QUESTION_END: Range<usize> = 2..4;
    pub const CLIENT_PORT: Range<usize> = 4..6;
    pub const RESERVED: Range<usize> = 6..8;
    pub const CLIENT: Range<usize> = 8..24;
    pub const SERVER: Range<usize> = 24..40;
}

/// A query as the forwarding thread receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handoff<'a> {
    pub client: SocketAddr,
    /// The `--dns-address` the query went to (of the client's family):
    /// the answer comes from it.
    pub server: IpAddr,
    pub query: &'a [u8],
    /// The end of the query's sole question: `query[12..question_end]`
    /// is what the upstream's answer must echo.
    pub question_end: usize,
}

impl<'a> Handoff<'a> {
    /// Writes the prefix into `prefix` (the [`HANDOFF_PREFIX`] octets in
    /// front of the query). False, and nothing written, when `client` and
    /// `server` are of different families (a query and its DNS address
    /// never are).
    pub fn write_prefix(
        prefix: &mut [u8; HANDOFF_PREFIX],
        client: SocketAddr,
        server: IpAddr,
        question_end: usize,
    ) -> bool {
        let family = match (client.ip(), server) {
            (IpAddr::V4(c), IpAddr::V4(s)) => {
                prefix[field::CLIENT].fill(0);
                prefix[field::SERVER].fill(0);
                prefix[field::CLIENT.start..field::CLIENT.start + 4].copy_from_slice(&c.octets());
                prefix[field::SERVER.start..field::SERVER.start + 4].copy_from_slice(&s.octets());
                4
            }
            (IpAddr::V6(c), IpAddr::V6(s)) => {
                prefix[field::CLIENT].copy_from_slice(&c.octets());
                prefix[field::SERVER].copy_from_slice(&s.octets());
                6
            }
            _ => return false,
        };
        prefix[field::VERSION] = HANDOFF_VERSION;
        prefix[field::FAMILY] = family;
        let end = u16::try_from(question_end).unwrap_or(u16::MAX);
        prefix[field::QUESTION_END].copy_from_slice(&end.to_be_bytes());
        prefix[field::CLIENT_PORT].copy_from_slice(&client.port().to_be_bytes());
        prefix[field::RESERVED].fill(0);
        true
    }

    /// Reads a datagram a worker wrote; `None` when it is too short to
    /// hold a prefix and a DNS header, is of another version or an
    /// unknown family, or its question does not end within the query.
    pub fn parse(datagram: &'a [u8]) -> Option<Self> {
        if datagram.len() < HANDOFF_PREFIX + 12 || datagram[field::VERSION] != HANDOFF_VERSION {
            return None;
        }
        let octets = |range: std::ops::Range<usize>| -> [u8; 16] {
            let mut a = [0u8; 16];
            a.copy_from_slice(&datagram[range]);
            a
        };
        let (client, server) = (octets(field::CLIENT), octets(field::SERVER));
        let (client_ip, server): (IpAddr, IpAddr) = match datagram[field::FAMILY] {
            4 => {
                let v4 = |a: [u8; 16]| Ipv4Addr::new(a[0], a[1], a[2], a[3]).into();
                (v4(client), v4(server))
            }
            6 => (Ipv6Addr::from(client).into(), Ipv6Addr::from(server).into()),
            _ => return None,
        };
        let be16 = |range: std::ops::Range<usize>| {
            u16::from_be_bytes([datagram[range.start], datagram[range.start + 1]])
        };
        let query = &datagram[HANDOFF_PREFIX..];
        let question_end = usize::from(be16(field::QUESTION_END));
        if !(12..=query.len()).contains(&question_end) {
            return None;
        }
        Some(Self {
            client: SocketAddr::new(client_ip, be16(field::CLIENT_PORT)),
            server,
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
        let client: SocketAddr = "198.18.0.2:40000".parse().expect("static");
        let server: IpAddr = "198.18.100.53".parse().expect("static");
        let mut datagram = [0xeeu8; HANDOFF_PREFIX + 12];
        let (prefix, query) = datagram.split_at_mut(HANDOFF_PREFIX);
        let prefix: &mut [u8; HANDOFF_PREFIX] = prefix.try_into().expect("prefix length");
        assert!(Handoff::write_prefix(prefix, client, server, 12));
        query[0] = 0x42;
        // The layout, octet by octet: version, family, question end,
        // port, reserved, then the addresses padded with zeros.
        let mut expected = [0u8; HANDOFF_PREFIX];
        expected[..8].copy_from_slice(&[1, 4, 0, 12, 0x9c, 0x40, 0, 0]);
        expected[8..12].copy_from_slice(&[198, 18, 0, 2]);
        expected[24..28].copy_from_slice(&[198, 18, 100, 53]);
        assert_eq!(datagram[..HANDOFF_PREFIX], expected);
        let read = Handoff::parse(&datagram).expect("long enough");
        assert_eq!((read.client, read.server), (client, server));
        assert_eq!((read.query.len(), read.question_end), (12, 12));
        assert_eq!(read.query[0], 0x42);
        assert_eq!(Handoff::parse(&datagram[..HANDOFF_PREFIX + 11]), None);
        datagram[3] = 13;
        assert_eq!(Handoff::parse(&datagram), None, "question beyond the query");
        datagram[3] = 12;
        datagram[0] = 2;
        assert_eq!(Handoff::parse(&datagram), None, "another version");
        datagram[0] = 1;
        datagram[1] = 5;
        assert_eq!(Handoff::parse(&datagram), None, "no such family");
    }

    #[test]
    fn an_ipv6_handoff_reads_back_as_written() {
        let client: SocketAddr = "[2001:2::2]:40000".parse().expect("static");
        let server: IpAddr = "2001:2:0:ff::53".parse().expect("static");
        let mut datagram = [0u8; HANDOFF_PREFIX + 34];
        let (prefix, query) = datagram.split_at_mut(HANDOFF_PREFIX);
        let prefix: &mut [u8; HANDOFF_PREFIX] = prefix.try_into().expect("prefix length");
        assert!(Handoff::write_prefix(prefix, client, server, 34));
        query[..2].copy_from_slice(&[0x12, 0x34]);
        assert_eq!(datagram[..8], [1, 6, 0, 34, 0x9c, 0x40, 0, 0]);
        assert_eq!(
            datagram[8..24],
            "2001:2::2".parse::<Ipv6Addr>().expect("static").octets()
        );
        assert_eq!(
            datagram[24..40],
            "2001:2:0:ff::53"
                .parse::<Ipv6Addr>()
                .expect("static")
                .octets()
        );
        let read = Handoff::parse(&datagram).expect("a hand-off");
        assert_eq!((read.client, read.server), (client, server));
        assert_eq!((read.query.len(), read.question_end), (34, 34));
        assert_eq!(read.query[..2], [0x12, 0x34]);
    }

    #[test]
    fn a_handoff_of_mixed_families_is_not_written() {
        let mut prefix = [0u8; HANDOFF_PREFIX];
        let v6_client: SocketAddr = "[2001:2::2]:40000".parse().expect("static");
        let v4_server: IpAddr = "198.18.100.53".parse().expect("static");
        assert!(!Handoff::write_prefix(
            &mut prefix,
            v6_client,
            v4_server,
            12
        ));
        assert_eq!(prefix, [0u8; HANDOFF_PREFIX], "nothing written");
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
