package pipeline

import "encoding/hex"

// PayloadField decodes payload field f of a packet event of L4 protocol
// protocol from the payload bytes the event carries: "payload" as
// lowercase hex, "dns_qname" as the name of the DNS question the payload
// starts with (over TCP after the two-byte length), the tls_* fields as
// the ClientHello it starts with says them. false when the payload holds
// no such field (no well-formed DNS question, no hello) or f is not read
// from the payload. The engine's event reader and the reference evaluator
// both decode with it.
func PayloadField(f string, protocol uint8, payload []byte) (string, bool) {
	const tcp = 6
	switch f {
	case "payload":
		return hex.EncodeToString(payload), true
	case "tls_sni", "tls_version", "tls_legacy_version", "tls_alpn", "tls_ja4":
		if protocol != tcp {
			return "", false
		}
		return ParseClientHello(payload).Field(f)
	case "dns_qname":
		msg := payload
		if protocol == tcp {
			// DNS over TCP: a two-byte length precedes the message.
			if len(msg) < 2 {
				return "", false
			}
			msg = msg[2:]
		}
		name, err := DNSQuestionName(msg)
		return name, err == nil
	}
	return "", false
}
