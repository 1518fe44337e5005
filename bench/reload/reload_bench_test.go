// Package reload measures how fast a saved policy file becomes the rule set
// the kernel enforces, and whether reloads leak memory.
package reload

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/grain-ebpf/grain/engine"
	"github.com/grain-ebpf/grain/engine/daemon"
	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/pktbuild"
	"github.com/grain-ebpf/grain/internal/vmtest"
	"github.com/grain-ebpf/grain/pipeline"
	"github.com/grain-ebpf/grain/policies"
)

// The benchmark binary is its own policy worker, as grain is.
func TestMain(m *testing.M) {
	policies.ServeWorkerIfAsked()
	os.Exit(m.Run())
}

// writeTree writes n rules into dir; rule r0000 drops TCP from 10.0.0.0/24
// to port0.
func writeTree(tb testing.TB, dir, iface string, n, port0 int) {
	tb.Helper()
	var b strings.Builder
	for i := 0; i < n; i++ {
		port := 1000 + i
		if i == 0 {
			port = port0
		}
		fmt.Fprintf(&b, "r%04d: {xdp: interfaces: [%q], match: {protocol: \"tcp\", saddr: \"10.%d.%d.0/24\", dport: %d}, then: \"drop\"}\n",
			i, iface, i/250, i%250, port)
	}
	// Editor-style save: temporary file, then rename.
	tmp := filepath.Join(dir, ".rules.cue.tmp")
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "rules.cue")); err != nil {
		tb.Fatal(err)
	}
}

type rig struct {
	worker   *policies.Worker
	prog     *ebpf.Program
	reloader *daemon.Reloader
	watcher  *policies.Watcher
	done     chan struct{}
	applied  chan error
}

// newRig runs what `grain run` runs: an engine attached in a network
// namespace, a watcher with grain run's default 100 ms debounce, and the reload loop.
func newRig(tb testing.TB, dir string, p *netns.Pair, debounce time.Duration) *rig {
	tb.Helper()
	log := slog.New(slog.NewTextHandler(ioDiscard{}, nil))
	e, err := engine.New(engine.Options{Logger: log})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { e.Close() })
	prog, err := e.XDP().Program()
	if err != nil {
		tb.Fatal(err)
	}
	r := &rig{prog: prog, done: make(chan struct{}), applied: make(chan error, 1024)}
	// As grain run evaluates trees: in a worker process (TestMain).
	worker, err := policies.NewWorker(policies.DefaultLimits)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(worker.Close)
	r.worker = worker
	r.reloader = &daemon.Reloader{Dir: dir, Engine: e, Log: log, Load: worker.Load}
	// The event reader and pipeline, as in grain run: the reader also lets
	// the engine forget the names of replaced rule sets.
	pipe := pipeline.New(pipeline.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	go pipe.Run(ctx)
	go e.ReadEvents(ctx, pipe.Producer())
	tb.Cleanup(cancel)
	if err := netns.Do(p.ServerNS, func() error { return r.reloader.Reload(context.Background(), true) }); err != nil {
		tb.Fatal(err)
	}
	if r.watcher, err = policies.NewWatcher(dir, debounce, log); err != nil {
		tb.Fatal(err)
	}
	go func() {
		for {
			select {
			case <-r.done:
				return
			case <-r.watcher.Changes():
				r.applied <- netns.Do(p.ServerNS, func() error { return r.reloader.Reload(context.Background(), false) })
			}
		}
	}()
	tb.Cleanup(func() { close(r.done); r.watcher.Close() })
	return r
}

type ioDiscard struct{}

func (ioDiscard) Write(b []byte) (int, error) { return len(b), nil }

// verdict runs the program on a TCP packet from 10.0.0.7 to port.
func (r *rig) verdict(tb testing.TB, port int) uint32 {
	frame := pktbuild.TCP4("10.0.0.7", "10.0.0.1", 5, uint16(port), pktbuild.ACK, nil).Bytes()
	ret, err := r.prog.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		tb.Fatal(err)
	}
	return ret
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	return sorted[min(len(sorted)-1, int(float64(len(sorted))*p))]
}

