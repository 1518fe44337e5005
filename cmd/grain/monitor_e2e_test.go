package main

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/internal/netns"
)

const monitorPolicy = `block_http: {
	xdp: interfaces: ["eth0"]
	mode: %q
	match: {protocol: "tcp", payload: "HTTP/1.1"}
	then: "drop"
	emit: {event: "http_blocked", fields: ["saddr", "sport"], dedup: "0s"}
}
`

// monitorStatus is what the monitor tests read from `grain status`.
type monitorStatus struct {
	Monitored []string `json:"monitored"`
	Verdicts  []struct {
		Interface string `json:"interface"`
		Verdict   string `json:"verdict"`
		Packets   uint64 `json:"packets"`
	} `json:"verdicts"`
}

func readMonitorStatus(t *testing.T, sock string) monitorStatus {
	t.Helper()
	out, err := exec.Command(buildGrainPath(t), "status", "--status-socket", sock).Output()
	if err != nil {
		t.Fatalf("grain status: %v", err)
	}
	var st monitorStatus
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("grain status output %q: %v", out, err)
	}
	return st
}

func (s monitorStatus) packets(iface, verdict string) uint64 {
	for _, v := range s.Verdicts {
		if v.Interface == iface && v.Verdict == verdict {
			return v.Packets
		}
	}
	return 0
}

// TestEndToEndMonitorMode: a drop policy in monitor mode lets real
// HTTP/1.1 requests through while its events, counters and `grain status`
// say would_drop; an edit to mode: "enforce" is an ordinary reload after
// which the same request is dropped.
func TestEndToEndMonitorMode(t *testing.T) {
	p := netns.NewPair(t)
	port := p.HTTPServer(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "policy.cue")
	writePolicy(t, file, strings.Replace(monitorPolicy, "%q", `"monitor"`, 1))
	sock := filepath.Join(t.TempDir(), "grain.sock")
	d := startGrain(t, p.ServerNS, "run", "--policies", dir, "--interface", p.ServerIf,
		"--pin-path", netns.PinDir(t), "--status-socket", sock, "--debounce", "100ms")

	line, sport, err := rawRequest(t, p, p.ServerIP4, port, "GET / HTTP/1.1")
	if err != nil || !strings.Contains(line, "200") {
		t.Fatalf("monitor mode: HTTP/1.1 request answered %q, %v; want a 200 response", line, err)
	}
	d.waitEvent(t, map[string]any{"policy": "block_http", "event": "http_blocked", "verdict": "would_drop",
		"saddr": p.ClientIP4.String(), "sport": float64(sport)})
	st := readMonitorStatus(t, sock)
	if !slices.Equal(st.Monitored, []string{"block_http"}) {
		t.Errorf("status: monitored %v, want [block_http]", st.Monitored)
	}
	if st.packets(p.ServerIf, "would_drop") == 0 || st.packets(p.ServerIf, "drop") != 0 {
		t.Errorf("status verdicts %+v: want would_drop packets and no drop on %s", st.Verdicts, p.ServerIf)
	}

	writePolicy(t, file, strings.Replace(monitorPolicy, "%q", `"enforce"`, 1))
	d.waitLog(t, "policies applied", 2)
	if line, sport, err := rawRequest(t, p, p.ServerIP4, port, "GET / HTTP/1.1"); err == nil {
		t.Errorf("enforce mode: HTTP/1.1 request answered %q, want it dropped", line)
	} else {
		d.waitEvent(t, map[string]any{"policy": "block_http", "verdict": "drop", "sport": float64(sport)})
	}
	if line, _, err := rawRequest(t, p, p.ServerIP4, port, "GET / HTTP/1.0"); err != nil || !strings.Contains(line, "200") {
		t.Errorf("enforce mode: HTTP/1.0 request answered %q, %v; want a 200 response", line, err)
	}
	st = readMonitorStatus(t, sock)
	if len(st.Monitored) != 0 || st.packets(p.ServerIf, "drop") == 0 {
		t.Errorf("status after the edit to enforce: monitored %v, verdicts %+v; want none monitored and drops counted", st.Monitored, st.Verdicts)
	}
}

// TestEndToEndMonitorFlag: `grain run --monitor` puts every policy, here
// examples/block-http, in monitor mode.
func TestEndToEndMonitorFlag(t *testing.T) {
	p := netns.NewPair(t)
	port := p.HTTPServer(t)
	d := startGrain(t, p.ServerNS, "run", "--monitor", "--policies", "../../examples/block-http", "--interface", p.ServerIf,
		"--pin-path", netns.PinDir(t), "--status-socket", filepath.Join(t.TempDir(), "grain.sock"))
	line, sport, err := rawRequest(t, p, p.ServerIP4, port, "GET / HTTP/1.1")
	if err != nil || !strings.Contains(line, "200") {
		t.Fatalf("--monitor: HTTP/1.1 request answered %q, %v; want a 200 response", line, err)
	}
	d.waitEvent(t, map[string]any{"policy": "block_http", "verdict": "would_drop", "sport": float64(sport)})
}
