package vmtest

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
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

// StreamUntilDrained runs stream (an engine's StreamEvents: events as JSON
// lines) until retired (its generation.Switch's Retired) says that every
// event of the replaced rule sets has been read, at most 10 s, and returns
// the events it wrote.
func StreamUntilDrained(t testing.TB, stream func(context.Context, io.Writer) error, retired func() int) []map[string]any {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out LockedBuffer
	done := make(chan error, 1)
	go func() { done <- stream(ctx, &out) }()
	for deadline := time.Now().Add(10 * time.Second); retired() > 0 && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var events []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("not JSON: %v: %q", err, line)
		}
		events = append(events, ev)
	}
	return events
}
