//! The namespace topologies cipgw runs in: a gateway between a client and a
//! switch of Pods, with the client on its own arm (two-arm) or on the Pods'
//! segment (one-arm).
//!
//! ```text
//! two-arm:  client:eth0 ── to-client:gateway:to-pods ── p-gw:[br0 in switch]─ p-podN ── podN:eth0
//! one-arm:  gateway:lan0 ── p-gw:[br0 in switch]─ p-client ── client:eth0
//!                                              └─ p-podN   ── podN:eth0
//! ```
//!
//! Addresses (RFC 2544 space only): two-arm client subnet 198.18.0.0/24
//! (gateway .1, client .2), Pod subnet 198.18.2.0/24 (gateway .1, Pods .11,
//! .12, ...); one-arm puts everything on 198.18.2.0/24 (gateway .1, client
//! .2, Pods .11, ...). VIPs are 198.18.100.0/24. The client routes the VIP
//! range (and in two-arm the Pod subnet) via the gateway; Pods route by
//! default via the gateway, and in one-arm also the client's /32, so replies
//! return through it.
//!
//! Dual-stack labs ([`TopologyBuilder::dual_stack`]) give every node an IPv6
//! address as well, from 2001:2::/48 (RFC 5180) only, mirroring the IPv4
//! plan digit for digit: 198.18.X.0/24 becomes 2001:2:0:X::/64 and host .Y
//! becomes ::Y, the decimal digits read as hexadecimal ([`ipv6_of`]). So
//! the client subnet is 2001:2:0:0::/64 (gateway ::1, client ::2), the Pod
//! subnet 2001:2:0:2::/64 (gateway ::1, Pods ::11, ::12, ...) and the VIPs
//! 2001:2:0:100::/64 (198.18.100.10 and 2001:2:0:100::10 are the same
//! Service's two ClusterIPs by convention). Routes mirror the IPv4 ones: the
//! client routes the IPv6 VIP range (and in two-arm the Pod subnet) via the
//! gateway's IPv6 address, Pods route by default via it, and in one-arm also
//! the client's /128. Addresses are added with `nodad` (usable at once),
//! duplicate address detection, router advertisements and router
//! solicitations are off, so the only IPv6 on the links is what a test
//! sends, neighbour discovery and the MLD reports of interfaces coming up.
//!
//! The gateway namespace has `ip_forward=0` (and in dual-stack labs IPv6
//! `forwarding=0`) unless asked otherwise: packets cross it only when cipgw
//! forwards them. Interfaces that send towards the gateway have TX checksum
//! offload off (AF_XDP needs complete checksums) and the gateway's
//! interfaces have GRO off (SKB-mode AF_XDP cannot take 64 KiB GRO
//! packets). Unless a lab is dual-stack, IPv6 is disabled in every lab
//! namespace so that no router solicitations or DAD show up in captures and
//! counters. MACs are fixed (`02:00:` + the interface's IPv4 address, also
//! in dual-stack labs) so tests can predict them.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use ipnet::{Ipv4Net, Ipv6Net};

use super::cmd;
use super::echo::EchoServer;
use super::netns::{unique_prefix, Netns};
use super::LabError;
use crate::wire::ethernet::MacAddr;

/// Largest number of Pods a topology takes (.11 ... .210).
pub const MAX_PODS: usize = 200;

/// Most queues a gateway link takes ([`TopologyBuilder::queues`]).
pub const MAX_QUEUES: u32 = 16;

/// Host number of the first Pod in the Pod subnet.
const FIRST_POD_HOST: u8 = 11;

/// Interface names are limited to 15 bytes (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

const BRIDGE: &str = "br0";
const NODE_IFACE: &str = "eth0";

/// Where the client sits relative to the Pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Client and Pods on different interfaces of the gateway.
    TwoArm,
    /// Client and Pods on one L2 segment with the gateway's single interface.
    OneArm,
}

/// One interface of a lab node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceInfo {
    pub name: String,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
    /// The IPv6 address (prefix length [`IPV6_PREFIX_LEN`]) in a
    /// dual-stack lab, [`ipv6_of`] the IPv4 address; `None` otherwise.
    pub addr6: Option<Ipv6Addr>,
    pub mac: MacAddr,
}

