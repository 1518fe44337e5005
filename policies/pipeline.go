package policies

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"cuelang.org/go/cue"

	"github.com/grain-ebpf/grain/schema"
)

// Pipeline is the event pipeline of a tree: the top-level field
// `pipeline` of one of its files (schema/pipeline.cue). Stages run in the
// order of the fields: filters, samples, rate limits, rewrites, enrichment.
type Pipeline struct {
	// Pos is where the pipeline is declared.
	Pos        Position
	Filters    []EventFilter
	Samples    []Sample
	RateLimits []RateLimit
	Rewrites   []Rewrite
	Enrich     Enrich
	// HashKey keys the hash rewrite; empty hashes with plain SHA-256.
	HashKey string
}

// EventFilter drops the events (of Events, or all when empty) whose Field
// equals one of Equals or lies in one of CIDRs.
type EventFilter struct {
	Events []string
	Field  string
	// Equals holds strings and integers; Ints[i] tells which.
	Equals []string
	Ints   []bool
	CIDRs  []netip.Prefix
	Pos    Position
}

// Sample keeps one event in OneIn of each event name.
type Sample struct {
	Events []string
	OneIn  int
	Pos    Position
}

// RateLimit lets at most PerSecond events of each event name through per
// second, with bursts of Burst.
type RateLimit struct {
	Events    []string
	PerSecond float64
	Burst     int
	Pos       Position
}

// Rewrite actions.
const (
	RewriteRename   = "rename"
	RewriteRedact   = "redact"
	RewriteHash     = "hash"
	RewriteTruncate = "truncate"
	RewritePrefix   = "prefix"
)

// Rewrite changes one field of the events of Events (all when empty).
type Rewrite struct {
	Events []string
	Field  string
	// Action is one of the Rewrite* constants.
	Action string
	// To is the new name (rename).
	To string
	// Length is the bytes a string keeps (truncate).
	Length int
	// IPv4Bits and IPv6Bits are the prefix lengths an address keeps
	// (prefix; -1 leaves that family unchanged).
	IPv4Bits, IPv6Bits int
	Pos                Position
}

// Enrich adds fields to every event.
type Enrich struct {
	Host   bool
	Cgroup bool
}

// loadPipeline decodes the tree's `pipeline` field.
func (l *loader) loadPipeline(pos Position, raw cue.Value) {
	if l.pipeline != nil {
		l.errs = append(l.errs, Error{Pos: pos, Policy: schema.PipelineField,
			Msg: fmt.Sprintf("declared again; first declared at %s: a tree has one pipeline", l.pipeline.Pos)})
		return
	}
	sch := l.ctx.CompileString(schema.PipelineSource, cue.Filename(schema.PipelineFilename))
	if err := sch.Err(); err != nil {
		l.errs = append(l.errs, Error{Pos: pos, Msg: "embedded pipeline schema: " + err.Error()})
		return
	}
	v := raw.Unify(sch.LookupPath(cue.ParsePath(schema.PipelineDefinition)))
	if err := v.Validate(cue.Concrete(true)); err != nil {
		c := errorConverter{files: l.tree.users, policy: schema.PipelineField, decl: pos, raw: raw, schema: sch}
		for _, e := range c.convert(err) {
			l.errs = append(l.errs, suggestPipelineField(e, sch))
		}
		return
	}
	d := pipelineDecoder{decoder: decoder{files: l.tree.users, raw: raw, policy: &Policy{Name: schema.PipelineField, Pos: pos}}}
	p := &Pipeline{Pos: pos}
	d.decode(v, p)
	if len(d.errs) > 0 {
		l.errs = append(l.errs, d.errs...)
		return
	}
	l.pipeline = p
}

type pipelineDecoder struct {
	decoder
}

func (d *pipelineDecoder) list(v cue.Value, name string, each func(e cue.Value, path string)) {
	f := v.LookupPath(cue.MakePath(cue.Str(name)))
	if !f.Exists() {
		return
	}
	for i, e := range oneOrMany(f) {
		path := fmt.Sprintf("%s[%d]", name, i)
		// A stage's lists select events and values: an empty one is
		// refused as in a match (event: [] would mean every event).
		if d.refuseEmptyLists(e, path) {
			each(e, path)
		}
	}
}

func lookup(v cue.Value, name string) (cue.Value, bool) {
	f := v.LookupPath(cue.MakePath(cue.Str(name)))
	return f, f.Exists()
}

