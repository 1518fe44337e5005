package netns

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// GetTimeout bounds a whole Get: long enough for a veth round trip many times
// over, short enough that a dropped request fails the check quickly.
const GetTimeout = 2 * time.Second

// HTTPServer starts a Go net/http server in the server namespace, listening
// on ServerIP4 and ServerIP6 at the same port, that answers every request
// with "hello\n". It returns the port and closes the server at cleanup.
func (p *Pair) HTTPServer(t testing.TB) (port int) {
	t.Helper()
	ln4, err := ListenIn(p.ServerNS, "tcp4", netip.AddrPortFrom(p.ServerIP4, 0).String())
	if err != nil {
		t.Fatalf("netns: listen on %s in %s: %v", p.ServerIP4, p.ServerNS, err)
	}
	port = ln4.Addr().(*net.TCPAddr).Port
	// Two listeners rather than one dual-stack socket: a dual-stack ":0"
	// depends on IPV6_V6ONLY defaults, two explicit addresses do not.
	ln6, err := ListenIn(p.ServerNS, "tcp6", netip.AddrPortFrom(p.ServerIP6, uint16(port)).String())
	if err != nil {
		ln4.Close()
		t.Fatalf("netns: listen on [%s]:%d in %s: %v", p.ServerIP6, port, p.ServerNS, err)
	}

	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, "hello\n")
		}),
		ReadHeaderTimeout: GetTimeout,
	}
	var wg sync.WaitGroup
	for _, ln := range []net.Listener{ln4, ln6} {
		wg.Go(func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				t.Errorf("netns: HTTP server on %s: %v", ln.Addr(), err)
			}
		})
	}
	t.Cleanup(func() {
		srv.Close()
		wg.Wait()
	})
	return port
}

// Get fetches url from the client namespace with HTTP/1.1 (the request line
// reads "GET / HTTP/1.1") and a 2 s timeout, on a fresh connection. The
// URL's host must be an IP literal; HTTPURL builds one.
func (p *Pair) Get(url string) (status int, body string, err error) {
	tr := &http.Transport{
		DialContext:       DialContextIn(p.ClientNS),
		DisableKeepAlives: true, // each Get is one new TCP connection, as curl would make
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: GetTimeout}
	resp, err := client.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b), err
}

// HTTPURL is "http://ADDR:PORT/", with brackets around an IPv6 address.
func HTTPURL(addr netip.Addr, port int) string {
	return fmt.Sprintf("http://%s/", netip.AddrPortFrom(addr, uint16(port)))
}

// logWriter sends a process's output to the test log one line at a time.
type logWriter struct {
	t      testing.TB
	prefix string
	mu     sync.Mutex
	buf    []byte
}

func (w *logWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.t.Log(w.prefix + string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	return len(b), nil
}

// flush logs a last line that had no newline.
func (w *logWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.t.Log(w.prefix + string(w.buf))
		w.buf = nil
	}
}
