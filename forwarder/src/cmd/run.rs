//! `cipgw run`: settings from flags over an optional TOML file, then the
//! daemon.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use cipgw_config::conntrack::Timeouts;
use cipgw_config::settings::{
    self, parse_duration, ConntrackSettings, IoSettings, Settings, Source, XdpMode,
};
use ipnet::Ipv4Net;
use serde::Deserialize;

use super::BadInput;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// TOML file with any of the settings below (keys as the flag names,
    /// e.g. `iface = ["eth1"]`, `control-file = "..."`, `cluster-cidr =
    /// [...]`, the `conntrack-*` ones under a `[conntrack]` table); flags
    /// override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address of the admin HTTP endpoint: /metrics, /healthz, /readyz
    /// and the JSON views the status/services/conntrack commands read
    /// [default: 127.0.0.1:9477].
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<std::net::SocketAddr>,
    /// Interface to attach to; repeat for a two-arm gateway (client side
    /// and Pod side).
    #[arg(long = "iface", value_name = "IF")]
    pub ifaces: Vec<String>,
    /// Control file of Kubernetes manifests (Services, EndpointSlices,
    /// Pods, Lists) to take the service table from; watched, and reloaded
    /// when it changes (an invalid version changes nothing).
    #[arg(long, value_name = "FILE", conflicts_with = "kubernetes")]
    pub control_file: Option<PathBuf>,
    /// Take Services and EndpointSlices from the Kubernetes API (in-cluster
    /// configuration, or --kubeconfig).
    #[arg(long)]
    pub kubernetes: bool,
    /// kubeconfig file for --kubernetes (default: in-cluster, then
    /// $KUBECONFIG and ~/.kube/config).
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
    /// Cores to run workers on, one worker per core: `0`, `0,1`, `2-5`.
    #[arg(long, value_name = "LIST")]
    pub cores: Option<String>,
    /// Directory of the connection table's file: a restarted, upgraded or
    /// crashed gateway adopts the flows the one before left there, so
    /// established connections keep their Pods; `none` keeps the table in
    /// process memory [default: /run/cipgw].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// XDP attach mode: native where the driver has it (auto), native
    /// only, or generic SKB mode.
    #[arg(long, value_name = "MODE")]
    pub xdp_mode: Option<XdpMode>,
    /// CIDR ClusterIPs are allocated from and must lie in.
    #[arg(long, value_name = "CIDR")]
    pub service_cidr: Option<Ipv4Net>,
    /// Source range VIP traffic is accepted from (repeatable): the
    /// cluster's Pod and node CIDRs. Without any, every source is accepted
    /// (and a warning says so).
    #[arg(long = "cluster-cidr", value_name = "CIDR")]
    pub cluster_cidrs: Vec<Ipv4Net>,
    #[command(flatten)]
    pub conntrack: ConntrackArgs,
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
    /// low at the price of an idle core that looks busy [default: 0: 32
    /// empty rounds].
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
    /// The address whose MAC pass-through frames are sent to.
    #[arg(long, value_name = "IP")]
    pub pass_through_peer: Option<std::net::Ipv4Addr>,
}

/// Connection-tracking flags (kube-proxy's names where it has them).
/// Durations: `250ms`, `90s`, `15m`, `24h`, `1d`.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConntrackArgs {
    /// Flows tracked at most (both directions are one flow); default: sized
    /// from the machine's memory, printed at start.
    #[arg(long, value_name = "N")]
    pub conntrack_max: Option<usize>,
    /// Share of the table (1-100 %) flows without a reply may hold, so a
    /// SYN flood cannot push out established connections [default: 50].
    #[arg(long, value_name = "PERCENT")]
    pub conntrack_unreplied_percent: Option<u8>,
    /// Idle timeout of a TCP flow whose SYN got no answer [default: 120s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration_text")]
    pub conntrack_tcp_timeout_syn_sent: Option<std::time::Duration>,
    /// Idle timeout of an established TCP flow [default: 24h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration_text")]
    pub conntrack_tcp_timeout_established: Option<std::time::Duration>,
    /// Idle timeout after a FIN one way [default: 120s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration_text")]
    pub conntrack_tcp_timeout_fin_wait: Option<std::time::Duration>,
    /// Idle timeout after a FIN one way was answered by the other side
    /// [default: 1h].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration_text")]
    pub conntrack_tcp_timeout_close_wait: Option<std::time::Duration>,
    /// Idle timeout after FINs both ways [default: 120s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration_text")]
    pub conntrack_tcp_timeout_time_wait: Option<std::time::Duration>,
    /// Idle timeout after an RST [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration_text")]
    pub conntrack_tcp_timeout_close: Option<std::time::Duration>,
    /// Idle timeout of a UDP flow without a reply [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration_text")]
    pub conntrack_udp_timeout: Option<std::time::Duration>,
    /// Idle timeout of a UDP flow that got a reply [default: 120s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    #[serde(default, with = "duration_text")]
    pub conntrack_udp_timeout_stream: Option<std::time::Duration>,
}

