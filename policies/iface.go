package policies

import (
	"fmt"
	"path"

	"cuelang.org/go/cue"
)

// CheckInterfacePattern returns an error saying what is wrong when s is
// not a valid interface name or pattern (path.Match syntax: "veth*",
// "eth?", "en[ps]0").
func CheckInterfacePattern(s string) error {
	// path.Match checks the whole pattern, also past a mismatch.
	if _, err := path.Match(s, ""); err != nil {
		return fmt.Errorf("%q is not a valid interface pattern: want a name, or a shell pattern with * (any characters), ? (one character), [a-z] (one of a class) or \\ (escapes the next character); look for an unclosed [ or a trailing \\", s)
	}
	return nil
}

// interfaces reads interface names or patterns, each checked at its own
// position.
func (d *decoder) interfaces(v cue.Value, path string) []string {
	names := stringList(v)
	for i, e := range oneOrMany(v) {
		if err := CheckInterfacePattern(names[i]); err != nil {
			d.errorf(d.pos(e), elementPath(v, path, i), "%v", err)
		}
	}
	return names
}
