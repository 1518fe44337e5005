package policies

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"cuelang.org/go/cue"
	"cuelang.org/go/cue/ast"
	"cuelang.org/go/cue/cuecontext"
	cueerrors "cuelang.org/go/cue/errors"
	"cuelang.org/go/cue/parser"

	"github.com/grain-ebpf/grain/schema"
)

// Load reads every policy file under root as one snapshot. root is a
// directory, walked recursively, or a single .cue file.
//
// Files ending in .cue are read, including symbolic links to files (as
// Kubernetes mounts ConfigMaps); files and directories whose names start
// with "." or "_", and cue.mod directories, are skipped. Each top-level
// regular field of a file is one policy named by its label; a name may be
// used once in the whole tree.
//
// Problems in the policies come back as an ErrorList, every one positioned
// in the user's files, with paths as root joined with the path below it.
// Other errors (an unreadable directory, say) are returned as they are.
func Load(root string) (*Snapshot, error) {
	return (*Cache)(nil).Load(root)
}

// Cache keeps decoded policies between loads of a tree, so that a reload
// after an edit unifies only the policies whose source changed. The CUE
// context is still fresh for every load; only decoded Go values are kept.
// A policy is reused when its declaration's source text, its position and
// its file's other declarations (definitions it may refer to) are the
// same, and it refers to nothing outside itself. The zero value is ready;
// a nil *Cache does not cache.
type Cache struct {
	mu      sync.Mutex
	entries map[[32]byte]Policy
	next    map[[32]byte]Policy // filled by the load in progress
	// progress names the file being evaluated (read by Worker's bounds).
	progress progress
}

// seed fills an empty cache with entries an earlier cache held.
func (c *Cache) seed(entries map[[32]byte]Policy) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) == 0 {
		c.entries = entries
	}
}

// keys names the cache key of each policy the cache holds.
func (c *Cache) keys() map[string][32]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	keys := make(map[string][32]byte, len(c.entries))
	for key, p := range c.entries {
		keys[p.Name] = key
	}
	return keys
}

// Load is the package's Load, reusing what earlier loads decoded.
func (c *Cache) Load(root string) (*Snapshot, error) {
	if c != nil {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.next = map[[32]byte]Policy{}
		// Only what this load used is kept: removed policies are forgotten.
		defer func() { c.entries, c.next = c.next, nil }()
	}
	names, err := Files(root)
	if err != nil {
		return nil, err
	}
	if err := checkTreeSize(root, names); err != nil {
		return nil, err
	}
	files := make([]sourceFile, len(names))
	for i, name := range names {
		src, err := readBounded(name)
		if err != nil {
			return nil, err
		}
		files[i] = sourceFile{name: name, src: src}
	}
	return load(root, files, c)
}

// LoadBytes loads a single policy file held in memory, as Load would load
// a file of that name; name is also the snapshot's Root.
func LoadBytes(name string, src []byte) (*Snapshot, error) {
	return load(name, []sourceFile{{name: name, src: src}}, nil)
}

type sourceFile struct {
	name string
	src  []byte
}

