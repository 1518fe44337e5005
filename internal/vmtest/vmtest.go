// Package vmtest is what tests share with each other and with the VM test
// runner (scripts/vm-test.sh), which boots stock distribution kernels under
// QEMU and runs whole test packages inside: where a test ran, what it needs
// from the kernel (HostOnly, Missing), and the helpers every package's tests
// use (RequireRoot, LockedBuffer).
//
// A test that needs a feature this kernel may lack calls Missing with the
// feature's name and the error that showed it missing. The test then skips
// naming the feature, except when the runner declared that this kernel has the
// feature (GRAIN_VM_FEATURES): then the missing feature is a failure, so that a
// kprobe test cannot pass silently by skipping in the guest that exists to run
// it.
package vmtest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Environment the runner sets inside the guest.
const (
	// KernelEnv holds the guest kernel's release (uname -r).
	KernelEnv = "GRAIN_VM_KERNEL"
	// ArchEnv holds the guest's Debian architecture (amd64, arm64).
	ArchEnv = "GRAIN_VM_ARCH"
	// FeaturesEnv lists, space-separated, the features the guest kernel is
	// known to have (kprobe, fentry, ...); see Missing.
	FeaturesEnv = "GRAIN_VM_FEATURES"
)

// Guest reports whether the test runs inside a VM started by the runner.
func Guest() bool { return os.Getenv(KernelEnv) != "" }

// Where describes the kernel the test runs on, e.g. "guest kernel
// 6.1.0-56-arm64 (arm64)" or "host kernel 6.18.1 (amd64)".
func Where() string {
	if k := os.Getenv(KernelEnv); k != "" {
		return "guest kernel " + k + " (" + os.Getenv(ArchEnv) + ")"
	}
	var u unix.Utsname
	release := "unknown"
	if unix.Uname(&u) == nil {
		release = unix.ByteSliceToString(u.Release[:])
	}
	return "host kernel " + release + " (" + runtime.GOARCH + ")"
}

// SpareNICFeature is the feature the runner declares when the guest has two
// virtio-net NICs that nothing uses, wired to each other and to nothing
// else: a real driver with native XDP, which tests may attach to,
// reconfigure, move between namespaces and send packets through.
const SpareNICFeature = "spare-nic"

// SpareNICs names the guest's spare virtio-net NICs in the calling thread's
// network namespace, sorted. On the host it names none, whatever the host
// has: tests must not touch the machine's own NICs.
func SpareNICs() ([]string, error) {
	if !Guest() {
		return nil, errors.New("the host's NICs are not for tests")
	}
	var nics []string
	drivers, _ := filepath.Glob("/sys/class/net/*/device/driver")
	for _, d := range drivers {
		if target, err := os.Readlink(d); err == nil && filepath.Base(target) == "virtio_net" {
			nics = append(nics, filepath.Base(filepath.Dir(filepath.Dir(d))))
		}
	}
	if len(nics) < 2 {
		return nil, fmt.Errorf("want two virtio-net interfaces in this network namespace, found %v", nics)
	}
	slices.Sort(nics)
	return nics, nil
}

// Expected reports whether the runner declared that this kernel has feature.
func Expected(feature string) bool {
	return slices.Contains(strings.Fields(os.Getenv(FeaturesEnv)), feature)
}

// Missing ends a test that needs feature, which err showed this kernel lacks:
// it skips naming the feature and the kernel, or fails when the runner
// declared the feature present (see Expected).
func Missing(t testing.TB, feature string, err error) {
	t.Helper()
	if Expected(feature) {
		t.Fatalf("%s should have %s (%s=%q): %v", Where(), feature, FeaturesEnv, os.Getenv(FeaturesEnv), err)
	}
	t.Skipf("%s has no %s: %v", Where(), feature, err)
}
