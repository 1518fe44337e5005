package pipeline

import (
	"context"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// BatchSize is how many events travel together through the queue.
const BatchSize = 256

// DefaultQueueEvents bounds the events between the kernel reader and the
// pipeline when Options leave it zero.
const DefaultQueueEvents = 16384

// Sink receives the events that leave the pipeline.
type Sink interface {
	// Name identifies the sink in metrics ("stdout", "otlp").
	Name() string
	// Emit takes one event. It must not keep ev, which is reused, and
	// should not wait long: a slow sink makes the queue in front of the
	// pipeline fill up, which then drops (and counts) events.
	Emit(ev *Event)
	// Flush is called when the queue is empty.
	Flush()
	// Stats reports what became of the events the sink was given.
	Stats() SinkStats
}

// SinkStats are a sink's cumulative counts.
type SinkStats struct {
	// Exported events were written (stdout) or accepted by the collector.
	Exported uint64
	// QueueFull events were dropped because the sink's own bounded queue
	// was full (a slow or unreachable collector).
	QueueFull uint64
	// Failed events were given up after the export failed (and retries
	// ran out) or the write failed.
	Failed uint64
	// Pending events are queued or being exported now.
	Pending uint64
}

// Options configure a Pipeline.
type Options struct {
	// QueueEvents bounds the events waiting between the kernel reader and
	// the pipeline (rounded up to whole batches). Zero: DefaultQueueEvents.
	QueueEvents int
	Sinks       []Sink
}

// Pipeline is the bounded queue, the stages and the sinks.
type Pipeline struct {
	queue  chan *batch
	pool   sync.Pool
	stages atomic.Pointer[Stages]
	sinks  []Sink

	received  atomic.Uint64
	queueFull atomic.Uint64

	mu     sync.Mutex
	counts map[string]*EventCounts // by event name; only Run writes

	done chan struct{}
}

type batch struct {
	events []Event
	n      int
}

// EventCounts are the pipeline's cumulative counts for one event name.
type EventCounts struct {
	QueueFull   atomic.Uint64
	Filtered    atomic.Uint64
	Sampled     atomic.Uint64
	RateLimited atomic.Uint64
	Passed      atomic.Uint64
}

// New makes a pipeline with the empty stage set; Set installs others.
func New(opts Options) *Pipeline {
	n := opts.QueueEvents
	if n <= 0 {
		n = DefaultQueueEvents
	}
	p := &Pipeline{
		queue:  make(chan *batch, (n+BatchSize-1)/BatchSize),
		sinks:  opts.Sinks,
		counts: map[string]*EventCounts{},
		done:   make(chan struct{}),
	}
	p.pool.New = func() any { return &batch{events: make([]Event, BatchSize)} }
	p.stages.Store(&Stages{})
	return p
}

// Set makes s the stages for the events processed from now on. The
// Reloader calls it with each applied policy tree.
func (p *Pipeline) Set(s *Stages) {
	if s == nil {
		s = &Stages{}
	}
	p.stages.Store(s)
}

// Producer fills batches for one kernel reader. It is not safe for
// concurrent use; each reader has its own.
type Producer struct {
	p   *Pipeline
	cur *batch
}

// Producer returns a new producer.
func (p *Pipeline) Producer() *Producer { return &Producer{p: p} }

// Next returns an empty event to fill, in the current batch; a full batch
// is handed to the queue first.
func (pr *Producer) Next() *Event {
	if pr.cur != nil && pr.cur.n == len(pr.cur.events) {
		pr.Flush()
	}
	if pr.cur == nil {
		pr.cur = pr.p.pool.Get().(*batch)
		pr.cur.n = 0
	}
	ev := &pr.cur.events[pr.cur.n]
	ev.Reset()
	pr.cur.n++
	pr.p.received.Add(1)
	return ev
}

// Unread takes back the last event Next returned (one the reader could
// not decode); it is not counted as received.
func (pr *Producer) Unread() {
	if pr.cur != nil && pr.cur.n > 0 {
		pr.cur.n--
		pr.p.received.Add(^uint64(0))
	}
}

// Flush hands the current batch to the pipeline without waiting: when the
// queue is full the batch's events are dropped and counted as queue_full,
// and the batch is reused.
func (pr *Producer) Flush() {
	b := pr.cur
	if b == nil || b.n == 0 {
		return
	}
	select {
	case pr.p.queue <- b:
		pr.cur = nil
	default:
		pr.p.queueFull.Add(uint64(b.n))
		pr.p.mu.Lock()
		for i := range b.events[:b.n] {
			pr.p.countsLocked(b.events[i].Name).QueueFull.Add(1)
		}
		pr.p.mu.Unlock()
		b.n = 0
	}
}

func (p *Pipeline) countsLocked(name string) *EventCounts {
	c := p.counts[name]
	if c == nil {
		c = &EventCounts{}
		p.counts[name] = c
	}
	return c
}

// Run processes queued batches until ctx ends, then processes what is
// still queued, flushes the sinks and returns.
func (p *Pipeline) Run(ctx context.Context) {
	defer close(p.done)
	var h hasher
	local := map[string]*EventCounts{}
	counts := func(name string) *EventCounts {
		c := local[name]
		if c == nil {
			p.mu.Lock()
			c = p.countsLocked(name)
			p.mu.Unlock()
			local[name] = c
		}
		return c
	}
	process := func(b *batch) {
		s := p.stages.Load()
		now := time.Now()
		for i := range b.events[:b.n] {
			ev := &b.events[i]
			c := counts(ev.Name)
			switch s.apply(ev, now, &h) {
			case filtered:
				c.Filtered.Add(1)
				continue
			case sampled:
				c.Sampled.Add(1)
				continue
			case rateLimited:
				c.RateLimited.Add(1)
				continue
			}
			c.Passed.Add(1)
			for _, sink := range p.sinks {
				sink.Emit(ev)
			}
		}
		b.n = 0
		p.pool.Put(b)
	}
	flush := func() {
		for _, sink := range p.sinks {
			sink.Flush()
		}
	}
	for {
		select {
		case b := <-p.queue:
			process(b)
			if len(p.queue) == 0 {
				flush()
			}
		case <-ctx.Done():
			for {
				select {
				case b := <-p.queue:
					process(b)
					continue
				default:
				}
				break
			}
			flush()
			return
		}
	}
}

// Done is closed when Run has returned.
func (p *Pipeline) Done() <-chan struct{} { return p.done }

// Stats are the pipeline's cumulative counts.
type Stats struct {
	// Received events were read from the kernel.
	Received uint64
	// QueueFull events were dropped because the queue in front of the
	// pipeline was full.
	QueueFull uint64
	// Events are the counts by event name, sorted by name.
	Events []NamedCounts
	// Sinks by name, in the order given to New.
	Sinks []NamedSinkStats
}

// NamedCounts are the counts of one event name.
type NamedCounts struct {
	Event                                             string
	QueueFull, Filtered, Sampled, RateLimited, Passed uint64
}

// NamedSinkStats are the counts of one sink.
type NamedSinkStats struct {
	Sink string
	SinkStats
}

// Stats reads the counts.
func (p *Pipeline) Stats() Stats {
	st := Stats{Received: p.received.Load(), QueueFull: p.queueFull.Load()}
	p.mu.Lock()
	for name, c := range p.counts {
		st.Events = append(st.Events, NamedCounts{Event: name, QueueFull: c.QueueFull.Load(), Filtered: c.Filtered.Load(),
			Sampled: c.Sampled.Load(), RateLimited: c.RateLimited.Load(), Passed: c.Passed.Load()})
	}
	p.mu.Unlock()
	sort.Slice(st.Events, func(i, j int) bool { return st.Events[i].Event < st.Events[j].Event })
	for _, s := range p.sinks {
		st.Sinks = append(st.Sinks, NamedSinkStats{Sink: s.Name(), SinkStats: s.Stats()})
	}
	return st
}

// Totals sums the per-event counts.
func (s Stats) Totals() NamedCounts {
	var t NamedCounts
	for _, e := range s.Events {
		t.QueueFull += e.QueueFull
		t.Filtered += e.Filtered
		t.Sampled += e.Sampled
		t.RateLimited += e.RateLimited
		t.Passed += e.Passed
	}
	return t
}
