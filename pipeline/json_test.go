package pipeline

import (
	"os"
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
	if st.Failed == 0 || st.Exported+st.Failed != n {
		t.Errorf("stats %+v, want all %d events counted and some failed", st, n)
	}
}
