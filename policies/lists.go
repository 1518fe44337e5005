package policies

import (
	"fmt"

	"cuelang.org/go/cue"
)

// emptyList is the error for an empty list where values select something.
// An empty list has no single reading: as a set of addresses to block it
// selects nothing, as "no constraint" everything, and grain used to take
// it for "no constraint" in packet matches and for "nothing" in kernel-hook
// matches. A generated blocklist that happens to be empty must not become
// "drop all traffic", so an empty list is refused and the user decides.
const emptyList = "empty list: a condition needs at least one value; to match any value remove the field, and when the list is generated, leave the policy out while the list is empty"

// refuseEmptyLists reports every empty list in v, a value whose lists all
// select (a match, a syscall list, a pipeline stage), wherever it is
// nested, and reports whether there was none. Checking the values rather
// than each field keeps every list-valued condition covered, the ones
// added later too.
func (d *decoder) refuseEmptyLists(v cue.Value, path string) bool {
	ok := true
	switch v.Kind() {
	case cue.ListKind:
		it, err := v.List()
		if err != nil {
			return true
		}
		n := 0
		for ; it.Next(); n++ {
			ok = d.refuseEmptyLists(it.Value(), fmt.Sprintf("%s[%d]", path, n)) && ok
		}
		if n == 0 {
			d.errorf(d.pos(v), path, "%s", emptyList)
			return false
		}
	case cue.StructKind:
		it, err := v.Fields()
		if err != nil {
			return true
		}
		for it.Next() {
			p := it.Selector().Unquoted()
			if path != "" {
				p = path + "." + p
			}
			ok = d.refuseEmptyLists(it.Value(), p) && ok
		}
	}
	return ok
}
