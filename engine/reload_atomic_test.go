package engine

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf/link"

	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/plantest"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// Ports of the UDP traffic: the rules drop portX, not portY.
const (
	portX = 9101
	portY = 9102
)

// engineRig is an engine over a pair of namespaces, its pins in a
// directory of the test's own.
type engineRig struct {
	t    *testing.T
	p    *netns.Pair
	e    *Engine
	pins string
}

func newEngineRig(t *testing.T) *engineRig {
	vmtest.RequireRoot(t)
	g := &engineRig{t: t, p: netns.NewPair(t), pins: netns.PinDir(t)}
	var err error
	if g.e, err = New(Options{PinPath: g.pins}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.e.Close() })
	return g
}

// drops sums the packets the rules dropped.
func (g *engineRig) drops() uint64 {
	g.t.Helper()
	counters, err := g.e.Counters()
	if err != nil {
		g.t.Fatal(err)
	}
	var n uint64
	for _, c := range counters {
		if c.Verdict == "drop" {
			n += c.Packets
		}
	}
	return n
}

// pinnedLinks lists the link pins under dir of the pin directory.
func (g *engineRig) pinnedLinks(dir string) []string {
	entries, _ := os.ReadDir(filepath.Join(g.pins, dir))
	var names []string
	for _, ent := range entries {
		names = append(names, ent.Name())
	}
	return names
}

// TestPrepareHoldsTheEngine: between Prepare and Commit or Abort the
// engine's lock is held, so a re-apply after link events (FollowLinks)
// cannot write over the prepared generation or flip to it.
func TestPrepareHoldsTheEngine(t *testing.T) {
	vmtest.HostOnly(t, "the engine's lock, in userspace")
	g := newEngineRig(t)
	plan := plantest.Compile(t, plantest.UDPDrop("drop_x", portX, g.p.ServerIf))
	var prepared *PreparedRules
	if err := netns.Do(g.p.ServerNS, func() (err error) { prepared, err = g.e.Prepare(plan); return err }); err != nil {
		t.Fatal(err)
	}
	if g.e.mu.TryLock() {
		g.e.mu.Unlock()
		t.Fatal("the engine is not locked between Prepare and Commit")
	}
	if err := prepared.Commit(); err != nil {
		t.Fatal(err)
	}
	if !g.e.mu.TryLock() {
		t.Fatal("the engine stays locked after Commit")
	}
	g.e.mu.Unlock()
	if err := netns.Do(g.p.ServerNS, func() (err error) { prepared, err = g.e.Prepare(plan); return err }); err != nil {
		t.Fatal(err)
	}
	prepared.Abort()
	if !g.e.mu.TryLock() {
		t.Fatal("the engine stays locked after Abort")
	}
	g.e.mu.Unlock()
	if err := prepared.Commit(); err == nil {
		t.Error("Commit after Abort succeeded")
	}
}

// TestRenamedInterfaceKeepsItsLink: when an attached interface is renamed
// to a name the plan still selects, the re-apply moves its link (and pin)
// to the new name rather than detaching and attaching again, which would
// leave it without the program in between, or fail where the old link
// still held the interface.
func TestRenamedInterfaceKeepsItsLink(t *testing.T) {
	g := newEngineRig(t)
	const renamed = "grenamed0"
	plan := plantest.Compile(t, plantest.UDPDrop("drop_x", portX, "gsrv*", "grenamed*"))
	apply := func() error { return netns.Do(g.p.ServerNS, func() error { return g.e.Apply(plan) }) }
	if err := apply(); err != nil {
		t.Fatal(err)
	}
	linkID := func(name string) link.ID {
		t.Helper()
		l, err := link.LoadPinnedLink(filepath.Join(g.pins, "links", name), nil)
		if err != nil {
			t.Fatalf("the pinned link of %s: %v", name, err)
		}
		defer l.Close()
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		return info.ID
	}
	before := linkID(g.p.ServerIf)
	for _, args := range [][]string{{"down"}, {"name", renamed}, {"up"}} {
		if out, err := g.p.Run(g.p.ServerNS, append([]string{"ip", "link", "set", "dev", g.p.ServerIf}, args...)...); err != nil {
			t.Fatalf("ip link set %v: %v: %s", args, err, out)
		}
		if args[0] == "name" {
			g.p.ServerIf = renamed
		}
	}
	if err := netns.Do(g.p.ServerNS, func() error { return g.e.reapply() }); err != nil {
		t.Fatal(err)
	}
	if got := g.e.Interfaces(); !slices.Equal(got, []string{renamed}) {
		t.Fatalf("attached after the rename: %v, want %s", got, renamed)
	}
	if got := g.pinnedLinks("links"); !slices.Equal(got, []string{renamed}) {
		t.Fatalf("pinned links after the rename: %v, want %s", got, renamed)
	}
	if after := linkID(renamed); after != before {
		t.Errorf("the renamed interface's link is %d, was %d: it was detached and attached again", after, before)
	}
	g.p.UDPEnforced(t, "after the rename", portX, portY, g.drops)
}
