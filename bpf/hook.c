//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* grain's generic kernel-hook programs: one kprobe, one kretprobe, one fentry, one
 * fexit, one tracepoint (perf event), one raw tracepoint and one raw syscall
 * tracepoint program. They never change with policies: every hook, rule and
 * filter lives in the maps below, written by userspace (engine/hook)
 * from a Plan (codegen/probe.go).
 *
 * One program serves every attach point of its type; the attach cookie (the
 * hook slot) selects the hook's configuration. fentry/fexit programs name
 * their target function at load time, so the engine loads this same bytecode
 * once per function (and gives it the slot as cookie too). The raw syscall
 * tracepoint has no cookie (before Linux 6.10): its hooks are found by
 * syscall number.
 *
 * Per call: read the active generation and the hook once; fetch the raw
 * argument values (registers, function arguments, tracepoint fields); then
 * run each of the hook's rules with one call of a global function (verified
 * once, which keeps the verifier's work linear): a rule is selected when one
 * of its selectors holds, a selector when all its filters do. Common filters
 * (integer process fields, comm) are compared inline; the others, and the
 * actions, are global functions too. Calls are kept off the common path:
 * each call and return costs ~10 ns on AMD hosts with return thunks.
 * Process context is read through the task's BTF pointer (loads, not
 * helper calls). Strings, paths and sockets are decoded only when a filter,
 * label or event needs them. Selected rules count (per-CPU hash keyed by
 * rule + labels, or the rule's own counter), emit (ring buffer, rate
 * limited) and signal.
 *
 * By concern: hook.h holds what Go shares (limits, codes, map values),
 * hook_kernel.h the kernel structures read through CO-RE, hook_filters.h
 * the filters, hook_nesting.h the per-CPU scratch levels and their guard;
 * this file the maps, value decoding, actions and the programs. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#include "hook.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define AF_INET6 10

#include "hook_kernel.h"

/* Path assembly buffer: components are written backwards ending at
 * PATH_END; a path is at most GRAIN_HOOK_STR_LEN - 1 bytes, so writes stay
 * in [PATH_END - STR_LEN, PATH_END]; the masks below only restate that to
 * the verifier. */
#define PATH_BUF 1536
#define PATH_END 1023
#define EVENT_BUF (GRAIN_HOOK_EVENT_MAX + 512)

#define HAVE_UID (1 << 0)
#define HAVE_COMM (1 << 1)
#define HAVE_CGROUP (1 << 2)
#define HAVE_PPID (1 << 3)

/* Per-CPU working memory of one call. The kernel keeps kprobe and
 * perf-event programs from running inside one another on a CPU, not raw
 * tracepoint programs (raw sys_enter, grain_raw_tracepoint), nor fentry/fexit
 * programs of different functions (which run preemptible on a preemptible
 * kernel): a hook firing in an interrupt while another grain program runs on
 * the CPU takes the next free level of hook_scratch (claim); when all
 * GRAIN_HOOK_NEST_LEVELS are busy the call is skipped and counted
 * (hook_nesting). */
struct scratch {
	__u32 level; /* this level's key in hook_scratch (its busy word: hook_count_pending) */
	struct grain_hook_val vals[GRAIN_HOOK_MAX_ARGS];
	__u64 raw[GRAIN_HOOK_MAX_ARGS];
	__u32 decoded; /* argument slots whose vals[] are filled */
	__u32 have;    /* HAVE_* */
	__u32 gen;
	__u32 flags;   /* GRAIN_HOOK_EV_* */
	__u64 pid_tgid;
	__u64 uid_gid;
	__u64 cgroup;
	__u32 ppid;
	__u32 hook;
	__u64 syscall;
	__u64 wake_at;
	__u64 pw_dentry; /* path walk state */
	__u64 pw_vfsmnt;
	__u32 pw_pos;
	__u32 pw_truncated;
	char comm[16];
	struct grain_hook_string_key skey;
	struct grain_hook_count_key ckey;
	__u8 ckey_spill[128]; /* label writes are masked to stay in here */
	char path[PATH_BUF];
	__u8 event[EVENT_BUF];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct grain_hook_active);
} hook_active SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GRAIN_HOOK_GENERATIONS * GRAIN_HOOK_MAX_HOOKS);
	__type(key, __u32);
	__type(value, struct grain_hook);
} hooks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GRAIN_HOOK_GENERATIONS * GRAIN_HOOK_SYSCALLS);
	__type(key, __u32);
	__type(value, struct grain_hook_syscall);
} hook_syscalls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GRAIN_HOOK_GENERATIONS * GRAIN_HOOK_MAX_RULES);
	__type(key, __u32);
	__type(value, struct grain_hook_rule);
} hook_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GRAIN_HOOK_GENERATIONS * GRAIN_HOOK_MAX_FILTERS);
	__type(key, __u32);
	__type(value, struct grain_hook_filter);
} hook_filters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, GRAIN_HOOK_SET_ENTRIES);
	__type(key, struct grain_hook_value_key);
	__type(value, __u8);
} hook_values SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, GRAIN_HOOK_STRING_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct grain_hook_string_key);
	__type(value, __u8);
} hook_strings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, GRAIN_HOOK_GENERATIONS * GRAIN_HOOK_MAX_RULES);
	__type(key, __u32);
	__type(value, struct grain_hook_counter);
} hook_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GRAIN_HOOK_GENERATIONS * GRAIN_HOOK_MAX_RULES);
	__type(key, __u32);
	__type(value, struct grain_hook_rate);
} hook_rate SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, GRAIN_HOOK_COUNT_ENTRIES);
	__type(key, struct grain_hook_count_key);
	__type(value, struct grain_hook_count);
} hook_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, GRAIN_HOOK_COUNT_ENTRIES);
	__type(key, struct grain_hook_count_key_small);
	__type(value, struct grain_hook_count);
} hook_counts_small SEC(".maps");

