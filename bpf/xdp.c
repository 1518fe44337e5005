//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* grain's generic packet program, for XDP (grain_xdp) and for tc ingress
 * (grain_tc; the packet-reading part is classify.h, built once per hook).
 * It never changes with policies: every rule lives in the maps below,
 * written by userspace (engine/) from a Plan (codegen/).
 *
 * Per packet: first the generation's gate (classify.h, gate_fails), which
 * passes at once a plain TCP or UDP packet whose payload word no rule can
 * accept; then parse L2-L4 once; read the active generation once; look up one
 * bitmap of candidate rules per constrained field (protocol, addresses, ports,
 * TCP flags, interface); AND them word by word; walk the set bits in priority
 * order (bit i = rule i), checking payload contents only for rules that are
 * still candidates. The first matching drop/pass rule decides; count rules
 * count and let the walk continue. The cost depends on the number of fields
 * used and on the bitmap width, not on a scan over the rules.
 *
 * By concern: grain.h holds what Go shares (limits, codes, map values),
 * xdp_events.h the events (staging, the flush timer, deduplication, the
 * rate limit), classify.h the per-packet path; this file the maps, the
 * bitmap lookups and the two programs. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "grain.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8

/* Frame offsets grain reads at are bounded so that the verifier can prove
 * packet accesses (XDP frames are at most a few pages). */
#define MAX_FRAME_OFF 0x3fff

/* Re-derives the bound of an offset already checked against MAX_FRAME_OFF
 * on the register that is about to be added to a packet pointer: clang may
 * use another copy of the value than the one it compared, and older
 * verifiers (6.1) do not carry the bound over to that copy. The barrier
 * keeps clang from dropping the mask as redundant. */
#define bound_offset(v)           \
	do {                      \
		barrier_var(v);   \
		(v) &= MAX_FRAME_OFF; \
	} while (0)

#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ICMPV6 58

/* Packet headers, written out so the object does not depend on the
 * build host's kernel headers. */
struct ethhdr_ {
	__u8 dst[6];
	__u8 src[6];
	__be16 proto;
};

struct vlanhdr_ {
	__be16 tci;
	__be16 proto;
};

struct iphdr_ {
	__u8 ver_ihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__be16 check;
	__be32 saddr;
	__be32 daddr;
};

struct ipv6hdr_ {
	__be32 ver_tc_flow;
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

struct ipv6_opt_ {
	__u8 nexthdr;
	__u8 hdrlen;
};

struct ipv6_frag_ {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off;
	__be32 id;
};

struct ports_ {
	__be16 source;
	__be16 dest;
};

/* Everything later stages need about one packet, as offsets from the start
 * of the frame so that global functions can re-derive packet pointers. */
struct pkt_meta {
	__u32 payload_off;
	__u32 payload_end;
	__u32 len;
	__u32 _pad0;
	__u16 sport;
	__u16 dport;
	__u8 family;
	__u8 protocol;
	__u8 tcp_flags;
	__u8 has_ports;
	__u8 has_flags;
	__u8 _pad[7];
	/* 8-aligned: copied and compared as 64-bit words */
	__u8 saddr[16] __attribute__((aligned(8)));
	__u8 daddr[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct grain_active);
} active SEC(".maps");


struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GRAIN_GENERATIONS * GRAIN_BITMAPS_PER_GEN);
	__type(key, __u32);
	__type(value, struct grain_bitmap);
} bitmaps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GRAIN_GENERATIONS * 2 * 65536);
	__type(key, __u32);
	__type(value, __u16);
} port_class SEC(".maps");

