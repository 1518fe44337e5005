package pipeline

import "testing"

// PayloadField gives the payload in hex, and nothing for a field that is
// not read from the payload or a payload that does not hold it.
func TestPayloadField(t *testing.T) {
	for _, c := range []struct {
		field    string
		protocol uint8
		payload  []byte
		want     string
		ok       bool
	}{
		{"payload", 17, []byte{0xab, 0x01}, "ab01", true},
		{"payload", 6, nil, "", true},
		{"dns_qname", 17, []byte("not dns"), "", false},
		{"dns_qname", 6, []byte{0}, "", false},
		{"tls_sni", 17, []byte{22, 3, 1}, "", false},
		{"saddr", 6, []byte{1}, "", false},
	} {
		got, ok := PayloadField(c.field, c.protocol, c.payload)
		if got != c.want || ok != c.ok {
			t.Errorf("%s of %x: %q, %v; want %q, %v", c.field, c.payload, got, ok, c.want, c.ok)
		}
	}
}
