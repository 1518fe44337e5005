package codegen

import (
	"encoding/binary"
	"net/netip"
	"slices"

	"github.com/grain-ebpf/grain/bpf"
)

// ProbeMaps is the content of the hook programs' maps for one rule set, in
// one generation's part of each map. The engine writes every entry as it
// is, adding the generation to keys and the epoch to rule ids, and fills in
// what depends on the running kernel: see Hooks and ProbeMapFilter.Cgroups.
type ProbeMaps struct {
	// Hooks[i] is the probe_hooks entry of ProbePlan.Hooks[i] but for what
	// the engine resolves when it attaches the hook: the slot it goes in,
	// Kind and the stash flag (by kprobe or fentry), and of each argument
	// its width, tracepoint field offset, size and flags (a tracepoint
	// field that holds a string reads as one).
	Hooks []Kernel[bpf.ProbeHook] `json:"hooks"`
	// Rules are the probe_rules entries by index, without their ids.
	Rules []Kernel[bpf.ProbeRule] `json:"rules"`
	// Filters are the probe_filters entries by index, which rule selectors
	// point into, each with the value and string entries it looks up.
	Filters []ProbeMapFilter `json:"filters"`
}

// ProbeMapFilter is one probe_filters entry and the entries of the values
// and strings maps keyed by it (their Filter is the filter's index in the
// generation).
type ProbeMapFilter struct {
	// Rule is the index of the rule the filter belongs to.
	Rule   int                     `json:"rule"`
	Filter Kernel[bpf.ProbeFilter] `json:"filter"`
	// Values are the probe_values keys of a "set" filter.
	Values []uint64 `json:"values,omitempty"`
	// Strings are the probe_strings (LPM trie) keys of a "trie" filter.
	Strings []Kernel[bpf.ProbeStringKey] `json:"strings,omitempty"`
	// Cgroups are the paths of a cgroup filter: the engine puts their ids
	// in Vals (op in, Nvals set here) or in Values (op set).
	Cgroups []string `json:"cgroups,omitempty"`
}

var argSources = map[string]uint8{"arg": bpf.ProbeSrcArg, "ret": bpf.ProbeSrcRet, "field": bpf.ProbeSrcField}

var argTypeCodes = map[string]uint8{
	"int": bpf.ProbeTInt, "uint": bpf.ProbeTUint, "string": bpf.ProbeTString, "user_string": bpf.ProbeTUstring,
	"sock": bpf.ProbeTSock, "sockaddr": bpf.ProbeTSockaddr, "file": bpf.ProbeTFile, "path": bpf.ProbeTPath, "fd": bpf.ProbeTFd,
}

var filterKinds = map[string]uint8{
	"pid": bpf.ProbeFPid, "tgid": bpf.ProbeFTgid, "ppid": bpf.ProbeFPpid, "uid": bpf.ProbeFUid,
	"gid": bpf.ProbeFGid, "comm": bpf.ProbeFComm, "cgroup": bpf.ProbeFCgroup, "arg": bpf.ProbeFArg,
	"syscall": bpf.ProbeFSyscall,
}

var partCodes = map[string]uint8{
	"": bpf.ProbeSubNum, "num": bpf.ProbeSubNum, "str": bpf.ProbeSubStr, "family": bpf.ProbeSubFamily,
	"saddr": bpf.ProbeSubSaddr, "daddr": bpf.ProbeSubDaddr, "sport": bpf.ProbeSubSport, "dport": bpf.ProbeSubDport,
}

