package policies

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Watcher reports changes to a policy tree (design decision 6). It watches
// directories, never single files: editors save by renaming a temporary file
// over the old one, Kubernetes swaps a "..data" symlink beside the files, and
// both replace the inode a file watch would be attached to.
//
// A Watcher only says "something changed"; it does not say what. The reader
// of Changes reloads the whole tree as one snapshot, and may use TreeHash to
// skip reloads of a tree whose policy files did not change, so spurious
// changes cost a hash of the tree and nothing else.
type Watcher struct {
	fs       *fsnotify.Watcher
	log      *slog.Logger
	root     string // absolute, symbolic links not resolved
	debounce time.Duration
	maxDelay time.Duration

	changes   chan struct{}
	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closeErr  error

	// What the last sync found; only the run goroutine uses these once
	// NewWatcher has returned.
	realRoot string              // root with symbolic links resolved; "" if it was missing
	all      map[string]struct{} // directories in which every event counts
	// lookups holds, for each directory in which resolving root looks a
	// name up, the names looked up there: only events naming them count.
	lookups map[string]map[string]struct{}
}

// NewWatcher watches every directory of the tree under root (recursively; new
// subdirectories are added as they appear, removed ones dropped) and sends one
// value on Changes() per burst of changes, after debounce of quiet (a burst
// that never goes quiet still fires at most every maxDelay = 4*debounce).
//
// The directories watched are those the policy loader reads: directories
// whose names start with "." or "_", cue.mod directories but the root's
// (its module file and packages) and symbolic links to directories are
// left out (a link could make the tree a loop). Two more
// kinds are watched because the loader's result depends on them too: the
// directory holding each target of a symbolically linked .cue file (its
// content can change in place), and every directory in which the path root
// is looked up, from "/" down, through every symbolic link on the way. In
// those only events naming what is looked up count: any of them may be
// replaced (a link retargeted, as git-sync does; the link's target or a
// parent directory deleted and made again), and the watches then follow the
// path to wherever it leads now.
//
// If root is a single .cue file, the directory holding it is watched.
func NewWatcher(root string, debounce time.Duration, log *slog.Logger) (*Watcher, error) {
	if debounce <= 0 {
		return nil, fmt.Errorf("engine: watch %s: debounce must be positive, not %v", root, debounce)
	}
	if log == nil {
		log = slog.Default()
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("engine: watch %s: %w", root, err)
	}
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("engine: watch %s: %w", root, err)
	}
	w := &Watcher{
		fs:       fw,
		log:      log.With("root", abs),
		root:     abs,
		debounce: debounce,
		maxDelay: 4 * debounce,
		changes:  make(chan struct{}, 1),
		stop:     make(chan struct{}),
		done:     make(chan struct{}),
	}
	// A tree that cannot be watched fully at start is an error rather than
	// a warning: a daemon that silently misses changes is worse than one
	// that does not start.
	if err := w.sync(w.log.Warn); err != nil {
		fw.Close()
		if errors.Is(err, syscall.ENOSPC) {
			err = fmt.Errorf("%w (too many inotify watches: raise sysctl fs.inotify.max_user_watches)", err)
		}
		return nil, fmt.Errorf("engine: watch %s: %w", root, err)
	}
	go w.run()
	return w, nil
}

// Changes delivers one value per burst of changes. It holds at most one
// pending value: a reader that is busy reloading sees one more value, not
// one per burst it missed, which is all it needs to reload the latest tree.
// The channel is closed by Close.
func (w *Watcher) Changes() <-chan struct{} { return w.changes }

// Close stops watching and closes the Changes channel. It may be called
// more than once.
func (w *Watcher) Close() error {
	w.closeOnce.Do(func() {
		// Stop the goroutine first, so that it is not adding watches to a
		// closed fsnotify watcher.
		close(w.stop)
		<-w.done
		w.closeErr = w.fs.Close()
	})
	return w.closeErr
}

// run collects events into bursts until Close.
func (w *Watcher) run() {
	defer close(w.done)
	defer close(w.changes)

	timer := time.NewTimer(w.debounce)
	timer.Stop()
	defer timer.Stop()
	var (
		pending bool      // a burst is open
		first   time.Time // when it opened
		count   int       // events in it, for the debug log
	)
	note := func() {
		now := time.Now()
		if !pending {
			pending, first, count = true, now, 0
		}
		count++
		wait := min(w.debounce, first.Add(w.maxDelay).Sub(now))
		timer.Reset(wait) // a wait of zero or less fires at once
	}
	for {
		select {
		case <-w.stop:
			return
		case ev, ok := <-w.fs.Events:
			if !ok {
				return
			}
			if w.handle(ev) {
				note()
			}
		case err, ok := <-w.fs.Errors:
			if !ok {
				return
			}
			// The events lost (a queue overflow, typically) may have been
			// anything, including new directories: reload, and re-sync
			// the watches when the burst ends.
			w.log.Warn("policy watch error; reloading the whole tree", "err", err)
			note()
		case <-timer.C:
			pending = false
			w.log.Debug("policy tree changed", "events", count, "burst", time.Since(first).Round(time.Millisecond))
			// Sync before telling the reader: anything that changes after
			// a watch is added is an event, and anything before it is
			// already there when the reader loads the tree.
			if err := w.sync(w.log.Debug); err != nil {
				w.log.Warn("policy watch incomplete", "err", err)
			}
			select {
			case w.changes <- struct{}{}:
			default: // a change is already pending
			}
		}
	}
}

