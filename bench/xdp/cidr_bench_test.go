package xdp

import (
	"fmt"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/internal/pktbuild"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// mixedPrefixes is a drop policy of n source prefixes as bench/veth/cidr.sh
// makes them: prefix i of 16 + i%17 bits in its own /16, and extra.
func mixedPrefixes(n int, extra ...string) string {
	var b strings.Builder
	b.WriteString("block: {xdp: interfaces: [\"lo\"], then: \"drop\", match: saddr: [\n")
	for i := range n {
		fmt.Fprintf(&b, "%q,\n", fmt.Sprintf("%d.%d.0.0/%d", 1+i/256, i%256, 16+i%17))
	}
	for _, p := range extra {
		fmt.Fprintf(&b, "%q,\n", p)
	}
	b.WriteString("]}\n")
	return b.String()
}

// BenchmarkPrefixIndex measures an IPv4 source address against prefix
// lists per packet (BPF_PROG_TEST_RUN, interleaved rounds, medians): the
// cases bench/veth/cidr.sh floods, and the index's worst case, an address
// whose /16 holds prefixes of all 16 lengths from /17 to /32, which costs
// one hash lookup per length.
func BenchmarkPrefixIndex(b *testing.B) {
	vmtest.RequireRoot(b)
	var base baselineObjects
	if err := loadBaselineObjects(&base, nil); err != nil {
		b.Fatal(err)
	}
	defer base.Close()
	// 50.99.128.0/17, /18, ... /32: nested, all in the /16 50.99, in which
	// the list has no other prefix.
	var nested []string
	for bits := 17; bits <= 32; bits++ {
		nested = append(nested, fmt.Sprintf("50.99.128.0/%d", bits))
	}
	one, _, _ := grainWith(b, mixedPrefixes(1))
	many, _, _ := grainWith(b, mixedPrefixes(10000))
	worst, _, _ := grainWith(b, mixedPrefixes(10000, nested...))

	from := func(src string) []byte { return pktbuild.TCP4(src, "10.0.0.1", 5, 80, pktbuild.ACK, nil).Bytes() }
	miss := from("198.18.0.7")
	lastPrefix := from("40.15.0.0") // prefix 9999, a /19
	cases := []*measured{
		{name: "XDP_PASS only", prog: base.XdpPass, frame: miss, want: 2},
		{name: "grain, 1 prefix, miss", prog: one, frame: miss, want: 2},
		{name: "grain, 10,000 mixed prefixes, miss (one array lookup)", prog: many, frame: miss, want: 2},
		{name: "grain, 10,000 mixed prefixes, hit in the last, a /19 (array + 1 hash lookup)", prog: many, frame: lastPrefix, want: 1},
		{name: "grain, + /17../32 nested in one /16, miss in that /16 (array + 16 hash lookups)", prog: worst, frame: from("50.99.0.1"), want: 2},
		{name: "grain, + /17../32 nested in one /16, hit in the /17 only (array + 16 hash lookups)", prog: worst, frame: from("50.99.200.1"), want: 1},
		{name: "grain, + /17../32 nested in one /16, hit in the /32 (array + 1 hash lookup)", prog: worst, frame: from("50.99.128.0"), want: 1},
	}
	const rounds, repeat = 9, 200000
	ns, wall := measure(b, cases, rounds, repeat)
	b.ReportMetric(wall[cases[2].name]/wall[cases[1].name], "10000/1-miss")
	var t strings.Builder
	caseTable(&t, cases, ns, wall, fmt.Sprintf("%d measurements of %d runs", rounds*b.N, repeat))
	fmt.Println(t.String())
}
