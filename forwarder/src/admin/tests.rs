//! The admin endpoint end to end: requests through [`handle`] against a
//! state with a small model and a few flows, and the HTTP server and
//! client over loopback.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::time::Duration;

use cipgw_config::{
    ClusterIp, Endpoint, EndpointState, Protocol, Service, ServiceKind, ServiceName, ServicePort,
    ServiceTable, TargetPort,
};
use serde::Deserialize;

use super::server::JSON;
use super::*;
use crate::conntrack::FlowKey;
use crate::counters::DropReason;
use crate::metrics::exposition;
use crate::table::CompiledTable;

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 10);
const DNS_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 53);

fn endpoint(last: u8, port: u16, state: EndpointState) -> Endpoint {
    Endpoint {
        ip: Ipv4Addr::new(198, 18, 2, last).into(),
        port,
        state,
        pod: Some(format!("pod{}", last - 10)),
        hostname: None,
    }
}

fn model() -> ServiceTable {
    let terminating = EndpointState {
        ready: false,
        serving: true,
        terminating: true,
    };
    ServiceTable {
        services: vec![
            Service {
                name: ServiceName::new("default", "dns"),
                kind: ServiceKind::ClusterIp,
                cluster_ip: ClusterIp::single(std::net::IpAddr::from(DNS_VIP)),
                ip_family_policy: cipgw_config::IpFamilyPolicy::SingleStack,
                ip_families: vec![cipgw_config::IpFamily::V4],
                session_affinity: None,
                lb_algorithm: Some(cipgw_config::LbAlgorithm::Maglev),
                external_name: None,
                publish_not_ready_addresses: false,
                ports: vec![ServicePort {
                    name: Some("dns".into()),
                    port: 53,
                    protocol: Protocol::Udp,
                    target_port: TargetPort::Number(5353),
                    endpoints: vec![endpoint(11, 5353, EndpointState::READY)],
                }],
            },
            Service {
                name: ServiceName::new("default", "echo"),
                kind: ServiceKind::ClusterIp,
                cluster_ip: ClusterIp::single(std::net::IpAddr::from(VIP)),
                ip_family_policy: cipgw_config::IpFamilyPolicy::SingleStack,
                ip_families: vec![cipgw_config::IpFamily::V4],
                session_affinity: None,
                lb_algorithm: None,
                external_name: None,
                publish_not_ready_addresses: false,
                ports: vec![ServicePort {
                    name: Some("http".into()),
                    port: 8080,
                    protocol: Protocol::Tcp,
                    target_port: TargetPort::Name("http".into()),
                    endpoints: vec![
                        endpoint(11, 5678, EndpointState::READY),
                        endpoint(12, 5678, terminating),
                    ],
                }],
            },
            Service {
                name: ServiceName::new("default", "headless"),
                kind: ServiceKind::ClusterIp,
                cluster_ip: ClusterIp::Headless,
                ip_family_policy: cipgw_config::IpFamilyPolicy::SingleStack,
                ip_families: vec![cipgw_config::IpFamily::V4],
                session_affinity: None,
                lb_algorithm: None,
                external_name: None,
                publish_not_ready_addresses: false,
                ports: vec![],
            },
        ],
    }
}

/// A state with the model above and `flows` TCP flows from
/// 198.18.0.2:40000+i to the echo VIP, alternating between the two
/// endpoints.
fn state(flows: u16) -> AdminState {
    state_with(model(), flows)
}

/// [`state`] over another model.
fn state_with(model: ServiceTable, flows: u16) -> AdminState {
    let table = TableHandle::new(CompiledTable::compile(Arc::new(model), 7));
    let ct = Arc::new(Conntrack::default());
    for i in 0..flows {
        let key = FlowKey {
            src: Ipv4Addr::new(198, 18, 0, 2),
            dst: VIP,
            src_port: 40000 + i,
            dst_port: 8080,
            protocol: Protocol::Tcp,
        };
        let backend = (Ipv4Addr::new(198, 18, 2, 11 + (i % 2) as u8), 5678);
        ct.insert(key, backend, 1, Default::default())
            .expect("insert");
    }
    AdminState::new(
        vec!["to-client".into(), "to-pods".into()],
        table,
        ct,
        Arc::new(AtomicBool::new(false)),
    )
}

fn get(state: &AdminState, url: &str) -> Reply {
    handle(state, "GET", url)
}

