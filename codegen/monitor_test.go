package codegen

import (
	"testing"

	"github.com/grain-ebpf/grain/bpf"
)

const monitorSrc = `
web: {
	xdp: interfaces: ["eth0"]
	mode: "monitor"
	match: {protocol: "tcp", dport: 80}
	then: "drop"
}
ssh: {
	xdp: interfaces: ["eth0"]
	match: {protocol: "tcp", dport: 22}
	then: "drop"
}
canary: {
	syscall: "openat"
	args: [{index: 1, type: "user_string", name: "filename"}]
	match: args: filename: "/tmp/canary"
	mode: "monitor"
	signal: "SIGKILL"
}
`

// TestMonitorMode: a monitored drop rule's kernel action is would_drop
// (the packet program passes the packet), an enforced one's stays drop; a
// monitored kernel hook keeps its signal in the readable Plan but not in
// the kernel's rule, so the kernel sends none.
func TestMonitorMode(t *testing.T) {
	plan, err := Compile(load(t, monitorSrc), Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		verdict string
		action  uint8
	}{"web": {WouldDrop, bpf.ActionWouldDrop}, "ssh": {"drop", bpf.ActionDrop}}
	for i, r := range plan.Rules {
		w := want[r.Policy]
		if r.Verdict() != w.verdict || plan.Maps.Rules[i].Value.Action != w.action {
			t.Errorf("rule %s: verdict %q, kernel action %d; want %q, %d", r.Policy, r.Verdict(), plan.Maps.Rules[i].Value.Action, w.verdict, w.action)
		}
	}
	pr := plan.Hooks.Rules[0]
	kr := plan.Hooks.Maps.Rules[0].Value
	if !pr.Monitor || pr.Signal != "SIGKILL" || kr.Flags&bpf.HookRSignal != 0 || kr.Signal != 0 {
		t.Errorf("monitored hook: rule %+v, kernel flags %#x signal %d; want the signal named and not in the kernel's rule", pr, kr.Flags, kr.Signal)
	}

	// --monitor: every policy.
	plan, err = Compile(load(t, monitorSrc), Options{Monitor: true})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range plan.Rules {
		if r.Verdict() != WouldDrop || plan.Maps.Rules[i].Value.Action != bpf.ActionWouldDrop {
			t.Errorf("--monitor: rule %s verdict %q, kernel action %d; want would_drop", r.Policy, r.Verdict(), plan.Maps.Rules[i].Value.Action)
		}
	}
}
