package hookbench

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/engine/hook"
	"github.com/grain-ebpf/grain/internal/plantest"
)

// The same work as bpftrace, on the same hook, in one run: what grain adds
// to each hooked call beside what bpftrace adds, and beside an empty
// program on grain's own hook (the floor no program can go under).
//
//	go test -run '^$' -bench BesideBpftrace -benchtime 1000000x ./bench/hook   (syscalls)
//	go test -run '^$' -bench BesideBpftraceExec -benchtime 2000x [-site] ./bench/hook
//
// Needs bpftrace (Debian package bpftrace); skips without it.

// besideRounds is how many times each configuration runs, interleaved.
const besideRounds = 5

type besideWorkload struct {
	// grain's policy and bpftrace's program doing the same work.
	policy, bpftrace string
	// attachFloor attaches an empty program where grain's program went,
	// by the mechanism grain used (hook.Hooks.Mechanism while attached).
	attachFloor func(tb testing.TB, mech hook.Mechanism) (func(), *ebpf.Program)
	// hook is grain's hook, to ask for its mechanism.
	kind hook.Kind
	name string
	// run makes n hooked calls.
	run func(tb testing.TB, n int)
	// comm is the comm the hooked calls carry ("" for this process's).
	comm string
}

// BenchmarkHookBesideBpftraceSyscalls: every system call counted per comm,
// the tight loop getppid (ns per call above the unhooked loop).
func BenchmarkHookBesideBpftraceSyscalls(b *testing.B) {
	reportBeside(b, besideBpftrace(b, b.N, besideRounds, syscallsWorkload))
}

var syscallsWorkload = besideWorkload{
	policy:   `every_syscall: {syscall: "*", count: {metric: "syscalls", by: ["comm"]}}`,
	bpftrace: `tracepoint:raw_syscalls:sys_enter { @[comm] = count(); }`,
	attachFloor: func(tb testing.TB, _ hook.Mechanism) (func(), *ebpf.Program) {
		return attachEmpty(tb)
	},
	run: func(_ testing.TB, n int) { loop(n) },
}

// BenchmarkHookBesideBpftraceExec: sched_process_exec counted per comm,
// the tight loop fork+exec+wait of a static-enough /bin/true (ns per exec
// above the unhooked loop; an exec costs far more than the hook, so this
// one is noisy: read its spread).
func BenchmarkHookBesideBpftraceExec(b *testing.B) {
	reportBeside(b, besideBpftrace(b, b.N, besideRounds, execWorkload))
}

const execTracepoint = "sched/sched_process_exec"

var execWorkload = besideWorkload{
	policy:   `every_exec: {tracepoint: "` + execTracepoint + `", count: {metric: "execs", by: ["comm"]}}`,
	bpftrace: `tracepoint:sched:sched_process_exec { @[comm] = count(); }`,
	attachFloor: func(tb testing.TB, mech hook.Mechanism) (func(), *ebpf.Program) {
		return attachEmptyTracepoint(tb, mech, "sched", "sched_process_exec")
	},
	kind: hook.KindTracepoint,
	name: execTracepoint,
	run:  execLoop,
	comm: execComm,
}

// TestHookBesideBpftraceShort runs both comparisons with few calls, one
// round, so that they keep working: bpftrace must count every call, and
// every figure must come out (the figures themselves are the benchmarks').
func TestHookBesideBpftraceShort(t *testing.T) {
	for name, c := range map[string]struct {
		w besideWorkload
		n int
	}{"syscalls": {syscallsWorkload, 20000}, "exec": {execWorkload, 20}} {
		t.Run(name, func(t *testing.T) {
			if name == "exec" {
				defer func(on bool) { *siteOn = on }(*siteOn)
				*siteOn = true
			}
			r := besideBpftrace(t, c.n, 1, c.w)
			if len(r.base) != 1 || len(r.grain) != 1 || len(r.floor) != 1 || len(r.bpftrace) != 1 {
				t.Fatalf("figures missing: %+v", r)
			}
			if name == "exec" && (len(r.siteBase) != 1 || len(r.siteGrain) != 1 || len(r.siteFloor) != 1 || len(r.siteBpftrace) != 1) {
				t.Fatalf("site figures missing: %+v", r)
			}
			t.Logf("%s", r)
		})
	}
}

// besideResult holds ns per call of each round, and with -prog-stats the
// programs' own ns per run.
type besideResult struct {
	base, grain, floor, bpftrace       []float64
	grainProg, floorProg, bpftraceProg []float64
	// with -site: the median ns per exec at the tracepoint's site
	siteBase, siteGrain, siteFloor, siteBpftrace []float64
}

