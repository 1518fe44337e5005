package reference

import (
	"encoding/binary"
	"math/bits"
	"net/netip"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/pipeline"
)

// Verdict is what the packet program returns for a frame.
type Verdict uint8

// The verdicts. A packet no rule decides is passed. WouldDrop is the
// verdict of a drop rule in monitor mode: it decides as Drop does, and the
// program passes the packet.
const (
	Pass Verdict = iota
	Drop
	WouldDrop
)

// Dropped reports whether the program drops the packet.
func (v Verdict) Dropped() bool { return v == Drop }

func (v Verdict) String() string {
	switch v {
	case Pass:
		return "pass"
	case Drop:
		return "drop"
	case WouldDrop:
		return codegen.WouldDrop
	}
	return "unknown"
}

// Stat is the kernel's count of a packet no rule judged (bpf.Stat*), or
// Judged.
type Stat int8

// The stats; the values beside Judged are the indices of the kernel's stats
// map.
const (
	Judged    Stat = -1
	NotIP     Stat = bpf.StatNotIP
	Malformed Stat = bpf.StatMalformed
	NoRules   Stat = bpf.StatNoConfig
)

func (s Stat) String() string {
	switch s {
	case Judged:
		return "judged"
	case NotIP:
		return "not_ip"
	case Malformed:
		return "malformed"
	case NoRules:
		return "no_rules"
	}
	return "unknown"
}

// Result is the packet program's answer for one frame. Its slices belong
// to the Packet that made it and hold until that Packet's next Judge.
type Result struct {
	Verdict Verdict
	// Policy is the policy whose drop or pass rule decided; "" when none
	// did (the packet is passed). Rule is its index in Plan.Rules, or -1.
	Policy string
	Rule   int
	// Counted are the count policies the packet matched before a rule
	// decided, in priority order; CountedRules their rule indices.
	Counted      []string
	CountedRules []int
	// Events are the events the matched policies send (the count policies'
	// and the deciding one's), in order.
	Events []Event
	// Unjudged says why no rule looked at the packet ("" when rules did):
	// not IP, malformed or truncated (what and where), no rules. Stat is
	// the kernel's count of it (Judged when rules did). A packet the gate
	// passes (no rule could match its payload word) is judged.
	Unjudged string
	Stat     Stat
	// Gated is set when the gate passed the packet before the full parse
	// (architecture.md): its verdict is pass, and a malformed packet is
	// not counted as such.
	Gated bool
}

// Event is one event as the packet program writes it (bpf.Event), named
// as the pipeline exports it.
type Event struct {
	Policy string
	Name   string
	Rule   int
	// The packet's fields: what bpf.Event carries.
	Interface string
	Len       uint32
	Family    uint8 // 4 or 6
	Protocol  uint8
	Verdict   uint8 // bpf.Action*: the rule's action
	TCPFlags  uint8
	Sport     uint16
	Dport     uint16
	Saddr     [16]byte
	Daddr     [16]byte
	// Payload is the start of the L4 payload for a rule whose event
	// carries it (codegen.Rule.EmitPayload), a slice of the frame; nil
	// otherwise. HasPayload tells an empty payload from none.
	Payload    []byte
	HasPayload bool
	// fields are the event fields the policy asked for.
	fields []string
}

// Field is one field of an exported event: a string, an unsigned number or
// an address, as the pipeline has it.
type Field struct {
	Key   string
	Value any // string, uint64 or netip.Addr
}

var protocolNames = map[uint8]string{1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}

var verdictNames = map[uint8]string{bpf.ActionCount: "count", bpf.ActionDrop: "drop", bpf.ActionPass: "pass", bpf.ActionWouldDrop: codegen.WouldDrop}

