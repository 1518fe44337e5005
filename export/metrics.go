package export

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/grain-ebpf/grain/engine"
	"github.com/grain-ebpf/grain/pipeline"
)

// Attribute keys of grain's own metrics and log records.
const (
	AttrPolicy       = attribute.Key("grain.policy")
	AttrLossReason   = attribute.Key("grain.loss.reason")
	AttrReloadResult = attribute.Key("grain.reload.result")
	AttrPolicyHash   = attribute.Key("grain.policy.hash")
	AttrVerdict      = attribute.Key("grain.verdict")
	AttrEvent        = attribute.Key("grain.event")
	AttrSink         = attribute.Key("grain.sink")
	AttrDiscard      = attribute.Key("grain.discard.reason")
)

// MetricsConfig configures NewMetrics.
type MetricsConfig struct {
	Config
	// Interval between exports. Zero leaves it to
	// OTEL_METRIC_EXPORT_INTERVAL, or the SDK's 60s default.
	Interval time.Duration
	// Counters reads the per-policy cumulative counters, normally
	// (*engine.Engine).Counters. Nil exports no rule metrics.
	Counters func() ([]engine.RuleCounter, error)
	// Status reads the reload status, normally (*daemon.Reloader).Status.
	// Nil exports no reload metrics (grain run with a fixed policy set).
	Status func() engine.Status
	// Pipeline reads the event pipeline's counts, normally
	// (*pipeline.Pipeline).Stats. Nil exports no pipeline metrics.
	Pipeline func() pipeline.Stats
	// Interfaces reads the verdicts by interface, normally
	// (*engine.Engine).InterfaceCounters. Nil exports none.
	Interfaces func() ([]engine.InterfaceCounter, error)
	// Hooks reads the counters and counts of kernel-hook policies;
	// zero: none are exported.
	Hooks HookMetricsConfig
}

// Metrics exports grain's counters as OpenTelemetry metrics. The values
// are read only when the periodic reader collects, so there is no cost
// between exports.
type Metrics struct {
	provider *sdkmetric.MeterProvider
	probes   *hookMetrics
}

// NewMetrics starts exporting. Every instrument is observable and read in
// one callback, so a collection sees counters and status from the same
// moment.
func NewMetrics(ctx context.Context, cfg MetricsConfig) (*Metrics, error) {
	exp, err := newMetricExporter(ctx, cfg.Config)
	if err != nil {
		return nil, err
	}
	res, err := newResource(ctx, cfg.Config)
	if err != nil {
		exp.Shutdown(ctx)
		return nil, err
	}
	var readerOpts []sdkmetric.PeriodicReaderOption
	if cfg.Interval > 0 {
		// Only when set: an option would override
		// OTEL_METRIC_EXPORT_INTERVAL, which the SDK reads otherwise.
		readerOpts = append(readerOpts, sdkmetric.WithInterval(cfg.Interval))
	}
	provider := sdkmetric.NewMeterProvider(
		sdkmetric.WithResource(res),
		sdkmetric.WithReader(sdkmetric.NewPeriodicReader(exp, readerOpts...)),
	)
	m := &Metrics{provider: provider}
	if err := m.register(cfg); err != nil {
		provider.Shutdown(ctx)
		return nil, err
	}
	return m, nil
}

// register creates every instrument of cfg on m's provider.
func (m *Metrics) register(cfg MetricsConfig) error {
	meter := validMeter{m.provider.Meter(instrumentationScope)}
	if err := register(meter, cfg); err != nil {
		return err
	}
	pm, err := registerHooks(meter, cfg.Hooks)
	m.probes = pm
	return err
}

func newMetricExporter(ctx context.Context, cfg Config) (sdkmetric.Exporter, error) {
	proto, err := cfg.protocol("METRICS")
	if err != nil {
		return nil, err
	}
	var exp sdkmetric.Exporter
	switch proto {
	case ProtocolGRPC:
		var opts []otlpmetricgrpc.Option
		if cfg.Endpoint != "" {
			opts = append(opts, otlpmetricgrpc.WithEndpointURL(cfg.Endpoint))
		}
		exp, err = otlpmetricgrpc.New(ctx, opts...)
	default:
		var opts []otlpmetrichttp.Option
		if cfg.Endpoint != "" {
			u, err := signalURL(cfg.Endpoint, "v1/metrics")
			if err != nil {
				return nil, err
			}
			opts = append(opts, otlpmetrichttp.WithEndpointURL(u))
		}
		exp, err = otlpmetrichttp.New(ctx, opts...)
	}
	if err != nil {
		return nil, fmt.Errorf("create OTLP metric exporter (%s): %w", proto, err)
	}
	return exp, nil
}

