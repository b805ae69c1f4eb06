//! End-to-end tests of the Kubernetes source under a running gateway, in
//! network namespaces with the real binary (`cipgw run --kubernetes`)
//! against the fake API server of tests/fake_apiserver: the scenarios of
//! tests/live.rs, driven through Service and EndpointSlice updates
//! instead of the control file.
//!
//! The fake API server runs inside the lab's gateway namespace: its
//! listening socket is bound on 127.0.0.1 there (from a thread that
//! joined the namespace), which is the loopback the gateway's kube client
//! reaches. Its serving threads work from anywhere once it is bound; a
//! restart binds again, so it is done from the namespace too.
//!
//! Cases:
//! - service B changes 200 times through the API while TCP connections
//!   and UDP datagrams to service A run continuously: not one fails or
//!   goes unanswered;
//! - an EndpointSlice scales from 3 Pods to 1 and back: new connections
//!   follow within 1 s, a UDP flow to a removed Pod recovers on its next
//!   datagram, a TCP connection to a removed Pod gets a RST;
//! - an endpoint turned terminating (ready=false, serving=true,
//!   terminating=true) keeps its open connection and UDP flow while new
//!   ones avoid it; with no ready endpoint left it takes new ones (the
//!   Kubernetes >= 1.28 fallback); removed, its connection gets a RST;
//! - the API server goes away: the table stays and traffic flows; objects
//!   changed meanwhile (history compacted, so the watch must relist) are
//!   converged to when it is back;
//! - nothing is forwarded until the first full sync: the gateway started
//!   while the API server is down forwards nothing, `/readyz` says 503 and
//!   its DNS (`--dns-address`) answers SERVFAIL; once the server comes
//!   back and the sync is done, it is ready, forwards, and `dig` gets the
//!   Service's ClusterIP;
//! - an object the gateway cannot use is reported and left out while the
//!   rest keeps forwarding; fixed, it takes effect;
//! - network programming latency: slices written before the gateway
//!   started give no sample; an EndpointSlice change (stamped by the API
//!   server with its last-change-trigger-time) gives one sample of
//!   `cipgw_network_programming_duration_seconds`, positive and within
//!   the sync period's bound;
//! - a dual-stack Service (RequireDualStack, IPv4 and IPv6 ClusterIPs)
//!   with an IPv4 and an IPv6 EndpointSlice on a gateway with both service
//!   CIDRs in a dual-stack lab: each VIP is forwarded to its own family's
//!   Pods (both serve each), `dig` answers A and AAAA, and /api/services
//!   lists both ClusterIPs and the endpoints of both families;
//! - a gateway restarted while the API server is down keeps every
//!   adopted connection and UDP flow on its Pod (its VIPs stay steered)
//!   until its first sync, which then retires only the flows whose Pod
//!   left meanwhile.
//!
//! Rules as in tests/netns.rs: one test at a time, root (skip with a reason
//! otherwise, never when CI=true), RAII cleanup, 198.18.0.0/15 (and
//! 2001:2::/48 for addresses only named, never configured).

#[path = "fake_apiserver/mod.rs"]
mod fake_apiserver;
#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cipgw::admin::client;
use cipgw::lab::{self, NodeInfo, Topology, TopologyInfo};
use cipgw_config::settings::default_admin;
use fake_apiserver::FakeApiServer;
use serde_json::{json, Value};

use support::{
    connect_pod, connections_all_reach, connections_spread, open_flows, pod_name, request, udp_pod,
    vip_port, Flows, Lab, Port, DNS, HTTP, TABLE_APPLIED, TARGET_PORT, UDP_TARGET_PORT,
};

/// What the gateway logs once both resources are listed and the first
/// table is in.
const SYNCED: &str = "first full sync done";
/// What the gateway logs for every table it installs.
const APPLIED: &str = TABLE_APPLIED;
/// What the gateway logs when it loses the API server.
const UNREACHABLE: &str = "Kubernetes API unreachable";

/// Bound of the first sync with a reachable API server.
const SYNC_WITHIN: Duration = Duration::from_secs(20);
/// Bound of things that wait through the watchers' backoff after an
/// outage (250 ms doubling to 2 s; converging takes about 4 s here).
const AFTER_BACKOFF: Duration = Duration::from_secs(15);
/// How long a continuous-traffic thread may run at most.
const TRAFFIC_BUDGET: Duration = Duration::from_secs(120);

/// An endpoint's conditions in an EndpointSlice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    /// ready, serving, not terminating.
    Ready,
    /// Shutting down but still serving: ready=false, serving=true,
    /// terminating=true.
    Terminating,
}

/// A `v1 Service` in namespace `default` at `vip` with `ports`, as the
/// API server stores it (its endpoints come from EndpointSlices).
fn service(name: &str, vip: Ipv4Addr, ports: &[Port]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| {
            json!({"name": p.name, "port": p.port, "targetPort": p.target, "protocol": p.protocol})
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"namespace": "default", "name": name},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": vip.to_string(),
            "clusterIPs": [vip.to_string()],
            "selector": {"app": name},
            "ports": ports,
        },
    })
}

