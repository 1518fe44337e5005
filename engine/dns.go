package engine

import (
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

// appendPayloadField appends the payload field f of one record to out, as
// pipeline.PayloadField decodes it; a record whose payload holds none (no
// well-formed DNS question, no hello) gets none.
func appendPayloadField(out *pipeline.Event, f string, protocol uint8, record []byte) {
	if v, ok := pipeline.PayloadField(f, protocol, payloadOf(record)); ok {
		out.AppendString(f, v)
	}
}
