package xdp

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/internal/pktbuild"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// examplePolicy is an example's policy, attached to lo.
func examplePolicy(tb testing.TB, dir string) string {
	tb.Helper()
	src, err := os.ReadFile("../../examples/" + dir + "/policy.cue")
	if err != nil {
		tb.Fatal(err)
	}
	return strings.ReplaceAll(string(src), `["eth0"]`, `["lo"]`)
}

// BenchmarkTLSSNI measures the tls_sni match per packet (BPF_PROG_TEST_RUN,
// interleaved rounds, medians): on ClientHellos and on a packet that is no
// hello, with examples/block-sni's rule beside examples/block-http's, and
// each alone. A packet that is no hello must cost no more than 1.1× what it
// costs under block-http's rule alone.
func BenchmarkTLSSNI(b *testing.B) {
	vmtest.RequireRoot(b)
	var base baselineObjects
	if err := loadBaselineObjects(&base, nil); err != nil {
		b.Fatal(err)
	}
	defer base.Close()
	http, _, _ := grainWith(b, examplePolicy(b, "block-http"))
	both, _, bothEvents := grainWith(b, examplePolicy(b, "block-http")+"\n"+examplePolicy(b, "block-sni"))
	sni, _, sniEvents := grainWith(b, examplePolicy(b, "block-sni"))

	frame := func(payload []byte) []byte {
		return pktbuild.TCP4("10.0.0.2", "10.0.0.1", 40000, 443, pktbuild.PSH|pktbuild.ACK, payload).Bytes()
	}
	notHello := pktbuild.TCP4("10.0.0.1", "10.0.0.2", 80, 40000, pktbuild.PSH|pktbuild.ACK, []byte("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")).Bytes()
	blockedFirst := frame(pktbuild.Hello13("blocked.example", 0, 32))
	// A browser-sized hello: server_name after a post-quantum key share.
	blockedLate := frame(pktbuild.Hello13("tracker.ads.example", 5, 1216))
	allowedLate := frame(pktbuild.Hello13("www.example.org", 5, 1216))

	cases := []*measured{
		{name: "XDP_PASS only, no hello", prog: base.XdpPass, frame: notHello, want: 2},
		{name: "block-http, no hello", prog: http, frame: notHello, want: 2},
		{name: "block-http + block-sni, no hello", prog: both, frame: notHello, want: 2},
		{name: "block-sni, no hello (the gate passes it)", prog: sni, frame: notHello, want: 2},
		{name: "block-http, hello after a 1216 B key share (scanned, passed)", prog: http, frame: allowedLate, want: 2},
		{name: "block-http + block-sni, hello for another name after a 1216 B key share", prog: both, frame: allowedLate, want: 2},
		{name: "block-http + block-sni, blocked hello, name first", prog: both, frame: blockedFirst, want: 1, events: bothEvents},
		{name: "block-http + block-sni, blocked hello, name after a 1216 B key share", prog: both, frame: blockedLate, want: 1, events: bothEvents},
		{name: "block-sni, blocked hello, name first", prog: sni, frame: blockedFirst, want: 1, events: sniEvents},
	}
	const rounds, repeat = 9, 100000
	ns, wall := measure(b, cases, rounds, repeat)
	noHello := ns["block-http + block-sni, no hello"] / ns["block-http, no hello"]
	noHelloWall := wall["block-http + block-sni, no hello"] / wall["block-http, no hello"]
	b.ReportMetric(noHello, "nohello-with/without")

	var t strings.Builder
	caseTable(&t, cases, ns, wall, fmt.Sprintf("%d measurements of %d runs", rounds*b.N, repeat))
	fmt.Fprintf(&t, "\n| figure | measured | goal |\n|---|---|---|\n")
	fmt.Fprintf(&t, "| no hello: block-http + block-sni / block-http alone, kernel | %.2f× | ≤ 1.1× |\n", noHello)
	fmt.Fprintf(&t, "| no hello: the same, wall clock | %.2f× | |\n", noHelloWall)
	fmt.Fprintf(&t, "| hello for another name after a 1216 B key share: with block-sni − without, wall clock | %+.1f ns | |\n",
		wall["block-http + block-sni, hello for another name after a 1216 B key share"]-wall["block-http, hello after a 1216 B key share (scanned, passed)"])
	fmt.Println(t.String())
}
