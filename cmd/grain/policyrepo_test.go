package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/internal/vmtest"
)

// TestPolicyRepoExample runs what examples/policy-repo's CI workflow runs,
// on a git repository made from it here: fmt --check, check --strict,
// test --junit pass; then a branch that switches the monitored policy to
// enforce is what grain diff against main reports, and the test that
// expects would_drop fails until it is updated with the policy.
func TestPolicyRepoExample(t *testing.T) {
	vmtest.HostOnly(t, "no kernel takes part")
	src := "../../examples/policy-repo"
	workflow, err := os.ReadFile(filepath.Join(src, ".github/workflows/policies.yml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"grain fmt --check .", "grain check --strict .", "grain test --coverage --junit junit.xml .",
		`grain diff --format markdown "origin/$GITHUB_BASE_REF" HEAD`} {
		if !strings.Contains(string(workflow), cmd) {
			t.Errorf("the CI workflow does not run %s", cmd)
		}
	}
	r := newPolicyRepo(t)
	files := map[string]string{}
	err = filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		rel, _ := filepath.Rel(src, path)
		files[rel] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	r.write(files)
	r.commit("policies")

	for _, c := range []struct {
		args []string
		out  string
	}{
		{[]string{"fmt", "--check", "."}, ""},
		{[]string{"check", "--strict", "."}, ".: 5 policies in 6 files, 5 packet rules: OK\n"},
		{[]string{"test", "--coverage", "--junit", filepath.Join(t.TempDir(), "junit.xml"), "."}, "8 passed, 0 failed\n"},
	} {
		if code, out, errOut := runIn(t, r.dir, c.args...); code != 0 || out != c.out {
			t.Errorf("grain %s: exit %d, %q %q; want 0, %q", strings.Join(c.args, " "), code, out, errOut, c.out)
		}
	}

	r.git("checkout", "-q", "-b", "enforce-http10")
	web := filepath.Join("edge", "web.cue")
	r.write(map[string]string{web: strings.Replace(files[web], `mode:     "monitor"`, `mode:     "enforce"`, 1)})
	r.commit("enforce drop_http10")
	want := "~ policy drop_http10 (edge/web.cue:6:1)\n    mode: monitor -> enforce\n"
	if code, out, errOut := runIn(t, r.dir, "diff", "main", "HEAD"); code != 1 || out != want {
		t.Errorf("grain diff main HEAD: exit %d, %q %q; want 1, %q", code, out, errOut, want)
	}
	wantTest := "edge/edge_test.cue:23:2: test http10_would_drop: verdict: expected would_drop, got drop\n7 passed, 1 failed\n"
	if code, out, _ := runIn(t, r.dir, "test", "."); code != 1 || out != wantTest {
		t.Errorf("grain test after enforcing: exit %d, %q; want 1, %q", code, out, wantTest)
	}
}
