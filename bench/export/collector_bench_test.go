package export

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/grain-ebpf/grain/export"
)

// collectorBinary is a real OpenTelemetry Collector (scripts/otelcol-binary.sh
// builds one into /var/cache/grain-otelcol/VERSION/otelcol).
var collectorBinary = flag.String("collector", "", "an OpenTelemetry Collector binary for BenchmarkKernelToCollector (scripts/otelcol-binary.sh prints one)")

// collectorGOGC is the collector's GOGC: its garbage collector is a large
// part of its cost per record, and a collector that decodes hundreds of
// thousands of records a second is one its operator tunes.
var collectorGOGC = flag.String("collector-gogc", "", "GOGC for the collector's process (empty: Go's default, 100)")

// BenchmarkKernelToCollector: log records kernel → pipeline → OTLP (gRPC or
// HTTP, -protocol) → a real OpenTelemetry Collector in its own process,
// whose OTLP receiver decodes every record and hands it to its debug
// exporter (which logs nothing at the collector's warn level). What arrived
// is the collector's own count (otelcol_receiver_accepted_log_records);
// its CPU time is reported apart (collector-cpu-ns/event).
//
//	go test -run '^$' -bench KernelToCollector -rates 500000 -protocol grpc -collector "$(scripts/otelcol-binary.sh)" ./bench/export/
func BenchmarkKernelToCollector(b *testing.B) {
	if *collectorBinary == "" {
		b.Skip("no -collector: give a collector binary (scripts/otelcol-binary.sh builds one)")
	}
	for _, rate := range parseRates(b) {
		b.Run(fmt.Sprint(rate), func(b *testing.B) {
			for range min(b.N, 1) { // one measurement of -duration, whatever -benchtime says
				r := toCollector(b, *collectorBinary, *protocol, rate, *duration)
				b.ReportMetric(r.delivered, "events/s")
				b.ReportMetric(float64(r.unaccounted()), "unaccounted")
				b.ReportMetric(float64(r.generated-r.arrived), "lost")
				b.ReportMetric(float64(r.peerCPU.Nanoseconds())/float64(max(r.arrived, 1)), "collector-cpu-ns/event")
				b.ReportMetric(r.cpus(r.peerCPU), "collector-CPUs")
				b.ReportMetric(r.cpus(r.procCPU-r.genCPU), "grain-CPUs")
				b.ReportMetric(r.cpus(r.genCPU), "generator-CPUs")
				b.ReportMetric(r.cpus(r.machineCPU-r.procCPU-r.peerCPU), "others-CPUs")
			}
		})
	}
}

// TestKernelToCollectorShort runs the collector benchmark's path for a
// moment on each protocol, so that it keeps working: every event must
// arrive at the collector or be counted lost. It needs the collector that
// scripts/otelcol-binary.sh builds (and caches); it skips without one.
func TestKernelToCollectorShort(t *testing.T) {
	bin := *collectorBinary
	if bin == "" {
		found, _ := filepath.Glob("/var/cache/grain-otelcol/*/otelcol")
		if len(found) == 0 {
			t.Skip("no collector: scripts/otelcol-binary.sh builds one into /var/cache/grain-otelcol")
		}
		bin = found[len(found)-1]
	}
	for _, proto := range []string{"grpc", "http/protobuf"} {
		t.Run(strings.ReplaceAll(proto, "/", "_"), func(t *testing.T) {
			r := toCollector(t, bin, proto, 20000, 200*time.Millisecond)
			if r.arrived == 0 {
				t.Errorf("nothing arrived at the collector: %v", r)
			}
		})
	}
}

