//! Table-driven responder cases: query bytes in, the answer's rcode,
//! flags and records out, against the Kubernetes DNS specification; and
//! the worker's path (source policy, rate limit, UDP/IP framing) through
//! the whole pipeline on the in-memory gateway.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use cipgw_config::{
    ClusterIp, EndpointState, Protocol, Service, ServiceKind, ServiceName, ServiceTable,
};
use domain::base::iana::{Class, Opcode, Rtype};
use domain::base::{Message, MessageBuilder, Name, ParsedName};
use domain::rdata::AllRecordData;

use super::*;
use crate::harness::{self, addr, endpoint, service, service_port, Frame, Harness, CLIENT_PORT};
use crate::table::CompiledTable;

const VIP: [u8; 4] = [198, 18, 100, 10];

fn named(mut port: cipgw_config::ServicePort, name: &str) -> cipgw_config::ServicePort {
    port.name = Some(name.to_owned());
    port
}

/// The cluster of the cases.
fn model() -> ServiceTable {
    let echo = service(
        ServiceName::new("default", "echo-server-clusterip"),
        Some(VIP),
        None,
        vec![
            named(
                service_port(8080, Protocol::Tcp, 5678, &[addr::POD1, addr::POD2]),
                "http",
            ),
            // Unnamed: no SRV.
            service_port(9090, Protocol::Udp, 9090, &[addr::POD1]),
        ],
    );
    let mut db_port = named(
        service_port(
            5432,
            Protocol::Tcp,
            5432,
            &[[198, 18, 4, 1], [198, 18, 4, 2]],
        ),
        "pg",
    );
    db_port.endpoints[0].hostname = Some("db-0".into());
    let mut not_ready = endpoint([198, 18, 4, 3], 5432);
    not_ready.state = EndpointState {
        ready: false,
        serving: false,
        terminating: false,
    };
    not_ready.hostname = Some("db-2".into());
    db_port.endpoints.push(not_ready.clone());
    let db = service(ServiceName::new("default", "db"), None, None, vec![db_port]);

    let mut empty_port = service_port(80, Protocol::Tcp, 80, &[]);
    empty_port.endpoints.push(not_ready.clone());
    let empty = service(
        ServiceName::new("default", "empty"),
        None,
        None,
        vec![empty_port.clone()],
    );
    let mut published = service(
        ServiceName::new("default", "published"),
        None,
        None,
        vec![empty_port],
    );
    published.publish_not_ready_addresses = true;

    let ext = Service {
        name: ServiceName::new("default", "ext"),
        kind: ServiceKind::ExternalName,
        cluster_ip: ClusterIp::ExternalName,
        ip_family_policy: cipgw_config::IpFamilyPolicy::SingleStack,
        ip_families: vec![cipgw_config::IpFamily::V4],
        ports: Vec::new(),
        session_affinity: None,
        lb_algorithm: None,
        external_name: Some("db.example.net".into()),
        publish_not_ready_addresses: false,
    };
    let big_pods: Vec<[u8; 4]> = (0..200u8).map(|i| [198, 18, 8, i]).collect();
    let big = service(
        ServiceName::new("shop", "big"),
        None,
        None,
        vec![service_port(80, Protocol::Tcp, 80, &big_pods)],
    );
    let mut services = vec![echo, db, empty, published, ext, big];
    services.sort_by(|a, b| a.name.cmp(&b.name));
    ServiceTable { services }
}

fn zone() -> DnsZone {
    DnsZone::compile(&model(), &DnsConfig::default(), 7)
}

/// A query with ID 0x1234 and RD set, with an OPT record of payload
/// size `edns` when given.
fn query(name: &str, qtype: Rtype, edns: Option<u16>) -> Vec<u8> {
    let mut b = MessageBuilder::new_vec();
    b.header_mut().set_id(0x1234);
    b.header_mut().set_rd(true);
    let mut q = b.question();
    q.push((
        Name::<Vec<u8>>::from_str(name).expect("test name"),
        qtype,
        Class::IN,
    ))
    .expect("question fits");
    let mut add = q.additional();
    if let Some(size) = edns {
        add.opt(|opt| {
            opt.set_udp_payload_size(size);
            Ok(())
        })
        .expect("OPT fits");
    }
    add.finish()
}

/// Answers `query` as a worker (UDP, the gateway's 1232-octet maximum)
/// or as the TCP listener (`tcp`).
fn ask_with(zone: Option<&DnsZone>, query: &[u8], tcp: bool) -> (Answered, Vec<u8>) {
    let mut buf = vec![0u8; if tcp { 65_535 } else { 2000 }];
    buf[..query.len()].copy_from_slice(query);
    let counters = DnsCounters::default();
    let udp = (!tcp).then_some(DEFAULT_UDP_PAYLOAD);
    let answered =
        respond(zone, &mut buf, query.len(), udp, &counters).expect("the query is answered");
    assert_eq!(counters.answers(), 1, "one answer counted");
    buf.truncate(answered.len);
    (answered, buf)
}

fn ask(zone: &DnsZone, query: &[u8]) -> (Answered, Vec<u8>) {
    ask_with(Some(zone), query, false)
}

/// `owner TYPE data` of each record of a section, as dig shows them.
fn section(answer: &[u8], which: usize) -> Vec<String> {
    let message = Message::from_octets(answer).expect("answer parses");
    let mut section = message.question().answer().expect("answer section");
    for _ in 0..which {
        section = section
            .next_section()
            .expect("section parses")
            .expect("section present");
    }
    section
        .limit_to::<AllRecordData<_, ParsedName<_>>>()
        .map(|rr| {
            let rr = rr.expect("record parses");
            format!("{}. {} {}", rr.owner(), rr.rtype(), rr.data())
        })
        .collect()
}

fn rcode_of(answer: &[u8]) -> Rcode {
    Header::for_message_slice(answer).rcode()
}

const SOA: &str =
    "cluster.local. SOA ns.dns.cluster.local. hostmaster.cluster.local. 7 7200 1800 86400 5";

/// Name and type asked; rcode, answer and authority records expected.
type Case = (
    &'static str,
    Rtype,
    Rcode,
    &'static [&'static str],
    &'static [&'static str],
);

