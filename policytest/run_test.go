package policytest

import (
	"bytes"
	"testing"

	"github.com/grain-ebpf/grain/codegen"
	"github.com/grain-ebpf/grain/policies"
)

// judgeFunc is a Judge that answers by a function: here it stands for a
// kernel that disagrees, which the real one (TestGrainTest --kernel)
// does not.
type judgeFunc func(frame []byte, iface string) (Outcome, error)

func (f judgeFunc) Judge(frame []byte, iface string) (Outcome, error) { return f(frame, iface) }

// A frame on which the kernel's outcome differs from the reference
// evaluator's fails its case, whatever the case expects.
func TestKernelDisagreementFails(t *testing.T) {
	snap, err := policies.LoadBytes("p.cue", []byte(`web: {xdp: interfaces: ["eth0"], match: {protocol: "tcp", dport: 80}, then: "drop"}`))
	if err != nil {
		t.Fatal(err)
	}
	plan, err := codegen.Compile(snap.Policies, codegen.Options{})
	if err != nil {
		t.Fatal(err)
	}
	frame, err := Packet{Protocol: "tcp", Saddr: "10.0.0.2", Daddr: "10.0.0.1", Dport: 80}.Frame()
	if err != nil {
		t.Fatal(err)
	}
	drop := "drop"
	cases := []Case{{Name: "web", Pos: policies.Position{File: "p_test.cue", Line: 2, Column: 2}, Frames: [][]byte{frame}, Expect: Expect{Verdict: &drop}}}
	agree := judgeFunc(func([]byte, string) (Outcome, error) { return Outcome{Verdict: "drop", Policy: "web"}, nil })
	rep, err := Run(plan, cases, Options{Kernel: agree})
	if err != nil || rep.Passed != 1 {
		t.Fatalf("an agreeing kernel: %+v, %v", rep, err)
	}
	disagree := judgeFunc(func([]byte, string) (Outcome, error) { return Outcome{Verdict: "pass"}, nil })
	rep, err = Run(plan, cases, Options{Kernel: disagree})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	rep.WriteText(&out, false)
	want := "p_test.cue:2:2: test web: the kernel disagrees: the reference evaluator's verdict drop, the kernel's verdict pass\n0 passed, 1 failed\n"
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
}
