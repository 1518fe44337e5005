package codegen

import (
	"fmt"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/policies"
)

// compileError loads src as grain check does (load, then compile) and
// returns the one error it must give.
func compileError(t *testing.T, src string) policies.Error {
	t.Helper()
	snap, err := policies.LoadBytes("limits.cue", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Compile(snap.Policies, Options{})
	list, ok := err.(policies.ErrorList)
	if !ok || len(list) != 1 {
		t.Fatalf("got %T %v, want one positioned error", err, err)
	}
	return list[0]
}

// Going over each table limit of the kernel programs is an error at the
// line and column where the tree goes over it.
func TestLimitsArePositionedErrors(t *testing.T) {
	t.Run("contents in all", func(t *testing.T) {
		// 257 policies of 4 contents: the 1025th content, the first of
		// the last policy, goes over.
		var b strings.Builder
		n := bpf.MaxContents/bpf.MaxContentsPerRule + 1
		for i := range n {
			fmt.Fprintf(&b, "p%03d: {\n\txdp: interfaces: [\"eth0\"]\n\tthen: \"drop\"\n\tmatch: payload: [\"a%d\", \"b\", \"c\", \"d\"]\n}\n", i, i)
		}
		e := compileError(t, b.String())
		want := policies.Error{Pos: policies.Position{File: "limits.cue", Line: 5*(n-1) + 4, Column: 19}, Policy: fmt.Sprintf("p%03d", n-1),
			Msg: fmt.Sprintf("too many payload contents in all packet policies: %d, at most %d; this one goes over: remove some", n*4, bpf.MaxContents)}
		if e != want {
			t.Errorf("got  %v\nwant %v", e, want)
		}
	})
	t.Run("address prefixes", func(t *testing.T) {
		// Policies of 1000 source addresses each: the one that passes
		// the limit goes over.
		n := bpf.MaxCIDREntries/1000 + 1
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "p%02d: {\n\txdp: interfaces: [\"eth0\"]\n\tthen: \"drop\"\n\tmatch: saddr: [", i)
			for j := range 1000 {
				fmt.Fprintf(&b, "\"10.%d.%d.%d\", ", i, j/256, j%256)
			}
			b.WriteString("]\n}\n")
		}
		e := compileError(t, b.String())
		want := policies.Error{Pos: policies.Position{File: "limits.cue", Line: 5*(n-1) + 1, Column: 1}, Policy: fmt.Sprintf("p%02d", n-1),
			Msg: fmt.Sprintf("match.saddr: too many distinct address prefixes in all packet policies: %d, at most %d; this policy goes over: merge prefixes into shorter ones or remove some", n*1000, bpf.MaxCIDREntries)}
		if e != want {
			t.Errorf("got  %v\nwant %v", e, want)
		}
	})
	t.Run("address rule sets", func(t *testing.T) {
		// Policy a<i> drops 10.i.0.0/16 and policy b<j> 10.i.j.0/24 for
		// every i: each /24 selects {a<i>, b<j>}, a set of rules of its
		// own, and there are more such sets than bitmaps.
		na, nb := 64, bpf.MaxCIDRClasses/64+16
		var b strings.Builder
		for i := range na {
			fmt.Fprintf(&b, "a%02d: {\n\txdp: interfaces: [\"eth0\"]\n\tthen: \"drop\"\n\tmatch: saddr: \"10.%d.0.0/16\"\n}\n", i, i)
		}
		for j := range nb {
			fmt.Fprintf(&b, "b%02d: {\n\txdp: interfaces: [\"eth0\"]\n\tthen: \"drop\"\n\tmatch: saddr: [", j)
			for i := range na {
				fmt.Fprintf(&b, "\"10.%d.%d.0/24\", ", i, j)
			}
			b.WriteString("]\n}\n")
		}
		e := compileError(t, b.String())
		want := policies.Error{Pos: policies.Position{File: "limits.cue", Line: 1, Column: 1}, Policy: "a00",
			Msg: fmt.Sprintf("address prefixes select too many distinct sets of rules in all packet policies: %d, at most %d; give prefixes that share rules one policy", na+na*nb, bpf.MaxCIDRClasses)}
		if e != want {
			t.Errorf("got  %v\nwant %v", e, want)
		}
	})
	t.Run("policies per hook", func(t *testing.T) {
		var b strings.Builder
		n := bpf.HookMaxHookRules + 1
		for i := range n {
			fmt.Fprintf(&b, "p%02d: {\n\tkprobe: \"tcp_connect\"\n\temit: event: \"c\"\n}\n", i)
		}
		e := compileError(t, b.String())
		want := policies.Error{Pos: policies.Position{File: "limits.cue", Line: 4*(n-1) + 2, Column: 10}, Policy: fmt.Sprintf("p%02d", n-1),
			Msg: fmt.Sprintf("too many policies on kprobe tcp_connect: at most %d per hook; merge some (a list of matches selects a call when any holds)", bpf.HookMaxHookRules)}
		if e != want {
			t.Errorf("got  %v\nwant %v", e, want)
		}
	})
}
