package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/engine/generation"
	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/pktbuild"
	"github.com/grain-ebpf/grain/internal/plantest"
	"github.com/grain-ebpf/grain/internal/testcpu"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// everyEvent sends an event for every matching packet: no deduplication.
const everyEvent = `every_event: {
	xdp: interfaces: ["lo"]
	match: {protocol: "tcp", payload: "HTTP/1.1"}
	then: "drop"
	emit: {event: "http", fields: ["saddr", "sport"], dedup: "0s"}
}`

// ownEngine is an engine of its own (its own ring, its own stages) with
// everyEvent applied; the caller closes or releases it.
func ownEngine(t *testing.T, opts Options) *Engine {
	t.Helper()
	vmtest.RequireRoot(t)
	e, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.ApplyTables(plantest.Compile(t, everyEvent), map[string]uint32{"lo": loIndex}); err != nil {
		e.Close()
		t.Fatal(err)
	}
	return e
}

// stagingEngine is ownEngine with a ring of ringBytes, closed at the end of
// the test, and a reader of its ring.
func stagingEngine(t *testing.T, ringBytes uint32) (*Engine, *ringbuf.Reader) {
	t.Helper()
	e := ownEngine(t, Options{RingBufferBytes: ringBytes})
	t.Cleanup(func() { e.Close() })
	rd, err := ringbuf.NewReader(e.XDP().Maps().Events)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Close() })
	return e, rd
}

// readEvents reads records until want events came and, after that, none
// for 100 ms (so that extra events are seen), or 10 s passed. It returns
// the events and the number of events of each record.
func readEvents(t *testing.T, rd *ringbuf.Reader, want int) ([]bpf.Event, []int) {
	t.Helper()
	var events []bpf.Event
	var batches []int
	var rec ringbuf.Record
	deadline, quiet := time.Now().Add(10*time.Second), time.Time{}
	for time.Now().Before(deadline) {
		// grain wakes a reader only when the ring fills up (bpf/xdp.c):
		// it polls, as grain's reader does.
		rd.SetDeadline(time.Now().Add(10 * time.Millisecond))
		if err := rd.ReadInto(&rec); errors.Is(err, os.ErrDeadlineExceeded) {
			if len(events) >= want {
				if quiet.IsZero() {
					quiet = time.Now().Add(100 * time.Millisecond)
				} else if time.Now().After(quiet) {
					break
				}
			}
			continue
		} else if err != nil {
			t.Fatal(err)
		}
		quiet = time.Time{}
		n := 0
		forEachEvent(rec.RawSample, func(b []byte) {
			events = append(events, *(*bpf.Event)(unsafe.Pointer(&b[0])))
			n++
		})
		if n == 0 {
			t.Fatalf("a record of %d bytes holds no event", len(rec.RawSample))
		}
		batches = append(batches, n)
	}
	return events, batches
}

func httpFrom(sport uint16) []byte {
	return pktbuild.TCP4("10.0.0.2", "10.0.0.1", sport, 80, pktbuild.PSH|pktbuild.ACK, request).Bytes()
}

func runRepeat(t testing.TB, e *Engine, frame []byte, repeat int) {
	t.Helper()
	ret, err := xdpProgram(t, e).Run(&ebpf.RunOptions{Data: frame, Repeat: uint32(repeat)})
	if err != nil || ret != 1 {
		t.Fatalf("BPF_PROG_TEST_RUN: verdict %d, %v; want XDP_DROP", ret, err)
	}
}

