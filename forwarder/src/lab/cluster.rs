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
//! gateway, IPv6 off, fixed MACs, everything removed on drop).

use std::net::{Ipv4Addr, SocketAddrV4};

use ipnet::Ipv4Net;

use super::echo::EchoServer;
use super::netns::{unique_prefix, Netns};
use super::topology::{
    baseline_sysctls, configure, ethtool, iface, make_switch, net, port_mac, veth, IfaceInfo,
    NodeInfo,
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
}

impl ClusterInfo {
    /// VIP number `host` in the VIP range (198.18.100.host).
    pub fn vip(&self, host: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.vip_range.network().octets();
        Ipv4Addr::new(a, b, c, host)
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
}

impl ClusterBuilder {
    /// A cluster lab; `purpose` goes into the namespace names.
    pub fn new(purpose: &str) -> Self {
        Self {
            purpose: purpose.to_owned(),
            nodes: Vec::new(),
        }
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
        let prefix = unique_prefix(&self.purpose)?;
        let create = |role: &str, forwarding: bool| -> Result<Netns, LabError> {
            let ns = Netns::create(format!("{prefix}-{role}"))?;
            baseline_sysctls(&ns, forwarding)?;
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
        let gw = iface("lan0", node_net, 1);
        let spare = iface("lan0", node_net, SPARE_HOST);
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
            let uplink = iface("eth0", node_net, node_host(n));
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
                let eth = iface("eth0", subnet, 11 + k as u8);
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
            let bridge = iface("br0", subnet, 1);
            node.ip(&["addr", "add", &bridge.cidr().to_string(), "dev", "br0"])?;
            for (k, _) in names.iter().enumerate() {
                let ns = &c.pod_ns[pods.len() - names.len() + k];
                ns.ip(&["route", "add", "default", "via", &bridge.addr.to_string()])?;
            }
            // Other nodes' Pods directly over the node network; the VIPs
            // via the gateway.
            for other in 0..self.nodes.len() {
                if other != n {
                    let via = Ipv4Addr::new(198, 18, NODE_NET, node_host(other)).to_string();
                    node.ip(&["route", "add", &pod_subnet(other).to_string(), "via", &via])?;
                }
            }
            node.ip(&[
                "route",
                "add",
                &vip_range.to_string(),
                "via",
                &gw.addr.to_string(),
            ])?;
            let via = nodes[n].iface.addr.to_string();
            c.gateway_ns
                .ip(&["route", "add", &subnet.to_string(), "via", &via])?;
        }
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
        self.each(pods, port, EchoServer::start_tcp)
    }

    /// Starts a UDP echo server on each Pod named in `pods`.
    pub fn start_udp_echo(&self, pods: &[&str], port: u16) -> Result<Vec<EchoServer>, LabError> {
        self.each(pods, port, EchoServer::start_udp)
    }

    fn each(
        &self,
        pods: &[&str],
        port: u16,
        start: impl Fn(&Netns, SocketAddrV4, &str) -> Result<EchoServer, LabError>,
    ) -> Result<Vec<EchoServer>, LabError> {
        pods.iter()
            .map(|name| {
                let pod = self
                    .info()
                    .pod(name)
                    .ok_or_else(|| LabError::Invalid(format!("no Pod {name} in the cluster")))?;
                let ns = self.pod_ns(name).expect("every Pod has a namespace");
                start(ns, SocketAddrV4::new(pod.iface.addr, port), name)
            })
            .collect()
    }
}