fn json<T: for<'de> Deserialize<'de>>(reply: Reply) -> T {
    assert_eq!(reply.status, 200, "{}", reply.body);
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.body))
}

#[test]
fn readyz_flips_with_the_flag() {
    let s = state(0);
    assert_eq!(get(&s, "/readyz").status, 503);
    assert_eq!(get(&s, "/healthz").status, 200);
    s.set_ready(true);
    assert_eq!(get(&s, "/readyz").status, 200);
    s.set_ready(false);
    assert_eq!(get(&s, "/readyz").status, 503);
    assert_eq!(get(&s, "/nope").status, 404);
    assert_eq!(handle(&s, "POST", "/metrics").status, 405);
}

#[test]
fn metrics_sum_workers_and_parse() {
    let s = state(3);
    for core in [0, 1] {
        let t = WorkerTelemetry::new(core);
        t.counters.rx_packets.add(100 + core as u64);
        t.counters.tx_packets.add(90);
        t.counters.count_drop(DropReason::MalformedIpv4);
        s.add_worker(t);
    }
    s.control()
        .record_sync::<(), &str>(Duration::from_millis(2), &Ok(()));
    let reply = get(&s, "/metrics");
    assert_eq!(reply.status, 200);
    assert!(reply
        .content_type
        .starts_with("application/openmetrics-text"));
    let exp = exposition::parse(&reply.body).unwrap_or_else(|e| panic!("{e}\n{}", reply.body));
    assert_eq!(exp.get("cipgw_rx_packets_total", &[]), Some(201.0));
    assert_eq!(exp.get("cipgw_tx_packets_total", &[]), Some(180.0));
    assert_eq!(
        exp.get("cipgw_worker_rx_packets_total", &[("worker", "1")]),
        Some(101.0)
    );
    assert_eq!(
        exp.get("cipgw_drops_total", &[("reason", "malformed_ipv4")]),
        Some(2.0)
    );
    assert_eq!(exp.get("cipgw_conntrack_flows", &[]), Some(3.0));
    assert_eq!(exp.get("cipgw_conntrack_entries", &[]), Some(6.0));
    assert_eq!(exp.get("cipgw_table_generation", &[]), Some(7.0));
    assert_eq!(exp.get("cipgw_table_vip_ports", &[]), Some(2.0));
    assert_eq!(exp.get("cipgw_ready", &[]), Some(0.0));
    assert_eq!(
        exp.get("cipgw_control_syncs_total", &[("result", "ok")]),
        Some(1.0)
    );
}

#[test]
fn status_reports_workers_table_and_control() {
    let s = state(2);
    let t = WorkerTelemetry::new(1);
    t.counters.rx_packets.add(5);
    let mut rec = t.latency_recorder();
    rec.record_batch(5, Duration::from_micros(2));
    rec.flush();
    s.add_worker(t);
    s.control().record_sync::<(), String>(
        Duration::from_millis(9),
        &Err("control file: Service default/x: bad port".into()),
    );
    let v: StatusView = json(get(&s, "/api/status"));
    assert_eq!(v.interfaces, vec!["to-client", "to-pods"]);
    assert_eq!(v.table.generation, 7);
    assert_eq!(v.table.services, 3);
    assert_eq!(v.table.forwarded_services, 2);
    assert_eq!(v.conntrack.flows, 2);
    assert_eq!(v.totals.rx_packets, 5);
    assert_eq!(v.workers.len(), 1);
    assert_eq!(v.workers[0].core, 1);
    assert_eq!(v.workers[0].batch_size.p50, 5);
    assert_eq!(v.totals.drops.len(), DropReason::COUNT);
    assert_eq!(
        v.control.last_error.map(|e| e.message).as_deref(),
        Some("control file: Service default/x: bad port")
    );
    assert_eq!(get(&s, "/api/status?x=1").status, 400);
}

