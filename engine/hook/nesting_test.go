package hook

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/internal/plantest"
)

// setScratchBusy marks nesting level `level` busy (or free) on every CPU,
// as a program running there would: the busy word is in the level's count
// slot (bpf.HookCountPending), whose other fields it keeps.
func setScratchBusy(t *testing.T, p *Hooks, level uint32, busy bool) {
	t.Helper()
	m := p.Program().Maps().CountPending
	for cpu := range slotCPUs(m) {
		key := bpf.HookCountSlot(cpu, level)
		var v bpf.HookCountPending
		if err := m.Lookup(key, &v); err != nil {
			t.Fatalf("read count slot of level %d, CPU %d: %v", level, cpu, err)
		}
		v.Busy = 0
		if busy {
			v.Busy = 1
		}
		if err := m.Update(key, &v, ebpf.UpdateAny); err != nil {
			t.Fatalf("write count slot of level %d, CPU %d: %v", level, cpu, err)
		}
	}
}

// scratchBusy reports the busy word of a nesting level on every CPU.
func scratchBusy(t *testing.T, p *Hooks, level uint32) []byte {
	t.Helper()
	m := p.Program().Maps().CountPending
	var out []byte
	for cpu := range slotCPUs(m) {
		var v bpf.HookCountPending
		if err := m.Lookup(bpf.HookCountSlot(cpu, level), &v); err != nil {
			t.Fatalf("read count slot of level %d, CPU %d: %v", level, cpu, err)
		}
		out = append(out, byte(v.Busy))
	}
	return out
}

// slotCPUs is the number of CPUs with count slots in m.
func slotCPUs(m *ebpf.Map) int {
	return int(m.MaxEntries() / bpf.HookNestLevels)
}

