//! The Prometheus exposition of one [`Snapshot`]: a registry built for
//! that scrape, with the snapshot as its collector under the `cipgw`
//! prefix and the process metrics beside it, written as OpenMetrics 1.0
//! text (what `prometheus-client` writes and Prometheus asks for first)
//! or, when the scraper's `Accept` header prefers it, as Prometheus text
//! 0.0.4 ([`Format::negotiate`]). Bucket bounds of the exported histograms
//! are fixed here.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, NoLabelSet,
};
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{CounterValues, Recorder, ServicePortSnapshot, Snapshot, WorkerSnapshot};
use crate::conntrack::{EvictionClass, FlowState};
use crate::counters::{DropReason, SocketStat};

/// Bucket upper bounds of the per-packet and per-batch histograms, in
/// nanoseconds (exported in seconds).
const LATENCY_BUCKETS_NS: [u64; 15] = [
    250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];
/// Bucket upper bounds of the batch-size histogram, in frames.
const BATCH_SIZE_BUCKETS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];
/// Bucket upper bounds of the control sync histogram, in nanoseconds.
const SYNC_BUCKETS_NS: [u64; 12] = [
    1_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// The Prometheus (OpenMetrics) content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the Prometheus text format 0.0.4.
pub const CONTENT_TYPE_TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The two exposition formats a scraper may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    /// Prometheus text format 0.0.4 (what client_golang serves by
    /// default, and older scrapers parse).
    Text004,
}

impl Format {
    /// The format an `Accept` header prefers: the media type with the
    /// highest `q` among `application/openmetrics-text` and `text/plain`
    /// (OpenMetrics on a tie, for `*/*` and without a header).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::OpenMetrics;
        };
        let mut best = (Format::OpenMetrics, -1.0_f64);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.strip_prefix("q="))
                .find_map(|q| q.parse::<f64>().ok())
                .unwrap_or(1.0);
            let format = match media.as_str() {
                "application/openmetrics-text" | "*/*" | "application/*" => Format::OpenMetrics,
                "text/plain" | "text/*" => Format::Text004,
                _ => continue,
            };
            let better = q > best.1 || (q == best.1 && format == Format::OpenMetrics);
            if better {
                best = (format, q);
            }
        }
        best.0
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => CONTENT_TYPE,
            Format::Text004 => CONTENT_TYPE_TEXT_004,
        }
    }
}

/// The exposition of one scrape in `format`.
pub fn encode_as(snapshot: Snapshot, format: Format) -> String {
    let text = encode(snapshot);
    match format {
        Format::OpenMetrics => text,
        Format::Text004 => to_text_004(&text),
    }
}

