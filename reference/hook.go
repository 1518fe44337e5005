package reference

import (
	"encoding/binary"
	"net/netip"
	"runtime"
	"slices"
	"strconv"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
)

// Call is one call at a kernel hook: where, by whom, with what values.
type Call struct {
	// Kind and Target name the hook as policies do: "syscall" and the
	// system call's name, "kprobe" or "kretprobe" and the function,
	// "tracepoint" and "category/name".
	Kind, Target string
	// The calling process: PID is the thread id (the kernel's pid), TGID
	// the process id, PPID its parent's process id.
	PID, TGID, PPID, UID, GID uint32
	// Comm is the thread's name (the kernel keeps 15 bytes of it).
	Comm string
	// Cgroup is the cgroup v2 path of the process, as policies name it.
	Cgroup string
	// Args are the function's or system call's arguments by index, Ret
	// its return value (kretprobe), Fields the tracepoint's record fields
	// by name.
	Args   [bpf.HookMaxArgs]Value
	Ret    Value
	Fields map[string]Value
	// Arch is the GOARCH whose system call numbers the program sees;
	// "" is this machine's.
	Arch string
}

// Value is one value a hook reads, by the type its policy gives it.
type Value struct {
	// Int is an int, uint or fd argument (as the kernel passes it: the
	// bits of the register or field).
	Int int64
	// Str is a string argument, or the path of a file, path or fd.
	Str string
	// Family (2 AF_INET, 10 AF_INET6), addresses and ports are a sock or
	// sockaddr argument's; a sockaddr has only the destination.
	Family       uint16
	Saddr, Daddr netip.Addr
	Sport, Dport uint16
}

// HookResult is what one policy does with a call its filters select.
type HookResult struct {
	Policy string
	Rule   int // index in Plan.Hooks.Rules
	// Event is the event the policy sends (nil when it sends none): its
	// name and fields as the hook's event reader decodes them. Fields the
	// kernel does not read (exe, host, container) are left out.
	Event *HookEvent
	// Count is what the policy's count adds to (nil when it has none).
	Count *HookCount
	// Signal is the signal sent to the caller, "" when none. WouldSignal
	// is the signal of a policy in monitor mode, which sends none.
	Signal, WouldSignal string
}

// HookEvent is a kernel-hook event.
type HookEvent struct {
	Name   string
	Fields []Field
}

// HookCount is one increment of a count: the metric, its labels' values
// and what is added to its sum (the sum argument; 0 without one). Calls
// always grow by one.
type HookCount struct {
	Metric string
	Labels []Field
	Sum    int64
}

// Hook evaluates a Plan's kernel-hook policies.
type Hook struct {
	plan  *codegen.Plan
	probe *codegen.HookPlan
}

// NewHook makes the evaluator of plan's kernel-hook policies (a plan with
// none selects nothing).
func NewHook(plan *codegen.Plan) (*Hook, error) {
	if err := checkPlan(plan); err != nil {
		return nil, err
	}
	h := &Hook{plan: plan, probe: plan.Hooks}
	if pp := plan.Hooks; pp != nil {
		m := &pp.Maps
		if len(m.Hooks) != len(pp.Hooks) || len(m.Rules) != len(pp.Rules) {
			return nil, planError("has %d hooks and %d rules in its kernel form, %d and %d in its readable form",
				len(m.Hooks), len(m.Rules), len(pp.Hooks), len(pp.Rules))
		}
	}
	return h, nil
}

// callState is struct scratch of hook.c: one call's context and the
// values its hook read, by slot.
type callState struct {
	c       *Call
	syscall int
	hook    *bpf.Hook
	spec    *codegen.KernelHook
	vals    [bpf.HookMaxArgs]Value
}

