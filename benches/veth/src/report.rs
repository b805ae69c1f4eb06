//! From a run's raw records (`raw.jsonl`, one per measurement, written by
//! run.sh) to what people read: medians per (peer, workload, Service
//! count) in `results.json`, tables and the issue's target ratios in
//! `results.md`, and `pps.png` (gnuplot): delivered packets/s per peer,
//! and against the Service count.
//!
//! Packet rates come from kernel counters read twice around the measured
//! window: offered = the client veth's tx packets + tx drops (frames the
//! gateway's receive queue refused), delivered = the backend veth's rx
//! packets. Records with `rep` 0 (profiling runs) are kept in the raw file
//! but left out of the medians.
//!
//! A run with `--loss-search` also has `loss.jsonl`, one search per line
//! (the highest offered rate lost at most the tolerance, and its trials):
//! their medians go into `results.json` (`loss_search`) and a table of
//! `results.md`, with each peer's ratio to cipgw-pt's.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Peers in presentation order, with the names tables use.
const PEERS: [(&str, &str); 5] = [
    ("forward", "kernel forwarding, no NAT"),
    ("iptables", "kube-proxy iptables (nft backend)"),
    ("nftables", "kube-proxy nftables"),
    ("cipgw-pt", "cipgw pass-through (L2 only)"),
    ("cipgw", "cipgw (full NAT)"),
];
const UDP: [&str; 2] = ["udp-est", "udp-new"];

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The run's output directory (raw.jsonl, meta.json).
    #[arg(long)]
    dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The run's output directory (results.json, meta.json).
    #[arg(long)]
    dir: PathBuf,
}

/// One line of raw.jsonl.
#[derive(Debug, Deserialize)]
struct Raw {
    peer: String,
    workload: String,
    services: u32,
    #[serde(default)]
    rep: u32,
    #[serde(default)]
    busy: f64,
    /// [time, client tx, client tx drop, gw rx, gw rx drop, gw pod-side
    /// tx, gw pod-side tx drop, backend rx]
    snap0: Option<[f64; 8]>,
    snap1: Option<[f64; 8]>,
    tcp: Option<TcpRaw>,
    setup_s: Option<f64>,
    /// CPU time (ns) the gateway's threads (its veths' NAPI threads, and
    /// cipgw's worker) used between snap0 and snap1.
    gw_cpu_ns: Option<f64>,
    /// cipgw's /metrics around the measurement (cipgw peers only).
    cipgw0: Option<Scrape>,
    cipgw1: Option<Scrape>,
}

/// What run.sh takes from cipgw's /metrics for the report: its workers'
/// time in RX batches and the frames in them, cumulative (absent from
/// runs before they were scraped).
#[derive(Debug, Default, Deserialize)]
struct Scrape {
    #[serde(default)]
    batch_s: f64,
    #[serde(default)]
    batch_frames: f64,
}

#[derive(Debug, Deserialize)]
struct TcpRaw {
    transactions_per_s: Option<f64>,
    connections_per_s: Option<f64>,
    gbit_per_s: Option<f64>,
    #[serde(default)]
    errors: u64,
    latency_us: Option<Latency>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

/// The median of one (peer, workload, Service count) over its reps.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Cell {
    peer: String,
    workload: String,
    /// 0 for kernel forwarding (no Services involved).
    services: u32,
    reps: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivered_pps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offered_pps: Option<f64>,
    /// 1 - delivered/offered.
    #[serde(skip_serializing_if = "Option::is_none")]
    loss: Option<f64>,
    /// Frames the gateway's veth dropped on receive (for AF_XDP: RX ring
    /// full), per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    gw_rx_drop_pps: Option<f64>,
    /// The gateway threads' CPU time per delivered packet (ns): what a
    /// packet costs, less sensitive to other load on the machine than
    /// the rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    gw_ns_per_packet: Option<f64>,
    /// cipgw's batch time per frame (ns): the wall-clock time its workers
    /// spent in RX batches (the pipeline, or pass-through's L2 rewrite)
    /// over the frames in them, from its /metrics. The kernel's receive
    /// and transmit work between batches is left out; the veth NAPI
    /// thread's preemptions of the worker within a batch are not (the
    /// longer the batch, the more of them). Closer to cipgw's own cost
    /// than the rate, which an overloaded veth amplifies several times.
    #[serde(skip_serializing_if = "Option::is_none")]
    batch_ns_per_frame: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transactions_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connections_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gbit_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_us: Option<Latency>,
    #[serde(default)]
    errors: u64,
    /// Highest share of both CPUs busy just before a rep started (other
    /// work on the machine; the script waits for it to drop below 0.15).
    busy_before: f64,
}

/// One line of loss.jsonl: a loss search (run.sh `--loss-search`).
#[derive(Debug, Deserialize)]
struct LossRaw {
    peer: String,
    workload: String,
    services: u32,
    rep: u32,
    tolerance_pct: f64,
    /// The highest offered rate (pps) that lost at most the tolerance.
    rate_pps: f64,
}

