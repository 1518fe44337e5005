package hook

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/engine/generation"
	"github.com/grain-ebpf/grain/internal/hookchild"
	"github.com/grain-ebpf/grain/internal/plantest"
)

// TestHookCountPendingExact: counts keyed by comm stay exact with the
// kernel's write-combining slots (bpf.HookCountPending) holding the
// last key's calls, by grain_sys_enter's short count path (one rule by
// labels at hand) and by its general one (three rules), on the same slots: a child makes getppid calls under one comm, then
// another (prctl(PR_SET_NAME)); between its steps the rule set is reloaded
// (one rule; three rules on the same calls, one with a key too long for the
// small map; one rule again; none), which leaves counts pending in slots of
// retired rule sets, on whichever CPU the child last ran. Every read must
// give the exact number of calls per comm and rule, and the counts of the
// removed rules must stay as they were, nowhere else.
func TestHookCountPendingExact(t *testing.T) {
	p := newTestHooks(t, Options{})
	first := uniqueName("wcount")
	second := uniqueName("wrenam")
	bin := hookchild.Copy(t, first)

	const byComm = `a: {syscall: "getppid", count: {metric: "calls", by: ["comm"]}}`
	// b's labels fit the small key, c's do not (comm 16 + pid, tgid, uid 8 each)
	const more = `
b: {syscall: "getppid", count: {metric: "calls_tgid", by: ["comm", "tgid"]}}
c: {syscall: "getppid", count: {metric: "calls_ids", by: ["comm", "pid", "tgid", "uid"]}}`
	applyHooks(t, p, byComm)

	cmd := hookchild.Command(bin, "steps getppid:1000 sync getppid:2000 comm:"+second+" getppid:3000 sync getppid:500 sync")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	out := bufio.NewReader(outPipe)
	pid := cmd.Process.Pid
	// getppid's entry in the syscall table of the active generation
	// tells which path counts it: the short one (count_at_hand) for one
	// rule by labels at hand, the general one for three rules.
	shortPath := func(want bool) {
		t.Helper()
		if got := countsAtHand(t, p, "getppid"); got != want {
			t.Fatalf("getppid counted by the short path: %v, want %v", got, want)
		}
	}
	shortPath(true)
	waitSync := func() {
		t.Helper()
		if l, err := out.ReadString('\n'); err != nil || l != "sync\n" {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("child: %q, %v", l, err)
		}
	}
	resume := func() { fmt.Fprintln(in) }
	check := func(when string, want []string) {
		t.Helper()
		var got []string
		for _, l := range countLines(t, p) {
			if strings.Contains(l, first) || strings.Contains(l, second) {
				got = append(got, l)
			}
		}
		want = slices.Sorted(slices.Values(want))
		if !slices.Equal(got, want) {
			t.Fatalf("%s: counts\n%s\nwant\n%s", when, strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
		for policy, metric := range map[string]string{"a": "calls", "b": "calls_tgid", "c": "calls_ids"} {
			hitsMatchCounts(t, p, when, policy, metric)
		}
	}
	line := func(metric, labels string, n int) string {
		return fmt.Sprintf("%s %s %d", metric, labels, n)
	}
	ids := func(comm string) string {
		return fmt.Sprintf("comm=%s,pid=%d,tgid=%d,uid=%d", comm, pid, pid, os.Getuid())
	}

	waitSync()
	check("1,000 calls, one rule", []string{line("calls", "comm="+first, 1000)})
	applyHooks(t, p, byComm+more)
	shortPath(false)
	resume()

	waitSync()
	after2 := []string{
		line("calls", "comm="+first, 3000),
		line("calls", "comm="+second, 3000),
		line("calls_tgid", fmt.Sprintf("comm=%s,tgid=%d", first, pid), 2000),
		line("calls_tgid", fmt.Sprintf("comm=%s,tgid=%d", second, pid), 3000),
		line("calls_ids", ids(first), 2000),
		line("calls_ids", ids(second), 3000),
	}
	check("a reload to three rules and a comm change", after2)
	// a and c go: their counts stay as they were
	applyHooks(t, p, more[:strings.Index(more, "\nc:")])
	check("a reload to one of them, before more calls", after2)
	shortPath(true)
	resume()

	waitSync()
	final := slices.Clone(after2)
	final[3] = line("calls_tgid", fmt.Sprintf("comm=%s,tgid=%d", second, pid), 3500)
	check("500 calls after the reload", final)
	resume()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	// Two more reloads rewrite both generations: every pending count is
	// harvested, once.
	if err := p.Apply(&codegen.Plan{}); err != nil {
		t.Fatal(err)
	}
	check("after removing every rule", final)
	applyHooks(t, p, byComm)
	check("after a reload to the first rule set", final)

	// The counts went through the slots: the last calls' key is still
	// pending in the slot of the CPU the child ran on last.
	var pending []bpf.HookCountPending
	pending, err = p.pendingCounts()
	if err != nil {
		t.Fatal(err)
	}
	held := false
	for _, s := range pending {
		held = held || s.Calls != 0
	}
	if !held {
		t.Fatal("no count pending in any slot: the test did not exercise write-combining")
	}
}

// hitsMatchCounts: a rule that counts every call it selects has one hit
// per call in its counts or its count errors, whichever path counted it
// (a count at hand leaves its hit pending in the count slot). The counts
// are read between two reads of the hits, which other processes' calls
// may only raise.
func hitsMatchCounts(t *testing.T, p *Hooks, when, policy, metric string) {
	t.Helper()
	counter := func() RuleCounter {
		c, err := p.Counters()
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range c {
			if x.Policy == policy {
				return x
			}
		}
		return RuleCounter{}
	}
	before := counter()
	counts, err := p.CountSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	after := counter()
	var calls uint64
	for _, c := range counts {
		if c.Policy == policy && c.Metric == metric {
			calls += c.Calls
		}
	}
	if before.Hits > calls+after.CountErrors || calls+after.CountErrors > after.Hits {
		t.Fatalf("%s: policy %s: hits %d then %d, around %d calls counted and %d count errors",
			when, policy, before.Hits, after.Hits, calls, after.CountErrors)
	}
}

// countsAtHand tells whether grain_sys_enter counts syscall name by its
// short path (count_at_hand) in the active generation.
func countsAtHand(t *testing.T, p *Hooks, name string) bool {
	t.Helper()
	nr, ok := bpf.SyscallNumber(runtime.GOARCH, name)
	if !ok {
		t.Fatalf("no syscall %s", name)
	}
	var sc bpf.HookSyscall
	if err := p.p.Maps().Syscalls.Lookup(p.gen.Active()*bpf.HookSyscalls+uint32(nr), &sc); err != nil {
		t.Fatal(err)
	}
	return sc.CountRule != 0
}

// TestHookCountAtHandLabels: the short count path packs every label it
// takes (comm, pid, tgid, syscall) in any order as the general path does:
// real getppid calls of a child, counted exactly, and real execs on a raw
// tracepoint (where the kernel gives those cookies); and rules it does not
// take (a filter, a sum, a label it does not read, two rules on a call) go
// the general path.
func TestHookCountAtHandLabels(t *testing.T) {
	p := newTestHooks(t, Options{})
	comm := uniqueName("athand")
	bin := hookchild.Copy(t, comm)
	for _, c := range []struct {
		by, want string
	}{
		{`["syscall", "pid"]`, "syscall=getppid,pid=%[1]d"},
		{`["tgid", "comm"]`, "tgid=%[1]d,comm=%[2]s"},
		{`["pid", "tgid", "syscall"]`, "pid=%[1]d,tgid=%[1]d,syscall=getppid"},
		{`["comm", "syscall"]`, "comm=%[2]s,syscall=getppid"},
	} {
		applyHooks(t, p, `x: {syscall: "getppid", count: {metric: "at_hand", by: `+c.by+`}}`)
		if !countsAtHand(t, p, "getppid") {
			t.Fatalf("by %s: not counted by the short path", c.by)
		}
		cmd := hookchild.Command(bin, "steps getppid:777")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		want := fmt.Sprintf("at_hand "+c.want+" 777", cmd.Process.Pid, comm)
		if got := countLines(t, p); !slices.Contains(got, want) {
			t.Fatalf("by %s: counts\n%s\nwant among them\n%s", c.by, strings.Join(got, "\n"), want)
		}
	}
	// Raw tracepoints' hooks take the same path (grain_raw_tracepoint),
	// each found by its attachment's cookie: execs of the child, counted
	// by comm and tgid, and the renames an exec makes (task_rename), by
	// tgid; and their hits.
	applyHooks(t, p, `execs: {tracepoint: "sched/sched_process_exec", count: {metric: "at_hand_execs", by: ["comm", "tgid"]}}
renames: {tracepoint: "task/task_rename", count: {metric: "at_hand_renames", by: ["tgid"]}}`)
	mech := wantTracepointMechanism(t, p)
	slots := map[int]string{}
	for _, tp := range []string{"sched/sched_process_exec", "task/task_rename"} {
		if got := p.Mechanism(KindTracepoint, tp); got != mech {
			t.Fatalf("%s attached as %s, want %s", tp, got, mech)
		}
		var hk bpf.Hook
		slot := p.hooks[plantest.Compile(t, `x: {tracepoint: "`+tp+`", count: metric: "m"}`).Hooks.Hooks[0].Key()].slot
		if err := p.p.Maps().Hooks.Lookup(p.gen.Active()*bpf.HookMaxHooks+uint32(slot), &hk); err != nil {
			t.Fatal(err)
		}
		if hk.CountRule == 0 {
			t.Fatalf("%s's hook not set up for the short path: %+v", tp, hk)
		}
		slots[slot] = tp
	}
	if len(slots) != 2 {
		t.Fatalf("both tracepoints in one hook slot: %v", slots)
	}
	var want []string
	for range 3 {
		cmd := hookchild.Command(bin, "steps getppid:1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("child: %v\n%s", err, out)
		}
		want = append(want, fmt.Sprintf("at_hand_execs comm=%s,tgid=%d 1", comm, cmd.Process.Pid),
			fmt.Sprintf("at_hand_renames tgid=%d 1", cmd.Process.Pid))
	}
	var got []string
	for _, l := range countLines(t, p) {
		for _, w := range want {
			if strings.HasPrefix(w, strings.TrimRightFunc(l, func(r rune) bool { return r != ' ' })) {
				got = append(got, l)
				break
			}
		}
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("exec counts\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if hits := ruleHits(t, p, "execs"); hits < 3 {
		t.Fatalf("execs hits %d, want at least the child's 3", hits)
	}

	for name, src := range map[string]string{
		"filtered":     `x: {syscall: "getppid", match: process: comm: "x", count: {metric: "m", by: ["comm"]}}`,
		"sum":          `x: {syscall: "getppid", args: [{index: 0, type: "int", name: "a"}], count: {metric: "m", by: ["comm"], sum: "a"}}`,
		"uid label":    `x: {syscall: "getppid", count: {metric: "m", by: ["uid"]}}`,
		"big key":      `x: {syscall: "getppid", count: {metric: "m", by: ["comm", "pid", "tgid"]}}`,
		"no labels":    `x: {syscall: "getppid", count: {metric: "m"}}`,
		"emits too":    `x: {syscall: "getppid", count: {metric: "m", by: ["comm"]}, emit: {event: "e"}}`,
		"two policies": `x: {syscall: "getppid", count: {metric: "m", by: ["comm"]}}` + "\n" + `y: {syscall: "getppid", count: {metric: "n", by: ["comm"]}}`,
	} {
		applyHooks(t, p, src)
		if countsAtHand(t, p, "getppid") {
			t.Fatalf("%s: counted by the short path", name)
		}
	}
}

// TestHookPendingStill: a harvest's read of the count slots is final only
// when no slot holding the harvested epoch's count changed across it;
// slots of other epochs may change as they like.
func TestHookPendingStill(t *testing.T) {
	const epoch = 7
	slot := func(ruleEpoch uint32, calls, seq, seqEnd uint64) bpf.HookCountPending {
		var p bpf.HookCountPending
		p.Key.RuleId = generation.RuleID(ruleEpoch, 3)
		p.Calls, p.Seq, p.SeqEnd = calls, seq, seqEnd
		return p
	}
	for _, c := range []struct {
		name          string
		before, after bpf.HookCountPending
		still         bool
	}{
		{"unchanged", slot(epoch, 5, 2, 2), slot(epoch, 5, 2, 2), true},
		{"another epoch's slot moved", slot(epoch+1, 5, 2, 2), slot(epoch+1, 9, 3, 3), true},
		{"flushed and taken by another epoch", slot(epoch, 5, 2, 2), slot(epoch+1, 1, 3, 3), false},
		{"taken by the epoch meanwhile", slot(epoch+1, 5, 2, 2), slot(epoch, 1, 3, 3), false},
		{"read while its key changed", slot(epoch, 5, 3, 2), slot(epoch, 5, 3, 3), false},
		{"more calls", slot(epoch, 5, 2, 2), slot(epoch, 6, 2, 2), false},
		{"empty", slot(epoch, 0, 0, 0), slot(epoch, 0, 0, 0), true},
	} {
		other := slot(epoch+1, 1, 1, 1)
		before := []bpf.HookCountPending{other, c.before}
		after := []bpf.HookCountPending{other, c.after}
		if got := pendingStill(before, after, epoch); got != c.still {
			t.Errorf("%s: still %v, want %v", c.name, got, c.still)
		}
	}
	if pendingStill(make([]bpf.HookCountPending, 2), make([]bpf.HookCountPending, 3), epoch) {
		t.Error("reads of different lengths taken as still")
	}
	// A live read: any slot whose key changed (more calls are no move).
	for _, c := range []struct {
		name          string
		before, after bpf.HookCountPending
		moved         bool
	}{
		{"more calls", slot(epoch, 5, 2, 2), slot(epoch, 9, 2, 2), false},
		{"flushed", slot(epoch, 5, 2, 2), slot(epoch+1, 1, 3, 3), true},
		{"changing", slot(epoch, 5, 3, 2), slot(epoch, 5, 3, 3), true},
	} {
		if got := !noSlotMoved([]bpf.HookCountPending{c.before}, []bpf.HookCountPending{c.after}); got != c.moved {
			t.Errorf("live read, %s: moved %v, want %v", c.name, got, c.moved)
		}
	}
}

// TestHookPendingKey: a small key's slot keeps stale bytes past its 32;
// the reader takes only its own.
func TestHookPendingKey(t *testing.T) {
	var p bpf.HookCountPending
	p.Key.RuleId = 9
	for i := range p.Key.Labels {
		p.Key.Labels[i] = byte(i + 1)
	}
	p.Small = 1
	k := pendingKey(&p)
	if k.RuleId != 9 || k.Labels[bpf.HookSmallLabelBytes-1] != bpf.HookSmallLabelBytes || k.Labels[bpf.HookSmallLabelBytes] != 0 {
		t.Fatalf("small key %+v", k)
	}
	p.Small = 0
	if k := pendingKey(&p); k != p.Key {
		t.Fatalf("key %+v, want the slot's %+v", k, p.Key)
	}
}
