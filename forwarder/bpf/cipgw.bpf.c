// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only
/*
 * cipgw's XDP program: decides, per received frame, whether it belongs to
 * the gateway's AF_XDP data plane or to the kernel.
 *
 * A frame goes to the AF_XDP socket of its (interface, RX queue) when it is
 * IPv4 and either
 *   - addressed to a service VIP (cipgw_vips; address only, so TCP, UDP
 *     and ICMP alike), or
 *   - a TCP/UDP reply from a known backend endpoint: (source address,
 *     source port, protocol) in cipgw_backends. With source NAT on
 *     (cipgw_snat_on), only such a reply addressed to a source NAT
 *     address (cipgw_snat) with a destination port inside that address's
 *     SNAT range: everything else to those addresses (SSH, the kubelet,
 *     the node's own connections, probes' answers) and every other packet
 *     from a backend reaches the kernel; or
 *   - a UDP query to one of the gateway's DNS addresses, port 53
 *     (cipgw_dns: destination address, port, protocol), or
 *   - an ICMP error (destination unreachable, time exceeded, parameter
 *     problem) quoting a datagram that was such a reply's other direction:
 *     one the gateway sent to a backend endpoint (from a source NAT port,
 *     with source NAT on), whoever reports it (the backend or a router
 *     on the way); errors about replies are addressed to a VIP, or
 *   - a later fragment of a datagram whose first fragment went to a socket
 *     as a backend reply (cipgw_frags, which this program writes: later
 *     fragments carry no ports to match by).
 * Only unfragmented packets and first fragments carry ports; other later
 * fragments go to the kernel.
 * Everything else (ARP, IPv6, SSH, traffic to the gateway itself) is
 * XDP_PASS. A matching frame on an interface the gateway serves
 * (cipgw_ports) whose queue has no socket bound is dropped
 * (bpf_redirect_map's fallback action): between a gateway's exit and its
 * successor's start the program stays attached, and VIP traffic the
 * kernel would answer with RSTs is dropped instead, so TCP retransmits
 * carry connections over the restart.
 *
 * Socket slots: cipgw_ports maps the ingress ifindex to the port's base
 * slot; the slot in cipgw_xsks is base + RX queue index. Userspace
 * (forwarder/src/bpf.rs) owns the layout; map names are its interface.
 *
 * The control plane writes the maps, this program only reads them.
 */
#include "cipgw_bpf.h"

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>

/* RFC 791: fragment offset is the low 13 bits of frag_off. */
#define IP_OFFSET_MASK 0x1FFF
/* RFC 791: "more fragments" flag. */
#define IP_MORE_FRAGMENTS 0x2000

/* RFC 792 message types that quote the datagram they are about. */
#define ICMP_DEST_UNREACH 3
#define ICMP_TIME_EXCEEDED 11
#define ICMP_PARAMETER_PROBLEM 12
/* Type, code, checksum and one word precede the quoted datagram. */
#define ICMP_HEADER_LEN 8

/* IEEE 802.1Q tag: TCI then the encapsulated EtherType. */
struct vlan_tag {
	__be16 tci;
	__be16 encap_proto;
};

/* Key of cipgw_backends; 8 bytes, no implicit padding. */
struct backend_key {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32); /* IPv4 address, network byte order */
	__type(value, __u8);
} cipgw_vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct backend_key);
	__type(value, __u8);
} cipgw_backends SEC(".maps");

/* Value of cipgw_snat: the SNAT port range, host byte order. */
struct snat_range {
	__u16 low;
	__u16 high;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 128);
	__type(key, __u32); /* SNAT address, network byte order */
	__type(value, struct snat_range);
} cipgw_snat SEC(".maps");

/* Entry 0: non-zero when source NAT is on. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} cipgw_snat_on SEC(".maps");

/*
 * DNS addresses the gateway answers on: (address, port 53, UDP) as
 * destinations, keyed like cipgw_backends. Their UDP queries go to the
 * workers; TCP to them stays with the kernel.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct backend_key);
	__type(value, __u8);
} cipgw_dns SEC(".maps");

/*
 * Datagrams whose first fragment went to a socket as a backend reply:
 * (source, destination, identification, protocol). Written here, read
 * for later fragments; LRU, so old datagrams make room by themselves.
 */
struct frag_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;
	__u8 proto;
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct frag_key);
	__type(value, __u8);
} cipgw_frags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);   /* ifindex */
	__type(value, __u32); /* base slot in cipgw_xsks */
} cipgw_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u32);
} cipgw_xsks SEC(".maps");

static __always_inline int to_socket(struct xdp_md *ctx)
{
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 *base = bpf_map_lookup_elem(&cipgw_ports, &ifindex);

	if (!base)
		return XDP_PASS;
	return (int)bpf_redirect_map(&cipgw_xsks, *base + ctx->rx_queue_index,
				     XDP_DROP);
}

/*
 * Whether a TCP/UDP packet from (saddr, sport, proto) to (daddr, dport),
 * ports in network order, is a reply of a backend endpoint the gateway
 * handles: see the top of this file.
 */
