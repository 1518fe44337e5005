package reference

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"

	"github.com/grain-ebpf/grain/internal/pktbuild"
)

// The random policy sets and frames of the differential tests. Both draw
// from small pools (addresses, ports, patterns) so that frames hit the
// rules often; frames also take every shape the parser distinguishes.

var (
	// IPv4 lengths on both sides of the index's /16 (bpf/xdp.c,
	// cidr_index), nested within and across it
	genV4 = []string{"10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3", "192.0.2.0/24", "192.0.2.7", "0.0.0.0/0",
		"10.1.16.0/20", "10.1.128.0/17", "172.16.0.0/12", "192.0.2.6/31"}
	genV6 = []string{"fd00::/8", "fd00:1::/32", "fd00:1::/64", "fd00:1::7", "2001:db8::/32", "::/0"}
	// host addresses of frames: inside and outside the prefixes above
	genHosts4 = []string{"10.1.2.3", "10.1.2.4", "10.1.9.9", "10.200.0.1", "192.0.2.7", "192.0.2.200", "198.51.100.1",
		"10.1.20.1", "10.1.200.1", "10.0.255.255", "172.31.255.255", "172.32.0.1", "192.0.2.6"}
	genHosts6 = []string{"fd00:1::7", "fd00:1::8", "fd00:1:0:1::1", "fd99::1", "2001:db8::1", "2001:db9::1"}
	genPorts  = []string{"53", "80", "443", "8080", "1000-2000", "0-1023", "1024-65535", "65535", "0"}
	// frames' ports: inside and at the edges of the ranges above
	genFramePorts = []uint16{53, 80, 443, 8080, 999, 1000, 1500, 2000, 2001, 1023, 1024, 65535, 0, 40000}
	genFlags      = []string{"fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr"}
	// patterns in Snort notation, and their bytes for payloads
	genPatterns = []struct{ snort, bytes string }{
		{"GET", "GET"}, {"HTTP/1.1", "HTTP/1.1"}, {"Host: ", "Host: "}, {"|00 00|", "\x00\x00"},
		{"a|7C|b", "a|b"}, {"admin", "admin"}, {"x", "x"}, {"|16 03 01|", "\x16\x03\x01"},
		{"User-Agent: curl/8.5.0 (x86_64-pc-linux-gnu) libcurl", "User-Agent: curl/8.5.0 (x86_64-pc-linux-gnu) libcurl"},
		{"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"},
		{"ZZ", "ZZ"}, {"eTc/PaSsWd", "eTc/PaSsWd"},
	}
	// tls_sni names and patterns of policies, and the names hellos ask for
	genServerNames = []string{"grain.example", "*.example", "*.b.example", "other.test", "*.grain.example"}
	genHelloNames  = []string{"grain.example", "x.grain.example", "a.b.example", "GRAIN.Example.", "example", "other.test",
		"zz.other.test", "b.example", ""}
	// gate-mode patterns: all four bytes long, so every rule's quick word
	// ends at payload byte 4 and the generation gets a gate
	genGatePatterns = []string{"GET ", "POST", "HEAD", "get ", "PUT "}
)

// genSet is one random policy set.
type genSet struct {
	src   string
	rules int
}

