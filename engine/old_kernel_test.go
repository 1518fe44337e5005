package engine

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"

	"github.com/grain-ebpf/grain/bpf"
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
	if features.HaveProgramHelper(ebpf.XDP, asm.FnKtimeGetCoarseNs) != nil {
		// Before 5.11 the XDP program's coarse clock is missing: the
		// error names it, not a verifier log to decipher.
		want := release + " lacks the BPF helper bpf_ktime_get_coarse_ns (Linux 5.11) in XDP programs: grain needs Linux " + bpf.MinKernel + " or later"
		if !errors.Is(err, bpf.ErrKernelTooOld) || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v\nwant bpf.ErrKernelTooOld and %q", err, want)
		}
		if strings.Contains(err.Error(), "verifier log") {
			t.Errorf("the error carries the verifier's log; the missing helper says it all: %v", err)
		}
	} else {
		// From 5.11 every helper is there, and an older verifier gives
		// up on the program: the error says the kernel is too old, with
		// the verifier's last word.
		want := "kernel too old: " + release + " is older than Linux " + bpf.MinKernel + ", which grain needs (the kernel said: "
		if !errors.Is(err, bpf.ErrKernelTooOld) || !strings.Contains(err.Error(), want) {
			t.Errorf("got %v\nwant bpf.ErrKernelTooOld and %q", err, want)
		}
	}

	// Kernel hooks: their configuration is found by attach cookie (5.15).
	p, err := NewProbes(ProbeOptions{})
	if err == nil {
		p.Close()
		t.Fatalf("%s: kernel hooks were set up, want a refusal", vmtest.Where())
	}
	t.Logf("kernel hooks: %v", err)
	if !strings.Contains(err.Error(), "bpf_get_attach_cookie (needs Linux 5.15)") {
		t.Errorf("got %v, want it to name bpf_get_attach_cookie and Linux 5.15", err)
	}
}
