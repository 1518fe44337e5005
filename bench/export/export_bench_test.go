// Package export measures grain's event path end to end: a real kernel
// (grain's XDP program run with BPF_PROG_TEST_RUN on a packet that matches
// an emit rule, one ring-buffer event per run) → engine.ReadEvents → the
// pipeline → a sink (stdout JSON lines to /dev/null, or OTLP to a real
// receiver in this process), and accounts for every event.
package export

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/engine"
	"github.com/grain-ebpf/grain/export"
	"github.com/grain-ebpf/grain/internal/netns"
	"github.com/grain-ebpf/grain/internal/otlptest"
	"github.com/grain-ebpf/grain/internal/pktbuild"
	"github.com/grain-ebpf/grain/internal/vmtest"
	"github.com/grain-ebpf/grain/pipeline"
	"github.com/grain-ebpf/grain/policies"
)

var (
	rates    = flag.String("rates", "200000,500000", "offered event rates per second, comma separated")
	duration = flag.Duration("duration", 5*time.Second, "how long events are generated at each rate")
	protocol = flag.String("protocol", "http/protobuf", "OTLP protocol for the OTLP benchmark")
	receiver = flag.String("receiver", "decode", "what the OTLP receiver does with a request: decode (every record, as a collector) or wire (count records by walking the protobuf framing; HTTP only)")
	// The OTLP log sink's settings (export.LogSinkConfig); 0 keeps its
	// defaults.
	sinkBatch       = flag.Int("batch", 0, "OTLP sink: records per export (0: the sink's default)")
	sinkQueue       = flag.Int("queue", 0, "OTLP sink: events queued for export (0: the sink's default)")
	sinkConcurrency = flag.Int("concurrency", 0, "OTLP sink: exports in flight (0: the sink's default)")
)

// sinkConfig is the OTLP log sink's configuration for an endpoint, with
// the -batch, -queue and -concurrency flags.
func sinkConfig(proto, endpoint string) export.LogSinkConfig {
	return export.LogSinkConfig{Config: export.Config{Protocol: proto, Endpoint: endpoint},
		BatchSize: *sinkBatch, QueueSize: *sinkQueue, Concurrency: *sinkConcurrency}
}

const policy = `block_http: {
	xdp: interfaces: ["lo"]
	match: {protocol: "tcp", payload: "HTTP/1.1"}
	then: "drop"
	emit: {event: "http_blocked", fields: ["saddr", "daddr", "sport", "dport"], dedup: "0s"}
}`

// result is one run at one offered rate.
type result struct {
	offered             int
	generated           uint64 // XDP runs of the matching packet
	emitted, ringLost   uint64 // kernel: events written, events that found the ring full
	received, queueFull uint64 // pipeline
	exported, sinkQueue uint64 // sink
	sinkFailed, arrived uint64 // sink failures; records the OTLP receiver got (stdout: lines written)
	genTime, drainTime  time.Duration
	delivered           float64 // arrived per second of generation
	// CPU time from the start of generation to the end of the drain:
	// the generator's threads (BPF_PROG_TEST_RUN, in the kernel), this
	// whole process (generator included), the receiving peer when it is
	// another process, and the whole machine (/proc/stat, all CPUs).
	genCPU, procCPU, peerCPU, machineCPU time.Duration
}

// cpus formats CPU time over the run's wall time as CPUs kept busy.
func (r result) cpus(t time.Duration) float64 {
	return t.Seconds() / (r.genTime + r.drainTime).Seconds()
}

