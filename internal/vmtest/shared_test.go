package vmtest

import (
	"strings"
	"sync"
	"testing"
)

// HostOnly lets a test run on the host and skips it in a guest, saying why.
func TestHostOnly(t *testing.T) {
	HostOnly(t, "checks HostOnly by pretending to be on the host and in a guest")
	ran := false
	t.Run("host", func(t *testing.T) {
		HostOnly(t, "pure logic")
		ran = true
	})
	if !ran {
		t.Fatal("HostOnly skipped on the host")
	}
	t.Setenv(KernelEnv, "6.1.0-56-amd64")
	t.Run("guest", func(t *testing.T) {
		defer func() {
			if !t.Skipped() {
				t.Error("HostOnly did not skip in a guest")
			}
		}()
		HostOnly(t, "pure logic")
		t.Error("HostOnly returned in a guest")
	})
}

func TestLockedBuffer(t *testing.T) {
	var b LockedBuffer
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				b.Write([]byte("x"))
				_ = b.String()
			}
		})
	}
	wg.Wait()
	if got := b.String(); got != strings.Repeat("x", 800) {
		t.Fatalf("got %d bytes, want 800", len(got))
	}
	copied := b.Bytes()
	copied[0] = 'y'
	if b.String()[0] != 'x' {
		t.Fatal("Bytes returned the buffer itself, not a copy")
	}
}
