// Package testcpu pins a test to one CPU, for tests of per-CPU kernel
// state: a BPF test run executes on the CPU of the calling thread, and a
// frame sent on a veth is received on the CPU that sent it.
package testcpu

import (
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// Pin runs the rest of the test's goroutine on its current OS thread,
// pinned to cpu. Cleanup restores the thread's CPU set before the thread
// goes back to the runtime.
func Pin(t testing.TB, cpu int) {
	t.Helper()
	runtime.LockOSThread()
	t.Cleanup(runtime.UnlockOSThread)
	var old, one unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		t.Fatal(err)
	}
	one.Set(cpu)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.SchedSetaffinity(0, &old) })
}