#[test]
fn records_of_the_specification() {
    let zone = zone();
    let cases: &[Case] = &[
        // 2.3: a Service with a ClusterIP.
        (
            "echo-server-clusterip.default.svc.cluster.local",
            Rtype::A,
            Rcode::NOERROR,
            &["echo-server-clusterip.default.svc.cluster.local. A 198.18.100.10"],
            &[],
        ),
        (
            "_http._tcp.echo-server-clusterip.default.svc.cluster.local",
            Rtype::SRV,
            Rcode::NOERROR,
            &[
                "_http._tcp.echo-server-clusterip.default.svc.cluster.local. SRV 0 100 8080 \
               echo-server-clusterip.default.svc.cluster.local",
            ],
            &[],
        ),
        (
            "10.100.18.198.in-addr.arpa",
            Rtype::PTR,
            Rcode::NOERROR,
            &["10.100.18.198.in-addr.arpa. PTR echo-server-clusterip.default.svc.cluster.local."],
            &[],
        ),
        // 2.4: headless: ready endpoints only, by hostname or address.
        (
            "db.default.svc.cluster.local",
            Rtype::A,
            Rcode::NOERROR,
            &[
                "db.default.svc.cluster.local. A 198.18.4.1",
                "db.default.svc.cluster.local. A 198.18.4.2",
            ],
            &[],
        ),
        (
            "db-0.db.default.svc.cluster.local",
            Rtype::A,
            Rcode::NOERROR,
            &["db-0.db.default.svc.cluster.local. A 198.18.4.1"],
            &[],
        ),
        (
            "198-18-4-2.db.default.svc.cluster.local",
            Rtype::A,
            Rcode::NOERROR,
            &["198-18-4-2.db.default.svc.cluster.local. A 198.18.4.2"],
            &[],
        ),
        (
            "_pg._tcp.db.default.svc.cluster.local",
            Rtype::SRV,
            Rcode::NOERROR,
            &[
                "_pg._tcp.db.default.svc.cluster.local. SRV 0 50 5432 \
                 db-0.db.default.svc.cluster.local",
                "_pg._tcp.db.default.svc.cluster.local. SRV 0 50 5432 \
                 198-18-4-2.db.default.svc.cluster.local",
            ],
            &[],
        ),
        (
            "1.4.18.198.in-addr.arpa",
            Rtype::PTR,
            Rcode::NOERROR,
            &["1.4.18.198.in-addr.arpa. PTR db-0.db.default.svc.cluster.local."],
            &[],
        ),
        // A not-ready endpoint has no name, no address, no PTR.
        (
            "db-2.db.default.svc.cluster.local",
            Rtype::A,
            Rcode::NXDOMAIN,
            &[],
            &[SOA],
        ),
        // No ready endpoint: the name does not exist ...
        (
            "empty.default.svc.cluster.local",
            Rtype::A,
            Rcode::NXDOMAIN,
            &[],
            &[SOA],
        ),
        // ... unless publishNotReadyAddresses.
        (
            "published.default.svc.cluster.local",
            Rtype::A,
            Rcode::NOERROR,
            &["published.default.svc.cluster.local. A 198.18.4.3"],
            &[],
        ),
        // 2.5: ExternalName, whatever type is asked.
        (
            "ext.default.svc.cluster.local",
            Rtype::A,
            Rcode::NOERROR,
            &["ext.default.svc.cluster.local. CNAME db.example.net."],
            &[],
        ),
        (
            "ext.default.svc.cluster.local",
            Rtype::CNAME,
            Rcode::NOERROR,
            &["ext.default.svc.cluster.local. CNAME db.example.net."],
            &[],
        ),
        // 2.2: the schema version.
        (
            "dns-version.cluster.local",
            Rtype::TXT,
            Rcode::NOERROR,
            &["dns-version.cluster.local. TXT \"1.1.0\""],
            &[],
        ),
        ("cluster.local", Rtype::SOA, Rcode::NOERROR, &[SOA], &[]),
        // NODATA: the name exists, not the type (AAAA: an IPv4-only
        // Service), and empty non-terminals exist.
        (
            "echo-server-clusterip.default.svc.cluster.local",
            Rtype::AAAA,
            Rcode::NOERROR,
            &[],
            &[SOA],
        ),
        (
            "echo-server-clusterip.default.svc.cluster.local",
            Rtype::TXT,
            Rcode::NOERROR,
            &[],
            &[SOA],
        ),
        (
            "default.svc.cluster.local",
            Rtype::A,
            Rcode::NOERROR,
            &[],
            &[SOA],
        ),
        // NXDOMAIN: under the zone, no such name.
        (
            "nothing.default.svc.cluster.local",
            Rtype::A,
            Rcode::NXDOMAIN,
            &[],
            &[SOA],
        ),
        // Unnamed ports have no SRV.
        (
            "_9090._udp.echo-server-clusterip.default.svc.cluster.local",
            Rtype::SRV,
            Rcode::NXDOMAIN,
            &[],
            &[SOA],
        ),
        // Outside the zone: refused (no upstream), and a look-alike
        // suffix is outside too.
        ("example.com", Rtype::A, Rcode::REFUSED, &[], &[]),
        ("xcluster.local", Rtype::A, Rcode::REFUSED, &[], &[]),
        ("9.9.9.9.in-addr.arpa", Rtype::PTR, Rcode::REFUSED, &[], &[]),
    ];
    for &(name, qtype, rcode, answers, authority) in cases {
        let q = query(name, qtype, None);
        let (answered, answer) = ask(&zone, &q);
        let case = format!("{name} {qtype}");
        assert_eq!(rcode_of(&answer), rcode, "rcode of {case}");
        assert!(!answered.truncated, "{case} fits 512 octets");
        let header = Header::for_message_slice(&answer);
        assert_eq!(header.id(), 0x1234, "{case}: the query's ID");
        assert!(header.qr() && header.rd() && !header.tc(), "{case}: flags");
        assert_eq!(
            header.aa(),
            rcode != Rcode::REFUSED,
            "{case}: authoritative for its zone only"
        );
        assert_eq!(
            &answer[12..q.len()],
            &q[12..],
            "{case}: the question as asked"
        );
        assert_eq!(section(&answer, 0), answers, "answers to {case}");
        assert_eq!(section(&answer, 1), authority, "authority of {case}");
    }
}

const V6_PRIMARY: &str = "2001:2:0:ff::10";
const V6_PTR: &str = "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.f.f.0.0.0.0.0.0.2.0.0.0.1.0.0.2.ip6.arpa";
const POD6_PTR: &str = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.4.0.0.0.0.0.0.0.2.0.0.0.1.0.0.2.ip6.arpa";

