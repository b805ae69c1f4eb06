//! `cipgw run`: settings from flags (and the TOML file `--config` turns
//! into flags, see `settings_file`), then the daemon.

use std::path::PathBuf;
use std::time::Duration;

use cipgw_config::conntrack::Timeouts;
use cipgw_config::settings::ServiceCidrs;
use cipgw_config::settings::{
    self, parse_duration, ConntrackSettings, IoSettings, Settings, Source, XdpMode,
};
use ipnet::IpNet;

use super::lb::LbArgs;
use super::BadInput;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// TOML file with any of the flags of this command as keys (`iface =
    /// ["eth1"]`, `control-file = "..."`, `cluster-cidr = [...]`,
    /// `log-level = "debug"`; a table groups keys: `[conntrack]` with
    /// `max` or `conntrack-max`); flags given override it [default: none].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address of the admin HTTP endpoint: /metrics, /healthz, /readyz
    /// and the JSON views the status/services/conntrack commands read; a
    /// host name is resolved once at start [default: 127.0.0.1:9477].
    #[arg(long, value_name = "ADDR", value_parser = parse_socket_addr)]
    pub admin: Option<std::net::SocketAddr>,
    /// Address serving only /metrics, /healthz and /readyz, for
    /// Prometheus and probes: `0.0.0.0:9478` to be scraped from other
    /// nodes without exposing the JSON views (client addresses) of
    /// --admin [default: 127.0.0.1:9478].
    #[arg(long, value_name = "ADDR", value_parser = parse_socket_addr)]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Interface to attach to; repeat for a two-arm gateway (client side
    /// and Pod side) [default: none; at least one is required].
    #[arg(long = "iface", value_name = "IF")]
    pub ifaces: Vec<String>,
    /// Control file of Kubernetes manifests (Services, EndpointSlices,
    /// Pods, Lists) to take the service table from; watched, and reloaded
    /// when it changes (an invalid version changes nothing) [default:
    /// none].
    #[arg(long, value_name = "FILE", conflicts_with = "kubernetes")]
    pub control_file: Option<PathBuf>,
    /// Take Services and EndpointSlices from the Kubernetes API (in-cluster
    /// configuration, or --kubeconfig).
    #[arg(long)]
    pub kubernetes: bool,
    /// kubeconfig file for --kubernetes [default: in-cluster, then
    /// $KUBECONFIG and ~/.kube/config].
    #[arg(long, value_name = "FILE", requires = "kubernetes")]
    pub kubeconfig: Option<PathBuf>,
    /// Serve Services labelled service.kubernetes.io/service-proxy-name
    /// with this value (besides unlabelled ones) [default: cipgw].
    #[arg(long, value_name = "NAME")]
    pub proxy_name: Option<String>,
    /// At most one table rebuild per period, however fast objects change
    /// (kube-proxy's --min-sync-period) [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub min_sync_period: Option<std::time::Duration>,
    /// Cores to run workers on, one worker per core: `0`, `0,1`, `2-5`,
    /// or `auto`: every CPU this process may run on (what the kubelet's
    /// static CPU manager gives a Guaranteed Pod, or taskset). A listed
    /// core outside that set is an error [default: 0].
    #[arg(long, value_name = "LIST")]
    pub cores: Option<String>,
    /// Directory of the connection table's file: a restarted, upgraded or
    /// crashed gateway adopts the flows the one before left there, so
    /// established connections keep their Pods; `none` keeps the table in
    /// process memory [default: /run/cipgw].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// XDP attach mode: native where the driver has it (auto), native
    /// only, or generic SKB mode [default: auto].
    #[arg(long, value_name = "MODE", value_parser = parse_xdp_mode())]
    pub xdp_mode: Option<XdpMode>,
    /// CIDR ClusterIPs are allocated from and must lie in: at most one
    /// per family, repeatable or a comma list as kube-apiserver's
    /// --service-cluster-ip-range (`198.18.100.0/24,2001:2:0:ff::/112`).
    /// The first is the primary family: a Service naming no family gets
    /// it, and a dual-stack gateway takes both [default: 10.96.0.0/12].
    #[arg(long = "service-cidr", value_name = "CIDR", value_delimiter = ',')]
    pub service_cidrs: Vec<IpNet>,
    /// Source ranges VIP traffic (and DNS) is accepted from, either family
    /// (repeatable, or a comma list as kube-proxy takes it): the cluster's
    /// Pod and node CIDRs. Without any, every source is accepted (and a
    /// warning says so) [default: none].
    #[arg(long = "cluster-cidr", value_name = "CIDR", value_delimiter = ',')]
    pub cluster_cidrs: Vec<IpNet>,
    #[command(flatten)]
    pub conntrack: ConntrackArgs,
    #[command(flatten)]
    pub lb: LbArgs,
    #[command(flatten)]
    pub snat: SnatArgs,
    #[command(flatten)]
    pub dns: super::dns_args::DnsArgs,
    /// Preferred busy polling (on|off): each worker runs the receive NAPI
    /// of its interfaces' queues from its own loop (SO_PREFER_BUSY_POLL,
    /// with napi_defer_hard_irqs and gro_flush_timeout set on the
    /// interfaces while cipgw runs) instead of waiting for the kernel to
    /// fill its RX rings; it spins a little longer before it sleeps
    /// [default: off].
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    pub busy_poll: Option<bool>,
    /// Back each worker's UMEM (its frame buffers: 2 KiB per frame, at
    /// least 4,096 frames) with 2 MiB pages from the kernel's reserved
    /// pool, /proc/sys/vm/nr_hugepages (on|off). Every received frame's
    /// first read is otherwise a TLB miss. Reserve the UMEMs' pages in
    /// addition to the connection table's (a hugetlbfs --state-dir): the
    /// UMEMs are mapped first. Without the flag, or without enough free
    /// huge pages (then with a warning), the UMEM is advised for
    /// transparent huge pages, which need no reservation, and the log
    /// says whether the kernel gave them [default: off].
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    pub umem_huge_pages: Option<bool>,
    /// Frames a worker takes from one RX ring per iteration, 1-1024
    /// [default: 64].
    #[arg(long, value_name = "N")]
    pub rx_batch: Option<u32>,
    /// Descriptors per AF_XDP ring (RX, TX, fill, completion), a power of
    /// two from 64 to 16384 [default: 2048].
    #[arg(long, value_name = "N")]
    pub ring_size: Option<u32>,
    /// How long an idle worker keeps polling its rings, yielding its core
    /// between rounds, before it sleeps in poll(2) (`0`, `50us` as
    /// `0.05ms`, `1ms`; at most 1s). Longer keeps request/response latency
    /// low at the price of an idle core that looks busy; 0 is 32 empty
    /// rounds [default: 0].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub idle_spin: Option<std::time::Duration>,
    /// Nice value of the worker threads, -20 to 19: above the kernel's
    /// receive threads on the same core, so that receive cannot outrun the
    /// worker and copy frames only to drop them at a full RX ring
    /// [default: -10].
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub worker_nice: Option<i32>,
    /// Benchmark mode: forward every redirected frame to the other
    /// interface with only its Ethernet addresses rewritten (no parse
    /// beyond L2, no NAT, no conntrack): the upper bound of the AF_XDP path.
    #[arg(long, requires = "pass_through_peer")]
    pub pass_through: bool,
    /// The address whose MAC pass-through frames are sent to [default:
    /// none].
    #[arg(long, value_name = "IP")]
    pub pass_through_peer: Option<std::net::Ipv4Addr>,
}