func (d *pipelineDecoder) decode(v cue.Value, p *Pipeline) {
	d.list(v, "filter", func(e cue.Value, path string) {
		f := EventFilter{Events: events(e), Pos: d.pos(e)}
		f.Field = d.field(e, path)
		eq, hasEq := lookup(e, "equals")
		cidr, hasCIDR := lookup(e, "cidr")
		if hasEq == hasCIDR {
			d.errorf(f.Pos, path, "give exactly one of equals and cidr")
			return
		}
		for _, x := range oneOrMany(eq) {
			if i, err := x.Int64(); err == nil {
				f.Equals, f.Ints = append(f.Equals, strconv.FormatInt(i, 10)), append(f.Ints, true)
			} else if s, err := x.String(); err == nil {
				f.Equals, f.Ints = append(f.Equals, s), append(f.Ints, false)
			}
		}
		if hasCIDR {
			for i, x := range oneOrMany(cidr) {
				s, _ := x.String()
				pfx, err := parseCIDR(s)
				if err == nil {
					err = refuseMapped(s, pfx, "the filter compares an event's IPv4 addresses as IPv4")
				}
				if err != nil {
					d.errorf(d.pos(x), elementPath(cidr, path+".cidr", i), "%v", err)
					continue
				}
				f.CIDRs = append(f.CIDRs, pfx)
			}
		}
		p.Filters = append(p.Filters, f)
	})
	d.list(v, "sample", func(e cue.Value, path string) {
		n, _ := e.LookupPath(cue.ParsePath("one_in")).Int64()
		p.Samples = append(p.Samples, Sample{Events: events(e), OneIn: int(n), Pos: d.pos(e)})
	})
	d.list(v, "rate_limit", func(e cue.Value, path string) {
		r := RateLimit{Events: events(e), Pos: d.pos(e)}
		r.PerSecond, _ = e.LookupPath(cue.ParsePath("per_second")).Float64()
		if b, ok := lookup(e, "burst"); ok {
			n, _ := b.Int64()
			r.Burst = int(n)
		} else {
			r.Burst = max(1, int(r.PerSecond))
		}
		p.RateLimits = append(p.RateLimits, r)
	})
	d.list(v, "rewrite", func(e cue.Value, path string) {
		r := Rewrite{Events: events(e), Pos: d.pos(e), IPv4Bits: -1, IPv6Bits: -1}
		r.Field = d.field(e, path)
		var actions []string
		if x, ok := lookup(e, "rename"); ok {
			actions = append(actions, RewriteRename)
			r.To, _ = x.String()
			d.checkRename(x, path+".rename", r, p.Rewrites)
		}
		if _, ok := lookup(e, "redact"); ok {
			actions = append(actions, RewriteRedact)
		}
		if _, ok := lookup(e, "hash"); ok {
			actions = append(actions, RewriteHash)
		}
		if x, ok := lookup(e, "truncate"); ok {
			actions = append(actions, RewriteTruncate)
			n, _ := x.Int64()
			r.Length = int(n)
		}
		if x, ok := lookup(e, "prefix"); ok {
			actions = append(actions, RewritePrefix)
			if b, ok := lookup(x, "ipv4"); ok {
				n, _ := b.Int64()
				r.IPv4Bits = int(n)
			}
			if b, ok := lookup(x, "ipv6"); ok {
				n, _ := b.Int64()
				r.IPv6Bits = int(n)
			}
			if r.IPv4Bits < 0 && r.IPv6Bits < 0 {
				d.errorf(d.pos(x), path+".prefix", "give ipv4, ipv6 or both")
			}
		}
		if len(actions) != 1 {
			d.errorf(r.Pos, path, "give exactly one of rename, redact, hash, truncate and prefix (got %d)", len(actions))
			return
		}
		r.Action = actions[0]
		p.Rewrites = append(p.Rewrites, r)
	})
	if e, ok := lookup(v, "enrich"); ok {
		p.Enrich.Host, _ = e.LookupPath(cue.ParsePath("host")).Bool()
		p.Enrich.Cgroup, _ = e.LookupPath(cue.ParsePath("cgroup")).Bool()
	}
	if k, ok := lookup(v, "hash_key"); ok {
		p.HashKey, _ = k.String()
	}
}

// events reads a stage's event names; none means every event.
func events(e cue.Value) []string {
	if v, ok := lookup(e, "event"); ok {
		return stringList(v)
	}
	return nil
}

func (d *pipelineDecoder) field(e cue.Value, path string) string {
	v := e.LookupPath(cue.ParsePath("field"))
	s, _ := v.String()
	if s == "" || slices.Contains(eventHeaderKeys, s) {
		d.errorf(d.pos(v), path+".field", "%q cannot be filtered or rewritten: name a field of the event", s)
	}
	return s
}

// eventHeaderKeys are the keys every event's JSON starts with
// (pipeline.Event.AppendJSON): the event's own identity, not fields.
var eventHeaderKeys = []string{"time", "policy", "event"}

