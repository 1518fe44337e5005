/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Limits and map layouts shared by grain's generic XDP program and its Go
 * loader. */
#ifndef GRAIN_H
#define GRAIN_H

#include <linux/types.h>

/* The constants are enums, not #defines: enums reach the object's BTF,
 * from which bpf/internal/genconst writes their Go names (limits.go), so
 * C is their one source. An enum's type name is not used elsewhere. */

enum grain_limits {
	/* Two generations of every rule table: the program reads the active
	 * one once per packet, userspace fills the other and flips. */
	GRAIN_GENERATIONS = 2,
	GRAIN_MAX_RULES = 2048,
	GRAIN_BITMAP_WORDS = GRAIN_MAX_RULES / 64,
	GRAIN_MAX_CONTENTS = 1024,        /* content slots per generation */
	GRAIN_MAX_CONTENTS_PER_RULE = 4,
	GRAIN_MAX_CONTENT_LEN = 64,       /* bytes of one pattern */
	GRAIN_SCAN_WINDOW = 1500,         /* bytes of L4 payload searched */
	GRAIN_PREFILTER_SPAN = 8,         /* prefilter bytes lie in pattern[0..8) */
	GRAIN_MAX_PORT_CLASSES = 2 * GRAIN_MAX_RULES + 2,
	/* Distinct address prefixes per generation (cidr_class entries),
	 * and distinct rule sets among them (their bitmaps): prefixes with
	 * the same rules share one bitmap, so a block list of many prefixes
	 * costs one bitmap, not one each. */
	GRAIN_MAX_CIDR_ENTRIES = 16384,
	GRAIN_MAX_CIDR_CLASSES = 2 * GRAIN_MAX_RULES,
	/* IPv4 prefixes longer than GRAIN_CIDR_INDEX_BITS are looked up in
	 * cidr_class, at most one lookup per length present under the
	 * address's index entry; shorter ones are folded into the entry. */
	GRAIN_CIDR_INDEX_BITS = 16,
	GRAIN_CIDR_INDEX_ENTRIES = 1 << GRAIN_CIDR_INDEX_BITS,
	GRAIN_MAX_IFACE_ENTRIES = 256,
	GRAIN_MAX_IPV6_EXT_HEADERS = 6,
	/* Bytes of L4 payload an event of a GRAIN_RULE_EMIT_PAYLOAD rule
	 * carries at most: a DNS header (12), the longest name (255) and the
	 * question's type and class (4), rounded up to 8. */
	GRAIN_EMIT_PAYLOAD_BYTES = 272,
	/* Bytes of L4 payload an event of a GRAIN_RULE_EMIT_HELLO rule (TLS
	 * fields) carries at most: a whole first segment at a 1500-byte MTU,
	 * rounded up so that its record's size is no whole number of events
	 * (below). */
	GRAIN_EMIT_HELLO_BYTES = 1512,
	/* tls_sni (tls.h): the longest server name matched (a DNS name in
	 * presentation form, without the trailing dot), the extensions of a
	 * ClientHello walked to find it, and the distinct names and
	 * "*.suffix" patterns of a generation. */
	GRAIN_TLS_MAX_NAME = 253,
	GRAIN_TLS_MAX_EXTENSIONS = 32,
	GRAIN_MAX_SNI_ENTRIES = 1024,
	/* Per-interface verdict counters: slot ifindex % GRAIN_IFACE_SLOTS
	 * when the engine gave that slot to the interface, else
	 * GRAIN_IFACE_SLOTS (every other interface). */
	GRAIN_IFACE_SLOTS = 256,
	GRAIN_VERDICTS = 4, /* indexed by GRAIN_ACTION_* */
};

