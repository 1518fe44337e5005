package pipeline

import (
	"bufio"
	"io"
	"sync/atomic"
)

// JSONSink writes each event as a JSON line (Event.AppendJSON), buffered
// and flushed whenever the queue is empty.
type JSONSink struct {
	out      io.Writer
	w        *bufio.Writer
	line     []byte
	stamp    timeStamp
	buffered uint64 // lines in w not yet flushed
	exported atomic.Uint64
	failed   atomic.Uint64
}

// NewJSONSink writes to w; name it "stdout" in metrics.
func NewJSONSink(w io.Writer) *JSONSink {
	return &JSONSink{out: w, w: bufio.NewWriterSize(w, 64<<10)}
}

func (s *JSONSink) Name() string { return "stdout" }

func (s *JSONSink) Emit(ev *Event) {
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
		// The lines are lost; later writes start over with a new buffer.
		s.failed.Add(s.buffered)
		s.w.Reset(s.out)
	} else {
		s.exported.Add(s.buffered)
	}
	s.buffered = 0
}

func (s *JSONSink) Stats() SinkStats {
	return SinkStats{Exported: s.exported.Load(), Failed: s.failed.Load()}
}
