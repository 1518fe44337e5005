// Command sender is the traffic source of the veth benchmark
// (bench/veth/run.sh). It crafts Ethernet+IPv4+TCP frames and
// sends them through an AF_PACKET socket on one end of a veth pair, as fast
// as it can, and prints one JSON line with the CPU time it used per packet.
//
// Why the sender's CPU time measures the receiver: a frame sent on a veth is
// received by the peer synchronously, in the softirq that runs when the send
// re-enables bottom halves, on the sending thread. The XDP program, the
// netfilter hooks and the IP/TCP receive path of the other namespace all run
// there and are charged to the sender (this kernel has no
// CONFIG_IRQ_TIME_ACCOUNTING, which would exclude softirq time). Work that
// overflows to ksoftirqd is not, so it is measured separately through
// /proc/PID/schedstat of the ksoftirqd of the CPU the sender is pinned to.
//
// How passed packets are consumed: run.sh adds a policy-routing rule in the
// server namespace that sends TCP to the flood's port to a blackhole, so a
// passed packet goes through XDP, IP receive, netfilter PREROUTING and the
// routing decision, and is then dropped without a reply (forwarding is off,
// so no ICMP either). A listening socket would answer every segment with an
// RST or, for an established connection, with a duplicate ACK (Linux does
// not rate-limit those for data segments), and the reply's path through both
// namespaces would be charged to the sender too.
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// httpPayload is a whole short HTTP/1.1 request, as the workshop probe saw.
const httpPayload = "GET / HTTP/1.1\r\nHost: x\r\n\r\n"

func main() {
	var (
		iface   = flag.String("interface", "", "interface to send on (one end of the veth pair)")
		dst     = flag.String("dst", "", "destination IPv4:port (the server end)")
		dstMAC  = flag.String("dst-mac", "", "destination MAC: the server end's address")
		srcIP   = flag.String("src", "", "source IPv4 address (default: the interface's)")
		payload = flag.String("payload", "http", `"http": a short HTTP/1.1 request; "filler": -size bytes without the pattern`)
		size    = flag.Int("size", 1400, "filler payload size in bytes")
		count   = flag.Int("n", 500000, "packets to send")
		batch   = flag.Int("batch", 64, "frames per sendmmsg call")
		cpu     = flag.Int("cpu", -1, "pin the sending thread to this CPU (-1: do not pin)")
		label   = flag.String("label", "", "copied into the JSON result")
	)
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("sender: ")

	cfg := floodConfig{
		iface: *iface, dst: *dst, dstMAC: *dstMAC, src: *srcIP, payload: *payload, size: *size,
		count: *count, batch: *batch, cpu: *cpu, label: *label,
	}
	res, err := flood(cfg)
	if err != nil {
		log.Fatal(err)
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		log.Fatal(err)
	}
}

type floodConfig struct {
	iface, dst, dstMAC, src, payload string
	size, count, batch, cpu          int
	label                            string
}

// result is the JSON line printed for one flood.
type result struct {
	Label        string  `json:"label,omitempty"`
	Payload      string  `json:"payload"`
	FrameBytes   int     `json:"frame_bytes"`
	Packets      int     `json:"packets"`
	CPU          int     `json:"cpu"`
	WallNs       int64   `json:"wall_ns"`
	CPUNs        int64   `json:"cpu_ns"` // sending thread, getrusage(RUSAGE_THREAD) utime+stime
	KsoftirqdNs  int64   `json:"ksoftirqd_ns"`
	CPUNsPerPkt  float64 `json:"cpu_ns_per_pkt"`
	WallNsPerPkt float64 `json:"wall_ns_per_pkt"`
	// KsoftirqdNsPerPkt is the receive work deferred to ksoftirqd on the
	// pinned CPU, which the sender's own CPU time misses.
	KsoftirqdNsPerPkt float64 `json:"ksoftirqd_ns_per_pkt"`
	// MachineNsPerPkt is the busy time of every CPU during the flood
	// (/proc/stat: all but idle, iowait and steal), per packet: what the
	// machine paid, including whatever else ran on it meanwhile.
	// SenderCPUNsPerPkt is the same for the pinned CPU alone, and
	// AllKsoftirqdNsPerPkt the run time of every CPU's ksoftirqd.
	MachineNsPerPkt      float64 `json:"machine_ns_per_pkt"`
	SenderCPUNsPerPkt    float64 `json:"sender_cpu_ns_per_pkt"`
	AllKsoftirqdNsPerPkt float64 `json:"all_ksoftirqd_ns_per_pkt"`
	SendErrors           int     `json:"send_errors"`
	Flow                 string  `json:"flow"`
}

