//! Building the JSON views at request time: from a [`Snapshot`](crate::metrics::Snapshot)
//! of the counters, the published table's model, and one lock-free walk
//! over conntrack's records per request.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use cipgw_config::{ClusterIp, EndpointState, Protocol};

use super::views::*;
use super::{AdminState, ConntrackQuery};
use crate::conntrack::{Conntrack, Direction, FlowCounts, FlowState};
use crate::family::IpFamily;
use crate::maglev::MaglevFamily;
use crate::table::{CompiledTable, ServiceKey};

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

fn endpoint_state(s: EndpointState) -> &'static str {
    if s.ready {
        "ready"
    } else if s.terminating {
        "terminating"
    } else if s.serving {
        "serving"
    } else {
        "not-ready"
    }
}

pub(super) fn status_view(state: &AdminState) -> StatusView {
    let snap = state.snapshot();
    let now = SystemTime::now();
    let ago = |t: SystemTime| now.duration_since(t).unwrap_or_default().as_secs_f64();
    let ct = snap.conntrack;
    StatusView {
        version: snap.version.to_owned(),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        ready: snap.ready,
        interfaces: state.ifaces.clone(),
        interface_modes: state.interface_modes(),
        table: TableView {
            generation: snap.table.generation,
            services: snap.table.services,
            forwarded_services: snap.table.forwarded_services,
            vip_ports: snap.table.vip_ports,
            endpoints: snap.table.endpoints,
        },
        conntrack: ConntrackStatusView {
            entries: ct.entries,
            flows: ct.flows,
            unreplied: ct.unreplied,
            max_flows: ct.max_flows,
            inserted: ct.inserted,
            evicted: ct.total_evicted(),
            refused: ct.refused,
            retired: ct.retired,
            deleted: ct.deleted,
            expired: ct.total_expired(),
            snat: snap
                .snat
                .in_use
                .iter()
                .map(|&(address, ports_in_use)| super::views::SnatAddressView {
                    address,
                    ports_in_use,
                })
                .collect(),
            snat_ports: snap
                .snat
                .ports
                .as_ref()
                .map(|r| format!("{}-{}", r.start(), r.end())),
        },
        totals: CountersView::from(&snap.totals()),
        workers: snap
            .workers
            .iter()
            .map(|w| WorkerView {
                core: w.core,
                counters: CountersView::from(&w.counters),
                batch_ns: QuantilesView::from(&w.latency.batch),
                packet_ns: QuantilesView::from(&w.latency.packet),
                batch_size: QuantilesView::from(&w.latency.batch_size),
            })
            .collect(),
        control: ControlView {
            syncs_ok: snap.control.syncs_ok,
            syncs_failed: snap.control.syncs_failed,
            last_sync: snap.control.last_sync.as_ref().map(|s| LastSyncView {
                seconds_ago: ago(s.at),
                duration_ms: s.duration.as_secs_f64() * 1e3,
                ok: s.ok,
            }),
            last_error: snap.control.last_error.as_ref().map(|e| LastErrorView {
                seconds_ago: ago(e.at),
                message: e.message.clone(),
            }),
        },
        dns: snap.dns.as_ref().map(|d| {
            let answers = d.answers();
            DnsStatusView {
                answers,
                answers_per_second: state
                    .dns
                    .get()
                    .map_or(0.0, |s| s.answers_per_second(answers)),
                last_generation: d.last_generation,
                truncated: d.truncated,
                dropped: d.drops.iter().sum(),
                forwarded: d.forward.as_ref().map(|f| {
                    use crate::dns::forward::ForwardOutcome as O;
                    let n = |o: O| f.outcomes[o as usize];
                    super::views::DnsForwardView {
                        sent: n(O::Sent),
                        answered: n(O::Answered),
                        timed_out: n(O::TimedOut),
                        dropped: n(O::TableFull)
                            + n(O::SendFailed)
                            + n(O::Unexpected)
                            + n(O::RelayFailed),
                    }
                }),
            }
        }),
    }
}

