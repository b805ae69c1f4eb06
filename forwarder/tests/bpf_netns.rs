//! The XDP program, its maps, AF_XDP sockets and the netlink monitor,
//! against a real kernel inside throwaway network namespaces.
//!
//! Cases:
//! - attach (auto -> native on veth), replace a stale `cipgw_xdp` left by a
//!   "crashed" gateway, refuse somebody else's program, SKB mode, detach on
//!   drop;
//! - VIP/backend maps: service tables applied as the daemon does (plan,
//!   then apply: additions before the table is published, removals after)
//!   write only the difference, and the kernel maps match the mirror at
//!   every write; an open connection's backend stays steered until the
//!   next change;
//! - netlink: the snapshot has the veth's connected route and MAC, a
//!   neighbour appears after a ping, `request_resolution` gets a managed
//!   neighbour resolved;
//! - AF_XDP: UDP and ICMP to a VIP and a UDP reply from a backend reach the
//!   socket; a ping to the gateway's own address and UDP from a non-backend
//!   port still reach the kernel.
//!
//! Needs root (skips with a message otherwise; fails when CI=true).
//! Addresses: 198.18.0.0/15 only (RFC 2544).

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cipgw::bpf::{AttachMode, BackendKey, BpfError, Steering, XdpMaps, XdpProgram, PROGRAM_NAME};
use cipgw::conntrack::{FlowKey, FlowMeta};
use cipgw::daemon::apply::{apply, Applied};
use cipgw::daemon::conntracks::Conntracks;
use cipgw::daemon::plan::Plan;
use cipgw::netlink;
use cipgw::table::{CompiledTable, TableHandle};
use cipgw::xsk::{self, QueueAssignment, WorkerIo, XskConfig, ZeroCopy};
use cipgw_config::settings::XdpMode;
use cipgw_config::{
    ClusterIp, Endpoint, EndpointState, Protocol, Service, ServiceKind, ServiceName, ServicePort,
    ServiceTable, TargetPort,
};

const GW_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const CLIENT_IP2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 10);
/// Reached through the second port.
const VIP2: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 10);
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_UDP: u8 = 17;

// ---------------------------------------------------------------------
// Harness.

/// Whether the test may run: root, or skip with a reason (a failure when
/// CI=true).
fn can_run(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(
                std::env::var("RUST_LOG").unwrap_or_else(|_| "cipgw=debug,libbpf=debug".into()),
            )
            .try_init();
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs root (network namespaces, XDP, AF_XDP) and CI=true forbids skipping");
    }
    eprintln!("skipping {test}: needs root (network namespaces, XDP, AF_XDP)");
    false
}

/// A network namespace, deleted on drop (also when the test panics).
struct Netns {
    name: String,
}

