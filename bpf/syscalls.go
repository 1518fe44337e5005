package bpf

import (
	"runtime"
	"slices"
)

// SyscallNumber returns the number of the system call name on goarch
// ("amd64", "arm64"; empty: the running architecture).
func SyscallNumber(goarch, name string) (int, bool) {
	if goarch == "" {
		goarch = runtime.GOARCH
	}
	n, ok := syscallNumbers[goarch][name]
	return n, ok
}

// SyscallName returns the name of system call number nr on goarch (empty:
// the running architecture), or "" when unknown.
func SyscallName(goarch string, nr int) string {
	if goarch == "" {
		goarch = runtime.GOARCH
	}
	for name, n := range syscallNumbers[goarch] {
		if n == nr {
			return name
		}
	}
	return ""
}

// SyscallArchs are the architectures whose system call tables grain knows.
func SyscallArchs() []string {
	var out []string
	for a := range syscallNumbers {
		out = append(out, a)
	}
	slices.Sort(out)
	return out
}

// SyscallNames lists the system calls of goarch (empty: the running
// architecture), sorted.
func SyscallNames(goarch string) []string {
	if goarch == "" {
		goarch = runtime.GOARCH
	}
	var out []string
	for name := range syscallNumbers[goarch] {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}
