package bpf

import (
	"os"
	"testing"
)

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to load BPF programs (runs in .ci/run)")
	}
}

func TestLoadXDP(t *testing.T) {
	requireRoot(t)
	x, err := LoadXDP(XDPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	info, err := x.Program().Info()
	if err != nil {
		t.Fatal(err)
	}
	insns, _ := info.VerifiedInstructions()
	t.Logf("verified instructions: %d", insns)
}
