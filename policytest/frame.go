package policytest

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"
)

// Packet is a frame given by its fields in a test file (schema #TestPacket).
type Packet struct {
	Protocol     string
	Saddr, Daddr string
	Sport, Dport int
	TCPFlags     []string
	VLANs        []int
	Payload      string
	PayloadHex   string
}

var protocolNumbers = map[string]uint8{"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58}

var tcpFlagBits = map[string]uint8{
	"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08,
	"ack": 0x10, "urg": 0x20, "ece": 0x40, "cwr": 0x80,
}

// Frame builds the Ethernet frame: an Ethernet header with the VLAN tags,
// IPv4 (no options) or IPv6 (no extension headers), and a TCP, UDP or
// ICMP echo header before the payload. Checksums are left zero: the packet
// program does not read them.
func (p Packet) Frame() ([]byte, error) {
	src, err := netip.ParseAddr(p.Saddr)
	if err != nil {
		return nil, fmt.Errorf("saddr %q: not an address", p.Saddr)
	}
	dst, err := netip.ParseAddr(p.Daddr)
	if err != nil {
		return nil, fmt.Errorf("daddr %q: not an address", p.Daddr)
	}
	if src.Is4() != dst.Is4() || src.Zone() != "" || dst.Zone() != "" {
		return nil, fmt.Errorf("saddr %s and daddr %s: want two IPv4 or two IPv6 addresses", src, dst)
	}
	if len(p.VLANs) > 2 {
		return nil, fmt.Errorf("vlan: %d tags; give at most two (grain judges no more)", len(p.VLANs))
	}
	payload := []byte(p.Payload)
	if p.PayloadHex != "" {
		if p.Payload != "" {
			return nil, fmt.Errorf("payload and payload_hex: give one of them")
		}
		if payload, err = hex.DecodeString(strings.ReplaceAll(p.PayloadHex, " ", "")); err != nil {
			return nil, fmt.Errorf("payload_hex: %v", err)
		}
	}
	proto := protocolNumbers[p.Protocol]
	var l4 []byte
	switch proto {
	case 6:
		flags := uint8(0x10) // ack
		if p.TCPFlags != nil {
			flags = 0
			for _, f := range p.TCPFlags {
				flags |= tcpFlagBits[f]
			}
		}
		l4 = make([]byte, 20, 20+len(payload))
		binary.BigEndian.PutUint16(l4[0:], uint16(p.Sport))
		binary.BigEndian.PutUint16(l4[2:], uint16(p.Dport))
		binary.BigEndian.PutUint32(l4[4:], 1)
		l4[12] = 5 << 4
		l4[13] = flags
		binary.BigEndian.PutUint16(l4[14:], 65535)
	case 17:
		l4 = make([]byte, 8, 8+len(payload))
		binary.BigEndian.PutUint16(l4[0:], uint16(p.Sport))
		binary.BigEndian.PutUint16(l4[2:], uint16(p.Dport))
		binary.BigEndian.PutUint16(l4[4:], uint16(8+len(payload)))
	default:
		if p.Sport != 0 || p.Dport != 0 {
			return nil, fmt.Errorf("sport and dport are for tcp and udp, not %s", p.Protocol)
		}
		l4 = make([]byte, 8, 8+len(payload))
		l4[0] = 8 // echo request
		if proto == 58 {
			l4[0] = 128
		}
	}
	if proto != 6 && p.TCPFlags != nil {
		return nil, fmt.Errorf("tcp_flags are for tcp, not %s", p.Protocol)
	}
	l4 = append(l4, payload...)

	frame := []byte{0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2}
	for i, id := range p.VLANs {
		tpid := uint16(0x8100)
		if i == 0 && len(p.VLANs) > 1 {
			tpid = 0x88a8
		}
		frame = binary.BigEndian.AppendUint16(frame, tpid)
		frame = binary.BigEndian.AppendUint16(frame, uint16(id))
	}
	if src.Is4() {
		if len(l4)+20 > 65535 {
			return nil, fmt.Errorf("payload of %d bytes is too long for one packet", len(payload))
		}
		frame = binary.BigEndian.AppendUint16(frame, 0x0800)
		h := make([]byte, 20)
		h[0] = 0x45
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(l4)))
		h[8] = 64
		h[9] = proto
		s, d := src.As4(), dst.As4()
		copy(h[12:], s[:])
		copy(h[16:], d[:])
		frame = append(frame, h...)
	} else {
		if len(l4) > 65535 {
			return nil, fmt.Errorf("payload of %d bytes is too long for one packet", len(payload))
		}
		frame = binary.BigEndian.AppendUint16(frame, 0x86dd)
		h := make([]byte, 40)
		h[0] = 0x60
		binary.BigEndian.PutUint16(h[4:], uint16(len(l4)))
		h[6] = proto
		h[7] = 64
		s, d := src.As16(), dst.As16()
		copy(h[8:], s[:])
		copy(h[24:], d[:])
		frame = append(frame, h...)
	}
	return append(frame, l4...), nil
}
