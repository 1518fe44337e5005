package bpf

import (
	"fmt"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/grain-ebpf/grain/internal/vmtest"
)

// The TC program shares the XDP program's maps: loading it twice returns
// the same program, and it reads the rules the XDP program reads (the
// packet tests in engine/ run both on the same crafted packets).
func TestLoadTC(t *testing.T) {
	vmtest.RequireRoot(t)
	x, err := LoadXDP(XDPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer x.Close()
	tc, err := x.TCProgram()
	if err != nil {
		t.Fatal(err)
	}
	again, err := x.TCProgram()
	if err != nil || again != tc {
		t.Fatalf("second TCProgram: %v, %v (want the first program)", again, err)
	}
	if tc.Type() != ebpf.SchedCLS {
		t.Fatalf("TC program type %v, want SchedCLS", tc.Type())
	}
	info, err := tc.Info()
	if err != nil {
		t.Fatal(err)
	}
	ids, _ := info.MapIDs()
	want := map[ebpf.MapID]bool{}
	for _, m := range []*ebpf.Map{x.Maps().Rules, x.Maps().Active, x.Maps().Events} {
		mi, err := m.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := mi.ID()
		want[id] = true
	}
	for _, id := range ids {
		delete(want, id)
	}
	if len(want) != 0 {
		t.Fatalf("TC program does not use the XDP program's maps %v (uses %v)", want, ids)
	}
}

// tcx came with Linux 6.6: the probe must say so on both sides of it (the
// VM tests run Debian's 6.1).
func TestHaveTCX(t *testing.T) {
	vmtest.RequireRoot(t)
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	release := unix.ByteSliceToString(u.Release[:])
	var major, minor int
	if _, err := fmt.Sscanf(release, "%d.%d", &major, &minor); err != nil {
		t.Fatalf("kernel release %q: %v", release, err)
	}
	err := HaveTCX()
	t.Logf("kernel %s: tcx: %v", release, err)
	switch has := major > 6 || major == 6 && minor >= 6; {
	case has && err != nil:
		t.Errorf("kernel %s has tcx, the probe says: %v", release, err)
	case !has && err == nil:
		t.Errorf("kernel %s has no tcx, the probe found it", release)
	case !has && !strings.Contains(err.Error(), "tcx"):
		t.Errorf("the error does not name tcx: %v", err)
	}
}