/// The median of one (peer, workload, Service count)'s loss searches.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LossCell {
    peer: String,
    workload: String,
    services: u32,
    tolerance_pct: f64,
    /// Each rep's highest rate within the tolerance (pps), in rep order.
    rates_pps: Vec<f64>,
    rate_pps: f64,
}

/// Loss searches grouped by (peer, workload, Service count), each with
/// the median of its reps' rates.
fn loss_cells(raws: &[LossRaw]) -> Vec<LossCell> {
    by_cell(raws, |r| (&r.peer, &r.workload, r.services, r.rep))
        .into_iter()
        .filter_map(|((peer, workload, services), rs)| {
            let rates_pps: Vec<f64> = rs.iter().map(|r| r.rate_pps).collect();
            Some(LossCell {
                peer,
                workload,
                services,
                tolerance_pct: rs[0].tolerance_pct,
                rate_pps: median(rates_pps.clone())?,
                rates_pps,
            })
        })
        .collect()
}

/// The loss searches' table: per peer, workload and Service count, each
/// rep's rate, the median and its ratio to cipgw-pt's.
fn loss_table(o: &mut String, cells: &[LossCell]) {
    let Some(first) = cells.first() else { return };
    let _ = writeln!(
        o,
        "\n#### Loss search: the highest offered rate lost at most {}% (Mpps)\n",
        first.tolerance_pct
    );
    let _ = writeln!(
        o,
        "| peer | workload | Services | per rep | median | / cipgw-pt |\n|---|---|---:|---|---:|---:|"
    );
    for c in cells {
        let pt = cells
            .iter()
            .find(|p| p.peer == "cipgw-pt" && p.workload == c.workload && p.services == c.services)
            .filter(|p| p.rate_pps > 0.0)
            .map(|p| c.rate_pps / p.rate_pps);
        let reps: Vec<String> = c
            .rates_pps
            .iter()
            .map(|r| format!("{:.3}", r / 1e6))
            .collect();
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {:.3} | {} |",
            c.peer,
            c.workload,
            thousands(c.services),
            reps.join(" "),
            c.rate_pps / 1e6,
            num(pt, 3)
        );
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Target {
    what: String,
    want: String,
    measured: Option<f64>,
    pass: Option<bool>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Results {
    meta: Value,
    results: Vec<Cell>,
    /// Seconds to load the rules or start cipgw, per peer and Service count.
    setup_s: BTreeMap<String, BTreeMap<u32, f64>>,
    targets: Vec<Target>,
    /// The loss searches (run.sh `--loss-search`), if any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    loss_search: Vec<LossCell>,
    /// DIR/losses.md as run.sh wrote it (not part of results.json).
    #[serde(skip)]
    losses: Option<String>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

fn read_meta(dir: &Path) -> anyhow::Result<Value> {
    let path = dir.join("meta.json");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// `records` grouped by (peer, workload, Service count), as `key` reads
/// them with the rep; rep 0 (a profiling run) left out.
fn by_cell<T>(
    records: &[T],
    key: impl Fn(&T) -> (&str, &str, u32, u32),
) -> BTreeMap<(String, String, u32), Vec<&T>> {
    let mut groups: BTreeMap<(String, String, u32), Vec<&T>> = BTreeMap::new();
    for r in records {
        let (peer, workload, services, rep) = key(r);
        if rep > 0 {
            groups
                .entry((peer.to_owned(), workload.to_owned(), services))
                .or_default()
                .push(r);
        }
    }
    groups
}

fn cells(raws: &[Raw]) -> Vec<Cell> {
    let groups = by_cell(raws, |r| (&r.peer, &r.workload, r.services, r.rep));
    let mut out = Vec::new();
    for ((peer, workload, services), rs) in groups {
        let mut c = Cell {
            peer,
            workload,
            services,
            reps: rs.len(),
            busy_before: rs.iter().map(|r| r.busy).fold(0.0, f64::max),
            ..Cell::default()
        };
        let rates: Vec<[f64; 4]> = rs
            .iter()
            .filter_map(|r| {
                let (a, b) = (r.snap0?, r.snap1?);
                let dt = b[0] - a[0];
                (dt > 0.0).then(|| {
                    let offered = (b[1] - a[1] + b[2] - a[2]) / dt;
                    let delivered = (b[7] - a[7]) / dt;
                    let ns_per_packet = match r.gw_cpu_ns {
                        Some(ns) if b[7] > a[7] => ns / (b[7] - a[7]),
                        _ => f64::NAN,
                    };
                    [offered, delivered, (b[4] - a[4]) / dt, ns_per_packet]
                })
            })
            .collect();
        if !rates.is_empty() {
            c.offered_pps = median(rates.iter().map(|r| r[0]).collect());
            c.delivered_pps = median(rates.iter().map(|r| r[1]).collect());
            c.gw_rx_drop_pps = median(rates.iter().map(|r| r[2]).collect());
            c.gw_ns_per_packet = median(
                rates
                    .iter()
                    .map(|r| r[3])
                    .filter(|v| v.is_finite())
                    .collect(),
            );
            c.batch_ns_per_frame = median(
                rs.iter()
                    .filter_map(|r| {
                        let (a, b) = (r.cipgw0.as_ref()?, r.cipgw1.as_ref()?);
                        let frames = b.batch_frames - a.batch_frames;
                        (frames > 0.0).then(|| 1e9 * (b.batch_s - a.batch_s) / frames)
                    })
                    .collect(),
            );
            c.loss = median(
                rates
                    .iter()
                    .map(|r| if r[0] > 0.0 { 1.0 - r[1] / r[0] } else { 0.0 })
                    .collect(),
            );
        }
        let tcps: Vec<&TcpRaw> = rs.iter().filter_map(|r| r.tcp.as_ref()).collect();
        if !tcps.is_empty() {
            let m = |f: &dyn Fn(&TcpRaw) -> Option<f64>| {
                median(tcps.iter().filter_map(|t| f(t)).collect())
            };
            c.transactions_per_s = m(&|t| t.transactions_per_s);
            c.connections_per_s = m(&|t| t.connections_per_s);
            c.gbit_per_s = m(&|t| t.gbit_per_s);
            c.errors = tcps.iter().map(|t| t.errors).sum();
            let lat = |f: &dyn Fn(&Latency) -> f64| {
                median(
                    tcps.iter()
                        .filter_map(|t| t.latency_us.as_ref().map(f))
                        .collect(),
                )
            };
            if let (Some(p50), Some(p90), Some(p99), Some(p999), Some(max)) = (
                lat(&|l| l.p50),
                lat(&|l| l.p90),
                lat(&|l| l.p99),
                lat(&|l| l.p999),
                lat(&|l| l.max),
            ) {
                c.latency_us = Some(Latency {
                    p50,
                    p90,
                    p99,
                    p999,
                    max,
                });
            }
        }
        out.push(c);
    }
    out
}

/// (peer, workload, Service count, metric): one side of a ratio.
type Operand<'a> = (&'a str, &'a str, u32, fn(&Cell) -> Option<f64>);

/// Lookup helper over the cells.
struct Table<'a>(&'a [Cell]);

impl Table<'_> {
    fn get(&self, peer: &str, workload: &str, services: u32) -> Option<&Cell> {
        // Kernel forwarding has no Services: its one cell stands for all.
        let services = if peer == "forward" { 0 } else { services };
        self.0
            .iter()
            .find(|c| c.peer == peer && c.workload == workload && c.services == services)
    }

    fn pps(&self, peer: &str, workload: &str, services: u32) -> Option<f64> {
        self.get(peer, workload, services)?.delivered_pps
    }

    fn ratio(&self, a: Operand<'_>, b: Operand<'_>) -> Option<f64> {
        let x = (a.3)(self.get(a.0, a.1, a.2)?)?;
        let y = (b.3)(self.get(b.0, b.1, b.2)?)?;
        (y > 0.0).then_some(x / y)
    }
}

fn pps(c: &Cell) -> Option<f64> {
    c.delivered_pps
}
fn cps(c: &Cell) -> Option<f64> {
    c.connections_per_s
}
fn gbps(c: &Cell) -> Option<f64> {
    c.gbit_per_s
}
fn p99(c: &Cell) -> Option<f64> {
    c.latency_us.as_ref().map(|l| l.p99)
}

/// The issue's targets (issue 5, part 2), as ratios from this run.
fn targets(t: &Table<'_>, counts: &[u32]) -> Vec<Target> {
    let max = counts.iter().copied().max().unwrap_or(1);
    let at_least = |what: String, want: f64, measured: Option<f64>| Target {
        what,
        want: format!(">= {want}"),
        measured,
        pass: measured.map(|m| m >= want),
    };
    let mut v = vec![
        at_least(
            "udp-est: cipgw / nftables".into(),
            1.15,
            t.ratio(
                ("cipgw", "udp-est", 1, pps),
                ("nftables", "udp-est", 1, pps),
            ),
        ),
        at_least(
            "udp-est: cipgw / cipgw pass-through".into(),
            0.95,
            t.ratio(
                ("cipgw", "udp-est", 1, pps),
                ("cipgw-pt", "udp-est", 1, pps),
            ),
        ),
    ];
    for &n in counts {
        v.push(at_least(
            format!("udp-new: cipgw / nftables at {n} Services"),
            3.0,
            t.ratio(
                ("cipgw", "udp-new", n, pps),
                ("nftables", "udp-new", n, pps),
            ),
        ));
    }
    v.push(at_least(
        format!("udp-new: cipgw / iptables at {max} Services"),
        50.0,
        t.ratio(
            ("cipgw", "udp-new", max, pps),
            ("iptables", "udp-new", max, pps),
        ),
    ));
    v.push(at_least(
        format!("scale: cipgw udp-est at {max} / at 1 Service"),
        0.95,
        t.ratio(("cipgw", "udp-est", max, pps), ("cipgw", "udp-est", 1, pps)),
    ));
    let ends: &[u32] = if max > 1 { &[1, max] } else { &[1] };
    for &n in ends {
        v.push(at_least(
            format!("tcp-crr: cipgw / nftables at {n} Services"),
            1.0,
            t.ratio(
                ("cipgw", "tcp-crr", n, cps),
                ("nftables", "tcp-crr", n, cps),
            ),
        ));
    }
    v.push(at_least(
        format!("tcp-crr: cipgw / iptables at {max} Services"),
        1.6,
        t.ratio(
            ("cipgw", "tcp-crr", max, cps),
            ("iptables", "tcp-crr", max, cps),
        ),
    ));
    let rr = t.ratio(("cipgw", "tcp-rr", 1, p99), ("nftables", "tcp-rr", 1, p99));
    v.push(Target {
        what: "tcp-rr: cipgw p99 / nftables p99".into(),
        want: "<= 1.1".into(),
        measured: rr,
        pass: rr.map(|m| m <= 1.1),
    });
    v.push(at_least(
        "tcp-stream: cipgw / kernel forwarding".into(),
        0.45,
        t.ratio(
            ("cipgw", "tcp-stream", 1, gbps),
            ("forward", "tcp-stream", 1, gbps),
        ),
    ));
    v.push(at_least(
        "stretch: cipgw pass-through / kernel forwarding (udp-est)".into(),
        0.8,
        t.ratio(
            ("cipgw-pt", "udp-est", 1, pps),
            ("forward", "udp-est", 1, pps),
        ),
    ));
    v
}

fn service_counts(meta: &Value) -> Vec<u32> {
    meta["services"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_u64())
                .map(|n| n as u32)
                .collect()
        })
        .unwrap_or_else(|| vec![1])
}

