package export

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/grain-ebpf/grain/pipeline"
)

// DefaultConcurrency is LogSinkConfig.Concurrency's default: two exports
// in flight, so that encoding one batch overlaps sending the other.
const DefaultConcurrency = 2

// LogSinkConfig configures NewLogSink. Zero fields read the standard
// OTEL_BLRP_* variables, then take grain's defaults.
type LogSinkConfig struct {
	Config
	// QueueSize bounds the events waiting for export
	// (OTEL_BLRP_MAX_QUEUE_SIZE; default 8192). When it is full, new
	// events are dropped and counted (SinkStats.QueueFull).
	QueueSize int
	// BatchSize is the most records per export
	// (OTEL_BLRP_MAX_EXPORT_BATCH_SIZE; default 2048, where the SDKs'
	// is 512: the collector decodes a record of a 2048-record request
	// with ~15 % less CPU, BENCHMARKS.md section 14). A batch whose
	// encoding would exceed 3 MiB leaves in several requests.
	BatchSize int
	// ExportInterval is the longest an event waits for a batch to fill
	// (OTEL_BLRP_SCHEDULE_DELAY; default 1s).
	ExportInterval time.Duration
	// ExportTimeout bounds one export attempt (OTEL_BLRP_EXPORT_TIMEOUT,
	// then OTEL_EXPORTER_OTLP_(LOGS_)TIMEOUT; default 10s).
	ExportTimeout time.Duration
	// Concurrency is the number of exports in flight at once, each over
	// its own connection. Default DefaultConcurrency.
	Concurrency int
	// RetryFor is how long a failed batch is retried, with exponential
	// backoff from 100 ms to 5 s, before it is given up and counted
	// (SinkStats.Failed). Default 30s.
	RetryFor time.Duration
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func envMillis(name string, def time.Duration) time.Duration {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return time.Duration(v) * time.Millisecond
	}
	return def
}

func (c *LogSinkConfig) defaults() {
	if c.QueueSize <= 0 {
		c.QueueSize = envInt("OTEL_BLRP_MAX_QUEUE_SIZE", 8192)
	}
	if c.BatchSize <= 0 {
		c.BatchSize = envInt("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", 2048)
	}
	c.BatchSize = min(c.BatchSize, c.QueueSize)
	if c.ExportInterval <= 0 {
		c.ExportInterval = envMillis("OTEL_BLRP_SCHEDULE_DELAY", time.Second)
	}
	if c.ExportTimeout <= 0 {
		def := 10 * time.Second // the OTLP exporter's default
		if v, err := strconv.Atoi(logsEnv("TIMEOUT")); err == nil && v > 0 {
			def = time.Duration(v) * time.Millisecond
		}
		c.ExportTimeout = envMillis("OTEL_BLRP_EXPORT_TIMEOUT", def)
	}
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.RetryFor <= 0 {
		c.RetryFor = 30 * time.Second
	}
}

// LogSink exports the events leaving the pipeline as OTLP log records.
//
// Emit encodes the event's record straight into the batch being filled
// (a request body but for its framing) and returns: it never waits for
// the network, and keeps no copy of the event. Full batches queue for the
// export workers (Concurrency, each with its own connection), so that
// encoding overlaps sending; a failed export is retried with backoff for
// RetryFor, then given up and counted. While the collector is down or
// slow the queue fills up (QueueSize events) and further events are
// dropped and counted, so memory stays bounded (the queued batches plus
// one per worker); export resumes when the collector answers again.
// Records of different batches may arrive out of order.
type LogSink struct {
	cfg     LogSinkConfig
	workers []*exportWorker

	mu     sync.Mutex
	enc    *logEncoder // its caches change as it encodes: used under mu
	cur    *logBatch   // being filled, or nil
	full   []*logBatch // sealed, oldest first
	free   []*logBatch // exported, for reuse
	n      int         // events in cur and full
	closed bool

	wake    chan struct{}
	stop    chan struct{}
	stopCtx context.Context // deadline of the final flush, set by Shutdown
	wg      sync.WaitGroup

	exported, queueFull, failed, inFlight atomic.Uint64
}

// logBatch is a request body in the making: room for the request's
// framing (logEncoder.room), then n encoded records, whose observed times
// (at observed) are set when it leaves.
type logBatch struct {
	buf      []byte
	n        int
	observed []int32
}

