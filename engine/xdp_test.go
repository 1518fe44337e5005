package engine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/internal/pktbuild"
	"github.com/grain-ebpf/grain/internal/plantest"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

const (
	xdpDrop = 1
	xdpPass = 2
)

var (
	sharedOnce     sync.Once
	sharedEngine   *Engine
	sharedErr      error
	sharedTCUsable bool // see tcTestRunUsable
)

// testEngine loads the XDP program once for all kernel tests of the
// package; each test applies its own plan (a generation flip).
func testEngine(t testing.TB) *Engine {
	t.Helper()
	vmtest.RequireRoot(t)
	sharedOnce.Do(func() {
		sharedEngine, sharedErr = New(Options{})
		if sharedErr == nil {
			sharedTCUsable, sharedErr = tcTestRunUsable(sharedEngine)
		}
	})
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	return sharedEngine
}

// loIndex is the loopback interface: BPF_PROG_TEST_RUN runs XDP as if the
// packet arrived on it.
const loIndex = 1

func applyPolicy(t testing.TB, src string) *Engine {
	t.Helper()
	e := testEngine(t)
	if err := e.ApplyTables(plantest.Compile(t, src), map[string]uint32{"lo": loIndex, "grain-other0": 4242}); err != nil {
		t.Fatal(err)
	}
	return e
}

// xdpProgram is e's XDP program, verified on the first call.
func xdpProgram(t testing.TB, e *Engine) *ebpf.Program {
	t.Helper()
	prog, err := e.XDP().Program()
	if err != nil {
		t.Fatal(err)
	}
	return prog
}

func runXDP(t testing.TB, e *Engine, frame []byte) uint32 {
	t.Helper()
	ret, err := xdpProgram(t, e).Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
	}
	return ret
}

// tcx verdicts of the TC program.
const (
	tcxDrop = 2
	tcxNext = 0xffffffff // -1
)

// runBoth runs frame through the XDP program and through the TC program
// (the same rules at tc ingress, used on veth) and fails the test unless
// they agree. Both count the packet: tests that check counters or events
// use runXDP.
func runBoth(t testing.TB, e *Engine, frame []byte) uint32 {
	t.Helper()
	verdict := runXDP(t, e, frame)
	if !sharedTCUsable {
		if _, logged := tcUnusedLogged.LoadOrStore(t.Name(), true); !logged {
			t.Logf("%s: no tcx, and the tc test run refuses its context: compared on XDP only", vmtest.Where())
		}
		return verdict
	}
	tc, err := e.XDP().TCProgram()
	if err != nil {
		t.Fatal(err)
	}
	// The packet arrives on lo, as in the XDP test run: ingress_ifindex
	// is the one field of __sk_buff's first 40 bytes set here.
	var skb [40]byte
	binary.NativeEndian.PutUint32(skb[36:], loIndex)
	ret, err := tc.Run(&ebpf.RunOptions{Data: frame, Context: skb[:]})
	if errors.Is(err, unix.EINVAL) && len(frame) < 14+40 {
		// The kernel's test runner refuses an skb shorter than its IP
		// header (tc would see one on a real interface).
		t.Logf("tc test run refuses a %d-byte frame: compared on XDP only", len(frame))
		return verdict
	}
	if err != nil {
		t.Fatalf("BPF_PROG_TEST_RUN (tc) on a %d-byte frame: %v", len(frame), err)
	}
	want := uint32(tcxNext)
	if verdict == xdpDrop {
		want = tcxDrop
	}
	if ret != want {
		t.Errorf("the TC program returned %d where the XDP program said %s", int32(ret), verdictName(verdict))
	}
	return verdict
}

// tcUnusedLogged: the tests that said once that runBoth compares on XDP only.
var tcUnusedLogged sync.Map

