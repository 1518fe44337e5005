package policies

import (
	"fmt"
	"strings"
)

// decodePattern turns a pattern in Snort notation into bytes: text outside
// pipes stands for itself, text between a pair of pipes is hex byte pairs
// separated by optional spaces ("|48 54 54 50|"). A literal pipe is "|7C|".
func decodePattern(s string) ([]byte, error) {
	if s == "" {
		return nil, fmt.Errorf("empty pattern: a content needs at least one byte")
	}
	var out []byte
	rest := s
	for {
		open := strings.IndexByte(rest, '|')
		if open < 0 {
			out = append(out, rest...)
			break
		}
		out = append(out, rest[:open]...)
		hexStart := len(s) - len(rest) + open + 1
		end := strings.IndexByte(rest[open+1:], '|')
		if end < 0 {
			return nil, fmt.Errorf("unbalanced | at byte %d of %q: hex bytes go between two pipes, a literal pipe is |7C|", hexStart-1, s)
		}
		b, err := decodeHexBlock(rest[open+1 : open+1+end])
		if err != nil {
			return nil, fmt.Errorf("bad hex block at byte %d of %q: %v", hexStart-1, s, err)
		}
		out = append(out, b...)
		rest = rest[open+1+end+1:]
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("empty pattern: a content needs at least one byte")
	}
	return out, nil
}

// decodeHexBlock decodes the inside of one |...| block.
func decodeHexBlock(block string) ([]byte, error) {
	var out []byte
	digits := 0 // hex digits seen in the current byte
	var cur byte
	for i := 0; i < len(block); i++ {
		c := block[i]
		if c == ' ' {
			if digits == 1 {
				return nil, fmt.Errorf("odd number of hex digits: write each byte as two digits, e.g. |0A|")
			}
			continue
		}
		v, ok := hexValue(c)
		if !ok {
			return nil, fmt.Errorf("%q is not a hex digit (a literal pipe is |7C|)", c)
		}
		cur = cur<<4 | v
		digits++
		if digits == 2 {
			out = append(out, cur)
			cur, digits = 0, 0
		}
	}
	if digits == 1 {
		return nil, fmt.Errorf("odd number of hex digits: write each byte as two digits, e.g. |0A|")
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no hex bytes between the pipes (a literal pipe is |7C|)")
	}
	return out, nil
}

func hexValue(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}
