/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The server name (SNI) of a TLS ClientHello, for the tls_sni field of the
 * packet program. Part of classify.h, included once per hook (FN, CTX).
 *
 * What is read: the first TCP segment of the hello only, within the IP
 * length and the linear frame (no reassembly). The record header (type 22,
 * version 3.x), the handshake header (ClientHello), the session id, the
 * cipher suites and compression methods are skipped by their lengths; then
 * at most GRAIN_TLS_MAX_EXTENSIONS extensions are walked, in one bounded
 * loop, until server_name (type 0). Its first name must be a host_name of
 * 1 to GRAIN_TLS_MAX_NAME bytes (one trailing dot ignored), wholly inside
 * the segment, without a zero byte. Anything else (not a hello, truncated,
 * malformed, the name in a later segment, past the extensions walked) gives
 * no name: the packet meets only the rules without a tls_sni condition.
 *
 * Matching: the name, lowercased (ASCII) and reversed byte by byte, behind
 * the generation byte and followed by a zero byte, is looked up in the
 * sni_class longest-prefix-match trie, whose entries codegen writes:
 * "example.com" as the reversed name and its zero byte (only that name),
 * "*.example.com" as the reversed ".example.com" (every name that ends in
 * it at a label boundary, at any depth, not example.com itself). The
 * longest entry that matches holds the rules of every entry that does (as
 * the CIDR classes do), so one lookup gives the candidates. */

#ifndef GRAIN_TLS_ONCE
#define GRAIN_TLS_ONCE

/* The key being built, per CPU: the LPM key, and room for the last word
 * written past its end. */
struct sni_scratch {
	struct grain_sni_key key;
	__u8 _spill[11];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sni_scratch);
} sni_scratch SEC(".maps");

/* Bit 7 of each byte set where the byte is an ASCII capital letter. */
static __always_inline __u64 ascii_upper(__u64 w)
{
	__u64 low7 = w & REPEAT8(0x7f);
	__u64 above_z = low7 + REPEAT8(0x7f - 'Z');
	__u64 from_a = low7 + REPEAT8(0x80 - 'A');
	return (from_a ^ above_z) & ~w & HIGH_BITS;
}

#endif

/* The big-endian 16-bit value at frame offset off, or -1 when it does not
 * lie before end (and in the frame). */
static __always_inline int FN(tls_be16)(CTX *ctx, __u32 off, __u32 end)
{
	void *data = CTX_DATA(ctx);
	void *data_end = CTX_DATA_END(ctx);
	if (off > MAX_FRAME_OFF || off + 2 > end)
		return -1;
	bound_offset(off);
	__u8 *p = data + off;
	if ((void *)(p + 2) > data_end)
		return -1;
	return (p[0] << 8) | p[1];
}

/* The eight packet bytes that end at frame offset end, byte-swapped (the
 * last one first), or 0 when they are out of reach. */
static __always_inline __u64 FN(tls_name_word)(CTX *ctx, __u32 end)
{
	void *data = CTX_DATA(ctx);
	void *data_end = CTX_DATA_END(ctx);
	__u32 src = end - 8;
	if (end < 8 || src > MAX_FRAME_OFF)
		return 0;
	bound_offset(src);
	__u8 *q = data + src;
	if ((void *)(q + 8) > data_end)
		return 0;
	return __builtin_bswap64(*(__u64 *)q);
}

/* Where the server_name extension of the ClientHello in the TCP payload
 * [off, end) lies: its body's start << 16 | its end (frame offsets), or 0
 * when there is none to read. A global function: verified once, and only
 * hellos reach it. The packet program calls it and tls_sni_name_index
 * one after the other, not one from the other: a deeper chain of calls
 * takes more than the 512 bytes of stack Linux 6.1 allows in all. */
__noinline __u32 FN(tls_sni_find)(CTX *ctx, __u32 off, __u32 end)
{
	const __u32 none = 0;
	void *data = CTX_DATA(ctx);
	void *data_end = CTX_DATA_END(ctx);
	if (off > MAX_FRAME_OFF || end > MAX_FRAME_OFF || end < off + 44)
		return none;
	bound_offset(off);
	__u8 *h = data + off;
	if ((void *)(h + 44) > data_end)
		return none;
	/* record: handshake, version 3.x; handshake: ClientHello */
	if (h[0] != 22 || h[1] != 3 || h[5] != 1)
		return none;
	/* The hello ends where its length or its record's says, or where the
	 * segment does. */
	__u32 record_end = off + 5 + ((__u32)h[3] << 8 | h[4]);
	__u32 hello_end = off + 9 + ((__u32)h[6] << 16 | (__u32)h[7] << 8 | h[8]);
	if (record_end < end)
		end = record_end;
	if (hello_end < end)
		end = hello_end;
	__u32 sid = h[43];
	if (sid > 32)
		return none;
	__u32 pos = off + 44 + sid;
	int n = FN(tls_be16)(ctx, pos, end); /* cipher suites */
	if (n < 0)
		return none;
	pos += 2 + n;
	if (pos > MAX_FRAME_OFF || pos + 1 > end)
		return none;
	bound_offset(pos);
	__u8 *c = data + pos;
	if ((void *)(c + 1) > data_end)
		return none;
	pos += 1 + *c; /* compression methods */
	n = FN(tls_be16)(ctx, pos, end);
	if (n < 0)
		return none;
	pos += 2;
	if (pos + n < end)
		end = pos + n; /* the extensions' end */

	int found = 0;
	__u32 ext_len = 0;
	for (__u32 i = 0; i < GRAIN_TLS_MAX_EXTENSIONS; i++) {
		int type = FN(tls_be16)(ctx, pos, end);
		int len = FN(tls_be16)(ctx, pos + 2, end);
		if (type < 0 || len < 0)
			return none;
		pos += 4;
		if (type == 0) {
			found = 1;
			ext_len = len;
			break;
		}
		pos += len;
	}
	if (!found || pos + ext_len > end)
		return none;
	/* Nothing more here: the loop leaves at up to
	 * GRAIN_TLS_MAX_EXTENSIONS places, and the verifier checks what
	 * follows once for each. */
	return pos << 16 | (pos + ext_len);
}