/// The records of a JSON-lines file (`text`, read from `path`), blank
/// lines skipped; an error names the file and line.
fn json_lines<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> anyhow::Result<Vec<T>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

pub fn run(args: &ReportArgs) -> anyhow::Result<()> {
    let meta = read_meta(&args.dir)?;
    let raw_path = args.dir.join("raw.jsonl");
    let text =
        fs::read_to_string(&raw_path).with_context(|| format!("reading {}", raw_path.display()))?;
    let raws: Vec<Raw> = json_lines(&raw_path, &text)?;
    let mut setup_s: BTreeMap<String, BTreeMap<u32, f64>> = BTreeMap::new();
    for r in &raws {
        if let Some(s) = r.setup_s {
            setup_s
                .entry(r.peer.clone())
                .or_default()
                .insert(r.services, s);
        }
    }
    let results = cells(&raws);
    // Only a run with --loss-search has it.
    let loss_path = args.dir.join("loss.jsonl");
    let loss_raws: Vec<LossRaw> = match fs::read_to_string(&loss_path) {
        Ok(text) => json_lines(&loss_path, &text)?,
        Err(_) => Vec::new(),
    };
    let counts = service_counts(&meta);
    let targets = targets(&Table(&results), &counts);
    let mut all = Results {
        meta,
        results,
        setup_s,
        targets,
        loss_search: loss_cells(&loss_raws),
        losses: None,
    };
    fs::write(
        args.dir.join("results.json"),
        serde_json::to_string_pretty(&all)? + "\n",
    )?;
    all.losses = fs::read_to_string(args.dir.join("losses.md")).ok();
    let md = markdown(&all, &counts);
    fs::write(args.dir.join("results.md"), &md)?;
    print!("{md}");
    plot(&all, &counts, &args.dir)?;
    Ok(())
}

