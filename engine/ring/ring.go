package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"

	"github.com/grain-ebpf/grain/engine/generation"
	"github.com/grain-ebpf/grain/pipeline"
)

// readPollInterval is how often a reader looks for events: the kernel
// wakes it only when the ring fills up (see bpf/xdp.c, bpf/probe.c), so
// this bounds the delay of an event on a quiet machine.
const readPollInterval = 20 * time.Millisecond

// eventRing is the reading end of one half's event ring buffer. It moves
// the half's generation fence as records are read: a record counts as
// read once its events were decoded, so the names of a replaced rule set
// are never forgotten before its last event is named.
type eventRing struct {
	name    string // for errors: "event ring buffer"
	rd      *ringbuf.Reader
	fence   *generation.Fence
	rec     ringbuf.Record
	pending bool // rec was returned by next and not yet counted
}

func openRing(name string, m *ebpf.Map, fence *generation.Fence) (*eventRing, error) {
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", name, err)
	}
	return &eventRing{name: name, rd: rd, fence: fence}, nil
}

// next returns the next record's bytes, valid until the next call; the
// record before it is counted as read. It returns os.ErrDeadlineExceeded
// at the reader's deadline, os.ErrClosed once closed.
func (r *eventRing) next() ([]byte, error) {
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

// consumed counts the record next returned as read, and reports whether
// it was the last the ring held. That comes from the producer position
// the read loaded: asking the ring again would load that cache line, which
// a CPU sending events writes on every event, once more per record.
func (r *eventRing) consumed() (drained bool) {
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

func (r *eventRing) close() error { return r.rd.Close() }

// readRing reads ring into the pipeline until ctx ends, decode turning
// each record into events (pr.Next). It never waits for the pipeline:
// batches are handed over when the ring is drained, when a batch is full
// and at least every readPollInterval, and a batch that finds the queue
// full is dropped and counted (pipeline.Stats.QueueFull). The deadline
// matters only when the reader waits, after the ring was found empty: it
// is set then, not for every record (it takes the reader's lock).
func readRing(ctx context.Context, ring *eventRing, pr *pipeline.Producer, decode func(pr *pipeline.Producer, record []byte)) error {
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-ctx.Done():
		case <-stopped:
		}
		ring.close()
	}()
	defer pr.Flush()
	ring.rd.SetDeadline(time.Now().Add(readPollInterval))
	for {
		record, err := ring.next()
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				pr.Flush()
				ring.rd.SetDeadline(time.Now().Add(readPollInterval))
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
			ring.rd.SetDeadline(time.Now().Add(readPollInterval))
		}
	}
}
