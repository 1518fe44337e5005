package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/engine"
	"github.com/grain-ebpf/grain/policytest"
	"github.com/grain-ebpf/grain/reference"
)

const testUsage = "usage: grain test [--kernel] [--format text|json] [--junit FILE] [--coverage] [DIR]"

// cmdTest runs the tests beside the policies of DIR: exit 0 when every
// case passes, 1 when one fails, 2 on a usage error or a tree or test file
// that does not load.
func cmdTest(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kernel := fs.Bool("kernel", false, "also run every case through the real packet program (BPF_PROG_TEST_RUN, root); a disagreement with the reference evaluator fails the case")
	format := fs.String("format", "text", "output: text (failures, then N passed, N failed) or json")
	junit := fs.String("junit", "", "also write the results as JUnit XML to this file")
	coverage := fs.Bool("coverage", false, "list the policies no case exercises")
	limits := evalFlags(fs)
	if err := fs.Parse(args); err != nil || !checkLimits(limits, stderr) {
		return 2
	}
	if fs.NArg() > 1 || (*format != "text" && *format != "json") {
		fmt.Fprintln(stderr, testUsage)
		return 2
	}
	dir := "."
	if fs.NArg() == 1 {
		dir = fs.Arg(0)
	}
	// The tests load here while the worker process evaluates the tree.
	type loaded struct {
		cases []policytest.Case
		err   error
	}
	tests := make(chan loaded, 1)
	go func() {
		cases, err := policytest.Load(dir)
		tests <- loaded{cases, err}
	}()
	_, plan, err := compileDir(dir, nil, *limits)
	t := <-tests
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	if t.err != nil {
		fmt.Fprintln(stderr, t.err)
		return 2
	}
	cases := t.cases
	var opts policytest.Options
	if *kernel {
		k, err := newKernelJudge(plan)
		if err != nil {
			fmt.Fprintln(stderr, "grain test --kernel:", err)
			return 2
		}
		defer k.close()
		opts.Kernel = k
	}
	rep, err := policytest.Run(plan, cases, opts)
	if err != nil {
		fmt.Fprintln(stderr, "grain test:", err)
		return 2
	}
	if *format == "json" {
		err = rep.WriteJSON(stdout, *coverage)
	} else {
		err = rep.WriteText(stdout, *coverage)
	}
	if err != nil {
		fmt.Fprintln(stderr, "grain test:", err)
		return 2
	}
	if *junit != "" {
		if err := writeJUnit(*junit, rep, dir); err != nil {
			fmt.Fprintln(stderr, "grain test: --junit:", err)
			return 2
		}
	}
	if rep.Failed > 0 {
		return 1
	}
	return 0
}

func writeJUnit(path string, rep *policytest.Report, dir string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	abs, _ := filepath.Abs(dir)
	if err := rep.WriteJUnit(f, "grain test "+filepath.Base(abs)); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// kernelJudge runs frames through the real packet program with
// BPF_PROG_TEST_RUN: the Plan written into a fresh, unpinned engine's
// tables, the case's interface as the loopback's index (the test run's
// ingress), and the deciding and counted policies read from the per-rule
// counters each frame moves.
type kernelJudge struct {
	e      *engine.Engine
	plan   *codegen.Plan
	iface  string // the interface the tables were last written for
	before map[string]uint64
}

// loopbackIndex is the ingress interface of a test run without context.
const loopbackIndex = 1

func newKernelJudge(plan *codegen.Plan) (*kernelJudge, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root (BPF_PROG_TEST_RUN); run it as root, or leave --kernel out to use the reference evaluator alone")
	}
	e, err := engine.New(engine.Options{})
	if err != nil {
		return nil, err
	}
	return &kernelJudge{e: e, plan: plan}, nil
}

func (k *kernelJudge) close() { k.e.Close() }

// counts reads the packets counted per policy and verdict (Counters).
func (k *kernelJudge) counts() (map[string]uint64, error) {
	cs, err := k.e.Counters()
	if err != nil {
		return nil, err
	}
	out := make(map[string]uint64, len(cs))
	for _, c := range cs {
		out[c.Policy+"\x00"+c.Verdict] += c.Packets
	}
	return out, nil
}

func (k *kernelJudge) Judge(frame []byte, iface string) (policytest.Outcome, error) {
	if iface != k.iface || k.before == nil {
		if err := k.e.ApplyTables(k.plan, map[string]uint32{iface: loopbackIndex}); err != nil {
			return policytest.Outcome{}, err
		}
		k.iface, k.before = iface, nil // counted from the rule set now in force
	}
	var err error
	if k.before == nil {
		if k.before, err = k.counts(); err != nil {
			return policytest.Outcome{}, err
		}
	}
	stats, err := k.e.PacketStats()
	if err != nil {
		return policytest.Outcome{}, err
	}
	prog, err := k.e.XDP().Program()
	if err != nil {
		return policytest.Outcome{}, err
	}
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		return policytest.Outcome{}, fmt.Errorf("BPF_PROG_TEST_RUN: %w", err)
	}
	after, err := k.counts()
	if err != nil {
		return policytest.Outcome{}, err
	}
	var o policytest.Outcome
	o.Verdict = reference.Pass.String()
	if ret == 1 { // XDP_DROP
		o.Verdict = reference.Drop.String()
	}
	for _, r := range k.plan.Rules {
		key := r.Policy + "\x00" + r.Verdict()
		if after[key] == k.before[key] {
			continue
		}
		if r.Action == "count" {
			o.Counted = append(o.Counted, r.Policy)
		} else {
			o.Policy = r.Policy
			if r.Verdict() == codegen.WouldDrop {
				o.Verdict = codegen.WouldDrop
			}
		}
	}
	k.before = after
	statsAfter, err := k.e.PacketStats()
	if err != nil {
		return policytest.Outcome{}, err
	}
	switch {
	case statsAfter.NotIP != stats.NotIP:
		o.Unjudged = reference.NotIP.String()
	case statsAfter.Malformed != stats.Malformed:
		o.Unjudged = reference.Malformed.String()
	case statsAfter.NoConfig != stats.NoConfig:
		o.Unjudged = reference.NoRules.String()
	}
	return o, nil
}