fn mpps(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.3}", v / 1e6))
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

fn thousands(n: u32) -> String {
    if n >= 1000 {
        format!("{},{:03}", n / 1000, n % 1000)
    } else {
        n.to_string()
    }
}

/// The peers measured, known ones in presentation order, then run.sh's
/// variants (`cipgw+NAME`: cipgw with extra arguments) under their own
/// names.
fn present_peers(all: &Results) -> Vec<(String, String)> {
    let mut peers: Vec<(String, String)> = PEERS
        .iter()
        .filter(|(p, _)| all.results.iter().any(|c| c.peer == *p))
        .map(|(p, name)| ((*p).to_owned(), (*name).to_owned()))
        .collect();
    for c in &all.results {
        if !peers.iter().any(|(p, _)| *p == c.peer) {
            peers.push((c.peer.clone(), c.peer.clone()));
        }
    }
    peers
}

fn markdown(all: &Results, counts: &[u32]) -> String {
    let t = Table(&all.results);
    let m = &all.meta;
    let s = |k: &str| m[k].as_str().unwrap_or("?").to_owned();
    let mut o = String::new();
    let _ = writeln!(o, "### veth benchmark, {}\n", s("date"));
    let _ = writeln!(
        o,
        "- machine: {} ({} cores), kernel {}, XDP mode {}, cipgw {}",
        s("cpu"),
        m["cores"],
        s("kernel"),
        s("xdp_mode"),
        s("cipgw_rev")
    );
    let _ = writeln!(o, "- peers' tools: {}; {}", s("iptables"), s("nft"));
    if m["family"].as_str() == Some("ipv6") {
        let _ = writeln!(
            o,
            "- address family: IPv6 (2001:2::/48; kernel peers: IPv6 forwarding, ip6tables, nft ip6)"
        );
    }
    let _ = writeln!(o, "- command: `{}`", s("command").trim());
    let _ = writeln!(
        o,
        "- each figure: median of {} rep(s) of {} s after {} s warm-up; generator: {}",
        m["reps"],
        m["duration_s"],
        m["warmup_s"],
        s("generator")
    );
    if let Some(p) = m["placement"].as_array() {
        let lines: Vec<&str> = p.iter().filter_map(|v| v.as_str()).map(str::trim).collect();
        let _ = writeln!(o, "- placement: {}", lines.join("; "));
    }
    let busiest = all
        .results
        .iter()
        .map(|c| c.busy_before)
        .fold(0.0, f64::max);
    let _ = writeln!(
        o,
        "- other load on the machine just before a measurement: at most {:.0}% of both CPUs\n",
        busiest * 100.0
    );

    let peers = present_peers(all);
    // IPv6's smallest UDP frame is 66 bytes on the wire.
    let frame = if m["family"].as_str() == Some("ipv6") {
        "66-byte IPv6"
    } else {
        "64-byte"
    };
    let _ = writeln!(
        o,
        "#### {frame} UDP: delivered Mpps (loss) by Service count\n"
    );
    let mut head = String::from("| peer |");
    let mut rule = String::from("|---|");
    for w in UDP {
        for &n in counts {
            let _ = write!(head, " {w} {} |", thousands(n));
            rule.push_str("---:|");
        }
    }
    let _ = writeln!(o, "{head}\n{rule}");
    for (p, name) in &peers {
        let _ = write!(o, "| {name} |");
        for w in UDP {
            for &n in counts {
                let cell = t.get(p, w, n);
                let txt = match cell {
                    // Kernel forwarding's one figure, repeated for reference.
                    Some(c) if *p == "forward" && n != 1 => format!("({})", mpps(c.delivered_pps)),
                    Some(c) if c.delivered_pps.is_some() => format!(
                        "{} ({:.0}%)",
                        mpps(c.delivered_pps),
                        c.loss.unwrap_or(0.0) * 100.0
                    ),
                    _ => "–".into(),
                };
                let _ = write!(o, " {txt} |");
            }
        }
        o.push('\n');
    }
    let _ = writeln!(
        o,
        "\nKernel forwarding involves no Services: its one figure is repeated in parentheses.\n"
    );
    let udp_table = UdpTable {
        head: &head,
        rule: &rule,
        counts,
    };
    udp_table.ns(
        &mut o,
        &t,
        &peers,
        "The gateway's CPU time per delivered packet (ns; NAPI threads + cipgw worker)",
        |c| c.gw_ns_per_packet,
    );
    let cipgw_peers: Vec<_> = peers
        .iter()
        .filter(|(p, _)| p.starts_with("cipgw"))
        .cloned()
        .collect();
    udp_table.ns(
        &mut o,
        &t,
        &cipgw_peers,
        "cipgw's batch time per frame (ns; wall clock of its workers' RX batches, from /metrics: the kernel's I/O between batches left out, preemptions within them not)",
        |c| c.batch_ns_per_frame,
    );

    let max = counts.iter().copied().max().unwrap_or(1);
    let any_tcp = all.results.iter().any(|c| c.workload.starts_with("tcp"));
    if any_tcp {
        tcp_table(&mut o, &t, &peers, max);
    }
    targets_table(&mut o, all);
    loss_table(&mut o, &all.loss_search);
    setup_table(&mut o, all, &peers, counts);
    if let Some(losses) = &all.losses {
        let _ = writeln!(
            o,
            "\n#### Where cipgw's packets went (Mpps; /metrics and the kernel's AF_XDP counters)\n"
        );
        o.push_str(losses);
    }
    o
}

