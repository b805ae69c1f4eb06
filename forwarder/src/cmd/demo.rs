//! `cipgw demo`: the Kubernetes echo-server demo, self-contained.
//!
//! Builds a two-arm lab (client, gateway, three Pods on a switch), starts
//! an echo server on each Pod (`Hello from <pod> at <ip>`), writes a
//! control file with the seed's ClusterIP Service `echo-server-clusterip`
//! (port 8080 -> targetPort 5678, selector app: echo-server), its
//! headless variant `echo-server-headless` and the three Pods, runs
//! `cipgw run` on the gateway with a DNS address, points the client
//! namespace's resolver at it (`/etc/netns/<client>/resolv.conf`, with
//! the search path of a Pod in namespace `default`), then sends the
//! requests as the seed does: `curl http://echo-server-clusterip:8080`,
//! the name resolved by the system resolver; prints who answered, and
//! `host` of the headless variant listing the three Pods. Everything is
//! removed afterwards, also on Ctrl-C or a failure.
//! removed afterwards, also on Ctrl-C (exit status 130, as a shell
//! reports a job Ctrl-C ended) or a failure; `--keep` leaves the lab up
//! until Ctrl-C and says how to reach the gateway.
//!
//! The gateway runs in a process group of its own: a terminal's Ctrl-C
//! reaches only the demo (and its curl), which then stops the gateway, so
//! an interruption is never reported as a failure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddrV4;
use std::os::unix::process::ExitStatusExt as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cipgw::lab::{self, EchoServer, GatewayProcess, Topology};

pub(super) const SERVICE_PORT: u16 = 8080;
pub(super) const TARGET_PORT: u16 = 5678;
/// The demo gateway's `--conntrack-max`: flows enough for a lab, 5 MiB
/// taken at start (the default, sized from memory, would take a GiB here).
pub(super) const DEMO_CONNTRACK_MAX: &str = "65536";
/// The seed's Service name, and its headless variant's.
const SERVICE: &str = "echo-server-clusterip";
const HEADLESS: &str = "echo-server-headless";
/// The last octet of the DNS address in the VIP range.
const DNS_HOST: u8 = 53;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Requests to send to the ClusterIP.
    #[arg(long, default_value_t = 30)]
    pub requests: u32,
    /// Show the gateway's log as it runs.
    #[arg(long)]
    pub verbose: bool,
    /// After the requests, leave the lab and the gateway running (and
    /// print how to reach its admin endpoint and the VIP) until Ctrl-C.
    #[arg(long)]
    pub keep: bool,
    /// A cluster-shaped lab instead: client and echo-server Pods on
    /// nodes of one routed pod network, a one-arm gateway node running
    /// `cipgw run --snat` (the Pods see the gateway as their peer).
    #[arg(long)]
    pub snat: bool,
}

/// The demo's control file: the Service and its Pods, as `kubectl get
/// svc,pods -o yaml` would show them.
pub(super) fn control_file(vip: &str, pods: &[(String, String)]) -> String {
    let service = |name: &str, cluster_ip: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n\
             spec:\n  type: ClusterIP\n  clusterIP: {cluster_ip}\n  selector:\n    \
             app: echo-server\n  ports:\n  - name: http\n    port: {SERVICE_PORT}\n    \
             targetPort: {TARGET_PORT}\n    protocol: TCP\n"
        )
    };
    let mut yaml = service(SERVICE, vip);
    yaml.push_str("---\n");
    yaml.push_str(&service(HEADLESS, "None"));
    for (name, ip) in pods {
        let _ = write!(
            yaml,
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  \
             labels:\n    app: echo-server\nspec:\n  containers:\n  - name: echo\n    \
             image: hashicorp/http-echo\n    ports:\n    - containerPort: {TARGET_PORT}\n\
             status:\n  phase: Running\n  podIP: {ip}\n  conditions:\n  - type: Ready\n    \
             status: \"True\"\n"
        );
    }
    yaml
}

/// Who answered the demo's requests, counted as they come.
#[derive(Debug, Default)]
pub(super) struct Tally {
    served: BTreeMap<String, u32>,
    pub(super) failed: u32,
}

impl Tally {
    /// Prints request `i`'s answer (its `Hello from <pod> ...` line) or
    /// failure, and counts it.
    pub(super) fn record(&mut self, i: u32, answer: Result<String, impl std::fmt::Display>) {
        match answer {
            Ok(text) => {
                let line = text
                    .lines()
                    .find(|l| l.starts_with("Hello from"))
                    .unwrap_or(text.trim())
                    .to_owned();
                println!("  {i:>3}: {line}");
                let pod = line
                    .strip_prefix("Hello from ")
                    .and_then(|rest| rest.split_whitespace().next())
                    .unwrap_or("?")
                    .to_owned();
                *self.served.entry(pod).or_default() += 1;
            }
            Err(e) => {
                println!("  {i:>3}: failed: {e}");
                self.failed += 1;
            }
        }
    }

