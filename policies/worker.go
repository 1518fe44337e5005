package policies

import (
	"bytes"
	"context"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"syscall"
	"time"
)

// WorkerEnv, set in a process's environment, makes it a policy worker: a
// program that embeds one calls ServeWorker before anything else (grain's
// main does).
const WorkerEnv = "GRAIN_POLICY_WORKER"

// Limits bound one evaluation of a tree in a Worker.
type Limits struct {
	// Timeout is the longest one evaluation may take.
	Timeout time.Duration
	// MemoryBytes is the most heap one evaluation may use.
	MemoryBytes uint64
}

// DefaultLimits leave a tree of MaxTreeBytes room on a small device: such
// a tree takes about 3 s and 200 MiB here.
var DefaultLimits = Limits{Timeout: 30 * time.Second, MemoryBytes: 512 << 20}

// Worker evaluates policy trees in a child process. A CUE evaluation
// cannot be interrupted from inside the process that runs it, and some
// inputs make it run for hours or take all memory; ending the process is
// the only sure stop. The child keeps a Cache between loads, so a reload
// unifies only what changed, as an in-process Cache would.
//
// The child enforces Limits itself and answers with an error naming the
// file it was evaluating; the parent kills it if it does not answer in
// time (the backstop), and when Load's context is cancelled (a newer
// change, grain stopping). A Worker serves one Load at a time.
type Worker struct {
	// Command starts the worker process: an executable that calls
	// ServeWorker when WorkerEnv is set. Its environment gets WorkerEnv.
	Command []string
	Limits  Limits

	mu   sync.Mutex
	proc *workerProcess
	// cached is what the worker's cache held after its last load: a new
	// worker (after a stop) starts with it, so a stop costs no full
	// evaluation of the next tree.
	cached map[[32]byte]Policy
}

type workerProcess struct {
	cmd    *exec.Cmd
	enc    *gob.Encoder
	dec    *gob.Decoder
	stdin  io.Closer
	stderr *bytes.Buffer
	seeded bool
}

type workerRequest struct {
	Root   string
	Limits Limits
	// Seed fills a new worker's cache.
	Seed map[[32]byte]Policy
}

type workerResponse struct {
	Snapshot *Snapshot
	Errors   ErrorList // problems in the policies
	Failure  string    // any other error
	// Cached names the cache key of each policy of Snapshot that the
	// worker's cache now holds.
	Cached map[string][32]byte
}

// NewWorker returns a Worker that runs this program's own executable: the
// running one, even if the file was replaced since (an upgrade), so that
// the worker and its caller are always the same version.
func NewWorker(limits Limits) (*Worker, error) {
	const self = "/proc/self/exe"
	if _, err := os.Stat(self); err != nil {
		return nil, fmt.Errorf("policies: the worker runs this executable: %w", err)
	}
	return &Worker{Command: []string{self}, Limits: limits}, nil
}

// ErrSuperseded is the cause (context.WithCancelCause) with which a caller
// abandons a Load because a newer tree is to be loaded: the worker is then
// replaced at once, so that the newer load does not wait for it to start.
// Cancelled for any other cause, the worker is stopped only.
var ErrSuperseded = errors.New("a newer change arrived")

