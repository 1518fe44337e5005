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
	// rules[g] are the rules written into generation g, for counters.
	rules [bpf.Generations][]codegen.Rule
	// epoch counts applies; events carry it in their rule id, so an event
	// still queued after its generation was rewritten keeps its own rules.
	epoch uint32
	// byEpoch names the rules of recent epochs for the event reader; its
	// own lock keeps events flowing while an apply holds mu.
	namesMu sync.RWMutex
	byEpoch map[uint32][]codegen.Rule
	retired []retiredEpoch     // in byEpoch, oldest first
	links   map[string]xdpLink // interface name -> XDP link
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
	totals map[string]RuleCounter
	// ifaces knows which interface each verdict counter slot counts.
	ifaces ifaceSlots
	// grace is a one-slot map of maps: updating it returns only after an
	// RCU grace period, after which no packet still reads a generation
	// that was active before.
	grace, graceInner *ebpf.Map
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

// New loads the generic XDP program. Nothing is attached yet.
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
	e := &Engine{log: log, xdp: x, links: map[string]xdpLink{}, byEpoch: map[uint32][]codegen.Rule{}, pinPath: opts.PinPath,
		pinLock: pinLock, totals: map[string]RuleCounter{}, noTCX: bpf.HaveTCX() != nil}
	if !e.noTCX {
		// veth links get the tc program: verify it now, beside the
		// first apply, rather than when the first veth appears.
		go x.TCProgram()
	}
	if err := e.initGrace(); err != nil {
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
	if e.xdp.PinPending() {
		e.takeOver = true
		e.log.Info("the state pinned by an earlier grain does not fit this one's maps (another grain version or --event-ring-bytes): it stays in force until the first apply, which then takes it over", "pin_path", e.pinPath)
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
		path := filepath.Join(dir, ent.Name())
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			e.log.Warn("dropping a pinned link that cannot be loaded", "path", path, "error", err)
			os.Remove(path)
			continue
		}
		var ifindex uint32
		prog, hook := e.xdp.Program(), hookXDP
		if info, err := l.Info(); err == nil {
			found := false
			if xi := info.XDP(); xi != nil {
				ifindex, found = xi.Ifindex, true
				hook = xdpHookOf(ifindex)
			}
			if ti := info.TCX(); ti != nil {
				ifindex, found = ti.Ifindex, true
				hook = hookTCX
				if prog, err = e.xdp.TCProgram(); err != nil {
					l.Close()
					return err
				}
			}
			if found && ifindex == 0 {
				// The interface was removed while no grain ran.
				e.log.Info("dropping a pinned link whose interface is gone", "interface", ent.Name())
				l.Unpin()
				l.Close()
				continue
			}
		}
		if err := l.Update(prog); err != nil {
			l.Close()
			return fmt.Errorf("switch the pinned link (%s) on %s to this grain's program: %w", hook, ent.Name(), err)
		}
		e.links[ent.Name()] = xdpLink{Link: l, ifindex: ifindex, hook: hook}
		e.adopted = true
		e.log.Info("adopted", "interface", ent.Name(), "generation", e.active)
	}
	return nil
}

// XDP exposes the loaded program, for tests and benchmarks that run it
// with BPF_PROG_TEST_RUN.
func (e *Engine) XDP() *bpf.XDP { return e.xdp }

// Apply makes plan the active rule set: it resolves the plan's interface
// names and patterns against the links of the network namespace, writes
// the inactive generation, flips the active word (each packet reads it
// once, so it sees the old rules or the new, never a mix) and then attaches
// to new interfaces and detaches from ones the plan dropped. A name that
// does not exist is an error; a pattern that matches nothing is not (the
// program is attached when a matching link appears, see FollowLinks).
func (e *Engine) Apply(plan *codegen.Plan) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	attach, present, err := e.resolve(plan, true)
	if err != nil {
		return err
	}
	return e.apply(plan, attach, present)
}

// reapply applies the plan in force again, after links came or went. A
// name that the policies give and that no longer exists is forgotten
// rather than failing: the rules stay on every other interface.
func (e *Engine) reapply() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.current == nil {
		return nil
	}
	attach, present, err := e.resolve(e.current, false)
	if err != nil {
		return err
	}
	return e.apply(e.current, attach, present)
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
	return e.write(plan, ifindex)
}

