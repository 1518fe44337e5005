package export

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	commonpb "go.opentelemetry.io/proto/otlp/common/v1"

	"github.com/grain-ebpf/grain/internal/otlptest"
	"github.com/grain-ebpf/grain/pipeline"
)

func testEvent(i int) *pipeline.Event {
	ev := &pipeline.Event{Time: time.Unix(1700000000, int64(i)), Policy: "block_http", Name: "http_blocked"}
	ev.AppendAddr("saddr", netip.MustParseAddr("10.0.0.2"))
	ev.AppendUint("sport", uint64(40000+i))
	ev.AppendString("interface", "eth0")
	ev.AppendString("custom", "é\x00")
	return ev
}

// The records the sink encodes itself decode, with the official protobuf
// types, into what the SDK would have sent: resource, scope, timestamps,
// severity, body, event name and attributes. The standard variables choose
// the URL, compression and headers.
func TestLogSinkEncodingAndEnvironment(t *testing.T) {
	recv, url := otlptest.StartHTTP(t)
	t.Setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", url+"/v1/logs")
	t.Setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
	t.Setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=a%20b,authorization=Bearer t")
	t.Setenv("OTEL_SERVICE_NAME", "edge-7")
	s, err := NewLogSink(context.Background(), LogSinkConfig{Config: Config{ServiceVersion: "v1.2.3"}, Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		s.Emit(testEvent(i))
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Exported != 3 || st.Failed != 0 || st.QueueFull != 0 || st.Pending != 0 {
		t.Fatalf("stats %+v", st)
	}
	h := recv.LastHeaders()
	if h.Get("Content-Encoding") != "gzip" || h.Get("X-Tenant") != "a b" || h.Get("Authorization") != "Bearer t" {
		t.Errorf("headers %v", h)
	}
	_, logs := recv.Snapshot()
	if len(logs) != 1 {
		t.Fatalf("%d resource logs", len(logs))
	}
	res := map[string]string{}
	for _, kv := range logs[0].GetResource().GetAttributes() {
		res[kv.GetKey()] = kv.GetValue().GetStringValue()
	}
	if res["service.name"] != "edge-7" || res["service.version"] != "v1.2.3" || res["host.name"] == "" || res["os.type"] != "linux" {
		t.Errorf("resource %v", res)
	}
	sl := logs[0].GetScopeLogs()
	if len(sl) != 1 || sl[0].GetScope().GetName() != instrumentationScope || len(sl[0].GetLogRecords()) != 3 {
		t.Fatalf("scope logs %v", sl)
	}
	for i, lr := range sl[0].GetLogRecords() {
		if lr.GetTimeUnixNano() != uint64(1700000000e9+i) || lr.GetObservedTimeUnixNano() == 0 ||
			lr.GetSeverityNumber() != 9 || lr.GetSeverityText() != "INFO" ||
			lr.GetBody().GetStringValue() != "http_blocked" || lr.GetEventName() != "http_blocked" {
			t.Errorf("record %d: %v", i, lr)
		}
		attrs := map[string]any{}
		for _, kv := range lr.GetAttributes() {
			if v, ok := kv.GetValue().GetValue().(*commonpb.AnyValue_IntValue); ok {
				attrs[kv.GetKey()] = v.IntValue
			} else {
				attrs[kv.GetKey()] = kv.GetValue().GetStringValue()
			}
		}
		want := map[string]any{"grain.policy": "block_http", "source.address": "10.0.0.2", "source.port": int64(40000 + i),
			"network.interface.name": "eth0", "grain.custom": "é\x00"}
		for k, v := range want {
			if attrs[k] != v {
				t.Errorf("record %d: %s = %#v, want %#v (%v)", i, k, attrs[k], v, attrs)
			}
		}
	}
}

// With no collector, the sink keeps at most its queue, counts the rest as
// queue full, gives up a batch after RetryFor, and accounts for every
// event by Shutdown.
func TestLogSinkCollectorDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nobody listens there now
	s, err := NewLogSink(context.Background(), LogSinkConfig{Config: Config{Protocol: ProtocolHTTPProtobuf, Endpoint: "http://" + addr},
		QueueSize: 10, BatchSize: 5, ExportInterval: 10 * time.Millisecond, RetryFor: 300 * time.Millisecond, Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		s.Emit(testEvent(i))
	}
	// Pending counts the queue and the batch being exported: the worker
	// may have taken one batch of 5 off the queue while events came in.
	st := s.Stats()
	if st.QueueFull < 15 || st.QueueFull+st.Pending != 30 || st.Pending > 15 {
		t.Errorf("after 30 events into a 10-event queue: %+v", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err = s.Shutdown(ctx)
	st = s.Stats()
	if st.Exported != 0 || st.QueueFull+st.Failed != 30 || st.Pending != 0 {
		t.Errorf("after shutdown: %+v (%v)", st, err)
	}
}

func TestCountLogRecordsOnWire(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	recv := &otlptest.Receiver{CountOnWire: true}
	url, stop := recv.ServeHTTP(t, ln)
	defer stop()
	s, err := NewLogSink(context.Background(), LogSinkConfig{Config: Config{Protocol: ProtocolHTTPProtobuf, Endpoint: url}, BatchSize: 7})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		s.Emit(testEvent(i))
	}
	s.Shutdown(context.Background())
	if got := recv.LogRecords(); got != 50 || s.Stats().Exported != 50 {
		t.Errorf("counted %d records on the wire, exported %d; want 50", got, s.Stats().Exported)
	}
	if _, logs := recv.Snapshot(); len(logs) != 0 {
		t.Error("counting on the wire kept the records")
	}
}

func TestUnsupportedProtocol(t *testing.T) {
	_, err := NewLogSink(context.Background(), LogSinkConfig{Config: Config{Protocol: "http/json"}})
	if err == nil || !strings.Contains(err.Error(), "unsupported OTLP protocol") {
		t.Errorf("got %v", err)
	}
}

// BenchmarkLogSink: events through Emit to a receiver on loopback that
// counts the records on the wire (so that the CPU is mostly the sink's),
// per event, until every event is exported.
func BenchmarkLogSink(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	recv := &otlptest.Receiver{CountOnWire: true}
	url, stop := recv.ServeHTTP(b, ln)
	defer stop()
	s, err := NewLogSink(context.Background(), LogSinkConfig{Config: Config{Protocol: ProtocolHTTPProtobuf, Endpoint: url},
		QueueSize: 1 << 20, ExportInterval: time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	evs := benchEvents(1)
	b.ResetTimer()
	for b.Loop() {
		s.Emit(&evs[0])
	}
	for s.Stats().Pending > 0 {
		time.Sleep(100 * time.Microsecond)
	}
	b.StopTimer()
	s.Shutdown(context.Background())
	if st := s.Stats(); st.Exported != uint64(b.N) {
		b.Fatalf("%d events, %+v", b.N, st)
	}
}
