package main

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/vmtest"
	"github.com/grain-ebpf/grain/policies"
)

// refuseBPFEnv makes the test binary a launcher: it installs a seccomp
// filter that fails the bpf() system call with the errno the variable holds,
// as a container runtime's profile does, then executes its arguments.
const refuseBPFEnv = "GRAIN_TEST_REFUSE_BPF_ERRNO"

// catEnv makes the test binary read the files its arguments name and exit,
// as cat does (runRenamed).
const catEnv = "GRAIN_TEST_CAT"

func TestMain(m *testing.M) {
	policies.ServeWorkerIfAsked()
	if os.Getenv(catEnv) != "" {
		for _, name := range os.Args[1:] {
			if _, err := os.ReadFile(name); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
		os.Exit(0)
	}
	if v := os.Getenv(refuseBPFEnv); v != "" {
		errno, err := strconv.Atoi(v)
		if err == nil {
			err = refuseBPF(syscall.Errno(errno))
		}
		args := argsAfterDashes(os.Args)
		if err == nil && len(args) == 0 {
			err = fmt.Errorf("no command after -- in %q", os.Args)
		}
		if err == nil {
			err = syscall.Exec(args[0], args, os.Environ())
		}
		fmt.Fprintln(os.Stderr, "seccomp launcher:", err)
		os.Exit(3)
	}
	os.Exit(m.Run())
}

// argsAfterDashes is what follows "--" on the launcher's command line.
func argsAfterDashes(args []string) []string {
	for i, a := range args {
		if a == "--" {
			return args[i+1:]
		}
	}
	return nil
}

// refuseBPF installs, for every thread of the process and what it executes,
// a seccomp filter under which bpf() fails with errno. It does not check the
// architecture: a test's filter, not a sandbox.
func refuseBPF(errno syscall.Errno) error {
	const (
		retErrno = 0x00050000 // SECCOMP_RET_ERRNO
		retAllow = 0x7fff0000 // SECCOMP_RET_ALLOW
	)
	filter := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 0}, // seccomp_data.nr
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: unix.SYS_BPF},
		{Code: unix.BPF_RET | unix.BPF_K, K: retErrno | uint32(errno)},
		{Code: unix.BPF_RET | unix.BPF_K, K: retAllow},
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %w", err)
	}
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&prog))); e != 0 {
		return fmt.Errorf("seccomp: %w", e)
	}
	return nil
}

// A container whose seccomp profile refuses bpf() (Docker's default
// does, with EPERM), and a kernel built without the bpf() system call
// (ENOSYS): grain says so, not that the kernel lacks XDP.
func TestRunBPFUnavailable(t *testing.T) {
	vmtest.HostOnly(t, "a seccomp filter stands in for the kernel's refusal")
	vmtest.RequireRoot(t) // the error must come from the refused bpf() call, not from not being root
	bin := buildGrainPath(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		errno syscall.Errno
		want  string
	}{
		{unix.EPERM, "the kernel refuses the bpf() system call (operation not permitted)"},
		{unix.ENOSYS, "this kernel has no bpf() system call"},
	} {
		cmd := exec.Command(self, "--", bin, "run", "--policies", "../../examples/block-http", "--interface", "lo", "--pin-path", netns.PinDir(t))
		cmd.Env = append(os.Environ(), refuseBPFEnv+"="+strconv.Itoa(int(c.errno)))
		out, err := cmd.CombinedOutput()
		t.Logf("bpf() failing with %v: %s", c.errno, out)
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("bpf() failing with %v: %v\n%s\nwant a message with %q", c.errno, err, out, c.want)
		}
	}
}
