//! The cluster's DNS records, compiled from the service model on the
//! control thread into answers a worker only copies.
//!
//! The records are those of the Kubernetes DNS-Based Service Discovery
//! specification (kubernetes/dns, docs/specification.md, schema 1.1.0):
//! - a Service with ClusterIPs: `A <svc>.<ns>.svc.<zone>` for its IPv4
//!   ClusterIP and `AAAA` for its IPv6 one (a dual-stack Service has
//!   both), `SRV _<port>._<proto>.<svc>.<ns>.svc.<zone>` per named port,
//!   `PTR` for each ClusterIP (`in-addr.arpa` or `ip6.arpa`);
//! - a headless Service: `A`/`AAAA` per ready endpoint at the Service's
//!   name (none at all, so NXDOMAIN, when no endpoint is ready, unless
//!   `publishNotReadyAddresses`), `A`/`AAAA <hostname>.<svc>...` per
//!   endpoint, `SRV` per endpoint name and named port, `PTR` per endpoint
//!   address; an endpoint without a hostname is named by its address
//!   with dashes (`198-18-4-1`, `2001-2-0-3--1`), the "system-assigned
//!   identifier" the specification allows (CoreDNS's choice too);
//! - an ExternalName Service: `CNAME <svc>.<ns>.svc.<zone>` to its target,
//!   whatever type is asked;
//! - `TXT dns-version.<zone>` "1.1.0", and the zone's `SOA`, which NODATA
//!   and NXDOMAIN answers carry in their authority section.
//!
//! Every name is stored lower-case in wire format; a query's name is
//! lowered the same way before the lookup (the specification makes every
//! comparison case-insensitive). The answers are encoded with `domain`'s
//! message builder as a message whose question is that name, with names
//! compressed against it; the bytes after the question are kept. A query
//! for the same name, in any case, has a question of the same length at
//! the same offset, so those compression pointers stay valid in the
//! answer built over the query ([`super::respond`]).
//!
//! A name with addresses of one family only answers the other family's
//! type NODATA (NOERROR, no answers, the SOA in authority), as for any
//! type a name lacks.

use std::collections::HashMap;
use std::fmt;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ahash::RandomState;
use cipgw_config::{ClusterIp, Protocol, Service, ServiceTable};
use domain::base::iana::{Class, OptRcode, Rtype};
use domain::base::message_builder::AnswerBuilder;
use domain::base::{MessageBuilder, Name, Record, Serial, StaticCompressor, Ttl};
use domain::rdata::{Aaaa, Cname, Ptr, Soa, Srv, Txt, A};

/// The schema version `dns-version.<zone>` announces.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// Kubernetes' default cluster domain.
pub const DEFAULT_ZONE: &str = "cluster.local";

/// Default TTL of every record, seconds (`--dns-ttl`).
pub const DEFAULT_TTL: u32 = 5;

/// What the zone is built with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// The cluster domain, without a trailing dot (`cluster.local`).
    pub zone: String,
    /// TTL of every record and the SOA's negative-caching minimum.
    pub ttl: u32,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            zone: DEFAULT_ZONE.to_owned(),
            ttl: DEFAULT_TTL,
        }
    }
}

/// One record as the specification writes it, before encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRecord {
    /// Lower-case owner name, without the trailing dot.
    pub owner: String,
    pub data: RecordData,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Srv {
        weight: u16,
        port: u16,
        target: String,
    },
    Ptr(String),
    Cname(String),
    Txt(&'static str),
}

impl RecordData {
    fn rtype(&self) -> Rtype {
        match self {
            RecordData::A(_) => Rtype::A,
            RecordData::Aaaa(_) => Rtype::AAAA,
            RecordData::Srv { .. } => Rtype::SRV,
            RecordData::Ptr(_) => Rtype::PTR,
            RecordData::Cname(_) => Rtype::CNAME,
            RecordData::Txt(_) => Rtype::TXT,
        }
    }
}

impl fmt::Display for DnsRecord {
    /// Zone-file style, as `dig` prints it (without TTL and class).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let owner = &self.owner;
        match &self.data {
            RecordData::A(ip) => write!(f, "{owner}. A {ip}"),
            RecordData::Aaaa(ip) => write!(f, "{owner}. AAAA {ip}"),
            RecordData::Srv {
                weight,
                port,
                target,
            } => write!(f, "{owner}. SRV 0 {weight} {port} {target}."),
            RecordData::Ptr(target) => write!(f, "{owner}. PTR {target}."),
            RecordData::Cname(target) => write!(f, "{owner}. CNAME {target}."),
            RecordData::Txt(text) => write!(f, "{owner}. TXT \"{text}\""),
        }
    }
}

