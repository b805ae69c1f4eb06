//! End-to-end tests of the gateway's DNS (`--dns-address`), in network
//! namespaces with the real binary and real clients: `dig` (bind9-dnsutils)
//! and the system resolver (`getent`, through the client namespace's own
//! resolv.conf, which `ip netns exec` bind-mounts from
//! `/etc/netns/<ns>/resolv.conf`).
//!
//! Cases:
//! - the records of the Kubernetes DNS specification over UDP: A, SRV,
//!   PTR, CNAME, TXT; NXDOMAIN and NODATA with the SOA; AAAA NODATA for
//!   an IPv4-only Service; REFUSED outside the zone;
//! - dual-stack (a second, IPv6 `--service-cidr`): `dig AAAA` over IPv4
//!   answers a dual-stack Service's IPv6 ClusterIP (and A its IPv4 one,
//!   PTR under ip6.arpa), and a headless IPv6 Service from Pods'
//!   `status.podIPs` answers AAAA per ready Pod (A: NODATA);
//! - a 200-endpoint headless Service truncates over UDP (TC) and comes
//!   whole when dig retries over TCP (the gateway's kernel socket);
//! - the system resolver with the search path finds a Service by its
//!   short name;
//! - a headless Service scaled 3 -> 1 -> 3 is answered accordingly in the
//!   first query after the gateway logs the table applied;
//! - a burst of queries from one source beyond the rate limit is
//!   answered at the limit only (counted on /metrics);
//! - a client outside `--cluster-cidr` gets no answer (counted);
//! - with `--dns-upstream`, names outside the zone are answered by an
//!   upstream resolver (dnsmasq, in its own namespace) over UDP and TCP,
//!   also through the system resolver whose resolv.conf names the gateway
//!   alone, while cluster names are still answered locally; an upstream
//!   that is gone times out (UDP, counted) or gets SERVFAIL (TCP); and
//!   without `--dns-upstream` the same name is REFUSED;
//! - `cipgw demo` is the seed's demo: curl by name through the system
//!   resolver, and `host` of the headless variant lists the three Pods;
//! - an IPv6 `--dns-address` (beside an IPv4 one): `dig -6` over UDP
//!   (answered by the workers) and TCP (the kernel listener) gets a
//!   dual-stack Service's AAAA and A, REFUSED/NXDOMAIN as over IPv4, a
//!   name outside the zone is forwarded to the (IPv4) upstream and
//!   relayed from the IPv6 address, over UDP and TCP, and an IPv6 client
//!   outside `--cluster-cidr` gets no answer.
//!
//! Rules as in tests/netns.rs: one test at a time, root (skip with a reason
//! otherwise, never when CI=true), RAII cleanup, 198.18.0.0/15 and
//! 2001:2::/48 only (IPv6 addresses are only named, except in the IPv6
//! DNS test's dual-stack lab).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use cipgw::admin::client;
use cipgw::lab::{self, Topology};
use cipgw::metrics::exposition::{self, Exposition};

#[path = "support/mod.rs"]
mod support;

use support::{
    endpoint_slice, exe, run_cipgw, service, Lab, Port, HTTP, TABLE_APPLIED, TARGET_PORT,
};

/// The DNS address: in the VIP range, so the client's route to VIPs
/// reaches the gateway; no Service uses it.
const DNS_HOST: u8 = 53;
/// The gateway's IPv6 service CIDR, beside the lab's IPv4 VIP range.
const SERVICE_CIDR_V6: &str = "2001:2:0:ff::/112";
/// The lab's IPv6 clients (none here; the gateway needs a range per family
/// it has VIPs of).
const CLUSTER_CIDR_V6: &str = "2001:2::/48";
/// The dual-stack Service's IPv6 ClusterIP (its IPv4 one is VIP .20).
const WEB_V6: &str = "2001:2:0:ff::20";
/// The IPv6 addresses of the headless IPv6 Service's Pods; the last is
/// not ready.
const DB6_PODS: [&str; 3] = ["2001:2:0:4::1", "2001:2:0:4::2", "2001:2:0:4::3"];

/// How long a table change may take to show in the log.
const APPLIED_WITHIN: Duration = Duration::from_secs(10);

/// A named port without a Pod behind it (headless Services' endpoints
/// need not exist for DNS).
const PG: Port = Port {
    name: "pg",
    port: 5432,
    target: 5432,
    protocol: "TCP",
};

fn dns_address(lab: &Lab) -> Ipv4Addr {
    lab.info().vip(DNS_HOST)
}

