package engine

import (
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
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
// of the DNS question the payload starts with. A payload that is not a
// well-formed DNS question gets no dns_qname.
func appendPayloadField(out *pipeline.Event, f string, protocol uint8, record []byte) {
	payload := payloadOf(record)
	switch f {
	case "payload":
		out.AppendString(f, hex.EncodeToString(payload))
	case "tls_sni", "tls_version", "tls_legacy_version", "tls_alpn", "tls_ja4":
		if protocol != 6 {
			return
		}
		if v, ok := parseClientHello(payload).field(f); ok {
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
		if name, err := dnsQuestionName(msg); err == nil {
			out.AppendString(f, name)
		}
	}
}

var (
	errDNSTruncated   = errors.New("dns: truncated")
	errDNSNoQuestion  = errors.New("dns: no question")
	errDNSPointer     = errors.New("dns: compression pointer in the question name")
	errDNSLabelType   = errors.New("dns: reserved label type")
	errDNSNameTooLong = errors.New("dns: name longer than 255 bytes")
)

// dnsMaxName is the longest name in wire form (RFC 1035 3.1): its labels,
// their length bytes and the root's zero byte.
const dnsMaxName = 255

// dnsQuestionName decodes the name of the first question of the DNS message
// msg (starting at the 12-byte header) into presentation form: labels
// joined by dots, without the trailing dot ("." for the root); bytes other
// than printable ASCII, and dots and backslashes inside a label, are
// written as \DDD (decimal, as dig does). Letters keep the case they were
// sent in. It refuses a message without a question, a name that does not
// end within msg, one longer than 255 bytes, a compression pointer (nothing
// precedes the first question that it could point to) and the reserved
// label types.
func dnsQuestionName(msg []byte) (string, error) {
	if len(msg) < 12 {
		return "", errDNSTruncated
	}
	if msg[4] == 0 && msg[5] == 0 { // QDCOUNT
		return "", errDNSNoQuestion
	}
	var b strings.Builder
	off := 12
	for {
		if off >= len(msg) {
			return "", errDNSTruncated
		}
		l := int(msg[off])
		switch {
		case l&0xc0 == 0xc0:
			return "", errDNSPointer
		case l&0xc0 != 0:
			return "", errDNSLabelType
		}
		if off-12+1+l > dnsMaxName {
			return "", errDNSNameTooLong
		}
		if l == 0 {
			break
		}
		if off+1+l > len(msg) {
			return "", errDNSTruncated
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		for _, c := range msg[off+1 : off+1+l] {
			if c <= ' ' || c > '~' || c == '.' || c == '\\' {
				b.WriteByte('\\')
				d := strconv.Itoa(int(c))
				b.WriteString(strings.Repeat("0", 3-len(d)))
				b.WriteString(d)
				continue
			}
			b.WriteByte(c)
		}
		off += 1 + l
	}
	if b.Len() == 0 {
		return ".", nil
	}
	return b.String(), nil
}
