package netns

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestPairHTTP proves the harness end to end: a Go HTTP server in the server
// namespace answers a Go client in the client namespace over IPv4 and IPv6.
func TestPairHTTP(t *testing.T) {
	p := NewPair(t)
	port := p.HTTPServer(t)
	for _, addr := range []struct {
		name string
		url  string
	}{
		{"ipv4", HTTPURL(p.ServerIP4, port)},
		{"ipv6", HTTPURL(p.ServerIP6, port)},
	} {
		t.Run(addr.name, func(t *testing.T) {
			status, body, err := p.Get(addr.url)
			if err != nil {
				t.Fatalf("GET %s: %v", addr.url, err)
			}
			if status != 200 || body != "hello\n" {
				t.Fatalf("GET %s = %d %q, want 200 %q", addr.url, status, body, "hello\n")
			}
		})
	}
}

// TestPairIsolation checks that the veth ends live only in their namespaces
// and that Do leaves the calling thread in the host namespace again.
func TestPairIsolation(t *testing.T) {
	p := NewPair(t)
	if p.ServerIfIndex == 0 || len(p.ServerMAC) != 6 {
		t.Fatalf("ServerIfIndex %d, ServerMAC %v: not read", p.ServerIfIndex, p.ServerMAC)
	}
	for i := 0; i < 3; i++ { // repeated: a thread left in the namespace would show up
		if err := Do(p.ServerNS, func() error {
			_, err := net.InterfaceByName(p.ServerIf)
			return err
		}); err != nil {
			t.Fatalf("%s not found inside %s: %v", p.ServerIf, p.ServerNS, err)
		}
		for _, dev := range []string{p.ServerIf, p.ClientIf} {
			if _, err := net.InterfaceByName(dev); err == nil {
				t.Fatalf("%s visible in the host namespace after Do", dev)
			}
		}
	}

	out, err := p.Run(p.ClientNS, "ip", "-br", "addr", "show", "dev", p.ClientIf)
	if err != nil {
		t.Fatalf("Run: %v: %s", err, out)
	}
	for _, want := range []string{"UP", p.ClientIP4.String() + "/24", p.ClientIP6.String() + "/64"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("ip addr in %s = %q, missing %q", p.ClientNS, out, want)
		}
	}
}

// TestPairCleanup checks that a pair's background processes are stopped and
// its namespaces deleted when the (sub)test that made it ends.
func TestPairCleanup(t *testing.T) {
	var cmd *exec.Cmd
	var names []string
	t.Run("pair", func(t *testing.T) {
		p := NewPair(t)
		cmd = p.Start(p.ServerNS, "sleep", "60")
		names = []string{p.ServerNS, p.ClientNS}
	})
	if cmd == nil {
		t.Skip("pair skipped")
	}
	if cmd.ProcessState == nil {
		t.Error("background process was not waited for at cleanup")
	}
	for _, ns := range names {
		if _, err := os.Stat(filepath.Join(Dir, ns)); !os.IsNotExist(err) {
			t.Errorf("namespace %s still exists after cleanup (stat: %v)", ns, err)
		}
	}
}