static __always_inline int backend_reply(__be32 saddr, __be16 sport, __u8 proto,
					 __be32 daddr, __be16 dport)
{
	struct backend_key key = {
		.addr = saddr,
		.port = sport,
		.proto = proto,
		.pad = 0,
	};
	__u32 zero = 0;
	__u32 *snat_on;
	struct snat_range *range;
	__u16 port;

	if (!bpf_map_lookup_elem(&cipgw_backends, &key))
		return 0;
	snat_on = bpf_map_lookup_elem(&cipgw_snat_on, &zero);
	if (!snat_on || !*snat_on)
		return 1;
	range = bpf_map_lookup_elem(&cipgw_snat, &daddr);
	if (!range)
		return 0;
	port = cipgw_htons(dport); /* to host order */
	return port >= range->low && port <= range->high;
}

/*
 * An ICMP message not addressed to a VIP: to a socket when it is an error
 * quoting a datagram the gateway sent to a backend, so that the workers
 * translate it for the client (path-MTU discovery through the gateway).
 */
static __always_inline int icmp_to(struct xdp_md *ctx, struct iphdr *ip,
				   void *data_end)
{
	__u8 *icmp = (void *)ip + ((__u32)ip->ihl * 4);
	struct iphdr *inner;
	__be16 *ports;

	if (ip->frag_off & cipgw_htons(IP_MORE_FRAGMENTS | IP_OFFSET_MASK))
		return XDP_PASS;
	if ((void *)(icmp + ICMP_HEADER_LEN) > data_end)
		return XDP_PASS;
	if (icmp[0] != ICMP_DEST_UNREACH && icmp[0] != ICMP_TIME_EXCEEDED &&
	    icmp[0] != ICMP_PARAMETER_PROBLEM)
		return XDP_PASS;
	inner = (void *)(icmp + ICMP_HEADER_LEN);
	if ((void *)(inner + 1) > data_end)
		return XDP_PASS;
	if (inner->version != 4 || inner->ihl < 5)
		return XDP_PASS;
	if (inner->protocol != IPPROTO_TCP && inner->protocol != IPPROTO_UDP)
		return XDP_PASS;
	ports = (void *)inner + ((__u32)inner->ihl * 4);
	if ((void *)(ports + 2) > data_end)
		return XDP_PASS;
	/* The quoted datagram went gateway -> backend: its reply is the
	 * quote reversed. */
	if (backend_reply(inner->daddr, ports[1], inner->protocol, inner->saddr,
			  ports[0]))
		return to_socket(ctx);
	return XDP_PASS;
}

SEC("xdp")
int cipgw_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct backend_key key;
	__be16 *ports;
	__be16 proto;
	__u32 daddr;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	proto = eth->h_proto;
	ip = (void *)(eth + 1);

	/* At most one VLAN tag (802.1Q or 802.1ad outer). */
	if (proto == cipgw_htons(ETH_P_8021Q) ||
	    proto == cipgw_htons(ETH_P_8021AD)) {
		struct vlan_tag *tag = (void *)(eth + 1);

		if ((void *)(tag + 1) > data_end)
			return XDP_PASS;
		proto = tag->encap_proto;
		ip = (void *)(tag + 1);
	}
	if (proto != cipgw_htons(ETH_P_IP))
		return XDP_PASS;
	if ((void *)(ip + 1) > data_end)
		return XDP_PASS;
	if (ip->version != 4 || ip->ihl < 5)
		return XDP_PASS;

	daddr = ip->daddr;
	if (bpf_map_lookup_elem(&cipgw_vips, &daddr))
		return to_socket(ctx);

	if (ip->protocol == IPPROTO_ICMP)
		return icmp_to(ctx, ip, data_end);
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	if (ip->frag_off & cipgw_htons(IP_OFFSET_MASK)) {
		struct frag_key frag = {
			.saddr = ip->saddr,
			.daddr = daddr,
			.id = ip->id,
			.proto = ip->protocol,
			.pad = 0,
		};

		if (bpf_map_lookup_elem(&cipgw_frags, &frag))
			return to_socket(ctx);
		return XDP_PASS;
	}

	/* ihl is 4 bits: the L4 header starts 20..60 bytes into the IP one. */
	ports = (void *)ip + ((__u32)ip->ihl * 4);
	if ((void *)(ports + 2) > data_end)
		return XDP_PASS;

	if (backend_reply(ip->saddr, ports[0], ip->protocol, daddr, ports[1])) {
		if (ip->frag_off & cipgw_htons(IP_MORE_FRAGMENTS)) {
			struct frag_key frag = {
				.saddr = ip->saddr,
				.daddr = daddr,
				.id = ip->id,
				.proto = ip->protocol,
				.pad = 0,
			};
			__u8 one = 1;

			bpf_map_update_elem(&cipgw_frags, &frag, &one, BPF_ANY);
		}
		return to_socket(ctx);
	}

	/* A query to one of the gateway's DNS addresses. */
	key.addr = daddr;
	key.proto = ip->protocol;
	key.pad = 0;
	key.port = ports[1]; /* destination port */
	if (bpf_map_lookup_elem(&cipgw_dns, &key))
		return to_socket(ctx);

	return XDP_PASS;
}

char _license[] SEC("license") = "GPL";
