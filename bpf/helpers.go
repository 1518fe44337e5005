package bpf

import (
	"errors"
	"fmt"
	"strings"
	"unicode"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// ErrKernelTooOld is wrapped by the error of a load that failed because the
// kernel lacks a BPF helper one of grain's programs calls.
var ErrKernelTooOld = errors.New("kernel too old")

// MinKernel is the oldest Linux release grain supports (README).
const MinKernel = "5.15"

// helperSince is the Linux release that added each helper grain's programs
// call, for the message of a kernel that lacks one.
var helperSince = map[asm.BuiltinFunc]string{
	asm.FnMapLookupElem:      "3.19",
	asm.FnMapUpdateElem:      "3.19",
	asm.FnMapDeleteElem:      "3.19",
	asm.FnGetSmpProcessorId:  "4.1",
	asm.FnGetCurrentPidTgid:  "4.2",
	asm.FnGetCurrentTask:     "4.8",
	asm.FnSkbPullData:        "4.9",
	asm.FnSendSignal:         "5.3",
	asm.FnProbeReadKernel:    "5.5",
	asm.FnProbeReadKernelStr: "5.5",
	asm.FnProbeReadUser:      "5.5",
	asm.FnProbeReadUserStr:   "5.5",
	asm.FnRingbufOutput:      "5.8",
	asm.FnRingbufReserve:     "5.8",
	asm.FnRingbufSubmit:      "5.8",
	asm.FnRingbufQuery:       "5.8",
	asm.FnKtimeGetBootNs:     "5.8",
	asm.FnKtimeGetCoarseNs:   "5.11",
	asm.FnGetCurrentTaskBtf:  "5.11",
	asm.FnGetAttachCookie:    "5.15",
	asm.FnTimerInit:          "5.15",
	asm.FnTimerSetCallback:   "5.15",
	asm.FnTimerStart:         "5.15",
	asm.FnGetFuncArg:         "5.17",
	asm.FnGetFuncRet:         "5.17",
}

// missingHelper names the first helper that program ps calls and this
// kernel does not offer to its program type, wrapping ErrKernelTooOld on a
// release older than MinKernel; nil
// when every helper is there or the kernel cannot be asked (cilium/ebpf has
// no helper probe for fentry programs). It loads a small program per helper,
// so it runs only to explain a failed load.
func missingHelper(ps *ebpf.ProgramSpec) error {
	seen := map[asm.BuiltinFunc]bool{}
	for _, ins := range ps.Instructions {
		if !ins.IsBuiltinCall() {
			continue
		}
		fn := asm.BuiltinFunc(ins.Constant)
		if seen[fn] {
			continue
		}
		seen[fn] = true
		err := features.HaveProgramHelper(ps.Type, fn)
		if !errors.Is(err, ebpf.ErrNotSupported) {
			continue // there, or no conclusive answer
		}
		release, old := olderThanMinKernel()
		if !old {
			// Some helpers reach a program type later than they appear
			// (the attach cookie in raw tracepoints: 6.10); grain asks
			// before it loads those, so this is not the user's kernel.
			return fmt.Errorf("%s does not offer the BPF helper %s to %s programs (grain bug: report it)",
				release, helperName(fn), ps.Type)
		}
		since := ""
		if v, ok := helperSince[fn]; ok {
			since = " (Linux " + v + ")"
		}
		return fmt.Errorf("%w: %s lacks the BPF helper %s%s in %s programs: grain needs Linux %s or later",
			ErrKernelTooOld, release, helperName(fn), since, ps.Type, MinKernel)
	}
	return nil
}

// helperName is a helper's name as the kernel's headers spell it:
// FnKtimeGetCoarseNs → bpf_ktime_get_coarse_ns.
func helperName(fn asm.BuiltinFunc) string {
	var b strings.Builder
	b.WriteString("bpf")
	for _, r := range strings.TrimPrefix(fn.String(), "Fn") {
		if unicode.IsUpper(r) {
			b.WriteByte('_')
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

// olderThanMinKernel reports the kernel's release and whether its version
// is below MinKernel (false when the release does not parse).
func olderThanMinKernel() (string, bool) {
	release := kernelRelease()
	var major, minor, minMajor, minMinor int
	if _, err := fmt.Sscanf(release, "%d.%d", &major, &minor); err != nil {
		return release, false
	}
	if _, err := fmt.Sscanf(MinKernel, "%d.%d", &minMajor, &minMinor); err != nil {
		panic("bpf.MinKernel does not parse: " + MinKernel)
	}
	return release, major < minMajor || major == minMajor && minor < minMinor
}

// kernelRelease is uname -r, or "(unknown release)".
func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "(unknown release)"
	}
	return unix.ByteSliceToString(u.Release[:])
}