func flood(cfg floodConfig) (*result, error) {
	if cfg.iface == "" || cfg.dst == "" || cfg.dstMAC == "" {
		return nil, errors.New("-interface, -dst and -dst-mac are required")
	}
	if cfg.count <= 0 || cfg.batch <= 0 || cfg.batch > 1024 {
		return nil, errors.New("-n must be positive and -batch in 1..1024")
	}
	ifc, err := net.InterfaceByName(cfg.iface)
	if err != nil {
		return nil, err
	}
	src, err := ipv4Of(ifc)
	if err != nil {
		return nil, err
	}
	if cfg.src != "" {
		if src, err = netip.ParseAddr(cfg.src); err != nil || !src.Is4() {
			return nil, fmt.Errorf("-src %q: want an IPv4 address", cfg.src)
		}
	}
	dstAP, err := netip.ParseAddrPort(cfg.dst)
	if err != nil || !dstAP.Addr().Is4() {
		return nil, fmt.Errorf("-dst %q: want IPv4:port", cfg.dst)
	}

	var body []byte
	switch cfg.payload {
	case "http":
		body = []byte(httpPayload)
	case "filler":
		body = filler(cfg.size)
	default:
		return nil, fmt.Errorf("-payload %q: want http or filler", cfg.payload)
	}

	dmac, err := net.ParseMAC(cfg.dstMAC)
	if err != nil {
		return nil, err
	}
	flow := tcpFlow{src: src, dst: dstAP.Addr(), sport: 40000, dport: dstAP.Port(), seq: 1}

	frame := buildFrame(ifc.HardwareAddr, dmac, flow, body)
	fd, err := packetSocket(ifc.Index)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)

	// The sending thread is fixed, so its rusage is the flood's cost and the
	// ksoftirqd that may take over its softirq work is known.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	res := &result{Label: cfg.label, Payload: cfg.payload, FrameBytes: len(frame), Packets: cfg.count, CPU: cfg.cpu,
		Flow: fmt.Sprintf("%s:%d > %s:%d seq %d", flow.src, flow.sport, flow.dst, flow.dport, flow.seq)}
	ksoftirqd := ""
	if cfg.cpu >= 0 {
		var set unix.CPUSet
		set.Set(cfg.cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			return nil, fmt.Errorf("pin to CPU %d: %w", cfg.cpu, err)
		}
		ksoftirqd = ksoftirqdSchedstat(cfg.cpu)
	}

	msgs := make([]mmsghdr, cfg.batch)
	iov := unix.Iovec{Base: &frame[0]}
	iov.SetLen(len(frame))
	for i := range msgs {
		msgs[i].hdr.Iov = &iov
		msgs[i].hdr.SetIovlen(1)
	}

	allKsoftirqd := ksoftirqdSchedstats()
	allKs0 := sumSchedstats(allKsoftirqd)
	machine0, err := readProcStat()
	if err != nil {
		return nil, err
	}
	ks0 := readSchedstat(ksoftirqd)
	var ru0, ru1 unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru0); err != nil {
		return nil, err
	}
	start := time.Now()
	sent := 0
	// Bounded: each call sends at least one frame or counts an error, and
	// errors past count end the flood.
	for sent < cfg.count && res.SendErrors <= cfg.count {
		k := min(cfg.batch, cfg.count-sent)
		n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(k), 0, 0, 0)
		if errno != 0 {
			res.SendErrors++
			continue
		}
		sent += int(n)
	}
	wall := time.Since(start)
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru1); err != nil {
		return nil, err
	}
	ks1 := readSchedstat(ksoftirqd)
	machine1, err := readProcStat()
	if err != nil {
		return nil, err
	}
	allKs1 := sumSchedstats(allKsoftirqd)
	runtime.KeepAlive(frame)
	if sent < cfg.count {
		return nil, fmt.Errorf("sent %d of %d frames (%d send errors)", sent, cfg.count, res.SendErrors)
	}

	res.WallNs = wall.Nanoseconds()
	res.CPUNs = tvNs(ru1.Utime) + tvNs(ru1.Stime) - tvNs(ru0.Utime) - tvNs(ru0.Stime)
	res.KsoftirqdNs = ks1 - ks0
	res.CPUNsPerPkt = float64(res.CPUNs) / float64(sent)
	res.WallNsPerPkt = float64(res.WallNs) / float64(sent)
	res.KsoftirqdNsPerPkt = float64(res.KsoftirqdNs) / float64(sent)
	res.MachineNsPerPkt = float64(machine1.busy(-1)-machine0.busy(-1)) / float64(sent)
	if cfg.cpu >= 0 {
		res.SenderCPUNsPerPkt = float64(machine1.busy(cfg.cpu)-machine0.busy(cfg.cpu)) / float64(sent)
	}
	res.AllKsoftirqdNsPerPkt = float64(allKs1-allKs0) / float64(sent)
	return res, nil
}

