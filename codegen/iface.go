package codegen

import (
	"path"
	"strings"

	"github.com/grain-ebpf/grain/policies"
)

// Interfaces in policies and in --interface are names or shell patterns in
// path.Match syntax: "veth*", "eth?", "en[ps]0". A Plan keeps them as
// written; the engine resolves them against the links that exist, and again
// whenever a link appears or goes.

// IsInterfacePattern reports whether s is a pattern rather than a plain
// interface name.
func IsInterfacePattern(s string) bool { return strings.ContainsAny(s, `*?[\`) }

// InterfaceMatches reports whether the interface called name is selected by
// pattern (a plain name selects only itself).
func InterfaceMatches(pattern, name string) bool {
	ok, err := path.Match(pattern, name)
	return err == nil && ok
}

// CheckInterfacePattern returns an error saying what is wrong when s is not
// a valid name or pattern (policies.CheckInterfacePattern, which the policy
// loader applies to policies; Compile applies it to Options.Interfaces).
func CheckInterfacePattern(s string) error { return policies.CheckInterfacePattern(s) }
