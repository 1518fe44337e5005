// Package engine applies Plans to the kernel: it writes a plan into the
// inactive generation of the XDP program's maps and flips to it, keeps the
// program attached to the plan's interfaces, and turns ring-buffer events
// into JSON lines.
package engine

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/engine/generation"
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

	mu sync.Mutex
	// gen switches the rule generations (used with mu held) and names the
	// rules of every epoch whose events may still be read: events carry
	// the epoch in their rule id, so an event still queued after its
	// generation was rewritten keeps its own rules.
	gen *generation.Switch[codegen.Rule]
	// rules[g] are the rules written into generation g, for counters.
	rules [bpf.Generations][]codegen.Rule
	// index[g] is what generation g's part of the IPv4 prefix index
	// holds, nil when unknown (never written by this engine, or a write
	// failed): a reload then writes only the entries that change.
	index [bpf.Generations]*cidrIndexRuns
	links map[string]xdpLink // interface name -> XDP link
	// current is the plan last applied with its attachments (nil before
	// the first Apply and after Close): link events re-apply it.
	current *codegen.Plan

	pinPath string
	pinLock *os.File // flock held on pinPath while this engine uses it
	adopted bool
	// takeOver: the pinned state of an earlier grain uses maps this
	// program cannot (another version, another ring size). It stays in
	// force until the first apply has written this program's maps; that
	// apply then switches the pinned links and replaces the map pins.
	takeOver bool
	// totals hold the counters of rule sets no longer in the maps.
	totals generation.Tally[RuleCounter]
	// ifaces knows which interface each verdict counter slot counts.
	ifaces ifaceSlots
	// noTCX: veth gets generic XDP, because the kernel lacks tcx or the tc
	// program did not load. Guarded by mu.
	noTCX bool
}

// xdpLink is the XDP link of one interface and the ifindex it was
// attached to (0 when unknown: an adopted link whose info cannot be read).
type xdpLink struct {
	link.Link
	ifindex uint32
	hook    string // hookXDP, hookXDPGeneric or hookTCX
}

// New loads the maps of the packet programs. Nothing is attached yet, and
// no program verified: an attach verifies the one its interface needs
// (attachLink), so that start-up waits for one verification, not two.
func New(opts Options) (*Engine, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	// Not root, or no bpf(): say so before the pin directory says
	// "permission denied".
	if err := bpf.CheckPrivileges(); err != nil {
		return nil, err
	}
	var pinLock *os.File
	if opts.PinPath != "" {
		var err error
		if pinLock, err = lockPinPath(opts.PinPath); err != nil {
			return nil, err
		}
	}
	x, err := bpf.LoadXDP(bpf.XDPOptions{RingBufferBytes: opts.RingBufferBytes, PinPath: opts.PinPath})
	if err != nil {
		if pinLock != nil {
			pinLock.Close()
		}
		return nil, err
	}
	e := &Engine{log: log, xdp: x, links: map[string]xdpLink{}, pinPath: opts.PinPath,
		pinLock: pinLock, totals: generation.Tally[RuleCounter]{}, noTCX: bpf.HaveTCX() != nil}
	if x.CIDRIndexCreated() {
		// All zero: the first writes need not zero the whole of it.
		e.index = [bpf.Generations]*cidrIndexRuns{{}, {}}
	}
	if e.gen, err = generation.New[codegen.Rule](generation.Options{Activate: e.activate, Staged: x.StagedRuleIDs}); err != nil {
		e.closeFDs()
		return nil, err
	}
	if err := e.adopt(); err != nil {
		e.closeFDs()
		return nil, err
	}
	return e, nil
}

// lockPinPath takes the pin directory for this process: two grains on the
// same pinned state would each write the generation they think inactive,
// one of them the other's active one. The lock is the directory's flock,
// which the kernel releases when the process ends however it ends.
func lockPinPath(dir string) (*os.File, error) {
	if err := bpf.EnsureBPFFS(dir); err != nil {
		return nil, err
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open pin directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("another grain is running with the pin directory %s: stop it first (an upgrade: stop it with --keep-on-exit), or give this one its own --pin-path", dir)
		}
		return nil, fmt.Errorf("lock pin directory %s: %w", dir, err)
	}
	return f, nil
}

// activate makes generation gen the one packets read: the active map's
// one word (generation.Switch calls it at the commit). The generations'
// configs, in the same value, are written back unchanged.
func (e *Engine) activate(gen uint32) error {
	maps := e.xdp.Maps()
	var act bpf.Active
	if err := maps.Active.Lookup(uint32(0), &act); err != nil {
		return fmt.Errorf("read active generation: %w", err)
	}
	act.Generation = gen
	return maps.Active.Put(uint32(0), act)
}

func (e *Engine) linkPath(iface string) string {
	return filepath.Join(e.pinPath, "links", iface)
}

