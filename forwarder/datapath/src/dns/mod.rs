//! The gateway's DNS responder: the cluster's names answered from the
//! same published table the data plane forwards with.
//!
//! Why here: the answers come from the very snapshot the workers load
//! once per batch ([`crate::table::CompiledTable::dns`]), so an answer
//! never names a VIP the gateway does not forward, and a table change is
//! visible in answers and forwarding at the same moment. UDP queries are
//! answered in the worker, in the frame that asked ([`DnsResponder`]): no
//! socket, no conntrack entry, no allocation. Either family: a query to
//! an IPv6 DNS address gets an IPv6 answer (hop limit 64, the UDP
//! checksum over the IPv6 pseudo-header), under the same source policy
//! and rate limits as an IPv4 one. TCP queries come through a
//! kernel socket on the control side and use [`respond`] on their own
//! buffer.
//!
//! Per query the work is bounded: `domain` parses the header and the sole
//! question in place (a name is at most 255 octets; nothing is
//! allocated), the name is lowered into a stack buffer, looked up, and the
//! pre-encoded answer ([`zone`]) is copied behind the query's own header
//! and question, with the flags and counts set. Policy:
//! - a message with QR set (a response) or shorter than a header is
//!   dropped and counted: answering responses is how reflection loops
//!   start;
//! - an opcode other than QUERY gets NOTIMP; no sole, uncompressed,
//!   parseable question gets FORMERR; a class other than IN, a zone
//!   transfer, or a name outside the zone gets REFUSED, unless the
//!   gateway forwards such names (`--dns-upstream`, [`forward`]): then the
//!   query is handed, as it came, to the forwarding thread;
//! - before the first full sync (no zone in the table yet): SERVFAIL;
//! - EDNS(0) (RFC 6891): the answer carries an OPT record and fits the
//!   client's payload size, at least 512 and at most the gateway's
//!   (1232 by default); without EDNS it fits 512 octets. An answer that
//!   does not fit is sent with TC set and no records, and the client
//!   retries over TCP (RFC 7766). EDNS versions above 0 get BADVERS.

pub mod forward;
pub mod zone;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use domain::base::iana::{Class, Opcode, OptRcode, Rcode, Rtype};
use domain::base::{Header, HeaderCounts, Message};
use ipnet::IpNet;

use crate::counters::{Counter, DropReason};
use crate::pipeline::{BatchContext, Verdict};
use crate::reject::RefusalLimiter;
use crate::route::PortId;
use crate::wire::ethernet;
use crate::wire::frame::{Frame, L3, L4};
use crate::wire::ip_number;
use crate::wire::ipv4::{self, Ipv4Repr};
use crate::wire::ipv6::{self, Ipv6Repr};
use crate::wire::udp::{self, UdpRepr};

pub use zone::{DnsConfig, DnsRecord, DnsZone, RecordData, DEFAULT_UDP_PAYLOAD};

/// The DNS port (RFC 1035).
pub const PORT: u16 = 53;

/// Payload size of a UDP answer to a query without EDNS (RFC 1035, 4.2.1).
const CLASSIC_UDP_PAYLOAD: usize = 512;

const HEADER_LEN: usize = 12;

/// Response codes the responder gives, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsRcode {
    NoError,
    FormErr,
    ServFail,
    NxDomain,
    NotImp,
    Refused,
    BadVers,
}

impl DnsRcode {
    pub const ALL: [DnsRcode; 7] = [
        DnsRcode::NoError,
        DnsRcode::FormErr,
        DnsRcode::ServFail,
        DnsRcode::NxDomain,
        DnsRcode::NotImp,
        DnsRcode::Refused,
        DnsRcode::BadVers,
    ];

