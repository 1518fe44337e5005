package bpf

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
)

// Hooks holds the maps of the generic kernel-hook programs and the programs
// loaded so far. Programs are loaded when first needed: a kernel without
// kprobes can still run tracepoint hooks. fentry/fexit programs are loaded
// once per target function (the kernel binds them to it at load time);
// every copy is the same bytecode and finds its configuration by cookie,
// like the others.
type Hooks struct {
	spec *ebpf.CollectionSpec
	maps map[string]*ebpf.Map

	mu      sync.Mutex
	progs   map[string]*ebpf.Program // by program name
	tracing map[string]*ebpf.Program // "grain_fentry:func"
}

// HookOptions tune the maps of the kernel-hook programs before loading.
type HookOptions struct {
	// RingBufferBytes sizes the event ring buffer (a power of two, at least
	// one page). Zero keeps the compiled-in 4 MiB.
	RingBufferBytes uint32
}

// Kernel-hook program names.
const (
	ProgKprobe     = "grain_kprobe"
	ProgKretprobe  = "grain_kretprobe"
	ProgFentry     = "grain_fentry"
	ProgFexit      = "grain_fexit"
	ProgTracepoint = "grain_tracepoint"
	ProgSysEnter   = "grain_sys_enter"
	// ProgRawTracepoint serves tracepoint hooks that read no record field,
	// where raw tracepoints take a cookie (Linux 6.10).
	ProgRawTracepoint = "grain_raw_tracepoint"
)

// LoadHooks creates the maps of the generic kernel-hook programs. Programs are
// loaded by Program and TracingProgram.
func LoadHooks(opts HookOptions) (*Hooks, error) {
	if err := CheckPrivileges(); err != nil {
		return nil, err
	}
	if err := features.HaveMapType(ebpf.RingBuf); err != nil {
		return nil, fmt.Errorf("kernel lacks BPF ring buffers (needs Linux 5.8 or later): %w", err)
	}
	spec, err := loadHook()
	if err != nil {
		return nil, fmt.Errorf("parse embedded hook object: %w", err)
	}
	if opts.RingBufferBytes != 0 {
		spec.Maps["hook_events"].MaxEntries = opts.RingBufferBytes
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("count possible CPUs: %w", err)
	}
	spec.Maps["hook_count_pending"].MaxEntries = uint32(cpus) * HookNestLevels
	mapsOnly := spec.Copy()
	mapsOnly.Programs = map[string]*ebpf.ProgramSpec{}
	coll, err := ebpf.NewCollection(mapsOnly)
	if err != nil {
		return nil, fmt.Errorf("create hook maps: %w", err)
	}
	p := &Hooks{spec: spec, maps: coll.Maps, progs: map[string]*ebpf.Program{}, tracing: map[string]*ebpf.Program{}}
	return p, nil
}

// load loads one program of the object with the shared maps.
func (p *Hooks) load(name, attachTo string) (*ebpf.Program, error) {
	cs := p.spec.Copy()
	ps, ok := cs.Programs[name]
	if !ok {
		return nil, fmt.Errorf("hook object has no program %s", name)
	}
	if attachTo != "" {
		ps.AttachTo = attachTo
	}
	cs.Programs = map[string]*ebpf.ProgramSpec{name: ps}
	coll, err := ebpf.NewCollectionWithOptions(cs, ebpf.CollectionOptions{MapReplacements: p.maps})
	if err != nil {
		what := name
		if attachTo != "" {
			what += " for " + attachTo
		}
		return nil, explainLoadError(what, ps, err)
	}
	prog := coll.Programs[name]
	delete(coll.Programs, name)
	coll.Close()
	return prog, nil
}

// Program returns the program name (ProgKprobe, ProgKretprobe,
// ProgTracepoint, ProgRawTracepoint, ProgSysEnter), loading it on first use.
func (p *Hooks) Program(name string) (*ebpf.Program, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if prog, ok := p.progs[name]; ok {
		return prog, nil
	}
	prog, err := p.load(name, "")
	if err != nil {
		return nil, err
	}
	p.progs[name] = prog
	return prog, nil
}

