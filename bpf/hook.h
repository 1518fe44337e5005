/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Limits and map layouts shared by grain's generic probe programs (kprobe,
 * kretprobe, fentry, fexit, tracepoint, raw syscall tracepoint) and their Go
 * loader. */
#ifndef GRAIN_HOOK_H
#define GRAIN_HOOK_H

#include <linux/types.h>

/* The constants are enums, not #defines: enums reach the object's BTF,
 * from which bpf/internal/genconst writes their Go names
 * (hook_limits.go), so C is their one source. */

enum grain_hook_limits {
	GRAIN_HOOK_GENERATIONS = 2,
	GRAIN_HOOK_MAX_HOOKS = 256,       /* attach points (cookie = hook slot) */
	GRAIN_HOOK_MAX_RULES = 1024,      /* rules per generation */
	GRAIN_HOOK_MAX_FILTERS = 4096,    /* filters per generation */
	GRAIN_HOOK_MAX_ARGS = 6,          /* values read per hook */
	GRAIN_HOOK_MAX_HOOK_RULES = 16,   /* rules per hook */
	GRAIN_HOOK_MAX_SELECTORS = 4,     /* ORed selectors per rule */
	GRAIN_HOOK_MAX_SEL_FILTERS = 8,   /* ANDed filters per selector */
	GRAIN_HOOK_MAX_INLINE = 8,        /* int values held in the filter itself */
	GRAIN_HOOK_MAX_RANGES = 4,        /* ranges per filter */
	GRAIN_HOOK_MAX_LABELS = 4,        /* count labels per rule */
	GRAIN_HOOK_LABEL_BYTES = 96,      /* packed label values of a count key */
	GRAIN_HOOK_SMALL_LABEL_BYTES = 24, /* label bytes of a GRAIN_HOOK_R_SMALL_KEY rule */
	GRAIN_HOOK_STR_LEN = 256,         /* bytes of a string or path read (incl. NUL) */
	GRAIN_HOOK_MATCH_LEN = 247,       /* string bytes compared by filters */
	GRAIN_HOOK_PATH_DEPTH = 24,       /* path components (and mount crossings) walked */
	GRAIN_HOOK_SYSCALLS = 512,        /* syscall numbers per generation */
	GRAIN_HOOK_SYSCALL_HOOKS = 7,     /* hooks per syscall number */
	GRAIN_HOOK_SET_ENTRIES = 65536,   /* int set values in the hash (all filters) */
	GRAIN_HOOK_STRING_ENTRIES = 16384, /* strings, prefixes, CIDRs in the trie */
	GRAIN_HOOK_COUNT_ENTRIES = 65536, /* distinct count keys */
	GRAIN_HOOK_EVENT_MAX = 2048,      /* bytes of one event */
	GRAIN_HOOK_STASH_ENTRIES = 16384, /* calls in flight between a kretprobe's entry and return */
	GRAIN_HOOK_NEST_LEVELS = 4,       /* per-CPU scratch levels: programs running inside another on a CPU */
	GRAIN_HOOK_COMM_INLINE = 2,       /* comm values and prefixes held inline (GRAIN_HOOK_OP_COMM) */
};

/* Hook kinds. */
enum grain_hook_kinds {
	GRAIN_HOOK_KIND_KPROBE = 1,
	GRAIN_HOOK_KIND_KRETPROBE = 2,
	GRAIN_HOOK_KIND_FENTRY = 3,
	GRAIN_HOOK_KIND_FEXIT = 4,
	GRAIN_HOOK_KIND_TRACEPOINT = 5,
	GRAIN_HOOK_KIND_SYSCALL = 6,
};

/* Where an argument comes from. */
enum grain_hook_sources {
	GRAIN_HOOK_SRC_ARG = 1,   /* function or syscall argument index */
	GRAIN_HOOK_SRC_RET = 2,   /* return value */
	GRAIN_HOOK_SRC_FIELD = 3, /* tracepoint field at offset/size */
};

/* How an argument is read. */
enum grain_hook_types {
	GRAIN_HOOK_T_INT = 1,
	GRAIN_HOOK_T_UINT = 2,
	GRAIN_HOOK_T_STRING = 3,   /* kernel pointer */
	GRAIN_HOOK_T_USTRING = 4,  /* user pointer */
	GRAIN_HOOK_T_SOCK = 5,
	GRAIN_HOOK_T_SOCKADDR = 6, /* user pointer */
	GRAIN_HOOK_T_FILE = 7,
	GRAIN_HOOK_T_PATH = 8,
	GRAIN_HOOK_T_FD = 9,
};