// mmsghdr is struct mmsghdr, which x/sys/unix does not define.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

// packetSocket opens an AF_PACKET socket bound to ifindex for sending only.
func packetSocket(ifindex int) (int, error) {
	// Protocol 0: the socket receives nothing, so it adds no tap to the
	// path being measured; the kernel reads the EtherType from each frame.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("AF_PACKET socket (needs CAP_NET_RAW): %w", err)
	}
	// Straight to the driver: veth has no qdisc anyway (noqueue), this only
	// makes that explicit.
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("PACKET_QDISC_BYPASS: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifindex}); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind AF_PACKET socket: %w", err)
	}
	return fd, nil
}

func ipv4Of(ifc *net.Interface) (netip.Addr, error) {
	addrs, err := ifc.Addrs()
	if err != nil {
		return netip.Addr{}, err
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
			return p.Addr(), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("%s has no IPv4 address", ifc.Name)
}

// filler is n bytes of text that cannot contain "HTTP/1.1" in any case: no
// digit 1 or slash appears in it.
func filler(n int) []byte {
	const alphabet = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 023456789.\r\n"
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[i%len(alphabet)]
	}
	if bytes.Contains(bytes.ToUpper(b), []byte("HTTP/1.1")) {
		panic("filler contains the pattern")
	}
	return b
}

type tcpFlow struct {
	src, dst     netip.Addr
	sport, dport uint16
	seq          uint32
}

// buildFrame returns an Ethernet+IPv4+TCP(ACK|PSH) frame carrying payload,
// with valid IPv4 and TCP checksums (the receiver verifies the TCP one).
func buildFrame(smac, dmac net.HardwareAddr, f tcpFlow, payload []byte) []byte {
	const ethLen, ipLen, tcpLen = 14, 20, 20
	b := make([]byte, ethLen+ipLen+tcpLen+len(payload))
	copy(b[0:6], dmac)
	copy(b[6:12], smac)
	binary.BigEndian.PutUint16(b[12:], unix.ETH_P_IP)

	ip := b[ethLen : ethLen+ipLen]
	ip[0] = 0x45 // version 4, 5 words
	binary.BigEndian.PutUint16(ip[2:], uint16(ipLen+tcpLen+len(payload)))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	ip[8] = 64
	ip[9] = unix.IPPROTO_TCP
	s4, d4 := f.src.As4(), f.dst.As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	binary.BigEndian.PutUint16(ip[10:], checksum(0, ip))

	tcp := b[ethLen+ipLen:]
	binary.BigEndian.PutUint16(tcp[0:], f.sport)
	binary.BigEndian.PutUint16(tcp[2:], f.dport)
	binary.BigEndian.PutUint32(tcp[4:], f.seq)
	binary.BigEndian.PutUint32(tcp[8:], 1)
	tcp[12] = tcpLen / 4 << 4
	tcp[13] = 0x18 // ACK|PSH
	binary.BigEndian.PutUint16(tcp[14:], 65535)
	copy(tcp[tcpLen:], payload)

	var pseudo [12]byte
	copy(pseudo[0:4], s4[:])
	copy(pseudo[4:8], d4[:])
	pseudo[9] = unix.IPPROTO_TCP
	binary.BigEndian.PutUint16(pseudo[10:], uint16(len(tcp)))
	binary.BigEndian.PutUint16(tcp[16:], checksum(sum(0, pseudo[:]), tcp))
	return b
}

