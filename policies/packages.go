package policies

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"cuelang.org/go/cue"
	"cuelang.org/go/cue/ast"
	"cuelang.org/go/cue/build"
	"cuelang.org/go/cue/load"
	"cuelang.org/go/cue/parser"
	"cuelang.org/go/mod/modfile"
	"cuelang.org/go/mod/module"

	"github.com/grain-ebpf/grain/schema"
)

// How a tree maps to CUE instances (docs/policies.md, "Files, packages and
// modules"):
//
//   - The tree's root is a CUE module when it holds cue.mod/module.cue;
//     its packages import each other by the module's path, and packages
//     vendored under cue.mod/pkg, usr or gen by theirs. A tree without
//     cue.mod is loaded as a module of its own with no name, so that the
//     standard library can still be imported (the cue CLI refuses every
//     import there).
//   - The files of one package in one directory are one instance: they
//     unify, as `cue` unifies them. Files of that package in the
//     directories above, up to the root, belong to it too (CUE's rule).
//   - A file without a package clause is an instance of its own, as every
//     file was before packages.
//   - An instance that another instance imports is a library: its values
//     are used where they are imported, and none of its fields is a
//     policy.
//   - Everywhere else, each regular top-level field declared in the
//     instance's own directory is a policy.
//
// CUE reads the tree from memory, from the bytes Load read and hashed:
// what is evaluated is exactly what Snapshot.Hash names, and no import
// can reach outside the tree. The files are laid out as an overlay below
// virtualRoot, a directory that never exists (nothing can be made in
// procfs's root), so that cue/load finds nothing else there: its FS
// option would do without the pretence, but cannot resolve packages
// vendored under cue.mod/pkg.

// virtualRoot is where cue/load sees the tree.
const virtualRoot = "/proc/grain-policy-tree"

// anonymousModule is the module path of a tree without cue.mod.
const anonymousModule = "grain.invalid/tree"

// schemaImportPath is where the schema's CUE module lives (schema/cue.mod):
// a tree may vendor it under cue.mod/pkg, and grain supplies its own
// embedded copy when the tree does not.
const schemaImportPath = schema.ImportPath

// instance is one CUE instance of the tree.
type instance struct {
	build *build.Instance
	// own are the instance's files in its own directory: fields declared
	// only in files above it belong to the instances there.
	own []*ast.File
	// library is set for an instance another instance imports.
	library bool
	// dir is the instance's directory, as the user named the tree.
	dir string
}

// treeFS holds the tree's files for cue/load, by slash paths below the
// tree's root.
type treeFS struct {
	fs map[string][]byte
	// userName maps an FS path to the name positions show: the file's
	// name as the tree was given, or the embedded schema's.
	userName func(string) string
	// users holds those names of the tree's own files in which a position
	// is the user's: all but a vendored copy of grain's schema.
	users map[string]bool
	// hasMod is set when the tree has its own cue.mod/module.cue.
	hasMod bool
}

// newTreeFS lays out files (named as root joined with their path below
// it, or root itself for a single file) for cue/load.
func newTreeFS(root string, files []sourceFile) treeFS {
	dir := root
	if len(files) == 1 && files[0].name == root {
		dir = filepath.Dir(root)
	}
	t := treeFS{fs: map[string][]byte{}, users: map[string]bool{}}
	const vendored = "cue.mod/pkg/" + schemaImportPath + "/"
	vendorsSchema := false
	for _, f := range files {
		rel, err := filepath.Rel(dir, f.name)
		if err != nil {
			rel = filepath.Base(f.name)
		}
		rel = filepath.ToSlash(rel)
		t.fs[rel] = f.src
		if strings.HasPrefix(rel, vendored) {
			vendorsSchema = true
		} else {
			t.users[f.name] = true
		}
	}
	_, t.hasMod = t.fs["cue.mod/module.cue"]
	if !t.hasMod {
		t.fs["cue.mod/module.cue"] = fmt.Appendf(nil, "module: %q\nlanguage: version: %q\n", anonymousModule, cue.LanguageVersion())
	}
	if !vendorsSchema {
		for name, src := range schema.Files() {
			t.fs[vendored+name] = []byte(src)
		}
	}
	t.userName = func(p string) string {
		p = strings.TrimPrefix(strings.TrimPrefix(p, virtualRoot), "/")
		if name, ok := strings.CutPrefix(p, vendored); ok && !vendorsSchema {
			return schema.EmbeddedName(name)
		}
		return filepath.Join(dir, filepath.FromSlash(p))
	}
	return t
}

