// Package plandiff compares two policy trees for review: policies added,
// removed and changed field by field, the packet rules' order, attach
// points and interfaces, the kernel features newly needed, and, given
// frames, every verdict or deciding policy that changes between the two
// Plans (replayed on the reference evaluator).
package plandiff

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"reflect"
	"slices"
	"strings"

	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/pcap"
	"github.com/grain-ebpf/grain/policies"
	"github.com/grain-ebpf/grain/reference"
)

// Tree is one side of a comparison: a loaded tree and its Plan.
type Tree struct {
	// Name is how the output calls it: a directory or a revision.
	Name     string
	Policies []policies.Policy
	Plan     *codegen.Plan
	// Pipeline is the tree's event pipeline, nil when it has none.
	Pipeline *policies.Pipeline
}

// PolicyRef names a policy and where it is declared.
type PolicyRef struct {
	Name     string `json:"name"`
	Position string `json:"position"`
}

// FieldChange is one field of a policy that differs: "" is absent.
type FieldChange struct {
	Field string `json:"field"`
	Old   string `json:"old"`
	New   string `json:"new"`
}

// PolicyChange is a policy in both trees whose fields differ.
type PolicyChange struct {
	PolicyRef
	Fields []FieldChange `json:"fields"`
}

// Diff is what differs between two trees.
type Diff struct {
	Old, New string
	Added    []PolicyRef
	Removed  []PolicyRef
	Changed  []PolicyChange
	// OrderOld and OrderNew are the packet policies both trees have, in
	// rule order, when that order differs; nil otherwise.
	OrderOld, OrderNew []string
	// Interfaces and kernel hooks (attach points) added and removed.
	InterfacesAdded, InterfacesRemoved []string
	HooksAdded, HooksRemoved           []string
	// FeaturesNeeded are kernel features the new tree needs that the old
	// one did not.
	FeaturesNeeded []string
	// Pipeline lists the event pipeline's stages that differ.
	Pipeline []FieldChange
	// Replay holds the frames replayed through both Plans, when asked.
	Replay *Replay
}

// Compare compares two trees.
func Compare(old, new Tree) *Diff {
	d := &Diff{Old: old.Name, New: new.Name}
	byName := func(ps []policies.Policy) map[string]policies.Policy {
		m := make(map[string]policies.Policy, len(ps))
		for _, p := range ps {
			m[p.Name] = p
		}
		return m
	}
	om, nm := byName(old.Policies), byName(new.Policies)
	for _, name := range slices.Sorted(maps.Keys(nm)) {
		np := nm[name]
		op, ok := om[name]
		if !ok {
			d.Added = append(d.Added, PolicyRef{name, np.Pos.String()})
			continue
		}
		if fc := compareFields(fieldsOf(op), fieldsOf(np)); len(fc) > 0 {
			d.Changed = append(d.Changed, PolicyChange{PolicyRef{name, np.Pos.String()}, fc})
		}
	}
	for _, name := range slices.Sorted(maps.Keys(om)) {
		if _, ok := nm[name]; !ok {
			d.Removed = append(d.Removed, PolicyRef{name, om[name].Pos.String()})
		}
	}
	oo, no := commonOrder(old.Plan, nm), commonOrder(new.Plan, om)
	if !slices.Equal(oo, no) {
		d.OrderOld, d.OrderNew = oo, no
	}
	d.InterfacesAdded, d.InterfacesRemoved = setDiff(interfaces(old.Plan), interfaces(new.Plan))
	d.HooksAdded, d.HooksRemoved = setDiff(hooks(old.Plan), hooks(new.Plan))
	d.FeaturesNeeded, _ = setDiff(Features(old.Plan), Features(new.Plan))
	d.Pipeline = compareFields(pipelineFields(old.Pipeline), pipelineFields(new.Pipeline))
	return d
}

// pipelineFields lists the stages of an event pipeline, each as a field.
func pipelineFields(p *policies.Pipeline) []field {
	if p == nil {
		return nil
	}
	var out []field
	add := func(path string, v any, n int) {
		for i := range n {
			out = append(out, field{fmt.Sprintf("%s[%d]", path, i), plain(reflect.ValueOf(v).Index(i).Interface())})
		}
	}
	add("filter", p.Filters, len(p.Filters))
	add("sample", p.Samples, len(p.Samples))
	add("rate_limit", p.RateLimits, len(p.RateLimits))
	add("rewrite", p.Rewrites, len(p.Rewrites))
	if e := plain(p.Enrich); e != "{}" {
		out = append(out, field{"enrich", e})
	}
	if p.HashKey != "" {
		out = append(out, field{"hash_key", "(set)"})
	}
	return out
}

func compareFields(old, new []field) []FieldChange {
	om := map[string]string{}
	for _, f := range old {
		om[f.path] = f.value
	}
	var out []FieldChange
	seen := map[string]bool{}
	for _, f := range new {
		seen[f.path] = true
		if om[f.path] != f.value {
			out = append(out, FieldChange{f.path, om[f.path], f.value})
		}
	}
	for _, f := range old {
		if !seen[f.path] {
			out = append(out, FieldChange{f.path, f.value, ""})
		}
	}
	return out
}

// commonOrder is the plan's packet policies, in rule order, that other
// also has.
func commonOrder(plan *codegen.Plan, other map[string]policies.Policy) []string {
	var out []string
	for _, r := range plan.Rules {
		if _, ok := other[r.Policy]; ok {
			out = append(out, r.Policy)
		}
	}
	return out
}

func interfaces(plan *codegen.Plan) []string {
	var out []string
	for _, a := range plan.Attachments {
		out = append(out, a.Interface)
	}
	return out
}

