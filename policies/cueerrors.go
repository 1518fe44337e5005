package policies

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"cuelang.org/go/cue"
	"cuelang.org/go/cue/ast"
	cueerrors "cuelang.org/go/cue/errors"
	"cuelang.org/go/cue/token"
)

// CUE messages that get their own treatment.
const (
	msgNotAllowed = "field not allowed"
	msgRequired   = "field is required but not present"
)

// errorConverter turns CUE's errors about one policy into Errors that
// point into the user's file and say what the field takes.
type errorConverter struct {
	files  map[string]bool // the tree's files; positions anywhere else are the schema's
	policy string          // the policy's name
	decl   Position        // where the policy is declared
	raw    cue.Value       // the user's value before unification
	schema cue.Value       // the whole schema, for the fields each struct allows
}

// fieldPath is a path inside a policy: labels, and list indices as
// decimal strings, as CUE's errors give them.
type fieldPath []string

func isIndex(elem string) bool {
	_, err := strconv.Atoi(elem)
	return err == nil
}

// String formats p for people: match.dport[1].
func (p fieldPath) String() string {
	var b strings.Builder
	for _, e := range p {
		if isIndex(e) {
			fmt.Fprintf(&b, "[%s]", e)
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(e)
	}
	return b.String()
}

// key formats p as a table key: indices become "[]", or vanish when
// elements is false.
func (p fieldPath) key(elements bool) string {
	var b strings.Builder
	for _, e := range p {
		if isIndex(e) {
			if elements {
				b.WriteString("[]")
			}
			continue
		}
		if b.Len() > 0 {
			b.WriteByte('.')
		}
		b.WriteString(e)
	}
	return b.String()
}

func (p fieldPath) cuePath() cue.Path {
	sels := make([]cue.Selector, len(p))
	for i, e := range p {
		if n, err := strconv.Atoi(e); err == nil {
			sels[i] = cue.Index(n)
			continue
		}
		sels[i] = cue.Str(cueLabel(e))
	}
	return cue.MakePath(sels...)
}

// isPrefixOf reports whether p is a strict prefix of q.
func (p fieldPath) isPrefixOf(q fieldPath) bool {
	return len(p) < len(q) && slices.Equal(p, q[:len(p)])
}

// want says what the field at p takes, or "" when no table entry fits.
// Argument conditions are keyed by the user's argument names, which the
// table writes as "*".
func want(p fieldPath) string {
	for _, q := range []fieldPath{p, p.withArgWildcard()} {
		if w, ok := fieldWants[q.key(true)]; ok {
			return w
		}
		if w, ok := fieldWants[q.key(false)]; ok {
			return w
		}
	}
	return ""
}

// withArgWildcard replaces the argument name in match.args.NAME... by "*".
func (p fieldPath) withArgWildcard() fieldPath {
	q := slices.Clone(p)
	for i := 0; i+1 < len(q); i++ {
		if q[i] == "args" && i > 0 && (q[i-1] == "match" || isIndex(q[i-1])) {
			q[i+1] = "*"
			break
		}
	}
	return q
}

// errorGroup is CUE's errors about one path. A disjunction fails once per
// branch, so one mistake is usually several CUE errors.
type errorGroup struct {
	path fieldPath
	errs []cueerrors.Error
}

func (c *errorConverter) convert(err error) []Error {
	var groups []*errorGroup
	for _, e := range cueerrors.Errors(err) {
		p := fieldPath(e.Path())
		if len(p) > 0 {
			p = p[1:] // the policy's own label
		}
		i := slices.IndexFunc(groups, func(g *errorGroup) bool { return slices.Equal(g.path, p) })
		if i < 0 {
			groups = append(groups, &errorGroup{path: p})
			i = len(groups) - 1
		}
		groups[i].errs = append(groups[i].errs, e)
	}
	var out []Error
	for _, g := range groups {
		// An error deeper down says more precisely what is wrong: a list
		// whose element is bad also fails the scalar branch of "one or a
		// list", which is noise.
		if slices.ContainsFunc(groups, func(h *errorGroup) bool { return g.path.isPrefixOf(h.path) }) {
			continue
		}
		out = append(out, c.convertGroup(g))
	}
	return out
}

func (c *errorConverter) convertGroup(g *errorGroup) Error {
	e := Error{Policy: c.policy}
	var ok bool
	if e.Pos, ok = c.userPosition(g.errs); !ok {
		e.Pos = c.nearestPosition(g.path)
	}
	where := g.path // the path the message is about
	user := c.raw.LookupPath(g.path.cuePath())
	switch {
	case len(g.path) > 0 && c.hasMessage(g, msgNotAllowed):
		e.Msg = c.notAllowed(g.path)
	case len(g.path) > 0 && c.hasMessage(g, msgRequired):
		// Point at the struct the field is missing from.
		where = g.path[:len(g.path)-1]
		e.Pos = c.nearestPosition(where)
		e.Msg = "missing " + g.path[len(g.path)-1]
		if hint, ok := requiredHints[g.path.key(false)]; ok {
			e.Msg += ": " + hint
		}
	case user.Err() != nil:
		// The user's own values conflict; CUE says it best.
		e.Msg = bestMessage(cueerrors.Errors(user.Err()))
	case want(g.path) != "" && (c.involvesSchema(g) || !user.IsConcrete()):
		e.Msg = fmt.Sprintf("got %s, want %s", describe(user), want(g.path))
	default:
		e.Msg = bestMessage(g.errs)
	}
	if len(where) > 0 {
		e.Msg = where.String() + ": " + e.Msg
	}
	return e
}

func (c *errorConverter) hasMessage(g *errorGroup, msg string) bool {
	return slices.ContainsFunc(g.errs, func(e cueerrors.Error) bool { return message(e) == msg })
}

func message(e cueerrors.Error) string {
	format, args := e.Msg()
	return fmt.Sprintf(format, args...)
}

// bestMessage picks CUE's most telling message: not the "N errors in empty
// disjunction" summary, and the same one every time.
func bestMessage(errs []cueerrors.Error) string {
	var msgs []string
	for _, e := range errs {
		m := message(e)
		if !strings.Contains(m, "errors in empty disjunction") {
			msgs = append(msgs, m)
		}
	}
	if len(msgs) == 0 {
		return message(errs[0])
	}
	slices.Sort(msgs)
	return msgs[0]
}

func allPositions(e cueerrors.Error) []token.Pos {
	return append([]token.Pos{e.Position()}, e.InputPositions()...)
}

// userPosition finds the first position CUE gives in the user's file.
func (c *errorConverter) userPosition(errs []cueerrors.Error) (Position, bool) {
	for _, e := range errs {
		for _, p := range allPositions(e) {
			if p.IsValid() && c.files[p.Filename()] {
				return positionOf(p), true
			}
		}
	}
	return Position{}, false
}

// involvesSchema reports whether the schema took part in the failure; when
// it did not, the user's own values conflict and CUE's message is the
// right one.
func (c *errorConverter) involvesSchema(g *errorGroup) bool {
	for _, e := range g.errs {
		for _, p := range allPositions(e) {
			if p.IsValid() && !c.files[p.Filename()] {
				return true
			}
		}
	}
	return false
}

// nearestPosition is the user's position of the value at p or of its
// closest ancestor, ending at the policy's declaration.
func (c *errorConverter) nearestPosition(p fieldPath) Position {
	for n := len(p); n > 0; n-- {
		v := c.raw.LookupPath(p[:n].cuePath())
		if pos := v.Pos(); v.Exists() && pos.IsValid() && c.files[pos.Filename()] {
			return positionOf(pos)
		}
	}
	return c.decl
}

// describe shows the user's value briefly: scalars as written, lists and
// structs by kind.
func describe(v cue.Value) string {
	switch {
	case !v.Exists():
		return "nothing"
	case v.IncompleteKind() == cue.ListKind:
		return "a list"
	case v.IncompleteKind() == cue.StructKind:
		return "a struct"
	case !v.IsConcrete():
		return fmt.Sprintf("%v (not a concrete value)", v)
	}
	return fmt.Sprint(v)
}

// notAllowed explains a field the schema does not know and suggests the
// allowed field it most likely means.
func (c *errorConverter) notAllowed(p fieldPath) string {
	msg := msgNotAllowed
	allowed := c.allowedFields(p[:len(p)-1])
	if len(allowed) == 0 {
		return msg
	}
	name := p[len(p)-1]
	if slices.Contains(allowed, name) {
		// The schema allows it: one of the user's own definitions is closed.
		return msg + ` by a closed definition in this file: add "..." to the definition to leave it open`
	}
	if s := closest(name, allowed); s != "" {
		return fmt.Sprintf("%s; did you mean %s?", msg, s)
	}
	return fmt.Sprintf("%s; allowed fields: %s", msg, strings.Join(allowed, ", "))
}

// unknownFields finds the fields of the user's policy that the schema does
// not allow, with the errors the converter already has, so that every one
// is reported. CUE reports such a field only when nothing else in its
// struct is wrong: a struct that also fails on another field fails as a
// whole (in the disjunction "one match or a list of them"), and the
// field's own error is lost with it.
func (c *errorConverter) unknownFields(have []Error) []Error {
	var out []Error
	var walk func(v cue.Value, p fieldPath)
	walk = func(v cue.Value, p fieldPath) {
		switch v.IncompleteKind() {
		case cue.StructKind:
			allowed := c.allowedFields(p)
			it, err := v.Fields()
			if err != nil {
				return
			}
			for it.Next() {
				q := append(slices.Clip(p), it.Selector().Unquoted())
				if len(allowed) == 0 || slices.Contains(allowed, q[len(q)-1]) {
					walk(it.Value(), q)
					continue
				}
				prefix := q.String() + ": "
				if slices.ContainsFunc(have, func(e Error) bool { return strings.HasPrefix(e.Msg, prefix) }) {
					continue
				}
				pos, ok := c.labelPosition(v, q[len(q)-1])
				if !ok {
					pos = c.nearestPosition(q)
				}
				out = append(out, Error{Pos: pos, Policy: c.policy, Msg: prefix + c.notAllowed(q)})
			}
		case cue.ListKind:
			it, err := v.List()
			if err != nil {
				return
			}
			for i := 0; it.Next(); i++ {
				walk(it.Value(), append(slices.Clip(p), strconv.Itoa(i)))
			}
		}
	}
	walk(c.raw, nil)
	return out
}

// labelPosition is where the user wrote the label of field name in the
// struct v, as CUE positions its own "not allowed" errors.
func (c *errorConverter) labelPosition(v cue.Value, name string) (Position, bool) {
	lit, ok := v.Source().(*ast.StructLit)
	if !ok {
		return Position{}, false
	}
	for _, elt := range lit.Elts {
		f, ok := elt.(*ast.Field)
		if !ok {
			continue
		}
		if label, _, err := ast.LabelName(f.Label); err == nil && label == name && c.files[f.Label.Pos().Filename()] {
			return positionOf(f.Label.Pos()), true
		}
	}
	return Position{}, false
}

// allowedFields lists the fields the schema allows in the struct at p.
func (c *errorConverter) allowedFields(p fieldPath) []string {
	def, ok := structDefinitions[p.key(false)]
	if !ok {
		return nil
	}
	return definitionFields(c.schema.LookupPath(cue.ParsePath(def)))
}

// definitionFields lists the regular fields of a schema definition,
// optional and required ones included, in schema order.
func definitionFields(def cue.Value) []string {
	var names []string
	it, err := def.Fields(cue.Optional(true))
	if err != nil {
		return nil
	}
	for it.Next() {
		names = append(names, it.Selector().Unquoted())
	}
	return names
}

// closest returns the candidate name is most likely a misspelling of, or ""
// when none is close: a prefix of at least three letters, or a few edits
// (fewer for short names, where every name is a few edits from another).
func closest(name string, candidates []string) string {
	best, bestDist := "", 2
	if len(name) > 4 {
		bestDist = 3
	}
	for _, c := range candidates {
		d := editDistance(name, c)
		if len(name) >= 3 && (strings.HasPrefix(c, name) || strings.HasPrefix(name, c)) {
			d = min(d, 1)
		}
		if d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

// editDistance counts the insertions, deletions, substitutions and swaps of
// neighbours that turn a into b (optimal string alignment distance).
func editDistance(a, b string) int {
	// d[i][j] is the distance between a[:i] and b[:j].
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}
