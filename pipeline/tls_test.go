package pipeline

import (
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"regexp"
	"testing"

	"github.com/grain-ebpf/grain/internal/pktbuild"
)

func helloFields(p []byte) map[string]string {
	h := ParseClientHello(p)
	out := map[string]string{}
	for _, f := range TLSFields {
		if v, ok := h.Field(f); ok {
			out[f] = v
		}
	}
	return out
}

func sha12(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])[:12]
}

// The fields of a crafted hello, JA4 included: GREASE values are left out
// of its counts and lists; server_name and ALPN out of the extensions it
// hashes.
func TestTLSFieldsCrafted(t *testing.T) {
	h := pktbuild.ClientHello(0x0303, []uint16{0x1301, pktbuild.GREASE(2), 0xc02b, 0x1302},
		pktbuild.TLSExt{Type: pktbuild.GREASE(0)},
		pktbuild.SNIExt("Www.Example.com"),
		pktbuild.ALPNExt("h2", "http/1.1"),
		pktbuild.VersionsExt(pktbuild.GREASE(7), 0x0304, 0x0303),
		pktbuild.SigAlgsExt(0x0403, 0x0804),
		pktbuild.TLSExt{Type: pktbuild.TLSExtSupportedGroups, Data: []byte{0, 2, 0, 0x1d}})
	want := map[string]string{
		"tls_sni": "Www.Example.com", "tls_version": "1.3", "tls_legacy_version": "1.2", "tls_alpn": "h2,http/1.1",
		"tls_ja4": "t13d0305h2_" + sha12("1301,1302,c02b") + "_" + sha12("000a,000d,002b_0403,0804"),
	}
	got := helloFields(h)
	for _, f := range TLSFields {
		if got[f] != want[f] {
			t.Errorf("%s = %q, want %q", f, got[f], want[f])
		}
	}

	// TLS 1.2 without supported_versions, ALPN or signature algorithms.
	h12 := pktbuild.ClientHello(0x0303, []uint16{0xc02f}, pktbuild.SNIExt("a.example"), pktbuild.TLSExt{Type: 0x0017})
	got = helloFields(h12)
	want = map[string]string{"tls_sni": "a.example", "tls_version": "1.2", "tls_legacy_version": "1.2",
		"tls_ja4": "t12d010200_" + sha12("c02f") + "_" + sha12("0017")}
	if len(got) != len(want) {
		t.Errorf("TLS 1.2 hello: fields %v, want %v", got, want)
	}
	for f, v := range want {
		if got[f] != v {
			t.Errorf("TLS 1.2 hello: %s = %q, want %q", f, got[f], v)
		}
	}
}

// A hello cut at every length gives each field either as the whole hello
// gives it or not at all, never another value; a corrupted length gives no
// field at all; a payload that is not a hello gives none.
func TestTLSFieldsTruncated(t *testing.T) {
	hellos := map[string][]byte{
		"crafted":    pktbuild.Hello13("blocked.example", 3, 1216),
		"crypto/tls": pktbuild.GoClientHello(t, &tls.Config{ServerName: "www.example.com", NextProtos: []string{"h2", "http/1.1"}}),
	}
	for name, h := range hellos {
		whole := helloFields(h)
		for _, f := range TLSFields {
			if whole[f] == "" {
				t.Errorf("%s: the whole hello has no %s (%v)", name, f, whole)
			}
		}
		for n := 0; n < len(h); n++ {
			for f, v := range helloFields(h[:n]) {
				if v != whole[f] {
					t.Errorf("%s cut to %d bytes: %s = %q, the whole hello's is %q", name, n, f, v, whole[f])
				}
			}
		}
	}

	// crypto/tls puts its key share last: its first segment at a
	// 1500-byte MTU (1448 bytes with TCP timestamps) has every field.
	g := hellos["crypto/tls"]
	if len(g) <= 1448 {
		t.Logf("crypto/tls's hello is %d bytes: one segment", len(g))
	}
	first := helloFields(g[:min(len(g), 1448)])
	for _, f := range TLSFields {
		if first[f] != helloFields(g)[f] {
			t.Errorf("crypto/tls's first segment: %s = %q, want %q", f, first[f], helloFields(g)[f])
		}
	}
	if !regexp.MustCompile(`^t13d[0-9]{4}h2_[0-9a-f]{12}_[0-9a-f]{12}$`).MatchString(first["tls_ja4"]) {
		t.Errorf("crypto/tls's JA4 %q is not of the form t13d....h2_<12 hex>_<12 hex>", first["tls_ja4"])
	}

	// Corrupted lengths inside a hello captured whole.
	h := pktbuild.Hello13("blocked.example", 0, 32)
	for _, c := range []struct {
		name string
		at   int
		b    byte
	}{
		{"session id longer than 32", 43, 33},
		{"cipher suites past the hello", 76, 0xff},
		{"odd cipher suites length", 77, byte(2*len(pktbuild.HelloCiphers) - 1)},
	} {
		bad := append([]byte(nil), h...)
		bad[c.at] = c.b
		if got := helloFields(bad); len(got) != 0 {
			t.Errorf("%s: fields %v, want none", c.name, got)
		}
	}
	sni := sniEnd(t, h, "blocked.example")
	bad := append([]byte(nil), h...)
	bad[sni-len("blocked.example")-1]++ // the name's length: past its extension
	if got := helloFields(bad); len(got) != 0 {
		t.Errorf("name length past its extension: fields %v, want none", got)
	}
	for _, p := range [][]byte{nil, []byte("GET / HTTP/1.1\r\n\r\n"), {22, 3, 1, 0, 5, 2, 0, 0, 1, 0}} {
		if got := helloFields(p); len(got) != 0 {
			t.Errorf("%q: fields %v, want none", p, got)
		}
	}
}

// sniEnd is the payload offset one past name in a hello.
func sniEnd(t *testing.T, hello []byte, name string) int {
	t.Helper()
	i := bytes.Index(hello, []byte(name))
	if i < 0 {
		t.Fatalf("%q is not in the hello", name)
	}
	return i + len(name)
}