/* (generation, IPv4 field, the address's first 16 bits) -> which prefixes
 * can contain the address (struct grain_cidr_index): 1 MiB, preallocated
 * like port_class, so that an IPv4 address costs one array lookup plus
 * one hash lookup per prefix length present in its /16. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GRAIN_GENERATIONS * 2 * GRAIN_CIDR_INDEX_ENTRIES);
	__type(key, __u32);
	__type(value, struct grain_cidr_index);
} cidr_index SEC(".maps");

/* (generation, field, prefix) -> class: bitmaps[GRAIN_BITMAP_REGION_CIDR + class];
 * for IPv4 only prefixes longer than GRAIN_CIDR_INDEX_BITS.
 * Not preallocated: most trees hold a few prefixes, not the limit's 2 x 16384. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, GRAIN_GENERATIONS * GRAIN_MAX_CIDR_ENTRIES);
	__type(key, struct grain_cidr_key);
	__type(value, __u32);
} cidr_class SEC(".maps");

/* (generation, reversed server name) -> class: bitmaps[GRAIN_BITMAP_REGION_SNI
 * + class] (tls.h) */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, GRAIN_GENERATIONS * GRAIN_MAX_SNI_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct grain_sni_key);
	__type(value, __u32);
} sni_class SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GRAIN_GENERATIONS * GRAIN_MAX_IFACE_ENTRIES);
	__type(key, struct grain_iface_key);
	__type(value, struct grain_bitmap);
} iface_bitmaps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GRAIN_GENERATIONS * GRAIN_MAX_RULES);
	__type(key, __u32);
	__type(value, struct grain_rule);
} rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GRAIN_GENERATIONS * GRAIN_MAX_CONTENTS);
	__type(key, __u32);
	__type(value, struct grain_content);
} contents SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, GRAIN_GENERATIONS * GRAIN_MAX_RULES);
	__type(key, __u32);
	__type(value, struct grain_counter);
} rule_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GRAIN_GENERATIONS * GRAIN_MAX_RULES);
	__type(key, __u32);
	__type(value, struct grain_rate);
} rate_windows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, GRAIN_IFACE_SLOTS + 1);
	__type(key, __u32);
	__type(value, struct grain_iface_counter);
} iface_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, GRAIN_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	if (v)
		*v += 1;
}

#define REPEAT8(b) ((__u64)(b) * 0x0101010101010101ULL)
#define HIGH_BITS 0x8080808080808080ULL

/* High bit of byte k set if byte k of v may be zero (exact for the lowest
 * zero byte; candidates are verified anyway). The scan ORs the two
 * prefilter comparisons first: a byte of the OR is zero only where both
 * match. */
static __always_inline __u64 zero_bytes(__u64 v)
{
	return (v - REPEAT8(1)) & ~v & HIGH_BITS;
}

/* zero_bytes of the word at q compared with byte b (under mask m when
 * masked), without the final mask: the scan ORs eight of these and masks
 * once. */
static __always_inline __u64 first_stage(const __u8 *q, __u64 m, __u64 b, const int masked)
{
	__u64 x = *(const __u64 *)q;
	if (masked)
		x &= m;
	x ^= b;
	return (x - REPEAT8(1)) & ~x;
}

#define VERDICT_CONTINUE 0

#include "xdp_events.h"

static __always_inline const struct grain_bitmap *bitmap_at(__u32 gen, __u32 index)
{
	__u32 key = gen * GRAIN_BITMAPS_PER_GEN + index;
	return bpf_map_lookup_elem(&bitmaps, &key);
}

/* The network-order mask of word word (0-3) of a prefix of plen (0-128)
 * bits. Branch-free: cidr_bitmap_index calls it four times in each of up
 * to 129 iterations, and the paths its branches made, which differed in
 * the key bytes they left on the stack, did not prune: they were half the
 * packet program's verification (BENCHMARKS.md §7). */
static __always_inline __u32 prefix_mask(__u32 plen, __u32 word)
{
	__s64 bits = (__s64)plen - word * 32;
	__s64 below = bits >> 63; /* -1 when bits < 0 */
	barrier_var(below); /* else clang makes a branch of the clamp */
	bits &= ~below;
	__s64 over = bits - 32;
	__s64 within = over >> 63; /* -1 when bits < 32 */
	barrier_var(within);
	bits -= over & ~within;
	/* the high bits bits of the low word */
	return bpf_htonl((__u32)(0xffffffff00000000ULL >> bits));
}

/* Whether IPv6 next header nh is an extension header parse skips: hop-by-
 * hop, routing, destination options, fragment, AH. */
static __always_inline int ipv6_ext_header(__u8 nh)
{
	return nh == 0 || nh == 43 || nh == 60 || nh == 44 || nh == 51;
}

#define IPV6_EXT_MALFORMED (~0ULL)
#define IPV6_EXT_FRAGMENT (1ULL << 8)

/* Lowest set bit of a non-zero word. BPF has no ctz instruction: clang
 * expands this into a multiply by a De Bruijn constant and a lookup in a
 * 64-byte table, branch-free, so the verifier sees one unknown index rather
 * than 64 constants to follow one by one. */
