// Package pktbuild crafts Ethernet frames for tests and benchmarks that run
// grain's XDP program with BPF_PROG_TEST_RUN.
package pktbuild

import (
	"encoding/binary"
	"net/netip"
)

// TCP flag bits.
const (
	FIN = 0x01
	SYN = 0x02
	RST = 0x04
	PSH = 0x08
	ACK = 0x10
)

// Frame describes one packet; the zero value of a field picks a default.
type Frame struct {
	VLANs      []uint16 // outer first; the first of two uses 802.1ad
	Src, Dst   netip.Addr
	Protocol   uint8 // 6 tcp, 17 udp, 1 icmp, 58 icmpv6
	SPort      uint16
	DPort      uint16
	TCPFlags   uint8
	TCPOptions []byte // padded to 4 bytes
	IPOptions  []byte // IPv4 options, padded to 4 bytes
	// IPv6ExtHeaders are next-header numbers of empty extension headers
	// (0 hop-by-hop, 43 routing, 60 destination options, 44 fragment).
	IPv6ExtHeaders []uint8
	// FragmentOffset (in 8-byte units) makes an IPv4 non-first fragment.
	FragmentOffset uint16
	Payload        []byte
	// Truncate cuts the frame to this many bytes when non-zero.
	Truncate int
	// EtherType, when set, makes a non-IP frame: Payload follows the
	// Ethernet header directly (0x0806 with an ARP body, say).
	EtherType uint16
}

// ARP is an ARP request frame.
func ARP() Frame {
	body := []byte{0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 2, 10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 10, 0, 0, 1}
	return Frame{EtherType: 0x0806, Payload: body}
}

func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// Bytes renders the frame.
func (f Frame) Bytes() []byte {
	if f.EtherType != 0 {
		eth := []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 2}
		return append(binary.BigEndian.AppendUint16(eth, f.EtherType), f.Payload...)
	}
	var l4 []byte
	switch f.Protocol {
	case 6:
		opts := pad4(append([]byte(nil), f.TCPOptions...))
		h := make([]byte, 20, 20+len(opts))
		binary.BigEndian.PutUint16(h[0:], f.SPort)
		binary.BigEndian.PutUint16(h[2:], f.DPort)
		binary.BigEndian.PutUint32(h[4:], 1000)
		h[12] = byte((20+len(opts))/4) << 4
		h[13] = f.TCPFlags
		binary.BigEndian.PutUint16(h[14:], 65535)
		l4 = append(append(h, opts...), f.Payload...)
	case 17:
		h := make([]byte, 8)
		binary.BigEndian.PutUint16(h[0:], f.SPort)
		binary.BigEndian.PutUint16(h[2:], f.DPort)
		binary.BigEndian.PutUint16(h[4:], uint16(8+len(f.Payload)))
		l4 = append(h, f.Payload...)
	default:
		h := make([]byte, 8)
		h[0] = 8 // echo request
		l4 = append(h, f.Payload...)
	}

	var l3 []byte
	var etherType uint16
	if f.Src.Is4() {
		etherType = 0x0800
		opts := pad4(append([]byte(nil), f.IPOptions...))
		ihl := 20 + len(opts)
		h := make([]byte, 20, ihl)
		h[0] = 0x40 | byte(ihl/4)
		binary.BigEndian.PutUint16(h[2:], uint16(ihl+len(l4)))
		binary.BigEndian.PutUint16(h[6:], f.FragmentOffset&0x1fff)
		h[8] = 64
		h[9] = f.Protocol
		s, d := f.Src.As4(), f.Dst.As4()
		copy(h[12:], s[:])
		copy(h[16:], d[:])
		l3 = append(append(h, opts...), l4...)
	} else {
		etherType = 0x86DD
		var ext []byte
		next := f.Protocol
		for i := len(f.IPv6ExtHeaders) - 1; i >= 0; i-- {
			hdr := make([]byte, 8)
			hdr[0] = next
			ext = append(hdr, ext...)
			next = f.IPv6ExtHeaders[i]
		}
		h := make([]byte, 40)
		h[0] = 0x60
		binary.BigEndian.PutUint16(h[4:], uint16(len(ext)+len(l4)))
		h[6] = next
		h[7] = 64
		s, d := f.Src.As16(), f.Dst.As16()
		copy(h[8:], s[:])
		copy(h[24:], d[:])
		l3 = append(append(h, ext...), l4...)
	}

	eth := []byte{0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2}
	for i, id := range f.VLANs {
		tpid := uint16(0x8100)
		if i == 0 && len(f.VLANs) > 1 {
			tpid = 0x88A8
		}
		eth = binary.BigEndian.AppendUint16(eth, tpid)
		eth = binary.BigEndian.AppendUint16(eth, id)
	}
	eth = binary.BigEndian.AppendUint16(eth, etherType)
	out := append(eth, l3...)
	if f.Truncate > 0 && f.Truncate < len(out) {
		out = out[:f.Truncate]
	}
	return out
}

// TCP4 is a convenience for an IPv4 TCP frame with the given payload.
func TCP4(src, dst string, sport, dport uint16, flags uint8, payload []byte) Frame {
	return Frame{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), Protocol: 6,
		SPort: sport, DPort: dport, TCPFlags: flags, Payload: payload}
}