#[test]
fn services_show_endpoints_states_and_active_flows() {
    let s = state(5);
    let v: ServicesView = json(get(&s, "/api/services"));
    assert!(!v.counted);
    assert_eq!(v.generation, 7);
    let names: Vec<&str> = v.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["dns", "echo", "headless"]);
    let echo = &v.services[1];
    assert_eq!(echo.vip, Some(VIP.into()));
    // The flows are handshakes (SYN_SENT): inactive, as ipvsadm counts
    // them; only ESTABLISHED is active.
    assert_eq!((echo.active_flows, echo.inactive_flows), (0, 5));
    assert_eq!(echo.packets, None);
    let port = &echo.ports[0];
    assert_eq!((port.protocol.as_str(), port.port), ("TCP", 8080));
    assert_eq!(port.target_port, "http");
    assert!(port.endpoints.iter().all(|e| e.active_flows == 0));
    let states: Vec<(&str, &str, u64)> = port
        .endpoints
        .iter()
        .map(|e| {
            (
                e.pod.as_deref().unwrap_or(""),
                e.state.as_str(),
                e.inactive_flows,
            )
        })
        .collect();
    assert_eq!(states, [("pod1", "ready", 3), ("pod2", "terminating", 2)]);
    assert_eq!(
        (port.lb_algorithm.as_str(), &port.maglev_fingerprint),
        ("random", &None)
    );
    let dns = &v.services[0].ports[0];
    assert_eq!(dns.lb_algorithm, "maglev", "the dns Service is annotated");
    assert!(
        dns.maglev_fingerprint
            .as_ref()
            .is_some_and(|f| f.len() == 16),
        "{dns:?}"
    );
    let headless = &v.services[2];
    assert_eq!((headless.vip, headless.cluster_ip.as_str()), (None, "None"));
    assert_eq!(v.services[0].active_flows, 0);
}

#[test]
fn services_list_every_cluster_ip_and_endpoints_of_both_families() {
    use std::net::{IpAddr, Ipv6Addr};
    let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 0xff, 0, 0, 0, 0x10));
    let pod6 = IpAddr::V6(Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 0x11));
    let mut dual = model();
    let echo = &mut dual.services[1];
    echo.cluster_ip =
        ClusterIp::Vips(cipgw_config::Vips::dual(VIP.into(), v6).expect("two families"));
    echo.ip_family_policy = cipgw_config::IpFamilyPolicy::PreferDualStack;
    echo.ip_families = vec![cipgw_config::IpFamily::V4, cipgw_config::IpFamily::V6];
    echo.ports[0].endpoints.push(Endpoint {
        ip: pod6,
        pod: Some("pod1".into()),
        ..endpoint(11, 5678, EndpointState::READY)
    });
    let s = state_with(dual, 4);
    let v: ServicesView = json(get(&s, "/api/services"));
    let echo = &v.services[1];
    assert_eq!(echo.vip, Some(VIP.into()), "the primary");
    assert_eq!(echo.cluster_ip, VIP.to_string());
    assert_eq!(echo.cluster_ips, [IpAddr::from(VIP), v6]);
    assert_eq!(echo.ip_families, ["IPv4", "IPv6"]);
    assert_eq!(echo.ip_family_policy, "PreferDualStack");
    // The IPv4 VIP's flows; the IPv6 endpoint is listed, with no flow
    // of its own (see the next test for flows of both families).
    assert_eq!((echo.active_flows, echo.inactive_flows), (0, 4));
    let eps: Vec<(String, u64)> = echo.ports[0]
        .endpoints
        .iter()
        .map(|e| {
            (
                std::net::SocketAddr::new(e.ip, e.port).to_string(),
                e.inactive_flows,
            )
        })
        .collect();
    assert_eq!(
        eps,
        [
            ("198.18.2.11:5678".to_owned(), 2),
            ("198.18.2.12:5678".to_owned(), 2),
            ("[2001:2:0:2::11]:5678".to_owned(), 0),
        ]
    );
    // The JSON a client reads: addresses as strings.
    let raw: serde_json::Value =
        serde_json::from_str(&get(&s, "/api/services").body).expect("JSON");
    assert_eq!(
        raw["services"][1]["cluster_ips"],
        serde_json::json!(["198.18.100.10", "2001:2:0:ff::10"])
    );
}

