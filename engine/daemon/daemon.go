// Package daemon is `grain run`'s lifecycle: Start brings grain's parts up
// in one written order (health, the policy worker, the event pipeline, the
// engine, the watcher, kernel hooks, the first reload, the status socket,
// metrics, the event readers), Run keeps the policy tree in force (the
// Reloader), and Stop takes the parts down in another written order, the
// one that keeps enforcement in place the longest (stopOrder).
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/engine"
	"github.com/grain-ebpf/grain/engine/hook"
	"github.com/grain-ebpf/grain/export"
	"github.com/grain-ebpf/grain/pipeline"
	"github.com/grain-ebpf/grain/policies"
)

// Config is what `grain run`'s flags say.
type Config struct {
	Policies   string   // the policy tree, watched: every change reloads
	Interfaces []string // attach here instead of the policies' interfaces
	Monitor    bool     // every policy in monitor mode: drop nothing, signal nothing
	PinPath    string   // bpffs directory of the pinned maps and links
	// StatusSocket is the Unix socket `grain status` reads; "" serves none.
	StatusSocket string
	// KeepOnExit leaves the packet program attached and its state pinned
	// when grain stops, for the next grain to adopt (an upgrade).
	KeepOnExit bool
	// Debounce is the quiet time after a file change before a reload.
	Debounce time.Duration
	// Metrics, when set, serves /metrics, /healthz and /readyz. The caller
	// binds it, so that an address that is taken or malformed is refused
	// before anything starts; Stop closes it.
	Metrics net.Listener
	// OTLP exports metrics and events to the collector OTLPConfig names.
	OTLP        bool
	OTLPConfig  export.Config
	OTLPQueue   int           // events queued for OTLP export; 0: the default
	OTLPExports int           // OTLP log exports in flight at once; 0: the default
	OTLPRetry   time.Duration // how long a failed OTLP export is retried
	// Stdout receives the events as JSON lines; nil writes none.
	Stdout          io.Writer
	EventQueue      int    // events between the kernel readers and the pipeline
	RingBufferBytes uint32 // the packet-event ring buffer
	Limits          policies.Limits
	// ExitFlush bounds what Stop spends flushing telemetry; zero is
	// DefaultExitFlush.
	ExitFlush time.Duration
	Log       *slog.Logger
	// Reload asks for a forced reload with every value (SIGHUP).
	Reload <-chan os.Signal
}

// DefaultExitFlush bounds what grain's exit spends flushing its sinks.
const DefaultExitFlush = 5 * time.Second

// Daemon is a started grain. Start returns it; Run serves until its context
// ends, and Stop takes it down.
type Daemon struct {
	cfg Config
	log *slog.Logger

	worker   *policies.Worker
	pipe     *pipeline.Pipeline
	jsonSink *pipeline.JSONSink
	logSink  *export.LogSink
	eng      *engine.Engine
	watcher  *policies.Watcher
	hooks    *hook.Hooks
	reloader *Reloader
	status   net.Listener
	otlp     *export.Metrics
	prom     *export.Metrics
	http     *http.Server
	mux      *http.ServeMux

	// The reloads and link events (cancelled first), and the event
	// readers with the pipeline.
	stopReloads context.CancelFunc
	reloadsDone chan struct{}
	stopReaders context.CancelFunc
	readersDone chan struct{}
	readErr     error
	stopPipe    context.CancelFunc

	// failed: Start failed, and what an earlier grain left in force stays.
	failed   bool
	stopping sync.Once
	stopped  chan struct{}
	mu       sync.Mutex // guards isStopping, and reloader's setting
	// isStopping makes /readyz say so from the first step of Stop.
	isStopping bool
}

// Start brings grain up, in this order:
//
//  1. the HTTP server of /healthz and /readyz (not ready until step 7);
//  2. the policy worker, and the tree's validation, before anything
//     touches the kernel: a bad tree fails fast;
//  3. the event pipeline and its sinks;
//  4. the engine: the packet program, adopting an earlier grain's pins;
//  5. the watcher, before the first load, so an edit made during it is seen;
//  6. the kernel hooks (a kernel without them still enforces packet
//     policies; a tree with hooks then fails to apply, saying why);
//  7. the Reloader and the first reload: enforcement;
//  8. the status socket;
//  9. following links (a new interface is attached as it appears);
//  10. OTLP and Prometheus metrics;
//  11. the event readers, the pipeline and the reload loop.
//
// On an error, what was started is stopped as Stop does, except that what
// an earlier grain left in force stays in force.
func Start(ctx context.Context, cfg Config) (*Daemon, error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.ExitFlush <= 0 {
		cfg.ExitFlush = DefaultExitFlush
	}
	d := &Daemon{cfg: cfg, log: cfg.Log, stopped: make(chan struct{})}
	if err := d.start(ctx); err != nil {
		d.failed = true
		d.Stop()
		return nil, err
	}
	return d, nil
}

