package engine

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
)

var fieldBits = map[string]uint32{
	"protocol": bpf.FieldProto, "saddr": bpf.FieldSrc, "daddr": bpf.FieldDst,
	"sport": bpf.FieldSport, "dport": bpf.FieldDport, "tcp_flags": bpf.FieldFlags,
	"interface": bpf.FieldIface,
}

var cidrFields = map[string]uint8{"src4": bpf.CIDRSrc4, "dst4": bpf.CIDRDst4, "src6": bpf.CIDRSrc6, "dst6": bpf.CIDRDst6}

var actions = map[string]uint8{"count": bpf.ActionCount, "drop": bpf.ActionDrop, "pass": bpf.ActionPass}

func bitmapOf(rules codegen.RuleSet) bpf.Bitmap {
	var b bpf.Bitmap
	for _, i := range rules {
		b.W[i/64] |= 1 << (i % 64)
		b.Nonzero |= 1 << (i / 64)
	}
	return b
}

// tableWriter fills the maps of one generation.
type tableWriter struct {
	maps bpf.XDPMaps
	gen  uint32
}

func (w tableWriter) bitmapKey(index int) uint32 {
	return w.gen*bpf.BitmapsPerGen + uint32(index)
}

// interfaceRules gives each link of links (name -> ifindex) the rules of
// every entry whose name or pattern matches the link's name. Links no entry
// matches get none: their packets use the interface default.
func interfaceRules(entries []codegen.InterfaceEntry, links map[string]uint32) map[uint32]codegen.RuleSet {
	out := map[uint32]codegen.RuleSet{}
	for name, idx := range links {
		var rules codegen.RuleSet
		matched := false
		for _, e := range entries {
			if codegen.InterfaceMatches(e.Interface, name) {
				rules = append(rules, e.Rules...)
				matched = true
			}
		}
		if matched {
			slices.Sort(rules)
			out[idx] = slices.Compact(rules)
		}
	}
	return out
}