/// Durations in the TOML file are written as on the command line.
pub(super) mod duration_text {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        cipgw_config::settings::parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

impl ConntrackArgs {
    /// Flags over file over defaults. The one place the eight timeout
    /// flags meet the [`Timeouts`] they set.
    fn resolve(self, file: ConntrackArgs) -> ConntrackSettings {
        let d = ConntrackSettings::default();
        let t = d.timeouts;
        let pick = |flag: Option<Duration>, file: Option<Duration>, default| {
            flag.or(file).unwrap_or(default)
        };
        ConntrackSettings {
            max_flows: self.conntrack_max.or(file.conntrack_max),
            unreplied_percent: self
                .conntrack_unreplied_percent
                .or(file.conntrack_unreplied_percent)
                .unwrap_or(d.unreplied_percent),
            timeouts: Timeouts {
                tcp_syn_sent: pick(
                    self.conntrack_tcp_timeout_syn_sent,
                    file.conntrack_tcp_timeout_syn_sent,
                    t.tcp_syn_sent,
                ),
                tcp_established: pick(
                    self.conntrack_tcp_timeout_established,
                    file.conntrack_tcp_timeout_established,
                    t.tcp_established,
                ),
                tcp_fin_wait: pick(
                    self.conntrack_tcp_timeout_fin_wait,
                    file.conntrack_tcp_timeout_fin_wait,
                    t.tcp_fin_wait,
                ),
                tcp_close_wait: pick(
                    self.conntrack_tcp_timeout_close_wait,
                    file.conntrack_tcp_timeout_close_wait,
                    t.tcp_close_wait,
                ),
                tcp_time_wait: pick(
                    self.conntrack_tcp_timeout_time_wait,
                    file.conntrack_tcp_timeout_time_wait,
                    t.tcp_time_wait,
                ),
                tcp_close: pick(
                    self.conntrack_tcp_timeout_close,
                    file.conntrack_tcp_timeout_close,
                    t.tcp_close,
                ),
                udp_unreplied: pick(
                    self.conntrack_udp_timeout,
                    file.conntrack_udp_timeout,
                    t.udp_unreplied,
                ),
                udp_replied: pick(
                    self.conntrack_udp_timeout_stream,
                    file.conntrack_udp_timeout_stream,
                    t.udp_replied,
                ),
            },
        }
    }
}

/// The TOML file's shape: every setting optional, named as its flag.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileSettings {
    iface: Option<Vec<String>>,
    admin: Option<std::net::SocketAddr>,
    control_file: Option<PathBuf>,
    kubernetes: Option<bool>,
    kubeconfig: Option<PathBuf>,
    proxy_name: Option<String>,
    state_dir: Option<PathBuf>,
    #[serde(default, with = "duration_text")]
    min_sync_period: Option<std::time::Duration>,
    cores: Option<String>,
    xdp_mode: Option<XdpMode>,
    service_cidr: Option<Ipv4Net>,
    cluster_cidr: Option<Vec<Ipv4Net>>,
    /// The `--conntrack-*` settings, under a `[conntrack]` table.
    #[serde(default)]
    conntrack: ConntrackArgs,
    /// The `--dns-*` settings, under a `[dns]` table.
    #[serde(default)]
    dns: super::dns_args::DnsArgs,
    busy_poll: Option<bool>,
    rx_batch: Option<u32>,
    ring_size: Option<u32>,
    #[serde(default, with = "duration_text")]
    idle_spin: Option<std::time::Duration>,
    worker_nice: Option<i32>,
}

