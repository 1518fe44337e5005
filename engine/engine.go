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
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
)

// Options configure an Engine.
type Options struct {
	Logger *slog.Logger
	// RingBufferBytes sizes the event ring buffer; zero keeps 1 MiB.
	RingBufferBytes uint32
	// PinPath, when set, is the bpffs directory where maps and links are
	// pinned: enforcement survives the process, and a new Engine with the
	// same PinPath adopts it without a moment unprotected.
	PinPath string
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

	pinPath string
	adopted bool
	// totals hold the counters of rule sets no longer in the maps.
	totals map[string]RuleCounter
	// grace is a one-slot map of maps: updating it returns only after an
	// RCU grace period, after which no packet still reads a generation
	// that was active before.
	grace, graceInner *ebpf.Map
}

// New loads the generic XDP program. Nothing is attached yet.
func New(opts Options) (*Engine, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	x, err := bpf.LoadXDP(bpf.XDPOptions{RingBufferBytes: opts.RingBufferBytes, PinPath: opts.PinPath})
	if err != nil {
		return nil, err
	}
	e := &Engine{log: log, xdp: x, links: map[string]link.Link{}, byEpoch: map[uint32]*codegen.Plan{}, pinPath: opts.PinPath,
		totals: map[string]RuleCounter{}}
	if err := e.initGrace(); err != nil {
		x.Close()
		return nil, err
	}
	if err := e.adopt(); err != nil {
		e.closeFDs()
		return nil, err
	}
	return e, nil
}

func (e *Engine) initGrace() error {
	inner := &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}
	var err error
	if e.graceInner, err = ebpf.NewMap(inner); err != nil {
		return fmt.Errorf("create grace-period map: %w", err)
	}
	e.grace, err = ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.ArrayOfMaps, KeySize: 4, ValueSize: 4, MaxEntries: 1, InnerMap: inner})
	if err != nil {
		e.graceInner.Close()
		return fmt.Errorf("create grace-period map (needs map-in-map support): %w", err)
	}
	return nil
}

// waitGracePeriod returns once every XDP run that began before it has
// ended: the kernel waits for an RCU grace period on a map-of-maps update.
func (e *Engine) waitGracePeriod() error {
	return e.grace.Put(uint32(0), e.graceInner)
}

func (e *Engine) linkPath(iface string) string {
	return filepath.Join(e.pinPath, "links", iface)
}

// adopt takes over the state pinned by an earlier grain: the active
// generation of the (reused) maps, and its links, which are switched to
// this process's program with a bpf_link update: the interface is never
// without a program.
func (e *Engine) adopt() error {
	if e.pinPath == "" {
		return nil
	}
	var act bpf.Active
	if err := e.xdp.Maps().Active.Lookup(uint32(0), &act); err != nil {
		return fmt.Errorf("read active generation: %w", err)
	}
	e.active = act.Generation & 1
	var r bpf.Rule
	if err := e.xdp.Maps().Rules.Lookup(e.active*bpf.MaxRules, &r); err == nil {
		e.epoch = r.Id >> ruleIndexBits // continue after the adopted rules' epoch
	}
	dir := filepath.Join(e.pinPath, "links")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read %s: %w", dir, err)
	}
	for _, ent := range entries {
		path := filepath.Join(dir, ent.Name())
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			e.log.Warn("dropping a pinned link that cannot be loaded", "path", path, "error", err)
			os.Remove(path)
			continue
		}
		if err := l.Update(e.xdp.Program()); err != nil {
			l.Close()
			return fmt.Errorf("switch the pinned XDP link on %s to this grain's program: %w", ent.Name(), err)
		}
		e.links[ent.Name()] = l
		e.adopted = true
		e.log.Info("adopted", "interface", ent.Name(), "generation", e.active)
	}
	return nil
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
	// The inactive generation may have been active until the last flip:
	// wait until no packet can still be reading it.
	if err := e.waitGracePeriod(); err != nil {
		return fmt.Errorf("wait for an RCU grace period: %w", err)
	}
	next := 1 - e.active
	if err := e.harvest(next); err != nil {
		return err
	}
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
		mode := xdpMode(int(ifindex[a.Interface]))
		l, err := link.AttachXDP(link.XDPOptions{Program: e.xdp.Program(), Interface: int(ifindex[a.Interface]), Flags: mode})
		if err != nil {
			errs = append(errs, fmt.Errorf("attach XDP to %s: %w (another XDP program may be attached: `ip link set dev %s xdp off`)", a.Interface, err, a.Interface))
			continue
		}
		if e.pinPath != "" {
			if err := l.Pin(e.linkPath(a.Interface)); err != nil {
				l.Close()
				errs = append(errs, fmt.Errorf("pin XDP link of %s: %w", a.Interface, err))
				continue
			}
		}
		e.links[a.Interface] = l
		e.log.Info("attached", "program", codegen.XDPProgram, "interface", a.Interface, "ifindex", ifindex[a.Interface], "mode", modeName(mode))
	}
	for name, l := range e.links {
		if !want[name] {
			if e.pinPath != "" {
				l.Unpin()
			}
			if err := l.Close(); err != nil {
				errs = append(errs, fmt.Errorf("detach from %s: %w", name, err))
			}
			delete(e.links, name)
			e.log.Info("detached", "interface", name)
		}
	}
	return errors.Join(errs...)
}