    /// The name Prometheus labels and `dig` print.
    pub const fn as_str(self) -> &'static str {
        match self {
            DnsRcode::NoError => "NOERROR",
            DnsRcode::FormErr => "FORMERR",
            DnsRcode::ServFail => "SERVFAIL",
            DnsRcode::NxDomain => "NXDOMAIN",
            DnsRcode::NotImp => "NOTIMP",
            DnsRcode::Refused => "REFUSED",
            DnsRcode::BadVers => "BADVERS",
        }
    }

    /// The header's 4-bit rcode (BADVERS is 0 there; its upper bits go in
    /// the OPT record).
    fn header_rcode(self) -> Rcode {
        match self {
            DnsRcode::NoError | DnsRcode::BadVers => Rcode::NOERROR,
            DnsRcode::FormErr => Rcode::FORMERR,
            DnsRcode::ServFail => Rcode::SERVFAIL,
            DnsRcode::NxDomain => Rcode::NXDOMAIN,
            DnsRcode::NotImp => Rcode::NOTIMP,
            DnsRcode::Refused => Rcode::REFUSED,
        }
    }
}

/// Question types, as counted (the rest are `other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsQtype {
    A,
    Aaaa,
    Srv,
    Ptr,
    Cname,
    Txt,
    Soa,
    Other,
}

impl DnsQtype {
    pub const ALL: [DnsQtype; 8] = [
        DnsQtype::A,
        DnsQtype::Aaaa,
        DnsQtype::Srv,
        DnsQtype::Ptr,
        DnsQtype::Cname,
        DnsQtype::Txt,
        DnsQtype::Soa,
        DnsQtype::Other,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            DnsQtype::A => "A",
            DnsQtype::Aaaa => "AAAA",
            DnsQtype::Srv => "SRV",
            DnsQtype::Ptr => "PTR",
            DnsQtype::Cname => "CNAME",
            DnsQtype::Txt => "TXT",
            DnsQtype::Soa => "SOA",
            DnsQtype::Other => "other",
        }
    }

    fn of(rtype: Rtype) -> Self {
        match rtype {
            Rtype::A => DnsQtype::A,
            Rtype::AAAA => DnsQtype::Aaaa,
            Rtype::SRV => DnsQtype::Srv,
            Rtype::PTR => DnsQtype::Ptr,
            Rtype::CNAME => DnsQtype::Cname,
            Rtype::TXT => DnsQtype::Txt,
            Rtype::SOA => DnsQtype::Soa,
            _ => DnsQtype::Other,
        }
    }
}

/// Why a query got no answer at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsDrop {
    /// Shorter than a DNS header.
    Malformed,
    /// QR set: a response, never answered.
    NotAQuery,
    /// From outside `--cluster-cidr`: the gateway is no open resolver.
    NotInCluster,
    /// From an address that cannot be a client (multicast, broadcast,
    /// 0.0.0.0/8, loopback, a group MAC; IPv6: multicast, loopback,
    /// unspecified).
    BadSource,
    /// Beyond the per-source (or total) answer rate.
    RateLimited,
    /// No room in the buffer, or no port to answer from.
    NoRoom,
    /// A name outside the zone, to be forwarded, but the forwarding
    /// thread's queue was full.
    ForwardQueueFull,
}

impl DnsDrop {
    pub const ALL: [DnsDrop; 7] = [
        DnsDrop::Malformed,
        DnsDrop::NotAQuery,
        DnsDrop::NotInCluster,
        DnsDrop::BadSource,
        DnsDrop::RateLimited,
        DnsDrop::NoRoom,
        DnsDrop::ForwardQueueFull,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            DnsDrop::Malformed => "malformed",
            DnsDrop::NotAQuery => "not_a_query",
            DnsDrop::NotInCluster => "source_not_in_cluster",
            DnsDrop::BadSource => "bad_source",
            DnsDrop::RateLimited => "rate_limited",
            DnsDrop::NoRoom => "no_room",
            DnsDrop::ForwardQueueFull => "forward_queue_full",
        }
    }
}

/// One responder's counters (a worker's, or the TCP listener's); summed
/// when scraped. Single writer each, so [`Counter`]s.
#[derive(Debug, Default)]
pub struct DnsCounters {
    pub rcodes: [Counter; DnsRcode::ALL.len()],
    pub qtypes: [Counter; DnsQtype::ALL.len()],
    pub drops: [Counter; DnsDrop::ALL.len()],
    /// Answers sent with TC set.
    pub truncated: Counter,
    /// The table generation of the last answer from a zone (0: none yet).
    last_generation: AtomicU64,
}

