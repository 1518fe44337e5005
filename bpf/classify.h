// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The part of grain's packet program that reads the packet, written once
 * for two hooks: xdp.c includes it once for XDP (struct xdp_md) and once for
 * TC (struct __sk_buff). It expects:
 *   CTX               the context type
 *   FN(name)          the name of a function for this hook
 *   CTX_DATA(c), CTX_DATA_END(c)  the packet's first and past-the-end bytes
 *   CTX_IFINDEX(c)    the interface the packet arrived on
 *   CTX_LEN(c)        the packet's length for counters and events
 * Global (noinline) functions take the hook's own context type, so each
 * hook gets its own copies: the verifier checks a global function's context
 * argument against the program type. */

#include "tls.h"

/* Compares the content's pattern at frame offset off. The caller ensures
 * off + len <= the payload end. */
static __always_inline int FN(pattern_at)(CTX *ctx, __u32 off, const struct grain_content *c)
{
	void *data = CTX_DATA(ctx);
	void *data_end = CTX_DATA_END(ctx);
	__u32 len = c->len;

	/* The last eight bytes (ending where the pattern ends) are compared
	 * with the tail word; the whole words before them one by one. No byte
	 * loop: few paths for the verifier, few loads at run time. Payloads
	 * start after at least 34 bytes of headers, so off + len >= 8. */
	__u32 tail_off = off + len - 8;
	if (off > MAX_FRAME_OFF || len > GRAIN_MAX_CONTENT_LEN || off + len < 8 || tail_off > MAX_FRAME_OFF)
		return 0;
	bound_offset(off);
	bound_offset(tail_off);
	__u8 *t = data + tail_off;
	if ((void *)(t + 8) > data_end)
		return 0;
	if ((*(__u64 *)t & c->tail_mask) != c->tail_pattern)
		return 0;
	__u8 *p = data + off;
	barrier_var(p);
	__u32 words = len / 8; /* whole words; the tail covers the rest */
	for (__u32 i = 0; i < GRAIN_MAX_CONTENT_LEN / 8; i++) {
		if (i >= words)
			break;
		__u8 *q = p + i * 8;
		barrier_var(q);
		if ((void *)(q + 8) > data_end)
			return 0;
		if ((*(__u64 *)q & *(__u64 *)(c->mask + i * 8)) != *(__u64 *)(c->pattern + i * 8))
			return 0;
	}
	return 1;
}

/* Verifies one candidate position; a global function so the verifier checks
 * it once instead of at every candidate of the scan loop. */
__noinline int FN(content_verify)(CTX *ctx, __u32 off, __u32 slot)
{
	const struct grain_content *c = bpf_map_lookup_elem(&contents, &slot);
	if (!c)
		return 0;
	return FN(pattern_at)(ctx, off, c);
}

/* Verifies the candidates a prefilter step flagged: byte k of hits has its
 * high bit set for position pos + k. */
__noinline int FN(content_verify_hits)(CTX *ctx, __u32 pos, __u32 last, __u64 hits, __u32 slot)
{
	const struct grain_content *c = bpf_map_lookup_elem(&contents, &slot);
	if (!c)
		return 0;
	for (__u32 k = 0; k < 8; k++) {
		if (!(hits & (0x80ULL << (k * 8))))
			continue;
		if (pos + k > last)
			break;
		if (FN(pattern_at)(ctx, pos + k, c))
			return 1;
	}
	return 0;
}

/* The second stage of the scan for one word of positions: first, the
 * first-stage flags; q, the word at the second prefilter byte. */
static __always_inline int FN(content_hits)(CTX *ctx, __u32 pos, __u32 last, __u64 first, const __u8 *q,
					    __u64 m2, __u64 b2, __u32 slot)
{
	if (!first)
		return 0;
	__u64 hits = first & zero_bytes((*(const __u64 *)q & m2) ^ b2);
	return hits && FN(content_verify_hits)(ctx, pos, last, hits, slot);
}

#define SCAN_FOUND 0xffffffff

/* The body of content_match's scan: sixty-four candidate positions per
 * step, in two stages. The first compares the first prefilter byte (the
 * rarer one, codegen puts it first) at eight words, with only an
 * accumulator live (BPF has ten registers; eight flag words would spill to
 * the stack); only when it flags a position are the words looked at again,
 * each with its second prefilter byte, and positions that pass both are
 * verified in full. One bounds check per pointer covers the eight words (a
 * constant offset from a checked packet pointer keeps its range).
 * zero_bytes never misses a zero byte, so ANDing the two stages' flags keeps
 * every true candidate. Returns where the steps stopped, or SCAN_FOUND.
 * masked is a constant: clang builds a copy without the first byte's mask. */