/// The UDP tables' columns: a workload and Service count each.
struct UdpTable<'a> {
    head: &'a str,
    rule: &'a str,
    counts: &'a [u32],
}

impl UdpTable<'_> {
    /// A table of `metric` in ns for `peers`, titled `title`; nothing when
    /// no cell has it.
    fn ns(
        &self,
        o: &mut String,
        t: &Table<'_>,
        peers: &[(String, String)],
        title: &str,
        metric: fn(&Cell) -> Option<f64>,
    ) {
        if !t.0.iter().any(|c| metric(c).is_some()) {
            return;
        }
        let _ = writeln!(o, "#### {title}\n");
        let _ = writeln!(o, "{}\n{}", self.head, self.rule);
        for (p, name) in peers {
            let _ = write!(o, "| {name} |");
            for w in UDP {
                for &n in self.counts {
                    let v = t.get(p, w, n).and_then(metric);
                    let _ = write!(o, " {} |", num(v, 0));
                }
            }
            o.push('\n');
        }
        o.push('\n');
    }
}

fn tcp_table(o: &mut String, t: &Table<'_>, peers: &[(String, String)], max: u32) {
    let _ = writeln!(o, "#### TCP through the VIP\n");
    let _ = writeln!(
        o,
        "| peer | rr p50 µs | rr p99 µs | rr p99.9 µs | rr trans/s | crr conn/s (1) | crr conn/s ({}) | crr errors | stream Gbit/s |",
        thousands(max)
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (p, name) in peers {
        if *p == "cipgw-pt" {
            let _ = writeln!(
                o,
                "| {name} | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a |"
            );
            continue;
        }
        let rr = t.get(p, "tcp-rr", 1);
        let lat = rr.and_then(|c| c.latency_us.clone());
        let crr1 = t.get(p, "tcp-crr", 1);
        let crrn = if max > 1 {
            t.get(p, "tcp-crr", max)
        } else {
            None
        };
        let _ = writeln!(
            o,
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
            num(lat.as_ref().map(|l| l.p50), 1),
            num(lat.as_ref().map(|l| l.p99), 1),
            num(lat.as_ref().map(|l| l.p999), 1),
            num(rr.and_then(|c| c.transactions_per_s), 0),
            num(crr1.and_then(|c| c.connections_per_s), 0),
            num(crrn.and_then(|c| c.connections_per_s), 0),
            crr1.map(|c| c.errors).unwrap_or(0) + crrn.map(|c| c.errors).unwrap_or(0),
            num(t.get(p, "tcp-stream", 1).and_then(|c| c.gbit_per_s), 2),
        );
    }
    let _ = writeln!(
        o,
        "\ncipgw pass-through rewrites L2 only (no NAT), so a TCP handshake to the VIP cannot complete: n/a.\n"
    );
}

fn targets_table(o: &mut String, all: &Results) {
    let _ = writeln!(o, "#### Issue 5 targets, as ratios measured in this run\n");
    let _ = writeln!(o, "| target | want | measured | |");
    let _ = writeln!(o, "|---|---:|---:|---|");
    for tg in &all.targets {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} |",
            tg.what,
            tg.want,
            num(tg.measured, 2),
            match tg.pass {
                Some(true) => "met",
                Some(false) => "**not met**",
                None => "not measured",
            }
        );
    }
}

