package hook

import (
	"fmt"
	"slices"
	"testing"

	"github.com/grain-ebpf/grain/engine/generation"
	"github.com/grain-ebpf/grain/internal/hookchild"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// Events of a replaced kernel-hook rule set are named by it however many
// rule sets followed before the reader read them; once the reader has read
// every event the replaced sets can send, their names are dropped, and
// those of the set in force are kept: the packet rules' naming (the hooks
// used to forget names after a fixed number of reloads, read or not).
func TestHookEventsOfReplacedRuleSetsKeepTheirNames(t *testing.T) {
	p := newTestHooks(t, Options{})
	var ids []uint32
	for i, name := range []string{"set_a", "set_b", "set_c", "set_d", "set_e", "set_f"} {
		applyHooks(t, p, fmt.Sprintf(`%s: {syscall: "close", args: [{index: 0, type: "int", name: "fd"}], match: args: fd: 987801, emit: {event: "close", fields: ["fd"]}}`, name))
		ids = append(ids, generation.RuleID(p.gen.Epoch(), 0))
		if i < 2 {
			hookchild.Run(t, "close 2 987801") // read only after the sets that follow
		}
	}
	var got []string
	for _, ev := range vmtest.StreamUntilDrained(t, p.StreamEvents, p.gen.Retired) {
		got = append(got, fmt.Sprint(ev["policy"]))
	}
	if want := []string{"set_a", "set_a", "set_b", "set_b"}; !slices.Equal(got, want) {
		t.Fatalf("events named %v, want %v: each by the rule set that sent it", got, want)
	}
	for i, id := range ids {
		_, known := p.probeRule(id)
		if last := i == len(ids)-1; known != last {
			t.Errorf("rule set %d of %d: named %v after the reader read every event; want only the one in force named", i+1, len(ids), known)
		}
	}
}
