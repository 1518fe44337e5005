package plandiff

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"unicode"

	"github.com/grain-ebpf/grain/policies"
)

// field is one field of a policy in the schema's words, with its value
// written as a reviewer reads it.
type field struct {
	path, value string
}

// fieldsOf lists a policy's fields: the ones given, in the schema's order
// and names; positions are left out (moving a policy is not a change).
func fieldsOf(p policies.Policy) []field {
	var out []field
	add := func(path, value string) {
		if value != "" {
			out = append(out, field{path, value})
		}
	}
	add("priority", strconv.Itoa(p.Priority))
	mode := p.Mode
	if mode == "" {
		mode = policies.ModeEnforce
	}
	add("mode", mode)
	if p.XDP != nil {
		add("xdp.interfaces", strs(p.XDP.Interfaces))
		m := p.Match
		add("match.protocol", strs(m.Protocols))
		add("match.saddr", strs(m.SourceCIDRs))
		add("match.daddr", strs(m.DestinationCIDRs))
		add("match.sport", ports(m.SourcePorts))
		add("match.dport", ports(m.DestinationPorts))
		add("match.tcp_flags", strs(m.TCPFlags))
		add("match.interface", strs(m.Interfaces))
		for i, c := range m.Payload {
			add(fmt.Sprintf("match.payload[%d]", i), content(c))
		}
		add("then", p.Then)
	}
	if h := p.Hook; h != nil {
		target := h.Target
		if h.Kind == "syscall" {
			target = strs(h.Syscalls)
		}
		add(h.Kind, target)
		add("attach", h.Attach)
		for i, a := range h.Args {
			add(fmt.Sprintf("args[%d]", i), plain(a))
		}
		for i, s := range h.Selectors {
			add(fmt.Sprintf("match[%d]", i), plain(s.Filters))
		}
		if h.Count != nil {
			add("count", plain(*h.Count))
		}
		add("signal", h.Signal)
	}
	if e := p.Emit; e != nil {
		add("emit.event", e.Event)
		add("emit.fields", strs(e.Fields))
		if e.RateLimit > 0 {
			add("emit.rate_limit", strconv.Itoa(e.RateLimit))
		}
		if p.XDP != nil {
			add("emit.dedup", e.Dedup.String())
		}
	}
	return out
}

func strs(list []string) string {
	if len(list) == 0 {
		return ""
	}
	return "[" + strings.Join(list, ", ") + "]"
}

func ports(list []policies.PortRange) string {
	var out []string
	for _, r := range list {
		if r.First == r.Last {
			out = append(out, strconv.Itoa(int(r.First)))
		} else {
			out = append(out, fmt.Sprintf("%d-%d", r.First, r.Last))
		}
	}
	return strs(out)
}

func content(c policies.Content) string {
	s := strconv.Quote(string(c.Pattern))
	if c.Offset > 0 {
		s += fmt.Sprintf(" offset %d", c.Offset)
	}
	if c.Depth > 0 {
		s += fmt.Sprintf(" depth %d", c.Depth)
	}
	if c.NoCase {
		s += " nocase"
	}
	if c.Negate {
		s = "not " + s
	}
	return s
}

// plain is v as compact JSON without its positions (fields named Pos).
func plain(v any) string {
	b, _ := json.Marshal(stripPos(reflect.ValueOf(v)))
	return string(b)
}

func stripPos(v reflect.Value) any {
	switch v.Kind() {
	case reflect.Struct:
		m := map[string]any{}
		for i := 0; i < v.NumField(); i++ {
			f := v.Type().Field(i)
			if !f.IsExported() || f.Name == "Pos" || v.Field(i).IsZero() {
				continue
			}
			m[snake(f.Name)] = stripPos(v.Field(i))
		}
		return m
	case reflect.Slice, reflect.Array:
		out := make([]any, v.Len())
		for i := range out {
			out[i] = stripPos(v.Index(i))
		}
		return out
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return nil
		}
		return stripPos(v.Elem())
	}
	return v.Interface()
}

// snake writes a Go field name as the schema's fields are written:
// OneIn is one_in, CIDRs cidrs.
func snake(name string) string {
	var b strings.Builder
	for i, r := range name {
		lower := unicode.ToLower(r)
		if i > 0 && r != lower && !unicode.IsUpper(rune(name[i-1])) {
			b.WriteByte('_')
		}
		b.WriteRune(lower)
	}
	return b.String()
}
