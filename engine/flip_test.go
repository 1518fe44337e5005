package engine

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/plantest"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// TestFlipIsAtomicUnderTraffic sends two kinds of real UDP packets, X and Y,
// over a veth while flipping 1000 times between rule set A (drop X, count Y)
// and rule set B (drop Y, count X). Every packet is judged by exactly one
// complete rule set iff, per kind, the packets dropped plus the packets
// counted by the two sets equal the packets sent (a packet judged by a
// mix, or by no rule, breaks the sum), and the packets delivered equal the
// packets counted as passed.
func TestFlipIsAtomicUnderTraffic(t *testing.T) {
	vmtest.HostOnly(t, "a race of flips and traffic needs parallel CPUs; a guest's vCPUs share one host thread")
	if testing.Short() {
		t.Skip("1000 generation flips take ~30 s")
	}
	p := netns.NewPair(t)
	e, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	policy := func(drop, count string) string {
		return fmt.Sprintf(`
drop_%[1]s:  {xdp: interfaces: [%[3]q], match: {protocol: "udp", payload: {startswith: %[1]q}}, then: "drop"}
count_%[2]s: {xdp: interfaces: [%[3]q], match: {protocol: "udp", payload: {startswith: %[2]q}}, then: "count"}
`, drop, count, p.ServerIf)
	}
	planA := plantest.Compile(t, policy("X", "Y"))
	planB := plantest.Compile(t, policy("Y", "X"))
	apply := func(t *testing.T, plan *codegen.Plan) {
		t.Helper()
		err := netns.Do(p.ServerNS, func() error { return e.Apply(plan) })
		if err != nil {
			t.Fatal(err)
		}
	}
	apply(t, planA)

	// Receiver in the server namespace.
	var conn net.PacketConn
	if err := netns.Do(p.ServerNS, func() error {
		var err error
		conn, err = net.ListenPacket("udp4", p.ServerIP4.String()+":9000")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.(*net.UDPConn).SetReadBuffer(8 << 20)
	var receivedX, receivedY atomic.Uint64
	go func() {
		buf := make([]byte, 64)
		for {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			if n > 0 && buf[0] == 'X' {
				receivedX.Add(1)
			} else if n > 0 && buf[0] == 'Y' {
				receivedY.Add(1)
			}
		}
	}()

	// Sender in the client namespace: X and Y alternately, ~10k packets/s.
	ctx, cancel := context.WithCancel(context.Background())
	out, err := netns.DialContextIn(p.ClientNS)(ctx, "udp4", p.ServerIP4.String()+":9000")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	var sentX, sentY uint64
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ctx.Err() == nil; i++ {
			for j := 0; j < 10; j++ {
				if j%2 == 0 {
					if _, err := out.Write([]byte("X-packet")); err == nil {
						sentX++
					}
				} else if _, err := out.Write([]byte("Y-packet")); err == nil {
					sentY++
				}
			}
			time.Sleep(time.Millisecond)
		}
	})

	const flips = 1000
	for i := 0; i < flips; i++ {
		if i%2 == 0 {
			apply(t, planB)
		} else {
			apply(t, planA)
		}
	}
	cancel()
	wg.Wait()
	time.Sleep(300 * time.Millisecond) // the last packets reach the receiver

	counters, err := e.Counters()
	if err != nil {
		t.Fatal(err)
	}
	c := map[string]uint64{}
	for _, rc := range counters {
		c[rc.Policy] = rc.Packets
	}
	t.Logf("sent X=%d Y=%d; A: drop_X=%d count_Y=%d; B: drop_Y=%d count_X=%d; received X=%d Y=%d",
		sentX, sentY, c["drop_X"], c["count_Y"], c["drop_Y"], c["count_X"], receivedX.Load(), receivedY.Load())
	if c["drop_X"] == 0 || c["count_X"] == 0 || c["drop_Y"] == 0 || c["count_Y"] == 0 {
		t.Fatalf("traffic did not meet both rule sets: %v", c)
	}
	if got := c["drop_X"] + c["count_X"]; got != sentX {
		t.Errorf("X packets judged: %d (drop_X %d + count_X %d), sent %d", got, c["drop_X"], c["count_X"], sentX)
	}
	if got := c["drop_Y"] + c["count_Y"]; got != sentY {
		t.Errorf("Y packets judged: %d (drop_Y %d + count_Y %d), sent %d", got, c["drop_Y"], c["count_Y"], sentY)
	}
	if got := receivedX.Load(); got != c["count_X"] {
		t.Errorf("X packets delivered: %d, counted as passed: %d", got, c["count_X"])
	}
	if got := receivedY.Load(); got != c["count_Y"] {
		t.Errorf("Y packets delivered: %d, counted as passed: %d", got, c["count_Y"])
	}
}
