package pipeline

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// JSONSink writes each event as a JSON line (Event.AppendJSON) to a
// writer of its own: a goroutine that takes batches of lines from a
// bounded queue, so that a stdout whose reader is slow or stalled holds up
// neither the pipeline nor the other sinks (OTLP): when the queue is full
// and the writer has waited in one write for longer than stallAfter, a
// batch is dropped and counted (QueueFull); while the writer keeps up, a
// full queue makes the pipeline wait, as a synchronous write would.
//
// Flush hands the batch being built to the writer and waits until the
// writer wrote it, unless the writer has been waiting in one write for
// longer than stallAfter: then the lines stay queued, and Flush returns.
// A failed write counts its lines as failed; once the reader is gone (a
// broken pipe) nothing is written any more and every event is counted as
// failed. Drain waits for the queue to empty at exit, for as long as its
// context allows; Abandon gives up what is left.
type JSONSink struct {
	// Log, when set before the first Emit, hears of write failures: the
	// first of each run of them, a full queue, and the reader going away.
	Log *slog.Logger

	out   io.Writer
	line  []byte
	stamp timeStamp
	batch []byte // lines not yet handed to the writer
	lines uint64 // in batch

	mu       sync.Mutex
	cond     *sync.Cond // the writer took, or finished, a chunk
	queue    []jsonChunk
	queued   int       // bytes in queue
	handed   uint64    // lines handed to the writer, ever
	done     uint64    // lines the writer finished with, written or failed
	writing  time.Time // when the write in progress began; zero between writes
	failing  bool      // the last write failed
	dropping bool      // the last hand-off found the queue full
	started  bool

	exported  atomic.Uint64
	failed    atomic.Uint64
	queueFull atomic.Uint64
	gone      atomic.Bool // no more writes: the reader is gone or the sink abandoned
	abandon   chan struct{}
	abandoned sync.Once
}

type jsonChunk struct {
	data  []byte
	lines uint64
}

const (
	// jsonBatchBytes is the size of the batches handed to the writer.
	jsonBatchBytes = 64 << 10
	// jsonQueueBytes bounds the lines waiting for the writer: at about
	// 200 bytes a line, some 5,000 events.
	jsonQueueBytes = 1 << 20
	// stallAfter is how long a write may wait before Flush stops waiting
	// for the writer.
	stallAfter = 100 * time.Millisecond
)

// errAbandoned fails the writes that Abandon ended or that come after it.
var errAbandoned = errors.New("abandoned: the reader did not take the events in time")

// NewJSONSink writes to w; name it "stdout" in metrics.
func NewJSONSink(w io.Writer) *JSONSink {
	s := &JSONSink{out: w, abandon: make(chan struct{})}
	s.cond = sync.NewCond(&s.mu)
	return s
}

func (s *JSONSink) Name() string { return "stdout" }

func (s *JSONSink) Emit(ev *Event) {
	if s.gone.Load() {
		s.failed.Add(1)
		return
	}
	s.line = ev.appendJSON(s.line[:0], &s.stamp)
	if len(s.batch)+len(s.line) > jsonBatchBytes {
		s.hand()
	}
	s.batch = append(s.batch, s.line...)
	s.lines++
}

// hand gives the batch to the writer, or drops it when the queue is full.
func (s *JSONSink) hand() {
	if s.lines == 0 {
		return
	}
	data, lines := s.batch, s.lines
	s.batch, s.lines = make([]byte, 0, jsonBatchBytes), 0
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gone.Load() {
		s.failed.Add(lines)
		return
	}
	// A writer that keeps up gets back-pressure, as a synchronous write
	// would give: wait for room. Only one that waits on its reader past
	// stallAfter makes the sink drop.
	for s.queued+len(data) > jsonQueueBytes && !s.gone.Load() &&
		(s.writing.IsZero() || time.Since(s.writing) <= stallAfter) {
		s.waitLocked(10 * time.Millisecond)
	}
	if s.gone.Load() {
		s.failed.Add(lines)
		return
	}
	if s.queued+len(data) > jsonQueueBytes {
		s.queueFull.Add(lines)
		if !s.dropping && s.Log != nil {
			s.Log.Warn("stdout does not keep up: events are dropped and counted (grain.events.lost, reason queue_full, sink stdout)")
		}
		s.dropping = true
		return
	}
	s.dropping = false
	if !s.started {
		s.started = true
		go s.writer()
	}
	s.queue = append(s.queue, jsonChunk{data, lines})
	s.queued += len(data)
	s.handed += lines
	s.cond.Broadcast()
}

