package policies

import (
	"strings"

	"cuelang.org/go/cue/ast"
	"cuelang.org/go/cue/token"
)

// embedHint says why @embed cannot work in a policy tree.
const embedHint = "grain evaluates only the tree's .cue files, so @embed and @extern(embed) cannot work: write the value into a .cue file"

// sourcePosition finds a position for an error CUE gives none (a
// structural cycle, an embedding): the field at path in the instance's
// files, or the attribute the message is about, or else the start of
// file, so that every error has a line.
func sourcePosition(files []*ast.File, file string, path fieldPath, msg string) (Position, string) {
	if strings.Contains(msg, "embed") {
		for _, f := range files {
			if p := embedAttribute(f); p.IsValid() {
				return positionOf(p), msg + ": " + embedHint
			}
		}
	}
	for _, f := range files {
		if p := fieldAt(f.Decls, path); p.IsValid() {
			return positionOf(p), msg
		}
	}
	return Position{File: file, Line: 1, Column: 1}, msg
}

// fieldAt returns where the deepest field along path is declared among
// decls (the first declaration, when a label is declared several times).
func fieldAt(decls []ast.Decl, path fieldPath) token.Pos {
	if len(path) == 0 {
		return token.NoPos
	}
	for _, decl := range decls {
		f, ok := decl.(*ast.Field)
		if !ok {
			continue
		}
		name, _, err := ast.LabelName(f.Label)
		if err != nil || name != cueLabel(path[0]) {
			continue
		}
		if lit, ok := f.Value.(*ast.StructLit); ok {
			if p := fieldAt(lit.Elts, path[1:]); p.IsValid() {
				return p
			}
		}
		return f.Label.Pos()
	}
	return token.NoPos
}

// embedAttribute returns the position of the file's first @embed
// attribute, or else of its @extern(embed).
func embedAttribute(syntax *ast.File) token.Pos {
	embed, extern := token.NoPos, token.NoPos
	ast.Walk(syntax, func(n ast.Node) bool {
		if a, ok := n.(*ast.Attribute); ok {
			switch key, _ := a.Split(); {
			case key == "embed" && !embed.IsValid():
				embed = a.Pos()
			case key == "extern" && !extern.IsValid():
				extern = a.Pos()
			}
		}
		return !embed.IsValid()
	}, nil)
	if embed.IsValid() {
		return embed
	}
	return extern
}