static __always_inline __u32 FN(scan_blocks)(CTX *ctx, __u32 pos, __u32 last, __u32 i1, __u32 i2, __u64 m1,
					     __u64 b1, __u64 m2, __u64 b2, __u32 slot, const int masked)
{
	void *data = CTX_DATA(ctx);
	void *data_end = CTX_DATA_END(ctx);
	for (__u32 step = 0; step < GRAIN_SCAN_WINDOW / 64 + 1; step++) {
		__u32 off = pos;
		if (off > last || off > MAX_FRAME_OFF)
			break;
		bound_offset(off);
		/* barrier_var keeps clang from computing the pointer before the
		 * offset is bounded, which the verifier could not follow. */
		__u8 *q1 = data + off + i1;
		barrier_var(q1);
		if ((void *)(q1 + 64) > data_end)
			break;
		__u64 acc = first_stage(q1, m1, b1, masked) | first_stage(q1 + 8, m1, b1, masked) |
			    first_stage(q1 + 16, m1, b1, masked) | first_stage(q1 + 24, m1, b1, masked) |
			    first_stage(q1 + 32, m1, b1, masked) | first_stage(q1 + 40, m1, b1, masked) |
			    first_stage(q1 + 48, m1, b1, masked) | first_stage(q1 + 56, m1, b1, masked);
		if (acc & HIGH_BITS) {
			/* Rare: recompute each word's flags (the barrier keeps
			 * clang from keeping them live from above). */
			__u8 *q2 = data + off + i2;
			barrier_var(q1);
			barrier_var(q2);
			if ((void *)(q2 + 64) > data_end)
				break; /* the eight-position steps take over */
			if (FN(content_hits)(ctx, pos, last, zero_bytes((*(__u64 *)q1 & m1) ^ b1), q2, m2, b2, slot) ||
			    FN(content_hits)(ctx, pos + 8, last, zero_bytes((*(__u64 *)(q1 + 8) & m1) ^ b1), q2 + 8, m2, b2, slot) ||
			    FN(content_hits)(ctx, pos + 16, last, zero_bytes((*(__u64 *)(q1 + 16) & m1) ^ b1), q2 + 16, m2, b2, slot) ||
			    FN(content_hits)(ctx, pos + 24, last, zero_bytes((*(__u64 *)(q1 + 24) & m1) ^ b1), q2 + 24, m2, b2, slot) ||
			    FN(content_hits)(ctx, pos + 32, last, zero_bytes((*(__u64 *)(q1 + 32) & m1) ^ b1), q2 + 32, m2, b2, slot) ||
			    FN(content_hits)(ctx, pos + 40, last, zero_bytes((*(__u64 *)(q1 + 40) & m1) ^ b1), q2 + 40, m2, b2, slot) ||
			    FN(content_hits)(ctx, pos + 48, last, zero_bytes((*(__u64 *)(q1 + 48) & m1) ^ b1), q2 + 48, m2, b2, slot) ||
			    FN(content_hits)(ctx, pos + 56, last, zero_bytes((*(__u64 *)(q1 + 56) & m1) ^ b1), q2 + 56, m2, b2, slot))
				return SCAN_FOUND;
		}
		pos += 64;
	}
	return pos;
}

/* Returns whether the content (slot in the contents array) holds for the
 * payload [payload_off, payload_end), negation applied. */
__noinline int FN(content_match)(CTX *ctx, __u32 payload_off, __u32 payload_end, __u32 slot)
{
	const struct grain_content *c = bpf_map_lookup_elem(&contents, &slot);
	if (!c)
		return 0;
	int negate = (c->flags & GRAIN_CONTENT_NEGATE) != 0;
	__u32 len = c->len;
	if (len == 0 || len > GRAIN_MAX_CONTENT_LEN || payload_off > MAX_FRAME_OFF || payload_end > MAX_FRAME_OFF)
		return negate;

	__u32 start = payload_off + c->offset;
	__u32 end = payload_off + c->end;
	if (end > payload_end)
		end = payload_end;
	if (start + len > end)
		return negate;
	__u32 last = end - len; /* last candidate position */

	if (c->flags & GRAIN_CONTENT_ANCHORED)
		return FN(pattern_at)(ctx, start, c) ^ negate;

	void *data = CTX_DATA(ctx);
	void *data_end = CTX_DATA_END(ctx);
	__u32 i1 = c->pre1_index & 7, i2 = c->pre2_index & 7;
	__u64 b1 = REPEAT8(c->pre1_byte), m1 = REPEAT8(c->pre1_mask);
	__u64 b2 = REPEAT8(c->pre2_byte), m2 = REPEAT8(c->pre2_mask);
	__u32 pos = start;

	/* Most prefilter bytes are case-sensitive (mask 0xff): their scan
	 * skips the mask, one operation in eight. */
	if (m1 == ~0ULL)
		pos = FN(scan_blocks)(ctx, pos, last, i1, i2, m1, b1, m2, b2, slot, 0);
	else
		pos = FN(scan_blocks)(ctx, pos, last, i1, i2, m1, b1, m2, b2, slot, 1);
	if (pos == SCAN_FOUND)
		return !negate;
	/* Near the end of the frame: eight positions per step. */
	for (__u32 step = 0; step < 9; step++) {
		__u32 off = pos;
		if (off > last || off > MAX_FRAME_OFF)
			break;
		bound_offset(off);
		__u8 *q1 = data + off + i1, *q2 = data + off + i2;
		barrier_var(q1);
		barrier_var(q2);
		if ((void *)(q1 + 8) > data_end || (void *)(q2 + 8) > data_end)
			break;
		__u64 hits = zero_bytes(((*(__u64 *)q1 & m1) ^ b1) | ((*(__u64 *)q2 & m2) ^ b2));
		if (hits && FN(content_verify_hits)(ctx, pos, last, hits, slot))
			return !negate;
		pos += 8;
	}
	/* Tail: fewer than 16 bytes of frame are left after pos. */
	for (__u32 k = 0; k < 16; k++) {
		if (pos > last || pos > MAX_FRAME_OFF)
			break;
		if (FN(content_verify)(ctx, pos, slot))
			return !negate;
		pos++;
	}
	return negate;
}

