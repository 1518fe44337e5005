package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/internal/vmtest"
)

func TestCheck(t *testing.T) {
	vmtest.HostOnly(t, "no kernel takes part")
	var out, errOut bytes.Buffer
	if code := run([]string{"check", "../../examples/block-http"}, &out, &errOut); code != 0 {
		t.Fatalf("check of a good policy: exit %d: %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), "OK") {
		t.Errorf("check output %q", out.String())
	}
	out.Reset()
	errOut.Reset()
	if code := run([]string{"check", "testdata/bad"}, &out, &errOut); code != 1 {
		t.Fatalf("check of a bad policy: exit %d, want 1", code)
	}
	if want := "testdata/bad/policy.cue:3:27: policy block_http:"; !strings.Contains(errOut.String(), want) {
		t.Errorf("error %q does not start with %q", errOut.String(), want)
	}
	if !strings.Contains(errOut.String(), "payload") {
		t.Errorf("error %q does not suggest payload", errOut.String())
	}
}

func TestCompilePrintsPlan(t *testing.T) {
	vmtest.HostOnly(t, "no kernel takes part")
	var out, errOut bytes.Buffer
	if code := run([]string{"compile", "--interface", "veth0", "../../examples/block-http"}, &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	var plan struct {
		Attachments []struct{ Interface string }
		Rules       []struct{ Policy, Action string }
	}
	if err := json.Unmarshal(out.Bytes(), &plan); err != nil {
		t.Fatal(err)
	}
	if len(plan.Attachments) != 1 || plan.Attachments[0].Interface != "veth0" || len(plan.Rules) != 1 || plan.Rules[0].Action != "drop" {
		t.Errorf("plan %+v", plan)
	}
}

func TestUsageErrors(t *testing.T) {
	vmtest.HostOnly(t, "no kernel takes part")
	var out, errOut bytes.Buffer
	for _, args := range [][]string{{}, {"frobnicate"}, {"check"}, {"run"}} {
		if code := run(args, &out, &errOut); code != 2 {
			t.Errorf("grain %v: exit %d, want 2", args, code)
		}
	}
	for _, size := range []string{"1000", "2048", "8192", "3145728"} {
		errOut.Reset()
		args := []string{"run", "--policies", "testdata", "--event-ring-bytes", size}
		if code := run(args, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "power of two") {
			t.Errorf("grain %v: exit %d, %q; want 2 and the rule", args, code, errOut.String())
		}
	}
	if code := run([]string{"version"}, &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "grain ") {
		t.Errorf("version: %d %q", code, out.String())
	}
}
