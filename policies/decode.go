package policies

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"cuelang.org/go/cue"
	"cuelang.org/go/cue/ast"
)

// noHook is the error for a policy without a hook.
const noHook = `no hook: add xdp: interfaces: ["eth0"], kprobe: "function", kretprobe: "function", tracepoint: "category/name" or syscall: "name"`

// hookFields are the policy fields that choose a hook; a policy has one.
var hookFields = []string{"xdp", "kprobe", "kretprobe", "tracepoint", "syscall"}

// decoder turns one policy value that satisfies the schema into a Policy,
// making the checks the schema leaves to Go. Each check records an error
// and carries on, so that one load reports every problem.
type decoder struct {
	files  map[string]bool // the tree's files: positions elsewhere are the schema's
	raw    cue.Value       // the user's policy value, for positions
	policy *Policy
	errs   []Error
}

func (d *decoder) errorf(pos Position, path string, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if path != "" {
		msg = path + ": " + msg
	}
	d.errs = append(d.errs, Error{Pos: pos, Policy: d.policy.Name, Msg: msg})
}

// pos finds where the user wrote v. A unified value often reports the
// schema's position, so the user's own value at the same path is asked
// next; values that come from the schema alone take the policy's.
func (d *decoder) pos(v cue.Value) Position {
	if p := v.Pos(); p.IsValid() && d.files[p.Filename()] {
		return positionOf(p)
	}
	// v's path starts with the policy's label; raw is rooted below it.
	if sels := v.Path().Selectors(); len(sels) > 1 {
		raw := d.raw.LookupPath(cue.MakePath(sels[1:]...))
		p := raw.Pos()
		// A field's value reports its label; point at the value itself.
		if f, ok := raw.Source().(*ast.Field); ok && f.Value != nil {
			p = f.Value.Pos()
		}
		if p.IsValid() && d.files[p.Filename()] {
			return positionOf(p)
		}
	}
	return d.policy.Pos
}

// decodePolicy fills d.policy from v, a validated, concrete policy value.
func (d *decoder) decodePolicy(v cue.Value) {
	p := d.policy
	prio, _ := v.LookupPath(cue.ParsePath("priority")).Int64()
	p.Priority = int(prio)
	p.Then, _ = v.LookupPath(cue.ParsePath("then")).String()
	if mode, _ := v.LookupPath(cue.ParsePath("mode")).String(); mode == ModeMonitor {
		p.Mode = mode // the zero value is enforce
	}
	// Lists that select must not be empty, in either kind of policy.
	for _, name := range []string{"match", "syscall"} {
		if f := v.LookupPath(cue.MakePath(cue.Str(name))); f.Exists() {
			d.refuseEmptyLists(f, name)
		}
	}

	var hooks []string
	for _, h := range hookFields {
		if v.LookupPath(cue.MakePath(cue.Str(h))).Exists() {
			hooks = append(hooks, h)
		}
	}
	switch {
	case len(hooks) == 0:
		d.errorf(p.Pos, "", noHook)
		return
	case len(hooks) > 1:
		second := v.LookupPath(cue.MakePath(cue.Str(hooks[1])))
		d.errorf(d.pos(second), hooks[1], "a policy has one hook, this one has %s: split it into one policy per hook", strings.Join(hooks, " and "))
		return
	case hooks[0] != "xdp":
		d.decodeHook(v, hooks[0])
		return
	}

	p.XDP = &XDPHook{Interfaces: d.interfaces(v.LookupPath(cue.ParsePath("xdp.interfaces")), "xdp.interfaces")}
	for _, name := range probeOnlyFields {
		if f := v.LookupPath(cue.MakePath(cue.Str(name))); f.Exists() {
			d.errorf(d.pos(f), name, "%s is for kernel hooks (kprobe, kretprobe, tracepoint, syscall), not xdp: remove it", name)
		}
	}
	if then := v.LookupPath(cue.ParsePath("then")); !then.Exists() {
		d.errorf(p.Pos, "", `missing then: add then: "drop" | "pass" | "count"`)
	}
	if m := v.LookupPath(cue.ParsePath("match")); m.Exists() {
		if m.Kind() == cue.ListKind {
			d.errorf(d.pos(m), "match", "a list of matches is for kernel hooks; an xdp policy has one match struct (write one policy per alternative)")
		} else {
			d.decodeMatch(m)
		}
	}
	if e := v.LookupPath(cue.ParsePath("emit")); e.Exists() {
		d.decodeEmit(e, PacketEmitFields)
	}
}

