package export

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploggrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlplog/otlploghttp"
	"go.opentelemetry.io/otel/log"
	sdklog "go.opentelemetry.io/otel/sdk/log"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// LogsConfig configures NewLogs.
type LogsConfig struct {
	Config
	// ExportInterval is the longest a record waits in the batch queue.
	// Zero leaves it to OTEL_BLRP_SCHEDULE_DELAY, or the SDK's 1s.
	ExportInterval time.Duration
	// MaxQueueSize bounds the records waiting for export. Zero leaves it
	// to OTEL_BLRP_MAX_QUEUE_SIZE, or the SDK's 2048.
	MaxQueueSize int
}

// Logs exports grain's events as OpenTelemetry log records.
//
// Emitting never blocks the event stream: records go to the SDK's batch
// processor, whose queue is bounded; when the collector is slow or down
// and the queue is full, the oldest queued records are dropped (the SDK
// reports how many through the OpenTelemetry global logger). Losing events
// there is preferred to stalling the reader, which would make the kernel
// ring buffer overflow and lose them anyway, uncounted by the exporter.
type Logs struct {
	provider *sdklog.LoggerProvider
	logger   log.Logger
}

// NewLogs starts the log pipeline.
func NewLogs(ctx context.Context, cfg LogsConfig) (*Logs, error) {
	exp, err := newLogExporter(ctx, cfg.Config)
	if err != nil {
		return nil, err
	}
	res, err := newResource(ctx, cfg.Config)
	if err != nil {
		exp.Shutdown(ctx)
		return nil, err
	}
	// Options only when set, so that OTEL_BLRP_* apply otherwise.
	var batchOpts []sdklog.BatchProcessorOption
	if cfg.ExportInterval > 0 {
		batchOpts = append(batchOpts, sdklog.WithExportInterval(cfg.ExportInterval))
	}
	if cfg.MaxQueueSize > 0 {
		batchOpts = append(batchOpts, sdklog.WithMaxQueueSize(cfg.MaxQueueSize))
	}
	provider := sdklog.NewLoggerProvider(
		sdklog.WithResource(res),
		sdklog.WithProcessor(sdklog.NewBatchProcessor(exp, batchOpts...)),
	)
	return &Logs{provider: provider, logger: provider.Logger(instrumentationScope)}, nil
}

func newLogExporter(ctx context.Context, cfg Config) (sdklog.Exporter, error) {
	return newLogExporterRetry(ctx, cfg, true)
}

// newLogExporterRetry makes the OTLP log exporter; without retry it
// returns the first failure, for a caller that retries itself.
func newLogExporterRetry(ctx context.Context, cfg Config, retry bool) (sdklog.Exporter, error) {
	proto, err := cfg.protocol("LOGS")
	if err != nil {
		return nil, err
	}
	var exp sdklog.Exporter
	switch proto {
	case ProtocolGRPC:
		var opts []otlploggrpc.Option
		if !retry {
			// Reconnect within seconds of the collector's return (gRPC's
			// own default backs off to two minutes).
			opts = append(opts, otlploggrpc.WithRetry(otlploggrpc.RetryConfig{Enabled: false}),
				otlploggrpc.WithDialOption(grpc.WithConnectParams(grpc.ConnectParams{
					Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 2 * time.Second},
					MinConnectTimeout: time.Second})))
		}
		if cfg.Endpoint != "" {
			opts = append(opts, otlploggrpc.WithEndpointURL(cfg.Endpoint))
		}
		exp, err = otlploggrpc.New(ctx, opts...)
	default:
		var opts []otlploghttp.Option
		if !retry {
			opts = append(opts, otlploghttp.WithRetry(otlploghttp.RetryConfig{Enabled: false}))
		}
		if cfg.Endpoint != "" {
			u, err := signalURL(cfg.Endpoint, "v1/logs")
			if err != nil {
				return nil, err
			}
			opts = append(opts, otlploghttp.WithEndpointURL(u))
		}
		exp, err = otlploghttp.New(ctx, opts...)
	}
	if err != nil {
		return nil, fmt.Errorf("create OTLP log exporter (%s): %w", proto, err)
	}
	return exp, nil
}

// ForceFlush exports the queued records now.
func (l *Logs) ForceFlush(ctx context.Context) error {
	return l.provider.ForceFlush(ctx)
}

// Shutdown exports the queued records, then stops the exporter. Records
// written afterwards are discarded.
func (l *Logs) Shutdown(ctx context.Context) error {
	return l.provider.Shutdown(ctx)
}