// apply writes plan for the links attach and then attaches to them.
// present holds every link of the namespace. e.mu must be held.
func (e *Engine) apply(plan *codegen.Plan, attach, present map[string]uint32) error {
	if err := e.write(plan, attach); err != nil {
		return err
	}
	if e.takeOver {
		// This program's maps now hold the rules: its turn.
		if err := e.adoptLinks(); err != nil {
			return err
		}
		if err := e.xdp.TakeOverPins(); err != nil {
			return err
		}
		e.takeOver = false
	}
	e.current = plan
	return e.syncAttachments(attach, present)
}

// write writes plan into the inactive generation, with the interface
// bitmaps of the links ifindex, and makes it active. e.mu must be held.
func (e *Engine) write(plan *codegen.Plan, ifindex map[string]uint32) error {
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
	if err := e.ifaces.claim(maps.IfaceCounters, ifindex); err != nil {
		return fmt.Errorf("interface counters: %w", err)
	}
	epoch := (e.epoch + 1) & maxEpoch
	if err := writeGeneration(maps, next, epoch, plan, ifindex); err != nil {
		return fmt.Errorf("write rule generation %d: %w", next, err)
	}
	e.rules[next] = plan.Rules
	e.epoch = epoch
	e.namesMu.Lock()
	e.byEpoch[epoch] = plan.Rules
	e.retired = append(e.retired, retiredEpoch{epoch: (epoch - 1) & maxEpoch, at: time.Now()})
	// Forget an epoch once keptEpochs newer ones exist and it was retired
	// long enough ago for the reader to have drained its events: reloads
	// and link changes can come milliseconds apart.
	for len(e.retired) > keptEpochs && time.Since(e.retired[0].at) > keptEpochFor {
		delete(e.byEpoch, e.retired[0].epoch)
		e.retired = e.retired[1:]
	}
	e.namesMu.Unlock()
	var act bpf.Active // the generations' configs are written back unchanged
	if err := maps.Active.Lookup(uint32(0), &act); err != nil {
		return fmt.Errorf("read active generation: %w", err)
	}
	act.Generation = next
	if err := maps.Active.Put(uint32(0), act); err != nil {
		return fmt.Errorf("activate rule generation %d: %w", next, err)
	}
	e.active = next
	return nil
}