// pendingLinkPath is where the link of an interface is pinned between its
// attach and the commit of the rule set it was attached for: the links
// directory holds only links in force, which the next grain adopts.
func (e *Engine) pendingLinkPath(iface string) string {
	return filepath.Join(e.pinPath, "links-pending", iface)
}

// pinnedLinkNames names the interfaces whose links are pinned.
func (e *Engine) pinnedLinkNames() map[string]bool {
	out := map[string]bool{}
	entries, _ := os.ReadDir(filepath.Dir(e.linkPath("x")))
	for _, ent := range entries {
		out[ent.Name()] = true
	}
	return out
}

// removePendingLinks removes the pins of links attached for a rule set
// that an earlier grain prepared and never committed (it stopped in
// between): their interfaces were not in force, and the last handle to
// such a link detaches it.
func (e *Engine) removePendingLinks() {
	dir := filepath.Dir(e.pendingLinkPath("x"))
	entries, _ := os.ReadDir(dir)
	for _, ent := range entries {
		path := filepath.Join(dir, ent.Name())
		if err := os.Remove(path); err != nil {
			e.log.Warn("removing the pin of a link that was never in force", "path", path, "error", err)
		} else {
			e.log.Info("removed the pin of a link attached for a rule set that an earlier grain never committed", "interface", ent.Name())
		}
	}
}

// adopt takes over the state pinned by an earlier grain: the active
// generation of the (reused) maps, and its links, which are switched to
// this process's program with a bpf_link update: the interface is never
// without a program.
func (e *Engine) adopt() error {
	if e.pinPath == "" {
		return nil
	}
	e.removePendingLinks()
	if e.xdp.PinPending() {
		e.takeOver = true
		e.log.Info("the state pinned by an earlier grain does not fit this one's maps (another grain version or --event-ring-bytes): it stays in force until the first apply, which then takes it over", "pin_path", e.pinPath)
		return nil
	}
	var act bpf.Active
	if err := e.xdp.Maps().Active.Lookup(uint32(0), &act); err != nil {
		return fmt.Errorf("read active generation: %w", err)
	}
	active, epoch := act.Generation&1, uint32(0)
	var r bpf.Rule
	if err := e.xdp.Maps().Rules.Lookup(active*bpf.MaxRules, &r); err == nil {
		epoch = generation.EpochOf(r.Id) // continue after the adopted rules' epoch
	}
	e.gen.Adopt(active, epoch)
	if err := e.adoptRuleNames(active, epoch); err != nil {
		e.log.Warn("the adopted rule sets are not named: their events are unknown-rule-N, their counters not counted", "error", err.Error())
	}
	return e.adoptLinks()
}

// adoptLinks switches the links pinned by an earlier grain to this
// process's program, with a bpf_link update: the interface is never
// without a program.
func (e *Engine) adoptLinks() error {
	dir := filepath.Join(e.pinPath, "links")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read %s: %w", dir, err)
	}
	for _, ent := range entries {
		if _, ok := e.links[ent.Name()]; ok {
			continue // this grain's own (attached for the rules a take-over commits)
		}
		path := filepath.Join(dir, ent.Name())
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			e.log.Warn("dropping a pinned link that cannot be loaded", "path", path, "error", err)
			os.Remove(path)
			continue
		}
		var ifindex uint32
		hook := hookXDP
		if info, err := l.Info(); err == nil {
			found := false
			if xi := info.XDP(); xi != nil {
				ifindex, found = xi.Ifindex, true
				hook = xdpHookOf(ifindex)
			}
			if ti := info.TCX(); ti != nil {
				ifindex, found = ti.Ifindex, true
				hook = hookTCX
			}
			if found && ifindex == 0 {
				// The interface was removed while no grain ran.
				e.log.Info("dropping a pinned link whose interface is gone", "interface", ent.Name())
				l.Unpin()
				l.Close()
				continue
			}
		}
		load := e.xdp.Program
		if hook == hookTCX {
			load = e.xdp.TCProgram
		}
		prog, err := load()
		if err != nil {
			l.Close()
			return err
		}
		if err := l.Update(prog); err != nil {
			l.Close()
			return fmt.Errorf("switch the pinned link (%s) on %s to this grain's program: %w", hook, ent.Name(), err)
		}
		e.links[ent.Name()] = xdpLink{Link: l, ifindex: ifindex, hook: hook}
		e.adopted = true
		e.log.Info("adopted", "interface", ent.Name(), "generation", e.gen.Active())
	}
	return nil
}

// XDP exposes the loaded program, for tests and benchmarks that run it
// with BPF_PROG_TEST_RUN.
func (e *Engine) XDP() *bpf.XDP { return e.xdp }

// Apply makes plan the active rule set, all or nothing: Prepare, then
// Commit. On an error the rules in force and their attachments stay as
// they were.
func (e *Engine) Apply(plan *codegen.Plan) error {
	p, err := e.Prepare(plan)
	if err != nil {
		return err
	}
	return p.Commit()
}

