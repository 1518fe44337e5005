package policies

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fsnotify/fsnotify"
)

const (
	testDebounce = 100 * time.Millisecond
	// arrival bounds how long a change may take to arrive; generous, as
	// test machines are busy.
	arrival = 3 * time.Second
	// quiet is how long to wait to be sure no second change follows a
	// first: longer than a debounce after the last event of a burst.
	quiet = 3*testDebounce + 100*time.Millisecond
)

// startWatcher watches root with the test debounce, closed at the end of the
// test.
func startWatcher(t *testing.T, root string) *Watcher {
	t.Helper()
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	w, err := NewWatcher(root, testDebounce, log)
	if err != nil {
		t.Fatalf("NewWatcher: %v", err)
	}
	t.Cleanup(func() {
		if err := w.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return w
}

// waitChange fails the test unless a change arrives.
func waitChange(t *testing.T, w *Watcher, what string) {
	t.Helper()
	select {
	case _, ok := <-w.Changes():
		if !ok {
			t.Fatalf("%s: Changes closed", what)
		}
	case <-time.After(arrival):
		t.Fatalf("%s: no change within %v", what, arrival)
	}
}

// assertQuiet fails the test if a change arrives.
func assertQuiet(t *testing.T, w *Watcher, what string) {
	t.Helper()
	select {
	case <-w.Changes():
		t.Fatalf("%s: unexpected change", what)
	case <-time.After(quiet):
	}
}

// expectOne fails the test unless exactly one change arrives.
func expectOne(t *testing.T, w *Watcher, what string) {
	t.Helper()
	waitChange(t, w, what)
	assertQuiet(t, w, what+": a second change")
}

func policy(n int) string {
	return fmt.Sprintf("p%d: {kind: \"xdp\"}\n", n)
}

func TestWatchSaveInPlace(t *testing.T) {
	root := t.TempDir()
	file := filepath.Join(root, "policy.cue")
	writeFile(t, file, policy(1))
	w := startWatcher(t, root)

	writeFile(t, file, policy(2))
	expectOne(t, w, "write in place")

	// touch of a file the loader does not read is no change.
	other := filepath.Join(root, "README.md")
	writeFile(t, other, "notes")
	waitChange(t, w, "README written")
	now := time.Now()
	if err := os.Chtimes(other, now, now); err != nil {
		t.Fatal(err)
	}
	assertQuiet(t, w, "touch README.md")
}

// A change of mode can make an unreadable policy file or directory readable:
// it is a change (the reader's tree hash tells whether the content changed).
func TestWatchChmod(t *testing.T) {
	root := t.TempDir()
	file := filepath.Join(root, "sub", "policy.cue")
	writeFile(t, file, policy(1))
	w := startWatcher(t, root)

	if err := os.Chmod(file, 0o600); err != nil {
		t.Fatal(err)
	}
	expectOne(t, w, "chmod of a policy file")
	if err := os.Chmod(filepath.Dir(file), 0o700); err != nil {
		t.Fatal(err)
	}
	expectOne(t, w, "chmod of a directory of the tree")
	if err := os.Chmod(root, 0o700); err != nil {
		t.Fatal(err)
	}
	expectOne(t, w, "chmod of the root")
}

// Editors write a temporary file and rename it over the one edited.
func TestWatchSaveByRename(t *testing.T) {
	for _, tmp := range []string{".policy.cue.swp", "policy.cue~", "sub/.#policy.cue"} {
		t.Run(strings.ReplaceAll(tmp, "/", "_"), func(t *testing.T) {
			root := t.TempDir()
			file := filepath.Join(root, filepath.Dir(tmp), "policy.cue")
			writeFile(t, file, policy(1))
			w := startWatcher(t, root)

			tmpPath := filepath.Join(root, tmp)
			writeFile(t, tmpPath, policy(2))
			if err := os.Rename(tmpPath, file); err != nil {
				t.Fatal(err)
			}
			expectOne(t, w, "save by rename")

			// The new inode is seen as well as the old one was.
			writeFile(t, file, policy(3))
			expectOne(t, w, "write after the rename")
		})
	}
}

func TestWatchMoveFileIntoTree(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	w := startWatcher(t, root)

	src := filepath.Join(outside, "new.cue")
	writeFile(t, src, policy(1))
	// Writing outside the tree, even beside it, is no change.
	assertQuiet(t, w, "write outside")
	if err := os.Rename(src, filepath.Join(root, "new.cue")); err != nil {
		t.Fatal(err)
	}
	expectOne(t, w, "mv into the tree")
}

func TestWatchNewSubdirectory(t *testing.T) {
	root := t.TempDir()
	w := startWatcher(t, root)

	file := filepath.Join(root, "team", "policy.cue")
	writeFile(t, file, policy(1)) // mkdir, then write inside
	expectOne(t, w, "new directory with a file")
	writeFile(t, file, policy(2))
	expectOne(t, w, "write in the new directory")

	deep := filepath.Join(root, "a", "b", "c", "policy.cue")
	writeFile(t, deep, policy(3)) // mkdir -p
	expectOne(t, w, "new nested directories")
	writeFile(t, deep, policy(4))
	expectOne(t, w, "write in a new nested directory")
}

func TestWatchDirectoryMovedIntoTree(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	prepared := filepath.Join(outside, "team")
	for _, f := range []string{"policy.cue", "x/y/deep.cue"} {
		writeFile(t, filepath.Join(prepared, f), policy(1))
	}
	w := startWatcher(t, root)

	moved := filepath.Join(root, "team")
	if err := os.Rename(prepared, moved); err != nil {
		t.Fatal(err)
	}
	expectOne(t, w, "directory moved in")
	writeFile(t, filepath.Join(moved, "x", "y", "deep.cue"), policy(2))
	expectOne(t, w, "write below the moved directory")
	writeFile(t, filepath.Join(moved, "policy.cue"), policy(2))
	expectOne(t, w, "write in the moved directory")
}

func TestWatchDirectoryMovedWithinAndOut(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	writeFile(t, filepath.Join(root, "a", "b", "policy.cue"), policy(1))
	w := startWatcher(t, root)

	// Renamed within the tree: watched under its new name.
	if err := os.Rename(filepath.Join(root, "a"), filepath.Join(root, "c")); err != nil {
		t.Fatal(err)
	}
	expectOne(t, w, "rename within the tree")
	writeFile(t, filepath.Join(root, "c", "b", "policy.cue"), policy(2))
	expectOne(t, w, "write in the renamed directory")

	// Moved out: a change, then no more watches on it.
	gone := filepath.Join(outside, "c")
	if err := os.Rename(filepath.Join(root, "c"), gone); err != nil {
		t.Fatal(err)
	}
	expectOne(t, w, "moved out")
	writeFile(t, filepath.Join(gone, "b", "policy.cue"), policy(3))
	assertQuiet(t, w, "write in a directory moved out")
	real, err := filepath.EvalSymlinks(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range w.fs.WatchList() {
		if strings.HasPrefix(p, filepath.Join(real, "c")) {
			t.Errorf("still watching %s", p)
		}
	}
}

func TestWatchDeletes(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "one.cue"), policy(1))
	writeFile(t, filepath.Join(root, "two.cue"), policy(2))
	writeFile(t, filepath.Join(root, "sub", "three.cue"), policy(3))
	writeFile(t, filepath.Join(root, "sub", "deeper", "four.cue"), policy(4))
	w := startWatcher(t, root)

	if err := os.Remove(filepath.Join(root, "one.cue")); err != nil {
		t.Fatal(err)
	}
	expectOne(t, w, "file deleted")
	if err := os.RemoveAll(filepath.Join(root, "sub")); err != nil {
		t.Fatal(err)
	}
	expectOne(t, w, "directory deleted")

	// A directory of the same name made again is watched again.
	writeFile(t, filepath.Join(root, "sub", "deeper", "five.cue"), policy(5))
	expectOne(t, w, "directory made again")
	writeFile(t, filepath.Join(root, "sub", "deeper", "five.cue"), policy(6))
	expectOne(t, w, "write in the directory made again")
}

// A checkout writes many files at once, in new and old directories.
func TestWatchBatch(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "old.cue"), policy(0))
	w := startWatcher(t, root)

	for i := range 50 {
		dir := []string{"", "net", "net/edge", "kernel"}[i%4]
		writeFile(t, filepath.Join(root, dir, fmt.Sprintf("p%02d.cue", i)), policy(i))
	}
	if err := os.Remove(filepath.Join(root, "old.cue")); err != nil {
		t.Fatal(err)
	}
	expectOne(t, w, "50 files")
}

