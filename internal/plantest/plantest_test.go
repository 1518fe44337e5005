package plantest

import (
	"fmt"
	"strings"
	"testing"
)

func TestCompile(t *testing.T) {
	plan := Compile(t, `block: {xdp: interfaces: ["lo"], match: {protocol: "tcp", dport: 80}, then: "drop"}`)
	if plan == nil {
		t.Fatal("no plan")
	}
	snap, _ := Load(t, `block: {xdp: interfaces: ["lo"], match: {protocol: "tcp", dport: 80}, then: "drop"}`)
	if len(snap.Policies) != 1 {
		t.Fatalf("%d policies, want 1", len(snap.Policies))
	}
}

// A policy that does not load fails the test naming the file and position.
func TestLoadFailsTheTest(t *testing.T) {
	var rec recorder
	func() {
		defer func() { recover() }() // the recorder's Fatalf panics where a test's would stop it
		Load(&rec, `block: {xdp: interfaces: ["lo"], match: {protocol: "tcp", dport: 80}, then: "dorp"}`)
	}()
	if !strings.Contains(rec.msg, "test.cue:1:") {
		t.Fatalf("failure %q does not name test.cue:1:", rec.msg)
	}
}

// recorder is a testing.TB whose Fatalf records the message and panics.
type recorder struct {
	testing.TB
	msg string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
	panic("fatal")
}
