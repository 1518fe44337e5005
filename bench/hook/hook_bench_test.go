// Package hookbench measures the generic kernel-hook programs on the running kernel:
// the cost each hooked system call pays, and how many events per second
// reach decoded Go values.
//
//	go test -run '^$' -bench . -benchtime 2000000x ./bench/hook
//	go test -run '^$' -bench TracepointOverhead -benchtime 300000x ./bench/hook
package hookbench

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"golang.org/x/sys/unix"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/engine/hook"
	"github.com/grain-ebpf/grain/internal/plantest"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// progStatsOn turns on the kernel's BPF run-time statistics, which give each
// program's own ns per run (prog-ns) but add two clock reads to every run of
// every program, and so to the measured per-call overhead.
var progStatsOn = flag.Bool("prog-stats", false, "report the programs' own ns per run (kernel.bpf_stats_enabled)")

// enableProgStats turns the kernel's BPF run-time statistics on for the
// benchmark when -prog-stats asks for them.
func enableProgStats(b testing.TB) {
	b.Helper()
	if !*progStatsOn {
		return
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatalf("enable BPF run-time statistics: %v", err)
	}
	b.Cleanup(func() { stats.Close() })
}

func newHooks(b testing.TB, opts hook.Options) *hook.Hooks {
	b.Helper()
	vmtest.RequireRoot(b)
	opts.ObserveSelf = true // the loop runs in this process
	opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	p, err := hook.New(opts)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	return p
}

// loop makes n getppid calls, about the cheapest system call.
func loop(n int) {
	for range n {
		syscall.RawSyscall(syscall.SYS_GETPPID, 0, 0, 0)
	}
}

// renameName is what renameLoop names the calling thread, every time.
var renameName = append([]byte("grainbench"), 0)

// renameLoop makes n prctl(PR_SET_NAME) calls, each firing the tracepoint
// task/task_rename (the caller locks its OS thread).
func renameLoop(n int) {
	p := uintptr(unsafe.Pointer(&renameName[0]))
	for range n {
		syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_NAME, p, 0)
	}
}

// BenchmarkHookOverhead: ns per getppid call with each kind of hook, and
// the overhead over the same loop without hooks. Machines here are shared
// and noisy: each sub-benchmark alternates hooked and unhooked loops of b.N
// calls for 5 rounds and reports the medians (ns/op: hooked; base-ns:
// unhooked; overhead-ns: the median of the per-round differences). The
// calls run in this process, which the benchmark lets the hooks see
// (ObserveSelf).
func BenchmarkHookOverhead(b *testing.B) {
	p := newHooks(b, hook.Options{})
	enableProgStats(b)
	pid := os.Getpid()
	cases := []struct{ name, policy string }{
		// an empty program on raw sys_enter: what the kernel's syscall
		// tracing path costs any raw sys_enter program.
		{"empty_program", ""},
		// raw sys_enter attached for another syscall: every syscall pays
		// the program's entry and a lookup by number.
		{"other_syscall", `x: {syscall: "close", count: metric: "m"}`},
		// hooked, filtered out in the kernel by an integer (pid) or by
		// comm (string trie lookup).
		{"filtered_pid", `x: {syscall: "getppid", match: process: pid: 1, count: metric: "m"}`},
		{"filtered_comm", `x: {syscall: "getppid", match: process: comm: "nomatch", count: metric: "m"}`},
		// counted in the kernel: one total, and keyed by tgid and comm.
		{"counted", fmt.Sprintf(`x: {syscall: "getppid", match: process: tgid: %d, count: metric: "m"}`, pid)},
		{"counted_by_comm", fmt.Sprintf(`x: {syscall: "getppid", match: process: tgid: %d, count: {metric: "m", by: ["tgid", "comm"]}}`, pid)},
		// every system call counted by comm, as in BenchmarkHookBesideBpftraceSyscalls
		{"all_counted_by_comm", `x: {syscall: "*", count: {metric: "m", by: ["comm"]}}`},
		// the same on the syscalls:sys_enter_getppid tracepoint (a perf
		// event: only getppid pays).
		{"tracepoint_counted", fmt.Sprintf(`x: {tracepoint: "syscalls/sys_enter_getppid", match: process: tgid: %d, count: metric: "m"}`, pid)},
		// emitted: an event with pid and comm per call, drained by a
		// reader on the other CPU.
		{"emitted", fmt.Sprintf(`x: {syscall: "getppid", match: process: tgid: %d, emit: {event: "e", fields: ["pid", "comm"]}}`, pid)},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var hooked, base, diff, prog []float64
			for range 5 {
				h, pr := measure(b, p, c.name, c.policy, loop)
				u, _ := measure(b, p, "baseline", "", loop)
				hooked, base, diff, prog = append(hooked, h), append(base, u), append(diff, h-u), append(prog, pr)
			}
			b.ReportMetric(median(hooked), "ns/op")
			b.ReportMetric(median(base), "base-ns")
			b.ReportMetric(median(diff), "overhead-ns")
			if *progStatsOn {
				b.ReportMetric(median(prog), "prog-ns")
			}
		})
	}
}

