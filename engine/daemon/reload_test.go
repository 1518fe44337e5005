package daemon

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/grain-ebpf/grain/engine"
	"github.com/grain-ebpf/grain/engine/hook"
	"github.com/grain-ebpf/grain/internal/hookchild"
	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/pktbuild"
	"github.com/grain-ebpf/grain/internal/plantest"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// XDP verdicts.
const (
	xdpDrop = 1
	xdpPass = 2
)

// Ports of the UDP traffic: rule set A drops portX, rule set B portY.
const (
	portX = 9101
	portY = 9102
)

// reloadRig is a Reloader over a pair of namespaces whose server side has
// two interfaces: the veth that carries the traffic, and an ifb device
// that holds another XDP program, so that grain cannot attach to it.
type reloadRig struct {
	t        *testing.T
	p        *netns.Pair
	e        *engine.Engine
	r        *Reloader
	dir      string
	pins     string
	other    string // the ifb device
	otherIdx uint32
	otherXDP link.Link // the other program's link, until removeOther
}

func newReloadRig(t *testing.T) *reloadRig {
	vmtest.RequireRoot(t)
	g := &reloadRig{t: t, p: netns.NewPair(t), dir: t.TempDir(), pins: netns.PinDir(t), other: "gifbo0"}
	if out, err := g.p.Run(g.p.ServerNS, "ip", "link", "add", g.other, "type", "ifb"); err != nil {
		t.Skipf("kernel lacks ifb devices (CONFIG_IFB): %v: %s", err, out)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "other_pass", Type: ebpf.XDP, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	err = netns.Do(g.p.ServerNS, func() error {
		ifc, err := net.InterfaceByName(g.other)
		if err != nil {
			return err
		}
		g.otherIdx = uint32(ifc.Index)
		// The kernel's default mode: generic on ifb, which has no native XDP.
		g.otherXDP, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifc.Index})
		return err
	})
	if err != nil {
		t.Fatalf("attach another XDP program to %s: %v", g.other, err)
	}
	t.Cleanup(g.removeOther)
	if g.e, err = engine.New(engine.Options{PinPath: g.pins}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.e.Close() })
	g.r = &Reloader{Dir: g.dir, Engine: g.e, Log: slog.New(slog.NewTextHandler(t.Output(), nil))}
	return g
}

func (g *reloadRig) removeOther() {
	if g.otherXDP != nil {
		g.otherXDP.Close()
		g.otherXDP = nil
	}
}

// reload writes src as the policy tree and reloads it in the server's
// namespace.
func (g *reloadRig) reload(src string) error {
	g.t.Helper()
	if err := os.WriteFile(filepath.Join(g.dir, "policy.cue"), []byte(src), 0o644); err != nil {
		g.t.Fatal(err)
	}
	return netns.Do(g.p.ServerNS, func() error { return g.r.Reload(context.Background(), true) })
}