/// A dual-stack cluster: `web` with an IPv6 primary and an IPv4
/// ClusterIP, `six` with an IPv6 one only, and headless `hl` whose Pods
/// have both families (`hl-0` named, the others by address).
fn dual_model() -> ServiceTable {
    use std::net::{IpAddr, Ipv6Addr};
    let v6 = |host: u16, last: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, host, 0, 0, 0, last));
    let mut web = service(
        ServiceName::new("default", "web"),
        None,
        None,
        vec![named(
            service_port(80, Protocol::Tcp, 8080, &[addr::POD1]),
            "http",
        )],
    );
    web.cluster_ip = ClusterIp::Vips(
        cipgw_config::Vips::dual(v6(0xff, 0x10), IpAddr::from(VIP)).expect("two families"),
    );
    web.ip_families = vec![cipgw_config::IpFamily::V6, cipgw_config::IpFamily::V4];
    let mut six = service(ServiceName::new("default", "six"), None, None, vec![]);
    six.cluster_ip = ClusterIp::single(v6(0xff, 0x11));
    six.ip_families = vec![cipgw_config::IpFamily::V6];
    let mut port = named(
        service_port(5432, Protocol::Tcp, 5432, &[[198, 18, 4, 1]]),
        "pg",
    );
    port.endpoints[0].hostname = Some("hl-0".into());
    let mut e6 = endpoint([0; 4], 5432);
    e6.ip = v6(4, 1);
    e6.hostname = Some("hl-0".into());
    port.endpoints.push(e6.clone());
    e6.ip = v6(4, 2);
    e6.hostname = None;
    port.endpoints.push(e6);
    let mut hl = service(ServiceName::new("default", "hl"), None, None, vec![port]);
    hl.ip_families = vec![cipgw_config::IpFamily::V4, cipgw_config::IpFamily::V6];
    ServiceTable {
        services: vec![hl, six, web],
    }
}

#[test]
fn dual_stack_a_aaaa_ptr_and_nodata() {
    let zone = DnsZone::compile(&dual_model(), &DnsConfig::default(), 7);
    let cases: &[Case] = &[
        // Every ClusterIP of a dual-stack Service, each by its type.
        (
            "web.default.svc.cluster.local",
            Rtype::A,
            Rcode::NOERROR,
            &["web.default.svc.cluster.local. A 198.18.100.10"],
            &[],
        ),
        (
            "web.default.svc.cluster.local",
            Rtype::AAAA,
            Rcode::NOERROR,
            &["web.default.svc.cluster.local. AAAA 2001:2:0:ff::10"],
            &[],
        ),
        // SRV targets the Service name, whatever its families.
        (
            "_http._tcp.web.default.svc.cluster.local",
            Rtype::SRV,
            Rcode::NOERROR,
            &["_http._tcp.web.default.svc.cluster.local. SRV 0 100 80 \
               web.default.svc.cluster.local"],
            &[],
        ),
        (
            V6_PTR,
            Rtype::PTR,
            Rcode::NOERROR,
            &[concat!(
                "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.f.f.0.0.0.0.0.0.2.0.0.0.1.0.0.2.ip6.arpa.",
                " PTR web.default.svc.cluster.local."
            )],
            &[],
        ),
        (
            "10.100.18.198.in-addr.arpa",
            Rtype::PTR,
            Rcode::NOERROR,
            &["10.100.18.198.in-addr.arpa. PTR web.default.svc.cluster.local."],
            &[],
        ),
        // An IPv6-only Service: AAAA, and A is NODATA with the SOA.
        (
            "six.default.svc.cluster.local",
            Rtype::AAAA,
            Rcode::NOERROR,
            &["six.default.svc.cluster.local. AAAA 2001:2:0:ff::11"],
            &[],
        ),
        (
            "six.default.svc.cluster.local",
            Rtype::A,
            Rcode::NOERROR,
            &[],
            &[SOA],
        ),
        // Headless: A and AAAA per ready endpoint of each family.
        (
            "hl.default.svc.cluster.local",
            Rtype::A,
            Rcode::NOERROR,
            &["hl.default.svc.cluster.local. A 198.18.4.1"],
            &[],
        ),
        (
            "hl.default.svc.cluster.local",
            Rtype::AAAA,
            Rcode::NOERROR,
            &[
                "hl.default.svc.cluster.local. AAAA 2001:2:0:4::1",
                "hl.default.svc.cluster.local. AAAA 2001:2:0:4::2",
            ],
            &[],
        ),
        // A dual-stack Pod's hostname has both.
        (
            "hl-0.hl.default.svc.cluster.local",
            Rtype::AAAA,
            Rcode::NOERROR,
            &["hl-0.hl.default.svc.cluster.local. AAAA 2001:2:0:4::1"],
            &[],
        ),
        (
            "hl-0.hl.default.svc.cluster.local",
            Rtype::A,
            Rcode::NOERROR,
            &["hl-0.hl.default.svc.cluster.local. A 198.18.4.1"],
            &[],
        ),
        // An IPv6 endpoint without hostname: its address with dashes;
        // it has no A.
        (
            "2001-2-0-4--2.hl.default.svc.cluster.local",
            Rtype::AAAA,
            Rcode::NOERROR,
            &["2001-2-0-4--2.hl.default.svc.cluster.local. AAAA 2001:2:0:4::2"],
            &[],
        ),
        (
            "2001-2-0-4--2.hl.default.svc.cluster.local",
            Rtype::A,
            Rcode::NOERROR,
            &[],
            &[SOA],
        ),
        // One SRV per endpoint name (hl-0 has two addresses, one name).
        (
            "_pg._tcp.hl.default.svc.cluster.local",
            Rtype::SRV,
            Rcode::NOERROR,
            &[
                "_pg._tcp.hl.default.svc.cluster.local. SRV 0 50 5432 \
                 hl-0.hl.default.svc.cluster.local",
                "_pg._tcp.hl.default.svc.cluster.local. SRV 0 50 5432 \
                 2001-2-0-4--2.hl.default.svc.cluster.local",
            ],
            &[],
        ),
        (
            POD6_PTR,
            Rtype::PTR,
            Rcode::NOERROR,
            &[concat!(
                "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.4.0.0.0.0.0.0.0.2.0.0.0.1.0.0.2.ip6.arpa.",
                " PTR hl-0.hl.default.svc.cluster.local."
            )],
            &[],
        ),
        // Under ip6.arpa but no such address: not this zone's.
        (
            "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.f.f.0.0.0.0.0.0.2.0.0.0.1.0.0.2.ip6.arpa",
            Rtype::PTR,
            Rcode::REFUSED,
            &[],
            &[],
        ),
    ];
    for &(name, qtype, rcode, answers, authority) in cases {
        let q = query(name, qtype, None);
        let (_, answer) = ask(&zone, &q);
        let case = format!("{name} {qtype}");
        assert_eq!(rcode_of(&answer), rcode, "rcode of {case}");
        assert_eq!(section(&answer, 0), answers, "answers to {case}");
        assert_eq!(section(&answer, 1), authority, "authority of {case}");
    }
    let records: Vec<String> = zone::records(&dual_model(), &DnsConfig::default())
        .iter()
        .map(ToString::to_string)
        .filter(|r| r.starts_with("web.") || r.contains(" PTR web."))
        .collect();
    assert_eq!(
        records,
        [
            "web.default.svc.cluster.local. A 198.18.100.10",
            "web.default.svc.cluster.local. AAAA 2001:2:0:ff::10",
            "10.100.18.198.in-addr.arpa. PTR web.default.svc.cluster.local.",
            &format!("{V6_PTR}. PTR web.default.svc.cluster.local."),
        ],
        "as `cipgw check --dns` lists them"
    );
    assert_eq!(
        zone::reverse_name(V6_PRIMARY.parse().expect("valid")),
        V6_PTR
    );
    assert_eq!(
        zone::reverse_name("2001:2:0:4::1".parse().expect("valid")),
        POD6_PTR
    );
}