// register creates the instruments and the callback that observes them.
// counters creates cumulative observable counters on a meter and collects
// the errors. The engine's values are already totals since grain started
// (they survive reloads), which is exactly what an observable counter
// reports.
type counters struct {
	meter metric.Meter
	errs  []error
}

func (c *counters) counter(name, unit, desc string) metric.Int64ObservableCounter {
	inst, err := c.meter.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
	c.errs = append(c.errs, err)
	return inst
}

// Packet and kernel-hook policies report their events on the same
// instruments; one definition keeps them identical.
func (c *counters) eventsEmitted() metric.Int64ObservableCounter {
	return c.counter("grain.events.emitted", "{event}", "Events written to the ring buffer by each policy.")
}

func (c *counters) eventsRateLimited() metric.Int64ObservableCounter {
	return c.counter("grain.events.rate_limited", "{event}", "Events a policy's emit.rate_limit kept in the kernel: counted, not sent.")
}

func (c *counters) eventsLost() metric.Int64ObservableCounter {
	return c.counter("grain.events.lost", "{event}", "Events lost on their way from the kernel to a sink or the collector, by reason.")
}

func register(meter metric.Meter, cfg MetricsConfig) error {
	cs := &counters{meter: meter}
	counter := cs.counter
	packets := counter("grain.rule.packets", "{packet}", "Packets matched by each policy's rules.")
	bytes := counter("grain.rule.bytes", "By", "Bytes of the packets matched by each policy's rules.")
	emitted := cs.eventsEmitted()
	ifacePackets := counter("grain.interface.packets", "{packet}", "Packets judged by a rule on each interface, by verdict.")
	ifaceBytes := counter("grain.interface.bytes", "By", "Bytes of the packets judged by a rule on each interface, by verdict.")
	lost := cs.eventsLost()
	rateLimited := cs.eventsRateLimited()
	deduplicated := counter("grain.events.deduplicated", "{event}", "Events of xdp policies counted in the kernel instead of sent: repeats of an event sent less than the policy's emit.dedup before.")
	reloads := counter("grain.reloads", "{reload}", "Policy reloads by result.")
	received := counter("grain.events.received", "{event}", "Events read from the kernel's ring buffer.")
	discarded := counter("grain.events.discarded", "{event}", "Events the pipeline discarded as its stages say, by reason (filtered, sampled, rate_limited).")
	exported := counter("grain.events.exported", "{event}", "Events written or accepted by the collector, by sink.")
	pending, err := meter.Int64ObservableUpDownCounter("grain.events.pending", metric.WithUnit("{event}"),
		metric.WithDescription("Events queued in a sink or being exported, by sink."))
	errs := append(cs.errs, err)
	// No unit: an info-style series whose value is always 1 (a unit of
	// "1" would make it grain_policy_active_hash_ratio in Prometheus).
	hash, err := meter.Int64ObservableGauge("grain.policy.active_hash",
		metric.WithDescription("Always 1; grain.policy.hash names the active policy set."))
	errs = append(errs, err)
	applied, err := meter.Int64ObservableGauge("grain.policy.last_applied",
		metric.WithUnit("s"),
		metric.WithDescription("When the policy tree in force was applied, in seconds since the Unix epoch."))
	errs = append(errs, err)
	rulesActive, err := meter.Int64ObservableGauge("grain.policy.rules",
		metric.WithUnit("{rule}"),
		metric.WithDescription("Policies in force (packet and kernel-hook rules)."))
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("create instruments: %w", err)
	}

	// Attribute sets that never change are built once.
	lossRingFull := AttrLossReason.String("ring_buffer_full")
	lossQueueFull := AttrLossReason.String("queue_full")
	lossExportQueueFull := AttrLossReason.String("export_queue_full")
	lossExportFailed := AttrLossReason.String("export_failed")
	reloadOK := metric.WithAttributes(AttrReloadResult.String("success"))
	reloadFailed := metric.WithAttributes(AttrReloadResult.String("failure"))

	_, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		if cfg.Counters != nil {
			counters, err := cfg.Counters()
			if err != nil {
				// Nothing is observed for the rules: a gap is honest,
				// while zeros would look like a counter reset. The error
				// goes to the OpenTelemetry error handler rather than
				// back to the SDK, which would fail ForceFlush and
				// Shutdown although every point was exported.
				otel.Handle(fmt.Errorf("read rule counters: %w", err))
			}
			for _, c := range counters {
				policy := AttrPolicy.String(c.Policy)
				verdict := AttrVerdict.String(c.Verdict)
				byRule := metric.WithAttributes(policy, verdict)
				o.ObserveInt64(packets, toInt64(c.Packets), byRule)
				o.ObserveInt64(bytes, toInt64(c.Bytes), byRule)
				o.ObserveInt64(emitted, toInt64(c.Events), byRule)
				o.ObserveInt64(lost, toInt64(c.EventsLost), metric.WithAttributes(policy, verdict, lossRingFull))
				o.ObserveInt64(deduplicated, toInt64(c.EventsDeduplicated), byRule)
				o.ObserveInt64(rateLimited, toInt64(c.EventsRateLimited), byRule)
			}
		}
		if cfg.Interfaces != nil {
			ifaces, err := cfg.Interfaces()
			if err != nil {
				otel.Handle(fmt.Errorf("read interface counters: %w", err))
			}
			for _, c := range ifaces {
				attrs := metric.WithAttributes(semconv.NetworkInterfaceName(c.Interface), AttrVerdict.String(c.Verdict))
				o.ObserveInt64(ifacePackets, toInt64(c.Packets), attrs)
				o.ObserveInt64(ifaceBytes, toInt64(c.Bytes), attrs)
			}
		}
		if cfg.Pipeline != nil {
			st := cfg.Pipeline()
			o.ObserveInt64(received, toInt64(st.Received))
			for _, e := range st.Events {
				ev := AttrEvent.String(e.Event)
				o.ObserveInt64(lost, toInt64(e.QueueFull), metric.WithAttributes(ev, lossQueueFull))
				o.ObserveInt64(discarded, toInt64(e.Filtered), metric.WithAttributes(ev, AttrDiscard.String("filtered")))
				o.ObserveInt64(discarded, toInt64(e.Sampled), metric.WithAttributes(ev, AttrDiscard.String("sampled")))
				o.ObserveInt64(discarded, toInt64(e.RateLimited), metric.WithAttributes(ev, AttrDiscard.String("rate_limited")))
			}
			for _, k := range st.Sinks {
				sink := AttrSink.String(k.Sink)
				o.ObserveInt64(exported, toInt64(k.Exported), metric.WithAttributes(sink))
				o.ObserveInt64(lost, toInt64(k.QueueFull), metric.WithAttributes(sink, lossExportQueueFull))
				o.ObserveInt64(lost, toInt64(k.Failed), metric.WithAttributes(sink, lossExportFailed))
				o.ObserveInt64(pending, toInt64(k.Pending), metric.WithAttributes(sink))
			}
		}
		if cfg.Status != nil {
			st := cfg.Status()
			o.ObserveInt64(reloads, toInt64(st.ReloadsOK), reloadOK)
			o.ObserveInt64(reloads, toInt64(st.ReloadsError), reloadFailed)
			if st.PolicyHash != "" {
				o.ObserveInt64(hash, 1, metric.WithAttributes(AttrPolicyHash.String(st.PolicyHash)))
				o.ObserveInt64(applied, st.LastSuccess.Unix())
				o.ObserveInt64(rulesActive, int64(len(st.Rules)))
			}
		}
		return nil
	}, packets, bytes, ifacePackets, ifaceBytes, emitted, lost, deduplicated, rateLimited, reloads, hash, applied, rulesActive, received, discarded, exported, pending)
	if err != nil {
		return fmt.Errorf("register metrics callback: %w", err)
	}
	return nil
}

// toInt64 converts a kernel counter for the int64 instruments, saturating
// instead of wrapping to a negative value.
func toInt64(v uint64) int64 {
	if v > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}

// ForceFlush collects and exports now instead of at the next interval.
func (m *Metrics) ForceFlush(ctx context.Context) error {
	return m.provider.ForceFlush(ctx)
}

// Shutdown collects and exports a final time, then stops the exporter.
// Metrics cannot be used afterwards.
func (m *Metrics) Shutdown(ctx context.Context) error {
	if m.probes != nil {
		m.probes.close()
	}
	return m.provider.Shutdown(ctx)
}
