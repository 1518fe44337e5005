// Package engine applies Plans to the kernel: it writes a plan into the
// inactive generation of the XDP program's maps and flips to it, keeps the
// program attached to the plan's interfaces, and turns ring-buffer events
// into JSON lines.
package engine

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"

	"github.com/cilium/ebpf/link"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
)

// Options configure an Engine.
type Options struct {
	Logger *slog.Logger
	// RingBufferBytes sizes the event ring buffer; zero keeps 1 MiB.
	RingBufferBytes uint32
}

// Engine owns the loaded XDP program, its maps and its attachments.
type Engine struct {
	log *slog.Logger
	xdp *bpf.XDP

	mu     sync.Mutex
	active uint32 // generation the program reads
	// plans[g] is the plan written into generation g, for counters.
	plans [bpf.Generations]*codegen.Plan
	// epoch counts applies; events carry it in their rule id, so an event
	// still queued after its generation was rewritten keeps its own plan.
	epoch   uint32
	byEpoch map[uint32]*codegen.Plan
	links   map[string]link.Link // interface name -> XDP link
}

// New loads the generic XDP program. Nothing is attached yet.
func New(opts Options) (*Engine, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	x, err := bpf.LoadXDP(bpf.XDPOptions{RingBufferBytes: opts.RingBufferBytes})
	if err != nil {
		return nil, err
	}
	return &Engine{log: log, xdp: x, links: map[string]link.Link{}, byEpoch: map[uint32]*codegen.Plan{}}, nil
}

// XDP exposes the loaded program, for tests and benchmarks that run it
// with BPF_PROG_TEST_RUN.
func (e *Engine) XDP() *bpf.XDP { return e.xdp }

// Apply makes plan the active rule set: it resolves the plan's interfaces,
// writes the inactive generation, flips the active word (each packet reads
// it once, so it sees the old rules or the new, never a mix) and then
// attaches to new interfaces and detaches from ones the plan dropped.
func (e *Engine) Apply(plan *codegen.Plan) error {
	ifindex := map[string]uint32{}
	for _, a := range plan.Attachments {
		iface, err := net.InterfaceByName(a.Interface)
		if err != nil {
			return fmt.Errorf("interface %q named by the policies does not exist (check `ip link`, or pass --interface): %w", a.Interface, err)
		}
		ifindex[a.Interface] = uint32(iface.Index)
	}
	return e.apply(plan, ifindex, true)
}

// ApplyTables writes and activates plan without touching attachments, with
// interface indices given by the caller (tests run the program on crafted
// packets with BPF_PROG_TEST_RUN).
func (e *Engine) ApplyTables(plan *codegen.Plan, ifindex map[string]uint32) error {
	return e.apply(plan, ifindex, false)
}

func (e *Engine) apply(plan *codegen.Plan, ifindex map[string]uint32, attach bool) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	maps := e.xdp.Maps()
	next := 1 - e.active
	epoch := (e.epoch + 1) & maxEpoch
	if err := writeGeneration(maps, next, epoch, plan, ifindex); err != nil {
		return fmt.Errorf("write rule generation %d: %w", next, err)
	}
	e.plans[next] = plan
	e.epoch = epoch
	e.byEpoch[epoch] = plan
	delete(e.byEpoch, (epoch-keptEpochs)&maxEpoch)
	if err := maps.Active.Put(uint32(0), bpf.Active{Generation: next}); err != nil {
		return fmt.Errorf("activate rule generation %d: %w", next, err)
	}
	e.active = next
	if !attach {
		return nil
	}
	return e.syncAttachments(plan, ifindex)
}

func (e *Engine) syncAttachments(plan *codegen.Plan, ifindex map[string]uint32) error {
	want := map[string]bool{}
	var errs []error
	for _, a := range plan.Attachments {
		want[a.Interface] = true
		if _, ok := e.links[a.Interface]; ok {
			continue
		}
		l, err := link.AttachXDP(link.XDPOptions{Program: e.xdp.Program(), Interface: int(ifindex[a.Interface])})
		if err != nil {
			errs = append(errs, fmt.Errorf("attach XDP to %s: %w (another XDP program may be attached: `ip link set dev %s xdp off`)", a.Interface, err, a.Interface))
			continue
		}
		e.links[a.Interface] = l
		e.log.Info("attached", "program", codegen.XDPProgram, "interface", a.Interface, "ifindex", ifindex[a.Interface])
	}
	for name, l := range e.links {
		if !want[name] {
			if err := l.Close(); err != nil {
				errs = append(errs, fmt.Errorf("detach from %s: %w", name, err))
			}
			delete(e.links, name)
			e.log.Info("detached", "interface", name)
		}
	}
	return errors.Join(errs...)
}

// Interfaces lists the interfaces the program is attached to.
func (e *Engine) Interfaces() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for name := range e.links {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// Rule ids in the kernel are epoch<<ruleIndexBits | index.
const (
	ruleIndexBits = 11 // bpf.MaxRules
	maxEpoch      = 1<<(32-ruleIndexBits) - 1
	keptEpochs    = 16 // plans kept to name events still queued
)

func ruleID(epoch uint32, index int) uint32 { return epoch<<ruleIndexBits | uint32(index) }

// rule names the rule an event's id refers to, if its plan is still known.
func (e *Engine) rule(id uint32) (codegen.Rule, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	plan, index := e.byEpoch[id>>ruleIndexBits], int(id&(1<<ruleIndexBits-1))
	if plan == nil || index >= len(plan.Rules) {
		return codegen.Rule{}, false
	}
	return plan.Rules[index], true
}

// RuleCounter is the per-rule packet count of the active generation.
type RuleCounter struct {
	Policy     string `json:"policy"`
	Packets    uint64 `json:"packets"`
	Bytes      uint64 `json:"bytes"`
	Events     uint64 `json:"events"`
	EventsLost uint64 `json:"events_lost"`
}

// Counters sums the per-CPU counters of the active generation's rules.
func (e *Engine) Counters() ([]RuleCounter, error) {
	e.mu.Lock()
	gen, plan := e.active, e.plans[e.active]
	e.mu.Unlock()
	if plan == nil {
		return nil, nil
	}
	maps := e.xdp.Maps()
	var out []RuleCounter
	for _, r := range plan.Rules {
		var perCPU []bpf.Counter
		if err := maps.RuleCounters.Lookup(gen*bpf.MaxRules+uint32(r.Index), &perCPU); err != nil {
			return nil, fmt.Errorf("read counters: %w", err)
		}
		c := RuleCounter{Policy: r.Policy}
		for _, v := range perCPU {
			c.Packets += v.Packets
			c.Bytes += v.Bytes
			c.Events += v.Events
			c.EventsLost += v.EventsLost
		}
		out = append(out, c)
	}
	return out, nil
}

// Close detaches every interface and unloads the program.
func (e *Engine) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	var errs []error
	for name, l := range e.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach from %s: %w", name, err))
		}
		e.log.Info("detached", "interface", name)
		delete(e.links, name)
	}
	errs = append(errs, e.xdp.Close())
	return errors.Join(errs...)
}