#[test]
fn names_are_case_insensitive_and_the_question_keeps_its_case() {
    let zone = zone();
    let q = query(
        "Echo-Server-ClusterIP.DEFAULT.svc.Cluster.Local",
        Rtype::A,
        None,
    );
    let (_, answer) = ask(&zone, &q);
    assert_eq!(rcode_of(&answer), Rcode::NOERROR);
    // The owner is compressed to the question: it reads as asked (DNS
    // 0x20 clients check this).
    assert_eq!(
        section(&answer, 0),
        ["Echo-Server-ClusterIP.DEFAULT.svc.Cluster.Local. A 198.18.100.10"]
    );
    assert_eq!(&answer[12..q.len()], &q[12..]);
}

#[test]
fn servfail_before_the_first_zone() {
    let q = query(
        "echo-server-clusterip.default.svc.cluster.local",
        Rtype::A,
        Some(1232),
    );
    let (answered, answer) = ask_with(None, &q, false);
    assert_eq!(answered.rcode, DnsRcode::ServFail);
    assert_eq!(rcode_of(&answer), Rcode::SERVFAIL);
    let message = Message::from_octets(&answer[..]).expect("parses");
    assert!(message.opt().is_some(), "EDNS answered with OPT");
    assert_eq!(no_zone_opt(), &*zone().opt, "one OPT encoding");
}

#[test]
fn edns_payload_size_truncation_and_tcp() {
    let zone = zone();
    let big = "big.shop.svc.cluster.local";
    // Without EDNS: 512 octets, so 200 addresses truncate.
    let (answered, answer) = ask(&zone, &query(big, Rtype::A, None));
    assert!(answered.truncated && answer.len() <= 512);
    let header = Header::for_message_slice(&answer);
    assert!(header.tc());
    assert_eq!(section(&answer, 0), Vec::<String>::new(), "TC: no records");
    // With EDNS 4096, the gateway's 1232 still bounds it: truncated.
    let (answered, answer) = ask(&zone, &query(big, Rtype::A, Some(4096)));
    assert!(answered.truncated && answer.len() <= 1232);
    let message = Message::from_octets(&answer[..]).expect("parses");
    let opt = message.opt().expect("OPT in the answer");
    assert_eq!(opt.udp_payload_size(), 1232);
    // Over TCP it comes whole.
    let (answered, answer) = ask_with(Some(&zone), &query(big, Rtype::A, None), true);
    assert!(!answered.truncated);
    assert_eq!(section(&answer, 0).len(), 200);
    // A small answer with a small EDNS size below 512 still gets 512.
    let (answered, answer) = ask(
        &zone,
        &query("db.default.svc.cluster.local", Rtype::A, Some(100)),
    );
    assert!(!answered.truncated);
    assert_eq!(section(&answer, 0).len(), 2);
    // Compressed owners: 16 octets an address.
    assert!(answer.len() < 200);
}

#[test]
fn edns_version_above_zero_is_badvers() {
    let zone = zone();
    let mut q = query("db.default.svc.cluster.local", Rtype::A, Some(1232));
    // The OPT record's TTL field: extended rcode, version, flags.
    let ttl_at = q.len() - 6;
    q[ttl_at + 1] = 1;
    let (answered, answer) = ask(&zone, &q);
    assert_eq!(answered.rcode, DnsRcode::BadVers);
    let message = Message::from_octets(&answer[..]).expect("parses");
    assert_eq!(message.opt_rcode(), domain::base::iana::OptRcode::BADVERS);
}

