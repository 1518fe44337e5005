// Package hook runs grain's kernel hooks: the syscall, tracepoint, kprobe
// and kretprobe policies. It attaches each hook by the mechanism this
// kernel offers (fentry or kprobe, raw or perf-event tracepoint), writes
// the Plan's rule sets into the inactive generation of the hook maps and
// flips it, and reads the hooks' counts and events. bpf.Hooks and bpf/hook.c
// are the C side of the same programs.
package hook

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/engine/generation"
)

// Options configure Hooks.
type Options struct {
	Logger *slog.Logger
	// RingBufferBytes sizes the hook event ring buffer; zero keeps 4 MiB.
	RingBufferBytes uint32
	// CgroupRoot is the cgroup v2 mount that cgroup paths are relative to;
	// empty: found in /proc/self/mountinfo (usually /sys/fs/cgroup).
	CgroupRoot string
	// ObserveSelf lets the hooks see grain's own process too, which they
	// otherwise skip in the kernel (benchmarks run their load in-process).
	ObserveSelf bool
}

// Hooks owns the generic kernel-hook programs, their maps and their
// attachments: the kernel-hook half of a Plan. Rule sets switch atomically:
// every table exists in two generations, the programs read the active one
// once per call, and Apply writes the inactive one, waits for no call to
// still read it, and flips.
type Hooks struct {
	log   *slog.Logger
	p     *bpf.Hooks
	feats bpf.ProbeFeatures

	mu sync.Mutex
	// gen switches the rule generations (used with mu held) and names the
	// rules of every epoch whose events may still be read.
	gen *generation.Switch[codegen.HookRule]
	// written[g] is what the plan of generation g put into the maps.
	written [bpf.HookGenerations]*generationContents
	// hooks by key: attachment, slot and mechanism, kept across reloads.
	hooks   map[string]*attachment
	sysLink link.Link // raw sys_enter, while a syscall hook exists
	// noRaw: tracepoints that have no raw tracepoint of their name (e.g.
	// syscalls:*, ftrace events): perf-event tracepoints only.
	noRaw map[string]bool

	// totals of rule sets no longer in the maps
	ruleTotals  generation.Tally[RuleCounter]
	countTotals map[string]*CountSample
	// reported holds the calls and sum CountSnapshot last gave per
	// sample: a read that missed a count moving from a kernel slot to the
	// count map reports these instead (counts never go back).
	reported map[string][2]uint64
	// reportedHits holds the hits Counters last gave per policy.
	reportedHits map[string]uint64

	cgroupRoot string
	agent      uint32 // tgid the programs skip
}

// attachment is one attached hook.
type attachment struct {
	hook      codegen.KernelHook
	planned   []bpf.HookArg // the plan's arguments, which resolveArgs completes
	kind      Kind
	slot      int
	mechanism Mechanism
	links     []link.Link
	args      []bpf.HookArg
	syscalls  []int
	program   string // for fentry/fexit: the per-function copy to release
}

// generationContents remembers what one generation holds, to rewrite it.
type generationContents struct {
	epoch   uint32
	rules   []codegen.HookRule
	values  []bpf.HookValueKey
	strings []bpf.HookStringKey
}

// Attachment reports how one hook is attached.
type Attachment struct {
	Kind   Kind   `json:"kind"`
	Target string `json:"target,omitempty"`
	// Syscalls of a syscall hook.
	Syscalls []string `json:"syscalls,omitempty"`
	// Mechanism is what the kernel runs.
	Mechanism Mechanism `json:"mechanism"`
	Cookie    int       `json:"cookie"`
	Policies  []string  `json:"policies"`
}

// New loads the hook maps; programs are loaded and attached by
// Apply as policies need them.
func New(opts Options) (*Hooks, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	// Before any map: on a kernel without attach cookies, that is the error
	// (after the errors of not being root, or of a refused bpf()).
	if err := bpf.CheckPrivileges(); err != nil {
		return nil, err
	}
	feats := bpf.DetectProbeFeatures()
	if feats.AttachCookie != nil {
		return nil, fmt.Errorf("kernel hooks need attach cookies: %w", feats.AttachCookie)
	}
	p, err := bpf.LoadHooks(bpf.HookOptions{RingBufferBytes: opts.RingBufferBytes})
	if err != nil {
		return nil, err
	}
	e := &Hooks{log: log, p: p, feats: feats, hooks: map[string]*attachment{}, noRaw: map[string]bool{},
		ruleTotals:  generation.Tally[RuleCounter]{},
		countTotals: map[string]*CountSample{}, reported: map[string][2]uint64{}, reportedHits: map[string]uint64{}, cgroupRoot: opts.CgroupRoot, agent: uint32(os.Getpid())}
	if opts.ObserveSelf {
		e.agent = 0 // the idle task's, which runs no hooked code
	}
	if e.gen, err = generation.New[codegen.HookRule](generation.Options{Activate: e.activate}); err != nil {
		e.Close()
		return nil, err
	}
	if err := e.activate(0); err != nil {
		e.Close()
		return nil, fmt.Errorf("write the hook programs' active generation: %w", err)
	}
	return e, nil
}