static __always_inline __u32 lowest_bit(__u64 w)
{
	return __builtin_ctzll(w) & 63;
}

/* cidr_bitmap_index indexes what it would otherwise branch on. */
_Static_assert(__builtin_offsetof(struct pkt_meta, daddr) ==
	       __builtin_offsetof(struct pkt_meta, saddr) + sizeof(((struct pkt_meta *)0)->saddr), "daddr follows saddr");
_Static_assert(__builtin_offsetof(struct grain_gen_config, dst6_lens) ==
	       __builtin_offsetof(struct grain_gen_config, src6_lens) + sizeof(((struct grain_gen_config *)0)->src6_lens),
	       "dst6_lens follows src6_lens");
_Static_assert(__builtin_offsetof(struct grain_gen_config, n_dst6) == __builtin_offsetof(struct grain_gen_config, n_src6) + 1,
	       "n_dst6 follows n_src6");
_Static_assert(GRAIN_CIDR_SRC4 + 1 == GRAIN_CIDR_DST4 && GRAIN_CIDR_SRC6 + 1 == GRAIN_CIDR_DST6 && (GRAIN_CIDR_SRC4 & 1) == 0 &&
	       (GRAIN_CIDR_SRC6 & 1) == 0, "a field's bit 0 is its direction");

/* Finds the candidate rules for one address, the class of the longest
 * prefix that contains it: an entry's bitmap holds every rule whose prefix
 * contains it. IPv4: the /16's cidr_index entry, then a cidr_class lookup
 * per longer length present in that /16, longest first, else the entry's
 * short class. IPv6: a cidr_class lookup per length the generation uses,
 * longest first. Returns the bitmaps index (within the generation) to
 * use. A global function: verified once, not once per caller and path. */
__noinline __u32 cidr_bitmap_index(struct pkt_meta *m, __u32 gen, __u32 field)
{
	__u32 fallback = GRAIN_BITMAP_REGION_AUX + GRAIN_AUX_SRC4_DEFAULT + (field & 3);
	if (!m)
		return fallback;
	/* daddr follows saddr, as each field's dst follows its src: indexed,
	 * not branched on, so that the verifier walks each path once, not
	 * once per field */
	__u32 dst = field & 1;
	__u32 a[4];
	__builtin_memcpy(a, m->saddr + dst * sizeof(m->saddr), 16);
	struct grain_cidr_key key = {};
	key.generation = gen;
	key.field = field;
	if (field == GRAIN_CIDR_SRC4 || field == GRAIN_CIDR_DST4) {
		__u32 slot = ((gen & 1) * 2 + dst) * GRAIN_CIDR_INDEX_ENTRIES +
			     (bpf_ntohl(a[0]) >> (32 - GRAIN_CIDR_INDEX_BITS));
		const struct grain_cidr_index *ix = bpf_map_lookup_elem(&cidr_index, &slot);
		if (!ix)
			return fallback;
		__u32 lens = ix->long_lens;
		for (__u32 i = 0; i < 32 - GRAIN_CIDR_INDEX_BITS && lens; i++) {
			__u32 k = lowest_bit(lens) & 15; /* the prefix has 32 - k bits */
			lens &= lens - 1;
			key.prefixlen = 32 - k;
			__u32 masked = a[0] & bpf_htonl(0xffffffff << k);
			__builtin_memcpy(key.addr, &masked, 4);
			__u32 *cls = bpf_map_lookup_elem(&cidr_class, &key);
			if (cls && *cls < GRAIN_MAX_CIDR_CLASSES)
				return GRAIN_BITMAP_REGION_CIDR + *cls;
		}
		__u32 short_class = ix->short_class;
		if (short_class && short_class <= GRAIN_MAX_CIDR_CLASSES)
			return GRAIN_BITMAP_REGION_CIDR + short_class - 1;
		return fallback;
	}
	__u32 zero = 0;
	const struct grain_active *act = bpf_map_lookup_elem(&active, &zero);
	if (!act)
		return fallback;
	const struct grain_gen_config *gc = &act->config[gen & 1];
	const __u8 *lens = gc->src6_lens + dst * sizeof(gc->src6_lens);
	__u32 n = (&gc->n_src6)[dst];
	for (__u32 i = 0; i < 129; i++) {
		if (i >= n)
			break;
		__u32 plen = lens[i];
		if (plen > 128)
			break;
		key.prefixlen = plen;
		__u32 k[4];
		k[0] = a[0] & prefix_mask(plen, 0);
		k[1] = a[1] & prefix_mask(plen, 1);
		k[2] = a[2] & prefix_mask(plen, 2);
		k[3] = a[3] & prefix_mask(plen, 3);
		__builtin_memcpy(key.addr, k, 16);
		__u32 *cls = bpf_map_lookup_elem(&cidr_class, &key);
		if (cls && *cls < GRAIN_MAX_CIDR_CLASSES)
			return GRAIN_BITMAP_REGION_CIDR + *cls;
	}
	return fallback;
}

