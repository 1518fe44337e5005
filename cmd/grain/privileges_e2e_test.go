package main

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// nobody is the user of the least-privileged grain.
const nobody = 65534

// lockedWriter collects a daemon's output as its cmd.Stderr or cmd.Stdout:
// it appends each write to out (d.stderr if nil) under d.mu, then hands
// seen, if set, all of out so far, still under d.mu (a line may arrive in
// pieces). Unlike a pipe, which Wait closes as the process exits, a writer
// has Wait return only after the last write.
type lockedWriter struct {
	d    *grainProcess
	out  *strings.Builder
	seen func(all string)
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.d.mu.Lock()
	defer w.d.mu.Unlock()
	out := w.out
	if out == nil {
		out = &w.d.stderr
	}
	n, err := out.Write(p)
	if w.seen != nil {
		w.seen(out.String())
	}
	return n, err
}

// worldDir makes a directory that nobody may read and enter, owned by owner.
func worldDir(t *testing.T, owner int) string {
	t.Helper()
	// Not in t.TempDir(): its parent is 0700.
	dir, err := os.MkdirTemp("", "grain-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, owner, owner); err != nil {
		t.Fatal(err)
	}
	return dir
}

// capableUserFiles prepares what an operator gives a least-privileged
// grain: a copy of the binary and of examples/block-http that any user may
// read, and a pin directory on bpffs owned by nobody.
func capableUserFiles(t *testing.T) (bin, policyDir, pins string) {
	t.Helper()
	root := worldDir(t, 0)
	bin = filepath.Join(root, "grain")
	copyFile(t, buildGrainPath(t), bin, 0o755)
	policyDir = filepath.Join(root, "policies")
	if err := os.Mkdir(policyDir, 0o755); err != nil {
		t.Fatal(err)
	}
	copyFile(t, "../../examples/block-http/policy.cue", filepath.Join(policyDir, "policy.cue"), 0o644)
	pins = netns.PinDir(t)
	if err := os.Mkdir(pins, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(pins, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	return bin, policyDir, pins
}

// startAsCapableUser starts bin with args as nobody holding only CAP_BPF,
// CAP_NET_ADMIN and CAP_PERFMON, in namespace ns; it is killed with the test.
func startAsCapableUser(t *testing.T, ns, bin string, args ...string) *grainProcess {
	t.Helper()
	d := &grainProcess{cmd: exec.Command(bin, args...)}
	d.cmd.Stdout = io.Discard
	d.cmd.Stderr = lockedWriter{d: d}
	d.cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential:  &syscall.Credential{Uid: nobody, Gid: nobody},
		AmbientCaps: []uintptr{unix.CAP_BPF, unix.CAP_NET_ADMIN, unix.CAP_PERFMON},
	}
	// Started from a thread in the namespace: the child is born there
	// (entering one later would need CAP_SYS_ADMIN).
	if err := netns.Do(ns, d.cmd.Start); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.cmd.Process.Kill(); d.cmd.Wait() })
	return d
}

// copyFile copies src to dst with mode.
func copyFile(t *testing.T, src, dst string, mode os.FileMode) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestRunAsUserWithCapabilities: grain run by a user other than root that
// holds only CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (a least-privileged
// DaemonSet) enforces its policy, checked with real traffic, answers
// `grain status`, follows its policy file being made unreadable to it and
// readable again (chmod), and detaches on SIGTERM. Its pin directory is one the
// operator made for that user on a bpffs: such a user can neither mount
// bpffs nor create directories in one that root owns.
func TestRunAsUserWithCapabilities(t *testing.T) {
	vmtest.HostOnly(t, "bpf's TestCheckPrivilegesAsUser checks what each guest's kernel allows a capable user")
	p := netns.NewPair(t)
	port := p.HTTPServer(t)

	bin, policyDir, pins := capableUserFiles(t)
	sock := filepath.Join(worldDir(t, nobody), "grain.sock")
	if err := os.Chmod(filepath.Dir(pins), 0o711); err != nil {
		t.Fatal(err)
	}

	d := startAsCapableUser(t, p.ServerNS, bin, "run", "--policies", policyDir, "--interface", p.ServerIf,
		"--pin-path", pins, "--status-socket", sock, "--debounce", "100ms")
	d.waitLog(t, "enforcing", 1)
	t.Logf("grain as nobody:\n%s", d.log())

	if !blocked(t, p, port, "GET / HTTP/1.1") || blocked(t, p, port, "GET / HTTP/1.0") {
		t.Fatal("grain as nobody: want HTTP/1.1 blocked and HTTP/1.0 passed")
	}
	if st := grainStatus(t, sock); st.LastResult != "success" || len(st.Rules) != 1 {
		t.Errorf("grain status of grain as nobody: %+v", st)
	}

	// A policy file made unreadable to grain's user, then readable again:
	// each chmod is a change, and the status follows the tree on disk.
	file := filepath.Join(policyDir, "policy.cue")
	failed := strings.Count(d.log(), "reload failed")
	if err := os.Chmod(file, 0o600); err != nil {
		t.Fatal(err)
	}
	d.waitLog(t, "reload failed", failed+1)
	if st := grainStatus(t, sock); st.LastResult != "failure" || !strings.Contains(st.LastError, "permission denied") {
		t.Errorf("status with the policy file unreadable: %s, %q", st.LastResult, st.LastError)
	}
	if err := os.Chmod(file, 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for st := grainStatus(t, sock); st.LastResult != "success"; st = grainStatus(t, sock) {
		if time.Now().After(deadline) {
			t.Fatalf("10 s after the policy file was made readable again, the status says %s: %s", st.LastResult, st.LastError)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !blocked(t, p, port, "GET / HTTP/1.1") {
		t.Fatal("grain as nobody: HTTP/1.1 no longer blocked after the chmods")
	}
	d.stop(t)
	if blocked(t, p, port, "GET / HTTP/1.1") {
		t.Error("grain as nobody exited, and HTTP/1.1 is still blocked")
	}
}
