package export

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/grain-ebpf/grain/engine/hook"
)

// HookMetricsConfig says where the metrics of kernel-hook policies come
// from; every function is normally a method of the engine's Hooks or
// Reloader.
type HookMetricsConfig struct {
	// Counters reads each probe policy's cumulative counters.
	Counters func() ([]hook.RuleCounter, error)
	// Counts reads the in-kernel count aggregations.
	Counts func() ([]hook.CountSample, error)
	// MetricNames names the count metrics of the policies in force; an
	// instrument is made for each as it appears.
	MetricNames func() []string
	// Nesting reads the calls whose probe program started while another
	// ran on the same CPU: served in a deeper scratch level, or skipped.
	Nesting func() (hook.Nesting, error)
}

// hookSyncInterval is how often new count metrics get their instrument:
// a policy added by a reload is exported from the next collection after.
const hookSyncInterval = time.Second

// hookMetrics exports what kernel-hook policies count. Their count
// metrics are named by the policies ("process.execs" is exported as
// grain.process.execs), so instruments are made as reloads bring new
// names; the OpenTelemetry SDK cannot make them from inside a collection.
type hookMetrics struct {
	meter metric.Meter
	cfg   HookMetricsConfig

	mu     sync.Mutex
	counts map[string]metric.Int64ObservableCounter // by metric name
	reg    metric.Registration
	stop   chan struct{}
	done   chan struct{}
}

func registerHooks(meter metric.Meter, cfg HookMetricsConfig) (*hookMetrics, error) {
	pm := &hookMetrics{meter: meter, cfg: cfg, counts: map[string]metric.Int64ObservableCounter{},
		stop: make(chan struct{}), done: make(chan struct{})}
	cs := &counters{meter: meter}
	counter := cs.counter
	hits := counter("grain.probe.hits", "{call}", "Kernel calls selected by each kernel-hook policy.")
	emitted := cs.eventsEmitted()
	lost := cs.eventsLost()
	limited := cs.eventsRateLimited()
	signals := counter("grain.probe.signals", "{signal}", "Signals sent to processes by each kernel-hook policy.")
	wouldSignals := counter("grain.probe.would_signals", "{signal}", "Signals a kernel-hook policy in monitor mode would have sent: its hits.")
	countErrors := counter("grain.probe.count_errors", "{call}", "Calls a count could not record because its map was full.")
	nested := counter("grain.probe.nested", "{call}",
		"Kernel calls whose probe program started while another grain probe program ran on the same CPU (an interrupt), served in a deeper per-CPU scratch level.")
	nestedSkipped := counter("grain.probe.nested_skipped", "{call}",
		"Kernel calls no kernel-hook policy saw: their probe program found every per-CPU scratch level busy with grain programs it interrupted.")
	if err := errors.Join(cs.errs...); err != nil {
		return nil, fmt.Errorf("create probe instruments: %w", err)
	}
	lossRingFull := AttrLossReason.String("ring_buffer_full")
	if cfg.Counters != nil {
		_, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
			counters, err := cfg.Counters()
			if err != nil {
				otel.Handle(fmt.Errorf("read probe counters: %w", err))
			}
			for _, c := range counters {
				policy := AttrPolicy.String(c.Policy)
				byPolicy := metric.WithAttributes(policy)
				o.ObserveInt64(hits, toInt64(c.Hits), byPolicy)
				o.ObserveInt64(emitted, toInt64(c.Events), byPolicy)
				o.ObserveInt64(lost, toInt64(c.EventsLost), metric.WithAttributes(policy, lossRingFull))
				o.ObserveInt64(limited, toInt64(c.EventsRateLimited), byPolicy)
				o.ObserveInt64(signals, toInt64(c.Signals), byPolicy)
				if c.WouldSignals > 0 {
					o.ObserveInt64(wouldSignals, toInt64(c.WouldSignals), byPolicy)
				}
				o.ObserveInt64(countErrors, toInt64(c.CountErrors), byPolicy)
			}
			return nil
		}, hits, emitted, lost, limited, signals, wouldSignals, countErrors)
		if err != nil {
			return nil, err
		}
	}
	if cfg.Nesting != nil {
		_, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
			n, err := cfg.Nesting()
			if err != nil {
				otel.Handle(err)
				return nil
			}
			o.ObserveInt64(nested, toInt64(n.Nested))
			o.ObserveInt64(nestedSkipped, toInt64(n.Skipped))
			return nil
		}, nested, nestedSkipped)
		if err != nil {
			return nil, err
		}
	}
	if cfg.Counts == nil || cfg.MetricNames == nil {
		close(pm.done)
		return pm, nil
	}
	if err := pm.sync(); err != nil {
		return nil, err
	}
	go pm.run()
	return pm, nil
}

func (pm *hookMetrics) run() {
	defer close(pm.done)
	t := time.NewTicker(hookSyncInterval)
	defer t.Stop()
	for {
		select {
		case <-pm.stop:
			return
		case <-t.C:
			if err := pm.sync(); err != nil {
				otel.Handle(err)
			}
		}
	}
}

func (pm *hookMetrics) close() {
	select {
	case <-pm.done:
		return
	default:
	}
	close(pm.stop)
	<-pm.done
}

// sync makes an instrument for every count metric that has none, and
// registers one callback observing them all. Instruments of metrics no
// longer in force stay: their totals are cumulative since grain started.
func (pm *hookMetrics) sync() error {
	pm.mu.Lock()
	defer pm.mu.Unlock()
	added := false
	for _, name := range pm.cfg.MetricNames() {
		if _, ok := pm.counts[name]; ok {
			continue
		}
		c, err := pm.meter.Int64ObservableCounter("grain."+name,
			metric.WithDescription("Counted in the kernel by the kernel-hook policies with count metric "+name+"."))
		if err != nil {
			return fmt.Errorf("create instrument for count metric %s: %w", name, err)
		}
		pm.counts[name] = c
		added = true
	}
	if !added {
		return nil
	}
	var insts []metric.Observable
	for _, c := range pm.counts {
		insts = append(insts, c)
	}
	reg, err := pm.meter.RegisterCallback(pm.observe, insts...)
	if err != nil {
		return err
	}
	if pm.reg != nil {
		pm.reg.Unregister()
	}
	pm.reg = reg
	return nil
}

// observe reports every aggregation, labels as attributes named by
// OpenTelemetry's semantic conventions where one fits.
func (pm *hookMetrics) observe(_ context.Context, o metric.Observer) error {
	samples, err := pm.cfg.Counts()
	if err != nil {
		otel.Handle(fmt.Errorf("read probe counts: %w", err))
		return nil
	}
	pm.mu.Lock()
	defer pm.mu.Unlock()
	attrs := make([]attribute.KeyValue, 0, 8)
	for _, s := range samples {
		c, ok := pm.counts[s.Metric]
		if !ok {
			continue // made at the next sync
		}
		attrs = append(attrs[:0], AttrPolicy.String(s.Policy))
		for _, l := range s.Labels {
			attrs = append(attrs, fieldKey(l.Name).String(l.Value))
		}
		o.ObserveInt64(c, toInt64(s.Value), metric.WithAttributeSet(attribute.NewSet(slices.Clone(attrs)...)))
	}
	return nil
}
