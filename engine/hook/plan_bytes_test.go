package hook

import (
	"maps"
	"slices"
	"testing"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/engine/generation"
	"github.com/grain-ebpf/grain/internal/plantest"
)

// The engine writes the Plan's kernel-hook map entries as they are, adding
// only what depends on this machine: the hook's slot, mechanism and
// resolved arguments; the generation in keys and the epoch in rule ids
// (count_id is its hook's count_rule's id).
func TestHookWritesThePlanVerbatim(t *testing.T) {
	p := newTestHooks(t, Options{})
	plans := map[string]*codegen.Plan{}
	feats := p.Features()
	noFunctions := feats.Kprobes != nil && feats.FentryErr != nil
	for name, plan := range plantest.Examples(t, "../../examples") {
		if plan.Hooks == nil {
			continue
		}
		if noFunctions && slices.ContainsFunc(plan.Hooks.Hooks, func(h codegen.KernelHook) bool { return h.Kind == "kprobe" || h.Kind == "kretprobe" }) {
			t.Logf("%s: skipped: this kernel attaches neither kprobes nor fentry", name)
			continue
		}
		plans[name] = plan
	}
	plans["all filters"] = plantest.Compile(t, `
opens: {
	syscall: ["openat"]
	args: [{index: 1, type: "user_string", name: "filename"}, {index: 0, type: "int", name: "dfd"}]
	match: [
		{process: {comm: "grain-nothing", uid: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}, args: filename: {prefix: "/nonexistent/"}},
		{process: comm: ["a0", "a1", "a2", "a3", "a4", "a5", "a6", "a7", "a8"], args: dfd: ["1-2", "5-9"]},
	]
	emit: {event: "open", fields: ["comm", "filename", "dfd"], rate_limit: 3}
}
connects: {
	syscall: "connect"
	args: [{index: 1, type: "sockaddr", name: "addr"}]
	match: [{daddr: ["192.0.2.0/24", "2001:db8::/32"], dport: 9}]
	count: {metric: "grain.test.connects", by: ["tgid", "daddr"]}
}
execs: {
	tracepoint: "sched/sched_process_exec"
	count: {metric: "grain.test.execs", by: ["tgid", "comm"]}
}`)
	for name, plan := range plans {
		if err := p.Apply(plan); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		m := p.p.Maps()
		pm := &plan.Hooks.Maps
		gen := p.gen.Active()
		for i, h := range plan.Hooks.Hooks {
			a := p.hooks[h.Key()]
			var got bpf.Hook
			if err := m.Hooks.Lookup(gen*bpf.HookMaxHooks+uint32(a.slot), &got); err != nil {
				t.Fatal(err)
			}
			want := pm.Hooks[i].Value
			if got.Nargs != want.Nargs || got.Nrules != want.Nrules || got.Rules != want.Rules ||
				got.CountRule != want.CountRule || got.CountFields != want.CountFields {
				t.Errorf("%s: hook %d differs from the plan's", name, i)
			}
			wantID := uint32(0)
			if want.CountRule != 0 {
				wantID = generation.RuleID(p.gen.Epoch(), int(want.CountRule-1))
			}
			if got.CountId != wantID {
				t.Errorf("%s: hook %d has count_id %#x for count_rule %d", name, i, got.CountId, want.CountRule)
			}
			for j := range want.Nargs {
				g, w := got.Args[j], want.Args[j]
				if g.Source != w.Source || g.Index != w.Index || g.Type != w.Type && g.Type != bpf.HookTString {
					t.Errorf("%s: hook %d argument %d is %+v, planned %+v", name, i, j, g, w)
				}
			}
		}
		for i, r := range pm.Rules {
			var got bpf.HookRule
			if err := m.Rules.Lookup(gen*bpf.HookMaxRules+uint32(i), &got); err != nil {
				t.Fatal(err)
			}
			if got.Id != generation.RuleID(p.gen.Epoch(), i) {
				t.Errorf("%s: rule %d has id %#x", name, i, got.Id)
			}
			got.Id = 0
			if got != r.Value {
				t.Errorf("%s: rule %d differs from the plan's", name, i)
			}
		}
		wantValues, wantStrings := map[bpf.HookValueKey]bool{}, map[bpf.HookStringKey]bool{}
		for i, f := range pm.Filters {
			id := gen*bpf.HookMaxFilters + uint32(i)
			var got bpf.HookFilter
			if err := m.Filters.Lookup(id, &got); err != nil || got != f.Filter.Value {
				t.Errorf("%s: filter %d differs from the plan's", name, i)
			}
			for _, v := range f.Values {
				wantValues[bpf.HookValueKey{Filter: id, Value: v}] = true
			}
			for _, s := range f.Strings {
				key := s.Value
				key.Filter = id
				wantStrings[key] = true
			}
		}
		inGen := func(filter uint32) bool { return filter/bpf.HookMaxFilters == gen }
		var vk bpf.HookValueKey
		var one uint8
		gotValues := map[bpf.HookValueKey]bool{}
		for it := m.Values.Iterate(); it.Next(&vk, &one); {
			if inGen(vk.Filter) {
				gotValues[vk] = true
			}
		}
		var sk bpf.HookStringKey
		gotStrings := map[bpf.HookStringKey]bool{}
		for it := m.Strings.Iterate(); it.Next(&sk, &one); {
			if inGen(sk.Filter) {
				gotStrings[sk] = true
			}
		}
		if !maps.Equal(gotValues, wantValues) || !maps.Equal(gotStrings, wantStrings) {
			t.Errorf("%s: value or string keys differ from the plan's: values %d, want %d; strings %d, want %d",
				name, len(gotValues), len(wantValues), len(gotStrings), len(wantStrings))
		}
	}
}
