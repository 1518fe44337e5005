package policies_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/internal/plantest"
	"github.com/grain-ebpf/grain/policies"
)

// The test binary is its own policy worker, as grain's is.
func TestMain(m *testing.M) {
	policies.ServeWorkerIfAsked()
	os.Exit(m.Run())
}

func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, src := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func newWorker(t *testing.T, limits policies.Limits) *policies.Worker {
	t.Helper()
	w, err := policies.NewWorker(limits)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	return w
}

func TestValuesThatMultiplyAreRefused(t *testing.T) {
	// 2^29 leaves from 30 short lines: validating it whole takes hours.
	_, err := policies.LoadBytes("multiply.cue", []byte(plantest.MultiplyingTree(29)))
	var list policies.ErrorList
	if !errors.As(err, &list) || len(list) != 1 {
		t.Fatalf("got %v, want one error", err)
	}
	e := list[0]
	if e.Pos.File != "multiply.cue" || e.Pos.Line < 1 || !strings.Contains(e.Msg, "evaluates to more than") {
		t.Errorf("got %q at %+v, want the value bound, positioned", e.Msg, e.Pos)
	}
	// A tree just inside the bound still loads (and fails as policies).
	_, err = policies.LoadBytes("small.cue", []byte(plantest.MultiplyingTree(10)))
	if err == nil || strings.Contains(err.Error(), "evaluates to more than") {
		t.Errorf("a tree of 2^10 values: got %v, want the policy errors only", err)
	}
}

func TestTreeBeyondSizeBoundIsRefusedUnread(t *testing.T) {
	big := strings.Repeat("// padding\n", policies.MaxTreeBytes/11+1)
	dir := writeTree(t, map[string]string{"a.cue": "x: 1\n", "b.cue": big})
	_, err := policies.Load(dir)
	var list policies.ErrorList
	if !errors.As(err, &list) || len(list) != 1 || list[0].Pos.File != filepath.Join(dir, "b.cue") ||
		!strings.Contains(list[0].Msg, "at most 1048576 bytes") {
		t.Fatalf("got %v, want the size bound naming b.cue", err)
	}
}

// The worker loads every example as Load does: the same plan, byte for byte.
func TestWorkerLoadsAsLoad(t *testing.T) {
	w := newWorker(t, policies.DefaultLimits)
	dirs, err := filepath.Glob("../examples/*")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, dir := range dirs {
		if info, err := os.Stat(dir); err != nil || !info.IsDir() {
			continue
		}
		want, err := policies.Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		got, err := w.Load(context.Background(), dir)
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		for _, s := range []*policies.Snapshot{want, got} {
			if s.Root != dir || len(s.Policies) == 0 {
				t.Fatalf("%s: snapshot %+v", dir, s)
			}
		}
		if !sameJSON(t, want.Pipeline, got.Pipeline) || !sameJSON(t, want.Files, got.Files) {
			t.Errorf("%s: the worker's snapshot differs", dir)
		}
		wantPlan, err := codegen.Compile(want.Policies, codegen.Options{})
		if err != nil {
			t.Fatal(err)
		}
		gotPlan, err := codegen.Compile(got.Policies, codegen.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if !sameJSON(t, wantPlan, gotPlan) {
			t.Errorf("%s: the worker's plan differs", dir)
		}
		n++
	}
	if n < 5 {
		t.Fatalf("compared %d examples", n)
	}
	// Problems come back as the same positioned list.
	bad := writeTree(t, map[string]string{"bad.cue": "p: {xdp: interfaces: [\"eth0\"], match: protocol: \"tcpp\", then: \"drop\"}\n"})
	_, want := policies.Load(bad)
	_, got := w.Load(context.Background(), bad)
	var list policies.ErrorList
	if want == nil || !errors.As(got, &list) || got.Error() != want.Error() {
		t.Errorf("got %v, want %v", got, want)
	}
}

func sameJSON(t *testing.T, a, b any) bool {
	t.Helper()
	ja, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return string(ja) == string(jb)
}

func TestWorkerStopsAtItsLimits(t *testing.T) {
	for _, tc := range []struct {
		name   string
		limits policies.Limits
		src    string
		want   string
	}{
		{"time", policies.Limits{Timeout: time.Second, MemoryBytes: 1 << 30}, plantest.RunawayTree, "did not finish within 1s"},
		{"memory", policies.Limits{Timeout: time.Minute, MemoryBytes: 64 << 20},
			"import \"list\"\np: [for i in list.Range(0, 20000000, 1) {i}]\n", "used more than 64 MiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorker(t, tc.limits)
			dir := writeTree(t, map[string]string{"ok.cue": "a: 1\n", "slow.cue": tc.src})
			_, err := w.Load(context.Background(), dir)
			var list policies.ErrorList
			if !errors.As(err, &list) || len(list) != 1 || list[0].Pos.File != filepath.Join(dir, "slow.cue") ||
				!strings.Contains(list[0].Msg, tc.want) {
				t.Fatalf("got %v, want %q naming slow.cue", err, tc.want)
			}
			// The next load starts a new worker.
			good := writeTree(t, map[string]string{"p.cue": "p: {xdp: interfaces: [\"eth0\"], match: protocol: \"tcp\", then: \"drop\"}\n"})
			snap, err := w.Load(context.Background(), good)
			if err != nil || len(snap.Policies) != 1 {
				t.Fatalf("after the stop: %v", err)
			}
		})
	}
}