/// The fingerprint (16 hex digits) of the Maglev table of `vip`'s `port`,
/// if the port uses Maglev: either family, as `cipgw check` prints them.
fn maglev_fingerprint(
    table: &CompiledTable,
    vip: IpAddr,
    port: u16,
    protocol: Protocol,
) -> Option<String> {
    fn of<A: MaglevFamily>(
        table: &CompiledTable,
        vip: A,
        port: u16,
        protocol: Protocol,
    ) -> Option<String> {
        let key = ServiceKey {
            vip,
            port,
            protocol,
        };
        let maglev = table.family::<A>().port_entry(&key)?.maglev.as_ref()?;
        Some(format!("{:016x}", maglev.fingerprint()))
    }
    match vip {
        IpAddr::V4(vip) => of(table, vip, port, protocol),
        IpAddr::V6(vip) => of(table, vip, port, protocol),
    }
}

/// A VIP:port/protocol, packed for map keys.
type PortKey = (IpAddr, u16, Protocol);

/// Tracked flows, split as ipvsadm splits ActiveConn and InActConn.
#[derive(Debug, Clone, Copy, Default)]
struct Conns {
    active: u64,
    inactive: u64,
}

impl Conns {
    fn count(&mut self, active: bool) {
        if active {
            self.active += 1;
        } else {
            self.inactive += 1;
        }
    }
}

/// Calls `visit` with the VIP port, backend and state of every flow in
/// `ct`, once per flow (its forward entry).
fn for_each_forward<A: IpFamily>(
    ct: &Conntrack<A>,
    visit: &mut impl FnMut(PortKey, SocketAddr, FlowState),
) {
    ct.for_each(|key, hit| {
        if hit.direction == Direction::Forward {
            let port = (key.dst.into(), key.dst_port, key.protocol);
            visit(
                port,
                SocketAddr::new(hit.nat_ip.into(), hit.nat_port),
                hit.state,
            );
        }
    });
}