// exportWorker is one connection to the collector.
type exportWorker struct {
	client logClient
}

// NewLogSink starts the exporters. Nothing connects yet: a collector
// that is down is found by the first export.
func NewLogSink(ctx context.Context, cfg LogSinkConfig) (*LogSink, error) {
	cfg.defaults()
	if _, err := cfg.protocol("LOGS"); err != nil {
		return nil, err
	}
	res, err := newResource(ctx, cfg.Config)
	if err != nil {
		return nil, err
	}
	s := &LogSink{
		cfg:  cfg,
		enc:  newLogEncoder(res, cfg.ServiceVersion),
		wake: make(chan struct{}, 1), stop: make(chan struct{}),
	}
	for range cfg.Concurrency {
		c, err := newLogClient(cfg.Config)
		if err != nil {
			for _, w := range s.workers {
				w.client.close()
			}
			return nil, err
		}
		s.workers = append(s.workers, &exportWorker{client: c})
	}
	for _, w := range s.workers {
		s.wg.Add(1)
		go s.run(w)
	}
	return s, nil
}

func (s *LogSink) Name() string { return "otlp" }

// Emit encodes ev into the batch being filled, or counts it as dropped
// when the queue is full.
func (s *LogSink) Emit(ev *pipeline.Event) {
	s.mu.Lock()
	if s.n >= s.cfg.QueueSize || s.closed {
		s.mu.Unlock()
		s.queueFull.Add(1)
		return
	}
	b := s.cur
	if b == nil {
		b = s.newBatch()
		s.cur = b
	}
	at := len(b.buf)
	b.buf = s.enc.appendRecord(b.buf, ev)
	if b.n > 0 && len(b.buf) > maxRequestBytes {
		// The record goes in a batch of its own: the request would be
		// too large with it.
		next := s.newBatch()
		next.buf = append(next.buf, b.buf[at:]...)
		b.buf = b.buf[:at]
		s.full = append(s.full, b)
		b, at = next, s.enc.room()
		s.cur = b
	}
	b.observed = append(b.observed, int32(observedAt(b.buf, at)))
	b.n++
	s.n++
	if b.n >= s.cfg.BatchSize {
		s.full = append(s.full, b)
		s.cur = nil
	}
	full := len(s.full) > 0
	s.mu.Unlock()
	if full {
		s.signal()
	}
}

// newBatch returns an empty batch, reusing an exported one if there is
// one (under mu).
func (s *LogSink) newBatch() *logBatch {
	if k := len(s.free); k > 0 {
		b := s.free[k-1]
		s.free = s.free[:k-1]
		return b
	}
	return &logBatch{buf: make([]byte, s.enc.room(), s.enc.room()+256*s.cfg.BatchSize)}
}

// recycle keeps an exported batch for reuse: as many as the queue and the
// workers can hold at once.
func (s *LogSink) recycle(b *logBatch) {
	b.buf, b.n, b.observed = b.buf[:s.enc.room()], 0, b.observed[:0]
	s.mu.Lock()
	if len(s.free) < s.cfg.QueueSize/s.cfg.BatchSize+len(s.workers) && cap(b.buf) <= 2*maxRequestBytes {
		s.free = append(s.free, b)
	}
	s.mu.Unlock()
}

func (s *LogSink) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Flush does nothing: batches leave when full or after ExportInterval.
func (s *LogSink) Flush() {}

// Stats counts what became of the events given to Emit.
func (s *LogSink) Stats() pipeline.SinkStats {
	s.mu.Lock()
	queued := uint64(s.n)
	s.mu.Unlock()
	return pipeline.SinkStats{Exported: s.exported.Load(), QueueFull: s.queueFull.Load(), Failed: s.failed.Load(),
		Pending: queued + s.inFlight.Load()}
}

// take returns the oldest full batch, or with partial the batch being
// filled when none is full; nil when there is nothing to export.
func (s *LogSink) take(partial bool) *logBatch {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.full) == 0 && partial && s.cur != nil && s.cur.n > 0 {
		s.full = append(s.full, s.cur)
		s.cur = nil
	}
	if len(s.full) == 0 {
		return nil
	}
	b := s.full[0]
	s.full = s.full[:copy(s.full, s.full[1:])]
	s.n -= b.n
	s.inFlight.Add(uint64(b.n))
	if len(s.full) > 0 {
		s.signal() // another full batch: wake another worker
	}
	return b
}

