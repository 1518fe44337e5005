package engine

import (
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/engine/generation"
)

// tableWriter fills the maps of one generation.
type tableWriter struct {
	maps bpf.XDPMaps
	gen  uint32
}

func (w tableWriter) bitmapKey(index int) uint32 {
	return w.gen*bpf.BitmapsPerGen + uint32(index)
}

// interfaceBitmaps gives each link of links (name -> ifindex) the OR of the
// bitmaps of every entry whose name or pattern matches the link's name.
// Links no entry matches get none: their packets use the interface default.
func interfaceBitmaps(entries []codegen.InterfaceBitmap, links map[string]uint32) map[uint32]bpf.Bitmap {
	out := map[uint32]bpf.Bitmap{}
	for name, idx := range links {
		var b bpf.Bitmap
		matched := false
		for _, e := range entries {
			if codegen.InterfaceMatches(e.Interface, name) {
				for w := range b.W {
					b.W[w] |= e.Bitmap.Value.W[w]
				}
				b.Nonzero |= e.Bitmap.Value.Nonzero
				matched = true
			}
		}
		if matched {
			out[idx] = b
		}
	}
	return out
}

// writeGeneration writes the map entries of plan (codegen.XDPMaps) into
// generation gen, which no packet reads while this runs, as they are: it
// adds only the generation to keys, the epoch to rule ids, and the
// interface indexes of ifindex, the links the program sees packets from
// (name -> ifindex), which the plan's interface names and patterns are
// resolved against. index is what the generation's part of the IPv4
// prefix index holds (nil: unknown), updated to what it holds after.
func writeGeneration(maps bpf.XDPMaps, gen, epoch uint32, plan *codegen.Plan, ifindex map[string]uint32, index **cidrIndexRuns) error {
	w := tableWriter{maps: maps, gen: gen}
	pm := &plan.Maps

	var keys []uint32
	var values []bpf.Bitmap
	for _, run := range pm.Bitmaps {
		for index := run.First; index <= run.Last; index++ {
			keys = append(keys, w.bitmapKey(index))
			values = append(values, run.Bitmap.Value)
		}
	}
	if err := generation.PutBatch(maps.Bitmaps, keys, values); err != nil {
		return fmt.Errorf("write bitmaps: %w", err)
	}

	// Port -> class, for both directions.
	for dir, runs := range [][]codegen.PortRun{pm.SourcePorts, pm.DestinationPorts} {
		pkeys := make([]uint32, 0, 65536)
		pvals := make([]uint16, 0, 65536)
		for _, run := range runs {
			for port := run.First; port <= run.Last; port++ {
				pkeys = append(pkeys, (gen*2+uint32(dir))*65536+uint32(port))
				pvals = append(pvals, run.Class)
			}
		}
		if err := generation.PutBatch(maps.PortClass, pkeys, pvals); err != nil {
			return fmt.Errorf("write port classes: %w", err)
		}
	}

	if err := writeCIDRIndex(maps.CIDRIndex, gen, pm, index); err != nil {
		return err
	}

	// CIDR classes: replace this generation's entries.
	if err := generation.DeleteStale(maps.CIDRClass, func(k bpf.CIDRKey) bool { return uint32(k.Generation) == gen }); err != nil {
		return fmt.Errorf("clear cidr classes: %w", err)
	}
	for _, c := range pm.CIDRs {
		key := c.Key.Value
		key.Generation = uint8(gen)
		if err := maps.CIDRClass.Put(key, c.Class); err != nil {
			return fmt.Errorf("write cidr class %d: %w", c.Class, err)
		}
	}

	// Server names: replace this generation's entries.
	if err := generation.DeleteStale(maps.SNIClass, func(k bpf.SNIKey) bool { return uint32(k.Generation) == gen }); err != nil {
		return fmt.Errorf("clear server name classes: %w", err)
	}
	for _, c := range pm.ServerNames {
		key := c.Key.Value
		key.Generation = uint8(gen)
		if err := maps.SNIClass.Put(key, c.Class); err != nil {
			return fmt.Errorf("write server name class %d: %w", c.Class, err)
		}
	}

	// Interfaces.
	if err := generation.DeleteStale(maps.IfaceBitmaps, func(k bpf.IfaceKey) bool { return k.Generation == gen }); err != nil {
		return fmt.Errorf("clear interface bitmaps: %w", err)
	}
	for idx, b := range interfaceBitmaps(pm.Interfaces, ifindex) {
		if err := maps.IfaceBitmaps.Put(bpf.IfaceKey{Generation: gen, Ifindex: idx}, b); err != nil {
			return fmt.Errorf("write interface bitmap: %w", err)
		}
	}

	// Contents and rules.
	for i, c := range pm.Contents {
		if err := maps.Contents.Put(gen*bpf.MaxContents+uint32(i), c.Value); err != nil {
			return fmt.Errorf("write content: %w", err)
		}
	}
	zero := make([]bpf.Counter, generation.PossibleCPUs())
	for i, r := range pm.Rules {
		v := r.Value
		v.Id = generation.RuleID(epoch, i)
		key := gen*bpf.MaxRules + uint32(i)
		if err := maps.Rules.Put(key, v); err != nil {
			return fmt.Errorf("write rule: %w", err)
		}
		// Counters and rate windows start from zero for each
		// generation's rules.
		if err := maps.RuleCounters.Put(key, zero); err != nil {
			return fmt.Errorf("reset counters: %w", err)
		}
		if err := maps.RateWindows.Put(key, bpf.Rate{}); err != nil {
			return fmt.Errorf("reset rate window: %w", err)
		}
	}

	// The generation's config comes last: it is what makes it usable.
	// It shares the active map's value with the generation in force,
	// whose bytes are written back unchanged.
	var act bpf.Active
	if err := maps.Active.Lookup(uint32(0), &act); err != nil {
		return fmt.Errorf("read active generation: %w", err)
	}
	act.Config[gen] = pm.Config.Value
	act.Gate[gen] = pm.Gates.Value
	if err := maps.Active.Put(uint32(0), act); err != nil {
		return fmt.Errorf("write generation config: %w", err)
	}
	return nil
}

