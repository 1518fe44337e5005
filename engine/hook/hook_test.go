package hook

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/internal/hookchild"
	"github.com/grain-ebpf/grain/internal/plantest"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// The hook tests trigger real activity in child processes (hookchild).
func init() { hookchild.Serve() }

func requireRoot(t testing.TB) {
	t.Helper()
	vmtest.RequireRoot(t)
}

func newTestHooks(t testing.TB, opts Options) *Hooks {
	t.Helper()
	requireRoot(t)
	p, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func applyHooks(t testing.TB, p *Hooks, src string) {
	t.Helper()
	if err := p.Apply(plantest.Compile(t, src)); err != nil {
		t.Fatal(err)
	}
}

// collect reads events until done says so or timeout passes.
func collect(t *testing.T, p *Hooks, timeout time.Duration, done func([]Event) bool) []Event {
	t.Helper()
	r, err := p.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var out []Event
	end := time.Now().Add(timeout)
	for time.Now().Before(end) && !done(out) {
		r.SetDeadline(time.Now().Add(20 * time.Millisecond))
		var ev Event
		if err := r.Read(&ev); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

func fieldStr(ev Event, name string) string {
	if f := ev.Field(name); f != nil {
		return fmt.Sprint(f.Value())
	}
	return "<missing>"
}

func uniqueName(prefix string) string {
	return fmt.Sprintf("%s%05d", prefix, rand.IntN(100000))
}

// TestHookTracepointExec: sched/sched_process_exec with its __data_loc
// filename, emitted and counted, filtered by comm.
func TestHookTracepointExec(t *testing.T) {
	p := newTestHooks(t, Options{})
	comm := uniqueName("grainexec")
	bin := hookchild.Copy(t, comm)
	applyHooks(t, p, fmt.Sprintf(`
execs: {
	tracepoint: "sched/sched_process_exec"
	args: [{field: "filename", type: "string"}, {field: "old_pid", type: "int"}]
	match: process: comm: %q
	emit: {event: "exec", fields: ["pid", "tgid", "ppid", "uid", "comm", "filename", "old_pid"]}
	count: {metric: "process.execs", by: ["comm", "uid"]}
}`, comm))
	if got := p.Mechanism(KindTracepoint, "sched/sched_process_exec"); got != MechanismTracepoint {
		t.Fatalf("mechanism %q", got)
	}
	var pids []int
	for range 3 {
		cmd := hookchild.Command(bin, "close 0 -1")
		if err := cmd.Run(); err != nil {
			t.Fatal(err)
		}
		pids = append(pids, cmd.Process.Pid)
	}
	hookchild.Run(t, "close 0 -1") // another comm: not selected
	evs := collect(t, p, 5*time.Second, func(e []Event) bool { return len(e) >= 3 })
	if len(evs) != 3 {
		t.Fatalf("got %d events, want 3: %+v", len(evs), evs)
	}
	for i, ev := range evs {
		if ev.Policy != "execs" || ev.Event != "exec" || ev.Comm != comm || int(ev.TGID) != pids[i] || ev.PPID != uint32(os.Getpid()) {
			t.Errorf("event %d: %+v, want pid %d, ppid %d", i, ev, pids[i], os.Getpid())
		}
		if got := fieldStr(ev, "filename"); got != bin {
			t.Errorf("filename %q, want %q", got, bin)
		}
		if got := fieldStr(ev, "old_pid"); got != strconv.Itoa(pids[i]) {
			t.Errorf("old_pid %s, want %d", got, pids[i])
		}
		if got := fieldStr(ev, "pid"); got != strconv.Itoa(pids[i]) {
			t.Errorf("pid field %s", got)
		}
	}
	counts, err := p.CountSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	want := CountSample{Metric: "process.execs", Policy: "execs", Labels: []Label{{"comm", comm}, {"uid", "0"}}, Calls: 3, Value: 3}
	if len(counts) != 1 || fmt.Sprint(counts[0]) != fmt.Sprint(want) {
		t.Fatalf("counts %+v, want %+v", counts, want)
	}
	c, err := p.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if len(c) != 1 || c[0].Hits != 3 || c[0].Events != 3 || c[0].EventsLost != 0 {
		t.Fatalf("counters %+v", c)
	}
}

// TestHookSyscallFilters: raw sys_enter on openat with a user string,
// filters on comm, path prefix and uid; selectors ORed.
func TestHookSyscallFilters(t *testing.T) {
	p := newTestHooks(t, Options{})
	dir := t.TempDir()
	commA, commB := uniqueName("graincatA"), uniqueName("graincatB")
	catA, catB := hookchild.Copy(t, commA), hookchild.Copy(t, commB)
	inside, outside := filepath.Join(dir, "watched", "f"), filepath.Join(dir, "other")
	os.MkdirAll(filepath.Dir(inside), 0o755)
	os.WriteFile(inside, []byte("x"), 0o644)
	os.WriteFile(outside, []byte("x"), 0o644)
	applyHooks(t, p, fmt.Sprintf(`
opens: {
	syscall: ["openat"]
	args: [{index: 1, type: "user_string", name: "filename"}, {index: 0, type: "int", name: "dfd"}]
	match: [
		{process: {comm: %q, uid: 0}, args: filename: {prefix: %q}},
		{process: comm: {prefix: "graincatB"}, args: filename: %q},
	]
	emit: {event: "open", fields: ["comm", "filename", "dfd", "syscall"]}
}`, commA, filepath.Dir(inside)+"/", outside))
	run := func(cmd *exec.Cmd) {
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", cmd.Args, err, out)
		}
	}
	run(hookchild.Command(catA, "open "+inside))  // selected by the first selector
	run(hookchild.Command(catA, "open "+outside)) // wrong path for A
	run(hookchild.Command(catB, "open "+inside))  // wrong path for B
	run(hookchild.Command(catB, "open "+outside)) // selected by the second selector
	nobody := hookchild.Command(catA, "open "+inside)
	nobody.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	for _, d := range []string{filepath.Dir(catA), filepath.Dir(filepath.Dir(catA)), dir, filepath.Dir(dir), filepath.Dir(inside)} {
		os.Chmod(d, 0o755)
	}
	run(nobody) // uid 65534: not selected
	evs := collect(t, p, time.Second, func(e []Event) bool { return len(e) > 2 })
	var got []string
	for _, ev := range evs {
		got = append(got, fmt.Sprintf("%s %s %s %s", fieldStr(ev, "comm"), fieldStr(ev, "filename"), fieldStr(ev, "dfd"), fieldStr(ev, "syscall")))
	}
	want := []string{commA + " " + inside + " -100 openat", commB + " " + outside + " -100 openat"}
	if !slices.Equal(got, want) {
		t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestHookSignal: a process opening the forbidden file is killed with
// SIGKILL; one opening another file is not.
func TestHookSignal(t *testing.T) {
	p := newTestHooks(t, Options{})
	dir := t.TempDir()
	forbidden, allowed := filepath.Join(dir, "canary"), filepath.Join(dir, "fine")
	os.WriteFile(forbidden, []byte("secret\n"), 0o644)
	os.WriteFile(allowed, []byte("fine\n"), 0o644)
	applyHooks(t, p, fmt.Sprintf(`
kill_on_canary: {
	syscall: ["openat", "openat2", "open"]
	args: [{index: 1, type: "user_string", name: "filename"}]
	match: args: filename: %q
	signal: "SIGKILL"
	emit: {event: "killed_on_open", fields: ["pid", "comm", "filename"]}
}`, forbidden))
	out, err := exec.Command("cat", forbidden).Output()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("cat of the canary: err %v, output %q; want killed by SIGKILL", err, out)
	}
	if len(out) != 0 {
		t.Fatalf("the killed cat printed %q", out)
	}
	out, err = exec.Command("cat", allowed).Output()
	if err != nil || string(out) != "fine\n" {
		t.Fatalf("cat of another file: %v %q", err, out)
	}
	c, _ := p.Counters()
	if len(c) != 1 || c[0].Signals != 1 || c[0].Hits != 1 {
		t.Fatalf("counters %+v", c)
	}
}

// TestHookSyscallCount: per-call counts and sums in the kernel, keyed by
// syscall and argument; an int set larger than the inline limit.
func TestHookSyscallCount(t *testing.T) {
	p := newTestHooks(t, Options{})
	var set []string
	for i := range bpf.HookMaxInline + 4 {
		set = append(set, strconv.Itoa(987000+i))
	}
	applyHooks(t, p, fmt.Sprintf(`
closes: {
	syscall: "close"
	args: [{index: 0, type: "int", name: "fd"}]
	match: args: fd: [%s]
	count: {metric: "test.closes", by: ["syscall", "fd", "comm"]}
}
seeks: {
	syscall: "lseek"
	args: [{index: 0, type: "int", name: "fd"}, {index: 1, type: "int", name: "offset"}]
	match: args: fd: {not: [1, 2, 3]}
	match: args: offset: "1000-2000"
	count: {metric: "test.seek_bytes", by: ["fd"], sum: "offset"}
}`, strings.Join(set, ", ")))
	plan := plantest.Compile(t, "x: {syscall: \"close\", args: [{index: 0, type: \"int\", name: \"fd\"}], match: args: fd: ["+strings.Join(set, ",")+"], count: metric: \"m\"}")
	if op := plan.Hooks.Rules[0].Selectors[0].Filters[0].Op; op != "set" {
		t.Fatalf("a set of %d values compiles to %q, want set", len(set), op)
	}
	hookchild.Run(t, "close 1000 987003")
	hookchild.Run(t, "close 7 987011")
	hookchild.Run(t, "close 5 986999") // not in the set
	hookchild.Run(t, "lseek 10 987500 1500")
	hookchild.Run(t, "lseek 10 987500 2500") // offset out of range
	got := countLines(t, p)
	want := []string{
		"test.closes syscall=close,fd=987003,comm=" + hookchild.SelfComm() + " 1000",
		"test.closes syscall=close,fd=987011,comm=" + hookchild.SelfComm() + " 7",
		"test.seek_bytes fd=987500 15000",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("counts:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// countLines is every in-kernel count of p as "metric label=value,... n".
func countLines(t *testing.T, p *Hooks) []string {
	t.Helper()
	counts, err := p.CountSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, c := range counts {
		var labels []string
		for _, l := range c.Labels {
			labels = append(labels, l.Name+"="+l.Value)
		}
		lines = append(lines, fmt.Sprintf("%s %s %d", c.Metric, strings.Join(labels, ","), c.Value))
	}
	return lines
}

// TestHookFdPath: an fd argument resolved to its path through the task's
// file table and a walk of dentries and mounts.
func TestHookFdPath(t *testing.T) {
	p := newTestHooks(t, Options{})
	dir := filepath.Join(t.TempDir(), "a", "b")
	os.MkdirAll(dir, 0o755)
	file := filepath.Join(dir, "target.txt")
	os.WriteFile(file, []byte("x"), 0o644)
	applyHooks(t, p, fmt.Sprintf(`
closes: {
	syscall: "close"
	args: [{index: 0, type: "fd", name: "file"}]
	match: args: file: {prefix: %q}
	emit: {event: "close", fields: ["file"]}
}`, filepath.Dir(dir)+"/"))
	hookchild.Run(t, "open "+file+" /etc/hostname")
	evs := collect(t, p, time.Second, func(e []Event) bool { return len(e) > 1 })
	if len(evs) != 1 || fieldStr(evs[0], "file") != file || evs[0].Truncated {
		t.Fatalf("events %+v, want one with file %s", evs, file)
	}
}

// TestHookCgroupFilter: events only from processes in a given cgroup.
func TestHookCgroupFilter(t *testing.T) {
	p := newTestHooks(t, Options{})
	root := Cgroup2Mount()
	name := uniqueName("grain-test-")
	dir := filepath.Join(root, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("create a cgroup (cgroup v2 at %s): %v", root, err)
	}
	defer os.Remove(dir)
	applyHooks(t, p, fmt.Sprintf(`
closes: {
	syscall: "close"
	args: [{index: 0, type: "int", name: "fd"}]
	match: {process: cgroup: "/%s", args: fd: 987777}
	count: {metric: "test.closes", by: ["cgroup"]}
}`, name))
	hookchild.Run(t, "close 3 987777") // in the test's own cgroup: not counted
	cg, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), hookchild.Env+"=close 5 987777")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child in cgroup: %v %s", err, out)
	}
	id, _ := p.cgroupID("/" + name)
	counts, _ := p.CountSnapshot()
	if len(counts) != 1 || counts[0].Value != 5 || counts[0].Labels[0].Value != strconv.FormatUint(id, 10) {
		t.Fatalf("counts %+v, want 5 for cgroup %d", counts, id)
	}
}

// TestHookLossAccounting floods a small ring buffer with nobody reading:
// events received + events counted lost = events generated.
func TestHookLossAccounting(t *testing.T) {
	p := newTestHooks(t, Options{RingBufferBytes: 64 << 10})
	applyHooks(t, p, `
closes: {
	syscall: "close"
	args: [{index: 0, type: "int", name: "fd"}]
	match: args: fd: 987654
	emit: {event: "close", fields: ["pid", "fd"]}
}`)
	const n = 20000
	hookchild.Run(t, fmt.Sprintf("close %d 987654", n))
	evs := collect(t, p, 2*time.Second, func(e []Event) bool { return false })
	c, err := p.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if len(c) != 1 || c[0].Hits != n || c[0].Events != uint64(len(evs)) || c[0].Events+c[0].EventsLost != n || c[0].EventsLost == 0 {
		t.Fatalf("generated %d, received %d, counters %+v", n, len(evs), c)
	}
	t.Logf("generated %d: received %d + lost %d", n, len(evs), c[0].EventsLost)
}

// TestHookRateLimit: at most rate_limit events per second; the others
// counted as limited.
func TestHookRateLimit(t *testing.T) {
	p := newTestHooks(t, Options{})
	applyHooks(t, p, `
closes: {
	syscall: "close"
	args: [{index: 0, type: "int", name: "fd"}]
	match: args: fd: 987655
	emit: {event: "close", fields: ["fd"], rate_limit: 50}
}`)
	hookchild.Run(t, "close 1000 987655")
	evs := collect(t, p, 500*time.Millisecond, func(e []Event) bool { return false })
	c, _ := p.Counters()
	// The 1000 calls take well under a second: one or two windows.
	if len(c) != 1 || c[0].Hits != 1000 || c[0].Events != uint64(len(evs)) || c[0].Events+c[0].EventsRateLimited != 1000 ||
		c[0].Events < 50 || c[0].Events > 100 {
		t.Fatalf("received %d, counters %+v", len(evs), c)
	}
}

// TestHookReload: hooks come and go with the policies; counts survive.
func TestHookReload(t *testing.T) {
	p := newTestHooks(t, Options{})
	a := `a: {syscall: "close", args: [{index: 0, type: "int", name: "fd"}], match: args: fd: 987600, count: metric: "m"}`
	b := `b: {tracepoint: "syscalls/sys_enter_close", args: [{field: "fd", type: "int"}], match: args: fd: 987600, count: metric: "m"}`
	applyHooks(t, p, a)
	hookchild.Run(t, "close 4 987600")
	applyHooks(t, p, a+"\n"+b)
	hookchild.Run(t, "close 3 987600")
	applyHooks(t, p, b)
	if got := p.Attachments(); len(got) != 1 || got[0].Mechanism != MechanismTracepoint || p.sysLink != nil {
		t.Fatalf("attachments after dropping the syscall hook: %+v (sys_enter attached: %v)", got, p.sysLink != nil)
	}
	hookchild.Run(t, "close 2 987600")
	counts, _ := p.CountSnapshot()
	got := map[string]uint64{}
	for _, c := range counts {
		got[c.Policy] = c.Value
	}
	if got["a"] != 7 || got["b"] != 5 {
		t.Fatalf("counts %+v, want a=7 b=5", counts)
	}
	if err := p.Apply(&codegen.Plan{}); err != nil {
		t.Fatal(err)
	}
	if got := p.Attachments(); len(got) != 0 {
		t.Fatalf("attachments after removing every policy: %+v", got)
	}
}

// TestHookStreamJSON: hook events as JSON lines.
func TestHookStreamJSON(t *testing.T) {
	p := newTestHooks(t, Options{})
	applyHooks(t, p, `
closes: {
	syscall: "close"
	args: [{index: 0, type: "int", name: "fd"}]
	match: args: fd: 987656
	emit: {event: "close", fields: ["fd", "comm", "syscall"]}
}`)
	pr, pw := io.Pipe()
	ctx, cancel := contextWithTimeout(30 * time.Second)
	defer cancel()
	go func() { p.StreamEvents(ctx, pw); pw.Close() }()
	time.Sleep(50 * time.Millisecond)
	hookchild.Run(t, "close 1 987656")
	line, err := bufio.NewReader(pr).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	// The process context comes first, then the policy's other fields;
	// cgroup_path and exe are read from /proc and may be gone with the
	// child, so they are left out of the comparison.
	host, _ := os.Hostname()
	wantHead := `{"time":"`
	wantTail := `,"host":"` + host + `","fd":987656,"syscall":"close"}` + "\n"
	if !strings.HasPrefix(line, wantHead) || !strings.HasSuffix(line, wantTail) ||
		!strings.Contains(line, `"policy":"closes","event":"close","pid":`) ||
		!strings.Contains(line, `"uid":0,"gid":0,"comm":"`+hookchild.SelfComm()+`","cgroup":`) {
		t.Fatalf("line %q, want %s...\"policy\":\"closes\",\"event\":\"close\",\"pid\":...,\"uid\":0,\"gid\":0,\"comm\":\"%s\",\"cgroup\":...%s", line, wantHead, hookchild.SelfComm(), wantTail)
	}
	var ev map[string]any
	if err := json.Unmarshal([]byte(line), &ev); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"pid", "tgid", "ppid", "cgroup"} {
		if n, ok := ev[k].(float64); !ok || n <= 0 {
			t.Errorf("%s = %v, want a positive number: %s", k, ev[k], line)
		}
	}
	if ev["ppid"] != float64(os.Getpid()) {
		t.Errorf("ppid %v, want this test's pid %d", ev["ppid"], os.Getpid())
	}
}

func skipWithoutKprobes(t *testing.T) {
	t.Helper()
	if err := bpf.DetectProbeFeatures().Kprobes; err != nil {
		vmtest.Missing(t, "kprobe", err)
	}
}

func skipWithoutFentry(t *testing.T) {
	t.Helper()
	if err := bpf.DetectProbeFeatures().FentryErr; err != nil {
		vmtest.Missing(t, "fentry", err)
	}
}

// acceptAndClose listens on address until the test ends, closing every
// connection it accepts, and returns the address it listens on.
func acceptAndClose(t *testing.T, network, address string) string {
	t.Helper()
	ln, err := net.Listen(network, address)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln.Addr().String()
}

// tcpConnectTest connects from a child to a listener on loopback and
// checks the event of a hook on tcp_connect(struct sock *).
func tcpConnectTest(t *testing.T, attach string, wantMech Mechanism) {
	p := newTestHooks(t, Options{})
	addr := acceptAndClose(t, "tcp4", "127.0.0.1:0")
	_, portText, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portText)
	applyHooks(t, p, fmt.Sprintf(`
tcp_connect: {
	kprobe: "tcp_connect"
	attach: %q
	args: [{index: 0, type: "sock", name: "sk"}]
	match: dport: %d
	emit: {event: "tcp_connect", fields: ["pid", "comm", "saddr", "sport", "daddr", "dport", "family", "sk"]}
	count: {metric: "tcp.connects", by: ["daddr", "dport"]}
}`, attach, port))
	if got := p.Mechanism(KindKprobe, "tcp_connect"); got != wantMech {
		t.Fatalf("mechanism %q, want %q", got, wantMech)
	}
	hookchild.Run(t, "connect "+addr)
	evs := collect(t, p, 5*time.Second, func(e []Event) bool { return len(e) >= 1 })
	if len(evs) != 1 {
		t.Fatalf("events %+v", evs)
	}
	ev := evs[0]
	if fieldStr(ev, "daddr") != "127.0.0.1" || fieldStr(ev, "dport") != strconv.Itoa(port) || fieldStr(ev, "saddr") != "127.0.0.1" ||
		fieldStr(ev, "family") != "2" || fieldStr(ev, "sport") == "0" || fieldStr(ev, "sk") != "127.0.0.1:"+strconv.Itoa(port) {
		t.Fatalf("event %+v", ev)
	}
	counts, _ := p.CountSnapshot()
	if len(counts) != 1 || counts[0].Value != 1 || counts[0].Labels[0].Value != "127.0.0.1" || counts[0].Labels[1].Value != strconv.Itoa(port) {
		t.Fatalf("counts %+v", counts)
	}
}

func TestHookKprobeTCPConnect(t *testing.T) {
	requireRoot(t)
	skipWithoutKprobes(t)
	tcpConnectTest(t, "kprobe", MechanismKprobe)
}

func TestHookFentryTCPConnect(t *testing.T) {
	requireRoot(t)
	skipWithoutFentry(t)
	tcpConnectTest(t, "fentry", MechanismFentry)
}

// TestHookAutoAttach: attach: auto takes fentry where the kernel has it,
// else kprobes, and says which; with neither, the error names both.
func TestHookAutoAttach(t *testing.T) {
	p := newTestHooks(t, Options{})
	f := bpf.DetectProbeFeatures()
	err := p.Apply(plantest.Compile(t, `x: {kprobe: "tcp_connect", args: [{index: 0, type: "sock"}], count: metric: "m"}`))
	switch {
	case f.FentryErr == nil:
		if err != nil || p.Mechanism(KindKprobe, "tcp_connect") != MechanismFentry {
			t.Fatalf("fentry available: %v, mechanism %q", err, p.Mechanism(KindKprobe, "tcp_connect"))
		}
	case f.Kprobes == nil:
		if err != nil || p.Mechanism(KindKprobe, "tcp_connect") != MechanismKprobe {
			t.Fatalf("kprobes available: %v, mechanism %q", err, p.Mechanism(KindKprobe, "tcp_connect"))
		}
	default:
		if err == nil || !strings.Contains(err.Error(), "neither fentry") || !strings.Contains(err.Error(), "kprobes") {
			t.Fatalf("kernel without fentry and kprobes: error %v", err)
		}
		t.Logf("error names what is missing: %v", err)
	}
}

// TestHookKretprobeReturn: return values by kretprobe and by fexit, with
// an argument of the call (kretprobe: saved by a kprobe at the entry),
// filtered, emitted and counted.
func TestHookKretprobeReturn(t *testing.T) {
	for _, attach := range []string{"kprobe", "fentry"} {
		t.Run(attach, func(t *testing.T) {
			requireRoot(t)
			if attach == "kprobe" {
				skipWithoutKprobes(t)
			} else {
				skipWithoutFentry(t)
			}
			p := newTestHooks(t, Options{})
			dir := t.TempDir()
			file, missing := filepath.Join(dir, "x"), filepath.Join(dir, "missing")
			os.WriteFile(file, nil, 0o644)
			applyHooks(t, p, fmt.Sprintf(`
opens: {
	kretprobe: "do_sys_openat2"
	attach: %q
	args: [{index: 1, type: "user_string", name: "filename"}, {ret: true, type: "int", name: "fd"}]
	match: args: filename: {prefix: %q}
	emit: {event: "open", fields: ["filename", "fd"]}
	count: {metric: "opens", by: ["fd"]}
}`, attach, dir+"/"))
			want := map[string]Mechanism{"kprobe": MechanismKretprobe, "fentry": MechanismFexit}[attach]
			if got := p.Mechanism(KindKretprobe, "do_sys_openat2"); got != want {
				t.Fatalf("mechanism %q, want %q", got, want)
			}
			hookchild.Run(t, "open "+file+" "+missing+" "+file)
			evs := collect(t, p, 2*time.Second, func(e []Event) bool { return len(e) > 3 })
			var got []string
			for _, ev := range evs {
				got = append(got, fieldStr(ev, "filename")+" "+fieldStr(ev, "fd"))
			}
			wantEvs := []string{file + " 3", missing + " -2", file + " 3"}
			if !slices.Equal(got, wantEvs) {
				t.Errorf("events %q, want %q", got, wantEvs)
			}
			counts, _ := p.CountSnapshot()
			byFd := map[string]uint64{}
			for _, c := range counts {
				byFd[c.Labels[0].Value] = c.Value
			}
			if len(byFd) != 2 || byFd["3"] != 2 || byFd["-2"] != 1 {
				t.Errorf("counts %+v, want fd 3 twice and -2 once", counts)
			}
		})
	}
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

// TestHookReloadAtomic: while a child closes two fds in turn, plans that
// select one or the other (rule 0 and filter 0 in both) are applied over
// and over. A call that read the rule of one generation and the filter of
// the other would give an event of policy a for fd 987702 or of b for
// 987701: none may arrive, and no event may be lost.
func TestHookReloadAtomic(t *testing.T) {
	p := newTestHooks(t, Options{RingBufferBytes: 64 << 20})
	plan := func(name string, fd int) *codegen.Plan {
		return plantest.Compile(t, fmt.Sprintf(`%s: {syscall: "close", args: [{index: 0, type: "int", name: "fd"}], match: args: fd: %d, emit: {event: "e", fields: ["fd"]}}`, name, fd))
	}
	a, b := plan("a", 987701), plan("b", 987702)
	if err := p.Apply(a); err != nil {
		t.Fatal(err)
	}
	r, err := p.NewEventReader()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	// The child calls until told to stop, so that every reload falls
	// among its calls however fast or slow this machine is.
	cmd := hookchild.Command(os.Args[0], "alternate-until-eof 987701 987702")
	stop, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	const reloads = 40
	seen := map[string]int{}
	var ev Event
	read := func(d time.Duration) {
		end := time.Now().Add(d)
		for time.Now().Before(end) {
			r.SetDeadline(time.Now().Add(5 * time.Millisecond))
			if err := r.Read(&ev); err != nil {
				continue
			}
			seen[ev.Policy+" "+fieldStr(ev, "fd")]++
		}
	}
	for i := range reloads {
		next := a
		if i%2 == 0 {
			next = b
		}
		if err := p.Apply(next); err != nil {
			t.Fatal(err)
		}
		read(2 * time.Millisecond)
	}
	stop.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	// Drain: until nothing came for half a second (emulated guests are slow).
	for n := -1; n != len(seen) || sum(seen) != n; {
		n = sum(seen)
		read(500 * time.Millisecond)
		if sum(seen) == n {
			break
		}
	}
	c, _ := p.Counters()
	var events, lost uint64
	for _, x := range c {
		events += x.Events
		lost += x.EventsLost
	}
	t.Logf("%d reloads during the child's calls; events %v, lost %d", reloads, seen, lost)
	if seen["a 987702"] != 0 || seen["b 987701"] != 0 || seen["a 987701"] == 0 || seen["b 987702"] == 0 {
		t.Fatalf("mixed rule sets (%d reloads): %v", reloads, seen)
	}
	// A slow (emulated) reader may fall behind: what the ring had no room
	// for is counted, the rest arrives.
	if uint64(seen["a 987701"]+seen["b 987702"]) != events {
		t.Fatalf("received %v, kernel sent %d, lost %d", seen, events, lost)
	}
}

// TestHookFdPathTruncated: a path deeper than the walk's bound keeps its
// last components and is flagged.
func TestHookFdPathTruncated(t *testing.T) {
	t.Run("depth", func(t *testing.T) {
		dir := t.TempDir()
		for i := range bpf.HookPathDepth + 6 {
			dir = filepath.Join(dir, fmt.Sprintf("d%d", i))
		}
		truncatedPath(t, dir, func(file string) string {
			parts := strings.Split(file, "/")
			return "/" + strings.Join(parts[len(parts)-bpf.HookPathDepth:], "/")
		})
	})
	t.Run("bytes", func(t *testing.T) {
		dir := t.TempDir()
		for i := range 5 {
			dir = filepath.Join(dir, strings.Repeat(string(rune('a'+i)), 60))
		}
		// Components are kept while the path stays within 255 bytes.
		truncatedPath(t, dir, func(file string) string {
			parts := strings.Split(file, "/")
			out := ""
			for i := len(parts) - 1; i > 0; i-- {
				next := "/" + parts[i] + out
				if len(next) > bpf.HookStrLen-1 {
					break
				}
				out = next
			}
			return out
		})
	})
}

func truncatedPath(t *testing.T, dir string, wantOf func(string) string) {
	p := newTestHooks(t, Options{})
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "deep.txt")
	os.WriteFile(file, []byte("x"), 0o644)
	comm := uniqueName("graindeep")
	bin := hookchild.Copy(t, comm)
	applyHooks(t, p, fmt.Sprintf(`
closes: {
	syscall: "close"
	args: [{index: 0, type: "fd", name: "file"}]
	match: process: comm: %q
	emit: {event: "close", fields: ["file"]}
}`, comm))
	if out, err := hookchild.Command(bin, "open "+file).CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	evs := collect(t, p, 3*time.Second, func(e []Event) bool {
		return slices.ContainsFunc(e, func(ev Event) bool { return strings.HasSuffix(fieldStr(ev, "file"), "deep.txt") })
	})
	for _, ev := range evs {
		got := fieldStr(ev, "file")
		if !strings.HasSuffix(got, "deep.txt") {
			continue
		}
		want := wantOf(file)
		if !ev.Truncated || got != want {
			t.Fatalf("path %q (truncated %v), want %q truncated", got, ev.Truncated, want)
		}
		return
	}
	t.Fatalf("no event for the deep file: %+v", evs)
}

// TestHookSockaddr: a struct sockaddr * in user memory (connect's second
// argument), IPv4 and IPv6, filtered by CIDR and port.
func TestHookSockaddr(t *testing.T) {
	p := newTestHooks(t, Options{})
	var addrs []string
	for _, network := range []string{"tcp4", "tcp6"} {
		host := map[string]string{"tcp4": "127.0.0.1:0", "tcp6": "[::1]:0"}[network]
		addrs = append(addrs, acceptAndClose(t, network, host))
	}
	port := func(a string) string { _, p, _ := net.SplitHostPort(a); return p }
	applyHooks(t, p, fmt.Sprintf(`
connects: {
	syscall: "connect"
	args: [{index: 1, type: "sockaddr", name: "addr"}]
	match: [{daddr: "127.0.0.0/8", dport: %s}, {daddr: "::1/128", dport: %s}]
	emit: {event: "connect", fields: ["family", "daddr", "dport", "addr"]}
}`, port(addrs[0]), port(addrs[1])))
	hookchild.Run(t, "connect "+addrs[0])
	hookchild.Run(t, "connect "+addrs[1])
	evs := collect(t, p, time.Second, func(e []Event) bool { return len(e) > 2 })
	var got []string
	for _, ev := range evs {
		got = append(got, fmt.Sprintf("%s %s %s %s", fieldStr(ev, "family"), fieldStr(ev, "daddr"), fieldStr(ev, "dport"), fieldStr(ev, "addr")))
	}
	want := []string{
		fmt.Sprintf("2 127.0.0.1 %s %s", port(addrs[0]), addrs[0]),
		fmt.Sprintf("10 ::1 %s %s", port(addrs[1]), addrs[1]),
	}
	if !slices.Equal(got, want) {
		t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestHookTracepointCharArray: sched_process_fork's parent_comm is a
// char[16] inside the record on Linux 6.1 and a __data_loc string on 6.18:
// both read as strings, beside integer fields.
func TestHookTracepointCharArray(t *testing.T) {
	p := newTestHooks(t, Options{})
	comm := uniqueName("grainfork")
	bin := hookchild.Copy(t, comm)
	applyHooks(t, p, fmt.Sprintf(`
forks: {
	tracepoint: "sched/sched_process_fork"
	args: [{field: "parent_comm", type: "string"}, {field: "parent_pid", type: "int"}, {field: "child_pid", type: "int"}]
	match: args: parent_comm: %q
	emit: {event: "fork", fields: ["parent_comm", "parent_pid", "child_pid", "tgid"]}
}`, comm))
	// The Go runtime of the child starts threads: clones with its comm.
	cmd := hookchild.Command(bin, "close 0 -1")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	evs := collect(t, p, 2*time.Second, func(e []Event) bool { return len(e) > 0 })
	if len(evs) == 0 {
		t.Fatal("no fork event")
	}
	for _, ev := range evs {
		if fieldStr(ev, "parent_comm") != comm || fieldStr(ev, "tgid") != strconv.Itoa(cmd.Process.Pid) || fieldStr(ev, "child_pid") == "0" {
			t.Fatalf("event %+v (child pid %d)", ev, cmd.Process.Pid)
		}
	}
}
