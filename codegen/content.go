package codegen

import (
	"fmt"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/policies"
)

// compileContent turns one Snort-style content into the form the XDP
// program scans with.
func compileContent(c policies.Content, index int) (Content, error) {
	n := len(c.Pattern)
	if n == 0 || n > bpf.MaxContentLen {
		return Content{}, fmt.Errorf("pattern is %d bytes; patterns hold 1 to %d bytes (the XDP program's limit)", n, bpf.MaxContentLen)
	}
	end := bpf.ScanWindow
	if c.Depth > 0 && c.Offset+c.Depth < end {
		end = c.Offset + c.Depth
	}
	if c.Offset+n > end {
		return Content{}, fmt.Errorf("pattern at offset %d ends past byte %d of the payload, the end of the scan window: it could never match; lower offset", c.Offset, bpf.ScanWindow)
	}
	out := Content{
		Index:    index,
		Pattern:  make(Hex, n),
		Mask:     make(Hex, n),
		Offset:   c.Offset,
		End:      end,
		NoCase:   c.NoCase,
		Negate:   c.Negate,
		Anchored: c.Depth == n,
	}
	for i, b := range c.Pattern {
		m := byte(0xff)
		if c.NoCase && isLetter(b) {
			m = 0xdf // clears the ASCII case bit
		}
		out.Mask[i], out.Pattern[i] = m, b&m
	}
	out.Prefilter = prefilterPositions(out.Pattern, c.NoCase)
	return out, nil
}

func isLetter(b byte) bool { return (b|0x20) >= 'a' && (b|0x20) <= 'z' }

// prefilterPositions picks the two rarest bytes among the pattern's first
// bpf.PrefilterSpan bytes, the rarest first: the fewer payload positions
// pass the prefilter, the fewer full compares the scan does, and the scan
// compares the first alone before it looks at the second.
func prefilterPositions(pattern []byte, nocase bool) [2]int {
	span := min(len(pattern), bpf.PrefilterSpan)
	if span == 1 {
		return [2]int{0, 0}
	}
	best := [2]int{0, 1}
	score := func(i int) int { return commonness(pattern[i], nocase) }
	if score(1) < score(0) {
		best = [2]int{1, 0}
	}
	for i := 2; i < span; i++ {
		switch {
		case score(i) < score(best[0]):
			best = [2]int{i, best[0]}
		case score(i) < score(best[1]):
			best[1] = i
		}
	}
	return best // rarest first: the scan's first stage compares it alone
}

// commonness ranks how often a byte appears in typical payloads (text
// protocols and binary padding), lower is rarer. A heuristic, not a
// measured distribution.
func commonness(b byte, nocase bool) int {
	switch {
	case b == ' ' || b == 0 || b == 'e' || b == 't' || b == 'a' || b == 'o':
		return 9
	case b >= 'a' && b <= 'z':
		if nocase {
			return 8
		}
		return 7
	case b >= 'A' && b <= 'Z':
		if nocase {
			return 8
		}
		return 4
	case b >= '0' && b <= '9':
		return 5
	case b == '\r' || b == '\n' || b == 0xff:
		return 6
	case b > 0x20 && b < 0x7f:
		return 2 // punctuation
	default:
		return 3
	}
}
