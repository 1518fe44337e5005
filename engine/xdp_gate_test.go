package engine

import (
	"bytes"
	"encoding/binary"
	"maps"
	"slices"
	"testing"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/internal/pktbuild"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// gates reads the gates of the generation in force.
func gates(t *testing.T, e *Engine) [bpf.Gates]bpf.Gate {
	t.Helper()
	var act bpf.Active
	if err := e.XDP().Maps().Active.Lookup(uint32(0), &act); err != nil {
		t.Fatal(err)
	}
	return act.Gate[act.Generation&1]
}

// setGates overwrites the gates of the generation in force, the way no
// engine would: to compare the program with and without them.
func setGates(t *testing.T, e *Engine, g [bpf.Gates]bpf.Gate) {
	t.Helper()
	var act bpf.Active
	if err := e.XDP().Maps().Active.Lookup(uint32(0), &act); err != nil {
		t.Fatal(err)
	}
	act.Gate[act.Generation&1] = g
	if err := e.XDP().Maps().Active.Put(uint32(0), act); err != nil {
		t.Fatal(err)
	}
}

// The gate passes packets early, never differently: every packet gets the
// same verdict and the same rule counts with the generation's gates as
// written and with no gates, through both programs, including packets the
// gate reads differently from the full parse (malformed, fragments, link
// padding past the IP length).
func TestXDPGateAgreesWithTheFullPath(t *testing.T) {
	vmtest.HostOnly(t, "BPF_PROG_TEST_RUN runs the same bytecode on the same tables on every kernel; the guests verify the program (bpf's TestVerifierInstructions)")
	policySets := []struct {
		name, src string
		gated     []int // GRAIN_GATE_* the engine must write
	}{
		{"anchored tcp", `a: {xdp: interfaces: ["lo"], match: {protocol: "tcp", payload: {startswith: "HTTP/1.1"}}, then: "drop", emit: {event: "e", fields: ["saddr"]}}`,
			[]int{bpf.GateTCP}},
		{"two methods at the same end, and a count", `
c: {priority: 1, xdp: interfaces: ["lo"], match: {protocol: "tcp", payload: {startswith: "GET "}}, then: "count"}
d: {priority: 2, xdp: interfaces: ["lo"], match: {protocol: "tcp", payload: [{startswith: "PUT "}, "admin"]}, then: "drop"}`,
			[]int{bpf.GateTCP}},
		{"any protocol, offset and nocase", `a: {xdp: interfaces: ["lo"], match: payload: {startswith: "http/1.1", offset: 6, nocase: true}, then: "drop"}`,
			[]int{bpf.GateTCP, bpf.GateUDP}},
		{"short word", `a: {xdp: interfaces: ["lo"], match: {protocol: "udp", payload: {startswith: "|00 01|"}}, then: "drop"}`,
			[]int{bpf.GateUDP}},
		{"a rule without a quick word", `
a: {priority: 1, xdp: interfaces: ["lo"], match: {protocol: "tcp", payload: {startswith: "GET "}}, then: "drop"}
b: {priority: 2, xdp: interfaces: ["lo"], match: {protocol: "tcp", saddr: "10.0.0.0/8"}, then: "count"}`,
			nil},
	}
	payloads := [][]byte{
		nil, []byte("G"), []byte("GET "), []byte("GET / HTTP/1.1\r\n\r\n"), []byte("PUT /admin HTTP/1.1"),
		[]byte("PUT /index HTTP/1.1"), []byte("HTTP/1.1 200 OK\r\n"), []byte("HTTP/1.0 200 OK\r\n"),
		[]byte("GET / http/1.1\r\n"), []byte("xxxxxxHTTP/1.1"), []byte("\x00\x01\x02"), []byte("\x00\x02"),
		bytes.Repeat([]byte("GET HTTP/1.1 "), 100),
	}
	var frames [][]byte
	for _, p := range payloads {
		for _, f := range []pktbuild.Frame{
			tcp4(p), tcp6(p),
			with(tcp4(p), func(f *pktbuild.Frame) { f.Protocol = 17 }),
			with(tcp6(p), func(f *pktbuild.Frame) { f.Protocol = 17 }),
			with(tcp4(p), func(f *pktbuild.Frame) { f.VLANs = []uint16{7} }),
			with(tcp4(p), func(f *pktbuild.Frame) { f.IPOptions = []byte{1, 1, 1, 0} }),
			with(tcp4(p), func(f *pktbuild.Frame) { f.TCPOptions = []byte{2, 4, 5, 0xb4} }),
			with(tcp6(p), func(f *pktbuild.Frame) { f.IPv6ExtHeaders = []uint8{60} }),
			with(tcp4(p), func(f *pktbuild.Frame) { f.FragmentOffset = 3 }),
		} {
			frames = append(frames, f.Bytes())
		}
		full := tcp4(p).Bytes()
		for cut := 14 + 20 + 10; cut < len(full); cut += 3 {
			frames = append(frames, full[:cut]) // truncated headers and payloads
		}
		edit := func(at int, set func(b []byte)) {
			b := slices.Clone(full)
			if at < len(b) {
				set(b)
				frames = append(frames, b)
			}
		}
		edit(14, func(b []byte) { b[14] = 0x35 })         // IP version 3
		edit(14, func(b []byte) { b[14] = 0x44 })         // IHL below 5
		edit(14, func(b []byte) { b[14] = 0x4f })         // IHL past the frame
		edit(46, func(b []byte) { b[46] = 0x40 })         // TCP data offset below 5
		edit(46, func(b []byte) { b[46] = 0xf0 })         // TCP data offset past the frame
		edit(17, func(b []byte) { b[16], b[17] = 0, 30 }) // IP length shorter than the headers
		// The payload lies in link padding: the IP length ends at the TCP header.
		edit(17, func(b []byte) { binary.BigEndian.PutUint16(b[16:], 40) })
	}

	t.Logf("%d frames under %d rule sets", len(frames), len(policySets))
	for _, ps := range policySets {
		e := applyPolicy(t, ps.src)
		written := gates(t, e)
		for i, g := range written {
			if want := slices.Contains(ps.gated, i); (g.End != 0) != want {
				t.Errorf("%s: gate %d = %+v, want one: %v", ps.name, i, g, want)
			}
		}
		// run returns each frame's verdict and the packets each policy
		// counted meanwhile.
		run := func() ([]uint32, map[string]uint64) {
			before := packetCounts(t, e)
			var verdicts []uint32
			for _, f := range frames {
				verdicts = append(verdicts, runBoth(t, e, f))
			}
			counted := packetCounts(t, e)
			for policy, n := range before {
				counted[policy] -= n
			}
			return verdicts, counted
		}
		gatedVerdicts, gatedCounts := run()
		setGates(t, e, [bpf.Gates]bpf.Gate{})
		fullVerdicts, fullCounts := run()
		for i := range frames {
			if gatedVerdicts[i] != fullVerdicts[i] {
				t.Errorf("%s: frame %d (% x): %s with the gate, %s without", ps.name, i, frames[i],
					verdictName(gatedVerdicts[i]), verdictName(fullVerdicts[i]))
			}
		}
		if !maps.Equal(gatedCounts, fullCounts) {
			t.Errorf("%s: packets counted by policy with the gate %v, without %v", ps.name, gatedCounts, fullCounts)
		}
		if !slices.Contains(fullVerdicts, xdpDrop) {
			t.Errorf("%s: no frame was dropped: the comparison says nothing", ps.name)
		}
	}
}

// The program consults the gate: a gate that no packet passes lets a
// packet through that the rules would drop.
func TestXDPGateIsConsulted(t *testing.T) {
	e := applyPolicy(t, `a: {xdp: interfaces: ["lo"], match: {protocol: "tcp", payload: {startswith: "HTTP/1.1"}}, then: "drop"}`)
	response := tcp4([]byte("HTTP/1.1 200 OK\r\n")).Bytes()
	if got := runBoth(t, e, response); got != xdpDrop {
		t.Fatalf("with the engine's gate: %s, want drop", verdictName(got))
	}
	g := gates(t, e)
	g[bpf.GateTCP].Pattern ^= 1
	setGates(t, e, g)
	if got := runBoth(t, e, response); got != xdpPass {
		t.Errorf("with a gate no packet passes: %s, want pass", verdictName(got))
	}
}
