package codegen

import (
	"bytes"
	"flag"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/policies"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

func load(t *testing.T, src string) []policies.Policy {
	t.Helper()
	snap, err := policies.LoadBytes("test.cue", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return snap.Policies
}

// TestGoldenExamples compiles every example and compares the Plan with its
// golden file (go test ./codegen -update rewrites them).
func TestGoldenExamples(t *testing.T) {
	dirs, err := filepath.Glob("../examples/*")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no examples: %v", err)
	}
	for _, dir := range dirs {
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			continue // examples_test.go and the like
		}
		name := filepath.Base(dir)
		t.Run(name, func(t *testing.T) {
			snap, err := policies.Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			plan, err := Compile(snap.Policies, Options{})
			if err != nil {
				t.Fatal(err)
			}
			got, err := plan.JSON()
			if err != nil {
				t.Fatal(err)
			}
			golden := filepath.Join("testdata", name+".golden.json")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./codegen -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("plan of %s differs from %s (run go test ./codegen -update and review the diff):\n%s", dir, golden, got)
			}
		})
	}
}

// The same policies in any order give a byte-identical plan.
func TestDeterministic(t *testing.T) {
	ps := load(t, `
a: {xdp: interfaces: ["eth0", "eth1"], match: {saddr: ["10.0.0.0/8", "fd00::/8"], dport: "1-100"}, then: "drop"}
b: {priority: 3, xdp: interfaces: ["eth1"], match: {payload: ["x", {contains: "y", nocase: true}]}, then: "count"}
c: {priority: 3, xdp: interfaces: ["eth0"], match: {tcp_flags: ["syn"], sport: [1, 2, 3]}, then: "pass"}
`)
	first, err := Compile(ps, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want, _ := first.JSON()
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 20; i++ {
		shuffled := slices.Clone(ps)
		r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		plan, err := Compile(shuffled, Options{})
		if err != nil {
			t.Fatal(err)
		}
		got, _ := plan.JSON()
		if !bytes.Equal(got, want) {
			t.Fatalf("plan changed with input order")
		}
	}
}

// Rule order: priority ascending, then name; the index is the bit.
func TestRuleOrder(t *testing.T) {
	plan, err := Compile(load(t, `
zeta:  {priority: 1, xdp: interfaces: ["lo"], then: "drop"}
alpha: {priority: 2, xdp: interfaces: ["lo"], then: "drop"}
beta:  {priority: 2, xdp: interfaces: ["lo"], then: "pass"}
dflt:  {xdp: interfaces: ["lo"], then: "count"}
`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for i, r := range plan.Rules {
		if r.Index != i {
			t.Errorf("rule %s has index %d at position %d", r.Policy, r.Index, i)
		}
		names = append(names, r.Policy)
	}
	if want := []string{"zeta", "alpha", "beta", "dflt"}; !slices.Equal(names, want) {
		t.Errorf("order %v, want %v", names, want)
	}
}

func TestBitmaps(t *testing.T) {
	plan, err := Compile(load(t, `
r0: {priority: 0, xdp: interfaces: ["lo"], match: {saddr: "10.0.0.0/8"}, then: "drop"}
r1: {priority: 1, xdp: interfaces: ["lo"], match: {saddr: "10.1.0.0/16", dport: "80-89"}, then: "drop"}
r2: {priority: 2, xdp: interfaces: ["lo"], match: {dport: 85}, then: "drop"}
r3: {priority: 3, xdp: interfaces: ["lo"], match: {saddr: "fd00::/8"}, then: "drop"}
`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	tb := plan.Tables
	cidrs := map[string]RuleSet{}
	for _, c := range tb.CIDRs {
		cidrs[c.Field+" "+c.Prefix] = c.Rules
	}
	// A /16 inside the /8 carries both rules, plus rules without a source.
	if got := cidrs["src4 10.1.0.0/16"]; !slices.Equal(got, RuleSet{0, 1, 2}) {
		t.Errorf("10.1.0.0/16 -> %v, want [0 1 2]", got)
	}
	if got := cidrs["src4 10.0.0.0/8"]; !slices.Equal(got, RuleSet{0, 2}) {
		t.Errorf("10.0.0.0/8 -> %v, want [0 2]", got)
	}
	if got := tb.CIDRDefaults["src4"]; !slices.Equal(got, RuleSet{2}) {
		t.Errorf("src4 default %v, want [2]", got)
	}
	if got := tb.CIDRDefaults["src6"]; !slices.Equal(got, RuleSet{2}) {
		t.Errorf("src6 default %v, want [2]", got)
	}
	if got := tb.PrefixLengths["src4"]; !slices.Equal(got, []int{16, 8}) {
		t.Errorf("src4 prefix lengths %v, want longest first [16 8]", got)
	}
	classes := map[[2]int]RuleSet{}
	for _, c := range tb.DestinationPorts {
		classes[[2]int{c.First, c.Last}] = c.Rules
	}
	want := map[[2]int]RuleSet{{0, 79}: {0, 3}, {80, 84}: {0, 1, 3}, {85, 85}: {0, 1, 2, 3}, {86, 89}: {0, 1, 3}, {90, 65535}: {0, 3}}
	for k, v := range want {
		if !slices.Equal(classes[k], v) {
			t.Errorf("dport class %v -> %v, want %v (all %v)", k, classes[k], v, classes)
		}
	}
	if !slices.Equal(plan.Fields, []string{"protocol", "saddr", "dport"}) {
		t.Errorf("fields %v", plan.Fields)
	}
}

// Prefixes that select the same rules share one class, whose one bitmap
// holds those rules: a long block list costs one bitmap.
func TestPrefixesShareClasses(t *testing.T) {
	plan, err := Compile(load(t, `
a: {priority: 0, xdp: interfaces: ["lo"], match: {saddr: ["10.0.0.0/8", "192.168.0.0/16", "172.16.0.0/12"]}, then: "drop"}
b: {priority: 1, xdp: interfaces: ["lo"], match: {saddr: ["10.1.0.0/16", "192.0.2.0/24"]}, then: "drop"}
`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	classOf := map[string]uint32{}
	for _, e := range plan.Maps.CIDRs {
		k := e.Key.Value
		classOf[netip.PrefixFrom(netip.AddrFrom4([4]byte(k.Addr[:4])), int(k.Prefixlen)).String()] = e.Class
	}
	for _, c := range plan.Tables.CIDRs {
		p := netip.MustParsePrefix(c.Prefix)
		if p.Bits() > bpf.CIDRIndexBits {
			continue
		}
		// Its class is in the index entries of its /16s.
		if e, ok := indexEntry(plan.Maps.SourceIndex4, slash16(p.Addr())); ok && e.ShortClass != 0 {
			classOf[c.Prefix] = uint32(e.ShortClass - 1)
		}
	}
	// 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16: {a}; 192.0.2.0/24: {b};
	// 10.1.0.0/16: {a, b}.
	same := [][]string{{"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"}, {"192.0.2.0/24"}, {"10.1.0.0/16"}}
	seen := map[uint32]bool{}
	for _, group := range same {
		c := classOf[group[0]]
		if seen[c] {
			t.Errorf("%s shares class %d with prefixes of other rules (%v)", group[0], c, classOf)
		}
		seen[c] = true
		for _, p := range group[1:] {
			if classOf[p] != c {
				t.Errorf("%s: class %d, want %d, the class of %s (%v)", p, classOf[p], c, group[0], classOf)
			}
		}
	}
	if len(seen) != 3 {
		t.Errorf("%d classes, want 3: %v", len(seen), classOf)
	}
}

func TestCompileErrors(t *testing.T) {
	for _, c := range []struct{ src, want string }{
		{`p: {xdp: interfaces: ["lo"], match: payload: ["a", "b", "c", "d", "e"], then: "drop"}`, "test.cue:1:67: policy p: at most 4 payload contents"},
		{`p: {xdp: interfaces: ["lo"], match: payload: {contains: "abc", offset: 1499}, then: "drop"}`, "could never match"},
		{`p: {xdp: interfaces: ["lo"], match: interface: "eth9", then: "drop"}`, "names none of the attached interfaces"},
		{`p: {xdp: interfaces: [], then: "drop"}`, "no interface to attach to"},
		{`p: {xdp: interfaces: ["lo"], match: payload: "` + strings.Repeat("x", 65) + `", then: "drop"}`, "patterns hold 1 to 64 bytes"},
	} {
		_, err := Compile(load(t, c.src), Options{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want it to contain %q", c.src, err, c.want)
		}
	}
}

func TestInterfaceOverride(t *testing.T) {
	plan, err := Compile(load(t, `p: {xdp: interfaces: ["eth0"], then: "drop"}`), Options{Interfaces: []string{"veth0"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Attachments) != 1 || plan.Attachments[0].Interface != "veth0" {
		t.Errorf("attachments %v, want veth0 only", plan.Attachments)
	}
}

func TestPrefilterPicksRareBytes(t *testing.T) {
	if got := prefilterPositions([]byte("HTTP/1.1"), false); got != [2]int{4, 6} {
		t.Errorf("HTTP/1.1 prefilter %v, want the '/' and '.' positions [4 6]", got)
	}
	if got := prefilterPositions([]byte("x"), false); got != [2]int{0, 0} {
		t.Errorf("one-byte pattern prefilter %v", got)
	}
}

// The port classes and address entries of random rule sets hold exactly
// the rules a brute-force check finds: every rule whose ranges cover the
// class's ports (or that has none), every rule with a prefix containing the
// entry (or none for that family and direction).
func TestTablesMatchBruteForce(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 9))
	for round := range 20 {
		var ps []policies.Policy
		for i := range 60 {
			p := policies.Policy{Name: "r" + string(rune('a'+i/26)) + string(rune('a'+i%26)), Priority: 1000,
				XDP: &policies.XDPHook{Interfaces: []string{"eth0"}}, Then: "drop"}
			p.Match.Protocols = []string{"tcp"}
			for range rng.IntN(3) {
				a := uint16(rng.IntN(2000))
				p.Match.DestinationPorts = append(p.Match.DestinationPorts, policies.PortRange{First: a, Last: a + uint16(rng.IntN(300))})
			}
			for range rng.IntN(3) {
				bits := []int{8, 16, 24, 32}[rng.IntN(4)]
				addr := netip.AddrFrom4([4]byte{10, byte(rng.IntN(3)), byte(rng.IntN(3)), byte(rng.IntN(3))})
				pfx, _ := addr.Prefix(bits)
				p.Match.SourceCIDRs = append(p.Match.SourceCIDRs, pfx.String())
			}
			ps = append(ps, p)
		}
		plan, err := Compile(ps, Options{})
		if err != nil {
			t.Fatal(err)
		}
		byName := map[string]policies.Policy{}
		for _, p := range ps {
			byName[p.Name] = p
		}
		rules := make([]policies.Policy, len(plan.Rules))
		for _, r := range plan.Rules {
			rules[r.Index] = byName[r.Policy]
		}
		for _, c := range plan.Tables.DestinationPorts {
			for _, port := range []int{c.First, c.Last, (c.First + c.Last) / 2} {
				var want RuleSet = RuleSet{}
				for i, r := range rules {
					if len(r.Match.DestinationPorts) == 0 || slices.ContainsFunc(r.Match.DestinationPorts, func(pr policies.PortRange) bool {
						return int(pr.First) <= port && port <= int(pr.Last)
					}) {
						want = append(want, i)
					}
				}
				if !slices.Equal(c.Rules, want) {
					t.Fatalf("round %d: port %d (class %d-%d): rules %v, want %v", round, port, c.First, c.Last, c.Rules, want)
				}
			}
		}
		for _, c := range plan.Tables.CIDRs {
			if c.Field != "src4" {
				continue
			}
			entry := netip.MustParsePrefix(c.Prefix)
			var want RuleSet = RuleSet{}
			for i, r := range rules {
				if len(r.Match.SourceCIDRs) == 0 || slices.ContainsFunc(r.Match.SourceCIDRs, func(s string) bool {
					p := netip.MustParsePrefix(s)
					return p.Bits() <= entry.Bits() && p.Contains(entry.Addr())
				}) {
					want = append(want, i)
				}
			}
			if !slices.Equal(c.Rules, want) {
				t.Fatalf("round %d: prefix %s: rules %v, want %v", round, c.Prefix, c.Rules, want)
			}
		}
	}
}
