//! A cluster-shaped lab: nodes with Pods on one routed pod network, and a
//! one-arm gateway node to which the nodes route the service CIDR, as in
//! a real cluster with dedicated gateway nodes.
//!
//! ```text
//!   gateway:lan0 ── p-gw ─┐
//!   node1:eth0 ── p-node1 ┤ br0 in `switch` (node network 198.18.1.0/24)
//!   node2:eth0 ── p-node2 ┘
//!   node N: br0 198.18.(10+N).1/24 ── vpK ── podK:eth0 198.18.(10+N).(10+K)
//! ```
//!
//! Every node forwards (ip_forward=1) and routes each other node's Pod
//! subnet via that node, and the VIP range (198.18.100.0/24) via the
//! gateway (198.18.1.1); Pods route by default via their node. So Pods
//! reach each other directly, never through the gateway, and a Pod's
//! answer to another Pod's address bypasses the gateway: without source
//! NAT a VIP connection fails, which is what `--snat` is for. The gateway
//! routes the Pod subnets via their nodes and does not forward itself
//! (ip_forward=0); its interface also holds a spare address (198.18.1.2)
//! for a second `--snat-address`.
//!
//! Which Pods are clients and which are backends is the user's choice:
//! every Pod is the same kind of namespace. The invariants of
//! [`super::topology`] hold here too (namespaces only, RFC 2544
//! addresses, checksum offload off towards the gateway, GRO off on the
//! gateway, IPv6 off unless dual-stack, fixed MACs, everything removed on
//! drop).
//!
//! A dual-stack cluster ([`ClusterBuilder::dual_stack`]) mirrors every
//! address and route in IPv6 as [`super::topology`] describes (198.18.X.Y
//! is 2001:2:0:X::Y): node network 2001:2:0:1::/64 (gateway ::1, spare
//! ::2, deprecated so that it is never chosen as a source, nodes ::11,
//! ...), node N's Pods on 2001:2:0:(10+N)::/64 (bridge
//! ::1, Pods ::11, ...), VIPs 2001:2:0:100::/64, and 2001:2::/56 (the node
//! network and every Pod subnet, not the VIPs) for `--cluster-cidr`. Nodes
//! forward IPv6 too; the gateway does not.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{Ipv4Net, Ipv6Net};

use super::echo::EchoServer;
use super::netns::{unique_prefix, Netns};
use super::topology::{
    add_ipv6, baseline_sysctls, configure, ethtool, iface, ipv6_of, make_switch, net, net6_of,
    port_mac, require_ipv6, socket_addr, veth, IfaceInfo, NodeInfo,
};
use super::LabError;

/// Nodes a cluster lab takes.
pub const MAX_NODES: usize = 8;
/// Pods per node.
pub const MAX_PODS_PER_NODE: usize = 8;

/// The node network's third octet.
const NODE_NET: u8 = 1;
/// Node N's Pod subnet is 198.18.(POD_NET_BASE + N).0/24.
const POD_NET_BASE: u8 = 10;
/// The gateway's spare address on the node network.
const SPARE_HOST: u8 = 2;

/// Everything tests and the demo need to know about a built cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// The gateway's namespace.
    pub gateway_ns: String,
    /// The gateway's one interface, on the node network.
    pub gateway: IfaceInfo,
    /// A second address on the gateway's interface (for `--snat-address`).
    pub gateway_spare: Ipv4Addr,
    /// Node `i`'s namespace and uplink (`nodes[0]` is node1).
    pub nodes: Vec<NodeInfo>,
    /// Every Pod, node by node, in the order given to the builder; its
    /// `name` is the one given.
    pub pods: Vec<NodeInfo>,
    /// The node (index into `nodes`) of each Pod.
    pub pod_nodes: Vec<usize>,
    /// The node network.
    pub node_net: Ipv4Net,
    /// The service CIDR the nodes route to the gateway.
    pub vip_range: Ipv4Net,
    /// All Pod subnets together (198.18.0.0/15 covers them all; this is
    /// the narrower 198.18.0.0/16 range for `--cluster-cidr`).
    pub cluster_cidr: Ipv4Net,
    /// The IPv6 side of a dual-stack cluster; `None` when IPv6 is off.
    pub ipv6: Option<ClusterIpv6>,
}