// activate makes generation gen the one the programs read: the active
// map's one word, beside the tgid they skip and the reader's wake-up mark.
func (e *Hooks) activate(gen uint32) error {
	return e.p.Maps().Active.Put(uint32(0), bpf.HookActive{Generation: gen, AgentTgid: e.agent, WakeAt: e.wakeAt()})
}

// wakeAt is how many pending ring-buffer bytes wake the event reader: an
// eighth of the ring (the reader polls otherwise, see ring.PollInterval).
func (e *Hooks) wakeAt() uint64 {
	return uint64(e.p.Maps().Events.MaxEntries()) / 8
}

// Features reports the kernel hooks this kernel offers.
func (e *Hooks) Features() bpf.ProbeFeatures { return e.feats }

// Program exposes the loaded hook object, for tests and benchmarks.
func (e *Hooks) Program() *bpf.Hooks { return e.p }

// Apply makes the kernel-hook part of plan the active rule set, all or nothing:
// Prepare, then Commit. A hook that cannot be attached fails the whole
// Apply and leaves the rules in force untouched.
func (e *Hooks) Apply(plan *codegen.Plan) error {
	p, err := e.Prepare(plan)
	if err != nil {
		return err
	}
	return p.Commit()
}

// Prepared is the kernel-hook rule set of a plan written into the
// inactive generation, with the hooks it adds attached, that no hooked call
// sees yet (Hooks.Prepare). Commit puts it in force, Abort lets it go.
// Until one of them, the Hooks are locked.
type Prepared struct {
	e          *Hooks
	pp         codegen.HookPlan
	want       map[string]*attachment // the hooks in force after the commit, by key
	added      []*attachment          // attached for it
	replaced   []*attachment          // in force now, detached after the commit
	entryLinks []link.Link            // entry kprobes added to kretprobes in force
	sysAdded   bool                   // raw sys_enter attached for it
	// written is the generation written, with its rules' epoch
	written *generation.Pending[codegen.HookRule]
	// before describes the inactive generation before writeInactive,
	// which replaces it once it has harvested its counters.
	before *generationContents
	done   bool
}

// Prepare attaches the hooks plan adds (their configuration in the
// generation in force is empty: the programs return at once) and writes
// plan's kernel-hook rules into the inactive generation. Nothing a hooked
// call sees changes. On an error nothing is left attached or locked.
func (e *Hooks) Prepare(plan *codegen.Plan) (*Prepared, error) {
	e.mu.Lock()
	p, err := e.prepare(plan)
	if err != nil {
		p.undo()
		e.mu.Unlock()
		return nil, err
	}
	return p, nil
}

// prepare does Prepare's work with e.mu held; on an error, p.undo lets go
// of what it did.
func (e *Hooks) prepare(plan *codegen.Plan) (*Prepared, error) {
	p := &Prepared{e: e, want: map[string]*attachment{}}
	if plan != nil && plan.Hooks != nil {
		p.pp = *plan.Hooks
	}
	// Attach new hooks, on slots no current attachment uses.
	used := map[int]bool{}
	for _, a := range e.hooks {
		used[a.slot] = true
	}
	for i, h := range p.pp.Hooks {
		planned := p.pp.Maps.Hooks[i].Value.Args[:len(h.Args)]
		a, ok := e.hooks[h.Key()]
		if ok && a.kind == KindTracepoint && a.mechanism != e.tracepointMechanism(h) {
			// Its fields changed which tracepoint it needs (a raw one has no
			// record): attach anew on another slot, detach the old after
			// the flip; each generation sees only one of the two.
			p.replaced = append(p.replaced, a)
			ok = false
		}
		if ok {
			// Same attach point; its arguments may differ: resolve them again.
			args, syscalls, err := e.resolveArgs(h, planned, a.mechanism)
			if err != nil {
				return p, err
			}
			links := a.links
			if a.mechanism == MechanismKretprobe && stashes(args) && len(links) == 1 {
				// Now it reads arguments: add the entry kprobe that saves them.
				prog, err := e.p.Program(bpf.ProgKprobe)
				if err != nil {
					return p, err
				}
				el, err := link.Kprobe(h.Target, prog, &link.KprobeOptions{Cookie: uint64(a.slot)})
				if err != nil {
					return p, fmt.Errorf("attach the entry kprobe that saves %s's arguments for its kretprobe: %w", h.Target, err)
				}
				p.entryLinks = append(p.entryLinks, el)
				links = append(slices.Clip(links), el)
			}
			p.want[h.Key()] = &attachment{hook: h, kind: a.kind, planned: planned, slot: a.slot, mechanism: a.mechanism, links: links, args: args, syscalls: syscalls, program: a.program}
			continue
		}
		slot := 0
		for used[slot] {
			slot++
		}
		if slot >= bpf.HookMaxHooks {
			return p, fmt.Errorf("no free hook slot: at most %d hooks (old and new together during a reload)", bpf.HookMaxHooks)
		}
		a, err := e.attach(h, planned, slot)
		if err != nil {
			return p, err
		}
		used[slot] = true
		p.added = append(p.added, a)
		p.want[h.Key()] = a
	}
	hadSys := e.sysLink != nil
	if err := e.syncSysEnter(p.want); err != nil {
		return p, err
	}
	p.sysAdded = !hadSys && e.sysLink != nil
	p.before = e.written[1-e.gen.Active()]
	var err error
	p.written, err = e.writeInactive(&p.pp, p.want)
	return p, err
}

