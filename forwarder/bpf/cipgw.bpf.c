// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only
/*
 * cipgw's XDP program: decides, per received frame, whether it belongs to
 * the gateway's AF_XDP data plane or to the kernel.
 *
 * A frame goes to the AF_XDP socket of its (interface, RX queue) when it is
 * IPv4 or IPv6 and either
 *   - addressed to a service VIP (cipgw_vips / cipgw_vips6; address only,
 *     so TCP, UDP and ICMP alike), or
 *   - a TCP/UDP reply from a known backend endpoint: (source address,
 *     source port, protocol) in cipgw_backends (cipgw_backends6). With
 *     source NAT on for its family (cipgw_snat_on), only such a reply
 *     addressed to a source NAT address (cipgw_snat, cipgw_snat6) with a
 *     destination port inside that address's
 *     SNAT range: everything else to those addresses (SSH, the kubelet,
 *     the node's own connections, probes' answers) and every other packet
 *     from a backend reaches the kernel; or
 *   - a UDP query to one of the gateway's DNS addresses, port 53
 *     (cipgw_dns, cipgw_dns6: destination address, port, protocol), or
 *   - an ICMP error (destination unreachable, time exceeded, parameter
 *     problem; ICMPv6 also packet too big) quoting a datagram that was such a reply's other direction:
 *     one the gateway sent to a backend endpoint (from a source NAT port,
 *     with source NAT on), whoever reports it (the backend or a router
 *     on the way); errors about replies are addressed to a VIP, or
 *   - a later fragment of a datagram whose first fragment went to a socket
 *     as a backend reply (cipgw_frags, cipgw_frags6, which this program
 *     writes: later fragments carry no ports to match by).
 * Only unfragmented packets and first fragments carry ports; other later
 * fragments go to the kernel. IPv6 extension headers are walked, at most
 * MAX_EXTENSION_HEADERS of them, as the workers' parser does; a longer
 * chain goes to the kernel.
 * Everything else (ARP, Neighbor Discovery, router advertisements, SSH,
 * traffic to the gateway itself) is XDP_PASS. A matching frame on an interface the gateway serves
 * (cipgw_ports) whose queue has no socket bound is dropped
 * (bpf_redirect_map's fallback action): between a gateway's exit and its
 * successor's start the program stays attached, and VIP traffic the
 * kernel would answer with RSTs is dropped instead, so TCP retransmits
 * carry connections over the restart.
 *
 * Socket slots: cipgw_ports maps the ingress ifindex to the port's base
 * slot; the slot in cipgw_xsks is base + RX queue index. An ifindex below
 * PORT_INDEX_SIZE is looked up first in cipgw_portidx, an array the
 * verifier turns into a bounds check and a load: every redirected frame
 * asks for its port, and cipgw_ports' lookup (hashing the key, walking a
 * bucket) took 20-40 ns of the receive core a frame on veth
 * (benches/RESULTS.md, session 41). Userspace (forwarder/src/bpf/) owns
 * the layout and writes both maps; map names are its interface.
 *
 * The control plane writes the maps, this program only reads them.
 */
#include "cipgw_bpf.h"

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>

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

/* RFC 4443 error types: destination unreachable, packet too big, time
 * exceeded, parameter problem (1..4). Informational ones are 128 and up. */
#define ICMPV6_ERROR_FIRST 1
#define ICMPV6_ERROR_LAST 4

/* IPv6 next-header values of extension headers (RFC 8200, 4302, 6275,
 * 7401, 5533) and the longest chain walked, as forwarder/datapath's
 * wire/ipv6.rs walks it. */
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_AUTH 51
#define NEXTHDR_ICMPV6 58
#define NEXTHDR_DEST 60
#define NEXTHDR_MOBILITY 135
#define NEXTHDR_HIP 139
#define NEXTHDR_SHIM6 140
#define MAX_EXTENSION_HEADERS 8
/* Fragment header: offset in the high 13 bits of its third/fourth byte,
 * "more fragments" in the lowest. */
#define IPV6_OFFSET_MASK 0xFFF8
#define IPV6_MORE_FRAGMENTS 0x0001

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

/* Entry 0: SNAT_ON_IPV4 | SNAT_ON_IPV6, the families source NAT is on
 * for (IPv6 Services without an IPv6 SNAT address keep the client's). */
