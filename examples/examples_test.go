// Package examples holds grain's example policies; its tests apply each
// kernel-hook example to the running kernel, cause the activity it watches
// with real processes and sockets, and check the exact events and counts.
// kprobe examples run in the VM runner's guests (scripts/vm-test.sh); on a
// kernel without kprobes they skip, naming the feature.
package examples

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/engine/hook"
	"github.com/grain-ebpf/grain/internal/vmtest"
	"github.com/grain-ebpf/grain/policies"
)

// childEnv makes the test binary a child that does one thing and exits:
// "open:PATH" opens PATH, "getppid:N" calls getppid N times. It then
// lingers a little, so that userspace can still read its /proc entry
// (the exe field) when the event arrives.
const childEnv = "GRAIN_EXAMPLE_CHILD"

func TestMain(m *testing.M) {
	if what := os.Getenv(childEnv); what != "" {
		os.Exit(child(what))
	}
	os.Exit(m.Run())
}

func child(what string) int {
	verb, arg, _ := strings.Cut(what, ":")
	switch verb {
	case "open":
		f, err := os.Open(arg)
		if err == nil {
			f.Close()
		}
	case "getppid":
		n, _ := strconv.Atoi(arg)
		for range n {
			syscall.Getppid()
		}
	}
	time.Sleep(300 * time.Millisecond)
	return 0
}

// runChild runs a copy of the test binary named name (its comm) as a child
// doing what; it returns the child's pid and how it ended.
func runChild(t *testing.T, name, what string) (int, error) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), name)
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+what)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid, cmd.Wait()
}

// apply loads the example in dir, compiles it and applies it to a fresh
// set of probes. observeSelf lets the hooks see this test process.
func apply(t *testing.T, dir string, observeSelf bool) *hook.Hooks {
	t.Helper()
	return applyWith(t, dir, observeSelf, codegen.Options{})
}

// applyWith is apply with codegen options (monitor mode).
func applyWith(t *testing.T, dir string, observeSelf bool, opts codegen.Options) *hook.Hooks {
	t.Helper()
	vmtest.RequireRoot(t)
	snap, err := policies.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := codegen.Compile(snap.Policies, opts)
	if err != nil {
		t.Fatal(err)
	}
	p, err := hook.New(hook.Options{ObserveSelf: observeSelf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	if err := p.Apply(plan); err != nil {
		t.Fatal(err)
	}
	for _, a := range p.Attachments() {
		t.Logf("%s: %s %s attached as %s", vmtest.Where(), a.Kind, a.Target+strings.Join(a.Syscalls, ","), a.Mechanism)
	}
	return p
}

func requireKprobes(t *testing.T) {
	t.Helper()
	if err := bpf.DetectProbeFeatures().Kprobes; err != nil {
		vmtest.Missing(t, "kprobe", err)
	}
}

// collector reads a probe's events from the moment it is made, as grain
// does: userspace enrichment (exe) reads /proc while the process lives.
type collector struct {
	ch   chan hook.Event
	stop chan struct{}
}

func collect(t *testing.T, p *hook.Hooks) *collector {
	t.Helper()
	r, err := p.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	c := &collector{ch: make(chan hook.Event, 1024), stop: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-c.stop:
				return
			default:
			}
			r.SetDeadline(time.Now().Add(20 * time.Millisecond))
			var ev hook.Event
			if err := r.Read(&ev); err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					continue
				}
				return
			}
			c.ch <- ev
		}
	}()
	t.Cleanup(func() { close(c.stop); <-done; r.Close() })
	return c
}

// events returns the events that satisfy want, read until none came for a
// while after the first, or timeout.
func (c *collector) events(timeout time.Duration, want func(*hook.Event) bool) []hook.Event {
	var got []hook.Event
	end := time.After(timeout)
	for {
		quiet := time.After(time.Hour)
		if len(got) > 0 {
			quiet = time.After(300 * time.Millisecond)
		}
		select {
		case ev := <-c.ch:
			if want(&ev) {
				got = append(got, ev)
			}
		case <-quiet:
			return got
		case <-end:
			return got
		}
	}
}

// count returns the value of the aggregation of metric whose labels
// include every label of want.
func count(t *testing.T, p *hook.Hooks, metric string, want map[string]string) (uint64, bool) {
	t.Helper()
	samples, err := p.CountSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range samples {
		if s.Metric != metric {
			continue
		}
		match := 0
		for _, l := range s.Labels {
			if v, ok := want[l.Name]; ok && v == l.Value {
				match++
			}
		}
		if match == len(want) {
			return s.Value, true
		}
	}
	return 0, false
}