// BenchmarkSaveToEnforced: an editor saves the tree with rule r0000's port
// changed; the time until the program drops packets to the new port, for
// trees of 1, 100 and 1000 rules, 200 edits each.
func BenchmarkSaveToEnforced(b *testing.B) {
	vmtest.RequireRoot(b)
	const drop = 1
	edits := 200
	if s := os.Getenv("GRAIN_BENCH_EDITS"); s != "" {
		edits, _ = strconv.Atoi(s)
	}
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			p := netns.NewPair(b)
			dir := b.TempDir()
			writeTree(b, dir, p.ServerIf, n, 60000)
			r := newRig(b, dir, p, 100*time.Millisecond)
			var lat []time.Duration
			for i := 0; i < b.N; i++ {
				lat = lat[:0]
				for e := 0; e < edits; e++ {
					port := 60001 + e
					start := time.Now()
					writeTree(b, dir, p.ServerIf, n, port)
					for r.verdict(b, port) != drop {
						if time.Since(start) > 10*time.Second {
							b.Fatalf("edit %d not enforced after 10 s", e)
						}
						time.Sleep(500 * time.Microsecond)
					}
					lat = append(lat, time.Since(start))
					// Let the reload finish its bookkeeping before the next save.
					if err := <-r.applied; err != nil {
						b.Fatal(err)
					}
				}
			}
			slices.Sort(lat)
			b.ReportMetric(float64(percentile(lat, 0.5).Milliseconds()), "p50-ms")
			b.ReportMetric(float64(percentile(lat, 0.99).Milliseconds()), "p99-ms")
			fmt.Printf("| %d rules | %d | %v | %v | %v |\n", n, len(lat), percentile(lat, 0.5).Round(time.Millisecond),
				percentile(lat, 0.99).Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond))
		})
	}
}

// statusKiB reads one kB figure of /proc/self/status.
func statusKiB(tb testing.TB, field string) int { return procStatusKiB(tb, "self", field) }

// procStatusKiB reads one kB figure of /proc/PID/status.
func procStatusKiB(tb testing.TB, pid, field string) int {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return n
		}
	}
	tb.Fatalf("no %s in /proc/self/status", field)
	return 0
}

func rssKiB(tb testing.TB) int { return statusKiB(tb, "VmRSS:") }

// BenchmarkReloadMemory: RSS after 1000 more reloads of a 1000-rule tree
// against RSS after the first reload (an edit after the initial load), with
// the same engine, reload loop and watcher as grain run.
func BenchmarkReloadMemory(b *testing.B) {
	vmtest.RequireRoot(b)
	reloads := 1000
	if s := os.Getenv("GRAIN_BENCH_RELOADS"); s != "" {
		reloads, _ = strconv.Atoi(s)
	}
	p := netns.NewPair(b)
	dir := b.TempDir()
	writeTree(b, dir, p.ServerIf, 1000, 60000)
	r := newRig(b, dir, p, 20*time.Millisecond)
	for i := 0; i < b.N; i++ {
		// The first reload: an edit after the initial load.
		writeTree(b, dir, p.ServerIf, 1000, 59999)
		if err := <-r.applied; err != nil {
			b.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond) // the reload's own FreeOSMemory
		first, firstAnon := rssKiB(b), statusKiB(b, "RssAnon:")
		worker := strconv.Itoa(r.worker.Pid())
		firstWorker := procStatusKiB(b, worker, "VmRSS:")
		for e := 1; e <= reloads; e++ {
			writeTree(b, dir, p.ServerIf, 1000, 60000+e)
			if err := <-r.applied; err != nil {
				b.Fatal(err)
			}
		}
		time.Sleep(500 * time.Millisecond)
		last, lastAnon := rssKiB(b), statusKiB(b, "RssAnon:")
		if strconv.Itoa(r.worker.Pid()) != worker {
			b.Fatal("the policy worker was restarted")
		}
		lastWorker := procStatusKiB(b, worker, "VmRSS:")
		workerGrowth := float64(lastWorker-firstWorker) / float64(firstWorker)
		b.ReportMetric(workerGrowth*100, "worker-rss-growth-%")
		fmt.Printf("| policy worker's RSS after the first reload | %.1f MiB |\n| policy worker's RSS after %d more reloads | %.1f MiB (%+.1f%%) |\n",
			float64(firstWorker)/1024, reloads, float64(lastWorker)/1024, workerGrowth*100)
		growth := float64(last-first) / float64(first)
		anonGrowth := float64(lastAnon-firstAnon) / float64(firstAnon)
		b.ReportMetric(growth*100, "rss-growth-%")
		b.ReportMetric(anonGrowth*100, "anon-growth-%")
		fmt.Printf("| RSS (anonymous) after the first reload | %.1f MiB (%.1f) |\n| RSS (anonymous) after %d more reloads | %.1f MiB (%.1f) |\n| growth | %+.1f%% (%+.1f%%) |\n",
			float64(first)/1024, float64(firstAnon)/1024, reloads, float64(last)/1024, float64(lastAnon)/1024, growth*100, anonGrowth*100)
	}
}
