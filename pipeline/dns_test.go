package pipeline

import (
	"bytes"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/internal/pktbuild"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

func TestDNSQuestionName(t *testing.T) {
	vmtest.HostOnly(t, "parsing in userspace")
	header := pktbuild.DNSQuery(7, "")[:12]
	withName := func(wire ...byte) []byte { return append(bytes.Clone(header), wire...) }
	label63 := strings.Repeat("a", 63)
	// 4 labels of 63 bytes: 4*64 + 1 = 257 bytes of wire name, over 255.
	tooLong := withName()
	for i := 0; i < 4; i++ {
		tooLong = append(append(tooLong, 63), label63...)
	}
	tooLong = append(tooLong, 0)
	// The longest name: 3 labels of 63 and one of 61, 255 bytes in all.
	longest := pktbuild.DNSQuery(1, strings.Join([]string{label63, label63, label63, strings.Repeat("b", 61)}, "."))

	for _, c := range []struct {
		name string
		msg  []byte
		want string
		err  error
	}{
		{"plain", pktbuild.DNSQuery(1, "www.example.com"), "www.example.com", nil},
		{"case kept", pktbuild.DNSQuery(1, "WwW.ExAmple.COM"), "WwW.ExAmple.COM", nil},
		{"root", pktbuild.DNSQuery(1, "."), ".", nil},
		{"no type and class", pktbuild.DNSQuery(1, "example.org")[:12+13], "example.org", nil},
		{"longest name", longest, longest255(label63), nil},
		{"escaped bytes", withName(3, 'a', '.', 'b', 2, '\\', 0x00, 1, 0xff, 0), `a\046b.\092\000.\255`, nil},
		{"header only", header, "", ErrDNSTruncated},
		{"short header", header[:11], "", ErrDNSTruncated},
		{"empty", nil, "", ErrDNSTruncated},
		{"label past the end", withName(7, 'e', 'x', 'a'), "", ErrDNSTruncated},
		{"no root label", withName(3, 'c', 'o', 'm'), "", ErrDNSTruncated},
		{"no question", append(append(bytes.Clone(header[:4]), 0, 0), pktbuild.DNSQuery(1, "example.com")[6:]...), "", ErrDNSNoQuestion},
		{"compression pointer", withName(3, 'w', 'w', 'w', 0xc0, 12), "", ErrDNSPointer},
		{"pointer first", withName(0xc0, 12), "", ErrDNSPointer},
		{"reserved label type 01", withName(0x41, 'a', 0), "", ErrDNSLabelType},
		{"reserved label type 10", withName(0x80, 0), "", ErrDNSLabelType},
		{"name too long", tooLong, "", ErrDNSNameTooLong},
		{"truncated inside a label", tooLong[:12+150], "", ErrDNSTruncated},
		{"too long, known before the end", tooLong[:12+200], "", ErrDNSNameTooLong},
	} {
		got, err := DNSQuestionName(c.msg)
		if got != c.want || err != c.err {
			t.Errorf("%s: got %q, %v; want %q, %v", c.name, got, err, c.want, c.err)
		}
	}
}

func longest255(label63 string) string {
	return strings.Join([]string{label63, label63, label63, strings.Repeat("b", 61)}, ".")
}
