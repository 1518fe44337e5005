package engine

import (
	"bytes"
	"fmt"
	"math/rand"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/bpf"
	"github.com/grain-ebpf/grain/internal/plantest"
	"github.com/grain-ebpf/grain/internal/vmtest"
)

// containsRef is the documented meaning of a contains content: the pattern
// lies wholly within payload bytes [offset, offset+depth) and within the
// scan window; nocase folds ASCII letters.
func containsRef(payload, pattern []byte, offset, depth int, nocase bool) bool {
	end := min(len(payload), bpf.ScanWindow)
	if depth > 0 {
		end = min(end, offset+depth)
	}
	fold := func(b byte) byte {
		if nocase && b >= 'a' && b <= 'z' {
			return b - 32
		}
		return b
	}
	for p := offset; p+len(pattern) <= end; p++ {
		ok := true
		for i, c := range pattern {
			if fold(payload[p+i]) != fold(c) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// The XDP program's scan for contains (several positions per step, a
// prefilter, verification near the frame's end) agrees with the reference
// on random patterns, options and payloads, with the pattern planted at
// every kind of position: step boundaries, the payload's and the window's
// end, straddling them, and case-changed copies.
func TestXDPContainsMatchesReference(t *testing.T) {
	vmtest.HostOnly(t, "BPF_PROG_TEST_RUN runs the same bytecode on the same tables on every kernel; the guests verify the program (bpf's TestVerifierInstructions)")
	e := testEngine(t)
	rng := rand.New(rand.NewSource(1))
	alphabet := []byte("aAbB1/ \x00\xff")
	randBytes := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = alphabet[rng.Intn(len(alphabet))]
		}
		return b
	}
	lengths := []int{1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64}
	checked, matched := 0, 0
	for round := 0; round < 60; round++ {
		n := lengths[round%len(lengths)]
		pattern := randBytes(n)
		nocase := rng.Intn(3) == 0
		offset, depth := 0, 0
		if rng.Intn(3) == 0 {
			offset = rng.Intn(40)
		}
		if rng.Intn(3) == 0 {
			depth = n + rng.Intn(200)
		}
		var hexs strings.Builder
		for _, b := range pattern {
			fmt.Fprintf(&hexs, "%02x ", b)
		}
		content := fmt.Sprintf(`{contains: "|%s|", offset: %d, nocase: %v`, strings.TrimSpace(hexs.String()), offset, nocase)
		if depth > 0 {
			content += fmt.Sprintf(", depth: %d", depth)
		}
		content += "}"
		policy := `p: {
	xdp: interfaces: ["lo"]
	match: {protocol: "tcp", payload: ` + content + `}
	then: "drop"
}`
		if err := e.ApplyTables(plantest.Compile(t, policy), map[string]uint32{"lo": loIndex}); err != nil {
			t.Fatal(err)
		}
		for k := 0; k < 40; k++ {
			size := []int{n, n + 1, 40, 100, 511, 1000, 1460}[rng.Intn(7)]
			if k%9 == 0 {
				size = bpf.ScanWindow + rng.Intn(60) - 30 // around the window's end
			}
			payload := randBytes(size)
			if rng.Intn(4) != 0 && size >= n {
				// Plant the pattern (case-changed when nocase), near a step
				// boundary, the payload's end or the window's end.
				var at int
				switch rng.Intn(4) {
				case 0:
					at = rng.Intn(size - n + 1)
				case 1:
					at = max(0, min(size-n, (rng.Intn(size/32+1))*32+rng.Intn(3)-1))
				case 2:
					at = size - n
				default:
					at = max(0, min(size-n, bpf.ScanWindow-n+rng.Intn(3)-1))
				}
				planted := bytes.Clone(pattern)
				if nocase {
					for i, b := range planted {
						if rng.Intn(2) == 0 && (b|0x20) >= 'a' && (b|0x20) <= 'z' {
							planted[i] = b ^ 0x20
						}
					}
				}
				copy(payload[at:], planted)
			}
			want := uint32(xdpPass)
			if containsRef(payload, pattern, offset, depth, nocase) {
				want = xdpDrop
				matched++
			}
			checked++
			if got := runBoth(t, e, tcp4(payload).Bytes()); got != want {
				t.Fatalf("%s on a %d-byte payload: verdict %s, want %s\npayload %q", content, size, verdictName(got), verdictName(want), payload)
			}
		}
	}
	t.Logf("%d packets, %d matching", checked, matched)
}