static __always_inline void FN(event_fill)(__u32 ifindex, struct grain_event *e, const struct pkt_meta *m,
				       __u32 gen, __u32 key, const struct grain_rule *r, __u64 now, __u32 repeated)
{
	e->counter_key = key;
	e->time_ns = now;
	e->repeated = repeated;
	e->rule_id = r->id;
	e->generation = gen;
	e->ifindex = ifindex;
	e->packet_len = m->len;
	e->family = m->family;
	e->protocol = m->protocol;
	e->verdict = r->action;
	e->tcp_flags = m->tcp_flags;
	e->sport = m->sport;
	e->dport = m->dport;
	__builtin_memcpy(e->saddr, m->saddr, 16);
	__builtin_memcpy(e->daddr, m->daddr, 16);
}

/* Copies the start of the L4 payload, at most max bytes (a constant, a
 * multiple of 8) and never past the IP length, to dst; returns how many
 * bytes. Whole words
 * only, no byte loop: the last eight bytes are read as one word ending where
 * the copy ends (overlapping the word before it; for a payload shorter than
 * eight bytes the word starts in the headers and is shifted). */
static __always_inline __u32 FN(payload_copy)(CTX *ctx, const struct pkt_meta *m, __u8 *dst, const __u32 max)
{
	void *data = CTX_DATA(ctx);
	void *data_end = CTX_DATA_END(ctx);
	__u32 off = m->payload_off, end = m->payload_end;
	if (off > MAX_FRAME_OFF || end > MAX_FRAME_OFF || end <= off)
		return 0;
	__u32 n = end - off;
	if (n > max)
		n = max;
	__u32 tail_off = off + n - 8;
	if (off + n < 8 || tail_off > MAX_FRAME_OFF)
		return 0;
	bound_offset(tail_off);
	__u8 *t = data + tail_off;
	if ((void *)(t + 8) > data_end)
		return 0;
	__u64 tail = *(__u64 *)t;
	if (n < 8) {
		/* little-endian: the payload is the word's high bytes */
		*(__u64 *)dst = tail >> ((8 - n) * 8);
		return n;
	}
	bound_offset(off);
	__u8 *p = data + off;
	barrier_var(p);
	for (__u32 i = 0; i < max / 8; i++) {
		if (i * 8 + 8 > n)
			break;
		__u8 *q = p + i * 8;
		barrier_var(q);
		if ((void *)(q + 8) > data_end)
			return 0;
		*(__u64 *)(dst + i * 8) = *(__u64 *)q;
	}
	__u32 last = n - 8;
	barrier_var(last);
	if (last > max - 8)
		return 0;
	*(__u64 *)(dst + last) = tail;
	return n;
}

/* Sends the event of a rule that asked for payload bytes: a larger record,
 * so only such rules pay for it. A global function: verified once. Returns
 * whether the ring buffer had room. */
__noinline int FN(emit_payload_event)(CTX *ctx, struct pkt_meta *m, __u32 gen, __u32 key, __u64 now)
{
	const struct grain_rule *r = bpf_map_lookup_elem(&rules, &key);
	if (!m || !r)
		return 0;
	struct grain_event_payload *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return 0;
	FN(event_fill)(CTX_IFINDEX(ctx), &e->ev, m, gen, key, r, now, 0);
	e->payload_len = FN(payload_copy)(ctx, m, e->payload, GRAIN_EMIT_PAYLOAD_BYTES);
	event_submit(e, RECORD_BYTES(sizeof(*e)));
	return 1;
}

/* The same with room for a whole first segment, for the TLS fields
 * (GRAIN_RULE_EMIT_HELLO). */
__noinline int FN(emit_hello_event)(CTX *ctx, struct pkt_meta *m, __u32 gen, __u32 key, __u64 now)
{
	const struct grain_rule *r = bpf_map_lookup_elem(&rules, &key);
	if (!m || !r)
		return 0;
	struct grain_event_hello *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return 0;
	FN(event_fill)(CTX_IFINDEX(ctx), &e->ev, m, gen, key, r, now, 0);
	e->payload_len = FN(payload_copy)(ctx, m, e->payload, GRAIN_EMIT_HELLO_BYTES);
	event_submit(e, RECORD_BYTES(sizeof(*e)));
	return 1;
}

/* Sends (or deduplicates, or rate-limits) the event of rule slot key that
 * matched, and counts which: every event the rule walk cannot add to a
 * pinned stage itself (stage_pinned_slot). A global function: the rule walk
 * of rules that do not emit does not carry its registers and stack. */
