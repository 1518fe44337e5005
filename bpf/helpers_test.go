package bpf

import (
	"errors"
	"maps"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"

	"github.com/grain-ebpf/grain/internal/vmtest"
)

func TestHelperName(t *testing.T) {
	vmtest.HostOnly(t, "a table lookup")
	for fn, want := range map[asm.BuiltinFunc]string{
		asm.FnKtimeGetCoarseNs:  "bpf_ktime_get_coarse_ns",
		asm.FnGetAttachCookie:   "bpf_get_attach_cookie",
		asm.FnGetCurrentTaskBtf: "bpf_get_current_task_btf",
		asm.FnMapLookupElem:     "bpf_map_lookup_elem",
	} {
		if got := helperName(fn); got != want {
			t.Errorf("helperName(%v) = %q, want %q", fn, got, want)
		}
	}
}

// grainPrograms are the programs of grain's BPF objects, by name.
func grainPrograms(t *testing.T) map[string]*ebpf.ProgramSpec {
	t.Helper()
	progs := map[string]*ebpf.ProgramSpec{}
	for _, load := range []func() (*ebpf.CollectionSpec, error){loadXdp, loadHook} {
		spec, err := load()
		if err != nil {
			t.Fatal(err)
		}
		maps.Copy(progs, spec.Programs)
	}
	return progs
}

// Every helper grain's programs call has the release that added it, for
// the message of a kernel that lacks it.
func TestHelperSinceCoversThePrograms(t *testing.T) {
	vmtest.HostOnly(t, "reads the compiled objects, not the kernel")
	for name, ps := range grainPrograms(t) {
		for _, ins := range ps.Instructions {
			if fn := asm.BuiltinFunc(ins.Constant); ins.IsBuiltinCall() && helperSince[fn] == "" {
				t.Errorf("%s calls %s, which helperSince lacks", name, helperName(fn))
			}
		}
	}
}

// On a kernel grain supports, every helper of the programs whose type the
// kernel can be asked about is there (this also runs in the 6.1 guests);
// a helper the program's type cannot call is named, without calling the
// kernel too old.
func TestMissingHelper(t *testing.T) {
	vmtest.RequireRoot(t)
	for name, ps := range grainPrograms(t) {
		if name == ProgRawTracepoint {
			continue // Linux 6.10; grain falls back when it is missing (features.go)
		}
		if err := missingHelper(ps); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := features.HaveProgramHelper(ebpf.XDP, asm.FnSkbPullData); !errors.Is(err, ebpf.ErrNotSupported) {
		t.Fatalf("this kernel offers bpf_skb_pull_data to XDP programs (%v): the test needs a helper XDP cannot call", err)
	}
	ps := &ebpf.ProgramSpec{Type: ebpf.XDP, Instructions: asm.Instructions{
		asm.FnKtimeGetCoarseNs.Call(), asm.FnSkbPullData.Call(), asm.Mov.Imm(asm.R0, 0), asm.Return(),
	}}
	// This kernel is not too old: the message names the helper and does
	// not blame the release (the 5.10 guest checks that case).
	err := missingHelper(ps)
	if err == nil || errors.Is(err, ErrKernelTooOld) || !strings.Contains(err.Error(), "does not offer the BPF helper bpf_skb_pull_data to XDP programs") {
		t.Fatalf("missingHelper: %v; want an error naming bpf_skb_pull_data, not ErrKernelTooOld", err)
	}
}

// A program the verifier rejects on a kernel grain supports: the message
// says so and carries the tail of the verifier's log.
func TestExplainVerifierRejection(t *testing.T) {
	vmtest.RequireRoot(t)
	ps := &ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL", Instructions: asm.Instructions{
		asm.Mov.Reg(asm.R0, asm.R2), // R2 is not initialised
		asm.Return(),
	}}
	_, err := ebpf.NewProgram(ps)
	if err == nil {
		t.Fatal("the verifier accepted a program that reads an uninitialised register")
	}
	msg := explainLoadError("test_prog", ps, err).Error()
	for _, want := range []string{"the kernel's verifier rejected test_prog", "verifier log tail:", "R2 !read_ok"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message lacks %q:\n%s", want, msg)
		}
	}
}
