package export

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	"google.golang.org/protobuf/proto"

	"github.com/grain-ebpf/grain/internal/otlptest"
	"github.com/grain-ebpf/grain/pipeline"
)

// benchEvents are the events of the kernel → collector benchmark
// (bench/export): block_http with saddr, daddr, sport and dport.
func benchEvents(n int) []pipeline.Event {
	evs := make([]pipeline.Event, n)
	for i := range evs {
		ev := &evs[i]
		ev.Time, ev.Policy, ev.Name = time.Unix(1700000000, int64(i)), "block_http", "http_blocked"
		ev.AppendAddr("saddr", netip.MustParseAddr("10.0.0.2"))
		ev.AppendAddr("daddr", netip.MustParseAddr("10.0.0.1"))
		ev.AppendUint("sport", 40000)
		ev.AppendUint("dport", 80)
	}
	return evs
}

// encode encodes the first events into one request body, as many as fit
// in maxRequestBytes (at least one), as the sink's batches do.
func (e *logEncoder) encode(events []pipeline.Event, observed time.Time) ([]byte, int) {
	buf := make([]byte, e.room(), e.room()+256*len(events))
	var offsets []int32
	n := 0
	for i := range events {
		at := len(buf)
		buf = e.appendRecord(buf, &events[i])
		if n > 0 && len(buf) > maxRequestBytes {
			buf = buf[:at]
			break
		}
		offsets = append(offsets, int32(observedAt(buf, at)))
		n++
	}
	setObserved(buf, offsets, observed)
	return e.frame(buf), n
}

// BenchmarkLogEncode: encoding records into a batch, as Emit does, and
// framing the request, per record.
func BenchmarkLogEncode(b *testing.B) {
	res, err := newResource(context.Background(), Config{})
	if err != nil {
		b.Fatal(err)
	}
	enc := newLogEncoder(res, "v1")
	evs := benchEvents(2048)
	now := time.Now()
	buf := make([]byte, 0, 1<<20)
	offsets := make([]int32, 0, len(evs))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		buf, offsets = buf[:enc.room()], offsets[:0]
		for i := range evs {
			at := len(buf)
			buf = enc.appendRecord(buf, &evs[i])
			offsets = append(offsets, int32(observedAt(buf, at)))
		}
		setObserved(buf, offsets, now)
		enc.frame(buf)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(evs)), "ns/record")
}

// decodeRequest decodes a request body with the official OTLP types and
// returns its records.
func decodeRequest(t *testing.T, body []byte) []*logspb.LogRecord {
	t.Helper()
	var req collogspb.ExportLogsServiceRequest
	if err := proto.Unmarshal(body, &req); err != nil {
		t.Fatalf("the encoded request does not decode: %v", err)
	}
	rl := req.GetResourceLogs()
	if len(rl) != 1 || len(rl[0].GetScopeLogs()) != 1 || rl[0].GetScopeLogs()[0].GetScope().GetName() != instrumentationScope {
		t.Fatalf("want one resource and one scope, got %v", rl)
	}
	return rl[0].GetScopeLogs()[0].GetLogRecords()
}

// Records of every size round-trip: under 128 bytes, and over 16383 bytes,
// where the record's length takes one byte or three instead of two.
func TestLogEncodeRecordSizes(t *testing.T) {
	res, err := newResource(context.Background(), Config{})
	if err != nil {
		t.Fatal(err)
	}
	enc := newLogEncoder(res, "")
	sizes := []int{0, 10, 100, 1000, 20000, 3 << 20 / 2}
	var evs []pipeline.Event
	for i, n := range sizes {
		ev := pipeline.Event{Time: time.Unix(1, int64(i)), Policy: "p", Name: "n"}
		key := "exe"
		if i%2 == 1 {
			// The cached name, and the key in the field's place, change.
			ev.Policy, ev.Name, key = "other", "again", "dns_qname"
		}
		ev.AppendString(key, strings.Repeat("x", n))
		evs = append(evs, ev)
	}
	body, n := enc.encode(evs, time.Unix(2, 0))
	if n != len(evs) {
		t.Fatalf("encoded %d of %d events", n, len(evs))
	}
	recs := decodeRequest(t, body)
	if len(recs) != len(sizes) {
		t.Fatalf("%d records, want %d", len(recs), len(sizes))
	}
	for i, r := range recs {
		wantPolicy, wantName, wantKey := "p", "n", "process.executable.path"
		if i%2 == 1 {
			wantPolicy, wantName, wantKey = "other", "again", "dns.question.name"
		}
		attrs := r.GetAttributes()
		if r.GetTimeUnixNano() != uint64(1e9+i) || r.GetObservedTimeUnixNano() != 2e9 || r.GetSeverityText() != "INFO" ||
			r.GetEventName() != wantName || r.GetBody().GetStringValue() != wantName || len(attrs) != 2 ||
			attrs[0].GetKey() != "grain.policy" || attrs[0].GetValue().GetStringValue() != wantPolicy ||
			attrs[1].GetKey() != wantKey || len(attrs[1].GetValue().GetStringValue()) != sizes[i] {
			t.Errorf("record %d (a %d-byte string) decoded as %.200v", i, sizes[i], r)
		}
	}
}

// A batch larger than a request may be (maxRequestBytes) leaves in several
// requests, each under the limit (the gRPC receiver refuses messages over
// 4 MiB), together carrying every record.
func TestLogSinkSplitsLargeBatches(t *testing.T) {
	recv, url := otlptest.StartGRPC(t)
	s, err := NewLogSink(context.Background(), LogSinkConfig{Config: Config{Protocol: ProtocolGRPC, Endpoint: url},
		BatchSize: 100, QueueSize: 100, Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i := range 100 {
		ev := pipeline.Event{Time: time.Unix(0, int64(i)), Policy: "p", Name: "n"}
		ev.AppendString("dns_qname", strings.Repeat("a", 100<<10))
		s.Emit(&ev)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	end := time.Now()
	if st := s.Stats(); st.Exported != 100 || st.Failed != 0 || st.QueueFull != 0 {
		t.Fatalf("10 MB of records in 100 events: %+v", st)
	}
	_, logs := recv.Snapshot()
	seen := map[uint64]bool{}
	for _, rl := range logs {
		for _, r := range rl.GetScopeLogs()[0].GetLogRecords() {
			seen[r.GetTimeUnixNano()] = true
			// Set as the batch left, whichever batch the record ended in.
			if o := r.GetObservedTimeUnixNano(); o < uint64(start.UnixNano()) || o > uint64(end.UnixNano()) {
				t.Errorf("record %d observed at %d, not between the first Emit (%d) and Shutdown (%d)",
					r.GetTimeUnixNano(), o, start.UnixNano(), end.UnixNano())
			}
		}
	}
	if len(logs) < 4 || len(seen) != 100 {
		t.Errorf("%d requests carried %d distinct records; want at least 4 requests and all 100", len(logs), len(seen))
	}
}