/* The count slots of every CPU in one array, a CPU's GRAIN_HOOK_NEST_LEVELS
 * side by side (count_slot); the loader sizes it to the possible CPUs
 * (LoadHooks). Not a per-CPU array: its inlined lookup first loads the
 * value's per-CPU pointer from the map, one more cold line per call.
 * Mmapable: its values then start page-aligned, so each slot starts a
 * cache line (struct grain_hook_count_pending). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, GRAIN_HOOK_NEST_LEVELS); /* per CPU: LoadHooks multiplies */
	__type(key, __u32);
	__type(value, struct grain_hook_count_pending);
} hook_count_pending SEC(".maps");

/* count_slot: this CPU's count slot of nesting level `level`, or 0.
 * bpf_get_smp_processor_id is inlined by the verifier (Linux 6.10, x86 and
 * arm64); a program keeps its CPU while it runs. */
static __always_inline struct grain_hook_count_pending *count_slot(__u32 level)
{
	__u32 key = bpf_get_smp_processor_id() * GRAIN_HOOK_NEST_LEVELS + level;
	return bpf_map_lookup_elem(&hook_count_pending, &key);
}

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} hook_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, GRAIN_HOOK_NEST_LEVELS);
	__type(key, __u32);
	__type(value, struct scratch);
} hook_scratch SEC(".maps");

/* Touched only by calls that found their CPU's level 0 busy. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct grain_hook_nesting);
} hook_nesting SEC(".maps");

/* A kretprobe cannot read the function's arguments at return: the engine
 * also attaches grain_kprobe to the entry of such a hook (same cookie),
 * which saves them here. LRU: calls that never return (or whose return
 * the kernel missed) age out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, GRAIN_HOOK_STASH_ENTRIES);
	__type(key, struct grain_hook_stash_key);
	__type(value, struct grain_hook_stash);
} hook_stash SEC(".maps");

/* Process context, fetched once per call when first needed. */
static __always_inline void need(struct scratch *s, __u32 what)
{
	__u32 missing = what & ~s->have;
	if (!missing)
		return;
	/* Process context through the task's BTF pointer: plain loads where
	 * the helpers would each cost a call (bpf_get_current_uid_gid,
	 * bpf_get_current_cgroup_id read the same fields). */
	struct task_struct *t = bpf_get_current_task_btf();
	if (missing & HAVE_UID) {
		const struct cred *cr = t->cred;
		s->uid_gid = (__u64)cr->gid.val << 32 | cr->uid.val;
	}
	if (missing & HAVE_COMM) {
		/* Two loads instead of bpf_get_current_comm (measured: ~45 ns
		 * less per call). The kernel keeps comm NUL-terminated and
		 * zero-padded. */
		__u64 *c = (__u64 *)s->comm;
		c[0] = *(__u64 *)&t->comm[0];
		c[1] = *(__u64 *)&t->comm[8];
	}
	if (missing & HAVE_CGROUP)
		s->cgroup = t->cgroups->dfl_cgrp->kn->id;
	if (missing & HAVE_PPID) {
		s->ppid = t->real_parent->tgid;
	}
	s->have |= missing;
}

/* path_step adds one component of the path being walked (state in
 * s->pw_*) or crosses one mount point: 0 to go on, 1 when done. A global
 * function, verified once, so that the walk's loop stays linear for the
 * verifier. */
__noinline int path_step(struct scratch *s)
{
	if (!s)
		return 1;
	struct dentry *d = (struct dentry *)s->pw_dentry;
	struct vfsmount *vm = (struct vfsmount *)s->pw_vfsmnt;
	struct mount *mnt = (struct mount *)((void *)vm - bpf_core_field_offset(struct mount, mnt));
	struct dentry *parent = BPF_CORE_READ(d, d_parent);
	struct dentry *root = vm ? BPF_CORE_READ(vm, mnt_root) : 0;
	if (d == root || d == parent) {
		struct mount *mp = vm ? BPF_CORE_READ(mnt, mnt_parent) : 0;
		if (!vm || mp == mnt || !mp) {
			s->pw_truncated = 0;
			return 1;
		}
		/* Cross to the mount point in the parent mount. */
		s->pw_dentry = (__u64)BPF_CORE_READ(mnt, mnt_mountpoint);
		s->pw_vfsmnt = (__u64)((void *)mp + bpf_core_field_offset(struct mount, mnt));
		return 0;
	}
	__u32 len = BPF_CORE_READ(d, d_name.len);
	const unsigned char *name = BPF_CORE_READ(d, d_name.name);
	__u32 pos = s->pw_pos;
	if (len > 255 || pos > PATH_END || PATH_END - pos + len + 1 > GRAIN_HOOK_STR_LEN - 1)
		return 1; /* too long: truncated */
	pos -= len + 1;
	__u32 at = pos & 1023;
	bpf_probe_read_kernel(&s->path[(at + 1) & 1023], len & 255, name);
	s->path[at] = '/';
	s->pw_pos = pos;
	s->pw_dentry = (__u64)parent;
	return 0;
}

/* path_walk writes the path of (dentry, vfsmount) into vals[slot].str,
 * walking up at most GRAIN_HOOK_PATH_DEPTH components and mount points;
 * a longer path keeps its last components and sets
 * GRAIN_HOOK_EV_TRUNCATED. */
