package codegen

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/grain-ebpf/grain/bpf"
)

// XDPMaps is the content of the XDP program's maps for one rule set, in
// one generation's part of each map. The engine writes every entry as it
// is, adding the generation to keys and the epoch to rule ids, and turns
// Interfaces into the bitmaps of the links that exist.
type XDPMaps struct {
	// Bitmaps are the entries of the bitmaps map, by index from the
	// generation's first (bpf.BitmapRegion*: protocol, TCP flags, aux,
	// port classes, CIDR classes).
	Bitmaps []BitmapRun `json:"bitmaps"`
	// SourcePorts and DestinationPorts map every port to its class, the
	// value of the port_class entries.
	SourcePorts      []PortRun `json:"source_ports"`
	DestinationPorts []PortRun `json:"destination_ports"`
	// CIDRs are the cidr_class entries: prefix key to class, for IPv4
	// only the prefixes longer than bpf.CIDRIndexBits.
	CIDRs []CIDREntry `json:"cidrs"`
	// SourceIndex4 and DestinationIndex4 are the cidr_index entries of
	// IPv4 addresses that are not zero, by the address's first
	// bpf.CIDRIndexBits bits: the class of the longest shorter prefix
	// that contains them, and which longer lengths occur there.
	SourceIndex4      []CIDRIndexRun `json:"source_index4"`
	DestinationIndex4 []CIDRIndexRun `json:"destination_index4"`
	// ServerNames are the sni_class entries: reversed name key to class.
	ServerNames []ServerNameEntry `json:"server_names,omitempty"`
	// Interfaces hold the bitmap of each interface name or pattern; a
	// link's iface_bitmaps entry is the OR of those of every name and
	// pattern that matches its name, and a link none matches has none.
	Interfaces []InterfaceBitmap `json:"interfaces"`
	// Contents and Rules are the entries of the contents and rules maps by
	// index (a rule's id is the engine's).
	Contents []Kernel[bpf.Content] `json:"contents"`
	Rules    []Kernel[bpf.Rule]    `json:"rules"`
	// Config and Gates are the generation's part of the active map's one
	// value.
	Config Kernel[bpf.GenConfig]       `json:"config"`
	Gates  Kernel[[bpf.Gates]bpf.Gate] `json:"gates"`
}

// BitmapRun is the bitmap of the indices First to Last.
type BitmapRun struct {
	First  int                `json:"first"`
	Last   int                `json:"last"`
	Bitmap Kernel[bpf.Bitmap] `json:"bitmap"`
}

// PortRun maps the ports First to Last to one class.
type PortRun struct {
	First int    `json:"first"`
	Last  int    `json:"last"`
	Class uint16 `json:"class"`
}

// CIDREntry is one cidr_class entry.
type CIDREntry struct {
	Key   Kernel[bpf.CIDRKey] `json:"key"`
	Class uint32              `json:"class"`
}

// CIDRIndexRun is one cidr_index entry for the /16s First to Last (the
// address's first 16 bits).
type CIDRIndexRun struct {
	First int                   `json:"first"`
	Last  int                   `json:"last"`
	Entry Kernel[bpf.CIDRIndex] `json:"entry"`
}

// ServerNameEntry is one sni_class entry.
type ServerNameEntry struct {
	Key   Kernel[bpf.SNIKey] `json:"key"`
	Class uint32             `json:"class"`
}

// InterfaceBitmap is the bitmap of the rules of one interface name or
// pattern.
type InterfaceBitmap struct {
	Interface string             `json:"interface"`
	Bitmap    Kernel[bpf.Bitmap] `json:"bitmap"`
}

var fieldBits = map[string]uint32{
	"protocol": bpf.FieldProto, "saddr": bpf.FieldSrc, "daddr": bpf.FieldDst,
	"sport": bpf.FieldSport, "dport": bpf.FieldDport, "tcp_flags": bpf.FieldFlags,
	"interface": bpf.FieldIface, "tls_sni": bpf.FieldSNI,
}

var cidrFields = map[string]uint8{"src4": bpf.CIDRSrc4, "dst4": bpf.CIDRDst4, "src6": bpf.CIDRSrc6, "dst6": bpf.CIDRDst6}

var actions = map[string]uint8{"count": bpf.ActionCount, "drop": bpf.ActionDrop, "pass": bpf.ActionPass, WouldDrop: bpf.ActionWouldDrop}

// dedupFieldBits are the event fields deduplication compares when a rule's
// event carries them (bpf/grain.h: GRAIN_DEDUP_*); ifindex is compared
// always, as the interface every event names.
var dedupFieldBits = map[string]uint8{
	"saddr": bpf.DedupSaddr, "daddr": bpf.DedupDaddr, "sport": bpf.DedupSport, "dport": bpf.DedupDport,
	"protocol": bpf.DedupProtocol, "tcp_flags": bpf.DedupTCPFlags, "len": bpf.DedupLen,
}

