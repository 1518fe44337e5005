package engine

import (
	"bytes"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/internal/pktbuild"
	"github.com/grain-ebpf/grain/pipeline"
)

// A count rule ahead of the drop rule: a hello it matches must still reach
// the drop rule (the class of a name holds the rules of every pattern that
// matches it).
const sniPolicy = `count_example: {
	priority: 1
	xdp: interfaces: ["lo"]
	match: tls_sni: "*.example"
	then: "count"
}
block_sni: {
	priority: 2
	xdp: interfaces: ["lo"]
	match: tls_sni: ["blocked.example", "*.evil.example", "BIG.Example."]
	then: "drop"
}`

func hello13(name string, sniAt, keyShare int) []byte { return pktbuild.Hello13(name, sniAt, keyShare) }

func helloFrame(payload []byte) []byte {
	return pktbuild.TCP4("10.0.0.2", "10.0.0.1", 40000, 443, pktbuild.PSH|pktbuild.ACK, payload).Bytes()
}

// sniEnd is the payload offset one past the server name in a hello.
func sniEnd(t *testing.T, hello []byte, name string) int {
	t.Helper()
	i := bytes.Index(hello, []byte(name))
	if i < 0 {
		t.Fatalf("%q is not in the hello", name)
	}
	return i + len(name)
}

// The packet program drops a ClientHello whose first segment asks for a
// listed name, wherever its server_name extension lies, in any case, and
// passes every other packet.
func TestXDPTLSSNI(t *testing.T) {
	e := applyPolicy(t, sniPolicy)
	maxName := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 63) + "." + strings.Repeat("d", 48) + ".evil.example"
	if len(maxName) != bpf.TLSMaxName {
		t.Fatalf("the longest name is %d bytes, want %d", len(maxName), bpf.TLSMaxName)
	}
	tls12 := pktbuild.ClientHello(0x0303, pktbuild.HelloCiphers, pktbuild.SNIExt("blocked.example"), pktbuild.SigAlgsExt(pktbuild.HelloSigAlgs...))
	greased := pktbuild.ClientHello(0x0303, append([]uint16{pktbuild.GREASE(3)}, pktbuild.HelloCiphers...),
		pktbuild.TLSExt{Type: pktbuild.GREASE(1)}, pktbuild.VersionsExt(pktbuild.GREASE(5), 0x0304),
		pktbuild.TLSExt{Type: pktbuild.GREASE(2), Data: []byte{0}}, pktbuild.SNIExt("x.evil.example"),
		pktbuild.TLSExt{Type: pktbuild.GREASE(9)})
	// 31 empty extensions before server_name: the 32nd is the last walked.
	var many []pktbuild.TLSExt
	for i := 0; i < bpf.TLSMaxExtensions-1; i++ {
		many = append(many, pktbuild.TLSExt{Type: uint16(0x4000 + i)})
	}
	lastWalked := pktbuild.ClientHello(0x0303, pktbuild.HelloCiphers, append(many, pktbuild.SNIExt("blocked.example"))...)
	pastWalked := pktbuild.ClientHello(0x0303, pktbuild.HelloCiphers, append(append(many, pktbuild.TLSExt{Type: 0x5000}), pktbuild.SNIExt("blocked.example"))...)
	nul := hello13("blocked.example", 0, 32)
	nulAt := bytes.Index(nul, []byte("blocked.example"))
	nul[nulAt+3] = 0 // "blo\0ked.example"

	for _, c := range []struct {
		name    string
		payload []byte
		want    uint32
	}{
		{"SNI first", hello13("blocked.example", 0, 32), xdpDrop},
		{"SNI last", hello13("blocked.example", 5, 32), xdpDrop},
		{"SNI after a post-quantum key share", hello13("blocked.example", 5, 1216), xdpDrop},
		{"TLS 1.2", tls12, xdpDrop},
		{"GREASE", greased, xdpDrop},
		{"uppercase name", hello13("BLOCKED.EXAMPLE", 2, 32), xdpDrop},
		{"pattern written in uppercase", hello13("big.example", 2, 32), xdpDrop},
		{"trailing dot", hello13("blocked.example.", 2, 32), xdpDrop},
		{"a name under *.evil.example", hello13("www.evil.example", 1, 32), xdpDrop},
		{"two labels under *.evil.example", hello13("a.b.Evil.Example", 1, 32), xdpDrop},
		{"the longest name", hello13(maxName, 1, 32), xdpDrop},
		{"one byte too long", hello13("e"+maxName, 1, 32), xdpPass},
		{"evil.example itself", hello13("evil.example", 1, 32), xdpPass},
		{"not at a label boundary", hello13("notevil.example", 1, 32), xdpPass},
		{"a longer name", hello13("blocked.example.com", 1, 32), xdpPass},
		{"a prefix of the name", hello13("blocked.exampl", 1, 32), xdpPass},
		{"another name", hello13("allowed.example", 0, 32), xdpPass},
		{"a zero byte in the name", nul, xdpPass},
		{"SNI the last extension walked", lastWalked, xdpDrop},
		{"SNI past the extensions walked", pastWalked, xdpPass},
		{"not TLS", []byte("GET / HTTP/1.1\r\nHost: blocked.example\r\n\r\n"), xdpPass},
		{"empty", nil, xdpPass},
	} {
		if got := runBoth(t, e, helloFrame(c.payload)); got != c.want {
			t.Errorf("%s: verdict %s, want %s", c.name, verdictName(got), verdictName(c.want))
		}
	}

	// IPv6, and UDP (no hello).
	h := hello13("blocked.example", 0, 32)
	v6 := pktbuild.Frame{Src: netip.MustParseAddr("fd00::2"), Dst: netip.MustParseAddr("fd00::1"), Protocol: 6,
		SPort: 40000, DPort: 443, TCPFlags: pktbuild.ACK, Payload: h}
	if got := runBoth(t, e, v6.Bytes()); got != xdpDrop {
		t.Errorf("IPv6: verdict %s, want drop", verdictName(got))
	}
	if got := runBoth(t, e, udp("10.0.0.2", "10.0.0.1", 40000, 443, h).Bytes()); got != xdpPass {
		t.Errorf("UDP: verdict %s, want pass", verdictName(got))
	}
}

