package bpf

import (
	"errors"
	"fmt"
	"runtime"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// rawTracepointOpenAttr is bpf_attr.raw_tracepoint: name, prog_fd and, since
// Linux 6.10, cookie.
type rawTracepointOpenAttr struct {
	name   uint64
	progFd uint32
	_      uint32
	cookie uint64
}

// AttachRawTracepointCookie attaches prog, a raw tracepoint program, to the
// raw tracepoint name (e.g. "task_rename") with a bpf cookie, which the
// program reads by bpf_get_attach_cookie. Needs Linux 6.10; older kernels
// refuse the cookie field (EINVAL). cilium/ebpf's link.AttachRawTracepoint
// takes no cookie, and BPF_LINK_CREATE takes no tracepoint name for this
// program type: BPF_RAW_TRACEPOINT_OPEN takes both.
func AttachRawTracepointCookie(name string, prog *ebpf.Program, cookie uint64) (link.Link, error) {
	if prog.Type() != ebpf.RawTracepoint {
		return nil, fmt.Errorf("raw tracepoint %s: program type %s, want RawTracepoint", name, prog.Type())
	}
	namePtr, err := unix.BytePtrFromString(name)
	if err != nil {
		return nil, fmt.Errorf("raw tracepoint %q: %w", name, err)
	}
	attr := rawTracepointOpenAttr{name: uint64(uintptr(unsafe.Pointer(namePtr))), progFd: uint32(prog.FD()), cookie: cookie}
	fd, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_RAW_TRACEPOINT_OPEN, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	runtime.KeepAlive(namePtr)
	runtime.KeepAlive(prog)
	if errno != 0 {
		return nil, fmt.Errorf("attach to raw tracepoint %s with cookie: %w", name, errno)
	}
	l, err := link.NewFromFD(int(fd)) // owns fd, closes it on error
	if err != nil {
		return nil, fmt.Errorf("raw tracepoint %s link: %w", name, err)
	}
	return l, nil
}

// errNoRawTracepointCookie is the feature's error before Linux 6.10.
var errNoRawTracepointCookie = errors.New("raw tracepoints take no attach cookie before Linux 6.10")
