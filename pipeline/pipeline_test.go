package pipeline

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A reader never waits: with nobody draining the queue, batches beyond
// its bound are dropped and counted, per event name.
func TestQueueFullDropsAndCounts(t *testing.T) {
	p := New(Options{QueueEvents: 2 * BatchSize})
	pr := p.Producer()
	const n = 5*BatchSize + 10
	for i := range n {
		ev := pr.Next()
		ev.Name = []string{"a", "b"}[i%2]
	}
	pr.Flush()
	st := p.Stats()
	if st.Received != n {
		t.Fatalf("received %d, want %d", st.Received, n)
	}
	// Two batches fit in the queue; the other three and the partial one
	// were dropped.
	if want := uint64(n - 2*BatchSize); st.QueueFull != want {
		t.Errorf("queue full %d, want %d", st.QueueFull, want)
	}
	tot := st.Totals()
	if tot.QueueFull != st.QueueFull || len(st.Events) != 2 {
		t.Errorf("per-event queue_full %+v does not add up to %d", st.Events, st.QueueFull)
	}
	// Draining delivers exactly the queued events.
	sink := &countSink{}
	p.sinks = []Sink{sink}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p.Run(ctx)
	if sink.n != 2*BatchSize || p.Stats().Totals().Passed != 2*BatchSize {
		t.Errorf("sink got %d, want %d", sink.n, 2*BatchSize)
	}
}

type countSink struct{ n int }

func (s *countSink) Name() string     { return "count" }
func (s *countSink) Emit(*Event)      { s.n++ }
func (s *countSink) Flush()           {}
func (s *countSink) Stats() SinkStats { return SinkStats{Exported: uint64(s.n)} }

func TestAppendJSON(t *testing.T) {
	ev := Event{Time: time.Date(2026, 11, 25, 1, 2, 3, 4, time.UTC), Policy: "p", Name: "e"}
	ev.AppendAddr("saddr", netip.MustParseAddr("fd00::1"))
	ev.AppendUint("sport", 443)
	ev.AppendString("path", "a\"b\\c\n\x01\xffé")
	b := ev.AppendJSON(nil)
	if !strings.HasSuffix(string(b), "}\n") {
		t.Fatalf("no newline: %q", b)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%q: %v", b, err)
	}
	want := map[string]any{"time": "2026-11-25T01:02:03.000000004Z", "policy": "p", "event": "e", "saddr": "fd00::1",
		"sport": 443.0, "path": `a"b\c` + "\n\x01" + `\xffé`}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %q, want %q", k, m[k], v)
		}
	}
	if got := strings.Index(string(b), `"saddr"`) < strings.Index(string(b), `"sport"`); !got {
		t.Errorf("fields out of order: %s", b)
	}
}

func TestCgroupOfThisProcess(t *testing.T) {
	c := newCgroupCache(procRoot)
	info, ok := c.lookup(uint64(os.Getpid()))
	want, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Skip("no /proc/self/cgroup")
	}
	if !ok || info.path == "" || !strings.Contains(string(want), info.path) {
		t.Errorf("cgroup of pid %d = %+v, %v; /proc says %q", os.Getpid(), info, ok, want)
	}
	if _, ok := c.lookup(1 << 40); ok {
		t.Error("a pid that does not exist has a cgroup")
	}
}

func TestCgroupContainerID(t *testing.T) {
	id := strings.Repeat("0123456789abcdef", 4)
	root := t.TempDir()
	for pid, content := range map[string]string{
		"10": "0::/system.slice/docker-" + id + ".scope\n",
		"11": "12:pids:/kubepods/besteffort/pod1/" + id + "\n0::/kubepods/besteffort/pod1/" + id + "\n",
		"12": "0::/user.slice/user-0.slice/session-1.scope\n",
	} {
		os.MkdirAll(filepath.Join(root, pid), 0o755)
		os.WriteFile(filepath.Join(root, pid, "cgroup"), []byte(content), 0o644)
	}
	c := newCgroupCache(root)
	for pid, want := range map[uint64]string{10: id, 11: id, 12: ""} {
		info, ok := c.lookup(pid)
		if !ok || info.container != want {
			t.Errorf("pid %d: %+v, want container %q", pid, info, want)
		}
	}
}

// The JSON sink formats each timestamp once and reuses the text while
// events share it: its lines are AppendJSON's, whatever the order of
// times.
func TestJSONSinkTimeStamps(t *testing.T) {
	base := time.Date(2026, 12, 2, 1, 2, 3, 4000000, time.UTC)
	times := []time.Time{base, base, base.Add(time.Nanosecond), base.In(time.FixedZone("x", 3600)), base.Add(4 * time.Millisecond), base}
	var out strings.Builder
	sink := NewJSONSink(&out)
	var want []byte
	for _, tm := range times {
		ev := &Event{Time: tm, Policy: "p", Name: "e"}
		ev.AppendUint("sport", 80)
		sink.Emit(ev)
		want = ev.AppendJSON(want)
	}
	sink.Flush()
	if out.String() != string(want) {
		t.Errorf("sink wrote\n%s\nAppendJSON gives\n%s", out.String(), want)
	}
	if !strings.Contains(out.String(), `"time":"2026-12-02T01:02:03.004000001Z"`) {
		t.Errorf("no line with the nanosecond later time:\n%s", out.String())
	}
}
