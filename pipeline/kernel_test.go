package pipeline_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"go.opentelemetry.io/otel/attribute"

	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/engine"
	"github.com/grain-ebpf/grain/engine/hook"
	"github.com/grain-ebpf/grain/export"
	"github.com/grain-ebpf/grain/internal/otlptest"
	"github.com/grain-ebpf/grain/internal/pktbuild"
	"github.com/grain-ebpf/grain/internal/vmtest"
	"github.com/grain-ebpf/grain/pipeline"
	"github.com/grain-ebpf/grain/policies"
)

// tree has three emitting policies and a pipeline with every stage. Their
// events are not deduplicated (dedup "0s"): the test counts what each
// stage does to every packet's event.
const tree = `
web: {
	xdp: interfaces: ["lo"]
	match: {protocol: "tcp", dport: 80}
	then: "drop"
	emit: {event: "web", fields: ["saddr", "daddr", "sport", "dport", "protocol"], dedup: "0s"}
}
dns: {
	xdp: interfaces: ["lo"]
	match: {protocol: "udp", dport: 53}
	then: "pass"
	emit: {event: "dns", fields: ["saddr", "dport"], dedup: "0s"}
}
burst: {
	xdp: interfaces: ["lo"]
	match: {protocol: "tcp", dport: 81}
	then: "drop"
	emit: {event: "burst", fields: ["sport"], dedup: "0s"}
}
pipeline: {
	hash_key: "k3y"
	filter: [{event: "web", field: "saddr", cidr: "10.9.0.0/16"}]
	sample: [{event: "dns", one_in: 4}]
	rate_limit: [{event: "burst", per_second: 1, burst: 3}]
	rewrite: [
		{event: "web", field: "saddr", prefix: ipv4: 24},
		{event: "web", field: "daddr", hash: true},
		{event: "web", field: "sport", redact: true},
		{event: "web", field: "dport", rename: "port"},
		{event: "web", field: "protocol", truncate: 1},
	]
	enrich: {host: true, cgroup: true}
}
`

var (
	engOnce sync.Once
	eng     *engine.Engine
	engErr  error
)

// kernel loads grain's XDP program (once) and applies src's policies, as
// if attached to lo, so that BPF_PROG_TEST_RUN produces real ring-buffer
// events.
func kernel(t *testing.T, src string) (*engine.Engine, *policies.Snapshot) {
	t.Helper()
	vmtest.RequireRoot(t)
	engOnce.Do(func() { eng, engErr = engine.New(engine.Options{}) })
	if engErr != nil {
		t.Fatal(engErr)
	}
	snap, err := policies.LoadBytes("tree.cue", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	plan, err := codegen.Compile(snap.Policies, codegen.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := eng.ApplyTables(plan, map[string]uint32{"lo": 1}); err != nil {
		t.Fatal(err)
	}
	return eng, snap
}

func run(t *testing.T, e *engine.Engine, frames ...[]byte) {
	t.Helper()
	prog, err := e.XDP().Program()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range frames {
		if _, err := prog.Run(&ebpf.RunOptions{Data: f}); err != nil {
			t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
		}
	}
}

func tcp(src string, sport, dport uint16) []byte {
	return pktbuild.TCP4(src, "10.0.0.1", sport, dport, pktbuild.ACK, nil).Bytes()
}

func udp(src string, sport, dport uint16) []byte {
	f := pktbuild.TCP4(src, "10.0.0.1", sport, dport, 0, nil)
	f.Protocol = 17
	return f.Bytes()
}

// jsonLines parses what out holds, one JSON object a line.
func jsonLines(t *testing.T, out *vmtest.LockedBuffer) []map[string]any {
	t.Helper()
	var lines []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(out.Bytes()))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("not a JSON line: %q: %v", sc.Text(), err)
		}
		lines = append(lines, m)
	}
	return lines
}

// TestStagesOnKernelEvents sends packets through grain's XDP program
// with BPF_PROG_TEST_RUN; the kernel writes one ring-buffer event per
// matching packet, the engine reads them into the pipeline, and the
// pipeline's stages act on them before the stdout and OTLP sinks (a real
// OTLP receiver, over gRPC and HTTP). Every stage's effect is checked in
// the JSON lines, the log records, the OTLP metric points and a
// Prometheus scrape.
func TestStagesOnKernelEvents(t *testing.T) {
	for _, proto := range []string{export.ProtocolGRPC, export.ProtocolHTTPProtobuf} {
		t.Run(proto, func(t *testing.T) { testStages(t, proto) })
	}
}

