package daemon

import (
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/grain-ebpf/grain/internal/vmtest"
)

// statusReloader serves the status socket only: its tests never connect to
// the socket it serves, so it needs no engine.
func statusReloader(t *testing.T) *Reloader {
	return &Reloader{Log: slog.New(slog.NewTextHandler(t.Output(), nil))}
}

// --status-socket never deletes what is not a stale socket: a regular file
// or a directory at its path stays, and the error says what is there.
func TestServeStatusRefusesNonSockets(t *testing.T) {
	vmtest.HostOnly(t, "the status socket, in userspace")
	dir := t.TempDir()
	file := filepath.Join(dir, "precious")
	if err := os.WriteFile(file, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "sub")
	if err := os.MkdirAll(filepath.Join(sub, "inner"), 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{file: "a regular file is there", sub: "a directory is there", link: "a symbolic link is there"} {
		ln, err := statusReloader(t).ServeStatus(path)
		if err == nil {
			ln.Close()
			t.Errorf("ServeStatus(%s): no error", path)
		} else if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "not a socket") {
			t.Errorf("ServeStatus(%s): %v; want it to name the path and say %q", path, err, want)
		}
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "data" {
		t.Errorf("the regular file at the socket path: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(sub, "inner")); err != nil {
		t.Errorf("the directory at the socket path: %v", err)
	}
}

// A socket that someone answers on is left alone; a stale one is replaced.
func TestServeStatusSocketInUseOrStale(t *testing.T) {
	vmtest.HostOnly(t, "the status socket, in userspace")
	path := filepath.Join(t.TempDir(), "grain.sock")
	other, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	other.(*net.UnixListener).SetUnlinkOnClose(false)
	if ln, err := statusReloader(t).ServeStatus(path); err == nil {
		ln.Close()
		t.Error("ServeStatus on a socket in use: no error")
	} else if !strings.Contains(err.Error(), "another grain answers") {
		t.Errorf("ServeStatus on a socket in use: %v", err)
	}
	other.Close() // the socket file stays, as a killed grain's does
	ln, err := statusReloader(t).ServeStatus(path)
	if err != nil {
		t.Fatalf("ServeStatus on a stale socket: %v", err)
	}
	ln.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Errorf("the socket file after Close: %v, want it removed", err)
	}
}

// The socket is 0600 from its creation, whatever the umask: under umask 0
// a bind followed by a chmod would leave it 0777 for a moment. The mode
// checked is the one ServeStatus saw right after bind().
func TestServeStatusSocketMode(t *testing.T) {
	vmtest.HostOnly(t, "the status socket, in userspace")
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "run", "grain.sock")
	ln, err := statusReloader(t).ServeStatus(path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if mode := ln.(*ownedSocket).file.Mode(); mode.Perm() != 0o600 || mode.Type() != os.ModeSocket {
		t.Errorf("socket mode at creation %v, want 0600 socket", mode)
	}
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v (%v), want 0600", fi.Mode(), err)
	}
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("the socket's new directory: %v (%v), want 0700", fi.Mode(), err)
	}
}
