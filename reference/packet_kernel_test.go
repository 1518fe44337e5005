package reference

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/internal/testcpu"
	"github.com/grain-ebpf/grain/policies"
)

// seedEnv reruns the differential tests with the seed a failure printed.
const seedEnv = "GRAIN_REFERENCE_SEED"

// testSeed is the seed from seedEnv, or a new one; the test logs it.
func testSeed(t testing.TB) uint64 {
	t.Helper()
	if s := os.Getenv(seedEnv); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: not a number", seedEnv, s)
		}
		return seed
	}
	return uint64(time.Now().UnixNano())
}

// compileSource loads and compiles one policy file, failing the test with
// the source when the generator wrote a policy grain refuses.
func compileSource(t testing.TB, name, src string) *codegen.Plan {
	t.Helper()
	snap, err := policies.LoadBytes(name, []byte(src))
	if err != nil {
		t.Fatalf("the generated policies do not load: %v\n%s", err, src)
	}
	plan, err := codegen.Compile(snap.Policies, codegen.Options{})
	if err != nil {
		t.Fatalf("the generated policies do not compile: %v\n%s", err, src)
	}
	return plan
}

// Differential sizes: sets × frames per set frames per run.
const (
	diffSets         = 40
	diffFramesPerSet = 2500
	diffBatch        = 500
	diffMaxReports   = 5
)

// TestJudgeAgreesWithKernel runs random policy sets and random frames
// through the reference evaluator and through the real packet program
// (BPF_PROG_TEST_RUN) and fails on any disagreement: the verdict of every
// frame, and per batch of frames the packets each rule counted, the
// unjudged packets' stats and every event with its fields, in order. A
// failure prints the seed; GRAIN_REFERENCE_SEED=<seed> reruns the same
// sets and frames.
func TestJudgeAgreesWithKernel(t *testing.T) {
	k := theKernel(t)
	testcpu.Pin(t, 0) // one CPU: its counters and its events in order
	seed := testSeed(t)
	t.Logf("seed %d (rerun: %s=%d go test -count=1 -run 'TestJudgeAgreesWithKernel' ./reference/)", seed, seedEnv, seed)
	start := time.Now()
	d := &differ{t: t, k: k, seed: seed}
	frames := 0
	for set := 0; set < diffSets && d.reports < diffMaxReports; set++ {
		rng := rand.New(rand.NewPCG(seed, uint64(set)))
		n := 1 + rng.IntN(16)
		if set%8 == 7 {
			n = 65 + rng.IntN(120) // more than one bitmap word: the other walk
		}
		gs := randomPolicies(rng, n, set%4 == 1)
		frames += d.runSet(set, gs, rng, diffFramesPerSet)
	}
	elapsed := time.Since(start)
	t.Logf("%d frames of %d policy sets in %v (%.0f frames/s, reference and kernel together)",
		frames, diffSets, elapsed.Round(time.Millisecond), float64(frames)/elapsed.Seconds())
	t.Logf("frames: %d dropped, %d would be dropped (monitor), %d passed by a rule, %d passed by none, %d counted by some rule, %d passed by the gate, "+
		"%d not IP, %d malformed; %d events (%d with payload)", d.tally.dropped, d.tally.wouldDrop, d.tally.passedByRule, d.tally.passedByNone,
		d.tally.counted, d.tally.gated, d.tally.notIP, d.tally.malformed, d.tally.events, d.tally.payloadEvents)
	if d.reports > 0 {
		t.Fatalf("%d disagreements (seed %d; rerun with %s=%d)", d.reports, seed, seedEnv, seed)
	}
}

// differ compares the reference with the kernel, policy set by policy set.
type differ struct {
	t       testing.TB
	k       *kernel
	seed    uint64
	reports int
	// the set being run
	set    int
	src    string
	shown  bool
	plan   *codegen.Plan
	p      *Packet
	frames [][]byte // the batch
	// expected over the batch
	rulePackets []uint64
	stats       [bpf.StatMax]uint64
	events      []Event
	eventFrame  []int
	// what the frames exercised, over the run
	tally struct {
		dropped, wouldDrop, passedByRule, passedByNone, counted, gated, notIP, malformed, events, payloadEvents int
	}
}

// report prints one disagreement with what reproduces it.
func (d *differ) report(format string, args ...any) {
	d.t.Helper()
	d.reports++
	src := ""
	if !d.shown {
		src = "\npolicies:\n" + d.src
		d.shown = true
	}
	d.t.Errorf("seed %d, policy set %d: %s%s", d.seed, d.set, fmt.Sprintf(format, args...), src)
}

