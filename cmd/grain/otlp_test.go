package main

import (
	"context"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/otlptest"
)

// TestOTLPExport runs grain with the standard OTEL_* variables pointing at
// a real OTLP/HTTP receiver in the server namespace: a blocked request
// arrives as a log record with its addresses and ports, and the rule's
// packet counter as a metric point.
func TestOTLPExport(t *testing.T) {
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
		"--pin-path", pinPath(t), "--status-socket", filepath.Join(t.TempDir(), "grain.sock"))

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
	p := netns.NewPair(t)
	port := p.HTTPServer(t)
	d := startGrain(t, p.ServerNS, "run", "--policies", "../../examples/block-http", "--interface", p.ServerIf,
		"--pin-path", pinPath(t), "--status-socket", filepath.Join(t.TempDir(), "grain.sock"),
		"--metrics-addr", p.ServerIP4.String()+":9464")
	if _, _, err := rawRequest(t, p, p.ServerIP4, port, "GET / HTTP/1.1"); err == nil {
		t.Fatal("HTTP/1.1 request answered, want it dropped")
	}
	// Scrape from the client namespace over the veth, with HTTP/1.0: grain
	// drops every request line carrying HTTP/1.1, whatever the port.
	conn, err := netns.DialContextIn(p.ClientNS)(context.Background(), "tcp", p.ServerIP4.String()+":9464")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(conn, "GET /metrics HTTP/1.0\r\n\r\n")
	b, _ := io.ReadAll(conn)
	body := string(b)
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
	d.stop(t)
}
