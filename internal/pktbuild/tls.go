package pktbuild

import (
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"testing"
)

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

// HelloCiphers and HelloSigAlgs are the cipher suites and signature
// algorithms of Hello13.
var (
	HelloCiphers = []uint16{0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0x009c, 0x002f}
	HelloSigAlgs = []uint16{0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601}
)

// Hello13 is a TLS 1.3 hello asking for name, as browsers send them:
// supported groups, ALPN h2 and http/1.1, signature algorithms,
// supported_versions and a key share of keyShare bytes (1216 for
// X25519MLKEM768), with server_name inserted at position sniAt (0 to 5).
func Hello13(name string, sniAt, keyShare int) []byte {
	exts := []TLSExt{
		{Type: TLSExtSupportedGroups, Data: []byte{0, 6, 0x11, 0xec, 0, 0x1d, 0, 0x17}},
		ALPNExt("h2", "http/1.1"),
		SigAlgsExt(HelloSigAlgs...),
		VersionsExt(0x0304, 0x0303),
		KeyShareExt(0x11ec, keyShare),
	}
	exts = append(exts[:sniAt], append([]TLSExt{SNIExt(name)}, exts[sniAt:]...)...)
	return ClientHello(0x0303, HelloCiphers, exts...)
}

// GoClientHello is the first record crypto/tls sends for a handshake with
// cfg.
func GoClientHello(t testing.TB, cfg *tls.Config) []byte {
	t.Helper()
	a, b := net.Pipe()
	defer b.Close()
	go func() {
		_ = tls.Client(a, cfg).Handshake()
		a.Close()
	}()
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(b, hdr); err != nil {
		t.Fatal(err)
	}
	rec := make([]byte, 5+int(hdr[3])<<8|int(hdr[4]))
	copy(rec, hdr)
	if _, err := io.ReadFull(b, rec[5:]); err != nil {
		t.Fatal(err)
	}
	return rec
}
