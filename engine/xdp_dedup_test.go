package engine

import (
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/grain-ebpf/grain/internal/pktbuild"
	"github.com/grain-ebpf/grain/internal/testcpu"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// eventLines streams the engine's events while send runs and returns the
// JSON objects of those that send caused (want of them, waiting up to 5 s).
func eventLines(t *testing.T, e *Engine, want int, send func()) []map[string]any {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out vmtest.LockedBuffer
	done := make(chan error, 1)
	go func() { done <- e.StreamEvents(ctx, &out) }()
	// Let the reader drain the events of earlier tests: all of them are of
	// rule sets replaced since, whose names it drops once it has read every
	// event they can still send.
	for deadline := time.Now().Add(10 * time.Second); e.gen.Retired() > 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the reader still expects events of %d replaced rule sets after 10 s", e.gen.Retired())
		}
	}
	before := len(out.String())
	send()
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(out.String()[before:], "\n") < want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	// Anything beyond want would arrive within the reader's poll interval.
	time.Sleep(100 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var events []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out.String()[before:]), "\n") {
		if line == "" {
			continue
		}
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("not JSON: %v: %s", err, line)
		}
		events = append(events, ev)
	}
	return events
}

func counterOf(t *testing.T, e *Engine, policy string) RuleCounter {
	t.Helper()
	counters, err := e.Counters()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range counters {
		if c.Policy == policy {
			return c
		}
	}
	t.Fatalf("no counter for %s in %+v", policy, counters)
	return RuleCounter{}
}

// An event equal in its fields and interface to the last one the rule
// sent within the window is counted, not sent; another event is sent and
// ends the run; dedup "0s" sends every event.
func TestXDPEventDeduplication(t *testing.T) {
	// Deduplication keeps its state per CPU.
	testcpu.Pin(t, 0)
	from := func(sport, dport uint16) []byte {
		return pktbuild.TCP4("10.0.0.2", "10.0.0.1", sport, dport, pktbuild.PSH|pktbuild.ACK, request).Bytes()
	}
	e := applyPolicy(t, `dedup_window: {
	xdp: interfaces: ["lo"]
	match: {protocol: "tcp", payload: "HTTP/1.1"}
	then: "drop"
	emit: {event: "deduplicated", fields: ["saddr", "sport"], dedup: "1m"}
}`)
	events := eventLines(t, e, 3, func() {
		for range 5 {
			runXDP(t, e, from(40000, 80)) // one event, four repeats
		}
		runXDP(t, e, from(40001, 80)) // another source port: sent
		runXDP(t, e, from(40000, 81)) // dport is not in the event: equal to the first, but the last sent was 40001's
		runXDP(t, e, from(40000, 82)) // a repeat of the one before
	})
	if len(events) != 3 {
		t.Fatalf("got %d events, want 3: %v", len(events), events)
	}
	for i, sport := range []float64{40000, 40001, 40000} {
		if events[i]["sport"] != sport || events[i]["repeated"] != nil {
			t.Errorf("event %d: %v, want sport %v and no repeated", i, events[i], sport)
		}
	}
	c := counterOf(t, e, "dedup_window")
	if c.Packets != 8 || c.Events != 3 || c.EventsDeduplicated != 5 || c.EventsLost != 0 {
		t.Errorf("counters %+v, want 8 packets, 3 events, 5 deduplicated, none lost", c)
	}

	// After the window, the next equal event is sent and says how many
	// were counted since the last one.
	e = applyPolicy(t, `dedup_expiry: {
	xdp: interfaces: ["lo"]
	match: {protocol: "tcp", payload: "HTTP/1.1"}
	then: "drop"
	emit: {event: "deduplicated", fields: ["saddr", "sport"], dedup: "50ms"}
}`)
	events = eventLines(t, e, 2, func() {
		for range 3 {
			runXDP(t, e, from(40000, 80))
		}
		time.Sleep(300 * time.Millisecond) // the window and a few clock ticks
		runXDP(t, e, from(40000, 80))
	})
	if len(events) != 2 || events[0]["repeated"] != nil || events[1]["repeated"] != 2.0 {
		t.Fatalf("got %v, want two events, the second with repeated 2", events)
	}

	// "0s": an event per packet.
	e = applyPolicy(t, `dedup_off: {
	xdp: interfaces: ["lo"]
	match: {protocol: "tcp", payload: "HTTP/1.1"}
	then: "drop"
	emit: {event: "every", fields: ["saddr", "sport"], dedup: "0s"}
}`)
	events = eventLines(t, e, 4, func() {
		for range 4 {
			runXDP(t, e, from(40000, 80))
		}
	})
	if c := counterOf(t, e, "dedup_off"); len(events) != 4 || c.Events != 4 || c.EventsDeduplicated != 0 {
		t.Fatalf("dedup 0s: %d events, counters %+v; want 4 events, none deduplicated", len(events), c)
	}
}

