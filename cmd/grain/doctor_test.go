package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// runDoctor runs `grain doctor --format json` with cmd's settings and
// returns its report and exit code.
func runDoctor(t *testing.T, cmd *exec.Cmd) (*doctorReport, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else if err != nil {
		t.Fatalf("run %v: %v", cmd.Args, err)
	}
	var r doctorReport
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("grain doctor (exit %d) printed no JSON report: %v\nstdout: %s\nstderr: %s", code, err, stdout.String(), stderr.String())
	}
	t.Logf("%s: grain doctor exit %d: %s", vmtest.Where(), code, stdout.String())
	return &r, code
}

func (r *doctorReport) check(t *testing.T, name string) doctorCheck {
	t.Helper()
	for _, c := range r.Checks {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("the report has no %q check", name)
	return doctorCheck{}
}

// kernelAtLeast reports whether release (uname -r) is major.minor or later.
func kernelAtLeast(t *testing.T, release string, major, minor int) bool {
	t.Helper()
	var ma, mi int
	if _, err := fmt.Sscanf(release, "%d.%d", &ma, &mi); err != nil {
		t.Fatalf("kernel release %q does not parse: %v", release, err)
	}
	return ma > major || ma == major && mi >= minor
}

// On the host and in each guest kernel of make test, as root: doctor says
// packet policies can run, and what each kernel has, exactly: tcx from
// 6.6, raw tracepoint cookies from 6.10, kprobes and fentry where the
// runner declares them (GRAIN_VM_FEATURES).
func TestDoctor(t *testing.T) {
	vmtest.RequireRoot(t)
	pins := netns.PinDir(t)
	r, code := runDoctor(t, exec.Command(buildGrainPath(t), "doctor", "--format", "json", "--pin-path", pins))
	if code != 0 || !r.PacketPolicies {
		t.Fatalf("exit %d, packet_policies %v: want 0 and true on %s", code, r.PacketPolicies, vmtest.Where())
	}
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	release := unix.ByteSliceToString(u.Release[:])
	if r.Kernel != release {
		t.Errorf("kernel %q, uname says %q", r.Kernel, release)
	}
	for _, name := range []string{"kernel", "capabilities", "bpf_syscall", "seccomp", "xdp", "ring_buffer", "xdp_program", "bpffs", "btf", "attach_cookie"} {
		if c := r.check(t, name); !c.OK {
			t.Errorf("%s: %s is missing on a kernel that has it: %s", vmtest.Where(), name, c.Detail)
		}
	}
	if c := r.check(t, "bpffs"); !c.Required || !strings.Contains(c.Detail, filepath.Dir(pins)) {
		t.Errorf("bpffs check %+v: want it required and naming %s", c, filepath.Dir(pins))
	}
	want := map[string]bool{
		"tcx":                   kernelAtLeast(t, release, 6, 6),
		"raw_tracepoint_cookie": kernelAtLeast(t, release, 6, 10),
	}
	if vmtest.Guest() {
		want["kprobes"] = vmtest.Expected("kprobe")
		want["fentry"] = vmtest.Expected("fentry")
	} else {
		// The host declares nothing: kprobes are there when the kernel
		// shows either of their interfaces.
		_, pmu := os.Stat("/sys/bus/event_source/devices/kprobe/type")
		_, events := os.Stat("/sys/kernel/tracing/kprobe_events")
		want["kprobes"] = pmu == nil || events == nil
		t.Logf("host: fentry %v (%s)", r.check(t, "fentry").OK, r.check(t, "fentry").Detail)
	}
	for name, has := range want {
		if c := r.check(t, name); c.OK != has {
			t.Errorf("%s: %s ok=%v (%s), want %v", vmtest.Where(), name, c.OK, c.Detail, has)
		}
	}
	if c := r.check(t, "raw_tracepoint_cookie"); c.Required {
		t.Error("raw tracepoint cookies are marked required for packet policies")
	}
}

// The Debian 5.10 and Ubuntu 5.13 guests: doctor exits 1, saying why.
func TestOldKernelDoctor(t *testing.T) {
	if !vmtest.Expected("older-than-5.15") {
		t.Skipf("%s: runs in the 5.10 and 5.13 guests of make test (vm-test.sh --features older-than-5.15)", vmtest.Where())
	}
	vmtest.RequireRoot(t)
	r, code := runDoctor(t, exec.Command(buildGrainPath(t), "doctor", "--format", "json", "--pin-path", netns.PinDir(t)))
	if code != 1 || r.PacketPolicies {
		t.Fatalf("exit %d, packet_policies %v: want 1 and false on %s", code, r.PacketPolicies, vmtest.Where())
	}
	if c := r.check(t, "kernel"); c.OK || !strings.Contains(c.Detail, "older than grain supports (5.15)") {
		t.Errorf("kernel check %+v: want it failed, naming 5.15", c)
	}
	if c := r.check(t, "attach_cookie"); c.OK {
		t.Errorf("attach cookies reported on %s (Linux 5.15 brought them)", vmtest.Where())
	}
	if c := r.check(t, "xdp_program"); c.OK {
		t.Errorf("grain's XDP program reported loading on %s", vmtest.Where())
	}
	for _, name := range []string{"capabilities", "bpf_syscall", "xdp", "ring_buffer"} {
		if c := r.check(t, name); !c.OK {
			t.Errorf("%s: %s missing: %s", vmtest.Where(), name, c.Detail)
		}
	}
}

// A container whose seccomp profile refuses bpf(): doctor names the
// profile and exits 1.
func TestDoctorSeccompRefusesBPF(t *testing.T) {
	vmtest.HostOnly(t, "a seccomp filter stands in for a container runtime's profile")
	vmtest.RequireRoot(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "--", buildGrainPath(t), "doctor", "--format", "json", "--pin-path", netns.PinDir(t))
	cmd.Env = append(os.Environ(), refuseBPFEnv+"="+strconv.Itoa(int(unix.EPERM)))
	r, code := runDoctor(t, cmd)
	if code != 1 || r.PacketPolicies {
		t.Fatalf("exit %d, packet_policies %v: want 1 and false", code, r.PacketPolicies)
	}
	if c := r.check(t, "seccomp"); c.OK || !strings.Contains(c.Detail, "seccomp profile") || !strings.Contains(c.Detail, "refuses bpf()") {
		t.Errorf("seccomp check %+v: want it failed, naming the profile", c)
	}
	if c := r.check(t, "capabilities"); !c.OK {
		t.Errorf("capabilities check %+v: root holds them", c)
	}
	if c := r.check(t, "xdp_program"); c.OK || !strings.Contains(c.Detail, "not probed") {
		t.Errorf("xdp_program check %+v: want it not probed", c)
	}
}

// A user without capabilities: doctor names the missing ones, exits 1.
// With the file capabilities the image gives its binary (deploy/image),
// the same user can: grain raises them itself.
func TestDoctorAsUser(t *testing.T) {
	vmtest.HostOnly(t, "what a capable user may do per kernel is bpf's TestCheckPrivilegesAsUser")
	vmtest.RequireRoot(t)
	root := worldDir(t, 0)
	bin := filepath.Join(root, "grain")
	// Without cgo, as the image's: grain raises capabilities on every thread.
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := build.CombinedOutput()
	if err != nil {
		t.Fatalf("build grain: %v\n%s", err, out)
	}
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	pins := netns.PinDir(t)
	if err := os.Chmod(filepath.Dir(pins), 0o711); err != nil {
		t.Fatal(err)
	}
	asNobody := func() *exec.Cmd {
		cmd := exec.Command(bin, "doctor", "--format", "json", "--pin-path", pins)
		cmd.Dir = root
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		return cmd
	}

	r, code := runDoctor(t, asNobody())
	if code != 1 || r.PacketPolicies {
		t.Fatalf("nobody without capabilities: exit %d, packet_policies %v: want 1 and false", code, r.PacketPolicies)
	}
	if c := r.check(t, "capabilities"); c.OK || !strings.Contains(c.Detail, "CAP_BPF") || !strings.Contains(c.Detail, "CAP_NET_ADMIN") {
		t.Errorf("capabilities check %+v: want it failed, naming CAP_BPF and CAP_NET_ADMIN", c)
	}

	// Root prepares the pin directory for nobody, as the init container does.
	prep := exec.Command(bin, "doctor", "--format", "json", "--pin-path", pins, "--pin-owner", fmt.Sprintf("%d:%d", nobody, nobody))
	if r, code := runDoctor(t, prep); code != 0 || !r.check(t, "bpffs").OK {
		t.Fatalf("doctor --pin-owner as root: exit %d", code)
	}
	var st unix.Stat_t
	if err := unix.Stat(pins, &st); err != nil || st.Uid != nobody || st.Mode&0o777 != 0o700 {
		t.Fatalf("pin directory after --pin-owner: uid %d mode %o (%v), want %d and 700", st.Uid, st.Mode&0o777, err, nobody)
	}

	if err := unix.Setxattr(bin, "security.capability", imageFileCapabilities(), 0); err != nil {
		t.Fatalf("set file capabilities: %v", err)
	}
	r, code = runDoctor(t, asNobody())
	if code != 0 || !r.PacketPolicies {
		t.Fatalf("nobody with file capabilities: exit %d, packet_policies %v: want 0 and true", code, r.PacketPolicies)
	}
	if c := r.check(t, "capabilities"); !strings.Contains(c.Detail, "CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN") || strings.Contains(c.Detail, "SYS_ADMIN") {
		t.Errorf("capabilities check %+v: want exactly the three file capabilities", c)
	}
}

// imageFileCapabilities is the security.capability value deploy/image
// gives the image's binary: CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN
// permitted, not effective (deploy/image's tests read it from the image).
func imageFileCapabilities() []byte {
	permitted := uint64(1)<<unix.CAP_NET_ADMIN | 1<<unix.CAP_PERFMON | 1<<unix.CAP_BPF
	v := make([]byte, 20)
	le := func(off int, x uint32) {
		v[off], v[off+1], v[off+2], v[off+3] = byte(x), byte(x>>8), byte(x>>16), byte(x>>24)
	}
	le(0, 0x02000000) // VFS_CAP_REVISION_2, no effective flag
	le(4, uint32(permitted))
	le(12, uint32(permitted>>32))
	return v
}
