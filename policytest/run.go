package policytest

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/reference"
)

// Outcome is what a program did with one frame.
type Outcome struct {
	// Verdict is drop, pass or would_drop.
	Verdict string
	// Policy decided ("" when no rule did); Counted are the count
	// policies the frame matched, in order.
	Policy  string
	Counted []string
	// Unjudged says why the program did not judge the frame ("" when it
	// did): not_ip, malformed or no_rules.
	Unjudged string
	// Events sent, with their fields as the pipeline exports them; nil
	// from a Judge that cannot see events.
	Events []OutEvent
	// Calls: the kernel-hook policies that selected the call, in order,
	// the signal sent, the one a monitored policy would send, and the
	// metrics counted.
	Matched     []string
	Signal      string
	WouldSignal string
	Counts      []string
}

// OutEvent is one event an Outcome holds.
type OutEvent struct {
	Policy string
	Name   string
	Fields map[string]string
}

// Judge runs a frame through the real packet program: the kernel, with
// the Plan the Judge was made for.
type Judge interface {
	Judge(frame []byte, iface string) (Outcome, error)
}

// Failure is one way a case did not do what it expects.
type Failure struct {
	// Frame is the frame's number in the case, from 1.
	Frame int `json:"frame"`
	// What names the expectation: verdict, policy, counted, event,
	// no_event, unjudged, or "kernel" for a disagreement between the
	// reference evaluator and the kernel.
	What     string `json:"what"`
	Expected string `json:"expected"`
	Got      string `json:"got"`
}

// Result is one case's result.
type Result struct {
	Case     *Case
	Failures []Failure
}

// Report is the result of a run.
type Report struct {
	Results        []Result
	Passed, Failed int
	// Exercised are the policies some frame of some case made decide,
	// count or send an event; Uncovered are the Plan's policies none did.
	Exercised map[string]bool
	Uncovered []codegen.Rule
	// UncoveredHooks are the kernel-hook policies no call selected.
	UncoveredHooks []codegen.HookRule
	// CallsNotInKernel counts the call cases a run with a kernel Judge
	// checked on the reference evaluator only.
	CallsNotInKernel int
}

// Options change a run.
type Options struct {
	// Kernel, when set, judges every frame too; a disagreement with the
	// reference evaluator fails the case.
	Kernel Judge
}

// Run runs every case against plan.
func Run(plan *codegen.Plan, cases []Case, opts Options) (*Report, error) {
	ifaces := []string{}
	for _, a := range plan.Attachments {
		ifaces = append(ifaces, a.Interface)
	}
	ref, err := reference.NewPacket(plan, ifaces...)
	if err != nil {
		return nil, err
	}
	hooks, err := reference.NewHook(plan)
	if err != nil {
		return nil, err
	}
	rep := &Report{Exercised: map[string]bool{}}
	for i := range cases {
		c := &cases[i]
		if c.Call != nil {
			got := callOutcome(hooks.Call(*c.Call))
			rep.exercise(got)
			res := Result{Case: c, Failures: check(1, &c.Expect, got)}
			if opts.Kernel != nil {
				rep.CallsNotInKernel++
			}
			rep.add(res)
			continue
		}
		iface := c.Interface
		if iface == "" && len(ifaces) > 0 {
			iface = ifaces[0]
		}
		res := Result{Case: c}
		for n, frame := range c.Frames {
			got := outcomeOf(ref.Judge(frame, iface))
			rep.exercise(got)
			res.Failures = append(res.Failures, check(n+1, &c.Expect, got)...)
			if opts.Kernel != nil {
				k, err := opts.Kernel.Judge(frame, iface)
				if err != nil {
					return nil, fmt.Errorf("%s: test %s: frame %d in the kernel: %w", c.Pos, c.Name, n+1, err)
				}
				if d := disagreement(got, k); d != "" {
					res.Failures = append(res.Failures, Failure{Frame: n + 1, What: "kernel", Expected: "the reference evaluator's " + d, Got: "the kernel's " + kernelSide(d, k)})
				}
			}
		}
		rep.add(res)
	}
	for _, r := range plan.Rules {
		if !rep.Exercised[r.Policy] {
			rep.Uncovered = append(rep.Uncovered, r)
		}
	}
	if plan.Hooks != nil {
		for _, r := range plan.Hooks.Rules {
			if !rep.Exercised[r.Policy] {
				rep.UncoveredHooks = append(rep.UncoveredHooks, r)
			}
		}
	}
	return rep, nil
}

