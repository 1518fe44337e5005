// Package benchscript runs the shell benchmarks under bench/ from their
// tests, in a short mode, with the grain built from this tree: the tests
// keep the scripts working; the figures come from full runs.
package benchscript

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/internal/vmtest"
)

// Run builds grain from the repository at root, runs script (a path
// relative to root) from root with env and GRAIN set to that build, and
// returns its standard output, the report. It needs root, and skips the
// test when one of tools is not installed.
func Run(t *testing.T, root, script string, tools []string, env ...string) string {
	t.Helper()
	vmtest.RequireRoot(t)
	for _, tool := range append([]string{"go"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is missing", tool)
		}
	}
	root, err := filepath.Abs(root)
	if err != nil {
		t.Fatal(err)
	}
	grain := filepath.Join(t.TempDir(), "grain")
	build := exec.Command("go", "build", "-o", grain, "./cmd/grain")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/grain: %v\n%s", err, out)
	}
	cmd := exec.Command("bash", script)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), append(env, "GRAIN="+grain)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s\n%s", script, err, out, stderr.String())
	}
	t.Logf("%s", out)
	return string(out)
}
