package codegen

import (
	"fmt"
	"maps"
	"math/bits"
	"slices"
)

// Shadow is a packet rule no packet can reach: an earlier terminal rule
// (drop or pass, in rule order) matches every packet it matches, so it
// never decides, counts or sends an event.
type Shadow struct {
	Rule Rule // the rule that is never reached
	By   Rule // the first earlier terminal rule that matches all it does
}

// String says where, what is wrong and what to do, as grain's errors do.
func (s Shadow) String() string {
	return fmt.Sprintf("%s: policy %s: %s", s.Rule.Position, s.Rule.Policy, s.Message())
}

// Message says what is wrong and what to do.
func (s Shadow) Message() string {
	does := map[string]string{"drop": "drops", "pass": "passes"}[s.By.Action]
	if s.By.Monitor && s.By.Action == "drop" {
		does = "drops (monitored)"
	}
	return fmt.Sprintf("never sees a packet: policy %s (%s) comes first in rule order, %s, and matches every packet it matches: give it a priority below %d (lower runs first) or remove it",
		s.By.Policy, s.By.Position, does, s.By.Priority)
}

// Shadows finds the plan's shadowed packet rules.
//
// The test works on the compiled tables, the same the kernel reads: each
// field's table splits that field's values into classes (protocol
// numbers, flag bytes, port runs, address prefixes, interfaces) and lists
// the rules each class admits. Rule A matches every packet rule B matches
// on these fields when A is listed in every class B is: the program ANDs
// one class per field. Payload contents are not compared as languages:
// only an A whose every content is also one of B's counts, so a rule is
// reported only when it is certainly shadowed.
func Shadows(plan *Plan) []Shadow {
	n := len(plan.Rules)
	if n < 2 {
		return nil
	}
	words := (n + 63) / 64
	// covers[b] ends up holding every rule listed in all the classes b is.
	covers := make([]uint64, n*words)
	for i := range covers {
		covers[i] = ^uint64(0)
	}
	set := make([]uint64, words)
	meet := func(rules RuleSet) {
		clear(set)
		for _, r := range rules {
			set[r/64] |= 1 << (r % 64)
		}
		for _, b := range rules {
			row := covers[b*words : (b+1)*words]
			for w := range row {
				row[w] &= set[w]
			}
		}
	}
	t := &plan.Tables
	meet(t.Protocol.Default)
	for _, e := range t.Protocol.Entries {
		meet(e.Rules)
	}
	meet(t.TCPFlags.Default)
	for _, e := range t.TCPFlags.Entries {
		meet(e.Rules)
	}
	meet(t.NotTCP)
	meet(t.NoPorts)
	for _, c := range t.SourcePorts {
		meet(c.Rules)
	}
	for _, c := range t.DestinationPorts {
		meet(c.Rules)
	}
	for _, c := range t.CIDRs {
		meet(c.Rules)
	}
	for _, field := range slices.Sorted(maps.Keys(t.CIDRDefaults)) {
		meet(t.CIDRDefaults[field])
	}
	for _, e := range t.Interfaces {
		meet(e.Rules)
	}
	meet(t.InterfaceDefault)

	var out []Shadow
	for b, rb := range plan.Rules {
		row := covers[b*words : (b+1)*words]
		for w, word := range row {
			for word != 0 {
				a := w*64 + bits.TrailingZeros64(word)
				word &= word - 1
				if a >= b {
					break
				}
				ra := plan.Rules[a]
				if (ra.Action == "drop" || ra.Action == "pass") && contentsImplied(plan, ra, rb) {
					out = append(out, Shadow{Rule: rb, By: ra})
					goto next
				}
			}
		}
	next:
	}
	return out
}

// contentsImplied reports whether every packet that satisfies b's payload
// contents satisfies a's: certainly so when each of a's contents is one
// of b's.
func contentsImplied(plan *Plan, a, b Rule) bool {
	for _, ca := range a.Contents {
		if !slices.ContainsFunc(b.Contents, func(cb int) bool { return sameContent(plan.Contents[ca], plan.Contents[cb]) }) {
			return false
		}
	}
	return true
}

func sameContent(x, y Content) bool {
	return slices.Equal(x.Pattern, y.Pattern) && slices.Equal(x.Mask, y.Mask) && x.Offset == y.Offset &&
		x.End == y.End && x.NoCase == y.NoCase && x.Negate == y.Negate && x.Anchored == y.Anchored
}
