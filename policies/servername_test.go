package policies

import (
	"strings"
	"testing"
)

// tls_sni patterns are lowercased DNS names or "*." and one; anything
// else is refused saying what is wrong.
func TestCheckServerName(t *testing.T) {
	for _, c := range []struct{ in, want, err string }{
		{"Example.COM", "example.com", ""},
		{"example.com.", "example.com", ""},
		{"*.Example.com", "*.example.com", ""},
		{"xn--bcher-kva.example", "xn--bcher-kva.example", ""},
		{"_srv.a-b.example", "_srv.a-b.example", ""},
		{"", "", "names no server"},
		{"*.", "", "a * may only begin"},
		{"a..example", "", "empty label"},
		{"www.*.example", "", "a * may only begin"},
		{"*example.com", "", "a * may only begin"},
		{"bücher.example", "", "xn-- form"},
		{"a b.example", "", "has the byte"},
		{strings.Repeat("a", 64) + ".example", "", "label of 64 bytes"},
		{strings.Repeat("abcdefg.", 32) + "x", "", "DNS names have at most 253"},
	} {
		got, err := CheckServerName(c.in)
		switch {
		case c.err == "" && (err != nil || got != c.want):
			t.Errorf("%q: %q, %v; want %q", c.in, got, err, c.want)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%q: %q, %v; want an error saying %q", c.in, got, err, c.err)
		}
	}
}

// tls_sni is for xdp policies over TCP, and an empty list is refused.
func TestServerNameConditions(t *testing.T) {
	for _, c := range []struct{ src, err string }{
		{`p: {xdp: interfaces: ["eth0"], match: {protocol: "udp", tls_sni: "a.example"}, then: "drop"}`, "tls_sni needs protocol tcp"},
		{`p: {xdp: interfaces: ["eth0"], match: tls_sni: [], then: "drop"}`, "empty list"},
		{`p: {xdp: interfaces: ["eth0"], match: tls_sni: ["a.example", "b..example"], then: "drop"}`, "match.tls_sni[1]"},
		{`p: {syscall: ["openat"], match: tls_sni: "a.example", then: "count", emit: event: "x"}`, "tls_sni is a packet condition"},
	} {
		_, err := LoadBytes("sni.cue", []byte(c.src))
		if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("%s: %v; want an error containing %q", c.src, err, c.err)
		}
	}
	snap, err := LoadBytes("sni.cue", []byte(`p: {xdp: interfaces: ["eth0"], match: tls_sni: ["A.example", "*.B.example"], then: "drop"}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := snap.Policies[0].Match.ServerNames; strings.Join(got, " ") != "a.example *.b.example" {
		t.Errorf("server names %v, want [a.example *.b.example]", got)
	}
}