__noinline int path_walk(struct scratch *s, __u32 slot, __u64 dentry_p, __u64 vfsmnt_p)
{
	if (!s || slot >= GRAIN_HOOK_MAX_ARGS)
		return 0;
	s->pw_dentry = dentry_p;
	s->pw_vfsmnt = vfsmnt_p;
	s->pw_pos = PATH_END;
	s->pw_truncated = 1;
	s->path[PATH_END] = 0;
	for (int i = 0; i < GRAIN_HOOK_PATH_DEPTH; i++) {
		if (path_step(s))
			break;
	}
	__u32 pos = s->pw_pos;
	if (pos == PATH_END) { /* the root itself */
		pos--;
		s->path[PATH_END - 1] = '/';
	}
	if (s->pw_truncated)
		s->flags |= GRAIN_HOOK_EV_TRUNCATED;
	struct grain_hook_val *v = &s->vals[slot];
	__u32 n = (PATH_END - pos) & (GRAIN_HOOK_STR_LEN - 1);
	bpf_probe_read_kernel(v->str, n + 1, &s->path[pos & 1023]);
	v->len = n;
	return 0;
}

/* decode fills vals[slot] from the raw value by the argument's type. */
__noinline int decode(struct scratch *s, struct grain_hook *h, __u32 slot)
{
	if (!s || !h || slot >= GRAIN_HOOK_MAX_ARGS)
		return 0;
	if (s->decoded & (1 << slot))
		return 0;
	s->decoded |= 1 << slot;
	struct grain_hook_val *v = &s->vals[slot];
	__u64 raw = s->raw[slot];
	__u8 type = h->args[slot].type;
	long n;
	v->num = raw;
	v->len = 0;
	switch (type) {
	case GRAIN_HOOK_T_STRING:
		n = bpf_probe_read_kernel_str(v->str, GRAIN_HOOK_STR_LEN, (void *)raw);
		v->len = n > 0 ? n - 1 : 0;
		if (n <= 0)
			v->str[0] = 0;
		break;
	case GRAIN_HOOK_T_USTRING:
		n = bpf_probe_read_user_str(v->str, GRAIN_HOOK_STR_LEN, (void *)raw);
		v->len = n > 0 ? n - 1 : 0;
		if (n <= 0)
			v->str[0] = 0;
		break;
	case GRAIN_HOOK_T_SOCK: {
		struct sock *sk = (struct sock *)raw;
		__builtin_memset(v->saddr, 0, 16);
		__builtin_memset(v->daddr, 0, 16);
		v->family = BPF_CORE_READ(sk, __sk_common.skc_family);
		v->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
		v->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
		if (v->family == AF_INET) {
			bpf_core_read(v->saddr, 4, &sk->__sk_common.skc_rcv_saddr);
			bpf_core_read(v->daddr, 4, &sk->__sk_common.skc_daddr);
		} else if (v->family == AF_INET6) {
			bpf_core_read(v->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
			bpf_core_read(v->daddr, 16, &sk->__sk_common.skc_v6_daddr);
		}
		break;
	}
	case GRAIN_HOOK_T_SOCKADDR: {
		/* sockaddr_in: family, port, addr at 4; sockaddr_in6: family,
		 * port, flowinfo, addr at 8. */
		__u8 *b = (__u8 *)v->str;
		__builtin_memset(v->saddr, 0, 16);
		__builtin_memset(v->daddr, 0, 16);
		v->family = 0;
		v->sport = 0;
		v->dport = 0;
		if (bpf_probe_read_user(b, 24, (void *)raw) < 0 &&
		    bpf_probe_read_user(b, 16, (void *)raw) < 0)
			break;
		v->family = b[0] | (b[1] << 8);
		v->dport = (b[2] << 8) | b[3];
		if (v->family == AF_INET)
			__builtin_memcpy(v->daddr, b + 4, 4);
		else if (v->family == AF_INET6)
			__builtin_memcpy(v->daddr, b + 8, 16);
		else
			v->dport = 0;
		break;
	}
	case GRAIN_HOOK_T_FD: {
		struct task_struct *t = (struct task_struct *)bpf_get_current_task();
		struct fdtable *fdt = BPF_CORE_READ(t, files, fdt);
		unsigned int max = BPF_CORE_READ(fdt, max_fds);
		struct file **fds = BPF_CORE_READ(fdt, fd);
		struct file *f = 0;
		v->str[0] = 0;
		if (raw >= max)
			break;
		bpf_probe_read_kernel(&f, sizeof(f), &fds[raw]);
		if (!f)
			break;
		path_walk(s, slot, (__u64)BPF_CORE_READ(f, f_path.dentry), (__u64)BPF_CORE_READ(f, f_path.mnt));
		break;
	}
	case GRAIN_HOOK_T_FILE: {
		struct file *f = (struct file *)raw;
		v->str[0] = 0;
		if (!f)
			break;
		path_walk(s, slot, (__u64)BPF_CORE_READ(f, f_path.dentry), (__u64)BPF_CORE_READ(f, f_path.mnt));
		break;
	}
	case GRAIN_HOOK_T_PATH: {
		struct path *p = (struct path *)raw;
		v->str[0] = 0;
		if (!p)
			break;
		path_walk(s, slot, (__u64)BPF_CORE_READ(p, dentry), (__u64)BPF_CORE_READ(p, mnt));
		break;
	}
	default: /* ints: already in num, extended by the fetch */
		break;
	}
	return 0;
}

#include "hook_filters.h"

/* put_field copies the bytes of a label field into dst (size bytes, zero
 * padded by the caller). */
static __always_inline void put_label(struct scratch *s, struct grain_hook *h, struct grain_hook_label *l)
{
	__u32 off = l->offset & 127;
	__u32 size = l->size;
	__u8 *dst = &s->ckey.labels[off];
	if (l->field == GRAIN_HOOK_F_COMM) {
		need(s, HAVE_COMM);
		__builtin_memcpy(dst, s->comm, 16);
		return;
	}
	if (l->field == GRAIN_HOOK_F_ARG && l->arg < GRAIN_HOOK_MAX_ARGS) {
		__u32 arg = l->arg;
		decode(s, h, arg);
		struct grain_hook_val *v = &s->vals[arg];
		switch (l->sub) {
		case GRAIN_HOOK_SUB_STR: {
			__u32 n = v->len < size ? v->len : size;
			bpf_probe_read_kernel(dst, n & 127, v->str);
			return;
		}
		case GRAIN_HOOK_SUB_SADDR:
			__builtin_memcpy(dst, v->saddr, 16);
			return;
		case GRAIN_HOOK_SUB_DADDR:
			__builtin_memcpy(dst, v->daddr, 16);
			return;
		}
	}
	__u64 x = int_field(s, h, l->field, l->arg, l->sub);
	__builtin_memcpy(dst, &x, 8);
}

/* same_key: whether the pending slot holds the key just built in s->ckey
 * (its first 32 bytes for a small key, all 104 otherwise). */
static __always_inline int same_key(struct grain_hook_count_pending *p, struct scratch *s, int small)
{
	__u64 *a = (__u64 *)&p->key, *b = (__u64 *)&s->ckey;
	__u32 n = small ? sizeof(struct grain_hook_count_key_small) / 8 : sizeof(struct grain_hook_count_key) / 8;
	for (__u32 i = 0; i < sizeof(struct grain_hook_count_key) / 8; i++) {
		if (i >= n)
			break;
		if (a[i] != b[i])
			return 0;
	}
	return 1;
}

/* The key of a count slot changes between these two (hook.h): xchg, which
 * orders every access around it on x86 and arm64 alike (an atomic add
 * whose result is unused is not ordered on arm64). Only the program
 * holding the slot's level writes the slot. */
static __always_inline void slot_key_changing(struct grain_hook_count_pending *p)
{
	__sync_lock_test_and_set(&p->seq, p->seq + 1);
}

static __always_inline void slot_key_settled(struct grain_hook_count_pending *p)
{
	__sync_lock_test_and_set(&p->seq_end, p->seq);
}

/* flush adds the slot's pending calls to the count map, and its pending
 * hits to its rule's counter. A full map loses the calls: they count as
 * errors of the slot's rule. Both go to the rule's counter only while that
 * rule is still at its index (not to a rule that took the index since: the
 * engine counted what was pending when it harvested the old one). */
static __always_inline void flush(struct grain_hook_count_pending *p)
{
	__u64 calls = p->calls;
	if (!calls)
		return;
	/* the small map reads the first bytes of the same key */
	void *map = p->small ? (void *)&hook_counts_small : (void *)&hook_counts;
	struct grain_hook_count *v = bpf_map_lookup_elem(map, &p->key);
	if (!v) {
		struct grain_hook_count init = {};
		bpf_map_update_elem(map, &p->key, &init, BPF_NOEXIST);
		v = bpf_map_lookup_elem(map, &p->key);
	}
	if (v) {
		v->calls += calls;
		v->sum += p->sum;
		if (!p->hits)
			return;
	}
	__u32 ri = p->counter;
	struct grain_hook_rule *r = bpf_map_lookup_elem(&hook_rules, &ri);
	struct grain_hook_counter *c = bpf_map_lookup_elem(&hook_counters, &ri);
	if (!r || !c || r->id != p->key.rule_id)
		return;
	c->hits += p->hits;
	if (!v)
		c->count_errors += calls;
}

__noinline int do_count(struct scratch *s, struct grain_hook *h, struct grain_hook_rule *r, struct grain_hook_counter *c, __u32 ri)
{
	if (!s || !h || !r)
		return 0;
	__u64 sum = 0;
	if (r->flags & GRAIN_HOOK_R_SUM)
		sum = int_field(s, h, GRAIN_HOOK_F_ARG, r->sum_arg, GRAIN_HOOK_SUB_NUM);
	if (!r->nlabels) {
		/* One total: the rule's per-CPU counter (hits) holds it. */
		if (c)
			c->sum += sum;
		return 0;
	}
	int small = r->flags & GRAIN_HOOK_R_SMALL_KEY ? 1 : 0;
	if (small)
		__builtin_memset(&s->ckey, 0, sizeof(struct grain_hook_count_key_small));
	else
		__builtin_memset(&s->ckey, 0, sizeof(s->ckey));
	s->ckey.rule_id = r->id;
	for (int i = 0; i < GRAIN_HOOK_MAX_LABELS; i++) {
		if (i >= r->nlabels)
			break;
		put_label(s, h, &r->labels[i]);
	}
	/* The level's slot: only the program holding the level writes it. */
	struct grain_hook_count_pending *p = count_slot(s->level);
	if (!p)
		return 0;
	if (p->calls && same_key(p, s, small)) {
		p->calls++;
		p->sum += sum;
		return 0;
	}
	/* Another key: the sequence brackets the flush and the key change. */
	slot_key_changing(p);
	flush(p);
	if (small)
		__builtin_memcpy(&p->key, &s->ckey, sizeof(struct grain_hook_count_key_small));
	else
		__builtin_memcpy(&p->key, &s->ckey, sizeof(p->key));
	p->small = small;
	p->counter = ri;
	p->calls = 1;
	p->hits = 0; /* rule_apply counted this call's hit */
	p->sum = sum;
	slot_key_settled(p);
	return 0;
}

__noinline int do_emit(struct scratch *s, struct grain_hook *h, struct grain_hook_rule *r, struct grain_hook_counter *c, __u32 ri)
{
	if (!s || !h || !r || !c)
		return 0;
	if (r->rate_limit) {
		struct grain_hook_rate *rs = bpf_map_lookup_elem(&hook_rate, &ri);
		if (rs) {
			__u64 sec = bpf_ktime_get_boot_ns() / 1000000000;
			if (rs->window != sec) {
				rs->window = sec;
				rs->n = 0;
			}
			if (__sync_fetch_and_add(&rs->n, 1) >= r->rate_limit) {
				c->events_limited++;
				return 0;
			}
		}
	}
	need(s, HAVE_UID | HAVE_COMM | HAVE_CGROUP | HAVE_PPID);
	struct grain_hook_event *e = (struct grain_hook_event *)s->event;
	e->boot_ns = bpf_ktime_get_boot_ns();
	e->cgroup = s->cgroup;
	e->rule_id = r->id;
	e->pid = (__u32)s->pid_tgid;
	e->tgid = s->pid_tgid >> 32;
	e->ppid = s->ppid;
	e->uid = (__u32)s->uid_gid;
	e->gid = s->uid_gid >> 32;
	e->hook = s->hook;
	e->syscall = s->syscall;
	__builtin_memcpy(e->comm, s->comm, 16);
	__u32 off = sizeof(*e);
	__u32 nargs = 0;
	__u32 mask = r->emit_args;
	for (__u32 slot = 0; slot < GRAIN_HOOK_MAX_ARGS; slot++) {
		if (!(mask & (1 << slot)))
			continue;
		decode(s, h, slot);
		struct grain_hook_val *v = &s->vals[slot];
		__u8 type = h->args[slot].type;
		off &= 2047;
		struct grain_hook_ev_arg *a = (struct grain_hook_ev_arg *)&s->event[off];
		__u8 *data = &s->event[(off + sizeof(*a)) & 2047];
		__u32 len;
		switch (type) {
		case GRAIN_HOOK_T_SOCK:
		case GRAIN_HOOK_T_SOCKADDR:
			len = 40; /* family, sport, dport, len, saddr, daddr */
			__builtin_memcpy(data, &v->family, 40);
			break;
		case GRAIN_HOOK_T_STRING:
		case GRAIN_HOOK_T_USTRING:
		case GRAIN_HOOK_T_FILE:
		case GRAIN_HOOK_T_PATH:
		case GRAIN_HOOK_T_FD:
			len = v->len & (GRAIN_HOOK_STR_LEN - 1);
			bpf_probe_read_kernel(data, len, v->str);
			break;
		default:
			len = 8;
			__builtin_memcpy(data, &v->num, 8);
		}
		a->slot = slot;
		a->type = type;
		a->len = len;
		a->_pad = 0;
		off += sizeof(*a) + ((len + 7) & ~7);
		nargs++;
	}
	off &= 2047;
	e->size = off;
	e->nargs = nargs;
	e->flags = s->flags;
	/* A wakeup costs the calling CPU an interrupt; the reader polls every
	 * few milliseconds instead and is woken only when the ring crosses an
	 * eighth of its size, to drain it before it fills. */
	__u64 pending = bpf_ringbuf_query(&hook_events, BPF_RB_AVAIL_DATA);
	__u64 wake_at = s->wake_at;
	__u64 flags = pending < wake_at && pending + off + 8 >= wake_at ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_output(&hook_events, s->event, off, flags) == 0)
		c->events++;
	else
		c->events_lost++;
	return 0;
}