// cidrIndexRuns are the IPv4 prefix index entries of a plan: source and
// destination (codegen.XDPMaps.SourceIndex4, DestinationIndex4).
type cidrIndexRuns [2][]codegen.CIDRIndexRun

// writeCIDRIndex writes plan's IPv4 prefix index into generation gen's
// part of m and zeroes every other entry that *held says is set there, so
// that no entry of an earlier rule set stays to widen a match. When *held
// is nil (unknown: maps an earlier grain pinned) it writes the whole
// part, zeros included: 512 KiB, some 15 ms, once per generation. *held is the plan's after a
// write, nil after a failed one.
func writeCIDRIndex(m *ebpf.Map, gen uint32, plan *codegen.XDPMaps, held **cidrIndexRuns) error {
	want := cidrIndexRuns{plan.SourceIndex4, plan.DestinationIndex4}
	old := *held
	*held = nil
	for dir, runs := range want {
		first := (gen*2 + uint32(dir)) * bpf.CIDRIndexEntries
		var keys []uint32
		var values []bpf.CIDRIndex
		if old == nil {
			values = make([]bpf.CIDRIndex, bpf.CIDRIndexEntries)
			for _, run := range runs {
				for i := run.First; i <= run.Last; i++ {
					values[i] = run.Entry.Value
				}
			}
			if err := generation.PutRange(m, first, values); err != nil {
				return fmt.Errorf("write the address prefix index: %w", err)
			}
			continue
		}
		set := make([]bool, bpf.CIDRIndexEntries)
		for _, run := range runs {
			for i := run.First; i <= run.Last; i++ {
				keys = append(keys, first+uint32(i))
				values = append(values, run.Entry.Value)
				set[i] = true
			}
		}
		for _, run := range old[dir] {
			for i := run.First; i <= run.Last; i++ {
				if !set[i] {
					keys = append(keys, first+uint32(i))
					values = append(values, bpf.CIDRIndex{})
				}
			}
		}
		if err := generation.PutBatch(m, keys, values); err != nil {
			return fmt.Errorf("write the address prefix index: %w", err)
		}
	}
	*held = &want
	return nil
}
