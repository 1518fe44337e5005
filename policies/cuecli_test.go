package policies

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/internal/cuecli"
	"github.com/grain-ebpf/grain/internal/vmtest"
	"github.com/grain-ebpf/grain/schema"
)

// A tree that vendors the schema and applies #Policy is accepted by the
// cue CLI as by grain, and a misspelt field is refused by both at the
// same place.
func TestCUECLIChecksTheSameTree(t *testing.T) {
	vmtest.HostOnly(t, "needs the go command and the module proxy")
	files := map[string]string{
		"cue.mod/module.cue": "module: \"example.com/policies\"\nlanguage: version: \"v0.12.0\"\n",
		"fw/schema.cue":      "package fw\n\nimport \"github.com/grain-ebpf/grain/schema\"\n\n[!=\"pipeline\"]: schema.#Policy\npipeline?: schema.#Pipeline\n",
		"fw/lists.cue":       listsCUE,
		"fw/block.cue":       blockCUE,
		"lib/nets.cue":       "package lib\n\n#blocked: [\"198.51.100.0/24\"]\n",
		"fw/imports.cue":     "package fw\n\nimport (\n\t\"strings\"\n\n\t\"example.com/policies/lib\"\n)\n\nblock_more: #LAN & {\n\tmatch: saddr: lib.#blocked\n\tthen: strings.ToLower(\"DROP\")\n}\n",
		"fw/block_test.cue":  "package fw\n\nnot_a_policy: 1\n",
	}
	for name, src := range schema.Files() {
		files["cue.mod/pkg/github.com/grain-ebpf/grain/schema/"+name] = src
	}
	root := writeTree(t, files)
	vet := func() (string, error) {
		out, err := cuecli.Command(t, root, "vet", "-c", "./...").CombinedOutput()
		return string(out), err
	}
	if out, err := vet(); err != nil {
		t.Fatalf("cue vet refused a good tree: %v\n%s", err, out)
	}
	if got := policyNames(mustLoad(t, root)); strings.Join(got, " ") != "block_badnets block_more web" {
		t.Errorf("grain loaded %q", got)
	}

	writeFile(t, filepath.Join(root, "fw", "bad.cue"), "package fw\n\nbad: #LAN & {\n\tmatch: paylod: \"x\"\n\tthen: \"drop\"\n}\n")
	out, err := vet()
	if err == nil {
		t.Fatalf("cue vet accepted a misspelt field:\n%s", out)
	}
	if !strings.Contains(out, "paylod: field not allowed") || !strings.Contains(out, "fw/bad.cue:4:9") {
		t.Errorf("cue vet said\n%s\nwant paylod: field not allowed at fw/bad.cue:4:9", out)
	}
	if got, want := loadErrors(t, root), "fw/bad.cue:4:9: policy bad: match.paylod: field not allowed; did you mean payload?"; got != want {
		t.Errorf("grain said\n%s\nwant\n%s", got, want)
	}
}

// A value of the wrong kind, too, is refused by both at the same place.
func TestCUECLIRefusesWhatGrainRefuses(t *testing.T) {
	vmtest.HostOnly(t, "needs the go command and the module proxy")
	files := map[string]string{
		"cue.mod/module.cue": "module: \"example.com/policies\"\nlanguage: version: \"v0.12.0\"\n",
		"schema.cue":         "package fw\n\nimport \"github.com/grain-ebpf/grain/schema\"\n\n[!=\"pipeline\"]: schema.#Policy\npipeline?: schema.#Pipeline\n",
		"lists.cue":          listsCUE,
		"bad.cue":            "package fw\n\nbad: #LAN & {\n\tthen: \"frobnicate\"\n}\nports: #LAN & {\n\tmatch: dport: 70000\n\tthen: \"drop\"\n}\n",
	}
	for name, src := range schema.Files() {
		files["cue.mod/pkg/github.com/grain-ebpf/grain/schema/"+name] = src
	}
	root := writeTree(t, files)
	out, err := cuecli.Command(t, root, "vet", "-c", ".").CombinedOutput()
	if err == nil {
		t.Fatalf("cue vet accepted a bad tree:\n%s", out)
	}
	got := loadErrors(t, root)
	for _, at := range []string{"bad.cue:4:8", "bad.cue:7:16"} {
		if !strings.Contains(string(out), "./"+at) {
			t.Errorf("cue vet said\n%s\nwant an error at %s", out, at)
		}
		if !strings.Contains(got, at+": ") {
			t.Errorf("grain said\n%s\nwant an error at %s", got, at)
		}
	}
}