// tcTestRunUsable reports whether runBoth can run the TC program too, asked
// before any plan is applied (the packet counts nowhere). Linux 5.15 refuses
// a test-run context that sets ingress_ifindex; it has no tcx either, so
// grain never runs the TC program there (every interface gets XDP) and there
// is nothing to compare. Where tcx exists, a refusal is an error.
func tcTestRunUsable(e *Engine) (bool, error) {
	tc, err := e.XDP().TCProgram()
	if err != nil {
		return false, err
	}
	var skb [40]byte
	binary.NativeEndian.PutUint32(skb[36:], loIndex)
	frame := pktbuild.TCP4("10.0.0.2", "10.0.0.1", 1, 2, pktbuild.ACK, []byte("probe")).Bytes()
	_, err = tc.Run(&ebpf.RunOptions{Data: frame, Context: skb[:]})
	if errors.Is(err, unix.EINVAL) && bpf.HaveTCX() != nil {
		return false, nil
	}
	return err == nil, err
}

func verdictName(v uint32) string {
	switch v {
	case xdpDrop:
		return "drop"
	case xdpPass:
		return "pass"
	}
	return "unknown"
}

type packetCase struct {
	name  string
	frame pktbuild.Frame
	want  uint32
}

func runCases(t *testing.T, policy string, cases []packetCase) {
	t.Helper()
	e := applyPolicy(t, policy)
	for _, c := range cases {
		if got := runBoth(t, e, c.frame.Bytes()); got != c.want {
			t.Errorf("%s: verdict %s, want %s", c.name, verdictName(got), verdictName(c.want))
		}
	}
}

const blockHTTP = `block_http: {
	xdp: interfaces: ["lo"]
	match: {protocol: "tcp", payload: "HTTP/1.1"}
	then: "drop"
	emit: {event: "http_blocked", fields: ["saddr", "daddr", "sport", "dport"]}
}`

var request = []byte("GET / HTTP/1.1\r\nHost: example\r\n\r\n")

func tcp4(payload []byte) pktbuild.Frame {
	return pktbuild.TCP4("10.0.0.2", "10.0.0.1", 40000, 80, pktbuild.PSH|pktbuild.ACK, payload)
}

func tcp6(payload []byte) pktbuild.Frame {
	f := tcp4(payload)
	f.Src, f.Dst = netip.MustParseAddr("fd00::2"), netip.MustParseAddr("fd00::1")
	return f
}

func with(f pktbuild.Frame, edit func(*pktbuild.Frame)) pktbuild.Frame {
	edit(&f)
	return f
}

func TestXDPParsing(t *testing.T) {
	long := bytes.Repeat([]byte("x"), bpf.ScanWindow+100)
	atEnd := append(bytes.Repeat([]byte("y"), 300), "HTTP/1.1"...)
	straddle := append(bytes.Repeat([]byte("z"), bpf.ScanWindow-4), "HTTP/1.1"...)
	windowEnd := append(bytes.Repeat([]byte("z"), bpf.ScanWindow-8), "HTTP/1.1"...)
	beyond := append(append([]byte{}, long...), "HTTP/1.1"...)
	runCases(t, blockHTTP, []packetCase{
		{"ipv4 request", tcp4(request), xdpDrop},
		{"ipv4 HTTP/1.0", tcp4([]byte("GET / HTTP/1.0\r\n\r\n")), xdpPass},
		{"empty payload", tcp4(nil), xdpPass},
		{"ipv6 request", tcp6(request), xdpDrop},
		{"vlan", with(tcp4(request), func(f *pktbuild.Frame) { f.VLANs = []uint16{100} }), xdpDrop},
		{"qinq", with(tcp4(request), func(f *pktbuild.Frame) { f.VLANs = []uint16{100, 200} }), xdpDrop},
		{"three vlan tags are not parsed", with(tcp4(request), func(f *pktbuild.Frame) { f.VLANs = []uint16{1, 2, 3} }), xdpPass},
		{"ipv4 options", with(tcp4(request), func(f *pktbuild.Frame) { f.IPOptions = []byte{1, 1, 1, 0x94, 4, 0, 0} }), xdpDrop},
		{"ipv6 extension headers", with(tcp6(request), func(f *pktbuild.Frame) { f.IPv6ExtHeaders = []uint8{0, 60, 43} }), xdpDrop},
		{"ipv6 first fragment", with(tcp6(request), func(f *pktbuild.Frame) { f.IPv6ExtHeaders = []uint8{44} }), xdpDrop},
		{"too many ipv6 extension headers", with(tcp6(request), func(f *pktbuild.Frame) { f.IPv6ExtHeaders = []uint8{60, 60, 60, 60, 60, 60, 60} }), xdpPass},
		{"ipv4 non-first fragment", with(tcp4(request), func(f *pktbuild.Frame) { f.FragmentOffset = 100 }), xdpPass},
		{"tcp options", with(tcp4(request), func(f *pktbuild.Frame) { f.TCPOptions = []byte{2, 4, 5, 0xb4, 1, 1, 4, 2} }), xdpDrop},
		{"truncated tcp header", with(tcp4(request), func(f *pktbuild.Frame) { f.Truncate = 14 + 20 + 10 }), xdpPass},
		{"truncated ipv4 header", with(tcp4(request), func(f *pktbuild.Frame) { f.Truncate = 14 + 12 }), xdpPass},
		{"truncated ipv6 header", with(tcp6(request), func(f *pktbuild.Frame) { f.Truncate = 14 + 30 }), xdpPass},
		{"truncated in the pattern", with(tcp4(request), func(f *pktbuild.Frame) { f.Truncate = 14 + 20 + 20 + 12 }), xdpPass},
		{"udp carrying HTTP/1.1 under a tcp rule", with(tcp4(request), func(f *pktbuild.Frame) { f.Protocol = 17 }), xdpPass},
		{"pattern at the very end of the packet", tcp4(atEnd), xdpDrop},
		{"pattern ending at the window's end", tcp4(windowEnd), xdpDrop},
		{"pattern straddling the window's end", tcp4(straddle), xdpPass},
		{"pattern beyond the window", tcp4(beyond), xdpPass},
		{"long payload without pattern", tcp4(long), xdpPass},
		{"not ip (arp)", pktbuild.ARP(), xdpPass},
	})
}

