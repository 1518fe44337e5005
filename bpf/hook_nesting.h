/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The nesting guard: each call of a kernel-hook program works in a per-CPU
 * scratch level (struct scratch) that it claims and releases, so that a
 * program running inside another on one CPU (an interrupt, a preempted
 * fentry/fexit program) never shares the other's memory. Part of hook.c,
 * which includes it after struct scratch and the hook_scratch and
 * hook_nesting maps. */
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

/* claim takes the first free scratch level of this CPU, or returns 0 (and
 * counts the call skipped) when every level is busy. A level is taken by
 * compare-and-swap, not a depth counter: a preempted fentry/fexit program
 * may finish after the program that preempted it started, so levels are
 * not released in stack order, and a load-then-store could hand one level
 * to two programs. The common path: one lookup (inlined by the verifier
 * from Linux 6.10) and one compare-and-swap; deeper levels only when
 * nested. */
static __always_inline struct scratch *claim(void)
{
	__u32 key = 0;
	struct scratch *s = bpf_map_lookup_elem(&hook_scratch, &key);
	if (!s)
		return 0;
	if (__sync_val_compare_and_swap(&s->busy, 0, 1) == 0) {
		s->level = 0;
		return s;
	}
	for (__u32 l = 1; l < GRAIN_HOOK_NEST_LEVELS; l++) {
		key = l;
		s = bpf_map_lookup_elem(&hook_scratch, &key);
		if (s && __sync_val_compare_and_swap(&s->busy, 0, 1) == 0) {
			s->level = l;
			count_nesting(0);
			return s;
		}
	}
	count_nesting(1);
	return 0;
}

/* release frees the level claim took; only its owner writes a busy word
 * that is set. */
static __always_inline void release(struct scratch *s)
{
	barrier(); /* every use of the level before this store */
	s->busy = 0;
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

#endif