/// `<d>.<c>.<b>.<a>.in-addr.arpa` (RFC 1035, 3.5), or for IPv6 the 32
/// nibbles in reverse order under `ip6.arpa` (RFC 3596, 2.5).
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, c, d] = ip.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(ip) => {
            let mut out = String::with_capacity(72);
            for byte in ip.octets().iter().rev() {
                // Low nibble first: the name reads the address backwards.
                let _ = write!(out, "{:x}.{:x}.", byte & 0xf, byte >> 4);
            }
            out.push_str("ip6.arpa");
            out
        }
    }
}

/// The address record of `ip`: A or AAAA.
fn address_record(ip: IpAddr) -> RecordData {
    match ip {
        IpAddr::V4(ip) => RecordData::A(ip),
        IpAddr::V6(ip) => RecordData::Aaaa(ip),
    }
}

/// The label an endpoint without a hostname is named by: its address
/// with dashes for dots (IPv4) or colons (IPv6), as CoreDNS names it.
fn address_label(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => ip.to_string().replace('.', "-"),
        IpAddr::V6(ip) => ip.to_string().replace(':', "-"),
    }
}

/// The endpoints a headless Service's name lists: ready ones, or all with
/// `publishNotReadyAddresses`.
fn published(service: &Service) -> impl Iterator<Item = &cipgw_config::Endpoint> {
    service
        .ports
        .iter()
        .flat_map(|p| p.endpoints.iter())
        .filter(|e| service.publish_not_ready_addresses || e.state.ready)
}

/// Every record the model gives, in a stable order (Services by name,
/// then as the specification lists them). Names are lower-cased.
pub fn records(model: &ServiceTable, config: &DnsConfig) -> Vec<DnsRecord> {
    let zone = config.zone.trim_end_matches('.').to_ascii_lowercase();
    let mut out = vec![DnsRecord {
        owner: format!("dns-version.{zone}"),
        data: RecordData::Txt(SCHEMA_VERSION),
    }];
    for service in &model.services {
        let name = format!(
            "{}.{}.svc.{zone}",
            service.name.name, service.name.namespace
        )
        .to_ascii_lowercase();
        let srv_owner = |port: &cipgw_config::ServicePort| {
            port.name.as_ref().map(|n| {
                let proto = match port.protocol {
                    Protocol::Tcp => "tcp",
                    Protocol::Udp => "udp",
                };
                format!("_{}._{proto}.{name}", n.to_ascii_lowercase())
            })
        };
        match service.cluster_ip {
            ClusterIp::Vips(vips) => {
                // IPv4 first (A, then AAAA), whatever the primary.
                let mut addresses: Vec<IpAddr> = vips.iter().collect();
                addresses.sort();
                for vip in &addresses {
                    out.push(DnsRecord {
                        owner: name.clone(),
                        data: address_record(*vip),
                    });
                }
                for port in &service.ports {
                    if let Some(owner) = srv_owner(port) {
                        out.push(DnsRecord {
                            owner,
                            data: RecordData::Srv {
                                weight: 100,
                                port: port.port,
                                target: name.clone(),
                            },
                        });
                    }
                }
                for vip in addresses {
                    out.push(DnsRecord {
                        owner: reverse_name(vip),
                        data: RecordData::Ptr(name.clone()),
                    });
                }
            }
            ClusterIp::Headless => {
                // One address per endpoint IP, in the model's order
                // (sorted), whatever the number of ports listing it.
                // (IPv4 before IPv6: sorted by address.)
                let mut hosts: Vec<(IpAddr, String)> = Vec::new();
                for e in published(service) {
                    if hosts.iter().any(|(ip, _)| *ip == e.ip) {
                        continue;
                    }
                    let host = match &e.hostname {
                        Some(h) => h.to_ascii_lowercase(),
                        None => address_label(e.ip),
                    };
                    hosts.push((e.ip, host));
                }
                hosts.sort();
                for (ip, _) in &hosts {
                    out.push(DnsRecord {
                        owner: name.clone(),
                        data: address_record(*ip),
                    });
                }
                for (ip, host) in &hosts {
                    out.push(DnsRecord {
                        owner: format!("{host}.{name}"),
                        data: address_record(*ip),
                    });
                }
                // One SRV target per name: a dual-stack Pod's two
                // addresses share its hostname.
                let mut targets: Vec<&String> = Vec::with_capacity(hosts.len());
                for (_, host) in &hosts {
                    if !targets.contains(&host) {
                        targets.push(host);
                    }
                }
                let weight = u16::try_from((100 / targets.len().max(1)).max(1)).unwrap_or(1);
                for port in &service.ports {
                    let Some(owner) = srv_owner(port) else {
                        continue;
                    };
                    for host in &targets {
                        out.push(DnsRecord {
                            owner: owner.clone(),
                            data: RecordData::Srv {
                                weight,
                                port: port.port,
                                target: format!("{host}.{name}"),
                            },
                        });
                    }
                }
                for (ip, host) in &hosts {
                    out.push(DnsRecord {
                        owner: reverse_name(*ip),
                        data: RecordData::Ptr(format!("{host}.{name}")),
                    });
                }
            }
            ClusterIp::ExternalName => {
                if let Some(target) = &service.external_name {
                    out.push(DnsRecord {
                        owner: name,
                        data: RecordData::Cname(target.to_ascii_lowercase()),
                    });
                }
            }
        }
    }
    out
}

