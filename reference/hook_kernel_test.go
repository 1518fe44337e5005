package reference

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/engine/hook"
	"github.com/grain-ebpf/grain/internal/testcpu"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// The hook filters against the kernel. Of the hook programs, the raw
// sys_enter one is the program a test can run with BPF_PROG_TEST_RUN: its
// context is the tracepoint's arguments (regs, syscall number), and it runs
// in the calling thread, whose process context (pid, tgid, ppid, uid, gid,
// comm, cgroup) the filters read. The others cannot be run so: kprobe and
// kretprobe programs refuse test runs, fentry/fexit run only as the
// function's own trampoline, and a perf-event tracepoint program reads a
// record the test run cannot supply. regs is NULL in a test run, so every
// argument reads as 0 (an integer) or "" (a string), and the filters on
// arguments are tested on those values.

// hookSyscalls are system calls the test's own process does not make
// while it runs (the Go runtime does not use them), so that only the test
// runs count.
var hookSyscalls = []string{"getppid", "getpgrp", "getsid", "times", "sysinfo"}

// procContext is the calling thread's process context.
type procContext struct {
	tid, tgid, ppid int
	comm            string
}

func thisThread(t testing.TB) procContext {
	comm, err := os.ReadFile("/proc/thread-self/comm")
	if err != nil {
		t.Fatal(err)
	}
	return procContext{tid: unix.Gettid(), tgid: os.Getpid(), ppid: os.Getppid(), comm: strings.TrimSpace(string(comm))}
}

// randomHookPolicies writes n syscall policies whose every selector holds
// tgid == the test's process (calls of other processes, which the attached
// program sees too, are never selected), with random process and argument
// filters around the test's own values.
func randomHookPolicies(rng *rand.Rand, n int, pc procContext) string {
	var b strings.Builder
	pick := func(list []string) string { return list[rng.IntN(len(list))] }
	lists := [][]string{{"getppid"}, {"getppid", "getpgrp"}, {"times"}, {"getsid", "sysinfo", "times"}, {"getpgrp"}}
	ints := func(own int) string {
		switch rng.IntN(7) {
		case 0:
			return fmt.Sprint(own)
		case 1:
			return fmt.Sprint(own + 1 + rng.IntN(5))
		case 2:
			return fmt.Sprintf("[%d, %d]", own+7, own)
		case 3:
			return fmt.Sprintf("{not: %d}", own+rng.IntN(2))
		case 4:
			lo := max(own-rng.IntN(3), 0)
			return fmt.Sprintf("%q", fmt.Sprintf("%d-%d", lo, max(lo, own+rng.IntN(3)-1)))
		case 5: // more than fit in the filter: a set
			var vs []string
			for i := range 10 {
				vs = append(vs, fmt.Sprint(own+1+i))
			}
			if rng.IntN(2) == 0 {
				vs = append(vs, fmt.Sprint(own))
			}
			return "[" + strings.Join(vs, ", ") + "]"
		default:
			return fmt.Sprintf("{not: [%d, %d]}", own+1, own+2)
		}
	}
	comms := func() string {
		other := "zz" + pc.comm
		other = other[:min(len(other), 15)]
		switch rng.IntN(6) {
		case 0:
			return fmt.Sprintf("%q", pc.comm)
		case 1:
			return fmt.Sprintf("%q", other)
		case 2:
			return fmt.Sprintf("{prefix: %q}", pc.comm[:1+rng.IntN(len(pc.comm))])
		case 3:
			return fmt.Sprintf("[%q, %q, %q]", other, pick([]string{pc.comm, "x"}), "y") // a trie
		case 4:
			return fmt.Sprintf("{not: %q}", pick([]string{pc.comm, other}))
		default:
			return fmt.Sprintf("{prefix: [%q, %q]}", "zz", pick([]string{pc.comm[:1], "q"}))
		}
	}
	for i := range n {
		fmt.Fprintf(&b, "h%02d: {\n\tsyscall: %s\n", i, quoted(lists[rng.IntN(len(lists))]))
		typ := pick([]string{"int", "uint", "user_string"})
		fmt.Fprintf(&b, "\targs: [{index: %d, type: %q, name: \"a0\"}]\n", rng.IntN(3), typ)
		var sels []string
		for range 1 + rng.IntN(2) {
			proc := []string{fmt.Sprintf("tgid: %d", pc.tgid)}
			for _, f := range []struct {
				name string
				own  int
			}{{"pid", pc.tid}, {"uid", 0}, {"gid", 0}} {
				if rng.IntN(4) == 0 {
					proc = append(proc, fmt.Sprintf("%s: %s", f.name, ints(f.own)))
				}
			}
			if rng.IntN(3) == 0 {
				proc = append(proc, "comm: "+comms())
			}
			if rng.IntN(8) == 0 {
				proc = append(proc, `cgroup: "/"`)
			}
			sel := fmt.Sprintf("process: {%s}", strings.Join(proc, ", "))
			if rng.IntN(2) == 0 {
				var cond string
				if typ == "user_string" {
					cond = pick([]string{`""`, `"x"`, `{prefix: ""}`, `{not: "x"}`, `["", "a", "b"]`})
				} else {
					cond = ints(0)
				}
				sel += ", args: {a0: " + cond + "}"
			}
			sels = append(sels, "{"+sel+"}")
		}
		if len(sels) == 1 {
			fmt.Fprintf(&b, "\tmatch: %s\n", sels[0])
		} else {
			fmt.Fprintf(&b, "\tmatch: [%s]\n", strings.Join(sels, ", "))
		}
		// In monitor mode a signal is counted, never sent: were it sent,
		// the test process itself would die.
		if rng.IntN(5) == 0 {
			b.WriteString("\tmode: \"monitor\"\n\tsignal: \"SIGKILL\"\n")
		}
		emit, count := rng.IntN(2) == 0, rng.IntN(2) == 0
		if !emit && !count {
			emit = true // a hook policy needs an action
		}
		if emit {
			fields := []string{"pid", "tgid", "ppid", "uid", "gid", "comm", "syscall", "a0"}
			rng.Shuffle(len(fields), func(i, j int) { fields[i], fields[j] = fields[j], fields[i] })
			fmt.Fprintf(&b, "\temit: {event: \"ev%d\", fields: %s}\n", i, quoted(fields[:rng.IntN(5)]))
		}
		if count {
			by := []string{"tgid", "comm", "syscall", "a0"}
			rng.Shuffle(len(by), func(i, j int) { by[i], by[j] = by[j], by[i] })
			sum := ""
			if typ != "user_string" && rng.IntN(3) == 0 {
				sum = `, sum: "a0"`
			}
			fmt.Fprintf(&b, "\tcount: {metric: \"test.m%d\", by: %s%s}\n", i, quoted(by[:rng.IntN(3)]), sum)
		}
		b.WriteString("}\n")
	}
	return b.String()
}

