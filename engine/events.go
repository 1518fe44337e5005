package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/pipeline"
)

// readPollInterval is how often the reader looks for events: the kernel
// wakes it only when the ring fills up (see bpf/xdp.c), so this bounds the
// delay of an event on a quiet interface.
const readPollInterval = 20 * time.Millisecond

var protocolNames = map[uint8]string{1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}

var verdictNames = map[uint8]string{bpf.ActionCount: "count", bpf.ActionDrop: "drop", bpf.ActionPass: "pass"}

// StreamEvents reads emitted events from the kernel and writes one JSON
// object per line to out until ctx ends: ReadEvents into a pipeline with
// no stages and a JSON sink. Lines are flushed whenever the ring buffer
// is drained, so a reader sees events without delay.
func (e *Engine) StreamEvents(ctx context.Context, out io.Writer) error {
	return streamJSON(ctx, out, e.ReadEvents)
}

// streamJSON runs read, an event reader, into a pipeline with no stages
// and a JSON sink on out, until ctx ends.
func streamJSON(ctx context.Context, out io.Writer, read func(context.Context, *pipeline.Producer) error) error {
	p := pipeline.New(pipeline.Options{Sinks: []pipeline.Sink{pipeline.NewJSONSink(out)}})
	runCtx, stop := context.WithCancel(context.Background())
	go p.Run(runCtx)
	err := read(ctx, p.Producer())
	stop()
	<-p.Done()
	return err
}

// ReadEvents reads emitted events from the kernel's ring buffer into the
// pipeline until ctx ends. It never waits for the pipeline: batches are
// handed over when the ring buffer is drained, when a batch is full and
// at least every readPollInterval, and a batch that finds the queue full
// is dropped and counted (pipeline.Stats.QueueFull).
func (e *Engine) ReadEvents(ctx context.Context, pr *pipeline.Producer) error {
	rd, err := ringbuf.NewReader(e.xdp.Maps().Events)
	if err != nil {
		return fmt.Errorf("open event ring buffer: %w", err)
	}
	go func() {
		<-ctx.Done()
		rd.Close()
	}()
	defer pr.Flush()
	d := eventDecoder{e: e, bootOffset: monotonicTimeOffset(), names: &ifaceNames{m: map[uint32]string{}}}
	var rec ringbuf.Record
	var fence retiredFence
	// The deadline matters only when the reader waits, after the ring was
	// found empty: it is set then, not for every record (it takes the
	// reader's lock).
	rd.SetDeadline(time.Now().Add(readPollInterval))
	for {
		if err := rd.ReadInto(&rec); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				pr.Flush()
				fence.drained(e, rd)
				rd.SetDeadline(time.Now().Add(readPollInterval))
				continue
			}
			if errors.Is(err, os.ErrClosed) {
				return nil
			}
			return fmt.Errorf("read events: %w", err)
		}
		forEachEvent(rec.RawSample, func(record []byte) {
			d.record = record
			d.decode(pr.Next(), (*bpf.Event)(unsafe.Pointer(&record[0])))
		})
		fence.read(e, len(rec.RawSample))
		// Remaining comes from the producer position the read loaded:
		// asking the ring again would load that cache line, which the
		// packet's CPU writes on every event, once more per event.
		if rec.Remaining == 0 {
			pr.Flush()
			fence.drained(e, rd)
			rd.SetDeadline(time.Now().Add(readPollInterval))
		}
	}
}

// retireLocked records that the rule set of epoch old was replaced by
// current's. Its names stay (byEpoch) until the reader has read every event
// it can still send: one in flight on a CPU, staged (bpf/xdp.c), or waiting
// in the ring buffer, however long no reader ran (retiredFence). An epoch
// number in use again (after 2^21 applies) is not retired. e.namesMu must be
// held.
//
// With no reader (or one stalled behind a blocked sink) nothing passes the
// fence: past maxRetiredRuleSets the oldest names go, so that reloads
// cannot grow memory without bound; their late events are then unnamed.
func (e *Engine) retireLocked(old, current uint32) {
	e.retired = slices.DeleteFunc(e.retired, func(r uint32) bool { return r == current })
	if old != current && !slices.Contains(e.retired, old) {
		e.retired = append(e.retired, old)
	}
	for len(e.retired) > maxRetiredRuleSets {
		delete(e.byEpoch, e.retired[0])
		e.retired = slices.Delete(e.retired, 0, 1)
	}
}