// PreparedRules is a packet rule set written into the inactive generation,
// with the program attached to the interfaces it adds, that packets do not
// see yet (Engine.Prepare). Commit puts it in force, Abort lets it go.
// Until one of them, the engine is locked: a re-apply after link events
// waits, so it cannot write over a prepared generation nor flip to it.
type PreparedRules struct {
	e    *Engine
	plan *codegen.Plan
	// written is the generation written, with its rules' epoch
	written *generation.Pending[codegen.Rule]
	// want are the links the plan attaches to, present every link of the
	// namespace (name -> ifindex).
	want, present map[string]uint32
	claimed       []claimedSlot
	// added are the links attached for it, pinned under pendingLinkPath
	// until the commit; renamed maps an attached link's old name to its
	// interface's new name; drop are the attached links it has no use for.
	added   map[string]xdpLink
	renamed map[string]string
	drop    []string
	// attachErr: the links a re-apply could not attach (it commits the
	// others).
	attachErr error
	done      bool
}

// Prepare writes plan into the inactive generation and attaches the program
// to the interfaces it adds; nothing packets see changes: on an interface
// attached now, the program reads the generation in force, which gives an
// interface it does not list no rules. The plan's interface names and
// patterns are resolved against the links of the network namespace; a
// name that does not exist is an error, a pattern that matches nothing is
// not (the program is attached when a matching link appears, see
// FollowLinks). On an error nothing is left attached or locked.
func (e *Engine) Prepare(plan *codegen.Plan) (*PreparedRules, error) {
	e.mu.Lock()
	p, err := e.prepare(plan, true)
	if err != nil {
		e.mu.Unlock()
		return nil, err
	}
	return p, nil
}

// reapply applies the plan in force again, after links came or went. A
// name that the policies give and that no longer exists is forgotten
// rather than failing, and a link that cannot be attached is left out:
// the rules stay on every other interface.
func (e *Engine) reapply() error {
	e.mu.Lock()
	if e.current == nil {
		e.mu.Unlock()
		return nil
	}
	p, err := e.prepare(e.current, false)
	if err != nil {
		e.mu.Unlock()
		return err
	}
	attachErr := p.attachErr
	if err := p.Commit(); err != nil {
		return err
	}
	return attachErr
}

// prepare writes plan into the inactive generation and attaches to the
// links it adds. strict: a missing plain name, or a link that cannot be
// attached, fails it; otherwise they are left out (p.attachErr). e.mu must
// be held, and stays held.
func (e *Engine) prepare(plan *codegen.Plan, strict bool) (*PreparedRules, error) {
	want, present, err := e.resolve(plan, strict)
	if err != nil {
		return nil, err
	}
	p := &PreparedRules{e: e, plan: plan, want: want, present: present, added: map[string]xdpLink{}}
	if p.written, p.claimed, err = e.writeInactive(plan, want); err != nil {
		return nil, err
	}
	var attach []string
	p.renamed, p.drop, attach = e.linkChanges(want)
	if e.takeOver {
		// The links an earlier grain pinned are switched to this program
		// at the commit: attaching beside them would fail (XDP) or run
		// both programs (tcx).
		pinned := e.pinnedLinkNames()
		attach = slices.DeleteFunc(attach, func(name string) bool { return pinned[name] })
	}
	var errs []error
	for _, name := range attach {
		l, err := e.attachPending(name, want[name])
		if err != nil {
			if strict {
				p.undo()
				return nil, err
			}
			errs = append(errs, err)
			continue
		}
		p.added[name] = l
	}
	p.attachErr = errors.Join(errs...)
	return p, nil
}

// attachPending attaches the program to link name and pins the link under
// pendingLinkPath: a grain that stops before the commit leaves no pin that
// the next one would adopt as in force.
func (e *Engine) attachPending(name string, index uint32) (xdpLink, error) {
	l, hook, err := e.attachLink(name, index)
	if err != nil {
		return xdpLink{}, err
	}
	if e.pinPath != "" {
		if err := os.MkdirAll(filepath.Dir(e.pendingLinkPath(name)), 0o700); err != nil {
			l.Close()
			return xdpLink{}, err
		}
		if err := l.Pin(e.pendingLinkPath(name)); err != nil {
			l.Close()
			return xdpLink{}, fmt.Errorf("pin the %s link of %s: %w", hook, name, err)
		}
	}
	return xdpLink{Link: l, ifindex: index, hook: hook}, nil
}

// linkChanges sorts the attached links against want (name -> ifindex): a
// link whose interface now has another name that want selects is renamed
// (old name -> new), one that want has no use for is dropped, and the
// names of want that have no link are returned in attach.
func (e *Engine) linkChanges(want map[string]uint32) (renamed map[string]string, drop, attach []string) {
	kept := map[string]bool{}
	for name, l := range e.links {
		if index, ok := want[name]; ok && (l.ifindex == 0 || l.ifindex == index) {
			kept[name] = true
		}
	}
	unattached := map[uint32]string{} // ifindex -> name, of want
	for name, index := range want {
		if !kept[name] {
			unattached[index] = name
		}
	}
	renamed = map[string]string{}
	for name, l := range e.links {
		if kept[name] {
			continue
		}
		if to, ok := unattached[l.ifindex]; ok && l.ifindex != 0 {
			renamed[name] = to
			delete(unattached, l.ifindex)
			continue
		}
		drop = append(drop, name)
	}
	for _, name := range unattached {
		attach = append(attach, name)
	}
	slices.Sort(drop)
	slices.Sort(attach)
	return renamed, drop, attach
}