// Extensions in any order: the name is found wherever it lies.
func TestXDPTLSSNIExtensionOrder(t *testing.T) {
	e := applyPolicy(t, sniPolicy)
	rng := rand.New(rand.NewPCG(20, 1))
	for i := 0; i < 50; i++ {
		exts := []pktbuild.TLSExt{
			pktbuild.SNIExt("blocked.example"),
			{Type: pktbuild.TLSExtSupportedGroups, Data: []byte{0, 4, 0, 0x1d, 0, 0x17}},
			pktbuild.ALPNExt("h2"),
			pktbuild.SigAlgsExt(pktbuild.HelloSigAlgs...),
			pktbuild.VersionsExt(0x0304),
			pktbuild.KeyShareExt(0x001d, 32),
			{Type: pktbuild.GREASE(i), Data: []byte{1, 2, 3}},
			{Type: pktbuild.TLSExtPadding, Data: make([]byte, rng.IntN(200))},
		}
		rng.Shuffle(len(exts), func(a, b int) { exts[a], exts[b] = exts[b], exts[a] })
		var order []string
		for _, x := range exts {
			order = append(order, fmt.Sprintf("%#04x", x.Type))
		}
		if got := runBoth(t, e, helloFrame(pktbuild.ClientHello(0x0303, pktbuild.HelloCiphers, exts...))); got != xdpDrop {
			t.Errorf("extensions %v: verdict %s, want drop", order, verdictName(got))
		}
	}
}

