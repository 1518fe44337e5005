package policies

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A .cue name that is not a regular file is an error naming it, found
// without opening it: opening a FIFO for reading would block the load
// until a writer came (the test would hang), and /dev/zero never ends.
func TestLoadRefusesFilesThatAreNotRegular(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "web.cue"), webPolicy)
	fifo := filepath.Join(dir, "pipe.cue")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("pipe.cue", filepath.Join(dir, "to-pipe.cue")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub", filepath.Join(dir, "dir.cue")); err != nil {
		t.Fatal(err)
	}
	_, err := Load(dir)
	want := strings.Join([]string{
		dir + "/dir.cue: is a symbolic link to " + dir + "/sub, a directory: a policy file must be a regular file; remove it or rename it so it does not end in .cue",
		dir + "/pipe.cue: is a FIFO (named pipe): a policy file must be a regular file; remove it or rename it so it does not end in .cue",
		dir + "/to-pipe.cue: is a symbolic link to " + dir + "/pipe.cue, a FIFO (named pipe): a policy file must be a regular file; remove it or rename it so it does not end in .cue",
	}, "\n")
	if _, ok := err.(ErrorList); !ok || err.Error() != want {
		t.Errorf("got %T\n%v\nwant\n%s", err, err, want)
	}
	// A root that is itself a FIFO is refused too.
	_, err = Load(fifo)
	if _, ok := err.(ErrorList); !ok || err.Error() != fifo+": is a FIFO (named pipe): a policy file must be a regular file; remove it or rename it so it does not end in .cue" {
		t.Errorf("root FIFO: got %v", err)
	}
}

// A link out of the tree is refused with where it points, and nothing of
// what it points to is read or shown.
func TestLoadRefusesSymlinksOutOfTheTree(t *testing.T) {
	outside := t.TempDir()
	secret := filepath.Join(outside, "secret.cue")
	writeFile(t, secret, "password: \"hunter2\" & 3\n")
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "web.cue"), webPolicy)
	if err := os.Mkdir(filepath.Join(dir, "lan"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, target := range map[string]string{"secret.cue": secret, "zero.cue": "/dev/zero"} {
		if err := os.Symlink(target, filepath.Join(dir, "lan", name)); err != nil {
			t.Fatal(err)
		}
	}
	_, err := Load(dir)
	want := strings.Join([]string{
		dir + "/lan/secret.cue: is a symbolic link to " + secret + ", outside the policy tree " + dir + ": grain reads only files inside the tree; copy the file into the tree, or link to a file inside it",
		dir + "/lan/zero.cue: is a symbolic link to /dev/zero, outside the policy tree " + dir + ": grain reads only files inside the tree; copy the file into the tree, or link to a file inside it",
	}, "\n")
	if err == nil || err.Error() != want {
		t.Errorf("got\n%v\nwant\n%s", err, want)
	}
	if err != nil && strings.Contains(err.Error(), "hunter2") {
		t.Errorf("the error shows the content of a file outside the tree: %v", err)
	}
}

// A ConfigMap mounted below the tree root: links resolve inside the tree
// through ..data, which is followed although its name starts with a dot.
func TestLoadFollowsConfigMapMountBelowTheRoot(t *testing.T) {
	dir := t.TempDir()
	mount := filepath.Join(dir, "team-a")
	writeFile(t, filepath.Join(mount, "..2026_01_02_03_04_05.123", "web.cue"), webPolicy)
	for target, name := range map[string]string{"..2026_01_02_03_04_05.123": "..data", "..data/web.cue": "web.cue"} {
		if err := os.Symlink(target, filepath.Join(mount, name)); err != nil {
			t.Fatal(err)
		}
	}
	s := mustLoad(t, dir)
	if len(s.Files) != 1 || s.Files[0] != filepath.Join(mount, "web.cue") {
		t.Errorf("Files = %q, want [%s]", s.Files, filepath.Join(mount, "web.cue"))
	}
}
