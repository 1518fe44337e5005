package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// XDP is the maps of grain's packet programs, and the programs: the
// generic XDP one (Program) and the same rules for tc (TCProgram), each
// verified on its first use. The verifier takes about a second per program
// on a busy machine (BENCHMARKS.md §13): an interface that needs one of
// them does not wait for the other.
type XDP struct {
	objs xdpLoaded
	spec *ebpf.CollectionSpec // for the programs

	// pinPath is where the maps are pinned (XDPOptions.PinPath);
	// pinPending is set while they are not, because maps of another
	// layout were pinned there (TakeOverPins).
	pinPath    string
	pinPending bool
	// reused names the maps LoadXDP took from pins of an earlier grain;
	// every other map it created, all zero.
	reused map[string]bool

	progMu sync.Mutex
	progs  map[string]*ebpf.Program // by name, once loaded (loadProgram)
	closed bool                     // set by Close: no program loads over closed maps
}

// xdpLoaded is what LoadXDP loads: the maps and the variables, no program.
type xdpLoaded struct {
	xdpMaps
	xdpVariables
	RuleNames *ebpf.Map `ebpf:"rule_names"` // ruleNamesSpec
}

func (o *xdpLoaded) Close() error {
	return errors.Join(o.xdpMaps.Close(), o.RuleNames.Close())
}

// RuleNamesBytes is the most bytes SaveRuleNames keeps for one generation.
const RuleNamesBytes = 256 << 10

// ruleNamesSpec is a map no program reads: what userspace needs to name a
// generation's rules (the engine's encoding), one entry per generation,
// pinned with the tables, so that a restarted grain names the events and
// counts the counters of the generation it adopts, and of the one before
// it, whose events may still wait in the ring. A value is a little-endian
// length and that many bytes.
var ruleNamesSpec = ebpf.MapSpec{Name: "rule_names", Type: ebpf.Array, KeySize: 4,
	ValueSize: 4 + RuleNamesBytes, MaxEntries: Generations}

// SaveRuleNames keeps names (at most RuleNamesBytes) as generation gen's.
func (x *XDP) SaveRuleNames(gen uint32, names []byte) error {
	if len(names) > RuleNamesBytes {
		return fmt.Errorf("the names of %d bytes exceed the %d bytes kept for a generation", len(names), RuleNamesBytes)
	}
	v := make([]byte, 4+RuleNamesBytes)
	binary.LittleEndian.PutUint32(v, uint32(len(names)))
	copy(v[4:], names)
	return x.objs.RuleNames.Put(gen, v)
}

// RuleNames returns what SaveRuleNames kept as generation gen's: nothing
// when it never did (or the maps were pinned by a grain that did not).
func (x *XDP) RuleNames(gen uint32) ([]byte, error) {
	v, err := x.objs.RuleNames.LookupBytes(gen)
	if err != nil {
		return nil, fmt.Errorf("read the rule names of generation %d: %w", gen, err)
	}
	n := binary.LittleEndian.Uint32(v)
	if int(n) > len(v)-4 {
		return nil, fmt.Errorf("the rule names of generation %d claim %d bytes, more than the map holds", gen, n)
	}
	return v[4 : 4+n], nil
}

// MinRingBufferBytes is the smallest event ring buffer LoadXDP takes: it
// holds three full batches of staged events (64 events of 72 bytes each,
// bpf/xdp.c). A smaller ring could not take a full batch at all.
const MinRingBufferBytes = 16384

// XDPOptions tune the maps of the generic XDP program before loading.
type XDPOptions struct {
	// RingBufferBytes sizes the event ring buffer (a power of two, at least
	// MinRingBufferBytes). Zero keeps the compiled-in 1 MiB.
	RingBufferBytes uint32
	// PinPath, when set, is a bpffs directory where the maps are pinned by
	// name; maps already pinned there (by an earlier grain) are reused, so
	// a restarted grain continues with the rule tables in force.
	PinPath string
}