impl Netns {
    fn new(role: &str) -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        // Relaxed: only uniqueness matters.
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("cipgwt-bpf-{}-{n}{role}", std::process::id());
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME ARGS...`, which must succeed.
    fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// `ip netns exec NAME ARGS...`; whether it succeeded.
    fn exec_ok(&self, args: &[&str]) -> bool {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        Command::new(full[0])
            .args(&full[1..])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// `ip netns exec NAME ARGS...`, which must succeed; its output.
    fn exec_out(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs `f` on a thread that has entered this namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                enter_netns(&self.name);
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn enter_netns(name: &str) {
    let f = File::open(format!("/var/run/netns/{name}"))
        .unwrap_or_else(|e| panic!("opening netns {name}: {e}"));
    // SAFETY: setns with a valid namespace fd; it changes only this thread.
    let ret = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(ret, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `gw1`'s ifindex: past `cipgw_portidx` (free in a new namespace).
const GW1_IFINDEX: u32 = cipgw::bpf::PORT_INDEX_SIZE + 904;

/// A gateway namespace with `gw0` (198.18.0.1/24) wired to `cl0`
/// (198.18.0.2/24) in a client namespace that routes the VIP range via
/// the gateway. The client's veth computes full checksums (AF_XDP needs
/// them).
struct Topology {
    gw: Netns,
    client: Netns,
}

impl Topology {
    fn new() -> Topology {
        let gw = Netns::new("g");
        let client = Netns::new("c");
        // Two RX queues on the gateway side: one socket per queue.
        gw.ip(&[
            "link",
            "add",
            "gw0",
            "numrxqueues",
            "2",
            "numtxqueues",
            "2",
            "type",
            "veth",
            "peer",
            "name",
            "cl0",
            "numrxqueues",
            "2",
            "numtxqueues",
            "2",
            "netns",
            &client.name,
        ]);
        gw.ip(&["addr", "add", "198.18.0.1/24", "dev", "gw0"]);
        gw.ip(&["link", "set", "gw0", "up"]);
        client.ip(&["addr", "add", "198.18.0.2/24", "dev", "cl0"]);
        client.ip(&["addr", "add", "198.18.0.3/24", "dev", "cl0"]);
        client.ip(&["link", "set", "cl0", "up"]);
        client.ip(&["route", "add", "198.19.0.0/16", "via", "198.18.0.1"]);
        assert!(
            client.exec_ok(&["ethtool", "-K", "cl0", "tx", "off"]),
            "ethtool -K cl0 tx off"
        );
        Topology { gw, client }
    }

    /// Adds a second port: `gw1` (198.18.1.1/24) wired to `cl1`
    /// (198.18.1.2/24); the client reaches VIP2 through it. Its ifindex,
    /// [`GW1_IFINDEX`], is past the program's port index, so the program
    /// finds this port in `cipgw_ports` alone.
    fn add_second_port(&self) {
        self.gw.ip(&[
            "link",
            "add",
            "gw1",
            "index",
            &GW1_IFINDEX.to_string(),
            "type",
            "veth",
            "peer",
            "name",
            "cl1",
            "netns",
            &self.client.name,
        ]);
        self.gw.ip(&["addr", "add", "198.18.1.1/24", "dev", "gw1"]);
        self.gw.ip(&["link", "set", "gw1", "up"]);
        self.client
            .ip(&["addr", "add", "198.18.1.2/24", "dev", "cl1"]);
        self.client.ip(&["link", "set", "cl1", "up"]);
        self.client
            .ip(&["route", "add", "198.19.1.10/32", "via", "198.18.1.1"]);
        assert!(
            self.client.exec_ok(&["ethtool", "-K", "cl1", "tx", "off"]),
            "ethtool -K cl1 tx off"
        );
    }

    fn gw_link(&self) -> String {
        self.gw.ip(&["-d", "link", "show", "dev", "gw0"])
    }

    /// The XDP program on gw0 as `ip -d link` shows it: (mode keyword,
    /// "xdp" for native or "xdpgeneric", and program id).
    fn gw_xdp(&self) -> Option<(String, u32)> {
        let link = self.gw_link();
        let words: Vec<&str> = link.split_whitespace().collect();
        let mode = words
            .windows(3)
            .find(|w| w[0] == "mtu")
            .map(|w| w[2])
            .filter(|m| m.starts_with("xdp"))?;
        let id = words
            .windows(3)
            .find(|w| w[0] == "prog/xdp" && w[1] == "id")
            .and_then(|w| w[2].parse().ok())?;
        Some((mode.to_owned(), id))
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Loads a trivial XDP program (XDP_PASS) that is not cipgw's and
/// attaches it to `ifindex` in SKB mode; returns its fd.
fn attach_foreign_program(ifindex: u32) -> std::os::fd::OwnedFd {
    use libbpf_sys as sys;
    use std::os::fd::FromRawFd;
    let insns = [
        // r0 = XDP_PASS (BPF_ALU64 | BPF_MOV | BPF_K)
        sys::bpf_insn {
            code: 0xb7,
            imm: 2,
            ..Default::default()
        },
        // exit (BPF_JMP | BPF_EXIT)
        sys::bpf_insn {
            code: 0x95,
            ..Default::default()
        },
    ];
    let name = CString::new("other_xdp").expect("name");
    let license = CString::new("GPL").expect("license");
    // SAFETY: valid instruction array of the given length; name and
    // license outlive the call; no options.
    let fd = unsafe {
        sys::bpf_prog_load(
            sys::BPF_PROG_TYPE_XDP,
            name.as_ptr(),
            license.as_ptr(),
            insns.as_ptr(),
            insns.len() as sys::size_t,
            std::ptr::null_mut(),
        )
    };
    assert!(fd >= 0, "loading a foreign XDP program: errno {}", -fd);
    // SAFETY: the kernel just gave us this fd.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: plain syscall wrapper with a valid program fd.
    let ret = unsafe {
        sys::bpf_xdp_attach(
            ifindex as i32,
            fd.as_raw_fd(),
            sys::XDP_FLAGS_SKB_MODE,
            std::ptr::null(),
        )
    };
    assert_eq!(ret, 0, "attaching the foreign program: errno {}", -ret);
    fd
}

fn detach_skb(ifindex: u32) {
    // SAFETY: plain syscall wrapper.
    let ret = unsafe {
        libbpf_sys::bpf_xdp_detach(
            ifindex as i32,
            libbpf_sys::XDP_FLAGS_SKB_MODE,
            std::ptr::null(),
        )
    };
    assert_eq!(ret, 0, "detaching the foreign program: errno {}", -ret);
}

// ---------------------------------------------------------------------
// Cases.

#[test]
fn attach_replaces_stale_refuses_foreign_and_detaches_on_drop() {
    if !can_run("attach_replaces_stale_refuses_foreign_and_detaches_on_drop") {
        return;
    }
    let topo = Topology::new();
    topo.gw.run(|| {
        let ifindex = xsk::interface_index("gw0").expect("gw0 ifindex");

        // A gateway that "crashed": its program stays attached.
        let mut first = XdpProgram::load().expect("load");
        assert_eq!(
            first.attach(ifindex, XdpMode::Auto).expect("attach"),
            AttachMode::Native
        );
        let stale_id = first.program_id();
        assert_eq!(topo.gw_xdp(), Some(("xdp".into(), stale_id)));
        std::mem::forget(first);

        // The next one replaces it.
        let mut second = XdpProgram::load().expect("load again");
        assert_ne!(second.program_id(), stale_id);
        assert_eq!(
            second
                .attach(ifindex, XdpMode::Auto)
                .expect("replace stale"),
            AttachMode::Native
        );
        assert_eq!(topo.gw_xdp(), Some(("xdp".into(), second.program_id())));

        // Switching modes removes the program in the other mode first
        // (the kernel allows only one of native and generic).
        assert_eq!(
            second.attach(ifindex, XdpMode::Skb).expect("switch to skb"),
            AttachMode::Skb
        );
        assert_eq!(
            topo.gw_xdp(),
            Some(("xdpgeneric".into(), second.program_id()))
        );
        assert_eq!(second.attached(), vec![(ifindex, AttachMode::Skb)]);
        second.detach(ifindex).expect("detach");
        assert_eq!(topo.gw_xdp(), None, "detached");

        // Somebody else's program is never replaced.
        let foreign = attach_foreign_program(ifindex);
        match second.attach(ifindex, XdpMode::Auto) {
            Err(BpfError::ForeignProgram { iface, program, .. }) => {
                assert!(iface.contains("gw0"), "error names the interface: {iface}");
                assert_eq!(program, "other_xdp");
            }
            other => panic!("expected ForeignProgram, got {other:?}"),
        }
        assert_eq!(
            topo.gw_xdp().map(|x| x.0),
            Some("xdpgeneric".into()),
            "foreign program untouched"
        );
        detach_skb(ifindex);
        drop(foreign);

        // Drop detaches.
        assert_eq!(
            second
                .attach(ifindex, XdpMode::Native)
                .expect("attach native"),
            AttachMode::Native
        );
        assert!(topo.gw_link().contains(PROGRAM_NAME));
        drop(second);
        assert_eq!(topo.gw_xdp(), None, "detached on drop");
    });
}

#[test]
fn drop_from_another_namespace_detaches_in_the_right_one() {
    if !can_run("drop_from_another_namespace_detaches_in_the_right_one") {
        return;
    }
    let topo = Topology::new();
    let prog = topo.gw.run(|| {
        let ifindex = xsk::interface_index("gw0").expect("gw0 ifindex");
        let mut prog = XdpProgram::load().expect("load");
        prog.attach(ifindex, XdpMode::Skb).expect("attach");
        prog
    });
    assert_eq!(topo.gw_xdp().map(|x| x.0), Some("xdpgeneric".into()));
    // Dropped on this thread, which is in the test's own namespace.
    drop(prog);
    assert_eq!(topo.gw_xdp(), None, "detached in the gateway's namespace");
}

/// A Service at `vip` with one port (`port`, `protocol`) whose endpoints
/// are `(address, target port)`; without a port when `port` is 0.
fn service(
    name: &str,
    vip: Ipv4Addr,
    port: u16,
    protocol: Protocol,
    endpoints: &[(Ipv4Addr, u16)],
) -> Service {
    Service {
        name: ServiceName::new("default", name),
        kind: ServiceKind::ClusterIp,
        cluster_ip: ClusterIp::single(std::net::IpAddr::from(vip)),
        ip_family_policy: cipgw_config::IpFamilyPolicy::SingleStack,
        ip_families: vec![cipgw_config::IpFamily::V4],
        session_affinity: None,
        lb_algorithm: None,
        external_name: None,
        publish_not_ready_addresses: false,
        ports: (port != 0)
            .then(|| ServicePort {
                name: None,
                port,
                protocol,
                target_port: TargetPort::Number(endpoints.first().map_or(port, |e| e.1)),
                endpoints: endpoints
                    .iter()
                    .map(|&(ip, port)| Endpoint {
                        ip: ip.into(),
                        port,
                        state: EndpointState::READY,
                        pod: None,
                        hostname: None,
                    })
                    .collect(),
            })
            .into_iter()
            .collect(),
    }
}

/// The program's maps as `apply` writes them, each write checked against
/// the kernel's map and recorded with the table generation published
/// when it was made.
struct Checked<'a> {
    program: &'a mut XdpProgram,
    table: TableHandle,
    /// (an addition, generation published then).
    writes: Vec<(bool, u64)>,
}

impl Checked<'_> {
    fn record(&mut self, added: bool) {
        self.writes.push((added, self.table.current().generation()));
    }
}

impl XdpMaps for Checked<'_> {
    fn steering(&self) -> &Steering {
        self.program.steering()
    }

    fn add_vip(&mut self, vip: IpAddr) -> Result<(), BpfError> {
        self.program.add_vip(vip)?;
        assert!(self.program.vip_in_kernel(vip)?, "{vip} added");
        self.record(true);
        Ok(())
    }

    fn remove_vip(&mut self, vip: IpAddr) -> Result<(), BpfError> {
        self.program.remove_vip(vip)?;
        assert!(!self.program.vip_in_kernel(vip)?, "{vip} removed");
        self.record(false);
        Ok(())
    }

    fn add_backend(&mut self, b: BackendKey) -> Result<(), BpfError> {
        self.program.add_backend(b)?;
        assert!(
            self.program.backend_in_kernel(b.0, b.1, b.2)?,
            "{b:?} added"
        );
        self.record(true);
        Ok(())
    }

    fn remove_backend(&mut self, b: BackendKey) -> Result<(), BpfError> {
        self.program.remove_backend(b)?;
        assert!(
            !self.program.backend_in_kernel(b.0, b.1, b.2)?,
            "{b:?} removed"
        );
        self.record(false);
        Ok(())
    }
}

/// The gateway's side of a table change: the published table and
/// conntrack, as the daemon holds them.
struct Control {
    model: Arc<ServiceTable>,
    table: TableHandle,
    conntracks: Conntracks,
    carried: HashSet<cipgw::daemon::plan::Target>,
}

impl Control {
    fn new() -> Control {
        Control {
            model: Arc::new(ServiceTable::default()),
            table: TableHandle::new(CompiledTable::empty()),
            conntracks: Conntracks::in_memory(),
            carried: HashSet::new(),
        }
    }

    /// Plans and applies `model` on `program` as the daemon does; checks
    /// that every addition came before the table was published and every
    /// removal after.
    fn change(&mut self, model: ServiceTable, program: &mut XdpProgram) -> (Plan, Applied) {
        let carried = std::mem::take(&mut self.carried);
        let plan = Plan::new(&self.model, &model, carried, program.steering());
        let model = Arc::new(model);
        let old = self.table.current().generation();
        let compiled = CompiledTable::compile(Arc::clone(&model), old + 1)
            .with_retiring_of(plan.retiring_of::<Ipv4Addr>());
        let mut maps = Checked {
            program,
            table: self.table.clone(),
            writes: Vec::new(),
        };
        let applied = apply(
            &plan,
            compiled,
            &self.table,
            &self.conntracks,
            &mut maps,
            Duration::from_secs(1),
        )
        .expect("apply");
        for &(added, generation) in &maps.writes {
            let want = if added { old } else { old + 1 };
            assert_eq!(generation, want, "make before break: {:?}", maps.writes);
        }
        assert_eq!(
            maps.writes.len(),
            plan.add().len() + plan.remove().len() + plan.released(&applied.lingering).len(),
            "only the difference is written"
        );
        self.model = model;
        self.carried = applied.lingering.clone();
        (plan, applied)
    }
}

#[test]
fn applied_tables_write_only_the_difference_make_before_break() {
    if !can_run("applied_tables_write_only_the_difference_make_before_break") {
        return;
    }
    let mut prog = XdpProgram::load().expect("load");
    let ip = |s: &str| s.parse::<Ipv4Addr>().expect("ip");
    let (vip1, vip2, vip3) = (ip("198.19.0.1"), ip("198.19.0.2"), ip("198.19.0.3"));
    let (pod1, pod2, pod3) = (ip("198.18.1.1"), ip("198.18.1.2"), ip("198.18.1.3"));
    let first = || ServiceTable {
        services: vec![
            service(
                "one",
                vip1,
                80,
                Protocol::Tcp,
                &[(pod1, 8080), (pod3, 8080)],
            ),
            service("two", vip2, 53, Protocol::Udp, &[(pod2, 53)]),
        ],
    };
    let mut control = Control::new();

    let (plan, _) = control.change(first(), &mut prog);
    assert_eq!((plan.add().vips.len(), plan.add().backends.len()), (2, 3));
    assert!(prog.backend_in_kernel(pod2.into(), 53, 17).expect("lookup"));
    assert!(!prog.backend_in_kernel(pod2.into(), 53, 6).expect("lookup"));
    let unchanged = Plan::new(&first(), &first(), [], prog.steering());
    assert!(unchanged.add().is_empty() && unchanged.remove().is_empty());

    // An open connection to pod3, which is about to go.
    let open = FlowKey {
        src: CLIENT_IP,
        dst: vip1,
        src_port: 40000,
        dst_port: 80,
        protocol: Protocol::Tcp,
    };
    control
        .conntracks
        .v4
        .insert(open, (pod3, 8080), 0, FlowMeta::default())
        .expect("track");

    // "one" goes (pod1 stays a backend, of "two"'s new TCP port), "two"
    // loses its UDP port, "three" comes without ports.
    let second = ServiceTable {
        services: vec![
            service("three", vip3, 0, Protocol::Tcp, &[]),
            service("two", vip2, 80, Protocol::Tcp, &[(pod1, 8080)]),
        ],
    };
    let (plan, applied) = control.change(second, &mut prog);
    assert_eq!(plan.add().vips, [IpAddr::from(vip3)].into());
    assert_eq!(plan.remove().vips, [IpAddr::from(vip1)].into());
    assert!(!prog.vip_in_kernel(vip1.into()).expect("lookup"));
    assert!(prog.vip_in_kernel(vip3.into()).expect("lookup"));
    assert!(
        !prog.backend_in_kernel(pod2.into(), 53, 17).expect("lookup"),
        "the UDP port's backend went after the retirement pass"
    );
    assert_eq!(
        applied.lingering,
        [(vip1.into(), 80, Protocol::Tcp, pod3.into(), 8080)].into()
    );
    assert!(
        prog.backend_in_kernel(pod3.into(), 8080, 6)
            .expect("lookup"),
        "the open connection's replies stay steered"
    );

    // The connection ends; the next change removes what is left.
    assert!(control.conntracks.v4.remove(&open));
    let (_, applied) = control.change(ServiceTable::default(), &mut prog);
    assert!(applied.lingering.is_empty());
    assert_eq!(prog.steering(), &Steering::default());
    for vip in [vip1, vip2, vip3] {
        assert!(!prog.vip_in_kernel(vip.into()).expect("lookup"), "{vip}");
    }
    for (pod, port, proto) in [(pod1, 8080, 6), (pod2, 53, 17), (pod3, 8080, 6)] {
        assert!(
            !prog
                .backend_in_kernel(pod.into(), port, proto)
                .expect("lookup"),
            "{pod}:{port}/{proto}"
        );
    }

    // Slots are bounded.
    assert!(prog.register_socket(1024, 0).is_err());
    assert!(prog.set_port(1, 4096).is_err());

    // The program's port index holds every ifindex userspace puts there
    // (its size is defined in the program and in `cipgw::bpf` alike).
    let last = cipgw::bpf::PORT_INDEX_SIZE - 1;
    prog.set_port(last, 7)
        .expect("a port at the port index's last ifindex");
    assert_eq!(
        prog.indexed_port(last).expect("read the port index"),
        Some(7),
        "the port index's last entry"
    );
    prog.remove_port(last).expect("remove that port");
    assert_eq!(
        prog.indexed_port(last).expect("read the port index"),
        None,
        "a removed port leaves the port index"
    );
}

#[test]
fn netlink_snapshot_tracks_routes_and_neighbours() {
    if !can_run("netlink_snapshot_tracks_routes_and_neighbours") {
        return;
    }
    let topo = Topology::new();
    let client_mac = topo
        .client
        .run(|| xsk::interface_mac("cl0").expect("cl0 mac"));
    topo.gw.run(|| {
        let ifindex = xsk::interface_index("gw0").expect("gw0 ifindex");
        let mac = xsk::interface_mac("gw0").expect("gw0 mac");
        let monitor = netlink::spawn_monitor(vec!["gw0".into()]).expect("monitor");
        let snap = monitor.snapshot();
        assert_eq!(snap.ports()[0].ifindex, ifindex);
        assert_eq!(snap.ports()[0].mac, mac);
        assert!(
            snap.routes()
                .iter()
                .any(|r| r.dst == Ipv4Addr::new(198, 18, 0, 0)
                    && r.prefix_len == 24
                    && r.ifindex == ifindex
                    && r.gateway.is_none()),
            "connected route: {:?}",
            snap.routes()
        );
        let hop = snap.next_hop(CLIENT_IP).expect("next hop");
        assert_eq!((hop.port, hop.ip), (0, CLIENT_IP));
        assert_eq!(
            snap.neighbour(0, CLIENT_IP),
            None,
            "no neighbour before traffic"
        );

        // A ping makes the kernel learn the client's MAC; the monitor
        // publishes it.
        assert!(
            topo.client
                .exec_ok(&["ping", "-c", "1", "-W", "2", "198.18.0.1"]),
            "ping gateway"
        );
        assert!(
            wait_for(Duration::from_secs(3), || monitor
                .snapshot()
                .neighbour(0, CLIENT_IP)
                == Some(client_mac)),
            "neighbour after ping"
        );

        // Resolution on request, as a managed entry.
        let handle = monitor.handle();
        let resolver = monitor.resolver();
        assert!(resolver.request_resolution(ifindex, CLIENT_IP2));
        assert!(
            wait_for(Duration::from_secs(3), || handle
                .load()
                .neighbour(0, CLIENT_IP2)
                == Some(client_mac)),
            "requested neighbour resolved"
        );
        let managed = netlink::dump_neighbours()
            .expect("neighbour dump")
            .into_iter()
            .any(|n| n.ip == CLIENT_IP2 && n.ifindex == ifindex && n.managed);
        assert!(managed, "resolved as a managed neighbour");

        // A route change is picked up too.
        topo.gw
            .ip(&["route", "add", "198.19.128.0/17", "via", "198.18.0.2"]);
        assert!(
            wait_for(Duration::from_secs(3), || monitor
                .snapshot()
                .next_hop(Ipv4Addr::new(198, 19, 200, 1))
                .map(|h| h.ip)
                == Ok(CLIENT_IP)),
            "new route published"
        );
        // IPv6: connected route, a neighbour learnt from traffic, one
        // resolved on request, a route change.
        let v6 = |s: &str| -> std::net::Ipv6Addr { s.parse().expect("literal") };
        topo.gw
            .ip(&["-6", "addr", "add", "2001:2::1/64", "dev", "gw0", "nodad"]);
        topo.client
            .ip(&["-6", "addr", "add", "2001:2::2/64", "dev", "cl0", "nodad"]);
        topo.client
            .ip(&["-6", "addr", "add", "2001:2::3/64", "dev", "cl0", "nodad"]);
        assert!(
            wait_for(Duration::from_secs(3), || monitor
                .snapshot()
                .next_hop_of(v6("2001:2::2"))
                .map(|h| (h.port, h.ip))
                == Ok((0, v6("2001:2::2")))),
            "IPv6 connected route: {:?}",
            monitor.snapshot().routes6()
        );
        assert!(
            topo.client.exec_ok(&[
                "ping",
                "-6",
                "-c",
                "1",
                "-W",
                "2",
                "-I",
                "2001:2::2",
                "2001:2::1"
            ]),
            "ping6 gateway"
        );
        assert!(
            wait_for(Duration::from_secs(3), || monitor
                .snapshot()
                .neighbour_of(0, v6("2001:2::2"))
                == Some(client_mac)),
            "IPv6 neighbour after ping: {:?} (client {client_mac:?}); gw0 port {:?}",
            netlink::dump_neighbours6(),
            monitor.snapshot().ports()
        );
        assert!(resolver.request_resolution(ifindex, v6("2001:2::3")));
        assert!(
            wait_for(Duration::from_secs(3), || handle
                .load()
                .neighbour_of(0, v6("2001:2::3"))
                == Some(client_mac)),
            "requested IPv6 neighbour resolved"
        );
        topo.gw
            .ip(&["-6", "route", "add", "2001:2:0:ff::/64", "via", "2001:2::2"]);
        assert!(
            wait_for(Duration::from_secs(3), || monitor
                .snapshot()
                .next_hop_of(v6("2001:2:0:ff::10"))
                .map(|h| h.ip)
                == Ok(v6("2001:2::2"))),
            "new IPv6 route published"
        );
        let started = Instant::now();
        drop(monitor);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "monitor stops promptly"
        );
    });
}

/// Frames read from the socket: (IP protocol, source, destination,
/// source port, destination port, UDP payload, receiving port).
type Seen = (u8, Ipv4Addr, Ipv4Addr, u16, u16, Vec<u8>, u8);

fn parse_frame(f: &[u8], port: u8) -> Option<Seen> {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &f[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let proto = ip[9];
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let l4 = ip.get(ihl..)?;
    if proto == IPPROTO_UDP && l4.len() >= 8 {
        let sport = u16::from_be_bytes([l4[0], l4[1]]);
        let dport = u16::from_be_bytes([l4[2], l4[3]]);
        return Some((proto, src, dst, sport, dport, l4[8..].to_vec(), port));
    }
    Some((proto, src, dst, 0, 0, Vec::new(), port))
}

#[test]
fn af_xdp_socket_gets_vip_and_backend_traffic_and_kernel_keeps_the_rest() {
    if !can_run("af_xdp_socket_gets_vip_and_backend_traffic_and_kernel_keeps_the_rest") {
        return;
    }
    let topo = Topology::new();
    topo.add_second_port();
    topo.gw.run(|| {
        let ifindex = xsk::interface_index("gw0").expect("gw0 ifindex");
        let ifindex1 = xsk::interface_index("gw1").expect("gw1 ifindex");
        let queues = xsk::rx_queue_count("gw0").expect("rx queues");
        // `ip netns exec` mounts the namespace's own sysfs: count there.
        let sysfs = topo.gw.exec_out(&["ls", "/sys/class/net/gw0/queues"]);
        let in_sysfs = sysfs
            .split_whitespace()
            .filter(|q| q.starts_with("rx-"))
            .count();
        assert_eq!(queues as usize, in_sysfs, "RX queues of gw0: {sysfs}");
        assert_eq!(queues, 2, "gw0 was created with two RX queues");
        let queues1 = xsk::rx_queue_count("gw1").expect("rx queues");
        assert_eq!(
            xsk::interface_mac("gw0").ok().map(|m| m != [0; 6]),
            Some(true)
        );

        let mut prog = XdpProgram::load().expect("load");
        let mode = prog.attach(ifindex, XdpMode::Auto).expect("attach");
        prog.attach(ifindex1, XdpMode::Auto).expect("attach gw1");
        let config = XskConfig {
            frame_count: 512,
            rx_size: 128,
            tx_size: 128,
            fill_size: 128,
            comp_size: 128,
            zero_copy: ZeroCopy::Auto,
            ..XskConfig::default()
        };
        // One worker serving both ports: every queue of gw0 and gw1.
        let mut assignments: Vec<QueueAssignment> = (0..queues)
            .map(|queue| QueueAssignment {
                port: 0,
                ifname: "gw0".into(),
                ifindex,
                queue,
            })
            .collect();
        assignments.extend((0..queues1).map(|queue| QueueAssignment {
            port: 1,
            ifname: "gw1".into(),
            ifindex: ifindex1,
            queue,
        }));
        let mut io = WorkerIo::open(&config, &assignments).expect("AF_XDP sockets");
        assert_eq!(io.sockets.len(), assignments.len());
        assert!(
            io.sockets.iter().all(|s| !s.zero_copy),
            "veth has no zero-copy"
        );
        let given = io.prefill(64);
        assert_eq!(given, 64 * io.sockets.len());
        assert_eq!(io.free_count(), 512 - given);

        // Slots: gw0 after a gap (exercises base + queue), gw1 after it.
        let bases = cipgw::bpf::base_slots(&[3, queues, queues1]).expect("slots");
        let base_of = |ifx: u32| if ifx == ifindex { bases[1] } else { bases[2] };
        prog.set_port(ifindex, bases[1]).expect("port gw0");
        prog.set_port(ifindex1, bases[2]).expect("port gw1");
        // gw0 is in the program's port index (an array by ifindex); gw1,
        // past it, is looked up in `cipgw_ports`: traffic on both ports
        // below takes both of the program's paths to a socket.
        assert!(
            ifindex < cipgw::bpf::PORT_INDEX_SIZE && ifindex1 == GW1_IFINDEX,
            "gw0's ifindex {ifindex} below the index, gw1's {ifindex1} past it"
        );
        assert_eq!(
            prog.indexed_port(ifindex).expect("read the port index"),
            Some(bases[1]),
            "gw0's base slot in the port index"
        );
        assert_eq!(
            prog.indexed_port(ifindex1).expect("read the port index"),
            None,
            "gw1 is past the port index"
        );
        for s in &io.sockets {
            prog.register_socket(base_of(s.ifindex) + s.queue, s.fd())
                .expect("register");
        }
        // VIP, whose endpoint is the client's port 7000 (its datagrams
        // from there are replies), and VIP2, without ports: steered by the
        // daemon's plan and apply.
        let model = ServiceTable {
            services: vec![
                service("vip", VIP, 5000, Protocol::Udp, &[(CLIENT_IP, 7000)]),
                service("vip2", VIP2, 0, Protocol::Udp, &[]),
            ],
        };
        let (plan, _) = Control::new().change(model, &mut prog);
        assert!(plan
            .add()
            .backends
            .contains(&(CLIENT_IP.into(), 7000, IPPROTO_UDP)));

        // The gateway's kernel listens on its own address.
        let kernel_sock = UdpSocket::bind((GW_IP, 9999)).expect("bind gw udp");
        kernel_sock
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");

        topo.client.run(|| {
            let to_vip = UdpSocket::bind((CLIENT_IP, 0)).expect("bind");
            to_vip
                .send_to(b"cipgw-vip", (VIP, 5000))
                .expect("send to VIP");
            let to_vip2 = UdpSocket::bind(("198.18.1.2", 0)).expect("bind cl1");
            to_vip2
                .send_to(b"cipgw-vip2", (VIP2, 5001))
                .expect("send to VIP2");
            let reply = UdpSocket::bind((CLIENT_IP, 7000)).expect("bind backend port");
            reply
                .send_to(b"cipgw-reply", (GW_IP, 9999))
                .expect("send backend reply");
            let other = UdpSocket::bind((CLIENT_IP, 7001)).expect("bind other port");
            other
                .send_to(b"cipgw-kernel", (GW_IP, 9999))
                .expect("send to kernel");
        });
        // ICMP to a VIP is redirected too (no answer: nobody replies).
        topo.client
            .exec_ok(&["ping", "-c", "1", "-W", "1", "198.19.0.10"]);

        // Collect what the sockets received, bounded in time and count.
        let mut seen: Vec<Seen> = Vec::new();
        let mut frames = Vec::with_capacity(64);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && seen.len() < 64 {
            let want_all = [IPPROTO_ICMP, IPPROTO_UDP]
                .iter()
                .all(|p| seen.iter().any(|s| s.0 == *p))
                && seen.iter().any(|s| s.5 == b"cipgw-reply")
                && seen.iter().any(|s| s.5 == b"cipgw-vip2");
            if want_all {
                break;
            }
            let mut received = 0;
            for s in 0..io.sockets.len() {
                received += io.receive(s, &mut frames);
                for frame in &frames {
                    // SAFETY: a frame of this WorkerIo, just received.
                    let data = unsafe { io.data(frame) };
                    if let Some(p) = parse_frame(data.contents(), io.sockets[s].port) {
                        seen.push(p);
                    }
                }
                // Back to the free list, and from there to the fill ring.
                io.recycle_all(frames.drain(..));
                io.reclaim_and_refill(s);
            }
            if received == 0 {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        assert!(
            seen.iter().any(|s| s.0 == IPPROTO_UDP
                && s.2 == VIP
                && s.4 == 5000
                && s.5 == b"cipgw-vip"
                && s.6 == 0),
            "UDP to the VIP reached AF_XDP on port 0 ({mode} mode): {seen:?}"
        );
        assert!(
            seen.iter()
                .any(|s| s.2 == VIP2 && s.5 == b"cipgw-vip2" && s.6 == 1),
            "UDP to VIP2 reached the second port's socket (shared UMEM): {seen:?}"
        );
        assert!(
            seen.iter().any(|s| s.0 == IPPROTO_ICMP && s.2 == VIP),
            "ICMP to the VIP reached AF_XDP: {seen:?}"
        );
        assert!(
            seen.iter()
                .any(|s| s.1 == CLIENT_IP && s.3 == 7000 && s.5 == b"cipgw-reply"),
            "backend reply reached AF_XDP: {seen:?}"
        );
        assert!(
            !seen.iter().any(|s| s.5 == b"cipgw-kernel"),
            "non-backend traffic must not be redirected: {seen:?}"
        );

        // The kernel still gets everything else.
        let mut buf = [0u8; 64];
        let (n, from) = kernel_sock
            .recv_from(&mut buf)
            .expect("kernel got the non-backend datagram");
        assert_eq!(&buf[..n], b"cipgw-kernel");
        assert_eq!(from.port(), 7001);
        assert!(
            topo.client
                .exec_ok(&["ping", "-c", "1", "-W", "2", "198.18.0.1"]),
            "ping to the gateway's own address works while attached"
        );

        // With the sockets unregistered, VIP traffic goes to the kernel
        // (bpf_redirect_map falls back to XDP_PASS): nothing reaches them.
        for s in &io.sockets {
            prog.unregister_socket(base_of(s.ifindex) + s.queue)
                .expect("unregister");
        }
        topo.client.run(|| {
            let to_vip = UdpSocket::bind((CLIENT_IP, 0)).expect("bind");
            to_vip
                .send_to(b"cipgw-after", (VIP, 5000))
                .expect("send to VIP");
        });
        let mut late = 0;
        for _ in 0..5 {
            for s in 0..io.sockets.len() {
                late += io.receive(s, &mut frames);
                io.recycle_all(frames.drain(..));
                io.reclaim_and_refill(s);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        assert_eq!(late, 0, "no frame for an unregistered socket");
        prog.remove_port(ifindex).expect("remove port");
        prog.remove_port(ifindex1).expect("remove port");
        assert_eq!(
            prog.indexed_port(ifindex).expect("read the port index"),
            None,
            "a removed port leaves the port index"
        );
        drop(io);
        prog.detach_all().expect("detach");
        assert_eq!(topo.gw_xdp(), None);
    });
}
