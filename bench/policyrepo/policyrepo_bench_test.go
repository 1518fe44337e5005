// Package policyrepo measures the commands a policy repository's CI runs,
// as a user runs them: the grain binary on a tree of 1000 rules. `grain
// check` + `grain test` of 1000 cases beside `grain check` alone; `grain
// diff --pcap` of 1,000,000 frames beside `grain diff` without frames.
// Runs are interleaved and the median of each is reported.
package policyrepo

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/grain-ebpf/grain/pcap"
	"github.com/grain-ebpf/grain/policytest"
)

var (
	runs   = flag.Int("runs", 5, "interleaved runs of each command")
	frames = flag.Int("frames", 1_000_000, "frames in the replayed pcap")
)

const rules = 1000

func buildGrain(b *testing.B) string {
	b.Helper()
	bin := filepath.Join(b.TempDir(), "grain")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/grain").CombinedOutput(); err != nil {
		b.Fatalf("build grain: %v\n%s", err, out)
	}
	return bin
}

// writeTree writes 1000 drop rules, each on its own prefix and port, into
// dir/policies.cue, with a case per rule in dir/policies_test.cue; with
// shift, rule i takes port 1000+i+1 (what the diff replays against).
func writeTree(b *testing.B, dir string, shift int) {
	b.Helper()
	var p, t strings.Builder
	t.WriteString("tests: {\n")
	for i := range rules {
		fmt.Fprintf(&p, "r%04d: {xdp: interfaces: [\"eth0\"], match: {protocol: \"tcp\", saddr: \"10.%d.%d.0/24\", dport: %d}, then: \"drop\"}\n",
			i, i/250, i%250, 1000+i+shift)
		fmt.Fprintf(&t, "\tc%04d: {packet: {protocol: \"tcp\", saddr: \"10.%d.%d.7\", dport: %d}, expect: {verdict: \"drop\", policy: \"r%04d\"}}\n",
			i, i/250, i%250, 1000+i, i)
	}
	t.WriteString("}\n")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	for name, src := range map[string]string{"policies.cue": p.String(), "policies_test.cue": t.String()} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			b.Fatal(err)
		}
	}
}

// writeFrames writes n TCP frames, one rule's prefix and port each in
// turn, with a 64-byte payload.
func writeFrames(b *testing.B, path string, n int) {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	w, err := pcap.NewWriter(f)
	if err != nil {
		b.Fatal(err)
	}
	var built [rules][]byte
	for i := range rules {
		built[i], err = policytest.Packet{Protocol: "tcp", Saddr: fmt.Sprintf("10.%d.%d.7", i/250, i%250), Daddr: "192.0.2.1",
			Sport: 40000, Dport: 1000 + i, Payload: strings.Repeat("x", 64)}.Frame()
		if err != nil {
			b.Fatal(err)
		}
	}
	t0 := time.Unix(1_800_000_000, 0)
	for i := range n {
		if err := w.Write(t0.Add(time.Duration(i)*time.Microsecond), built[i%rules]); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
}

// timed runs the commands (each a list of grain invocations, timed
// together) interleaved, *runs times, and returns each one's median wall
// time and median CPU time (user and system, grain's and its policy
// worker's: on a busy machine the CPU time is the steadier figure).
func timed(b *testing.B, bin string, wantExit []int, cmds ...[][]string) (wall, cpu []time.Duration) {
	b.Helper()
	samples := make([][]time.Duration, len(cmds))
	cpus := make([][]time.Duration, len(cmds))
	for range *runs {
		for i, cmd := range cmds {
			start := time.Now()
			var used time.Duration
			for j, args := range cmd {
				c := exec.Command(bin, args...)
				err := c.Run()
				if c.ProcessState != nil {
					used += c.ProcessState.UserTime() + c.ProcessState.SystemTime()
				}
				code := 0
				if ee, ok := err.(*exec.ExitError); ok {
					code = ee.ExitCode()
				} else if err != nil {
					b.Fatal(err)
				}
				if code != wantExit[i] && !(j < len(cmd)-1 && code == 0) {
					b.Fatalf("grain %s: exit %d, want %d", strings.Join(args, " "), code, wantExit[i])
				}
			}
			samples[i] = append(samples[i], time.Since(start))
			cpus[i] = append(cpus[i], used)
		}
	}
	median := func(s []time.Duration) time.Duration {
		slices.Sort(s)
		return s[len(s)/2]
	}
	for i := range cmds {
		wall = append(wall, median(samples[i]))
		cpu = append(cpu, median(cpus[i]))
	}
	return wall, cpu
}

// BenchmarkCheckAndTest: grain check + grain test of 1000 rules and 1000
// cases, beside grain check alone. Goal: ≤ 2 s.
func BenchmarkCheckAndTest(b *testing.B) {
	bin := buildGrain(b)
	dir := filepath.Join(b.TempDir(), "tree")
	writeTree(b, dir, 0)
	for b.Loop() {
		d, cpu := timed(b, bin, []int{0, 0},
			[][]string{{"check", dir}},
			[][]string{{"check", dir}, {"test", dir}})
		b.ReportMetric(d[0].Seconds(), "check-s")
		b.ReportMetric(d[1].Seconds(), "check+test-s")
		b.ReportMetric(cpu[0].Seconds(), "check-cpu-s")
		b.ReportMetric(cpu[1].Seconds(), "check+test-cpu-s")
	}
}

// BenchmarkDiffPcap: grain diff --pcap of *frames frames between two
// trees of 1000 rules (every rule's port moved by one), beside grain diff
// of the same trees without frames. Goal: ≤ 5 s for 1,000,000 frames.
func BenchmarkDiffPcap(b *testing.B) {
	bin := buildGrain(b)
	tmp := b.TempDir()
	old, new := filepath.Join(tmp, "old"), filepath.Join(tmp, "new")
	writeTree(b, old, 0)
	writeTree(b, new, 1)
	frameFile := filepath.Join(tmp, "frames.pcap")
	writeFrames(b, frameFile, *frames)
	for b.Loop() {
		d, cpu := timed(b, bin, []int{1, 1},
			[][]string{{"diff", old, new}},
			[][]string{{"diff", "--pcap", frameFile, old, new}})
		b.ReportMetric(d[0].Seconds(), "diff-s")
		b.ReportMetric(d[1].Seconds(), "diff-pcap-s")
		b.ReportMetric(cpu[0].Seconds(), "diff-cpu-s")
		b.ReportMetric(cpu[1].Seconds(), "diff-pcap-cpu-s")
		b.ReportMetric(float64(*frames)/(d[1]-d[0]).Seconds(), "frames/s")
	}
}
