package engine

import (
	"testing"

	"github.com/grain-ebpf/grain/engine/hook"
	"github.com/grain-ebpf/grain/internal/hookchild"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// The tests trigger kernel-hook rules from child processes (hookchild).
func init() { hookchild.Serve() }

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
