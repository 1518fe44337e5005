package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// tlsTestCert is a self-signed certificate for every name the test asks
// for, written as PEM files for openssl too.
func tlsTestCert(t *testing.T) (tls.Certificate, string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(20),
		Subject:      pkix.Name{CommonName: "grain tls test"},
		DNSNames:     []string{"blocked.example", "*.ads.example", "www.example.org"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return cert, certFile, keyFile
}

var errNoCurl = errors.New("curl is not installed")

// TestEndToEndTLSServerNames runs `grain run` with examples/block-sni and
// examples/tls-handshakes on the server end of a veth pair, in front of a
// Go TLS server and openssl s_server. From the client namespace curl and
// Go's crypto/tls connect by name: a blocked name's handshake never
// completes and its event names the client and the name; another name on
// the same server is served, and its hello is reported with its version
// and ALPN protocols.
func TestEndToEndTLSServerNames(t *testing.T) {
	p := netns.NewPair(t)
	cert, certFile, keyFile := tlsTestCert(t)

	// Go's TLS server, answering HTTPS.
	ln, err := netns.ListenIn(p.ServerNS, "tcp", ":8443")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler:   http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "hello %s\n", r.Host) }),
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	servers := []int{8443}
	// openssl and curl are on the host (scripts/deps.sh); a QEMU guest's
	// initramfs has neither, and runs Go's server and client alone.
	_, errOpenSSL := exec.LookPath("openssl")
	_, errCurl := exec.LookPath("curl")
	if (errOpenSSL != nil || errCurl != nil) && !vmtest.Guest() {
		t.Fatalf("openssl or curl is not installed (run scripts/deps.sh): %v %v", errOpenSSL, errCurl)
	}
	hasCurl := errCurl == nil
	if errOpenSSL == nil {
		p.Start(p.ServerNS, "openssl", "s_server", "-quiet", "-accept", "8444", "-cert", certFile, "-key", keyFile, "-www")
		servers = append(servers, 8444)
	} else {
		t.Logf("%s: no openssl: Go's TLS server alone", vmtest.Where())
	}
	if !hasCurl {
		t.Logf("%s: no curl: Go's TLS client alone", vmtest.Where())
	}

	// Both examples in one tree, on the server's interface.
	dir := t.TempDir()
	for _, ex := range []string{"block-sni", "tls-handshakes"} {
		src, err := os.ReadFile(filepath.Join("../../examples", ex, "policy.cue"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, ex+".cue"), src, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d := startGrain(t, p.ServerNS, "run", "--policies", dir, "--interface", p.ServerIf,
		"--pin-path", netns.PinDir(t), "--status-socket", filepath.Join(t.TempDir(), "grain.sock"))

	// A blocked handshake ends by the client's timeout; an allowed one
	// gets longer, for emulated guests.
	const blockedTimeout, allowedTimeout = 2 * time.Second, 20 * time.Second
	goClient := func(server netip.Addr, port int, name string, timeout time.Duration) (int, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		conn, err := netns.DialContextIn(p.ClientNS)(ctx, "tcp", netip.AddrPortFrom(server, uint16(port)).String())
		if err != nil {
			return 0, err
		}
		defer conn.Close()
		sport := conn.LocalAddr().(*net.TCPAddr).Port
		c := tls.Client(conn, &tls.Config{ServerName: name, InsecureSkipVerify: true, NextProtos: []string{"h2", "http/1.1"}})
		return sport, c.HandshakeContext(ctx)
	}
	curl := func(server netip.Addr, port int, name string, timeout time.Duration) (string, error) {
		if !hasCurl {
			return "", errNoCurl
		}
		host := server.String()
		if server.Is6() {
			host = "[" + host + "]"
		}
		out, err := p.Run(p.ClientNS, "curl", "-sk", "--max-time", strconv.Itoa(int(timeout.Seconds())), "--resolve", fmt.Sprintf("%s:%d:%s", name, port, host),
			fmt.Sprintf("https://%s:%d/", name, port))
		return string(out), err
	}

	// Per server, the allowed name first: openssl s_server serves one
	// connection at a time, and a blocked client leaves it waiting for a
	// hello that never arrives (grain drops the hello, it does not reset
	// the connection).
	for _, port := range servers {
		for _, server := range []netip.Addr{p.ServerIP4, p.ServerIP6} {
			client := p.ClientIP4
			if server.Is6() {
				client = p.ClientIP6
			}
			where := fmt.Sprintf("%s port %d", server, port)
			sport, err := goClient(server, port, "www.example.org", allowedTimeout)
			if err != nil {
				t.Errorf("%s: crypto/tls handshake for www.example.org: %v", where, err)
			}
			d.waitEvent(t, map[string]any{"policy": "tls_handshakes", "event": "tls_hello", "verdict": "count",
				"saddr": client.String(), "sport": float64(sport), "daddr": server.String(), "dport": float64(port),
				"tls_sni": "www.example.org", "tls_version": "1.3", "tls_alpn": "h2,http/1.1"})
			out, err := curl(server, port, "www.example.org", allowedTimeout)
			if err == errNoCurl {
				continue
			}
			if err != nil {
				t.Errorf("%s: curl https://www.example.org/: %v (%q)", where, err, out)
			}
			d.waitEvent(t, map[string]any{"policy": "tls_handshakes", "tls_sni": "www.example.org", "tls_version": "1.3", "daddr": server.String()})
		}
		for _, server := range []netip.Addr{p.ServerIP4, p.ServerIP6} {
			client := p.ClientIP4
			if server.Is6() {
				client = p.ClientIP6
			}
			where := fmt.Sprintf("%s port %d", server, port)
			for _, name := range []string{"blocked.example", "Tracker.Ads.Example"} {
				sport, err := goClient(server, port, name, blockedTimeout)
				if err == nil {
					t.Errorf("%s: crypto/tls completed a handshake for %s, which block_sni drops", where, name)
				}
				d.waitEvent(t, map[string]any{"policy": "block_sni", "event": "sni_blocked", "verdict": "drop",
					"saddr": client.String(), "sport": float64(sport), "daddr": server.String(), "dport": float64(port), "tls_sni": name})
				out, err := curl(server, port, name, blockedTimeout)
				if err == errNoCurl {
					continue
				}
				if err == nil {
					t.Errorf("%s: curl fetched https://%s/ (%q), which block_sni drops", where, name, out)
				}
				d.waitEvent(t, map[string]any{"policy": "block_sni", "tls_sni": name, "daddr": server.String()})
			}
		}
	}
	// Every reported hello carries a JA4 fingerprint: crypto/tls's and
	// curl's hellos fit their first segment, or end in their key share.
	d.mu.Lock()
	for _, ev := range d.events {
		if ev["event"] == "tls_hello" {
			if ja4, _ := ev["tls_ja4"].(string); !strings.HasPrefix(ja4, "t13d") {
				t.Errorf("a hello event without a TLS 1.3 JA4 fingerprint: %v", ev)
			}
		}
	}
	d.mu.Unlock()
	d.stop(t)
}

// The examples' own tests pass with the reference evaluator and, as root,
// with the real packet program.
func TestTLSExamplesPolicyTests(t *testing.T) {
	for _, ex := range []string{"block-sni", "tls-handshakes"} {
		args := []string{"test", "../../examples/" + ex}
		if os.Geteuid() == 0 {
			args = []string{"test", "--kernel", "../../examples/" + ex}
		}
		var out, errOut strings.Builder
		if code := run(args, &out, &errOut); code != 0 || !strings.HasSuffix(out.String(), " passed, 0 failed\n") {
			t.Errorf("grain %s: exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errOut.String())
		}
		n, _ := strconv.Atoi(strings.Fields(out.String() + " 0")[0])
		if n == 0 {
			t.Errorf("grain %s ran no test: %q", strings.Join(args, " "), out.String())
		}
	}
}