    /// Who served how many, as a bar chart.
    pub(super) fn print(&self) {
        println!("\nwho served the requests:");
        for (pod, n) in &self.served {
            println!("  {pod:<16} {n:>3}  {}", "#".repeat(*n as usize));
        }
        if self.failed > 0 {
            println!("  failed           {:>3}", self.failed);
        }
    }
}

pub fn demo(args: DemoArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid(2) has no preconditions and touches no memory.
    if unsafe { libc::geteuid() } != 0 {
        return Err(super::BadInput(
            "the demo builds network namespaces and attaches XDP programs: run it as root".into(),
        )
        .into());
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&interrupted))
            .context("installing signal handlers")?;
    }
    let stale = lab::remove_stale_namespaces().unwrap_or_default();
    if !stale.is_empty() {
        println!("removed {} namespaces left by an earlier run", stale.len());
    }
    if args.snat {
        return super::demo_snat::demo(args, interrupted);
    }

    println!("building the lab: client -> gateway -> 3 echo-server Pods (198.18.0.0/15)");
    let topology = Topology::two_arm("demo").pods(3).build()?;
    let info = topology.info().clone();
    let vip = info.vip(10);

    let mut servers = Vec::new();
    let mut pods = Vec::new();
    for (i, (pod, ns)) in info.pods.iter().zip(topology.pods()).enumerate() {
        let name = format!("echo-server-{}", i + 1);
        let addr = SocketAddrV4::new(pod.iface.addr, TARGET_PORT);
        servers.push(EchoServer::start_tcp(ns, addr, &name)?);
        println!("  pod {name:<14} {addr}");
        pods.push((name, pod.iface.addr.to_string()));
    }

    let dir = std::env::temp_dir().join(format!("cipgw-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _remove_dir = RemoveDir(dir.clone());
    let file = dir.join("services.yaml");
    std::fs::write(&file, control_file(&vip.to_string(), &pods))
        .with_context(|| format!("writing {}", file.display()))?;
    println!(
        "  service default/{SERVICE}  ClusterIP {vip}:{SERVICE_PORT} -> targetPort {TARGET_PORT}"
    );
    println!("  service default/{HEADLESS}   ClusterIP None (headless)");
    let dns = info.vip(DNS_HOST);
    let _resolv = ResolvConf::write(&info.client.ns, dns)?;
    println!(
        "  client resolver: nameserver {dns}, search default.svc.cluster.local \
         svc.cluster.local cluster.local"
    );

    let exe = std::env::current_exe().context("locating the cipgw binary")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut gw_args: Vec<String> = Vec::new();
    for iface in info.gateway.ifaces() {
        gw_args.extend(["--iface".into(), iface.to_owned()]);
    }
    gw_args.extend([
        "--control-file".into(),
        file.display().to_string(),
        "--service-cidr".into(),
        info.vip_range.to_string(),
        "--cores".into(),
        (cores - 1).to_string(),
        // The demo's connection table goes with its directory; a lab's
        // size, as a gateway takes its table's memory whole at start.
        "--state-dir".into(),
        dir.join("state").display().to_string(),
        "--conntrack-max".into(),
        DEMO_CONNTRACK_MAX.into(),
        "--dns-address".into(),
        dns.to_string(),
        "--cluster-cidr".into(),
        info.client_subnet.to_string(),
    ]);
    println!("starting: cipgw run {}", gw_args.join(" "));
    let gateway = GatewayProcess::start_own_group(
        &exe,
        topology.gateway(),
        &gw_args,
        args.verbose,
        Duration::from_secs(20),
    )?;

    let url = format!("http://{SERVICE}:{SERVICE_PORT}");
    println!("\nfrom the client, {} times: curl {url}", args.requests);
    let mut tally = Tally::default();
    for i in 1..=args.requests {
        // Relaxed: a flag checked between requests, ordering nothing else.
        if interrupted.load(Ordering::Relaxed) {
            println!("interrupted; cleaning up");
            break;
        }
        // `ip netns exec` bind-mounts the client's resolv.conf: curl
        // resolves the name through the system resolver, as in a Pod.
        let answer = run_in(
            &topology,
            "curl",
            &["--silent", "--show-error", "--max-time", "3", &url],
        );
        // Ctrl-C reaches curl and the demo together, but the demo's
        // handler may run on another thread after curl's exit is seen:
        // a curl killed by the signal is the interruption itself.
        if matches!(&answer, Err(e) if e.is::<super::Interrupted>()) {
            // Relaxed: as below; the flag orders nothing else.
            interrupted.store(true, Ordering::Relaxed);
        }
        // Relaxed: as above. A request cut short by Ctrl-C is no failure.
        if answer.is_err() && interrupted.load(Ordering::Relaxed) {
            println!("interrupted; cleaning up");
            break;
        }
        tally.record(i, answer);
    }
    tally.print();

    println!("\nthe headless variant, from the client: host {HEADLESS}");
    // Relaxed: as above.
    let headless = if interrupted.load(Ordering::Relaxed) {
        Err(anyhow::anyhow!("interrupted"))
    } else {
        run_in(&topology, "host", &[HEADLESS])
    };
    if matches!(&headless, Err(e) if e.is::<super::Interrupted>()) {
        // Relaxed: as above; `host` killed by Ctrl-C is the interruption.
        interrupted.store(true, Ordering::Relaxed);
    }
    match &headless {
        Ok(text) => {
            for line in text.lines() {
                println!("  {line}");
            }
        }
        // Relaxed: as above.
        Err(_) if interrupted.load(Ordering::Relaxed) => println!("  interrupted"),
        Err(e) => println!("  failed: {e}"),
    }

    // Relaxed: as above.
    if args.keep && !interrupted.load(Ordering::Relaxed) {
        let gw_ns = topology.gateway().name();
        let client_ns = topology.client().name();
        let exe = exe.display();
        println!(
            "\nthe lab stays up until Ctrl-C. The gateway's admin endpoint is \
             {admin} in namespace {gw_ns}:\n  \
             ip netns exec {gw_ns} {exe} status\n  \
             ip netns exec {gw_ns} {exe} services\n  \
             ip netns exec {gw_ns} {exe} conntrack\n  \
             ip netns exec {gw_ns} curl -s http://{admin}/metrics\n\
             and the Service answers from the client:\n  \
             ip netns exec {client_ns} curl -s http://{vip}:{SERVICE_PORT}/",
            admin = cipgw_config::settings::DEFAULT_ADMIN_ADDR,
        );
        // Relaxed: as above; bounded by the user's Ctrl-C (or SIGTERM).
        while !interrupted.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
        }
        println!("removing the lab");
    }

    let status = gateway.stop(Duration::from_secs(5))?;
    for s in servers {
        s.stop();
    }
    drop(topology);
    println!("\ngateway exited ({status}); lab removed");
    // Relaxed: as above. With --keep, Ctrl-C is the way out, not an
    // interruption.
    if interrupted.load(Ordering::Relaxed) && !args.keep {
        return Err(super::Interrupted.into());
    }
    if tally.failed > 0 {
        anyhow::bail!("{} requests failed", tally.failed);
    }
    let listed = headless.as_deref().unwrap_or_default();
    if info
        .pods
        .iter()
        .any(|p| !listed.contains(&format!("has address {}", p.iface.addr)))
    {
        anyhow::bail!("host {HEADLESS} did not list the three Pods");
    }
    if !status.success() {
        anyhow::bail!("the gateway exited with {status}");
    }
    Ok(())
}

/// Runs `program ARGS...` in the client namespace through `ip netns
/// exec` (so with the client's resolv.conf); its stdout, or why not.
fn run_in(topology: &Topology, program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = topology
        .client()
        .command(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if matches!(out.status.signal(), Some(libc::SIGINT | libc::SIGTERM)) {
        return Err(super::Interrupted.into());
    }
    if !out.status.success() {
        anyhow::bail!(
            "{program} {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The client namespace's resolver configuration, as a Pod in namespace
/// `default` has it; removed on drop.
struct ResolvConf(std::path::PathBuf);

impl ResolvConf {
    fn write(ns: &str, nameserver: std::net::Ipv4Addr) -> anyhow::Result<Self> {
        let dir = std::path::Path::new("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let guard = ResolvConf(dir.clone());
        std::fs::write(
            dir.join("resolv.conf"),
            format!(
                "nameserver {nameserver}\n\
                 search default.svc.cluster.local svc.cluster.local cluster.local\n\
                 options ndots:5\n"
            ),
        )
        .with_context(|| format!("writing {}/resolv.conf", dir.display()))?;
        Ok(guard)
    }
}

impl Drop for ResolvConf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes the demo's temporary directory on drop.
pub(super) struct RemoveDir(pub(super) std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
