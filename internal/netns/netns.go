// Package netns is a harness for privileged tests that need real packets: it
// makes two network namespaces joined by a veth pair, runs commands and Go
// code inside them, and removes everything when the test ends.
//
// Traffic stays inside the namespaces it creates: every address it assigns
// lives only there, so a test that uses the Pair's addresses never sends a
// packet to the host's networks.
package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Dir is where iproute2 keeps the bind mounts that name network namespaces.
const Dir = "/var/run/netns"

// stopGrace is how long a background process gets between SIGTERM and
// SIGKILL at cleanup: long enough for grain to detach its programs.
const stopGrace = 5 * time.Second

// runTimeout bounds every command Run executes, so a hung command fails the
// test instead of stalling it until the go test deadline.
const runTimeout = time.Minute

// seq numbers the pairs of this process; with the pid it makes namespace
// names unique across concurrently running test binaries.
var seq atomic.Uint32

// Pair is two network namespaces, a server and a client, joined by a veth
// pair (or two wired NICs, NewPairOn). The server end carries ServerIP4/24
// and ServerIP6/64, the client end ClientIP4 and ClientIP6 in the same
// subnets.
type Pair struct {
	ServerNS, ClientNS   string // names under /var/run/netns
	ServerIf, ClientIf   string // veth ends, each inside its namespace
	ServerIP4, ClientIP4 netip.Addr
	ServerIP6, ClientIP6 netip.Addr
	ServerIfIndex        int              // ifindex of ServerIf inside ServerNS
	ServerMAC            net.HardwareAddr // ServerIf's MAC address

	t      testing.TB
	nics   bool            // NewPairOn: the ends are NICs, not a veth pair
	ctx    context.Context // cancelled at cleanup: stops background processes
	cancel context.CancelFunc
}

// NewPair creates the namespaces and the veth pair, brings up lo and both
// ends, assigns the addresses and registers a t.Cleanup that removes it all.
// It skips the test when it is not run as root or when iproute2's ip is
// missing, and fails it when the kernel refuses a step.
func NewPair(t testing.TB) *Pair {
	t.Helper()
	return newPair(t, "", "")
}

// NewPairOn is NewPair with two NICs of the initial namespace, wired to
// each other, in place of the veth pair: they are moved into the
// namespaces (and back when these are deleted) and keep their names.
func NewPairOn(t testing.TB, serverNIC, clientNIC string) *Pair {
	t.Helper()
	return newPair(t, serverNIC, clientNIC)
}