// above is the median over rounds of v's figure minus the unhooked one.
func (r besideResult) above(v []float64) float64 { return aboveBase(v, r.base) }

// siteAbove is above for the figures at the tracepoint's site.
func (r besideResult) siteAbove(v []float64) float64 { return aboveBase(v, r.siteBase) }

// aboveBase is the median over rounds of v[i] - base[i].
func aboveBase(v, base []float64) float64 {
	d := make([]float64, len(v))
	for i := range v {
		d[i] = v[i] - base[i]
	}
	return median(d)
}

// goal is the goal for grain's added cost g beside the floor's f and
// bpftrace's t, and whether g meets it.
func goal(g, f, t float64) (float64, string) {
	goal := max(0.5*t, 1.1*f)
	return goal, map[bool]string{true: "met", false: "NOT met"}[g <= goal]
}

func (r besideResult) String() string {
	g, f, t := r.above(r.grain), r.above(r.floor), r.above(r.bpftrace)
	want, met := goal(g, f, t)
	return fmt.Sprintf("per call above the unhooked loop (median of %d interleaved rounds): grain %+.0f ns, empty program on grain's hook %+.0f ns, bpftrace %+.0f ns; goal grain <= max(0.5 x bpftrace, 1.1 x floor) = %.0f ns: %s\n"+
		"rounds (ns per call): base %.0f, grain %.0f, floor %.0f, bpftrace %.0f",
		len(r.base), g, f, t, want, met, r.base, r.grain, r.floor, r.bpftrace) +
		r.progString() + r.siteString()
}

func (r besideResult) siteString() string {
	if len(r.siteBase) == 0 {
		return ""
	}
	g, f, t := r.siteAbove(r.siteGrain), r.siteAbove(r.siteFloor), r.siteAbove(r.siteBpftrace)
	want, met := goal(g, f, t)
	return fmt.Sprintf("\nat the tracepoint's site, per exec above unhooked (median of the rounds' medians): grain %+.0f ns, empty program %+.0f ns, bpftrace %+.0f ns; grain / bpftrace %.2f; goal %.0f ns: %s; rounds: base %.0f, grain %.0f, floor %.0f, bpftrace %.0f",
		g, f, t, g/t, want, met, r.siteBase, r.siteGrain, r.siteFloor, r.siteBpftrace)
}

func (r besideResult) progString() string {
	if !*progStatsOn {
		return ""
	}
	return fmt.Sprintf("\nprograms' own ns per run (BPF statistics, median): grain %.0f, empty program %.0f, bpftrace %.0f; rounds: grain %.0f, floor %.0f, bpftrace %.0f",
		median(r.grainProg), median(r.floorProg), median(r.bpftraceProg), r.grainProg, r.floorProg, r.bpftraceProg)
}

func reportBeside(b *testing.B, r besideResult) {
	g, f, t := r.above(r.grain), r.above(r.floor), r.above(r.bpftrace)
	b.ReportMetric(median(r.grain), "ns/op") // hooked by grain
	b.ReportMetric(median(r.base), "base-ns")
	b.ReportMetric(g, "grain-ns")
	b.ReportMetric(f, "floor-ns")
	b.ReportMetric(t, "bpftrace-ns")
	if t > 0 {
		b.ReportMetric(g/t, "grain/bpftrace")
	}
	if len(r.siteBase) > 0 {
		b.ReportMetric(r.siteAbove(r.siteGrain), "grain-site-ns")
		b.ReportMetric(r.siteAbove(r.siteFloor), "floor-site-ns")
		b.ReportMetric(r.siteAbove(r.siteBpftrace), "bpftrace-site-ns")
	}
	if *progStatsOn {
		b.ReportMetric(median(r.grainProg), "grain-prog-ns")
		b.ReportMetric(median(r.floorProg), "floor-prog-ns")
		b.ReportMetric(median(r.bpftraceProg), "bpftrace-prog-ns")
	}
	b.Logf("%s", r)
}