// BitmapOf is the bitmap of a rule set: bit i%64 of word i/64 for rule i,
// and bit w of Nonzero for each word w that has one.
func BitmapOf(rules RuleSet) bpf.Bitmap {
	var b bpf.Bitmap
	for _, i := range rules {
		b.W[i/64] |= 1 << (i % 64)
		b.Nonzero |= 1 << (i / 64)
	}
	return b
}

// cidrClasses numbers the distinct rule sets of the prefixes in order of
// first appearance: prefixes with the same rules share a class and its one
// bitmap (a block list of thousands of prefixes is one class). classOf[i]
// is the class of prefixes[i]; classes[c] the rules of class c.
func cidrClasses(prefixes []CIDRClass) (classOf []int, classes []RuleSet) {
	index := map[string]int{}
	classOf = make([]int, len(prefixes))
	for i, c := range prefixes {
		key := fmt.Sprint([]int(c.Rules))
		class, ok := index[key]
		if !ok {
			class = len(classes)
			index[key] = class
			classes = append(classes, c.Rules)
		}
		classOf[i] = class
	}
	return classOf, classes
}

// buildMaps encodes the plan's rules, contents and tables into the XDP
// program's map entries.
func buildMaps(plan *Plan) {
	t := &plan.Tables
	m := &plan.Maps

	// Bitmaps by index; equal neighbours share a run.
	protocols := keyedSets(t.Protocol)
	flags := keyedSets(t.TCPFlags)
	classOf, classes := cidrClasses(t.CIDRs)
	m.Bitmaps = runsOf(func(put func(int, bpf.Bitmap)) {
		set := func(index int, rules RuleSet) { put(index, BitmapOf(rules)) }
		for k := 0; k < 256; k++ {
			set(bpf.BitmapRegionProto+k, protocols[k])
		}
		for k := 0; k < 256; k++ {
			set(bpf.BitmapRegionFlags+k, flags[k])
		}
		set(bpf.BitmapRegionAux+bpf.AuxSrc4Default, t.CIDRDefaults["src4"])
		set(bpf.BitmapRegionAux+bpf.AuxDst4Default, t.CIDRDefaults["dst4"])
		set(bpf.BitmapRegionAux+bpf.AuxSrc6Default, t.CIDRDefaults["src6"])
		set(bpf.BitmapRegionAux+bpf.AuxDst6Default, t.CIDRDefaults["dst6"])
		set(bpf.BitmapRegionAux+bpf.AuxIfaceDefault, t.InterfaceDefault)
		set(bpf.BitmapRegionAux+bpf.AuxNoPorts, t.NoPorts)
		set(bpf.BitmapRegionAux+bpf.AuxNotTCP, t.NotTCP)
		set(bpf.BitmapRegionAux+bpf.AuxAll, t.All)
		set(bpf.BitmapRegionAux+bpf.AuxNoSNI, t.NoServerName)
		for class, pc := range t.SourcePorts {
			set(bpf.BitmapRegionSport+class, pc.Rules)
		}
		for class, pc := range t.DestinationPorts {
			set(bpf.BitmapRegionDport+class, pc.Rules)
		}
		for class, rules := range classes {
			set(bpf.BitmapRegionCIDR+class, rules)
		}
		for class, c := range t.ServerNames {
			set(bpf.BitmapRegionSNI+class, c.Rules)
		}
	}, func(first, last int, b bpf.Bitmap) BitmapRun {
		return BitmapRun{First: first, Last: last, Bitmap: Kernel[bpf.Bitmap]{b}}
	})

	m.SourcePorts, m.DestinationPorts = portRuns(t.SourcePorts), portRuns(t.DestinationPorts)
	m.CIDRs = make([]CIDREntry, 0, len(t.CIDRs))
	for i, c := range t.CIDRs {
		prefix := netip.MustParsePrefix(c.Prefix)
		if prefix.Addr().Is4() && prefix.Bits() <= bpf.CIDRIndexBits {
			continue // in the index entries of its /16s
		}
		key := bpf.CIDRKey{Field: cidrFields[c.Field], Prefixlen: uint8(prefix.Bits())}
		copy(key.Addr[:], prefix.Addr().AsSlice())
		m.CIDRs = append(m.CIDRs, CIDREntry{Key: Kernel[bpf.CIDRKey]{key}, Class: uint32(classOf[i])})
	}
	m.SourceIndex4 = cidrIndex(t.CIDRs, classOf, "src4")
	m.DestinationIndex4 = cidrIndex(t.CIDRs, classOf, "dst4")
	for class, c := range t.ServerNames {
		m.ServerNames = append(m.ServerNames, ServerNameEntry{Key: Kernel[bpf.SNIKey]{ServerNameKey(c.Pattern)}, Class: uint32(class)})
	}
	m.Interfaces = make([]InterfaceBitmap, 0, len(t.Interfaces))
	for _, e := range t.Interfaces {
		m.Interfaces = append(m.Interfaces, InterfaceBitmap{Interface: e.Interface, Bitmap: Kernel[bpf.Bitmap]{BitmapOf(e.Rules)}})
	}

	m.Contents = make([]Kernel[bpf.Content], 0, len(plan.Contents))
	for _, c := range plan.Contents {
		m.Contents = append(m.Contents, Kernel[bpf.Content]{kernelContent(c)})
	}
	m.Rules = make([]Kernel[bpf.Rule], 0, len(plan.Rules))
	for _, r := range plan.Rules {
		m.Rules = append(m.Rules, Kernel[bpf.Rule]{kernelRule(r, plan.Contents)})
	}

	cfg := bpf.GenConfig{Nrules: uint32(len(plan.Rules))}
	if len(plan.Rules) <= 64 {
		for k := range cfg.ProtoW0 {
			cfg.ProtoW0[k] = BitmapOf(protocols[k]).W[0]
		}
		cfg.NoSniW0 = BitmapOf(t.NoServerName).W[0]
	}
	for _, f := range plan.Fields {
		cfg.Fields |= fieldBits[f]
	}
	lens := t.PrefixLengths
	cfg.N_src6 = uint8(copyLens(cfg.Src6Lens[:], lens["src6"]))
	cfg.N_dst6 = uint8(copyLens(cfg.Dst6Lens[:], lens["dst6"]))
	m.Config.Value = cfg
	for i, proto := range [bpf.Gates]int{bpf.GateTCP: 6, bpf.GateUDP: 17} {
		m.Gates.Value[i] = gateOf(m.Rules, protocols[proto])
	}
}

