package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// buildGrain builds the grain binary once per test run, or returns the one
// $GRAIN_BIN names (the VM guests of scripts/vm-test.sh have no Go
// toolchain: the runner builds it for the guest).
var buildGrain = sync.OnceValues(func() (string, error) {
	if bin := os.Getenv("GRAIN_BIN"); bin != "" {
		return bin, nil
	}
	dir, err := os.MkdirTemp("", "grain-e2e-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "grain")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", &buildError{err: err, out: string(out)}
	}
	return bin, nil
})

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + ": " + e.out }

// grainProcess is `grain run` inside a namespace, with its event lines collected.
type grainProcess struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	events []map[string]any
	stdout strings.Builder // what launchGrain collects events from
	stderr strings.Builder
}

func startGrain(t *testing.T, ns string, args ...string) *grainProcess {
	t.Helper()
	return startGrainEnv(t, nil, ns, args...)
}

// startGrainEnv starts grain with extra environment variables and waits
// until it enforces.
func startGrainEnv(t *testing.T, env []string, ns string, args ...string) *grainProcess {
	t.Helper()
	d, attached := launchGrain(t, env, ns, args...)
	select {
	case <-attached:
	// A hang guard, not a speed figure: in an emulated guest that shares the
	// host with another, a start (the policy worker evaluating the tree,
	// programs loaded and verified) has taken over 20 s.
	case <-time.After(90 * time.Second):
		t.Fatalf("grain did not start enforcing within 90 s; stderr:\n%s", d.log())
	}
	return d
}

// launchGrain starts grain, collecting its stderr and event lines;
// attached is closed when grain logs that it enforces.
func launchGrain(t *testing.T, env []string, ns string, args ...string) (d *grainProcess, attached <-chan struct{}) {
	t.Helper()
	bin, err := buildGrain()
	if err != nil {
		t.Fatalf("build grain: %v", err)
	}
	d = &grainProcess{cmd: exec.Command("ip", append([]string{"netns", "exec", ns, bin}, args...)...)}
	d.cmd.Env = append(os.Environ(), env...)
	// Writers, not pipes: Wait closes a pipe as grain exits, losing what is
	// still unread, often the error a failing test should show.
	enforcing := make(chan struct{})
	closed := false
	d.cmd.Stderr = lockedWriter{d: d, seen: func(all string) {
		if !closed && strings.Contains(all, "enforcing") {
			closed = true
			close(enforcing)
		}
	}}
	parsed := 0 // bytes of d.stdout in whole lines already parsed
	d.cmd.Stdout = lockedWriter{d: d, out: &d.stdout, seen: func(all string) {
		for {
			n := strings.IndexByte(all[parsed:], '\n')
			if n < 0 {
				return
			}
			line := all[parsed : parsed+n]
			parsed += n + 1
			var ev map[string]any
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				t.Errorf("grain printed a line that is not JSON: %q", line)
				continue
			}
			d.events = append(d.events, ev)
		}
	}}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.cmd.Process.Kill(); d.cmd.Wait() })
	return d, enforcing
}

// stop sends SIGTERM and waits for a clean exit.
func (d *grainProcess) stop(t *testing.T) {
	t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("grain exited with %v after SIGTERM; stderr:\n%s", err, d.log())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("grain did not exit within 10 s of SIGTERM")
	}
}

func (d *grainProcess) log() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stderr.String()
}

// waitEvent waits for an event whose fields include want.
func (d *grainProcess) waitEvent(t *testing.T, want map[string]any) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if d.hasEvent(want) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	t.Errorf("no event with %v; got %v", want, d.events)
}

