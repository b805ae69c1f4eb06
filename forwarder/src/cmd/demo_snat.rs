//! `cipgw demo --snat`: the echo-server demo in a cluster-shaped lab,
//! where only source NAT makes the ClusterIP work.
//!
//! Builds `lab::Cluster` (a client Pod on node1, echo-server Pods on
//! node2 and node3, one routed pod network, a one-arm gateway node the
//! nodes route the service CIDR to), runs `cipgw run --snat` on the
//! gateway, sends requests to the VIP from the client Pod, and prints who
//! answered and which peer address the Pods saw (the gateway's, not the
//! client's). Everything is removed afterwards, also on Ctrl-C.

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cipgw::lab::{self, ClusterBuilder, GatewayProcess};

use super::demo::{control_file, DemoArgs, RemoveDir, SERVICE_PORT, TARGET_PORT};

const PODS: [&str; 3] = ["echo-server-1", "echo-server-2", "echo-server-3"];

pub fn demo(args: DemoArgs, interrupted: Arc<AtomicBool>) -> anyhow::Result<()> {
    println!(
        "building a cluster lab (198.18.0.0/15): client Pod on node1, echo-server Pods on \
         node2 and node3, a one-arm gateway node"
    );
    let cluster = ClusterBuilder::new("demo")
        .node(&["client"])
        .node(&PODS[..2])
        .node(&PODS[2..])
        .build()?;
    let info = cluster.info().clone();
    let vip = info.vip(10);
    let servers = cluster.start_tcp_echo(&PODS, TARGET_PORT)?;
    let mut pods = Vec::new();
    for name in PODS {
        let pod = info.pod(name).context("a demo Pod")?;
        println!("  pod {name:<14} {}:{TARGET_PORT}", pod.iface.addr);
        pods.push((name.to_owned(), pod.iface.addr.to_string()));
    }
    let client = info.pod("client").context("the client Pod")?;
    println!("  client Pod     {}", client.iface.addr);

    let dir = std::env::temp_dir().join(format!("cipgw-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _remove_dir = RemoveDir(dir.clone());
    let file = dir.join("services.yaml");
    std::fs::write(&file, control_file(&vip.to_string(), &pods))
        .with_context(|| format!("writing {}", file.display()))?;
    println!(
        "  service default/echo-server  ClusterIP {vip}:{SERVICE_PORT} -> targetPort {TARGET_PORT}"
    );

    let exe = std::env::current_exe().context("locating the cipgw binary")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let gw_args: Vec<String> = [
        "--iface",
        &info.gateway.name,
        "--snat",
        "--control-file",
        &file.display().to_string(),
        "--service-cidr",
        &info.vip_range.to_string(),
        "--cluster-cidr",
        &info.cluster_cidr.to_string(),
        "--cores",
        &(cores - 1).to_string(),
        "--state-dir",
        &dir.join("state").display().to_string(),
        "--conntrack-max",
        super::demo::DEMO_CONNTRACK_MAX,
    ]
    .iter()
    .map(|a| (*a).to_owned())
    .collect();
    println!("starting: cipgw run {}", gw_args.join(" "));
    let gateway = GatewayProcess::start(
        &exe,
        cluster.gateway(),
        &gw_args,
        args.verbose,
        Duration::from_secs(20),
    )?;
    let client_ns = cluster.pod_ns("client").context("the client's namespace")?;

    println!(
        "\nsending {} requests to http://{vip}:{SERVICE_PORT}/ from the client Pod:",
        args.requests
    );
    let target = SocketAddrV4::new(vip, SERVICE_PORT);
    let mut tally = super::demo::Tally::default();
    for i in 1..=args.requests {
        // Relaxed: a flag checked between requests, ordering nothing else.
        if interrupted.load(Ordering::Relaxed) {
            println!("interrupted; cleaning up");
            break;
        }
        let answer = client_ns.try_run(move || {
            lab::tcp_request(target, b"GET / HTTP/1.0\r\n\r\n", Duration::from_secs(3))
        });
        // Relaxed: as above. A request cut short by Ctrl-C is no failure.
        if answer.is_err() && interrupted.load(Ordering::Relaxed) {
            println!("interrupted; cleaning up");
            break;
        }
        tally.record(i, answer);
    }
    tally.print();
    println!("\nwho the Pods saw as their peer (source NAT):");
    for s in &servers {
        let peers: Vec<String> = s.peers().iter().map(ToString::to_string).collect();
        println!("  {:<16} {}", s.pod(), peers.join(", "));
    }
    println!(
        "  (the gateway is {}; the client Pod, {}, stays hidden)",
        info.gateway.addr, client.iface.addr
    );

    let status = gateway.stop(Duration::from_secs(5))?;
    for s in servers {
        s.stop();
    }
    drop(cluster);
    println!("\ngateway exited ({status}); lab removed");
    // Relaxed: as above.
    if interrupted.load(Ordering::Relaxed) {
        return Err(super::Interrupted.into());
    }
    if tally.failed > 0 {
        anyhow::bail!("{} requests failed", tally.failed);
    }
    if !status.success() {
        anyhow::bail!("the gateway exited with {status}");
    }
    Ok(())
}