#[test]
fn malformed_queries_get_formerr_notimp_or_nothing() {
    let zone = zone();
    let counters = DnsCounters::default();
    let mut buf = [0u8; 600];
    // Shorter than a header: dropped.
    assert_eq!(
        respond(Some(&zone), &mut buf, 5, Some(1232), &counters),
        Err(DnsDrop::Malformed)
    );
    // A response: never answered.
    let mut q = query("db.default.svc.cluster.local", Rtype::A, None);
    q[2] |= 0x80;
    buf[..q.len()].copy_from_slice(&q);
    assert_eq!(
        respond(Some(&zone), &mut buf, q.len(), Some(1232), &counters),
        Err(DnsDrop::NotAQuery)
    );
    assert_eq!(counters.drops[DnsDrop::Malformed as usize].get(), 1);
    assert_eq!(counters.drops[DnsDrop::NotAQuery as usize].get(), 1);

    let formerr = |bytes: &[u8]| {
        let mut buf = [0u8; 600];
        buf[..bytes.len()].copy_from_slice(bytes);
        let answered =
            respond(Some(&zone), &mut buf, bytes.len(), Some(1232), &counters).expect("answered");
        (answered.rcode, answered.len)
    };
    let q = query("db.default.svc.cluster.local", Rtype::A, None);
    // No question.
    let mut none = q[..12].to_vec();
    none[5] = 0;
    assert_eq!(formerr(&none), (DnsRcode::FormErr, 12));
    // Two questions announced, one present.
    let mut two = q.clone();
    two[5] = 2;
    assert_eq!(formerr(&two).0, DnsRcode::FormErr);
    // A question cut short.
    assert_eq!(formerr(&q[..q.len() - 3]).0, DnsRcode::FormErr);
    // A compression pointer as the question name (to itself).
    let mut looped = q[..12].to_vec();
    looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    assert_eq!(formerr(&looped).0, DnsRcode::FormErr);
    // A label longer than 63 octets.
    let mut long = q[..12].to_vec();
    long.push(64);
    long.extend_from_slice(&[b'a'; 64]);
    long.extend_from_slice(&[0, 0, 1, 0, 1]);
    assert_eq!(formerr(&long).0, DnsRcode::FormErr);
    // Not a QUERY.
    let mut notify = q.clone();
    Header::for_message_slice_mut(&mut notify).set_opcode(Opcode::NOTIFY);
    assert_eq!(formerr(&notify), (DnsRcode::NotImp, 12));
    // Class CH, and zone transfers: refused.
    let mut chaos = q.clone();
    let class_at = chaos.len() - 2;
    chaos[class_at + 1] = 3;
    assert_eq!(formerr(&chaos).0, DnsRcode::Refused);
    let axfr = query("cluster.local", Rtype::AXFR, None);
    assert_eq!(formerr(&axfr).0, DnsRcode::Refused);
    assert_eq!(counters.rcodes[DnsRcode::FormErr as usize].get(), 5);
}

#[test]
fn counts_per_rcode_and_qtype_and_the_generation_served() {
    let zone = zone();
    let counters = DnsCounters::default();
    for (name, qtype) in [
        ("db.default.svc.cluster.local", Rtype::A),
        ("nothing.default.svc.cluster.local", Rtype::A),
        ("_pg._tcp.db.default.svc.cluster.local", Rtype::SRV),
        ("example.com", Rtype::MX),
    ] {
        let q = query(name, qtype, None);
        let mut buf = [0u8; 1500];
        buf[..q.len()].copy_from_slice(&q);
        respond(Some(&zone), &mut buf, q.len(), Some(1232), &counters).expect("answered");
    }
    let rcode = |r: DnsRcode| counters.rcodes[r as usize].get();
    let qtype = |t: DnsQtype| counters.qtypes[t as usize].get();
    assert_eq!(
        (
            rcode(DnsRcode::NoError),
            rcode(DnsRcode::NxDomain),
            rcode(DnsRcode::Refused)
        ),
        (2, 1, 1)
    );
    assert_eq!(
        (
            qtype(DnsQtype::A),
            qtype(DnsQtype::Srv),
            qtype(DnsQtype::Other)
        ),
        (2, 1, 1)
    );
    assert_eq!(counters.last_generation(), 7);
}

#[test]
fn the_listing_names_what_is_served() {
    let lines: Vec<String> = zone::records(&model(), &DnsConfig::default())
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(lines.contains(&"dns-version.cluster.local. TXT \"1.1.0\"".to_owned()));
    assert!(lines
        .contains(&"echo-server-clusterip.default.svc.cluster.local. A 198.18.100.10".to_owned()));
    assert!(lines.contains(&"ext.default.svc.cluster.local. CNAME db.example.net.".to_owned()));
    let zone = zone();
    assert_eq!(zone.record_count(), lines.len());
    assert!(zone.skipped().is_empty());
}

#[test]
fn a_zone_with_another_domain_and_ttl() {
    let config = DnsConfig {
        zone: "Corp.Example.".into(),
        ttl: 30,
    };
    let zone = DnsZone::compile(&model(), &config, 1);
    let (_, answer) = ask(&zone, &query("db.default.svc.corp.example", Rtype::A, None));
    let message = Message::from_octets(&answer[..]).expect("parses");
    let ttls: Vec<u32> = message
        .answer()
        .expect("answer")
        .limit_to::<AllRecordData<_, ParsedName<_>>>()
        .map(|rr| rr.expect("parses").ttl().as_secs())
        .collect();
    assert_eq!(ttls, [30, 30]);
    let (_, answer) = ask(
        &zone,
        &query("db.default.svc.cluster.local", Rtype::A, None),
    );
    assert_eq!(rcode_of(&answer), Rcode::REFUSED);
}

// The worker's path: frames through the whole pipeline.

const DNS_ADDRESS: [u8; 4] = [198, 18, 0, 53];

fn gateway(per_source: u32) -> Harness {
    let mut table = CompiledTable::compile(Arc::new(model()), 7);
    table = table.with_dns(Arc::new(zone()));
    let dns = DnsResponder::new(
        vec![IpAddr::from(DNS_ADDRESS)],
        vec!["198.18.0.0/24".parse().expect("cidr")],
        Arc::new(DnsCounters::default()),
    )
    .with_limits(RefusalLimiter::new(per_source, 1_000));
    let conntrack = Arc::new(crate::conntrack::Conntrack::new(
        crate::conntrack::ConntrackConfig {
            max_flows: 1024,
            unreplied_percent: 100,
            timeouts: Default::default(),
        },
    ));
    Harness {
        pipeline: harness::pipeline(conntrack, 1).with_dns(dns),
        table: Arc::new(table),
        net: Arc::new(harness::Net::two_arm().build()),
        now: 100,
    }
}

fn send(gw: &mut Harness, src: [u8; 4], dns: &[u8]) -> (Verdict, Vec<u8>) {
    let mut frame = Frame::arriving(src, DNS_ADDRESS).udp(40000, PORT, dns);
    let len = frame.len();
    frame.resize(2048, 0);
    let verdict = gw.process(&mut frame, len, CLIENT_PORT);
    if let Verdict::Respond { len, .. } = verdict {
        frame.truncate(len);
    }
    (verdict, frame)
}

