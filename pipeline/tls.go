package pipeline

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// TLS fields of packet events, decoded from the first TCP segment of a
// ClientHello that the event carries (bpf.EventHello: up to
// bpf.EmitHelloBytes of payload), as the engine's event reader and the
// reference evaluator both give them. A field is given only when the bytes
// that decide it were captured and are well formed: a payload that is not
// a hello, or a malformed one, gets no TLS field, and a hello cut short (it
// spans segments, as large post-quantum key shares make it) gets only the
// fields whose extensions lie in the first segment.
//
//   - tls_sni: the host_name of the server_name extension, bytes other than
//     printable ASCII written as \DDD (as dns_qname), letters as sent.
//   - tls_legacy_version: the hello's legacy_version ("1.2").
//   - tls_version: the highest version offered: the highest non-GREASE
//     entry of supported_versions, or, for a whole hello without that
//     extension, the legacy version.
//   - tls_alpn: the ALPN protocols offered, comma-separated, in order.
//   - tls_ja4: the JA4 fingerprint of the hello (FoxIO's JA4 TLS client
//     fingerprint, "t13d1516h2_8daaf6152771_e5627efa2ab1"), when the
//     capture holds every extension's type and the bodies JA4 reads: a
//     whole hello, or one cut inside its last extension (Go's and
//     OpenSSL's put the large key share last).

const (
	tlsExtServerName        = 0x0000
	tlsExtSignatureAlgs     = 0x000d
	tlsExtALPN              = 0x0010
	tlsExtSupportedVersions = 0x002b
)

// ClientHello is what a captured hello says; the ...OK flags tell which
// parts were captured whole.
type ClientHello struct {
	ok            bool // a ClientHello, well formed as far as captured
	complete      bool // captured to its end
	legacyVersion uint16
	ciphers       []uint16
	extensions    []uint16 // types, in order, of the extensions captured
	// allTypes: every extension's type is known (the hello was captured
	// to its end, or to within the body of its last extension, lastCut)
	allTypes    bool
	lastCut     uint16
	sni         string
	hasSNI      bool
	alpn        []string
	hasALPN     bool
	versions    []uint16
	hasVersions bool
	sigAlgs     []uint16
	hasSigAlgs  bool
}

// ParseClientHello reads the hello at the start of a TCP payload.
func ParseClientHello(p []byte) ClientHello {
	var h ClientHello
	// record: type 22 (handshake), version 3.x, length
	if len(p) < 9 || p[0] != 22 || p[1] != 3 || p[5] != 1 {
		return h
	}
	recordEnd := 5 + int(binary.BigEndian.Uint16(p[3:]))
	helloEnd := 9 + (int(p[6])<<16 | int(p[7])<<8 | int(p[8]))
	if helloEnd > recordEnd {
		// The hello continues in another record: only this one's
		// bytes are the hello's.
		helloEnd = recordEnd
	} else {
		h.complete = true
	}
	if len(p) < helloEnd {
		h.complete = false
	} else {
		p = p[:helloEnd]
	}
	// A read that fails inside a hello captured whole means a malformed
	// one (no field at all); in one cut short, only that the rest is not
	// known.
	cut := func() ClientHello {
		if h.complete {
			h.ok = false
		}
		return h
	}
	r := tlsReader{b: p, off: 9}
	v, ok := r.u16()
	if !ok {
		return h
	}
	h.legacyVersion, h.ok = v, true
	if !r.skip(32) { // random
		return cut()
	}
	sid, ok := r.vector8()
	if !ok {
		return cut()
	}
	if len(sid) > 32 {
		h.ok = false
		return h
	}
	cs, ok := r.vector16()
	if !ok {
		return cut()
	}
	if len(cs)%2 != 0 {
		h.ok = false
		return h
	}
	for i := 0; i < len(cs); i += 2 {
		h.ciphers = append(h.ciphers, binary.BigEndian.Uint16(cs[i:]))
	}
	if _, ok := r.vector8(); !ok { // compression methods
		return cut()
	}
	if r.off == len(p) && h.complete {
		h.allTypes = true
		return h // a hello without extensions
	}
	declared, ok := r.u16()
	if !ok {
		return cut()
	}
	exts := p[r.off:]
	if r.off+int(declared) <= len(p) {
		exts = p[r.off : r.off+int(declared)]
		if h.complete && r.off+int(declared) != len(p) {
			h.ok = false // bytes after the extensions
			return h
		}
	} else if h.complete {
		h.ok = false
		return h
	}
	er := tlsReader{b: exts}
	for er.off < len(exts) {
		start := er.off
		typ, ok1 := er.u16()
		n, ok2 := er.u16()
		if !ok1 || !ok2 {
			return cut()
		}
		if er.off+int(n) > len(exts) {
			// Cut short by the capture. When this is the last
			// extension, every type is known all the same.
			if h.complete {
				h.ok = false
				return h
			}
			if start+4+int(n) == int(declared) {
				h.extensions = append(h.extensions, typ)
				h.allTypes, h.lastCut = true, typ
			}
			return h
		}
		body := exts[er.off : er.off+int(n)]
		er.off += int(n)
		h.extensions = append(h.extensions, typ)
		if !h.readExtension(typ, body) {
			h.ok = false
			return h
		}
	}
	h.allTypes = er.off == int(declared)
	return h
}

