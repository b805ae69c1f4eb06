//! The DNS responders' numbers: answers per rcode, queries per type,
//! queries dropped per reason, truncations, and the table generation the
//! last answer came from. Each responder (a worker, the TCP listener)
//! counts into its own [`DnsCounters`]; a scrape or a status read sums
//! them ([`DnsStats::snapshot`]). With `--dns-upstream`, also what became
//! of forwarded queries.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::dns::forward::{ForwardCounters, ForwardOutcome};
use crate::dns::{DnsCounters, DnsDrop, DnsQtype, DnsRcode};

/// Every DNS responder's counters.
#[derive(Debug)]
pub struct DnsStats {
    responders: RwLock<Vec<Arc<DnsCounters>>>,
    /// Answers and when, at the previous [`DnsStats::answers_per_second`].
    last_rate: Mutex<(Instant, u64)>,
    /// The forwarding's counters, when the gateway forwards.
    forward: OnceLock<Arc<ForwardCounters>>,
}

impl Default for DnsStats {
    fn default() -> Self {
        Self {
            responders: RwLock::new(Vec::new()),
            last_rate: Mutex::new((Instant::now(), 0)),
            forward: OnceLock::new(),
        }
    }
}

/// What became of forwarded queries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardSnapshot {
    pub outcomes: [u64; ForwardOutcome::ALL.len()],
    /// Queries waiting for an upstream.
    pub outstanding: u64,
}

/// The responders' counters summed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsSnapshot {
    pub rcodes: [u64; DnsRcode::ALL.len()],
    pub qtypes: [u64; DnsQtype::ALL.len()],
    pub drops: [u64; DnsDrop::ALL.len()],
    pub truncated: u64,
    /// The newest table generation any responder answered from.
    pub last_generation: u64,
    /// `None`: the gateway does not forward.
    pub forward: Option<ForwardSnapshot>,
}

impl DnsSnapshot {
    pub fn answers(&self) -> u64 {
        self.rcodes.iter().sum()
    }
}

impl DnsStats {
    /// Counters for one more responder.
    pub fn add(&self) -> Arc<DnsCounters> {
        let counters = Arc::new(DnsCounters::default());
        self.responders
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(&counters));
        counters
    }

    /// Counts forwarded queries too (`--dns-upstream`).
    pub fn count_forwarding(&self, counters: Arc<ForwardCounters>) {
        let _ = self.forward.set(counters);
    }

    pub fn snapshot(&self) -> DnsSnapshot {
        let mut s = DnsSnapshot {
            forward: self.forward.get().map(|f| ForwardSnapshot {
                outcomes: ForwardOutcome::ALL.map(|o| f.get(o)),
                outstanding: f.outstanding(),
            }),
            ..DnsSnapshot::default()
        };
        for c in self
            .responders
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            for (sum, counter) in s.rcodes.iter_mut().zip(&c.rcodes) {
                *sum += counter.get();
            }
            for (sum, counter) in s.qtypes.iter_mut().zip(&c.qtypes) {
                *sum += counter.get();
            }
            for (sum, counter) in s.drops.iter_mut().zip(&c.drops) {
                *sum += counter.get();
            }
            s.truncated += c.truncated.get();
            s.last_generation = s.last_generation.max(c.last_generation());
        }
        s
    }

    /// Answers per second since the previous call (or since start).
    pub fn answers_per_second(&self, answers: u64) -> f64 {
        let mut last = self
            .last_rate
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let seconds = now.duration_since(last.0).as_secs_f64();
        let rate = if seconds > 0.0 {
            answers.saturating_sub(last.1) as f64 / seconds
        } else {
            0.0
        };
        *last = (now, answers);
        rate
    }
}

impl Collector for DnsSnapshot {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let mut family = |name: &str, help: &str, series: Vec<(&'static str, &str, u64)>| {
            let mut metric = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (label, value, count) in series {
                metric
                    .encode_family(&[(label, value)])?
                    .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
            }
            Ok::<(), fmt::Error>(())
        };
        family(
            "dns_answers",
            "DNS answers sent, by response code",
            DnsRcode::ALL
                .iter()
                .map(|r| ("rcode", r.as_str(), self.rcodes[*r as usize]))
                .collect(),
        )?;
        family(
            "dns_queries",
            "DNS questions answered, by type",
            DnsQtype::ALL
                .iter()
                .map(|t| ("qtype", t.as_str(), self.qtypes[*t as usize]))
                .collect(),
        )?;
        family(
            "dns_dropped",
            "DNS queries not answered, by reason",
            DnsDrop::ALL
                .iter()
                .map(|d| ("reason", d.as_str(), self.drops[*d as usize]))
                .collect(),
        )?;
        if let Some(forward) = &self.forward {
            family(
                "dns_forwarded",
                "DNS queries for names outside the cluster domain forwarded to an \
                 upstream, by outcome",
                ForwardOutcome::ALL
                    .iter()
                    .map(|o| ("outcome", o.as_str(), forward.outcomes[*o as usize]))
                    .collect(),
            )?;
        }
        enc.encode_descriptor(
            "dns_truncated",
            "DNS answers sent with TC set (too large for the query's UDP size)",
            None,
            MetricType::Counter,
        )?
        .encode_counter::<NoLabelSet, _, u64>(&self.truncated, None)?;
        if let Some(forward) = &self.forward {
            enc.encode_descriptor(
                "dns_forward_outstanding",
                "DNS queries waiting for an upstream's answer",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&(forward.outstanding as i64))?;
        }
        enc.encode_descriptor(
            "dns_generation",
            "Table generation of the last DNS answer from a zone",
            None,
            MetricType::Gauge,
        )?
        .encode_gauge(&(self.last_generation as i64))
    }
}
