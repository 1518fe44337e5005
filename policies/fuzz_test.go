package policies_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/policies"
)

// maxFuzzInput bounds what one fuzz input may be, so that a run is bounded
// by the inputs' number rather than their size.
const maxFuzzInput = 64 << 10

// seedDirs hold the repository's policy files: the examples and the test
// trees. Their .cue files seed FuzzLoad.
var seedDirs = []string{"../examples", "testdata", "../cmd/grain/testdata", "../codegen/testdata"}

// FuzzLoad loads arbitrary bytes as one policy file and checks what every
// load promises: it does not panic; an error is an ErrorList of errors
// positioned in the file (a file and a line); and a snapshot that loads
// compiles without panicking, any error positioned too. Without -fuzz,
// go test runs the seeds: the repository's policy files and the inputs
// under testdata/fuzz/FuzzLoad.
func FuzzLoad(f *testing.F) {
	for _, dir := range seedDirs {
		err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.Type().IsRegular() || !strings.HasSuffix(path, ".cue") {
				return nil
			}
			src, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			f.Add(src)
			return nil
		})
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			f.Fatal(err)
		}
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		if len(src) > maxFuzzInput {
			t.Skip()
		}
		snap, err := policies.LoadBytes("fuzz.cue", src)
		if err != nil {
			checkPositioned(t, "LoadBytes", err)
			return
		}
		if _, err := codegen.Compile(snap.Policies, codegen.Options{}); err != nil {
			checkPositioned(t, "Compile", err)
		}
	})
}

func checkPositioned(t *testing.T, what string, err error) {
	t.Helper()
	list, ok := err.(policies.ErrorList)
	if !ok {
		t.Fatalf("%s: got %T %v, want a policies.ErrorList", what, err, err)
	}
	if len(list) == 0 {
		t.Fatalf("%s: empty ErrorList as an error", what)
	}
	for _, e := range list {
		if e.Pos.File == "" || e.Pos.Line < 1 {
			t.Errorf("%s: error without a position: %q", what, e.Error())
		}
	}
}
