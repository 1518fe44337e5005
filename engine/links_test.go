package engine

import (
	"maps"
	"testing"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/internal/pktbuild"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// A link's interface bitmap is the OR of the bitmaps of every entry whose
// name or pattern matches the link's name.
func TestInterfaceRules(t *testing.T) {
	vmtest.HostOnly(t, "bitmaps computed in userspace")
	entry := func(name string, rules codegen.RuleSet) codegen.InterfaceBitmap {
		return codegen.InterfaceBitmap{Interface: name, Bitmap: codegen.Kernel[bpf.Bitmap]{Value: codegen.BitmapOf(rules)}}
	}
	entries := []codegen.InterfaceBitmap{
		entry("veth*", codegen.RuleSet{0, 2}),
		entry("veth1", codegen.RuleSet{1, 2}),
		entry("eth?", codegen.RuleSet{3}),
		entry("lo", codegen.RuleSet{}),
	}
	got := interfaceBitmaps(entries, map[string]uint32{"veth0": 10, "veth1": 11, "eth0": 12, "eth10": 13, "lo": 1})
	want := map[uint32]bpf.Bitmap{}
	for idx, rules := range map[uint32]codegen.RuleSet{10: {0, 2}, 11: {0, 1, 2}, 12: {3}, 1: nil} {
		want[idx] = codegen.BitmapOf(rules)
	}
	if !maps.Equal(got, want) {
		t.Errorf("interfaceBitmaps = %v, want %v (eth10 matches no entry)", got, want)
	}
}

// Patterns in the plan, resolved against the interfaces given to
// ApplyTables, decide the verdict of a packet on lo.
func TestXDPInterfacePatterns(t *testing.T) {
	syn := pktbuild.TCP4("10.0.0.2", "10.0.0.1", 40000, 22, pktbuild.SYN, nil)
	for _, c := range []struct {
		policy string
		want   uint32
	}{
		{`p: {xdp: interfaces: ["l*", "grain-other0"], then: "drop"}`, xdpDrop},
		{`p: {xdp: interfaces: ["l*", "grain-other0"], match: interface: "l?", then: "drop"}`, xdpDrop},
		{`p: {xdp: interfaces: ["l*", "grain-other0"], match: interface: "grain-*", then: "drop"}`, xdpPass},
		{`p: {xdp: interfaces: ["l*", "grain-*"], match: interface: "lo", then: "drop"}`, xdpDrop},
		{`p: {xdp: interfaces: ["l*", "grain-*"], match: interface: "grain-other0", then: "drop"}`, xdpPass},
		// Two rules: the pass rule applies to lo through "lo", the drop
		// rule through "l*"; both bits are set for lo, pass runs first.
		{`a: {priority: 1, xdp: interfaces: ["lo"], then: "pass"}
b: {priority: 2, xdp: interfaces: ["l*"], then: "drop"}`, xdpPass},
		{`a: {priority: 1, xdp: interfaces: ["grain-*"], then: "pass"}
b: {priority: 2, xdp: interfaces: ["l*"], then: "drop"}`, xdpDrop},
	} {
		e := applyPolicy(t, c.policy)
		if got := runXDP(t, e, syn.Bytes()); got != c.want {
			t.Errorf("%s: %s on lo, want %s", c.policy, verdictName(got), verdictName(c.want))
		}
	}
}
