package engine

import (
	"encoding/hex"
	"unsafe"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/pipeline"
)

// Fields of packet events read from the L4 payload. A rule that emits one
// of them sends a bpf.EventPayload record: the bpf.Event followed by the
// first bytes of the payload (bpf.EmitPayloadBytes at most, never past the
// IP length).

// payloadOf returns the payload bytes a record carries, or nil when the
// record has none (a plain bpf.Event, or a short record).
func payloadOf(record []byte) []byte {
	switch len(record) {
	case int(unsafe.Sizeof(bpf.EventPayload{})):
		p := (*bpf.EventPayload)(unsafe.Pointer(&record[0]))
		if n := int(p.PayloadLen); n <= len(p.Payload) {
			return p.Payload[:n]
		}
	case int(unsafe.Sizeof(bpf.EventHello{})):
		p := (*bpf.EventHello)(unsafe.Pointer(&record[0]))
		if n := int(p.PayloadLen); n <= len(p.Payload) {
			return p.Payload[:n]
		}
	}
	return nil
}

// appendPayloadField appends the payload field f of one record to out:
// "payload" as lowercase hex of the carried bytes, "dns_qname" as the name
// of the DNS question the payload starts with, the tls_* fields as the
// ClientHello it starts with says them. A payload that is not a
// well-formed DNS question gets no dns_qname, one that is no hello no
// tls_* field.
func appendPayloadField(out *pipeline.Event, f string, protocol uint8, record []byte) {
	payload := payloadOf(record)
	switch f {
	case "payload":
		out.AppendString(f, hex.EncodeToString(payload))
	case "tls_sni", "tls_version", "tls_legacy_version", "tls_alpn", "tls_ja4":
		if protocol != 6 {
			return
		}
		if v, ok := pipeline.ParseClientHello(payload).Field(f); ok {
			out.AppendString(f, v)
		}
	case "dns_qname":
		msg := payload
		if protocol == 6 {
			// DNS over TCP: a two-byte length precedes the message.
			if len(msg) < 2 {
				return
			}
			msg = msg[2:]
		}
		if name, err := pipeline.DNSQuestionName(msg); err == nil {
			out.AppendString(f, name)
		}
	}
}
