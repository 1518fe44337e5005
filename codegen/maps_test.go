package codegen

import (
	"slices"
	"strings"
	"testing"

	"github.com/grain-ebpf/grain/bpf"
)

func TestGateOf(t *testing.T) {
	quick := func(end uint16, mask, pattern uint64) Kernel[bpf.Rule] {
		return Kernel[bpf.Rule]{bpf.Rule{Flags: bpf.RuleQuick, QuickEnd: end, QuickMask: mask, QuickPattern: pattern}}
	}
	rules := []Kernel[bpf.Rule]{
		0: quick(8, ^uint64(0), 0x312e312f50545448), // "HTTP/1.1"
		1: quick(8, ^uint64(0), 0x302e312f50545448), // "HTTP/1.0": differs in byte 7
		2: quick(4, 0xffffffff00000000, 0x2054454700000000),
		3: {},                                                                  // no quick word
		4: quick(8, 0xdfdfdfdfdfdfdfdf, 0x312e312f50545448&0xdfdfdfdfdfdfdfdf), // nocase
	}
	cases := []struct {
		name     string
		admitted RuleSet
		want     bpf.Gate
	}{
		{"no rules", nil, bpf.Gate{}},
		{"one rule", RuleSet{0}, bpf.Gate{End: 8, Mask: ^uint64(0), Pattern: 0x312e312f50545448}},
		{"two patterns keep the bits they share", RuleSet{0, 1},
			bpf.Gate{End: 8, Mask: ^uint64(0) &^ ((0x31 ^ 0x30) << 56), Pattern: 0x312e312f50545448 &^ ((0x31 ^ 0x30) << 56)}},
		{"a rule without a quick word", RuleSet{0, 3}, bpf.Gate{}},
		{"words ending apart", RuleSet{0, 2}, bpf.Gate{}},
		{"nocase narrows the mask", RuleSet{0, 4},
			bpf.Gate{End: 8, Mask: 0xdfdfdfdfdfdfdfdf, Pattern: 0x312e312f50545448 & 0xdfdfdfdfdfdfdfdf}},
	}
	for _, c := range cases {
		if got := gateOf(rules, c.admitted); got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
}

// The kernel form prints every field but the padding: 64-bit words in hex,
// byte arrays as hex pairs, four or more equal neighbours as value*count,
// arrays of structs up to their last nonzero element.
func TestKernelJSON(t *testing.T) {
	var c bpf.Content
	copy(c.Pattern[:], "GET  x")
	c.Len, c.TailMask = 6, 0xffff
	got, err := Kernel[bpf.Content]{c}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"pattern":"47 45 54 20 20 78 00*58","mask":"00*64","len":6,"offset":0,"end":0,"flags":0,` +
		`"pre1_index":0,"pre2_index":0,"pre1_byte":0,"pre2_byte":0,"pre1_mask":0,"pre2_mask":0,"tail_pattern":"0x0","tail_mask":"0xffff"}`
	if string(got) != want {
		t.Errorf("content:\n%s\nwant:\n%s", got, want)
	}
	gates := [bpf.Gates]bpf.Gate{{End: 4, Mask: 0xff, Pattern: 0x47}}
	got, _ = Kernel[[bpf.Gates]bpf.Gate]{gates}.MarshalJSON()
	if want := `[{"end":4,"mask":"0xff","pattern":"0x47"}]`; string(got) != want {
		t.Errorf("gates: %s, want %s", got, want)
	}
	var r bpf.HookRule
	r.Selectors[1] = bpf.HookSelector{First: 2, Nfilters: 1}
	r.Id = 7
	got, _ = Kernel[bpf.HookRule]{r}.MarshalJSON()
	if !strings.Contains(string(got), `"id":7,`) || !strings.Contains(string(got), `"selectors":[{"first":0,"nfilters":0},{"first":2,"nfilters":1}],"labels":[]`) {
		t.Errorf("probe rule: %s", got)
	}
}

func TestRunsOf(t *testing.T) {
	type entry struct{ index, v int }
	type run struct{ first, last, v int }
	cases := []struct {
		name    string
		entries []entry
		want    []run
	}{
		{"empty", nil, []run{}},
		{"one entry", []entry{{5, 1}}, []run{{5, 5, 1}}},
		{"one run", []entry{{3, 7}, {4, 7}, {5, 7}}, []run{{3, 5, 7}}},
		{"several runs", []entry{{0, 1}, {1, 1}, {10, 2}, {11, 2}, {12, 2}, {20, 3}},
			[]run{{0, 1, 1}, {10, 12, 2}, {20, 20, 3}}},
		{"adjacent runs with different values", []entry{{0, 1}, {1, 1}, {2, 2}, {3, 2}, {4, 1}},
			[]run{{0, 1, 1}, {2, 3, 2}, {4, 4, 1}}},
		{"a gap splits equal values", []entry{{0, 1}, {1, 1}, {3, 1}},
			[]run{{0, 1, 1}, {3, 3, 1}}},
	}
	for _, c := range cases {
		got := runsOf(func(put func(int, int)) {
			for _, e := range c.entries {
				put(e.index, e.v)
			}
		}, func(first, last, v int) run { return run{first, last, v} })
		// Never nil: a plan writes no runs as [], not null.
		if got == nil {
			t.Errorf("%s: nil, want a non-nil slice", c.name)
		} else if !slices.Equal(got, c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}
