package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestCommittedConstantsMatchObjects checks that bpf/limits.go and
// bpf/hook_limits.go hold exactly the enums of the committed objects, so
// that codegen and the engine use the C programs' limits and codes (`make
// check-generated` checks that the objects match their C sources).
func TestCommittedConstantsMatchObjects(t *testing.T) {
	for _, c := range []struct {
		out, header string
		objects     []string
	}{
		{"limits.go", "grain.h", []string{"xdp_bpfel.o"}},
		{"hook_limits.go", "hook.h", []string{"hook_x86_bpfel.o", "hook_arm64_bpfel.o"}},
	} {
		dir := filepath.Join("..", "..")
		wd, err := os.Getwd()
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chdir(dir); err != nil {
			t.Fatal(err)
		}
		want, err := Generate("bpf", c.header, c.objects)
		os.Chdir(wd)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(filepath.Join(dir, c.out))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("bpf/%s differs from the enums of %v: run `go generate ./bpf`", c.out, c.objects)
		}
	}
}

func TestGoName(t *testing.T) {
	for c, want := range map[string]string{
		"GRAIN_MAX_RULES":            "MaxRules",
		"GRAIN_MAX_CIDR_ENTRIES":     "MaxCIDREntries",
		"GRAIN_MAX_IPV6_EXT_HEADERS": "MaxIPv6ExtHeaders",
		"GRAIN_STAT_NOT_IP":          "StatNotIP",
		"GRAIN_AUX_SRC4_DEFAULT":     "AuxSrc4Default",
		"GRAIN_HOOK_T_FD":            "HookTFd",
		"GRAIN_DEDUP_TCP_FLAGS":      "DedupTCPFlags",
	} {
		got, err := goName(c)
		if err != nil || got != want {
			t.Errorf("goName(%s) = %q, %v; want %q", c, got, err, want)
		}
	}
	for _, bad := range []string{"MAX_RULES", "GRAIN_", "GRAIN_MAX__RULES"} {
		if got, err := goName(bad); err == nil {
			t.Errorf("goName(%s) = %q, want an error", bad, got)
		}
	}
}