/// A dual-stack Service's port has each VIP's own flows, counters and
/// Maglev table in `vips`, beside their sums; an IPv6-only Maglev
/// Service has its IPv6 table's fingerprint.
#[test]
fn services_split_flows_counters_and_maglev_fingerprints_per_vip() {
    use std::net::{IpAddr, Ipv6Addr};
    let v6 = |s: &str| -> Ipv6Addr { s.parse().expect("literal") };
    let (vip6, dns6, only6) = (
        v6("2001:2:0:ff::10"),
        v6("2001:2:0:ff::53"),
        v6("2001:2:0:ff::60"),
    );
    let (pod6, dnspod6) = (v6("2001:2:0:2::11"), v6("2001:2:0:2::12"));
    let endpoint6 = |ip: Ipv6Addr, port: u16| Endpoint {
        ip: ip.into(),
        port,
        state: EndpointState::READY,
        pod: Some("pod6".into()),
        hostname: None,
    };
    let mut m = model();
    // dns: dual-stack Maglev; echo: dual-stack random.
    for (service, vip6, pod6) in [(0, dns6, dnspod6), (1, vip6, pod6)] {
        let s = &mut m.services[service];
        let vip4 = s.cluster_ip.primary().expect("an IPv4 VIP");
        s.cluster_ip =
            ClusterIp::Vips(cipgw_config::Vips::dual(vip4, vip6.into()).expect("two families"));
        s.ip_family_policy = cipgw_config::IpFamilyPolicy::RequireDualStack;
        s.ip_families = vec![cipgw_config::IpFamily::V4, cipgw_config::IpFamily::V6];
        let port = &mut s.ports[0];
        port.endpoints.push(endpoint6(pod6, port.endpoints[0].port));
    }
    // An IPv6-only Maglev Service.
    m.services.push(Service {
        name: ServiceName::new("default", "only6"),
        cluster_ip: ClusterIp::single(IpAddr::from(only6)),
        ip_family_policy: cipgw_config::IpFamilyPolicy::SingleStack,
        ip_families: vec![cipgw_config::IpFamily::V6],
        lb_algorithm: Some(cipgw_config::LbAlgorithm::Maglev),
        ports: vec![ServicePort {
            name: None,
            port: 80,
            protocol: Protocol::Tcp,
            target_port: TargetPort::Number(8080),
            endpoints: vec![endpoint6(pod6, 8080)],
        }],
        ..m.services[1].clone()
    });
    // 4 IPv4 flows to echo (state_with) and 3 IPv6 ones.
    let s = state_with(m, 4);
    let ct6 = Arc::new(Conntrack::<Ipv6Addr>::default());
    for i in 0..3 {
        let key = FlowKey {
            src: v6("2001:2::2"),
            dst: vip6,
            src_port: 40000 + i,
            dst_port: 8080,
            protocol: Protocol::Tcp,
        };
        ct6.insert(key, (pod6, 5678), 1, Default::default())
            .expect("insert");
    }
    s.set_conntrack6(ct6);
    // Counters: 10 packets through the IPv4 VIP, 7 through the IPv6 one.
    let stats = Arc::new(ServiceStats::new());
    let w = stats.add_worker();
    let model = Arc::clone(s.table.current().model());
    let slots = stats.assign(&model);
    let pod4 = crate::table::Backend {
        ip: Ipv4Addr::new(198, 18, 2, 11),
        port: 5678,
    };
    let pod6_backend = crate::table::Backend {
        ip: pod6,
        port: 5678,
    };
    for (slot, packets) in [
        (slots.get(1, 0, pod4), 10),
        (slots.get(1, 0, pod6_backend), 7),
    ] {
        let c = w
            .get(slot.expect("echo's endpoints have slots"))
            .expect("counters");
        c.packets.add(packets);
        c.bytes.add(100 * packets);
        c.flows.add(packets / 3);
    }
    s.count_services(stats);

    let v: ServicesView = json(get(&s, "/api/services"));
    let echo = &v.services[1].ports[0];
    let per_vip: Vec<_> = echo
        .vips
        .iter()
        .map(|p| {
            (
                p.vip,
                p.active_flows,
                p.inactive_flows,
                p.packets,
                p.bytes,
                p.flows,
                p.maglev_fingerprint.clone(),
            )
        })
        .collect();
    assert_eq!(
        per_vip,
        [
            (IpAddr::from(VIP), 0, 4, Some(10), Some(1000), Some(3), None),
            (IpAddr::from(vip6), 0, 3, Some(7), Some(700), Some(2), None),
        ]
    );
    // The port's figures are still the sums.
    assert_eq!(
        (echo.inactive_flows, echo.packets, echo.bytes, echo.flows),
        (7, Some(17), Some(1700), Some(5))
    );
    assert_eq!(v.services[1].inactive_flows, 7);

    // Dual-stack Maglev: a table per VIP; the port's is the IPv4 one's.
    let dns = &v.services[0].ports[0];
    assert_eq!(dns.lb_algorithm, "maglev");
    let fingerprints: Vec<_> = dns
        .vips
        .iter()
        .map(|p| (p.vip, p.maglev_fingerprint.clone()))
        .collect();
    assert_eq!(fingerprints.len(), 2, "{dns:?}");
    assert_eq!(fingerprints[0].0, IpAddr::from(DNS_VIP));
    assert_eq!(fingerprints[1].0, IpAddr::from(dns6));
    for (vip, f) in &fingerprints {
        assert!(f.as_ref().is_some_and(|f| f.len() == 16), "{vip}: {dns:?}");
    }
    assert_ne!(
        fingerprints[0].1, fingerprints[1].1,
        "other endpoints, other tables"
    );
    assert_eq!(dns.maglev_fingerprint, fingerprints[0].1);

    // IPv6-only Maglev: its IPv6 table's fingerprint, also as the port's.
    let only6_port = &v.services[3].ports[0];
    assert_eq!(only6_port.lb_algorithm, "maglev", "{only6_port:?}");
    assert_eq!(only6_port.vips.len(), 1);
    assert_eq!(only6_port.vips[0].vip, IpAddr::from(only6));
    assert!(
        only6_port
            .maglev_fingerprint
            .as_ref()
            .is_some_and(|f| f.len() == 16),
        "{only6_port:?}"
    );
    assert_eq!(
        only6_port.maglev_fingerprint,
        only6_port.vips[0].maglev_fingerprint
    );
    assert_eq!(only6_port.vips[0].packets, Some(0), "counted, nothing yet");

    // The JSON a client reads has `vips`; one from a gateway without it
    // still parses, with none.
    let mut raw: serde_json::Value =
        serde_json::from_str(&get(&s, "/api/services").body).expect("JSON");
    let port = &mut raw["services"][1]["ports"][0];
    assert_eq!(port["vips"][1]["vip"], "2001:2:0:ff::10");
    assert_eq!(port["vips"][1]["inactive_flows"], 3);
    port.as_object_mut().expect("an object").remove("vips");
    let old: ServicesView = serde_json::from_value(raw).expect("a view without vips");
    assert!(old.services[1].ports[0].vips.is_empty());
    assert_eq!(old.services[1].ports[0].inactive_flows, 7);
}