// readExtension reads the extensions the fields come from; false when one
// is malformed.
func (h *ClientHello) readExtension(typ uint16, body []byte) bool {
	r := tlsReader{b: body}
	switch typ {
	case tlsExtServerName:
		list, ok := r.vector16()
		if !ok || r.off != len(body) {
			return false
		}
		lr := tlsReader{b: list}
		kind, ok := lr.u8()
		if !ok {
			return false
		}
		name, ok := lr.vector16()
		if !ok || kind != 0 || len(name) == 0 {
			return false
		}
		h.sni, h.hasSNI = presentName(name), true
	case tlsExtALPN:
		list, ok := r.vector16()
		if !ok || r.off != len(body) || len(list) == 0 {
			return false
		}
		lr := tlsReader{b: list}
		for lr.off < len(list) {
			proto, ok := lr.vector8()
			if !ok || len(proto) == 0 {
				return false
			}
			h.alpn = append(h.alpn, string(proto))
		}
		h.hasALPN = true
	case tlsExtSupportedVersions:
		list, ok := r.vector8()
		if !ok || r.off != len(body) || len(list) == 0 || len(list)%2 != 0 {
			return false
		}
		for i := 0; i < len(list); i += 2 {
			h.versions = append(h.versions, binary.BigEndian.Uint16(list[i:]))
		}
		h.hasVersions = true
	case tlsExtSignatureAlgs:
		list, ok := r.vector16()
		if !ok || r.off != len(body) || len(list)%2 != 0 {
			return false
		}
		for i := 0; i < len(list); i += 2 {
			h.sigAlgs = append(h.sigAlgs, binary.BigEndian.Uint16(list[i:]))
		}
		h.hasSigAlgs = true
	}
	return true
}

// TLSFields are the event fields a ClientHello gives.
var TLSFields = []string{"tls_sni", "tls_version", "tls_legacy_version", "tls_alpn", "tls_ja4"}

// Field is the value of one TLS event field (TLSFields), and whether the
// hello decides it.
func (h ClientHello) Field(f string) (string, bool) {
	if !h.ok {
		return "", false
	}
	switch f {
	case "tls_sni":
		return h.sni, h.hasSNI
	case "tls_legacy_version":
		return tlsVersionName(h.legacyVersion), true
	case "tls_version":
		v, ok := h.highestVersion()
		return tlsVersionName(v), ok
	case "tls_alpn":
		return strings.Join(h.alpn, ","), h.hasALPN
	case "tls_ja4":
		// The fingerprint needs every extension's type, and the
		// bodies of those it reads.
		if !h.allTypes || h.lastCut == tlsExtSignatureAlgs || h.lastCut == tlsExtALPN || h.lastCut == tlsExtSupportedVersions {
			return "", false
		}
		return h.ja4(), true
	}
	return "", false
}

// highestVersion is the highest version the hello offers, when known.
func (h ClientHello) highestVersion() (uint16, bool) {
	if !h.hasVersions {
		// Without supported_versions the legacy version is the
		// highest; known only when every extension's type is.
		return h.legacyVersion, h.allTypes && h.lastCut != tlsExtSupportedVersions
	}
	var best uint16
	found := false
	for _, v := range h.versions {
		if !isGREASE(v) && (!found || v > best) {
			best, found = v, true
		}
	}
	return best, found
}

// isGREASE tells the reserved values clients send to keep servers
// tolerant (RFC 8701): 0x0a0a, 0x1a1a, ... 0xfafa.
func isGREASE(v uint16) bool {
	return v&0x0f0f == 0x0a0a && v>>8 == v&0xff
}

func tlsVersionName(v uint16) string {
	switch v {
	case 0x0300:
		return "ssl3.0"
	case 0x0301:
		return "1.0"
	case 0x0302:
		return "1.1"
	case 0x0303:
		return "1.2"
	case 0x0304:
		return "1.3"
	}
	return fmt.Sprintf("0x%04x", v)
}

