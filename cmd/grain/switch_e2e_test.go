package main

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// TestSwitchUserToRootKeepsEnforcing: a node moved from the least-privileged
// profile (a user holding CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, pin
// directory reached through a bind mount) to the privileged one (root,
// same pin directory through another path). The grain that adopts the
// first one's pinned state with --keep-on-exit must enforce, checked with
// real traffic, and so must one restarted after it.
func TestSwitchUserToRootKeepsEnforcing(t *testing.T) {
	vmtest.HostOnly(t, "bpf's TestCheckPrivilegesAsUser checks what each guest's kernel allows a capable user")
	p := netns.NewPair(t)
	port := p.HTTPServer(t)

	bin, policyDir, pins := capableUserFiles(t)
	// The least-privileged pod's view: the same directory at another path.
	alias := worldDir(t, 0)
	if err := unix.Mount(pins, alias, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(alias, unix.MNT_DETACH) })

	d := startAsCapableUser(t, p.ServerNS, bin, "run", "--policies", policyDir, "--interface", p.ServerIf,
		"--pin-path", alias, "--keep-on-exit", "--debounce", "100ms")
	d.waitLog(t, "enforcing", 1)
	if !blocked(t, p, port, "GET / HTTP/1.1") {
		t.Fatal("grain as nobody: HTTP/1.1 not blocked")
	}
	d.stop(t)
	if !blocked(t, p, port, "GET / HTTP/1.1") {
		t.Fatal("grain as nobody stopped with --keep-on-exit, and HTTP/1.1 is no longer blocked")
	}

	for i := range 2 {
		r := startGrain(t, p.ServerNS, "run", "--policies", policyDir, "--interface", p.ServerIf,
			"--pin-path", pins, "--keep-on-exit", "--debounce", "100ms")
		r.waitLog(t, "enforcing", 1)
		t.Logf("root grain %d:\n%s", i, r.log())
		if !blocked(t, p, port, "GET / HTTP/1.1") {
			t.Fatalf("root grain %d after the switch says it enforces, and HTTP/1.1 passes", i)
		}
		r.stop(t)
		if !blocked(t, p, port, "GET / HTTP/1.1") {
			t.Fatalf("root grain %d stopped with --keep-on-exit, and HTTP/1.1 is no longer blocked", i)
		}
	}
}
