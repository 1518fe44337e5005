package reference

import (
	"math/rand/v2"
	"os"
	"testing"

	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/internal/testcpu"
)

// fuzzSets are the policy sets FuzzJudge judges by, chosen by the first
// byte of its input: examples/block-http, random sets (one with gates, one
// of more than 64 rules), all drawn from fixed seeds.
func fuzzSets(t testing.TB) []string {
	sets := []string{`block_http: {
	xdp: interfaces: ["lo"]
	match: {protocol: "tcp", payload: "HTTP/1.1"}
	then: "drop"
	emit: {event: "http_blocked", fields: ["saddr", "daddr", "sport"], dedup: "0s"}
}
`}
	for i, c := range []struct {
		n    int
		gate bool
	}{{24, false}, {12, true}, {90, false}} {
		sets = append(sets, randomPolicies(rand.New(rand.NewPCG(17, uint64(i))), c.n, c.gate).src)
	}
	return sets
}

// FuzzJudge judges arbitrary frames. As root it compares every one with
// the real packet program (verdict, rule counters, stats, events); without
// root it checks that Judge answers consistently and does not panic. Its
// seed corpus (random frames of every shape, and edge cases) runs in every
// go test; go test -fuzz=FuzzJudge ./reference/ explores further.
func FuzzJudge(f *testing.F) {
	rng := rand.New(rand.NewPCG(1, 1))
	for i := range 64 {
		f.Add(uint8(i/16), randomFrame(rng)) // few set changes: each is an apply
	}
	for _, b := range [][]byte{nil, make([]byte, 13), make([]byte, 14), make([]byte, 54)} {
		f.Add(uint8(0), b)
	}
	sets := fuzzSets(f)
	var d *differ
	var packets []*Packet
	var plans []*codegen.Plan
	for _, src := range sets {
		plan := compileSource(f, "fuzz.cue", src)
		p, err := NewPacket(plan, testIface)
		if err != nil {
			f.Fatal(err)
		}
		packets, plans = append(packets, p), append(plans, plan)
	}
	current := -1
	f.Fuzz(func(t *testing.T, set uint8, frame []byte) {
		i := int(set) % len(sets)
		r := packets[i].Judge(frame, testIface)
		if (r.Stat == Judged) != (r.Unjudged == "") || r.Verdict == Drop && r.Policy == "" || (r.Policy == "") != (r.Rule < 0) ||
			r.Gated && (r.Verdict != Pass || r.Stat != Judged) {
			t.Fatalf("inconsistent result: %s", describe(r))
		}
		if len(frame) < 14 || os.Geteuid() != 0 {
			return // the kernel's test run refuses a frame shorter than an Ethernet header
		}
		testcpu.Pin(t, 0)
		if d == nil {
			d = &differ{k: theKernel(t)}
		}
		d.t, d.reports = t, 0
		if current != i {
			d.use(i, sets[i], plans[i])
			current = i
		}
		d.check([][]byte{frame})
	})
}
