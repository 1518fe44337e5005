package engine

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/grain-ebpf/grain/engine/hook"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// The reload tests trigger kernel-hook rules from child processes: grain
// filters out its own process (the test binary) in the kernel. A child is
// this test binary started with GRAIN_HOOK_CHILD set.
func init() {
	mode := os.Getenv("GRAIN_HOOK_CHILD")
	if mode == "" {
		return
	}
	args := strings.Fields(mode)
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
	}
	os.Exit(0)
}

// runChild runs this test binary as a child doing mode.
func runChild(t *testing.T, mode string) {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "GRAIN_HOOK_CHILD="+mode)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child %q: %v\n%s", mode, err, out)
	}
}

// newTestHooks sets up the kernel hooks, closed when t ends.
func newTestHooks(t *testing.T) *hook.Hooks {
	t.Helper()
	vmtest.RequireRoot(t)
	p, err := hook.New(hook.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}