/// Records pre-encoded for one answer: the bytes that follow the question
/// and how many records each section holds.
#[derive(Debug, Clone)]
pub(crate) struct Encoded {
    pub(crate) answers: u16,
    pub(crate) authority: u16,
    pub(crate) bytes: Box<[u8]>,
}

/// What one name has.
#[derive(Debug, Default)]
struct Node {
    /// Answers by record type.
    rrsets: Vec<(Rtype, Encoded)>,
    /// The alias of an ExternalName Service: the answer to any type.
    cname: Option<Encoded>,
}

/// Why a name could not become a record (a name the model allows but DNS
/// does not: a label over 63 octets, a name over 255).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRecord {
    pub record: String,
    pub reason: String,
}

/// The compiled zone: every name the gateway answers for and its answers,
/// plus the zone's SOA for negative answers. Immutable; published with the
/// table it was compiled from.
#[derive(Debug)]
pub struct DnsZone {
    generation: u64,
    /// The zone apex, lower-case wire format.
    apex: Box<[u8]>,
    /// Names (lower-case wire format) to their answers. Empty non-terminals
    /// (`svc.<zone>`, `<ns>.svc.<zone>`, `_tcp.<svc>...`) are present with
    /// no answers: they exist, so they are NODATA, not NXDOMAIN.
    names: HashMap<Box<[u8]>, Node, RandomState>,
    /// The SOA record as the authority section of NODATA and NXDOMAIN.
    soa: Encoded,
    /// The OPT record of answers to EDNS queries: payload size, version 0,
    /// no extended rcode; and the one carrying BADVERS (RFC 6891, 6.1.3).
    pub(crate) opt: Box<[u8]>,
    pub(crate) opt_badvers: Box<[u8]>,
    /// How many names and records it holds, for `cipgw status`.
    record_count: usize,
    skipped: Vec<SkippedRecord>,
}

/// The UDP payload size the gateway advertises and answers within by
/// default: the DNS Flag Day 2020 value, which avoids IP fragmentation on
/// any usual path.
pub const DEFAULT_UDP_PAYLOAD: u16 = 1232;

/// The OPT record (RFC 6891) answers to EDNS queries carry: the
/// gateway's payload size, version 0, `rcode`'s upper bits, no options.
pub(crate) fn encode_opt(rcode: OptRcode) -> Box<[u8]> {
    let mut b = MessageBuilder::new_vec().additional();
    let pushed = b.opt(|opt| {
        opt.set_udp_payload_size(DEFAULT_UDP_PAYLOAD);
        opt.set_rcode(rcode);
        Ok(())
    });
    match pushed {
        Ok(()) => b.finish()[12..].into(),
        Err(_) => Box::default(),
    }
}

type Answers = AnswerBuilder<StaticCompressor<Vec<u8>>>;