// Commit puts the prepared rule set in force: it flips the active
// generation word (each call reads it once, so it sees the old rules or the
// new, never a mix), then detaches the hooks the rule set no longer has. An
// error means that the flip failed and that nothing changed: what was
// attached for the rule set is detached again.
func (p *Prepared) Commit() error {
	if p.done {
		return errors.New("engine: a prepared hook rule set is committed or aborted once")
	}
	p.done = true
	e := p.e
	defer e.mu.Unlock()
	if err := p.written.Commit(); err != nil {
		p.undo()
		return fmt.Errorf("kernel hook rules: %w", err)
	}
	for key, a := range e.hooks {
		if _, ok := p.want[key]; !ok {
			e.detach(a)
			e.log.Info("detached", "hook", hookLabel(a.hook), "mechanism", a.mechanism)
		}
	}
	for _, a := range p.replaced {
		e.detach(a)
		e.log.Info("detached", "hook", hookLabel(a.hook), "mechanism", a.mechanism, "cookie", a.slot)
	}
	e.hooks = p.want
	for _, a := range p.added {
		e.log.Info("attached", "hook", hookLabel(a.hook), "mechanism", a.mechanism, "cookie", a.slot)
	}
	e.syncSysEnter(p.want) // detaches sys_enter when unused, which cannot fail
	return nil
}

// Abort lets the prepared rule set go: what was attached for it is
// detached again, and the rules in force stay as they are.
func (p *Prepared) Abort() {
	if p.done {
		return
	}
	p.done = true
	p.undo()
	p.e.mu.Unlock()
}

// undo detaches what prepare attached. e.mu must be held.
func (p *Prepared) undo() {
	e := p.e
	for _, a := range p.added {
		e.detach(a)
	}
	for _, l := range p.entryLinks {
		l.Close()
	}
	if p.sysAdded && e.sysLink != nil {
		e.sysLink.Close()
		e.sysLink = nil
	}
	if g := e.written[1-e.gen.Active()]; g != nil && g != p.before {
		// What writeInactive wrote never ran: nothing of it to harvest
		// (its counters may not even have been reset).
		g.rules = nil
	}
	p.added, p.entryLinks, p.sysAdded = nil, nil, false
}

func hookLabel(h codegen.KernelHook) string {
	if kindOf(h) == KindSyscall {
		return "syscall:" + strings.Join(h.Syscalls, ",")
	}
	return h.Kind + ":" + h.Target
}

// syncSysEnter attaches the raw sys_enter program while some hook of want
// is a syscall hook, and detaches it otherwise.
func (e *Hooks) syncSysEnter(want map[string]*attachment) error {
	need := false
	for _, a := range want {
		if a.kind == KindSyscall {
			need = true
		}
	}
	switch {
	case need && e.sysLink == nil:
		prog, err := e.p.Program(bpf.ProgSysEnter)
		if err != nil {
			return err
		}
		l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sys_enter", Program: prog})
		if err != nil {
			return fmt.Errorf("attach to raw tracepoint sys_enter: %w", err)
		}
		e.sysLink = l
	case !need && e.sysLink != nil && len(e.hooksOfKind(KindSyscall)) == 0:
		e.sysLink.Close()
		e.sysLink = nil
	}
	return nil
}

func (e *Hooks) hooksOfKind(kind Kind) []*attachment {
	var out []*attachment
	for _, a := range e.hooks {
		if a.kind == kind {
			out = append(out, a)
		}
	}
	return out
}