// Commit puts the prepared rule set in force: it flips the active
// generation word (each packet reads it once, so it sees the old rules or
// the new, never a mix), then detaches the program from the interfaces the
// rule set no longer names. An error means that the flip failed and that
// nothing changed: what was attached for the rule set is detached again.
// The exception is the first apply over an earlier grain's pinned state of
// another layout, which switches its links after the flip: an error there
// leaves the links it could not switch with the earlier grain's rules.
func (p *PreparedRules) Commit() error {
	if p.done {
		return errors.New("engine: a prepared rule set is committed or aborted once")
	}
	p.done = true
	e := p.e
	defer e.mu.Unlock()
	if err := e.flip(p.written, p.plan); err != nil {
		p.undo()
		return err
	}
	e.current = p.plan
	var err error
	if e.takeOver {
		err = p.takeOver()
	}
	p.settleLinks()
	return err
}

// Abort lets the prepared rule set go: what was attached for it is
// detached again, and the rules in force stay as they are.
func (p *PreparedRules) Abort() {
	if p.done {
		return
	}
	p.done = true
	p.undo()
	p.e.mu.Unlock()
}

// undo detaches what prepare attached and gives the counter slots back.
func (p *PreparedRules) undo() {
	e := p.e
	for name, l := range p.added {
		if e.pinPath != "" {
			l.Unpin()
		}
		if err := l.Close(); err != nil {
			e.log.Error("detaching the program attached for a rule set that did not come into force", "interface", name, "error", err.Error())
		}
	}
	p.added = nil
	e.ifaces.unclaim(e.xdp.Maps().IfaceCounters, p.claimed)
}

// takeOver switches the links an earlier grain pinned to this program,
// whose maps now hold the rules, and then sorts them against the plan.
func (p *PreparedRules) takeOver() error {
	e := p.e
	if err := e.adoptLinks(); err != nil {
		return err
	}
	if err := e.xdp.TakeOverPins(); err != nil {
		return err
	}
	e.takeOver = false
	var missing []string
	p.renamed, p.drop, missing = e.linkChanges(p.want)
	var errs []error
	for _, name := range missing {
		if _, ok := p.added[name]; ok {
			continue
		}
		// Its pinned link could not be adopted.
		l, err := e.attachPending(name, p.want[name])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		p.added[name] = l
	}
	return errors.Join(errs...)
}

// settleLinks, after the flip, detaches the links the rules in force have
// no use for, moves the pins of renamed interfaces' links, and pins the
// links attached for them where the next grain adopts them. A failure here
// changes no verdict: it is logged.
func (p *PreparedRules) settleLinks() {
	e := p.e
	for _, name := range p.drop {
		l, ok := e.links[name]
		if !ok {
			continue
		}
		gone := p.present[name] == 0 || (l.ifindex != 0 && p.present[name] != l.ifindex)
		if err := e.drop(name, l); err != nil {
			e.log.Error("detach", "interface", name, "error", err.Error())
		}
		if gone {
			e.log.Info("forgot removed interface", "interface", name, "ifindex", l.ifindex)
		} else {
			e.log.Info("detached", "interface", name)
		}
	}
	// A renamed link's pin moves through the pending directory: two
	// interfaces may have swapped names.
	moved := map[string]xdpLink{}
	for from, to := range p.renamed {
		l := e.links[from]
		delete(e.links, from)
		if e.pinPath != "" {
			os.MkdirAll(filepath.Dir(e.pendingLinkPath(to)), 0o700)
			if err := l.Pin(e.pendingLinkPath(to)); err != nil {
				e.log.Error("move the pin of a renamed interface's link", "interface", to, "error", err.Error())
			}
		}
		l.ifindex = p.want[to]
		moved[to] = l
		e.log.Info("interface renamed: its link stays", "from", from, "interface", to)
	}
	maps.Copy(moved, p.added)
	for _, name := range slices.Sorted(maps.Keys(moved)) {
		l := moved[name]
		if e.pinPath != "" {
			if err := l.Pin(e.linkPath(name)); err != nil {
				e.log.Error("pin the link (it stays attached, but not after grain stops)", "interface", name, "hook", l.hook, "error", err.Error())
			}
		}
		e.links[name] = l
		if _, ok := p.added[name]; ok {
			prog := codegen.XDPProgram
			if l.hook == hookTCX {
				prog = bpf.ProgTC
			}
			e.log.Info("attached", "program", prog, "interface", name, "ifindex", l.ifindex, "hook", l.hook)
		}
	}
	p.added = nil
}

