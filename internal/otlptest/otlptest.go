// Package otlptest is a minimal OTLP collector for tests: it serves the
// OTLP gRPC services and OTLP/HTTP with protobuf bodies on loopback and
// keeps every request it is sent.
package otlptest

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	colmetricspb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Receiver keeps every request it is sent, over gRPC or HTTP, so tests can
// assert on what left the process.
type Receiver struct {
	// DiscardLogs counts log records without keeping them (benchmarks).
	DiscardLogs bool
	// CountOnWire, for OTLP/HTTP, counts the log records by walking the
	// protobuf wire format (request, resource logs, scope logs, records)
	// instead of decoding every attribute: what a benchmark needs from a
	// collector that runs on the same CPUs. Implies DiscardLogs.
	CountOnWire bool

	mu         sync.Mutex
	metrics    []*metricspb.ResourceMetrics
	logs       []*logspb.ResourceLogs
	logRecords int
	headers    http.Header // of the last OTLP/HTTP request
}

// LastHeaders returns the headers of the last OTLP/HTTP request.
func (r *Receiver) LastHeaders() http.Header {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.headers.Clone()
}

// LogRecords is the number of log records received so far.
func (r *Receiver) LogRecords() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.logRecords
}

func (r *Receiver) addMetrics(req *colmetricspb.ExportMetricsServiceRequest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.metrics = append(r.metrics, req.GetResourceMetrics()...)
}

func (r *Receiver) addLogs(req *collogspb.ExportLogsServiceRequest) {
	n := 0
	for _, rl := range req.GetResourceLogs() {
		for _, sl := range rl.GetScopeLogs() {
			n += len(sl.GetLogRecords())
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logRecords += n
	if !r.DiscardLogs {
		r.logs = append(r.logs, req.GetResourceLogs()...)
	}
}

// Snapshot returns what arrived so far.
func (r *Receiver) Snapshot() ([]*metricspb.ResourceMetrics, []*logspb.ResourceLogs) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*metricspb.ResourceMetrics(nil), r.metrics...), append([]*logspb.ResourceLogs(nil), r.logs...)
}

type metricsService struct {
	colmetricspb.UnimplementedMetricsServiceServer
	r *Receiver
}

func (s metricsService) Export(_ context.Context, req *colmetricspb.ExportMetricsServiceRequest) (*colmetricspb.ExportMetricsServiceResponse, error) {
	s.r.addMetrics(req)
	return &colmetricspb.ExportMetricsServiceResponse{}, nil
}

type logsService struct {
	collogspb.UnimplementedLogsServiceServer
	r *Receiver
}

func (s logsService) Export(_ context.Context, req *collogspb.ExportLogsServiceRequest) (*collogspb.ExportLogsServiceResponse, error) {
	s.r.addLogs(req)
	return &collogspb.ExportLogsServiceResponse{}, nil
}

// StartGRPC serves the OTLP gRPC services on loopback and returns the
// receiver and its endpoint URL.
func StartGRPC(t testing.TB) (*Receiver, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &Receiver{}
	url, stop := r.ServeGRPC(lis)
	t.Cleanup(stop)
	return r, url
}

// ServeGRPC serves the OTLP gRPC services on ln until stop is called,
// which closes ln and every connection. The receiver keeps what it got,
// so a test can stop it and serve it again on the same address: a
// collector outage.
func (r *Receiver) ServeGRPC(ln net.Listener) (url string, stop func()) {
	srv := grpc.NewServer()
	colmetricspb.RegisterMetricsServiceServer(srv, metricsService{r: r})
	collogspb.RegisterLogsServiceServer(srv, logsService{r: r})
	go srv.Serve(ln)
	return "http://" + ln.Addr().String(), srv.Stop
}

// StartHTTP serves OTLP/HTTP with protobuf bodies and returns the receiver
// and its base URL.
func StartHTTP(t testing.TB) (*Receiver, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return StartHTTPOn(t, ln)
}

// StartHTTPOn is StartHTTP on a listener of the caller's, for example one
// opened inside a network namespace.
func StartHTTPOn(t testing.TB, ln net.Listener) (*Receiver, string) {
	t.Helper()
	r := &Receiver{}
	url, stop := r.ServeHTTP(t, ln)
	t.Cleanup(stop)
	return r, url
}

// ServeHTTP serves OTLP/HTTP on ln until stop is called, which closes ln
// and every connection; see ServeGRPC.
func (r *Receiver) ServeHTTP(t testing.TB, ln net.Listener) (url string, stop func()) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/metrics", func(w http.ResponseWriter, req *http.Request) {
		in := &colmetricspb.ExportMetricsServiceRequest{}
		if !decodeOTLP(t, w, req, in) {
			return
		}
		r.addMetrics(in)
		writeOTLP(t, w, &colmetricspb.ExportMetricsServiceResponse{})
	})
	mux.HandleFunc("POST /v1/logs", func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.headers = req.Header.Clone()
		r.mu.Unlock()
		if r.CountOnWire && req.Header.Get("Content-Encoding") == "" {
			b, err := io.ReadAll(req.Body)
			n, cerr := countLogRecords(b)
			if err != nil || cerr != nil {
				http.Error(w, fmt.Sprint(err, cerr), http.StatusBadRequest)
				return
			}
			r.mu.Lock()
			r.logRecords += n
			r.mu.Unlock()
			writeOTLP(t, w, &collogspb.ExportLogsServiceResponse{})
			return
		}
		in := &collogspb.ExportLogsServiceRequest{}
		if !decodeOTLP(t, w, req, in) {
			return
		}
		r.addLogs(in)
		writeOTLP(t, w, &collogspb.ExportLogsServiceResponse{})
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	return srv.URL, srv.Close
}

func decodeOTLP(t testing.TB, w http.ResponseWriter, req *http.Request, msg proto.Message) bool {
	if ct := req.Header.Get("Content-Type"); ct != "application/x-protobuf" {
		t.Errorf("OTLP/HTTP request Content-Type = %q, want application/x-protobuf", ct)
		http.Error(w, "bad content type", http.StatusUnsupportedMediaType)
		return false
	}
	var body io.Reader = req.Body
	if req.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(req.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return false
		}
		body = zr
	}
	b, err := io.ReadAll(body)
	if err == nil {
		err = proto.Unmarshal(b, msg)
	}
	if err != nil {
		t.Errorf("decode OTLP/HTTP request: %v", err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}

func writeOTLP(t testing.TB, w http.ResponseWriter, msg proto.Message) {
	b, err := proto.Marshal(msg)
	if err != nil {
		t.Errorf("encode OTLP/HTTP response: %v", err)
		return
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
	io.Copy(w, bytes.NewReader(b))
}

// countLogRecords counts ExportLogsServiceRequest.resource_logs[].
// scope_logs[].log_records[] in an encoded request, checking the framing
// of every level.
func countLogRecords(b []byte) (int, error) {
	n := 0
	err := eachField(b, 1, func(rl []byte) error { // resource_logs
		return eachField(rl, 2, func(sl []byte) error { // scope_logs
			return eachField(sl, 2, func([]byte) error { n++; return nil }) // log_records
		})
	})
	return n, err
}

// eachField calls fn with the value of every length-delimited field num of
// message b, and checks that the other fields are well formed.
func eachField(b []byte, num protowire.Number, fn func([]byte) error) error {
	for len(b) > 0 {
		f, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if f == num && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return protowire.ParseError(m)
			}
			if err := fn(v); err != nil {
				return err
			}
			b = b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(f, typ, b)
		if m < 0 {
			return protowire.ParseError(m)
		}
		b = b[m:]
	}
	return nil
}