// Events are staged per CPU and sent in batches: a lone event arrives (by
// the stage's timer), a burst arrives in full batches and its remainder,
// and every event arrives exactly once with its own fields.
func TestXDPEventStaging(t *testing.T) {
	e, rd := stagingEngine(t, 0)
	testcpu.Pin(t, 0)

	runXDP(t, e, httpFrom(1234))
	events, batches := readEvents(t, rd, 1)
	if len(events) != 1 || events[0].Sport != 1234 || events[0].Family != 4 {
		t.Fatalf("a lone event: got %+v in records of %v events, want the one of sport 1234", events, batches)
	}
	lone := events[0]
	var now unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &now)
	if age := time.Duration(now.Nano() - int64(lone.TimeNs)); age < -time.Second || age > 10*time.Second {
		t.Errorf("the event's time is %v from now", age)
	}

	// A burst in one test run: full batches of 64 and the remainder.
	runRepeat(t, e, httpFrom(2000), 3*64+5)
	events, batches = readEvents(t, rd, 3*64+5)
	full := 0
	for _, n := range batches {
		if n > 64 {
			t.Errorf("a record of %d events; a stage holds 64", n)
		}
		if n == 64 {
			full++
		}
	}
	if len(events) != 3*64+5 || full == 0 {
		t.Errorf("a burst of %d events: got %d, in records of %v events; want all, and full batches of 64", 3*64+5, len(events), batches)
	}
	// A batch's first event takes rule_emit's way, most others are added
	// inline where the stage is pinned (Linux 6.7+, bpf/xdp.c
	// stage_pinned_slot): both must fill an event alike.
	first := events[0]
	for _, ev := range events {
		if ev.Sport != 2000 || ev.Saddr[0] != 10 || ev.Saddr[3] != 2 {
			t.Fatalf("an event of the burst is %+v, want sport 2000 from 10.0.0.2", ev)
		}
		if ev.TimeNs < lone.TimeNs {
			t.Errorf("an event of the burst has the time %d, before the lone event's %d", ev.TimeNs, lone.TimeNs)
		}
		same := ev
		same.TimeNs = first.TimeNs
		if same != first {
			t.Fatalf("events of the same packet differ: %+v and %+v", first, ev)
		}
	}

	// Packets one by one, each its own source port: each event exactly
	// once, in the order sent (one CPU, and nothing sends a busy stage's
	// events around it here, on one CPU with the reader on another).
	const single = 150
	for p := 0; p < single; p++ {
		runXDP(t, e, httpFrom(uint16(10000+p)))
	}
	events, batches = readEvents(t, rd, single)
	if len(events) != single {
		t.Fatalf("%d packets one by one: got %d events in records of %v", single, len(events), batches)
	}
	seen := map[uint16]bool{}
	for _, ev := range events {
		if seen[ev.Sport] || ev.Sport < 10000 || ev.Sport >= 10000+single {
			t.Fatalf("event of sport %d: repeated or not sent", ev.Sport)
		}
		seen[ev.Sport] = true
	}
	c := counterOf(t, e, "every_event")
	if total := uint64(1 + 3*64 + 5 + single); c.Events != total || c.EventsLost != 0 {
		t.Errorf("counters: %d events, %d lost; want %d and 0", c.Events, c.EventsLost, total)
	}
}

// A batch that finds the ring full is lost as a whole and counted: the
// events counter holds what the reader gets, events_lost the rest.
func TestXDPEventStagingFullRing(t *testing.T) {
	e, rd := stagingEngine(t, bpf.MinRingBufferBytes)
	testcpu.Pin(t, 0)
	const sent = 640
	runRepeat(t, e, httpFrom(3000), sent) // nothing reads meanwhile
	// The last batch leaves on the timer: wait until it was counted.
	var c RuleCounter
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if c = counterOf(t, e, "every_event"); c.Events+c.EventsLost == sent && c.EventsLost >= sent-3*64 {
			break
		}
	}
	events, batches := readEvents(t, rd, int(c.Events))
	if c.EventsLost == 0 || c.Events+c.EventsLost != sent || uint64(len(events)) != c.Events || len(events) < 64 {
		t.Errorf("a burst of %d into a ring of %d bytes: %d events read in records of %v; counters %d events, %d lost; want the events counted read, the rest counted lost",
			sent, bpf.MinRingBufferBytes, len(events), batches, c.Events, c.EventsLost)
	}
}

