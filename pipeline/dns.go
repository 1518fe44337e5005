package pipeline

import (
	"errors"
	"strconv"
	"strings"
)

// The DNS question of a packet event's payload (the dns_qname field), as
// the engine's event reader and the reference evaluator both give it.

// The errors of DNSQuestionName.
var (
	ErrDNSTruncated   = errors.New("dns: truncated")
	ErrDNSNoQuestion  = errors.New("dns: no question")
	ErrDNSPointer     = errors.New("dns: compression pointer in the question name")
	ErrDNSLabelType   = errors.New("dns: reserved label type")
	ErrDNSNameTooLong = errors.New("dns: name longer than 255 bytes")
)

// dnsMaxName is the longest name in wire form (RFC 1035 3.1): its labels,
// their length bytes and the root's zero byte.
const dnsMaxName = 255

// DNSQuestionName decodes the name of the first question of the DNS message
// msg (starting at the 12-byte header) into presentation form: labels
// joined by dots, without the trailing dot ("." for the root); bytes other
// than printable ASCII, and dots and backslashes inside a label, are
// written as \DDD (decimal, as dig does). Letters keep the case they were
// sent in. It refuses a message without a question, a name that does not
// end within msg, one longer than 255 bytes, a compression pointer (nothing
// precedes the first question that it could point to) and the reserved
// label types.
func DNSQuestionName(msg []byte) (string, error) {
	if len(msg) < 12 {
		return "", ErrDNSTruncated
	}
	if msg[4] == 0 && msg[5] == 0 { // QDCOUNT
		return "", ErrDNSNoQuestion
	}
	var b strings.Builder
	off := 12
	for {
		if off >= len(msg) {
			return "", ErrDNSTruncated
		}
		l := int(msg[off])
		switch {
		case l&0xc0 == 0xc0:
			return "", ErrDNSPointer
		case l&0xc0 != 0:
			return "", ErrDNSLabelType
		}
		if off-12+1+l > dnsMaxName {
			return "", ErrDNSNameTooLong
		}
		if l == 0 {
			break
		}
		if off+1+l > len(msg) {
			return "", ErrDNSTruncated
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
