package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// dropEmptyList is a generated blocklist that came out empty. It once
// read as "no constraint": it dropped all TCP.
const dropEmptyList = `blocklist: {
	xdp: interfaces: ["eth0"]
	match: {protocol: "tcp", saddr: []}
	then: "drop"
}
`

// A tree whose blocklist is empty is refused, with the list's position,
// by grain run at start (traffic keeps flowing, nothing is attached) and
// at a reload (the previous policy stays enforced), checked with real
// traffic between two network namespaces.
func TestEmptyBlocklistIsRefused(t *testing.T) {
	vmtest.HostOnly(t, "the refusal is the compiler's; no program differs by kernel")
	p := netns.NewPair(t)
	port := p.HTTPServer(t)
	bin, err := buildGrain()
	if err != nil {
		t.Fatalf("build grain: %v", err)
	}

	dir := t.TempDir()
	file := filepath.Join(dir, "policy.cue")
	writePolicy(t, file, dropEmptyList)
	wantErr := file + ":3:34: policy blocklist: match.saddr: empty list"
	out, err := p.Run(p.ServerNS, bin, "run", "--policies", dir, "--interface", p.ServerIf, "--pin-path", netns.PinDir(t))
	if err == nil || !strings.Contains(string(out), wantErr) {
		t.Fatalf("grain run with an empty blocklist: %v, output:\n%s\nwant it refused with %q", err, out, wantErr)
	}
	if blocked(t, p, port, "GET / HTTP/1.0") || blocked(t, p, port, "GET / HTTP/1.1") {
		t.Fatal("after grain refused to start, traffic must flow")
	}

	// A running grain keeps its good policy when the blocklist is added.
	writePolicy(t, file, fmt.Sprintf(blockVersion, "HTTP/1.1"))
	d := startGrain(t, p.ServerNS, "run", "--policies", dir, "--interface", p.ServerIf,
		"--pin-path", netns.PinDir(t), "--debounce", "100ms")
	if !blocked(t, p, port, "GET / HTTP/1.1") || blocked(t, p, port, "GET / HTTP/1.0") {
		t.Fatal("initial policy: want HTTP/1.1 blocked and HTTP/1.0 passed")
	}
	writePolicy(t, filepath.Join(dir, "generated.cue"), dropEmptyList)
	d.waitLog(t, "reload failed", 1)
	if want := filepath.Join(dir, "generated.cue") + ":3:34: policy blocklist: match.saddr: empty list"; !strings.Contains(d.log(), want) {
		t.Errorf("the refused reload does not say %q; stderr:\n%s", want, d.log())
	}
	if blocked(t, p, port, "GET / HTTP/1.0") || !blocked(t, p, port, "GET / HTTP/1.1") {
		t.Fatal("after the empty blocklist was added, the previous policy (block HTTP/1.1 only) must stay enforced")
	}
}