// rawRequest sends one request line over a fresh TCP connection from the
// client namespace and returns the response's first line, or an error when
// none arrives within a second, with the client's source port.
func rawRequest(t *testing.T, p *netns.Pair, server netip.Addr, port int, requestLine string) (string, int, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, err := netns.DialContextIn(p.ClientNS)(ctx, "tcp", netip.AddrPortFrom(server, uint16(port)).String())
	if err != nil {
		t.Fatalf("connect to %s:%d: %v", server, port, err)
	}
	defer conn.Close()
	sport := conn.LocalAddr().(*net.TCPAddr).Port
	conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.WriteString(conn, requestLine+"\r\nHost: grain\r\nConnection: close\r\n\r\n"); err != nil {
		return "", sport, err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	return strings.TrimSpace(line), sport, err
}

// TestEndToEndBlockHTTP runs `grain run` with examples/block-http on the
// server end of a veth pair and sends real requests from the client
// namespace, over IPv4 and IPv6.
func TestEndToEndBlockHTTP(t *testing.T) {
	endToEndBlockHTTP(t, netns.NewPair(t))
}

// TestEndToEndNativeXDP is the same on a real driver with native XDP: two
// virtio-net NICs of the VM guests, wired to each other, in place of the
// veth pair. grain must attach in native (driver) mode.
func TestEndToEndNativeXDP(t *testing.T) {
	nics, err := vmtest.SpareNICs()
	if err != nil {
		vmtest.Missing(t, vmtest.SpareNICFeature, err)
	}
	d := endToEndBlockHTTP(t, netns.NewPairOn(t, nics[0], nics[1]))
	native := regexp.MustCompile(`attached program=grain_xdp interface=` + regexp.QuoteMeta(nics[0]) + ` ifindex=\d+ hook=xdp\n`)
	if !native.MatchString(d.log()) {
		t.Errorf("grain did not attach to %s in native mode (hook=xdp); stderr:\n%s", nics[0], d.log())
	}
}

// endToEndBlockHTTP runs `grain run` with examples/block-http on the server
// end of p, checks real requests over IPv4 and IPv6 and the events, stops
// grain and checks the requests pass again. It returns the stopped grain.
func endToEndBlockHTTP(t *testing.T, p *netns.Pair) *grainProcess {
	t.Helper()
	port := p.HTTPServer(t)
	for _, addr := range []netip.Addr{p.ServerIP4, p.ServerIP6} {
		if _, _, err := p.Get(netns.HTTPURL(addr, port)); err != nil {
			t.Fatalf("before grain, GET %s failed: %v", addr, err)
		}
	}

	d := startGrain(t, p.ServerNS, "run", "--policies", "../../examples/block-http", "--interface", p.ServerIf,
		"--pin-path", netns.PinDir(t), "--status-socket", filepath.Join(t.TempDir(), "grain.sock"))

	for _, c := range []struct {
		server, client netip.Addr
	}{{p.ServerIP4, p.ClientIP4}, {p.ServerIP6, p.ClientIP6}} {
		// A real HTTP/1.1 client fails.
		if status, _, err := p.Get(netns.HTTPURL(c.server, port)); err == nil {
			t.Errorf("GET http://%s with HTTP/1.1 got status %d through grain, want it dropped", c.server, status)
		}
		// The same request line over a connection whose port we know.
		if line, sport, err := rawRequest(t, p, c.server, port, "GET / HTTP/1.1"); err == nil {
			t.Errorf("HTTP/1.1 request to %s answered %q, want it dropped", c.server, line)
		} else {
			d.waitEvent(t, map[string]any{
				"policy": "block_http", "event": "http_blocked", "verdict": "drop", "interface": p.ServerIf,
				"saddr": c.client.String(), "daddr": c.server.String(), "sport": float64(sport), "dport": float64(port),
			})
		}
		// A request without the pattern passes.
		line, _, err := rawRequest(t, p, c.server, port, "GET / HTTP/1.0")
		if err != nil || !strings.HasPrefix(line, "HTTP/1.") || !strings.Contains(line, "200") {
			t.Errorf("HTTP/1.0 request to %s: %q, %v; want a 200 response", c.server, line, err)
		}
	}

	// SIGTERM detaches: the same HTTP/1.1 request succeeds again.
	d.stop(t)
	if !strings.Contains(d.log(), "detached") {
		t.Errorf("grain did not log detaching; stderr:\n%s", d.log())
	}
	for _, addr := range []netip.Addr{p.ServerIP4, p.ServerIP6} {
		if _, body, err := p.Get(netns.HTTPURL(addr, port)); err != nil || body != "hello\n" {
			t.Errorf("after grain exited, GET %s: %q, %v", addr, body, err)
		}
	}
	return d
}

// Errors a user meets first: a missing interface, not being root.
func TestRunErrors(t *testing.T) {
	vmtest.HostOnly(t, "the errors come from userspace checks before anything loads")
	vmtest.RequireRoot(t)
	bin, err := buildGrain()
	if err != nil {
		t.Fatal(err)
	}
	pins := netns.PinDir(t)
	out, err := exec.Command(bin, "run", "--policies", "../../examples/block-http", "--interface", "nosuchif0", "--pin-path", pins).CombinedOutput()
	if err == nil || !strings.Contains(string(out), `interface "nosuchif0" named by the policies does not exist`) {
		t.Errorf("missing interface: %v: %s", err, out)
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv (util-linux) missing: cannot run grain as an unprivileged user")
	}
	if entries, _ := os.ReadDir(pins); len(entries) != 0 {
		t.Errorf("a failed start left pins behind in %s: %v", pins, entries)
	}
	out, err = exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", bin, "run", "--policies", "../../examples/block-http", "--interface", "lo", "--pin-path", pins).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "grain lacks CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON") {
		t.Errorf("not root: %v: %s", err, out)
	}
}