// attach resolves and attaches one hook with cookie slot.
func (e *Hooks) attach(h codegen.KernelHook, planned []bpf.HookArg, slot int) (*attachment, error) {
	a := &attachment{hook: h, kind: kindOf(h), planned: planned, slot: slot}
	cookie := uint64(slot)
	switch a.kind {
	case KindTracepoint:
		group, name, ok := strings.Cut(h.Target, "/")
		if !ok {
			return nil, fmt.Errorf("tracepoint %q: want category/name", h.Target)
		}
		a.mechanism = MechanismTracepoint
		args, _, err := e.resolveArgs(h, a.planned, a.mechanism)
		if err != nil {
			return nil, err
		}
		a.args = args
		if e.tracepointMechanism(h) == MechanismRawTracepoint {
			l, err := e.attachRawTracepoint(name, cookie)
			if err == nil {
				a.mechanism, a.links = MechanismRawTracepoint, []link.Link{l}
				break
			}
			e.noRaw[h.Target] = true
			e.log.Info("no raw tracepoint, using the perf-event tracepoint", "tracepoint", h.Target, "reason", err.Error())
		}
		prog, err := e.p.Program(bpf.ProgTracepoint)
		if err != nil {
			return nil, err
		}
		l, err := link.Tracepoint(group, name, prog, &link.TracepointOptions{Cookie: cookie})
		if err != nil {
			return nil, fmt.Errorf("attach to tracepoint %s: %w", h.Target, err)
		}
		a.links = []link.Link{l}
	case KindSyscall:
		a.mechanism = MechanismRawTracepoint
		args, syscalls, err := e.resolveArgs(h, a.planned, a.mechanism)
		if err != nil {
			return nil, err
		}
		a.args, a.syscalls = args, syscalls
	case KindKprobe, KindKretprobe:
		if err := e.attachFunction(a, cookie); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown hook kind %q", h.Kind)
	}
	return a, nil
}

// tracepointMechanism chooses how a tracepoint hook attaches: a raw
// tracepoint (~60 ns cheaper per call: no perf record is built) when it
// reads no record field and the kernel gives raw tracepoints cookies
// (Linux 6.10); else the perf-event tracepoint, which has the record.
func (e *Hooks) tracepointMechanism(h codegen.KernelHook) Mechanism {
	if len(h.Args) == 0 && e.feats.RawTracepoints() && !e.noRaw[h.Target] && !strings.HasPrefix(h.Target, "syscalls/") {
		return MechanismRawTracepoint
	}
	return MechanismTracepoint
}

// attachRawTracepoint attaches grain_raw_tracepoint to the raw tracepoint
// name (the tracepoint's name without its category).
func (e *Hooks) attachRawTracepoint(name string, cookie uint64) (link.Link, error) {
	prog, err := e.p.Program(bpf.ProgRawTracepoint)
	if err != nil {
		return nil, err
	}
	return bpf.AttachRawTracepointCookie(name, prog, cookie)
}

// attachFunction attaches a kprobe/kretprobe hook by fentry/fexit or
// kprobes, as its Attach asks and the kernel allows.
func (e *Hooks) attachFunction(a *attachment, cookie uint64) error {
	h := a.hook
	ret := a.kind == KindKretprobe
	var fentryErr error
	if h.Attach == "fentry" || h.Attach == "auto" || h.Attach == "" {
		fentryErr = e.feats.FentryErr
		if fentryErr == nil {
			fentryErr = e.attachTracing(a, cookie, ret)
			if fentryErr == nil {
				return nil
			}
		}
		if h.Attach == "fentry" {
			return fmt.Errorf("%s %s: attach: fentry requested, but %w", h.Kind, h.Target, fentryErr)
		}
	}
	if err := e.feats.Kprobes; err != nil {
		if fentryErr != nil {
			return fmt.Errorf("%s %s: this kernel offers neither fentry (%v) nor kprobes (%v)", h.Kind, h.Target, fentryErr, err)
		}
		return fmt.Errorf("%s %s: attach: kprobe requested, but %w", h.Kind, h.Target, err)
	}
	a.mechanism = MechanismKprobe
	name := bpf.ProgKprobe
	attach := link.Kprobe
	if ret {
		a.mechanism, name, attach = MechanismKretprobe, bpf.ProgKretprobe, link.Kretprobe
	}
	args, _, err := e.resolveArgs(h, a.planned, a.mechanism)
	if err != nil {
		return err
	}
	a.args = args
	prog, err := e.p.Program(name)
	if err != nil {
		return err
	}
	l, err := attach(h.Target, prog, &link.KprobeOptions{Cookie: cookie})
	if err != nil {
		return fmt.Errorf("attach %s to %s: %w", a.mechanism, h.Target, err)
	}
	a.links = []link.Link{l}
	if ret && stashes(a.args) {
		// The registers are gone at return: a kprobe at the entry (same
		// cookie) saves the arguments for the kretprobe.
		entry, err := e.p.Program(bpf.ProgKprobe)
		if err == nil {
			var el link.Link
			if el, err = link.Kprobe(h.Target, entry, &link.KprobeOptions{Cookie: cookie}); err == nil {
				a.links = append(a.links, el)
			}
		}
		if err != nil {
			l.Close()
			return fmt.Errorf("attach the entry kprobe that saves %s's arguments for its kretprobe: %w", h.Target, err)
		}
	}
	if fentryErr != nil {
		e.log.Info("fentry unavailable, using kprobes", "function", h.Target, "reason", fentryErr.Error())
	}
	return nil
}

