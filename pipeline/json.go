package pipeline

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
)

// JSONSink writes each event as a JSON line (Event.AppendJSON), buffered
// and flushed whenever the queue is empty.
//
// A write waits for the reader, as a pipe makes it: a slow reader holds up
// the pipeline and the queue in front of it drops and counts events. A
// failed write counts its lines as failed; once the reader is gone (a
// broken pipe) nothing is written any more and every event is counted as
// failed. Abandon ends a write that waits for a reader that does not read,
// so that a stalled stdout cannot hold up grain's exit.
type JSONSink struct {
	// Log, when set before the first Emit, hears of write failures: the
	// first of each run of them, and the reader going away.
	Log *slog.Logger

	out      io.Writer
	w        *bufio.Writer
	line     []byte
	stamp    timeStamp
	buffered uint64 // lines in w not yet flushed
	failing  bool   // the last write failed
	exported atomic.Uint64
	failed   atomic.Uint64

	// Writes run on a goroutine of their own, so that waiting for one
	// can end; one at a time.
	results   chan writeResult
	abandon   chan struct{}
	abandoned sync.Once
	gone      atomic.Bool // no more writes: the reader is gone or the sink abandoned
}

type writeResult struct {
	n   int
	err error
}

// errAbandoned fails the writes that Abandon ended or that come after it.
var errAbandoned = errors.New("abandoned: the reader did not take the events in time")

// NewJSONSink writes to w; name it "stdout" in metrics.
func NewJSONSink(w io.Writer) *JSONSink {
	s := &JSONSink{out: w, results: make(chan writeResult, 1), abandon: make(chan struct{})}
	s.w = bufio.NewWriterSize(writerFunc(s.write), 64<<10)
	return s
}

func (s *JSONSink) Name() string { return "stdout" }

func (s *JSONSink) Emit(ev *Event) {
	if s.gone.Load() {
		s.failed.Add(1)
		return
	}
	s.line = ev.appendJSON(s.line[:0], &s.stamp)
	if s.w.Available() < len(s.line) {
		s.Flush()
	}
	s.w.Write(s.line)
	s.buffered++
}

func (s *JSONSink) Flush() {
	if s.buffered == 0 {
		return
	}
	if err := s.w.Flush(); err != nil {
		// The lines are lost; later writes start over with a new buffer
		// (Reset, not reuse: an abandoned write may still hold the old
		// one).
		s.failed.Add(s.buffered)
		s.w = bufio.NewWriterSize(writerFunc(s.write), 64<<10)
		s.report(err)
	} else {
		s.exported.Add(s.buffered)
		if s.failing && s.Log != nil {
			s.Log.Info("stdout: writing events again")
		}
		s.failing = false
	}
	s.buffered = 0
}

// report logs the first failure of a run, and the reader going away.
func (s *JSONSink) report(err error) {
	if errors.Is(err, syscall.EPIPE) {
		s.gone.Store(true)
		if s.Log != nil {
			s.Log.Warn("stdout is closed (no reader): events are no longer written to it and are counted as lost (grain.events.lost, reason export_failed, sink stdout)")
		}
		return
	}
	if !s.failing && s.Log != nil && !errors.Is(err, errAbandoned) {
		s.Log.Warn("stdout: write failed; its events are counted as lost (grain.events.lost, reason export_failed, sink stdout)", "error", err)
	}
	s.failing = true
}

// write writes p on a goroutine of its own and waits for it, or for
// Abandon.
func (s *JSONSink) write(p []byte) (int, error) {
	if s.gone.Load() {
		return 0, errAbandoned
	}
	go func() {
		n, err := s.out.Write(p)
		s.results <- writeResult{n, err} // buffered: an abandoned write ends too
	}()
	select {
	case r := <-s.results:
		return r.n, r.err
	case <-s.abandon:
		select {
		case r := <-s.results: // it ended meanwhile
			return r.n, r.err
		default:
		}
		// The write goes on without us; p is not used again.
		return 0, errAbandoned
	}
}

// Abandon ends a write that waits for the reader, and every later one:
// their lines, and the events emitted afterwards, are counted as failed.
// It may be called from any goroutine, and more than once.
func (s *JSONSink) Abandon() {
	s.abandoned.Do(func() {
		s.gone.Store(true)
		close(s.abandon)
	})
}

func (s *JSONSink) Stats() SinkStats {
	return SinkStats{Exported: s.exported.Load(), Failed: s.failed.Load()}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
