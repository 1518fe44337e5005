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
	"go.opentelemetry.io/otel/log"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/grain-ebpf/grain/pipeline"
)

// LogSinkConfig configures NewLogSink. Zero fields read the standard
// OTEL_BLRP_* variables, then take grain's defaults.
type LogSinkConfig struct {
	Config
	// QueueSize bounds the events waiting for export
	// (OTEL_BLRP_MAX_QUEUE_SIZE; default 8192). When it is full, new
	// events are dropped and counted (SinkStats.QueueFull).
	QueueSize int
	// BatchSize is the most records per export
	// (OTEL_BLRP_MAX_EXPORT_BATCH_SIZE; default 512).
	BatchSize int
	// ExportInterval is the longest an event waits for a batch to fill
	// (OTEL_BLRP_SCHEDULE_DELAY; default 1s).
	ExportInterval time.Duration
	// ExportTimeout bounds one export attempt
	// (OTEL_BLRP_EXPORT_TIMEOUT; default 30s).
	ExportTimeout time.Duration
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
		c.BatchSize = envInt("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", 512)
	}
	c.BatchSize = min(c.BatchSize, c.QueueSize)
	if c.ExportInterval <= 0 {
		c.ExportInterval = envMillis("OTEL_BLRP_SCHEDULE_DELAY", time.Second)
	}
	if c.ExportTimeout <= 0 {
		c.ExportTimeout = envMillis("OTEL_BLRP_EXPORT_TIMEOUT", 30*time.Second)
	}
	if c.RetryFor <= 0 {
		c.RetryFor = 30 * time.Second
	}
}

// LogSink exports the events leaving the pipeline as OTLP log records.
//
// Emit copies the event into a bounded ring and returns: it never waits
// for the network. One goroutine turns queued events into records and
// exports them in batches; a failed export is retried with backoff for
// RetryFor, then given up and counted. While the collector is down or
// slow the ring fills up and further events are dropped and counted, so
// memory stays bounded; export resumes when the collector answers again.
type LogSink struct {
	cfg      LogSinkConfig
	exporter sdklog.Exporter
	provider *sdklog.LoggerProvider
	logger   log.Logger
	collect  *collector

	mu      sync.Mutex
	ring    []pipeline.Event
	head, n int
	closed  bool

	wake    chan struct{}
	stop    chan struct{}
	stopCtx context.Context // deadline of the final flush, set by Shutdown
	done    chan struct{}

	exported, queueFull, failed, inFlight atomic.Uint64
}

// collector is the processor between the SDK's logger and the exporter:
// the export goroutine emits a batch of records through the logger (which
// stamps resource and scope) and collects them here, then exports them.
type collector struct {
	records []sdklog.Record
}

func (c *collector) Enabled(context.Context, sdklog.EnabledParameters) bool { return true }
func (c *collector) OnEmit(_ context.Context, r *sdklog.Record) error {
	c.records = append(c.records, r.Clone())
	return nil
}
func (c *collector) Shutdown(context.Context) error   { return nil }
func (c *collector) ForceFlush(context.Context) error { return nil }