/* Regions of the bitmaps array, per generation. */
enum grain_bitmap_regions {
	GRAIN_BITMAP_REGION_PROTO = 0,    /* [l4 protocol] */
	GRAIN_BITMAP_REGION_FLAGS = 256,  /* [tcp flags byte] */
	GRAIN_BITMAP_REGION_AUX = 512,    /* GRAIN_AUX_* */
	GRAIN_BITMAP_REGION_SPORT = GRAIN_BITMAP_REGION_AUX + 16, /* [source port class] */
	GRAIN_BITMAP_REGION_DPORT = GRAIN_BITMAP_REGION_SPORT + GRAIN_MAX_PORT_CLASSES,
	GRAIN_BITMAP_REGION_CIDR = GRAIN_BITMAP_REGION_DPORT + GRAIN_MAX_PORT_CLASSES, /* [cidr class] */
	GRAIN_BITMAP_REGION_SNI = GRAIN_BITMAP_REGION_CIDR + GRAIN_MAX_CIDR_CLASSES, /* [sni class] */
	GRAIN_BITMAPS_PER_GEN = GRAIN_BITMAP_REGION_SNI + GRAIN_MAX_SNI_ENTRIES,
};

/* Aux bitmaps: the rules that hold when a field has no value or no entry. */
enum grain_aux_bitmaps {
	GRAIN_AUX_SRC4_DEFAULT = 0,
	GRAIN_AUX_DST4_DEFAULT = 1,
	GRAIN_AUX_SRC6_DEFAULT = 2,
	GRAIN_AUX_DST6_DEFAULT = 3,
	GRAIN_AUX_IFACE_DEFAULT = 4,
	GRAIN_AUX_NO_PORTS = 5, /* packet without ports: rules with no port condition */
	GRAIN_AUX_NOT_TCP = 6,  /* packet without tcp flags: rules with no flag condition */
	GRAIN_AUX_ALL = 7,      /* every rule of the generation */
	GRAIN_AUX_NO_SNI = 8,   /* no server name, or none matched: rules with no tls_sni condition */
};

/* Fields a generation uses; a field no rule constrains is never looked up. */
enum grain_fields {
	GRAIN_FIELD_PROTO = 1 << 0,
	GRAIN_FIELD_SRC = 1 << 1,
	GRAIN_FIELD_DST = 1 << 2,
	GRAIN_FIELD_SPORT = 1 << 3,
	GRAIN_FIELD_DPORT = 1 << 4,
	GRAIN_FIELD_FLAGS = 1 << 5,
	GRAIN_FIELD_IFACE = 1 << 6,
	GRAIN_FIELD_SNI = 1 << 7,
};

/* Port-class array: one u16 class per (generation, direction, port). */
enum grain_port_dirs {
	GRAIN_PORT_DIR_SRC = 0,
	GRAIN_PORT_DIR_DST = 1,
};

/* CIDR lookups: key.field */
enum grain_cidr_fields {
	GRAIN_CIDR_SRC4 = 0,
	GRAIN_CIDR_DST4 = 1,
	GRAIN_CIDR_SRC6 = 2,
	GRAIN_CIDR_DST6 = 3,
};

enum grain_actions {
	GRAIN_ACTION_COUNT = 0,
	GRAIN_ACTION_DROP = 1,
	GRAIN_ACTION_PASS = 2,
	/* A drop rule of a policy in monitor mode: it decides the packet,
	 * counts and emits like GRAIN_ACTION_DROP, and the packet passes. */
	GRAIN_ACTION_WOULD_DROP = 3,
};

enum grain_rule_flags {
	GRAIN_RULE_EMIT = 1 << 0,
	/* The rule's events also carry the start of the L4 payload: a
	 * struct grain_event_payload instead of a struct grain_event. */
	GRAIN_RULE_EMIT_PAYLOAD = 1 << 1,
	/* The rule has a quick word: one masked compare of eight payload
	 * bytes that every packet it matches passes (the last eight bytes of
	 * an anchored, non-negated content), checked before any content is
	 * looked up. */
	GRAIN_RULE_QUICK = 1 << 2,
	/* The quick word is the rule's whole payload condition (its only
	 * content, anchored, at most eight bytes): no content is looked up. */
	GRAIN_RULE_QUICK_ONLY = 1 << 3,
	/* With GRAIN_RULE_EMIT_PAYLOAD: the event carries up to
	 * GRAIN_EMIT_HELLO_BYTES of payload (struct grain_event_hello), for
	 * the TLS fields. */
	GRAIN_RULE_EMIT_HELLO = 1 << 4,
};

