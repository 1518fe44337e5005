// Command grain validates CUE policies, compiles them into the configuration
// of grain's generic eBPF programs and enforces them.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.opentelemetry.io/otel"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/engine"
	"github.com/grain-ebpf/grain/engine/daemon"
	"github.com/grain-ebpf/grain/export"
	"github.com/grain-ebpf/grain/pipeline"
	"github.com/grain-ebpf/grain/policies"
	"github.com/grain-ebpf/grain/schema"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

const usage = `grain: a declarative eBPF policy engine

Usage:
  grain run --policies DIR [--interface IFACE]...   enforce policies, print events as JSON lines
  grain check [--strict] DIR                        validate policies (exit 1 on errors; --strict: on warnings)
  grain compile [--interface IFACE]... DIR          print the compiled Plan as JSON
  grain test [--kernel] [--junit FILE] [DIR]        run the tests beside the policies (*_test.cue)
  grain diff [--pcap FILE] OLD NEW                  compare two trees (directories or git revisions)
  grain fmt [--check] [PATH...]                     format CUE files (--check: list unformatted, exit 1)
  grain status                                      print the running grain's policy hash, rules, reload result
  grain doctor [--format json]                      what this node offers grain (exit 1: packet policies cannot run)
  grain version                                     print the version
  grain help policy                                 describe the policy schema
`

func main() {
	policies.ServeWorkerIfAsked()
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stdout, stderr)
	case "check":
		return cmdCheck(args[1:], stdout, stderr)
	case "compile":
		return cmdCompile(args[1:], stdout, stderr)
	case "test":
		return cmdTest(args[1:], stdout, stderr)
	case "diff":
		return cmdDiff(args[1:], stdout, stderr)
	case "status":
		return cmdStatus(args[1:], stdout, stderr)
	case "fmt":
		return cmdFmt(args[1:], stdout, stderr)
	case "doctor":
		return cmdDoctor(args[1:], stdout, stderr)
	case "version", "--version":
		fmt.Fprintln(stdout, "grain", versionString())
		return 0
	case "help", "-h", "--help":
		if len(args) > 1 && args[1] == "policy" {
			fmt.Fprint(stdout, schema.Source, "\n", schema.PipelineSource)
			return 0
		}
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "grain: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

func versionString() string {
	if version != "" {
		return version
	}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" {
				return "dev-" + s.Value[:min(12, len(s.Value))]
			}
		}
	}
	return "dev"
}

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// evalFlags are the bounds of a policy tree's evaluation, on every
// command that evaluates one.
func evalFlags(fs *flag.FlagSet) *policies.Limits {
	l := policies.DefaultLimits
	fs.DurationVar(&l.Timeout, "eval-timeout", l.Timeout, "longest evaluation of the policy tree; one that takes longer is stopped and reported")
	fs.Func("eval-memory", fmt.Sprintf("most memory in MiB an evaluation of the policy tree may use (default %d)", l.MemoryBytes>>20), func(v string) error {
		mib, err := strconv.ParseUint(v, 10, 32)
		if err != nil || mib < 16 {
			return errors.New("want a number of MiB, at least 16")
		}
		l.MemoryBytes = mib << 20
		return nil
	})
	return &l
}

// checkLimits refuses limits no evaluation could work within.
func checkLimits(l *policies.Limits, stderr io.Writer) bool {
	if l.Timeout < 100*time.Millisecond {
		fmt.Fprintf(stderr, "grain: --eval-timeout %v: want at least 100ms\n", l.Timeout)
		return false
	}
	return true
}

// compileDir loads, validates and compiles a policy tree, evaluating it in
// a worker process within limits.
func compileDir(dir string, interfaces []string, limits policies.Limits) (*policies.Snapshot, *codegen.Plan, error) {
	w, err := policies.NewWorker(limits)
	if err != nil {
		return nil, nil, err
	}
	defer w.Close()
	return compileWith(context.Background(), w, dir, interfaces)
}

func compileWith(ctx context.Context, w *policies.Worker, dir string, interfaces []string) (*policies.Snapshot, *codegen.Plan, error) {
	snap, err := w.Load(ctx, dir)
	if err != nil {
		return nil, nil, err
	}
	plan, err := codegen.Compile(snap.Policies, codegen.Options{Interfaces: interfaces})
	if err != nil {
		return nil, nil, err
	}
	return snap, plan, nil
}

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	limits := evalFlags(fs)
	strict := fs.Bool("strict", false, "make warnings (shadowed policies) errors")
	if err := fs.Parse(args); err != nil || !checkLimits(limits, stderr) {
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: grain check [--strict] DIR")
		return 2
	}
	snap, plan, err := compileDir(fs.Arg(0), nil, *limits)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	if reportShadows(plan, *strict, stderr) {
		return 1
	}
	fmt.Fprintf(stdout, "%s: %d policies in %d files, %d packet rules: OK\n", fs.Arg(0), len(snap.Policies), len(snap.Files), len(plan.Rules))
	return 0
}

