package export

import (
	"github.com/grain-ebpf/grain/internal/otlptest"
	"github.com/grain-ebpf/grain/internal/vmtest"

	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"

	"github.com/grain-ebpf/grain/engine"
)

// cleanEnv keeps the caller's OpenTelemetry environment out of a test.
func cleanEnv(t *testing.T) {
	for _, k := range []string{
		"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
		"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
		"OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_COMPRESSION",
		"OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_METRIC_EXPORT_INTERVAL",
	} {
		t.Setenv(k, "")
	}
}

// transports are the ways the tests reach the receiver.
var transports = []struct {
	name     string
	protocol string // Config.Protocol
	env      string // OTEL_EXPORTER_OTLP_PROTOCOL
	start    func(testing.TB) (*otlptest.Receiver, string)
}{
	{"grpc", ProtocolGRPC, "", otlptest.StartGRPC},
	{"grpc-from-env", "", "grpc", otlptest.StartGRPC},
	{"http", ProtocolHTTPProtobuf, "", otlptest.StartHTTP},
	{"http-default", "", "", otlptest.StartHTTP},
}

// captureErrors routes otel.Handle to the test until it ends and returns
// what was reported so far.
func captureErrors(t *testing.T) func() string {
	var b vmtest.LockedBuffer
	prev := otel.GetErrorHandler()
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { b.Write([]byte(err.Error() + "\n")) }))
	t.Cleanup(func() { otel.SetErrorHandler(prev) })
	return b.String
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out: %s", why)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func attrString(kvs []*commonpb.KeyValue) string {
	parts := make([]string, 0, len(kvs))
	for _, kv := range kvs {
		parts = append(parts, fmt.Sprintf("%s=%v", kv.GetKey(), anyValue(kv.GetValue())))
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

func anyValue(v *commonpb.AnyValue) any {
	switch v := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return v.StringValue
	case *commonpb.AnyValue_IntValue:
		return v.IntValue
	case *commonpb.AnyValue_BoolValue:
		return v.BoolValue
	case *commonpb.AnyValue_DoubleValue:
		return v.DoubleValue
	}
	return v
}

// point is the latest value of one metric stream as received.
type point struct {
	value     int64
	kind      string // "sum" or "gauge"
	monotonic bool
	temporal  metricspb.AggregationTemporality
	unit      string
}

// latestPoints indexes the received data points by "name{attrs}"; later
// exports overwrite earlier ones.
func latestPoints(rms []*metricspb.ResourceMetrics) map[string]point {
	out := map[string]point{}
	for _, rm := range rms {
		for _, sm := range rm.GetScopeMetrics() {
			for _, m := range sm.GetMetrics() {
				switch d := m.GetData().(type) {
				case *metricspb.Metric_Sum:
					for _, dp := range d.Sum.GetDataPoints() {
						out[m.GetName()+"{"+attrString(dp.GetAttributes())+"}"] = point{
							value: dp.GetAsInt(), kind: "sum", monotonic: d.Sum.GetIsMonotonic(),
							temporal: d.Sum.GetAggregationTemporality(), unit: m.GetUnit(),
						}
					}
				case *metricspb.Metric_Gauge:
					for _, dp := range d.Gauge.GetDataPoints() {
						out[m.GetName()+"{"+attrString(dp.GetAttributes())+"}"] = point{
							value: dp.GetAsInt(), kind: "gauge", unit: m.GetUnit(),
						}
					}
				}
			}
		}
	}
	return out
}