impl IfaceInfo {
    /// The interface's address with its prefix, e.g. 198.18.0.2/24.
    pub fn cidr(&self) -> Ipv4Net {
        Ipv4Net::new(self.addr, self.prefix_len).expect("prefix lengths here are 24")
    }

    /// The IPv6 address with its prefix, e.g. 2001:2:0:0::2/64, in a
    /// dual-stack lab.
    pub fn cidr6(&self) -> Option<Ipv6Net> {
        self.addr6
            .map(|a| Ipv6Net::new(a, IPV6_PREFIX_LEN).expect("64 is a valid prefix length"))
    }

    /// The IPv6 address, or an error naming the interface when the lab is
    /// not dual-stack.
    pub fn ipv6(&self) -> Result<Ipv6Addr, LabError> {
        self.addr6.ok_or_else(|| {
            LabError::Invalid(format!(
                "{} ({}) has no IPv6 address: the lab is not dual-stack",
                self.name, self.addr
            ))
        })
    }

    /// Its address of the family of `v6`.
    pub fn addr_of(&self, v6: bool) -> Result<std::net::IpAddr, LabError> {
        if v6 {
            self.ipv6().map(Into::into)
        } else {
            Ok(self.addr.into())
        }
    }

    /// The MAC as `aa:bb:cc:dd:ee:ff`.
    pub fn mac_string(&self) -> String {
        format_mac(&self.mac)
    }
}

/// A client or Pod: one namespace with one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// `client`, `pod1`, `pod2`, ... (the Pod name the echo servers report).
    pub name: String,
    /// Its namespace.
    pub ns: String,
    pub iface: IfaceInfo,
}

/// The gateway namespace and the interface(s) cipgw attaches to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayInfo {
    pub ns: String,
    /// The interface facing the client.
    pub client_side: IfaceInfo,
    /// The interface facing the Pods; the same as `client_side` in one-arm.
    pub pod_side: IfaceInfo,
}

impl GatewayInfo {
    /// The distinct interface names, for `cipgw run --iface ...`.
    pub fn ifaces(&self) -> Vec<&str> {
        let mut names = vec![self.client_side.name.as_str()];
        if self.pod_side.name != self.client_side.name {
            names.push(self.pod_side.name.as_str());
        }
        names
    }
}

/// The switch namespace: one bridge and its ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchInfo {
    pub ns: String,
    pub bridge: String,
    /// Bridge ports: `p-gw`, (`p-client` in one-arm), `p-pod1`, ...
    pub ports: Vec<String>,
}

/// Everything tests and the demo need to know about a built topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyInfo {
    pub shape: Shape,
    pub client: NodeInfo,
    pub gateway: GatewayInfo,
    pub switch: SwitchInfo,
    pub pods: Vec<NodeInfo>,
    /// The client's subnet (equals `pod_subnet` in one-arm).
    pub client_subnet: Ipv4Net,
    pub pod_subnet: Ipv4Net,
    /// The service CIDR VIPs are taken from.
    pub vip_range: Ipv4Net,
    /// Whether the gateway kernel forwards (ip_forward=1).
    pub kernel_forwarding: bool,
    /// The IPv6 plan of a dual-stack lab; `None` when IPv6 is off.
    pub ipv6: Option<Ipv6Plan>,
}

/// The IPv6 subnets of a dual-stack lab (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Plan {
    /// The client's subnet (equals `pod_subnet` in one-arm).
    pub client_subnet: Ipv6Net,
    pub pod_subnet: Ipv6Net,
    /// The IPv6 service CIDR, 2001:2:0:100::/64.
    pub vip_range: Ipv6Net,
}

impl TopologyInfo {
    /// VIP number `host` in the VIP range (198.18.100.host).
    pub fn vip(&self, host: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.vip_range.network().octets();
        Ipv4Addr::new(a, b, c, host)
    }