func (r *Report) add(res Result) {
	if len(res.Failures) == 0 {
		r.Passed++
	} else {
		r.Failed++
	}
	r.Results = append(r.Results, res)
}

// callOutcome converts the reference evaluator's answer for a call.
func callOutcome(results []reference.HookResult) Outcome {
	o := Outcome{Matched: []string{}, Counts: []string{}}
	for _, r := range results {
		o.Matched = append(o.Matched, r.Policy)
		if r.Signal != "" && o.Signal == "" {
			o.Signal = r.Signal
		}
		if r.WouldSignal != "" && o.WouldSignal == "" {
			o.WouldSignal = r.WouldSignal
		}
		if r.Count != nil {
			o.Counts = append(o.Counts, r.Count.Metric)
		}
		if r.Event != nil {
			oe := OutEvent{Policy: r.Policy, Name: r.Event.Name, Fields: map[string]string{}}
			for _, f := range r.Event.Fields {
				oe.Fields[f.Key] = fieldString(f.Value)
			}
			o.Events = append(o.Events, oe)
		}
	}
	if len(o.Matched) > 0 {
		o.Policy = o.Matched[0] // an expected event's default policy
	}
	return o
}

func (r *Report) exercise(o Outcome) {
	if o.Policy != "" {
		r.Exercised[o.Policy] = true
	}
	for _, p := range o.Counted {
		r.Exercised[p] = true
	}
	for _, p := range o.Matched {
		r.Exercised[p] = true
	}
	for _, e := range o.Events {
		r.Exercised[e.Policy] = true
	}
}

// outcomeOf converts the reference evaluator's result (which it reuses).
func outcomeOf(r *reference.Result) Outcome {
	o := Outcome{Verdict: r.Verdict.String(), Policy: r.Policy, Counted: slices.Clone(r.Counted)}
	if r.Stat != reference.Judged {
		o.Unjudged = r.Stat.String()
	}
	for i := range r.Events {
		e := &r.Events[i]
		oe := OutEvent{Policy: e.Policy, Name: e.Name, Fields: map[string]string{}}
		for _, f := range e.Fields() {
			oe.Fields[f.Key] = fieldString(f.Value)
		}
		o.Events = append(o.Events, oe)
	}
	return o
}

