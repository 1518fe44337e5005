package policies

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"cuelang.org/go/cue/token"
)

// Error is one problem in a policy tree, positioned in the user's file.
type Error struct {
	// Pos is where the problem is; Pos.File is empty only for problems
	// that belong to no file.
	Pos Position `json:"pos"`
	// Policy names the policy the problem is in; empty for file-level
	// problems such as syntax errors.
	Policy string `json:"policy,omitempty"`
	// Msg says what is wrong and, where it can, how to fix it.
	Msg string `json:"message"`
}

func (e Error) Error() string {
	var b strings.Builder
	if e.Pos.File != "" {
		b.WriteString(e.Pos.String())
		b.WriteString(": ")
	}
	if e.Policy != "" {
		fmt.Fprintf(&b, "policy %s: ", e.Policy)
	}
	b.WriteString(e.Msg)
	return b.String()
}

// String formats p as file:line:col, leaving out what is unknown.
func (p Position) String() string {
	switch {
	case p.Line == 0:
		return p.File
	case p.Column == 0:
		return fmt.Sprintf("%s:%d", p.File, p.Line)
	}
	return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Column)
}

func comparePositions(a, b Position) int {
	return cmp.Or(
		cmp.Compare(a.File, b.File),
		cmp.Compare(a.Line, b.Line),
		cmp.Compare(a.Column, b.Column),
	)
}

func compareErrors(a, b Error) int {
	return cmp.Or(
		comparePositions(a.Pos, b.Pos),
		cmp.Compare(a.Policy, b.Policy),
		cmp.Compare(a.Msg, b.Msg),
	)
}

// ErrorList is every problem found in one load. Load returns it sorted by
// position and without duplicates.
type ErrorList []Error

// Error prints one problem per line, sorted by position.
func (l ErrorList) Error() string {
	sorted := slices.Clone(l)
	slices.SortFunc(sorted, compareErrors)
	lines := make([]string, len(sorted))
	for i, e := range sorted {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// Err returns l as an error, or nil when l is empty, so that a nil
// ErrorList never becomes a non-nil error interface.
func (l ErrorList) Err() error {
	if len(l) == 0 {
		return nil
	}
	return l
}

// normalize sorts l and removes duplicates: the same problem can be found
// through the file and through the policy that contains it.
func (l ErrorList) normalize() ErrorList {
	slices.SortFunc(l, compareErrors)
	return slices.Compact(l)
}

func positionOf(p token.Pos) Position {
	if !p.IsValid() {
		return Position{}
	}
	return Position{File: p.Filename(), Line: p.Line(), Column: p.Column()}
}