/* rule_apply runs rule index ri (in the active generation) on one call:
 * one function call per rule (hook_run is inlined in the programs). */
__noinline int rule_apply(struct scratch *s, struct grain_hook *h, __u32 ri)
{
	if (!s || !h)
		return 0;
	struct grain_hook_rule *r = bpf_map_lookup_elem(&hook_rules, &ri);
	if (!r)
		return 0;
	__u32 nsel = r->nselectors;
	if (nsel) {
		int selected = 0;
		for (int i = 0; i < GRAIN_HOOK_MAX_SELECTORS && !selected; i++) {
			if (i >= nsel)
				break;
			__u32 first = s->gen * GRAIN_HOOK_MAX_FILTERS + r->selectors[i].first;
			__u32 nf = r->selectors[i].nfilters;
			int all = 1;
			for (int j = 0; j < GRAIN_HOOK_MAX_SEL_FILTERS; j++) {
				if (j >= nf)
					break;
				__u32 fi = first + j;
				struct grain_hook_filter *f = bpf_map_lookup_elem(&hook_filters, &fi);
				if (!f) {
					all = 0;
					break;
				}
				int ok = fast_filter(s, f);
				if (ok < 0)
					ok = filter_holds(s, h, fi);
				if (!ok) {
					all = 0;
					break;
				}
			}
			selected = all;
		}
		if (!selected)
			return 0;
	}
	struct grain_hook_counter *c = bpf_map_lookup_elem(&hook_counters, &ri);
	if (c)
		c->hits++;
	/* A count without labels or sum is the hits counter: no call. */
	if ((r->flags & GRAIN_HOOK_R_COUNT) && (r->nlabels || (r->flags & GRAIN_HOOK_R_SUM)))
		do_count(s, h, r, c, ri);
	if (r->flags & GRAIN_HOOK_R_EMIT)
		do_emit(s, h, r, c, ri);
	if (r->flags & GRAIN_HOOK_R_SIGNAL) {
		if (bpf_send_signal(r->signal) == 0 && c)
			c->signals++;
	}
	return 0;
}

