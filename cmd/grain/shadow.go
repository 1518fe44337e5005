package main

import (
	"fmt"
	"io"

	"github.com/grain-ebpf/grain/codegen"
)

// reportShadows prints the plan's shadowed packet policies, as warnings
// or, when strict, as errors; it reports whether they are errors.
func reportShadows(plan *codegen.Plan, strict bool, stderr io.Writer) bool {
	shadows := codegen.Shadows(plan)
	for _, s := range shadows {
		if strict {
			fmt.Fprintln(stderr, s)
			continue
		}
		fmt.Fprintf(stderr, "%s: warning: policy %s: %s\n", s.Rule.Position, s.Rule.Policy, s.Message())
	}
	return strict && len(shadows) > 0
}