// Packets no rule judged are counted by reason.
func TestXDPUnjudgedPacketsAreCounted(t *testing.T) {
	e := applyPolicy(t, blockHTTP)
	before, err := e.PacketStats()
	if err != nil {
		t.Fatal(err)
	}
	runXDP(t, e, pktbuild.ARP().Bytes())
	runXDP(t, e, with(tcp4(request), func(f *pktbuild.Frame) { f.Truncate = 14 + 20 + 10 }).Bytes())
	runXDP(t, e, with(tcp4(request), func(f *pktbuild.Frame) { f.Truncate = 14 + 12 }).Bytes())
	runXDP(t, e, tcp4(request).Bytes()) // judged: counted by its rule, not here
	after, err := e.PacketStats()
	if err != nil {
		t.Fatal(err)
	}
	if got := after.NotIP - before.NotIP; got != 1 {
		t.Errorf("not-IP packets counted: %d, want 1", got)
	}
	if got := after.Malformed - before.Malformed; got != 2 {
		t.Errorf("malformed packets counted: %d, want 2", got)
	}
}

func TestXDPPatternInEthernetPadding(t *testing.T) {
	e := applyPolicy(t, blockHTTP)
	// The IP length says the payload is 2 bytes; the rest is link padding.
	frame := tcp4([]byte("ab")).Bytes()
	frame = append(frame, "HTTP/1.1"...)
	if got := runBoth(t, e, frame); got != xdpPass {
		t.Errorf("pattern in padding past the IP length: %s, want pass", verdictName(got))
	}
}