// Call runs c through every hook it reaches, each hook's policies in
// order (hook_run), and returns what the policies that select it do.
func (h *Hook) Call(c Call) []HookResult {
	pp := h.probe
	if pp == nil {
		return nil
	}
	s := &callState{c: &c}
	if c.Kind == "syscall" {
		arch := c.Arch
		if arch == "" {
			arch = runtime.GOARCH
		}
		nr, ok := bpf.SyscallNumber(arch, c.Target)
		if !ok || nr >= bpf.HookSyscalls {
			return nil
		}
		s.syscall = nr
	}
	var out []HookResult
	for i := range pp.Hooks {
		spec := &pp.Hooks[i]
		if !hookReaches(spec, &c) {
			continue
		}
		kh := &pp.Maps.Hooks[i].Value
		if kh.Nrules == 0 {
			continue
		}
		s.hook, s.spec = kh, spec
		s.read()
		for j := 0; j < bpf.HookMaxHookRules && j < int(kh.Nrules); j++ {
			ri := int(kh.Rules[j]) & (bpf.HookMaxRules - 1)
			if r, ok := h.ruleApply(s, ri); ok {
				out = append(out, r)
			}
		}
	}
	return out
}

// hookReaches reports whether a call reaches the hook: its kind and
// target, or for a syscall hook one of its system calls (or "*").
func hookReaches(h *codegen.KernelHook, c *Call) bool {
	if h.Kind != c.Kind {
		return false
	}
	if h.Kind == "syscall" {
		return slices.Contains(h.Syscalls, c.Target) || slices.Contains(h.Syscalls, "*")
	}
	return h.Target == c.Target
}

// read fills the hook's slots from the call (the programs' fetch and
// decode): an argument by index, the return value, or a tracepoint field
// by name, as its type reads it.
func (s *callState) read() {
	kh := s.hook
	for i := 0; i < bpf.HookMaxArgs; i++ {
		s.vals[i] = Value{}
		if i >= int(kh.Nargs) || i >= len(s.spec.Args) {
			continue
		}
		a := &kh.Args[i]
		var v Value
		switch a.Source {
		case bpf.HookSrcArg:
			if int(a.Index) < bpf.HookMaxArgs {
				v = s.c.Args[a.Index]
			}
		case bpf.HookSrcRet:
			v = s.c.Ret
		case bpf.HookSrcField:
			v = s.c.Fields[s.spec.Args[i].Field]
		}
		switch a.Type {
		case bpf.HookTInt, bpf.HookTUint:
			v = Value{Int: v.Int}
		case bpf.HookTString, bpf.HookTUstring, bpf.HookTFile, bpf.HookTPath:
			v = Value{Str: v.Str}
		case bpf.HookTFd:
			v = Value{Int: v.Int, Str: v.Str}
		case bpf.HookTSockaddr:
			v = Value{Family: v.Family, Daddr: v.Daddr, Dport: v.Dport}
			if v.Family != afInet && v.Family != afInet6 {
				v = Value{Family: v.Family}
			}
		case bpf.HookTSock:
			v = Value{Family: v.Family, Saddr: v.Saddr, Daddr: v.Daddr, Sport: v.Sport, Dport: v.Dport}
		}
		// The kernel keeps a string's first bytes only.
		if len(v.Str) > bpf.HookStrLen-1 {
			v.Str = v.Str[:bpf.HookStrLen-1]
		}
		s.vals[i] = v
	}
}

const (
	afInet  = 2
	afInet6 = 10
)

// ruleApply is rule_apply: whether rule ri selects the call (any of its
// selectors, all of a selector's filters; no selector selects every call),
// and what it does.
func (h *Hook) ruleApply(s *callState, ri int) (HookResult, bool) {
	pp := h.probe
	if ri >= len(pp.Maps.Rules) {
		return HookResult{}, false
	}
	r := &pp.Maps.Rules[ri].Value
	if n := int(r.Nselectors); n > 0 {
		selected := false
		for i := 0; i < bpf.HookMaxSelectors && i < n && !selected; i++ {
			sel := &r.Selectors[i]
			all := true
			for j := 0; j < bpf.HookMaxSelFilters && j < int(sel.Nfilters); j++ {
				fi := int(sel.First) + j
				if fi >= len(pp.Maps.Filters) || !h.filterHolds(s, fi) {
					all = false
					break
				}
			}
			selected = all
		}
		if !selected {
			return HookResult{}, false
		}
	}
	spec := &pp.Rules[ri]
	out := HookResult{Policy: spec.Policy, Rule: ri}
	if r.Flags&bpf.HookRCount != 0 && spec.Count != nil {
		c := &HookCount{Metric: spec.Count.Metric}
		if r.Flags&bpf.HookRSum != 0 {
			c.Sum = int64(s.intField(bpf.HookFArg, r.SumArg, bpf.HookSubNum))
		}
		for _, l := range spec.Count.Labels {
			c.Labels = append(c.Labels, s.field(l.Name, l.HookRef, l.Size))
		}
		out.Count = c
	}
	if r.Flags&bpf.HookREmit != 0 && spec.Emit != nil {
		e := &HookEvent{Name: spec.Emit.Event}
		for _, f := range spec.Emit.Fields {
			switch f.Kind {
			case "exe", "host", "container":
				continue // added in userspace
			}
			e.Fields = append(e.Fields, s.field(f.Name, f.HookRef, 0))
		}
		out.Event = e
	}
	if spec.Monitor && spec.Signal != "" {
		out.WouldSignal = spec.Signal
	}
	if r.Flags&bpf.HookRSignal != 0 {
		out.Signal = spec.Signal
		if out.Signal == "" {
			out.Signal = "signal " + strconv.Itoa(int(r.Signal))
		}
	}
	return out, true
}