// resolve finds the links plan attaches to (name -> ifindex), and every
// link of the namespace. strict makes a missing plain name an error.
func (e *Engine) resolve(plan *codegen.Plan, strict bool) (attach, present map[string]uint32, err error) {
	list, err := netlink.LinkList()
	if err != nil {
		return nil, nil, fmt.Errorf("list network interfaces: %w", err)
	}
	present = map[string]uint32{}
	for _, l := range list {
		present[l.Attrs().Name] = uint32(l.Attrs().Index)
	}
	attach = map[string]uint32{}
	for _, a := range plan.Attachments {
		n := 0
		for name, index := range present {
			if codegen.InterfaceMatches(a.Interface, name) {
				attach[name] = index
				n++
			}
		}
		switch {
		case n > 0:
		case codegen.IsInterfacePattern(a.Interface):
			e.log.Info("no interface matches the pattern yet", "pattern", a.Interface)
		case strict:
			return nil, nil, fmt.Errorf("interface %q named by the policies does not exist (check `ip link`, or pass --interface)", a.Interface)
		default:
			e.log.Warn("interface named by the policies does not exist", "interface", a.Interface)
		}
	}
	return attach, present, nil
}

// ApplyTables writes and activates plan without touching attachments, with
// interface indices given by the caller (tests run the program on crafted
// packets with BPF_PROG_TEST_RUN). The plan's interface patterns are
// matched against the names of ifindex.
func (e *Engine) ApplyTables(plan *codegen.Plan, ifindex map[string]uint32) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	written, claimed, err := e.writeInactive(plan, ifindex)
	if err != nil {
		return err
	}
	if err := e.flip(written, plan); err != nil {
		e.ifaces.unclaim(e.xdp.Maps().IfaceCounters, claimed)
		return err
	}
	return nil
}

// writeInactive writes plan into the inactive generation, with the
// interface bitmaps of the links ifindex, and gives those links counter
// slots; no packet reads it until flip. It returns the generation written
// with the epoch of its rule ids, and the slots claimed. e.mu must be held.
func (e *Engine) writeInactive(plan *codegen.Plan, ifindex map[string]uint32) (*generation.Pending[codegen.Rule], []claimedSlot, error) {
	maps := e.xdp.Maps()
	var claimed []claimedSlot
	written, err := e.gen.Prepare(plan.Rules, func(next, epoch uint32) error {
		// No packet reads next any more: its counters are final.
		if err := e.harvest(next); err != nil {
			return err
		}
		var err error
		if claimed, err = e.ifaces.claim(maps.IfaceCounters, ifindex); err != nil {
			return fmt.Errorf("interface counters: %w", err)
		}
		if err := writeGeneration(maps, next, epoch, plan, ifindex, &e.index[next]); err != nil {
			return fmt.Errorf("write rule generation %d: %w", next, err)
		}
		if err := e.saveRuleNames(next, epoch, plan.Rules); err != nil {
			return fmt.Errorf("keep the rule names of generation %d: %w", next, err)
		}
		return nil
	})
	if err != nil {
		e.ifaces.unclaim(maps.IfaceCounters, claimed)
		return nil, nil, err
	}
	return written, claimed, nil
}

// flip makes the generation writeInactive wrote with plan's rules the one
// packets read: one word. On an error it is not. e.mu must be held.
func (e *Engine) flip(written *generation.Pending[codegen.Rule], plan *codegen.Plan) error {
	if err := written.Commit(); err != nil {
		return fmt.Errorf("packet rules: %w", err)
	}
	e.rules[written.Gen] = plan.Rules
	return nil
}

// drop closes the link of interface name, removes its pin and forgets it.
func (e *Engine) drop(name string, l xdpLink) error {
	delete(e.links, name)
	if e.pinPath != "" {
		l.Unpin()
	}
	if err := l.Close(); err != nil {
		return fmt.Errorf("detach from %s: %w", name, err)
	}
	return nil
}

// FollowLinks keeps the attachments in step with the links of the network
// namespace until ctx is done: when a link appears whose name a pattern (or
// name) of the plan in force selects, or an attached link is removed or
// renamed, the plan in force is applied again (a new generation with the
// link in the interface bitmaps, then the attach; a removed link's XDP link
// is closed, its pin removed and the link forgotten). Such a re-apply uses
// the last plan applied, never the policy files, and takes the engine's
// lock, so it is serialized with Apply. Events of one burst cost one
// re-apply.
//
// It subscribes to the rtnetlink link group from the calling thread, whose
// network namespace must be the process's (grain runs in it: `ip netns
// exec`); a subscription that fails later is renewed from the process's
// namespace, and the renewal lists every link again, so nothing is missed.
func (e *Engine) FollowLinks(ctx context.Context) error {
	updates, done, err := e.subscribeLinks()
	if err != nil {
		return err
	}
	go e.followLinks(ctx, updates, done)
	return nil
}

