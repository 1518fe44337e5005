package schema

import (
	"os"
	"strings"
	"testing"

	"cuelang.org/go/cue"
	"cuelang.org/go/cue/cuecontext"
)

func compile(t *testing.T) cue.Value {
	t.Helper()
	v := cuecontext.New().CompileString(Source, cue.Filename(Filename))
	if err := v.Err(); err != nil {
		t.Fatalf("schema does not compile: %v", err)
	}
	return v
}

// structs are the schema's closed struct definitions.
var structs = []string{"#Policy", "#XDP", "#Match", "#Content", "#Emit", "#Arg", "#ProcessMatch", "#ValueOps", "#Count"}

func TestPolicyDefinitionExists(t *testing.T) {
	def := compile(t).LookupPath(cue.ParsePath(PolicyDefinition))
	if !def.Exists() {
		t.Fatalf("%s not found", PolicyDefinition)
	}
}

func TestDefinitionsAreClosed(t *testing.T) {
	v := compile(t)
	for _, name := range structs {
		def := v.LookupPath(cue.ParsePath(name))
		if err := def.Unify(v.Context().CompileString("{no_such_field: 1}")).Validate(); err == nil {
			t.Errorf("%s accepts an unknown field", name)
		}
	}
}

func TestExample(t *testing.T) {
	v := compile(t)
	policy := v.Context().CompileString(`{
		priority: 10
		xdp: interfaces: ["eth0"]
		match: {
			protocol: "tcp"
			saddr: "10.0.0.0/8"
			daddr: ["192.168.1.0/24", "fd00::/64"]
			sport: 22
			dport: [22, "8000-8080"]
			tcp_flags: ["syn", "!ack"]
			interface: "eth0"
			payload: ["HTTP/1.1", {startswith: "GET ", nocase: true}, {contains: "|7C|", offset: 2, depth: 10, not: true}]
		}
		then: "count"
		emit: {event: "ssh", fields: ["saddr", "sport"]}
	}`)
	u := policy.Unify(v.LookupPath(cue.ParsePath(PolicyDefinition)))
	if err := u.Validate(cue.Concrete(true)); err != nil {
		t.Fatal(err)
	}
	if p, _ := u.LookupPath(cue.ParsePath("priority")).Int64(); p != 10 {
		t.Errorf("priority = %d, want 10", p)
	}
}

func TestDefaultPriority(t *testing.T) {
	v := compile(t)
	u := v.Context().CompileString(`{xdp: interfaces: [], then: "drop"}`).
		Unify(v.LookupPath(cue.ParsePath(PolicyDefinition)))
	if err := u.Validate(cue.Concrete(true)); err != nil {
		t.Fatal(err)
	}
	if p, _ := u.LookupPath(cue.ParsePath("priority")).Int64(); p != 1000 {
		t.Errorf("default priority = %d, want 1000", p)
	}
}

// TestREADMEDocumentsEveryField keeps README.md in step with the schema.
func TestREADMEDocumentsEveryField(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	v := compile(t)
	for _, name := range structs {
		if !strings.Contains(string(readme), "## `"+name+"`") {
			t.Errorf("README.md has no section for %s", name)
		}
		it, err := v.LookupPath(cue.ParsePath(name)).Fields(cue.Optional(true))
		if err != nil {
			t.Fatal(err)
		}
		for it.Next() {
			field := "| `" + it.Selector().Unquoted() + "` |"
			if !strings.Contains(string(readme), field) {
				t.Errorf("README.md does not document %s.%s", name, it.Selector().Unquoted())
			}
		}
	}
}
