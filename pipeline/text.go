package pipeline

import "unicode/utf8"

// Strings from the kernel (a process's comm or path, an interface's name)
// are bytes that anyone who can start a program or name a device chooses,
// while JSON, Prometheus label values and OTLP strings must be valid UTF-8:
// one such string must not make an encoder refuse a whole export. ValidUTF8
// is the one mapping every sink uses. It is unambiguous (the original
// bytes can be recovered) and leaves the strings people meet unchanged:
//
//   - a byte that is not part of valid UTF-8 becomes \xNN (two lowercase
//     hex digits);
//   - a backslash followed by 'x', by another backslash or by such a byte
//     is doubled, so that a literal "\x41" reads "\\x41";
//   - everything else, other backslashes included (a DNS name's \092),
//     stays as it is.
//
// To read a value back: "\\" is one backslash, "\xNN" the byte NN, and any
// other backslash is itself.

// ValidUTF8 returns s mapped to valid UTF-8 as described above: s itself
// when nothing needs escaping.
func ValidUTF8(s string) string {
	if textUnchanged(s) {
		return s
	}
	return string(AppendValidUTF8(make([]byte, 0, len(s)+8), s))
}

// AppendValidUTF8 appends s mapped to valid UTF-8 (ValidUTF8) to b.
func AppendValidUTF8(b []byte, s string) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c == '\\' && backslashDoubled(s, i) {
				b = append(b, '\\')
			}
			b = append(b, c)
			i++
			continue
		}
		if invalidAt(s, i) {
			b = append(b, '\\', 'x', hexDigits[c>>4], hexDigits[c&0xf])
			i++
			continue
		}
		_, size := utf8.DecodeRuneInString(s[i:])
		b = append(b, s[i:i+size]...)
		i += size
	}
	return b
}

// textUnchanged reports whether ValidUTF8(s) is s.
func textUnchanged(s string) bool {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c == '\\' && backslashDoubled(s, i) {
				return false
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			return false
		}
		i += size
	}
	return true
}

// backslashDoubled reports whether the backslash at s[i] is written
// doubled: what follows would otherwise read as an escape.
func backslashDoubled(s string, i int) bool {
	if i+1 >= len(s) {
		return false
	}
	next := s[i+1]
	return next == 'x' || next == '\\' || invalidAt(s, i+1)
}

// invalidAt reports whether s[i] is a byte that is not part of valid UTF-8.
func invalidAt(s string, i int) bool {
	if s[i] < utf8.RuneSelf {
		return false
	}
	r, size := utf8.DecodeRuneInString(s[i:])
	return r == utf8.RuneError && size == 1
}