// Every CPU adds to its own stage while timers send them, possibly from
// another CPU (before Linux 6.7 a timer cannot be pinned): each event is
// read exactly once, none lost.
func TestXDPEventStagingEveryCPU(t *testing.T) {
	e, rd := stagingEngine(t, 4<<20)
	var cpus unix.CPUSet
	if err := unix.SchedGetaffinity(0, &cpus); err != nil {
		t.Fatal(err)
	}
	const rounds, repeat = 40, 300
	prog := xdpProgram(t, e)
	var wg sync.WaitGroup
	total := 0
	// A signal during a test run with Repeat (the Go runtime's preemption)
	// makes the kernel stop it and cilium/ebpf start it again from the
	// beginning: the runs before the signal count too. Runs retried so are
	// counted here; exact per-CPU totals hold only without them.
	var retried atomic.Int64
	for cpu := 0; cpu < 1024; cpu++ {
		if !cpus.IsSet(cpu) {
			continue
		}
		total += rounds * repeat
		wg.Add(1)
		go func(cpu int) {
			defer wg.Done()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			var one unix.CPUSet
			one.Set(cpu)
			if err := unix.SchedSetaffinity(0, &one); err != nil {
				t.Error(err)
				return
			}
			defer unix.SchedSetaffinity(0, &cpus)
			for r := 0; r < rounds; r++ {
				ret, err := prog.Run(&ebpf.RunOptions{Data: httpFrom(uint16(cpu)), Repeat: repeat,
					Reset: func() { retried.Add(1) }})
				if err != nil || ret != 1 {
					t.Errorf("CPU %d: verdict %d, %v", cpu, ret, err)
					return
				}
				// Now and then let the stage's timer send it while
				// this CPU adds again.
				time.Sleep(time.Duration(r%3) * 400 * time.Microsecond)
			}
		}(cpu)
	}
	var events []bpf.Event
	done := make(chan struct{})
	go func() {
		// Reads past total until the ring is quiet: retried runs' events too.
		events, _ = readEvents(t, rd, total)
		close(done)
	}()
	wg.Wait()
	<-done
	// Every event the kernel counted is read, once.
	c := counterOf(t, e, "every_event")
	perCPU := map[uint16]int{}
	for _, ev := range events {
		perCPU[ev.Sport]++
	}
	if len(events) != int(c.Events) || c.Events < uint64(total) || c.EventsLost != 0 {
		t.Errorf("%d events read (per CPU: %v), counters %d events, %d lost; want the counted events, at least %d, none lost",
			len(events), perCPU, c.Events, c.EventsLost, total)
	}
	for cpu, n := range perCPU {
		if n < rounds*repeat || (retried.Load() == 0 && n != rounds*repeat) {
			t.Errorf("CPU %d: %d events, want %d (%d runs retried)", cpu, n, rounds*repeat, retried.Load())
		}
	}
}

// forEachEvent tells a payload event from a batch by its size alone.
func TestForEachEvent(t *testing.T) {
	vmtest.HostOnly(t, "sizes of Go types")
	event, payload := int(unsafe.Sizeof(bpf.Event{})), int(unsafe.Sizeof(bpf.EventPayload{}))
	if payload%event == 0 {
		t.Fatalf("a payload event (%d bytes) is as long as a batch of %d events", payload, payload/event)
	}
	for _, c := range []struct {
		bytes, events int
	}{{event, 1}, {3 * event, 3}, {64 * event, 64}, {payload, 1}, {0, 0}, {event + 8, 0}} {
		n := 0
		forEachEvent(make([]byte, c.bytes), func(b []byte) {
			if len(b) != event && len(b) != payload {
				t.Errorf("%d bytes: an event of %d bytes", c.bytes, len(b))
			}
			n++
		})
		if n != c.events {
			t.Errorf("a record of %d bytes: %d events, want %d", c.bytes, n, c.events)
		}
	}
}

// Stages pinned by an earlier engine: their timers go on sending them (the
// pins keep the map), and the next engine's first event on a CPU makes that
// CPU's timer call its own program, so the earlier program is unloaded
// rather than kept for as long as the pins last.
func TestXDPEventStagesOfAnEarlierEngine(t *testing.T) {
	vmtest.RequireRoot(t)
	testcpu.Pin(t, 0)
	pins := netns.PinDir(t)
	first := ownEngine(t, Options{PinPath: pins})
	info, err := xdpProgram(t, first).Info()
	if err != nil {
		t.Fatal(err)
	}
	firstID, _ := info.ID()
	runXDP(t, first, httpFrom(4001))
	if err := first.Release(); err != nil {
		t.Fatal(err)
	}
	alive := func() bool {
		p, err := ebpf.NewProgramFromID(firstID)
		if err == nil {
			p.Close()
		}
		return err == nil
	}
	if !alive() {
		t.Fatal("the first engine's program is gone although its stage's timer calls it")
	}

	second := ownEngine(t, Options{PinPath: pins})
	defer second.Close()
	rd, err := ringbuf.NewReader(second.XDP().Maps().Events)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	runXDP(t, second, httpFrom(4002))
	events, batches := readEvents(t, rd, 2)
	if len(events) != 2 || events[0].Sport != 4001 || events[1].Sport != 4002 {
		t.Errorf("events of sports %v in records of %v, want 4001 (staged by the first engine) then 4002", sportsOf(events), batches)
	}
	for deadline := time.Now().Add(5 * time.Second); alive() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if alive() {
		t.Errorf("the first engine's program %d is still loaded: the stage's timer still calls it", firstID)
	}
}

