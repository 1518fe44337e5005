/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The nesting guard: each call of a kernel-hook program works in a per-CPU
 * scratch level (struct scratch) and count slot that it claims and releases, so that a
 * program running inside another on one CPU (an interrupt, a preempted
 * fentry/fexit program) never shares the other's memory. Part of hook.c,
 * which includes it after struct scratch and the hook_scratch,
 * hook_count_pending and hook_nesting maps. */
#ifndef GRAIN_HOOK_NESTING_H
#define GRAIN_HOOK_NESTING_H

static __always_inline void count_nesting(int skipped)
{
	__u32 zero = 0;
	struct grain_hook_nesting *n = bpf_map_lookup_elem(&hook_nesting, &zero);
	if (!n)
		return;
	/* atomic: a deeper interrupt may count between a load and a store */
	if (skipped)
		__sync_fetch_and_add(&n->skipped, 1);
	else
		__sync_fetch_and_add(&n->nested, 1);
}

/* claim_deeper: claim_slot's search of the levels above the first. */
static __noinline struct grain_hook_count_pending *claim_deeper(__u32 *level)
{
	for (__u32 l = 1; l < GRAIN_HOOK_NEST_LEVELS; l++) {
		struct grain_hook_count_pending *p = count_slot(l);
		if (p && __sync_val_compare_and_swap(&p->busy, 0, 1) == 0) {
			*level = l;
			count_nesting(0);
			return p;
		}
	}
	count_nesting(1);
	return 0;
}

/* claim_slot takes the first free nesting level of this CPU and returns its
 * count slot (grain_hook_count_pending, which holds the level's busy word),
 * or returns 0 (and counts the call skipped) when every level is busy. A
 * level is taken by compare-and-swap, not a depth counter: a preempted
 * fentry/fexit program may finish after the program that preempted it
 * started, so levels are not released in stack order, and a
 * load-then-store could hand one level to two programs. The common path:
 * one lookup (inlined by the verifier, the CPU number too from Linux 6.10)
 * and one compare-and-swap; deeper levels only when nested. The busy word
 * lives in the count slot, not in the scratch level, so that a count at
 * hand (count_at_hand) touches one slot. */
static __always_inline struct grain_hook_count_pending *claim_slot(__u32 *level)
{
	struct grain_hook_count_pending *p = count_slot(0);
	if (!p)
		return 0;
	if (__builtin_expect(__sync_val_compare_and_swap(&p->busy, 0, 1) == 0, 1)) {
		*level = 0;
		return p;
	}
	/* a subprogram: the deeper levels' code stays out of the lines every
	 * call runs */
	return claim_deeper(level);
}

/* release_slot frees the level claim_slot took; only its owner writes a
 * busy word that is set. */
static __always_inline void release_slot(struct grain_hook_count_pending *p)
{
	barrier(); /* every use of the level before this store */
	p->busy = 0;
}

/* claim: the scratch level of the level claim_slot took, or 0. */
static __always_inline struct scratch *claim(void)
{
	__u32 level = 0;
	struct grain_hook_count_pending *p = claim_slot(&level);
	if (!p)
		return 0;
	struct scratch *s = bpf_map_lookup_elem(&hook_scratch, &level);
	if (!s) {
		release_slot(p);
		return 0;
	}
	s->level = level;
	return s;
}

/* release frees the level of a scratch that claim returned. */
static __always_inline void release(struct scratch *s)
{
	struct grain_hook_count_pending *p = count_slot(s->level);
	if (p)
		release_slot(p);
}

/* GUARDED runs body (a statement using s) with the scratch level that
 * begin_expr claimed, and releases the level after it; nothing when
 * begin_expr returned 0. Program bodies are functions that return into
 * here, never out of the program: no path can keep a level busy. */
#define GUARDED(begin_expr, body)                 \
	({                                        \
		struct scratch *s = (begin_expr); \
		if (s) {                          \
			body;                     \
			release(s);               \
		}                                 \
		0;                                \
	})

/* GUARDED_SLOT: GUARDED for a body that needs only the level's count slot
 * (p, level), no scratch. */
#define GUARDED_SLOT(body)                                              \
	({                                                              \
		__u32 level = 0;                                        \
		struct grain_hook_count_pending *p = claim_slot(&level); \
		if (p) {                                                \
			body;                                           \
			release_slot(p);                                \
		}                                                       \
		0;                                                      \
	})

#endif
