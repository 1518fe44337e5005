package pktbuild

import "encoding/binary"

// TLS ClientHellos for tests of the tls_sni field and the TLS event fields.

// TLSExt is one ClientHello extension: its type and body.
type TLSExt struct {
	Type uint16
	Data []byte
}

// Extension types.
const (
	TLSExtServerName        = 0x0000
	TLSExtSupportedGroups   = 0x000a
	TLSExtSignatureAlgs     = 0x000d
	TLSExtALPN              = 0x0010
	TLSExtPadding           = 0x0015
	TLSExtSupportedVersions = 0x002b
	TLSExtKeyShare          = 0x0033
)

func vec16(b []byte) []byte { return append(binary.BigEndian.AppendUint16(nil, uint16(len(b))), b...) }
func vec8(b []byte) []byte  { return append([]byte{byte(len(b))}, b...) }

// SNIExt is a server_name extension with one host_name.
func SNIExt(name string) TLSExt {
	entry := append([]byte{0}, vec16([]byte(name))...)
	return TLSExt{Type: TLSExtServerName, Data: vec16(entry)}
}

// ALPNExt offers the protocols, in order.
func ALPNExt(protocols ...string) TLSExt {
	var list []byte
	for _, p := range protocols {
		list = append(list, vec8([]byte(p))...)
	}
	return TLSExt{Type: TLSExtALPN, Data: vec16(list)}
}

// VersionsExt is a supported_versions extension.
func VersionsExt(versions ...uint16) TLSExt {
	var list []byte
	for _, v := range versions {
		list = binary.BigEndian.AppendUint16(list, v)
	}
	return TLSExt{Type: TLSExtSupportedVersions, Data: vec8(list)}
}

// SigAlgsExt is a signature_algorithms extension.
func SigAlgsExt(algs ...uint16) TLSExt {
	var list []byte
	for _, a := range algs {
		list = binary.BigEndian.AppendUint16(list, a)
	}
	return TLSExt{Type: TLSExtSignatureAlgs, Data: vec16(list)}
}

// KeyShareExt is a key_share extension with one share of n bytes for
// group (0x11ec X25519MLKEM768 takes 1216).
func KeyShareExt(group uint16, n int) TLSExt {
	share := binary.BigEndian.AppendUint16(nil, group)
	key := make([]byte, n)
	for i := range key {
		key[i] = byte(i*31 + 7)
	}
	share = append(share, vec16(key)...)
	return TLSExt{Type: TLSExtKeyShare, Data: vec16(share)}
}

// GREASE is the i-th reserved GREASE value (RFC 8701), 0x0a0a to 0xfafa.
func GREASE(i int) uint16 {
	b := uint16(i%16)<<4 | 0x0a
	return b<<8 | b
}

// ClientHello is one TLS record holding a ClientHello with the given
// legacy version, cipher suites and extensions, in order.
func ClientHello(legacyVersion uint16, ciphers []uint16, exts ...TLSExt) []byte {
	body := binary.BigEndian.AppendUint16(nil, legacyVersion)
	for i := 0; i < 32; i++ { // random
		body = append(body, byte(i))
	}
	sid := make([]byte, 32)
	body = append(body, vec8(sid)...)
	var cs []byte
	for _, c := range ciphers {
		cs = binary.BigEndian.AppendUint16(cs, c)
	}
	body = append(body, vec16(cs)...)
	body = append(body, vec8([]byte{0})...) // compression: null
	if exts != nil {
		var eb []byte
		for _, e := range exts {
			eb = binary.BigEndian.AppendUint16(eb, e.Type)
			eb = append(eb, vec16(e.Data)...)
		}
		body = append(body, vec16(eb)...)
	}
	hs := []byte{1, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}
	hs = append(hs, body...)
	rec := []byte{22, 3, 1}
	rec = binary.BigEndian.AppendUint16(rec, uint16(len(hs)))
	return append(rec, hs...)
}