#[test]
fn services_report_counters_once_counted() {
    let s = state(0);
    let stats = Arc::new(ServiceStats::new());
    let w = stats.add_worker();
    let model = Arc::clone(s.table.current().model());
    let slots = stats.assign(&model);
    let first = &model.services[1].ports[0].endpoints[0];
    let first = crate::table::Backend {
        ip: match first.ip {
            std::net::IpAddr::V4(ip) => ip,
            std::net::IpAddr::V6(ip) => panic!("{ip} is not IPv4"),
        },
        port: first.port,
    };
    let echo = slots
        .get(1, 0, first)
        .expect("echo:8080's first endpoint has a slot");
    let c = w.get(echo).expect("counters");
    c.packets.add(10);
    c.bytes.add(1000);
    c.flows.add(2);
    s.count_services(stats);
    let v: ServicesView = json(get(&s, "/api/services"));
    assert!(v.counted);
    assert_eq!(
        (
            v.services[1].packets,
            v.services[1].bytes,
            v.services[1].flows
        ),
        (Some(10), Some(1000), Some(2))
    );
    assert_eq!(v.services[0].packets, Some(0));
    assert_eq!(v.services[2].packets, None, "headless: nothing counted");
    // Per endpoint: all of it on the first, nothing on the others.
    let endpoints: Vec<_> = v.services[1].ports[0]
        .endpoints
        .iter()
        .map(|e| ((e.ip, e.port), e.packets, e.bytes, e.flows))
        .collect();
    assert!(endpoints.len() > 1, "{endpoints:?}");
    for (endpoint, packets, bytes, flows) in endpoints {
        let want = if endpoint == (first.ip.into(), first.port) {
            (Some(10), Some(1000), Some(2))
        } else {
            (Some(0), Some(0), Some(0))
        };
        assert_eq!((packets, bytes, flows), want, "{endpoint:?}");
    }
    let exp = exposition::parse(&get(&s, "/metrics").body).expect("parses");
    assert_eq!(
        exp.get(
            "cipgw_service_packets_total",
            &[
                ("namespace", "default"),
                ("service", "echo"),
                ("port", "8080")
            ]
        ),
        Some(10.0)
    );
}

