package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/grain-ebpf/grain/engine"
	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/vmtest"
	"github.com/grain-ebpf/grain/policies"
)

// grainStatus runs `grain status` on sock.
func grainStatus(t *testing.T, sock string) engine.Status {
	t.Helper()
	out, err := exec.Command(buildGrainPath(t), "status", "--status-socket", sock).Output()
	if err != nil {
		t.Fatalf("grain status: %v", err)
	}
	var st engine.Status
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("grain status output %q: %v", out, err)
	}
	return st
}

// TestReloadFollowsRemadeTarget: --policies names a link whose target
// directory is deleted and made again with another policy (rm -rf T;
// mkdir T; cp ...). grain applies it, and the edits after it (checked with
// real traffic and `grain status`), however often it happens. A broken edit
// reverted to the bytes in force clears the failure from `grain status`.
// Each time, the link points nowhere for a while (a reload fails), which is
// when the watch used to be lost.
func TestReloadFollowsRemadeTarget(t *testing.T) {
	vmtest.HostOnly(t, "the watcher is userspace (inotify)")
	p := netns.NewPair(t)
	port := p.HTTPServer(t)
	base := t.TempDir()
	target := filepath.Join(base, "T2")
	file := filepath.Join(target, "policy.cue")
	write := func(src string) {
		if err := os.MkdirAll(target, 0o755); err != nil {
			t.Fatal(err)
		}
		writePolicy(t, file, src)
	}
	write(fmt.Sprintf(blockVersion, "HTTP/1.1"))
	root := filepath.Join(base, "pol")
	if err := os.Symlink("T2", root); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "grain.sock")
	d := startGrain(t, p.ServerNS, "run", "--policies", root, "--interface", p.ServerIf,
		"--pin-path", netns.PinDir(t), "--status-socket", sock, "--debounce", "100ms")

	applied := 1
	enforces := func(what, version string) {
		t.Helper()
		applied++
		d.waitLog(t, "policies applied", applied)
		other := map[string]string{"HTTP/1.1": "HTTP/1.0", "HTTP/1.0": "HTTP/1.1"}[version]
		if !blocked(t, p, port, "GET / "+version) || blocked(t, p, port, "GET / "+other) {
			t.Fatalf("%s: want %s blocked and %s passed", what, version, other)
		}
		st := grainStatus(t, sock)
		want, err := policies.TreeHash(root)
		if err != nil {
			t.Fatal(err)
		}
		if st.PolicyHash != want || st.LastResult != "success" {
			t.Fatalf("%s: status says hash %s, %s; the tree on disk has %s", what, st.PolicyHash, st.LastResult, want)
		}
	}
	for i := range 2 {
		// In force before: HTTP/1.1 blocked.
		failed := strings.Count(d.log(), "reload failed")
		if err := os.RemoveAll(target); err != nil {
			t.Fatal(err)
		}
		// The link points nowhere for a while: that reload fails, and
		// the rule set in force stays.
		d.waitLog(t, "reload failed", failed+1)
		if st := grainStatus(t, sock); st.LastResult != "failure" {
			t.Fatalf("status while the link points nowhere: %s, %q", st.LastResult, st.LastError)
		}
		write(fmt.Sprintf(blockVersion, "HTTP/1.0"))
		enforces(fmt.Sprintf("target made again (%d)", i+1), "HTTP/1.0")
		write(fmt.Sprintf(blockVersion, "HTTP/1.1"))
		enforces(fmt.Sprintf("edit in the target made again (%d)", i+1), "HTTP/1.1")
	}

	// A broken edit, then the file as it was: the tree on disk is the one
	// in force again, and the status says so.
	good, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	failed := strings.Count(d.log(), "reload failed")
	write(strings.Replace(string(good), "then:", "thne:", 1))
	d.waitLog(t, "reload failed", failed+1)
	if st := grainStatus(t, sock); st.LastResult != "failure" || !strings.Contains(st.LastError, "thne") {
		t.Fatalf("status after a broken edit: %+v", st)
	}
	write(string(good))
	deadline := time.Now().Add(10 * time.Second)
	for st := grainStatus(t, sock); st.LastResult != "success" || st.LastError != ""; st = grainStatus(t, sock) {
		if time.Now().After(deadline) {
			t.Fatalf("10 s after the broken edit was reverted, the status still says %s: %s", st.LastResult, st.LastError)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
