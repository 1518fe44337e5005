package main

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/testcpu"
)

// A flood of datagrams from one socket, through grain with the default
// emit.dedup ("1s"): every datagram is dropped and counted, one event is
// printed for the flood, and the first equal event after the window says
// how many were deduplicated. Real traffic over a veth pair.
func TestEndToEndDeduplication(t *testing.T) {
	p := netns.NewPair(t)
	dir := t.TempDir()
	policy := `udp_flood: {
	xdp: interfaces: []
	match: {protocol: "udp", dport: 9999}
	then: "drop"
	emit: {event: "udp_dropped", fields: ["saddr", "sport", "dport"]}
}
`
	if err := os.WriteFile(filepath.Join(dir, "policy.cue"), []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	metricsAddr := p.ServerIP4.String() + ":9464"
	d := startGrain(t, p.ServerNS, "run", "--policies", dir, "--interface", p.ServerIf,
		"--pin-path", netns.PinDir(t), "--status-socket", filepath.Join(t.TempDir(), "grain.sock"),
		"--metrics-addr", metricsAddr)
	received := udpServer(t, p)
	s := newUDPSender(t, p)

	// Deduplication keeps its state per CPU, and veth receives a frame on
	// the CPU that sent it: the datagrams are sent from one CPU.
	testcpu.Pin(t, 0)

	const flood = 500
	s.send(t, flood)
	time.Sleep(1500 * time.Millisecond) // past the window
	s.send(t, 1)

	want := map[string]any{"policy": "udp_flood", "event": "udp_dropped", "sport": float64(s.sport), "repeated": float64(flood - 1)}
	d.waitEvent(t, want)
	events := `{grain_policy="udp_flood",grain_verdict="drop"}`
	var m map[string]float64
	if !waitFor(func() bool {
		m = scrape(t, p.ServerNS, metricsAddr)
		return m[`grain_events_emitted_total`+events]+m[`grain_events_deduplicated_total`+events] == flood+1
	}) {
		t.Errorf("metrics: %v; want emitted + deduplicated = %d", m, flood+1)
	}
	if m[`grain_events_emitted_total`+events] != 2 || m[`grain_events_deduplicated_total`+events] != flood-1 {
		t.Errorf("metrics: %v; want 2 events emitted, %d deduplicated", m, flood-1)
	}
	d.mu.Lock()
	printed := len(d.events)
	d.mu.Unlock()
	if printed != 2 {
		t.Errorf("grain printed %d events for %d datagrams from one socket, want 2", printed, flood+1)
	}
	if n := received.Load(); n != 0 {
		t.Errorf("%d datagrams reached the server through grain", n)
	}
}