// handle keeps the watches up to date with one event and reports whether the
// event counts as a change.
func (w *Watcher) handle(ev fsnotify.Event) bool {
	if ev.Op == 0 {
		return false
	}
	// fsnotify names the entries of a watch on "/" "//name".
	path := filepath.Clean(ev.Name)
	dir, name := filepath.Dir(path), filepath.Base(path)
	if ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename) {
		// fsnotify drops the watch of a directory that is deleted or
		// moved, but not those of its subdirectories when it is moved
		// out of the tree: they would keep reporting under stale names.
		w.unwatch(path)
	}
	if names, ok := w.lookups[dir]; ok {
		if _, ok := names[name]; ok {
			// Something on the way to the root changed (any event,
			// chmod included: it may make the way passable). Follow
			// the path now rather than when the burst ends, so that
			// the files written into a new target keep the burst open.
			if err := w.sync(w.log.Debug); err != nil {
				w.log.Debug("policy root not watchable yet", "err", err)
			}
			return true
		}
		if _, all := w.all[dir]; !all {
			return false // a sibling of something on the way to the root
		}
	}
	if ev.Has(fsnotify.Create) && w.inTree(path) {
		// Watch a new directory (mkdir, or a whole tree renamed in) now
		// rather than when the burst ends, so that files written into it
		// keep the burst open and later writes are seen.
		if fi, err := os.Lstat(path); err == nil && fi.IsDir() {
			w.watchTree(path)
		}
	}
	if ev.Op == fsnotify.Chmod {
		// A change of mode, owner or ACL alone (also what touch gives)
		// counts where it can change what the loader can read: a policy
		// file, or a directory of the tree. A tree whose content did not
		// change costs the reader a hash of it.
		_, treeDir := w.all[path]
		return treeDir || (strings.HasSuffix(name, ".cue") && !Skipped(name) && !IsTestFile(name))
	}
	return true
}

// inTree reports whether dir would be walked by the loader: it is root or
// below it, and no part of its path below root is skipped.
func (w *Watcher) inTree(dir string) bool {
	if w.realRoot == "" {
		return false
	}
	rel, err := filepath.Rel(w.realRoot, dir)
	if err != nil {
		return false
	}
	if rel == "." {
		return true
	}
	if rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return false
	}
	parts := strings.Split(rel, string(filepath.Separator))
	for i := range parts {
		if skippedBelowRoot(filepath.Join(parts[:i+1]...), true) {
			return false
		}
	}
	return true
}

// watchTree watches dir and the directories below it, as a sync would.
func (w *Watcher) watchTree(dir string) {
	dirs := make(map[string]struct{})
	err := collectDirs(w.realRoot, dir, dirs)
	for d := range dirs {
		w.all[d] = struct{}{}
		err = errors.Join(err, w.add(d))
	}
	if err != nil {
		w.log.Warn("policy watch incomplete", "dir", dir, "err", err)
	}
}

// unwatch drops the watches of path and of everything below it.
func (w *Watcher) unwatch(path string) {
	prefix := path + string(filepath.Separator)
	for _, p := range w.fs.WatchList() {
		if p == path || strings.HasPrefix(p, prefix) {
			// An error only means fsnotify dropped it already.
			_ = w.fs.Remove(p)
			delete(w.all, p)
		}
	}
}

// add watches dir. A directory that is gone already is no error: its removal
// is an event of its parent.
func (w *Watcher) add(dir string) error {
	err := w.fs.Add(dir)
	if err == nil || errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
		return nil
	}
	return err
}

// sync makes the set of watches the one the tree needs now, whatever events
// were lost or handled out of order before. It is cheap next to the reload
// that follows it: a walk of the directories only. A directory on the way to
// the root that cannot be watched is logged with logf, not returned: the
// tree itself is watched without it, only its replacement would be missed.
func (w *Watcher) sync(logf func(string, ...any)) error {
	realRoot, lookups, dirs, err := w.plan()
	want := maps.Clone(dirs)
	for d := range lookups {
		want[d] = struct{}{}
	}
	for _, p := range w.fs.WatchList() {
		if _, ok := want[p]; !ok {
			_ = w.fs.Remove(p)
		}
	}
	for p := range want {
		if aerr := w.add(p); aerr != nil {
			if _, ok := dirs[p]; !ok {
				logf("cannot watch a directory on the way to the policy root: replacing what it holds will go unseen",
					"dir", p, "err", aerr)
				continue
			}
			err = errors.Join(err, aerr)
		}
	}
	w.realRoot, w.lookups, w.all = realRoot, lookups, dirs
	return err
}

