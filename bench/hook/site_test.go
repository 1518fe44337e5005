package hookbench

import (
	"encoding/binary"
	"flag"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

var siteOn = flag.Bool("site", false, "time each exec's sched_process_exec tracepoint at its site (BesideBpftraceExec)")

// The exec loop's time per exec varies by tens of microseconds, a hundred
// times what a hook adds; timed at the tracepoint's site, the hook's whole
// cost (the kernel's dispatch to the hook, a perf-event tracepoint's
// record, the program) stands out of what else an exec does. siteTimer
// takes a clock reading in a program registered on sched_process_exec
// before any measured hook (the kernel runs a tracepoint's probes in the
// order they came), and another at the exit of the execve system call (raw
// sys_exit: the next exit on that CPU, as nothing sleeps between). What
// runs between them besides the hook is the same in every configuration,
// unhooked too, as are both probes' own costs: they cancel out in the
// differences. (A kprobe or fentry program nearer the tracepoint needs
// tracefs or ftrace, which a container may refuse.) Each exec's time goes
// into a per-CPU table the benchmark reads per run.
type siteTimer struct {
	start, samples *ebpf.Map
	links          []link.Link
}

// siteSamples is how many execs a CPU's table keeps (its value stays
// under the per-CPU allocator's 32 KiB).
const siteSamples = 2048

func newSiteTimer(tb testing.TB) *siteTimer {
	tb.Helper()
	s := &siteTimer{}
	var err error
	s.start, err = ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		tb.Fatal(err)
	}
	s.samples, err = ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8 * (1 + siteSamples), MaxEntries: 1})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(s.close)

	// at the tracepoint: start = now, for the loop's execs (execComm)
	first := load(tb, slices.Concat(asm.Instructions{
		asm.FnKtimeGetNs.Call(),
		asm.Mov.Reg(asm.R6, asm.R0),
		asm.Mov.Reg(asm.R1, asm.RFP),
		asm.Add.Imm(asm.R1, -24),
		asm.Mov.Imm(asm.R2, 16),
		asm.FnGetCurrentComm.Call(),
		asm.LoadMem(asm.R1, asm.RFP, -24, asm.DWord),
		asm.LoadImm(asm.R2, int64(commWord(0)), asm.DWord),
		asm.JNE.Reg(asm.R1, asm.R2, "out"),
		asm.LoadMem(asm.R1, asm.RFP, -16, asm.DWord),
		asm.LoadImm(asm.R2, int64(commWord(1)), asm.DWord),
		asm.JNE.Reg(asm.R1, asm.R2, "out"),
	}, lookupFirst(s.start), asm.Instructions{
		asm.StoreMem(asm.R0, 0, asm.R6, asm.DWord),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	}))
	defer first.Close()
	// at the next system call exit on the CPU: samples.ns[count % siteSamples] = now - start
	after := load(tb, slices.Concat(asm.Instructions{
		asm.FnKtimeGetNs.Call(),
		asm.Mov.Reg(asm.R6, asm.R0),
	}, lookupFirst(s.start), asm.Instructions{
		asm.LoadMem(asm.R7, asm.R0, 0, asm.DWord),
		asm.JEq.Imm(asm.R7, 0, "out"), // no exec tracepoint before it on this CPU
		asm.Mov.Imm(asm.R1, 0),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
		asm.Sub.Reg(asm.R6, asm.R7),
	}, lookupFirst(s.samples), asm.Instructions{
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
		asm.Mov.Reg(asm.R2, asm.R1),
		asm.And.Imm(asm.R2, siteSamples-1),
		asm.LSh.Imm(asm.R2, 3),
		asm.Add.Reg(asm.R2, asm.R0),
		asm.StoreMem(asm.R2, 8, asm.R6, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("out"),
		asm.Return(),
	}))
	defer after.Close()
	l, err := link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sched_process_exec", Program: first})
	if err != nil {
		tb.Fatal(err)
	}
	s.links = append(s.links, l)
	l, err = link.AttachRawTracepoint(link.RawTracepointOptions{Name: "sys_exit", Program: after})
	if err != nil {
		tb.Fatal(err)
	}
	s.links = append(s.links, l)
	return s
}

// lookupFirst leaves in R0 the value of m's key 0, and jumps to "out"
// when there is none.
func lookupFirst(m *ebpf.Map) asm.Instructions {
	return asm.Instructions{
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
	}
}

func load(tb testing.TB, insns asm.Instructions) *ebpf.Program {
	tb.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.RawTracepoint, License: "GPL", Instructions: insns})
	if err != nil {
		tb.Fatal(err)
	}
	return prog
}

// commWord is word i of execComm's 16 comm bytes, read as the program
// reads it (little-endian: BPF is on every target here).
func commWord(i int) uint64 {
	var c [16]byte
	copy(c[:15], execComm)
	return binary.LittleEndian.Uint64(c[8*i:])
}

func (s *siteTimer) close() {
	for _, l := range s.links {
		l.Close()
	}
	s.start.Close()
	s.samples.Close()
}

// reset empties every CPU's table.
func (s *siteTimer) reset(tb testing.TB) {
	zero := make([][]byte, ebpf.MustPossibleCPU())
	for i := range zero {
		zero[i] = make([]byte, 8*(1+siteSamples))
	}
	if err := s.samples.Put(uint32(0), zero); err != nil {
		tb.Fatal(err)
	}
}

// median is the median ns over every exec timed since reset.
func (s *siteTimer) median(tb testing.TB) float64 {
	var perCPU [][1 + siteSamples]uint64
	if err := s.samples.Lookup(uint32(0), &perCPU); err != nil {
		tb.Fatal(err)
	}
	var all []float64
	for _, c := range perCPU {
		n := min(c[0], siteSamples)
		for _, ns := range c[1 : 1+n] {
			all = append(all, float64(ns))
		}
	}
	if len(all) == 0 {
		tb.Fatal("the site timer timed no exec")
	}
	slices.Sort(all)
	return all[len(all)/2]
}

// siteNs times fn's execs at the tracepoint's site: the median ns.
func (s *siteTimer) siteNs(tb testing.TB, fn func()) float64 {
	s.reset(tb)
	fn()
	return s.median(tb)
}
