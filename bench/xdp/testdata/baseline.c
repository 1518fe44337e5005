//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Baselines for grain's per-packet benchmark, measured in the same run:
 * xdp_pass only returns XDP_PASS; xdp_workshop is a hand-written program
 * equivalent to the InGRAINd workshop probe: Ethernet/IPv4/TCP, a compare of
 * "HTTP/1.1" at a fixed offset (right after the TCP header), and on a match
 * {saddr, daddr, sport} to userspace (ring buffer) and XDP_DROP. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct report {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} reports SEC(".maps");

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("xdp")
int xdp_workshop(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *eth = data;
	if ((void *)(eth + 14) > data_end)
		return XDP_PASS;
	if (*(__u16 *)(eth + 12) != bpf_htons(0x0800))
		return XDP_PASS;
	__u8 *ip = eth + 14;
	if ((void *)(ip + 20) > data_end || ip[9] != 6)
		return XDP_PASS;
	__u32 ihl = (ip[0] & 0x0f) * 4;
	if (ihl < 20)
		return XDP_PASS;
	__u8 *tcp = ip + ihl;
	if ((void *)(tcp + 20) > data_end)
		return XDP_PASS;
	__u32 doff = (tcp[12] >> 4) * 4;
	if (doff < 20)
		return XDP_PASS;
	__u8 *payload = tcp + doff;
	if ((void *)(payload + 8) > data_end)
		return XDP_PASS;
	/* "HTTP/1.1" as a little-endian u64 */
	if (*(__u64 *)payload != 0x312e312f50545448ULL)
		return XDP_PASS;
	struct report *r = bpf_ringbuf_reserve(&reports, sizeof(*r), 0);
	if (r) {
		r->saddr = *(__u32 *)(ip + 12);
		r->daddr = *(__u32 *)(ip + 16);
		r->sport = bpf_ntohs(*(__u16 *)tcp);
		bpf_ringbuf_submit(r, 0);
	}
	return XDP_DROP;
}