func cmdCompile(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("compile", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var ifaces stringList
	fs.Var(&ifaces, "interface", "attach to this interface, or to those matching this shell pattern (veth*), instead of the policies' (repeatable)")
	limits := evalFlags(fs)
	if err := fs.Parse(args); err != nil || !checkLimits(limits, stderr) {
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: grain compile [--interface IFACE] DIR")
		return 2
	}
	_, plan, err := compileDir(fs.Arg(0), ifaces, *limits)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	b, err := plan.JSON()
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	stdout.Write(b)
	return 0
}

// Defaults of `grain run`; tests and a second instance override them.
const (
	defaultPinPath = "/sys/fs/bpf/grain"
	defaultSocket  = "/run/grain/grain.sock"
)

func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("policies", "", "directory of .cue policy files (watched: every change reloads)")
	var ifaces stringList
	fs.Var(&ifaces, "interface", "attach to this interface, or to those matching this shell pattern (veth*), instead of the policies' (repeatable)")
	pinPath := fs.String("pin-path", defaultPinPath, "bpffs directory holding grain's pinned maps and links")
	socket := fs.String("status-socket", defaultSocket, "root-only Unix socket that `grain status` reads")
	monitor := fs.Bool("monitor", false, "put every policy in monitor mode: judge, count and emit, but drop nothing (verdict would_drop) and send no signal")
	keep := fs.Bool("keep-on-exit", false, "leave the program attached and its state pinned on exit (for upgrades); by default grain detaches everything")
	debounce := fs.Duration("debounce", 100*time.Millisecond, "quiet time after a file change before reloading")
	metricsAddr := fs.String("metrics-addr", "", "serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464)")
	otlpEndpoint := fs.String("otlp-endpoint", "", "also export metrics and events over OTLP to this collector URL (also enabled by OTEL_EXPORTER_OTLP_ENDPOINT; protocol from OTEL_EXPORTER_OTLP_PROTOCOL)")
	toStdout := fs.Bool("stdout", true, "write events as JSON lines on stdout")
	eventQueue := fs.Int("event-queue", pipeline.DefaultQueueEvents, "events buffered between the kernel reader and the pipeline; when full, events are dropped and counted")
	otlpQueue := fs.Int("otlp-queue", 0, "events buffered for OTLP export; when full, events are dropped and counted (default OTEL_BLRP_MAX_QUEUE_SIZE, or 8192)")
	otlpExports := fs.Int("otlp-exports", export.DefaultConcurrency, fmt.Sprintf("OTLP log exports in flight at once, each over its own connection, from 1 to %d: more keep up with a collector that answers slowly at high event rates", maxOTLPExports))
	otlpRetry := fs.Duration("otlp-retry", 30*time.Second, "how long a failed OTLP export is retried (with backoff) before its events are dropped and counted")
	ringBytes := fs.Uint("event-ring-bytes", 1<<20, fmt.Sprintf("size of the kernel's packet-event ring buffer in bytes (a power of two, at least %d): it holds the events of a burst until grain reads them", bpf.MinRingBufferBytes))
	exitFlush := fs.Duration("exit-flush", daemon.DefaultExitFlush, "on exit, how long grain waits for its event sinks (stdout, OTLP) to flush before it counts what is left as lost; enforcement stays meanwhile")
	memLimit := fs.Int64("memory-limit", 24<<20, "soft limit in bytes of the Go runtime's memory (the garbage collector works harder near it; GOMEMLIMIT, when set, wins); 0: none")
	limits := evalFlags(fs)
	if err := fs.Parse(args); err != nil || !checkLimits(limits, stderr) {
		return 2
	}
	if *dir == "" || fs.NArg() != 0 {
		fmt.Fprintln(stderr, "usage: grain run --policies DIR [--interface IFACE]... [--keep-on-exit]")
		return 2
	}
	// Every flag is checked before anything touches the kernel. A value
	// the code below would take for "the default" (a zero queue or retry
	// time) is refused too: whoever typed it meant something else.
	set := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var bad []string
	check := func(ok bool, format string, args ...any) {
		if !ok {
			bad = append(bad, fmt.Sprintf(format, args...))
		}
	}
	check(*eventQueue >= 1 && *eventQueue <= maxQueueEvents, "--event-queue %d: want a number of events from 1 to %d", *eventQueue, maxQueueEvents)
	check(!set["otlp-queue"] || *otlpQueue >= 1 && *otlpQueue <= maxQueueEvents, "--otlp-queue %d: want a number of events from 1 to %d", *otlpQueue, maxQueueEvents)
	check(*otlpExports >= 1 && *otlpExports <= maxOTLPExports, "--otlp-exports %d: want a number of exports from 1 to %d", *otlpExports, maxOTLPExports)
	check(*otlpRetry > 0, "--otlp-retry %v: want a positive duration (e.g. 30s)", *otlpRetry)
	check(*debounce > 0, "--debounce %v: want a positive duration (e.g. 100ms)", *debounce)
	check(*exitFlush > 0, "--exit-flush %v: want a positive duration (e.g. 5s)", *exitFlush)
	check(*memLimit >= 0, "--memory-limit %d: want a number of bytes, or 0 for no limit", *memLimit)
	r := *ringBytes
	check(r >= bpf.MinRingBufferBytes && r <= 1<<30 && r&(r-1) == 0, "--event-ring-bytes %d: must be a power of two from %d to 1073741824", r, bpf.MinRingBufferBytes)
	if len(bad) > 0 {
		fmt.Fprintf(stderr, "grain: %s\n", strings.Join(bad, "\ngrain: "))
		return 2
	}
	// Bound now, so that an address that is taken or malformed is refused
	// before anything is attached.
	var metricsLn net.Listener
	if *metricsAddr != "" {
		ln, err := net.Listen("tcp", *metricsAddr)
		if err != nil {
			fmt.Fprintf(stderr, "grain: --metrics-addr %s: %v\n", *metricsAddr, err)
			return 2
		}
		defer ln.Close()
		metricsLn = ln
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	if err := raiseCapabilities(); err != nil {
		log.Warn("file capabilities not raised", "error", err)
	}
	if os.Getenv("GOMEMLIMIT") == "" && *memLimit > 0 {
		// Under a flood of events the queues fill with live events and
		// the default GOGC lets garbage double the heap on top of them:
		// a soft limit keeps grain's RSS within what a small device
		// gives it (BENCHMARKS.md: 100 policies exporting).
		debug.SetMemoryLimit(*memLimit)
	}
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) { log.Warn("OpenTelemetry", "error", err) }))
	// A write to a closed stdout pipe fails (and is counted) instead of
	// killing grain with SIGPIPE before it can detach.
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	cfg := daemon.Config{
		Policies: *dir, Interfaces: ifaces, Monitor: *monitor, PinPath: *pinPath, StatusSocket: *socket, KeepOnExit: *keep,
		Debounce: *debounce, Metrics: metricsLn, EventQueue: *eventQueue, RingBufferBytes: uint32(*ringBytes),
		OTLP:       *otlpEndpoint != "" || otlpFromEnv(),
		OTLPConfig: export.Config{Endpoint: *otlpEndpoint, ServiceVersion: versionString()},
		OTLPQueue:  *otlpQueue, OTLPExports: *otlpExports, OTLPRetry: *otlpRetry, Limits: *limits, ExitFlush: *exitFlush,
		Log: log, Reload: hup,
	}
	if *toStdout {
		cfg.Stdout = stdout
	}

	// SIGINT and SIGTERM end ctx: they abandon a tree's evaluation too.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	d, err := daemon.Start(ctx, cfg)
	if err != nil {
		fmt.Fprintln(stderr, "grain:", err)
		return 1
	}
	if err := d.Run(ctx); err != nil {
		fmt.Fprintln(stderr, "grain:", err)
		return 1
	}
	return 0
}