static __always_inline const struct grain_bitmap *port_lookup(__u32 gen, __u32 dir, __u16 port, int has_ports)
{
	if (!has_ports)
		return bitmap_at(gen, GRAIN_BITMAP_REGION_AUX + GRAIN_AUX_NO_PORTS);
	__u32 key = (gen * 2 + dir) * 65536 + port;
	__u16 *cls = bpf_map_lookup_elem(&port_class, &key);
	if (!cls || *cls >= GRAIN_MAX_PORT_CLASSES)
		return 0;
	return bitmap_at(gen, (dir == GRAIN_PORT_DIR_SRC ? GRAIN_BITMAP_REGION_SPORT : GRAIN_BITMAP_REGION_DPORT) + *cls);
}

/* The packet-reading part, for XDP ... */
#define CTX struct xdp_md
#define FN(name) name##_xdp
#define CTX_DATA(c) ((void *)(long)(c)->data)
#define CTX_DATA_END(c) ((void *)(long)(c)->data_end)
#define CTX_IFINDEX(c) ((c)->ingress_ifindex)
#define CTX_LEN(c) ((c)->data_end - (c)->data)
#include "classify.h"
#undef CTX
#undef FN
#undef CTX_DATA
#undef CTX_DATA_END
#undef CTX_IFINDEX
#undef CTX_LEN

/* ... and for TC. A socket buffer's length counts its non-linear part too. */
#define CTX struct __sk_buff
#define FN(name) name##_tc
#define CTX_DATA(c) ((void *)(long)(c)->data)
#define CTX_DATA_END(c) ((void *)(long)(c)->data_end)
#define CTX_IFINDEX(c) ((c)->ingress_ifindex)
#define CTX_LEN(c) ((c)->len)
#include "classify.h"

SEC("xdp")
int grain_xdp(struct xdp_md *ctx)
{
	return classify_xdp(ctx);
}

/* tcx verdicts (linux/bpf.h of Linux 6.6; the build host's headers may be
 * older). */
#define TCX_NEXT -1
#define TCX_DROP 2

/* Linear bytes the TC program wants: the longest headers it parses (two
 * VLAN tags, IPv6 with extension headers, TCP with options) and the
 * payload window. Direct packet access sees only an skb's linear part;
 * locally generated TCP keeps its payload in page fragments, so those bytes
 * are pulled into the linear part first (a copy, paid only by such skbs). */
#define TC_PULL_BYTES (GRAIN_SCAN_WINDOW + 512)

/* The same rules at tc ingress (tcx), where grain attaches on veth: there
 * the packet is already a socket buffer, which generic XDP would have to
 * linearize and native XDP convert to a frame and back (BENCHMARKS.md §2).
 * A dropped packet ends here; a passed one goes on to the next tcx program
 * and the stack. */
SEC("tc")
int grain_tc(struct __sk_buff *skb)
{
	__u32 linear = skb->data_end - skb->data;
	__u32 len = skb->len;
	if (linear < len && linear < TC_PULL_BYTES)
		bpf_skb_pull_data(skb, len < TC_PULL_BYTES ? len : TC_PULL_BYTES);
	return classify_tc(skb) == XDP_DROP ? TCX_DROP : TCX_NEXT;
}

/* Keep the shared types in BTF so bpf2go can generate their Go mirrors. */
const struct grain_event *unused_event __attribute__((unused));
const struct grain_event_payload *unused_event_payload __attribute__((unused));
const struct grain_event_hello *unused_event_hello __attribute__((unused));
const struct grain_sni_key *unused_sni_key __attribute__((unused));
const struct grain_counter *unused_counter __attribute__((unused));
const struct grain_active *unused_active __attribute__((unused));
const struct grain_constants *unused_constants __attribute__((unused));
