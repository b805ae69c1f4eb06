//! The same N Services three ways: a cipgw control file, the iptables
//! ruleset kube-proxy's iptables mode generates for them, and the nftables
//! ruleset its nftables mode generates.
//!
//! Services 1..N-1 are fillers (`fill/svc-NNNNN`, port `http` 80/TCP ->
//! 8080, two endpoints in 198.18.128.0/17 that never receive anything);
//! the last one is the measured Service (`default/bench`, ports `tcp`
//! 80/TCP -> 8080 and `udp` 9000/UDP -> 9000 on the given backends). In
//! iptables the measured Service's KUBE-SERVICES rules come after every
//! filler's, so a packet to it walks the whole chain, as it would for the
//! last Service kube-proxy wrote.
//!
//! Chain names, rule order, comments and match order follow kube-proxy
//! (pkg/proxy/iptables and pkg/proxy/nftables, checked against the names
//! in their tests): `KUBE-SVC-`/`KUBE-SEP-` + the first 16 base32
//! characters of SHA-256(service port name + protocol [+ endpoint]),
//! nftables chains `service-`/`endpoint-` + 8 such characters + the
//! readable name. The pod CIDR (here 198.18.0.0/15, which holds the
//! client) decides masquerading, so nothing is masqueraded: clients keep
//! their address, as they do through cipgw.
//!
//! IPv6 (a `--service-cidr` of IPv6, with `--backends`, `--node-ip` and
//! `--pod-cidr` of IPv6): the same Services as single-stack IPv6
//! (`ipFamilies: [IPv6]`, `addressType: IPv6`), filler endpoints in
//! 2001:2:0:80::/64, and the rulesets kube-proxy writes for its IPv6
//! proxier: ip6tables-restore input (no IPv4-only localnet rule, DNAT to
//! `[addr]:port`) and an `ip6 kube-proxy` nftables table (`ip6 daddr`,
//! `ipv6_addr` sets; endpoint chain names with `.` for `:`).

use std::fmt::Write as _;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

use crate::util::{host_port, Cidr};