    /// The IPv6 VIP that mirrors [`TopologyInfo::vip`] (2001:2:0:100::host,
    /// the host's decimal digits read as hexadecimal). The address exists
    /// whether or not the lab is dual-stack; only a dual-stack lab routes it.
    pub fn vip6(&self, host: u8) -> Ipv6Addr {
        ipv6_of(self.vip(host))
    }

    /// The IPv6 plan, or an error when the lab is not dual-stack.
    pub fn ipv6(&self) -> Result<&Ipv6Plan, LabError> {
        self.ipv6
            .as_ref()
            .ok_or_else(|| LabError::Invalid("the lab is not dual-stack".into()))
    }

    /// All namespace names, for checks that teardown removed them.
    pub fn namespaces(&self) -> Vec<&str> {
        let mut names = vec![
            self.client.ns.as_str(),
            self.gateway.ns.as_str(),
            self.switch.ns.as_str(),
        ];
        names.extend(self.pods.iter().map(|p| p.ns.as_str()));
        names
    }
}

/// Chooses a shape, Pod count and gateway forwarding, then [`build`]s.
///
/// [`build`]: TopologyBuilder::build
#[derive(Debug, Clone)]
pub struct TopologyBuilder {
    purpose: String,
    shape: Shape,
    pods: usize,
    kernel_forwarding: bool,
    dual_stack: bool,
    queues: u32,
}

impl TopologyBuilder {
    /// Number of Pods, 1 to [`MAX_PODS`] (default 3).
    pub fn pods(mut self, n: usize) -> Self {
        self.pods = n;
        self
    }

    /// Let the gateway's kernel forward (ip_forward=1), for reachability
    /// tests without cipgw and for kernel-forwarding benchmark baselines.
    pub fn kernel_forwarding(mut self, on: bool) -> Self {
        self.kernel_forwarding = on;
        self
    }

    /// Give every node an IPv6 address and route IPv6 as IPv4 is routed
    /// (see the module doc); off by default, so IPv6 stays disabled.
    pub fn dual_stack(mut self, on: bool) -> Self {
        self.dual_stack = on;
        self
    }

    /// RX and TX queues of every link of the gateway, 1 to
    /// `MAX_QUEUES` (16; default 1), so that a gateway with as many
    /// workers (`--cores`) gives each a queue of every interface. The
    /// sender picks a queue per flow (its socket's hash, or the bridge's
    /// for forwarded frames), and veth delivers a frame on the receiver's
    /// queue of the same number.
    pub fn queues(mut self, n: u32) -> Self {
        self.queues = n;
        self
    }

    /// Creates the namespaces, links, addresses and routes. On error
    /// everything created so far is removed again.
    pub fn build(self) -> Result<Topology, LabError> {
        if self.dual_stack {
            require_ipv6()?;
        }
        if !(1..=MAX_PODS).contains(&self.pods) {
            return Err(LabError::Invalid(format!(
                "a topology has 1 to {MAX_PODS} Pods, not {}",
                self.pods
            )));
        }
        if !(1..=MAX_QUEUES).contains(&self.queues) {
            return Err(LabError::Invalid(format!(
                "a gateway link has 1 to {MAX_QUEUES} queues, not {}",
                self.queues
            )));
        }
        let prefix = unique_prefix(&self.purpose)?;
        match self.shape {
            Shape::TwoArm => self.build_two_arm(&prefix),
            Shape::OneArm => self.build_one_arm(&prefix),
        }
    }

