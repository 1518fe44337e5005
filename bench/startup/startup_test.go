// Package startupbench holds the short run of the start-up benchmark
// (run.sh): one round, so that the script keeps working; the figures come
// from full runs (BENCHMARKS.md §13).
package startupbench

import (
	"strconv"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/internal/benchscript"
)

// One round of run.sh starts the grain built here on a veth until it
// enforces, and reports a median for it.
func TestStartupScriptShort(t *testing.T) {
	out := benchscript.Run(t, "../..", "bench/startup/run.sh", []string{"ip"}, "ROUNDS=1")
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "grain" {
			if ms, err := strconv.ParseFloat(f[1], 64); err != nil || ms <= 0 {
				t.Errorf("grain's median %q is not a positive number of milliseconds", f[1])
			}
			return
		}
	}
	t.Errorf("no median for grain in the report")
}
