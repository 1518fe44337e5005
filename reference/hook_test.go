package reference

import (
	"fmt"
	"testing"

	"github.com/grain-ebpf/grain/internal/plantest"
)

func newHook(t *testing.T, dir string) *Hook {
	t.Helper()
	h, err := NewHook(examplePlan(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// examples/file-access reports opens under /etc, with the fields it asks
// for (exe is added in userspace, not here).
func TestCallFileAccess(t *testing.T) {
	h := newHook(t, "file-access")
	c := Call{Kind: "syscall", Target: "openat", PID: 41, TGID: 40, UID: 1000, Comm: "cat"}
	c.Args[1].Str = "/etc/passwd"
	rs := h.Call(c)
	if len(rs) != 1 || rs[0].Policy != "etc_opens" || rs[0].Event == nil || rs[0].Signal != "" || rs[0].Count != nil {
		t.Fatalf("open of /etc/passwd: %+v, want etc_opens's event", rs)
	}
	if got, want := fmt.Sprint(rs[0].Event.Fields), "[{tgid 40} {uid 1000} {comm cat} {filename /etc/passwd}]"; got != want {
		t.Errorf("event fields %s, want %s", got, want)
	}
	c.Args[1].Str = "/etcetera"
	if rs := h.Call(c); len(rs) != 0 {
		t.Errorf("open of /etcetera: %+v, want nothing", rs)
	}
	c.Target, c.Args[1].Str = "read", "/etc/passwd"
	if rs := h.Call(c); len(rs) != 0 {
		t.Errorf("read: %+v, want nothing (the hook is openat and openat2)", rs)
	}
}

// examples/kill-on-open kills whoever opens the canary.
func TestCallKillOnOpen(t *testing.T) {
	h := newHook(t, "kill-on-open")
	c := Call{Kind: "syscall", Target: "openat2", TGID: 7, Comm: "evil"}
	c.Args[1].Str = "/tmp/grain-canary"
	rs := h.Call(c)
	if len(rs) != 1 || rs[0].Signal != "SIGKILL" || rs[0].Event == nil || rs[0].Event.Name != "killed_on_open" {
		t.Fatalf("open of the canary: %+v, want SIGKILL and killed_on_open", rs)
	}
	c.Args[1].Str = "/tmp/grain-canary2"
	if rs := h.Call(c); len(rs) != 0 {
		t.Fatalf("open of another file: %+v, want nothing", rs)
	}
}

// examples/syscall-counts counts every system call by process and name.
func TestCallSyscallCounts(t *testing.T) {
	h := newHook(t, "syscall-counts")
	rs := h.Call(Call{Kind: "syscall", Target: "getppid", TGID: 9, Comm: "a-very-long-process-name", Arch: "amd64"})
	if len(rs) != 1 || rs[0].Count == nil {
		t.Fatalf("getppid: %+v, want one count", rs)
	}
	c := rs[0].Count
	if got, want := fmt.Sprint(c.Metric, c.Labels, c.Sum), "process.syscalls[{tgid 9} {comm a-very-long-pro} {syscall getppid}] 0"; got != want {
		t.Fatalf("count %s, want %s", got, want)
	}
}

// A policy in monitor mode sends no signal, and says which it would send.
func TestCallMonitorSendsNoSignal(t *testing.T) {
	h, err := NewHook(plantest.Compile(t, `kill: {
	mode: "monitor"
	syscall: "openat"
	args: [{index: 1, type: "user_string", name: "filename"}]
	match: args: filename: "/tmp/canary"
	signal: "SIGKILL"
}`))
	if err != nil {
		t.Fatal(err)
	}
	c := Call{Kind: "syscall", Target: "openat"}
	c.Args[1].Str = "/tmp/canary"
	rs := h.Call(c)
	if len(rs) != 1 || rs[0].Signal != "" || rs[0].WouldSignal != "SIGKILL" {
		t.Fatalf("%+v, want kill selecting, no signal, SIGKILL it would send", rs)
	}
}
