package codegen

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/bpf"
)

// indexEntry is the entry of runs for /16 slot.
func indexEntry(runs []CIDRIndexRun, slot int) (bpf.CIDRIndex, bool) {
	for _, r := range runs {
		if r.First <= slot && slot <= r.Last {
			return r.Entry.Value, true
		}
	}
	return bpf.CIDRIndex{}, false
}

// indexedRules is what the kernel finds for IPv4 address a of field f
// (src4, dst4) in plan's maps, as bpf/xdp.c's cidr_bitmap_index does: the
// rules of the longest prefix the /16's entry and cidr_class give, else
// the field's default.
func indexedRules(plan *Plan, field string, a netip.Addr) RuleSet {
	runs := plan.Maps.SourceIndex4
	if field == "dst4" {
		runs = plan.Maps.DestinationIndex4
	}
	_, classes := cidrClasses(plan.Tables.CIDRs)
	e, _ := indexEntry(runs, slash16(a))
	for k := 0; k < 16; k++ {
		if e.LongLens&(1<<k) == 0 {
			continue
		}
		p, _ := a.Prefix(32 - k)
		for _, c := range plan.Maps.CIDRs {
			key := c.Key.Value
			if key.Field == cidrFields[field] && int(key.Prefixlen) == p.Bits() && [4]byte(key.Addr[:4]) == p.Addr().As4() {
				return classes[c.Class]
			}
		}
	}
	if e.ShortClass != 0 {
		return classes[e.ShortClass-1]
	}
	return plan.Tables.CIDRDefaults[field]
}

// longestRules is the rules of the longest prefix of field in the plan's
// readable tables that contains a, else the field's default.
func longestRules(plan *Plan, field string, a netip.Addr) RuleSet {
	best, rules := -1, plan.Tables.CIDRDefaults[field]
	for _, c := range plan.Tables.CIDRs {
		p := netip.MustParsePrefix(c.Prefix)
		if c.Field == field && p.Contains(a) && p.Bits() > best {
			best, rules = p.Bits(), c.Rules
		}
	}
	return rules
}

