package codegen

import (
	"slices"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/policies"
)

// Globs in xdp: interfaces, match.interface and --interface stay as
// written in the Plan; a rule's interface set is names and patterns.
func TestInterfacePatterns(t *testing.T) {
	plan, err := Compile(load(t, `
all: {xdp: interfaces: ["veth*", "eth?", "en[ps]0", "eth?"], then: "count"}
one: {priority: 1, xdp: interfaces: ["veth*", "eth?", "en[ps]0"], match: interface: "veth1", then: "drop"}
sub: {priority: 2, xdp: interfaces: ["veth*", "eth?", "en[ps]0"], match: interface: ["veth1*", "enp0"], then: "pass"}
`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	var attached []string
	for _, a := range plan.Attachments {
		attached = append(attached, a.Interface)
	}
	if want := []string{"en[ps]0", "eth?", "veth*"}; !slices.Equal(attached, want) {
		t.Errorf("attachments %v, want %v", attached, want)
	}
	if !slices.Contains(plan.Fields, "interface") {
		t.Fatalf("fields %v: rules differ in their interfaces, want the interface field", plan.Fields)
	}
	// Rules in order: one (0), sub (1), all (2). The entries hold every
	// name or pattern of a rule; the engine ORs those matching a link.
	got := map[string]RuleSet{}
	for _, e := range plan.Tables.Interfaces {
		got[e.Interface] = e.Rules
	}
	want := map[string]RuleSet{
		"en[ps]0": {2},
		"enp0":    {1}, // a name the pattern en[ps]0 selects
		"eth?":    {2},
		"veth*":   {2},
		"veth1":   {0},
		"veth1*":  {1}, // all policies attach to the same set: the pattern alone is exact
	}
	if len(got) != len(want) {
		t.Errorf("interface entries %v, want %v", got, want)
	}
	for k, v := range want {
		if !slices.Equal(got[k], v) {
			t.Errorf("entry %q: rules %v, want %v", k, got[k], v)
		}
	}

	// The same patterns everywhere: the field is not used.
	plan, err = Compile(load(t, `
a: {xdp: interfaces: ["gx*"], then: "drop"}
b: {xdp: interfaces: ["gx*"], match: interface: "gx*", then: "drop"}
`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(plan.Fields, "interface") || len(plan.Tables.Interfaces) != 0 {
		t.Errorf("fields %v, entries %v: every rule applies to gx*, want no interface lookup", plan.Fields, plan.Tables.Interfaces)
	}

	// A pattern of match.interface selecting a name of xdp: interfaces.
	plan, err = Compile(load(t, `
a: {xdp: interfaces: ["veth0", "eth0"], match: interface: "veth*", then: "drop"}
b: {xdp: interfaces: ["lo"], then: "drop"}
`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range plan.Tables.Interfaces {
		if e.Interface == "veth*" || (e.Interface == "veth0") != slices.Contains(e.Rules, 0) {
			t.Errorf("entry %v: rule a applies to veth0 only", e)
		}
	}

	// --interface takes patterns too.
	plan, err = Compile(load(t, `p: {xdp: interfaces: ["eth0"], then: "drop"}`), Options{Interfaces: []string{"gx*"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Attachments) != 1 || plan.Attachments[0].Interface != "gx*" {
		t.Errorf("attachments %v, want gx*", plan.Attachments)
	}
}

func TestInterfacePatternErrors(t *testing.T) {
	for _, c := range []struct {
		src  string
		opts Options
		want string
	}{
		{`p: {xdp: interfaces: ["eth0"], then: "drop"}`, Options{Interfaces: []string{"veth["}},
			`--interface: "veth[" is not a valid interface pattern`},
		{`p: {xdp: interfaces: ["veth*"], match: interface: "eth0", then: "drop"}`, Options{},
			"names none of the attached interfaces"},
		{`p: {xdp: interfaces: ["veth0"], match: interface: "eth*", then: "drop"}`, Options{},
			"names none of the attached interfaces"},
		{`p: {xdp: interfaces: ["veth*"], match: interface: "veth1*", then: "drop"}
q: {xdp: interfaces: ["lo"], then: "drop"}`, Options{},
			`match.interface pattern "veth1*" narrows xdp interface pattern "veth*"`},
	} {
		_, err := Compile(load(t, c.src), c.opts)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want it to contain %q", c.src, err, c.want)
		}
	}
	// The loader refuses bad patterns at their position
	// (policies.TestErrorsWithoutCUEPositionsArePositioned); Compile
	// still checks policies built in Go.
	for _, c := range []struct {
		attach, match []string
		want          string
	}{
		{[]string{"veth["}, nil, `p.go:1:1: policy p: xdp.interfaces[0]: "veth[" is not a valid interface pattern`},
		{[]string{"lo", "eth\\"}, nil, `p.go:1:1: policy p: xdp.interfaces[1]: "eth\\" is not a valid interface pattern`},
		{[]string{"lo"}, []string{"l[o"}, `p.go:1:1: policy p: match.interface[0]: "l[o" is not a valid interface pattern`},
	} {
		p := policies.Policy{Name: "p", Pos: policies.Position{File: "p.go", Line: 1, Column: 1}, Then: "drop",
			XDP: &policies.XDPHook{Interfaces: c.attach}, Match: policies.PacketMatch{Interfaces: c.match}}
		_, err := Compile([]policies.Policy{p}, Options{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q %q: error %v, want it to contain %q", c.attach, c.match, err, c.want)
		}
	}
}

func TestInterfaceMatches(t *testing.T) {
	for _, c := range []struct {
		pattern, name string
		want          bool
	}{
		{"veth*", "veth0", true},
		{"veth*", "veth", true},
		{"veth*", "eth0", false},
		{"eth?", "eth0", true},
		{"eth?", "eth10", false},
		{"en[ps]0", "enp0", true},
		{"en[ps]0", "enx0", false},
		{"eth0", "eth0", true},
		{"eth0", "eth01", false},
		{"veth[", "veth[", false}, // malformed: matches nothing
	} {
		if got := InterfaceMatches(c.pattern, c.name); got != c.want {
			t.Errorf("InterfaceMatches(%q, %q) = %v, want %v", c.pattern, c.name, got, c.want)
		}
	}
	if IsInterfacePattern("eth0") || !IsInterfacePattern("eth*") || !IsInterfacePattern("en[ps]0") {
		t.Error("IsInterfacePattern")
	}
}