/* Fields of an event that deduplication compares (grain_rule.dedup_fields):
 * those the policy's event carries. The interface and the address family
 * are always compared. */
enum grain_dedup_fields {
	GRAIN_DEDUP_SADDR = 1 << 0,
	GRAIN_DEDUP_DADDR = 1 << 1,
	GRAIN_DEDUP_SPORT = 1 << 2,
	GRAIN_DEDUP_DPORT = 1 << 3,
	GRAIN_DEDUP_PROTOCOL = 1 << 4,
	GRAIN_DEDUP_TCP_FLAGS = 1 << 5,
	GRAIN_DEDUP_LEN = 1 << 6,
};

enum grain_content_flags {
	GRAIN_CONTENT_NO_CASE = 1 << 0,
	GRAIN_CONTENT_NEGATE = 1 << 1,
	GRAIN_CONTENT_ANCHORED = 1 << 2,
};

/* Per-CPU counts of packets no rule judged, indices into the stats array
 * (what rules judge is in their own counters). */
enum grain_stats {
	GRAIN_STAT_NOT_IP = 0,
	GRAIN_STAT_MALFORMED = 1,
	GRAIN_STAT_NO_CONFIG = 2,
	GRAIN_STAT_MAX = 4,
};

/* A generation's gates (struct grain_gate), one per L4 protocol. */
enum grain_gates {
	GRAIN_GATE_TCP = 0,
	GRAIN_GATE_UDP = 1,
	GRAIN_GATES = 2,
};

/* Keeps every enum above in the object's BTF (clang emits an enum only
 * when a declaration uses it): xdp.c declares a pointer to it. */
struct grain_constants {
	enum grain_limits limits;
	enum grain_bitmap_regions bitmap_regions;
	enum grain_aux_bitmaps aux_bitmaps;
	enum grain_fields fields;
	enum grain_port_dirs port_dirs;
	enum grain_cidr_fields cidr_fields;
	enum grain_actions actions;
	enum grain_rule_flags rule_flags;
	enum grain_dedup_fields dedup_fields;
	enum grain_content_flags content_flags;
	enum grain_stats stats;
	enum grain_gates gates;
};

struct grain_bitmap {
	__u64 w[GRAIN_BITMAP_WORDS];
	__u64 nonzero; /* bit i set when w[i] != 0 */
};

struct grain_gen_config {
	__u32 nrules;
	__u32 fields;           /* GRAIN_FIELD_* */
	__u8 n_src6, n_dst6;
	/* distinct IPv6 prefix lengths per field, longest first (IPv4 has
	 * the cidr_index array instead) */
	__u8 src6_lens[129];
	__u8 dst6_lens[129];
	__u8 _pad[4];
	/* With up to 64 rules: word 0 of each protocol's bitmap (the protocol
	 * field's candidates without a bitmap lookup) */
	__u64 proto_w0[256];
	/* With up to 64 rules: word 0 of the GRAIN_AUX_NO_SNI bitmap, the
	 * candidates of a packet that is no ClientHello without a lookup */
	__u64 no_sni_w0;
};

/* A generation's gate for one L4 protocol (GRAIN_GATE_TCP, _UDP): eight
 * payload bytes ending at payload offset end, loaded as a little-endian
 * word and masked, that every packet some rule of the generation matches
 * has equal to pattern. Every rule that admits the protocol has a quick
 * word ending there (an anchored content), and the mask keeps the bits on
 * which all of them agree. A plain IPv4 or IPv6 packet of that protocol
 * that fails the gate (or is too short for it) can match no rule, and is
 * passed before the full parse. end == 0: no gate, every packet takes the
 * full path. */