// TestHookAgreesWithKernel runs random syscall policy sets through the
// reference's Call and through the real raw sys_enter program
// (BPF_PROG_TEST_RUN in this thread, as the calling process), and fails on
// any disagreement in which policies selected each call (per-policy hits),
// their counts (calls and sums per label set) and their events (policy,
// name and fields, in order).
func TestHookAgreesWithKernel(t *testing.T) {
	vmtest.RequireRoot(t)
	p, err := hook.New(hook.Options{ObserveSelf: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		vmtest.Missing(t, "kernel hooks", err)
		t.Fatal(err)
	}
	defer p.Close()
	prog, err := p.Program().Program(bpf.ProgSysEnter)
	if err != nil {
		t.Fatal(err)
	}
	testcpu.Pin(t, 0)
	pc := thisThread(t)
	seed := testSeed(t)
	t.Logf("seed %d (rerun: %s=%d go test -count=1 -run 'TestHookAgreesWithKernel' ./reference/)", seed, seedEnv, seed)
	rd, err := p.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()

	const sets, callsPerSet = 12, 200
	selected, calls := 0, 0
	for set := 0; set < sets && !t.Failed(); set++ {
		rng := rand.New(rand.NewPCG(seed, uint64(set)))
		src := randomHookPolicies(rng, 1+rng.IntN(12), pc)
		plan := compileSource(t, fmt.Sprintf("hooks%d.cue", set), src)
		if err := p.Apply(plan); err != nil {
			t.Fatalf("apply: %v\n%s", err, src)
		}
		h, err := NewHook(plan)
		if err != nil {
			t.Fatal(err)
		}
		hitsBefore := hookHits(t, p)
		countsBefore := hookCounts(t, p)
		wantHits, wantWould := map[string]uint64{}, map[string]uint64{}
		wantCounts := map[string][2]uint64{}
		var wantEvents []string
		for range callsPerSet {
			name := hookSyscalls[rng.IntN(len(hookSyscalls))]
			nr, ok := bpf.SyscallNumber(runtime.GOARCH, name)
			if !ok {
				t.Fatalf("no number for %s on %s", name, runtime.GOARCH)
			}
			c := Call{Kind: "syscall", Target: name, PID: uint32(pc.tid), TGID: uint32(pc.tgid), PPID: uint32(pc.ppid),
				Comm: pc.comm, Cgroup: "/"}
			for _, r := range h.Call(c) {
				selected++
				wantHits[r.Policy]++
				if r.Signal != "" {
					t.Fatalf("the reference sends %s for %s: the generator writes only policies in monitor mode", r.Signal, r.Policy)
				}
				if r.WouldSignal != "" {
					wantWould[r.Policy]++
				}
				if r.Count != nil {
					k := countKey(r.Policy, r.Count.Labels)
					v := wantCounts[k]
					wantCounts[k] = [2]uint64{v[0] + 1, v[1] + uint64(r.Count.Sum)}
				}
				if r.Event != nil {
					wantEvents = append(wantEvents, eventString(r.Policy, r.Event.Name, r.Event.Fields))
				}
			}
			if _, err := prog.Run(&ebpf.RunOptions{Context: []uint64{0, uint64(nr)}}); err != nil {
				t.Fatalf("test run of %s: %v", bpf.ProgSysEnter, err)
			}
			calls++
		}
		report := func(format string, args ...any) {
			t.Helper()
			t.Errorf("seed %d, hook policy set %d: %s\npolicies:\n%s", seed, set, fmt.Sprintf(format, args...), src)
		}
		hits := hookHits(t, p)
		for _, r := range plan.Hooks.Rules {
			got := hits[r.Policy]
			got[0] -= hitsBefore[r.Policy][0]
			got[1] -= hitsBefore[r.Policy][1]
			if got[0] != wantHits[r.Policy] || got[1] != wantWould[r.Policy] {
				report("%s selected %d calls (%d signals it would send) in the kernel, %d (%d) in the reference",
					r.Policy, got[0], got[1], wantHits[r.Policy], wantWould[r.Policy])
			}
		}
		counts := hookCounts(t, p)
		for k, v := range counts {
			v[0] -= countsBefore[k][0]
			v[1] -= countsBefore[k][1]
			if v != wantCounts[k] && (v != [2]uint64{} || wantCounts[k] != [2]uint64{}) {
				report("count %s: kernel %d calls sum %d, reference %d calls sum %d", k, v[0], v[1], wantCounts[k][0], wantCounts[k][1])
			}
		}
		for k, v := range wantCounts {
			if _, ok := counts[k]; !ok {
				report("count %s: none in the kernel, reference %d calls sum %d", k, v[0], v[1])
			}
		}
		got := readHookEvents(t, rd, len(wantEvents))
		if !slices.Equal(got, wantEvents) {
			report("events differ:\nkernel:\n  %s\nreference:\n  %s", strings.Join(got, "\n  "), strings.Join(wantEvents, "\n  "))
		}
	}
	t.Logf("%d calls of %d policy sets, %d selections", calls, sets, selected)
}

// hookHits are each policy's hits and the signals it would have sent.
func hookHits(t *testing.T, p *hook.Hooks) map[string][2]uint64 {
	t.Helper()
	cs, err := p.Counters()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][2]uint64{}
	for _, c := range cs {
		v := out[c.Policy]
		out[c.Policy] = [2]uint64{v[0] + c.Hits, v[1] + c.WouldSignals + c.Signals}
	}
	return out
}