// TracingProgram returns the fentry or fexit program (ProgFentry,
// ProgFexit) bound to the kernel function fn, loading it on first use.
func (p *Hooks) TracingProgram(name, fn string) (*ebpf.Program, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := name + ":" + fn
	if prog, ok := p.tracing[key]; ok {
		return prog, nil
	}
	prog, err := p.load(name, fn)
	if err != nil {
		return nil, err
	}
	p.tracing[key] = prog
	return prog, nil
}

// ReleaseTracingProgram unloads the fentry/fexit copy of fn (after its
// link is closed).
func (p *Hooks) ReleaseTracingProgram(name, fn string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := name + ":" + fn
	if prog, ok := p.tracing[key]; ok {
		prog.Close()
		delete(p.tracing, key)
	}
}

// HookMaps are the maps of the kernel-hook programs.
type HookMaps struct {
	Active, Hooks, Syscalls, Rules, Filters, Values, Strings *ebpf.Map
	Counters, Rate, Counts, CountsSmall, Events              *ebpf.Map
	// Scratch holds each CPU's working memory, one value per nesting
	// level (HookNestLevels); Nesting counts, per CPU, the calls that
	// found another grain program running on their CPU (HookNesting).
	Scratch, Nesting *ebpf.Map
	// CountPending holds, per CPU and nesting level, the last count key
	// and its calls not yet added to Counts or CountsSmall
	// (HookCountPending): readers add it after reading those maps. It is
	// one array of every CPU's slots, keyed by HookCountSlot.
	CountPending *ebpf.Map
}

// HookCountSlot is the CountPending key of nesting level level of CPU cpu.
func HookCountSlot(cpu int, level uint32) uint32 {
	return uint32(cpu)*HookNestLevels + level
}

// Maps returns the kernel-hook maps.
func (p *Hooks) Maps() HookMaps {
	m := p.maps
	return HookMaps{
		Active: m["hook_active"], Hooks: m["hooks"], Syscalls: m["hook_syscalls"],
		Rules: m["hook_rules"], Filters: m["hook_filters"], Values: m["hook_values"],
		Strings: m["hook_strings"], Counters: m["hook_counters"], Rate: m["hook_rate"],
		Counts: m["hook_counts"], CountsSmall: m["hook_counts_small"], Events: m["hook_events"],
		Scratch: m["hook_scratch"], Nesting: m["hook_nesting"], CountPending: m["hook_count_pending"],
	}
}

// Close unloads every program and frees the maps held by this process.
func (p *Hooks) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, prog := range p.progs {
		errs = append(errs, prog.Close())
	}
	for _, prog := range p.tracing {
		errs = append(errs, prog.Close())
	}
	for _, m := range p.maps {
		errs = append(errs, m.Close())
	}
	p.progs, p.tracing, p.maps = nil, nil, nil
	return errors.Join(errs...)
}

// Map-value mirrors of hook.h, for the engine that fills the maps.
type (
	HookActive        = hookGrainHookActive
	HookArg           = hookGrainHookArg
	Hook              = hookGrainHook
	HookSyscall       = hookGrainHookSyscall
	HookSelector      = hookGrainHookSelector
	HookLabel         = hookGrainHookLabel
	HookRule          = hookGrainHookRule
	HookFilter        = hookGrainHookFilter
	HookValueKey      = hookGrainHookValueKey
	HookStringKey     = hookGrainHookStringKey
	HookCounter       = hookGrainHookCounter
	HookRate          = hookGrainHookRate
	HookCountKey      = hookGrainHookCountKey
	HookCountKeySmall = hookGrainHookCountKeySmall
	HookCount         = hookGrainHookCount
	HookNesting       = hookGrainHookNesting
	HookCountPending  = hookGrainHookCountPending
)