/* hook_run runs every rule of the hook, in order. */
static __always_inline int hook_run(struct scratch *s, struct grain_hook *h)
{
	__u32 n = h->nrules;
	for (int i = 0; i < GRAIN_HOOK_MAX_HOOK_RULES; i++) {
		if (i >= n)
			break;
		rule_apply(s, h, s->gen * GRAIN_HOOK_MAX_RULES + (h->rules[i] & (GRAIN_HOOK_MAX_RULES - 1)));
	}
	return 0;
}

/* Sign- or zero-extends the low size bytes of x. */
static __always_inline __u64 extend(__u64 x, __u32 size, int is_signed)
{
	switch (size) {
	case 1:
		return is_signed ? (__u64)(__s64)(__s8)x : (__u8)x;
	case 2:
		return is_signed ? (__u64)(__s64)(__s16)x : (__u16)x;
	case 4:
		return is_signed ? (__u64)(__s64)(__s32)x : (__u32)x;
	}
	return x;
}

#include "hook_nesting.h"

/* begin starts a call: it returns a claimed scratch level with the active
 * generation, or 0 when grain itself is calling, nothing is configured or
 * the CPU has no free level. The caller releases the level (GUARDED). */
static __always_inline struct scratch *begin_with(struct grain_hook_active *act)
{
	/* One helper call for the ids and comm (bpf_get_current_pid_tgid
	 * and a later bpf_get_current_task_btf were two): comm is two loads,
	 * read whether a filter or label asks for it or not. */
	struct task_struct *t = bpf_get_current_task_btf();
	__u32 tgid = t->tgid;
	if (tgid == act->agent_tgid)
		return 0;
	struct scratch *s = claim();
	if (!s)
		return 0;
	s->gen = act->generation & 1;
	s->pid_tgid = (__u64)tgid << 32 | (__u32)t->pid;
	__u64 *comm = (__u64 *)s->comm;
	comm[0] = *(__u64 *)&t->comm[0];
	comm[1] = *(__u64 *)&t->comm[8];
	s->have = HAVE_COMM;
	s->decoded = 0;
	s->flags = 0;
	s->syscall = 0;
	s->wake_at = act->wake_at;
	return s;
}