// hooks names the plan's kernel-hook attach points as a reader knows them.
func hooks(plan *codegen.Plan) []string {
	if plan.Hooks == nil {
		return nil
	}
	var out []string
	for _, h := range plan.Hooks.Hooks {
		s := h.Kind + " " + h.Target
		if h.Kind == "syscall" {
			s = h.Kind + " " + strings.Join(h.Syscalls, ",")
		}
		if h.Attach != "" && h.Attach != "auto" {
			s += " (" + h.Attach + ")"
		}
		out = append(out, s)
	}
	return out
}

// Features are the kernel features a Plan needs (docs/operations.md,
// requirements), each named as a reader checks for it.
func Features(plan *codegen.Plan) []string {
	set := map[string]bool{}
	if len(plan.Rules) > 0 {
		set["XDP or tcx (packet policies)"] = true
	}
	if plan.Hooks != nil {
		set["BTF (/sys/kernel/btf/vmlinux)"] = true
		for _, h := range plan.Hooks.Hooks {
			switch {
			case h.Kind == "tracepoint":
				set["tracepoints"] = true
			case h.Kind == "syscall":
				set["raw tracepoint raw_syscalls/sys_enter"] = true
			case h.Attach == "kprobe":
				set["kprobes"] = true
			case h.Attach == "fentry":
				set["fentry/fexit (BPF trampolines)"] = true
			default:
				set["kprobes or fentry/fexit"] = true
			}
		}
		for _, r := range plan.Hooks.Rules {
			if r.Signal != "" && !r.Monitor {
				set["bpf_send_signal (signal actions)"] = true
			}
		}
	}
	return slices.Sorted(maps.Keys(set))
}

// setDiff returns what new has that old lacks, and the reverse, sorted.
func setDiff(old, new []string) (added, removed []string) {
	for _, s := range new {
		if !slices.Contains(old, s) && !slices.Contains(added, s) {
			added = append(added, s)
		}
	}
	for _, s := range old {
		if !slices.Contains(new, s) && !slices.Contains(removed, s) {
			removed = append(removed, s)
		}
	}
	slices.Sort(added)
	slices.Sort(removed)
	return added, removed
}

// Replay is the frames of a pcap file judged by both Plans.
type Replay struct {
	File   string `json:"file"`
	Frames int    `json:"frames"`
	// Changed frames had another verdict or deciding policy.
	Changed     int          `json:"changed"`
	Transitions []Transition `json:"transitions,omitempty"`
}

// Transition counts the frames that went from one outcome to another.
type Transition struct {
	Old   string `json:"old"`
	New   string `json:"new"`
	Count int    `json:"count"`
	// Frames are the first frame numbers (from 1) that made it.
	Frames []int `json:"frames"`
}

// maxExampleFrames bounds the frame numbers kept per transition.
const maxExampleFrames = 5

// outcome names a verdict and what decided it.
func outcome(r *reference.Result) string {
	switch {
	case r.Policy != "":
		return r.Verdict.String() + " by " + r.Policy
	case r.Stat != reference.Judged:
		return r.Verdict.String() + " (unjudged: " + r.Stat.String() + ")"
	}
	return r.Verdict.String() + " (no policy)"
}

// ReplayPcap judges every frame of the pcap file r through both Plans, on
// interface iface, and records each change of verdict or deciding policy.
func (d *Diff) ReplayPcap(name string, r io.Reader, old, new *codegen.Plan, iface string) error {
	op, err := reference.NewPacket(old, iface)
	if err != nil {
		return err
	}
	np, err := reference.NewPacket(new, iface)
	if err != nil {
		return err
	}
	rd, err := pcap.NewReader(r)
	if err != nil {
		return err
	}
	rep := &Replay{File: name}
	index := map[[2]string]int{}
	for {
		p, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		rep.Frames++
		o, n := op.Judge(p.Data, iface), np.Judge(p.Data, iface)
		if o.Verdict == n.Verdict && o.Policy == n.Policy && o.Stat == n.Stat {
			continue
		}
		rep.Changed++
		key := [2]string{outcome(o), outcome(n)}
		i, ok := index[key]
		if !ok {
			i = len(rep.Transitions)
			index[key] = i
			rep.Transitions = append(rep.Transitions, Transition{Old: key[0], New: key[1]})
		}
		t := &rep.Transitions[i]
		t.Count++
		if len(t.Frames) < maxExampleFrames {
			t.Frames = append(t.Frames, rep.Frames)
		}
	}
	slices.SortStableFunc(rep.Transitions, func(a, b Transition) int { return b.Count - a.Count })
	d.Replay = rep
	return nil
}

// Empty reports that nothing differs.
func (d *Diff) Empty() bool {
	return len(d.Added) == 0 && len(d.Removed) == 0 && len(d.Changed) == 0 && d.OrderOld == nil &&
		len(d.InterfacesAdded) == 0 && len(d.InterfacesRemoved) == 0 && len(d.HooksAdded) == 0 &&
		len(d.HooksRemoved) == 0 && len(d.FeaturesNeeded) == 0 && len(d.Pipeline) == 0 && (d.Replay == nil || d.Replay.Changed == 0)
}

func orAbsent(s string) string {
	if s == "" {
		return "(absent)"
	}
	return s
}

func frameList(fs []int, count int) string {
	parts := make([]string, len(fs))
	for i, f := range fs {
		parts[i] = fmt.Sprint(f)
	}
	s := strings.Join(parts, ", ")
	if count > len(fs) {
		s += ", ..."
	}
	return s
}
