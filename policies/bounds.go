package policies

import (
	"fmt"
	"os"
	"sync/atomic"

	"cuelang.org/go/cue"
)

// Bounds on a policy tree. CUE can describe values far larger than its
// source (a list of references to lists doubles with every line), so the
// source alone bounds nothing: the evaluated value is bounded too, and
// what no static bound catches (a comprehension that runs long and yields
// little) is left to the evaluation's time and memory bounds (Worker).
const (
	// MaxTreeBytes is the most .cue source a tree may hold. Measured here,
	// a tree of this size (about 9,000 short policies) loads in about 3 s;
	// grain's kernel tables hold 2,048 packet rules.
	MaxTreeBytes = 1 << 20
	// MaxTreeFiles is the most .cue files a tree may hold.
	MaxTreeFiles = 4096
	// MaxTreeValues is the most values (fields and list elements, counted
	// as evaluated, shared parts once per use) a tree may evaluate to.
	// Walking this many takes about 0.2 s here; a 1,000-rule tree is about
	// 10,000.
	MaxTreeValues = 500_000
)

// checkTreeSize refuses, before reading a byte, a tree whose files are
// larger or more numerous than the bounds.
func checkTreeSize(root string, names []string) error {
	if len(names) > MaxTreeFiles {
		return ErrorList{{Pos: Position{File: root},
			Msg: fmt.Sprintf("holds %d .cue files; a policy tree may hold at most %d: split it into several trees, or move files that are not policies out of it", len(names), MaxTreeFiles)}}
	}
	var total int64
	for _, name := range names {
		info, err := os.Stat(name)
		if err != nil {
			return fmt.Errorf("policies: %w", err)
		}
		total += info.Size()
		if total > MaxTreeBytes {
			return ErrorList{{Pos: Position{File: name},
				Msg: fmt.Sprintf("the tree's .cue files reach %d bytes with this one; a policy tree may hold at most %d bytes (%d KiB) of source: split it or shorten it", total, MaxTreeBytes, MaxTreeBytes>>10)}}
		}
	}
	return nil
}

// valueBudget counts the values a load has walked, across its files.
type valueBudget struct {
	left int
}

// spend walks v, counting every field and list element, and reports false
// once the budget is spent. The walk evaluates v as Validate would; it
// stops where the budget ends, so a value that expands without bound
// costs no more than MaxTreeValues steps.
func (b *valueBudget) spend(v cue.Value) bool {
	b.left--
	if b.left < 0 {
		return false
	}
	switch v.IncompleteKind() {
	case cue.StructKind:
		it, err := v.Fields(cue.Optional(true), cue.Definitions(true), cue.Hidden(true))
		if err != nil {
			return true // Validate reports it
		}
		for it.Next() {
			if !b.spend(it.Value()) {
				return false
			}
		}
	case cue.ListKind:
		it, err := v.List()
		if err != nil {
			return true
		}
		for it.Next() {
			if !b.spend(it.Value()) {
				return false
			}
		}
	}
	return true
}

func tooManyValues() string {
	return fmt.Sprintf("evaluates to more than %d values (fields and list elements, a shared value counted at every use); a policy tree may evaluate to at most that: look for lists or structs built from references to each other, which multiply", MaxTreeValues)
}

// progress names the file a load is evaluating, for an error that stops
// the evaluation from outside (Worker).
type progress struct {
	file atomic.Pointer[string]
}

func (p *progress) set(name string) {
	if p != nil {
		p.file.Store(&name)
	}
}

func (p *progress) current() string {
	if p == nil {
		return ""
	}
	if f := p.file.Load(); f != nil {
		return *f
	}
	return ""
}
