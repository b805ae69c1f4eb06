//! The Kubernetes source (real kube client, watcher and reflector)
//! against a fake API server that speaks the real wire protocol on
//! 127.0.0.1: initial sync, endpoint changes, deletions, relists after
//! 410 Gone and after an outage, dropped watches, the
//! service-proxy-name rule, invalid objects and coalescing of bursts.
//!
//! Addresses: ClusterIPs from 198.18.100.0/24 (and 2001:2:0:ff::/112),
//! Pods from 198.18.3.0/24 (and 2001:2:0:3::/64).

#[path = "fake_apiserver/mod.rs"]
mod fake_apiserver;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cipgw_config::settings::ServiceCidrs;
use cipgw_config::{IpFamily, IpFamilyPolicy, ServiceTable};
use cipgw_control::kube_source::{KubeSourceConfig, SERVICE_PROXY_NAME_LABEL};
use cipgw_control::source::{channel, Receiver, SourceEvent};
use cipgw_control::{spawn_kube_source, SourceHandle};
use fake_apiserver::{FakeApiServer, Resource};
use serde_json::{json, Value};

/// Generous bounds for things that normally take milliseconds; the
/// outage tests wait through kube-runtime's backoff (800 ms doubling).
const SOON: Duration = Duration::from_secs(5);
const AFTER_BACKOFF: Duration = Duration::from_secs(40);

/// A short sync period keeps the tests quick; the burst test uses 1 s.
const PERIOD: Duration = Duration::from_millis(100);

fn service(name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": "default", "name": name},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip,
            "clusterIPs": [ip],
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
        },
    })
}

fn labelled(mut service: Value, proxy: &str) -> Value {
    service["metadata"]["labels"] = json!({ SERVICE_PROXY_NAME_LABEL: proxy });
    service
}

/// An endpoint: address and conditions (ready, serving, terminating).
#[derive(Clone, Copy)]
struct Ep(&'static str, bool, bool, bool);

const fn ready(ip: &'static str) -> Ep {
    Ep(ip, true, true, false)
}

const fn terminating(ip: &'static str) -> Ep {
    Ep(ip, false, true, true)
}

fn slice(service: &str, suffix: &str, port: u16, endpoints: &[Ep]) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|Ep(ip, ready, serving, terminating)| {
            json!({
                "addresses": [ip],
                "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                "targetRef": {"kind": "Pod", "namespace": "default", "name": format!("pod-{ip}")},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "namespace": "default",
            "name": format!("{service}-{suffix}"),
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

/// `namespace/name` -> its endpoints as `ip:port` with a state suffix
/// for the ones not simply ready; headless and ExternalName Services
/// show as such.
fn summary(table: &ServiceTable) -> BTreeMap<String, Vec<String>> {
    table
        .services
        .iter()
        .map(|s| {
            let mut endpoints: Vec<String> = s
                .ports
                .iter()
                .flat_map(|p| &p.endpoints)
                .map(|e| {
                    let st = e.state;
                    let suffix = match (st.ready, st.serving, st.terminating) {
                        (true, true, false) => "",
                        (false, true, true) => " serving,terminating",
                        (false, false, true) => " terminating",
                        _ => " not-ready",
                    };
                    format!("{}:{}{suffix}", e.ip, e.port)
                })
                .collect();
            if s.cluster_ip.vips_of().is_none() {
                endpoints.insert(0, format!("{:?}", s.cluster_ip));
            }
            (s.name.to_string(), endpoints)
        })
        .collect()
}

fn expected(entries: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    entries
        .iter()
        .map(|(name, eps)| {
            (
                name.to_string(),
                eps.iter().map(|e| e.to_string()).collect(),
            )
        })
        .collect()
}

/// A running Kubernetes source and what it sent.
struct Source {
    rx: Receiver<SourceEvent>,
    handle: Option<SourceHandle>,
}

impl Source {
    fn start(server: &FakeApiServer, period: Duration) -> Self {
        Self::start_as(server, period, "cipgw")
    }

    fn start_as(server: &FakeApiServer, period: Duration, proxy_name: &str) -> Self {
        Self::start_with(server, period, proxy_name, &["198.18.100.0/24"])
    }

    fn start_with(
        server: &FakeApiServer,
        period: Duration,
        proxy_name: &str,
        service_cidrs: &[&str],
    ) -> Self {
        let cidrs: Vec<ipnet::IpNet> = service_cidrs
            .iter()
            .map(|c| c.parse().expect("valid CIDR"))
            .collect();
        let mut config = KubeSourceConfig::new(ServiceCidrs::new(&cidrs).expect("one per family"));
        config.kubeconfig = Some(server.kubeconfig().to_owned());
        config.min_sync_period = period;
        config.proxy_name = proxy_name.to_owned();
        let (tx, rx) = channel();
        let handle = spawn_kube_source(config, tx).expect("source starts");
        Self {
            rx,
            handle: Some(handle),
        }
    }

    fn next(&self, timeout: Duration) -> Option<SourceEvent> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Skips events until a table, and returns it with the events before.
    fn table(&self, timeout: Duration) -> (Arc<ServiceTable>, Vec<SourceEvent>) {
        let deadline = Instant::now() + timeout;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(SourceEvent::Table(table, _)) => return (table, before),
                Ok(other) => before.push(other),
                Err(_) => panic!("no table within {timeout:?}; saw {before:?}"),
            }
        }
    }

    /// Waits for a table whose summary is `want`; tables on the way are
    /// fine (a change may arrive as several).
    fn converges(
        &self,
        timeout: Duration,
        want: &BTreeMap<String, Vec<String>>,
    ) -> (Arc<ServiceTable>, Vec<SourceEvent>) {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(SourceEvent::Table(table, _)) if &summary(&table) == want => {
                    return (table, seen)
                }
                Ok(event) => seen.push(event),
                Err(_) => panic!("no table {want:?} within {timeout:?}; saw {seen:?}"),
            }
        }
    }

    /// Every event within `duration`.
    fn during(&self, duration: Duration) -> Vec<SourceEvent> {
        let end = Instant::now() + duration;
        let mut events = Vec::new();
        while let Ok(event) = self
            .rx
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            events.push(event);
        }
        events
    }

    /// The initial sync: a table matching `want`, then Synced.
    fn synced(&self, want: &BTreeMap<String, Vec<String>>) -> Arc<ServiceTable> {
        let (table, before) = self.table(SOON);
        assert!(
            before.is_empty(),
            "events before the first table: {before:?}"
        );
        assert_eq!(&summary(&table), want, "first table");
        assert_eq!(self.next(SOON), Some(SourceEvent::Synced));
        table
    }
}