func describe(r *Result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s by %q (rule %d), counted %v", r.Verdict, r.Policy, r.Rule, r.CountedRules)
	if r.Gated {
		b.WriteString(", passed by the gate")
	}
	if r.Unjudged != "" {
		fmt.Fprintf(&b, ", unjudged: %s (%s)", r.Unjudged, r.Stat)
	}
	return b.String()
}

// runSet applies one policy set and runs n random frames through both.
func (d *differ) runSet(set int, gs genSet, rng *rand.Rand, n int) int {
	d.use(set, gs.src, compileSource(d.t, fmt.Sprintf("set%d.cue", set), gs.src))
	done := 0
	for done < n && d.reports < diffMaxReports {
		batch := make([][]byte, min(diffBatch, n-done))
		for i := range batch {
			batch[i] = randomFrame(rng)
		}
		d.check(batch)
		done += len(batch)
	}
	return done
}

// use makes plan, compiled from src, the rule set of both.
func (d *differ) use(set int, src string, plan *codegen.Plan) {
	t := d.t
	t.Helper()
	d.set, d.src, d.shown, d.plan = set, src, false, plan
	p, err := NewPacket(d.plan, testIface)
	if err != nil {
		t.Fatal(err)
	}
	d.p = p
	d.k.apply(t, d.plan)
	d.rulePackets = make([]uint64, len(d.plan.Rules))
}

// check runs a batch of frames through both, comparing each verdict, then
// the batch's counts and events.
func (d *differ) check(frames [][]byte) {
	t := d.t
	t.Helper()
	d.frames = frames
	d.stats = [bpf.StatMax]uint64{}
	d.events, d.eventFrame = d.events[:0], d.eventFrame[:0]
	for i, frame := range frames {
		r := d.p.Judge(frame, testIface)
		got := d.k.run(t, frame)
		if got.Dropped() != r.Verdict.Dropped() {
			d.report("frame %x: kernel %s, reference %s", frame, got, describe(r))
		}
		for _, idx := range r.CountedRules {
			d.rulePackets[idx]++
		}
		if r.Rule >= 0 {
			d.rulePackets[r.Rule]++
		}
		if !r.Gated && r.Stat != Judged {
			d.stats[r.Stat]++
		}
		d.count(r)
		for _, ev := range r.Events {
			d.events = append(d.events, ev)
			d.eventFrame = append(d.eventFrame, i)
		}
	}
	if got := d.k.statsSince(t); got != d.stats {
		d.report("unjudged packets (not IP, malformed, no rules): kernel %v, reference %v", got[:3], d.stats[:3])
	}
	got := d.k.rulePackets(t, len(d.rulePackets))
	for i := range got {
		if got[i] != d.rulePackets[i] {
			d.report("rule %d (%s) counted %d packets in the kernel, %d in the reference%s", i, d.plan.Rules[i].Policy,
				got[i], d.rulePackets[i], d.framesOfRule(i))
			d.rulePackets[i] = got[i] // report each disagreement once
		}
	}
	evs := d.k.events(t, len(d.events))
	if len(evs) != len(d.events) {
		d.report("%d events from the kernel, %d from the reference", len(evs), len(d.events))
	}
	for i := 0; i < min(len(evs), len(d.events)); i++ {
		if diff := d.k.eventDiff(evs[i], &d.events[i]); diff != "" {
			d.report("event %d of the batch, of frame %x: %s", i, d.frames[d.eventFrame[i]], diff)
			break
		}
	}
}

// framesOfRule lists the first frames of the batch the reference says the
// rule matched, to reproduce a counter disagreement.
func (d *differ) framesOfRule(rule int) string {
	var b strings.Builder
	shown := 0
	for _, f := range d.frames {
		r := d.p.Judge(f, testIface)
		hit := r.Rule == rule
		for _, c := range r.CountedRules {
			hit = hit || c == rule
		}
		if hit && shown < 3 {
			fmt.Fprintf(&b, "\n  matched %x", f)
			shown++
		}
	}
	return b.String()
}

func (d *differ) count(r *Result) {
	c := &d.tally
	switch {
	case r.Verdict == Drop:
		c.dropped++
	case r.Verdict == WouldDrop:
		c.wouldDrop++
	case r.Rule >= 0:
		c.passedByRule++
	default:
		c.passedByNone++
	}
	if len(r.CountedRules) > 0 {
		c.counted++
	}
	if r.Gated {
		c.gated++
	}
	switch r.Stat {
	case NotIP:
		c.notIP++
	case Malformed:
		c.malformed++
	}
	c.events += len(r.Events)
	for _, e := range r.Events {
		if e.HasPayload {
			c.payloadEvents++
		}
	}
}