func sportsOf(events []bpf.Event) []uint16 {
	var s []uint16
	for _, ev := range events {
		s = append(s, ev.Sport)
	}
	return s
}

// A program whose maps userspace let go of (a grain killed after it
// switched pinned links to its program and before it pinned its maps) can
// no longer start timers: the kernel freed them. Its events are sent at
// once instead of staying staged.
func TestXDPEventStageWithoutTimers(t *testing.T) {
	e := ownEngine(t, Options{})
	testcpu.Pin(t, 0)
	prog, err := xdpProgram(t, e).Clone()
	if err != nil {
		e.Close()
		t.Fatal(err)
	}
	defer prog.Close()
	ringInfo, err := e.XDP().Maps().Events.Info()
	if err != nil {
		e.Close()
		t.Fatal(err)
	}
	ringID, _ := ringInfo.ID()
	// Only the program holds the maps now.
	e.Close()

	for _, sport := range []uint16{5001, 5002} {
		if ret, err := prog.Run(&ebpf.RunOptions{Data: httpFrom(sport)}); err != nil || ret != 1 {
			t.Fatalf("BPF_PROG_TEST_RUN: verdict %d, %v; want XDP_DROP", ret, err)
		}
	}
	// Opening the ring by ID gives userspace a reference again; the
	// events were sent before.
	ring, err := ebpf.NewMapFromID(ringID)
	if err != nil {
		t.Fatal(err)
	}
	defer ring.Close()
	rd, err := ringbuf.NewReader(ring)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	events, batches := readEvents(t, rd, 2)
	if len(events) != 2 || events[0].Sport != 5001 || events[1].Sport != 5002 {
		t.Errorf("events of sports %v in records of %v, want 5001 and 5002, each sent at once", sportsOf(events), batches)
	}
}

// replacedPolicy is everyEvent under another policy name: rule sets that
// differ only in the names their events must carry.
func replacedPolicy(name string) string {
	return strings.Replace(everyEvent, "every_event:", name+":", 1)
}

// Events of a replaced rule set are named by it, however many rule sets
// followed and however late the reader reads them (here: it starts after
// five applies and a second, as a reader that lags or restarts); once the
// reader has read every event the replaced sets can still send, their names
// are dropped, and those of the set in force are kept.
func TestXDPEventsOfReplacedRuleSetsKeepTheirNames(t *testing.T) {
	e := ownEngine(t, Options{})
	defer e.Close()
	testcpu.Pin(t, 0)
	var ids []uint32
	for i, name := range []string{"set_a", "set_b", "set_c", "set_d", "set_e", "set_f"} {
		if i == 5 {
			time.Sleep(1500 * time.Millisecond) // no reader meanwhile
		}
		if err := e.ApplyTables(plantest.Compile(t, replacedPolicy(name)), map[string]uint32{"lo": loIndex}); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, generation.RuleID(e.gen.Epoch(), 0))
		if i < 2 {
			// staged, then the rule set changes within the batch's time
			runXDP(t, e, httpFrom(uint16(6000+i)))
			runXDP(t, e, httpFrom(uint16(6100+i)))
		}
	}
	var got []string
	for _, ev := range vmtest.StreamUntilDrained(t, e.StreamEvents, e.gen.Retired) {
		got = append(got, fmt.Sprint(ev["policy"], "/", ev["sport"]))
	}
	if want := []string{"set_a/6000", "set_a/6100", "set_b/6001", "set_b/6101"}; !slices.Equal(got, want) {
		t.Fatalf("events (policy/sport) %v, want %v: each named by the rule set that sent it", got, want)
	}
	for i, id := range ids {
		_, known := e.rule(id)
		if last := i == len(ids)-1; known != last {
			t.Errorf("rule set %d of %d: named %v after the reader read every event; want only the one in force named", i+1, len(ids), known)
		}
	}
}

