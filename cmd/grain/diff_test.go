package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/internal/pktbuild"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// TestGrainDiff runs `grain diff` end to end on a repository made here:
// revisions and directories, field changes, rule order, interfaces,
// hooks and kernel features, a pcap written here replayed through both
// trees, Markdown, and diff's exit codes.
func TestGrainDiff(t *testing.T) {
	vmtest.HostOnly(t, "no kernel takes part")
	r := newPolicyRepo(t)
	r.write(map[string]string{"policies/web.cue": repoPolicies, "README.md": "policies\n",
		"policies/pipeline.cue": "pipeline: sample: [{event: \"http_blocked\", one_in: 10}]\n"})
	r.commit("policies")
	edited := strings.NewReplacer(
		`payload: "HTTP/1.1"`, `payload: "HTTP/1.0"`,
		`priority: 10`, `priority: 30`,
		`count_dns: {
	xdp: interfaces: ["eth0"]`, `count_dns: {
	xdp: interfaces: ["eth0", "eth1"]`,
	).Replace(repoPolicies) + `kill_canary: {
	syscall: "openat"
	args: [{index: 1, type: "user_string", name: "filename"}]
	match: args: filename: "/tmp/canary"
	signal: "SIGKILL"
}
`
	r.write(map[string]string{"policies/web.cue": edited, "policies/pipeline.cue": "pipeline: sample: [{event: \"http_blocked\", one_in: 100}]\n"})
	r.commit("edit")
	pcapPath := filepath.Join(t.TempDir(), "traffic.pcap")
	http := func(src, version string, sport uint16) []byte {
		return pktbuild.TCP4(src, "10.0.0.1", sport, 80, pktbuild.ACK, []byte("GET / "+version+"\r\n")).Bytes()
	}
	writePcap(t, pcapPath,
		http("10.0.0.2", "HTTP/1.1", 1),                                          // drop by block_http -> pass
		http("10.0.0.2", "HTTP/1.0", 2),                                          // pass -> drop by block_http
		http("10.9.0.2", "HTTP/1.0", 3),                                          // pass by allow_admin -> drop by block_http
		http("10.0.0.3", "HTTP/1.1", 4),                                          // like the first
		pktbuild.TCP4("10.0.0.2", "10.0.0.1", 5, 443, pktbuild.ACK, nil).Bytes(), // unchanged
	)

	want := `+ policy kill_canary (web.cue:19:1)
~ policy allow_admin (web.cue:8:1)
    priority: 10 -> 30
~ policy block_http (web.cue:1:1)
    match.payload[0]: "HTTP/1.1" -> "HTTP/1.0"
~ policy count_dns (web.cue:14:1)
    xdp.interfaces: [eth0] -> [eth0, eth1]
~ rule order: allow_admin, block_http, count_dns -> block_http, allow_admin, count_dns
+ interface eth1
+ hook syscall openat
+ kernel feature needed: BTF (/sys/kernel/btf/vmlinux)
+ kernel feature needed: bpf_send_signal (signal actions)
+ kernel feature needed: raw tracepoint raw_syscalls/sys_enter
~ pipeline
    sample[0]: {"events":["http_blocked"],"one_in":10} -> {"events":["http_blocked"],"one_in":100}
pcap ` + pcapPath + `: 5 frames, 4 changed
    2: drop by block_http -> pass (no policy) (frames 1, 4)
    1: pass (no policy) -> drop by block_http (frames 2)
    1: pass by allow_admin -> drop by block_http (frames 3)
`
	dir := filepath.Join(r.dir, "policies")
	if code, out, errOut := runIn(t, dir, "diff", "--pcap", pcapPath, "main~1", "main"); code != 1 || out != want {
		t.Errorf("grain diff main~1 main: exit %d\n%s%s\nwant exit 1\n%s", code, out, errOut, want)
	}
	// From the root, REV:PATH names the tree.
	if code, out, _ := runIn(t, r.dir, "diff", "main~1:policies", "main:policies"); code != 1 || !strings.HasPrefix(out, "+ policy kill_canary (web.cue:19:1)\n") {
		t.Errorf("grain diff main~1:policies main:policies: exit %d\n%s", code, out)
	}
	md := `### grain diff ` + "`main~1` → `main`" + `

| | policy | field | old | new |
|---|---|---|---|---|
| added | ` + "`kill_canary`" + ` (web.cue:19:1) | | | |
| changed | ` + "`allow_admin`" + ` (web.cue:8:1) | ` + "`priority`" + ` | 10 | 30 |
| changed | ` + "`block_http`" + ` (web.cue:1:1) | ` + "`match.payload[0]`" + ` | "HTTP/1.1" | "HTTP/1.0" |
| changed | ` + "`count_dns`" + ` (web.cue:14:1) | ` + "`xdp.interfaces`" + ` | [eth0] | [eth0, eth1] |

**Rule order:** allow_admin, block_http, count_dns → block_http, allow_admin, count_dns

**Interfaces added:** eth1

**Hooks added:** syscall openat

**Kernel features newly needed:** BTF (/sys/kernel/btf/vmlinux), bpf_send_signal (signal actions), raw tracepoint raw_syscalls/sys_enter

**Event pipeline:**

| stage | old | new |
|---|---|---|
| ` + "`sample[0]`" + ` | {"events":["http_blocked"],"one_in":10} | {"events":["http_blocked"],"one_in":100} |

`
	if code, out, _ := runIn(t, dir, "diff", "--format", "markdown", "main~1", "main"); code != 1 || out != md {
		t.Errorf("grain diff --format markdown: exit %d\n%s\nwant\n%s", code, out, md)
	}
	// Nothing changed: a revision against the working tree it came from.
	if code, out, _ := runIn(t, dir, "diff", "--pcap", pcapPath, "main", "."); code != 0 ||
		out != "pcap "+pcapPath+": 5 frames, 0 changed\nno changes\n" {
		t.Errorf("grain diff main .: exit %d, %q; want 0", code, out)
	}
	// Errors: exit 2.
	for _, args := range [][]string{
		{"diff", "main"},
		{"diff", "nosuchrevision", "main"},
		{"diff", "--format", "html", "main~1", "main"},
		{"diff", "--pcap", filepath.Join(r.dir, "README.md"), "main~1", "main"},
	} {
		if code, _, errOut := runIn(t, dir, args...); code != 2 || errOut == "" {
			t.Errorf("grain %s: exit %d, %q; want 2 and a message", strings.Join(args, " "), code, errOut)
		}
	}
}