// maxRetiredRuleSets bounds the replaced rule sets kept named for the
// reader: far more than reloads come between two reads of the ring.
const maxRetiredRuleSets = 64

// retiredFence is the reader's progress towards forgetting the names of
// replaced rule sets. Once no packet runs them (an RCU grace period after
// the flip) and no stage holds their events, all of them are in the ring,
// within the bytes it held then (ahead): when the reader has read as many,
// or found the ring empty, it has read them all. The grace period and the
// look at the stages run beside the reader (settledRetired), which goes on
// reading meanwhile.
type retiredFence struct {
	epochs  []uint32      // passed the fence: all their events are in the ring
	ahead   int           // ring bytes to read before they are all read
	settled chan []uint32 // the result of settledRetired, while it runs
}

// read counts one record of n bytes read from the ring.
func (f *retiredFence) read(e *Engine, n int) {
	if f.epochs == nil {
		return
	}
	// A record takes its 8-byte header and is padded to 8 bytes.
	f.ahead -= (n + 8 + 7) &^ 7
	if f.ahead <= 0 {
		e.forget(f.epochs)
		f.epochs = nil
	}
}

// drained is called when the reader found the ring empty: epochs past the
// fence are forgotten, and those retired since are taken to the fence.
func (f *retiredFence) drained(e *Engine, rd *ringbuf.Reader) {
	if f.epochs != nil {
		e.forget(f.epochs)
		f.epochs = nil
	}
	if f.settled != nil {
		select {
		case epochs := <-f.settled:
			f.settled = nil
			if len(epochs) > 0 {
				// Their events are all in the ring now: within what it
				// holds (read by this goroutine, the ring's only reader).
				f.epochs, f.ahead = epochs, rd.AvailableBytes()
				if f.ahead == 0 {
					e.forget(f.epochs)
					f.epochs = nil
				}
			}
		default:
		}
		return
	}
	if e.retiredRuleSets() > 0 {
		settled := make(chan []uint32, 1)
		f.settled = settled
		go func() { settled <- e.settledRetired() }()
	}
}

// settledRetired returns the retired epochs whose events are all in the
// ring, or none: every packet that may still have read a replaced
// generation ends within a grace period of the flip, and its events are
// then staged or in the ring; a stage sends its events within a batch's
// time, so a retired epoch still staged is asked about again at the
// reader's next poll.
func (e *Engine) settledRetired() []uint32 {
	e.namesMu.RLock()
	retired := slices.Clone(e.retired)
	e.namesMu.RUnlock()
	if e.waitGracePeriod() != nil {
		return nil // closed meanwhile: the names stay, which is safe
	}
	staged := false
	err := e.xdp.StagedRuleIDs(func(id uint32) {
		staged = staged || slices.Contains(retired, id>>ruleIndexBits)
	})
	if err != nil || staged {
		return nil
	}
	return retired
}

// retiredRuleSets counts the replaced rule sets whose events the reader may
// still read.
func (e *Engine) retiredRuleSets() int {
	e.namesMu.RLock()
	defer e.namesMu.RUnlock()
	return len(e.retired)
}

// forget drops the names of retired epochs whose events were all read.
func (e *Engine) forget(epochs []uint32) {
	e.namesMu.Lock()
	defer e.namesMu.Unlock()
	for _, epoch := range epochs {
		// still retired: not the epoch of a rule set applied since
		if i := slices.Index(e.retired, epoch); i >= 0 {
			e.retired = slices.Delete(e.retired, i, i+1)
			delete(e.byEpoch, epoch)
		}
	}
}

// forEachEvent calls fn with each event of one ring buffer record: an event
// with payload bytes (bpf.EventPayload), or a batch of one or more events
// (bpf.Event) that one CPU staged (bpf/xdp.c). A record of neither size is
// skipped.
func forEachEvent(rec []byte, fn func(event []byte)) {
	size := int(unsafe.Sizeof(bpf.Event{}))
	switch {
	case len(rec) == int(unsafe.Sizeof(bpf.EventPayload{})):
		fn(rec)
	case len(rec) > 0 && len(rec)%size == 0:
		for off := 0; off < len(rec); off += size {
			fn(rec[off : off+size : off+size])
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
		case "payload", "dns_qname":
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