impl DnsCounters {
    pub fn answers(&self) -> u64 {
        self.rcodes.iter().map(Counter::get).sum()
    }

    pub fn last_generation(&self) -> u64 {
        // Relaxed: a statistic; no other memory is read through it.
        self.last_generation.load(Ordering::Relaxed)
    }

    fn served(&self, generation: u64) {
        // Relaxed: see `last_generation`. A store only when it changed,
        // so the line stays shared in the steady state.
        if self.last_generation.load(Ordering::Relaxed) != generation {
            self.last_generation.store(generation, Ordering::Relaxed);
        }
    }

    pub fn count_drop(&self, reason: DnsDrop) {
        self.drops[reason as usize].inc();
    }
}

/// An answer written by [`respond`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    pub len: usize,
    pub rcode: DnsRcode,
    pub truncated: bool,
}

/// What [`respond_or_forward`] did with a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// The answer is in the buffer.
    Answered(Answered),
    /// A name outside the zone, and forwarding was asked for: the query
    /// is left untouched in `buf[..len]`, for an upstream to answer. Its
    /// question ends at `question_end`.
    Forward { question_end: usize },
}

/// Answers the DNS query in `buf[..len]` in place: the answer starts at
/// `buf[0]` and may use all of `buf`, but never more than the size the
/// query allows over UDP (`udp_limit`: the gateway's own maximum payload;
/// `None` for TCP, where up to 65,535 octets go). Counts the outcome in
/// `counters`. Names outside the zone get REFUSED.
pub fn respond(
    zone: Option<&DnsZone>,
    buf: &mut [u8],
    len: usize,
    udp_limit: Option<u16>,
    counters: &DnsCounters,
) -> Result<Answered, DnsDrop> {
    match respond_or_forward(zone, buf, len, udp_limit, counters, false)? {
        Response::Answered(answered) => Ok(answered),
        // Not asked for: `respond_uncounted` refuses instead.
        Response::Forward { .. } => Err(DnsDrop::NoRoom),
    }
}

/// As [`respond`], but with `forward` a question for a name outside the
/// zone (class IN, not a zone transfer) is left for an upstream
/// ([`Response::Forward`]); its type is counted, its rcode is not.
pub fn respond_or_forward(
    zone: Option<&DnsZone>,
    buf: &mut [u8],
    len: usize,
    udp_limit: Option<u16>,
    counters: &DnsCounters,
    forward: bool,
) -> Result<Response, DnsDrop> {
    let result = respond_uncounted(zone, buf, len, udp_limit, counters, forward);
    match result {
        Ok(Response::Answered(answered)) => {
            counters.rcodes[answered.rcode as usize].inc();
            if answered.truncated {
                counters.truncated.inc();
            }
        }
        Ok(Response::Forward { .. }) => {}
        Err(reason) => counters.count_drop(reason),
    }
    result
}

/// SERVFAIL for the query in `buf` whose question ends at
/// `question_end` (as [`Response::Forward`] gave it), when no upstream
/// answered it: the query's header and question, no records.
pub fn servfail(buf: &mut [u8], question_end: usize, counters: &DnsCounters) -> Answered {
    if buf.len() < question_end || question_end < HEADER_LEN {
        return error_answer(buf, DnsRcode::ServFail);
    }
    let query = *Header::for_message_slice(buf);
    let answered = answer(
        buf,
        query,
        question_end,
        DnsRcode::ServFail,
        None,
        None,
        None,
        question_end,
    );
    counters.rcodes[answered.rcode as usize].inc();
    answered
}

/// The question as the responder needs it.
struct Question {
    /// Lower-case wire-format name.
    key: [u8; 255],
    key_len: usize,
    qtype: Rtype,
    qclass: Class,
}

/// What the EDNS OPT record of a query asked for.
#[derive(Clone, Copy)]
struct Edns {
    payload: u16,
    version: u8,
}