func TestXDPContentOptions(t *testing.T) {
	vmtest.HostOnly(t, "BPF_PROG_TEST_RUN runs the same bytecode on the same tables on every kernel; the guests verify the program (bpf's TestVerifierInstructions)")
	policy := func(content string) string {
		return `p: {
	xdp: interfaces: ["lo"]
	match: {protocol: "tcp", payload: ` + content + `}
	then: "drop"
}`
	}
	cases := []struct {
		content string
		payload string
		want    uint32
	}{
		{`{startswith: "GET "}`, "GET / HTTP/1.1", xdpDrop},
		{`{startswith: "GET "}`, " GET / HTTP/1.1", xdpPass},
		{`{startswith: "HTTP/1.1", offset: 6}`, "GET / HTTP/1.1", xdpDrop},
		{`{startswith: "HTTP/1.1", offset: 5}`, "GET / HTTP/1.1", xdpPass},
		{`{contains: "HTTP", offset: 7}`, "GET / HTTP/1.1", xdpPass},
		{`{contains: "HTTP", offset: 6}`, "GET / HTTP/1.1", xdpDrop},
		{`{contains: "HTTP", depth: 9}`, "GET / HTTP/1.1", xdpPass},
		{`{contains: "HTTP", depth: 10}`, "GET / HTTP/1.1", xdpDrop},
		{`{contains: "HTTP", offset: 2, depth: 8}`, "GET / HTTP/1.1", xdpDrop},
		{`{contains: "http/1.1", nocase: true}`, "GET / HTTP/1.1", xdpDrop},
		{`{contains: "http/1.1"}`, "GET / HTTP/1.1", xdpPass},
		{`{contains: "hTtP/1.1", nocase: true}`, "get / http/1.1", xdpDrop},
		{`"|48 54 54 50|/1.1"`, "GET / HTTP/1.1", xdpDrop},
		{`"|00 ff|"`, "ab\x00\xffcd", xdpDrop},
		{`"|00 ff|"`, "ab\x00\xfecd", xdpPass},
		{`{contains: "HTTP/1.1", not: true}`, "GET / HTTP/1.1", xdpPass},
		{`{contains: "HTTP/1.1", not: true}`, "GET / HTTP/1.0", xdpDrop},
		{`["GET", "HTTP/1.1"]`, "GET / HTTP/1.1", xdpDrop},
		{`["POST", "HTTP/1.1"]`, "GET / HTTP/1.1", xdpPass},
		{`["GET", {contains: "admin", not: true}]`, "GET /admin HTTP/1.1", xdpPass},
		{`["GET", {contains: "admin", not: true}]`, "GET /index HTTP/1.1", xdpDrop},
		// Patterns ending exactly at the end of the frame, of every length
		// class the compare handles (short, whole words, whole words + tail).
		{`{startswith: "abc"}`, "abc", xdpDrop},
		{`{startswith: "abd"}`, "abc", xdpPass},
		{`"HTTP/1.1 200"`, "xxHTTP/1.1 200", xdpDrop},
		{`"HTTP/1.1 200"`, "xxHTTP/1.1 201", xdpPass},
		{`"HTTP/1.1 200"`, "xxHTTP/1.1 20", xdpPass},
		{`"0123456789abcdef"`, "--0123456789abcdef", xdpDrop},
		{`"G"`, "xxxxxxxxxxxxxxxxxxxxxxG", xdpDrop},
		{`"G"`, "xxxxxxxxxxxxxxxxxxxxxxg", xdpPass},
		// A long pattern whose prefilter bytes occur often.
		{`"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab"`, strings.Repeat("a", 200) + "b", xdpDrop},
		{`"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab"`, strings.Repeat("a", 200), xdpPass},
	}
	for _, c := range cases {
		e := applyPolicy(t, policy(c.content))
		if got := runBoth(t, e, tcp4([]byte(c.payload)).Bytes()); got != c.want {
			t.Errorf("payload %s on %q: %s, want %s", c.content, c.payload, verdictName(got), verdictName(c.want))
		}
	}
}

