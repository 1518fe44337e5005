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
 * used and on the bitmap width, not on a scan over the rules. */
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

/* (generation, field, prefix) -> class: bitmaps[GRAIN_BITMAP_REGION_CIDR + class] */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GRAIN_GENERATIONS * GRAIN_MAX_CIDR_ENTRIES);
	__type(key, struct grain_cidr_key);
	__type(value, __u32);
} cidr_class SEC(".maps");

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

/* Bytes one record takes in the ring buffer: the record plus its 8-byte
 * header, rounded up to 8 bytes. */
#define RECORD_BYTES(size) ((((size) + 8) + 7) / 8 * 8)

/* An eighth of the event ring buffer's size; the loader sets it when it
 * resizes the ring (a constant spares a helper call per event). */
const volatile __u32 ring_wake_bytes = (1 << 20) / 8;

/* A wakeup costs the packet's CPU an interrupt (a VM exit on virtual
 * machines: microseconds), so the reader polls every few milliseconds
 * instead and is woken only when the ring crosses an eighth of its size, to
 * drain it before it fills. The record was reserved, so the pending bytes
 * include it: exactly one record crosses the mark. */
static __always_inline void event_submit(void *e, __u64 record_bytes)
{
	__u64 pending = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u64 wake_at = ring_wake_bytes;
	int crossing = pending >= wake_at && pending < wake_at + record_bytes;
	bpf_ringbuf_submit(e, crossing ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP);
}

/* Events are staged per CPU and reach the ring buffer in batches: a ring
 * buffer record costs a spin lock with interrupts off (shared by every CPU),
 * which was most of an event's cost (BENCHMARKS.md). A CPU's programs write
 * their events into its stage; the stage is sent as one record of up to
 * EVENT_STAGE_SLOTS events when it is full, and otherwise by a timer
 * stage_flush_ns after its first event, so an event waits at most that long
 * (the reader polls every 20 ms anyway). A payload event, and an event that
 * finds its stage full and being sent, go to the ring buffer directly.
 *
 * Concurrency. Only programs on the stage's CPU add events (network
 * programs on one CPU do not nest), but the timer may fire on another CPU
 * while they run. Adding writes ev[count] and publishes it by raising count
 * from what it read (compare-and-swap). A flush holds busy, sends ev[start,
 * count) and empties the stage by swapping count back to 0 from what it
 * read; when events were added meanwhile the swap fails, and the flush
 * leaves them to the next one (start = what it sent up to). An add that
 * finds the stage emptied while it wrote moves its event to ev[0]. BPF
 * atomics that return a value are fully ordered, which makes armed safe too
 * (see stage_publish).
 *
 * Where the kernel can pin a timer to the CPU that starts it (Linux 6.7),
 * the timer fires on the stage's CPU, where it cannot interrupt an add: its
 * callback runs as a softirq, and packet programs run with softirqs off
 * (BPF_PROG_TEST_RUN's too). There adding publishes with a plain store,
 * which spares the atomic (about 3 ns an event here), and an event that
 * neither begins a batch nor finds the stage full is added inline by the
 * rule walk, without the call into rule_emit (stage_pinned_slot: about 3 ns
 * more). The stage learns which at its first timer start (shared). When a
 * CPU goes offline its pinned timers move to another CPU, which is safe:
 * nothing adds on an offline CPU, and the timer fires within
 * stage_flush_ns, long before the CPU can come back. */
#define EVENT_STAGE_SLOTS 64

struct event_stage {
	__u32 count; /* events staged: ev[start, count) are still to send */
	__u32 start; /* written by the flush holding busy */
	__u32 busy;  /* a flush is sending */
	__u32 armed; /* the flush timer is pending */
	__u32 shared; /* the timer may fire on another CPU: adds use atomics */
	__u32 _pad;
	__u64 owner; /* program_instance of the program the timer calls */
	/* the coarse clock at the batch's first event (or at the event that
	 * armed the timer): the time of its events without deduplication or
	 * rate limit (one clock read a batch), at most stage_flush_ns early,
	 * within the clock's own resolution of a tick at HZ up to 1000 */
	__u64 time_ns;
	struct bpf_timer timer;
	/* Events use the first EVENT_STAGE_SLOTS; the rest only lets the
	 * verifier prove a send of up to that many from ev[start]. */
	struct grain_event ev[2 * EVENT_STAGE_SLOTS];
};

/* One stage per possible CPU: the loader sets max_entries. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event_stage);
} event_stages SEC(".maps");

/* How long a staged event waits for more before its stage is sent. */
const volatile __u64 stage_flush_ns = 1000000;