func field(ev *hook.Event, name string) any {
	if f := ev.Field(name); f != nil {
		return f.Value()
	}
	return nil
}

// Process execution: one event per exec with the program's path, and the
// execs counted in the kernel by comm and uid.
func TestExampleProcessExec(t *testing.T) {
	p := apply(t, "process-exec", false)
	c := collect(t, p)
	const name = "grain-exec-ex"
	var pids []int
	for range 2 {
		pid, err := runChild(t, name, "none")
		if err != nil {
			t.Fatalf("child: %v", err)
		}
		pids = append(pids, pid)
	}
	evs := c.events(5*time.Second, func(ev *hook.Event) bool { return ev.Comm == name })
	if len(evs) != 2 {
		t.Fatalf("got %d exec events of %s, want 2: %+v", len(evs), name, evs)
	}
	for i, ev := range evs {
		if ev.Event != "exec" || ev.Policy != "execs" || int(ev.TGID) != pids[i] || int(ev.PPID) != os.Getpid() ||
			ev.UID != 0 || !strings.HasSuffix(field(&ev, "filename").(string), "/"+name) {
			t.Errorf("event %d: %+v; want exec of pid %d, parent %d, uid 0, filename .../%s", i, ev, pids[i], os.Getpid(), name)
		}
	}
	if n, ok := count(t, p, "process.execs", map[string]string{"comm": name, "uid": "0"}); n != 2 {
		t.Errorf("process.execs{comm=%s,uid=0} = %d (found %v), want 2", name, n, ok)
	}
}

// File access under /etc: an open there is reported with its path and the
// executable; an open elsewhere is not.
func TestExampleFileAccess(t *testing.T) {
	p := apply(t, "file-access", false)
	c := collect(t, p)
	const name = "grain-open-ex"
	pidEtc, err := runChild(t, name, "open:/etc/hostname")
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	if _, err := runChild(t, name, "open:/tmp/not-under-etc"); err != nil {
		t.Fatalf("child: %v", err)
	}
	// The dynamic loader of the children opens /etc/ld.so.cache too.
	evs := c.events(5*time.Second, func(ev *hook.Event) bool {
		return ev.Comm == name && field(ev, "filename") != "/etc/ld.so.cache"
	})
	if len(evs) != 1 {
		t.Fatalf("got %d file_open events of %s, want 1 (only the open under /etc): %+v", len(evs), name, evs)
	}
	ev := evs[0]
	if ev.Event != "file_open" || field(&ev, "filename") != "/etc/hostname" || field(&ev, "tgid") != uint64(pidEtc) ||
		field(&ev, "comm") != name || !strings.HasSuffix(fmt.Sprint(field(&ev, "exe")), "/"+name) {
		t.Errorf("event %+v; want file_open of /etc/hostname by process (tgid) %d, comm and exe %s", ev, pidEtc, name)
	}
}

// Enforcement: the process that opens the canary is killed by SIGKILL;
// another that opens another file is not.
func TestExampleKillOnOpen(t *testing.T) {
	p := apply(t, "kill-on-open", false)
	c := collect(t, p)
	const name = "grain-kill-ex"
	pid, err := runChild(t, name, "open:/tmp/grain-canary")
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("the child that opened the canary ended with %v, want killed by SIGKILL", err)
	}
	if _, err := runChild(t, name, "open:/tmp/grain-not-the-canary"); err != nil {
		t.Fatalf("the child that opened another file ended with %v, want exit 0", err)
	}
	evs := c.events(5*time.Second, func(ev *hook.Event) bool { return ev.Comm == name })
	if len(evs) != 1 || field(&evs[0], "tgid") != uint64(pid) || field(&evs[0], "filename") != "/tmp/grain-canary" {
		t.Fatalf("events %+v; want one killed_on_open of process (tgid) %d for /tmp/grain-canary", evs, pid)
	}
	counters, err := p.Counters()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range counters {
		if c.Policy == "kill_on_canary" && c.Signals != 1 {
			t.Errorf("kill_on_canary sent %d signals, want 1", c.Signals)
		}
	}
}