/// A server with two Services (a: two ready Pods, b: one) and a headless
/// one, and a source synced with it.
fn two_services() -> (FakeApiServer, Source, BTreeMap<String, Vec<String>>) {
    let server = FakeApiServer::start();
    server.apply(service("a", "198.18.100.10"));
    server.apply(slice(
        "a",
        "1",
        8080,
        &[ready("198.18.3.1"), ready("198.18.3.2")],
    ));
    server.apply(service("b", "198.18.100.11"));
    server.apply(slice("b", "1", 8080, &[ready("198.18.3.3")]));
    server.apply(service("db", "None"));
    server.apply(slice("db", "1", 8080, &[ready("198.18.3.4")]));
    let want = expected(&[
        ("default/a", &["198.18.3.1:8080", "198.18.3.2:8080"]),
        ("default/b", &["198.18.3.3:8080"]),
        ("default/db", &["Headless", "198.18.3.4:8080"]),
    ]);
    let source = Source::start(&server, PERIOD);
    source.synced(&want);
    (server, source, want)
}

/// A dual-stack Service as kube-apiserver stores it (IPv6 primary) with
/// an IPv4 and an IPv6 EndpointSlice, and an IPv6 slice added later.
#[test]
fn dual_stack_service_and_ipv6_slices() {
    let server = FakeApiServer::start();
    let mut web = service("web", "2001:2:0:ff::10");
    web["spec"]["clusterIPs"] = json!(["2001:2:0:ff::10", "198.18.100.10"]);
    web["spec"]["ipFamilies"] = json!(["IPv6", "IPv4"]);
    web["spec"]["ipFamilyPolicy"] = json!("RequireDualStack");
    server.apply(web);
    server.apply(slice("web", "v4", 8080, &[ready("198.18.3.1")]));
    let mut v6 = slice("web", "v6", 8080, &[ready("2001:2:0:3::1")]);
    v6["addressType"] = json!("IPv6");
    server.apply(v6);
    let source = Source::start_with(
        &server,
        PERIOD,
        "cipgw",
        &["198.18.100.0/24", "2001:2:0:ff::/112"],
    );
    let table = source.synced(&expected(&[(
        "default/web",
        &["198.18.3.1:8080", "2001:2:0:3::1:8080"],
    )]));
    let web = &table.services[0];
    assert_eq!(
        web.cluster_ip
            .vips()
            .map(|ip| ip.to_string())
            .collect::<Vec<_>>(),
        ["2001:2:0:ff::10", "198.18.100.10"]
    );
    assert_eq!(web.ip_family_policy, IpFamilyPolicy::RequireDualStack);
    assert_eq!(web.ip_families, [IpFamily::V6, IpFamily::V4]);

    // A second IPv6 slice: its endpoints join the IPv6 ones.
    let mut more = slice("web", "v6b", 8080, &[terminating("2001:2:0:3::2")]);
    more["addressType"] = json!("IPv6");
    server.apply(more);
    source.converges(
        SOON,
        &expected(&[(
            "default/web",
            &[
                "198.18.3.1:8080",
                "2001:2:0:3::1:8080",
                "2001:2:0:3::2:8080 serving,terminating",
            ],
        )]),
    );
}