    fn build_two_arm(self, prefix: &str) -> Result<Topology, LabError> {
        let client_net = net(0);
        let pod_net = net(2);
        let nodes = self.create_namespaces(prefix)?;
        let Nodes {
            client,
            gateway,
            switch,
            pods,
        } = &nodes;

        let v6 = self.dual_stack;
        let client_if = iface(NODE_IFACE, client_net, 2, v6);
        let gw_client = iface("to-client", client_net, 1, v6);
        let gw_pods = iface("to-pods", pod_net, 1, v6);

        veth_queues(
            client,
            &client_if.name,
            client_if.mac,
            gateway,
            &gw_client.name,
            gw_client.mac,
            self.queues,
        )?;
        veth_queues(
            gateway,
            &gw_pods.name,
            gw_pods.mac,
            switch,
            "p-gw",
            port_mac(gw_pods.addr),
            self.queues,
        )?;
        let pod_infos = self.attach_pods(pods, switch, pod_net)?;
        let mut ports = vec!["p-gw".to_owned()];
        ports.extend((1..=pods.len()).map(|i| format!("p-pod{i}")));
        make_switch(switch, &ports)?;

        configure(client, &client_if, true, false)?;
        configure(gateway, &gw_client, false, true)?;
        configure(gateway, &gw_pods, false, true)?;
        ethtool(switch, "p-gw", &["tx", "off"])?;
        for route in [&self.vip_range().to_string(), &pod_net.to_string()] {
            client.ip(&["route", "add", route, "via", &gw_client.addr.to_string()])?;
        }
        for pod in pods {
            pod.ip(&["route", "add", "default", "via", &gw_pods.addr.to_string()])?;
        }
        let ipv6 = self.ipv6_plan(client_net, pod_net);
        if let (Some(plan), Some(via_client), Some(via_pods)) =
            (ipv6, gw_client.addr6, gw_pods.addr6)
        {
            for route in [plan.vip_range, plan.pod_subnet] {
                client.ip(&[
                    "-6",
                    "route",
                    "add",
                    &route.to_string(),
                    "via",
                    &via_client.to_string(),
                ])?;
            }
            for pod in pods {
                pod.ip(&[
                    "-6",
                    "route",
                    "add",
                    "default",
                    "via",
                    &via_pods.to_string(),
                ])?;
            }
        }

        let info = TopologyInfo {
            shape: Shape::TwoArm,
            client: NodeInfo {
                name: "client".into(),
                ns: client.name().into(),
                iface: client_if,
            },
            gateway: GatewayInfo {
                ns: gateway.name().into(),
                client_side: gw_client,
                pod_side: gw_pods,
            },
            switch: SwitchInfo {
                ns: switch.name().into(),
                bridge: BRIDGE.into(),
                ports,
            },
            pods: pod_infos,
            client_subnet: client_net,
            pod_subnet: pod_net,
            vip_range: self.vip_range(),
            kernel_forwarding: self.kernel_forwarding,
            ipv6,
        };
        Ok(Topology { info, nodes })
    }

    fn build_one_arm(self, prefix: &str) -> Result<Topology, LabError> {
        let lan = net(2);
        let nodes = self.create_namespaces(prefix)?;
        let Nodes {
            client,
            gateway,
            switch,
            pods,
        } = &nodes;

        let v6 = self.dual_stack;
        let client_if = iface(NODE_IFACE, lan, 2, v6);
        let gw_lan = iface("lan0", lan, 1, v6);

        veth_queues(
            gateway,
            &gw_lan.name,
            gw_lan.mac,
            switch,
            "p-gw",
            port_mac(gw_lan.addr),
            self.queues,
        )?;
        veth(
            client,
            &client_if.name,
            client_if.mac,
            switch,
            "p-client",
            port_mac(client_if.addr),
        )?;
        let pod_infos = self.attach_pods(pods, switch, lan)?;
        let mut ports = vec!["p-gw".to_owned(), "p-client".to_owned()];
        ports.extend((1..=pods.len()).map(|i| format!("p-pod{i}")));
        make_switch(switch, &ports)?;

        configure(client, &client_if, true, false)?;
        configure(gateway, &gw_lan, false, true)?;
        ethtool(switch, "p-gw", &["tx", "off"])?;
        let via = gw_lan.addr.to_string();
        client.ip(&["route", "add", &self.vip_range().to_string(), "via", &via])?;
        let client_host = format!("{}/32", client_if.addr);
        for pod in pods {
            pod.ip(&["route", "add", "default", "via", &via])?;
            pod.ip(&["route", "add", &client_host, "via", &via])?;
        }
        let ipv6 = self.ipv6_plan(lan, lan);
        if let (Some(plan), Some(via), Some(client6)) = (ipv6, gw_lan.addr6, client_if.addr6) {
            let via = via.to_string();
            client.ip(&[
                "-6",
                "route",
                "add",
                &plan.vip_range.to_string(),
                "via",
                &via,
            ])?;
            let client_host = format!("{client6}/128");
            for pod in pods {
                pod.ip(&["-6", "route", "add", "default", "via", &via])?;
                pod.ip(&["-6", "route", "add", &client_host, "via", &via])?;
            }
        }

        let info = TopologyInfo {
            shape: Shape::OneArm,
            client: NodeInfo {
                name: "client".into(),
                ns: client.name().into(),
                iface: client_if,
            },
            gateway: GatewayInfo {
                ns: gateway.name().into(),
                client_side: gw_lan.clone(),
                pod_side: gw_lan,
            },
            switch: SwitchInfo {
                ns: switch.name().into(),
                bridge: BRIDGE.into(),
                ports,
            },
            pods: pod_infos,
            client_subnet: lan,
            pod_subnet: lan,
            vip_range: self.vip_range(),
            kernel_forwarding: self.kernel_forwarding,
            ipv6,
        };
        Ok(Topology { info, nodes })
    }

