package engine

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/engine/ring"
	"github.com/grain-ebpf/grain/pipeline"
)

var protocolNames = map[uint8]string{1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}

var verdictNames = map[uint8]string{bpf.ActionCount: "count", bpf.ActionDrop: "drop", bpf.ActionPass: "pass", bpf.ActionWouldDrop: codegen.WouldDrop}

// StreamEvents reads emitted events from the kernel and writes one JSON
// object per line to out until ctx ends: ReadEvents into a pipeline with
// no stages and a JSON sink. Lines are flushed whenever the ring buffer
// is drained, so a reader sees events without delay.
func (e *Engine) StreamEvents(ctx context.Context, out io.Writer) error {
	return ring.StreamJSON(ctx, out, e.ReadEvents)
}

// ReadEvents reads emitted events from the kernel's ring buffer into the
// pipeline until ctx ends (ring.Read: it never waits for the pipeline).
func (e *Engine) ReadEvents(ctx context.Context, pr *pipeline.Producer) error {
	rd, err := ring.Open("event ring buffer", e.xdp.Maps().Events, e.gen.Fence())
	if err != nil {
		return err
	}
	d := eventDecoder{e: e, bootOffset: monotonicTimeOffset(), names: &ifaceNames{m: map[uint32]string{}}}
	return ring.Read(ctx, rd, pr, d.decodeRecord)
}

// forEachEvent calls fn with each event of one ring buffer record: an event
// with payload bytes (bpf.EventPayload), or a batch of one or more events
// (bpf.Event) that one CPU staged (bpf/xdp.c). A record of neither size is
// skipped.
func forEachEvent(rec []byte, fn func(event []byte)) {
	size := int(unsafe.Sizeof(bpf.Event{}))
	switch {
	case len(rec) == int(unsafe.Sizeof(bpf.EventPayload{})), len(rec) == int(unsafe.Sizeof(bpf.EventHello{})):
		fn(rec)
	case len(rec) > 0 && len(rec)%size == 0:
		for off := 0; off < len(rec); off += size {
			fn(rec[off : off+size : off+size])
		}
	}
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

// decodeRecord decodes the events of one ring buffer record.
func (d *eventDecoder) decodeRecord(pr *pipeline.Producer, rec []byte) {
	forEachEvent(rec, func(record []byte) {
		d.record = record
		d.decode(pr.Next(), (*bpf.Event)(unsafe.Pointer(&record[0])))
	})
}

// eventDecoder turns the kernel's events into pipeline events. It keeps
// the rule of the last event: consecutive events mostly come from the
// same rule.
type eventDecoder struct {
	e          *Engine
	bootOffset time.Duration
	names      *ifaceNames
	lastID     uint32
	last       codegen.Rule
	lastOK     bool
	haveLast   bool
	record     []byte // the whole record being decoded (payload fields: dns.go)
	// the interface of the last event, named without the shared cache's lock
	lastIfindex uint32
	lastIface   string
}

// decode fills ev: policy, event name, the fields the policy asked for,
// interface, verdict and, after deduplicated repeats, how many there were,
// in that order.
func (d *eventDecoder) decode(out *pipeline.Event, ev *bpf.Event) {
	if !d.haveLast || ev.RuleId != d.lastID {
		d.last, d.lastOK = d.e.rule(ev.RuleId)
		d.lastID, d.haveLast = ev.RuleId, true
	}
	r, ok := d.last, d.lastOK
	out.Time = time.Unix(0, int64(ev.TimeNs)+int64(d.bootOffset))
	if !ok {
		out.Policy = "unknown-rule-" + strconv.FormatUint(uint64(ev.RuleId), 10)
	} else {
		out.Policy, out.Name = r.Policy, r.Event
	}
	for _, f := range r.Fields {
		switch f {
		case "saddr":
			out.AppendAddr(f, eventAddr(ev.Family, &ev.Saddr))
		case "daddr":
			out.AppendAddr(f, eventAddr(ev.Family, &ev.Daddr))
		case "sport":
			out.AppendUint(f, uint64(ev.Sport))
		case "dport":
			out.AppendUint(f, uint64(ev.Dport))
		case "protocol":
			name, ok := protocolNames[ev.Protocol]
			if !ok {
				name = strconv.Itoa(int(ev.Protocol))
			}
			out.AppendString(f, name)
		case "tcp_flags":
			out.AppendString(f, tcpFlagsString(ev.TcpFlags))
		case "len":
			out.AppendUint(f, uint64(ev.PacketLen))
		case "ifindex":
			out.AppendUint(f, uint64(ev.Ifindex))
		case "payload", "dns_qname", "tls_sni", "tls_version", "tls_legacy_version", "tls_alpn", "tls_ja4":
			appendPayloadField(out, f, ev.Protocol, d.record)
		}
	}
	if d.lastIface == "" || ev.Ifindex != d.lastIfindex { // a name is never empty
		d.lastIfindex, d.lastIface = ev.Ifindex, d.names.name(ev.Ifindex)
	}
	out.AppendString("interface", d.lastIface)
	out.AppendString("verdict", verdictNames[ev.Verdict])
	if ev.Repeated > 0 {
		out.AppendUint("repeated", uint64(ev.Repeated))
	}
}