fn setup_table(o: &mut String, all: &Results, peers: &[(String, String)], counts: &[u32]) {
    if !all.setup_s.is_empty() {
        let _ = writeln!(
            o,
            "\n#### Set-up time: loading the ruleset / starting cipgw until ready (s)\n"
        );
        let _ = write!(o, "| peer |");
        for &n in counts {
            let _ = write!(o, " {} |", thousands(n));
        }
        let _ = writeln!(o, "\n|---|{}", "---:|".repeat(counts.len()));
        for (p, name) in peers {
            if *p == "forward" {
                continue;
            }
            let _ = write!(o, "| {name} |");
            for n in counts {
                let v = all.setup_s.get(p).and_then(|m| m.get(n)).copied();
                let _ = write!(o, " {} |", num(v, 2));
            }
            o.push('\n');
        }
    }
}

/// One colour per peer in both panels' lines: the kernel's paths warm,
/// cipgw's blue.
fn peer_color(peer: &str) -> &'static str {
    match peer {
        "forward" => "#555555",
        "iptables" => "#c0392b",
        "nftables" => "#e08a2c",
        "cipgw-pt" => "#7fb3e6",
        _ => "#1f4e9c",
    }
}

/// Stands in for a panel without data; comments out the plot after it.
const EMPTY_PANEL: &str =
    "set label 1 \"not measured\" at graph 0.5,0.5 center\nplot NaN notitle\nunset label 1\n# ";

