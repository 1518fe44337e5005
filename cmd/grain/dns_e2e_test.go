package main

import (
	"context"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/grain-ebpf/grain/internal/netns"
)

// TestEndToEndDNSQueries runs `grain run` with examples/dns-queries on the
// server end of a veth pair while Go's own DNS resolver, in the client
// namespace, sends real queries to the server's address (over IPv4 and
// IPv6): each query's event names the client, its port and the queried
// name. No DNS server answers; the XDP program sees the queries anyway.
func TestEndToEndDNSQueries(t *testing.T) {
	p := netns.NewPair(t)
	d := startGrain(t, p.ServerNS, "run", "--policies", "../../examples/dns-queries", "--interface", p.ServerIf,
		"--pin-path", netns.PinDir(t), "--status-socket", filepath.Join(t.TempDir(), "grain.sock"))

	dial := netns.DialContextIn(p.ClientNS)
	for _, c := range []struct {
		server, client netip.Addr
		name           string
	}{
		{p.ServerIP4, p.ClientIP4, "www.grain-e2e.example"},
		{p.ServerIP6, p.ClientIP6, "mail.Grain-E2E-v6.example"},
	} {
		var mu sync.Mutex
		var ports []int
		r := &net.Resolver{
			PreferGo: true,
			Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
				conn, err := dial(ctx, "udp", netip.AddrPortFrom(c.server, 53).String())
				if err == nil {
					mu.Lock()
					ports = append(ports, conn.LocalAddr().(*net.UDPAddr).Port)
					mu.Unlock()
				}
				return conn, err
			},
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := r.LookupHost(ctx, c.name+".") // fully qualified: no search domains
		cancel()
		if err == nil {
			t.Fatalf("lookup of %s succeeded; no server should answer", c.name)
		}
		mu.Lock()
		sent := append([]int(nil), ports...)
		mu.Unlock()
		if len(sent) == 0 {
			t.Fatalf("the resolver never dialled the server for %s", c.name)
		}
		t.Logf("%s: %d queries sent, from ports %v", c.name, len(sent), sent)
		// Each query (A and AAAA, each from its own socket) is one event.
		for _, sport := range sent {
			d.waitEvent(t, map[string]any{
				"policy": "dns_queries", "event": "dns_query", "verdict": "pass", "interface": p.ServerIf,
				"saddr": c.client.String(), "daddr": c.server.String(), "sport": float64(sport),
				"dns_qname": c.name,
			})
		}
	}
	d.stop(t)
}
