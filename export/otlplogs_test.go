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

// BenchmarkLogEncode: encoding one batch of records into a request body,
// per record.
func BenchmarkLogEncode(b *testing.B) {
	res, err := newResource(context.Background(), Config{})
	if err != nil {
		b.Fatal(err)
	}
	enc := newLogEncoder(res, "v1")
	evs := benchEvents(2048)
	now := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, n := enc.encode(evs, now); n != len(evs) {
			b.Fatalf("encoded %d of %d events", n, len(evs))
		}
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
		if i%2 == 1 {
			ev.Policy, ev.Name = "other", "again" // the cached name changes
		}
		ev.AppendString("exe", strings.Repeat("x", n))
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
		wantPolicy, wantName := "p", "n"
		if i%2 == 1 {
			wantPolicy, wantName = "other", "again"
		}
		attrs := r.GetAttributes()
		if r.GetTimeUnixNano() != uint64(1e9+i) || r.GetObservedTimeUnixNano() != 2e9 || r.GetSeverityText() != "INFO" ||
			r.GetEventName() != wantName || r.GetBody().GetStringValue() != wantName || len(attrs) != 2 ||
			attrs[0].GetKey() != "grain.policy" || attrs[0].GetValue().GetStringValue() != wantPolicy ||
			attrs[1].GetKey() != "process.executable.path" || len(attrs[1].GetValue().GetStringValue()) != sizes[i] {
			t.Errorf("record %d (a %d-byte string) decoded as %.200v", i, sizes[i], r)
		}
	}
}

// A batch larger than a request may be (maxRequestBytes) leaves in several
// requests, each under the limit, together carrying every record in order.
func TestLogEncodeSplitsLargeBatches(t *testing.T) {
	res, err := newResource(context.Background(), Config{})
	if err != nil {
		t.Fatal(err)
	}
	enc := newLogEncoder(res, "")
	evs := make([]pipeline.Event, 100)
	for i := range evs {
		evs[i] = pipeline.Event{Time: time.Unix(0, int64(i)), Policy: "p", Name: "n"}
		evs[i].AppendString("dns_qname", strings.Repeat("a", 100<<10))
	}
	requests, next := 0, 0
	for rest := evs; len(rest) > 0; requests++ {
		body, n := enc.encode(rest, time.Now())
		if n == 0 || len(body) > maxRequestBytes {
			t.Fatalf("request %d: %d events in %d bytes (limit %d)", requests, n, len(body), maxRequestBytes)
		}
		for _, r := range decodeRequest(t, body) {
			if r.GetTimeUnixNano() != uint64(next) {
				t.Fatalf("request %d: record of event %d, want %d", requests, r.GetTimeUnixNano(), next)
			}
			next++
		}
		if next != len(evs)-len(rest)+n {
			t.Fatalf("request %d: %d records decoded for %d encoded", requests, next, n)
		}
		rest = rest[n:]
	}
	if requests < 4 || next != len(evs) {
		t.Errorf("10 MB of records in %d requests, %d records; want at least 4 requests and all 100", requests, next)
	}
}