// cidrIndex is the cidr_index of one IPv4 field (src4, dst4) in runs of
// equal entries, without the zero ones: for each /16, 1 + the class of the
// longest prefix of at most 16 bits that contains it, and bit 32-len for
// each length len of a longer prefix in it. classOf[i] is the class of
// prefixes[i].
func cidrIndex(prefixes []CIDRClass, classOf []int, field string) []CIDRIndexRun {
	type short struct {
		prefix netip.Prefix
		class  int
	}
	var shorts []short
	var index []bpf.CIDRIndex // allocated at the first prefix
	for i, c := range prefixes {
		if c.Field != field {
			continue
		}
		if index == nil {
			index = make([]bpf.CIDRIndex, bpf.CIDRIndexEntries)
		}
		prefix := netip.MustParsePrefix(c.Prefix)
		if prefix.Bits() <= bpf.CIDRIndexBits {
			shorts = append(shorts, short{prefix, classOf[i]})
			continue
		}
		index[slash16(prefix.Addr())].LongLens |= 1 << (32 - prefix.Bits())
	}
	// Shortest first, so that a longer prefix overwrites the /16s of
	// the shorter ones that contain it.
	slices.SortStableFunc(shorts, func(a, b short) int { return a.prefix.Bits() - b.prefix.Bits() })
	for _, s := range shorts {
		first := slash16(s.prefix.Addr())
		for i := range 1 << (bpf.CIDRIndexBits - s.prefix.Bits()) {
			index[first+i].ShortClass = uint16(s.class + 1)
		}
	}
	return runsOf(func(put func(int, bpf.CIDRIndex)) {
		for i, e := range index {
			if e != (bpf.CIDRIndex{}) {
				put(i, e)
			}
		}
	}, func(first, last int, e bpf.CIDRIndex) CIDRIndexRun {
		return CIDRIndexRun{First: first, Last: last, Entry: Kernel[bpf.CIDRIndex]{e}}
	})
}

// runsOf collapses the entries that entries puts, in ascending index
// order, into runs of consecutive indices with equal values, each made by
// run from its first and last index and its value. An entry that does not
// follow the previous one's index starts a new run even when its value is
// the same. The result is never nil, so that no runs encode as [] in the
// plan.
func runsOf[V comparable, R any](entries func(put func(index int, v V)), run func(first, last int, v V) R) []R {
	out := []R{}
	var value V
	first, last, open := 0, 0, false
	entries(func(i int, v V) {
		if open && i == last+1 && v == value {
			last = i
			return
		}
		if open {
			out = append(out, run(first, last, value))
		}
		first, last, value, open = i, i, v, true
	})
	if open {
		out = append(out, run(first, last, value))
	}
	return out
}

