//! The gateway's connection tables, one per address family (as Cilium
//! keeps its v4 and v6 conntrack apart: an IPv4 record stays 32 bytes),
//! as the control thread handles them together: opened (and adopted from
//! a previous gateway) side by side on one clock, swept, retired and
//! handed over as one.
//!
//! Each table holds up to `--conntrack-max` flows of its family. For the
//! families the gateway serves, its memory is taken whole at start-up,
//! before the workers run: the index and queues before a running gateway
//! lets go ([`Conntracks::reserve`]), the records after
//! ([`Reserved::open`]). A worker never stalls in a page fault, and a
//! machine short of memory fails the start instead of a flood.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use cipgw_config::settings::Settings;

use crate::conntrack::persist::{self, Previous, TableFile};
use crate::conntrack::snat::SnatConfig;
use crate::conntrack::{Conntrack, ConntrackConfig, Direction, FlowKey};
use crate::family::IpFamily;

use super::plan::{target_of, Target};
use super::snat::Snat;

/// Both families' connection tables and their files.
#[derive(Debug, Clone)]
pub struct Conntracks {
    pub v4: Arc<Conntrack<Ipv4Addr>>,
    pub v6: Arc<Conntrack<Ipv6Addr>>,
    /// The tables' files, when they have them (`--state-dir`).
    files: Vec<Arc<TableFile>>,
}

impl Conntracks {
    /// Empty tables of the default bounds in process memory, with no
    /// source NAT (for tests).
    pub fn in_memory() -> Self {
        Self {
            v4: Arc::default(),
            v6: Arc::default(),
            files: Vec::new(),
        }
    }

    /// Builds both tables in process memory (bounds, workers' queues,
    /// accounting, source NAT) and takes the memory of everything but
    /// their records for the families the gateway serves: the index and
    /// queues are the bulk of a table and hit at random, and this runs
    /// while a gateway still running on the state directory forwards.
    /// [`Reserved::open`] then puts the records in place.
    pub fn reserve(
        settings: &Settings,
        config: ConntrackConfig,
        snat: Option<&Snat>,
    ) -> anyhow::Result<Reserved> {
        let reserved = Reserved {
            v4: build(settings, &config, snat.and_then(Snat::config::<Ipv4Addr>))?,
            v6: build(settings, &config, snat.and_then(Snat::config::<Ipv6Addr>))?,
        };
        take_memory(
            settings.service_cidrs.families(),
            &reserved.v4,
            &reserved.v6,
            Part::AllButRecords,
        )?;
        Ok(reserved)
    }

    fn from_parts((v4, v4_file): Family<Ipv4Addr>, (v6, v6_file): Family<Ipv6Addr>) -> Self {
        Self {
            v4,
            v6,
            files: v4_file.into_iter().chain(v6_file).collect(),
        }
    }

    /// The tables' files (none without `--state-dir`).
    pub fn files(&self) -> &[Arc<TableFile>] {
        &self.files
    }

    /// Flows in both tables.
    pub fn flows(&self) -> usize {
        self.v4.summary().flows + self.v6.summary().flows
    }

    /// Removes expired flows from both tables.
    pub fn sweep(&self, now: u32) -> usize {
        self.v4.sweep(now) + self.v6.sweep(now)
    }

    /// Removes every flow whose target `retire` selects, open or not
    /// ([`Conntrack::retire`]).
    pub fn retire(&self, retire: impl Fn(&Target) -> bool) -> usize {
        self.v4
            .retire(|key, backend| retire(&flow_target(key, backend)))
            + self
                .v6
                .retire(|key, backend| retire(&flow_target(key, backend)))
    }

    /// [`Conntrack::retire_settled`] on both tables: open TCP connections
    /// to selected targets are left to their next packet and their
    /// targets reported to `lingering`.
    pub fn retire_settled(
        &self,
        retire: impl Fn(&Target) -> bool,
        mut lingering: impl FnMut(Target),
    ) -> usize {
        let v4 = self.v4.retire_settled(
            |key, backend| retire(&flow_target(key, backend)),
            |key, backend| lingering(flow_target(key, backend)),
        );
        let v6 = self.v6.retire_settled(
            |key, backend| retire(&flow_target(key, backend)),
            |key, backend| lingering(flow_target(key, backend)),
        );
        v4 + v6
    }

    /// Every target the tables' flows go to.
    pub fn targets(&self) -> HashSet<Target> {
        let mut targets = HashSet::new();
        add_targets(&self.v4, &mut targets);
        add_targets(&self.v6, &mut targets);
        targets
    }

    /// Marks every file clean (workers are gone: the records are at rest).
    pub fn mark_clean(&self) {
        for file in &self.files {
            file.mark_clean();
        }
    }

    /// Hands every file to the next gateway.
    pub fn hand_over(&self) -> anyhow::Result<()> {
        for file in &self.files {
            file.hand_over().with_context(|| {
                format!(
                    "handing over the connection table {}",
                    file.path().display()
                )
            })?;
        }
        Ok(())
    }
}

