package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/engine"
	"github.com/grain-ebpf/grain/engine/hook"
	"github.com/grain-ebpf/grain/pipeline"
	"github.com/grain-ebpf/grain/policies"
)

// Reloader loads a policy tree and applies it, all or nothing: load,
// validate, compile, write into the kernel; on any error the rule set in
// force stays and the error is kept in the status.
type Reloader struct {
	Dir        string
	Interfaces []string // --interface override
	Monitor    bool     // --monitor: every policy in monitor mode
	Engine     *engine.Engine
	// Hooks applies the kernel-hook policies. Nil when this kernel cannot
	// run them (HooksErr says why): a tree with such policies then fails
	// to apply, naming the reason, and packet policies work as before.
	Hooks    *hook.Hooks
	HooksErr error
	Log      *slog.Logger
	// Pipeline, when set, gets the tree's event pipeline with every
	// successful reload: the stages are part of the snapshot.
	Pipeline *pipeline.Pipeline

	// Load evaluates the tree (policies.Worker.Load, bounded and in a
	// process of its own); nil evaluates it in this process.
	Load func(ctx context.Context, dir string) (*policies.Snapshot, error)

	reloading    sync.Mutex // held by the reload in progress
	requestsOnce sync.Once
	requests     chan bool // a pending request, and whether it forces
	mu           sync.Mutex
	status       engine.Status
	cache        policies.Cache // decoded policies reused across reloads
	applied      *codegen.Plan  // the plan in force
}