// CPUString says where the machine's CPU time went during the run, per
// party, in CPUs and per event generated ("receiver" is a receiver in
// another process; one in this process counts as grain).
func (r result) CPUString() string {
	per := func(t time.Duration) float64 { return float64(t.Nanoseconds()) / float64(max(r.generated, 1)) }
	grain := r.procCPU - r.genCPU
	others := r.machineCPU - r.procCPU - r.peerCPU
	return fmt.Sprintf("CPU over %v: generator %.2f CPUs (%.0f ns/event), grain %.2f CPUs (%.0f ns/event), receiver %.2f CPUs (%.0f ns/event), "+
		"everything else on the machine %.2f CPUs, of %d",
		(r.genTime + r.drainTime).Round(time.Millisecond), r.cpus(r.genCPU), per(r.genCPU), r.cpus(grain), per(grain),
		r.cpus(r.peerCPU), per(r.peerCPU), r.cpus(others), runtime.NumCPU())
}

func (r result) unaccounted() int64 {
	return int64(r.generated) - int64(r.arrived+r.ringLost+r.queueFull+r.sinkQueue+r.sinkFailed)
}

func (r result) String() string {
	return fmt.Sprintf("offered %d/s for %v: generated %d = emitted %d + ring full %d; pipeline received %d, queue full %d; "+
		"sink exported %d, sink queue full %d, failed %d; arrived %d (drained %v after generation) => %.0f events/s delivered, unaccounted %d",
		r.offered, r.genTime.Round(time.Millisecond), r.generated, r.emitted, r.ringLost, r.received, r.queueFull,
		r.exported, r.sinkQueue, r.sinkFailed, r.arrived, r.drainTime.Round(time.Millisecond), r.delivered, r.unaccounted())
}

var (
	engOnce sync.Once
	eng     *engine.Engine
)

func setup(b testing.TB) *engine.Engine {
	vmtest.RequireRoot(b)
	engOnce.Do(func() {
		var err error
		eng, err = engine.New(engine.Options{}) // grain run's ring buffer: 1 MiB
		if err != nil {
			b.Fatal(err)
		}
		snap, err := policies.LoadBytes("bench.cue", []byte(policy))
		if err != nil {
			b.Fatal(err)
		}
		plan, err := codegen.Compile(snap.Policies, codegen.Options{})
		if err != nil {
			b.Fatal(err)
		}
		if err := eng.ApplyTables(plan, map[string]uint32{"lo": 1}); err != nil {
			b.Fatal(err)
		}
	})
	return eng
}

// attach attaches the program (generic XDP) to a veth in a namespace of
// its own, as grain run does. Besides being the real setup, it matters for
// the measurement: BPF_PROG_TEST_RUN with repeat > 1 of an XDP program
// that is attached nowhere installs it in the kernel's XDP dispatcher and
// removes it again, which costs ~16 ms of synchronisation per call here;
// attached, the program is already there and a call of 1000 runs takes
// ~0.2 ms.
func attach(b testing.TB, e *engine.Engine) {
	prog, err := e.XDP().Program()
	if err != nil {
		b.Fatal(err)
	}
	pair := netns.NewPair(b)
	var l link.Link
	if err := netns.Do(pair.ServerNS, func() (err error) {
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: pair.ServerIfIndex, Flags: link.XDPGenericMode})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
}

// generate runs the matching packet through the XDP program at about rate
// runs per second for d, from one goroutine per CPU, in slices of 1 ms
// (each slice one BPF_PROG_TEST_RUN with repeat).
func generate(b testing.TB, e *engine.Engine, rate int, d time.Duration) (runs uint64, cpu time.Duration) {
	frame := pktbuild.TCP4("10.0.0.2", "10.0.0.1", 40000, 80, pktbuild.PSH|pktbuild.ACK,
		[]byte("GET / HTTP/1.1\r\nHost: example\r\n\r\n")).Bytes()
	prog, err := e.XDP().Program()
	if err != nil {
		b.Fatal(err)
	}
	workers := runtime.NumCPU()
	var total, cpuNs atomic.Uint64
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// One thread per worker, so that its CPU time is the
			// generator's (the test runs in the kernel, in this thread).
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			t0 := threadCPU(b)
			defer func() { cpuNs.Add(uint64(threadCPU(b) - t0)) }()
			var done, runs uint64
			for {
				elapsed := time.Since(start)
				if elapsed >= d {
					break
				}
				// Runs owed to this worker by now.
				due := uint64(elapsed.Seconds()*float64(rate)/float64(workers)) + uint64(w%2)
				if due <= done {
					time.Sleep(200 * time.Microsecond)
					continue
				}
				// A worker that was not scheduled for a while does not
				// catch up in one burst that would overflow the ring
				// (real traffic would not come like that either): it owes
				// at most 5 ms, and runs 1 ms per call.
				slice := uint64(rate/workers/1000 + 1)
				if due-done > 5*slice {
					done = due - 5*slice
				}
				n := min(due-done, slice)
				if _, err := prog.Run(&ebpf.RunOptions{Data: frame, Repeat: uint32(n)}); err != nil {
					b.Error(err)
					return
				}
				done += n
				runs += n
			}
			total.Add(runs)
		}()
	}
	wg.Wait()
	return total.Load(), time.Duration(cpuNs.Load())
}

