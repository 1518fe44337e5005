package hook

import (
	"fmt"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/codegen"
)

// Kind is a kind of kernel hook, numbered as the kernel programs tell them
// apart (bpf/hook.h, enum grain_hook_kinds). A policy names one of
// syscall, tracepoint, kprobe or kretprobe; fentry and fexit are what a
// kprobe or kretprobe becomes where the kernel attaches it that way.
type Kind uint8

const (
	KindKprobe     Kind = bpf.HookKindKprobe
	KindKretprobe  Kind = bpf.HookKindKretprobe
	KindFentry     Kind = bpf.HookKindFentry
	KindFexit      Kind = bpf.HookKindFexit
	KindTracepoint Kind = bpf.HookKindTracepoint
	KindSyscall    Kind = bpf.HookKindSyscall
)

var kindNames = map[Kind]string{
	KindKprobe: "kprobe", KindKretprobe: "kretprobe", KindFentry: "fentry", KindFexit: "fexit",
	KindTracepoint: "tracepoint", KindSyscall: "syscall",
}

// String is the kind as policies and `grain status` spell it.
func (k Kind) String() string {
	if s, ok := kindNames[k]; ok {
		return s
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

func (k *Kind) UnmarshalText(b []byte) error {
	for kind, name := range kindNames {
		if name == string(b) {
			*k = kind
			return nil
		}
	}
	return fmt.Errorf("unknown hook kind %q", b)
}

// kindOf is the kind of a planned hook; 0 for a kind grain does not know
// (policies refuse those before a plan is made).
func kindOf(h codegen.KernelHook) Kind {
	var k Kind
	if k.UnmarshalText([]byte(h.Kind)) != nil {
		return 0
	}
	return k
}

// Mechanism is how the kernel runs a hook's program.
type Mechanism uint8

const (
	MechanismKprobe Mechanism = iota + 1
	MechanismKretprobe
	MechanismFentry
	MechanismFexit
	// MechanismTracepoint is the perf-event tracepoint, which has the record.
	MechanismTracepoint
	// MechanismRawTracepoint serves syscall hooks (sys_enter), and
	// tracepoints that read no record field where raw tracepoints take
	// cookies.
	MechanismRawTracepoint
)

var mechanismNames = map[Mechanism]string{
	MechanismKprobe: "kprobe", MechanismKretprobe: "kretprobe", MechanismFentry: "fentry", MechanismFexit: "fexit",
	MechanismTracepoint: "tracepoint", MechanismRawTracepoint: "raw_tracepoint",
}

// String is the mechanism as logs and `grain status` spell it.
func (m Mechanism) String() string {
	if s, ok := mechanismNames[m]; ok {
		return s
	}
	return fmt.Sprintf("Mechanism(%d)", uint8(m))
}

func (m Mechanism) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

func (m *Mechanism) UnmarshalText(b []byte) error {
	for mech, name := range mechanismNames {
		if name == string(b) {
			*m = mech
			return nil
		}
	}
	return fmt.Errorf("unknown hook mechanism %q", b)
}

// atReturn reports whether the program runs when the function returns.
func (m Mechanism) atReturn() bool { return m == MechanismKretprobe || m == MechanismFexit }

// kernelKind is the kind the kernel program reads a hook of kind k
// attached by m as: a raw tracepoint reads a tracepoint's or sys_enter's
// arguments as the tracepoint or syscall hook it serves.
func (m Mechanism) kernelKind(k Kind) Kind {
	switch m {
	case MechanismKprobe:
		return KindKprobe
	case MechanismKretprobe:
		return KindKretprobe
	case MechanismFentry:
		return KindFentry
	case MechanismFexit:
		return KindFexit
	}
	return k
}
