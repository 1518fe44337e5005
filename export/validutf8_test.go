package export

import (
	"context"
	"io"
	"net/http/httptest"
	"strings"
	"testing"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"

	"github.com/grain-ebpf/grain/engine"
	"github.com/grain-ebpf/grain/engine/hook"
	"github.com/grain-ebpf/grain/internal/otlptest"
	"github.com/grain-ebpf/grain/pipeline"
)

// badUTF8Config reports a program named "\xff" (a comm any user can
// choose) and an interface named "v\xff": values that are not UTF-8.
func badUTF8Config() MetricsConfig {
	return MetricsConfig{
		Counters: func() ([]engine.RuleCounter, error) {
			return []engine.RuleCounter{{Policy: "block_http", Verdict: "drop", Packets: 7}}, nil
		},
		Interfaces: func() ([]engine.InterfaceCounter, error) {
			return []engine.InterfaceCounter{{Interface: "v\xff", Verdict: "drop", Packets: 5}}, nil
		},
		Hooks: HookMetricsConfig{
			Counts: func() ([]hook.CountSample, error) {
				return []hook.CountSample{{Metric: "process.execs", Policy: "execs",
					Labels: []hook.Label{{Name: "comm", Value: "\xff"}, {Name: "uid", Value: "65534"}}, Calls: 1, Value: 1}}, nil
			},
			MetricNames: func() []string { return []string{"process.execs"} },
		},
	}
}

// One label value that is not UTF-8 used to fail the whole scrape with
// HTTP 500: it is served as \xNN beside every other metric.
func TestPrometheusInvalidUTF8(t *testing.T) {
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=a%FFb")
	m, handler, err := NewPrometheus(context.Background(), badUTF8Config())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Shutdown(context.Background())
	srv := httptest.NewServer(handler)
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	body := string(b)
	if resp.StatusCode != 200 {
		t.Fatalf("scrape: %s\n%s", resp.Status, body)
	}
	// The exposition format writes a backslash as \\.
	for _, want := range []string{
		`grain_process_execs_total{grain_policy="execs",otel_scope_name="github.com/grain-ebpf/grain/export",otel_scope_schema_url="",otel_scope_version="",process_executable_name="\\xff",process_real_user_id="65534"} 1`,
		`grain_interface_packets_total{grain_verdict="drop",network_interface_name="v\\xff"`,
		`grain_rule_packets_total{grain_policy="block_http",grain_verdict="drop"`,
		`deployment_environment_name="a\\xffb"`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %s:\n%s", want, body)
		}
	}
}

// Protobuf strings must be UTF-8: the OTLP exporters used to fail every
// export ("string field contains invalid UTF-8").
func TestOTLPMetricsInvalidUTF8(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			cleanEnv(t)
			t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", tr.env)
			t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=a%FFb")
			errs := captureErrors(t)
			recv, endpoint := tr.start(t)
			cfg := badUTF8Config()
			cfg.Config = Config{Protocol: tr.protocol, Endpoint: endpoint}
			m, err := NewMetrics(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			if err := m.ForceFlush(context.Background()); err != nil {
				t.Fatalf("export: %v (errors reported: %s)", err, errs())
			}
			m.Shutdown(context.Background())
			rms, _ := recv.Snapshot()
			got := latestPoints(rms)
			for _, want := range []string{
				`grain.process.execs{grain.policy=execs,process.executable.name=\xff,process.real_user.id=65534}`,
				`grain.interface.packets{grain.verdict=drop,network.interface.name=v\xff}`,
				`grain.rule.packets{grain.policy=block_http,grain.verdict=drop}`,
			} {
				if _, ok := got[want]; !ok {
					t.Errorf("no point %s; received %v", want, got)
				}
			}
			if len(rms) == 0 || !strings.Contains(attrString(rms[0].GetResource().GetAttributes()), `deployment.environment.name=a\xffb`) {
				t.Errorf("resource of %d exports lacks the mapped deployment.environment.name", len(rms))
			}
		})
	}
}

// Log records: every string (policy, event name, field values) reaches the
// collector, mapped; the collector used to refuse the whole batch.
func TestLogSinkInvalidUTF8(t *testing.T) {
	cleanEnv(t)
	recv, url := otlptest.StartHTTP(t)
	s, err := NewLogSink(context.Background(), LogSinkConfig{Config: Config{Endpoint: url}, Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	ev := &pipeline.Event{Policy: "execs", Name: "exec"}
	ev.AppendString("comm", "\xff")
	ev.AppendString("filename", `/tmp/\x41/`+"\xfe")
	s.Emit(ev)
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Exported != 1 || st.Failed != 0 {
		t.Fatalf("stats %+v, want the record exported", st)
	}
	_, logs := recv.Snapshot()
	attrs := map[string]string{}
	for _, rl := range logs {
		for _, sl := range rl.GetScopeLogs() {
			for _, lr := range sl.GetLogRecords() {
				for _, kv := range lr.GetAttributes() {
					if v, ok := kv.GetValue().GetValue().(*commonpb.AnyValue_StringValue); ok {
						attrs[kv.GetKey()] = v.StringValue
					}
				}
			}
		}
	}
	if attrs["process.executable.name"] != `\xff` || attrs["grain.filename"] != `/tmp/\\x41/\xfe` {
		t.Errorf("attributes %q, want comm \\xff and the file name mapped", attrs)
	}
}
