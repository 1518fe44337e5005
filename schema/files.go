package schema

// ImportPath is the schema's CUE import path (cue.mod/module.cue here).
const ImportPath = "github.com/grain-ebpf/grain/schema"

// Files are the schema package's files by name: what a policy tree vendors
// under cue.mod/pkg/github.com/grain-ebpf/grain/schema, and what grain
// supplies there when a tree imports the schema without vendoring it.
func Files() map[string]string {
	return map[string]string{
		"schema.cue":   Source,
		"pipeline.cue": PipelineSource,
		"test.cue":     TestSource,
	}
}

// EmbeddedName names the schema file name in CUE positions: it does not
// end in ".cue", so it is never mistaken for a user's file.
func EmbeddedName(name string) string {
	return name + " (embedded in grain)"
}
