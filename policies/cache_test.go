package policies

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// A cached load gives exactly what a fresh load gives, after edits of a
// policy, of a definition policies refer to, and of positions.
func TestCacheMatchesFreshLoad(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "p.cue")
	var cache Cache
	for i, src := range []string{
		"_common: {xdp: interfaces: [\"eth0\"]}\na: _common & {then: \"drop\"}\nb: {xdp: interfaces: [\"eth0\"], match: dport: 22, then: \"drop\"}\n",
		"_common: {xdp: interfaces: [\"eth1\"]}\na: _common & {then: \"drop\"}\nb: {xdp: interfaces: [\"eth0\"], match: dport: 22, then: \"drop\"}\n",
		"_common: {xdp: interfaces: [\"eth1\"]}\na: _common & {then: \"drop\"}\nb: {xdp: interfaces: [\"eth0\"], match: dport: 23, then: \"drop\"}\n",
		"// a comment shifts every position\n_common: {xdp: interfaces: [\"eth1\"]}\na: _common & {then: \"drop\"}\nb: {xdp: interfaces: [\"eth0\"], match: dport: 23, then: \"drop\"}\n",
		"b: {xdp: interfaces: [\"eth0\"], match: dport: 23, then: \"pass\"}\n",
	} {
		if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		cached, err := cache.Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		fresh, err := Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(cached, fresh) {
			t.Errorf("version %d: cached load %+v differs from fresh load %+v", i, cached.Policies, fresh.Policies)
		}
	}
	if len(cache.entries) != 1 {
		t.Errorf("cache holds %d entries after the last load, want 1 (only b)", len(cache.entries))
	}
}