// besideBpftrace measures n calls of w.run unhooked, under grain's policy,
// under an empty program on grain's hook and under bpftrace, interleaved,
// rounds times.
func besideBpftrace(tb testing.TB, n, rounds int, w besideWorkload) besideResult {
	bpftrace, err := exec.LookPath("bpftrace")
	if err != nil {
		tb.Skip("bpftrace is missing (apt-get install bpftrace)")
	}
	p := newHooks(tb, hook.Options{})
	enableProgStats(tb)
	// registered on the tracepoint before any measured hook (grain's
	// attaches at Apply)
	var site *siteTimer
	if *siteOn && w.name == execTracepoint {
		site = newSiteTimer(tb)
	}
	plan := plantest.Compile(tb, w.policy)
	var r besideResult
	var siteNs float64 // the last timed run's, with site
	// timed runs n calls; with -prog-stats it also returns the ns per run
	// of progs by the kernel's BPF statistics (0 without).
	timed := func(n int, progs ...*ebpf.Program) (float64, float64) {
		var st0 []ebpf.ProgramStats
		for _, prog := range progs {
			st0 = append(st0, progStats(prog))
		}
		runtime.LockOSThread()
		start := time.Now()
		if site != nil {
			siteNs = site.siteNs(tb, func() { w.run(tb, n) })
		} else {
			w.run(tb, n)
		}
		elapsed := time.Since(start)
		runtime.UnlockOSThread()
		var runs uint64
		var runtimeNs time.Duration
		for i, prog := range progs {
			st1 := progStats(prog)
			runs += st1.RunCount - st0[i].RunCount
			runtimeNs += st1.Runtime - st0[i].Runtime
		}
		progNs := 0.0
		if runs > 0 {
			progNs = float64(runtimeNs.Nanoseconds()) / float64(runs)
		}
		return float64(elapsed.Nanoseconds()) / float64(n), progNs
	}
	for range rounds {
		ns, _ := timed(n)
		r.base = append(r.base, ns)
		r.siteBase = appendSite(r.siteBase, site, siteNs)

		if err := p.Apply(plan); err != nil {
			tb.Fatal(err)
		}
		var mech hook.Mechanism
		if w.name != "" {
			mech = p.Mechanism(w.kind, w.name)
		}
		ns, progNs := timed(n, grainProg(tb, p, mech))
		r.grain, r.grainProg = append(r.grain, ns), append(r.grainProg, progNs)
		r.siteGrain = appendSite(r.siteGrain, site, siteNs)
		if err := p.Apply(&codegen.Plan{}); err != nil {
			tb.Fatal(err)
		}

		stop, floorProg := w.attachFloor(tb, mech)
		ns, progNs = timed(n, floorProg)
		r.floor, r.floorProg = append(r.floor, ns), append(r.floorProg, progNs)
		r.siteFloor = appendSite(r.siteFloor, site, siteNs)
		stop()

		ns, progNs = runBpftrace(tb, n, w.comm, bpftrace, w.bpftrace, func(progs []*ebpf.Program) (float64, float64) { return timed(n, progs...) })
		r.bpftrace, r.bpftraceProg = append(r.bpftrace, ns), append(r.bpftraceProg, progNs)
		r.siteBpftrace = appendSite(r.siteBpftrace, site, siteNs)
	}
	return r
}

func appendSite(to []float64, site *siteTimer, ns float64) []float64 {
	if site == nil {
		return to
	}
	return append(to, ns)
}

// grainProg is the program grain runs for the workload's hook: raw
// sys_enter for syscalls, else the tracepoint program of mech.
func grainProg(tb testing.TB, p *hook.Hooks, mech hook.Mechanism) *ebpf.Program {
	name := bpf.ProgSysEnter
	switch mech {
	case hook.MechanismRawTracepoint:
		name = bpf.ProgRawTracepoint
	case hook.MechanismTracepoint:
		name = bpf.ProgTracepoint
	}
	prog, err := p.Program().Program(name)
	if err != nil {
		tb.Fatal(err)
	}
	return prog
}

// programIDs lists the BPF programs loaded on the machine.
func programIDs(tb testing.TB) map[ebpf.ProgramID]bool {
	ids := map[ebpf.ProgramID]bool{}
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			return ids
		}
		ids[next], id = true, next
	}
}

// newTracingPrograms opens the tracepoint programs loaded since before
// (bpftrace's: its BEGIN probe is a uprobe, not among them).
func newTracingPrograms(tb testing.TB, before map[ebpf.ProgramID]bool) []*ebpf.Program {
	var progs []*ebpf.Program
	for id := range programIDs(tb) {
		if before[id] {
			continue
		}
		prog, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // unloaded meanwhile
		}
		if t := prog.Type(); t != ebpf.TracePoint && t != ebpf.RawTracepoint {
			prog.Close()
			continue
		}
		tb.Cleanup(func() { prog.Close() })
		progs = append(progs, prog)
	}
	return progs
}

// bpftraceReady is printed by the BEGIN probe, which bpftrace runs once
// every other probe is attached.
const bpftraceReady = "grain-bench-ready"