/// One family's table and its file.
type Family<A> = (Arc<Conntrack<A>>, Option<Arc<TableFile>>);

/// Both families' tables, built and with their index and queues in
/// memory ([`Conntracks::reserve`]), their records not yet in place.
#[derive(Debug)]
pub struct Reserved {
    v4: Conntrack<Ipv4Addr>,
    v6: Conntrack<Ipv6Addr>,
}

impl Reserved {
    /// The connection tables, with their records in their files under
    /// `--state-dir` (adopting the flows a previous gateway left there)
    /// or in process memory, taken for the families the gateway serves;
    /// and the conntrack clock's zero that goes with them.
    pub fn open(self, settings: &Settings) -> anyhow::Result<(Conntracks, Instant)> {
        let Reserved { v4, v6 } = self;
        let (conntracks, epoch) = match &settings.state_dir {
            None => (
                Conntracks::from_parts((Arc::new(v4), None), (Arc::new(v6), None)),
                Instant::now(),
            ),
            Some(dir) => {
                let v4 = open_family(dir, v4, persist::monotonic_ns(), false)?;
                match v4.1.clone() {
                    // No huge pages for the IPv4 table: neither table gets
                    // a file.
                    None => (
                        Conntracks::from_parts(v4, (Arc::new(v6), None)),
                        Instant::now(),
                    ),
                    Some(v4_file) => {
                        let epoch_ns = v4_file.epoch_ns();
                        let v6 = open_family(dir, v6, epoch_ns, true)?;
                        if v6.1.is_none() {
                            tracing::warn!("the IPv6 connection table stays in process memory");
                        }
                        (
                            Conntracks::from_parts(v4, v6),
                            persist::instant_of(epoch_ns),
                        )
                    }
                }
            }
        };
        take_memory(
            settings.service_cidrs.families(),
            &conntracks.v4,
            &conntracks.v6,
            Part::Records,
        )?;
        Ok((conntracks, epoch))
    }
}

/// Family `A`'s table in process memory, of `config`'s bounds, with the
/// settings' workers and accounting and `snat`.
fn build<A: IpFamily>(
    settings: &Settings,
    config: &ConntrackConfig,
    snat: Option<SnatConfig<A>>,
) -> anyhow::Result<Conntrack<A>> {
    let ct = Conntrack::new(*config).with_workers(settings.cores.len());
    let ct = if settings.conntrack.accounting {
        ct.with_accounting()
    } else {
        ct
    };
    Ok(match snat {
        Some(snat) => ct.with_snat(&snat).context("--snat")?,
        None => ct,
    })
}

/// What [`take_memory`] populates of a table: its index, eviction queues
/// and accounts (before a running gateway lets go), or its records.
#[derive(Debug, Clone, Copy)]
enum Part {
    AllButRecords,
    Records,
}

impl Part {
    /// Populates this part of `ct`; returns the outcome and the bytes
    /// the part spans.
    fn populate<A: IpFamily>(self, ct: &Conntrack<A>) -> (std::io::Result<()>, u64) {
        match self {
            Part::AllButRecords => {
                let per_flow = Conntrack::<A>::BYTES_PER_FLOW - Conntrack::<A>::RECORD_BYTES as u64;
                (
                    ct.populate_all_but_records(),
                    ct.config().max_flows as u64 * per_flow,
                )
            }
            Part::Records => (
                ct.populate_records(),
                (Conntrack::<A>::records_for(ct.config()) * Conntrack::<A>::RECORD_BYTES) as u64,
            ),
        }
    }

    /// The log line once the part is populated.
    fn taken(self) -> &'static str {
        match self {
            Part::AllButRecords => "connection tables' index and eviction queues taken",
            Part::Records => "connection tables' records taken",
        }
    }
}

/// Populates `part` of the tables of `families` and logs how long it
/// took. Where the kernel cannot (MADV_POPULATE_WRITE, before Linux 5.14)
/// the memory is taken as flows first touch it, with a warning; a kernel
/// short of memory fails the start.
fn take_memory(
    families: impl IntoIterator<Item = cipgw_config::IpFamily>,
    v4: &Conntrack<Ipv4Addr>,
    v6: &Conntrack<Ipv6Addr>,
    part: Part,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut bytes = 0;
    for family in families {
        let populated = match family {
            cipgw_config::IpFamily::V4 => part.populate(v4),
            cipgw_config::IpFamily::V6 => part.populate(v6),
        };
        match populated {
            (Ok(()), covered) => bytes += covered,
            (Err(e), _) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(
                    error = %e,
                    "the kernel cannot populate the connection tables (MADV_POPULATE_WRITE, \
                     Linux 5.14): their pages are taken as flows first touch them, \
                     and those flows' packets wait for the page faults"
                );
                return Ok(());
            }
            (Err(e), _) => {
                return Err(e).context(
                    "taking the connection tables' memory (lower --conntrack-max, \
                     or free memory)",
                )
            }
        }
    }
    tracing::info!(mib = bytes >> 20, took = ?started.elapsed(), "{}", part.taken());
    Ok(())
}