/// Source NAT flags: for a one-arm gateway in a cluster whose Pods answer
/// their peer directly over the pod network.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct SnatArgs {
    /// Source-NAT every new VIP connection to a gateway address and port,
    /// so the Pod answers the gateway (needed unless the gateway routes
    /// the Pods' replies); the client still only sees the VIP.
    #[arg(long)]
    pub snat: bool,
    /// Source address for --snat, either family (repeatable; implies
    /// --snat; new connections of its family use them in turn). An
    /// address given here is taken as dedicated to cipgw, so --snat-ports
    /// may overlap the kernel's ip_local_port_range [default: the primary
    /// IPv4 and global IPv6 address of the Pod-side interface, the last
    /// --iface].
    #[arg(long = "snat-address", value_name = "ADDR")]
    pub snat_addresses: Vec<std::net::IpAddr>,
    /// Source ports for --snat, per SNAT address and backend. On the
    /// interface's own address they must lie outside the kernel's
    /// ip_local_port_range (the node's own connections use it), or the
    /// gateway refuses to start [default: above that range, 61000-65535
    /// with Linux's default].
    #[arg(long, value_name = "LOW-HIGH", value_parser = settings::parse_port_range)]
    pub snat_ports: Option<(u16, u16)>,
}

/// Connection-tracking flags (kube-proxy's names where it has them).
/// Durations as kube-proxy writes them: `250ms`, `90s`, `1m30s`,
/// `24h0m0s`, `1d`.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ConntrackArgs {
    /// Flows tracked at most (both directions are one flow) [default:
    /// sized from the machine's memory, printed at start].
    #[arg(long, value_name = "N")]
    pub conntrack_max: Option<usize>,
    /// Share of the table (1-100 %) flows without a reply may hold, so a
    /// SYN flood cannot push out established connections [default: 50].
    #[arg(long, value_name = "PERCENT")]
    pub conntrack_unreplied_percent: Option<u8>,
    /// Idle timeout of a TCP flow whose SYN got no answer [default: 120s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub conntrack_tcp_timeout_syn_sent: Option<std::time::Duration>,
    /// Idle timeout of an established TCP flow [default: 24h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub conntrack_tcp_timeout_established: Option<std::time::Duration>,
    /// Idle timeout after a FIN one way [default: 120s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub conntrack_tcp_timeout_fin_wait: Option<std::time::Duration>,
    /// Idle timeout after a FIN one way was answered by the other side
    /// [default: 1h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub conntrack_tcp_timeout_close_wait: Option<std::time::Duration>,
    /// Idle timeout after FINs both ways [default: 120s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub conntrack_tcp_timeout_time_wait: Option<std::time::Duration>,
    /// Idle timeout after an RST [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub conntrack_tcp_timeout_close: Option<std::time::Duration>,
    /// Idle timeout of a UDP flow without a reply [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub conntrack_udp_timeout: Option<std::time::Duration>,
    /// Idle timeout of a UDP flow that got a reply [default: 120s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub conntrack_udp_timeout_stream: Option<std::time::Duration>,
    /// Count every flow's packets and bytes per direction, shown by
    /// `cipgw conntrack` (Linux's nf_conntrack_acct; off by default: two
    /// atomic additions per packet and 32 bytes per flow).
    #[arg(long)]
    pub conntrack_accounting: bool,
}