// grainEventKeys are the other keys grain itself gives events: after an
// xdp event's emit fields the engine adds the interface, the verdict and
// the count of deduplicated repeats; enrichment adds the host, cgroup path
// and container.
var grainEventKeys = []string{"interface", "verdict", "repeated", "host", "cgroup_path", "container"}

// reservedEventKeys are the names a rename may not take: a field renamed
// onto one of them would be written twice in JSON (header keys, where the
// later, spoofed value wins in most parsers) or would replace the value
// grain puts there.
func reservedEventKeys() []string {
	keys := slices.Concat(eventHeaderKeys, grainEventKeys, PacketEmitFields, ProcessFields, sortedKeys(sockFields))
	slices.Sort(keys)
	return slices.Compact(keys)
}

// checkRename refuses a rename onto a name grain gives events, and onto a
// name an earlier rename of the same events takes: two fields would then
// have one name.
func (d *pipelineDecoder) checkRename(to cue.Value, path string, r Rewrite, earlier []Rewrite) {
	switch {
	case r.To == "":
		d.errorf(d.pos(to), path, "the new name is empty")
	case r.To == r.Field:
		d.errorf(d.pos(to), path, "%q is renamed to itself: remove the rewrite", r.To)
	case slices.Contains(reservedEventKeys(), r.To):
		d.errorf(d.pos(to), path, "%q is a field grain gives events (%s): renaming onto it would replace or duplicate it; choose another name", r.To, strings.Join(reservedEventKeys(), ", "))
	default:
		for _, e := range earlier {
			if e.Action == RewriteRename && e.To == r.To && eventsOverlap(e.Events, r.Events) {
				d.errorf(d.pos(to), path, "%q is already the new name of %s (rename at %s): two fields of one event cannot share a name; choose another", r.To, e.Field, e.Pos)
				return
			}
		}
	}
}

// checkRenamesOntoEmittedFields refuses a rename onto a field that a
// policy's events carry by its own emit list (a kernel hook's argument
// name, say): known only once every file is loaded.
func (l *loader) checkRenamesOntoEmittedFields() {
	if l.pipeline == nil {
		return
	}
	for _, r := range l.pipeline.Rewrites {
		if r.Action != RewriteRename {
			continue
		}
		for _, p := range l.policies {
			if p.Emit == nil || r.To == r.Field || !slices.Contains(p.Emit.Fields, r.To) ||
				(len(r.Events) > 0 && !slices.Contains(r.Events, p.Emit.Event)) {
				continue
			}
			l.errs = append(l.errs, Error{Pos: r.Pos, Policy: schema.PipelineField,
				Msg: fmt.Sprintf("rename %s to %q: events %q of policy %s (%s) already carry a field %q; renaming onto it would duplicate it: choose another name",
					r.Field, r.To, p.Emit.Event, p.Name, p.Pos, r.To)})
			break
		}
	}
}

// eventsOverlap reports whether two stages' event lists (empty: every
// event) have an event in common.
func eventsOverlap(a, b []string) bool {
	return len(a) == 0 || len(b) == 0 || slices.ContainsFunc(a, func(e string) bool { return slices.Contains(b, e) })
}

// pipelineStructs maps a path inside the pipeline, list indices left out,
// to the definition of the struct there.
var pipelineStructs = map[string]string{
	"": "#Pipeline", "filter": "#Filter", "sample": "#Sample", "rate_limit": "#RateLimit",
	"rewrite": "#Rewrite", "rewrite.prefix": "#Prefix", "enrich": "#Enrich",
}

// suggestPipelineField adds the closest allowed name to a "field not
// allowed" error inside the pipeline, as policies get.
func suggestPipelineField(e Error, sch cue.Value) Error {
	path, msg, ok := strings.Cut(e.Msg, ": ")
	if !ok || msg != msgNotAllowed {
		return e
	}
	var p fieldPath
	for _, part := range strings.Split(strings.ReplaceAll(path, "[", ".["), ".") {
		if part != "" && !strings.HasPrefix(part, "[") {
			p = append(p, part)
		}
	}
	if len(p) == 0 {
		return e
	}
	def, ok := pipelineStructs[p[:len(p)-1].key(false)]
	if !ok {
		return e
	}
	allowed := definitionFields(sch.LookupPath(cue.ParsePath(def)))
	if c := closest(p[len(p)-1], allowed); c != "" {
		e.Msg = fmt.Sprintf("%s: %s; did you mean %s?", path, msgNotAllowed, c)
	} else {
		e.Msg = fmt.Sprintf("%s: %s; allowed fields: %s", path, msgNotAllowed, strings.Join(allowed, ", "))
	}
	return e
}
