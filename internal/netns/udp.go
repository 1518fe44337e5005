package netns

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// UDPArrivals sends n datagrams from the client to port on the server's
// veth address and waits until each is accounted for, received by the
// server or counted by drops (the packets grain's rules dropped so far);
// it returns how many arrived. A datagram counted as dropped cannot also
// arrive: each is judged once.
func (p *Pair) UDPArrivals(t testing.TB, port, n int, drops func() uint64) int {
	t.Helper()
	var conn net.PacketConn
	err := Do(p.ServerNS, func() (err error) {
		conn, err = net.ListenPacket("udp4", fmt.Sprintf("%s:%d", p.ServerIP4, port))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var received atomic.Int64
	go func() {
		buf := make([]byte, 64)
		for {
			if _, _, err := conn.ReadFrom(buf); err != nil {
				return
			}
			received.Add(1)
		}
	}()
	before := drops()
	out, err := DialContextIn(p.ClientNS)(context.Background(), "udp4", fmt.Sprintf("%s:%d", p.ServerIP4, port))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	for range n {
		if _, err := out.Write([]byte("datagram")); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(20 * time.Second) // a bound for a broken run, not a speed
	for {
		got, dropped := int(received.Load()), int(drops()-before)
		if got+dropped == n {
			return got
		}
		if got+dropped > n || time.Now().After(deadline) {
			t.Fatalf("%d datagrams to port %d: %d arrived, %d dropped by rules", n, port, got, dropped)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// UDPEnforced checks with real traffic on the veth that UDP to port
// dropped is dropped and UDP to port passed arrives; drops as in
// UDPArrivals.
func (p *Pair) UDPEnforced(t testing.TB, when string, dropped, passed int, drops func() uint64) {
	t.Helper()
	const n = 20
	if got := p.UDPArrivals(t, dropped, n, drops); got != 0 {
		t.Errorf("%s: %d of %d datagrams to port %d arrived, want it dropped", when, got, n, dropped)
	}
	if got := p.UDPArrivals(t, passed, n, drops); got != n {
		t.Errorf("%s: %d of %d datagrams to port %d arrived, want all", when, got, n, passed)
	}
}
