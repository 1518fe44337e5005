package codegen

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/policies"
)

// HookPlan is the kernel-hook part of a Plan: the attach points (hooks)
// with the values each reads, and the rules run at them. The engine resolves
// what depends on the running kernel: kprobe or fentry, tracepoint field
// offsets, syscall numbers, cgroup ids.
type HookPlan struct {
	Hooks []KernelHook `json:"hooks"`
	Rules []HookRule   `json:"rules"`
	// Maps is what the hook programs read for these rules, in the
	// kernel's form (hook_maps.go).
	Maps HookMaps `json:"maps"`
}

// KernelHook is one attach point, shared by every policy on the same
// function, tracepoint or set of system calls.
type KernelHook struct {
	Index int `json:"index"`
	// Kind is "kprobe", "kretprobe", "tracepoint" or "syscall".
	Kind     string   `json:"kind"`
	Target   string   `json:"target,omitempty"`
	Syscalls []string `json:"syscalls,omitempty"`
	// Attach is "auto", "kprobe" or "fentry" for kprobe/kretprobe hooks.
	Attach string    `json:"attach,omitempty"`
	Args   []HookArg `json:"args,omitempty"`
	// Rules are indices into HookPlan.Rules, in order.
	Rules []int `json:"rules"`
}

// Key identifies the attach point: hooks with equal keys in two plans are
// the same attachment, kept across a reload.
func (h KernelHook) Key() string {
	return h.Kind + "|" + h.Attach + "|" + h.Target + "|" + strings.Join(h.Syscalls, ",")
}

// HookArg is one value the hook reads, in slot Slot.
type HookArg struct {
	Slot int `json:"slot"`
	// Source is "arg" (Index), "ret" or "field" (Field).
	Source string `json:"source"`
	Index  int    `json:"index"`
	Field  string `json:"field,omitempty"`
	// Type is one of policies.ArgTypes; "string" fields of syscalls:*
	// tracepoints are "user_string" here.
	Type string `json:"type"`
}

// HookRef says where a named value comes from: a process property
// (Kind "pid", "tgid", "ppid", "uid", "gid", "comm", "cgroup"), the syscall
// number ("syscall"), a value added in userspace ("exe", "container",
// "host"), or part Part of argument slot Slot (Kind "arg"; Part "num",
// "str", "family", "saddr", "daddr", "sport", "dport", or "text" for the
// text form of a sock/sockaddr).
type HookRef struct {
	Kind string `json:"kind"`
	Slot int    `json:"slot"`
	Part string `json:"part,omitempty"`
}

// HookRule is one probe policy at its hook.
type HookRule struct {
	Index    int    `json:"index"`
	Policy   string `json:"policy"`
	Position string `json:"position"`
	Priority int    `json:"priority"`
	Hook     int    `json:"hook"`
	// Selectors are ORed; none selects every call.
	Selectors    []HookSelector `json:"selectors,omitempty"`
	Emit         *HookEmit      `json:"emit,omitempty"`
	Count        *HookCount     `json:"count,omitempty"`
	Signal       string         `json:"signal,omitempty"`
	SignalNumber int            `json:"signal_number,omitempty"`
	// Monitor: the policy is in monitor mode; the kernel sends no signal
	// (the rule's kernel form has none) and grain reports would_signal.
	Monitor bool `json:"monitor,omitempty"`
}

// HookSelector holds ANDed filters.
type HookSelector struct {
	Filters []HookFilter `json:"filters"`
}