/* Tells this loaded program from others, for stages pinned by an earlier
 * grain: the loader sets a random value. */
const volatile __u64 program_instance = 1;

#define CLOCK_MONOTONIC 1
#define TIMER_CPU_PIN (1ULL << 1) /* BPF_F_TIMER_CPU_PIN, Linux 6.7 */
#define EINVAL 22

/* Sends bytes from src as one ring buffer record, waking the reader when
 * the ring crosses ring_wake_bytes (as event_submit). */
static __always_inline int ring_output(const void *src, __u64 bytes)
{
	__u64 pending = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	__u64 wake_at = ring_wake_bytes;
	int crossing = pending < wake_at && pending + RECORD_BYTES(bytes) >= wake_at;
	return bpf_ringbuf_output(&events, (void *)src, bytes, crossing ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP) == 0;
}

/* Sends the staged events of CPU cpu and empties its stage. Returns 0,
 * sending nothing, when another flush holds the stage. A global function:
 * verified once, not at each caller. */
__noinline int stage_flush(__u32 cpu)
{
	struct event_stage *st = bpf_map_lookup_elem(&event_stages, &cpu);
	if (!st || __sync_val_compare_and_swap(&st->busy, 0, 1) != 0)
		return 0;
	__u32 count = __sync_fetch_and_add(&st->count, 0);
	if (count > EVENT_STAGE_SLOTS)
		count = EVENT_STAGE_SLOTS;
	__u32 start = st->start;
	if (start > count)
		start = count;
	/* Bounded on the registers the helper gets: older verifiers (6.1)
	 * do not carry bounds across the subtraction and the copies clang
	 * makes. */
	__u64 from = (__u64)start * sizeof(struct grain_event);
	__u64 bytes = (__u64)(count - start) * sizeof(struct grain_event);
	barrier_var(from);
	barrier_var(bytes);
	if (from > EVENT_STAGE_SLOTS * sizeof(struct grain_event) || bytes > EVENT_STAGE_SLOTS * sizeof(struct grain_event))
		bytes = 0;
	/* kept apart from the test for 0, which clang would otherwise fuse
	 * with the one above into a single unsigned range check on another
	 * register */
	barrier_var(bytes);
	if (bytes && !ring_output((const __u8 *)st->ev + from, bytes)) {
		/* The ring is full: each event moves from sent to lost in
		 * its rule's counters (on this CPU's counters, perhaps not
		 * the event's; userspace reads the sums over CPUs). */
		for (__u32 j = 0; j < EVENT_STAGE_SLOTS; j++) {
			if (j >= count)
				break;
			if (j < start)
				continue;
			__u32 key = st->ev[j].counter_key;
			struct grain_counter *c = bpf_map_lookup_elem(&rule_counters, &key);
			if (c) {
				c->events--;
				c->events_lost++;
			}
		}
	}
	if (__sync_val_compare_and_swap(&st->count, count, 0) == count)
		st->start = 0;
	else
		st->start = count;
	__sync_lock_test_and_set(&st->busy, 0);
	return 1;
}

static int stage_timer_fired(void *map, __u32 *key, struct event_stage *st)
{
	/* Cleared before the flush reads count: an event published after
	 * that read finds armed clear and arms the timer again. */
	__sync_lock_test_and_set(&st->armed, 0);
	/* When the stage is busy, its own CPU is sending it (full): that
	 * flush empties it, and the CPU's next event arms the timer. */
	stage_flush(*key);
	return 0;
}

/* Makes sure the timer will send the stage. Without a timer the stage is
 * sent at once: the kernel frees a map's timers when no userspace
 * reference to the map is left, as when a grain is killed after it switched
 * the pinned links to its program and before it pinned its maps. */
static __always_inline void stage_arm(struct event_stage *st, __u32 cpu)
{
	st->armed = 1;
	if (st->owner != program_instance) {
		/* The first event on this CPU, or the stage was pinned by an
		 * earlier grain, whose program its timer would keep calling
		 * (and keep loaded): set the timer up to call this one. */
		bpf_timer_init(&st->timer, &event_stages, CLOCK_MONOTONIC); /* -EBUSY when done before */
		bpf_timer_set_callback(&st->timer, stage_timer_fired);
		st->owner = program_instance;
	}
	long err = bpf_timer_start(&st->timer, stage_flush_ns, st->shared ? 0 : TIMER_CPU_PIN);
	if (err == -EINVAL && !st->shared) {
		/* a kernel older than 6.7: adds use atomics from now on */
		st->shared = 1;
		err = bpf_timer_start(&st->timer, stage_flush_ns, 0);
	}
	if (err == 0)
		return;
	st->armed = 0;
	stage_flush(cpu);
}