/* Tracepoint field flags. */
enum grain_hook_field_flags {
	GRAIN_HOOK_FIELD_SIGNED = 1 << 0,
	GRAIN_HOOK_FIELD_DATA_LOC = 1 << 1, /* __data_loc: u32 (len << 16 | offset) */
	GRAIN_HOOK_FIELD_ARRAY = 1 << 2,    /* char name[size] inside the record */
};

/* What a filter or a label looks at. */
enum grain_hook_fields {
	GRAIN_HOOK_F_PID = 1,     /* thread id (kernel pid) */
	GRAIN_HOOK_F_TGID = 2,    /* process id */
	GRAIN_HOOK_F_PPID = 3,
	GRAIN_HOOK_F_UID = 4,
	GRAIN_HOOK_F_GID = 5,
	GRAIN_HOOK_F_COMM = 6,
	GRAIN_HOOK_F_CGROUP = 7,
	GRAIN_HOOK_F_ARG = 8,     /* argument slot arg, part sub */
	GRAIN_HOOK_F_SYSCALL = 9, /* syscall number (syscall hooks) */
};

/* Parts of an argument value. */
enum grain_hook_subs {
	GRAIN_HOOK_SUB_NUM = 0, /* the integer */
	GRAIN_HOOK_SUB_STR = 1, /* the string or path */
	GRAIN_HOOK_SUB_FAMILY = 2,
	GRAIN_HOOK_SUB_SADDR = 3,
	GRAIN_HOOK_SUB_DADDR = 4,
	GRAIN_HOOK_SUB_SPORT = 5,
	GRAIN_HOOK_SUB_DPORT = 6,
};

/* Filter operations; GRAIN_HOOK_OP_* with negate for ne/notin. */
enum grain_hook_ops {
	GRAIN_HOOK_OP_IN = 1,    /* value among vals[0..nvals) */
	GRAIN_HOOK_OP_RANGE = 2, /* value in [vals[2i], vals[2i+1]] for some i < nvals */
	GRAIN_HOOK_OP_SET = 3,   /* value in the hook_values hash under this filter */
	GRAIN_HOOK_OP_TRIE = 4,  /* string prefix/exact or address CIDR in hook_strings */
	GRAIN_HOOK_OP_COMM = 5,  /* comm: (comm & mask) == value for some of nvals
	                           * entries of vals {w0, w1, mask0, mask1} */
};

/* Rule flags. */
enum grain_hook_rule_flags {
	GRAIN_HOOK_R_EMIT = 1 << 0,
	GRAIN_HOOK_R_COUNT = 1 << 1,
	GRAIN_HOOK_R_SIGNAL = 1 << 2,
	GRAIN_HOOK_R_SUM = 1 << 3,
	GRAIN_HOOK_R_SMALL_KEY = 1 << 4, /* labels fit SMALL_LABEL_BYTES: hook_counts_small */
};

/* Hook flags. */
enum grain_hook_flags {
	GRAIN_HOOK_STASH = 1 << 0, /* kretprobe: arguments saved at entry */
};

/* Event flags. */
enum grain_hook_event_flags {
	GRAIN_HOOK_EV_TRUNCATED = 1 << 0, /* a path was longer than STR_LEN or PATH_DEPTH */
};

/* Keeps every enum above in the object's BTF (clang emits an enum only
 * when a declaration uses it): hook.c declares a pointer to it. */
struct grain_hook_constants {
	enum grain_hook_limits limits;
	enum grain_hook_kinds kinds;
	enum grain_hook_sources sources;
	enum grain_hook_types types;
	enum grain_hook_field_flags field_flags;
	enum grain_hook_fields fields;
	enum grain_hook_subs subs;
	enum grain_hook_ops ops;
	enum grain_hook_rule_flags rule_flags;
	enum grain_hook_flags hook_flags;
	enum grain_hook_event_flags event_flags;
};

struct grain_hook_active {
	__u32 generation;
	__u32 agent_tgid; /* grain's own process: never observed */
	__u64 wake_at;    /* ring buffer bytes pending that wake the reader */
};