__noinline int FN(rule_emit)(CTX *ctx, struct pkt_meta *m, __u32 gen, __u32 key)
{
	const struct grain_rule *r = bpf_map_lookup_elem(&rules, &key);
	struct grain_counter *cnt = bpf_map_lookup_elem(&rule_counters, &key);
	if (!m || !r)
		return 0;
	__u32 ifindex = CTX_IFINDEX(ctx);
	__u64 window = r->dedup_ns; /* 0 for payload events */
	/* A staged event without deduplication or a rate limit takes its
	 * stage's time instead (bpf/xdp.c): one clock read a batch. */
	__u64 now = 0;
	if (!rule_event_plain(r))
		now = bpf_ktime_get_coarse_ns(); /* grain.h: struct grain_event */
	__u32 repeated = 0;
	int deduplicated = 0, limited = 0, sent = 0;
	if (window && cnt) {
		int same = dedup_same(&cnt->dedup_key, m, r->dedup_fields, ifindex);
		if (same && now < cnt->dedup_until_ns)
			deduplicated = 1;
		else if (same)
			repeated = cnt->dedup_repeats;
		/* The repeats of another event, ended by this one, are in
		 * events_deduplicated only. */
	}
	if (!deduplicated && r->rate_limit)
		limited = rate_exceeded(key, r->rate_limit, now);
	if (deduplicated || limited) {
		/* counted below */
	} else if (r->flags & GRAIN_RULE_EMIT_PAYLOAD) {
		stage_drain(bpf_get_smp_processor_id());
		if (r->flags & GRAIN_RULE_EMIT_HELLO)
			sent = FN(emit_hello_event)(ctx, m, gen, key, now);
		else
			sent = FN(emit_payload_event)(ctx, m, gen, key, now);
	} else {
		__u32 cpu = bpf_get_smp_processor_id(), slot = 0;
		struct event_stage *st = stage_reserve(cpu, &slot);
		if (st && slot < EVENT_STAGE_SLOTS) {
			struct grain_event *e = &st->ev[slot];
			if (!now) {
				/* a new batch, or one whose timer is still to
				 * be armed (by this event): sent within
				 * stage_flush_ns of now */
				if (slot == 0 || !st->armed)
					st->time_ns = bpf_ktime_get_coarse_ns();
				now = st->time_ns;
			}
			FN(event_fill)(ifindex, e, m, gen, key, r, now, repeated);
			sent = stage_publish(st, cpu, slot);
		} else {
			struct grain_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
			if (e) {
				if (!now)
					now = bpf_ktime_get_coarse_ns();
				FN(event_fill)(ifindex, e, m, gen, key, r, now, repeated);
				event_submit(e, RECORD_BYTES(sizeof(*e)));
				sent = 1;
			}
		}
		if (sent) {
			if (window && cnt) {
				dedup_remember(&cnt->dedup_key, m, ifindex);
				cnt->dedup_until_ns = now + window;
				cnt->dedup_repeats = 0;
			}
		}
	}
	if (cnt) {
		if (deduplicated) {
			cnt->dedup_repeats++;
			cnt->events_deduplicated++;
		} else if (limited) {
			cnt->events_rate_limited++;
		} else if (sent) {
			cnt->events++;
		} else {
			cnt->events_lost++;
		}
	}
	return 0;
}

/* Applies one candidate rule: contents, counters, event. Returns
 * VERDICT_CONTINUE or 1 + GRAIN_ACTION_{DROP,PASS,WOULD_DROP}. */
static __always_inline int FN(rule_apply_inline)(CTX *ctx, void *data, void *data_end, struct pkt_meta *m,
					     __u32 gen, __u32 index)
{
	if (!m || index >= GRAIN_MAX_RULES)
		return VERDICT_CONTINUE;
	__u32 key = gen * GRAIN_MAX_RULES + index;
	const struct grain_rule *r = bpf_map_lookup_elem(&rules, &key);
	if (!r)
		return VERDICT_CONTINUE;

	__u32 n = r->ncontents;
	__u8 rflags = r->flags;
	if (rflags & GRAIN_RULE_QUICK) {
		/* One masked compare before any content lookup. */
		__u32 end = m->payload_off + r->quick_end;
		__u32 off = end - 8;
		if (end > m->payload_end || off > MAX_FRAME_OFF) /* end < 8 wraps off */
			return VERDICT_CONTINUE;
		bound_offset(off);
		__u8 *q = data + off;
		if ((void *)(q + 8) > data_end)
			return VERDICT_CONTINUE;
		if ((*(__u64 *)q & r->quick_mask) != r->quick_pattern)
			return VERDICT_CONTINUE;
		if (rflags & GRAIN_RULE_QUICK_ONLY)
			n = 0;
	}
	for (__u32 i = 0; i < GRAIN_MAX_CONTENTS_PER_RULE; i++) {
		if (i >= n)
			break;
		__u32 slot = gen * GRAIN_MAX_CONTENTS + r->contents[i];
		const struct grain_content *c = bpf_map_lookup_elem(&contents, &slot);
		if (!c)
			return VERDICT_CONTINUE;
		if (c->flags & GRAIN_CONTENT_ANCHORED) {
			/* Fixed position: one masked compare, no call. */
			__u32 start = m->payload_off + c->offset;
			int hit = start + c->len <= m->payload_end && FN(pattern_at)(ctx, start, c);
			if (hit == !!(c->flags & GRAIN_CONTENT_NEGATE))
				return VERDICT_CONTINUE;
			continue;
		}
		if (!FN(content_match)(ctx, m->payload_off, m->payload_end, slot))
			return VERDICT_CONTINUE;
	}

	m->len = CTX_LEN(ctx); /* for the counters and the event */
	struct grain_counter *cnt = bpf_map_lookup_elem(&rule_counters, &key);
	if (cnt) {
		cnt->packets++;
		cnt->bytes += m->len;
	}
	/* The verdict, by interface. */
	__u32 ifindex = CTX_IFINDEX(ctx);
	__u32 islot = ifindex % GRAIN_IFACE_SLOTS;
	struct grain_iface_counter *ic = bpf_map_lookup_elem(&iface_counters, &islot);
	if (ic && ic->ifindex != ifindex) {
		islot = GRAIN_IFACE_SLOTS;
		ic = bpf_map_lookup_elem(&iface_counters, &islot);
	}
	__u32 action = r->action;
	if (ic && action < GRAIN_VERDICTS) {
		ic->packets[action]++;
		ic->bytes[action] += m->len;
	}
	if (r->flags & GRAIN_RULE_EMIT) {
		/* Most events of a flood go into a stage pinned to this CPU,
		 * which is plain stores (stage_pinned_slot); the rest take the
		 * call into rule_emit. */
		struct event_stage *st = 0;
		__u32 slot = 0;
		if (cnt && rule_event_plain(r))
			st = stage_pinned_slot(bpf_get_smp_processor_id(), &slot);
		if (st && slot < EVENT_STAGE_SLOTS) {
			FN(event_fill)(ifindex, &st->ev[slot], m, gen, key, r, st->time_ns, 0);
			st->count = slot + 1;
			cnt->events++;
		} else {
			FN(rule_emit)(ctx, m, gen, key);
		}
	}
	if (r->action == GRAIN_ACTION_COUNT)
		return VERDICT_CONTINUE;
	return 1 + r->action;
}

