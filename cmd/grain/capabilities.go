package main

import (
	"fmt"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// raiseCapabilities makes every capability grain holds as permitted
// effective too, on every thread. The image's binary carries file
// capabilities (deploy/image) as permitted only: a container that runs it
// as a user other than root gets them at exec (Kubernetes sets no ambient
// capabilities), bounded by what its securityContext adds, and grain raises
// them here. For root, permitted and effective are already the same.
//
// It needs a binary without cgo (the runtime cannot change every thread's
// credentials under cgo); the image's and `make build`'s have none.
func raiseCapabilities() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("read the process's capabilities (capget): %w", err)
	}
	if data[0].Effective == data[0].Permitted && data[1].Effective == data[1].Permitted {
		return nil
	}
	for i := range data {
		data[i].Effective = data[i].Permitted
	}
	_, _, errno := syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0)
	if errno != 0 {
		return fmt.Errorf("raise the permitted capabilities to effective (capset on every thread): %w", errno)
	}
	return nil
}