func countKey(policy string, labels []Field) string {
	var parts []string
	for _, l := range labels {
		parts = append(parts, fmt.Sprintf("%s=%v", l.Key, l.Value))
	}
	return policy + "{" + strings.Join(parts, ",") + "}"
}

func hookCounts(t *testing.T, p *hook.Hooks) map[string][2]uint64 {
	t.Helper()
	cs, err := p.CountSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][2]uint64{}
	for _, c := range cs {
		var parts []string
		for _, l := range c.Labels {
			parts = append(parts, fmt.Sprintf("%s=%s", l.Name, l.Value))
		}
		k := c.Policy + "{" + strings.Join(parts, ",") + "}"
		v := out[k]
		out[k] = [2]uint64{v[0] + c.Calls, v[1] + c.Sum}
	}
	return out
}

func eventString(policy, name string, fields []Field) string {
	var parts []string
	for _, f := range fields {
		parts = append(parts, fmt.Sprintf("%s=%v", f.Key, f.Value))
	}
	return fmt.Sprintf("%s %s {%s}", policy, name, strings.Join(parts, ", "))
}

// readHookEvents reads n events (polling: the program wakes no reader for
// a few), then any more already there.
func readHookEvents(t *testing.T, rd *hook.EventReader, n int) []string {
	t.Helper()
	var out []string
	giveUp := time.Now().Add(5 * time.Second)
	for {
		rd.SetDeadline(time.Now().Add(time.Millisecond))
		var ev hook.Event
		err := rd.Read(&ev)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if len(out) >= n || time.Now().After(giveUp) {
				return out
			}
			continue
		}
		if err != nil {
			t.Fatalf("read hook events: %v", err)
		}
		var fields []Field
		for i := range ev.Fields {
			f := &ev.Fields[i]
			fields = append(fields, Field{f.Name, f.Value()})
		}
		out = append(out, eventString(ev.Policy, ev.Event, fields))
	}
}