/// Writes the gnuplot data and script and renders pps.png.
fn plot(all: &Results, counts: &[u32], dir: &Path) -> anyhow::Result<()> {
    let t = Table(&all.results);
    let peers = present_peers(all);
    let any = |w: &str, n: u32| peers.iter().any(|(p, _)| t.pps(p, w, n).is_some());
    let has_bars = UDP.iter().any(|w| any(w, 1));
    let has_scale = UDP.iter().any(|w| counts.iter().any(|&n| any(w, n)));
    let mut bars = String::from("# peer udp-est udp-new (Mpps, 1 Service)\n");
    for (p, name) in &peers {
        // 0 for "not measured": a histogram column may not be all NaN.
        let v = |w| {
            t.pps(p, w, 1)
                .map_or("0".into(), |v| format!("{:.4}", v / 1e6))
        };
        let _ = writeln!(bars, "\"{name}\" {} {}", v("udp-est"), v("udp-new"));
    }
    fs::write(dir.join("pps-peers.dat"), bars)?;
    let mut scale = String::new();
    for (p, name) in &peers {
        let _ = writeln!(scale, "\"{name}\"");
        for &n in counts {
            let v = |w| {
                t.pps(p, w, n)
                    .map_or("NaN".into(), |v| format!("{:.4}", v / 1e6))
            };
            let _ = writeln!(scale, "{n} {} {}", v("udp-est"), v("udp-new"));
        }
        scale.push_str("\n\n");
    }
    fs::write(dir.join("pps-services.dat"), scale)?;
    let ymax = all
        .results
        .iter()
        .filter_map(|c| c.delivered_pps)
        .fold(0.0, f64::max)
        / 1e6;
    let m = &all.meta;
    let title = format!(
        "cipgw veth benchmark{}, {} ({} cores), kernel {}, XDP {}",
        if m["family"].as_str() == Some("ipv6") {
            " (IPv6)"
        } else {
            ""
        },
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        m["kernel"].as_str().unwrap_or("?"),
        m["xdp_mode"].as_str().unwrap_or("?")
    );
    let xmax = counts.iter().copied().max().unwrap_or(1).max(10) as f64 * 3.0;
    let script = format!(
        r##"set terminal pngcairo size 1500,620 font "sans,11"
set output "pps.png"
set multiplot layout 1,2 title "{title}" font "sans,13"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set ylabel "delivered Mpps (64-byte UDP)"
set yrange [0:{ymax:.3}]
set grid ytics
set key top right
set xtics rotate by -20 left font "sans,10"
set title "per peer, 1 Service"
{bars_plot}plot "pps-peers.dat" using 2:xtic(1) title "udp-est (1,024 flows)" lc rgb "#3a7dc9", \
     "" using 3 title "udp-new (new flow every packet)" lc rgb "#e08a2c", \
     "" using 0:2:($2 > 0 ? sprintf("%.2f",$2) : "") with labels offset -2.2,0.6 font "sans,9" notitle, \
     "" using 0:3:($3 > 0 ? sprintf("%.2f",$3) : "") with labels offset 2.2,0.6 font "sans,9" notitle
unset xtics
set xtics nomirror
set logscale x
set xrange [0.5:{xmax}]
set xlabel "Services (the measured one is the last)"
set key below font "sans,9" maxrows 3 width 2
set title "against Service count: solid udp-est, dashed udp-new"
set style data linespoints
colors = "{colors}"
{scale_plot}plot for [i=0:{last}] "pps-services.dat" index i using 1:2 lw 2 pt 7 lc rgb word(colors, i+1) title columnheader(1), \
     for [i=0:{last}] "pps-services.dat" index i using 1:3 lw 2 pt 6 dt 2 lc rgb word(colors, i+1) notitle
unset multiplot
"##,
        last = peers.len().saturating_sub(1),
        colors = peers
            .iter()
            .map(|(p, _)| peer_color(p))
            .collect::<Vec<_>>()
            .join(" "),
        // Headroom above the tallest bar for the legend.
        ymax = (ymax * 1.3).max(0.1),
        // gnuplot refuses a plot without a single valid point.
        bars_plot = if has_bars { "" } else { EMPTY_PANEL },
        scale_plot = if has_scale { "" } else { EMPTY_PANEL },
    );
    fs::write(dir.join("pps.gp"), script)?;
    let status = Command::new("gnuplot")
        .arg("pps.gp")
        .current_dir(dir)
        .status()
        .context("running gnuplot (Debian package gnuplot-nox)")?;
    if !status.success() {
        bail!("gnuplot pps.gp failed: {status}");
    }
    Ok(())
}