func (e *Engine) subscribeLinks() (chan netlink.LinkUpdate, chan struct{}, error) {
	updates := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	err := netlink.LinkSubscribeWithOptions(updates, done, netlink.LinkSubscribeOptions{
		// The links that exist now come first as RTM_NEWLINK: one created
		// between the last Apply and the subscription is not missed.
		ListExisting: true,
		ErrorCallback: func(err error) {
			select {
			case <-done: // closing the subscription ends its reader
			default:
				e.log.Warn("interface events", "error", err)
			}
		},
	})
	if err != nil {
		close(done)
		return nil, nil, fmt.Errorf("subscribe to interface events (rtnetlink): %w", err)
	}
	return updates, done, nil
}

func (e *Engine) followLinks(ctx context.Context, updates chan netlink.LinkUpdate, done chan struct{}) {
	stop := func() {
		close(done)
		for range updates { // until the subscription's reader has ended
		}
	}
	for {
		select {
		case <-ctx.Done():
			stop()
			return
		case u, ok := <-updates:
			if !ok {
				// The subscription ended (its error was logged): renew it.
				for {
					select {
					case <-ctx.Done():
						return
					case <-time.After(100 * time.Millisecond):
					}
					var err error
					if updates, done, err = e.subscribeLinks(); err == nil {
						break
					}
					e.log.Warn("interface events", "error", err)
				}
				continue
			}
			if !e.linkChanged(u) {
				continue
			}
			// Whatever else is queued is covered by this re-apply, which
			// lists the links afresh.
			for drained := false; !drained; {
				select {
				case _, ok := <-updates:
					drained = !ok
				default:
					drained = true
				}
			}
			e.log.Info("interfaces changed: applying the rules in force again", "interface", u.Attrs().Name, "event", linkEventName(u))
			if err := e.reapply(); err != nil {
				e.log.Error("applying the rules in force to changed interfaces", "error", err.Error())
			}
		}
	}
}

func linkEventName(u netlink.LinkUpdate) string {
	if u.Header.Type == unix.RTM_DELLINK {
		return "removed"
	}
	return "new"
}

// linkChanged reports whether a link event changes what the plan in force
// attaches to: a new link that it selects and that is not attached yet, or
// an attached link removed or renamed.
func (e *Engine) linkChanged(u netlink.LinkUpdate) bool {
	name, index := u.Attrs().Name, uint32(u.Attrs().Index)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.current == nil {
		return false
	}
	switch u.Header.Type {
	case unix.RTM_DELLINK:
		for n, l := range e.links {
			if n == name || l.ifindex == index {
				return true
			}
		}
	case unix.RTM_NEWLINK:
		for n, l := range e.links {
			if l.ifindex == index && n != name {
				return true // renamed
			}
		}
		if l, ok := e.links[name]; ok && (l.ifindex == 0 || l.ifindex == index) {
			return false // already attached (most events: state changes)
		}
		for _, a := range e.current.Attachments {
			if codegen.InterfaceMatches(a.Interface, name) {
				return true
			}
		}
	}
	return false
}

// VerifyAhead starts verifying, in the background, the packet programs that
// the interfaces named or matched by patterns need, as attachLink chooses:
// the verifier's seconds then pass while the policies load, and the first
// apply finds the program ready. It verifies nothing that no present
// interface needs; a failed load is tried again, and reported, by the
// attach that needs it.
func (e *Engine) VerifyAhead(patterns []string) {
	links, err := netlink.LinkList()
	if err != nil {
		return // the attaches verify what they need
	}
	e.mu.Lock()
	noTCX := e.noTCX
	e.mu.Unlock()
	var tc, xdp bool
	for _, l := range links {
		for _, pattern := range patterns {
			if codegen.InterfaceMatches(pattern, l.Attrs().Name) {
				if l.Type() == "veth" && !noTCX {
					tc = true
				} else {
					xdp = true
				}
			}
		}
	}
	if tc {
		go e.xdp.TCProgram()
	}
	if xdp {
		go e.xdp.Program()
	}
}

