package pipeline

import (
	"encoding/json"
	"strconv"
	"testing"
	"unicode/utf8"
)

// decodeText is the inverse of ValidUTF8, as its documentation tells a
// reader to apply it.
func decodeText(t *testing.T, s string) string {
	var b []byte
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 == len(s) {
			b = append(b, s[i])
			continue
		}
		switch s[i+1] {
		case '\\':
			b = append(b, '\\')
			i++
		case 'x':
			if i+4 > len(s) {
				t.Fatalf("%q: \\x without two hex digits", s)
			}
			n, err := strconv.ParseUint(s[i+2:i+4], 16, 8)
			if err != nil {
				t.Fatalf("%q: %v", s, err)
			}
			b = append(b, byte(n))
			i += 3
		default:
			b = append(b, '\\')
		}
	}
	return string(b)
}

func TestValidUTF8(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"bash", "bash"},
		{"\xff", `\xff`},
		{"a\xffb\xc3", `a\xffb\xc3`},
		{"é€😀", "é€😀"},
		{`a\092b.\000`, `a\092b.\000`}, // a DNS name's escapes stay
		{`C:\temp`, `C:\temp`},
		{`\x41`, `\\x41`},
		{`a\\b`, `a\\\b`},
		{"\\\xff", `\\\xff`},
		{`trailing\`, `trailing\`},
		{"\xed\xa0\x80", `\xed\xa0\x80`}, // an encoded surrogate is not UTF-8
		{"\ufffd", "\ufffd"},
	} {
		got := ValidUTF8(c.in)
		if got != c.want {
			t.Errorf("ValidUTF8(%q) = %q, want %q", c.in, got, c.want)
		}
		if back := decodeText(t, got); back != c.in {
			t.Errorf("ValidUTF8(%q) = %q reads back as %q", c.in, got, back)
		}
		if string(AppendValidUTF8([]byte("p"), c.in)) != "p"+c.want {
			t.Errorf("AppendValidUTF8(%q) differs from ValidUTF8", c.in)
		}
	}
}

// FuzzValidUTF8: every byte string maps to valid UTF-8 that reads back
// as the original, and the JSON of an event carries exactly that text.
func FuzzValidUTF8(f *testing.F) {
	for _, s := range []string{"", "\xff", `\x`, `\\`, "a\\\xfe", "é\x80", "\"\n\x01"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := ValidUTF8(s)
		if !utf8.ValidString(got) {
			t.Fatalf("ValidUTF8(%q) = %q: not UTF-8", s, got)
		}
		if back := decodeText(t, got); back != s {
			t.Fatalf("ValidUTF8(%q) = %q reads back as %q", s, got, back)
		}
		if utf8.ValidString(s) && textUnchanged(s) != (got == s) {
			t.Fatalf("textUnchanged(%q) = %v, but ValidUTF8 gives %q", s, textUnchanged(s), got)
		}
		var inJSON string
		if err := json.Unmarshal(appendJSONString(nil, s), &inJSON); err != nil || inJSON != got {
			t.Fatalf("appendJSONString(%q) = %s (%v), want the JSON of %q", s, appendJSONString(nil, s), err, got)
		}
	})
}
