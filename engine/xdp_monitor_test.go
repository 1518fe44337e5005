package engine

import (
	"fmt"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/internal/pktbuild"
)

// TestXDPMonitorMode: a drop rule in monitor mode decides the packet as a
// drop would (a later drop rule does not get it), counts it under
// would_drop by rule and interface, and the packet passes; with up to 64
// rules (one bitmap word) and with more (the word walk).
func TestXDPMonitorMode(t *testing.T) {
	for _, extra := range []int{0, 100} {
		t.Run(fmt.Sprintf("%d more rules", extra), func(t *testing.T) {
			var b strings.Builder
			b.WriteString(`
mon_tcp:  {priority: 1, mode: "monitor", xdp: interfaces: ["lo"], match: {protocol: "tcp", dport: 80}, then: "drop"}
drop_tcp: {priority: 2, xdp: interfaces: ["lo"], match: protocol: "tcp", then: "drop"}
`)
			for i := range extra {
				fmt.Fprintf(&b, "pad%03d: {priority: 3, xdp: interfaces: [\"lo\"], match: {protocol: \"udp\", dport: %d}, then: \"drop\"}\n", i, 2000+i)
			}
			e := applyPolicy(t, b.String())
			counts := func() map[string]uint64 {
				out := map[string]uint64{}
				cs, err := e.Counters()
				if err != nil {
					t.Fatal(err)
				}
				for _, c := range cs {
					out[c.Policy+" "+c.Verdict] += c.Packets
				}
				ics, err := e.InterfaceCounters()
				if err != nil {
					t.Fatal(err)
				}
				for _, c := range ics {
					out[c.Interface+" "+c.Verdict] += c.Packets
				}
				return out
			}
			before := counts()
			web := pktbuild.TCP4("10.9.0.2", "10.0.0.1", 40000, 80, pktbuild.ACK, []byte("GET / HTTP/1.1\r\n"))
			ssh := pktbuild.TCP4("10.9.0.2", "10.0.0.1", 40000, 22, pktbuild.ACK, nil)
			if got := runXDP(t, e, web.Bytes()); got != xdpPass {
				t.Errorf("port 80, monitored drop first: %s, want pass", verdictName(got))
			}
			if got := runXDP(t, e, ssh.Bytes()); got != xdpDrop {
				t.Errorf("port 22, enforced drop: %s, want drop", verdictName(got))
			}
			after := counts()
			for key, want := range map[string]uint64{"mon_tcp would_drop": 1, "drop_tcp drop": 1, "lo would_drop": 1, "lo drop": 1} {
				if got := after[key] - before[key]; got != want {
					t.Errorf("%s: %d packets, want %d", key, got, want)
				}
			}
		})
	}
}