/// The same dual-stack Service on a gateway with only an IPv4 service
/// CIDR is an error naming it (RequireDualStack), and a PreferDualStack
/// one keeps its IPv4 VIP and IPv4 endpoints.
#[test]
fn require_dual_stack_on_an_ipv4_gateway_is_reported() {
    let server = FakeApiServer::start();
    for (name, policy) in [("need", "RequireDualStack"), ("like", "PreferDualStack")] {
        let mut svc = service(name, "198.18.100.10");
        svc["spec"]["clusterIPs"] = json!(["198.18.100.10", "2001:2:0:ff::10"]);
        if name == "like" {
            svc["spec"]["clusterIP"] = json!("198.18.100.11");
            svc["spec"]["clusterIPs"] = json!(["198.18.100.11", "2001:2:0:ff::11"]);
        }
        svc["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
        svc["spec"]["ipFamilyPolicy"] = json!(policy);
        server.apply(svc);
        let mut v6 = slice(name, "v6", 8080, &[ready("2001:2:0:3::1")]);
        v6["addressType"] = json!("IPv6");
        server.apply(v6);
        server.apply(slice(name, "v4", 8080, &[ready("198.18.3.1")]));
    }
    let source = Source::start(&server, PERIOD);
    let deadline = Instant::now() + SOON;
    let (mut table, mut error) = (None, None);
    while table.is_none() || error.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match source.rx.recv_timeout(left) {
            Ok(SourceEvent::Table(t, _)) => table = Some(t),
            Ok(SourceEvent::Invalid { error: e }) => error = Some(e),
            Ok(_) => {}
            Err(_) => panic!("no table and error within {SOON:?}: {table:?} {error:?}"),
        }
    }
    let (table, error) = (table.expect("seen"), error.expect("seen"));
    assert_eq!(
        error,
        "Service default/need: spec.ipFamilyPolicy: RequireDualStack, but the gateway's \
         service CIDRs (198.18.100.0/24) are of one family; give --service-cidr once per family"
    );
    assert_eq!(
        summary(&table),
        expected(&[("default/like", &["198.18.3.1:8080"])])
    );
    assert_eq!(
        table.services[0].cluster_ip.vips().collect::<Vec<_>>(),
        ["198.18.100.11".parse::<std::net::IpAddr>().expect("valid")],
        "PreferDualStack keeps the family the gateway has"
    );
}

#[test]
fn initial_sync_sends_one_complete_table_then_synced() {
    let (server, source, _) = two_services();
    assert_eq!(server.lists(Resource::Services), 1);
    assert_eq!(server.lists(Resource::EndpointSlices), 1);
    assert!(
        server.wait_for_open_watches(2, SOON),
        "both resources watched"
    );
    // Bookmarks flow, nothing changes: nothing is sent.
    let events = source.during(Duration::from_millis(1200));
    assert!(events.is_empty(), "unexpected: {events:?}");
}

