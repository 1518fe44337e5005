package bpf

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/grain-ebpf/grain/internal/vmtest"
)

// asUserEnv makes the test binary, run by TestCheckPrivilegesAsUser as
// another user, the child that checks what it may do.
const asUserEnv = "GRAIN_TEST_PRIVILEGES_CHILD"

// nobody is the unprivileged user the child runs as.
const nobody = 65534

// runAsNobody runs this test binary's test name as uid/gid nobody holding
// caps, from a copy that nobody may execute, and returns its output.
func runAsNobody(t *testing.T, name string, caps ...uintptr) (string, error) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// Not in t.TempDir(): its parent is 0700.
	dir, err := os.MkdirTemp("", "grain-privileges-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "bpf.test")
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^"+name+"$", "-test.v")
	cmd.Env = append(os.Environ(), asUserEnv+"=1")
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential:  &syscall.Credential{Uid: nobody, Gid: nobody},
		AmbientCaps: caps,
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// A process of another user than root that holds CAP_BPF, CAP_NET_ADMIN and
// CAP_PERFMON (a least-privileged container) passes CheckPrivileges and
// loads the XDP program; without them it is refused, naming what it lacks.
func TestCheckPrivilegesAsUser(t *testing.T) {
	if os.Getenv(asUserEnv) != "" {
		// The child, as nobody.
		if os.Geteuid() == 0 {
			t.Fatal("the child runs as root")
		}
		missing, err := missingCapabilities()
		if err != nil {
			t.Fatal(err)
		}
		err = CheckPrivileges()
		t.Logf("missing capabilities: %v; CheckPrivileges: %v", missing, err)
		if len(missing) > 0 {
			if err == nil || !strings.Contains(err.Error(), strings.Join(missing, ", ")) {
				t.Fatalf("CheckPrivileges without %v: %v, want an error naming them", missing, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("CheckPrivileges with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON: %v", err)
		}
		x, err := LoadXDP(XDPOptions{})
		if err != nil {
			t.Fatalf("LoadXDP with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON: %v", err)
		}
		defer x.Close()
		if _, err := x.Program(); err != nil {
			t.Fatalf("load grain_xdp with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON: %v", err)
		}
		t.Log("loaded the XDP program")
		return
	}
	vmtest.RequireRoot(t) // to switch to nobody and grant capabilities

	out, err := runAsNobody(t, t.Name(), unix.CAP_BPF, unix.CAP_NET_ADMIN, unix.CAP_PERFMON)
	t.Logf("as nobody with CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON:\n%s", out)
	if err != nil || !strings.Contains(out, "loaded the XDP program") {
		t.Errorf("as nobody with CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON: %v", err)
	}

	out, err = runAsNobody(t, t.Name(), unix.CAP_NET_ADMIN)
	t.Logf("as nobody with CAP_NET_ADMIN only:\n%s", out)
	if err != nil || !strings.Contains(out, "missing capabilities: [CAP_BPF CAP_PERFMON]") {
		t.Errorf("as nobody with CAP_NET_ADMIN only: %v", err)
	}
}
