package reference

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/engine"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// The real packet program, loaded once per test binary: each policy set is
// applied to it as the engine applies a Plan (a generation flip), and
// frames run through it with BPF_PROG_TEST_RUN, which judges them as if
// they arrived on lo.

const testIface, testIfindex = "lo", 1

type kernel struct {
	e    *engine.Engine
	prog *ebpf.Program
	maps bpf.XDPMaps
	rd   *ringbuf.Reader
	gen  uint32
	// rules and stats read at the last apply or check: what the next
	// check subtracts
	stats [bpf.StatMax]uint64
}

var (
	kernelOnce sync.Once
	kernelRun  *kernel
	kernelErr  error
)

// theKernel is the shared loaded program; the test skips without root.
func theKernel(t testing.TB) *kernel {
	t.Helper()
	vmtest.RequireRoot(t)
	kernelOnce.Do(func() {
		e, err := engine.New(engine.Options{})
		if err != nil {
			kernelErr = err
			return
		}
		rd, err := ringbuf.NewReader(e.XDP().Maps().Events)
		if err != nil {
			kernelErr = err
			return
		}
		prog, err := e.XDP().Program()
		if err != nil {
			kernelErr = err
			return
		}
		kernelRun = &kernel{e: e, prog: prog, maps: e.XDP().Maps(), rd: rd}
	})
	if kernelErr != nil {
		t.Fatalf("load the packet program: %v", kernelErr)
	}
	return kernelRun
}

// apply makes plan the program's rule set, and drains what the previous
// one left in the ring buffer.
func (k *kernel) apply(t testing.TB, plan *codegen.Plan) {
	t.Helper()
	if err := k.e.ApplyTables(plan, map[string]uint32{testIface: testIfindex}); err != nil {
		t.Fatalf("apply: %v", err)
	}
	var act bpf.Active
	if err := k.maps.Active.Lookup(uint32(0), &act); err != nil {
		t.Fatal(err)
	}
	k.gen = act.Generation & 1
	k.stats = k.readStats(t)
	k.drain()
}

// drain discards the events waiting in the ring buffer.
func (k *kernel) drain() {
	k.rd.SetDeadline(time.Now().Add(2 * time.Millisecond))
	for {
		if _, err := k.rd.Read(); err != nil {
			break
		}
	}
	k.rd.SetDeadline(time.Time{})
}

// run judges one frame: XDP_DROP (1) is Drop, XDP_PASS (2) Pass.
func (k *kernel) run(t testing.TB, frame []byte) Verdict {
	t.Helper()
	ret, err := k.prog.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		t.Fatalf("BPF_PROG_TEST_RUN of a %d-byte frame: %v", len(frame), err)
	}
	switch ret {
	case 1:
		return Drop
	case 2:
		return Pass
	}
	t.Fatalf("the packet program returned %d", ret)
	return 0
}

func (k *kernel) readStats(t testing.TB) [bpf.StatMax]uint64 {
	t.Helper()
	var out [bpf.StatMax]uint64
	for i := range out {
		var per []uint64
		if err := k.maps.Stats.Lookup(uint32(i), &per); err != nil {
			t.Fatal(err)
		}
		for _, v := range per {
			out[i] += v
		}
	}
	return out
}

// statsSince are the stats counted since the last call (or apply).
func (k *kernel) statsSince(t testing.TB) [bpf.StatMax]uint64 {
	now := k.readStats(t)
	var d [bpf.StatMax]uint64
	for i := range d {
		d[i] = now[i] - k.stats[i]
	}
	k.stats = now
	return d
}

// rulePackets are the packets each rule of the active generation counted
// since the plan was applied.
func (k *kernel) rulePackets(t testing.TB, nrules int) []uint64 {
	t.Helper()
	out := make([]uint64, nrules)
	for i := range out {
		var per []bpf.Counter
		if err := k.maps.RuleCounters.Lookup(k.gen*bpf.MaxRules+uint32(i), &per); err != nil {
			t.Fatal(err)
		}
		for _, c := range per {
			out[i] += c.Packets
		}
	}
	return out
}

