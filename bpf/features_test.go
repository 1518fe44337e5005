package bpf

import (
	"errors"
	"fmt"
	"runtime"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/grain-ebpf/grain/internal/vmtest"
)

// TestRawTracepointCookieFeature: the feature is there exactly when the
// kernel is 6.10 or later (raw tracepoint cookies), and then a cookie given
// at attach reaches the program.
func TestRawTracepointCookieFeature(t *testing.T) {
	vmtest.RequireRoot(t)
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	var major, minor int
	fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor)
	want := major > 6 || major == 6 && minor >= 10
	err := DetectProbeFeatures().RawTracepointCookie
	t.Logf("kernel %d.%d: raw tracepoint cookies: %v", major, minor, err)
	if (err == nil) != want {
		t.Fatalf("kernel %d.%d: RawTracepointCookie = %v, want available %v", major, minor, err, want)
	}
	if err != nil {
		return
	}
	// A program that stores its cookie in an array; task_rename fires on
	// prctl(PR_SET_NAME) from this thread.
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.RawTracepoint, License: "GPL", Instructions: asm.Instructions{
		asm.FnGetAttachCookie.Call(),
		asm.StoreMem(asm.RFP, -8, asm.R0, asm.DWord),
		asm.StoreImm(asm.RFP, -12, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -12),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -8),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnMapUpdateElem.Call(),
		asm.Mov.Imm(asm.R0, 0),
		asm.Return(),
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	l, err := AttachRawTracepointCookie("task_rename", prog, 0x6a11)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	name, _ := unix.BytePtrFromString("graincookie")
	if err := unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(name)), 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	var got uint64
	if err := m.Lookup(uint32(0), &got); err != nil {
		t.Fatal(err)
	}
	if got != 0x6a11 {
		t.Fatalf("cookie read by the program: %#x, want 0x6a11", got)
	}
}

var _ = errors.Is