/// The Services of the lab: echo-server-clusterip (VIP .10) with three
/// Pods, a headless `db` with the Pods `pods` (indices) by slice, with
/// hostnames `db-<i>`, an ExternalName `ext`, and a 200-endpoint headless
/// `big`.
fn documents(lab: &Lab, db_pods: &[usize]) -> Vec<String> {
    let info = lab.info();
    let mut docs = lab.selector_service("echo-server-clusterip", info.vip(10), &[HTTP], &[0, 1, 2]);
    docs.push(service("db", "None", None, &[PG]));
    let nodes: Vec<_> = db_pods.iter().map(|&i| &info.pods[i]).collect();
    let mut slice = endpoint_slice("db", &nodes, &PG);
    for (i, node) in db_pods.iter().map(|&i| (i, &info.pods[i])) {
        slice = slice.replace(
            &format!("- addresses: [{}]\n", node.iface.addr),
            &format!("- addresses: [{}]\n  hostname: db-{i}\n", node.iface.addr),
        );
    }
    docs.push(slice);
    docs.push(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: ext\n  namespace: default\n\
         spec:\n  type: ExternalName\n  externalName: db.example.net\n"
            .to_owned(),
    );
    docs.push(service("big", "None", None, &[PG]));
    let mut big = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  \
                   name: big-1\n  namespace: default\n  labels:\n    \
                   kubernetes.io/service-name: big\naddressType: IPv4\nports:\n\
                   - name: pg\n  port: 5432\n  protocol: TCP\nendpoints:\n"
        .to_owned();
    for i in 0..200u32 {
        big.push_str(&format!(
            "- addresses: [198.18.{}.{}]\n",
            40 + i / 100,
            1 + i % 100
        ));
    }
    docs.push(big);
    docs
}

/// A dual-stack Service `web` (IPv4 primary: VIP .20, and [`WEB_V6`])
/// with no endpoints, and a headless IPv6 Service `db6` selecting three
/// Pods by label whose `status.podIPs` are [`DB6_PODS`] (the last not
/// ready): names only, nothing here carries traffic.
fn dual_stack_documents(lab: &Lab) -> Vec<String> {
    let vip = lab.info().vip(20);
    let mut docs = vec![format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\n\
         spec:\n  ipFamilyPolicy: PreferDualStack\n  ipFamilies: [IPv4, IPv6]\n  \
         clusterIP: {vip}\n  clusterIPs: [{vip}, \"{WEB_V6}\"]\n  \
         ports:\n  - name: http\n    port: 80\n"
    )];
    docs.push(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: db6\n  namespace: default\n\
         spec:\n  clusterIP: None\n  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv6]\n  \
         selector:\n    app: db6\n  ports:\n  - name: pg\n    port: 5432\n"
            .to_owned(),
    );
    for (i, ip) in DB6_PODS.iter().enumerate() {
        let ready = if i < 2 { "True" } else { "False" };
        docs.push(format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: db6-{i}\n  namespace: default\n  \
             labels:\n    app: db6\nstatus:\n  phase: Running\n  podIP: \"{ip}\"\n  \
             podIPs:\n  - ip: \"{ip}\"\n  conditions:\n  - type: Ready\n    \
             status: \"{ready}\"\n"
        ));
    }
    docs
}

fn start(lab: &mut Lab, cluster_cidr: &str) {
    let address = dns_address(lab).to_string();
    lab.start_gateway_with(&[
        "--dns-address",
        &address,
        "--cluster-cidr",
        cluster_cidr,
        // The gateway has IPv6 VIPs too: their clients' range.
        "--cluster-cidr",
        CLUSTER_CIDR_V6,
        "--service-cidr",
        SERVICE_CIDR_V6,
    ]);
}

fn lab_with_dns(purpose: &str) -> Lab {
    let mut lab = Lab::build(Topology::two_arm(purpose).pods(3));
    lab.tcp_echo(TARGET_PORT);
    let docs = documents(&lab, &[0, 1, 2]);
    lab.control_file(&docs);
    lab
}

/// Runs a program in the client namespace; its output.
fn in_client(lab: &Lab, program: &str, args: &[&str]) -> Output {
    lab.topology()
        .client()
        .command(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| lab.fail(format_args!("running {program} {args:?}: {e}")))
}

/// `dig @<dns address> ARGS +time=2 +tries=1`: stdout, which must be
/// there (dig exits 0 for any answer, NXDOMAIN included).
fn dig(lab: &Lab, args: &[&str]) -> String {
    dig_at(lab, &dns_address(lab).to_string(), args)
}