// toCollector measures one rate for d against a collector started for it,
// checks the accounting, and returns the result (the collector's CPU time
// in peerCPU).
func toCollector(tb testing.TB, bin, proto string, rate int, d time.Duration) result {
	c := startCollector(tb, bin)
	endpoint := "http://" + c.http
	if proto == "grpc" {
		endpoint = "http://" + c.grpc // plain gRPC, no TLS
	}
	sink, err := export.NewLogSink(context.Background(), sinkConfig(proto, endpoint))
	if err != nil {
		tb.Fatal(err)
	}
	accepted0, _ := c.records(tb)
	r := measureFor(tb, rate, d, sink, func() uint64 {
		// The collector counts a request once it has handed it on: wait
		// until its count stops moving.
		var last uint64
		for i := 0; i < 100; i++ {
			n, _ := c.records(tb)
			if i > 0 && n == last {
				break
			}
			last = n
			time.Sleep(100 * time.Millisecond)
		}
		return last - accepted0
	}, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		sink.Shutdown(ctx)
	}, func() time.Duration { return c.cpu(tb) })
	if _, refused := c.records(tb); refused != 0 {
		tb.Errorf("the collector refused %d records", refused)
	}
	if r.exported != r.arrived {
		tb.Errorf("sink counted %d exported, the collector accepted %d", r.exported, r.arrived)
	}
	tb.Log(r)
	tb.Log(r.CPUString())
	tb.Logf("collector: %.0f ns of CPU per event it accepted", float64(r.peerCPU.Nanoseconds())/float64(max(r.arrived, 1)))
	if r.unaccounted() != 0 {
		tb.Errorf("%d events unaccounted for: every generated event must arrive or be counted lost", r.unaccounted())
	}
	return r
}

type collector struct {
	cmd                *exec.Cmd
	grpc, http, metric string // host:port
}

// freePort returns a loopback address with a port nobody listens on now.
func freePort(b testing.TB) string {
	ln := listen(b)
	defer ln.Close()
	return ln.Addr().String()
}

// startCollector runs the collector with an OTLP receiver on gRPC and
// HTTP and its own metrics on a Prometheus endpoint, and waits (at most
// 60 s) until that endpoint answers; the collector stops with the test.
func startCollector(b testing.TB, bin string) *collector {
	c := &collector{grpc: freePort(b), http: freePort(b), metric: freePort(b)}
	host, port, _ := net.SplitHostPort(c.metric)
	config := fmt.Sprintf(`receivers:
  otlp:
    protocols:
      grpc: {endpoint: %q}
      http: {endpoint: %q}
exporters:
  debug: {verbosity: basic}
service:
  pipelines:
    logs: {receivers: [otlp], exporters: [debug]}
  telemetry:
    logs: {level: warn}
    metrics:
      level: basic
      readers:
        - pull:
            exporter:
              prometheus: {host: %q, port: %s}
`, c.grpc, c.http, host, port)
	path := filepath.Join(b.TempDir(), "collector.yaml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		b.Fatal(err)
	}
	var stderr strings.Builder
	c.cmd = exec.Command(bin, "--config", path)
	c.cmd.Stderr = &stderr
	if *collectorGOGC != "" {
		c.cmd.Env = append(os.Environ(), "GOGC="+*collectorGOGC)
	}
	if err := c.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		c.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { c.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			c.cmd.Process.Kill()
			<-done
		}
	})
	for i := 0; ; i++ {
		if resp, err := http.Get("http://" + c.metric + "/metrics"); err == nil {
			resp.Body.Close()
			break
		}
		if i == 600 {
			b.Fatalf("the collector's metrics endpoint did not answer within 60 s: %s", stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	return c
}

// records returns the log records the collector's receiver accepted and
// refused so far, over its transports.
func (c *collector) records(b testing.TB) (accepted, refused uint64) {
	resp, err := http.Get("http://" + c.metric + "/metrics")
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) < 2 || strings.HasPrefix(line, "#") {
			continue
		}
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(line, "otelcol_receiver_accepted_log_records"):
			accepted += uint64(v)
		case strings.HasPrefix(line, "otelcol_receiver_refused_log_records"):
			refused += uint64(v)
		}
	}
	return accepted, refused
}

// cpu is the collector's user+system CPU time so far.
func (c *collector) cpu(b testing.TB) time.Duration {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", c.cmd.Process.Pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields 14 and 15, counted after the ")" that ends the name.
	rest := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:]))
	utime, _ := strconv.ParseInt(rest[11], 10, 64)
	stime, _ := strconv.ParseInt(rest[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond // USER_HZ 100
}