// instances finds the tree's CUE instances. Problems that keep an
// instance from being built (syntax, imports, the module file) come back
// with it, in build.Err.
func (t treeFS) instances() []*instance {
	// Which directories hold packages, and which files have no package
	// clause: only the clause is parsed here; cue/load parses the rest.
	pkgDirs := map[string]bool{}
	var loose []string
	for p, src := range t.fs {
		if strings.HasPrefix(p, "cue.mod/") {
			continue
		}
		clause, err := parser.ParseFile(p, src, parser.PackageClauseOnly)
		if err == nil && clause.PackageName() != "" {
			pkgDirs[path.Dir(p)] = true
			continue
		}
		loose = append(loose, p)
	}
	overlay := make(map[string]load.Source, len(t.fs))
	for p, src := range t.fs {
		overlay[virtualRoot+"/"+p] = load.FromBytes(src)
	}
	cfg := &load.Config{
		Overlay:    overlay,
		Dir:        virtualRoot,
		ModuleRoot: virtualRoot,
		Registry:   noRegistry{},
		Env:        []string{},
		// Positions name the files as the user gave the tree.
		ParseFile: func(name string, src any, cfg parser.Config) (*ast.File, error) {
			return parser.ParseFile(t.userName(name), src, cfg)
		},
	}
	var built []*build.Instance
	if len(pkgDirs) > 0 {
		dirs := slices.Sorted(maps.Keys(pkgDirs))
		args := make([]string, len(dirs))
		for i, d := range dirs {
			args[i] = "./" + d
		}
		all := *cfg
		all.Package = "*"
		for _, b := range load.Instances(args, &all) {
			if b.PkgName == "_" {
				continue // the files without a package clause, loaded below
			}
			built = append(built, b)
		}
	}
	slices.Sort(loose)
	// A file given alone makes an instance whose Dir is the loader's, not
	// the file's: its directory is taken from the file.
	looseDir := map[*build.Instance]string{}
	for _, p := range loose {
		for _, b := range load.Instances([]string{"./" + p}, cfg) {
			looseDir[b] = t.userName(filepath.Dir(virtualRoot + "/" + p))
			built = append(built, b)
		}
	}

	imported := map[string]bool{}
	var mark func(b *build.Instance)
	mark = func(b *build.Instance) {
		for _, imp := range b.Imports {
			key := imp.Dir + "\x00" + imp.PkgName
			if !imported[key] {
				imported[key] = true
				mark(imp)
			}
		}
	}
	for _, b := range built {
		mark(b)
	}
	out := make([]*instance, 0, len(built))
	for _, b := range built {
		in := &instance{build: b, library: imported[b.Dir+"\x00"+b.PkgName], dir: t.userName(b.Dir)}
		if dir, ok := looseDir[b]; ok {
			in.dir = dir
		}
		for _, f := range b.Files {
			if filepath.Dir(f.Filename) == in.dir {
				in.own = append(in.own, f)
			}
		}
		out = append(out, in)
	}
	// In the order of their first files, as files were loaded before
	// packages: a name declared twice is reported at the later one.
	first := func(in *instance) string {
		if len(in.own) > 0 {
			return in.own[0].Filename
		}
		return in.dir
	}
	slices.SortStableFunc(out, func(a, b *instance) int { return strings.Compare(first(a), first(b)) })
	return out
}

// noRegistry refuses to download modules: a reload must not depend on a
// network, and everything grain evaluates is in the tree (and its hash).
type noRegistry struct{}

var errNoRegistry = errors.New("grain does not download CUE modules: vendor the module under cue.mod/pkg in the policy tree")

func (noRegistry) ModFile(context.Context, module.Version) (*modfile.File, error) {
	return nil, errNoRegistry
}

func (noRegistry) Fetch(context.Context, module.Version) (module.SourceLoc, error) {
	return module.SourceLoc{}, errNoRegistry
}

func (noRegistry) ModuleVersions(context.Context, string) ([]string, error) {
	return nil, errNoRegistry
}