fn respond_uncounted(
    zone: Option<&DnsZone>,
    buf: &mut [u8],
    len: usize,
    udp_limit: Option<u16>,
    counters: &DnsCounters,
    forward: bool,
) -> Result<Response, DnsDrop> {
    let len = len.min(buf.len());
    let (header, question, edns) = {
        let Ok(message) = Message::from_octets(&buf[..len]) else {
            return Err(DnsDrop::Malformed);
        };
        let header = message.header();
        if header.qr() {
            return Err(DnsDrop::NotAQuery);
        }
        if header.opcode() != Opcode::QUERY {
            return Ok(Response::Answered(error_answer(buf, DnsRcode::NotImp)));
        }
        let Ok(q) = message.sole_question() else {
            return Ok(Response::Answered(error_answer(buf, DnsRcode::FormErr)));
        };
        if q.qname().is_compressed() {
            return Ok(Response::Answered(error_answer(buf, DnsRcode::FormErr)));
        }
        let mut question = Question {
            key: [0; 255],
            key_len: 0,
            qtype: q.qtype(),
            qclass: q.qclass(),
        };
        // A parsed name is at most 255 octets, so this stays in bounds;
        // only the labels' octets are lowered, never their lengths.
        for label in q.qname().iter() {
            let at = question.key_len;
            let Some(dst) = question.key.get_mut(at..at + 1 + label.len()) else {
                return Ok(Response::Answered(error_answer(buf, DnsRcode::FormErr)));
            };
            dst[0] = label.len() as u8;
            for (d, s) in dst[1..].iter_mut().zip(label.as_slice()) {
                *d = s.to_ascii_lowercase();
            }
            question.key_len += 1 + label.len();
        }
        let edns = message.opt().map(|opt| Edns {
            payload: opt.udp_payload_size(),
            version: opt.version(),
        });
        (header, question, edns)
    };
    counters.qtypes[DnsQtype::of(question.qtype) as usize].inc();
    let question_end = HEADER_LEN + question.key_len + 4;

    let limit = match udp_limit {
        None => usize::from(u16::MAX),
        Some(ours) => match edns {
            Some(edns) => usize::from(edns.payload.min(ours)).max(CLASSIC_UDP_PAYLOAD),
            None => CLASSIC_UDP_PAYLOAD,
        },
    }
    .min(buf.len());

    let Some(zone) = zone else {
        return Ok(Response::Answered(answer(
            buf,
            header,
            question_end,
            DnsRcode::ServFail,
            None,
            edns,
            None,
            limit,
        )));
    };
    if edns.is_some_and(|e| e.version > 0) {
        return Ok(Response::Answered(answer(
            buf,
            header,
            question_end,
            DnsRcode::BadVers,
            None,
            edns,
            Some(zone),
            limit,
        )));
    }
    let key = &question.key[..question.key_len];
    let (rcode, records) =
        if question.qclass != Class::IN || matches!(question.qtype, Rtype::AXFR | Rtype::IXFR) {
            (DnsRcode::Refused, None)
        } else {
            match zone.lookup(key, question.qtype) {
                zone::Lookup::Answer(e) => (DnsRcode::NoError, Some(e)),
                zone::Lookup::NoData(soa) => (DnsRcode::NoError, Some(soa)),
                zone::Lookup::NxDomain(soa) => (DnsRcode::NxDomain, Some(soa)),
                zone::Lookup::NotOurs if forward => {
                    return Ok(Response::Forward { question_end });
                }
                zone::Lookup::NotOurs => (DnsRcode::Refused, None),
            }
        };
    counters.served(zone.generation());
    Ok(Response::Answered(answer(
        buf,
        header,
        question_end,
        rcode,
        records,
        edns,
        Some(zone),
        limit,
    )))
}

/// An answer without a question (the query's could not be read or is not
/// a question at all): the header alone, with the query's ID and opcode.
fn error_answer(buf: &mut [u8], rcode: DnsRcode) -> Answered {
    let header = Header::for_message_slice_mut(buf);
    header.set_qr(true);
    header.set_aa(false);
    header.set_tc(false);
    header.set_ra(false);
    header.set_z(false);
    header.set_ad(false);
    header.set_cd(false);
    header.set_rcode(rcode.header_rcode());
    let counts = HeaderCounts::for_message_slice_mut(buf);
    counts.set_qdcount(0);
    counts.set_ancount(0);
    counts.set_nscount(0);
    counts.set_arcount(0);
    Answered {
        len: HEADER_LEN,
        rcode,
        truncated: false,
    }
}