/* The same, as a global function: verified once for every call site. */
__noinline int FN(rule_apply)(CTX *ctx, struct pkt_meta *m, __u32 gen, __u32 index)
{
	return FN(rule_apply_inline)(ctx, CTX_DATA(ctx), CTX_DATA_END(ctx), m, gen, index);
}

/* Applies the candidate rules of one bitmap word in priority order (bit i
 * is rule base + i). A global function so that the verifier checks the walk
 * once rather than once per word. */
__noinline int FN(rules_apply)(CTX *ctx, struct pkt_meta *m, __u32 gen, __u32 base, __u64 w)
{
	for (__u32 j = 0; j < 64; j++) {
		if (!w)
			break;
		__u32 bit = lowest_bit(w);
		w &= w - 1;
		int v = FN(rule_apply)(ctx, m, gen, base + bit);
		if (v != VERDICT_CONTINUE)
			return v;
	}
	return VERDICT_CONTINUE;
}

/* Skips the IPv6 extension headers from frame offset off, where one of
 * type nh (ipv6_ext_header) begins: at most GRAIN_MAX_IPV6_EXT_HEADERS of
 * them. Returns where the L4 header begins << 32, IPV6_EXT_FRAGMENT when a
 * fragment header says the packet carries none (not the first fragment),
 * and the L4 protocol in the low byte; IPV6_EXT_MALFORMED when a header is
 * truncated, there are more, or they end past the frame. A global
 * function, which only such packets call: inlined, the verifier followed
 * every chain of header types, each with its own offsets, through the rest
 * of the parse. */
__noinline __u64 FN(ipv6_ext_skip)(CTX *ctx, __u32 off, __u32 nh)
{
	void *data = CTX_DATA(ctx);
	void *data_end = CTX_DATA_END(ctx);
	if (off > MAX_FRAME_OFF)
		return IPV6_EXT_MALFORMED;
	bound_offset(off);
	void *cur = data + off;
	__u8 l4proto = nh;
	__u64 fragment = 0;
	int i;
	for (i = 0; i < GRAIN_MAX_IPV6_EXT_HEADERS; i++) {
		if (l4proto == 0 || l4proto == 43 || l4proto == 60) {
			struct ipv6_opt_ *opt = cur;
			if ((void *)(opt + 1) > data_end)
				return IPV6_EXT_MALFORMED;
			l4proto = opt->nexthdr;
			cur += (opt->hdrlen + 1) * 8;
		} else if (l4proto == 51) { /* AH */
			struct ipv6_opt_ *opt = cur;
			if ((void *)(opt + 1) > data_end)
				return IPV6_EXT_MALFORMED;
			l4proto = opt->nexthdr;
			cur += (opt->hdrlen + 2) * 4;
		} else if (l4proto == 44) {
			struct ipv6_frag_ *fh = cur;
			if ((void *)(fh + 1) > data_end)
				return IPV6_EXT_MALFORMED;
			l4proto = fh->nexthdr;
			if (bpf_ntohs(fh->frag_off) & 0xfff8)
				fragment = IPV6_EXT_FRAGMENT;
			cur = fh + 1;
		} else {
			break;
		}
	}
	if (i == GRAIN_MAX_IPV6_EXT_HEADERS || cur > data_end)
		return IPV6_EXT_MALFORMED;
	return (__u64)(cur - data) << 32 | fragment | l4proto;
}

/* Parses L2-L4 into m. Returns 0 when the packet is judged, 1 when it is not
 * IP, -1 when it is malformed or truncated (passed, never misparsed). */