// System calls per process: a child calling getppid 1000 times is counted
// exactly, by its process id, comm and the call's name.
func TestExampleSyscallCounts(t *testing.T) {
	p := apply(t, "syscall-counts", false)
	const name = "grain-sys-ex"
	pid, err := runChild(t, name, "getppid:1000")
	if err != nil {
		t.Fatalf("child: %v", err)
	}
	want := map[string]string{"tgid": strconv.Itoa(pid), "comm": name, "syscall": "getppid"}
	if n, ok := count(t, p, "process.syscalls", want); n != 1000 {
		t.Errorf("process.syscalls%v = %d (found %v), want 1000", want, n, ok)
	}
}

// TCP connections: the connect event names both ends, and the bytes sent
// and received are summed in the kernel per connection.
func TestExampleKprobeTCPConnections(t *testing.T) {
	requireKprobes(t)
	p := apply(t, "tcp-connections", true)
	col := collect(t, p)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.ReadFull(c, make([]byte, 1000))
		c.Write(make([]byte, 500))
	}()
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	local := c.LocalAddr().(*net.TCPAddr).AddrPort()
	remote := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	if _, err := c.Write(make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, make([]byte, 500)); err != nil {
		t.Fatal(err)
	}
	c.Close()

	evs := col.events(5*time.Second, func(ev *hook.Event) bool {
		return ev.Event == "tcp_connect" && field(ev, "sport") == uint64(local.Port())
	})
	if len(evs) != 1 || field(&evs[0], "daddr") != remote.Addr() || field(&evs[0], "dport") != uint64(remote.Port()) ||
		field(&evs[0], "saddr") != netip.MustParseAddr("127.0.0.1") || int(evs[0].TGID) != os.Getpid() {
		t.Fatalf("connect events %+v; want one from %v to %v by pid %d", evs, local, remote, os.Getpid())
	}
	conn := map[string]string{"saddr": local.Addr().String(), "sport": strconv.Itoa(int(local.Port())),
		"daddr": remote.Addr().String(), "dport": strconv.Itoa(int(remote.Port()))}
	if n, ok := count(t, p, "tcp.bytes_sent", conn); n != 1000 {
		t.Errorf("tcp.bytes_sent%v = %d (found %v), want 1000", conn, n, ok)
	}
	if n, ok := count(t, p, "tcp.bytes_received", conn); n != 500 {
		t.Errorf("tcp.bytes_received%v = %d (found %v), want 500", conn, n, ok)
	}
}

// UDP traffic: datagrams' bytes summed in the kernel per destination.
func TestExampleKprobeUDPTraffic(t *testing.T) {
	requireKprobes(t)
	p := apply(t, "udp-traffic", true)
	rx, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	c, err := net.Dial("udp4", rx.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range 3 {
		if _, err := c.Write(make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
	}
	comm, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	dst := rx.LocalAddr().(*net.UDPAddr).AddrPort()
	want := map[string]string{"comm": strings.TrimSpace(string(comm)), "daddr": dst.Addr().String(), "dport": strconv.Itoa(int(dst.Port()))}
	if n, ok := count(t, p, "udp.bytes_sent", want); n != 300 {
		t.Errorf("udp.bytes_sent%v = %d (found %v), want 300", want, n, ok)
	}
}

// The same policy in monitor mode (grain run --monitor): the process that
// opens the canary lives, the event is sent, and the counters say the
// signal it would have sent.
func TestExampleKillOnOpenMonitor(t *testing.T) {
	p := applyWith(t, "kill-on-open", false, codegen.Options{Monitor: true})
	c := collect(t, p)
	const name = "grain-kill-mon"
	pid, err := runChild(t, name, "open:/tmp/grain-canary")
	if err != nil {
		t.Fatalf("in monitor mode the child that opened the canary ended with %v, want exit 0", err)
	}
	evs := c.events(5*time.Second, func(ev *hook.Event) bool { return ev.Comm == name })
	if len(evs) != 1 || field(&evs[0], "tgid") != uint64(pid) {
		t.Fatalf("events %+v; want one of process (tgid) %d", evs, pid)
	}
	counters, err := p.Counters()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range counters {
		if c.Policy == "kill_on_canary" {
			found = true
			if c.Signals != 0 || c.WouldSignals != 1 {
				t.Errorf("kill_on_canary: %d signals, %d would_signals; want 0 and 1", c.Signals, c.WouldSignals)
			}
		}
	}
	if !found {
		t.Error("no counter of kill_on_canary")
	}
}