// buildProbeMaps encodes pp's hooks, rules and filters into the hook
// programs' map entries.
func buildProbeMaps(pp *ProbePlan) {
	m := &pp.Maps
	m.Hooks = []Kernel[bpf.ProbeHook]{}
	for _, h := range pp.Hooks {
		var kh bpf.ProbeHook
		kh.Nargs = uint8(len(h.Args))
		for i, a := range h.Args {
			kh.Args[i] = bpf.ProbeArg{Source: argSources[a.Source], Type: argTypeCodes[a.Type], Index: uint8(max(a.Index, 0)), Width: 8}
		}
		kh.Nrules = uint8(len(h.Rules))
		for j, ri := range h.Rules {
			kh.Rules[j] = uint16(ri)
		}
		m.Hooks = append(m.Hooks, Kernel[bpf.ProbeHook]{kh})
	}
	m.Rules = []Kernel[bpf.ProbeRule]{}
	m.Filters = []ProbeMapFilter{}
	for i, r := range pp.Rules {
		kr := bpf.ProbeRule{Nselectors: uint8(len(r.Selectors))}
		for si, sel := range r.Selectors {
			kr.Selectors[si] = bpf.ProbeSelector{First: uint16(len(m.Filters)), Nfilters: uint8(len(sel.Filters))}
			for _, f := range sel.Filters {
				m.Filters = append(m.Filters, kernelFilter(i, f))
			}
		}
		if r.Emit != nil {
			kr.Flags |= bpf.ProbeREmit
			kr.RateLimit = uint32(r.Emit.RateLimit)
			for _, f := range r.Emit.Fields {
				if f.Kind == "arg" {
					kr.EmitArgs |= 1 << f.Slot
				}
			}
		}
		if r.Count != nil {
			kr.Flags |= bpf.ProbeRCount
			kr.Nlabels = uint8(len(r.Count.Labels))
			end := 0
			for j, l := range r.Count.Labels {
				kr.Labels[j] = bpf.ProbeLabel{Field: filterKinds[l.Kind], Arg: uint8(l.Slot), Sub: partCodes[l.Part], Offset: uint8(l.Offset), Size: uint8(l.Size)}
				end = max(end, l.Offset+l.Size)
			}
			if end <= bpf.ProbeSmallLabelBytes {
				kr.Flags |= bpf.ProbeRSmallKey
			}
			if r.Count.Sum != "" {
				kr.Flags |= bpf.ProbeRSum
				kr.SumArg = uint8(r.Count.SumSlot)
			}
		}
		if r.SignalNumber != 0 {
			kr.Flags |= bpf.ProbeRSignal
			kr.Signal = uint8(r.SignalNumber)
		}
		m.Rules = append(m.Rules, Kernel[bpf.ProbeRule]{kr})
	}
}

// kernelFilter encodes one filter of rule: its operation and inline
// values, and the value or string keys it looks up.
func kernelFilter(rule int, f ProbeFilter) ProbeMapFilter {
	kf := bpf.ProbeFilter{Field: filterKinds[f.Kind], Arg: uint8(f.Slot), Sub: partCodes[f.Part]}
	if f.Negate {
		kf.Negate = 1
	}
	out := ProbeMapFilter{Rule: rule}
	switch f.Op {
	case "cgroup":
		// One id per path, resolved by the engine.
		out.Cgroups = f.Cgroups
		kf.Op = bpf.ProbeOpSet
		if len(f.Cgroups) <= bpf.ProbeMaxInline {
			kf.Op, kf.Nvals = bpf.ProbeOpIn, uint8(len(f.Cgroups))
		}
	case "in":
		kf.Op = bpf.ProbeOpIn
		kf.Nvals = uint8(len(f.Ints))
		for j, v := range f.Ints {
			kf.Vals[j] = uint64(v)
		}
	case "set":
		kf.Op = bpf.ProbeOpSet
		for _, v := range f.Ints {
			out.Values = append(out.Values, uint64(v))
		}
	case "range":
		kf.Op = bpf.ProbeOpRange
		kf.Nvals = uint8(len(f.Ranges))
		for j, rg := range f.Ranges {
			kf.Vals[2*j], kf.Vals[2*j+1] = uint64(rg[0]), uint64(rg[1])
		}
	case "trie":
		kf.Op = bpf.ProbeOpTrie
		out.Strings = trieKeys(f)
	case "comm":
		kf.Op = bpf.ProbeOpComm
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
	out.Filter = Kernel[bpf.ProbeFilter]{kf}
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
func trieKeys(f ProbeFilter) []Kernel[bpf.ProbeStringKey] {
	var keys []Kernel[bpf.ProbeStringKey]
	for _, s := range f.Strings {
		k := bpf.ProbeStringKey{Prefixlen: uint32(32 + 8*(len(s)+1))}
		copy(k.Data[:], s) // the NUL after it is part of the key
		keys = append(keys, Kernel[bpf.ProbeStringKey]{k})
	}
	for _, s := range f.Prefixes {
		k := bpf.ProbeStringKey{Prefixlen: uint32(32 + 8*len(s))}
		copy(k.Data[:], s)
		keys = append(keys, Kernel[bpf.ProbeStringKey]{k})
	}
	for _, c := range f.CIDRs {
		pfx := netip.MustParsePrefix(c)
		var k bpf.ProbeStringKey
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
		keys = append(keys, Kernel[bpf.ProbeStringKey]{k})
	}
	return keys
}