pub(super) fn services_view(state: &AdminState) -> ServicesView {
    let table = state.table.current();
    // Active and inactive flows per port and per (port, backend), from
    // one walk over the forward entries. Active is ipvsadm's ActiveConn:
    // an ESTABLISHED TCP connection; everything else is inactive.
    let mut per_port: HashMap<PortKey, Conns> = HashMap::new();
    let mut per_backend: HashMap<(PortKey, SocketAddr), Conns> = HashMap::new();
    let mut count = |port: PortKey, backend: SocketAddr, flow_state: FlowState| {
        let active = flow_state == FlowState::TcpEstablished;
        per_port.entry(port).or_default().count(active);
        per_backend
            .entry((port, backend))
            .or_default()
            .count(active);
    };
    for_each_forward(&state.conntrack, &mut count);
    if let Some(v6) = state.conntrack6.get() {
        for_each_forward(v6, &mut count);
    }
    let stats = state.services.get();
    let services = table
        .model()
        .services
        .iter()
        .map(|service| {
            // The port's flows and counters sum every VIP's; `vips` has
            // each VIP's with its own Maglev table.
            let vips: Vec<IpAddr> = service.cluster_ip.vips().collect();
            let mut view = ServiceView {
                namespace: service.name.namespace.clone(),
                name: service.name.name.clone(),
                kind: service.kind.as_str().to_owned(),
                vip: service.cluster_ip.primary(),
                cluster_ip: match service.cluster_ip {
                    ClusterIp::Vips(vips) => vips.primary().to_string(),
                    ClusterIp::Headless => "None".to_owned(),
                    ClusterIp::ExternalName => String::new(),
                },
                cluster_ips: service.cluster_ip.vips().collect(),
                ip_families: service
                    .ip_families
                    .iter()
                    .map(|f| f.as_str().to_owned())
                    .collect(),
                ip_family_policy: service.ip_family_policy.as_str().to_owned(),
                active_flows: 0,
                inactive_flows: 0,
                affinity_seconds: service.session_affinity,
                packets: None,
                bytes: None,
                flows: None,
                ports: Vec::with_capacity(service.ports.len()),
            };
            for port in &service.ports {
                let key_of = |vip: IpAddr| (vip, port.port, port.protocol);
                let totals = match stats {
                    Some(s) if !vips.is_empty() => {
                        s.totals(&service.name, port.port, port.protocol)
                    }
                    _ => None,
                };
                let endpoint_totals = match (stats, totals) {
                    (Some(s), Some(_)) => {
                        s.endpoint_totals(&service.name, port.port, port.protocol)
                    }
                    _ => Default::default(),
                };
                let per_vip: Vec<VipPortView> = vips
                    .iter()
                    .map(|&vip| {
                        let conns = per_port.get(&key_of(vip)).copied().unwrap_or_default();
                        let counted = match (stats, totals) {
                            (Some(s), Some(_)) => s.family_totals(
                                &service.name,
                                port.port,
                                port.protocol,
                                vip.is_ipv6(),
                            ),
                            _ => None,
                        };
                        VipPortView {
                            vip,
                            maglev_fingerprint: maglev_fingerprint(
                                &table,
                                vip,
                                port.port,
                                port.protocol,
                            ),
                            active_flows: conns.active,
                            inactive_flows: conns.inactive,
                            packets: counted.map(|t| t.packets),
                            bytes: counted.map(|t| t.bytes),
                            flows: counted.map(|t| t.flows),
                        }
                    })
                    .collect();
                let conns = per_vip.iter().fold(Conns::default(), |sum, v| Conns {
                    active: sum.active + v.active_flows,
                    inactive: sum.inactive + v.inactive_flows,
                });
                view.active_flows += conns.active;
                view.inactive_flows += conns.inactive;
                if let Some(t) = totals {
                    view.packets = Some(view.packets.unwrap_or(0) + t.packets);
                    view.bytes = Some(view.bytes.unwrap_or(0) + t.bytes);
                    view.flows = Some(view.flows.unwrap_or(0) + t.flows);
                }
                // The primary VIP's table: the IPv4 one if any (as before
                // IPv6 was forwarded), else the IPv6 one.
                let primary = per_vip
                    .iter()
                    .find(|v| v.vip.is_ipv4())
                    .or_else(|| per_vip.first());
                let maglev = per_vip.iter().any(|v| v.maglev_fingerprint.is_some());
                view.ports.push(PortView {
                    name: port.name.clone(),
                    protocol: protocol_name(port.protocol).to_owned(),
                    port: port.port,
                    target_port: port.target_port.to_string(),
                    lb_algorithm: if maglev { "maglev" } else { "random" }.to_owned(),
                    maglev_fingerprint: primary.and_then(|v| v.maglev_fingerprint.clone()),
                    active_flows: conns.active,
                    inactive_flows: conns.inactive,
                    packets: totals.map(|t| t.packets),
                    bytes: totals.map(|t| t.bytes),
                    flows: totals.map(|t| t.flows),
                    vips: per_vip,
                    endpoints: port
                        .endpoints
                        .iter()
                        .map(|e| {
                            // Its flows come through its family's VIP.
                            let conns = vips
                                .iter()
                                .find(|v| v.is_ipv4() == e.ip.is_ipv4())
                                .and_then(|&v| {
                                    per_backend
                                        .get(&(key_of(v), SocketAddr::new(e.ip, e.port)))
                                        .copied()
                                })
                                .unwrap_or_default();
                            // `None` only when no counter slot was left
                            // for it.
                            let counted = endpoint_totals.get(&(e.ip, e.port)).copied();
                            EndpointView {
                                ip: e.ip,
                                port: e.port,
                                pod: e.pod.clone(),
                                state: endpoint_state(e.state).to_owned(),
                                ready: e.state.ready,
                                serving: e.state.serving,
                                terminating: e.state.terminating,
                                active_flows: conns.active,
                                inactive_flows: conns.inactive,
                                packets: counted.map(|t| t.packets),
                                bytes: counted.map(|t| t.bytes),
                                flows: counted.map(|t| t.flows),
                            }
                        })
                        .collect(),
                });
            }
            view
        })
        .collect();
    ServicesView {
        generation: table.generation(),
        counted: stats.is_some(),
        services,
    }
}

/// A flow as sorted and merged: VIP first, so one Service's flows are
/// listed together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct FlowTuple {
    vip: (IpAddr, u16),
    protocol: u8,
    client: (IpAddr, u16),
    backend: (IpAddr, u16),
    /// The source NAT address and port the backend sees, if any.
    snat: Option<(IpAddr, u16)>,
}

fn sockaddr((ip, port): (IpAddr, u16)) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// `/api/conntrack`: the flows `q` selects, a page of them. `now` is
/// conntrack's clock (see [`AdminState::conntrack_now`]); without it the
/// flows carry no expiry.
/// One entry of a flow while the view is built; the two entries of a
/// flow merge into one row.
struct FlowRow {
    tuple: FlowTuple,
    forward: bool,
    reply: bool,
    state: &'static str,
    left: u32,
    counts: Option<FlowCounts>,
}