// BenchmarkHookTracepointOverhead: ns per prctl(PR_SET_NAME) call hooked
// on the tracepoint task/task_rename, which grain attaches as a raw
// tracepoint when its policy reads no record field (Linux 6.10+), against
// the same loop unhooked, medians of 5 alternating rounds as
// BenchmarkHookOverhead. The empty programs give the floors of the two
// mechanisms.
func BenchmarkHookTracepointOverhead(b *testing.B) {
	p := newHooks(b, hook.Options{})
	if !p.Features().RawTracepoints() {
		b.Logf("no raw tracepoint cookies (%v): grain uses the perf-event tracepoint", p.Features().RawTracepointCookie)
	}
	enableProgStats(b)
	pid := os.Getpid()
	const tp = `tracepoint: "task/task_rename"`
	cases := []struct{ name, policy string }{
		// empty programs: the raw tracepoint's floor, and the perf-event
		// tracepoint's (what a policy reading record fields pays).
		{"empty_raw_program", ""},
		{"empty_perf_program", ""},
		{"filtered_pid", `x: {` + tp + `, match: process: pid: 1, count: metric: "m"}`},
		{"filtered_comm", `x: {` + tp + `, match: process: comm: "nomatch", count: metric: "m"}`},
		{"counted", fmt.Sprintf(`x: {`+tp+`, match: process: tgid: %d, count: metric: "m"}`, pid)},
		{"counted_by_comm", fmt.Sprintf(`x: {`+tp+`, match: process: tgid: %d, count: {metric: "m", by: ["comm"]}}`, pid)},
		// every call counted by comm, unfiltered (the short count path)
		{"all_counted_by_comm", `x: {` + tp + `, count: {metric: "m", by: ["comm"]}}`},
		{"emitted", fmt.Sprintf(`x: {`+tp+`, match: process: tgid: %d, emit: {event: "e", fields: ["pid", "comm"]}}`, pid)},
		// reading a record field keeps the perf-event tracepoint
		{"counted_field_perf", fmt.Sprintf(`x: {`+tp+`, args: [{field: "newcomm", type: "string"}], match: process: tgid: %d, count: metric: "m"}`, pid)},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var hooked, base, diff, prog []float64
			var mech hook.Mechanism
			for range 5 {
				h, pr := measure(b, p, c.name, c.policy, renameLoop)
				mech = p.Mechanism(hook.KindTracepoint, "task/task_rename")
				u, _ := measure(b, p, "baseline", "", renameLoop)
				hooked, base, diff, prog = append(hooked, h), append(base, u), append(diff, h-u), append(prog, pr)
			}
			if mech != 0 {
				b.Logf("attached as %s", mech)
			}
			b.ReportMetric(median(hooked), "ns/op")
			b.ReportMetric(median(base), "base-ns")
			b.ReportMetric(median(diff), "overhead-ns")
			if *progStatsOn {
				b.ReportMetric(median(prog), "prog-ns")
			}
		})
	}
}