// plan lists the directories to watch: see NewWatcher.
func (w *Watcher) plan() (realRoot string, lookups map[string]map[string]struct{}, dirs map[string]struct{}, err error) {
	dirs = make(map[string]struct{})
	real, lookups, err := resolve(w.root)
	if err != nil {
		return "", lookups, dirs, err
	}
	info, err := os.Stat(real)
	if err != nil {
		return "", lookups, dirs, err
	}
	if !info.IsDir() {
		// A single file: its directory is where editors and ConfigMaps
		// act, and every event there counts.
		dirs[filepath.Dir(real)] = struct{}{}
		return "", lookups, dirs, nil
	}
	return real, lookups, dirs, collectDirs(real, real, dirs)
}

// maxLinks is how many symbolic links resolve follows, as Linux's path
// lookup does, before it gives up on a loop.
const maxLinks = 40

// resolve follows the absolute path one name at a time, as the kernel's path
// lookup does, and returns where it leads and, for each directory it looked
// in, the names it looked up there: the entries whose replacement changes
// where path leads. A missing name ends the walk with an error, its lookup
// recorded: its creation is what to wait for.
func resolve(path string) (string, map[string]map[string]struct{}, error) {
	lookups := make(map[string]map[string]struct{})
	names := strings.Split(path, "/")
	cur, links := "/", 0
	for len(names) > 0 {
		name := names[0]
		names = names[1:]
		switch name {
		case "", ".":
			continue
		case "..":
			cur = filepath.Dir(cur) // cur has no links: its parent is its parent
			continue
		}
		if lookups[cur] == nil {
			lookups[cur] = make(map[string]struct{})
		}
		lookups[cur][name] = struct{}{}
		next := filepath.Join(cur, name)
		fi, err := os.Lstat(next)
		if err != nil {
			return "", lookups, err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			cur = next
			continue
		}
		if links++; links > maxLinks {
			return "", lookups, &fs.PathError{Op: "resolve", Path: path, Err: syscall.ELOOP}
		}
		target, err := os.Readlink(next)
		if err != nil {
			return "", lookups, err
		}
		if filepath.IsAbs(target) {
			cur = "/"
		}
		names = append(strings.Split(target, "/"), names...)
	}
	return cur, lookups, nil
}

// collectDirs adds to dirs the directory dir (root or below it), every
// directory below it that the loader walks, and the directory of the
// target of every symbolically linked .cue file in them. Directories that
// vanish during the walk are not an error.
func collectDirs(root, dir string, dirs map[string]struct{}) error {
	var errs error
	walkErr := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == dir {
				return err
			}
			if !errors.Is(err, fs.ErrNotExist) {
				errs = errors.Join(errs, err)
			}
			return nil
		}
		if rel, err := filepath.Rel(root, path); err == nil && rel != "." && skippedBelowRoot(rel, d.IsDir()) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			dirs[path] = struct{}{}
			return nil
		}
		// WalkDir reports a link to a directory as a link and does not
		// follow it; only links to .cue files are followed, as the
		// loader does.
		if d.Type()&fs.ModeSymlink != 0 && strings.HasSuffix(d.Name(), ".cue") {
			if target, err := filepath.EvalSymlinks(path); err == nil {
				dirs[filepath.Dir(target)] = struct{}{}
			}
		}
		return nil
	})
	if walkErr != nil && !errors.Is(walkErr, fs.ErrNotExist) {
		errs = errors.Join(walkErr, errs)
	}
	return errs
}

// TreeHash returns the hex SHA-256 of the policy files under root that the
// policy loader reads, as relative paths and contents: .cue files, including
// symbolic links to files, outside directories and files whose names start
// with "." or "_", but test files (*_test.cue), with the root's module file
// and the packages of its cue.mod; symbolic links to directories are not
// followed. root may also be a single .cue file.
//
// The hash does not depend on where the tree is, nor on anything the loader
// ignores, so a reload loop can skip reloading a tree whose hash did not
// change, and export the hash of the tree it applied.
func TreeHash(root string) (string, error) {
	names, err := Files(root)
	if err != nil {
		return "", fmt.Errorf("policies: hash %s: %w", root, err)
	}
	files := make([]sourceFile, len(names))
	for i, name := range names {
		src, err := readBounded(name)
		if err != nil {
			return "", fmt.Errorf("policies: hash %s: %w", root, err)
		}
		files[i] = sourceFile{name: name, src: src}
	}
	return hashFiles(root, files), nil
}

// hashFiles is TreeHash of files read from root: Load hashes the bytes it
// evaluates with it, so the hash in force names exactly those.
func hashFiles(root string, files []sourceFile) string {
	h := sha256.New()
	// Length-prefix each field, so that no two different trees hash the
	// same bytes (a path is followed by content that could look like one).
	field := func(b []byte) {
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(b))))
		h.Write(b)
	}
	for _, f := range files {
		// Paths below the root, so the hash does not depend on where the
		// tree is.
		rel, err := filepath.Rel(root, f.name)
		if err != nil || rel == "." {
			rel = filepath.Base(f.name)
		}
		field([]byte(filepath.ToSlash(rel)))
		field(f.src)
	}
	return hex.EncodeToString(h.Sum(nil))
}