// stashes reports whether a kretprobe reads arguments: they are saved at
// the function's entry.
func stashes(args []bpf.HookArg) bool {
	for _, a := range args {
		if a.Source == bpf.HookSrcArg {
			return true
		}
	}
	return false
}

func (e *Hooks) attachTracing(a *attachment, cookie uint64, ret bool) error {
	name, typ, mech := bpf.ProgFentry, ebpf.AttachTraceFEntry, MechanismFentry
	if ret {
		name, typ, mech = bpf.ProgFexit, ebpf.AttachTraceFExit, MechanismFexit
	}
	args, _, err := e.resolveArgs(a.hook, a.planned, mech)
	if err != nil {
		return err
	}
	prog, err := e.p.TracingProgram(name, a.hook.Target)
	if err != nil {
		return err
	}
	l, err := link.AttachTracing(link.TracingOptions{Program: prog, AttachType: typ, Cookie: cookie})
	if err != nil {
		e.p.ReleaseTracingProgram(name, a.hook.Target)
		return fmt.Errorf("attach %s to %s: %w", mech, a.hook.Target, err)
	}
	a.mechanism, a.args, a.links, a.program = mech, args, []link.Link{l}, name
	return nil
}

func (e *Hooks) detach(a *attachment) {
	for _, l := range a.links {
		l.Close()
	}
	a.links = nil
	if a.program != "" {
		e.p.ReleaseTracingProgram(a.program, a.hook.Target)
	}
}

// resolveArgs completes the hook's arguments as planned (the plan's
// bpf.HookArg of each) for the chosen mechanism on this kernel:
// tracepoint fields by the tracefs format, integer widths by BTF or the
// syscall's tracepoint; and gives the numbers of its syscalls.
func (e *Hooks) resolveArgs(h codegen.KernelHook, planned []bpf.HookArg, mechanism Mechanism) ([]bpf.HookArg, []int, error) {
	var fields map[string]tpField
	var widths []tpField // per argument index, when known
	var syscalls []int
	switch kindOf(h) {
	case KindTracepoint:
		var err error
		if fields, _, err = tracepointFormat(h.Target); err != nil {
			return nil, nil, err
		}
	case KindSyscall:
		for _, name := range h.Syscalls {
			if name == "*" {
				for nr := 0; nr < bpf.HookSyscalls; nr++ {
					syscalls = append(syscalls, nr)
				}
				continue
			}
			nr, ok := bpf.SyscallNumber(runtime.GOARCH, name)
			if !ok {
				// open exists on amd64, not on arm64: a policy names both.
				e.log.Info("system call does not exist on this architecture", "syscall", name, "arch", runtime.GOARCH)
				continue
			}
			if nr >= bpf.HookSyscalls {
				return nil, nil, fmt.Errorf("syscall %s has number %d, beyond grain's table of %d", name, nr, bpf.HookSyscalls)
			}
			syscalls = append(syscalls, nr)
		}
		if len(syscalls) == 0 {
			return nil, nil, fmt.Errorf("none of the system calls %s exists on %s", strings.Join(h.Syscalls, ", "), runtime.GOARCH)
		}
		slices.Sort(syscalls)
		syscalls = slices.Compact(syscalls)
		// Argument widths from the first syscall's tracepoint format that
		// this kernel has (syscalls of one hook have alike arguments).
		for _, name := range h.Syscalls {
			_, ordered, err := tracepointFormat("syscalls/sys_enter_" + name)
			if name == "*" || err != nil {
				continue
			}
			for _, f := range ordered {
				if f.name != "__syscall_nr" && !strings.HasPrefix(f.name, "common_") {
					widths = append(widths, f)
				}
			}
			break
		}
	case KindKprobe, KindKretprobe:
		widths = functionParams(h.Target)
	}
	out := make([]bpf.HookArg, 0, len(h.Args))
	for i, a := range h.Args {
		ka := planned[i]
		switch ka.Source {
		case bpf.HookSrcArg:
			if a.Index < len(widths) {
				ka.Width = widths[a.Index].width
			}
		case bpf.HookSrcRet:
			if mechanism.atReturn() {
				if w := functionReturn(h.Target); w.width != 0 {
					ka.Width = w.width
				}
			}
		case bpf.HookSrcField:
			f, ok := fields[a.Field]
			if !ok {
				var names []string
				for n := range fields {
					if !strings.HasPrefix(n, "common_") {
						names = append(names, n)
					}
				}
				slices.Sort(names)
				return nil, nil, fmt.Errorf("tracepoint %s has no field %q (fields: %s)", h.Target, a.Field, strings.Join(names, ", "))
			}
			ka.Offset, ka.Size, ka.Width = uint16(f.offset), uint16(f.size), f.width
			if f.signed {
				ka.Flags |= bpf.HookFieldSigned
			}
			isString := a.Type == "string" || a.Type == "user_string"
			switch {
			case f.dataLoc:
				if !isString {
					return nil, nil, fmt.Errorf("tracepoint %s field %s is a string (%s): declare it type: \"string\"", h.Target, a.Field, f.ctype)
				}
				ka.Flags |= bpf.HookFieldDataLoc
				ka.Type = bpf.HookTString
			case f.array:
				if !isString {
					return nil, nil, fmt.Errorf("tracepoint %s field %s is an array (%s): only char arrays can be read, as type: \"string\"", h.Target, a.Field, f.ctype)
				}
				ka.Flags |= bpf.HookFieldArray
				ka.Type = bpf.HookTString
			case f.size > 8:
				return nil, nil, fmt.Errorf("tracepoint %s field %s (%s, %d bytes) is not an integer or pointer", h.Target, a.Field, f.ctype, f.size)
			case isString && !strings.Contains(f.ctype, "*"):
				return nil, nil, fmt.Errorf("tracepoint %s field %s (%s) is not a string", h.Target, a.Field, f.ctype)
			}
		}
		out = append(out, ka)
	}
	return out, syscalls, nil
}