#[test]
fn initial_sync_pages_through_large_lists() {
    // More than the watcher's page size (500) of each resource.
    let server = FakeApiServer::start();
    let n = 1100;
    for i in 0..n {
        let name = format!("s{i}");
        let ip = format!("198.18.{}.{}", 100 + i / 250, 1 + i % 250);
        server.apply(service(&name, &ip));
        server.apply(slice(&name, "1", 8080, &[ready("198.18.3.1")]));
    }
    let mut config = KubeSourceConfig::new(ServiceCidrs::v4_only(
        "198.18.96.0/20".parse().expect("valid"),
    ));
    config.kubeconfig = Some(server.kubeconfig().to_owned());
    config.min_sync_period = PERIOD;
    let (tx, rx) = channel();
    let _handle = spawn_kube_source(config, tx).expect("starts");
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(SourceEvent::Table(table, _)) => {
            assert_eq!(table.services.len(), n as usize);
            assert!(table
                .services
                .iter()
                .all(|s| s.ports[0].endpoints.len() == 1));
        }
        other => panic!("expected the table, got {other:?}"),
    }
    assert_eq!(
        rx.recv_timeout(SOON).ok(),
        Some(SourceEvent::Synced),
        "then Synced"
    );
    assert_eq!(server.lists(Resource::Services), 1, "one list, three pages");
}

#[test]
fn endpoints_added_removed_and_terminating() {
    let (server, source, _) = two_services();
    let b = |eps: &[&str]| {
        let mut want = expected(&[
            ("default/a", &["198.18.3.1:8080", "198.18.3.2:8080"]),
            ("default/db", &["Headless", "198.18.3.4:8080"]),
        ]);
        want.insert(
            "default/b".into(),
            eps.iter().map(|e| e.to_string()).collect(),
        );
        want
    };

    // Added.
    server.apply(slice(
        "b",
        "1",
        8080,
        &[ready("198.18.3.3"), ready("198.18.3.5")],
    ));
    source.converges(SOON, &b(&["198.18.3.3:8080", "198.18.3.5:8080"]));

    // Turned terminating (still serving), as during a Pod's graceful stop.
    server.apply(slice(
        "b",
        "1",
        8080,
        &[terminating("198.18.3.3"), ready("198.18.3.5")],
    ));
    source.converges(
        SOON,
        &b(&["198.18.3.3:8080 serving,terminating", "198.18.3.5:8080"]),
    );

    // A second slice of the same Service adds to the first.
    server.apply(slice("b", "2", 8080, &[ready("198.18.3.6")]));
    source.converges(
        SOON,
        &b(&[
            "198.18.3.3:8080 serving,terminating",
            "198.18.3.5:8080",
            "198.18.3.6:8080",
        ]),
    );

    // Removed.
    server.apply(slice("b", "1", 8080, &[ready("198.18.3.5")]));
    server.delete("EndpointSlice", "default", "b-2");
    source.converges(SOON, &b(&["198.18.3.5:8080"]));

    // Every slice gone: the Service stays, without endpoints.
    server.delete("EndpointSlice", "default", "b-1");
    source.converges(SOON, &b(&[]));
}

#[test]
fn service_deleted() {
    let (server, source, _) = two_services();
    server.delete("Service", "default", "a");
    let want = expected(&[
        ("default/b", &["198.18.3.3:8080"]),
        ("default/db", &["Headless", "198.18.3.4:8080"]),
    ]);
    let (_, seen) = source.converges(SOON, &want);
    assert!(
        seen.iter().all(|e| matches!(e, SourceEvent::Table(..))),
        "{seen:?}"
    );
    // Its slice going too changes nothing the table shows: no table.
    server.delete("EndpointSlice", "default", "a-1");
    let events = source.during(Duration::from_millis(500));
    assert!(events.is_empty(), "unexpected: {events:?}");
}

#[test]
fn object_deleted_while_the_watch_was_down_is_gone_after_the_relist() {
    let (server, source, _) = two_services();
    server.stop();
    // Meanwhile, in the cluster: b is deleted, a gets a Pod, and the
    // history is compacted, so the watch cannot resume: 410, relist.
    server.delete("Service", "default", "b");
    server.delete("EndpointSlice", "default", "b-1");
    server.apply(slice(
        "a",
        "1",
        8080,
        &[
            ready("198.18.3.1"),
            ready("198.18.3.2"),
            ready("198.18.3.7"),
        ],
    ));
    server.compact();
    std::thread::sleep(Duration::from_secs(1));
    server.restart();
    let want = expected(&[
        (
            "default/a",
            &["198.18.3.1:8080", "198.18.3.2:8080", "198.18.3.7:8080"],
        ),
        ("default/db", &["Headless", "198.18.3.4:8080"]),
    ]);
    source.converges(AFTER_BACKOFF, &want);
    // (The source's reachability probes list too, hence at least.)
    assert!(server.lists(Resource::Services) >= 2, "relisted");
    assert!(server.lists(Resource::EndpointSlices) >= 2, "relisted");
}