/// Every peer and workload the run asked for must have a non-zero result.
pub fn check(args: &CheckArgs) -> anyhow::Result<()> {
    let path = args.dir.join("results.json");
    let all: Results = serde_json::from_str(
        &fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))?;
    let words = |k: &str| -> BTreeSet<String> {
        all.meta[k]
            .as_str()
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let (peers, workloads) = (words("peers"), words("workloads"));
    let counts = service_counts(&all.meta);
    let t = Table(&all.results);
    let (mut passed, mut failed) = (0, 0);
    let mut expect = |ok: bool, what: String| {
        if ok {
            passed += 1;
        } else {
            failed += 1;
            eprintln!("check: FAIL {what}");
        }
    };
    for peer in &peers {
        for w in &workloads {
            let tcp = w.starts_with("tcp");
            if tcp && peer == "cipgw-pt" {
                continue; // no NAT: TCP to the VIP cannot work
            }
            let positive = |v: Option<f64>| v.is_some_and(|v| v > 0.0);
            match w.as_str() {
                // A loss search's result may be 0 (no rate tried lost
                // little enough: a debug build in CI); it must be there.
                "udp-est" | "udp-new" if !all.loss_search.is_empty() => {
                    expect(
                        all.loss_search.iter().any(|c| {
                            c.peer == *peer
                                && c.workload == *w
                                && c.services == 1
                                && c.rate_pps >= 0.0
                        }),
                        format!("{peer} {w}: loss search"),
                    );
                }
                "udp-est" | "udp-new" => {
                    expect(
                        positive(t.pps(peer, w, 1)),
                        format!("{peer} {w}: delivered pps"),
                    );
                }
                "scale" => {
                    for &n in &counts {
                        expect(
                            positive(t.pps(peer, "udp-est", n)),
                            format!("{peer} scale: udp-est at {n} Services"),
                        );
                    }
                }
                "tcp-rr" => {
                    let c = t.get(peer, w, 1);
                    expect(
                        positive(c.and_then(|c| c.transactions_per_s))
                            && positive(c.and_then(|c| c.latency_us.as_ref().map(|l| l.p99))),
                        format!("{peer} tcp-rr: transactions/s and latency"),
                    );
                }
                "tcp-crr" => expect(
                    positive(t.get(peer, w, 1).and_then(|c| c.connections_per_s)),
                    format!("{peer} tcp-crr: connections/s"),
                ),
                "tcp-stream" => expect(
                    positive(t.get(peer, w, 1).and_then(|c| c.gbit_per_s)),
                    format!("{peer} tcp-stream: Gbit/s"),
                ),
                other => expect(false, format!("unknown workload {other}")),
            }
        }
    }
    for file in ["results.md", "pps.png"] {
        let ok = fs::metadata(args.dir.join(file)).is_ok_and(|m| m.len() > 0);
        expect(ok, format!("{file} written"));
    }
    println!("veth-bench check: {passed} passed, {failed} failed");
    if failed > 0 || passed == 0 {
        bail!("{failed} of {} checks failed", passed + failed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(peer: &str, wl: &str, services: u32, rep: u32, delivered: f64) -> Raw {
        Raw {
            peer: peer.into(),
            workload: wl.into(),
            services,
            rep,
            busy: 0.0,
            snap0: Some([0.0; 8]),
            snap1: Some([2.0, 2.0e6, 0.0, 0.0, 0.0, 0.0, 0.0, delivered * 2.0]),
            tcp: None,
            setup_s: None,
            // 1,500 ns of the gateway's threads per delivered packet.
            gw_cpu_ns: Some(delivered * 2.0 * 1500.0),
            // 200 ns of cipgw's own per frame, over the delivered frames.
            cipgw0: Some(Scrape::default()),
            cipgw1: Some(Scrape {
                batch_s: delivered * 2.0 * 200e-9,
                batch_frames: delivered * 2.0,
            }),
        }
    }

    #[test]
    fn medians_ignore_profiling_reps_and_compute_loss() {
        let raws = vec![
            raw("cipgw", "udp-est", 1, 1, 0.5e6),
            raw("cipgw", "udp-est", 1, 2, 0.7e6),
            raw("cipgw", "udp-est", 1, 3, 0.6e6),
            raw("cipgw", "udp-est", 1, 0, 0.1e6),
        ];
        let c = cells(&raws);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].reps, 3);
        assert_eq!(c[0].delivered_pps, Some(0.6e6));
        assert_eq!(c[0].offered_pps, Some(1.0e6));
        assert!((c[0].loss.unwrap() - 0.4).abs() < 1e-9);
        assert!((c[0].gw_ns_per_packet.unwrap() - 1500.0).abs() < 1e-6);
        assert!((c[0].batch_ns_per_frame.unwrap() - 200.0).abs() < 1e-6);
    }

    fn loss(peer: &str, wl: &str, rep: u32, rate_pps: f64) -> LossRaw {
        LossRaw {
            peer: peer.into(),
            workload: wl.into(),
            services: 1,
            rep,
            tolerance_pct: 1.0,
            rate_pps,
        }
    }

    #[test]
    fn loss_searches_take_the_median_and_the_ratio_to_pass_through() {
        let raws = vec![
            loss("cipgw-pt", "udp-new", 1, 0.50e6),
            loss("cipgw-pt", "udp-new", 2, 0.40e6),
            loss("cipgw", "udp-new", 1, 0.30e6),
            loss("cipgw", "udp-new", 2, 0.60e6),
            loss("cipgw", "udp-new", 3, 0.45e6),
            loss("cipgw", "udp-new", 0, 0.01e6),
        ];
        let cells = loss_cells(&raws);
        assert_eq!(cells.len(), 2, "one cell per peer: {cells:?}");
        let cipgw = cells.iter().find(|c| c.peer == "cipgw").unwrap();
        assert_eq!(cipgw.rates_pps, [0.30e6, 0.60e6, 0.45e6], "rep 0 left out");
        assert_eq!(cipgw.rate_pps, 0.45e6);
        let mut md = String::new();
        loss_table(&mut md, &cells);
        assert!(md.contains("lost at most 1%"), "{md}");
        assert!(
            md.contains("| cipgw | udp-new | 1 | 0.300 0.600 0.450 | 0.450 | 1.000 |"),
            "cipgw's median over pass-through's (0.45): {md}"
        );
    }

    #[test]
    fn forwarding_stands_for_every_service_count_and_ratios_follow() {
        let raws = vec![
            raw("forward", "udp-est", 0, 1, 1.0e6),
            raw("cipgw-pt", "udp-est", 1, 1, 0.8e6),
            raw("cipgw", "udp-est", 1, 1, 0.78e6),
            raw("cipgw", "udp-est", 10000, 1, 0.77e6),
            raw("nftables", "udp-est", 1, 1, 0.5e6),
        ];
        let c = cells(&raws);
        let t = Table(&c);
        assert_eq!(t.pps("forward", "udp-est", 10000), Some(1.0e6));
        let tg = targets(&t, &[1, 10000]);
        let find = |s: &str| tg.iter().find(|x| x.what.starts_with(s)).unwrap();
        assert_eq!(find("udp-est: cipgw / nftables").pass, Some(true));
        assert_eq!(find("udp-est: cipgw / cipgw pass").pass, Some(true));
        assert_eq!(find("scale:").pass, Some(true));
        assert_eq!(find("stretch:").pass, Some(true));
        assert_eq!(find("tcp-stream:").pass, None);
    }
}