// start is Start's order; what it started is in d.
func (d *Daemon) start(ctx context.Context) (err error) {
	cfg, log := d.cfg, d.log

	if cfg.Metrics != nil {
		d.mux = http.NewServeMux()
		d.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
		d.mux.HandleFunc("GET /readyz", d.serveReady)
		d.http = &http.Server{Handler: d.mux, ReadHeaderTimeout: 5 * time.Second}
		go d.http.Serve(cfg.Metrics)
	}

	// Policy trees are evaluated in a worker process, within limits: a
	// tree that would evaluate for hours costs a bounded time and never
	// holds up the status socket, signals or the rule set in force.
	if d.worker, err = policies.NewWorker(cfg.Limits); err != nil {
		return err
	}
	if err := validate(ctx, d.worker, cfg.Policies, cfg.Interfaces); err != nil {
		return err
	}

	var sinks []pipeline.Sink
	if cfg.Stdout != nil {
		d.jsonSink = pipeline.NewJSONSink(cfg.Stdout)
		d.jsonSink.Log = log
		sinks = append(sinks, d.jsonSink)
	}
	if cfg.OTLP {
		d.logSink, err = export.NewLogSink(context.Background(), export.LogSinkConfig{Config: cfg.OTLPConfig, QueueSize: cfg.OTLPQueue, Concurrency: cfg.OTLPExports, RetryFor: cfg.OTLPRetry})
		if err != nil {
			return fmt.Errorf("OTLP logs: %w", err)
		}
		sinks = append(sinks, d.logSink)
	}
	d.pipe = pipeline.New(pipeline.Options{QueueEvents: cfg.EventQueue, Sinks: sinks})

	if d.eng, err = engine.New(engine.Options{Logger: log, PinPath: cfg.PinPath, RingBufferBytes: cfg.RingBufferBytes}); err != nil {
		return err
	}
	// The interfaces are known before the policies load (--interface):
	// their program verifies meanwhile.
	d.eng.VerifyAhead(cfg.Interfaces)
	if d.watcher, err = policies.NewWatcher(cfg.Policies, cfg.Debounce, log); err != nil {
		return fmt.Errorf("watch policies: %w", err)
	}
	hooks, hooksErr := hook.New(hook.Options{Logger: log})
	if hooksErr != nil {
		log.Warn("kernel hook policies unavailable", "error", hooksErr)
	} else {
		d.hooks = hooks
	}

	reloader := &Reloader{Dir: cfg.Policies, Interfaces: cfg.Interfaces, Monitor: cfg.Monitor, Engine: d.eng, Hooks: d.hooks, HooksErr: hooksErr,
		Log: log, Pipeline: d.pipe, Load: d.worker.Load}
	d.mu.Lock() // /readyz reads it
	d.reloader = reloader
	d.mu.Unlock()
	if err := d.reloader.Reload(ctx, true); err != nil {
		return err
	}

	if cfg.StatusSocket != "" {
		if ln, err := d.reloader.ServeStatus(cfg.StatusSocket); err != nil {
			log.Warn("no status socket", "error", err)
		} else {
			d.status = ln
		}
	}

	// Interfaces follow: when a link that the policies name or match with
	// a pattern appears, or an attached one goes, the engine applies the
	// rule set in force again, itself, on its own goroutine. It does not
	// go through the Reloader: the policy files are not read again, so a
	// new link gets the last good policy even while the tree on disk is
	// broken or half-saved, and within milliseconds. The engine's lock
	// serializes this with the reloads.
	reloadCtx, stopReloads := context.WithCancel(context.Background())
	d.stopReloads = stopReloads
	if err := d.eng.FollowLinks(reloadCtx); err != nil {
		log.Warn("interfaces will not follow: new links are attached at the next reload only", "error", err)
	}

	if err := d.startMetrics(ctx); err != nil {
		return err
	}

	// The readers feed the pipeline until Stop; reloads run beside Run's
	// loop, so that signals are seen while a tree is evaluated, and a
	// change that comes meanwhile abandons that evaluation.
	pipeCtx, stopPipe := context.WithCancel(context.Background())
	d.stopPipe = stopPipe
	go d.pipe.Run(pipeCtx)
	readCtx, stopReaders := context.WithCancel(context.Background())
	d.stopReaders, d.readersDone = stopReaders, make(chan struct{})
	go func() {
		defer close(d.readersDone)
		hookErr := make(chan error, 1)
		go func() {
			if d.hooks == nil {
				hookErr <- nil
				return
			}
			hookErr <- d.hooks.ReadEvents(readCtx, d.pipe.Producer())
		}()
		d.readErr = errors.Join(d.eng.ReadEvents(readCtx, d.pipe.Producer()), <-hookErr)
	}()
	d.reloadsDone = make(chan struct{})
	go func() {
		defer close(d.reloadsDone)
		d.reloader.Serve(reloadCtx)
	}()
	// Logged once grain watches files and links: from here on every change
	// is seen (tests wait for this line).
	log.Info("enforcing", "policies", cfg.Policies, "interfaces", strings.Join(d.eng.Interfaces(), ","))
	return nil
}