pub(super) fn conntrack_view(
    state: &AdminState,
    q: &ConntrackQuery,
    now: Option<u32>,
) -> ConntrackView {
    // Both entries of a flow give the same tuple; collect them, sort, and
    // merge neighbours. Filters are applied while walking, so only
    // matching flows are held. IPv4 flows sort before IPv6 ones.
    let mut rows: Vec<FlowRow> = Vec::new();
    add_rows(&state.conntrack, q, now, &mut rows);
    if let Some(v6) = state.conntrack6.get() {
        add_rows(v6, q, now, &mut rows);
    }
    rows.sort_unstable_by_key(|r| (r.tuple, r.reply));
    let mut flows: Vec<FlowRow> = Vec::with_capacity(rows.len());
    for row in rows {
        match flows.last_mut() {
            Some(last) if last.tuple == row.tuple => {
                last.forward |= row.forward;
                last.reply |= row.reply;
            }
            _ => flows.push(row),
        }
    }
    let total = flows.len();
    let page = flows
        .into_iter()
        .skip(q.offset)
        .take(q.limit)
        .map(|row| {
            let FlowRow {
                tuple: t,
                forward,
                reply,
                state,
                left,
                counts,
            } = row;
            FlowView {
                protocol: Protocol::from_ip_number(t.protocol)
                    .map_or("?", protocol_name)
                    .to_owned(),
                client: sockaddr(t.client),
                vip: sockaddr(t.vip),
                backend: sockaddr(t.backend),
                snat: t.snat.map(sockaddr),
                state: state.to_owned(),
                expires_seconds: now.map(|_| left),
                packets: counts.map(|c| c.packets),
                bytes: counts.map(|c| c.bytes),
                forward,
                reply,
            }
        })
        .collect();
    ConntrackView {
        total,
        offset: q.offset,
        limit: q.limit,
        flows: page,
    }
}

/// `DELETE /api/conntrack`: removes the flows `q` selects (see
/// [`ConntrackQuery::parse_delete`]) through [`Conntrack::delete`], in
/// both families' tables.
pub(super) fn delete_flows(state: &AdminState, q: &ConntrackQuery) -> ConntrackDeleted {
    let mut deleted = state
        .conntrack
        .delete(|key, backend| q.selects(key, backend));
    if let Some(v6) = state.conntrack6.get() {
        deleted += v6.delete(|key, backend| q.selects(key, backend));
    }
    ConntrackDeleted { deleted }
}

/// The rows of `ct`'s flows `q` selects.
fn add_rows<A: IpFamily>(
    ct: &Conntrack<A>,
    q: &ConntrackQuery,
    now: Option<u32>,
    rows: &mut Vec<FlowRow>,
) {
    ct.for_each_expiring(now.unwrap_or(0), |key, hit, left| {
        // The wire key's source and destination, and the address the
        // entry rewrites to, are the client, VIP and backend in an order
        // that depends on the direction.
        let (src, dst, nat) = (
            (key.src.into(), key.src_port),
            (key.dst.into(), key.dst_port),
            (hit.nat_ip.into(), hit.nat_port),
        );
        // With source NAT the reply key's destination is the SNAT
        // address and port, and its second rewrite leads to the client.
        let snat = hit.snat.map(|(ip, port)| (ip.into(), port));
        let (client, vip, backend, snat, forward) = match (hit.direction, snat) {
            (Direction::Forward, snat) => (src, dst, nat, snat, true),
            (Direction::Reply, None) => (dst, nat, src, None, false),
            (Direction::Reply, Some(client)) => (client, nat, src, Some(dst), false),
        };
        let tuple = FlowTuple {
            vip,
            protocol: key.protocol.ip_number(),
            client,
            backend,
            snat,
        };
        let keep = q.vip.map_or(true, |f| f.matches(sockaddr(tuple.vip)))
            && q.client.map_or(true, |f| f.matches(sockaddr(tuple.client)))
            && q.backend
                .map_or(true, |f| f.matches(sockaddr(tuple.backend)))
            && q.protocol.map_or(true, |p| p == key.protocol)
            && q.snat_port
                .map_or(true, |p| tuple.snat.is_some_and(|(_, port)| port == p));
        if keep {
            rows.push(FlowRow {
                tuple,
                forward,
                reply: !forward,
                state: hit.state.name(),
                left,
                counts: ct.counts(hit.record),
            });
        }
    });
}