func nestingOf(t *testing.T, p *Hooks) Nesting {
	t.Helper()
	n, err := p.Nesting()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestHookNestingLevels runs the real raw sys_enter program
// (BPF_PROG_TEST_RUN, ctx = the tracepoint's arguments: regs, syscall
// number) while scratch levels are marked busy from userspace, as programs
// interrupted on every CPU would leave them: a call finding level 0 busy
// is served in the next level, with its trie filter and labelled count
// (both look their level up again by number) giving the same outcome as
// at level 0, and counted as nested; a call finding every level busy is
// skipped and counted; the levels the runs took are free again after.
func TestHookNestingLevels(t *testing.T) {
	p := newTestHooks(t, Options{ObserveSelf: true})
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	comm, err := os.ReadFile("/proc/thread-self/comm")
	if err != nil {
		t.Fatal(err)
	}
	// three names: the comm filter goes to the LPM trie (filter_holds)
	src := fmt.Sprintf(`nest: {
	syscall: "getppid"
	match: process: comm: [%q, "nomatch1", "nomatch2"]
	count: {metric: "test.nested", by: ["tgid", "syscall"]}
}`, strings.TrimSpace(string(comm)))
	plan := plantest.Compile(t, src)
	if op := plan.Hooks.Rules[0].Selectors[0].Filters[0].Op; op != "trie" {
		t.Fatalf("comm filter of three names compiles to %q, want trie", op)
	}
	if err := p.Apply(plan); err != nil {
		t.Fatal(err)
	}
	prog, err := p.Program().Program(bpf.ProgSysEnter)
	if err != nil {
		t.Fatal(err)
	}
	run := func() {
		t.Helper()
		ret, err := prog.Run(&ebpf.RunOptions{Context: []uint64{0, uint64(syscall.SYS_GETPPID)}})
		if err != nil {
			t.Fatalf("test run of %s: %v", bpf.ProgSysEnter, err)
		}
		if ret != 0 {
			t.Fatalf("%s returned %d", bpf.ProgSysEnter, ret)
		}
	}
	check := func(step string, hits uint64, want Nesting) {
		t.Helper()
		if got := ruleHits(t, p, "nest"); got != hits {
			t.Fatalf("%s: %d hits, want %d", step, got, hits)
		}
		if got := nestingOf(t, p); got != want {
			t.Fatalf("%s: nesting %+v, want %+v", step, got, want)
		}
	}
	free := make([]byte, len(scratchBusy(t, p, 0)))
	taken := slices.Repeat([]byte{1}, len(free))

	run()
	check("level 0 free", 1, Nesting{})
	for l := range uint32(bpf.HookNestLevels) {
		if got := scratchBusy(t, p, l); !slices.Equal(got, free) {
			t.Fatalf("after a run, level %d busy words %v, want all free", l, got)
		}
	}

	setScratchBusy(t, p, 0, true)
	run()
	run()
	check("level 0 busy", 3, Nesting{Nested: 2})
	if got := scratchBusy(t, p, 0); !slices.Equal(got, taken) {
		t.Fatalf("level 0 busy words %v: a nested run released a level it did not take", got)
	}
	if got := scratchBusy(t, p, 1); !slices.Equal(got, free) {
		t.Fatalf("level 1 busy words %v after nested runs, want all free", got)
	}

	for l := range uint32(bpf.HookNestLevels) {
		setScratchBusy(t, p, l, true)
	}
	run()
	check("every level busy", 3, Nesting{Nested: 2, Skipped: 1})

	for l := range uint32(bpf.HookNestLevels) {
		setScratchBusy(t, p, l, false)
	}
	run()
	check("levels free again", 4, Nesting{Nested: 2, Skipped: 1})

	got := countLines(t, p)
	want := []string{fmt.Sprintf("test.nested tgid=%d,syscall=getppid 4", os.Getpid())}
	if !slices.Equal(got, want) {
		t.Fatalf("counts:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestHookNestingUnderInterrupts: a tight getppid loop counted on raw
// sys_enter while tracepoints that fire in interrupt context (the timer
// interrupt's hrtimer expiry, softirqs) run grain programs with labelled
// counts of their own, which may start while grain_sys_enter runs on the
// CPU they interrupt (the kernel does not keep raw tracepoint programs from
// nesting). Whether an interrupt lands inside a program is up to timing:
// the test asserts what must hold either way, that every getppid call is
// counted exactly once under the right labels and that no call found all
// levels busy (three programs at most run at once here), and logs how many
// calls were served nested.
func TestHookNestingUnderInterrupts(t *testing.T) {
	p := newTestHooks(t, Options{ObserveSelf: true})
	pid := os.Getpid()
	applyHooks(t, p, fmt.Sprintf(`
calls: {
	syscall: "getppid"
	match: process: tgid: %d
	count: {metric: "test.getppid", by: ["tgid", "syscall"]}
}
timer: {
	tracepoint: "timer/hrtimer_expire_entry"
	count: {metric: "test.hrtimer", by: ["pid", "comm"]}
}
softirq: {
	tracepoint: "irq/softirq_entry"
	count: {metric: "test.softirq", by: ["pid", "comm"]}
}`, pid))
	t.Logf("interrupt hooks attached as %s and %s", p.Mechanism(KindTracepoint, "timer/hrtimer_expire_entry"),
		p.Mechanism(KindTracepoint, "irq/softirq_entry"))
	const n = 3_000_000
	func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		for range n {
			syscall.RawSyscall(syscall.SYS_GETPPID, 0, 0, 0)
		}
	}()
	if got := ruleHits(t, p, "calls"); got != n {
		t.Fatalf("getppid: %d hits, want %d", got, n)
	}
	var getppid []string
	for _, line := range countLines(t, p) {
		if strings.HasPrefix(line, "test.getppid ") {
			getppid = append(getppid, line)
		}
	}
	want := []string{fmt.Sprintf("test.getppid tgid=%d,syscall=getppid %d", pid, n)}
	if !slices.Equal(getppid, want) {
		t.Fatalf("getppid counts:\n%s\nwant:\n%s", strings.Join(getppid, "\n"), strings.Join(want, "\n"))
	}
	if ruleHits(t, p, "timer") == 0 {
		t.Fatal("no hrtimer expiry counted while the loop ran")
	}
	nest := nestingOf(t, p)
	if nest.Skipped != 0 {
		t.Fatalf("%d calls skipped with every scratch level busy", nest.Skipped)
	}
	t.Logf("%d getppid calls; %d hrtimer and %d softirq hits; %d calls served nested", n,
		ruleHits(t, p, "timer"), ruleHits(t, p, "softirq"), nest.Nested)
}
