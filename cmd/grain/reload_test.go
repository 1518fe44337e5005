package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

const blockVersion = `block: {
	xdp: interfaces: ["eth0"]
	match: {protocol: "tcp", payload: %q}
	then: "drop"
}
`

func writePolicy(t *testing.T, path, src string) {
	t.Helper()
	// Like an editor: write a temporary file, then rename it over the old.
	tmp := filepath.Join(filepath.Dir(path), ".tmp-"+filepath.Base(path))
	if err := os.WriteFile(tmp, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// waitLog waits until grain's stderr holds n occurrences of s. The bound
// is a hang guard, as in startGrainEnv, not a speed figure: a start or a
// reload on a machine whose cores are all busy has taken over 10 s.
func (d *grainProcess) waitLog(t *testing.T, s string, n int) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Count(d.log(), s) >= n {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("grain did not log %q %d times within 90 s; stderr:\n%s", s, n, d.log())
}

// blocked reports whether a raw request with the given request line gets no
// answer (grain dropped it).
func blocked(t *testing.T, p *netns.Pair, port int, requestLine string) bool {
	_, _, err := rawRequest(t, p, p.ServerIP4, port, requestLine)
	return err != nil
}

// TestReloadKeepsLastGoodPolicy edits the policy under a running grain: a
// good edit applies, a broken edit is refused with its position while the
// previous policy stays enforced (checked with real traffic), and the next
// good edit applies again.
func TestReloadKeepsLastGoodPolicy(t *testing.T) {
	p := netns.NewPair(t)
	port := p.HTTPServer(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "policy.cue")
	writePolicy(t, file, fmt.Sprintf(blockVersion, "HTTP/1.1"))
	sock := filepath.Join(t.TempDir(), "grain.sock")
	d := startGrain(t, p.ServerNS, "run", "--policies", dir, "--interface", p.ServerIf,
		"--pin-path", netns.PinDir(t), "--status-socket", sock, "--debounce", "100ms")

	if !blocked(t, p, port, "GET / HTTP/1.1") || blocked(t, p, port, "GET / HTTP/1.0") {
		t.Fatal("initial policy: want HTTP/1.1 blocked and HTTP/1.0 passed")
	}

	writePolicy(t, file, fmt.Sprintf(blockVersion, "HTTP/1.0"))
	d.waitLog(t, "policies applied", 2)
	if blocked(t, p, port, "GET / HTTP/1.1") || !blocked(t, p, port, "GET / HTTP/1.0") {
		t.Fatal("after the edit: want HTTP/1.0 blocked and HTTP/1.1 passed")
	}

	writePolicy(t, file, strings.Replace(fmt.Sprintf(blockVersion, "HTTP/1.1"), "then:", "thne:", 1))
	d.waitLog(t, "reload failed", 1)
	if !strings.Contains(d.log(), "policy.cue:4:2: policy block:") {
		t.Errorf("the refused reload does not name file:line:col; stderr:\n%s", d.log())
	}
	if !blocked(t, p, port, "GET / HTTP/1.0") || blocked(t, p, port, "GET / HTTP/1.1") {
		t.Fatal("after a broken edit the previous policy (block HTTP/1.0) must stay enforced")
	}
	out, err := exec.Command(buildGrainPath(t), "status", "--status-socket", sock).Output()
	if err != nil {
		t.Fatalf("grain status: %v", err)
	}
	var st struct {
		PolicyHash string `json:"policy_hash"`
		LastResult string `json:"last_result"`
		LastError  string `json:"last_error"`
		Rules      []string
		Interfaces []string
		Hooks      map[string]string `json:"interface_hooks"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("grain status output %q: %v", out, err)
	}
	if st.LastResult != "failure" || !strings.Contains(st.LastError, "thne") || len(st.PolicyHash) != 64 ||
		len(st.Rules) != 1 || st.Rules[0] != "block" || len(st.Interfaces) != 1 || st.Interfaces[0] != p.ServerIf {
		t.Errorf("status after a broken edit: %s", out)
	}
	// The pair's server end is a veth: tc ingress where the kernel has tcx.
	wantHook := "xdp generic"
	if bpf.HaveTCX() == nil {
		wantHook = "tcx ingress"
	}
	if st.Hooks[p.ServerIf] != wantHook {
		t.Errorf("status: interface_hooks %v, want %s on %s", st.Hooks, wantHook, p.ServerIf)
	}

	writePolicy(t, file, fmt.Sprintf(blockVersion, "HTTP/1.1"))
	d.waitLog(t, "policies applied", 3)
	if !blocked(t, p, port, "GET / HTTP/1.1") || blocked(t, p, port, "GET / HTTP/1.0") {
		t.Fatal("after the fixing edit: want HTTP/1.1 blocked again")
	}

	// SIGHUP reapplies the tree even though it did not change.
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitLog(t, "policies applied", 4)
	if !blocked(t, p, port, "GET / HTTP/1.1") {
		t.Fatal("after SIGHUP: want HTTP/1.1 still blocked")
	}
}

// restartSetup is what the restart tests share: a pair with an HTTP server
// on the server side (its port), a pin directory, and the arguments of a
// grain enforcing examples/block-http there with its state pinned.
func restartSetup(t *testing.T) (p *netns.Pair, port int, pins string, args []string) {
	p = netns.NewPair(t)
	port = p.HTTPServer(t)
	pins = netns.PinDir(t)
	args = []string{"run", "--policies", "../../examples/block-http", "--interface", p.ServerIf,
		"--pin-path", pins, "--status-socket", filepath.Join(t.TempDir(), "grain.sock")}
	return p, port, pins, args
}

// TestKeepOnExit: with --keep-on-exit, SIGTERM leaves enforcement and pins
// in place; the next grain adopts them, and its plain exit detaches.
func TestKeepOnExit(t *testing.T) {
	p, port, pins, args := restartSetup(t)
	first := startGrain(t, p.ServerNS, append(args, "--keep-on-exit")...)
	first.cmd.Process.Signal(syscall.SIGTERM)
	if err := first.cmd.Wait(); err != nil {
		t.Fatalf("grain --keep-on-exit exited with %v; stderr:\n%s", err, first.log())
	}
	if !strings.Contains(first.log(), "left attached") {
		t.Errorf("grain --keep-on-exit did not say it left the program attached; stderr:\n%s", first.log())
	}
	if !blocked(t, p, port, "GET / HTTP/1.1") {
		t.Fatal("after grain --keep-on-exit exited, HTTP/1.1 is no longer blocked")
	}
	if _, err := os.Stat(filepath.Join(pins, "links", p.ServerIf)); err != nil {
		t.Fatalf("the link pin is gone after --keep-on-exit: %v", err)
	}
	second := startGrain(t, p.ServerNS, args...)
	if !strings.Contains(second.log(), "adopted") {
		t.Errorf("the next grain did not adopt; stderr:\n%s", second.log())
	}
	second.cmd.Process.Signal(syscall.SIGTERM)
	second.cmd.Wait()
	if blocked(t, p, port, "GET / HTTP/1.1") {
		t.Error("after a plain exit, HTTP/1.1 is still blocked")
	}
}

func buildGrainPath(t *testing.T) string {
	bin, err := buildGrain()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// retryingClients send HTTP/1.1 requests that grain must drop, in a loop,
// while a test restarts grain.
type retryingClients struct {
	tries, leaks atomic.Int64
	stop         chan struct{}
	halt         sync.Once
	wg           sync.WaitGroup
}

// retryHTTP11 starts four clients in a loop: each blocked request keeps
// retransmitting (200 ms, 400 ms, ...), so packets arrive all through a
// restart. A test that ends early stops them too: left running, they
// spin on a removed namespace and starve the tests after it.
func retryHTTP11(t *testing.T, p *netns.Pair, port int) *retryingClients {
	c := &retryingClients{stop: make(chan struct{})}
	t.Cleanup(func() {
		c.halt.Do(func() { close(c.stop) })
		c.wg.Wait()
	})
	for range 4 {
		c.wg.Go(func() {
			for {
				select {
				case <-c.stop:
					return
				default:
				}
				c.tries.Add(1)
				if _, _, err := p.Get(netns.HTTPURL(p.ServerIP4, port)); err == nil {
					c.leaks.Add(1)
				}
			}
		})
	}
	return c
}

// stopAndCheck stops the clients and fails the test unless they tried and
// none of their requests got through.
func (c *retryingClients) stopAndCheck(t *testing.T, during string) {
	t.Helper()
	c.halt.Do(func() { close(c.stop) })
	c.wg.Wait()
	tries, leaks := c.tries.Load(), c.leaks.Load()
	t.Logf("%d HTTP/1.1 requests %s, %d got through", tries, during, leaks)
	if tries < 4 {
		t.Errorf("only %d requests were tried", tries)
	}
	if leaks != 0 {
		t.Errorf("%d of %d HTTP/1.1 requests got through %s", leaks, tries, during)
	}
}

// TestKill9KeepsEnforcementAndRestartAdopts kills grain with SIGKILL: the
// pinned link keeps dropping; a new grain adopts the pinned state and swaps
// in its own program with a link update. A client retries HTTP/1.1 requests
// throughout and none may get through.
func TestKill9KeepsEnforcementAndRestartAdopts(t *testing.T) {
	p, port, pins, args := restartSetup(t)
	first := startGrain(t, p.ServerNS, args...)

	clients := retryHTTP11(t, p, port)

	first.cmd.Process.Signal(syscall.SIGKILL)
	first.cmd.Wait()
	time.Sleep(500 * time.Millisecond)
	if !blocked(t, p, port, "GET / HTTP/1.1") {
		t.Fatal("after kill -9, HTTP/1.1 is no longer blocked")
	}
	second := startGrain(t, p.ServerNS, args...)
	if !strings.Contains(second.log(), "adopted") {
		t.Errorf("the new grain did not adopt the pinned link; stderr:\n%s", second.log())
	}
	time.Sleep(500 * time.Millisecond)
	clients.stopAndCheck(t, "during kill -9 and restart")
	if !blocked(t, p, port, "GET / HTTP/1.1") {
		t.Error("after the restart, HTTP/1.1 is not blocked")
	}
	second.cmd.Process.Signal(syscall.SIGTERM)
	second.cmd.Wait()
	if _, _, err := p.Get(netns.HTTPURL(p.ServerIP4, port)); err != nil {
		t.Errorf("after SIGTERM, the default exit must detach: %v", err)
	}
	if _, err := os.Stat(pins); !os.IsNotExist(err) {
		t.Errorf("pins left behind at %s after a detaching exit", pins)
	}
}

// TestRestartOnMapsOfAnotherLayout restarts grain (--keep-on-exit) with
// another --event-ring-bytes, as after an upgrade that changed a map: the
// pinned maps do not fit the new grain. The old program keeps enforcing
// until the new grain has applied its rules, then the new one takes over
// the link and the pins. A client retries HTTP/1.1 requests throughout and
// none may get through.
func TestRestartOnMapsOfAnotherLayout(t *testing.T) {
	p, port, pins, args := restartSetup(t)
	first := startGrain(t, p.ServerNS, append(args, "--keep-on-exit", "--event-ring-bytes", "65536")...)
	first.cmd.Process.Signal(syscall.SIGTERM)
	if err := first.cmd.Wait(); err != nil {
		t.Fatalf("grain --keep-on-exit exited with %v; stderr:\n%s", err, first.log())
	}

	clients := retryHTTP11(t, p, port)
	time.Sleep(300 * time.Millisecond)
	second := startGrain(t, p.ServerNS, append(args, "--keep-on-exit", "--event-ring-bytes", "131072")...)
	second.waitLog(t, "adopted", 1)
	if !strings.Contains(second.log(), "does not fit this one's maps") {
		t.Errorf("the new grain did not say the pinned maps do not fit; stderr:\n%s", second.log())
	}
	time.Sleep(500 * time.Millisecond)
	clients.stopAndCheck(t, "during the restart")
	ring, err := ebpf.LoadPinnedMap(filepath.Join(pins, "events"), nil)
	if err != nil {
		t.Fatalf("the pinned event ring: %v", err)
	}
	if got := ring.MaxEntries(); got != 131072 {
		t.Errorf("the pinned event ring holds %d bytes, want the new grain's 131072", got)
	}
	ring.Close()
	if !blocked(t, p, port, "GET / HTTP/1.1") {
		t.Error("after the restart, HTTP/1.1 is not blocked")
	}
	// A grain that detaches on exit removes the state it took over.
	second.cmd.Process.Signal(syscall.SIGTERM)
	second.cmd.Wait()
	third := startGrain(t, p.ServerNS, append(args, "--event-ring-bytes", "131072")...)
	if !strings.Contains(third.log(), "adopted") {
		t.Errorf("a grain of the same layout did not adopt at once; stderr:\n%s", third.log())
	}
	third.cmd.Process.Signal(syscall.SIGTERM)
	third.cmd.Wait()
	if _, _, err := p.Get(netns.HTTPURL(p.ServerIP4, port)); err != nil {
		t.Errorf("after a detaching exit, HTTP/1.1 is still blocked: %v", err)
	}
	if _, err := os.Stat(pins); !os.IsNotExist(err) {
		t.Errorf("pins left behind at %s after a detaching exit", pins)
	}
}

// TestSecondGrainLeavesTheFirstAlone starts a second grain beside a running
// one: on the same pin directory it is refused (two grains would write each
// other's rule generations), and with its own pin directory but the same
// status socket it runs without taking the socket. The first keeps
// enforcing and answering throughout.
func TestSecondGrainLeavesTheFirstAlone(t *testing.T) {
	p := netns.NewPair(t)
	port := p.HTTPServer(t)
	pins := netns.PinDir(t)
	socket := filepath.Join(t.TempDir(), "grain.sock")
	first := startGrain(t, p.ServerNS, "run", "--policies", "../../examples/block-http", "--interface", p.ServerIf,
		"--pin-path", pins, "--status-socket", socket)
	bin := buildGrainPath(t)

	// Bounded: a second grain that is not refused keeps running.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", p.ServerNS, bin, "run", "--policies", "../../examples/block-http",
		"--interface", p.ServerIf, "--pin-path", pins, "--status-socket", filepath.Join(t.TempDir(), "other.sock")).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "another grain is running with the pin directory "+pins) {
		t.Errorf("a second grain on the same pin directory: %v; want it refused, saying why; output:\n%s", err, out)
	}

	second := startGrain(t, p.ServerNS, "run", "--policies", "../../examples/block-http", "--interface", "lo",
		"--pin-path", netns.PinDir(t), "--status-socket", socket)
	if !strings.Contains(second.log(), "another grain answers on it") {
		t.Errorf("the second grain did not say the status socket is taken; stderr:\n%s", second.log())
	}
	status, err := exec.Command(bin, "status", "--status-socket", socket).CombinedOutput()
	if err != nil || !strings.Contains(string(status), `"`+p.ServerIf+`"`) || strings.Contains(string(status), `"lo"`) {
		t.Errorf("grain status on the first grain's socket: %v\n%s\nwant the first grain's status (%s, not lo)", err, status, p.ServerIf)
	}
	if !blocked(t, p, port, "GET / HTTP/1.1") {
		t.Error("with a second grain started, the first no longer blocks HTTP/1.1")
	}
	second.stop(t)
	first.stop(t)
}

// TestEachKindOfChangeReloadsOnce: an editor's save, an mv into the tree, a
// ConfigMap-style ..data swap and 50 files written at once each lead to
// exactly one successful reload of the running grain.
func TestEachKindOfChangeReloadsOnce(t *testing.T) {
	vmtest.HostOnly(t, "the watcher and the reloader are userspace")
	p := netns.NewPair(t)
	dir := t.TempDir()
	policy := func(name, pattern string) string {
		return fmt.Sprintf("%s: {xdp: interfaces: [\"eth0\"], match: {protocol: \"tcp\", payload: %q}, then: \"drop\"}\n", name, pattern)
	}
	// ConfigMap layout: policy.cue -> ..data/policy.cue, ..data -> ..v1.
	mustWrite := func(path, src string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite(filepath.Join(dir, "..v1", "policy.cue"), policy("configmap", "v1"))
	if err := os.Symlink("..v1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("..data/policy.cue", filepath.Join(dir, "policy.cue")); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "grain.sock")
	d := startGrain(t, p.ServerNS, "run", "--policies", dir, "--interface", p.ServerIf,
		"--pin-path", netns.PinDir(t), "--status-socket", sock, "--debounce", "100ms")
	applied := 1
	expectOneReload := func(kind string) {
		t.Helper()
		applied++
		d.waitLog(t, "policies applied", applied)
		time.Sleep(600 * time.Millisecond)
		if n := strings.Count(d.log(), "policies applied"); n != applied {
			t.Errorf("%s: %d reloads, want exactly one", kind, n-applied+1)
			applied = n
		}
		if strings.Contains(d.log(), "reload failed") {
			t.Fatalf("%s: a reload failed; stderr:\n%s", kind, d.log())
		}
	}

	writePolicy(t, filepath.Join(dir, "edited.cue"), policy("edited", "e1"))
	expectOneReload("editor save (write a temporary file, rename it)")

	outside := filepath.Join(t.TempDir(), "moved.cue")
	mustWrite(outside, policy("moved", "m1"))
	if err := os.Rename(outside, filepath.Join(dir, "moved.cue")); err != nil {
		t.Fatal(err)
	}
	expectOneReload("mv into the tree")

	mustWrite(filepath.Join(dir, "..v2", "policy.cue"), policy("configmap", "v2"))
	if err := os.Symlink("..v2", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(filepath.Join(dir, "..v1"))
	expectOneReload("ConfigMap ..data swap")

	for i := 0; i < 50; i++ {
		mustWrite(filepath.Join(dir, "batch", fmt.Sprintf("p%02d.cue", i)), policy(fmt.Sprintf("batch%02d", i), fmt.Sprintf("b%02d", i)))
	}
	expectOneReload("50 files written at once")

	out, err := exec.Command(buildGrainPath(t), "status", "--status-socket", sock).Output()
	if err != nil {
		t.Fatalf("grain status: %v", err)
	}
	var st struct{ Rules []string }
	if err := json.Unmarshal(out, &st); err != nil || len(st.Rules) != 53 {
		t.Errorf("status after all changes: %d rules, want 53 (configmap, edited, moved, 50 batch): %s %v", len(st.Rules), out, err)
	}
}
