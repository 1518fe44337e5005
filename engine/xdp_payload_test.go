package engine

import (
	"encoding/hex"
	"net/netip"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/internal/pktbuild"
)

const dnsPolicy = `dns_queries: {
	xdp: interfaces: ["lo"]
	match: {protocol: "udp", dport: 53}
	then: "pass"
	emit: {event: "dns_query", fields: ["saddr", "sport", "daddr", "dns_qname", "payload"]}
}
raw_payload: {
	xdp: interfaces: ["lo"]
	match: {protocol: ["udp", "tcp"], dport: 9999}
	then: "drop"
	emit: {event: "raw", fields: ["payload", "len"]}
}
no_payload: {
	xdp: interfaces: ["lo"]
	match: {protocol: "udp", dport: 9998}
	then: "drop"
	emit: {event: "plain", fields: ["sport"]}
}`

func udp(src, dst string, sport, dport uint16, payload []byte) pktbuild.Frame {
	return pktbuild.Frame{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), Protocol: 17,
		SPort: sport, DPort: dport, Payload: payload}
}

// eventsOf runs each frame through the program and returns the event
// lines they produced, decoded.
func eventsOf(t *testing.T, e *Engine, frames [][]byte, wantVerdicts []uint32) []map[string]any {
	t.Helper()
	events := eventLines(t, e, len(frames), func() {
		for i, f := range frames {
			if got := runXDP(t, e, f); got != wantVerdicts[i] {
				t.Errorf("frame %d: verdict %s, want %s", i, verdictName(got), verdictName(wantVerdicts[i]))
			}
		}
	})
	if len(events) != len(frames) {
		t.Fatalf("got %d events, want %d: %v", len(events), len(frames), events)
	}
	return events
}

// Rules that emit payload fields send the first bytes of the L4 payload,
// exactly, up to bpf.EmitPayloadBytes and never past the IP length; the
// DNS question name is decoded from them.
func TestXDPEmitPayload(t *testing.T) {
	e := applyPolicy(t, dnsPolicy)

	query := pktbuild.DNSQuery(0x1234, "www.grain-test.example")
	long := make([]byte, bpf.EmitPayloadBytes+100)
	for i := range long {
		long[i] = byte(i * 7)
	}
	// The longest DNS name (255 bytes of wire form) still fits.
	label63 := strings.Repeat("q", 63)
	longestName := strings.Join([]string{label63, label63, label63, strings.Repeat("z", 61)}, ".")
	longestQuery := pktbuild.DNSQuery(1, longestName)
	// Link padding after the IP packet is not payload.
	padded := append(udp("10.0.0.2", "10.0.0.1", 5000, 9999, []byte("abc")).Bytes(), "PADDINGPADDING"...)
	tcpQuery := pktbuild.TCP4("10.0.0.2", "10.0.0.1", 5001, 9999, pktbuild.PSH|pktbuild.ACK, []byte("0123456789abcdefX"))
	dns6 := udp("fd00::2", "fd00::1", 40001, 53, query)

	frames := []pktbuild.Frame{
		udp("10.0.0.2", "10.0.0.1", 40000, 53, query),
		dns6,
		udp("10.0.0.2", "10.0.0.1", 40002, 53, longestQuery),
		udp("10.0.0.2", "10.0.0.1", 40003, 53, []byte("not a DNS message")),
		udp("10.0.0.2", "10.0.0.1", 5000, 9999, long),
		udp("10.0.0.2", "10.0.0.1", 5000, 9999, []byte("12345")),
		udp("10.0.0.2", "10.0.0.1", 5000, 9999, nil),
		tcpQuery,
		udp("10.0.0.2", "10.0.0.1", 5000, 9998, []byte("plain event")),
	}
	var raw [][]byte
	for _, f := range frames {
		raw = append(raw, f.Bytes())
	}
	raw = append(raw, padded)
	verdicts := []uint32{xdpPass, xdpPass, xdpPass, xdpPass, xdpDrop, xdpDrop, xdpDrop, xdpDrop, xdpDrop, xdpDrop}
	events := eventsOf(t, e, raw, verdicts)

	hexOf := func(b []byte) string { return hex.EncodeToString(b) }
	for i, want := range []map[string]any{
		{"event": "dns_query", "saddr": "10.0.0.2", "daddr": "10.0.0.1", "sport": 40000.0,
			"dns_qname": "www.grain-test.example", "payload": hexOf(query), "verdict": "pass"},
		{"event": "dns_query", "saddr": "fd00::2", "daddr": "fd00::1", "sport": 40001.0,
			"dns_qname": "www.grain-test.example", "payload": hexOf(query)},
		{"event": "dns_query", "dns_qname": longestName, "payload": hexOf(longestQuery)},
		{"event": "dns_query", "dns_qname": nil, "payload": hexOf([]byte("not a DNS message"))},
		{"event": "raw", "payload": hexOf(long[:bpf.EmitPayloadBytes]), "verdict": "drop"},
		{"event": "raw", "payload": hexOf([]byte("12345"))},
		{"event": "raw", "payload": ""},
		{"event": "raw", "payload": hexOf([]byte("0123456789abcdefX"))},
		{"event": "plain", "sport": 5000.0, "payload": nil},
		{"event": "raw", "payload": hexOf([]byte("abc")), "len": float64(len(padded))},
	} {
		got := events[i]
		for k, v := range want {
			if got[k] != v {
				t.Errorf("event %d: %s = %v, want %v (%v)", i, k, got[k], v, got)
			}
		}
	}
	if len(longestQuery) != 12+255+4 {
		t.Fatalf("the longest query is %d bytes, want 271", len(longestQuery))
	}
}