    fn vip_range(&self) -> Ipv4Net {
        net(100)
    }

    /// The IPv6 subnets mirroring `client` and `pods`, in a dual-stack lab.
    fn ipv6_plan(&self, client: Ipv4Net, pods: Ipv4Net) -> Option<Ipv6Plan> {
        self.dual_stack.then(|| Ipv6Plan {
            client_subnet: net6_of(client),
            pod_subnet: net6_of(pods),
            vip_range: net6_of(self.vip_range()),
        })
    }

    /// Creates every namespace with the lab's baseline sysctls. Each guard
    /// is owned as soon as it exists, so an error drops (removes) them all.
    fn create_namespaces(&self, prefix: &str) -> Result<Nodes, LabError> {
        let create = |role: &str, forwarding: bool| -> Result<Netns, LabError> {
            let ns = Netns::create(format!("{prefix}-{role}"))?;
            baseline_sysctls(&ns, forwarding, self.dual_stack)?;
            Ok(ns)
        };
        let client = create("client", false)?;
        let gateway = create("gw", self.kernel_forwarding)?;
        let switch = create("switch", false)?;
        let mut pods = Vec::with_capacity(self.pods);
        for i in 1..=self.pods {
            pods.push(create(&format!("pod{i}"), false)?);
        }
        Ok(Nodes {
            client,
            gateway,
            switch,
            pods,
        })
    }

    /// Gives each Pod namespace an `eth0` on the Pod subnet, plugged into a
    /// `p-podN` port in the switch.
    fn attach_pods(
        &self,
        pods: &[Netns],
        switch: &Netns,
        subnet: Ipv4Net,
    ) -> Result<Vec<NodeInfo>, LabError> {
        let mut infos = Vec::with_capacity(pods.len());
        for (i, pod) in pods.iter().enumerate() {
            let host = FIRST_POD_HOST + u8::try_from(i).expect("at most MAX_PODS Pods");
            let eth = iface(NODE_IFACE, subnet, host, self.dual_stack);
            let port = format!("p-pod{}", i + 1);
            veth(pod, &eth.name, eth.mac, switch, &port, port_mac(eth.addr))?;
            configure(pod, &eth, true, false)?;
            infos.push(NodeInfo {
                name: format!("pod{}", i + 1),
                ns: pod.name().into(),
                iface: eth,
            });
        }
        Ok(infos)
    }
}

/// The namespaces of a topology, in drop order.
#[derive(Debug)]
struct Nodes {
    client: Netns,
    gateway: Netns,
    switch: Netns,
    pods: Vec<Netns>,
}

/// A built lab. Dropping it removes every namespace (and with them every
/// interface), also during a panic unwind; stop echo servers and child
/// processes first or they are killed with their namespace.
#[derive(Debug)]
pub struct Topology {
    info: TopologyInfo,
    nodes: Nodes,
}

impl Topology {
    /// A two-arm topology; `purpose` (e.g. `demo`, `test`, `bench`) goes into
    /// the namespace names.
    pub fn two_arm(purpose: &str) -> TopologyBuilder {
        TopologyBuilder {
            purpose: purpose.to_owned(),
            shape: Shape::TwoArm,
            pods: 3,
            kernel_forwarding: false,
            dual_stack: false,
            queues: 1,
        }
    }