func TestMetricsExport(t *testing.T) {
	counters := []engine.RuleCounter{
		{Policy: "block_http", Verdict: "drop", Packets: 7, Bytes: 420, Events: 5, EventsLost: 2, EventsDeduplicated: 9, EventsRateLimited: 4},
		{Policy: "log_ssh", Verdict: "count", Packets: 3, Bytes: 180, Events: 3},
	}
	status := engine.Status{PolicyHash: "sha256:abc", ReloadsOK: 4, ReloadsError: 1, Rules: []string{"block_http", "log_ssh"},
		LastSuccess: time.Unix(1700000000, 0)}
	cum := metricspb.AggregationTemporality_AGGREGATION_TEMPORALITY_CUMULATIVE
	want := map[string]point{
		"grain.rule.packets{grain.policy=block_http,grain.verdict=drop}":                                   {7, "sum", true, cum, "{packet}"},
		"grain.rule.packets{grain.policy=log_ssh,grain.verdict=count}":                                     {3, "sum", true, cum, "{packet}"},
		"grain.rule.bytes{grain.policy=block_http,grain.verdict=drop}":                                     {420, "sum", true, cum, "By"},
		"grain.events.emitted{grain.policy=block_http,grain.verdict=drop}":                                 {5, "sum", true, cum, "{event}"},
		"grain.events.deduplicated{grain.policy=block_http,grain.verdict=drop}":                            {9, "sum", true, cum, "{event}"},
		"grain.events.rate_limited{grain.policy=block_http,grain.verdict=drop}":                            {4, "sum", true, cum, "{event}"},
		"grain.events.lost{grain.loss.reason=ring_buffer_full,grain.policy=block_http,grain.verdict=drop}": {2, "sum", true, cum, "{event}"},
		"grain.events.lost{grain.loss.reason=ring_buffer_full,grain.policy=log_ssh,grain.verdict=count}":   {0, "sum", true, cum, "{event}"},
		"grain.reloads{grain.reload.result=success}":                                                       {4, "sum", true, cum, "{reload}"},
		"grain.reloads{grain.reload.result=failure}":                                                       {1, "sum", true, cum, "{reload}"},
		"grain.policy.active_hash{grain.policy.hash=sha256:abc}":                                           {1, "gauge", false, 0, ""},
		"grain.policy.last_applied{}":                                                                      {1700000000, "gauge", false, 0, "s"},
		"grain.policy.rules{}":                                                                             {2, "gauge", false, 0, "{rule}"},
	}
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			cleanEnv(t)
			t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", tr.env)
			t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
			recv, endpoint := tr.start(t)
			ctx := context.Background()
			m, err := NewMetrics(ctx, MetricsConfig{
				Config:   Config{Protocol: tr.protocol, Endpoint: endpoint, ServiceVersion: "1.2.3"},
				Interval: 50 * time.Millisecond,
				Counters: func() ([]engine.RuleCounter, error) { return counters, nil },
				Status:   func() engine.Status { return status },
			})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Shutdown(ctx)

			eventually(t, func() (bool, string) {
				rms, _ := recv.Snapshot()
				got := latestPoints(rms)
				for k, w := range want {
					if g, ok := got[k]; !ok || g != w {
						return false, fmt.Sprintf("%s = %+v (present %v), want %+v; received %v", k, g, ok, w, got)
					}
				}
				return true, ""
			})

			rms, _ := recv.Snapshot()
			res := attrString(rms[0].GetResource().GetAttributes())
			for _, a := range []string{"service.name=grain", "service.version=1.2.3", "deployment.environment.name=test", "os.type=linux", "host.name="} {
				if !strings.Contains(res, a) {
					t.Errorf("resource %s lacks %s", res, a)
				}
			}
		})
	}
}