static __always_inline struct scratch *begin(void)
{
	__u32 zero = 0;
	struct grain_hook_active *act = bpf_map_lookup_elem(&hook_active, &zero);
	if (!act)
		return 0;
	return begin_with(act);
}

static __always_inline struct grain_hook *hook_of(struct scratch *s, __u64 slot)
{
	__u32 key = s->gen * GRAIN_HOOK_MAX_HOOKS + (slot & (GRAIN_HOOK_MAX_HOOKS - 1));
	s->hook = slot;
	struct grain_hook *h = bpf_map_lookup_elem(&hooks, &key);
	if (!h || !h->nrules)
		return 0;
	return h;
}

static __always_inline __u64 ext_arg(struct grain_hook_arg *a, __u64 x)
{
	if (a->type == GRAIN_HOOK_T_INT || a->type == GRAIN_HOOK_T_UINT)
		return extend(x, a->width, a->type == GRAIN_HOOK_T_INT);
	return x;
}

/* Registers are read with bpf_probe_read_kernel (CO-RE offsets): clang
 * would otherwise turn the switch into a variable offset on the context
 * pointer, which the verifier refuses. */
static __always_inline __u64 regs_arg(struct pt_regs *r, __u32 i)
{
	switch (i) {
	case 0:
		return PT_REGS_PARM1_CORE(r);
	case 1:
		return PT_REGS_PARM2_CORE(r);
	case 2:
		return PT_REGS_PARM3_CORE(r);
	case 3:
		return PT_REGS_PARM4_CORE(r);
	case 4:
		return PT_REGS_PARM5_CORE(r);
	case 5:
		return PT_REGS_PARM6_CORE(r);
	}
	return 0;
}

static __always_inline int kprobe_run(struct scratch *s, struct pt_regs *ctx, int is_ret)
{
	struct grain_hook *h = hook_of(s, bpf_get_attach_cookie(ctx));
	if (!h)
		return 0;
	struct grain_hook_stash_key sk = {.pid_tgid = s->pid_tgid, .slot = s->hook};
	if (!is_ret && h->kind == GRAIN_HOOK_KIND_KRETPROBE) {
		/* the entry of a kretprobe hook: save the argument registers
		 * (straight-line: cheaper to verify than a loop by slot) */
		if (!h->nargs)
			return 0;
		struct grain_hook_stash st = {
			.raw = {PT_REGS_PARM1_CORE(ctx), PT_REGS_PARM2_CORE(ctx), PT_REGS_PARM3_CORE(ctx),
				PT_REGS_PARM4_CORE(ctx), PT_REGS_PARM5_CORE(ctx), PT_REGS_PARM6_CORE(ctx)},
		};
		bpf_map_update_elem(&hook_stash, &sk, &st, BPF_ANY);
		return 0;
	}
	struct grain_hook_stash *st = 0;
	if (is_ret && h->flags & GRAIN_HOOK_STASH) {
		st = bpf_map_lookup_elem(&hook_stash, &sk);
		if (!st)
			return 0; /* entered before the hook was attached */
	}
	for (__u32 i = 0; i < GRAIN_HOOK_MAX_ARGS; i++) {
		if (i >= h->nargs)
			break;
		struct grain_hook_arg *a = &h->args[i];
		if (a->source == GRAIN_HOOK_SRC_RET)
			s->raw[i] = ext_arg(a, PT_REGS_RC_CORE(ctx));
		else if (st)
			s->raw[i] = ext_arg(a, st->raw[a->index < GRAIN_HOOK_MAX_ARGS ? a->index : 0]);
		else
			s->raw[i] = ext_arg(a, regs_arg(ctx, a->index));
	}
	int ret = hook_run(s, h);
	if (st)
		bpf_map_delete_elem(&hook_stash, &sk);
	return ret;
}

