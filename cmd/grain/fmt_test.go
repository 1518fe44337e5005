package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/internal/cuecli"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

const (
	unformattedPolicy = "package fw\n\nblock_http: {\n  xdp: interfaces: [\"eth0\"]\n    then:   \"drop\"\n}\n"
	formattedPolicy   = "package fw\n\nblock_http: {\n\txdp: interfaces: [\"eth0\"]\n\tthen: \"drop\"\n}\n"
)

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, src := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(src), 0o640); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFmtCheckListsUnformattedFiles(t *testing.T) {
	vmtest.HostOnly(t, "no kernel takes part")
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"a.cue":                  formattedPolicy,
		"b.cue":                  unformattedPolicy,
		"sub/c_test.cue":         unformattedPolicy,
		"cue.mod/module.cue":     "module:   \"example.com/p\"\n",
		"cue.mod/pkg/x/x.cue":    unformattedPolicy,
		"_scratch/d.cue":         unformattedPolicy,
		".git/e.cue":             unformattedPolicy,
		"notes.txt":              unformattedPolicy,
		"sub/deeper/ok.cue":      formattedPolicy,
		"sub/deeper/spaces.cue":  "x:    1\n",
		"sub/deeper/already.cue": "x: 1\n",
	})
	var out, errOut bytes.Buffer
	code := run([]string{"fmt", "--check", dir}, &out, &errOut)
	if code != 1 {
		t.Fatalf("grain fmt --check: exit %d, want 1 (stderr %q)", code, errOut.String())
	}
	want := filepath.Join(dir, "b.cue") + "\n" +
		filepath.Join(dir, "sub/c_test.cue") + "\n" +
		filepath.Join(dir, "sub/deeper/spaces.cue") + "\n"
	if out.String() != want {
		t.Errorf("grain fmt --check listed\n%s\nwant\n%s", out.String(), want)
	}
	if errOut.Len() != 0 {
		t.Errorf("stderr: %q", errOut.String())
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "b.cue")); string(b) != unformattedPolicy {
		t.Errorf("--check changed b.cue")
	}

	// Without --check the same files are rewritten, and then pass.
	out.Reset()
	if code := run([]string{"fmt", dir}, &out, &errOut); code != 0 {
		t.Fatalf("grain fmt: exit %d (stderr %q)", code, errOut.String())
	}
	if out.Len() != 0 {
		t.Errorf("grain fmt printed %q", out.String())
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "b.cue")); string(b) != formattedPolicy {
		t.Errorf("b.cue after grain fmt:\n%s\nwant\n%s", b, formattedPolicy)
	}
	if info, err := os.Stat(filepath.Join(dir, "b.cue")); err != nil || info.Mode().Perm() != 0o640 {
		t.Errorf("b.cue's mode after grain fmt: %v %v, want 0640", info.Mode(), err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "cue.mod/pkg/x/x.cue")); string(b) != unformattedPolicy {
		t.Errorf("grain fmt rewrote a vendored file under cue.mod")
	}
	if code := run([]string{"fmt", "--check", dir}, &out, &errOut); code != 0 || out.Len() != 0 {
		t.Errorf("grain fmt --check after grain fmt: exit %d, listed %q", code, out.String())
	}
	// A file named on the command line is formatted whatever its place.
	if code := run([]string{"fmt", "--check", filepath.Join(dir, "cue.mod/pkg/x/x.cue")}, &out, &errOut); code != 1 {
		t.Errorf("grain fmt --check FILE: exit %d, want 1", code)
	}
}

func TestFmtSyntaxErrorAndUsage(t *testing.T) {
	vmtest.HostOnly(t, "no kernel takes part")
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"bad.cue": "a: {\n\tb: 1\n"})
	var out, errOut bytes.Buffer
	if code := run([]string{"fmt", "--check", dir}, &out, &errOut); code != 1 {
		t.Errorf("grain fmt --check of a file that does not parse: exit %d, want 1", code)
	}
	want := filepath.Join(dir, "bad.cue") + ":2:7: expected '}', found 'EOF': not formatted: fix the syntax first\n"
	if errOut.String() != want {
		t.Errorf("stderr %q, want %q", errOut.String(), want)
	}
	for _, args := range [][]string{{"fmt", "--frobnicate"}, {"fmt", filepath.Join(dir, "missing")}} {
		out.Reset()
		errOut.Reset()
		if code := run(args, &out, &errOut); code != 2 {
			t.Errorf("grain %v: exit %d, want 2", args, code)
		}
		if errOut.Len() == 0 {
			t.Errorf("grain %v: no message", args)
		}
	}
}

// grain fmt formats as the cue CLI of the same CUE version does: the two
// list the same files, and a file grain formatted passes cue fmt --check.
func TestFmtAgreesWithCUEFmt(t *testing.T) {
	vmtest.HostOnly(t, "needs the go command and the module proxy")
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"a.cue":      formattedPolicy,
		"b.cue":      unformattedPolicy,
		"c.cue":      "package fw\n\nimport \"strings\"\n#L: {x:   1,\n    y: strings.ToLower(\"A\")}\nlist: [1,2,\n3]\n",
		"d_test.cue": "package fw\n\ntests:{a:{expect:verdict:\"drop\"}}\n",
	})
	out, err := cuecli.Command(t, dir, "fmt", "--check", "--files", ".").Output()
	if code := exitCode(err); code != 1 {
		t.Fatalf("cue fmt --check: exit %d (%v), want 1", code, err)
	}
	// In dir, as cue ran: both list paths below it.
	t.Chdir(dir)
	var grainOut, errOut bytes.Buffer
	if code := run([]string{"fmt", "--check", "."}, &grainOut, &errOut); code != 1 {
		t.Fatalf("grain fmt --check: exit %d, want 1: %s", code, errOut.String())
	}
	if got, want := strings.Fields(grainOut.String()), strings.Fields(string(out)); !slices.Equal(got, want) {
		t.Errorf("grain fmt --check listed %q, cue fmt --check %q", got, want)
	}
	if code := run([]string{"fmt", "."}, &grainOut, &errOut); code != 0 {
		t.Fatalf("grain fmt: exit %d: %s", code, errOut.String())
	}
	if out, err := cuecli.Command(t, dir, "fmt", "--check", "--files", ".").CombinedOutput(); err != nil {
		t.Errorf("cue fmt --check after grain fmt: %v\n%s", err, out)
	}
}

func exitCode(err error) int {
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}
