package engine

import (
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/plantest"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// TestXDPAttachModes attaches to interfaces that are not veth, where grain
// asks for the kernel's default XDP mode, and checks the mode it reports
// (the kernel's, read back) and the fallback when a driver refuses native
// XDP.
func TestXDPAttachModes(t *testing.T) {
	p := netns.NewPair(t)
	e, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	attach := func(t *testing.T, iface string) string {
		t.Helper()
		plan := plantest.Compile(t, fmt.Sprintf(`block: {xdp: interfaces: [%q], match: {protocol: "tcp", payload: "HTTP/1.1"}, then: "drop"}`, iface))
		if err := netns.Do(p.ServerNS, func() error { return e.Apply(plan) }); err != nil {
			t.Fatalf("apply on %s: %v", iface, err)
		}
		return e.InterfaceHooks()[iface]
	}

	// An ifb device has no native XDP: the kernel attaches in generic
	// mode, and grain says so.
	t.Run("driver without native XDP", func(t *testing.T) {
		if out, err := p.Run(p.ServerNS, "ip", "link", "add", "gifb0", "type", "ifb"); err != nil {
			t.Skipf("kernel lacks ifb devices (CONFIG_IFB): %v: %s", err, out)
		}
		if got := attach(t, "gifb0"); got != hookXDPGeneric {
			t.Errorf("hook on an ifb device = %q, want %q", got, hookXDPGeneric)
		}
	})

	// An interface that runs another XDP program is not taken from it.
	t.Run("interface with another XDP program", func(t *testing.T) {
		if out, err := p.Run(p.ServerNS, "ip", "link", "add", "gifb1", "type", "ifb"); err != nil {
			t.Skipf("kernel lacks ifb devices (CONFIG_IFB): %v: %s", err, out)
		}
		other, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		err = netns.Do(p.ServerNS, func() error {
			ifc, err := net.InterfaceByName("gifb1")
			if err != nil {
				return err
			}
			l, err := link.AttachXDP(link.XDPOptions{Program: other, Interface: ifc.Index})
			if err != nil {
				return err
			}
			t.Cleanup(func() { l.Close() })
			return nil
		})
		if err != nil {
			t.Fatalf("attach another XDP program to gifb1: %v", err)
		}
		plan := plantest.Compile(t, `block: {xdp: interfaces: ["gifb1"], match: {protocol: "tcp", payload: "HTTP/1.1"}, then: "drop"}`)
		err = netns.Do(p.ServerNS, func() error { return e.Apply(plan) })
		if err == nil || !strings.Contains(err.Error(), "another XDP program is attached: `ip link set dev gifb1 xdp off`") {
			t.Errorf("apply on an interface with another XDP program: %v; want the error to say so", err)
		}
		if got := e.InterfaceHooks()["gifb1"]; got != "" {
			t.Errorf("grain attached to gifb1 (%q) beside another XDP program", got)
		}
	})

	// virtio-net, the NIC of most virtual machines, has native XDP and
	// refuses it when the MTU does not fit a page, as real drivers refuse
	// it for their own reasons: grain falls back to generic XDP. Only the
	// VM guests have a NIC to spare (vmtest.SpareNICs).
	t.Run("driver with native XDP", func(t *testing.T) {
		nics, err := vmtest.SpareNICs()
		if err != nil {
			vmtest.Missing(t, vmtest.SpareNICFeature, err)
		}
		nic := nics[0]
		// The kernel moves it back to the initial namespace when the
		// pair's namespace is deleted.
		if out, err := exec.Command("ip", "link", "set", "dev", nic, "netns", p.ServerNS).CombinedOutput(); err != nil {
			t.Fatalf("move %s into %s: %v: %s", nic, p.ServerNS, err, out)
		}
		if out, err := p.Run(p.ServerNS, "ip", "link", "set", "dev", nic, "up"); err != nil {
			t.Fatalf("bring up %s: %v: %s", nic, err, out)
		}
		if got := attach(t, nic); got != hookXDP {
			t.Fatalf("hook on virtio-net at MTU 1500 = %q, want native %q", got, hookXDP)
		}
		// The driver refuses an MTU beyond a page while XDP is attached: a
		// plan on another interface detaches it first.
		attach(t, p.ServerIf)
		if got := e.InterfaceHooks()[nic]; got != "" {
			t.Fatalf("a plan without %s left it attached (%q)", nic, got)
		}
		if out, err := p.Run(p.ServerNS, "ip", "link", "set", "dev", nic, "mtu", "9000"); err != nil {
			t.Fatalf("set MTU 9000 on %s: %v: %s", nic, err, out)
		}
		// Runs before the pair's namespace, with the NIC, goes.
		t.Cleanup(func() {
			attach(t, p.ServerIf)
			p.Run(p.ServerNS, "ip", "link", "set", "dev", nic, "mtu", "1500")
		})
		if got := attach(t, nic); got != hookXDPGeneric {
			t.Errorf("hook on virtio-net at MTU 9000 = %q, want the generic fallback %q", got, hookXDPGeneric)
		}
	})
}

// On a veth with tcx, grain verifies only grain_tc, ahead of the apply
// (VerifyAhead) or at it: the verifier's work on
// grain_xdp, which no attach point would run, is what start-up used to
// wait for first (BENCHMARKS.md §13). Read from the kernel: the programs
// that use this engine's rule table.
func TestVethVerifiesOnlyTC(t *testing.T) {
	if err := bpf.HaveTCX(); err != nil {
		vmtest.Missing(t, "tcx", err)
	}
	p := netns.NewPair(t)
	e := ownEngine(t, Options{})
	t.Cleanup(func() { e.Close() })
	if got := programsUsing(t, e.XDP().Maps().Rules); len(got) != 0 {
		t.Fatalf("before any attach the kernel holds %v on the engine's maps; want no program verified yet", got)
	}
	plan := plantest.Compile(t, fmt.Sprintf(`block: {xdp: interfaces: [%q], match: {protocol: "tcp", payload: "HTTP/1.1"}, then: "drop"}`, p.ServerIf))
	// As grain run does with --interface: the verification starts before
	// the policies load, and only for the program the veth needs.
	err := netns.Do(p.ServerNS, func() error {
		e.VerifyAhead([]string{p.ServerIf, "gnone*"})
		return e.Apply(plan)
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := e.InterfaceHooks()[p.ServerIf]; got != hookTCX {
		t.Fatalf("hook on a veth = %q, want %q", got, hookTCX)
	}
	if got := programsUsing(t, e.XDP().Maps().Rules); !slices.Equal(got, []string{bpf.ProgTC}) {
		t.Errorf("programs on the engine's maps after a veth attach: %v; want only %s", got, bpf.ProgTC)
	}
}

// programsUsing names the programs in the kernel that use map m, sorted.
func programsUsing(t *testing.T, m *ebpf.Map) []string {
	t.Helper()
	mi, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	want, _ := mi.ID()
	var names []string
	for id := ebpf.ProgramID(0); ; {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			break // ENOENT: no more programs
		}
		id = next
		prog, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue // unloaded meanwhile
		}
		info, err := prog.Info()
		prog.Close()
		if err != nil {
			t.Fatal(err)
		}
		ids, _ := info.MapIDs()
		if slices.Contains(ids, want) {
			names = append(names, info.Name)
		}
	}
	slices.Sort(names)
	return names
}