func fieldString(v any) string {
	switch v := v.(type) {
	case string:
		return v
	case uint64:
		return strconv.FormatUint(v, 10)
	case netip.Addr:
		return v.String()
	}
	return fmt.Sprint(v)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func list(s []string) string { return "[" + strings.Join(s, ", ") + "]" }

// check compares one frame's outcome with what the case expects.
func check(frame int, e *Expect, got Outcome) []Failure {
	var out []Failure
	fail := func(what, want, have string) {
		out = append(out, Failure{Frame: frame, What: what, Expected: want, Got: have})
	}
	if e.Verdict != nil && *e.Verdict != got.Verdict {
		fail("verdict", *e.Verdict, got.Verdict)
	}
	if e.Policy != nil && *e.Policy != got.Policy {
		fail("policy", orNone(*e.Policy), orNone(got.Policy))
	}
	if e.Counted != nil && !slices.Equal(*e.Counted, got.Counted) {
		fail("counted", list(*e.Counted), list(got.Counted))
	}
	if e.Unjudged != nil && *e.Unjudged != got.Unjudged {
		fail("unjudged", *e.Unjudged, orNone(got.Unjudged))
	}
	if e.Policies != nil && !slices.Equal(*e.Policies, got.Matched) {
		fail("policies", list(*e.Policies), list(got.Matched))
	}
	if e.Signal != nil && *e.Signal != got.Signal {
		fail("signal", orNone(*e.Signal), orNone(got.Signal))
	}
	if e.WouldSignal != nil && *e.WouldSignal != got.WouldSignal {
		fail("would_signal", orNone(*e.WouldSignal), orNone(got.WouldSignal))
	}
	if e.Counts != nil && !slices.Equal(*e.Counts, got.Counts) {
		fail("counts", list(*e.Counts), list(got.Counts))
	}
	if e.NoEvent && len(got.Events) > 0 {
		fail("no_event", "no event", eventsString(got.Events))
	}
	if e.Event != nil {
		if msg := matchEvent(e.Event, got); msg != "" {
			fail("event", expectedEventString(e.Event, got.Policy), msg)
		}
	}
	return out
}

// matchEvent finds the expected event among got's; "" when one matches,
// else what was sent instead.
func matchEvent(want *Event, got Outcome) string {
	policy := want.Policy
	if policy == "" {
		policy = got.Policy
	}
	for _, ev := range got.Events {
		if (policy != "" && ev.Policy != policy) || (want.Name != "" && ev.Name != want.Name) {
			continue
		}
		var diffs []string
		for _, k := range sortedKeys(want.Fields) {
			w := fmt.Sprint(want.Fields[k])
			if have, ok := ev.Fields[k]; !ok {
				diffs = append(diffs, k+" missing")
			} else if have != w {
				diffs = append(diffs, k+"="+have)
			}
		}
		if len(diffs) == 0 {
			return ""
		}
		return "event " + ev.Name + " of " + ev.Policy + " with " + strings.Join(diffs, ", ")
	}
	if len(got.Events) == 0 {
		return "no event"
	}
	return eventsString(got.Events)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func expectedEventString(e *Event, decided string) string {
	policy := e.Policy
	if policy == "" {
		policy = orNone(decided)
	}
	s := "an event"
	if e.Name != "" {
		s += " " + e.Name
	}
	s += " of " + policy
	if len(e.Fields) > 0 {
		var kv []string
		for _, k := range sortedKeys(e.Fields) {
			kv = append(kv, fmt.Sprintf("%s=%v", k, e.Fields[k]))
		}
		s += " with " + strings.Join(kv, ", ")
	}
	return s
}

func eventsString(evs []OutEvent) string {
	var parts []string
	for _, e := range evs {
		parts = append(parts, "event "+e.Name+" of "+e.Policy)
	}
	return strings.Join(parts, "; ")
}

// disagreement names what the kernel's outcome differs in ("" when it
// agrees): verdict, deciding policy, counted policies, unjudged reason.
// Events are compared where the Judge reports them.
func disagreement(ref, k Outcome) string {
	switch {
	case ref.Verdict != k.Verdict:
		return "verdict " + ref.Verdict
	case ref.Policy != k.Policy:
		return "deciding policy " + orNone(ref.Policy)
	case !slices.Equal(ref.Counted, k.Counted):
		return "counted " + list(ref.Counted)
	case ref.Unjudged != k.Unjudged:
		return "unjudged " + orNone(ref.Unjudged)
	case k.Events != nil && len(k.Events) != len(ref.Events):
		return fmt.Sprintf("%d events", len(ref.Events))
	}
	return ""
}

func kernelSide(d string, k Outcome) string {
	switch {
	case strings.HasPrefix(d, "verdict"):
		return "verdict " + k.Verdict
	case strings.HasPrefix(d, "deciding"):
		return "deciding policy " + orNone(k.Policy)
	case strings.HasPrefix(d, "counted"):
		return "counted " + list(k.Counted)
	case strings.HasPrefix(d, "unjudged"):
		return "unjudged " + orNone(k.Unjudged)
	}
	return fmt.Sprintf("%d events", len(k.Events))
}