impl ConntrackArgs {
    /// Flags over defaults. The one place the eight timeout flags meet
    /// the [`Timeouts`] they set.
    fn resolve(self) -> ConntrackSettings {
        let d = ConntrackSettings::default();
        let t = d.timeouts;
        let pick = |flag: Option<Duration>, default| flag.unwrap_or(default);
        ConntrackSettings {
            max_flows: self.conntrack_max,
            unreplied_percent: self
                .conntrack_unreplied_percent
                .unwrap_or(d.unreplied_percent),
            accounting: self.conntrack_accounting,
            timeouts: Timeouts {
                tcp_syn_sent: pick(self.conntrack_tcp_timeout_syn_sent, t.tcp_syn_sent),
                tcp_established: pick(self.conntrack_tcp_timeout_established, t.tcp_established),
                tcp_fin_wait: pick(self.conntrack_tcp_timeout_fin_wait, t.tcp_fin_wait),
                tcp_close_wait: pick(self.conntrack_tcp_timeout_close_wait, t.tcp_close_wait),
                tcp_time_wait: pick(self.conntrack_tcp_timeout_time_wait, t.tcp_time_wait),
                tcp_close: pick(self.conntrack_tcp_timeout_close, t.tcp_close),
                udp_unreplied: pick(self.conntrack_udp_timeout, t.udp_unreplied),
                udp_replied: pick(self.conntrack_udp_timeout_stream, t.udp_replied),
            },
        }
    }
}

/// `on`/`off`, or `true`/`false` as a TOML file writes a switch.
fn parse_on_off(text: &str) -> Result<bool, String> {
    match text {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        other => Err(format!("{other:?}: expected on or off")),
    }
}