func TestXDPMatchFields(t *testing.T) {
	vmtest.HostOnly(t, "BPF_PROG_TEST_RUN runs the same bytecode on the same tables on every kernel; the guests verify the program (bpf's TestVerifierInstructions)")
	rule := func(match string) string {
		return `p: {
	xdp: interfaces: ["lo", "grain-other0"]
	match: ` + match + `
	then: "drop"
}`
	}
	icmp := pktbuild.Frame{Src: netip.MustParseAddr("10.0.0.2"), Dst: netip.MustParseAddr("10.0.0.1"), Protocol: 1}
	syn := pktbuild.TCP4("10.0.0.2", "10.0.0.1", 40000, 22, pktbuild.SYN, nil)
	synack := pktbuild.TCP4("10.0.0.2", "10.0.0.1", 40000, 22, pktbuild.SYN|pktbuild.ACK, nil)
	udp := func(dport uint16) pktbuild.Frame {
		return pktbuild.Frame{Src: netip.MustParseAddr("192.168.1.7"), Dst: netip.MustParseAddr("10.0.0.1"), Protocol: 17, SPort: 5353, DPort: dport}
	}
	cases := []struct {
		match string
		frame pktbuild.Frame
		want  uint32
	}{
		{`{protocol: "icmp"}`, icmp, xdpDrop},
		{`{protocol: "icmp"}`, syn, xdpPass},
		{`{protocol: ["udp", "icmp"]}`, udp(53), xdpDrop},
		{`{saddr: "10.0.0.0/8"}`, syn, xdpDrop},
		{`{saddr: "10.0.0.0/8"}`, udp(53), xdpPass},
		{`{saddr: "10.0.0.2"}`, syn, xdpDrop},
		{`{saddr: "10.0.0.3"}`, syn, xdpPass},
		{`{saddr: ["192.168.0.0/16", "10.0.0.0/24"]}`, syn, xdpDrop},
		{`{saddr: "fd00::/64"}`, tcp6(nil), xdpDrop},
		{`{saddr: "fd00::/64"}`, syn, xdpPass},
		{`{saddr: "fd01::/64"}`, tcp6(nil), xdpPass},
		{`{daddr: "fd00::1"}`, tcp6(nil), xdpDrop},
		{`{daddr: "10.0.0.1"}`, tcp6(nil), xdpPass},
		{`{daddr: "10.0.0.0/30"}`, syn, xdpDrop},
		{`{dport: 22}`, syn, xdpDrop},
		{`{dport: 22}`, icmp, xdpPass},
		{`{dport: 23}`, syn, xdpPass},
		{`{sport: "39000-40000"}`, syn, xdpDrop},
		{`{sport: "40001-41000"}`, syn, xdpPass},
		{`{protocol: "udp", dport: ["5000-5999", 53]}`, udp(53), xdpDrop},
		{`{protocol: "udp", dport: ["5000-5999", 53]}`, udp(5999), xdpDrop},
		{`{protocol: "udp", dport: ["5000-5999", 53]}`, udp(6000), xdpPass},
		{`{protocol: "tcp", dport: 53}`, udp(53), xdpPass},
		{`{tcp_flags: ["syn", "!ack"]}`, syn, xdpDrop},
		{`{tcp_flags: ["syn", "!ack"]}`, synack, xdpPass},
		{`{tcp_flags: ["syn"]}`, udp(53), xdpPass},
		{`{interface: "lo"}`, syn, xdpDrop},
		{`{interface: "grain-other0"}`, syn, xdpPass},
	}
	for _, c := range cases {
		e := applyPolicy(t, rule(c.match))
		if got := runBoth(t, e, c.frame.Bytes()); got != c.want {
			t.Errorf("match %s: %s, want %s", c.match, verdictName(got), verdictName(c.want))
		}
	}
}