// measure applies policy (for empty_*: attaches an empty program instead)
// and returns ns per call of b.N calls of run, and the ns per run of
// grain's program by the kernel's BPF statistics (bpf_stats_enabled): its
// own cost, without the tracing path's.
func measure(b *testing.B, p *hook.Hooks, name, policy string, run func(int)) (float64, float64) {
	plan := &codegen.Plan{}
	if policy != "" {
		plan = plantest.Compile(b, policy)
	}
	if err := p.Apply(plan); err != nil {
		b.Fatal(err)
	}
	stop := func() {}
	prog := progOf(b, p, policy)
	switch name {
	case "empty_program":
		stop, prog = attachEmpty(b)
	case "empty_raw_program":
		stop, prog = attachEmptyRawRename(b)
	case "empty_perf_program":
		stop, prog = attachEmptyPerfRename(b)
	case "emitted":
		stop = drain(b, p)
	}
	st0 := progStats(prog)
	runtime.LockOSThread()
	start := time.Now()
	run(b.N)
	elapsed := time.Since(start)
	runtime.UnlockOSThread()
	st1 := progStats(prog)
	stop()
	progNs := 0.0
	if n := st1.RunCount - st0.RunCount; n > 0 {
		progNs = float64(st1.Runtime-st0.Runtime) / float64(n)
	}
	return float64(elapsed.Nanoseconds()) / float64(b.N), progNs
}

func progOf(b *testing.B, p *hook.Hooks, policy string) *ebpf.Program {
	if policy == "" {
		return nil
	}
	name := bpf.ProgSysEnter
	if strings.Contains(policy, "tracepoint:") {
		name = bpf.ProgTracepoint
		if p.Mechanism(hook.KindTracepoint, strings.Split(policy, `"`)[1]) == hook.MechanismRawTracepoint {
			name = bpf.ProgRawTracepoint
		}
	}
	prog, err := p.Program().Program(name)
	if err != nil {
		b.Fatal(err)
	}
	return prog
}

func progStats(prog *ebpf.Program) ebpf.ProgramStats {
	if prog == nil {
		return ebpf.ProgramStats{}
	}
	st, err := prog.Stats()
	if err != nil {
		return ebpf.ProgramStats{}
	}
	return *st
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// drain reads and decodes events until stopped.
func drain(b *testing.B, p *hook.Hooks) func() {
	r, err := p.NewEventReader()
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ev hook.Event
		for {
			r.SetDeadline(time.Now().Add(5 * time.Millisecond))
			if err := r.Read(&ev); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				return
			}
		}
	}()
	return func() { r.Close(); wg.Wait() }
}

// BenchmarkHookEventThroughput: events from the kernel to decoded Go
// values (hook.Event) per second, with exact loss accounting:
// b.N getppid calls each emit an event; one goroutine decodes them while
// another makes the calls. Reports received events/s and lost events;
// received + lost must equal b.N.
func BenchmarkHookEventThroughput(b *testing.B) {
	p := newHooks(b, hook.Options{RingBufferBytes: 16 << 20})
	if err := p.Apply(plantest.Compile(b, fmt.Sprintf(`x: {syscall: "getppid", match: process: tgid: %d, emit: {event: "e", fields: ["pid", "tgid", "uid", "comm"]}}`, os.Getpid()))); err != nil {
		b.Fatal(err)
	}
	before := counters(b, p)
	r, err := p.NewEventReader()
	if err != nil {
		b.Fatal(err)
	}
	var received, decodedOK uint64
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		var ev hook.Event
		idle := 0
		for {
			r.SetDeadline(time.Now().Add(2 * time.Millisecond))
			err := r.Read(&ev)
			if err == nil {
				received++
				if ev.TGID != 0 && ev.Comm != "" {
					decodedOK++
				}
				idle = 0
				continue
			}
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				return
			}
			select {
			case <-done:
				if idle++; idle > 3 { // drained
					return
				}
			default:
			}
		}
	}()
	b.ResetTimer()
	start := time.Now()
	runtime.LockOSThread()
	loop(b.N)
	runtime.UnlockOSThread()
	close(done)
	<-stopped
	elapsed := time.Since(start)
	b.StopTimer()
	r.Close()
	after := counters(b, p)
	lost := after.EventsLost - before.EventsLost
	events := after.Events - before.Events
	if received+lost != uint64(b.N) || events != received || decodedOK != received {
		b.Fatalf("generated %d: received %d (decoded %d), kernel sent %d, lost %d", b.N, received, decodedOK, events, lost)
	}
	b.ReportMetric(float64(received)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(lost), "lost")
}