// stringList reads a list of strings or a single string; the schema has
// already checked the kinds.
func stringList(v cue.Value) []string {
	var out []string
	for _, e := range oneOrMany(v) {
		s, _ := e.String()
		out = append(out, s)
	}
	return out
}

// oneOrMany returns the elements of a list, or v alone.
func oneOrMany(v cue.Value) []cue.Value {
	if v.Kind() != cue.ListKind {
		return []cue.Value{v}
	}
	var out []cue.Value
	it, _ := v.List()
	for it.Next() {
		out = append(out, it.Value())
	}
	return out
}

// elementPath names element i of the field at path, or the field itself
// when it holds one value rather than a list.
func elementPath(v cue.Value, path string, i int) string {
	if v.Kind() != cue.ListKind {
		return path
	}
	return fmt.Sprintf("%s[%d]", path, i)
}

func (d *decoder) decodeMatch(m cue.Value) {
	pm := &d.policy.Match
	field := func(name string) (cue.Value, bool) {
		v := m.LookupPath(cue.MakePath(cue.Str(name)))
		return v, v.Exists()
	}
	if v, ok := field("protocol"); ok {
		pm.Protocols = stringList(v)
	}
	if v, ok := field("saddr"); ok {
		pm.SourceCIDRs = d.cidrs(v, "match.saddr")
	}
	if v, ok := field("daddr"); ok {
		pm.DestinationCIDRs = d.cidrs(v, "match.daddr")
	}
	if v, ok := field("sport"); ok {
		pm.SourcePorts = d.ports(v, "match.sport")
	}
	if v, ok := field("dport"); ok {
		pm.DestinationPorts = d.ports(v, "match.dport")
	}
	if v, ok := field("tcp_flags"); ok {
		pm.TCPFlags = d.tcpFlags(v)
	}
	if v, ok := field("interface"); ok {
		pm.Interfaces = d.interfaces(v, "match.interface")
	}
	if v, ok := field("payload"); ok {
		for i, e := range oneOrMany(v) {
			if c, ok := d.content(e, elementPath(v, "match.payload", i)); ok {
				pm.Payload = append(pm.Payload, c)
			}
		}
	}
	if v, ok := field("tls_sni"); ok {
		pm.ServerNames = d.serverNames(v)
		pm.ServerNamesPos = d.pos(v)
	}
	for _, name := range []string{"process", "args"} {
		if v, ok := field(name); ok {
			d.errorf(d.pos(v), "match."+name, "match.%s is for kernel hooks (kprobe, kretprobe, tracepoint, syscall), not xdp: remove it", name)
		}
	}
	d.checkProtocols(m)
}

// checkProtocols rejects conditions that no packet of the given protocols
// can meet, since such a rule would silently never match.
func (d *decoder) checkProtocols(m cue.Value) {
	protos := d.policy.Match.Protocols
	if len(protos) == 0 {
		return
	}
	has := func(p string) bool { return slices.Contains(protos, p) }
	if !has("tcp") && !has("udp") {
		for _, name := range []string{"sport", "dport"} {
			if v := m.LookupPath(cue.MakePath(cue.Str(name))); v.Exists() {
				d.errorf(d.pos(v), "match."+name, "ports need protocol tcp or udp, but protocol is %s", strings.Join(protos, ", "))
			}
		}
	}
	if v := m.LookupPath(cue.ParsePath("tcp_flags")); v.Exists() && !has("tcp") {
		d.errorf(d.pos(v), "match.tcp_flags", "tcp_flags need protocol tcp, but protocol is %s", strings.Join(protos, ", "))
	}
	if v := m.LookupPath(cue.ParsePath("tls_sni")); v.Exists() && !has("tcp") {
		d.errorf(d.pos(v), "match.tls_sni", "tls_sni needs protocol tcp (TLS runs over TCP), but protocol is %s", strings.Join(protos, ", "))
	}
}

// cidrs parses addresses and prefixes into canonical prefixes: host bits
// cleared, a bare address a single host.
func (d *decoder) cidrs(v cue.Value, path string) []string {
	var out []string
	for i, e := range oneOrMany(v) {
		s, _ := e.String()
		p, err := parseCIDR(s)
		if err == nil {
			err = refuseMapped(s, p, "IPv4 packets carry IPv4 addresses")
		}
		if err != nil {
			d.errorf(d.pos(e), elementPath(v, path, i), "%v", err)
			continue
		}
		out = append(out, p.String())
	}
	return out
}