// NewLogSink starts the exporter.
func NewLogSink(ctx context.Context, cfg LogSinkConfig) (*LogSink, error) {
	cfg.defaults()
	exp, err := newLogExporterRetry(ctx, cfg.Config, false)
	if err != nil {
		return nil, err
	}
	res, err := newResource(ctx, cfg.Config)
	if err != nil {
		exp.Shutdown(ctx)
		return nil, err
	}
	c := &collector{}
	provider := sdklog.NewLoggerProvider(sdklog.WithResource(res), sdklog.WithProcessor(c),
		// grain's events carry up to a few dozen fields: no limit.
		sdklog.WithAttributeCountLimit(-1))
	s := &LogSink{
		cfg: cfg, exporter: exp, provider: provider, logger: provider.Logger(instrumentationScope), collect: c,
		ring: make([]pipeline.Event, cfg.QueueSize),
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
	go s.run()
	return s, nil
}

func (s *LogSink) Name() string { return "otlp" }

// Emit queues a copy of ev, or counts it as dropped when the queue is full.
func (s *LogSink) Emit(ev *pipeline.Event) {
	s.mu.Lock()
	if s.n == len(s.ring) || s.closed {
		s.mu.Unlock()
		s.queueFull.Add(1)
		return
	}
	s.ring[(s.head+s.n)%len(s.ring)].CopyFrom(ev)
	s.n++
	full := s.n >= s.cfg.BatchSize
	s.mu.Unlock()
	if full {
		s.signal()
	}
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

// take moves up to BatchSize queued events into batch.
func (s *LogSink) take(batch []pipeline.Event) []pipeline.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := min(s.n, s.cfg.BatchSize)
	for i := 0; i < k; i++ {
		if len(batch) < cap(batch) {
			batch = batch[:len(batch)+1]
		} else {
			batch = append(batch, pipeline.Event{})
		}
		batch[len(batch)-1].CopyFrom(&s.ring[s.head])
		s.head = (s.head + 1) % len(s.ring)
	}
	s.n -= k
	s.inFlight.Store(uint64(k))
	return batch
}

func (s *LogSink) queued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

func (s *LogSink) run() {
	defer close(s.done)
	tick := time.NewTicker(s.cfg.ExportInterval)
	defer tick.Stop()
	var batch []pipeline.Event
	for {
		stopping := false
		select {
		case <-s.wake:
		case <-tick.C:
		case <-s.stop:
			stopping = true
		}
		for {
			batch = s.take(batch[:0])
			if len(batch) == 0 {
				break
			}
			s.export(batch, stopping)
			if !stopping && s.queued() < s.cfg.BatchSize {
				break // wait for the batch to fill or the interval to pass
			}
		}
		if stopping {
			return
		}
	}
}

// export sends one batch, retrying with backoff; the outcome is counted.
func (s *LogSink) export(batch []pipeline.Event, stopping bool) {
	defer s.inFlight.Store(0)
	s.collect.records = s.collect.records[:0]
	for i := range batch {
		s.logger.Emit(context.Background(), eventRecord(&batch[i]))
	}
	records := s.collect.records
	start := time.Now()
	delay := 100 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ExportTimeout)
		if stopping {
			ctx, cancel = context.WithTimeout(s.stopCtx, s.cfg.ExportTimeout)
		}
		err := s.exporter.Export(ctx, records)
		cancel()
		if err == nil {
			s.exported.Add(uint64(len(records)))
			return
		}
		giveUp := time.Since(start)+delay > s.cfg.RetryFor
		if stopping {
			giveUp = giveUp || s.stopCtx.Err() != nil
		}
		if giveUp {
			s.failed.Add(uint64(len(records)))
			otel.Handle(fmt.Errorf("OTLP log export failed, %d events dropped: %w", len(records), err))
			return
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
// could not be exported as failed, and stops the exporter. Events emitted
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
	<-s.done
	// What the deadline left behind.
	s.mu.Lock()
	left := s.n
	s.n = 0
	s.mu.Unlock()
	s.failed.Add(uint64(left))
	return errors.Join(s.provider.Shutdown(ctx), s.exporter.Shutdown(ctx))
}

// eventRecord turns a pipeline event into a log record: the event name as
// body and EventName, the fields as attributes with OpenTelemetry names.
func eventRecord(ev *pipeline.Event) log.Record {
	var rec log.Record
	rec.SetTimestamp(ev.Time)
	rec.SetSeverity(log.SeverityInfo)
	rec.SetSeverityText("INFO")
	name := ev.Name
	if name == "" {
		name = "unknown"
	}
	rec.SetBody(attribute.StringValue(name))
	rec.SetEventName(name)
	rec.AddAttributes(AttrPolicy.String(ev.Policy), attribute.String("event.name", name))
	for i := range ev.Fields {
		f := &ev.Fields[i]
		key := fieldKey(f.Key)
		switch f.Kind {
		case pipeline.Uint:
			rec.AddAttributes(key.Int64(toInt64(f.Num)))
		case pipeline.Addr:
			rec.AddAttributes(key.String(f.Addr.String()))
		default:
			rec.AddAttributes(key.String(f.Str))
		}
	}
	return rec
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
	case "pid":
		return semconv.ProcessPIDKey
	case "comm":
		return semconv.ProcessExecutableNameKey
	case "container":
		return semconv.ContainerIDKey
	}
	return attribute.Key("grain." + k)
}
