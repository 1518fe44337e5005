// Package cuecli gives tests the cue command at the version of
// cuelang.org/go that grain is built with, to check that grain reads and
// writes CUE as the cue CLI does.
package cuecli

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Path is the cue command, installed from the module proxy into the user's
// cache on first use (scripts/deps.sh installs it there for make test).
// It needs the go command and the proxy, so a test that calls it runs on
// the host only.
func Path(tb testing.TB) string {
	tb.Helper()
	gocmd := goCommand()
	list := exec.Command(gocmd, "list", "-m", "-f", "{{.Version}}", "cuelang.org/go")
	// In grain's module, wherever the test runs: this file's directory.
	if _, file, _, ok := runtime.Caller(0); ok {
		list.Dir = filepath.Dir(file)
	}
	out, err := list.Output()
	if err != nil {
		tb.Fatalf("the version of cuelang.org/go in go.mod: %v", err)
	}
	version := strings.TrimSpace(string(out))
	cache, err := os.UserCacheDir()
	if err != nil {
		tb.Fatal(err)
	}
	dir := filepath.Join(cache, "grain-tools", "cue-"+version)
	bin := filepath.Join(dir, "cue")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	cmd := exec.Command(gocmd, "install", "cuelang.org/go/cmd/cue@"+version)
	cmd.Env = append(os.Environ(), "GOBIN="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("installing the cue CLI %s: %v\n%s", version, err, out)
	}
	return bin
}

// Command is the cue command with args, run in dir, never asking a
// registry.
func Command(tb testing.TB, dir string, args ...string) *exec.Cmd {
	cmd := exec.Command(Path(tb), args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CUE_REGISTRY=none")
	return cmd
}

// goCommand is the go command of the toolchain that built the test, which
// sudo's PATH may not hold.
func goCommand() string {
	gocmd := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(gocmd); err == nil {
		return gocmd
	}
	return "go"
}
