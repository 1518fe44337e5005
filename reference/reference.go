// Package reference answers what grain's generic programs would do, in Go,
// without a kernel or root: the reference evaluator of a codegen.Plan.
//
// It reads the Plan's kernel form (Plan.Maps: the bitmaps, port classes,
// CIDR classes, rules and contents the engine copies into the maps
// verbatim), not its readable form, so what it checks are the bytes the
// kernel reads, and a wrong byte in codegen shows here as it would in the
// kernel. The readable form is used only to name things (policies, events,
// event fields).
//
// # Packets
//
//	p, err := reference.NewPacket(plan)
//	r := p.Judge(frame, "eth0")
//	// r.Verdict (Pass, Drop), r.Policy (the deciding policy, "" when none),
//	// r.Counted (the count policies the packet matched on its way),
//	// r.Events (the event of every matched policy that emits one),
//	// r.Unjudged (why the program did not judge it: not IP, truncated, ...)
//
// Judge mirrors the packet program (bpf/xdp.c, bpf/classify.h) stage by
// stage, one method per stage named after its C function: judgeGate
// (gate_fails), parse (parse), classify (classify_full), cidrBitmapIndex
// (cidr_bitmap_index), portLookup (port_lookup), tlsSNILookup and
// tlsSNIIndex (tls_sni_lookup, tls_sni_index of tls.h), ruleApply
// (rule_apply_inline), contentMatch (content_match), patternAt
// (pattern_at), eventFill and payloadCopy (event_fill, payload_copy). A
// change to the C program is made here in the function of the same name,
// and the differential test (packet_kernel_test.go) proves it was.
//
// Judge does not allocate: the Result and its slices belong to the Packet
// and hold until its next Judge, and an event's Payload is a slice of the
// frame. A Packet is not safe for concurrent use; make one per goroutine
// (NewPacket shares nothing mutable between them).
//
// What the kernel does over time is not modelled: an event is the one the
// rule sends before deduplication (emit.dedup) and the rate limit
// (emit.rate_limit) decide whether it is sent, and a lost event (a full
// ring buffer) is not lost here.
//
// # Kernel hooks
//
//	h, err := reference.NewHook(plan)
//	c := reference.Call{Kind: "syscall", Target: "openat", TGID: 40, UID: 1000, Comm: "cat"}
//	c.Args[1].Str = "/etc/passwd"
//	for _, r := range h.Call(c) {
//		// r.Policy selected the call; r.Event, r.Count, r.Signal are what
//		// it does with it
//	}
//
// Call mirrors the kernel-hook programs (bpf/hook.c, bpf/hook_filters.h):
// the hooks the call reaches, each hook's policies in order (hook_run),
// a policy's selectors ORed and their filters ANDed (ruleApply,
// filterHolds, with the trie lookups as longest-prefix matches, trieKey
// and lpmMatches), the values read by type (read), and the event fields
// and count labels as the hook's event reader decodes them (field). A
// cgroup is its path here (the kernel compares ids, which depend on the
// machine); exe, host and container are added in userspace and left out.
// Over time (rate limits) it models nothing, as for packets.
package reference

import (
	"fmt"

	"github.com/grain-ebpf/grain/codegen"
)

// planError says that a Plan is not one the programs could run.
func planError(format string, args ...any) error {
	return fmt.Errorf("reference: the plan "+format, args...)
}

// checkPlan refuses a nil plan.
func checkPlan(plan *codegen.Plan) error {
	if plan == nil {
		return fmt.Errorf("reference: no plan")
	}
	return nil
}