// validate loads and compiles the tree without applying it.
func validate(ctx context.Context, w *policies.Worker, dir string, interfaces []string) error {
	snap, err := w.Load(ctx, dir)
	if err != nil {
		return err
	}
	_, err = codegen.Compile(snap.Policies, codegen.Options{Interfaces: interfaces})
	return err
}

// startMetrics starts the OTLP metric exporter and the Prometheus handler.
func (d *Daemon) startMetrics(ctx context.Context) error {
	var hookMetrics export.HookMetricsConfig
	if d.hooks != nil {
		hookMetrics = export.HookMetricsConfig{Counters: d.hooks.Counters, Counts: d.hooks.CountSnapshot,
			MetricNames: d.reloader.CountMetrics, Nesting: d.hooks.Nesting}
	}
	metricsCfg := func(c export.Config) export.MetricsConfig {
		return export.MetricsConfig{Config: c, Counters: d.eng.Counters, Status: d.reloader.Status,
			Pipeline: d.pipe.Stats, Hooks: hookMetrics, Interfaces: d.eng.InterfaceCounters}
	}
	if d.cfg.OTLP {
		m, err := export.NewMetrics(ctx, metricsCfg(d.cfg.OTLPConfig))
		if err != nil {
			return fmt.Errorf("OTLP metrics: %w", err)
		}
		d.otlp = m
		d.log.Info("exporting over OTLP", "endpoint", d.cfg.OTLPConfig.Endpoint)
	}
	if d.http != nil {
		m, handler, err := export.NewPrometheus(ctx, metricsCfg(export.Config{ServiceVersion: d.cfg.OTLPConfig.ServiceVersion}))
		if err != nil {
			return fmt.Errorf("Prometheus metrics: %w", err)
		}
		d.prom = m
		d.mux.Handle("GET /metrics", handler)
		d.log.Info("serving Prometheus metrics", "url", "http://"+d.cfg.Metrics.Addr().String()+"/metrics")
	}
	return nil
}

// Run serves until ctx ends (SIGINT, SIGTERM) or the event readers fail,
// and then stops grain (Stop). Changes to the tree and Config.Reload
// request reloads.
func (d *Daemon) Run(ctx context.Context) error {
	for {
		select {
		case <-d.watcher.Changes():
			d.reloader.Request(false)
		case <-d.cfg.Reload:
			d.log.Info("SIGHUP: reloading")
			d.reloader.Request(true)
		case <-d.readersDone:
			return d.Stop()
		case <-ctx.Done():
			return d.Stop()
		}
	}
}

// Status is the status `grain status` prints.
func (d *Daemon) Status() engine.Status { return d.reloader.Status() }

// A stopStep is one step of Stop.
type stopStep struct {
	name string
	run  func()
}

// Stop takes grain down in stopOrder and returns the event readers' error.
// It runs once; later calls wait for the first and return the same.
func (d *Daemon) Stop() error {
	d.stopping.Do(func() {
		d.mu.Lock()
		d.isStopping = true
		d.mu.Unlock()
		for _, step := range d.stopOrder() {
			if !d.failed { // a failed start has said why
				d.log.Info("stopping", "step", step.name)
			}
			step.run()
		}
		close(d.stopped)
	})
	<-d.stopped
	return d.readErr
}

