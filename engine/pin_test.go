package engine

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/pktbuild"
	"github.com/grain-ebpf/grain/internal/plantest"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// TestTakeOverPinsOfAnotherLayout restarts the engine on pinned state whose
// maps it cannot use (here the ring buffer's size differs, as after a
// change of --event-ring-bytes or an upgrade that changed a map): the
// earlier program stays in force, on its own maps, until the new engine's
// first apply; that apply switches the pinned link and replaces the map
// pins, and the engine after it adopts them as usual.
func TestTakeOverPinsOfAnotherLayout(t *testing.T) {
	vmtest.RequireRoot(t)
	p := netns.NewPair(t)
	pins := netns.PinDir(t)
	plan := plantest.Compile(t, `block: {xdp: interfaces: ["`+p.ServerIf+`"], match: {protocol: "tcp", payload: "HTTP/1.1"}, then: "drop"}`)
	request := pktbuild.TCP4("10.0.0.2", "10.0.0.1", 40000, 80, pktbuild.PSH|pktbuild.ACK, []byte("GET / HTTP/1.1\r\n\r\n")).Bytes()
	linkPin := filepath.Join(pins, "links", p.ServerIf)

	// linkProgram is the program the pinned link runs (the XDP program,
	// or the TC program on a tcx link), and whether it drops the request.
	linkProgram := func(t *testing.T) (id ebpf.ProgramID, tcx, dropped bool) {
		t.Helper()
		l, err := link.LoadPinnedLink(linkPin, nil)
		if err != nil {
			t.Fatalf("load the pinned link: %v", err)
		}
		defer l.Close()
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		prog, err := ebpf.NewProgramFromID(info.Program)
		if err != nil {
			t.Fatal(err)
		}
		defer prog.Close()
		verdict, err := prog.Run(&ebpf.RunOptions{Data: request})
		if err != nil {
			t.Fatalf("BPF_PROG_TEST_RUN: %v", err)
		}
		tcx = info.TCX() != nil
		return info.Program, tcx, verdict == xdpDrop && !tcx || verdict == tcxDrop && tcx
	}
	// programID is the engine's program for the hook.
	programID := func(t *testing.T, e *Engine, tcx bool) ebpf.ProgramID {
		t.Helper()
		prog := xdpProgram(t, e)
		if tcx {
			var err error
			if prog, err = e.XDP().TCProgram(); err != nil {
				t.Fatal(err)
			}
		}
		info, err := prog.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		return id
	}
	// runsProgramOf checks that the pinned link runs e's program and drops
	// the request.
	runsProgramOf := func(t *testing.T, e *Engine, when string) {
		t.Helper()
		id, tcx, dropped := linkProgram(t)
		if want := programID(t, e, tcx); id != want || !dropped {
			t.Fatalf("%s: the pinned link runs program %d (drops the request: %v), want %d, dropping", when, id, dropped, want)
		}
	}
	ringSize := func(t *testing.T) uint32 {
		t.Helper()
		m, err := ebpf.LoadPinnedMap(filepath.Join(pins, "events"), nil)
		if err != nil {
			t.Fatalf("load the pinned event ring: %v", err)
		}
		defer m.Close()
		return m.MaxEntries()
	}
	start := func(t *testing.T, ring uint32) *Engine {
		t.Helper()
		var e *Engine
		err := netns.Do(p.ServerNS, func() (err error) {
			e, err = New(Options{PinPath: pins, RingBufferBytes: ring})
			return err
		})
		if err != nil {
			t.Fatalf("New with a %d-byte ring on the pinned state: %v", ring, err)
		}
		return e
	}
	apply := func(t *testing.T, e *Engine) {
		t.Helper()
		if err := netns.Do(p.ServerNS, func() error { return e.Apply(plan) }); err != nil {
			t.Fatal(err)
		}
	}

	first := start(t, 1<<16)
	apply(t, first)
	_, tcx, _ := linkProgram(t)
	firstID := programID(t, first, tcx)
	if err := first.Release(); err != nil {
		t.Fatal(err)
	}

	second := start(t, 1<<17)
	if !second.Adopted() {
		t.Error("the engine on pinned state of another layout does not report it in force (Adopted): a failed start would remove it")
	}
	if id, _, dropped := linkProgram(t); id != firstID || !dropped {
		t.Fatalf("before the first apply, the pinned link runs program %d (drops the request: %v), want the first engine's %d, still dropping", id, dropped, firstID)
	}
	if got := ringSize(t); got != 1<<16 {
		t.Fatalf("before the first apply, the pinned ring holds %d bytes, want the first engine's %d", got, 1<<16)
	}
	apply(t, second)
	runsProgramOf(t, second, "after the first apply")
	if got := ringSize(t); got != 1<<17 {
		t.Fatalf("after the first apply, the pinned ring holds %d bytes, want the second engine's %d", got, 1<<17)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(pins, "replacing-*")); len(leftovers) != 0 {
		t.Errorf("temporary pins left behind: %v", leftovers)
	}
	if err := second.Release(); err != nil {
		t.Fatal(err)
	}

	// The next engine with the same layout adopts at once: its own program
	// runs the pinned rules before any apply.
	third := start(t, 1<<17)
	runsProgramOf(t, third, "an engine of the same layout, before any apply")
	if err := third.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(pins); !os.IsNotExist(err) {
		entries, _ := os.ReadDir(pins)
		t.Errorf("pins left behind at %s after Close: %v", pins, entries)
	}
}