// writeGeneration writes every table of plan into generation gen, which no
// packet reads while this runs. ifindex holds the links the program sees
// packets from (name -> ifindex), which the plan's interface names and
// patterns are resolved against.
func writeGeneration(maps bpf.XDPMaps, gen, epoch uint32, plan *codegen.Plan, ifindex map[string]uint32) error {
	w := tableWriter{maps: maps, gen: gen}
	t := &plan.Tables

	// Bitmaps indexed by array position: protocol, flags, aux, port classes.
	var keys []uint32
	var values []bpf.Bitmap
	put := func(index int, rules codegen.RuleSet) {
		keys = append(keys, w.bitmapKey(index))
		values = append(values, bitmapOf(rules))
	}
	protocols := map[int]codegen.RuleSet{}
	for _, e := range t.Protocol.Entries {
		protocols[e.Key] = e.Rules
	}
	flags := map[int]codegen.RuleSet{}
	for _, e := range t.TCPFlags.Entries {
		flags[e.Key] = e.Rules
	}
	for k := 0; k < 256; k++ {
		if rs, ok := protocols[k]; ok {
			put(bpf.BitmapRegionProto+k, rs)
		} else {
			put(bpf.BitmapRegionProto+k, t.Protocol.Default)
		}
		if rs, ok := flags[k]; ok {
			put(bpf.BitmapRegionFlags+k, rs)
		} else {
			put(bpf.BitmapRegionFlags+k, t.TCPFlags.Default)
		}
	}
	ifaceDefault := t.InterfaceDefault
	put(bpf.BitmapRegionAux+bpf.AuxSrc4Default, t.CIDRDefaults["src4"])
	put(bpf.BitmapRegionAux+bpf.AuxDst4Default, t.CIDRDefaults["dst4"])
	put(bpf.BitmapRegionAux+bpf.AuxSrc6Default, t.CIDRDefaults["src6"])
	put(bpf.BitmapRegionAux+bpf.AuxDst6Default, t.CIDRDefaults["dst6"])
	put(bpf.BitmapRegionAux+bpf.AuxIfaceDefault, ifaceDefault)
	put(bpf.BitmapRegionAux+bpf.AuxNoPorts, t.NoPorts)
	put(bpf.BitmapRegionAux+bpf.AuxNotTCP, t.NotTCP)
	put(bpf.BitmapRegionAux+bpf.AuxAll, t.All)
	for class, pc := range t.SourcePorts {
		put(bpf.BitmapRegionSport+class, pc.Rules)
	}
	for class, pc := range t.DestinationPorts {
		put(bpf.BitmapRegionDport+class, pc.Rules)
	}
	for class, c := range t.CIDRs {
		put(bpf.BitmapRegionCIDR+class, c.Rules)
	}
	if _, err := maps.Bitmaps.BatchUpdate(keys, values, nil); err != nil {
		return fmt.Errorf("write bitmaps: %w", err)
	}

	// Port -> class, for both directions; only when a rule uses ports.
	for dir, classes := range [][]codegen.PortClass{t.SourcePorts, t.DestinationPorts} {
		pkeys := make([]uint32, 0, 65536)
		pvals := make([]uint16, 0, 65536)
		for class, pc := range classes {
			for port := pc.First; port <= pc.Last; port++ {
				pkeys = append(pkeys, (gen*2+uint32(dir))*65536+uint32(port))
				pvals = append(pvals, uint16(class))
			}
		}
		if _, err := maps.PortClass.BatchUpdate(pkeys, pvals, nil); err != nil {
			return fmt.Errorf("write port classes: %w", err)
		}
	}

	// CIDR classes: replace this generation's entries.
	if err := deleteGeneration(maps.CIDRClass, func(k bpf.CIDRKey) bool { return uint32(k.Generation) == gen }); err != nil {
		return fmt.Errorf("clear cidr classes: %w", err)
	}
	for class, c := range t.CIDRs {
		prefix, err := netip.ParsePrefix(c.Prefix)
		if err != nil {
			return fmt.Errorf("plan: %w", err)
		}
		key := bpf.CIDRKey{Generation: uint8(gen), Field: cidrFields[c.Field], Prefixlen: uint8(prefix.Bits())}
		addr := prefix.Addr().AsSlice()
		copy(key.Addr[:], addr)
		if err := maps.CIDRClass.Put(key, uint32(class)); err != nil {
			return fmt.Errorf("write cidr class %s: %w", c.Prefix, err)
		}
	}

	// Interfaces.
	if err := deleteGeneration(maps.IfaceBitmaps, func(k bpf.IfaceKey) bool { return k.Generation == gen }); err != nil {
		return fmt.Errorf("clear interface bitmaps: %w", err)
	}
	for idx, rules := range interfaceRules(t.Interfaces, ifindex) {
		if err := maps.IfaceBitmaps.Put(bpf.IfaceKey{Generation: gen, Ifindex: idx}, bitmapOf(rules)); err != nil {
			return fmt.Errorf("write interface bitmap: %w", err)
		}
	}

	// Contents and rules.
	for _, c := range plan.Contents {
		var v bpf.Content
		copy(v.Pattern[:], c.Pattern)
		copy(v.Mask[:], c.Mask)
		v.Len, v.Offset, v.End = uint16(len(c.Pattern)), uint16(c.Offset), uint16(c.End)
		if c.NoCase {
			v.Flags |= bpf.ContentNoCase
		}
		if c.Negate {
			v.Flags |= bpf.ContentNegate
		}
		if c.Anchored {
			v.Flags |= bpf.ContentAnchored
		}
		v.TailPattern, v.TailMask = tailWord(c.Pattern), tailWord(c.Mask)
		v.Pre1Index, v.Pre2Index = uint8(c.Prefilter[0]), uint8(c.Prefilter[1])
		v.Pre1Byte, v.Pre2Byte = c.Pattern[c.Prefilter[0]], c.Pattern[c.Prefilter[1]]
		v.Pre1Mask, v.Pre2Mask = c.Mask[c.Prefilter[0]], c.Mask[c.Prefilter[1]]
		if err := maps.Contents.Put(gen*bpf.MaxContents+uint32(c.Index), v); err != nil {
			return fmt.Errorf("write content: %w", err)
		}
	}
	zero := make([]bpf.Counter, ebpf.MustPossibleCPU())
	written := make([]bpf.Rule, len(plan.Rules))
	for _, r := range plan.Rules {
		v := bpf.Rule{Action: actions[r.Action], Id: ruleID(epoch, r.Index), Ncontents: uint8(len(r.Contents))}
		if r.Event != "" {
			v.Flags |= bpf.RuleEmit
		}
		if r.EmitPayload {
			v.Flags |= bpf.RuleEmitPayload
		}
		if r.DedupNs > 0 {
			v.DedupNs, v.DedupFields = uint64(r.DedupNs), dedupFields(r.Fields)
		}
		v.RateLimit = uint32(r.RateLimit)
		for i, c := range r.Contents {
			v.Contents[i] = uint16(c)
		}
		setQuick(&v, r, plan.Contents)
		written[r.Index] = v
		key := gen*bpf.MaxRules + uint32(r.Index)
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
	cfg := bpf.GenConfig{Nrules: uint32(len(plan.Rules))}
	if len(plan.Rules) <= 64 {
		for k := range cfg.ProtoW0 {
			rs, ok := protocols[k]
			if !ok {
				rs = t.Protocol.Default
			}
			cfg.ProtoW0[k] = bitmapOf(rs).W[0]
		}
	}
	for _, f := range plan.Fields {
		cfg.Fields |= fieldBits[f]
	}
	lens := t.PrefixLengths
	cfg.N_src4 = uint8(copyLens(cfg.Src4Lens[:], lens["src4"]))
	cfg.N_dst4 = uint8(copyLens(cfg.Dst4Lens[:], lens["dst4"]))
	cfg.N_src6 = uint8(copyLens(cfg.Src6Lens[:], lens["src6"]))
	cfg.N_dst6 = uint8(copyLens(cfg.Dst6Lens[:], lens["dst6"]))
	// It shares the active map's value with the generation in force,
	// whose bytes are written back unchanged.
	var act bpf.Active
	if err := maps.Active.Lookup(uint32(0), &act); err != nil {
		return fmt.Errorf("read active generation: %w", err)
	}
	act.Config[gen] = cfg
	for i, proto := range [bpf.Gates]int{bpf.GateTCP: 6, bpf.GateUDP: 17} {
		rs, ok := protocols[proto]
		if !ok {
			rs = t.Protocol.Default
		}
		act.Gate[gen][i] = gateOf(written, rs)
	}
	if err := maps.Active.Put(uint32(0), act); err != nil {
		return fmt.Errorf("write generation config: %w", err)
	}
	return nil
}

// setQuick gives a rule its quick word: the tail word of its first
// anchored, non-negated content, which every packet the rule matches
// passes; when that content is the rule's only one and at most eight bytes
// long, the quick word is the whole condition.
func setQuick(v *bpf.Rule, r codegen.Rule, contents []codegen.Content) {
	for _, i := range r.Contents {
		c := contents[i]
		if !c.Anchored || c.Negate {
			continue
		}
		v.Flags |= bpf.RuleQuick
		v.QuickEnd = uint16(c.Offset + len(c.Pattern))
		v.QuickPattern, v.QuickMask = tailWord(c.Pattern), tailWord(c.Mask)
		if len(r.Contents) == 1 && len(c.Pattern) <= 8 {
			v.Flags |= bpf.RuleQuickOnly
		}
		return
	}
}

// gateOf is the gate of the rules that admit one protocol (grain.h, struct
// grain_gate): the payload word that all their quick words check, on the
// bits where all of them agree. There is none (End 0) when some of them
// has no quick word, when their words end at different offsets, or when
// they agree on no bit; and none for no rules, so that a generation
// without rules still counts its packets as unconfigured.
func gateOf(rules []bpf.Rule, admitted codegen.RuleSet) bpf.Gate {
	if len(admitted) == 0 {
		return bpf.Gate{}
	}
	first := rules[admitted[0]]
	if first.Flags&bpf.RuleQuick == 0 {
		return bpf.Gate{}
	}
	mask := first.QuickMask
	for _, i := range admitted[1:] {
		r := rules[i]
		if r.Flags&bpf.RuleQuick == 0 || r.QuickEnd != first.QuickEnd {
			return bpf.Gate{}
		}
		// Bits outside a rule's mask or where patterns differ say
		// nothing about every matching packet.
		mask &= r.QuickMask &^ (r.QuickPattern ^ first.QuickPattern)
	}
	if mask == 0 {
		return bpf.Gate{}
	}
	return bpf.Gate{End: first.QuickEnd, Mask: mask, Pattern: first.QuickPattern & mask}
}

// tailWord is the last eight bytes of b as the little-endian word the XDP
// program loads from the packet, with zeros in front when b is shorter.
func tailWord(b []byte) uint64 {
	var w [8]byte
	if len(b) >= 8 {
		copy(w[:], b[len(b)-8:])
	} else {
		copy(w[8-len(b):], b)
	}
	return binary.LittleEndian.Uint64(w[:])
}

func copyLens(dst []uint8, lens []int) int {
	for i, l := range lens {
		dst[i] = uint8(l)
	}
	return len(lens)
}

// deleteGeneration removes the hash entries whose key match selects.
func deleteGeneration[K any](m *ebpf.Map, match func(K) bool) error {
	var k K
	var stale []K
	var v []byte
	it := m.Iterate()
	for it.Next(&k, &v) {
		if match(k) {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return err
	}
	for _, k := range stale {
		if err := m.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// dedupFieldBits are the event fields deduplication compares when a rule's
// event carries them (bpf/grain.h: GRAIN_DEDUP_*); ifindex is compared
// always, as the interface every event names.
var dedupFieldBits = map[string]uint8{
	"saddr": bpf.DedupSaddr, "daddr": bpf.DedupDaddr, "sport": bpf.DedupSport, "dport": bpf.DedupDport,
	"protocol": bpf.DedupProtocol, "tcp_flags": bpf.DedupTCPFlags, "len": bpf.DedupLen,
}

// dedupFields is the GRAIN_DEDUP_* mask of an event's fields.
func dedupFields(fields []string) uint8 {
	var bits uint8
	for _, f := range fields {
		bits |= dedupFieldBits[f]
	}
	return bits
}