    /// A one-arm topology; see [`Topology::two_arm`].
    pub fn one_arm(purpose: &str) -> TopologyBuilder {
        TopologyBuilder {
            shape: Shape::OneArm,
            ..Topology::two_arm(purpose)
        }
    }

    /// Names, addresses and MACs of everything built.
    pub fn info(&self) -> &TopologyInfo {
        &self.info
    }

    pub fn client(&self) -> &Netns {
        &self.nodes.client
    }

    pub fn gateway(&self) -> &Netns {
        &self.nodes.gateway
    }

    pub fn switch(&self) -> &Netns {
        &self.nodes.switch
    }

    /// Pod namespaces; `pods()[0]` is `pod1`.
    pub fn pods(&self) -> &[Netns] {
        &self.nodes.pods
    }

    /// Runs `f` in the client namespace (see [`Netns::try_run`]).
    pub fn in_client<T, F>(&self, f: F) -> Result<T, LabError>
    where
        F: FnOnce() -> Result<T, LabError> + Send,
        T: Send,
    {
        self.nodes.client.try_run(f)
    }

    /// Starts a TCP echo server on every Pod at `<pod ip>:port`.
    pub fn start_tcp_echo(&self, port: u16) -> Result<Vec<EchoServer>, LabError> {
        self.each_pod(EchoServer::start_tcp, port, false)
    }

    /// Starts a UDP echo server on every Pod at `<pod ip>:port`.
    pub fn start_udp_echo(&self, port: u16) -> Result<Vec<EchoServer>, LabError> {
        self.each_pod(EchoServer::start_udp, port, false)
    }

    /// Starts a TCP echo server on every Pod at `[<pod ipv6>]:port` (a
    /// dual-stack lab).
    pub fn start_tcp_echo6(&self, port: u16) -> Result<Vec<EchoServer>, LabError> {
        self.each_pod(EchoServer::start_tcp, port, true)
    }

    /// Starts a UDP echo server on every Pod at `[<pod ipv6>]:port` (a
    /// dual-stack lab).
    pub fn start_udp_echo6(&self, port: u16) -> Result<Vec<EchoServer>, LabError> {
        self.each_pod(EchoServer::start_udp, port, true)
    }

    fn each_pod(
        &self,
        start: impl Fn(&Netns, SocketAddr, &str) -> Result<EchoServer, LabError>,
        port: u16,
        v6: bool,
    ) -> Result<Vec<EchoServer>, LabError> {
        self.nodes
            .pods
            .iter()
            .zip(&self.info.pods)
            .map(|(ns, pod)| start(ns, socket_addr(&pod.iface, port, v6)?, &pod.name))
            .collect()
    }
}

/// `198.18.<third>.0/24`.
pub(super) fn net(third: u8) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(198, 18, third, 0), 24).expect("/24 is valid")
}

/// Host `host` of `subnet`, with the IPv6 address mirroring it when `v6`.
pub(super) fn iface(name: &str, subnet: Ipv4Net, host: u8, v6: bool) -> IfaceInfo {
    let [a, b, c, _] = subnet.network().octets();
    let addr = Ipv4Addr::new(a, b, c, host);
    IfaceInfo {
        name: name.to_owned(),
        addr,
        prefix_len: subnet.prefix_len(),
        addr6: v6.then(|| ipv6_of(addr)),
        mac: addr_mac(0x00, addr),
    }
}

/// Prefix length of every IPv6 subnet of the labs.
pub const IPV6_PREFIX_LEN: u8 = 64;

/// The IPv6 address that mirrors a lab IPv4 address: 198.18.X.Y becomes
/// 2001:2:0:X::Y with X's and Y's decimal digits read as hexadecimal
/// (198.18.100.10 -> 2001:2:0:100::10), so both addresses of a node read
/// alike in captures. Inside 2001:2::/48 (RFC 5180) for every X and Y.
pub fn ipv6_of(addr: Ipv4Addr) -> Ipv6Addr {
    let [_, _, x, y] = addr.octets();
    Ipv6Addr::new(0x2001, 2, 0, digits_as_hex(x), 0, 0, 0, digits_as_hex(y))
}