// Files lists the .cue files Load reads under root, sorted, as root joined
// with the path below it.
//
// A .cue name that is not a regular file (a FIFO, a device, a socket, a
// link to one or to a directory) is an error naming it: reading a FIFO
// would block a reload, /dev/zero would never end, and skipping them
// silently would leave out policies the user meant. Their types are read
// without opening them. A symbolic link is followed when it resolves
// inside the tree (a Kubernetes ConfigMap mount links web.cue to
// ..data/web.cue and ..data to a directory beside it); a link that leads
// out of the tree is an error that says where it points, so that nothing
// outside the tree is read, nor shown in an error. root itself, named by
// the caller, may be a link to anywhere.
func Files(root string) ([]string, error) {
	info, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	if !info.IsDir() {
		if !info.Mode().IsRegular() {
			return nil, ErrorList{notRegularFile(root, "", info.Mode())}
		}
		return []string{root}, nil
	}
	// WalkDir does not descend into a root that is a symbolic link, so walk
	// the directory it points to and name files below the root as given.
	real, err := filepath.EvalSymlinks(root)
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	var names []string
	var problems ErrorList
	err = filepath.WalkDir(real, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path == real {
			return nil
		}
		if Skipped(d.Name()) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() || !strings.HasSuffix(d.Name(), ".cue") {
			return nil
		}
		rel, err := filepath.Rel(real, path)
		if err != nil {
			return err
		}
		name := filepath.Join(root, rel)
		mode := d.Type()
		if mode&fs.ModeSymlink != 0 {
			// Follow links to files only: links to directories could loop.
			target, err := filepath.EvalSymlinks(path)
			if err != nil {
				dest, _ := os.Readlink(path)
				problems = append(problems, Error{Pos: Position{File: name},
					Msg: fmt.Sprintf("is a symbolic link to %s, which does not resolve (%v): fix or remove the link", dest, errors.Unwrap(err))})
				return nil
			}
			if !insideDir(real, target) {
				problems = append(problems, Error{Pos: Position{File: name},
					Msg: fmt.Sprintf("is a symbolic link to %s, outside the policy tree %s: grain reads only files inside the tree; copy the file into the tree, or link to a file inside it", target, root)})
				return nil
			}
			info, err := os.Stat(target)
			if err != nil {
				return err
			}
			if mode = info.Mode(); !mode.IsRegular() {
				problems = append(problems, notRegularFile(name, target, mode))
			}
		} else if !mode.IsRegular() {
			problems = append(problems, notRegularFile(name, "", mode))
		}
		if mode.IsRegular() {
			names = append(names, name)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	if len(problems) > 0 {
		return nil, problems.normalize()
	}
	slices.Sort(names)
	return names, nil
}

// notRegularFile is the error for a .cue name that is not a regular file;
// target is where a link to it resolved, or empty.
func notRegularFile(name, target string, mode fs.FileMode) Error {
	what := "a directory"
	switch {
	case mode&fs.ModeNamedPipe != 0:
		what = "a FIFO (named pipe)"
	case mode&fs.ModeCharDevice != 0:
		what = "a character device"
	case mode&fs.ModeDevice != 0:
		what = "a block device"
	case mode&fs.ModeSocket != 0:
		what = "a socket"
	case !mode.IsDir():
		what = "not a regular file"
	}
	if target != "" {
		what = "a symbolic link to " + target + ", " + what
	}
	return Error{Pos: Position{File: name},
		Msg: fmt.Sprintf("is %s: a policy file must be a regular file; remove it or rename it so it does not end in .cue", what)}
}

// insideDir reports whether path, resolved, lies in the resolved dir.
func insideDir(dir, path string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) && !filepath.IsAbs(rel)
}

// skipped reports whether a file or directory below the root is left out:
// hidden and underscore names (editor backups, ConfigMap "..data" links),
// and CUE module metadata.
func Skipped(name string) bool {
	return strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "cue.mod"
}

// loader is the state of one Load. It owns a fresh cue.Context: a context
// keeps everything built in it, so a long-lived one would grow with every
// reload.
type loader struct {
	ctx      *cue.Context
	schema   cue.Value
	policy   cue.Value // the #Policy definition
	declared map[string]Position
	policies []Policy
	errs     ErrorList
	cache    *Cache
	pipeline *Pipeline // the tree's `pipeline` field (pipeline.go)
	values   valueBudget
	syntax   *ast.File // of the file being loaded, for positions CUE omits
}

func load(root string, files []sourceFile, cache *Cache) (*Snapshot, error) {
	ctx := cuecontext.New()
	sch := ctx.CompileString(schema.Source, cue.Filename(schema.Filename))
	if err := sch.Err(); err != nil {
		return nil, fmt.Errorf("policies: embedded schema: %w", err)
	}
	l := &loader{
		ctx:      ctx,
		schema:   sch,
		policy:   sch.LookupPath(cue.ParsePath(schema.PolicyDefinition)),
		declared: map[string]Position{},
		cache:    cache,
		values:   valueBudget{left: MaxTreeValues},
	}
	snap := &Snapshot{Root: root, Hash: hashFiles(root, files)}
	var total int
	for _, f := range files {
		total += len(f.src)
	}
	if total > MaxTreeBytes {
		// Load checked the files' sizes; LoadBytes' caller did not.
		return nil, ErrorList{{Pos: Position{File: root},
			Msg: fmt.Sprintf("holds %d bytes of .cue source; a policy tree may hold at most %d bytes (%d KiB): split it or shorten it", total, MaxTreeBytes, MaxTreeBytes>>10)}}
	}
	for _, f := range files {
		snap.Files = append(snap.Files, f.name)
		if cache != nil {
			cache.progress.set(f.name)
		}
		if !l.loadFile(f) {
			break // the tree's value budget is spent: the rest would be too
		}
	}
	l.checkRenamesOntoEmittedFields()
	if len(l.errs) > 0 {
		return nil, l.errs.normalize()
	}
	slices.Sort(snap.Files)
	slices.SortFunc(l.policies, func(a, b Policy) int { return strings.Compare(a.Name, b.Name) })
	snap.Policies = l.policies
	snap.Pipeline = l.pipeline
	return snap, nil
}

// cueErrors reports errors found before policies are checked one by one
// (syntax, references, conflicts in the file itself) with CUE's own
// message. An error inside a policy is attributed to it when policies is
// given.
func (l *loader) cueErrors(file string, errs []cueerrors.Error, policies map[string]Position) {
	for _, e := range errs {
		msg := message(e)
		if strings.Contains(msg, "errors in empty disjunction") {
			continue // a summary of errors listed on their own
		}
		out := Error{Pos: Position{File: file}}
		for _, p := range allPositions(e) {
			if p.IsValid() && p.Filename() == file {
				out.Pos = positionOf(p)
				break
			}
		}
		path := fieldPath(e.Path())
		if out.Pos.Line == 0 {
			out.Pos, msg = sourcePosition(l.syntax, file, path, msg)
		}
		if len(path) > 0 {
			if decl, ok := policies[path[0]]; ok {
				out.Policy = cueLabel(path[0])
				if out.Pos.Line == 0 {
					out.Pos = decl
				}
				path = path[1:]
			}
		}
		if len(path) > 0 {
			msg = path.String() + ": " + msg
		}
		out.Msg = msg
		l.errs = append(l.errs, out)
	}
}

// loadFile loads one file's policies into l. It reports false when the
// file spent the tree's value budget: nothing of it was validated.
func (l *loader) loadFile(f sourceFile) bool {
	// Parse first to find where each policy is declared: the value of a
	// field declared twice in one file carries the position of one of its
	// parts, not of its first label.
	syntax, err := parser.ParseFile(f.name, f.src)
	if err != nil {
		l.cueErrors(f.name, cueerrors.Errors(err), nil)
		return true
	}
	l.syntax = syntax
	labels := declarations(syntax)
	keys := cacheKeys(f, syntax)
	file := l.ctx.BuildFile(syntax)

	// Walk the file's value within the tree's budget before anything
	// validates it: validation would expand it whole, however large.
	if pos, ok := l.spendValues(file, labels); !ok {
		l.errs = append(l.errs, Error{Pos: pos, Msg: tooManyValues()})
		return false
	}
	it, err := file.Fields()
	if err != nil {
		// Some top-level value is itself an error (an unresolved
		// reference, say): say everything that is wrong and stop.
		if verr := file.Validate(); verr != nil {
			err = verr
		}
		l.cueErrors(f.name, cueerrors.Errors(err), labels)
		return true
	}
	// Errors outside policies (in a user's own definitions, say) are
	// reported for the file; those inside a policy come with the policy.
	if err := file.Validate(); err != nil {
		var outside []cueerrors.Error
		for _, e := range cueerrors.Errors(err) {
			if p := e.Path(); len(p) > 0 {
				if _, ok := labels[p[0]]; ok {
					continue
				}
			}
			outside = append(outside, e)
		}
		l.cueErrors(f.name, outside, nil)
	}

	for it.Next() {
		name := it.Selector().Unquoted()
		pos, ok := labels[it.Selector().String()]
		if !ok {
			pos = positionOf(it.Value().Pos())
		}
		if name == schema.PipelineField {
			l.loadPipeline(f.name, pos, it.Value())
			continue
		}
		if first, dup := l.declared[name]; dup {
			l.errs = append(l.errs, Error{Pos: pos, Policy: name,
				Msg: fmt.Sprintf("declared again; first declared at %s: a policy name must be unique across all files", first)})
			continue
		}
		l.declared[name] = pos
		key, cacheable := keys[it.Selector().String()]
		if cacheable && l.cache != nil {
			if p, ok := l.cache.entries[key]; ok {
				l.cache.next[key] = p
				l.policies = append(l.policies, p)
				continue
			}
		}
		n := len(l.policies)
		l.loadPolicy(f.name, name, pos, it.Value())
		if cacheable && l.cache != nil && len(l.policies) > n {
			l.cache.next[key] = l.policies[n]
		}
	}
	return true
}

// spendValues walks the file's top-level fields (definitions and hidden
// ones too) within the tree's value budget. When the budget runs out it
// reports false and where: the declaration it ran out in.
func (l *loader) spendValues(file cue.Value, labels map[string]Position) (Position, bool) {
	it, err := file.Fields(cue.Optional(true), cue.Definitions(true), cue.Hidden(true))
	if err != nil {
		return Position{}, true // an error value: Validate reports it
	}
	for it.Next() {
		if !l.values.spend(it.Value()) {
			pos, ok := labels[it.Selector().String()]
			if !ok {
				pos = positionOf(it.Value().Pos())
			}
			return pos, false
		}
	}
	return Position{}, true
}

// readBounded reads a policy file, never more than the tree may hold: the
// file can grow between the size check and the read.
//
// The file is opened without blocking and must still be a regular file:
// one swapped for a FIFO since the walk must not hang the load.
func readBounded(name string) ([]byte, error) {
	f, err := os.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	defer f.Close()
	if info, err := f.Stat(); err != nil || !info.Mode().IsRegular() {
		return nil, ErrorList{{Pos: Position{File: name}, Msg: "is no longer a regular file (it was replaced while the tree was read): a policy file must be a regular file"}}
	}
	src, err := io.ReadAll(io.LimitReader(f, MaxTreeBytes+1))
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	return src, nil
}

// cacheKeys returns, for each top-level policy declared once in the file
// and referring to no identifier, a key over everything its decoded value
// depends on: schema, file name, the other declarations of the file, and
// the declaration's own text and position.
func cacheKeys(f sourceFile, syntax *ast.File) map[string][32]byte {
	count := map[string]int{}
	var policies []*ast.Field
	context := sha256.New()
	context.Write([]byte(schema.Source))
	context.Write([]byte(f.name))
	for _, decl := range syntax.Decls {
		if field, ok := decl.(*ast.Field); ok {
			if name, isIdent, err := ast.LabelName(field.Label); err == nil &&
				!(isIdent && (strings.HasPrefix(name, "#") || strings.HasPrefix(name, "_"))) {
				key := cue.Str(name).String()
				count[key]++
				policies = append(policies, field)
				continue
			}
		}
		context.Write(sourceOf(f.src, decl))
	}
	base := context.Sum(nil)
	keys := map[string][32]byte{}
	for _, field := range policies {
		name, _, _ := ast.LabelName(field.Label)
		key := cue.Str(name).String()
		if count[key] != 1 || refersToIdentifiers(field.Value) {
			continue
		}
		h := sha256.New()
		h.Write(base)
		fmt.Fprintf(h, "%d:%d:%d", field.Pos().Line(), field.Pos().Column(), field.Pos().Offset())
		h.Write(sourceOf(f.src, field))
		keys[key] = [32]byte(h.Sum(nil))
	}
	return keys
}

// sourceOf is the source text of a node.
func sourceOf(src []byte, n ast.Node) []byte {
	start, end := n.Pos().Offset(), n.End().Offset()
	if start < 0 || end > len(src) || start > end {
		return nil
	}
	return src[start:end]
}

// refersToIdentifiers reports whether an expression uses any identifier as
// a value (a reference whose meaning lies outside the expression).
func refersToIdentifiers(expr ast.Expr) bool {
	found := false
	ast.Walk(expr, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.Field:
			// The label is a name, not a reference: walk only the value.
			if refersToIdentifiers(n.Value) {
				found = true
			}
			return false
		case *ast.Ident:
			found = true
		}
		return !found
	}, nil)
	return found
}