// ProgTC names the TC program (the XDP program's name is in codegen's
// Plan).
const ProgTC = "grain_tc"

// progXDP names the XDP program.
const progXDP = "grain_xdp"

// Program is the XDP program, loaded on the first call.
func (x *XDP) Program() (*ebpf.Program, error) { return x.loadProgram(progXDP) }

// Close releases the programs and maps held by this process.
func (x *XDP) Close() error {
	x.progMu.Lock()
	defer x.progMu.Unlock()
	x.closed = true
	var errs []error
	for name, p := range x.progs {
		errs = append(errs, p.Close())
		delete(x.progs, name)
	}
	return errors.Join(append(errs, x.objs.Close())...)
}

// mapsByName is every map of the program by its name in the object (and
// its pin's name).
func (x *XDP) mapsByName() map[string]*ebpf.Map {
	m := x.Maps()
	return map[string]*ebpf.Map{
		"active": m.Active, "bitmaps": m.Bitmaps, "port_class": m.PortClass, "cidr_class": m.CIDRClass,
		"cidr_index":    m.CIDRIndex,
		"iface_bitmaps": m.IfaceBitmaps, "rules": m.Rules, "contents": m.Contents,
		"rule_counters": m.RuleCounters, "stats": m.Stats, "events": m.Events, "iface_counters": m.IfaceCounters,
		"rate_windows": m.RateWindows, "event_stages": x.objs.EventStages, "rule_names": x.objs.RuleNames,
		"sni_class": m.SNIClass, "sni_scratch": x.objs.SniScratch,
	}
}

// TCProgram is the same rule walk as Program for tc ingress (tcx): it
// reads the same maps, so both see every apply at once. Loaded on the first
// call.
func (x *XDP) TCProgram() (*ebpf.Program, error) { return x.loadProgram(ProgTC) }

