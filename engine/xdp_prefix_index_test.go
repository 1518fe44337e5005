package engine

import (
	"testing"

	"github.com/cilium/ebpf"
	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/pktbuild"
	"github.com/grain-ebpf/grain/internal/plantest"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// The IPv4 prefix index (cidr_index: one entry per /16, the class of the
// longest prefix of at most 16 bits over it and which longer lengths lie
// in it) finds the longest prefix that contains an address at its edges:
// nested prefixes across the /16 boundary, a /16 exactly, a /32, /0,
// source apart from destination, and a reload that removes prefixes,
// whose stale entries in the generation it rewrites must not widen a
// match.
func TestXDPPrefixIndexEdges(t *testing.T) {
	vmtest.HostOnly(t, "BPF_PROG_TEST_RUN runs the same bytecode on the same tables on every kernel; the guests verify the program (bpf's TestVerifierInstructions)")
	e := testEngine(t)
	apply := func(src string) {
		t.Helper()
		if err := e.ApplyTables(plantest.Compile(t, src), map[string]uint32{"lo": loIndex}); err != nil {
			t.Fatal(err)
		}
	}
	type probe struct {
		src, dst string
		want     uint32
	}
	check := func(stage string, probes []probe) {
		t.Helper()
		for _, p := range probes {
			dst := p.dst
			if dst == "" {
				dst = "100.64.0.1"
			}
			f := pktbuild.TCP4(p.src, dst, 5, 80, pktbuild.ACK, nil)
			if got := runBoth(t, e, f.Bytes()); got != p.want {
				t.Errorf("%s: %s -> %s: %s, want %s", stage, p.src, dst, verdictName(got), verdictName(p.want))
			}
		}
	}

	// A /24 passed inside a dropped /8, and a /20 dropped inside that
	// /24's /16 but outside the /24; a /16 exactly; a /32; a /12 around
	// a /16 that another rule passes; a destination /24.
	first := `
pass_24: {priority: 10, xdp: interfaces: ["lo"], match: saddr: ["10.1.2.0/24"], then: "pass"}
pass_16: {priority: 11, xdp: interfaces: ["lo"], match: saddr: ["172.20.0.0/16"], then: "pass"}
drop_8: {priority: 20, xdp: interfaces: ["lo"], match: saddr: ["10.0.0.0/8", "10.1.16.0/20", "172.16.0.0/12"], then: "drop"}
drop_16: {priority: 20, xdp: interfaces: ["lo"], match: saddr: ["192.168.0.0/16"], then: "drop"}
drop_32: {priority: 20, xdp: interfaces: ["lo"], match: saddr: ["192.0.2.7/32"], then: "drop"}
drop_dst: {priority: 20, xdp: interfaces: ["lo"], match: daddr: ["198.51.100.0/24"], then: "drop"}
`
	apply(first)
	firstProbes := []probe{
		{src: "10.1.2.3", want: xdpPass},        // the /24, inside the /8
		{src: "10.1.3.3", want: xdpDrop},        // the /24's /16, outside it: the /8
		{src: "10.1.17.1", want: xdpDrop},       // the /20 under the /8
		{src: "10.200.0.1", want: xdpDrop},      // a /16 of the /8 with nothing longer
		{src: "11.0.0.1", want: xdpPass},        // beside the /8
		{src: "192.168.0.0", want: xdpDrop},     // the /16's first address
		{src: "192.168.255.255", want: xdpDrop}, // and its last
		{src: "192.167.255.255", want: xdpPass}, // the /16s around it
		{src: "192.169.0.0", want: xdpPass},
		{src: "192.0.2.7", want: xdpDrop}, // the /32
		{src: "192.0.2.6", want: xdpPass},
		{src: "192.0.2.8", want: xdpPass},
		{src: "172.20.9.9", want: xdpPass},   // the /16 passed inside the /12
		{src: "172.21.9.9", want: xdpDrop},   // the /12 beside it
		{src: "172.32.0.1", want: xdpPass},   // past the /12
		{src: "198.51.100.9", want: xdpPass}, // a destination prefix, as source
		{src: "203.0.113.1", dst: "198.51.100.9", want: xdpDrop},
		{src: "203.0.113.1", dst: "198.51.101.9", want: xdpPass},
		{src: "198.51.100.9", dst: "192.0.2.7", want: xdpPass}, // source prefixes, as destination
	}
	check("first rule set", firstProbes)

	// The next reload writes the other generation; the one after it
	// rewrites the first one's, with only the /32 and a /0 under a
	// passed /24 left: every other prefix of the first set is gone.
	apply(`every: {xdp: interfaces: ["lo"], match: saddr: ["0.0.0.0/0"], then: "drop"}
some: {priority: 10, xdp: interfaces: ["lo"], match: saddr: ["203.0.113.0/24"], then: "pass"}`)
	zeroProbes := []probe{
		{src: "1.2.3.4", want: xdpDrop},
		{src: "255.255.255.255", want: xdpDrop},
		{src: "0.0.0.0", want: xdpDrop},
		{src: "203.0.113.9", want: xdpPass},
		{src: "203.0.114.9", want: xdpDrop},
	}
	check("0.0.0.0/0", zeroProbes)
	apply(`only_32: {xdp: interfaces: ["lo"], match: saddr: ["192.0.2.7/32"], then: "drop"}`)
	check("after removing prefixes", []probe{
		{src: "192.0.2.7", want: xdpDrop},
		{src: "192.0.2.6", want: xdpPass},
		{src: "10.1.2.3", want: xdpPass},
		{src: "10.1.3.3", want: xdpPass},
		{src: "10.1.17.1", want: xdpPass},
		{src: "10.200.0.1", want: xdpPass},
		{src: "192.168.0.0", want: xdpPass},
		{src: "172.21.9.9", want: xdpPass},
		{src: "203.0.113.1", dst: "198.51.100.9", want: xdpPass},
		{src: "1.2.3.4", want: xdpPass},
	})
	// And back: the generation that held /0 is rewritten with the
	// first set, whose verdicts are as before.
	apply(first)
	check("the first rule set again", firstProbes)
}

// A grain started on maps an earlier grain pinned does not know what
// their prefix index holds: its first write of each generation zeroes
// that generation's whole part, so the earlier rule sets' entries (here
// in both generations) widen no match of its own.
func TestXDPPrefixIndexAfterRestart(t *testing.T) {
	vmtest.HostOnly(t, "BPF_PROG_TEST_RUN runs the same bytecode on the same tables on every kernel; the guests verify the program (bpf's TestVerifierInstructions)")
	vmtest.RequireRoot(t)
	pins := netns.PinDir(t)
	lo := map[string]uint32{"lo": loIndex}
	first, err := New(Options{PinPath: pins})
	if err != nil {
		t.Fatal(err)
	}
	if !first.XDP().CIDRIndexCreated() {
		t.Fatal("a grain on an empty pin directory took its prefix index from a pin")
	}
	for _, src := range []string{
		`wide: {xdp: interfaces: ["lo"], match: saddr: ["10.0.0.0/8", "10.1.2.0/24"], then: "drop"}`,
		`wide: {xdp: interfaces: ["lo"], match: saddr: ["0.0.0.0/0", "192.0.2.0/24"], then: "drop"}`,
	} {
		if err := first.ApplyTables(plantest.Compile(t, src), lo); err != nil {
			t.Fatal(err)
		}
	}
	if err := first.Release(); err != nil {
		t.Fatal(err)
	}
	e, err := New(Options{PinPath: pins})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	if e.XDP().CIDRIndexCreated() {
		t.Fatal("the restarted grain did not take the pinned prefix index")
	}
	narrow := plantest.Compile(t, `narrow: {xdp: interfaces: ["lo"], match: saddr: ["192.0.2.7/32"], then: "drop"}`)
	prog, err := e.XDP().Program()
	if err != nil {
		t.Fatal(err)
	}
	for round := range 2 { // one write of each generation
		if err := e.ApplyTables(narrow, lo); err != nil {
			t.Fatal(err)
		}
		for src, want := range map[string]uint32{"192.0.2.7": xdpDrop, "192.0.2.8": xdpPass, "10.1.2.3": xdpPass, "10.9.9.9": xdpPass, "1.2.3.4": xdpPass} {
			got, err := prog.Run(&ebpf.RunOptions{Data: pktbuild.TCP4(src, "100.64.0.1", 5, 80, pktbuild.ACK, nil).Bytes()})
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("write %d after the restart: from %s: %s, want %s", round+1, src, verdictName(got), verdictName(want))
			}
		}
	}
}