struct grain_gate {
	__u16 end;
	__u16 _pad[3];
	__u64 mask;
	__u64 pattern;
	__u64 _pad2; /* 32 bytes: the lookup shifts instead of multiplying */
};

/* The one element of the active map: which generation is in force, and
 * each generation's gates and config, so that one lookup per packet gives
 * all of them (the gates first, in the cache line of the generation).
 * Userspace writes the inactive generation's config, then flips the
 * generation; each write rewrites the rest of the value with the bytes it
 * already holds. */
struct grain_active {
	__u32 generation;
	__u32 _pad;
	struct grain_gate gate[GRAIN_GENERATIONS][GRAIN_GATES];
	struct grain_gen_config config[GRAIN_GENERATIONS];
};

/* One cidr_index entry: what the IPv4 prefixes of a field say about the
 * addresses of one /16 (GRAIN_CIDR_INDEX_BITS). */
struct grain_cidr_index {
	/* 1 + the cidr class of the longest prefix of at most 16 bits that
	 * contains the /16; 0: none does */
	__u16 short_class;
	/* bit k set: some prefix of 32 - k bits (17..32) lies in the /16, so
	 * the lowest bit set is the longest length to look up */
	__u16 long_lens;
};

struct grain_cidr_key {
	__u8 generation;
	__u8 field;
	__u8 prefixlen;
	__u8 _pad;
	__u8 addr[16]; /* masked to prefixlen; IPv4 in the first 4 bytes */
};

/* An sni_class key (bpf/tls.h): the generation, then the server name
 * lowercased and reversed, then a zero byte; prefixlen counts the bits
 * compared. "*.example.com" is the reversed ".example.com" without the zero
 * byte. */
struct grain_sni_key {
	__u32 prefixlen;
	__u8 generation;
	__u8 name[GRAIN_TLS_MAX_NAME + 2];
};

struct grain_iface_key {
	__u32 generation;
	__u32 ifindex;
};

struct grain_rule {
	__u8 action;
	__u8 flags;          /* GRAIN_RULE_* */
	__u8 ncontents;
	__u8 _pad;
	__u32 id;            /* stable id userspace maps to a policy name */
	__u16 contents[GRAIN_MAX_CONTENTS_PER_RULE];
	/* GRAIN_RULE_QUICK: the eight payload bytes ending at quick_end,
	 * loaded as a little-endian word and masked, equal quick_pattern */
	__u16 quick_end;
	__u16 _pad2[3];
	__u64 quick_mask;
	__u64 quick_pattern;
	/* GRAIN_RULE_EMIT: an event equal, in dedup_fields, to the last one
	 * this rule sent on this CPU less than dedup_ns ago is counted, not
	 * sent (0: every event is sent) */
	__u64 dedup_ns;
	__u8 dedup_fields;   /* GRAIN_DEDUP_* */
	__u8 _pad3[3];
	/* GRAIN_RULE_EMIT: at most this many events a second, across CPUs
	 * (rate_windows); 0: no limit */
	__u32 rate_limit;
	__u8 _pad4[8];       /* 64 bytes: the lookup shifts instead of multiplying */
};

/* A rule's event count in the current second (grain_rule.rate_limit). */
struct grain_rate {
	__u64 window; /* second of the coarse monotonic clock */
	__u64 n;      /* events let through in it */
};

