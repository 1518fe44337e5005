package main

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// startGrainStdout starts `grain run` in namespace ns with its stdout on
// the write end of a pipe (the caller's read end decides how it is read),
// and waits until it enforces.
func startGrainStdout(t *testing.T, ns string, stdout *os.File, args ...string) *grainProcess {
	t.Helper()
	bin := buildGrainPath(t)
	d := &grainProcess{cmd: exec.Command("ip", append([]string{"netns", "exec", ns, bin}, args...)...)}
	d.cmd.Stdout = stdout
	// A writer, not StderrPipe: Wait then returns only after the last of
	// stderr is copied, so the lines grain writes as it exits are there.
	d.cmd.Stderr = lockedWriter{d: d}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stdout.Close() // grain holds the write end now
	t.Cleanup(func() { d.cmd.Process.Kill(); d.cmd.Wait() })
	d.waitLog(t, "enforcing", 1)
	return d
}

// terminate sends SIGTERM and waits for grain to exit, at most 30 s (a
// guard against a hang, not a measure: the exit flushes for at most 5 s).
func (d *grainProcess) terminate(t *testing.T) {
	t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("grain exited with %v after SIGTERM, want 0; stderr:\n%s", err, d.log())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("grain did not exit within 30 s of SIGTERM; stderr:\n%s", d.log())
	}
}

// stdoutSetup is a pair whose server end drops (and reports) UDP to port
// 9999, the arguments of a grain run enforcing that with metrics on
// loopback, and its status socket.
func stdoutSetup(t *testing.T) (p *netns.Pair, args []string, sock, metricsAddr string) {
	p = netns.NewPair(t)
	dir := t.TempDir()
	writePolicy(t, filepath.Join(dir, "udp.cue"), udpDropPolicy)
	sock = filepath.Join(t.TempDir(), "grain.sock")
	metricsAddr = "127.0.0.1:9468"
	return p, []string{"run", "--policies", dir, "--interface", p.ServerIf, "--pin-path", netns.PinDir(t),
		"--status-socket", sock, "--metrics-addr", metricsAddr}, sock, metricsAddr
}

// `grain run | head -1`: the reader goes away after the first line. grain
// used to die of SIGPIPE, leaving its pins and socket. It must go on
// enforcing and serving metrics, count the events it cannot write as
// export_failed, say so once, and exit cleanly on SIGTERM.
func TestStdoutReaderGone(t *testing.T) {
	vmtest.HostOnly(t, "stdout handling is userspace")
	p, args, sock, metricsAddr := stdoutSetup(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	firstLine := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(r).ReadString('\n')
		r.Close()
		firstLine <- line
	}()
	d := startGrainStdout(t, p.ServerNS, w, args...)
	received := udpServer(t, p)
	sender := newUDPSender(t, p)
	sender.send(t, 1)
	select {
	case line := <-firstLine:
		if !strings.Contains(line, `"udp_dropped"`) {
			t.Fatalf("first line %q, want the udp_dropped event", line)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no event line within 10 s; stderr:\n%s", d.log())
	}

	const failed = `grain_events_lost_total{grain_loss_reason="export_failed",grain_sink="stdout"}`
	if !waitFor(func() bool {
		sender.send(t, 10)
		return scrape(t, p.ServerNS, metricsAddr)[failed] > 0
	}) {
		t.Fatalf("%s not above 0 after the reader left; scrape %v\nstderr:\n%s", failed, scrape(t, p.ServerNS, metricsAddr), d.log())
	}
	if d.cmd.ProcessState != nil {
		t.Fatalf("grain exited: %v; stderr:\n%s", d.cmd.ProcessState, d.log())
	}
	if n := received.Load(); n != 0 {
		t.Errorf("%d datagrams reached the server after stdout closed, want all dropped", n)
	}
	if n := strings.Count(d.log(), "stdout is closed"); n != 1 {
		t.Errorf("grain said %d times that stdout is closed, want once; stderr:\n%s", n, d.log())
	}

	d.terminate(t)
	if !regexp.MustCompile(`events not written to stdout" dropped=[1-9]`).MatchString(d.log()) ||
		!strings.Contains(d.log(), "stopping: detaching") {
		t.Errorf("grain did not log the dropped events and detaching; stderr:\n%s", d.log())
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("status socket %s left behind (stat: %v)", sock, err)
	}
}

// A reader that never reads: grain's writes to stdout wait once the pipe
// is full. SIGTERM used to wait for them for minutes; the exit gives them
// up within its flush bound and logs how many events were dropped.
func TestStdoutReaderStalled(t *testing.T) {
	vmtest.HostOnly(t, "stdout handling is userspace")
	p, args, sock, _ := stdoutSetup(t)
	d, sender, r := startGrainStalled(t, p, args...)
	defer r.Close()
	sender.send(t, 200) // events for a write that waits
	d.terminate(t)
	if !regexp.MustCompile(`events not written to stdout" dropped=[1-9]`).MatchString(d.log()) ||
		!strings.Contains(d.log(), "stopping: detaching") {
		t.Errorf("grain did not log the dropped events and detaching; stderr:\n%s", d.log())
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("status socket %s left behind (stat: %v)", sock, err)
	}
}

// startGrainStalled starts grain with its stdout on a pipe that nobody
// reads, and sends the datagrams grain reports until the pipe is full:
// grain's next write to stdout waits. It returns the read end.
func startGrainStalled(t *testing.T, p *netns.Pair, args ...string) (*grainProcess, *udpSender, *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	size, err := unix.FcntlInt(r.Fd(), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		t.Fatal(err)
	}
	d := startGrainStdout(t, p.ServerNS, w, args...)
	sender := newUDPSender(t, p)
	// Until the pipe is full (a write does not share a partly filled page).
	if !waitFor(func() bool {
		sender.send(t, 200)
		queued, err := unix.IoctlGetInt(int(r.Fd()), unix.TIOCINQ)
		return err == nil && queued > size-os.Getpagesize()
	}) {
		t.Fatalf("the pipe did not fill; stderr:\n%s", d.log())
	}
	return d, sender, r
}