// maxOTLPExports bounds --otlp-exports: each export holds a connection and
// a batch (up to 3 MiB) in memory.
const maxOTLPExports = 16

// maxQueueEvents bounds --event-queue and --otlp-queue: each event queued
// costs memory up front.
const maxQueueEvents = 1 << 24

// otlpFromEnv reports whether the standard OpenTelemetry variables name a
// collector.
func otlpFromEnv() bool {
	for _, v := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"} {
		if os.Getenv(v) != "" {
			return true
		}
	}
	return false
}

func cmdStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("status-socket", defaultSocket, "the socket of the running grain")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the running grain's answer")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *timeout <= 0 {
		fmt.Fprintf(stderr, "grain status: --timeout %v: want a positive duration (e.g. 5s)\n", *timeout)
		return 2
	}
	deadline := time.Now().Add(*timeout)
	conn, err := net.DialTimeout("unix", *socket, *timeout)
	if err != nil {
		fmt.Fprintf(stderr, "grain status: no grain answers on %s (is `grain run` running, and are you root?): %v\n", *socket, err)
		return 1
	}
	defer conn.Close()
	conn.SetDeadline(deadline)
	var st engine.Status
	if err := json.NewDecoder(conn).Decode(&st); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			fmt.Fprintf(stderr, "grain status: the grain on %s did not answer within %v (it may be stuck; --timeout waits longer)\n", *socket, *timeout)
		} else {
			fmt.Fprintf(stderr, "grain status: reading the answer on %s: %v\n", *socket, err)
		}
		return 1
	}
	b, _ := json.MarshalIndent(st, "", "  ")
	fmt.Fprintln(stdout, string(b))
	return 0
}
