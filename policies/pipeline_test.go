package policies

import (
	"net/netip"
	"strings"
	"testing"
)

const pipelinePolicy = `
web: {
	xdp: interfaces: ["eth0"]
	match: {protocol: "tcp", dport: 80}
	then: "drop"
	emit: {event: "web", fields: ["saddr", "dport"]}
}
`

func TestLoadPipeline(t *testing.T) {
	snap, err := LoadBytes("tree.cue", []byte(pipelinePolicy+`
pipeline: {
	hash_key: "k"
	filter: [{event: "web", field: "saddr", cidr: ["10.0.0.0/8", "fd00::/64"]}, {field: "dport", equals: [22, "x"]}]
	sample: [{one_in: 10}]
	rate_limit: [{event: ["web", "dns"], per_second: 100}]
	rewrite: [{field: "saddr", prefix: {ipv4: 24, ipv6: 48}}, {field: "dport", rename: "port"}]
	enrich: host: true
}`))
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Policies) != 1 || snap.Policies[0].Name != "web" {
		t.Fatalf("policies: %+v (pipeline is not a policy)", snap.Policies)
	}
	p := snap.Pipeline
	if p == nil {
		t.Fatal("no pipeline")
	}
	if p.Pos.Line != 9 || p.HashKey != "k" || !p.Enrich.Host || p.Enrich.Cgroup {
		t.Errorf("pipeline: %+v", p)
	}
	if len(p.Filters) != 2 || p.Filters[0].CIDRs[1] != netip.MustParsePrefix("fd00::/64") ||
		p.Filters[1].Equals[0] != "22" || !p.Filters[1].Ints[0] || p.Filters[1].Ints[1] {
		t.Errorf("filters: %+v", p.Filters)
	}
	if len(p.Samples) != 1 || p.Samples[0].OneIn != 10 || p.Samples[0].Events != nil {
		t.Errorf("samples: %+v", p.Samples)
	}
	if len(p.RateLimits) != 1 || p.RateLimits[0].Burst != 100 || len(p.RateLimits[0].Events) != 2 {
		t.Errorf("rate limits: %+v", p.RateLimits)
	}
	r := p.Rewrites
	if len(r) != 2 || r[0].Action != RewritePrefix || r[0].IPv4Bits != 24 || r[0].IPv6Bits != 48 ||
		r[1].Action != RewriteRename || r[1].To != "port" {
		t.Errorf("rewrites: %+v", r)
	}
}

// Mistakes in the pipeline come back with the file:line:col of the
// user's text, like those in policies.
func TestPipelineErrors(t *testing.T) {
	for _, c := range []struct{ src, want string }{
		{`pipeline: {filtr: []}`, `tree.cue:1:12: policy pipeline: filtr: field not allowed; did you mean filter?`},
		{"pipeline: {\n\trewrite: [{field: \"saddr\", prefix: {ipv5: 24}}]\n}", `tree.cue:2:38: policy pipeline: rewrite[0].prefix.ipv5: field not allowed; did you mean ipv4?`},
		{"pipeline: {\n\tenrich: {xyz: true}\n}", `tree.cue:2:11: policy pipeline: enrich.xyz: field not allowed; allowed fields: host, cgroup`},
		{"pipeline: {\n\tsample: [{one_in: 0}]\n}", `tree.cue:2:20: policy pipeline: sample[0].one_in: invalid value 0`},
		{"pipeline: {\n\trewrite: [{field: \"saddr\", redact: true, hash: true}]\n}", `tree.cue:2:12: policy pipeline: rewrite[0]: give exactly one of rename, redact, hash, truncate and prefix (got 2)`},
		{"pipeline: {\n\tfilter: [{field: \"saddr\", cidr: \"10.0.0.300/8\"}]\n}", `tree.cue:2:34: policy pipeline: filter[0].cidr:`},
		{"pipeline: {\n\tfilter: [{field: \"saddr\"}]\n}", `tree.cue:2:11: policy pipeline: filter[0]: give exactly one of equals and cidr`},
		{"pipeline: {\n\trewrite: [{field: \"time\", redact: true}]\n}", `tree.cue:2:20: policy pipeline: rewrite[0].field: "time" cannot be`},
		{"pipeline: {}\npipeline: {}", ``}, // CUE unifies the two: one pipeline
	} {
		_, err := LoadBytes("tree.cue", []byte(pipelinePolicy+"\n"+c.src))
		if c.want == "" {
			if err != nil {
				t.Errorf("%s: %v", c.src, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: no error, want %q", c.src, c.want)
			continue
		}
		// The policy text above takes 7 lines and a blank one.
		want := shiftLine(c.want, 8)
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%s:\n got %v\nwant %s", c.src, err, want)
		}
	}
}

func TestPipelineTwoFiles(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir+"/a.cue", pipelinePolicy+"\npipeline: {}\n")
	writeFile(t, dir+"/b.cue", "pipeline: {sample: [{one_in: 2}]}\n")
	_, err := Load(dir)
	if err == nil || !strings.Contains(err.Error(), "b.cue:1:1: policy pipeline: declared again; first declared at "+dir+"/a.cue:9:1: a tree has one pipeline") {
		t.Errorf("got %v", err)
	}
}