/// OpenMetrics text rewritten as Prometheus text 0.0.4: a counter's
/// family is named as its `_total` sample, an info metric is a gauge
/// named `_info`, and there are no `# UNIT` or `# EOF` lines. The
/// samples themselves are written the same in both.
pub fn to_text_004(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = line.strip_prefix("# TYPE ").and_then(|rest| {
            let (name, kind) = rest.rsplit_once(' ')?;
            match kind {
                "counter" => Some(format!("# TYPE {name}_total counter")),
                "info" => Some(format!("# TYPE {name}_info gauge")),
                _ => None,
            }
        });
        let rewritten = rewritten.or_else(|| {
            // The HELP of a renamed family follows its new name.
            let rest = line.strip_prefix("# HELP ")?;
            let (name, help) = rest.split_once(' ')?;
            let kind = openmetrics
                .lines()
                .find_map(|l| l.strip_prefix(&format!("# TYPE {name} ")[..]))?;
            let suffix = match kind {
                "counter" => "_total",
                "info" => "_info",
                _ => return None,
            };
            Some(format!("# HELP {name}{suffix} {help}"))
        });
        out.push_str(rewritten.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The exposition of one scrape (OpenMetrics).
pub fn encode(snapshot: Snapshot) -> String {
    let mut registry = Registry::default();
    if let Some(process) = snapshot.process {
        registry.register_collector(Box::new(super::process::ProcessCollector(process)));
    }
    let cipgw = registry.sub_registry_with_prefix("cipgw");
    cipgw.register(
        "build",
        "The cipgw version running and the git commit it was built from",
        Info::new(vec![
            ("version", snapshot.version),
            ("git_hash", crate::build_info::GIT_HASH),
        ]),
    );
    let mut snapshot = snapshot;
    if let Some(dns) = snapshot.dns.take() {
        cipgw.register_collector(Box::new(dns));
    }
    cipgw.register_collector(Box::new(snapshot));
    let mut text = String::new();
    // Writing into a String cannot fail, and the collector's encoders
    // only fail when the writer does.
    if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
        text.clear();
        text.push_str("# EOF\n");
    }
    text
}

fn seconds_since_epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Label set `worker="<core>"`.
fn worker_label(w: &WorkerSnapshot) -> [(&'static str, String); 1] {
    [("worker", w.core.to_string())]
}

fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> fmt::Result {
    enc.encode_descriptor(name, help, None, MetricType::Counter)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}

fn gauge(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: impl EncodeGaugeValue,
) -> fmt::Result {
    enc.encode_descriptor(name, help, None, MetricType::Gauge)?
        .encode_gauge(&value)
}

fn counter_family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        metric
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    Ok(())
}

fn histogram_family<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, Recorder)>,
    bounds: &[u64],
    unit: f64,
) -> fmt::Result {
    let mut metric = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, rec) in series {
        let buckets = rec.buckets(bounds, unit);
        metric
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(rec.sum() as f64 / unit, rec.count(), &buckets, None)?;
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let enc = &mut enc;
        let total = self.totals();
        // Nanoseconds per exported second (divided, not multiplied by
        // 1e-9, so that bounds print as 2.5e-7 and not 2.5000000000000006e-7).
        let ns_per_s = 1e9;

        gauge(
            enc,
            "ready",
            "1 once the first table is published and the workers run",
            u64::from(self.ready),
        )?;
        gauge(
            enc,
            "start_time_seconds",
            "Start time of the process, seconds since the Unix epoch",
            seconds_since_epoch(self.started),
        )?;
        gauge(enc, "workers", "Worker threads", self.workers.len())?;

        // Summed over workers.
        counter(
            enc,
            "rx_packets",
            "Frames received on the AF_XDP sockets",
            total.rx_packets,
        )?;
        counter(
            enc,
            "rx_bytes",
            "Bytes of frames received on the AF_XDP sockets",
            total.rx_bytes,
        )?;
        counter(
            enc,
            "tx_packets",
            "Frames transmitted on the AF_XDP sockets",
            total.tx_packets,
        )?;
        counter(
            enc,
            "tx_bytes",
            "Bytes of frames transmitted on the AF_XDP sockets",
            total.tx_bytes,
        )?;
        counter(
            enc,
            "passed_packets",
            "Frames a worker received that were not for cipgw (the kernel's; AF_XDP cannot return them)",
            total.passed,
        )?;
        counter_family(
            enc,
            "flow_packets",
            "Packets of tracked flows by direction (forward: client to backend, reply: backend to client)",
            [
                ([("direction", "forward")], total.forwarded),
                ([("direction", "reply")], total.replies),
            ],
        )?;
        counter(
            enc,
            "new_flows",
            "Connections given a backend",
            total.new_flows,
        )?;
        counter(
            enc,
            "adopted_flows",
            "Flows met mid-connection that this gateway had not seen, given their backend \
             from the Maglev table instead of a RST",
            total.adopted_flows,
        )?;
        counter(
            enc,
            "stateless_replies",
            "Replies of flows this gateway had not seen, rewritten to their endpoint's one \
             VIP:port and tracked (Maglev)",
            total.stateless_replies,
        )?;
        counter(
            enc,
            "icmp_errors_forwarded",
            "ICMP and ICMPv6 errors about tracked flows (unreachable, fragmentation needed, \
             packet too big, time exceeded), rewritten for the other end and forwarded",
            total.icmp_errors,
        )?;
        counter(
            enc,
            "fragments_forwarded",
            "Later fragments of datagrams, sent the way their first fragment went",
            total.fragments,
        )?;
        counter(
            enc,
            "flow_cache_bypasses",
            "Seconds in which a worker's flow cache of a family held too few of its \
             packets' flows to pay for itself and was bypassed for the rest of the second",
            total.flow_cache_bypasses,
        )?;
        counter(
            enc,
            "neighbour_resolved",
            "Frames that waited for a next hop's MAC and then went out",
            total.neighbour_resolved,
        )?;
        counter_family(
            enc,
            "drops",
            "Frames dropped by a worker, by reason",
            DropReason::ALL
                .iter()
                .map(|r| ([("reason", r.name())], total.drops_of(*r))),
        )?;

        counter_family(
            enc,
            "xsk_socket_stats",
            "The kernel's counters of the AF_XDP sockets (XDP_STATISTICS), summed over \
             workers: rx_ring_full and rx_dropped are packets that never reached a worker",
            SocketStat::ALL
                .iter()
                .map(|s| ([("stat", s.name())], total.socket[*s as usize])),
        )?;

        // Per worker.
        type PerWorker = fn(&CounterValues) -> u64;
        let per_worker: [(&str, &str, PerWorker); 7] = [
            ("worker_rx_packets", "Frames received, per worker", |c| {
                c.rx_packets
            }),
            ("worker_rx_bytes", "Bytes received, per worker", |c| {
                c.rx_bytes
            }),
            ("worker_tx_packets", "Frames transmitted, per worker", |c| {
                c.tx_packets
            }),
            ("worker_tx_bytes", "Bytes transmitted, per worker", |c| {
                c.tx_bytes
            }),
            (
                "worker_passed_packets",
                "Frames not for cipgw, per worker",
                |c| c.passed,
            ),
            ("worker_drops", "Frames dropped, per worker", |c| {
                c.total_drops()
            }),
            (
                "worker_new_flows",
                "Connections given a backend, per worker",
                |c| c.new_flows,
            ),
        ];
        for (name, help, value) in per_worker {
            counter_family(
                enc,
                name,
                help,
                self.workers
                    .iter()
                    .map(|w| (worker_label(w), value(&w.counters))),
            )?;
        }
        histogram_family(
            enc,
            "batch_duration_seconds",
            "Time to run one RX batch through the pipeline, per worker",
            self.workers
                .iter()
                .map(|w| (worker_label(w), w.latency.batch.clone())),
            &LATENCY_BUCKETS_NS,
            ns_per_s,
        )?;
        histogram_family(
            enc,
            "packet_latency_seconds",
            "Pipeline time of one packet (sampled), per worker",
            self.workers
                .iter()
                .map(|w| (worker_label(w), w.latency.packet.clone())),
            &LATENCY_BUCKETS_NS,
            ns_per_s,
        )?;
        histogram_family(
            enc,
            "batch_size_frames",
            "Frames per RX batch, per worker",
            self.workers
                .iter()
                .map(|w| (worker_label(w), w.latency.batch_size.clone())),
            &BATCH_SIZE_BUCKETS,
            1.0,
        )?;

        // Connection tracking.
        let ct = &self.conntrack;
        gauge(
            enc,
            "conntrack_entries",
            "Conntrack entries (two per flow: forward and reply)",
            ct.entries,
        )?;
        gauge(enc, "conntrack_flows", "Tracked flows", ct.flows)?;
        gauge(
            enc,
            "conntrack_unreplied_flows",
            "Tracked flows no reply has been seen for",
            ct.unreplied,
        )?;
        gauge(
            enc,
            "conntrack_max_flows",
            "Flows the table holds at most",
            ct.max_flows,
        )?;
        counter(enc, "conntrack_inserted", "Flows tracked", ct.inserted)?;
        counter_family(
            enc,
            "conntrack_evicted",
            "Flows evicted to make room for new ones, by class (expired, unassured, closing)",
            EvictionClass::ALL
                .iter()
                .zip(ct.evicted)
                .map(|(c, n)| ([("class", c.name())], n)),
        )?;
        counter(
            enc,
            "conntrack_replaced",
            "Flows in TIME_WAIT or CLOSE replaced by a new SYN on the same 5-tuple",
            ct.replaced,
        )?;
        counter(
            enc,
            "conntrack_refused",
            "New flows refused because nothing could be evicted",
            ct.refused,
        )?;
        if !self.snat.in_use.is_empty() {
            let mut metric = enc.encode_descriptor(
                "snat_ports_in_use",
                "Source NAT ports held by tracked flows, per SNAT address",
                None,
                MetricType::Gauge,
            )?;
            for (address, n) in &self.snat.in_use {
                metric
                    .encode_family(&[("address", address.to_string())])?
                    .encode_gauge(n)?;
            }
        }
        counter(
            enc,
            "conntrack_retired",
            "Flows removed because their backend or Service went away",
            ct.retired,
        )?;
        counter(
            enc,
            "conntrack_deleted",
            "Flows deleted through the admin endpoint (cipgw conntrack --delete)",
            ct.deleted,
        )?;
        counter_family(
            enc,
            "conntrack_expired",
            "Flows removed for being idle, by the state they were in",
            FlowState::ALL
                .iter()
                .zip(ct.expired)
                .map(|(s, n)| ([("state", s.name())], n)),
        )?;

        // Service table.
        gauge(
            enc,
            "table_generation",
            "Generation of the published service table",
            self.table.generation,
        )?;
        gauge(
            enc,
            "table_services",
            "Services in the table",
            self.table.services,
        )?;
        gauge(
            enc,
            "table_forwarded_services",
            "Services with a VIP",
            self.table.forwarded_services,
        )?;
        gauge(
            enc,
            "table_vip_ports",
            "VIP:port/protocol entries",
            self.table.vip_ports,
        )?;
        gauge(
            enc,
            "table_endpoints",
            "Endpoint address:port/protocol of forwarded Services",
            self.table.endpoints,
        )?;

        // Control plane.
        counter_family(
            enc,
            "control_syncs",
            "Service table syncs from the control source, by result",
            [
                ([("result", "ok")], self.control.syncs_ok),
                ([("result", "error")], self.control.syncs_failed),
            ],
        )?;
        let sync = &self.control.sync_duration;
        enc.encode_descriptor(
            "control_sync_duration_seconds",
            "Time to load, translate, compile and publish the service table",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(
            sync.sum() as f64 / ns_per_s,
            sync.count(),
            &sync.buckets(&SYNC_BUCKETS_NS, ns_per_s),
            None,
        )?;
        let programming = &self.control.programming_duration;
        enc.encode_descriptor(
            "network_programming_duration_seconds",
            "From a change of the source (an EndpointSlice's last-change-trigger-time, or the \
             control file's modification time) to the table holding it being live, as \
             kube-proxy's network_programming_duration_seconds",
            None,
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(
            programming.sum() as f64 / ns_per_s,
            programming.count(),
            &programming.buckets(&SYNC_BUCKETS_NS, ns_per_s),
            None,
        )?;
        gauge(
            enc,
            "control_connected",
            "1 while the source of services is reachable (the Kubernetes API's watches run, \
             the control file reads), else 0",
            u64::from(self.control.connected),
        )?;
        if let Some(last) = &self.control.last_sync {
            gauge(
                enc,
                "control_last_sync_timestamp_seconds",
                "When the last sync ended, seconds since the Unix epoch",
                seconds_since_epoch(last.at),
            )?;
        }
        if let Some(last) = &self.control.last_error {
            gauge(
                enc,
                "control_last_error_timestamp_seconds",
                "When the control plane last failed, seconds since the Unix epoch",
                seconds_since_epoch(last.at),
            )?;
        }

        // Per service port, once the pipeline counts them.
        if !self.services.is_empty() {
            let labels = |s: &ServicePortSnapshot| {
                let (namespace, name) = s.service.split_once('/').unwrap_or(("", &s.service));
                [
                    ("namespace", namespace.to_owned()),
                    ("service", name.to_owned()),
                    ("vip", s.vip.to_string()),
                    ("port", s.port.to_string()),
                    ("protocol", s.protocol.as_str().to_owned()),
                ]
            };
            counter_family(
                enc,
                "service_packets",
                "Packets of a service port's flows, both directions",
                self.services.iter().map(|s| (labels(s), s.totals.packets)),
            )?;
            counter_family(
                enc,
                "service_bytes",
                "Bytes of a service port's flows, both directions",
                self.services.iter().map(|s| (labels(s), s.totals.bytes)),
            )?;
            counter_family(
                enc,
                "service_flows",
                "Connections a service port gave a backend",
                self.services.iter().map(|s| (labels(s), s.totals.flows)),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::{
        exposition, ConntrackNumbers, ControlMetrics, TableStats, WorkerTelemetry,
    };

    fn snapshot(workers: Vec<WorkerSnapshot>) -> Snapshot {
        Snapshot {
            version: "test",
            started: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            ready: true,
            workers,
            table: TableStats::default(),
            conntrack: ConntrackNumbers {
                entries: 4,
                flows: 2,
                ..ConntrackNumbers::default()
            },
            control: ControlMetrics::default().snapshot(),
            services: Vec::new(),
            process: None,
            snat: Default::default(),
            dns: None,
        }
    }

    #[test]
    fn exposition_parses_and_sums_workers() {
        let a = WorkerTelemetry::new(0);
        let b = WorkerTelemetry::new(1);
        a.counters.rx_packets.add(10);
        a.counters.rx_bytes.add(640);
        b.counters.rx_packets.add(5);
        b.counters.tx_packets.add(7);
        a.counters.count_drop(DropReason::TruncatedIpv4);
        b.counters.count_drop(DropReason::TruncatedIpv4);
        b.counters.count_drop(DropReason::MalformedL4);
        a.counters.socket[SocketStat::RxRingFull as usize].set(4);
        b.counters.socket[SocketStat::RxRingFull as usize].set(2);
        let mut rec = a.latency_recorder();
        rec.record_batch(32, Duration::from_micros(3));
        rec.record_packet(Duration::from_nanos(120));
        assert!(rec.flush());

        let snap = snapshot(vec![WorkerSnapshot::read(&a), WorkerSnapshot::read(&b)]);
        let text = encode(snap);
        let exp = exposition::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(exp.get("cipgw_rx_packets_total", &[]), Some(15.0));
        assert_eq!(exp.get("cipgw_rx_bytes_total", &[]), Some(640.0));
        assert_eq!(exp.get("cipgw_tx_packets_total", &[]), Some(7.0));
        assert_eq!(
            exp.get("cipgw_worker_rx_packets_total", &[("worker", "1")]),
            Some(5.0)
        );
        assert_eq!(
            exp.get("cipgw_drops_total", &[("reason", "truncated_ipv4")]),
            Some(2.0)
        );
        assert_eq!(
            exp.get("cipgw_drops_total", &[("reason", "malformed_l4")]),
            Some(1.0)
        );
        assert_eq!(exp.sum("cipgw_drops_total", &[]), 3.0);
        assert_eq!(
            exp.get(
                "cipgw_xsk_socket_stats_total",
                &[("stat", SocketStat::RxRingFull.name())]
            ),
            Some(6.0)
        );
        assert_eq!(
            exp.get("cipgw_batch_size_frames_count", &[("worker", "0")]),
            Some(1.0)
        );
        assert_eq!(
            exp.get(
                "cipgw_batch_size_frames_bucket",
                &[("worker", "0"), ("le", "16.0")]
            ),
            Some(0.0)
        );
        assert_eq!(
            exp.get(
                "cipgw_batch_size_frames_bucket",
                &[("worker", "0"), ("le", "32.0")]
            ),
            Some(1.0)
        );
        assert_eq!(
            exp.get("cipgw_packet_latency_seconds_count", &[("worker", "0")]),
            Some(1.0)
        );
        assert_eq!(exp.get("cipgw_conntrack_entries", &[]), Some(4.0));
        assert_eq!(exp.get("cipgw_ready", &[]), Some(1.0));
        assert_eq!(
            exp.get("cipgw_build_info", &[("version", "test")]),
            Some(1.0)
        );
        assert_eq!(
            exp.family("cipgw_drops").map(|f| f.kind.as_str()),
            Some("counter")
        );
    }

    #[test]
    fn control_syncs_are_exported() {
        let c = ControlMetrics::default();
        c.record_sync::<(), &str>(Duration::from_millis(40), &Err("services.yaml: bad port"));
        c.record_invalid(&"services.yaml: line 3: bad indentation");
        c.record_sync::<(), &str>(Duration::from_millis(3), &Ok(()));
        let mut snap = snapshot(vec![]);
        snap.control = c.snapshot();
        let exp = exposition::parse(&encode(snap)).expect("parses");
        assert_eq!(
            exp.get("cipgw_control_syncs_total", &[("result", "ok")]),
            Some(1.0)
        );
        assert_eq!(
            exp.get("cipgw_control_syncs_total", &[("result", "error")]),
            Some(2.0)
        );
        assert_eq!(
            exp.get("cipgw_control_sync_duration_seconds_count", &[]),
            Some(2.0)
        );
    }
}
