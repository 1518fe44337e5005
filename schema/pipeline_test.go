package schema

import (
	"os"
	"strings"
	"testing"

	"cuelang.org/go/cue"
	"cuelang.org/go/cue/cuecontext"
)

var pipelineStructs = []string{"#Pipeline", "#Filter", "#Sample", "#RateLimit", "#Rewrite", "#Prefix", "#Enrich"}

func TestPipelineSchema(t *testing.T) {
	v := cuecontext.New().CompileString(PipelineSource, cue.Filename(PipelineFilename))
	if err := v.Err(); err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range pipelineStructs {
		def := v.LookupPath(cue.ParsePath(name))
		if err := def.Unify(v.Context().CompileString("{no_such_field: 1}")).Validate(); err == nil {
			t.Errorf("%s accepts an unknown field", name)
		}
		if !strings.Contains(string(readme), "`"+name+"`") {
			t.Errorf("README.md has no section for %s", name)
		}
		it, err := def.Fields(cue.Optional(true))
		if err != nil {
			t.Fatal(err)
		}
		for it.Next() {
			if !strings.Contains(string(readme), "| `"+it.Selector().Unquoted()+"` |") {
				t.Errorf("README.md does not document %s.%s", name, it.Selector().Unquoted())
			}
		}
	}
}
