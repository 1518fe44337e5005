// Package startupbench holds the short run of the start-up benchmark
// (run.sh): one round, so that the script keeps working; the figures come
// from full runs (BENCHMARKS.md §13).
package startupbench

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/internal/vmtest"
)

// One round of run.sh starts the grain built here on a veth until it
// enforces, and reports a median for it.
func TestStartupScriptShort(t *testing.T) {
	vmtest.RequireRoot(t)
	for _, tool := range []string{"ip", "go"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is missing", tool)
		}
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	grain := filepath.Join(t.TempDir(), "grain")
	build := exec.Command("go", "build", "-o", grain, "./cmd/grain")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/grain: %v\n%s", err, out)
	}
	cmd := exec.Command("bash", "bench/startup/run.sh")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GRAIN="+grain, "ROUNDS=1")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("run.sh: %v\n%s\n%s", err, out, stderr.String())
	}
	t.Logf("%s", out)
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "grain" {
			if ms, err := strconv.ParseFloat(f[1], 64); err != nil || ms <= 0 {
				t.Errorf("grain's median %q is not a positive number of milliseconds", f[1])
			}
			return
		}
	}
	t.Errorf("no median for grain in the report")
}