/// The IPv6 subnets of a dual-stack cluster lab (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterIpv6 {
    /// The node network, 2001:2:0:1::/64.
    pub node_net: Ipv6Net,
    /// The IPv6 service CIDR, 2001:2:0:100::/64.
    pub vip_range: Ipv6Net,
    /// The node network and every Pod subnet, 2001:2::/56.
    pub cluster_cidr: Ipv6Net,
    /// The gateway's spare IPv6 address, 2001:2:0:1::2.
    pub gateway_spare: Ipv6Addr,
}

impl ClusterInfo {
    /// VIP number `host` in the VIP range (198.18.100.host).
    pub fn vip(&self, host: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.vip_range.network().octets();
        Ipv4Addr::new(a, b, c, host)
    }

    /// The IPv6 VIP mirroring [`ClusterInfo::vip`] (2001:2:0:100::host).
    pub fn vip6(&self, host: u8) -> Ipv6Addr {
        ipv6_of(self.vip(host))
    }

    /// The IPv6 side, or an error when the cluster is not dual-stack.
    pub fn ipv6(&self) -> Result<&ClusterIpv6, LabError> {
        self.ipv6
            .as_ref()
            .ok_or_else(|| LabError::Invalid("the cluster lab is not dual-stack".into()))
    }

    /// The Pod named `name`.
    pub fn pod(&self, name: &str) -> Option<&NodeInfo> {
        self.pods.iter().find(|p| p.name == name)
    }
}

/// Which Pods run on which node; [`ClusterBuilder::build`] makes it.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    purpose: String,
    nodes: Vec<Vec<String>>,
    dual_stack: bool,
}

impl ClusterBuilder {
    /// A cluster lab; `purpose` goes into the namespace names.
    pub fn new(purpose: &str) -> Self {
        Self {
            purpose: purpose.to_owned(),
            nodes: Vec::new(),
            dual_stack: false,
        }
    }

    /// Give every node and Pod an IPv6 address and route IPv6 as IPv4 is
    /// routed (see the module doc); off by default.
    pub fn dual_stack(mut self, on: bool) -> Self {
        self.dual_stack = on;
        self
    }

    /// Adds a node running Pods named `pods`.
    pub fn node(mut self, pods: &[&str]) -> Self {
        self.nodes
            .push(pods.iter().map(|p| (*p).to_owned()).collect());
        self
    }

    /// Creates the namespaces, links, addresses and routes. On error
    /// everything created so far is removed again.
    pub fn build(self) -> Result<Cluster, LabError> {
        if !(1..=MAX_NODES).contains(&self.nodes.len())
            || self.nodes.iter().any(|p| p.len() > MAX_PODS_PER_NODE)
        {
            return Err(LabError::Invalid(format!(
                "a cluster lab has 1 to {MAX_NODES} nodes of at most {MAX_PODS_PER_NODE} Pods"
            )));
        }
        if self.dual_stack {
            require_ipv6()?;
        }
        let prefix = unique_prefix(&self.purpose)?;
        let create = |role: &str, forwarding: bool| -> Result<Netns, LabError> {
            let ns = Netns::create(format!("{prefix}-{role}"))?;
            baseline_sysctls(&ns, forwarding, self.dual_stack)?;
            Ok(ns)
        };
        // Owned as soon as each exists, so an error drops (removes) them.
        let mut cluster = Cluster {
            pod_ns: Vec::new(),
            node_ns: Vec::new(),
            gateway_ns: create("gw", false)?,
            switch_ns: create("switch", false)?,
            info: None,
        };
        for i in 1..=self.nodes.len() {
            cluster.node_ns.push(create(&format!("node{i}"), true)?);
        }
        for (n, pods) in self.nodes.iter().enumerate() {
            for k in 1..=pods.len() {
                cluster
                    .pod_ns
                    .push(create(&format!("n{}p{k}", n + 1), false)?);
            }
        }
        let info = self.wire(&cluster)?;
        cluster.info = Some(info);
        Ok(cluster)
    }