/// The /64 that mirrors a lab /24 (see [`ipv6_of`]).
pub fn net6_of(net: Ipv4Net) -> Ipv6Net {
    Ipv6Net::new(ipv6_of(net.network()), IPV6_PREFIX_LEN).expect("64 is a valid prefix length")
}

/// 123 -> 0x123: a byte's decimal digits as a hexadecimal number.
fn digits_as_hex(n: u8) -> u16 {
    u16::from(n / 100) << 8 | u16::from(n / 10 % 10) << 4 | u16::from(n % 10)
}

/// `iface`'s address of the family `v6` with `port`.
pub(super) fn socket_addr(iface: &IfaceInfo, port: u16, v6: bool) -> Result<SocketAddr, LabError> {
    Ok(if v6 {
        SocketAddrV6::new(iface.ipv6()?, port, 0, 0).into()
    } else {
        SocketAddrV4::new(iface.addr, port).into()
    })
}

/// Fails when the kernel has no IPv6 (`ipv6.disable=1`), which a
/// dual-stack lab needs.
pub(super) fn require_ipv6() -> Result<(), LabError> {
    if std::path::Path::new("/proc/sys/net/ipv6").exists() {
        Ok(())
    } else {
        Err(LabError::Invalid(
            "a dual-stack lab needs IPv6, which this kernel has disabled".into(),
        ))
    }
}

/// `02:<kind>:` + the IPv4 address: locally administered, unicast, and
/// readable in captures.
fn addr_mac(kind: u8, addr: Ipv4Addr) -> MacAddr {
    let [a, b, c, d] = addr.octets();
    [0x02, kind, a, b, c, d]
}

/// A switch port's MAC, derived from the address of the node it faces.
pub(super) fn port_mac(peer: Ipv4Addr) -> MacAddr {
    addr_mac(0x01, peer)
}

pub(crate) fn format_mac(mac: &MacAddr) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Lab defaults for a fresh namespace, set before any interface exists so
/// the `default` values apply to them. With `dual_stack` IPv6 is on but
/// quiet (no DAD, no router advertisements or solicitations, no
/// redirects) and forwards exactly when IPv4 does; otherwise it is off.
pub(super) fn baseline_sysctls(
    ns: &Netns,
    forwarding: bool,
    dual_stack: bool,
) -> Result<(), LabError> {
    let forward = if forwarding { "1" } else { "0" };
    if dual_stack {
        // Forwarding first: writing it resets some per-interface values
        // (accept_ra's meaning among them), which the lines below then pin.
        ns.set_sysctls(&[
            ("net.ipv6.conf.all.disable_ipv6", "0"),
            ("net.ipv6.conf.default.disable_ipv6", "0"),
            ("net.ipv6.conf.all.forwarding", forward),
            ("net.ipv6.conf.default.forwarding", forward),
            ("net.ipv6.conf.all.accept_ra", "0"),
            ("net.ipv6.conf.default.accept_ra", "0"),
            ("net.ipv6.conf.all.router_solicitations", "0"),
            ("net.ipv6.conf.default.router_solicitations", "0"),
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv6.conf.all.accept_redirects", "0"),
            ("net.ipv6.conf.default.accept_redirects", "0"),
        ])?;
    } else {
        ns.set_sysctls(&[
            // No IPv6 chatter (RS, DAD, MLD) on lab links.
            ("net.ipv6.conf.all.disable_ipv6", "1"),
            ("net.ipv6.conf.default.disable_ipv6", "1"),
        ])?;
    }
    ns.set_sysctls(&[
        // IPv4 settings are inherited from the root namespace; pin them.
        ("net.ipv4.ip_forward", forward),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
        // One-arm paths are asymmetric by design: no redirects either way.
        ("net.ipv4.conf.all.send_redirects", "0"),
        ("net.ipv4.conf.default.send_redirects", "0"),
        ("net.ipv4.conf.all.accept_redirects", "0"),
        ("net.ipv4.conf.default.accept_redirects", "0"),
        // Unprivileged-style ICMP and ICMPv6 sockets for `lab::ping` (the
        // one range governs both).
        ("net.ipv4.ping_group_range", "0 2147483647"),
    ])
}