// stopOrder is the order grain stops in. Enforcement comes last: packets
// and hooked calls are judged by the rules in force while every other part
// stops, and with KeepOnExit the next grain adopts them from the pins.
//
//  1. reloads: no reload nor link event may change the rules once grain
//     stops; the watcher and the policy worker go with them;
//  2. event readers: what the kernel sends from here on stays in its ring;
//  3. telemetry: the pipeline drains, stdout's writer and the OTLP sinks
//     flush, all within Config.ExitFlush (what is left is counted as
//     lost), and the metrics' final points are exported;
//  4. the HTTP server (metrics and health), after the final points;
//  5. the status socket: removed before the rules it reports are let go;
//  6. enforcement: the kernel hooks are detached (their links are not
//     pinned); the packet program is detached and its pins removed, or,
//     with KeepOnExit (or a failed start over an earlier grain's pins),
//     left attached and pinned.
func (d *Daemon) stopOrder() []stopStep {
	return []stopStep{
		{"reloads", d.stopReloading},
		{"event readers", func() {
			if d.stopReaders != nil {
				d.stopReaders()
				<-d.readersDone
			}
		}},
		{"telemetry", d.drainTelemetry},
		{"metrics server", func() {
			if d.http != nil {
				d.http.Close()
			}
			if d.cfg.Metrics != nil {
				d.cfg.Metrics.Close()
			}
		}},
		{"status socket", func() {
			if d.status != nil {
				d.status.Close()
			}
		}},
		{"enforcement", d.release},
	}
}

func (d *Daemon) stopReloading() {
	if d.stopReloads != nil {
		d.stopReloads()
	}
	if d.reloadsDone != nil {
		<-d.reloadsDone
	}
	if d.watcher != nil {
		d.watcher.Close()
	}
	if d.worker != nil {
		d.worker.Close()
	}
}

// drainTelemetry flushes what is pending (stdout's lines, OTLP log
// records and metrics) for at most ExitFlush in all; what is left is
// counted as lost.
func (d *Daemon) drainTelemetry() {
	flush, cancel := context.WithTimeoutCause(context.Background(), d.cfg.ExitFlush,
		fmt.Errorf("grain is stopping: flushing takes at most %v", d.cfg.ExitFlush))
	defer cancel()
	if d.stopPipe != nil {
		d.stopPipe()
		select {
		case <-d.pipe.Done():
		case <-flush.Done():
			// A stdout whose reader does not read holds the pipeline in
			// a write: give it up (its lines are counted as lost).
			if d.jsonSink != nil {
				d.jsonSink.Abandon()
			}
			<-d.pipe.Done()
		}
		if d.jsonSink != nil {
			// What stdout's writer still holds, within the bound; the
			// rest is counted as lost.
			d.jsonSink.Drain(flush)
			d.jsonSink.Abandon()
		}
		if st := d.pipe.Stats(); st.QueueFull > 0 {
			d.log.Warn("events dropped: the queue in front of the pipeline was full", "dropped", st.QueueFull)
		}
		if d.jsonSink != nil {
			if st := d.jsonSink.Stats(); st.Failed+st.QueueFull > 0 {
				d.log.Warn("events not written to stdout", "dropped", st.Failed+st.QueueFull, "written", st.Exported)
			}
		}
	}
	// The metrics' final points first, so that they do not count the
	// events still being flushed; a collector that is down must not hold
	// up the exit.
	if d.otlp != nil {
		d.otlp.Shutdown(flush)
	}
	if d.logSink != nil {
		d.logSink.Shutdown(flush)
	}
	if d.prom != nil {
		d.prom.Shutdown(context.Background())
	}
}

// release lets the rules in force go, or leaves them to the next grain.
func (d *Daemon) release() {
	// Kernel hooks live as long as grain: their links are not pinned.
	if d.hooks != nil {
		d.hooks.Close()
	}
	switch {
	case d.eng == nil:
	case d.failed:
		// A failed start leaves what an earlier grain left in force.
		if d.eng.Adopted() {
			d.eng.Release()
		} else {
			d.eng.Close()
		}
	case d.cfg.KeepOnExit:
		d.eng.Release()
	default:
		d.log.Info("stopping: detaching")
		d.eng.Close()
	}
}
