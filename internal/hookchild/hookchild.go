// Package hookchild runs real activity for kernel-hook tests in child
// processes: grain filters out its own process (the test binary) in the
// kernel, so what a test wants a hook to see must come from another one.
// A child is the test binary itself started with Env set (its package calls
// Serve from an init function), or a copy of it under another name (Copy),
// whose processes then have a comm of their own.
package hookchild

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"unsafe"
)

// Env holds the child's mode; a process started without it is the test.
const Env = "GRAIN_HOOK_CHILD"

// Serve runs the child's mode and exits when the process is a child; it
// returns at once otherwise. Call it from an init function of the test
// package, before the test framework parses its flags.
func Serve() {
	mode := os.Getenv(Env)
	if mode == "" {
		return
	}
	os.Exit(run(strings.Fields(mode)))
}

func run(args []string) int {
	atoi := func(s string) int { n, _ := strconv.Atoi(s); return n }
	switch args[0] {
	case "close": // close N FD: N failing close(FD) calls
		for range atoi(args[1]) {
			syscall.Close(atoi(args[2]))
		}
	case "lseek": // lseek N FD OFFSET
		for range atoi(args[1]) {
			syscall.Seek(atoi(args[2]), int64(atoi(args[3])), 0)
		}
	case "open": // open PATH...: open and close each
		for _, p := range args[1:] {
			if fd, err := syscall.Open(p, syscall.O_RDONLY, 0); err == nil {
				syscall.Close(fd)
			}
		}
	case "connect": // connect ADDR: one TCP connection
		c, err := net.Dial("tcp", args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		c.Close()
	case "alternate": // alternate N FD1 FD2: N close calls, FD1 and FD2 in turn
		a, b := atoi(args[2]), atoi(args[3])
		for i := range atoi(args[1]) {
			if i%2 == 0 {
				syscall.Close(a)
			} else {
				syscall.Close(b)
			}
		}
	case "alternate-until-eof": // alternate-until-eof FD1 FD2: as alternate, until stdin ends
		a, b := atoi(args[1]), atoi(args[2])
		var ended atomic.Bool
		go func() {
			io.Copy(io.Discard, os.Stdin)
			ended.Store(true)
		}()
		for !ended.Load() {
			syscall.Close(a)
			syscall.Close(b)
		}
	case "rename": // rename N NAME: N prctl(PR_SET_NAME, NAME) from one thread
		RenameLoop(atoi(args[1]), args[2])
	case "steps": // steps STEP...: getppid:N (N getppid calls), comm:NAME (prctl(PR_SET_NAME)), sync (a line out, wait for one in)
		return steps(args[1:])
	case "wait": // wait MODE...: read a line from stdin, then run MODE
		bufio.NewReader(os.Stdin).ReadString('\n')
		return run(args[1:])
	default:
		fmt.Fprintf(os.Stderr, "hookchild: unknown mode %q\n", args[0])
		return 2
	}
	return 0
}

// steps runs its steps on one thread (comm is a thread's): a test can
// reload between two syncs while the child waits, and know every call
// before a sync is made.
func steps(args []string) int {
	runtime.LockOSThread()
	in := bufio.NewReader(os.Stdin)
	for _, step := range args {
		op, arg, _ := strings.Cut(step, ":")
		switch op {
		case "getppid":
			n, _ := strconv.Atoi(arg)
			for range n {
				syscall.RawSyscall(syscall.SYS_GETPPID, 0, 0, 0)
			}
		case "comm":
			b := append([]byte(arg), 0)
			if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_NAME, uintptr(unsafe.Pointer(&b[0])), 0); errno != 0 {
				fmt.Fprintln(os.Stderr, "prctl(PR_SET_NAME):", errno)
				return 1
			}
		case "sync":
			fmt.Println("sync")
			if _, err := in.ReadString('\n'); err != nil {
				return 1
			}
		default:
			fmt.Fprintf(os.Stderr, "hookchild: unknown step %q\n", step)
			return 2
		}
	}
	return 0
}

// RenameLoop calls prctl(PR_SET_NAME, name) n times from one thread (each
// fires the task_rename tracepoint).
func RenameLoop(n int, name string) {
	runtime.LockOSThread()
	b := append([]byte(name), 0)
	for range n {
		syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_NAME, uintptr(unsafe.Pointer(&b[0])), 0)
	}
}

// Run runs the test binary as a child doing mode and waits for it.
func Run(t testing.TB, mode string) {
	t.Helper()
	if out, err := Command(os.Args[0], mode).CombinedOutput(); err != nil {
		t.Fatalf("child %q: %v\n%s", mode, err, out)
	}
}

// Command is bin (the test binary or a Copy) as a child doing mode, not yet
// started.
func Command(bin, mode string) *exec.Cmd {
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), Env+"="+mode)
	return cmd
}

// SelfComm is the comm of a child Run starts: the test binary's name, cut
// to the kernel's 15 bytes (pkg.test here, pkg_sub.test in a guest).
func SelfComm() string {
	name := filepath.Base(os.Args[0])
	return name[:min(len(name), 15)]
}

// Copy copies the test binary to a temporary file named name: its
// processes have comm name (a system binary could be a busybox applet that
// would not run under another name). Run it with Command.
func Copy(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return dst
}
