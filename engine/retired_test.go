package engine

import (
	"testing"

	"github.com/grain-ebpf/grain/engine/generation"
	"github.com/grain-ebpf/grain/internal/plantest"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// With no event reader, the names of replaced rule sets cannot pass the
// fence: they are kept up to a bound, so reloads do not grow memory.
func TestRetiredNamesAreBoundedWithoutReader(t *testing.T) {
	vmtest.HostOnly(t, "a bound kept in userspace")
	e := ownEngine(t, Options{})
	defer e.Close()
	plan := plantest.Compile(t, everyEvent)
	for range 3 * generation.MaxRetired {
		if err := e.ApplyTables(plan, map[string]uint32{"lo": loIndex}); err != nil {
			t.Fatal(err)
		}
	}
	named, retired := e.gen.Named()
	if retired != generation.MaxRetired || named > generation.MaxRetired+1 {
		t.Errorf("after %d applies: %d rule sets named, %d retired; want at most %d retired", 3*generation.MaxRetired, named, retired, generation.MaxRetired)
	}
	// The rule set in force is still named.
	if r, ok := e.rule(generation.RuleID(e.gen.Epoch(), 0)); !ok || r.Policy == "" {
		t.Errorf("the rule set in force lost its names: %+v %v", r, ok)
	}
}
