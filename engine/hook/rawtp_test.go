package hook

import (
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/grain-ebpf/grain/internal/hookchild"
)

// rawTracepointsExpected: raw tracepoints take cookies from Linux 6.10.
func rawTracepointsExpected(t *testing.T) bool {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	var major, minor int
	fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor)
	return major > 6 || major == 6 && minor >= 10
}

// wantTracepointMechanism is the mechanism of a field-less tracepoint hook
// on this kernel; it checks the feature probe agrees with the version.
func wantTracepointMechanism(t *testing.T, p *Hooks) Mechanism {
	t.Helper()
	have := p.Features().RawTracepoints()
	if have != rawTracepointsExpected(t) {
		t.Fatalf("raw tracepoint cookies detected %v (%v), kernel version says %v", have, p.Features().RawTracepointCookie, !have)
	}
	if have {
		return MechanismRawTracepoint
	}
	return MechanismTracepoint
}

func ruleHits(t *testing.T, p *Hooks, policy string) uint64 {
	t.Helper()
	c, err := p.Counters()
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range c {
		if x.Policy == policy {
			return x.Hits
		}
	}
	return 0
}

// TestHookTracepointRawNoFields: a tracepoint policy that reads no record
// field attaches as a raw tracepoint where the kernel gives those cookies
// (else as the perf-event tracepoint), filters by comm in the kernel, and
// counts and emits every selected call exactly.
func TestHookTracepointRawNoFields(t *testing.T) {
	p := newTestHooks(t, Options{})
	testRenameNoFields(t, p, wantTracepointMechanism(t, p))
}

// TestHookTracepointNoCookieFallback: as if the kernel had no raw
// tracepoint cookies (Debian's 6.1), the same policy runs on the
// perf-event tracepoint, with the same outcome.
func TestHookTracepointNoCookieFallback(t *testing.T) {
	p := newTestHooks(t, Options{})
	p.feats.RawTracepointCookie = errors.New("raw tracepoint cookies switched off by the test")
	testRenameNoFields(t, p, MechanismTracepoint)
}

func testRenameNoFields(t *testing.T, p *Hooks, want Mechanism) {
	t.Helper()
	comm := uniqueName("grainren")
	bin := hookchild.Copy(t, comm)
	applyHooks(t, p, fmt.Sprintf(`
renames: {
	tracepoint: "task/task_rename"
	match: process: comm: %q
	emit: {event: "rename", fields: ["pid", "tgid", "comm"]}
	count: {metric: "test.renames", by: ["comm"]}
}`, comm))
	if got := p.Mechanism(KindTracepoint, "task/task_rename"); got != want {
		t.Fatalf("mechanism %q, want %q", got, want)
	}
	if a := p.Attachments(); len(a) != 1 || a[0].Mechanism != want || a[0].Policies[0] != "renames" {
		t.Fatalf("attachments %+v", a)
	}
	const n = 7
	cmd := hookchild.Command(bin, "rename "+strconv.Itoa(n)+" "+comm) // keeps its comm
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	hookchild.Run(t, "rename 5 grainother") // another comm: filtered out
	if got := ruleHits(t, p, "renames"); got != n {
		t.Fatalf("hits %d, want %d", got, n)
	}
	counts, err := p.CountSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	wantCount := CountSample{Metric: "test.renames", Policy: "renames", Labels: []Label{{"comm", comm}}, Calls: n, Value: n}
	if len(counts) != 1 || fmt.Sprint(counts[0]) != fmt.Sprint(wantCount) {
		t.Fatalf("counts %+v, want %+v", counts, wantCount)
	}
	evs := collect(t, p, 5*time.Second, func(e []Event) bool { return len(e) >= n })
	if len(evs) != n {
		t.Fatalf("got %d events, want %d", len(evs), n)
	}
	for _, ev := range evs {
		if ev.Policy != "renames" || ev.Event != "rename" || ev.Comm != comm || int(ev.TGID) != cmd.Process.Pid || fieldStr(ev, "comm") != comm {
			t.Fatalf("event %+v, want comm %s tgid %d", ev, comm, cmd.Process.Pid)
		}
	}
}

// TestHookTracepointFieldsStayPerf: a tracepoint policy that reads record
// fields keeps the perf-event tracepoint, which has the record; reloading
// the same tracepoint with and without fields moves the hook between the
// two mechanisms without losing or doubling a call.
func TestHookTracepointFieldsStayPerf(t *testing.T) {
	p := newTestHooks(t, Options{})
	newName := uniqueName("grainnew")
	withFields := fmt.Sprintf(`
renames: {
	tracepoint: "task/task_rename"
	args: [{field: "newcomm", type: "string"}, {field: "pid", type: "int", name: "tp_pid"}]
	match: args: newcomm: %q
	emit: {event: "rename", fields: ["newcomm", "tp_pid", "tgid"]}
}`, newName)
	noFields := fmt.Sprintf(`
renames: {
	tracepoint: "task/task_rename"
	match: process: comm: %q
	emit: {event: "rename", fields: ["pid", "tgid", "comm"]}
}`, newName)
	rawWant := wantTracepointMechanism(t, p)
	phases := []struct {
		src    string
		mech   Mechanism
		fields bool
		n      int
	}{{withFields, MechanismTracepoint, true, 4}, {noFields, rawWant, false, 3}, {withFields, MechanismTracepoint, true, 6}}
	total := uint64(0)
	for i, ph := range phases {
		applyHooks(t, p, ph.src)
		if got := p.Mechanism(KindTracepoint, "task/task_rename"); got != ph.mech {
			t.Fatalf("phase %d: mechanism %q, want %q", i, got, ph.mech)
		}
		if a := p.Attachments(); len(a) != 1 {
			t.Fatalf("phase %d: attachments %+v, want one", i, a)
		}
		// The child is named newName and renames itself to newName:
		// selected by the newcomm field, or by comm without fields. Its
		// exec renames it too (from this test's comm): one more call
		// with fields.
		cmd := hookchild.Command(hookchild.Copy(t, newName), "rename "+strconv.Itoa(ph.n)+" "+newName)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		hookchild.Run(t, "rename 5 grainother") // filtered out either way
		n := ph.n
		if ph.fields {
			n++
		}
		total += uint64(n)
		if got := ruleHits(t, p, "renames"); got != total {
			t.Fatalf("phase %d: hits %d, want %d", i, got, total)
		}
		evs := collect(t, p, 5*time.Second, func(e []Event) bool { return len(e) >= n })
		if len(evs) != n {
			t.Fatalf("phase %d: %d events, want %d", i, len(evs), n)
		}
		for j, ev := range evs {
			if int(ev.TGID) != cmd.Process.Pid {
				t.Fatalf("phase %d: event %+v, want tgid %d", i, ev, cmd.Process.Pid)
			}
			if ph.fields {
				if fieldStr(ev, "newcomm") != newName || fieldStr(ev, "tp_pid") != strconv.Itoa(int(ev.PID)) {
					t.Fatalf("phase %d: fields of %+v", i, ev)
				}
			} else if ev.Comm != newName {
				t.Fatalf("phase %d: event %d comm %q, want %q", i, j, ev.Comm, newName)
			}
		}
	}
}
