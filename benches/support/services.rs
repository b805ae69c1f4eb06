//! The table compilation benches' model: 10,000 Services of 10
//! endpoints each, every Service its own endpoint set.

use std::net::Ipv4Addr;
use std::sync::Arc;

use cipgw_config::{
    ClusterIp, Endpoint, EndpointState, LbAlgorithm, Protocol, Service, ServiceKind, ServiceName,
    ServicePort, ServiceTable, TargetPort,
};
use cipgw_datapath::maglev::MaglevTables;
use cipgw_datapath::table::{CompiledTable, LbPlan};

/// 10,000 Services at VIPs from 198.19.0.0/16, each with 10 endpoints of
/// its own in 198.18.0.0/16; Service `changed` has its last endpoint
/// moved by `version`.
pub fn model(lb: Option<LbAlgorithm>, changed: usize, version: u32) -> Arc<ServiceTable> {
    let services = (0..10_000usize)
        .map(|s| {
            let endpoints = (0..10u32)
                .map(|e| {
                    let bump = if s == changed && e == 9 { version } else { 0 };
                    Endpoint {
                        ip: Ipv4Addr::from(
                            u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (s as u32) * 16 + e + bump,
                        )
                        .into(),
                        port: 8080,
                        state: EndpointState::READY,
                        pod: None,
                        hostname: None,
                    }
                })
                .collect();
            Service {
                name: ServiceName::new("bench", format!("svc-{s:05}")),
                kind: ServiceKind::ClusterIp,
                cluster_ip: ClusterIp::single(std::net::IpAddr::from(Ipv4Addr::from(
                    u32::from(Ipv4Addr::new(198, 19, 0, 1)) + s as u32,
                ))),
                ip_family_policy: cipgw_config::IpFamilyPolicy::SingleStack,
                ip_families: vec![cipgw_config::IpFamily::V4],
                ports: vec![ServicePort {
                    name: None,
                    port: 80,
                    protocol: Protocol::Tcp,
                    target_port: TargetPort::Number(8080),
                    endpoints,
                }],
                session_affinity: None,
                lb_algorithm: lb,
                external_name: None,
                publish_not_ready_addresses: false,
            }
        })
        .collect();
    Arc::new(ServiceTable { services })
}

pub fn compile(model: &Arc<ServiceTable>, tables: &mut MaglevTables) -> CompiledTable {
    CompiledTable::compile_with_lb(
        Arc::clone(model),
        1,
        |_, _| None,
        LbPlan {
            default: LbAlgorithm::Random,
            maglev: tables,
        },
    )
}
