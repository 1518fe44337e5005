package engine

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/internal/pktbuild"
	"github.com/grain-ebpf/grain/internal/plantest"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// On veth grain runs at tcx ingress where the kernel has tcx, in generic
// XDP mode where it does not (or when told so): real frames sent into the
// pair's other end are judged and counted either way.
func TestXDPVethHook(t *testing.T) {
	e := testEngine(t)
	const dev = "grain-hk0"
	sender := vethPair(t, e, dev, "grain-hk1", 1500)

	wantTCX := bpf.HaveTCX() == nil
	for _, forceXDP := range []bool{false, true} {
		e.mu.Lock()
		saved := e.noTCX
		e.noTCX = saved || forceXDP
		e.mu.Unlock()
		// A fresh attach for each mode: detach first.
		if err := e.Apply(&codegen.Plan{}); err != nil {
			t.Fatal(err)
		}
		err := e.Apply(plantest.Compile(t, `p: {xdp: interfaces: ["`+dev+`"], match: {protocol: "udp", dport: 9}, then: "drop"}`))
		e.mu.Lock()
		e.noTCX = saved
		l := e.links[dev]
		e.mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
		info, err := l.Info()
		if err != nil {
			t.Fatal(err)
		}
		tcx := wantTCX && !forceXDP
		wantHook := hookXDPGeneric
		if tcx {
			wantHook = hookTCX
		}
		if got := e.InterfaceHooks()[dev]; got != wantHook {
			t.Errorf("InterfaceHooks()[%s] = %q, want %q", dev, got, wantHook)
		}
		switch {
		case tcx && info.Type != link.TCXType:
			t.Errorf("link on veth is of type %v, want tcx (the kernel has tcx)", info.Type)
		case !tcx && info.Type != link.XDPType:
			t.Errorf("link on veth is of type %v, want XDP (tcx: %v, forced off: %v)", info.Type, wantTCX, forceXDP)
		}

		before := counted(t, e, "p")
		udp := pktbuild.Frame{Src: netip.MustParseAddr("10.9.0.2"), Dst: netip.MustParseAddr("10.9.0.1"), Protocol: 17, SPort: 4000, DPort: 9}
		other := udp
		other.DPort = 10
		sendFrames(t, sender, udp.Bytes(), udp.Bytes(), udp.Bytes(), other.Bytes())
		// The frames are judged in the sender's context on veth; the
		// counters are read once they arrived.
		deadline := time.Now().Add(5 * time.Second)
		for counted(t, e, "p")-before < 3 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if got := counted(t, e, "p") - before; got != 3 {
			t.Errorf("tcx %v: the drop rule counted %d frames, want the 3 sent to port 9", tcx, got)
		}
	}
}

// vethPair creates the veth pair dev-peer with both ends up at mtu, and
// returns the index of peer, where the test sends frames that dev
// receives. Cleanup deletes the pair and detaches grain from it.
func vethPair(t *testing.T, e *Engine, dev, peer string, mtu int) int {
	t.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: dev, MTU: mtu}, PeerName: peer}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("create veth %s: %v", dev, err)
	}
	t.Cleanup(func() {
		netlink.LinkDel(veth)
		// Detach (the links of the deleted pair are forgotten).
		if err := e.Apply(&codegen.Plan{}); err != nil {
			t.Errorf("apply an empty plan: %v", err)
		}
	})
	if l, err := netlink.LinkByName(peer); err != nil || netlink.LinkSetMTU(l, mtu) != nil {
		t.Fatalf("set the MTU of %s: %v", peer, err)
	}
	sender := upLink(t, peer)
	upLink(t, dev)
	return sender
}

func upLink(t *testing.T, name string) int {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Index
}

func counted(t *testing.T, e *Engine, policy string) uint64 {
	t.Helper()
	cs, err := e.Counters()
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, c := range cs {
		if c.Policy == policy {
			n += c.Packets
		}
	}
	return n
}

// sendFrames writes whole Ethernet frames to the interface ifindex.
func sendFrames(t *testing.T, ifindex int, frames ...[]byte) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
	if err != nil {
		t.Fatalf("AF_PACKET socket: %v", err)
	}
	defer unix.Close(fd)
	for _, f := range frames {
		if err := unix.Sendto(fd, f, 0, &unix.SockaddrLinklayer{Ifindex: ifindex, Halen: 6}); err != nil {
			t.Fatalf("send frame: %v", err)
		}
	}
}

// At tcx ingress, a socket buffer whose payload lies in page fragments
// (here AF_PACKET frames larger than a page, on veths with a 9000-byte
// MTU; locally generated TCP looks the same) has its bytes pulled into the
// linear part and is judged like any other: direct packet access sees
// only the linear part.
func TestTCFragmentedSocketBuffers(t *testing.T) {
	if err := bpf.HaveTCX(); err != nil {
		vmtest.Missing(t, "tcx", err)
	}
	e := testEngine(t)
	const dev = "grain-fr0"
	sender := vethPair(t, e, dev, "grain-fr1", 9000)
	// An anchored content: the generation has a UDP gate.
	if err := e.Apply(plantest.Compile(t, `frag: {xdp: interfaces: ["`+dev+`"], match: {protocol: "udp", payload: {startswith: "DROP-ME!", offset: 1000}}, then: "drop"}`)); err != nil {
		t.Fatal(err)
	}
	if e.InterfaceHooks()[dev] != hookTCX {
		t.Fatalf("the program on %s is at %q, want tcx", dev, e.InterfaceHooks()[dev])
	}
	frame := func(src, dst string, word string) []byte {
		payload := []byte(strings.Repeat("x", 1000) + word + strings.Repeat("y", 4000))
		return pktbuild.Frame{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), Protocol: 17, SPort: 4000, DPort: 9, Payload: payload}.Bytes()
	}
	before := counted(t, e, "frag")
	sendFrames(t, sender,
		frame("10.9.0.2", "10.9.0.1", "DROP-ME!"), frame("10.9.0.2", "10.9.0.1", "KEEP-ME!"),
		frame("fd09::2", "fd09::1", "DROP-ME!"), frame("fd09::2", "fd09::1", "KEEP-ME!"),
		frame("10.9.0.2", "10.9.0.1", "DROP-ME!"))
	deadline := time.Now().Add(5 * time.Second)
	for counted(t, e, "frag")-before < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // a wrong extra count would show by now
	if got := counted(t, e, "frag") - before; got != 3 {
		t.Errorf("the drop rule counted %d fragmented frames, want the 3 whose payload holds DROP-ME! at 1000", got)
	}
}