// The index's entries at its edges: a /8 over the /16s under it and a
// /24 in one of them, a /16 exactly, a /32, /0 under everything, and the
// source and destination indexes apart.
func TestCIDRIndexEntries(t *testing.T) {
	plan, err := Compile(load(t, `
a: {priority: 0, xdp: interfaces: ["lo"], match: saddr: ["10.0.0.0/8", "0.0.0.0/0"], then: "drop"}
b: {priority: 1, xdp: interfaces: ["lo"], match: saddr: ["10.1.2.0/24", "192.168.0.0/16", "192.0.2.7/32"], then: "drop"}
c: {priority: 2, xdp: interfaces: ["lo"], match: daddr: ["198.51.100.0/24"], then: "drop"}
`), Options{})
	if err != nil {
		t.Fatal(err)
	}
	classOf := map[string]uint16{}
	classOfRules := map[string]int{}
	_, classes := cidrClasses(plan.Tables.CIDRs)
	for i, rules := range classes {
		classOfRules[fmt.Sprint(rules)] = i
	}
	for _, c := range plan.Tables.CIDRs {
		classOf[c.Prefix] = uint16(classOfRules[fmt.Sprint(c.Rules)])
	}
	slot := func(s string) int { return slash16(netip.MustParseAddr(s)) }
	for _, c := range []struct {
		name     string
		runs     []CIDRIndexRun
		slot     int
		want     bpf.CIDRIndex
		wantNone bool
	}{
		{name: "a /16 under the /8", runs: plan.Maps.SourceIndex4, slot: slot("10.200.0.0"), want: bpf.CIDRIndex{ShortClass: classOf["10.0.0.0/8"] + 1}},
		{name: "the /8's first /16", runs: plan.Maps.SourceIndex4, slot: slot("10.0.0.0"), want: bpf.CIDRIndex{ShortClass: classOf["10.0.0.0/8"] + 1}},
		{name: "the /8's last /16", runs: plan.Maps.SourceIndex4, slot: slot("10.255.0.0"), want: bpf.CIDRIndex{ShortClass: classOf["10.0.0.0/8"] + 1}},
		{name: "the /24's /16 under the /8", runs: plan.Maps.SourceIndex4, slot: slot("10.1.0.0"), want: bpf.CIDRIndex{ShortClass: classOf["10.0.0.0/8"] + 1, LongLens: 1 << (32 - 24)}},
		{name: "the /16", runs: plan.Maps.SourceIndex4, slot: slot("192.168.0.0"), want: bpf.CIDRIndex{ShortClass: classOf["192.168.0.0/16"] + 1}},
		{name: "beside the /16: the /0", runs: plan.Maps.SourceIndex4, slot: slot("192.169.0.0"), want: bpf.CIDRIndex{ShortClass: classOf["0.0.0.0/0"] + 1}},
		{name: "the /32's /16 under the /0", runs: plan.Maps.SourceIndex4, slot: slot("192.0.0.0"), want: bpf.CIDRIndex{ShortClass: classOf["0.0.0.0/0"] + 1, LongLens: 1 << 0}},
		{name: "the last /16 under the /0", runs: plan.Maps.SourceIndex4, slot: 65535, want: bpf.CIDRIndex{ShortClass: classOf["0.0.0.0/0"] + 1}},
		{name: "the destination /24", runs: plan.Maps.DestinationIndex4, slot: slot("198.51.0.0"), want: bpf.CIDRIndex{LongLens: 1 << (32 - 24)}},
		{name: "a source /16 in the destination index", runs: plan.Maps.DestinationIndex4, slot: slot("192.168.0.0"), wantNone: true},
	} {
		got, ok := indexEntry(c.runs, c.slot)
		if c.wantNone {
			if ok {
				t.Errorf("%s: entry %+v, want none", c.name, got)
			}
			continue
		}
		if got != c.want {
			t.Errorf("%s: entry %+v, want %+v", c.name, got, c.want)
		}
	}
	// The /0 and every prefix of at most 16 bits are in the index only,
	// the longer ones in cidr_class only.
	for _, c := range plan.Maps.CIDRs {
		if c.Key.Value.Prefixlen <= bpf.CIDRIndexBits {
			t.Errorf("cidr_class holds a /%d entry, which the index holds", c.Key.Value.Prefixlen)
		}
	}
	if len(plan.Maps.CIDRs) != 3 {
		t.Errorf("%d cidr_class entries, want 3 (the /24s and the /32)", len(plan.Maps.CIDRs))
	}
}

// For random lists of nested prefixes of every length, the index and
// cidr_class give every address the rules of the longest prefix that
// contains it.
func TestCIDRIndexFindsTheLongestPrefix(t *testing.T) {
	seed := rand.Uint64()
	r := rand.New(rand.NewPCG(seed, 1))
	for round := range 20 {
		// Addresses in a few /8s, so that prefixes nest and share /16s.
		addr := func() netip.Addr {
			return netip.AddrFrom4([4]byte{byte(10 + r.IntN(3)), byte(r.IntN(4)), byte(r.IntN(4)), byte(r.IntN(256))})
		}
		var b strings.Builder
		var prefixes []netip.Prefix
		for p := range 6 {
			var list []string
			for range 1 + r.IntN(8) {
				pre, _ := addr().Prefix(r.IntN(33))
				prefixes = append(prefixes, pre)
				list = append(list, fmt.Sprintf("%q", pre))
			}
			field := "saddr"
			if p%3 == 2 {
				field = "daddr"
			}
			fmt.Fprintf(&b, "p%d: {priority: %d, xdp: interfaces: [\"lo\"], match: %s: [%s], then: \"count\"}\n", p, p, field, strings.Join(list, ", "))
		}
		plan, err := Compile(load(t, b.String()), Options{})
		if err != nil {
			t.Fatalf("seed %d round %d: %v", seed, round, err)
		}
		var probes []netip.Addr
		for _, p := range prefixes {
			probes = append(probes, p.Addr(), p.Masked().Addr().Next(), addr(), lastOf(p))
		}
		for _, a := range probes {
			for _, field := range []string{"src4", "dst4"} {
				if got, want := indexedRules(plan, field, a), longestRules(plan, field, a); !slices.Equal(got, want) {
					t.Errorf("seed %d round %d: %s %s: rules %v, want %v, those of the longest prefix\n%s", seed, round, field, a, got, want, b.String())
				}
			}
		}
	}
}

// lastOf is the last address of p.
func lastOf(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	v := (uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])) | ^uint32(0)>>p.Bits()
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