#[test]
fn a_worker_answers_in_place_with_valid_headers() {
    let mut gw = gateway(100);
    let q = query(
        "echo-server-clusterip.default.svc.cluster.local",
        Rtype::A,
        None,
    );
    let (verdict, frame) = send(&mut gw, addr::CLIENT, &q);
    assert!(
        matches!(verdict, Verdict::Respond { port, .. } if port == CLIENT_PORT),
        "answered back: {verdict:?}"
    );
    let p = etherparse::SlicedPacket::from_ethernet(&frame).expect("answer parses");
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!("ipv4")
    };
    assert_eq!(ip.header().source(), DNS_ADDRESS);
    assert_eq!(ip.header().destination(), addr::CLIENT);
    assert_eq!(crate::checksum::checksum(ip.header().slice()), 0);
    let Some(etherparse::TransportSlice::Udp(udp)) = &p.transport else {
        panic!("udp")
    };
    assert_eq!((udp.source_port(), udp.destination_port()), (53, 40000));
    assert_eq!(
        crate::checksum::l4_checksum(DNS_ADDRESS, addr::CLIENT, 17, &frame[34..]),
        0,
        "UDP checksum"
    );
    assert_eq!(
        section(udp.payload(), 0),
        ["echo-server-clusterip.default.svc.cluster.local. A 198.18.100.10"]
    );
    assert_eq!(gw.counters().new_flows.get(), 0, "no conntrack entry");
}

#[test]
fn sources_outside_the_cluster_get_nothing() {
    let mut gw = gateway(100);
    let q = query(
        "echo-server-clusterip.default.svc.cluster.local",
        Rtype::A,
        None,
    );
    let (verdict, _) = send(&mut gw, [198, 19, 0, 2], &q);
    assert_eq!(verdict, Verdict::Drop(DropReason::SourceNotInCluster));
    assert_eq!(gw.counters().drops_of(DropReason::SourceNotInCluster), 1);
}

#[test]
fn a_burst_is_answered_at_the_limit_only() {
    let mut gw = gateway(10);
    let q = query("db.default.svc.cluster.local", Rtype::A, None);
    let answered = (0..50)
        .filter(|_| matches!(send(&mut gw, addr::CLIENT, &q).0, Verdict::Respond { .. }))
        .count();
    assert_eq!(answered, 10);
    assert_eq!(gw.counters().drops_of(DropReason::RateLimited), 40);
    // Another source has its own budget; a new second a new one.
    assert!(matches!(
        send(&mut gw, [198, 18, 0, 3], &q).0,
        Verdict::Respond { .. }
    ));
    gw.now += 1;
    assert!(matches!(
        send(&mut gw, addr::CLIENT, &q).0,
        Verdict::Respond { .. }
    ));
}

#[test]
fn garbage_to_port_53_is_counted_never_a_panic() {
    let mut gw = gateway(1000);
    for len in 0..64 {
        let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        let (verdict, _) = send(&mut gw, addr::CLIENT, &junk);
        assert!(
            matches!(verdict, Verdict::Respond { .. } | Verdict::Drop(_)),
            "defined verdict for {len} octets: {verdict:?}"
        );
    }
}

#[test]
fn names_outside_the_zone_are_left_for_an_upstream_when_forwarding() {
    let zone = zone();
    let counters = DnsCounters::default();
    let q = query("www.example.test", Rtype::A, Some(1232));
    let mut buf = vec![0u8; 2000];
    buf[..q.len()].copy_from_slice(&q);
    let response = respond_or_forward(
        Some(&zone),
        &mut buf,
        q.len(),
        Some(DEFAULT_UDP_PAYLOAD),
        &counters,
        true,
    )
    .expect("a query");
    // Header, name (18 octets for www.example.test), type and class.
    assert_eq!(
        response,
        Response::Forward {
            question_end: 12 + 18 + 4
        }
    );
    assert_eq!(&buf[..q.len()], &q[..], "the query is left as it came");
    assert_eq!(counters.answers(), 0, "no answer counted");
    assert_eq!(counters.qtypes[DnsQtype::A as usize].get(), 1);
    // Cluster names, zone transfers and other classes stay the zone's.
    for (name, qtype, rcode) in [
        ("db.default.svc.cluster.local", Rtype::A, DnsRcode::NoError),
        (
            "nothing.default.svc.cluster.local",
            Rtype::A,
            DnsRcode::NxDomain,
        ),
        ("example.test", Rtype::AXFR, DnsRcode::Refused),
    ] {
        let q = query(name, qtype, None);
        buf[..q.len()].copy_from_slice(&q);
        let response = respond_or_forward(Some(&zone), &mut buf, q.len(), None, &counters, true)
            .expect("a query");
        assert!(
            matches!(response, Response::Answered(a) if a.rcode == rcode),
            "{name} {qtype}: {response:?}"
        );
    }
    // Without forwarding: REFUSED, as ever.
    let (answered, _) = ask(&zone, &q_outside());
    assert_eq!(answered.rcode, DnsRcode::Refused);
}

fn q_outside() -> Vec<u8> {
    query("www.example.test", Rtype::A, None)
}

#[test]
fn servfail_keeps_the_question() {
    let q = q_outside();
    let mut buf = q.clone();
    let counters = DnsCounters::default();
    let failed = servfail(&mut buf, q.len(), &counters);
    assert_eq!(failed.rcode, DnsRcode::ServFail);
    let answer = &buf[..failed.len];
    assert_eq!(rcode_of(answer), Rcode::SERVFAIL);
    let message = Message::from_octets(answer).expect("parses");
    assert_eq!(message.header().id(), 0x1234);
    assert!(message.header().qr());
    let question = message.sole_question().expect("the question");
    assert_eq!(question.qname().to_string(), "www.example.test");
    assert_eq!(counters.rcodes[DnsRcode::ServFail as usize].get(), 1);
}