// loadProgram verifies the program name on the maps LoadXDP loaded, once:
// later calls return the same program. Both programs share every map but
// the compiler's constant sections, whose contents are the same.
func (x *XDP) loadProgram(name string) (*ebpf.Program, error) {
	x.progMu.Lock()
	defer x.progMu.Unlock()
	if p := x.progs[name]; p != nil {
		return p, nil
	}
	if x.closed {
		return nil, fmt.Errorf("load %s: grain's maps are closed", name)
	}
	shared := x.mapsByName()
	for m := range x.spec.Maps {
		if _, ok := shared[m]; !ok && !strings.HasPrefix(m, ".") {
			return nil, fmt.Errorf("load %s: map %q is not shared between the packet programs (a grain bug)", name, m)
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(x.onlyProgram(name), ebpf.CollectionOptions{MapReplacements: shared})
	if err != nil {
		return nil, explainLoadError(name, x.spec.Programs[name], err)
	}
	defer coll.Close()
	p := coll.DetachProgram(name)
	if x.progs == nil {
		x.progs = map[string]*ebpf.Program{}
	}
	x.progs[name] = p
	return p, nil
}

// onlyProgram is the object without its other programs, whose
// verification the load of this one must not wait for.
func (x *XDP) onlyProgram(name string) *ebpf.CollectionSpec {
	spec := x.spec.Copy()
	for other := range spec.Programs {
		if other != name {
			delete(spec.Programs, other)
		}
	}
	return spec
}

// LoadXDP loads the maps of grain's packet programs into the kernel; the
// programs load on first use (Program, TCProgram). Errors say which kernel
// feature is missing or, for a verifier rejection, the tail of the verifier
// log.
func LoadXDP(opts XDPOptions) (*XDP, error) {
	if err := CheckPrivileges(); err != nil {
		return nil, err
	}
	if err := HaveXDP(); err != nil {
		return nil, err
	}
	if err := HaveRingBuffer(); err != nil {
		return nil, err
	}
	spec, err := loadXdp()
	if err != nil {
		return nil, fmt.Errorf("parse embedded XDP object: %w", err)
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("count possible CPUs: %w", err)
	}
	spec.Maps["event_stages"].MaxEntries = uint32(cpus)
	names := ruleNamesSpec
	spec.Maps[names.Name] = &names
	if err := spec.Variables["program_instance"].Set(rand.Uint64() | 1); err != nil {
		return nil, fmt.Errorf("set program_instance: %w", err)
	}
	if opts.RingBufferBytes != 0 {
		if opts.RingBufferBytes < MinRingBufferBytes {
			return nil, fmt.Errorf("event ring buffer of %d bytes: the smallest is %d (three batches of events)", opts.RingBufferBytes, MinRingBufferBytes)
		}
		spec.Maps["events"].MaxEntries = opts.RingBufferBytes
		if err := spec.Variables["ring_wake_bytes"].Set(opts.RingBufferBytes / 8); err != nil {
			return nil, fmt.Errorf("set ring_wake_bytes: %w", err)
		}
	}
	var collOpts *ebpf.CollectionOptions
	if opts.PinPath != "" {
		if err := EnsureBPFFS(opts.PinPath); err != nil {
			return nil, err
		}
		for name, m := range spec.Maps {
			if !strings.HasPrefix(name, ".") { // not the compiler's .bss
				m.Pinning = ebpf.PinByName
			}
		}
		collOpts = &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: opts.PinPath}}
	}
	var fresh []string // maps this load will pin, when none is pinned yet
	if opts.PinPath != "" {
		for name, m := range spec.Maps {
			path := filepath.Join(opts.PinPath, name)
			if _, err := os.Stat(path); m.Pinning == ebpf.PinByName && os.IsNotExist(err) {
				fresh = append(fresh, path)
			}
		}
	}
	if opts.PinPath != "" {
		// Pins of a grain that stopped within TakeOverPins.
		leftovers, _ := filepath.Glob(filepath.Join(opts.PinPath, pendingPinPrefix+"*"))
		for _, path := range leftovers {
			os.Remove(path)
		}
	}
	x := &XDP{spec: spec, pinPath: opts.PinPath, reused: map[string]bool{}}
	if opts.PinPath != "" {
		for name, m := range spec.Maps {
			if m.Pinning == ebpf.PinByName && !slices.Contains(fresh, filepath.Join(opts.PinPath, name)) {
				x.reused[name] = true
			}
		}
	}
	err = spec.LoadAndAssign(&x.objs, collOpts)
	if err != nil {
		// Maps are pinned before the program loads: a failed load must not
		// leave new pins behind for the next grain to trip over.
		for _, path := range fresh {
			os.Remove(path)
		}
	}
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		// Another grain version, or another --event-ring-bytes, pinned
		// maps that this program cannot use. The links pinned beside them
		// still run that grain's program on those maps: they stay in
		// force, untouched, while this program loads with maps of its own,
		// which replace the pins once its rules are in them and the links
		// run it (TakeOverPins). Reusing none of the old maps keeps the set
		// consistent.
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
		x.pinPending = true
		clear(x.reused)
		err = spec.LoadAndAssign(&x.objs, nil)
	}
	if err != nil {
		return nil, explainLoadError("grain's maps", nil, err)
	}
	if _, old := olderThanMinKernel(); old {
		// The programs load on first use, but a kernel grain does not
		// support is refused now, at start, saying what it lacks.
		if _, err := x.Program(); err != nil {
			x.Close()
			return nil, err
		}
	}
	return x, nil
}

// CIDRIndexCreated reports that LoadXDP created the cidr_index map, all
// zero, rather than taking it from an earlier grain's pin.
func (x *XDP) CIDRIndexCreated() bool { return !x.reused["cidr_index"] }

// PinPending reports that maps of another layout are pinned where this
// program's maps belong (LoadXDP): until TakeOverPins, what is pinned there
// is an earlier grain's, still in force.
func (x *XDP) PinPending() bool { return x.pinPending }