// shiftLine adds n to the line of a "file:line:col: ..." message.
func shiftLine(msg string, n int) string {
	file, rest, _ := strings.Cut(msg, ":")
	line, rest, _ := strings.Cut(rest, ":")
	l := 0
	for _, c := range line {
		l = l*10 + int(c-'0')
	}
	return file + ":" + itoa(l+n) + ":" + rest
}

func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + string(rune('0'+i%10))
}

// A rename onto a name grain gives events would write a key twice (JSON
// parsers mostly keep the later, spoofed value) or replace grain's value;
// two renames onto one name would give two fields one name.
func TestPipelineRenameCollisions(t *testing.T) {
	for _, c := range []struct{ src, want string }{
		{`pipeline: rewrite: [{field: "comm", rename: "policy"}]`, `p.cue:1:45: policy pipeline: rewrite[0].rename: "policy" is a field grain gives events`},
		{`pipeline: rewrite: [{field: "comm", rename: "event"}]`, `p.cue:1:45: policy pipeline: rewrite[0].rename: "event" is a field grain gives events`},
		{`pipeline: rewrite: [{field: "comm", rename: "interface"}]`, `p.cue:1:45: policy pipeline: rewrite[0].rename: "interface" is a field`},
		{`pipeline: rewrite: [{field: "daddr", rename: "sport"}]`, `p.cue:1:46: policy pipeline: rewrite[0].rename: "sport" is a field`},
		{`pipeline: rewrite: [{field: "dport", rename: "verdict"}]`, `p.cue:1:46: policy pipeline: rewrite[0].rename: "verdict" is a field`},
		{`pipeline: rewrite: [{field: "filename", rename: "tgid"}]`, `p.cue:1:49: policy pipeline: rewrite[0].rename: "tgid" is a field`},
		{`pipeline: rewrite: [{field: "dport", rename: "dport"}]`, `p.cue:1:46: policy pipeline: rewrite[0].rename: "dport" is renamed to itself`},
		{"pipeline: rewrite: [\n\t{field: \"dport\", rename: \"port\"},\n\t{field: \"sport\", rename: \"port\"},\n]",
			`p.cue:3:27: policy pipeline: rewrite[1].rename: "port" is already the new name of dport (rename at p.cue:2:2)`},
		{"pipeline: rewrite: [\n\t{event: \"a\", field: \"dport\", rename: \"port\"},\n\t{event: [\"b\", \"a\"], field: \"sport\", rename: \"port\"},\n]",
			`p.cue:3:46: policy pipeline: rewrite[1].rename: "port" is already the new name of dport`},
	} {
		_, err := LoadBytes("p.cue", []byte(c.src))
		if err == nil || !strings.HasPrefix(err.Error(), c.want) {
			t.Errorf("%s:\n got %v\nwant %s", c.src, err, c.want)
		}
	}
	// A rename onto a kernel hook's argument that the policy's events carry.
	hook := `opens: {syscall: "openat", args: [{index: 1, type: "user_string", name: "path"}], emit: {event: "open", fields: ["path", "comm"]}}
pipeline: rewrite: [{event: "open", field: "comm", rename: "path"}]
`
	_, err := LoadBytes("p.cue", []byte(hook))
	if err == nil || !strings.Contains(err.Error(), `p.cue:2:21: policy pipeline: rename comm to "path": events "open" of policy opens (p.cue:1:1) already carry a field "path"`) {
		t.Errorf("rename onto an emitted argument: got %v", err)
	}
	if _, err := LoadBytes("p.cue", []byte(strings.Replace(hook, `event: "open", `, `event: "other", `, 1))); err != nil {
		t.Errorf("a rename of other events: %v", err)
	}
	// Renames of different events may share a name; the README's example
	// renames dport to port.
	for _, src := range []string{
		"pipeline: rewrite: [\n\t{event: \"a\", field: \"dport\", rename: \"port\"},\n\t{event: \"b\", field: \"sport\", rename: \"port\"},\n]",
		`pipeline: rewrite: [{field: "dport", rename: "port"}]`,
	} {
		if _, err := LoadBytes("p.cue", []byte(src)); err != nil {
			t.Errorf("%s: %v", src, err)
		}
	}
}
