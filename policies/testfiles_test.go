package policies

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// Policy tests (*_test.cue, read by `grain test`) lie beside the policies
// and are never loaded as policies.
func TestTestFilesAreNotPolicies(t *testing.T) {
	dir := t.TempDir()
	for name, src := range map[string]string{
		"web.cue":      `web: {xdp: interfaces: ["eth0"], then: "drop"}`,
		"web_test.cue": `tests: t: {packet: {protocol: "tcp"}, expect: verdict: "drop"}`,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	snap, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Policies) != 1 || snap.Policies[0].Name != "web" || !slices.Equal(snap.Files, []string{filepath.Join(dir, "web.cue")}) {
		t.Errorf("loaded %d policies from %v, want web from web.cue alone", len(snap.Policies), snap.Files)
	}
}

// A file without a package clause in a directory below the root is loaded
// on its own, and its fields are policies (examples/ is such a tree).
func TestLooseFilesBelowTheRoot(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "web"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, src := range map[string]string{
		"top.cue":     `top: {xdp: interfaces: ["eth0"], then: "pass"}`,
		"web/web.cue": `web: {xdp: interfaces: ["eth0"], then: "drop"}`,
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	snap, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range snap.Policies {
		names = append(names, p.Name+"@"+p.Pos.String())
	}
	want := []string{"top@" + filepath.Join(dir, "top.cue") + ":1:1", "web@" + filepath.Join(dir, "web/web.cue") + ":1:1"}
	if !slices.Equal(names, want) {
		t.Errorf("policies %v, want %v", names, want)
	}
}
