package policies

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"cuelang.org/go/cue"
)

// probeOnlyFields are the policy fields only kernel hooks take.
var probeOnlyFields = []string{"attach", "args", "count", "signal"}

// Field kinds decide how a match value is read.
const (
	kindInt     = "integer"
	kindString  = "string"
	kindAddress = "address"
)

// sockFields are the fields a sock or sockaddr argument gives.
var sockFields = map[string]string{
	"family": kindInt, "saddr": kindAddress, "daddr": kindAddress, "sport": kindInt, "dport": kindInt,
}

// syscallArgTypes are the argument types a system call can have: its
// pointers are user memory.
var syscallArgTypes = []string{"int", "uint", "user_string", "sockaddr", "fd"}

// userspaceFields are added to events in userspace: they can be emitted but
// neither filtered nor counted by in the kernel.
var userspaceFields = []string{"exe", "container", "host"}

// probeDecoder holds what decoding one probe policy has learnt so far.
type probeDecoder struct {
	*decoder
	hook *KernelHook
	// fields maps every field the policy can refer to, to its kind.
	fields map[string]string
}

func (d *decoder) decodeHook(v cue.Value, hook string) {
	hv := v.LookupPath(cue.MakePath(cue.Str(hook)))
	h := &KernelHook{Kind: hook, Pos: d.pos(hv)}
	d.policy.Hook = h
	pd := probeDecoder{decoder: d, hook: h, fields: map[string]string{
		"pid": kindInt, "tgid": kindInt, "ppid": kindInt, "uid": kindInt, "gid": kindInt,
		"comm": kindString, "cgroup": kindInt, "exe": kindString, "container": kindString, "host": kindString,
	}}

	switch hook {
	case "syscall":
		h.Syscalls = pd.syscalls(hv)
		pd.fields["syscall"] = kindInt
	default:
		h.Target, _ = hv.String()
	}
	if a := v.LookupPath(cue.ParsePath("attach")); a.Exists() {
		if hook != "kprobe" && hook != "kretprobe" {
			d.errorf(d.pos(a), "attach", "attach chooses how a kprobe or kretprobe hook is attached; a %s hook has no choice: remove it", hook)
		}
		h.Attach, _ = a.String()
	} else if hook == "kprobe" || hook == "kretprobe" {
		h.Attach = "auto"
	}
	if then := v.LookupPath(cue.ParsePath("then")); then.Exists() {
		d.errorf(d.pos(then), "then", "then is the verdict of xdp policies; a kernel hook acts with emit, count or signal: remove it")
	}

	if a := v.LookupPath(cue.ParsePath("args")); a.Exists() {
		pd.args(a)
	}
	if m := v.LookupPath(cue.ParsePath("match")); m.Exists() {
		for i, sel := range oneOrMany(m) {
			pd.selector(sel, elementPath(m, "match", i))
		}
	}
	if e := v.LookupPath(cue.ParsePath("emit")); e.Exists() {
		d.decodeEmit(e, sortedKeys(pd.fields))
	}
	if c := v.LookupPath(cue.ParsePath("count")); c.Exists() {
		pd.count(c)
	}
	if s := v.LookupPath(cue.ParsePath("signal")); s.Exists() {
		h.Signal, _ = s.String()
	}
	if d.policy.Emit == nil && h.Count == nil && h.Signal == "" {
		d.errorf(h.Pos, "", `a kernel hook needs an action: add emit: {event: "name"}, count: {metric: "name"} or signal: "SIGKILL"`)
	}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// syscalls reads the syscall names of a syscall hook; "*" stands alone.
func (pd *probeDecoder) syscalls(v cue.Value) []string {
	names := stringList(v)
	elems := oneOrMany(v)
	var out []string
	for i, n := range names {
		path := elementPath(v, "syscall", i)
		switch {
		case n == "*" && len(names) > 1:
			pd.errorf(pd.pos(elems[i]), path, `"*" hooks every system call; it cannot be listed with others`)
		case slices.Contains(out, n):
			pd.errorf(pd.pos(elems[i]), path, "%s is listed twice", n)
		default:
			out = append(out, n)
		}
	}
	return out
}

// args reads the argument declarations and records the fields they give.
func (pd *probeDecoder) args(v cue.Value) {
	kind := pd.hook.Kind
	for i, e := range oneOrMany(v) {
		path := fmt.Sprintf("args[%d]", i)
		a := Arg{Pos: pd.pos(e)}
		a.Type, _ = e.LookupPath(cue.ParsePath("type")).String()
		index := e.LookupPath(cue.ParsePath("index"))
		field := e.LookupPath(cue.ParsePath("field"))
		ret := e.LookupPath(cue.ParsePath("ret"))
		set := 0
		for _, f := range []cue.Value{index, field, ret} {
			if f.Exists() {
				set++
			}
		}
		if set != 1 {
			pd.errorf(a.Pos, path, "an argument has exactly one of index (function or syscall argument), field (tracepoint field) or ret (return value)")
			continue
		}
		switch {
		case index.Exists():
			if kind == "tracepoint" {
				pd.errorf(pd.pos(index), path+".index", "a tracepoint's values are named fields: write field: \"name\" (see /sys/kernel/tracing/events/%s/format)", pd.hook.Target)
				continue
			}
			n, _ := index.Int64()
			a.Source, a.Index, a.Name = "arg", int(n), "arg"+strconv.Itoa(int(n))
		case field.Exists():
			if kind != "tracepoint" {
				pd.errorf(pd.pos(field), path+".field", "field names a tracepoint field; a %s hook's arguments are numbered: write index: 0", kind)
				continue
			}
			a.Source, a.Index = "field", -1
			a.Field, _ = field.String()
			a.Name = a.Field
		case ret.Exists():
			if kind != "kretprobe" {
				pd.errorf(pd.pos(ret), path+".ret", "a return value is read at a function's return: use kretprobe instead of %s", kind)
				continue
			}
			a.Source, a.Index, a.Name = "ret", -1, "ret"
		}
		if n := e.LookupPath(cue.ParsePath("name")); n.Exists() {
			a.Name, _ = n.String()
		}
		if kind == "syscall" && !slices.Contains(syscallArgTypes, a.Type) {
			pd.errorf(pd.pos(e.LookupPath(cue.ParsePath("type"))), path+".type", "a system call's arguments are integers, user memory or file descriptors: use one of %s", strings.Join(syscallArgTypes, ", "))
			continue
		}
		if _, taken := pd.fields[a.Name]; taken {
			pd.errorf(a.Pos, path, "the name %s is taken (by a process field or another argument): give this argument another name: name: \"...\"", a.Name)
			continue
		}
		switch a.Type {
		case "int", "uint":
			pd.fields[a.Name] = kindInt
		case "sock", "sockaddr":
			if slices.ContainsFunc(pd.hook.Args, func(b Arg) bool { return b.Type == "sock" || b.Type == "sockaddr" }) {
				pd.errorf(a.Pos, path, "a policy reads at most one sock or sockaddr argument, whose fields are family, saddr, daddr, sport and dport")
				continue
			}
			for f, k := range sockFields {
				if a.Type == "sockaddr" && (f == "saddr" || f == "sport") {
					continue // a sockaddr names one end only
				}
				pd.fields[f] = k
			}
			pd.fields[a.Name] = kindString // its text form, "10.0.0.1:80"
		default: // strings, and file, path and fd, which give a path
			pd.fields[a.Name] = kindString
		}
		pd.hook.Args = append(pd.hook.Args, a)
	}
}

// selector reads one match struct into a Selector.
func (pd *probeDecoder) selector(m cue.Value, path string) {
	sel := Selector{Pos: pd.pos(m)}
	for _, name := range []string{"protocol", "tcp_flags", "interface", "payload", "tls_sni"} {
		if v := m.LookupPath(cue.MakePath(cue.Str(name))); v.Exists() {
			pd.errorf(pd.pos(v), path+"."+name, "%s is a packet condition, for xdp policies only", name)
		}
	}
	// saddr, daddr, sport and dport of a sock or sockaddr argument can be
	// written at the top of match, as for packets.
	for _, name := range []string{"saddr", "daddr", "sport", "dport"} {
		if v := m.LookupPath(cue.MakePath(cue.Str(name))); v.Exists() {
			if f, ok := pd.filter(name, v, path+"."+name); ok {
				sel.Filters = append(sel.Filters, f)
			}
		}
	}
	if p := m.LookupPath(cue.ParsePath("process")); p.Exists() {
		for _, name := range []string{"pid", "tgid", "uid", "gid", "comm"} {
			if v := p.LookupPath(cue.MakePath(cue.Str(name))); v.Exists() {
				if f, ok := pd.filter(name, v, path+".process."+name); ok {
					sel.Filters = append(sel.Filters, f)
				}
			}
		}
		if v := p.LookupPath(cue.ParsePath("cgroup")); v.Exists() {
			paths := stringList(v)
			for i, e := range oneOrMany(v) {
				if !strings.HasPrefix(paths[i], "/") {
					pd.errorf(pd.pos(e), elementPath(v, path+".process.cgroup", i), "a cgroup is a path from the cgroup v2 root, starting with /: %q", "/"+paths[i])
				}
			}
			sel.Filters = append(sel.Filters, Filter{Field: "cgroup", Op: "in", Strings: paths, Pos: pd.pos(v)})
		}
	}
	if a := m.LookupPath(cue.ParsePath("args")); a.Exists() {
		it, _ := a.Fields()
		for it.Next() {
			name := it.Selector().Unquoted()
			fpath := path + ".args." + name
			// Process fields are filtered under match.process, not args.
			if _, ok := pd.fields[name]; !ok || slices.Contains(ProcessFields, name) {
				var args []string
				for _, arg := range pd.hook.Args {
					args = append(args, arg.Name)
				}
				msg := "no argument is named " + name
				if s := closest(name, args); s != "" {
					msg += "; did you mean " + s + "?"
				} else if len(args) == 0 {
					msg += ": declare it in args"
				} else {
					msg += "; arguments: " + strings.Join(args, ", ")
				}
				pd.errorf(pd.pos(it.Value()), fpath, "%s", msg)
				continue
			}
			if f, ok := pd.filter(name, it.Value(), fpath); ok {
				sel.Filters = append(sel.Filters, f)
			}
		}
	}
	pd.hook.Selectors = append(pd.hook.Selectors, sel)
}

// filter reads one #ValueMatch on field into a Filter, by the field's kind.
func (pd *probeDecoder) filter(field string, v cue.Value, path string) (Filter, bool) {
	f := Filter{Field: field, Pos: pd.pos(v)}
	kind, ok := pd.fields[field]
	if !ok {
		pd.errorf(f.Pos, path, "%s needs a sock or sockaddr argument: add args: [{index: 0, type: \"sock\"}]", field)
		return f, false
	}
	fail := func(e cue.Value, p, format string, args ...any) (Filter, bool) {
		pd.errorf(pd.pos(e), p, format, args...)
		return f, false
	}
	if v.Kind() == cue.StructKind {
		not := v.LookupPath(cue.ParsePath("not"))
		prefix := v.LookupPath(cue.ParsePath("prefix"))
		switch {
		case not.Exists() && prefix.Exists():
			return fail(v, path, "a match has not or prefix, not both: write two policies, or a list of matches")
		case prefix.Exists():
			if kind != kindString {
				return fail(prefix, path+".prefix", "prefix is for strings, and %s is an %s", field, kind)
			}
			f.Op, f.Strings = "prefix", stringList(prefix)
			return f, pd.checkComm(field, prefix, path+".prefix", f.Strings)
		case not.Exists():
			if kind == kindAddress {
				return fail(not, path+".not", "not is not supported for addresses; match the other ranges instead")
			}
			g, ok := pd.values(field, kind, not, path+".not")
			if !ok {
				return f, false
			}
			if g.Op == "range" {
				return fail(not, path+".not", "not takes values, not ranges")
			}
			g.Op = map[string]string{"eq": "ne", "in": "notin"}[g.Op]
			g.Pos = f.Pos
			return g, true
		default:
			return fail(v, path, "a match struct needs not: or prefix:")
		}
	}
	g, ok := pd.values(field, kind, v, path)
	g.Pos = f.Pos
	return g, ok
}

// values reads a value or a list of values of field's kind: eq or in for
// plain values, range for integer ranges, cidr for addresses.
func (pd *probeDecoder) values(field, kind string, v cue.Value, path string) (Filter, bool) {
	f := Filter{Field: field}
	elems := oneOrMany(v)
	ok := true
	for i, e := range elems {
		p := elementPath(v, path, i)
		switch kind {
		case kindInt:
			if n, err := e.Int64(); err == nil {
				f.Ranges = append(f.Ranges, [2]int64{n, n})
				f.Ints = append(f.Ints, n)
				continue
			}
			s, _ := e.String()
			r, err := parseIntRange(s)
			if err != nil {
				pd.errorf(pd.pos(e), p, "%s is an integer: want a number or a range \"first-last\", %v", field, err)
				ok = false
				continue
			}
			f.Ranges = append(f.Ranges, r)
		case kindString:
			s, err := e.String()
			if err != nil {
				pd.errorf(pd.pos(e), p, "%s is a string: write \"%v\"", field, e)
				ok = false
				continue
			}
			f.Strings = append(f.Strings, s)
		case kindAddress:
			s, err := e.String()
			if err != nil {
				pd.errorf(pd.pos(e), p, `%s is an address: want a CIDR string such as "10.0.0.0/8"`, field)
				ok = false
				continue
			}
			pfx, err := parseCIDR(s)
			if err != nil {
				pd.errorf(pd.pos(e), p, "%v", err)
				ok = false
				continue
			}
			f.CIDRs = append(f.CIDRs, pfx.String())
		}
	}
	switch {
	case kind == kindAddress:
		f.Op = "cidr"
	case kind == kindInt && len(f.Ints) == len(f.Ranges):
		f.Ranges = nil
		f.Op = "in"
		if v.Kind() != cue.ListKind {
			f.Op = "eq"
		}
	case kind == kindInt:
		f.Ints = nil
		f.Op = "range"
	default:
		f.Op = "in"
		if v.Kind() != cue.ListKind {
			f.Op = "eq"
		}
		ok = pd.checkComm(field, v, path, f.Strings) && ok
	}
	return f, ok
}

// taskCommLen is the kernel's TASK_COMM_LEN: a comm holds at most 15
// bytes and a NUL, so a longer name never matches.
const taskCommLen = 16

func (pd *probeDecoder) checkComm(field string, v cue.Value, path string, names []string) bool {
	if field != "comm" {
		return true
	}
	for i, n := range names {
		if len(n) >= taskCommLen {
			pd.errorf(pd.pos(oneOrMany(v)[i]), elementPath(v, path, i), "a comm is at most %d bytes (the kernel truncates process names), so %q never matches: write %q", taskCommLen-1, n, n[:taskCommLen-1])
			return false
		}
	}
	return true
}

func parseIntRange(s string) ([2]int64, error) {
	first, last, found := strings.Cut(s, "-")
	a, errA := strconv.ParseInt(first, 10, 64)
	b, errB := strconv.ParseInt(last, 10, 64)
	if !found || errA != nil || errB != nil {
		return [2]int64{}, fmt.Errorf("got %q", s)
	}
	if a > b {
		return [2]int64{}, fmt.Errorf("the range %q is reversed: write \"%d-%d\"", s, b, a)
	}
	return [2]int64{a, b}, nil
}

// count reads the in-kernel aggregation.
func (pd *probeDecoder) count(v cue.Value) {
	c := &Count{}
	c.Metric, _ = v.LookupPath(cue.ParsePath("metric")).String()
	if by := v.LookupPath(cue.ParsePath("by")); by.Exists() {
		elems := oneOrMany(by)
		for i, name := range stringList(by) {
			p := fmt.Sprintf("count.by[%d]", i)
			_, known := pd.fields[name]
			switch {
			case !known:
				pd.errorf(pd.pos(elems[i]), p, "%s", unknownName("label", name, sortedKeys(pd.fields)))
			case slices.Contains(userspaceFields, name) || name == "ppid":
				pd.errorf(pd.pos(elems[i]), p, "%s is looked up in userspace and cannot key a count in the kernel: count by tgid or comm", name)
			case slices.Contains(c.By, name):
				pd.errorf(pd.pos(elems[i]), p, "%s is listed twice", name)
			default:
				c.By = append(c.By, name)
			}
		}
	}
	if s := v.LookupPath(cue.ParsePath("sum")); s.Exists() {
		c.Sum, _ = s.String()
		i := slices.IndexFunc(pd.hook.Args, func(a Arg) bool { return a.Name == c.Sum })
		if i < 0 || (pd.hook.Args[i].Type != "int" && pd.hook.Args[i].Type != "uint") {
			pd.errorf(pd.pos(s), "count.sum", "sum names an int or uint argument to add up; %s is not one", c.Sum)
		}
	}
	pd.hook.Count = c
}
