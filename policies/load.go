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
	"cuelang.org/go/cue/build"
	"cuelang.org/go/cue/cuecontext"
	cueerrors "cuelang.org/go/cue/errors"
	"cuelang.org/go/cue/token"

	"github.com/grain-ebpf/grain/schema"
)

// Load reads every policy file under root as one snapshot. root is a
// directory, walked recursively, or a single .cue file.
//
// Files ending in .cue are read, including symbolic links to files (as
// Kubernetes mounts ConfigMaps); files and directories whose names start
// with "." or "_", *_test.cue files, and of cue.mod directories all but
// the root's module file and packages, are skipped. The files are
// evaluated as CUE packages of the root's module (packages.go); each
// regular top-level field of a package that no other imports is one
// policy named by its label, and a name may be used once in the whole
// tree.
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
	return loadTree(root, files, c)
}

// LoadBytes loads a single policy file held in memory, as Load would load
// a file of that name; name is also the snapshot's Root.
func LoadBytes(name string, src []byte) (*Snapshot, error) {
	return loadTree(name, []sourceFile{{name: name, src: src}}, nil)
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
		rel, err := filepath.Rel(real, path)
		if err != nil {
			return err
		}
		if skippedBelowRoot(rel, d.IsDir()) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() || !strings.HasSuffix(d.Name(), ".cue") {
			return nil
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

// Skipped reports whether a file or directory named name is left out of
// a tree wherever it is: hidden and underscore names (editor backups,
// ConfigMap "..data" links), and cue.mod directories (the root's own is
// read, see skippedBelowRoot).
func Skipped(name string) bool {
	return strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") || name == "cue.mod"
}

// IsTestFile reports whether a file is a policy test (`grain test` reads
// those), never loaded as policies: its name ends in _test.cue, as CUE's
// own loader leaves such files out of packages.
func IsTestFile(name string) bool {
	return strings.HasSuffix(name, "_test.cue")
}

// moduleDirs are the directories of the root's cue.mod that hold packages
// the tree may import (vendored modules, and the user's own).
var moduleDirs = []string{"pkg", "usr", "gen"}

// skippedBelowRoot reports whether the loader leaves out the entry at rel,
// a path below the tree's root whose parent directories are not left out.
// Of the root's cue.mod it reads module.cue and the packages under
// cue.mod/pkg, usr and gen; test files are left out everywhere.
func skippedBelowRoot(rel string, isDir bool) bool {
	parts := strings.Split(filepath.ToSlash(rel), "/")
	name := parts[len(parts)-1]
	if parts[0] == "cue.mod" {
		switch {
		case len(parts) == 1:
			return !isDir
		case len(parts) == 2 && isDir:
			return !slices.Contains(moduleDirs, name)
		case len(parts) == 2:
			return name != "module.cue"
		}
	}
	return Skipped(name) || (!isDir && IsTestFile(name))
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
	tree     treeFS
	src      map[string][]byte // the tree's files by name
	syntax   []*ast.File       // of the instance being loaded, for positions CUE omits
	// transitive are build errors of imports of imports.
	transitive []transitiveError
}

type transitiveError struct {
	file string
	errs []cueerrors.Error
}

func loadTree(root string, files []sourceFile, cache *Cache) (*Snapshot, error) {
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
		src:      make(map[string][]byte, len(files)),
	}
	snap := &Snapshot{Root: root, Hash: hashFiles(root, files)}
	var total int
	for _, f := range files {
		total += len(f.src)
		l.src[f.name] = f.src
		snap.Files = append(snap.Files, f.name)
	}
	if total > MaxTreeBytes {
		// Load checked the files' sizes; LoadBytes' caller did not.
		return nil, ErrorList{{Pos: Position{File: root},
			Msg: fmt.Sprintf("holds %d bytes of .cue source; a policy tree may hold at most %d bytes (%d KiB): split it or shorten it", total, MaxTreeBytes, MaxTreeBytes>>10)}}
	}
	if len(files) > 0 {
		l.tree = newTreeFS(root, files)
		for _, in := range l.tree.instances() {
			if !l.loadInstance(in) {
				break // the tree's value budget is spent: the rest would be too
			}
		}
	}
	if len(l.errs) == 0 {
		// No package of the tree failed to build by itself: what its
		// imports failed on is outside them, and said here.
		for _, t := range l.transitive {
			l.cueErrors(t.file, t.errs, nil)
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
// (syntax, imports, references, conflicts in the instance itself) with
// CUE's own message, at the first position in the tree's files (file
// when there is none). An error inside a policy is attributed to it when
// policies is given.
func (l *loader) cueErrors(file string, errs []cueerrors.Error, policies map[string]Position) {
	for _, e := range errs {
		msg := message(e)
		// A failed import wraps what failed.
		for u := errors.Unwrap(e); u != nil; u = errors.Unwrap(u) {
			if ce, ok := u.(cueerrors.Error); ok {
				msg += ": " + message(ce)
			} else {
				msg += ": " + u.Error()
			}
		}
		if strings.Contains(msg, "errors in empty disjunction") {
			continue // a summary of errors listed on their own
		}
		out := Error{Pos: Position{File: file}}
		for _, p := range allPositions(e) {
			if p.IsValid() && l.tree.users[p.Filename()] {
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
		if strings.Contains(msg, "embed") && !strings.Contains(msg, embedHint) {
			msg = "cannot embed a file: " + embedHint
		}
		if strings.Contains(msg, "imports are unavailable") || strings.Contains(msg, "cannot find package") {
			msg += importHint(l.tree.hasMod)
		}
		out.Msg = msg
		l.errs = append(l.errs, out)
	}
}

// buildErrors reports what kept an instance from being built: syntax,
// the module file, imports. A package of the tree that fails is reported
// as itself, not again in every package importing it.
func (l *loader) buildErrors(in *instance, file string) {
	var errs, transitive []cueerrors.Error
	for _, e := range cueerrors.Errors(in.build.Err) {
		// Their paths are import paths, not paths of fields.
		if inner, ok := errors.Unwrap(e).(cueerrors.Error); ok && message(e) == message(inner) {
			// An import of an import failed: reported where it did,
			// unless that is outside the tree's packages (cue.mod/pkg).
			transitive = append(transitive, noPath{e: e})
			continue
		}
		errs = append(errs, noPath{e: e})
	}
	l.cueErrors(file, errs, nil)
	l.transitive = append(l.transitive, transitiveError{file, transitive})
}

// noPath is a CUE error without its path.
type noPath struct{ e cueerrors.Error }

func (e noPath) Error() string                { return e.e.Error() }
func (e noPath) Position() token.Pos          { return e.e.Position() }
func (e noPath) InputPositions() []token.Pos  { return e.e.InputPositions() }
func (e noPath) Msg() (string, []interface{}) { return e.e.Msg() }
func (noPath) Path() []string                 { return nil }
func (e noPath) Unwrap() error                { return errors.Unwrap(e.e) }

// importHint says how imports are found.
func importHint(hasMod bool) string {
	if hasMod {
		return ": a package of the tree is imported by the module path in cue.mod/module.cue and its directory below the root; other modules are vendored under cue.mod/pkg (grain downloads nothing)"
	}
	return ": the tree has no cue.mod/module.cue, so only the standard library can be imported; make the tree's root a CUE module (cue mod init) to import its packages"
}

// loadInstance loads one instance's policies into l. It reports false
// when the instance spent the tree's value budget: nothing of it was
// validated.
func (l *loader) loadInstance(in *instance) bool {
	b := in.build
	// Where errors without a position of their own go: the instance's
	// first file of its own directory.
	file := in.dir
	if len(in.own) > 0 {
		file = in.own[0].Filename
	} else if len(b.Files) > 0 {
		file = b.Files[0].Filename
	}
	if l.cache != nil {
		l.cache.progress.set(file)
	}
	l.syntax = b.Files
	// Where each policy is declared: the position of the value of a field
	// declared twice is that of one of its parts, not of its first label.
	labels, inherited := map[string]Position{}, map[string]bool{}
	for _, f := range in.own {
		for k, pos := range declarations(f) {
			if _, seen := labels[k]; !seen {
				labels[k] = pos
			}
		}
	}
	for _, f := range b.Files {
		for k := range declarations(f) {
			if _, own := labels[k]; !own {
				inherited[k] = true
			}
		}
	}
	if b.Err != nil {
		l.buildErrors(in, file)
		return true
	}
	value := l.ctx.BuildInstance(b)
	// Walk the value within the tree's budget before anything validates
	// it: validation would expand it whole, however large. A library's
	// values count too, once here and again where they are used.
	if pos, ok := l.spendValues(value, labels); !ok {
		l.errs = append(l.errs, Error{Pos: pos, Msg: tooManyValues()})
		return false
	}
	if in.library {
		// Its values are checked where they are used; a library that does
		// not build is reported once, here.
		if err := value.Err(); err != nil {
			l.cueErrors(file, cueerrors.Errors(err), nil)
		}
		return true
	}
	keys := l.cacheKeys(in)
	it, err := value.Fields()
	if err != nil {
		// Some top-level value is itself an error (an unresolved
		// reference, say): say everything that is wrong and stop.
		if verr := value.Validate(); verr != nil {
			err = verr
		}
		l.cueErrors(file, cueerrors.Errors(err), labels)
		return true
	}
	// Errors outside policies (in a user's own definitions, say) are
	// reported for the instance; those inside a policy come with the
	// policy.
	if err := value.Validate(); err != nil {
		var outside []cueerrors.Error
		for _, e := range cueerrors.Errors(err) {
			if p := e.Path(); len(p) > 0 {
				if _, ok := labels[p[0]]; ok || inherited[p[0]] {
					continue
				}
			}
			outside = append(outside, e)
		}
		l.cueErrors(file, outside, nil)
	}

	for it.Next() {
		sel := it.Selector().String()
		if inherited[sel] {
			continue // declared in a directory above: that instance's policy
		}
		name := it.Selector().Unquoted()
		pos, ok := labels[sel]
		if !ok {
			// Made by a comprehension: it belongs to the directory that
			// made it.
			pos = positionOf(it.Value().Pos())
			if pos.File != "" && filepath.Dir(pos.File) != in.dir {
				continue
			}
		}
		if name == schema.PipelineField {
			l.loadPipeline(pos, it.Value())
			continue
		}
		if first, dup := l.declared[name]; dup {
			l.errs = append(l.errs, Error{Pos: pos, Policy: name,
				Msg: fmt.Sprintf("declared again; first declared at %s: a policy name must be unique across all packages and files", first)})
			continue
		}
		l.declared[name] = pos
		key, cacheable := keys[sel]
		if cacheable && l.cache != nil {
			if p, ok := l.cache.entries[key]; ok {
				l.cache.next[key] = p
				l.policies = append(l.policies, p)
				continue
			}
		}
		n := len(l.policies)
		l.loadPolicy(name, pos, it.Value())
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

// cacheKeys returns, for each top-level policy of the instance declared
// once in its files and referring to no identifier, a key over everything
// its decoded value depends on: the schema, the other declarations of
// every file of the instance (definitions, hidden fields, embeddings,
// imports), the files of the packages it imports, and the declaration's
// own file, position and text.
func (l *loader) cacheKeys(in *instance) map[string][32]byte {
	count := map[string]int{}
	type decl struct {
		field *ast.Field
		file  string
	}
	var policies []decl
	context := sha256.New()
	context.Write([]byte(schema.Source))
	for _, f := range in.build.Files {
		src := l.src[f.Filename]
		fmt.Fprintf(context, "%d:%s\x00", len(f.Filename), f.Filename)
		for _, d := range f.Decls {
			if field, ok := d.(*ast.Field); ok {
				if name, isIdent, err := ast.LabelName(field.Label); err == nil &&
					!(isIdent && (strings.HasPrefix(name, "#") || strings.HasPrefix(name, "_"))) {
					count[cue.Str(name).String()]++
					policies = append(policies, decl{field, f.Filename})
					continue
				}
			}
			context.Write(sourceOf(src, d))
		}
	}
	// What the instance imports, all the way down; the standard library
	// is part of grain's version, as the schema is.
	seen := map[*build.Instance]bool{}
	var imports func(b *build.Instance)
	imports = func(b *build.Instance) {
		for _, imp := range b.Imports {
			if seen[imp] {
				continue
			}
			seen[imp] = true
			for _, f := range imp.Files {
				fmt.Fprintf(context, "%d:%s\x00", len(f.Filename), f.Filename)
				context.Write(l.src[f.Filename])
			}
			imports(imp)
		}
	}
	imports(in.build)
	base := context.Sum(nil)
	keys := map[string][32]byte{}
	for _, d := range policies {
		name, _, _ := ast.LabelName(d.field.Label)
		key := cue.Str(name).String()
		if count[key] != 1 || refersToIdentifiers(d.field.Value) {
			continue
		}
		h := sha256.New()
		h.Write(base)
		fmt.Fprintf(h, "%s:%d:%d:%d", d.file, d.field.Pos().Line(), d.field.Pos().Column(), d.field.Pos().Offset())
		h.Write(sourceOf(l.src[d.file], d.field))
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

func (l *loader) loadPolicy(name string, pos Position, raw cue.Value) {
	v := raw.Unify(l.policy)
	if err := v.Validate(cue.Concrete(true)); err != nil {
		c := errorConverter{files: l.tree.users, policy: name, decl: pos, raw: raw, schema: l.schema}
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
	d := decoder{files: l.tree.users, raw: raw, policy: &Policy{Name: name, Pos: pos}}
	d.decodePolicy(v)
	if len(d.errs) > 0 {
		l.errs = append(l.errs, d.errs...)
		return
	}
	l.policies = append(l.policies, *d.policy)
}
