package main

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/internal/vmtest"
)

// grain run refuses every out-of-range value before it touches the kernel:
// the pin directory it would make is never made. Zero is refused where it
// used to mean the default.
func TestRunRefusesBadFlags(t *testing.T) {
	vmtest.HostOnly(t, "flags are refused before anything loads")
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, c := range []struct {
		flags []string
		want  string
	}{
		{[]string{"--event-queue", "0"}, "--event-queue 0: want a number of events from 1"},
		{[]string{"--event-queue", "-5"}, "--event-queue -5: want a number of events from 1"},
		{[]string{"--event-queue", "1000000000"}, "--event-queue 1000000000: want a number of events from 1 to 16777216"},
		{[]string{"--otlp-queue", "0"}, "--otlp-queue 0: want a number of events from 1"},
		{[]string{"--otlp-queue", "-1"}, "--otlp-queue -1: want"},
		{[]string{"--otlp-exports", "0"}, "--otlp-exports 0: want a number of exports from 1 to 16"},
		{[]string{"--otlp-exports", "17"}, "--otlp-exports 17: want a number of exports from 1 to 16"},
		{[]string{"--otlp-retry", "0s"}, "--otlp-retry 0s: want a positive duration"},
		{[]string{"--otlp-retry", "-1s"}, "--otlp-retry -1s: want a positive duration"},
		{[]string{"--debounce", "0s"}, "--debounce 0s: want a positive duration"},
		{[]string{"--memory-limit", "-1"}, "--memory-limit -1: want a number of bytes, or 0"},
		{[]string{"--event-ring-bytes", "0"}, "--event-ring-bytes 0: must be a power of two"},
		{[]string{"--metrics-addr", "no-port"}, "--metrics-addr no-port:"},
		{[]string{"--metrics-addr", taken.Addr().String()}, "address already in use"},
		// Two bad flags: both are named.
		{[]string{"--event-queue", "0", "--debounce", "-1s"}, "--event-queue 0: want a number of events from 1 to 16777216\ngrain: --debounce -1s"},
	} {
		pins := filepath.Join(t.TempDir(), "pins")
		var out, errOut bytes.Buffer
		args := append([]string{"run", "--policies", "../../examples/block-http", "--interface", "lo",
			"--pin-path", pins, "--status-socket", filepath.Join(t.TempDir(), "grain.sock")}, c.flags...)
		code := run(args, &out, &errOut)
		if code != 2 || !strings.Contains(errOut.String(), c.want) {
			t.Errorf("grain run %v: exit %d, %q; want 2 and %q", c.flags, code, errOut.String(), c.want)
		}
		if _, err := os.Stat(pins); !os.IsNotExist(err) {
			t.Errorf("grain run %v: the pin directory was made (%v): the kernel was touched", c.flags, err)
		}
	}
}

// grain status gives up on a socket whose grain does not answer, naming it.
func TestStatusTimeout(t *testing.T) {
	vmtest.HostOnly(t, "the status client's timeout, in userspace")
	sock := filepath.Join(t.TempDir(), "grain.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// A grain that accepts and never answers (stuck); the connection is
	// held open until the test ends.
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	defer func() {
		select {
		case c := <-accepted:
			c.Close()
		default:
		}
	}()
	var out, errOut bytes.Buffer
	code := run([]string{"status", "--status-socket", sock, "--timeout", "300ms"}, &out, &errOut)
	want := "grain status: the grain on " + sock + " did not answer within 300ms"
	if code != 1 || !strings.Contains(errOut.String(), want) {
		t.Errorf("grain status on a grain that does not answer: exit %d, %q; want 1 and %q", code, errOut.String(), want)
	}
	if code := run([]string{"status", "--status-socket", sock, "--timeout", "0s"}, &out, &errOut); code != 2 {
		t.Errorf("grain status --timeout 0s: exit %d, want 2", code)
	}
}
