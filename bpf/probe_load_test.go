package bpf

import (
	"errors"
	"testing"

	"github.com/cilium/ebpf"
)

// TestLoadProbePrograms loads every probe program the kernel supports and
// reports the verifier's effort; fentry/fexit only where the kernel allows
// them (not on the development host: EPERM).
func TestLoadProbePrograms(t *testing.T) {
	requireRoot(t)
	p, err := LoadProbe(ProbeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, name := range []string{ProgTracepoint, ProgSysEnter, ProgKprobe, ProgKretprobe} {
		prog, err := p.Program(name)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		logVerified(t, name, prog)
	}
	f := DetectProbeFeatures()
	if f.FentryErr != nil {
		t.Logf("fentry/fexit not loaded: %v", f.FentryErr)
		return
	}
	for _, name := range []string{ProgFentry, ProgFexit} {
		prog, err := p.TracingProgram(name, "vfs_read")
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		logVerified(t, name, prog)
	}
}

func logVerified(t *testing.T, name string, prog *ebpf.Program) {
	info, err := prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	insns, _ := info.VerifiedInstructions()
	t.Logf("%s: verified instructions: %d", name, insns)
}

var _ = errors.Is