// tpField is one field of a tracepoint's record.
type tpField struct {
	name           string
	ctype          string
	offset, size   int
	width          uint8 // integer width by the C type
	signed         bool
	dataLoc, array bool
}

// tracepointFormat reads /sys/kernel/tracing/events/CAT/NAME/format.
func tracepointFormat(target string) (map[string]tpField, []tpField, error) {
	if err := bpf.EnsureTracefs(); err != nil {
		return nil, nil, err
	}
	path := filepath.Join(bpf.TracefsPath, "events", target, "format")
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil, fmt.Errorf("tracepoint %s does not exist on this kernel (no %s)", target, path)
		}
		return nil, nil, fmt.Errorf("read tracepoint format: %w", err)
	}
	fields := map[string]tpField{}
	var ordered []tpField
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "field:") {
			continue
		}
		var f tpField
		var decl string
		for _, part := range strings.Split(line, ";") {
			k, v, ok := strings.Cut(strings.TrimSpace(part), ":")
			if !ok {
				continue
			}
			switch k {
			case "field":
				decl = v
			case "offset":
				fmt.Sscan(v, &f.offset)
			case "size":
				fmt.Sscan(v, &f.size)
			case "signed":
				f.signed = v == "1"
			}
		}
		f.dataLoc = strings.HasPrefix(decl, "__data_loc ")
		decl = strings.TrimPrefix(decl, "__data_loc ")
		i := strings.LastIndexAny(decl, " *")
		f.name, f.ctype = decl[i+1:], strings.TrimSpace(decl[:i+1])
		if j := strings.IndexByte(f.name, '['); j >= 0 {
			f.ctype += f.name[j:]
			f.name = f.name[:j]
			f.array = !f.dataLoc
		}
		f.width = uint8(min(f.size, 8))
		if w := cTypeWidth(f.ctype); w != 0 && w < f.width {
			f.width = w // syscall tracepoints store an int in a long
		}
		fields[f.name] = f
		ordered = append(ordered, f)
	}
	return fields, ordered, nil
}

// cTypeWidth is the width of common 32-bit C integer types, 0 otherwise.
func cTypeWidth(ctype string) uint8 {
	t := strings.TrimSpace(strings.TrimPrefix(ctype, "const "))
	if strings.Contains(t, "*") || strings.Contains(t, "long") || strings.Contains(t, "64") || strings.Contains(t, "size_t") {
		return 0
	}
	switch t {
	case "int", "unsigned int", "unsigned", "pid_t", "uid_t", "gid_t", "key_serial_t", "clockid_t", "mqd_t", "u32", "s32", "__u32", "__s32", "rwf_t", "qid_t":
		return 4
	case "umode_t", "unsigned short", "short", "u16", "__u16":
		return 2
	}
	return 0
}

var (
	kernelBTFOnce sync.Once
	kernelBTF     *btf.Spec
)

func loadKernelBTF() *btf.Spec {
	kernelBTFOnce.Do(func() { kernelBTF, _ = btf.LoadKernelSpec() })
	return kernelBTF
}

// functionParams returns the integer widths of fn's parameters from the
// kernel's BTF (width 8 for pointers and when unknown).
func functionParams(fn string) []tpField {
	proto := functionProto(fn)
	if proto == nil {
		return nil
	}
	var out []tpField
	for _, p := range proto.Params {
		out = append(out, btfWidth(p.Type))
	}
	return out
}

func functionReturn(fn string) tpField {
	proto := functionProto(fn)
	if proto == nil {
		return tpField{}
	}
	return btfWidth(proto.Return)
}