// cueLabel turns a label as CUE prints it in paths back into a name.
func cueLabel(s string) string {
	if u, err := strconv.Unquote(s); err == nil {
		return u
	}
	return s
}

// declarations maps each top-level regular field label, as CUE prints it
// in paths, to where it is first declared.
func declarations(f *ast.File) map[string]Position {
	labels := map[string]Position{}
	for _, decl := range f.Decls {
		field, ok := decl.(*ast.Field)
		if !ok {
			continue
		}
		name, isIdent, err := ast.LabelName(field.Label)
		if err != nil {
			continue // an expression label: its policies get their value's position
		}
		if isIdent && (strings.HasPrefix(name, "#") || strings.HasPrefix(name, "_")) {
			continue // definitions and hidden fields are not policies
		}
		key := cue.Str(name).String()
		if _, seen := labels[key]; !seen {
			labels[key] = positionOf(field.Label.Pos())
		}
	}
	return labels
}

func (l *loader) loadPolicy(file, name string, pos Position, raw cue.Value) {
	v := raw.Unify(l.policy)
	if err := v.Validate(cue.Concrete(true)); err != nil {
		c := errorConverter{file: file, policy: name, decl: pos, raw: raw, schema: l.schema}
		errs := c.convert(err)
		l.errs = append(l.errs, errs...)
		l.errs = append(l.errs, c.unknownFields(errs)...)
		// A policy without a hook is worth saying even when other
		// fields are wrong too.
		if raw.IncompleteKind() == cue.StructKind && !slices.ContainsFunc(hookFields, func(h string) bool {
			return raw.LookupPath(cue.MakePath(cue.Str(h))).Exists()
		}) {
			l.errs = append(l.errs, Error{Pos: pos, Policy: name, Msg: noHook})
		}
		return
	}
	d := decoder{file: file, raw: raw, policy: &Policy{Name: name, Pos: pos}}
	d.decodePolicy(v)
	if len(d.errs) > 0 {
		l.errs = append(l.errs, d.errs...)
		return
	}
	l.policies = append(l.policies, *d.policy)
}