#[test]
fn conntrack_merges_directions_filters_and_pages() {
    let s = state(25);
    let all: ConntrackView = json(get(&s, "/api/conntrack"));
    assert_eq!(all.total, 25);
    assert_eq!(all.flows.len(), 25);
    assert!(all.flows.iter().all(|f| f.forward && f.reply));
    assert!(all
        .flows
        .iter()
        .all(|f| f.vip == std::net::SocketAddr::from(SocketAddrV4::new(VIP, 8080))));
    assert_eq!(all.flows[0].state, "tcp_syn_sent");
    // Sorted by client port within the VIP.
    let ports: Vec<u16> = all.flows.iter().map(|f| f.client.port()).collect();
    let mut sorted = ports.clone();
    sorted.sort_unstable();
    assert_eq!(ports, sorted);

    let page: ConntrackView = json(get(&s, "/api/conntrack?limit=10&offset=20"));
    assert_eq!((page.total, page.flows.len(), page.offset), (25, 5, 20));
    assert_eq!(page.flows[0], all.flows[20]);

    let pod1: ConntrackView = json(get(&s, "/api/conntrack?backend=198.18.2.11"));
    assert_eq!(pod1.total, 13);
    assert!(pod1
        .flows
        .iter()
        .all(|f| f.backend.ip() == Ipv4Addr::new(198, 18, 2, 11)));
    let one: ConntrackView = json(get(&s, "/api/conntrack?client=198.18.0.2%3A40003"));
    assert_eq!(one.total, 1);
    assert_eq!(one.flows[0].client.port(), 40003);
    let none: ConntrackView = json(get(&s, "/api/conntrack?vip=198.18.100.53"));
    assert_eq!(none.total, 0);
    let udp: ConntrackView = json(get(&s, "/api/conntrack?protocol=udp"));
    assert_eq!(udp.total, 0);
    let vip_port: ConntrackView = json(get(&s, "/api/conntrack?vip=198.18.100.10:8080&limit=0"));
    assert_eq!((vip_port.total, vip_port.flows.len()), (25, 0));
}

#[test]
fn bad_conntrack_parameters_are_400() {
    let s = state(1);
    for bad in [
        "vip=nope",
        "client=198.18.0.2:99999",
        "backend=",
        "limit=10001",
        "limit=-1",
        "offset=x",
        "protocol=sctp",
        "color=red",
        "vip=%zz",
    ] {
        let r = get(&s, &format!("/api/conntrack?{bad}"));
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("json error");
        assert!(v["error"].is_string(), "{bad}: {}", r.body);
    }
    assert_eq!(get(&s, "/api/conntrack?limit=10000").status, 200);
}

