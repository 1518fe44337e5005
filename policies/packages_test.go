package policies

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// writeTree writes files (slash paths below root) into a new directory.
func writeTree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for name, src := range files {
		path := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// loadErrors loads root and returns its errors, one per line, with root
// left out of the file names.
func loadErrors(t *testing.T, root string) string {
	t.Helper()
	_, err := Load(root)
	if err == nil {
		t.Fatalf("Load(%s): no error", root)
	}
	return strings.ReplaceAll(err.Error(), root+string(filepath.Separator), "")
}

func policyNames(s *Snapshot) []string {
	var names []string
	for _, p := range s.Policies {
		names = append(names, p.Name)
	}
	return names
}

const listsCUE = `package fw

// Shared by every file of the package.
_badnets: ["192.0.2.0/24", "2001:db8::/32"]
#LAN: {xdp: interfaces: ["eth0"], ...}
#web_ports: [80, 443]
`

const blockCUE = `package fw

block_badnets: #LAN & {
	match: saddr: _badnets
	then: "drop"
}
web: #LAN & {
	match: {protocol: "tcp", dport: #web_ports}
	then: "pass"
}
`

// The first example: a hidden field, a definition and a list
// declared in lists.cue are used from block.cue, with no cue.mod.
func TestLoadPackageFilesUnify(t *testing.T) {
	root := writeTree(t, map[string]string{"lists.cue": listsCUE, "block.cue": blockCUE})
	s := mustLoad(t, root)
	if got := policyNames(s); !slices.Equal(got, []string{"block_badnets", "web"}) {
		t.Fatalf("policies %q", got)
	}
	p := s.Policies[0]
	if !slices.Equal(p.Match.SourceCIDRs, []string{"192.0.2.0/24", "2001:db8::/32"}) || p.Then != "drop" ||
		!slices.Equal(p.XDP.Interfaces, []string{"eth0"}) {
		t.Errorf("block_badnets: %+v", p)
	}
	if want := pos(filepath.Join(root, "block.cue"), 3, 1); p.Pos != want {
		t.Errorf("block_badnets declared at %v, want %v", p.Pos, want)
	}
	if got := s.Policies[1].Match.DestinationPorts; len(got) != 2 {
		t.Errorf("web's ports: %+v", got)
	}
	if want := []string{filepath.Join(root, "block.cue"), filepath.Join(root, "lists.cue")}; !slices.Equal(s.Files, want) {
		t.Errorf("files %q, want %q", s.Files, want)
	}
}

// Errors point into the file that holds the mistake, whichever file of
// the package declares what it refers to.
func TestLoadPackagePositionsAcrossFiles(t *testing.T) {
	root := writeTree(t, map[string]string{
		"lists.cue": listsCUE,
		"block.cue": `package fw

import "list"

misspelt: #LAN & {
	match: paylod: "HTTP/1.1"
	then: "drop"
}
wrong_list: #LAN & {
	match: saddr: list.Concat([_badnets, ["300.1.2.3"]])
	then: "drop"
}
misspelt_top: #LAN & {
	prority: 5
	then: "drop"
}
`,
		"other.cue": "package fw\n\nthen_twice: #LAN & {then: \"drop\"}\nthen_twice: then: \"pass\"\n",
	})
	got := loadErrors(t, root)
	want := strings.Join([]string{
		`block.cue:6:9: policy misspelt: match.paylod: field not allowed; did you mean payload?`,
		`block.cue:10:40: policy wrong_list: match.saddr[2]: "300.1.2.3" is not an IP address: want an address or CIDR such as "10.0.0.0/8", "fd00::/64" or "192.0.2.1"`,
		`block.cue:14:2: policy misspelt_top: prority: field not allowed; did you mean priority?`,
		`other.cue:4:19: policy then_twice: then: conflicting values "pass" and "drop"`,
	}, "\n")
	if got != want {
		t.Errorf("errors:\n%s\nwant\n%s", got, want)
	}
}

// A tree with cue.mod/module.cue imports its own packages by the module's
// path, and the standard library; a package another imports is a library,
// whose regular fields are values, not policies.
func TestLoadModuleImportsAndStandardLibrary(t *testing.T) {
	root := writeTree(t, map[string]string{
		"cue.mod/module.cue": "module: \"example.com/policies\"\nlanguage: version: \"v0.12.0\"\n",
		"lib/nets.cue": `package lib

badnets: ["192.0.2.0/24"]
#Edge: {xdp: interfaces: ["eth0", "eth1"], ...}
`,
		"lib/more.cue": "package lib\n\nbadnets6: [\"2001:db8::/32\"]\n",
		"fw/block.cue": `package fw

import (
	"list"
	"net"
	"strings"

	"example.com/policies/lib"
)

block: lib.#Edge & {
	match: saddr: list.Concat([lib.badnets, lib.badnets6])
	then: "drop"
	emit: event: strings.ToLower("BLOCKED")
}
_host: "198.51.100.7"
_valid: net.IPv4(_host) & true
allow: lib.#Edge & {
	priority: 10
	match: saddr: _host
	then: "pass"
}
`,
	})
	s := mustLoad(t, root)
	if got := policyNames(s); !slices.Equal(got, []string{"allow", "block"}) {
		t.Fatalf("policies %q, want [allow block]: the library's fields are not policies", got)
	}
	b := s.Policies[1]
	if !slices.Equal(b.Match.SourceCIDRs, []string{"192.0.2.0/24", "2001:db8::/32"}) ||
		!slices.Equal(b.XDP.Interfaces, []string{"eth0", "eth1"}) || b.Emit == nil || b.Emit.Event != "blocked" {
		t.Errorf("block: %+v", b)
	}
	if !slices.Contains(s.Files, filepath.Join(root, "lib", "more.cue")) || !slices.Contains(s.Files, filepath.Join(root, "cue.mod", "module.cue")) {
		t.Errorf("files %q leave out what was evaluated", s.Files)
	}

	// A mistake in the library is reported where it is, in its file.
	writeFile(t, filepath.Join(root, "lib", "more.cue"), "package lib\n\nbadnets6: [\"2001:db8::/32\"]\nbadnets6: 7\n")
	if got, want := loadErrors(t, root), `lib/more.cue:3:11: badnets6: conflicting values ["2001:db8::/32"] and 7 (mismatched types list and int)`; !strings.Contains(got, want) {
		t.Errorf("errors:\n%s\nwant a line\n%s", got, want)
	}

	// An import the module does not hold says how imports are found.
	writeFile(t, filepath.Join(root, "lib", "more.cue"), "package lib\n\nimport \"example.com/policies/nothere\"\n\nbadnets6: nothere.x\n")
	got := loadErrors(t, root)
	if want := `lib/more.cue:3:8: `; !strings.HasPrefix(got, want) || !strings.Contains(got, `cannot find package "example.com/policies/nothere"`) || !strings.Contains(got, "cue.mod/pkg") {
		t.Errorf("error:\n%s\nwant it at %s, naming the package and where packages are found", got, want)
	}
}

// Without cue.mod the standard library can be imported; the tree's own
// packages cannot, and the error says why.
func TestLoadWithoutModule(t *testing.T) {
	root := writeTree(t, map[string]string{
		"a.cue": "package fw\n\nimport \"strings\"\n\np: {xdp: interfaces: [strings.ToLower(\"ETH0\")], then: \"drop\"}\n",
		// A file without a package clause is evaluated on its own.
		"b.cue": "#LAN: {xdp: interfaces: [\"eth1\"], ...}\nq: #LAN & {then: \"pass\"}\n",
		"c.cue": "#LAN: {xdp: interfaces: [\"eth2\"], ...}\nr: #LAN & {then: \"pass\"}\n",
	})
	s := mustLoad(t, root)
	if got := policyNames(s); !slices.Equal(got, []string{"p", "q", "r"}) {
		t.Fatalf("policies %q", got)
	}
	if got := s.Policies[0].XDP.Interfaces; !slices.Equal(got, []string{"eth0"}) {
		t.Errorf("p's interfaces %q", got)
	}
	writeFile(t, filepath.Join(root, "d.cue"), "package fw\n\nimport \"example.com/lib\"\n\nx: lib.x\n")
	want := `d.cue:3:8: import failed: cannot find package "example.com/lib": cannot find module providing package example.com/lib: ` +
		`the tree has no cue.mod/module.cue, so only the standard library can be imported; make the tree's root a CUE module (cue mod init) to import its packages`
	if got := loadErrors(t, root); got != want {
		t.Errorf("error:\n%s\nwant\n%s", got, want)
	}
}

// Files of a package in a directory above belong to the packages below
// (CUE's rule), but their policies are the upper directory's alone.
func TestLoadPackageInParentDirectory(t *testing.T) {
	root := writeTree(t, map[string]string{
		"cue.mod/module.cue": "module: \"example.com/p\"\nlanguage: version: \"v0.12.0\"\n",
		"base.cue":           "package fw\n\n#LAN: {xdp: interfaces: [\"eth0\"], ...}\ntop: #LAN & {then: \"drop\"}\n",
		"site/site.cue":      "package fw\n\nsite: #LAN & {then: \"pass\"}\n",
	})
	s := mustLoad(t, root)
	if got := policyNames(s); !slices.Equal(got, []string{"site", "top"}) {
		t.Errorf("policies %q, want [site top], each once", got)
	}
}

// Test files are `grain test`'s, never policies: a broken one changes
// nothing, and neither the snapshot nor its hash includes it.
func TestLoadLeavesOutTestFiles(t *testing.T) {
	root := writeTree(t, map[string]string{"lists.cue": listsCUE, "block.cue": blockCUE})
	before := mustLoad(t, root)
	writeFile(t, filepath.Join(root, "block_test.cue"), "package fw\n\nnot_a_policy: {then: \"frobnicate\"}\n")
	writeFile(t, filepath.Join(root, "sub", "x_test.cue"), "{{{ broken")
	after := mustLoad(t, root)
	if after.Hash != before.Hash || !slices.Equal(after.Files, before.Files) || !slices.Equal(policyNames(after), policyNames(before)) {
		t.Errorf("test files changed the load: %q %s, then %q %s", before.Files, before.Hash, after.Files, after.Hash)
	}
}

// A package that applies schema.#Policy to its fields (for the cue CLI)
// loads in grain
// without vendoring the schema: grain supplies its own; a vendored copy is
// used as the cue CLI would use it.
func TestLoadSchemaImport(t *testing.T) {
	files := map[string]string{
		"cue.mod/module.cue": "module: \"example.com/p\"\nlanguage: version: \"v0.12.0\"\n",
		"schema.cue":         "package fw\n\nimport \"github.com/grain-ebpf/grain/schema\"\n\n[!=\"pipeline\"]: schema.#Policy\npipeline?: schema.#Pipeline\n",
		"block.cue":          blockCUE,
		"lists.cue":          listsCUE,
	}
	root := writeTree(t, files)
	if got := policyNames(mustLoad(t, root)); !slices.Equal(got, []string{"block_badnets", "web"}) {
		t.Errorf("policies %q", got)
	}
	writeFile(t, filepath.Join(root, "bad.cue"), "package fw\n\nbad: #LAN & {\n\tmatch: paylod: \"x\"\n\tthen: \"drop\"\n}\n")
	if got, want := loadErrors(t, root), "bad.cue:4:9: policy bad: match.paylod: field not allowed; did you mean payload?"; got != want {
		t.Errorf("errors:\n%s\nwant\n%s", got, want)
	}
}

// A library's values are walked within the tree's value budget, like a
// policy package's, even where only a small part of it is used.
func TestLoadLibraryWithinValueBudget(t *testing.T) {
	var lib strings.Builder
	lib.WriteString("package lib\n\na0: \"x\"\n")
	for i := 1; i <= 30; i++ {
		fmt.Fprintf(&lib, "a%d: [a%d, a%d]\n", i, i-1, i-1)
	}
	root := writeTree(t, map[string]string{
		"cue.mod/module.cue": "module: \"example.com/p\"\nlanguage: version: \"v0.12.0\"\n",
		"lib/m.cue":          lib.String(),
		"fw/p.cue":           "package fw\n\nimport \"example.com/p/lib\"\n\np: {xdp: interfaces: [\"eth0\"], then: \"drop\", emit: event: lib.a0}\n",
	})
	got := loadErrors(t, root)
	if !strings.HasPrefix(got, "lib/m.cue:") || !strings.Contains(got, "evaluates to more than 500000 values") {
		t.Errorf("error:\n%s\nwant the value bound, in lib/m.cue", got)
	}
}
