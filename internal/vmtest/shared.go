package vmtest

import (
	"bytes"
	"os"
	"sync"
	"testing"
)

// HostOnlyPrefix starts the skip message of HostOnly, by which the runner
// counts such skips apart from a missing feature.
const HostOnlyPrefix = "host-only: "

// HostOnly skips t in a guest of the VM runner. The runner runs whole
// packages, so every test runs in every guest unless it says otherwise: a
// test whose outcome cannot depend on the kernel (pure logic, or the same
// bytecode run on the same tables by BPF_PROG_TEST_RUN, which one kernel
// shows as well as five) calls HostOnly, with why, and runs on the host
// only. Tests of loading and verifying, attaching, timers, kernel hooks and
// the refusal of old kernels do not call it.
func HostOnly(t testing.TB, why string) {
	t.Helper()
	if Guest() {
		t.Skip(HostOnlyPrefix + why)
	}
}

// RequireRoot skips t unless it runs as root, which loading BPF programs,
// network namespaces and bpffs need (make test and the guests run as root).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (BPF programs, network namespaces, bpffs): run as root, as make test does")
	}
}

// LockedBuffer is a bytes.Buffer that goroutines the test does not own (a
// logger, a watcher, a command's output) may write while the test reads it.
type LockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *LockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns what was written so far.
func (b *LockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Bytes returns a copy of what was written so far.
func (b *LockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.b.Bytes())
}
