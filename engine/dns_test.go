package engine

import (
	"bytes"
	"encoding/binary"
	"testing"
	"unsafe"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/internal/pktbuild"
	"github.com/grain-ebpf/grain/internal/vmtest"
	"github.com/grain-ebpf/grain/pipeline"
)

// record is a bpf.EventPayload record as the ring buffer holds it.
func payloadRecord(payload []byte) []byte {
	var p bpf.EventPayload
	p.PayloadLen = uint16(copy(p.Payload[:], payload))
	return bytes.Clone(unsafe.Slice((*byte)(unsafe.Pointer(&p)), unsafe.Sizeof(p)))
}

func TestAppendPayloadField(t *testing.T) {
	vmtest.HostOnly(t, "parsing in userspace")
	query := pktbuild.DNSQuery(9, "grain.example")
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