SEC("kprobe")
int grain_kprobe(struct pt_regs *ctx)
{
	return GUARDED(begin(), kprobe_run(s, ctx, 0));
}

SEC("kretprobe")
int grain_kretprobe(struct pt_regs *ctx)
{
	return GUARDED(begin(), kprobe_run(s, ctx, 1));
}

static __always_inline int tracing_run(struct scratch *s, __u64 *ctx)
{
	struct grain_hook *h = hook_of(s, bpf_get_attach_cookie(ctx));
	if (!h)
		return 0;
	for (__u32 i = 0; i < GRAIN_HOOK_MAX_ARGS; i++) {
		if (i >= h->nargs)
			break;
		struct grain_hook_arg *a = &h->args[i];
		__u64 x = 0;
		if (a->source == GRAIN_HOOK_SRC_RET)
			bpf_get_func_ret(ctx, &x);
		else
			bpf_get_func_arg(ctx, a->index, &x);
		s->raw[i] = ext_arg(a, x);
	}
	return hook_run(s, h);
}

/* Loaded once per target function: the engine sets the attach target. */
SEC("fentry")
int grain_fentry(__u64 *ctx)
{
	return GUARDED(begin(), tracing_run(s, ctx));
}

SEC("fexit")
int grain_fexit(__u64 *ctx)
{
	return GUARDED(begin(), tracing_run(s, ctx));
}

static __always_inline int tracepoint_run(struct scratch *s, void *ctx)
{
	struct grain_hook *h = hook_of(s, bpf_get_attach_cookie(ctx));
	if (!h)
		return 0;
	for (__u32 i = 0; i < GRAIN_HOOK_MAX_ARGS; i++) {
		if (i >= h->nargs)
			break;
		struct grain_hook_arg *a = &h->args[i];
		__u32 off = a->offset & 0xffff;
		if (a->flags & (GRAIN_HOOK_FIELD_DATA_LOC | GRAIN_HOOK_FIELD_ARRAY)) {
			/* a string inside the record */
			__u32 size = a->size;
			if (a->flags & GRAIN_HOOK_FIELD_DATA_LOC) {
				__u32 loc = 0;
				bpf_probe_read_kernel(&loc, 4, ctx + off);
				off = loc & 0xffff;
				size = loc >> 16;
			}
			barrier_var(size);
			if (size > GRAIN_HOOK_STR_LEN)
				size = GRAIN_HOOK_STR_LEN;
			struct grain_hook_val *v = &s->vals[i];
			long n = bpf_probe_read_kernel_str(v->str, size, ctx + off);
			v->len = n > 0 ? n - 1 : 0;
			if (n <= 0)
				v->str[0] = 0;
			v->num = 0;
			s->decoded |= 1 << i;
			continue;
		}
		__u64 x = 0;
		__u32 size = a->size;
		barrier_var(size);
		if (size > 8)
			size = 8;
		bpf_probe_read_kernel(&x, size, ctx + off);
		s->raw[i] = ext_arg(a, x);
	}
	return hook_run(s, h);
}

SEC("tracepoint")
int grain_tracepoint(void *ctx)
{
	return GUARDED(begin(), tracepoint_run(s, ctx));
}

/* count_at_hand runs the one rule of a hook that only counts by labels at
 * hand (grain_hook.count_rule, 1 + the rule's index; count_id and
 * count_fields: the rule's id and label fields, copied by the engine): what
 * rule_apply and do_count do for it, the key built in registers, without
 * their calls and general paths (measured: about half of a counted call's
 * cost), and without reading the rule or its counter (the rule's hits wait
 * in the slot, p->hits). The key's bytes are do_count's, so both paths
 * share the count slot. p: the claimed level's count slot. nr:
 * the syscall label's value (0 off raw sys_enter, as int_field gives). */
static __always_inline int count_at_hand(struct grain_hook_count_pending *p, struct grain_hook_active *act,
					 struct task_struct *t, __u32 count_rule, __u32 count_id, __u32 fields,
					 __u64 nr)
{
	__u32 ri = (act->generation & 1) * GRAIN_HOOK_MAX_RULES + ((count_rule - 1) & (GRAIN_HOOK_MAX_RULES - 1));
	/* the labels packed in order: comm takes two words, the others one */
	__u64 w0 = 0, w1 = 0, w2 = 0;
	__u32 n = 0;
	/* By comm alone, the common case, first and straight: every cold call
	 * pays for each line of code it runs. */
	if (__builtin_expect(fields == GRAIN_HOOK_F_COMM, 1)) {
		w0 = *(__u64 *)&t->comm[0];
		w1 = *(__u64 *)&t->comm[8];
		goto built;
	}
	for (int i = 0; i < 3; i++) {
		__u8 f = fields >> (8 * i);
		if (!f)
			break;
		__u64 x;
		if (f == GRAIN_HOOK_F_COMM)
			x = *(__u64 *)&t->comm[0];
		else if (f == GRAIN_HOOK_F_PID)
			x = (__u32)t->pid;
		else if (f == GRAIN_HOOK_F_TGID)
			x = (__u32)t->tgid;
		else
			x = nr;
		if (n == 0)
			w0 = x;
		else if (n == 1)
			w1 = x;
		else
			w2 = x;
		n++;
		if (f == GRAIN_HOOK_F_COMM) {
			x = *(__u64 *)&t->comm[8];
			if (n == 1)
				w1 = x;
			else
				w2 = x;
			n++;
		}
	}
built:;
	__u64 head = count_id; /* rule_id, then zero padding */
	__u64 *k = (__u64 *)&p->key;
	if (__builtin_expect(p->calls && k[0] == head && k[1] == w0 && k[2] == w1 && k[3] == w2, 1)) {
		p->calls++;
		p->hits++;
		return 0;
	}
	slot_key_changing(p);
	flush(p);
	k[0] = head;
	k[1] = w0;
	k[2] = w1;
	k[3] = w2;
	p->small = 1;
	p->counter = ri;
	p->calls = 1;
	p->hits = 1;
	p->sum = 0;
	slot_key_settled(p);
	return 0;
}