func testStages(t *testing.T, proto string) {
	e, snap := kernel(t, tree)
	stages, err := pipeline.Compile(snap.Pipeline)
	if err != nil {
		t.Fatal(err)
	}
	var recv *otlptest.Receiver
	var url string
	if proto == export.ProtocolGRPC {
		recv, url = otlptest.StartGRPC(t)
	} else {
		recv, url = otlptest.StartHTTP(t)
	}
	cfg := export.Config{Protocol: proto, Endpoint: url}
	logs, err := export.NewLogSink(context.Background(), export.LogSinkConfig{Config: cfg, ExportInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var out vmtest.LockedBuffer
	p := pipeline.New(pipeline.Options{Sinks: []pipeline.Sink{pipeline.NewJSONSink(&out), logs}})
	p.Set(stages)
	runCtx, stopRun := context.WithCancel(context.Background())
	go p.Run(runCtx)
	readCtx, stopRead := context.WithCancel(context.Background())
	readErr := make(chan error, 1)
	go func() { readErr <- e.ReadEvents(readCtx, p.Producer()) }()
	time.Sleep(50 * time.Millisecond) // the reader has opened the ring

	start := time.Now()
	var frames [][]byte
	for i := range 3 { // filtered: source in 10.9.0.0/16
		frames = append(frames, tcp("10.9.1."+strconv.Itoa(i+1), 1000, 80))
	}
	frames = append(frames, tcp("10.1.2.3", 40000, 80), tcp("10.1.2.4", 40001, 80)) // rewritten
	for i := range 8 {                                                              // one in four kept
		frames = append(frames, udp("10.2.0.1", uint16(2000+i), 53))
	}
	for i := range 10 { // burst of 3 let through
		frames = append(frames, tcp("10.3.0.1", uint16(3000+i), 81))
	}
	run(t, e, frames...)
	elapsed := time.Since(start)

	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && p.Stats().Received < uint64(len(frames)) {
		time.Sleep(10 * time.Millisecond)
	}
	stopRead()
	if err := <-readErr; err != nil {
		t.Fatal(err)
	}
	stopRun()
	<-p.Done()
	flush, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := logs.Shutdown(flush); err != nil {
		t.Fatal(err)
	}

	// Counts, per event name.
	st := p.Stats()
	if st.Received != uint64(len(frames)) || st.QueueFull != 0 {
		t.Fatalf("received %d events (queue full %d), want %d", st.Received, st.QueueFull, len(frames))
	}
	byName := map[string]pipeline.NamedCounts{}
	for _, c := range st.Events {
		byName[c.Event] = c
	}
	// At most one more token per whole second the packets took.
	burstPassed := byName["burst"].Passed
	if burstPassed < 3 || burstPassed > 3+uint64(elapsed/time.Second) {
		t.Errorf("rate limit let %d of 10 burst events through, want 3 (+1 per second elapsed: %v)", burstPassed, elapsed)
	}
	want := map[string]pipeline.NamedCounts{
		"web":   {Event: "web", Filtered: 3, Passed: 2},
		"dns":   {Event: "dns", Sampled: 6, Passed: 2},
		"burst": {Event: "burst", RateLimited: 10 - burstPassed, Passed: burstPassed},
	}
	for name, w := range want {
		if byName[name] != w {
			t.Errorf("counts of %s = %+v, want %+v", name, byName[name], w)
		}
	}
	passed := 2 + 2 + int(burstPassed)
	for _, s := range st.Sinks {
		if s.Exported != uint64(passed) || s.QueueFull != 0 || s.Failed != 0 || s.Pending != 0 {
			t.Errorf("sink %s: %+v, want %d exported and nothing lost", s.Sink, s.SinkStats, passed)
		}
	}

	// The JSON lines: what passed, rewritten and enriched.
	host, _ := os.Hostname()
	mac := hmac.New(sha256.New, []byte("k3y"))
	mac.Write([]byte("10.0.0.1"))
	daddrHash := hex.EncodeToString(mac.Sum(nil)[:8])
	lines := jsonLines(t, &out)
	if len(lines) != passed {
		t.Fatalf("%d JSON lines, want %d: %v", len(lines), passed, lines)
	}
	var web []map[string]any
	for _, l := range lines {
		if l["host"] != host {
			t.Errorf("host = %v, want %q: %v", l["host"], host, l)
		}
		if _, ok := l["cgroup_path"]; ok {
			t.Errorf("XDP events carry no pid, yet a cgroup was added: %v", l)
		}
		if l["event"] == "web" {
			web = append(web, l)
		}
	}
	if len(web) != 2 {
		t.Fatalf("web events: %v", web)
	}
	for i, l := range web {
		wantWeb := map[string]any{"saddr": "10.1.2.0", "daddr": daddrHash, "sport": pipeline.Redacted, "port": 80.0,
			"protocol": "t", "policy": "web", "verdict": "drop", "interface": "lo"}
		for k, v := range wantWeb {
			if l[k] != v {
				t.Errorf("web event %d: %s = %v, want %v (%v)", i, k, l[k], v, l)
			}
		}
		if _, ok := l["dport"]; ok {
			t.Errorf("web event %d: dport was renamed, yet is there: %v", i, l)
		}
	}

	// The log records carry the same, with OpenTelemetry names.
	_, rls := recv.Snapshot()
	var records []map[string]any
	for _, rl := range rls {
		for _, sl := range rl.GetScopeLogs() {
			for _, lr := range sl.GetLogRecords() {
				m := map[string]any{"body": lr.GetBody().GetStringValue(), "event_name": lr.GetEventName()}
				for _, kv := range lr.GetAttributes() {
					if s := kv.GetValue().GetStringValue(); s != "" {
						m[kv.GetKey()] = s
					} else {
						m[kv.GetKey()] = kv.GetValue().GetIntValue()
					}
				}
				records = append(records, m)
			}
		}
	}
	if len(records) != passed {
		t.Fatalf("%d log records at the receiver, want %d", len(records), passed)
	}
	nWeb := 0
	for _, r := range records {
		if r["host.name"] != host {
			t.Errorf("record host.name = %v, want %q", r["host.name"], host)
		}
		if r["event_name"] != "web" {
			continue
		}
		nWeb++
		wantRec := map[string]any{"body": "web", "source.address": "10.1.2.0", "destination.address": daddrHash,
			"source.port": pipeline.Redacted, "grain.port": int64(80), "network.transport": "t", "grain.policy": "web",
			"network.interface.name": "lo", "grain.verdict": "drop"}
		for k, v := range wantRec {
			if r[k] != v {
				t.Errorf("web record: %s = %v, want %v (%v)", k, r[k], v, r)
			}
		}
	}
	if nWeb != 2 {
		t.Errorf("%d web records, want 2", nWeb)
	}

	// The counts as metric points, over OTLP and in a Prometheus scrape.
	mcfg := export.MetricsConfig{Config: cfg, Pipeline: p.Stats}
	metrics, err := export.NewMetrics(context.Background(), mcfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := metrics.Shutdown(flush); err != nil {
		t.Fatal(err)
	}
	prom, handler, err := export.NewPrometheus(context.Background(), mcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer prom.Shutdown(context.Background())
	srv := httptest.NewServer(handler)
	defer srv.Close()
	scrape := scrapeProm(t, srv.Listener.Addr().String())

	type point struct {
		metric string
		attrs  string
		value  int64
	}
	wantPoints := []point{
		{"grain.events.received", "", int64(len(frames))},
		{"grain.events.discarded", "grain.discard.reason=filtered,grain.event=web", 3},
		{"grain.events.discarded", "grain.discard.reason=sampled,grain.event=dns", 6},
		{"grain.events.discarded", "grain.discard.reason=rate_limited,grain.event=burst", int64(10 - burstPassed)},
		{"grain.events.discarded", "grain.discard.reason=filtered,grain.event=dns", 0},
		{"grain.events.lost", "grain.event=web,grain.loss.reason=queue_full", 0},
		{"grain.events.exported", "grain.sink=stdout", int64(passed)},
		{"grain.events.exported", "grain.sink=otlp", int64(passed)},
		{"grain.events.lost", "grain.loss.reason=export_failed,grain.sink=otlp", 0},
		{"grain.events.lost", "grain.loss.reason=export_queue_full,grain.sink=otlp", 0},
	}
	got := otlpPoints(recv)
	for _, w := range wantPoints {
		key := w.metric + "{" + w.attrs + "}"
		if v, ok := got[key]; !ok || v != w.value {
			t.Errorf("OTLP %s = %d (present %v), want %d", key, v, ok, w.value)
		}
		if v, ok := scrape[promKey(w.metric, w.attrs)]; !ok || v != w.value {
			t.Errorf("Prometheus %s = %d (present %v), want %d", promKey(w.metric, w.attrs), v, ok, w.value)
		}
	}
}

// otlpPoints flattens the last value of every sum point as
// name{k=v,...} with attributes sorted.
func otlpPoints(r *otlptest.Receiver) map[string]int64 {
	out := map[string]int64{}
	metrics, _ := r.Snapshot()
	for _, rm := range metrics {
		for _, sm := range rm.GetScopeMetrics() {
			for _, m := range sm.GetMetrics() {
				for _, dp := range m.GetSum().GetDataPoints() {
					var kvs []attribute.KeyValue
					for _, kv := range dp.GetAttributes() {
						kvs = append(kvs, attribute.String(kv.GetKey(), kv.GetValue().GetStringValue()))
					}
					set := attribute.NewSet(kvs...)
					var parts []string
					for _, kv := range set.ToSlice() {
						parts = append(parts, string(kv.Key)+"="+kv.Value.AsString())
					}
					out[m.GetName()+"{"+strings.Join(parts, ",")+"}"] = dp.GetAsInt()
				}
			}
		}
	}
	return out
}

// promKey is the series a Prometheus scrape shows for an OTLP point.
func promKey(metric, attrs string) string {
	name := strings.ReplaceAll(metric, ".", "_") + "_total"
	var labels []string
	if attrs != "" {
		for _, kv := range strings.Split(attrs, ",") {
			k, v, _ := strings.Cut(kv, "=")
			labels = append(labels, strings.ReplaceAll(k, ".", "_")+`="`+v+`"`)
		}
	}
	return name + "{" + strings.Join(labels, ",") + "}"
}

// scrapeProm reads a /metrics page into series (without otel_scope_*
// labels) and values.
func scrapeProm(t *testing.T, addr string) map[string]int64 {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("GET /metrics HTTP/1.0\r\n\r\n"))
	var buf bytes.Buffer
	buf.ReadFrom(conn)
	out := map[string]int64{}
	for _, l := range strings.Split(buf.String(), "\n") {
		if !strings.HasPrefix(l, "grain_events_") {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			continue
		}
		series := l[:i]
		name, rest, _ := strings.Cut(series, "{")
		var labels []string
		for _, kv := range strings.Split(strings.TrimSuffix(rest, "}"), ",") {
			if kv != "" && !strings.HasPrefix(kv, "otel_scope_") {
				labels = append(labels, kv)
			}
		}
		out[name+"{"+strings.Join(labels, ",")+"}"] = int64(v)
	}
	return out
}

// TestCgroupEnrichmentOnKernelEvents: a process in a cgroup named as
// Docker names a container's closes a file descriptor; grain's syscall
// hook reports it with its pid, and the pipeline's enrichment adds the
// cgroup path and the container id read from /proc.
func TestCgroupEnrichmentOnKernelEvents(t *testing.T) {
	vmtest.RequireRoot(t)
	root := hook.Cgroup2Mount()
	id := strings.Repeat("c0ffee", 10) + "abcd"
	dir := root + "/grain-test-docker-" + id + ".scope"
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(dir)
	probes, err := hook.New(hook.Options{})
	if err != nil {
		t.Skipf("kernel hooks unavailable: %v", err)
	}
	defer probes.Close()
	snap, err := policies.LoadBytes("tree.cue", []byte(`
closes: {
	syscall: "close"
	args: [{index: 0, type: "int", name: "fd"}]
	match: args: fd: 987657
	emit: {event: "close", fields: ["tgid", "fd", "comm"]}
}
pipeline: enrich: {cgroup: true, host: true}
`))
	if err != nil {
		t.Fatal(err)
	}
	plan, err := codegen.Compile(snap.Policies, codegen.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := probes.Apply(plan); err != nil {
		t.Fatal(err)
	}
	stages, err := pipeline.Compile(snap.Pipeline)
	if err != nil {
		t.Fatal(err)
	}
	var out vmtest.LockedBuffer
	p := pipeline.New(pipeline.Options{Sinks: []pipeline.Sink{pipeline.NewJSONSink(&out)}})
	p.Set(stages)
	runCtx, stopRun := context.WithCancel(context.Background())
	go p.Run(runCtx)
	readCtx, stopRead := context.WithCancel(context.Background())
	readErr := make(chan error, 1)
	go func() { readErr <- probes.ReadEvents(readCtx, p.Producer()) }()
	time.Sleep(50 * time.Millisecond)

	// The child joins the cgroup, closes the descriptor, and stays a
	// moment: enrichment reads /proc/PID/cgroup after the event.
	child := exec.Command("bash", "-c", "echo $$ > "+dir+"/cgroup.procs && exec 987657<&- ; sleep 1")
	if out, err := child.CombinedOutput(); err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && len(jsonLines(t, &out)) == 0 {
		time.Sleep(20 * time.Millisecond)
	}
	stopRead()
	<-readErr
	stopRun()
	<-p.Done()
	lines := jsonLines(t, &out)
	if len(lines) != 1 {
		t.Fatalf("%d events, want 1: %v", len(lines), lines)
	}
	host, _ := os.Hostname()
	want := map[string]any{"event": "close", "fd": 987657.0, "tgid": float64(child.Process.Pid), "host": host,
		"cgroup_path": "/grain-test-docker-" + id + ".scope", "container": id}
	for k, v := range want {
		if lines[0][k] != v {
			t.Errorf("%s = %v, want %v (%v)", k, lines[0][k], v, lines[0])
		}
	}
}