func parseCIDR(s string) (netip.Prefix, error) {
	const want = `want an address or CIDR such as "10.0.0.0/8", "fd00::/64" or "192.0.2.1"`
	if strings.Contains(s, "%") {
		return netip.Prefix{}, fmt.Errorf("%q has an IPv6 zone, which a packet does not carry: %s", s, want)
	}
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address: %s", s, want)
		}
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	addr, bits, _ := strings.Cut(s, "/")
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q: %q is not an IP address: %s", s, addr, want)
	}
	n, err := strconv.Atoi(bits)
	if err != nil || n < 0 || n > a.BitLen() {
		return netip.Prefix{}, fmt.Errorf("%q: the prefix length must be 0..%d", s, a.BitLen())
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR: %s", s, want)
	}
	return p.Masked(), nil
}

// refuseMapped refuses an IPv4-mapped IPv6 address or prefix
// (::ffff:10.0.0.1) where addresses are compared as IPv4 (why says why),
// and suggests the IPv4 form. Kernel-hook matches accept it: a dual-stack
// socket's address really has that form.
func refuseMapped(s string, p netip.Prefix, why string) error {
	if !p.Addr().Is4In6() || p.Bits() < 96 {
		return nil
	}
	v4 := netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	want := v4.String()
	if !strings.Contains(s, "/") {
		want = v4.Addr().String()
	}
	return fmt.Errorf("%q is an IPv4-mapped IPv6 address, which never matches (%s): write %q", s, why, want)
}

// ports reads port numbers and "first-last" ranges.
func (d *decoder) ports(v cue.Value, path string) []PortRange {
	var out []PortRange
	for i, e := range oneOrMany(v) {
		if n, err := e.Int64(); err == nil {
			// The schema bounds plain port numbers.
			out = append(out, PortRange{First: uint16(n), Last: uint16(n)})
			continue
		}
		s, _ := e.String()
		r, err := parsePortRange(s)
		if err != nil {
			d.errorf(d.pos(e), elementPath(v, path, i), "%v", err)
			continue
		}
		out = append(out, r)
	}
	return out
}

func parsePortRange(s string) (PortRange, error) {
	first, last, _ := strings.Cut(s, "-")
	a, errA := strconv.ParseUint(first, 10, 16)
	b, errB := strconv.ParseUint(last, 10, 16)
	if errA != nil || errB != nil {
		return PortRange{}, fmt.Errorf("invalid range %q: ports must be 0..65535", s)
	}
	if a > b {
		return PortRange{}, fmt.Errorf("invalid range %q: the first port is greater than the last; write %q", s, fmt.Sprintf("%d-%d", b, a))
	}
	return PortRange{First: uint16(a), Last: uint16(b)}, nil
}

// tcpFlags reads flag conditions, which are ANDed: a flag both required
// set and required clear can never match.
func (d *decoder) tcpFlags(v cue.Value) []string {
	flags := stringList(v)
	elems := oneOrMany(v)
	for i, f := range flags {
		if strings.HasPrefix(f, "!") && slices.Contains(flags, f[1:]) {
			d.errorf(d.pos(elems[i]), elementPath(v, "match.tcp_flags", i), "%s must be both set and clear: no packet matches; remove %q or %q", f[1:], f[1:], f)
		}
	}
	return flags
}