// Deduplication compares the address family too: an IPv6 packet with the
// ports of an IPv4 one is another event, even when the event carries no
// address.
func TestXDPEventDeduplicationComparesTheFamily(t *testing.T) {
	// Deduplication keeps its state per CPU.
	testcpu.Pin(t, 0)
	e := applyPolicy(t, `dedup_family: {
	xdp: interfaces: ["lo"]
	match: {protocol: "tcp", payload: "HTTP/1.1"}
	then: "drop"
	emit: {event: "family", fields: ["sport"], dedup: "1m"}
}`)
	v4 := pktbuild.TCP4("10.0.0.2", "10.0.0.1", 40000, 80, pktbuild.PSH|pktbuild.ACK, request)
	v6 := v4
	v6.Src, v6.Dst = netip.MustParseAddr("fd00::2"), netip.MustParseAddr("fd00::1")
	events := eventLines(t, e, 2, func() {
		runXDP(t, e, v4.Bytes())
		runXDP(t, e, v6.Bytes())
		runXDP(t, e, v6.Bytes())
	})
	if len(events) != 2 {
		t.Fatalf("got %d events, want 2 (IPv4, IPv6; the second IPv6 a repeat): %v", len(events), events)
	}
	if c := counterOf(t, e, "dedup_family"); c.EventsDeduplicated != 1 {
		t.Errorf("counters %+v, want 1 deduplicated", c)
	}
}

// emit.rate_limit lets at most so many events a second through, across
// CPUs, after deduplication; the others are counted as rate-limited.
func TestXDPEventRateLimit(t *testing.T) {
	e := applyPolicy(t, `limited: {
	xdp: interfaces: ["lo"]
	match: {protocol: "tcp", payload: "HTTP/1.1"}
	then: "drop"
	emit: {event: "limited", fields: ["sport"], dedup: "0s", rate_limit: 3}
}`)
	events := eventLines(t, e, 3, func() {
		// The window is a second of the coarse monotonic clock, which the
		// kernel's helper and clock_gettime read alike: the ten packets
		// are sent early in one.
		var ts unix.Timespec
		if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
			t.Fatal(err)
		}
		if ts.Nsec > 500_000_000 {
			time.Sleep(time.Duration(1_050_000_000 - ts.Nsec))
		}
		for i := range 10 {
			runXDP(t, e, pktbuild.TCP4("10.0.0.2", "10.0.0.1", uint16(40000+i), 80, pktbuild.PSH|pktbuild.ACK, request).Bytes())
		}
	})
	c := counterOf(t, e, "limited")
	if len(events) != 3 || c.Events != 3 || c.EventsRateLimited != 7 || c.Packets != 10 {
		t.Fatalf("%d events, counters %+v; want 3 events, 7 rate-limited, 10 packets", len(events), c)
	}
	for i, ev := range events {
		if ev["sport"] != float64(40000+i) {
			t.Errorf("event %d: %v, want the packet from port %d (the first three are let through)", i, ev, 40000+i)
		}
	}
}
