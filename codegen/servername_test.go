package codegen

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/policies"
)

// grain check refuses more distinct tls_sni names than the packet
// program holds, at the policy that goes over.
func TestServerNameLimit(t *testing.T) {
	per := 100
	n := bpf.MaxSNIEntries/per + 1
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "p%02d: {\n\txdp: interfaces: [\"eth0\"]\n\tthen: \"drop\"\n\tmatch: tls_sni: [", i)
		for j := range per {
			fmt.Fprintf(&b, "\"h%d.n%d.example\", ", j, i)
		}
		b.WriteString("]\n}\n")
	}
	e := compileError(t, b.String())
	want := policies.Error{Pos: policies.Position{File: "limits.cue", Line: 5*(n-1) + 4, Column: 18}, Policy: fmt.Sprintf("p%02d", n-1),
		Msg: fmt.Sprintf("match.tls_sni: too many distinct server names and patterns in all packet policies: %d, the packet program holds at most %d (bpf/grain.h: GRAIN_MAX_SNI_ENTRIES); this policy goes over: use \"*.\" patterns or remove some", n*per, bpf.MaxSNIEntries)}
	if e != want {
		t.Errorf("got  %v\nwant %v", e, want)
	}
}

// A name the kernel compares in full is accepted; one byte more is
// refused, by policies (DNS) or by codegen (the C constant), which agree.
func TestServerNameLength(t *testing.T) {
	label := strings.Repeat("a", 63)
	longest := label + "." + label + "." + label + "." + strings.Repeat("b", bpf.TLSMaxName-3*64) // 253 bytes
	if len(longest) != bpf.TLSMaxName {
		t.Fatalf("the longest name is %d bytes", len(longest))
	}
	if err := checkServerNameLimit(longest); err != nil {
		t.Errorf("%d-byte name: %v", len(longest), err)
	}
	if err := checkServerNameLimit("*." + longest[2:]); err != nil {
		t.Errorf("pattern of the longest name: %v", err)
	}
	if err := checkServerNameLimit("*." + longest[1:]); err == nil {
		t.Errorf("a pattern whose shortest match is %d bytes: accepted", bpf.TLSMaxName+1)
	}
	if _, err := policies.CheckServerName(longest + "b"); err == nil {
		t.Errorf("a %d-byte name: accepted", bpf.TLSMaxName+1)
	}
}

// Each name and pattern is one class holding the rules of every pattern
// that matches all it matches; the rules without tls_sni are in every
// class and in the no-name bitmap.
func TestServerNameClasses(t *testing.T) {
	snap, err := policies.LoadBytes("sni.cue", []byte(`
a: {priority: 1, xdp: interfaces: ["eth0"], match: tls_sni: "*.example", then: "count"}
b: {priority: 2, xdp: interfaces: ["eth0"], match: tls_sni: ["x.b.example", "*.b.example"], then: "drop"}
c: {priority: 3, xdp: interfaces: ["eth0"], match: tls_sni: "B.EXAMPLE", then: "drop"}
d: {priority: 4, xdp: interfaces: ["eth0"], match: protocol: "udp", then: "drop"}
`))
	if err != nil {
		t.Fatal(err)
	}
	plan, err := Compile(snap.Policies, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]RuleSet{}
	for _, c := range plan.Tables.ServerNames {
		got[c.Pattern] = c.Rules
	}
	want := map[string]RuleSet{
		"*.example":   {0, 3},
		"*.b.example": {0, 1, 3},
		"x.b.example": {0, 1, 3},
		"b.example":   {0, 2, 3},
	}
	if len(got) != len(want) {
		t.Fatalf("classes %v, want %v", got, want)
	}
	for p, rules := range want {
		if !slices.Equal(got[p], rules) {
			t.Errorf("class %q: rules %v, want %v", p, got[p], rules)
		}
	}
	if !slices.Equal(plan.Tables.NoServerName, RuleSet{3}) {
		t.Errorf("no-name rules %v, want [3]", plan.Tables.NoServerName)
	}
	if !slices.Contains(plan.Fields, "tls_sni") {
		t.Errorf("fields %v lack tls_sni", plan.Fields)
	}
	// The key of "*.example" is the reversed ".example", without the zero
	// byte; that of a name ends in it.
	k := ServerNameKey("*.example")
	if string(k.Name[:k.Prefixlen/8-1]) != "elpmaxe." {
		t.Errorf("key of *.example: %q", k.Name[:k.Prefixlen/8-1])
	}
	k = ServerNameKey("b.example")
	if string(k.Name[:k.Prefixlen/8-1]) != "elpmaxe.b\x00" {
		t.Errorf("key of b.example: %q", k.Name[:k.Prefixlen/8-1])
	}
}