// content reads one payload condition: a bare pattern string means
// {contains: pattern}.
func (d *decoder) content(v cue.Value, path string) (Content, bool) {
	c := Content{Pos: d.pos(v)}
	if s, err := v.String(); err == nil {
		pat, err := decodePattern(s)
		if err != nil {
			d.errorf(c.Pos, path, "%v", err)
			return c, false
		}
		c.Pattern = pat
		return c, true
	}

	contains := v.LookupPath(cue.ParsePath("contains"))
	startswith := v.LookupPath(cue.ParsePath("startswith"))
	patternValue, patternField := contains, "contains"
	switch {
	case contains.Exists() && startswith.Exists():
		d.errorf(c.Pos, path, "a content has contains or startswith, not both")
		return c, false
	case contains.Exists():
	case startswith.Exists():
		patternValue, patternField = startswith, "startswith"
	default:
		d.errorf(c.Pos, path, `a content needs a pattern: add contains: "..." or startswith: "..."`)
		return c, false
	}
	s, _ := patternValue.String()
	pat, err := decodePattern(s)
	if err != nil {
		d.errorf(d.pos(patternValue), path+"."+patternField, "%v", err)
		return c, false
	}
	c.Pattern = pat

	if o := v.LookupPath(cue.ParsePath("offset")); o.Exists() {
		n, _ := o.Int64()
		c.Offset = int(n)
	}
	c.NoCase, _ = v.LookupPath(cue.ParsePath("nocase")).Bool()
	c.Negate, _ = v.LookupPath(cue.ParsePath("not")).Bool()

	depth := v.LookupPath(cue.ParsePath("depth"))
	switch {
	case startswith.Exists() && depth.Exists():
		d.errorf(d.pos(depth), path+".depth", "startswith is anchored, its depth is the pattern length (%d): remove depth, or use contains with depth", len(pat))
		return c, false
	case startswith.Exists():
		c.Depth = len(pat)
	case depth.Exists():
		n, _ := depth.Int64()
		if int(n) < len(pat) {
			d.errorf(d.pos(depth), path+".depth", "depth %d is shorter than the pattern (%d bytes), so it can never match: use depth >= %d", n, len(pat), len(pat))
			return c, false
		}
		c.Depth = int(n)
	}
	return c, true
}

// PacketEmitFields are the fields an xdp policy's events can carry.
var PacketEmitFields = []string{"saddr", "daddr", "sport", "dport", "protocol", "tcp_flags", "len", "ifindex", "payload", "dns_qname",
	"tls_sni", "tls_version", "tls_legacy_version", "tls_alpn", "tls_ja4"}

// decodeEmit reads emit; fields must be among allowed.
func (d *decoder) decodeEmit(v cue.Value, allowed []string) {
	e := &Emit{}
	e.Event, _ = v.LookupPath(cue.ParsePath("event")).String()
	if f := v.LookupPath(cue.ParsePath("fields")); f.Exists() {
		elems := oneOrMany(f)
		for i, name := range stringList(f) {
			path := fmt.Sprintf("emit.fields[%d]", i)
			switch {
			case slices.Contains(e.Fields, name):
				d.errorf(d.pos(elems[i]), path, "%s is listed twice", name)
				continue
			case !slices.Contains(allowed, name):
				d.errorf(d.pos(elems[i]), path, "%s", unknownName("field", name, allowed))
				continue
			}
			e.Fields = append(e.Fields, name)
		}
	}
	if r := v.LookupPath(cue.ParsePath("rate_limit")); r.Exists() {
		n, _ := r.Int64()
		e.RateLimit = int(n)
	}
	d.decodeDedup(v, e)
	d.policy.Emit = e
}

// DefaultDedup is how long an xdp policy's event is deduplicated when the
// policy does not say: a flood from one sender then costs an event a
// second, not one per packet, and the rule's counters still count every
// packet.
const DefaultDedup = time.Second

// maxDedup bounds emit.dedup: longer would hide a sender for longer than
// an operator watching the events would expect.
const maxDedup = time.Hour

// decodeDedup reads emit.dedup into e (xdp policies only).
func (d *decoder) decodeDedup(v cue.Value, e *Emit) {
	payload := e.CarriesPayload()
	r := v.LookupPath(cue.ParsePath("dedup"))
	if !r.Exists() {
		if d.policy.XDP != nil && !payload {
			e.Dedup = DefaultDedup
		}
		return
	}
	s, _ := r.String()
	dur, err := time.ParseDuration(s)
	switch {
	case d.policy.XDP == nil:
		d.errorf(d.pos(r), "emit.dedup", "dedup is for xdp policies; a kernel hook's events are limited with rate_limit: remove it")
	case err != nil || dur > maxDedup:
		d.errorf(d.pos(r), "emit.dedup", "dedup %q is longer than the longest window, \"60m\": use a shorter one", s)
	case payload && dur != 0:
		d.errorf(d.pos(r), "emit.dedup", "events with payload, dns_qname or tls_* fields are not deduplicated (the kernel does not compare payloads): remove dedup or set it to \"0s\"")
	default:
		e.Dedup = dur
	}
}

// unknownName says that name is not one of allowed and suggests the
// closest.
func unknownName(what, name string, allowed []string) string {
	if s := closest(name, allowed); s != "" {
		return fmt.Sprintf("unknown %s %q; did you mean %s?", what, name, s)
	}
	return fmt.Sprintf("unknown %s %q; want one of %s", what, name, strings.Join(allowed, ", "))
}