/// Writes the answer behind the query's own header and question (left in
/// place at `buf[..question_end]`): flags, counts, the pre-encoded
/// records, and the OPT record when the query had one; with TC and no
/// records when they do not fit `limit`.
#[allow(clippy::too_many_arguments)]
fn answer(
    buf: &mut [u8],
    query: Header,
    question_end: usize,
    rcode: DnsRcode,
    records: Option<&zone::Encoded>,
    edns: Option<Edns>,
    zone: Option<&DnsZone>,
    limit: usize,
) -> Answered {
    let opt: &[u8] = match (edns, zone) {
        (Some(_), Some(zone)) if rcode == DnsRcode::BadVers => &zone.opt_badvers,
        (Some(_), Some(zone)) => &zone.opt,
        (Some(_), None) => no_zone_opt(),
        (None, _) => &[],
    };
    let records_bytes = records.map_or(&[][..], |r| &r.bytes);
    let full = question_end + records_bytes.len() + opt.len();
    let truncated = full > limit;
    let (records_bytes, answers, authority) = match records {
        Some(r) if !truncated => (records_bytes, r.answers, r.authority),
        _ => (&[][..], 0, 0),
    };
    let end = question_end + records_bytes.len() + opt.len();
    if end > buf.len() {
        // Cannot happen for a query that fit (its question and OPT were
        // there); an answer without records, to be safe.
        return error_answer(buf, DnsRcode::ServFail);
    }
    buf[question_end..question_end + records_bytes.len()].copy_from_slice(records_bytes);
    buf[question_end + records_bytes.len()..end].copy_from_slice(opt);

    let header = Header::for_message_slice_mut(buf);
    header.set_qr(true);
    header.set_opcode(Opcode::QUERY);
    // Authoritative for what the zone answers itself.
    header.set_aa(matches!(rcode, DnsRcode::NoError | DnsRcode::NxDomain) && zone.is_some());
    header.set_tc(truncated);
    header.set_rd(query.rd());
    header.set_ra(false);
    header.set_z(false);
    header.set_ad(false);
    header.set_cd(false);
    header.set_rcode(rcode.header_rcode());
    let counts = HeaderCounts::for_message_slice_mut(buf);
    counts.set_qdcount(1);
    counts.set_ancount(answers);
    counts.set_nscount(authority);
    counts.set_arcount(u16::from(!opt.is_empty()));
    Answered {
        len: end,
        rcode,
        truncated,
    }
}

/// The OPT record of a SERVFAIL before the first zone, encoded once as
/// a zone's is.
fn no_zone_opt() -> &'static [u8] {
    static OPT: std::sync::OnceLock<Box<[u8]>> = std::sync::OnceLock::new();
    OPT.get_or_init(|| zone::encode_opt(OptRcode::NOERROR))
}

/// A worker's DNS responder: which frames are DNS queries to the gateway,
/// and their answers in place, within the source policy and rate limits.
#[derive(Debug)]
pub struct DnsResponder {
    /// Either family; a query is answered from the address it asked.
    addresses: Box<[IpAddr]>,
    /// Either family; a client matches only the ranges of its own.
    cluster_cidrs: Box<[IpNet]>,
    limiter: RefusalLimiter,
    udp_payload: u16,
    counters: Arc<DnsCounters>,
    /// Where queries for names outside the zone go (`--dns-upstream`);
    /// `None`: they are refused.
    forward: Option<forward::ForwardSender>,
}

/// Answers a source may get per second by default (per worker), and all
/// sources together. Response rate limiting as authoritative servers do
/// it (BIND's `rate-limit`): enough for any resolver's retries and search
/// lists, too few to make the gateway a useful reflector.
pub const DEFAULT_ANSWERS_PER_SOURCE: u32 = 200;
pub const DEFAULT_ANSWERS_TOTAL: u32 = 500_000;