// Rule order: lower priority first, ties by name; the first drop/pass
// decides; count rules count and continue.
func TestXDPRuleOrder(t *testing.T) {
	e := applyPolicy(t, `
count_all: {priority: 1, xdp: interfaces: ["lo"], then: "count"}
allow_lan: {priority: 5, xdp: interfaces: ["lo"], match: saddr: "10.0.0.0/24", then: "pass"}
drop_tcp:  {priority: 9, xdp: interfaces: ["lo"], match: protocol: "tcp", then: "drop"}
b_pass:    {priority: 20, xdp: interfaces: ["lo"], match: protocol: "udp", then: "pass"}
a_drop:    {priority: 20, xdp: interfaces: ["lo"], match: protocol: "udp", then: "drop"}
count_late: {priority: 30, xdp: interfaces: ["lo"], then: "count"}
`)
	// Counters are cumulative over the engine's life: compare differences.
	before := packetCounts(t, e)
	lan := pktbuild.TCP4("10.0.0.2", "10.0.0.1", 1, 2, pktbuild.ACK, nil)
	wan := pktbuild.TCP4("10.9.0.2", "10.0.0.1", 1, 2, pktbuild.ACK, nil)
	udp := with(wan, func(f *pktbuild.Frame) { f.Protocol = 17 })
	icmp := with(wan, func(f *pktbuild.Frame) { f.Protocol = 1 })
	for _, c := range []packetCase{
		{"lan tcp: pass rule before drop rule", lan, xdpPass},
		{"wan tcp: drop", wan, xdpDrop},
		{"udp: a_drop sorts before b_pass", udp, xdpDrop},
		{"icmp: only count rules", icmp, xdpPass},
	} {
		if got := runBoth(t, e, c.frame.Bytes()); got != c.want {
			t.Errorf("%s: %s, want %s", c.name, verdictName(got), verdictName(c.want))
		}
	}
	after := packetCounts(t, e)
	got := map[string]uint64{}
	for name, n := range after {
		got[name] = n - before[name]
	}
	// runBoth ran each packet through the XDP and the TC program: both
	// count (where it runs the TC program at all).
	runs := uint64(2)
	if !sharedTCUsable {
		runs = 1
	}
	want := map[string]uint64{"count_all": 4, "allow_lan": 1, "drop_tcp": 1, "a_drop": 1, "b_pass": 0, "count_late": 1}
	for name, n := range want {
		if n *= runs; got[name] != n {
			t.Errorf("counter %s counted %d packets, want %d", name, got[name], n)
		}
	}
	// Each counter names its policy's verdict.
	counters, err := e.Counters()
	if err != nil {
		t.Fatal(err)
	}
	verdicts := map[string]string{"count_all": "count", "allow_lan": "pass", "drop_tcp": "drop"}
	for _, c := range counters {
		if v, ok := verdicts[c.Policy]; ok && c.Packets > 0 && c.Verdict != v {
			t.Errorf("counter of %s has verdict %q, want %q", c.Policy, c.Verdict, v)
		}
		delete(verdicts, c.Policy)
	}
	if len(verdicts) > 0 {
		t.Errorf("no counters for %v", verdicts)
	}
}

func packetCounts(t *testing.T, e *Engine) map[string]uint64 {
	t.Helper()
	counters, err := e.Counters()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint64{}
	for _, c := range counters {
		out[c.Policy] += c.Packets // over verdicts: tests reuse policy names
	}
	return out
}

// Many rules: the bitmap walk finds the right rule among 1000.
func TestXDPManyRules(t *testing.T) {
	vmtest.HostOnly(t, "BPF_PROG_TEST_RUN runs the same bytecode on the same tables on every kernel; the guests verify the program (bpf's TestVerifierInstructions)")
	var b strings.Builder
	for i := 0; i < 1000; i++ {
		fmt.Fprintf(&b, "r%04d: {xdp: interfaces: [\"lo\"], match: {protocol: \"tcp\", saddr: \"10.%d.%d.0/24\", dport: %d}, then: \"drop\"}\n", i, i/250, i%250, 1000+i)
	}
	e := applyPolicy(t, b.String())
	hit := pktbuild.TCP4("10.3.249.7", "10.0.0.1", 5, 1999, pktbuild.ACK, nil) // rule 999
	if got := runBoth(t, e, hit.Bytes()); got != xdpDrop {
		t.Errorf("rule 999: %s, want drop", verdictName(got))
	}
	miss := pktbuild.TCP4("10.3.249.7", "10.0.0.1", 5, 1998, pktbuild.ACK, nil) // port of rule 998, prefix of 999
	if got := runBoth(t, e, miss.Bytes()); got != xdpPass {
		t.Errorf("mixed rule fields: %s, want pass", verdictName(got))
	}
}

