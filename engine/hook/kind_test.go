package hook

import (
	"encoding/json"
	"testing"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
)

// Kinds and mechanisms are typed inside grain, but `grain status` shows
// them as the words users know, and reads them back.
func TestAttachmentJSONSpellsKindsAndMechanisms(t *testing.T) {
	a := Attachment{Kind: KindSyscall, Syscalls: []string{"close"}, Mechanism: MechanismRawTracepoint, Cookie: 2, Policies: []string{"p"}}
	b, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"kind":"syscall","syscalls":["close"],"mechanism":"raw_tracepoint","cookie":2,"policies":["p"]}`
	if string(b) != want {
		t.Fatalf("got %s\nwant %s", b, want)
	}
	for k := range kindNames {
		for m := range mechanismNames {
			in := Attachment{Kind: k, Mechanism: m}
			b, _ := json.Marshal(in)
			var out Attachment
			if err := json.Unmarshal(b, &out); err != nil || out.Kind != k || out.Mechanism != m {
				t.Errorf("%s: read back as %+v (%v)", b, out, err)
			}
		}
	}
	var out Attachment
	if err := json.Unmarshal([]byte(`{"kind":"uprobe"}`), &out); err == nil {
		t.Errorf("an unknown kind was read as %v", out.Kind)
	}
}

// The kind the kernel program is told (bpf/hook.h) follows from the
// mechanism, except that a raw tracepoint serves both tracepoint and
// syscall hooks and keeps the hook's kind.
func TestKernelKindOfEachMechanism(t *testing.T) {
	for _, c := range []struct {
		policy string
		mech   Mechanism
		want   uint8
	}{
		{"syscall", MechanismRawTracepoint, bpf.HookKindSyscall},
		{"tracepoint", MechanismRawTracepoint, bpf.HookKindTracepoint},
		{"tracepoint", MechanismTracepoint, bpf.HookKindTracepoint},
		{"kprobe", MechanismKprobe, bpf.HookKindKprobe},
		{"kprobe", MechanismFentry, bpf.HookKindFentry},
		{"kretprobe", MechanismKretprobe, bpf.HookKindKretprobe},
		{"kretprobe", MechanismFexit, bpf.HookKindFexit},
	} {
		k := kindOf(codegen.KernelHook{Kind: c.policy})
		if k.String() != c.policy {
			t.Errorf("policy kind %q reads as %v", c.policy, k)
		}
		if got := uint8(c.mech.kernelKind(k)); got != c.want {
			t.Errorf("%s hook by %s: kernel kind %d, want %d", c.policy, c.mech, got, c.want)
		}
	}
	if k := kindOf(codegen.KernelHook{Kind: "uprobe"}); k != 0 {
		t.Errorf("unknown policy kind reads as %v, want 0", k)
	}
}