impl DnsResponder {
    /// Answers UDP queries to `addresses` port 53 from sources in
    /// `cluster_cidrs` (all when empty).
    pub fn new(
        addresses: Vec<IpAddr>,
        cluster_cidrs: Vec<IpNet>,
        counters: Arc<DnsCounters>,
    ) -> Self {
        Self {
            addresses: addresses.into_boxed_slice(),
            cluster_cidrs: cluster_cidrs.into_boxed_slice(),
            limiter: RefusalLimiter::new(DEFAULT_ANSWERS_PER_SOURCE, DEFAULT_ANSWERS_TOTAL),
            udp_payload: DEFAULT_UDP_PAYLOAD,
            counters,
            forward: None,
        }
    }

    /// Hands queries for names outside the zone to the forwarding thread
    /// instead of refusing them.
    pub fn with_forwarding(mut self, sender: forward::ForwardSender) -> Self {
        self.forward = Some(sender);
        self
    }

    /// Replaces the answer rate limits.
    pub fn with_limits(mut self, limiter: RefusalLimiter) -> Self {
        self.limiter = limiter;
        self
    }

    pub fn counters(&self) -> &Arc<DnsCounters> {
        &self.counters
    }

    /// Whether the frame is a UDP datagram to a DNS address's port 53.
    #[inline]
    pub fn is_query<T: AsRef<[u8]>>(&self, frame: &Frame<T>) -> bool {
        let dst = match frame.l3() {
            L3::Ipv4 { dst, .. } => IpAddr::V4(dst),
            L3::Ipv6 { dst, .. } => IpAddr::V6(dst),
        };
        // A fragment of a query carries part of it only: not answered.
        matches!(frame.l4(), L4::Udp { dst_port: PORT, .. })
            && frame.fragment().is_none()
            && self.addresses.contains(&dst)
    }