func counters(b *testing.B, p *hook.Hooks) hook.RuleCounter {
	c, err := p.Counters()
	if err != nil {
		b.Fatal(err)
	}
	var sum hook.RuleCounter
	for _, x := range c {
		sum.Events += x.Events
		sum.EventsLost += x.EventsLost
	}
	return sum
}

// attachEmpty attaches a program that only returns to raw sys_enter.
func attachEmpty(b testing.TB) (func(), *ebpf.Program) {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.RawTracepoint, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}})
	if err != nil {
		b.Fatal(err)
	}
	l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sys_enter", Program: prog})
	if err != nil {
		b.Fatal(err)
	}
	return func() { l.Close(); prog.Close() }, prog
}

// emptyProg is a program of type typ that only returns.
func emptyProg(b testing.TB, typ ebpf.ProgramType) *ebpf.Program {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: typ, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}})
	if err != nil {
		b.Fatal(err)
	}
	return prog
}

// attachEmptyRawRename attaches an empty program to the raw tracepoint
// task_rename (with a cookie, as grain does, where the kernel takes one).
func attachEmptyRawRename(b *testing.B) (func(), *ebpf.Program) {
	prog := emptyProg(b, ebpf.RawTracepoint)
	var l link.Link
	var err error
	if bpf.DetectProbeFeatures().RawTracepoints() {
		l, err = bpf.AttachRawTracepointCookie("task_rename", prog, 1)
	} else {
		l, err = link.AttachRawTracepoint(link.RawTracepointOptions{Name: "task_rename", Program: prog})
	}
	if err != nil {
		b.Fatal(err)
	}
	return func() { l.Close(); prog.Close() }, prog
}

// attachEmptyPerfRename attaches an empty program to the perf-event
// tracepoint task/task_rename.
func attachEmptyPerfRename(b *testing.B) (func(), *ebpf.Program) {
	prog := emptyProg(b, ebpf.TracePoint)
	l, err := link.Tracepoint("task", "task_rename", prog, &link.TracepointOptions{Cookie: 1})
	if err != nil {
		b.Fatal(err)
	}
	return func() { l.Close(); prog.Close() }, prog
}

// BenchmarkHookEventDecode: the reader's side alone. b.N getppid calls
// emit events into a ring buffer large enough to hold them all, with
// nobody reading; then the timer runs while one goroutine reads and
// decodes them all into hook.Event values. Reports events/s;
// nothing may be lost.
func BenchmarkHookEventDecode(b *testing.B) {
	p := newHooks(b, hook.Options{RingBufferBytes: 512 << 20})
	if err := p.Apply(plantest.Compile(b, fmt.Sprintf(`x: {syscall: "getppid", match: process: tgid: %d, emit: {event: "e", fields: ["pid", "tgid", "uid", "comm"]}}`, os.Getpid()))); err != nil {
		b.Fatal(err)
	}
	before := counters(b, p)
	runtime.LockOSThread()
	loop(b.N)
	runtime.UnlockOSThread()
	r, err := p.NewEventReader()
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	b.ResetTimer()
	start := time.Now()
	var ev hook.Event
	received := 0
	for received < b.N {
		r.SetDeadline(time.Now().Add(time.Second))
		if err := r.Read(&ev); err != nil {
			b.Fatalf("after %d events: %v", received, err)
		}
		if ev.TGID == 0 || ev.Comm == "" {
			b.Fatalf("badly decoded event %+v", ev)
		}
		received++
	}
	elapsed := time.Since(start)
	b.StopTimer()
	after := counters(b, p)
	if lost := after.EventsLost - before.EventsLost; lost != 0 || after.Events-before.Events != uint64(b.N) {
		b.Fatalf("generated %d: sent %d, lost %d", b.N, after.Events-before.Events, lost)
	}
	b.ReportMetric(float64(received)/elapsed.Seconds(), "events/s")
}
