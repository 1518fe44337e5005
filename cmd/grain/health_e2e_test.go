package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/vmtest"
	"github.com/grain-ebpf/grain/policies"
)

// httpGetIn fetches path from grain's metrics address inside namespace ns:
// the status code and body, or an error when nothing answers.
func httpGetIn(ns, addr, path string) (int, string, error) {
	c := &http.Client{Transport: &http.Transport{DialContext: netns.DialContextIn(ns)}, Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b)), err
}

// activeHash is the policy hash grain's Prometheus endpoint reports, and
// the last-applied time, in seconds.
func activeHash(t *testing.T, ns, addr string) (hash string, applied float64) {
	t.Helper()
	body := scrapeBody(t, ns, addr)
	if m := regexp.MustCompile(`(?m)^grain_policy_active_hash[a-z_]*\{[^}]*grain_policy_hash="([^"]+)"[^}]*\} 1$`).FindStringSubmatch(body); m != nil {
		hash = m[1]
	}
	if m := regexp.MustCompile(`(?m)^grain_policy_last_applied_seconds(?:\{[^}]*\})? (\S+)$`).FindStringSubmatch(body); m != nil {
		applied, _ = strconv.ParseFloat(m[1], 64)
	}
	return hash, applied
}

// TestReadinessAndPolicyHash: /healthz answers while grain serves;
// /readyz says 503, with the reason, until grain enforces the tree on every
// interface it names (here a pattern no link matches yet), 200 once a
// matching link appears and the program is attached to it, and 503 again
// when that link goes. The policy hash, in the metrics and in `grain
// status`, is the hash of the tree on disk and follows an edit.
func TestReadinessAndPolicyHash(t *testing.T) {
	vmtest.HostOnly(t, "health and metrics are served in userspace; the guests run the attach tests")
	p := netns.NewPair(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "udp.cue")
	writePolicy(t, file, udpDropPolicy)
	sock := filepath.Join(t.TempDir(), "grain.sock")
	const metricsAddr = "127.0.0.1:9471"
	const late = "glate0"
	d, enforcing := launchGrain(t, nil, p.ServerNS, "run", "--policies", dir, "--interface", "glate*",
		"--pin-path", netns.PinDir(t), "--status-socket", sock, "--metrics-addr", metricsAddr, "--stdout=false")

	// From the moment it answers until it logs that it enforces, grain
	// is never ready: no link matches glate* yet.
	var answers []string
	deadline := time.After(90 * time.Second) // a hang guard, as in startGrainEnv
	for started := false; !started; {
		select {
		case <-enforcing:
			started = true
		case <-deadline:
			t.Fatalf("grain did not start enforcing; stderr:\n%s", d.log())
		default:
		}
		if code, body, err := httpGetIn(p.ServerNS, metricsAddr, "/readyz"); err == nil {
			if code != http.StatusServiceUnavailable {
				t.Fatalf("/readyz before any link matches: %d %q, want 503", code, body)
			}
			if len(answers) == 0 || answers[len(answers)-1] != body {
				answers = append(answers, body)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("/readyz while grain started: %q", answers)
	code, body, err := httpGetIn(p.ServerNS, metricsAddr, "/healthz")
	if err != nil || code != http.StatusOK {
		t.Fatalf("/healthz: %d %q %v, want 200", code, body, err)
	}
	code, body, err = httpGetIn(p.ServerNS, metricsAddr, "/readyz")
	if err != nil || code != http.StatusServiceUnavailable || !strings.Contains(body, `"glate*"`) {
		t.Fatalf("/readyz with no link matching glate*: %d %q %v, want 503 naming the pattern", code, body, err)
	}

	ready := func() (int, string) {
		code, body, err := httpGetIn(p.ServerNS, metricsAddr, "/readyz")
		if err != nil {
			t.Fatalf("/readyz: %v; stderr:\n%s", err, d.log())
		}
		return code, body
	}
	mustRun(t, "ip", "-n", p.ServerNS, "link", "add", late, "type", "veth", "peer", "name", "xlate0")
	mustRun(t, "ip", "-n", p.ServerNS, "link", "set", late, "up")
	if !waitFor(func() bool { code, _ := ready(); return code == http.StatusOK }) {
		code, body := ready()
		t.Fatalf("/readyz after %s appeared: %d %q, want 200; stderr:\n%s", late, code, body, d.log())
	}
	if !xdpOn(t, p.ServerNS, late) {
		t.Fatalf("/readyz says ready, but %s has no packet program", late)
	}
	mustRun(t, "ip", "-n", p.ServerNS, "link", "del", late)
	if !waitFor(func() bool { code, _ := ready(); return code == http.StatusServiceUnavailable }) {
		code, body := ready()
		t.Fatalf("/readyz after %s went: %d %q, want 503", late, code, body)
	}

	// The hash: the tree's on disk, in the metric and in grain status.
	want, err := policies.TreeHash(dir)
	if err != nil {
		t.Fatal(err)
	}
	hash, applied := activeHash(t, p.ServerNS, metricsAddr)
	if st := grainStatus(t, sock); hash != want || st.PolicyHash != want || applied == 0 {
		t.Fatalf("policy hash: metric %q (applied at %v), grain status %q; the tree's is %q\n%s", hash, applied, st.PolicyHash, want, scrapeBody(t, p.ServerNS, metricsAddr))
	}
	writePolicy(t, file, strings.Replace(udpDropPolicy, "dport: 9999", "dport: 9998", 1))
	edited, err := policies.TreeHash(dir)
	if err != nil {
		t.Fatal(err)
	}
	if edited == want {
		t.Fatal("the edit did not change the tree's hash")
	}
	if !waitFor(func() bool { h, _ := activeHash(t, p.ServerNS, metricsAddr); return h == edited }) {
		h, _ := activeHash(t, p.ServerNS, metricsAddr)
		t.Fatalf("metric hash after the edit: %q, want %q; stderr:\n%s", h, edited, d.log())
	}
	if st := grainStatus(t, sock); st.PolicyHash != edited || st.LastSuccess.IsZero() {
		t.Errorf("grain status after the edit: hash %q, applied %v; want %q", st.PolicyHash, st.LastSuccess, edited)
	}
	if _, after := activeHash(t, p.ServerNS, metricsAddr); after < applied {
		t.Errorf("last applied went back from %v to %v", applied, after)
	}
	d.stop(t)
}

// TestStopKeepsEnforcementWhileTelemetryDrains: grain stops in its written
// order. While the exit waits for stdout (a reader that does not read),
// the rules are still enforced on real traffic and grain status answers;
// then the status socket goes, and last the rules: detached by default,
// left attached and pinned with --keep-on-exit.
func TestStopKeepsEnforcementWhileTelemetryDrains(t *testing.T) {
	vmtest.HostOnly(t, "the stop order is userspace; the guests run the attach tests")
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprintf("keep-on-exit=%v", keep), func(t *testing.T) {
			p, args, sock, _ := stdoutSetup(t)
			pins := args[slices.Index(args, "--pin-path")+1]
			args = append(args, "--exit-flush", "5m")
			if keep {
				args = append(args, "--keep-on-exit")
			}
			received := udpServer(t, p)
			d, sender, r := startGrainStalled(t, p, args...)
			defer r.Close()
			sender.send(t, 200)
			d.cmd.Process.Signal(syscall.SIGTERM)
			d.waitLog(t, "step=telemetry", 1)

			// The drain waits (for minutes) on the pipe: grain still
			// enforces, and says so.
			if st := grainStatus(t, sock); !slices.Contains(st.Rules, "udp_9999") {
				t.Errorf("grain status while draining: rules %v, want udp_9999", st.Rules)
			}
			if !xdpOn(t, p.ServerNS, p.ServerIf) {
				t.Errorf("no packet program on %s while telemetry drains", p.ServerIf)
			}
			before := received.Load()
			sender.send(t, 20)
			// A datagram no rule drops, after them: by the time it
			// arrives, they have been judged.
			p.UDPArrivals(t, 9997, 1, func() uint64 { return 0 })
			if n := received.Load() - before; n != 0 {
				t.Errorf("%d datagrams to port 9999 arrived while telemetry drained, want all dropped", n)
			}
			if strings.Contains(d.log(), "step=enforcement") {
				t.Fatalf("grain let the rules go before telemetry drained; stderr:\n%s", d.log())
			}

			go io.Copy(io.Discard, r) // the reader reads again: the drain ends
			done := make(chan error, 1)
			go func() { done <- d.cmd.Wait() }()
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("grain exited with %v; stderr:\n%s", err, d.log())
				}
			case <-time.After(60 * time.Second): // a hang guard
				t.Fatalf("grain did not exit once stdout was read; stderr:\n%s", d.log())
			}
			var steps []string
			for _, m := range regexp.MustCompile(`msg=stopping step="?([a-z ]+?)"?\n`).FindAllStringSubmatch(d.log(), -1) {
				steps = append(steps, m[1])
			}
			want := []string{"reloads", "event readers", "telemetry", "metrics server", "status socket", "enforcement"}
			if !slices.Equal(steps, want) {
				t.Errorf("stop steps %q, want %q; stderr:\n%s", steps, want, d.log())
			}
			if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("status socket %s left behind (stat: %v)", sock, err)
			}
			links, _ := os.ReadDir(filepath.Join(pins, "links"))
			if attached := xdpOn(t, p.ServerNS, p.ServerIf); attached != keep || (len(links) == 1) != keep {
				t.Errorf("after the exit: packet program attached %v, %d link pins; want attached and pinned: %v", attached, len(links), keep)
			}
		})
	}
}
