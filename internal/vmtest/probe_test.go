package vmtest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// The runner's own smoke tests: a kprobe (with an attach cookie) and an
// fentry program on do_sys_openat2 count this process's opens, proving that
// the guest kernel runs kernel-function hooks. They are built from
// instructions, so they need no compiled object.

const (
	probedFunc = "do_sys_openat2"
	cookie     = 0x67726169 // "grai"
	opens      = 5

	// enotsupp is the kernel's internal ENOTSUPP (524), which leaks to user
	// space from BPF attach paths.
	enotsupp = unix.Errno(524)
)

// counter returns a one-element array map whose value is {hits, cookie} and
// a program that, in this process only, adds one to hits and stores the
// attach cookie (when withCookie) in cookie.
func counter(t *testing.T, spec *ebpf.ProgramSpec, withCookie bool) (*ebpf.Map, *ebpf.ProgramSpec) {
	t.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 16, MaxEntries: 1})
	if err != nil {
		t.Fatalf("create map: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.FnGetCurrentPidTgid.Call(),
		asm.RSh.Imm(asm.R0, 32),
		asm.JNE.Imm(asm.R0, int32(os.Getpid()), "exit"),
		asm.Mov.Imm(asm.R7, 0),
	}
	if withCookie {
		insns = append(insns,
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.FnGetAttachCookie.Call(),
			asm.Mov.Reg(asm.R7, asm.R0),
		)
	}
	insns = append(insns,
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "exit"),
		asm.Mov.Imm(asm.R1, 1),
		asm.AddAtomic.Mem(asm.R0, asm.R1, asm.DWord, 0),
		asm.StoreMem(asm.R0, 8, asm.R7, asm.DWord),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("exit"),
		asm.Return(),
	)
	spec.Instructions = insns
	spec.License = "GPL"
	return m, spec
}

// countOpens opens a file `opens` times and returns how much hits grew and
// the last cookie stored.
func countOpens(t *testing.T, m *ebpf.Map) (hits, gotCookie uint64) {
	t.Helper()
	read := func() (uint64, uint64) {
		var v [16]byte
		if err := m.Lookup(uint32(0), &v); err != nil {
			t.Fatalf("read counter: %v", err)
		}
		return binary.NativeEndian.Uint64(v[:8]), binary.NativeEndian.Uint64(v[8:])
	}
	before, _ := read()
	for range opens {
		f, err := os.Open("/proc/self/stat")
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	after, c := read()
	return after - before, c
}

func TestKprobeFires(t *testing.T) {
	RequireRoot(t)
	m, spec := counter(t, &ebpf.ProgramSpec{Type: ebpf.Kprobe}, true)
	prog, err := ebpf.NewProgram(spec)
	if err != nil {
		t.Fatalf("load kprobe program: %v", err)
	}
	defer prog.Close()
	l, err := link.Kprobe(probedFunc, prog, &link.KprobeOptions{Cookie: cookie})
	if err != nil {
		const pmu = "/sys/bus/event_source/devices/kprobe"
		if _, statErr := os.Stat(pmu); errors.Is(statErr, os.ErrNotExist) {
			Missing(t, "kprobe", fmt.Errorf("no %s (CONFIG_KPROBE_EVENTS off?); attach: %w", pmu, err))
		}
		t.Fatalf("attach kprobe to %s: %v", probedFunc, err)
	}
	defer l.Close()
	hits, got := countOpens(t, m)
	t.Logf("%s: kprobe on %s fired %d times for %d opens, cookie %#x", Where(), probedFunc, hits, opens, got)
	if hits < opens {
		t.Errorf("kprobe fired %d times, want at least %d", hits, opens)
	}
	if got != cookie {
		t.Errorf("cookie %#x, want %#x", got, cookie)
	}
}

func TestFentryFires(t *testing.T) {
	RequireRoot(t)
	m, spec := counter(t, &ebpf.ProgramSpec{
		Type:       ebpf.Tracing,
		AttachType: ebpf.AttachTraceFEntry,
		AttachTo:   probedFunc,
	}, false)
	prog, err := ebpf.NewProgram(spec)
	// Without BTF trampolines the load fails (EPERM on the 6.18 host, whose
	// kernel refuses tracing programs) or the attach does (ENOTSUPP on arm64
	// 6.1, which lacks ftrace direct calls).
	if errors.Is(err, unix.EPERM) || errors.Is(err, ebpf.ErrNotSupported) {
		Missing(t, "fentry", err)
	}
	if err != nil {
		t.Fatalf("load fentry program: %v", err)
	}
	defer prog.Close()
	l, err := link.AttachTracing(link.TracingOptions{Program: prog})
	if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, enotsupp) {
		Missing(t, "fentry", fmt.Errorf("no BPF trampoline to %s: %w", probedFunc, err))
	}
	if err != nil {
		t.Fatalf("attach fentry to %s: %v", probedFunc, err)
	}
	defer l.Close()
	hits, _ := countOpens(t, m)
	t.Logf("%s: fentry on %s fired %d times for %d opens", Where(), probedFunc, hits, opens)
	if hits < opens {
		t.Errorf("fentry fired %d times, want at least %d", hits, opens)
	}
}