func functionProto(fn string) *btf.FuncProto {
	spec := loadKernelBTF()
	if spec == nil {
		return nil
	}
	var f *btf.Func
	if err := spec.TypeByName(fn, &f); err != nil {
		return nil
	}
	proto, _ := f.Type.(*btf.FuncProto)
	return proto
}

func btfWidth(t btf.Type) tpField {
	t = btf.UnderlyingType(t)
	switch v := t.(type) {
	case *btf.Int:
		return tpField{width: uint8(min(v.Size, 8)), signed: v.Encoding == btf.Signed}
	case *btf.Enum:
		return tpField{width: uint8(min(v.Size, 8)), signed: v.Signed}
	}
	return tpField{width: 8}
}

// cgroupID resolves a cgroup v2 path ("/system.slice/x.service") to its id,
// the inode number of its directory.
func (e *Hooks) cgroupID(path string) (uint64, error) {
	root := e.cgroupRoot
	if root == "" {
		root = Cgroup2Mount()
	}
	var st unix.Stat_t
	full := filepath.Join(root, filepath.Clean("/"+path))
	if err := unix.Stat(full, &st); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w (cgroup v2 mounted at %s)", path, err, root)
	}
	return st.Ino, nil
}

// Cgroup2Mount finds where the cgroup v2 hierarchy is mounted: the first
// cgroup2 mount point that still is one (a later mount can hide an earlier
// one, e.g. cgroup2 mounted over a hybrid /sys/fs/cgroup that holds
// /sys/fs/cgroup/unified).
func Cgroup2Mount() string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			pre, post, ok := strings.Cut(line, " - ")
			if !ok || !strings.HasPrefix(post, "cgroup2 ") {
				continue
			}
			var st unix.Statfs_t
			if f := strings.Fields(pre); len(f) >= 5 && unix.Statfs(f[4], &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
				return f[4]
			}
		}
	}
	return "/sys/fs/cgroup"
}

// writeInactive fills the inactive generation with pp, which no program
// reads until the commit, and returns it with the epoch of its rule ids.
// e.mu held.
func (e *Hooks) writeInactive(pp *codegen.HookPlan, hooks map[string]*attachment) (*generation.Pending[codegen.HookRule], error) {
	return e.gen.Prepare(pp.Rules, func(next, epoch uint32) error { return e.fill(pp, hooks, next, epoch) })
}