// intField is int_field: the integer a filter or label reads.
func (s *callState) intField(field, arg, sub uint8) uint64 {
	c := s.c
	switch field {
	case bpf.HookFPid:
		return uint64(c.PID)
	case bpf.HookFTgid:
		return uint64(c.TGID)
	case bpf.HookFPpid:
		return uint64(c.PPID)
	case bpf.HookFUid:
		return uint64(c.UID)
	case bpf.HookFGid:
		return uint64(c.GID)
	case bpf.HookFSyscall:
		return uint64(s.syscall)
	case bpf.HookFArg:
		if int(arg) >= bpf.HookMaxArgs {
			return 0
		}
		v := &s.vals[arg]
		switch sub {
		case bpf.HookSubFamily:
			return uint64(v.Family)
		case bpf.HookSubSport:
			return uint64(v.Sport)
		case bpf.HookSubDport:
			return uint64(v.Dport)
		}
		return uint64(v.Int)
	}
	return 0
}

// commBytes is the comm as the kernel holds it: 15 bytes and a NUL.
func commBytes(comm string) [16]byte {
	var b [16]byte
	copy(b[:15], comm)
	return b
}

// filterHolds is filter_holds (and fast_filter, which answers the same):
// filter fi on the call, negation applied.
func (h *Hook) filterHolds(s *callState, fi int) bool {
	mf := &h.probe.Maps.Filters[fi]
	f := &mf.Filter.Value
	negate := f.Negate != 0
	hit := false
	switch {
	case len(mf.Cgroups) > 0:
		// The engine resolves the paths to cgroup ids; the process is in
		// one cgroup, whose id matches only its own path.
		hit = slices.Contains(mf.Cgroups, s.c.Cgroup)
	case f.Op == bpf.HookOpComm:
		comm := commBytes(s.c.Comm)
		c0, c1 := binary.LittleEndian.Uint64(comm[:8]), binary.LittleEndian.Uint64(comm[8:])
		for i := 0; i < bpf.HookCommInline && i < int(f.Nvals); i++ {
			if c0&f.Vals[4*i+2] == f.Vals[4*i] && c1&f.Vals[4*i+3] == f.Vals[4*i+1] {
				hit = true
				break
			}
		}
	case f.Op == bpf.HookOpTrie:
		key, ok := s.trieKey(f)
		if !ok {
			return negate
		}
		for _, k := range mf.Strings {
			if lpmMatches(&k.Value, key) {
				hit = true
				break
			}
		}
	case f.Op == bpf.HookOpIn:
		x := s.intField(f.Field, f.Arg, f.Sub)
		for i := 0; i < bpf.HookMaxInline && i < int(f.Nvals); i++ {
			if f.Vals[i] == x {
				hit = true
				break
			}
		}
	case f.Op == bpf.HookOpRange:
		x := int64(s.intField(f.Field, f.Arg, f.Sub))
		for i := 0; i < bpf.HookMaxRanges && i < int(f.Nvals); i++ {
			if x >= int64(f.Vals[2*i]) && x <= int64(f.Vals[2*i+1]) {
				hit = true
				break
			}
		}
	case f.Op == bpf.HookOpSet:
		hit = slices.Contains(mf.Values, s.intField(f.Field, f.Arg, f.Sub))
	}
	return hit != negate
}

