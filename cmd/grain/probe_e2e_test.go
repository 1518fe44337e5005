package main

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/grain-ebpf/grain/engine"
	"github.com/grain-ebpf/grain/engine/hook"
	"github.com/grain-ebpf/grain/internal/netns"
)

// runRenamed runs a copy of the test binary named name (its comm) that
// reads the files args name, as cat would (TestMain, catEnv), and returns
// how it ended. Not a copy of /bin/cat: in the VM guests that is busybox,
// which picks its applet by name.
func runRenamed(t *testing.T, name string, args ...string) error {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), catEnv+"=1")
	return cmd.Run()
}

const blockHTTPPolicy = `block_http: {
	xdp: interfaces: []
	match: {protocol: "tcp", payload: "HTTP/1.1"}
	then: "drop"
}
`

const execPolicy = `execs: {
	tracepoint: "sched/sched_process_exec"
	args: [{field: "filename", type: "string"}]
	emit: {event: "exec", fields: ["tgid", "comm", "filename"]}
	count: {metric: "process.execs", by: ["comm"]}
}
`

// TestEndToEndKernelHooks runs grain with packet and kernel-hook policies
// in one tree: a real exec produces its event line and its in-kernel count
// on the Prometheus endpoint, grain status names each hook's mechanism, a
// reload adds an enforcing syscall policy (a process opening the canary is
// killed), a broken edit (a tracepoint the kernel lacks) keeps everything
// in force, and the packet policy drops HTTP/1.1 throughout.
func TestEndToEndKernelHooks(t *testing.T) {
	p := netns.NewPair(t)
	port := p.HTTPServer(t)
	dir := t.TempDir()
	writePolicy(t, filepath.Join(dir, "http.cue"), blockHTTPPolicy)
	writePolicy(t, filepath.Join(dir, "execs.cue"), execPolicy)
	sock := filepath.Join(t.TempDir(), "grain.sock")
	metricsAddr := p.ServerIP4.String() + ":9465"
	d := startGrain(t, p.ServerNS, "run", "--policies", dir, "--interface", p.ServerIf,
		"--pin-path", netns.PinDir(t), "--status-socket", sock, "--metrics-addr", metricsAddr)

	const name = "grain-e2e-exec"
	if err := runRenamed(t, name, "/dev/null"); err != nil {
		t.Fatal(err)
	}
	d.waitEvent(t, map[string]any{"event": "exec", "comm": name})
	if !waitFor(func() bool {
		return scrapeLine(t, p.ServerNS, metricsAddr, "grain_process_execs_total{", `process_executable_name="`+name+`"`) == "1"
	}) {
		t.Errorf("grain_process_execs_total for comm %s is not 1; stderr:\n%s", name, d.log())
	}
	var st engine.Status
	out, err := exec.Command("ip", "netns", "exec", p.ServerNS, buildGrainPath(t), "status", "--status-socket", sock).Output()
	if err != nil {
		t.Fatalf("grain status: %v", err)
	}
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("grain status: %v: %s", err, out)
	}
	if len(st.Hooks) != 1 || st.Hooks[0].Target != "sched/sched_process_exec" || st.Hooks[0].Mechanism != hook.MechanismTracepoint {
		t.Errorf("status hooks %+v, want the exec tracepoint attached as a tracepoint", st.Hooks)
	}
	if !blocked(t, p, port, "GET / HTTP/1.1") {
		t.Error("HTTP/1.1 answered beside kernel hooks, want it dropped")
	}

	// A reload adds an enforcing policy.
	canary := filepath.Join(t.TempDir(), "canary")
	os.WriteFile(canary, nil, 0o644)
	writePolicy(t, filepath.Join(dir, "kill.cue"), `kill: {
	syscall: ["openat", "openat2"]
	args: [{index: 1, type: "user_string", name: "filename"}]
	match: args: filename: "`+canary+`"
	signal: "SIGKILL"
	emit: {event: "killed", fields: ["tgid", "comm", "filename"]}
}
`)
	d.waitLog(t, "policies applied", 2)
	const victim = "grain-e2e-kill"
	err = runRenamed(t, victim, canary)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("cat of the canary ended with %v, want killed by SIGKILL; stderr:\n%s", err, d.log())
	}
	d.waitEvent(t, map[string]any{"event": "killed", "comm": victim, "filename": canary})
	if err := runRenamed(t, victim, "/dev/null"); err != nil {
		t.Errorf("cat of another file ended with %v, want exit 0", err)
	}

	// A broken edit: the kernel has no such tracepoint. Everything stays.
	writePolicy(t, filepath.Join(dir, "broken.cue"), `broken: {
	tracepoint: "sched/no_such_tracepoint"
	emit: event: "never"
}
`)
	d.waitLog(t, "reload failed", 1)
	if !strings.Contains(d.log(), "no_such_tracepoint") {
		t.Errorf("the failed reload does not name the missing tracepoint; stderr:\n%s", d.log())
	}
	err = runRenamed(t, victim, canary)
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("after a broken edit, cat of the canary ended with %v, want still killed", err)
	}
	if !blocked(t, p, port, "GET / HTTP/1.1") {
		t.Error("after a broken edit, HTTP/1.1 answered, want still dropped")
	}
	d.stop(t)
}

// scrapeLine returns the value of the first series of grain's Prometheus
// endpoint that starts with prefix and contains label, or "".
func scrapeLine(t *testing.T, ns, addr, prefix, label string) string {
	t.Helper()
	body := scrapeBody(t, ns, addr)
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, prefix) && strings.Contains(l, label) {
			return l[strings.LastIndexByte(l, ' ')+1:]
		}
	}
	return ""
}