// A hello cut at every length, as the first segment of a hello split in
// two: it is dropped exactly when the segment holds the whole name; the
// second segment, which starts inside the record, never is. So is a frame
// cut short of its IP length: only the bytes there are read.
func TestXDPTLSSNITruncated(t *testing.T) {
	e := applyPolicy(t, sniPolicy)
	for _, h := range [][]byte{hello13("blocked.example", 0, 32), hello13("www.evil.example", 5, 1216)} {
		end := sniEnd(t, h, "example")
		for n := 0; n <= len(h); n++ {
			want := uint32(xdpPass)
			if n >= end {
				want = xdpDrop
			}
			if got := runBoth(t, e, helloFrame(h[:n])); got != want {
				t.Errorf("first %d of %d bytes (name ends at %d): verdict %s, want %s", n, len(h), end, verdictName(got), verdictName(want))
			}
			if n > 0 && n < len(h) {
				if got := runBoth(t, e, helloFrame(h[n:])); got != xdpPass {
					t.Errorf("the segment from byte %d: verdict %s, want pass", n, verdictName(got))
				}
			}
		}
		whole := helloFrame(h)
		headers := len(whole) - len(h)
		for n := headers; n < len(whole); n++ {
			want := uint32(xdpPass)
			if n-headers >= end {
				want = xdpDrop
			}
			if got := runBoth(t, e, whole[:n]); got != want {
				t.Errorf("frame cut to %d of %d bytes: verdict %s, want %s", n, len(whole), verdictName(got), verdictName(want))
			}
		}
	}
}

// A rule emitting the TLS fields sends a whole first segment
// (bpf.EmitHelloBytes at most), from which they are decoded as from the
// hello itself; a packet that is not a hello has none of them.
func TestXDPTLSEvents(t *testing.T) {
	e := applyPolicy(t, `hellos: {
	xdp: interfaces: ["lo"]
	match: {protocol: "tcp", dport: 443}
	then: "count"
	emit: {event: "tls_hello", fields: ["saddr", "tls_sni", "tls_version", "tls_legacy_version", "tls_alpn", "tls_ja4", "payload"]}
}`)
	goHello := pktbuild.GoClientHello(t, &tls.Config{ServerName: "www.example.com", NextProtos: []string{"h2", "http/1.1"}})
	crafted := hello13("blocked.example", 2, 32)
	frames := [][]byte{helloFrame(goHello), helloFrame(crafted), helloFrame([]byte("GET / HTTP/1.1\r\n\r\n"))}
	events := eventsOf(t, e, frames, []uint32{xdpPass, xdpPass, xdpPass})

	helloFields := func(p []byte) map[string]string {
		h := pipeline.ParseClientHello(p)
		out := map[string]string{}
		for _, f := range pipeline.TLSFields {
			if v, ok := h.Field(f); ok {
				out[f] = v
			}
		}
		return out
	}
	captured := goHello[:min(len(goHello), bpf.EmitHelloBytes)]
	for i, p := range [][]byte{captured, crafted, []byte("GET / HTTP/1.1\r\n\r\n")} {
		want := helloFields(p)
		if i < 2 && len(want) != len(pipeline.TLSFields) {
			t.Fatalf("hello %d: the decoder gives %v, want every TLS field", i, want)
		}
		got := events[i]
		if got["payload"] != hex.EncodeToString(p) {
			t.Errorf("event %d: payload of %d hex digits, want the first %d bytes of the payload", i, len(fmt.Sprint(got["payload"])), len(p))
		}
		for _, f := range pipeline.TLSFields {
			if w, ok := want[f]; ok && got[f] != w || !ok && got[f] != nil {
				t.Errorf("event %d: %s = %v, want %q (%v)", i, f, got[f], w, got)
			}
		}
	}
	if events[0]["tls_sni"] != "www.example.com" || events[0]["tls_version"] != "1.3" || events[0]["tls_alpn"] != "h2,http/1.1" {
		t.Errorf("crypto/tls's hello: %v", events[0])
	}
}