static __always_inline int FN(parse)(CTX *ctx, struct pkt_meta *m)
{
	void *data = CTX_DATA(ctx);
	void *data_end = CTX_DATA_END(ctx);
	struct ethhdr_ *eth = data;
	if ((void *)(eth + 1) > data_end)
		return -1;
	__u16 proto = eth->proto;
	void *cur = eth + 1;

	for (int i = 0; i < 2; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		struct vlanhdr_ *vh = cur;
		if ((void *)(vh + 1) > data_end)
			return -1;
		proto = vh->proto;
		cur = vh + 1;
	}

	__u8 l4proto;
	void *l3_end; /* end of the IP packet per its length field */
	int has_l4 = 1;

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr_ *ip = cur;
		if ((void *)(ip + 1) > data_end)
			return -1;
		__u32 ihl = (ip->ver_ihl & 0x0f) * 4;
		if ((ip->ver_ihl >> 4) != 4 || ihl < sizeof(*ip))
			return -1;
		__u32 tot = bpf_ntohs(ip->tot_len);
		/* 6.1's verifier does not bound a byte swap's result */
		barrier_var(tot);
		tot &= 0xffff;
		if (tot < ihl)
			return -1;
		if (cur + ihl > data_end)
			return -1;
		l3_end = cur + tot;
		m->family = 4;
		__builtin_memcpy(m->saddr, &ip->saddr, 4);
		__builtin_memcpy(m->daddr, &ip->daddr, 4);
		l4proto = ip->protocol;
		/* A non-first fragment carries no L4 header. */
		if (bpf_ntohs(ip->frag_off) & 0x1fff)
			has_l4 = 0;
		cur += ihl;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr_ *ip6 = cur;
		if ((void *)(ip6 + 1) > data_end)
			return -1;
		if ((bpf_ntohl(ip6->ver_tc_flow) >> 28) != 6)
			return -1;
		__u32 plen = bpf_ntohs(ip6->payload_len);
		barrier_var(plen);
		plen &= 0xffff;
		l3_end = (void *)(ip6 + 1) + plen;
		m->family = 6;
		__builtin_memcpy(m->saddr, ip6->saddr, 16);
		__builtin_memcpy(m->daddr, ip6->daddr, 16);
		l4proto = ip6->nexthdr;
		cur = ip6 + 1;
		if (ipv6_ext_header(l4proto)) {
			__u64 ext = FN(ipv6_ext_skip)(ctx, cur - data, l4proto);
			if (ext == IPV6_EXT_MALFORMED)
				return -1;
			/* At most 62 + 6 x 2048 bytes of headers: the bound
			 * holds for every packet and lets the verifier check
			 * the L4 header's reads. */
			__u32 off = ext >> 32;
			if (off > MAX_FRAME_OFF)
				return -1;
			bound_offset(off);
			cur = data + off;
			l4proto = ext & 0xff;
			has_l4 = !(ext & IPV6_EXT_FRAGMENT);
		}
	} else {
		return 1;
	}

	m->protocol = l4proto;
	if (l3_end > data_end)
		l3_end = data_end;
	m->payload_end = l3_end - data;

	if (!has_l4) {
		m->payload_off = m->payload_end;
		return 0;
	}
	if (l4proto == IPPROTO_TCP) {
		__u8 *tcp = cur;
		if ((void *)(tcp + 20) > data_end)
			return -1;
		__u32 doff = (tcp[12] >> 4) * 4;
		if (doff < 20 || cur + doff > data_end)
			return -1;
		struct ports_ *ports = cur;
		m->sport = bpf_ntohs(ports->source);
		m->dport = bpf_ntohs(ports->dest);
		m->has_ports = 1;
		m->tcp_flags = tcp[13];
		m->has_flags = 1;
		cur += doff;
	} else if (l4proto == IPPROTO_UDP) {
		struct ports_ *ports = cur;
		if (cur + 8 > data_end)
			return -1;
		m->sport = bpf_ntohs(ports->source);
		m->dport = bpf_ntohs(ports->dest);
		m->has_ports = 1;
		cur += 8;
	} else if (l4proto == IPPROTO_ICMP || l4proto == IPPROTO_ICMPV6) {
		if (cur + 8 > data_end)
			return -1;
		cur += 8;
	}
	m->payload_off = cur - data;
	if (m->payload_off > m->payload_end)
		m->payload_off = m->payload_end;
	return 0;
}

/* The generation's gate (grain.h, struct grain_gate), checked before the
 * full parse on the packets most traffic is made of: Ethernet, then IPv4,
 * or IPv6 without extension headers, then TCP or UDP. Returns 1 when the
 * packet fails the gate: no rule can match it, and it is passed at once.
 * Returns 0 when the full path must judge it: no gate, another shape (VLAN
 * tags, extension headers, other protocols, frames shorter than an IPv6
 * header), or a word that passes.
 *
 * It checks no more than a verdict needs, as few instructions as the
 * hand-written probe of BENCHMARKS.md: a packet the full parse would find
 * malformed (bad version or header lengths, truncated) or without an L4
 * header (a non-first fragment) matches no rule with a quick word, so
 * passing it is the full path's verdict too; it is then not counted as
 * malformed. Nor does it clamp the payload to the IP length: a word that
 * ends past it fails every rule's quick word, and passing it is right
 * whatever the word holds; only a word that passes goes on to the full
 * path, which applies the IP length.
 *
 * It reads the generation itself, so that few values stay live (BPF has
 * ten registers): a packet it passes was judged by that generation, one it
 * does not is judged wholly by the generation the full path reads. */
static __always_inline int FN(gate_fails)(CTX *ctx)
{
	__u32 zero = 0;
	const struct grain_active *act = bpf_map_lookup_elem(&active, &zero);
	if (!act)
		return 0;
	const struct grain_gate *gates = act->gate[act->generation & 1];
	if (!(gates[GRAIN_GATE_TCP].end | gates[GRAIN_GATE_UDP].end))
		return 0; /* no gate: the packet need not be looked at twice */
	void *data = CTX_DATA(ctx);
	void *data_end = CTX_DATA_END(ctx);
	__u8 *l3 = data + sizeof(struct ethhdr_);
	if ((void *)(l3 + sizeof(struct ipv6hdr_)) > data_end)
		return 0;
	__be16 ethertype = ((struct ethhdr_ *)data)->proto;
	__u8 *l4;
	__u8 proto;
	if (ethertype == bpf_htons(ETH_P_IP)) {
		struct iphdr_ *ip = (void *)l3;
		l4 = l3 + ((ip->ver_ihl & 0x0f) << 2);
		proto = ip->protocol;
	} else if (ethertype == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr_ *ip6 = (void *)l3;
		l4 = (void *)(ip6 + 1);
		proto = ip6->nexthdr;
	} else {
		return 0;
	}
	const struct grain_gate *g;
	__u32 l4_len;
	if (proto == IPPROTO_TCP) {
		if ((void *)(l4 + 20) > data_end)
			return 0;
		l4_len = (l4[12] >> 2) & 0x3c; /* data offset, in bytes */
		g = &gates[GRAIN_GATE_TCP];
	} else if (proto == IPPROTO_UDP) {
		l4_len = 8;
		g = &gates[GRAIN_GATE_UDP];
	} else {
		return 0;
	}
	__u32 end = g->end;
	if (!end)
		return 0;
	end &= MAX_FRAME_OFF; /* the engine writes at most the scan window */
	__u8 *word_end = l4 + l4_len + end;
	if ((void *)word_end > data_end)
		return 1;
	/* at least 14 + 20 bytes of headers lie before word_end */
	return (*(__u64 *)(word_end - 8) & g->mask) != g->pattern;
}

