package reload

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/plantest"
	"github.com/grain-ebpf/grain/internal/vmtest"
	"github.com/grain-ebpf/grain/policies"
)

func buildGrain(tb testing.TB) string {
	tb.Helper()
	bin := filepath.Join(tb.TempDir(), "grain")
	if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/grain").CombinedOutput(); err != nil {
		tb.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func durations(lat []time.Duration) string {
	slices.Sort(lat)
	return fmt.Sprintf("%v | %v | %v", percentile(lat, 0.5).Round(10*time.Microsecond),
		percentile(lat, 0.99).Round(10*time.Microsecond), lat[len(lat)-1].Round(10*time.Microsecond))
}

// BenchmarkCheckMultiplyingTree: `grain check` on the 30-line file whose
// value doubles with every line (it took hours before the value bound).
func BenchmarkCheckMultiplyingTree(b *testing.B) {
	bin := buildGrain(b)
	dir := b.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "m.cue"), []byte(plantest.MultiplyingTree(29)), 0o644); err != nil {
		b.Fatal(err)
	}
	var lat []time.Duration
	for i := 0; i < b.N; i++ {
		for range 10 {
			start := time.Now()
			out, err := exec.Command(bin, "check", dir).CombinedOutput()
			lat = append(lat, time.Since(start))
			if err == nil || !strings.Contains(string(out), "evaluates to more than") {
				b.Fatalf("grain check: %v\n%s", err, out)
			}
		}
	}
	fmt.Printf("| grain check, 30-line multiplying file | %d | %s |\n", len(lat), durations(lat))
}

// BenchmarkRunawayTree runs grain (the binary) on a 1000-rule tree and drops
// a file into it whose evaluation would take hours. Meanwhile: how long
// grain status takes to answer (100 queries per round), and how long a good
// edit (the runaway file removed, a rule's port changed) takes from the
// save until grain status reports the new tree in force, 20 rounds.
func BenchmarkRunawayTree(b *testing.B) {
	vmtest.RequireRoot(b)
	bin := buildGrain(b)
	p := netns.NewPair(b)
	dir := b.TempDir()
	writeTree(b, dir, p.ServerIf, 1000, 60000)
	sock := filepath.Join(b.TempDir(), "grain.sock")
	cmd := exec.Command("ip", "netns", "exec", p.ServerNS, bin, "run", "--policies", dir, "--pin-path", netns.PinDir(b),
		"--status-socket", sock, "--stdout=false", "--eval-timeout", "1h")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var log vmtest.LockedBuffer
	lines := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			log.Write([]byte(sc.Text() + "\n"))
			select {
			case lines <- sc.Text():
			default:
			}
		}
	}()
	waitFor := func(s string) {
		deadline := time.After(60 * time.Second)
		for {
			select {
			case l := <-lines:
				if strings.Contains(l, s) {
					return
				}
			case <-deadline:
				b.Fatalf("grain did not log %q; stderr:\n%s", s, log.String())
			}
		}
	}
	waitFor("enforcing")
	status := func() (string, time.Duration) {
		start := time.Now()
		c, err := net.DialTimeout("unix", sock, 5*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		var st struct {
			Hash string `json:"policy_hash"`
		}
		if err := json.NewDecoder(c).Decode(&st); err != nil {
			b.Fatal(err)
		}
		return st.Hash, time.Since(start)
	}
	runaway := filepath.Join(dir, "runaway.cue")
	var statusLat, editLat, baseLat []time.Duration
	// edit saves a good edit and times it until grain status reports it in
	// force.
	edit := func(port int) time.Duration {
		start := time.Now()
		os.Remove(runaway)
		writeTree(b, dir, p.ServerIf, 1000, port)
		want, err := policies.TreeHash(dir)
		if err != nil {
			b.Fatal(err)
		}
		for {
			if h, _ := status(); h == want {
				return time.Since(start)
			}
			if time.Since(start) > 30*time.Second {
				b.Fatalf("edit to port %d not in force after 30 s", port)
			}
			time.Sleep(500 * time.Microsecond)
		}
	}
	for i := 0; i < b.N; i++ {
		for round := range 20 {
			// The same edit with no runaway evaluation, timed the same
			// way: the baseline, interleaved.
			baseLat = append(baseLat, edit(62000+round))
			waitFor("policies applied")
			if err := os.WriteFile(runaway, []byte(plantest.RunawayTree), 0o644); err != nil {
				b.Fatal(err)
			}
			waitFor("loading policies")
			for range 100 {
				_, d := status()
				statusLat = append(statusLat, d)
				time.Sleep(time.Millisecond)
			}
			editLat = append(editLat, edit(61000+round))
			waitFor("policies applied")
		}
	}
	fmt.Printf("| good edit, no runaway evaluation, save to in force (1000 rules) | %d | %s |\n", len(baseLat), durations(baseLat))
	fmt.Printf("| grain status during the runaway evaluation | %d | %s |\n", len(statusLat), durations(statusLat))
	fmt.Printf("| good edit during it, save to in force (1000 rules) | %d | %s |\n", len(editLat), durations(editLat))
}