var bpftraceCount = regexp.MustCompile(`^@\[(.*)\]: (\d+)$`)

// runBpftrace runs program under bpftrace, calls measure once it is
// attached, stops bpftrace and checks from its map that it counted the
// measured calls (this process's comm at least as many times as measured).
func runBpftrace(b testing.TB, n int, comm, bpftrace, program string, measure func([]*ebpf.Program) (float64, float64)) (float64, float64) {
	loaded := programIDs(b)
	cmd := exec.Command(bpftrace, "-e", `BEGIN { printf("`+bpftraceReady+`\n"); } `+program)
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	// bpftrace runs on the other CPUs (its map is printed at exit only).
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		io.Copy(io.Discard, out)
	}()
	ready := false
	timeout := time.After(60 * time.Second)
	for !ready {
		select {
		case l, ok := <-lines:
			if !ok {
				cmd.Wait()
				b.Fatalf("bpftrace exited before attaching: %s", stderr.String())
			}
			ready = l == bpftraceReady
		case <-timeout:
			cmd.Process.Kill()
			cmd.Wait()
			b.Fatalf("bpftrace did not attach within 60 s: %s", stderr.String())
		}
	}
	ns, progNs := measure(newTracingPrograms(b, loaded))
	// On SIGTERM bpftrace prints its maps and exits; bpftrace 0.17 misses
	// a signal that comes right after BEGIN, so it is repeated until
	// bpftrace is gone.
	cmd.Process.Signal(syscall.SIGTERM)
	again := time.NewTicker(time.Second)
	defer again.Stop()
	if comm == "" {
		comm = commOf(b)
	}
	var counted uint64
	for done := false; !done; {
		select {
		case l, ok := <-lines:
			if !ok {
				done = true
			} else if m := bpftraceCount.FindStringSubmatch(l); m != nil && m[1] == comm {
				counted, _ = strconv.ParseUint(m[2], 10, 64)
			}
		case <-again.C:
			cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	if err := cmd.Wait(); err != nil {
		b.Fatalf("bpftrace: %v: %s", err, stderr.String())
	}
	if counted < uint64(n) {
		b.Fatalf("bpftrace counted %d calls of %s, want at least %d: it was not attached during the loop", counted, comm, n)
	}
	return ns, progNs
}

// commOf is this process's comm.
func commOf(b testing.TB) string {
	c, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		b.Fatal(err)
	}
	return strings.TrimSpace(string(c))
}

// execComm is the comm of the exec loop's processes: /bin/true under a
// name of its own, so that only the loop's execs are timed at the site
// and counted, whatever else runs on the machine.
const execComm = "grain-exec-loop"

var execBinary = sync.OnceValues(func() (string, error) {
	b, err := os.ReadFile("/bin/true")
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "grain-exec")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, execComm)
	return path, os.WriteFile(path, b, 0o755)
})

// execLoop forks and executes /bin/true (as execComm) n times, one at a
// time, waiting for each.
func execLoop(b testing.TB, n int) {
	bin, err := execBinary()
	if err != nil {
		b.Fatal(err)
	}
	attr := &syscall.ProcAttr{Files: []uintptr{0, 1, 2}}
	for range n {
		pid, err := syscall.ForkExec(bin, []string{execComm}, attr)
		if err != nil {
			b.Fatal(err)
		}
		var ws syscall.WaitStatus
		if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil || ws.ExitStatus() != 0 {
			b.Fatalf("%s: %v, status %v", bin, err, ws)
		}
	}
}

// attachEmptyTracepoint attaches an empty program to the tracepoint
// group/name by the mechanism grain used for it (a raw tracepoint with a
// cookie, or a perf-event tracepoint).
func attachEmptyTracepoint(b testing.TB, mech hook.Mechanism, group, name string) (func(), *ebpf.Program) {
	if mech == hook.MechanismRawTracepoint {
		prog := emptyProg(b, ebpf.RawTracepoint)
		l, err := bpf.AttachRawTracepointCookie(name, prog, 1)
		if err != nil {
			b.Fatal(err)
		}
		return func() { l.Close(); prog.Close() }, prog
	}
	prog := emptyProg(b, ebpf.TracePoint)
	l, err := link.Tracepoint(group, name, prog, &link.TracepointOptions{Cookie: 1})
	if err != nil {
		b.Fatal(fmt.Errorf("attach an empty program to %s/%s: %w", group, name, err))
	}
	return func() { l.Close(); prog.Close() }, prog
}