/* The bitmaps index of the server_name extension's body [pos, end): its
 * first name, looked up in sni_class. */
__noinline __u32 FN(tls_sni_name_index)(CTX *ctx, __u32 pos, __u32 end, __u32 gen)
{
	const __u32 none = GRAIN_BITMAP_REGION_AUX + GRAIN_AUX_NO_SNI;
	void *data = CTX_DATA(ctx);
	void *data_end = CTX_DATA_END(ctx);
	if (end > MAX_FRAME_OFF)
		return none;
	/* server_name_list length, name type 0 (host_name), name length */
	if (pos > MAX_FRAME_OFF || pos + 5 > end)
		return none;
	bound_offset(pos);
	__u8 *s = data + pos;
	if ((void *)(s + 5) > data_end || s[2] != 0)
		return none;
	__u32 name_len = (__u32)s[3] << 8 | s[4];
	__u32 name_end = pos + 5 + name_len;
	if (name_end > end || name_end > MAX_FRAME_OFF || name_len == 0)
		return none;
	__u32 last_off = name_end - 1;
	bound_offset(last_off);
	__u8 *last = data + last_off;
	if ((void *)(last + 1) > data_end)
		return none;
	if (*last == '.') {
		name_len--;
		name_end--;
	}
	if (name_len == 0 || name_len > GRAIN_TLS_MAX_NAME)
		return none;

	__u32 zero = 0;
	struct sni_scratch *sc = bpf_map_lookup_elem(&sni_scratch, &zero);
	if (!sc)
		return none;
	sc->key.prefixlen = 8 * (1 + name_len + 1);
	sc->key.generation = gen;
	/* Word k of the key's name holds name bytes [len-8k-8, len-8k)
	 * reversed: one byte swap of the packet word that ends there (a call:
	 * the loop's body stays a few instructions for the verifier). The
	 * whole words first, then the word that holds the name's first
	 * bytes, masked to them so that the zero byte after the name ends
	 * the key (a zero word when the name is whole words). The words read
	 * lie after the hello's headers. No branch depends on how much of a
	 * word is name: the verifier would follow each range of the length
	 * through every later word. */
	__u32 whole = name_len / 8;
	for (__u32 k = 0; k < GRAIN_TLS_MAX_NAME / 8; k++) {
		if (k >= whole)
			break;
		__u64 w = FN(tls_name_word)(ctx, name_end - k * 8);
		/* a zero byte inside the name (or a word out of reach): no name */
		if (zero_bytes(w))
			return none;
		w |= ascii_upper(w) >> 2;
		*(__u64 *)(sc->key.name + k * 8) = w;
	}
	__u32 left = name_len & 7;
	__u64 keep = (1ULL << (left * 8)) - 1;
	__u64 w = FN(tls_name_word)(ctx, name_end - whole * 8);
	if (zero_bytes(w | ~keep))
		return none;
	w &= keep;
	w |= ascii_upper(w) >> 2;
	*(__u64 *)(sc->key.name + (whole & 31) * 8) = w;
	__u32 *cls = bpf_map_lookup_elem(&sni_class, &sc->key);
	if (!cls || *cls >= GRAIN_MAX_SNI_ENTRIES)
		return none;
	return GRAIN_BITMAP_REGION_SNI + *cls;
}

/* Whether a parsed packet's TCP payload starts like a ClientHello record:
 * only such a payload is looked at further. */
static __always_inline int FN(tls_hello_start)(CTX *ctx, const struct pkt_meta *m)
{
	void *data = CTX_DATA(ctx);
	void *data_end = CTX_DATA_END(ctx);
	__u32 off = m->payload_off;
	if (m->protocol != IPPROTO_TCP || off > MAX_FRAME_OFF)
		return 0;
	bound_offset(off);
	__u8 *h = data + off;
	return (void *)(h + 6) <= data_end && h[0] == 22 && h[5] == 1;
}

/* The bitmaps index of the tls_sni candidates of a packet whose payload
 * starts like a hello (tls_hello_start). */
static __always_inline __u32 FN(tls_sni_index)(CTX *ctx, const struct pkt_meta *m, __u32 gen)
{
	__u32 ext = FN(tls_sni_find)(ctx, m->payload_off, m->payload_end);
	if (!ext)
		return GRAIN_BITMAP_REGION_AUX + GRAIN_AUX_NO_SNI;
	return FN(tls_sni_name_index)(ctx, ext >> 16, ext & 0xffff, gen);
}

/* The bitmaps index of the tls_sni candidates of a parsed packet. */
static __always_inline __u32 FN(tls_sni_lookup)(CTX *ctx, const struct pkt_meta *m, __u32 gen)
{
	if (!FN(tls_hello_start)(ctx, m))
		return GRAIN_BITMAP_REGION_AUX + GRAIN_AUX_NO_SNI;
	return FN(tls_sni_index)(ctx, m, gen);
}