/// The target of a flow (forward key, backend).
fn flow_target<A: IpFamily>(key: &FlowKey<A>, backend: (A, u16)) -> Target {
    target_of(key.dst, key.dst_port, key.protocol, backend)
}

fn add_targets<A: IpFamily>(ct: &Conntrack<A>, targets: &mut HashSet<Target>) {
    ct.for_each(|key, hit| {
        if hit.direction == Direction::Forward {
            targets.insert(flow_target(key, (hit.nat_ip, hit.nat_port)));
        }
    });
}

/// Family `A`'s table `table` (built, holding no flow) moved into its
/// file under `dir`, adopting a previous gateway's flows (when
/// `shared_clock`, only a table on the clock `epoch_ns` of the table
/// beside it, as the IPv6 one beside the IPv4 one); left in process
/// memory when no huge pages are free for the file.
fn open_family<A: IpFamily>(
    dir: &Path,
    table: Conntrack<A>,
    epoch_ns: u64,
    shared_clock: bool,
) -> anyhow::Result<Family<A>> {
    let records = Conntrack::<A>::records_for(table.config());
    let opened = match shared_clock {
        false => TableFile::open(dir, records, Conntrack::<A>::LAYOUT, epoch_ns),
        true => TableFile::open_beside(dir, records, Conntrack::<A>::LAYOUT, epoch_ns),
    };
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::OutOfMemory => {
            tracing::warn!(
                error = %e,
                family = A::NAME,
                "no huge pages for the connection table: it stays in process memory on \
                 normal pages, and a restart will reset connections"
            );
            return Ok((Arc::new(table), None));
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "--state-dir {}: opening the {} connection table",
                    dir.display(),
                    A::NAME
                )
            })
        }
    };
    let file = Arc::new(file);
    match file.huge_page_size() {
        Some(page) => tracing::info!(
            family = A::NAME,
            huge_page_kib = page >> 10,
            "connection table on huge pages"
        ),
        None => tracing::info!(family = A::NAME, "connection table on normal pages"),
    }
    let conntrack = Arc::new(table.into_file(Arc::clone(&file)));
    let path = file.path().display().to_string();
    match file.previous() {
        Previous::Fresh => tracing::info!(%path, "new connection table"),
        Previous::SetAside { aside, reason } => tracing::warn!(
            %path,
            aside = %aside.as_ref().map_or("removed".into(), |a| a.display().to_string()),
            %reason,
            "the connection table left there cannot be used; it was set aside and a new one started \
             (connections through the previous gateway will be reset)"
        ),
        Previous::Compatible { clean } => {
            let now = persist::instant_of(file.epoch_ns()).elapsed().as_secs() as u32;
            let adoption = conntrack.adopt(now);
            tracing::info!(
                %path,
                clean_stop = clean,
                flows = adoption.flows,
                expired = adoption.expired,
                discarded = adoption.discarded,
                "connection table adopted from the previous gateway"
            );
        }
    }
    Ok((conntrack, Some(file)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::FlowMeta;
    use cipgw_config::Protocol;

    /// Targets come from both tables, each in its own family.
    #[test]
    fn targets_and_retirement_cover_both_families() {
        let tables = Conntracks::in_memory();
        let key4 = FlowKey {
            src: Ipv4Addr::new(198, 18, 0, 2),
            dst: Ipv4Addr::new(198, 18, 100, 1),
            src_port: 40000,
            dst_port: 80,
            protocol: Protocol::Tcp,
        };
        let key6 = FlowKey {
            src: "2001:2::2".parse::<Ipv6Addr>().expect("literal"),
            dst: "2001:2:0:100::1".parse().expect("literal"),
            src_port: 40000,
            dst_port: 80,
            protocol: Protocol::Udp,
        };
        let pod4 = (Ipv4Addr::new(198, 18, 2, 11), 8080);
        let pod6 = ("2001:2:0:2::11".parse::<Ipv6Addr>().expect("literal"), 8080);
        tables
            .v4
            .insert(key4, pod4, 0, FlowMeta::default())
            .expect("room");
        tables
            .v6
            .insert(key6, pod6, 0, FlowMeta::default())
            .expect("room");
        let t4 = target_of(key4.dst, 80, Protocol::Tcp, pod4);
        let t6 = target_of(key6.dst, 80, Protocol::Udp, pod6);
        assert_eq!(tables.targets(), HashSet::from([t4, t6]));
        assert_eq!(tables.flows(), 2);
        assert_eq!(tables.retire(|t| *t == t6), 1, "the IPv6 flow only");
        assert_eq!(tables.targets(), HashSet::from([t4]));
    }
}