/// `auto`, `native` or `skb`, listed by `--help`.
fn parse_xdp_mode() -> impl clap::builder::TypedValueParser<Value = XdpMode> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["auto", "native", "skb"])
        .map(|mode| mode.parse::<XdpMode>().expect("a listed XDP mode parses"))
}

/// An address as `IP:PORT` or `HOST:PORT` (`localhost:9477`, as
/// kube-proxy takes it), resolved once; an IPv4 address first.
pub fn parse_socket_addr(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let addrs: Vec<_> = text
        .to_socket_addrs()
        .map_err(|e| format!("{text:?}: not an address (IP:PORT or HOST:PORT): {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{text:?}: the host name has no address"))
}

/// Parses `0`, `0,1`, `2-5`, `0,2-3`.
pub fn parse_cores(list: &str) -> Result<Vec<usize>, String> {
    let mut cores = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parse = |s: &str| {
            s.trim()
                .parse::<usize>()
                .map_err(|_| format!("--cores {list:?}: {s:?} is not a core number"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse(a)?, parse(b)?);
                if a > b {
                    return Err(format!("--cores {list:?}: range {part:?} is backwards"));
                }
                cores.extend(a..=b);
            }
            None => cores.push(parse(part)?),
        }
    }
    Ok(cores)
}

/// Fills in the defaults and checks the result.
fn settings(args: RunArgs) -> anyhow::Result<Settings> {
    let ifaces = args.ifaces;
    let kubernetes = args.kubernetes;
    let source = match (args.control_file, kubernetes) {
        (Some(_), true) => {
            return Err(
                BadInput("--control-file and --kubernetes exclude each other".into()).into(),
            )
        }
        (Some(path), false) => Source::ControlFile(path),
        (None, true) => Source::Kubernetes {
            kubeconfig: args.kubeconfig,
        },
        (None, false) => {
            return Err(BadInput("one of --control-file or --kubernetes is required".into()).into())
        }
    };
    let cores = match args.cores {
        Some(list) if list.trim() == "auto" => allowed_cpus()?,
        Some(list) => parse_cores(&list).map_err(BadInput)?,
        None => settings::default_cores(),
    };
    let snat = snat_settings(args.snat)?;
    let s = Settings {
        ifaces,
        source,
        cores,
        xdp_mode: args.xdp_mode.unwrap_or_default(),
        admin: args.admin.unwrap_or_else(settings::default_admin),
        metrics: args
            .metrics_address
            .unwrap_or_else(settings::default_metrics),
        service_cidrs: if args.service_cidrs.is_empty() {
            ServiceCidrs::default()
        } else {
            ServiceCidrs::new(&args.service_cidrs).map_err(|e| BadInput(e.to_string()))?
        },
        cluster_cidrs: args.cluster_cidrs,
        conntrack: args.conntrack.resolve(),
        dns: args.dns.resolve(),
        min_sync_period: args
            .min_sync_period
            .unwrap_or(settings::DEFAULT_MIN_SYNC_PERIOD),
        proxy_name: args
            .proxy_name
            .unwrap_or_else(|| settings::DEFAULT_PROXY_NAME.into()),
        state_dir: match args.state_dir {
            Some(dir) if dir.as_os_str() == "none" => None,
            Some(dir) => Some(dir),
            None => Some(settings::DEFAULT_STATE_DIR.into()),
        },
        io: IoSettings {
            busy_poll: args.busy_poll.unwrap_or(IoSettings::default().busy_poll),
            rx_batch: args.rx_batch.unwrap_or(settings::DEFAULT_RX_BATCH),
            ring_size: args.ring_size.unwrap_or(settings::DEFAULT_RING_SIZE),
            idle_spin: args.idle_spin.unwrap_or(settings::DEFAULT_IDLE_SPIN),
            worker_nice: args.worker_nice.unwrap_or(settings::DEFAULT_WORKER_NICE),
            umem_huge_pages: args
                .umem_huge_pages
                .unwrap_or(IoSettings::default().umem_huge_pages),
        },
        lb: args.lb.resolve()?,
        snat,
    };
    s.validate().map_err(|e| BadInput(e.to_string()))?;
    Ok(s)
}

