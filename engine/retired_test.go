package engine

import (
	"testing"
)

// With no event reader, the names of replaced rule sets cannot pass the
// fence: they are kept up to a bound, so reloads do not grow memory.
func TestRetiredNamesAreBoundedWithoutReader(t *testing.T) {
	e := ownEngine(t, Options{})
	defer e.Close()
	plan := compilePolicy(t, everyEvent)
	for range 3 * maxRetiredRuleSets {
		if err := e.ApplyTables(plan, map[string]uint32{"lo": loIndex}); err != nil {
			t.Fatal(err)
		}
	}
	e.namesMu.RLock()
	named, retired := len(e.byEpoch), len(e.retired)
	e.namesMu.RUnlock()
	if retired != maxRetiredRuleSets || named > maxRetiredRuleSets+1 {
		t.Errorf("after %d applies: %d rule sets named, %d retired; want at most %d retired", 3*maxRetiredRuleSets, named, retired, maxRetiredRuleSets)
	}
	// The rule set in force is still named.
	if r, ok := e.rule(ruleID(e.epoch, 0)); !ok || r.Policy == "" {
		t.Errorf("the rule set in force lost its names: %+v %v", r, ok)
	}
}
