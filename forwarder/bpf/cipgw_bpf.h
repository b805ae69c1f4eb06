/* SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only */
/*
 * The few BPF-side declarations cipgw's XDP program needs, so that it
 * builds against the kernel's uapi headers alone (Debian linux-libc-dev)
 * without depending on where a libbpf installation keeps bpf_helpers.h.
 * Same definitions as libbpf's bpf_helpers.h / bpf_endian.h.
 */
#ifndef CIPGW_BPF_H
#define CIPGW_BPF_H

#include <linux/types.h>
#include <linux/bpf.h>

#define SEC(name) __attribute__((section(name), used))
/* linux/stddef.h defines a plain __inline__ version; force inlining. */
#undef __always_inline
#define __always_inline inline __attribute__((always_inline))

/* BTF-defined map attributes (libbpf >= 0.0.6 understands these). */
#define __uint(name, val) int (*name)[val]
#define __type(name, val) __typeof__(val) *name

/* Helper calls: the "address" is the helper id the verifier resolves. */
static void *(*bpf_map_lookup_elem)(void *map, const void *key) =
	(void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_map_update_elem)(void *map, const void *key,
				   const void *value, __u64 flags) =
	(void *)BPF_FUNC_map_update_elem;
static long (*bpf_redirect_map)(void *map, __u64 key, __u64 flags) =
	(void *)BPF_FUNC_redirect_map;

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define cipgw_htons(x) ((__be16)__builtin_bswap16(x))
#elif __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define cipgw_htons(x) ((__be16)(x))
#else
#error "unknown byte order"
#endif

#endif /* CIPGW_BPF_H */