/// `dig @<server> ARGS +time=2 +tries=1`, as [`dig`].
fn dig_at(lab: &Lab, server: &str, args: &[&str]) -> String {
    let server = format!("@{server}");
    let mut all = vec![server.as_str(), "+time=2", "+tries=1"];
    all.extend_from_slice(args);
    let out = in_client(lab, "dig", &all);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        lab.fail(format_args!(
            "dig {all:?} exited with {}: {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    stdout
}

/// `dig +short`: the answer's data, one per line, sorted.
fn short(lab: &Lab, name: &str, qtype: &str) -> Vec<String> {
    let mut lines: Vec<String> = dig(lab, &["+short", name, qtype])
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// The `status:` and `flags:` of dig's header line.
fn status_and_flags(lab: &Lab, args: &[&str]) -> (String, String) {
    let text = dig(lab, args);
    let header = text
        .lines()
        .find(|l| l.contains("status:"))
        .unwrap_or_else(|| lab.fail(format_args!("no header in dig's output:\n{text}")))
        .to_owned();
    let status = header
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_default()
        .to_owned();
    let flags_line = text
        .lines()
        .find(|l| l.contains("flags:"))
        .unwrap_or_default();
    let flags = flags_line
        .split("flags: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap_or_default()
        .to_owned();
    (status, flags)
}

fn scrape(lab: &Lab) -> Exposition {
    let reply = lab
        .topology()
        .gateway()
        .run(|| {
            client::get(
                "127.0.0.1:9477".parse().expect("static address"),
                "/metrics",
                Duration::from_secs(5),
            )
        })
        .unwrap_or_else(|e| lab.fail(format_args!("entering the gateway namespace: {e}")))
        .unwrap_or_else(|e| lab.fail(format_args!("GET /metrics: {e}")));
    exposition::parse(&reply.body)
        .unwrap_or_else(|e| lab.fail(format_args!("/metrics does not parse: {e}")))
}

/// The client namespace's resolv.conf, removed on drop.
struct ResolvConf {
    dir: PathBuf,
}

impl ResolvConf {
    fn new(ns: &str, nameserver: Ipv4Addr) -> Self {
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        std::fs::write(
            dir.join("resolv.conf"),
            format!(
                "nameserver {nameserver}\n\
                 search default.svc.cluster.local svc.cluster.local cluster.local\n\
                 options ndots:5 timeout:2 attempts:1\n"
            ),
        )
        .unwrap_or_else(|e| panic!("writing {}/resolv.conf: {e}", dir.display()));
        Self { dir }
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn dig_and_the_system_resolver_get_the_cluster_names() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut lab = lab_with_dns("dns");
    let mut docs = documents(&lab, &[0, 1, 2]);
    docs.extend(dual_stack_documents(&lab));
    lab.control_file(&docs);
    let client_subnet = lab.info().client_subnet.to_string();
    start(&mut lab, &client_subnet);
    let info = lab.info().clone();
    let vip = info.vip(10).to_string();
    let zone = "default.svc.cluster.local";

    // A, SRV, PTR, CNAME, TXT.
    assert_eq!(
        short(&lab, &format!("echo-server-clusterip.{zone}"), "A"),
        [vip.as_str()]
    );
    assert_eq!(
        short(
            &lab,
            &format!("_http._tcp.echo-server-clusterip.{zone}"),
            "SRV"
        ),
        [format!("0 100 8080 echo-server-clusterip.{zone}.")]
    );
    let [a, b, c, d] = info.vip(10).octets();
    assert_eq!(
        short(&lab, &format!("{d}.{c}.{b}.{a}.in-addr.arpa"), "PTR"),
        [format!("echo-server-clusterip.{zone}.")]
    );
    assert_eq!(
        short(&lab, &format!("ext.{zone}"), "CNAME"),
        ["db.example.net."]
    );
    assert_eq!(
        short(&lab, "dns-version.cluster.local", "TXT"),
        ["\"1.1.0\""]
    );
    // Headless: every ready endpoint, and each by its hostname.
    let pod_ips: BTreeSet<String> = info.pods.iter().map(|p| p.iface.addr.to_string()).collect();
    let db: BTreeSet<String> = short(&lab, &format!("db.{zone}"), "A")
        .into_iter()
        .collect();
    assert_eq!(db, pod_ips);
    assert_eq!(
        short(&lab, &format!("db-1.db.{zone}"), "A"),
        [info.pods[1].iface.addr.to_string()]
    );
    // NXDOMAIN, NODATA (AAAA: IPv4 only), REFUSED, case-insensitive.
    let (status, flags) = status_and_flags(&lab, &[&format!("nothing.{zone}"), "A"]);
    assert_eq!(status, "NXDOMAIN");
    assert!(flags.contains("aa"), "authoritative: {flags}");
    let (status, _) = status_and_flags(&lab, &[&format!("echo-server-clusterip.{zone}"), "AAAA"]);
    assert_eq!(status, "NOERROR");
    let nodata = dig(&lab, &[&format!("echo-server-clusterip.{zone}"), "AAAA"]);
    assert!(
        nodata.contains("ANSWER: 0") && nodata.contains("SOA"),
        "NODATA with the SOA:\n{nodata}"
    );
    let (status, _) = status_and_flags(&lab, &["example.com", "A"]);
    assert_eq!(status, "REFUSED");

    // Dual-stack: AAAA (asked over IPv4) answers the IPv6 ClusterIP, A
    // the IPv4 one, and each address has its PTR.
    let web = format!("web.{zone}");
    assert_eq!(short(&lab, &web, "AAAA"), [WEB_V6]);
    assert_eq!(short(&lab, &web, "A"), [info.vip(20).to_string()]);
    assert_eq!(
        dig(&lab, &["+short", "-x", WEB_V6]).trim(),
        format!("web.{zone}.")
    );
    // A headless IPv6 Service: AAAA per ready Pod, by address and by its
    // address-derived name; no A at all (NODATA with the SOA).
    assert_eq!(short(&lab, &format!("db6.{zone}"), "AAAA"), &DB6_PODS[..2]);
    assert_eq!(
        short(&lab, &format!("2001-2-0-4--2.db6.{zone}"), "AAAA"),
        [DB6_PODS[1]]
    );
    let (status, _) = status_and_flags(&lab, &[&format!("db6.{zone}"), "A"]);
    assert_eq!(status, "NOERROR");
    let nodata = dig(&lab, &[&format!("db6.{zone}"), "A"]);
    assert!(
        nodata.contains("ANSWER: 0") && nodata.contains("SOA"),
        "NODATA with the SOA:\n{nodata}"
    );
    assert_eq!(
        short(&lab, "Echo-Server-ClusterIP.DEFAULT.svc.cluster.local", "A"),
        [vip.as_str()]
    );

    // 200 addresses: truncated over UDP, whole over TCP (dig retries).
    let (_, flags) = status_and_flags(&lab, &["+ignore", "+noedns", &format!("big.{zone}"), "A"]);
    assert!(flags.contains("tc"), "TC over UDP: {flags}");
    assert_eq!(short(&lab, &format!("big.{zone}"), "A").len(), 200);
    let tcp = dig(&lab, &["+tcp", "+short", &format!("big.{zone}"), "A"]);
    assert_eq!(tcp.lines().count(), 200, "over TCP directly");

    // The system resolver, with the search path.
    let _resolv = ResolvConf::new(&info.client.ns, dns_address(&lab));
    let out = in_client(&lab, "getent", &["hosts", "echo-server-clusterip"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(&vip) && text.contains("echo-server-clusterip"),
        "getent hosts echo-server-clusterip: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = in_client(&lab, "getent", &["ahostsv4", "db"]);
    let found: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    assert_eq!(found, pod_ips, "the headless Service's Pods by short name");

    // Counted per rcode and type.
    let metrics = scrape(&lab);
    assert!(metrics.sum("cipgw_dns_answers_total", &[("rcode", "NXDOMAIN")]) >= 1.0);
    assert!(metrics.sum("cipgw_dns_queries_total", &[("qtype", "SRV")]) >= 1.0);
    assert!(metrics.sum("cipgw_dns_truncated_total", &[]) >= 1.0);

    // `cipgw status` says how many answers, from which generation.
    let status = lab
        .topology()
        .gateway()
        .command(exe())
        .args(["status"])
        .output()
        .unwrap_or_else(|e| lab.fail(format_args!("cipgw status: {e}")));
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("dns ") && l.contains("last from generation 1")),
        "cipgw status shows the DNS line:\n{status}"
    );

    // `cipgw check --dns` prints what is served.
    let file = lab.write_file("check.yaml", &docs);
    let range = info.vip_range.to_string();
    let path = file.display().to_string();
    let out = run_cipgw(&[
        "check",
        "--control-file",
        &path,
        "--service-cidr",
        &range,
        "--service-cidr",
        SERVICE_CIDR_V6,
        "--dns",
    ]);
    assert!(out.status.success(), "cipgw check --dns: {out:?}");
    for line in [
        format!("  echo-server-clusterip.{zone}. A {vip}"),
        format!("  web.{zone}. AAAA {WEB_V6}"),
        format!("  db6.{zone}. AAAA {}", DB6_PODS[0]),
        format!("  ext.{zone}. CNAME db.example.net."),
        "  dns-version.cluster.local. TXT \"1.1.0\"".to_owned(),
    ] {
        assert!(
            out.stdout.lines().any(|l| l == line),
            "cipgw check --dns lists {line:?}:\n{}",
            out.stdout
        );
    }
}

/// A hand-over to the same binary keeps the XDP program and its maps:
/// the DNS address stays steered to the workers (UDP) and the new
/// gateway answers on TCP once the old one let go of the listener.
#[test]
fn dns_is_answered_after_a_hand_over_that_keeps_the_program() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut lab = lab_with_dns("dnshand");
    let client_subnet = lab.info().client_subnet.to_string();
    start(&mut lab, &client_subnet);
    let vip = lab.info().vip(10).to_string();
    let name = "echo-server-clusterip.default.svc.cluster.local";
    assert_eq!(short(&lab, name, "A"), [vip.as_str()]);
    lab.replace_gateway();
    lab.assert_log_contains("keeping the running gateway's XDP program");
    assert_eq!(short(&lab, name, "A"), [vip.as_str()], "over UDP");
    let mut tcp: Vec<String> = dig(&lab, &["+tcp", "+short", name, "A"])
        .lines()
        .map(str::to_owned)
        .collect();
    tcp.sort();
    assert_eq!(tcp, [vip.as_str()], "over TCP");
}

#[test]
fn a_headless_scale_shows_in_the_next_answer() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut lab = lab_with_dns("dnsscale");
    let client_subnet = lab.info().client_subnet.to_string();
    start(&mut lab, &client_subnet);
    let info = lab.info().clone();
    let name = "db.default.svc.cluster.local";
    // 3 Pods as started, then 1, then 3 again. The first is the table the
    // gateway started with: nothing to apply (an unchanged table logs no
    // "applied" line), so only the changes are waited for.
    for (round, pods) in [&[0usize, 1, 2][..], &[1], &[0, 1, 2]]
        .into_iter()
        .enumerate()
    {
        if round > 0 {
            let before = lab.log_count(TABLE_APPLIED);
            let docs = documents(&lab, pods);
            lab.control_file(&docs);
            lab.wait_log(TABLE_APPLIED, before, APPLIED_WITHIN);
        }
        let expected: BTreeSet<String> = pods
            .iter()
            .map(|&i| info.pods[i].iface.addr.to_string())
            .collect();
        let answered: BTreeSet<String> = short(&lab, name, "A").into_iter().collect();
        assert_eq!(
            answered, expected,
            "the first answer after the table applied"
        );
    }
}

#[test]
fn outsiders_get_nothing_and_bursts_get_the_limit() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut lab = lab_with_dns("dnsrrl");
    // Only the Pod subnet is "the cluster" at first: the client is out.
    let pods = lab.info().pod_subnet.to_string();
    start(&mut lab, &pods);
    let server = SocketAddrV4::new(dns_address(&lab), 53);
    let query = query_bytes("echo-server-clusterip.default.svc.cluster.local");
    let answers = |lab: &Lab, n: usize| {
        let query = query.clone();
        lab.in_client(move || {
            let socket = UdpSocket::bind("0.0.0.0:0").expect("UDP socket");
            socket.connect(server).expect("connect");
            socket
                .set_read_timeout(Some(Duration::from_millis(300)))
                .expect("timeout");
            // The burst goes out within one second, before any answer
            // is read (the socket buffer holds them).
            let started = Instant::now();
            for _ in 0..n {
                let _ = socket.send(&query);
            }
            let sent_in = started.elapsed();
            let mut buf = [0u8; 1500];
            let mut answered = 0;
            while socket.recv(&mut buf).is_ok() {
                answered += 1;
            }
            (answered, sent_in)
        })
    };
    let (answered, _) = answers(&lab, 3);
    assert_eq!(
        answered, 0,
        "a client outside --cluster-cidr gets no answer"
    );
    let metrics = scrape(&lab);
    assert!(
        metrics.sum(
            "cipgw_dns_dropped_total",
            &[("reason", "source_not_in_cluster")]
        ) >= 3.0,
        "dropped and counted"
    );
    lab.stop_gateway();

    let client_subnet = lab.info().client_subnet.to_string();
    let address = dns_address(&lab).to_string();
    lab.start_gateway_with(&[
        "--dns-address",
        &address,
        "--cluster-cidr",
        &client_subnet,
        "--dns-rate-limit",
        "50",
    ]);
    let (answered, sent_in) = answers(&lab, 1000);
    // 50 a second per source: one window, or two when the burst
    // straddles a second.
    assert!(
        (50..=100).contains(&answered),
        "{answered} of 1000 answered (sent in {sent_in:?}); the limit is 50/s"
    );
    let metrics = scrape(&lab);
    let limited = metrics.sum("cipgw_dns_dropped_total", &[("reason", "rate_limited")]);
    assert!(
        limited >= 1000.0 - 100.0,
        "the rest counted as rate limited: {limited}"
    );
}

#[test]
fn the_demo_resolves_by_name() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let out = run_cipgw(&["demo", "--requests", "6"]);
    assert!(out.status.success(), "cipgw demo: {out:?}");
    let served = out
        .stdout
        .lines()
        .filter(|l| l.contains("Hello from echo-server-"))
        .count();
    assert_eq!(served, 6, "six answers by name:\n{}", out.stdout);
    assert!(
        out.stdout
            .contains("from the client, 6 times: curl http://echo-server-clusterip:8080"),
        "{}",
        out.stdout
    );
    let listed = out
        .stdout
        .lines()
        .filter(|l| l.contains("echo-server-headless.default.svc.cluster.local has address"))
        .count();
    assert_eq!(listed, 3, "host lists the three Pods:\n{}", out.stdout);
}

/// The upstream resolver's link: the gateway at .1, the resolver at .2.
const UPSTREAM_NET: &str = "198.18.3";
/// What the upstream answers for every name under `example.test`.
const UPSTREAM_ANSWER: &str = "198.18.7.7";

/// An upstream resolver in its own namespace, on a veth to the gateway's
/// namespace (the kernel's side of the gateway; no XDP there): dnsmasq
/// answering `example.test` and everything under it, REFUSED otherwise.
/// Dropped in order: dnsmasq, then the namespace.
struct Upstream {
    dnsmasq: Option<lab::NsChild>,
    /// Held for its drop: removes the namespace and the veth.
    _ns: lab::Netns,
    address: Ipv4Addr,
}

impl Upstream {
    fn start(lab: &Lab) -> Self {
        let ns = lab::unique_prefix("dnsup")
            .and_then(|prefix| lab::Netns::create(format!("{prefix}-resolver")))
            .unwrap_or_else(|e| lab.fail(format_args!("creating the resolver namespace: {e}")));
        let gateway = lab.topology().gateway();
        let address: Ipv4Addr = format!("{UPSTREAM_NET}.2").parse().expect("static address");
        let setup = [
            gateway.ip(&[
                "link",
                "add",
                "to-resolver",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ]),
            gateway.ip(&[
                "addr",
                "add",
                &format!("{UPSTREAM_NET}.1/24"),
                "dev",
                "to-resolver",
            ]),
            gateway.ip(&["link", "set", "to-resolver", "up"]),
            ns.ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"]),
            ns.ip(&["link", "set", "eth0", "up"]),
        ];
        for step in setup {
            step.unwrap_or_else(|e| lab.fail(format_args!("wiring the resolver: {e}")));
        }
        let listen = format!("--listen-address={address}");
        let answer = format!("--address=/example.test/{UPSTREAM_ANSWER}");
        let dnsmasq = ns
            .spawn(
                "dnsmasq",
                &[
                    "--keep-in-foreground",
                    "--no-resolv",
                    "--no-hosts",
                    "--no-poll",
                    "--bind-interfaces",
                    &listen,
                    &answer,
                    "--user=root",
                    "--group=root",
                    "--pid-file=",
                    "--log-facility=-",
                ],
            )
            .unwrap_or_else(|e| {
                lab.fail(format_args!(
                    "starting dnsmasq (scripts/setup.sh installs it): {e}"
                ))
            });
        let upstream = Self {
            dnsmasq: Some(dnsmasq),
            _ns: ns,
            address,
        };
        // Ready once it answers (bounded: 10 s).
        let server = format!("@{address}");
        let started = Instant::now();
        loop {
            let out = gateway
                .command("dig")
                .args([
                    server.as_str(),
                    "+short",
                    "+time=1",
                    "+tries=1",
                    "example.test",
                ])
                .output()
                .unwrap_or_else(|e| lab.fail(format_args!("dig in the gateway namespace: {e}")));
            if String::from_utf8_lossy(&out.stdout).trim() == UPSTREAM_ANSWER {
                break;
            }
            if started.elapsed() > Duration::from_secs(10) {
                lab.fail(format_args!("dnsmasq did not answer within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        upstream
    }

    /// Stops dnsmasq: the upstream is gone (its address still answers
    /// ARP, so UDP goes unanswered and TCP is reset).
    fn stop(&mut self) {
        if let Some(mut dnsmasq) = self.dnsmasq.take() {
            let _ = dnsmasq.terminate(Duration::from_secs(3));
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn names_outside_the_zone_go_upstream() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut lab = lab_with_dns("dnsfwd");
    let mut upstream = Upstream::start(&lab);
    let client_subnet = lab.info().client_subnet.to_string();
    let address = dns_address(&lab).to_string();
    let upstream_address = upstream.address.to_string();
    lab.start_gateway_with(&[
        "--dns-address",
        &address,
        "--cluster-cidr",
        &client_subnet,
        "--dns-upstream",
        &upstream_address,
    ]);
    let vip = lab.info().vip(10).to_string();

    // UDP, through the gateway: the upstream's answer, with the
    // client's own ID (dig checks it).
    assert_eq!(short(&lab, "example.test", "A"), [UPSTREAM_ANSWER]);
    let (status, flags) = status_and_flags(&lab, &["www.example.test", "A"]);
    assert_eq!(status, "NOERROR");
    // dnsmasq's flags, relayed as they came (the gateway's own answers
    // never set RA).
    assert!(flags.contains("ra"), "the upstream's answer: {flags}");
    // What the upstream refuses is relayed as such.
    let (status, _) = status_and_flags(&lab, &["example.com", "A"]);
    assert_eq!(
        status, "REFUSED",
        "the upstream's answer for a name it has not"
    );
    // Cluster names are still the gateway's.
    assert_eq!(
        short(&lab, "echo-server-clusterip.default.svc.cluster.local", "A"),
        [vip.as_str()]
    );
    let (status, flags) = status_and_flags(&lab, &["nothing.default.svc.cluster.local", "A"]);
    assert_eq!((status.as_str(), flags.contains("aa")), ("NXDOMAIN", true));
    // TCP, forwarded over TCP.
    let tcp = dig(&lab, &["+tcp", "+short", "tcp.example.test", "A"]);
    assert_eq!(tcp.trim(), UPSTREAM_ANSWER, "over TCP");
    // The system resolver with the gateway as its only nameserver: the
    // search list is tried first (NXDOMAIN from the zone), then the name
    // as given goes upstream.
    let info = lab.info().clone();
    let _resolv = ResolvConf::new(&info.client.ns, dns_address(&lab));
    let out = in_client(&lab, "getent", &["ahostsv4", "www.example.test"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains(UPSTREAM_ANSWER),
        "getent ahostsv4 www.example.test: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = in_client(&lab, "getent", &["hosts", "echo-server-clusterip"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&vip),
        "a cluster name by its short name, same resolver"
    );

    let metrics = scrape(&lab);
    let forwarded =
        |m: &Exposition, outcome: &str| m.sum("cipgw_dns_forwarded_total", &[("outcome", outcome)]);
    // example.test, www, example.com (UDP), tcp.example.test (TCP),
    // www.example.test from getent: at least 5 sent and answered.
    assert!(
        forwarded(&metrics, "sent") >= 5.0,
        "sent: {}",
        forwarded(&metrics, "sent")
    );
    assert!(
        forwarded(&metrics, "answered") >= 5.0,
        "answered: {}",
        forwarded(&metrics, "answered")
    );
    assert_eq!(forwarded(&metrics, "unexpected_answer"), 0.0);
    let status = lab
        .topology()
        .gateway()
        .command(exe())
        .args(["status"])
        .output()
        .unwrap_or_else(|e| lab.fail(format_args!("cipgw status: {e}")));
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("dns upstream ") && l.contains(" answered, 0 timed out")),
        "cipgw status shows the forwarding line:\n{status}"
    );

    // The upstream gone: UDP goes unanswered and is forgotten after the
    // timeout (counted), TCP gets SERVFAIL at once.
    upstream.stop();
    let out = in_client(
        &lab,
        "dig",
        &[
            &format!("@{address}"),
            "+time=1",
            "+tries=1",
            "gone.example.test",
            "A",
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("timed out"),
        "no answer without an upstream: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (status, _) = status_and_flags(&lab, &["+tcp", "gone.example.test", "A"]);
    assert_eq!(
        status, "SERVFAIL",
        "over TCP, the upstream refusing the connection"
    );
    let started = Instant::now();
    loop {
        let metrics = scrape(&lab);
        if forwarded(&metrics, "timed_out") >= 2.0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(15) {
            lab.fail(format_args!(
                "the unanswered query not counted as timed out: {}",
                forwarded(&metrics, "timed_out")
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    lab.stop_gateway();

    // Without --dns-upstream the same name is refused by the gateway.
    start(&mut lab, &client_subnet);
    let (status, _) = status_and_flags(&lab, &["example.test", "A"]);
    assert_eq!(status, "REFUSED", "without --dns-upstream");
}

/// A query for `name` type A, ID 0x4242, RD, without EDNS (as dig
/// sends it with +noedns).
fn query_bytes(name: &str) -> Vec<u8> {
    use domain::base::iana::{Class, Rtype};
    use domain::base::{MessageBuilder, Name};
    let mut b = MessageBuilder::new_vec();
    b.header_mut().set_id(0x4242);
    b.header_mut().set_rd(true);
    let mut q = b.question();
    let name: Name<Vec<u8>> = name.parse().expect("test name");
    q.push((name, Rtype::A, Class::IN)).expect("question fits");
    q.finish()
}

/// Queries per second and latency of the gateway's DNS under dnsperf
/// (Debian's dnsperf; not installed by setup): the client namespace on
/// core 0, the gateway's worker on core 1, 10 s, names of the lab's
/// Services. A measurement, not a check: run it by name with
/// `--ignored --nocapture` and read dnsperf's report.
#[test]
#[ignore = "a measurement: prints dnsperf's report"]
fn dnsperf_report() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    let mut lab = lab_with_dns("dnsperf");
    let client_subnet = lab.info().client_subnet.to_string();
    let address = dns_address(&lab).to_string();
    lab.start_gateway_with(&[
        "--dns-address",
        &address,
        "--cluster-cidr",
        &client_subnet,
        "--dns-rate-limit",
        "0",
    ]);
    let queries = lab.write_file(
        "queries.txt",
        &["echo-server-clusterip.default.svc.cluster.local A\n\
           db.default.svc.cluster.local A\n\
           _pg._tcp.db.default.svc.cluster.local SRV\n\
           nothing.default.svc.cluster.local A\n"
            .to_owned()],
    );
    let path = queries.display().to_string();
    let out = in_client(
        &lab,
        "taskset",
        &[
            "-c", "0", "dnsperf", "-s", &address, "-d", &path, "-l", "10", "-c", "8", "-q", "1000",
        ],
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
    println!("{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn an_ipv6_dns_address_answers_udp_and_tcp_and_forwards() {
    let _serial = lab::serial();
    if !lab::require_root() {
        return;
    }
    // The dual-stack lab: the client reaches the IPv6 VIP range through
    // the gateway, as the IPv4 one; the IPv6 DNS address is in it.
    let mut lab = Lab::build(Topology::two_arm("dns6").pods(3).dual_stack(true));
    let mut docs = documents(&lab, &[0, 1, 2]);
    docs.extend(dual_stack_documents(&lab));
    lab.control_file(&docs);
    let info = lab.info().clone();
    let plan6 = *info
        .ipv6()
        .unwrap_or_else(|e| lab.fail(format_args!("the dual-stack lab: {e}")));
    let dns6 = info.vip6(DNS_HOST).to_string();
    let dns6 = dns6.as_str();
    let upstream = Upstream::start(&lab);
    let client_subnet = info.client_subnet.to_string();
    let client_subnet6 = plan6.client_subnet.to_string();
    let address = dns_address(&lab).to_string();
    let upstream_address = upstream.address.to_string();
    lab.start_gateway_with(&[
        "--dns-address",
        &address,
        "--dns-address",
        dns6,
        "--cluster-cidr",
        &client_subnet,
        "--cluster-cidr",
        &client_subnet6,
        "--service-cidr",
        SERVICE_CIDR_V6,
        "--dns-upstream",
        &upstream_address,
    ]);
    let vip = lab.info().vip(20).to_string();
    let zone = "default.svc.cluster.local";
    let web = format!("web.{zone}");
    let short6 = |args: &[&str]| -> Vec<String> {
        let mut all = vec!["-6", "+short"];
        all.extend_from_slice(args);
        let mut lines: Vec<String> = dig_at(&lab, dns6, &all)
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    };

    // UDP, answered by the workers from the IPv6 address.
    assert_eq!(short6(&[&web, "AAAA"]), [WEB_V6], "AAAA over UDP");
    assert_eq!(short6(&[&web, "A"]), [vip.as_str()], "A over UDP");
    let text = dig_at(&lab, dns6, &["-6", &format!("nothing.{zone}"), "A"]);
    assert!(
        text.contains("status: NXDOMAIN") && text.contains(&format!("SERVER: {dns6}#53(")),
        "NXDOMAIN from the IPv6 address:\n{text}"
    );
    // TCP, through the kernel listener on the IPv6 address.
    assert_eq!(short6(&["+tcp", &web, "AAAA"]), [WEB_V6], "AAAA over TCP");
    assert_eq!(short6(&["+tcp", &web, "A"]), [vip.as_str()], "A over TCP");
    let on_lo = lab
        .topology()
        .gateway()
        .ip(&["-6", "addr", "show", "dev", "lo"])
        .unwrap_or_else(|e| lab.fail(format_args!("listing lo's addresses: {e}")));
    assert!(
        on_lo.contains(&format!("{dns6}/128")) && on_lo.contains("deprecated"),
        "the IPv6 DNS address is on lo, never a source:\n{on_lo}"
    );
    let text = dig_at(&lab, dns6, &["-6", "+tcp", &web, "AAAA"]);
    assert!(
        text.contains(&format!("SERVER: {dns6}#53({dns6}) (TCP)")),
        "over TCP:\n{text}"
    );
    // Outside the zone: the upstream's answer, relayed from the IPv6
    // address (dig checks the answer's source and ID), UDP and TCP.
    assert_eq!(
        short6(&["example.test", "A"]),
        [UPSTREAM_ANSWER],
        "forwarded over UDP"
    );
    assert_eq!(
        short6(&["+tcp", "tcp.example.test", "A"]),
        [UPSTREAM_ANSWER],
        "forwarded over TCP"
    );
    let metrics = scrape(&lab);
    assert!(
        metrics.sum("cipgw_dns_forwarded_total", &[("outcome", "answered")]) >= 2.0,
        "counted as forwarded and answered"
    );

    // An IPv6 client outside --cluster-cidr gets nothing: the gateway
    // restarted with the Pods' IPv6 range as the cluster's.
    lab.stop_gateway();
    let on_lo = lab
        .topology()
        .gateway()
        .ip(&["-6", "addr", "show", "dev", "lo"])
        .unwrap_or_else(|e| lab.fail(format_args!("listing lo's addresses: {e}")));
    assert!(
        !on_lo.contains(dns6),
        "the gateway removes the IPv6 DNS address it added to lo:\n{on_lo}"
    );
    let pod_subnet6 = plan6.pod_subnet.to_string();
    lab.start_gateway_with(&[
        "--dns-address",
        dns6,
        "--cluster-cidr",
        &client_subnet,
        "--cluster-cidr",
        &pod_subnet6,
        "--service-cidr",
        SERVICE_CIDR_V6,
    ]);
    let out = in_client(
        &lab,
        "dig",
        &[
            "-6",
            &format!("@{dns6}"),
            "+time=1",
            "+tries=1",
            &web,
            "AAAA",
        ],
    );
    assert!(
        !out.status.success(),
        "no answer for an IPv6 client outside --cluster-cidr: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let metrics = scrape(&lab);
    assert!(
        metrics.sum(
            "cipgw_dns_dropped_total",
            &[("reason", "source_not_in_cluster")]
        ) >= 1.0,
        "dropped and counted"
    );
    drop(upstream);
}
