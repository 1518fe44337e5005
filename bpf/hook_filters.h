/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The filters of the kernel-hook programs' selectors: the values they read
 * (int_field), the full evaluation (filter_holds, a global function) and
 * the common cases compared inline by rule_apply (fast_filter). Part of
 * hook.c, which includes it after struct scratch, its maps, need() and
 * decode(). */
#ifndef GRAIN_HOOK_FILTERS_H
#define GRAIN_HOOK_FILTERS_H

/* Integer value of a filter or label field. */
static __always_inline __u64 int_field(struct scratch *s, struct grain_hook *h, __u8 field, __u8 arg, __u8 sub)
{
	switch (field) {
	case GRAIN_HOOK_F_PID:
		return (__u32)s->pid_tgid;
	case GRAIN_HOOK_F_TGID:
		return s->pid_tgid >> 32;
	case GRAIN_HOOK_F_PPID:
		need(s, HAVE_PPID);
		return s->ppid;
	case GRAIN_HOOK_F_UID:
		need(s, HAVE_UID);
		return (__u32)s->uid_gid;
	case GRAIN_HOOK_F_GID:
		need(s, HAVE_UID);
		return s->uid_gid >> 32;
	case GRAIN_HOOK_F_CGROUP:
		need(s, HAVE_CGROUP);
		return s->cgroup;
	case GRAIN_HOOK_F_SYSCALL:
		return s->syscall;
	case GRAIN_HOOK_F_ARG:
		if (arg >= GRAIN_HOOK_MAX_ARGS)
			return 0;
		decode(s, h, arg);
		switch (sub) {
		case GRAIN_HOOK_SUB_FAMILY:
			return s->vals[arg].family;
		case GRAIN_HOOK_SUB_SPORT:
			return s->vals[arg].sport;
		case GRAIN_HOOK_SUB_DPORT:
			return s->vals[arg].dport;
		default:
			return s->vals[arg].num;
		}
	}
	return 0;
}

/* filter_holds evaluates filter index fi of the active generation. */
__noinline int filter_holds(struct scratch *s, struct grain_hook *h, __u32 fi)
{
	if (!s || !h)
		return 0;
	struct grain_hook_filter *f = bpf_map_lookup_elem(&hook_filters, &fi);
	if (!f)
		return 0;
	int hit = 0;
	if (f->op == GRAIN_HOOK_OP_COMM) {
		need(s, HAVE_COMM);
		__u64 c0, c1;
		__builtin_memcpy(&c0, s->comm, 8);
		__builtin_memcpy(&c1, s->comm + 8, 8);
		__u32 n = f->nvals;
		for (int i = 0; i < GRAIN_HOOK_COMM_INLINE; i++) {
			if (i >= n)
				break;
			if ((c0 & f->vals[4 * i + 2]) == f->vals[4 * i] && (c1 & f->vals[4 * i + 3]) == f->vals[4 * i + 1]) {
				hit = 1;
				break;
			}
		}
		return hit ^ f->negate;
	}
	if (f->op == GRAIN_HOOK_OP_TRIE) {
		/* The key must be map memory for the lookup helper (Linux 6.1
		 * refuses a global function's pointer argument there): look the
		 * per-CPU scratch level up again, the same memory as s. */
		__u32 level = s->level;
		struct scratch *ms = bpf_map_lookup_elem(&hook_scratch, &level);
		if (!ms)
			return 0;
		struct grain_hook_string_key *k = &ms->skey;
		k->filter = fi;
		__u32 arg = f->arg;
		if (f->field == GRAIN_HOOK_F_COMM) {
			need(s, HAVE_COMM);
			__builtin_memcpy(k->data, s->comm, 16);
			k->data[16] = 0;
			k->prefixlen = 32 + 8 * 17;
		} else if (f->field == GRAIN_HOOK_F_ARG && arg < GRAIN_HOOK_MAX_ARGS) {
			decode(s, h, arg);
			struct grain_hook_val *v = &s->vals[arg];
			if (f->sub == GRAIN_HOOK_SUB_SADDR || f->sub == GRAIN_HOOK_SUB_DADDR) {
				__u8 *a = f->sub == GRAIN_HOOK_SUB_SADDR ? v->saddr : v->daddr;
				if (v->family == AF_INET) {
					k->data[0] = 4;
					__builtin_memcpy(&k->data[1], a, 4);
					k->prefixlen = 32 + 8 + 32;
				} else if (v->family == AF_INET6) {
					k->data[0] = 6;
					__builtin_memcpy(&k->data[1], a, 16);
					k->prefixlen = 32 + 8 + 128;
				} else {
					return f->negate;
				}
			} else {
				__u32 len = v->len;
				if (len > GRAIN_HOOK_MATCH_LEN)
					len = GRAIN_HOOK_MATCH_LEN;
				/* the string with its NUL: exact entries end with it */
				bpf_probe_read_kernel(k->data, (len & 255) + 1, v->str);
				k->data[len & 255] = 0;
				k->prefixlen = 32 + 8 * (len + 1);
			}
		} else {
			return f->negate;
		}
		hit = bpf_map_lookup_elem(&hook_strings, k) != 0;
		return hit ^ f->negate;
	}
	__u64 x = int_field(s, h, f->field, f->arg, f->sub);
	__u32 n = f->nvals;
	if (f->op == GRAIN_HOOK_OP_IN) {
		for (int i = 0; i < GRAIN_HOOK_MAX_INLINE; i++) {
			if (i >= n)
				break;
			if (f->vals[i] == x) {
				hit = 1;
				break;
			}
		}
	} else if (f->op == GRAIN_HOOK_OP_RANGE) {
		for (int i = 0; i < GRAIN_HOOK_MAX_RANGES; i++) {
			if (i >= n)
				break;
			if ((__s64)x >= (__s64)f->vals[2 * i] && (__s64)x <= (__s64)f->vals[2 * i + 1]) {
				hit = 1;
				break;
			}
		}
	} else if (f->op == GRAIN_HOOK_OP_SET) {
		struct grain_hook_value_key vk = {.filter = fi, .value = x};
		hit = bpf_map_lookup_elem(&hook_values, &vk) != 0;
	}
	return hit ^ f->negate;
}