fn name_of(text: &str) -> Result<Name<Vec<u8>>, String> {
    let absolute = format!("{}.", text.trim_end_matches('.'));
    Name::<Vec<u8>>::from_str(&absolute).map_err(|e| e.to_string())
}

/// Encodes `records` (all owned by `owner`) as the answer section, or
/// `authority` as the authority section, of a message asking `owner`;
/// returns the bytes after the question.
fn encode(
    owner: &Name<Vec<u8>>,
    qtype: Rtype,
    fill: impl FnOnce(&mut Answers) -> Result<(), String>,
) -> Result<Encoded, String> {
    let mut builder = MessageBuilder::from_target(StaticCompressor::new(Vec::new()))
        .map_err(|e| e.to_string())?;
    builder.header_mut().set_qr(true);
    let mut question = builder.question();
    question
        .push((owner, qtype, Class::IN))
        .map_err(|e| e.to_string())?;
    let mut answers = question.answer();
    fill(&mut answers)?;
    let target = answers.finish();
    let message = target.as_slice();
    let question_end = 12 + owner.len() + 4;
    let counts = domain::base::HeaderCounts::for_message_slice(message);
    Ok(Encoded {
        answers: counts.ancount(),
        authority: counts.nscount(),
        bytes: message.get(question_end..).unwrap_or_default().into(),
    })
}

impl DnsZone {
    /// Compiles the zone of `model`. Runs on the control thread. Records
    /// whose names DNS cannot carry are left out and listed in
    /// [`DnsZone::skipped`].
    pub fn compile(model: &ServiceTable, config: &DnsConfig, generation: u64) -> Self {
        let zone = config.zone.trim_end_matches('.').to_ascii_lowercase();
        let ttl = Ttl::from_secs(config.ttl);
        let mut skipped = Vec::new();
        let apex = name_of(&zone).unwrap_or_else(|reason| {
            skipped.push(SkippedRecord {
                record: zone.clone(),
                reason,
            });
            Name::root_vec()
        });

        // The SOA of the specification's example: ns.dns.<zone>.
        // hostmaster.<zone>., serial from the table generation.
        let soa_data = Soa::new(
            name_of(&format!("ns.dns.{zone}")).unwrap_or_else(|_| Name::root_vec()),
            name_of(&format!("hostmaster.{zone}")).unwrap_or_else(|_| Name::root_vec()),
            Serial(generation as u32),
            Ttl::from_secs(7200),
            Ttl::from_secs(1800),
            Ttl::from_secs(86400),
            ttl,
        );
        let soa_record = Record::new(apex.clone(), Class::IN, ttl, soa_data);
        // The SOA goes uncompressed into negative answers: asked about
        // another name, nothing in the question can be pointed at.
        let soa = {
            let mut b = MessageBuilder::new_vec();
            b.header_mut().set_qr(true);
            let mut auth = b.authority();
            let encoded = auth.push(&soa_record).map(|()| auth.finish());
            match encoded {
                Ok(bytes) => Encoded {
                    answers: 0,
                    authority: 1,
                    bytes: bytes[12..].into(),
                },
                Err(_) => Encoded {
                    answers: 0,
                    authority: 0,
                    bytes: Box::default(),
                },
            }
        };
        let opt = encode_opt(OptRcode::NOERROR);
        let opt_badvers = encode_opt(OptRcode::BADVERS);

        // Group by owner and type, keeping the order records came in.
        let records = records(model, config);
        let mut groups: Vec<(String, Rtype, Vec<&RecordData>)> = Vec::new();
        let mut index: HashMap<(&str, Rtype), usize> = HashMap::new();
        for r in &records {
            let key = (r.owner.as_str(), r.data.rtype());
            match index.get(&key) {
                Some(&i) => groups[i].2.push(&r.data),
                None => {
                    index.insert(key, groups.len());
                    groups.push((r.owner.clone(), key.1, vec![&r.data]));
                }
            }
        }

        let mut names: HashMap<Box<[u8]>, Node, RandomState> =
            HashMap::with_hasher(RandomState::new());
        let mut record_count = 0;
        let apex_wire: Box<[u8]> = apex.as_slice().into();
        // The apex answers SOA itself.
        if let Ok(encoded) = encode(&apex, Rtype::SOA, |answer| {
            answer.push(&soa_record).map_err(|e| e.to_string())
        }) {
            names
                .entry(apex_wire.clone())
                .or_default()
                .rrsets
                .push((Rtype::SOA, encoded));
        }
        for (owner, rtype, data) in groups {
            let encoded = name_of(&owner).and_then(|owner_name| {
                let encoded = encode(&owner_name, rtype, |answer| {
                    data.iter()
                        .try_for_each(|d| push(answer, &owner_name, ttl, d))
                })?;
                Ok((owner_name, encoded))
            });
            let (owner_name, encoded) = match encoded {
                Ok(done) => done,
                Err(reason) => {
                    skipped.push(SkippedRecord {
                        record: owner,
                        reason,
                    });
                    continue;
                }
            };
            record_count += data.len();
            let key: Box<[u8]> = owner_name.as_slice().into();
            // Every ancestor up to the apex exists (an empty non-terminal
            // unless it has records of its own).
            let mut ancestor = owner_name.parent();
            while let Some(parent) = ancestor {
                if parent.as_slice().len() < apex_wire.len() {
                    break;
                }
                names.entry(parent.as_slice().into()).or_default();
                ancestor = parent.parent();
            }
            let node = names.entry(key).or_default();
            if rtype == Rtype::CNAME {
                node.cname = Some(encoded.clone());
            }
            node.rrsets.push((rtype, encoded));
        }
        Self {
            generation,
            apex: apex_wire,
            names,
            soa,
            opt,
            opt_badvers,
            record_count,
            skipped,
        }
    }