/* Publishes ev[n], written by the caller; returns whether it was staged. */
static __always_inline int stage_publish(struct event_stage *st, __u32 cpu, __u32 n)
{
	if (n >= EVENT_STAGE_SLOTS)
		return 0;
	if (!st->shared) {
		/* only this CPU sends the stage (see above) */
		st->count = n + 1;
		if (!st->armed)
			stage_arm(st, cpu);
		return 1;
	}
	__u32 seen = __sync_val_compare_and_swap(&st->count, n, n + 1);
	if (seen != n) {
		/* a flush on another CPU sent the stage and emptied it while
		 * the event was written */
		if (seen != 0)
			return 0;
		__builtin_memcpy(&st->ev[0], &st->ev[n], sizeof(struct grain_event));
		if (__sync_val_compare_and_swap(&st->count, 0, 1) != 0)
			return 0;
	}
	/* Read after the swap, which orders it: a timer that cleared armed
	 * before this read reads count after clearing it, and so sends this
	 * event; one that clears it later was still pending. */
	if (!st->armed)
		stage_arm(st, cpu);
	return 1;
}

/* Sends the staged events of CPU cpu, if any, so that an event sent
 * directly (with payload bytes) comes after them, in order. */
static __always_inline void stage_drain(__u32 cpu)
{
	struct event_stage *st = bpf_map_lookup_elem(&event_stages, &cpu);
	if (st && st->count)
		stage_flush(cpu);
}

/* The stage of CPU cpu with a free slot, returned in *n, or 0: the caller
 * sends its event directly. A full stage is sent first. */
static __always_inline struct event_stage *stage_reserve(__u32 cpu, __u32 *n)
{
	struct event_stage *st = bpf_map_lookup_elem(&event_stages, &cpu);
	if (!st)
		return 0;
	__u32 c = st->count;
	if (c >= EVENT_STAGE_SLOTS) {
		stage_flush(cpu);
		c = st->count;
	}
	if (c >= EVENT_STAGE_SLOTS)
		return 0;
	*n = c;
	return st;
}

/* The stage of CPU cpu, and its free slot in *n, when an event can be added
 * with plain stores and nothing else: the stage is pinned (only this CPU
 * touches it), its batch has begun (its time is set) and its timer is armed.
 * That is most events of a flood; the rule walk adds them inline
 * (classify.h), sparing the call into rule_emit and its lookups. Otherwise
 * 0: the event takes rule_emit's general way (stage_reserve). */
static __always_inline struct event_stage *stage_pinned_slot(__u32 cpu, __u32 *n)
{
	struct event_stage *st = bpf_map_lookup_elem(&event_stages, &cpu);
	if (!st || st->shared || !st->armed)
		return 0;
	__u32 c = st->count;
	if (c == 0 || c >= EVENT_STAGE_SLOTS)
		return 0;
	*n = c;
	return st;
}

/* Whether a rule's events need none of the clock, the deduplication, the
 * rate limit or the payload copy: such an event takes its batch's time. */
static __always_inline int rule_event_plain(const struct grain_rule *r)
{
	return !r->dedup_ns && !r->rate_limit && !(r->flags & GRAIN_RULE_EMIT_PAYLOAD);
}

/* Whether the packet's event equals the last one a rule sent (k) in the
 * fields deduplication compares: those of the rule's dedup_fields, the
 * interface and the address family. */
static __always_inline int dedup_same(const struct grain_dedup_key *k, const struct pkt_meta *m, __u8 fields,
				      __u32 ifindex)
{
	__u64 diff = (k->ifindex ^ ifindex) | (k->family ^ m->family);
	if (fields & GRAIN_DEDUP_SADDR)
		diff |= (*(const __u64 *)&k->saddr[0] ^ *(const __u64 *)&m->saddr[0]) |
			(*(const __u64 *)&k->saddr[8] ^ *(const __u64 *)&m->saddr[8]);
	if (fields & GRAIN_DEDUP_DADDR)
		diff |= (*(const __u64 *)&k->daddr[0] ^ *(const __u64 *)&m->daddr[0]) |
			(*(const __u64 *)&k->daddr[8] ^ *(const __u64 *)&m->daddr[8]);
	if (fields & GRAIN_DEDUP_SPORT)
		diff |= k->sport ^ m->sport;
	if (fields & GRAIN_DEDUP_DPORT)
		diff |= k->dport ^ m->dport;
	if (fields & GRAIN_DEDUP_PROTOCOL)
		diff |= k->protocol ^ m->protocol;
	if (fields & GRAIN_DEDUP_TCP_FLAGS)
		diff |= k->tcp_flags ^ m->tcp_flags;
	if (fields & GRAIN_DEDUP_LEN)
		diff |= k->len ^ m->len;
	return diff == 0;
}

