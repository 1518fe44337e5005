package engine

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
	"unsafe"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/internal/vmtest"
	"github.com/grain-ebpf/grain/pipeline"
)

// dnsQuery is a DNS query message for name (labels split at dots) of type
// A, with the recursion-desired flag, as resolvers send it.
func dnsQuery(id uint16, name string) []byte {
	msg := binary.BigEndian.AppendUint16(nil, id)
	msg = append(msg, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0) // RD; one question
	for _, l := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		if l == "" {
			continue
		}
		msg = append(msg, byte(len(l)))
		msg = append(msg, l...)
	}
	return append(msg, 0, 0, 1, 0, 1) // root; QTYPE A, QCLASS IN
}

func TestDNSQuestionName(t *testing.T) {
	vmtest.HostOnly(t, "parsing in userspace")
	header := dnsQuery(7, "")[:12]
	withName := func(wire ...byte) []byte { return append(bytes.Clone(header), wire...) }
	label63 := strings.Repeat("a", 63)
	// 4 labels of 63 bytes: 4*64 + 1 = 257 bytes of wire name, over 255.
	tooLong := withName()
	for i := 0; i < 4; i++ {
		tooLong = append(append(tooLong, 63), label63...)
	}
	tooLong = append(tooLong, 0)
	// The longest name: 3 labels of 63 and one of 61, 255 bytes in all.
	longest := dnsQuery(1, strings.Join([]string{label63, label63, label63, strings.Repeat("b", 61)}, "."))

	for _, c := range []struct {
		name string
		msg  []byte
		want string
		err  error
	}{
		{"plain", dnsQuery(1, "www.example.com"), "www.example.com", nil},
		{"case kept", dnsQuery(1, "WwW.ExAmple.COM"), "WwW.ExAmple.COM", nil},
		{"root", dnsQuery(1, "."), ".", nil},
		{"no type and class", dnsQuery(1, "example.org")[:12+13], "example.org", nil},
		{"longest name", longest, longest255(label63), nil},
		{"escaped bytes", withName(3, 'a', '.', 'b', 2, '\\', 0x00, 1, 0xff, 0), `a\046b.\092\000.\255`, nil},
		{"header only", header, "", errDNSTruncated},
		{"short header", header[:11], "", errDNSTruncated},
		{"empty", nil, "", errDNSTruncated},
		{"label past the end", withName(7, 'e', 'x', 'a'), "", errDNSTruncated},
		{"no root label", withName(3, 'c', 'o', 'm'), "", errDNSTruncated},
		{"no question", append(append(bytes.Clone(header[:4]), 0, 0), dnsQuery(1, "example.com")[6:]...), "", errDNSNoQuestion},
		{"compression pointer", withName(3, 'w', 'w', 'w', 0xc0, 12), "", errDNSPointer},
		{"pointer first", withName(0xc0, 12), "", errDNSPointer},
		{"reserved label type 01", withName(0x41, 'a', 0), "", errDNSLabelType},
		{"reserved label type 10", withName(0x80, 0), "", errDNSLabelType},
		{"name too long", tooLong, "", errDNSNameTooLong},
		{"truncated inside a label", tooLong[:12+150], "", errDNSTruncated},
		{"too long, known before the end", tooLong[:12+200], "", errDNSNameTooLong},
	} {
		got, err := dnsQuestionName(c.msg)
		if got != c.want || err != c.err {
			t.Errorf("%s: got %q, %v; want %q, %v", c.name, got, err, c.want, c.err)
		}
	}
}

func longest255(label63 string) string {
	return strings.Join([]string{label63, label63, label63, strings.Repeat("b", 61)}, ".")
}

// record is a bpf.EventPayload record as the ring buffer holds it.
func payloadRecord(payload []byte) []byte {
	var p bpf.EventPayload
	p.PayloadLen = uint16(copy(p.Payload[:], payload))
	return bytes.Clone(unsafe.Slice((*byte)(unsafe.Pointer(&p)), unsafe.Sizeof(p)))
}

func TestAppendPayloadField(t *testing.T) {
	vmtest.HostOnly(t, "parsing in userspace")
	query := dnsQuery(9, "grain.example")
	tcpQuery := append(binary.BigEndian.AppendUint16(nil, uint16(len(query))), query...)
	var small bpf.Event
	for _, c := range []struct {
		name     string
		field    string
		protocol uint8
		record   []byte
		want     string // "" means no field
	}{
		{"dns over udp", "dns_qname", 17, payloadRecord(query), "grain.example"},
		{"dns over tcp", "dns_qname", 6, payloadRecord(tcpQuery), "grain.example"},
		{"not dns", "dns_qname", 17, payloadRecord([]byte("GET / HTTP/1.1\r\n")), ""},
		{"record without payload", "dns_qname", 17, bytes.Clone(unsafe.Slice((*byte)(unsafe.Pointer(&small)), unsafe.Sizeof(small))), ""},
		{"payload hex", "payload", 17, payloadRecord([]byte("AB\x00\xff")), "414200ff"},
		{"empty payload", "payload", 17, payloadRecord(nil), ""},
	} {
		var ev pipeline.Event
		appendPayloadField(&ev, c.field, c.protocol, c.record)
		f := ev.Get(c.field)
		switch {
		case c.want == "" && c.field == "dns_qname":
			if f != nil {
				t.Errorf("%s: got %s = %q, want no field", c.name, c.field, f.Str)
			}
		case f == nil:
			t.Errorf("%s: no %s field, want %q", c.name, c.field, c.want)
		case f.Str != c.want:
			t.Errorf("%s: %s = %q, want %q", c.name, c.field, f.Str, c.want)
		}
	}
}
