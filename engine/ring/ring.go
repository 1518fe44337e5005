// Package ring reads grain's event ring buffers, the packet programs' and
// the kernel hooks', into the pipeline: one reader loop for both, each
// with its own decoder of records.
package ring

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/grain-ebpf/grain/engine/generation"
	"github.com/grain-ebpf/grain/pipeline"
)

// PollInterval is how often a reader looks for events: the kernel
// wakes it only when the ring fills up (see bpf/xdp.c, bpf/hook.c), so
// this bounds the delay of an event on a quiet machine.
const PollInterval = 20 * time.Millisecond

// Reader is the reading end of one half's event ring buffer. It moves
// the half's generation fence as records are read: a record counts as
// read once its events were decoded, so the names of a replaced rule set
// are never forgotten before its last event is named.
type Reader struct {
	name    string // for errors: "event ring buffer"
	rd      *ringbuf.Reader
	fence   *generation.Fence
	rec     ringbuf.Record
	pending bool // rec was returned by Next and not yet counted
}

// Open opens the ring buffer m; name says which in errors.
func Open(name string, m *ebpf.Map, fence *generation.Fence) (*Reader, error) {
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	return &Reader{name: name, rd: rd, fence: fence}, nil
}

// Next returns the next record's bytes, valid until the next call; the
// record before it is counted as read. It returns os.ErrDeadlineExceeded
// at the reader's deadline, os.ErrClosed once closed.
func (r *Reader) Next() ([]byte, error) {
	r.consumed()
	if err := r.rd.ReadInto(&r.rec); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			r.fence.Drained(r.rd.AvailableBytes)
		}
		return nil, err
	}
	r.pending = true
	return r.rec.RawSample, nil
}

// consumed counts the record Next returned as read, and reports whether
// it was the last the ring held. That comes from the producer position
// the read loaded: asking the ring again would load that cache line, which
// a CPU sending events writes on every event, once more per record.
func (r *Reader) consumed() (drained bool) {
	if !r.pending {
		return false
	}
	r.pending = false
	r.fence.Read(len(r.rec.RawSample))
	if r.rec.Remaining == 0 {
		r.fence.Drained(r.rd.AvailableBytes)
		return true
	}
	return false
}

// SetDeadline sets when a waiting Next gives up (os.ErrDeadlineExceeded).
func (r *Reader) SetDeadline(t time.Time) { r.rd.SetDeadline(t) }

// Buffered is how many bytes the ring holds unread.
func (r *Reader) Buffered() int { return r.rd.AvailableBytes() }

// Close ends the reader; a waiting Next returns os.ErrClosed.
func (r *Reader) Close() error { return r.rd.Close() }

// Read reads ring into the pipeline until ctx ends, decode turning
// each record into events (pr.Next). It never waits for the pipeline:
// batches are handed over when the ring is drained, when a batch is full
// and at least every PollInterval, and a batch that finds the queue
// full is dropped and counted (pipeline.Stats.QueueFull). The deadline
// matters only when the reader waits, after the ring was found empty: it
// is set then, not for every record (it takes the reader's lock).
func Read(ctx context.Context, ring *Reader, pr *pipeline.Producer, decode func(pr *pipeline.Producer, record []byte)) error {
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-ctx.Done():
		case <-stopped:
		}
		ring.Close()
	}()
	defer pr.Flush()
	ring.rd.SetDeadline(time.Now().Add(PollInterval))
	for {
		record, err := ring.Next()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				pr.Flush()
				ring.rd.SetDeadline(time.Now().Add(PollInterval))
				continue
			}
			if errors.Is(err, os.ErrClosed) {
				return nil
			}
			return fmt.Errorf("read %s: %w", ring.name, err)
		}
		decode(pr, record)
		if ring.consumed() {
			pr.Flush()
			ring.rd.SetDeadline(time.Now().Add(PollInterval))
		}
	}
}

// StreamJSON runs read, an event reader, into a pipeline with no stages
// and a JSON sink on out, until ctx ends.
func StreamJSON(ctx context.Context, out io.Writer, read func(context.Context, *pipeline.Producer) error) error {
	p := pipeline.New(pipeline.Options{Sinks: []pipeline.Sink{pipeline.NewJSONSink(out)}})
	runCtx, stop := context.WithCancel(context.Background())
	go p.Run(runCtx)
	err := read(ctx, p.Producer())
	stop()
	<-p.Done()
	return err
}