// An event staged and followed by no other on its CPU leaves the stage by
// its timer alone: the stage empties without another packet, also when the
// rule set changed meanwhile, and the event arrives named by its own.
func TestXDPStagedEventLeavesWithoutAnotherPacket(t *testing.T) {
	e, rd := stagingEngine(t, 0)
	testcpu.Pin(t, 0)
	runXDP(t, e, httpFrom(7001))
	first := generation.RuleID(e.gen.Epoch(), 0)
	if err := e.ApplyTables(plantest.Compile(t, replacedPolicy("after")), map[string]uint32{"lo": loIndex}); err != nil {
		t.Fatal(err)
	}
	staged := func() (n int) {
		if err := e.XDP().StagedRuleIDs(func(uint32) { n++ }); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for deadline := time.Now().Add(10 * time.Second); staged() > 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if n := staged(); n > 0 {
		t.Fatalf("%d events still staged 10 s after the last packet: the stage's timer did not send them", n)
	}
	events, _ := readEvents(t, rd, 1)
	if len(events) != 1 || events[0].Sport != 7001 || events[0].RuleId != first {
		t.Fatalf("events %+v, want the one of sport 7001 with rule id %#x (the replaced rule set)", events, first)
	}
	if r, ok := e.rule(first); !ok || r.Policy != "every_event" {
		t.Errorf("rule %#x is named %+v, %v before any reader of the engine ran; want every_event", first, r, ok)
	}
}

// A grain that adopts the pinned state of an earlier one (after kill -9 or
// --keep-on-exit) names the events the earlier one left in the ring and in
// its stages by the earlier rule set, and counts them: per policy, what its
// reader receives is what its counters say was emitted.
func TestXDPAdoptedEventsAreNamedAndCounted(t *testing.T) {
	vmtest.RequireRoot(t)
	testcpu.Pin(t, 0)
	pins := netns.PinDir(t)
	first := ownEngine(t, Options{PinPath: pins})
	for sport := uint16(8001); sport <= 8005; sport++ {
		runXDP(t, first, httpFrom(sport))
	}
	if err := first.Release(); err != nil {
		t.Fatal(err)
	}
	second, err := New(Options{PinPath: pins})
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if err := second.ApplyTables(plantest.Compile(t, replacedPolicy("second_set")), map[string]uint32{"lo": loIndex}); err != nil {
		t.Fatal(err)
	}
	runXDP(t, second, httpFrom(8100))

	ctx, cancel := context.WithCancel(context.Background())
	var out vmtest.LockedBuffer
	done := make(chan error, 1)
	go func() { done <- second.StreamEvents(ctx, &out) }()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if second.gen.Retired() == 0 && strings.Count(out.String(), "\n") >= 6 {
			break
		}
	}
	time.Sleep(100 * time.Millisecond) // anything more would come within the reader's poll
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	received := map[string][]any{}
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("not JSON: %v: %q", err, line)
		}
		policy := fmt.Sprint(ev["policy"])
		received[policy] = append(received[policy], ev["sport"])
	}
	if want := []any{8001.0, 8002.0, 8003.0, 8004.0, 8005.0}; !slices.Equal(received["every_event"], want) {
		t.Errorf("events named every_event (the earlier grain's rule set): sports %v, want %v; all received: %v", received["every_event"], want, received)
	}
	if want := []any{8100.0}; !slices.Equal(received["second_set"], want) {
		t.Errorf("events named second_set: sports %v, want %v; all received: %v", received["second_set"], want, received)
	}
	counters, err := second.Counters()
	if err != nil {
		t.Fatal(err)
	}
	emitted := map[string]int{}
	for _, c := range counters {
		emitted[c.Policy] += int(c.Events)
	}
	for policy, events := range received {
		if len(events) != emitted[policy] {
			t.Errorf("policy %s: %d events received, %d emitted by the counters (all: %v)", policy, len(events), emitted[policy], emitted)
		}
	}
}