// ja4 is the hello's JA4 fingerprint: a_b_c, where a is "t" (TCP), the
// highest version ("13"), "d" with a server name or "i" without, the
// counts of cipher suites and extensions (two digits each, GREASE left
// out) and the first and last characters of the first ALPN protocol;
// b the first 12 hex digits of the SHA-256 of the sorted cipher suites;
// c of the sorted extensions but server_name and ALPN, then "_" and the
// signature algorithms in the order sent.
func (h ClientHello) ja4() string {
	var a strings.Builder
	a.WriteByte('t')
	v, _ := h.highestVersion()
	switch v {
	case 0x0304:
		a.WriteString("13")
	case 0x0303:
		a.WriteString("12")
	case 0x0302:
		a.WriteString("11")
	case 0x0301:
		a.WriteString("10")
	case 0x0300:
		a.WriteString("s3")
	default:
		a.WriteString("00")
	}
	if h.hasSNI {
		a.WriteByte('d')
	} else {
		a.WriteByte('i')
	}
	ciphers := withoutGREASE(h.ciphers)
	exts := withoutGREASE(h.extensions)
	fmt.Fprintf(&a, "%02d%02d", min(len(ciphers), 99), min(len(exts), 99))
	a.WriteString(alpnChars(h.alpn))

	slices.Sort(ciphers)
	b := truncatedHash(hexList(ciphers))
	var hashed []uint16
	for _, e := range exts {
		if e != tlsExtServerName && e != tlsExtALPN {
			hashed = append(hashed, e)
		}
	}
	slices.Sort(hashed)
	c := "000000000000"
	if len(hashed) > 0 {
		s := hexList(hashed)
		if sig := withoutGREASE(h.sigAlgs); len(sig) > 0 {
			s += "_" + hexList(sig)
		}
		c = truncatedHash(s)
	}
	return a.String() + "_" + b + "_" + c
}

// alpnChars are the first and last characters of the first ALPN
// protocol, or of its hex form when either is not a letter or digit;
// "00" without ALPN.
func alpnChars(alpn []string) string {
	if len(alpn) == 0 || alpn[0] == "" {
		return "00"
	}
	p := alpn[0]
	alnum := func(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	if !alnum(p[0]) || !alnum(p[len(p)-1]) {
		x := hex.EncodeToString([]byte(p))
		return x[:1] + x[len(x)-1:]
	}
	return p[:1] + p[len(p)-1:]
}

func withoutGREASE(vs []uint16) []uint16 {
	out := make([]uint16, 0, len(vs))
	for _, v := range vs {
		if !isGREASE(v) {
			out = append(out, v)
		}
	}
	return out
}

func hexList(vs []uint16) string {
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = fmt.Sprintf("%04x", v)
	}
	return strings.Join(parts, ",")
}

func truncatedHash(s string) string {
	if s == "" {
		return "000000000000"
	}
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])[:12]
}

// presentName writes a server name as dns_qname writes a label: printable
// ASCII as is, other bytes and backslashes as \DDD.
func presentName(name []byte) string {
	var b strings.Builder
	for _, c := range name {
		if c <= ' ' || c > '~' || c == '\\' {
			d := strconv.Itoa(int(c))
			b.WriteByte('\\')
			b.WriteString(strings.Repeat("0", 3-len(d)))
			b.WriteString(d)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// tlsReader reads big-endian values and length-prefixed vectors, never
// past its bytes.
type tlsReader struct {
	b   []byte
	off int
}

func (r *tlsReader) skip(n int) bool {
	if r.off+n > len(r.b) {
		return false
	}
	r.off += n
	return true
}

func (r *tlsReader) u8() (uint8, bool) {
	if r.off+1 > len(r.b) {
		return 0, false
	}
	r.off++
	return r.b[r.off-1], true
}

func (r *tlsReader) u16() (uint16, bool) {
	if r.off+2 > len(r.b) {
		return 0, false
	}
	r.off += 2
	return binary.BigEndian.Uint16(r.b[r.off-2:]), true
}

func (r *tlsReader) vector8() ([]byte, bool) {
	n, ok := r.u8()
	if !ok || r.off+int(n) > len(r.b) {
		return nil, false
	}
	r.off += int(n)
	return r.b[r.off-int(n) : r.off], true
}

func (r *tlsReader) vector16() ([]byte, bool) {
	start := r.off
	n, ok := r.u16()
	if !ok || r.off+int(n) > len(r.b) {
		r.off = start
		return nil, false
	}
	r.off += int(n)
	return r.b[r.off-int(n) : r.off], true
}