    fn wire(&self, c: &Cluster) -> Result<ClusterInfo, LabError> {
        let node_net = net(NODE_NET);
        let vip_range = net(100);
        let v6 = self.dual_stack;
        let gw = iface("lan0", node_net, 1, v6);
        let spare = iface("lan0", node_net, SPARE_HOST, v6);
        veth(
            &c.gateway_ns,
            &gw.name,
            gw.mac,
            &c.switch_ns,
            "p-gw",
            port_mac(gw.addr),
        )?;
        let mut ports = vec!["p-gw".to_owned()];
        let mut nodes = Vec::new();
        for (n, ns) in c.node_ns.iter().enumerate() {
            let uplink = iface("eth0", node_net, node_host(n), v6);
            let port = format!("p-node{}", n + 1);
            veth(
                ns,
                &uplink.name,
                uplink.mac,
                &c.switch_ns,
                &port,
                port_mac(uplink.addr),
            )?;
            ports.push(port);
            nodes.push(NodeInfo {
                name: format!("node{}", n + 1),
                ns: ns.name().into(),
                iface: uplink,
            });
        }
        make_switch(&c.switch_ns, &ports)?;
        ethtool(&c.switch_ns, "p-gw", &["tx", "off"])?;
        configure(&c.gateway_ns, &gw, false, true)?;
        c.gateway_ns
            .ip(&["addr", "add", &spare.cidr().to_string(), "dev", "lan0"])?;
        if let Some(cidr6) = spare.cidr6() {
            // Deprecated (preferred lifetime 0): never the kernel's choice
            // of source, only used where named (`--snat-address`), so the
            // gateway's own address is ::1 beyond doubt, as 198.18.1.1 is
            // the IPv4 primary.
            c.gateway_ns.ip(&[
                "-6",
                "addr",
                "add",
                &cidr6.to_string(),
                "dev",
                "lan0",
                "nodad",
                "preferred_lft",
                "0",
            ])?;
        }

        let mut pods = Vec::new();
        let mut pod_nodes = Vec::new();
        let mut pod_ns = c.pod_ns.iter();
        for (n, names) in self.nodes.iter().enumerate() {
            let node = &c.node_ns[n];
            let subnet = pod_subnet(n);
            configure(node, &nodes[n].iface, true, false)?;
            // The node's Pod bridge, the Pods' default gateway.
            let mut bridge_ports = Vec::new();
            for (k, name) in names.iter().enumerate() {
                let ns = pod_ns.next().expect("one namespace per Pod");
                let eth = iface("eth0", subnet, 11 + k as u8, v6);
                let port = format!("vp{}", k + 1);
                veth(ns, &eth.name, eth.mac, node, &port, port_mac(eth.addr))?;
                configure(ns, &eth, true, false)?;
                bridge_ports.push(port);
                pods.push(NodeInfo {
                    name: name.clone(),
                    ns: ns.name().into(),
                    iface: eth,
                });
                pod_nodes.push(n);
            }
            make_switch(node, &bridge_ports)?;
            let bridge = iface("br0", subnet, 1, v6);
            node.ip(&["addr", "add", &bridge.cidr().to_string(), "dev", "br0"])?;
            if let Some(cidr6) = bridge.cidr6() {
                add_ipv6(node, "br0", cidr6)?;
            }
            for (k, _) in names.iter().enumerate() {
                let ns = &c.pod_ns[pods.len() - names.len() + k];
                ns.ip(&["route", "add", "default", "via", &bridge.addr.to_string()])?;
                if let Some(via6) = bridge.addr6 {
                    ns.ip(&["-6", "route", "add", "default", "via", &via6.to_string()])?;
                }
            }
            // Other nodes' Pods directly over the node network; the VIPs
            // via the gateway.
            for other in 0..self.nodes.len() {
                if other != n {
                    let via = Ipv4Addr::new(198, 18, NODE_NET, node_host(other));
                    node.ip(&[
                        "route",
                        "add",
                        &pod_subnet(other).to_string(),
                        "via",
                        &via.to_string(),
                    ])?;
                    if v6 {
                        node.ip(&[
                            "-6",
                            "route",
                            "add",
                            &net6_of(pod_subnet(other)).to_string(),
                            "via",
                            &ipv6_of(via).to_string(),
                        ])?;
                    }
                }
            }
            node.ip(&[
                "route",
                "add",
                &vip_range.to_string(),
                "via",
                &gw.addr.to_string(),
            ])?;
            let via = nodes[n].iface.addr;
            c.gateway_ns
                .ip(&["route", "add", &subnet.to_string(), "via", &via.to_string()])?;
            if let Some(gw6) = gw.addr6 {
                let vips6 = net6_of(vip_range).to_string();
                node.ip(&["-6", "route", "add", &vips6, "via", &gw6.to_string()])?;
                c.gateway_ns.ip(&[
                    "-6",
                    "route",
                    "add",
                    &net6_of(subnet).to_string(),
                    "via",
                    &ipv6_of(via).to_string(),
                ])?;
            }
        }
        let ipv6 = spare.addr6.map(|gateway_spare| ClusterIpv6 {
            node_net: net6_of(node_net),
            vip_range: net6_of(vip_range),
            cluster_cidr: Ipv6Net::new(Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 0), 56)
                .expect("/56 is valid"),
            gateway_spare,
        });
        Ok(ClusterInfo {
            gateway_ns: c.gateway_ns.name().into(),
            gateway: gw,
            gateway_spare: spare.addr,
            nodes,
            pods,
            pod_nodes,
            node_net,
            vip_range,
            cluster_cidr: Ipv4Net::new(Ipv4Addr::new(198, 18, 0, 0), 16).expect("/16 is valid"),
            ipv6,
        })
    }
}