func newPair(t testing.TB, serverNIC, clientNIC string) *Pair {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("netns: needs root to create network namespaces and veth pairs (run the test as root, as .ci/run does)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("netns: needs the ip command from iproute2 (apt-get install iproute2)")
	}
	removeStale()

	n := seq.Add(1)
	sub := n % 256 // third octet; pairs never share a namespace, so reuse is harmless
	prefix := fmt.Sprintf("grain-%d-%d", os.Getpid(), n)
	p := &Pair{
		ServerNS:  prefix + "-srv",
		ClientNS:  prefix + "-cli",
		ServerIf:  fmt.Sprintf("gsrv%d", n), // at most 14 bytes: IFNAMSIZ is 16 with the NUL
		ClientIf:  fmt.Sprintf("gcli%d", n),
		ServerIP4: netip.AddrFrom4([4]byte{10, 199, byte(sub), 1}),
		ClientIP4: netip.AddrFrom4([4]byte{10, 199, byte(sub), 2}),
		ServerIP6: netip.MustParseAddr(fmt.Sprintf("fd00:199:%d::1", sub)),
		ClientIP6: netip.MustParseAddr(fmt.Sprintf("fd00:199:%d::2", sub)),
		t:         t,
	}
	p.ctx, p.cancel = context.WithCancel(context.Background())

	mustIP := func(args ...string) {
		t.Helper()
		if out, err := runIP(args...); err != nil {
			if strings.Contains(strings.ToLower(string(out)), "operation not permitted") {
				t.Skipf("netns: the kernel refuses network namespaces here: ip %v: %s", args, out)
			}
			t.Fatalf("netns: ip %v: %v: %s", args, err, out)
		}
	}

	mustIP("netns", "add", p.ServerNS)
	t.Cleanup(p.destroy)
	mustIP("netns", "add", p.ClientNS)
	if serverNIC != "" {
		p.ServerIf, p.ClientIf, p.nics = serverNIC, clientNIC, true
		mustIP("link", "set", "dev", serverNIC, "netns", p.ServerNS)
		mustIP("link", "set", "dev", clientNIC, "netns", p.ClientNS)
	} else {
		// Creating both ends directly inside their namespaces means the
		// names never exist in the host namespace, so they cannot clash
		// with the host's interfaces or with another test binary's pairs.
		mustIP("link", "add", p.ServerIf, "netns", p.ServerNS, "type", "veth",
			"peer", "name", p.ClientIf, "netns", p.ClientNS)
	}
	for _, side := range []struct {
		ns, dev  string
		ip4, ip6 netip.Addr
	}{
		{p.ServerNS, p.ServerIf, p.ServerIP4, p.ServerIP6},
		{p.ClientNS, p.ClientIf, p.ClientIP4, p.ClientIP6},
	} {
		mustIP("-n", side.ns, "link", "set", "lo", "up")
		mustIP("-n", side.ns, "addr", "add", side.ip4.String()+"/24", "dev", side.dev)
		// nodad: the address is usable at once instead of after duplicate
		// address detection (about a second of "tentative").
		mustIP("-n", side.ns, "addr", "add", side.ip6.String()+"/64", "dev", side.dev, "nodad")
		mustIP("-n", side.ns, "link", "set", side.dev, "up")
	}

	err := Do(p.ServerNS, func() error {
		ifc, err := net.InterfaceByName(p.ServerIf)
		if err != nil {
			return err
		}
		p.ServerIfIndex, p.ServerMAC = ifc.Index, ifc.HardwareAddr
		return nil
	})
	if err != nil {
		t.Fatalf("netns: read %s in %s: %v", p.ServerIf, p.ServerNS, err)
	}
	return p
}

// destroy stops what the pair started and deletes both namespaces. The veth
// is deleted first so that it is gone at once even if some forgotten socket
// keeps a namespace alive after its name is removed.
func (p *Pair) destroy() {
	p.cancel()
	for _, c := range []struct{ ns, dev string }{{p.ServerNS, p.ServerIf}, {p.ClientNS, p.ClientIf}} {
		if p.nics {
			// Back to the initial namespace, as the next test expects it.
			runIP("-n", c.ns, "link", "set", "dev", c.dev, "netns", "1")
			continue
		}
		runIP("-n", c.ns, "link", "del", c.dev) // fails harmlessly once the peer is gone
	}
	for _, ns := range []string{p.ServerNS, p.ClientNS} {
		if _, err := os.Stat(filepath.Join(Dir, ns)); err != nil {
			continue
		}
		if out, err := runIP("netns", "delete", ns); err != nil {
			p.t.Errorf("netns: delete %s: %v: %s", ns, err, out)
		}
	}
}

// Run runs a command inside namespace ns (ip netns exec) and returns its
// combined output. The command is killed after a minute.
func (p *Pair) Run(ns string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(p.ctx, runTimeout)
	defer cancel()
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
}

// Command returns a command that will run inside namespace ns, not yet
// started, so the caller can attach pipes and call Start and Wait itself. At
// cleanup a still running process gets SIGTERM and, 5 s later, SIGKILL.
func (p *Pair) Command(ns string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(p.ctx, "ip", append([]string{"netns", "exec", ns}, args...)...)
	// SIGTERM first: grain detaches its programs on SIGTERM, SIGKILL leaves
	// that to the kernel.
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = stopGrace
	return cmd
}