// randomPolicies writes n random packet policies. In gate mode every rule
// starts with a four-byte anchored content, so the generation has gates.
func randomPolicies(rng *rand.Rand, n int, gate bool) genSet {
	var b strings.Builder
	pick := func(list []string) string { return list[rng.IntN(len(list))] }
	quoteList := func(list []string, k int) string {
		var parts []string
		for range k {
			parts = append(parts, fmt.Sprintf("%q", pick(list)))
		}
		if len(parts) == 1 && rng.IntN(2) == 0 {
			return parts[0]
		}
		return "[" + strings.Join(parts, ", ") + "]"
	}
	for i := range n {
		fmt.Fprintf(&b, "p%03d: {\n\tpriority: %d\n", i, rng.IntN(40))
		if rng.IntN(6) == 0 {
			b.WriteString("\tmode: \"monitor\"\n")
		}
		attach := rng.IntN(8)
		switch attach {
		case 0:
			b.WriteString("\txdp: interfaces: [\"eth0\"]\n")
		case 1:
			b.WriteString("\txdp: interfaces: [\"l*\"]\n")
		case 2:
			b.WriteString("\txdp: interfaces: [\"lo\", \"eth0\"]\n")
		default:
			b.WriteString("\txdp: interfaces: [\"lo\"]\n")
		}
		var match []string
		var protos []string
		if gate || rng.IntN(2) == 0 {
			pool := []string{"tcp", "udp", "icmp", "icmpv6"}
			if gate {
				pool = pool[:2]
			}
			for range 1 + rng.IntN(2) {
				protos = append(protos, pick(pool))
			}
		}
		hasPorts, hasFlags := false, false
		if rng.IntN(3) == 0 {
			pool := genV4
			if rng.IntN(3) == 0 {
				pool = genV6
			}
			match = append(match, fmt.Sprintf("saddr: %s", quoteList(pool, 1+rng.IntN(2))))
		}
		if rng.IntN(3) == 0 {
			pool := genV4
			if rng.IntN(3) == 0 {
				pool = genV6
			}
			match = append(match, fmt.Sprintf("daddr: %s", quoteList(pool, 1+rng.IntN(2))))
		}
		for _, f := range []string{"sport", "dport"} {
			if rng.IntN(3) == 0 {
				var ports []string
				for range 1 + rng.IntN(2) {
					p := pick(genPorts)
					if !strings.Contains(p, "-") {
						ports = append(ports, p)
					} else {
						ports = append(ports, fmt.Sprintf("%q", p))
					}
				}
				match = append(match, fmt.Sprintf("%s: [%s]", f, strings.Join(ports, ", ")))
				hasPorts = true
			}
		}
		if rng.IntN(5) == 0 {
			var flags []string
			for _, j := range rng.Perm(len(genFlags))[:1+rng.IntN(2)] {
				f := genFlags[j]
				if rng.IntN(3) == 0 {
					f = "!" + f
				}
				flags = append(flags, fmt.Sprintf("%q", f))
			}
			match = append(match, fmt.Sprintf("tcp_flags: [%s]", strings.Join(flags, ", ")))
			hasFlags = true
		}
		hasSNI := rng.IntN(6) == 0
		if hasSNI {
			var names []string
			for range 1 + rng.IntN(2) {
				names = append(names, pick(genServerNames))
			}
			match = append(match, fmt.Sprintf("tls_sni: %s", quoted(names)))
		}
		// grain refuses ports without tcp or udp, and flags or server
		// names without tcp
		if len(protos) > 0 && (hasFlags || hasSNI) && !slices.Contains(protos, "tcp") {
			protos = append(protos, "tcp")
		}
		if len(protos) > 0 && hasPorts && !slices.Contains(protos, "tcp") && !slices.Contains(protos, "udp") {
			protos = append(protos, "udp")
		}
		if len(protos) > 0 {
			match = append(match, fmt.Sprintf("protocol: %s", quoted(protos)))
		}
		if attach == 2 && rng.IntN(4) == 0 {
			match = append(match, fmt.Sprintf("interface: %q", pick([]string{"lo", "eth0"})))
		}
		var contents []string
		if gate {
			contents = append(contents, fmt.Sprintf("{startswith: %q%s}", pick(genGatePatterns), maybe(rng, 3, ", nocase: true")))
		}
		if k := rng.IntN(4); k > 0 && !gate || gate && rng.IntN(3) == 0 {
			for range 1 + rng.IntN(3) {
				if len(contents) == 4 {
					break
				}
				contents = append(contents, randomContent(rng))
			}
		}
		if len(contents) > 0 {
			match = append(match, fmt.Sprintf("payload: [%s]", strings.Join(contents, ", ")))
		}
		if len(match) > 0 {
			fmt.Fprintf(&b, "\tmatch: {%s}\n", strings.Join(match, ", "))
		}
		fmt.Fprintf(&b, "\tthen: %q\n", pick([]string{"drop", "pass", "count", "count", "drop"}))
		if rng.IntN(3) == 0 {
			fields := []string{"saddr", "daddr", "sport", "dport", "protocol", "tcp_flags", "len", "payload", "dns_qname", "tls_sni", "tls_alpn"}
			rng.Shuffle(len(fields), func(i, j int) { fields[i], fields[j] = fields[j], fields[i] })
			k := rng.IntN(4)
			var fs []string
			for _, f := range fields[:k] {
				fs = append(fs, fmt.Sprintf("%q", f))
			}
			fmt.Fprintf(&b, "\temit: {event: \"e%d\", fields: [%s], dedup: \"0s\"}\n", i, strings.Join(fs, ", "))
		}
		b.WriteString("}\n")
	}
	return genSet{src: b.String(), rules: n}
}