// pendingPinPrefix names a map pin before it is renamed into place (bpffs
// refuses names with a dot).
const pendingPinPrefix = "replacing-"

// TakeOverPins pins this program's maps in place of the maps of another
// layout that LoadXDP found pinned, once the caller has made them the
// ones in force (rules written, links switched to this program). Each pin
// is replaced by a rename, so that every name always holds a map: a grain
// started in between finds the old map or the new one, and a set that
// still holds an old one does not fit, so it loads its own again.
func (x *XDP) TakeOverPins() error {
	if !x.pinPending {
		return nil
	}
	for name, m := range x.mapsByName() {
		pin := filepath.Join(x.pinPath, name)
		tmp := filepath.Join(x.pinPath, pendingPinPrefix+name)
		os.Remove(tmp) // left by a grain that stopped here
		if err := m.Pin(tmp); err != nil {
			return fmt.Errorf("pin map %s: %w", name, err)
		}
		if err := os.Rename(tmp, pin); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("replace the pinned map %s: %w", pin, err)
		}
	}
	x.pinPending = false
	return nil
}

// HaveTCX reports whether the kernel attaches tc programs with tcx links
// (Linux 6.6): an attach to an interface that cannot exist fails with
// ENODEV where tcx exists, with another error where it does not.
func HaveTCX() error {
	tcxOnce.Do(func() {
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()}})
		if err != nil {
			tcxErr = fmt.Errorf("kernel lacks tc BPF programs: %w", err)
			return
		}
		defer prog.Close()
		_, err = link.AttachTCX(link.TCXOptions{Interface: math.MaxInt32, Program: prog, Attach: ebpf.AttachTCXIngress})
		if !errors.Is(err, unix.ENODEV) {
			tcxErr = fmt.Errorf("kernel lacks tcx links (Linux 6.6): %w", err)
		}
	})
	return tcxErr
}

var (
	tcxOnce sync.Once
	tcxErr  error
)

