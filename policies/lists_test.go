package policies

import (
	"strings"
	"testing"
)

// Every list-valued condition of both policy kinds, and the selecting
// lists of pipeline stages, refuses an empty list at its position, so that
// an empty generated blocklist never turns into "match everything".
func TestEmptyListsAreRefused(t *testing.T) {
	const xdp = "p: {\n\txdp: interfaces: [\"eth0\"]\n\tthen: \"drop\"\n\tmatch: "
	const probe = "p: {\n\tkprobe: \"tcp_v4_connect\"\n\targs: [{index: 0, type: \"sock\"}, {index: 1, type: \"string\", name: \"s\"}]\n\temit: event: \"e\"\n\tmatch: "
	const syscall = "p: {\n\temit: event: \"e\"\n\tsyscall: "
	for _, c := range []struct {
		src, path string
		col       int // of the empty list, on the last line
	}{
		{xdp + `{protocol: "udp", saddr: []}`, "match.saddr", 34},
		{xdp + `{daddr: []}`, "match.daddr", 17},
		{xdp + `{protocol: "udp", sport: []}`, "match.sport", 34},
		{xdp + `{dport: []}`, "match.dport", 17},
		{xdp + `{protocol: []}`, "match.protocol", 20},
		{xdp + `{tcp_flags: []}`, "match.tcp_flags", 21},
		{xdp + `{interface: []}`, "match.interface", 21},
		{xdp + `{payload: []}`, "match.payload", 19},
		{probe + `{saddr: []}`, "match.saddr", 17},
		{probe + `{dport: []}`, "match.dport", 17},
		{probe + `{process: comm: []}`, "match.process.comm", 25},
		{probe + `{process: uid: []}`, "match.process.uid", 24},
		{probe + `{process: cgroup: []}`, "match.process.cgroup", 27},
		{probe + `{process: comm: not: []}`, "match.process.comm.not", 30},
		{probe + `{process: comm: prefix: []}`, "match.process.comm.prefix", 33},
		{probe + `{args: s: []}`, "match.args.s", 19},
		{probe + `[{process: pid: 1}, {process: pid: []}]`, "match[1].process.pid", 44},
		{probe + `[]`, "match", 9},
		{syscall + `[]`, "syscall", 11},
	} {
		src := c.src + "\n}\n"
		line := strings.Count(c.src, "\n") + 1
		_, err := LoadBytes("p.cue", []byte(src))
		want := Error{Pos: pos("p.cue", line, c.col), Policy: "p", Msg: c.path + ": " + emptyList}
		if list, ok := err.(ErrorList); !ok || len(list) == 0 || list[0] != want {
			t.Errorf("%s:\n got %v\nwant %v", src, err, want)
		}
	}
}

func TestEmptyPipelineListsAreRefused(t *testing.T) {
	for _, c := range []struct{ src, want string }{
		{`pipeline: filter: [{event: [], field: "saddr", cidr: "10.0.0.0/8"}]`, "p.cue:1:28: policy pipeline: filter[0].event: "},
		{`pipeline: filter: [{field: "saddr", cidr: []}]`, "p.cue:1:43: policy pipeline: filter[0].cidr: "},
		{`pipeline: filter: [{field: "dport", equals: []}]`, "p.cue:1:45: policy pipeline: filter[0].equals: "},
		{`pipeline: rewrite: [{event: [], field: "saddr", redact: true}]`, "p.cue:1:29: policy pipeline: rewrite[0].event: "},
	} {
		_, err := LoadBytes("p.cue", []byte(c.src))
		if err == nil || err.Error() != c.want+emptyList {
			t.Errorf("%s:\n got %v\nwant %s", c.src, err, c.want+emptyList)
		}
	}
}
