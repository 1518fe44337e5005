package reference

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/internal/pktbuild"
	"github.com/grain-ebpf/grain/internal/testcpu"
)

// thousandRules is a 1000-rule tree: L3/L4 rules over addresses and ports,
// every tenth with a payload content, every fiftieth a count rule.
func thousandRules() string {
	var b strings.Builder
	for i := range 1000 {
		then := "drop"
		if i%50 == 0 {
			then = "count"
		}
		payload := ""
		if i%10 == 0 {
			payload = fmt.Sprintf(", payload: {contains: \"key%03d\", depth: 200}", i)
		}
		fmt.Fprintf(&b, "r%04d: {xdp: interfaces: [\"lo\"], match: {protocol: \"tcp\", saddr: \"10.%d.%d.0/24\", dport: %d%s}, then: %q}\n",
			i, i/250, i%250, 1000+i, payload, then)
	}
	return b.String()
}

// benchFrames are the frames a workload is measured with: requests with
// and without what the rules look for, at several payload sizes.
func benchFrames(thousand bool) [][]byte {
	rng := rand.New(rand.NewPCG(3, 3))
	var out [][]byte
	for i := range 32 {
		body := make([]byte, 64+rng.IntN(448))
		for j := range body {
			body[j] = "abcdefghijklmnopqrstuvwxyz /:\r\n"[rng.IntN(31)]
		}
		if !thousand {
			req := []byte("GET /index.html HTTP/1.0\r\nHost: example\r\n")
			if i%2 == 0 {
				req = []byte("GET /index.html HTTP/1.1\r\nHost: example\r\n")
			}
			out = append(out, pktbuild.TCP4("10.0.0.2", "10.0.0.1", 40000, 80, pktbuild.ACK|pktbuild.PSH, append(req, body...)).Bytes())
			continue
		}
		rule := rng.IntN(1000)
		src := fmt.Sprintf("10.%d.%d.7", rule/250, rule%250)
		dport := uint16(1000 + rule)
		if i%4 == 3 {
			dport = 80 // matches no rule
		}
		if rule%10 == 0 && i%2 == 0 {
			copy(body[rng.IntN(100):], fmt.Sprintf("key%03d", rule))
		}
		out = append(out, pktbuild.TCP4(src, "10.9.9.9", 40000, dport, pktbuild.ACK, body).Bytes())
	}
	return out
}

// BenchmarkJudge measures frames per second on one core, for
// examples/block-http and for a 1000-rule tree: the reference evaluator
// (Judge) beside the kernel's packet program under BPF_PROG_TEST_RUN, in
// the same run, rounds interleaved, medians reported. As root only the
// kernel is measured too.
//
//	go test -run '^$' -bench BenchmarkJudge -benchtime 1x ./reference/
func BenchmarkJudge(b *testing.B) {
	src, err := os.ReadFile("../examples/block-http/policy.cue")
	if err != nil {
		b.Fatal(err)
	}
	for _, w := range []struct {
		name     string
		src      string
		thousand bool
	}{
		{"block-http", strings.ReplaceAll(string(src), `"eth0"`, `"lo"`), false},
		{"rules=1000", thousandRules(), true},
	} {
		b.Run(w.name, func(b *testing.B) {
			plan := compileSource(b, w.name+".cue", w.src)
			benchWorkload(b, plan, benchFrames(w.thousand))
		})
	}
}

func benchWorkload(b *testing.B, plan *codegen.Plan, frames [][]byte) {
	testcpu.Pin(b, 0)
	p, err := NewPacket(plan, testIface)
	if err != nil {
		b.Fatal(err)
	}
	var k *kernel
	if os.Geteuid() == 0 {
		k = theKernel(b)
		k.apply(b, plan)
		for _, f := range frames { // the same verdicts, or the figures compare nothing
			if got, want := k.run(b, f), p.Judge(f, testIface).Verdict; got != want {
				b.Fatalf("frame %x: kernel %s, reference %s", f, got, want)
			}
		}
	}
	const rounds, judged, repeat = 7, 400000, 20000
	var ref, kern []float64 // frames per second, per round
	for range b.N {
		for range rounds {
			start := time.Now()
			for i := range judged {
				p.Judge(frames[i%len(frames)], testIface)
			}
			ref = append(ref, judged/time.Since(start).Seconds())
			if k == nil {
				continue
			}
			var total time.Duration
			for _, f := range frames {
				_, d, err := k.prog.Benchmark(f, repeat, nil)
				if err != nil {
					b.Fatal(err)
				}
				total += d * repeat
			}
			kern = append(kern, float64(len(frames)*repeat)/total.Seconds())
			k.drain()
		}
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(median(ref), "reference-frames/s")
	if k != nil {
		b.ReportMetric(median(kern), "kernel-frames/s")
	}
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
