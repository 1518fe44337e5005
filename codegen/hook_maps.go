package codegen

import (
	"encoding/binary"
	"net/netip"
	"slices"

	"github.com/grain-ebpf/grain/bpf"
)

// HookMaps is the content of the hook programs' maps for one rule set, in
// one generation's part of each map. The engine writes every entry as it
// is, adding the generation to keys and the epoch to rule ids (a hook's
// count_id is its count_rule's id), and fills in
// what depends on the running kernel: see Hooks and HookMapFilter.Cgroups.
type HookMaps struct {
	// Hooks[i] is the hooks entry of HookPlan.Hooks[i] but for what
	// the engine resolves when it attaches the hook: the slot it goes in,
	// Kind and the stash flag (by kprobe or fentry), and of each argument
	// its width, tracepoint field offset, size and flags (a tracepoint
	// field that holds a string reads as one).
	Hooks []Kernel[bpf.Hook] `json:"hooks"`
	// Rules are the hook_rules entries by index, without their ids.
	Rules []Kernel[bpf.HookRule] `json:"rules"`
	// Filters are the hook_filters entries by index, which rule selectors
	// point into, each with the value and string entries it looks up.
	Filters []HookMapFilter `json:"filters"`
}

// HookMapFilter is one hook_filters entry and the entries of the values
// and strings maps keyed by it (their Filter is the filter's index in the
// generation).
type HookMapFilter struct {
	// Rule is the index of the rule the filter belongs to.
	Rule   int                    `json:"rule"`
	Filter Kernel[bpf.HookFilter] `json:"filter"`
	// Values are the hook_values keys of a "set" filter.
	Values []uint64 `json:"values,omitempty"`
	// Strings are the hook_strings (LPM trie) keys of a "trie" filter.
	Strings []Kernel[bpf.HookStringKey] `json:"strings,omitempty"`
	// Cgroups are the paths of a cgroup filter: the engine puts their ids
	// in Vals (op in, Nvals set here) or in Values (op set).
	Cgroups []string `json:"cgroups,omitempty"`
}

var argSources = map[string]uint8{"arg": bpf.HookSrcArg, "ret": bpf.HookSrcRet, "field": bpf.HookSrcField}

var argTypeCodes = map[string]uint8{
	"int": bpf.HookTInt, "uint": bpf.HookTUint, "string": bpf.HookTString, "user_string": bpf.HookTUstring,
	"sock": bpf.HookTSock, "sockaddr": bpf.HookTSockaddr, "file": bpf.HookTFile, "path": bpf.HookTPath, "fd": bpf.HookTFd,
}

var filterKinds = map[string]uint8{
	"pid": bpf.HookFPid, "tgid": bpf.HookFTgid, "ppid": bpf.HookFPpid, "uid": bpf.HookFUid,
	"gid": bpf.HookFGid, "comm": bpf.HookFComm, "cgroup": bpf.HookFCgroup, "arg": bpf.HookFArg,
	"syscall": bpf.HookFSyscall,
}

var partCodes = map[string]uint8{
	"": bpf.HookSubNum, "num": bpf.HookSubNum, "str": bpf.HookSubStr, "family": bpf.HookSubFamily,
	"saddr": bpf.HookSubSaddr, "daddr": bpf.HookSubDaddr, "sport": bpf.HookSubSport, "dport": bpf.HookSubDport,
}