// syncAttachments attaches to every link of want (name -> ifindex) not yet
// attached, and lets go of the others: links of interfaces the plan no
// longer names are detached, links of removed interfaces (which the
// kernel already detached) are forgotten. present holds every link of the
// namespace. e.mu must be held.
func (e *Engine) syncAttachments(want, present map[string]uint32) error {
	var errs []error
	for name, l := range e.links {
		index, ok := want[name]
		if ok && (l.ifindex == 0 || l.ifindex == index) {
			continue
		}
		gone := present[name] == 0 || (l.ifindex != 0 && present[name] != l.ifindex)
		if err := e.drop(name, l); err != nil {
			errs = append(errs, err)
		}
		if gone {
			e.log.Info("forgot removed interface", "interface", name, "ifindex", l.ifindex)
		} else {
			e.log.Info("detached", "interface", name)
		}
	}
	names := make([]string, 0, len(want))
	for name := range want {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if _, ok := e.links[name]; ok {
			continue
		}
		index := want[name]
		l, hook, err := e.attachLink(name, index)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if e.pinPath != "" {
			if err := l.Pin(e.linkPath(name)); err != nil {
				l.Close()
				errs = append(errs, fmt.Errorf("pin the %s link of %s: %w", hook, name, err))
				continue
			}
		}
		e.links[name] = xdpLink{Link: l, ifindex: index, hook: hook}
		prog := codegen.XDPProgram
		if hook == hookTCX {
			prog = bpf.ProgTC
		}
		e.log.Info("attached", "program", prog, "interface", name, "ifindex", index, "hook", hook)
	}
	return errors.Join(errs...)
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
	if veth {
		l, err := link.AttachXDP(link.XDPOptions{Program: e.xdp.Program(), Interface: int(index), Flags: link.XDPGenericMode})
		if err != nil {
			return nil, "", attachXDPError(name, err)
		}
		return l, hookXDPGeneric, nil
	}
	// The kernel's default: native (driver) XDP where the driver has it,
	// generic otherwise.
	l, err := link.AttachXDP(link.XDPOptions{Program: e.xdp.Program(), Interface: int(index)})
	if err == nil {
		return l, xdpHookOf(index), nil
	}
	if otherXDPProgram(err) {
		return nil, "", attachXDPError(name, err)
	}
	// The driver has native XDP but refuses it here (an MTU too large for
	// XDP, LRO or GRO_HW on, too few queues): generic XDP judges the same
	// packets, later and at a higher cost, rather than none.
	l, genericErr := link.AttachXDP(link.XDPOptions{Program: e.xdp.Program(), Interface: int(index), Flags: link.XDPGenericMode})
	if genericErr != nil {
		return nil, "", attachXDPError(name, errors.Join(err, genericErr))
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

func attachXDPError(name string, err error) error {
	if otherXDPProgram(err) {
		return fmt.Errorf("attach XDP to %s: %w (another XDP program is attached: `ip link set dev %s xdp off`)", name, err, name)
	}
	return fmt.Errorf("attach XDP to %s: %w", name, err)
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

// Rule ids in the kernel are epoch<<ruleIndexBits | index.
const (
	ruleIndexBits = 11 // bpf.MaxRules
	maxEpoch      = 1<<(32-ruleIndexBits) - 1
	keptEpochs    = 3 // plans kept to name events still queued (the reader drains every 20 ms)
)

// keptEpochFor is how long a replaced plan stays known beyond keptEpochs
// (a variable for tests).
var keptEpochFor = time.Second

// retiredEpoch is a rule set replaced at a time.
type retiredEpoch struct {
	epoch uint32
	at    time.Time
}

func ruleID(epoch uint32, index int) uint32 { return epoch<<ruleIndexBits | uint32(index) }

// rule names the rule an event's id refers to, if its plan is still known.
func (e *Engine) rule(id uint32) (codegen.Rule, bool) {
	e.namesMu.RLock()
	defer e.namesMu.RUnlock()
	rules, index := e.byEpoch[id>>ruleIndexBits], int(id&(1<<ruleIndexBits-1))
	if index >= len(rules) {
		return codegen.Rule{}, false
	}
	return rules[index], true
}

// RuleCounter is the per-rule packet count of the active generation.
type RuleCounter struct {
	Policy string `json:"policy"`
	// Verdict is the policy's action on the packets counted: "drop",
	// "pass" or "count". A policy whose action changed over reloads has a
	// counter per action.
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
func (c *RuleCounter) add(o RuleCounter) {
	c.Packets += o.Packets
	c.Bytes += o.Bytes
	c.Events += o.Events
	c.EventsLost += o.EventsLost
	c.EventsDeduplicated += o.EventsDeduplicated
	c.EventsRateLimited += o.EventsRateLimited
}

// generationCounters sums the per-CPU counters of rules, written in
// generation gen, by policy name and verdict (counterKey).
func (e *Engine) generationCounters(gen uint32, rules []codegen.Rule) (map[string]RuleCounter, error) {
	out := map[string]RuleCounter{}
	maps := e.xdp.Maps()
	var perCPU []bpf.Counter
	for _, r := range rules {
		if err := maps.RuleCounters.Lookup(gen*bpf.MaxRules+uint32(r.Index), &perCPU); err != nil {
			return nil, fmt.Errorf("read counters: %w", err)
		}
		key := r.Policy + "\x00" + r.Action
		c := out[key]
		c.Policy, c.Verdict = r.Policy, r.Action
		for _, v := range perCPU {
			c.add(RuleCounter{Packets: v.Packets, Bytes: v.Bytes, Events: v.Events, EventsLost: v.EventsLost,
				EventsDeduplicated: v.EventsDeduplicated, EventsRateLimited: v.EventsRateLimited})
		}
		out[key] = c
	}
	return out, nil
}

func addCounters(into map[string]RuleCounter, from map[string]RuleCounter) {
	for key, c := range from {
		t := into[key]
		t.Policy, t.Verdict = c.Policy, c.Verdict
		t.add(c)
		into[key] = t
	}
}

// harvest folds the counters of the plan last written into generation gen
// into the running totals, before gen is rewritten (after a grace period,
// so they are final).
func (e *Engine) harvest(gen uint32) error {
	c, err := e.generationCounters(gen, e.rules[gen])
	if err != nil {
		return err
	}
	addCounters(e.totals, c)
	e.rules[gen] = nil
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
		c, err := e.generationCounters(gen, e.rules[gen])
		if err != nil {
			return nil, err
		}
		addCounters(sum, c)
	}
	out := make([]RuleCounter, 0, len(sum))
	for _, c := range sum {
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b RuleCounter) int {
		return cmp.Or(strings.Compare(a.Policy, b.Policy), strings.Compare(a.Verdict, b.Verdict))
	})
	return out, nil
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
	if e.grace != nil {
		errs = append(errs, e.grace.Close(), e.graceInner.Close())
	}
	errs = append(errs, e.xdp.Close())
	if e.pinLock != nil {
		errs = append(errs, e.pinLock.Close()) // last: the state is let go
	}
	return errors.Join(errs...)
}
