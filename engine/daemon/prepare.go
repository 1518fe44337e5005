package daemon

import (
	"fmt"

	"github.com/grain-ebpf/grain/engine"
	"github.com/grain-ebpf/grain/engine/hook"
)

// Prepared is one half of a rule set (the packet rules: Engine.Prepare;
// the kernel hooks: hook.Hooks.Prepare) written into the inactive generation
// of its tables, with what it adds attached, while the rules in force stay
// what every packet and hooked call sees. Commit puts it in force (it flips
// the half's one active-generation word); Abort lets it go, detaching what
// was attached for it. Exactly one of them is called; until then the half
// is locked. A reload prepares every half before it commits any: whatever
// can fail happens before anything visible changes.
type Prepared interface {
	Commit() error
	Abort()
}

var (
	_ Prepared = (*engine.PreparedRules)(nil)
	_ Prepared = (*hook.Prepared)(nil)
)

// commitAll commits halves in order. A commit that fails has changed
// nothing of its half (Commit's contract), and the halves after it are
// aborted: then nothing is in force unless an earlier half committed,
// which the error says.
func commitAll(halves []Prepared) error {
	for i, h := range halves {
		if err := h.Commit(); err != nil {
			abortAll(halves[i+1:])
			if i > 0 {
				return fmt.Errorf("%w (after %d of the rule set's %d halves were put in force: the rules in force are a mix until the next reload succeeds)", err, i, len(halves))
			}
			return err
		}
	}
	return nil
}

// abortAll aborts halves in reverse order.
func abortAll(halves []Prepared) {
	for i := len(halves) - 1; i >= 0; i-- {
		halves[i].Abort()
	}
}