/// The measured Service's ports: (name, protocol, port, targetPort).
pub const MEASURED_PORTS: [(&str, Proto, u16, u16); 2] = [
    ("tcp", Proto::Tcp, 80, 8080),
    ("udp", Proto::Udp, 9000, 9000),
];
const FILLER_PORT: (&str, Proto, u16, u16) = ("http", Proto::Tcp, 80, 8080);
/// Where filler endpoints live (never reached), per family.
const FILLER_PODS: &str = "198.18.128.0/17";
const FILLER_PODS6: &str = "2001:2:0:80::/64";
/// Masquerade mark, as kube-proxy's default `--iptables-masquerade-bit=14`.
const MASQ_MARK: &str = "0x4000";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn lower(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    fn upper(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct GenArgs {
    /// Number of Services; the measured one is the last.
    #[arg(long)]
    services: u32,
    /// Service CIDR the VIPs come from; its family is the rules' family
    /// (the other addresses must be of it too).
    #[arg(long, default_value = "198.19.0.0/16")]
    service_cidr: Cidr,
    /// Cluster (pod) CIDR: sources outside it would be masqueraded.
    #[arg(long, default_value = "198.18.0.0/15")]
    pod_cidr: Cidr,
    /// Endpoints of the measured Service.
    #[arg(long, value_delimiter = ',', required = true)]
    backends: Vec<IpAddr>,
    /// The gateway's address (kube-proxy's node IP, for nodeport-ips).
    #[arg(long)]
    node_ip: IpAddr,
    /// Directory to write control.yaml, iptables.rules, nftables.nft and
    /// meta.env into.
    #[arg(long)]
    out: PathBuf,
}

/// One Service port with its endpoints.
#[derive(Debug)]
struct SvcPort {
    namespace: String,
    name: String,
    port_name: &'static str,
    proto: Proto,
    vip: IpAddr,
    port: u16,
    target: u16,
    endpoints: Vec<IpAddr>,
}

impl SvcPort {
    /// kube-proxy's ServicePortName.String(): `ns/name:port`.
    fn port_name_string(&self) -> String {
        format!("{}/{}:{}", self.namespace, self.name, self.port_name)
    }

    /// nftables mode's servicePortChainNameBase: `ns/name/proto/port`.
    fn nft_base(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.namespace,
            self.name,
            self.proto.lower(),
            self.port_name
        )
    }

    fn svc_chain(&self) -> String {
        format!(
            "KUBE-SVC-{}",
            hash_prefix(
                &format!("{}{}", self.port_name_string(), self.proto.lower()),
                16
            )
        )
    }

    fn sep_chain(&self, ep: IpAddr) -> String {
        format!(
            "KUBE-SEP-{}",
            hash_prefix(
                &format!(
                    "{}{}{}",
                    self.port_name_string(),
                    self.proto.lower(),
                    host_port(ep, self.target)
                ),
                16
            )
        )
    }

    fn nft_service_chain(&self) -> String {
        format!("service-{}", hash_and_truncate(&self.nft_base()))
    }

    fn nft_endpoint_chain(&self, ep: IpAddr) -> String {
        // nft chain names cannot hold ':'; kube-proxy writes '.' instead.
        let host = ep.to_string().replace(':', ".");
        let base = format!("{}__{}/{}", self.nft_base(), host, self.target);
        format!("endpoint-{}", hash_and_truncate(&base))
    }
}

/// First `n` characters of base32(SHA-256(s)) (RFC 4648 alphabet), as
/// kube-proxy names its chains.
fn hash_prefix(s: &str, n: usize) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = Sha256::digest(s.as_bytes());
    let mut out = String::with_capacity(n);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in digest.iter() {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 && out.len() < n {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
        acc &= (1 << bits) - 1;
        if out.len() == n {
            break;
        }
    }
    out
}

/// nftables mode's hashAndTruncate: 8 hash characters, `-`, the name
/// (nft chain names may be long; kube-proxy truncates only past 200).
fn hash_and_truncate(name: &str) -> String {
    format!("{}-{}", hash_prefix(name, 8), name)
}

/// Every Service port of an N-Service cluster, the measured ones last.
fn service_ports(args: &GenArgs) -> anyhow::Result<Vec<SvcPort>> {
    let n = args.services;
    if n == 0 {
        bail!("--services must be at least 1");
    }
    // VIPs from .10 up, well inside the CIDR.
    if u64::from(n) + 10 >= args.service_cidr.hosts() {
        bail!("{} Services do not fit {}", n, args.service_cidr);
    }
    let six = args.service_cidr.is_ipv6();
    let family = |ip: IpAddr| ip.is_ipv6() == six;
    if !args.backends.iter().all(|&ip| family(ip)) {
        bail!(
            "--backends must be of the family of --service-cidr {}",
            args.service_cidr
        );
    }
    if !family(args.node_ip) {
        bail!(
            "--node-ip must be of the family of --service-cidr {}",
            args.service_cidr
        );
    }
    if !family(args.pod_cidr.addr) {
        bail!(
            "--pod-cidr must be of the family of --service-cidr {}",
            args.service_cidr
        );
    }
    let filler_pods = if six { FILLER_PODS6 } else { FILLER_PODS };
    let fillers: Cidr = filler_pods.parse().map_err(anyhow::Error::msg)?;
    if u64::from(n - 1) * 2 > fillers.hosts() {
        bail!("{n} Services: too many filler endpoints for {filler_pods}");
    }
    let vip = |i: u32| args.service_cidr.nth(10 + u64::from(i));
    let mut ports = Vec::with_capacity(n as usize + 1);
    for i in 0..n - 1 {
        let (port_name, proto, port, target) = FILLER_PORT;
        ports.push(SvcPort {
            namespace: "fill".into(),
            name: format!("svc-{:05}", i + 1),
            port_name,
            proto,
            vip: vip(i),
            port,
            target,
            endpoints: vec![
                fillers.nth(2 * u64::from(i)),
                fillers.nth(2 * u64::from(i) + 1),
            ],
        });
    }
    for (port_name, proto, port, target) in MEASURED_PORTS {
        ports.push(SvcPort {
            namespace: "default".into(),
            name: "bench".into(),
            port_name,
            proto,
            vip: vip(n - 1),
            port,
            target,
            endpoints: args.backends.clone(),
        });
    }
    Ok(ports)
}

pub fn run(args: &GenArgs) -> anyhow::Result<()> {
    let ports = service_ports(args)?;
    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let measured = ports.last().expect("at least the measured ports");
    write(&args.out.join("control.yaml"), &control_file(&ports))?;
    write(&args.out.join("iptables.rules"), &iptables(&ports, args))?;
    write(&args.out.join("nftables.nft"), &nftables(&ports, args))?;
    let mut env = String::new();
    writeln!(env, "VIP={}", measured.vip)?;
    for (name, _, port, target) in MEASURED_PORTS {
        let up = name.to_uppercase();
        writeln!(env, "{up}_PORT={port}\n{up}_TARGET={target}")?;
    }
    writeln!(env, "SERVICE_COUNT={}", args.services)?;
    let family = if measured.vip.is_ipv6() {
        "ipv6"
    } else {
        "ipv4"
    };
    writeln!(env, "FAMILY={family}")?;
    write(&args.out.join("meta.env"), &env)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Services + EndpointSlices, one YAML document each.
fn control_file(ports: &[SvcPort]) -> String {
    let mut out = String::from(
        "# Generated by cipgw-veth-bench gen-rules: the last Service is the measured one.\n",
    );
    let mut i = 0;
    while i < ports.len() {
        // Consecutive ports of one Service form one object.
        let mut j = i + 1;
        while j < ports.len() && ports[j].name == ports[i].name {
            j += 1;
        }
        let svc = &ports[i..j];
        let head = &svc[0];
        let six = head.vip.is_ipv6();
        // IPv6: quoted, and the family said (as the API server fills it in).
        let (cluster_ip, families) = if six {
            (
                format!("\"{}\"", head.vip),
                "  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv6]\n",
            )
        } else {
            (head.vip.to_string(), "")
        };
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n  type: ClusterIP\n  clusterIP: {}\n{families}  ports:\n",
            head.name, head.namespace, cluster_ip
        );
        for p in svc {
            let _ = write!(
                out,
                "  - name: {}\n    port: {}\n    targetPort: {}\n    protocol: {}\n",
                p.port_name,
                p.port,
                p.target,
                p.proto.upper()
            );
        }
        let _ = write!(
            out,
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {}-1\n  namespace: {}\n  labels:\n    kubernetes.io/service-name: {}\naddressType: {}\nendpoints:\n",
            head.name,
            head.namespace,
            head.name,
            if six { "IPv6" } else { "IPv4" }
        );
        for ep in &head.endpoints {
            let _ = write!(
                out,
                "- addresses: [\"{ep}\"]\n  conditions:\n    ready: true\n"
            );
        }
        out.push_str("ports:\n");
        for p in svc {
            let _ = write!(
                out,
                "- name: {}\n  port: {}\n  protocol: {}\n",
                p.port_name,
                p.target,
                p.proto.upper()
            );
        }
        i = j;
    }
    out
}

/// iptables-restore input as kube-proxy's iptables mode writes it.
fn iptables(ports: &[SvcPort], args: &GenArgs) -> String {
    let six = args.service_cidr.is_ipv6();
    let mut f = String::with_capacity(ports.len() * 1200);
    f.push_str("*filter\n");
    for chain in [
        "KUBE-NODEPORTS",
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FIREWALL",
        "KUBE-FORWARD",
        "KUBE-PROXY-FIREWALL",
    ] {
        let _ = writeln!(f, ":{chain} - [0:0]");
    }
    f.push_str(concat!(
        "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
        "-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS\n",
        "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
        "-A INPUT -j KUBE-FIREWALL\n",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
        "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
        "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A OUTPUT -j KUBE-FIREWALL\n",
    ));
    if !six {
        // IPv4 only: kube-proxy's IPv6 proxier has no localnet rule.
        f.push_str("-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n");
    }
    f.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
    let _ = writeln!(f, "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT");
    f.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\nCOMMIT\n");

    f.push_str("*nat\n");
    for chain in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(f, ":{chain} - [0:0]");
    }
    for p in ports {
        let _ = writeln!(f, ":{} - [0:0]", p.svc_chain());
        for &ep in &p.endpoints {
            let _ = writeln!(f, ":{} - [0:0]", p.sep_chain(ep));
        }
    }
    f.push_str(concat!(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
    ));
    let _ = writeln!(
        f,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN\n-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}"
    );
    f.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    let _ = writeln!(f, "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}");
    for p in ports {
        let proto = p.proto.lower();
        let _ = writeln!(
            f,
            "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m {proto} -p {proto} -d {} --dport {} -j {}",
            p.port_name_string(),
            p.vip,
            p.port,
            p.svc_chain()
        );
    }
    f.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    for p in ports {
        let (proto, name, svc) = (p.proto.lower(), p.port_name_string(), p.svc_chain());
        let _ = writeln!(
            f,
            "-A {svc} -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {} --dport {} ! -s {} -j KUBE-MARK-MASQ",
            p.vip, p.port, args.pod_cidr
        );
        let n = p.endpoints.len();
        for (i, &ep) in p.endpoints.iter().enumerate() {
            let sep = p.sep_chain(ep);
            if i + 1 < n {
                let _ = writeln!(
                    f,
                    "-A {svc} -m comment --comment \"{name} -> {}\" -m statistic --mode random --probability {:.10} -j {sep}",
                    host_port(ep, p.target),
                    1.0 / (n - i) as f64
                );
            } else {
                let _ = writeln!(
                    f,
                    "-A {svc} -m comment --comment \"{name} -> {}\" -j {sep}",
                    host_port(ep, p.target)
                );
            }
        }
        for &ep in &p.endpoints {
            let sep = p.sep_chain(ep);
            let _ = writeln!(
                f,
                "-A {sep} -m comment --comment {name} -s {ep} -j KUBE-MARK-MASQ\n-A {sep} -m comment --comment {name} -m {proto} -p {proto} -j DNAT --to-destination {}",
                host_port(ep, p.target)
            );
        }
    }
    f.push_str("COMMIT\n");
    f
}

