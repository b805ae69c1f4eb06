//! Two gateways between a client network and the Pod network, behind ECMP
//! routes on both sides: what several cipgw gateways behind a router's
//! multipath route look like, for the tests of Maglev's consistent
//! choice, mid-flow pickup and stateless replies.
//!
//! ```text
//! client:eth0 ─ c-client:[br0 in cswitch]─ c-gw1 ─ gw1:to-client   gw1:to-pods ─ p-gw1 ─[br0 in pswitch]:p-podN ─ podN:eth0
//!                                        └─ c-gw2 ─ gw2:to-client   gw2:to-pods ─ p-gw2 ─┘
//! ```
//!
//! Addresses (RFC 2544): client subnet 198.18.0.0/24 (client .2, gw1 .1,
//! gw2 .3), Pod subnet 198.18.2.0/24 (gw1 .1, gw2 .3, Pods .11 ...), VIPs
//! 198.18.100.0/24. The client routes the VIPs, and each Pod routes the
//! client subnet, over both gateways (`ip route ... nexthop via gw1
//! nexthop via gw2`) with layer-4 hashing
//! (`net.ipv4.fib_multipath_hash_policy=1`), so the flows of one client
//! spread over both gateways by 5-tuple, and a flow's replies may take
//! the other gateway than its requests. [`EcmpTopology::set_members`]
//! takes a gateway out of both routes and puts it back, as a router does
//! when a gateway fails or returns. Gateways do not forward in the kernel
//! (ip_forward=0): packets cross them only through cipgw.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::netns::{unique_prefix, Netns};
use super::topology::{
    baseline_sysctls, configure, ethtool, iface, make_switch, net, port_mac, veth,
};
use super::{EchoServer, IfaceInfo, LabError, NodeInfo};

/// Host number of each gateway on both subnets.
const GATEWAY_HOSTS: [u8; 2] = [1, 3];
const FIRST_POD_HOST: u8 = 11;

/// Which gateways the ECMP routes use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Members {
    Both,
    /// Only gateway `i` (0 or 1).
    Only(usize),
}

/// A built ECMP lab; dropping it removes every namespace.
#[derive(Debug)]
pub struct EcmpTopology {
    client: NodeInfo,
    /// Each gateway's client-side and Pod-side interface.
    gateways: Vec<(IfaceInfo, IfaceInfo)>,
    pods: Vec<NodeInfo>,
    // Drop order: nodes before switches.
    client_ns: Netns,
    gateway_ns: Vec<Netns>,
    pod_ns: Vec<Netns>,
    _switches: [Netns; 2],
}

impl EcmpTopology {
    /// Builds the lab with `pods` Pods (1 to 100); `purpose` goes into the
    /// namespace names.
    pub fn build(purpose: &str, pods: usize) -> Result<EcmpTopology, LabError> {
        if !(1..=100).contains(&pods) {
            return Err(LabError::Invalid(format!(
                "an ECMP lab has 1 to 100 Pods, not {pods}"
            )));
        }
        let prefix = unique_prefix(purpose)?;
        let create = |role: &str| -> Result<Netns, LabError> {
            let ns = Netns::create(format!("{prefix}-{role}"))?;
            baseline_sysctls(&ns, false, false)?;
            Ok(ns)
        };
        let client_net = net(0);
        let pod_net = net(2);
        let client_ns = create("client")?;
        let cswitch = create("cswitch")?;
        let pswitch = create("pswitch")?;
        let gateway_ns = vec![create("gw1")?, create("gw2")?];
        let pod_ns = (1..=pods)
            .map(|i| create(&format!("pod{i}")))
            .collect::<Result<Vec<_>, _>>()?;

        let client_if = iface("eth0", client_net, 2, false);
        veth(
            &client_ns,
            &client_if.name,
            client_if.mac,
            &cswitch,
            "c-client",
            port_mac(client_if.addr),
        )?;
        configure(&client_ns, &client_if, true, false)?;

        let mut gateways = Vec::new();
        let (mut client_ports, mut pod_ports) = (vec!["c-client".to_owned()], Vec::new());
        for (i, (gw, host)) in gateway_ns.iter().zip(GATEWAY_HOSTS).enumerate() {
            let to_client = iface("to-client", client_net, host, false);
            let to_pods = iface("to-pods", pod_net, host, false);
            let (c_port, p_port) = (format!("c-gw{}", i + 1), format!("p-gw{}", i + 1));
            veth(
                gw,
                &to_client.name,
                to_client.mac,
                &cswitch,
                &c_port,
                port_mac(to_client.addr),
            )?;
            veth(
                gw,
                &to_pods.name,
                to_pods.mac,
                &pswitch,
                &p_port,
                port_mac(to_pods.addr),
            )?;
            configure(gw, &to_client, false, true)?;
            configure(gw, &to_pods, false, true)?;
            // The switch ports send towards the gateway: complete checksums.
            ethtool(&cswitch, &c_port, &["tx", "off"])?;
            ethtool(&pswitch, &p_port, &["tx", "off"])?;
            client_ports.push(c_port);
            pod_ports.push(p_port);
            gateways.push((to_client, to_pods));
        }

        let mut pod_infos = Vec::new();
        for (i, pod) in pod_ns.iter().enumerate() {
            let host = FIRST_POD_HOST + u8::try_from(i).expect("at most 100 Pods");
            let eth = iface("eth0", pod_net, host, false);
            let port = format!("p-pod{}", i + 1);
            veth(pod, &eth.name, eth.mac, &pswitch, &port, port_mac(eth.addr))?;
            configure(pod, &eth, true, false)?;
            pod_ports.push(port);
            pod_infos.push(NodeInfo {
                name: format!("pod{}", i + 1),
                ns: pod.name().into(),
                iface: eth,
            });
        }
        make_switch(&cswitch, &client_ports)?;
        make_switch(&pswitch, &pod_ports)?;

        // Layer-4 ECMP hashing wherever a multipath route is looked up.
        client_ns.set_sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
        for pod in &pod_ns {
            pod.set_sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
        }
        let lab = EcmpTopology {
            client: NodeInfo {
                name: "client".into(),
                ns: client_ns.name().into(),
                iface: client_if,
            },
            gateways,
            pods: pod_infos,
            client_ns,
            gateway_ns,
            pod_ns,
            _switches: [cswitch, pswitch],
        };
        lab.routes("add", Members::Both)?;
        Ok(lab)
    }

