package main

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/otlptest"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// TestOTLPExport runs grain with the standard OTEL_* variables pointing at
// a real OTLP/HTTP receiver in the server namespace: a blocked request
// arrives as a log record with its addresses and ports, and the rule's
// packet counter as a metric point.
func TestOTLPExport(t *testing.T) {
	vmtest.HostOnly(t, "telemetry is userspace; the end-to-end tests carry the kernel's events in every guest")
	p := netns.NewPair(t)
	port := p.HTTPServer(t)
	ln, err := netns.ListenIn(p.ServerNS, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	recv, url := otlptest.StartHTTPOn(t, ln)
	d := startGrainEnv(t, []string{
		"OTEL_EXPORTER_OTLP_ENDPOINT=" + url,
		"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
		"OTEL_METRIC_EXPORT_INTERVAL=200",
		"OTEL_BLRP_SCHEDULE_DELAY=100",
		"OTEL_SERVICE_NAME=grain-e2e",
	}, p.ServerNS, "run", "--policies", "../../examples/block-http", "--interface", p.ServerIf,
		"--pin-path", netns.PinDir(t), "--status-socket", filepath.Join(t.TempDir(), "grain.sock"), "--otlp-exports", "3")

	_, sport, err := rawRequest(t, p, p.ServerIP4, port, "GET / HTTP/1.1")
	if err == nil {
		t.Fatal("HTTP/1.1 request answered, want it dropped")
	}
	deadline := time.Now().Add(10 * time.Second)
	var gotLog, gotMetric bool
	for time.Now().Before(deadline) && !(gotLog && gotMetric) {
		metrics, logs := recv.Snapshot()
		for _, rl := range logs {
			for _, sl := range rl.GetScopeLogs() {
				for _, lr := range sl.GetLogRecords() {
					attrs := map[string]any{}
					for _, kv := range lr.GetAttributes() {
						if v := kv.GetValue(); v.GetStringValue() != "" {
							attrs[kv.GetKey()] = v.GetStringValue()
						} else {
							attrs[kv.GetKey()] = v.GetIntValue()
						}
					}
					if lr.GetBody().GetStringValue() == "http_blocked" && attrs["source.address"] == p.ClientIP4.String() &&
						attrs["destination.address"] == p.ServerIP4.String() && attrs["source.port"] == int64(sport) &&
						attrs["destination.port"] == int64(port) && attrs["grain.policy"] == "block_http" {
						gotLog = true
					}
				}
			}
		}
		for _, rm := range metrics {
			for _, sm := range rm.GetScopeMetrics() {
				for _, m := range sm.GetMetrics() {
					if m.GetName() != "grain.rule.packets" {
						continue
					}
					for _, dp := range m.GetSum().GetDataPoints() {
						for _, kv := range dp.GetAttributes() {
							if kv.GetKey() == "grain.policy" && kv.GetValue().GetStringValue() == "block_http" && dp.GetAsInt() >= 1 {
								gotMetric = true
							}
						}
					}
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !gotLog {
		t.Errorf("no log record for the dropped request (sport %d) reached the OTLP receiver; grain stderr:\n%s", sport, d.log())
	}
	if !gotMetric {
		t.Errorf("no grain.rule.packets point for block_http reached the OTLP receiver; grain stderr:\n%s", d.log())
	}
	d.stop(t)
}

// TestPrometheusEndpoint scrapes grain run's --metrics-addr over HTTP after
// real traffic: the rule's packet counter shows the dropped packets.
func TestPrometheusEndpoint(t *testing.T) {
	vmtest.HostOnly(t, "telemetry is userspace; the end-to-end tests carry the kernel's events in every guest")
	p := netns.NewPair(t)
	port := p.HTTPServer(t)
	d := startGrain(t, p.ServerNS, "run", "--policies", "../../examples/block-http", "--interface", p.ServerIf,
		"--pin-path", netns.PinDir(t), "--status-socket", filepath.Join(t.TempDir(), "grain.sock"),
		"--metrics-addr", p.ServerIP4.String()+":9464")
	if _, _, err := rawRequest(t, p, p.ServerIP4, port, "GET / HTTP/1.1"); err == nil {
		t.Fatal("HTTP/1.1 request answered, want it dropped")
	}
	// Scrape from the client namespace over the veth, with HTTP/1.0: grain
	// drops every request line carrying HTTP/1.1, whatever the port.
	body := scrapeBody(t, p.ClientNS, p.ServerIP4.String()+":9464")
	line, _, _ := strings.Cut(body, "\n")
	if !strings.Contains(line, "200") {
		t.Fatalf("scrape: %q", line)
	}
	var packets int
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, `grain_rule_packets_total{`) && strings.Contains(l, `grain_policy="block_http"`) {
			fields := strings.Fields(l)
			packets, _ = strconv.Atoi(fields[len(fields)-1])
		}
	}
	if packets < 1 {
		t.Errorf("grain_rule_packets_total for block_http = %d after a dropped request; scrape:\n%s\nstderr:\n%s", packets, body, d.log())
	}
	// The same drops, by interface and verdict.
	var onIface int
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, `grain_interface_packets_total{grain_verdict="drop",network_interface_name="`+p.ServerIf+`"`) {
			fields := strings.Fields(l)
			onIface, _ = strconv.Atoi(fields[len(fields)-1])
		}
	}
	if onIface != packets {
		t.Errorf("grain_interface_packets_total for %s, drop = %d, want %d (the rule's packets); scrape:\n%s", p.ServerIf, onIface, packets, body)
	}
	d.stop(t)
}

// udpDropPolicy drops UDP datagrams to port 9999 and reports each (no
// deduplication: the datagrams come from one socket, and the tests count
// one record per datagram).
const udpDropPolicy = `udp_9999: {
	xdp: interfaces: []
	match: {protocol: "udp", dport: 9999}
	then: "drop"
	emit: {event: "udp_dropped", fields: ["saddr", "sport", "dport"], dedup: "0s"}
}
`

// udpSender sends datagrams to the server's port 9999 from one socket
// (one source port) of the client namespace.
type udpSender struct {
	conn  net.Conn
	sport int
}

func newUDPSender(t *testing.T, p *netns.Pair) *udpSender {
	t.Helper()
	conn, err := netns.DialContextIn(p.ClientNS)(context.Background(), "udp", netip.AddrPortFrom(p.ServerIP4, 9999).String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &udpSender{conn: conn, sport: conn.LocalAddr().(*net.UDPAddr).Port}
}

func (s *udpSender) send(t *testing.T, n int) {
	t.Helper()
	for range n {
		if _, err := s.conn.Write([]byte("datagram")); err != nil {
			t.Fatal(err)
		}
	}
}

// udpServer counts the datagrams that reach port 9999 of the server:
// none may while grain enforces.
func udpServer(t *testing.T, p *netns.Pair) *atomic.Int64 {
	t.Helper()
	var pc net.PacketConn
	if err := netns.Do(p.ServerNS, func() (err error) {
		pc, err = net.ListenPacket("udp", netip.AddrPortFrom(p.ServerIP4, 9999).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	var n atomic.Int64
	go func() {
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			n.Add(1)
		}
	}()
	return &n
}

// recordsFrom counts the log records the receiver got for source port sport.
func recordsFrom(r *otlptest.Receiver, sport int) int {
	_, logs := r.Snapshot()
	n := 0
	for _, rl := range logs {
		for _, sl := range rl.GetScopeLogs() {
			for _, lr := range sl.GetLogRecords() {
				for _, kv := range lr.GetAttributes() {
					if kv.GetKey() == "source.port" && kv.GetValue().GetIntValue() == int64(sport) {
						n++
					}
				}
			}
		}
	}
	return n
}

// scrape reads grain's Prometheus endpoint inside the server namespace
// and returns the grain_events_* series without their otel_scope labels.
func scrape(t *testing.T, ns, addr string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, l := range strings.Split(scrapeBody(t, ns, addr), "\n") {
		if !strings.HasPrefix(l, "grain_events_") {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			continue
		}
		name, rest, _ := strings.Cut(l[:i], "{")
		var labels []string
		for _, kv := range strings.Split(strings.TrimSuffix(rest, "}"), ",") {
			if kv != "" && !strings.HasPrefix(kv, "otel_scope_") {
				labels = append(labels, kv)
			}
		}
		out[name+"{"+strings.Join(labels, ",")+"}"] = v
	}
	return out
}

// scrapeBody reads grain's Prometheus endpoint at addr inside namespace ns.
func scrapeBody(t *testing.T, ns, addr string) string {
	t.Helper()
	conn, err := netns.DialContextIn(ns)(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(conn, "GET /metrics HTTP/1.0\r\n\r\n")
	b, _ := io.ReadAll(conn)
	return string(b)
}

// waitFor polls cond for up to 10 s.
func waitFor(cond func() bool) bool {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if cond() {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return cond()
}

// TestOTLPOutage stops the OTLP receiver while real traffic goes on and
// serves it again on the same address: grain keeps dropping the traffic,
// retries and then gives up the batch it held (counted as export_failed),
// drops what does not fit in its 64-event export queue (counted as
// export_queue_full), and exports again once
// the receiver is back; every event is accounted for. Over HTTP and gRPC.
func TestOTLPOutage(t *testing.T) {
	vmtest.HostOnly(t, "telemetry is userspace")
	for _, proto := range []string{"http/protobuf", "grpc"} {
		t.Run(proto, func(t *testing.T) { testOutage(t, proto) })
	}
}

func testOutage(t *testing.T, proto string) {
	p := netns.NewPair(t)
	delivered := udpServer(t, p)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "policy.cue"), []byte(udpDropPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	ln, err := netns.ListenIn(p.ServerNS, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	recv := &otlptest.Receiver{}
	serve := func(ln net.Listener) (string, func()) {
		if proto == "grpc" {
			return recv.ServeGRPC(ln)
		}
		return recv.ServeHTTP(t, ln)
	}
	url, stop := serve(ln)
	defer func() { stop() }()
	metricsAddr := "127.0.0.1:9464"
	d := startGrainEnv(t, []string{
		"OTEL_EXPORTER_OTLP_ENDPOINT=" + url,
		"OTEL_EXPORTER_OTLP_PROTOCOL=" + proto,
		"OTEL_METRIC_EXPORT_INTERVAL=200",
		"OTEL_BLRP_SCHEDULE_DELAY=50",
	}, p.ServerNS, "run", "--policies", dir, "--interface", p.ServerIf,
		"--pin-path", netns.PinDir(t), "--status-socket", filepath.Join(t.TempDir(), "grain.sock"),
		"--otlp-queue", "64", "--otlp-retry", "1s", "--metrics-addr", metricsAddr)

	before := newUDPSender(t, p)
	before.send(t, 10)
	if !waitFor(func() bool { return recordsFrom(recv, before.sport) == 10 }) {
		t.Fatalf("before the outage: %d of 10 records arrived; grain stderr:\n%s", recordsFrom(recv, before.sport), d.log())
	}

	stop() // the collector goes away
	during := newUDPSender(t, p)
	during.send(t, 400)
	const otlp = `{grain_sink="otlp"}`
	var m map[string]float64
	// The batch held while the receiver was down is given up after the
	// 1 s of retries; the rest did not fit in the queue.
	ok := waitFor(func() bool {
		m = scrape(t, p.ServerNS, metricsAddr)
		return m[`grain_events_received_total{}`] == 410 &&
			m[`grain_events_lost_total{grain_loss_reason="export_failed",grain_sink="otlp"}`]+
				m[`grain_events_lost_total{grain_loss_reason="export_queue_full",grain_sink="otlp"}`] == 400
	})
	if !ok {
		t.Fatalf("during the outage: %v; grain stderr:\n%s", m, d.log())
	}
	queueFull := m[`grain_events_lost_total{grain_loss_reason="export_queue_full",grain_sink="otlp"}`]
	failed := m[`grain_events_lost_total{grain_loss_reason="export_failed",grain_sink="otlp"}`]
	// Memory stayed bounded: at most the 64-event queue and one batch per
	// export worker (two) were held, and given up; the rest was dropped.
	if queueFull < 400-3*64 || failed < 1 || failed > 3*64 || m[`grain_events_pending`+otlp] != 0 {
		t.Errorf("during the outage: %v export_queue_full, %v export_failed, %v pending; want ≥ %d, 1..%d, 0",
			queueFull, failed, m[`grain_events_pending`+otlp], 400-3*64, 3*64)
	}

	ln, err = netns.ListenIn(p.ServerNS, "tcp", addr) // the collector returns
	if err != nil {
		t.Fatal(err)
	}
	_, stop = serve(ln)
	after := newUDPSender(t, p)
	// Until the exporter has reconnected, some may be lost: send until
	// records arrive, at most for a few seconds.
	resumed := waitFor(func() bool {
		after.send(t, 1)
		return recordsFrom(recv, after.sport) > 0
	})
	if !resumed {
		t.Fatalf("export did not resume within 10 s of the receiver's return; grain stderr:\n%s", d.log())
	}
	if n := delivered.Load(); n != 0 {
		t.Errorf("%d datagrams reached the server: enforcement stopped", n)
	}

	// Every event is accounted for: what the pipeline passed to the OTLP
	// sink was exported (and arrived), or counted lost, or is pending.
	// Waited for until the last event sent has gone through the pipeline
	// to both sinks: one scrape can fall between its receipt and its
	// delivery.
	ok = waitFor(func() bool {
		m = scrape(t, p.ServerNS, metricsAddr)
		return m[`grain_events_pending`+otlp] == 0 &&
			m[`grain_events_exported_total{grain_sink="stdout"}`] == m[`grain_events_received_total{}`]
	})
	exported := m[`grain_events_exported_total`+otlp]
	lost := m[`grain_events_lost_total{grain_loss_reason="export_queue_full",grain_sink="otlp"}`] +
		m[`grain_events_lost_total{grain_loss_reason="export_failed",grain_sink="otlp"}`]
	passed := m[`grain_events_exported_total{grain_sink="stdout"}`]
	received := m[`grain_events_received_total{}`]
	if !ok || exported+lost != passed || passed != received {
		t.Errorf("accounting: received %v, passed to sinks %v, OTLP exported %v + lost %v; %v", received, passed, exported, lost, m)
	}
	if got := recv.LogRecords(); float64(got) != exported {
		t.Errorf("receiver got %d records, grain counts %v exported", got, exported)
	}
	d.stop(t)
}

// TestPipelineReload changes the pipeline of a running grain's tree: the
// events of real traffic show the new rewrite without a restart.
func TestPipelineReload(t *testing.T) {
	vmtest.HostOnly(t, "the pipeline's reload is userspace")
	p := netns.NewPair(t)
	dir := t.TempDir()
	write := func(pipeline string) {
		tmp := filepath.Join(dir, ".policy.cue.tmp")
		if err := os.WriteFile(tmp, []byte(udpDropPolicy+pipeline), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "policy.cue")); err != nil {
			t.Fatal(err)
		}
	}
	write(`pipeline: rewrite: [{field: "saddr", prefix: ipv4: 24}]` + "\n")
	d := startGrain(t, p.ServerNS, "run", "--policies", dir, "--interface", p.ServerIf,
		"--pin-path", netns.PinDir(t), "--status-socket", filepath.Join(t.TempDir(), "grain.sock"))
	s := newUDPSender(t, p)
	s.send(t, 1)
	network := netip.PrefixFrom(p.ClientIP4, 24).Masked().Addr().String()
	d.waitEvent(t, map[string]any{"event": "udp_dropped", "saddr": network, "sport": float64(s.sport)})

	write(`pipeline: rewrite: [{field: "saddr", redact: true}, {field: "sport", rename: "client_port"}]` + "\n")
	if !waitFor(func() bool {
		s.send(t, 1)
		return d.hasEvent(map[string]any{"saddr": "REDACTED", "client_port": float64(s.sport)})
	}) {
		t.Fatalf("no event shows the reloaded pipeline; stderr:\n%s", d.log())
	}
	d.stop(t)
}

// hasEvent reports whether an event whose fields include want arrived.
func (d *grainProcess) hasEvent(want map[string]any) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, ev := range d.events {
		match := true
		for k, v := range want {
			if ev[k] != v {
				match = false
				break
			}
		}
		if match {
			return true
		}
	}
	return false
}