#[test]
fn a_worker_hands_outside_names_to_the_forwarding_thread() {
    use std::os::unix::net::UnixDatagram;
    let (workers_end, thread_end) = UnixDatagram::pair().expect("socket pair");
    let mut gw = gateway(100);
    let counters = Arc::new(DnsCounters::default());
    let dns = DnsResponder::new(
        vec![IpAddr::from(DNS_ADDRESS)],
        vec!["198.18.0.0/24".parse().expect("cidr")],
        Arc::clone(&counters),
    )
    .with_forwarding(forward::ForwardSender::new(workers_end).expect("sender"));
    gw.pipeline = gw.pipeline.with_dns(dns);
    let q = query("www.example.test", Rtype::A, Some(1232));
    let (verdict, _) = send(&mut gw, addr::CLIENT, &q);
    assert_eq!(verdict, Verdict::HandedOff);
    let mut datagram = [0u8; 2048];
    thread_end.set_nonblocking(true).expect("non-blocking");
    let n = thread_end.recv(&mut datagram).expect("one hand-off");
    let handoff = forward::Handoff::parse(&datagram[..n]).expect("a hand-off");
    assert_eq!(handoff.client, SocketAddr::new(addr::CLIENT.into(), 40000));
    assert_eq!(handoff.server, IpAddr::from(DNS_ADDRESS));
    assert_eq!(handoff.query, &q[..]);
    assert_eq!(handoff.question_end, 12 + 18 + 4);
    // Cluster names are still answered in place.
    let (verdict, _) = send(
        &mut gw,
        addr::CLIENT,
        &query("db.default.svc.cluster.local", Rtype::A, None),
    );
    assert!(matches!(verdict, Verdict::Respond { .. }), "{verdict:?}");
    // The thread gone: dropped and counted, never blocked.
    drop(thread_end);
    let (verdict, _) = send(&mut gw, addr::CLIENT, &q);
    assert_eq!(verdict, Verdict::HandedOff);
    assert_eq!(counters.drops[DnsDrop::ForwardQueueFull as usize].get(), 1);
}

// IPv6: the same path, answered with IPv6 headers.

/// The gateway's IPv6 DNS address, and clients inside and outside the
/// cluster's IPv6 range.
const DNS_ADDRESS6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0xff, 0, 0, 0, 0x53);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);
const OUTSIDER6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0x99, 0, 0, 0, 2);

/// A gateway answering on an IPv4 and an IPv6 DNS address for clients
/// in `cluster_cidrs`, from the dual-stack zone, or without a zone (before
/// the first sync).
fn gateway6(per_source: u32, cluster_cidrs: &[&str], zone: bool) -> Harness {
    let mut gw = gateway(per_source);
    let mut table = CompiledTable::compile(Arc::new(dual_model()), 7);
    if zone {
        table = table.with_dns(Arc::new(DnsZone::compile(
            &dual_model(),
            &DnsConfig::default(),
            7,
        )));
    }
    gw.table = Arc::new(table);
    let dns = DnsResponder::new(
        vec![IpAddr::from(DNS_ADDRESS), IpAddr::V6(DNS_ADDRESS6)],
        cluster_cidrs
            .iter()
            .map(|c| c.parse().expect("cidr"))
            .collect(),
        Arc::new(DnsCounters::default()),
    )
    .with_limits(RefusalLimiter::new(per_source, 1_000));
    gw.pipeline = gw.pipeline.with_dns(dns);
    gw
}

const DUAL_CIDRS: &[&str] = &["198.18.0.0/24", "2001:2::/64"];

/// A UDP query from `src` port 40000 to the IPv6 DNS address, as it
/// reaches the gateway's client port; the frame that leaves.
fn send6(gw: &mut Harness, src: Ipv6Addr, dns: &[u8]) -> (Verdict, Vec<u8>) {
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2(harness::mac::CLIENT, harness::mac::GW_CLIENT_SIDE)
        .ipv6(src.octets(), DNS_ADDRESS6.octets(), 64)
        .udp(40000, PORT)
        .write(&mut frame, dns)
        .expect("UDP frame builds");
    let len = frame.len();
    frame.resize(2048, 0);
    let verdict = gw.process(&mut frame, len, CLIENT_PORT);
    if let Verdict::Respond { len, .. } = verdict {
        frame.truncate(len);
    }
    (verdict, frame)
}

#[test]
fn an_ipv6_query_gets_an_ipv6_answer_byte_exact() {
    let zone = DnsZone::compile(&dual_model(), &DnsConfig::default(), 7);
    for qtype in [Rtype::AAAA, Rtype::A] {
        let mut gw = gateway6(100, DUAL_CIDRS, true);
        let q = query("web.default.svc.cluster.local", qtype, Some(1232));
        let (verdict, frame) = send6(&mut gw, CLIENT6, &q);
        assert!(
            matches!(verdict, Verdict::Respond { port, .. } if port == CLIENT_PORT),
            "answered back: {verdict:?}"
        );
        // The expected frame, built independently: etherparse writes the
        // IPv6 header (hop limit 64, no extension headers) and computes
        // the UDP checksum over the IPv6 pseudo-header; the DNS message is
        // the responder's own answer to the query.
        let (_, dns_answer) = ask(&zone, &q);
        let mut expected = Vec::new();
        etherparse::PacketBuilder::ethernet2(harness::mac::GW_CLIENT_SIDE, harness::mac::CLIENT)
            .ipv6(DNS_ADDRESS6.octets(), CLIENT6.octets(), 64)
            .udp(PORT, 40000)
            .write(&mut expected, &dns_answer)
            .expect("expected frame builds");
        assert_eq!(frame, expected, "{qtype}: the answer, byte for byte");
        // And the checksum verifies on its own.
        assert_eq!(
            crate::checksum::l4_checksum_v6(
                DNS_ADDRESS6.octets(),
                CLIENT6.octets(),
                17,
                &frame[14 + 40..]
            ),
            0,
            "UDP checksum"
        );
        let p = etherparse::SlicedPacket::from_ethernet(&frame).expect("answer parses");
        let Some(etherparse::TransportSlice::Udp(udp)) = &p.transport else {
            panic!("udp")
        };
        let want = match qtype {
            Rtype::AAAA => "web.default.svc.cluster.local. AAAA 2001:2:0:ff::10",
            _ => "web.default.svc.cluster.local. A 198.18.100.10",
        };
        assert_eq!(section(udp.payload(), 0), [want]);
        assert_eq!(gw.counters().new_flows.get(), 0, "no conntrack entry");
    }
}