/// A veth pair created inside `a` with its peer placed directly in `b`, so
/// neither end ever exists in the root namespace.
pub(super) fn veth(
    a: &Netns,
    a_name: &str,
    a_mac: MacAddr,
    b: &Netns,
    b_name: &str,
    b_mac: MacAddr,
) -> Result<(), LabError> {
    veth_queues(a, a_name, a_mac, b, b_name, b_mac, 1)
}

/// [`veth`] with `queues` RX and TX queues at both ends.
pub(super) fn veth_queues(
    a: &Netns,
    a_name: &str,
    a_mac: MacAddr,
    b: &Netns,
    b_name: &str,
    b_mac: MacAddr,
    queues: u32,
) -> Result<(), LabError> {
    for name in [a_name, b_name] {
        if name.is_empty() || name.len() > IFNAME_MAX {
            return Err(LabError::Invalid(format!(
                "interface name {name:?} must be 1 to {IFNAME_MAX} bytes"
            )));
        }
    }
    let queues = queues.to_string();
    a.ip(&[
        "link",
        "add",
        a_name,
        "address",
        &format_mac(&a_mac),
        "numtxqueues",
        &queues,
        "numrxqueues",
        &queues,
        "type",
        "veth",
        "peer",
        "name",
        b_name,
        "address",
        &format_mac(&b_mac),
        "numtxqueues",
        &queues,
        "numrxqueues",
        &queues,
        "netns",
        b.name(),
    ])
    .map(drop)
}

/// Addresses `iface` (both families in a dual-stack lab) and brings it
/// up; `sends_to_gateway` turns TX checksum offload off, `gateway_side`
/// turns GRO off.
pub(super) fn configure(
    ns: &Netns,
    iface: &IfaceInfo,
    sends_to_gateway: bool,
    gateway_side: bool,
) -> Result<(), LabError> {
    ns.ip(&["addr", "add", &iface.cidr().to_string(), "dev", &iface.name])?;
    if let Some(cidr6) = iface.cidr6() {
        add_ipv6(ns, &iface.name, cidr6)?;
    }
    if sends_to_gateway {
        ethtool(ns, &iface.name, &["tx", "off"])?;
    }
    if gateway_side {
        ethtool(ns, &iface.name, &["gro", "off"])?;
    }
    ns.ip(&["link", "set", &iface.name, "up"]).map(drop)
}

/// `ip -6 addr add CIDR dev DEV nodad`: usable at once, no DAD probes.
pub(super) fn add_ipv6(ns: &Netns, dev: &str, cidr: Ipv6Net) -> Result<(), LabError> {
    ns.ip(&["-6", "addr", "add", &cidr.to_string(), "dev", dev, "nodad"])
        .map(drop)
}

/// The switch: a bridge without STP (ports forward at once) or multicast
/// snooping, with every port enslaved and up.
pub(super) fn make_switch(switch: &Netns, ports: &[String]) -> Result<(), LabError> {
    switch.ip(&[
        "link",
        "add",
        BRIDGE,
        "address",
        "02:02:00:00:00:01",
        "type",
        "bridge",
        "stp_state",
        "0",
        "forward_delay",
        "0",
        "mcast_snooping",
        "0",
    ])?;
    switch.ip(&["link", "set", BRIDGE, "up"])?;
    for port in ports {
        switch.ip(&["link", "set", port, "master", BRIDGE])?;
        switch.ip(&["link", "set", port, "up"])?;
    }
    Ok(())
}

/// `ethtool -K DEV FEATURE on|off ...` inside `ns`.
pub(super) fn ethtool(ns: &Netns, dev: &str, features: &[&str]) -> Result<(), LabError> {
    let mut command = ns.command("ethtool");
    command.arg("-K").arg(dev).args(features);
    cmd::run(&mut command).map(drop)
}
