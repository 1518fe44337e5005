package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	cueerrors "cuelang.org/go/cue/errors"
	"cuelang.org/go/cue/format"
	"cuelang.org/go/cue/parser"
)

// cmdFmt formats CUE files as `cue fmt` does (cuelang.org/go/cue/format at
// the version grain is built with), so that a repository's CI needs no cue
// binary to keep its policies formatted.
//
// Without --check, files that are not formatted are rewritten in place;
// with it, they are listed and left alone. Exit 0 when every file was (or
// now is) formatted, 1 when --check found one or a file does not parse,
// 2 on a usage error.
func cmdFmt(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fmt", flag.ContinueOnError)
	fs.SetOutput(stderr)
	check := fs.Bool("check", false, "list the files that are not formatted and exit 1 if there are any; change nothing")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: grain fmt [--check] [PATH...]   (default PATH: the current directory)")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	paths := fs.Args()
	if len(paths) == 0 {
		paths = []string{"."}
	}
	var files []string
	for _, p := range paths {
		found, err := cueFilesUnder(p)
		if err != nil {
			fmt.Fprintf(stderr, "grain fmt: %v\n", err)
			return 2
		}
		files = append(files, found...)
	}
	code := 0
	for _, name := range files {
		changed, err := formatFile(name, !*check)
		switch {
		case err != nil:
			fmt.Fprintln(stderr, err)
			code = 1
		case changed && *check:
			fmt.Fprintln(stdout, name)
			code = 1
		}
	}
	return code
}

// cueFilesUnder lists path if it is a file, or else the .cue files below
// it, leaving out what `cue fmt` leaves out: cue.mod (vendored modules are
// someone else's) and directories whose names start with "." or "_".
// Test files (*_test.cue) are formatted like any other.
func cueFilesUnder(path string) ([]string, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !info.IsDir() {
		return []string{path}, nil
	}
	var files []string
	err = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if p != path && (name == "cue.mod" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(name, ".cue") && !strings.HasPrefix(name, ".") && d.Type().IsRegular() {
			files = append(files, p)
		}
		return nil
	})
	return files, err
}

// formatFile reports whether the file at name is not formatted, and when
// write is set rewrites it formatted (keeping its mode). A syntax error is
// returned as file:line:col: message.
func formatFile(name string, write bool) (bool, error) {
	src, err := os.ReadFile(name)
	if err != nil {
		return false, err
	}
	syntax, err := parser.ParseFile(name, src, parser.ParseComments)
	if err != nil {
		var lines []string
		for _, e := range cueerrors.Errors(err) {
			format, args := e.Msg()
			lines = append(lines, fmt.Sprintf("%s: %s: not formatted: fix the syntax first", e.Position(), fmt.Sprintf(format, args...)))
		}
		return false, errors.New(strings.Join(lines, "\n"))
	}
	out, err := format.Node(syntax)
	if err != nil {
		return false, fmt.Errorf("%s: %v", name, err)
	}
	if bytes.Equal(out, src) {
		return false, nil
	}
	if !write {
		return true, nil
	}
	info, err := os.Stat(name)
	if err != nil {
		return true, err
	}
	// Write beside the file and rename over it, so that a reader (grain's
	// watcher, an editor) never sees half a file.
	tmp, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".fmt-*")
	if err != nil {
		return true, err
	}
	_, werr := tmp.Write(out)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr, os.Chmod(tmp.Name(), info.Mode().Perm())); err != nil {
		os.Remove(tmp.Name())
		return true, err
	}
	if err := os.Rename(tmp.Name(), name); err != nil {
		os.Remove(tmp.Name())
		return true, err
	}
	return true, nil
}
