//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// dropall: the floor of the veth benchmark. xdp_drop_all drops every packet
// without reading it, so what it costs is the cost of running any XDP program
// on a veth at all: grain's and iptables' figures on dropped traffic are
// compared to it. xdp_pass_all passes every packet: it shows what attaching
// XDP to a veth adds to traffic that goes on to the stack (veth then receives
// through NAPI and GRO instead of the backlog queue).
#include <linux/bpf.h>

#define SEC(name) __attribute__((section(name), used))

SEC("xdp")
int xdp_drop_all(struct xdp_md *ctx)
{
	return XDP_DROP;
}

SEC("xdp")
int xdp_pass_all(struct xdp_md *ctx)
{
	return XDP_PASS;
}

// The same two verdicts at tc ingress (tcx), which runs on the skb the stack
// already has: no conversion to an xdp_buff and no change of veth's receive
// path. Informational, to compare the hook grain could use instead of XDP.
#define TCX_PASS 0
#define TCX_DROP 2

SEC("tc")
int tc_drop_all(struct __sk_buff *skb)
{
	return TCX_DROP;
}

SEC("tc")
int tc_pass_all(struct __sk_buff *skb)
{
	return TCX_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
