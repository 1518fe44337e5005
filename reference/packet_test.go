package reference

import (
	"net/netip"
	"os"
	"testing"

	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/internal/pktbuild"
	"github.com/grain-ebpf/grain/internal/plantest"
)

func examplePlan(t testing.TB, dir string) *codegen.Plan {
	t.Helper()
	src, err := os.ReadFile("../examples/" + dir + "/policy.cue")
	if err != nil {
		t.Fatal(err)
	}
	return plantest.Compile(t, string(src))
}

func newPacket(t testing.TB, plan *codegen.Plan) *Packet {
	t.Helper()
	p, err := NewPacket(plan, "eth0")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// examples/block-http drops HTTP/1.1 over TCP and reports who sent it.
func TestJudgeBlockHTTP(t *testing.T) {
	p := newPacket(t, examplePlan(t, "block-http"))
	frame := pktbuild.TCP4("10.0.0.2", "10.0.0.1", 40000, 80, pktbuild.ACK|pktbuild.PSH,
		[]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")).Bytes()
	r := p.Judge(frame, "eth0")
	if r.Verdict != Drop || r.Policy != "block_http" || r.Stat != Judged || r.Gated {
		t.Fatalf("HTTP/1.1: verdict %s by %q (stat %s, gated %v), want drop by block_http", r.Verdict, r.Policy, r.Stat, r.Gated)
	}
	if len(r.Events) != 1 {
		t.Fatalf("%d events, want 1", len(r.Events))
	}
	got := r.Events[0].Fields()
	want := []Field{
		{"saddr", netip.MustParseAddr("10.0.0.2")}, {"daddr", netip.MustParseAddr("10.0.0.1")},
		{"sport", uint64(40000)}, {"dport", uint64(80)}, {"interface", "eth0"}, {"verdict", "drop"},
	}
	if len(got) != len(want) {
		t.Fatalf("event fields %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("event field %d: %v, want %v", i, got[i], want[i])
		}
	}
	if ev := r.Events[0]; ev.Name != "http_blocked" || ev.Policy != "block_http" {
		t.Errorf("event %q of %q, want http_blocked of block_http", ev.Name, ev.Policy)
	}

	for _, c := range []struct {
		name  string
		frame []byte
		stat  Stat
	}{
		{"HTTP/1.0", pktbuild.TCP4("10.0.0.2", "10.0.0.1", 40000, 80, pktbuild.ACK, []byte("GET / HTTP/1.0\r\n")).Bytes(), Judged},
		{"UDP", pktbuild.Frame{Src: netip.MustParseAddr("10.0.0.2"), Dst: netip.MustParseAddr("10.0.0.1"), Protocol: 17,
			SPort: 1, DPort: 2, Payload: []byte("GET / HTTP/1.1\r\n")}.Bytes(), Judged},
		{"ARP", pktbuild.ARP().Bytes(), NotIP},
		{"truncated", pktbuild.Frame{Src: netip.MustParseAddr("10.0.0.2"), Dst: netip.MustParseAddr("10.0.0.1"), Protocol: 6,
			VLANs: []uint16{7}, Truncate: 30}.Bytes(), Malformed},
	} {
		r := p.Judge(c.frame, "eth0")
		if r.Verdict != Pass || r.Policy != "" || len(r.Events) != 0 || r.Stat != c.stat {
			t.Errorf("%s: verdict %s by %q, %d events, stat %s; want pass by none, no event, stat %s",
				c.name, r.Verdict, r.Policy, len(r.Events), r.Stat, c.stat)
		}
		if (c.stat == Judged) == (r.Unjudged != "") {
			t.Errorf("%s: unjudged %q with stat %s", c.name, r.Unjudged, r.Stat)
		}
	}
}

// Count policies count and let later rules decide; the first drop or pass
// decides.
func TestJudgeCountThenDecide(t *testing.T) {
	p := newPacket(t, plantest.Compile(t, `
count_web: {priority: 1, xdp: interfaces: ["eth0"], match: {protocol: "tcp", dport: 80}, then: "count",
	emit: {event: "web", fields: ["dport", "tcp_flags"], dedup: "0s"}}
let_admin: {priority: 2, xdp: interfaces: ["eth0"], match: {saddr: "10.1.0.0/16"}, then: "pass"}
drop_web: {priority: 3, xdp: interfaces: ["eth*"], match: {dport: "80-90"}, then: "drop"}
`))
	web := pktbuild.TCP4("10.2.0.1", "10.0.0.1", 1234, 80, pktbuild.SYN, nil).Bytes()
	r := p.Judge(web, "eth0")
	if r.Verdict != Drop || r.Policy != "drop_web" || len(r.Counted) != 1 || r.Counted[0] != "count_web" {
		t.Fatalf("web: %s by %q, counted %v; want drop by drop_web, counted [count_web]", r.Verdict, r.Policy, r.Counted)
	}
	if len(r.Events) != 1 || r.Events[0].Fields()[1] != (Field{"tcp_flags", "syn"}) {
		t.Fatalf("web: events %+v, want count_web's with tcp_flags syn", r.Events)
	}
	admin := pktbuild.TCP4("10.1.0.1", "10.0.0.1", 1234, 80, pktbuild.SYN, nil).Bytes()
	if r := p.Judge(admin, "eth0"); r.Verdict != Pass || r.Policy != "let_admin" {
		t.Fatalf("admin: %s by %q, want pass by let_admin", r.Verdict, r.Policy)
	}
	// eth1 matches only drop_web's pattern.
	if r := p.Judge(web, "eth1"); r.Verdict != Drop || r.Policy != "drop_web" || len(r.Counted) != 0 {
		t.Fatalf("eth1: %s by %q counted %v, want drop by drop_web, nothing counted", r.Verdict, r.Policy, r.Counted)
	}
	if r := p.Judge(web, "lo"); r.Verdict != Pass || r.Policy != "" {
		t.Fatalf("lo: %s by %q, want pass by none", r.Verdict, r.Policy)
	}
}

// Judge allocates nothing, whatever the packet.
func TestJudgeAllocatesNothing(t *testing.T) {
	p := newPacket(t, examplePlan(t, "block-http"))
	frames := [][]byte{
		pktbuild.TCP4("10.0.0.2", "10.0.0.1", 40000, 80, pktbuild.ACK, []byte("GET / HTTP/1.1\r\n")).Bytes(),
		pktbuild.TCP4("10.0.0.2", "10.0.0.1", 40000, 80, pktbuild.ACK, []byte("GET / HTTP/1.0\r\n")).Bytes(),
		pktbuild.ARP().Bytes(),
	}
	p.Judge(frames[0], "eth0")
	if n := testing.AllocsPerRun(100, func() {
		for _, f := range frames {
			p.Judge(f, "eth0")
		}
	}); n != 0 {
		t.Fatalf("%v allocations per run, want 0", n)
	}
}

// A drop policy in monitor mode decides as a drop would (a later drop rule
// does not see the packet), the packet passes, and its event says
// would_drop.
func TestJudgeMonitorMode(t *testing.T) {
	p := newPacket(t, plantest.Compile(t, `
watch_http: {priority: 1, mode: "monitor", xdp: interfaces: ["eth0"], match: {protocol: "tcp", payload: "HTTP/1.1"}, then: "drop", emit: event: "would_block"}
drop_tcp: {priority: 2, xdp: interfaces: ["eth0"], match: protocol: "tcp", then: "drop"}
`))
	frame := pktbuild.TCP4("10.0.0.2", "10.0.0.1", 40000, 80, pktbuild.ACK, []byte("GET / HTTP/1.1\r\n")).Bytes()
	r := p.Judge(frame, "eth0")
	if r.Verdict != WouldDrop || r.Verdict.Dropped() || r.Policy != "watch_http" || len(r.Events) != 1 {
		t.Fatalf("verdict %s by %q with %d events, want would_drop by watch_http with 1 event", r.Verdict, r.Policy, len(r.Events))
	}
	if f := r.Events[0].Fields(); f[len(f)-1] != (Field{"verdict", "would_drop"}) {
		t.Errorf("event fields %v, want verdict would_drop", f)
	}
	frame = pktbuild.TCP4("10.0.0.2", "10.0.0.1", 40000, 80, pktbuild.ACK, []byte("GET / HTTP/1.0\r\n")).Bytes()
	if r := p.Judge(frame, "eth0"); r.Verdict != Drop || r.Policy != "drop_tcp" {
		t.Errorf("HTTP/1.0: verdict %s by %q, want drop by drop_tcp", r.Verdict, r.Policy)
	}
}

// tls_sni matches the ClientHello's server name: exact names, "*."
// patterns at label boundaries, in any case, one trailing dot ignored.
func TestJudgeServerName(t *testing.T) {
	p := newPacket(t, plantest.Compile(t, `
exact: {priority: 1, xdp: interfaces: ["eth0"], match: {protocol: "tcp", tls_sni: "grain.example"}, then: "drop"}
under: {priority: 2, xdp: interfaces: ["eth0"], match: {protocol: "tcp", tls_sni: "*.example"}, then: "count",
	emit: {event: "hello", fields: ["tls_sni"], dedup: "0s"}}
`))
	for _, c := range []struct {
		name    string
		verdict Verdict
		policy  string
		counted int
	}{
		{"grain.example", Drop, "exact", 0}, // decided before under counts
		{"GRAIN.Example.", Drop, "exact", 0},
		{"a.b.example", Pass, "", 1},
		{"example", Pass, "", 0},
		{"xexample", Pass, "", 0},
		{"grain.example.org", Pass, "", 0},
	} {
		hello := clientHello(c.name, []byte{7, 7}, 3)
		r := p.Judge(pktbuild.TCP4("10.0.0.2", "10.0.0.1", 40000, 443, pktbuild.ACK|pktbuild.PSH, hello).Bytes(), "eth0")
		if r.Verdict != c.verdict || r.Policy != c.policy || len(r.Counted) != c.counted {
			t.Errorf("%q: %s by %q counted %v, want %s by %q, %d counted", c.name, r.Verdict, r.Policy, r.Counted, c.verdict, c.policy, c.counted)
		}
		if c.counted == 1 && (len(r.Events) != 1 || r.Events[0].Fields()[0] != (Field{"tls_sni", c.name})) {
			t.Errorf("%q: events %+v, want under's with tls_sni %s", c.name, r.Events, c.name)
		}
	}
	// The name's record cut short: no name.
	hello := clientHello("grain.example", nil, 0)
	r := p.Judge(pktbuild.TCP4("10.0.0.2", "10.0.0.1", 40000, 443, pktbuild.ACK, hello[:len(hello)-3]).Bytes(), "eth0")
	if r.Verdict != Pass || len(r.Counted) != 0 {
		t.Errorf("a truncated hello: %s by %q counted %v, want pass, nothing counted", r.Verdict, r.Policy, r.Counted)
	}
}

// examples/dns-queries' events name the question, over UDP and TCP, as the
// engine's event reader does.
func TestJudgeDNSQuestionField(t *testing.T) {
	p := newPacket(t, plantest.Compile(t, `dns: {xdp: interfaces: ["eth0"], match: {dport: 53}, then: "count",
	emit: {event: "q", fields: ["dns_qname"], dedup: "0s"}}`))
	query := []byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 5, 'g', 'r', 'a', 'i', 'n', 3, 'o', 'r', 'g', 0, 0, 1, 0, 1}
	udp := pktbuild.Frame{Src: netip.MustParseAddr("10.0.0.2"), Dst: netip.MustParseAddr("10.0.0.53"), Protocol: 17,
		SPort: 5353, DPort: 53, Payload: query}.Bytes()
	tcp := pktbuild.TCP4("10.0.0.2", "10.0.0.53", 5353, 53, pktbuild.ACK, append([]byte{0, byte(len(query))}, query...)).Bytes()
	for name, frame := range map[string][]byte{"udp": udp, "tcp": tcp} {
		r := p.Judge(frame, "eth0")
		if len(r.Events) != 1 {
			t.Fatalf("%s: %d events, want 1", name, len(r.Events))
		}
		if f := r.Events[0].Fields(); len(f) != 3 || f[0] != (Field{"dns_qname", "grain.org"}) {
			t.Errorf("%s: fields %v, want dns_qname grain.org first", name, f)
		}
	}
	bad := pktbuild.Frame{Src: netip.MustParseAddr("10.0.0.2"), Dst: netip.MustParseAddr("10.0.0.53"), Protocol: 17,
		SPort: 5353, DPort: 53, Payload: []byte("not dns")}.Bytes()
	if f := p.Judge(bad, "eth0").Events[0].Fields(); len(f) != 2 {
		t.Errorf("a payload that is no DNS question: fields %v, want none but interface and verdict", f)
	}
}