// sum adds b to the one's-complement accumulator acc (RFC 1071).
func sum(acc uint32, b []byte) uint32 {
	for len(b) >= 2 {
		acc += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint32(b[0]) << 8
	}
	return acc
}

func checksum(acc uint32, b []byte) uint16 {
	acc = sum(acc, b)
	for acc>>16 != 0 {
		acc = acc&0xffff + acc>>16
	}
	return ^uint16(acc)
}

func tvNs(tv unix.Timeval) int64 { return tv.Sec*1e9 + tv.Usec*1e3 }

// procStat is /proc/stat's busy time in ns: all CPUs at index 0, CPU n at
// index n+1.
type procStat []int64

// busy returns CPU cpu's busy time, or every CPU's for cpu -1.
func (p procStat) busy(cpu int) int64 {
	if cpu+1 < len(p) {
		return p[cpu+1]
	}
	return 0
}

// readProcStat reads the cpu lines of /proc/stat. Busy is every field but
// idle, iowait and steal (time the hypervisor gave to someone else); guest
// time is already part of user time. Tick-sampled: a flood must last many
// ticks (10 ms at USER_HZ 100) for the figure to mean anything.
func readProcStat() (procStat, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return nil, err
	}
	tick := int64(1e9 / 100) // USER_HZ is 100 on every Linux architecture
	var p procStat
	for _, line := range strings.Split(string(b), "\n") {
		fs := strings.Fields(line)
		if len(fs) < 9 || !strings.HasPrefix(fs[0], "cpu") {
			continue
		}
		var busy int64
		for i, f := range fs[1:9] { // user nice system idle iowait irq softirq steal
			if i == 3 || i == 4 || i == 7 {
				continue
			}
			v, err := strconv.ParseInt(f, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("/proc/stat: %q: %w", line, err)
			}
			busy += v * tick
		}
		p = append(p, busy)
	}
	if len(p) < 2 {
		return nil, errors.New("/proc/stat has no cpu lines")
	}
	return p, nil
}

// ksoftirqdSchedstats returns the schedstat paths of every CPU's ksoftirqd.
func ksoftirqdSchedstats() []string {
	var paths []string
	comms, _ := filepath.Glob("/proc/[0-9]*/comm")
	for _, c := range comms {
		if b, err := os.ReadFile(c); err == nil && strings.HasPrefix(string(b), "ksoftirqd/") {
			paths = append(paths, filepath.Join(filepath.Dir(c), "schedstat"))
		}
	}
	return paths
}

func sumSchedstats(paths []string) int64 {
	var ns int64
	for _, p := range paths {
		ns += readSchedstat(p)
	}
	return ns
}

// ksoftirqdSchedstat returns the schedstat path of ksoftirqd/cpu, or "".
func ksoftirqdSchedstat(cpu int) string {
	want := fmt.Sprintf("ksoftirqd/%d", cpu)
	comms, _ := filepath.Glob("/proc/[0-9]*/comm")
	for _, c := range comms {
		if b, err := os.ReadFile(c); err == nil && strings.TrimSpace(string(b)) == want {
			return filepath.Join(filepath.Dir(c), "schedstat")
		}
	}
	return ""
}

// readSchedstat returns the time in ns a task has run (schedstat's first
// field), or 0 when path is empty or unreadable.
func readSchedstat(path string) int64 {
	if path == "" {
		return 0
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	fs := strings.Fields(string(b))
	if len(fs) == 0 {
		return 0
	}
	ns, _ := strconv.ParseInt(fs[0], 10, 64)
	return ns
}
