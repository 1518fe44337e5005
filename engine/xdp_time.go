package engine

import (
	"time"

	"golang.org/x/sys/unix"
)

// monotonicTimeOffset converts CLOCK_MONOTONIC, the clock of the XDP
// program's events (bpf_ktime_get_coarse_ns: one scheduler tick of
// resolution, a fraction of the precise clock's cost), to wall time.
func monotonicTimeOffset() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return time.Duration(time.Now().UnixNano() - ts.Nano())
}