// buildHookMaps encodes pp's hooks, rules and filters into the hook
// programs' map entries.
func buildHookMaps(pp *HookPlan) {
	m := &pp.Maps
	m.Hooks = []Kernel[bpf.Hook]{}
	for _, h := range pp.Hooks {
		var kh bpf.Hook
		kh.Nargs = uint8(len(h.Args))
		for i, a := range h.Args {
			kh.Args[i] = bpf.HookArg{Source: argSources[a.Source], Type: argTypeCodes[a.Type], Index: uint8(max(a.Index, 0)), Width: 8}
		}
		kh.Nrules = uint8(len(h.Rules))
		for j, ri := range h.Rules {
			kh.Rules[j] = uint16(ri)
		}
		m.Hooks = append(m.Hooks, Kernel[bpf.Hook]{kh})
	}
	m.Rules = []Kernel[bpf.HookRule]{}
	m.Filters = []HookMapFilter{}
	for i, r := range pp.Rules {
		kr := bpf.HookRule{Nselectors: uint8(len(r.Selectors))}
		for si, sel := range r.Selectors {
			kr.Selectors[si] = bpf.HookSelector{First: uint16(len(m.Filters)), Nfilters: uint8(len(sel.Filters))}
			for _, f := range sel.Filters {
				m.Filters = append(m.Filters, kernelFilter(i, f))
			}
		}
		if r.Emit != nil {
			kr.Flags |= bpf.HookREmit
			kr.RateLimit = uint32(r.Emit.RateLimit)
			for _, f := range r.Emit.Fields {
				if f.Kind == "arg" {
					kr.EmitArgs |= 1 << f.Slot
				}
			}
		}
		if r.Count != nil {
			kr.Flags |= bpf.HookRCount
			kr.Nlabels = uint8(len(r.Count.Labels))
			end := 0
			for j, l := range r.Count.Labels {
				kr.Labels[j] = bpf.HookLabel{Field: filterKinds[l.Kind], Arg: uint8(l.Slot), Sub: partCodes[l.Part], Offset: uint8(l.Offset), Size: uint8(l.Size)}
				end = max(end, l.Offset+l.Size)
			}
			if end <= bpf.HookSmallLabelBytes {
				kr.Flags |= bpf.HookRSmallKey
			}
			if r.Count.Sum != "" {
				kr.Flags |= bpf.HookRSum
				kr.SumArg = uint8(r.Count.SumSlot)
			}
		}
		if r.SignalNumber != 0 && !r.Monitor {
			kr.Flags |= bpf.HookRSignal
			kr.Signal = uint8(r.SignalNumber)
		}
		m.Rules = append(m.Rules, Kernel[bpf.HookRule]{kr})
	}
	for i := range m.Hooks {
		setCountAtHand(&m.Hooks[i].Value, m.Rules)
	}
}

// countRuleAtHand is 1 + the index of the rule that the short count path
// (count_at_hand in bpf/hook.c: raw tracepoints, and raw sys_enter for a
// syscall with this one hook) runs for hook h, or 0 when h needs the
// general path: h has one rule, which only counts, unfiltered and without
// a sum, by comm, pid, tgid or syscall in a small key (three words at most:
// comm takes two).
func countRuleAtHand(h *bpf.Hook, rules []Kernel[bpf.HookRule]) uint16 {
	if h.Nrules != 1 || int(h.Rules[0]) >= len(rules) {
		return 0
	}
	r := &rules[h.Rules[0]].Value
	if r.Flags != bpf.HookRCount|bpf.HookRSmallKey || r.Nselectors != 0 || r.Nlabels == 0 || int(r.Nlabels) > len(r.Labels) {
		return 0
	}
	words := 0
	for _, l := range r.Labels[:r.Nlabels] {
		size := 8
		switch l.Field {
		case bpf.HookFComm:
			size = 16
		case bpf.HookFPid, bpf.HookFTgid, bpf.HookFSyscall:
		default:
			return 0
		}
		// the kernel packs the labels in order, as they are laid out here
		if int(l.Offset) != words*8 || int(l.Size) != size {
			return 0
		}
		words += size / 8
	}
	if words > 3 {
		return 0
	}
	return h.Rules[0] + 1
}

// setCountAtHand sets h's count_rule and, when the short count path runs
// it, the label fields that path reads from the hook instead of the rule
// (one cache line fewer per cold call, as every exec is); the engine adds
// the rule's id (count_id), which holds its epoch.
func setCountAtHand(h *bpf.Hook, rules []Kernel[bpf.HookRule]) {
	h.CountRule, h.CountId, h.CountFields = 0, 0, 0
	cr := countRuleAtHand(h, rules)
	if cr == 0 {
		return
	}
	r := &rules[cr-1].Value
	h.CountRule = cr
	for i, l := range r.Labels[:r.Nlabels] {
		h.CountFields |= uint32(l.Field) << (8 * i)
	}
}