// Load is Load, run in the worker process within the worker's limits.
func (w *Worker) Load(ctx context.Context, root string) (*Snapshot, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.proc == nil {
		p, err := w.start()
		if err != nil {
			return nil, err
		}
		w.proc = p
	}
	p := w.proc
	req := workerRequest{Root: root, Limits: w.Limits}
	if !p.seeded {
		req.Seed, p.seeded = w.cached, true
	}
	if err := p.enc.Encode(req); err != nil {
		return nil, w.failed(fmt.Errorf("policies: sending to the worker: %w", err))
	}
	answer := make(chan error, 1)
	var resp workerResponse
	go func() { answer <- p.dec.Decode(&resp) }()
	// The worker stops itself at the limit; this is for a worker that
	// cannot (stopped, or starved of CPU by the evaluation).
	backstop := time.NewTimer(w.Limits.Timeout + 5*time.Second)
	defer backstop.Stop()
	select {
	case err := <-answer:
		if err != nil {
			return nil, w.failed(fmt.Errorf("policies: evaluating %s: the worker ended: %w", root, err))
		}
	case <-ctx.Done():
		if errors.Is(context.Cause(ctx), ErrSuperseded) {
			w.restart()
		} else {
			// grain stops, or the caller gave up: no worker is started
			// that nothing would ask to load (the next Load starts one).
			w.stop()
		}
		return nil, ctx.Err()
	case <-backstop.C:
		w.stop()
		return nil, ErrorList{{Pos: Position{File: root},
			Msg: fmt.Sprintf("evaluation did not finish within %v and was stopped: look for comprehensions or references that multiply", w.Limits.Timeout)}}
	}
	switch {
	case resp.Failure != "":
		err := errors.New(resp.Failure)
		if len(resp.Errors) > 0 {
			// The worker stopped at a limit and has exited.
			w.stop()
			return nil, resp.Errors
		}
		return nil, err
	case len(resp.Errors) > 0:
		return nil, resp.Errors
	case resp.Snapshot == nil:
		return nil, w.failed(errors.New("policies: the worker answered nothing"))
	}
	w.cached = map[[32]byte]Policy{}
	for _, pol := range resp.Snapshot.Policies {
		if key, ok := resp.Cached[pol.Name]; ok {
			w.cached[key] = pol
		}
	}
	return resp.Snapshot, nil
}

// Pid is the worker process's id, or 0 when none runs.
func (w *Worker) Pid() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.proc == nil {
		return 0
	}
	return w.proc.cmd.Process.Pid
}

// Close ends the worker process.
func (w *Worker) Close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stop()
}

func (w *Worker) start() (*workerProcess, error) {
	if len(w.Command) == 0 {
		return nil, errors.New("policies: the worker has no command")
	}
	cmd := exec.Command(w.Command[0], w.Command[1:]...)
	cmd.Env = append(os.Environ(), WorkerEnv+"=1")
	// The worker must not outlive grain, even one killed with -9.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	p := &workerProcess{cmd: cmd, enc: gob.NewEncoder(stdin), dec: gob.NewDecoder(stdout), stdin: stdin, stderr: &bytes.Buffer{}}
	cmd.Stderr = &limitedBuffer{buf: p.stderr, max: 4096}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("policies: starting the worker: %w", err)
	}
	return p, nil
}

// failed ends the worker after a broken exchange and says what it printed.
func (w *Worker) failed(err error) error {
	p := w.proc
	w.stop()
	if p != nil {
		if s := bytes.TrimSpace(p.stderr.Bytes()); len(s) > 0 {
			return fmt.Errorf("%w: %s", err, s)
		}
		if p.cmd.ProcessState != nil {
			return fmt.Errorf("%w (%s)", err, p.cmd.ProcessState)
		}
	}
	return err
}

// restart ends the worker and starts the next one now: a load abandoned
// for a newer change (ErrSuperseded) is followed by that change's load,
// which then need not wait for the process to start.
func (w *Worker) restart() {
	w.stop()
	if p, err := w.start(); err == nil {
		w.proc = p
	}
}