    /// The table generation this zone was compiled from (its SOA serial).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// How many records it answers with.
    pub fn record_count(&self) -> usize {
        self.record_count
    }

    /// Records left out, with why.
    pub fn skipped(&self) -> &[SkippedRecord] {
        &self.skipped
    }

    /// What a lower-case wire-format name is in this zone.
    #[inline]
    pub(crate) fn lookup(&self, name: &[u8], qtype: Rtype) -> Lookup<'_> {
        match self.names.get(name) {
            Some(node) => match node.rrsets.iter().find(|(t, _)| *t == qtype) {
                Some((_, encoded)) => Lookup::Answer(encoded),
                None => match &node.cname {
                    Some(cname) => Lookup::Answer(cname),
                    None => Lookup::NoData(&self.soa),
                },
            },
            None if name.ends_with(&self.apex) && is_label_boundary(name, self.apex.len()) => {
                Lookup::NxDomain(&self.soa)
            }
            None => Lookup::NotOurs,
        }
    }
}

/// Whether the last `suffix_len` octets of the wire name `name` start at
/// a label: walking the labels from the front lands exactly there.
fn is_label_boundary(name: &[u8], suffix_len: usize) -> bool {
    let start = name.len() - suffix_len;
    let mut at = 0;
    while at < start {
        at += 1 + usize::from(name[at]);
    }
    at == start
}

/// The answer a name and type get.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lookup<'a> {
    Answer(&'a Encoded),
    /// The name exists, not with this type: NOERROR, SOA in authority.
    NoData(&'a Encoded),
    /// Under the zone, but no such name.
    NxDomain(&'a Encoded),
    /// Not in the zone.
    NotOurs,
}

fn push(
    answer: &mut Answers,
    owner: &Name<Vec<u8>>,
    ttl: Ttl,
    data: &RecordData,
) -> Result<(), String> {
    let pushed = match data {
        RecordData::A(ip) => answer.push(Record::new(owner, Class::IN, ttl, A::new(*ip))),
        RecordData::Aaaa(ip) => answer.push(Record::new(owner, Class::IN, ttl, Aaaa::new(*ip))),
        RecordData::Srv {
            weight,
            port,
            target,
        } => answer.push(Record::new(
            owner,
            Class::IN,
            ttl,
            Srv::new(0, *weight, *port, name_of(target)?),
        )),
        RecordData::Ptr(target) => answer.push(Record::new(
            owner,
            Class::IN,
            ttl,
            Ptr::new(name_of(target)?),
        )),
        RecordData::Cname(target) => answer.push(Record::new(
            owner,
            Class::IN,
            ttl,
            Cname::new(name_of(target)?),
        )),
        RecordData::Txt(text) => {
            let txt =
                Txt::<Vec<u8>>::build_from_slice(text.as_bytes()).map_err(|e| e.to_string())?;
            answer.push(Record::new(owner, Class::IN, ttl, txt))
        }
    };
    pushed.map_err(|e| e.to_string())
}