#define SNAT_ON_IPV4 1
#define SNAT_ON_IPV6 2
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

/* IPv6 counterparts: 16-byte addresses, network order. */
struct addr6 {
	__u8 b[16];
};

/* Key of cipgw_backends6 and cipgw_dns6; 20 bytes, no implicit padding. */
struct backend6_key {
	struct addr6 addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct addr6);
	__type(value, __u8);
} cipgw_vips6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct backend6_key);
	__type(value, __u8);
} cipgw_backends6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 128);
	__type(key, struct addr6);
	__type(value, struct snat_range);
} cipgw_snat6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct backend6_key);
	__type(value, __u8);
} cipgw_dns6 SEC(".maps");

/* (source, destination, identification, next header): 40 bytes. */
struct frag6_key {
	struct addr6 saddr;
	struct addr6 daddr;
	__be32 id;
	__u8 proto;
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct frag6_key);
	__type(value, __u8);
} cipgw_frags6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);   /* ifindex */
	__type(value, __u32); /* base slot in cipgw_xsks */
} cipgw_ports SEC(".maps");

/*
 * cipgw_ports again, for ifindexes below PORT_INDEX_SIZE: the value at
 * index ifindex is the port's base slot plus one, 0 for no port. Written
 * after cipgw_ports when a port is set and cleared before it when a port
 * goes, so wherever it names a port, cipgw_ports does too.
 */
#define PORT_INDEX_SIZE 4096
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PORT_INDEX_SIZE);
	__type(key, __u32);   /* ifindex */
	__type(value, __u32); /* base slot + 1; 0: not a port */
} cipgw_portidx SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u32);
} cipgw_xsks SEC(".maps");

static __always_inline int to_socket(struct xdp_md *ctx)
{
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 *base_plus_one = 0;
	__u32 *found;
	__u32 base;

	if (ifindex < PORT_INDEX_SIZE)
		base_plus_one = bpf_map_lookup_elem(&cipgw_portidx, &ifindex);
	if (base_plus_one && *base_plus_one) {
		base = *base_plus_one - 1;
	} else {
		found = bpf_map_lookup_elem(&cipgw_ports, &ifindex);
		if (!found)
			return XDP_PASS;
		base = *found;
	}
	/* One call for both: with one per branch, clang shared the address
	 * of ctx->rx_queue_index between them, and the verifier refuses a
	 * load through a ctx pointer moved off its start. */
	return (int)bpf_redirect_map(&cipgw_xsks, base + ctx->rx_queue_index,
				     XDP_DROP);
}