/// [`settings`] for the command-line tests.
#[cfg(test)]
pub fn settings_for_test(args: RunArgs) -> Settings {
    settings(args).expect("valid settings")
}

/// [`settings`] for the command-line tests of bad input.
#[cfg(test)]
pub fn settings_error_for_test(args: RunArgs) -> String {
    settings(args).expect_err("invalid settings").to_string()
}

/// The CPUs this process may run on (sched_getaffinity(2)).
fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    // SAFETY: an all-zero cpu_set_t is a valid, empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most size_of::<cpu_set_t>() bytes into
    // `set`, which lives through the call.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(anyhow::Error::new(std::io::Error::last_os_error())
            .context("--cores auto: reading the CPUs this process may run on"));
    }
    let limit = 8 * std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: CPU_ISSET reads the set for a CPU number below its size.
    Ok((0..limit)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// Every listed core must be one the process may run on: a worker that
/// cannot be pinned would share a core it was not given.
fn check_cores(cores: &[usize]) -> anyhow::Result<()> {
    let allowed = allowed_cpus()?;
    if let Some(core) = cores.iter().find(|c| !allowed.contains(c)) {
        let list: Vec<String> = allowed.iter().map(ToString::to_string).collect();
        return Err(BadInput(format!(
            "--cores: core {core} is not among the CPUs this process may run on ({}): the \
             CPU manager, a cgroup cpuset or taskset restricts it; list those, or use --cores auto",
            list.join(",")
        ))
        .into());
    }
    Ok(())
}

/// `--snat`, `--snat-address` and `--snat-ports` (from the command line
/// or the settings file); an address alone implies source NAT.
fn snat_settings(args: SnatArgs) -> anyhow::Result<Option<settings::SnatSettings>> {
    let addresses = args.snat_addresses;
    let ports = args.snat_ports;
    let on = args.snat || !addresses.is_empty();
    if !on && ports.is_some() {
        return Err(BadInput("--snat-ports needs --snat or --snat-address".into()).into());
    }
    Ok(on.then_some(settings::SnatSettings { addresses, ports }))
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let options = cipgw::daemon::Options {
        pass_through: args
            .pass_through
            .then_some(args.pass_through_peer)
            .flatten(),
    };
    let settings = settings(args)?;
    check_cores(&settings.cores)?;
    cipgw::daemon::run(settings, options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_lists() {
        assert_eq!(parse_cores("0"), Ok(vec![0]));
        assert_eq!(parse_cores("0,2-4"), Ok(vec![0, 2, 3, 4]));
        assert!(parse_cores("3-1").is_err());
        assert!(parse_cores("x").is_err());
    }

    #[test]
    fn cores_auto_is_the_affinity_mask() {
        let auto = allowed_cpus().expect("sched_getaffinity");
        let online = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(
            !auto.is_empty() && auto.len() <= online.max(auto.len()),
            "{auto:?}"
        );
        check_cores(&auto).expect("every allowed CPU passes");
        let outside = auto.iter().max().copied().unwrap_or(0) + 1;
        let error = check_cores(&[outside]).expect_err("a core outside the mask");
        assert!(error.to_string().contains("--cores auto"), "{error}");
    }

    #[test]
    fn snat_flags_imply_snat_and_ports_need_it() {
        let none = snat_settings(SnatArgs::default()).expect("valid");
        assert_eq!(none, None, "off by default");
        let address = std::net::IpAddr::from([198, 18, 1, 2]);
        let by_address = SnatArgs {
            snat_addresses: vec![address],
            snat_ports: Some((62000, 62063)),
            ..SnatArgs::default()
        };
        let on = snat_settings(by_address)
            .expect("valid")
            .expect("--snat-address implies --snat");
        assert_eq!(on.addresses, [address]);
        assert_eq!(on.ports, Some((62000, 62063)));
        let ports_alone = SnatArgs {
            snat_ports: Some((62000, 62063)),
            ..SnatArgs::default()
        };
        assert!(snat_settings(ports_alone).is_err());
    }

    #[test]
    fn on_off() {
        assert_eq!(parse_on_off("on"), Ok(true));
        assert_eq!(parse_on_off("off"), Ok(false));
        assert!(parse_on_off("yes").is_err());
    }
}