// Unpin removes the maps' pins, so that they are freed once closed. Pins
// of another layout that this program never took over are not its own:
// they stay.
func (x *XDP) Unpin() error {
	if x.pinPath == "" || x.pinPending {
		return nil
	}
	var errs []error
	// By path: a pin TakeOverPins renamed into place is not where the map
	// handle remembers pinning it.
	for name := range x.mapsByName() {
		if err := os.Remove(filepath.Join(x.pinPath, name)); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// EnsureBPFFS makes sure dir lies on a bpffs and exists. Under
// /sys/fs/bpf it mounts bpffs when it is not mounted (minimal systems do not
// mount it at boot); elsewhere the caller must have mounted one.
func EnsureBPFFS(dir string) error {
	const root = "/sys/fs/bpf"
	if dir == root || strings.HasPrefix(dir, root+"/") {
		var st unix.Statfs_t
		if err := unix.Statfs(root, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
			if err := os.MkdirAll(root, 0o755); err != nil {
				return fmt.Errorf("create %s: %w", root, err)
			}
			if err := unix.Mount("bpf", root, "bpf", 0, "mode=0700"); err != nil {
				return fmt.Errorf("mount bpffs at %s (needed to pin grain's state): %w", root, err)
			}
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin directory %s: %w", dir, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("pin directory %s is not on a bpffs (mount -t bpf bpf DIR)", dir)
	}
	return nil
}

// HaveXDP reports whether the kernel has XDP programs.
func HaveXDP() error {
	if err := features.HaveProgramType(ebpf.XDP); err != nil {
		return fmt.Errorf("kernel lacks XDP programs (BPF_PROG_TYPE_XDP): %w", err)
	}
	return nil
}

// HaveRingBuffer reports whether the kernel has BPF ring buffers, which
// carry grain's events.
func HaveRingBuffer() error {
	if err := features.HaveMapType(ebpf.RingBuf); err != nil {
		return fmt.Errorf("kernel lacks BPF ring buffers (needs Linux 5.8 or later): %w", err)
	}
	return nil
}

// MissingCapabilities names the capabilities grain needs to load and attach
// its programs that the process does not hold (effective set).
func MissingCapabilities() ([]string, error) { return missingCapabilities() }

// SyscallUsable reports whether the bpf() system call works for this
// process: a seccomp profile, a security module or a kernel without it
// refuse it, each with an error that says so.
func SyscallUsable() error { return bpfUsable() }

// KernelRelease is uname -r, and whether it is older than MinKernel.
func KernelRelease() (release string, tooOld bool) { return olderThanMinKernel() }

// CheckPrivileges reports a clear error when the process cannot use BPF. It
// asks for capabilities, not uid 0: root has them all, and a process of
// another user (a least-privileged container) that holds CAP_BPF,
// CAP_NET_ADMIN and CAP_PERFMON in its effective set may load and attach
// grain's programs.
func CheckPrivileges() error {
	missing, err := missingCapabilities()
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		return fmt.Errorf("grain lacks %s: it needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (or root) to load and attach eBPF programs: run it with sudo, or give it those capabilities", strings.Join(missing, ", "))
	}
	return bpfUsable()
}

// missingCapabilities names the capabilities grain needs that are not in the
// process's effective set. CAP_SYS_ADMIN stands in for CAP_BPF and
// CAP_PERFMON, as the kernel lets it.
func missingCapabilities() ([]string, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return nil, fmt.Errorf("read the process's capabilities (capget): %w", err)
	}
	has := func(c int) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
	var missing []string
	for _, c := range []struct {
		name string
		cap  int
	}{{"CAP_BPF", unix.CAP_BPF}, {"CAP_NET_ADMIN", unix.CAP_NET_ADMIN}, {"CAP_PERFMON", unix.CAP_PERFMON}} {
		if !has(c.cap) && (c.cap == unix.CAP_NET_ADMIN || !has(unix.CAP_SYS_ADMIN)) {
			missing = append(missing, c.name)
		}
	}
	return missing, nil
}

// bpfUsable prepares and checks the bpf() system call once per process.
// RemoveMemlock is a no-op from Linux 5.11, which charges maps to the memory
// cgroup; before, map creation would fail with EPERM under the default
// limit, ahead of the load error that names what such a kernel lacks. The
// one bpf() call, creating a one-entry array map, reports a refused or
// missing system call as such rather than as the first program type or map
// type probed being missing.
var bpfUsable = sync.OnceValue(func() error {
	_ = rlimit.RemoveMemlock()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	switch {
	case err == nil:
		return m.Close()
	case errors.Is(err, unix.ENOSYS):
		return errors.New("this kernel has no bpf() system call (CONFIG_BPF_SYSCALL off, or a seccomp profile that hides it): grain cannot run here")
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("the kernel refuses the bpf() system call (%v): in a container, its seccomp profile or missing capabilities refuse it (run it privileged, or with CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON and a profile that allows bpf); on a host, a security module (kernel lockdown, SELinux)", unix.EPERM)
	}
	return fmt.Errorf("the bpf() system call fails: %w", err)
})

// explainLoadError turns a program load failure into a message that says
// what to do, keeping the verifier's log tail for rejections. On a kernel
// older than grain supports, it names a helper the program calls that the
// kernel lacks or, failing that, the release.
func explainLoadError(prog string, ps *ebpf.ProgramSpec, err error) error {
	if ps != nil {
		if herr := missingHelper(ps); herr != nil {
			return fmt.Errorf("load %s: %w", prog, herr)
		}
	}
	var ve *ebpf.VerifierError
	isVerifier := errors.As(err, &ve)
	if release, old := olderThanMinKernel(); old {
		said := err.Error()
		if isVerifier && len(ve.Log) > 0 {
			said = ve.Log[len(ve.Log)-1]
			if len(ve.Log) > 1 && strings.HasPrefix(said, "processed ") {
				said = ve.Log[len(ve.Log)-2]
			}
		}
		return fmt.Errorf("load %s: %w: %s is older than Linux %s, which grain needs (the kernel said: %s)",
			prog, ErrKernelTooOld, release, MinKernel, said)
	}
	if isVerifier {
		lines := ve.Log
		const tail = 20
		if len(lines) > tail {
			lines = lines[len(lines)-tail:]
		}
		return fmt.Errorf("the kernel's verifier rejected %s: %v\n(grain needs Linux %s or later; on such a kernel this is a grain bug: report it with this log)\nverifier log tail:\n  %s",
			prog, ve.Cause, MinKernel, strings.Join(lines, "\n  "))
	}
	if errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("load %s: a kernel feature is missing (grain needs Linux %s or later): %w", prog, MinKernel, err)
	}
	if errors.Is(err, os.ErrPermission) {
		return fmt.Errorf("load %s: permission denied: run grain as root (with CAP_BPF and CAP_NET_ADMIN): %w", prog, err)
	}
	return fmt.Errorf("load %s: %w", prog, err)
}