#[test]
fn gone_during_a_watch_forces_a_relist_and_the_watch_goes_on() {
    let (server, source, want) = two_services();
    assert!(server.wait_for_open_watches(2, SOON));
    server.expire_watches();
    let deadline = Instant::now() + AFTER_BACKOFF;
    while server.lists(Resource::Services) < 2 || server.lists(Resource::EndpointSlices) < 2 {
        assert!(Instant::now() < deadline, "no relist after 410");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The relist found nothing new: no table, no alarm.
    let events = source.during(Duration::from_millis(500));
    assert!(events.is_empty(), "unexpected: {events:?}");
    // And the new watch carries changes.
    server.apply(slice("b", "1", 8080, &[ready("198.18.3.9")]));
    let mut want = want;
    want.insert("default/b".into(), vec!["198.18.3.9:8080".into()]);
    source.converges(AFTER_BACKOFF, &want);
}

#[test]
fn dropped_watches_resume_without_a_relist() {
    let (server, source, want) = two_services();
    assert!(server.wait_for_open_watches(2, SOON));
    let watches = server.watches(Resource::EndpointSlices);
    server.drop_watches();
    server.apply(slice("a", "1", 8080, &[ready("198.18.3.1")]));
    let mut want = want;
    want.insert("default/a".into(), vec!["198.18.3.1:8080".into()]);
    source.converges(AFTER_BACKOFF, &want);
    assert!(
        server.watches(Resource::EndpointSlices) > watches,
        "re-watched"
    );
    assert_eq!(
        server.lists(Resource::EndpointSlices),
        1,
        "resumed from its resourceVersion, no relist"
    );
}

#[test]
fn api_server_down_keeps_the_table_then_converges() {
    let (server, source, _) = two_services();
    server.stop();
    let down = Instant::now();
    // Reported once; nothing else while down.
    let events = source.during(Duration::from_secs(6));
    assert_eq!(events.len(), 1, "exactly one event while down: {events:?}");
    match &events[0] {
        SourceEvent::Disconnected { error } => eprintln!("disconnected: {error}"),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    // The cluster changed meanwhile.
    server.apply(service("c", "198.18.100.12"));
    server.apply(slice("c", "1", 8080, &[ready("198.18.3.8")]));
    server.restart();
    let back = Instant::now();
    let want = expected(&[
        ("default/a", &["198.18.3.1:8080", "198.18.3.2:8080"]),
        ("default/b", &["198.18.3.3:8080"]),
        ("default/c", &["198.18.3.8:8080"]),
        ("default/db", &["Headless", "198.18.3.4:8080"]),
    ]);
    let (_, seen) = source.converges(AFTER_BACKOFF, &want);
    eprintln!(
        "down {:?}; converged {:?} after the restart; {} events before",
        back - down,
        back.elapsed(),
        seen.len()
    );
    // Reconnected comes once, with or before the new table.
    let mut rest = seen;
    rest.extend(source.during(Duration::from_secs(3)));
    assert_eq!(
        rest.iter()
            .filter(|e| matches!(e, SourceEvent::Reconnected))
            .count(),
        1,
        "{rest:?}"
    );
    assert!(
        rest.iter()
            .all(|e| matches!(e, SourceEvent::Reconnected | SourceEvent::Table(..))),
        "{rest:?}"
    );
}

#[test]
fn service_proxy_name_label_picks_the_services_served() {
    let server = FakeApiServer::start();
    server.apply(service("plain", "198.18.100.20"));
    server.apply(labelled(service("ours", "198.18.100.21"), "cipgw"));
    server.apply(labelled(service("theirs", "198.18.100.22"), "other-proxy"));
    let source = Source::start(&server, PERIOD);
    source.synced(&expected(&[("default/ours", &[]), ("default/plain", &[])]));
    let other = Source::start_as(&server, PERIOD, "other-proxy");
    other.synced(&expected(&[
        ("default/plain", &[]),
        ("default/theirs", &[]),
    ]));

    // Relabelled: handed over from one proxy to the other. The other
    // served it already (unlabelled): its table does not change.
    server.apply(labelled(service("plain", "198.18.100.20"), "other-proxy"));
    source.converges(SOON, &expected(&[("default/ours", &[])]));
    let events = other.during(Duration::from_millis(500));
    assert!(events.is_empty(), "no change for the other: {events:?}");

    // Labelled for nobody in particular: served by neither.
    server.apply(labelled(service("theirs", "198.18.100.22"), "nobody"));
    other.converges(SOON, &expected(&[("default/plain", &[])]));
}

#[test]
fn an_invalid_object_is_reported_and_the_rest_still_served() {
    let (server, source, want) = two_services();
    server.apply(service("bad", "198.19.0.1"));
    let error = match source.next(SOON) {
        Some(SourceEvent::Invalid { error }) => error,
        other => panic!("expected Invalid, got {other:?}"),
    };
    assert_eq!(
        error,
        "Service default/bad: spec.clusterIP: 198.19.0.1 is outside the service CIDR 198.18.100.0/24"
    );
    // Other changes are still served; the problem is not repeated.
    server.apply(slice("b", "1", 8080, &[ready("198.18.3.9")]));
    let mut want = want;
    want.insert("default/b".into(), vec!["198.18.3.9:8080".into()]);
    let (_, seen) = source.converges(SOON, &want);
    assert!(seen.is_empty(), "{seen:?}");
    // Fixed: served, and the all-clear.
    server.apply(service("bad", "198.18.100.30"));
    want.insert("default/bad".into(), vec![]);
    source.converges(SOON, &want);
    assert_eq!(source.next(SOON), Some(SourceEvent::Valid));
}

#[test]
fn a_burst_of_changes_is_coalesced_and_ends_in_the_final_state() {
    let period = Duration::from_secs(1);
    let server = FakeApiServer::start();
    server.apply(service("a", "198.18.100.10"));
    server.apply(slice("a", "1", 8080, &[ready("198.18.3.1")]));
    let source = Source::start(&server, period);
    source.synced(&expected(&[("default/a", &["198.18.3.1:8080"])]));
    std::thread::sleep(period);

    let started = Instant::now();
    let changes = 500u16;
    // Spread over about 1.5 periods, so that the period caps the wait.
    for i in 1..=changes {
        server.apply(slice("a", "1", 8080 + i, &[ready("198.18.3.1")]));
        std::thread::sleep(Duration::from_millis(3));
    }
    let burst = started.elapsed();
    let events = source.during(2 * period + Duration::from_millis(500));
    let ports: Vec<u16> = events
        .iter()
        .map(|e| match e {
            SourceEvent::Table(table, _) => table.services[0].ports[0].endpoints[0].port,
            other => panic!("only tables expected, got {other:?}"),
        })
        .collect();
    eprintln!("{changes} changes in {burst:?} gave tables with ports {ports:?}");
    assert_eq!(
        ports.last(),
        Some(&(8080 + changes)),
        "ends in the final state"
    );
    let most = burst.as_millis() / period.as_millis() + 2;
    assert!(ports.len() as u128 <= most, "coalesced: {ports:?}");
}

#[test]
fn dropping_the_handle_stops_promptly_even_while_disconnected() {
    let (server, mut source, _) = two_services();
    server.stop();
    assert!(matches!(
        source.next(Duration::from_secs(10)),
        Some(SourceEvent::Disconnected { .. })
    ));
    let handle = source.handle.take().expect("running");
    let started = Instant::now();
    drop(handle);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn forbidden_is_reported_once_and_nothing_is_served_until_allowed() {
    let server = FakeApiServer::start();
    server.apply(service("a", "198.18.100.10"));
    server.apply(slice("a", "1", 8080, &[ready("198.18.3.1")]));
    server.forbid(Resource::EndpointSlices, true);
    let source = Source::start(&server, PERIOD);
    match source.next(SOON) {
        Some(SourceEvent::Disconnected { error }) => {
            assert!(error.starts_with("endpointslices: "), "{error}");
            assert!(error.contains("forbidden"), "{error}");
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
    // The server answers, but not the list the source needs: no
    // Reconnected, and no table from Services alone.
    let events = source.during(Duration::from_secs(3));
    assert!(events.is_empty(), "unexpected: {events:?}");

    server.forbid(Resource::EndpointSlices, false);
    let (_, seen) = source.converges(
        AFTER_BACKOFF,
        &expected(&[("default/a", &["198.18.3.1:8080"])]),
    );
    assert!(
        seen.iter().all(|e| matches!(e, SourceEvent::Reconnected)),
        "{seen:?}"
    );
    let after = source.during(Duration::from_secs(2));
    assert!(after.contains(&SourceEvent::Synced), "{after:?}");
}