fn node_host(n: usize) -> u8 {
    11 + n as u8
}

fn pod_subnet(n: usize) -> Ipv4Net {
    net(POD_NET_BASE + 1 + n as u8)
}

/// A built cluster lab. Dropping it removes every namespace, also during
/// a panic unwind; stop echo servers and the gateway first.
#[derive(Debug)]
pub struct Cluster {
    pod_ns: Vec<Netns>,
    node_ns: Vec<Netns>,
    gateway_ns: Netns,
    switch_ns: Netns,
    info: Option<ClusterInfo>,
}

impl Cluster {
    /// Names, addresses and MACs of everything built.
    pub fn info(&self) -> &ClusterInfo {
        self.info.as_ref().expect("a built cluster has its info")
    }

    pub fn gateway(&self) -> &Netns {
        &self.gateway_ns
    }

    /// The namespace of the Pod named `name`.
    pub fn pod_ns(&self, name: &str) -> Option<&Netns> {
        let i = self.info().pods.iter().position(|p| p.name == name)?;
        self.pod_ns.get(i)
    }

    /// Starts a TCP echo server on each Pod named in `pods`, at
    /// `<pod ip>:port`.
    pub fn start_tcp_echo(&self, pods: &[&str], port: u16) -> Result<Vec<EchoServer>, LabError> {
        self.each(pods, port, false, EchoServer::start_tcp)
    }

    /// Starts a UDP echo server on each Pod named in `pods`.
    pub fn start_udp_echo(&self, pods: &[&str], port: u16) -> Result<Vec<EchoServer>, LabError> {
        self.each(pods, port, false, EchoServer::start_udp)
    }

    /// Starts a TCP echo server on each Pod named in `pods`, at
    /// `[<pod ipv6>]:port` (a dual-stack cluster).
    pub fn start_tcp_echo6(&self, pods: &[&str], port: u16) -> Result<Vec<EchoServer>, LabError> {
        self.each(pods, port, true, EchoServer::start_tcp)
    }

    /// Starts a UDP echo server on each Pod named in `pods`, at
    /// `[<pod ipv6>]:port` (a dual-stack cluster).
    pub fn start_udp_echo6(&self, pods: &[&str], port: u16) -> Result<Vec<EchoServer>, LabError> {
        self.each(pods, port, true, EchoServer::start_udp)
    }

    fn each(
        &self,
        pods: &[&str],
        port: u16,
        v6: bool,
        start: impl Fn(&Netns, SocketAddr, &str) -> Result<EchoServer, LabError>,
    ) -> Result<Vec<EchoServer>, LabError> {
        pods.iter()
            .map(|name| {
                let pod = self
                    .info()
                    .pod(name)
                    .ok_or_else(|| LabError::Invalid(format!("no Pod {name} in the cluster")))?;
                let ns = self.pod_ns(name).expect("every Pod has a namespace");
                start(ns, socket_addr(&pod.iface, port, v6)?, name)
            })
            .collect()
    }
}