    /// Points both ECMP routes at `members`, as a router does when a
    /// gateway leaves or returns.
    pub fn set_members(&self, members: Members) -> Result<(), LabError> {
        self.routes("replace", members)
    }

    fn routes(&self, verb: &str, members: Members) -> Result<(), LabError> {
        let via = |side: fn(&(IfaceInfo, IfaceInfo)) -> &IfaceInfo| -> Vec<String> {
            let chosen: Vec<&(IfaceInfo, IfaceInfo)> = match members {
                Members::Both => self.gateways.iter().collect(),
                Members::Only(i) => vec![&self.gateways[i]],
            };
            if chosen.len() == 1 {
                vec!["via".into(), side(chosen[0]).addr.to_string()]
            } else {
                chosen
                    .iter()
                    .flat_map(|g| ["nexthop".into(), "via".into(), side(g).addr.to_string()])
                    .collect()
            }
        };
        let route = |ns: &Netns, dst: Ipv4Net, hops: &[String]| -> Result<(), LabError> {
            let dst = dst.to_string();
            let mut args = vec!["route", verb, dst.as_str()];
            args.extend(hops.iter().map(String::as_str));
            ns.ip(&args).map(drop)
        };
        route(&self.client_ns, self.vip_range(), &via(|g| &g.0))?;
        let back = via(|g| &g.1);
        for pod in &self.pod_ns {
            route(pod, self.client_subnet(), &back)?;
        }
        Ok(())
    }

    pub fn vip_range(&self) -> Ipv4Net {
        net(100)
    }

    pub fn client_subnet(&self) -> Ipv4Net {
        net(0)
    }

    /// VIP number `host` (198.18.100.host).
    pub fn vip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 100, host)
    }

    pub fn client(&self) -> &Netns {
        &self.client_ns
    }

    pub fn client_info(&self) -> &NodeInfo {
        &self.client
    }

    /// Gateway `i`'s namespace (0 or 1).
    pub fn gateway(&self, i: usize) -> &Netns {
        &self.gateway_ns[i]
    }

    /// Gateway `i`'s interfaces, for `cipgw run --iface ...`.
    pub fn gateway_ifaces(&self, i: usize) -> [&str; 2] {
        let (c, p) = &self.gateways[i];
        [c.name.as_str(), p.name.as_str()]
    }

    pub fn pods(&self) -> &[NodeInfo] {
        &self.pods
    }

    /// Starts a TCP echo server on every Pod at `<pod ip>:port`.
    pub fn start_tcp_echo(&self, port: u16) -> Result<Vec<EchoServer>, LabError> {
        self.each_pod(EchoServer::start_tcp, port)
    }

    /// Starts a UDP echo server on every Pod at `<pod ip>:port`.
    pub fn start_udp_echo(&self, port: u16) -> Result<Vec<EchoServer>, LabError> {
        self.each_pod(EchoServer::start_udp, port)
    }

    fn each_pod(
        &self,
        start: impl Fn(&Netns, std::net::SocketAddr, &str) -> Result<EchoServer, LabError>,
        port: u16,
    ) -> Result<Vec<EchoServer>, LabError> {
        self.pod_ns
            .iter()
            .zip(&self.pods)
            .map(|(ns, pod)| {
                start(
                    ns,
                    std::net::SocketAddrV4::new(pod.iface.addr, port).into(),
                    &pod.name,
                )
            })
            .collect()
    }
}