// A load abandoned for a newer tree (ErrSuperseded) replaces the worker at
// once; one abandoned for any other cause (grain stops) leaves no worker
// running. Either way the next load works.
func TestWorkerLoadIsAbandonedWithItsContext(t *testing.T) {
	w := newWorker(t, policies.Limits{Timeout: time.Hour})
	dir := writeTree(t, map[string]string{"slow.cue": plantest.RunawayTree})
	good := writeTree(t, map[string]string{"p.cue": "p: {xdp: interfaces: [\"eth0\"], match: protocol: \"tcp\", then: \"drop\"}\n"})
	for _, cause := range []error{policies.ErrSuperseded, context.Canceled} {
		ctx, cancel := context.WithCancelCause(context.Background())
		go func() {
			time.Sleep(300 * time.Millisecond)
			cancel(cause)
		}()
		if _, err := w.Load(ctx, dir); !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled with %v: got %v, want context.Canceled", cause, err)
		}
		pid := w.Pid()
		if superseded := cause == policies.ErrSuperseded; (pid != 0) != superseded {
			t.Errorf("cancelled with %v: worker pid %d after the load; want a worker running: %v", cause, pid, superseded)
		}
		if pid != 0 {
			if err := syscall.Kill(pid, 0); err != nil {
				t.Errorf("the replacement worker %d does not run: %v", pid, err)
			}
		}
		if _, err := w.Load(context.Background(), good); err != nil {
			t.Fatalf("after the load cancelled with %v: %v", cause, err)
		}
	}
}

// BenchmarkWorkerLoad loads a 1000-rule tree with one rule edited each
// time: in the same worker (its cache warm), and in a worker started for
// the load (as after an abandoned evaluation) with the caller's seed, and
// in process with a fresh cache (what the worker's cache saves).
func BenchmarkWorkerLoad(b *testing.B) {
	dir := b.TempDir()
	write := func(port int) {
		var s strings.Builder
		for i := range 1000 {
			p := 1000 + i
			if i == 0 {
				p = port
			}
			fmt.Fprintf(&s, "r%04d: {xdp: interfaces: [\"eth0\"], match: {protocol: \"tcp\", saddr: \"10.%d.%d.0/24\", dport: %d}, then: \"drop\"}\n", i, i/250, i%250, p)
		}
		if err := os.WriteFile(filepath.Join(dir, "rules.cue"), []byte(s.String()), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	w, err := policies.NewWorker(policies.DefaultLimits)
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	write(60000)
	if _, err := w.Load(context.Background(), dir); err != nil {
		b.Fatal(err)
	}
	for _, mode := range []string{"warm", "restarted", "in-process-cold"} {
		b.Run(mode, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				write(60001 + i%1000)
				var err error
				switch mode {
				case "warm":
					_, err = w.Load(context.Background(), dir)
				case "restarted":
					ctx, cancel := context.WithCancel(context.Background())
					cancel()
					w.Load(ctx, dir) // abandoned: the worker is replaced
					_, err = w.Load(context.Background(), dir)
				case "in-process-cold":
					_, err = policies.Load(dir)
				}
				if err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// The worker's threads are named grain-worker, not exe.
func TestWorkerThreadsAreNamed(t *testing.T) {
	w := newWorker(t, policies.Limits{Timeout: time.Hour})
	// The answer (a policy error) does not matter: the worker runs.
	w.Load(context.Background(), writeTree(t, map[string]string{"a.cue": "a: 1\n"}))
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", w.Pid()))
	if err != nil || len(tasks) < 2 {
		t.Fatalf("the worker's threads: %v %v", tasks, err)
	}
	for _, task := range tasks {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/comm", w.Pid(), task.Name()))
		if strings.TrimSpace(string(comm)) != "grain-worker" {
			t.Errorf("thread %s is called %q", task.Name(), comm)
		}
	}
}
