package bpf

import (
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/internal/vmtest"
)

// A resized event ring wakes its reader at an eighth of its own size: the
// loader sets the program's constant with the map's size.
func TestLoadXDPRingSize(t *testing.T) {
	vmtest.HostOnly(t, "the loader's sizes and constant, alike on every kernel; three loads of grain_xdp cost a guest a minute")
	vmtest.RequireRoot(t)
	for _, size := range []uint32{0, 64 << 10, 4 << 20} {
		x, err := LoadXDP(XDPOptions{RingBufferBytes: size})
		if err != nil {
			t.Fatal(err)
		}
		want := size
		if want == 0 {
			want = 1 << 20
		}
		var wake uint32
		if err := x.objs.RingWakeBytes.Get(&wake); err != nil {
			t.Fatal(err)
		}
		if got := x.Maps().Events.MaxEntries(); got != want || wake != want/8 {
			t.Errorf("RingBufferBytes %d: ring of %d bytes, woken at %d; want %d and %d", size, got, wake, want, want/8)
		}
		x.Close()
	}
}

// A ring smaller than three batches of staged events is refused, saying
// the smallest size.
func TestLoadXDPRingTooSmall(t *testing.T) {
	vmtest.HostOnly(t, "refused before anything reaches the kernel")
	vmtest.RequireRoot(t)
	x, err := LoadXDP(XDPOptions{RingBufferBytes: MinRingBufferBytes / 2})
	if err == nil {
		x.Close()
		t.Fatal("a ring of half the smallest size loaded")
	}
	if !strings.Contains(err.Error(), "the smallest is 16384") {
		t.Errorf("error %q does not say the smallest size", err)
	}
}
