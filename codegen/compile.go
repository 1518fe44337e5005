package codegen

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/policies"
)

// Options change how policies compile.
type Options struct {
	// Interfaces, when set, replace the interfaces of every packet policy
	// (the `grain run --interface` flag).
	Interfaces []string
	// Monitor puts every policy in monitor mode (`grain run --monitor`).
	Monitor bool
}

// XDPProgram is the name of the generic XDP program in every Plan.
const XDPProgram = "grain_xdp"

var protocolNumbers = map[string]int{"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58}

var tcpFlagBits = map[string]uint8{
	"fin": 0x01, "syn": 0x02, "rst": 0x04, "psh": 0x08,
	"ack": 0x10, "urg": 0x20, "ece": 0x40, "cwr": 0x80,
}

// rule is a policy reduced to the sets the bitmaps are built from.
type rule struct {
	policy     policies.Policy
	protocols  []int // empty: any
	src, dst   []netip.Prefix
	sport      []policies.PortRange
	dport      []policies.PortRange
	flagsSet   uint8
	flagsClear uint8
	hasFlags   bool
	interfaces []string // effective: attach set, narrowed by match.interface
	sni        []string // tls_sni names and "*." patterns, lowercased
}

// Compile turns policies into a Plan. Errors name the policy and its
// position and come as a policies.ErrorList.
func Compile(ps []policies.Policy, opts Options) (*Plan, error) {
	sorted := slices.Clone(ps)
	if opts.Monitor {
		for i := range sorted {
			sorted[i].Mode = policies.ModeMonitor
		}
	}
	slices.SortFunc(sorted, func(a, b policies.Policy) int {
		return cmp.Or(cmp.Compare(a.Priority, b.Priority), strings.Compare(a.Name, b.Name))
	})
	var errs policies.ErrorList
	fail := func(p policies.Policy, pos policies.Position, format string, args ...any) {
		errs = append(errs, policies.Error{Pos: pos, Policy: p.Name, Msg: fmt.Sprintf(format, args...)})
	}

	plan := &Plan{Contents: []Content{}, Tables: Tables{CIDRDefaults: map[string]RuleSet{}, PrefixLengths: map[string][]int{}}}
	for _, name := range opts.Interfaces {
		if err := CheckInterfacePattern(name); err != nil {
			errs = append(errs, policies.Error{Msg: fmt.Sprintf("--interface: %v", err)})
		}
	}
	// Interface names and patterns stay as written; the engine resolves
	// them against the links that exist.
	attachOf := func(p policies.Policy) []string {
		if len(opts.Interfaces) > 0 {
			return sortedSet(opts.Interfaces)
		}
		return sortedSet(p.XDP.Interfaces)
	}
	attach := map[string]bool{}
	for _, p := range sorted {
		if p.XDP == nil {
			continue
		}
		for _, name := range attachOf(p) {
			attach[name] = true
		}
	}
	names := make([]string, 0, len(attach))
	for name := range attach {
		names = append(names, name)
	}
	slices.Sort(names)

	var rules []rule
	for _, p := range sorted {
		if p.XDP == nil {
			continue
		}
		r := rule{policy: p, src: nil, dst: nil}
		bad := false
		for _, f := range []struct {
			field string
			list  []string
		}{{"xdp.interfaces", p.XDP.Interfaces}, {"match.interface", p.Match.Interfaces}} {
			for i, name := range f.list {
				if err := CheckInterfacePattern(name); err != nil {
					fail(p, p.Pos, "%s[%d]: %v", f.field, i, err)
					bad = true
				}
			}
		}
		if bad {
			continue
		}
		ifaces := attachOf(p)
		if len(ifaces) == 0 {
			fail(p, p.Pos, "no interface to attach to: set xdp: interfaces: [\"eth0\"] or run with --interface")
			continue
		}
		if len(p.Match.Interfaces) > 0 {
			var err error
			if r.interfaces, err = narrowInterfaces(ifaces, sortedSet(p.Match.Interfaces), slices.Equal(ifaces, names)); err != nil {
				fail(p, p.Pos, "%v", err)
				continue
			}
		} else {
			r.interfaces = ifaces
		}
		r.protocols = impliedProtocols(p.Match)
		for _, c := range p.Match.SourceCIDRs {
			r.src = append(r.src, netip.MustParsePrefix(c))
		}
		for _, c := range p.Match.DestinationCIDRs {
			r.dst = append(r.dst, netip.MustParsePrefix(c))
		}
		r.sport, r.dport = p.Match.SourcePorts, p.Match.DestinationPorts
		for _, f := range p.Match.TCPFlags {
			r.hasFlags = true
			if name, ok := strings.CutPrefix(f, "!"); ok {
				r.flagsClear |= tcpFlagBits[name]
			} else {
				r.flagsSet |= tcpFlagBits[f]
			}
		}
		if len(p.Match.Payload) > bpf.MaxContentsPerRule {
			fail(p, p.Match.Payload[bpf.MaxContentsPerRule].Pos, "at most %d payload contents per policy (the XDP program's limit); split the policy", bpf.MaxContentsPerRule)
			continue
		}
		index := len(rules)
		pr := Rule{Index: index, Policy: p.Name, Position: p.Pos.String(), Priority: p.Priority, Action: p.Then, Monitor: p.Monitored()}
		if p.Emit != nil {
			pr.Event, pr.Fields = p.Emit.Event, p.Emit.Fields
			pr.EmitPayload = p.Emit.CarriesPayload()
			pr.EmitHello = p.Emit.CarriesHello()
			pr.DedupNs, pr.RateLimit = p.Emit.Dedup.Nanoseconds(), p.Emit.RateLimit
		}
		ok := true
		for _, name := range p.Match.ServerNames {
			if err := checkServerNameLimit(name); err != nil {
				fail(p, p.Match.ServerNamesPos, "match.tls_sni: %v", err)
				ok = false
			}
		}
		r.sni = sortedSet(p.Match.ServerNames)
		pr.ServerNames = r.sni
		for _, c := range p.Match.Payload {
			content, err := compileContent(c, len(plan.Contents))
			if err != nil {
				fail(p, c.Pos, "%v", err)
				ok = false
				continue
			}
			pr.Contents = append(pr.Contents, content.Index)
			plan.Contents = append(plan.Contents, content)
		}
		if !ok {
			continue
		}
		rules = append(rules, r)
		plan.Rules = append(plan.Rules, pr)
	}
	if len(rules) > bpf.MaxRules {
		p := rules[bpf.MaxRules].policy
		fail(p, p.Pos, "too many packet policies: %d, the XDP program holds at most %d", len(rules), bpf.MaxRules)
	}
	if len(plan.Contents) > bpf.MaxContents {
		// Point at the content that goes over the limit.
		for _, r := range plan.Rules {
			if i := slices.Index(r.Contents, bpf.MaxContents); i >= 0 {
				p := rules[r.Index].policy
				fail(p, p.Match.Payload[i].Pos, "too many payload contents in all packet policies: %d, at most %d; this one goes over: remove some", len(plan.Contents), bpf.MaxContents)
			}
		}
	}
	plan.Hooks = compileHooks(sorted, &errs)
	if err := errs.Err(); err != nil {
		return nil, err
	}
	if plan.Hooks != nil {
		buildHookMaps(plan.Hooks)
	}

	if len(rules) > 0 {
		plan.Programs = []Program{{Name: XDPProgram, Type: "xdp"}}
	}
	for _, name := range names {
		plan.Attachments = append(plan.Attachments, Attachment{Program: XDPProgram, Interface: name})
	}
	if err := buildTables(plan, rules, names); err != nil {
		return nil, err
	}
	buildMaps(plan)
	return plan, nil
}

// sortedSet returns the distinct strings of list, sorted.
func sortedSet(list []string) []string {
	out := slices.Clone(list)
	slices.Sort(out)
	return slices.Compact(out)
}

// narrowInterfaces returns the interface names and patterns of a rule
// attached to attach (names or patterns, sorted) whose match.interface is
// match: each link the rule applies to matches one of the returned strings,
// and each attached link that matches one of them is one the rule applies
// to. wholeSet tells that attach is every interface of the plan, so that a
// pattern of match alone selects, among the attached links, exactly those
// of the rule.
func narrowInterfaces(attach, match []string, wholeSet bool) ([]string, error) {
	var out []string
	for _, m := range match {
		for _, a := range attach {
			switch {
			case m == a:
				out = append(out, a)
			case !IsInterfacePattern(m):
				if InterfaceMatches(a, m) {
					out = append(out, m)
				}
			case !IsInterfacePattern(a):
				if InterfaceMatches(m, a) {
					out = append(out, a)
				}
			case wholeSet:
				out = append(out, m)
			default:
				// Two different patterns: the links both select cannot be
				// written as one pattern, and m alone would also select
				// links other policies attach to.
				return nil, fmt.Errorf("match.interface pattern %q narrows xdp interface pattern %q, which grain cannot resolve into one pattern: in match.interface name the interfaces, or repeat the pattern of xdp: interfaces", m, a)
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("match.interface %v names none of the attached interfaces %v: the rule could never match", match, attach)
	}
	return sortedSet(out), nil
}

// impliedProtocols returns the protocol numbers a rule is limited to:
// those named, or the ones its ports, flags or payload imply.
func impliedProtocols(m policies.PacketMatch) []int {
	var out []int
	switch {
	case len(m.Protocols) > 0:
		for _, p := range m.Protocols {
			out = append(out, protocolNumbers[p])
		}
	case len(m.TCPFlags) > 0 || len(m.ServerNames) > 0:
		out = []int{6}
	case len(m.SourcePorts) > 0 || len(m.DestinationPorts) > 0 || len(m.Payload) > 0:
		out = []int{6, 17}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func buildTables(plan *Plan, rules []rule, attached []string) error {
	t := &plan.Tables
	all := indices(len(rules), func(int) bool { return true })
	t.All = all
	fields := map[string]bool{}

	// Protocol.
	t.Protocol.Default = indices(len(rules), func(i int) bool { return len(rules[i].protocols) == 0 })
	var protoKeys []int
	for _, r := range rules {
		protoKeys = append(protoKeys, r.protocols...)
	}
	slices.Sort(protoKeys)
	for _, key := range slices.Compact(protoKeys) {
		fields["protocol"] = true
		t.Protocol.Entries = append(t.Protocol.Entries, KeyedSet{Key: key, Rules: indices(len(rules), func(i int) bool {
			return len(rules[i].protocols) == 0 || slices.Contains(rules[i].protocols, key)
		})})
	}

	// TCP flags: every flags byte, when any rule constrains them.
	t.NotTCP = indices(len(rules), func(i int) bool { return !rules[i].hasFlags })
	t.TCPFlags.Default = t.NotTCP
	if slices.ContainsFunc(rules, func(r rule) bool { return r.hasFlags }) {
		fields["tcp_flags"] = true
		for f := 0; f < 256; f++ {
			t.TCPFlags.Entries = append(t.TCPFlags.Entries, KeyedSet{Key: f, Rules: indices(len(rules), func(i int) bool {
				r := rules[i]
				return uint8(f)&r.flagsSet == r.flagsSet && uint8(f)&r.flagsClear == 0
			})})
		}
	}

	// Ports.
	t.NoPorts = indices(len(rules), func(i int) bool { return len(rules[i].sport) == 0 && len(rules[i].dport) == 0 })
	t.SourcePorts = portClasses(rules, func(r rule) []policies.PortRange { return r.sport })
	t.DestinationPorts = portClasses(rules, func(r rule) []policies.PortRange { return r.dport })
	if len(t.SourcePorts) > 1 || slices.ContainsFunc(rules, func(r rule) bool { return len(r.sport) > 0 }) {
		fields["sport"] = true
	}
	if len(t.DestinationPorts) > 1 || slices.ContainsFunc(rules, func(r rule) bool { return len(r.dport) > 0 }) {
		fields["dport"] = true
	}
	if len(t.SourcePorts) > bpf.MaxPortClasses || len(t.DestinationPorts) > bpf.MaxPortClasses {
		return policies.ErrorList{{Pos: rules[0].policy.Pos, Policy: rules[0].policy.Name,
			Msg: fmt.Sprintf("port ranges split the port space into more than %d classes", bpf.MaxPortClasses)}}
	}

	// Addresses.
	for _, f := range []struct {
		name   string
		src    bool
		v6     bool
		prefix func(rule) []netip.Prefix
	}{
		{"src4", true, false, func(r rule) []netip.Prefix { return r.src }},
		{"dst4", false, false, func(r rule) []netip.Prefix { return r.dst }},
		{"src6", true, true, func(r rule) []netip.Prefix { return r.src }},
		{"dst6", false, true, func(r rule) []netip.Prefix { return r.dst }},
	} {
		var prefixes []netip.Prefix
		for _, r := range rules {
			for _, p := range f.prefix(r) {
				if p.Addr().Is6() == f.v6 {
					prefixes = append(prefixes, p)
				}
			}
		}
		if slices.ContainsFunc(rules, func(r rule) bool { return len(f.prefix(r)) > 0 }) {
			if f.src {
				fields["saddr"] = true
			} else {
				fields["daddr"] = true
			}
		}
		wildcard := func(i int) bool { return len(f.prefix(rules[i])) == 0 }
		t.CIDRDefaults[f.name] = indices(len(rules), wildcard)
		slices.SortFunc(prefixes, comparePrefix)
		prefixes = slices.Compact(prefixes)
		// The rules of each prefix, to find an entry's rules from its
		// ancestors' (one map lookup per prefix length in use) rather than
		// by testing every rule against every entry.
		byPrefix := map[netip.Prefix][]int{}
		for i, r := range rules {
			for _, p := range f.prefix(r) {
				if p.Addr().Is6() == f.v6 && !slices.Contains(byPrefix[p], i) {
					byPrefix[p] = append(byPrefix[p], i)
				}
			}
		}
		var lens []int
		for _, entry := range prefixes {
			lens = append(lens, entry.Bits())
		}
		slices.Sort(lens)
		lens = slices.Compact(lens)
		for _, entry := range prefixes {
			set := slices.Clone(t.CIDRDefaults[f.name])
			for _, bits := range lens {
				if bits > entry.Bits() {
					break
				}
				ancestor, _ := entry.Addr().Prefix(bits)
				set = append(set, byPrefix[ancestor]...)
			}
			slices.Sort(set)
			t.CIDRs = append(t.CIDRs, CIDRClass{Field: f.name, Prefix: entry.String(), Rules: slices.Compact(set)})
		}
		sort.Sort(sort.Reverse(sort.IntSlice(lens)))
		t.PrefixLengths[f.name] = lens
	}
	if len(t.CIDRs) > bpf.MaxCIDREntries {
		// Point at the policy whose prefixes go over the limit, in rule
		// order (each address field and family has its own entries).
		seen := map[string]bool{}
		for _, r := range rules {
			for _, f := range []struct {
				name     string
				prefixes []netip.Prefix
			}{{"saddr", r.src}, {"daddr", r.dst}} {
				for _, p := range f.prefixes {
					seen[f.name+" "+p.String()] = true
					if len(seen) > bpf.MaxCIDREntries {
						return policies.ErrorList{{Pos: r.policy.Pos, Policy: r.policy.Name,
							Msg: fmt.Sprintf("match.%s: too many distinct address prefixes in all packet policies: %d, at most %d; this policy goes over: merge prefixes into shorter ones or remove some", f.name, len(t.CIDRs), bpf.MaxCIDREntries)}}
					}
				}
			}
		}
		return policies.ErrorList{{Pos: rules[0].policy.Pos, Policy: rules[0].policy.Name,
			Msg: fmt.Sprintf("too many distinct address prefixes in all packet policies: %d, at most %d", len(t.CIDRs), bpf.MaxCIDREntries)}}
	}
	if _, classes := cidrClasses(t.CIDRs); len(classes) > bpf.MaxCIDRClasses {
		return policies.ErrorList{{Pos: rules[0].policy.Pos, Policy: rules[0].policy.Name,
			Msg: fmt.Sprintf("address prefixes select too many distinct sets of rules in all packet policies: %d, at most %d; give prefixes that share rules one policy", len(classes), bpf.MaxCIDRClasses)}}
	}

	// Interfaces: only when rules differ in the interfaces they apply to.
	// Names and patterns are compared as strings: rules whose patterns
	// select the same links but are written differently use the field,
	// which costs a lookup but is never wrong. The engine ORs the rules of
	// every entry whose pattern matches a link's name.
	t.InterfaceDefault = RuleSet{}
	if slices.ContainsFunc(rules, func(r rule) bool { return !slices.Equal(r.interfaces, attached) }) {
		fields["interface"] = true
	}
	if fields["interface"] {
		keys := slices.Clone(attached)
		for _, r := range rules {
			keys = append(keys, r.interfaces...)
		}
		for _, name := range sortedSet(keys) {
			t.Interfaces = append(t.Interfaces, InterfaceEntry{Interface: name, Rules: indices(len(rules), func(i int) bool {
				return slices.Contains(rules[i].interfaces, name)
			})})
		}
	}

	if err := buildServerNames(t, rules); err != nil {
		return err
	}
	if len(t.ServerNames) > 0 {
		fields["tls_sni"] = true
	}

	for _, name := range []string{"protocol", "saddr", "daddr", "sport", "dport", "tcp_flags", "interface", "tls_sni"} {
		if fields[name] {
			plan.Fields = append(plan.Fields, name)
		}
	}
	if plan.Fields == nil {
		plan.Fields = []string{}
	}
	return nil
}

// portClasses splits 0..65535 into runs at every range boundary; all ports
// of a run belong to the same rules.
func portClasses(rules []rule, ranges func(rule) []policies.PortRange) []PortClass {
	cuts := []int{0, 65536}
	for _, r := range rules {
		for _, pr := range ranges(r) {
			cuts = append(cuts, int(pr.First), int(pr.Last)+1)
		}
	}
	slices.Sort(cuts)
	cuts = slices.Compact(cuts)
	// The rules of each run: a rule is in every run its ranges cover (runs
	// start at cuts, so a range covers whole runs), in rule order.
	sets := make([]RuleSet, len(cuts)-1)
	for j, r := range rules {
		rs := ranges(r)
		if len(rs) == 0 {
			for i := range sets {
				sets[i] = append(sets[i], j)
			}
			continue
		}
		for _, pr := range rs {
			first, _ := slices.BinarySearch(cuts, int(pr.First))
			for i := first; i < len(sets) && cuts[i] <= int(pr.Last); i++ {
				if n := len(sets[i]); n == 0 || sets[i][n-1] != j {
					sets[i] = append(sets[i], j)
				}
			}
		}
	}
	var classes []PortClass
	for i := 0; i+1 < len(cuts); i++ {
		first, last := cuts[i], cuts[i+1]-1
		set := sets[i]
		if set == nil {
			set = RuleSet{}
		}
		// Adjacent runs with the same rules merge into one class.
		if n := len(classes); n > 0 && slices.Equal(classes[n-1].Rules, set) {
			classes[n-1].Last = last
			continue
		}
		classes = append(classes, PortClass{First: first, Last: last, Rules: set})
	}
	return classes
}

func comparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

// indices lists 0 <= i < n for which keep is true; never nil, so an empty
// set marshals as [].
func indices(n int, keep func(int) bool) RuleSet {
	out := RuleSet{}
	for i := 0; i < n; i++ {
		if keep(i) {
			out = append(out, i)
		}
	}
	return out
}
