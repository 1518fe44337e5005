package bpf

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// ProbeFeatures says which kernel hooks this kernel offers. A nil error
// means the feature is there; otherwise the error names what is missing.
type ProbeFeatures struct {
	BTF          error // kernel BTF (/sys/kernel/btf/vmlinux): CO-RE, fentry
	Kprobes      error // kprobes (CONFIG_KPROBES, the kprobe PMU or kprobe_events)
	FentryErr    error // fentry/fexit programs load and attach
	AttachCookie error // bpf_get_attach_cookie (Linux 5.15)
	Tracepoints  error // tracefs with events
	// RawTracepointCookie: raw tracepoint programs read a bpf cookie set at
	// attach (Linux 6.10); field-less tracepoint hooks then run as raw
	// tracepoints, cheaper than perf-event tracepoints.
	RawTracepointCookie error
}

var (
	featuresOnce sync.Once
	featuresVal  ProbeFeatures
)

// DetectProbeFeatures probes the running kernel once and caches the result.
func DetectProbeFeatures() ProbeFeatures {
	featuresOnce.Do(func() { featuresVal = detectProbeFeatures() })
	return featuresVal
}

// Fentry reports whether fentry/fexit can be used.
func (f ProbeFeatures) Fentry() bool { return f.FentryErr == nil }

// RawTracepoints reports whether tracepoint hooks that read no record
// field can attach as raw tracepoints (by cookie).
func (f ProbeFeatures) RawTracepoints() bool { return f.RawTracepointCookie == nil }

// KprobesOK reports whether kprobes can be used.
func (f ProbeFeatures) KprobesOK() bool { return f.Kprobes == nil }

func detectProbeFeatures() ProbeFeatures {
	var f ProbeFeatures
	if _, err := btf.LoadKernelSpec(); err != nil {
		f.BTF = fmt.Errorf("kernel BTF missing (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF): %w", err)
	}
	_, pmuErr := os.Stat("/sys/bus/event_source/devices/kprobe/type")
	if pmuErr != nil {
		if err := EnsureTracefs(); err == nil {
			if _, err := os.Stat(TracefsPath + "/kprobe_events"); err != nil {
				f.Kprobes = errors.New("kernel has no kprobes (CONFIG_KPROBES off: no kprobe PMU, no kprobe_events)")
			}
		} else {
			f.Kprobes = fmt.Errorf("kernel has no kprobe PMU and tracefs is unavailable: %w", err)
		}
	}
	if err := features.HaveProgramHelper(ebpf.TracePoint, asm.FnGetAttachCookie); err != nil {
		f.AttachCookie = fmt.Errorf("kernel lacks bpf_get_attach_cookie (needs Linux 5.15): %w", err)
	}
	if f.BTF != nil {
		f.FentryErr = fmt.Errorf("fentry needs kernel BTF: %w", f.BTF)
	} else {
		f.FentryErr = probeFentry()
	}
	f.RawTracepointCookie = probeRawTracepointCookie()
	if err := EnsureTracefs(); err != nil {
		f.Tracepoints = err
	} else if _, err := os.Stat(TracefsPath + "/events"); err != nil {
		f.Tracepoints = fmt.Errorf("tracefs has no events (CONFIG_TRACEPOINTS off?): %w", err)
	}
	return f
}

// probeFentry loads and attaches, with a cookie, a trivial fentry program
// that reads its cookie, as grain's do, to vfs_read (arm64 6.1 loads it but
// has no trampolines to attach it; 5.15 has trampolines but no cookies for
// them).
func probeFentry() error {
	spec := &ebpf.ProgramSpec{
		Type: ebpf.Tracing, AttachType: ebpf.AttachTraceFEntry, AttachTo: "vfs_read", License: "GPL",
		Instructions: asm.Instructions{asm.FnGetAttachCookie.Call(), asm.Mov.Imm(asm.R0, 0), asm.Return()},
	}
	prog, err := ebpf.NewProgram(spec)
	if errors.Is(err, os.ErrPermission) {
		return errors.New("kernel refuses fentry programs (loading one returns EPERM: no BPF trampolines here)")
	}
	var ve *ebpf.VerifierError
	if errors.As(err, &ve) && strings.Contains(strings.Join(ve.Log, "\n"), "func bpf_get_attach_cookie") {
		return fmt.Errorf("fentry programs cannot read an attach cookie (Linux 5.19): %w", err)
	}
	if err != nil {
		return fmt.Errorf("kernel refuses fentry programs (BPF trampolines): %w", err)
	}
	defer prog.Close()
	l, err := link.AttachTracing(link.TracingOptions{Program: prog, AttachType: ebpf.AttachTraceFEntry, Cookie: 1})
	if err != nil {
		return fmt.Errorf("kernel loads fentry programs but cannot attach them (no BPF trampolines on this kernel or architecture): %w", err)
	}
	l.Close()
	return nil
}

// probeRawTracepointCookie loads a raw tracepoint program that reads its
// cookie (the verifier refuses the helper there before 6.10) and attaches
// it with one to task_rename (rare; the program does nothing).
func probeRawTracepointCookie() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.RawTracepoint, License: "GPL",
		Instructions: asm.Instructions{asm.FnGetAttachCookie.Call(), asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return fmt.Errorf("%w (bpf_get_attach_cookie refused in raw tracepoint programs): %w", errNoRawTracepointCookie, err)
	}
	defer prog.Close()
	l, err := AttachRawTracepointCookie("task_rename", prog, 1)
	if err != nil {
		return fmt.Errorf("%w: %w", errNoRawTracepointCookie, err)
	}
	l.Close()
	return nil
}

// TracefsPath is where grain mounts tracefs when nothing has.
const TracefsPath = "/sys/kernel/tracing"

var tracefsMu sync.Mutex

// EnsureTracefs mounts tracefs at /sys/kernel/tracing when it is not
// mounted (minimal systems do not mount it at boot); tracepoint field
// layouts are read from there.
func EnsureTracefs() error {
	tracefsMu.Lock()
	defer tracefsMu.Unlock()
	var st unix.Statfs_t
	if err := unix.Statfs(TracefsPath, &st); err == nil && st.Type == unix.TRACEFS_MAGIC {
		return nil
	}
	if err := os.MkdirAll(TracefsPath, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", TracefsPath, err)
	}
	if err := unix.Mount("tracefs", TracefsPath, "tracefs", 0, ""); err != nil {
		return fmt.Errorf("mount tracefs at %s (needed for tracepoint layouts): %w", TracefsPath, err)
	}
	return nil
}