func (w *Worker) stop() {
	p := w.proc
	if p == nil {
		return
	}
	w.proc = nil
	p.stdin.Close()
	p.cmd.Process.Kill()
	p.cmd.Wait()
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	mu  sync.Mutex
	buf *bytes.Buffer
	max int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.max - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

// ServeWorker is the worker process: it answers Worker's requests on in
// and out until in ends, then returns. An evaluation past its limits ends
// the process, after answering with an error that names the file.
func ServeWorker(in io.Reader, out io.Writer) error {
	nameThreads()
	dec, enc := gob.NewDecoder(in), gob.NewEncoder(out)
	var cache Cache
	// An evaluation allocates a lot that dies soon: collecting less often
	// halves a 1000-rule load here. The soft limit, half the bound, makes
	// the collector work hard well before garbage alone could pass it.
	debug.SetGCPercent(400)
	for {
		var req workerRequest
		if err := dec.Decode(&req); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		// One answer per request: the evaluation's or the guard's, which
		// ever comes first; the guard's ends the process.
		var mu sync.Mutex
		answered := false
		answer := func(r workerResponse, last bool) error {
			mu.Lock()
			defer mu.Unlock()
			if answered {
				return nil
			}
			answered = true
			err := enc.Encode(r)
			if last {
				os.Exit(3) // under mu: the evaluation answers nothing more
			}
			return err
		}
		if req.Seed != nil {
			cache.seed(req.Seed)
		}
		if req.Limits.MemoryBytes > 0 {
			debug.SetMemoryLimit(int64(req.Limits.MemoryBytes / 2))
		}
		done := make(chan struct{})
		go guard(req, &cache, done, func(e Error) {
			answer(workerResponse{Errors: ErrorList{e}, Failure: e.Error()}, true)
		})
		snap, err := cache.Load(req.Root)
		close(done)
		var resp workerResponse
		var list ErrorList
		switch {
		case errors.As(err, &list):
			resp.Errors = list
		case err != nil:
			resp.Failure = err.Error()
		default:
			resp.Snapshot = snap
			resp.Cached = cache.keys()
		}
		if err := answer(resp, false); err != nil {
			return err
		}
		// The evaluation's garbage is large and short-lived: give it back.
		debug.FreeOSMemory()
	}
}

// nameThreads names the worker's threads grain-worker, not "exe" (from
// /proc/self/exe), in ps and top. Threads started later inherit the name.
//
// The worker keeps grain's priority: below it, an evaluation starved by a
// busy grain (a flood of events) or busy neighbours made reloads, and in
// an emulated test guest starts, take many times longer.
func nameThreads() {
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, t := range tasks {
		os.WriteFile("/proc/self/task/"+t.Name()+"/comm", []byte("grain-worker"), 0)
	}
}

// guard watches one evaluation until done is closed and calls stop, once,
// when it passes its limits.
func guard(req workerRequest, cache *Cache, done <-chan struct{}, stop func(Error)) {
	deadline := time.NewTimer(req.Limits.Timeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	where := func() Position {
		if f := cache.progress.current(); f != "" {
			return Position{File: f}
		}
		return Position{File: req.Root}
	}
	for {
		select {
		case <-done:
			return
		case <-deadline.C:
			stop(Error{Pos: where(), Msg: fmt.Sprintf("evaluation did not finish within %v and was stopped: look for comprehensions or references that multiply (--eval-timeout sets the bound)", req.Limits.Timeout)})
			return
		case <-tick.C:
			if req.Limits.MemoryBytes == 0 {
				continue
			}
			metrics.Read(sample)
			if used := sample[0].Value.Uint64(); used > req.Limits.MemoryBytes {
				stop(Error{Pos: where(), Msg: fmt.Sprintf("evaluation used more than %d MiB and was stopped: look for comprehensions or references that multiply (--eval-memory sets the bound)", req.Limits.MemoryBytes>>20)})
				return
			}
		}
	}
}

// ServeWorkerIfAsked makes this process a policy worker when its
// environment has WorkerEnv: it serves until its input ends, then exits.
// A program that runs a Worker calls it first thing in main (a test binary
// that runs one, in TestMain).
func ServeWorkerIfAsked() {
	if os.Getenv(WorkerEnv) == "" {
		return
	}
	if err := ServeWorker(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "grain policy worker:", err)
		os.Exit(1)
	}
	os.Exit(0)
}