// Addr is one of the event's addresses as the pipeline shows it.
func (e *Event) Addr(b [16]byte) netip.Addr {
	if e.Family == 4 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

// Fields are the event's fields as the pipeline exports them (engine's
// decoder): those the policy asked for, then interface and verdict. It
// allocates; call it for the events you print or compare. A payload field
// is its bytes in hex, dns_qname the name of the DNS question it starts
// with, the tls_* fields what the ClientHello it starts with says; ifindex
// is not known here (Interface is the name).
func (e *Event) Fields() []Field {
	out := make([]Field, 0, len(e.fields)+2)
	for _, f := range e.fields {
		switch f {
		case "saddr":
			out = append(out, Field{f, e.Addr(e.Saddr)})
		case "daddr":
			out = append(out, Field{f, e.Addr(e.Daddr)})
		case "sport":
			out = append(out, Field{f, uint64(e.Sport)})
		case "dport":
			out = append(out, Field{f, uint64(e.Dport)})
		case "protocol":
			name, ok := protocolNames[e.Protocol]
			if !ok {
				name = itoa(int(e.Protocol))
			}
			out = append(out, Field{f, name})
		case "tcp_flags":
			out = append(out, Field{f, tcpFlagsString(e.TCPFlags)})
		case "len":
			out = append(out, Field{f, uint64(e.Len)})
		default: // payload, dns_qname, tls_*: as the engine decodes them
			if v, ok := pipeline.PayloadField(f, e.Protocol, e.Payload); ok {
				out = append(out, Field{f, v})
			}
		}
	}
	out = append(out, Field{"interface", e.Interface}, Field{"verdict", verdictNames[e.Verdict]})
	return out
}

// Packet judges frames by one Plan's packet rules.
type Packet struct {
	plan *codegen.Plan
	// The generation's maps, as the kernel holds them.
	bitmaps   []*bpf.Bitmap // by index within the generation; nil reads as zero
	portClass [2][65536]uint16
	cidrClass map[cidrKey]uint32
	cidrIndex [2][bpf.CIDRIndexEntries]bpf.CIDRIndex // src4, dst4
	ifaces    map[string]*bpf.Bitmap                 // per interface name: nil when no entry matches
	rules     []bpf.Rule
	contents  []bpf.Content
	config    bpf.GenConfig
	gates     [bpf.Gates]bpf.Gate
	zero      bpf.Bitmap

	res Result
	m   pktMeta
}

type cidrKey struct {
	field, prefixlen uint8
	addr             [16]byte
}

// pktMeta is struct pkt_meta of classify.h: what later stages need about
// one packet, as offsets into the frame.
type pktMeta struct {
	payloadOff, payloadEnd uint32
	sport, dport           uint16
	family, protocol       uint8
	tcpFlags               uint8
	hasPorts, hasFlags     bool
	saddr, daddr           [16]byte
}

// NewPacket makes the evaluator of plan's packet rules. ifaces are the
// interface names Judge will be asked about, resolved now (others are
// resolved at their first Judge).
func NewPacket(plan *codegen.Plan, ifaces ...string) (*Packet, error) {
	if err := checkPlan(plan); err != nil {
		return nil, err
	}
	pm := &plan.Maps
	if len(pm.Rules) != len(plan.Rules) {
		return nil, planError("has %d rules in its kernel form and %d in its readable form", len(pm.Rules), len(plan.Rules))
	}
	if len(pm.Rules) > bpf.MaxRules || len(pm.Contents) > bpf.MaxContents {
		return nil, planError("has %d rules and %d contents; the program holds %d and %d", len(pm.Rules), len(pm.Contents), bpf.MaxRules, bpf.MaxContents)
	}
	p := &Packet{
		plan:      plan,
		bitmaps:   make([]*bpf.Bitmap, bpf.BitmapsPerGen),
		cidrClass: make(map[cidrKey]uint32, len(pm.CIDRs)),
		ifaces:    map[string]*bpf.Bitmap{},
		config:    pm.Config.Value,
		gates:     pm.Gates.Value,
	}
	for i := range pm.Bitmaps {
		run := &pm.Bitmaps[i]
		if run.First < 0 || run.Last >= bpf.BitmapsPerGen || run.First > run.Last {
			return nil, planError("has bitmaps %d-%d outside 0-%d", run.First, run.Last, bpf.BitmapsPerGen-1)
		}
		b := run.Bitmap.Value
		for index := run.First; index <= run.Last; index++ {
			p.bitmaps[index] = &b
		}
	}
	for dir, runs := range [][]codegen.PortRun{pm.SourcePorts, pm.DestinationPorts} {
		for _, run := range runs {
			if run.First < 0 || run.Last > 65535 || run.First > run.Last {
				return nil, planError("has a port run %d-%d outside 0-65535", run.First, run.Last)
			}
			for port := run.First; port <= run.Last; port++ {
				p.portClass[dir][port] = run.Class
			}
		}
	}
	for dir, runs := range [][]codegen.CIDRIndexRun{pm.SourceIndex4, pm.DestinationIndex4} {
		for _, run := range runs {
			if run.First < 0 || run.Last >= bpf.CIDRIndexEntries || run.First > run.Last {
				return nil, planError("has an address index run %d-%d outside 0-%d", run.First, run.Last, bpf.CIDRIndexEntries-1)
			}
			for i := run.First; i <= run.Last; i++ {
				p.cidrIndex[dir][i] = run.Entry.Value
			}
		}
	}
	for _, c := range pm.CIDRs {
		k := c.Key.Value
		p.cidrClass[cidrKey{field: k.Field, prefixlen: k.Prefixlen, addr: k.Addr}] = c.Class
	}
	p.rules = make([]bpf.Rule, len(pm.Rules))
	for i, r := range pm.Rules {
		p.rules[i] = r.Value
	}
	p.contents = make([]bpf.Content, len(pm.Contents))
	for i, c := range pm.Contents {
		p.contents[i] = c.Value
	}
	for _, name := range ifaces {
		p.ifaceBitmap(name)
	}
	p.res.Counted = make([]string, 0, 8)
	p.res.CountedRules = make([]int, 0, 8)
	p.res.Events = make([]Event, 0, 4)
	return p, nil
}

// Plan is the plan the Packet judges by.
func (p *Packet) Plan() *codegen.Plan { return p.plan }

// ifaceBitmap is the iface_bitmaps entry of the link called name: the OR
// of every interface entry whose name or pattern matches it (engine's
// interfaceBitmaps), nil when none does.
func (p *Packet) ifaceBitmap(name string) *bpf.Bitmap {
	if b, ok := p.ifaces[name]; ok {
		return b
	}
	var out *bpf.Bitmap
	for _, e := range p.plan.Maps.Interfaces {
		if !codegen.InterfaceMatches(e.Interface, name) {
			continue
		}
		if out == nil {
			out = new(bpf.Bitmap)
		}
		for w := range out.W {
			out.W[w] |= e.Bitmap.Value.W[w]
		}
		out.Nonzero |= e.Bitmap.Value.Nonzero
	}
	p.ifaces[name] = out
	return out
}

// bitmapAt is bitmap_at: the bitmaps array's entry (an array: never
// missing; an entry the plan does not write is zero).
func (p *Packet) bitmapAt(index uint32) *bpf.Bitmap {
	if index >= bpf.BitmapsPerGen {
		return nil
	}
	if b := p.bitmaps[index]; b != nil {
		return b
	}
	return &p.zero
}

// Judge runs frame through the packet program as if it arrived on the
// interface called iface (classify).
func (p *Packet) Judge(frame []byte, iface string) *Result {
	r := &p.res
	r.Verdict, r.Policy, r.Rule = Pass, "", -1
	r.Counted, r.CountedRules, r.Events = r.Counted[:0], r.CountedRules[:0], r.Events[:0]
	r.Unjudged, r.Stat, r.Gated = "", Judged, false
	if p.judgeGate(frame) {
		r.Gated = true
		return r
	}
	p.classify(frame, iface)
	return r
}

// le64 is the little-endian word at off, as the program loads it.
func le64(frame []byte, off uint32) uint64 {
	return binary.LittleEndian.Uint64(frame[off : off+8])
}

// judgeGate is gate_fails: whether the generation's gate passes the packet
// before the full parse.
func (p *Packet) judgeGate(frame []byte) bool {
	gates := &p.gates
	if gates[bpf.GateTCP].End|gates[bpf.GateUDP].End == 0 {
		return false
	}
	const l3 = ethHeaderLen
	dataEnd := uint32(len(frame))
	if l3+ipv6HeaderLen > dataEnd {
		return false
	}
	var l4 uint32
	var proto uint8
	switch binary.BigEndian.Uint16(frame[12:]) {
	case ethPIP:
		l4 = l3 + uint32(frame[l3]&0x0f)<<2
		proto = frame[l3+9]
	case ethPIPv6:
		l4 = l3 + ipv6HeaderLen
		proto = frame[l3+6]
	default:
		return false
	}
	var g *bpf.Gate
	var l4Len uint32
	switch proto {
	case protoTCP:
		if l4+20 > dataEnd {
			return false
		}
		l4Len = uint32(frame[l4+12]>>2) & 0x3c
		g = &gates[bpf.GateTCP]
	case protoUDP:
		l4Len = 8
		g = &gates[bpf.GateUDP]
	default:
		return false
	}
	end := uint32(g.End)
	if end == 0 {
		return false
	}
	end &= maxFrameOff
	wordEnd := l4 + l4Len + end
	if wordEnd > dataEnd {
		return true
	}
	return le64(frame, wordEnd-8)&g.Mask != g.Pattern
}

// Frame layout constants of xdp.c.
const (
	ethHeaderLen  = 14
	ipv6HeaderLen = 40
	maxFrameOff   = 0x3fff
	ethPIP        = 0x0800
	ethPIPv6      = 0x86DD
	ethP8021Q     = 0x8100
	ethP8021AD    = 0x88A8
	protoICMP     = 1
	protoTCP      = 6
	protoUDP      = 17
	protoICMPv6   = 58
)

// parse is parse: L2-L4 into p.m. It returns "" when the packet is judged,
// else why not, with stat NotIP or Malformed.
func (p *Packet) parse(frame []byte) (string, Stat) {
	m := &p.m
	*m = pktMeta{}
	dataEnd := uint32(len(frame))
	if ethHeaderLen > dataEnd {
		return "truncated Ethernet header", Malformed
	}
	proto := binary.BigEndian.Uint16(frame[12:])
	cur := uint32(ethHeaderLen)
	for i := 0; i < 2; i++ {
		if proto != ethP8021Q && proto != ethP8021AD {
			break
		}
		if cur+4 > dataEnd {
			return "truncated VLAN tag", Malformed
		}
		proto = binary.BigEndian.Uint16(frame[cur+2:])
		cur += 4
	}

	var l4proto uint8
	var l3End uint32
	hasL4 := true
	switch proto {
	case ethPIP:
		if cur+20 > dataEnd {
			return "truncated IPv4 header", Malformed
		}
		verIHL := frame[cur]
		ihl := uint32(verIHL&0x0f) * 4
		if verIHL>>4 != 4 || ihl < 20 {
			return "bad IPv4 version or header length", Malformed
		}
		tot := uint32(binary.BigEndian.Uint16(frame[cur+2:]))
		if tot < ihl {
			return "IPv4 total length shorter than its header", Malformed
		}
		if cur+ihl > dataEnd {
			return "truncated IPv4 options", Malformed
		}
		l3End = cur + tot
		m.family = 4
		copy(m.saddr[:4], frame[cur+12:cur+16])
		copy(m.daddr[:4], frame[cur+16:cur+20])
		l4proto = frame[cur+9]
		if binary.BigEndian.Uint16(frame[cur+6:])&0x1fff != 0 {
			hasL4 = false // a non-first fragment
		}
		cur += ihl
	case ethPIPv6:
		if cur+ipv6HeaderLen > dataEnd {
			return "truncated IPv6 header", Malformed
		}
		if frame[cur]>>4 != 6 {
			return "bad IPv6 version", Malformed
		}
		plen := uint32(binary.BigEndian.Uint16(frame[cur+4:]))
		l3End = cur + ipv6HeaderLen + plen
		m.family = 6
		copy(m.saddr[:], frame[cur+8:cur+24])
		copy(m.daddr[:], frame[cur+24:cur+40])
		l4proto = frame[cur+6]
		cur += ipv6HeaderLen
		i := 0
	ext:
		for ; i < bpf.MaxIPv6ExtHeaders; i++ {
			switch l4proto {
			case 0, 43, 60: // hop-by-hop, routing, destination options
				if cur+2 > dataEnd {
					return "truncated IPv6 extension header", Malformed
				}
				l4proto = frame[cur]
				cur += (uint32(frame[cur+1]) + 1) * 8
			case 51: // authentication header
				if cur+2 > dataEnd {
					return "truncated IPv6 authentication header", Malformed
				}
				l4proto = frame[cur]
				cur += (uint32(frame[cur+1]) + 2) * 4
			case 44: // fragment
				if cur+8 > dataEnd {
					return "truncated IPv6 fragment header", Malformed
				}
				l4proto = frame[cur]
				if binary.BigEndian.Uint16(frame[cur+2:])&0xfff8 != 0 {
					hasL4 = false
				}
				cur += 8
			default:
				break ext
			}
		}
		if i == bpf.MaxIPv6ExtHeaders {
			return "more IPv6 extension headers than the program follows", Malformed
		}
		if cur > dataEnd {
			return "IPv6 extension headers past the frame's end", Malformed
		}
	default:
		return "not IP", NotIP
	}

	m.protocol = l4proto
	if l3End > dataEnd {
		l3End = dataEnd
	}
	m.payloadEnd = l3End
	if !hasL4 {
		m.payloadOff = m.payloadEnd
		return "", Judged
	}
	switch l4proto {
	case protoTCP:
		if cur+20 > dataEnd {
			return "truncated TCP header", Malformed
		}
		doff := uint32(frame[cur+12]>>4) * 4
		if doff < 20 || cur+doff > dataEnd {
			return "bad or truncated TCP data offset", Malformed
		}
		m.sport = binary.BigEndian.Uint16(frame[cur:])
		m.dport = binary.BigEndian.Uint16(frame[cur+2:])
		m.hasPorts = true
		m.tcpFlags = frame[cur+13]
		m.hasFlags = true
		cur += doff
	case protoUDP:
		if cur+8 > dataEnd {
			return "truncated UDP header", Malformed
		}
		m.sport = binary.BigEndian.Uint16(frame[cur:])
		m.dport = binary.BigEndian.Uint16(frame[cur+2:])
		m.hasPorts = true
		cur += 8
	case protoICMP, protoICMPv6:
		if cur+8 > dataEnd {
			return "truncated ICMP header", Malformed
		}
		cur += 8
	}
	m.payloadOff = cur
	if m.payloadOff > m.payloadEnd {
		m.payloadOff = m.payloadEnd
	}
	return "", Judged
}

// classify is classify_full: the parse, the bitmaps of the constrained
// fields, and the rule walk.
func (p *Packet) classify(frame []byte, iface string) {
	r := &p.res
	if why, stat := p.parse(frame); stat != Judged {
		r.Unjudged, r.Stat = why, stat
		return
	}
	cfg := &p.config
	nrules, fields := cfg.Nrules, cfg.Fields
	if nrules == 0 {
		r.Unjudged, r.Stat = "no rules", NoRules
		return
	}
	m := &p.m
	v6 := m.family == 6
	srcField, dstField := uint32(bpf.CIDRSrc4), uint32(bpf.CIDRDst4)
	if v6 {
		srcField, dstField = bpf.CIDRSrc6, bpf.CIDRDst6
	}
	flagsIndex := uint32(bpf.BitmapRegionAux + bpf.AuxNotTCP)
	if m.hasFlags {
		flagsIndex = bpf.BitmapRegionFlags + uint32(m.tcpFlags)
	}

	if nrules <= 64 {
		// One word of candidates; the protocol's from the config.
		var w0 uint64
		if fields&bpf.FieldProto != 0 {
			w0 = cfg.ProtoW0[m.protocol]
		} else if nrules == 64 {
			w0 = ^uint64(0)
		} else {
			w0 = 1<<nrules - 1
		}
		and := func(b *bpf.Bitmap) bool {
			if b == nil {
				return false
			}
			w0 &= b.W[0]
			return true
		}
		if fields&bpf.FieldSrc != 0 && !and(p.bitmapAt(p.cidrBitmapIndex(srcField))) {
			return
		}
		if fields&bpf.FieldDst != 0 && !and(p.bitmapAt(p.cidrBitmapIndex(dstField))) {
			return
		}
		if fields&bpf.FieldSport != 0 && !and(p.portLookup(bpf.PortDirSrc, m.sport)) {
			return
		}
		if fields&bpf.FieldDport != 0 && !and(p.portLookup(bpf.PortDirDst, m.dport)) {
			return
		}
		if fields&bpf.FieldFlags != 0 && !and(p.bitmapAt(flagsIndex)) {
			return
		}
		if fields&bpf.FieldIface != 0 && !and(p.ifaceLookup(iface)) {
			return
		}
		if fields&bpf.FieldSNI != 0 && w0 != 0 && !and(p.bitmapAt(p.tlsSNILookup(frame))) {
			return
		}
		p.rulesApply(frame, iface, 0, w0)
		return
	}

	all := p.bitmapAt(bpf.BitmapRegionAux + bpf.AuxAll)
	bm := [8]*bpf.Bitmap{all, all, all, all, all, all, all, all}
	if fields&bpf.FieldProto != 0 {
		bm[0] = p.bitmapAt(bpf.BitmapRegionProto + uint32(m.protocol))
	}
	if fields&bpf.FieldSrc != 0 {
		bm[1] = p.bitmapAt(p.cidrBitmapIndex(srcField))
	}
	if fields&bpf.FieldDst != 0 {
		bm[2] = p.bitmapAt(p.cidrBitmapIndex(dstField))
	}
	if fields&bpf.FieldSport != 0 {
		bm[3] = p.portLookup(bpf.PortDirSrc, m.sport)
	}
	if fields&bpf.FieldDport != 0 {
		bm[4] = p.portLookup(bpf.PortDirDst, m.dport)
	}
	if fields&bpf.FieldFlags != 0 {
		bm[5] = p.bitmapAt(flagsIndex)
	}
	if fields&bpf.FieldIface != 0 {
		bm[6] = p.ifaceLookup(iface)
	}
	if fields&bpf.FieldSNI != 0 {
		bm[7] = p.bitmapAt(p.tlsSNILookup(frame))
	}
	words := all.Nonzero
	for _, b := range bm {
		if b == nil {
			return
		}
		words &= b.Nonzero
	}
	// Only words that hold a candidate in every field.
	for words != 0 {
		i := trailingZeros(words)
		words &= words - 1
		if i >= bpf.BitmapWords {
			break
		}
		w := all.W[i]
		for _, b := range bm {
			w &= b.W[i]
		}
		if w != 0 && p.rulesApply(frame, iface, uint32(i)*64, w) {
			return
		}
	}
}

// ifaceLookup is the interface field's lookup: the link's iface_bitmaps
// entry, else the interface default.
func (p *Packet) ifaceLookup(iface string) *bpf.Bitmap {
	if b := p.ifaceBitmap(iface); b != nil {
		return b
	}
	return p.bitmapAt(bpf.BitmapRegionAux + bpf.AuxIfaceDefault)
}

// prefixMask is prefix_mask: the mask of 32-bit word word of an address
// under a prefix of plen bits, as bytes in network order.
func prefixMask(plen, word uint32) [4]byte {
	bits := uint32(0)
	if plen > word*32 {
		bits = plen - word*32
	}
	var out [4]byte
	switch {
	case bits >= 32:
		binary.BigEndian.PutUint32(out[:], ^uint32(0))
	case bits > 0:
		binary.BigEndian.PutUint32(out[:], ^uint32(0)<<(32-bits))
	}
	return out
}

// cidrBitmapIndex is cidr_bitmap_index: the bitmap of an address field,
// the class of the longest prefix that contains the address. IPv4: the
// /16's index entry, then each longer length it names, longest first,
// else the entry's short class. IPv6: each prefix length in use, longest
// first.
func (p *Packet) cidrBitmapIndex(field uint32) uint32 {
	fallback := uint32(bpf.BitmapRegionAux+bpf.AuxSrc4Default) + field&3
	addr := &p.m.saddr
	if field&1 != 0 {
		addr = &p.m.daddr
	}
	key := cidrKey{field: uint8(field)}
	if field == bpf.CIDRSrc4 || field == bpf.CIDRDst4 {
		ix := p.cidrIndex[field&1][binary.BigEndian.Uint16(addr[:2])]
		for lens := uint32(ix.LongLens); lens != 0; lens &= lens - 1 {
			k := uint32(bits.TrailingZeros32(lens)) // the prefix has 32 - k bits
			key.prefixlen = uint8(32 - k)
			binary.BigEndian.PutUint32(key.addr[:4], binary.BigEndian.Uint32(addr[:4])&(^uint32(0)<<k))
			if cls, ok := p.cidrClass[key]; ok && cls < bpf.MaxCIDRClasses {
				return bpf.BitmapRegionCIDR + cls
			}
		}
		if c := uint32(ix.ShortClass); c != 0 && c <= bpf.MaxCIDRClasses {
			return bpf.BitmapRegionCIDR + c - 1
		}
		return fallback
	}
	cfg := &p.config
	lens, n := cfg.Src6Lens[:], uint32(cfg.N_src6)
	if field&1 != 0 {
		lens, n = cfg.Dst6Lens[:], uint32(cfg.N_dst6)
	}
	for i := uint32(0); i < 129 && i < n && int(i) < len(lens); i++ {
		plen := uint32(lens[i])
		if plen > 128 {
			break
		}
		key.prefixlen = uint8(plen)
		for w := uint32(0); w < 4; w++ {
			mask := prefixMask(plen, w)
			for b := uint32(0); b < 4; b++ {
				key.addr[w*4+b] = addr[w*4+b] & mask[b]
			}
		}
		if cls, ok := p.cidrClass[key]; ok && cls < bpf.MaxCIDRClasses {
			return bpf.BitmapRegionCIDR + cls
		}
	}
	return fallback
}

// portLookup is port_lookup: a port's class bitmap, the no-ports bitmap
// for a packet without ports, nil (the packet is passed) for a class past
// the region.
func (p *Packet) portLookup(dir uint32, port uint16) *bpf.Bitmap {
	if !p.m.hasPorts {
		return p.bitmapAt(bpf.BitmapRegionAux + bpf.AuxNoPorts)
	}
	cls := uint32(p.portClass[dir][port])
	if cls >= bpf.MaxPortClasses {
		return nil
	}
	if dir == bpf.PortDirSrc {
		return p.bitmapAt(bpf.BitmapRegionSport + cls)
	}
	return p.bitmapAt(bpf.BitmapRegionDport + cls)
}

// rulesApply is rules_apply: the candidate rules of one bitmap word in
// priority order. It returns whether one decided.
func (p *Packet) rulesApply(frame []byte, iface string, base uint32, w uint64) bool {
	for w != 0 {
		bit := uint32(trailingZeros(w))
		w &= w - 1
		if p.ruleApply(frame, iface, base+bit) {
			return true
		}
	}
	return false
}

// ruleApply is rule_apply_inline: one candidate rule's quick word and
// contents, then its count, event and verdict. It returns whether the
// rule decided (a matched drop or pass rule).
func (p *Packet) ruleApply(frame []byte, iface string, index uint32) bool {
	if index >= bpf.MaxRules || int(index) >= len(p.rules) {
		return false // the rules array holds zeros there: no contents, action count, no event
	}
	rule := &p.rules[index]
	m := &p.m
	dataEnd := uint32(len(frame))
	n := uint32(rule.Ncontents)
	if rule.Flags&bpf.RuleQuick != 0 {
		end := m.payloadOff + uint32(rule.QuickEnd)
		off := end - 8
		if end > m.payloadEnd || off > maxFrameOff {
			return false
		}
		if off+8 > dataEnd {
			return false
		}
		if le64(frame, off)&rule.QuickMask != rule.QuickPattern {
			return false
		}
		if rule.Flags&bpf.RuleQuickOnly != 0 {
			n = 0
		}
	}
	for i := uint32(0); i < bpf.MaxContentsPerRule && i < n; i++ {
		slot := uint32(rule.Contents[i])
		if slot >= bpf.MaxContents {
			return false
		}
		c := p.contentAt(slot)
		if c.Flags&bpf.ContentAnchored != 0 {
			start := m.payloadOff + uint32(c.Offset)
			hit := start+uint32(c.Len) <= m.payloadEnd && patternAt(frame, start, c)
			if hit == (c.Flags&bpf.ContentNegate != 0) {
				return false
			}
			continue
		}
		if !contentMatch(frame, m.payloadOff, m.payloadEnd, c) {
			return false
		}
	}

	r := &p.res
	if rule.Flags&bpf.RuleEmit != 0 {
		p.eventFill(frame, iface, index, rule)
	}
	if rule.Action == bpf.ActionCount {
		if int(index) < len(p.plan.Rules) {
			r.Counted = append(r.Counted, p.plan.Rules[index].Policy)
		} else {
			r.Counted = append(r.Counted, "")
		}
		r.CountedRules = append(r.CountedRules, int(index))
		return false
	}
	r.Rule = int(index)
	r.Policy = p.plan.Rules[index].Policy
	switch rule.Action {
	case bpf.ActionDrop:
		r.Verdict = Drop
	case bpf.ActionWouldDrop:
		r.Verdict = WouldDrop
	default:
		r.Verdict = Pass
	}
	return true
}

// contentAt is the contents array's entry at slot (zero past the plan's).
func (p *Packet) contentAt(slot uint32) *bpf.Content {
	if int(slot) < len(p.contents) {
		return &p.contents[slot]
	}
	return &zeroContent
}

var zeroContent bpf.Content

// patternAt is pattern_at: whether the content's pattern is at frame
// offset off (the caller ensures off + len is within the payload).
func patternAt(frame []byte, off uint32, c *bpf.Content) bool {
	n := uint32(c.Len)
	tailOff := off + n - 8
	if off > maxFrameOff || n > bpf.MaxContentLen || off+n < 8 || tailOff > maxFrameOff {
		return false
	}
	dataEnd := uint32(len(frame))
	if tailOff+8 > dataEnd {
		return false
	}
	if le64(frame, tailOff)&c.TailMask != c.TailPattern {
		return false
	}
	words := n / 8
	for i := uint32(0); i < words; i++ {
		q := off + i*8
		if q+8 > dataEnd {
			return false
		}
		mask := binary.LittleEndian.Uint64(c.Mask[i*8:])
		pat := binary.LittleEndian.Uint64(c.Pattern[i*8:])
		if le64(frame, q)&mask != pat {
			return false
		}
	}
	return true
}

// contentMatch is content_match: whether the content holds for the payload
// [payloadOff, payloadEnd), negation applied. The program's scan (a
// prefilter on two pattern bytes, 64 and then 8 positions a step) visits
// every position from the content's offset to the last one where the
// pattern ends within its end and the payload; this is that search.
func contentMatch(frame []byte, payloadOff, payloadEnd uint32, c *bpf.Content) bool {
	negate := c.Flags&bpf.ContentNegate != 0
	n := uint32(c.Len)
	if n == 0 || n > bpf.MaxContentLen || payloadOff > maxFrameOff || payloadEnd > maxFrameOff {
		return negate
	}
	start := payloadOff + uint32(c.Offset)
	end := payloadOff + uint32(c.End)
	if end > payloadEnd {
		end = payloadEnd
	}
	if start+n > end {
		return negate
	}
	last := end - n
	if c.Flags&bpf.ContentAnchored != 0 {
		return patternAt(frame, start, c) != negate
	}
	i1, i2 := uint32(c.Pre1Index&7), uint32(c.Pre2Index&7)
	for pos := start; pos <= last && pos <= maxFrameOff; pos++ {
		if frame[pos+i1]&c.Pre1Mask != c.Pre1Byte || frame[pos+i2]&c.Pre2Mask != c.Pre2Byte {
			continue
		}
		if patternAt(frame, pos, c) {
			return !negate
		}
	}
	return negate
}

// eventFill is event_fill (and payload_copy for a rule whose event carries
// the payload): the event of rule index for this packet.
func (p *Packet) eventFill(frame []byte, iface string, index uint32, rule *bpf.Rule) {
	r := &p.res
	m := &p.m
	r.Events = append(r.Events, Event{})
	e := &r.Events[len(r.Events)-1]
	e.Rule = int(index)
	if int(index) < len(p.plan.Rules) {
		pr := &p.plan.Rules[index]
		e.Policy, e.Name, e.fields = pr.Policy, pr.Event, pr.Fields
	}
	e.Interface = iface
	e.Len = uint32(len(frame))
	e.Family, e.Protocol, e.Verdict, e.TCPFlags = m.family, m.protocol, rule.Action, m.tcpFlags
	e.Sport, e.Dport = m.sport, m.dport
	e.Saddr, e.Daddr = m.saddr, m.daddr
	if rule.Flags&bpf.RuleEmitPayload != 0 {
		max := uint32(bpf.EmitPayloadBytes)
		if rule.Flags&bpf.RuleEmitHello != 0 {
			max = bpf.EmitHelloBytes // the ClientHello's first segment
		}
		e.Payload, e.HasPayload = payloadCopy(frame, m, max), true
	}
}

// payloadCopy is payload_copy: the start of the L4 payload an event
// carries, at most max bytes and never past the IP length.
func payloadCopy(frame []byte, m *pktMeta, max uint32) []byte {
	off, end := m.payloadOff, m.payloadEnd
	if off > maxFrameOff || end > maxFrameOff || end <= off {
		return frame[:0]
	}
	n := min(end-off, max)
	tailOff := off + n - 8
	if off+n < 8 || tailOff > maxFrameOff || tailOff+8 > uint32(len(frame)) {
		return frame[:0]
	}
	return frame[off : off+n : off+n]
}