// The periodic reader re-reads the engine on every collection, and
// Shutdown exports one last time.
func TestMetricsFollowCountersAndFlushOnShutdown(t *testing.T) {
	cleanEnv(t)
	t.Setenv("OTEL_SERVICE_NAME", "edge-firewall")
	recv, endpoint := otlptest.StartGRPC(t)
	ctx := context.Background()
	var packets atomic.Uint64
	packets.Store(7)
	m, err := NewMetrics(ctx, MetricsConfig{
		Config: Config{Protocol: ProtocolGRPC, Endpoint: endpoint},
		// Long enough that only ForceFlush and Shutdown export.
		Interval: time.Hour,
		Counters: func() ([]engine.RuleCounter, error) {
			return []engine.RuleCounter{{Policy: "block_http", Verdict: "drop", Packets: packets.Load()}}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.ForceFlush(ctx); err != nil {
		t.Fatal(err)
	}
	packets.Store(9)
	if err := m.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	rms, _ := recv.Snapshot()
	got := latestPoints(rms)
	if p := got["grain.rule.packets{grain.policy=block_http,grain.verdict=drop}"]; p.value != 9 {
		t.Errorf("after Shutdown grain.rule.packets = %d, want 9 (points %v)", p.value, got)
	}
	if len(rms) != 2 {
		t.Errorf("received %d exports, want 2 (ForceFlush and Shutdown)", len(rms))
	}
	if _, ok := got["grain.reloads{grain.reload.result=success}"]; ok {
		t.Errorf("reload metrics exported without a Status source")
	}
	if res := attrString(rms[0].GetResource().GetAttributes()); !strings.Contains(res, "service.name=edge-firewall") {
		t.Errorf("OTEL_SERVICE_NAME not honoured: resource %s", res)
	}
}

func TestProtocolAndEndpoint(t *testing.T) {
	cleanEnv(t)
	if _, err := (Config{Protocol: "http/json"}).protocol("METRICS"); err == nil {
		t.Error("http/json accepted")
	}
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
	t.Setenv("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/protobuf")
	if p, _ := (Config{}).protocol("METRICS"); p != ProtocolGRPC {
		t.Errorf("metrics protocol = %q, want grpc", p)
	}
	if p, _ := (Config{}).protocol("LOGS"); p != ProtocolHTTPProtobuf {
		t.Errorf("logs protocol = %q, want the per-signal http/protobuf", p)
	}
	for base, want := range map[string]string{
		"http://c:4318":   "http://c:4318/v1/metrics",
		"http://c:4318/":  "http://c:4318/v1/metrics",
		"https://c/otlp":  "https://c/otlp/v1/metrics",
		"https://c/otlp/": "https://c/otlp/v1/metrics",
	} {
		if got, err := signalURL(base, "v1/metrics"); err != nil || got != want {
			t.Errorf("signalURL(%q) = %q, %v; want %q", base, got, err, want)
		}
	}
	if _, err := signalURL("c:4318", "v1/metrics"); err == nil {
		t.Error("endpoint without scheme accepted")
	}
}

// A failing counter read leaves a gap in the rule metrics but does not
// stop the reload metrics.
func TestMetricsCounterErrorKeepsStatus(t *testing.T) {
	cleanEnv(t)
	recv, endpoint := otlptest.StartHTTP(t)
	ctx := context.Background()
	m, err := NewMetrics(ctx, MetricsConfig{
		Config:   Config{Protocol: ProtocolHTTPProtobuf, Endpoint: endpoint},
		Interval: time.Hour,
		Counters: func() ([]engine.RuleCounter, error) { return nil, errors.New("map lookup failed") },
		Status:   func() engine.Status { return engine.Status{ReloadsOK: 2} },
	})
	if err != nil {
		t.Fatal(err)
	}
	errs := captureErrors(t)
	if err := m.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	rms, _ := recv.Snapshot()
	got := latestPoints(rms)
	if p, ok := got["grain.reloads{grain.reload.result=success}"]; !ok || p.value != 2 {
		t.Errorf("grain.reloads success = %+v (present %v), want 2; points %v", p, ok, got)
	}
	for k := range got {
		if strings.HasPrefix(k, "grain.rule.") {
			t.Errorf("rule metric %s exported although the counters could not be read", k)
		}
	}
	if e := errs(); !strings.Contains(e, "map lookup failed") {
		t.Errorf("counter error not reported to the OpenTelemetry error handler; got %q", e)
	}
	if _, ok := got["grain.policy.active_hash{grain.policy.hash=}"]; ok {
		t.Error("active_hash exported for an empty hash")
	}
}
