// Package layering holds the test that keeps grain's data flow one-way:
// policies → codegen → engine → bpf, then pipeline → export, with
// cmd/grain on top (docs/architecture.md).
package layering

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/grain-ebpf/grain/"

// allowed lists, for each product package, the grain packages its non-test
// files may import. A package not listed here fails the test: place it in
// the flow first. Tests, benchmarks, examples and internal/ test helpers
// are not product code and may import what they need.
var allowed = map[string][]string{
	"schema":                {},
	"policies":              {"schema"},
	"codegen":               {"policies", "schema", "bpf"},
	"bpf":                   {},
	"bpf/internal/genconst": {},
	"engine":                {"policies", "codegen", "bpf", "pipeline", "engine/generation", "engine/hook", "engine/ring"},
	"engine/daemon":         {"policies", "codegen", "engine", "engine/hook", "pipeline", "export"},
	"engine/generation":     {"bpf"},
	"engine/hook":           {"codegen", "bpf", "pipeline", "engine/generation", "engine/ring"},
	"engine/ring":           {"pipeline", "engine/generation"},
	"pipeline":              {"policies"},
	"export":                {"pipeline", "engine", "engine/hook"},
	"reference":             {"codegen", "bpf", "pipeline"},
	"pcap":                  {},
	"policytest":            {"policies", "schema", "codegen", "reference", "pcap"},
	"plandiff":              {"policies", "codegen", "reference", "pcap"},
	"cmd/grain":             {"schema", "policies", "codegen", "engine", "engine/daemon", "engine/hook", "bpf", "pipeline", "export", "reference", "pcap", "policytest", "plandiff"},
}

// free are trees of non-product code.
var free = []string{"internal/", "bench/", "examples", "scripts/", "deploy/"}

func TestImportsFollowTheDataFlow(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	imports := map[string]map[string]bool{} // package → grain packages it imports
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") && path != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		pkg := filepath.ToSlash(rel)
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		if imports[pkg] == nil {
			imports[pkg] = map[string]bool{}
		}
		for _, spec := range f.Imports {
			p, _ := strconv.Unquote(spec.Path.Value)
			if dep, ok := strings.CutPrefix(p, module); ok {
				imports[pkg][dep] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for pkg, deps := range imports {
		if slices.ContainsFunc(free, func(prefix string) bool {
			return strings.HasPrefix(pkg+"/", prefix) || pkg == strings.TrimSuffix(prefix, "/")
		}) {
			continue
		}
		allow, ok := allowed[pkg]
		if !ok {
			t.Errorf("package %s is not placed in the data flow: add it to allowed with the grain packages it may import", pkg)
			continue
		}
		checked++
		for dep := range deps {
			if !slices.Contains(allow, dep) {
				t.Errorf("%s imports %s: against the data flow (it may import %v); move the code to the package whose job it is", pkg, dep, allow)
			}
		}
	}
	if checked < len(allowed)-1 {
		t.Errorf("checked %d product packages; the walk from %s found too few", checked, root)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Errorf("%s is not the module root: %v", root, err)
	}
}
