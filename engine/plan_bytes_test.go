package engine

import (
	"testing"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/engine/generation"
	"github.com/grain-ebpf/grain/internal/plantest"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// The engine writes the Plan's XDP map entries as they are: every entry
// read back from the generation in force equals the Plan's, with only the
// generation in keys, the epoch in rule ids and the interface indexes
// added.
func TestXDPWritesThePlanVerbatim(t *testing.T) {
	vmtest.HostOnly(t, "map entries read back as written on every kernel")
	e := testEngine(t)
	plans := plantest.Examples(t, "../examples")
	plans["all fields"] = plantest.Compile(t, `
a: {priority: 1, xdp: interfaces: ["lo", "grain-*"], match: {interface: "lo", saddr: ["10.0.0.0/8", "fd00::/8"], dport: "1-100", payload: [{startswith: "GET "}, {contains: "x", nocase: true}]}, then: "drop", emit: {event: "e", fields: ["saddr", "dport"], dedup: "1s"}}
b: {priority: 2, xdp: interfaces: ["lo", "grain-*"], match: {interface: "grain-*", daddr: "192.168.0.0/16", sport: [53, 5353], tcp_flags: ["syn", "!ack"]}, then: "count", emit: {event: "f", rate_limit: 5}}
c: {priority: 3, xdp: interfaces: ["lo", "grain-*"], match: {protocol: "udp", payload: {startswith: "|00 01|"}}, then: "pass"}`)
	ifindex := map[string]uint32{"eth0": 2, "lo": loIndex, "grain-other0": 4242}
	for name, plan := range plans {
		if err := e.ApplyTables(plan, ifindex); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		m := e.XDP().Maps()
		pm := &plan.Maps
		var act bpf.Active
		if err := m.Active.Lookup(uint32(0), &act); err != nil {
			t.Fatal(err)
		}
		gen := act.Generation
		if act.Config[gen] != pm.Config.Value || act.Gate[gen] != pm.Gates.Value {
			t.Errorf("%s: generation config or gates differ from the plan's", name)
		}
		differ := func(what string, index int) { t.Errorf("%s: %s %d differs from the plan's", name, what, index) }
		for _, run := range pm.Bitmaps {
			for index := run.First; index <= run.Last; index++ {
				var b bpf.Bitmap
				if err := m.Bitmaps.Lookup(gen*bpf.BitmapsPerGen+uint32(index), &b); err != nil || b != run.Bitmap.Value {
					differ("bitmap", index)
				}
			}
		}
		for dir, runs := range [][]codegen.PortRun{pm.SourcePorts, pm.DestinationPorts} {
			for _, run := range runs {
				for port := run.First; port <= run.Last; port++ {
					var class uint16
					if err := m.PortClass.Lookup((gen*2+uint32(dir))*65536+uint32(port), &class); err != nil || class != run.Class {
						differ("port", port)
					}
				}
			}
		}
		for i, c := range pm.CIDRs {
			key := c.Key.Value
			key.Generation = uint8(gen)
			var class uint32
			if err := m.CIDRClass.Lookup(key, &class); err != nil || class != c.Class {
				differ("cidr entry", i)
			}
		}
		// The whole index of the generation: entries the plan does not
		// have are zero, whatever an earlier plan wrote there.
		for dir, runs := range [][]codegen.CIDRIndexRun{pm.SourceIndex4, pm.DestinationIndex4} {
			want := make([]bpf.CIDRIndex, bpf.CIDRIndexEntries)
			for _, run := range runs {
				for i := run.First; i <= run.Last; i++ {
					want[i] = run.Entry.Value
				}
			}
			for i := range want {
				var got bpf.CIDRIndex
				if err := m.CIDRIndex.Lookup((gen*2+uint32(dir))*bpf.CIDRIndexEntries+uint32(i), &got); err != nil || got != want[i] {
					differ("address index entry", i)
					break
				}
			}
		}
		for link, idx := range ifindex {
			var want bpf.Bitmap
			matched := false
			for _, ib := range pm.Interfaces {
				if codegen.InterfaceMatches(ib.Interface, link) {
					for w := range want.W {
						want.W[w] |= ib.Bitmap.Value.W[w]
					}
					want.Nonzero |= ib.Bitmap.Value.Nonzero
					matched = true
				}
			}
			var got bpf.Bitmap
			err := m.IfaceBitmaps.Lookup(bpf.IfaceKey{Generation: gen, Ifindex: idx}, &got)
			if matched && (err != nil || got != want) || !matched && err == nil {
				t.Errorf("%s: interface bitmap of %s differs from the plan's", name, link)
			}
		}
		for i, c := range pm.Contents {
			var got bpf.Content
			if err := m.Contents.Lookup(gen*bpf.MaxContents+uint32(i), &got); err != nil || got != c.Value {
				differ("content", i)
			}
		}
		for i, r := range pm.Rules {
			var got bpf.Rule
			if err := m.Rules.Lookup(gen*bpf.MaxRules+uint32(i), &got); err != nil {
				t.Fatal(err)
			}
			if got.Id != generation.RuleID(e.gen.Epoch(), i) {
				t.Errorf("%s: rule %d has id %#x, want epoch %d index %d", name, i, got.Id, e.gen.Epoch(), i)
			}
			got.Id = 0
			if got != r.Value {
				differ("rule", i)
			}
		}
	}
}