// HookFilter is one condition as the kernel evaluates it. Op is "in"
// (Ints, held in the filter), "set" (Ints, in a hash map: more than
// bpf.HookMaxInline values), "range" (Ranges), "comm" (up to
// bpf.HookCommInline exact Strings or Prefixes of comm, compared in the
// filter), "trie" (exact Strings, Prefixes or CIDRs in the LPM trie) or
// "cgroup" (Cgroups paths: the engine
// resolves them to ids and uses "in" or "set"). Negate inverts it (ne,
// notin).
type HookFilter struct {
	Field string `json:"field"`
	HookRef
	Op       string     `json:"op"`
	Negate   bool       `json:"negate,omitempty"`
	Ints     []int64    `json:"ints,omitempty"`
	Ranges   [][2]int64 `json:"ranges,omitempty"`
	Strings  []string   `json:"strings,omitempty"`
	Prefixes []string   `json:"prefixes,omitempty"`
	CIDRs    []string   `json:"cidrs,omitempty"`
	Cgroups  []string   `json:"cgroups,omitempty"`
}

// HookEmit is the event of a rule.
type HookEmit struct {
	Event     string      `json:"event"`
	Fields    []HookField `json:"fields,omitempty"`
	RateLimit int         `json:"rate_limit,omitempty"`
}

// HookField is one named value of an event.
type HookField struct {
	Name string `json:"name"`
	HookRef
}

// HookCount is the in-kernel aggregation of a rule.
type HookCount struct {
	Metric string      `json:"metric"`
	Labels []HookLabel `json:"labels,omitempty"`
	// Sum names the integer argument added up, in slot SumSlot.
	Sum     string `json:"sum,omitempty"`
	SumSlot int    `json:"sum_slot,omitempty"`
}

// HookLabel is one label of a count key: Size bytes at Offset of the
// key's label bytes.
type HookLabel struct {
	Name string `json:"name"`
	HookRef
	Offset int `json:"offset"`
	Size   int `json:"size"`
}

// signalNumbers are the signals a policy can send (equal on amd64 and
// arm64).
var signalNumbers = map[string]int{
	"SIGHUP": 1, "SIGINT": 2, "SIGQUIT": 3, "SIGABRT": 6, "SIGKILL": 9,
	"SIGUSR1": 10, "SIGUSR2": 12, "SIGTERM": 15, "SIGSTOP": 19,
}

// labelStringBytes is the most a string label keeps of its value.
const labelStringBytes = 64

var processKinds = []string{"pid", "tgid", "ppid", "uid", "gid", "comm", "cgroup"}