fn parse_on_off(text: &str) -> Result<bool, String> {
    match text {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("{other:?}: expected on or off")),
    }
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

fn load_file(path: &Path) -> anyhow::Result<FileSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading settings file {}", path.display()))?;
    toml::from_str(&text)
        .map_err(|e| BadInput(format!("settings file {}: {e}", path.display())).into())
}

/// Layers flags over the file and checks the result.
fn settings(args: RunArgs) -> anyhow::Result<Settings> {
    let file = match &args.config {
        Some(path) => load_file(path)?,
        None => FileSettings::default(),
    };
    let ifaces = if args.ifaces.is_empty() {
        file.iface.unwrap_or_default()
    } else {
        args.ifaces
    };
    let kubernetes = args.kubernetes || file.kubernetes.unwrap_or(false);
    let source = match (args.control_file.or(file.control_file), kubernetes) {
        (Some(_), true) => {
            return Err(
                BadInput("--control-file and --kubernetes exclude each other".into()).into(),
            )
        }
        (Some(path), false) => Source::ControlFile(path),
        (None, true) => Source::Kubernetes {
            kubeconfig: args.kubeconfig.or(file.kubeconfig),
        },
        (None, false) => {
            return Err(BadInput("one of --control-file or --kubernetes is required".into()).into())
        }
    };
    let cores = match args.cores.or(file.cores) {
        Some(list) => parse_cores(&list).map_err(BadInput)?,
        None => settings::default_cores(),
    };
    let s = Settings {
        ifaces,
        source,
        cores,
        xdp_mode: args.xdp_mode.or(file.xdp_mode).unwrap_or_default(),
        admin: args
            .admin
            .or(file.admin)
            .unwrap_or_else(settings::default_admin),
        service_cidr: args
            .service_cidr
            .or(file.service_cidr)
            .unwrap_or_else(settings::default_service_cidr),
        cluster_cidrs: if args.cluster_cidrs.is_empty() {
            file.cluster_cidr.unwrap_or_default()
        } else {
            args.cluster_cidrs
        },
        conntrack: args.conntrack.resolve(file.conntrack),
        dns: args.dns.resolve(file.dns),
        min_sync_period: args
            .min_sync_period
            .or(file.min_sync_period)
            .unwrap_or(settings::DEFAULT_MIN_SYNC_PERIOD),
        proxy_name: args
            .proxy_name
            .or(file.proxy_name)
            .unwrap_or_else(|| settings::DEFAULT_PROXY_NAME.into()),
        state_dir: match args.state_dir.or(file.state_dir) {
            Some(dir) if dir.as_os_str() == "none" => None,
            Some(dir) => Some(dir),
            None => Some(settings::DEFAULT_STATE_DIR.into()),
        },
        io: IoSettings {
            busy_poll: args
                .busy_poll
                .or(file.busy_poll)
                .unwrap_or(IoSettings::default().busy_poll),
            rx_batch: args
                .rx_batch
                .or(file.rx_batch)
                .unwrap_or(settings::DEFAULT_RX_BATCH),
            ring_size: args
                .ring_size
                .or(file.ring_size)
                .unwrap_or(settings::DEFAULT_RING_SIZE),
            idle_spin: args
                .idle_spin
                .or(file.idle_spin)
                .unwrap_or(settings::DEFAULT_IDLE_SPIN),
            worker_nice: args
                .worker_nice
                .or(file.worker_nice)
                .unwrap_or(settings::DEFAULT_WORKER_NICE),
        },
    };
    s.validate().map_err(|e| BadInput(e.to_string()))?;
    Ok(s)
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let options = cipgw::daemon::Options {
        pass_through: args
            .pass_through
            .then_some(args.pass_through_peer)
            .flatten(),
    };
    let settings = settings(args)?;
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
    fn on_off() {
        assert_eq!(parse_on_off("on"), Ok(true));
        assert_eq!(parse_on_off("off"), Ok(false));
        assert!(parse_on_off("yes").is_err());
    }
}