/// `nft -f` input as kube-proxy's nftables mode (knftables) writes it.
fn nftables(ports: &[SvcPort], args: &GenArgs) -> String {
    let mut f = String::with_capacity(ports.len() * 900);
    let six = args.service_cidr.is_ipv6();
    // The family's table, address type and address selector.
    let (t, addr, ip) = if six {
        ("ip6 kube-proxy", "ipv6_addr", "ip6")
    } else {
        ("ip kube-proxy", "ipv4_addr", "ip")
    };
    let text = format!(
        r#"add table {t} {{ comment "rules for kube-proxy" ; }}
add set {t} cluster-ips {{ type {addr} ; comment "Active ClusterIPs" ; }}
add set {t} nodeport-ips {{ type {addr} ; comment "IPs that accept NodePort traffic" ; }}
add map {t} firewall-ips {{ type {addr} . inet_proto . inet_service : verdict ; comment "destinations that are subject to LoadBalancerSourceRanges" ; }}
add map {t} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }}
add map {t} no-endpoint-services {{ type {addr} . inet_proto . inet_service : verdict ; comment "vmap to drop or reject packets to services with no endpoints" ; }}
add map {t} service-ips {{ type {addr} . inet_proto . inet_service : verdict ; comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }}
add map {t} service-nodeports {{ type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }}
add chain {t} cluster-ips-check
add chain {t} filter-prerouting-pre-dnat {{ type filter hook prerouting priority -110 ; }}
add chain {t} filter-output-pre-dnat {{ type filter hook output priority -110 ; }}
add chain {t} filter-forward {{ type filter hook forward priority 0 ; }}
add chain {t} filter-input {{ type filter hook input priority 0 ; }}
add chain {t} filter-output {{ type filter hook output priority 0 ; }}
add chain {t} firewall-check
add chain {t} mark-for-masquerade
add chain {t} masquerading
add chain {t} nat-output {{ type nat hook output priority -100 ; }}
add chain {t} nat-postrouting {{ type nat hook postrouting priority 100 ; }}
add chain {t} nat-prerouting {{ type nat hook prerouting priority -100 ; }}
add chain {t} nodeport-endpoints-check
add chain {t} reject-chain {{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }}
add chain {t} services
add chain {t} service-endpoints-check
add rule {t} cluster-ips-check {ip} daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
add rule {t} cluster-ips-check {ip} daddr {{ {cidr} }} drop comment "Drop traffic to unallocated ClusterIPs"
add rule {t} filter-prerouting-pre-dnat ct state new jump firewall-check
add rule {t} filter-forward ct state new jump service-endpoints-check
add rule {t} filter-forward ct state new jump cluster-ips-check
add rule {t} filter-input ct state new jump nodeport-endpoints-check
add rule {t} filter-input ct state new jump service-endpoints-check
add rule {t} filter-output ct state new jump service-endpoints-check
add rule {t} filter-output-pre-dnat ct state new jump firewall-check
add rule {t} filter-output ct state new jump cluster-ips-check
add rule {t} firewall-check {ip} daddr . meta l4proto . th dport vmap @firewall-ips
add rule {t} mark-for-masquerade mark set mark or {MASQ_MARK}
add rule {t} masquerading mark and {MASQ_MARK} == 0 return
add rule {t} masquerading mark set mark xor {MASQ_MARK}
add rule {t} masquerading masquerade fully-random
add rule {t} nat-output jump services
add rule {t} nat-postrouting jump masquerading
add rule {t} nat-prerouting jump services
add rule {t} nodeport-endpoints-check {ip} daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports
add rule {t} reject-chain reject
add rule {t} services {ip} daddr . meta l4proto . th dport vmap @service-ips
add rule {t} services {ip} daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports
add element {t} nodeport-ips {{ {node} }}
add rule {t} service-endpoints-check {ip} daddr . meta l4proto . th dport vmap @no-endpoint-services
"#,
        cidr = args.service_cidr,
        node = args.node_ip,
    );
    f.push_str(&text);
    for p in ports {
        let svc = p.nft_service_chain();
        let proto = p.proto.lower();
        // Chains first: a rule may only jump to a chain that exists.
        let _ = writeln!(f, "add chain {t} {svc}");
        for &ep in &p.endpoints {
            let _ = writeln!(f, "add chain {t} {}", p.nft_endpoint_chain(ep));
        }
        let _ = writeln!(
            f,
            "add rule {t} {svc} {ip} daddr {} {proto} dport {} {ip} saddr != {} jump mark-for-masquerade",
            p.vip, p.port, args.pod_cidr
        );
        let arms: Vec<String> = p
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, &ep)| format!("{i} : goto {}", p.nft_endpoint_chain(ep)))
            .collect();
        let _ = writeln!(
            f,
            "add rule {t} {svc} numgen random mod {} vmap {{ {} }}",
            p.endpoints.len(),
            arms.join(" , ")
        );
        for &ep in &p.endpoints {
            let chain = p.nft_endpoint_chain(ep);
            let _ = writeln!(
                f,
                "add rule {t} {chain} {ip} saddr {ep} jump mark-for-masquerade"
            );
            let _ = writeln!(
                f,
                "add rule {t} {chain} meta l4proto {proto} dnat to {}",
                host_port(ep, p.target)
            );
        }
        let _ = writeln!(f, "add element {t} cluster-ips {{ {} }}", p.vip);
        let _ = writeln!(
            f,
            "add element {t} service-ips {{ {} . {proto} . {} : goto {svc} }}",
            p.vip, p.port
        );
    }
    f
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn kube_test_port() -> SvcPort {
        // The Service of kube-proxy's TestOverallNFTablesRules /
        // iptables tests: ns1/svc1 port p80, 172.30.0.41:80 -> 10.180.0.1:80.
        SvcPort {
            namespace: "ns1".into(),
            name: "svc1".into(),
            port_name: "p80",
            proto: Proto::Tcp,
            vip: Ipv4Addr::new(172, 30, 0, 41).into(),
            port: 80,
            target: 80,
            endpoints: vec![Ipv4Addr::new(10, 180, 0, 1).into()],
        }
    }

    #[test]
    fn chain_names_match_kube_proxy() {
        let p = kube_test_port();
        let ep = p.endpoints[0];
        assert_eq!(p.svc_chain(), "KUBE-SVC-XPGD46QRK7WJZT7O");
        assert_eq!(p.sep_chain(ep), "KUBE-SEP-SXIVWICOYRO3J4NJ");
        assert_eq!(p.nft_service_chain(), "service-ULMVA6XW-ns1/svc1/tcp/p80");
        assert_eq!(
            p.nft_endpoint_chain(ep),
            "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
    }

    fn args(services: u32) -> GenArgs {
        GenArgs {
            services,
            service_cidr: "198.19.0.0/16".parse().unwrap(),
            pod_cidr: "198.18.0.0/15".parse().unwrap(),
            backends: vec![
                Ipv4Addr::new(198, 18, 2, 11).into(),
                Ipv4Addr::new(198, 18, 2, 12).into(),
            ],
            node_ip: Ipv4Addr::new(198, 18, 0, 1).into(),
            out: PathBuf::new(),
        }
    }

    #[test]
    fn the_measured_service_comes_last_everywhere() {
        let a = args(3);
        let ports = service_ports(&a).unwrap();
        assert_eq!(ports.len(), 4);
        let ipt = iptables(&ports, &a);
        let services: Vec<&str> = ipt
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES"))
            .collect();
        assert_eq!(services.len(), 5, "2 fillers, 2 measured ports, nodeports");
        assert!(services[3].contains("default/bench:udp cluster IP"));
        assert!(services[3].contains("-d 198.19.0.12 --dport 9000"));
        assert!(ipt.contains("--probability 0.5000000000"));
        let nft = nftables(&ports, &a);
        assert!(nft.contains("numgen random mod 2 vmap"));
        assert!(nft.contains("198.19.0.12 . udp . 9000 : goto service-"));
        let yaml = control_file(&ports);
        assert_eq!(yaml.matches("kind: Service\n").count(), 3);
        assert_eq!(yaml.matches("kind: EndpointSlice\n").count(), 3);
        assert!(yaml.ends_with("- name: udp\n  port: 9000\n  protocol: UDP\n"));
    }

    fn args6(services: u32) -> GenArgs {
        GenArgs {
            services,
            service_cidr: "2001:2:0:100::/112".parse().unwrap(),
            pod_cidr: "2001:2::/48".parse().unwrap(),
            backends: vec![
                "2001:2:0:2::11".parse().unwrap(),
                "2001:2:0:2::12".parse().unwrap(),
            ],
            node_ip: "2001:2::1".parse().unwrap(),
            out: PathBuf::new(),
        }
    }

    #[test]
    fn ipv6_rules_use_the_ipv6_forms() {
        let a = args6(3);
        let ports = service_ports(&a).unwrap();
        assert_eq!(ports[3].vip, "2001:2:0:100::c".parse::<IpAddr>().unwrap());
        assert_eq!(
            ports[0].endpoints[1],
            "2001:2:0:80::1".parse::<IpAddr>().unwrap()
        );
        let ipt = iptables(&ports, &a);
        assert!(!ipt.contains("127.0.0.0/8"), "no IPv4-only localnet rule");
        assert!(ipt.contains("-d 2001:2:0:100::c --dport 9000 -j KUBE-SVC-"));
        assert!(ipt.contains("-j DNAT --to-destination [2001:2:0:2::11]:9000"));
        assert!(ipt.contains("! -s 2001:2::/48 -j KUBE-MARK-MASQ"));
        let nft = nftables(&ports, &a);
        assert!(nft.starts_with("add table ip6 kube-proxy"));
        assert!(nft.contains("type ipv6_addr ;"));
        assert!(!nft.contains(" ip daddr") && !nft.contains("ipv4_addr"));
        assert!(nft.contains("ip6 daddr { 2001:2:0:100::/112 } drop"));
        assert!(nft.contains("dnat to [2001:2:0:2::12]:9000"));
        assert!(nft.contains("__2001.2.0.2..11/9000"));
        assert!(!nft.contains("__2001:"), "no ':' in chain names");
        let yaml = control_file(&ports);
        assert!(yaml.contains(
            "clusterIP: \"2001:2:0:100::c\"\n  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv6]\n"
        ));
        assert_eq!(yaml.matches("addressType: IPv6\n").count(), 3);
        assert!(!yaml.contains("IPv4"));
        let mut mixed = args6(1);
        mixed.backends.push(Ipv4Addr::new(198, 18, 2, 11).into());
        let err = service_ports(&mixed).unwrap_err().to_string();
        assert!(err.contains("--backends"), "{err}");
    }
}