// trieKey is the LPM trie key filter_holds looks up: the comm with a NUL,
// a string with its NUL, or an address after its family byte; false when
// there is none (an address of another family, another field).
func (s *callState) trieKey(f *bpf.HookFilter) (bpf.HookStringKey, bool) {
	var k bpf.HookStringKey
	switch {
	case f.Field == bpf.HookFComm:
		comm := commBytes(s.c.Comm)
		copy(k.Data[:], comm[:])
		k.Prefixlen = 32 + 8*17
	case f.Field == bpf.HookFArg && int(f.Arg) < bpf.HookMaxArgs:
		v := &s.vals[f.Arg]
		if f.Sub == bpf.HookSubSaddr || f.Sub == bpf.HookSubDaddr {
			a := v.Saddr
			if f.Sub == bpf.HookSubDaddr {
				a = v.Daddr
			}
			switch v.Family {
			case afInet:
				k.Data[0] = 4
				b := a.As4()
				copy(k.Data[1:], b[:])
				k.Prefixlen = 32 + 8 + 32
			case afInet6:
				k.Data[0] = 6
				b := a.As16()
				copy(k.Data[1:], b[:])
				k.Prefixlen = 32 + 8 + 128
			default:
				return k, false
			}
		} else {
			n := min(len(v.Str), bpf.HookMatchLen)
			copy(k.Data[:], v.Str[:n])
			k.Prefixlen = uint32(32 + 8*(n+1))
		}
	default:
		return k, false
	}
	return k, true
}

// lpmMatches reports whether the trie entry e is a prefix of key (the
// filter's 32 bits are equal in both: the entries are the filter's).
func lpmMatches(e *bpf.HookStringKey, key bpf.HookStringKey) bool {
	if e.Prefixlen > key.Prefixlen || e.Prefixlen < 32 {
		return false
	}
	bits := int(e.Prefixlen) - 32
	n := bits / 8
	if n > len(e.Data) {
		return false
	}
	for i := 0; i < n; i++ {
		if e.Data[i] != key.Data[i] {
			return false
		}
	}
	if rem := bits % 8; rem != 0 {
		mask := byte(0xff) << (8 - rem)
		if (e.Data[n]^key.Data[n])&mask != 0 {
			return false
		}
	}
	return true
}

// field is one named value of an event or a count label, as the hook's
// event reader decodes it (engine/hook: decodeArgField), but a cgroup,
// which is its path here (the kernel's is an id of the machine). A string
// label keeps its first size bytes (size 0: all).
func (s *callState) field(name string, ref codegen.HookRef, size int) Field {
	c := s.c
	switch ref.Kind {
	case "pid":
		return Field{name, uint64(c.PID)}
	case "tgid":
		return Field{name, uint64(c.TGID)}
	case "ppid":
		return Field{name, uint64(c.PPID)}
	case "uid":
		return Field{name, uint64(c.UID)}
	case "gid":
		return Field{name, uint64(c.GID)}
	case "cgroup":
		return Field{name, c.Cgroup}
	case "comm":
		comm := c.Comm
		if len(comm) > 15 {
			comm = comm[:15]
		}
		return Field{name, comm}
	case "syscall":
		if n := bpf.SyscallName(c.Arch, s.syscall); n != "" {
			return Field{name, n}
		}
		return Field{name, strconv.Itoa(s.syscall)}
	}
	if ref.Slot >= bpf.HookMaxArgs {
		return Field{name, nil}
	}
	v := &s.vals[ref.Slot]
	typ := s.hook.Args[ref.Slot].Type
	switch ref.Part {
	case "num":
		if typ == bpf.HookTInt {
			return Field{name, v.Int}
		}
		return Field{name, uint64(v.Int)}
	case "str":
		if size > 0 && len(v.Str) > size {
			return Field{name, v.Str[:size]}
		}
		return Field{name, v.Str}
	case "family":
		return Field{name, uint64(v.Family)}
	case "sport":
		return Field{name, uint64(v.Sport)}
	case "dport":
		return Field{name, uint64(v.Dport)}
	case "saddr":
		return Field{name, v.Saddr}
	case "daddr":
		return Field{name, v.Daddr}
	case "text":
		if v.Daddr.IsValid() {
			return Field{name, netip.AddrPortFrom(v.Daddr, v.Dport).String()}
		}
		return Field{name, ""}
	}
	return Field{name, nil}
}
