package main

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	metricspb "go.opentelemetry.io/proto/otlp/metrics/v1"

	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/otlptest"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// execAsNobody runs a copy of /bin/true named name as user nobody: any
// user can choose the comm the kernel reports.
func execAsNobody(t *testing.T, name string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "grain-comm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil { // MkdirTemp makes it 0700
		t.Fatal(err)
	}
	data, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, name)
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("run %q as nobody: %v: %s", bin, err, out)
	}
}

// otlpPoint reports whether the receiver got a point of metric name with
// attribute key = value.
func otlpPoint(r *otlptest.Receiver, name, key, value string) bool {
	rms, _ := r.Snapshot()
	for _, rm := range rms {
		for _, sm := range rm.GetScopeMetrics() {
			for _, m := range sm.GetMetrics() {
				if m.GetName() != name {
					continue
				}
				var points []*metricspb.NumberDataPoint
				points = append(points, m.GetSum().GetDataPoints()...)
				for _, dp := range points {
					for _, kv := range dp.GetAttributes() {
						if kv.GetKey() == key && kv.GetValue().GetStringValue() == value {
							return true
						}
					}
				}
			}
		}
	}
	return false
}

// A program named "\xff" run by an unprivileged user, and a veth whose
// name has a byte above 0x7f, are counted by labels that are not UTF-8.
// That used to make every scrape of /metrics answer 500 and every OTLP
// metric export fail: now the values are mapped (\xff) and every sink
// carries them: /metrics, OTLP metrics and log records, the JSON lines.
func TestInvalidUTF8Labels(t *testing.T) {
	vmtest.HostOnly(t, "labels are made valid in userspace")
	p := netns.NewPair(t)
	// A second veth pair, v\xff in the server namespace.
	const veth = "v\xff"
	peer := "vq" + strings.TrimPrefix(p.ServerIf, "gsrv")
	sub := p.ServerIP4.As4()[2]
	serverIP := netip.AddrFrom4([4]byte{10, 200, sub, 1})
	clientIP := netip.AddrFrom4([4]byte{10, 200, sub, 2})
	mustRun(t, "ip", "-n", p.ServerNS, "link", "add", "name", veth, "type", "veth", "peer", "name", peer, "netns", p.ClientNS)
	mustRun(t, "ip", "-n", p.ServerNS, "addr", "add", serverIP.String()+"/24", "dev", veth)
	mustRun(t, "ip", "-n", p.ServerNS, "link", "set", veth, "up")
	mustRun(t, "ip", "-n", p.ClientNS, "addr", "add", clientIP.String()+"/24", "dev", peer)
	mustRun(t, "ip", "-n", p.ClientNS, "link", "set", peer, "up")

	dir := t.TempDir()
	writePolicy(t, filepath.Join(dir, "execs.cue"), execPolicy)
	writePolicy(t, filepath.Join(dir, "udp.cue"), udpDropPolicy)
	ln, err := netns.ListenIn(p.ServerNS, "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	recv, url := otlptest.StartHTTPOn(t, ln)
	const metricsAddr = "127.0.0.1:9466"
	d := startGrainEnv(t, []string{
		"OTEL_EXPORTER_OTLP_ENDPOINT=" + url,
		"OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
		"OTEL_METRIC_EXPORT_INTERVAL=200",
		"OTEL_BLRP_SCHEDULE_DELAY=100",
	}, p.ServerNS, "run", "--policies", dir, "--interface", veth,
		"--pin-path", netns.PinDir(t), "--status-socket", filepath.Join(t.TempDir(), "grain.sock"),
		"--metrics-addr", metricsAddr)

	execAsNobody(t, "\xff")
	// Datagrams to port 9999 over v\xff: dropped, counted by interface.
	conn, err := netns.DialContextIn(p.ClientNS)(t.Context(), "udp", netip.AddrPortFrom(serverIP, 9999).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.Write([]byte("datagram"))

	d.waitEvent(t, map[string]any{"event": "exec", "comm": `\xff`})
	d.waitEvent(t, map[string]any{"event": "udp_dropped", "interface": `v\xff`})
	var body string
	if !waitFor(func() bool {
		body = scrapeBody(t, p.ServerNS, metricsAddr)
		return strings.Contains(body, `process_executable_name="\\xff"`) && strings.Contains(body, `network_interface_name="v\\xff"`)
	}) {
		t.Errorf("/metrics lacks the comm or the interface, mapped:\n%s\nstderr:\n%s", body, d.log())
	}
	status, _, _ := strings.Cut(body, "\n")
	if !strings.Contains(status, " 200 ") || !strings.Contains(body, "grain_process_execs_total{") || !strings.Contains(body, "grain_rule_packets_total{") {
		t.Errorf("/metrics: %s, want 200 with grain's metrics:\n%s", status, body)
	}
	if !waitFor(func() bool {
		return otlpPoint(recv, "grain.process.execs", "process.executable.name", `\xff`) &&
			otlpPoint(recv, "grain.interface.packets", "network.interface.name", `v\xff`)
	}) {
		t.Errorf("the OTLP receiver got no point for comm \\xff or interface v\\xff; stderr:\n%s", d.log())
	}
	if !waitFor(func() bool {
		_, logs := recv.Snapshot()
		for _, rl := range logs {
			for _, sl := range rl.GetScopeLogs() {
				for _, lr := range sl.GetLogRecords() {
					for _, kv := range lr.GetAttributes() {
						if kv.GetKey() == "process.executable.name" && kv.GetValue().GetStringValue() == `\xff` {
							return true
						}
					}
				}
			}
		}
		return false
	}) {
		t.Errorf("the OTLP receiver got no log record of the exec of \\xff; stderr:\n%s", d.log())
	}
	if strings.Contains(d.log(), "UTF-8") {
		t.Errorf("grain reported a UTF-8 error; stderr:\n%s", d.log())
	}
	d.stop(t)
}
