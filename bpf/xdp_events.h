/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Events of the packet programs: the per-CPU stages that batch them into
 * the ring buffer, the timer that sends a stage, deduplication and the
 * rate limit. Part of xdp.c, which includes it after its maps (events,
 * rule_counters, rate_windows) and struct pkt_meta; classify.h uses it. */
#ifndef GRAIN_XDP_EVENTS_H
#define GRAIN_XDP_EVENTS_H

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
		 * the event's; userspace reads the sums over CPUs). The loop
		 * counts from 0 to the number sent, not from start to count:
		 * comparing a constant index with both ends split the
		 * verifier's states by start's range in every iteration (a
		 * fifth of the program's verification). */
		__u32 unsent = count - start;
		for (__u32 i = 0; i < EVENT_STAGE_SLOTS; i++) {
			if (i >= unsent)
				break;
			/* below 2 * EVENT_STAGE_SLOTS: start + i < count */
			__u32 j = (start + i) & (2 * EVENT_STAGE_SLOTS - 1);
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
 * like the kernel-hook programs' (hook.c). */
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

#endif
