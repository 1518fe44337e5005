package pktbuild

import (
	"encoding/binary"
	"strings"
)

// DNSQuery is a DNS query message for name (labels split at dots) of type
// A, with the recursion-desired flag, as resolvers send it.
func DNSQuery(id uint16, name string) []byte {
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
