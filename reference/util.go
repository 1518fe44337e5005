package reference

import (
	"math/bits"
	"strconv"
	"strings"
)

func trailingZeros(w uint64) int { return bits.TrailingZeros64(w) }

func itoa(i int) string { return strconv.Itoa(i) }

// tcpFlagsString is the flags as the pipeline names them: "syn,ack".
func tcpFlagsString(f uint8) string {
	names := [...]string{"fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr"}
	var parts []string
	for i, n := range names {
		if f&(1<<i) != 0 {
			parts = append(parts, n)
		}
	}
	return strings.Join(parts, ",")
}