/* Judges one packet by the full parse and the rule walk: XDP_DROP or
 * XDP_PASS, whatever the hook (the TC entry translates). Inlined into the
 * program: as a global function of its own, its frame on top of the
 * program's took the deepest call chain past the 512 bytes of stack that
 * Linux 6.1's verifier allows. */
static __always_inline int FN(classify_full)(CTX *ctx)
{
	struct pkt_meta m = {};
	void *data = CTX_DATA(ctx);
	void *data_end = CTX_DATA_END(ctx);
	int rc = FN(parse)(ctx, &m);
	if (rc != 0) {
		stat_inc(rc > 0 ? GRAIN_STAT_NOT_IP : GRAIN_STAT_MALFORMED);
		return XDP_PASS;
	}
	__u32 zero = 0;
	struct grain_active *act = bpf_map_lookup_elem(&active, &zero);
	if (!act)
		return XDP_PASS;
	__u32 gen = act->generation & 1; /* read once: the whole packet sees one generation */
	/* Both generations' fields are loaded and the active one selected
	 * with a mask: the loads need not wait for the generation word, and
	 * there is no branch for the verifier to follow twice. */
	__u64 sel = -(__u64)gen;
	barrier_var(sel);
	const struct grain_gen_config *c0 = &act->config[0], *c1 = &act->config[1];
	__u32 nrules = c0->nrules ^ ((c0->nrules ^ c1->nrules) & sel);
	__u32 fields = c0->fields ^ ((c0->fields ^ c1->fields) & sel);
	if (nrules == 0) {
		stat_inc(GRAIN_STAT_NO_CONFIG);
		return XDP_PASS;
	}
	int v6 = m.family == 6;

	/* Up to 64 rules: one word of candidates. Each field some rule
	 * constrains ANDs its word 0 in as soon as it is looked up; no bitmap
	 * pointers are kept, and the rules that exist (0..nrules-1) need no
	 * lookup. */
	if (nrules <= 64) {
		__u64 w0;
		const struct grain_bitmap *b;
		if (fields & GRAIN_FIELD_PROTO) {
			/* holds only rules that exist */
			__u64 p0 = c0->proto_w0[m.protocol], p1 = c1->proto_w0[m.protocol];
			w0 = p0 ^ ((p0 ^ p1) & sel);
		} else {
			w0 = nrules == 64 ? ~0ULL : (1ULL << nrules) - 1;
		}
		if (fields & GRAIN_FIELD_SRC) {
			b = bitmap_at(gen, cidr_bitmap_index(&m, gen, v6 ? GRAIN_CIDR_SRC6 : GRAIN_CIDR_SRC4));
			if (!b)
				return XDP_PASS;
			w0 &= b->w[0];
		}
		if (fields & GRAIN_FIELD_DST) {
			b = bitmap_at(gen, cidr_bitmap_index(&m, gen, v6 ? GRAIN_CIDR_DST6 : GRAIN_CIDR_DST4));
			if (!b)
				return XDP_PASS;
			w0 &= b->w[0];
		}
		if (fields & GRAIN_FIELD_SPORT) {
			b = port_lookup(gen, GRAIN_PORT_DIR_SRC, m.sport, m.has_ports);
			if (!b)
				return XDP_PASS;
			w0 &= b->w[0];
		}
		if (fields & GRAIN_FIELD_DPORT) {
			b = port_lookup(gen, GRAIN_PORT_DIR_DST, m.dport, m.has_ports);
			if (!b)
				return XDP_PASS;
			w0 &= b->w[0];
		}
		if (fields & GRAIN_FIELD_FLAGS) {
			b = bitmap_at(gen, m.has_flags ? GRAIN_BITMAP_REGION_FLAGS + m.tcp_flags : GRAIN_BITMAP_REGION_AUX + GRAIN_AUX_NOT_TCP);
			if (!b)
				return XDP_PASS;
			w0 &= b->w[0];
		}
		if (fields & GRAIN_FIELD_IFACE) {
			struct grain_iface_key ik = {.generation = gen, .ifindex = CTX_IFINDEX(ctx)};
			b = bpf_map_lookup_elem(&iface_bitmaps, &ik);
			if (!b)
				b = bitmap_at(gen, GRAIN_BITMAP_REGION_AUX + GRAIN_AUX_IFACE_DEFAULT);
			if (!b)
				return XDP_PASS;
			w0 &= b->w[0];
		}
		if ((fields & GRAIN_FIELD_SNI) && w0) {
			if (FN(tls_hello_start)(ctx, &m)) {
				b = bitmap_at(gen, FN(tls_sni_index)(ctx, &m, gen));
				if (!b)
					return XDP_PASS;
				w0 &= b->w[0];
			} else {
				/* no hello: the rules without tls_sni, no lookup */
				__u64 n0 = c0->no_sni_w0, n1 = c1->no_sni_w0;
				w0 &= n0 ^ ((n0 ^ n1) & sel);
			}
		}
		if (!w0)
			return XDP_PASS;
		int v;
		/* The common case, a single candidate, is applied without a
		 * function call. */
		if (!(w0 & (w0 - 1))) {
			/* The first rule is the usual single candidate (one policy,
			 * or the highest-priority one): a predictable branch spares
			 * it the dependent multiply and table load of lowest_bit. */
			__u32 idx = w0 == 1 ? 0 : lowest_bit(w0);
			v = FN(rule_apply_inline)(ctx, data, data_end, &m, gen, idx);
		}
		else
			v = FN(rules_apply)(ctx, &m, gen, 0, w0);
		return v == 1 + GRAIN_ACTION_DROP ? XDP_DROP : XDP_PASS;
	}


	/* A field no rule constrains uses the all-rules bitmap: no branch per
	 * field in the word loop below keeps the verifier's state count small. */
	const struct grain_bitmap *all = bitmap_at(gen, GRAIN_BITMAP_REGION_AUX + GRAIN_AUX_ALL);
	/* tls_sni's bitmap, a subset of all rules, stands in for the
	 * all-rules bitmap, which every word is ANDed with anyway: one
	 * pointer fewer to keep (the stack of the deepest chain of calls
	 * must fit in 512 bytes on Linux 6.1). */
	if (fields & GRAIN_FIELD_SNI)
		all = bitmap_at(gen, FN(tls_sni_lookup)(ctx, &m, gen));
	if (!all)
		return XDP_PASS;
	const struct grain_bitmap *bm_proto = all, *bm_src = all, *bm_dst = all, *bm_sport = all,
				  *bm_dport = all, *bm_flags = all, *bm_iface = all;
	if (fields & GRAIN_FIELD_PROTO) {
		bm_proto = bitmap_at(gen, GRAIN_BITMAP_REGION_PROTO + m.protocol);
		if (!bm_proto)
			return XDP_PASS;
	}
	if (fields & GRAIN_FIELD_SRC) {
		bm_src = bitmap_at(gen, cidr_bitmap_index(&m, gen, v6 ? GRAIN_CIDR_SRC6 : GRAIN_CIDR_SRC4));
		if (!bm_src)
			return XDP_PASS;
	}
	if (fields & GRAIN_FIELD_DST) {
		bm_dst = bitmap_at(gen, cidr_bitmap_index(&m, gen, v6 ? GRAIN_CIDR_DST6 : GRAIN_CIDR_DST4));
		if (!bm_dst)
			return XDP_PASS;
	}
	if (fields & GRAIN_FIELD_SPORT) {
		bm_sport = port_lookup(gen, GRAIN_PORT_DIR_SRC, m.sport, m.has_ports);
		if (!bm_sport)
			return XDP_PASS;
	}
	if (fields & GRAIN_FIELD_DPORT) {
		bm_dport = port_lookup(gen, GRAIN_PORT_DIR_DST, m.dport, m.has_ports);
		if (!bm_dport)
			return XDP_PASS;
	}
	if (fields & GRAIN_FIELD_FLAGS) {
		bm_flags = bitmap_at(gen, m.has_flags ? GRAIN_BITMAP_REGION_FLAGS + m.tcp_flags : GRAIN_BITMAP_REGION_AUX + GRAIN_AUX_NOT_TCP);
		if (!bm_flags)
			return XDP_PASS;
	}
	if (fields & GRAIN_FIELD_IFACE) {
		struct grain_iface_key ik = {.generation = gen, .ifindex = CTX_IFINDEX(ctx)};
		bm_iface = bpf_map_lookup_elem(&iface_bitmaps, &ik);
		if (!bm_iface)
			bm_iface = bitmap_at(gen, GRAIN_BITMAP_REGION_AUX + GRAIN_AUX_IFACE_DEFAULT);
		if (!bm_iface)
			return XDP_PASS;
	}

	/* Each bitmap says which of its words are non-zero: only words that
	 * hold a candidate in every field are visited, so a packet that matches
	 * no rule, or one rule among thousands, costs about the same as with a
	 * single rule. */
	__u64 words = bm_proto->nonzero & bm_src->nonzero & bm_dst->nonzero & bm_sport->nonzero &
		      bm_dport->nonzero & bm_flags->nonzero & bm_iface->nonzero & all->nonzero;
	for (__u32 j = 0; j < GRAIN_BITMAP_WORDS; j++) {
		if (!words)
			break;
		__u32 i = lowest_bit(words);
		words &= words - 1;
		if (i >= GRAIN_BITMAP_WORDS)
			break;
		__u64 w = bm_proto->w[i] & bm_src->w[i] & bm_dst->w[i] & bm_sport->w[i] & bm_dport->w[i] &
			  bm_flags->w[i] & bm_iface->w[i] & all->w[i];
		if (!w)
			continue;
		int v;
		if (w & (w - 1))
			v = FN(rules_apply)(ctx, &m, gen, i * 64, w);
		else
			v = FN(rule_apply)(ctx, &m, gen, i * 64 + lowest_bit(w));
		/* pass and would_drop (monitor mode) decide as drop does */
		if (v != VERDICT_CONTINUE)
			return v == 1 + GRAIN_ACTION_DROP ? XDP_DROP : XDP_PASS;
	}
	return XDP_PASS;
}

/* Judges one packet: the gate, then the full path. */
static __always_inline int FN(classify)(CTX *ctx)
{
	if (FN(gate_fails)(ctx))
		return XDP_PASS;
	return FN(classify_full)(ctx);
}
