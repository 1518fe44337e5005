package bpf

import "testing"

// A resized event ring wakes its reader at an eighth of its own size: the
// loader sets the program's constant with the map's size.
func TestLoadXDPRingSize(t *testing.T) {
	requireRoot(t)
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