struct grain_hook_arg {
	__u8 source;  /* GRAIN_HOOK_SRC_* */
	__u8 type;    /* GRAIN_HOOK_T_* */
	__u8 index;   /* argument index */
	__u8 flags;   /* GRAIN_HOOK_FIELD_* */
	__u16 offset; /* tracepoint field offset */
	__u16 size;   /* tracepoint field bytes read (strings: array length) */
	__u8 width;   /* integer bytes: 1, 2, 4 or 8, sign- or zero-extended */
	__u8 _pad[3];
};

struct grain_hook {
	__u8 kind;    /* GRAIN_HOOK_KIND_* */
	__u8 nargs;
	__u8 nrules;
	__u8 flags;   /* GRAIN_HOOK_* */
	/* 1 + the index (in the generation) of the hook's one rule when it
	 * only counts, unfiltered, by labels every call has at hand (comm,
	 * pid, tgid, syscall) in a small key: grain_raw_tracepoint then runs
	 * the short count path (count_at_hand); 0 otherwise. In the Plan
	 * (codegen), as is count_fields. */
	__u16 count_rule;
	__u16 _pad2;
	/* With count_rule, what count_at_hand needs of that rule, so that it
	 * reads no hook_rules entry (a cache line each cold call, as every
	 * exec is): its id and its labels' fields in order, one byte each
	 * (GRAIN_HOOK_F_*, 0 past the last). The engine sets count_id, which
	 * holds the epoch, as it sets rule ids. */
	__u32 count_id;
	__u32 count_fields;
	struct grain_hook_arg args[GRAIN_HOOK_MAX_ARGS];
	__u16 rules[GRAIN_HOOK_MAX_HOOK_RULES]; /* rule indices in the generation, in order */
};

/* Arguments a kretprobe hook's entry kprobe saves for its return. */
struct grain_hook_stash_key {
	__u64 pid_tgid;
	__u32 slot;
	__u32 _pad;
};

struct grain_hook_stash {
	__u64 raw[GRAIN_HOOK_MAX_ARGS]; /* argument registers 0-5 */
};

struct grain_hook_syscall {
	__u8 nhooks;
	__u8 hooks[GRAIN_HOOK_SYSCALL_HOOKS];
	/* the count_rule of the syscall's hook when it is the only one:
	 * grain_sys_enter then runs the short count path (count_at_hand) */
	__u16 count_rule;
	__u16 _pad[3];
	__u32 count_id;     /* as in grain_hook */
	__u32 count_fields; /* as in grain_hook */
};

struct grain_hook_selector {
	__u16 first;  /* first filter index in the generation */
	__u8 nfilters;
	__u8 _pad;
};

struct grain_hook_label {
	__u8 field;   /* GRAIN_HOOK_F_* */
	__u8 arg;
	__u8 sub;     /* GRAIN_HOOK_SUB_* */
	__u8 offset;  /* in the key's label bytes */
	__u8 size;    /* bytes: 8 ints, 16 comm/addresses, up to the rest for strings */
	__u8 _pad[3];
};

struct grain_hook_rule {
	__u32 id;       /* epoch << 10 | index: names the rule in events and counts */
	__u8 flags;     /* GRAIN_HOOK_R_* */
	__u8 signal;
	__u8 nselectors;
	__u8 nlabels;
	__u32 rate_limit; /* events per second, 0: none */
	__u8 emit_args;   /* bitmask of argument slots sent with events */
	__u8 sum_arg;     /* argument slot added up by count (GRAIN_HOOK_R_SUM) */
	__u8 _pad[2];
	struct grain_hook_selector selectors[GRAIN_HOOK_MAX_SELECTORS];
	struct grain_hook_label labels[GRAIN_HOOK_MAX_LABELS];
};

struct grain_hook_filter {
	__u8 field;   /* GRAIN_HOOK_F_* */
	__u8 arg;
	__u8 sub;
	__u8 op;      /* GRAIN_HOOK_OP_* */
	__u8 negate;
	__u8 nvals;
	__u8 _pad[2];
	__u64 vals[GRAIN_HOOK_MAX_INLINE];
};

struct grain_hook_value_key {
	__u32 filter; /* generation * MAX_FILTERS + filter index */
	__u32 _pad;
	__u64 value;
};

/* LPM trie key: the first 32 bits (filter) always take part. Strings are
 * stored with their NUL for exact matches and without it for prefixes;
 * addresses as family byte (4 or 6) + address. */