/* Whether source NAT is on for the family of `bit` (cipgw_snat_on). */
static __always_inline int snat_is_on(__u32 bit)
{
	__u32 zero = 0;
	__u32 *on = bpf_map_lookup_elem(&cipgw_snat_on, &zero);

	return on && (*on & bit);
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
	struct snat_range *range;
	__u16 port;

	if (!bpf_map_lookup_elem(&cipgw_backends, &key))
		return 0;
	if (!snat_is_on(SNAT_ON_IPV4))
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

/* backend_reply for IPv6. */
static __always_inline int backend_reply6(const struct addr6 *saddr,
					  __be16 sport, __u8 proto,
					  const struct addr6 *daddr,
					  __be16 dport)
{
	struct backend6_key key = {
		.port = sport,
		.proto = proto,
		.pad = 0,
	};
	struct snat_range *range;
	__u16 port;

	__builtin_memcpy(&key.addr, saddr, sizeof(key.addr));
	if (!bpf_map_lookup_elem(&cipgw_backends6, &key))
		return 0;
	if (!snat_is_on(SNAT_ON_IPV6))
		return 1;
	range = bpf_map_lookup_elem(&cipgw_snat6, daddr);
	if (!range)
		return 0;
	port = cipgw_htons(dport); /* to host order */
	return port >= range->low && port <= range->high;
}

/* Where an IPv6 packet's upper layer starts, and its fragment header,
 * as offsets from the frame's start. */
struct upper6 {
	__u32 l4;
	__u8 proto;
	/* The fragment header's offset, 0 when there is none. */
	__u32 frag;
};

/* Deepest upper-layer header the program looks at: extension headers
 * past this are the kernel's business. Offsets fit in 10 bits. */
#define MAX_L4_OFFSET 512

/*
 * Walks the extension headers of the IPv6 packet whose header is at
 * offset `l3`: returns the upper layer's offset (bits 0-9), protocol
 * (bits 10-17) and the fragment header's offset or 0 (bits 18-27) when
 * the upper layer was found within MAX_EXTENSION_HEADERS and
 * MAX_L4_OFFSET, -1 when the chain is longer, truncated, or malformed
 * (the kernel's then).
 *
 * A global function on purpose: the verifier checks it once, on its
 * own, and its callers see one scalar. Inlined, every path through the
 * walk (each with other offsets) would verify the rest of the program
 * again: 170,000 instructions and seconds at every load instead of a
 * few thousand.
 */
__attribute__((noinline)) int cipgw_walk6(struct xdp_md *ctx, __u32 l3)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ipv6hdr *ip6;
	__u32 frag = 0;
	__u32 off;
	__u8 proto;
	__u32 i;

	if (l3 > sizeof(struct ethhdr) + sizeof(struct vlan_tag))
		return -1;
	ip6 = data + l3;
	if ((void *)(ip6 + 1) > data_end)
		return -1;
	proto = ip6->nexthdr;
	off = l3 + sizeof(struct ipv6hdr);
#pragma clang loop unroll(disable)
	for (i = 0; i <= MAX_EXTENSION_HEADERS; i++) {
		__u8 *at;
		__u32 len;

		if (off > MAX_L4_OFFSET)
			return -1;
		switch (proto) {
		case NEXTHDR_HOP:
			if (i > 0)
				return -1;
			/* fallthrough */
		case NEXTHDR_ROUTING:
		case NEXTHDR_DEST:
		case NEXTHDR_MOBILITY:
		case NEXTHDR_HIP:
		case NEXTHDR_SHIM6:
		case NEXTHDR_AUTH:
		case NEXTHDR_FRAGMENT:
			break;
		default:
			return (int)((frag << 18) | ((__u32)proto << 10) | off);
		}
		/* Every extension header is at least 8 bytes long. The
		 * mask changes nothing (off <= MAX_L4_OFFSET) but shows
		 * the verifier the bound; the empty asm keeps the compiler,
		 * which knows the bound, from dropping it. */
		asm volatile("" : "+r"(off));
		at = data + (off & 0x3FF);
		if ((void *)(at + 8) > data_end)
			return -1;
		if (proto == NEXTHDR_FRAGMENT) {
			frag = off;
			len = 8;
		} else if (proto == NEXTHDR_AUTH) {
			len = ((__u32)at[1] + 2) * 4;
		} else {
			len = 8 + (__u32)at[1] * 8;
		}
		proto = at[0];
		off += len;
	}
	return -1;
}

/* cipgw_walk6's answer, unpacked; -1 when there is none. */
static __always_inline int walk6(struct xdp_md *ctx, __u32 l3,
				 struct upper6 *out)
{
	int packed = cipgw_walk6(ctx, l3);

	if (packed < 0)
		return -1;
	out->l4 = (__u32)packed & 0x3FF;
	out->proto = ((__u32)packed >> 10) & 0xFF;
	out->frag = ((__u32)packed >> 18) & 0x3FF;
	return 0;
}

/*
 * An ICMPv6 message not addressed to a VIP: to a socket when it is an
 * error quoting a datagram the gateway sent to a backend. The quote's
 * upper layer must follow its fixed header directly (what the gateway
 * sends carries no extension headers).
 */
static __always_inline int icmp6_to(struct xdp_md *ctx, __u8 *icmp,
				    void *data_end)
{
	struct ipv6hdr *inner;
	__be16 *ports;

	if ((void *)(icmp + ICMP_HEADER_LEN) > data_end)
		return XDP_PASS;
	if (icmp[0] < ICMPV6_ERROR_FIRST || icmp[0] > ICMPV6_ERROR_LAST)
		return XDP_PASS;
	inner = (void *)(icmp + ICMP_HEADER_LEN);
	if ((void *)(inner + 1) > data_end)
		return XDP_PASS;
	if (inner->version != 6)
		return XDP_PASS;
	if (inner->nexthdr != IPPROTO_TCP && inner->nexthdr != IPPROTO_UDP)
		return XDP_PASS;
	ports = (void *)(inner + 1);
	if ((void *)(ports + 2) > data_end)
		return XDP_PASS;
	/* The quoted datagram went gateway -> backend: its reply is the
	 * quote reversed. */
	if (backend_reply6((struct addr6 *)&inner->daddr, ports[1],
			   inner->nexthdr, (struct addr6 *)&inner->saddr,
			   ports[0]))
		return to_socket(ctx);
	return XDP_PASS;
}