// Writer returns an io.Writer for the JSON lines of Engine.StreamEvents:
// each line becomes one log record. Lines may arrive several per Write or
// split across Writes (StreamEvents writes through a bufio.Writer); each
// Writer keeps its own partial line, so give each stream its own Writer.
// Write never fails: a line that is not a JSON object is reported through
// otel.Handle and skipped, so a bad line cannot stop the event stream.
func (l *Logs) Writer() io.Writer {
	return &eventWriter{logs: l}
}

// maxPartialLine bounds the bytes kept waiting for a newline; grain's
// lines are a few hundred bytes, so more means the input is not grain's.
const maxPartialLine = 64 << 10

type eventWriter struct {
	logs *Logs

	mu      sync.Mutex
	partial []byte // start of a line whose newline has not arrived yet
}

func (w *eventWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			break
		}
		line := p[:i]
		if len(w.partial) > 0 {
			line = append(w.partial, line...)
			w.partial = w.partial[:0]
		}
		w.logs.emitLine(line)
		p = p[i+1:]
	}
	if len(p) > 0 {
		rest := p
		if len(w.partial) > 0 {
			rest = append(w.partial, p...)
		}
		// A writer handing one event per Write may leave out the newline;
		// a complete object is emitted now, since no strict prefix of a
		// JSON object is valid JSON.
		if json.Valid(rest) {
			w.logs.emitLine(rest)
			w.partial = w.partial[:0]
		} else if len(rest) > maxPartialLine {
			otel.Handle(fmt.Errorf("grain event line longer than %d bytes without newline: dropped", maxPartialLine))
			w.partial = w.partial[:0]
		} else {
			w.partial = append(w.partial[:0], rest...)
		}
	}
	return n, nil
}

// eventKeys maps grain's event fields to OpenTelemetry semantic
// conventions. Fields not listed keep their name under "grain.".
var eventKeys = map[string]attribute.Key{
	"saddr":     semconv.SourceAddressKey,
	"daddr":     semconv.DestinationAddressKey,
	"sport":     semconv.SourcePortKey,
	"dport":     semconv.DestinationPortKey,
	"protocol":  semconv.NetworkTransportKey,
	"interface": semconv.NetworkInterfaceNameKey,
	"policy":    AttrPolicy,
	"verdict":   AttrVerdict,
	// event.name is deprecated in favour of the record's EventName field;
	// both are set so that older collectors and backends still see it.
	"event": attribute.Key("event.name"),
}

// emitLine turns one JSON event into a log record.
func (l *Logs) emitLine(line []byte) {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return
	}
	var fields map[string]any
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber() // keep ports and lengths integers
	if err := dec.Decode(&fields); err != nil || fields == nil {
		otel.Handle(fmt.Errorf("grain event is not a JSON object: %q", truncate(line, 120)))
		return
	}

	var rec log.Record
	rec.SetSeverity(log.SeverityInfo)
	rec.SetSeverityText("INFO")
	name, _ := fields["event"].(string)
	if name == "" {
		// Events of a rule the engine no longer knows carry no name.
		name = "unknown"
	}
	rec.SetBody(attribute.StringValue(name))
	rec.SetEventName(name)
	if s, ok := fields["time"].(string); ok {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			rec.SetTimestamp(t)
		}
		// Otherwise the SDK's observed timestamp still dates the record.
	}
	attrs := make([]attribute.KeyValue, 0, len(fields))
	for k, v := range fields {
		if k == "time" {
			continue
		}
		key, ok := eventKeys[k]
		if !ok {
			key = attribute.Key("grain." + k)
		}
		if kv, ok := jsonAttribute(key, v); ok {
			attrs = append(attrs, kv)
		}
	}
	rec.AddAttributes(attrs...)
	// Background context: the record must not be tied to the lifetime of
	// whoever happens to be writing.
	l.logger.Emit(context.Background(), rec)
}

// jsonAttribute converts a decoded JSON value; null is left out.
func jsonAttribute(key attribute.Key, v any) (attribute.KeyValue, bool) {
	switch v := v.(type) {
	case string:
		return key.String(v), true
	case bool:
		return key.Bool(v), true
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return key.Int64(i), true
		}
		if f, err := v.Float64(); err == nil {
			return key.Float64(f), true
		}
		return key.String(v.String()), true
	case nil:
		return attribute.KeyValue{}, false
	default:
		// grain's events are flat; anything nested is kept as its JSON.
		b, err := json.Marshal(v)
		if err != nil {
			return attribute.KeyValue{}, false
		}
		return key.String(string(b)), true
	}
}

func truncate(b []byte, n int) string {
	s := string(b)
	if len(s) > n {
		s = s[:n] + "…"
	}
	return strings.ToValidUTF8(s, "?")
}
