package generation

import (
	"maps"
	"slices"
)

// Tally sums counters by key (a policy, or a policy and verdict). Both
// halves keep one for the counters of rule sets no longer in the maps:
// before a generation is rewritten its counters are folded in (a grace
// period after its last reader, so they are final), and a read adds those
// of the generations still in the maps, so a policy's counts keep growing
// across reloads.
type Tally[C interface{ Plus(C) C }] map[string]C

// Add adds c to the counter of key.
func (t Tally[C]) Add(key string, c C) { t[key] = t[key].Plus(c) }

// AddAll adds every counter of o.
func (t Tally[C]) AddAll(o Tally[C]) {
	for k, c := range o {
		t.Add(k, c)
	}
}

// Sorted is the counters in the order of cmp.
func (t Tally[C]) Sorted(cmp func(a, b C) int) []C {
	return slices.SortedFunc(maps.Values(t), cmp)
}