#[test]
fn ipv6_sources_outside_the_cluster_or_not_clients_get_nothing() {
    let q = query("web.default.svc.cluster.local", Rtype::AAAA, None);
    let mut gw = gateway6(100, DUAL_CIDRS, true);
    let (verdict, _) = send6(&mut gw, OUTSIDER6, &q);
    assert_eq!(verdict, Verdict::Drop(DropReason::SourceNotInCluster));
    for bad in [
        Ipv6Addr::LOCALHOST,
        Ipv6Addr::UNSPECIFIED,
        "ff02::1".parse().expect("static"),
    ] {
        let (verdict, _) = send6(&mut gw, bad, &q);
        assert_eq!(verdict, Verdict::Drop(DropReason::BadSource), "{bad}");
    }
    assert_eq!(gw.counters().drops_of(DropReason::SourceNotInCluster), 1);
    assert_eq!(gw.counters().drops_of(DropReason::BadSource), 3);
    // Only the client's family counts: IPv4 ranges alone admit no IPv6
    // client.
    let mut gw = gateway6(100, &["198.18.0.0/24"], true);
    let (verdict, _) = send6(&mut gw, CLIENT6, &q);
    assert_eq!(verdict, Verdict::Drop(DropReason::SourceNotInCluster));
    // No ranges at all: everyone (as for IPv4).
    let mut gw = gateway6(100, &[], true);
    assert!(matches!(
        send6(&mut gw, OUTSIDER6, &q).0,
        Verdict::Respond { .. }
    ));
}

#[test]
fn ipv6_rate_limit_tc_and_servfail_before_the_first_sync() {
    let mut gw = gateway6(10, DUAL_CIDRS, true);
    let q = query("web.default.svc.cluster.local", Rtype::AAAA, None);
    let answered = (0..30)
        .filter(|_| matches!(send6(&mut gw, CLIENT6, &q).0, Verdict::Respond { .. }))
        .count();
    assert_eq!(answered, 10, "answered at the limit only");
    assert_eq!(gw.counters().drops_of(DropReason::RateLimited), 20);

    // The EDNS rules hold as over IPv4: a 512-octet answer without EDNS
    // (the 200-endpoint Service truncates), the client's size with it.
    let mut gw = gateway(1000);
    gw.pipeline = gw.pipeline.with_dns(DnsResponder::new(
        vec![IpAddr::V6(DNS_ADDRESS6)],
        Vec::new(),
        Arc::new(DnsCounters::default()),
    ));
    let (verdict, frame) = send6(
        &mut gw,
        CLIENT6,
        &query("big.shop.svc.cluster.local", Rtype::A, None),
    );
    assert!(matches!(verdict, Verdict::Respond { .. }), "{verdict:?}");
    let p = etherparse::SlicedPacket::from_ethernet(&frame).expect("answer parses");
    let Some(etherparse::TransportSlice::Udp(udp)) = &p.transport else {
        panic!("udp")
    };
    let message = Message::from_octets(udp.payload()).expect("parses");
    assert!(message.header().tc(), "TC set");
    assert_eq!(message.header_counts().ancount(), 0);
    assert!(udp.payload().len() <= 512);

    let mut gw = gateway6(100, DUAL_CIDRS, false);
    let (verdict, frame) = send6(&mut gw, CLIENT6, &q);
    assert!(matches!(verdict, Verdict::Respond { .. }), "{verdict:?}");
    let p = etherparse::SlicedPacket::from_ethernet(&frame).expect("answer parses");
    let Some(etherparse::TransportSlice::Udp(udp)) = &p.transport else {
        panic!("udp")
    };
    assert_eq!(rcode_of(udp.payload()), Rcode::SERVFAIL);
}

#[test]
fn a_worker_hands_ipv6_queries_to_the_forwarding_thread() {
    use std::os::unix::net::UnixDatagram;
    let (workers_end, thread_end) = UnixDatagram::pair().expect("socket pair");
    let mut gw = gateway6(100, DUAL_CIDRS, true);
    let dns = DnsResponder::new(
        vec![IpAddr::V6(DNS_ADDRESS6)],
        vec!["2001:2::/64".parse().expect("cidr")],
        Arc::new(DnsCounters::default()),
    )
    .with_forwarding(forward::ForwardSender::new(workers_end).expect("sender"));
    gw.pipeline = gw.pipeline.with_dns(dns);
    let q = query("www.example.test", Rtype::AAAA, Some(1232));
    let (verdict, _) = send6(&mut gw, CLIENT6, &q);
    assert_eq!(verdict, Verdict::HandedOff);
    let mut datagram = [0u8; 2048];
    thread_end.set_nonblocking(true).expect("non-blocking");
    let n = thread_end.recv(&mut datagram).expect("one hand-off");
    assert_eq!(n, forward::HANDOFF_PREFIX + q.len());
    let handoff = forward::Handoff::parse(&datagram[..n]).expect("a hand-off");
    assert_eq!(handoff.client, SocketAddr::new(CLIENT6.into(), 40000));
    assert_eq!(handoff.server, IpAddr::V6(DNS_ADDRESS6));
    assert_eq!(handoff.query, &q[..]);
    assert_eq!(handoff.question_end, 12 + 18 + 4);
}

#[test]
fn an_ipv6_query_behind_an_extension_header_gets_a_bare_answer() {
    let q = query("web.default.svc.cluster.local", Rtype::AAAA, None);
    let (_, plain) = send6(&mut gateway6(100, DUAL_CIDRS, true), CLIENT6, &q);
    // The same query with a Hop-by-Hop header (PadN only) in front of
    // UDP: the answer is the same frame, with no extension header.
    let mut frame = Vec::new();
    etherparse::PacketBuilder::ethernet2(harness::mac::CLIENT, harness::mac::GW_CLIENT_SIDE)
        .ipv6(CLIENT6.octets(), DNS_ADDRESS6.octets(), 64)
        .udp(40000, PORT)
        .write(&mut frame, &q)
        .expect("UDP frame builds");
    let payload_len = u16::from_be_bytes([frame[18], frame[19]]) + 8;
    frame[18..20].copy_from_slice(&payload_len.to_be_bytes());
    frame[20] = 0; // Hop-by-Hop next
    frame.splice(54..54, [17, 0, 1, 4, 0, 0, 0, 0]);
    let len = frame.len();
    frame.resize(2048, 0);
    let mut gw = gateway6(100, DUAL_CIDRS, true);
    let verdict = gw.process(&mut frame, len, CLIENT_PORT);
    let Verdict::Respond { len, .. } = verdict else {
        panic!("answered: {verdict:?}")
    };
    assert_eq!(&frame[..len], &plain[..]);
}

#[test]
fn ipv6_garbage_to_port_53_is_counted_never_a_panic() {
    let mut gw = gateway6(1000, DUAL_CIDRS, true);
    for len in 0..64 {
        let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        let (verdict, _) = send6(&mut gw, CLIENT6, &junk);
        assert!(
            matches!(verdict, Verdict::Respond { .. } | Verdict::Drop(_)),
            "defined verdict for {len} octets: {verdict:?}"
        );
    }
}