// attachLink attaches the packet program to one interface and says where.
// On veth, grain runs at tc ingress (tcx, Linux 6.6): a veth packet is
// already a socket buffer, which native XDP converts to a frame and back
// (~700 ns per passed 1454-byte packet on this kind of machine) and generic
// XDP linearizes (~200 ns), while a tcx program reads it in place (~40 ns;
// BENCHMARKS.md §2). Without tcx, veth gets generic XDP. Other drivers get
// XDP in the kernel's default mode: native where the driver supports it,
// before any socket buffer exists.
func (e *Engine) attachLink(name string, index uint32) (link.Link, string, error) {
	veth := false
	if l, err := netlink.LinkByIndex(int(index)); err == nil && l.Type() == "veth" {
		veth = true
	}
	if veth && !e.noTCX {
		tc, err := e.xdp.TCProgram()
		if err != nil {
			// The XDP program loaded: enforce with it rather than not at all.
			e.noTCX = true
			e.log.Warn("the tc program did not load: veth interfaces get generic XDP", "error", err.Error())
		} else {
			l, err := link.AttachTCX(link.TCXOptions{Interface: int(index), Program: tc, Attach: ebpf.AttachTCXIngress})
			if err == nil {
				return l, hookTCX, nil
			}
			if !errors.Is(err, ebpf.ErrNotSupported) {
				return nil, "", fmt.Errorf("attach the tc program to %s at tcx ingress: %w", name, err)
			}
			e.noTCX = true
			e.log.Info("the kernel lacks tcx (Linux 6.6): veth interfaces get generic XDP", "error", err)
		}
	}
	prog, err := e.xdp.Program()
	if err != nil {
		return nil, "", err
	}
	if veth {
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: int(index), Flags: link.XDPGenericMode})
		if err != nil {
			return nil, "", attachXDPError(name, index, err)
		}
		return l, hookXDPGeneric, nil
	}
	// The kernel's default: native (driver) XDP where the driver has it,
	// generic otherwise.
	l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: int(index)})
	if err == nil {
		return l, xdpHookOf(index), nil
	}
	if otherXDPProgram(err) {
		return nil, "", attachXDPError(name, index, err)
	}
	// The driver has native XDP but refuses it here (an MTU too large for
	// XDP, LRO or GRO_HW on, too few queues): generic XDP judges the same
	// packets, later and at a higher cost, rather than none.
	l, genericErr := link.AttachXDP(link.XDPOptions{Program: prog, Interface: int(index), Flags: link.XDPGenericMode})
	if genericErr != nil {
		return nil, "", attachXDPError(name, index, errors.Join(err, genericErr))
	}
	e.log.Warn("the driver refused native XDP: attached in generic mode, which costs more per packet (check the MTU, and LRO/GRO_HW with ethtool -k)",
		"interface", name, "error", err.Error())
	return l, hookXDPGeneric, nil
}

// otherXDPProgram reports an attach refused because the interface runs
// another XDP program (in this mode or the other).
func otherXDPProgram(err error) bool {
	return errors.Is(err, unix.EBUSY) || errors.Is(err, unix.EEXIST)
}

func attachXDPError(name string, index uint32, err error) error {
	if otherXDPProgram(err) {
		return fmt.Errorf("attach XDP to %s: %w (another XDP program is attached: `ip link set dev %s xdp off`%s)", name, err, name, attachedXDPProgram(index))
	}
	return fmt.Errorf("attach XDP to %s: %w", name, err)
}

// attachedXDPProgram names the XDP program attached to link index, for an
// error: whose it is is the user's next question.
func attachedXDPProgram(index uint32) string {
	l, err := netlink.LinkByIndex(int(index))
	if err != nil || l.Attrs().Xdp == nil || l.Attrs().Xdp.ProgId == 0 {
		return ""
	}
	id := l.Attrs().Xdp.ProgId
	desc := fmt.Sprintf("; it is program %d", id)
	if prog, err := ebpf.NewProgramFromID(ebpf.ProgramID(id)); err == nil {
		if info, err := prog.Info(); err == nil && info.Name != "" {
			desc += fmt.Sprintf(" %q", info.Name)
		}
		prog.Close()
	}
	return desc + fmt.Sprintf(", `bpftool prog show id %d`", id)
}

// xdpHookOf says in which mode the kernel attached XDP to link index: an
// attach in the default mode is generic when the driver has no native XDP.
func xdpHookOf(index uint32) string {
	l, err := netlink.LinkByIndex(int(index))
	if err == nil && l.Attrs().Xdp != nil && l.Attrs().Xdp.AttachMode == nl.XDP_ATTACHED_SKB {
		return hookXDPGeneric
	}
	return hookXDP
}

// Where the packet program runs on an interface, as logged and reported.
const (
	hookXDP        = "xdp"
	hookXDPGeneric = "xdp generic"
	hookTCX        = "tcx ingress"
)

// Adopted reports whether the engine took over enforcement pinned by an
// earlier grain, or found such enforcement that its first apply takes
// over: either way, what is pinned is in force and a failed start must
// leave it (Release, not Close).
func (e *Engine) Adopted() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.adopted || e.takeOver
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

// InterfaceHooks says where the packet program runs on each interface it
// is attached to: "xdp", "xdp generic" or "tcx ingress".
func (e *Engine) InterfaceHooks() map[string]string {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]string, len(e.links))
	for name, l := range e.links {
		out[name] = l.hook
	}
	return out
}

// rule names the rule an event's id refers to, if its plan is still known.
func (e *Engine) rule(id uint32) (codegen.Rule, bool) { return e.gen.Lookup(id) }

