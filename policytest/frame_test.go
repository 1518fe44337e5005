package policytest

import (
	"bytes"
	"strings"
	"testing"
)

// Frames built from fields carry them where the packet program reads
// them: VLAN tags, the IP version, ports, flags, payload.
func TestPacketFrame(t *testing.T) {
	f, err := Packet{Protocol: "tcp", Saddr: "fd00::2", Daddr: "fd00::1", Sport: 40000, Dport: 443,
		TCPFlags: []string{"syn", "ack"}, VLANs: []int{10, 20}, Payload: "hi"}.Frame()
	if err != nil {
		t.Fatal(err)
	}
	// Ethernet 12 + two tags 8 + ethertype 2, IPv6 40, TCP 20, payload 2.
	if len(f) != 22+40+20+2 || !bytes.Equal(f[12:14], []byte{0x88, 0xa8}) || !bytes.Equal(f[16:18], []byte{0x81, 0x00}) ||
		!bytes.Equal(f[20:22], []byte{0x86, 0xdd}) || f[22+6] != 6 || f[62] != 0x9c || f[63] != 0x40 || f[62+13] != 0x12 ||
		string(f[len(f)-2:]) != "hi" {
		t.Errorf("frame % x", f)
	}
	f, err = Packet{Protocol: "udp", Saddr: "10.0.0.2", Daddr: "10.0.0.1", Sport: 1, Dport: 53, PayloadHex: "de ad"}.Frame()
	if err != nil || len(f) != 14+20+8+2 || f[14+9] != 17 || !bytes.Equal(f[len(f)-2:], []byte{0xde, 0xad}) {
		t.Errorf("udp frame % x, %v", f, err)
	}
	for _, c := range []struct {
		p    Packet
		want string
	}{
		{Packet{Protocol: "tcp", Saddr: "10.0.0.1", Daddr: "fd00::1"}, "want two IPv4 or two IPv6 addresses"},
		{Packet{Protocol: "tcp", Saddr: "10.0.0.300", Daddr: "10.0.0.1"}, `saddr "10.0.0.300": not an address`},
		{Packet{Protocol: "udp", Saddr: "10.0.0.1", Daddr: "10.0.0.2", TCPFlags: []string{"syn"}}, "tcp_flags are for tcp"},
		{Packet{Protocol: "icmp", Saddr: "10.0.0.1", Daddr: "10.0.0.2", Dport: 80}, "sport and dport are for tcp and udp"},
		{Packet{Protocol: "tcp", Saddr: "10.0.0.1", Daddr: "10.0.0.2", VLANs: []int{1, 2, 3}}, "at most two"},
		{Packet{Protocol: "tcp", Saddr: "10.0.0.1", Daddr: "10.0.0.2", Payload: "x", PayloadHex: "00"}, "give one of them"},
	} {
		if _, err := c.p.Frame(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error with %q", c.p, err, c.want)
		}
	}
}
