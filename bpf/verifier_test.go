package bpf

import (
	"fmt"
	"regexp"
	"strconv"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/grain-ebpf/grain/internal/vmtest"
)

// packetProgramBudget is the most instructions the verifier may process for
// a packet program (grain_xdp, grain_tc) on any kernel make test boots: half
// its limit of a million. Their verification is most of grain's start-up
// (BENCHMARKS.md §13), and a kernel's limit is the ceiling of what they can
// do. A change that needs more raises it here with the reason in
// BENCHMARKS.md §7.
const packetProgramBudget = 500_000

// TestVerifierInstructions loads every program grain loads and logs, one
// line per program, how many instructions the verifier processed for it
// (its limit is a million): the guests of make test run it on each kernel,
// so CI's output shows how close each program is to the limit everywhere.
// Each program must load, and the packet programs stay within
// packetProgramBudget.
func TestVerifierInstructions(t *testing.T) {
	vmtest.RequireRoot(t)
	x, err := LoadXDP(XDPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	tc, err := x.TCProgram()
	if err != nil {
		t.Fatal(err)
	}
	p, err := LoadHooks(HookOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	type loaded struct {
		name, attachTo string
		prog           *ebpf.Program
		spec           *ebpf.CollectionSpec
		maps           map[string]*ebpf.Map
	}
	xdp, err := x.Program()
	if err != nil {
		t.Fatal(err)
	}
	progs := []loaded{
		{name: "grain_xdp", prog: xdp, spec: x.spec, maps: x.mapsByName()},
		{name: ProgTC, prog: tc, spec: x.spec, maps: x.mapsByName()},
	}
	load := func(name, attachTo string) {
		var prog *ebpf.Program
		var err error
		if attachTo == "" {
			prog, err = p.Program(name)
		} else {
			prog, err = p.TracingProgram(name, attachTo)
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		progs = append(progs, loaded{name: name, attachTo: attachTo, prog: prog, spec: p.spec, maps: p.maps})
	}
	for _, name := range []string{ProgTracepoint, ProgSysEnter, ProgKprobe, ProgKretprobe} {
		load(name, "")
	}
	f := DetectProbeFeatures()
	if f.RawTracepointCookie == nil {
		load(ProgRawTracepoint, "")
	} else {
		t.Logf("%s not loaded: %v", ProgRawTracepoint, f.RawTracepointCookie)
	}
	if f.FentryErr == nil {
		load(ProgFentry, "vfs_read")
		load(ProgFexit, "vfs_read")
	} else {
		t.Logf("%s and %s not loaded: %v", ProgFentry, ProgFexit, f.FentryErr)
	}

	t.Logf("verifier: instructions processed per program on %s", vmtest.Where())
	for _, l := range progs {
		n, source, err := verifiedInstructions(l.prog, l.spec, l.name, l.attachTo, l.maps)
		if err != nil {
			t.Errorf("%s: %v", l.name, err)
			continue
		}
		t.Logf("verifier: %-22s %8d insns (%s)", l.name, n, source)
		if (l.name == "grain_xdp" || l.name == ProgTC) && n > packetProgramBudget {
			t.Errorf("%s: the verifier processed %d instructions on %s, over the packet programs' budget of %d: "+
				"cut its work (BENCHMARKS.md §7 says how to find where it goes) or raise packetProgramBudget "+
				"with the reason in BENCHMARKS.md §7", l.name, n, vmtest.Where(), packetProgramBudget)
		}
	}
}

// verifiedInstructions is the count the kernel reports for prog (Linux
// 5.16 and later), or else the one in the statistics of the verifier's log
// of the program loaded once more from spec with maps.
func verifiedInstructions(prog *ebpf.Program, spec *ebpf.CollectionSpec, name, attachTo string, maps map[string]*ebpf.Map) (uint32, string, error) {
	info, err := prog.Info()
	if err != nil {
		return 0, "", err
	}
	if n, ok := info.VerifiedInstructions(); ok {
		return n, "program info", nil
	}
	n, err := verifierLogInstructions(spec, name, attachTo, maps)
	return n, "verifier log", err
}

var processedInsns = regexp.MustCompile(`processed (\d+) insns`)

// verifierLogInstructions loads program name of spec with maps once more,
// with the verifier's statistics, and returns the instructions it
// processed.
func verifierLogInstructions(spec *ebpf.CollectionSpec, name, attachTo string, maps map[string]*ebpf.Map) (uint32, error) {
	cs := spec.Copy()
	ps, ok := cs.Programs[name]
	if !ok {
		return 0, fmt.Errorf("no program %s in the object", name)
	}
	if attachTo != "" {
		ps.AttachTo = attachTo
	}
	cs.Programs = map[string]*ebpf.ProgramSpec{name: ps}
	coll, err := ebpf.NewCollectionWithOptions(cs, ebpf.CollectionOptions{
		MapReplacements: maps,
		Programs:        ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats},
	})
	if err != nil {
		return 0, fmt.Errorf("load with the verifier's statistics: %w", err)
	}
	defer coll.Close()
	log := coll.Programs[name].VerifierLog
	m := processedInsns.FindStringSubmatch(log)
	if m == nil {
		return 0, fmt.Errorf("no %q in the verifier's log %q", processedInsns, log)
	}
	n, err := strconv.ParseUint(m[1], 10, 32)
	return uint32(n), err
}

// The verifier's log agrees with the kernel's count where the kernel has
// both (the guests' 5.15 has only the log).
func TestVerifierLogInstructions(t *testing.T) {
	vmtest.HostOnly(t, "the log reads alike on every kernel, and loading grain_xdp once more costs a guest a minute")
	vmtest.RequireRoot(t)
	x, err := LoadXDP(XDPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	prog, err := x.Program()
	if err != nil {
		t.Fatal(err)
	}
	info, err := prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	want, ok := info.VerifiedInstructions()
	if !ok {
		t.Skipf("%s reports no verified_insns to compare the log's count with", vmtest.Where())
	}
	got, err := verifierLogInstructions(x.spec, "grain_xdp", "", x.mapsByName())
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Errorf("the verifier's log says %d instructions, the program's info %d", got, want)
	}
}
