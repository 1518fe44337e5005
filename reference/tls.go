package reference

import (
	"encoding/binary"

	"github.com/grain-ebpf/grain/bpf"
)

// The server name of a TLS ClientHello, for tls_sni rules: bpf/tls.h,
// function for function.

// sniKey is an sni_class key without its generation: the name lowercased
// and reversed, then a zero byte; bits counts the name bits compared.
type sniKey struct {
	bits int
	name [bpf.TLSMaxName + 2]byte
}

// tlsSNILookup is tls_sni_lookup: the bitmaps index of the tls_sni
// candidates of the parsed packet. Only a TCP payload that starts like a
// ClientHello record is looked at.
func (p *Packet) tlsSNILookup(frame []byte) uint32 {
	m := &p.m
	off := m.payloadOff
	if m.protocol != protoTCP || off > maxFrameOff || off+6 > uint32(len(frame)) || frame[off] != 22 || frame[off+5] != 1 {
		return bpf.BitmapRegionAux + bpf.AuxNoSNI
	}
	return p.tlsSNIIndex(frame, off, m.payloadEnd)
}

// tlsBE16 is tls_be16: the big-endian 16-bit value at off, or -1 when it
// does not lie before end.
func tlsBE16(frame []byte, off, end uint32) int {
	if off > maxFrameOff || off+2 > end || off+2 > uint32(len(frame)) {
		return -1
	}
	return int(binary.BigEndian.Uint16(frame[off:]))
}

// tlsSNIIndex is tls_sni_index: the hello's server name looked up in the
// sni_class entries (longest prefix), for the TCP payload [off, end).
func (p *Packet) tlsSNIIndex(frame []byte, off, end uint32) uint32 {
	const none = bpf.BitmapRegionAux + bpf.AuxNoSNI
	dataEnd := uint32(len(frame))
	if off > maxFrameOff || end > maxFrameOff || end < off+44 || off+44 > dataEnd {
		return none
	}
	h := frame[off:]
	if h[0] != 22 || h[1] != 3 || h[5] != 1 {
		return none
	}
	recordEnd := off + 5 + (uint32(h[3])<<8 | uint32(h[4]))
	helloEnd := off + 9 + (uint32(h[6])<<16 | uint32(h[7])<<8 | uint32(h[8]))
	end = min(end, recordEnd, helloEnd)
	sid := uint32(h[43])
	if sid > 32 {
		return none
	}
	pos := off + 44 + sid
	n := tlsBE16(frame, pos, end) // cipher suites
	if n < 0 {
		return none
	}
	pos += 2 + uint32(n)
	if pos > maxFrameOff || pos+1 > end || pos+1 > dataEnd {
		return none
	}
	pos += 1 + uint32(frame[pos]) // compression methods
	if n = tlsBE16(frame, pos, end); n < 0 {
		return none
	}
	pos += 2
	if pos+uint32(n) < end {
		end = pos + uint32(n) // the extensions' end
	}
	found, extLen := false, uint32(0)
	for i := 0; i < bpf.TLSMaxExtensions; i++ {
		typ, l := tlsBE16(frame, pos, end), tlsBE16(frame, pos+2, end)
		if typ < 0 || l < 0 {
			return none
		}
		pos += 4
		if typ == 0 {
			found, extLen = true, uint32(l)
			break
		}
		pos += uint32(l)
	}
	if !found || pos+extLen > end {
		return none
	}
	end = pos + extLen
	// server_name_list length, name type 0 (host_name), name length
	if pos > maxFrameOff || pos+5 > end || pos+5 > dataEnd || frame[pos+2] != 0 {
		return none
	}
	nameLen := uint32(frame[pos+3])<<8 | uint32(frame[pos+4])
	nameEnd := pos + 5 + nameLen
	if nameEnd > end || nameEnd > maxFrameOff || nameLen == 0 || nameEnd > dataEnd {
		return none
	}
	if frame[nameEnd-1] == '.' {
		nameLen--
		nameEnd--
	}
	if nameLen == 0 || nameLen > bpf.TLSMaxName {
		return none
	}
	var key sniKey
	key.bits = 8 * int(nameLen+1)
	for i := uint32(0); i < nameLen; i++ {
		c := frame[nameEnd-1-i]
		if c == 0 {
			return none // a zero byte inside the name: no name
		}
		if c >= 'A' && c <= 'Z' {
			c |= 0x20
		}
		key.name[i] = c
	}
	best, bestBits := -1, -1
	for i := range p.plan.Maps.ServerNames {
		e := &p.plan.Maps.ServerNames[i]
		bits := int(e.Key.Value.Prefixlen) - 8 // less the generation byte
		if bits < 0 || bits > key.bits || bits <= bestBits || !prefixEqual(e.Key.Value.Name[:], key.name[:], bits) {
			continue
		}
		best, bestBits = i, bits
	}
	if best < 0 {
		return none
	}
	cls := p.plan.Maps.ServerNames[best].Class
	if cls >= bpf.MaxSNIEntries {
		return none
	}
	return bpf.BitmapRegionSNI + cls
}

// prefixEqual reports whether a and b agree in their first bits bits.
func prefixEqual(a, b []byte, bits int) bool {
	n := bits / 8
	if n > len(a) || n > len(b) {
		return false
	}
	for i := 0; i < n; i++ {
		if a[i] != b[i] {
			return false
		}
	}
	if rem := bits % 8; rem != 0 {
		if n >= len(a) || n >= len(b) || (a[n]^b[n])&(0xff<<(8-rem)) != 0 {
			return false
		}
	}
	return true
}