struct grain_content {
	/* pattern bytes pre-masked; compare (packet & mask) == pattern */
	__u8 pattern[GRAIN_MAX_CONTENT_LEN];
	__u8 mask[GRAIN_MAX_CONTENT_LEN];
	__u16 len;
	__u16 offset;        /* first payload byte searched */
	__u16 end;           /* one past the last payload byte searched */
	__u8 flags;          /* GRAIN_CONTENT_* */
	/* two pattern bytes checked eight positions at a time */
	__u8 pre1_index, pre2_index;
	__u8 pre1_byte, pre2_byte;
	__u8 pre1_mask, pre2_mask;
	__u8 _pad[5];
	/* pattern bytes [len-8, len) as one little-endian word (for len < 8,
	 * the low bytes are masked out) */
	__u64 tail_pattern;
	__u64 tail_mask;
};

struct grain_iface_counter {
	__u32 ifindex; /* written by the engine: the interface this slot counts */
	__u32 _pad;
	__u64 packets[GRAIN_VERDICTS];
	__u64 bytes[GRAIN_VERDICTS];
};

/* The fields of the last event a rule sent on a CPU. All are recorded;
 * deduplication compares those of the rule's dedup_fields, the interface
 * and the family. */
struct grain_dedup_key {
	/* 8-aligned: compared as 64-bit words (the layout is the same) */
	__u8 saddr[16] __attribute__((aligned(8)));
	__u8 daddr[16];
	__u32 ifindex;
	__u32 len;
	__u16 sport;
	__u16 dport;
	__u8 family;
	__u8 protocol;
	__u8 tcp_flags;
	__u8 _pad;
};

struct grain_counter {
	__u64 packets;
	__u64 bytes;
	__u64 events;
	__u64 events_lost;
	__u64 events_deduplicated; /* counted, not sent (grain_rule.dedup_ns) */
	__u64 events_rate_limited; /* counted, not sent (grain_rule.rate_limit) */
	/* deduplication's state: the last event sent, when its window ends,
	 * and the repeats counted since */
	__u64 dedup_until_ns;
	__u32 dedup_repeats;
	__u32 _pad;
	struct grain_dedup_key dedup_key;
};

struct grain_event {
	/* CLOCK_MONOTONIC_COARSE (bpf_ktime_get_coarse_ns): resolution one
	 * scheduler tick; the precise clock cost ~13 ns per event here. An
	 * event of a rule without deduplication or rate limit has the time of
	 * its batch's first event, at most 1 ms before its own (bpf/xdp.c). */
	__u64 time_ns;
	__u32 rule_id;
	__u32 generation;
	__u32 ifindex;
	__u32 packet_len;
	__u8 family;         /* 4 or 6 */
	__u8 protocol;
	__u8 verdict;        /* GRAIN_ACTION_* */
	__u8 tcp_flags;
	__u16 sport;         /* host order */
	__u16 dport;
	__u8 saddr[16];
	__u8 daddr[16];
	/* identical events this rule counted but did not send on this CPU
	 * since it last sent this one (grain_rule.dedup_ns) */
	__u32 repeated;
	/* the rule's rule_counters key: a batch that finds the ring buffer
	 * full counts each of its events lost to its rule (bpf/xdp.c) */
	__u32 counter_key;
};

/* The event of a rule that asked for payload bytes. */
struct grain_event_payload {
	struct grain_event ev;
	__u16 payload_len;   /* bytes of payload[] that hold packet bytes */
	__u16 _pad[3];
	__u8 payload[GRAIN_EMIT_PAYLOAD_BYTES];
};

/* The event of a rule whose fields need the TLS ClientHello. */
struct grain_event_hello {
	struct grain_event ev;
	__u16 payload_len;   /* bytes of payload[] that hold packet bytes */
	__u16 _pad[3];
	__u8 payload[GRAIN_EMIT_HELLO_BYTES];
};

/* Userspace tells a record by its size: a batch of staged events is a
 * whole number of them, a payload or hello event never is. */
_Static_assert(sizeof(struct grain_event_payload) % sizeof(struct grain_event) != 0, "payload event size");
_Static_assert(sizeof(struct grain_event_hello) % sizeof(struct grain_event) != 0, "hello event size");

#endif