/* fast_filter evaluates, without a function call, the filters most
 * selectors use: integer process fields in an inline set, and comm. It
 * returns 0 or 1, or -1 for the others (filter_holds). On this kind of
 * machine (AMD, return-thunk mitigations) every call and return costs
 * ~10 ns, more than most filters. */
static __always_inline int fast_filter(struct scratch *s, struct grain_hook_filter *f)
{
	__u64 x;
	if (f->op == GRAIN_HOOK_OP_COMM) {
		need(s, HAVE_COMM);
		__u64 c0 = *(__u64 *)&s->comm[0], c1 = *(__u64 *)&s->comm[8];
		int hit = 0;
		for (int i = 0; i < GRAIN_HOOK_COMM_INLINE; i++) {
			if (i >= f->nvals)
				break;
			if ((c0 & f->vals[4 * i + 2]) == f->vals[4 * i] && (c1 & f->vals[4 * i + 3]) == f->vals[4 * i + 1]) {
				hit = 1;
				break;
			}
		}
		return hit ^ f->negate;
	}
	if (f->op != GRAIN_HOOK_OP_IN)
		return -1;
	switch (f->field) {
	case GRAIN_HOOK_F_PID:
		x = (__u32)s->pid_tgid;
		break;
	case GRAIN_HOOK_F_TGID:
		x = s->pid_tgid >> 32;
		break;
	case GRAIN_HOOK_F_UID:
		need(s, HAVE_UID);
		x = (__u32)s->uid_gid;
		break;
	case GRAIN_HOOK_F_GID:
		need(s, HAVE_UID);
		x = s->uid_gid >> 32;
		break;
	default:
		return -1;
	}
	int hit = 0;
	for (int i = 0; i < GRAIN_HOOK_MAX_INLINE; i++) {
		if (i >= f->nvals)
			break;
		if (f->vals[i] == x) {
			hit = 1;
			break;
		}
	}
	return hit ^ f->negate;
}

#endif