/* The datagram a fragment header at `frag` belongs to. */
static __always_inline void frag6_of(struct frag6_key *key,
				     const struct addr6 *saddr,
				     const struct addr6 *daddr, __u8 *frag,
				     __u8 proto)
{
	__builtin_memset(key, 0, sizeof(*key));
	__builtin_memcpy(&key->saddr, saddr, sizeof(key->saddr));
	__builtin_memcpy(&key->daddr, daddr, sizeof(key->daddr));
	__builtin_memcpy(&key->id, frag + 4, sizeof(key->id));
	key->proto = proto;
}

/* The IPv6 half of cipgw_xdp (its header at offset `l3`): see the top
 * of this file. */
static __always_inline int ipv6_to(struct xdp_md *ctx, void *data,
				   void *data_end, __u32 l3)
{
	struct ipv6hdr *ip6;
	struct backend6_key key;
	struct frag6_key frag;
	struct upper6 upper;
	struct addr6 saddr;
	struct addr6 daddr;
	__be16 *ports;
	__u8 *frag_hdr = 0;
	__u16 frag_word = 0;

	if (l3 > sizeof(struct ethhdr) + sizeof(struct vlan_tag))
		return XDP_PASS;
	ip6 = data + l3;
	if ((void *)(ip6 + 1) > data_end)
		return XDP_PASS;
	if (ip6->version != 6)
		return XDP_PASS;
	__builtin_memcpy(&saddr, &ip6->saddr, sizeof(saddr));
	__builtin_memcpy(&daddr, &ip6->daddr, sizeof(daddr));
	if (bpf_map_lookup_elem(&cipgw_vips6, &daddr))
		return to_socket(ctx);
	if (walk6(ctx, l3, &upper) < 0)
		return XDP_PASS;
	if (upper.l4 > MAX_L4_OFFSET)
		return XDP_PASS;
	if (upper.frag) {
		if (upper.frag > MAX_L4_OFFSET)
			return XDP_PASS;
		frag_hdr = data + upper.frag;
		if ((void *)(frag_hdr + 8) > data_end)
			return XDP_PASS;
		frag_word = cipgw_htons(*(__be16 *)(frag_hdr + 2));
	}
	if (upper.proto == NEXTHDR_ICMPV6) {
		if (frag_hdr)
			return XDP_PASS;
		return icmp6_to(ctx, data + upper.l4, data_end);
	}
	if (upper.proto != IPPROTO_TCP && upper.proto != IPPROTO_UDP)
		return XDP_PASS;
	if (frag_hdr && (frag_word & IPV6_OFFSET_MASK)) {
		frag6_of(&frag, &saddr, &daddr, frag_hdr, upper.proto);
		if (bpf_map_lookup_elem(&cipgw_frags6, &frag))
			return to_socket(ctx);
		return XDP_PASS;
	}

	ports = data + upper.l4;
	if ((void *)(ports + 2) > data_end)
		return XDP_PASS;

	if (backend_reply6(&saddr, ports[0], upper.proto, &daddr, ports[1])) {
		if (frag_hdr && (frag_word & IPV6_MORE_FRAGMENTS)) {
			__u8 one = 1;

			frag6_of(&frag, &saddr, &daddr, frag_hdr, upper.proto);
			bpf_map_update_elem(&cipgw_frags6, &frag, &one, BPF_ANY);
		}
		return to_socket(ctx);
	}

	/* A query to one of the gateway's DNS addresses. */
	__builtin_memcpy(&key.addr, &daddr, sizeof(key.addr));
	key.proto = upper.proto;
	key.pad = 0;
	key.port = ports[1]; /* destination port */
	if (bpf_map_lookup_elem(&cipgw_dns6, &key))
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
	/* The IP header's offset: a constant on every path. */
	__u32 l3 = sizeof(*eth);

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
		l3 += sizeof(*tag);
	}
	if (proto == cipgw_htons(ETH_P_IPV6))
		return ipv6_to(ctx, data, data_end, l3);
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