// fill writes pp's map entries (codegen.HookMaps) into generation next
// as they are, adding the generation to keys, epoch to rule ids, and what
// depends on this machine: the hooks' slots, mechanisms and resolved
// arguments, syscall numbers and cgroup ids.
func (e *Hooks) fill(pp *codegen.HookPlan, hooks map[string]*attachment, next, epoch uint32) error {
	m := e.p.Maps()
	pm := &pp.Maps
	// Resolve what may fail before touching the maps.
	filters := make([]bpf.HookFilter, len(pm.Filters))
	values := make([][]uint64, len(pm.Filters))
	for i, f := range pm.Filters {
		filters[i], values[i] = f.Filter.Value, f.Values
		if len(f.Cgroups) == 0 {
			continue
		}
		ids := make([]uint64, 0, len(f.Cgroups))
		for _, path := range f.Cgroups {
			id, err := e.cgroupID(path)
			if err != nil {
				return fmt.Errorf("policy %s: %w", pp.Rules[f.Rule].Policy, err)
			}
			ids = append(ids, id)
		}
		if filters[i].Op == bpf.HookOpIn {
			copy(filters[i].Vals[:], ids)
		} else {
			values[i] = ids
		}
	}
	if len(filters) > bpf.HookMaxFilters {
		return fmt.Errorf("too many match conditions: %d, at most %d", len(filters), bpf.HookMaxFilters)
	}
	kRules := make([]bpf.HookRule, len(pm.Rules))
	for i, r := range pm.Rules {
		kRules[i] = r.Value
		kRules[i].Id = generation.RuleID(epoch, i)
	}

	// The generation is no longer read by any program: fold its counters
	// into the totals and clear what its plan wrote.
	if err := e.harvest(next); err != nil {
		return err
	}
	old := e.written[next]
	if old != nil {
		for _, k := range old.values {
			m.Values.Delete(k)
		}
		for _, k := range old.strings {
			m.Strings.Delete(k)
		}
	}
	gen := &generationContents{epoch: epoch, rules: pp.Rules}
	e.written[next] = gen
	// Hooks: every slot of the generation.
	kHooks := make([]bpf.Hook, bpf.HookMaxHooks)
	sysHooks := make([]bpf.HookSyscall, bpf.HookSyscalls)
	for i, h := range pp.Hooks {
		a := hooks[h.Key()]
		kh := pm.Hooks[i].Value
		kh.Kind = uint8(a.mechanism.kernelKind(a.kind))
		if a.mechanism == MechanismKretprobe && stashes(a.args) {
			kh.Flags |= bpf.HookStash
		}
		copy(kh.Args[:], a.args)
		if kh.CountRule != 0 {
			kh.CountId = kRules[kh.CountRule-1].Id
		}
		kHooks[a.slot] = kh
		for _, nr := range a.syscalls {
			s := &sysHooks[nr]
			if int(s.Nhooks) == bpf.HookSyscallHooks {
				return fmt.Errorf("syscall %d: more than %d hooks", nr, bpf.HookSyscallHooks)
			}
			s.Hooks[s.Nhooks] = uint8(a.slot)
			s.Nhooks++
		}
	}
	for nr := range sysHooks {
		if s := &sysHooks[nr]; s.Nhooks == 1 {
			h := &kHooks[s.Hooks[0]]
			s.CountRule, s.CountId, s.CountFields = h.CountRule, h.CountId, h.CountFields
		}
	}
	if err := generation.PutRange(m.Hooks, next*bpf.HookMaxHooks, kHooks); err != nil {
		return fmt.Errorf("write hooks: %w", err)
	}
	if err := generation.PutRange(m.Syscalls, next*bpf.HookSyscalls, sysHooks); err != nil {
		return fmt.Errorf("write syscall table: %w", err)
	}
	if err := generation.PutRange(m.Rules, next*bpf.HookMaxRules, kRules); err != nil {
		return fmt.Errorf("write rules: %w", err)
	}
	for i, f := range pm.Filters {
		id := next*bpf.HookMaxFilters + uint32(i)
		for _, v := range values[i] {
			k := bpf.HookValueKey{Filter: id, Value: v}
			if err := m.Values.Put(k, uint8(1)); err != nil {
				return fmt.Errorf("write match value: %w", err)
			}
			gen.values = append(gen.values, k)
		}
		for _, sk := range f.Strings {
			k := sk.Value
			k.Filter = id
			if err := m.Strings.Put(k, uint8(1)); err != nil {
				return fmt.Errorf("write match string: %w", err)
			}
			gen.strings = append(gen.strings, k)
		}
	}
	if err := generation.PutRange(m.Filters, next*bpf.HookMaxFilters, filters); err != nil {
		return fmt.Errorf("write filters: %w", err)
	}
	// Fresh counters and rate windows for the generation's rules.
	zero := make([]bpf.HookCounter, generation.PossibleCPUs())
	for i := range pp.Rules {
		key := next*bpf.HookMaxRules + uint32(i)
		if err := m.Counters.Put(key, zero); err != nil {
			return fmt.Errorf("reset counters: %w", err)
		}
		if err := m.Rate.Put(key, bpf.HookRate{}); err != nil {
			return fmt.Errorf("reset rate limit: %w", err)
		}
	}
	return nil
}

// Attachments reports every attached hook and the mechanism chosen for it
// (fentry or kprobe for functions), sorted by kind and target.
func (e *Hooks) Attachments() []Attachment {
	e.mu.Lock()
	defer e.mu.Unlock()
	gen := e.written[e.gen.Active()]
	var out []Attachment
	for _, a := range e.hooks {
		pa := Attachment{Kind: a.kind, Target: a.hook.Target, Syscalls: a.hook.Syscalls, Mechanism: a.mechanism, Cookie: a.slot}
		if gen != nil {
			for _, ri := range a.hook.Rules {
				if ri < len(gen.rules) {
					pa.Policies = append(pa.Policies, gen.rules[ri].Policy)
				}
			}
		}
		out = append(out, pa)
	}
	slices.SortFunc(out, func(a, b Attachment) int {
		if c := strings.Compare(a.Kind.String(), b.Kind.String()); c != 0 {
			return c
		}
		if c := strings.Compare(a.Target, b.Target); c != 0 {
			return c
		}
		return strings.Compare(strings.Join(a.Syscalls, ","), strings.Join(b.Syscalls, ","))
	})
	return out
}

// Mechanism returns how the hook of kind on target ("tcp_v4_connect") is
// attached (MechanismFentry, MechanismKprobe, ...), or 0 when no such hook
// is attached.
func (e *Hooks) Mechanism(kind Kind, target string) Mechanism {
	for _, a := range e.Attachments() {
		if a.Kind == kind && a.Target == target {
			return a.Mechanism
		}
	}
	return 0
}

// Close detaches every hook and frees the programs and maps.
func (e *Hooks) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, a := range e.hooks {
		e.detach(a)
	}
	e.hooks = map[string]*attachment{}
	if e.sysLink != nil {
		e.sysLink.Close()
		e.sysLink = nil
	}
	var errs []error
	if e.gen != nil {
		errs = append(errs, e.gen.Close())
	}
	if e.p != nil {
		errs = append(errs, e.p.Close())
		e.p = nil
	}
	return errors.Join(errs...)
}
