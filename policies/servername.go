package policies

import (
	"fmt"
	"strings"

	"cuelang.org/go/cue"
)

// serverNames reads match.tls_sni: each element a DNS name or "*." and
// one, lowercased; the kernel compares names lowercased too (bpf/tls.h).
func (d *decoder) serverNames(v cue.Value) []string {
	var out []string
	elems := oneOrMany(v)
	if v.Kind() == cue.ListKind && len(elems) == 0 {
		d.errorf(d.pos(v), "match.tls_sni", "an empty list matches no name: remove tls_sni to match any packet, or name the servers")
		return nil
	}
	for i, e := range elems {
		s, _ := e.String()
		name, err := CheckServerName(s)
		if err != nil {
			d.errorf(d.pos(e), elementPath(v, "match.tls_sni", i), "%v", err)
			continue
		}
		out = append(out, name)
	}
	return out
}

// CheckServerName checks a tls_sni pattern and returns it lowercased: a
// DNS name of letters, digits, hyphens and underscores in labels of 1 to 63
// bytes ("example.com", one trailing dot dropped), at most 253 bytes, or "*." followed by such a name, which matches
// every name that ends in "." and it (any number of labels in place of the
// "*"), not the name itself.
func CheckServerName(s string) (string, error) {
	const want = `want a server name such as "example.com" or a suffix pattern such as "*.example.com"`
	name := strings.ToLower(strings.TrimSuffix(s, "."))
	wildcard := false
	if rest, ok := strings.CutPrefix(name, "*."); ok {
		wildcard, name = true, rest
	}
	if name == "" {
		return "", fmt.Errorf("%q names no server: %s", s, want)
	}
	// A DNS name has at most 253 bytes in this form (codegen checks the
	// kernel's own limit, bpf.TLSMaxName).
	if len(name) > 253 {
		return "", fmt.Errorf("%q is %d bytes long; DNS names have at most 253: %s", s, len(name), want)
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" {
			return "", fmt.Errorf("%q has an empty label: %s", s, want)
		}
		if len(label) > 63 {
			return "", fmt.Errorf("%q has a label of %d bytes; DNS labels have at most 63: %s", s, len(label), want)
		}
		for _, c := range []byte(label) {
			if c == '*' {
				return "", fmt.Errorf("%q: a * may only begin a pattern, as in \"*.example.com\" (any name under example.com)", s)
			}
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("%q has the byte %q, which a host name does not (internationalized names are written in their xn-- form): %s", s, c, want)
			}
		}
	}
	if wildcard {
		return "*." + name, nil
	}
	return name, nil
}