// configMapUpdate swaps a Kubernetes ConfigMap volume the way kubelet's
// atomic writer does: new timestamped directory, "..data_tmp" link to it
// renamed over "..data", old directory removed.
func configMapUpdate(t *testing.T, root, oldDir, newDir, content string) {
	t.Helper()
	writeFile(t, filepath.Join(root, newDir, "policy.cue"), content)
	tmp := filepath.Join(root, "..data_tmp")
	if err := os.Symlink(newDir, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(root, "..data")); err != nil {
		t.Fatal(err)
	}
	if oldDir != "" {
		if err := os.RemoveAll(filepath.Join(root, oldDir)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestWatchConfigMapSwap(t *testing.T) {
	root := t.TempDir()
	configMapUpdate(t, root, "", "..2026_11_25_v1", policy(1))
	if err := os.Symlink("..data/policy.cue", filepath.Join(root, "policy.cue")); err != nil {
		t.Fatal(err)
	}
	h1 := treeHash(t, root)
	w := startWatcher(t, root)

	configMapUpdate(t, root, "..2026_11_25_v1", "..2026_11_25_v2", policy(2))
	expectOne(t, w, "ConfigMap update")
	h2 := treeHash(t, root)
	if h1 == h2 {
		t.Error("TreeHash did not change with the ConfigMap")
	}

	// And the next update too, once the watches follow the new directory.
	configMapUpdate(t, root, "..2026_11_25_v2", "..2026_11_25_v3", policy(3))
	expectOne(t, w, "second ConfigMap update")
	if treeHash(t, root) == h2 {
		t.Error("TreeHash did not change with the second ConfigMap update")
	}
}

// A linked .cue file changes when its target is written in place, also in a
// directory the loader skips (links out of the tree are refused by the
// loader).
func TestWatchLinkedFileTarget(t *testing.T) {
	root := t.TempDir()
	target := filepath.Join(root, "_shared", "common.cue")
	writeFile(t, target, policy(1))
	if err := os.Symlink(target, filepath.Join(root, "common.cue")); err != nil {
		t.Fatal(err)
	}
	w := startWatcher(t, root)

	writeFile(t, target, policy(2))
	expectOne(t, w, "write to a link's target")
}

// Links to directories are not followed: they could loop, and the loader
// does not read through them.
func TestWatchSkipsLinkedAndHiddenDirectories(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	writeFile(t, filepath.Join(root, "sub", "policy.cue"), policy(1))
	writeFile(t, filepath.Join(outside, "other.cue"), policy(2))
	for _, d := range []string{".git/objects", "_drafts", "cue.mod/other", "sub/cue.mod"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(root, filepath.Join(root, "sub", "loop")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(root, "elsewhere")); err != nil {
		t.Fatal(err)
	}
	w := startWatcher(t, root)

	real, err := filepath.EvalSymlinks(root)
	if err != nil {
		t.Fatal(err)
	}
	got := w.fs.WatchList()
	slices.Sort(got)
	// The root's cue.mod holds the module file and vendored packages; the
	// rest of it, and a cue.mod below the root, are not read.
	want := []string{real, filepath.Join(real, "cue.mod"), filepath.Join(real, "sub")}
	for d := filepath.Dir(real); ; d = filepath.Dir(d) {
		want = append(want, d) // where root's path is looked up
		if d == "/" {
			break
		}
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("watching %q, want %q", got, want)
	}

	writeFile(t, filepath.Join(outside, "other.cue"), policy(3))
	writeFile(t, filepath.Join(root, ".git", "objects", "ab"), "blob")
	writeFile(t, filepath.Join(root, "_drafts", "x.cue"), policy(4))
	assertQuiet(t, w, "writes behind a linked or skipped directory")
}

// A root that is a link is watched where it points, and when the link is
// swapped (as git-sync does) the watches follow it.
func TestWatchLinkedRoot(t *testing.T) {
	base := t.TempDir()
	v1, v2 := filepath.Join(base, "v1"), filepath.Join(base, "v2")
	writeFile(t, filepath.Join(v1, "policy.cue"), policy(1))
	writeFile(t, filepath.Join(v2, "policy.cue"), policy(2))
	root := filepath.Join(base, "current")
	if err := os.Symlink("v1", root); err != nil {
		t.Fatal(err)
	}
	w := startWatcher(t, root)

	writeFile(t, filepath.Join(v1, "policy.cue"), policy(3))
	expectOne(t, w, "write through a linked root")

	tmp := filepath.Join(base, "current.tmp")
	if err := os.Symlink("v2", tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, root); err != nil {
		t.Fatal(err)
	}
	expectOne(t, w, "root link swapped")
	writeFile(t, filepath.Join(v2, "policy.cue"), policy(4))
	expectOne(t, w, "write in the new root")
	writeFile(t, filepath.Join(v1, "policy.cue"), policy(5))
	assertQuiet(t, w, "write in the old root")
}

// A root deleted and made again (a fresh clone, say) is watched again.
func TestWatchRootRemade(t *testing.T) {
	root := filepath.Join(t.TempDir(), "policies")
	writeFile(t, filepath.Join(root, "policy.cue"), policy(1))
	w := startWatcher(t, root)

	if err := os.RemoveAll(root); err != nil {
		t.Fatal(err)
	}
	waitChange(t, w, "root removed")
	writeFile(t, filepath.Join(root, "policy.cue"), policy(2))
	waitChange(t, w, "root made again")
	assertQuiet(t, w, "after the root was made again")
	writeFile(t, filepath.Join(root, "sub", "policy.cue"), policy(3))
	expectOne(t, w, "write in the root made again")
}

// The directory a linked root points to, deleted and made again (rm -rf T;
// mkdir T; cp ...), is followed, however the events fall into bursts, and
// so are the later edits in it.
func TestWatchLinkedRootTargetRemade(t *testing.T) {
	for _, quietBetween := range []bool{false, true} {
		t.Run(fmt.Sprintf("quiet_between_%v", quietBetween), func(t *testing.T) {
			base := t.TempDir()
			target := filepath.Join(base, "T2")
			writeFile(t, filepath.Join(target, "policy.cue"), policy(1))
			root := filepath.Join(base, "pol")
			if err := os.Symlink("T2", root); err != nil {
				t.Fatal(err)
			}
			w := startWatcher(t, root)

			for i := range 2 {
				if err := os.RemoveAll(target); err != nil {
					t.Fatal(err)
				}
				if quietBetween {
					// The burst ends while the link points nowhere.
					waitChange(t, w, "target removed")
				}
				writeFile(t, filepath.Join(target, "sub", "policy.cue"), policy(10+i))
				waitChange(t, w, "target made again")
				assertQuiet(t, w, "after the target was made again")
				writeFile(t, filepath.Join(target, "sub", "policy.cue"), policy(20+i))
				expectOne(t, w, "write in the target made again")
			}
		})
	}
}

// A parent directory of the root deleted and made again is followed.
func TestWatchParentRemade(t *testing.T) {
	base := t.TempDir()
	parent := filepath.Join(base, "etc", "grain")
	root := filepath.Join(parent, "policies")
	writeFile(t, filepath.Join(root, "policy.cue"), policy(1))
	w := startWatcher(t, root)

	for i, remade := range []string{parent, filepath.Dir(parent)} {
		if err := os.RemoveAll(remade); err != nil {
			t.Fatal(err)
		}
		waitChange(t, w, "parent removed")
		writeFile(t, filepath.Join(root, "policy.cue"), policy(10+i))
		waitChange(t, w, "parent made again")
		assertQuiet(t, w, "after the parent was made again")
		writeFile(t, filepath.Join(root, "policy.cue"), policy(20+i))
		expectOne(t, w, "write in the root of a parent made again")
		// A sibling of a directory on the way is no change.
		writeFile(t, filepath.Join(base, "other", "x.cue"), policy(30+i))
		assertQuiet(t, w, "write beside the way to the root")
	}
}

// A link among the root's parents (/etc/grain -> /opt/grain-v1) swapped to
// another directory is followed; the old directory no longer counts.
func TestWatchParentLinkSwapped(t *testing.T) {
	base := t.TempDir()
	for _, v := range []string{"v1", "v2"} {
		writeFile(t, filepath.Join(base, "opt", v, "policies", "policy.cue"), policy(1))
	}
	link := filepath.Join(base, "etc")
	if err := os.Symlink(filepath.Join(base, "opt", "v1"), link); err != nil {
		t.Fatal(err)
	}
	w := startWatcher(t, filepath.Join(link, "policies"))

	tmp := link + ".tmp"
	if err := os.Symlink("opt/v2", tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, link); err != nil {
		t.Fatal(err)
	}
	expectOne(t, w, "parent link swapped")
	writeFile(t, filepath.Join(base, "opt", "v2", "policies", "policy.cue"), policy(2))
	expectOne(t, w, "write under the new parent")
	writeFile(t, filepath.Join(base, "opt", "v1", "policies", "policy.cue"), policy(3))
	assertQuiet(t, w, "write under the old parent")
}

// resolve leads where the kernel's lookup does, and names every entry the
// lookup depends on.
func TestResolve(t *testing.T) {
	base, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(base, "a", "b", "policy.cue"), policy(1))
	links := map[string]string{
		"rel":    "a/b",
		"up":     "a/../a/b",
		"abs":    filepath.Join(base, "a"),
		"chain":  "rel",
		"a/loop": "../a/loop",
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(base, name)); err != nil {
			t.Fatal(err)
		}
	}
	for _, path := range []string{"rel", "up", "abs/b", "chain", "chain/policy.cue"} {
		want, err := filepath.EvalSymlinks(filepath.Join(base, path))
		if err != nil {
			t.Fatal(err)
		}
		got, lookups, err := resolve(filepath.Join(base, path))
		if err != nil || got != want {
			t.Errorf("resolve(%s) = %q, %v; want %q", path, got, err, want)
		}
		if _, ok := lookups[base][strings.Split(path, "/")[0]]; !ok {
			t.Errorf("resolve(%s) did not record the lookup of its first name: %v", path, lookups)
		}
	}
	_, lookups, err := resolve(filepath.Join(base, "chain"))
	if err != nil {
		t.Fatal(err)
	}
	for dir, name := range map[string]string{"/": strings.Split(base, "/")[1], base: "rel", filepath.Join(base, "a"): "b"} {
		if _, ok := lookups[dir][name]; !ok {
			t.Errorf("resolve(chain) did not look %q up in %s: %v", name, dir, lookups)
		}
	}
	if _, _, err := resolve(filepath.Join(base, "a", "loop")); !errors.Is(err, syscall.ELOOP) {
		t.Errorf("resolve of a link loop: %v, want ELOOP", err)
	}
	_, lookups, err = resolve(filepath.Join(base, "missing", "x"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("resolve of a missing path: %v, want not exist", err)
	}
	if _, ok := lookups[base]["missing"]; !ok {
		t.Errorf("resolve of a missing path did not record the missing name: %v", lookups)
	}
}

func TestWatchSingleFileRoot(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "policy.cue")
	writeFile(t, file, policy(1))
	w := startWatcher(t, file)

	tmp := filepath.Join(dir, ".policy.cue.swp")
	writeFile(t, tmp, policy(2))
	if err := os.Rename(tmp, file); err != nil {
		t.Fatal(err)
	}
	expectOne(t, w, "save by rename of a single-file root")
}

// A burst that never goes quiet still gives changes, every maxDelay.
func TestWatchMaxDelay(t *testing.T) {
	root := t.TempDir()
	w := startWatcher(t, root)

	file := filepath.Join(root, "policy.cue")
	stop := time.After(6 * w.maxDelay)
	tick := time.NewTicker(testDebounce / 5)
	defer tick.Stop()
	changes := 0
burst:
	for i := 0; ; i++ {
		select {
		case <-w.Changes():
			changes++
		case <-tick.C:
			writeFile(t, file, policy(i))
		case <-stop:
			break burst
		}
	}
	// Six maxDelays of writes give six changes; ask for fewer to allow for
	// a slow machine, but more than a single debounce at the end would.
	if changes < 3 {
		t.Errorf("%d changes during a %v burst, want one per %v", changes, 6*w.maxDelay, w.maxDelay)
	}
}

// lockedBuffer is a log destination safe for the watcher's goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Lost events (an inotify queue overflow) are logged and answered with a
// reload of everything.
func TestWatchErrorMeansChange(t *testing.T) {
	var logs lockedBuffer
	w, err := NewWatcher(t.TempDir(), testDebounce, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	// Stand in for fsnotify's reader, which sends what inotify reports.
	w.fs.Errors <- fsnotify.ErrEventOverflow
	expectOne(t, w, "overflow")
	if !strings.Contains(logs.String(), fsnotify.ErrEventOverflow.Error()) {
		t.Errorf("overflow not logged; log:\n%s", logs.String())
	}
}

func TestWatchClose(t *testing.T) {
	before := runtime.NumGoroutine()
	w, err := NewWatcher(t.TempDir(), testDebounce, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case _, ok := <-w.Changes():
		if ok {
			t.Fatal("a change after Close")
		}
	case <-time.After(arrival):
		t.Fatal("Changes not closed by Close")
	}
	if err := w.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}

	// The watcher's goroutine and fsnotify's have ended.
	deadline := time.Now().Add(arrival)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after Close, %d before:\n%s",
				runtime.NumGoroutine(), before, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestNewWatcherErrors(t *testing.T) {
	if _, err := NewWatcher(filepath.Join(t.TempDir(), "missing"), testDebounce, nil); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing root: %v, want not exist", err)
	}
	if _, err := NewWatcher(t.TempDir(), 0, nil); err == nil {
		t.Error("zero debounce: no error")
	}
}

func treeHash(t *testing.T, root string) string {
	t.Helper()
	h, err := TreeHash(root)
	if err != nil {
		t.Fatalf("TreeHash: %v", err)
	}
	return h
}

func TestTreeHash(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	writeFile(t, filepath.Join(root, "a.cue"), policy(1))
	writeFile(t, filepath.Join(root, "net", "b.cue"), policy(2))
	// A link to a file in a directory the loader skips, inside the tree
	// (the loader refuses links out of it).
	linked := filepath.Join(root, "_shared", "linked.cue")
	writeFile(t, linked, policy(3))
	if err := os.Symlink(linked, filepath.Join(root, "linked.cue")); err != nil {
		t.Fatal(err)
	}
	h := treeHash(t, root)
	if len(h) != 64 {
		t.Errorf("hash %q is not hex SHA-256", h)
	}
	if again := treeHash(t, root); again != h {
		t.Errorf("unchanged tree: %s then %s", h, again)
	}

	// Nothing the loader ignores changes the hash.
	writeFile(t, filepath.Join(root, ".a.cue.swp"), "garbage")
	writeFile(t, filepath.Join(root, "a.cue~"), "garbage")
	writeFile(t, filepath.Join(root, "_draft.cue"), "garbage")
	writeFile(t, filepath.Join(root, "notes.txt"), "garbage")
	writeFile(t, filepath.Join(root, "cue.mod", "notes.cue"), "garbage")
	writeFile(t, filepath.Join(root, "cue.mod", "other", "x.cue"), "garbage")
	writeFile(t, filepath.Join(root, "net", "cue.mod", "module.cue"), "garbage")
	writeFile(t, filepath.Join(root, "a_test.cue"), "garbage")
	writeFile(t, filepath.Join(root, ".git", "x.cue"), "garbage")
	writeFile(t, filepath.Join(outside, "dir", "x.cue"), "garbage")
	if err := os.Symlink(filepath.Join(outside, "dir"), filepath.Join(root, "dirlink")); err != nil {
		t.Fatal(err)
	}
	if got := treeHash(t, root); got != h {
		t.Errorf("ignored files changed the hash: %s then %s", h, got)
	}

	// Nor does where the tree is.
	if got := treeHash(t, root+string(filepath.Separator)); got != h {
		t.Errorf("same tree by another name: %s then %s", h, got)
	}

	// What the loader reads does.
	seen := map[string]string{h: "start"}
	changed := func(what string) {
		t.Helper()
		got := treeHash(t, root)
		if prev, ok := seen[got]; ok {
			t.Errorf("%s: same hash as %s", what, prev)
		}
		seen[got] = what
	}
	writeFile(t, filepath.Join(root, "a.cue"), policy(9))
	changed("content")
	writeFile(t, linked, policy(8))
	changed("linked file content")
	if err := os.Rename(filepath.Join(root, "net", "b.cue"), filepath.Join(root, "net", "c.cue")); err != nil {
		t.Fatal(err)
	}
	changed("rename")
	writeFile(t, filepath.Join(root, "new.cue"), "")
	changed("new empty file")
	writeFile(t, filepath.Join(root, "cue.mod", "module.cue"), `module: "example.com/p"`)
	changed("the module file")
	writeFile(t, filepath.Join(root, "cue.mod", "pkg", "example.com", "lib", "lib.cue"), "package lib")
	changed("a vendored package")

	// A dangling link is an error, as it is to the loader.
	if err := os.Symlink(filepath.Join(root, "_shared", "missing.cue"), filepath.Join(root, "dangling.cue")); err != nil {
		t.Fatal(err)
	}
	if _, err := TreeHash(root); err == nil {
		t.Error("dangling link: no error")
	}
}

func TestTreeHashSingleFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "policy.cue")
	writeFile(t, file, policy(1))
	h := treeHash(t, file)
	writeFile(t, filepath.Join(dir, "other.cue"), policy(2))
	if got := treeHash(t, file); got != h {
		t.Error("a file beside a single-file root changed its hash")
	}
	writeFile(t, file, policy(3))
	if got := treeHash(t, file); got == h {
		t.Error("content change of a single-file root kept its hash")
	}
}

