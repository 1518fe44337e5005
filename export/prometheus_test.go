package export

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/engine"
)

// The Prometheus endpoint, scraped over HTTP, shows the same counters as
// the OTLP export.
func TestPrometheusScrape(t *testing.T) {
	packets := uint64(7)
	m, handler, err := NewPrometheus(context.Background(), MetricsConfig{
		Counters: func() ([]engine.RuleCounter, error) {
			return []engine.RuleCounter{{Policy: "block_http", Verdict: "drop", Packets: packets, Bytes: 700, Events: 7, EventsLost: 1}}, nil
		},
		Status: func() engine.Status {
			return engine.Status{PolicyHash: "abc123", ReloadsOK: 3, ReloadsError: 1}
		},
		Interfaces: func() ([]engine.InterfaceCounter, error) {
			return []engine.InterfaceCounter{{Interface: "eth0", Verdict: "drop", Packets: 5, Bytes: 500}}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Shutdown(context.Background())
	scrape := scraper(t, handler)
	body := scrape()
	for _, want := range []string{
		`grain_rule_packets_total{grain_policy="block_http",grain_verdict="drop"`,
		`grain_rule_bytes_total{grain_policy="block_http",grain_verdict="drop"`,
		`grain_events_lost_total{grain_loss_reason="ring_buffer_full",grain_policy="block_http",grain_verdict="drop"`,
		`grain_reloads_total{grain_reload_result="failure"`,
		`grain_interface_packets_total{grain_verdict="drop",network_interface_name="eth0",otel_scope_name="github.com/grain-ebpf/grain/export",otel_scope_schema_url="",otel_scope_version=""} 5`,
		`grain_interface_bytes_total{grain_verdict="drop",network_interface_name="eth0",otel_scope_name="github.com/grain-ebpf/grain/export",otel_scope_schema_url="",otel_scope_version=""} 500`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %s:\n%s", want, body)
		}
	}
	if !strings.Contains(body, "} 7\n") {
		t.Errorf("scrape lacks the packet count 7:\n%s", body)
	}
	packets = 9
	if body := scrape(); !strings.Contains(body, "} 9\n") {
		t.Errorf("a second scrape does not read the counters again:\n%s", body)
	}
}

// scraper serves handler and returns a function that scrapes it.
func scraper(t *testing.T, handler http.Handler) func() string {
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	return func() string {
		resp, err := srv.Client().Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
}
