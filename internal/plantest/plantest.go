// Package plantest turns a policy file's source into what the kernel side
// reads, for tests and benchmarks: load and compile, failing the test with
// the error. (It is apart from internal/vmtest, the other shared test
// helpers, because it imports codegen, which imports bpf, whose tests use
// vmtest.)
package plantest

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/policies"
)

// Load loads src as a policy file named test.cue and compiles it with
// codegen's default options.
func Load(tb testing.TB, src string) (*policies.Snapshot, *codegen.Plan) {
	tb.Helper()
	snap, err := policies.LoadBytes("test.cue", []byte(src))
	if err != nil {
		tb.Fatalf("policy: %v", err)
	}
	plan, err := codegen.Compile(snap.Policies, codegen.Options{})
	if err != nil {
		tb.Fatalf("compile: %v", err)
	}
	return snap, plan
}

// Compile is Load's Plan.
func Compile(tb testing.TB, src string) *codegen.Plan {
	tb.Helper()
	_, plan := Load(tb, src)
	return plan
}

// UDPDrop is the source of a policy name that drops UDP to port on the
// interfaces (names or patterns).
func UDPDrop(name string, port int, interfaces ...string) string {
	var quoted []string
	for _, i := range interfaces {
		quoted = append(quoted, strconv.Quote(i))
	}
	return fmt.Sprintf("%s: {xdp: interfaces: [%s], match: {protocol: \"udp\", dport: %d}, then: \"drop\"}\n",
		name, strings.Join(quoted, ", "), port)
}

// Examples compiles every example policy tree below dir (the repository's
// examples/, relative to the test's package), by the example's name.
func Examples(tb testing.TB, dir string) map[string]*codegen.Plan {
	tb.Helper()
	dirs, err := filepath.Glob(filepath.Join(dir, "*"))
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string]*codegen.Plan{}
	for _, dir := range dirs {
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			continue
		}
		snap, err := policies.Load(dir)
		if err != nil {
			tb.Fatal(err)
		}
		plan, err := codegen.Compile(snap.Policies, codegen.Options{})
		if err != nil {
			tb.Fatalf("%s: %v", dir, err)
		}
		out[filepath.Base(dir)] = plan
	}
	if len(out) == 0 {
		tb.Fatalf("no example policy trees in %s", dir)
	}
	return out
}