// The module file, packages vendored under cue.mod/pkg (made after the
// watch started, too) and imported packages of the tree are read by the
// loader: a change to any of them is a change.
func TestWatchModuleAndImportedPackages(t *testing.T) {
	root := t.TempDir()
	writeFile(t, filepath.Join(root, "cue.mod", "module.cue"), "module: \"example.com/p\"\n")
	writeFile(t, filepath.Join(root, "lib", "lib.cue"), "package lib\n")
	writeFile(t, filepath.Join(root, "fw", "fw.cue"), "package fw\n")
	w := startWatcher(t, root)

	writeFile(t, filepath.Join(root, "cue.mod", "module.cue"), "module: \"example.com/q\"\n")
	expectOne(t, w, "module.cue written")
	writeFile(t, filepath.Join(root, "lib", "lib.cue"), "package lib\n\n#x: 1\n")
	expectOne(t, w, "imported package written")
	vendored := filepath.Join(root, "cue.mod", "pkg", "example.com", "dep", "dep.cue")
	writeFile(t, vendored, "package dep\n")
	waitChange(t, w, "package vendored")
	drainChanges(w) // its new directories may make a second burst
	writeFile(t, vendored, "package dep\n\n#y: 2\n")
	expectOne(t, w, "vendored package written")
	// A test file is not read: no change.
	writeFile(t, filepath.Join(root, "fw", "fw_test.cue"), "package fw\n")
	waitChange(t, w, "test file created") // a new name in a tree directory counts; its content does not
	drainChanges(w)
	now := time.Now()
	if err := os.Chtimes(filepath.Join(root, "fw", "fw_test.cue"), now, now); err != nil {
		t.Fatal(err)
	}
	assertQuiet(t, w, "touch of a test file")
}

// drainChanges reads changes until none arrives for quiet.
func drainChanges(w *Watcher) {
	for {
		select {
		case <-w.Changes():
			continue
		case <-time.After(quiet):
		}
		return
	}
}