func (s *LogSink) run(w *exportWorker) {
	defer s.wg.Done()
	tick := time.NewTicker(s.cfg.ExportInterval)
	defer tick.Stop()
	for {
		stopping := false
		select {
		case <-s.wake:
		case <-tick.C:
		case <-s.stop:
			stopping = true
		}
		// What is there goes now, a partial batch included (woken by the
		// interval or the stop); then only full batches, until stopping.
		for partial := true; ; partial = stopping {
			b := s.take(partial)
			if b == nil {
				break
			}
			// Observed now, as it leaves: the time grain hands it on.
			setObserved(b.buf, b.observed, time.Now())
			stopping = s.send(w, s.enc.frame(b.buf), uint64(b.n), stopping)
			s.inFlight.Add(^uint64(b.n - 1))
			s.recycle(b)
		}
		if stopping {
			return
		}
	}
}

// send exports one request body of n records, retrying with backoff, and
// counts the outcome. It reports whether the sink is stopping.
func (s *LogSink) send(w *exportWorker, body []byte, n uint64, stopping bool) bool {
	start := time.Now()
	delay := 100 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ExportTimeout)
		if stopping {
			ctx, cancel = context.WithTimeout(s.stopCtx, s.cfg.ExportTimeout)
		}
		rejected, err := w.client.send(ctx, body)
		cancel()
		if err == nil {
			// A partial success: the collector refused some records.
			r := min(uint64(max(rejected, 0)), n)
			s.exported.Add(n - r)
			s.failed.Add(r)
			if r > 0 {
				otel.Handle(fmt.Errorf("OTLP collector rejected %d of %d events", r, n))
			}
			return stopping
		}
		giveUp := time.Since(start)+delay > s.cfg.RetryFor
		if stopping {
			giveUp = giveUp || s.stopCtx.Err() != nil
		}
		if giveUp {
			s.failed.Add(n)
			otel.Handle(fmt.Errorf("OTLP log export failed, %d events dropped: %w", n, err))
			return stopping
		}
		// Full jitter keeps many grains from retrying in step.
		wait := delay/2 + rand.N(delay/2+1)
		if stopping {
			select {
			case <-time.After(wait):
			case <-s.stopCtx.Done():
			}
		} else {
			select {
			case <-time.After(wait):
			case <-s.stop:
				// Shutdown: the rest of the retries run on its deadline.
				stopping = true
			}
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// Shutdown exports what is queued (within ctx's deadline), counts what
// could not be exported as failed, and stops the exporters. Events emitted
// afterwards are counted as dropped.
func (s *LogSink) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.stopCtx = ctx
	close(s.stop)
	s.wg.Wait()
	// What the deadline left behind.
	s.mu.Lock()
	left := s.n
	s.n = 0
	s.mu.Unlock()
	s.failed.Add(uint64(left))
	var errs []error
	for _, w := range s.workers {
		errs = append(errs, w.client.close())
	}
	return errors.Join(errs...)
}

// fieldKey names an event field as an OpenTelemetry attribute.
func fieldKey(k string) attribute.Key {
	switch k {
	case "saddr":
		return semconv.SourceAddressKey
	case "daddr":
		return semconv.DestinationAddressKey
	case "sport":
		return semconv.SourcePortKey
	case "dport":
		return semconv.DestinationPortKey
	case "protocol":
		return semconv.NetworkTransportKey
	case "interface":
		return semconv.NetworkInterfaceNameKey
	case "verdict":
		return AttrVerdict
	case "host":
		return semconv.HostNameKey
	case "tgid":
		// The kernel's tgid is what people call the process id; its pid
		// names one thread.
		return semconv.ProcessPIDKey
	case "pid":
		return semconv.ThreadIDKey
	case "ppid":
		return semconv.ProcessParentPIDKey
	case "uid":
		return semconv.ProcessRealUserIDKey
	case "gid":
		return attribute.Key("process.real_group.id")
	case "exe":
		return semconv.ProcessExecutablePathKey
	case "dns_qname":
		return semconv.DNSQuestionNameKey
	case "comm":
		return semconv.ProcessExecutableNameKey
	case "container":
		return semconv.ContainerIDKey
	}
	return attribute.Key("grain." + k)
}