struct grain_hook_string_key {
	__u32 prefixlen;
	__u32 filter;
	__u8 data[GRAIN_HOOK_MATCH_LEN + 1];
	__u8 _pad[4];
};

struct grain_hook_counter {
	__u64 hits;          /* selected calls */
	__u64 events;        /* events sent */
	__u64 events_lost;   /* events the ring buffer had no room for */
	__u64 events_limited; /* events over the rule's rate limit */
	__u64 signals;
	__u64 count_errors;  /* count keys that did not fit the count map */
	__u64 sum;           /* count without labels: the sum, kept here */
};

/* Per CPU: calls that found another grain program running on their CPU
 * (an interrupt, or a preempted fentry/fexit program). */
struct grain_hook_nesting {
	__u64 nested;  /* served in a deeper scratch level */
	__u64 skipped; /* every level busy: the call was not looked at */
};

struct grain_hook_rate {
	__u64 window; /* second (boot time) of the current window */
	__u64 n;      /* events sent in it */
};

/* The first bytes of a count key, for rules with few label bytes: a
 * shorter key hashes faster. */
struct grain_hook_count_key_small {
	__u32 rule_id;
	__u32 _pad;
	__u8 labels[GRAIN_HOOK_SMALL_LABEL_BYTES];
};

struct grain_hook_count_key {
	__u32 rule_id;
	__u32 _pad;
	__u8 labels[GRAIN_HOOK_LABEL_BYTES];
};

struct grain_hook_count {
	__u64 calls;
	__u64 sum;
};

/* Per CPU and nesting level: the last count key and its calls not yet added
 * to the count map (write-combining). A call with the same key only adds
 * here; another key first adds these to the map (flush). Readers add the
 * map first and these after: a count moves only from here to the map, so a
 * read never counts it twice. The key changes under a sequence: seq moves
 * first, seq_end takes its value last; a copy read in field order whose
 * seq_end equals its seq saw no change under way. */
struct grain_hook_count_pending {
	__u64 seq_end;
	__u64 calls;   /* 0: nothing pending */
	/* Of calls, those counted at hand (count_at_hand), which also wait
	 * here to be added to their rule's hits: a cold call then touches no
	 * hook_counters line. The flush adds them; readers add what is
	 * pending. */
	__u64 hits;
	__u32 counter; /* hook_counters index of the key's rule (count_errors, hits) */
	/* The nesting level's guard (hook_nesting.h), here beside calls and a
	 * small key so a count at hand touches one per-CPU line: set by
	 * compare-and-swap when a program claims the level, cleared by it. */
	__u32 busy;
	struct grain_hook_count_key key;
	__u64 sum;
	__u64 seq;
	__u8 small; /* the key is a grain_hook_count_key_small (hook_counts_small) */
	/* To a multiple of 64 bytes: in hook_count_pending, whose values start
	 * page-aligned, each slot then starts a cache line, so a call touches
	 * the fewest lines and no line is shared between CPUs. */
	__u8 _pad[39];
};
_Static_assert(sizeof(struct grain_hook_count_pending) % 64 == 0, "count slots start cache lines");

/* Event: this header, then for each emitted argument a grain_hook_ev_arg
 * and its len bytes of data padded to 8. */
struct grain_hook_event {
	__u64 boot_ns;
	__u64 cgroup;
	__u32 rule_id;
	__u32 pid;
	__u32 tgid;
	__u32 ppid;
	__u32 uid;
	__u32 gid;
	__u16 size;   /* bytes of the whole event */
	__u8 nargs;
	__u8 flags;   /* GRAIN_HOOK_EV_* */
	__u16 hook;   /* slot */
	__u16 syscall; /* number, for syscall hooks */
	char comm[16];
};

struct grain_hook_ev_arg {
	__u8 slot;
	__u8 type;
	__u16 len;
	__u32 _pad;
};

/* One value read at a hook. Sockets and socket addresses: family (AF_*),
 * ports in host order, addresses (IPv4 in the first 4 bytes). */
struct grain_hook_val {
	__u64 num;
	__u16 family;
	__u16 sport;
	__u16 dport;
	__u16 len;    /* string bytes without NUL */
	__u8 saddr[16];
	__u8 daddr[16];
	char str[GRAIN_HOOK_STR_LEN];
};

#endif