// Reload applies the tree if its content changed since the last success
// (or always, when force is set: SIGHUP, a new interface). Cancelling ctx
// abandons the reload while the tree is being evaluated (a newer change
// came, grain stops): nothing is applied and the status is unchanged.
// Once the kernel is being written it completes.
func (r *Reloader) Reload(ctx context.Context, force bool) error {
	// One reload at a time; r.mu is not held while the tree is evaluated,
	// which can take long: the status socket answers meanwhile.
	r.reloading.Lock()
	defer r.reloading.Unlock()
	hash, err := policies.TreeHash(r.Dir)
	r.mu.Lock()
	inForce := r.status.PolicyHash
	r.mu.Unlock()
	if err == nil && !force && hash == inForce {
		r.mu.Lock()
		// The tree on disk is the one in force (a broken edit reverted):
		// an earlier failure no longer describes it.
		r.status.LastResult, r.status.LastError = "success", ""
		r.mu.Unlock()
		return nil
	}
	var snap *policies.Snapshot
	if err == nil {
		r.Log.Info("loading policies", "policies", r.Dir)
		snap, err = r.load(ctx)
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		r.Log.Info("reload abandoned", "policies", r.Dir, "reason", context.Cause(ctx))
		return ctxErr
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.status.Policies = r.Dir
	if err == nil {
		err = r.apply(snap)
	}
	r.status.LastReload = time.Now()
	if err != nil {
		r.status.LastResult, r.status.LastError = "failure", err.Error()
		r.status.ReloadsError++
		r.Log.Error("reload failed; the previous policy stays in force", "policies", r.Dir, "error", err.Error())
		return err
	}
	r.status.LastResult, r.status.LastError = "success", ""
	r.status.LastSuccess = r.status.LastReload
	r.status.ReloadsOK++
	// The hash of the bytes evaluated: the tree may have changed since it
	// was hashed above (the change's own reload follows).
	hash = snap.Hash
	r.status.PolicyHash = hash
	r.status.Interfaces = r.Engine.Interfaces()
	// A reload's garbage (the CUE evaluation of the tree) is large and
	// short-lived: hand it back to the OS now rather than when the runtime
	// gets to it, so a small device keeps its memory. After the rule set is
	// in force, so it adds nothing to the reload's latency.
	go debug.FreeOSMemory()
	r.Log.Info("policies applied", "policies", r.Dir, "hash", hash[:12], "rules", len(r.status.Rules),
		"interfaces", r.status.Interfaces)
	return nil
}

// load evaluates the tree with Load, or in this process when it is nil.
func (r *Reloader) load(ctx context.Context) (*policies.Snapshot, error) {
	if r.Load != nil {
		return r.Load(ctx, r.Dir)
	}
	return r.cache.Load(r.Dir)
}

// Serve runs the reloads that Request asks for, one at a time, until ctx
// ends; it then abandons the reload in progress and returns. A request
// that comes while a reload evaluates the tree abandons that reload: its
// tree is already stale.
func (r *Reloader) Serve(ctx context.Context) {
	requests := r.pending()
	for {
		var force bool
		select {
		case <-ctx.Done():
			return
		case force = <-requests:
		}
		reloadCtx, cancel := context.WithCancelCause(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			r.Reload(reloadCtx, force)
		}()
		for running := true; running; {
			select {
			case <-done:
				running = false
			case next := <-requests:
				// Carry the newer request over; a forced one stays forced.
				cancel(policies.ErrSuperseded)
				r.Request(force || next)
			}
		}
		cancel(nil)
	}
}

// Request asks Serve for a reload; force as in Reload. Requests that come
// before Serve takes them are merged into one.
func (r *Reloader) Request(force bool) {
	requests := r.pending()
	for {
		select {
		case requests <- force:
			return
		default:
		}
		// One is pending: merge with it.
		select {
		case pending := <-requests:
			force = force || pending
		default:
		}
	}
}

func (r *Reloader) pending() chan bool {
	r.requestsOnce.Do(func() { r.requests = make(chan bool, 1) })
	return r.requests
}

func (r *Reloader) apply(snap *policies.Snapshot) error {
	plan, err := codegen.Compile(snap.Policies, codegen.Options{Interfaces: r.Interfaces, Monitor: r.Monitor})
	if err != nil {
		return err
	}
	if len(plan.Rules) == 0 && plan.Hooks == nil {
		return fmt.Errorf("%s holds no policy: keeping the rules in force (delete grain's pins or stop it to enforce nothing)", r.Dir)
	}
	if plan.Hooks != nil && r.Hooks == nil {
		return fmt.Errorf("kernel hook policies cannot run here: %w", r.HooksErr)
	}
	stages, err := pipeline.Compile(snap.Pipeline)
	if err != nil {
		return err
	}
	// All or nothing: each half (kernel hooks, packet rules) is written
	// where nothing reads it yet, with what it adds attached, and only
	// when both are ready are they committed (one word each); until then
	// packets and hooked calls see the rules in force, and a failure
	// detaches what was attached for this reload. Kernel hooks first:
	// attaching to a function the kernel lacks is the likelier failure,
	// and the packet half waits for a grace period. A tree that had and
	// has no hooks skips them: their write waits for a grace period too,
	// which packet-only reloads need not pay.
	hadHooks := r.applied != nil && r.applied.Hooks != nil
	var halves []Prepared
	if r.Hooks != nil && (plan.Hooks != nil || hadHooks) {
		hooks, err := r.Hooks.Prepare(plan)
		if err != nil {
			return err
		}
		halves = append(halves, hooks)
	}
	packets, err := r.Engine.Prepare(plan)
	if err != nil {
		abortAll(halves)
		return err
	}
	// The packet half commits first: its commit is the one with more
	// than a word to write (taking over an earlier grain's links).
	if err := commitAll(append([]Prepared{packets}, halves...)); err != nil {
		return err
	}
	r.applied = plan
	if r.Pipeline != nil {
		r.Pipeline.Set(stages)
	}
	r.status.Rules, r.status.Monitored = r.status.Rules[:0], nil
	for _, rule := range plan.Rules {
		r.status.Rules = append(r.status.Rules, rule.Policy)
		if rule.Monitor {
			r.status.Monitored = append(r.status.Monitored, rule.Policy)
		}
	}
	if plan.Hooks != nil {
		for _, rule := range plan.Hooks.Rules {
			r.status.Rules = append(r.status.Rules, rule.Policy)
			if rule.Monitor {
				r.status.Monitored = append(r.status.Monitored, rule.Policy)
			}
		}
	}
	return nil
}

// Status returns a copy of the reload status.
func (r *Reloader) Status() engine.Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.status
	s.Rules = append([]string(nil), s.Rules...)
	s.Monitored = append([]string(nil), s.Monitored...)
	s.Verdicts, _ = r.Engine.InterfaceCounters() // none if the map cannot be read
	s.Interfaces = r.Engine.Interfaces()         // links follow interface events between reloads
	s.InterfaceHooks = r.Engine.InterfaceHooks()
	s.Unjudged, _ = r.Engine.PacketStats() // zero if the map cannot be read
	if r.Hooks != nil {
		s.Hooks = r.Hooks.Attachments()
	}
	return s
}