// A block list as long as the limit, of every IPv4 prefix length from /16
// to /32: an address in the last prefix, in the first, and in none; the
// prefixes share one bitmap.
func TestXDPPrefixListAtTheLimit(t *testing.T) {
	vmtest.HostOnly(t, "BPF_PROG_TEST_RUN runs the same bytecode on the same tables on every kernel; the guests verify the program (bpf's TestVerifierInstructions)")
	var b strings.Builder
	b.WriteString("block: {xdp: interfaces: [\"lo\"], then: \"drop\", match: saddr: [\n")
	prefix := func(i int) string { return fmt.Sprintf("%d.%d.0.0/%d", 1+i/256, i%256, 16+i%17) }
	for i := range bpf.MaxCIDREntries {
		fmt.Fprintf(&b, "%q,\n", prefix(i))
	}
	b.WriteString("]}\n")
	e := applyPolicy(t, b.String())
	for name, c := range map[string]struct {
		src  string
		want uint32
	}{
		"the last prefix":  {netip.MustParsePrefix(prefix(bpf.MaxCIDREntries - 1)).Addr().String(), xdpDrop},
		"the first prefix": {"1.0.255.255", xdpDrop},
		"no prefix":        {"198.18.0.7", xdpPass},
		"beside a /32":     {fmt.Sprintf("%d.%d.0.1", 1+16/256, 16%256), xdpPass},
	} {
		f := pktbuild.TCP4(c.src, "10.0.0.1", 5, 80, pktbuild.ACK, nil)
		if got := runBoth(t, e, f.Bytes()); got != c.want {
			t.Errorf("from %s (%s): %s, want %s", c.src, name, verdictName(got), verdictName(c.want))
		}
	}
}

// Emitted events carry the packet's addresses and ports.
func TestXDPEmitEvent(t *testing.T) {
	e := applyPolicy(t, blockHTTP)
	events := eventLines(t, e, 2, func() {
		runXDP(t, e, tcp4(request).Bytes())
		runXDP(t, e, tcp6(request).Bytes())
	})
	if len(events) != 2 {
		t.Fatalf("got %d events, want 2: %v", len(events), events)
	}
	for i, want := range []map[string]any{
		{"policy": "block_http", "event": "http_blocked", "saddr": "10.0.0.2", "daddr": "10.0.0.1", "sport": 40000.0, "dport": 80.0, "interface": "lo", "verdict": "drop"},
		{"policy": "block_http", "event": "http_blocked", "saddr": "fd00::2", "daddr": "fd00::1", "sport": 40000.0, "dport": 80.0, "interface": "lo", "verdict": "drop"},
	} {
		got := events[i]
		for k, v := range want {
			if got[k] != v {
				t.Errorf("event %d: %s = %v, want %v (%v)", i, k, got[k], v, got)
			}
		}
		ts, err := time.Parse(time.RFC3339Nano, got["time"].(string))
		if err != nil || time.Since(ts).Abs() > time.Minute {
			t.Errorf("event %d: time %v is not now (%v)", i, got["time"], err)
		}
	}
}

// Verdicts are counted per interface: packets judged on lo count under lo,
// by verdict, with their bytes.
func TestXDPInterfaceCounters(t *testing.T) {
	e := applyPolicy(t, `
iface_drop: {xdp: interfaces: ["lo"], match: {protocol: "udp"}, then: "drop"}
iface_count: {xdp: interfaces: ["lo"], match: {protocol: "tcp"}, then: "count"}
`)
	read := func() map[string]InterfaceCounter {
		cs, err := e.InterfaceCounters()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]InterfaceCounter{}
		for _, c := range cs {
			out[c.Interface+" "+c.Verdict] = c
		}
		return out
	}
	before := read()
	udp := with(tcp4([]byte("x")), func(f *pktbuild.Frame) { f.Protocol = 17 })
	tcp := tcp4([]byte("y"))
	runXDP(t, e, udp.Bytes())
	runXDP(t, e, udp.Bytes())
	runXDP(t, e, tcp.Bytes())
	after := read()
	for key, want := range map[string][2]uint64{
		"lo drop":  {2, 2 * uint64(len(udp.Bytes()))},
		"lo count": {1, uint64(len(tcp.Bytes()))},
		"lo pass":  {0, 0},
	} {
		got := [2]uint64{after[key].Packets - before[key].Packets, after[key].Bytes - before[key].Bytes}
		if got != want {
			t.Errorf("%s: %d packets, %d bytes; want %d, %d", key, got[0], got[1], want[0], want[1])
		}
	}
}
