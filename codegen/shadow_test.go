package codegen

import (
	"strings"
	"testing"
)

func shadowsOf(t *testing.T, src string) string {
	t.Helper()
	plan, err := Compile(load(t, src), Options{})
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, s := range Shadows(plan) {
		lines = append(lines, s.String())
	}
	return strings.Join(lines, "\n")
}

func TestShadowsReported(t *testing.T) {
	const src = `#eth0: {xdp: interfaces: ["eth0"], ...}
drop_lan: #eth0 & {priority: 10, match: saddr: "10.0.0.0/8", then: "drop"}
// Inside 10/8, on TCP port 22: drop_lan takes all of it.
ssh_from_host: #eth0 & {priority: 20, match: {saddr: "10.1.2.3", protocol: "tcp", dport: 22}, then: "pass"}
// A count rule behind it never counts.
count_lan_web: #eth0 & {priority: 30, match: {saddr: "10.9.0.0/16", dport: [80, 443]}, then: "count"}
pass_http: #eth0 & {priority: 40, match: {protocol: "tcp", payload: "HTTP/1.1"}, then: "pass"}
// The same content and more conditions: pass_http decides first.
drop_http_get: #eth0 & {priority: 50, match: {protocol: "tcp", dport: 80, payload: ["GET ", "HTTP/1.1"]}, then: "drop"}
`
	got := shadowsOf(t, src)
	want := strings.Join([]string{
		"test.cue:4:1: policy ssh_from_host: never sees a packet: policy drop_lan (test.cue:2:1) comes first in rule order, drops, and matches every packet it matches: give it a priority below 10 (lower runs first) or remove it",
		"test.cue:6:1: policy count_lan_web: never sees a packet: policy drop_lan (test.cue:2:1) comes first in rule order, drops, and matches every packet it matches: give it a priority below 10 (lower runs first) or remove it",
		"test.cue:9:1: policy drop_http_get: never sees a packet: policy pass_http (test.cue:7:1) comes first in rule order, passes, and matches every packet it matches: give it a priority below 40 (lower runs first) or remove it",
	}, "\n")
	if got != want {
		t.Errorf("shadows:\n%s\nwant\n%s", got, want)
	}
}

// What is not certainly shadowed is not reported.
func TestShadowsOnlyWhenCertain(t *testing.T) {
	const src = `#eth0: {xdp: interfaces: ["eth0"], ...}
// A count rule decides nothing: what follows it is reached.
count_all: #eth0 & {priority: 1, then: "count"}
// Contents are not compared as languages: "HTTP" occurs wherever
// "HTTP/1.1" does, but only identical contents count.
drop_http: #eth0 & {priority: 10, match: {protocol: "tcp", payload: "HTTP"}, then: "drop"}
drop_http11: #eth0 & {priority: 20, match: {protocol: "tcp", payload: "HTTP/1.1"}, then: "drop"}
// Wider than the rule before it, in one field.
drop_ssh_lan: #eth0 & {priority: 30, match: {saddr: "10.0.0.0/8", dport: 22}, then: "drop"}
drop_ssh_all: #eth0 & {priority: 40, match: dport: 22, then: "drop"}
// Another interface.
eth1_ssh: {xdp: interfaces: ["eth1"], priority: 50, match: {saddr: "10.0.0.0/8", dport: 22}, then: "pass"}
// Later rules do not shadow earlier ones.
pass_any_udp: #eth0 & {priority: 60, match: protocol: "udp", then: "pass"}
`
	if got := shadowsOf(t, src); got != "" {
		t.Errorf("reported:\n%s", got)
	}
}