    /// Answers the query in `frame` (one [`DnsResponder::is_query`]
    /// accepted) in place, or drops it; the drop is counted here by its
    /// DNS reason and by the pipeline under the verdict's.
    #[inline]
    pub fn answer_frame(
        &mut self,
        mut frame: Frame<&mut [u8]>,
        ingress: PortId,
        ctx: &BatchContext<'_>,
    ) -> Verdict {
        let L4::Udp {
            src_port, dst_port, ..
        } = frame.l4()
        else {
            return Verdict::Pass;
        };
        let drop = |reason: DnsDrop, verdict: DropReason| {
            self.counters.count_drop(reason);
            Verdict::Drop(verdict)
        };
        let (src, dst) = match frame.l3() {
            L3::Ipv4 { src, dst, .. } => (IpAddr::V4(src), IpAddr::V4(dst)),
            L3::Ipv6 { src, dst, .. } => (IpAddr::V6(src), IpAddr::V6(dst)),
        };
        if ethernet::is_multicast(frame.ethernet().source()) || !can_be_client(src) {
            return drop(DnsDrop::BadSource, DropReason::BadSource);
        }
        if !self.cluster_cidrs.is_empty() && !self.cluster_cidrs.iter().any(|c| c.contains(&src)) {
            return drop(DnsDrop::NotInCluster, DropReason::SourceNotInCluster);
        }
        let Some(port) = ctx.net.port(ingress) else {
            return drop(DnsDrop::NoRoom, DropReason::UnknownIngressPort);
        };
        if !self.limiter.allow(src, ctx.now) {
            return drop(DnsDrop::RateLimited, DropReason::RateLimited);
        }
        let port_mac = port.mac;
        let (l3, l4, l3_end) = (frame.l3_offset(), frame.l4_offset(), frame.l3_end());
        let payload = l4 + udp::HEADER_LEN;
        let query_len = l3_end - payload;
        // The answer's IP header has no options or extension headers:
        // the query moves up behind a bare header first when it had
        // some. IPv4's total length counts its header, IPv6's payload
        // length does not.
        let (ip_header_len, max_payload) = match src {
            IpAddr::V4(_) => (ipv4::MIN_HEADER_LEN, usize::from(u16::MAX) - 28),
            IpAddr::V6(_) => (ipv6::HEADER_LEN, usize::from(u16::MAX) - udp::HEADER_LEN),
        };
        let start = l3 + ip_header_len + udp::HEADER_LEN;
        crate::reject::answer_l2(&mut frame, port_mac);
        let buf = frame.into_inner();
        buf.copy_within(payload..l3_end, start);
        let room = (buf.len() - start).min(max_payload);
        let answered = match respond_or_forward(
            ctx.table.dns(),
            &mut buf[start..start + room],
            query_len,
            Some(self.udp_payload),
            &self.counters,
            self.forward.is_some(),
        ) {
            Ok(Response::Answered(answered)) => answered,
            Ok(Response::Forward { question_end }) => {
                // The prefix goes in front of the query, over the headers
                // it no longer needs (`start` is past at least an
                // Ethernet, IPv4 and UDP header: 42 octets, see
                // `_HANDOFF_FITS`).
                let from = start - forward::HANDOFF_PREFIX;
                let written = <&mut [u8; forward::HANDOFF_PREFIX]>::try_from(&mut buf[from..start])
                    .is_ok_and(|prefix| {
                        forward::Handoff::write_prefix(
                            prefix,
                            SocketAddr::new(src, src_port),
                            dst,
                            question_end,
                        )
                    });
                let sent = written
                    && self
                        .forward
                        .as_ref()
                        .is_some_and(|f| f.send(&buf[from..start + query_len]));
                if !sent {
                    self.counters.count_drop(DnsDrop::ForwardQueueFull);
                }
                return Verdict::HandedOff;
            }
            // Counted by `respond`; the frame is dropped as malformed.
            Err(_) => return Verdict::Drop(DropReason::MalformedL4),
        };
        let out = start + answered.len;
        let udp = UdpRepr {
            src_port: dst_port,
            dst_port: src_port,
        };
        let emitted = match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => Ipv4Repr {
                src: dst,
                dst: src,
                protocol: ip_number::UDP,
                payload_len: udp::HEADER_LEN + answered.len,
                ttl: 64,
            }
            .emit(&mut buf[l3..out])
            .and_then(|mut ip| udp.emit(ip.payload_mut(), dst, src).map(|_| ())),
            (IpAddr::V6(src), IpAddr::V6(dst)) => emit_ipv6_answer(
                &mut buf[l3..out],
                udp,
                dst,
                src,
                udp::HEADER_LEN + answered.len,
            ),
            // A frame's source and destination are of one family.
            _ => Err(crate::wire::WireError::Malformed),
        };
        if emitted.is_err() {
            self.counters.count_drop(DnsDrop::NoRoom);
            return Verdict::Drop(DropReason::MalformedL4);
        }
        Verdict::Respond {
            port: ingress,
            len: out,
        }
    }
}

/// The IPv6 and UDP headers of an answer from `src` to `dst` whose
/// DNS message of `udp_len - 8` octets is in place behind them in
/// `packet`.
fn emit_ipv6_answer(
    packet: &mut [u8],
    udp: UdpRepr,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    udp_len: usize,
) -> Result<(), crate::wire::WireError> {
    let mut ip = Ipv6Repr {
        src,
        dst,
        next_header: ip_number::UDP,
        payload_len: udp_len,
        hop_limit: 64,
    }
    .emit(packet)?;
    udp.emit_v6(ip.payload_mut(), src, dst).map(|_| ())
}

/// Whether `ip` can be the source of a query: never multicast,
/// broadcast, loopback or unspecified (0.0.0.0/8 for IPv4), which would
/// turn an answer into a reflection.
#[inline]
fn can_be_client(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_multicast() || v4.is_broadcast() || v4.is_loopback() || v4.octets()[0] == 0)
        }
        IpAddr::V6(v6) => !(v6.is_multicast() || v6.is_loopback() || v6.is_unspecified()),
    }
}

/// The hand-off prefix fits over the headers of the smallest query frame
/// (Ethernet, IPv4 without options, UDP).
const _HANDOFF_FITS: () = assert!(
    ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN + udp::HEADER_LEN >= forward::HANDOFF_PREFIX
);

#[cfg(test)]
mod tests;