// compileHooks compiles the probe policies of sorted (priority order)
// into a HookPlan; nil when there are none.
func compileHooks(sorted []policies.Policy, errs *policies.ErrorList) *HookPlan {
	fail := func(p policies.Policy, pos policies.Position, format string, args ...any) {
		*errs = append(*errs, policies.Error{Pos: pos, Policy: p.Name, Msg: fmt.Sprintf(format, args...)})
	}
	plan := &HookPlan{}
	hookOf := map[string]int{}
	nfilters, nset, ntrie := 0, 0, 0
	// Where each total first went over its limit: the error points there.
	var filtersOver, setOver, trieOver *policies.Error
	perSyscall := map[string]int{}
	for _, p := range sorted {
		h := p.Hook
		if h == nil {
			continue
		}
		hook := KernelHook{Kind: h.Kind, Target: h.Target, Attach: h.Attach}
		if h.Kind == "syscall" {
			hook.Syscalls = sortedSet(h.Syscalls)
			ok := true
			for _, name := range hook.Syscalls {
				if name == "*" {
					continue
				}
				known := false
				for _, arch := range bpf.SyscallArchs() {
					if _, found := bpf.SyscallNumber(arch, name); found {
						known = true
					}
				}
				if !known {
					fail(p, h.Pos, "no system call is named %s (on %s)", name, strings.Join(bpf.SyscallArchs(), " or "))
					ok = false
				}
			}
			if !ok {
				continue
			}
		}
		hi, ok := hookOf[hook.Key()]
		if !ok {
			if len(plan.Hooks) == bpf.HookMaxHooks {
				fail(p, h.Pos, "too many kernel hooks: at most %d distinct functions, tracepoints and syscall sets", bpf.HookMaxHooks)
				continue
			}
			hi = len(plan.Hooks)
			hook.Index = hi
			hook.Rules = []int{}
			plan.Hooks = append(plan.Hooks, hook)
			hookOf[hook.Key()] = hi
			for _, name := range hook.Syscalls {
				perSyscall[name]++
				if perSyscall[name] > bpf.HookSyscallHooks {
					fail(p, h.Pos, "too many policies with different syscall lists hook %s: at most %d; merge some", name, bpf.HookSyscallHooks)
				}
			}
		}
		hk := &plan.Hooks[hi]
		if len(hk.Rules) == bpf.HookMaxHookRules {
			fail(p, h.Pos, "too many policies on %s: at most %d per hook; merge some (a list of matches selects a call when any holds)", hookName(*hk), bpf.HookMaxHookRules)
			continue
		}
		// The policy's arguments, in the hook's slots.
		names := map[string]HookRef{}
		var sockSlot = -1
		argsOK := true
		for _, a := range h.Args {
			pa := HookArg{Source: a.Source, Index: a.Index, Field: a.Field, Type: a.Type}
			if a.Source != "arg" {
				pa.Index = -1
			}
			if h.Kind == "tracepoint" && strings.HasPrefix(h.Target, "syscalls/") && a.Type == "string" {
				pa.Type = "user_string" // syscall arguments point into user memory
			}
			slot := slices.IndexFunc(hk.Args, func(b HookArg) bool {
				return b.Source == pa.Source && b.Index == pa.Index && b.Field == pa.Field && b.Type == pa.Type
			})
			if slot < 0 {
				if len(hk.Args) == bpf.HookMaxArgs {
					fail(p, a.Pos, "%s reads more than %d distinct values (all its policies together)", hookName(*hk), bpf.HookMaxArgs)
					argsOK = false
					continue
				}
				slot = len(hk.Args)
				pa.Slot = slot
				hk.Args = append(hk.Args, pa)
			}
			switch a.Type {
			case "int", "uint":
				names[a.Name] = HookRef{Kind: "arg", Slot: slot, Part: "num"}
			case "sock", "sockaddr":
				names[a.Name] = HookRef{Kind: "arg", Slot: slot, Part: "text"}
				sockSlot = slot
			default:
				names[a.Name] = HookRef{Kind: "arg", Slot: slot, Part: "str"}
			}
		}
		if !argsOK {
			continue
		}
		ref := func(name string) (HookRef, bool) {
			if r, ok := names[name]; ok {
				return r, true
			}
			switch {
			case slices.Contains(processKinds, name), name == "exe", name == "container", name == "host":
				return HookRef{Kind: name}, true
			case name == "syscall" && h.Kind == "syscall":
				return HookRef{Kind: "syscall"}, true
			case sockSlot >= 0 && slices.Contains([]string{"family", "saddr", "daddr", "sport", "dport"}, name):
				return HookRef{Kind: "arg", Slot: sockSlot, Part: name}, true
			}
			return HookRef{}, false
		}
		index := len(plan.Rules)
		r := HookRule{Index: index, Policy: p.Name, Position: p.Pos.String(), Priority: p.Priority, Hook: hi, Monitor: p.Monitored()}
		ok = true
		if len(h.Selectors) > bpf.HookMaxSelectors {
			fail(p, h.Selectors[bpf.HookMaxSelectors].Pos, "at most %d match selectors per policy", bpf.HookMaxSelectors)
			ok = false
		}
		for _, sel := range h.Selectors {
			if len(sel.Filters) > bpf.HookMaxSelFilters {
				fail(p, sel.Pos, "at most %d conditions per match selector", bpf.HookMaxSelFilters)
				ok = false
				continue
			}
			var ps HookSelector
			for _, f := range sel.Filters {
				pf, err := compileHookFilter(f, ref)
				if err != nil {
					fail(p, f.Pos, "match %s: %v", f.Field, err)
					ok = false
					continue
				}
				switch pf.Op {
				case "set":
					nset += len(pf.Ints)
					overAt(&setOver, nset, bpf.HookSetEntries, p, f.Pos)
				case "trie":
					ntrie += len(pf.Strings) + len(pf.Prefixes) + len(pf.CIDRs)
					overAt(&trieOver, ntrie, bpf.HookStringEntries, p, f.Pos)
				}
				ps.Filters = append(ps.Filters, pf)
				nfilters++
				overAt(&filtersOver, nfilters, bpf.HookMaxFilters, p, f.Pos)
			}
			r.Selectors = append(r.Selectors, ps)
		}
		if p.Emit != nil {
			e := &HookEmit{Event: p.Emit.Event, RateLimit: p.Emit.RateLimit}
			for _, name := range p.Emit.Fields {
				rf, found := ref(name)
				if !found {
					fail(p, h.Pos, "emit field %s is neither a process field nor an argument of this policy", name)
					ok = false
					continue
				}
				e.Fields = append(e.Fields, HookField{Name: name, HookRef: rf})
			}
			r.Emit = e
		}
		if h.Count != nil {
			c := &HookCount{Metric: h.Count.Metric, Sum: h.Count.Sum}
			off := 0
			for i, name := range h.Count.By {
				rf, found := ref(name)
				if !found || rf.Kind == "exe" || rf.Kind == "container" || rf.Kind == "host" || rf.Part == "text" {
					fail(p, h.Pos, "count label %s cannot be read in the kernel", name)
					ok = false
					continue
				}
				if i >= bpf.HookMaxLabels {
					fail(p, h.Pos, "at most %d count labels", bpf.HookMaxLabels)
					ok = false
					break
				}
				size := 8
				switch {
				case rf.Kind == "comm", rf.Part == "saddr", rf.Part == "daddr":
					size = 16
				case rf.Part == "str":
					size = min(labelStringBytes, bpf.HookLabelBytes-off)
				}
				if off+size > bpf.HookLabelBytes || size <= 0 {
					fail(p, h.Pos, "count labels %v take more than the %d bytes of a count key (strings take up to %d)", h.Count.By, bpf.HookLabelBytes, labelStringBytes)
					ok = false
					break
				}
				c.Labels = append(c.Labels, HookLabel{Name: name, HookRef: rf, Offset: off, Size: size})
				off += size
			}
			if c.Sum != "" {
				rf, found := ref(c.Sum)
				if !found || rf.Part != "num" {
					fail(p, h.Pos, "count sum %s is not an integer argument", c.Sum)
					ok = false
				}
				c.SumSlot = rf.Slot
			}
			r.Count = c
		}
		if h.Signal != "" {
			n, found := signalNumbers[h.Signal]
			if !found {
				fail(p, h.Pos, "unknown signal %s (known: SIGKILL, SIGTERM, SIGSTOP, SIGINT, SIGHUP, SIGQUIT, SIGABRT, SIGUSR1, SIGUSR2)", h.Signal)
				ok = false
			}
			r.Signal, r.SignalNumber = h.Signal, n
		}
		if !ok {
			continue
		}
		if index == bpf.HookMaxRules {
			fail(p, p.Pos, "too many kernel-hook policies: at most %d", bpf.HookMaxRules)
			continue
		}
		hk.Rules = append(hk.Rules, index)
		plan.Rules = append(plan.Rules, r)
	}
	if filtersOver != nil {
		filtersOver.Msg = fmt.Sprintf("too many match conditions in all kernel-hook policies: %d, at most %d; this one goes over: merge or remove some", nfilters, bpf.HookMaxFilters)
		*errs = append(*errs, *filtersOver)
	}
	if setOver != nil {
		setOver.Msg = fmt.Sprintf("too many integer match values in all: %d, at most %d; this one goes over: use ranges or remove some", nset, bpf.HookSetEntries)
		*errs = append(*errs, *setOver)
	}
	if trieOver != nil {
		trieOver.Msg = fmt.Sprintf("too many string, prefix and address match values in all: %d, at most %d; this one goes over: use prefixes or remove some", ntrie, bpf.HookStringEntries)
		*errs = append(*errs, *trieOver)
	}
	if len(plan.Hooks) == 0 {
		return nil
	}
	return plan
}

