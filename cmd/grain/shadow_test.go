package main

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/grain-ebpf/grain/internal/vmtest"
)

func TestCheckReportsShadowedPolicies(t *testing.T) {
	vmtest.HostOnly(t, "no kernel takes part")
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"lists.cue": "package fw\n\n#LAN: {xdp: interfaces: [\"eth0\"], ...}\n",
		"block.cue": "package fw\n\ndrop_lan: #LAN & {priority: 10, match: saddr: \"10.0.0.0/8\", then: \"drop\"}\n" +
			"ssh: #LAN & {priority: 20, match: {saddr: \"10.1.2.3\", dport: 22}, then: \"pass\"}\n",
	})
	block := filepath.Join(dir, "block.cue")
	msg := "never sees a packet: policy drop_lan (" + block + ":3:1) comes first in rule order, drops, and matches every packet it matches: give it a priority below 10 (lower runs first) or remove it\n"

	var out, errOut bytes.Buffer
	if code := run([]string{"check", dir}, &out, &errOut); code != 0 {
		t.Fatalf("grain check: exit %d, want 0 (a warning): %s", code, errOut.String())
	}
	if want := block + ":4:1: warning: policy ssh: " + msg; errOut.String() != want {
		t.Errorf("stderr\n%q\nwant\n%q", errOut.String(), want)
	}
	if want := dir + ": 2 policies in 2 files, 2 packet rules: OK\n"; out.String() != want {
		t.Errorf("stdout %q, want %q", out.String(), want)
	}

	out.Reset()
	errOut.Reset()
	if code := run([]string{"check", "--strict", dir}, &out, &errOut); code != 1 {
		t.Fatalf("grain check --strict: exit %d, want 1", code)
	}
	if want := block + ":4:1: policy ssh: " + msg; errOut.String() != want {
		t.Errorf("stderr\n%q\nwant\n%q", errOut.String(), want)
	}
	if out.Len() != 0 {
		t.Errorf("stdout %q, want nothing", out.String())
	}
}
