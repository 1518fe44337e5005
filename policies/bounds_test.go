package policies

import (
	"errors"
	"path/filepath"
	"syscall"
	"testing"
)

// A file swapped for a FIFO after the walk checked it is refused without
// blocking the load (a FIFO without a writer blocks a plain open).
func TestReadBoundedRefusesAFIFO(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "p.cue")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := readBounded(fifo)
	var list ErrorList
	if !errors.As(err, &list) || list[0].Pos.File != fifo {
		t.Fatalf("got %v, want an error naming %s", err, fifo)
	}
}