/* Any tracepoint, raw (Linux 6.10+: raw tracepoints take a cookie): for
 * hooks that read no record field, only process context. It skips the perf
 * event's record building, ~60 ns per call on this kind of host; its ctx
 * holds the tracepoint's C arguments, which grain does not read. */
static __always_inline int raw_tracepoint_run(struct scratch *s, struct grain_hook *h, __u32 slot)
{
	s->hook = slot;
	return hook_run(s, h);
}

/* raw_tracepoint_cookie reads the attach cookie where
 * bpf_get_attach_cookie does, without its call: on a cold path (once per
 * exec) the helper's call cost ~50 ns, a tenth of the program. */
static __always_inline __u64 raw_tracepoint_cookie(struct task_struct *t)
{
	struct bpf_trace_run_ctx *rc =
		bpf_rdonly_cast(t->bpf_ctx, bpf_core_type_id_kernel(struct bpf_trace_run_ctx));
	return rc->bpf_cookie;
}

SEC("raw_tracepoint")
int grain_raw_tracepoint(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 zero = 0;
	struct grain_hook_active *act = bpf_map_lookup_elem(&hook_active, &zero);
	if (!act)
		return 0;
	/* the hook is looked up before the level is claimed: its
	 * count_rule picks the path */
	struct task_struct *t = bpf_get_current_task_btf();
	__u32 slot = raw_tracepoint_cookie(t) & (GRAIN_HOOK_MAX_HOOKS - 1);
	__u32 key = (act->generation & 1) * GRAIN_HOOK_MAX_HOOKS + slot;
	struct grain_hook *h = bpf_map_lookup_elem(&hooks, &key);
	if (!h || !h->nrules)
		return 0;
	__u32 count_rule = h->count_rule;
	if (count_rule) {
		if (t->tgid == act->agent_tgid)
			return 0;
		return GUARDED_SLOT(count_at_hand(p, act, t, count_rule, h->count_id, h->count_fields, 0));
	}
	return GUARDED(begin_with(act), raw_tracepoint_run(s, h, slot));
}

static __always_inline int sys_enter_run(struct scratch *s, struct bpf_raw_tracepoint_args *ctx, struct grain_hook_syscall *sc, __u64 nr)
{
	s->syscall = nr;
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];
	for (int k = 0; k < GRAIN_HOOK_SYSCALL_HOOKS; k++) {
		if (k >= sc->nhooks)
			break;
		struct grain_hook *h = hook_of(s, sc->hooks[k]);
		if (!h)
			continue;
		s->decoded = 0; /* hooks of one syscall may read other types */
		for (__u32 i = 0; i < GRAIN_HOOK_MAX_ARGS; i++) {
			if (i >= h->nargs)
				break;
			struct grain_hook_arg *a = &h->args[i];
			__u64 x = 0;
			switch (a->index) {
			case 0:
				x = PT_REGS_PARM1_CORE_SYSCALL(regs);
				break;
			case 1:
				x = PT_REGS_PARM2_CORE_SYSCALL(regs);
				break;
			case 2:
				x = PT_REGS_PARM3_CORE_SYSCALL(regs);
				break;
			case 3:
				x = PT_REGS_PARM4_CORE_SYSCALL(regs);
				break;
			case 4:
				x = PT_REGS_PARM5_CORE_SYSCALL(regs);
				break;
			case 5:
				x = PT_REGS_PARM6_CORE_SYSCALL(regs);
				break;
			}
			s->raw[i] = ext_arg(a, x);
		}
		hook_run(s, h);
	}
	return 0;
}

/* Raw sys_enter: the hooks of a syscall come from its number. */
SEC("raw_tracepoint/sys_enter")
int grain_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 zero = 0;
	struct grain_hook_active *act = bpf_map_lookup_elem(&hook_active, &zero);
	if (!act)
		return 0;
	__u64 nr = ctx->args[1];
	if (nr >= GRAIN_HOOK_SYSCALLS)
		return 0;
	__u32 key = (act->generation & 1) * GRAIN_HOOK_SYSCALLS + nr;
	struct grain_hook_syscall *sc = bpf_map_lookup_elem(&hook_syscalls, &key);
	if (!sc || !sc->nhooks)
		return 0;
	if (sc->count_rule) {
		/* only the level's count slot, which holds its busy word: no
		 * scratch is read */
		struct task_struct *t = bpf_get_current_task_btf();
		if (t->tgid == act->agent_tgid)
			return 0;
		return GUARDED_SLOT(count_at_hand(p, act, t, sc->count_rule, sc->count_id, sc->count_fields, nr));
	}
	return GUARDED(begin_with(act), sys_enter_run(s, ctx, sc, nr));
}

/* Keep the constants of hook.h in BTF, where bpf/internal/genconst reads
 * them. */
const struct grain_hook_constants *unused_constants __attribute__((unused));
