package engine

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/grain-ebpf/grain/bpf"
)

// readPollInterval is how often the reader looks for events: the kernel
// wakes it only when the ring fills up (see bpf/xdp.c), so this bounds the
// delay of an event on a quiet interface.
const readPollInterval = 20 * time.Millisecond

var protocolNames = map[uint8]string{1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}

var verdictNames = map[uint8]string{bpf.ActionCount: "count", bpf.ActionDrop: "drop", bpf.ActionPass: "pass"}

// StreamEvents reads emitted events from the kernel and writes one JSON
// object per line to out until ctx ends. Lines are flushed whenever the
// ring buffer is drained, so a reader sees events without delay.
func (e *Engine) StreamEvents(ctx context.Context, out io.Writer) error {
	rd, err := ringbuf.NewReader(e.xdp.Maps().Events)
	if err != nil {
		return fmt.Errorf("open event ring buffer: %w", err)
	}
	go func() {
		<-ctx.Done()
		rd.Close()
	}()
	bootOffset := bootTimeOffset()
	names := &ifaceNames{m: map[uint32]string{}}
	w := bufio.NewWriterSize(out, 64<<10)
	defer w.Flush()
	var rec ringbuf.Record
	var line []byte
	for {
		rd.SetDeadline(time.Now().Add(readPollInterval))
		if err := rd.ReadInto(&rec); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				if err := w.Flush(); err != nil {
					return fmt.Errorf("write event: %w", err)
				}
				continue
			}
			if errors.Is(err, os.ErrClosed) {
				return nil
			}
			return fmt.Errorf("read events: %w", err)
		}
		if len(rec.RawSample) < int(unsafe.Sizeof(bpf.Event{})) {
			continue
		}
		ev := (*bpf.Event)(unsafe.Pointer(&rec.RawSample[0]))
		line = e.appendEvent(line[:0], ev, bootOffset, names)
		if _, err := w.Write(line); err != nil {
			return fmt.Errorf("write event: %w", err)
		}
		if rd.AvailableBytes() == 0 {
			if err := w.Flush(); err != nil {
				return fmt.Errorf("write event: %w", err)
			}
		}
	}
}

// bootTimeOffset converts CLOCK_BOOTTIME (bpf_ktime_get_boot_ns) to wall time.
func bootTimeOffset() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0
	}
	return time.Duration(time.Now().UnixNano() - ts.Nano())
}

type ifaceNames struct {
	mu sync.Mutex
	m  map[uint32]string
}

func (n *ifaceNames) name(index uint32) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	if s, ok := n.m[index]; ok {
		return s
	}
	s := strconv.Itoa(int(index))
	if iface, err := net.InterfaceByIndex(int(index)); err == nil {
		s = iface.Name
	}
	n.m[index] = s
	return s
}

func eventAddr(family uint8, b *[16]uint8) netip.Addr {
	if family == 4 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(*b)
}

func tcpFlagsString(f uint8) string {
	names := []string{"fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr"}
	var parts []string
	for i, n := range names {
		if f&(1<<i) != 0 {
			parts = append(parts, n)
		}
	}
	return strings.Join(parts, ",")
}

// appendEvent appends one JSON line: time, policy, event, the fields the
// policy asked for, interface and verdict, in that order.
func (e *Engine) appendEvent(b []byte, ev *bpf.Event, bootOffset time.Duration, names *ifaceNames) []byte {
	r, ok := e.rule(ev.RuleId)
	ts := time.Unix(0, int64(ev.BootNs)+int64(bootOffset)).UTC()
	b = append(b, `{"time":"`...)
	b = ts.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","policy":`...)
	if !ok {
		b = strconv.AppendQuote(b, fmt.Sprintf("unknown-rule-%d", ev.RuleId))
	} else {
		b = strconv.AppendQuote(b, r.Policy)
		b = append(b, `,"event":`...)
		b = strconv.AppendQuote(b, r.Event)
	}
	for _, f := range r.Fields {
		b = append(b, ',', '"')
		b = append(b, f...)
		b = append(b, '"', ':')
		switch f {
		case "saddr":
			b = strconv.AppendQuote(b, eventAddr(ev.Family, &ev.Saddr).String())
		case "daddr":
			b = strconv.AppendQuote(b, eventAddr(ev.Family, &ev.Daddr).String())
		case "sport":
			b = strconv.AppendUint(b, uint64(ev.Sport), 10)
		case "dport":
			b = strconv.AppendUint(b, uint64(ev.Dport), 10)
		case "protocol":
			name, ok := protocolNames[ev.Protocol]
			if !ok {
				name = strconv.Itoa(int(ev.Protocol))
			}
			b = strconv.AppendQuote(b, name)
		case "tcp_flags":
			b = strconv.AppendQuote(b, tcpFlagsString(ev.TcpFlags))
		case "len":
			b = strconv.AppendUint(b, uint64(ev.PacketLen), 10)
		case "ifindex":
			b = strconv.AppendUint(b, uint64(ev.Ifindex), 10)
		default:
			b = append(b, "null"...)
		}
	}
	b = append(b, `,"interface":`...)
	b = strconv.AppendQuote(b, names.name(ev.Ifindex))
	b = append(b, `,"verdict":`...)
	b = strconv.AppendQuote(b, verdictNames[ev.Verdict])
	b = append(b, '}', '\n')
	return b
}