func quoted(list []string) string {
	var parts []string
	for _, s := range list {
		parts = append(parts, fmt.Sprintf("%q", s))
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

func maybe(rng *rand.Rand, oneIn int, s string) string {
	if rng.IntN(oneIn) == 0 {
		return s
	}
	return ""
}

// randomContent is one payload condition with every option drawn.
func randomContent(rng *rand.Rand) string {
	p := genPatterns[rng.IntN(len(genPatterns))]
	n := len(p.bytes)
	var opts []string
	offset := 0
	if rng.IntN(3) == 0 {
		offset = rng.IntN(24)
		opts = append(opts, fmt.Sprintf("offset: %d", offset))
	}
	kind := "contains"
	switch rng.IntN(4) {
	case 0:
		kind = "startswith"
	case 1:
		opts = append(opts, fmt.Sprintf("depth: %d", n+rng.IntN(40)))
	}
	if rng.IntN(3) == 0 {
		opts = append(opts, "nocase: true")
	}
	if rng.IntN(4) == 0 {
		opts = append(opts, "not: true")
	}
	if len(opts) == 0 && kind == "contains" && rng.IntN(2) == 0 {
		return fmt.Sprintf("%q", p.snort) // a bare pattern
	}
	return fmt.Sprintf("{%s: %q%s}", kind, p.snort, prefixJoin(opts))
}

func prefixJoin(opts []string) string {
	if len(opts) == 0 {
		return ""
	}
	return ", " + strings.Join(opts, ", ")
}

// randomPayload strings patterns (in random case, at random places) and
// random bytes together, up to max bytes.
func randomPayload(rng *rand.Rand, max int) []byte {
	if max <= 0 || rng.IntN(8) == 0 {
		return nil
	}
	target := rng.IntN(max + 1)
	if rng.IntN(2) == 0 {
		target = rng.IntN(min(max, 96) + 1)
	}
	out := make([]byte, 0, target+64)
	if rng.IntN(3) == 0 {
		out = append(out, genGatePatterns[rng.IntN(len(genGatePatterns))]...)
	}
	for len(out) < target {
		switch rng.IntN(3) {
		case 0:
			p := []byte(genPatterns[rng.IntN(len(genPatterns))].bytes)
			if rng.IntN(3) == 0 {
				for i, c := range p {
					if (c|0x20) >= 'a' && (c|0x20) <= 'z' && rng.IntN(2) == 0 {
						p[i] = c ^ 0x20
					}
				}
			}
			if rng.IntN(6) == 0 && len(p) > 1 {
				p = p[:rng.IntN(len(p))] // a near miss
			}
			out = append(out, p...)
		case 1:
			for range rng.IntN(24) {
				out = append(out, "abcxyzGETHOST /.:|\x00\x16\xff"[rng.IntN(19)])
			}
		default:
			for range rng.IntN(8) {
				out = append(out, byte(rng.UintN(256)))
			}
		}
	}
	return out[:target]
}

// randomFrame is one frame of any shape: VLAN tags, IPv4 with options and
// fragments, IPv6 with extension headers, TCP, UDP, ICMP and others,
// Ethernet padding, truncation and damaged header bytes.
func randomFrame(rng *rand.Rand) []byte {
	if rng.IntN(40) == 0 {
		f := pktbuild.ARP()
		if rng.IntN(2) == 0 {
			f.EtherType = uint16(rng.UintN(65536))
		}
		return f.Bytes()
	}
	var f pktbuild.Frame
	v6 := rng.IntN(3) == 0
	if v6 {
		f.Src = netip.MustParseAddr(genHosts6[rng.IntN(len(genHosts6))])
		f.Dst = netip.MustParseAddr(genHosts6[rng.IntN(len(genHosts6))])
	} else {
		f.Src = netip.MustParseAddr(genHosts4[rng.IntN(len(genHosts4))])
		f.Dst = netip.MustParseAddr(genHosts4[rng.IntN(len(genHosts4))])
	}
	switch rng.IntN(10) {
	case 0:
		f.VLANs = []uint16{uint16(rng.UintN(4096))}
	case 1:
		f.VLANs = []uint16{10, uint16(rng.UintN(4096))}
	case 2:
		if rng.IntN(4) == 0 {
			f.VLANs = []uint16{1, 2, 3} // a third tag: not parsed
		}
	}
	switch r := rng.IntN(20); {
	case r < 9:
		f.Protocol = 6
	case r < 15:
		f.Protocol = 17
	case r < 17:
		f.Protocol = 1
		if v6 {
			f.Protocol = 58
		}
	case r < 18:
		f.Protocol = 58
		if v6 {
			f.Protocol = 1
		}
	default:
		f.Protocol = []uint8{47, 132, 0, 255}[rng.IntN(4)]
	}
	f.SPort = genFramePorts[rng.IntN(len(genFramePorts))]
	f.DPort = genFramePorts[rng.IntN(len(genFramePorts))]
	if rng.IntN(10) == 0 {
		f.SPort, f.DPort = uint16(rng.UintN(65536)), uint16(rng.UintN(65536))
	}
	f.TCPFlags = uint8(rng.UintN(256))
	if rng.IntN(2) == 0 {
		f.TCPFlags = []uint8{pktbuild.SYN, pktbuild.ACK, pktbuild.ACK | pktbuild.PSH, pktbuild.SYN | pktbuild.ACK, pktbuild.FIN | pktbuild.ACK, pktbuild.RST}[rng.IntN(6)]
	}
	if rng.IntN(4) == 0 {
		f.TCPOptions = make([]byte, 1+rng.IntN(40))
		for i := range f.TCPOptions {
			f.TCPOptions[i] = 1 // NOP
		}
	}
	if !v6 && rng.IntN(5) == 0 {
		f.IPOptions = make([]byte, 1+rng.IntN(40))
		for i := range f.IPOptions {
			f.IPOptions[i] = 1
		}
	}
	if !v6 && rng.IntN(12) == 0 {
		f.FragmentOffset = uint16(1 + rng.IntN(100))
	}
	if v6 && rng.IntN(3) == 0 {
		for range 1 + rng.IntN(7) {
			f.IPv6ExtHeaders = append(f.IPv6ExtHeaders, []uint8{0, 43, 60, 44, 51}[rng.IntN(5)])
		}
	}
	f.Payload = randomPayload(rng, 1400)
	if f.Protocol == 6 && rng.IntN(6) == 0 {
		sid := make([]byte, rng.IntN(34))
		f.Payload = clientHello(genHelloNames[rng.IntN(len(genHelloNames))], sid, rng.IntN(5))
		if rng.IntN(2) == 0 {
			f.Payload = shuffledHello(rng, genHelloNames[rng.IntN(len(genHelloNames))])
		}
		if rng.IntN(5) == 0 {
			f.Payload[rng.IntN(len(f.Payload))] = byte(rng.UintN(256)) // a damaged hello
		}
	}
	frame := f.Bytes()

	// Fragment offsets and lengths in IPv6 fragment headers pktbuild
	// leaves zero.
	if v6 && len(f.IPv6ExtHeaders) > 0 {
		off := 14 + 4*len(f.VLANs) + 40
		for _, h := range f.IPv6ExtHeaders {
			if h == 44 && rng.IntN(2) == 0 && off+4 <= len(frame) {
				binary.BigEndian.PutUint16(frame[off+2:], uint16(rng.UintN(65536)))
			}
			if (h == 0 || h == 60) && rng.IntN(6) == 0 && off+2 <= len(frame) {
				frame[off+1] = byte(rng.IntN(3)) // a longer header than it is
			}
			off += 8
		}
	}
	if !v6 && rng.IntN(12) == 0 {
		l3 := 14 + 4*len(f.VLANs)
		if l3+8 <= len(frame) {
			frame[l3+6] |= 0x20 // more fragments: a first fragment
		}
	}
	// Ethernet padding: bytes past the IP length.
	if rng.IntN(6) == 0 {
		for range 1 + rng.IntN(60) {
			frame = append(frame, byte(rng.UintN(256)))
		}
	}
	// A damaged header byte.
	if rng.IntN(10) == 0 {
		i := rng.IntN(min(len(frame), 14+4*len(f.VLANs)+80))
		frame[i] = byte(rng.UintN(256))
	}
	// A wrong IP length.
	if rng.IntN(15) == 0 {
		l3 := 14 + 4*len(f.VLANs)
		if v6 && l3+6 <= len(frame) {
			binary.BigEndian.PutUint16(frame[l3+4:], uint16(rng.IntN(len(frame))))
		} else if !v6 && l3+4 <= len(frame) {
			binary.BigEndian.PutUint16(frame[l3+2:], uint16(rng.IntN(len(frame))))
		}
	}
	// Truncated, but never below an Ethernet header: the kernel's test
	// run refuses shorter frames, and no driver passes one.
	if rng.IntN(8) == 0 && len(frame) > 14 {
		frame = frame[:14+rng.IntN(len(frame)-13)]
	}
	return frame
}

// clientHello is the first segment of a TLS ClientHello asking for name
// (none when ""), with a session id and extra extensions before
// server_name.
func clientHello(name string, sid []byte, extra int) []byte {
	be16 := func(b []byte, v int) []byte { return binary.BigEndian.AppendUint16(b, uint16(v)) }
	var ext []byte
	for i := range extra {
		ext = be16(ext, 0x0a+i) // supported groups and others: skipped
		ext = be16(ext, 4)
		ext = append(ext, 0, 2, 0, 0x1d)
	}
	if name != "" {
		sn := be16(nil, len(name)+3)
		sn = append(sn, 0)
		sn = be16(sn, len(name))
		sn = append(sn, name...)
		ext = be16(ext, 0)
		ext = be16(ext, len(sn))
		ext = append(ext, sn...)
	}
	body := []byte{3, 3}
	body = append(body, make([]byte, 32)...) // random
	body = append(body, byte(len(sid)))
	body = append(body, sid...)
	body = be16(body, 4)
	body = append(body, 0x13, 0x01, 0x13, 0x02) // cipher suites
	body = append(body, 1, 0)                   // compression: null
	body = be16(body, len(ext))
	body = append(body, ext...)
	hs := append([]byte{1, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
	rec := []byte{22, 3, 1}
	rec = be16(rec, len(hs))
	return append(rec, hs...)
}

// shuffledHello is a hello as browsers send them, asking for name: its
// extensions in random order with GREASE ones, a key share of random size
// (up to a post-quantum one's 1216 bytes, which pushes what follows past
// a segment's usual end), and up to 40 more extensions (past the 32 the
// program walks), sometimes cut short.
func shuffledHello(rng *rand.Rand, name string) []byte {
	exts := []pktbuild.TLSExt{
		pktbuild.SNIExt(name),
		pktbuild.ALPNExt("h2", "http/1.1"),
		pktbuild.VersionsExt(pktbuild.GREASE(rng.IntN(16)), 0x0304, 0x0303),
		pktbuild.KeyShareExt(0x11ec, []int{32, 600, 1216}[rng.IntN(3)]),
		{Type: pktbuild.GREASE(rng.IntN(16))},
	}
	for range rng.IntN(41) {
		exts = append(exts, pktbuild.TLSExt{Type: uint16(0x4000 + rng.IntN(100)), Data: make([]byte, rng.IntN(8))})
	}
	rng.Shuffle(len(exts), func(i, j int) { exts[i], exts[j] = exts[j], exts[i] })
	h := pktbuild.ClientHello(0x0303, []uint16{pktbuild.GREASE(rng.IntN(16)), 0x1301, 0x1302}, exts...)
	if rng.IntN(4) == 0 {
		h = h[:1+rng.IntN(len(h))]
	}
	return h
}