// slash16 is an IPv4 address's cidr_index slot: its first 16 bits.
func slash16(a netip.Addr) int {
	b := a.As4()
	return int(b[0])<<8 | int(b[1])
}

// keyedSets gives every key 0..255 its rule set: its entry's, or the
// default.
func keyedSets(t KeyedTable) [256]RuleSet {
	var out [256]RuleSet
	for k := range out {
		out[k] = t.Default
	}
	for _, e := range t.Entries {
		out[e.Key] = e.Rules
	}
	return out
}

// portRuns gives each port class its ports, the class being its index.
func portRuns(classes []PortClass) []PortRun {
	out := make([]PortRun, 0, len(classes))
	for class, pc := range classes {
		out = append(out, PortRun{First: pc.First, Last: pc.Last, Class: uint16(class)})
	}
	return out
}

func copyLens(dst []uint8, lens []int) int {
	for i, l := range lens {
		dst[i] = uint8(l)
	}
	return len(lens)
}

// kernelContent is a content as the XDP program scans with it: the
// pattern and mask, their last eight bytes as the word loaded from the
// packet, and the two prefilter bytes.
func kernelContent(c Content) bpf.Content {
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
	return v
}

// kernelRule is a rule as the XDP program reads it, without its id.
func kernelRule(r Rule, contents []Content) bpf.Rule {
	v := bpf.Rule{Action: actions[r.Verdict()], Ncontents: uint8(len(r.Contents))}
	if r.Event != "" {
		v.Flags |= bpf.RuleEmit
	}
	if r.EmitPayload {
		v.Flags |= bpf.RuleEmitPayload
	}
	if r.EmitHello {
		v.Flags |= bpf.RuleEmitHello
	}
	if r.DedupNs > 0 {
		v.DedupNs, v.DedupFields = uint64(r.DedupNs), dedupFields(r.Fields)
	}
	v.RateLimit = uint32(r.RateLimit)
	for i, c := range r.Contents {
		v.Contents[i] = uint16(c)
	}
	setQuick(&v, r, contents)
	if v.Flags&bpf.RuleQuick == 0 && len(r.ServerNames) > 0 {
		setHelloQuick(&v)
	}
	return v
}

// helloWord is the quick word of a tls_sni rule without an anchored
// content: the payload's first eight bytes as every ClientHello's first
// segment starts, a handshake record of version 3.x (bytes 0 and 1) whose
// message is a ClientHello (byte 5). It lets the gate pass other packets
// at once when every rule is a tls_sni rule.
var helloWord = struct{ pattern, mask []byte }{
	pattern: []byte{0x16, 0x03, 0, 0, 0, 0x01, 0, 0},
	mask:    []byte{0xff, 0xff, 0, 0, 0, 0xff, 0, 0},
}

func setHelloQuick(v *bpf.Rule) {
	v.Flags |= bpf.RuleQuick
	v.QuickEnd = uint16(len(helloWord.pattern))
	v.QuickPattern, v.QuickMask = tailWord(helloWord.pattern), tailWord(helloWord.mask)
}

// ServerNameKey is the sni_class key of a tls_sni name or "*." pattern
// (bpf/tls.h): the name reversed, then for a name a zero byte; for a
// pattern, the reversed name and the dot before it, which every name under
// it continues. The generation is the engine's.
func ServerNameKey(pattern string) bpf.SNIKey {
	var k bpf.SNIKey
	name, wildcard := strings.CutPrefix(pattern, "*")
	n := len(name)
	for i := 0; i < n; i++ {
		k.Name[i] = name[n-1-i]
	}
	bytes := n
	if !wildcard {
		bytes++ // the zero byte after the name
	}
	k.Prefixlen = uint32(8 * (1 + bytes))
	return k
}

// setQuick gives a rule its quick word: the tail word of its first
// anchored, non-negated content, which every packet the rule matches
// passes; when that content is the rule's only one and at most eight bytes
// long, the quick word is the whole condition.
func setQuick(v *bpf.Rule, r Rule, contents []Content) {
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
func gateOf(rules []Kernel[bpf.Rule], admitted RuleSet) bpf.Gate {
	if len(admitted) == 0 {
		return bpf.Gate{}
	}
	first := rules[admitted[0]].Value
	if first.Flags&bpf.RuleQuick == 0 {
		return bpf.Gate{}
	}
	mask := first.QuickMask
	for _, i := range admitted[1:] {
		r := rules[i].Value
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

// dedupFields is the GRAIN_DEDUP_* mask of an event's fields.
func dedupFields(fields []string) uint8 {
	var bits uint8
	for _, f := range fields {
		bits |= dedupFieldBits[f]
	}
	return bits
}