// xdpMode picks the XDP attach mode for an interface. veth gets generic
// (skb) mode: in native mode veth converts every packet to an XDP frame and
// back, which costs passed packets ~650 ns each on this kind of machine,
// while generic mode costs ~150 ns and drops cheaper too (BENCHMARKS.md).
// Other drivers get the kernel's default: native where the driver supports
// it.
func xdpMode(ifindex int) link.XDPAttachFlags {
	l, err := netlink.LinkByIndex(ifindex)
	if err == nil && l.Type() == "veth" {
		return link.XDPGenericMode
	}
	return 0
}

func modeName(f link.XDPAttachFlags) string {
	if f == link.XDPGenericMode {
		return "generic"
	}
	return "driver default"
}

// Adopted reports whether the engine took over enforcement pinned by an
// earlier grain.
func (e *Engine) Adopted() bool { return e.adopted }

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

// generationCounters sums the per-CPU counters of the rules of plan,
// written in generation gen, by policy name.
func (e *Engine) generationCounters(gen uint32, plan *codegen.Plan) (map[string]RuleCounter, error) {
	out := map[string]RuleCounter{}
	if plan == nil {
		return out, nil
	}
	maps := e.xdp.Maps()
	var perCPU []bpf.Counter
	for _, r := range plan.Rules {
		if err := maps.RuleCounters.Lookup(gen*bpf.MaxRules+uint32(r.Index), &perCPU); err != nil {
			return nil, fmt.Errorf("read counters: %w", err)
		}
		c := out[r.Policy]
		c.Policy = r.Policy
		for _, v := range perCPU {
			c.Packets += v.Packets
			c.Bytes += v.Bytes
			c.Events += v.Events
			c.EventsLost += v.EventsLost
		}
		out[r.Policy] = c
	}
	return out, nil
}

func addCounters(into map[string]RuleCounter, from map[string]RuleCounter) {
	for name, c := range from {
		t := into[name]
		t.Policy = name
		t.Packets += c.Packets
		t.Bytes += c.Bytes
		t.Events += c.Events
		t.EventsLost += c.EventsLost
		into[name] = t
	}
}

// harvest folds the counters of the plan last written into generation gen
// into the running totals, before gen is rewritten (after a grace period,
// so they are final).
func (e *Engine) harvest(gen uint32) error {
	c, err := e.generationCounters(gen, e.plans[gen])
	if err != nil {
		return err
	}
	addCounters(e.totals, c)
	e.plans[gen] = nil
	return nil
}

// Counters returns per-policy counters since the engine started, summed over
// every rule set that was in force: they keep counting across reloads.
func (e *Engine) Counters() ([]RuleCounter, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	sum := map[string]RuleCounter{}
	addCounters(sum, e.totals)
	for gen := uint32(0); gen < bpf.Generations; gen++ {
		c, err := e.generationCounters(gen, e.plans[gen])
		if err != nil {
			return nil, err
		}
		addCounters(sum, c)
	}
	out := make([]RuleCounter, 0, len(sum))
	for _, c := range sum {
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b RuleCounter) int { return strings.Compare(a.Policy, b.Policy) })
	return out, nil
}

// Close detaches every interface, removes the pins and unloads the program.
func (e *Engine) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	var errs []error
	for name, l := range e.links {
		if e.pinPath != "" {
			l.Unpin()
		}
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach from %s: %w", name, err))
		}
		e.log.Info("detached", "interface", name)
		delete(e.links, name)
	}
	if e.pinPath != "" {
		errs = append(errs, e.xdp.Unpin())
		// Only empty directories go: anything else there is not grain's.
		os.Remove(filepath.Join(e.pinPath, "links"))
		os.Remove(e.pinPath)
	}
	errs = append(errs, e.closeFDs())
	return errors.Join(errs...)
}

// Release closes this process's handles but leaves the pinned links and
// maps in place: enforcement continues without grain (--keep-on-exit), and
// the next grain adopts it.
func (e *Engine) Release() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for name, l := range e.links {
		l.Close()
		delete(e.links, name)
		e.log.Info("left attached", "interface", name, "pin", e.linkPath(name))
	}
	return e.closeFDs()
}

func (e *Engine) closeFDs() error {
	var errs []error
	if e.grace != nil {
		errs = append(errs, e.grace.Close(), e.graceInner.Close())
	}
	errs = append(errs, e.xdp.Close())
	return errors.Join(errs...)
}