#[test]
fn server_answers_over_http_and_stops() {
    let s = Arc::new(state(2));
    s.set_ready(true);
    let server =
        AdminServer::start("127.0.0.1:0".parse().expect("addr"), Arc::clone(&s)).expect("start");
    let addr = server.local_addr();
    let timeout = Duration::from_secs(5);
    let r = client::get(addr, "/readyz", timeout).expect("readyz");
    assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
    let r = client::get(addr, "/api/conntrack?limit=1", timeout).expect("conntrack");
    assert_eq!(r.content_type.as_deref(), Some(JSON));
    let v: ConntrackView = serde_json::from_str(&r.body).expect("json");
    assert_eq!((v.total, v.flows.len()), (2, 1));
    let r = client::get(addr, "/api/conntrack?limit=x", timeout).expect("400");
    assert_eq!(r.status, 400);
    let r = client::get(addr, "/metrics", timeout).expect("metrics");
    exposition::parse(&r.body).expect("metrics parse");
    drop(server);
    // tiny_http's accept thread closes the listener a moment after the
    // server is dropped; until then a connection may be reset.
    let deadline = std::time::Instant::now() + timeout;
    let refused = loop {
        match client::get(addr, "/healthz", timeout) {
            Err(e @ client::ClientError::Refused { .. }) => break e,
            other if std::time::Instant::now() > deadline => {
                panic!("expected a refusal after the server stopped, got {other:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    assert_eq!(
        refused.to_string(),
        format!("no cipgw admin endpoint at {addr}: connection refused")
    );
}

#[test]
fn binding_a_taken_address_fails_with_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let err = AdminServer::start(addr, Arc::new(state(0))).expect_err("taken");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[test]
fn metrics_format_follows_the_accept_header() {
    let s = state(1);
    let scrape = |accept| handle_request(&s, "GET", "/metrics", accept, Scope::Admin);
    // Prometheus 2.x's header prefers OpenMetrics; older scrapers and
    // client_golang-style clients ask for text/plain.
    let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,\
                      application/openmetrics-text;version=0.0.1;q=0.4,\
                      text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
    for accept in [None, Some("*/*"), Some(prometheus)] {
        let reply = scrape(accept);
        assert!(
            reply
                .content_type
                .starts_with("application/openmetrics-text"),
            "{accept:?}"
        );
        assert!(reply.body.ends_with("# EOF\n"));
        assert!(reply.body.contains("# TYPE cipgw_rx_packets counter\n"));
    }
    for accept in [
        "text/plain",
        "text/plain;version=0.0.4",
        "application/openmetrics-text;q=0.1,text/plain;q=0.9",
    ] {
        let reply = scrape(Some(accept));
        assert_eq!(
            reply.content_type,
            crate::metrics::CONTENT_TYPE_TEXT_004,
            "{accept}"
        );
        let body = &reply.body;
        assert!(
            !body.contains("# EOF") && !body.contains("# UNIT"),
            "{body}"
        );
        assert!(
            body.contains("# TYPE cipgw_rx_packets_total counter\n"),
            "{body}"
        );
        assert!(body.contains("# HELP cipgw_rx_packets_total "), "{body}");
        assert!(body.contains("# TYPE cipgw_build_info gauge\n"), "{body}");
        assert!(body.contains("\ncipgw_rx_packets_total "), "{body}");
        assert!(
            body.contains("# TYPE process_cpu_seconds_total counter\n"),
            "{body}"
        );
    }
}

#[test]
fn metrics_scope_serves_metrics_and_health_only() {
    let s = state(1);
    let on_metrics = |url| handle_request(&s, "GET", url, None, Scope::Metrics);
    assert_eq!(on_metrics("/metrics").status, 200);
    assert_eq!(on_metrics("/healthz").status, 200);
    for path in [
        "/api/status",
        "/api/services",
        "/api/conntrack",
        "/api/conntrack?vip=198.18.100.10",
    ] {
        assert_eq!(
            on_metrics(path).status,
            404,
            "{path} on the metrics address"
        );
        assert_eq!(get(&s, path).status, 200, "{path} on the admin address");
    }
}

#[test]
fn healthz_fails_once_a_worker_died() {
    let s = state(0);
    s.control_turned();
    assert_eq!(get(&s, "/healthz").status, 200);
    s.worker_died();
    let reply = get(&s, "/healthz");
    assert_eq!(reply.status, 503);
    assert!(reply.body.contains("worker"), "{}", reply.body);
}

#[test]
fn metrics_name_namespace_service_build_and_process() {
    let s = state(0);
    let exp = exposition::parse(&get(&s, "/metrics").body).expect("parses");
    let build = exp
        .get(
            "cipgw_build_info",
            &[
                ("version", crate::build_info::VERSION),
                ("git_hash", crate::build_info::GIT_HASH),
            ],
        )
        .expect("build info with version and git hash");
    assert_eq!(build, 1.0);
    assert!(exp
        .get("process_resident_memory_bytes", &[])
        .is_some_and(|v| v > 0.0));
    assert!(exp.get("process_open_fds", &[]).is_some_and(|v| v > 0.0));
    assert!(exp.get("cipgw_control_connected", &[]).is_some());
    assert!(exp
        .get("cipgw_network_programming_duration_seconds_count", &[])
        .is_some());
}

#[test]
fn conntrack_shows_expiry_once_the_clock_is_known() {
    let s = state(2);
    let without: ConntrackView = json(get(&s, "/api/conntrack"));
    assert!(without.flows.iter().all(|f| f.expires_seconds.is_none()));
    // The flows were last seen at second 1 of conntrack's clock, in
    // SYN_SENT (120 s); the clock started a second ago.
    s.set_conntrack_epoch(std::time::Instant::now() - Duration::from_secs(1));
    let with: ConntrackView = json(get(&s, "/api/conntrack"));
    for f in &with.flows {
        let left = f.expires_seconds.expect("an expiry");
        assert!((119..=120).contains(&left), "{f:?}");
    }
}

/// `DELETE /api/conntrack`: one flow by its 5-tuple or every flow of a
/// backend, only on the admin address, never without a selection.
#[test]
fn delete_removes_one_flow_or_a_backends_flows() {
    let s = state(6);
    let delete = |url: &str| handle(&s, "DELETE", url);
    let total = |s: &AdminState| json::<ConntrackView>(get(s, "/api/conntrack")).total;

    for unselective in [
        "/api/conntrack",
        "/api/conntrack?protocol=tcp",
        "/api/conntrack?client=198.18.0.2:40000&vip=198.18.100.10:8080",
        "/api/conntrack?protocol=tcp&client=198.18.0.2&vip=198.18.100.10:8080",
        "/api/conntrack?backend=198.18.2.11&limit=1",
        "/api/conntrack?backend=198.18.2.11&snat_port=61000",
        "/api/conntrack?backend=nope",
    ] {
        let r = delete(unselective);
        assert_eq!(r.status, 400, "{unselective}: {}", r.body);
    }
    assert_eq!(total(&s), 6, "nothing deleted by a refused request");
    let on_metrics = handle_request(
        &s,
        "DELETE",
        "/api/conntrack?backend=198.18.2.11",
        None,
        Scope::Metrics,
    );
    assert_eq!(
        on_metrics.status, 405,
        "the metrics address deletes nothing"
    );
    assert_eq!(delete("/api/services").status, 405);

    let one: ConntrackDeleted = json(delete(
        "/api/conntrack?protocol=tcp&client=198.18.0.2:40000&vip=198.18.100.10:8080",
    ));
    assert_eq!(one.deleted, 1);
    let left: ConntrackView = json(get(&s, "/api/conntrack?client=198.18.0.2:40000"));
    assert_eq!(left.total, 0);
    // Flows 1, 3, 5 go to 198.18.2.12; 2 and 4 (0 is gone) to .11.
    let backend: ConntrackDeleted = json(delete("/api/conntrack?backend=198.18.2.12:5678"));
    assert_eq!(backend.deleted, 3);
    assert_eq!(total(&s), 2);
    let again: ConntrackDeleted = json(delete("/api/conntrack?backend=198.18.2.12"));
    assert_eq!(again.deleted, 0);
    let status: StatusView = json(get(&s, "/api/status"));
    assert_eq!(status.conntrack.deleted, 4);
    let exp = exposition::parse(&get(&s, "/metrics").body).expect("metrics parse");
    assert_eq!(exp.get("cipgw_conntrack_deleted_total", &[]), Some(4.0));
}

/// IPv6 flows are listed beside IPv4 ones, filtered by `[IPv6]:port`,
/// and deleted.
#[test]
fn conntrack_lists_filters_and_deletes_ipv6_flows() {
    use std::net::{Ipv6Addr, SocketAddr};
    let state = state(1);
    let v6 = Arc::new(Conntrack::<Ipv6Addr>::default());
    let vip6: Ipv6Addr = "2001:2:0:ff::10".parse().expect("literal");
    let pod6: Ipv6Addr = "2001:2:0:2::11".parse().expect("literal");
    let client6: Ipv6Addr = "2001:2::2".parse().expect("literal");
    let key = FlowKey {
        src: client6,
        dst: vip6,
        src_port: 40000,
        dst_port: 80,
        protocol: Protocol::Tcp,
    };
    v6.insert(key, (pod6, 8080), 1, Default::default())
        .expect("insert");
    state.set_conntrack6(v6);

    let all: ConntrackView = json(get(&state, "/api/conntrack"));
    assert_eq!(all.total, 2, "one flow per family: {all:?}");
    assert!(all.flows[0].vip.is_ipv4(), "IPv4 first: {all:?}");
    let six = &all.flows[1];
    assert_eq!(six.vip, SocketAddr::new(vip6.into(), 80));
    assert_eq!(six.client, SocketAddr::new(client6.into(), 40000));
    assert_eq!(six.backend, SocketAddr::new(pod6.into(), 8080));

    let one: ConntrackView = json(get(&state, "/api/conntrack?vip=%5B2001:2:0:ff::10%5D:80"));
    assert_eq!(one.total, 1, "{one:?}");
    let none: ConntrackView = json(get(&state, "/api/conntrack?backend=2001:2:0:2::12"));
    assert_eq!(none.total, 0, "{none:?}");

    let deleted: ConntrackDeleted = json(handle(
        &state,
        "DELETE",
        "/api/conntrack?backend=%5B2001:2:0:2::11%5D:8080",
    ));
    assert_eq!(deleted.deleted, 1);
    let left: ConntrackView = json(get(&state, "/api/conntrack"));
    assert_eq!(left.total, 1, "the IPv4 flow stays: {left:?}");
}