func hookName(h KernelHook) string {
	if h.Kind == "syscall" {
		return "syscall " + strings.Join(h.Syscalls, ",")
	}
	return h.Kind + " " + h.Target
}

// compileHookFilter turns a typed filter into the kernel's form.
func compileHookFilter(f policies.Filter, ref func(string) (HookRef, bool)) (HookFilter, error) {
	r, ok := ref(f.Field)
	if !ok {
		return HookFilter{}, fmt.Errorf("%s is neither a process field nor an argument of this policy", f.Field)
	}
	pf := HookFilter{Field: f.Field, HookRef: r, Negate: f.Op == "ne" || f.Op == "notin"}
	switch {
	case r.Kind == "exe" || r.Kind == "container" || r.Kind == "host":
		return pf, fmt.Errorf("%s is looked up in userspace and cannot be matched in the kernel", f.Field)
	case r.Part == "text":
		return pf, fmt.Errorf("match the fields of a socket argument (family, saddr, daddr, sport, dport), not its text form")
	case r.Kind == "cgroup":
		if len(f.Strings) == 0 {
			return pf, fmt.Errorf("cgroup takes cgroup paths")
		}
		pf.Op, pf.Cgroups = "cgroup", sortedSet(f.Strings)
	case r.Part == "saddr" || r.Part == "daddr":
		if f.Op != "cidr" {
			return pf, fmt.Errorf("addresses are matched by CIDR")
		}
		for _, c := range f.CIDRs {
			if _, err := netip.ParsePrefix(c); err != nil {
				return pf, err
			}
		}
		pf.Op, pf.CIDRs = "trie", sortedSet(f.CIDRs)
	case r.Kind == "comm" || r.Part == "str":
		for _, s := range f.Strings {
			if len(s) > bpf.HookMatchLen {
				return pf, fmt.Errorf("%q is longer than the %d bytes the kernel compares", s, bpf.HookMatchLen)
			}
			if strings.IndexByte(s, 0) >= 0 {
				return pf, fmt.Errorf("%q holds a NUL byte", s)
			}
		}
		pf.Op = "trie"
		if f.Op == "prefix" {
			pf.Prefixes = sortedSet(f.Strings)
		} else {
			pf.Strings = sortedSet(f.Strings)
		}
		if r.Kind == "comm" && len(f.Strings) <= bpf.HookCommInline {
			pf.Op = "comm" // masked compares in the filter, no trie lookup
		}
	default: // integers
		switch f.Op {
		case "range":
			if len(f.Ranges) > bpf.HookMaxRanges {
				return pf, fmt.Errorf("at most %d ranges per condition", bpf.HookMaxRanges)
			}
			pf.Op, pf.Ranges = "range", f.Ranges
		case "eq", "ne", "in", "notin":
			ints := slices.Clone(f.Ints)
			slices.Sort(ints)
			pf.Ints = slices.Compact(ints)
			pf.Op = "in"
			if len(pf.Ints) > bpf.HookMaxInline {
				pf.Op = "set"
			}
		default:
			return pf, fmt.Errorf("%s is an integer: %s does not apply", f.Field, f.Op)
		}
	}
	return pf, nil
}

// overAt records, the first time n goes over limit, where: at the
// condition of p at pos. Totals over all policies are errors at the
// condition that crossed the limit, so that grain check positions them.
func overAt(over **policies.Error, n, limit int, p policies.Policy, pos policies.Position) {
	if n > limit && *over == nil {
		*over = &policies.Error{Pos: pos, Policy: p.Name}
	}
}