// drops sums the packets the rules dropped.
func (g *reloadRig) drops() uint64 {
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

// verdictOnOther runs a UDP datagram to port through the XDP program as if
// it arrived on the ifb device (the test run's ingress_ifindex), which
// carries no traffic of its own: the rules the kernel holds for it.
func (g *reloadRig) verdictOnOther(port int) uint32 {
	t := g.t
	t.Helper()
	frame := pktbuild.Frame{Src: netip.MustParseAddr("10.0.0.2"), Dst: netip.MustParseAddr("10.0.0.1"), Protocol: 17,
		SPort: 40000, DPort: uint16(port), Payload: []byte("datagram")}.Bytes()
	// struct xdp_md: data, data_end, data_meta, ingress_ifindex,
	// rx_queue_index, egress_ifindex.
	md := make([]byte, 24)
	binary.NativeEndian.PutUint32(md[4:], uint32(len(frame)))
	binary.NativeEndian.PutUint32(md[12:], g.otherIdx)
	var verdict uint32
	prog, err := g.e.XDP().Program()
	if err != nil {
		t.Fatal(err)
	}
	err = netns.Do(g.p.ServerNS, func() (err error) {
		verdict, err = prog.Run(&ebpf.RunOptions{Data: frame, Context: md})
		return err
	})
	if err != nil {
		t.Fatalf("BPF_PROG_TEST_RUN on %s: %v", g.other, err)
	}
	return verdict
}

// pinnedLinks lists the link pins under dir of the pin directory.
func (g *reloadRig) pinnedLinks(dir string) []string {
	entries, _ := os.ReadDir(filepath.Join(g.pins, dir))
	var names []string
	for _, ent := range entries {
		names = append(names, ent.Name())
	}
	return names
}

// wantStatus checks the Reloader's status: the last result, the rules
// and the interfaces it says are in force, and what the error names.
func (g *reloadRig) wantStatus(when, result string, rules, interfaces []string, errorNames ...string) {
	g.t.Helper()
	st := g.r.Status()
	if st.LastResult != result || !slices.Equal(st.Rules, rules) || !slices.Equal(st.Interfaces, interfaces) {
		g.t.Errorf("%s: status says %s, rules %v on %v; want %s, rules %v on %v (error: %s)",
			when, st.LastResult, st.Rules, st.Interfaces, result, rules, interfaces, st.LastError)
	}
	for _, name := range errorNames {
		if !strings.Contains(st.LastError, name) {
			g.t.Errorf("%s: the error does not name %s: %s", when, name, st.LastError)
		}
	}
}

// TestReloadAttachFailureKeepsRulesInForce: a reload whose new interface
// cannot be attached (another XDP program holds it) fails as a whole: the
// packets on the interface already attached are judged by the rules in
// force, not by the new ones (which a reload that flipped before
// attaching put in force), the status says so, and nothing of the failed
// reload stays attached or pinned. Once the other program is gone, the
// same reload applies on both interfaces.
func TestReloadAttachFailureKeepsRulesInForce(t *testing.T) {
	g := newReloadRig(t)
	veth := g.p.ServerIf
	if err := g.reload(plantest.UDPDrop("drop_x", portX, veth)); err != nil {
		t.Fatalf("rule set A: %v", err)
	}
	g.p.UDPEnforced(t, "rule set A", portX, portY, g.drops)

	err := g.reload(plantest.UDPDrop("drop_y", portY, veth, g.other))
	if err == nil || !strings.Contains(err.Error(), g.other) || !strings.Contains(err.Error(), `"other_pass"`) {
		t.Fatalf("reload to rule set B with %s held by another XDP program: %v; want an error naming %s and the program", g.other, err, g.other)
	}
	g.p.UDPEnforced(t, "after the failed reload to B", portX, portY, g.drops)
	if v := g.verdictOnOther(portY); v != xdpPass {
		t.Errorf("after the failed reload, the kernel's rules for %s %s UDP to port %d", g.other, fmt.Sprint(v), portY)
	}
	g.wantStatus("after the failed reload", "failure", []string{"drop_x"}, []string{veth}, g.other, "other_pass")
	if hooks := g.e.InterfaceHooks(); len(hooks) != 1 {
		t.Errorf("attached after the failed reload: %v, want %s only", hooks, veth)
	}
	if links, pending := g.pinnedLinks("links"), g.pinnedLinks("links-pending"); !slices.Equal(links, []string{veth}) || len(pending) != 0 {
		t.Errorf("pinned links after the failed reload: %v, pending %v; want %s only", links, pending, veth)
	}

	g.removeOther()
	if err := g.reload(plantest.UDPDrop("drop_y", portY, veth, g.other)); err != nil {
		t.Fatalf("rule set B once %s is free: %v", g.other, err)
	}
	g.p.UDPEnforced(t, "rule set B", portY, portX, g.drops)
	if v := g.verdictOnOther(portY); v != xdpDrop {
		t.Errorf("rule set B: the kernel's rules for %s %s UDP to port %d, want drop", g.other, fmt.Sprint(v), portY)
	}
	both := []string{g.other, veth}
	slices.Sort(both)
	g.wantStatus("rule set B", "success", []string{"drop_y"}, both)
	if links := g.pinnedLinks("links"); !slices.Equal(links, both) {
		t.Errorf("pinned links with rule set B: %v, want %v", links, both)
	}
}

// TestReloadHookFailureKeepsPacketRules: the kernel-hook half and the
// packet half of a reload come into force together or not at all. A
// reload that adds a hook the kernel lacks changes no packet rule; one
// whose hooks attach but whose packet half cannot attach changes no hook.
func TestReloadHookFailureKeepsPacketRules(t *testing.T) {
	g := newReloadRig(t)
	g.r.Hooks = newTestHooks(t)
	veth := g.p.ServerIf
	hookA := `close_a: {tracepoint: "syscalls/sys_enter_close", args: [{field: "fd", type: "int"}], match: args: fd: 987611, count: metric: "closes"}` + "\n"
	if err := g.reload(plantest.UDPDrop("drop_x", portX, veth) + hookA); err != nil {
		t.Fatalf("rule set A: %v", err)
	}
	g.p.UDPEnforced(t, "rule set A", portX, portY, g.drops)
	hooksA := g.r.Hooks.Attachments()

	missing := `nothing: {tracepoint: "syscalls/sys_enter_grain_no_such_call", count: metric: "none"}` + "\n"
	err := g.reload(plantest.UDPDrop("drop_y", portY, veth) + hookA + missing)
	if err == nil || !strings.Contains(err.Error(), "grain_no_such_call") {
		t.Fatalf("reload with a hook on a tracepoint the kernel lacks: %v; want an error naming it", err)
	}
	g.p.UDPEnforced(t, "after the reload with a missing tracepoint", portX, portY, g.drops)
	g.wantStatus("after the reload with a missing tracepoint", "failure", []string{"drop_x", "close_a"}, []string{veth}, "grain_no_such_call")

	// The hooks attach, the packet half does not: the new hook is
	// detached again and never counts.
	hookB := `lseek_b: {tracepoint: "syscalls/sys_enter_lseek", args: [{field: "fd", type: "int"}], match: args: fd: 987612, count: metric: "lseeks"}` + "\n"
	if err := g.reload(plantest.UDPDrop("drop_y", portY, veth, g.other) + hookB); err == nil || !strings.Contains(err.Error(), g.other) {
		t.Fatalf("reload whose packet half cannot attach to %s: %v; want an error naming it", g.other, err)
	}
	g.p.UDPEnforced(t, "after the reload whose packet half failed", portX, portY, g.drops)
	if got := g.r.Hooks.Attachments(); fmt.Sprint(got) != fmt.Sprint(hooksA) {
		t.Errorf("hooks after the reload whose packet half failed: %+v, want those of A: %+v", got, hooksA)
	}
	hookchild.Run(t, "close 3 987611")
	hookchild.Run(t, "lseek 4 987612 0")
	counts, err := g.r.Hooks.CountSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for _, c := range counts {
		got[c.Policy] += c.Value
	}
	if got["close_a"] != 3 || got["lseek_b"] != 0 {
		t.Errorf("counts after the failed reload: %v, want close_a 3 (A's hook in force) and no lseek_b", got)
	}
	g.wantStatus("after the reload whose packet half failed", "failure", []string{"drop_x", "close_a"}, []string{veth}, g.other)
}

// The tests trigger kernel-hook rules from child processes (hookchild).
func init() { hookchild.Serve() }

// newTestHooks sets up the kernel hooks, closed when t ends.
func newTestHooks(t *testing.T) *hook.Hooks {
	t.Helper()
	vmtest.RequireRoot(t)
	p, err := hook.New(hook.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}