/// The EndpointSlice `<service>-1` of Service `service`: one endpoint
/// per lab node with its conditions, and the target of each of `ports`.
fn slice(service: &str, ports: &[Port], endpoints: &[(&NodeInfo, Condition)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| json!({"name": p.name, "port": p.target, "protocol": p.protocol}))
        .collect();
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(node, condition)| {
            let ready = *condition == Condition::Ready;
            json!({
                "addresses": [node.iface.addr.to_string()],
                "conditions": {"ready": ready, "serving": true, "terminating": !ready},
                "targetRef": {"kind": "Pod", "namespace": "default", "name": node.name},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "namespace": "default",
            "name": format!("{service}-1"),
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    })
}

/// A lab, the fake API server in its gateway namespace, and the gateway
/// once started. Fields drop in order: the lab (gateway first, then
/// echo servers and namespaces), then the API server.
struct KubeLab {
    lab: Lab,
    api: FakeApiServer,
}

impl KubeLab {
    /// A two-arm lab with TCP and UDP echo servers on `pods` Pods and an
    /// empty API server the gateway namespace can reach.
    fn new(pods: usize) -> KubeLab {
        Self::build(Topology::two_arm("kubelive").pods(pods))
    }

    fn build(topology: cipgw::lab::TopologyBuilder) -> KubeLab {
        let mut lab = Lab::build(topology);
        lab.tcp_echo(TARGET_PORT);
        lab.udp_echo(UDP_TARGET_PORT);
        let api = lab
            .topology()
            .gateway()
            .run(FakeApiServer::start)
            .unwrap_or_else(|e| panic!("starting the fake API server in the gateway: {e}"));
        KubeLab { lab, api }
    }

    fn info(&self) -> &TopologyInfo {
        self.lab.info()
    }

    fn pod(&self, i: usize) -> &NodeInfo {
        &self.info().pods[i]
    }

    /// Starts `cipgw run --kubernetes` against the fake API server.
    fn start_gateway(&mut self, extra: &[&str]) {
        let kubeconfig = self.api.kubeconfig().to_owned();
        self.lab.start_gateway_kubernetes(&kubeconfig, extra);
    }

    /// Brings the stopped API server back on its port, binding from the
    /// gateway namespace.
    fn restart_api(&self) {
        let api = &self.api;
        self.lab
            .topology()
            .gateway()
            .run(|| api.restart())
            .unwrap_or_else(|e| {
                self.lab
                    .fail(format_args!("restarting the API server: {e}"))
            });
    }

    /// The status `/readyz` of the gateway's admin endpoint (at its
    /// default address, in the gateway namespace) answers.
    #[track_caller]
    fn readyz(&self) -> u16 {
        self.lab
            .topology()
            .gateway()
            .run(|| client::get(default_admin(), "/readyz", Duration::from_secs(5)))
            .unwrap_or_else(|e| self.lab.fail(format_args!("entering the gateway: {e}")))
            .unwrap_or_else(|e| self.lab.fail(format_args!("GET /readyz: {e}")))
            .status
    }

    /// The gateway's metrics, from its admin address.
    #[track_caller]
    fn scrape(&self) -> cipgw::metrics::exposition::Exposition {
        let reply = self
            .lab
            .topology()
            .gateway()
            .run(|| client::get(default_admin(), "/metrics", Duration::from_secs(5)))
            .unwrap_or_else(|e| self.lab.fail(format_args!("entering the gateway: {e}")))
            .unwrap_or_else(|e| self.lab.fail(format_args!("GET /metrics: {e}")));
        assert_eq!(reply.status, 200, "{}", reply.body);
        cipgw::metrics::exposition::parse(&reply.body).unwrap_or_else(|e| {
            self.lab
                .fail(format_args!("/metrics does not parse: {e}\n{}", reply.body))
        })
    }

    /// Waits for the first full sync.
    #[track_caller]
    fn wait_synced(&self, within: Duration) -> Duration {
        self.lab.wait_log(SYNCED, 0, within)
    }

    /// Applies `objects` and waits until the gateway has installed a
    /// new table after them.
    #[track_caller]
    fn apply_and_wait(&self, objects: &[Value]) {
        let before = self.lab.log_count(APPLIED);
        for object in objects {
            self.api.apply(object.clone());
        }
        self.lab.wait_log(APPLIED, before, Duration::from_secs(5));
    }
}

/// A UDP request to `target` must go unanswered within 1 s.
#[track_caller]
fn assert_udp_not_answered(lab: &Lab, target: SocketAddrV4) {
    let outcome =
        lab.in_client(move || lab::udp_request(target, b"anyone?\n", Duration::from_secs(1)));
    if let Ok(reply) = outcome {
        lab.fail(format_args!(
            "UDP to {target} was answered ({reply:?}); it must not be forwarded"
        ));
    }
}

/// Continuous traffic to one Service from the client: a new TCP
/// connection, then a UDP request from a fresh socket (a new flow), again
/// and again until stopped, each answered by one of the Service's Pods.
/// Stopped (not checked) on drop.
struct Traffic {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(usize, usize), String>>>,
}

impl Traffic {
    fn start(lab: &Lab, vip: Ipv4Addr, pods: &[usize]) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let info = lab.info().clone();
        let allowed: BTreeSet<String> = pods.iter().map(|&i| info.pods[i].name.clone()).collect();
        let thread = {
            let stop = Arc::clone(&stop);
            lab.topology()
                .client()
                .spawn_thread("traffic", move || {
                    let (mut tcp_ok, mut udp_ok) = (0usize, 0usize);
                    let deadline = Instant::now() + TRAFFIC_BUDGET;
                    // Relaxed: a stop flag; nothing else is published through it.
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let pod = connect_pod(&info, vip_port(vip, &HTTP))
                            .map_err(|e| format!("after {tcp_ok} connections: {e}"))?;
                        if !allowed.contains(&pod) {
                            return Err(format!("{vip} answered by {pod}, not one of {allowed:?}"));
                        }
                        tcp_ok += 1;
                        let reply = lab::udp_request(
                            vip_port(vip, &DNS),
                            b"query\n",
                            Duration::from_secs(1),
                        )
                        .map_err(|e| format!("UDP after {udp_ok} answers: {e}"))?;
                        let pod = pod_name(&info, &reply)?;
                        if !allowed.contains(pod) {
                            return Err(format!("{vip} UDP answered by {pod}"));
                        }
                        udp_ok += 1;
                    }
                    Ok((tcp_ok, udp_ok))
                })
                .unwrap_or_else(|e| panic!("starting traffic to {vip}: {e}"))
        };
        Traffic {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the traffic; every exchange must have succeeded. Returns the
    /// TCP connections and UDP requests answered.
    #[track_caller]
    fn finish(mut self, lab: &Lab, what: &str) -> (usize, usize) {
        // Relaxed: see the traffic thread.
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("finished once");
        let counts = thread
            .join()
            .unwrap_or_else(|_| lab.fail("the traffic thread panicked"))
            .unwrap_or_else(|e| lab.fail(format_args!("traffic {what}: {e}")));
        assert!(
            counts.0 >= 20 && counts.1 >= 20,
            "too little traffic {what} to mean anything: {counts:?}"
        );
        counts
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        // Relaxed: see the traffic thread.
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn churn_on_service_b_through_the_api_never_disturbs_service_a() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    const CHANGES: usize = 200;
    let mut k = KubeLab::new(3);
    let vip_a = k.info().vip(10);
    let vip_b = k.info().vip(20);
    let (pod1, pod2, pod3) = (k.pod(0).clone(), k.pod(1).clone(), k.pod(2).clone());
    // Pods 1 and 2 serve A; B's version `i` moves over ports and Pods.
    let b_port = |i: usize| Port {
        name: "web",
        port: 9000 + (i % 50) as u16,
        target: TARGET_PORT,
        protocol: "TCP",
    };
    let b_version = |i: usize| -> [Value; 2] {
        let endpoints: &[(&NodeInfo, Condition)] = if i % 2 == 0 {
            &[(&pod3, Condition::Ready)]
        } else {
            &[(&pod2, Condition::Ready), (&pod3, Condition::Ready)]
        };
        [
            service("beta", vip_b, &[b_port(i)]),
            slice("beta", &[b_port(i)], endpoints),
        ]
    };
    k.api.apply(service("alpha", vip_a, &[HTTP, DNS]));
    k.api.apply(slice(
        "alpha",
        &[HTTP, DNS],
        &[(&pod1, Condition::Ready), (&pod2, Condition::Ready)],
    ));
    for object in b_version(0) {
        k.api.apply(object);
    }
    k.start_gateway(&["--min-sync-period", "100ms"]);
    k.wait_synced(SYNC_WITHIN);

    let traffic = Traffic::start(&k.lab, vip_a, &[0, 1]);
    let applied_before = k.lab.log_count(APPLIED);
    let started = Instant::now();
    for i in 1..=CHANGES {
        for object in b_version(i) {
            k.api.apply(object);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    // Let the last version land, with traffic still running.
    std::thread::sleep(Duration::from_millis(1500));
    let (tcp_ok, udp_ok) = traffic.finish(&k.lab, "to A during churn on B");
    let tables = k.lab.log_count(APPLIED) - applied_before;
    eprintln!(
        "{CHANGES} changes of B through the API in {:?} ({tables} tables installed); A served \
         {tcp_ok} TCP connections and {udp_ok} UDP requests without a failure",
        started.elapsed()
    );
    assert!(
        (2..=CHANGES).contains(&tables),
        "{tables} tables for {CHANGES} changes: they should be coalesced, not dropped"
    );
    // B's final version is live: port 9000 + 200 % 50 on Pod 3 only, and
    // the port before it is gone.
    let info = k.info().clone();
    let last = vip_port(vip_b, &b_port(CHANGES));
    let served = k.lab.tcp_sessions(last, 10, 1);
    assert_eq!(
        served.keys().collect::<Vec<_>>(),
        [&pod3.name],
        "B's last version has Pod 3 only"
    );
    k.lab
        .assert_not_forwarded(vip_port(vip_b, &b_port(CHANGES - 1)));
    let pod = k
        .lab
        .in_client(move || connect_pod(&info, vip_port(vip_a, &HTTP)))
        .unwrap_or_else(|e| k.lab.fail(e));
    assert!(pod == pod1.name || pod == pod2.name, "A answered by {pod}");
    k.lab.stop_gateway();
}

#[test]
fn scaling_a_slice_to_one_pod_and_back_moves_traffic_within_a_second() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut k = KubeLab::new(3);
    let vip = k.info().vip(10);
    let nodes: Vec<NodeInfo> = k.info().pods.clone();
    let three: Vec<(&NodeInfo, Condition)> = nodes.iter().map(|n| (n, Condition::Ready)).collect();
    let one = [(&nodes[0], Condition::Ready)];
    k.api.apply(service("echo", vip, &[HTTP, DNS]));
    k.api.apply(slice("echo", &[HTTP, DNS], &three));
    // The default --min-sync-period (1 s), as deployed.
    k.start_gateway(&[]);
    k.wait_synced(SYNC_WITHIN);
    let info = k.info().clone();
    let pod1 = nodes[0].name.clone();

    let Flows { mut tcp, udp } = open_flows(&k.lab, vip, 3);

    // Scale to one Pod: the table is in force within a second (the
    // default --min-sync-period), and from then on every new connection
    // goes to pod1.
    let applied = k.lab.log_count(TABLE_APPLIED);
    let written = Instant::now();
    k.api.apply(slice("echo", &[HTTP, DNS], &one));
    k.lab
        .wait_log(TABLE_APPLIED, applied, Duration::from_secs(5));
    let took = written.elapsed();
    eprintln!("slice scaled to one Pod: table in force within {took:?}");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    let followed = k.lab.in_client({
        let (info, pod1) = (info.clone(), pod1.clone());
        move || connections_all_reach(&info, vip_port(vip, &HTTP), &pod1, 10)
    });
    followed.unwrap_or_else(|e| k.lab.fail(e));

    // UDP flows to removed Pods recover on their next datagram.
    let udp_after = k.lab.in_client({
        let info = info.clone();
        move || {
            let mut answers = BTreeMap::new();
            for (was, u) in &udp {
                let now = udp_pod(&info, u).map_err(|e| format!("UDP flow of {was}: {e}"))?;
                answers.insert(was.clone(), now);
            }
            Ok::<_, String>(answers)
        }
    });
    let udp_after = udp_after.unwrap_or_else(|e| k.lab.fail(e));
    for (was, now) in &udp_after {
        if now != &pod1 {
            k.lab.fail(format_args!(
                "the UDP flow that was on {was} is now on {now}"
            ));
        }
    }

    // TCP connections to removed Pods get a RST; the one to pod1 lives on.
    for (pod, stream) in &mut tcp {
        let outcome = request(stream);
        if *pod == pod1 {
            let reply =
                outcome.unwrap_or_else(|e| k.lab.fail(format_args!("{pod}'s connection: {e}")));
            assert_eq!(pod_name(&info, &reply).ok(), Some(pod1.as_str()));
        } else {
            match outcome {
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
                other => k.lab.fail(format_args!(
                    "connection to removed {pod}: {other:?}; expected a reset"
                )),
            }
        }
    }

    // Back to three: in force within a second, and new connections
    // spread again.
    let applied = k.lab.log_count(TABLE_APPLIED);
    let written = Instant::now();
    k.api.apply(slice("echo", &[HTTP, DNS], &three));
    k.lab
        .wait_log(TABLE_APPLIED, applied, Duration::from_secs(5));
    let took = written.elapsed();
    eprintln!("slice scaled back to three Pods: table in force within {took:?}");
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    let spread = k.lab.in_client({
        let info = info.clone();
        move || connections_spread(&info, vip_port(vip, &HTTP), 3, 100)
    });
    let tries = spread.unwrap_or_else(|e| k.lab.fail(e));
    eprintln!("all three Pods reached within {tries} connections");
    k.lab.stop_gateway();
}

#[test]
fn an_endpoint_change_is_measured_from_its_trigger_time_to_the_live_table() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut k = KubeLab::new(2);
    let vip = k.info().vip(10);
    let nodes: Vec<NodeInfo> = k.info().pods.clone();
    k.api.apply(service("echo", vip, &[HTTP]));
    k.api
        .apply(slice("echo", &[HTTP], &[(&nodes[0], Condition::Ready)]));
    // The default --min-sync-period (1 s), as deployed.
    k.start_gateway(&[]);
    k.wait_synced(SYNC_WITHIN);
    let histogram = |exp: &cipgw::metrics::exposition::Exposition| {
        let series = |name: &str| {
            exp.get(name, &[])
                .unwrap_or_else(|| panic!("no {name} in /metrics"))
        };
        (
            series("cipgw_network_programming_duration_seconds_count"),
            series("cipgw_network_programming_duration_seconds_sum"),
        )
    };
    let (count, sum) = histogram(&k.scrape());
    assert_eq!(
        (count, sum),
        (0.0, 0.0),
        "a slice written before the gateway started is no sample"
    );

    // One slice written (the fake API server stamps it with the time of
    // the write): one sample, from that time to the table in force.
    let written = Instant::now();
    k.apply_and_wait(&[slice(
        "echo",
        &[HTTP],
        &[(&nodes[0], Condition::Ready), (&nodes[1], Condition::Ready)],
    )]);
    let bound = written.elapsed();
    let (count, sum) = histogram(&k.scrape());
    eprintln!("programming latency {sum} s (the log line came {bound:?} after the write)");
    assert_eq!(count, 1.0, "one slice change, one sample");
    assert!(
        sum > 0.0 && sum <= bound.as_secs_f64(),
        "programming took {sum} s, the table was in force {bound:?} after the write"
    );
    k.lab.stop_gateway();
}

#[test]
fn a_terminating_endpoint_keeps_its_flows_and_takes_no_new_ones() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut k = KubeLab::new(3);
    let vip = k.info().vip(10);
    let nodes: Vec<NodeInfo> = k.info().pods.clone();
    let ready = |i: usize| (&nodes[i], Condition::Ready);
    let terminating = |i: usize| (&nodes[i], Condition::Terminating);
    k.api.apply(service("echo", vip, &[HTTP, DNS]));
    k.api
        .apply(slice("echo", &[HTTP, DNS], &[ready(0), ready(1), ready(2)]));
    k.start_gateway(&["--min-sync-period", "100ms"]);
    k.wait_synced(SYNC_WITHIN);
    let info = k.info().clone();
    let pod3 = nodes[2].name.clone();

    let Flows { mut tcp, udp } = open_flows(&k.lab, vip, 3);

    // Pod 3 shuts down: still serving, no longer ready.
    k.apply_and_wait(&[slice(
        "echo",
        &[HTTP, DNS],
        &[ready(0), ready(1), terminating(2)],
    )]);
    let served = k.lab.tcp_sessions(vip_port(vip, &HTTP), 30, 1);
    assert!(
        !served.contains_key(&pod3) && served.len() == 2,
        "new connections must avoid the terminating {pod3}: {served:?}"
    );
    let served = k.lab.udp_exchanges(vip_port(vip, &DNS), 30);
    assert!(
        !served.contains_key(&pod3),
        "new UDP flows must avoid the terminating {pod3}: {served:?}"
    );
    // Every open flow goes on where it was, the terminating Pod's too.
    let check_flows = |tcp: &mut BTreeMap<String, TcpStream>, udp: &BTreeMap<String, UdpSocket>| {
        for (pod, stream) in tcp.iter_mut() {
            let reply = request(stream)
                .unwrap_or_else(|e| k.lab.fail(format_args!("{pod}'s open connection: {e}")));
            assert_eq!(pod_name(&info, &reply).ok(), Some(pod.as_str()));
        }
        let udp_now = k.lab.in_client(|| {
            udp.iter()
                .map(|(was, u)| Ok((was.clone(), udp_pod(&info, u)?)))
                .collect::<std::io::Result<Vec<(String, String)>>>()
        });
        for (was, now) in udp_now.unwrap_or_else(|e| k.lab.fail(format_args!("UDP flows: {e}"))) {
            assert_eq!(was, now, "the UDP flow on {was} moved to {now}");
        }
    };
    check_flows(&mut tcp, &udp);

    // No ready endpoint left: serving terminating ones take new flows
    // (Kubernetes >= 1.28).
    k.apply_and_wait(&[slice("echo", &[HTTP, DNS], &[terminating(2)])]);
    let served = k.lab.tcp_sessions(vip_port(vip, &HTTP), 10, 1);
    assert_eq!(
        served.keys().collect::<Vec<_>>(),
        [&pod3],
        "with no ready endpoint the serving terminating one takes new connections"
    );
    let mut pod3_stream = tcp.remove(&pod3).expect("a connection to pod 3");
    let reply = request(&mut pod3_stream)
        .unwrap_or_else(|e| k.lab.fail(format_args!("{pod3}'s open connection: {e}")));
    assert_eq!(pod_name(&info, &reply).ok(), Some(pod3.as_str()));

    // Gone for good: its open connection is reset, and the Service has no
    // endpoint left.
    k.apply_and_wait(&[slice("echo", &[HTTP, DNS], &[])]);
    match request(&mut pod3_stream) {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => k.lab.fail(format_args!(
            "connection to the removed {pod3}: {other:?}; expected a reset"
        )),
    }
    k.lab.assert_not_forwarded(vip_port(vip, &HTTP));
    k.lab.stop_gateway();
}

#[test]
fn api_server_outage_keeps_the_table_and_converges_when_it_is_back() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut k = KubeLab::new(3);
    let (vip_a, vip_b, vip_c) = (k.info().vip(10), k.info().vip(20), k.info().vip(30));
    let nodes: Vec<NodeInfo> = k.info().pods.clone();
    let ready = |i: usize| (&nodes[i], Condition::Ready);
    k.api.apply(service("alpha", vip_a, &[HTTP, DNS]));
    k.api.apply(slice(
        "alpha",
        &[HTTP, DNS],
        &[ready(0), ready(1), ready(2)],
    ));
    k.api.apply(service("beta", vip_b, &[HTTP]));
    k.api.apply(slice("beta", &[HTTP], &[ready(1)]));
    k.start_gateway(&["--min-sync-period", "100ms"]);
    k.wait_synced(SYNC_WITHIN);

    // The API server goes away while A carries traffic.
    let traffic = Traffic::start(&k.lab, vip_a, &[0, 1, 2]);
    std::thread::sleep(Duration::from_millis(500));
    k.api.stop();
    let noticed = k.lab.wait_log(UNREACHABLE, 0, Duration::from_secs(10));
    eprintln!("the gateway noticed the outage within {noticed:?}");
    assert_eq!(k.readyz(), 200, "ready on the last table during an outage");
    // Meanwhile: A scales to Pod 1, B is deleted, C appears; the history
    // is compacted, so the gateway's watches must relist.
    k.api.apply(slice("alpha", &[HTTP, DNS], &[ready(0)]));
    k.api.delete("Service", "default", "beta");
    k.api.delete("EndpointSlice", "default", "beta-1");
    k.api.apply(service("charlie", vip_c, &[HTTP]));
    k.api.apply(slice("charlie", &[HTTP], &[ready(2)]));
    k.api.compact();
    std::thread::sleep(Duration::from_secs(3));
    // The last table stays in force: B still forwards, C is unknown.
    let served = k.lab.tcp_sessions(vip_port(vip_b, &HTTP), 5, 1);
    assert_eq!(served.keys().collect::<Vec<_>>(), [&nodes[1].name]);
    k.lab.assert_not_forwarded(vip_port(vip_c, &HTTP));
    let (tcp_ok, udp_ok) = traffic.finish(&k.lab, "to A during the outage");
    eprintln!("A served {tcp_ok} TCP connections and {udp_ok} UDP requests across the outage");

    // Back: the gateway converges to what changed meanwhile.
    let back = Instant::now();
    k.restart_api();
    let info = k.info().clone();
    let converged = k
        .lab
        .in_client(move || {
            while back.elapsed() < AFTER_BACKOFF {
                if connect_pod(&info, vip_port(vip_c, &HTTP)).is_ok() {
                    return Ok(back.elapsed());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(format!(
                "C did not answer within {AFTER_BACKOFF:?} of the restart"
            ))
        })
        .unwrap_or_else(|e| k.lab.fail(e));
    eprintln!("converged {converged:?} after the API server came back");
    k.lab.assert_log_contains("Kubernetes API reachable again");
    let served = k.lab.tcp_sessions(vip_port(vip_c, &HTTP), 5, 1);
    assert_eq!(served.keys().collect::<Vec<_>>(), [&nodes[2].name]);
    let served = k.lab.tcp_sessions(vip_port(vip_a, &HTTP), 10, 1);
    assert_eq!(
        served.keys().collect::<Vec<_>>(),
        [&nodes[0].name],
        "A scaled to Pod 1 while the API server was down"
    );
    let served = k.lab.udp_exchanges(vip_port(vip_a, &DNS), 10);
    assert_eq!(served.keys().collect::<Vec<_>>(), [&nodes[0].name]);
    k.lab.assert_not_forwarded(vip_port(vip_b, &HTTP));
    k.lab.stop_gateway();
}

#[test]
fn nothing_is_forwarded_before_the_first_full_sync() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut k = KubeLab::new(2);
    let vip = k.info().vip(10);
    let nodes: Vec<NodeInfo> = k.info().pods.clone();
    k.api.apply(service("echo", vip, &[HTTP, DNS]));
    k.api.apply(slice(
        "echo",
        &[HTTP, DNS],
        &[(&nodes[0], Condition::Ready), (&nodes[1], Condition::Ready)],
    ));
    // The objects are there, but the API server is not reachable.
    k.api.stop();
    let dns_address = k.info().vip(53).to_string();
    k.start_gateway(&["--min-sync-period", "100ms", "--dns-address", &dns_address]);
    k.lab
        .assert_log_contains("waiting for the first full sync from the Kubernetes API");
    k.lab.wait_log(UNREACHABLE, 0, Duration::from_secs(10));
    assert_eq!(k.readyz(), 503, "ready before the first sync");
    k.lab.assert_not_forwarded(vip_port(vip, &HTTP));
    assert_udp_not_answered(&k.lab, vip_port(vip, &DNS));
    let name = "echo.default.svc.cluster.local";
    let before = dig(&k.lab, &dns_address, &[name, "A"]);
    assert!(
        before.contains("status: SERVFAIL"),
        "DNS before the first sync:\n{before}"
    );
    assert_eq!(k.readyz(), 503, "ready before the first sync");
    assert_eq!(k.lab.log_count(SYNCED), 0, "synced without an API server");
    assert_eq!(k.lab.log_count(APPLIED), 0, "a table without an API server");

    let back = Instant::now();
    k.restart_api();
    let synced = k.wait_synced(AFTER_BACKOFF);
    eprintln!("first full sync {synced:?} after the API server came up");
    let served = k.lab.tcp_sessions(vip_port(vip, &HTTP), 20, 1);
    assert_eq!(
        served.len(),
        2,
        "both Pods serve after the sync: {served:?}"
    );
    // (The log line comes just before the flag is set: asked after.)
    assert_eq!(k.readyz(), 200, "ready after the first sync");
    k.lab.udp_exchanges(vip_port(vip, &DNS), 5);
    eprintln!(
        "forwarding {:?} after the API server came up",
        back.elapsed()
    );
    let after = dig(&k.lab, &dns_address, &["+short", name, "A"]);
    assert_eq!(after.trim(), vip.to_string(), "DNS after the first sync");
    k.lab.stop_gateway();
}

#[test]
fn a_dual_stack_service_forwards_both_vips_and_names_both() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut k = KubeLab::build(Topology::two_arm("kubelive").pods(2).dual_stack(true));
    // IPv6 echo servers, dropped before the lab (also on panic).
    let _servers6 = k
        .lab
        .topology()
        .start_tcp_echo6(TARGET_PORT)
        .unwrap_or_else(|e| k.lab.fail(format_args!("IPv6 echo servers: {e}")));
    let vip = k.info().vip(10);
    let vip6 = k.info().vip6(10).to_string();
    let vip6 = vip6.as_str();
    let nodes: Vec<NodeInfo> = k.info().pods.clone();
    let mut echo = service("echo", vip, &[HTTP]);
    echo["spec"]["ipFamilyPolicy"] = json!("RequireDualStack");
    echo["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
    echo["spec"]["clusterIPs"] = json!([vip.to_string(), vip6]);
    k.api.apply(echo);
    k.api.apply(slice(
        "echo",
        &[HTTP],
        &[(&nodes[0], Condition::Ready), (&nodes[1], Condition::Ready)],
    ));
    // The Pods' IPv6 addresses, in a slice of their own.
    let pods6: Vec<String> = nodes
        .iter()
        .map(|n| {
            n.iface
                .addr6
                .unwrap_or_else(|| k.lab.fail(format_args!("{} has no IPv6 address", n.name)))
                .to_string()
        })
        .collect();
    let mut v6 = slice(
        "echo",
        &[HTTP],
        &[(&nodes[0], Condition::Ready), (&nodes[1], Condition::Ready)],
    );
    v6["metadata"]["name"] = json!("echo-6");
    v6["addressType"] = json!("IPv6");
    for (i, pod6) in pods6.iter().enumerate() {
        v6["endpoints"][i]["addresses"] = json!([pod6]);
    }
    k.api.apply(v6);
    let dns_address = k.info().vip(53).to_string();
    k.start_gateway(&[
        "--min-sync-period",
        "100ms",
        "--service-cidr",
        "2001:2:0:100::/64",
        "--dns-address",
        &dns_address,
    ]);
    k.wait_synced(SYNC_WITHIN);
    // Each VIP forwards to its own family's Pods.
    let served = k.lab.tcp_sessions(vip_port(vip, &HTTP), 20, 1);
    assert_eq!(served.len(), 2, "both IPv4 Pods serve: {served:?}");
    let target6 = std::net::SocketAddr::new(vip6.parse().expect("an IPv6 VIP"), HTTP.port);
    let mut served6 = BTreeSet::new();
    for i in 0..20 {
        let replies = k
            .lab
            .topology()
            .client()
            .run(|| lab::tcp_session(target6, 1, Duration::from_secs(5)))
            .unwrap_or_else(|e| k.lab.fail(format_args!("entering the client: {e}")))
            .unwrap_or_else(|e| k.lab.fail(format_args!("connection {i} to {target6}: {e}")));
        served6.extend(replies);
    }
    let answered6: BTreeSet<&String> = pods6
        .iter()
        .filter(|pod6| served6.iter().any(|r| r.contains(pod6.as_str())))
        .collect();
    assert_eq!(
        answered6.len(),
        2,
        "both IPv6 Pods serve [{vip6}]: {served6:?}"
    );
    // Both ClusterIPs by name, AAAA asked over IPv4.
    let name = "echo.default.svc.cluster.local";
    let a = dig(&k.lab, &dns_address, &["+short", name, "A"]);
    assert_eq!(a.trim(), vip.to_string());
    let aaaa = dig(&k.lab, &dns_address, &["+short", name, "AAAA"]);
    assert_eq!(aaaa.trim(), vip6);
    // /api/services: both ClusterIPs, the primary first, and the
    // endpoints of both families.
    let reply = k
        .lab
        .topology()
        .gateway()
        .run(|| client::get(default_admin(), "/api/services", Duration::from_secs(5)))
        .unwrap_or_else(|e| k.lab.fail(format_args!("entering the gateway: {e}")))
        .unwrap_or_else(|e| k.lab.fail(format_args!("GET /api/services: {e}")));
    let view: cipgw::admin::ServicesView = serde_json::from_str(&reply.body)
        .unwrap_or_else(|e| k.lab.fail(format_args!("{e}: {}", reply.body)));
    let echo = view
        .services
        .iter()
        .find(|s| s.name == "echo")
        .unwrap_or_else(|| k.lab.fail(format_args!("no echo in {}", reply.body)));
    let ips: Vec<String> = echo.cluster_ips.iter().map(ToString::to_string).collect();
    assert_eq!(ips, [vip.to_string(), vip6.to_owned()]);
    assert_eq!(echo.ip_family_policy, "RequireDualStack");
    let mut endpoints: Vec<String> = echo.ports[0]
        .endpoints
        .iter()
        .map(|e| e.ip.to_string())
        .collect();
    endpoints.sort();
    let mut want: Vec<String> = nodes.iter().map(|n| n.iface.addr.to_string()).collect();
    want.extend(pods6.iter().cloned());
    want.sort();
    assert_eq!(endpoints, want);
    k.lab.stop_gateway();
}

/// `dig @server ARGS` from the client, one try of 2 s: its stdout.
#[track_caller]
fn dig(lab: &Lab, server: &str, args: &[&str]) -> String {
    let at = format!("@{server}");
    let out = lab
        .topology()
        .client()
        .command("dig")
        .args([at.as_str(), "+time=2", "+tries=1"])
        .args(args)
        .output()
        .unwrap_or_else(|e| lab.fail(format_args!("running dig: {e}")));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_unusable_object_is_reported_and_left_out_until_fixed() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut k = KubeLab::new(3);
    let (vip, vip_c) = (k.info().vip(10), k.info().vip(30));
    let nodes: Vec<NodeInfo> = k.info().pods.clone();
    let all: Vec<(&NodeInfo, Condition)> = nodes.iter().map(|n| (n, Condition::Ready)).collect();
    k.api.apply(service("echo", vip, &[HTTP]));
    k.api.apply(slice("echo", &[HTTP], &all));
    k.start_gateway(&["--min-sync-period", "100ms"]);
    k.wait_synced(SYNC_WITHIN);

    // A Service whose port the gateway cannot use (the real API server
    // would refuse this one; a ClusterIP outside --service-cidr is the
    // kind it lets through).
    let mut bad = service("charlie", vip_c, &[HTTP]);
    bad["spec"]["ports"][0]["port"] = 80800.into();
    let outside = service("delta", Ipv4Addr::new(198, 19, 0, 40), &[HTTP]);
    k.api.apply(bad);
    k.api.apply(outside);
    k.api
        .apply(slice("charlie", &[HTTP], &[(&nodes[2], Condition::Ready)]));
    std::thread::sleep(Duration::from_millis(1500));
    let served = k.lab.tcp_sessions(vip_port(vip, &HTTP), 20, 1);
    assert_eq!(served.values().sum::<usize>(), 20, "the rest serves on");
    k.lab.assert_log_contains("spec.ports[0].port");
    k.lab.assert_log_contains("80800");
    k.lab
        .assert_log_contains("198.19.0.40 is outside the service CIDR");
    k.lab.assert_not_forwarded(vip_port(vip_c, &HTTP));

    // Fixed: it takes effect.
    let written = Instant::now();
    k.apply_and_wait(&[service("charlie", vip_c, &[HTTP])]);
    eprintln!(
        "the fixed Service was installed {:?} after the update",
        written.elapsed()
    );
    let served = k.lab.tcp_sessions(vip_port(vip_c, &HTTP), 5, 1);
    assert_eq!(served.keys().collect::<Vec<_>>(), [&nodes[2].name]);
    k.lab.stop_gateway();
}

/// Each TCP connection's request and each UDP flow's datagram, answered
/// by `expect(pod it was on)`: `Some(pod)` that Pod, `None` a reset (TCP)
/// or any other Pod (UDP).
fn check_flows(lab: &Lab, flows: &mut Flows, expect: impl Fn(&str) -> Option<String>, when: &str) {
    for (pod, stream) in &mut flows.tcp {
        match (request(stream), expect(pod)) {
            (Ok(reply), Some(want)) => {
                assert_eq!(
                    pod_name(lab.info(), &reply).ok(),
                    Some(want.as_str()),
                    "{when}: {pod}'s connection"
                );
            }
            (Err(e), None) if e.kind() == ErrorKind::ConnectionReset => {}
            (outcome, want) => lab.fail(format_args!(
                "{when}: {pod}'s connection: {outcome:?}, expected {want:?} (None: a reset)"
            )),
        }
    }
    let info = lab.info().clone();
    let udp: Vec<(String, UdpSocket)> = flows
        .udp
        .iter()
        .map(|(pod, u)| (pod.clone(), u.try_clone().expect("UDP socket clones")))
        .collect();
    let answers = lab.in_client(move || {
        udp.iter()
            .map(|(pod, u)| (pod.clone(), udp_pod(&info, u).map_err(|e| e.to_string())))
            .collect::<Vec<_>>()
    });
    for (pod, answer) in answers {
        let now =
            answer.unwrap_or_else(|e| lab.fail(format_args!("{when}: {pod}'s UDP flow: {e}")));
        match expect(&pod) {
            Some(want) => assert_eq!(now, want, "{when}: {pod}'s UDP flow"),
            None => assert_ne!(now, pod, "{when}: {pod}'s UDP flow still reaches it"),
        }
    }
}

#[test]
fn a_restart_without_the_api_server_keeps_flows_until_the_first_sync() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut k = KubeLab::new(3);
    let vip = k.info().vip(10);
    let nodes: Vec<NodeInfo> = k.info().pods.clone();
    k.api.apply(service("echo", vip, &[HTTP, DNS]));
    let all: Vec<(&NodeInfo, Condition)> = nodes.iter().map(|n| (n, Condition::Ready)).collect();
    k.api.apply(slice("echo", &[HTTP, DNS], &all));
    k.start_gateway(&["--min-sync-period", "100ms"]);
    k.wait_synced(SYNC_WITHIN);
    let mut flows = open_flows(&k.lab, vip, 3);
    let gone = nodes[2].name.clone();

    // The API server goes away, and meanwhile the third Pod leaves.
    k.api.stop();
    k.api.apply(slice("echo", &[HTTP, DNS], &all[..2]));
    k.lab.stop_gateway();
    k.start_gateway(&["--min-sync-period", "100ms"]);
    k.lab
        .assert_log_contains("connection table adopted from the previous gateway");
    k.lab
        .assert_log_contains("kept the previous gateway's VIPs and backends until the first sync");
    assert_eq!(k.readyz(), 503, "not ready before the first sync");
    check_flows(
        &k.lab,
        &mut flows,
        |pod| Some(pod.to_owned()),
        "before the first sync",
    );

    k.restart_api();
    k.wait_synced(AFTER_BACKOFF);
    let left = gone.clone();
    check_flows(
        &k.lab,
        &mut flows,
        move |pod| (pod != left).then(|| pod.to_owned()),
        "after the first sync",
    );
    k.lab.stop_gateway();
}
