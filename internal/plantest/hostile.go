package plantest

import (
	"fmt"
	"strings"
)

// RunawayTree is a policy file whose evaluation would take hours and
// yields nothing: no static bound catches it, only stopping the
// evaluation does.
const RunawayTree = `import "list"
runaway: [for i in list.Range(0, 4000000000, 1) if i < 0 {i}]
`

// MultiplyingTree is a policy file of n+1 short lines whose last value has
// 2^n leaves: `a0: "x"`, then `a1: [a0, a0]` … (the file that took grain
// check hours before the value bound).
func MultiplyingTree(n int) string {
	var b strings.Builder
	b.WriteString("a0: \"x\"\n")
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "a%d: [a%d, a%d]\n", i, i-1, i-1)
	}
	return b.String()
}
