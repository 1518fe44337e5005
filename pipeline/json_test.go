package pipeline

import (
	"context"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func jsonTestEvent(i int) *Event {
	ev := &Event{Policy: "p", Name: "e"}
	ev.AppendUint("n", uint64(i))
	ev.AppendString("pad", string(make([]byte, 200)))
	return ev
}

// A stdout whose reader is gone (a broken pipe): the write fails instead
// of killing the process (SIGPIPE is only fatal on fds 1 and 2, which
// grain run handles), the lines are counted as failed, and so is every
// later event, without writing.
func TestJSONSinkBrokenPipe(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	r.Close()
	s := NewJSONSink(w)
	for i := range 10 {
		s.Emit(jsonTestEvent(i))
	}
	s.Flush()
	for i := range 5 {
		s.Emit(jsonTestEvent(i))
	}
	s.Flush()
	if st := s.Stats(); st.Exported != 0 || st.Failed != 15 {
		t.Errorf("stats %+v, want 15 failed", st)
	}
	if !s.gone.Load() {
		t.Error("the sink still writes to a pipe without a reader")
	}
}

// A reader that never reads: the write waits (the pipe is full) until
// Abandon, and every event is counted, written or failed.
func TestJSONSinkAbandonStalledWrite(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	s := NewJSONSink(w)
	const n = 5000 // ~1 MiB: more than a pipe holds
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			s.Emit(jsonTestEvent(i))
		}
		s.Flush()
	}()
	// Abandon once the pipe is full (a write does not share a partly
	// filled page): the sink's next write waits.
	size, err := unix.FcntlInt(w.Fd(), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		t.Fatal(err)
	}
	for {
		queued, err := unix.IoctlGetInt(int(r.Fd()), unix.TIOCINQ)
		if err != nil {
			t.Fatal(err)
		}
		if queued > size-os.Getpagesize() {
			break
		}
		time.Sleep(time.Millisecond)
	}
	s.Abandon()
	<-done
	st := s.Stats()
	if st.Failed == 0 || st.Exported+st.Failed+st.QueueFull != n {
		t.Errorf("stats %+v, want all %d events counted and some failed", st, n)
	}
}

// A stdout whose reader never reads holds up neither the pipeline nor the
// other sinks: the stdout sink's queue fills and drops, counted, and the
// other sink gets every event.
func TestStalledStdoutHoldsNoOtherSink(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	stdout, other := NewJSONSink(w), &atomicCountSink{}
	p := New(Options{Sinks: []Sink{stdout, other}})
	ctx, cancel := context.WithCancel(context.Background())
	go p.Run(ctx)
	pr := p.Producer()
	const total = 50 * BatchSize // ~50 times what the pipe holds
	for i := range total {
		ev := pr.Next()
		ev.Policy, ev.Name = "p", "e"
		ev.AppendUint("n", uint64(i))
		ev.AppendString("pad", string(make([]byte, 200)))
		if i%BatchSize == BatchSize-1 {
			pr.Flush()
			// The pipeline keeps up as long as no sink holds it.
			for deadline := time.Now().Add(10 * time.Second); other.n.Load() < uint64(i+1); time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("the other sink got %d of %d events in 10 s: the stalled stdout holds the pipeline", other.n.Load(), i+1)
				}
			}
		}
	}
	cancel()
	<-p.Done()
	stdout.Abandon()
	st := stdout.Stats()
	if q := p.Stats().QueueFull; q != 0 || other.n.Load() != total {
		t.Errorf("the other sink got %d of %d events, the pipeline's queue dropped %d", other.n.Load(), total, q)
	}
	if st.QueueFull == 0 || st.Exported+st.Failed+st.QueueFull != total {
		t.Errorf("stdout stats %+v: want every event counted, some dropped at its queue", st)
	}
}

type atomicCountSink struct{ n atomic.Uint64 }

func (s *atomicCountSink) Name() string     { return "count" }
func (s *atomicCountSink) Emit(*Event)      { s.n.Add(1) }
func (s *atomicCountSink) Flush()           {}
func (s *atomicCountSink) Stats() SinkStats { return SinkStats{Exported: s.n.Load()} }
