package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/plantest"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// TestCheckRefusesMultiplyingTree: the 30-line file that took grain check
// hours is refused, naming its file and line.
func TestCheckRefusesMultiplyingTree(t *testing.T) {
	vmtest.HostOnly(t, "grain check bounds the evaluation of CUE; no kernel takes part")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "m.cue"), []byte(plantest.MultiplyingTree(29)), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := run([]string{"check", dir}, &out, &errOut); code != 1 {
		t.Fatalf("exit %d, want 1; stderr:\n%s", code, errOut.String())
	}
	if !strings.Contains(errOut.String(), filepath.Join(dir, "m.cue")+":") || !strings.Contains(errOut.String(), "evaluates to more than 500000 values") {
		t.Errorf("stderr does not name the file and the bound:\n%s", errOut.String())
	}
	// A runaway evaluation is stopped at --eval-timeout, naming its file.
	if err := os.WriteFile(filepath.Join(dir, "m.cue"), []byte(plantest.RunawayTree), 0o644); err != nil {
		t.Fatal(err)
	}
	errOut.Reset()
	if code := run([]string{"check", "--eval-timeout", "1s", dir}, &out, &errOut); code != 1 ||
		!strings.Contains(errOut.String(), filepath.Join(dir, "m.cue")+": evaluation did not finish within 1s") {
		t.Errorf("exit %d; stderr:\n%s", code, errOut.String())
	}
}

// TestRunawayTreeWedgesNothing: while a running grain evaluates a tree that
// would take hours, the rule set in force stays enforced (real traffic),
// grain status answers, a newer good edit abandons the evaluation and
// applies, and SIGTERM during such an evaluation exits cleanly.
func TestRunawayTreeWedgesNothing(t *testing.T) {
	vmtest.HostOnly(t, "the evaluation of a policy tree is bounded in userspace; the guests run the reload tests that reach the kernel")
	p := netns.NewPair(t)
	port := p.HTTPServer(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "policy.cue")
	writePolicy(t, file, fmt.Sprintf(blockVersion, "HTTP/1.1"))
	sock := filepath.Join(t.TempDir(), "grain.sock")
	d := startGrain(t, p.ServerNS, "run", "--policies", dir, "--interface", p.ServerIf,
		"--pin-path", netns.PinDir(t), "--status-socket", sock, "--eval-timeout", "1h")

	loads := func() int { return strings.Count(d.log(), "loading policies") }
	runaway := filepath.Join(dir, "runaway.cue")
	n := loads()
	writePolicy(t, runaway, plantest.RunawayTree)
	d.waitLog(t, "loading policies", n+1)
	status := func() map[string]any {
		t.Helper()
		out, err := exec.Command(buildGrainPath(t), "status", "--status-socket", sock).Output()
		if err != nil {
			t.Fatalf("grain status during the evaluation: %v; grain's stderr:\n%s", err, d.log())
		}
		var st map[string]any
		if err := json.Unmarshal(out, &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	if st := status(); fmt.Sprint(st["rules"]) != "[block]" || st["last_result"] != "success" {
		t.Errorf("status during the evaluation: %v", st)
	}
	if !blocked(t, p, port, "GET / HTTP/1.1") || blocked(t, p, port, "GET / HTTP/1.0") {
		t.Fatal("during the evaluation the rule set in force must stay enforced")
	}

	// A good edit: the runaway file goes, the policy changes.
	if err := os.Remove(runaway); err != nil {
		t.Fatal(err)
	}
	writePolicy(t, file, fmt.Sprintf(blockVersion, "HTTP/1.0"))
	d.waitLog(t, "policies applied", 2)
	if !strings.Contains(d.log(), "reload abandoned") {
		t.Errorf("the runaway evaluation was not abandoned; stderr:\n%s", d.log())
	}
	if blocked(t, p, port, "GET / HTTP/1.1") || !blocked(t, p, port, "GET / HTTP/1.0") {
		t.Fatal("after the good edit: want HTTP/1.0 blocked and HTTP/1.1 passed")
	}

	// The multiplying file fails at once, named; the rule set stays.
	writePolicy(t, filepath.Join(dir, "m.cue"), plantest.MultiplyingTree(27))
	d.waitLog(t, "reload failed", 1)
	if st := status(); st["last_result"] != "failure" || !strings.Contains(fmt.Sprint(st["last_error"]), "m.cue:") {
		t.Errorf("status after the multiplying file: %v", st)
	}
	if !blocked(t, p, port, "GET / HTTP/1.0") {
		t.Fatal("after a refused tree the rule set in force must stay enforced")
	}

	// SIGTERM while a runaway evaluation runs.
	os.Remove(filepath.Join(dir, "m.cue"))
	time.Sleep(300 * time.Millisecond) // past the debounce: a change of its own
	n = loads()
	writePolicy(t, runaway, plantest.RunawayTree)
	d.waitLog(t, "loading policies", n+1)
	abandoned := strings.Count(d.log(), "reload abandoned")
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("grain exited with %v; stderr:\n%s", err, d.log())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("grain did not exit within 30 s of SIGTERM during an evaluation; stderr:\n%s", d.log())
	}
	if strings.Count(d.log(), "reload abandoned") != abandoned+1 {
		t.Errorf("SIGTERM did not abandon the evaluation in progress; stderr:\n%s", d.log())
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("status socket left behind: %v", err)
	}
}
