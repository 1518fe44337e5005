package engine

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/engine/hook"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// oldKernelFeature is what vm-test.sh --features declares for a guest whose
// kernel is older than grain supports (make test boots Debian 11's 5.10 and
// Ubuntu 20.04's 5.13).
const oldKernelFeature = "older-than-" + bpf.MinKernel

// On a kernel older than grain supports, grain refuses with an error that
// names the kernel, what it lacks (the helper, where one is missing) and
// the release grain needs; it loads nothing.
func TestOldKernelRefused(t *testing.T) {
	if !vmtest.Expected(oldKernelFeature) {
		t.Skipf("%s: runs in the Debian 5.10 guest of make test (vm-test.sh --features %s)", vmtest.Where(), oldKernelFeature)
	}
	if os.Geteuid() != 0 {
		t.Fatal("the guest runs tests as root")
	}
	e, err := New(Options{})
	if err == nil {
		e.Close()
		t.Fatalf("%s: the XDP program loaded, want a refusal", vmtest.Where())
	}
	t.Logf("packets: %v", err)
	release := os.Getenv(vmtest.KernelEnv)
	// The helpers the XDP program calls that came last: a kernel that
	// lacks one (5.10 the coarse clock, 5.11-5.14 the timers that send
	// staged events) has the error name it, not a verifier log to
	// decipher.
	var lacks []string
	for _, h := range []struct {
		name, since string
		fn          asm.BuiltinFunc
	}{
		{"bpf_ktime_get_coarse_ns", "5.11", asm.FnKtimeGetCoarseNs},
		{"bpf_timer_init", "5.15", asm.FnTimerInit},
		{"bpf_timer_set_callback", "5.15", asm.FnTimerSetCallback},
		{"bpf_timer_start", "5.15", asm.FnTimerStart},
	} {
		if features.HaveProgramHelper(ebpf.XDP, h.fn) != nil {
			lacks = append(lacks, release+" lacks the BPF helper "+h.name+" (Linux "+h.since+") in XDP programs: grain needs Linux "+bpf.MinKernel+" or later")
		}
	}
	if len(lacks) > 0 {
		named := slices.ContainsFunc(lacks, func(want string) bool { return strings.Contains(err.Error(), want) })
		if !errors.Is(err, bpf.ErrKernelTooOld) || !named {
			t.Errorf("got %v\nwant bpf.ErrKernelTooOld and one of %q", err, lacks)
		}
		if strings.Contains(err.Error(), "verifier log") {
			t.Errorf("the error carries the verifier's log; the missing helper says it all: %v", err)
		}
	} else {
		// Every helper there (a backport), and an older verifier gives
		// up on the program: the error says the kernel is too old, with
		// the verifier's last word.
		want := "kernel too old: " + release + " is older than Linux " + bpf.MinKernel + ", which grain needs (the kernel said: "
		if !errors.Is(err, bpf.ErrKernelTooOld) || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v\nwant bpf.ErrKernelTooOld and %q", err, want)
		}
	}

	// Kernel hooks: their configuration is found by attach cookie (5.15).
	p, err := hook.New(hook.Options{})
	if err == nil {
		p.Close()
		t.Fatalf("%s: kernel hooks were set up, want a refusal", vmtest.Where())
	}
	t.Logf("kernel hooks: %v", err)
	if !strings.Contains(err.Error(), "bpf_get_attach_cookie (needs Linux 5.15)") {
		t.Errorf("got %v, want it to name bpf_get_attach_cookie and Linux 5.15", err)
	}
}
