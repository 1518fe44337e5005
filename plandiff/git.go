package plandiff

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// git runs git in the current directory; its error carries git's message.
func git(args ...string) ([]byte, error) {
	cmd := exec.Command("git", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = err.Error()
		}
		return nil, fmt.Errorf("git %s: %s", strings.Join(args, " "), msg)
	}
	return out, nil
}

// Checkout writes the policy tree of a git revision of the repository the
// current directory is in into a new directory under tmp, and returns it.
// rev is REV (the tree at the current directory's place in the
// repository, as `git show REV:./` has it) or REV:PATH (PATH from the
// repository's root).
func Checkout(rev, tmp string) (string, error) {
	commit, path, hasPath := strings.Cut(rev, ":")
	if _, err := git("rev-parse", "--verify", "--quiet", commit+"^{commit}"); err != nil {
		return "", fmt.Errorf("%s: neither a directory nor a revision of the git repository here", rev)
	}
	if !hasPath {
		prefix, err := git("rev-parse", "--show-prefix")
		if err != nil {
			return "", err
		}
		path = strings.TrimSpace(string(prefix))
	}
	top, err := git("rev-parse", "--show-toplevel")
	if err != nil {
		return "", err
	}
	// git archive refuses a current directory git does not track.
	archive, err := git("-C", strings.TrimSpace(string(top)), "archive", "--format=tar", commit+":"+strings.TrimSuffix(path, "/"))
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp(tmp, "grain-diff-")
	if err != nil {
		return "", err
	}
	if err := untar(bytes.NewReader(archive), dir); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("%s: %w", rev, err)
	}
	return dir, nil
}

// untar writes the directories, files and symbolic links of a tar stream
// from git archive under dir.
func untar(r io.Reader, dir string) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		name := filepath.Clean(h.Name)
		if filepath.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") {
			return fmt.Errorf("archive entry %q lies outside the tree", h.Name)
		}
		path := filepath.Join(dir, name)
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(path, 0o755)
		case tar.TypeReg:
			err = writeFile(path, tr)
		case tar.TypeSymlink:
			if err = os.MkdirAll(filepath.Dir(path), 0o755); err == nil {
				err = os.Symlink(h.Linkname, path)
			}
		}
		if err != nil {
			return err
		}
	}
}

func writeFile(path string, r io.Reader) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