func rusageCPU(b testing.TB, who int) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(who, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// threadCPU is the calling thread's user+system CPU time.
func threadCPU(b testing.TB) time.Duration { return rusageCPU(b, unix.RUSAGE_THREAD) }

// processCPU is this process's user+system CPU time, all threads.
func processCPU(b testing.TB) time.Duration { return rusageCPU(b, unix.RUSAGE_SELF) }

// machineCPU is the CPU time all CPUs spent busy so far (/proc/stat:
// everything but idle and iowait).
func machineCPU(b testing.TB) time.Duration {
	stat, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	line, _, _ := strings.Cut(string(stat), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var busy int64
	for i := 1; i < len(f) && i <= 8; i++ {
		if i == 4 || i == 5 {
			continue
		}
		v, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			b.Fatalf("/proc/stat: %q: %v", line, err)
		}
		busy += v
	}
	return time.Duration(busy) * 10 * time.Millisecond // USER_HZ 100
}

// counters reads the kernel's counts: packets that matched the emit rule
// (the events generated; BPF_PROG_TEST_RUN restarts a run interrupted by
// a signal, so the runs requested are not an exact count), events written
// to the ring buffer and events that found it full.
func counters(b testing.TB, e *engine.Engine) (packets, emitted, lost uint64) {
	cs, err := e.Counters()
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range cs {
		packets += c.Packets
		emitted += c.Events
		lost += c.EventsLost
	}
	return
}

// measure runs one rate through a fresh pipeline with sink; arrived
// reports what reached the far end.
func measure(b testing.TB, rate int, sink pipeline.Sink, arrived func() uint64, shutdown func()) result {
	return measureFor(b, rate, *duration, sink, arrived, shutdown, nil)
}

// measureFor is measure with events generated for d; peerCPU, when the
// receiver is another process, reads its CPU time so far.
func measureFor(b testing.TB, rate int, d time.Duration, sink pipeline.Sink, arrived func() uint64, shutdown func(), peerCPU func() time.Duration) result {
	if peerCPU == nil {
		peerCPU = func() time.Duration { return 0 }
	}
	e := setup(b)
	attach(b, e)
	p := pipeline.New(pipeline.Options{Sinks: []pipeline.Sink{sink}})
	runCtx, stopRun := context.WithCancel(context.Background())
	go p.Run(runCtx)
	readCtx, stopRead := context.WithCancel(context.Background())
	readDone := make(chan error, 1)
	go func() { readDone <- e.ReadEvents(readCtx, p.Producer()) }()
	time.Sleep(100 * time.Millisecond)
	packets0, emitted0, lost0 := counters(b, e)
	base := p.Stats().Received

	proc0, peer0, machine0 := processCPU(b), peerCPU(), machineCPU(b)
	start := time.Now()
	_, genCPU := generate(b, e, rate, d)
	genTime := time.Since(start)
	packets1, emitted1, lost1 := counters(b, e)
	r := result{offered: rate, generated: packets1 - packets0, emitted: emitted1 - emitted0, ringLost: lost1 - lost0, genTime: genTime, genCPU: genCPU}
	// Drain: until everything the kernel wrote was read and the sink has
	// nothing pending.
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		st := p.Stats()
		if st.Received-base >= r.emitted && st.Sinks[0].Pending == 0 && p.Stats().Totals().Passed+st.QueueFull-base >= r.emitted {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.procCPU, r.peerCPU, r.machineCPU = processCPU(b)-proc0, peerCPU()-peer0, machineCPU(b)-machine0
	r.drainTime = time.Since(start) - genTime
	stopRead()
	<-readDone
	stopRun()
	<-p.Done()
	shutdown()
	st := p.Stats()
	r.received, r.queueFull = st.Received-base, st.QueueFull
	s := st.Sinks[0]
	r.exported, r.sinkQueue, r.sinkFailed = s.Exported, s.QueueFull, s.Failed
	r.arrived = arrived()
	r.delivered = float64(r.arrived) / genTime.Seconds()
	return r
}

func parseRates(b *testing.B) []int {
	var out []int
	var cur int
	for _, c := range *rates + "," {
		if c == ',' {
			out = append(out, cur)
			cur = 0
			continue
		}
		if c < '0' || c > '9' {
			b.Fatalf("bad -rates %q", *rates)
		}
		cur = cur*10 + int(c-'0')
	}
	return out
}

// BenchmarkKernelToStdout: JSON lines written to /dev/null.
func BenchmarkKernelToStdout(b *testing.B) {
	for _, rate := range parseRates(b) {
		b.Run(fmt.Sprint(rate), func(b *testing.B) {
			for range min(b.N, 1) { // one measurement of -duration, whatever -benchtime says
				null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
				if err != nil {
					b.Fatal(err)
				}
				sink := pipeline.NewJSONSink(null)
				r := measure(b, rate, sink, func() uint64 { return sink.Stats().Exported }, func() { null.Close() })
				b.Log(r)
				b.Log(r.CPUString())
				if r.unaccounted() != 0 {
					b.Errorf("%d events unaccounted for: every generated event must arrive or be counted lost", r.unaccounted())
				}
				b.ReportMetric(r.delivered, "events/s")
				b.ReportMetric(float64(r.unaccounted()), "unaccounted")
				b.ReportMetric(float64(r.generated-r.arrived), "lost")
			}
		})
	}
}

// BenchmarkKernelToOTLP: log records to a real OTLP receiver on loopback
// (in this process, so on the same two CPUs).
func BenchmarkKernelToOTLP(b *testing.B) {
	for _, rate := range parseRates(b) {
		b.Run(fmt.Sprint(rate), func(b *testing.B) {
			for range min(b.N, 1) { // one measurement of -duration, whatever -benchtime says
				recv := &otlptest.Receiver{DiscardLogs: true, CountOnWire: *receiver == "wire"}
				var url string
				var stop func()
				if *protocol == "grpc" {
					ln := listen(b)
					url, stop = recv.ServeGRPC(ln)
				} else {
					url, stop = recv.ServeHTTP(b, listen(b))
				}
				sink, err := export.NewLogSink(context.Background(), sinkConfig(*protocol, url))
				if err != nil {
					b.Fatal(err)
				}
				r := measure(b, rate, sink, func() uint64 { return uint64(recv.LogRecords()) }, func() {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					defer cancel()
					sink.Shutdown(ctx)
					stop()
				})
				if r.exported != r.arrived {
					b.Errorf("sink counted %d exported, receiver got %d", r.exported, r.arrived)
				}
				b.Log(r)
				b.Log(r.CPUString())
				if r.unaccounted() != 0 {
					b.Errorf("%d events unaccounted for: every generated event must arrive or be counted lost", r.unaccounted())
				}
				b.ReportMetric(r.delivered, "events/s")
				b.ReportMetric(float64(r.unaccounted()), "unaccounted")
				b.ReportMetric(float64(r.generated-r.arrived), "lost")
			}
		})
	}
}

func listen(b testing.TB) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	return ln
}