/* Records the packet's event as the last one sent (every field: the
 * comparison picks). */
static __always_inline void dedup_remember(struct grain_dedup_key *k, const struct pkt_meta *m, __u32 ifindex)
{
	__builtin_memcpy(k->saddr, m->saddr, 16);
	__builtin_memcpy(k->daddr, m->daddr, 16);
	k->ifindex = ifindex;
	k->len = m->len;
	k->sport = m->sport;
	k->dport = m->dport;
	k->family = m->family;
	k->protocol = m->protocol;
	k->tcp_flags = m->tcp_flags;
}

/* Whether rule slot key already let its rate_limit events through in the
 * current second; counts this one otherwise. The window's reset races
 * between CPUs at a second's turn: the limit holds to within a few events,
 * like the kernel-hook programs' (probe.c). */
static __always_inline int rate_exceeded(__u32 key, __u32 limit, __u64 now)
{
	struct grain_rate *rs = bpf_map_lookup_elem(&rate_windows, &key);
	if (!rs)
		return 0;
	__u64 sec = now / 1000000000;
	if (rs->window != sec) {
		rs->window = sec;
		rs->n = 0;
	}
	return __sync_fetch_and_add(&rs->n, 1) >= limit;
}

static __always_inline const struct grain_bitmap *bitmap_at(__u32 gen, __u32 index)
{
	__u32 key = gen * GRAIN_BITMAPS_PER_GEN + index;
	return bpf_map_lookup_elem(&bitmaps, &key);
}

static __always_inline __u32 prefix_mask(__u32 plen, __u32 word)
{
	__u32 bits = plen > word * 32 ? plen - word * 32 : 0;
	if (bits >= 32)
		return 0xffffffff;
	if (bits == 0)
		return 0;
	return bpf_htonl(0xffffffff << (32 - bits));
}

/* Finds the candidate rules for one address: tries each prefix length the
 * generation uses, longest first; an entry's bitmap holds every rule whose
 * prefix contains it. Returns the bitmaps index (within the generation) to
 * use. A global function: verified once, not once per caller and path. */
__noinline __u32 cidr_bitmap_index(struct pkt_meta *m, __u32 gen, __u32 field)
{
	__u32 fallback = GRAIN_BITMAP_REGION_AUX + GRAIN_AUX_SRC4_DEFAULT + (field & 3);
	__u32 zero = 0;
	const struct grain_active *act = bpf_map_lookup_elem(&active, &zero);
	if (!m || !act)
		return fallback;
	const struct grain_gen_config *gc = &act->config[gen & 1];
	const __u8 *lens;
	__u32 n;
	const __u8 *addr = field == GRAIN_CIDR_SRC4 || field == GRAIN_CIDR_SRC6 ? m->saddr : m->daddr;
	switch (field) {
	case GRAIN_CIDR_SRC4: lens = gc->src4_lens; n = gc->n_src4; break;
	case GRAIN_CIDR_DST4: lens = gc->dst4_lens; n = gc->n_dst4; break;
	case GRAIN_CIDR_SRC6: lens = gc->src6_lens; n = gc->n_src6; break;
	default: lens = gc->dst6_lens; n = gc->n_dst6; break;
	}
	__u32 a[4];
	__builtin_memcpy(a, addr, 16);
	struct grain_cidr_key key = {};
	key.generation = gen;
	key.field = field;
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
		if (cls && *cls < GRAIN_MAX_CIDR_ENTRIES)
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

/* Lowest set bit of a non-zero word. BPF has no ctz instruction: clang
 * expands this into a multiply by a De Bruijn constant and a lookup in a
 * 64-byte table, branch-free, so the verifier sees one unknown index rather
 * than 64 constants to follow one by one. */
static __always_inline __u32 lowest_bit(__u64 w)
{
	return __builtin_ctzll(w) & 63;
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
const struct grain_counter *unused_counter __attribute__((unused));
const struct grain_active *unused_active __attribute__((unused));
const struct grain_constants *unused_constants __attribute__((unused));
