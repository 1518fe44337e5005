package export

import (
	"github.com/grain-ebpf/grain/internal/otlptest"

	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
)

func receivedRecords(rls []*logspb.ResourceLogs) []*logspb.LogRecord {
	var out []*logspb.LogRecord
	for _, rl := range rls {
		for _, sl := range rl.GetScopeLogs() {
			out = append(out, sl.GetLogRecords()...)
		}
	}
	return out
}

func recordAttrs(r *logspb.LogRecord) map[string]any {
	out := map[string]any{}
	for _, kv := range r.GetAttributes() {
		out[kv.GetKey()] = anyValue(kv.GetValue())
	}
	return out
}

// Lines as Engine.StreamEvents writes them.
const (
	lineBlock = `{"time":"2026-11-25T10:00:00.123456789Z","policy":"block_http","event":"http_blocked","saddr":"10.0.0.2","daddr":"10.0.0.1","sport":40000,"dport":80,"protocol":"tcp","tcp_flags":"SYN","interface":"eth0","verdict":"drop"}`
	lineSSH   = `{"time":"2026-11-25T10:00:01Z","policy":"log_ssh","event":"ssh_seen","saddr":"fd00::2","dport":22,"len":60,"interface":"eth1","verdict":"pass"}`
	lineLost  = `{"time":"2026-11-25T10:00:02Z","policy":"unknown-rule-9","interface":"eth0","verdict":"count"}`
)

func TestLogsExport(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			cleanEnv(t)
			t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", tr.env)
			errs := captureErrors(t)
			recv, endpoint := tr.start(t)
			ctx := context.Background()
			l, err := NewLogs(ctx, LogsConfig{
				Config:         Config{Protocol: tr.protocol, Endpoint: endpoint, ServiceVersion: "1.2.3"},
				ExportInterval: 50 * time.Millisecond,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Shutdown(ctx)

			w := l.Writer()
			// Two lines in one Write, then a line split across Writes the
			// way a bufio.Writer may cut it, then garbage that is skipped.
			split := len(lineLost) / 2
			for _, chunk := range []string{
				lineBlock + "\n" + lineSSH + "\n" + lineLost[:split],
				lineLost[split:] + "\nnot json\n",
			} {
				if n, err := w.Write([]byte(chunk)); err != nil || n != len(chunk) {
					t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(chunk))
				}
			}

			var recs []*logspb.LogRecord
			eventually(t, func() (bool, string) {
				_, rls := recv.Snapshot()
				recs = receivedRecords(rls)
				return len(recs) >= 3, fmt.Sprintf("received %d records, want 3", len(recs))
			})
			if len(recs) != 3 {
				t.Fatalf("received %d records, want 3", len(recs))
			}
			if e := errs(); !strings.Contains(e, `"not json"`) {
				t.Errorf("bad line not reported to the error handler; got %q", e)
			}

			r := recs[0]
			if b := r.GetBody().GetStringValue(); b != "http_blocked" {
				t.Errorf("body = %q, want http_blocked", b)
			}
			if r.GetEventName() != "http_blocked" {
				t.Errorf("event name = %q", r.GetEventName())
			}
			if r.GetSeverityNumber() != logspb.SeverityNumber_SEVERITY_NUMBER_INFO || r.GetSeverityText() != "INFO" {
				t.Errorf("severity = %v %q, want INFO", r.GetSeverityNumber(), r.GetSeverityText())
			}
			wantTime := time.Date(2026, 11, 25, 10, 0, 0, 123456789, time.UTC)
			if got := time.Unix(0, int64(r.GetTimeUnixNano())).UTC(); !got.Equal(wantTime) {
				t.Errorf("timestamp = %v, want %v", got, wantTime)
			}
			if r.GetObservedTimeUnixNano() == 0 {
				t.Error("observed timestamp not set")
			}
			wantAttrs := map[string]any{
				"source.address":         "10.0.0.2",
				"destination.address":    "10.0.0.1",
				"source.port":            int64(40000),
				"destination.port":       int64(80),
				"network.transport":      "tcp",
				"network.interface.name": "eth0",
				"grain.policy":           "block_http",
				"grain.verdict":          "drop",
				"event.name":             "http_blocked",
				"grain.tcp_flags":        "SYN",
			}
			if got := recordAttrs(r); fmt.Sprint(got) != fmt.Sprint(wantAttrs) {
				t.Errorf("attributes = %v\nwant %v", got, wantAttrs)
			}

			if got := recordAttrs(recs[1]); got["grain.len"] != int64(60) || got["source.address"] != "fd00::2" || got["destination.port"] != int64(22) {
				t.Errorf("second record attributes = %v", got)
			}
			if b := recs[2].GetBody().GetStringValue(); b != "unknown" {
				t.Errorf("body of an event without name = %q, want unknown", b)
			}
			if got := recordAttrs(recs[2]); got["grain.policy"] != "unknown-rule-9" {
				t.Errorf("third record attributes = %v", got)
			}

			_, rls := recv.Snapshot()
			if res := attrString(rls[0].GetResource().GetAttributes()); !strings.Contains(res, "service.name=grain") || !strings.Contains(res, "service.version=1.2.3") {
				t.Errorf("resource = %s", res)
			}
		})
	}
}

// A Writer given one event per Write without a newline still emits it at
// once, and Shutdown flushes what is queued.
func TestLogsWholeObjectWithoutNewlineAndShutdownFlush(t *testing.T) {
	cleanEnv(t)
	recv, endpoint := otlptest.StartHTTP(t)
	ctx := context.Background()
	l, err := NewLogs(ctx, LogsConfig{
		Config:         Config{Endpoint: endpoint},
		ExportInterval: time.Hour, // only Shutdown exports
	})
	if err != nil {
		t.Fatal(err)
	}
	w := l.Writer()
	w.Write([]byte(lineBlock))
	w.Write([]byte(lineSSH))
	if err := l.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	_, rls := recv.Snapshot()
	recs := receivedRecords(rls)
	if len(recs) != 2 {
		t.Fatalf("received %d records after Shutdown, want 2", len(recs))
	}
	if b := recs[1].GetBody().GetStringValue(); b != "ssh_seen" {
		t.Errorf("second body = %q", b)
	}
	// Writing after Shutdown is harmless.
	if _, err := w.Write([]byte(lineBlock + "\n")); err != nil {
		t.Errorf("Write after Shutdown: %v", err)
	}
}

// When the queue is full the batch processor drops records rather than
// blocking the writer.
func TestLogsNeverBlock(t *testing.T) {
	cleanEnv(t)
	// A collector that never answers: the one export in flight hangs, so
	// the queue fills up behind it.
	unblock := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-unblock:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(unblock) // before Close, which waits for the handlers
	l, err := NewLogs(context.Background(), LogsConfig{
		Config:         Config{Endpoint: srv.URL},
		ExportInterval: time.Hour,
		MaxQueueSize:   4,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		l.Shutdown(ctx)
	}()
	w := l.Writer()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 10000 {
			w.Write([]byte(lineBlock + "\n"))
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Write blocked with a full export queue")
	}
}
