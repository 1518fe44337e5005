package engine

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/cilium/ebpf"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/engine/generation"
)

// InterfaceCounter counts the packets rules judged on one interface with
// one verdict, since grain started.
type InterfaceCounter struct {
	Interface string `json:"interface"`
	Verdict   string `json:"verdict"` // "drop", "pass", "count" or "would_drop"
	Packets   uint64 `json:"packets"`
	Bytes     uint64 `json:"bytes"`
}

// otherInterfaces names the slot counting interfaces that found their own
// slot taken (two ifindexes equal modulo bpf.IfaceSlots).
const otherInterfaces = "other"

// ifaceSlots gives the XDP program's per-interface verdict counter slots
// to the interfaces it is attached to: slot ifindex % bpf.IfaceSlots, when
// free. A slot handed to another interface is first harvested, so the
// totals by interface name keep counting.
type ifaceSlots struct {
	names  map[uint32]string // slot -> interface name
	totals map[string]InterfaceCounter
}

// claimedSlot is a slot claim gave to another interface, and whom it
// had: unclaim gives it back.
type claimedSlot struct {
	slot      uint32
	prevOwner uint32 // ifindex, 0 for none
	prevName  string
}

// claim gives a slot to every interface of attach (name -> ifindex) that
// has none, and says which slots changed hands. e.mu must be held.
func (s *ifaceSlots) claim(m *ebpf.Map, attach map[string]uint32) ([]claimedSlot, error) {
	if s.names == nil {
		s.names, s.totals = map[uint32]string{}, map[string]InterfaceCounter{}
	}
	var claimed []claimedSlot
	var perCPU []bpf.IfaceCounter
	for name, ifindex := range attach {
		slot := ifindex % bpf.IfaceSlots
		if err := m.Lookup(slot, &perCPU); err != nil {
			s.unclaim(m, claimed)
			return nil, err
		}
		prev := claimedSlot{slot: slot, prevOwner: perCPU[0].Ifindex, prevName: s.names[slot]}
		switch owner := perCPU[0].Ifindex; {
		case owner == ifindex:
			s.names[slot] = name // adopted from a pinned map, or renamed
			continue
		case owner != 0 && s.names[slot] != "" && s.stillAttached(attach, owner):
			continue // taken: this interface counts under "other"
		case owner != 0:
			s.harvest(s.names[slot], perCPU)
		}
		if err := s.reset(m, slot, ifindex, len(perCPU)); err != nil {
			s.unclaim(m, claimed)
			return nil, err
		}
		s.names[slot] = name
		claimed = append(claimed, prev)
	}
	return claimed, nil
}

// unclaim gives the slots of claimed back to the interfaces that had them,
// from zero: claim already moved their counts into the totals. It undoes
// the claims of a rule set that did not come into force. e.mu must be held.
func (s *ifaceSlots) unclaim(m *ebpf.Map, claimed []claimedSlot) {
	for i := len(claimed) - 1; i >= 0; i-- {
		c := claimed[i]
		// A slot that cannot be written keeps the new owner's ifindex:
		// its previous interface then counts under "other".
		s.reset(m, c.slot, c.prevOwner, 0)
		if c.prevName == "" {
			delete(s.names, c.slot)
		} else {
			s.names[c.slot] = c.prevName
		}
	}
}

// reset zeroes a slot's counters and gives it to ifindex.
func (s *ifaceSlots) reset(m *ebpf.Map, slot, ifindex uint32, cpus int) error {
	if cpus == 0 {
		cpus = generation.PossibleCPUs()
	}
	perCPU := make([]bpf.IfaceCounter, cpus)
	for i := range perCPU {
		perCPU[i] = bpf.IfaceCounter{Ifindex: ifindex}
	}
	return m.Put(slot, perCPU)
}

func (s *ifaceSlots) stillAttached(attach map[string]uint32, ifindex uint32) bool {
	for _, i := range attach {
		if i == ifindex {
			return true
		}
	}
	return false
}

// harvest adds a slot's per-CPU counts to the totals of name.
func (s *ifaceSlots) harvest(name string, perCPU []bpf.IfaceCounter) {
	if name == "" {
		name = otherInterfaces
	}
	for v := range uint8(bpf.Verdicts) {
		verdict := verdictNames[v]
		key := name + "\x00" + verdict
		t := s.totals[key]
		t.Interface, t.Verdict = name, verdict
		for _, c := range perCPU {
			t.Packets += c.Packets[v]
			t.Bytes += c.Bytes[v]
		}
		s.totals[key] = t
	}
}

// counters sums the slots in use and the totals of slots handed on.
func (s *ifaceSlots) counters(m *ebpf.Map) ([]InterfaceCounter, error) {
	sum := ifaceSlots{totals: map[string]InterfaceCounter{}}
	for k, t := range s.totals {
		sum.totals[k] = t
	}
	var perCPU []bpf.IfaceCounter
	read := func(slot uint32, name string) error {
		if err := m.Lookup(slot, &perCPU); err != nil {
			return fmt.Errorf("read interface counters: %w", err)
		}
		sum.harvest(name, perCPU)
		return nil
	}
	for slot, name := range s.names {
		if err := read(slot, name); err != nil {
			return nil, err
		}
	}
	if err := read(bpf.IfaceSlots, otherInterfaces); err != nil {
		return nil, err
	}
	out := make([]InterfaceCounter, 0, len(sum.totals))
	for _, t := range sum.totals {
		if t.Packets > 0 || !strings.HasPrefix(t.Interface, otherInterfaces) {
			out = append(out, t)
		}
	}
	slices.SortFunc(out, func(a, b InterfaceCounter) int {
		return cmp.Or(strings.Compare(a.Interface, b.Interface), strings.Compare(a.Verdict, b.Verdict))
	})
	return out, nil
}

// InterfaceCounters returns, per interface and verdict, the packets and
// bytes the rules judged since grain started.
func (e *Engine) InterfaceCounters() ([]InterfaceCounter, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.ifaces.counters(e.xdp.Maps().IfaceCounters)
}
