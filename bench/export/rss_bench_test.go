package export

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/otlptest"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

var rssDuration = flag.Duration("rss-duration", 10*time.Second, "how long traffic flows in BenchmarkRunRSS")

// BenchmarkRunRSS measures the resident memory of `grain run` enforcing
// 100 packet policies (each emitting an event per dropped packet) and
// exporting metrics and every event over OTLP/HTTP to a real receiver,
// while a client floods them with UDP datagrams over a veth pair.
func BenchmarkRunRSS(b *testing.B) {
	vmtest.RequireRoot(b)
	for range min(b.N, 1) { // one measurement of -duration, whatever -benchtime says
		p := netns.NewPair(b)
		dir := b.TempDir()
		var tree strings.Builder
		for i := range 100 {
			fmt.Fprintf(&tree, "p%03d: {xdp: interfaces: [], match: {protocol: \"udp\", dport: %d}, then: \"drop\", emit: {event: \"udp_%03d\", fields: [\"saddr\", \"sport\", \"dport\"], dedup: \"0s\"}}\n", i, 10000+i, i)
		}
		if err := os.WriteFile(filepath.Join(dir, "policies.cue"), []byte(tree.String()), 0o644); err != nil {
			b.Fatal(err)
		}
		ln, err := netns.ListenIn(p.ServerNS, "tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		recv := &otlptest.Receiver{DiscardLogs: true}
		url, stop := recv.ServeHTTP(b, ln)
		defer stop()

		bin := filepath.Join(b.TempDir(), "grain")
		if out, err := exec.Command("go", "build", "-o", bin, "../../cmd/grain").CombinedOutput(); err != nil {
			b.Fatalf("build: %v\n%s", err, out)
		}
		cmd := exec.Command("ip", "netns", "exec", p.ServerNS, bin, "run", "--policies", dir, "--interface", p.ServerIf,
			"--pin-path", bpffs(b), "--status-socket", filepath.Join(b.TempDir(), "grain.sock"), "--stdout=false")
		cmd.Env = append(os.Environ(), "OTEL_EXPORTER_OTLP_ENDPOINT="+url, "OTEL_METRIC_EXPORT_INTERVAL=1000")
		stderr, _ := cmd.StderrPipe()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		ready := make(chan struct{})
		go func() {
			sc := bufio.NewScanner(stderr)
			closed := false
			for sc.Scan() {
				if !closed && strings.Contains(sc.Text(), "enforcing") {
					close(ready)
					closed = true
				}
			}
		}()
		select {
		case <-ready:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			b.Fatal("grain did not start")
		}
		pid := cmd.Process.Pid // ip netns exec execs grain in place
		idle := rss(b, pid, "VmRSS")

		// Flood every policy's port from the client namespace.
		ctx, cancel := context.WithTimeout(context.Background(), *rssDuration)
		defer cancel()
		var sent atomic.Uint64
		go func() {
			var conns []net.Conn
			for i := range 100 {
				c, err := netns.DialContextIn(p.ClientNS)(ctx, "udp", netip.AddrPortFrom(p.ServerIP4, uint16(10000+i)).String())
				if err != nil {
					b.Error(err)
					return
				}
				defer c.Close()
				conns = append(conns, c)
			}
			msg := []byte("datagram")
			for ctx.Err() == nil {
				for _, c := range conns {
					c.Write(msg)
				}
				sent.Add(uint64(len(conns)))
			}
		}()
		var peak uint64
		for ctx.Err() == nil {
			time.Sleep(200 * time.Millisecond)
			peak = max(peak, rss(b, pid, "VmRSS"))
		}
		hwm := rss(b, pid, "VmHWM")
		anon, file := rss(b, pid, "RssAnon"), rss(b, pid, "RssFile")
		b.Logf("mappings over 1 MiB resident: %s", bigMappings(pid))
		time.Sleep(2 * time.Second) // the last batches reach the receiver
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		b.Logf("100 policies, OTLP/HTTP export: %d datagrams sent in %v, %d log records received; RSS idle %.1f MiB, peak sampled %.1f MiB, VmHWM %.1f MiB; at the end anonymous %.1f MiB, file %.1f MiB",
			sent.Load(), *rssDuration, recv.LogRecords(), mib(idle), mib(peak), mib(hwm), mib(anon), mib(file))
		b.ReportMetric(mib(hwm), "MiB-VmHWM")
		b.ReportMetric(float64(recv.LogRecords())/rssDuration.Seconds(), "records/s")
	}
}

func mib(kb uint64) float64 { return float64(kb) / 1024 }

// rss reads a VmRSS/VmHWM line (kB) of /proc/PID/status.
func rss(b *testing.B, pid int, field string) uint64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			n, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	b.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// bpffs mounts a private bpffs for grain's pins: `ip netns exec` mounts a
// fresh /sys, so pins under /sys/fs/bpf would vanish.
func bpffs(b *testing.B) string {
	mnt, err := os.MkdirTemp("", "grain-bpffs-")
	if err != nil {
		b.Fatal(err)
	}
	if err := syscall.Mount("bpf", mnt, "bpf", 0, "mode=0700"); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		syscall.Unmount(mnt, syscall.MNT_DETACH)
		os.Remove(mnt)
	})
	return filepath.Join(mnt, "grain")
}

// bigMappings lists the mappings of pid with more than 1 MiB resident.
func bigMappings(pid int) string {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return err.Error()
	}
	var out []string
	var name string
	for _, l := range strings.Split(string(data), "\n") {
		f := strings.Fields(l)
		if len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			name = "[anon]"
			if len(f) >= 6 {
				name = f[5]
			}
			continue
		}
		if len(f) == 3 && f[0] == "Rss:" {
			if kb, _ := strconv.Atoi(f[1]); kb > 1024 {
				out = append(out, fmt.Sprintf("%s %.1f MiB", filepath.Base(name), float64(kb)/1024))
			}
		}
	}
	return strings.Join(out, ", ")
}