// kernelFilter encodes one filter of rule: its operation and inline
// values, and the value or string keys it looks up.
func kernelFilter(rule int, f HookFilter) HookMapFilter {
	kf := bpf.HookFilter{Field: filterKinds[f.Kind], Arg: uint8(f.Slot), Sub: partCodes[f.Part]}
	if f.Negate {
		kf.Negate = 1
	}
	out := HookMapFilter{Rule: rule}
	switch f.Op {
	case "cgroup":
		// One id per path, resolved by the engine.
		out.Cgroups = f.Cgroups
		kf.Op = bpf.HookOpSet
		if len(f.Cgroups) <= bpf.HookMaxInline {
			kf.Op, kf.Nvals = bpf.HookOpIn, uint8(len(f.Cgroups))
		}
	case "in":
		kf.Op = bpf.HookOpIn
		kf.Nvals = uint8(len(f.Ints))
		for j, v := range f.Ints {
			kf.Vals[j] = uint64(v)
		}
	case "set":
		kf.Op = bpf.HookOpSet
		for _, v := range f.Ints {
			out.Values = append(out.Values, uint64(v))
		}
	case "range":
		kf.Op = bpf.HookOpRange
		kf.Nvals = uint8(len(f.Ranges))
		for j, rg := range f.Ranges {
			kf.Vals[2*j], kf.Vals[2*j+1] = uint64(rg[0]), uint64(rg[1])
		}
	case "trie":
		kf.Op = bpf.HookOpTrie
		out.Strings = trieKeys(f)
	case "comm":
		kf.Op = bpf.HookOpComm
		entries := append(slices.Clone(f.Strings), f.Prefixes...)
		kf.Nvals = uint8(len(entries))
		for j, v := range entries {
			n := len(v)
			if j < len(f.Strings) {
				n++ // an exact name: its NUL too
			}
			val, mask := commWords(v, n)
			copy(kf.Vals[4*j:], val[:])
			copy(kf.Vals[4*j+2:], mask[:])
		}
	}
	out.Filter = Kernel[bpf.HookFilter]{kf}
	return out
}

// commWords are the two words of a 16-byte comm holding s, and the mask
// of its first n bytes, as the filter compares them.
func commWords(s string, n int) (val, mask [2]uint64) {
	var v, m [16]byte
	copy(v[:], s)
	for k := 0; k < n && k < 16; k++ {
		m[k] = 0xff
	}
	val = [2]uint64{binary.LittleEndian.Uint64(v[:8]), binary.LittleEndian.Uint64(v[8:])}
	mask = [2]uint64{binary.LittleEndian.Uint64(m[:8]), binary.LittleEndian.Uint64(m[8:])}
	return val, mask
}

// trieKeys are the LPM trie keys of a trie filter: exact strings with
// their NUL, prefixes without, and addresses as the family byte followed
// by the address, the prefix length counting the 32 bits of the filter
// index in front.
func trieKeys(f HookFilter) []Kernel[bpf.HookStringKey] {
	var keys []Kernel[bpf.HookStringKey]
	for _, s := range f.Strings {
		k := bpf.HookStringKey{Prefixlen: uint32(32 + 8*(len(s)+1))}
		copy(k.Data[:], s) // the NUL after it is part of the key
		keys = append(keys, Kernel[bpf.HookStringKey]{k})
	}
	for _, s := range f.Prefixes {
		k := bpf.HookStringKey{Prefixlen: uint32(32 + 8*len(s))}
		copy(k.Data[:], s)
		keys = append(keys, Kernel[bpf.HookStringKey]{k})
	}
	for _, c := range f.CIDRs {
		pfx := netip.MustParsePrefix(c)
		var k bpf.HookStringKey
		if pfx.Addr().Is4() {
			k.Data[0] = 4
			a := pfx.Masked().Addr().As4()
			copy(k.Data[1:], a[:])
		} else {
			k.Data[0] = 6
			a := pfx.Masked().Addr().As16()
			copy(k.Data[1:], a[:])
		}
		k.Prefixlen = uint32(32 + 8 + pfx.Bits())
		keys = append(keys, Kernel[bpf.HookStringKey]{k})
	}
	return keys
}