func (s *JSONSink) Flush() {
	s.hand()
	s.mu.Lock()
	defer s.mu.Unlock()
	target := s.handed
	for s.done < target && !s.gone.Load() {
		if !s.writing.IsZero() && time.Since(s.writing) > stallAfter {
			return // the reader is slow: the lines stay queued
		}
		s.waitLocked(10 * time.Millisecond)
	}
}

// Drain waits until the writer wrote every line handed to it, the reader
// is gone, or ctx ends: at exit, a bounded wait.
func (s *JSONSink) Drain(ctx context.Context) {
	s.hand()
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.done < s.handed && !s.gone.Load() && ctx.Err() == nil {
		s.waitLocked(10 * time.Millisecond)
	}
}

// waitLocked waits for the writer's next step, or d. s.mu is held.
func (s *JSONSink) waitLocked(d time.Duration) {
	t := time.AfterFunc(d, func() {
		s.mu.Lock()
		s.cond.Broadcast()
		s.mu.Unlock()
	})
	s.cond.Wait()
	t.Stop()
}

// writer writes the queued chunks, one at a time, until the sink is gone.
func (s *JSONSink) writer() {
	s.mu.Lock()
	for {
		for len(s.queue) == 0 {
			if s.gone.Load() {
				s.mu.Unlock()
				return
			}
			s.cond.Wait()
		}
		c := s.queue[0]
		s.queue = s.queue[1:]
		s.queued -= len(c.data)
		gone := s.gone.Load()
		if !gone {
			s.writing = time.Now()
		}
		s.mu.Unlock()
		var err error = errAbandoned
		if !gone {
			err = s.write(c.data)
		}
		s.mu.Lock()
		s.writing = time.Time{}
		if err != nil {
			s.failed.Add(c.lines)
			s.report(err)
		} else {
			s.exported.Add(c.lines)
			if s.failing && s.Log != nil {
				s.Log.Info("stdout: writing events again")
			}
			s.failing = false
		}
		s.done += c.lines
		s.cond.Broadcast()
	}
}

// report logs the first failure of a run, and the reader going away.
// s.mu is held.
func (s *JSONSink) report(err error) {
	if errors.Is(err, syscall.EPIPE) {
		if !s.gone.Swap(true) && s.Log != nil {
			s.Log.Warn("stdout is closed (no reader): events are no longer written to it and are counted as lost (grain.events.lost, reason export_failed, sink stdout)")
		}
		return
	}
	if !s.failing && s.Log != nil && !errors.Is(err, errAbandoned) {
		s.Log.Warn("stdout: write failed; its events are counted as lost (grain.events.lost, reason export_failed, sink stdout)", "error", err)
	}
	s.failing = true
}

// write writes p whole on a goroutine of its own and waits for it, or for
// Abandon.
func (s *JSONSink) write(p []byte) error {
	result := make(chan error, 1) // buffered: an abandoned write ends too
	go func() {
		_, err := s.out.Write(p)
		result <- err
	}()
	select {
	case err := <-result:
		return err
	case <-s.abandon:
		select {
		case err := <-result: // it ended meanwhile
			return err
		default:
		}
		// The write goes on without us; p is not used again.
		return errAbandoned
	}
}

// Abandon ends a write that waits for the reader, and every later one:
// their lines, and the events emitted afterwards, are counted as failed;
// when it returns, every line handed to the writer is counted. It may be
// called from any goroutine, and more than once.
func (s *JSONSink) Abandon() {
	s.abandoned.Do(func() {
		s.gone.Store(true)
		close(s.abandon)
		s.mu.Lock()
		for _, c := range s.queue {
			s.failed.Add(c.lines)
			s.done += c.lines
		}
		s.queue, s.queued = nil, 0
		s.cond.Broadcast()
		// The write in progress ends at once: wait for its count.
		for !s.writing.IsZero() {
			s.cond.Wait()
		}
		s.mu.Unlock()
	})
}

func (s *JSONSink) Stats() SinkStats {
	s.mu.Lock()
	pending := s.handed - s.done
	s.mu.Unlock()
	return SinkStats{Exported: s.exported.Load(), Failed: s.failed.Load(), QueueFull: s.queueFull.Load(), Pending: pending}
}