// RuleCounter is the per-rule packet count of the active generation.
type RuleCounter struct {
	Policy string `json:"policy"`
	// Verdict is the policy's action on the packets counted: "drop",
	// "pass", "count", or "would_drop" (a drop in monitor mode). A policy
	// whose verdict changed over reloads has a counter per verdict.
	Verdict    string `json:"verdict"`
	Packets    uint64 `json:"packets"`
	Bytes      uint64 `json:"bytes"`
	Events     uint64 `json:"events"`
	EventsLost uint64 `json:"events_lost"`
	// EventsDeduplicated repeated an event sent less than the policy's
	// emit.dedup before: counted, not sent.
	EventsDeduplicated uint64 `json:"events_deduplicated"`
	// EventsRateLimited were over the policy's emit.rate_limit: counted,
	// not sent.
	EventsRateLimited uint64 `json:"events_rate_limited"`
}

// add adds o's counts to c's.
// Plus is c with o's counts added; it takes o's policy and verdict.
func (c RuleCounter) Plus(o RuleCounter) RuleCounter {
	c.Policy, c.Verdict = o.Policy, o.Verdict
	c.Packets += o.Packets
	c.Bytes += o.Bytes
	c.Events += o.Events
	c.EventsLost += o.EventsLost
	c.EventsDeduplicated += o.EventsDeduplicated
	c.EventsRateLimited += o.EventsRateLimited
	return c
}

// generationCounters sums the per-CPU counters of rules, written in
// generation gen, by policy name and verdict (counterKey).
func (e *Engine) generationCounters(gen uint32, rules []codegen.Rule) (generation.Tally[RuleCounter], error) {
	out := generation.Tally[RuleCounter]{}
	maps := e.xdp.Maps()
	var perCPU []bpf.Counter
	for _, r := range rules {
		if err := maps.RuleCounters.Lookup(gen*bpf.MaxRules+uint32(r.Index), &perCPU); err != nil {
			return nil, fmt.Errorf("read counters: %w", err)
		}
		key := r.Policy + "\x00" + r.Verdict()
		for _, v := range perCPU {
			out.Add(key, RuleCounter{Policy: r.Policy, Verdict: r.Verdict(), Packets: v.Packets, Bytes: v.Bytes,
				Events: v.Events, EventsLost: v.EventsLost, EventsDeduplicated: v.EventsDeduplicated,
				EventsRateLimited: v.EventsRateLimited})
		}
	}
	return out, nil
}

// harvest folds the counters of the plan last written into generation gen
// into the running totals, before gen is rewritten (after a grace period,
// so they are final).
func (e *Engine) harvest(gen uint32) error {
	c, err := e.generationCounters(gen, e.rules[gen])
	if err != nil {
		return err
	}
	e.totals.AddAll(c)
	e.rules[gen] = nil
	return nil
}

// Counters returns per-policy counters since the engine started, summed over
// every rule set that was in force: they keep counting across reloads.
func (e *Engine) Counters() ([]RuleCounter, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	sum := generation.Tally[RuleCounter]{}
	sum.AddAll(e.totals)
	for gen := uint32(0); gen < bpf.Generations; gen++ {
		c, err := e.generationCounters(gen, e.rules[gen])
		if err != nil {
			return nil, err
		}
		sum.AddAll(c)
	}
	return sum.Sorted(func(a, b RuleCounter) int {
		return cmp.Or(strings.Compare(a.Policy, b.Policy), strings.Compare(a.Verdict, b.Verdict))
	}), nil
}

// PacketStats counts, since the program was loaded, the packets no rule
// judged because they were not IP, were malformed or truncated (passed,
// never misparsed), or arrived before any rule set was written.
type PacketStats struct {
	NotIP     uint64 `json:"not_ip"`
	Malformed uint64 `json:"malformed"`
	NoConfig  uint64 `json:"no_rules"`
}

// PacketStats sums the program's per-CPU statistics.
func (e *Engine) PacketStats() (PacketStats, error) {
	var st PacketStats
	for idx, dst := range map[uint32]*uint64{bpf.StatNotIP: &st.NotIP, bpf.StatMalformed: &st.Malformed, bpf.StatNoConfig: &st.NoConfig} {
		var perCPU []uint64
		if err := e.xdp.Maps().Stats.Lookup(idx, &perCPU); err != nil {
			return st, fmt.Errorf("read packet statistics: %w", err)
		}
		for _, v := range perCPU {
			*dst += v
		}
	}
	return st, nil
}

// Close detaches every interface, removes the pins and unloads the program.
func (e *Engine) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.current = nil // link events no longer re-apply
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
		os.Remove(filepath.Dir(e.pendingLinkPath("x")))
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
	e.current = nil
	for name, l := range e.links {
		l.Close()
		delete(e.links, name)
		e.log.Info("left attached", "interface", name, "pin", e.linkPath(name))
	}
	return e.closeFDs()
}

func (e *Engine) closeFDs() error {
	var errs []error
	if e.gen != nil {
		errs = append(errs, e.gen.Close())
	}
	errs = append(errs, e.xdp.Close())
	if e.pinLock != nil {
		errs = append(errs, e.pinLock.Close()) // last: the state is let go
	}
	return errors.Join(errs...)
}
