package hook

import (
	"bufio"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/internal/hookchild"
)

// TestHookCountPendingExact: counts keyed by comm stay exact with the
// kernel's write-combining slots (bpf.HookCountPending) holding the
// last key's calls: a child makes getppid calls under one comm, then
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