// Map-value mirrors of grain.h, for the engine that fills the maps.
type (
	Bitmap       = xdpGrainBitmap
	Active       = xdpGrainActive
	Gate         = xdpGrainGate
	GenConfig    = xdpGrainGenConfig
	CIDRKey      = xdpGrainCidrKey
	CIDRIndex    = xdpGrainCidrIndex
	IfaceKey     = xdpGrainIfaceKey
	Rule         = xdpGrainRule
	Content      = xdpGrainContent
	Counter      = xdpGrainCounter
	Rate         = xdpGrainRate
	IfaceCounter = xdpGrainIfaceCounter
	Event        = xdpGrainEvent
	EventPayload = xdpGrainEventPayload
	EventHello   = xdpGrainEventHello
	SNIKey       = xdpGrainSniKey
)

// XDPMaps are the maps of the generic XDP program.
type XDPMaps struct {
	Active, Bitmaps, PortClass, CIDRClass, CIDRIndex *ebpf.Map
	IfaceBitmaps                                     *ebpf.Map
	Rules, Contents, RuleCounters, Stats, Events     *ebpf.Map
	IfaceCounters, RateWindows, SNIClass             *ebpf.Map
}

// Maps returns the program's maps.
func (x *XDP) Maps() XDPMaps {
	m := x.objs.xdpMaps
	return XDPMaps{
		Active: m.Active, Bitmaps: m.Bitmaps, PortClass: m.PortClass,
		CIDRClass: m.CidrClass, CIDRIndex: m.CidrIndex, IfaceBitmaps: m.IfaceBitmaps, Rules: m.Rules, Contents: m.Contents,
		RuleCounters: m.RuleCounters, Stats: m.Stats, Events: m.Events, IfaceCounters: m.IfaceCounters,
		RateWindows: m.RateWindows, SNIClass: m.SniClass,
	}
}

// StagedRuleIDs calls fn with the rule id of every event staged and not yet
// sent to the ring buffer, on any CPU (bpf/xdp.c: events wait in a per-CPU
// stage for at most a batch's time). The engine uses it to learn when the
// events of a replaced rule set have all reached the ring. A stage read
// while a flush sends it may show events already sent as staged, never an
// unsent one as sent, in whatever order the copy reads count and start: a
// flush sends ev[start, count) before it empties the stage or moves start.
func (x *XDP) StagedRuleIDs(fn func(id uint32)) error {
	var st xdpEventStage
	for cpu := uint32(0); cpu < x.objs.EventStages.MaxEntries(); cpu++ {
		if err := x.objs.EventStages.Lookup(cpu, &st); err != nil {
			return fmt.Errorf("read the event stage of CPU %d: %w", cpu, err)
		}
		for i := st.Start; i < st.Count && int(i) < len(st.Ev); i++ {
			fn(st.Ev[i].RuleId)
		}
	}
	return nil
}
