package export

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/grain-ebpf/grain/engine/hook"
)

// Count metrics are named by the policies: one that a reload brings gets
// its instrument, and its samples are exported with their labels as
// semantic-convention attributes. The probe counters are exported per
// policy, the nesting counters once.
func TestHookMetricsFollowReloads(t *testing.T) {
	var mu sync.Mutex
	names := []string{"process.execs"}
	samples := []hook.CountSample{
		{Metric: "process.execs", Policy: "execs", Labels: []hook.Label{{Name: "comm", Value: "curl"}, {Name: "uid", Value: "0"}}, Calls: 3, Value: 3},
	}
	m, handler, err := NewPrometheus(context.Background(), MetricsConfig{Hooks: HookMetricsConfig{
		Counters: func() ([]hook.RuleCounter, error) {
			return []hook.RuleCounter{{Policy: "execs", Hits: 3, Events: 2, EventsLost: 1, Signals: 0}}, nil
		},
		Counts: func() ([]hook.CountSample, error) {
			mu.Lock()
			defer mu.Unlock()
			return append([]hook.CountSample(nil), samples...), nil
		},
		MetricNames: func() []string {
			mu.Lock()
			defer mu.Unlock()
			return append([]string(nil), names...)
		},
		Nesting: func() (hook.Nesting, error) { return hook.Nesting{Nested: 5, Skipped: 2}, nil },
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Shutdown(context.Background())
	scrape := scraper(t, handler)
	body := scrape()
	for _, want := range []string{
		`grain_process_execs_total{grain_policy="execs",otel_scope_name="github.com/grain-ebpf/grain/export",otel_scope_schema_url="",otel_scope_version="",process_executable_name="curl",process_real_user_id="0"} 3`,
		`grain_probe_hits_total{grain_policy="execs"`,
		`grain_events_lost_total{grain_loss_reason="ring_buffer_full",grain_policy="execs"`,
		`grain_probe_nested_total{otel_scope_name="github.com/grain-ebpf/grain/export",otel_scope_schema_url="",otel_scope_version=""} 5`,
		`grain_probe_nested_skipped_total{otel_scope_name="github.com/grain-ebpf/grain/export",otel_scope_schema_url="",otel_scope_version=""} 2`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %s:\n%s", want, body)
		}
	}

	// A reload brings a new count metric.
	mu.Lock()
	names = append(names, "tcp.bytes_sent")
	samples = append(samples, hook.CountSample{Metric: "tcp.bytes_sent", Policy: "tcp_bytes", IsSum: true,
		Labels: []hook.Label{{Name: "daddr", Value: "10.0.0.1"}, {Name: "dport", Value: "80"}}, Calls: 2, Sum: 1500, Value: 1500})
	mu.Unlock()
	want := `grain_tcp_bytes_sent_total{destination_address="10.0.0.1",destination_port="80",grain_policy="tcp_bytes"`
	deadline := time.Now().Add(5 * hookSyncInterval)
	for body = scrape(); !strings.Contains(body, want); body = scrape() {
		if time.Now().After(deadline) {
			t.Fatalf("the new count metric was not exported within %v:\n%s", 5*hookSyncInterval, body)
		}
		time.Sleep(hookSyncInterval / 5)
	}
	if !strings.Contains(body, `otel_scope_version=""} 1500`) {
		t.Errorf("the sum metric does not export the sum 1500:\n%s", body)
	}
}