// Start starts a background process inside namespace ns. Its stdout and
// stderr go to the test log. The harness owns it: do not call Wait; at
// cleanup it gets SIGTERM, then SIGKILL after 5 s, and is waited for, so
// cmd.ProcessState is set once the test has ended. Use Command to read its
// output or to stop it earlier.
func (p *Pair) Start(ns string, args ...string) *exec.Cmd {
	p.t.Helper()
	cmd := p.Command(ns, args...)
	w := &logWriter{t: p.t, prefix: fmt.Sprintf("[%s %s] ", ns, filepath.Base(args[0]))}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("netns: start %v in %s: %v", args, ns, err)
	}
	// Registered after NewPair's cleanup, so it runs before the namespaces
	// are deleted (cleanups run last-in first-out).
	p.t.Cleanup(func() {
		p.cancel()
		_ = cmd.Wait() // a signal-terminated exit is expected here
		w.flush()
	})
	return cmd
}

// Do runs fn on the calling goroutine with its OS thread switched into the
// network namespace named ns, and switches back afterwards. Sockets that fn
// opens belong to ns for their whole life, also after Do returns (a listener
// made here keeps accepting in ns). Go code that fn starts on other
// goroutines runs in the caller's namespace, and so does a name lookup, so
// dial IP literals.
func Do(ns string, fn func() error) error {
	target, err := unix.Open(filepath.Join(Dir, ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("netns: open namespace %s: %w", ns, err)
	}
	defer unix.Close(target)

	// Locked so that no other goroutine runs on this thread while it is in
	// ns, and so that this goroutine does not move to a thread outside it.
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns: open the current namespace: %w", err)
	}
	defer unix.Close(orig)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("netns: enter %s: %w", ns, err)
	}
	defer func() {
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			// The thread stays locked, so the runtime never hands it to
			// another goroutine; carrying on in the wrong namespace would
			// make every later result meaningless.
			panic(fmt.Sprintf("netns: cannot switch the thread back from %s: %v", ns, err))
		}
		runtime.UnlockOSThread()
	}()
	return fn()
}

// ListenIn opens a listener inside namespace ns. It accepts connections in
// ns for its whole life; Accept and Serve may run on any goroutine.
func ListenIn(ns, network, address string) (net.Listener, error) {
	var ln net.Listener
	err := Do(ns, func() (err error) {
		ln, err = net.Listen(network, address)
		return err
	})
	return ln, err
}

// DialContextIn returns a dial function, fit for http.Transport.DialContext,
// that opens its connections inside namespace ns. Addresses must be IP
// literals: a name lookup would run outside ns.
func DialContextIn(ns string) func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		var conn net.Conn
		err := Do(ns, func() (err error) {
			var d net.Dialer
			// A literal address yields one candidate, which the dialer tries
			// on this goroutine: the socket is created on the switched thread.
			conn, err = d.DialContext(ctx, network, address)
			return err
		})
		return conn, err
	}
}

// staleName matches the namespaces NewPair makes, capturing the pid.
var staleName = regexp.MustCompile(`^grain-(\d+)-\d+-(?:srv|cli)$`)

// removeStale deletes namespaces left by test binaries that died before
// their cleanup ran (killed by the go test timeout, say), so they do not
// pile up on a long-lived CI machine.
func removeStale() {
	entries, err := os.ReadDir(Dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		m := staleName.FindStringSubmatch(e.Name())
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			runIP("netns", "delete", e.Name())
		}
	}
}

func runIP(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	return exec.CommandContext(ctx, "ip", args...).CombinedOutput()
}

// PinDir is a directory on a bpffs of the test's own, for grain's pins.
// Not under /sys/fs/bpf: `ip netns exec` mounts a fresh /sys, so pins made
// there would live only as long as the process; other mounts are shared
// with it.
func PinDir(t testing.TB) string {
	t.Helper()
	mnt, err := os.MkdirTemp("", "grain-bpffs-")
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("bpf", mnt, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs at %s: %v", mnt, err)
	}
	t.Cleanup(func() {
		syscall.Unmount(mnt, syscall.MNT_DETACH)
		os.Remove(mnt)
	})
	return filepath.Join(mnt, "grain")
}