// ServeStatus answers every connection on a root-only Unix socket at path
// with the status as JSON, until the listener is closed. Only a stale socket
// (one no process answers on) at path is replaced; anything else there is
// an error. The socket is 0600 from the moment it exists.
func (r *Reloader) ServeStatus(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("status socket %s: %w", path, err)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	ln, err := listenOwnerOnly(path)
	if err != nil {
		return nil, fmt.Errorf("status socket %s: %w", path, err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					r.Log.Warn("status socket", "error", err)
				}
				return
			}
			json.NewEncoder(c).Encode(r.Status())
			c.Close()
		}
	}()
	return ln, nil
}

// removeStaleSocket makes room at path for a new socket: it removes a socket
// that no process answers on (a grain that was killed) and refuses anything
// else, a socket in use or a file or directory that is not grain's to delete.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("status socket %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		kind := "a special file"
		switch {
		case fi.Mode().IsRegular():
			kind = "a regular file"
		case fi.IsDir():
			kind = "a directory"
		case fi.Mode().Type() == fs.ModeSymlink:
			kind = "a symbolic link"
		}
		return fmt.Errorf("status socket %s: %s is there, not a socket: grain will not replace it (remove it, or give --status-socket another path)", path, kind)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("status socket %s: another grain answers on it (give this one its own --status-socket)", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("status socket %s: a socket is there that may be in use (%v): remove it if it is stale, or give --status-socket another path", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("status socket %s: removing the stale socket: %w", path, err)
	}
	return nil
}

// listenOwnerOnly listens on a new Unix socket at path with mode 0600 from
// its creation. bind() creates the socket file with the socket inode's mode
// less the umask; an fchmod of the unbound socket sets that mode (Linux), so
// the file never has the umask's wider mode, and the process-wide umask is
// left alone (other goroutines may be creating files).
func listenOwnerOnly(path string) (net.Listener, error) {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	f := os.NewFile(uintptr(fd), path) // closes fd
	defer f.Close()
	if err := syscall.Fchmod(fd, 0o600); err != nil {
		return nil, os.NewSyscallError("fchmod", err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		return nil, os.NewSyscallError("bind", err)
	}
	fi, err := os.Lstat(path)
	if err == nil && fi.Mode().Perm()&0o077 != 0 {
		err = fmt.Errorf("the kernel created it with mode %v, not 0600", fi.Mode().Perm())
	}
	if err == nil && fi.Mode().Perm() != 0o600 {
		// A umask that takes the owner's bits: give them back, which
		// opens it to no one else.
		err = os.Chmod(path, 0o600)
	}
	if err == nil {
		err = os.NewSyscallError("listen", syscall.Listen(fd, syscall.SOMAXCONN))
	}
	var ln net.Listener
	if err == nil {
		ln, err = net.FileListener(f) // a dup of fd
	}
	if err != nil {
		os.Remove(path)
		return nil, err
	}
	return &ownedSocket{Listener: ln, path: path, file: fi}, nil
}

// ownedSocket removes its socket file on Close, unless another process has
// replaced it since.
type ownedSocket struct {
	net.Listener
	path string
	file fs.FileInfo
}

func (s *ownedSocket) Close() error {
	err := s.Listener.Close()
	if fi, lerr := os.Lstat(s.path); lerr == nil && os.SameFile(fi, s.file) {
		os.Remove(s.path)
	}
	return err
}

// CountMetrics names the in-kernel count metrics of the plan in force.
func (r *Reloader) CountMetrics() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.applied == nil || r.applied.Hooks == nil {
		return nil
	}
	var names []string
	for _, rule := range r.applied.Hooks.Rules {
		if rule.Count != nil && !slices.Contains(names, rule.Count.Metric) {
			names = append(names, rule.Count.Metric)
		}
	}
	slices.Sort(names)
	return names
}

// Applied is the plan in force, nil before the first successful reload.
func (r *Reloader) Applied() *codegen.Plan {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.applied
}