// kernelEvent is one event the program sent: the record's bpf.Event, and
// the payload of a payload record.
type kernelEvent struct {
	ev         bpf.Event
	payload    []byte
	hasPayload bool
}

var (
	eventSize        = int(unsafe.Sizeof(bpf.Event{}))
	eventPayloadSize = int(unsafe.Sizeof(bpf.EventPayload{}))
	eventHelloSize   = int(unsafe.Sizeof(bpf.EventHello{}))
)

// events reads n events, polling (the program wakes no reader for fewer
// than an eighth of the ring, as the engine's reader polls too) for up to
// a few seconds for staged ones (a stage is sent within stage_flush_ns,
// 1 ms), then takes any more that are already there.
func (k *kernel) events(t testing.TB, n int) []kernelEvent {
	t.Helper()
	var out []kernelEvent
	giveUp := time.Now().Add(5 * time.Second)
	for {
		k.rd.SetDeadline(time.Now().Add(time.Millisecond))
		rec, err := k.rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if len(out) >= n || time.Now().After(giveUp) {
				break
			}
			continue
		}
		if err != nil {
			t.Fatalf("read events: %v", err)
		}
		raw := rec.RawSample
		switch {
		case len(raw) == eventHelloSize:
			p := (*bpf.EventHello)(unsafe.Pointer(&raw[0]))
			n := min(int(p.PayloadLen), len(p.Payload))
			out = append(out, kernelEvent{ev: p.Ev, payload: bytes.Clone(p.Payload[:n]), hasPayload: true})
		case len(raw) == eventPayloadSize:
			p := (*bpf.EventPayload)(unsafe.Pointer(&raw[0]))
			n := min(int(p.PayloadLen), len(p.Payload))
			out = append(out, kernelEvent{ev: p.Ev, payload: bytes.Clone(p.Payload[:n]), hasPayload: true})
		case len(raw) > 0 && len(raw)%eventSize == 0:
			for off := 0; off < len(raw); off += eventSize {
				out = append(out, kernelEvent{ev: *(*bpf.Event)(unsafe.Pointer(&raw[off]))})
			}
		default:
			t.Fatalf("a ring buffer record of %d bytes is neither an event (%d) nor events nor a payload event (%d)",
				len(raw), eventSize, eventPayloadSize)
		}
	}
	k.rd.SetDeadline(time.Time{})
	return out
}

// eventDiff says how a kernel event differs from the reference's, "" when
// it does not.
func (k *kernel) eventDiff(got kernelEvent, want *Event) string {
	ev := &got.ev
	index := int(ev.CounterKey) - int(k.gen)*bpf.MaxRules
	type pair struct {
		name      string
		got, want any
	}
	for _, p := range []pair{
		{"rule", index, want.Rule}, {"ifindex", ev.Ifindex, uint32(testIfindex)}, {"len", ev.PacketLen, want.Len},
		{"family", ev.Family, want.Family}, {"protocol", ev.Protocol, want.Protocol}, {"verdict", ev.Verdict, want.Verdict},
		{"tcp_flags", ev.TcpFlags, want.TCPFlags}, {"sport", ev.Sport, want.Sport}, {"dport", ev.Dport, want.Dport},
		{"saddr", ev.Saddr, want.Saddr}, {"daddr", ev.Daddr, want.Daddr}, {"repeated", ev.Repeated, uint32(0)},
		{"generation", ev.Generation, k.gen}, {"has payload", got.hasPayload, want.HasPayload},
		{"payload", fmt.Sprintf("%x", got.payload), fmt.Sprintf("%x", want.Payload)},
	} {
		if p.got != p.want {
			return fmt.Sprintf("%s: kernel %v, reference %v", p.name, p.got, p.want)
		}
	}
	return ""
}
